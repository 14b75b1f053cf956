//! cgroup v2 paths and ids.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the task's cgroup v2,
//! which is the inode number of its directory in the cgroup2 file system.

use std::{
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 file system is mounted (looked in /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error(
        "cannot read {path}: {source} (eci refuses to register a container whose cgroup or mounts it cannot read)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cgroup {0:?} does not exist (looked for {1}); create it first or check the path")]
    NotFound(String, String),
    #[error("cgroup path {0:?} is not valid: {1}")]
    BadPath(String, &'static str),
    #[error("{path} is not a cgroup2 directory")]
    NotCgroup { path: String },
    #[error(
        "the mounts of process {pid} in cgroup {cgroup} could not be read (empty mountinfo), so none could be made immutable; the container is not registered"
    )]
    NoMounts { cgroup: String, pid: String },
}

/// Where cgroup2 is mounted (the last cgroup2 mount in our mount namespace).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    // Asked every second (policy parents, the registry), and the VM's
    // mountinfo grows with every container (its overlay, its binds): read
    // once and kept while the place still holds a cgroup2 (one statfs).
    static FOUND: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut found = FOUND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(mount) = found.as_ref().filter(|m| is_cgroup2(m)) {
        return Ok(mount.clone());
    }
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let mount = parse_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)?;
    *found = Some(mount.clone());
    Ok(mount)
}

/// `statfs` magic of cgroup2.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// The path (below the cgroup2 mount, `/docker/ID`) of the live cgroup
/// with id `id`, found by the kernel (`open_by_handle_at` with cgroupfs'
/// own handle, the id), not by a walk; `None` once the cgroup is removed
/// (ids are never reused).
pub fn live_path_of_id(id: u64) -> Result<Option<String>, CgroupError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mount = cgroup2_mount()?;
    let read_err = |path: &Path, source| CgroupError::Read {
        path: path.display().to_string(),
        source,
    };
    let dir = std::fs::File::open(&mount).map_err(|e| read_err(&mount, e))?;
    // struct file_handle { u32 handle_bytes; int handle_type; u64 id }:
    // kernfs's handle type (FILEID_KERNFS) and its node id, the cgroup id.
    const FILEID_KERNFS: i32 = 0xfe;
    let mut handle = [0u8; 16];
    handle[..4].copy_from_slice(&8u32.to_ne_bytes());
    handle[4..8].copy_from_slice(&FILEID_KERNFS.to_ne_bytes());
    handle[8..].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: the handle buffer is a valid struct file_handle of 8 bytes,
    // the mount fd is open; the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            handle.as_mut_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => Ok(None),
            _ => Err(read_err(&mount, err)),
        };
    }
    // SAFETY: a new fd of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let path = std::fs::read_link(&link).map_err(|e| read_err(&link, e))?;
    Ok(Some(match path.strip_prefix(&mount) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }))
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_MAGIC)
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mounts_of_type(mountinfo, "cgroup2")
        .filter(|(root, _)| *root == "/")
        .map(|(_, point)| PathBuf::from(point))
        .next_back()
}

/// (root, mount point) of each mount of file system `fstype` in `mountinfo`.
fn mounts_of_type<'a>(
    mountinfo: &'a str,
    fstype: &'a str,
) -> impl DoubleEndedIterator<Item = (&'a str, &'a str)> + 'a {
    mountinfo.lines().filter_map(move |line| {
        // `<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ...`
        let (left, right) = line.split_once(" - ")?;
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (right.split_whitespace().next()? == fstype).then_some((root, point))
    })
}

/// The mount points of cgroup v1 hierarchies in our mount namespace (none
/// on a unified, cgroup2-only host).
pub fn v1_hierarchies() -> Result<Vec<String>, CgroupError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    Ok(mounts_of_type(&text, "cgroup")
        .map(|(_, point)| point.to_owned())
        .collect())
}

/// A resolved cgroup: its directory and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub dir: PathBuf,
    pub id: u64,
    /// Path relative to the cgroup2 root, starting with `/`.
    pub path: String,
}

/// Resolve a cgroup given as a path relative to the cgroup2 root
/// (`/docker/<id>`) or as its absolute directory under the mount.
pub fn resolve(spec: &str) -> Result<Cgroup, CgroupError> {
    resolve_under(&cgroup2_mount()?, spec)
}

pub fn resolve_under(mount: &Path, spec: &str) -> Result<Cgroup, CgroupError> {
    if spec.is_empty() {
        return Err(CgroupError::BadPath(spec.into(), "empty"));
    }
    let given = Path::new(spec);
    if given
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(CgroupError::BadPath(spec.into(), "`..` is not allowed"));
    }
    let relative = match given.strip_prefix(mount) {
        Ok(rest) => rest.to_path_buf(),
        Err(_) => given.strip_prefix("/").unwrap_or(given).to_path_buf(),
    };
    let dir = mount.join(&relative);
    let meta = std::fs::metadata(&dir)
        .map_err(|_| CgroupError::NotFound(spec.into(), dir.display().to_string()))?;
    if !meta.is_dir() || !dir.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup {
            path: dir.display().to_string(),
        });
    }
    let path = format!("/{}", relative.display());
    Ok(Cgroup {
        id: meta.ino(),
        dir,
        path,
    })
}

