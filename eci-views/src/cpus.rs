//! Which CPUs a container sees and how much it used them:
//! `/sys/devices/system/cpu/online` and `/proc/cpuinfo`.
//!
//! The CPUs a container sees are the CPUs of its cpuset that are online,
//! and no more of them than its CPU quota rounded up (LXCFS's rule): with
//! `--cpus=1` on a 2-CPU VM it sees its first cpuset CPU only. CPUs keep
//! their numbers, so the views agree with `sched_getaffinity` and
//! `/sys/devices/system/cpu/cpuN`.

use std::path::Path;

use crate::{CgroupVersion, ViewSource, ViewsError, optional, read_number, read_stat, read_text};

/// Parse a kernel CPU list (`0-3,5,7-8`); `None` for anything else. An
/// empty text (an empty cpuset) is the empty list.
pub fn parse_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
                if last < first || last - first > 65_536 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// The kernel's form of a CPU list: ranges joined by commas, a newline.
pub fn format_list(cpus: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j == i {
            out.push_str(&cpus[i].to_string());
        } else {
            out.push_str(&format!("{}-{}", cpus[i], cpus[j]));
        }
        i = j + 1;
    }
    out.push('\n');
    out
}

/// The host's online CPUs (`/sys/devices/system/cpu/online`).
pub fn read_online(path: &Path) -> Result<Vec<u32>, ViewsError> {
    let text = read_text(path)?;
    parse_list(&text)
        .filter(|cpus| !cpus.is_empty())
        .ok_or_else(|| ViewsError::parse(path, "expected a CPU list", &text))
}

/// The container's CPU time, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUsage {
    pub total: f64,
    pub user: f64,
    pub system: f64,
}

/// The container's CPUs and its CPU time.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerCpu {
    pub usage: CpuUsage,
    /// How many CPUs' worth of time it may use: its visible CPUs, or its
    /// quota when that is less (`--cpus=0.5`: 0.5).
    pub cpus: f64,
    /// The CPUs it sees, by their numbers.
    pub visible: Vec<u32>,
}

impl ContainerCpu {
    /// `online`: the host's online CPUs; `ticks_per_second`: `USER_HZ`
    /// (v1's `cpuacct.stat` counts in it).
    pub fn read(
        source: &ViewSource,
        online: &[u32],
        ticks_per_second: u64,
    ) -> Result<Self, ViewsError> {
        let usage = match &source.cpu_usage {
            None => CpuUsage::default(),
            Some(cgroup) => match cgroup.version {
                CgroupVersion::V1 => v1_usage(&cgroup.dir, ticks_per_second)?,
                CgroupVersion::V2 => v2_usage(&cgroup.dir.join("cpu.stat"))?,
            },
        };
        let quota = match &source.cpu_limit {
            None => None,
            Some(cgroup) => match cgroup.version {
                CgroupVersion::V1 => v1_quota(&cgroup.dir)?,
                CgroupVersion::V2 => v2_quota(&cgroup.dir.join("cpu.max"))?,
            },
        };
        let cpuset = match &source.cpuset {
            None => None,
            Some(cgroup) => match cgroup.version {
                CgroupVersion::V1 => {
                    read_cpuset(&cgroup.dir, &["cpuset.effective_cpus", "cpuset.cpus"])?
                }
                CgroupVersion::V2 => read_cpuset(&cgroup.dir, &["cpuset.cpus.effective"])?,
            },
        };
        Ok(Self::from_limits(usage, online, cpuset.as_deref(), quota))
    }

    /// The visible CPUs: the cpuset's online ones (all online ones without
    /// a cpuset, or when it names none of them), the first `ceil(quota)`
    /// of those under a quota; never none.
    pub fn from_limits(
        usage: CpuUsage,
        online: &[u32],
        cpuset: Option<&[u32]>,
        quota: Option<f64>,
    ) -> Self {
        let mut visible: Vec<u32> = match cpuset {
            Some(set) => online.iter().copied().filter(|c| set.contains(c)).collect(),
            None => online.to_vec(),
        };
        if visible.is_empty() {
            visible = online.to_vec();
        }
        if visible.is_empty() {
            visible.push(0);
        }
        let mut cpus = visible.len() as f64;
        if let Some(quota) = quota.filter(|q| q.is_finite() && *q > 0.0) {
            let keep = (quota.ceil() as usize).clamp(1, visible.len());
            visible.truncate(keep);
            cpus = quota.min(visible.len() as f64);
        }
        Self {
            usage,
            cpus,
            visible,
        }
    }
}

