//! Mounts: the mounts a container starts with are immutable for it; mounts
//! it makes later are its own; the kernel's control file systems cannot be
//! mounted from a protected cgroup.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use eci_integration_tests::{TestAgent, TestCgroup, bpf_lsm_or_skip, tmp_dir, unique};

/// Runs `setup` in a fresh mount namespace inside `cgroup`, waits for the
/// test to protect the cgroup, then runs `attempts` (each `name: command`)
/// and returns `name=exit code` for each.
fn in_container(
    agent: &TestAgent,
    cgroup: &TestCgroup,
    setup: &str,
    attempts: &[(&str, &str)],
) -> Vec<(String, i32)> {
    let mut script = format!("set -u\n{setup}\necho ready\nread go\n");
    for (name, command) in attempts {
        script.push_str(&format!("{command} >/dev/null 2>&1; echo \"{name}=$?\"\n"));
    }
    script.push_str("echo done\n");
    let mut child = cgroup
        .command("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn container shell");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "ready", "the container's set-up failed");
    agent.protect(cgroup);
    writeln!(child.stdin.take().expect("stdin"), "go").expect("go");
    let mut results = Vec::new();
    for line in lines.map_while(Result::ok) {
        if line == "done" {
            break;
        }
        if let Some((name, code)) = line.split_once('=') {
            results.push((name.to_owned(), code.parse().unwrap_or(-1)));
        }
    }
    let _ = child.wait();
    results
}

fn code(results: &[(String, i32)], name: &str) -> i32 {
    results
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no result {name}: {results:?}"))
}

#[test]
fn initial_mounts_are_immutable_and_later_mounts_are_the_containers_own() {
    if !bpf_lsm_or_skip("initial_mounts_are_immutable_and_later_mounts_are_the_containers_own") {
        return;
    }
    let agent = TestAgent::start(&[]);
    let cgroup = TestCgroup::new("eci-prot");
    let dir = tmp_dir().join(unique("eci-mounts"));
    std::fs::create_dir_all(&dir).expect("mount dir");
    let d = dir.display();
    let setup = format!(
        "mkdir -p {d}/masked {d}/src {d}/ro {d}/later {d}/later2 && mount -t tmpfs initial {d}/masked && \
         mount --bind {d}/src {d}/ro && mount -o remount,bind,ro {d}/ro"
    );
    let results = in_container(
        &agent,
        &cgroup,
        &setup,
        &[
            ("umount_initial", &format!("umount {d}/masked")),
            ("lazy_umount_initial", &format!("umount -l {d}/masked")),
            ("remount_ro_rw", &format!("mount -o remount,bind,rw {d}/ro")),
            ("remount_ro_ro", &format!("mount -o remount,bind,ro {d}/ro")),
            ("mount_later", &format!("mount -t tmpfs later {d}/later")),
            (
                "remount_later",
                &format!("mount -o remount,ro {d}/later && mount -o remount,rw {d}/later"),
            ),
            ("umount_later", &format!("umount {d}/later")),
            (
                "bind_later",
                &format!("mount --bind {d}/src {d}/later2 && umount {d}/later2"),
            ),
        ],
    );
    assert_ne!(
        code(&results, "umount_initial"),
        0,
        "an initial mount was unmounted: {results:?}"
    );
    assert_ne!(
        code(&results, "lazy_umount_initial"),
        0,
        "an initial mount was lazily unmounted: {results:?}"
    );
    assert_ne!(
        code(&results, "remount_ro_rw"),
        0,
        "a read-only initial mount became writable: {results:?}"
    );
    assert_eq!(
        code(&results, "remount_ro_ro"),
        0,
        "keeping read-only must stay allowed: {results:?}"
    );
    assert_eq!(code(&results, "mount_later"), 0, "{results:?}");
    assert_eq!(
        code(&results, "remount_later"),
        0,
        "the container's own mount: {results:?}"
    );
    assert_eq!(
        code(&results, "umount_later"),
        0,
        "the container's own mount: {results:?}"
    );
    assert_eq!(code(&results, "bind_later"), 0, "{results:?}");
    let line = agent.wait_audit(|l| l["hook"] == "sb_umount" && l["cgroup_id"] == cgroup.id);
    assert_eq!(line["object"]["kind"], "mount", "{line}");
    agent.wait_audit(|l| l["hook"] == "sb_mount" && l["cgroup_id"] == cgroup.id);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_kernels_control_file_systems_cannot_be_mounted_from_a_protected_cgroup() {
    if !bpf_lsm_or_skip(
        "the_kernels_control_file_systems_cannot_be_mounted_from_a_protected_cgroup",
    ) {
        return;
    }
    let agent = TestAgent::start(&[]);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    let dir = tmp_dir().join(unique("eci-fs"));
    std::fs::create_dir_all(&dir).expect("dir");
    let d = dir.display();
    let attempts: Vec<(String, String)> = ["debugfs", "tracefs", "bpf", "securityfs"]
        .iter()
        .map(|fs| {
            (
                fs.to_string(),
                format!("mkdir -p {d}/{fs} && mount -t {fs} none {d}/{fs} && umount {d}/{fs}"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = attempts
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let results = in_container(&agent, &protected, "true", &refs);
    for (fs, _) in &refs {
        assert_ne!(
            code(&results, fs),
            0,
            "{fs} was mounted from a protected cgroup: {results:?}"
        );
    }
    // Each refusal was the kernel rule's (one audit line per file system).
    let line = agent.wait_audit(|l| {
        l["hook"] == "sb_kern_mount"
            && l["cgroup_id"] == protected.id
            && l["object"]["detail"] == "file system magic 0x73636673"
    });
    assert_eq!(line["object"]["kind"], "filesystem", "{line}");
    let denials = agent
        .audit_lines()
        .iter()
        .filter(|l| l["hook"] == "sb_kern_mount" && l["cgroup_id"] == protected.id)
        .count();
    assert_eq!(denials, refs.len(), "one kernel denial per file system");
    // From the VM the same mounts work (they are not refused for everyone).
    for (fs, command) in &refs {
        let out = unprotected
            .command("/bin/sh")
            .args(["-c", command])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{fs} failed from an unprotected cgroup: {}\naudit: {:?}",
            String::from_utf8_lossy(&out.stderr),
            agent
                .audit_lines()
                .iter()
                .filter(|l| l["cgroup_id"] == unprotected.id)
                .collect::<Vec<_>>()
        );
    }
    let _ = Command::new("rm").arg("-rf").arg(&dir).status();
}
