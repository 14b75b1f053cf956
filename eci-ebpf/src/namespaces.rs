//! The VM's namespaces: a task in a protected cgroup cannot open their
//! nsfs files (so `setns`/`nsenter` into the VM has nothing to work with)
//! unless it is in that namespace already,
//! and a protected task that shares a namespace with the VM — a container
//! started with `--network=host` or `--pid=host` by a runtime that bypassed
//! eci-runc — cannot exec anything once it is in a mount namespace of its
//! own (before that, it is the runtime's own set-up), and cannot change the
//! VM's mounts while it is still in the VM's mount namespace (see mounts.rs).

use aya_ebpf::{
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};
use eci_common::{FileId, Hook, MAX_VM_NAMESPACES, NS_KINDS, NSFS_MAGIC, ObjectKind, verdict};

use crate::{audit, kernel, protection};

/// Index of the mount namespace in `NS_KIND_NAMES`.
pub const MNT_KIND: usize = 2;

/// Inode numbers (`ns.inum`) of the VM's and the engine's namespaces.
#[map]
static ECI_VM_NS: HashMap<u64, u32> = HashMap::pinned(MAX_VM_NAMESPACES, 0);

/// The inode number of the current task's mount namespace when it is the
/// VM's (or the engine's): a protected task there must not change mounts.
#[inline(always)]
pub fn current_vm_mount_namespace() -> Option<u64> {
    let inum = kernel::current_namespaces()?[MNT_KIND] as u64;
    // SAFETY: presence check only.
    unsafe { ECI_VM_NS.get(&inum) }.map(|_| inum)
}

/// Report a denial for sharing the VM's namespace of kind `kind`.
#[inline(always)]
pub fn deny_shared(hook: Hook, cgroup_id: u64, kind: usize, inum: u64) -> i32 {
    let object = FileId {
        dev: kind as u64,
        ino: inum,
    };
    audit::report(
        hook,
        cgroup_id,
        ObjectKind::SharedNamespace,
        object,
        verdict::DENY,
    )
}

/// `file_open(struct file *file)`
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(cgroup_id) = protection::protected_cgroup() else {
        return verdict::ALLOW;
    };
    let file: *const u8 = ctx.arg(0);
    // SAFETY: the hook's `struct file *`; probe reads only.
    let Some((id, magic)) = (unsafe { kernel::file_identity(file) }) else {
        return verdict::ALLOW;
    };
    // SAFETY: presence check only.
    if magic != NSFS_MAGIC || unsafe { ECI_VM_NS.get(&id.ino) }.is_none() {
        return verdict::ALLOW;
    }
    // A namespace the task is in already: its file grants nothing new. This
    // is the runtime's own set-up (runc's first stage, in the container's
    // cgroup, opens its current mount namespace to fetch bind sources from
    // it later); a container, in namespaces of its own, never matches.
    if let Some(current) = kernel::current_namespaces()
        && current.iter().any(|&inum| inum as u64 == id.ino)
    {
        return verdict::ALLOW;
    }
    audit::report(
        Hook::FileOpen,
        cgroup_id,
        ObjectKind::Namespace,
        id,
        verdict::DENY,
    )
}

/// `bprm_check_security(struct linux_binprm *bprm)`
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(cgroup_id) = protection::protected_cgroup() else {
        return verdict::ALLOW;
    };
    let Some(inums) = kernel::current_namespaces() else {
        return verdict::ALLOW;
    };
    // Still in the VM's mount namespace: this is the runtime setting the
    // container up (runc re-executes itself from a sealed copy after it has
    // joined the cgroup, before it unshares). Every container has a mount
    // namespace of its own by the time its workload runs, and a container
    // cannot get back into the VM's (its nsfs file is refused above).
    let vm_mount_namespace = inums[MNT_KIND] as u64;
    // SAFETY: presence check only.
    if unsafe { ECI_VM_NS.get(&vm_mount_namespace) }.is_some() {
        return verdict::ALLOW;
    }
    let mut kind = 0;
    while kind < NS_KINDS {
        let inum = inums[kind] as u64;
        // SAFETY: presence check only.
        if inum != 0 && unsafe { ECI_VM_NS.get(&inum) }.is_some() {
            return deny_shared(Hook::BprmCheckSecurity, cgroup_id, kind, inum);
        }
        kind += 1;
    }
    verdict::ALLOW
}
