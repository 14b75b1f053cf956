//! Where a container's numbers come from: its memory and cpu cgroup
//! directories and its init's start time, resolved once from the init's
//! `/proc/<pid>/cgroup` and kept as `view.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ViewsError, read_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A cgroup directory and the version of the hierarchy it is in (which
/// decides the file names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    pub version: CgroupVersion,
    pub dir: PathBuf,
}

/// The content of `view.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewSource {
    /// v1 `memory` controller when mounted (where Docker's limits are on a
    /// hybrid host), else the cgroup2 directory.
    pub memory: CgroupDir,
    /// v1 `cpuacct` (`cpuacct.usage`), else cgroup2 (`cpu.stat`).
    pub cpu_usage: Option<CgroupDir>,
    /// v1 `cpu` (`cpu.cfs_quota_us`), else cgroup2 (`cpu.max`).
    pub cpu_limit: Option<CgroupDir>,
    /// v1 `cpuset` (`cpuset.effective_cpus`), else cgroup2
    /// (`cpuset.cpus.effective`).
    #[serde(default)]
    pub cpuset: Option<CgroupDir>,
    /// v1 `blkio` (`blkio.throttle.io_service*`), else cgroup2 (`io.stat`).
    #[serde(default)]
    pub io: Option<CgroupDir>,
    /// The cgroup2 directory (also on a hybrid host): its inode number is
    /// the cgroup id the kernel reports for the container's tasks.
    #[serde(default)]
    pub cgroup2: Option<PathBuf>,
    /// The init's start time, in clock ticks since boot (`/proc/<pid>/stat`
    /// field 22).
    pub start_ticks: u64,
}

/// Read the init's cgroups, start time and this process's mounts.
pub fn resolve(pid: u32) -> Result<ViewSource, ViewsError> {
    let cgroups = read_text(&PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    let stat = read_text(&PathBuf::from(format!("/proc/{pid}/stat")))?;
    let mountinfo = read_text(Path::new("/proc/self/mountinfo"))?;
    from_texts(pid, &cgroups, &stat, &mountinfo)
}

/// [`resolve`] on the three files' contents.
pub fn from_texts(
    pid: u32,
    cgroups: &str,
    stat: &str,
    mountinfo: &str,
) -> Result<ViewSource, ViewsError> {
    let mounts = cgroup_mounts(mountinfo);
    let memberships = memberships(cgroups);
    let find = |controller: &str| {
        find_v1(&mounts, &memberships, controller).or_else(|| find_v2(&mounts, &memberships))
    };
    let memory = find("memory").ok_or_else(|| ViewsError::Resolve {
        pid,
        why: "no memory cgroup (neither a mounted v1 memory controller nor cgroup2) in its /proc/<pid>/cgroup".into(),
    })?;
    let start_ticks = start_ticks(stat).ok_or_else(|| ViewsError::Resolve {
        pid,
        why: format!("no start time in /proc/{pid}/stat"),
    })?;
    Ok(ViewSource {
        memory,
        cpu_usage: find("cpuacct"),
        cpu_limit: find("cpu"),
        cpuset: find("cpuset"),
        io: find("blkio"),
        cgroup2: find_v2(&mounts, &memberships).map(|d| d.dir),
        start_ticks,
    })
}

/// The cgroup2 directory, in this mount namespace, of the process whose
/// `/proc/<pid>/cgroup` is `cgroups` (`mountinfo`: this process's).
pub fn cgroup2_dir(cgroups: &str, mountinfo: &str) -> Option<PathBuf> {
    find_v2(&cgroup_mounts(mountinfo), &memberships(cgroups)).map(|d| d.dir)
}

/// The freezer of the process whose `/proc/<pid>/cgroup` is `cgroups`
/// (`mountinfo`: this process's): the v1 `freezer` controller's directory
/// where one is mounted (a hybrid host: runc pauses there), else the
/// cgroup2 directory (`cgroup.freeze`).
pub fn freezer_dir(cgroups: &str, mountinfo: &str) -> Option<CgroupDir> {
    let (mounts, memberships) = (cgroup_mounts(mountinfo), memberships(cgroups));
    find_v1(&mounts, &memberships, "freezer").or_else(|| find_v2(&mounts, &memberships))
}

/// Field 22 of `/proc/<pid>/stat`; counted after the command name, which
/// is in parentheses and may hold spaces and parentheses itself.
pub fn start_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // Fields from 3 (state) on: field 22 is the 20th.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// One line of `/proc/<pid>/cgroup`.
#[derive(Debug, PartialEq, Eq)]
struct Membership<'a> {
    /// Empty for cgroup2 (`0::/path`).
    controllers: Vec<&'a str>,
    path: &'a str,
}

fn memberships(text: &str) -> Vec<Membership<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some(Membership {
                controllers: controllers.split(',').filter(|c| !c.is_empty()).collect(),
                path,
            })
        })
        .collect()
}

/// A cgroup file system mount: v1 with its controllers, or cgroup2.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMount {
    /// `None` for cgroup2.
    controllers: Option<Vec<String>>,
    /// The hierarchy path mounted there (`/` unless in a cgroup namespace
    /// or a bind of a subtree).
    root: String,
    point: PathBuf,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let before: Vec<&str> = before.split_whitespace().collect();
            let after: Vec<&str> = after.split_whitespace().collect();
            let (root, point) = (before.get(3)?, before.get(4)?);
            let (fstype, options) = (after.first()?, after.get(2).copied().unwrap_or(""));
            let controllers = match *fstype {
                "cgroup2" => None,
                "cgroup" => Some(options.split(',').map(str::to_owned).collect()),
                _ => return None,
            };
            Some(CgroupMount {
                controllers,
                root: mountinfo_unescape(root),
                point: PathBuf::from(mountinfo_unescape(point)),
            })
        })
        .collect()
}

