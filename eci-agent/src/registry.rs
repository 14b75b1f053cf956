//! How the kernel tells a protected task, and the agent's half of the
//! registry mode.
//!
//! Where LSM programs may call `bpf_get_current_ancestor_cgroup_id` (Linux
//! 5.14+) the hooks walk the task's cgroup ancestors ("ancestor walk").
//! Elsewhere (Debian 11's 5.10) every descendant of a protected cgroup is
//! in the protected map itself ("registry"): the `cgroup_mkdir` tracepoint
//! registers the ones made later, and [`sync`] the ones that exist when an
//! ancestor is protected — at start, on a policy reload, on a registration —
//! and takes inherited reasons away from the ones whose ancestor no longer
//! is. [`sync`] also runs every second: a cgroup made in the instant its
//! parent is being protected (the tracepoint read the parent before the
//! agent wrote it, and the agent listed the parent before the new directory
//! was visible) is registered within that second; so is one the tracepoint
//! could not register (counted as undecided).

use std::{
    collections::BTreeMap,
    os::unix::fs::DirEntryExt,
    path::{Path, PathBuf},
};

use eci_common::protect_reason;
use serde::{Deserialize, Serialize};

use crate::rules::{RuleError, RuleStore};

/// How the hooks decide whether the current task is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtectionMode {
    /// Walk the task's cgroup ancestors (`bpf_get_current_ancestor_cgroup_id`).
    AncestorWalk,
    /// Look up the task's own cgroup; descendants are registered.
    Registry,
}

impl ProtectionMode {
    /// The value of `ECI_PROTECTION_MODE` in the BPF object.
    pub const fn global(self) -> u32 {
        match self {
            ProtectionMode::AncestorWalk => eci_common::protection_mode::ANCESTOR_WALK,
            ProtectionMode::Registry => eci_common::protection_mode::REGISTRY,
        }
    }

    /// What `status` and the start-up log say.
    pub const fn describe(self) -> &'static str {
        match self {
            ProtectionMode::AncestorWalk => "ancestor walk",
            ProtectionMode::Registry => "registry of descendants (cgroup_mkdir)",
        }
    }

    /// The name in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            ProtectionMode::AncestorWalk => "ancestor_walk",
            ProtectionMode::Registry => "registry",
        }
    }
}

/// `--protection-mode`: what the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ModeChoice {
    /// The ancestor walk where the kernel offers it, the registry elsewhere.
    #[default]
    Auto,
    /// The ancestor walk; refused on a kernel without it.
    AncestorWalk,
    /// The registry, on any kernel (for tests on kernels that have both).
    Registry,
}

/// Where the ancestor walk keeps a cgroup's verdict between hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictCache {
    /// An LRU hash keyed by cgroup id: every kernel.
    LruHash,
    /// The cgroup's own local storage (Linux 6.2+): no hashing, and the
    /// entry goes with the cgroup.
    CgroupStorage,
}

impl VerdictCache {
    /// The value of `ECI_VERDICT_CACHE` in the BPF object.
    pub const fn global(self) -> u32 {
        match self {
            VerdictCache::LruHash => eci_common::verdict_cache::LRU_HASH,
            VerdictCache::CgroupStorage => eci_common::verdict_cache::CGROUP_STORAGE,
        }
    }

    /// What `status` and the start-up log say.
    pub const fn describe(self) -> &'static str {
        match self {
            VerdictCache::LruHash => "LRU hash by cgroup id",
            VerdictCache::CgroupStorage => "cgroup local storage",
        }
    }
}

/// `--verdict-cache`: where the ancestor walk keeps its verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CacheChoice {
    /// Cgroup local storage where the kernel offers it to LSM programs
    /// (Linux 6.2+), the LRU hash elsewhere.
    #[default]
    Auto,
    /// The LRU hash on any kernel (to measure one against the other).
    LruHash,
    /// Cgroup local storage; refused on a kernel without it.
    CgroupStorage,
}

