//! Reporting: one ring-buffer event per decision, per-hook denial counters,
//! and a counter of events the ring buffer could not take.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use eci_common::{AuditEvent, EVENTS_RING_BYTES, FileId, Hook, ObjectKind};

/// A decision a hook could not make (`what`: an `eci_common::undecided`
/// value): counted, reported, and answered with `verdict` — a denial where
/// the hook guards the VM.
#[inline(always)]
pub fn undecided(hook: Hook, cgroup_id: u64, what: u64, verdict: i32) -> i32 {
    bump(&ECI_UNDECIDED, hook as u32);
    let object = FileId { dev: 0, ino: what };
    report(hook, cgroup_id, ObjectKind::Undecided, object, verdict)
}

#[map]
static ECI_EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// Denials per hook, indexed by `Hook as u32`.
#[map]
static ECI_DENIALS: PerCpuArray<u64> = PerCpuArray::pinned(Hook::SLOTS, 0);

/// Decisions a hook could not make because a kernel read failed (or a
/// cgroup was deeper than the walk looks), per hook.
#[map]
static ECI_UNDECIDED: PerCpuArray<u64> = PerCpuArray::pinned(Hook::SLOTS, 0);

/// Events lost because the ring buffer was full (index 0).
#[map]
static ECI_EVENT_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

#[inline(always)]
fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Count a decision and report it. Returns `verdict` for tail use.
#[inline(always)]
pub fn report(hook: Hook, cgroup_id: u64, kind: ObjectKind, object: FileId, verdict: i32) -> i32 {
    if verdict != 0 {
        bump(&ECI_DENIALS, hook as u32);
    }
    match ECI_EVENTS.reserve::<AuditEvent>(0) {
        Some(mut entry) => {
            let pid_tgid = bpf_get_current_pid_tgid();
            let uid_gid = bpf_get_current_uid_gid();
            let event = AuditEvent {
                // SAFETY: helper without arguments.
                boot_time_ns: unsafe { bpf_ktime_get_boot_ns() },
                cgroup_id,
                object,
                pid: pid_tgid as u32,
                tgid: (pid_tgid >> 32) as u32,
                uid: uid_gid as u32,
                gid: (uid_gid >> 32) as u32,
                hook: hook as u32,
                object_kind: kind as u32,
                verdict,
                _pad: 0,
                comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
            };
            entry.write(event);
            entry.submit(0);
        }
        None => bump(&ECI_EVENT_DROPS, 0),
    }
    verdict
}