/// `point` + (`path` relative to the mount's root), when the mount holds it.
fn dir_in(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
    };
    Some(mount.point.join(relative.trim_start_matches('/')))
}

fn find_v1(
    mounts: &[CgroupMount],
    memberships: &[Membership],
    controller: &str,
) -> Option<CgroupDir> {
    let membership = memberships
        .iter()
        .find(|m| m.controllers.contains(&controller))?;
    mounts
        .iter()
        .filter(|m| {
            m.controllers
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c == controller))
        })
        .find_map(|m| dir_in(m, membership.path))
        .map(|dir| CgroupDir {
            version: CgroupVersion::V1,
            dir,
        })
}

fn find_v2(mounts: &[CgroupMount], memberships: &[Membership]) -> Option<CgroupDir> {
    let membership = memberships.iter().find(|m| m.controllers.is_empty())?;
    mounts
        .iter()
        .filter(|m| m.controllers.is_none())
        .find_map(|m| dir_in(m, membership.path))
        .map(|dir| CgroupDir {
            version: CgroupVersion::V2,
            dir,
        })
}

/// Undo mountinfo's octal escapes (`\040` for a space...). eci-runc reads
/// mountinfo with it too.
pub fn mountinfo_unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUPS: &str = "\
9:name=systemd:/docker/abc
4:memory:/docker/abc
2:cpuacct:/docker/abc
1:cpu:/docker/abc
0::/docker/abc
";
    const STAT: &str = "1234 (sh (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1200000 100 18446744073709551615";

    #[test]
    fn start_ticks_is_field_22_whatever_the_command_name() {
        assert_eq!(start_ticks(STAT), Some(987_654));
        assert_eq!(start_ticks("1 (init) S 1 2"), None);
        assert_eq!(start_ticks("garbage"), None);
    }

    #[test]
    fn on_a_hybrid_host_memory_and_cpu_come_from_v1() {
        let source = from_texts(1234, HYBRID_CGROUPS, STAT, HYBRID_MOUNTS).unwrap();
        assert_eq!(
            source.memory,
            CgroupDir {
                version: CgroupVersion::V1,
                dir: "/sys/fs/cgroup/memory/docker/abc".into()
            }
        );
        assert_eq!(
            source.cpu_usage.unwrap().dir,
            Path::new("/sys/fs/cgroup/cpuacct/docker/abc")
        );
        assert_eq!(
            source.cpu_limit.unwrap().dir,
            Path::new("/sys/fs/cgroup/cpu/docker/abc")
        );
        assert_eq!(source.start_ticks, 987_654);
    }

    #[test]
    fn comounted_v1_controllers_share_a_directory() {
        let mounts = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let cgroups = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n";
        let source = from_texts(1, cgroups, STAT, mounts).unwrap();
        let usage = source.cpu_usage.unwrap();
        assert_eq!(usage.version, CgroupVersion::V1);
        assert_eq!(
            usage.dir,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/docker/abc")
        );
        assert_eq!(source.cpu_limit.unwrap().dir, usage.dir);
    }

    #[test]
    fn on_a_v2_host_everything_comes_from_the_cgroup2_mount() {
        let mounts = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let source = from_texts(1, "0::/system.slice/docker-abc.scope\n", STAT, mounts).unwrap();
        let expected = CgroupDir {
            version: CgroupVersion::V2,
            dir: "/sys/fs/cgroup/system.slice/docker-abc.scope".into(),
        };
        assert_eq!(source.memory, expected);
        assert_eq!(source.cpu_usage, Some(expected.clone()));
        assert_eq!(source.cpu_limit, Some(expected));
    }

    #[test]
    fn the_cgroup2_directory_is_found_on_a_hybrid_host_too() {
        assert_eq!(
            cgroup2_dir(HYBRID_CGROUPS, HYBRID_MOUNTS),
            Some(PathBuf::from("/sys/fs/cgroup/unified/docker/abc"))
        );
        assert_eq!(cgroup2_dir("4:memory:/docker/abc\n", HYBRID_MOUNTS), None);
    }

    #[test]
    fn a_mount_of_a_subtree_is_joined_relative_to_its_root() {
        let mounts = "30 23 0:27 /docker /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        let source = from_texts(1, "0::/docker/abc\n", STAT, mounts).unwrap();
        assert_eq!(source.memory.dir, Path::new("/mnt/my cgroups/abc"));
        // A path outside the mounted subtree is not found there.
        assert!(from_texts(1, "0::/dockerx/abc\n", STAT, mounts).is_err());
    }

    #[test]
    fn without_any_cgroup_mount_it_says_why() {
        let err = from_texts(7, HYBRID_CGROUPS, STAT, "").unwrap_err();
        assert!(
            err.to_string()
                .contains("container init 7: no memory cgroup"),
            "{err}"
        );
        let err = from_texts(7, HYBRID_CGROUPS, "7 (x) S", HYBRID_MOUNTS).unwrap_err();
        assert!(err.to_string().contains("no start time"), "{err}");
    }
}
