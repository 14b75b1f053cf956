//! Every read of a kernel struct lives here.
//!
//! Offsets are not compiled in: the agent takes them from the running
//! kernel's BTF and writes them into `ECI_KERNEL_OFFSETS` before load, so one
//! object serves every kernel. Reads go through `bpf_probe_read_kernel`, which
//! the verifier accepts whatever the layout — except the one walk to the
//! current task's cgroup for the verdict store ([`current_cgroup`]), which
//! must hand a helper a pointer the verifier has typed from BTF.

use aya_ebpf::{
    bindings::cgroup,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_get_current_task_btf},
    },
};
use eci_common::{FileId, KernelOffsets, NS_KINDS};

#[unsafe(no_mangle)]
static ECI_KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    unix_sock_path: 0,
    path_dentry: 0,
    dentry_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    super_block_dev: 0,
    socket_sk: 0,
    file_inode: 0,
    super_block_magic: 0,
    super_block_bdev: 0,
    task_nsproxy: 0,
    nsproxy_ns: [0; NS_KINDS],
    ns_common: [0; NS_KINDS],
    ns_common_inum: 0,
    path_mnt: 0,
    vfsmount_sb: 0,
    vfsmount_flags: 0,
    mount_mnt: 0,
    mount_id: 0,
    inode_mode: 0,
    inode_rdev: 0,
    inode_uid: 0,
    inode_gid: 0,
    file_mode: 0,
    file_path: 0,
    dentry_parent: 0,
    task_cred: 0,
    cred_user_ns: 0,
    user_ns_common: 0,
    cgroup_kn: 0,
    cgroup_self: 0,
    css_parent: 0,
    cgroup_root: 0,
    cgroup_root_hierarchy_id: 0,
    kernfs_node_id: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    valid: 0,
};

/// What the mount rules need to know about a superblock.
#[derive(Clone, Copy)]
pub struct SuperBlock {
    pub dev: u64,
    pub magic: u64,
    /// Backed by a block device (the VM's disks).
    pub has_block_device: bool,
}

/// What the immutable-mount rule needs to know about a mount.
#[derive(Clone, Copy)]
pub struct Mount {
    pub id: u32,
    pub flags: i32,
}

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: reading a global; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&ECI_KERNEL_OFFSETS) }
}

#[inline(always)]
unsafe fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an Err.
    let p: *const u8 =
        unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const *const u8) }.ok()?;
    if p.is_null() { None } else { Some(p) }
}

/// The `struct sock *` of a `struct socket *`.
#[inline(always)]
pub unsafe fn socket_sock(socket: *const u8) -> Option<*const u8> {
    let off = offsets();
    if off.valid == 0 || socket.is_null() {
        return None;
    }
    // SAFETY: see read_ptr.
    unsafe { read_ptr(socket, off.socket_sk) }
}

/// Device and inode of the file a Unix socket is bound to
/// (`unix_sk(sk)->path.dentry->d_inode`): `Ok(None)` for abstract and
/// unbound sockets, which have no file; `Err(())` when a read failed.
#[inline(always)]
pub unsafe fn unix_socket_file(sk: *const u8) -> Result<Option<FileId>, ()> {
    let off = offsets();
    if off.valid == 0 || sk.is_null() {
        return Err(());
    }
    // SAFETY: every dereference goes through bpf_probe_read_kernel.
    unsafe {
        let dentry: *const u8 = read(sk, off.unix_sock_path + off.path_dentry).ok_or(())?;
        if dentry.is_null() {
            return Ok(None);
        }
        let inode = read_ptr(dentry, off.dentry_inode).ok_or(())?;
        let ino: u64 = read(inode, off.inode_ino).ok_or(())?;
        let sb = read_ptr(inode, off.inode_sb).ok_or(())?;
        let dev: u32 = read(sb, off.super_block_dev).ok_or(())?;
        Ok(Some(FileId {
            dev: dev as u64,
            ino,
        }))
    }
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an Err.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.ok()
}

