//! The VM's namespaces: a protected task cannot open their nsfs files (so
//! `nsenter`/`setns` into the VM fails), and a protected task that shares a
//! namespace with the VM cannot exec.

use std::{path::PathBuf, process::Stdio};

use eci_integration_tests::{Attempt, TestAgent, TestCgroup, attempt, bpf_lsm_or_skip};

fn client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eci-test-client"))
}

#[test]
fn opening_the_vms_namespace_files_is_denied_only_from_protected_cgroups() {
    if !bpf_lsm_or_skip("opening_the_vms_namespace_files_is_denied_only_from_protected_cgroups") {
        return;
    }
    let agent = TestAgent::start(&[]);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    agent.protect(&protected);
    for kind in ["net", "mnt", "pid", "ipc", "uts", "user", "cgroup"] {
        for path in [
            format!("/proc/1/ns/{kind}"),
            format!("/proc/{}/ns/{kind}", std::process::id()),
        ] {
            let path = PathBuf::from(path);
            let (result, _, text) = attempt(&client(), &protected, "open", &path);
            assert_eq!(
                result,
                Attempt::Denied,
                "{} opened from a protected cgroup: {text}",
                path.display()
            );
            let (result, _, text) = attempt(&client(), &unprotected, "open", &path);
            assert_eq!(
                result,
                Attempt::Allowed,
                "{} refused to an unprotected cgroup: {text}",
                path.display()
            );
        }
    }
    // Its own (container) namespaces stay open to it.
    let (result, _, text) = attempt(
        &client(),
        &protected,
        "open",
        &PathBuf::from("/proc/self/ns/net"),
    );
    assert_eq!(
        result,
        Attempt::Allowed,
        "a container's own namespace was refused: {text}"
    );
    let line = agent.wait_audit(|l| l["hook"] == "file_open" && l["cgroup_id"] == protected.id);
    assert_eq!(line["object"]["kind"], "namespace", "{line}");
    assert_eq!(line["verdict"], "deny", "{line}");
}

#[test]
fn nsenter_into_the_vm_fails_from_a_protected_cgroup() {
    if !bpf_lsm_or_skip("nsenter_into_the_vm_fails_from_a_protected_cgroup") {
        return;
    }
    let agent = TestAgent::start(&[]);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    agent.protect(&protected);
    for ns in ["--net", "--mount", "--uts", "--ipc"] {
        // The namespace file named: what every nsenter opens. (util-linux
        // 2.39+ with `--target` alone joins through a pidfd instead, which
        // opens no namespace file: see the known gap printed below.)
        let file = format!("{ns}=/proc/1/ns/{}", &ns[2..]);
        let out = protected
            .command("nsenter")
            .args([file.as_str(), "--", "true"])
            .output()
            .expect("nsenter");
        assert!(
            !out.status.success(),
            "nsenter {ns} into the VM worked from a protected cgroup"
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("Operation not permitted") || text.contains("Permission denied"),
            "{ns}: {text}"
        );
        let out = unprotected
            .command("nsenter")
            .args([file.as_str(), "--", "true"])
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "nsenter {ns} failed from an unprotected cgroup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // setns(pidfd) joins without opening a namespace file, and setns has no
    // LSM hook: for a task in the VM's user namespace (a runtime that
    // bypassed eci, with --pid=host) this route is open. eci containers are
    // not affected (their own user namespace lacks CAP_SYS_ADMIN over the
    // VM's namespaces). Shown, not asserted, until a rule closes it.
    let by_pidfd = protected
        .command("nsenter")
        .args(["--target", "1", "--net", "--", "true"])
        .output()
        .expect("nsenter");
    println!(
        "KNOWN GAP (README, routes still open): nsenter --target 1 --net from a protected cgroup in the VM's user namespace: {}",
        if by_pidfd.status.success() {
            "joined (this nsenter uses setns(pidfd), no namespace file is opened)".to_string()
        } else {
            format!(
                "refused: {}",
                String::from_utf8_lossy(&by_pidfd.stderr).trim()
            )
        }
    );
}

#[test]
fn a_protected_task_sharing_the_vms_namespaces_cannot_exec() {
    if !bpf_lsm_or_skip("a_protected_task_sharing_the_vms_namespaces_cannot_exec") {
        return;
    }
    let agent = TestAgent::start(&[]);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    agent.protect(&protected);
    let denied = protected
        .command_sharing_vm_namespaces("/bin/true")
        .stdout(Stdio::null())
        .status();
    let err = denied.expect_err("exec in a protected cgroup sharing the VM's namespaces worked");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let line =
        agent.wait_audit(|l| l["hook"] == "bprm_check_security" && l["cgroup_id"] == protected.id);
    assert_eq!(line["object"]["kind"], "shared_namespace", "{line}");
    assert!(
        line["object"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("shares the VM's")),
        "{line}"
    );
    let allowed = unprotected
        .command_sharing_vm_namespaces("/bin/true")
        .status()
        .expect("exec unprotected");
    assert!(allowed.success());
    // The same program in container namespaces runs.
    let contained = protected
        .command("/bin/true")
        .status()
        .expect("exec contained");
    assert!(contained.success(), "a contained exec was refused");
}
