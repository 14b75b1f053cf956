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
        // Each step has its own limit inside; this one ends a VM that hangs
        // outside any step.
        timeout: std::time::Duration::from_secs(15 * 60),
        ..vm::VmOptions::default()
    };
    let outcome = vm::run_in_vm(&kernel, DEMO_SCRIPT, &opts)?;
    let verdict = outcome
        .output
        .iter()
        .rev()
        .find(|l| l.starts_with("ECI-DEMO-VERDICT:"))
        .cloned();
    match verdict {
        Some(v) => println!("demo: {v}"),
        None => println!(
            "demo: no verdict: {} (console log: {})",
            outcome.result,
            outcome.log.display()
        ),
    }
    outcome.ensure_success()
}

const JSON_BEGIN: &str = "ECI-BENCH-JSON-BEGIN";
const JSON_END: &str = "ECI-BENCH-JSON-END";

pub fn bench(
    rounds: u32,
    iterations: u64,
    startup_only: bool,
    hook_cost_only: bool,
    views_only: bool,
    views_containers: usize,
    release: bool,
) -> Result<()> {
    build()?;
    let dir = util::build_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    if hook_cost_only {
        return bench_in_vm(rounds, iterations, &dir);
    }
    let binaries = util::bench_binaries(release)?;
    if views_only {
        return bench_views(views_containers, &dir, &binaries);
    }
    if !startup_only {
        bench_in_vm(rounds, iterations, &dir)?;
    }
    let startup = bench_startup(10, &binaries)?;
    let path = dir.join("startup.json");
    std::fs::write(&path, serde_json::to_string_pretty(&startup)? + "\n")?;
    println!("bench: wrote {}", path.display());
    if !startup_only {
        bench_views(views_containers, &dir, &binaries)?;
    }
    Ok(())
}

