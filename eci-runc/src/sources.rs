//! Bind sources judged by what they are, not by how they are spelled.
//!
//! A path below the engine's volume directory can be anything the engine
//! (or a volume driver's options) mounted there: a bind of the VM's `/etc`,
//! `/run` or `/proc`, or a file system on a VM block device. So every bind
//! source eci-runc lets into a container is opened (`O_PATH`, symlinks
//! followed) and resolved to its *mount*: the mount id (`statx`
//! `STATX_MNT_ID`, else `/proc/self/fdinfo/<fd>`), the file system magic
//! (`fstatfs`), the device (`st_dev`) and the mountinfo line of that mount.
//! It is allowed only when
//!
//! - it is on the **same mount** as a directory that allows it (the bundle,
//!   the rootfs, the engine's directories, a shareable host path, the proxy
//!   socket, the container's /proc views) and below that directory, or
//! - it is on a **fresh tmpfs** mounted below such a directory: tmpfs magic
//!   and type, mount root `/`, and a device no other mount in the table
//!   shows (a bind of the VM's `/run` or `/dev/shm` is not one).
//!
//! - it is one of a few **harmless VM files, read-only**: the VM's time
//!   zone (`/etc/localtime`, `/etc/timezone`, `/usr/share/zoneinfo`), the
//!   kernel's modules (`/lib/modules`, as kind binds them) and the engine's
//!   init binary (`docker run --init`), each known by the path the kernel
//!   resolved the source to (or, for the init binary, by its inode), root's
//!   and readable by every VM user already, never setuid or setgid. The
//!   bind asks for `ro`, and eci-runc makes it read-only, `nosuid` and
//!   `nodev` itself, mounts below included (locked in the container's mount
//!   namespace), without ID-mapping: the container's root owns none of it.
//!
//! For a recursive bind every mount below the source is judged the same way.
//! Anything that cannot be judged (no mountinfo, a failing `statx` or
//! `fstatfs`) is refused with the reason. The descriptor that was judged is
//! kept ([`Vetted`]) and the bind is made from it (`relocate::bind_from`),
//! so the path is not resolved a second time.
//!
//! [`judge`] is a pure function of parsed mountinfo and the source's facts;
//! [`vet`] gathers those facts for a spec's binds.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use eci_views::source::mountinfo_unescape;
use oci_spec::runtime::{Mount, Spec};

use crate::spec::{self, Context, Refusal};

/// Why the facts of a source (or the mount table) could not be had: the
/// source is then refused with this reason (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("statx of {path}: {reason}")]
    Statx { path: String, reason: String },
    #[error("fstatfs of {path}: {reason}")]
    Statfs { path: String, reason: String },
    #[error(
        "no mount id for {path}: statx gave no STATX_MNT_ID and /proc/self/fdinfo has none ({reason})"
    )]
    MountId { path: String, reason: String },
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountinfoRead(String),
    #[error("/proc/self/mountinfo, line {line}: cannot parse {text:?}")]
    MountinfoParse { line: usize, text: String },
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    /// major, minor
    pub dev: (u32, u32),
    /// The path inside the file system that is mounted (`/` unless a bind).
    pub root: PathBuf,
    pub point: PathBuf,
    pub fstype: String,
    /// What was mounted (a device, `tmpfs`, `proc`...).
    pub source: String,
}

/// Parse the text of `/proc/<pid>/mountinfo`; a line that does not parse
/// makes the whole table unusable (it could be the line that matters).
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, FactsError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            parse_line(line).ok_or_else(|| FactsError::MountinfoParse {
                line: n + 1,
                text: line.to_owned(),
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (before, after) = line.split_once(" - ")?;
    let before: Vec<&str> = before.split_whitespace().collect();
    let mut after = after.split_whitespace();
    let (major, minor) = before.get(2)?.split_once(':')?;
    Some(MountEntry {
        id: before.first()?.parse().ok()?,
        parent: before.get(1)?.parse().ok()?,
        dev: (major.parse().ok()?, minor.parse().ok()?),
        root: PathBuf::from(mountinfo_unescape(before.get(3)?)),
        point: PathBuf::from(mountinfo_unescape(before.get(4)?)),
        fstype: after.next()?.to_owned(),
        source: mountinfo_unescape(after.next()?),
    })
}

/// What the kernel says a source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFacts {
    /// The path it really has (`/proc/self/fd/<fd>`), symlinks resolved.
    pub path: PathBuf,
    pub mnt_id: u64,
    /// `fstatfs` `f_type`.
    pub magic: u64,
    /// `st_dev` (major, minor).
    pub dev: (u32, u32),
    pub ino: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
}

/// A directory that allows sources on its own mount, by its real path and
/// the mount it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowingDir {
    pub path: PathBuf,
    pub mnt_id: u64,
    /// The engine's layer storage (a BuildKit step's): an overlay the
    /// engine mounted of its layers below it is let in, read-only.
    pub layers: bool,
}

/// Why a source was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowance {
    /// On the same mount as `dir`.
    SameMount { dir: PathBuf },
    /// On a fresh tmpfs mounted at `point`, below `dir`.
    FreshTmpfs { dir: PathBuf, point: PathBuf },
    /// A harmless VM file (`what` names it), bound read-only.
    HarmlessReadOnly { what: &'static str },
    /// An overlay of the engine's layers mounted at `point`, below the
    /// engine's layer storage `dir`; bound as an ID-mapped read-only view
    /// of the same layers.
    EngineLayers { dir: PathBuf, point: PathBuf },
}

