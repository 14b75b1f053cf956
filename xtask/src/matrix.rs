//! The VM matrix of a full run: which VM runs what, two at a time (one
//! vCPU each, one per core), longest first, each with its own log and a line
//! in the summary, plus the slowest tests of the whole run.
//!
//! A full run gives every kernel its kernel suites, and each engine suite
//! the stacks it must pass on: bookworm (this machine's root: Docker 20.10,
//! containerd 1.6, runc 1.1) on 6.1 and 6.12, sid (Docker 28, containerd 2,
//! runc 1.3) on 7.2. Each engine suite runs on one stack but the escape
//! suite (both), so the run fits CI's time under emulation (where sid's
//! engine is 2-3 times slower than bookworm's): the everyday workflows
//! (`as_usual::`) and CRI on sid, what users run; `docker::` (eci-runc's
//! Docker tests, which the host's Docker 20.10 also runs without the
//! kernel part), the full stack and the demo (with the agent's image
//! after it, in its VM) on bookworm. The other pairs
//! pass too and are one `vm-test --kernel K -- SUITE` away (README), as is
//! Docker-in-Docker (`--kernel 7.2 -- dind::`). The engine suites are the
//! slowest tests under emulation, so they run in VMs of their own beside
//! the kernel suites.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;

use crate::kernels::Kernel;
use crate::{stacks, util, vm};

/// The engine suites (each starts its own engine in the VM), as test-name
/// filters.
pub const ENGINE_SUITES: &[&str] = &[
    "escape_suite",
    "full_stack",
    "as_usual::",
    "cri::",
    "demo::",
    "docker::",
    "dind::",
    "image::",
    "package::",
];

/// Engine suites that run in another's VM, after it (libtest's order is
/// the names'): the agent's image (`image::`, two minutes) and the Debian
/// package (`package::`, three) with the demo, on the same kernel and
/// stack, two boots fewer.
fn rides_with(suite: &str) -> Option<&'static str> {
    match suite {
        "image::" | "package::" => Some("demo::"),
        _ => None,
    }
}

/// One VM run of the matrix.
#[derive(Clone, Debug)]
pub struct Job {
    pub kernel: Kernel,
    /// Short name of what runs: "kernel suites", "escape_suite", ...
    pub part: String,
    /// Test-binary arguments (filters and `--skip`s).
    pub args: Vec<String>,
    /// `lsm=` for the kernel command line; `None`: the default (with bpf).
    pub lsm: Option<String>,
    pub env: Vec<(String, String)>,
}

impl Job {
    fn key(&self) -> String {
        format!(
            "{} / {} / {}",
            self.kernel.name, self.kernel.stack, self.part
        )
    }
    fn label(&self) -> String {
        let part: String = self
            .part
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("vm-test-{}", part.trim_matches('-'))
    }
}

fn enforcing_env() -> Vec<(String, String)> {
    vec![
        ("ECI_REQUIRE_LSM".into(), "1".into()),
        ("ECI_LSM_EXPECTED".into(), "present".into()),
        ("RUST_BACKTRACE".into(), "1".into()),
    ]
}

/// Which engine suites a stack runs, and on which kernel of it.
fn engine_home(suite: &str, kernel: &Kernel) -> bool {
    match (suite, kernel.stack.as_str()) {
        ("escape_suite" | "full_stack", "bookworm") => kernel.name == "6.1",
        ("docker::", "bookworm") => kernel.name == "6.12",
        // The demo's engine directory is on /tmp, a tmpfs: ID-mappable (for
        // its shared directory) from 6.3; `cargo xtask demo` runs on 6.12.
        ("demo::", "bookworm") => kernel.name == "6.12",
        ("escape_suite" | "as_usual::" | "cri::", "sid") => kernel.name == "7.2",
        _ => false,
    }
}

