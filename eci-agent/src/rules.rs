//! Where the rules live: in the kernel's pinned maps (normal operation) or,
//! in the test-only unenforced mode, in memory. The control server and the
//! background refreshers only see this interface.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, HashMap, MapData, MapError};
use eci_common::{FileId, protect_reason};

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("updating the kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

pub trait RuleStore: Send {
    /// Add `reason` to the cgroup's protection reasons.
    fn protect_cgroup(&mut self, id: u64, reason: u32) -> Result<(), RuleError>;
    /// Remove `reason`; returns the reasons left (0: no longer protected), or
    /// `None` when the cgroup had that reason not.
    fn unprotect_cgroup(&mut self, id: u64, reason: u32) -> Result<Option<u32>, RuleError>;
    /// Every entry of the protected map: own and inherited reasons.
    fn protected_cgroups(&self) -> BTreeMap<u64, u32>;
    /// Set the reasons a cgroup inherits (registry mode; the high half,
    /// `protect_reason::inherited_from`), keeping its own; an entry left
    /// with no reason goes.
    fn set_inherited(&mut self, id: u64, inherited: u32) -> Result<(), RuleError>;
    /// Make the protected-socket set exactly `wanted`.
    fn sync_sockets(&mut self, wanted: &BTreeSet<FileId>) -> Result<(), RuleError>;
    /// Make the set of VM namespace inode numbers exactly `wanted`.
    fn sync_vm_namespaces(&mut self, wanted: &BTreeSet<u64>) -> Result<(), RuleError>;
    /// Make the set of denied file-system magics exactly `wanted`.
    fn sync_denied_filesystems(&mut self, wanted: &BTreeSet<u64>) -> Result<(), RuleError>;
    /// Make the set of allowed devices (`eci_common::device_key`) exactly `wanted`.
    fn sync_allowed_devices(&mut self, wanted: &BTreeSet<u64>) -> Result<(), RuleError>;
    /// Record the mounts a container started with.
    fn set_immutable_mounts(&mut self, cgroup_id: u64, mount_ids: &[u32]) -> Result<(), RuleError>;
    /// Forget a container's immutable mounts.
    fn clear_immutable_mounts(&mut self, cgroup_id: u64) -> Result<usize, RuleError>;
    fn enforced_in_kernel(&self) -> bool;
}

pub struct KernelRules {
    pub cgroups: HashMap<MapData, u64, u32>,
    pub generation: Array<MapData, u64>,
    pub sockets: HashMap<MapData, FileId, u32>,
    pub vm_namespaces: HashMap<MapData, u64, u32>,
    pub denied_filesystems: HashMap<MapData, u64, u32>,
    pub immutable_mounts: HashMap<MapData, u32, u64>,
    pub allowed_devices: HashMap<MapData, u64, u32>,
}

/// Add what is missing first, then remove what is extra: never a moment
/// with fewer rules than both the old and the new set hold.
fn sync_set<K: aya::Pod + Ord>(
    map: &mut HashMap<MapData, K, u32>,
    wanted: &BTreeSet<K>,
    name: &'static str,
) -> Result<(), RuleError> {
    let err = |source| RuleError::Map { map: name, source };
    let present: BTreeSet<K> = map.keys().filter_map(Result::ok).collect();
    for key in wanted.difference(&present) {
        map.insert(*key, 1, 0).map_err(err)?;
    }
    for key in present.difference(wanted) {
        match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(err(source)),
        }
    }
    Ok(())
}

impl KernelRules {
    /// Retire every cached protection verdict (after a change of cgroups).
    fn bump_generation(&mut self) -> Result<(), RuleError> {
        let err = |source| RuleError::Map {
            map: "protection generation",
            source,
        };
        let current = self.generation.get(&0, 0).map_err(err)?;
        self.generation
            .set(0, current.wrapping_add(1), 0)
            .map_err(err)
    }
}

impl RuleStore for KernelRules {
    fn protect_cgroup(&mut self, id: u64, reason: u32) -> Result<(), RuleError> {
        let reasons = self.cgroups.get(&id, 0).unwrap_or(0);
        if reasons & reason == reason {
            return Ok(());
        }
        self.cgroups
            .insert(id, reasons | reason, 0)
            .map_err(|source| RuleError::Map {
                map: "protected cgroups",
                source,
            })?;
        self.bump_generation()
    }

    fn unprotect_cgroup(&mut self, id: u64, reason: u32) -> Result<Option<u32>, RuleError> {
        let err = |source| RuleError::Map {
            map: "protected cgroups",
            source,
        };
        let reasons = match self.cgroups.get(&id, 0) {
            Ok(r) => r,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => return Err(err(source)),
        };
        if reasons & reason == 0 {
            return Ok(None);
        }
        let left = reasons & !reason;
        if left == 0 {
            self.cgroups.remove(&id).map_err(err)?;
        } else {
            self.cgroups.insert(id, left, 0).map_err(err)?;
        }
        self.bump_generation()?;
        Ok(Some(left))
    }

    fn protected_cgroups(&self) -> BTreeMap<u64, u32> {
        self.cgroups.iter().filter_map(Result::ok).collect()
    }