/// What a refused mount really is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A kernel file system (proc, sysfs, debugfs...); `of` is the VM path
    /// it is a bind of, when one is mounted elsewhere.
    Kernel { fstype: String, of: Option<PathBuf> },
    /// A file system on a block device.
    BlockDevice {
        fstype: String,
        device: String,
        dev: (u32, u32),
        /// The VM path it is a bind of, when the mount is a bind.
        of: Option<PathBuf>,
        /// The device is the one the VM's `/` is on.
        vm_root: bool,
    },
    /// A bind of a VM path (mount root not `/`, or a device that is
    /// mounted elsewhere too).
    VmBind {
        fstype: String,
        dev: (u32, u32),
        of: PathBuf,
    },
    /// A mount that is none of the above and not a fresh tmpfs (fuse, nfs,
    /// overlay...).
    Other { fstype: String, device: String },
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dev = |(major, minor): &(u32, u32)| format!("{major}:{minor}");
        match self {
            What::Kernel { fstype, of: None } => {
                write!(f, "{fstype}, a kernel file system of the VM")
            }
            What::Kernel {
                fstype,
                of: Some(of),
            } => write!(
                f,
                "a bind of the VM's {} ({fstype}, a kernel file system)",
                of.display()
            ),
            What::BlockDevice {
                fstype,
                device,
                dev: d,
                of,
                vm_root,
            } => {
                let fs = format!("{fstype} on block device {} ({device})", dev(d));
                match (of, vm_root) {
                    (Some(of), true) => write!(
                        f,
                        "a bind of {} on the VM's root file system ({fs})",
                        of.display()
                    ),
                    (Some(of), false) => write!(f, "a bind of the VM's {} ({fs})", of.display()),
                    (None, true) => write!(f, "the VM's root file system ({fs})"),
                    (None, false) => write!(f, "{fs}"),
                }
            }
            What::VmBind { fstype, dev: d, of } => write!(
                f,
                "a bind of the VM's {} ({fstype}, device {}), not a file system of its own",
                of.display(),
                dev(d)
            ),
            What::Other { fstype, device } => {
                write!(f, "a mount of {device:?} ({fstype}), not a fresh tmpfs")
            }
        }
    }
}

/// Why a source was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Its facts or the mount table could not be had.
    Unjudgeable(FactsError),
    /// Its mount is not in the mount table.
    NotInMountTable { mnt_id: u64 },
    /// Below none of the allowing directories.
    Outside,
    /// The source's own mount is `what`.
    Is(What),
    /// A recursive bind would take `what`, mounted at `point` below it.
    Below { point: PathBuf, what: What },
    /// A harmless VM file (`what` names it) asked for writable.
    HarmlessOnlyReadOnly { what: &'static str },
    /// An overlay of the engine's layers asked for writable.
    EngineLayersOnlyReadOnly { point: PathBuf },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Unjudgeable(e) => write!(f, "eci cannot tell what it is ({e})"),
            Why::NotInMountTable { mnt_id } => write!(
                f,
                "eci cannot tell what it is (its mount, id {mnt_id}, is not in /proc/self/mountinfo)"
            ),
            Why::Outside => write!(
                f,
                "it is a VM path, outside the container's own files, the engine's directories and the policy's shareable host paths"
            ),
            Why::Is(what) => write!(f, "it is {what}"),
            Why::Below { point, what } => write!(
                f,
                "a recursive bind of it would take {what}, mounted at {} below it",
                point.display()
            ),
            Why::HarmlessOnlyReadOnly { what } => write!(
                f,
                "it is {what}, which containers may bind read-only only (add `:ro` to the -v, or `readonly` to the --mount)"
            ),
            Why::EngineLayersOnlyReadOnly { point } => write!(
                f,
                "it is the engine's overlay of image layers at {}, which a build step may bind read-only only",
                point.display()
            ),
        }
    }
}

