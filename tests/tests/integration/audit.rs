//! The audit log under load: a container that storms cannot crowd another
//! container's events out, and every decision is either a line of its own or
//! counted in a summary line naming its cgroup.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use eci_integration_tests::{
    Attempt, TestAgent, TestCgroup, attempt, bpf_lsm_or_skip, test_client, tmp_dir,
};

/// Connects to `<dir>/bench.sock` that a storm makes: each one refused.
const STORM: u64 = 2_000;
const QUIET: usize = 5;
/// The storm test's limit: low, so that the lines stay few under emulation
/// and the storm is far above it (the default, 100, is eci-policy's,
/// unit-tested there).
const STORM_LINES_PER_SECOND: u64 = 10;

fn lines_of(agent: &TestAgent, cgroup: &TestCgroup) -> Vec<serde_json::Value> {
    agent
        .audit_lines()
        .into_iter()
        .filter(|l| l["cgroup_id"] == cgroup.id)
        .collect()
}

/// (denials logged one by one, decisions counted in summary lines, the
/// summary lines) of `cgroup`.
fn accounted(agent: &TestAgent, cgroup: &TestCgroup) -> (u64, u64, Vec<serde_json::Value>) {
    let lines = lines_of(agent, cgroup);
    let (summaries, own): (Vec<_>, Vec<_>) = lines
        .into_iter()
        .partition(|l| l["event"] == "audit_not_logged");
    let counted = summaries.iter().filter_map(|s| s["count"].as_u64()).sum();
    (own.len() as u64, counted, summaries)
}

