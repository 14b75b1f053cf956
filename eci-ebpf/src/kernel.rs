//! Every read of a kernel struct lives here.
//!
//! Offsets are not compiled in: the agent takes them from the running
//! kernel's BTF and writes them into `ECI_KERNEL_OFFSETS` before load, so one
//! object serves every kernel. Reads go through `bpf_probe_read_kernel`, which
//! the verifier accepts whatever the layout.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use eci_common::{FileId, KernelOffsets};

#[unsafe(no_mangle)]
static ECI_KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    unix_sock_path: 0,
    path_dentry: 0,
    dentry_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    super_block_dev: 0,
    socket_sk: 0,
    valid: 0,
};

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
/// (`unix_sk(sk)->path.dentry->d_inode`). `None` for abstract and unbound
/// sockets, which have no file.
#[inline(always)]
pub unsafe fn unix_socket_file(sk: *const u8) -> Option<FileId> {
    let off = offsets();
    if off.valid == 0 || sk.is_null() {
        return None;
    }
    // SAFETY: every dereference goes through bpf_probe_read_kernel.
    unsafe {
        let dentry = read_ptr(sk, off.unix_sock_path + off.path_dentry)?;
        let inode = read_ptr(dentry, off.dentry_inode)?;
        let ino: u64 =
            bpf_probe_read_kernel(inode.add(off.inode_ino as usize) as *const u64).ok()?;
        let sb = read_ptr(inode, off.inode_sb)?;
        let dev: u32 =
            bpf_probe_read_kernel(sb.add(off.super_block_dev as usize) as *const u32).ok()?;
        Some(FileId {
            dev: dev as u64,
            ino,
        })
    }
}
