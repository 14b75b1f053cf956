//! cgroups: a protected task cannot open for writing a file of a cgroup2
//! directory that is not protected (itself or an ancestor in the protected
//! map) — so it cannot move a task out of protection (`cgroup.procs`,
//! `cgroup.threads`), nor change an unprotected cgroup's settings, whatever
//! cgroup namespace or mount of the cgroup2 root it reaches them through.
//! A cgroup directory is identified by its inode number, which is its
//! cgroup id. (cgroup v1 files are not judged here: a container in a user
//! namespace of its own cannot write the VM's, and a protected task in the
//! VM's user namespace cannot exec — see namespaces.rs.)

use eci_common::{CGROUP2_MAGIC, FileId, Hook, MAX_CGROUP_DEPTH, ObjectKind, undecided, verdict};

use crate::{audit, kernel, protection::ECI_PROT_CGROUPS};

const FMODE_WRITE: u32 = 0x2;

#[inline(always)]
fn refuse_undecided(cgroup_id: u64) -> Option<i32> {
    Some(audit::undecided(
        Hook::FileOpen,
        cgroup_id,
        undecided::CGROUP_TREE,
        verdict::DENY,
    ))
}

/// The open of a cgroup2 file for writing by a protected task: `Some(deny)`
/// when its cgroup is not protected; `None` otherwise.
#[inline(always)]
pub fn judge_open(cgroup_id: u64, file: *const u8, facts: &kernel::FileFacts) -> Option<i32> {
    if facts.magic != CGROUP2_MAGIC || facts.f_mode & FMODE_WRITE == 0 {
        return None;
    }
    // SAFETY: the hook's file; probe reads only.
    let Some(file_dentry) = (unsafe { kernel::file_dentry(file) }) else {
        return refuse_undecided(cgroup_id);
    };
    // SAFETY: as above.
    let Some(mut dir) = (unsafe { kernel::dentry_parent(file_dentry) }) else {
        return refuse_undecided(cgroup_id);
    };
    // SAFETY: as above.
    let Some(target) = (unsafe { kernel::dentry_ino(dir) }) else {
        return refuse_undecided(cgroup_id);
    };
    let mut level = 0;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: as above.
        let Some(ino) = (unsafe { kernel::dentry_ino(dir) }) else {
            return refuse_undecided(cgroup_id);
        };
        // SAFETY: presence check only.
        if unsafe { ECI_PROT_CGROUPS.get(&ino) }.is_some() {
            return None;
        }
        // SAFETY: as above.
        let Some(parent) = (unsafe { kernel::dentry_parent(dir) }) else {
            return refuse_undecided(cgroup_id);
        };
        if parent == dir {
            // The root of the hierarchy, and nothing protected on the way.
            let object = FileId {
                dev: 0,
                ino: target,
            };
            return Some(audit::report(
                Hook::FileOpen,
                cgroup_id,
                ObjectKind::Cgroup,
                object,
                verdict::DENY,
            ));
        }
        dir = parent;
        level += 1;
    }
    refuse_undecided(cgroup_id)
}
