//! What belongs to the VM (the host the containers run on): its namespaces
//! and the file systems containers must not mount.

use std::collections::BTreeSet;

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

const NAMESPACE_FILES: &[&str] = &["mnt", "net", "pid", "ipc", "uts", "cgroup", "user", "time"];

/// Engine processes whose namespaces count as the VM's.
const ENGINE_COMMANDS: &[&str] = &["dockerd", "containerd", "eci-agent"];

/// Namespace inode number from a `/proc/<pid>/ns/<kind>` link (`net:[4026531840]`).
pub fn parse_ns_link(link: &str) -> Option<u64> {
    link.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok()
}

fn namespaces_of(pid: &str, into: &mut BTreeSet<u64>) {
    for kind in NAMESPACE_FILES {
        if let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            && let Some(inum) = link.to_str().and_then(parse_ns_link)
        {
            into.insert(inum);
        }
    }
}

/// Inode numbers of the namespaces of PID 1, of this agent, and of the
/// container engine's processes.
pub fn vm_namespaces() -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    namespaces_of("1", &mut found);
    namespaces_of("self", &mut found);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if ENGINE_COMMANDS.contains(&comm.trim()) {
                namespaces_of(pid, &mut found);
            }
        }
    }
    found
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
        let found = vm_namespaces();
        assert!(found.len() >= 5, "{found:?}");
    }
}
