//! The VM's namespaces: a task in a protected cgroup cannot open their
//! nsfs files (so `setns`/`nsenter` into the VM has nothing to work with)
//! unless it is in that namespace already; and once it is in a mount
//! namespace of its own (before that, it is the runtime's own set-up) a
//! protected task cannot exec anything while it shares the VM's user
//! namespace (a container without a user namespace of its own: plain runc,
//! `--runtime=runc`, a build step) or its uts/ipc/pid/net namespace
//! (`--network=host`, `--pid=host` by a runtime that bypassed eci-runc).
//! While it is still in the VM's mount namespace it cannot change the VM's
//! mounts (see mounts.rs).

use aya_ebpf::{
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};
use eci_common::{
    FileId, Hook, MAX_VM_NAMESPACES, NS_KINDS, NSFS_MAGIC, ObjectKind, USER_NS_KIND,
    protect_reason, undecided, verdict,
};

use crate::{audit, kernel};

/// Index of the mount namespace in `NS_KIND_NAMES`.
pub const MNT_KIND: usize = 2;

/// Inode numbers (`ns.inum`) of the VM's and the engine's namespaces.
#[map]
static ECI_VM_NS: HashMap<u64, u32> = HashMap::pinned(MAX_VM_NAMESPACES, 0);

#[inline(always)]
fn is_vm_namespace(inum: u64) -> bool {
    // SAFETY: presence check only.
    unsafe { ECI_VM_NS.get(&inum) }.is_some()
}

/// `Some(Some(inum))` when the current task's mount namespace is the VM's
/// (or the engine's): a protected task there must not change mounts.
/// `None` when it could not be read.
#[inline(always)]
pub fn current_vm_mount_namespace() -> Option<Option<u64>> {
    let inum = kernel::current_namespaces()?[MNT_KIND] as u64;
    Some(is_vm_namespace(inum).then_some(inum))
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

/// The open of an nsfs file by a protected task: `Some(verdict)` when this
/// rule decides, `None` when the file is not one of the VM's namespaces.
#[inline(always)]
pub fn judge_open(cgroup_id: u64, facts: &kernel::FileFacts) -> Option<i32> {
    if facts.magic != NSFS_MAGIC || !is_vm_namespace(facts.id.ino) {
        return None;
    }
    // A namespace the task is in already: its file grants nothing new. This
    // is the runtime's own set-up (runc's first stage, in the container's
    // cgroup, opens its current mount namespace to fetch bind sources from
    // it later); a container, in namespaces of its own, never matches.
    let Some(current) = kernel::current_namespaces() else {
        return Some(audit::undecided(
            Hook::FileOpen,
            cgroup_id,
            undecided::NAMESPACES,
            verdict::DENY,
        ));
    };
    if current.iter().any(|&inum| inum as u64 == facts.id.ino) {
        return Some(verdict::ALLOW);
    }
    Some(audit::report(
        Hook::FileOpen,
        cgroup_id,
        ObjectKind::Namespace,
        facts.id,
        verdict::DENY,
    ))
}

/// `bprm_check_security(struct linux_binprm *bprm)`
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let hook = Hook::BprmCheckSecurity;
    let protected = protected_or_return!(hook, ctx.arg(1));
    let cgroup_id = protected.cgroup_id;
    let (Some(inums), Some(user)) = (
        kernel::current_namespaces(),
        kernel::current_user_namespace(),
    ) else {
        return audit::undecided(hook, cgroup_id, undecided::NAMESPACES, verdict::DENY);
    };
    // Still in the VM's mount namespace: this is the runtime setting the
    // container up (runc re-executes itself from a sealed copy after it has
    // joined the cgroup, before it unshares). Every container has a mount
    // namespace of its own by the time its workload runs, and a container
    // cannot get back into the VM's (its nsfs file is refused above).
    if is_vm_namespace(inums[MNT_KIND] as u64) {
        return verdict::ALLOW;
    }
    // A container in the VM's user namespace below a protected parent (a
    // runtime that bypassed eci-runc: `--runtime=runc`, a build step): its
    // root is the VM's root. (A cgroup registered by itself is eci-runc's —
    // always in a user namespace of its own — or an administrator's.)
    if protected.reasons & protect_reason::POLICY_PARENT != 0 && is_vm_namespace(user as u64) {
        return deny_shared(hook, cgroup_id, USER_NS_KIND, user as u64);
    }
    let mut kind = 0;
    while kind < NS_KINDS {
        let inum = inums[kind] as u64;
        if is_vm_namespace(inum) {
            return deny_shared(hook, cgroup_id, kind, inum);
        }
        kind += 1;
    }
    verdict::ALLOW
}
