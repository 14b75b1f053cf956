//! Hook-cost benchmark, run as root on a kernel with BPF-LSM (in the test
//! VM through `cargo xtask bench`). For each operation it measures ns/op
//! without eci's programs, with them for an unprotected task, and with them
//! for a protected task, alternating rounds so drift hits all three alike,
//! and reports medians and ratios. Absolute numbers under emulation mean
//! little; the ratios measured in one run are the result.
//!
//! Per hook, the kernel's own accounting (`kernel.bpf_stats_enabled`: each
//! program's run time and run count, read by the worker just before and
//! after its loop) gives ns per call and the share of the operation's time,
//! for an unprotected and a protected task. Those runs are separate (with
//! the accounting on, every program run also reads the clock twice), so
//! the ratio table stays without it.
//!
//! Then the agent: time from start to enforcing, resident memory idle and
//! under an event storm, and how fast it drains denial events (and drops).
//! And the audit rate limit: one container storming, one refused once a
//! second — every quiet denial a line of its own, every storm denial a line
//! or counted in a summary, and the agent's CPU during the storm.
//!
//! Where the kernel lets the ancestor walk keep its verdicts in cgroup local
//! storage (Linux 6.2+), the per-hook runs are made again with the LRU hash
//! (`--verdict-cache lru-hash`) in the same rounds, so the two caches are
//! measured side by side on one kernel.
//!
//! `eci-bench [--rounds N] [--iterations N] [--storm N] [--json PATH]
//! [--protection-mode auto|ancestor-walk|registry]` (the agent's, to compare
//! the ancestor walk with the registry on one kernel)
//! `eci-bench worker OP ITERATIONS` (internal: one measurement)

use std::{
    collections::BTreeMap,
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};

use eci_integration_tests::{TestAgent, TestCgroup, agent_bin};

const OPS: [&str; 3] = ["connect", "open", "getppid"];

/// Set for a worker whose run the kernel accounts: the agent's pin
/// directory, whose `links/` names every attached program.
const STATS_ENV: &str = "ECI_BENCH_STATS_PIN_DIR";
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run time (ns) and run count of one program, as the kernel counts them
/// while `kernel.bpf_stats_enabled` is 1.
#[derive(Clone, Copy, Default)]
struct ProgramStats {
    run_ns: u64,
    runs: u64,
}

/// The kernel's accounting of each program attached through a link pinned
/// under `pin_dir/links`, by the link's (the program's) name.
fn program_stats(pin_dir: &Path) -> Result<BTreeMap<String, ProgramStats>, String> {
    let links = pin_dir.join("links");
    let mut names = BTreeMap::new();
    for entry in std::fs::read_dir(&links).map_err(|e| format!("{}: {e}", links.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", links.display()))?;
        let link: FdLink = PinnedLink::from_pin(entry.path())
            .map_err(|e| format!("{}: {e}", entry.path().display()))?
            .into();
        let id = link
            .info()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?
            .program_id();
        names.insert(id, entry.file_name().to_string_lossy().into_owned());
    }
    let mut stats = BTreeMap::new();
    // A program unloaded while listing (not one of these) is skipped.
    for info in loaded_programs().flatten() {
        if let Some(name) = names.get(&info.id()) {
            stats.insert(
                name.clone(),
                ProgramStats {
                    run_ns: info.run_time().as_nanos() as u64,
                    runs: info.run_count(),
                },
            );
        }
    }
    Ok(stats)
}

/// `kernel.bpf_stats_enabled` set to 1 while this lives; its previous value
/// afterwards.
struct BpfStatsOn {
    previous: String,
}

impl BpfStatsOn {
    fn enable() -> Self {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .unwrap_or_else(|e| panic!("{BPF_STATS_SYSCTL}: {e}"));
        std::fs::write(BPF_STATS_SYSCTL, "1")
            .unwrap_or_else(|e| panic!("enabling {BPF_STATS_SYSCTL}: {e}"));
        Self {
            previous: previous.trim().to_owned(),
        }
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!("restoring {BPF_STATS_SYSCTL} to {}: {e}", self.previous);
        }
    }
}

/// One measured worker run: ns per operation, and what each program that
/// ran meanwhile cost (when the kernel accounted).
#[derive(Default)]
struct Run {
    ns_per_op: f64,
    hooks: BTreeMap<String, ProgramStats>,
}

