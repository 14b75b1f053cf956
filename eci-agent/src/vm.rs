//! What belongs to the VM (the host the containers run on): its namespaces,
//! the file systems containers must not mount and the devices they may open.
//!
//! The VM's namespaces are found by what the processes are, never by their
//! names: PID 1's, this agent's, and those of the processes that serve the
//! engine's sockets (the peer of a connection to each, `SO_PEERCRED`) or
//! wrote the engine's pid file — only when they are in the VM's own user
//! namespace. A container that names a process `dockerd` changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use eci_common::{ANY_MINOR, FileId, device_key};
use eci_policy::DeviceRule;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket, sockopt,
};

/// `s_magic` of the kernel's control file systems: debugfs, tracefs, bpf,
/// securityfs, configfs, efivarfs, pstore. (Block-device file systems are
/// refused by the programs whatever their type.)
pub const DENIED_FILESYSTEM_MAGICS: &[u64] = &[
    0x6462_6720,
    0x7472_6163,
    0xcafe_4a11,
    0x7363_6673,
    0x6265_6570,
    0xde5e_81e4,
    0x6165_676c,
];

/// The character devices every container may open (Docker's and runc's
/// default set): null, zero, full, random, urandom, tty, ptmx. The ptys of
/// a container's own devpts are allowed by the program itself; the VM's
/// console (5:1), kmsg (1:11), memory (1:1), disks and the rest are not.
pub const STANDARD_DEVICES: &[(u32, u32)] =
    &[(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)];

/// The allowed-device map's keys: the standard set and the policy's
/// `eci.allowedDevices`.
pub fn allowed_device_keys(policy: &[DeviceRule]) -> BTreeSet<u64> {
    let standard = STANDARD_DEVICES
        .iter()
        .map(|&(major, minor)| device_key(false, major, minor));
    let allowed = policy
        .iter()
        .map(|d| device_key(d.block, d.major, d.minor.unwrap_or(ANY_MINOR)));
    standard.chain(allowed).collect()
}

const NAMESPACE_FILES: &[&str] = &["mnt", "net", "pid", "ipc", "uts", "cgroup", "user", "time"];

/// Pid files the engines write (root-only directories).
const ENGINE_PID_FILES: &[&str] = &["/run/docker.pid", "/var/run/docker.pid"];

/// Namespace inode number from a `/proc/<pid>/ns/<kind>` link (`net:[4026531840]`).
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok()
}

fn namespace_of(pid: &str, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    link.to_str().and_then(parse_ns_link)
}

fn namespaces_of(pid: &str, into: &mut BTreeSet<u64>) {
    for kind in NAMESPACE_FILES {
        if let Some(inum) = namespace_of(pid, kind) {
            into.insert(inum);
        }
    }
}

/// The pid of the process serving the Unix socket at `path` (the one that
/// called listen), without blocking on a busy or hung engine.
fn socket_server_pid(path: &Path) -> Option<i32> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let addr = UnixAddr::new(path).ok()?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).ok()?;
    let cred = getsockopt(&fd.as_fd(), sockopt::PeerCredentials).ok()?;
    Some(cred.pid())
}

fn pid_file(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The VM's namespaces, and the engine processes' found through the engine
/// sockets and pid files. Sockets are asked again only when their file
/// changed (the engine restarted), so a running engine is not connected to
/// every second.
#[derive(Debug, Default)]
pub struct VmNamespaces {
    /// Socket file identity -> the server's pid when it was last asked.
    servers: BTreeMap<FileId, i32>,
}

impl VmNamespaces {
    /// PID 1's, this agent's and the engine's namespaces now. `engine_sockets`
    /// are the sockets the engine serves (never the agent's own).
    pub fn learn(&mut self, engine_sockets: &[PathBuf]) -> BTreeSet<u64> {
        let mut found = BTreeSet::new();
        namespaces_of("1", &mut found);
        namespaces_of("self", &mut found);
        let vm_user = namespace_of("1", "user");
        let mut pids: BTreeSet<i32> = ENGINE_PID_FILES
            .iter()
            .filter_map(|p| pid_file(p))
            .collect();
        let mut servers = BTreeMap::new();
        for path in engine_sockets {
            let Some(id) = crate::sockets::socket_file_id(path) else {
                continue;
            };
            let pid = match self.servers.get(&id) {
                Some(&pid) if Path::new(&format!("/proc/{pid}")).exists() => Some(pid),
                _ => socket_server_pid(path),
            };
            if let Some(pid) = pid {
                servers.insert(id, pid);
                pids.insert(pid);
            }
        }
        self.servers = servers;
        for pid in pids {
            let pid = pid.to_string();
            // Only a process of the VM's own user namespace speaks for the VM.
            if vm_user.is_some() && namespace_of(&pid, "user") == vm_user {
                namespaces_of(&pid, &mut found);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("garbage"), None);
    }

    #[test]
    fn this_process_has_vm_namespaces() {
        let found = VmNamespaces::default().learn(&[]);
        assert!(found.len() >= 5, "{found:?}");
    }

    #[test]
    fn a_socket_server_is_found_by_its_peer_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(socket_server_pid(&path), Some(std::process::id() as i32));
        let found = VmNamespaces::default().learn(&[path]);
        assert!(found.len() >= 5, "{found:?}");
    }

    #[test]
    fn a_process_named_like_the_engine_is_not_the_engine() {
        // A child renamed `dockerd` in a namespace of its own: only a real
        // check in the VM proves the namespaces; here, the name alone adds
        // nothing beyond PID 1's and ours.
        let before = VmNamespaces::default().learn(&[]);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exec -a dockerd sleep 5"])
            .spawn()
            .unwrap();
        let after = VmNamespaces::default().learn(&[]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(before, after);
    }

    #[test]
    fn standard_devices_exclude_the_vm_console_and_kmsg() {
        let keys = allowed_device_keys(&[]);
        assert!(keys.contains(&device_key(false, 1, 3)));
        assert!(!keys.contains(&device_key(false, 5, 1)));
        assert!(!keys.contains(&device_key(false, 1, 11)));
        assert!(!keys.contains(&device_key(true, 8, 0)));
        let tun = DeviceRule {
            block: false,
            major: 10,
            minor: Some(200),
        };
        let loops = DeviceRule {
            block: true,
            major: 7,
            minor: None,
        };
        let keys = allowed_device_keys(&[tun, loops]);
        assert!(keys.contains(&device_key(false, 10, 200)));
        assert!(keys.contains(&device_key(true, 7, ANY_MINOR)));
    }
}
