//! One function per runc command eci-runc looks into; everything else is
//! handed to runc unchanged.
//!
//! - `create`: allocate a range (releasing stale ones), check and rewrite the
//!   spec, make the container's files reachable and owned by its root, run
//!   `runc create`, then register the container's cgroup with the agent.
//!   Anything failing undoes all of it (fail closed).
//! - `run`: `create` and `start` as below, eci-runc the init's subreaper;
//!   with a terminal only `runc run` can relay, the same preparation with
//!   registration and release done by runc itself through a `createRuntime`
//!   and a `poststop` hook that call back into eci-runc (eci-runc execs
//!   `runc run`).
//! - `start`: only a container eci-runc registered may start; the
//!   registration is asserted again with the agent, then the container is
//!   started as runc's `start` would ([`crate::start`]: eci-runc opens the
//!   exec fifo itself when that is all runc would do).
//! - `delete`: runc's delete, then unregister, unmount, shift the upper layer
//!   back and free the range.
//!
//! Every container gets views of `/proc/meminfo`, `uptime`, `cpuinfo`,
//! `stat`, `loadavg`, `swaps`, `diskstats` and the online CPUs
//! ([`eci_views`]): their directory bound at `/dev/.eci` at preparation;
//! described, rendered once and their symlinks mounted over the files they
//! stand in for at registration (before anything of the user's runs); kept
//! current by the agent; removed at release.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use eci_control::{Client, ControlError, Request, Response};
use eci_policy::Policy;
use eci_views::{ContainerViews, View, ViewsError};
use oci_spec::runtime::{HookBuilder, Hooks, Spec, State};

use crate::{
    args::{self, Invocation},
    joined,
    ranges::{Allocation, EngineRootfs, RangeError, Ranges},
    relocate::{self, RelocateError},
    report::Reporter,
    rootfs::{self, RootfsError, RootfsView},
    sources,
    spec::{self, Refusal},
    start::{self, InitProcess, StartError, Started},
    timing, trusted,
};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("`{0}` needs a container id")]
    NoContainerId(String),
    #[error("the bundle: {0}")]
    Bundle(std::io::Error),
    #[error(
        "enhanced container isolation: the container was not created because eci-runc could not get the policy in force from the eci agent ({0}). Start the agent (`systemctl start eci-agent`, or `eci-agent run`) and try again"
    )]
    Policy(#[source] ControlError),
    #[error("invalid container spec {path}: {source}")]
    Spec {
        path: String,
        source: oci_spec::OciSpecError,
    },
    #[error(transparent)]
    Ranges(#[from] RangeError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("preparing the container's files: {0}")]
    Relocate(#[from] RelocateError),
    #[error("preparing the container's root file system: {0}")]
    Rootfs(#[from] RootfsError),
    #[error("the container's /proc and /sys views: {0}")]
    Views(#[from] ViewsError),
    #[error("cannot run {runc}: {source}; set ECI_RUNC_BINARY to runc's path")]
    Runc {
        runc: String,
        source: std::io::Error,
    },
    /// runc failed and said why itself (in the log); exit with its code.
    #[error("runc exited with status {0}")]
    RuncFailed(i32),
    #[error(
        "enhanced container isolation: the container was not started because it could not be registered with the eci agent ({0}). Start the agent (`systemctl start eci-agent`, or `eci-agent run`) and try again"
    )]
    Agent(String),
    #[error(
        "enhanced container isolation: the container was not started because the eci agent could not give it a filtered Docker socket ({0}). Start the agent (`systemctl start eci-agent`, or `eci-agent run`) and try again, or remove the Docker socket mount"
    )]
    Proxy(String),
    #[error(
        "enhanced container isolation: container {0} was not created by eci-runc (or its registration was lost), so it may not start; remove it and create it again with the eci runtime"
    )]
    NotRegistered(String),
    #[error("eci-runc hook: {0}")]
    Hook(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(
        "delegating cgroup {cgroup} to the container's root (it mounts its cgroups writable, as --privileged does): {path}: {source}"
    )]
    Delegate {
        cgroup: String,
        path: String,
        source: std::io::Error,
    },
}

/// The caller's config.json, kept while eci-runc's rewrite is in place.
pub const ORIGINAL_CONFIG: &str = "config.json.eci-original";

/// The command the hooks call back into eci-runc with.
pub const HOOK_REGISTER: &str = "eci-hook-register";
pub const HOOK_RELEASE: &str = "eci-hook-release";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Run,
}

pub struct Runtime {
    pub runc: PathBuf,
    pub agent_socket: PathBuf,
    pub ranges: Ranges,
    /// Where the containers' /proc views are (`ECI_VIEWS_DIR`).
    pub views_root: PathBuf,
}

/// runc from `ECI_RUNC_BINARY`, else the usual places, else `runc` on PATH
/// — never eci-runc itself, which may stand in for `runc` (the engine and
/// BuildKit call `runc` by name).
pub fn runc_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ECI_RUNC_BINARY") {
        return PathBuf::from(path);
    }
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let not_me = |p: &PathBuf| p.is_file() && std::fs::canonicalize(p).ok().as_ref() != me.as_ref();
    let usual = [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ]
    .iter()
    .map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("runc"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    usual
        .chain(on_path)
        .find(not_me)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/runc"))
}

