//! Making the container's files reachable from inside its user namespace.
//!
//! Docker keeps the rootfs and the container's files under /var/lib/docker,
//! whose directories are 0710 root: the container's mapped root cannot even
//! traverse them. eci-runc binds each of them under a private, traversable
//! directory (`/run/eci-runc/<id>/`) and points the spec there. Bind sources
//! (volumes, hosts, resolv.conf, shareable paths) are bound *ID-mapped* with
//! the container's user namespace, so a file owned by 0 on the VM side is
//! owned by the container's root inside, and what the container writes is
//! owned by 0..65535 on the VM side again: a volume stays usable by the next
//! container whatever its range. Where the file system cannot be ID-mapped
//! (overlayfs, tmpfs before 6.3) the bind is plain and the note says so.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
};

use eci_views::source::mountinfo_unescape;

#[derive(Debug, thiserror::Error)]
pub enum RelocateError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("making the user namespace for ID-mapped mounts: {0}")]
    UserNamespace(std::io::Error),
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub fn run_dir() -> PathBuf {
    std::env::var_os("ECI_RUNC_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/eci-runc".into())
}

pub fn container_dir(container_id: &str) -> PathBuf {
    run_dir().join(container_id)
}

/// Create the container's private directory (and the run directory), both
/// 0711: traversable by the container's root, listable by nobody else.
pub fn prepare_container_dir(container_id: &str) -> Result<PathBuf, RelocateError> {
    let dir = container_dir(container_id);
    for d in [run_dir(), dir.clone()] {
        let io = |source| RelocateError::Io {
            what: "creating",
            path: d.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&d).map_err(io)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
    }
    Ok(dir)
}

fn cstr(path: &Path) -> Result<CString, RelocateError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| RelocateError::Io {
        what: "path with a NUL byte",
        path: path.display().to_string(),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// The error of `what` on `path`, for `map_err`.
fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RelocateError {
    let path = path.display().to_string();
    move |source| RelocateError::Io { what, path, source }
}

/// `open(2)` of `path` with `flags` (and `O_CLOEXEC`); `what` names a failure.
fn open_fd(path: &Path, flags: libc::c_int, what: &'static str) -> Result<OwnedFd, RelocateError> {
    let c = cstr(path)?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io_error(what, path)(std::io::Error::last_os_error()));
    }
    // SAFETY: open returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A user namespace with `0 <base> 65536` for uids and gids, held by an fd.
pub fn user_namespace(base: u32) -> Result<OwnedFd, RelocateError> {
    user_namespace_mapping(&format!("0 {base} 65536\n"))
}

/// The ID mapping of a container's upper layer seen from the VM: on-disk
/// ids 0–65535 are the container's (`<base>` upward, as
/// [`user_namespace`]), and on-disk 65536 is the VM's root, the overlay's
/// mounter, for what overlayfs makes with its mounter's ids (its work
/// directory, whiteouts). Held by an fd.
pub fn upper_user_namespace(base: u32) -> Result<OwnedFd, RelocateError> {
    user_namespace_mapping(&format!("0 {base} 65536\n65536 0 1\n"))
}

/// A user namespace with `map` (uid_map and gid_map lines), held by an fd.
/// A forked child (no exec) makes it and waits to be killed; its maps are
/// written from here, then the namespace is held by its fd alone.
fn user_namespace_mapping(map: &str) -> Result<OwnedFd, RelocateError> {
    let holder = NamespaceHolder::fork()?;
    let pid = holder.pid;
    (|| {
        std::fs::write(format!("/proc/{pid}/uid_map"), map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map)?;
        let file = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok::<OwnedFd, std::io::Error>(file.into())
    })()
    .map_err(RelocateError::UserNamespace)
}

/// A child in a user namespace of its own, killed and reaped on drop.
struct NamespaceHolder {
    pid: libc::pid_t,
}

