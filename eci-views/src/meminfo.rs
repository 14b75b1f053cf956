//! `/proc/meminfo` from the container's memory cgroup, capped by the host's.

use std::{collections::BTreeMap, path::Path};

use crate::{
    CgroupDir, CgroupVersion, ViewsError, optional, read_limit, read_number, read_stat, read_text,
};

/// The host's numbers, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub mem_total: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// The value of a `Name:   1234 kB` line of a meminfo text, in kB.
pub fn kb_value(meminfo: &str, name: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

impl HostMemory {
    pub fn read(path: &Path) -> Result<Self, ViewsError> {
        let text = read_text(path)?;
        Self::parse(&text).ok_or_else(|| {
            ViewsError::parse(path, "no MemTotal, SwapTotal or SwapFree line", &text)
        })
    }

    /// From the text of `/proc/meminfo` (`Name:   1234 kB` lines).
    pub fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| kb_value(text, name)?.checked_mul(1024);
        Some(Self {
            mem_total: field("MemTotal")?,
            swap_total: field("SwapTotal")?,
            swap_free: field("SwapFree")?,
        })
    }
}

/// Swap as the cgroup accounts it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    /// `None`: unlimited.
    pub limit: Option<u64>,
    pub usage: u64,
}

/// What `memory.stat` says, in bytes, under version-neutral names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounters {
    pub file: u64,
    pub anon: u64,
    pub active_anon: u64,
    pub inactive_anon: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub unevictable: u64,
    pub dirty: u64,
    pub writeback: u64,
    pub mapped: u64,
    pub shmem: u64,
    pub slab: u64,
}

impl MemoryCounters {
    /// v1 names, the hierarchical `total_*` ones when present.
    fn from_v1(stat: &BTreeMap<String, u64>) -> Self {
        let get = |name: &str| {
            stat.get(&format!("total_{name}"))
                .or_else(|| stat.get(name))
                .copied()
                .unwrap_or(0)
        };
        Self {
            file: get("cache"),
            anon: get("rss"),
            active_anon: get("active_anon"),
            inactive_anon: get("inactive_anon"),
            active_file: get("active_file"),
            inactive_file: get("inactive_file"),
            unevictable: get("unevictable"),
            dirty: get("dirty"),
            writeback: get("writeback"),
            mapped: get("mapped_file"),
            shmem: get("shmem"),
            slab: 0,
        }
    }

    fn from_v2(stat: &BTreeMap<String, u64>) -> Self {
        let get = |name: &str| stat.get(name).copied().unwrap_or(0);
        Self {
            file: get("file"),
            anon: get("anon"),
            active_anon: get("active_anon"),
            inactive_anon: get("inactive_anon"),
            active_file: get("active_file"),
            inactive_file: get("inactive_file"),
            unevictable: get("unevictable"),
            dirty: get("file_dirty"),
            writeback: get("file_writeback"),
            mapped: get("file_mapped"),
            shmem: get("shmem"),
            slab: get("slab"),
        }
    }
}

/// The container's memory cgroup, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerMemory {
    /// `None`: unlimited.
    pub limit: Option<u64>,
    pub usage: u64,
    /// `None`: swap is not accounted (v1 without `memsw`).
    pub swap: Option<Swap>,
    pub counters: MemoryCounters,
}

impl ContainerMemory {
    pub fn read(cgroup: &CgroupDir) -> Result<Self, ViewsError> {
        match cgroup.version {
            CgroupVersion::V1 => Self::read_v1(&cgroup.dir),
            CgroupVersion::V2 => Self::read_v2(&cgroup.dir),
        }
    }

    fn read_v1(dir: &Path) -> Result<Self, ViewsError> {
        let stat = read_stat(&dir.join("memory.stat"))?;
        let own_limit = read_number(&dir.join("memory.limit_in_bytes"))?;
        // The tightest limit of the container's and its parents'.
        let limit = stat
            .get("hierarchical_memory_limit")
            .map_or(own_limit, |&parents| parents.min(own_limit));
        let usage = read_number(&dir.join("memory.usage_in_bytes"))?;
        let memsw_limit = optional(read_number(&dir.join("memory.memsw.limit_in_bytes")))?;
        let memsw_usage = optional(read_number(&dir.join("memory.memsw.usage_in_bytes")))?;
        let swap = memsw_limit
            .zip(memsw_usage)
            .map(|(memsw_limit, memsw_usage)| Swap {
                limit: Some(memsw_limit.saturating_sub(limit)),
                usage: memsw_usage.saturating_sub(usage),
            });
        Ok(Self {
            limit: Some(limit),
            usage,
            swap,
            counters: MemoryCounters::from_v1(&stat),
        })
    }