pub const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Kernel file systems by `fstatfs` magic, to name what mountinfo may not.
const KERNEL_MAGICS: &[(u64, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0xcafe_4a11, "bpf"),
    (0x7363_6673, "securityfs"),
    (0x6265_6570, "configfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x1cd1, "devpts"),
    (0x1980_0202, "mqueue"),
    (0xde5e_81e4, "efivarfs"),
    (0x6165_676c, "pstore"),
    (0x6e73_6673, "nsfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6573_5543, "fusectl"),
    (0x9584_58f6, "hugetlbfs"),
    (0x0187, "autofs"),
];

/// Kernel file systems by mountinfo type.
const KERNEL_TYPES: &[&str] = &[
    "proc",
    "sysfs",
    "debugfs",
    "tracefs",
    "bpf",
    "securityfs",
    "configfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "efivarfs",
    "pstore",
    "nsfs",
    "selinuxfs",
    "binfmt_misc",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "devtmpfs",
    "rpc_pipefs",
    "nfsd",
];

/// Judge one source: allowed (and by what), or refused (and why). `table`
/// is the parsed mount table, or why there is none.
pub fn judge(
    facts: &SourceFacts,
    dirs: &[AllowingDir],
    table: Result<&[MountEntry], &FactsError>,
    bind: BindAsked,
    init_binaries: &[FileId],
) -> Result<Allowance, Why> {
    let table = table.map_err(|e| Why::Unjudgeable(e.clone()))?;
    let entry = table
        .iter()
        .find(|e| e.id == facts.mnt_id)
        .ok_or(Why::NotInMountTable {
            mnt_id: facts.mnt_id,
        })?;
    let containing: Vec<&AllowingDir> = dirs
        .iter()
        .filter(|d| facts.path.starts_with(&d.path))
        .collect();
    let fresh = facts.magic == TMPFS_MAGIC && facts.dev == entry.dev;
    let found = containing.iter().find_map(|dir| {
        allowance_below(entry, dir, table, fresh).map(|allowance| (*dir, allowance))
    });
    let Some((dir, allowance)) = found else {
        return match harmless(facts, init_binaries) {
            Some(what) if !bind.read_only => Err(Why::HarmlessOnlyReadOnly { what }),
            // Made read-only, nosuid and nodev as a whole when bound; a
            // kernel file system below would still show.
            Some(what) => takes_only(bind, table, entry, &facts.path, |below| {
                !matches!(what_is(below, table), What::Kernel { .. })
            })
            .map(|()| Allowance::HarmlessReadOnly { what }),
            None if containing.is_empty() => Err(Why::Outside),
            None => Err(Why::Is(describe(entry, table, Some(facts.magic)))),
        };
    };
    if let Allowance::EngineLayers { point, .. } = &allowance
        && !bind.read_only
    {
        return Err(Why::EngineLayersOnlyReadOnly {
            point: point.clone(),
        });
    }
    takes_only(bind, table, entry, &facts.path, |below| {
        allowance_below(below, dir, table, true).is_some()
    })?;
    Ok(allowance)
}

/// A recursive bind of `path` (on `entry`) takes the mounts below it: the
/// first one `ok` does not accept is the refusal.
fn takes_only(
    bind: BindAsked,
    table: &[MountEntry],
    entry: &MountEntry,
    path: &Path,
    ok: impl Fn(&MountEntry) -> bool,
) -> Result<(), Why> {
    if !bind.recursive {
        return Ok(());
    }
    match mounts_below(table, entry, path)
        .into_iter()
        .find(|b| !ok(b))
    {
        Some(below) => Err(Why::Below {
            point: below.point.clone(),
            what: what_is(below, table),
        }),
        None => Ok(()),
    }
}

/// How a bind asks for its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BindAsked {
    /// `rbind`: the mounts below go with it.
    pub recursive: bool,
    /// `ro`.
    pub read_only: bool,
}

/// The harmless VM files by the path the kernel resolves them to: what
/// each is, and whether the paths below it count too.
const HARMLESS_READ_ONLY: &[(&str, &str, bool)] = &[
    ("/etc/localtime", "the VM's time zone", false),
    ("/etc/timezone", "the VM's time zone", false),
    ("/usr/share/zoneinfo", "the VM's time zone data", true),
    ("/lib/modules", "the VM kernel's modules", true),
    ("/usr/lib/modules", "the VM kernel's modules", true),
];

/// Where the engine looks for its init binary (`docker-init`) when no
/// `init-path` is configured: its libexec directories, then `PATH`.
const INIT_BINARY_DIRS: &[&str] = &[
    "/usr/local/libexec/docker",
    "/usr/libexec/docker",
    "/usr/local/lib/docker",
    "/usr/lib/docker",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// A file by identity: its device (major, minor) and inode, as
/// [`SourceFacts`] has them.
pub type FileId = ((u32, u32), u64);

/// Each `docker-init` the engine may use, by identity (asked of the kernel
/// as a bind source is: [`open`]).
pub fn init_binaries() -> Vec<FileId> {
    let mut found: Vec<FileId> = INIT_BINARY_DIRS
        .iter()
        .filter_map(|dir| open(&Path::new(dir).join("docker-init")).ok())
        .filter(|(_, f)| f.mode & libc::S_IFMT == libc::S_IFREG)
        .map(|(_, f)| (f.dev, f.ino))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// `facts` is a harmless VM file: one of [`HARMLESS_READ_ONLY`] by its real
/// path, or the engine's init binary by its inode; and root's, readable by
/// every VM user (and searchable, for a directory), not writable by them,
/// never setuid or setgid.
fn harmless(facts: &SourceFacts, init_binaries: &[FileId]) -> Option<&'static str> {
    let is_dir = facts.mode & libc::S_IFMT == libc::S_IFDIR;
    let is_file = facts.mode & libc::S_IFMT == libc::S_IFREG;
    let everyone_reads = facts.mode & 0o004 != 0 && (!is_dir || facts.mode & 0o001 != 0);
    let plain = facts.uid == 0
        && facts.mode & 0o022 == 0
        && facts.mode & 0o6000 == 0
        && everyone_reads
        && (is_dir || is_file);
    if !plain {
        return None;
    }
    if is_file && init_binaries.contains(&(facts.dev, facts.ino)) {
        return Some("the engine's init binary (docker-init, for --init)");
    }
    HARMLESS_READ_ONLY
        .iter()
        .find(|(path, _, below)| {
            facts.path == Path::new(path) || (*below && facts.path.starts_with(path))
        })
        .map(|(_, what, _)| *what)
}

/// `entry` is allowed by `dir`: it is `dir`'s own mount, or a fresh tmpfs
/// mounted below `dir` (`fresh`: what the kernel said of the source agrees).
fn allowance_below(
    entry: &MountEntry,
    dir: &AllowingDir,
    table: &[MountEntry],
    fresh: bool,
) -> Option<Allowance> {
    if entry.id == dir.mnt_id {
        return Some(Allowance::SameMount {
            dir: dir.path.clone(),
        });
    }
    if dir.layers
        && entry.fstype == "overlay"
        && entry.root == Path::new("/")
        && entry.point.starts_with(&dir.path)
        && entry.point != dir.path
    {
        return Some(Allowance::EngineLayers {
            dir: dir.path.clone(),
            point: entry.point.clone(),
        });
    }
    let fresh_tmpfs = fresh
        && entry.fstype == "tmpfs"
        && entry.root == Path::new("/")
        && entry.dev.0 == 0
        && !seen_elsewhere(entry, table)
        && entry.point.starts_with(&dir.path);
    fresh_tmpfs.then(|| Allowance::FreshTmpfs {
        dir: dir.path.clone(),
        point: entry.point.clone(),
    })
}

fn seen_elsewhere(entry: &MountEntry, table: &[MountEntry]) -> bool {
    table.iter().any(|e| e.id != entry.id && e.dev == entry.dev)
}

/// The mounts a recursive bind of `path` (on `top`) takes: `top`'s children
/// mounted below `path`, and all of theirs.
fn mounts_below<'a>(table: &'a [MountEntry], top: &MountEntry, path: &Path) -> Vec<&'a MountEntry> {
    let mut found: Vec<&MountEntry> = Vec::new();
    let mut frontier = vec![top.id];
    while let Some(parent) = frontier.pop() {
        for e in table
            .iter()
            .filter(|e| e.parent == parent && e.id != parent)
        {
            let in_scope = parent != top.id || e.point.starts_with(path);
            if in_scope && e.id != top.id && !found.iter().any(|f| f.id == e.id) {
                found.push(e);
                frontier.push(e.id);
            }
        }
    }
    found
}

/// What a mount really is, for a refusal.
pub fn what_is(entry: &MountEntry, table: &[MountEntry]) -> What {
    describe(entry, table, None)
}

/// [`what_is`], with the `fstatfs` magic of a file on it when there is one:
/// a kernel file system by its magic is one whatever mountinfo calls it.
fn describe(entry: &MountEntry, table: &[MountEntry], magic: Option<u64>) -> What {
    let is_bind = entry.root != Path::new("/") || seen_elsewhere(entry, table);
    let of = is_bind.then(|| vm_path_of(entry, table));
    if KERNEL_TYPES.contains(&entry.fstype.as_str()) {
        return What::Kernel {
            fstype: entry.fstype.clone(),
            of,
        };
    }
    if let Some(name) = magic.and_then(kernel_fs_name) {
        return What::Kernel {
            fstype: name.to_owned(),
            of,
        };
    }
    if entry.dev.0 != 0 {
        let vm_root = table
            .iter()
            .any(|e| e.point == Path::new("/") && e.dev == entry.dev);
        return What::BlockDevice {
            fstype: entry.fstype.clone(),
            device: entry.source.clone(),
            dev: entry.dev,
            of,
            vm_root,
        };
    }
    match of {
        Some(of) => What::VmBind {
            fstype: entry.fstype.clone(),
            dev: entry.dev,
            of,
        },
        None => What::Other {
            fstype: entry.fstype.clone(),
            device: entry.source.clone(),
        },
    }
}

