//! Docker-in-Docker under eci, unprivileged in the VM: `docker run
//! --privileged` of an image with Debian's docker.io runs an inner dockerd
//! (overlay2 on its /var/lib/docker volume, iptables, its own bridge), which
//! imports an image and runs a nested container on its bridge network. With
//! eci the outer container's root, and so the nested container's, is an
//! unprivileged VM id; what the inner engine needs is allowed in the
//! container's own namespaces and cgroup (namespaced sysctls, a fresh proc,
//! cgroups below its own) and still refused against the VM (a global
//! sysctl, its own cgroup's limits). Plain runc (`runc-real`, outside every
//! protected parent) is the control: everything works there, the VM's
//! knobs and limits included.

use eci_integration_tests::{
    bpf_lsm_or_skip,
    engine::{Ext4, docker, engine_or_skip, protected_overlay2_engine_at, text},
};

/// The control: plain runc in a cgroup outside every protected parent.
const RUNC: &str = "runc-real";

/// The Docker-in-Docker image's root (Debian's docker.io with iptables,
/// iproute2, procps and busybox), made by `cargo xtask` (`setup`, and before
/// every VM run) in the ignored build directory.
fn dind_root_tar() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/images/dind-root.tar")
}

/// What the test does in the privileged container, as the `docker:dind`
/// entrypoint does: its processes into a leaf cgroup and the controllers
/// enabled below its own, then an inner dockerd on the volume at
/// /var/lib/docker, an imported busybox image and a nested container on the
/// inner engine's bridge. Also the VM's side: a global sysctl written with
/// its own value, and the container's own memory limit. Every step has a
/// time limit; the last line is `DIND-DONE`.
const DIND: &str = r#"exec 2>&1
t() { timeout 120 "$@"; }
echo "outer uid_map: $(cat /proc/self/uid_map)"
mkdir -p /sys/fs/cgroup/init && echo CGROUP-MKDIR-OK
for p in $(cat /sys/fs/cgroup/cgroup.procs); do echo $p > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null; done
sed -e 's/ / +/g' -e 's/^/+/' < /sys/fs/cgroup/cgroup.controllers > /sys/fs/cgroup/cgroup.subtree_control && echo CGROUP-DELEGATED
cat /sys/fs/cgroup/memory.max > /sys/fs/cgroup/memory.max && echo OWN-LIMIT-WRITTEN
sysctl -w net.ipv4.ip_forward=1 && echo NET-SYSCTL-OK
sysctl -w "kernel.panic=$(cat /proc/sys/kernel/panic)" && echo GLOBAL-SYSCTL-WRITTEN
mkdir -p /tmp/p && busybox mount -t proc proc /tmp/p && echo PROC-MOUNT-OK && busybox umount /tmp/p
dockerd >/tmp/dockerd.log 2>&1 &
for i in $(seq 1 300); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker version >/dev/null 2>&1 || tail -5 /tmp/dockerd.log
t docker info --format 'inner engine: {{.Driver}} cgroup v{{.CgroupVersion}}'
mkdir -p /tmp/nested/bin && cp /bin/busybox /tmp/nested/bin/ && ln -s busybox /tmp/nested/bin/sh
tar -C /tmp/nested -c . | t docker import - nested:latest >/dev/null && echo IMPORTED
t docker run --rm nested:latest /bin/busybox sh -c 'echo "nested uid_map: $(cat /proc/self/uid_map)"; /bin/busybox ip -o -4 addr show eth0; echo NESTED-OK'
echo "nested run: $?"
grep -i 'level=error' /tmp/dockerd.log | tail -10
echo DIND-DONE
"#;

/// The VM id the line `<what> uid_map: 0 <id> <count>` names.
fn mapped_root(log: &str, what: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("{what} uid_map:")))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.get(3)?.parse().ok()
}

