//! The kernel's side: version, BTF, LSMs and the real BPF-LSM probe,
//! cgroups, user namespaces, ID-mapped mounts; and the policy file.

use std::path::{Path, PathBuf};

use super::Check;
use crate::{cgroups, enforcement, idmap, install, lsm, pins::PinLayout, policy, registry::Choice};

const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";
const UNPRIVILEGED_USERNS_CLONE: &str = "/proc/sys/kernel/unprivileged_userns_clone";
const APPARMOR_RESTRICT_USERNS: &str = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns";

/// BPF-LSM programs run from Linux 5.7.
const BPF_LSM_SINCE: KernelVersion = KernelVersion(5, 7, 0);
/// LSM programs may walk cgroup ancestors from 5.14 (else: the registry).
const ANCESTOR_WALK_SINCE: KernelVersion = KernelVersion(5, 14, 0);
/// `mount_setattr(2)` and ID-mapped mounts came in 5.12.
const IDMAP_SINCE: KernelVersion = KernelVersion(5, 12, 0);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path} holds \"{text}\", not a kernel version")]
    NotAVersion { path: &'static str, text: String },
}

/// A kernel's major, minor and patch level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32, pub u32);

impl KernelVersion {
    /// From a release such as `6.18.44-fc-v1272` or `5.10.0-30-amd64`.
    pub fn parse(release: &str) -> Option<Self> {
        let numbers = release.trim().split(['-', '+', ' ']).next()?;
        let mut parts = numbers.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self(major, minor, patch))
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

fn read(path: &'static str) -> Result<String, HostError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| HostError::Read { path, source })
}

/// The running kernel's release and version.
pub fn kernel_version() -> Result<(String, KernelVersion), HostError> {
    let release = read(OSRELEASE)?;
    let version = KernelVersion::parse(&release).ok_or_else(|| HostError::NotAVersion {
        path: OSRELEASE,
        text: release.clone(),
    })?;
    Ok((release, version))
}

/// A line only when the doctor is not root: the probe and the ID-mapping
/// test need it, and would fail for that reason alone.
pub fn root() -> Option<Check> {
    let uid = nix::unistd::geteuid();
    (!uid.is_root()).then(|| {
        Check::fail(
            "root",
            format!("running as uid {uid}: the BPF-LSM probe and the ID-mapping test need root"),
            "run it as root: `sudo eci-agent doctor`",
        )
    })
}

pub fn kernel(found: &Result<(String, KernelVersion), HostError>) -> Check {
    match found {
        Err(err) => Check::fail(
            "kernel",
            err.to_string(),
            "run eci on Linux 5.7 or later with /proc mounted",
        ),
        Ok((release, version)) if *version < BPF_LSM_SINCE => Check::fail(
            "kernel",
            format!("Linux {release}: BPF-LSM programs run from Linux 5.7"),
            "upgrade the kernel to 5.7 or later (5.14+ for the ancestor walk, 5.19+ for ID-mapped overlay layers)",
        ),
        Ok((release, version)) if *version < ANCESTOR_WALK_SINCE => Check::ok(
            "kernel",
            format!(
                "Linux {release} (before 5.14: protection by the registry of descendants, not the ancestor walk)"
            ),
        ),
        Ok((release, _)) => Check::ok("kernel", format!("Linux {release}")),
    }
}

pub fn btf() -> Check {
    match std::fs::metadata(VMLINUX_BTF) {
        Ok(meta) => Check::ok("btf", format!("{VMLINUX_BTF} ({} bytes)", meta.len())),
        Err(err) => Check::fail(
            "btf",
            format!("no kernel BTF: {VMLINUX_BTF}: {err}"),
            "run a kernel built with CONFIG_DEBUG_INFO_BTF=y (and CONFIG_BPF_LSM=y), as distribution kernels are",
        ),
    }
}

/// `bpf` in the active LSMs, and the `lsm=` parameter that adds it.
pub fn active_lsms() -> Check {
    let file = lsm::LSM_FILE;
    match lsm::active_lsms() {
        Some(list) if lsm::bpf_listed(Some(&list)) => {
            Check::ok("bpf-lsm", format!("bpf is in the active LSMs ({list})"))
        }
        Some(list) => Check::fail(
            "bpf-lsm",
            format!("bpf is not in the active LSMs ({list})"),
            format!(
                "add to the kernel command line: {} ({}); the kernel also needs CONFIG_BPF_LSM=y",
                lsm::boot_parameter(&list),
                lsm::BOOT_PARAMETER_HOWTO
            ),
        ),
        None => Check::fail(
            "bpf-lsm",
            format!("{file} cannot be read, so the active LSMs are unknown"),
            "mount securityfs (`mount -t securityfs securityfs /sys/kernel/security`) and run the doctor again; a kernel without it has no LSM stacking to add bpf to",
        ),
    }
}

/// The agent's own probe (`eci-agent probe`): a BPF-LSM program is loaded,
/// attached and triggered, in a pin directory of its own beside the
/// agent's, removed afterwards.
pub fn bpf_lsm_probe(pin_dir: &Path) -> Check {
    let parent = pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    let layout = PinLayout::new(parent.join(format!("eci-doctor-{}", std::process::id())));
    let result = enforcement::probe_lsm(&layout, Choice::default()).map(|loaded| loaded.mode);
    let cleaned = match enforcement::unload(&layout) {
        Ok(_) => String::new(),
        Err(err) => format!(
            " (the probe's pins at {} could not be removed: {err}; remove them with `eci-agent unload --pin-dir {}`)",
            layout.root().display(),
            layout.root().display()
        ),
    };
    match result {
        Ok(mode) => Check::ok(
            "bpf-lsm-probe",
            format!(
                "BPF-LSM programs load, attach and run; protection: {}{cleaned}",
                mode.describe()
            ),
        ),
        Err(enforcement::EnforcementError::Unavailable(why)) => Check::fail(
            "bpf-lsm-probe",
            format!("{}{cleaned}", why.reason()),
            why.fix(),
        ),
        Err(err) => Check::fail(
            "bpf-lsm-probe",
            format!("the probe failed: {err}{cleaned}"),
            "see the error; `eci-agent probe` runs the same probe with the agent's log (ECI_LOG=debug)",
        ),
    }
}

/// cgroup2 present: unified (cgroup2 only) or hybrid (beside v1).
pub fn cgroup() -> Check {
    let mount = match cgroups::cgroup2_mount() {
        Ok(mount) => mount,
        Err(err) => {
            return Check::fail(
                "cgroup",
                err.to_string(),
                "boot with `systemd.unified_cgroup_hierarchy=1` (or mount one: `mount -t cgroup2 none /sys/fs/cgroup`)",
            );
        }
    };
    match cgroups::v1_hierarchies() {
        Ok(v1) if v1.is_empty() => Check::ok(
            "cgroup",
            format!("cgroup v2, unified (at {})", mount.display()),
        ),
        Ok(v1) => Check::warning(
            "cgroup",
            format!(
                "cgroup v2, hybrid: at {} beside {} cgroup v1 hierarchies ({})",
                mount.display(),
                v1.len(),
                v1.join(", ")
            ),
            "eci judges tasks by their cgroup2 cgroup and its cgroup-write rule covers cgroup2 only; boot with `systemd.unified_cgroup_hierarchy=1` for a unified hierarchy",
        ),
        Err(err) => Check::warning(
            "cgroup",
            format!(
                "cgroup v2 at {}; whether v1 is mounted too is unknown: {err}",
                mount.display()
            ),
            "check /proc/self/mountinfo",
        ),
    }
}

/// eci-runc gives every container a user namespace of its own.
pub fn user_namespaces() -> Check {
    let clone = std::fs::read_to_string(UNPRIVILEGED_USERNS_CLONE)
        .map(|v| {
            format!(
                "; kernel.unprivileged_userns_clone = {} (for information: eci-runc runs as root and does not need it)",
                v.trim()
            )
        })
        .unwrap_or_default();
    let fix = "`sysctl -w user.max_user_namespaces=15000`, and the same in /etc/sysctl.d/99-eci.conf to keep it";
    match read(MAX_USER_NAMESPACES).map(|v| v.parse::<u64>()) {
        Ok(Ok(0)) => Check::fail(
            "userns",
            format!("user namespaces are disabled (user.max_user_namespaces = 0){clone}"),
            fix,
        ),
        Ok(Ok(max)) => Check::ok(
            "userns",
            format!("user namespaces enabled (user.max_user_namespaces = {max}){clone}"),
        ),
        Ok(Err(err)) => Check::fail(
            "userns",
            format!("{MAX_USER_NAMESPACES} is not a number ({err}){clone}"),
            fix,
        ),
        Err(err) => Check::fail(
            "userns",
            format!("{err}{clone}"),
            "run a kernel built with CONFIG_USER_NS=y",
        ),
    }
}

/// Ubuntu's AppArmor restriction of unprivileged user namespaces.
pub fn apparmor_user_namespaces() -> Check {
    match std::fs::read_to_string(APPARMOR_RESTRICT_USERNS).map(|v| v.trim().to_owned()) {
        Err(_) => Check::ok(
            "userns-apparmor",
            "no AppArmor restriction of user namespaces on this kernel",
        ),
        Ok(v) if v == "0" => Check::ok(
            "userns-apparmor",
            "AppArmor does not restrict user namespaces (kernel.apparmor_restrict_unprivileged_userns = 0)",
        ),
        Ok(v) => Check::warning(
            "userns-apparmor",
            format!(
                "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = {v})"
            ),
            "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, and the same in /etc/sysctl.d/99-eci.conf to keep it (or an AppArmor profile granting `userns,` to the programs that need one)",
        ),
    }
}

/// Docker's data root (the overlay's lower directories) and its volumes,
/// each ID-mapped for real where it is (or would be).
pub fn idmapped_mounts(
    kernel: Option<&(String, KernelVersion)>,
    daemon: Option<&install::DaemonSettings>,
) -> Vec<Check> {
    let data_root = daemon.map_or_else(
        || PathBuf::from(install::DEFAULT_DOCKER_DATA_ROOT),
        |d| d.data_root.clone(),
    );
    let places = [
        (
            "idmap-data-root",
            data_root.clone(),
            "the containers' root file systems are bound plainly (their files keep the VM's owners)",
        ),
        (
            "idmap-volumes",
            data_root.join("volumes"),
            "volumes are bound plainly (their files keep the VM's owners)",
        ),
    ];
    places
        .into_iter()
        .map(|(name, dir, without)| match kernel {
            Some((release, version)) if *version < IDMAP_SINCE => Check::fail(
                name,
                format!(
                    "Linux {release} has no ID-mapped mounts (mount_setattr(2) came in 5.12), so {without}"
                ),
                "run Linux 5.12 or later (5.19+ for ID-mapped overlay layers, 6.3+ for tmpfs)",
            ),
            _ => idmap_check(name, &dir, without),
        })
        .collect()
}

fn idmap_check(name: &'static str, dir: &Path, without: &str) -> Check {
    // Where it is not yet (no Docker, no volume made), the file system it
    // would be on: the nearest directory above that exists.
    let Some(tried) = dir.ancestors().find(|d| d.is_dir()) else {
        return Check::warning(
            name,
            format!("{} cannot be reached", dir.display()),
            "check the path",
        );
    };
    let place = if tried == dir {
        format!("{} ({})", dir.display(), fs_name(tried))
    } else {
        format!(
            "{} (not there yet; tried {} on {})",
            dir.display(),
            tried.display(),
            fs_name(tried)
        )
    };
    match idmap::try_idmap(tried) {
        Ok(()) => Check::ok(name, format!("{place} can be ID-mapped")),
        Err(err) if err.errno() == Some(libc::EINVAL) => Check::warning(
            name,
            format!("{place} cannot be ID-mapped on this kernel ({err}), so {without}"),
            format!(
                "keep {} on ext4, xfs or btrfs (tmpfs from Linux 6.3){}",
                dir.display(),
                if name == "idmap-data-root" {
                    ": Docker's \"data-root\" in daemon.json"
                } else {
                    ""
                }
            ),
        ),
        Err(err) => Check::warning(
            name,
            format!("{place}: the ID-mapping test failed: {err}"),
            "run the doctor as root; if it was, the error says what the kernel refused",
        ),
    }
}

/// The file system's name, from its `statfs` magic.
fn fs_name(dir: &Path) -> String {
    const NAMES: &[(i64, &str)] = &[
        (0xEF53, "ext4"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0x0102_1994, "tmpfs"),
        (0x794C_7630, "overlayfs"),
        (0x0102_1997, "9p"),
        (0x2FC1_2FC1, "zfs"),
        (0x6969, "nfs"),
        (0xF2F5_2010, "f2fs"),
    ];
    match nix::sys::statfs::statfs(dir) {
        Ok(s) => {
            let magic = s.filesystem_type().0;
            NAMES.iter().find(|(m, _)| *m == magic).map_or_else(
                || format!("file system {magic:#x}"),
                |(_, n)| (*n).to_owned(),
            )
        }
        Err(err) => format!("unknown file system ({err})"),
    }
}

/// The policy, as the agent reads it; and whether it turns ECI on (the
/// built-in defaults do, and so an unreadable file is taken to).
pub fn policy(path: &Path) -> (Check, bool) {
    match policy::load(path) {
        Ok((policy, policy::Source::File(file))) => (
            Check::ok(
                "policy",
                format!(
                    "{} is valid; enforcement {}{}",
                    file.display(),
                    if policy.enforcement { "on" } else { "OFF" },
                    if policy.locked { " (locked)" } else { "" }
                ),
            ),
            policy.enforcement,
        ),
        Ok((policy, policy::Source::BuiltInDefaults)) => (
            Check::ok(
                "policy",
                format!(
                    "no file at {}: the built-in secure defaults apply",
                    path.display()
                ),
            ),
            policy.enforcement,
        ),
        Err(err) => (
            Check::fail(
                "policy",
                format!("not valid: {err}"),
                format!(
                    "correct {} where the error says (the agent does not start with it; a running agent keeps its last good policy on reload)",
                    path.display()
                ),
            ),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse_to_versions() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v1272"),
            Some(KernelVersion(6, 18, 44))
        );
        assert_eq!(
            KernelVersion::parse("5.10.0-30-amd64\n"),
            Some(KernelVersion(5, 10, 0))
        );
        assert_eq!(KernelVersion::parse("6.1"), Some(KernelVersion(6, 1, 0)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion(5, 11, 99) < IDMAP_SINCE);
        assert!(KernelVersion(5, 12, 0) >= IDMAP_SINCE);
    }

    #[test]
    fn an_old_kernel_fails_the_idmap_checks_with_the_reason() {
        let old = ("5.10.0-30-amd64".to_owned(), KernelVersion(5, 10, 0));
        let checks = idmapped_mounts(Some(&old), None);
        assert_eq!(checks.len(), 2);
        for check in checks {
            assert_eq!(check.status, super::super::Status::Fail, "{check:?}");
            assert!(check.found.contains("5.12"), "{check:?}");
        }
    }

    #[test]
    fn a_bad_policy_is_a_failed_check_naming_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-settings.json");
        std::fs::write(&file, "{\"eci\": {\"protectedCgroupParents\": 7}}").unwrap();
        let (check, enforcement) = policy(&file);
        assert_eq!(check.status, super::super::Status::Fail);
        assert!(check.found.contains("protectedCgroupParents"), "{check:?}");
        assert!(enforcement);
        let (check, _) = policy(&dir.path().join("none.json"));
        assert_eq!(check.status, super::super::Status::Ok);
        assert!(
            check.found.contains("built-in secure defaults"),
            "{check:?}"
        );
    }
}
