//! Loading, attaching and pinning the BPF-LSM programs.
//!
//! Persistence follows Tetragon: links and maps are pinned under the pin
//! directory, so the rules stay in force when the agent exits or is killed.
//! A starting agent reuses the pinned maps (rules, counters, ring buffer),
//! attaches a fresh set of programs while the old set still holds, and only
//! then drops the old links: no gap, and no duplicate attachment afterwards.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{BtfTracePoint, Lsm, links::FdLink},
};
use eci_common::{
    KERNEL_OFFSETS_GLOBAL, KernelOffsets, PROBE_TGID_GLOBAL, PROTECTION_MODE_GLOBAL,
    VERDICT_CACHE_GLOBAL, map_names,
};

use crate::{
    audit_limit::AuditLimitMaps,
    btf,
    coverage::{self, Attach, Program, RuleState},
    lsm,
    pins::PinLayout,
    registry::{CacheChoice, Choice, ModeChoice, ProtectionMode, VerdictCache},
    rules::KernelRules,
};

const PROBE_PROGRAM: &str = "eci_probe";
/// Loads where LSM programs may walk cgroup ancestors (Linux 5.14+).
const PROBE_ANCESTOR_PROGRAM: &str = "eci_probe_ancestor";
/// Loads where LSM programs may keep verdicts in cgroup local storage (6.2+).
const PROBE_STORE_PROGRAM: &str = "eci_probe_verdict_store";

#[derive(Debug, thiserror::Error)]
pub enum EnforcementError {
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Pins(#[from] crate::pins::PinError),
    #[error(transparent)]
    Unavailable(#[from] lsm::LsmUnavailable),
    #[error("loading the BPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the BPF object has no {0} (build mismatch)")]
    Missing(String),
    #[error("BPF program {name}: {source}")]
    Program {
        name: String,
        source: aya::programs::ProgramError,
    },
    #[error("pinning {what}: {source}")]
    Pin {
        what: String,
        source: aya::pin::PinError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: String,
        source: aya::maps::MapError,
    },
    #[error("replacing the pinned link {path}: {source}")]
    Replace {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "--protection-mode ancestor-walk: this kernel does not let LSM programs call bpf_get_current_ancestor_cgroup_id (Linux 5.14+; {0}); use auto or registry"
    )]
    NoAncestorWalk(String),
    #[error(
        "--verdict-cache cgroup-storage: this kernel does not let LSM programs keep verdicts in cgroup local storage (Linux 6.2+; {0}); use auto or lru-hash"
    )]
    NoVerdictStore(String),
}

/// The BPF object, built for the BPF target by build.rs.
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eci-ebpf"))
}

/// What one load of the object is built for: two constants the verifier
/// prunes the hooks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Build {
    mode: ProtectionMode,
    cache: VerdictCache,
}

impl Build {
    /// What `choice` asks for, before any probe: the ancestor walk unless
    /// the registry is asked for, and the verdict store where the kernel has
    /// cgroup local storage, unless the LRU hash is asked for.
    fn first(choice: Choice, kernel: &btf::Btf) -> Result<Self, EnforcementError> {
        let has_store = kernel.has_cgroup_storage();
        if choice.verdict_cache == CacheChoice::CgroupStorage && !has_store {
            return Err(EnforcementError::NoVerdictStore(
                "the kernel's BTF has no cgroup.bpf_cgrp_storage".into(),
            ));
        }
        let mode = match choice.protection_mode {
            ModeChoice::Registry => ProtectionMode::Registry,
            ModeChoice::Auto | ModeChoice::AncestorWalk => ProtectionMode::AncestorWalk,
        };
        let store = mode == ProtectionMode::AncestorWalk
            && has_store
            && choice.verdict_cache != CacheChoice::LruHash;
        Ok(Build {
            mode,
            cache: if store {
                VerdictCache::CgroupStorage
            } else {
                VerdictCache::LruHash
            },
        })
    }

    /// The verdict cache the hooks use (none in registry mode).
    fn cache_in_use(self) -> Option<VerdictCache> {
        (self.mode == ProtectionMode::AncestorWalk).then_some(self.cache)
    }
}

