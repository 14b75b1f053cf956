//! The spec rewrite and the refusals. Everything here works on oci-spec
//! types; nothing touches the system, so it is all unit-tested.

use std::{
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use oci_spec::runtime::{
    LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, Spec,
};

use crate::ranges::RANGE_SIZE;

/// Masked for every container, `--privileged` too.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/kallsyms",
    "/proc/sysrq-trigger",
    "/sys/firmware",
    "/sys/kernel/security",
    "/sys/kernel/debug",
    "/sys/kernel/tracing",
    "/sys/fs/bpf",
    "/sys/devices/virtual/powercap",
];

/// Read-only for every container, `--privileged` too.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger"];

/// Writable for every container (the engine makes it read-only for one
/// that is not privileged; eci takes that back, as Sysbox does): in its own
/// user namespace a container writes the knobs of its own namespaces
/// (`net.*`, and the IPC ones where the kernel gives them to the
/// namespace's root), which its root owns, and the kernel refuses it every
/// global knob (`kernel.*`, `vm.*`, `fs.*`: those answer only the VM's
/// root; the escape suite writes them).
pub const WRITABLE_PATHS: &[&str] = &["/proc/sys"];

/// The container mounts its cgroup file system writable (Docker does for
/// `--privileged`): it manages cgroups below its own, so its cgroup is
/// delegated to its root (see `Lifecycle::delegate_cgroup`).
pub fn mounts_cgroup_writable(spec: &Spec) -> bool {
    spec.mounts().iter().flatten().any(|m| {
        m.destination() == Path::new("/sys/fs/cgroup")
            && m.typ()
                .as_deref()
                .is_some_and(|t| t == "cgroup" || t == "cgroup2")
            && !m.options().iter().flatten().any(|o| o == "ro")
    })
}

/// Sockets no container may have mounted: the engines' (the policy's
/// default protected sockets) and the agent's (the Docker socket's binds are
/// replaced by a proxy before the check, for trusted images only).
pub fn engine_sockets() -> impl Iterator<Item = &'static str> {
    eci_policy::DEFAULT_PROTECTED_SOCKETS
        .iter()
        .copied()
        .chain([eci_control::DEFAULT_CONTROL_SOCKET])
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "enhanced container isolation: the container would share the VM's {0} namespace ({1}); eci gives every container its own namespaces. Remove the option, or ask an administrator to run this workload outside eci"
    )]
    HostNamespace(String, &'static str),
    #[error(
        "enhanced container isolation: engine socket mount denied ({from} at {destination}): containers cannot reach the container engine's sockets; only the Docker socket can be given, and only to images on enhancedContainerIsolation.dockerSocketMount.imageList. Remove the mount"
    )]
    EngineSocket { from: String, destination: String },
    #[error(
        "enhanced container isolation: docker socket mount denied for container with image {image:?} (at {destination}): {why}; if you wish to allow it, configure the docker socket image list (enhancedContainerIsolation.dockerSocketMount.imageList in /etc/eci/admin-settings.json)"
    )]
    SocketImageNotTrusted {
        image: String,
        destination: String,
        why: String,
    },
    #[error(
        "enhanced container isolation: can't mount {from} at {destination}: {why}. eci lets into a container only what is on the same mount as the container's own files, the engine's volume and container directories or the policy's shareable host paths, or on a fresh tmpfs of its own below them. Use a plain named volume, --tmpfs, or a tmpfs volume (docker volume create --opt type=tmpfs --opt device=tmpfs --opt o=size=100m NAME); or ask an administrator to add the directory to eci.shareableHostPaths in /etc/eci/admin-settings.json"
    )]
    MountSource {
        from: String,
        destination: String,
        why: String,
    },
    #[error(
        "enhanced container isolation: the container's {kind} namespace is given as {path}, which cannot be checked ({error}), so it may be the VM's; the container is refused. Fix the path, or remove it to give the container a namespace of its own"
    )]
    NamespacePath {
        kind: String,
        path: String,
        error: String,
    },
    #[error(
        "enhanced container isolation: the container would join the {kind} namespace {path}, but {why}"
    )]
    JoinedNamespace {
        kind: String,
        path: String,
        why: String,
    },
    #[error(
        "enhanced container isolation: can't share {from} at {destination}: its file system cannot be ID-mapped on this kernel, so the container's users would see its files as nobody's and could not write them. Keep the directory on a file system that can be ID-mapped (ext4, xfs, btrfs; tmpfs from Linux 6.3), or use a named volume"
    )]
    SharedNotIdMappable { from: String, destination: String },
    #[error("enhanced container isolation: invalid container spec: {0}")]
    Invalid(String),
}

