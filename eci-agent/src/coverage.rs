//! Which rules are in force: every rule is `enforced` or `missing: <the
//! kernel feature it needs>`, never silently absent. The agent attaches the
//! programs this kernel has attach points for (its BTF names them) and
//! warns about each rule it could not put in force; `status` shows the same
//! list from the pinned links.

use eci_common::Hook;
use serde::{Deserialize, Serialize};

use crate::{btf::Btf, registry::ProtectionMode};

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A BPF-LSM hook (`bpf_lsm_<name>`).
    Lsm,
    /// A tracepoint for BTF programs (`btf_trace_<name>`).
    BtfTracepoint,
}

/// One of eci's programs (its name is its attach point's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub attach: Attach,
}

/// The registry mode's programs.
pub const CGROUP_MKDIR: Program = Program {
    name: "cgroup_mkdir",
    attach: Attach::BtfTracepoint,
};
pub const CGROUP_RMDIR: Program = Program {
    name: "cgroup_rmdir",
    attach: Attach::BtfTracepoint,
};

impl Program {
    pub const fn lsm(hook: Hook) -> Self {
        Program {
            name: hook.name(),
            attach: Attach::Lsm,
        }
    }

    /// The function in eci's object that implements this program on the
    /// running kernel: LSM hooks whose arguments moved between kernels have
    /// one per layout (`inode_setxattr` gained an ID-mapping argument in
    /// front of `dentry` in 5.12), chosen by the kernel's BTF.
    pub fn function(&self, kernel: &Btf) -> &'static str {
        match self.name {
            "inode_setxattr" if kernel.lsm_hook_param("inode_setxattr", "dentry") == Some(0) => {
                "inode_setxattr_dentry_first"
            }
            name => name,
        }
    }

    /// The kernel feature this program needs.
    pub fn needs(&self) -> String {
        match self.attach {
            Attach::Lsm => format!(
                "the BPF-LSM hook {0} (bpf_lsm_{0} in the kernel's BTF)",
                self.name
            ),
            Attach::BtfTracepoint => format!(
                "the tracepoint cgroup:{0} for BTF programs (btf_trace_{0} in the kernel's BTF, Linux 5.5+)",
                self.name
            ),
        }
    }

    /// Whether this kernel has the program's attach point.
    pub fn available(&self, btf: &Btf) -> bool {
        match self.attach {
            Attach::Lsm => btf.has_lsm_hook(self.name),
            Attach::BtfTracepoint => btf.has_btf_tracepoint(self.name),
        }
    }
}

/// Every program the agent attaches in `mode`, in attach order.
pub fn programs(mode: ProtectionMode) -> Vec<Program> {
    let mut all: Vec<Program> = Hook::LSM.iter().map(|h| Program::lsm(*h)).collect();
    if mode == ProtectionMode::Registry {
        all.extend([CGROUP_MKDIR, CGROUP_RMDIR]);
    }
    all
}

/// A rule and the programs that enforce it.
pub struct Rule {
    pub name: &'static str,
    pub programs: &'static [&'static str],
}

/// The rule that every descendant of a protected cgroup is protected,
/// whenever it was made; the rest follow.
pub const PROTECTED_DESCENDANTS: &str = "protected_descendants";

/// Every rule but [`PROTECTED_DESCENDANTS`] (whose programs depend on the
/// protection mode), in the order `status` lists them.
pub const RULES: &[Rule] = &[
    Rule {
        name: "sockets",
        programs: &["unix_stream_connect", "unix_may_send"],
    },
    Rule {
        name: "namespace_files",
        programs: &["file_open"],
    },
    Rule {
        name: "exec_sharing_vm_namespaces",
        programs: &["bprm_check_security"],
    },
    Rule {
        name: "mounts",
        programs: &["sb_kern_mount", "sb_mount", "sb_umount"],
    },
    Rule {
        name: "move_mount",
        programs: &["move_mount"],
    },
    Rule {
        name: "devices",
        programs: &["file_open"],
    },
    Rule {
        name: "cgroup_writes",
        programs: &["file_open"],
    },
    Rule {
        name: "setid_files",
        programs: &["path_chmod", "file_open", "inode_setxattr"],
    },
];

