//! The one question every hook asks first: is the current task protected?
//!
//! A cgroup is protected when it, or one of its ancestors, is in
//! `ECI_PROT_CGROUPS` (registered containers, and the policy's protected
//! parents such as `/docker`, which covers every container below them,
//! whichever runtime made it). Two ways to find out, chosen per kernel at
//! load (`ECI_PROTECTION_MODE`; the verifier drops the other one, so a
//! kernel that lacks the walk's helper never sees the call):
//!
//! - ancestor walk (Linux 5.14+, where LSM programs may call
//!   `bpf_get_current_ancestor_cgroup_id`): the walk up the hierarchy
//!   happens once per cgroup and policy generation; after that the verdict
//!   comes from an LRU cache, so an unprotected task (the VM itself, the
//!   agent, the engine) pays one hash lookup plus an array read per hook;
//! - registry (older kernels): every descendant of a protected cgroup is in
//!   the map itself (registry.rs), so one lookup of the task's own cgroup
//!   answers.

use aya_ebpf::{
    btf_maps::CgrpStorage,
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap},
};
use eci_common::{
    CachedVerdict, Hook, MAX_CGROUP_DEPTH, MAX_PROTECTED_CGROUPS, StoredVerdict,
    VERDICT_CACHE_ENTRIES, protect_reason, protection_mode, undecided, verdict, verdict_cache,
};

use crate::{audit, kernel};

/// Set by the agent at load: a `protection_mode` value.
#[unsafe(no_mangle)]
static ECI_PROTECTION_MODE: u32 = protection_mode::ANCESTOR_WALK;

/// cgroup v2 id -> `protect_reason` bits.
#[map]
pub static ECI_PROT_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_PROTECTED_CGROUPS, 0);

/// Set by the agent at load: a `verdict_cache` value.
#[unsafe(no_mangle)]
static ECI_VERDICT_CACHE: u32 = verdict_cache::LRU_HASH;

/// cgroup v2 id -> verdict computed in some generation.
#[map]
static ECI_VERDICTS: LruHashMap<u64, CachedVerdict> = LruHashMap::pinned(VERDICT_CACHE_ENTRIES, 0);

/// The verdict in the cgroup's own local storage (Linux 6.2+). On older
/// kernels the agent gives the loader a stand-in map for it, and the
/// verifier never reaches the code that uses it.
#[btf_map]
pub static ECI_VERDICT_STORE: CgrpStorage<StoredVerdict> = CgrpStorage::new();

/// Index 0: the policy generation. The agent bumps it after every change
/// of `ECI_PROT_CGROUPS`, which retires every cached verdict at once.
#[map]
static ECI_PROT_GEN: Array<u64> = Array::pinned(1, 0);

/// A protected task's cgroup and why it is protected.
#[derive(Clone, Copy)]
pub struct Protected {
    pub cgroup_id: u64,
    /// `protect_reason` bits of the cgroup and every protected ancestor.
    pub reasons: u32,
}

/// The `protect_reason` bits of the current task's cgroup `own`: its own
/// entry (a registered container, found at any depth) and those of every
/// ancestor in the map; 0 when none is protected. A task deeper than the
/// walk looks is undecided: protected by the policy (fail closed), counted
/// and reported under `hook`.
#[inline(always)]
fn protection_reasons(hook: Hook, own: u64) -> u32 {
    let mut reasons = registered_reasons(own);
    // Level 0 is the root cgroup, which is never protected.
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper with a scalar argument; 0 means "no such level".
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == own {
            return reasons;
        }
        reasons |= registered_reasons(id);
        level += 1;
    }
    audit::undecided(hook, own, undecided::CGROUP_DEPTH, verdict::ALLOW);
    reasons | protect_reason::POLICY_PARENT
}

/// The `protect_reason` bits that apply to cgroup `id` by its own entry
/// (in registry mode that includes what it inherits); 0 without one.
#[inline(always)]
fn registered_reasons(id: u64) -> u32 {
    // SAFETY: the value is copied out at once.
    let value = unsafe { ECI_PROT_CGROUPS.get(&id) }.copied().unwrap_or(0);
    protect_reason::effective(value)
}