/// A one-slot array pinned in the verdict store's place on a kernel without
/// cgroup local storage, where a map of that type cannot be made: the
/// loader takes it instead, and no program reaches the code that would use
/// it (the cache constant prunes it). Unpinned when dropped; the loaded
/// object holds its own reference.
struct StandIn {
    path: PathBuf,
}

impl StandIn {
    fn pin(layout: &PinLayout) -> Result<Self, EnforcementError> {
        // (bpffs refuses names with a dot.)
        let path = layout
            .maps_dir()
            .join(format!("{}_STAND_IN", map_names::VERDICT_STORE));
        // One left by an agent killed while loading.
        let _ = std::fs::remove_file(&path);
        let map = Array::<MapData, u32>::create(1, 0).map_err(|source| EnforcementError::Map {
            name: map_names::VERDICT_STORE.into(),
            source,
        })?;
        map.pin(&path).map_err(|source| EnforcementError::Pin {
            what: path.display().to_string(),
            source,
        })?;
        Ok(StandIn { path })
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn load_object(
    layout: &PinLayout,
    offsets: KernelOffsets,
    build: Build,
    kernel: &btf::Btf,
    btf: &aya::Btf,
) -> Result<Ebpf, EnforcementError> {
    let tgid = std::process::id();
    let mode = build.mode.global();
    let cache = build.cache.global();
    let stand_in = if kernel.has_cgroup_storage() {
        None
    } else {
        Some(StandIn::pin(layout)?)
    };
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(btf))
        .default_map_pin_directory(layout.maps_dir())
        .override_global(KERNEL_OFFSETS_GLOBAL, &offsets, true)
        .override_global(PROBE_TGID_GLOBAL, &tgid, true)
        .override_global(PROTECTION_MODE_GLOBAL, &mode, true)
        .override_global(VERDICT_CACHE_GLOBAL, &cache, true);
    if let Some(stand_in) = &stand_in {
        loader.map_pin_path(map_names::VERDICT_STORE, stand_in.path.clone());
    }
    loader.load(object()).map_err(EnforcementError::Load)
}

/// The loaded object and the protection mode its programs were built for.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub mode: ProtectionMode,
    /// Where the ancestor walk caches verdicts (none in registry mode).
    pub cache: Option<VerdictCache>,
    /// The running kernel's BTF (its attach points).
    pub kernel: btf::Btf,
    /// The same BTF as aya reads it (relocations, attach targets): parsed
    /// once at start, not for each load and attach.
    pub aya_btf: aya::Btf,
}

fn lsm_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Lsm, EnforcementError> {
    ebpf.program_mut(name)
        .ok_or_else(|| EnforcementError::Missing(format!("program {name}")))?
        .try_into()
        .map_err(|source| EnforcementError::Program {
            name: name.into(),
            source,
        })
}

/// Prove that BPF-LSM programs load and run here: load the probe program,
/// attach it, trigger its hook from this process, and check it counted.
/// Then choose the protection mode: the ancestor walk where the kernel lets
/// LSM programs call its helper (`choice` permitting), the registry
/// elsewhere; and for the walk, the verdict cache: cgroup local storage
/// where LSM programs may use it, the LRU hash elsewhere. The object is
/// loaded for what was chosen.
pub fn probe_lsm(layout: &PinLayout, choice: Choice) -> Result<Loaded, EnforcementError> {
    let active = lsm::active_lsms();
    let parsing = std::time::Instant::now();
    let btf = aya::Btf::from_sys_fs().map_err(|e| lsm::LsmUnavailable::NoBtf(e.to_string()))?;
    let aya_ms = parsing.elapsed().as_millis() as u64;
    let kernel = btf::Btf::from_sys_fs()?;
    tracing::info!(
        aya_ms,
        own_ms = parsing.elapsed().as_millis() as u64 - aya_ms,
        "the kernel's BTF parsed (once: aya's for loading and attaching, eci's for offsets and attach points)"
    );
    let offsets = kernel.kernel_offsets()?;
    let first = Build::first(choice, &kernel)?;
    let existed = layout.exists();
    layout.create()?;
    let result = probe_with(layout, offsets, first, &kernel, &btf, active).and_then(|mut ebpf| {
        let build = choose(&mut ebpf, &btf, choice, first)?;
        if build != first {
            // Loaded again with the chosen constants: the verifier then
            // drops the other ways from every hook.
            drop(ebpf);
            ebpf = load_object(layout, offsets, build, &kernel, &btf)?;
        }
        Ok((ebpf, build))
    });
    let result = result.map(|(ebpf, build)| Loaded {
        ebpf,
        mode: build.mode,
        cache: build.cache_in_use(),
        kernel,
        aya_btf: btf,
    });
    if result.is_err() && !existed {
        // Leave nothing behind on a kernel that cannot enforce.
        let _ = unload(layout);
    }
    result
}