/// The jobs of a run over `kernels`. With a filter: one VM per kernel that
/// runs the filter. Without: the kernel suites on every kernel, each engine
/// suite on its stack's home kernel (a suite whose home is not in the run
/// goes to the first kernel of the same stack, or is left out with a line
/// saying so), and one boot without bpf in `lsm=`.
pub fn plan(kernels: &[Kernel], filter: &[String]) -> Vec<Job> {
    if !filter.is_empty() {
        return kernels
            .iter()
            .map(|k| Job {
                kernel: k.clone(),
                part: "filtered".into(),
                args: filter.to_vec(),
                lsm: None,
                env: enforcing_env(),
            })
            .collect();
    }
    let mut jobs = Vec::new();
    for k in kernels {
        let mut args = Vec::new();
        for suite in ENGINE_SUITES {
            args.push("--skip".to_string());
            args.push(suite.to_string());
        }
        jobs.push(Job {
            kernel: k.clone(),
            part: "kernel suites".into(),
            args,
            lsm: None,
            env: enforcing_env(),
        });
    }
    for suite in ENGINE_SUITES.iter().filter(|s| rides_with(s).is_none()) {
        for stack in ["bookworm", "sid"] {
            let on_stack: Vec<&Kernel> = kernels.iter().filter(|k| k.stack == stack).collect();
            let mut homes: Vec<&Kernel> = on_stack
                .iter()
                .filter(|k| engine_home(suite, k))
                .copied()
                .collect();
            if homes.is_empty() {
                homes.extend(on_stack.first().filter(|_| stack_runs(suite, stack)));
            }
            let mut args = vec![suite.to_string()];
            args.extend(
                ENGINE_SUITES
                    .iter()
                    .filter(|s| rides_with(s) == Some(suite))
                    .map(|s| s.to_string()),
            );
            for k in homes {
                jobs.push(Job {
                    kernel: k.clone(),
                    part: suite.trim_end_matches("::").to_string(),
                    args: args.clone(),
                    lsm: None,
                    env: enforcing_env(),
                });
            }
        }
    }
    if let Some(k) = kernels
        .iter()
        .find(|k| k.name == "6.12")
        .or(kernels.first())
    {
        jobs.push(Job {
            kernel: k.clone(),
            part: "without bpf in lsm=".into(),
            args: vec!["lsm_unavailable".into()],
            lsm: Some("lockdown,capability,landlock,yama".into()),
            env: vec![
                ("ECI_LSM_EXPECTED".into(), "absent".into()),
                ("RUST_BACKTRACE".into(), "1".into()),
            ],
        });
    }
    jobs
}

/// Whether a full run gives `suite` a VM on `stack` at all (see the
/// module's comment): the CRI path and the everyday workflows on sid, the
/// demo, the full stack and `docker::` on bookworm; Docker-in-Docker on
/// neither (by hand: `vm-test --kernel 7.2 -- dind::`).
fn stack_runs(suite: &str, stack: &str) -> bool {
    !matches!(
        (suite, stack),
        ("cri::" | "as_usual::", "bookworm")
            | ("demo::" | "full_stack" | "docker::", "sid")
            | ("dind::", _)
    )
}

/// What one job reported.
#[derive(Clone, Debug, Default)]
pub struct JobReport {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// (test name, seconds, outcome)
    pub tests: Vec<(String, f64, String)>,
}

/// Reads libtest's JSON events (`--format json --report-time`) out of a
/// console where the tests' own output is interleaved. A test that printed
/// `SKIP: <reason>` while it ran counts as skipped, not passed.
pub fn read_events(lines: &[String]) -> JobReport {
    let mut r = JobReport::default();
    let mut skipping: Option<String> = None;
    for raw in lines {
        if raw.trim_start().starts_with("SKIP:") {
            skipping = Some(raw.trim().to_string());
        }
        let Some(at) = raw.find("{ \"type\": \"test\"") else {
            continue;
        };
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&raw[at..]) else {
            continue;
        };
        let name = ev["name"].as_str().unwrap_or("?").to_string();
        let secs = ev["exec_time"].as_f64().unwrap_or(0.0);
        let outcome = match ev["event"].as_str() {
            Some("started") => {
                skipping = None;
                continue;
            }
            Some("ok") if skipping.is_some() => {
                r.skipped += 1;
                "skipped"
            }
            Some("ok") => {
                r.passed += 1;
                "ok"
            }
            Some("failed" | "timeout") => {
                r.failed += 1;
                "FAILED"
            }
            Some("ignored") => {
                r.skipped += 1;
                "ignored"
            }
            _ => continue,
        };
        r.tests.push((name, secs, outcome.to_string()));
        skipping = None;
    }
    r
}

fn durations_file() -> std::path::PathBuf {
    util::build_dir().join("vm/durations.json")
}

