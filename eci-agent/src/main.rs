//! eci-agent: loads and pins eci's BPF-LSM programs, keeps the rules, serves
//! the control socket and writes the audit log.

mod agent;
mod audit;
mod btf;
mod cgroups;
mod control;
mod enforcement;
mod lsm;
mod pins;
mod rules;
mod sockets;
mod status;
mod vm;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use eci_control::{Client, DEFAULT_CONTROL_SOCKET, Request, Response};

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
}

#[derive(Subcommand)]
enum Command {
    /// Probe BPF-LSM, attach and pin the programs, and serve until stopped.
    Run {
        #[command(flatten)]
        at: Locations,
        /// The audit log (JSON lines).
        #[arg(long, default_value = audit::DEFAULT_AUDIT_LOG)]
        audit_log: PathBuf,
        /// Protect this Unix socket too (repeatable).
        #[arg(long = "protect-socket", value_name = "PATH")]
        protect_sockets: Vec<PathBuf>,
        /// Do not protect the default sockets (Docker Engine, containerd).
        #[arg(long)]
        no_default_sockets: bool,
        /// Protect every cgroup below this one (repeatable; the last segment
        /// may hold `*`). Default: Docker's, Kubernetes' and systemd's parents.
        #[arg(long = "protected-parent", value_name = "CGROUP")]
        protected_parents: Vec<String>,
        /// Serve registrations WITHOUT kernel enforcement. Only for tests on
        /// kernels that refuse BPF-LSM; nothing is protected in this mode.
        #[arg(long)]
        unenforced_for_testing: bool,
    },
    /// Protect a cgroup (path relative to the cgroup2 root, or absolute).
    Protect {
        #[arg(long)]
        cgroup: String,
        #[command(flatten)]
        at: Locations,
    },
    /// Stop protecting a cgroup.
    Unprotect {
        #[arg(long)]
        cgroup: String,
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
    },
    /// Remove every pinned program and map: enforcement ends.
    Unload {
        #[command(flatten)]
        at: Locations,
    },
}

/// cgroup parents of containers: Docker (cgroupfs driver), Kubernetes, and
/// Docker and containerd under systemd.
const DEFAULT_PROTECTED_PARENTS: &[&str] = &[
    "/docker",
    "/kubepods",
    "/kubepods.slice",
    "/system.slice/docker-*.scope",
    "/system.slice/cri-containerd-*.scope",
];

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ECI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("eci-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
        } => {
            let mut protected_socket_paths = protect_sockets;
            if !no_default_sockets {
                protected_socket_paths
                    .extend(sockets::DEFAULT_PROTECTED_SOCKETS.iter().map(PathBuf::from));
            }
            let config = agent::AgentConfig {
                pin_dir: at.pin_dir,
                control_socket: at.control_socket,
                audit_log,
                protected_socket_paths,
                unenforced_for_testing,
                protected_parents: if protected_parents.is_empty() {
                    DEFAULT_PROTECTED_PARENTS
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                } else {
                    protected_parents
                },
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Protect { cgroup, at } => control_call(&at, Request::Protect { cgroup }),
        Command::Unprotect { cgroup, at } => control_call(&at, Request::Unprotect { cgroup }),
        Command::Status { json, at } => {
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
        Command::Probe { at } => {
            let layout = pins::PinLayout::new(&at.pin_dir);
            enforcement::probe_lsm(&layout)?;
            println!("BPF-LSM programs load, attach and run on this kernel");
            Ok(ExitCode::SUCCESS)
        }
        Command::Unload { at } => {
            let removed = enforcement::unload(&pins::PinLayout::new(&at.pin_dir))?;
            println!(
                "removed {} pinned objects; eci enforces nothing now",
                removed.len()
            );
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