/// What the agent is asked to use: `--protection-mode` and `--verdict-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::Args)]
pub struct Choice {
    /// How the kernel tells a protected task: the ancestor walk where
    /// LSM programs may call bpf_get_current_ancestor_cgroup_id (Linux
    /// 5.14+), else a registry of descendants kept by the cgroup_mkdir
    /// tracepoint. `registry` forces that on any kernel.
    #[arg(long, value_enum, default_value_t = ModeChoice::Auto)]
    pub protection_mode: ModeChoice,
    /// Where the ancestor walk caches each cgroup's verdict: cgroup local
    /// storage where the kernel offers it (Linux 6.2+), else an LRU hash.
    #[arg(long, value_enum, default_value_t = CacheChoice::Auto)]
    pub verdict_cache: CacheChoice,
}

/// What one [`sync`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Cgroups given (or given other) inherited reasons.
    pub registered: usize,
    /// Cgroups whose inherited reasons were taken away.
    pub released: usize,
}

/// Cgroup directories visited at most.
const MAX_WALK: usize = 100_000;

/// Make the inherited half of every entry match the tree below `mount`
/// (the cgroup2 root): in registry mode every cgroup below a protected one
/// inherits its parent's reasons; in ancestor-walk mode nothing is
/// inherited (entries a registry-mode run left are cleared).
pub fn sync(
    rules: &mut dyn RuleStore,
    mode: ProtectionMode,
    mount: &Path,
) -> Result<Synced, RuleError> {
    let values = rules.protected_cgroups();
    match mode {
        ProtectionMode::Registry => sync_below(rules, &values, mount, 0),
        ProtectionMode::AncestorWalk => {
            let mut synced = Synced::default();
            for (id, value) in values {
                if value != protect_reason::own(value) {
                    rules.set_inherited(id, 0)?;
                    synced.released += 1;
                }
            }
            Ok(synced)
        }
    }
}

/// Registry mode: make the descendants of `dir` (a cgroup directory whose
/// map value is `dir_value`, 0 for the root) inherit what they should.
pub fn sync_subtree(
    rules: &mut dyn RuleStore,
    dir: &Path,
    dir_value: u32,
) -> Result<Synced, RuleError> {
    let values = rules.protected_cgroups();
    sync_below(rules, &values, dir, dir_value)
}

