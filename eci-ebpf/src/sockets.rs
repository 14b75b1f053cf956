//! Protected Unix sockets: a task in a protected cgroup cannot connect
//! (stream) or send (datagram) to a socket whose file is in
//! `ECI_PROT_SOCKETS`. The socket is identified by device and inode of its
//! file, so every path that reaches the same file reaches the same verdict.

use aya_ebpf::{
    macros::{lsm, map},
    maps::HashMap,
    programs::LsmContext,
};
use aya_log_ebpf::info;
use eci_common::{FileId, Hook, MAX_PROTECTED_SOCKETS, ObjectKind, verdict};

use crate::{audit, kernel, protection};

/// Socket file identity -> unused (presence is the rule).
#[map]
static ECI_PROT_SOCKETS: HashMap<FileId, u32> = HashMap::pinned(MAX_PROTECTED_SOCKETS, 0);

#[inline(always)]
fn decide(ctx: &LsmContext, hook: Hook, other_sk: *const u8) -> i32 {
    let Some(cgroup_id) = protection::protected_cgroup() else {
        return verdict::ALLOW;
    };
    // SAFETY: `other_sk` is the hook's `struct sock *`; all reads are probe reads.
    let Some(file) = (unsafe { kernel::unix_socket_file(other_sk) }) else {
        return verdict::ALLOW;
    };
    // SAFETY: presence check only.
    if unsafe { ECI_PROT_SOCKETS.get(&file) }.is_none() {
        return verdict::ALLOW;
    }
    info!(
        ctx,
        "eci: denied {} to protected socket ino {} for cgroup {}", hook as u32, file.ino, cgroup_id
    );
    audit::report(hook, cgroup_id, ObjectKind::UnixSocket, file, verdict::DENY)
}

/// `unix_stream_connect(struct socket *sock, struct sock *other, struct sock *newsk)`
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let other: *const u8 = ctx.arg(1);
    decide(&ctx, Hook::UnixStreamConnect, other)
}

/// `unix_may_send(struct socket *sock, struct socket *other)`
#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let other_socket: *const u8 = ctx.arg(1);
    // Unprotected tasks leave before any kernel read.
    if protection::protected_cgroup().is_none() {
        return verdict::ALLOW;
    }
    // SAFETY: `other_socket` is the hook's `struct socket *`.
    let Some(other_sk) = (unsafe { kernel::socket_sock(other_socket) }) else {
        return verdict::ALLOW;
    };
    decide(&ctx, Hook::UnixMaySend, other_sk)
}