/// Superblock facts from a `struct super_block *`.
#[inline(always)]
pub unsafe fn super_block(sb: *const u8) -> Option<SuperBlock> {
    let off = offsets();
    if off.valid == 0 || sb.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe {
        let dev: u32 = read(sb, off.super_block_dev)?;
        let magic: u64 = read(sb, off.super_block_magic)?;
        let bdev: u64 = read(sb, off.super_block_bdev)?;
        Some(SuperBlock {
            dev: dev as u64,
            magic,
            has_block_device: bdev != 0,
        })
    }
}

/// What the open rules need to know about an open `struct file *`.
#[derive(Clone, Copy)]
pub struct FileFacts {
    /// Device of its superblock and inode number.
    pub id: FileId,
    /// `s_magic` of its superblock.
    pub magic: u64,
    /// `i_mode`: the file type bits and permissions.
    pub mode: u32,
    /// `i_rdev`: the device number of a device node (kernel encoding).
    pub rdev: u32,
    /// `f_mode`: how it is being opened (`FMODE_READ`, `FMODE_WRITE`, ...).
    pub f_mode: u32,
}

/// Facts of an open `struct file *`; `None` when a read failed.
#[inline(always)]
pub unsafe fn file_facts(file: *const u8) -> Option<FileFacts> {
    let off = offsets();
    if off.valid == 0 || file.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe {
        let inode = read_ptr(file, off.file_inode)?;
        let ino: u64 = read(inode, off.inode_ino)?;
        let mode: u16 = read(inode, off.inode_mode)?;
        let rdev: u32 = read(inode, off.inode_rdev)?;
        let sb = read_ptr(inode, off.inode_sb)?;
        let dev: u32 = read(sb, off.super_block_dev)?;
        let magic: u64 = read(sb, off.super_block_magic)?;
        let f_mode: u32 = read(file, off.file_mode)?;
        Some(FileFacts {
            id: FileId {
                dev: dev as u64,
                ino,
            },
            magic,
            mode: mode as u32,
            rdev,
            f_mode,
        })
    }
}

/// The dentry of an open `struct file *` (`file->f_path.dentry`).
#[inline(always)]
pub unsafe fn file_dentry(file: *const u8) -> Option<*const u8> {
    let off = offsets();
    if off.valid == 0 || file.is_null() {
        return None;
    }
    // SAFETY: probe read.
    unsafe { read_ptr(file, off.file_path + off.path_dentry) }
}

/// A dentry's parent (the dentry itself at the root of its file system).
#[inline(always)]
pub unsafe fn dentry_parent(dentry: *const u8) -> Option<*const u8> {
    let off = offsets();
    if off.valid == 0 || dentry.is_null() {
        return None;
    }
    // SAFETY: probe read.
    unsafe { read_ptr(dentry, off.dentry_parent) }
}

/// The inode number of a dentry's inode.
#[inline(always)]
pub unsafe fn dentry_ino(dentry: *const u8) -> Option<u64> {
    let off = offsets();
    if off.valid == 0 || dentry.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe {
        let inode = read_ptr(dentry, off.dentry_inode)?;
        read(inode, off.inode_ino)
    }
}

/// Whether the NUL-terminated kernel string at `name` is `expected` (at
/// most 31 bytes): compared over the fixed length, without branches.
#[inline(always)]
pub unsafe fn kernel_str_is(name: *const u8, expected: &[u8]) -> Option<bool> {
    let mut buf = [0u8; 32];
    if name.is_null() || expected.len() >= buf.len() {
        return None;
    }
    // SAFETY: a probe read into our buffer.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name, &mut buf) }.ok()?;
    // Without a branch per byte (the verifier would walk every path).
    let mut diff = buf[expected.len()];
    for (i, b) in expected.iter().enumerate() {
        diff |= buf[i] ^ *b;
    }
    Some(diff == 0)
}