fn probe_with(
    layout: &PinLayout,
    offsets: KernelOffsets,
    build: Build,
    kernel: &btf::Btf,
    btf: &aya::Btf,
    active: Option<String>,
) -> Result<Ebpf, EnforcementError> {
    let mut ebpf = load_object(layout, offsets, build, kernel, btf)?;
    let program = lsm_program(&mut ebpf, PROBE_PROGRAM)?;
    if let Err(err) = program.load("socket_create", btf) {
        return Err(lsm::LsmUnavailable::LoadRefused {
            error: lsm::describe_program_error(&err),
            active,
        }
        .into());
    }
    let link = match program.attach() {
        Ok(link) => link,
        Err(err) => {
            return Err(lsm::LsmUnavailable::AttachRefused {
                error: lsm::describe_program_error(&err),
                active,
            }
            .into());
        }
    };
    // Trigger `socket_create` in this process.
    let _ = std::os::unix::net::UnixDatagram::unbound();
    let hits: u64 = {
        let map = ebpf
            .map(map_names::PROBE_HITS)
            .ok_or_else(|| EnforcementError::Missing(map_names::PROBE_HITS.into()))?;
        let array: Array<&MapData, u64> =
            Array::try_from(map).map_err(|source| EnforcementError::Map {
                name: map_names::PROBE_HITS.into(),
                source,
            })?;
        array.get(&0, 0).unwrap_or(0)
    };
    let program = lsm_program(&mut ebpf, PROBE_PROGRAM)?;
    let _ = program.detach(link);
    let _ = program.unload();
    if hits == 0 {
        return Err(lsm::LsmUnavailable::NeverRuns { active }.into());
    }
    Ok(ebpf)
}

/// Why the kernel refuses the probe program `name` (loaded, never
/// attached, and unloaded again); `None` when it accepts it.
fn refusal(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    name: &str,
) -> Result<Option<String>, EnforcementError> {
    let program = lsm_program(ebpf, name)?;
    Ok(match program.load("socket_create", btf) {
        Ok(()) => {
            let _ = program.unload();
            None
        }
        Err(err) => Some(lsm::describe_program_error(&err)),
    })
}

/// What `choice` asks for on this kernel, the object being loaded as
/// `loaded`: the mode ([`choose_mode`]), then for the ancestor walk the
/// verdict store if the kernel accepts a program that uses it.
fn choose(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    choice: Choice,
    loaded: Build,
) -> Result<Build, EnforcementError> {
    let mode = choose_mode(ebpf, btf, choice.protection_mode)?;
    if mode == ProtectionMode::Registry {
        return Ok(Build {
            mode,
            cache: VerdictCache::LruHash,
        });
    }
    let cache = match loaded.cache {
        VerdictCache::LruHash => VerdictCache::LruHash,
        VerdictCache::CgroupStorage => match refusal(ebpf, btf, PROBE_STORE_PROGRAM)? {
            None => VerdictCache::CgroupStorage,
            Some(why) if choice.verdict_cache == CacheChoice::CgroupStorage => {
                return Err(EnforcementError::NoVerdictStore(why));
            }
            Some(why) => {
                tracing::info!("no verdict store in cgroup local storage on this kernel: {why}");
                VerdictCache::LruHash
            }
        },
    };
    Ok(Build { mode, cache })
}