/// Seconds each job took last time (for the order: longest first).
fn load_durations() -> BTreeMap<String, f64> {
    fs::read_to_string(durations_file())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// First guesses under TCG, before a run here has measured them (a fresh
/// CI machine has no durations): this kind of machine's runs on a slow day
/// (2026-12-04), so the longest still go first.
fn guess(job: &Job) -> f64 {
    match job.part.as_str() {
        "as_usual" => 1800.0,
        "docker" => 850.0,
        "escape_suite" => 500.0,
        "kernel suites" => 400.0,
        "full_stack" => 250.0,
        "demo" => 450.0,
        "dind" => 500.0,
        "cri" => 200.0,
        _ => 30.0,
    }
}

/// One line of the summary for a finished job.
pub struct JobLine {
    pub key: String,
    pub line: String,
    pub ok: bool,
    pub report: JobReport,
}

/// Runs the jobs, at most `lanes` VMs at once, longest (last measured)
/// first. Every job's console goes to its own log; when a job ends, its
/// test lines are printed, and the tail of its console when it failed.
pub fn run(
    jobs: Vec<Job>,
    bins_script: impl Fn(&[String]) -> String + Sync,
    lanes: usize,
    timeout: Duration,
) -> Result<Vec<JobLine>> {
    let known = load_durations();
    let mut order: Vec<(f64, Job)> = jobs
        .into_iter()
        .map(|j| (known.get(&j.key()).copied().unwrap_or_else(|| guess(&j)), j))
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let queue = Mutex::new(order.into_iter().map(|(_, j)| j).collect::<Vec<_>>());
    let results: Mutex<Vec<JobLine>> = Mutex::new(Vec::new());
    let measured = Mutex::new(known);
    std::thread::scope(|scope| {
        for _ in 0..lanes {
            scope.spawn(|| {
                loop {
                    let next = {
                        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                        if q.is_empty() {
                            None
                        } else {
                            Some(q.remove(0))
                        }
                    };
                    let Some(job) = next else { break };
                    let line = run_one(&job, &bins_script(&job.args), timeout);
                    if let Some(secs) = line.1 {
                        measured
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(job.key(), secs);
                    }
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line.0);
                }
            });
        }
    });
    let measured = measured.into_inner().unwrap_or_else(|p| p.into_inner());
    let _ = fs::write(
        durations_file(),
        serde_json::to_string_pretty(&measured).unwrap_or_default() + "\n",
    );
    Ok(results.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Runs one job; returns its summary line and, when it ran to the end, its
/// duration.
fn run_one(job: &Job, script: &str, timeout: Duration) -> (JobLine, Option<f64>) {
    let key = job.key();
    println!(
        "vm-test: {key}: starting ({} {}, stack {})",
        job.kernel.name,
        job.kernel.release,
        stacks::describe(&job.kernel.stack)
    );
    let mut opts = vm::VmOptions {
        env: job.env.clone(),
        label: job.label(),
        echo: false,
        timeout,
        ..vm::VmOptions::default()
    };
    if let Some(lsm) = &job.lsm {
        opts.lsm = lsm.clone();
    }
    let outcome = vm::run_in_vm(&job.kernel, script, &opts);
    let (ok, report, text, secs) = match outcome {
        Ok(o) => {
            let report = read_events(&o.output);
            let ok = o.success() && report.failed == 0;
            let mut text = String::new();
            for l in &o.output {
                let t = l.trim_start();
                if t.starts_with("SKIP:")
                    || t.starts_with("test result:")
                    || l.contains("\"event\": \"failed\"")
                    || t.starts_with("escape suite:")
                {
                    text.push_str(&format!("  {key} | {l}\n"));
                }
            }
            if !ok {
                text.push_str(&format!(
                    "  {key}: {} — the last 120 lines of its console ({}):\n",
                    o.result,
                    o.log.display()
                ));
                let from = o.output.len().saturating_sub(120);
                for l in &o.output[from..] {
                    text.push_str(&format!("  {key} > {l}\n"));
                }
            }
            let secs = o.duration.as_secs_f64();
            let mut report = report;
            if !o.success() && report.failed == 0 {
                report.failed += 1; // panic, hang or no result marker
            }
            (
                ok,
                report,
                text,
                o.exit_code()
                    .map(|_| secs)
                    .map(|s| (s, o.result.to_string())),
            )
        }
        Err(e) => {
            let report = JobReport {
                failed: 1,
                ..JobReport::default()
            };
            (
                false,
                report,
                format!("  {key}: could not run: {e:#}\n"),
                None,
            )
        }
    };
    print!("{text}");
    let line = format!(
        "kernel {} / {} / {}: {} passed, {} failed, {} skipped, {}",
        job.kernel.name,
        job.kernel.stack,
        job.part,
        report.passed,
        report.failed,
        report.skipped,
        match &secs {
            Some((s, _)) => format!("{s:.0} s"),
            None => "did not finish".into(),
        }
    );
    println!("vm-test: {line}{}", if ok { "" } else { "  <-- FAILED" });
    (
        JobLine {
            key,
            line,
            ok,
            report,
        },
        secs.map(|(s, _)| s),
    )
}

/// The slowest `n` tests of all jobs.
pub fn slowest(lines: &[JobLine], n: usize) -> Vec<String> {
    let mut all: Vec<(f64, String)> = lines
        .iter()
        .flat_map(|l| {
            l.report
                .tests
                .iter()
                .map(move |(name, secs, outcome)| (*secs, format!("{name} ({}, {outcome})", l.key)))
        })
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.into_iter()
        .take(n)
        .map(|(s, what)| format!("{s:>7.1} s  {what}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(name: &str, stack: &str) -> Kernel {
        Kernel {
            name: name.into(),
            package: String::new(),
            version: String::new(),
            release: String::new(),
            suite: None,
            companions: Vec::new(),
            stack: stack.into(),
        }
    }

    #[test]
    fn a_full_run_gives_every_kernel_its_kernel_suites_and_each_stack_its_engine_suites() {
        let ks = [
            kernel("5.10", "bookworm"),
            kernel("6.1", "bookworm"),
            kernel("6.12", "bookworm"),
            kernel("7.2", "sid"),
        ];
        let jobs = plan(&ks, &[]);
        let keys: Vec<String> = jobs.iter().map(Job::key).collect();
        for k in ["5.10", "6.1", "6.12"] {
            assert!(
                keys.contains(&format!("{k} / bookworm / kernel suites")),
                "{keys:?}"
            );
        }
        assert!(keys.contains(&"7.2 / sid / kernel suites".to_string()));
        assert!(keys.contains(&"6.1 / bookworm / escape_suite".to_string()));
        assert!(keys.contains(&"6.1 / bookworm / full_stack".to_string()));
        assert!(keys.contains(&"7.2 / sid / escape_suite".to_string()));
        assert!(keys.contains(&"7.2 / sid / cri".to_string()));
        assert!(keys.contains(&"7.2 / sid / as_usual".to_string()));
        assert!(keys.contains(&"6.12 / bookworm / demo".to_string()));
        assert!(keys.contains(&"6.12 / bookworm / docker".to_string()));
        assert!(keys.contains(&"6.12 / bookworm / without bpf in lsm=".to_string()));
        assert_eq!(jobs.len(), 12, "{keys:?}");
        let demo = jobs.iter().find(|j| j.part == "demo").expect("demo job");
        assert_eq!(
            demo.args,
            ["demo::", "image::", "package::"],
            "the image's and the package's tests ride with the demo"
        );
        let kernel_job = jobs
            .iter()
            .find(|j| j.part == "kernel suites")
            .expect("job");
        for suite in ENGINE_SUITES {
            assert!(kernel_job.args.iter().any(|a| a == suite));
        }
    }

    #[test]
    fn a_filter_runs_on_every_kernel_asked_for() {
        let jobs = plan(&[kernel("6.12", "bookworm")], &["mounts::".into()]);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].args, ["mounts::"]);
    }

    #[test]
    fn events_are_read_between_the_tests_own_output_and_skips_count_as_skips() {
        let lines: Vec<String> = [
            r#"{ "type": "test", "event": "started", "name": "a::x" }"#,
            r#"noise{ "type": "test", "name": "a::x", "event": "ok", "exec_time": 2.5 }"#,
            r#"{ "type": "test", "event": "started", "name": "a::y" }"#,
            "SKIP: a::y: no loop device",
            r#"{ "type": "test", "name": "a::y", "event": "ok", "exec_time": 0.1 }"#,
            r#"{ "type": "test", "event": "started", "name": "a::z" }"#,
            r#"{ "type": "test", "name": "a::z", "event": "failed", "exec_time": 9.0 }"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = read_events(&lines);
        assert_eq!((r.passed, r.skipped, r.failed), (1, 1, 1));
        assert_eq!(r.tests[0], ("a::x".to_string(), 2.5, "ok".to_string()));
    }
}
