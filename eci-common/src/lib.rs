//! Types shared by the BPF programs (`eci-ebpf`) and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of pointers, so the same
//! bytes mean the same thing on both sides of a map or the ring buffer.
#![no_std]

/// Names of the pinned maps (their pin file is `<pin dir>/maps/<name>`).
pub mod map_names {
    pub const PROTECTED_CGROUPS: &str = "ECI_PROT_CGROUPS";
    pub const PROTECTED_SOCKETS: &str = "ECI_PROT_SOCKETS";
    pub const EVENTS: &str = "ECI_EVENTS";
    pub const DENIALS: &str = "ECI_DENIALS";
    pub const EVENT_DROPS: &str = "ECI_EVENT_DROPS";
    pub const PROBE_HITS: &str = "ECI_PROBE_HITS";
    pub const VERDICT_CACHE: &str = "ECI_VERDICTS";
    pub const VERDICT_STORE: &str = "ECI_VERDICT_STORE";
    pub const PROTECTION_GENERATION: &str = "ECI_PROT_GEN";
    pub const VM_NAMESPACES: &str = "ECI_VM_NS";
    pub const DENIED_FS_MAGIC: &str = "ECI_DENIED_FS";
    pub const IMMUTABLE_MOUNTS: &str = "ECI_IMMUT_MNTS";
    pub const ALLOWED_DEVICES: &str = "ECI_ALLOWED_DEVS";
    pub const UNDECIDED: &str = "ECI_UNDECIDED";
    pub const AUDIT_WINDOWS: &str = "ECI_AUDIT_WINDOWS";
    pub const AUDIT_SUPPRESSED: &str = "ECI_AUDIT_SUPPR";
    pub const AUDIT_REPORTED: &str = "ECI_AUDIT_REPORTED";
    pub const AUDIT_LIMIT: &str = "ECI_AUDIT_LIMIT";
    pub const CGROUP_DENIALS: &str = "ECI_CG_DENIALS";
}

/// Name of the global that carries the kernel struct offsets into the programs.
pub const KERNEL_OFFSETS_GLOBAL: &str = "ECI_KERNEL_OFFSETS";
/// Name of the global that tells the probe program which process to count.
pub const PROBE_TGID_GLOBAL: &str = "ECI_PROBE_TGID";
/// Name of the global that selects how the hooks decide protection (a
/// [`protection_mode`] value, set at load; the verifier drops the other way).
pub const PROTECTION_MODE_GLOBAL: &str = "ECI_PROTECTION_MODE";

/// How the hooks answer "is the current task protected?".
pub mod protection_mode {
    /// Walk the task's cgroup ancestors with
    /// `bpf_get_current_ancestor_cgroup_id` (offered to LSM programs from
    /// Linux 5.14), looking each up in the protected map; verdicts cached.
    pub const ANCESTOR_WALK: u32 = 0;
    /// Look up the task's own cgroup only: every descendant of a protected
    /// cgroup is in the map, registered as it is made (`cgroup_mkdir`
    /// tracepoint) or by the agent's walk of cgroupfs.
    pub const REGISTRY: u32 = 1;
}

/// Name of the global that selects where the ancestor walk caches its
/// verdicts (a [`verdict_cache`] value, set at load).
pub const VERDICT_CACHE_GLOBAL: &str = "ECI_VERDICT_CACHE";

/// Where the ancestor walk keeps a cgroup's verdict between hooks.
pub mod verdict_cache {
    /// An LRU hash keyed by cgroup id (`ECI_VERDICTS`): every kernel.
    pub const LRU_HASH: u32 = 0;
    /// Cgroup local storage (`ECI_VERDICT_STORE`, Linux 6.2+): the verdict
    /// lives in the cgroup itself, found without hashing, and goes with it.
    pub const CGROUP_STORAGE: u32 = 1;
}

/// Capacity of the protected-cgroup map (in registry mode it holds every
/// descendant of a protected cgroup too).
pub const MAX_PROTECTED_CGROUPS: u32 = 16384;
/// Capacity of the protected-socket map.
pub const MAX_PROTECTED_SOCKETS: u32 = 1024;
/// Size of the audit ring buffer in bytes (a power of two, multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// Capacity of the per-cgroup verdict cache (LRU).
pub const VERDICT_CACHE_ENTRIES: u32 = 65536;
/// How many cgroup levels below the root the ancestor walk looks at. A task
/// deeper than this (or a cgroup file deeper than this) is undecided, which
/// counts as protected: fail closed. (The task's own cgroup is looked up
/// first, so a registered container is found at any depth.)
pub const MAX_CGROUP_DEPTH: i32 = 64;
/// Capacity of the VM-namespace map.
pub const MAX_VM_NAMESPACES: u32 = 1024;
/// Capacity of the immutable-mount map.
pub const MAX_IMMUTABLE_MOUNTS: u32 = 65536;