    fn read_v2(dir: &Path) -> Result<Self, ViewsError> {
        let stat = read_stat(&dir.join("memory.stat"))?;
        let limit = v2_tightest(dir, "memory.max")?;
        let usage = read_number(&dir.join("memory.current"))?;
        let swap_limit = optional(read_limit(&dir.join("memory.swap.max")))?
            .map(|_| v2_tightest(dir, "memory.swap.max"))
            .transpose()?;
        let swap_usage = optional(read_number(&dir.join("memory.swap.current")))?;
        let swap = swap_limit
            .zip(swap_usage)
            .map(|(limit, usage)| Swap { limit, usage });
        Ok(Self {
            limit,
            usage,
            swap,
            counters: MemoryCounters::from_v2(&stat),
        })
    }
}

/// The tightest v2 limit `file` of `dir` and its ancestors (v1 says it in
/// `hierarchical_memory_limit`; v2 limits a subtree without telling its
/// children). The walk stops where the file is missing: the root cgroup,
/// or the top of the cgroup2 mount seen here.
fn v2_tightest(dir: &Path, file: &str) -> Result<Option<u64>, ViewsError> {
    let mut tightest = read_limit(&dir.join(file))?;
    let mut at = dir.parent();
    while let Some(parent) = at {
        match optional(read_limit(&parent.join(file)))? {
            Some(limit) => {
                tightest = match (tightest, limit) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => break,
        }
        at = parent.parent();
    }
    Ok(tightest)
}

/// The container's `/proc/swaps`: the header, and one line of the swap it
/// may use (its limit, else the host's), if any.
pub fn render_swaps(host: &HostMemory, container: &ContainerMemory) -> String {
    let mut out = String::from("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n");
    let (total, used) = match container.swap {
        Some(swap) => (
            swap.limit
                .map_or(host.swap_total, |l| l.min(host.swap_total)),
            swap.usage,
        ),
        None => (
            host.swap_total,
            host.swap_total.saturating_sub(host.swap_free),
        ),
    };
    if total > 0 {
        out.push_str(&format!(
            "none\t\t\t\t\tvirtual\t\t{}\t\t{}\t\t0\n",
            total / 1024,
            used.min(total) / 1024
        ));
    }
    out
}

fn line(out: &mut String, name: &str, bytes: u64) {
    out.push_str(&format!(
        "{:<16}{:>8} kB\n",
        format!("{name}:"),
        bytes / 1024
    ));
}

/// The container's `/proc/meminfo`, in the kernel's format.
pub fn render(host: &HostMemory, container: &ContainerMemory) -> String {
    let total = container
        .limit
        .map_or(host.mem_total, |limit| limit.min(host.mem_total));
    let free = total.saturating_sub(container.usage);
    let counters = &container.counters;
    let available = free.saturating_add(counters.file).min(total);
    let (swap_total, swap_free) = match container.swap {
        Some(swap) => {
            let total = swap
                .limit
                .map_or(host.swap_total, |limit| limit.min(host.swap_total));
            (total, total.saturating_sub(swap.usage))
        }
        None => (host.swap_total, host.swap_free.min(host.swap_total)),
    };
    let mut out = String::new();
    for (name, bytes) in [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", available),
        ("Buffers", 0),
        ("Cached", counters.file),
        ("SwapCached", 0),
        (
            "Active",
            counters.active_anon.saturating_add(counters.active_file),
        ),
        (
            "Inactive",
            counters
                .inactive_anon
                .saturating_add(counters.inactive_file),
        ),
        ("Active(anon)", counters.active_anon),
        ("Inactive(anon)", counters.inactive_anon),
        ("Active(file)", counters.active_file),
        ("Inactive(file)", counters.inactive_file),
        ("Unevictable", counters.unevictable),
        ("Mlocked", 0),
        ("SwapTotal", swap_total),
        ("SwapFree", swap_free),
        ("Dirty", counters.dirty),
        ("Writeback", counters.writeback),
        ("AnonPages", counters.anon),
        ("Mapped", counters.mapped),
        ("Shmem", counters.shmem),
        ("Slab", counters.slab),
    ] {
        line(&mut out, name, bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    /// What an unlimited v1 limit reads as.
    const V1_UNLIMITED: &str = "9223372036854771712\n";

    fn host() -> HostMemory {
        HostMemory::parse(
            "MemTotal:       24684096 kB\nMemFree:        10246508 kB\nSwapTotal:       2097152 kB\nSwapFree:        1048576 kB\n",
        )
        .unwrap()
    }

    fn cgroup(version: CgroupVersion, files: &[(&str, &str)]) -> (tempfile::TempDir, CgroupDir) {
        crate::test_cgroup(version, files)
    }

    fn value(meminfo: &str, name: &str) -> u64 {
        kb_value(meminfo, name).unwrap_or_else(|| panic!("no {name} in {meminfo}"))
    }

    const V1_STAT: &str = "cache 1048576\nrss 2097152\nmapped_file 4096\nshmem 8192\ndirty 12288\nwriteback 0\nactive_anon 1048576\ninactive_anon 1048576\nactive_file 524288\ninactive_file 524288\nunevictable 0\nhierarchical_memory_limit 9223372036854771712\ntotal_cache 3145728\ntotal_rss 2097152\ntotal_mapped_file 4096\ntotal_shmem 8192\ntotal_dirty 12288\ntotal_writeback 4096\ntotal_active_anon 1048576\ntotal_inactive_anon 1048576\ntotal_active_file 2097152\ntotal_inactive_file 1048576\ntotal_unevictable 0\n";

    #[test]
    fn host_meminfo_parses_and_bad_text_is_refused() {
        assert_eq!(
            host(),
            HostMemory {
                mem_total: 24_684_096 * 1024,
                swap_total: 2 * GIB,
                swap_free: GIB,
            }
        );
        assert_eq!(HostMemory::parse("MemTotal: x kB\n"), None);
        assert_eq!(HostMemory::parse(""), None);
    }

    #[test]
    fn v1_with_a_limit_renders_in_the_kernels_format() {
        let (_tmp, dir) = cgroup(
            CgroupVersion::V1,
            &[
                ("memory.limit_in_bytes", "67108864\n"),
                ("memory.usage_in_bytes", "8388608\n"),
                ("memory.memsw.limit_in_bytes", "134217728\n"),
                ("memory.memsw.usage_in_bytes", "9437184\n"),
                ("memory.stat", V1_STAT),
            ],
        );
        let memory = ContainerMemory::read(&dir).unwrap();
        let text = render(&host(), &memory);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "MemTotal:          65536 kB");
        assert_eq!(lines[1], "MemFree:           57344 kB");
        assert_eq!(lines[2], "MemAvailable:      60416 kB");
        assert_eq!(lines[3], "Buffers:               0 kB");
        assert_eq!(lines[4], "Cached:             3072 kB");
        assert_eq!(lines.len(), 22);
        assert!(lines.iter().all(|l| l.len() == 27), "{text}");
        // The hierarchical total_* counters win over the cgroup's own.
        assert_eq!(value(&text, "Active"), 3072);
        assert_eq!(value(&text, "Active(file)"), 2048);
        assert_eq!(value(&text, "Writeback"), 4);
        assert_eq!(value(&text, "AnonPages"), 2048);
        assert_eq!(value(&text, "Slab"), 0);
        // Swap: memsw minus memory.
        assert_eq!(value(&text, "SwapTotal"), 65536);
        assert_eq!(value(&text, "SwapFree"), 65536 - 1024);
    }

    #[test]
    fn unlimited_v1_and_v2_show_the_hosts_memory() {
        let (_v1, dir) = cgroup(
            CgroupVersion::V1,
            &[
                ("memory.limit_in_bytes", V1_UNLIMITED),
                ("memory.usage_in_bytes", "1048576\n"),
                ("memory.stat", "cache 0\n"),
            ],
        );
        let text = render(&host(), &ContainerMemory::read(&dir).unwrap());
        assert_eq!(value(&text, "MemTotal"), 24_684_096);
        // No memsw files: swap is not accounted, the host's is shown.
        assert_eq!(value(&text, "SwapTotal"), 2 * 1024 * 1024);
        assert_eq!(value(&text, "SwapFree"), 1024 * 1024);
        let (_v2, dir) = cgroup(
            CgroupVersion::V2,
            &[
                ("memory.max", "max\n"),
                ("memory.current", "1048576\n"),
                ("memory.swap.max", "max\n"),
                ("memory.swap.current", "0\n"),
                ("memory.stat", "anon 0\n"),
            ],
        );
        let text = render(&host(), &ContainerMemory::read(&dir).unwrap());
        assert_eq!(value(&text, "MemTotal"), 24_684_096);
        assert_eq!(value(&text, "MemFree"), 24_684_096 - 1024);
        assert_eq!(value(&text, "SwapTotal"), 2 * 1024 * 1024);
        assert_eq!(value(&text, "SwapFree"), 2 * 1024 * 1024);
    }

    #[test]
    fn v1_limits_of_parents_count() {
        let (_tmp, dir) = cgroup(
            CgroupVersion::V1,
            &[
                ("memory.limit_in_bytes", V1_UNLIMITED),
                ("memory.usage_in_bytes", "0\n"),
                ("memory.stat", "hierarchical_memory_limit 134217728\n"),
            ],
        );
        assert_eq!(ContainerMemory::read(&dir).unwrap().limit, Some(128 * MIB));
    }

    #[test]
    fn v2_uses_its_own_names_and_saturates() {
        let (_tmp, dir) = cgroup(
            CgroupVersion::V2,
            &[
                ("memory.max", "67108864\n"),
                // Usage above the limit (the kernel allows it briefly).
                ("memory.current", "70000000\n"),
                ("memory.swap.max", "268435456\n"),
                ("memory.swap.current", "300000000\n"),
                (
                    "memory.stat",
                    "anon 1048576\nfile 134217728\nslab 2097152\nfile_dirty 4096\nfile_writeback 8192\nfile_mapped 16384\nshmem 32768\nactive_anon 1024\ninactive_anon 2048\nactive_file 4096\ninactive_file 8192\nunevictable 0\nsome garbage line\n",
                ),
            ],
        );
        let text = render(&host(), &ContainerMemory::read(&dir).unwrap());
        assert_eq!(value(&text, "MemTotal"), 65536);
        assert_eq!(value(&text, "MemFree"), 0);
        // Capped at MemTotal even with a big file cache.
        assert_eq!(value(&text, "MemAvailable"), 65536);
        assert_eq!(value(&text, "Cached"), 131_072);
        assert_eq!(value(&text, "Slab"), 2048);
        assert_eq!(value(&text, "Dirty"), 4);
        assert_eq!(value(&text, "Writeback"), 8);
        assert_eq!(value(&text, "Mapped"), 16);
        assert_eq!(value(&text, "Shmem"), 32);
        assert_eq!(value(&text, "Inactive"), 10);
        // Swap limit 256 MiB, capped at the host's 2 GiB; usage above it.
        assert_eq!(value(&text, "SwapTotal"), 262_144);
        assert_eq!(value(&text, "SwapFree"), 0);
    }

    #[test]
    fn swap_limits_are_capped_by_the_hosts_swap() {
        let (_tmp, dir) = cgroup(
            CgroupVersion::V2,
            &[
                ("memory.max", "67108864\n"),
                ("memory.current", "0\n"),
                ("memory.swap.max", "17179869184\n"),
                ("memory.swap.current", "0\n"),
                ("memory.stat", ""),
            ],
        );
        let text = render(&host(), &ContainerMemory::read(&dir).unwrap());
        assert_eq!(value(&text, "SwapTotal"), 2 * 1024 * 1024);
    }

    #[test]
    fn malformed_or_missing_files_are_errors_not_panics() {
        let (_tmp, dir) = cgroup(
            CgroupVersion::V2,
            &[
                ("memory.max", "lots\n"),
                ("memory.current", "0\n"),
                ("memory.stat", ""),
            ],
        );
        let err = ContainerMemory::read(&dir).unwrap_err();
        assert!(
            err.to_string().contains("expected a number or max"),
            "{err}"
        );
        let (_tmp, dir) = cgroup(CgroupVersion::V1, &[("memory.stat", "")]);
        assert!(ContainerMemory::read(&dir).unwrap_err().is_not_found());
    }
}
