//! The agent's user-facing behaviour: status, clear refusals, and the
//! message on kernels without BPF-LSM.

use std::process::Command;

use eci_integration_tests::{
    TestAgent, TestCgroup, TestSockets, agent_bin, bpf_lsm_or_skip, unique,
};

#[test]
fn status_reports_programs_cgroups_sockets_and_counters() {
    if !bpf_lsm_or_skip("status_reports_programs_cgroups_sockets_and_counters") {
        return;
    }
    let sockets = TestSockets::new();
    let agent = TestAgent::start(&["--protect-socket", &sockets.stream.display().to_string()]);
    let cgroup = TestCgroup::new("eci-prot");
    agent.protect(&cgroup);
    let client = std::path::PathBuf::from(env!("CARGO_BIN_EXE_eci-test-client"));
    let (result, _, _) =
        eci_integration_tests::attempt(&client, &cgroup, "stream", &sockets.stream);
    assert_eq!(result, eci_integration_tests::Attempt::Denied);

    let out = agent.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["agent"]["running"], true, "{status}");
    assert_eq!(status["agent"]["mode"], "kernel", "{status}");
    assert_eq!(status["bpf_lsm_active"], true, "{status}");
    assert_eq!(status["enforcing"], true, "{status}");
    let programs = status["programs"].as_array().expect("programs");
    assert!(programs.iter().all(|p| p["attached"] == true), "{status}");
    let cgroups = status["protected_cgroups"].as_array().expect("cgroups");
    assert!(
        cgroups
            .iter()
            .any(|c| c["id"] == cgroup.id && c["path"] == cgroup.path.as_str()),
        "{status}"
    );
    let socks = status["protected_sockets"].as_array().expect("sockets");
    assert!(
        socks
            .iter()
            .any(|s| s["path"] == sockets.stream.display().to_string()),
        "{status}"
    );
    assert!(
        socks
            .iter()
            .any(|s| s["path"] == agent.control_socket.display().to_string()),
        "the control socket is protected by default: {status}"
    );
    assert!(
        status["denials"]["unix_stream_connect"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(status["event_drops"], 0, "{status}");

    let human = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("running (pid"), "{text}");
    assert!(text.contains(&cgroup.path), "{text}");
}

#[test]
fn status_says_clearly_when_the_agent_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(agent_bin())
        .args(["status", "--control-socket"])
        .arg(dir.path().join("none.sock"))
        .args(["--pin-dir", &format!("/sys/fs/bpf/{}", unique("eci-none"))])
        .output()
        .expect("status");
    assert_eq!(
        out.status.code(),
        Some(3),
        "status without an agent must fail"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT RUNNING"), "{text}");
    assert!(
        text.contains("eci-agent run"),
        "the message says what to do: {text}"
    );
}

#[test]
fn protecting_a_missing_cgroup_is_a_clear_error_and_changes_nothing() {
    if !bpf_lsm_or_skip("protecting_a_missing_cgroup_is_a_clear_error_and_changes_nothing") {
        return;
    }
    let agent = TestAgent::start(&[]);
    let out = agent.cli(&["protect", "--cgroup", "/eci-no-such-cgroup"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("does not exist"), "{text}");
    let status: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["status", "--json"]).stdout).expect("status JSON");
    assert_eq!(
        status["protected_cgroups"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
}

#[test]
fn the_agent_refuses_to_protect_its_own_cgroup() {
    if !bpf_lsm_or_skip("the_agent_refuses_to_protect_its_own_cgroup") {
        return;
    }
    let agent = TestAgent::start(&[]);
    let out = agent.cli(&["protect", "--cgroup", "/"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("lock itself out"), "{text}");
}

#[test]
fn control_requests_without_an_agent_fail_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(agent_bin())
        .args(["protect", "--cgroup", "/x", "--control-socket"])
        .arg(dir.path().join("none.sock"))
        .output()
        .expect("protect");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("is it running?"), "{text}");
}

/// Whether BPF-LSM is usable in this run: as the run says
/// (`ECI_LSM_EXPECTED`), else as `eci-agent probe` (pinning at `pin_dir`)
/// finds. A probe that passes where BPF-LSM is expected absent panics.
fn bpf_lsm_expected_at(pin_dir: &str) -> bool {
    let expected = std::env::var("ECI_LSM_EXPECTED").unwrap_or_default();
    let probe = Command::new(agent_bin())
        .args(["probe", "--pin-dir", pin_dir])
        .output()
        .expect("probe");
    assert!(
        !(expected == "absent" && probe.status.success()),
        "the probe claims BPF-LSM works where it was expected absent"
    );
    expected == "present" || (expected != "absent" && probe.status.success())
}