#[inline(always)]
fn registry_mode() -> bool {
    // SAFETY: reading a global; volatile so the loader's value is used (a
    // constant of a frozen map to the verifier, which prunes the other way).
    unsafe { core::ptr::read_volatile(&ECI_PROTECTION_MODE) == protection_mode::REGISTRY }
}

/// The current task's cgroup when that cgroup is protected.
#[inline(always)]
pub fn protected_cgroup(hook: Hook) -> Option<Protected> {
    if !registry_mode() && verdict_store() {
        return stored_protection(hook);
    }
    let cgroup_id = current_cgroup_id();
    let reasons = if registry_mode() {
        registered_reasons(cgroup_id)
    } else {
        cached_reasons(hook, cgroup_id)
    };
    (reasons != 0).then_some(Protected { cgroup_id, reasons })
}

#[inline(always)]
fn current_cgroup_id() -> u64 {
    // SAFETY: helper without arguments, allowed in LSM programs.
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn verdict_store() -> bool {
    // SAFETY: as in registry_mode.
    unsafe { core::ptr::read_volatile(&ECI_VERDICT_CACHE) == verdict_cache::CGROUP_STORAGE }
}

#[inline(always)]
fn generation() -> u64 {
    ECI_PROT_GEN.get(0).copied().unwrap_or(0)
}

/// Ancestor walk with the LRU hash: the reasons of `cgroup_id` from the
/// cache, or walked and cached.
#[inline(always)]
fn cached_reasons(hook: Hook, cgroup_id: u64) -> u32 {
    let generation = generation();
    // SAFETY: the value is copied out at once.
    let cached = unsafe { ECI_VERDICTS.get(&cgroup_id) }.copied();
    match cached {
        Some(v) if v.generation == generation => v.protected as u32,
        _ => {
            let reasons = protection_reasons(hook, cgroup_id);
            let verdict = CachedVerdict {
                generation,
                protected: reasons as u64,
            };
            let _ = ECI_VERDICTS.insert(&cgroup_id, &verdict, 0);
            reasons
        }
    }
}

/// Ancestor walk with the verdict store: the entry of the current task's
/// cgroup (made zeroed on first use) answers; an unprotected task leaves
/// without its cgroup's id even being read. When the kernel offers no
/// entry (no memory, or the storage busy on this CPU) the walk answers
/// uncached.
#[inline(always)]
fn stored_protection(hook: Hook) -> Option<Protected> {
    let generation = generation();
    let entry = match kernel::current_cgroup() {
        // SAFETY: a BTF-typed cgroup of the current task; the helper checks
        // the rest and returns null when it has no entry to give.
        Some(cgrp) => unsafe { ECI_VERDICT_STORE.get_or_insert_ptr_mut(cgrp, None) },
        None => core::ptr::null_mut(),
    };
    // SAFETY: the kernel's entry for this cgroup, valid for this program
    // run; one aligned 64-bit load (another CPU writes whole words).
    let stored = (!entry.is_null())
        .then(|| unsafe { core::ptr::read_volatile(entry) }.reasons_in(generation))
        .flatten();
    let cgroup_id;
    let reasons = match stored {
        Some(0) => return None,
        Some(reasons) => {
            cgroup_id = current_cgroup_id();
            reasons
        }
        None => {
            cgroup_id = current_cgroup_id();
            let reasons = protection_reasons(hook, cgroup_id);
            if !entry.is_null() {
                // SAFETY: as above; one aligned 64-bit store.
                unsafe {
                    core::ptr::write_volatile(entry, StoredVerdict::new(generation, reasons))
                };
            }
            reasons
        }
    };
    (reasons != 0).then_some(Protected { cgroup_id, reasons })
}

/// The prologue every hook starts with: a denial by an earlier LSM stands,
/// and an unprotected task leaves at once. `Ok` carries the protected
/// task's cgroup; `Err` the value the hook returns now.
#[inline(always)]
pub fn enter(hook: Hook, previous: i32) -> Result<Protected, i32> {
    if previous != 0 {
        return Err(previous);
    }
    protected_cgroup(hook).ok_or(verdict::ALLOW)
}