#[test]
fn docker_in_docker_runs_a_nested_container_unprivileged_in_the_vm() {
    let test = "dind::docker_in_docker_runs_a_nested_container_unprivileged_in_the_vm";
    if !bpf_lsm_or_skip(test) || !engine_or_skip(test) {
        return;
    }
    let tar = dind_root_tar();
    assert!(
        tar.is_file(),
        "no {} (`cargo xtask setup` or `cargo xtask vm-test` makes it)",
        tar.display()
    );
    // overlay2 on ext4, as on a real host (no copy of the image per
    // container; the inner engine's overlay2 on its ID-mapped volume).
    let data = Ext4::mount_sized("/var/lib/docker-dind", "1536M");
    let (_agent, engine) = protected_overlay2_engine_at("eci-dind", "/var/lib/docker-dind");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker --host unix://{} import -c 'CMD [\"/bin/sh\"]' - eci-dind:latest < {}",
            engine.socket().display(),
            tar.display()
        ))
        .output()
        .expect("import");
    assert!(out.status.success(), "import: {}", text(&out));
    let mut logs = Vec::new();
    for runtime in [RUNC, "eci"] {
        let name = format!("eci-dind-{}", runtime.replace('-', ""));
        let _ = docker(&engine, &["rm", "-f", &name]);
        let runtime_arg = format!("--runtime={runtime}");
        let volume = format!("{name}:/var/lib/docker");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--privileged",
            &runtime_arg,
            "--network=none",
            "-v",
            &volume,
        ];
        if runtime == RUNC {
            args.push("--cgroup-parent=/eci-baseline");
        }
        args.extend_from_slice(&["eci-dind:latest", "sh", "-c", DIND]);
        let out = docker(&engine, &args);
        assert!(
            out.status.success(),
            "a privileged container with {runtime}: {}",
            text(&out)
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let log = loop {
            let log = text(&docker(&engine, &["logs", &name]));
            if log.contains("DIND-DONE") || std::time::Instant::now() > deadline {
                break log;
            }
            std::thread::sleep(std::time::Duration::from_secs(3));
        };
        let _ = docker(&engine, &["rm", "-f", &name]);
        println!("=== {runtime}:\n{log}");
        logs.push((runtime, log));
    }
    // The same Debian image serves the everyday tools' check.
    everyday_tools_show_the_containers_memory_and_time(&engine);
    drop(engine);
    drop(data);
    for (runtime, log) in &logs {
        for step in [
            "CGROUP-DELEGATED",
            "NET-SYSCTL-OK",
            "PROC-MOUNT-OK",
            "inner engine: overlay2 cgroup v2",
            "IMPORTED",
            "NESTED-OK",
        ] {
            assert!(
                log.contains(step),
                "Docker-in-Docker with {runtime}: no {step}: {log}"
            );
        }
        let vm_side = ["OWN-LIMIT-WRITTEN", "GLOBAL-SYSCTL-WRITTEN"];
        if *runtime == RUNC {
            // The control reaches the VM: the attempts are real.
            for step in vm_side {
                assert!(log.contains(step), "{runtime}: no {step}: {log}");
            }
            assert_eq!(mapped_root(log, "nested"), Some(0), "{runtime}: {log}");
        } else {
            for step in vm_side {
                assert!(!log.contains(step), "{runtime}: {step}: {log}");
            }
            // The nested container's root is the outer one's: a VM id of
            // the container's range, not the VM's root.
            let outer = mapped_root(log, "outer");
            assert!(outer.is_some_and(|id| id >= 65536), "{log}");
            assert_eq!(mapped_root(log, "nested"), outer, "{log}");
        }
    }
}

/// procps `free`, `uptime`, `top` and coreutils' `nproc`, `getconf` in a
/// container of `--cpus=1 -m 256m`: with eci they show its 256 MiB, its own
/// uptime and load; with runc the VM's. busybox `free` and `uptime` ask
/// `sysinfo(2)`, which no file view reaches: the VM's under both (printed).
fn everyday_tools_show_the_containers_memory_and_time(
    engine: &eci_integration_tests::engine::Engine,
) {
    let script = "sleep 2; free -k | sed -n 2p; uptime; top -bn1 | sed -n 1,4p; echo NPROC $(nproc) $(getconf _NPROCESSORS_ONLN); busybox free | sed -n 2p; busybox uptime";
    let vm_total_kb = eci_views::meminfo::kb_value(
        &std::fs::read_to_string("/proc/meminfo").expect("meminfo"),
        "MemTotal",
    )
    .expect("MemTotal");
    for runtime in [RUNC, "eci"] {
        let runtime_arg = format!("--runtime={runtime}");
        let mut args = vec!["run", "--rm", &runtime_arg, "--cpus=1", "-m", "256m"];
        if runtime == RUNC {
            args.push("--cgroup-parent=/eci-baseline");
        }
        args.extend_from_slice(&["eci-dind:latest", "sh", "-c", script]);
        let out = docker(engine, &args);
        assert!(out.status.success(), "{runtime}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("=== tools with {runtime}:\n{stdout}");
        let free_total: u64 = stdout
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{runtime}: free: {stdout}"));
        // procps uptime: "up N min" or "up 0 min" / "up N sec" for a fresh one.
        let uptime = stdout.lines().nth(1).unwrap_or_default();
        let top_mem = stdout
            .lines()
            .find(|l| l.contains("Mem") && l.contains("total"))
            .unwrap_or_else(|| panic!("{runtime}: top: {stdout}"));
        if runtime == RUNC {
            assert_eq!(free_total, vm_total_kb, "{stdout}");
            assert!(!top_mem.contains(" 256.0 total"), "{stdout}");
        } else {
            assert_eq!(free_total, 262_144, "{stdout}");
            assert!(top_mem.contains(" 256.0 total"), "{stdout}");
            assert!(
                uptime.contains("up 0 min")
                    || uptime.contains("up 1 min")
                    || uptime.contains("sec"),
                "{stdout}"
            );
        }
    }
}
