//! Is BPF-LSM usable on this kernel? The answer comes from a real probe
//! (see `enforcement::probe_lsm`); this module reads the active LSM list and
//! turns every way of failing into a message that says what to do.

use std::path::Path;

pub const LSM_FILE: &str = "/sys/kernel/security/lsm";

#[derive(Debug, thiserror::Error)]
pub enum LsmUnavailable {
    #[error("BPF-LSM is not available: {}. {}", self.reason(), self.fix())]
    LoadRefused {
        error: String,
        active: Option<String>,
    },
    #[error("BPF-LSM is not available: {}. {}", self.reason(), self.fix())]
    AttachRefused {
        error: String,
        active: Option<String>,
    },
    #[error("BPF-LSM is not active: {}. {}", self.reason(), self.fix())]
    NeverRuns { active: Option<String> },
    #[error("BPF-LSM is not available: {}; {}", self.reason(), self.fix())]
    NoBtf(String),
}

impl LsmUnavailable {
    /// What went wrong, without what to do about it.
    pub fn reason(&self) -> String {
        match self {
            Self::LoadRefused { error, .. } => {
                format!("the kernel refused to load a BPF-LSM program ({error})")
            }
            Self::AttachRefused { error, .. } => {
                format!("the kernel refused to attach a BPF-LSM program ({error})")
            }
            Self::NeverRuns { .. } => "a BPF-LSM probe program attached but never ran, so eci's rules would never be enforced".into(),
            Self::NoBtf(error) => format!("the kernel has no BTF ({error})"),
        }
    }

    /// What to do about it.
    pub fn fix(&self) -> String {
        match self {
            Self::LoadRefused { active, .. }
            | Self::AttachRefused { active, .. }
            | Self::NeverRuns { active } => advice(active.as_deref()),
            Self::NoBtf(_) => {
                "eci needs a kernel built with CONFIG_DEBUG_INFO_BTF=y and CONFIG_BPF_LSM=y".into()
            }
        }
    }
}

/// The `lsm=` kernel parameter that keeps the active LSMs, in their order,
/// and adds `bpf` at the end (unchanged when bpf is listed already).
pub fn boot_parameter(active: &str) -> String {
    let mut list: Vec<&str> = active
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if !list.contains(&"bpf") {
        list.push("bpf");
    }
    format!("lsm={}", list.join(","))
}

/// Where the boot parameter goes, said once for every message.
pub const BOOT_PARAMETER_HOWTO: &str =
    "e.g. in GRUB_CMDLINE_LINUX of /etc/default/grub, then `update-grub`, and reboot";

fn advice(active: Option<&str>) -> String {
    match active {
        Some(list) if bpf_listed(Some(list)) => format!(
            "The active LSMs ({LSM_FILE}: {list}) include bpf, so this kernel forbids BPF-LSM programs by other means (some virtualized kernels, e.g. PVM guests, refuse BPF trampolines; a lockdown or a seccomp filter can too). Run eci on a kernel that allows them: a stock distribution kernel with CONFIG_BPF_LSM=y (e.g. in a VM: `cargo xtask vm-test` and `cargo xtask demo` do this)."
        ),
        Some(list) => format!(
            "The active LSMs are \"{list}\" ({LSM_FILE}) and bpf is not among them. Add it on the kernel command line: `{}` ({BOOT_PARAMETER_HOWTO}). The kernel also needs CONFIG_BPF_LSM=y.",
            boot_parameter(list)
        ),
        None => format!(
            "{LSM_FILE} could not be read (is securityfs mounted? `mount -t securityfs securityfs /sys/kernel/security`). Boot with bpf in the `lsm=` kernel parameter (e.g. `lsm=lockdown,capability,landlock,yama,bpf`) on a kernel with CONFIG_BPF_LSM=y."
        ),
    }
}

/// The active LSM list, mounting securityfs first if needed.
pub fn active_lsms() -> Option<String> {
    if !Path::new(LSM_FILE).exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    std::fs::read_to_string(LSM_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Whether `bpf` is in the active LSM list.
pub fn bpf_listed(active: Option<&str>) -> bool {
    active.is_some_and(|list| list.split(',').any(|l| l == "bpf"))
}

/// A short description of a program error: the errno, and the first lines
/// of the verifier log when there is one.
pub fn describe_program_error(err: &aya::programs::ProgramError) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = err {
        let log = verifier_log.to_string();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(5)
            .collect();
        if !tail.is_empty() {
            text.push_str("; verifier: ");
            text.push_str(&tail.join(" | "));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_the_boot_parameter_when_bpf_is_missing() {
        let text = advice(Some("lockdown,capability,yama"));
        assert!(text.contains("lsm=lockdown,capability,yama,bpf"), "{text}");
    }

    #[test]
    fn advice_explains_a_refusing_kernel_when_bpf_is_listed() {
        let text = advice(Some("capability,bpf"));
        assert!(text.contains("forbids BPF-LSM programs"), "{text}");
    }

    #[test]
    fn the_boot_parameter_keeps_the_order_and_adds_bpf_once() {
        assert_eq!(
            boot_parameter("lockdown,capability,yama,apparmor"),
            "lsm=lockdown,capability,yama,apparmor,bpf"
        );
        assert_eq!(boot_parameter("capability,bpf\n"), "lsm=capability,bpf");
        assert_eq!(boot_parameter(""), "lsm=bpf");
    }

    #[test]
    fn the_message_is_the_reason_and_the_fix() {
        let err = LsmUnavailable::LoadRefused {
            error: "EPERM".into(),
            active: Some("capability,yama".into()),
        };
        assert_eq!(
            err.to_string(),
            format!("BPF-LSM is not available: {}. {}", err.reason(), err.fix())
        );
        assert!(
            err.fix().contains("lsm=capability,yama,bpf"),
            "{}",
            err.fix()
        );
    }

    #[test]
    fn bpf_listed_needs_an_exact_entry() {
        assert!(bpf_listed(Some("capability,bpf")));
        assert!(!bpf_listed(Some("capability,bpfx")));
        assert!(!bpf_listed(None));
    }
}