impl Runtime {
    /// `ECI_RUNC_BINARY`, `ECI_AGENT_SOCKET`, `ECI_VIEWS_DIR` and the range
    /// settings.
    pub fn from_env() -> Result<Self, LifecycleError> {
        Ok(Self {
            runc: runc_binary(),
            agent_socket: std::env::var_os("ECI_AGENT_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(|| eci_control::DEFAULT_CONTROL_SOCKET.into()),
            ranges: Ranges::from_env()?,
            views_root: eci_views::root_from_env(),
        })
    }

    fn runc_error(&self, source: std::io::Error) -> LifecycleError {
        LifecycleError::Runc {
            runc: self.runc.display().to_string(),
            source,
        }
    }

    /// Hand the command to runc unchanged (returns only if that fails).
    pub fn pass_through(&self, inv: &Invocation) -> LifecycleError {
        self.runc_error(Command::new(&self.runc).args(&inv.argv).exec())
    }

    fn runc_with_root(&self, inv: &Invocation) -> Command {
        let mut cmd = Command::new(&self.runc);
        if let Some(root) = &inv.root {
            cmd.arg("--root").arg(root);
        }
        cmd
    }

    pub fn create(&self, inv: &Invocation, report: &Reporter) -> Result<(), LifecycleError> {
        self.create_container(inv, report).map(drop)
    }

    /// `create`; returns the container's allocation as registered (its
    /// init recorded; `None`: it has none any more).
    fn create_container(
        &self,
        inv: &Invocation,
        report: &Reporter,
    ) -> Result<Option<Allocation>, LifecycleError> {
        let (id, mut rollback) = self.prepare(inv, report, Mode::Create)?;
        let status = Command::new(&self.runc)
            .args(&inv.argv)
            .status()
            .map_err(|e| self.runc_error(e))?;
        if !status.success() {
            return Err(LifecycleError::RuncFailed(status.code().unwrap_or(1)));
        }
        timing::mark("runc create");
        rollback.runc_created(inv);
        // Registration, before anything of the user's can run: fail closed.
        let init = InitProcess::of(init_pid(self, inv, &id)?)?;
        let cgroup = self.register(&id, init.pid, Path::new("/"))?;
        rollback.registered(&cgroup);
        let allocation = self.ranges.update(&id, |a| {
            a.cgroup = Some(cgroup);
            a.init = Some(init);
        })?;
        rollback.commit();
        Ok(allocation)
    }

    /// Start the created, registered container whose runc state directory
    /// is `state_dir` by opening its exec fifo here, when that is all runc's
    /// `start` would do ([`start`]); [`Started::ByRunc`]: runc's `start`
    /// must.
    fn start_here(allocation: &Allocation, state_dir: &Path) -> Result<Started, LifecycleError> {
        let started = match &allocation.init {
            Some(init) if !start::needs_runc(allocation.poststart_hooks) => {
                start::start(state_dir, init)?
            }
            _ => Started::ByRunc,
        };
        if started == Started::Here {
            timing::mark("started (exec fifo)");
        }
        Ok(started)
    }

    /// Start the created, registered container `id` (`globals`: runc's
    /// global flags): [`Self::start_here`], else with runc's `start`.
    fn start_registered(
        &self,
        globals: &[String],
        id: &str,
        allocation: &Allocation,
    ) -> Result<(), LifecycleError> {
        if Self::start_here(allocation, &allocation.runc_root.join(id))? == Started::Here {
            return Ok(());
        }
        let mut argv = globals.to_vec();
        argv.extend(["start".to_owned(), id.to_owned()]);
        let status = Command::new(&self.runc)
            .args(&argv)
            .status()
            .map_err(|e| self.runc_error(e))?;
        if !status.success() {
            return Err(LifecycleError::RuncFailed(status.code().unwrap_or(1)));
        }
        timing::mark("runc start");
        Ok(())
    }

    /// `run` as runc's `create`, eci's registration, runc's `start`: the
    /// container is registered once runc's init has left the VM's root (a
    /// registered container may not unmount the mounts it started with, and
    /// runc's init unmounts the old root after pivot_root), and before
    /// anything of the user's runs. eci-runc is the init's subreaper, so it
    /// waits for it, passes signals on, exits with its status and deletes
    /// it (unless `--keep`); `-d` returns once it has started. A terminal
    /// without a console socket (runc run relays that one itself) keeps the
    /// old way: runc run with a registering createRuntime hook.
    pub fn run(&self, inv: &Invocation, report: &Reporter) -> Result<i32, LifecycleError> {
        let plan = match args::run_as_create(inv) {
            Some(plan) if !wants_relayed_terminal(inv) => plan,
            _ => {
                let _rollback = self.prepare(inv, report, Mode::Run)?;
                return Err(self.pass_through(inv));
            }
        };
        // SAFETY: prctl with plain integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(LifecycleError::Hook(format!(
                "becoming the container's subreaper: {}",
                std::io::Error::last_os_error()
            )));
        }
        // The init's pid comes from runc's state.json (`init_pid`): no
        // `--pid-file` of eci's own, which runc writes with O_SYNC.
        let create = args::parse(&plan.create_argv);
        let id = create.container_id.clone().unwrap_or_default();
        let allocation = self.create_container(&create, report)?;
        let with_globals = |command: &[&str]| {
            let mut argv = plan.globals.clone();
            argv.extend(command.iter().map(|s| s.to_string()));
            args::parse(&argv)
        };
        let delete = || {
            let _ = self.delete(&with_globals(&["delete", "--force", &id]), report);
        };
        // Created and registered: from here a failure deletes it again.
        let registered = allocation
            .and_then(|a| Some((a.init?.pid, a)))
            .ok_or_else(|| LifecycleError::NotRegistered(id.clone()));
        let started = registered.and_then(|(pid, allocation)| {
            forward_signals(pid);
            self.start_registered(&plan.globals, &id, &allocation)
                .map(|()| pid)
        });
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                delete();
                return Err(e);
            }
        };
        if plan.detach {
            return Ok(0);
        }
        let code = wait_exit(pid);
        timing::mark("container ran");
        if !plan.keep {
            delete();
        }
        Ok(code)
    }

    /// Only a container eci-runc registered starts, once the agent has
    /// asserted its registration again; then as [`Self::start_registered`]
    /// does (runc's `start` itself is given the invocation as it came).
    pub fn start(&self, inv: &Invocation) -> Result<i32, LifecycleError> {
        let id = inv
            .container_id
            .clone()
            .ok_or_else(|| LifecycleError::NoContainerId("start".into()))?;
        let allocation = self
            .ranges
            .get(&id)?
            .filter(|a| a.cgroup.is_some())
            .ok_or_else(|| LifecycleError::NotRegistered(id.clone()))?;
        let cgroup = allocation.cgroup.clone().unwrap_or_default();
        // Assert it again: the agent may have been restarted without state.
        Client::new(&self.agent_socket)
            .call_ok(&Request::Protect { cgroup })
            .map_err(|e| LifecycleError::Agent(e.to_string()))?;
        timing::mark("registration asserted");
        match Self::start_here(&allocation, &runc_root(inv).join(&id))? {
            Started::Here => Ok(0),
            Started::ByRunc => Err(self.pass_through(inv)),
        }
    }

    /// runc's delete, then release what `create` took (also when runc no
    /// longer knows the container). Returns runc's exit code.
    pub fn delete(&self, inv: &Invocation, report: &Reporter) -> Result<i32, LifecycleError> {
        let id = inv.container_id.clone().unwrap_or_default();
        let status = Command::new(&self.runc)
            .args(&inv.argv)
            .status()
            .map_err(|e| self.runc_error(e))?;
        timing::mark("runc delete");
        let gone = !runc_root(inv).join(&id).exists();
        if (status.success() || gone)
            && let Some(allocation) = self.ranges.get(&id)?
        {
            self.release(&allocation, report);
            timing::mark("released");
        }
        Ok(status.code().unwrap_or(1))
    }

    /// Delegate the cgroup2 cgroup `cgroup` of a container (`cgroups`: its
    /// init's `/proc/<pid>/cgroup`) to the container's root (VM id `base`),
    /// as the kernel's delegation model has it: the directory and its
    /// `cgroup.procs`, `cgroup.threads` and `cgroup.subtree_control`, so it
    /// can make cgroups below its own, move its processes among them and
    /// enable controllers there (an inner dockerd, systemd). Its own limits
    /// (`memory.max`...) stay the VM root's, and the kernel keeps every move
    /// inside the cgroup (a move needs write access to the common ancestor's
    /// `cgroup.procs`).
    fn delegate_cgroup(cgroups: &str, cgroup: &str, base: u32) -> Result<(), LifecycleError> {
        let error = |path: &Path, source| LifecycleError::Delegate {
            cgroup: cgroup.to_owned(),
            path: path.display().to_string(),
            source,
        };
        let mountinfo = Path::new("/proc/self/mountinfo");
        let mounts = std::fs::read_to_string(mountinfo).map_err(|e| error(mountinfo, e))?;
        let dir = eci_views::source::cgroup2_dir(cgroups, &mounts).ok_or_else(|| {
            error(
                Path::new("/sys/fs/cgroup"),
                std::io::Error::other("no cgroup2 hierarchy holding it is mounted"),
            )
        })?;
        let owner = Some(nix::unistd::Uid::from_raw(base));
        let group = Some(nix::unistd::Gid::from_raw(base));
        for path in std::iter::once(dir.clone()).chain(
            ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"]
                .iter()
                .map(|f| dir.join(f)),
        ) {
            nix::unistd::chown(&path, owner, group).map_err(|e| error(&path, e.into()))?;
        }
        Ok(())
    }

    /// The `createRuntime` hook of `run`: register the container.
    pub fn hook_register(&self, state: &State) -> Result<(), LifecycleError> {
        let pid = state
            .pid()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| LifecycleError::Hook("the container state has no pid".into()))?;
        // Before pivot_root (runc runs createRuntime hooks then): the
        // container's files are below its root file system's path.
        let bundle = Path::new(state.bundle());
        let config = bundle.join("config.json");
        let rootfs = Spec::load(&config)
            .ok()
            .and_then(|spec| spec.root().as_ref().map(|root| bundle.join(root.path())))
            .ok_or_else(|| {
                LifecycleError::Hook(format!("no root file system in {}", config.display()))
            })?;
        let cgroup = self.register(state.id(), pid, &rootfs)?;
        self.ranges
            .update(state.id(), |a| a.cgroup = Some(cgroup))?;
        Ok(())
    }

    /// The `poststop` hook of `run`: release what `run` took.
    pub fn hook_release(&self, state: &State, report: &Reporter) -> Result<(), LifecycleError> {
        if let Some(allocation) = self.ranges.get(state.id())? {
            self.release(&allocation, report);
        }
        Ok(())
    }

    /// Allocate, check, rewrite and save the spec, with the container's files
    /// ready; on failure everything is undone. The caller commits the
    /// returned rollback once the container is complete; dropped, it
    /// releases the container.
    fn prepare<'a>(
        &'a self,
        inv: &'a Invocation,
        report: &'a Reporter,
        mode: Mode,
    ) -> Result<(String, Rollback<'a>), LifecycleError> {
        let command = inv.command.clone().unwrap_or_default();
        let id = inv
            .container_id
            .clone()
            .ok_or(LifecycleError::NoContainerId(command))?;
        let bundle = match inv.bundle.clone() {
            Some(b) => b,
            None => std::env::current_dir().map_err(|e| {
                LifecycleError::Bundle(std::io::Error::new(
                    e.kind(),
                    format!("no --bundle given and no working directory: {e}"),
                ))
            })?,
        };
        // The policy in force is the agent's (eci-runc reads no policy
        // file); without it nothing is created.
        let policy = Client::new(&self.agent_socket)
            .policy()
            .map_err(LifecycleError::Policy)?;
        timing::mark("policy from the agent");
        let config = bundle.join("config.json");
        // The caller's spec is kept, and put back at release: a bundle stays
        // usable for the next `run` (engines write a fresh one each time).
        // If a kept one is there already, the current one is ours, from a
        // run that never released.
        let original = bundle.join(ORIGINAL_CONFIG);
        let source = if original.exists() {
            &original
        } else {
            &config
        };
        let mut oci = Spec::load(source).map_err(|source_error| LifecycleError::Spec {
            path: source.display().to_string(),
            source: source_error,
        })?;
        // Namespaces shared with another eci container are let in (its pid
        // namespace with its user namespace and range); a container
        // outside eci's are refused.
        let joined = joined::examine(&oci, joined::vm_user_namespace()?, &self.ranges.all()?)?;
        let allocated = match joined.as_ref().and_then(|j| j.user.as_ref()) {
            Some(user) => self
                .ranges
                .allocate_joined(&id, &runc_root(inv), user.base)?,
            None => self.ranges.allocate(&id, &runc_root(inv))?,
        };
        for stale in &allocated.reclaimed {
            report.info(&format!(
                "eci: reclaimed the range {} of container {}, which no longer exists",
                stale.base, stale.container_id
            ));
            self.release(stale, report);
        }
        let rollback = Rollback::new(self, report, allocated.allocation);
        let allocation = &rollback.allocation;
        timing::mark("spec read, range allocated");
        // From here on, any failure drops `rollback`, which releases.
        {
            let mut ctx =
                spec::Context::docker(&id, &bundle, allocation.base, &oci, joined.as_ref());
            ctx.shareable_host_paths = policy.shareable_host_paths.clone();
            for dir in ctx.add_cri_sandbox_dirs(&oci, &spec::containerd_root_from_env()) {
                report.info(&format!(
                    "eci: a Kubernetes pod's container: its pod's files in {} may be bound",
                    dir.display()
                ));
            }
            let resolve =
                |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| spec::normalize(p));
            if let Some(proxy) =
                self.docker_socket_proxy(&mut oci, &id, &bundle, &policy, &resolve, report)?
            {
                ctx.engine_dirs.push(proxy);
            }
            spec::check(&oci, &ctx, &resolve)?;
            let mut notes = spec::rewrite(&mut oci, &ctx)?;
            timing::mark("spec checked and rewritten");
            let views = self.views(&id)?;
            views.prepare()?;
            timing::mark("views prepared");
            let targets = View::ALL.map(View::target);
            notes.push(spec::add_proc_views(&mut oci, &views.shown_dir(), &targets));
            for note in notes {
                report.info(&format!("eci: {note}"));
            }
            let vetted = sources::vet(&oci, &ctx, &[views.dir().to_owned()])?;
            timing::mark("bind sources vetted");
            self.relocate_files(&mut oci, &bundle, &id, &vetted, &ctx, report)?;
            timing::mark("root and binds relocated (ID-mapped)");
            let container_dir = relocate::container_dir(&id);
            let mut joined =
                relocate::kernel_mounts_for_joined_namespaces(&mut oci, &container_dir)?;
            joined.extend(relocate::net_sysctls_for_joined_network_namespace(
                &mut oci,
                allocation.base,
            )?);
            for note in joined {
                report.info(&format!("eci: {note}"));
            }
            if mode == Mode::Run {
                add_hooks(&mut oci)?;
            }
            if !original.exists() {
                std::fs::copy(&config, &original).map_err(|e| {
                    LifecycleError::Bundle(std::io::Error::new(
                        e.kind(),
                        format!(
                            "keeping {} as {}: {e}",
                            config.display(),
                            original.display()
                        ),
                    ))
                })?;
            }
            let delegate = spec::mounts_cgroup_writable(&oci);
            let poststart = oci
                .hooks()
                .as_ref()
                .and_then(|h| h.poststart().as_ref())
                .is_some_and(|hooks| !hooks.is_empty());
            self.ranges.update(&id, |a| {
                a.bundle = Some(bundle.clone());
                a.delegate_cgroup = delegate;
                a.poststart_hooks = poststart;
            })?;
            oci.save(&config).map_err(|source| LifecycleError::Spec {
                path: config.display().to_string(),
                source,
            })?;
            timing::mark("spec saved");
        }
        Ok((id, rollback))
    }

    /// A container that binds the Docker socket gets the agent's filtering
    /// proxy of it instead, if the policy trusts its image; otherwise it is
    /// refused. Returns the proxy's socket, if one was opened.
    fn docker_socket_proxy(
        &self,
        oci: &mut Spec,
        id: &str,
        bundle: &Path,
        policy: &Policy,
        resolve: &dyn Fn(&Path) -> PathBuf,
        report: &Reporter,
    ) -> Result<Option<PathBuf>, LifecycleError> {
        let binds = spec::docker_socket_binds(oci, bundle, &policy.docker_api_sockets, resolve);
        let Some((first, upstream)) = binds.first().cloned() else {
            return Ok(None);
        };
        let mut mounts = oci.mounts().clone().unwrap_or_default();
        let destination = mounts
            .get(first)
            .map(|m| m.destination().display().to_string())
            .unwrap_or_default();
        let refuse = |image: String, why: String| Refusal::SocketImageNotTrusted {
            image,
            destination: destination.clone(),
            why,
        };
        let (image, references) = trusted::docker_image(oci, id)
            .map_err(|e| refuse("(unknown)".into(), e.to_string()))?;
        let image_list = &policy.docker_socket_mount.image_list;
        let images: Vec<String> = image_list.images.iter().map(ToString::to_string).collect();
        let entry = trusted::trusting_entry(
            &images,
            image_list.allow_derived_images,
            &image,
            &references,
        )
        .map_err(|why| refuse(image.name.clone(), why))?;
        let answer = Client::new(&self.agent_socket).call_ok(&Request::OpenProxy {
            container: id.to_owned(),
            upstream: upstream.display().to_string(),
        });
        let path = match answer {
            Ok(Response::Proxy { path }) => PathBuf::from(path),
            Ok(other) => {
                return Err(LifecycleError::Proxy(format!(
                    "unexpected answer {other:?}"
                )));
            }
            Err(e) => return Err(LifecycleError::Proxy(e.to_string())),
        };
        self.ranges.update(id, |a| a.docker_api_proxy = true)?;
        for (n, _) in &binds {
            if let Some(mount) = mounts.get_mut(*n) {
                mount.set_source(Some(path.clone()));
            }
        }
        oci.set_mounts(Some(mounts));
        report.info(&format!(
            "eci: {destination} is a filtered Docker API socket: image {} ({}) is trusted by {entry:?}",
            image.name, image.id
        ));
        Ok(Some(path))
    }

    /// Mount the rootfs and every bind source under the container's private
    /// directory, ID-mapped (and owned by the container's root) where the
    /// file system allows.
    fn relocate_files(
        &self,
        oci: &mut Spec,
        bundle: &Path,
        id: &str,
        vetted: &sources::Vetted,
        ctx: &spec::Context,
        report: &Reporter,
    ) -> Result<(), LifecycleError> {
        let (base, shareable) = (ctx.base, &ctx.shareable_host_paths);
        let dir = relocate::prepare_container_dir(id)?;
        let userns = relocate::user_namespace(base)?;
        let mut view = None;
        if let Some(mut root) = oci.root().clone() {
            let path = if root.path().is_absolute() {
                root.path().clone()
            } else {
                bundle.join(root.path())
            };
            let overlay = rootfs::overlay_of(&path)?;
            let target = dir.join("rootfs");
            // An overlay of the container's own beside the engine's, where
            // the kernel takes an ID-mapped upper layer (nothing to record:
            // nothing on disk changes); else the upper layer is shifted.
            if let Some(layers) = &overlay {
                // An upper layer left shifted (a crash of the shifting way,
                // or a kernel before 5.19 then) goes back to 0–65535 first.
                rootfs::unshift_if_left_shifted(&layers.upper, self.ranges.geometry())?;
            }
            let beside = overlay
                .as_ref()
                .map(|layers| rootfs::overlay_beside(&target, layers, &userns, base));
            if let Some(Err(e)) = &beside {
                report.info(&format!(
                    "eci: rootfs: no ID-mapped upper layer here ({e}); shifting the upper layer instead"
                ));
            }
            let shown = match beside {
                Some(Ok(view)) => view,
                _ => {
                    if let Some(layers) = &overlay {
                        // Recorded first: a crash from here on is repaired by
                        // shifting it back, and the engine's overlay put back.
                        let upper = layers.upper.clone();
                        let engine = EngineRootfs {
                            root: path.clone(),
                            options: layers.original_options.clone(),
                        };
                        self.ranges.update(id, |a| {
                            a.shifted_upper = Some(upper);
                            a.engine_rootfs = Some(engine);
                        })?;
                    }
                    rootfs::prepare(
                        &path,
                        &target,
                        overlay.as_ref(),
                        &userns,
                        base,
                        self.ranges.geometry(),
                    )?
                }
            };
            match &shown {
                RootfsView::IdmappedOverlayBeside { layers, upper } => report.info(&format!(
                    "eci: rootfs: {layers} ID-mapped layers and the ID-mapped upper layer {} in an overlay beside the engine's",
                    upper.display()
                )),
                RootfsView::IdmappedOverlay { layers, upper } => report.info(&format!(
                    "eci: rootfs: {layers} ID-mapped layers, upper layer {} shifted to {base}",
                    upper.display()
                )),
                RootfsView::IdmappedBind => report.info("eci: rootfs: ID-mapped bind"),
                RootfsView::PlainBind { reason } => report.warning(&format!(
                    "eci: the container's root file system keeps its VM owners (files show as nobody inside): {reason}"
                )),
            }
            if !matches!(shown, RootfsView::IdmappedOverlay { .. }) {
                self.ranges.update(id, |a| {
                    a.shifted_upper = None;
                    a.engine_rootfs = None;
                })?;
            }
            root.set_path(target);
            oci.set_root(Some(root));
            view = Some(shown);
        }
        let mut mounts = oci.mounts().clone().unwrap_or_default();
        // Inside its user namespace the container's root cannot create mount
        // points in files it does not own: only then are they made here.
        if matches!(view, Some(RootfsView::PlainBind { .. })) {
            // Not below /proc: the proc mount covers it (the views).
            let points: Vec<(PathBuf, bool)> = mounts
                .iter()
                .filter(|m| {
                    !m.destination().starts_with("/proc")
                        && m.destination() != Path::new(eci_views::SHOWN_IN_CONTAINER)
                })
                .map(|m| {
                    // A bind of anything but a directory (a file, a socket)
                    // needs a file to mount on.
                    let not_a_dir = spec::is_bind(m)
                        && m.source()
                            .as_ref()
                            .and_then(|s| std::fs::metadata(s).ok())
                            .is_some_and(|meta| !meta.is_dir());
                    (m.destination().clone(), not_a_dir)
                })
                .collect();
            relocate::create_mount_points(&dir.join("rootfs"), &points)?;
        }
        let mut plain = Vec::new();
        // The /proc views are bound as they are: owned by the VM's root, so
        // not writable by the container's even through a rw remount.
        let views = self.views(id)?;
        for (n, mount) in mounts.iter_mut().enumerate() {
            let Some(source) = mount.source().clone() else {
                continue;
            };
            if !spec::is_bind(mount) || !source.is_absolute() || source.starts_with(&dir) {
                continue;
            }
            let target = dir.join(format!("mount-{n}"));
            let recursive = sources::is_recursive(mount);
            // Bound from the descriptor that was judged (`sources::vet`).
            let fd = vetted.fd(n)?;
            if let Some(sources::Allowance::HarmlessReadOnly { .. }) = vetted.allowance(n) {
                relocate::bind_read_only_from(fd, &source, &target, recursive)?;
            } else if let Some(sources::Allowance::EngineLayers { point, .. }) = vetted.allowance(n)
            {
                // The same layers, ID-mapped, in a read-only overlay of
                // eci's; the source's place in it bound as asked.
                let layers = rootfs::overlay_of(point)?.ok_or_else(|| {
                    Refusal::Invalid(format!(
                        "{} is no longer an overlay of the engine's layers",
                        point.display()
                    ))
                })?;
                let merged =
                    rootfs::read_only_overlay(&layers, &userns, &dir.join(format!("layers-{n}")))?;
                // Where the judged descriptor is, not the path again.
                let inside = sources::facts_of(fd, &source.display().to_string())
                    .ok()
                    .and_then(|facts| facts.path.strip_prefix(point).ok().map(Path::to_owned))
                    .ok_or_else(|| {
                        Refusal::Invalid(format!(
                            "{} is no longer below the engine's overlay at {}",
                            source.display(),
                            point.display()
                        ))
                    })?;
                relocate::bind(&merged.join(inside), &target, None, false)?;
            } else if source.starts_with(views.dir()) {
                relocate::bind_from(fd, &source, &target, None, false)?;
            } else if !relocate::bind_from(fd, &source, &target, Some(&userns), recursive)? {
                // A shared directory the container's users could not own or
                // write: refused, never a container that cannot write its
                // own project.
                let shared = match vetted.allowance(n) {
                    Some(
                        sources::Allowance::SameMount { dir }
                        | sources::Allowance::FreshTmpfs { dir, .. },
                    ) => shareable.contains(dir),
                    _ => false,
                };
                if shared {
                    return Err(Refusal::SharedNotIdMappable {
                        from: source.display().to_string(),
                        destination: mount.destination().display().to_string(),
                    }
                    .into());
                }
                plain.push(source.display().to_string());
            }
            let locked = relocate::locked_flag_options(&target)?;
            let options = mount.options().clone().unwrap_or_default();
            mount.set_options(Some(relocate::with_locked_options(&options, &locked)));
            mount.set_source(Some(target));
        }
        oci.set_mounts(Some(mounts));
        if !plain.is_empty() {
            report.warning(&format!(
                "eci: these mounts could not be ID-mapped (the file system does not support it); files in them keep their VM owners: {}",
                plain.join(", ")
            ));
        }
        Ok(())
    }

    fn views(&self, id: &str) -> Result<ContainerViews, ViewsError> {
        ContainerViews::new(&self.views_root, id)
    }

    /// Describe and render the container's views and mount their symlinks
    /// over the files they stand in for (below `under`: see
    /// [`relocate::mount_symlinks_in`]), then protect its cgroup (`pid` is
    /// its init's; the symlinks' mounts are among those it starts with).
    /// Views first: a failure there leaves nothing registered with the agent.
    fn register(&self, id: &str, pid: u32, under: &Path) -> Result<String, LifecycleError> {
        let views = self.views(id)?;
        views.start(pid)?;
        timing::mark("views described and rendered");
        relocate::mount_symlinks_in(pid, under, &views.links())?;
        timing::mark("views mounted");
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| LifecycleError::Agent(format!("reading the container's cgroup: {e}")))?;
        let cgroup = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
            .ok_or_else(|| {
                LifecycleError::Agent(
                    "the container has no cgroup v2 (eci needs cgroup2 mounted)".into(),
                )
            })?;
        // Delegated before it is protected: a failure leaves nothing
        // registered (nothing of the user's runs yet).
        if let Some(a) = self.ranges.get(id)?
            && a.delegate_cgroup
        {
            Self::delegate_cgroup(&text, &cgroup, a.base)?;
        }
        Client::new(&self.agent_socket)
            .call_ok(&Request::Protect {
                cgroup: cgroup.clone(),
            })
            .map_err(|e| LifecycleError::Agent(e.to_string()))?;
        timing::mark("registered with the agent");
        Ok(cgroup)
    }

    /// Unprotect a container's cgroup with the agent (agent down: warning).
    fn unregister(&self, id: &str, cgroup: &str, report: &Reporter) {
        let answer = Client::new(&self.agent_socket).call_ok(&Request::Unprotect {
            cgroup: cgroup.to_owned(),
        });
        if let Err(e) = answer {
            report.warning(&format!(
                "eci: unregistering {cgroup} of container {id}: {e}"
            ));
        }
    }

    /// Undo everything `create` or `run` did for a container; what cannot be
    /// undone is reported, never fatal (delete must go through).
    pub fn release(&self, allocation: &Allocation, report: &Reporter) {
        // What was recorded since the caller's copy was taken (a shifted
        // layer, the bundle, a proxy) is released too.
        let recorded = self
            .ranges
            .get(&allocation.container_id)
            .ok()
            .flatten()
            .filter(|r| r.base == allocation.base);
        let allocation = recorded.as_ref().unwrap_or(allocation);
        let id = &allocation.container_id;
        if let Some(cgroup) = &allocation.cgroup {
            self.unregister(id, cgroup, report);
        }
        if allocation.docker_api_proxy {
            let answer = Client::new(&self.agent_socket).call_ok(&Request::CloseProxy {
                container: id.clone(),
            });
            if let Err(e) = answer {
                report.warning(&format!(
                    "eci: closing the Docker API proxy of container {id}: {e}"
                ));
            }
        }
        relocate::cleanup(id);
        if let Err(e) = self.views(id).and_then(|views| views.remove()) {
            report.warning(&format!(
                "eci: removing the /proc views of container {id}: {e}"
            ));
        }
        // eci's overlay leaves the engine's place first: nothing may use
        // the upper layer while it is shifted back.
        if let Some(engine) = &allocation.engine_rootfs {
            rootfs::leave(&engine.root);
        }
        if let Some(upper) = &allocation.shifted_upper
            && upper.exists()
            && let Err(e) = rootfs::shift_tree(upper, None, self.ranges.geometry())
        {
            report.warning(&format!(
                "eci: shifting the upper layer {} of container {id} back to the VM's ids: {e}",
                upper.display()
            ));
        }
        // The engine's overlay goes back where the engine put it: an engine
        // that keeps the root file system mounted across a restart (restart
        // policies) finds its own mount at the next create, not eci's.
        if let Some(engine) = &allocation.engine_rootfs
            && let Err(e) = rootfs::put_back(&engine.root, &engine.options)
        {
            report.warning(&format!(
                "eci: putting the engine's overlay back at {} for container {id}: {e}",
                engine.root.display()
            ));
        }
        if let Some(bundle) = &allocation.bundle {
            let original = bundle.join(ORIGINAL_CONFIG);
            if original.exists()
                && let Err(e) = std::fs::rename(&original, bundle.join("config.json"))
            {
                report.warning(&format!(
                    "eci: putting back the original spec {}: {e}",
                    original.display()
                ));
            }
        }
        if let Err(e) = self.ranges.free(id) {
            report.warning(&format!("eci: freeing the range of container {id}: {e}"));
        }
    }
}