/// The first of `names` that exists; an empty cpuset is none.
fn read_cpuset(dir: &Path, names: &[&str]) -> Result<Option<Vec<u32>>, ViewsError> {
    for name in names {
        let path = dir.join(name);
        if let Some(text) = optional(read_text(&path))? {
            let cpus = parse_list(&text)
                .ok_or_else(|| ViewsError::parse(&path, "expected a CPU list", &text))?;
            return Ok(Some(cpus).filter(|c| !c.is_empty()));
        }
    }
    Ok(None)
}

/// `cpuacct.usage` (ns) and `cpuacct.stat` (`user`/`system`, in ticks).
fn v1_usage(dir: &Path, ticks_per_second: u64) -> Result<CpuUsage, ViewsError> {
    let total = read_number(&dir.join("cpuacct.usage"))? as f64 / 1e9;
    let stat = optional(read_stat(&dir.join("cpuacct.stat")))?.unwrap_or_default();
    let seconds =
        |name: &str| stat.get(name).copied().unwrap_or(0) as f64 / ticks_per_second.max(1) as f64;
    Ok(CpuUsage {
        total,
        user: seconds("user"),
        system: seconds("system"),
    })
}

/// `cpu.stat`: `usage_usec`, `user_usec`, `system_usec`.
fn v2_usage(path: &Path) -> Result<CpuUsage, ViewsError> {
    let stat = read_stat(path)?;
    let usec = stat
        .get("usage_usec")
        .copied()
        .ok_or_else(|| ViewsError::parse(path, "no usage_usec", ""))?;
    let seconds = |name: &str| stat.get(name).copied().unwrap_or(0) as f64 / 1e6;
    Ok(CpuUsage {
        total: usec as f64 / 1e6,
        user: seconds("user_usec"),
        system: seconds("system_usec"),
    })
}

/// `cpu.cfs_quota_us / cpu.cfs_period_us`; `-1` (or no such files) is none.
fn v1_quota(dir: &Path) -> Result<Option<f64>, ViewsError> {
    let path = dir.join("cpu.cfs_quota_us");
    let Some(text) = optional(read_text(&path))? else {
        return Ok(None);
    };
    let quota: i64 = text
        .trim()
        .parse()
        .map_err(|_| ViewsError::parse(&path, "expected a number", &text))?;
    if quota <= 0 {
        return Ok(None);
    }
    let period = read_number(&dir.join("cpu.cfs_period_us"))?;
    Ok((period > 0).then(|| quota as f64 / period as f64))
}

/// `cpu.max`: `max 100000` (none) or `50000 100000` (half a cpu).
fn v2_quota(path: &Path) -> Result<Option<f64>, ViewsError> {
    let Some(text) = optional(read_text(path))? else {
        return Ok(None);
    };
    let bad = || ViewsError::parse(path, "expected `max PERIOD` or `QUOTA PERIOD`", &text);
    let mut fields = text.split_whitespace();
    let (quota, period) = (
        fields.next().ok_or_else(bad)?,
        fields.next().ok_or_else(bad)?,
    );
    if quota == "max" {
        return Ok(None);
    }
    let quota: u64 = quota.parse().map_err(|_| bad())?;
    let period: u64 = period.parse().map_err(|_| bad())?;
    Ok((period > 0).then(|| quota as f64 / period as f64))
}

/// The processor number of a `/proc/cpuinfo` block, if it has one.
fn processor_of(block: &str) -> Option<u32> {
    block.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == "processor").then(|| value.trim().parse().ok())?
    })
}

