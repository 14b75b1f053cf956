//! What of the VM a protected task cannot reach by opening a file: device
//! nodes outside the allowed set (wherever the node lives), cgroups outside
//! every protected cgroup (so no task is moved out of protection); a
//! registered cgroup is found at any depth; and a task in the VM's user
//! namespace below a protected parent (a runtime that bypassed eci-runc)
//! cannot exec. Each is tried from a protected and an unprotected cgroup.

use std::{os::unix::fs::MetadataExt, path::PathBuf, process::Command};

use eci_integration_tests::{
    Attempt, TestAgent, TestCgroup, TestSockets, assert_denied_only_when_protected, attempt,
    bpf_lsm_or_skip, cgroup2_mount, test_client, tmp_dir, unique,
};

/// A directory removed (with what is in it) on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mknod(path: &std::path::Path, kind: &str, major: u32, minor: u32) {
    let status = Command::new("mknod")
        .args(["-m", "0666"])
        .arg(path)
        .args([kind, &major.to_string(), &minor.to_string()])
        .status()
        .expect("mknod");
    assert!(status.success(), "mknod {}", path.display());
}

/// An agent, a cgroup it protects and one it does not.
fn agent_with_a_protected_cgroup() -> (TestAgent, TestCgroup, TestCgroup) {
    let agent = TestAgent::start(&[]);
    let protected = TestCgroup::new("eci-prot");
    let unprotected = TestCgroup::new("eci-free");
    agent.protect(&protected);
    (agent, protected, unprotected)
}

#[test]
fn a_protected_task_opens_no_device_node_beyond_the_standard_set_wherever_the_node_lives() {
    let name =
        "a_protected_task_opens_no_device_node_beyond_the_standard_set_wherever_the_node_lives";
    if !bpf_lsm_or_skip(name) {
        return;
    }
    let (agent, protected, unprotected) = agent_with_a_protected_cgroup();
    let scratch = Scratch(tmp_dir().join(unique("eci-devices")));
    std::fs::create_dir_all(&scratch.0).expect("scratch");
    // Nodes as an image layer or a volume would carry them: the VM's kernel
    // log and memory, not in /dev.
    let kmsg = scratch.0.join("kmsg");
    mknod(&kmsg, "c", 1, 11);
    let mem = scratch.0.join("kmem-like");
    mknod(&mem, "c", 1, 1);
    for node in [&kmsg, &mem, &PathBuf::from("/dev/kmsg")] {
        assert_denied_only_when_protected(&protected, &unprotected, "open", node);
    }
    // A block device: a loop device's node under another name.
    let image = scratch.0.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("disk image");
    let _ = Command::new("modprobe").arg("loop").status();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&image)
        .output()
        .expect("losetup");
    let loop_dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !loop_dev.is_empty() {
        let rdev = std::fs::metadata(&loop_dev).expect("loop node").rdev();
        let disk = scratch.0.join("disk");
        mknod(&disk, "b", libc::major(rdev), libc::minor(rdev));
        assert_denied_only_when_protected(&protected, &unprotected, "open", &disk);
        let _ = Command::new("losetup").args(["-d", &loop_dev]).status();
    } else {
        println!("SKIP PART: {name}: block device part: no loop device here ({out:?})");
    }
    // The standard set stays open, wherever its node lives.
    let null = scratch.0.join("null");
    mknod(&null, "c", 1, 3);
    for node in [
        &null,
        &PathBuf::from("/dev/null"),
        &PathBuf::from("/dev/urandom"),
    ] {
        assert_eq!(
            attempt(&test_client(), &protected, "open", node).0,
            Attempt::Allowed,
            "{} is a standard device",
            node.display()
        );
    }
    let line = agent.wait_audit(|l| {
        l["hook"] == "file_open"
            && l["cgroup_id"] == protected.id
            && l["object"]["kind"] == "device"
    });
    assert!(
        line["object"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not in the allowed set")),
        "{line}"
    );
}