/// Capacity of the allowed-device map.
pub const MAX_ALLOWED_DEVICES: u32 = 1024;

/// `statfs` magic of nsfs, the file system of `/proc/<pid>/ns/*`.
pub const NSFS_MAGIC: u64 = 0x6e73_6673;
/// `statfs` magic of devpts: its nodes are the ptys of that instance.
pub const DEVPTS_MAGIC: u64 = 0x1cd1;
/// `statfs` magic of cgroup2.
pub const CGROUP2_MAGIC: u64 = 0x6367_7270;

/// Key of the allowed-device map: a device number in the kernel's
/// encoding (`MAJOR << 20 | MINOR`) and whether it is a block device.
/// `minor == ANY_MINOR` stands for every minor of that major.
pub const fn device_key(block: bool, major: u32, minor: u32) -> u64 {
    ((block as u64) << 32) | FileId::kernel_dev(major, minor)
}
/// The minor that stands for all minors of a major in `device_key`.
pub const ANY_MINOR: u32 = 0xfffff;

/// Capacity of the audit rate limit's per-cgroup windows. A cgroup that
/// finds the map full is not limited (its decisions are lines, or counted
/// as ring-buffer drops): nothing is lost unexplained.
pub const MAX_AUDIT_CGROUPS: u32 = 8192;
/// Capacity of the per-cgroup, per-hook counts of decisions the rate limit
/// kept out of the ring buffer (and of the agent's reported totals).
pub const MAX_AUDIT_SUPPRESSED: u32 = 4 * MAX_AUDIT_CGROUPS;
/// The audit rate limit's window: each cgroup may report up to the limit
/// (`ECI_AUDIT_LIMIT[0]`) decisions per window as events of their own.
pub const AUDIT_WINDOW_NS: u64 = 1_000_000_000;

/// One cgroup's audit window: when it began and how many events its
/// decisions have put in the ring buffer since.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditWindow {
    pub start_ns: u64,
    pub events: u64,
}

/// Key of the counts of decisions the audit rate limit kept out of the ring
/// buffer: the task's cgroup and the hook (`Hook as u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditKey {
    pub cgroup_id: u64,
    pub hook: u32,
    pub _pad: u32,
}

/// A cached protection verdict: the generation it was computed in and the
/// `protect_reason` bits of the cgroup and its ancestors (0: not
/// protected). Stale generations are recomputed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedVerdict {
    pub generation: u64,
    pub protected: u64,
}

/// A verdict in cgroup local storage: one 64-bit word, read and written
/// whole, so a reader on another CPU sees one verdict, never the halves of
/// two. High half: a tag of the policy generation it was computed in (never
/// 0: the kernel creates the entry zeroed, which means "never computed");
/// low half: the `protect_reason` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredVerdict {
    pub word: u64,
}

impl StoredVerdict {
    /// The tag of `generation`: its low 31 bits plus one.
    #[inline(always)]
    pub const fn tag(generation: u64) -> u64 {
        (generation & 0x7fff_ffff) + 1
    }

    /// `reasons`, computed in `generation`.
    #[inline(always)]
    pub const fn new(generation: u64, reasons: u32) -> Self {
        StoredVerdict {
            word: (Self::tag(generation) << 32) | reasons as u64,
        }
    }

    /// The reasons, if this verdict was computed in `generation`.
    #[inline(always)]
    pub const fn reasons_in(self, generation: u64) -> Option<u32> {
        if self.word >> 32 == Self::tag(generation) {
            Some(self.word as u32)
        } else {
            None
        }
    }
}

/// An LSM hook eci attaches to. The value indexes the per-hook counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    UnixStreamConnect = 0,
    UnixMaySend = 1,
    FileOpen = 2,
    BprmCheckSecurity = 3,
    SbKernMount = 4,
    MoveMount = 5,
    SbUmount = 6,
    SbMount = 7,
    /// Not an LSM hook: the `cgroup_mkdir` tracepoint of the registry mode
    /// (its counters and events: a descendant it could not register).
    CgroupMkdir = 8,
    PathChmod = 9,
    InodeSetxattr = 10,
}

