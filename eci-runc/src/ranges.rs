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

/// Where the ranges lie: `first_base`, `first_base + step`, ... (`max` of
/// them), each `RANGE_SIZE` ids long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub first_base: u32,
    pub step: u32,
    pub max: u32,
}

impl Default for Geometry {
    fn default() -> Self {
        Self {
            first_base: FIRST_BASE,
            step: RANGE_SIZE,
            max: DEFAULT_MAX_RANGES,
        }
    }
}

impl Geometry {
    /// `ECI_FIRST_BASE`, `ECI_RANGE_STEP` (at least 65536) and
    /// `ECI_MAX_RANGES`; the defaults for what is unset.
    pub fn from_env() -> Result<Self, RangeError> {
        let read = |name: &'static str, default: u32| match std::env::var(name) {
            Ok(v) => v.trim().parse::<u32>().map_err(|_| RangeError::Setting {
                name,
                value: v.clone(),
            }),
            Err(_) => Ok(default),
        };
        let geometry = Self {
            first_base: read("ECI_FIRST_BASE", FIRST_BASE)?,
            step: read("ECI_RANGE_STEP", RANGE_SIZE)?,
            max: read("ECI_MAX_RANGES", DEFAULT_MAX_RANGES)?,
        };
        geometry.check()?;
        Ok(geometry)
    }

    fn check(&self) -> Result<(), RangeError> {
        let last_end = u64::from(self.first_base)
            + u64::from(self.step) * u64::from(self.max.saturating_sub(1))
            + u64::from(RANGE_SIZE);
        if self.step < RANGE_SIZE
            || self.first_base < RANGE_SIZE
            || self.max == 0
            || last_end > u64::from(u32::MAX)
        {
            return Err(RangeError::Geometry(*self));
        }
        Ok(())
    }

    pub fn base(&self, index: u32) -> u32 {
        self.first_base + index * self.step
    }

    /// The id inside its container of a VM-side id that lies in one of the
    /// ranges (`None` outside every range).
    pub fn container_id_of(&self, vm_id: u32) -> Option<u32> {
        let offset = vm_id.checked_sub(self.first_base)?;
        let (index, inner) = (offset / self.step, offset % self.step);
        (index < self.max && inner < RANGE_SIZE).then_some(inner)
    }
}
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
    #[error("{name}={value:?} is not a number")]
    Setting { name: &'static str, value: String },
    #[error(
        "bad id-range settings {0:?}: the step must be at least 65536, the first base at least 65536 (ids 0-65535 are the VM's), and the last range must end below 2^32; fix ECI_FIRST_BASE, ECI_RANGE_STEP or ECI_MAX_RANGES"
    )]
    Geometry(Geometry),
    #[error(
        "no free user-id range: all {max} ranges of 65536 ids are in use by running containers; remove stopped containers (`docker container prune`) or raise ECI_MAX_RANGES"
    )]
    Exhausted { max: u32 },
    #[error(
        "the container whose namespaces this one would share (range {base}) is gone; start it again, then this one"
    )]
    NotHeld { base: u32 },
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
    /// The overlay upper layer shifted into this range, to shift back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shifted_upper: Option<PathBuf>,
    /// The engine's overlay that eci's took the place of, to put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_rootfs: Option<EngineRootfs>,
    /// The bundle whose config.json was rewritten (the original is kept
    /// next to it and put back at release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// The agent serves a Docker API proxy for this container (to close).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker_api_proxy: bool,
    /// The container mounts its cgroup writable (`--privileged`): its
    /// cgroup is delegated to its root at registration.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegate_cgroup: bool,
    /// The container's init, once runc created it (`start` opens its exec
    /// fifo itself for this process only; see [`crate::start`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<crate::start::InitProcess>,
    /// Its spec has poststart hooks: `start` is runc's (runc 1.4 on runs
    /// them there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub poststart_hooks: bool,
}

/// Where the engine had mounted the container's overlay, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRootfs {
    pub root: PathBuf,
    /// The overlay's mount options as the kernel showed them.
    pub options: String,
}

/// Whether a locked step changes the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// A new allocation, and the stale ones it reclaimed: their mounts, agent
/// registration and shifted layers are the caller's to release.
#[derive(Debug)]
pub struct Allocated {
    pub allocation: Allocation,
    pub reclaimed: Vec<Allocation>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    allocations: Vec<Allocation>,
}

