//! `/proc/diskstats` of the container: the host's lines of the devices it
//! did I/O on, with its own counts (cgroup v2 `io.stat`, v1 `blkio`
//! throttle counters); the fields cgroups do not count are 0.

use std::collections::BTreeMap;

use crate::{CgroupDir, CgroupVersion, ViewsError, optional, read_text};

/// One device's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    pub discard_bytes: u64,
    pub discards: u64,
}

/// Per `(major, minor)`.
pub type ContainerIo = BTreeMap<(u32, u32), DeviceIo>;

fn device(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Read the container's counters; no io files (the controller is not
/// enabled for it) is no I/O.
pub fn read(cgroup: &CgroupDir) -> Result<ContainerIo, ViewsError> {
    let mut io = ContainerIo::new();
    match cgroup.version {
        CgroupVersion::V2 => {
            let Some(text) = optional(read_text(&cgroup.dir.join("io.stat")))? else {
                return Ok(io);
            };
            for line in text.lines() {
                let mut fields = line.split_whitespace();
                let Some(dev) = fields.next().and_then(device) else {
                    continue;
                };
                let entry = io.entry(dev).or_default();
                for field in fields {
                    let Some((name, value)) = field.split_once('=') else {
                        continue;
                    };
                    let value: u64 = value.parse().unwrap_or(0);
                    match name {
                        "rbytes" => entry.read_bytes = value,
                        "wbytes" => entry.write_bytes = value,
                        "rios" => entry.reads = value,
                        "wios" => entry.writes = value,
                        "dbytes" => entry.discard_bytes = value,
                        "dios" => entry.discards = value,
                        _ => {}
                    }
                }
            }
        }
        CgroupVersion::V1 => {
            for (file, bytes) in [
                ("blkio.throttle.io_service_bytes", true),
                ("blkio.throttle.io_serviced", false),
            ] {
                let Some(text) = optional(read_text(&cgroup.dir.join(file)))? else {
                    continue;
                };
                for line in text.lines() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let [dev, op, value] = fields[..] else {
                        continue;
                    };
                    let (Some(dev), Ok(value)) = (device(dev), value.parse::<u64>()) else {
                        continue;
                    };
                    let entry = io.entry(dev).or_default();
                    match (op, bytes) {
                        ("Read", true) => entry.read_bytes = value,
                        ("Write", true) => entry.write_bytes = value,
                        ("Discard", true) => entry.discard_bytes = value,
                        ("Read", false) => entry.reads = value,
                        ("Write", false) => entry.writes = value,
                        ("Discard", false) => entry.discards = value,
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(io)
}

/// The host's lines of the devices with I/O in `io`, their counters the
/// container's (sectors are 512 bytes).
pub fn render(host_diskstats: &str, io: &ContainerIo) -> String {
    let mut out = String::new();
    for line in host_diskstats.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(major), Some(minor), Some(name)) = (
            fields.first().and_then(|f| f.parse::<u32>().ok()),
            fields.get(1).and_then(|f| f.parse::<u32>().ok()),
            fields.get(2),
        ) else {
            continue;
        };
        let Some(dev) = io
            .get(&(major, minor))
            .filter(|d| **d != DeviceIo::default())
        else {
            continue;
        };
        // Fields 4.. : reads, merged, sectors, ms, writes, merged, sectors,
        // ms, in flight, io ms, weighted ms, then (4.18+) discards (4) and
        // (5.5+) flushes (2): as many as the host's line has.
        let counters = fields.len().saturating_sub(3).max(11);
        let mut values = vec![0u64; counters];
        values[0] = dev.reads;
        values[2] = dev.read_bytes / 512;
        values[4] = dev.writes;
        values[6] = dev.write_bytes / 512;
        if counters >= 15 {
            values[11] = dev.discards;
            values[13] = dev.discard_bytes / 512;
        }
        out.push_str(&format!("{major:>4} {minor:>7} {name}"));
        for value in values {
            out.push_str(&format!(" {value}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "   8       0 sda 100 1 2000 10 50 2 800 20 0 30 40 0 0 0 0 5 6\n   8       1 sda1 90 0 1800 9 40 0 600 10 0 20 30 0 0 0 0 0 0\n 253       0 vda 7 0 56 1 0 0 0 0 0 1 1\n";

    #[test]
    fn v2_io_stat_becomes_the_devices_lines_and_idle_devices_go() {
        let (_tmp, cgroup) = crate::test_cgroup(
            CgroupVersion::V2,
            &[(
                "io.stat",
                "8:0 rbytes=1048576 wbytes=4096 rios=3 wios=1 dbytes=0 dios=0\n253:0 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=0 dios=0\n",
            )],
        );
        let io = read(&cgroup).unwrap();
        assert_eq!(
            render(HOST, &io),
            "   8       0 sda 3 0 2048 0 1 0 8 0 0 0 0 0 0 0 0 0 0\n"
        );
    }

    #[test]
    fn v1_throttle_counters_are_read_per_device_and_operation() {
        let (_tmp, cgroup) = crate::test_cgroup(
            CgroupVersion::V1,
            &[
                (
                    "blkio.throttle.io_service_bytes",
                    "253:0 Read 512\n253:0 Write 1024\n253:0 Total 1536\nTotal 1536\n",
                ),
                (
                    "blkio.throttle.io_serviced",
                    "253:0 Read 1\n253:0 Write 2\n253:0 Total 3\nTotal 3\n",
                ),
            ],
        );
        let io = read(&cgroup).unwrap();
        assert_eq!(
            render(HOST, &io),
            " 253       0 vda 1 0 1 0 2 0 2 0 0 0 0\n"
        );
        let (_tmp, none) = crate::test_cgroup(CgroupVersion::V2, &[]);
        assert_eq!(render(HOST, &read(&none).unwrap()), "");
    }
}