/// A half-made container, undone when dropped unless committed: every early
/// return of `create` and `run` releases what was taken so far (fail
/// closed, nothing left behind).
struct Rollback<'a> {
    runtime: &'a Runtime,
    report: &'a Reporter,
    allocation: Allocation,
    /// runc created the container (as this invocation): delete it first.
    runc_created: Option<&'a Invocation>,
    /// The agent protects the container's cgroup, not recorded yet (what is
    /// recorded, `release` unregisters).
    registered: Option<String>,
    committed: bool,
}

impl<'a> Rollback<'a> {
    fn new(runtime: &'a Runtime, report: &'a Reporter, allocation: Allocation) -> Self {
        Self {
            runtime,
            report,
            allocation,
            runc_created: None,
            registered: None,
            committed: false,
        }
    }

    /// From now on, undoing includes runc's container.
    fn runc_created(&mut self, inv: &'a Invocation) {
        self.runc_created = Some(inv);
    }

    /// From now on, undoing includes the registration of `cgroup`.
    fn registered(&mut self, cgroup: &str) {
        self.registered = Some(cgroup.to_owned());
    }

    /// The container is complete: keep it.
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(inv) = self.runc_created {
            let id = &self.allocation.container_id;
            let deleted = self
                .runtime
                .runc_with_root(inv)
                .args(["delete", "--force", id])
                .status();
            if !deleted.is_ok_and(|s| s.success()) {
                self.report.warning(&format!(
                    "eci: deleting the half-made container {id} from runc failed"
                ));
            }
        }
        if let Some(cgroup) = &self.registered {
            let id = &self.allocation.container_id;
            self.runtime.unregister(id, cgroup, self.report);
        }
        self.runtime.release(&self.allocation, self.report);
    }
}

