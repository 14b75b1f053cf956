//! `/proc/uptime` from the container's start time and cpu usage.

use std::path::Path;

use crate::{CgroupVersion, ViewSource, ViewsError, optional, read_number, read_stat, read_text};

/// The first field of the host's `/proc/uptime`, in seconds.
pub fn read_host_uptime(path: &Path) -> Result<f64, ViewsError> {
    let text = read_text(path)?;
    text.split_whitespace()
        .next()
        .and_then(|first| first.parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .ok_or_else(|| ViewsError::parse(path, "expected seconds since boot", &text))
}

/// `sysconf(_SC_CLK_TCK)`; 100 (every Linux architecture's value) if it
/// fails.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// `sysconf(_SC_NPROCESSORS_ONLN)`, at least 1.
pub fn online_cpus() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(cpus)
        .ok()
        .filter(|&c| c > 0)
        .map_or(1.0, f64::from)
}

/// The container's cpu time and how many cpus it may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContainerCpu {
    pub usage_seconds: f64,
    /// The online cpus, or fewer under a cpu quota.
    pub cpus: f64,
}

impl ContainerCpu {
    pub fn read(source: &ViewSource, online_cpus: f64) -> Result<Self, ViewsError> {
        let usage_seconds = match &source.cpu_usage {
            None => 0.0,
            Some(cgroup) => match cgroup.version {
                CgroupVersion::V1 => read_number(&cgroup.dir.join("cpuacct.usage"))? as f64 / 1e9,
                CgroupVersion::V2 => {
                    let path = cgroup.dir.join("cpu.stat");
                    let usec = read_stat(&path)?
                        .get("usage_usec")
                        .copied()
                        .ok_or_else(|| ViewsError::parse(&path, "no usage_usec", ""))?;
                    usec as f64 / 1e6
                }
            },
        };
        let quota = match &source.cpu_limit {
            None => None,
            Some(cgroup) => match cgroup.version {
                CgroupVersion::V1 => v1_quota(&cgroup.dir)?,
                CgroupVersion::V2 => v2_quota(&cgroup.dir.join("cpu.max"))?,
            },
        };
        Ok(Self {
            usage_seconds,
            cpus: quota.map_or(online_cpus, |q| q.min(online_cpus)),
        })
    }
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

/// The container's `/proc/uptime`: seconds since its init started, and
/// idle seconds (the time its cpus could have run minus what it used).
pub fn render(
    host_uptime_seconds: f64,
    start_ticks: u64,
    ticks_per_second: u64,
    cpu: &ContainerCpu,
) -> String {
    let started = start_ticks as f64 / ticks_per_second.max(1) as f64;
    let uptime = (host_uptime_seconds - started).max(0.0);
    let idle = (uptime * cpu.cpus - cpu.usage_seconds).max(0.0);
    format!("{uptime:.2} {idle:.2}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(version: CgroupVersion, files: &[(&str, &str)]) -> (tempfile::TempDir, ViewSource) {
        let (tmp, dir) = crate::test_cgroup(version, files);
        let source = ViewSource {
            memory: dir.clone(),
            cpu_usage: Some(dir.clone()),
            cpu_limit: Some(dir),
            start_ticks: 0,
        };
        (tmp, source)
    }

    #[test]
    fn uptime_counts_from_the_containers_start_and_idle_from_its_cpus() {
        let cpu = ContainerCpu {
            usage_seconds: 3.0,
            cpus: 2.0,
        };
        // Started 1000 s after boot (100 ticks a second), host up 1010.5 s.
        assert_eq!(render(1010.5, 100_000, 100, &cpu), "10.50 18.00\n");
        // Started "after" now (clock skew): zero, never negative.
        assert_eq!(render(5.0, 1_000, 100, &cpu), "0.00 0.00\n");
        // Busier than its cpus allow: idle saturates at zero.
        let busy = ContainerCpu {
            usage_seconds: 100.0,
            cpus: 1.0,
        };
        assert_eq!(render(20.0, 0, 100, &busy), "20.00 0.00\n");
    }

    #[test]
    fn host_uptime_is_the_first_field() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("uptime");
        std::fs::write(&path, "24920.80 26523.90\n").unwrap();
        assert_eq!(read_host_uptime(&path).unwrap(), 24920.80);
        std::fs::write(&path, "soon\n").unwrap();
        assert!(read_host_uptime(&path).is_err());
    }

    #[test]
    fn v1_usage_is_in_nanoseconds_and_a_quota_limits_the_cpus() {
        let (_tmp, source) = source(
            CgroupVersion::V1,
            &[
                ("cpuacct.usage", "2500000000\n"),
                ("cpu.cfs_quota_us", "150000\n"),
                ("cpu.cfs_period_us", "100000\n"),
            ],
        );
        let cpu = ContainerCpu::read(&source, 4.0).unwrap();
        assert_eq!(
            cpu,
            ContainerCpu {
                usage_seconds: 2.5,
                cpus: 1.5
            }
        );
        let (_tmp, source) = source_unlimited_v1();
        assert_eq!(ContainerCpu::read(&source, 4.0).unwrap().cpus, 4.0);
    }

    fn source_unlimited_v1() -> (tempfile::TempDir, ViewSource) {
        source(
            CgroupVersion::V1,
            &[
                ("cpuacct.usage", "0\n"),
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpu.cfs_period_us", "100000\n"),
            ],
        )
    }

    #[test]
    fn v2_usage_is_in_microseconds_and_cpu_max_may_say_max() {
        let (_tmp, limited) = source(
            CgroupVersion::V2,
            &[
                ("cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n"),
                ("cpu.max", "50000 100000\n"),
            ],
        );
        assert_eq!(
            ContainerCpu::read(&limited, 2.0).unwrap(),
            ContainerCpu {
                usage_seconds: 1.5,
                cpus: 0.5
            }
        );
        let (_tmp, unlimited) = source(
            CgroupVersion::V2,
            &[("cpu.stat", "usage_usec 0\n"), ("cpu.max", "max 100000\n")],
        );
        assert_eq!(ContainerCpu::read(&unlimited, 2.0).unwrap().cpus, 2.0);
        // A quota above the online cpus does not invent cpus.
        let (_tmp, generous) = source(
            CgroupVersion::V2,
            &[
                ("cpu.stat", "usage_usec 0\n"),
                ("cpu.max", "800000 100000\n"),
            ],
        );
        assert_eq!(ContainerCpu::read(&generous, 2.0).unwrap().cpus, 2.0);
        let (_tmp, broken) = source(
            CgroupVersion::V2,
            &[("cpu.stat", "usage_usec 0\n"), ("cpu.max", "half\n")],
        );
        assert!(ContainerCpu::read(&broken, 2.0).is_err());
    }

    #[test]
    fn the_system_answers_sane_constants() {
        assert!(ticks_per_second() > 0);
        assert!(online_cpus() >= 1.0);
    }
}
