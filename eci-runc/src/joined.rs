//! Namespaces shared between containers (`--network=container:X`,
//! `--pid=container:X`, `--ipc=container:X`, a Kubernetes pod's pause
//! container), judged by what the namespace is: the user namespace that
//! owns it (`NS_GET_USERNS`), not the path it is named by.
//!
//! - Owned by an eci container's user namespace: joined. For its pid
//!   namespace, the new container joins that user namespace too, with the
//!   same range (it must, to mount the joined pid namespace's proc); the
//!   range is recorded for it as well, so it stays reserved while either
//!   lives. Its other namespaces are joined from a user namespace and range
//!   of the container's own, as runc 1.1 can (it joins a user namespace
//!   first, and from there no namespace the VM owns, such as a pod's
//!   network).
//! - Owned by the VM's user namespace and named through a process
//!   (`/proc/<pid>/ns/...`): a container outside eci, or a VM process:
//!   refused. A namespace pinned by a file (containerd's CNI network
//!   namespace of a pod) is joined as before, from a user namespace of the
//!   container's own (the VM's own namespaces are refused by
//!   `spec::check`).
//! - Owned by any other user namespace: refused (not a container eci made).

use std::{
    fs::File,
    os::{fd::AsRawFd, fd::FromRawFd, fd::OwnedFd, unix::fs::MetadataExt},
    path::{Component, Path, PathBuf},
};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::{
    ranges::{Allocation, RANGE_SIZE},
    spec::Refusal,
};

/// `NS_GET_USERNS` from `<linux/nsfs.h>`: `_IO(0xb7, 0x1)`.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// What a container that joins another eci container's namespaces shares
/// with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The eci containers whose namespaces are joined (their engine
    /// directories hold the files the engine binds from them: `/etc/hosts`,
    /// `/dev/shm`).
    pub containers: Vec<String>,
    /// Their user namespace and range, when the container is to share them
    /// (it joins their pid namespace).
    pub user: Option<SharedUser>,
}

/// A user namespace (and its range) shared with another eci container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedUser {
    pub base: u32,
    /// As runc is to join it: `/proc/<pid>/ns/user`.
    pub path: PathBuf,
}

/// The process a namespace path names, if it is `/proc/<pid>/ns/<kind>`.
fn process_of(path: &Path) -> Option<u32> {
    let parts: Vec<Component> = path.components().collect();
    match parts.as_slice() {
        [
            Component::RootDir,
            Component::Normal(proc_),
            Component::Normal(pid),
            Component::Normal(ns),
            Component::Normal(_),
        ] if *proc_ == "proc" && *ns == "ns" => pid.to_str()?.parse().ok(),
        _ => None,
    }
}

/// The path the kernel resolves a namespace path to, up to the namespace
/// file itself (a magic link to `net:[...]`, which is not followed):
/// symlinks on the way and `/proc/self` are resolved, so the process is
/// judged by what is named, not by the spelling.
fn resolved(path: &Path) -> PathBuf {
    let mut p = path.to_owned();
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(target) if !target.to_string_lossy().contains(":[") => {
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => break,
        }
    }
    match (p.parent().map(std::fs::canonicalize), p.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => p,
    }
}

/// The inode of the user namespace that owns the namespace at `path`.
fn owner_of(path: &Path) -> std::io::Result<u64> {
    let ns = File::open(path)?;
    // SAFETY: an ioctl on a descriptor we own; it returns a new descriptor
    // (or -1), which is owned from here on.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor returned to us by the kernel.
    let owner = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owner).metadata()?.ino())
}

/// `0 <base> RANGE_SIZE`, the only mapping eci gives a container, else
/// `None`.
fn eci_base(map: &str) -> Option<u32> {
    let lines: Vec<&str> = map.lines().filter(|l| !l.trim().is_empty()).collect();
    let [line] = lines.as_slice() else {
        return None;
    };
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["0", base, size] if size.parse() == Ok(RANGE_SIZE) => base.parse().ok(),
        _ => None,
    }
}