pub struct Ranges {
    dir: PathBuf,
    geometry: Geometry,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ranges {
    pub fn new(dir: impl Into<PathBuf>, geometry: Geometry) -> Self {
        Self {
            dir: dir.into(),
            geometry,
        }
    }

    /// `ECI_STATE_DIR` (default /var/lib/eci) and [`Geometry::from_env`].
    pub fn from_env() -> Result<Self, RangeError> {
        let dir = std::env::var_os("ECI_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/lib/eci".into());
        Ok(Self::new(dir, Geometry::from_env()?))
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn path(&self) -> PathBuf {
        self.dir.join("ranges.json")
    }

    fn locked<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, RangeError>,
    ) -> Result<T, RangeError> {
        self.locked_as(Access::Write, f)
    }

    /// Under the lock, `f` on the state; written back only for
    /// [`Access::Write`] (a read leaves the file as it is: one write and
    /// rename less per look-up, and the lock held that much shorter).
    fn locked_as<T>(
        &self,
        access: Access,
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
        if access == Access::Read {
            return Ok(result);
        }
        let tmp = self.dir.join("ranges.json.tmp");
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(dir_err)?;
        std::fs::rename(&tmp, &path).map_err(dir_err)?;
        Ok(result)
    }

    /// The container's range, allocating one if it has none.
    pub fn allocate(&self, container_id: &str, runc_root: &Path) -> Result<Allocated, RangeError> {
        self.allocate_in(container_id, runc_root, None)
    }

    /// The range `base` of the container whose namespaces this one joins,
    /// recorded for this one too: a range stays reserved while any
    /// container holding it lives. Refused if no container holds it.
    pub fn allocate_joined(
        &self,
        container_id: &str,
        runc_root: &Path,
        base: u32,
    ) -> Result<Allocated, RangeError> {
        self.allocate_in(container_id, runc_root, Some(base))
    }

    fn allocate_in(
        &self,
        container_id: &str,
        runc_root: &Path,
        joined: Option<u32>,
    ) -> Result<Allocated, RangeError> {
        let geometry = self.geometry;
        self.locked(|state| {
            if let Some(a) = state
                .allocations
                .iter()
                .find(|a| a.container_id == container_id)
            {
                return Ok(Allocated {
                    allocation: a.clone(),
                    reclaimed: Vec::new(),
                });
            }
            let now = now();
            let (kept, reclaimed): (Vec<Allocation>, Vec<Allocation>) =
                std::mem::take(&mut state.allocations)
                    .into_iter()
                    .partition(|a| {
                        let young = now.saturating_sub(a.created_unix) < GRACE_SECONDS;
                        young || a.runc_root.join(&a.container_id).exists()
                    });
            state.allocations = kept;
            let used: std::collections::BTreeSet<u32> =
                state.allocations.iter().map(|a| a.base).collect();
            let base = match joined {
                Some(base) if used.contains(&base) => base,
                Some(base) => return Err(RangeError::NotHeld { base }),
                None => (0..geometry.max)
                    .map(|i| geometry.base(i))
                    .find(|b| !used.contains(b))
                    .ok_or(RangeError::Exhausted { max: geometry.max })?,
            };
            let allocation = Allocation {
                container_id: container_id.to_owned(),
                base,
                runc_root: runc_root.to_owned(),
                created_unix: now,
                cgroup: None,
                shifted_upper: None,
                engine_rootfs: None,
                bundle: None,
                docker_api_proxy: false,
                delegate_cgroup: false,
                init: None,
                poststart_hooks: false,
            };
            state.allocations.push(allocation.clone());
            Ok(Allocated {
                allocation,
                reclaimed,
            })
        })
    }

    /// Change the container's allocation (if it has one) under the lock.
    /// Changes the allocation of `container_id`; returns it as changed
    /// (`None`: there is none).
    pub fn update(
        &self,
        container_id: &str,
        change: impl FnOnce(&mut Allocation),
    ) -> Result<Option<Allocation>, RangeError> {
        self.locked(|state| {
            Ok(state
                .allocations
                .iter_mut()
                .find(|a| a.container_id == container_id)
                .map(|a| {
                    change(a);
                    a.clone()
                }))
        })
    }

    pub fn get(&self, container_id: &str) -> Result<Option<Allocation>, RangeError> {
        self.locked_as(Access::Read, |state| {
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
        self.locked_as(Access::Read, |state| Ok(state.allocations.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(max: u32) -> Geometry {
        Geometry {
            max,
            ..Geometry::default()
        }
    }

    #[test]
    fn a_joined_range_stays_reserved_while_any_holder_lives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Ranges::new(dir.path(), geometry(4));
        let root = dir.path().join("runc");
        let x = r.allocate("x", &root).expect("x").allocation;
        let s = r.allocate_joined("s", &root, x.base).expect("s").allocation;
        assert_eq!(s.base, x.base);
        r.free("x").expect("free x");
        let y = r.allocate("y", &root).expect("y").allocation;
        assert_ne!(y.base, x.base, "the sidecar still holds it");
        r.free("s").expect("free s");
        assert!(matches!(
            r.allocate_joined("t", &root, x.base),
            Err(RangeError::NotHeld { .. })
        ));
    }

    #[test]
    fn ranges_are_exclusive_and_reused_after_free() {
        let dir = tempfile::tempdir().unwrap();
        let r = Ranges::new(dir.path(), geometry(8));
        let a = r.allocate("a", dir.path()).unwrap().allocation;
        let b = r.allocate("b", dir.path()).unwrap().allocation;
        assert_eq!(a.base, FIRST_BASE);
        assert_eq!(b.base, FIRST_BASE + RANGE_SIZE);
        assert_eq!(
            r.allocate("a", dir.path()).unwrap().allocation,
            a,
            "allocation is idempotent"
        );
        r.free("a").unwrap();
        assert_eq!(
            r.allocate("c", dir.path()).unwrap().allocation.base,
            FIRST_BASE
        );
    }

    #[test]
    fn exhaustion_is_a_clear_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let r = Ranges::new(dir.path(), geometry(2));
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
        let r = Ranges::new(dir.path().join("state"), geometry(2));
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
        let reclaimed: Vec<&str> = c
            .reclaimed
            .iter()
            .map(|a| a.container_id.as_str())
            .collect();
        assert_eq!(
            reclaimed,
            vec!["crashed"],
            "the caller gets what to release"
        );
        assert_eq!(
            c.allocation.base,
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
                    Ranges::new(&path, geometry(64))
                        .allocate(&format!("c{i}"), &path)
                        .unwrap()
                        .allocation
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
        let e = Ranges::new(dir.path(), geometry(4))
            .allocate("a", dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ranges.json")).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn young_allocations_of_containers_not_yet_in_runc_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = Ranges::new(dir.path(), geometry(4));
        r.allocate("being-created", &dir.path().join("runc"))
            .unwrap();
        let next = r.allocate("other", &dir.path().join("runc")).unwrap();
        assert!(next.reclaimed.is_empty());
        assert_eq!(next.allocation.base, FIRST_BASE + RANGE_SIZE);
    }

    #[test]
    fn geometry_is_configurable_and_checked() {
        let g = Geometry {
            first_base: 200_000,
            step: 100_000,
            max: 3,
        };
        g.check().unwrap();
        assert_eq!(g.base(2), 400_000);
        assert_eq!(g.container_id_of(300_005), Some(5));
        assert_eq!(g.container_id_of(300_000 + 70_000), None, "in the gap");
        assert_eq!(g.container_id_of(500_000), None, "past the last range");
        assert_eq!(g.container_id_of(5), None);
        let dir = tempfile::tempdir().unwrap();
        let r = Ranges::new(dir.path(), g);
        r.allocate("a", dir.path()).unwrap();
        assert_eq!(
            r.allocate("b", dir.path()).unwrap().allocation.base,
            300_000
        );
        for bad in [
            Geometry { step: 1000, ..g },
            Geometry { first_base: 0, ..g },
            Geometry { max: 100_000, ..g },
        ] {
            assert!(
                matches!(bad.check(), Err(RangeError::Geometry(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_crash_mid_write_leaves_the_old_state() {
        // The state is only ever replaced by rename: a leftover temporary
        // file from a crash is ignored and overwritten.
        let dir = tempfile::tempdir().unwrap();
        let r = Ranges::new(dir.path(), geometry(4));
        r.allocate("a", dir.path()).unwrap();
        std::fs::write(dir.path().join("ranges.json.tmp"), "{half").unwrap();
        let b = r.allocate("b", dir.path()).unwrap().allocation;
        assert_eq!(b.base, FIRST_BASE + RANGE_SIZE);
        assert_eq!(r.all().unwrap().len(), 2);
    }
}
