//! Set-id files: a protected task makes no setuid or setgid file that a
//! VM user's or the VM root's id would run as. Through a shared directory
//! or a volume, the container's ids are the VM's (`-u 1000` writes as VM
//! uid 1000, its root as VM root): there a container's root is the VM's
//! root for ownership, never for privilege. Judged by what the file is —
//! its owner as the kernel stores it — not by the mount or the path: the
//! container's own root file system lies in its range, above
//! `VM_IDS_END`, and is not touched.
//!
//! - `path_chmod`: setting S_ISUID on a file owned by a VM uid, or S_ISGID
//!   with group execute on a file of a VM gid.
//! - `file_open` (asked by files.rs): opening such a file for writing, which
//!   is how `open(O_CREAT, 04755)` fills a new one (the empty file is left,
//!   with nothing in it to run).
//! - `inode_setxattr`: file capabilities (`security.capability`) on a file
//!   of a VM uid. Through an ID-mapped mount where the container's root is
//!   the VM's root on disk, the kernel stores them with root id 0: a real
//!   capability for every VM user who runs the file.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use eci_common::{FileId, Hook, ObjectKind, VM_IDS_END, undecided, verdict};

use crate::{audit, kernel};

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;
const FMODE_WRITE: u32 = 0x2;

/// The VM id a file of `mode` owned by `uid`:`gid` would run as, if any.
#[inline(always)]
fn vm_privilege(mode: u32, uid: u32, gid: u32) -> Option<u32> {
    if mode & S_ISUID != 0 && uid < VM_IDS_END {
        return Some(uid);
    }
    if mode & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP) && gid < VM_IDS_END {
        return Some(gid);
    }
    None
}

#[inline(always)]
fn deny(hook: Hook, cgroup_id: u64, owner: u32, mode: u32) -> i32 {
    let object = FileId {
        dev: owner as u64,
        ino: mode as u64,
    };
    audit::report(
        hook,
        cgroup_id,
        ObjectKind::SetIdFile,
        object,
        verdict::DENY,
    )
}

/// `path_chmod(const struct path *path, umode_t mode)`
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    let hook = Hook::PathChmod;
    let cgroup_id = protected_or_return!(hook, ctx.arg(2)).cgroup_id;
    let path: *const u8 = ctx.arg(0);
    let mode: u32 = ctx.arg::<u64>(1) as u32 & 0xffff;
    // SAFETY: the hook's path; probe reads only.
    let Some((old_mode, uid, gid)) = (unsafe { kernel::path_inode_owner(path) }) else {
        return audit::undecided(hook, cgroup_id, undecided::FILE, verdict::DENY);
    };
    if old_mode & S_IFMT != S_IFREG {
        return verdict::ALLOW;
    }
    match vm_privilege(mode, uid, gid) {
        Some(owner) => deny(hook, cgroup_id, owner, mode),
        None => verdict::ALLOW,
    }
}

/// The open of a file by a protected task: `Some(deny)` for writing to a
/// set-id file a VM id would run as. The owner is read only for a set-id
/// file opened for writing (not on every open).
#[inline(always)]
pub fn judge_open(cgroup_id: u64, file: *const u8, facts: &kernel::FileFacts) -> Option<i32> {
    if facts.mode & S_IFMT != S_IFREG
        || facts.f_mode & FMODE_WRITE == 0
        || facts.mode & (S_ISUID | S_ISGID) == 0
    {
        return None;
    }
    // SAFETY: the hook's `struct file *`; probe reads only.
    let Some((_, uid, gid)) = (unsafe { kernel::file_inode_owner(file) }) else {
        return Some(audit::undecided(
            Hook::FileOpen,
            cgroup_id,
            undecided::FILE,
            verdict::DENY,
        ));
    };
    let owner = vm_privilege(facts.mode, uid, gid)?;
    Some(deny(Hook::FileOpen, cgroup_id, owner, facts.mode))
}

/// The xattr that holds file capabilities.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// `inode_setxattr(idmap, struct dentry *dentry, const char *name, ...)`
/// (an ID-mapping argument first, from 5.12).
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    let cgroup_id = protected_or_return!(Hook::InodeSetxattr, ctx.arg(6)).cgroup_id;
    judge_setxattr(cgroup_id, ctx.arg(1), ctx.arg(2))
}

/// `inode_setxattr(struct dentry *dentry, const char *name, ...)` (5.10);
/// the agent loads this one where the kernel's BTF puts `dentry` first.
#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr_dentry_first(ctx: LsmContext) -> i32 {
    let cgroup_id = protected_or_return!(Hook::InodeSetxattr, ctx.arg(5)).cgroup_id;
    judge_setxattr(cgroup_id, ctx.arg(0), ctx.arg(1))
}

#[inline(always)]
fn judge_setxattr(cgroup_id: u64, dentry: *const u8, name: *const u8) -> i32 {
    let hook = Hook::InodeSetxattr;
    // SAFETY: the hook's dentry; probe reads only.
    let Some((_, uid, _)) = (unsafe { kernel::dentry_inode_owner(dentry) }) else {
        return audit::undecided(hook, cgroup_id, undecided::FILE, verdict::DENY);
    };
    if uid >= VM_IDS_END {
        return verdict::ALLOW;
    }
    // SAFETY: the hook's attribute name; a probe read only.
    match unsafe { kernel::kernel_str_is(name, CAPABILITY_XATTR) } {
        Some(true) => deny(hook, cgroup_id, uid, 0),
        Some(false) => verdict::ALLOW,
        None => audit::undecided(hook, cgroup_id, undecided::FILE, verdict::DENY),
    }
}