fn runc_root(inv: &Invocation) -> PathBuf {
    inv.root.clone().unwrap_or_else(|| "/run/runc".into())
}

/// The pid of the created container `id`'s init: from the caller's
/// `--pid-file`, else from runc's own record of the container
/// (`init_process_pid` in `state.json` of its state directory, as runc
/// 1.0–1.3 write it before `create` returns), else from `runc state`.
fn init_pid(runtime: &Runtime, inv: &Invocation, id: &str) -> Result<u32, LifecycleError> {
    if let Some(file) = &inv.pid_file
        && let Ok(text) = std::fs::read_to_string(file)
        && let Ok(pid) = text.trim().parse()
    {
        return Ok(pid);
    }
    if let Some(pid) = recorded_init_pid(&runc_root(inv).join(id)) {
        return Ok(pid);
    }
    let out = runtime
        .runc_with_root(inv)
        .args(["state", id])
        .output()
        .map_err(|e| runtime.runc_error(e))?;
    let state: State = serde_json::from_slice(&out.stdout)
        .map_err(|e| LifecycleError::Agent(format!("reading `runc state {id}`: {e}")))?;
    state
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| LifecycleError::Agent(format!("`runc state {id}` has no pid")))
}

/// `init_process_pid` of runc's `state.json` in `state_dir`; `None` when
/// it cannot be read (the caller asks runc).
fn recorded_init_pid(state_dir: &Path) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        init_process_pid: u32,
    }
    let text = std::fs::read(state_dir.join("state.json")).ok()?;
    let recorded: Recorded = serde_json::from_slice(&text).ok()?;
    (recorded.init_process_pid > 0).then_some(recorded.init_process_pid)
}

