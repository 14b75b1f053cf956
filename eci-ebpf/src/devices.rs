//! Devices: a protected task opens no device node of the VM beyond an
//! allowed set, wherever the node comes from (an image layer, a volume, a
//! `--privileged` container's /dev). The set is policy data in a map, keyed
//! by what the node is — block or character, major and minor — never by
//! its path: the standard devices every container has (null, zero, full,
//! random, urandom, tty, ptmx) and what the policy adds. The ptys of a
//! devpts instance (the container's own terminal) are always allowed.

use aya_ebpf::{macros::map, maps::HashMap};
use eci_common::{
    ANY_MINOR, DEVPTS_MAGIC, FileId, Hook, MAX_ALLOWED_DEVICES, ObjectKind, device_key, verdict,
};

use crate::{audit, kernel};

const S_IFMT: u32 = 0o170000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// `device_key` of an allowed device (or of a whole major, `ANY_MINOR`).
#[map]
static ECI_ALLOWED_DEVS: HashMap<u64, u32> = HashMap::pinned(MAX_ALLOWED_DEVICES, 0);

#[inline(always)]
fn allowed(block: bool, rdev: u32) -> bool {
    let (major, minor) = (rdev >> 20, rdev & 0xfffff);
    // SAFETY: presence checks only.
    unsafe {
        ECI_ALLOWED_DEVS
            .get(&device_key(block, major, minor))
            .is_some()
            || ECI_ALLOWED_DEVS
                .get(&device_key(block, major, ANY_MINOR))
                .is_some()
    }
}

/// The open of a device node by a protected task: `Some(deny)` unless the
/// device is allowed; `None` for anything that is not a device node.
#[inline(always)]
pub fn judge_open(cgroup_id: u64, facts: &kernel::FileFacts) -> Option<i32> {
    let kind = facts.mode & S_IFMT;
    let block = match kind {
        S_IFCHR => false,
        S_IFBLK => true,
        _ => return None,
    };
    if (!block && facts.magic == DEVPTS_MAGIC) || allowed(block, facts.rdev) {
        return None;
    }
    let object = FileId {
        dev: facts.rdev as u64,
        ino: kind as u64,
    };
    Some(audit::report(
        Hook::FileOpen,
        cgroup_id,
        ObjectKind::Device,
        object,
        verdict::DENY,
    ))
}
