//! Protected Unix sockets, enforced by the kernel: a task in a protected
//! cgroup cannot reach the socket by any path; everyone else can.

use std::{os::unix::fs::MetadataExt, path::PathBuf, process::Command};

use eci_integration_tests::{
    Attempt, TestAgent, TestCgroup, TestSockets, attempt, bpf_lsm_or_skip,
};

fn client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eci-test-client"))
}

fn agent_protecting(sockets: &TestSockets) -> TestAgent {
    TestAgent::start(&[
        "--protect-socket",
        &sockets.stream.display().to_string(),
        "--protect-socket",
        &sockets.dgram.display().to_string(),
    ])
}

#[test]
fn stream_connect_to_protected_socket_is_denied_only_from_protected_cgroup() {
    if !bpf_lsm_or_skip("stream_connect_to_protected_socket_is_denied_only_from_protected_cgroup") {
        return;
    }
    let sockets = TestSockets::new();
    let agent = agent_protecting(&sockets);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    agent.protect(&protected);

    let (denied, _, text) = attempt(&client(), &protected, "stream", &sockets.stream);
    assert_eq!(
        denied,
        Attempt::Denied,
        "protected cgroup reached the socket: {text}"
    );
    let (allowed, _, text) = attempt(&client(), &unprotected, "stream", &sockets.stream);
    assert_eq!(
        allowed,
        Attempt::Allowed,
        "unprotected cgroup was refused: {text}"
    );
}

#[test]
fn protected_cgroup_still_reaches_sockets_that_are_not_protected() {
    if !bpf_lsm_or_skip("protected_cgroup_still_reaches_sockets_that_are_not_protected") {
        return;
    }
    let sockets = TestSockets::new();
    let other = TestSockets::new();
    let agent = agent_protecting(&sockets);
    let protected = TestCgroup::new("eci-prot");
    agent.protect(&protected);
    let (result, _, text) = attempt(&client(), &protected, "stream", &other.stream);
    assert_eq!(
        result,
        Attempt::Allowed,
        "an unprotected socket was refused: {text}"
    );
    let (result, _, text) = attempt(&client(), &protected, "dgram", &other.dgram);
    assert_eq!(
        result,
        Attempt::Allowed,
        "an unprotected datagram socket was refused: {text}"
    );
}

#[test]
fn protection_follows_the_socket_file_through_links_bind_mounts_renames_and_proc_root() {
    if !bpf_lsm_or_skip(
        "protection_follows_the_socket_file_through_links_bind_mounts_renames_and_proc_root",
    ) {
        return;
    }
    let sockets = TestSockets::new();
    let agent = agent_protecting(&sockets);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    agent.protect(&protected);

    let dir = sockets.dir.path();
    let hard_link = dir.join("hard-link.sock");
    std::fs::hard_link(&sockets.stream, &hard_link).expect("hard link");
    let bind_target = dir.join("bind-target.sock");
    std::fs::write(&bind_target, "").expect("bind target");
    let status = Command::new("mount")
        .args([
            "--bind",
            &sockets.stream.display().to_string(),
            &bind_target.display().to_string(),
        ])
        .status()
        .expect("mount --bind");
    assert!(status.success(), "mount --bind failed");
    let via_proc_root = PathBuf::from(format!("/proc/self/root{}", sockets.stream.display()));
    // A rename after the agent started: the file keeps its identity.
    let renamed = dir.join("renamed.sock");
    std::fs::hard_link(&sockets.stream, dir.join("keep.sock")).expect("second link");
    std::fs::rename(dir.join("keep.sock"), &renamed).expect("rename");

    for path in [&hard_link, &bind_target, &via_proc_root, &renamed] {
        let (result, _, text) = attempt(&client(), &protected, "stream", path);
        assert_eq!(
            result,
            Attempt::Denied,
            "{} reached the protected socket: {text}",
            path.display()
        );
        let (result, _, text) = attempt(&client(), &unprotected, "stream", path);
        assert_eq!(
            result,
            Attempt::Allowed,
            "{} was refused to an unprotected cgroup: {text}",
            path.display()
        );
    }
    let _ = Command::new("umount").arg(&bind_target).status();
}

