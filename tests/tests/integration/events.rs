//! `eci-agent events`: the audit stream through the control socket, live.
//! A denial reaches a following reader; what is allowed makes no line.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use eci_control::{Request, Response};
use eci_integration_tests::{
    Attempt, TestAgent, TestCgroup, TestSockets, agent_bin, attempt, bpf_lsm_or_skip, test_client,
    tmp_dir,
};

/// `eci-agent events ARGS` against `agent`, its stdout's lines sent as
/// they come. Killed by the caller.
fn events(agent: &TestAgent, args: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(agent_bin())
        .arg("events")
        .args(args)
        .args(agent.common_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run eci-agent events");
    let stdout = child.stdout.take().expect("events' stdout");
    let (send, receive) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    (child, receive)
}

/// Lines until one matches `pred` (returned with all seen), within 30 s.
fn wait_line(
    lines: &Receiver<String>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (Option<serde_json::Value>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        seen.push(line.clone());
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
            && pred(&value)
        {
            return (Some(value), seen);
        }
    }
    (None, seen)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_denied_connect_reaches_a_following_reader_and_an_allowed_one_makes_no_line() {
    if !bpf_lsm_or_skip(
        "a_denied_connect_reaches_a_following_reader_and_an_allowed_one_makes_no_line",
    ) {
        return;
    }
    let sockets = TestSockets::new();
    let agent = TestAgent::start(&["--protect-socket", &sockets.stream.display().to_string()]);
    let protected = TestCgroup::new("eci-events-prot");
    let free = TestCgroup::new("eci-events-free");
    agent.protect(&protected);
    let (follower, lines) = events(&agent, &["--follow", "--json"]);
    let client = test_client();

    // Where it must work: an unprotected task connects.
    let (result, _, text) = attempt(&client, &free, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Allowed, "unprotected connect: {text}");
    let (result, pid, text) = attempt(&client, &protected, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Denied, "protected connect: {text}");

    let refused = |l: &serde_json::Value| {
        l["hook"] == "unix_stream_connect"
            && l["verdict"] == "deny"
            && l["cgroup_id"] == protected.id
    };
    let (denial, seen) = wait_line(&lines, refused);
    stop(follower);
    let denial = denial.unwrap_or_else(|| {
        panic!(
            "no denial in the stream within 30 s; it had:\n{}\nagent log:\n{}",
            seen.join("\n"),
            agent.stderr()
        )
    });
    assert_eq!(denial["cgroup"], protected.path.as_str(), "{denial}");
    assert_eq!(
        denial["object"]["path"],
        sockets.stream.display().to_string(),
        "{denial}"
    );
    if pid != 0 {
        assert_eq!(denial["tgid"], pid, "{denial}");
    }
    // The same line as the audit log's.
    let logged = agent.wait_audit(refused);
    assert_eq!(logged, denial);
    assert!(
        !seen
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["cgroup_id"] == free.id),
        "the allowed connect made a line: {seen:?}"
    );
}

/// The stream's plumbing (agent, control socket, client, filter, both
/// forms) without BPF-LSM: the Docker API proxy's refusals are audit lines
/// too, and an agent without kernel enforcement serves the proxy.
#[test]
fn the_proxys_refusals_stream_to_readers_filtered_by_container() {
    let dir = tempfile::Builder::new()
        .prefix("eci-events")
        .tempdir_in(tmp_dir())
        .expect("tempdir");
    let engine = dir.path().join("engine.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&engine).expect("engine socket");
    let policy = serde_json::json!({
        "enhancedContainerIsolation": {"dockerSocketMount": {"commandList": {"type": "deny", "commands": ["push"]}}},
        "eci": {"dockerApiSockets": [engine]},
    });
    let agent = TestAgent::start(&["--unenforced-for-testing"]);
    // The agent's --policy (common_args), put in force.
    std::fs::write(
        agent.dir.path().join("admin-settings.json"),
        policy.to_string(),
    )
    .expect("write the policy");
    let reloaded = agent.client().call_ok(&Request::Reload);
    assert!(reloaded.is_ok(), "reload: {reloaded:?}");
    let container = "4f2a0b1c2d3e4f5a6b7c";
    let (follower, lines) = events(&agent, &["--follow", "--json", "--container", "4f2a"]);
    let (other, other_lines) = events(&agent, &["--follow", "--json", "--container", "4f2b"]);
    let proxy = match agent.client().call_ok(&Request::OpenProxy {
        container: container.into(),
        upstream: engine.display().to_string(),
    }) {
        Ok(Response::Proxy { path }) => path,
        other => panic!("open a proxy: {other:?}"),
    };
    let mut conn = std::os::unix::net::UnixStream::connect(&proxy).expect("connect to the proxy");
    std::io::Write::write_all(
        &mut conn,
        b"POST /v1.41/images/x/push HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n",
    )
    .expect("send a push");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut conn, &mut answer);
    assert!(answer.contains("403"), "{answer}");

    let (refusal, seen) = wait_line(&lines, |l| l["event"] == "docker_api_denied");
    stop(follower);
    let refusal = refusal.unwrap_or_else(|| panic!("no refusal streamed: {seen:?}"));
    assert_eq!(refusal["container"], container, "{refusal}");
    assert_eq!(
        agent.wait_audit(|l| l["event"] == "docker_api_denied"),
        refusal
    );
    std::thread::sleep(Duration::from_millis(500));
    stop(other);
    let filtered: Vec<String> = other_lines.try_iter().collect();
    assert!(
        filtered.is_empty(),
        "another container's reader got: {filtered:?}"
    );

    // Without --follow: the recent lines, in the human form, and the end.
    let out = Command::new(agent_bin())
        .args(["events", "--container", "4f2a"])
        .args(agent.common_args())
        .output()
        .expect("eci-agent events");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("denied docker API POST /v1.41/images/x/push container 4f2a0b1c2d3e…"),
        "{text}"
    );
}
