//! The one question every hook asks first: is the current task protected?
//!
//! Unprotected tasks (the VM itself, the agent, the engine) pay exactly one
//! hash lookup here and leave.

use aya_ebpf::{helpers::generated::bpf_get_current_cgroup_id, macros::map, maps::HashMap};
use eci_common::MAX_PROTECTED_CGROUPS;

/// cgroup v2 id -> `protect_reason` bits.
#[map]
static ECI_PROT_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_PROTECTED_CGROUPS, 0);

/// The current task's cgroup id when that cgroup is protected.
#[inline(always)]
pub fn protected_cgroup() -> Option<u64> {
    // SAFETY: helper without arguments, allowed in LSM programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is a plain u32 and is only compared, never kept.
    match unsafe { ECI_PROT_CGROUPS.get(&cgroup_id) } {
        Some(_) => Some(cgroup_id),
        None => None,
    }
}
