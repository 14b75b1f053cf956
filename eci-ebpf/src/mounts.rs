//! Mounts: a task in a protected cgroup cannot mount the VM's block-device
//! file systems or the kernel's control file systems (debugfs, tracefs,
//! bpf, securityfs, configfs — their magics are policy data in a map), and
//! cannot unmount, move or remount read-write the mounts its container
//! started with (the agent records their ids at registration). Mounts the
//! container makes later stay its own to change.
//!
//! VM paths: a bind source must be in the caller's own mount namespace
//! (the kernel's `check_mnt`, for mount(2) with MS_BIND, `open_tree` and
//! `move_mount` alike: EINVAL otherwise), so a container — which has a
//! mount namespace of its own and no VM path in it beyond what the runtime
//! put there — cannot reach one through /proc/<pid>/root, a leaked
//! descriptor, `..` or a symlink. What is left is a protected task still in
//! the VM's mount namespace (a runtime that did not give it one): it may
//! not mount, bind, move or unmount anything there.

use aya_ebpf::{
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};
use eci_common::{FileId, Hook, MAX_IMMUTABLE_MOUNTS, ObjectKind, undecided, verdict};

use crate::{
    audit, kernel,
    namespaces::{self, MNT_KIND},
};

const MS_RDONLY: u64 = 1;
const MS_REMOUNT: u64 = 32;
const MNT_READONLY: i32 = 0x40;

/// `s_magic` of file systems protected tasks may not mount.
#[map]
static ECI_DENIED_FS: HashMap<u64, u32> = HashMap::pinned(64, 0);

/// Mount ids a container started with -> the cgroup id it was registered with.
#[map]
static ECI_IMMUT_MNTS: HashMap<u32, u64> = HashMap::pinned(MAX_IMMUTABLE_MOUNTS, 0);

#[inline(always)]
fn filesystem_denied(sb: &kernel::SuperBlock) -> bool {
    // SAFETY: presence check only.
    sb.has_block_device || unsafe { ECI_DENIED_FS.get(&sb.magic) }.is_some()
}

#[inline(always)]
fn is_immutable(mount: &kernel::Mount) -> bool {
    // SAFETY: presence check only.
    unsafe { ECI_IMMUT_MNTS.get(&mount.id) }.is_some()
}

#[inline(always)]
fn deny_filesystem(hook: Hook, cgroup_id: u64, sb: &kernel::SuperBlock) -> i32 {
    let object = FileId {
        dev: sb.dev,
        ino: sb.magic,
    };
    audit::report(
        hook,
        cgroup_id,
        ObjectKind::Filesystem,
        object,
        verdict::DENY,
    )
}

#[inline(always)]
fn deny_mount(hook: Hook, cgroup_id: u64, mount: &kernel::Mount) -> i32 {
    let object = FileId {
        dev: 0,
        ino: mount.id as u64,
    };
    audit::report(hook, cgroup_id, ObjectKind::Mount, object, verdict::DENY)
}

/// A superblock or mount that could not be read: counted, and refused.
#[inline(always)]
fn undecided(hook: Hook, cgroup_id: u64) -> i32 {
    audit::undecided(hook, cgroup_id, undecided::MOUNT, verdict::DENY)
}

/// A protected task still in the VM's mount namespace (a runtime that gave
/// it none) changes no mount: `Some(answer)` when that decides.
#[inline(always)]
fn in_vm_mount_namespace(hook: Hook, cgroup_id: u64) -> Option<i32> {
    match namespaces::current_vm_mount_namespace() {
        Some(Some(inum)) => Some(namespaces::deny_shared(hook, cgroup_id, MNT_KIND, inum)),
        Some(None) => None,
        None => Some(undecided(hook, cgroup_id)),
    }
}

/// `sb_kern_mount(const struct super_block *sb)`: a new mount(2) of a file
/// system, after its superblock exists.
#[lsm(hook = "sb_kern_mount")]
pub fn sb_kern_mount(ctx: LsmContext) -> i32 {
    let hook = Hook::SbKernMount;
    let cgroup_id = protected_or_return!(hook, ctx.arg(1)).cgroup_id;
    let sb: *const u8 = ctx.arg(0);
    // SAFETY: the hook's superblock; probe reads only.
    match unsafe { kernel::super_block(sb) } {
        Some(info) if filesystem_denied(&info) => deny_filesystem(hook, cgroup_id, &info),
        Some(_) => verdict::ALLOW,
        None => undecided(hook, cgroup_id),
    }
}

/// `move_mount(const struct path *from_path, const struct path *to_path)`:
/// the new mount API (`fsmount`/`open_tree` then `move_mount`).
#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    let hook = Hook::MoveMount;
    let cgroup_id = protected_or_return!(hook, ctx.arg(2)).cgroup_id;
    if let Some(answer) = in_vm_mount_namespace(hook, cgroup_id) {
        return answer;
    }
    let from: *const u8 = ctx.arg(0);
    // SAFETY: the hook's paths; probe reads only.
    let (Some(info), Some(mount)) = (unsafe { kernel::path_super_block(from) }, unsafe {
        kernel::path_mount(from)
    }) else {
        return undecided(hook, cgroup_id);
    };
    if filesystem_denied(&info) {
        return deny_filesystem(hook, cgroup_id, &info);
    }
    if is_immutable(&mount) {
        return deny_mount(hook, cgroup_id, &mount);
    }
    verdict::ALLOW
}

/// `sb_umount(struct vfsmount *mnt, int flags)`
#[lsm(hook = "sb_umount")]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    let hook = Hook::SbUmount;
    let cgroup_id = protected_or_return!(hook, ctx.arg(2)).cgroup_id;
    if let Some(answer) = in_vm_mount_namespace(hook, cgroup_id) {
        return answer;
    }
    let mnt: *const u8 = ctx.arg(0);
    // SAFETY: the hook's vfsmount; probe reads only.
    match unsafe { kernel::vfsmount(mnt) } {
        Some(mount) if is_immutable(&mount) => deny_mount(hook, cgroup_id, &mount),
        Some(_) => verdict::ALLOW,
        None => undecided(hook, cgroup_id),
    }
}

/// `sb_mount(const char *dev_name, const struct path *path, const char *type,
/// unsigned long flags, void *data)`: nothing in the VM's mount namespace;
/// elsewhere only remounts are judged (a read-only mount the container
/// started with stays read-only).
#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    let hook = Hook::SbMount;
    let cgroup_id = protected_or_return!(hook, ctx.arg(5)).cgroup_id;
    if let Some(answer) = in_vm_mount_namespace(hook, cgroup_id) {
        return answer;
    }
    let flags: u64 = ctx.arg(3);
    if flags & MS_REMOUNT == 0 || flags & MS_RDONLY != 0 {
        return verdict::ALLOW;
    }
    let path: *const u8 = ctx.arg(1);
    // SAFETY: the hook's path; probe reads only.
    match unsafe { kernel::path_mount(path) } {
        Some(mount) if mount.flags & MNT_READONLY != 0 && is_immutable(&mount) => {
            deny_mount(hook, cgroup_id, &mount)
        }
        Some(_) => verdict::ALLOW,
        None => undecided(hook, cgroup_id),
    }
}