/// What the rewrite needs to know about this container and the VM.
#[derive(Debug, Clone)]
pub struct Context {
    pub container_id: String,
    pub bundle: PathBuf,
    pub base: u32,
    pub shareable_host_paths: Vec<PathBuf>,
    /// Docker's volume directory (`<name>/_data` is a volume's source).
    pub volumes_dir: PathBuf,
    /// Docker's volume directory and container directory.
    pub engine_dirs: Vec<PathBuf>,
    /// The engine's layer storage a BuildKit step may bind from (allowing
    /// directories as `engine_dirs` are; overlays the engine mounted of its
    /// layers below them are let in read-only).
    pub engine_layer_dirs: Vec<PathBuf>,
    /// Inode numbers of the VM's namespaces, by kind name (`net`, `pid`...).
    pub vm_namespaces: Vec<(String, u64)>,
    /// The user namespace of the eci container whose pid namespace this one
    /// shares (`--pid=container:X`), to join instead of a new one.
    pub join_user_namespace: Option<PathBuf>,
}

/// The engine's data root when nothing says otherwise.
pub const DEFAULT_DOCKER_DATA_ROOT: &str = "/var/lib/docker";

/// Docker's directory for this container, `<data-root>/containers/<id>`:
/// the parent of the `hosts`, `hostname` or `resolv.conf` the engine binds
/// in (for a container that shares another's network, the other's: its id
/// is among `container_ids`). Only the engine can name it: the id is made
/// when the container is created, after the request's own binds were
/// fixed.
pub fn docker_container_dir(spec: &Spec, container_ids: &[&str]) -> Option<PathBuf> {
    spec.mounts().iter().flatten().find_map(|m| {
        if !["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
            .iter()
            .any(|d| m.destination() == Path::new(d))
        {
            return None;
        }
        let dir = m.source().as_ref()?.parent()?;
        let name = dir.file_name()?;
        let is_own = container_ids.iter().any(|id| name == *id)
            && dir.parent()?.file_name()? == "containers";
        is_own.then(|| dir.to_owned())
    })
}

/// The engine's layer storage directories below `data_root`, by storage
/// driver: where BuildKit's snapshots (cache mounts, the build context,
/// `--mount=type=bind,from=...`) live when the engine keeps images itself.
const ENGINE_STORAGE_DIRS: &[&str] = &["vfs/dir", "overlay2", "btrfs/subvolumes", "zfs/graph"];

/// The executor directory of a BuildKit RUN step: the engine's built-in
/// BuildKit runs `runc` (eci-runc standing in) with the bundle
/// `<data-root>/buildkit/executor/<id>`.
fn buildkit_executor(bundle: &Path) -> Option<&Path> {
    let executor = bundle.parent()?;
    let is_executor = executor.file_name()? == "executor"
        && executor.parent().and_then(Path::file_name)? == "buildkit";
    is_executor.then_some(executor)
}

/// What a BuildKit RUN step may bind of the executor's directory: its
/// `resolv.conf` and `hosts` (or `hosts.<build>`, one per build) and
/// nothing else (the engine's layer storage is [`buildkit_layer_dirs`]).
/// Nothing for any other bundle: a container's binds come from its
/// request, a build step's from BuildKit.
pub fn buildkit_engine_paths(bundle: &Path, spec: &Spec) -> Vec<PathBuf> {
    let Some(executor) = buildkit_executor(bundle) else {
        return Vec::new();
    };
    let per_build = spec.mounts().iter().flatten().filter_map(|m| {
        let source = m.source().as_ref()?;
        let name = source.file_name()?.to_str()?;
        let ours = source.parent() == Some(executor)
            && (name.starts_with("hosts.") || name.starts_with("resolv.conf."));
        ours.then(|| source.clone())
    });
    ["resolv.conf", "hosts"]
        .iter()
        .map(|f| executor.join(f))
        .chain(per_build)
        .collect()
}

/// The engine's layer storage ([`ENGINE_STORAGE_DIRS`] below the data root
/// the bundle is in) for a BuildKit step's bundle, where the sources of
/// `RUN --mount=type=cache|bind` are BuildKit's snapshots; nothing for any
/// other bundle.
pub fn buildkit_layer_dirs(bundle: &Path) -> Vec<PathBuf> {
    buildkit_executor(bundle)
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|data_root| {
            ENGINE_STORAGE_DIRS
                .iter()
                .map(|d| data_root.join(d))
                .collect()
        })
        .unwrap_or_default()
}