    fn set_inherited(&mut self, id: u64, inherited: u32) -> Result<(), RuleError> {
        let err = |source| RuleError::Map {
            map: "protected cgroups",
            source,
        };
        let current = match self.cgroups.get(&id, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => 0,
            Err(source) => return Err(err(source)),
        };
        let wanted = protect_reason::own(current) | inherited;
        if wanted == current {
            return Ok(());
        }
        if wanted == 0 {
            match self.cgroups.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(err(source)),
            }
        } else {
            self.cgroups.insert(id, wanted, 0).map_err(err)?;
        }
        self.bump_generation()
    }

    fn sync_sockets(&mut self, wanted: &BTreeSet<FileId>) -> Result<(), RuleError> {
        sync_set(&mut self.sockets, wanted, "protected sockets")
    }

    fn sync_vm_namespaces(&mut self, wanted: &BTreeSet<u64>) -> Result<(), RuleError> {
        sync_set(&mut self.vm_namespaces, wanted, "VM namespaces")
    }

    fn sync_denied_filesystems(&mut self, wanted: &BTreeSet<u64>) -> Result<(), RuleError> {
        sync_set(&mut self.denied_filesystems, wanted, "denied file systems")
    }

    fn sync_allowed_devices(&mut self, wanted: &BTreeSet<u64>) -> Result<(), RuleError> {
        sync_set(&mut self.allowed_devices, wanted, "allowed devices")
    }

    fn set_immutable_mounts(&mut self, cgroup_id: u64, mount_ids: &[u32]) -> Result<(), RuleError> {
        for id in mount_ids {
            self.immutable_mounts
                .insert(*id, cgroup_id, 0)
                .map_err(|source| RuleError::Map {
                    map: "immutable mounts",
                    source,
                })?;
        }
        Ok(())
    }

    fn clear_immutable_mounts(&mut self, cgroup_id: u64) -> Result<usize, RuleError> {
        let owned: Vec<u32> = self
            .immutable_mounts
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| *c == cgroup_id)
            .map(|(m, _)| m)
            .collect();
        for id in &owned {
            match self.immutable_mounts.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(RuleError::Map {
                        map: "immutable mounts",
                        source,
                    });
                }
            }
        }
        Ok(owned.len())
    }

    fn enforced_in_kernel(&self) -> bool {
        true
    }
}

/// Rules kept in memory only: nothing is enforced. For host-side tests on
/// kernels that refuse BPF-LSM.
#[derive(Default)]
pub struct UnenforcedRules {
    cgroups: BTreeMap<u64, u32>,
    immutable_mounts: BTreeMap<u32, u64>,
}

impl RuleStore for UnenforcedRules {
    fn protect_cgroup(&mut self, id: u64, reason: u32) -> Result<(), RuleError> {
        *self.cgroups.entry(id).or_default() |= reason;
        Ok(())
    }

    fn unprotect_cgroup(&mut self, id: u64, reason: u32) -> Result<Option<u32>, RuleError> {
        let Some(reasons) = self.cgroups.get(&id).copied() else {
            return Ok(None);
        };
        if reasons & reason == 0 {
            return Ok(None);
        }
        let left = reasons & !reason;
        if left == 0 {
            self.cgroups.remove(&id);
        } else {
            self.cgroups.insert(id, left);
        }
        Ok(Some(left))
    }

    fn protected_cgroups(&self) -> BTreeMap<u64, u32> {
        self.cgroups.clone()
    }

    fn set_inherited(&mut self, id: u64, inherited: u32) -> Result<(), RuleError> {
        let current = self.cgroups.get(&id).copied().unwrap_or(0);
        let wanted = protect_reason::own(current) | inherited;
        if wanted == 0 {
            self.cgroups.remove(&id);
        } else {
            self.cgroups.insert(id, wanted);
        }
        Ok(())
    }

    fn sync_sockets(&mut self, _: &BTreeSet<FileId>) -> Result<(), RuleError> {
        Ok(())
    }

    fn sync_vm_namespaces(&mut self, _: &BTreeSet<u64>) -> Result<(), RuleError> {
        Ok(())
    }

    fn sync_denied_filesystems(&mut self, _: &BTreeSet<u64>) -> Result<(), RuleError> {
        Ok(())
    }

    fn sync_allowed_devices(&mut self, _: &BTreeSet<u64>) -> Result<(), RuleError> {
        Ok(())
    }

    fn set_immutable_mounts(&mut self, cgroup_id: u64, mount_ids: &[u32]) -> Result<(), RuleError> {
        self.immutable_mounts
            .extend(mount_ids.iter().map(|m| (*m, cgroup_id)));
        Ok(())
    }

    fn clear_immutable_mounts(&mut self, cgroup_id: u64) -> Result<usize, RuleError> {
        let before = self.immutable_mounts.len();
        self.immutable_mounts.retain(|_, c| *c != cgroup_id);
        Ok(before - self.immutable_mounts.len())
    }

    fn enforced_in_kernel(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eci_common::protect_reason::{POLICY_PARENT, REGISTERED};

    #[test]
    fn reasons_accumulate_and_unwind() {
        let mut rules = UnenforcedRules::default();
        rules.protect_cgroup(7, REGISTERED).unwrap();
        rules.protect_cgroup(7, POLICY_PARENT).unwrap();
        assert_eq!(
            rules.unprotect_cgroup(7, REGISTERED).unwrap(),
            Some(POLICY_PARENT)
        );
        assert_eq!(rules.unprotect_cgroup(7, REGISTERED).unwrap(), None);
        assert_eq!(rules.unprotect_cgroup(7, POLICY_PARENT).unwrap(), Some(0));
        assert!(rules.protected_cgroups().is_empty());
    }

    #[test]
    fn immutable_mounts_are_per_container() {
        let mut rules = UnenforcedRules::default();
        rules.set_immutable_mounts(1, &[10, 11]).unwrap();
        rules.set_immutable_mounts(2, &[20]).unwrap();
        assert_eq!(rules.clear_immutable_mounts(1).unwrap(), 2);
        assert_eq!(rules.clear_immutable_mounts(1).unwrap(), 0);
        assert_eq!(rules.clear_immutable_mounts(2).unwrap(), 1);
    }
}
