//! Reporting: one ring-buffer event per decision, denial counters per hook
//! and per (cgroup, hook), and a counter of events the ring buffer could
//! not take.
//!
//! Each cgroup may put up to `ECI_AUDIT_LIMIT[0]` events a second (a
//! window of `AUDIT_WINDOW_NS`) in the ring buffer; its further decisions in
//! that window are counted per cgroup and hook (`ECI_AUDIT_SUPPR`), and the
//! agent reports the counts as one summary line per cgroup. So a container
//! that storms cannot crowd another's events out of the ring buffer, and
//! every decision is a line of its own or counted under its cgroup.
//!
//! The limit alone does not protect the ring buffer when the agent drains
//! it slower than the limits admit (many cgroups at their limit, or an
//! agent starved of CPU). So half the ring is kept for first events: while
//! more than half of it is unread, a cgroup's event after its first of the
//! window is counted, not put in. A container that denies now and then
//! still gets each denial as a line of its own.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use eci_common::{
    AUDIT_WINDOW_NS, AuditEvent, AuditKey, AuditWindow, EVENTS_RING_BYTES, FileId, Hook,
    MAX_AUDIT_CGROUPS, MAX_AUDIT_SUPPRESSED, ObjectKind,
};

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

/// Index 0: events per cgroup and window (set by the agent from the
/// policy; 0 before it does, which limits nothing).
#[map]
static ECI_AUDIT_LIMIT: Array<u64> = Array::pinned(1, 0);

/// cgroup id -> its current window.
#[map]
static ECI_AUDIT_WINDOWS: HashMap<u64, AuditWindow> = HashMap::pinned(MAX_AUDIT_CGROUPS, 0);

/// (cgroup id, hook) -> decisions kept out of the ring buffer, ever
/// (monotonic; the agent deletes the entries of removed cgroups).
#[map]
static ECI_AUDIT_SUPPR: HashMap<AuditKey, u64> = HashMap::pinned(MAX_AUDIT_SUPPRESSED, 0);

/// (cgroup id, hook) -> denials, ever (monotonic; the agent deletes the
/// entries of cgroups removed a while ago): the metrics' per-container
/// denial counts, which survive agent restarts. A full map leaves a
/// denial out of these (never out of `ECI_DENIALS`).
#[map]
static ECI_CG_DENIALS: HashMap<AuditKey, u64> = HashMap::pinned(MAX_AUDIT_SUPPRESSED, 0);

/// (cgroup id, hook) -> the count of `ECI_AUDIT_SUPPR` the agent has
/// reported: written by the agent only, pinned so a restarted agent reports
/// each suppressed decision once.
#[map]
static ECI_AUDIT_REPORTED: HashMap<AuditKey, u64> = HashMap::pinned(MAX_AUDIT_SUPPRESSED, 0);

/// Whether more than half the ring buffer is unread: then only a cgroup's
/// first event of a window goes in.
#[inline(always)]
fn ring_crowded() -> bool {
    ECI_EVENTS.query(BPF_RB_AVAIL_DATA as u64) > (EVENTS_RING_BYTES / 2) as u64
}

/// Whether this decision of `cgroup_id` may still be an event of its own in
/// the cgroup's current window. The window's fields are updated without
/// atomics: racing CPUs may let a few events more through, never fewer
/// counted (the counts of what is kept out are atomic).
#[inline(always)]
fn within_limit(cgroup_id: u64, now: u64) -> bool {
    let limit = ECI_AUDIT_LIMIT.get(0).copied().unwrap_or(0);
    if limit == 0 {
        return true;
    }
    match ECI_AUDIT_WINDOWS.get_ptr_mut(&cgroup_id) {
        Some(window) => {
            // SAFETY: a map value, valid for the program's run.
            let window = unsafe { &mut *window };
            if now.wrapping_sub(window.start_ns) >= AUDIT_WINDOW_NS {
                window.start_ns = now;
                window.events = 1;
                true
            } else if window.events < limit && !ring_crowded() {
                window.events += 1;
                true
            } else {
                false
            }
        }
        None => {
            // Full map: this cgroup goes unlimited (its events are lines,
            // or counted drops).
            let first = AuditWindow {
                start_ns: now,
                events: 1,
            };
            let _ = ECI_AUDIT_WINDOWS.insert(&cgroup_id, &first, BPF_NOEXIST as u64);
            true
        }
    }
}

/// Add one to the (cgroup, hook) count in `counts`; false when it cannot
/// be counted (the map is full).
#[inline(always)]
fn count_in(counts: &HashMap<AuditKey, u64>, hook: Hook, cgroup_id: u64) -> bool {
    let key = AuditKey {
        cgroup_id,
        hook: hook as u32,
        _pad: 0,
    };
    for _ in 0..2 {
        if let Some(count) = counts.get_ptr_mut(&key) {
            // SAFETY: a map value, valid for the program's run; shared with
            // other CPUs, so the add is atomic (BPF_XADD: its result unused).
            let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
            return true;
        }
        // Another CPU may insert it first: then the second look finds it.
        if counts.insert(&key, &1, BPF_NOEXIST as u64).is_ok() {
            return true;
        }
    }
    false
}

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
        let _ = count_in(&ECI_CG_DENIALS, hook, cgroup_id);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // A decision kept out of the ring buffer is counted instead; one that
    // cannot be counted (full map) is reported after all.
    if !within_limit(cgroup_id, now) && count_in(&ECI_AUDIT_SUPPR, hook, cgroup_id) {
        return verdict;
    }
    match ECI_EVENTS.reserve::<AuditEvent>(0) {
        Some(mut entry) => {
            let pid_tgid = bpf_get_current_pid_tgid();
            let uid_gid = bpf_get_current_uid_gid();
            let event = AuditEvent {
                boot_time_ns: now,
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