impl Context {
    /// The context of a container the engine made from `spec`: the engine's
    /// directories below its data root as the engine's own binds show it
    /// (any `data-root`), else below [`DEFAULT_DOCKER_DATA_ROOT`].
    /// `joined`: the eci containers whose namespaces it shares (their
    /// directories hold what the engine binds from them: `/etc/hosts`,
    /// `/dev/shm`...).
    pub fn docker(
        container_id: &str,
        bundle: &Path,
        base: u32,
        spec: &Spec,
        joined: Option<&crate::joined::Joined>,
    ) -> Self {
        let mut ids = vec![container_id];
        if let Some(j) = joined {
            ids.extend(j.containers.iter().map(String::as_str));
        }
        let data_root = docker_container_dir(spec, &ids)
            .and_then(|dir| dir.parent()?.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_DATA_ROOT));
        let mut ctx = Self::with_data_root(container_id, bundle, base, &data_root);
        if let Some(j) = joined {
            for other in &j.containers {
                ctx.engine_dirs
                    .push(data_root.join("containers").join(other));
            }
            ctx.join_user_namespace = j.user.as_ref().map(|u| u.path.clone());
        }
        ctx.engine_dirs.extend(buildkit_engine_paths(bundle, spec));
        ctx.engine_layer_dirs = buildkit_layer_dirs(bundle);
        ctx
    }

    #[cfg(test)]
    pub fn docker_defaults(container_id: &str, bundle: &Path, base: u32) -> Self {
        Self::with_data_root(
            container_id,
            bundle,
            base,
            Path::new(DEFAULT_DOCKER_DATA_ROOT),
        )
    }

    fn with_data_root(container_id: &str, bundle: &Path, base: u32, data_root: &Path) -> Self {
        let volumes_dir = data_root.join("volumes");
        Self {
            container_id: container_id.to_owned(),
            bundle: bundle.to_owned(),
            base,
            shareable_host_paths: Vec::new(),
            engine_dirs: vec![
                volumes_dir.clone(),
                data_root.join("containers").join(container_id),
                PathBuf::from("/run/containerd/io.containerd.runtime.v2.task")
                    .join("moby")
                    .join(container_id),
            ],
            volumes_dir,
            engine_layer_dirs: Vec::new(),
            // PID 1's and our own: eci-runc runs in the engine's namespaces.
            vm_namespaces: ["1", "self"]
                .iter()
                .flat_map(|pid| {
                    ["net", "pid", "ipc", "uts", "mnt"]
                        .iter()
                        .filter_map(move |k| {
                            std::fs::metadata(format!("/proc/{pid}/ns/{k}"))
                                .ok()
                                .map(|m| (k.to_string(), m.ino()))
                        })
                })
                .collect(),
            join_user_namespace: None,
        }
    }
}

/// The annotation containerd's CRI plugin (Kubernetes) puts on every
/// container of a pod, sandbox (pause) container included: the pod's
/// sandbox id.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Where containerd keeps a runtime v2 task's bundle, below its state
/// directory: `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`.
const CONTAINERD_TASKS: &str = "io.containerd.runtime.v2.task";
/// The CRI plugin's directory below containerd's root and state.
const CRI_PLUGIN_DIR: &str = "io.containerd.grpc.v1.cri";

/// containerd's root directory (`ECI_CONTAINERD_ROOT`, default
/// /var/lib/containerd): the CRI plugin keeps a pod's /etc files below it.
pub fn containerd_root_from_env() -> PathBuf {
    std::env::var_os("ECI_CONTAINERD_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/containerd".into())
}

impl Context {
    /// A container of a Kubernetes pod (containerd's CRI plugin) may have
    /// the files the plugin made for its pod bound in: `/etc/hosts`,
    /// `/etc/hostname` and `/etc/resolv.conf` from
    /// `<root>/io.containerd.grpc.v1.cri/sandboxes/<sandbox id>/`, and the
    /// pod's `/dev/shm` (a tmpfs) from the same directory below the state
    /// directory. The sandbox id is the pod's (annotation
    /// [`CRI_SANDBOX_ID`]), a single path component; the state directory
    /// is the one the bundle is in. Nothing is added for any other spec.
    /// Returns the directories added.
    pub fn add_cri_sandbox_dirs(&mut self, spec: &Spec, containerd_root: &Path) -> Vec<PathBuf> {
        let Some(sandbox) = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CRI_SANDBOX_ID))
        else {
            return Vec::new();
        };
        if sandbox.is_empty() || !sandbox.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Vec::new();
        }
        let mut dirs = vec![
            containerd_root
                .join(CRI_PLUGIN_DIR)
                .join("sandboxes")
                .join(sandbox),
        ];
        let bundle = normalize(&self.bundle);
        let tasks = bundle.parent().and_then(Path::parent);
        if let Some(tasks) = tasks
            && tasks.file_name() == Some(std::ffi::OsStr::new(CONTAINERD_TASKS))
            && let Some(state) = tasks.parent()
        {
            dirs.push(state.join(CRI_PLUGIN_DIR).join("sandboxes").join(sandbox));
        }
        self.engine_dirs.extend(dirs.iter().cloned());
        dirs
    }
}

pub(crate) fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

fn ns_proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Mount => "mnt",
        other => ns_name(other),
    }
}

fn docker_flag(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Network => "--network=host",
        LinuxNamespaceType::Pid => "--pid=host",
        LinuxNamespaceType::Ipc => "--ipc=host",
        LinuxNamespaceType::Uts => "--uts=host",
        _ => "a host namespace",
    }
}