/// Whether a rule is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleState {
    pub rule: String,
    /// `enforced`, or `missing: <what it needs>`.
    pub status: String,
}

impl RuleState {
    pub fn is_enforced(&self) -> bool {
        self.status == ENFORCED
    }
}

pub const ENFORCED: &str = "enforced";

/// The state of every rule in `mode`, given which programs are attached
/// and which attach points the kernel has (`None`: unknown).
pub fn rule_states(
    mode: ProtectionMode,
    attached: &dyn Fn(&str) -> bool,
    kernel_has: &dyn Fn(&Program) -> Option<bool>,
) -> Vec<RuleState> {
    let all = programs(mode);
    let state = |name: &str, needed: &[&str]| {
        let missing = needed.iter().find(|p| !attached(p));
        let status = match missing {
            None => ENFORCED.to_owned(),
            Some(p) => {
                let program = all.iter().find(|q| q.name == *p);
                match program.map(|q| (q, kernel_has(q))) {
                    Some((q, Some(false))) => format!("missing: {}", q.needs()),
                    _ => format!("missing: program {p} is not attached"),
                }
            }
        };
        RuleState {
            rule: name.to_owned(),
            status,
        }
    };
    // The ancestor walk needs no program of its own (the load proved its
    // helper is there, `eci_probe_ancestor`): it is in every hook's
    // prologue, so it is in force as soon as one hook is.
    let descendants = match mode {
        ProtectionMode::AncestorWalk => {
            if all
                .iter()
                .any(|p| p.attach == Attach::Lsm && attached(p.name))
            {
                state(PROTECTED_DESCENDANTS, &[])
            } else {
                RuleState {
                    rule: PROTECTED_DESCENDANTS.to_owned(),
                    status: "missing: no hook program is attached".to_owned(),
                }
            }
        }
        ProtectionMode::Registry => state(PROTECTED_DESCENDANTS, &[CGROUP_MKDIR.name]),
    };
    let mut states = vec![descendants];
    states.extend(RULES.iter().map(|r| state(r.name, r.programs)));
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rules_program_is_one_the_agent_attaches() {
        for mode in [ProtectionMode::AncestorWalk, ProtectionMode::Registry] {
            let names: Vec<&str> = programs(mode).iter().map(|p| p.name).collect();
            for rule in RULES {
                for p in rule.programs {
                    assert!(names.contains(p), "{} needs {p}", rule.name);
                }
            }
        }
    }

    #[test]
    fn a_missing_hook_names_the_rule_and_the_kernel_feature() {
        let attached = |p: &str| p != "move_mount";
        let has = |p: &Program| Some(p.name != "move_mount");
        let states = rule_states(ProtectionMode::AncestorWalk, &attached, &has);
        let missing: Vec<&RuleState> = states.iter().filter(|s| !s.is_enforced()).collect();
        assert_eq!(missing.len(), 1, "{states:?}");
        assert_eq!(missing[0].rule, "move_mount");
        assert!(
            missing[0]
                .status
                .starts_with("missing: the BPF-LSM hook move_mount"),
            "{missing:?}"
        );
        assert_eq!(states[0].rule, PROTECTED_DESCENDANTS);
        assert!(states[0].is_enforced());
    }

    #[test]
    fn the_registry_needs_the_mkdir_tracepoint() {
        let attached = |p: &str| p != "cgroup_mkdir";
        let has = |p: &Program| Some(p.name != "cgroup_mkdir");
        let states = rule_states(ProtectionMode::Registry, &attached, &has);
        assert_eq!(states[0].rule, PROTECTED_DESCENDANTS);
        assert!(
            states[0].status.contains("cgroup:cgroup_mkdir"),
            "{states:?}"
        );
        assert!(states[1..].iter().all(RuleState::is_enforced), "{states:?}");
        // Present in the kernel but not attached: said so, not blamed on it.
        let states = rule_states(ProtectionMode::Registry, &|_| false, &|_| Some(true));
        assert!(
            states
                .iter()
                .all(|s| s.status.starts_with("missing: program")),
            "{states:?}"
        );
        let states = rule_states(ProtectionMode::AncestorWalk, &|_| false, &|_| Some(true));
        assert!(states.iter().all(|s| !s.is_enforced()), "{states:?}");
    }
}