impl NamespaceHolder {
    /// Fork; the child unshares its user namespace, says whether that
    /// worked through a pipe and waits. Returns once it has said so.
    fn fork() -> Result<Self, RelocateError> {
        let error = |e| RelocateError::UserNamespace(e);
        let mut fds = [0; 2];
        // SAFETY: a two-int array for pipe2.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(error(std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned two new fds that nothing else owns.
        let (ready_r, ready_w) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child calls only async-signal-safe functions (prctl,
        // unshare, write, pause) until it is killed, so forking a process
        // with other threads is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(error(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: async-signal-safe calls only; the child never returns.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                libc::write(ready_w.as_raw_fd(), (&raw const ok).cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        let holder = NamespaceHolder { pid };
        drop(ready_w);
        let mut ok = 0u8;
        // SAFETY: reading one byte into a local.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), (&raw mut ok).cast(), 1) };
        match (n, ok) {
            (1, 1) => Ok(holder),
            (1, _) => Err(error(std::io::Error::other(
                "the kernel refused a new user namespace (unshare(CLONE_NEWUSER))",
            ))),
            _ => Err(error(std::io::Error::last_os_error())),
        }
    }
}

impl Drop for NamespaceHolder {
    fn drop(&mut self) {
        // SAFETY: our own child, reaped here once.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Bind `source` onto `target` (created as a file or directory to match),
/// with the mounts below it when `recursive` (`rbind`), ID-mapped with
/// `userns` when given and supported. Returns whether the bind is ID-mapped.
pub fn bind(
    source: &Path,
    target: &Path,
    userns: Option<&OwnedFd>,
    recursive: bool,
) -> Result<bool, RelocateError> {
    let fd = open_fd(source, libc::O_PATH, "open")?;
    bind_from(&fd, source, target, userns, recursive)
}

/// [`bind`] from an open descriptor of the source (`O_PATH` is enough), so
/// what is bound is what was opened, not what the path names now; `source`
/// names it in errors.
pub fn bind_from(
    source_fd: &OwnedFd,
    source: &Path,
    target: &Path,
    userns: Option<&OwnedFd>,
    recursive: bool,
) -> Result<bool, RelocateError> {
    let how = match userns {
        Some(ns) => Attrs::IdMapIfPossible(ns),
        None => Attrs::None,
    };
    clone_tree_to(source_fd, source, target, how, recursive)
}

/// [`bind_from`] for a harmless VM file: not ID-mapped, and read-only,
/// `nosuid` and `nodev` as a whole (mounts below included) before it is
/// moved into place, so the container's mount namespace inherits the flags
/// locked. A failure to set them is an error, not a plainer bind.
pub fn bind_read_only_from(
    source_fd: &OwnedFd,
    source: &Path,
    target: &Path,
    recursive: bool,
) -> Result<(), RelocateError> {
    clone_tree_to(source_fd, source, target, Attrs::ReadOnly, recursive).map(|_| ())
}

/// What [`clone_tree_to`] sets on the cloned tree.
enum Attrs<'a> {
    None,
    /// ID-mapped by this user namespace where the file system allows it.
    IdMapIfPossible(&'a OwnedFd),
    /// Read-only, nosuid, nodev, or the bind fails.
    ReadOnly,
}

fn clone_tree_to(
    source_fd: &OwnedFd,
    source: &Path,
    target: &Path,
    attrs: Attrs<'_>,
    recursive: bool,
) -> Result<bool, RelocateError> {
    let meta = nix::sys::stat::fstat(source_fd.as_raw_fd())
        .map_err(|e| io_error("stat", source)(std::io::Error::from(e)))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
    }
    if meta.st_mode & libc::S_IFMT == libc::S_IFDIR {
        std::fs::create_dir_all(target).map_err(io_error("creating", target))?;
    } else if !target.exists() {
        std::fs::write(target, b"").map_err(io_error("creating", target))?;
    }
    let empty = CString::default();
    // SAFETY: plain syscalls with a valid fd and C string; the returned fd
    // is owned.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source_fd.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::O_CLOEXEC as libc::c_uint
                | if recursive {
                    libc::AT_RECURSIVE as libc::c_uint
                } else {
                    0
                },
        )
    };
    if tree < 0 {
        return Err(io_error("open_tree", source)(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let setattr = |attr: MountAttr| {
        let empty = CString::default();
        // SAFETY: attr is a valid mount_attr of the size passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 },
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        rc == 0
    };
    let mut idmapped = false;
    match attrs {
        Attrs::None => {}
        Attrs::IdMapIfPossible(ns) => {
            idmapped = setattr(MountAttr {
                attr_set: MOUNT_ATTR_IDMAP,
                attr_clr: 0,
                propagation: 0,
                userns_fd: ns.as_raw_fd() as u64,
            });
        }
        Attrs::ReadOnly => {
            let set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
            if !setattr(MountAttr {
                attr_set: set,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            }) {
                return Err(io_error("making read-only, nosuid and nodev", source)(
                    std::io::Error::last_os_error(),
                ));
            }
        }
    }
    let dst = cstr(target)?;
    let empty = CString::default();
    // SAFETY: valid fds and C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io_error("move_mount onto", target)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(idmapped)
}

/// Mount each symlink of `links` — the symlink itself, not what it points
/// to — over its target in the mount namespace of the container whose init
/// is `pid`: an open of the target then follows the symlink, resolved in
/// the container. Targets are taken below `under` in that namespace (`/`
/// once the init has pivoted into its root, the root's path before). A
/// target the container does not have (no /sys mounted) is skipped; the
/// rest fail with the target named.
pub fn mount_symlinks_in(
    pid: u32,
    under: &Path,
    links: &[(&str, PathBuf)],
) -> Result<(), RelocateError> {
    let mut trees = Vec::new();
    for (target, link) in links {
        let c_link = cstr(link)?;
        // SAFETY: a valid C string; the returned fd is owned.
        let tree = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c_link.as_ptr(),
                OPEN_TREE_CLONE
                    | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint
                    | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if tree < 0 {
            return Err(io_error("open_tree", link)(std::io::Error::last_os_error()));
        }
        let below = under.join(target.trim_start_matches('/'));
        let relative = below.strip_prefix("/").unwrap_or(&below);
        // SAFETY: open_tree returned a new fd that nothing else owns.
        let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
        trees.push((tree, Path::new(*target), cstr(relative)?));
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let namespace = open_fd(&proc_dir.join("ns/mnt"), libc::O_RDONLY, "opening")?;
    let root = open_fd(
        &proc_dir.join("root"),
        libc::O_PATH | libc::O_DIRECTORY,
        "opening",
    )?;
    // A thread of its own joins the container's mount namespace (the
    // process keeps its own), once it no longer shares its file system
    // state: setns(CLONE_NEWNS) refuses a thread that does.
    let moved = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), (Option<&Path>, nix::errno::Errno)> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(|e| (None, e))?;
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(|e| (None, e))?;
            for (tree, target, relative) in &trees {
                // SAFETY: valid fds and C strings.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_move_mount,
                        tree.as_raw_fd(),
                        c"".as_ptr(),
                        root.as_raw_fd(),
                        relative.as_ptr(),
                        MOVE_MOUNT_F_EMPTY_PATH,
                    )
                };
                let errno = nix::errno::Errno::last();
                if rc != 0 && errno != nix::errno::Errno::ENOENT {
                    return Err((Some(*target), errno));
                }
            }
            Ok(())
        })
        .join()
    });
    match moved {
        Ok(Ok(())) => Ok(()),
        Ok(Err((Some(target), errno))) => Err(
            io_error("mounting the view's symlink over", target)(errno.into()),
        ),
        Ok(Err((None, errno))) => Err(io_error("entering the mount namespace of", &proc_dir)(
            errno.into(),
        )),
        Err(_) => Err(io_error("entering the mount namespace of", &proc_dir)(
            std::io::Error::other("the mounting thread panicked"),
        )),
    }
}