/// The path of the live cgroup with this id ([`live_path_of_id`]: the
/// kernel's lookup, not a walk of the tree); `None` when it is gone or
/// cannot be looked up.
pub fn path_of_id(id: u64) -> Option<String> {
    live_path_of_id(id).ok().flatten()
}

/// The cgroups a policy pattern names: an exact path, or a path whose last
/// segment holds `*` wildcards. Missing cgroups yield nothing.
pub fn expand(pattern: &str) -> Vec<Cgroup> {
    let Ok(mount) = cgroup2_mount() else {
        return Vec::new();
    };
    let (parent, last) = match pattern.rsplit_once('/') {
        Some((parent, last)) => (parent, last),
        None => return Vec::new(),
    };
    if !last.contains('*') {
        return resolve_under(&mount, pattern).into_iter().collect();
    }
    let dir = mount.join(parent.trim_start_matches('/'));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<Cgroup> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| glob_match(last, name))
        .filter_map(|name| resolve_under(&mount, &format!("{parent}/{name}")).ok())
        .collect();
    found.sort_by_key(|c| c.id);
    found
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first)
        || !name[first.len()..].ends_with(last)
        || name.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Mount ids in the mount namespace of the first process of a cgroup: the
/// mounts a container starts with (none for a cgroup with no process yet).
/// Fails closed: a cgroup whose processes or mounts cannot be read is an
/// error (registered, its container would have no immutable mount).
pub fn initial_mount_ids(cgroup: &Cgroup) -> Result<Vec<u32>, CgroupError> {
    let procs = read(&cgroup.dir.join("cgroup.procs"))?;
    let Some(pid) = procs.lines().next() else {
        return Ok(Vec::new());
    };
    let mountinfo = read(Path::new(&format!("/proc/{pid}/mountinfo")))?;
    let ids = mount_ids(&mountinfo);
    if ids.is_empty() {
        return Err(CgroupError::NoMounts {
            cgroup: cgroup.path.clone(),
            pid: pid.to_owned(),
        });
    }
    Ok(ids)
}

/// The mount ids (first field) of mountinfo's lines.
fn mount_ids(mountinfo: &str) -> Vec<u32> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The cgroup2 path of a process (`0::<path>` in /proc/<pid>/cgroup).
pub fn cgroup_of(pid: &str) -> Result<String, CgroupError> {
    let file = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&file).map_err(|source| CgroupError::Read {
        path: file.clone(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or(CgroupError::NoCgroup2)
}

/// The agent's own cgroup is unknown: it could not keep itself out of the
/// protected cgroups.
#[derive(Debug, thiserror::Error)]
#[error(
    "eci-agent cannot tell its own cgroup ({0}), so it cannot keep itself out of the protected cgroups; not starting. Run it with /proc mounted and cgroup2 in use"
)]
pub struct OwnCgroupUnknown(#[source] CgroupError);

/// The cgroup of the agent's process `pid` (`self`), which it must never
/// protect. Fails closed: unknown is an error, never `/`.
pub fn own_cgroup(pid: &str) -> Result<String, OwnCgroupUnknown> {
    cgroup_of(pid).map_err(OwnCgroupUnknown)
}

/// The agent runs in a cgroup namespace of its own and cannot join the
/// node's.
#[derive(Debug, thiserror::Error)]
#[error(
    "eci-agent runs in a cgroup namespace of its own (a container's: Docker's and Kubernetes' default on cgroup v2), where neither its own cgroup nor the containers' are the node's paths, and it cannot join the node's (that of pid 1, /proc/1/ns/cgroup): {0}. Run it privileged with the node's pids (`hostPID: true` and `privileged: true`, as deploy/kubernetes/daemonset.yaml does; `docker run --privileged --pid=host`) or in the node's cgroup namespace (`docker run --cgroupns=host`)"
)]
pub struct NodeCgroupNamespace(#[source] std::io::Error);

/// In a container with a cgroup namespace of its own, the agent sees its
/// cgroup as `/` and the node's cgroup2 (bound in) as a mount of another
/// namespace's root: it would find no cgroup2 mount, and could not keep
/// itself out of the protected cgroups. Where pid 1 is in another cgroup
/// namespace (the node's init, with the node's pids in view), the agent
/// joins that one; call it before any thread starts (a namespace is a
/// thread's, and threads inherit it). Returns whether it joined; nothing
/// changes where the namespaces are the same or pid 1's cannot be seen.
pub fn join_node_cgroup_namespace() -> Result<bool, NodeCgroupNamespace> {
    let identity = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    let (Ok(own), Ok(node)) = (
        identity("/proc/self/ns/cgroup"),
        identity("/proc/1/ns/cgroup"),
    ) else {
        return Ok(false);
    };
    if own == node {
        return Ok(false);
    }
    let file = std::fs::File::open("/proc/1/ns/cgroup").map_err(NodeCgroupNamespace)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| NodeCgroupNamespace(e.into()))?;
    Ok(true)
}