impl Hook {
    /// The LSM hooks, in index order (each is a program of that name).
    pub const LSM: [Hook; 10] = [
        Hook::UnixStreamConnect,
        Hook::UnixMaySend,
        Hook::FileOpen,
        Hook::BprmCheckSecurity,
        Hook::SbKernMount,
        Hook::MoveMount,
        Hook::SbUmount,
        Hook::SbMount,
        Hook::PathChmod,
        Hook::InodeSetxattr,
    ];
    /// Every counter slot in use, in index order.
    pub const ALL: [Hook; 11] = [
        Hook::UnixStreamConnect,
        Hook::UnixMaySend,
        Hook::FileOpen,
        Hook::BprmCheckSecurity,
        Hook::SbKernMount,
        Hook::MoveMount,
        Hook::SbUmount,
        Hook::SbMount,
        Hook::CgroupMkdir,
        Hook::PathChmod,
        Hook::InodeSetxattr,
    ];
    /// Number of counter slots (room for the hooks later issues add).
    pub const SLOTS: u32 = 32;

    /// The kernel's name of the hook (`lsm/<name>`), also the program name.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::UnixStreamConnect => "unix_stream_connect",
            Hook::UnixMaySend => "unix_may_send",
            Hook::FileOpen => "file_open",
            Hook::BprmCheckSecurity => "bprm_check_security",
            Hook::SbKernMount => "sb_kern_mount",
            Hook::MoveMount => "move_mount",
            Hook::SbUmount => "sb_umount",
            Hook::SbMount => "sb_mount",
            Hook::CgroupMkdir => "cgroup_mkdir",
            Hook::PathChmod => "path_chmod",
            Hook::InodeSetxattr => "inode_setxattr",
        }
    }

    pub const fn from_u32(v: u32) -> Option<Hook> {
        match v {
            0 => Some(Hook::UnixStreamConnect),
            1 => Some(Hook::UnixMaySend),
            2 => Some(Hook::FileOpen),
            3 => Some(Hook::BprmCheckSecurity),
            4 => Some(Hook::SbKernMount),
            5 => Some(Hook::MoveMount),
            6 => Some(Hook::SbUmount),
            7 => Some(Hook::SbMount),
            8 => Some(Hook::CgroupMkdir),
            9 => Some(Hook::PathChmod),
            10 => Some(Hook::InodeSetxattr),
            _ => None,
        }
    }
}

/// Why a cgroup is in the protected map (bit flags, the map's value).
///
/// The low half holds the cgroup's own reasons; the high half (registry
/// mode only) the reasons it inherits from its protected ancestors, so that
/// one lookup of a task's own cgroup tells what the ancestor walk would.
pub mod protect_reason {
    /// Registered over the control socket (`eci-agent protect`, eci-runc).
    pub const REGISTERED: u32 = 1 << 0;
    /// Named by the policy as a protected parent.
    pub const POLICY_PARENT: u32 = 1 << 1;
    /// The cgroup's own reasons.
    pub const OWN_MASK: u32 = 0xffff;
    /// Where the inherited reasons start.
    pub const INHERITED_SHIFT: u32 = 16;
    /// A descendant of a registered cgroup (registry mode).
    pub const DESCENDANT_OF_REGISTERED: u32 = REGISTERED << INHERITED_SHIFT;
    /// A descendant of a protected parent (registry mode).
    pub const DESCENDANT_OF_POLICY_PARENT: u32 = POLICY_PARENT << INHERITED_SHIFT;

    /// The reasons that apply to a cgroup with map value `value`: its own
    /// and the ones it inherits.
    pub const fn effective(value: u32) -> u32 {
        (value | (value >> INHERITED_SHIFT)) & OWN_MASK
    }

    /// The inherited half of a child of a cgroup with map value `parent`.
    pub const fn inherited_from(parent: u32) -> u32 {
        effective(parent) << INHERITED_SHIFT
    }

    /// The cgroup's own reasons in map value `value`.
    pub const fn own(value: u32) -> u32 {
        value & OWN_MASK
    }
}

/// Identity of a file: the kernel's `dev_t` of its superblock and its inode
/// number. A bind mount, a hard link, a rename or a `/proc/<pid>/root/...`
/// path all reach the same identity.
///
/// `dev` is the kernel's internal encoding (`MAJOR << 20 | MINOR`), not the
/// `st_dev` userspace sees; [`FileId::from_stat_dev`] converts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// Kernel `dev_t` from userspace major/minor numbers.
    pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
        ((major as u64) << 20) | (minor as u64 & 0xfffff)
    }
}

