//! eci's BPF-LSM programs.
//!
//! One file per concern: `sockets` (protected Unix sockets), `mounts` (VM
//! file systems, immutable mounts), `namespaces` (the VM's namespaces, exec
//! while sharing them), `devices` (device nodes), `cgroups` (writes to
//! unprotected cgroups), `setid` (setuid/setgid files of VM ids), `probe` (the start-up self tests); `files` is the
//! one `file_open` program, which asks four of them. `protection` holds
//! the prologue every hook starts with ("is the current task protected?"),
//! `registry` keeps descendants of protected cgroups registered where the
//! kernel offers no ancestor walk,
//! `kernel` every read of a kernel struct, `audit` reports decisions and
//! counts what a hook could not decide.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The one atomic add of the audit counts (BPF_XADD; core's atomics offer no
// read-modify-write on this target).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

/// The prologue every hook starts with (`protection::enter`): evaluates to
/// the protected task's cgroup, or returns the hook's answer at once (an
/// earlier LSM's denial, or allow for an unprotected task).
#[cfg(target_arch = "bpf")]
macro_rules! protected_or_return {
    ($hook:expr, $previous:expr) => {
        match $crate::protection::enter($hook, $previous) {
            Ok(protected) => protected,
            Err(answer) => return answer,
        }
    };
}

#[cfg(target_arch = "bpf")]
mod audit;
#[cfg(target_arch = "bpf")]
mod cgroups;
#[cfg(target_arch = "bpf")]
mod devices;
#[cfg(target_arch = "bpf")]
mod files;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod mounts;
#[cfg(target_arch = "bpf")]
mod namespaces;
#[cfg(target_arch = "bpf")]
mod probe;
#[cfg(target_arch = "bpf")]
mod protection;
#[cfg(target_arch = "bpf")]
mod registry;
#[cfg(target_arch = "bpf")]
mod setid;
#[cfg(target_arch = "bpf")]
mod sockets;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("eci-ebpf is built for the BPF target by eci-agent's build script");
}
