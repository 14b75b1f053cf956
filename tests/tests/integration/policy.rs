//! The policy file as a user meets it: clear refusals, reloads that keep the
//! last good policy, and a lock that holds. These run on any kernel (the
//! agent checks its policy before it touches BPF, and the reload tests use
//! the test-only unenforced mode).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use eci_control::{Client, Request, Response};
use eci_integration_tests::{agent_bin, unique};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write policy");
    path
}

fn run_agent(policy: &Path, dir: &Path, extra: &[&str]) -> Child {
    Command::new(agent_bin())
        .args(["run", "--no-default-sockets", "--policy"])
        .arg(policy)
        .arg("--control-socket")
        .arg(dir.join("agent.sock"))
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .args([
            "--pin-dir",
            &format!("/sys/fs/bpf/{}", unique("eci-policy")),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent")
}

fn wait_ready(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        Client::new(sock).call(&Request::Ping),
        Ok(Response::Pong { .. })
    ) {
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: Child) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().expect("wait agent");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_policy_file_stops_the_agent_and_names_file_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write(
        dir.path(),
        "admin-settings.json",
        "{\n  \"enhancedContainerIsolation\": {\n    \"locked\": \"yes\"\n  }\n}\n",
    );
    let out = run_agent(&policy, dir.path(), &["--unenforced-for-testing"])
        .wait_with_output()
        .expect("agent");
    assert!(!out.status.success(), "the agent started on a bad policy");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&policy.display().to_string()), "{text}");
    assert!(text.contains("enhancedContainerIsolation.locked"), "{text}");
    assert!(text.contains("line 3"), "{text}");
    assert!(
        !dir.path().join("agent.sock").exists(),
        "a refused start left a control socket"
    );

    let unknown = write(
        dir.path(),
        "unknown.json",
        "{\"eci\": {\"protectEverything\": true}}",
    );
    let out = run_agent(&unknown, dir.path(), &["--unenforced-for-testing"])
        .wait_with_output()
        .expect("agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("protectEverything"));
}

#[test]
fn reload_keeps_the_last_good_policy_and_reports_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write(
        dir.path(),
        "admin-settings.json",
        "{\"eci\": {\"protectedCgroupParents\": [\"/docker\"]}}",
    );
    let agent = run_agent(&policy, dir.path(), &["--unenforced-for-testing"]);
    let sock = dir.path().join("agent.sock");
    wait_ready(&sock);
    write(
        dir.path(),
        "admin-settings.json",
        "{\"eci\": {\"protectedCgroupParents\": [\"/\"]}}",
    );
    let reload = Command::new(agent_bin())
        .args(["reload", "--control-socket"])
        .arg(&sock)
        .output()
        .expect("reload");
    assert!(!reload.status.success(), "a bad policy was accepted");
    let text = String::from_utf8_lossy(&reload.stderr);
    assert!(
        text.contains("last good one stays in force") && text.contains("protectedCgroupParents[0]"),
        "{text}"
    );
    assert!(
        matches!(
            Client::new(&sock).call(&Request::Ping),
            Ok(Response::Pong { .. })
        ),
        "the agent died on a bad reload"
    );
    write(
        dir.path(),
        "admin-settings.json",
        "{\"eci\": {\"protectedCgroupParents\": [\"/docker\", \"/kubepods\"]}}",
    );
    let reload = Command::new(agent_bin())
        .args(["reload", "--control-socket"])
        .arg(&sock)
        .output()
        .expect("reload");
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert!(String::from_utf8_lossy(&reload.stdout).contains("/kubepods"));
    // SIGHUP does the same.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = stop(agent);
    assert!(log.contains("SIGHUP: policy reloaded"), "{log}");
}

#[test]
fn a_locked_policy_cannot_be_turned_off_at_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locked = "{\"enhancedContainerIsolation\": {\"value\": true, \"locked\": true}}";
    let policy = write(dir.path(), "admin-settings.json", locked);
    let out = run_agent(&policy, dir.path(), &["--unenforced-for-testing"])
        .wait_with_output()
        .expect("agent");
    assert!(
        !out.status.success(),
        "unenforced mode ran under a locked policy"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"));

    let unload = Command::new(agent_bin())
        .args(["unload", "--policy"])
        .arg(&policy)
        .args([
            "--pin-dir",
            &format!("/sys/fs/bpf/{}", unique("eci-locked")),
        ])
        .output()
        .expect("unload");
    assert!(
        !unload.status.success(),
        "unload worked under a locked policy"
    );
    assert!(String::from_utf8_lossy(&unload.stderr).contains("locked"));

    let uninstall = Command::new(agent_bin())
        .args(["uninstall", "--no-systemctl", "--policy"])
        .arg(&policy)
        .arg("--daemon-json")
        .arg(dir.path().join("daemon.json"))
        .arg("--unit-dir")
        .arg(dir.path())
        .output()
        .expect("uninstall");
    assert!(
        !uninstall.status.success(),
        "uninstall worked under a locked policy"
    );
}

#[test]
fn install_merges_daemon_json_and_uninstall_restores_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = write(
        dir.path(),
        "daemon.json",
        "{\"log-level\": \"warn\", \"runtimes\": {\"other\": {\"path\": \"/o\"}}}",
    );
    let policy = dir.path().join("eci/admin-settings.json");
    let args = |cmd: &str| {
        let mut c = Command::new(agent_bin());
        c.args([cmd, "--no-systemctl", "--policy"])
            .arg(&policy)
            .arg("--daemon-json")
            .arg(&daemon)
            .arg("--unit-dir")
            .arg(dir.path().join("units"))
            .arg("--runc-stand-in")
            .arg(dir.path().join("sbin/runc"));
        c
    };
    let out = args("install").output().expect("install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon).expect("daemon")).expect("json");
    assert_eq!(merged["log-level"], "warn");
    assert_eq!(merged["runtimes"]["other"]["path"], "/o");
    assert!(
        merged["runtimes"]["eci"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("eci-runc"))
    );
    assert!(dir.path().join("units/eci-agent.service").exists());
    // ECI is on: eci is the default runtime and stands in for runc.
    assert_eq!(merged["default-runtime"], "eci");
    assert!(
        std::fs::read_link(dir.path().join("sbin/runc")).is_ok_and(|t| t.ends_with("eci-runc"))
    );
    // The installed default policy is valid and the agent accepts it.
    let check = run_agent(&policy, dir.path(), &["--unenforced-for-testing"]);
    wait_ready(&dir.path().join("agent.sock"));
    stop(check);
    let out = args("uninstall").output().expect("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::symlink_metadata(dir.path().join("sbin/runc")).is_err());
    let restored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon).expect("daemon")).expect("json");
    assert_eq!(
        restored,
        serde_json::json!({"log-level": "warn", "runtimes": {"other": {"path": "/o"}}})
    );
}