#[test]
fn a_protected_task_cannot_write_to_a_cgroup_outside_protection() {
    let name = "a_protected_task_cannot_write_to_a_cgroup_outside_protection";
    if !bpf_lsm_or_skip(name) {
        return;
    }
    let (agent, protected, unprotected) = agent_with_a_protected_cgroup();
    let inside = protected.dir.join("sub");
    std::fs::create_dir(&inside).expect("sub cgroup");
    // Out of protection: an unprotected cgroup, and the root of the
    // hierarchy (what `--cgroupns=host` or a mounted cgroup2 root shows).
    for target in [
        unprotected.dir.join("cgroup.procs"),
        cgroup2_mount().join("cgroup.procs"),
        unprotected.dir.join("cgroup.threads"),
    ] {
        assert_denied_only_when_protected(&protected, &unprotected, "open-write", &target);
    }
    // Its own subtree stays its own.
    assert_eq!(
        attempt(
            &test_client(),
            &protected,
            "open-write",
            &inside.join("cgroup.procs")
        )
        .0,
        Attempt::Allowed
    );
    // Reading is not moving.
    assert_eq!(
        attempt(
            &test_client(),
            &protected,
            "open",
            &unprotected.dir.join("cgroup.procs")
        )
        .0,
        Attempt::Allowed
    );
    agent.wait_audit(|l| {
        l["hook"] == "file_open"
            && l["cgroup_id"] == protected.id
            && l["object"]["kind"] == "cgroup"
    });
    let _ = std::fs::remove_dir(&inside);
}

#[test]
fn a_registered_cgroup_is_protected_at_any_depth() {
    let name = "a_registered_cgroup_is_protected_at_any_depth";
    if !bpf_lsm_or_skip(name) {
        return;
    }
    let sockets = TestSockets::new();
    let agent = TestAgent::start(&["--protect-socket", &sockets.stream.display().to_string()]);
    // 24 levels: deeper than any fixed walk would be asked to go for a
    // parent, like `--cgroup-parent` with 20 levels.
    let top = unique("eci-deep");
    let mut rel = String::new();
    let mut dirs = Vec::new();
    for level in 0..24 {
        rel.push_str(&format!("/{}", if level == 0 { top.as_str() } else { "l" }));
        let dir = cgroup2_mount().join(rel.trim_start_matches('/'));
        std::fs::create_dir(&dir).expect("nested cgroup");
        dirs.push(dir);
    }
    let leaf = dirs.last().expect("leaf").clone();
    let id = std::fs::metadata(&leaf).expect("leaf").ino();
    let deep = TestCgroup::at(leaf, rel.clone(), id);
    agent.protect(&deep);
    let (result, _, text) = attempt(&test_client(), &deep, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Denied, "{rel}: {text}");
    drop(deep);
    for dir in dirs.iter().rev().skip(1) {
        let _ = std::fs::remove_dir(dir);
    }
}

#[test]
fn a_task_in_the_vms_user_namespace_below_a_protected_parent_cannot_exec() {
    let name = "a_task_in_the_vms_user_namespace_below_a_protected_parent_cannot_exec";
    if !bpf_lsm_or_skip(name) {
        return;
    }
    let parent_name = unique("eci-parent");
    let parent = Scratch(cgroup2_mount().join(&parent_name));
    std::fs::create_dir(&parent.0).expect("parent cgroup");
    let agent = TestAgent::start(&["--protected-parent", &format!("/{parent_name}")]);
    let child = parent.0.join("container");
    std::fs::create_dir(&child).expect("child cgroup");
    let id = std::fs::metadata(&child).expect("child").ino();
    // A runtime without a user namespace (plain runc) puts its container
    // here: container namespaces, the VM's user namespace.
    let container = TestCgroup::at(child.clone(), format!("/{parent_name}/container"), id);
    let out = container.command("/bin/true").output().expect("run");
    assert!(
        !out.status.success(),
        "a VM-root container below a protected parent ran"
    );
    let line = agent.wait_audit(|l| l["hook"] == "bprm_check_security" && l["cgroup_id"] == id);
    assert!(
        line["object"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("user namespace")),
        "{line}"
    );
    // The same outside any protected parent runs (not vacuous), and so does
    // a container in a user namespace of its own below the parent.
    let free = TestCgroup::new("eci-free");
    assert!(free.command("/bin/true").status().expect("run").success());
    let own_userns = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--fork",
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--",
            "/bin/sh",
            "-c",
            r#"echo 0 > "$1/cgroup.procs" && exec /bin/true"#,
            "sh",
        ])
        .arg(&child)
        .status()
        .expect("run");
    assert!(
        own_userns.success(),
        "a container in a user namespace of its own below the parent was refused"
    );
    drop(container);
    drop(agent);
}