/// True when `inner` is `outer` or below it (cgroup2 paths relative to the root).
pub fn is_same_or_below(inner: &str, outer: &str) -> bool {
    let outer = outer.trim_end_matches('/');
    outer.is_empty()
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_read_once_and_kept_while_it_is_one() {
        let Ok(first) = cgroup2_mount() else {
            println!(
                "SKIP: the_cgroup2_mount_is_read_once_and_kept_while_it_is_one: no cgroup2 here"
            );
            return;
        };
        assert!(is_cgroup2(&first), "{}", first.display());
        assert_eq!(cgroup2_mount().unwrap(), first);
        assert!(!is_cgroup2(Path::new("/proc")));
    }

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let text = "\
24 30 0:22 / /sys rw - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
36 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("24 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn nested_cgroup2_bind_mounts_are_not_the_root() {
        let text = "35 24 0:30 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(text), None);
    }

    #[test]
    fn resolves_relative_and_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("docker/abc");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "").unwrap();
        let by_rel = resolve_under(dir.path(), "/docker/abc").unwrap();
        let by_abs = resolve_under(dir.path(), cg.to_str().unwrap()).unwrap();
        assert_eq!(by_rel, by_abs);
        assert_eq!(by_rel.path, "/docker/abc");
        assert_eq!(by_rel.id, std::fs::metadata(&cg).unwrap().ino());
    }

    #[test]
    fn missing_and_sneaky_paths_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_under(dir.path(), "/nope").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = resolve_under(dir.path(), "/a/../..")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`..`"), "{err}");
        std::fs::create_dir(dir.path().join("plain")).unwrap();
        let err = resolve_under(dir.path(), "/plain").unwrap_err().to_string();
        assert!(err.contains("not a cgroup2"), "{err}");
    }

    #[test]
    fn registration_is_refused_when_the_cgroups_processes_or_mounts_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("docker/abc");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "").unwrap();
        let cgroup = resolve_under(dir.path(), "/docker/abc").unwrap();
        // No process yet: no mount of its own to record.
        assert_eq!(initial_mount_ids(&cgroup).unwrap(), Vec::<u32>::new());
        // A process whose mounts cannot be read.
        std::fs::write(cg.join("cgroup.procs"), "999999999\n").unwrap();
        let err = initial_mount_ids(&cgroup).unwrap_err().to_string();
        assert!(err.contains("/proc/999999999/mountinfo"), "{err}");
        assert!(err.contains("refuses to register"), "{err}");
        // cgroup.procs itself unreadable.
        std::fs::remove_file(cg.join("cgroup.procs")).unwrap();
        let err = initial_mount_ids(&cgroup).unwrap_err().to_string();
        assert!(err.contains("cgroup.procs"), "{err}");
        // A live process: its mounts.
        std::fs::write(cg.join("cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        assert!(!initial_mount_ids(&cgroup).unwrap().is_empty());
    }

    #[test]
    fn in_the_node_s_cgroup_namespace_nothing_is_joined() {
        let same = std::fs::metadata("/proc/self/ns/cgroup")
            .and_then(|own| {
                std::fs::metadata("/proc/1/ns/cgroup").map(|one| own.ino() == one.ino())
            })
            .unwrap_or(false);
        if !same {
            println!(
                "SKIP: in_the_node_s_cgroup_namespace_nothing_is_joined: this test runs in a cgroup namespace of its own"
            );
            return;
        }
        assert!(!join_node_cgroup_namespace().unwrap());
    }

    #[test]
    fn an_unknown_own_cgroup_is_an_error_not_the_root() {
        assert!(own_cgroup("self").unwrap().starts_with('/'));
        let err = own_cgroup("999999999").unwrap_err().to_string();
        assert!(err.contains("/proc/999999999/cgroup"), "{err}");
        assert!(err.contains("not starting"), "{err}");
    }

    #[test]
    fn globs_match_the_last_segment() {
        assert!(glob_match("docker-*.scope", "docker-abc.scope"));
        assert!(!glob_match("docker-*.scope", "docker-abc.service"));
        assert!(!glob_match("docker-*.scope", "docker.scope"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(glob_match("docker", "docker"));
    }

    #[test]
    fn ancestry() {
        assert!(is_same_or_below("/docker/abc", "/docker"));
        assert!(is_same_or_below("/docker", "/docker"));
        assert!(!is_same_or_below("/dockerx", "/docker"));
        assert!(is_same_or_below("/anything", "/"));
    }
}
