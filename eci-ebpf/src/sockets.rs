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
use eci_common::{FileId, Hook, MAX_PROTECTED_SOCKETS, ObjectKind, undecided, verdict};

use crate::{audit, kernel};

/// Socket file identity -> unused (presence is the rule).
#[map]
static ECI_PROT_SOCKETS: HashMap<FileId, u32> = HashMap::pinned(MAX_PROTECTED_SOCKETS, 0);

/// Judge a connect or send of a protected task (`cgroup_id`) to `other_sk`.
/// A socket whose file cannot be read is counted as undecided and let
/// through: abstract sockets have no file either, and the engine's sockets
/// are files.
#[inline(always)]
fn decide(ctx: &LsmContext, hook: Hook, cgroup_id: u64, other_sk: *const u8) -> i32 {
    // SAFETY: `other_sk` is the hook's `struct sock *`; all reads are probe reads.
    let file = match unsafe { kernel::unix_socket_file(other_sk) } {
        Ok(Some(file)) => file,
        Ok(None) => return verdict::ALLOW,
        Err(()) => return audit::undecided(hook, cgroup_id, undecided::SOCKET, verdict::ALLOW),
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
    let hook = Hook::UnixStreamConnect;
    let cgroup_id = protected_or_return!(hook, ctx.arg(3)).cgroup_id;
    let other: *const u8 = ctx.arg(1);
    decide(&ctx, hook, cgroup_id, other)
}

/// `unix_may_send(struct socket *sock, struct socket *other)`
#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    let hook = Hook::UnixMaySend;
    let cgroup_id = protected_or_return!(hook, ctx.arg(2)).cgroup_id;
    let other_socket: *const u8 = ctx.arg(1);
    // SAFETY: `other_socket` is the hook's `struct socket *`.
    match unsafe { kernel::socket_sock(other_socket) } {
        Some(other_sk) => decide(&ctx, hook, cgroup_id, other_sk),
        None => audit::undecided(hook, cgroup_id, undecided::SOCKET, verdict::ALLOW),
    }
}
