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

/// What `cargo xtask bench` runs, and how many of each.
pub struct BenchSelection {
    pub startup_only: bool,
    /// Only the hook cost and the agent's figures, in the VM.
    pub hook_cost_only: bool,
    pub views_only: bool,
    pub views_containers: usize,
    /// Alternating runs per start-up figure.
    pub startup_runs: usize,
    /// Containers started at once in the concurrent figure.
    pub concurrent: usize,
}

pub fn bench(rounds: u32, iterations: u64, what: BenchSelection, release: bool) -> Result<()> {
    // The debug build is the tests' (and, without `--release`, every
    // figure's); with `--release` the release build is measured.
    if !release {
        build()?;
    }
    let dir = util::build_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let binaries = util::bench_binaries(release)?;
    if what.hook_cost_only {
        return bench_in_vm(rounds, iterations, &dir, &binaries);
    }
    if what.views_only {
        return bench_views(what.views_containers, &dir, &binaries);
    }
    if !what.startup_only {
        bench_in_vm(rounds, iterations, &dir, &binaries)?;
    }
    let startup = bench_startup(what.startup_runs, what.concurrent, &binaries)?;
    let path = dir.join("startup.json");
    std::fs::write(&path, serde_json::to_string_pretty(&startup)? + "\n")?;
    println!("bench: wrote {}", path.display());
    if !what.startup_only {
        bench_views(what.views_containers, &dir, &binaries)?;
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

/// eci-bench in the VM, from `binaries` (target/debug or target/release:
/// the agent it starts is the one beside it).
fn bench_in_vm(
    rounds: u32,
    iterations: u64,
    dir: &std::path::Path,
    binaries: &std::path::Path,
) -> Result<()> {
    let kernel = demo_kernel()?;
    let bench = binaries
        .strip_prefix(util::repo_root())
        .unwrap_or(binaries)
        .join("eci-bench");
    let bench = bench.display();
    let script = format!(
        "{bench} --rounds {rounds} --iterations {iterations} --json /tmp/hook-cost.json || exit 1\n\
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
/// Docker Engine: the median of `runs` alternating `docker run --rm`s, the
/// same of an image with 10,000 more files, `concurrent` containers started
/// at once (`docker run -d`, [`CONCURRENT_ROUNDS`] alternating batches),
/// and `run` of one bundle with eci, with runc, and with runc of the spec as
/// eci rewrites it (the floor: what runc itself takes for a user namespace
/// and ID-mapped mounts). The agent runs in its unenforced mode when this
/// kernel refuses BPF-LSM (registration still happens; the kernel part is
/// measured in the VM).
pub fn bench_startup(
    runs: usize,
    concurrent: usize,
    binaries: &std::path::Path,
) -> Result<serde_json::Value> {
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
    let concurrent_start = compare(
        "docker_run_concurrent",
        &format!("{concurrent} `docker run -d` at once, until all run"),
        CONCURRENT_ROUNDS,
        |eci| start_at_once(runtime(eci), concurrent),
    );
    let run_in = |runtime: &std::path::Path, bundle: &std::path::Path, id: &str| -> Result<f64> {
        let started = std::time::Instant::now();
        let out = Command::new(runtime)
            .arg("--root")
            .arg(dir.join("runc-root"))
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
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
    let eci_env = [
        ("ECI_AGENT_SOCKET", socket.clone()),
        ("ECI_STATE_DIR", dir.join("state")),
    ];
    let bundle_run = startup_bundle(&dir).and_then(|bundle| {
        let floor = FloorBundle::create(&dir, &bundle, &eci_binary, &eci_env)?;
        let (mut eci, mut runc, mut rewritten) = (Vec::new(), Vec::new(), Vec::new());
        let mut round = |record: bool| -> Result<()> {
            let r = run_in(&runc_binary, &bundle, "eci-bench-run")?;
            let e = run_in(&eci_binary, &bundle, "eci-bench-run")?;
            let f = run_in(&runc_binary, &floor.bundle, "eci-bench-floor-run")?;
            if record {
                runc.push(r);
                eci.push(e);
                rewritten.push(f);
            }
            Ok(())
        };
        let measured = round(false).and_then(|()| (0..runs).try_for_each(|_| round(true)));
        floor.delete();
        measured?;
        let (e, r, f) = (median(eci), median(runc), median(rewritten));
        println!(
            "start-up, `run` of one bundle (median of {runs}): runc {r:.0} ms, eci {e:.0} ms, ratio {:.2}; \
             floor (runc of eci's rewritten spec) {f:.0} ms, {:.2}x runc; eci / floor {:.2}",
            e / r,
            f / r,
            e / f
        );
        Ok(serde_json::json!({
            "benchmark": "bundle_run_startup", "runs": runs,
            "ms_runc": r, "ms_eci": e, "ratio": e / r,
            "ms_runc_of_eci_spec": f, "floor_ratio": f / r, "ratio_to_floor": e / f,
        }))
    });
    let _ = agent.kill();
    let _ = agent.wait();
    Ok(serde_json::json!([
        docker_run?,
        many_files?,
        concurrent_start?,
        bundle_run?
    ]))
}

/// Alternating batches (eci, runc) in the concurrent start-up figure.
const CONCURRENT_ROUNDS: usize = 5;

/// Start `n` containers at once with `docker run -d` (each returns once its
/// container runs) and give the wall time until the last returned; then
/// check all run and remove them (not timed).
fn start_at_once(runtime: &str, n: usize) -> Result<f64> {
    use std::process::{Command, Stdio};
    let names: Vec<String> = (0..n).map(|i| format!("eci-bench-at-once-{i}")).collect();
    let remove = || {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&names)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    remove();
    let started = std::time::Instant::now();
    let children = names
        .iter()
        .map(|name| {
            Command::new("docker")
                .args(["run", "-d", "--name", name, "--runtime", runtime])
                .args([crate::docker::TEST_IMAGE, "sleep", "600"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>();
    let mut failures = Vec::new();
    for child in children.into_iter().flatten() {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
    }
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let running = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}"])
        .args(&names)
        .output();
    remove();
    if !failures.is_empty() {
        bail!(
            "docker run -d --runtime {runtime} failed: {}",
            failures.join("; ")
        );
    }
    let running = running?;
    let all = String::from_utf8_lossy(&running.stdout);
    if !running.status.success() || all.lines().filter(|l| *l == "true").count() != n {
        bail!("not all {n} containers of runtime {runtime} were running: {all}");
    }
    Ok(elapsed)
}

/// A container eci-runc created (and keeps created) from a copy of the
/// bench bundle, and a bundle with the spec eci rewrote for it: runc runs of
/// that spec use eci's ID-mapped root and binds while the container exists.
struct FloorBundle {
    bundle: std::path::PathBuf,
    holder: std::process::Command,
}

impl FloorBundle {
    fn create(
        dir: &std::path::Path,
        bundle: &std::path::Path,
        eci: &std::path::Path,
        env: &[(&str, std::path::PathBuf)],
    ) -> Result<Self> {
        use std::process::Command;
        let source = dir.join("floor-source");
        let floor = dir.join("floor");
        for d in [&source, &floor] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d)?;
        }
        let mut spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json"))?)?;
        spec["root"]["path"] = serde_json::json!(bundle.join("rootfs").display().to_string());
        std::fs::write(
            source.join("config.json"),
            serde_json::to_string_pretty(&spec)?,
        )?;
        let eci_runc = |args: &[&str]| {
            let mut cmd = Command::new(eci);
            cmd.arg("--root").arg(dir.join("runc-root")).args(args);
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd
        };
        let _ = eci_runc(&["delete", "--force", "eci-bench-floor"]).output();
        let bundle_arg = source.display().to_string();
        util::run(&mut eci_runc(&[
            "create",
            "--bundle",
            &bundle_arg,
            "eci-bench-floor",
        ]))?;
        let holder = eci_runc(&["delete", "--force", "eci-bench-floor"]);
        std::fs::copy(source.join("config.json"), floor.join("config.json"))?;
        Ok(Self {
            bundle: floor,
            holder,
        })
    }

    fn delete(mut self) {
        let _ = self.holder.output();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