/// The VM path a bind shows: another mount of the same device whose root
/// holds this one's, plus the rest (the root itself when there is none).
fn vm_path_of(entry: &MountEntry, table: &[MountEntry]) -> PathBuf {
    table
        .iter()
        .filter(|e| e.id != entry.id && e.dev == entry.dev)
        .filter_map(|e| {
            let rest = entry.root.strip_prefix(&e.root).ok()?;
            let path = if rest.as_os_str().is_empty() {
                e.point.clone()
            } else {
                e.point.join(rest)
            };
            Some((e.root.components().count(), path))
        })
        // The widest view (the device's own root), then the shortest path.
        .min_by_key(|(depth, path)| (*depth, path.components().count()))
        .map(|(_, path)| path)
        .unwrap_or_else(|| entry.root.clone())
}

/// The kernel's name for an `fstatfs` magic, when it is a kernel one.
pub fn kernel_fs_name(magic: u64) -> Option<&'static str> {
    KERNEL_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name)
}

fn cstr(path: &Path) -> Result<CString, FactsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FactsError::Open {
        path: path.display().to_string(),
        reason: "the path has a NUL byte".into(),
    })
}

fn os_reason() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Open `path` `O_PATH` (symlinks followed) and ask the kernel what it is.
pub fn open(path: &Path) -> Result<(OwnedFd, SourceFacts), FactsError> {
    let shown = path.display().to_string();
    let c = cstr(path)?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(FactsError::Open {
            path: shown,
            reason: os_reason(),
        });
    }
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let facts = facts_of(&fd, &shown)?;
    Ok((fd, facts))
}

/// The facts of an open descriptor (`shown` names it in errors).
pub fn facts_of(fd: &OwnedFd, shown: &str) -> Result<SourceFacts, FactsError> {
    let empty = CString::default();
    // SAFETY: statx is plain data, zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty C string and a statx buffer.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(FactsError::Statx {
            path: shown.to_owned(),
            reason: os_reason(),
        });
    }
    let mnt_id = if stx.stx_mask & libc::STATX_MNT_ID != 0 {
        stx.stx_mnt_id
    } else {
        fdinfo_mnt_id(fd).map_err(|reason| FactsError::MountId {
            path: shown.to_owned(),
            reason,
        })?
    };
    // SAFETY: statfs is plain data, zero is a valid value.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a statfs buffer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
        return Err(FactsError::Statfs {
            path: shown.to_owned(),
            reason: os_reason(),
        });
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let path = std::fs::read_link(&link).map_err(|e| FactsError::Open {
        path: shown.to_owned(),
        reason: format!("reading {link}: {e}"),
    })?;
    Ok(SourceFacts {
        path,
        mnt_id,
        // f_type is a signed word; magics are 32 bits.
        magic: (sfs.f_type as u64) & 0xffff_ffff,
        dev: (stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        mode: u32::from(stx.stx_mode),
        uid: stx.stx_uid,
    })
}

fn fdinfo_mnt_id(fd: &OwnedFd) -> Result<u64, String> {
    let file = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{file} has no mnt_id line"))
}

/// The mount table of this process's mount namespace.
pub fn mount_table() -> Result<Vec<MountEntry>, FactsError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| FactsError::MountinfoRead(e.to_string()))?;
    parse_mountinfo(&text)
}

/// The judged sources of a spec's binds, by index in its mounts: each one's
/// descriptor, to bind from.
#[derive(Debug, Default)]
pub struct Vetted {
    sources: BTreeMap<usize, (OwnedFd, Allowance)>,
}

impl Vetted {
    /// The judged descriptor of mount `n`; a bind that was not judged is a
    /// refusal (fail closed).
    pub fn fd(&self, n: usize) -> Result<&OwnedFd, Refusal> {
        self.sources.get(&n).map(|(fd, _)| fd).ok_or_else(|| {
            Refusal::Invalid(format!(
                "mount {n} is a bind whose source eci did not judge"
            ))
        })
    }

    pub fn allowance(&self, n: usize) -> Option<&Allowance> {
        self.sources.get(&n).map(|(_, a)| a)
    }
}

/// Judge every bind source of `spec` against the directories that allow
/// sources (`spec::allowed_dirs`, plus `extra_dirs`): the first one refused
/// is the refusal, with what it really is and the fix.
pub fn vet(spec: &Spec, ctx: &Context, extra_dirs: &[PathBuf]) -> Result<Vetted, Refusal> {
    let dirs: Vec<AllowingDir> = spec::allowed_dirs(spec, ctx)
        .into_iter()
        .chain(extra_dirs.iter().cloned())
        // A directory that cannot be opened allows nothing.
        .filter_map(|dir| open(&dir).ok())
        .map(|(_, facts)| AllowingDir {
            layers: ctx.engine_layer_dirs.contains(&facts.path),
            path: facts.path,
            mnt_id: facts.mnt_id,
        })
        .collect();
    let mut opened = Vec::new();
    for (n, mount) in spec.mounts().iter().flatten().enumerate() {
        if let Some(path) = spec::bind_source_path(mount, &ctx.bundle) {
            opened.push((n, mount, open(&path)));
        }
    }
    // Read after the sources were opened: every mount they are on is in it,
    // unless it went away meanwhile (then: refused). eci-runc's own binds
    // for running containers (below its run directory, each made from a
    // source vetted then) are not "another mount of the device": without
    // this, a pod's /dev/shm tmpfs, bound for its sandbox, would look like
    // a bind of the VM's to the pod's next container.
    let run_dir = crate::relocate::run_dir();
    let table = mount_table().map(|t| without_own_binds(t, &run_dir));
    let init = init_binaries();
    let mut vetted = Vetted::default();
    for (n, mount, source) in opened {
        let bind = BindAsked {
            recursive: is_recursive(mount),
            read_only: is_read_only(mount),
        };
        let judged = source.map_err(Why::Unjudgeable).and_then(|(fd, facts)| {
            let allowance = judge(&facts, &dirs, table.as_deref(), bind, &init)?;
            Ok((fd, allowance))
        });
        match judged {
            Ok(ok) => {
                vetted.sources.insert(n, ok);
            }
            Err(why) => return Err(refusal(mount, &why, &ctx.volumes_dir)),
        }
    }
    Ok(vetted)
}

