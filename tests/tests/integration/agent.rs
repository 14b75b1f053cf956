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
/// A start the agent refused left neither pins nor a control socket.
fn assert_a_refused_start_left_nothing(pin_dir: &str, socket: &std::path::Path) {
    assert!(
        !std::path::Path::new(pin_dir).exists(),
        "a refused start left pins behind"
    );
    assert!(!socket.exists(), "a refused start left a control socket");
}

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
    assert_a_refused_start_left_nothing(&pin_dir, &dir.path().join("agent.sock"));
}

/// With no cgroup2 mount in view the agent could register no container:
/// it must not start (and pass a readiness probe) protecting nothing.
/// The refusal comes before the BPF-LSM probe, so this runs on any kernel:
/// in a mount namespace of its own without the cgroup2 mounts; the same
/// start with them in view goes on to the probe (the must-work side).
#[test]
fn without_a_cgroup2_mount_in_view_the_agent_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pin_dir = format!("/sys/fs/bpf/{}", unique("eci-nocg2"));
    let run = format!(
        "{} run --pin-dir {pin_dir} --control-socket {} --audit-log {} --policy {}",
        agent_bin().display(),
        dir.path().join("agent.sock").display(),
        dir.path().join("audit.jsonl").display(),
        dir.path().join("admin-settings.json").display(),
    );
    let without = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "for m in $(findmnt -rn -t cgroup2 -o TARGET | sort -r); do umount -l \"$m\" || exit 99; done; \
             ! findmnt -rn -t cgroup2 >/dev/null || exit 98; exec {run}"
        ))
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&without.stderr);
    assert!(
        !without.status.success()
            && without.status.code() != Some(99)
            && without.status.code() != Some(98),
        "the agent must refuse to start (exit {:?}): {text}",
        without.status.code()
    );
    assert!(
        text.contains("refuses to start")
            && text.contains("no cgroup2 file system is mounted")
            && text.contains("mount -t cgroup2"),
        "the refusal names the rule and the fix: {text}"
    );
    assert_a_refused_start_left_nothing(&pin_dir, &dir.path().join("agent.sock"));
    // With cgroup2 in view the same start gets past this check (it may then
    // fail on a kernel without BPF-LSM, for that reason only).
    let mut with = Command::new("sh")
        .args(["-c", &format!("exec {run}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("eci-agent run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !dir.path().join("agent.sock").exists() {
        if let Ok(Some(_)) = with.try_wait() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent neither served nor stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = with.kill();
    let out = with.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("no cgroup2 file system"), "{text}");
    let _ = Command::new(agent_bin())
        .args(["unload", "--pin-dir", &pin_dir])
        .output();
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

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET /metrics` over a plain TCP connection: the body, after checking
/// the status line and the content type.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: eci\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(
        head.lines().any(|l| l.eq_ignore_ascii_case(
            "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
        )),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_owned()
}

/// The value of the sample `series` (name and labels as written), if any.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_count_a_denial_exactly_once() {
    if !bpf_lsm_or_skip("metrics_count_a_denial_exactly_once") {
        return;
    }
    let sockets = TestSockets::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let socket = sockets.stream.display().to_string();
    let args = ["--protect-socket", &socket, "--metrics-listen", &addr];
    let mut agent = TestAgent::start(&args);
    let protected = TestCgroup::new("eci-prot");
    let free = TestCgroup::new("eci-free");
    agent.protect(&protected);
    let series = r#"eci_hook_denials_total{hook="unix_stream_connect"}"#;
    // The container's own series: its cgroup names no container id here,
    // so the label is the cgroup's path.
    let container = format!(
        r#"eci_denials_total{{hook="unix_stream_connect",container="{}"}}"#,
        protected.path
    );
    let before = scrape(&addr);
    let denials_before =
        sample(&before, series).unwrap_or_else(|| panic!("no {series}:\n{before}"));
    assert_eq!(sample(&before, &container), None, "{before}");
    assert!(
        sample(&before, "eci_programs_attached").is_some_and(|n| n > 0.0),
        "{before}"
    );
    assert!(
        sample(&before, "eci_protected_cgroups").is_some_and(|n| n >= 1.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, r#"eci_registrations_total{result="ok"}"#),
        Some(1.0),
        "{before}"
    );

    let client = std::path::PathBuf::from(env!("CARGO_BIN_EXE_eci-test-client"));
    let (result, _, text) =
        eci_integration_tests::attempt(&client, &protected, "stream", &sockets.stream);
    assert_eq!(result, eci_integration_tests::Attempt::Denied, "{text}");
    let after = scrape(&addr);
    assert_eq!(
        sample(&after, series),
        Some(denials_before + 1.0),
        "one denied connect moves the hook's counter by one:\n{after}"
    );
    assert_eq!(
        sample(&after, &container),
        Some(1.0),
        "and the container's by one:\n{after}"
    );

    // The must-work side: an unprotected cgroup connects, nothing counted.
    let (result, _, text) =
        eci_integration_tests::attempt(&client, &free, "stream", &sockets.stream);
    assert_eq!(result, eci_integration_tests::Attempt::Allowed, "{text}");
    let again = scrape(&addr);
    assert_eq!(
        sample(&again, series),
        Some(denials_before + 1.0),
        "{again}"
    );
    assert_eq!(sample(&again, &container), Some(1.0), "{again}");
    assert!(
        !again.contains(&format!("container=\"{}\"", free.path)),
        "{again}"
    );

    // The agent's own count of the audit line, once it is written.
    agent.wait_audit(|l| l["hook"] == "unix_stream_connect");
    let line = r#"eci_audit_lines_total{hook="unix_stream_connect"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let body = scrape(&addr);
        match sample(&body, line) {
            Some(n) => {
                assert_eq!(n, 1.0, "{body}");
                break;
            }
            None => assert!(std::time::Instant::now() < deadline, "no {line}:\n{body}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The kernel's counters survive the agent: a new one serves them as
    // they were (the agent's own count starts again at zero).
    agent.kill_hard();
    agent.spawn(&args);
    let restarted = scrape(&addr);
    assert_eq!(
        sample(&restarted, series),
        Some(denials_before + 1.0),
        "{restarted}"
    );
    assert_eq!(sample(&restarted, &container), Some(1.0), "{restarted}");
}

/// Host-side (no BPF-LSM needed): the unenforced agent serves its metrics.
#[test]
fn metrics_are_served_without_kernel_enforcement() {
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = TestAgent::start(&["--unenforced-for-testing", "--metrics-listen", &addr]);
    let body = scrape(&addr);
    let out = Command::new(agent_bin())
        .arg("--version")
        .output()
        .expect("eci-agent --version");
    let printed = String::from_utf8_lossy(&out.stdout);
    let version = printed.trim().rsplit(' ').next().unwrap_or_default();
    assert_eq!(
        sample(&body, &format!(r#"eci_build_info{{version="{version}"}}"#)),
        Some(1.0),
        "{body}"
    );
    // Whatever the policy's protected parents match on this machine.
    assert!(sample(&body, "eci_protected_cgroups").is_some(), "{body}");
    assert_eq!(sample(&body, "eci_programs_attached"), Some(0.0), "{body}");
    // No kernel counters without enforcement; the agent's own from 0.
    assert!(!body.contains("eci_denials_total{"), "{body}");
    assert!(!body.contains("eci_hook_denials_total{"), "{body}");
    assert_eq!(
        sample(&body, "eci_audit_not_logged_total"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, r#"eci_registrations_total{result="refused"}"#),
        Some(0.0),
        "{body}"
    );

    // A refused registration is counted as one.
    let missing = agent.client().call(&eci_control::Request::Protect {
        cgroup: "/eci-no-such-cgroup".into(),
    });
    assert!(
        matches!(missing, Ok(eci_control::Response::Error { .. })),
        "{missing:?}"
    );
    let body = scrape(&addr);
    assert_eq!(
        sample(&body, r#"eci_registrations_total{result="refused"}"#),
        Some(1.0),
        "{body}"
    );

    // Anything but GET /metrics is a 404.
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: eci\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
}

/// Host-side: a metrics address already in use stops the start with an
/// error naming the flag and the address, and nothing is set up.
#[test]
fn metrics_on_a_busy_port_is_a_clear_error_and_changes_nothing() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let pin_dir = format!("/sys/fs/bpf/{}", unique("eci-metrics-busy"));
    let mut child = Command::new(agent_bin())
        .args(["run", "--unenforced-for-testing", "--no-default-sockets"])
        .args(["--pin-dir", &pin_dir, "--metrics-listen", &addr])
        .arg("--control-socket")
        .arg(&sock)
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--policy")
        .arg(dir.path().join("admin-settings.json"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent kept running with its metrics address taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(!sock.exists(), "a refused start left a control socket");
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "a refused start left pins behind"
    );
    drop(busy);
}