/// On a kernel where BPF-LSM programs cannot run, `eci-agent run` must refuse
/// with a message that says why and what to do, and leave nothing pinned.
/// Runs on the host kernel here (which refuses BPF-LSM) and in a VM booted
/// without `bpf` in `lsm=`.
#[test]
fn lsm_unavailable_agent_refuses_to_run_and_says_what_to_do() {
    let pin_dir = format!("/sys/fs/bpf/{}", unique("eci-unavail"));
    if bpf_lsm_expected_at(&pin_dir) {
        let _ = Command::new(agent_bin())
            .args(["unload", "--pin-dir", &pin_dir])
            .output();
        println!(
            "SKIP: lsm_unavailable_agent_refuses_to_run_and_says_what_to_do: BPF-LSM works on this kernel; this test runs on kernels without it (the host here, and the VM booted without bpf in lsm=)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(agent_bin())
        .args(["run", "--pin-dir", &pin_dir, "--control-socket"])
        .arg(dir.path().join("agent.sock"))
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "the agent must not run without BPF-LSM"
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("BPF-LSM is not"), "{text}");
    assert!(
        text.contains("lsm=") || text.contains("kernel that allows"),
        "the message must say what to do: {text}"
    );
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "a refused start left pins behind"
    );
    assert!(
        !dir.path().join("agent.sock").exists(),
        "a refused start left a control socket"
    );
}

#[test]
fn unenforced_mode_says_so_loudly_and_registers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let child = Command::new(agent_bin())
        .args([
            "run",
            "--unenforced-for-testing",
            "--no-default-sockets",
            "--control-socket",
        ])
        .arg(&sock)
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let client = eci_control::Client::new(&sock);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pong = loop {
        if let Ok(answer) = client.call(&eci_control::Request::Ping) {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unenforced agent did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        matches!(pong, eci_control::Response::Pong { ref mode, .. } if mode == "unenforced"),
        "{pong:?}"
    );
    let missing = client.call(&eci_control::Request::Protect {
        cgroup: "/eci-no-such".into(),
    });
    assert!(
        matches!(missing, Ok(eci_control::Response::Error { .. })),
        "{missing:?}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("WITHOUT KERNEL ENFORCEMENT"), "{text}");
}

/// `eci-agent doctor --json`: one check per line with status, what was
/// found and the fix; its BPF-LSM probe agrees with `eci-agent probe`, it
/// exits non-zero exactly when a check failed, and a bad policy file is a
/// failed check naming the error. Runs everywhere (the host here refuses
/// BPF-LSM: the probe check fails with what to do).
#[test]
fn doctor_says_whether_eci_can_enforce_here_and_what_to_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("admin-settings.json");
    let pin_dir = format!("/sys/fs/bpf/{}", unique("eci-doctor"));
    let doctor = || {
        let out = Command::new(agent_bin())
            .args([
                "doctor",
                "--json",
                "--pin-dir",
                &pin_dir,
                "--control-socket",
            ])
            .arg(dir.path().join("agent.sock"))
            .arg("--policy")
            .arg(&policy)
            // No daemon.json: eci is not registered (a warning, not a failure).
            .arg("--daemon-json")
            .arg(dir.path().join("daemon.json"))
            .output()
            .expect("run eci-agent doctor");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json is not JSON ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status, report)
    };
    let check = |report: &serde_json::Value, name: &str| {
        report["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} check: {report:#}"))
    };

    let (status, report) = doctor();
    let checks = report["checks"].as_array().expect("checks");
    for c in checks {
        assert!(c["found"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
        match c["status"].as_str() {
            Some("ok") => assert!(c["fix"].is_null(), "{c}"),
            Some("warning" | "fail") => assert!(c["fix"].as_str().is_some(), "{c}"),
            other => panic!("status {other:?}: {c}"),
        }
    }
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(report["ok"], !failed, "{report:#}");
    assert_eq!(status.success(), !failed, "exit {status}: {report:#}");
    assert_eq!(check(&report, "docker-runtime")["status"], "warning");

    let probe = check(&report, "bpf-lsm-probe");
    if bpf_lsm_expected_at(&pin_dir) {
        assert_eq!(probe["status"], "ok", "{report:#}");
    } else {
        assert!(!status.success(), "{report:#}");
        assert_eq!(probe["status"], "fail", "{report:#}");
        let fix = probe["fix"].as_str().unwrap_or_default();
        assert!(
            fix.contains("lsm=") || fix.contains("kernel that allows"),
            "the fix must say what to do: {probe}"
        );
    }
    let _ = Command::new(agent_bin())
        .args(["unload", "--pin-dir", &pin_dir])
        .output();
    assert_eq!(check(&report, "policy")["status"], "ok", "{report:#}");

    std::fs::write(&policy, r#"{"eci": {"protectedCgroupParents": 7}}"#).expect("policy");
    let (status, report) = doctor();
    assert!(!status.success(), "{report:#}");
    let bad = check(&report, "policy");
    assert_eq!(bad["status"], "fail", "{report:#}");
    assert!(
        bad["found"]
            .as_str()
            .is_some_and(|f| f.contains("protectedCgroupParents")),
        "the line names the policy error: {bad}"
    );
}