/// Lexically normalize an absolute path (`.` and `..` resolved).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// A bind mount (by type or by option).
pub fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// Refuse what eci does not allow. `resolve` turns a mount source into the
/// path it really names (symlinks followed); tests pass a lexical one.
pub fn check(
    spec: &Spec,
    ctx: &Context,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<(), Refusal> {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Refusal::Invalid("no linux section".into()))?;
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for kind in [
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        match namespaces.iter().find(|n| n.typ() == kind) {
            None => {
                return Err(Refusal::HostNamespace(
                    ns_name(kind).into(),
                    docker_flag(kind),
                ));
            }
            Some(ns) => {
                if let Some(path) = ns.path() {
                    // Fail closed: a path that cannot be looked at is not
                    // taken for the container's own.
                    let ino = std::fs::metadata(path)
                        .map_err(|e| Refusal::NamespacePath {
                            kind: ns_name(kind).into(),
                            path: path.display().to_string(),
                            error: e.to_string(),
                        })?
                        .ino();
                    let vm = ctx
                        .vm_namespaces
                        .iter()
                        .any(|(k, i)| k == ns_proc_name(kind) && *i == ino);
                    if vm {
                        return Err(Refusal::HostNamespace(
                            ns_name(kind).into(),
                            docker_flag(kind),
                        ));
                    }
                }
            }
        }
    }
    // Whether a bind's source may come in at all is `sources::vet`'s to
    // judge, by what the source resolves to (its mount, and for the
    // harmless VM files its path, owner and mode): one judge, not a second
    // one by spelling here.
    for mount in spec.mounts().iter().flatten().filter(|m| is_bind(m)) {
        let (Some(source), Some(real)) = (mount.source(), bind_source(mount, &ctx.bundle, resolve))
        else {
            continue;
        };
        let destination = mount.destination().display().to_string();
        if engine_sockets().any(|s| resolve(Path::new(s)) == real || Path::new(s) == real) {
            return Err(Refusal::EngineSocket {
                from: source.display().to_string(),
                destination,
            });
        }
    }
    Ok(())
}

/// The directories whose files a container may have bound in: its bundle,
/// its rootfs, the engine's directories and the policy's shareable host
/// paths (`sources` also requires a source to be on the same mount as one of
/// them, or on a fresh tmpfs below one).
pub fn allowed_dirs(spec: &Spec, ctx: &Context) -> Vec<PathBuf> {
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    let rootfs = if rootfs.is_absolute() {
        rootfs
    } else {
        ctx.bundle.join(rootfs)
    };
    [ctx.bundle.clone(), rootfs]
        .into_iter()
        .chain(ctx.engine_dirs.iter().cloned())
        .chain(ctx.engine_layer_dirs.iter().cloned())
        .chain(ctx.shareable_host_paths.iter().cloned())
        .collect()
}

/// The binds whose source is one of the Docker API sockets (by any name
/// that resolves to it), as (index in the mounts, the socket they name).
pub fn docker_socket_binds(
    spec: &Spec,
    bundle: &Path,
    docker_sockets: &[PathBuf],
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Vec<(usize, PathBuf)> {
    let sockets: Vec<PathBuf> = docker_sockets
        .iter()
        .flat_map(|s| [s.clone(), resolve(s)])
        .collect();
    spec.mounts()
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, m)| is_bind(m))
        .filter_map(|(n, m)| {
            let real = bind_source(m, bundle, resolve)?;
            sockets.contains(&real).then_some((n, real))
        })
        .collect()
}