fn bench_views(containers: usize, dir: &std::path::Path, binaries: &std::path::Path) -> Result<()> {
    let views = crate::bench_views::bench_views(containers, binaries)?;
    let path = dir.join("views.json");
    std::fs::write(&path, serde_json::to_string_pretty(&views)? + "\n")?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

fn bench_in_vm(rounds: u32, iterations: u64, dir: &std::path::Path) -> Result<()> {
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
    let path = dir.join("hook-cost.json");
    std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

/// The debug build's agent in its unenforced mode (registration and the
/// views, no kernel part, for this host that refuses BPF-LSM): its control
/// `socket`, the audit log in `dir`, the `policy` file.
pub fn unenforced_agent(
    target: &std::path::Path,
    socket: &std::path::Path,
    dir: &std::path::Path,
    policy: &std::path::Path,
) -> std::process::Command {
    let mut agent = std::process::Command::new(target.join("eci-agent"));
    agent
        .args([
            "run",
            "--no-default-sockets",
            "--unenforced-for-testing",
            "--control-socket",
        ])
        .arg(socket)
        .arg("--audit-log")
        .arg(dir.join("audit.jsonl"))
        .arg("--policy")
        .arg(policy);
    agent
}

/// Container start-up with eci-runc against plain runc, on this host's
/// Docker Engine: the median of `runs` alternating `docker run --rm`s.
/// The agent runs in its unenforced mode when this kernel refuses BPF-LSM
/// (registration still happens; the kernel part is measured in the VM).
pub fn bench_startup(runs: usize, binaries: &std::path::Path) -> Result<serde_json::Value> {
    use std::process::{Command, Stdio};
    crate::docker::ensure_docker()?;
    crate::docker::ensure_test_image()?;
    let dir = util::build_dir().join("bench/startup");
    std::fs::create_dir_all(&dir)?;
    let target = binaries.to_owned();
    println!(
        "bench: start-up with eci-runc and the agent from {}",
        target.display()
    );
    let socket = dir.join("agent.sock");
    let mut agent = unenforced_agent(&target, &socket, &dir, &dir.join("none.json"));
    agent.stdout(Stdio::null()).stderr(Stdio::null());
    let mut agent = agent.spawn().context("starting the agent")?;
    let wrapper = dir.join("eci-runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport ECI_AGENT_SOCKET={} ECI_STATE_DIR={}\nexec {} \"$@\"\n",
            socket.display(),
            dir.join("state").display(),
            target.join("eci-runc").display()
        ),
    )?;
    util::run(Command::new("chmod").arg("755").arg(&wrapper))?;
    let daemon_json = std::path::Path::new("/etc/docker/daemon.json");
    let mut config: serde_json::Value = std::fs::read_to_string(daemon_json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    config["runtimes"]["eci-bench"] = serde_json::json!({ "path": wrapper.display().to_string() });
    std::fs::create_dir_all("/etc/docker")?;
    std::fs::write(daemon_json, serde_json::to_string_pretty(&config)?)?;
    util::run(Command::new("sh").args(["-c", "kill -HUP $(pidof dockerd)"]))?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let time_image = |runtime: &str, image: &str| -> Result<f64> {
        let started = std::time::Instant::now();
        let out = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--runtime",
                runtime,
                image,
                "cat",
                "/proc/self/uid_map",
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "docker run --runtime {runtime} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    };
    let runtime = |eci: bool| if eci { "eci-bench" } else { "runc" };
    let docker_run = compare("docker_run_startup", "`docker run --rm`", runs, |eci| {
        time_image(runtime(eci), crate::docker::TEST_IMAGE)
    });
    // What giving the container its range costs as the image grows: the
    // layers are ID-mapped, not copied or chowned.
    let many_files = many_files_image(&dir).and_then(|image| {
        compare(
            "docker_run_startup_10k_files",
            "`docker run --rm` of an image with 10,000 more files",
            runs,
            |eci| time_image(runtime(eci), &image),
        )
    });
    let run = |runtime: &std::path::Path, bundle: &std::path::Path| -> Result<f64> {
        let started = std::time::Instant::now();
        let out = Command::new(runtime)
            .arg("--root")
            .arg(dir.join("runc-root"))
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg("eci-bench-run")
            .env("ECI_AGENT_SOCKET", &socket)
            .env("ECI_STATE_DIR", dir.join("state"))
            .output()?;
        if !out.status.success() {
            bail!(
                "{} run failed: {}",
                runtime.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    };
    let runc_binary = std::path::PathBuf::from("runc");
    let eci_binary = target.join("eci-runc");
    let bundle_run = startup_bundle(&dir).and_then(|bundle| {
        compare("bundle_run_startup", "`run` of one bundle", runs, |eci| {
            run(if eci { &eci_binary } else { &runc_binary }, &bundle)
        })
    });
    let _ = agent.kill();
    let _ = agent.wait();
    Ok(serde_json::json!([docker_run?, many_files?, bundle_run?]))
}

/// The test image with 10,000 more small files (`/many/<n>`), imported
/// once as `eci-bench-10k-files`.
fn many_files_image(dir: &std::path::Path) -> Result<String> {
    use std::process::Command;
    const IMAGE: &str = "eci-bench-10k-files";
    let known = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()?;
    if known.status.success() {
        return Ok(IMAGE.into());
    }
    let root = dir.join("many-files");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("many"))?;
    export_test_image(&root)?;
    for n in 0..10_000 {
        std::fs::write(root.join("many").join(n.to_string()), n.to_string())?;
    }
    util::run(Command::new("sh").arg("-c").arg(format!(
        "tar -C {root} -c . | docker import - {IMAGE} >/dev/null",
        root = root.display()
    )))?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(IMAGE.into())
}

/// `runs` alternating measurements of plain runc and of eci (`measure(eci)`,
/// in ms; one warm-up each first): their medians and ratio, printed and as
/// JSON.
fn compare(
    benchmark: &str,
    what: &str,
    runs: usize,
    mut measure: impl FnMut(bool) -> Result<f64>,
) -> Result<serde_json::Value> {
    let (mut eci, mut runc) = (Vec::new(), Vec::new());
    measure(false)?;
    measure(true)?;
    for _ in 0..runs {
        runc.push(measure(false)?);
        eci.push(measure(true)?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (e, r) = (median(eci), median(runc));
    println!(
        "start-up, {what} (median of {runs}): runc {r:.0} ms, eci {e:.0} ms, ratio {:.2}",
        e / r
    );
    Ok(
        serde_json::json!({ "benchmark": benchmark, "runs": runs, "ms_runc": r, "ms_eci": e, "ratio": e / r }),
    )
}

/// The test image's files, exported into `root` (made if missing).
fn export_test_image(root: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(root)?;
    let script = format!(
        "c=$(docker create {image} true) && docker export $c | tar -C {root} -x; s=$?; docker rm $c >/dev/null; exit $s",
        image = crate::docker::TEST_IMAGE,
        root = root.display()
    );
    util::run(std::process::Command::new("sh").args(["-c", &script]))
}

/// A bundle of the test image whose process runs `true` (rootfs exported
/// from Docker, config from `runc spec`).
fn startup_bundle(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    use std::process::Command;
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    if !rootfs.join("bin").exists() {
        export_test_image(&rootfs)?;
    }
    let config = bundle.join("config.json");
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(bundle.join("config.json.eci-original"));
    util::run(Command::new("runc").arg("spec").current_dir(&bundle))?;
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
    spec["process"]["args"] = serde_json::json!(["true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&config, serde_json::to_string_pretty(&spec)?)?;
    Ok(bundle)
}
