//! Start-up self tests: `eci_probe` proves that BPF-LSM programs really run
//! in this kernel (`lsm=` without `bpf` lets programs attach and then never
//! calls them, so the agent triggers this hook from its own process and
//! checks the counter moved); `eci_probe_ancestor`, loaded and never
//! attached, tells whether LSM programs may walk cgroup ancestors here, and
//! `eci_probe_verdict_store` whether they may keep verdicts in cgroup local
//! storage.

use crate::{kernel, protection::ECI_VERDICT_STORE};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_ancestor_cgroup_id},
    macros::{lsm, map},
    maps::Array,
    programs::LsmContext,
};

#[unsafe(no_mangle)]
static ECI_PROBE_TGID: u32 = 0;

/// Index 0: times the hook ran in the agent's process.
#[map]
static ECI_PROBE_HITS: Array<u64> = Array::with_max_entries(1, 0);

/// `socket_create(int family, int type, int protocol, int kern)`; never denies.
#[lsm(hook = "socket_create")]
pub fn eci_probe(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    // SAFETY: reading a global; volatile so the loader's value is used.
    let target = unsafe { core::ptr::read_volatile(&ECI_PROBE_TGID) };
    if (bpf_get_current_pid_tgid() >> 32) as u32 == target {
        if let Some(hits) = ECI_PROBE_HITS.get_ptr_mut(0) {
            // SAFETY: single slot; a lost increment only delays the probe.
            unsafe { *hits += 1 };
        }
    }
    previous
}

/// Loaded, never attached: the kernel accepts it when LSM programs may call
/// `bpf_get_current_ancestor_cgroup_id` (Linux 5.14+), and the agent picks
/// the protection mode by that.
#[lsm(hook = "socket_create")]
pub fn eci_probe_ancestor(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    // SAFETY: helper with a scalar argument.
    core::hint::black_box(unsafe { bpf_get_current_ancestor_cgroup_id(1) });
    previous
}

/// Loaded, never attached, and only where the kernel's BTF has cgroup local
/// storage: the kernel accepts it when LSM programs may reach the current
/// task's cgroup as a typed pointer and call `bpf_cgrp_storage_get` (Linux
/// 6.2+), and the agent picks the verdict cache by that.
#[lsm(hook = "socket_create")]
pub fn eci_probe_verdict_store(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if let Some(cgrp) = kernel::current_cgroup() {
        // SAFETY: a BTF-typed cgroup; only the pointer's nullness is used.
        core::hint::black_box(unsafe { ECI_VERDICT_STORE.get_ptr_mut(cgrp) });
    }
    previous
}
