//! `/proc/uptime` from the container's start time and cpu usage.

use std::path::Path;

use crate::{ViewsError, cpus::ContainerCpu, read_text};

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

/// Seconds since the container's init started (never negative).
pub fn container_seconds(host_uptime_seconds: f64, start_ticks: u64, ticks_per_second: u64) -> f64 {
    let started = start_ticks as f64 / ticks_per_second.max(1) as f64;
    (host_uptime_seconds - started).max(0.0)
}

/// The container's `/proc/uptime`: seconds since its init started, and
/// idle seconds (the time its cpus could have run minus what it used).
pub fn render(uptime: f64, cpu: &ContainerCpu) -> String {
    let idle = (uptime * cpu.cpus - cpu.usage.total).max(0.0);
    format!("{uptime:.2} {idle:.2}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpus::CpuUsage;

    fn cpu(total: f64, cpus: f64) -> ContainerCpu {
        ContainerCpu {
            usage: CpuUsage {
                total,
                ..CpuUsage::default()
            },
            cpus,
            visible: vec![0],
        }
    }

    #[test]
    fn uptime_counts_from_the_containers_start_and_idle_from_its_cpus() {
        // Started 1000 s after boot (100 ticks a second), host up 1010.5 s.
        let uptime = container_seconds(1010.5, 100_000, 100);
        assert_eq!(render(uptime, &cpu(3.0, 2.0)), "10.50 18.00\n");
        // Started "after" now (clock skew): zero, never negative.
        assert_eq!(container_seconds(5.0, 1_000, 100), 0.0);
        assert_eq!(render(0.0, &cpu(3.0, 2.0)), "0.00 0.00\n");
        // Busier than its cpus allow: idle saturates at zero.
        assert_eq!(render(20.0, &cpu(100.0, 1.0)), "20.00 0.00\n");
        // Half a cpu's quota: half the idle time.
        assert_eq!(render(10.0, &cpu(1.0, 0.5)), "10.00 4.00\n");
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
    fn the_system_answers_sane_constants() {
        assert!(ticks_per_second() > 0);
    }
}