/// A directory with a listening `bench.sock` (where eci-bench's worker
/// connects), accepting for as long as the test runs.
fn listening_socket(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(tmp_dir())
        .expect("tempdir");
    let socket = dir.path().join("bench.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::thread::spawn(move || for _ in listener.incoming() {});
    (dir, socket)
}

#[test]
fn a_storming_container_is_summarised_and_a_quiet_ones_every_denial_is_a_line() {
    if !bpf_lsm_or_skip(
        "a_storming_container_is_summarised_and_a_quiet_ones_every_denial_is_a_line",
    ) {
        return;
    }
    let (dir, socket) = listening_socket("eci-audit-storm");
    let policy =
        format!(r#"{{"eci": {{"audit": {{"linesPerSecond": {STORM_LINES_PER_SECOND}}}}}}}"#);
    let mut agent = TestAgent::start_with_policy(
        Some(&policy),
        &["--protect-socket", &socket.display().to_string()],
    );
    let storming = TestCgroup::new("eci-storm");
    let quiet = TestCgroup::new("eci-quiet");
    let free = TestCgroup::new("eci-free");
    agent.protect(&storming);
    agent.protect(&quiet);
    let client = test_client();

    // Where it must work: an unprotected task connects.
    let (result, _, text) = attempt(&client, &free, "stream", &socket);
    assert_eq!(result, Attempt::Allowed, "unprotected connect: {text}");

    // The storm: one task of the storming container, STORM refused
    // connects as fast as it can (eci-bench's worker checks each is EPERM).
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_eci-bench"));
    let started = Instant::now();
    let mut storm = storming
        .command(&bench)
        .args(["worker", "connect-denied", &STORM.to_string()])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the storm");
    // Meanwhile the quiet container is refused a few times.
    let mut during_storm = 0;
    for _ in 0..QUIET {
        if storm.try_wait().ok().flatten().is_none() {
            during_storm += 1;
        }
        let (result, _, text) = attempt(&client, &quiet, "stream", &socket);
        assert_eq!(result, Attempt::Denied, "quiet container's connect: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = storm.wait_with_output().expect("storm");
    assert!(
        out.status.success(),
        "the storm: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let storm_time = started.elapsed();
    assert!(
        during_storm >= 2,
        "the storm ended before the quiet container's denials ({storm_time:?}); nothing was tested"
    );

    // Every denial of the quiet container is a line of its own.
    let quiet_lines = agent.wait_audit_count(QUIET, |l| {
        l["cgroup_id"] == quiet.id && l["verdict"] == "deny"
    });
    assert_eq!(
        quiet_lines.len(),
        QUIET,
        "the quiet container's denials ({during_storm} during the storm):\n{}",
        agent.stderr()
    );
    let (_, quiet_counted, _) = accounted(&agent, &quiet);
    assert_eq!(quiet_counted, 0, "the quiet container was not limited");

    // The storming one: lines plus counted plus ring-buffer drops is every
    // denial, exactly (the summary comes within a second or two).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (logged, counted, summaries) = loop {
        let (logged, counted, summaries) = accounted(&agent, &storming);
        if logged + counted + agent.event_drops() >= STORM || Instant::now() > deadline {
            break (logged, counted, summaries);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let drops = agent.event_drops();
    assert_eq!(
        logged + counted + drops,
        STORM,
        "every denial is a line or counted: {logged} lines, {counted} counted, {drops} dropped; summaries: {summaries:?}"
    );
    // The policy's lines a second in each window the storm touched; a
    // little more where windows straddle the start and the end.
    let windows = storm_time.as_secs() + 2;
    assert!(
        counted > 0 && logged <= STORM_LINES_PER_SECOND * windows + QUIET as u64,
        "the storm was limited to {STORM_LINES_PER_SECOND} lines a second: {logged} lines in {storm_time:?}, {counted} counted"
    );
    let summary = &summaries[0];
    assert_eq!(summary["cgroup"], storming.path.as_str(), "{summary}");
    assert_eq!(
        summary["lines_per_second"], STORM_LINES_PER_SECOND,
        "{summary}"
    );
    assert!(
        summary["not_logged"]["unix_stream_connect"].as_u64() > Some(0),
        "{summary}"
    );
    let last_total = summaries
        .iter()
        .filter_map(|s| s["total"].as_u64())
        .max()
        .unwrap_or(0);
    assert_eq!(last_total, counted, "{summaries:?}");

    // A restarted agent does not report the same decisions again.
    agent.kill_hard();
    agent.spawn(&["--protect-socket", &socket.display().to_string()]);
    std::thread::sleep(Duration::from_secs(3));
    let (_, counted_after, _) = accounted(&agent, &storming);
    assert_eq!(counted_after, counted, "reported again after a restart");
}

#[test]
fn the_policy_sets_the_audit_lines_per_container_and_second() {
    if !bpf_lsm_or_skip("the_policy_sets_the_audit_lines_per_container_and_second") {
        return;
    }
    let (dir, socket) = listening_socket("eci-audit-rate");
    let agent = TestAgent::start(&["--protect-socket", &socket.display().to_string()]);
    let cgroup = TestCgroup::new("eci-rate");
    agent.protect(&cgroup);
    // Reloaded without a restart (SIGHUP), as an admin would.
    std::fs::write(
        agent.dir.path().join("admin-settings.json"),
        r#"{"eci": {"audit": {"linesPerSecond": 3}}}"#,
    )
    .expect("policy");
    let pid = agent.child.as_ref().map(|c| c.id()).expect("agent pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    std::thread::sleep(Duration::from_secs(1));
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_eci-bench"));
    let total = 40u64;
    let out = cgroup
        .command(&bench)
        .args(["worker", "connect-denied", &total.to_string()])
        .arg(dir.path())
        .output()
        .expect("worker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (logged, counted, summaries) = loop {
        let found = accounted(&agent, &cgroup);
        if found.0 + found.1 >= total || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(logged + counted, total, "{summaries:?}");
    assert!(
        (3..total).contains(&logged),
        "3 lines a second, the rest counted: {logged} lines, {counted} counted"
    );
    assert_eq!(summaries[0]["lines_per_second"], 3, "{summaries:?}");
}
