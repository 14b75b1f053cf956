//! eci's workflows beyond `cargo build`: set-up, VM tests, the full test
//! run, the demo and the benchmarks.

mod apt;
mod bench_compare;
mod bench_views;
mod docker;
mod image;
mod kernels;
mod matrix;
mod package;
mod setup;
mod showcase;
mod stacks;
mod test;
mod util;
mod vm;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "eci's build, test, demo and benchmark workflows"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (apt packages, pinned nightly,
    /// bpf-linker, the VM kernels). Idempotent.
    Setup,
    /// Every test: host tests, Docker tests, kernel tests natively or in the VM matrix.
    Test,
    /// The integration tests in QEMU on each kernel of the matrix.
    VmTest {
        /// 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Test name filter passed to the test binaries.
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// Boot a matrix kernel and run a shell command in it (a debugging aid).
    VmRun {
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// `lsm=` list for the kernel command line.
        #[arg(long, default_value = vm::DEFAULT_LSM)]
        lsm: String,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show eci denying a container in a real kernel (in the VM).
    Demo,
    /// Benchmarks: hook cost and the agent in the VM, container start-up and
    /// the /proc views (against LXCFS) on this host's Docker; figures as
    /// ratios, JSON in build/bench/.
    Bench {
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        #[arg(long, default_value_t = 20_000)]
        iterations: u64,
        /// Only the start-up figures (no VM).
        #[arg(long)]
        startup_only: bool,
        /// Only the hook-cost and agent figures (the VM part).
        #[arg(long, conflicts_with_all = ["startup_only", "views"])]
        hook_cost_only: bool,
        /// Only the /proc views figures: runc, eci and LXCFS (no VM).
        #[arg(long)]
        views: bool,
        /// Containers per variant in the views figures.
        #[arg(long, default_value_t = 20)]
        views_containers: usize,
        /// Alternating runs per start-up figure (medians of these).
        #[arg(long, default_value_t = 20)]
        startup_runs: usize,
        /// Containers started at once (`docker run -d`) in the concurrent
        /// start-up figure.
        #[arg(long, default_value_t = 20)]
        concurrent: usize,
        /// After the run, show each figure against a saved run (a copy of
        /// build/bench/, or one of its files) with the ratio new / old.
        #[arg(long, value_name = "SAVED")]
        compare: Option<std::path::PathBuf>,
        /// Every figure with the release build of the agent, eci-runc and
        /// eci-bench (built first), as installed; else the debug build's.
        #[arg(long)]
        release: bool,
    },
    /// Start dockerd/containerd if needed and import the test image.
    DockerUp,
    /// The Debian package (build/package/eci_<version>_<arch>.deb): the
    /// release binaries, the default policy as a conffile, and maintainer
    /// scripts that run `eci-agent install` / `uninstall`.
    Package {
        /// Package the debug build instead (build/package/debug/; the VM
        /// test `package::` installs it).
        #[arg(long)]
        debug: bool,
    },
    /// The agent's container image (deploy/kubernetes/daemonset.yaml's):
    /// an archive in build/image/ (`docker load`, `ctr images import`),
    /// loaded into this machine's Docker.
    Image {
        /// The debug build of the binaries (else the release build).
        #[arg(long)]
        debug: bool,
        /// Only write the archive; do not load it into Docker.
        #[arg(long)]
        no_load: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Test => test::test_all(),
        Cmd::VmTest { kernel, filter } => {
            let mut tally = test::Tally::default();
            let ok = test::vm_test(&kernel, &filter, &mut tally)?;
            println!(
                "vm-test: {} passed, {} failed, {} skipped",
                tally.passed, tally.failed, tally.ignored
            );
            if !ok {
                anyhow::bail!("VM tests failed");
            }
            Ok(())
        }
        Cmd::VmRun {
            kernel,
            lsm,
            timeout_secs,
            command,
        } => {
            let opts = vm::VmOptions {
                lsm,
                timeout: Duration::from_secs(timeout_secs),
                label: "vm-run".into(),
                ..vm::VmOptions::default()
            };
            let mut last = None;
            for k in kernels::select(&kernel)? {
                let outcome = vm::run_in_vm(&k, &command.join(" "), &opts)?;
                println!(
                    "vm-run: {}: {} (boot to script {}, total {:.1}s, log {})",
                    k.name,
                    outcome.result,
                    outcome
                        .boot_to_script
                        .map(|d| format!("{:.1}s", d.as_secs_f64()))
                        .unwrap_or_else(|| "-".into()),
                    outcome.duration.as_secs_f64(),
                    outcome.log.display()
                );
                last = Some(outcome);
            }
            match last.and_then(|o| o.exit_code()) {
                Some(0) => Ok(()),
                Some(code) => std::process::exit(code),
                None => anyhow::bail!("the guest did not finish"),
            }
        }
        Cmd::Demo => showcase::demo(),
        Cmd::Bench {
            rounds,
            iterations,
            startup_only,
            hook_cost_only,
            views,
            views_containers,
            startup_runs,
            concurrent,
            compare,
            release,
        } => {
            showcase::bench(
                rounds,
                iterations,
                showcase::BenchSelection {
                    startup_only,
                    hook_cost_only,
                    views_only: views,
                    views_containers,
                    startup_runs,
                    concurrent,
                },
                release,
            )?;
            match compare {
                Some(saved) => bench_compare::compare(&saved, &util::build_dir().join("bench")),
                None => Ok(()),
            }
        }
        Cmd::DockerUp => {
            docker::ensure_docker()?;
            docker::ensure_test_image()
        }
        Cmd::Package { debug } => {
            if debug {
                util::build_binaries()?;
            }
            package::package(!debug).map(drop)
        }
        Cmd::Image { debug, no_load } => image::image(
            if debug {
                image::Profile::Debug
            } else {
                image::Profile::Release
            },
            !no_load,
        ),
    }
}
