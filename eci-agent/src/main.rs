//! eci-agent: loads and pins eci's BPF-LSM programs, keeps the rules, serves
//! the control socket and writes the audit log.

mod agent;
mod audit;
mod audit_feed;
mod audit_limit;
mod btf;
mod cgroups;
mod control;
mod coverage;
mod docker_api;
mod docker_body;
mod doctor;
mod enforcement;
mod engine_json;
mod events;
mod idmap;
mod install;
mod lsm;
mod metrics;
mod pins;
mod proxy;
mod registry;
mod rules;
mod sockets;
mod state;
mod status;
mod views;
mod vm;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use eci_control::{Client, DEFAULT_CONTROL_SOCKET, Request, Response};
/// The policy file's one reader (`crate::policy::...` throughout the agent).
use eci_policy as policy;

#[derive(Parser)]
#[command(
    name = "eci-agent",
    version,
    about = "eci: kernel-enforced container isolation (agent)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Locations {
    /// The agent's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
    /// Where programs and maps are pinned (on bpffs).
    #[arg(long, default_value = pins::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The policy file (built-in secure defaults when it does not exist).
    #[arg(long, default_value = policy::DEFAULT_POLICY_PATH)]
    policy: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Probe BPF-LSM, attach and pin the programs, and serve until stopped.
    /// SIGHUP re-reads the policy.
    Run {
        #[command(flatten)]
        at: Locations,
        /// The audit log (JSON lines); overrides the policy's.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Protect this Unix socket too (repeatable).
        #[arg(long = "protect-socket", value_name = "PATH")]
        protect_sockets: Vec<PathBuf>,
        /// Do not protect the policy's sockets (Docker Engine, containerd by default).
        #[arg(long)]
        no_default_sockets: bool,
        /// Protect every cgroup below this one (repeatable; the last segment
        /// may hold `*`); replaces the policy's protected parents.
        #[arg(long = "protected-parent", value_name = "CGROUP")]
        protected_parents: Vec<String>,
        /// Serve registrations WITHOUT kernel enforcement. Only for tests on
        /// kernels that refuse BPF-LSM; refused when the policy is locked.
        #[arg(long)]
        unenforced_for_testing: bool,
        /// The containers' /proc and /sys views (eci-views), re-rendered every
        /// second; eci-runc's `ECI_VIEWS_DIR` must name the same directory.
        #[arg(long, default_value = eci_views::DEFAULT_ROOT)]
        views_dir: PathBuf,
        #[command(flatten)]
        protection: registry::Choice,
        /// Serve Prometheus metrics (OpenMetrics text) at
        /// http://ADDR/metrics, e.g. 127.0.0.1:9464. Off when not given.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Protect a cgroup (path relative to the cgroup2 root, or absolute).
    Protect {
        #[arg(long)]
        cgroup: String,
        #[command(flatten)]
        at: Locations,
    },
    /// Stop protecting a registered cgroup.
    Unprotect {
        #[arg(long)]
        cgroup: String,
        #[command(flatten)]
        at: Locations,
    },
    /// Ask the running agent to re-read the policy (same as SIGHUP).
    Reload {
        #[command(flatten)]
        at: Locations,
    },
    /// Show what is enforced, from the pinned state.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Locations,
    },
    /// Check that BPF-LSM programs load and run here (exit 0 when they do).
    Probe {
        #[command(flatten)]
        at: Locations,
        #[command(flatten)]
        protection: registry::Choice,
    },
    /// The audit stream through the agent: the recent lines (the last 256),
    /// or with --follow every new one until interrupted.
    Events {
        /// Keep streaming new lines.
        #[arg(long)]
        follow: bool,
        /// The audit lines as the agent writes them to the audit log.
        #[arg(long)]
        json: bool,
        /// Only this container's lines (a prefix of its id).
        #[arg(long, value_name = "ID")]
        container: Option<String>,
        #[command(flatten)]
        at: Locations,
    },
    /// Can this host run eci, and what to change: one line per check (ok,
    /// warning, fail) with the fix. Exit 0 when no check failed.
    Doctor {
        /// Machine-readable output: {"ok": bool, "checks": [...]}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Locations,
        #[arg(long, default_value = install::DEFAULT_DAEMON_JSON)]
        daemon_json: PathBuf,
    },
    /// (Benchmarks only) Load this build's object and attach its programs
    /// with nothing else, print the time that took, detach and remove the
    /// maps again: the reference `eci-bench` sets the agent's start against.
    #[command(hide = true)]
    BareLoad {
        /// A pin directory of its own (removed afterwards).
        #[arg(long)]
        pin_dir: PathBuf,
        #[command(flatten)]
        protection: registry::Choice,
    },
    /// Remove every pinned program and map: enforcement ends. Refused when
    /// the policy is locked.
    Unload {
        #[command(flatten)]
        at: Locations,
    },
    /// Install the boot service, register eci-runc with Docker and install
    /// the default policy if there is none.
    Install {
        #[command(flatten)]
        at: Locations,
        /// Path of eci-runc to register (default: next to this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        #[arg(long, default_value = install::DEFAULT_DAEMON_JSON)]
        daemon_json: PathBuf,
        #[arg(long, default_value = install::DEFAULT_UNIT_DIR)]
        unit_dir: PathBuf,
        /// Write the files only; do not call systemctl.
        #[arg(long)]
        no_systemctl: bool,
        /// Where eci-runc stands in for `runc` while the policy turns ECI on.
        #[arg(long, default_value = install::DEFAULT_RUNC_STAND_IN)]
        runc_stand_in: PathBuf,
    },
    /// Reverse `install` (refused when the policy is locked).
    Uninstall {
        #[command(flatten)]
        at: Locations,
        #[arg(long, default_value = install::DEFAULT_DAEMON_JSON)]
        daemon_json: PathBuf,
        #[arg(long, default_value = install::DEFAULT_UNIT_DIR)]
        unit_dir: PathBuf,
        #[arg(long)]
        no_systemctl: bool,
        #[arg(long, default_value = install::DEFAULT_RUNC_STAND_IN)]
        runc_stand_in: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ECI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("eci-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn install_plan(
    at: &Locations,
    runtime: Option<PathBuf>,
    daemon_json: PathBuf,
    unit_dir: PathBuf,
    no_systemctl: bool,
    runc_stand_in: PathBuf,
) -> anyhow::Result<install::InstallPlan> {
    let (policy, _) = policy::load(&at.policy)?;
    let agent = std::env::current_exe()?;
    let runtime = runtime.unwrap_or_else(|| agent.with_file_name("eci-runc"));
    Ok(install::InstallPlan {
        agent,
        runtime,
        unit_dir,
        daemon_json,
        policy_path: at.policy.clone(),
        default_policy: policy::Policy::default_file_text(),
        locked: policy.locked,
        make_default: policy.enforcement,
        runc_stand_in: Some(runc_stand_in),
        run_systemctl: !no_systemctl,
    })
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            at,
            audit_log,
            protect_sockets,
            no_default_sockets,
            protected_parents,
            unenforced_for_testing,
            views_dir,
            protection,
            metrics_listen,
        } => {
            let config = state::AgentConfig {
                pin_dir: at.pin_dir,
                control_socket: at.control_socket,
                policy_path: at.policy,
                audit_log,
                extra_sockets: protect_sockets,
                no_policy_sockets: no_default_sockets,
                parents: (!protected_parents.is_empty()).then_some(protected_parents),
                unenforced_for_testing,
                views_dir,
                protection,
                metrics_listen,
            };
            // Before the runtime's threads: they inherit the namespace.
            if cgroups::join_node_cgroup_namespace()? {
                tracing::info!(
                    "joined the node's cgroup namespace (pid 1's): this agent's container has one of its own"
                );
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Protect { cgroup, at } => control_call(&at, Request::Protect { cgroup }),
        Command::Unprotect { cgroup, at } => control_call(&at, Request::Unprotect { cgroup }),
        Command::Reload { at } => control_call(&at, Request::Reload),
        Command::Status { json, at } => {
            // The cgroups' names as the node sees them, where it can.
            let _ = cgroups::join_node_cgroup_namespace();
            let status = status::collect(&pins::PinLayout::new(&at.pin_dir), &at.control_socket);
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status::render(&status));
            }
            Ok(if status.agent.running {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Probe { at, protection } => {
            let layout = pins::PinLayout::new(&at.pin_dir);
            let loaded = enforcement::probe_lsm(&layout, protection)?;
            println!(
                "BPF-LSM programs load, attach and run on this kernel; protection: {}{}",
                loaded.mode.describe(),
                loaded
                    .cache
                    .map(|c| format!(", verdicts in {}", c.describe()))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            follow,
            json,
            container,
            at,
        } => {
            events::print(&Client::new(&at.control_socket), follow, json, container)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor {
            json,
            at,
            daemon_json,
        } => {
            let report = doctor::run(&doctor::Inputs {
                pin_dir: at.pin_dir,
                policy: at.policy,
                daemon_json,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", doctor::render(&report));
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::BareLoad {
            pin_dir,
            protection,
        } => {
            let started = std::time::Instant::now();
            let layout = pins::PinLayout::new(&pin_dir);
            let attached = enforcement::bare_load_and_attach(&layout, protection);
            let elapsed = started.elapsed();
            if let Ok((_, links)) = &attached {
                println!(
                    "attached {} programs in {:.1} ms",
                    links.len(),
                    elapsed.as_secs_f64() * 1e3
                );
            }
            let done = attached.map(drop);
            enforcement::unload(&layout)?;
            done?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Unload { at } => {
            let (policy, _) = policy::load(&at.policy)?;
            if policy.locked {
                return Err(install::InstallError::Locked(at.policy.display().to_string()).into());
            }
            let removed = enforcement::unload(&pins::PinLayout::new(&at.pin_dir))?;
            println!(
                "removed {} pinned objects; eci enforces nothing now",
                removed.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Install {
            at,
            runtime,
            daemon_json,
            unit_dir,
            no_systemctl,
            runc_stand_in,
        } => {
            let plan = install_plan(
                &at,
                runtime,
                daemon_json,
                unit_dir,
                no_systemctl,
                runc_stand_in,
            )?;
            for line in install::install(&plan)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall {
            at,
            daemon_json,
            unit_dir,
            no_systemctl,
            runc_stand_in,
        } => {
            let plan = install_plan(
                &at,
                None,
                daemon_json,
                unit_dir,
                no_systemctl,
                runc_stand_in,
            )?;
            for line in install::uninstall(&plan)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn control_call(at: &Locations, request: Request) -> anyhow::Result<ExitCode> {
    match Client::new(&at.control_socket).call_ok(&request)? {
        Response::Ok { message, .. } => println!("{message}"),
        other => println!("{other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}