/// The container's `/proc/cpuinfo`: the host's blocks of the visible
/// processors (blocks without a processor line, as some architectures
/// have, are kept).
pub fn render_cpuinfo(host_cpuinfo: &str, visible: &[u32]) -> String {
    let mut out = String::with_capacity(host_cpuinfo.len());
    for block in host_cpuinfo.split("\n\n") {
        if block.trim().is_empty() {
            continue;
        }
        if processor_of(block).is_none_or(|n| visible.contains(&n)) {
            out.push_str(block.trim_end_matches('\n'));
            out.push_str("\n\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CgroupDir, test_cgroup, test_source};

    #[test]
    fn cpu_lists_parse_and_format_as_the_kernel_writes_them() {
        assert_eq!(parse_list("0-3,5,7-8\n"), Some(vec![0, 1, 2, 3, 5, 7, 8]));
        assert_eq!(parse_list("\n"), Some(vec![]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("x"), None);
        assert_eq!(format_list(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8\n");
        assert_eq!(format_list(&[1]), "1\n");
    }

    #[test]
    fn a_quota_keeps_the_first_cpus_of_the_cpuset_rounded_up() {
        let usage = CpuUsage::default();
        let online = [0, 1, 2, 3];
        let all = ContainerCpu::from_limits(usage, &online, None, None);
        assert_eq!((all.visible.as_slice(), all.cpus), (&[0, 1, 2, 3][..], 4.0));
        let one = ContainerCpu::from_limits(usage, &online, None, Some(1.0));
        assert_eq!((one.visible.as_slice(), one.cpus), (&[0][..], 1.0));
        let half = ContainerCpu::from_limits(usage, &online, Some(&[2, 3]), Some(1.5));
        assert_eq!((half.visible.as_slice(), half.cpus), (&[2, 3][..], 1.5));
        let tiny = ContainerCpu::from_limits(usage, &online, Some(&[3]), Some(0.5));
        assert_eq!((tiny.visible.as_slice(), tiny.cpus), (&[3][..], 0.5));
        // A quota above the cpuset: the cpuset.
        let wide = ContainerCpu::from_limits(usage, &online, Some(&[1]), Some(8.0));
        assert_eq!((wide.visible.as_slice(), wide.cpus), (&[1][..], 1.0));
        // A cpuset of offline CPUs only: the online ones, never none.
        let odd = ContainerCpu::from_limits(usage, &online, Some(&[9]), None);
        assert_eq!(odd.visible, vec![0, 1, 2, 3]);
    }

    fn source(version: CgroupVersion, files: &[(&str, &str)]) -> (tempfile::TempDir, ViewSource) {
        let (tmp, dir) = test_cgroup(version, files);
        (tmp, test_source(dir, None))
    }

    #[test]
    fn v1_reads_cpuacct_cfs_quota_and_the_effective_cpuset() {
        let (_tmp, source) = source(
            CgroupVersion::V1,
            &[
                ("cpuacct.usage", "2500000000\n"),
                ("cpuacct.stat", "user 150\nsystem 50\n"),
                ("cpu.cfs_quota_us", "100000\n"),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpuset.effective_cpus", "1-3\n"),
            ],
        );
        let cpu = ContainerCpu::read(&source, &[0, 1, 2, 3], 100).unwrap();
        assert_eq!(
            cpu,
            ContainerCpu {
                usage: CpuUsage {
                    total: 2.5,
                    user: 1.5,
                    system: 0.5
                },
                cpus: 1.0,
                visible: vec![1],
            }
        );
    }

    #[test]
    fn v2_reads_cpu_stat_cpu_max_and_may_lack_a_cpuset() {
        let (_tmp, source) = source(
            CgroupVersion::V2,
            &[
                (
                    "cpu.stat",
                    "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\n",
                ),
                ("cpu.max", "max 100000\n"),
            ],
        );
        let cpu = ContainerCpu::read(&source, &[0, 1], 100).unwrap();
        assert_eq!(cpu.usage.total, 3.0);
        assert_eq!(cpu.usage.user, 2.0);
        assert_eq!(cpu.visible, vec![0, 1]);
        assert_eq!(cpu.cpus, 2.0);
        let bad = CgroupDir {
            version: CgroupVersion::V2,
            dir: source.memory.dir.clone(),
        };
        std::fs::write(bad.dir.join("cpu.max"), "lots\n").unwrap();
        assert!(ContainerCpu::read(&source, &[0], 100).is_err());
    }

    #[test]
    fn cpuinfo_keeps_the_blocks_of_the_visible_processors() {
        let host = "processor\t: 0\nmodel name\t: X\n\nprocessor\t: 1\nmodel name\t: X\n\nprocessor\t: 2\nmodel name\t: X\n\n";
        assert_eq!(
            render_cpuinfo(host, &[1]),
            "processor\t: 1\nmodel name\t: X\n\n"
        );
        // arm64-style trailer without a processor line stays.
        let arm =
            "processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\nBogoMIPS\t: 50\n\nHardware\t: Y\n";
        assert_eq!(
            render_cpuinfo(arm, &[0]),
            "processor\t: 0\nBogoMIPS\t: 50\n\nHardware\t: Y\n\n"
        );
    }
}
