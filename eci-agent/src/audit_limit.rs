//! The audit rate limit's user side. The kernel lets each cgroup put
//! `eci.audit.linesPerSecond` events a second in the ring buffer and counts
//! the rest per cgroup and hook (eci-ebpf's audit.rs); every second this
//! module writes one summary line per cgroup whose count moved, and records
//! what it reported in a pinned map of its own, so a restarted agent
//! reports each kept-out decision once. The entries of removed cgroups go
//! once their last count is reported.

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData, MapError};
use eci_common::{AuditKey, AuditWindow, Hook};
use serde::Serialize;

use crate::cgroups;

#[derive(Debug, thiserror::Error)]
pub enum AuditLimitError {
    #[error("the audit rate limit's kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

/// The kernel maps of the rate limit, owned by the one task that reports.
pub struct AuditLimitMaps {
    pub limit: Array<MapData, u64>,
    pub windows: HashMap<MapData, u64, AuditWindow>,
    pub kept_out: HashMap<MapData, AuditKey, u64>,
    pub reported: HashMap<MapData, AuditKey, u64>,
    /// Denials per (cgroup, hook) (the metrics' per-container counts):
    /// this task deletes a removed cgroup's entries [`DENIALS_KEPT_NS`]
    /// after it finds it gone.
    pub denials: HashMap<MapData, AuditKey, u64>,
    /// When each cgroup with denial counts was first found gone.
    pub gone_since_ns: BTreeMap<u64, i128>,
}

/// How long a removed cgroup's denial counts stay readable (a scrape or
/// two sees their last value) before they are deleted.
pub const DENIALS_KEPT_NS: i128 = 5 * 60 * 1_000_000_000;

/// One cgroup's decisions the rate limit kept out of the log in the last
/// interval, as one line.
#[derive(Debug, Serialize, PartialEq)]
pub struct SummaryLine {
    pub time: String,
    pub event: &'static str,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Decisions counted since the last summary, by hook.
    pub not_logged: BTreeMap<&'static str, u64>,
    /// The sum of `not_logged`.
    pub count: u64,
    /// Every decision of this cgroup counted this way so far.
    pub total: u64,
    pub lines_per_second: u64,
    pub detail: String,
}

impl AuditLimitMaps {
    /// Put the policy's limit in force (events per cgroup and second).
    pub fn set_limit(&mut self, per_second: u32) -> Result<(), AuditLimitError> {
        self.limit
            .set(0, u64::from(per_second), 0)
            .map_err(|source| AuditLimitError::Map {
                map: eci_common::map_names::AUDIT_LIMIT,
                source,
            })
    }

    /// The summary lines of every cgroup whose count moved since the last
    /// call (or since the last agent's), marking them reported; then the
    /// entries of removed cgroups go.
    pub fn collect(&mut self, wall_clock_ns: i128) -> Result<Vec<SummaryLine>, AuditLimitError> {
        let map_err = |map| move |source| AuditLimitError::Map { map, source };
        let mut counts: BTreeMap<AuditKey, u64> = BTreeMap::new();
        for entry in self.kept_out.iter() {
            let (key, count) = entry.map_err(map_err(eci_common::map_names::AUDIT_SUPPRESSED))?;
            counts.insert(key, count);
        }
        let limit = self.limit.get(&0, 0).unwrap_or(0);
        let mut per_cgroup: BTreeMap<u64, (BTreeMap<&'static str, u64>, u64)> = BTreeMap::new();
        let mut moved = Vec::new();
        for (key, &count) in &counts {
            let reported = self.reported.get(key, 0).unwrap_or(0);
            let entry = per_cgroup.entry(key.cgroup_id).or_default();
            entry.1 += count;
            if count > reported {
                moved.push((*key, count));
                let hook = Hook::from_u32(key.hook).map_or("unknown", Hook::name);
                *entry.0.entry(hook).or_default() += count - reported;
            }
        }
        let time = crate::audit::rfc3339(wall_clock_ns);
        let mut lines = Vec::new();
        let mut live = BTreeMap::new();
        for (cgroup_id, (not_logged, total)) in per_cgroup {
            let path = cgroups::live_path_of_id(cgroup_id).unwrap_or_else(|err| {
                tracing::warn!(cgroup_id, "audit summary: cannot name the cgroup: {err}");
                // Unknown is not gone: keep its entries.
                Some(String::new())
            });
            live.insert(cgroup_id, path.is_some());
            if not_logged.is_empty() {
                continue;
            }
            let count = not_logged.values().sum();
            lines.push(SummaryLine {
                time: time.clone(),
                event: "audit_not_logged",
                cgroup_id,
                cgroup: path.filter(|p| !p.is_empty()),
                not_logged,
                count,
                total,
                lines_per_second: limit,
                detail: format!(
                    "{count} more decisions of this cgroup were counted, not logged one by one: it \
                     made more than {limit} a second (eci.audit.linesPerSecond)"
                ),
            });
        }
        // Only what moved is written back: an unchanged count costs no
        // update every second.
        for (key, count) in &moved {
            self.reported
                .insert(key, count, 0)
                .map_err(map_err(eci_common::map_names::AUDIT_REPORTED))?;
        }
        // A removed cgroup makes no more decisions: its counts are final
        // and reported, its window unused.
        for (key, _) in counts
            .iter()
            .filter(|(k, _)| live.get(&k.cgroup_id) == Some(&false))
        {
            let _ = self.kept_out.remove(key);
            let _ = self.reported.remove(key);
        }
        self.forget_denials_of_removed(&live, wall_clock_ns);
        let windows: Vec<u64> = self.windows.keys().filter_map(Result::ok).collect();
        for cgroup_id in windows {
            if removed(&live, cgroup_id) {
                let _ = self.windows.remove(&cgroup_id);
            }
        }
        Ok(lines)
    }

    /// Deletes the per-cgroup denial counts of cgroups removed more than
    /// [`DENIALS_KEPT_NS`] ago. `live`: what `collect` already knows.
    fn forget_denials_of_removed(&mut self, live: &BTreeMap<u64, bool>, now_ns: i128) {
        let keys: Vec<AuditKey> = self.denials.keys().filter_map(Result::ok).collect();
        let mut gone: BTreeMap<u64, bool> = BTreeMap::new();
        for key in &keys {
            let is_gone = *gone
                .entry(key.cgroup_id)
                .or_insert_with(|| removed(live, key.cgroup_id));
            if !is_gone {
                continue;
            }
            let since = *self.gone_since_ns.entry(key.cgroup_id).or_insert(now_ns);
            if now_ns - since >= DENIALS_KEPT_NS {
                let _ = self.denials.remove(key);
            }
        }
        self.gone_since_ns
            .retain(|id, _| gone.get(id) == Some(&true));
    }
}

/// Whether `cgroup_id` is removed: from `live` (what `collect` read this
/// round), else asked of the kernel. A cgroup that cannot be named is not
/// taken for removed.
fn removed(live: &BTreeMap<u64, bool>, cgroup_id: u64) -> bool {
    match live.get(&cgroup_id) {
        Some(alive) => !alive,
        None => matches!(cgroups::live_path_of_id(cgroup_id), Ok(None)),
    }
}