/// Looks at every namespace the spec joins by path (the user namespace
/// aside: eci sets that). `vm_user_ns` is the inode of the VM's user
/// namespace; `allocations` eci's ranges in use.
pub fn examine(
    spec: &Spec,
    vm_user_ns: u64,
    allocations: &[Allocation],
) -> Result<Option<Joined>, Refusal> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut named: Vec<String> = Vec::new();
    let mut user: Option<SharedUser> = None;
    for ns in &namespaces {
        let (Some(path), kind) = (ns.path(), ns.typ()) else {
            continue;
        };
        if kind == LinuxNamespaceType::User {
            continue;
        }
        let refuse = |why: String| Refusal::JoinedNamespace {
            kind: crate::spec::ns_name(kind).into(),
            path: path.display().to_string(),
            why,
        };
        let owner = owner_of(path).map_err(|e| {
            refuse(format!(
                "its owning user namespace cannot be read ({e}), so it may be the VM's"
            ))
        })?;
        let Some(pid) = process_of(&resolved(path)) else {
            // A file that pins a namespace the VM made (a pod's CNI network
            // namespace): a namespace of its own for the container, as
            // before; `spec::check` refuses the VM's own.
            if owner == vm_user_ns {
                continue;
            }
            return Err(refuse(
                "it belongs to a user namespace that is not the VM's, and no process of it is named, so eci cannot tell whose it is; name it as /proc/<pid>/ns/<kind> of an eci container".into(),
            ));
        };
        let user_ns = PathBuf::from(format!("/proc/{pid}/ns/user"));
        let of_process = std::fs::metadata(&user_ns).map(|m| m.ino()).map_err(|e| {
            refuse(format!(
                "process {pid}'s user namespace cannot be read ({e})"
            ))
        })?;
        if of_process == vm_user_ns {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_else(|_| "gone".into());
            return Err(refuse(format!(
                "it is process {pid}'s ({comm}), which runs outside eci: it is in the VM's user namespace. eci lets containers share namespaces only with other eci containers; run the other container with eci's runtime too"
            )));
        }
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let (uids, gids) = (eci_base(&read("uid_map")), eci_base(&read("gid_map")));
        let base = match (uids, gids) {
            (Some(u), Some(g)) if u == g => u,
            _ => {
                return Err(refuse(format!(
                    "process {pid}'s user namespace does not have the single mapping eci gives its containers; it is not an eci container's"
                )));
            }
        };
        let containers: Vec<String> = allocations
            .iter()
            .filter(|a| a.base == base)
            .map(|a| a.container_id.clone())
            .collect();
        if containers.is_empty() {
            return Err(refuse(format!(
                "process {pid}'s user namespace maps the range {base}, which no eci container holds"
            )));
        }
        for c in containers {
            if !named.contains(&c) {
                named.push(c);
            }
        }
        if owner == vm_user_ns {
            // A namespace the VM made that an eci container joined (a pod's
            // network, joined by its pause container): shared as it is,
            // from a user namespace of the container's own.
            continue;
        }
        if owner != of_process {
            return Err(refuse(format!(
                "it belongs to another user namespace than process {pid}'s own, which eci did not make"
            )));
        }
        // Only a pid namespace needs its owner's user namespace (to mount
        // its proc). The others are joined by runc as the VM's root before
        // the container's own user namespace is made, as before; joining
        // the owner's user namespace first would keep runc 1.1 (which
        // joins it first) out of a namespace the VM owns, such as a pod's
        // network.
        if kind == LinuxNamespaceType::Pid {
            user = Some(SharedUser {
                base,
                path: user_ns,
            });
        }
    }
    Ok((!named.is_empty()).then_some(Joined {
        containers: named,
        user,
    }))
}

/// The inode of the VM's user namespace (eci-runc runs in it).
pub fn vm_user_namespace() -> Result<u64, Refusal> {
    std::fs::metadata("/proc/self/ns/user")
        .map(|m| m.ino())
        .map_err(|e| Refusal::NamespacePath {
            kind: "user".into(),
            path: "/proc/self/ns/user".into(),
            error: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_namespace_path_names_its_process() {
        assert_eq!(process_of(Path::new("/proc/42/ns/net")), Some(42));
        assert_eq!(process_of(Path::new("/run/netns/cni-1")), None);
        assert_eq!(process_of(Path::new("/proc/self/ns/net")), None);
        assert_eq!(process_of(Path::new("/proc/42/ns")), None);
    }

    #[test]
    fn only_the_single_eci_mapping_gives_a_range() {
        assert_eq!(eci_base("         0     165536      65536\n"), Some(165536));
        assert_eq!(eci_base("0 0 4294967295\n"), None);
        assert_eq!(eci_base("0 165536 65536\n65536 1 1\n"), None);
        assert_eq!(eci_base("0 165536 1000\n"), None);
    }

    #[test]
    fn the_machines_own_namespaces_are_owned_by_its_user_namespace() {
        let vm = vm_user_namespace().expect("own user namespace");
        assert_eq!(owner_of(Path::new("/proc/self/ns/net")).expect("owner"), vm);
    }

    #[test]
    fn joining_a_process_outside_eci_is_refused_however_it_is_spelled() {
        let vm = vm_user_namespace().expect("own user namespace");
        let spec = |path: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion": "1.0.2", "linux": {{"namespaces": [{{"type": "network", "path": "{path}"}}, {{"type": "pid"}}]}}}}"#
            ))
            .expect("spec")
        };
        let me = std::process::id();
        let err = examine(&spec(&format!("/proc/{me}/ns/net")), vm, &[]).expect_err("refused");
        assert!(err.to_string().contains("runs outside eci"), "{err}");
        // The same process, spelled through /proc/self and a symlink.
        let err = examine(&spec("/proc/self/ns/net"), vm, &[]).expect_err("refused");
        assert!(err.to_string().contains("runs outside eci"), "{err}");
        let link = std::env::temp_dir().join(format!("eci-joined-{me}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/proc/{me}/ns/net"), &link).expect("symlink");
        let got = examine(&spec(&link.display().to_string()), vm, &[]);
        let _ = std::fs::remove_file(&link);
        assert!(
            got.expect_err("refused")
                .to_string()
                .contains("runs outside eci")
        );
        // A namespace file pinned by a bind (containerd's CNI network
        // namespaces) is not a process's: left as it was.
        assert_eq!(process_of(&resolved(Path::new("/run/netns/cni-x"))), None);
    }
}