/// What a bind's source really names: relative to the bundle, then
/// resolved by `resolve`.
fn bind_source(
    mount: &Mount,
    bundle: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Option<PathBuf> {
    bind_source_path(mount, bundle).map(|p| resolve(&p))
}

/// A bind's source as a path (relative ones are relative to the bundle);
/// `None` for a mount that is not a bind or has no source.
pub fn bind_source_path(mount: &Mount, bundle: &Path) -> Option<PathBuf> {
    if !is_bind(mount) {
        return None;
    }
    let source = mount.source().as_ref()?;
    Some(if source.is_absolute() {
        source.clone()
    } else {
        bundle.join(source)
    })
}

/// Rewrite the spec for eci; returns a note for each adjustment made.
pub fn rewrite(spec: &mut Spec, ctx: &Context) -> Result<Vec<String>, Refusal> {
    let mut notes = Vec::new();
    let mut linux = spec
        .linux()
        .clone()
        .ok_or_else(|| Refusal::Invalid("no linux section".into()))?;

    // A user namespace of its own, always (`--userns=host` is ignored).
    let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    let had_user = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::User);
    let mut user = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User);
    if let Some(path) = &ctx.join_user_namespace {
        user = user.path(path.clone());
        notes.push(format!(
            "joins the user namespace {} (and range {}) of the eci container whose namespaces it shares",
            path.display(),
            ctx.base
        ));
    } else if !had_user {
        notes.push("added a user namespace".into());
    }
    let user = user.build().map_err(|e| Refusal::Invalid(e.to_string()))?;
    namespaces.push(user);
    if !namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Cgroup)
    {
        let cgroup = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Cgroup)
            .build()
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        namespaces.push(cgroup);
        notes.push("added a cgroup namespace".into());
    }
    linux.set_namespaces(Some(namespaces));
    let mapping = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(ctx.base)
        .size(RANGE_SIZE)
        .build()
        .map_err(|e| Refusal::Invalid(e.to_string()))?;
    linux.set_uid_mappings(Some(vec![mapping]));
    linux.set_gid_mappings(Some(vec![mapping]));

    // Masks, also for --privileged (Docker empties the lists then).
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    for p in MASKED_PATHS {
        if !masked.iter().any(|m| m == p) {
            masked.push((*p).to_owned());
        }
    }
    linux.set_masked_paths(Some(masked));
    let mut readonly = linux.readonly_paths().clone().unwrap_or_default();
    readonly.retain(|p| !WRITABLE_PATHS.contains(&p.as_str()));
    for p in READONLY_PATHS {
        if !readonly.iter().any(|m| m == p) {
            readonly.push((*p).to_owned());
        }
    }
    linux.set_readonly_paths(Some(readonly));

    // Sysctls whose values must lie inside the user namespace.
    if let Some(mut sysctls) = linux.sysctl().clone() {
        if let Some(range) = sysctls.get("net.ipv4.ping_group_range").cloned() {
            let max = RANGE_SIZE - 1;
            let clamped: Vec<u32> = range
                .split_whitespace()
                .filter_map(|v| v.parse::<u64>().ok())
                .map(|v| v.min(max as u64) as u32)
                .collect();
            if let [lo, hi] = clamped[..] {
                let value = format!("{lo} {hi}");
                if value != range {
                    notes.push(format!("net.ipv4.ping_group_range {range:?} clamped to {value:?} (the container's id range)"));
                    sysctls.insert("net.ipv4.ping_group_range".into(), value);
                }
            }
        }
        linux.set_sysctl(Some(sysctls));
    }
    spec.set_linux(Some(linux));
    Ok(notes)
}

