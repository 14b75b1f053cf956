//! `eci-agent doctor`: can this host run eci, and what to change. One line
//! per check — `ok`, `warning` or `fail`, what was found, and for the last
//! two the exact fix. Every check fails soft into a line with its reason;
//! the command exits 0 only when no check failed (eci can enforce here).
//!
//! The checks ask what the agent itself uses: the LSM list and its advice
//! (`lsm`), the real BPF-LSM probe (`enforcement::probe_lsm`), the cgroup2
//! mount (`cgroups`), daemon.json as `install` reads it, the runc eci-runc
//! wraps (`eci_runc::lifecycle::runc_binary`), the policy's one parser.

mod host;
mod tools;

use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do (warnings and failures).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, found: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    pub fn warning(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Warning,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// `{"ok": bool, "checks": [...]}`: `ok` when no check failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Self {
        Self {
            ok: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }
}

/// Where the checks look.
pub struct Inputs {
    /// The agent's pin directory; the probe pins beside it, in a directory
    /// of its own that it removes again.
    pub pin_dir: PathBuf,
    pub policy: PathBuf,
    pub daemon_json: PathBuf,
}

/// Every check, in the order an administrator fixes things: kernel first.
pub fn run(inputs: &Inputs) -> Report {
    let kernel = host::kernel_version();
    let (policy_check, enforcement) = host::policy(&inputs.policy);
    let daemon = tools::daemon_settings(&inputs.daemon_json);
    let mut checks = Vec::new();
    checks.extend(host::root());
    checks.push(host::kernel(&kernel));
    checks.push(host::btf());
    checks.push(host::active_lsms());
    checks.push(host::bpf_lsm_probe(&inputs.pin_dir));
    checks.push(host::cgroup());
    checks.push(host::user_namespaces());
    checks.push(host::apparmor_user_namespaces());
    checks.extend(host::idmapped_mounts(
        kernel.as_ref().ok(),
        daemon.as_ref().ok(),
    ));
    checks.push(tools::runc());
    checks.push(tools::docker());
    checks.push(tools::containerd());
    checks.push(tools::docker_runtime(
        &inputs.daemon_json,
        &daemon,
        enforcement,
    ));
    checks.push(policy_check);
    Report::new(checks)
}

/// Aligned columns: status, name, what was found, `→ fix`; and a last line
/// saying whether eci can enforce here.
pub fn render(report: &Report) -> String {
    let status_width = report
        .checks
        .iter()
        .map(|c| c.status.label().len())
        .max()
        .unwrap_or(0);
    let name_width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for check in &report.checks {
        let line = format!(
            "{:status_width$}  {:name_width$}  {}",
            check.status.label(),
            check.name,
            check.found
        );
        text.push_str(&match &check.fix {
            Some(fix) => format!("{line}  → {fix}\n"),
            None => format!("{}\n", line.trim_end()),
        });
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .count();
    let warned = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Warning)
        .count();
    text.push_str(&if report.ok {
        format!("eci can enforce on this host ({warned} warnings)\n")
    } else {
        format!("eci cannot enforce on this host ({failed} failed, {warned} warnings)\n")
    });
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report::new(vec![
            Check::ok("kernel", "Linux 6.12.0"),
            Check::fail(
                "bpf-lsm",
                "bpf is not in the active LSMs (lockdown,capability)",
                "add to the kernel command line: lsm=lockdown,capability,bpf",
            ),
            Check::warning("docker", "not installed", "install Docker Engine"),
        ])
    }

    #[test]
    fn one_failed_check_means_eci_cannot_enforce() {
        assert!(!sample().ok);
        assert!(Report::new(vec![Check::warning("docker", "x", "y")]).ok);
    }

    #[test]
    fn the_json_shape_is_ok_and_checks_with_name_status_found_fix() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(
            json["checks"][0],
            serde_json::json!({"name": "kernel", "status": "ok", "found": "Linux 6.12.0", "fix": null})
        );
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(
            json["checks"][1]["fix"],
            "add to the kernel command line: lsm=lockdown,capability,bpf"
        );
        assert_eq!(json["checks"][2]["status"], "warning");
    }

    #[test]
    fn the_human_form_aligns_its_columns_and_says_what_to_do() {
        let text = render(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok       kernel   Linux 6.12.0");
        assert_eq!(
            lines[1],
            "fail     bpf-lsm  bpf is not in the active LSMs (lockdown,capability)  → add to the kernel command line: lsm=lockdown,capability,bpf"
        );
        assert!(lines[2].starts_with("warning  docker   not installed  → "));
        assert_eq!(
            lines[3],
            "eci cannot enforce on this host (1 failed, 1 warnings)"
        );
    }
}
