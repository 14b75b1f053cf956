//! `cargo xtask demo` and `cargo xtask bench`: both run in the test VM (or
//! natively on a host whose kernel accepts BPF-LSM programs).

use anyhow::{Context as _, Result, bail};

use crate::{kernels, util, vm};

const DEMO_SCRIPT: &str = include_str!("demo.sh");

fn build() -> Result<()> {
    util::build_binaries()
}

fn demo_kernel() -> Result<kernels::Kernel> {
    kernels::select("6.12")?
        .into_iter()
        .next()
        .context("the 6.12 kernel is missing (cargo xtask setup)")
}

pub fn demo() -> Result<()> {
    build()?;
    let kernel = demo_kernel()?;
    println!(
        "demo: booting Debian's {} in QEMU (software emulation; about a minute)",
        kernel.release
    );
    let opts = vm::VmOptions {
        label: "demo".into(),
        ..vm::VmOptions::default()
    };
    let outcome = vm::run_in_vm(&kernel, DEMO_SCRIPT, &opts)?;
    outcome.ensure_success()
}

const JSON_BEGIN: &str = "ECI-BENCH-JSON-BEGIN";
const JSON_END: &str = "ECI-BENCH-JSON-END";

pub fn bench(rounds: u32, iterations: u64) -> Result<()> {
    build()?;
    let kernel = demo_kernel()?;
    let script = format!(
        "target/debug/eci-bench --rounds {rounds} --iterations {iterations} --json /tmp/hook-cost.json || exit 1\n\
         echo {JSON_BEGIN}; cat /tmp/hook-cost.json; echo; echo {JSON_END}\n"
    );
    let opts = vm::VmOptions {
        label: "bench".into(),
        ..vm::VmOptions::default()
    };
    let outcome = vm::run_in_vm(&kernel, &script, &opts)?;
    outcome.ensure_success()?;
    let start = outcome.output.iter().position(|l| l.contains(JSON_BEGIN));
    let end = outcome.output.iter().position(|l| l.contains(JSON_END));
    let (Some(start), Some(end)) = (start, end) else {
        bail!("the benchmark printed no JSON")
    };
    let json = outcome.output[start + 1..end].join("\n");
    let value: serde_json::Value = serde_json::from_str(&json).context("benchmark JSON")?;
    let dir = util::build_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("hook-cost.json");
    std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")?;
    println!("bench: wrote {}", path.display());
    Ok(())
}
