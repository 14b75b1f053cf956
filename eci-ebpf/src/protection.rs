//! The one question every hook asks first: is the current task protected?
//!
//! A cgroup is protected when it, or one of its ancestors, is in
//! `ECI_PROT_CGROUPS` (registered containers, and the policy's protected
//! parents such as `/docker`, which covers every container below them,
//! whichever runtime made it). The walk up the hierarchy happens once per
//! cgroup and policy generation; after that the verdict comes from an LRU
//! cache, so an unprotected task (the VM itself, the agent, the engine) pays
//! one hash lookup plus an array read per hook.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use eci_common::{CachedVerdict, MAX_CGROUP_DEPTH, MAX_PROTECTED_CGROUPS, VERDICT_CACHE_ENTRIES};

/// cgroup v2 id -> `protect_reason` bits.
#[map]
static ECI_PROT_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_PROTECTED_CGROUPS, 0);

/// cgroup v2 id -> verdict computed in some generation.
#[map]
static ECI_VERDICTS: LruHashMap<u64, CachedVerdict> = LruHashMap::pinned(VERDICT_CACHE_ENTRIES, 0);

/// Index 0: the policy generation. The agent bumps it after every change
/// of `ECI_PROT_CGROUPS`, which retires every cached verdict at once.
#[map]
static ECI_PROT_GEN: Array<u64> = Array::pinned(1, 0);

#[inline(always)]
fn walk_up_is_protected() -> bool {
    // Level 0 is the root cgroup, which is never protected.
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper with a scalar argument; 0 means "no such level".
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false;
        }
        // SAFETY: presence check only.
        if unsafe { ECI_PROT_CGROUPS.get(&id) }.is_some() {
            return true;
        }
        level += 1;
    }
    false
}

/// The current task's cgroup id when that cgroup is protected.
#[inline(always)]
pub fn protected_cgroup() -> Option<u64> {
    // SAFETY: helper without arguments, allowed in LSM programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let generation = ECI_PROT_GEN.get(0).copied().unwrap_or(0);
    // SAFETY: the value is copied out at once.
    let cached = unsafe { ECI_VERDICTS.get(&cgroup_id) }.copied();
    let protected = match cached {
        Some(v) if v.generation == generation => v.protected != 0,
        _ => {
            let protected = walk_up_is_protected();
            let verdict = CachedVerdict {
                generation,
                protected: protected as u64,
            };
            let _ = ECI_VERDICTS.insert(&cgroup_id, &verdict, 0);
            protected
        }
    };
    if protected { Some(cgroup_id) } else { None }
}
