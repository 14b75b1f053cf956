//! Registry mode (kernels whose LSM programs may not call
//! `bpf_get_current_ancestor_cgroup_id`, before Linux 5.14): every
//! descendant of a protected cgroup is in `ECI_PROT_CGROUPS` itself, so the
//! hooks look up the task's own cgroup only (protection.rs).
//!
//! A cgroup made below a protected one is registered here, by the
//! `cgroup_mkdir` tracepoint, with its parent's reasons as its inherited
//! half (`protect_reason::inherited_from`). The tracepoint runs inside
//! mkdir(2), under the cgroup mutex and before the directory is activated,
//! so no task can be moved into the new cgroup before it is registered.
//! Cgroups that existed before their ancestor was protected are registered
//! by the agent's walk of cgroupfs. `cgroup_rmdir` drops an entry that holds
//! inherited reasons only (cgroup ids are never reused, so one left behind
//! would be harmless, but it would take room).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use eci_common::{Hook, protect_reason, undecided, verdict};

use crate::{audit, kernel, protection::ECI_PROT_CGROUPS};

/// A descendant that could not be registered: counted and reported (the
/// agent's next walk registers it); a tracepoint cannot refuse the mkdir.
#[inline(always)]
fn not_registered(cgroup_id: u64) -> i32 {
    audit::undecided(
        Hook::CgroupMkdir,
        cgroup_id,
        undecided::REGISTRY,
        verdict::ALLOW,
    );
    0
}

/// `cgroup_mkdir(struct cgroup *cgrp, const char *path)`
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    // SAFETY: the tracepoint's `struct cgroup *`; probe reads only.
    let Some(cgroup) = (unsafe { kernel::cgroup(cgrp) }) else {
        return not_registered(0);
    };
    if !cgroup.unified {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    let parent = unsafe { ECI_PROT_CGROUPS.get(&cgroup.parent_id) }
        .copied()
        .unwrap_or(0);
    if protect_reason::effective(parent) == 0 {
        return 0;
    }
    let value = protect_reason::inherited_from(parent);
    if ECI_PROT_CGROUPS.insert(&cgroup.id, &value, 0).is_err() {
        return not_registered(cgroup.id);
    }
    0
}

/// `cgroup_rmdir(struct cgroup *cgrp, const char *path)`
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    // SAFETY: the tracepoint's `struct cgroup *`; probe reads only. An entry
    // left behind is harmless (ids are never reused).
    let Some(cgroup) = (unsafe { kernel::cgroup(cgrp) }) else {
        return 0;
    };
    if !cgroup.unified {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    let Some(value) = (unsafe { ECI_PROT_CGROUPS.get(&cgroup.id) }).copied() else {
        return 0;
    };
    // A cgroup with reasons of its own stays until the agent is told.
    if protect_reason::own(value) == 0 {
        let _ = ECI_PROT_CGROUPS.remove(&cgroup.id);
    }
    0
}
