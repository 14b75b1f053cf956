//! `eci-agent status`: read the pinned state (no programs are loaded) and
//! ask the agent, if it answers, who it is.

use std::{collections::BTreeMap, path::Path};

use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
};
use eci_common::{FileId, Hook, map_names, protect_reason};
use eci_control::{Client, Request, Response};
use serde::Serialize;

use crate::{
    audit, btf, cgroups,
    coverage::{self, CGROUP_MKDIR, RuleState},
    lsm,
    pins::PinLayout,
    registry::{ProtectionMode, VerdictCache},
    state,
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub agent: AgentStatus,
    pub bpf_lsm_active: bool,
    pub active_lsms: Option<String>,
    pub pin_dir: String,
    pub programs: Vec<ProgramStatus>,
    /// bpf is an active LSM and every program the kernel has an attach
    /// point for is attached.
    pub enforcing: bool,
    /// How the kernel tells a protected task (`ancestor_walk`, `registry`).
    pub protection_mode: ProtectionMode,
    /// The same, in words.
    pub protection: String,
    /// Where the ancestor walk caches verdicts, as the running agent loaded
    /// it (`cgroup_storage`, `lru_hash`; absent in registry mode or when
    /// no agent says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_cache: Option<VerdictCache>,
    /// Every rule: `enforced` or `missing: <what it needs>`.
    pub rules: Vec<RuleState>,
    /// Some rule is missing.
    pub degraded: bool,
    /// Cgroups with reasons of their own (registered, protected parents).
    pub protected_cgroups: Vec<CgroupStatus>,
    /// Registry mode: descendants registered below them.
    pub registered_descendants: usize,
    pub protected_sockets: Vec<SocketStatus>,
    pub denials: BTreeMap<String, u64>,
    /// Decisions a hook could not make (a kernel read failed, a cgroup too
    /// deep): refused where the hook guards the VM.
    pub undecided: BTreeMap<String, u64>,
    pub event_drops: u64,
    /// Pinned objects that could not be read, with why.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct AgentStatus {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProgramStatus {
    pub hook: String,
    pub attached: bool,
    /// The kernel has its attach point.
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_id: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct CgroupStatus {
    pub id: u64,
    pub reasons: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SocketStatus {
    pub dev: String,
    pub ino: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The kernel's counters, from the pinned maps: what `status` shows and
/// the agent's metrics serve (one reader of these maps).
#[derive(Debug, Default)]
pub struct Counters {
    /// Denials by hook name; empty when the map could not be read.
    pub denials: BTreeMap<String, u64>,
    /// Undecided decisions by hook name; empty when unreadable.
    pub undecided: BTreeMap<String, u64>,
    /// Events the ring buffer could not take; `None` when unreadable.
    pub event_drops: Option<u64>,
    /// Maps that could not be read, with why.
    pub problems: Vec<String>,
}

/// Read the per-hook denial and undecided counters and the ring buffer's
/// drop counter (per-CPU arrays, summed over the CPUs).
pub fn read_counters(layout: &PinLayout) -> Counters {
    let mut counters = Counters::default();
    for (name, counts) in [
        (map_names::DENIALS, &mut counters.denials),
        (map_names::UNDECIDED, &mut counters.undecided),
    ] {
        match open_map(layout, name)
            .and_then(|m| PerCpuArray::<MapData, u64>::try_from(m).map_err(|e| e.to_string()))
        {
            Ok(map) => {
                for hook in Hook::ALL {
                    let count = map
                        .get(&(hook as u32), 0)
                        .map(|v| v.iter().sum())
                        .unwrap_or(0);
                    counts.insert(hook.name().to_owned(), count);
                }
            }
            Err(e) => counters.problems.push(e),
        }
    }
    match open_map(layout, map_names::EVENT_DROPS)
        .and_then(|m| PerCpuArray::<MapData, u64>::try_from(m).map_err(|e| e.to_string()))
    {
        Ok(map) => counters.event_drops = Some(map.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)),
        Err(e) => counters.problems.push(e),
    }
    counters
}

/// The programs of `mode` and whether each one's link is pinned and live
/// (`kernel`: to tell which ones this kernel has no attach point for;
/// without it every program counts as available).
pub fn programs(
    layout: &PinLayout,
    mode: ProtectionMode,
    kernel: Option<&btf::Btf>,
) -> Vec<ProgramStatus> {
    coverage::programs(mode)
        .iter()
        .map(|program| {
            let path = layout.link(program.name);
            let info = PinnedLink::from_pin(&path)
                .ok()
                .and_then(|p| FdLink::from(p).info().ok());
            ProgramStatus {
                hook: program.name.into(),
                attached: info.is_some(),
                available: kernel.is_none_or(|k| program.available(k)),
                link_id: info.as_ref().map(|i| i.id()),
                program_id: info.as_ref().map(|i| i.program_id()),
            }
        })
        .collect()
}

/// Protected-map entries, counted as `status` shows them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProtectedCount {
    /// Cgroups with reasons of their own (registered, protected parents).
    pub cgroups: usize,
    /// Entries only inherited (registry mode's descendants).
    pub registered_descendants: usize,
}

pub fn count_protected(entries: impl IntoIterator<Item = (u64, u32)>) -> ProtectedCount {
    let mut count = ProtectedCount::default();
    for (_, reasons) in entries {
        if protect_reason::own(reasons) == 0 {
            count.registered_descendants += 1;
        } else {
            count.cgroups += 1;
        }
    }
    count
}

/// Denials per (cgroup id, hook) from the pinned `ECI_CG_DENIALS`.
pub fn read_cgroup_denials(layout: &PinLayout) -> Result<Vec<(u64, Hook, u64)>, String> {
    let map = open_map(layout, map_names::CGROUP_DENIALS).and_then(|m| {
        HashMap::<MapData, eci_common::AuditKey, u64>::try_from(m).map_err(|e| e.to_string())
    })?;
    let mut counts = Vec::new();
    for entry in map.iter() {
        let (key, count) =
            entry.map_err(|e| format!("reading {}: {e}", map_names::CGROUP_DENIALS))?;
        if let Some(hook) = Hook::from_u32(key.hook) {
            counts.push((key.cgroup_id, hook, count));
        }
    }
    Ok(counts)
}

fn open_map(layout: &PinLayout, name: &str) -> Result<Map, String> {
    let path = layout.map(name);
    let data = MapData::from_pin(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Map::from_map_data(data).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn collect(layout: &PinLayout, control_socket: &Path) -> Status {
    let mut problems = Vec::new();
    let active_lsms = lsm::active_lsms();
    let agent = match Client::new(control_socket).call(&Request::Ping) {
        Ok(Response::Pong { pid, mode }) => AgentStatus {
            running: true,
            pid: Some(pid),
            mode: Some(mode),
            error: None,
        },
        Ok(other) => AgentStatus {
            running: false,
            pid: None,
            mode: None,
            error: Some(format!("unexpected answer {other:?}")),
        },
        Err(err) => AgentStatus {
            running: false,
            pid: None,
            mode: None,
            error: Some(err.to_string()),
        },
    };
    let state: Option<state::AgentState> =
        std::fs::read_to_string(state::state_file(control_socket))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());

    // The running agent says which mode it loaded; otherwise the pinned
    // links tell (only the registry pins the cgroup_mkdir tracepoint).
    let protection_mode = state
        .as_ref()
        .and_then(|s| s.protection)
        .unwrap_or_else(|| {
            if layout.link(CGROUP_MKDIR.name).exists() {
                ProtectionMode::Registry
            } else {
                ProtectionMode::AncestorWalk
            }
        });
    let kernel = btf::Btf::from_sys_fs().ok();
    let kernel_has = |p: &coverage::Program| kernel.as_ref().map(|k| p.available(k));
    let programs = programs(layout, protection_mode, kernel.as_ref());
    let rules = coverage::rule_states(
        protection_mode,
        &|name| programs.iter().any(|p| p.hook == name && p.attached),
        &kernel_has,
    );

    let mut protected_cgroups = Vec::new();
    let mut registered_descendants = 0;
    let mut protected_sockets = Vec::new();
    let mut counters = Counters::default();
    if layout.exists() {
        match open_map(layout, map_names::PROTECTED_CGROUPS)
            .and_then(|m| HashMap::<MapData, u64, u32>::try_from(m).map_err(|e| e.to_string()))
        {
            Ok(map) => {
                let entries: Vec<(u64, u32)> = map.iter().filter_map(Result::ok).collect();
                let counted = count_protected(entries.iter().copied());
                registered_descendants = counted.registered_descendants;
                for (id, reasons) in entries {
                    if protect_reason::own(reasons) != 0 {
                        protected_cgroups.push(CgroupStatus {
                            id,
                            reasons,
                            path: cgroups::path_of_id(id),
                        });
                    }
                }
            }
            Err(e) => problems.push(e),
        }
        match open_map(layout, map_names::PROTECTED_SOCKETS)
            .and_then(|m| HashMap::<MapData, FileId, u32>::try_from(m).map_err(|e| e.to_string()))
        {
            Ok(map) => {
                for id in map.keys().filter_map(Result::ok) {
                    let (major, minor) = audit::kernel_dev_parts(id.dev);
                    let dev = format!("{major}:{minor}");
                    let path = state.as_ref().and_then(|s| {
                        s.sockets
                            .iter()
                            .find(|p| p.dev == dev && p.ino == id.ino)
                            .map(|p| p.path.display().to_string())
                    });
                    protected_sockets.push(SocketStatus {
                        dev,
                        ino: id.ino,
                        path,
                    });
                }
            }
            Err(e) => problems.push(e),
        }
        counters = read_counters(layout);
        problems.append(&mut counters.problems);
    }
    let bpf_lsm_active = lsm::bpf_listed(active_lsms.as_deref());
    Status {
        agent,
        enforcing: bpf_lsm_active && programs.iter().all(|p| p.attached || !p.available),
        bpf_lsm_active,
        active_lsms,
        pin_dir: layout.root().display().to_string(),
        programs,
        protection_mode,
        protection: protection_mode.describe().to_owned(),
        verdict_cache: state.as_ref().and_then(|s| s.verdict_cache),
        degraded: rules.iter().any(|r| !r.is_enforced()),
        rules,
        protected_cgroups,
        registered_descendants,
        protected_sockets,
        denials: counters.denials,
        undecided: counters.undecided,
        event_drops: counters.event_drops.unwrap_or(0),
        problems,
    }
}

pub fn render(status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = match (&status.agent.running, &status.agent.pid, &status.agent.mode) {
        (true, Some(pid), Some(mode)) => {
            writeln!(out, "agent:            running (pid {pid}, mode {mode})")
        }
        _ => writeln!(
            out,
            "agent:            NOT RUNNING ({})",
            status.agent.error.as_deref().unwrap_or("no answer")
        ),
    };
    let _ = writeln!(
        out,
        "BPF-LSM:          {} (active LSMs: {})",
        if status.bpf_lsm_active {
            "bpf is an active LSM"
        } else {
            "NOT active (bpf is not in the LSM list)"
        },
        status.active_lsms.as_deref().unwrap_or("unknown")
    );
    let attached = status.programs.iter().filter(|p| p.attached).count();
    let _ = writeln!(
        out,
        "enforcing:        {}",
        if status.enforcing {
            "yes (every program this kernel can run attached)"
        } else {
            "NO"
        }
    );
    let _ = match status.verdict_cache {
        Some(cache) => writeln!(
            out,
            "protection:       {} (verdicts cached in {})",
            status.protection,
            cache.describe()
        ),
        None => writeln!(out, "protection:       {}", status.protection),
    };
    let enforced = status.rules.iter().filter(|r| r.is_enforced()).count();
    let _ = writeln!(
        out,
        "rules:            {enforced}/{} enforced{}",
        status.rules.len(),
        if status.degraded {
            " (DEGRADED: a rule is missing)"
        } else {
            ""
        }
    );
    for r in &status.rules {
        let _ = writeln!(out, "  {:<28} {}", r.rule, r.status);
    }
    let _ = writeln!(
        out,
        "programs:         {attached}/{} attached (pinned under {})",
        status.programs.len(),
        status.pin_dir
    );
    for p in &status.programs {
        let _ = match (p.link_id, p.program_id) {
            (Some(link), Some(prog)) => writeln!(
                out,
                "  {:<22} attached (link {link}, program {prog})",
                p.hook
            ),
            _ if !p.available => writeln!(
                out,
                "  {:<22} NOT attached (this kernel has no such attach point)",
                p.hook
            ),
            _ => writeln!(out, "  {:<22} NOT attached", p.hook),
        };
    }
    let _ = writeln!(out, "protected cgroups: {}", status.protected_cgroups.len());
    for c in &status.protected_cgroups {
        let _ = writeln!(
            out,
            "  {:<10} {}",
            c.id,
            c.path.as_deref().unwrap_or("(path unknown)")
        );
    }
    if status.protection_mode == ProtectionMode::Registry {
        let _ = writeln!(
            out,
            "registered descendants: {}",
            status.registered_descendants
        );
    }
    let _ = writeln!(out, "protected sockets: {}", status.protected_sockets.len());
    for s in &status.protected_sockets {
        let _ = writeln!(
            out,
            "  dev {} ino {:<10} {}",
            s.dev,
            s.ino,
            s.path.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "denials:");
    for (hook, count) in &status.denials {
        let _ = writeln!(out, "  {hook:<22} {count}");
    }
    let undecided: u64 = status.undecided.values().sum();
    let _ = writeln!(
        out,
        "undecided (refused where the hook guards the VM): {undecided}"
    );
    for (hook, count) in status.undecided.iter().filter(|(_, c)| **c > 0) {
        let _ = writeln!(out, "  {hook:<22} {count}");
    }
    let _ = writeln!(out, "audit events dropped: {}", status.event_drops);
    for p in &status.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}