/// Unmount everything under the container's directory and remove it.
pub fn cleanup(container_id: &str) {
    let dir = container_dir(container_id);
    unmount_below(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Unmount every mount at or below `dir` (deepest first), lazily.
pub fn unmount_below(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(4)
                .map(|p| PathBuf::from(mountinfo_unescape(p)))
        })
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Ok(c) = cstr(&p) {
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Create the mount points a spec needs inside the rootfs, as the VM's root:
/// inside its user namespace the container's root does not own the image's
/// directories, so runc could not make them. Symlinks in the way are left
/// alone (runc resolves them safely, or fails).
pub fn create_mount_points(
    rootfs: &Path,
    destinations: &[(PathBuf, bool)],
) -> Result<(), RelocateError> {
    for (destination, is_file) in destinations {
        let mut current = rootfs.to_path_buf();
        let parts: Vec<_> = destination
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        for (i, part) in parts.iter().enumerate() {
            current.push(part);
            match std::fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => break,
                Ok(_) => continue,
                Err(_) => {
                    let last = i + 1 == parts.len();
                    let result = if last && *is_file {
                        std::fs::write(&current, b"")
                    } else {
                        std::fs::create_dir(&current)
                    };
                    result.map_err(|source| RelocateError::Io {
                        what: "creating the mount point",
                        path: current.display().to_string(),
                        source,
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// A container that joins a namespace it did not make cannot mount that
/// namespace's kernel file system from its own user namespace: sysfs wants
/// `CAP_SYS_ADMIN` over the owner of the network namespace, mqueue over the
/// owner of the IPC namespace. A Kubernetes pod's containers join the pod's
/// network namespace (made by containerd, for CNI: owned by the VM's user
/// namespace) and the sandbox container's IPC namespace (owned by the
/// sandbox's user namespace, not theirs), so runc fails their start with
/// EPERM. eci-runc mounts such a file system itself, from a thread that
/// joined the namespace (so the instance is that namespace's), with the
/// mount's own flags, in the container's private directory; the spec binds
/// it where the mount was. Returns notes for what it did. The namespace
/// paths have been checked (none is the VM's) before this runs.
pub fn kernel_mounts_for_joined_namespaces(
    oci: &mut oci_spec::runtime::Spec,
    container_dir: &Path,
) -> Result<Vec<String>, RelocateError> {
    use nix::sched::CloneFlags;
    use oci_spec::runtime::LinuxNamespaceType;
    let joined = |kind: LinuxNamespaceType| {
        oci.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n.typ() == kind)
                    .and_then(|n| n.path().clone())
            })
    };
    let wanted = [
        (
            "sysfs",
            joined(LinuxNamespaceType::Network),
            CloneFlags::CLONE_NEWNET,
        ),
        (
            "mqueue",
            joined(LinuxNamespaceType::Ipc),
            CloneFlags::CLONE_NEWIPC,
        ),
    ];
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    let mut notes = Vec::new();
    for (fstype, namespace, flag) in wanted {
        let Some(namespace) = namespace else { continue };
        let Some(mount) = mounts
            .iter_mut()
            .find(|m| m.typ().as_deref() == Some(fstype))
        else {
            continue;
        };
        let options = mount.options().clone().unwrap_or_default();
        let target = container_dir.join(fstype);
        mount_in_namespace(fstype, &namespace, flag, &options, &target)?;
        let destination = mount.destination().display().to_string();
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(target));
        let mut bind_options = vec!["rbind".to_owned()];
        bind_options.extend(options.into_iter().filter(|o| o != "bind" && o != "rbind"));
        mount.set_options(Some(bind_options));
        notes.push(format!(
            "{destination}: the {fstype} of the joined namespace {} (mounted by eci-runc: the container's user namespace does not own it)",
            namespace.display()
        ));
    }
    oci.set_mounts(Some(mounts));
    Ok(notes)
}

/// The `net.*` sysctls of a container that joins a network namespace its
/// user namespace does not own (a Kubernetes pod's; containerd 2 asks
/// `net.ipv4.ip_unprivileged_port_start` and `net.ipv4.ping_group_range`
/// for every sandbox): runc writes them from inside the container's user
/// namespace, which the kernel refuses (EACCES). eci-runc writes them
/// itself, from a thread that joined the network namespace, and takes them
/// out of the spec. `ping_group_range` is in the container's ids (clamped
/// to its range by `spec::rewrite`): written from the VM's user namespace
/// it is shifted by `base`. Returns notes for what it wrote.
pub fn net_sysctls_for_joined_network_namespace(
    oci: &mut oci_spec::runtime::Spec,
    base: u32,
) -> Result<Vec<String>, RelocateError> {
    use oci_spec::runtime::LinuxNamespaceType;
    let Some(mut linux) = oci.linux().clone() else {
        return Ok(Vec::new());
    };
    let Some(netns) = linux.namespaces().as_ref().and_then(|ns| {
        ns.iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .and_then(|n| n.path().clone())
    }) else {
        return Ok(Vec::new());
    };
    let mut sysctls = linux.sysctl().clone().unwrap_or_default();
    let mut net: Vec<(String, String)> = sysctls
        .iter()
        .filter(|(k, _)| k.starts_with("net."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if net.is_empty() {
        return Ok(Vec::new());
    }
    for (key, value) in &mut net {
        if key == "net.ipv4.ping_group_range" {
            let shifted: Vec<String> = value
                .split_whitespace()
                .map(|v| {
                    v.parse::<u64>()
                        .map(|v| (v + u64::from(base)).to_string())
                        .unwrap_or_else(|_| v.to_owned())
                })
                .collect();
            *value = shifted.join(" ");
        }
    }
    let file = std::fs::File::open(&netns).map_err(|source| RelocateError::Io {
        what: "opening the network namespace",
        path: netns.display().to_string(),
        source,
    })?;
    let written = std::thread::scope(|s| {
        s.spawn(|| {
            // This thread only: /proc/sys/net is the opener's namespace's.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| (netns.display().to_string(), std::io::Error::from(e)))?;
            for (key, value) in &net {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value).map_err(|e| (format!("{path} = {value}"), e))?;
            }
            Ok::<(), (String, std::io::Error)>(())
        })
        .join()
    });
    match written {
        Ok(Ok(())) => {}
        Ok(Err((path, source))) => {
            return Err(RelocateError::Io {
                what: "writing a sysctl of the joined network namespace",
                path,
                source,
            });
        }
        Err(_) => {
            return Err(RelocateError::Io {
                what: "writing the sysctls of the joined network namespace",
                path: netns.display().to_string(),
                source: std::io::Error::other("the writing thread panicked"),
            });
        }
    }
    for (key, _) in &net {
        sysctls.remove(key);
    }
    linux.set_sysctl(Some(sysctls));
    oci.set_linux(Some(linux));
    Ok(net
        .into_iter()
        .map(|(k, v)| {
            format!(
                "{k} = {v:?} written by eci-runc in the joined network namespace {}",
                netns.display()
            )
        })
        .collect())
}

/// Mount `fstype` at `target` (created) from a thread that joined the
/// namespace at `namespace`, with the flags among `options`.
fn mount_in_namespace(
    fstype: &str,
    namespace: &Path,
    kind: nix::sched::CloneFlags,
    options: &[String],
    target: &Path,
) -> Result<(), RelocateError> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    for option in options {
        flags |= match option.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            _ => MsFlags::empty(),
        };
    }
    std::fs::create_dir_all(target).map_err(io_error("creating", target))?;
    let file =
        std::fs::File::open(namespace).map_err(io_error("opening the namespace", namespace))?;
    let mounted = std::thread::scope(|s| {
        s.spawn(|| {
            // This thread only: the process keeps its own namespaces.
            nix::sched::setns(&file, kind)?;
            nix::mount::mount(Some(fstype), target, Some(fstype), flags, None::<&str>)
        })
        .join()
    });
    let failed = |source| RelocateError::Io {
        what: "mounting the kernel file system of a joined namespace",
        path: format!(
            "{fstype} of {} at {}",
            namespace.display(),
            target.display()
        ),
        source,
    };
    match mounted {
        Ok(Ok(())) => Ok(()),
        Ok(Err(errno)) => Err(failed(std::io::Error::from(errno))),
        Err(_) => Err(failed(std::io::Error::other(
            "the mounting thread panicked",
        ))),
    }
}

/// The options that keep the flags of the mount at `target` which a
/// container's mount namespace inherits *locked*: its mounts come from a
/// more privileged mount namespace, so the kernel refuses a remount that
/// would clear `nosuid`, `nodev`, `noexec`, `ro` or change the atime mode
/// (EPERM). runc remounts a bind with only the options the spec names
/// (before runc 1.1.10), so a bind whose source has more — containerd's
/// CRI plugin binds a pod's `/dev/shm`, a `nosuid,nodev,noexec` tmpfs,
/// with `rbind,ro` — fails the start unless the spec names them too.
pub fn locked_flag_options(target: &Path) -> Result<Vec<&'static str>, RelocateError> {
    use nix::sys::statvfs::FsFlags;
    let flags = nix::sys::statvfs::statvfs(target)
        .map_err(|e| RelocateError::Io {
            what: "reading the mount flags of",
            path: target.display().to_string(),
            source: std::io::Error::from(e),
        })?
        .flags();
    Ok([
        (FsFlags::ST_RDONLY, "ro"),
        (FsFlags::ST_NOSUID, "nosuid"),
        (FsFlags::ST_NODEV, "nodev"),
        (FsFlags::ST_NOEXEC, "noexec"),
        (FsFlags::ST_NOATIME, "noatime"),
        (FsFlags::ST_NODIRATIME, "nodiratime"),
    ]
    .into_iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .map(|(_, option)| option)
    .collect())
}

/// `options` with `locked` added where missing (`ro` replaces `rw`).
pub fn with_locked_options(options: &[String], locked: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = options
        .iter()
        .filter(|o| !(o.as_str() == "rw" && locked.contains(&"ro")))
        .cloned()
        .collect();
    for option in locked {
        if !out.iter().any(|o| o == option) {
            out.push((*option).to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_flags_are_added_to_a_binds_options() {
        let options: Vec<String> = ["rbind", "rw"].map(String::from).into();
        assert_eq!(
            with_locked_options(&options, &["ro", "nosuid", "nodev", "noexec"]),
            ["rbind", "ro", "nosuid", "nodev", "noexec"]
        );
        let options: Vec<String> = ["rbind", "ro", "nosuid"].map(String::from).into();
        assert_eq!(
            with_locked_options(&options, &["nosuid", "nodev"]),
            ["rbind", "ro", "nosuid", "nodev"]
        );
        assert_eq!(with_locked_options(&options, &[]), options);
    }

    #[test]
    fn the_flags_of_a_mount_are_read_as_mountinfo_shows_them() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let options = mountinfo
            .lines()
            .rfind(|l| l.split_whitespace().nth(4) == Some("/proc"))
            .and_then(|l| l.split_whitespace().nth(5))
            .unwrap()
            .to_owned();
        let locked = locked_flag_options(Path::new("/proc")).unwrap();
        for flag in ["ro", "nosuid", "nodev", "noexec", "noatime"] {
            assert_eq!(
                locked.contains(&flag),
                options.split(',').any(|o| o == flag),
                "{flag}: {locked:?} / {options}"
            );
        }
    }
}