/// Byte offsets of the few kernel struct fields the programs read.
///
/// Layouts differ between kernels (e.g. `file.f_inode`), so the agent takes
/// them from the running kernel's BTF at load time and writes them into a
/// read-only global of the BPF object; nothing is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct unix_sock.path`
    pub unix_sock_path: u32,
    /// `struct path.dentry`
    pub path_dentry: u32,
    /// `struct dentry.d_inode`
    pub dentry_inode: u32,
    /// `struct inode.i_ino`
    pub inode_ino: u32,
    /// `struct inode.i_sb`
    pub inode_sb: u32,
    /// `struct super_block.s_dev`
    pub super_block_dev: u32,
    /// `struct socket.sk`
    pub socket_sk: u32,
    /// `struct file.f_inode`
    pub file_inode: u32,
    /// `struct super_block.s_magic`
    pub super_block_magic: u32,
    /// `struct super_block.s_bdev`
    pub super_block_bdev: u32,
    /// `struct task_struct.nsproxy`
    pub task_nsproxy: u32,
    /// `struct nsproxy.{uts_ns, ipc_ns, mnt_ns, pid_ns_for_children, net_ns}`
    pub nsproxy_ns: [u32; NS_KINDS],
    /// Offset of `struct ns_common ns` in each namespace struct, same order.
    pub ns_common: [u32; NS_KINDS],
    /// `struct ns_common.inum`
    pub ns_common_inum: u32,
    /// `struct path.mnt`
    pub path_mnt: u32,
    /// `struct vfsmount.mnt_sb`
    pub vfsmount_sb: u32,
    /// `struct vfsmount.mnt_flags`
    pub vfsmount_flags: u32,
    /// `struct mount.mnt` (the vfsmount embedded in a mount)
    pub mount_mnt: u32,
    /// `struct mount.mnt_id`
    pub mount_id: u32,
    /// `struct inode.i_mode` (umode_t, 16 bits)
    pub inode_mode: u32,
    /// `struct inode.i_rdev` (dev_t, 32 bits)
    pub inode_rdev: u32,
    /// `struct inode.i_uid` (kuid_t: the id in the initial user namespace)
    pub inode_uid: u32,
    /// `struct inode.i_gid` (kgid_t)
    pub inode_gid: u32,
    /// `struct file.f_mode` (fmode_t, 32 bits)
    pub file_mode: u32,
    /// `struct file.f_path` (an embedded `struct path`)
    pub file_path: u32,
    /// `struct dentry.d_parent`
    pub dentry_parent: u32,
    /// `struct task_struct.cred`
    pub task_cred: u32,
    /// `struct cred.user_ns`
    pub cred_user_ns: u32,
    /// Offset of `struct ns_common ns` in `struct user_namespace`.
    pub user_ns_common: u32,
    /// `struct cgroup.kn`
    pub cgroup_kn: u32,
    /// `struct cgroup.self` (the cgroup's own `cgroup_subsys_state`)
    pub cgroup_self: u32,
    /// `struct cgroup_subsys_state.parent`
    pub css_parent: u32,
    /// `struct cgroup.root`
    pub cgroup_root: u32,
    /// `struct cgroup_root.hierarchy_id` (0: the cgroup2 hierarchy)
    pub cgroup_root_hierarchy_id: u32,
    /// `struct kernfs_node.id` (u64 since Linux 5.5: the cgroup id)
    pub kernfs_node_id: u32,
    /// `struct task_struct.cgroups` (read directly, not probed: the verdict
    /// store needs the cgroup as a pointer the verifier knows)
    pub task_cgroups: u32,
    /// `struct css_set.dfl_cgrp` (the task's cgroup in the unified hierarchy)
    pub css_set_dfl_cgrp: u32,
    /// Non-zero once filled in by the agent; the programs deny nothing
    /// on objects they cannot identify without it.
    pub valid: u32,
}

/// Namespaces a task must not share with the VM to exec, in the order of
/// `KernelOffsets::nsproxy_ns`. (User, cgroup and time namespaces are not
/// here: a container without a user namespace shares the VM's, and that is
/// closed by eci-runc, not by refusing every exec.)
pub const NS_KINDS: usize = 5;
pub const NS_KIND_NAMES: [&str; NS_KINDS] = ["uts", "ipc", "mnt", "pid", "net"];
/// `SharedNamespace` events about the user namespace carry this kind index
/// (the user namespace is the task's credentials', not in `nsproxy`).
pub const USER_NS_KIND: usize = NS_KINDS;