/// Container-accurate /proc and /sys views (`eci_views`): the container's
/// `shown` directory bound read-only at [`eci_views::SHOWN_IN_CONTAINER`].
/// eci-runc mounts the symlinks into it over the files they stand in for
/// once runc has made the container (a symlink cannot be a spec mount: runc
/// binds what it points to). Returns the note to report.
pub fn add_proc_views(spec: &mut Spec, shown: &Path, targets: &[&str]) -> String {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let mut mount = Mount::default();
    mount.set_destination(eci_views::SHOWN_IN_CONTAINER.into());
    mount.set_typ(Some("bind".into()));
    mount.set_source(Some(shown.to_owned()));
    mount.set_options(Some(vec![
        "bind".into(),
        "ro".into(),
        "nosuid".into(),
        "nodev".into(),
        "noexec".into(),
    ]));
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
    format!(
        "{} are the container's views (their files are in {})",
        targets.join(", "),
        eci_views::SHOWN_IN_CONTAINER
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_like(namespaces: &str, mounts: &str) -> Spec {
        let text = format!(
            r#"{{
  "ociVersion": "1.0.2",
  "process": {{"user": {{"uid": 0, "gid": 0}}, "args": ["sh"], "cwd": "/"}},
  "root": {{"path": "/var/lib/docker/overlay2/abc/merged"}},
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/containers/c1/hosts", "options": ["rbind", "rprivate"]}}
    {mounts}
  ],
  "linux": {{
    "namespaces": [{namespaces}],
    "sysctl": {{"net.ipv4.ping_group_range": "0 2147483647"}},
    "maskedPaths": ["/proc/kcore"],
    "readonlyPaths": ["/proc/sys", "/proc/bus"],
    "cgroupsPath": "/docker/c1"
  }}
}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    const ALL_NS: &str = r#"{"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "pid"}, {"type": "ipc"}"#;

    #[test]
    fn a_container_that_mounts_its_cgroups_writable_gets_them_delegated_and_no_other() {
        let cgroup = |options: &str| {
            let mount = format!(
                r#", {{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": [{options}]}}"#
            );
            mounts_cgroup_writable(&docker_like(ALL_NS, &mount))
        };
        // Docker's --privileged, and every other container.
        assert!(cgroup(r#""nosuid", "noexec", "nodev", "relatime", "rw""#));
        assert!(!cgroup(r#""nosuid", "noexec", "nodev", "relatime", "ro""#));
        assert!(!mounts_cgroup_writable(&docker_like(ALL_NS, "")));
    }

    #[test]
    fn a_buildkit_step_may_have_the_executors_resolv_conf_and_hosts_and_the_engines_layer_storage()
    {
        let hosts = r#", {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/buildkit/executor/hosts.og0ovf", "options": ["rbind"]},
            {"destination": "/x", "type": "bind", "source": "/var/lib/docker/buildkit/executor/s2/rootfs/hosts.x", "options": ["rbind"]}"#;
        let spec = docker_like(ALL_NS, hosts);
        let c = Context::docker(
            "s1",
            Path::new("/var/lib/docker/buildkit/executor/s1"),
            165536,
            &spec,
            None,
        );
        assert!(!c.engine_dirs.iter().any(|d| d.ends_with("hosts.x")));
        for f in ["resolv.conf", "hosts", "hosts.og0ovf"] {
            assert!(c.engine_dirs.contains(&PathBuf::from(format!(
                "/var/lib/docker/buildkit/executor/{f}"
            ))));
        }
        assert!(
            !c.engine_dirs
                .contains(&PathBuf::from("/var/lib/docker/buildkit/executor"))
        );
        for d in ["vfs/dir", "overlay2"] {
            assert!(
                allowed_dirs(&spec, &c).contains(&PathBuf::from(format!("/var/lib/docker/{d}")))
            );
        }
        assert_eq!(
            c.engine_layer_dirs.first(),
            Some(&PathBuf::from("/var/lib/docker/vfs/dir"))
        );
        let c = Context::docker(
            "s1",
            Path::new("/run/containerd/io.containerd.runtime.v2.task/moby/s1"),
            165536,
            &spec,
            None,
        );
        assert!(!c.engine_dirs.iter().any(|d| d.ends_with("resolv.conf")));
        assert!(
            !allowed_dirs(&spec, &c)
                .iter()
                .any(|d| d.ends_with("overlay2"))
        );
    }

    #[test]
    fn the_engines_directories_follow_its_data_root_as_its_own_binds_show_it() {
        let alt = r#", {"destination": "/etc/hostname", "type": "bind", "source": "/data/docker-alt/containers/c9/hostname", "options": ["rbind"]}"#;
        let spec = docker_like(ALL_NS, alt);
        let c = Context::docker("c9", Path::new("/run/b/c9"), 165536, &spec, None);
        assert_eq!(c.volumes_dir, Path::new("/data/docker-alt/volumes"));
        assert!(
            c.engine_dirs
                .contains(&PathBuf::from("/data/docker-alt/containers/c9"))
        );
        // Another container's directory, or a file at another place, names
        // no data root: the default stays.
        let other = r#", {"destination": "/etc/hostname", "type": "bind", "source": "/etc/containers/c9/hostname", "options": ["rbind"]}"#;
        let c = Context::docker(
            "c8",
            Path::new("/run/b/c8"),
            165536,
            &docker_like(ALL_NS, other),
            None,
        );
        assert_eq!(c.volumes_dir, Path::new("/var/lib/docker/volumes"));
        let elsewhere = r#", {"destination": "/src", "type": "bind", "source": "/home/x/containers/c7/hostname", "options": ["rbind"]}"#;
        let c = Context::docker(
            "c7",
            Path::new("/run/b/c7"),
            165536,
            &docker_like(ALL_NS, elsewhere),
            None,
        );
        assert_eq!(c.volumes_dir, Path::new("/var/lib/docker/volumes"));
    }

    #[test]
    fn a_container_sharing_anothers_namespaces_may_have_its_files_and_joins_its_user_namespace() {
        let theirs = r#", {"destination": "/etc/hosts", "type": "bind", "source": "/data/docker/containers/x1/hosts", "options": ["rbind"]}"#;
        let spec = docker_like(ALL_NS, theirs);
        let alone = Context::docker("s1", Path::new("/run/b/s1"), 165536, &spec, None);
        assert_eq!(alone.volumes_dir, Path::new("/var/lib/docker/volumes"));
        let joined = crate::joined::Joined {
            containers: vec!["x1".into()],
            user: Some(crate::joined::SharedUser {
                base: 231072,
                path: PathBuf::from("/proc/77/ns/user"),
            }),
        };
        let mut c = Context::docker("s1", Path::new("/run/b/s1"), 231072, &spec, Some(&joined));
        assert_eq!(c.volumes_dir, Path::new("/data/docker/volumes"));
        assert!(
            c.engine_dirs
                .contains(&PathBuf::from("/data/docker/containers/x1"))
        );
        assert!(
            c.engine_dirs
                .contains(&PathBuf::from("/data/docker/containers/s1"))
        );
        let mut spec = spec;
        c.bundle = PathBuf::from("/run/b/s1");
        let notes = rewrite(&mut spec, &c).expect("rewrite");
        assert!(
            notes.iter().any(|n| n.contains("joins the user namespace")),
            "{notes:?}"
        );
        let linux = spec.linux().as_ref().expect("linux");
        let user = linux
            .namespaces()
            .as_ref()
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n.typ() == LinuxNamespaceType::User)
                    .cloned()
            })
            .expect("user namespace");
        assert_eq!(user.path().as_deref(), Some(Path::new("/proc/77/ns/user")));
        let uid = linux.uid_mappings().as_ref().expect("uid map")[0];
        assert_eq!(uid.host_id(), 231072);
    }

    fn ctx() -> Context {
        let mut c = Context::docker_defaults(
            "c1",
            Path::new("/run/containerd/io.containerd.runtime.v2.task/moby/c1"),
            165536,
        );
        c.vm_namespaces.clear();
        c.shareable_host_paths = vec![PathBuf::from("/home")];
        c
    }

    fn lexical(p: &Path) -> PathBuf {
        normalize(p)
    }

    #[test]
    fn a_plain_container_passes_and_gets_its_user_namespace() {
        let mut spec = docker_like(ALL_NS, "");
        check(&spec, &ctx(), &lexical).unwrap();
        let notes = rewrite(&mut spec, &ctx()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
        let m = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (m.container_id(), m.host_id(), m.size()),
            (0, 165536, 65536)
        );
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p == "/proc/kallsyms")
        );
        assert_eq!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .iter()
                .filter(|p| *p == "/proc/kcore")
                .count(),
            1
        );
        assert!(
            linux
                .readonly_paths()
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p == "/proc/irq")
        );
        assert!(
            !linux
                .readonly_paths()
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p == "/proc/sys")
        );
        assert_eq!(
            linux.sysctl().as_ref().unwrap()["net.ipv4.ping_group_range"],
            "0 65535"
        );
        assert!(
            notes.iter().any(|n| n.contains("ping_group_range")),
            "{notes:?}"
        );
    }

    /// A container of a Kubernetes pod as containerd's CRI plugin hands it
    /// over: the pod's files bound from the plugin's sandbox directories.
    fn cri_pod_container(sandbox: &str, mounts: &str) -> (Spec, Context) {
        let bundle = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c2";
        let text = format!(
            r#"{{
  "ociVersion": "1.0.2",
  "process": {{"user": {{"uid": 0, "gid": 0}}, "args": ["sleep"], "cwd": "/"}},
  "root": {{"path": "rootfs"}},
  "annotations": {{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "{sandbox}"}},
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{sandbox}/hosts", "options": ["rbind", "rprivate", "rw"]}},
    {{"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/{sandbox}/shm", "options": ["rbind", "rprivate", "rw"]}}
    {mounts}
  ],
  "linux": {{"namespaces": [{ALL_NS}], "cgroupsPath": "/kubepods/pod1/c2"}}
}}"#
        );
        let mut c = Context::docker_defaults("c2", Path::new(bundle), 165536);
        c.vm_namespaces.clear();
        (serde_json::from_str(&text).unwrap(), c)
    }

    #[test]
    fn a_kubernetes_pods_files_from_containerds_sandbox_directories_pass() {
        let (spec, mut c) = cri_pod_container("abc123", "");
        let hosts =
            Path::new("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123/hosts");
        assert!(
            !allowed_dirs(&spec, &c).iter().any(|d| hosts.starts_with(d)),
            "allowed before the pod's dirs"
        );
        let added = c.add_cri_sandbox_dirs(&spec, Path::new("/var/lib/containerd"));
        assert_eq!(
            added,
            [
                PathBuf::from("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123"),
                PathBuf::from("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc123"),
            ]
        );
        check(&spec, &c, &lexical).unwrap();
    }

    #[test]
    fn another_pods_files_and_odd_sandbox_ids_are_not_allowed() {
        let other = r#", {"destination": "/x", "type": "bind", "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/other/hosts", "options": ["rbind"]}"#;
        let (spec, mut c) = cri_pod_container("abc123", other);
        c.add_cri_sandbox_dirs(&spec, Path::new("/var/lib/containerd"));
        let other_pod =
            Path::new("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/other/hosts");
        assert!(
            !allowed_dirs(&spec, &c)
                .iter()
                .any(|dir| other_pod.starts_with(dir)),
            "{:?}",
            allowed_dirs(&spec, &c)
        );
        for odd in ["", "..", "abc/../../../../etc", "a.b"] {
            let (spec, mut c) = cri_pod_container(odd, "");
            assert!(
                c.add_cri_sandbox_dirs(&spec, Path::new("/var/lib/containerd"))
                    .is_empty(),
                "{odd:?}"
            );
        }
        // Docker's containers carry no sandbox id: nothing added.
        let mut c = ctx();
        assert!(
            c.add_cri_sandbox_dirs(&docker_like(ALL_NS, ""), Path::new("/var/lib/containerd"))
                .is_empty()
        );
    }

    #[test]
    fn host_namespaces_are_refused_with_the_docker_flag() {
        let spec = docker_like(
            r#"{"type": "mount"}, {"type": "uts"}, {"type": "pid"}, {"type": "ipc"}"#,
            "",
        );
        let e = check(&spec, &ctx(), &lexical).unwrap_err();
        assert_eq!(
            e,
            Refusal::HostNamespace("network".into(), "--network=host")
        );
        assert!(e.to_string().contains("--network=host"));
        let spec = docker_like(
            r#"{"type": "mount"}, {"type": "uts"}, {"type": "network"}, {"type": "ipc"}"#,
            "",
        );
        assert!(
            check(&spec, &ctx(), &lexical)
                .unwrap_err()
                .to_string()
                .contains("--pid=host")
        );
    }

    #[test]
    fn a_namespace_path_of_the_vm_is_refused() {
        let mut c = ctx();
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        c.vm_namespaces = vec![("net".into(), own)];
        let ns = r#"{"type": "mount"}, {"type": "network", "path": "/proc/self/ns/net"}, {"type": "uts"}, {"type": "pid"}, {"type": "ipc"}"#;
        let e = check(&docker_like(ns, ""), &c, &lexical).unwrap_err();
        assert_eq!(
            e,
            Refusal::HostNamespace("network".into(), "--network=host"),
            "{e}"
        );
    }

    #[test]
    fn a_namespace_path_that_cannot_be_checked_is_refused_and_named() {
        let ns = r#"{"type": "mount"}, {"type": "network", "path": "/proc/999999999/ns/net"}, {"type": "uts"}, {"type": "pid"}, {"type": "ipc"}"#;
        let e = check(&docker_like(ns, ""), &ctx(), &lexical).unwrap_err();
        assert!(matches!(e, Refusal::NamespacePath { .. }), "{e:?}");
        let shown = e.to_string();
        assert!(shown.contains("network namespace"), "{shown}");
        assert!(shown.contains("/proc/999999999/ns/net"), "{shown}");
        assert!(shown.contains("Fix the path"), "{shown}");
    }

    #[test]
    fn userns_host_is_ignored() {
        let ns = format!(r#"{ALL_NS}, {{"type": "user", "path": "/proc/1/ns/user"}}"#);
        let mut spec = docker_like(&ns, "");
        rewrite(&mut spec, &ctx()).unwrap();
        let user: Vec<_> = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::User)
            .cloned()
            .collect();
        assert_eq!(user.len(), 1);
        assert!(
            user[0].path().is_none(),
            "the container gets its own user namespace"
        );
    }

    #[test]
    fn vm_directories_are_refused_by_what_they_resolve_to_and_a_shareable_one_passes() {
        // Only the bind under test (no engine files that are not here).
        let bind = |src: &str, options: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion": "1.0.2", "root": {{"path": "/nonexistent-rootfs"}},
                    "mounts": [{{"destination": "/x", "type": "bind", "source": "{src}", "options": [{options}]}}],
                    "linux": {{"namespaces": [{ALL_NS}]}}}}"#
            ))
            .unwrap()
        };
        // The share: a directory of this machine made shareable.
        let share = std::env::temp_dir().join(format!("eci-spec-share-{}", std::process::id()));
        std::fs::create_dir_all(share.join("project")).unwrap();
        let mut c = ctx();
        c.shareable_host_paths = vec![share.clone()];
        for bad in ["/etc", "/", "/tmp/../etc", "/usr/../etc"] {
            for options in [r#""rbind""#, r#""rbind", "ro""#] {
                let spec = bind(bad, options);
                // Nothing in the spec's spelling refuses it early...
                check(&spec, &c, &lexical).unwrap();
                // ...what it resolves to does.
                let e = crate::sources::vet(&spec, &c, &[]).unwrap_err();
                assert!(matches!(e, Refusal::MountSource { .. }), "{bad}: {e}");
                assert!(e.to_string().contains("VM path"), "{bad}: {e}");
            }
        }
        let spec = bind(&share.join("project").display().to_string(), r#""rbind""#);
        let vetted = crate::sources::vet(&spec, &c, &[]);
        let _ = std::fs::remove_dir_all(&share);
        let vetted = vetted.unwrap_or_else(|e| panic!("the shareable directory: {e}"));
        assert!(vetted.allowance(0).is_some());
    }

    #[test]
    fn the_docker_socket_is_refused_by_any_name() {
        let bind = |src: &str| {
            format!(
                r#", {{"destination": "/var/run/docker.sock", "type": "bind", "source": "{src}", "options": ["rbind"]}}"#
            )
        };
        for sock in [
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run/containerd/containerd.sock",
        ] {
            let e = check(&docker_like(ALL_NS, &bind(sock)), &ctx(), &lexical).unwrap_err();
            assert!(matches!(e, Refusal::EngineSocket { .. }), "{sock}: {e}");
            assert!(e.to_string().contains("socket mount denied"), "{e}");
        }
    }

    #[test]
    fn proc_views_are_one_read_only_bind_of_the_shown_directory() {
        let mut spec = docker_like(ALL_NS, "");
        let before = spec.mounts().as_ref().map(Vec::len);
        let note = add_proc_views(
            &mut spec,
            Path::new("/run/eci/views/c1/shown"),
            &["/proc/meminfo", "/proc/stat"],
        );
        assert!(note.starts_with("/proc/meminfo, /proc/stat are"), "{note}");
        let mounts = spec.mounts().as_ref().unwrap();
        assert_eq!(Some(mounts.len()), before.map(|n| n + 1));
        let view = mounts.last().unwrap();
        assert_eq!(view.destination(), Path::new("/dev/.eci"));
        assert!(is_bind(view));
        assert!(view.options().as_ref().unwrap().iter().any(|o| o == "ro"));
    }
}