fn worker(op: &str, iterations: u64, dir: &str) -> Result<f64, String> {
    let socket = PathBuf::from(dir).join("bench.sock");
    let file = PathBuf::from(dir).join("bench.file");
    let pin_dir = std::env::var_os(STATS_ENV).map(PathBuf::from);
    let before = match &pin_dir {
        Some(p) => program_stats(p)?,
        None => BTreeMap::new(),
    };
    let start = Instant::now();
    for _ in 0..iterations {
        match op {
            "connect" => drop(UnixStream::connect(&socket).map_err(|e| format!("connect: {e}"))?),
            "open" => drop(std::fs::File::open(&file).map_err(|e| format!("open: {e}"))?),
            // SAFETY: no arguments, no side effects.
            "getppid" => drop(unsafe { libc::getppid() }),
            // Every connect is refused by eci (the storm of denial events).
            "connect-denied" => match UnixStream::connect(&socket) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) => return Err(format!("connect: {e}")),
                Ok(_) => return Err("connect was allowed: the socket is not protected".into()),
            },
            other => return Err(format!("unknown op {other}")),
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    if let Some(p) = &pin_dir {
        for (name, after) in program_stats(p)? {
            let was = before.get(&name).copied().unwrap_or_default();
            let runs = after.runs.saturating_sub(was.runs);
            if runs > 0 {
                let run_ns = after.run_ns.saturating_sub(was.run_ns);
                println!("hook={name} run_ns={run_ns} runs={runs}");
            }
        }
    }
    Ok(ns)
}

fn measure(cgroup: &TestCgroup, op: &str, iterations: u64, dir: &str) -> f64 {
    run_worker(cgroup, op, iterations, dir, None).ns_per_op
}

/// A worker run with the kernel's accounting on, read for the programs
/// pinned under `pin_dir`.
fn measure_hooks(cgroup: &TestCgroup, op: &str, iterations: u64, dir: &str, pin_dir: &Path) -> Run {
    let _on = BpfStatsOn::enable();
    run_worker(cgroup, op, iterations, dir, Some(pin_dir))
}