/// Mode and owner of an inode, as the kernel stores them: `(i_mode,
/// i_uid, i_gid)`.
#[inline(always)]
unsafe fn inode_owner(inode: *const u8) -> Option<(u32, u32, u32)> {
    let off = offsets();
    // SAFETY: probe reads.
    unsafe {
        let mode: u16 = read(inode, off.inode_mode)?;
        let uid: u32 = read(inode, off.inode_uid)?;
        let gid: u32 = read(inode, off.inode_gid)?;
        Some((mode as u32, uid, gid))
    }
}

/// [`inode_owner`] of a dentry's inode.
#[inline(always)]
pub unsafe fn dentry_inode_owner(dentry: *const u8) -> Option<(u32, u32, u32)> {
    let off = offsets();
    if off.valid == 0 || dentry.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe { inode_owner(read_ptr(dentry, off.dentry_inode)?) }
}

/// [`inode_owner`] of the inode a `struct path *` names
/// (`path->dentry->d_inode`).
#[inline(always)]
pub unsafe fn path_inode_owner(path: *const u8) -> Option<(u32, u32, u32)> {
    let off = offsets();
    if off.valid == 0 || path.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe { dentry_inode_owner(read_ptr(path, off.path_dentry)?) }
}

/// [`inode_owner`] of an open `struct file *` (`file->f_inode`).
#[inline(always)]
pub unsafe fn file_inode_owner(file: *const u8) -> Option<(u32, u32, u32)> {
    let off = offsets();
    if off.valid == 0 || file.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe { inode_owner(read_ptr(file, off.file_inode)?) }
}

/// The superblock under a `struct path *` (`path->mnt->mnt_sb`).
#[inline(always)]
pub unsafe fn path_super_block(path: *const u8) -> Option<SuperBlock> {
    let off = offsets();
    if off.valid == 0 || path.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe {
        let mnt = read_ptr(path, off.path_mnt)?;
        let sb = read_ptr(mnt, off.vfsmount_sb)?;
        super_block(sb)
    }
}

/// Id and flags of the mount a `struct vfsmount *` belongs to.
#[inline(always)]
pub unsafe fn vfsmount(mnt: *const u8) -> Option<Mount> {
    let off = offsets();
    if off.valid == 0 || mnt.is_null() {
        return None;
    }
    // SAFETY: `struct mount` embeds the vfsmount at `mount_mnt`; probe reads.
    unsafe {
        let mount = mnt.sub(off.mount_mnt as usize);
        let id: i32 = read(mount, off.mount_id)?;
        let flags: i32 = read(mnt, off.vfsmount_flags)?;
        Some(Mount {
            id: id as u32,
            flags,
        })
    }
}

/// The mount of a `struct path *` (`path->mnt`).
#[inline(always)]
pub unsafe fn path_mount(path: *const u8) -> Option<Mount> {
    let off = offsets();
    if off.valid == 0 || path.is_null() {
        return None;
    }
    // SAFETY: probe reads.
    unsafe { vfsmount(read_ptr(path, off.path_mnt)?) }
}

/// Inode numbers of the current task's namespaces, in `NS_KIND_NAMES`
/// order; `None` when any of them could not be read.
#[inline(always)]
pub fn current_namespaces() -> Option<[u32; NS_KINDS]> {
    let off = offsets();
    if off.valid == 0 {
        return None;
    }
    // SAFETY: helper without arguments; then probe reads only.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let nsproxy = read_ptr(task, off.task_nsproxy)?;
        let mut inums = [0u32; NS_KINDS];
        let mut i = 0;
        while i < NS_KINDS {
            let ns = read_ptr(nsproxy, off.nsproxy_ns[i])?;
            inums[i] = read(ns, off.ns_common[i] + off.ns_common_inum)?;
            i += 1;
        }
        Some(inums)
    }
}