/// The mode `choice` asks for on this kernel: whether it lets LSM programs
/// call `bpf_get_current_ancestor_cgroup_id` is tried by loading (never
/// attaching) a program that does.
fn choose_mode(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    choice: ModeChoice,
) -> Result<ProtectionMode, EnforcementError> {
    let refused = refusal(ebpf, btf, PROBE_ANCESTOR_PROGRAM)?;
    if let Some(why) = &refused {
        tracing::info!("no ancestor walk on this kernel: {why}");
    }
    match (choice, refused) {
        (ModeChoice::Registry, _) => Ok(ProtectionMode::Registry),
        (ModeChoice::Auto | ModeChoice::AncestorWalk, None) => Ok(ProtectionMode::AncestorWalk),
        (ModeChoice::Auto, Some(_)) => Ok(ProtectionMode::Registry),
        (ModeChoice::AncestorWalk, Some(why)) => Err(EnforcementError::NoAncestorWalk(why)),
    }
}

/// Handles to the maps the agent writes and reads while it runs.
pub struct Enforcement {
    pub rules: KernelRules,
    pub events: RingBuf<MapData>,
    /// The audit rate limit's maps.
    pub audit_limit: AuditLimitMaps,
    pub mode: ProtectionMode,
    /// Where the ancestor walk caches verdicts (none in registry mode).
    pub cache: Option<VerdictCache>,
    /// Every rule, enforced or missing (and what it needs).
    pub coverage: Vec<RuleState>,
    /// Keeps the object (and its aya-log buffer) alive.
    pub ebpf: Ebpf,
}

/// Attach every program of `mode` this kernel has an attach point for, and
/// pin its link, replacing links a previous agent pinned (the new link is
/// attached before the old one is dropped); links of programs not attached
/// now go. A program whose attach point is missing leaves its rules
/// missing (see `coverage`); one the kernel refuses is an error.
pub fn attach_all(loaded: Loaded, layout: &PinLayout) -> Result<Enforcement, EnforcementError> {
    let Loaded {
        mut ebpf,
        mode,
        cache,
        kernel,
        aya_btf: btf,
    } = loaded;
    let mut attached = BTreeSet::new();
    for program in coverage::programs(mode) {
        if !program.available(&kernel) {
            continue;
        }
        let link = attach(&mut ebpf, &btf, program, program.function(&kernel))?;
        replace_pinned_link(&layout.link(program.name), link)?;
        tracing::info!(program = program.name, "attached and pinned");
        attached.insert(program.name);
    }
    remove_other_links(layout, &attached)?;
    let coverage = coverage::rule_states(mode, &|p| attached.contains(p), &|p| {
        Some(p.available(&kernel))
    });
    let rules = KernelRules {
        cgroups: take_map(&mut ebpf, map_names::PROTECTED_CGROUPS, HashMap::try_from)?,
        generation: take_map(&mut ebpf, map_names::PROTECTION_GENERATION, Array::try_from)?,
        sockets: take_map(&mut ebpf, map_names::PROTECTED_SOCKETS, HashMap::try_from)?,
        vm_namespaces: take_map(&mut ebpf, map_names::VM_NAMESPACES, HashMap::try_from)?,
        denied_filesystems: take_map(&mut ebpf, map_names::DENIED_FS_MAGIC, HashMap::try_from)?,
        immutable_mounts: take_map(&mut ebpf, map_names::IMMUTABLE_MOUNTS, HashMap::try_from)?,
        allowed_devices: take_map(&mut ebpf, map_names::ALLOWED_DEVICES, HashMap::try_from)?,
    };
    let events = take_map(&mut ebpf, map_names::EVENTS, RingBuf::try_from)?;
    let audit_limit = AuditLimitMaps {
        limit: take_map(&mut ebpf, map_names::AUDIT_LIMIT, Array::try_from)?,
        windows: take_map(&mut ebpf, map_names::AUDIT_WINDOWS, HashMap::try_from)?,
        kept_out: take_map(&mut ebpf, map_names::AUDIT_SUPPRESSED, HashMap::try_from)?,
        reported: take_map(&mut ebpf, map_names::AUDIT_REPORTED, HashMap::try_from)?,
        denials: take_map(&mut ebpf, map_names::CGROUP_DENIALS, HashMap::try_from)?,
        gone_since_ns: Default::default(),
    };
    Ok(Enforcement {
        rules,
        events,
        audit_limit,
        mode,
        cache,
        coverage,
        ebpf,
    })
}

