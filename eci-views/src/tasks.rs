//! The container's tasks and their states, for `/proc/stat`'s
//! `procs_running`/`procs_blocked` and `/proc/loadavg`.

use std::path::{Path, PathBuf};

use crate::{CgroupDir, CgroupVersion, ViewsError, optional, read_text};

/// How deep below the container's cgroup tasks are still counted (a
/// container that makes its own cgroups: Docker in Docker, systemd).
const MAX_DEPTH: usize = 8;
/// Tasks counted at most per container and render.
const MAX_TASKS: usize = 65_536;

/// Counts of the container's tasks (threads) by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// `R`.
    pub running: u64,
    /// `D` (uninterruptible; the kernel's load average counts them too).
    pub blocked: u64,
    pub total: u64,
    /// The newest task's pid as the container sees it (its own pid
    /// namespace), 0 when unknown.
    pub last_pid: u64,
}

impl TaskCounts {
    /// The tasks of `cgroup` and its descendants, their states from
    /// `<proc>/<tid>/stat`. A task that ends meanwhile is not counted.
    pub fn read(cgroup: &CgroupDir, proc: &Path) -> Result<Self, ViewsError> {
        let file = match cgroup.version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.threads",
        };
        let mut tids = Vec::new();
        collect(&cgroup.dir, file, 0, &mut tids)?;
        let mut counts = Self::default();
        let mut newest = None;
        for tid in tids.iter().copied().take(MAX_TASKS) {
            let Some(stat) = optional(read_text(&proc.join(format!("{tid}/stat"))))? else {
                continue;
            };
            let Some(state) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
            else {
                continue;
            };
            counts.total += 1;
            match state {
                'R' => counts.running += 1,
                'D' => counts.blocked += 1,
                _ => {}
            }
            newest = newest.max(Some(tid));
        }
        if let Some(tid) = newest {
            counts.last_pid = optional(read_text(&proc.join(format!("{tid}/status"))))?
                .and_then(|status| namespace_pid(&status))
                .unwrap_or(0);
        }
        Ok(counts)
    }
}

/// The last `NSpid:` field of a `/proc/<pid>/status`: the pid in the
/// innermost pid namespace.
fn namespace_pid(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

fn collect(dir: &Path, file: &str, depth: usize, tids: &mut Vec<u64>) -> Result<(), ViewsError> {
    let Some(text) = optional(read_text(&dir.join(file)))? else {
        return Ok(());
    };
    tids.extend(text.lines().filter_map(|l| l.trim().parse::<u64>().ok()));
    if depth >= MAX_DEPTH || tids.len() >= MAX_TASKS {
        return Ok(());
    }
    let children: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(_) => return Ok(()),
    };
    for child in children {
        collect(&child, file, depth + 1, tids)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_of_the_cgroup_and_its_children_are_counted_by_state() {
        let (_cg, cgroup) =
            crate::test_cgroup(CgroupVersion::V2, &[("cgroup.threads", "10\n11\n")]);
        std::fs::create_dir(cgroup.dir.join("child")).unwrap();
        std::fs::write(cgroup.dir.join("child/cgroup.threads"), "12\n99\n").unwrap();
        let proc = tempfile::tempdir().unwrap();
        for (tid, stat) in [
            (10, "10 (sh) S 1"),
            (11, "11 (a (b) R) R 1"),
            (12, "12 (dd) D 1"),
        ] {
            std::fs::create_dir(proc.path().join(tid.to_string())).unwrap();
            std::fs::write(proc.path().join(format!("{tid}/stat")), stat).unwrap();
        }
        std::fs::write(proc.path().join("12/status"), "Name:\tdd\nNSpid:\t12\t7\n").unwrap();
        let counts = TaskCounts::read(&cgroup, proc.path()).unwrap();
        assert_eq!(
            counts,
            TaskCounts {
                running: 1,
                blocked: 1,
                total: 3,
                last_pid: 7
            }
        );
    }
}
