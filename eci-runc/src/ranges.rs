//! Exclusive id ranges, one per container, in a state file under a lock.
//!
//! Crash-safe: every change is written to a temporary file and renamed over
//! the state file while an exclusive `flock` is held, so concurrent
//! `create`s never hand out the same range and a crash leaves either the old
//! or the new state. An allocation whose container no longer exists in
//! runc's state directory (a crash between allocate and start, a `delete`
//! that never came) is reclaimed by the next allocation once it is older
//! than a grace period, so nothing leaks forever.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub const RANGE_SIZE: u32 = 65536;
pub const FIRST_BASE: u32 = 100_000;
/// Default number of ranges (100000 + 4096 * 65536 stays below 2^32).
pub const DEFAULT_MAX_RANGES: u32 = 4096;
/// An allocation younger than this is never reclaimed (runc may not have
/// written its state yet).
pub const GRACE_SECONDS: u64 = 120;

#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("cannot use the eci state directory {dir}: {source}")]
    StateDir { dir: String, source: std::io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: String, source: nix::Error },
    #[error("the range state {path} is corrupt ({source}); move it away to start afresh")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "no free user-id range: all {max} ranges of 65536 ids are in use by running containers; remove stopped containers (`docker container prune`) or raise ECI_MAX_RANGES"
    )]
    Exhausted { max: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub container_id: String,
    pub base: u32,
    /// runc's `--root`, where its state for the container lives.
    pub runc_root: PathBuf,
    pub created_unix: u64,
    /// The cgroup registered with the agent, once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    allocations: Vec<Allocation>,
}

pub struct Ranges {
    dir: PathBuf,
    max: u32,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ranges {
    pub fn new(dir: impl Into<PathBuf>, max: u32) -> Self {
        Self {
            dir: dir.into(),
            max,
        }
    }

    /// `ECI_STATE_DIR` (default /var/lib/eci) and `ECI_MAX_RANGES`.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("ECI_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/lib/eci".into());
        let max = std::env::var("ECI_MAX_RANGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_RANGES);
        Self::new(dir, max)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("ranges.json")
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, RangeError>,
    ) -> Result<T, RangeError> {
        let dir_err = |source| RangeError::StateDir {
            dir: self.dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(dir_err)?;
        let lock_path = self.dir.join("ranges.lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(dir_err)?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, source)| {
            RangeError::Lock {
                path: lock_path.display().to_string(),
                source,
            }
        })?;
        let path = self.path();
        let mut state: State = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| RangeError::Corrupt {
                path: path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(dir_err(e)),
        };
        let result = f(&mut state)?;
        let tmp = self.dir.join("ranges.json.tmp");
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(dir_err)?;
        std::fs::rename(&tmp, &path).map_err(dir_err)?;
        Ok(result)
    }

    /// The container's range, allocating one if it has none.
    pub fn allocate(&self, container_id: &str, runc_root: &Path) -> Result<Allocation, RangeError> {
        let max = self.max;
        self.locked(|state| {
            if let Some(a) = state
                .allocations
                .iter()
                .find(|a| a.container_id == container_id)
            {
                return Ok(a.clone());
            }
            let now = now();
            state.allocations.retain(|a| {
                let young = now.saturating_sub(a.created_unix) < GRACE_SECONDS;
                young || a.runc_root.join(&a.container_id).exists()
            });
            let used: std::collections::BTreeSet<u32> =
                state.allocations.iter().map(|a| a.base).collect();
            let base = (0..max)
                .map(|i| FIRST_BASE + i * RANGE_SIZE)
                .find(|b| !used.contains(b))
                .ok_or(RangeError::Exhausted { max })?;
            let allocation = Allocation {
                container_id: container_id.to_owned(),
                base,
                runc_root: runc_root.to_owned(),
                created_unix: now,
                cgroup: None,
            };
            state.allocations.push(allocation.clone());
            Ok(allocation)
        })
    }

    pub fn set_cgroup(&self, container_id: &str, cgroup: &str) -> Result<(), RangeError> {
        self.locked(|state| {
            for a in state
                .allocations
                .iter_mut()
                .filter(|a| a.container_id == container_id)
            {
                a.cgroup = Some(cgroup.to_owned());
            }
            Ok(())
        })
    }

    pub fn get(&self, container_id: &str) -> Result<Option<Allocation>, RangeError> {
        self.locked(|state| {
            Ok(state
                .allocations
                .iter()
                .find(|a| a.container_id == container_id)
                .cloned())
        })
    }

    /// Free the container's range; returns what it had.
    pub fn free(&self, container_id: &str) -> Result<Option<Allocation>, RangeError> {
        self.locked(|state| {
            let found = state
                .allocations
                .iter()
                .position(|a| a.container_id == container_id);
            Ok(found.map(|i| state.allocations.remove(i)))
        })
    }

    pub fn all(&self) -> Result<Vec<Allocation>, RangeError> {
        self.locked(|state| Ok(state.allocations.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_exclusive_and_reused_after_free() {
        let dir = tempfile::tempdir().unwrap();
        let r = Ranges::new(dir.path(), 8);
        let a = r.allocate("a", dir.path()).unwrap();
        let b = r.allocate("b", dir.path()).unwrap();
        assert_eq!(a.base, FIRST_BASE);
        assert_eq!(b.base, FIRST_BASE + RANGE_SIZE);
        assert_eq!(
            r.allocate("a", dir.path()).unwrap(),
            a,
            "allocation is idempotent"
        );
        r.free("a").unwrap();
        assert_eq!(r.allocate("c", dir.path()).unwrap().base, FIRST_BASE);
    }

    #[test]
    fn exhaustion_is_a_clear_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let r = Ranges::new(dir.path(), 2);
        r.allocate("a", dir.path()).unwrap();
        r.allocate("b", dir.path()).unwrap();
        let e = r.allocate("c", dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("no free user-id range") && e.contains("prune"),
            "{e}"
        );
    }

    #[test]
    fn stale_allocations_of_vanished_containers_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let runc_root = dir.path().join("runc");
        std::fs::create_dir_all(runc_root.join("alive")).unwrap();
        let r = Ranges::new(dir.path().join("state"), 2);
        r.allocate("alive", &runc_root).unwrap();
        r.allocate("crashed", &runc_root).unwrap();
        // Age both beyond the grace period.
        r.locked(|s| {
            for a in &mut s.allocations {
                a.created_unix = 0;
            }
            Ok(())
        })
        .unwrap();
        let c = r.allocate("new", &runc_root).unwrap();
        assert_eq!(
            c.base,
            FIRST_BASE + RANGE_SIZE,
            "the crashed container's range was reclaimed"
        );
        let ids: Vec<String> = r
            .all()
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        assert_eq!(ids, vec!["alive", "new"]);
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    Ranges::new(&path, 64)
                        .allocate(&format!("c{i}"), &path)
                        .unwrap()
                        .base
                })
            })
            .collect();
        let mut bases: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        bases.sort();
        bases.dedup();
        assert_eq!(bases.len(), 16);
    }

    #[test]
    fn a_corrupt_state_file_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ranges.json"), "{not json").unwrap();
        let e = Ranges::new(dir.path(), 4)
            .allocate("a", dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ranges.json")).unwrap(),
            "{not json"
        );
    }
}
