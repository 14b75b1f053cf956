//! Where the rules live: in the kernel's pinned maps (normal operation) or,
//! in the test-only unenforced mode, in memory. The control server and the
//! socket watcher only see this interface.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, MapData, MapError};
use eci_common::FileId;

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("updating the kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

pub trait RuleStore: Send {
    fn protect_cgroup(&mut self, id: u64, reason: u32) -> Result<(), RuleError>;
    fn unprotect_cgroup(&mut self, id: u64) -> Result<bool, RuleError>;
    fn protected_cgroups(&self) -> BTreeMap<u64, u32>;
    /// Make the protected-socket set exactly `wanted`.
    fn sync_sockets(&mut self, wanted: &BTreeSet<FileId>) -> Result<(), RuleError>;
    fn enforced_in_kernel(&self) -> bool;
}

pub struct KernelRules {
    pub cgroups: HashMap<MapData, u64, u32>,
    pub sockets: HashMap<MapData, FileId, u32>,
}

impl RuleStore for KernelRules {
    fn protect_cgroup(&mut self, id: u64, reason: u32) -> Result<(), RuleError> {
        let reasons = self.cgroups.get(&id, 0).unwrap_or(0) | reason;
        self.cgroups
            .insert(id, reasons, 0)
            .map_err(|source| RuleError::Map {
                map: "protected cgroups",
                source,
            })
    }

    fn unprotect_cgroup(&mut self, id: u64) -> Result<bool, RuleError> {
        match self.cgroups.remove(&id) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(RuleError::Map {
                map: "protected cgroups",
                source,
            }),
        }
    }

    fn protected_cgroups(&self) -> BTreeMap<u64, u32> {
        self.cgroups.iter().filter_map(Result::ok).collect()
    }

    fn sync_sockets(&mut self, wanted: &BTreeSet<FileId>) -> Result<(), RuleError> {
        let err = |source| RuleError::Map {
            map: "protected sockets",
            source,
        };
        // Add first, then remove: never a moment with fewer rules than needed.
        for id in wanted {
            self.sockets.insert(*id, 1, 0).map_err(err)?;
        }
        let present: Vec<FileId> = self.sockets.keys().filter_map(Result::ok).collect();
        for id in present.into_iter().filter(|id| !wanted.contains(id)) {
            match self.sockets.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(err(source)),
            }
        }
        Ok(())
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
    sockets: BTreeSet<FileId>,
}

impl RuleStore for UnenforcedRules {
    fn protect_cgroup(&mut self, id: u64, reason: u32) -> Result<(), RuleError> {
        *self.cgroups.entry(id).or_default() |= reason;
        Ok(())
    }

    fn unprotect_cgroup(&mut self, id: u64) -> Result<bool, RuleError> {
        Ok(self.cgroups.remove(&id).is_some())
    }

    fn protected_cgroups(&self) -> BTreeMap<u64, u32> {
        self.cgroups.clone()
    }

    fn sync_sockets(&mut self, wanted: &BTreeSet<FileId>) -> Result<(), RuleError> {
        self.sockets = wanted.clone();
        Ok(())
    }

    fn enforced_in_kernel(&self) -> bool {
        false
    }
}