/// The spec asks for a terminal and no console socket is given: `runc run`
/// relays that terminal itself, which `create` cannot do.
fn wants_relayed_terminal(inv: &Invocation) -> bool {
    let bundle = inv.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let terminal = Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.process().as_ref().and_then(|p| p.terminal()))
        .unwrap_or(false);
    terminal
        && !inv
            .argv
            .iter()
            .any(|a| a == "--console-socket" || a.starts_with("--console-socket="))
}

/// The signals `run` passes on to the container's init.
const FORWARDED: &[nix::sys::signal::Signal] = &[
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGUSR1,
    nix::sys::signal::Signal::SIGUSR2,
    nix::sys::signal::Signal::SIGWINCH,
];

/// Pass [`FORWARDED`] signals to `pid` from a thread of their own, for as
/// long as eci-runc lives (they are blocked in every other thread; children
/// start with an empty mask).
fn forward_signals(pid: u32) {
    use nix::sys::signal::{SigSet, SigmaskHow, kill, pthread_sigmask};
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(*sig);
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    let target = nix::unistd::Pid::from_raw(pid as i32);
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if kill(target, sig).is_err() {
                return;
            }
        }
    });
}

/// Wait for the container's init (our child: eci-runc is its subreaper)
/// and give its exit status as a shell would (128 + signal).
fn wait_exit(pid: u32) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    loop {
        match waitpid(target, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // Not our child after all (no subreaper): it is gone when its
            // /proc entry is.
            Err(_) => {
                while Path::new(&format!("/proc/{pid}")).exists() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                return 0;
            }
        }
    }
}

