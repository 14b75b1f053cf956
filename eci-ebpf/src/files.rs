//! `file_open`: the one hook three concerns share. For a protected task it
//! reads the file's facts once, then asks, in order: is it one of the VM's
//! namespace files (namespaces.rs), a device node outside the allowed set
//! (devices.rs), a cgroup file opened for writing outside every protected
//! cgroup (cgroups.rs), a set-id file of a VM id opened for writing
//! (setid.rs)? A file whose facts cannot be read is refused.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use eci_common::{Hook, undecided, verdict};

use crate::{audit, cgroups, devices, kernel, namespaces, setid};

/// `file_open(struct file *file)`
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let hook = Hook::FileOpen;
    let cgroup_id = protected_or_return!(hook, ctx.arg(1)).cgroup_id;
    let file: *const u8 = ctx.arg(0);
    // SAFETY: the hook's `struct file *`; probe reads only.
    let Some(facts) = (unsafe { kernel::file_facts(file) }) else {
        return audit::undecided(hook, cgroup_id, undecided::FILE, verdict::DENY);
    };
    if let Some(v) = namespaces::judge_open(cgroup_id, &facts) {
        return v;
    }
    if let Some(v) = devices::judge_open(cgroup_id, &facts) {
        return v;
    }
    if let Some(v) = cgroups::judge_open(cgroup_id, file, &facts) {
        return v;
    }
    if let Some(v) = setid::judge_open(cgroup_id, file, &facts) {
        return v;
    }
    verdict::ALLOW
}