fn sync_below(
    rules: &mut dyn RuleStore,
    values: &BTreeMap<u64, u32>,
    top: &Path,
    top_value: u32,
) -> Result<Synced, RuleError> {
    let mut synced = Synced::default();
    let mut stack: Vec<(PathBuf, u32)> = vec![(top.to_path_buf(), top_value)];
    let mut visited = 0usize;
    while let Some((dir, value)) = stack.pop() {
        visited += 1;
        if visited > MAX_WALK {
            tracing::error!(
                top = %top.display(),
                "registry: more than {MAX_WALK} cgroups; the rest are not registered"
            );
            break;
        }
        // A directory that vanished meanwhile has no descendants to register.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let inherited = protect_reason::inherited_from(value);
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // A cgroup2 directory's inode number is its cgroup id.
            let id = entry.ino();
            let current = values.get(&id).copied().unwrap_or(0);
            let wanted = protect_reason::own(current) | inherited;
            if wanted != current {
                rules.set_inherited(id, inherited)?;
                if inherited != 0 {
                    synced.registered += 1;
                } else {
                    synced.released += 1;
                }
            }
            stack.push((entry.path(), wanted));
        }
    }
    Ok(synced)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use eci_common::protect_reason::{
        DESCENDANT_OF_POLICY_PARENT, DESCENDANT_OF_REGISTERED, POLICY_PARENT, REGISTERED,
    };

    use super::*;
    use crate::rules::UnenforcedRules;

    fn id(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn descendants_inherit_their_ancestors_reasons_and_lose_them_again() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("docker");
        let deep = parent.join("a/b/c");
        let registered = root.path().join("other/ctr");
        let child = registered.join("inner");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::create_dir_all(&child).unwrap();
        std::fs::write(parent.join("cgroup.procs"), "").unwrap();
        let mut rules = UnenforcedRules::default();
        rules.protect_cgroup(id(&parent), POLICY_PARENT).unwrap();
        rules.protect_cgroup(id(&registered), REGISTERED).unwrap();

        let synced = sync(&mut rules, ProtectionMode::Registry, root.path()).unwrap();
        assert_eq!(synced.registered, 4, "{synced:?}");
        let map = rules.protected_cgroups();
        assert_eq!(map[&id(&deep)], DESCENDANT_OF_POLICY_PARENT);
        assert_eq!(map[&id(&parent.join("a"))], DESCENDANT_OF_POLICY_PARENT);
        assert_eq!(map[&id(&child)], DESCENDANT_OF_REGISTERED);
        assert!(!map.contains_key(&id(&root.path().join("other"))));
        // Nothing to do the second time.
        let again = sync(&mut rules, ProtectionMode::Registry, root.path()).unwrap();
        assert_eq!(again, Synced::default());

        // A registered cgroup below a protected parent keeps its own reason
        // and inherits the parent's; its descendants get both.
        let nested = parent.join("a/ctr");
        std::fs::create_dir(&nested).unwrap();
        std::fs::create_dir(nested.join("x")).unwrap();
        rules.protect_cgroup(id(&nested), REGISTERED).unwrap();
        sync(&mut rules, ProtectionMode::Registry, root.path()).unwrap();
        let map = rules.protected_cgroups();
        assert_eq!(map[&id(&nested)], REGISTERED | DESCENDANT_OF_POLICY_PARENT);
        assert_eq!(
            map[&id(&nested.join("x"))],
            DESCENDANT_OF_REGISTERED | DESCENDANT_OF_POLICY_PARENT
        );

        // The parent is no longer protected: only the registered one and
        // its descendants stay.
        rules.unprotect_cgroup(id(&parent), POLICY_PARENT).unwrap();
        let synced = sync(&mut rules, ProtectionMode::Registry, root.path()).unwrap();
        assert_eq!(synced.released, 4, "{synced:?}");
        let map = rules.protected_cgroups();
        assert!(!map.contains_key(&id(&deep)));
        assert_eq!(map[&id(&nested)], REGISTERED);
        assert_eq!(map[&id(&nested.join("x"))], DESCENDANT_OF_REGISTERED);
        assert_eq!(map[&id(&child)], DESCENDANT_OF_REGISTERED);
    }

    #[test]
    fn the_ancestor_walk_keeps_no_inherited_reasons() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("docker");
        std::fs::create_dir_all(parent.join("a")).unwrap();
        let mut rules = UnenforcedRules::default();
        rules.protect_cgroup(id(&parent), POLICY_PARENT).unwrap();
        sync(&mut rules, ProtectionMode::Registry, root.path()).unwrap();
        assert_eq!(rules.protected_cgroups().len(), 2);
        let synced = sync(&mut rules, ProtectionMode::AncestorWalk, root.path()).unwrap();
        assert_eq!(synced.released, 1);
        let map = rules.protected_cgroups();
        assert_eq!(map.len(), 1);
        assert_eq!(map[&id(&parent)], POLICY_PARENT);
    }

    #[test]
    fn a_subtree_sync_registers_below_one_cgroup_only() {
        let root = tempfile::tempdir().unwrap();
        let ctr = root.path().join("ctr");
        std::fs::create_dir_all(ctr.join("init")).unwrap();
        std::fs::create_dir_all(root.path().join("elsewhere/x")).unwrap();
        let mut rules = UnenforcedRules::default();
        rules.protect_cgroup(id(&ctr), REGISTERED).unwrap();
        let synced = sync_subtree(&mut rules, &ctr, REGISTERED).unwrap();
        assert_eq!(synced.registered, 1);
        assert_eq!(
            rules.protected_cgroups()[&id(&ctr.join("init"))],
            DESCENDANT_OF_REGISTERED
        );
    }

    #[test]
    fn reasons_split_into_own_and_inherited_halves() {
        let value = REGISTERED | DESCENDANT_OF_POLICY_PARENT;
        assert_eq!(protect_reason::own(value), REGISTERED);
        assert_eq!(protect_reason::effective(value), REGISTERED | POLICY_PARENT);
        assert_eq!(
            protect_reason::inherited_from(value),
            DESCENDANT_OF_REGISTERED | DESCENDANT_OF_POLICY_PARENT
        );
        assert_eq!(protect_reason::inherited_from(0), 0);
    }
}