/// Inode number of the current task's user namespace
/// (`current->cred->user_ns->ns.inum`).
#[inline(always)]
pub fn current_user_namespace() -> Option<u32> {
    let off = offsets();
    if off.valid == 0 {
        return None;
    }
    // SAFETY: helper without arguments; then probe reads only.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let cred = read_ptr(task, off.task_cred)?;
        let user_ns = read_ptr(cred, off.cred_user_ns)?;
        read(user_ns, off.user_ns_common + off.ns_common_inum)
    }
}

/// What the registry needs to know about a `struct cgroup` being made or
/// removed.
#[derive(Clone, Copy)]
pub struct CgroupFacts {
    /// Its id (`cgrp->kn->id`, the inode number of its cgroup2 directory).
    pub id: u64,
    /// Its parent's id (`cgrp->self.parent`, the parent's own css, whose
    /// cgroup's `kn->id`); 0 for a root.
    pub parent_id: u64,
    /// Whether it is in the cgroup2 hierarchy (`cgrp->root->hierarchy_id
    /// == 0`); cgroup v1 hierarchies number their ids on their own.
    pub unified: bool,
}

/// The id of a `struct cgroup *` (`cgrp->kn->id`).
#[inline(always)]
unsafe fn cgroup_id(off: &KernelOffsets, cgrp: *const u8) -> Option<u64> {
    // SAFETY: probe reads.
    unsafe {
        let kn = read_ptr(cgrp, off.cgroup_kn)?;
        read(kn, off.kernfs_node_id)
    }
}

/// Facts of a `struct cgroup *` (the `cgroup_mkdir`/`cgroup_rmdir`
/// tracepoints' argument); `None` when a read failed.
#[inline(always)]
pub unsafe fn cgroup(cgrp: *const u8) -> Option<CgroupFacts> {
    let off = offsets();
    if off.valid == 0 || cgrp.is_null() {
        return None;
    }
    // SAFETY: probe reads; `self` is embedded in the cgroup, and a css's
    // `parent` points at the parent cgroup's embedded `self`.
    unsafe {
        let root = read_ptr(cgrp, off.cgroup_root)?;
        let hierarchy_id: i32 = read(root, off.cgroup_root_hierarchy_id)?;
        let id = cgroup_id(&off, cgrp)?;
        let parent_css: *const u8 = read(cgrp, off.cgroup_self + off.css_parent)?;
        let parent_id = if parent_css.is_null() {
            0
        } else {
            cgroup_id(&off, parent_css.sub(off.cgroup_self as usize))?
        };
        Some(CgroupFacts {
            id,
            parent_id,
            unified: hierarchy_id == 0,
        })
    }
}

/// The current task's cgroup in the unified hierarchy
/// (`current->cgroups->dfl_cgrp`) as a BTF-typed pointer, for the
/// cgroup-local-storage helpers: direct loads from
/// `bpf_get_current_task_btf()` at offsets that are constants of the
/// frozen offsets global, so the verifier follows each field by its BTF
/// type (Linux 6.2+; the hooks reach this only where the agent chose the
/// verdict store). `None` when a pointer on the way is null.
#[inline(always)]
pub fn current_cgroup() -> Option<*mut cgroup> {
    // SAFETY: single fields of a global; volatile so the loader's values
    // are used (each a known constant to the verifier).
    let (task_cgroups, dfl_cgrp) = unsafe {
        (
            core::ptr::read_volatile(&raw const ECI_KERNEL_OFFSETS.task_cgroups),
            core::ptr::read_volatile(&raw const ECI_KERNEL_OFFSETS.css_set_dfl_cgrp),
        )
    };
    // SAFETY: helper without arguments; the verifier checks each load below
    // against the kernel's BTF (a wrong offset fails the load, not a read).
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        if task.is_null() {
            return None;
        }
        let css_set: *const u8 =
            core::ptr::read_volatile(task.add(task_cgroups as usize) as *const *const u8);
        if css_set.is_null() {
            return None;
        }
        let cgrp: *mut cgroup =
            core::ptr::read_volatile(css_set.add(dfl_cgrp as usize) as *const *mut cgroup);
        if cgrp.is_null() { None } else { Some(cgrp) }
    }
}
