//! `cargo xtask test` and `cargo xtask vm-test`: every test, with the kernel
//! tests run natively where the host kernel allows BPF-LSM programs and in
//! the VM matrix where it does not.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{docker, kernels, matrix, package, util};

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
    // What `package::` installs in the VM.
    package::package(false)?;
    crate::image::test_archive()?;
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

fn guest_script(bins: &[PathBuf], args: &[String]) -> String {
    let mut s = String::from("rc=0\n");
    if bins.is_empty() {
        s.push_str("echo 'eci-vm: no integration test binaries'\n");
    }
    let args: Vec<String> = args.iter().map(|f| util::shell_quote(f)).collect();
    for bin in bins {
        // libtest's JSON events (one line per test, with its time) are read
        // by matrix.rs; RUSTC_BOOTSTRAP lets the stable test binary print them.
        s.push_str(&format!(
            "RUSTC_BOOTSTRAP=1 {} -Z unstable-options --format json --report-time --test-threads=1 --nocapture {} || rc=1\n",
            util::shell_quote(&bin.to_string_lossy()),
            args.join(" ")
        ));
    }
    s.push_str("exit $rc\n");
    s
}

/// At most this many VMs at once: one vCPU each, and the machines have two
/// cores.
const VMS_AT_ONCE: usize = 2;

/// A VM that runs longer than this is killed and counted as failed.
const VM_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Run the integration tests in the VM matrix (see `matrix.rs`): with a
/// filter, that filter on each kernel asked for; without, every kernel's
/// kernel suites, each stack's engine suites and one boot without `bpf` in
/// `lsm=`. Prints a line per VM and the slowest ten tests.
pub fn vm_test(kernel_spec: &str, filter: &[String], tally: &mut Tally) -> Result<bool> {
    let kernels = kernels::select(kernel_spec)?;
    let bins = build_test_binaries()?;
    let jobs = matrix::plan(&kernels, filter);
    println!(
        "vm-test: {} VM runs, {} at a time: {}",
        jobs.len(),
        VMS_AT_ONCE,
        jobs.iter()
            .map(|j| format!("{} / {} / {}", j.kernel.name, j.kernel.stack, j.part))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let lines = matrix::run(
        jobs,
        |args| guest_script(&bins, args),
        VMS_AT_ONCE,
        VM_TIMEOUT,
    )?;
    let mut ok = true;
    println!("vm-test: summary per VM run");
    for l in &lines {
        println!("  {}{}", l.line, if l.ok { "" } else { "  <-- FAILED" });
        tally.passed += l.report.passed;
        tally.failed += l.report.failed;
        tally.ignored += l.report.skipped;
        ok &= l.ok;
    }
    println!("vm-test: the slowest ten tests");
    for s in matrix::slowest(&lines, 10) {
        println!("  {s}");
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
                    "VM matrix ({} kernels, both stacks, one boot without bpf in lsm=): {}",
                    kernels::names(),
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
