//! Protected Unix sockets, enforced by the kernel: a task in a protected
//! cgroup cannot reach the socket by any path; everyone else can.

use std::{os::unix::fs::MetadataExt, path::PathBuf, process::Command};

use eci_integration_tests::{
    Attempt, TestAgent, TestCgroup, TestSockets, assert_denied_only_when_protected, attempt,
    bpf_lsm_or_skip, test_client,
};

/// Sockets, an agent protecting them, and a protected and a free cgroup.
struct Setup {
    sockets: TestSockets,
    agent: TestAgent,
    protected: TestCgroup,
    free: TestCgroup,
}

fn setup() -> Setup {
    let sockets = TestSockets::new();
    let agent = TestAgent::start(&[
        "--protect-socket",
        &sockets.stream.display().to_string(),
        "--protect-socket",
        &sockets.dgram.display().to_string(),
    ]);
    let protected = TestCgroup::new("eci-prot");
    let free = TestCgroup::new("eci-free");
    agent.protect(&protected);
    Setup {
        sockets,
        agent,
        protected,
        free,
    }
}

#[test]
fn stream_connect_to_protected_socket_is_denied_only_from_protected_cgroup() {
    if !bpf_lsm_or_skip("stream_connect_to_protected_socket_is_denied_only_from_protected_cgroup") {
        return;
    }
    let s = setup();
    assert_denied_only_when_protected(&s.protected, &s.free, "stream", &s.sockets.stream);
}

#[test]
fn protected_cgroup_still_reaches_sockets_that_are_not_protected() {
    if !bpf_lsm_or_skip("protected_cgroup_still_reaches_sockets_that_are_not_protected") {
        return;
    }
    let s = setup();
    let other = TestSockets::new();
    for (mode, path) in [("stream", &other.stream), ("dgram", &other.dgram)] {
        let (result, _, text) = attempt(&test_client(), &s.protected, mode, path);
        assert_eq!(
            result,
            Attempt::Allowed,
            "an unprotected socket was refused ({mode}): {text}"
        );
    }
}

#[test]
fn protection_follows_the_socket_file_through_links_bind_mounts_renames_and_proc_root() {
    if !bpf_lsm_or_skip(
        "protection_follows_the_socket_file_through_links_bind_mounts_renames_and_proc_root",
    ) {
        return;
    }
    let s = setup();
    let dir = s.sockets.dir.path();
    let hard_link = dir.join("hard-link.sock");
    std::fs::hard_link(&s.sockets.stream, &hard_link).expect("hard link");
    let bind_target = dir.join("bind-target.sock");
    std::fs::write(&bind_target, "").expect("bind target");
    let status = Command::new("mount")
        .arg("--bind")
        .arg(&s.sockets.stream)
        .arg(&bind_target)
        .status()
        .expect("mount");
    assert!(status.success(), "mount --bind failed");
    let via_proc_root = PathBuf::from(format!("/proc/self/root{}", s.sockets.stream.display()));
    // A rename after the agent started: the file keeps its identity.
    let renamed = dir.join("renamed.sock");
    std::fs::hard_link(&s.sockets.stream, dir.join("keep.sock")).expect("second link");
    std::fs::rename(dir.join("keep.sock"), &renamed).expect("rename");
    for path in [&hard_link, &bind_target, &via_proc_root, &renamed] {
        assert_denied_only_when_protected(&s.protected, &s.free, "stream", path);
    }
    let _ = Command::new("umount").arg(&bind_target).status();
}

#[test]
fn datagram_send_and_connect_to_protected_socket_are_denied() {
    if !bpf_lsm_or_skip("datagram_send_and_connect_to_protected_socket_are_denied") {
        return;
    }
    let s = setup();
    for mode in ["dgram", "dgram-connect"] {
        assert_denied_only_when_protected(&s.protected, &s.free, mode, &s.sockets.dgram);
    }
}

#[test]
fn the_agents_own_control_socket_is_protected() {
    if !bpf_lsm_or_skip("the_agents_own_control_socket_is_protected") {
        return;
    }
    let s = setup();
    assert_denied_only_when_protected(&s.protected, &s.free, "stream", &s.agent.control_socket);
}

#[test]
fn unprotecting_a_cgroup_lifts_the_rule() {
    if !bpf_lsm_or_skip("unprotecting_a_cgroup_lifts_the_rule") {
        return;
    }
    let s = setup();
    assert_eq!(
        attempt(&test_client(), &s.protected, "stream", &s.sockets.stream).0,
        Attempt::Denied
    );
    let out = s.agent.cli(&["unprotect", "--cgroup", &s.protected.path]);
    assert!(
        out.status.success(),
        "unprotect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        attempt(&test_client(), &s.protected, "stream", &s.sockets.stream).0,
        Attempt::Allowed
    );
}

#[test]
fn denial_is_audited_with_time_pid_uid_comm_cgroup_hook_verdict_and_object() {
    if !bpf_lsm_or_skip("denial_is_audited_with_time_pid_uid_comm_cgroup_hook_verdict_and_object") {
        return;
    }
    let s = setup();
    let (result, pid, _) = attempt(&test_client(), &s.protected, "stream", &s.sockets.stream);
    assert_eq!(result, Attempt::Denied);
    assert_ne!(pid, 0, "the client did not report its pid");
    let meta = std::fs::metadata(&s.sockets.stream).expect("stat socket");
    let line = s
        .agent
        .wait_audit(|l| l["tgid"] == pid && l["hook"] == "unix_stream_connect");
    assert_eq!(line["verdict"], "deny", "{line}");
    assert_eq!(line["errno"], libc::EPERM, "{line}");
    assert_eq!(line["pid"], pid, "{line}");
    assert_eq!(line["uid"], 0, "{line}");
    assert_eq!(line["comm"], "eci-test-client", "{line}");
    assert_eq!(line["cgroup_id"], s.protected.id, "{line}");
    assert_eq!(line["cgroup"], s.protected.path.as_str(), "{line}");
    assert_eq!(line["object"]["kind"], "unix_socket", "{line}");
    assert_eq!(line["object"]["ino"], meta.ino(), "{line}");
    assert_eq!(
        line["object"]["path"],
        s.sockets.stream.display().to_string(),
        "{line}"
    );
    let time = line["time"].as_str().expect("time is a string");
    assert!(
        time.len() == 30 && time.ends_with('Z') && time.starts_with("20"),
        "time {time}"
    );

    let (result, pid, _) = attempt(&test_client(), &s.protected, "dgram", &s.sockets.dgram);
    assert_eq!(result, Attempt::Denied);
    let line = s
        .agent
        .wait_audit(|l| l["tgid"] == pid && l["hook"] == "unix_may_send");
    assert_eq!(
        line["object"]["path"],
        s.sockets.dgram.display().to_string(),
        "{line}"
    );
}

#[test]
fn rules_stay_in_force_after_the_agent_is_killed() {
    if !bpf_lsm_or_skip("rules_stay_in_force_after_the_agent_is_killed") {
        return;
    }
    let mut s = setup();
    s.agent.kill_hard();
    let (result, _, text) = attempt(&test_client(), &s.protected, "stream", &s.sockets.stream);
    assert_eq!(
        result,
        Attempt::Denied,
        "the rule died with the agent: {text}"
    );
}