#[test]
fn datagram_send_and_connect_to_protected_socket_are_denied() {
    if !bpf_lsm_or_skip("datagram_send_and_connect_to_protected_socket_are_denied") {
        return;
    }
    let sockets = TestSockets::new();
    let agent = agent_protecting(&sockets);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    agent.protect(&protected);
    for mode in ["dgram", "dgram-connect"] {
        let (result, _, text) = attempt(&client(), &protected, mode, &sockets.dgram);
        assert_eq!(
            result,
            Attempt::Denied,
            "{mode} from a protected cgroup: {text}"
        );
        let (result, _, text) = attempt(&client(), &unprotected, mode, &sockets.dgram);
        assert_eq!(
            result,
            Attempt::Allowed,
            "{mode} from an unprotected cgroup: {text}"
        );
    }
}

#[test]
fn the_agents_own_control_socket_is_protected() {
    if !bpf_lsm_or_skip("the_agents_own_control_socket_is_protected") {
        return;
    }
    let agent = TestAgent::start(&[]);
    let protected = TestCgroup::new("eci-prot");
    agent.protect(&protected);
    let (result, _, text) = attempt(&client(), &protected, "stream", &agent.control_socket);
    assert_eq!(
        result,
        Attempt::Denied,
        "a protected cgroup reached the agent: {text}"
    );
}

#[test]
fn unprotecting_a_cgroup_lifts_the_rule() {
    if !bpf_lsm_or_skip("unprotecting_a_cgroup_lifts_the_rule") {
        return;
    }
    let sockets = TestSockets::new();
    let agent = agent_protecting(&sockets);
    let cgroup = TestCgroup::new("eci-prot");
    agent.protect(&cgroup);
    assert_eq!(
        attempt(&client(), &cgroup, "stream", &sockets.stream).0,
        Attempt::Denied
    );
    let out = agent.cli(&["unprotect", "--cgroup", &cgroup.path]);
    assert!(
        out.status.success(),
        "unprotect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        attempt(&client(), &cgroup, "stream", &sockets.stream).0,
        Attempt::Allowed
    );
}

#[test]
fn denial_is_audited_with_time_pid_uid_comm_cgroup_hook_verdict_and_object() {
    if !bpf_lsm_or_skip("denial_is_audited_with_time_pid_uid_comm_cgroup_hook_verdict_and_object") {
        return;
    }
    let sockets = TestSockets::new();
    let agent = agent_protecting(&sockets);
    let protected = TestCgroup::new("eci-prot");
    agent.protect(&protected);
    let (result, pid, _) = attempt(&client(), &protected, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Denied);
    let meta = std::fs::metadata(&sockets.stream).expect("stat socket");
    assert_ne!(pid, 0, "the client did not report its pid");
    let line = agent.wait_audit(|l| l["tgid"] == pid && l["hook"] == "unix_stream_connect");
    assert_eq!(line["verdict"], "deny", "{line}");
    assert_eq!(line["errno"], libc::EPERM, "{line}");
    assert_eq!(line["pid"], pid, "{line}");
    assert_eq!(line["uid"], 0, "{line}");
    assert_eq!(line["comm"], "eci-test-client", "{line}");
    assert_eq!(line["cgroup_id"], protected.id, "{line}");
    assert_eq!(line["cgroup"], protected.path.as_str(), "{line}");
    assert_eq!(line["object"]["kind"], "unix_socket", "{line}");
    assert_eq!(line["object"]["ino"], meta.ino(), "{line}");
    assert_eq!(
        line["object"]["path"],
        sockets.stream.display().to_string(),
        "{line}"
    );
    let time = line["time"].as_str().expect("time is a string");
    assert!(
        time.len() == 30 && time.ends_with('Z') && time.starts_with("20"),
        "time {time}"
    );

    let (result, pid, _) = attempt(&client(), &protected, "dgram", &sockets.dgram);
    assert_eq!(result, Attempt::Denied);
    let line = agent.wait_audit(|l| l["tgid"] == pid && l["hook"] == "unix_may_send");
    assert_eq!(
        line["object"]["path"],
        sockets.dgram.display().to_string(),
        "{line}"
    );
}

#[test]
fn rules_stay_in_force_after_the_agent_is_killed() {
    if !bpf_lsm_or_skip("rules_stay_in_force_after_the_agent_is_killed") {
        return;
    }
    let sockets = TestSockets::new();
    let mut agent = agent_protecting(&sockets);
    let protected = TestCgroup::new("eci-prot");
    agent.protect(&protected);
    agent.kill_hard();
    let (result, _, text) = attempt(&client(), &protected, "stream", &sockets.stream);
    assert_eq!(
        result,
        Attempt::Denied,
        "the rule died with the agent: {text}"
    );
}