/// The mount table without the mounts at points strictly below `run_dir`
/// (eci-runc's relocations for containers).
pub fn without_own_binds(table: Vec<MountEntry>, run_dir: &Path) -> Vec<MountEntry> {
    table
        .into_iter()
        .filter(|e| !(e.point.starts_with(run_dir) && e.point != run_dir))
        .collect()
}

/// `ro`, or `rro` (recursively read-only, as Docker 25+ asks for `:ro`
/// binds); the last of them and `rw` wins, as for mount(8).
pub fn is_read_only(mount: &Mount) -> bool {
    mount.options().as_ref().is_some_and(|o| {
        o.iter()
            .rev()
            .find(|x| ["ro", "rro", "rw"].contains(&x.as_str()))
            .is_some_and(|x| x != "rw")
    })
}

/// `rbind`: the mounts below the source go with it.
pub fn is_recursive(mount: &Mount) -> bool {
    mount
        .options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == "rbind"))
}

fn refusal(mount: &Mount, why: &Why, volumes_dir: &Path) -> Refusal {
    let spelled = mount
        .source()
        .as_ref()
        .map(|s| s.display().to_string())
        .unwrap_or_default();
    let from = match mount
        .source()
        .as_deref()
        .and_then(|s| volume_of(s, volumes_dir))
    {
        Some(name) => describe_volume(&name, volumes_dir),
        None => spelled,
    };
    Refusal::MountSource {
        from,
        destination: mount.destination().display().to_string(),
        why: why.to_string(),
    }
}

/// `<volumes>/<name>/_data[/...]` → `<name>`.
pub fn volume_of(source: &Path, volumes_dir: &Path) -> Option<String> {
    let rest = spec::normalize(source);
    let mut parts = rest.strip_prefix(volumes_dir).ok()?.components();
    let name = parts.next()?.as_os_str().to_str()?.to_owned();
    (parts.next()?.as_os_str() == "_data").then_some(name)
}

/// `volume "v" (driver options: type=none, o=bind, device=/etc)`, with the
/// local driver's options when its `opts.json` can be read.
fn describe_volume(name: &str, volumes_dir: &Path) -> String {
    let opts = volumes_dir.join(name).join("opts.json");
    match std::fs::read_to_string(&opts)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| local_driver_options(&v))
    {
        Some(o) if !o.is_empty() => format!("volume {name:?} (driver options: {o})"),
        _ => format!("volume {name:?}"),
    }
}