/// The environment the hooks need to find the same agent and state.
fn hook_env() -> Vec<String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("ECI_") || k == "PATH")
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// `run`: register from a `createRuntime` hook (after runc made the cgroup,
/// before the user's process), release from a `poststop` hook.
fn add_hooks(oci: &mut Spec) -> Result<(), LifecycleError> {
    let exe = std::env::current_exe().map_err(|e| LifecycleError::Hook(e.to_string()))?;
    let hook = |command: &str| {
        HookBuilder::default()
            .path(exe.clone())
            .args(vec!["eci-runc".to_owned(), command.to_owned()])
            .env(hook_env())
            .build()
            .map_err(|e| LifecycleError::Hook(e.to_string()))
    };
    let mut hooks: Hooks = oci.hooks().clone().unwrap_or_default();
    let mut create_runtime = hooks.create_runtime().clone().unwrap_or_default();
    create_runtime.insert(0, hook(HOOK_REGISTER)?);
    hooks.set_create_runtime(Some(create_runtime));
    let mut poststop = hooks.poststop().clone().unwrap_or_default();
    poststop.push(hook(HOOK_RELEASE)?);
    hooks.set_poststop(Some(poststop));
    oci.set_hooks(Some(hooks));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::Geometry;

    #[test]
    fn the_init_pid_is_read_from_runcs_state_json_and_a_missing_or_odd_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_init_pid(dir.path()), None);
        let state = dir.path().join("state.json");
        // As runc 1.1–1.3 write it (abridged; other fields are ignored).
        std::fs::write(
            &state,
            r#"{"id":"abc","init_process_pid":4242,"init_process_start":123,"created":"2026-12-05T07:00:00Z","config":{"rootfs":"/b/rootfs"}}"#,
        )
        .unwrap();
        assert_eq!(recorded_init_pid(dir.path()), Some(4242));
        std::fs::write(&state, r#"{"id":"abc","init_process_pid":0}"#).unwrap();
        assert_eq!(recorded_init_pid(dir.path()), None);
        std::fs::write(&state, "not json").unwrap();
        assert_eq!(recorded_init_pid(dir.path()), None);
    }

    fn runtime(dir: &Path) -> Runtime {
        Runtime {
            runc: dir.join("no-runc"),
            agent_socket: dir.join("no-agent/agent.sock"),
            ranges: Ranges::new(dir.join("state"), Geometry::default()),
            views_root: dir.join("views"),
        }
    }

    fn invocation(args: &[&str]) -> Invocation {
        args::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    /// A container `id` with its range taken, as `prepare` leaves it.
    fn half_made(rt: &Runtime, dir: &Path, id: &str) -> (Reporter, Allocation) {
        let report = Reporter::new(&invocation(&["create", id]));
        let allocated = rt.ranges.allocate(id, dir).unwrap();
        assert!(rt.ranges.get(id).unwrap().is_some());
        (report, allocated.allocation)
    }

    #[test]
    fn a_half_made_container_is_released_when_its_rollback_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let (report, allocation) = half_made(&rt, dir.path(), "eci-rollback-test");
        drop(Rollback::new(&rt, &report, allocation));
        assert_eq!(rt.ranges.get("eci-rollback-test").unwrap(), None);
    }

    #[test]
    fn a_committed_container_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let (report, allocation) = half_made(&rt, dir.path(), "eci-commit-test");
        Rollback::new(&rt, &report, allocation).commit();
        assert!(rt.ranges.get("eci-commit-test").unwrap().is_some());
    }

    #[test]
    fn create_and_run_without_the_agent_are_refused_and_take_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let bundle_arg = bundle.display().to_string();
        for command in ["create", "run"] {
            let inv = invocation(&[command, "--bundle", &bundle_arg, "eci-noagent-test"]);
            let report = Reporter::new(&inv);
            let err = match command {
                "create" => rt.create(&inv, &report).unwrap_err(),
                _ => rt.run(&inv, &report).unwrap_err(),
            };
            assert!(matches!(err, LifecycleError::Policy(_)), "{err:?}");
            let shown = err.to_string();
            assert!(shown.contains("policy in force"), "{shown}");
            assert!(shown.contains("eci-agent run"), "{shown}");
            assert_eq!(rt.ranges.all().unwrap(), Vec::new());
        }
    }
}
