//! `cargo xtask test` and `cargo xtask vm-test`: every test, with the kernel
//! tests run natively where the host kernel allows BPF-LSM programs and in
//! the VM matrix where it does not.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::Result;

use crate::{docker, kernels, util, vm};

/// Totals parsed from libtest's `test result:` lines.
#[derive(Default, Debug, Clone, Copy)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub skipped: u64,
}

impl Tally {
    pub fn add_output(&mut self, lines: &[String]) {
        for raw in lines {
            let line = strip_ansi(raw);
            if line.trim_start().starts_with("SKIP:") || line.contains(" ... SKIP:") {
                self.skipped += 1;
            }
            let Some(rest) = line.split("test result:").nth(1) else {
                continue;
            };
            let number = |label: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(label).map(str::trim))
                    .and_then(|n| n.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            self.passed += number("passed");
            self.failed += number("failed");
            self.ignored += number("ignored");
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Build the agent and the integration-test binaries; return the test
/// executables (absolute paths).
pub fn build_test_binaries() -> Result<Vec<PathBuf>> {
    util::build_binaries()?;
    let text = util::output(Command::new("cargo").args([
        "test",
        "-p",
        "eci-integration-tests",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut bins = Vec::new();
    for line in text.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !kinds.iter().any(|k| k == "test") {
            continue;
        }
        if let Some(exe) = msg["executable"].as_str() {
            bins.push(PathBuf::from(exe));
        }
    }
    bins.sort();
    bins.dedup();
    println!("tests: {} integration test binaries", bins.len());
    Ok(bins)
}

/// The Docker suites (each starts its own dockerd in the VM): the slowest
/// tests under emulation, so a full matrix run gives each to one kernel —
/// one to each, as the kernels boot side by side — to keep CI within its
/// time budget. A suite whose kernel is not in the run goes everywhere; a
/// filter that names a suite runs it on every kernel asked for.
const DOCKER_SUITES: &[(&str, &str)] = &[("escape_suite", "6.12"), ("full_stack", "6.1")];

/// Test-binary arguments for one kernel of a run over `kernels`: the
/// filter, or, for a full run, `--skip` for each Docker suite given to
/// another kernel of the run.
fn test_args(kernel: &str, kernels: &[&str], filter: &[String]) -> Vec<String> {
    if !filter.is_empty() {
        return filter.to_vec();
    }
    DOCKER_SUITES
        .iter()
        .filter(|(_, home)| *home != kernel && kernels.contains(home))
        .flat_map(|(suite, _)| ["--skip".to_string(), suite.to_string()])
        .collect()
}

fn guest_script(bins: &[PathBuf], filter: &[String]) -> String {
    let mut s = String::from("rc=0\n");
    if bins.is_empty() {
        s.push_str("echo 'eci-vm: no integration test binaries'\n");
    }
    let filter: Vec<String> = filter.iter().map(|f| util::shell_quote(f)).collect();
    for bin in bins {
        s.push_str(&format!(
            "{} --test-threads=1 --nocapture {} || rc=1\n",
            util::shell_quote(&bin.to_string_lossy()),
            filter.join(" ")
        ));
    }
    s.push_str("exit $rc\n");
    s
}

/// At most this many VMs at once: one vCPU each, and the machines have two
/// cores.
const VMS_AT_ONCE: usize = 2;

/// Run the integration tests in each kernel of the matrix (two VMs side by
/// side: the first one's console is echoed live, the others' when they
/// end), plus one boot without `bpf` in `lsm=` for the refusal test.
pub fn vm_test(kernel_spec: &str, filter: &[String], tally: &mut Tally) -> Result<bool> {
    let kernels = kernels::select(kernel_spec)?;
    let bins = build_test_binaries()?;
    let names: &[&str] = &kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>();
    let mut ok = true;
    for batch in kernels.chunks(VMS_AT_ONCE) {
        let outcomes: Vec<(usize, Result<vm::VmOutcome>)> = std::thread::scope(|scope| {
            let runs: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(i, kernel)| {
                    let bins = &bins;
                    scope.spawn(move || {
                        let opts = vm::VmOptions {
                            env: vec![
                                ("ECI_REQUIRE_LSM".into(), "1".into()),
                                ("ECI_LSM_EXPECTED".into(), "present".into()),
                                ("RUST_BACKTRACE".into(), "1".into()),
                            ],
                            label: "vm-test".into(),
                            echo: i == 0,
                            ..vm::VmOptions::default()
                        };
                        let args = test_args(&kernel.name, names, filter);
                        println!("vm-test: kernel {} ({}) starting", kernel.name, kernel.release);
                        for (suite, home) in DOCKER_SUITES {
                            if args.iter().any(|a| a == suite) && filter.is_empty() {
                                println!(
                                    "vm-test: kernel {}: SKIP {suite} here: it runs on {home} in a full run (CI time budget); `cargo xtask vm-test --kernel {} -- {suite}` runs it here",
                                    kernel.name, kernel.name
                                );
                            }
                        }
                        vm::run_in_vm(kernel, &guest_script(bins, &args), &opts)
                    })
                })
                .collect();
            runs.into_iter()
                .enumerate()
                .map(|(i, run)| {
                    let outcome = run
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the VM thread panicked")));
                    (i, outcome)
                })
                .collect()
        });
        for (i, outcome) in outcomes {
            let kernel = &batch[i];
            let outcome = outcome?;
            if i != 0 {
                println!(
                    "vm-test: kernel {}: console (ran beside the one above):",
                    kernel.name
                );
                for line in &outcome.output {
                    println!("{line}");
                }
            }
            tally.add_output(&outcome.output);
            println!(
                "vm-test: kernel {}: {} in {:.0}s (boot to tests {:.1}s)",
                kernel.name,
                outcome.result,
                outcome.duration.as_secs_f64(),
                outcome
                    .boot_to_script
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(f64::NAN)
            );
            ok &= outcome.success();
        }
    }
    if filter.is_empty()
        && let Some(kernel) = kernels
            .iter()
            .find(|k| k.name == "6.12")
            .or(kernels.first())
    {
        let opts = vm::VmOptions {
            lsm: "lockdown,capability,landlock,yama".into(),
            env: vec![
                ("ECI_LSM_EXPECTED".into(), "absent".into()),
                ("RUST_BACKTRACE".into(), "1".into()),
            ],
            label: "vm-test-no-bpf-lsm".into(),
            ..vm::VmOptions::default()
        };
        println!("vm-test: kernel {} booted WITHOUT bpf in lsm=", kernel.name);
        let outcome = vm::run_in_vm(
            kernel,
            &guest_script(&bins, &["lsm_unavailable".into()]),
            &opts,
        )?;
        tally.add_output(&outcome.output);
        println!("vm-test: no-bpf-lsm boot: {}", outcome.result);
        ok &= outcome.success();
    }
    Ok(ok)
}

fn host_accepts_bpf_lsm() -> bool {
    let agent = util::repo_root().join("target/debug/eci-agent");
    let pin_dir = format!("/sys/fs/bpf/eci-xtask-probe-{}", std::process::id());
    let ok = Command::new(&agent)
        .args(["probe", "--pin-dir", &pin_dir])
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = Command::new(&agent)
        .args(["unload", "--pin-dir", &pin_dir])
        .output();
    ok
}

/// Everything: the README's test command. Always ends with the summary line
/// (also written to build/test-summary.txt); a stage that fails without a
/// failed test (set-up error, VM panic or timeout) counts as one failure.
pub fn test_all() -> Result<()> {
    let started = Instant::now();
    let summary_file = util::build_dir().join("test-summary.txt");
    let _ = std::fs::remove_file(&summary_file);
    let mut tally = Tally::default();
    let mut stages = Vec::new();
    let mut ok = true;
    let stage_failed = |what: &str, err: &anyhow::Error, tally: &mut Tally| {
        println!("test: {what} FAILED: {err:#}");
        tally.failed += 1;
    };

    let docker = docker::ensure_docker().and_then(|()| docker::ensure_test_image());
    if let Err(e) = &docker {
        stage_failed("Docker", e, &mut tally);
        // The reason also goes on the stages line: CI shows the end of the log.
        let reason: String = format!("{e:#}")
            .lines()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .join(" | ")
            .chars()
            .take(400)
            .collect();
        stages.push(format!("Docker: FAILED ({reason})"));
        ok = false;
    }
    let built = util::build_binaries();
    let native = built.is_ok() && host_accepts_bpf_lsm();
    println!(
        "test: host kernel {} BPF-LSM programs (`eci-agent probe`)",
        if native { "runs" } else { "refuses" }
    );

    let mut host = Command::new("cargo");
    host.args([
        "test",
        "--workspace",
        "--",
        "--test-threads=1",
        "--nocapture",
    ])
    .env("ECI_REQUIRE_DOCKER", "1")
    .env("RUST_BACKTRACE", "1");
    if native {
        host.env("ECI_REQUIRE_LSM", "1")
            .env("ECI_LSM_EXPECTED", "present");
    } else {
        host.env("ECI_LSM_EXPECTED", "absent");
    }
    match util::run_streamed(&mut host) {
        Ok((status, lines)) => {
            let failed_before = tally.failed;
            tally.add_output(&lines);
            if !status.success() && tally.failed == failed_before {
                tally.failed += 1; // did not build, or a test binary crashed
            }
            ok &= status.success();
            stages.push(format!(
                "host cargo test ({}): {}",
                if native {
                    "kernel enforcement native"
                } else {
                    "host kernel refuses BPF-LSM"
                },
                if status.success() { "ok" } else { "FAILED" }
            ));
        }
        Err(e) => {
            stage_failed("host cargo test", &e, &mut tally);
            stages.push("host cargo test: FAILED".to_string());
            ok = false;
        }
    }

    if !native {
        let before = tally.failed;
        match vm_test("all", &[], &mut tally) {
            Ok(vm_ok) => {
                if !vm_ok && tally.failed == before {
                    tally.failed += 1; // panic, timeout or no result marker
                }
                ok &= vm_ok;
                stages.push(format!(
                    "VM matrix (6.1, 6.12, 6.12 without bpf in lsm=): {}",
                    if vm_ok { "ok" } else { "FAILED" }
                ));
            }
            Err(e) => {
                stage_failed("VM matrix", &e, &mut tally);
                stages.push("VM matrix: FAILED".to_string());
                ok = false;
            }
        }
    }
    println!("stages: {}", stages.join("; "));
    println!(
        "{} tests printed SKIP (they run elsewhere: kernel tests in the VM, or need what this machine lacks); total {:.0}s",
        tally.skipped,
        started.elapsed().as_secs_f64()
    );
    let summary = format!(
        "eci: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    let _ = std::fs::write(&summary_file, format!("{summary}\n"));
    println!("{summary}");
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_docker_suite_runs_on_one_kernel_of_a_full_run() {
        let both = ["6.1", "6.12"];
        assert_eq!(test_args("6.12", &both, &[]), ["--skip", "full_stack"]);
        assert_eq!(test_args("6.1", &both, &[]), ["--skip", "escape_suite"]);
        // A suite whose kernel is not in the run runs everywhere.
        assert!(test_args("6.12", &["6.12"], &[]).is_empty());
        assert_eq!(test_args("6.1", &both, &["escape".to_string()]), ["escape"]);
    }

    #[test]
    fn tally_reads_libtest_lines_with_colour() {
        let mut t = Tally::default();
        t.add_output(&[
            "test result: \u{1b}[32mok\u{1b}[m. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s"
                .into(),
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out".into(),
            "test x ... SKIP: reason".into(),
        ]);
        assert_eq!((t.passed, t.failed, t.ignored, t.skipped), (9, 3, 1, 1));
    }
}