fn run_worker(
    cgroup: &TestCgroup,
    op: &str,
    iterations: u64,
    dir: &str,
    pin_dir: Option<&Path>,
) -> Run {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = cgroup.command(exe);
    command.args(["worker", op, &iterations.to_string(), dir]);
    if let Some(p) = pin_dir {
        command.env(STATS_ENV, p);
    }
    let out = command.output().expect("run worker");
    let text = String::from_utf8_lossy(&out.stdout);
    let failed = || -> ! {
        panic!(
            "worker {op} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let mut run = Run::default();
    let mut ns = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("ns_per_op=") {
            ns = v.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("hook=") {
            let mut fields = rest.split_whitespace();
            let name = fields.next().unwrap_or_else(|| failed());
            let mut value = |key: &str| -> u64 {
                fields
                    .next()
                    .and_then(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| failed())
            };
            let run_ns = value("run_ns=");
            let runs = value("runs=");
            run.hooks
                .insert(name.to_owned(), ProgramStats { run_ns, runs });
        }
    }
    run.ns_per_op = ns.unwrap_or_else(|| failed());
    run
}

/// Per hook that ran in `runs` (one per round): medians of ns per call
/// (run time / run count), calls per operation, and the share of the
/// operation's time (run time / iterations / ns per op, in that run).
fn hook_rows(runs: &[Run], iterations: u64) -> Vec<serde_json::Value> {
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.hooks.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let of = |f: &dyn Fn(&Run, ProgramStats) -> f64| {
                median(
                    runs.iter()
                        .map(|r| f(r, r.hooks.get(name).copied().unwrap_or_default()))
                        .collect(),
                )
            };
            let ns_per_call = of(&|_, s| s.run_ns as f64 / s.runs.max(1) as f64);
            let calls_per_op = of(&|_, s| s.runs as f64 / iterations as f64);
            let share = of(&|r, s| s.run_ns as f64 / iterations as f64 / r.ns_per_op);
            serde_json::json!({
                "hook": name, "ns_per_call": ns_per_call, "calls_per_op": calls_per_op,
                "share_of_op": share,
            })
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` figure of /proc/PID/status (0 when missing).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The reference for the agent's start: `eci-agent bare-load` loads the
/// same object and attaches its programs with nothing else; ms from
/// spawning it to its line saying they are attached (exec included, as in
/// the agent's start to enforcing).
fn bare_load_ms(mode: &str) -> f64 {
    use std::io::BufRead as _;
    let pin_dir = format!("/sys/fs/bpf/eci-bench-bare-{}", std::process::id());
    let started = Instant::now();
    let mut child = std::process::Command::new(agent_bin())
        .args([
            "bare-load",
            "--pin-dir",
            &pin_dir,
            "--protection-mode",
            mode,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn eci-agent bare-load");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut attached = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("bare-load output");
        if line.starts_with("attached ") {
            attached = Some(started.elapsed());
            eprintln!("bare load: {line}");
        }
    }
    let status = child.wait().expect("wait for bare-load");
    match attached {
        Some(t) if status.success() => t.as_secs_f64() * 1e3,
        _ => panic!("eci-agent bare-load failed ({status})"),
    }
}

/// The agent's own figures: start to enforcing, memory, audit throughput.
fn agent_figures(dir: &str, storm: u64, mode: &str) -> serde_json::Value {
    let prot = TestCgroup::new("eci-bench-storm");
    let socket = format!("{dir}/bench.sock");
    let bare: Vec<f64> = (0..3).map(|_| bare_load_ms(mode)).collect();
    let bare_ms = median(bare.clone());
    let started = Instant::now();
    let agent = TestAgent::start(&["--protect-socket", &socket, "--protection-mode", mode]);
    let ready = started.elapsed();
    agent.protect(&prot);
    // Enforcing: the first connect from the protected cgroup is refused
    // (the agent protects a socket it was told about within its refresh).
    let exe = std::env::current_exe().expect("current_exe");
    let denied_once = || {
        prot.command(&exe)
            .args(["worker", "connect-denied", "1", dir])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !denied_once() {
        assert!(started.elapsed().as_secs() < 60, "the agent never enforced");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let enforcing = started.elapsed();
    let pid = agent.child.as_ref().map(|c| c.id()).unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let rss_idle = rss_kib(pid);
    let rss_idle_parts = serde_json::json!({
        "anon_kib": status_kib(pid, "RssAnon:"),
        "file_kib": status_kib(pid, "RssFile:"),
        "shmem_kib": status_kib(pid, "RssShmem:"),
        "threads": status_kib(pid, "Threads:"),
    });
    // Every denial is a line of its own or counted in an audit_not_logged
    // summary line (the audit rate limit).
    let accounted = || -> u64 {
        agent
            .audit_lines()
            .iter()
            .map(|l| match l["event"].as_str() {
                Some("audit_not_logged") => l["count"].as_u64().unwrap_or(0),
                Some(_) => 0,
                None => 1,
            })
            .sum()
    };
    let before = accounted();
    let storm_started = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !sampling.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        peak
    });
    let ns = measure(&prot, "connect-denied", storm, dir);
    let produced = storm_started.elapsed();
    // Drained: every denial is either in the audit log or counted as
    // dropped (or nothing has moved for 15 s). The agent writes a whole
    // ring-buffer batch at once, so the log grows in steps.
    let drops_now = || agent.event_drops();
    let mut seen = (0u64, 0u64);
    let mut last_change = Instant::now();
    loop {
        let audited = accounted().saturating_sub(before);
        let dropped = drops_now();
        if (audited, dropped) != seen {
            seen = (audited, dropped);
            last_change = Instant::now();
        }
        if audited + dropped >= storm || last_change.elapsed() > std::time::Duration::from_secs(15)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (drained, drops) = seen;
    let drain_time = last_change.duration_since(storm_started);
    let rss_storm = rss_kib(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(agent);
    let rss_peak = sampler.join().unwrap_or(0).max(rss_storm);
    serde_json::json!({
        "start_to_ready_ms": ready.as_secs_f64() * 1e3,
        "start_to_enforcing_ms": enforcing.as_secs_f64() * 1e3,
        "bare_load_and_attach_ms": bare_ms,
        "bare_load_and_attach_runs_ms": bare,
        "ratio_enforcing_to_bare": enforcing.as_secs_f64() * 1e3 / bare_ms,
        "rss_idle_kib": rss_idle,
        "rss_idle_parts": rss_idle_parts,
        "rss_storm_peak_kib": rss_peak,
        "rss_ratio_storm_to_idle": rss_peak as f64 / rss_idle.max(1) as f64,
        "storm_denials": storm,
        "storm_ns_per_denied_connect": ns,
        "denials_per_s_produced": storm as f64 / produced.as_secs_f64(),
        "events_audited": drained,
        "events_dropped": drops,
        "events_audited_per_s": drained as f64 / drain_time.as_secs_f64(),
        "audited_plus_dropped_equals_denials": drained + drops == storm,
    })
}

/// CPU time (utime + stime, clock ticks) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// Two protected containers: one storming (as many refused connects as it
/// can make), one refused once a second. Every denial of the quiet one must
/// be a line of its own; the storming one's are lines or counted in its
/// summary lines. The agent's CPU during the storm is reported.
fn audit_storm_figures(dir: &str, storm: u64, mode: &str) -> serde_json::Value {
    let socket = format!("{dir}/bench.sock");
    let agent = TestAgent::start(&["--protect-socket", &socket, "--protection-mode", mode]);
    let storming = TestCgroup::new("eci-bench-stormer");
    let quiet = TestCgroup::new("eci-bench-quiet");
    agent.protect(&storming);
    agent.protect(&quiet);
    let exe = std::env::current_exe().expect("current_exe");
    let pid = agent.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let hz = 100.0; // USER_HZ
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();
    let mut stormer = storming
        .command(&exe)
        .args(["worker", "connect-denied", &storm.to_string(), dir])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the storm");
    let mut quiet_denials = 0u64;
    loop {
        let ok = quiet
            .command(&exe)
            .args(["worker", "connect-denied", "1", dir])
            .output()
            .is_ok_and(|o| o.status.success());
        quiet_denials += u64::from(ok);
        if stormer.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let storm_time = started.elapsed();
    let ticks_storm = cpu_ticks(pid).saturating_sub(ticks_before);
    // Wait (bounded) for the last summary line.
    let count = |cgroup: &TestCgroup| {
        let lines = agent.audit_lines();
        let of = |l: &&serde_json::Value| l["cgroup_id"] == cgroup.id;
        let own = lines
            .iter()
            .filter(of)
            .filter(|l| l["event"] != "audit_not_logged")
            .count() as u64;
        let counted: u64 = lines
            .iter()
            .filter(of)
            .filter(|l| l["event"] == "audit_not_logged")
            .filter_map(|l| l["count"].as_u64())
            .sum();
        (own, counted)
    };
    let drops = || agent.event_drops();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let (storm_lines, storm_counted) = loop {
        let (own, counted) = count(&storming);
        if own + counted + drops() >= storm || Instant::now() > deadline {
            break (own, counted);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (quiet_lines, quiet_counted) = count(&quiet);
    let dropped = drops();
    serde_json::json!({
        "storm_denials": storm,
        "storm_seconds": storm_time.as_secs_f64(),
        "storm_denials_per_s_offered": storm as f64 / storm_time.as_secs_f64(),
        "storm_lines": storm_lines,
        "storm_counted_in_summaries": storm_counted,
        "ring_buffer_drops": dropped,
        "storm_every_denial_accounted": storm_lines + storm_counted + dropped == storm,
        "quiet_denials": quiet_denials,
        "quiet_lines": quiet_lines,
        "quiet_counted": quiet_counted,
        "quiet_every_denial_a_line": quiet_lines == quiet_denials && quiet_counted == 0,
        "agent_cpu_percent_during_storm": ticks_storm as f64 / hz / storm_time.as_secs_f64() * 100.0,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        let (Some(op), Some(n), Some(dir)) = (
            args.get(2),
            args.get(3).and_then(|n| n.parse().ok()),
            args.get(4),
        ) else {
            eprintln!("usage: eci-bench worker OP ITERATIONS DIR");
            return ExitCode::from(2);
        };
        return match worker(op, n, dir) {
            Ok(ns) => {
                println!("ns_per_op={ns}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: usize = flag("--rounds").and_then(|v| v.parse().ok()).unwrap_or(5);
    let iterations: u64 = flag("--iterations")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let json_path = flag("--json");
    let storm: u64 = flag("--storm")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mode = flag("--protection-mode").unwrap_or_else(|| "auto".to_owned());

    let dir = tempfile::Builder::new()
        .prefix("eci-bench")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir_s = dir.path().display().to_string();
    let listener = UnixListener::bind(dir.path().join("bench.sock")).expect("bind");
    std::thread::spawn(move || for _ in listener.incoming() {});
    std::fs::write(dir.path().join("bench.file"), "x").expect("bench file");
    let free = TestCgroup::new("eci-bench-free");
    let prot = TestCgroup::new("eci-bench-prot");

    let mut without = vec![Vec::new(); OPS.len()];
    let mut unprotected = vec![Vec::new(); OPS.len()];
    let mut protected = vec![Vec::new(); OPS.len()];
    let mut unprotected_hooks: Vec<Vec<Run>> = OPS.iter().map(|_| Vec::new()).collect();
    let mut protected_hooks: Vec<Vec<Run>> = OPS.iter().map(|_| Vec::new()).collect();
    let mut lru_unprotected_hooks: Vec<Vec<Run>> = OPS.iter().map(|_| Vec::new()).collect();
    let mut lru_protected_hooks: Vec<Vec<Run>> = OPS.iter().map(|_| Vec::new()).collect();
    let verdict_cache = {
        let agent = TestAgent::start(&["--protection-mode", &mode]);
        let status: serde_json::Value =
            serde_json::from_slice(&agent.cli(&["status", "--json"]).stdout).unwrap_or_default();
        status["verdict_cache"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };
    let compare_caches = verdict_cache == "cgroup_storage";
    eprintln!(
        "verdict cache: {verdict_cache}{}",
        if compare_caches {
            " (the LRU hash is measured beside it)"
        } else {
            ""
        }
    );
    let started = Instant::now();
    for round in 0..rounds {
        for (i, op) in OPS.iter().enumerate() {
            without[i].push(measure(&free, op, iterations, &dir_s));
        }
        let agent = TestAgent::start(&["--protection-mode", &mode]);
        agent.protect(&prot);
        for (i, op) in OPS.iter().enumerate() {
            unprotected[i].push(measure(&free, op, iterations, &dir_s));
            protected[i].push(measure(&prot, op, iterations, &dir_s));
            let pins = &agent.pin_dir;
            unprotected_hooks[i].push(measure_hooks(&free, op, iterations, &dir_s, pins));
            protected_hooks[i].push(measure_hooks(&prot, op, iterations, &dir_s, pins));
        }
        drop(agent);
        if compare_caches {
            let agent =
                TestAgent::start(&["--protection-mode", &mode, "--verdict-cache", "lru-hash"]);
            agent.protect(&prot);
            for (i, op) in OPS.iter().enumerate() {
                let pins = &agent.pin_dir;
                lru_unprotected_hooks[i].push(measure_hooks(&free, op, iterations, &dir_s, pins));
                lru_protected_hooks[i].push(measure_hooks(&prot, op, iterations, &dir_s, pins));
            }
        }
        eprintln!(
            "round {}/{rounds} done ({:.0?})",
            round + 1,
            started.elapsed()
        );
    }
    println!(
        "hook cost, ns/op (median of {rounds} rounds x {iterations} iterations; ratios against no programs)"
    );
    println!(
        "{:<10} {:>12} {:>16} {:>8} {:>14} {:>8}",
        "op", "no programs", "unprotected", "ratio", "protected", "ratio"
    );
    let mut rows = Vec::new();
    for (i, op) in OPS.iter().enumerate() {
        let base = median(without[i].clone());
        let unp = median(unprotected[i].clone());
        let pro = median(protected[i].clone());
        println!(
            "{op:<10} {base:>12.0} {unp:>16.0} {:>8.3} {pro:>14.0} {:>8.3}",
            unp / base,
            pro / base
        );
        rows.push(serde_json::json!({
            "op": op, "ns_no_programs": base, "ns_unprotected": unp, "ns_protected": pro,
            "ratio_unprotected": unp / base, "ratio_protected": pro / base,
        }));
    }
    println!(
        "per hook, the kernel's accounting (kernel.bpf_stats_enabled; median of {rounds} rounds; ns/op of those runs, which pay for the accounting too); verdict cache: {verdict_cache}"
    );
    println!(
        "{:<10} {:<12} {:>10} {:<20} {:>9} {:>9} {:>9}",
        "op", "task", "ns/op", "hook", "calls/op", "ns/call", "share"
    );
    let mut hook_cost = Vec::new();
    for (i, op) in OPS.iter().enumerate() {
        let mut tasks = vec![
            ("unprotected", &unprotected_hooks[i]),
            ("protected", &protected_hooks[i]),
        ];
        if compare_caches {
            tasks.push(("unprot/lru", &lru_unprotected_hooks[i]));
            tasks.push(("prot/lru", &lru_protected_hooks[i]));
        }
        for (task, runs) in tasks {
            let ns_per_op = median(runs.iter().map(|r| r.ns_per_op).collect());
            let hooks = hook_rows(runs, iterations);
            if hooks.is_empty() {
                println!(
                    "{op:<10} {task:<12} {ns_per_op:>10.0} {:<20}",
                    "(no program ran)"
                );
            }
            for h in &hooks {
                println!(
                    "{op:<10} {task:<12} {ns_per_op:>10.0} {:<20} {:>9.2} {:>9.0} {:>8.2}%",
                    h["hook"].as_str().unwrap_or("?"),
                    h["calls_per_op"].as_f64().unwrap_or(0.0),
                    h["ns_per_call"].as_f64().unwrap_or(0.0),
                    h["share_of_op"].as_f64().unwrap_or(0.0) * 100.0
                );
            }
            hook_cost.push(serde_json::json!({
                "op": op, "task": task, "ns_per_op_with_accounting": ns_per_op, "hooks": hooks,
            }));
        }
    }
    let agent = agent_figures(&dir_s, storm, &mode);
    let audit_storm = audit_storm_figures(&dir_s, storm * 5, &mode);
    println!("audit under a storm (one run): {audit_storm}");
    println!("agent (one run):");
    for key in [
        "start_to_ready_ms",
        "start_to_enforcing_ms",
        "bare_load_and_attach_ms",
        "ratio_enforcing_to_bare",
        "rss_idle_kib",
        "rss_idle_parts",
        "rss_storm_peak_kib",
        "rss_ratio_storm_to_idle",
        "denials_per_s_produced",
        "events_audited",
        "events_dropped",
        "events_audited_per_s",
    ] {
        println!("  {key:<26} {}", agent[key]);
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let report = serde_json::json!({
        "benchmark": "hook_cost", "kernel": kernel.trim(), "rounds": rounds, "iterations": iterations, "results": rows,
        "per_hook": hook_cost, "verdict_cache": verdict_cache, "agent": agent, "audit_storm": audit_storm,
    });
    if let Some(path) = json_path {
        if let Err(e) = std::fs::write(
            &path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        ) {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    } else {
        println!("{report}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ns_per_op: f64, hooks: &[(&str, u64, u64)]) -> Run {
        Run {
            ns_per_op,
            hooks: hooks
                .iter()
                .map(|(name, run_ns, runs)| {
                    (
                        name.to_string(),
                        ProgramStats {
                            run_ns: *run_ns,
                            runs: *runs,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn hook_rows_give_ns_per_call_calls_per_op_and_share_of_the_op() {
        // 1000 operations of 2000 ns; file_open ran once per op for 100 ns.
        let runs = [
            run(2000.0, &[("file_open", 100_000, 1000)]),
            run(2000.0, &[("file_open", 100_000, 1000), ("sb_mount", 50, 1)]),
            run(2000.0, &[("file_open", 100_000, 1000)]),
        ];
        let rows = hook_rows(&runs, 1000);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["hook"], "file_open");
        assert_eq!(rows[0]["ns_per_call"], 100.0);
        assert_eq!(rows[0]["calls_per_op"], 1.0);
        assert_eq!(rows[0]["share_of_op"], 0.05);
        // A hook that ran in one round only: the median round saw none.
        assert_eq!(rows[1]["hook"], "sb_mount");
        assert_eq!(rows[1]["calls_per_op"], 0.0);
    }
}