/// The bench's reference for start-up: the same object loaded and every
/// program of `mode` this kernel has an attach point for attached, with
/// nothing else (no probe, no mode choice, no pinned links, no policy or
/// rules). The BTF is parsed as the agent parses it (aya's for loading,
/// eci's for the offsets the object needs and the attach points); maps are
/// created under `layout`. The links are returned unpinned: they detach
/// when dropped.
pub fn bare_load_and_attach(
    layout: &PinLayout,
    choice: Choice,
) -> Result<(Ebpf, Vec<FdLink>), EnforcementError> {
    let btf = aya::Btf::from_sys_fs().map_err(|e| lsm::LsmUnavailable::NoBtf(e.to_string()))?;
    let kernel = btf::Btf::from_sys_fs()?;
    let build = Build::first(choice, &kernel)?;
    layout.create()?;
    let mut ebpf = load_object(layout, kernel.kernel_offsets()?, build, &kernel, &btf)?;
    let mut links = Vec::new();
    for program in coverage::programs(build.mode) {
        if program.available(&kernel) {
            links.push(attach(&mut ebpf, &btf, program, program.function(&kernel))?);
        }
    }
    Ok((ebpf, links))
}

/// Load and attach one program; its link, to pin.
/// `function` is the program in the object that implements it here
/// ([`Program::function`]).
fn attach(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    program: Program,
    function: &str,
) -> Result<FdLink, EnforcementError> {
    let name = program.name;
    let err = |source| EnforcementError::Program {
        name: name.into(),
        source,
    };
    match program.attach {
        Attach::Lsm => {
            let p = lsm_program(ebpf, function)?;
            p.load(name, btf).map_err(err)?;
            let id = p.attach().map_err(err)?;
            Ok(p.take_link(id).map_err(err)?.into())
        }
        Attach::BtfTracepoint => {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| EnforcementError::Missing(format!("program {name}")))?
                .try_into()
                .map_err(err)?;
            p.load(name, btf).map_err(err)?;
            let id = p.attach().map_err(err)?;
            Ok(p.take_link(id).map_err(err)?.into())
        }
    }
}

/// Drop the pinned links of programs not attached now (another mode's, a
/// previous version's): their programs detach.
fn remove_other_links(
    layout: &PinLayout,
    attached: &BTreeSet<&str>,
) -> Result<(), EnforcementError> {
    let Ok(entries) = std::fs::read_dir(layout.links_dir()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if attached.contains(name.to_string_lossy().as_ref()) {
            continue;
        }
        std::fs::remove_file(entry.path()).map_err(|source| EnforcementError::Replace {
            path: entry.path().display().to_string(),
            source,
        })?;
        tracing::info!(link = %entry.path().display(), "removed a link of a program not attached now");
    }
    Ok(())
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, EnforcementError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| EnforcementError::Missing(format!("map {name}")))?;
    convert(map).map_err(|source| EnforcementError::Map {
        name: name.into(),
        source,
    })
}

/// The new link is attached already; dropping the old pin afterwards
/// detaches the previous program without a window in between.
fn replace_pinned_link(path: &Path, link: FdLink) -> Result<(), EnforcementError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| EnforcementError::Replace {
            path: path.display().to_string(),
            source,
        })?;
    }
    let pinned = link.pin(path).map_err(|source| EnforcementError::Pin {
        what: path.display().to_string(),
        source,
    })?;
    // The pin holds the link now; our fd may go.
    drop(pinned);
    Ok(())
}

/// Remove every pinned link and map: enforcement ends.
pub fn unload(layout: &PinLayout) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in [layout.links_dir(), layout.maps_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path().display().to_string());
        }
        std::fs::remove_dir(&dir)?;
    }
    if layout.root().is_dir() {
        std::fs::remove_dir(layout.root())?;
    }
    Ok(removed)
}