/// The local volume driver's options as `docker volume create --opt` names
/// them.
pub fn local_driver_options(opts: &serde_json::Value) -> String {
    [
        ("type", "MountType"),
        ("o", "MountOpts"),
        ("device", "MountDevice"),
    ]
    .iter()
    .filter_map(|(opt, key)| {
        opts[key]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(|v| format!("{opt}={v}"))
    })
    .collect::<Vec<_>>()
    .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM like this host's: root on /dev/vda, /var/lib/docker a bind of a
    /// directory of it, /run a tmpfs, and volumes made by the engine.
    const VM: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
28 27 0:25 / /run rw,relatime shared:2 - tmpfs tmpfs rw,mode=755
45 27 254:0 /var/lib/docker /var/lib/docker rw,relatime shared:1 - ext4 /dev/vda rw
46 27 254:16 / /home rw,relatime - ext4 /dev/vdb rw
100 45 254:0 /etc /var/lib/docker/volumes/etc/_data rw,relatime shared:1 - ext4 /dev/vda rw
101 45 0:25 / /var/lib/docker/volumes/run/_data rw,relatime shared:2 - tmpfs tmpfs rw
102 45 0:21 / /var/lib/docker/volumes/proc/_data rw,relatime - proc proc rw
103 45 0:25 /user/0 /var/lib/docker/volumes/sub/_data rw,relatime - tmpfs tmpfs rw
104 45 254:1 / /var/lib/docker/volumes/disk/_data rw,relatime - ext4 /dev/vdc rw
105 45 0:50 / /var/lib/docker/volumes/scratch/_data rw,relatime - tmpfs tmpfs rw,size=10240k
106 45 0:51 / /var/lib/docker/containers/c1/mounts/shm rw,relatime - tmpfs shm rw,size=65536k
107 45 0:52 / /var/lib/docker/volumes/nest/_data rw,relatime - tmpfs tmpfs rw
108 107 0:53 / /var/lib/docker/volumes/nest/_data/ok rw,relatime - tmpfs tmpfs rw
109 108 0:22 / /var/lib/docker/volumes/nest/_data/ok/sys rw,relatime - sysfs sysfs rw
110 45 0:54 / /var/lib/docker/volumes/good/_data/fresh rw,relatime - tmpfs tmpfs rw
111 45 0:55 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=l/A:l/B,upperdir=abc/diff,workdir=abc/work
";

    fn table() -> Vec<MountEntry> {
        parse_mountinfo(VM).unwrap()
    }

    fn dirs() -> Vec<AllowingDir> {
        vec![
            AllowingDir {
                layers: false,
                path: "/var/lib/docker/volumes".into(),
                mnt_id: 45,
            },
            AllowingDir {
                layers: false,
                path: "/var/lib/docker/containers/c1".into(),
                mnt_id: 45,
            },
            AllowingDir {
                layers: false,
                path: "/home/shared".into(),
                mnt_id: 46,
            },
        ]
    }

    /// The facts the kernel would give for a path on mount `id`.
    fn on(path: &str, id: u64) -> SourceFacts {
        let entry = table().into_iter().find(|e| e.id == id).unwrap();
        let magic = match entry.fstype.as_str() {
            "tmpfs" => TMPFS_MAGIC,
            "proc" => 0x9fa0,
            _ => 0xef53,
        };
        SourceFacts {
            path: path.into(),
            mnt_id: id,
            magic,
            dev: entry.dev,
            ino: 1000 + id,
            // A directory of root's that every VM user may read.
            mode: libc::S_IFDIR | 0o755,
            uid: 0,
        }
    }

    /// A bind as `-v` makes it: recursive, read-write unless `ro`.
    fn rw(recursive: bool) -> BindAsked {
        BindAsked {
            recursive,
            read_only: false,
        }
    }

    fn verdict(facts: &SourceFacts, recursive: bool) -> Result<Allowance, Why> {
        let t = table();
        judge(facts, &dirs(), Ok(&t), rw(recursive), &[])
    }

    #[test]
    fn an_overlay_of_the_engines_layers_is_let_in_read_only_to_a_build_step_only() {
        let t = table();
        let layers = AllowingDir {
            layers: true,
            path: "/var/lib/docker/overlay2".into(),
            mnt_id: 45,
        };
        let source = on("/var/lib/docker/overlay2/abc/merged/etc", 111);
        let ro = BindAsked {
            recursive: true,
            read_only: true,
        };
        assert_eq!(
            judge(&source, std::slice::from_ref(&layers), Ok(&t), ro, &[]),
            Ok(Allowance::EngineLayers {
                dir: "/var/lib/docker/overlay2".into(),
                point: "/var/lib/docker/overlay2/abc/merged".into(),
            })
        );
        assert!(matches!(
            judge(
                &source,
                std::slice::from_ref(&layers),
                Ok(&t),
                rw(true),
                &[]
            ),
            Err(Why::EngineLayersOnlyReadOnly { .. })
        ));
        // The same directory, not the engine's layer storage of a build
        // step: an overlay is what it is.
        let plain = AllowingDir {
            layers: false,
            ..layers
        };
        assert!(matches!(
            judge(&source, &[plain], Ok(&t), ro, &[]),
            Err(Why::Is(What::Other { .. }))
        ));
    }

    #[test]
    fn a_pods_shm_bound_for_its_sandbox_stays_a_fresh_tmpfs_for_the_next_container() {
        // The pod's shm (mount 106), and eci-runc's bind of it for the
        // sandbox container below its run directory.
        let text =
            format!("{VM}120 28 0:51 / /run/eci-runc/sandbox/mount-6 rw,relatime - tmpfs shm rw\n");
        let with_bind = parse_mountinfo(&text).unwrap();
        let facts = on("/var/lib/docker/containers/c1/mounts/shm", 106);
        assert!(judge(&facts, &dirs(), Ok(&with_bind), rw(false), &[]).is_err());
        let own = without_own_binds(with_bind, Path::new("/run/eci-runc"));
        assert!(own.iter().any(|e| e.point == Path::new("/run")));
        assert!(judge(&facts, &dirs(), Ok(&own), rw(false), &[]).is_ok());
        // The VM's /run itself (a bind of it is not fresh) is still seen.
        let run = on("/var/lib/docker/volumes/run/_data", 101);
        assert!(judge(&run, &dirs(), Ok(&own), rw(false), &[]).is_err());
    }

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes_and_optional_fields() {
        let t = parse_mountinfo(
            "45 27 254:0 /var/lib/a\\040b /mnt/x\\040y rw shared:1 master:2 - ext4 /dev/vda rw\n",
        )
        .unwrap();
        assert_eq!(
            t[0],
            MountEntry {
                id: 45,
                parent: 27,
                dev: (254, 0),
                root: "/var/lib/a b".into(),
                point: "/mnt/x y".into(),
                fstype: "ext4".into(),
                source: "/dev/vda".into(),
            }
        );
        let e = parse_mountinfo("27 1 254:0 / / rw - ext4 /dev/vda rw\ngarbage\n").unwrap_err();
        assert_eq!(
            e,
            FactsError::MountinfoParse {
                line: 2,
                text: "garbage".into()
            }
        );
    }

    #[test]
    fn a_plain_directory_on_the_allowing_directorys_mount_passes() {
        assert_eq!(
            verdict(&on("/var/lib/docker/volumes/data/_data", 45), true),
            Ok(Allowance::SameMount {
                dir: "/var/lib/docker/volumes".into()
            })
        );
        assert_eq!(
            verdict(&on("/home/shared/project", 46), true),
            Ok(Allowance::SameMount {
                dir: "/home/shared".into()
            })
        );
    }

    #[test]
    fn a_fresh_tmpfs_below_an_allowing_directory_passes() {
        for (path, id) in [
            ("/var/lib/docker/volumes/scratch/_data", 105),
            ("/var/lib/docker/containers/c1/mounts/shm", 106),
        ] {
            assert_eq!(
                verdict(&on(path, id), true),
                Ok(Allowance::FreshTmpfs {
                    dir: if id == 106 {
                        "/var/lib/docker/containers/c1".into()
                    } else {
                        "/var/lib/docker/volumes".into()
                    },
                    point: path.into()
                }),
                "{path}"
            );
        }
    }

    #[test]
    fn a_bind_of_the_vms_etc_is_refused_as_a_bind_on_its_root_file_system() {
        let why = verdict(&on("/var/lib/docker/volumes/etc/_data", 100), true).unwrap_err();
        assert_eq!(
            why,
            Why::Is(What::BlockDevice {
                fstype: "ext4".into(),
                device: "/dev/vda".into(),
                dev: (254, 0),
                of: Some("/etc".into()),
                vm_root: true,
            })
        );
        assert!(
            why.to_string()
                .contains("a bind of /etc on the VM's root file system"),
            "{why}"
        );
    }

    #[test]
    fn a_bind_of_the_vms_run_is_not_a_fresh_tmpfs() {
        let why = verdict(&on("/var/lib/docker/volumes/run/_data", 101), true).unwrap_err();
        assert_eq!(
            why,
            Why::Is(What::VmBind {
                fstype: "tmpfs".into(),
                dev: (0, 25),
                of: "/run".into()
            })
        );
        assert!(why.to_string().contains("a bind of the VM's /run"), "{why}");
    }

    #[test]
    fn a_bind_of_the_vms_proc_is_refused_as_a_kernel_file_system() {
        let why = verdict(&on("/var/lib/docker/volumes/proc/_data", 102), true).unwrap_err();
        assert_eq!(
            why,
            Why::Is(What::Kernel {
                fstype: "proc".into(),
                of: Some("/proc".into())
            })
        );
        assert!(
            why.to_string()
                .contains("a bind of the VM's /proc (proc, a kernel file system)"),
            "{why}"
        );
    }

    #[test]
    fn a_bind_of_a_sub_directory_is_refused_even_of_a_tmpfs_mounted_nowhere_else() {
        // Root /user/0 of the /run tmpfs: the magic and the type say tmpfs.
        let why = verdict(&on("/var/lib/docker/volumes/sub/_data", 103), false).unwrap_err();
        assert_eq!(
            why,
            Why::Is(What::VmBind {
                fstype: "tmpfs".into(),
                dev: (0, 25),
                of: "/run/user/0".into()
            })
        );
        // Even when its device is nowhere else in the table.
        let alone: Vec<MountEntry> = table()
            .into_iter()
            .filter(|e| e.id != 28 && e.id != 101)
            .collect();
        let why = judge(
            &on("/var/lib/docker/volumes/sub/_data", 103),
            &dirs(),
            Ok(&alone),
            rw(false),
            &[],
        )
        .unwrap_err();
        assert!(matches!(why, Why::Is(What::VmBind { .. })), "{why:?}");
    }

    #[test]
    fn a_block_device_file_system_is_refused_with_its_device() {
        let why = verdict(&on("/var/lib/docker/volumes/disk/_data", 104), true).unwrap_err();
        assert_eq!(
            why,
            Why::Is(What::BlockDevice {
                fstype: "ext4".into(),
                device: "/dev/vdc".into(),
                dev: (254, 1),
                of: None,
                vm_root: false,
            })
        );
        assert!(
            why.to_string().contains("ext4 on block device 254:1"),
            "{why}"
        );
    }

    #[test]
    fn a_tmpfs_only_by_its_mountinfo_line_is_not_fresh() {
        // The kernel says the source is not on a tmpfs (or on another
        // device): mountinfo alone does not make it one.
        let mut facts = on("/var/lib/docker/volumes/scratch/_data", 105);
        facts.magic = 0xef53;
        assert!(verdict(&facts, false).is_err());
        let mut facts = on("/var/lib/docker/volumes/scratch/_data", 105);
        facts.dev = (0, 99);
        assert!(verdict(&facts, false).is_err());
    }

    #[test]
    fn an_rbind_takes_a_bad_submount_below_a_good_directory_and_is_refused() {
        // A fresh tmpfs with a fresh tmpfs below (fine) and sysfs below that.
        let why = verdict(&on("/var/lib/docker/volumes/nest/_data", 107), true).unwrap_err();
        assert_eq!(
            why,
            Why::Below {
                point: "/var/lib/docker/volumes/nest/_data/ok/sys".into(),
                what: What::Kernel {
                    fstype: "sysfs".into(),
                    of: Some("/sys".into())
                }
            }
        );
        // The same without rbind: the submounts do not go along.
        assert!(verdict(&on("/var/lib/docker/volumes/nest/_data", 107), false).is_ok());
        // A plain directory with a fresh tmpfs below: fine recursively.
        assert!(verdict(&on("/var/lib/docker/volumes/good/_data", 45), true).is_ok());
        // The whole volume directory, recursively: every volume is judged.
        assert!(matches!(
            verdict(&on("/var/lib/docker/volumes", 45), true),
            Err(Why::Below { .. })
        ));
    }

    #[test]
    fn an_unreadable_mount_table_is_a_refusal_with_the_reason() {
        let e = FactsError::MountinfoRead("Permission denied (os error 13)".into());
        let why = judge(
            &on("/var/lib/docker/volumes/data/_data", 45),
            &dirs(),
            Err(&e),
            rw(false),
            &[],
        )
        .unwrap_err();
        assert_eq!(why, Why::Unjudgeable(e));
        assert!(why.to_string().contains("Permission denied"), "{why}");
        // A mount that is not in the table is no better.
        let mut facts = on("/var/lib/docker/volumes/data/_data", 45);
        facts.mnt_id = 999;
        assert_eq!(
            verdict(&facts, false),
            Err(Why::NotInMountTable { mnt_id: 999 })
        );
    }

    #[test]
    fn a_kernel_file_system_is_named_by_its_magic_and_other_mounts_by_their_type() {
        // mountinfo says tmpfs, the kernel's magic says sysfs: sysfs.
        let mut facts = on("/var/lib/docker/volumes/scratch/_data", 105);
        facts.magic = 0x6265_6572;
        assert_eq!(
            verdict(&facts, false),
            Err(Why::Is(What::Kernel {
                fstype: "sysfs".into(),
                of: None
            }))
        );
        let fuse = parse_mountinfo(
            "200 45 0:60 / /var/lib/docker/volumes/f/_data rw - fuse.sshfs me@host:/x rw\n",
        )
        .unwrap();
        let what = what_is(&fuse[0], &fuse);
        assert_eq!(
            what.to_string(),
            "a mount of \"me@host:/x\" (fuse.sshfs), not a fresh tmpfs"
        );
    }

    #[test]
    fn a_source_below_no_allowing_directory_is_refused() {
        assert_eq!(verdict(&on("/etc", 27), false), Err(Why::Outside));
    }

    #[test]
    fn volumes_are_named_with_their_driver_options() {
        let volumes = Path::new("/var/lib/docker/volumes");
        assert_eq!(
            volume_of(Path::new("/var/lib/docker/volumes/v/_data"), volumes),
            Some("v".into())
        );
        assert_eq!(
            volume_of(Path::new("/var/lib/docker/volumes/v"), volumes),
            None
        );
        assert_eq!(volume_of(Path::new("/etc"), volumes), None);
        let opts = serde_json::json!({"MountType": "none", "MountOpts": "bind", "MountDevice": "/etc", "Quota": {"Size": 0}});
        assert_eq!(
            local_driver_options(&opts),
            "type=none, o=bind, device=/etc"
        );
    }

    #[test]
    fn the_refusal_names_the_volume_its_options_what_it_is_and_the_fix() {
        let volumes = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(volumes.path().join("v")).unwrap();
        std::fs::write(
            volumes.path().join("v/opts.json"),
            r#"{"MountType":"none","MountOpts":"bind","MountDevice":"/etc","Quota":{"Size":0}}"#,
        )
        .unwrap();
        let mut mount = Mount::default();
        mount.set_source(Some(volumes.path().join("v/_data")));
        mount.set_destination("/x".into());
        let why = verdict(&on("/var/lib/docker/volumes/etc/_data", 100), true).unwrap_err();
        let refused = refusal(&mount, &why, volumes.path());
        assert!(matches!(refused, Refusal::MountSource { .. }));
        let text = refused.to_string();
        for expected in [
            "can't mount volume \"v\" (driver options: type=none, o=bind, device=/etc) at /x",
            "it is a bind of /etc on the VM's root file system (ext4 on block device 254:0 (/dev/vda))",
            "plain named volume",
            "--tmpfs",
            "eci.shareableHostPaths",
        ] {
            assert!(text.contains(expected), "no {expected:?} in {text}");
        }
        // Without opts.json: the name alone; not a volume: the path.
        std::fs::remove_file(volumes.path().join("v/opts.json")).unwrap();
        assert!(
            refusal(&mount, &why, volumes.path())
                .to_string()
                .contains("can't mount volume \"v\" at /x")
        );
        mount.set_source(Some("/srv/data".into()));
        assert!(
            refusal(&mount, &why, volumes.path())
                .to_string()
                .contains("can't mount /srv/data at /x")
        );
    }

    #[test]
    fn the_facts_of_a_real_path_name_its_mount() {
        let (_fd, facts) = open(Path::new("/proc/self")).unwrap();
        assert_eq!(facts.magic, 0x9fa0);
        assert_eq!(kernel_fs_name(facts.magic), Some("proc"));
        let t = mount_table().unwrap();
        assert!(t.iter().any(|e| e.id == facts.mnt_id && e.fstype == "proc"));
        assert!(matches!(
            open(Path::new("/nonexistent/eci")),
            Err(FactsError::Open { .. })
        ));
    }

    /// The VM's files as the kernel would show them: /etc/localtime resolved
    /// to its zone file on the root file system, the modules directory with
    /// a read-only bind and a proc below it, /etc/passwd.
    fn vm_file(path: &str, mode: u32) -> SourceFacts {
        SourceFacts {
            path: path.into(),
            mnt_id: 27,
            magic: 0xef53,
            dev: (254, 0),
            ino: 77,
            mode,
            uid: 0,
        }
    }

    fn ro(recursive: bool) -> BindAsked {
        BindAsked {
            recursive,
            read_only: true,
        }
    }

    #[test]
    fn the_vms_time_zone_and_modules_may_be_bound_read_only_and_nothing_else_of_the_vm() {
        let t = table();
        let judge_vm =
            |facts: &SourceFacts, bind: BindAsked| judge(facts, &dirs(), Ok(&t), bind, &[]);
        let zone = vm_file("/usr/share/zoneinfo/Etc/UTC", libc::S_IFREG | 0o644);
        assert_eq!(
            judge_vm(&zone, ro(true)),
            Ok(Allowance::HarmlessReadOnly {
                what: "the VM's time zone data"
            })
        );
        let timezone = vm_file("/etc/timezone", libc::S_IFREG | 0o644);
        assert!(judge_vm(&timezone, ro(false)).is_ok());
        let modules = vm_file("/usr/lib/modules", libc::S_IFDIR | 0o755);
        assert!(judge_vm(&modules, ro(true)).is_ok());
        // Writable: refused, and the message says how to ask.
        let why = judge_vm(&zone, rw(true)).unwrap_err();
        assert_eq!(
            why,
            Why::HarmlessOnlyReadOnly {
                what: "the VM's time zone data"
            }
        );
        assert!(why.to_string().contains(":ro"), "{why}");
        // Spelled like a harmless file but something else (a bind of
        // /etc/passwd at /etc/localtime): judged by what it resolved to.
        let passwd = vm_file("/etc/passwd", libc::S_IFREG | 0o644);
        assert_eq!(judge_vm(&passwd, ro(false)), Err(Why::Outside));
        // Not every VM user's to read, writable by others, setuid, not
        // root's, a device node: not harmless, whatever the path.
        for (mode, uid) in [
            (libc::S_IFREG | 0o640, 0),
            (libc::S_IFREG | 0o646, 0),
            (libc::S_IFREG | 0o4755, 0),
            (libc::S_IFREG | 0o644, 1000),
            (libc::S_IFCHR | 0o644, 0),
        ] {
            let mut f = vm_file("/etc/localtime", mode);
            f.uid = uid;
            assert_eq!(judge_vm(&f, ro(false)), Err(Why::Outside), "{mode:o} {uid}");
        }
        // A kernel file system below the modules would go along.
        let text = format!(
            "{VM}130 27 254:0 /usr/lib/modules /usr/lib/modules ro - ext4 /dev/vda rw\n131 130 0:21 / /usr/lib/modules/proc rw - proc proc rw\n"
        );
        let with_proc = parse_mountinfo(&text).unwrap();
        let mut below = vm_file("/usr/lib/modules", libc::S_IFDIR | 0o755);
        below.mnt_id = 130;
        assert!(matches!(
            judge(&below, &dirs(), Ok(&with_proc), ro(true), &[]),
            Err(Why::Below { .. })
        ));
        assert!(judge(&below, &dirs(), Ok(&with_proc), ro(false), &[]).is_ok());
    }

    #[test]
    fn the_engines_init_binary_is_known_by_its_inode_not_its_name() {
        let t = table();
        let st_dev = (254, 0);
        let tini = vm_file("/usr/bin/tini-static", libc::S_IFREG | 0o755);
        assert_eq!(
            judge(&tini, &dirs(), Ok(&t), ro(false), &[(st_dev, 77)]),
            Ok(Allowance::HarmlessReadOnly {
                what: "the engine's init binary (docker-init, for --init)"
            })
        );
        // Another inode, or the same inode number on another device.
        assert_eq!(
            judge(&tini, &dirs(), Ok(&t), ro(false), &[(st_dev, 78)]),
            Err(Why::Outside)
        );
        assert_eq!(
            judge(&tini, &dirs(), Ok(&t), ro(false), &[((254, 1), 77)]),
            Err(Why::Outside)
        );
    }
}