/// The name of a namespace kind index of a `SharedNamespace` event.
pub const fn shared_ns_name(kind: u64) -> &'static str {
    match kind {
        0 => "uts",
        1 => "ipc",
        2 => "mnt",
        3 => "pid",
        4 => "net",
        5 => "user",
        _ => "unknown",
    }
}

/// What kind of object an audit event is about, and how to read
/// `AuditEvent::object` for it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    None = 0,
    /// dev/ino of the socket file.
    UnixSocket = 1,
    /// dev of nsfs / inode number of the namespace (its `inum`).
    Namespace = 2,
    /// dev of the superblock / its `s_magic`.
    Filesystem = 3,
    /// dev 0 / the mount id.
    Mount = 4,
    /// dev: index into `NS_KIND_NAMES` of the shared namespace / its inode number.
    SharedNamespace = 5,
    /// dev: the device number (kernel encoding) / the file type bits of `i_mode`.
    Device = 6,
    /// dev 0 / the id of the cgroup written to (not protected).
    Cgroup = 7,
    /// dev 0 / which kernel read failed ([`undecided`]): the hook could not
    /// tell, and refused where it guards the VM.
    Undecided = 8,
    /// dev: the file's owner (uid; gid for a setgid file) as the kernel
    /// stores it / the mode asked for (0: file capabilities).
    SetIdFile = 9,
}

/// What an `Undecided` event could not read (its `object.ino`).
pub mod undecided {
    /// The task's cgroup lies deeper than the ancestor walk looks.
    pub const CGROUP_DEPTH: u64 = 1;
    /// A field of the file being opened.
    pub const FILE: u64 = 2;
    /// The task's namespaces.
    pub const NAMESPACES: u64 = 3;
    /// A superblock or mount.
    pub const MOUNT: u64 = 4;
    /// A cgroup directory's ancestry.
    pub const CGROUP_TREE: u64 = 5;
    /// A socket's file.
    pub const SOCKET: u64 = 6;
    /// A new cgroup (registry mode): its parent could not be read, or the
    /// protected map had no room for it; the agent's next walk of
    /// cgroupfs registers it.
    pub const REGISTRY: u64 = 7;
}

impl ObjectKind {
    pub const fn name(v: u32) -> &'static str {
        match v {
            1 => "unix_socket",
            2 => "namespace",
            3 => "filesystem",
            4 => "mount",
            5 => "shared_namespace",
            6 => "device",
            7 => "cgroup",
            8 => "undecided",
            9 => "setid_file",
            _ => "none",
        }
    }
}

/// Ids below this are the VM's own: eci's ranges lie above them (the first
/// base is at least 65536), and so do the files of a container's own root
/// file system. A setuid or setgid file owned by one of them is a VM
/// user's privilege, which no protected task may make.
pub const VM_IDS_END: u32 = 65536;

/// Verdict values carried in events (the hook's return value).
pub mod verdict {
    pub const ALLOW: i32 = 0;
    /// -EPERM
    pub const DENY: i32 = -1;
}

pub const COMM_LEN: usize = 16;

/// One decision reported through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AuditEvent {
    /// `bpf_ktime_get_boot_ns()` at the decision (CLOCK_BOOTTIME).
    pub boot_time_ns: u64,
    /// cgroup v2 id of the task (inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// The object the decision was about.
    pub object: FileId,
    /// Thread id (kernel pid).
    pub pid: u32,
    /// Process id (kernel tgid).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// A [`Hook`] value.
    pub hook: u32,
    /// An [`ObjectKind`] value.
    pub object_kind: u32,
    /// Returned to the kernel: 0 allows, negative errno denies.
    pub verdict: i32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain no pointers and every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for super::FileId {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::AuditEvent {}
    unsafe impl aya::Pod for super::CachedVerdict {}
    unsafe impl aya::Pod for super::AuditWindow {}
    unsafe impl aya::Pod for super::AuditKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_verdict_answers_only_for_its_own_generation_and_a_fresh_entry_never() {
        let fresh = StoredVerdict::default();
        for generation in [0, 1, 0x7fff_ffff, 0x8000_0000, u64::MAX] {
            assert_eq!(fresh.reasons_in(generation), None, "{generation}");
            let stored = StoredVerdict::new(generation, 0);
            assert_eq!(stored.reasons_in(generation), Some(0));
            assert_eq!(stored.reasons_in(generation.wrapping_add(1)), None);
            let stored = StoredVerdict::new(generation, u32::MAX);
            assert_eq!(stored.reasons_in(generation), Some(u32::MAX));
        }
    }
}
