//! The whole stack in a real kernel: containerd and dockerd (data on tmpfs,
//! no registry, image imported locally), the agent, and eci-runc as Docker's
//! runtime. Runs in the test VM (or natively where the kernel has BPF-LSM
//! and Docker is installed); elsewhere it says why it skips.

use std::{path::Path, process::Command};

use eci_integration_tests::{
    bpf_lsm_or_skip,
    engine::{IMAGE, docker, engine_or_skip, protected_engine, text, wait_container_denial},
};

#[test]
fn full_stack_kernel_rules_hold_for_eci_and_for_plain_runc_containers() {
    if !bpf_lsm_or_skip("full_stack_kernel_rules_hold_for_eci_and_for_plain_runc_containers") {
        return;
    }
    if !engine_or_skip("full_stack") {
        return;
    }
    let (agent, engine) = protected_engine("eci-engine");
    let engine_socket = engine.socket();
    // A socket smuggled into an allowed (shareable) directory by a bind mount.
    let smuggled = engine.smuggle(&engine_socket, "innocent.sock");
    let share = format!("{}:/share", engine.share().display());
    // The VM's network namespace file, smuggled into the same directory.
    let vm_net = engine.smuggle(Path::new("/proc/1/ns/net"), "vm-net");

    {
        // 1. eci-runc: own user namespace, registered, and the kernel refuses the socket.
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=eci",
                "--network=none",
                "-v",
                &share,
                IMAGE,
                "sh",
                "-c",
                "cat /proc/self/uid_map; eci-test-client stream /share/innocent.sock",
            ],
        );
        let t = text(&out);
        assert!(t.contains("65536"), "no user namespace: {t}");
        assert!(
            t.contains("denied: Operation not permitted"),
            "the eci container reached the engine: {t}"
        );
        let line = wait_container_denial(&agent, "unix_stream_connect");
        assert_eq!(line["verdict"], "deny", "{line}");

        // 2. eci container: nsenter into the VM is refused. The container
        // sees no VM process (eci-runc refuses --pid=host), so the VM's
        // network namespace file is smuggled into the shareable directory.
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=eci",
                "--network=none",
                "--privileged",
                "-v",
                &share,
                IMAGE,
                "nsenter",
                "--net=/share/vm-net",
                "true",
            ],
        );
        assert!(
            !out.status.success(),
            "nsenter from an eci container worked: {}",
            text(&out)
        );
        wait_container_denial(&agent, "file_open");
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=eci",
                "--network=none",
                "--pid=host",
                IMAGE,
                "true",
            ],
        );
        assert!(
            !out.status.success() && text(&out).contains("eci"),
            "an eci container was given the VM's pid namespace: {}",
            text(&out)
        );

        // 3. eci container, privileged: a masked /proc entry stays masked
        // (its mount is immutable) and the VM's /etc cannot be bound in.
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=eci",
                "--network=none",
                "--privileged",
                IMAGE,
                "sh",
                "-c",
                "umount /proc/kcore && echo UNMASKED",
            ],
        );
        assert!(
            !text(&out).contains("UNMASKED"),
            "an eci container unmasked /proc/kcore: {}",
            text(&out)
        );
        wait_container_denial(&agent, "sb_umount");
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=eci",
                "--network=none",
                "-v",
                "/etc:/vm-etc",
                IMAGE,
                "true",
            ],
        );
        assert!(
            !out.status.success() && text(&out).contains("/etc"),
            "an eci container was given the VM's /etc: {}",
            text(&out)
        );

        // 4. eci container: /proc/meminfo is its own view (from cgroup v2
        // here), with its memory limit as MemTotal.
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=eci",
                "--network=none",
                "-m",
                "64m",
                IMAGE,
                "head",
                "-1",
                "/proc/meminfo",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "MemTotal:          65536 kB\n",
            "{}",
            text(&out)
        );

        // 5. A trusted image gets the engine's API through the agent's
        // filtering proxy: the kernel lets it reach the proxy (not the
        // engine's socket), the proxy passes `version` and blocks `push`.
        let trusted_id = engine.commit_image("eci-trusted:1");
        let policy = serde_json::json!({
            "enhancedContainerIsolation": { "dockerSocketMount": {
                "imageList": { "images": [format!("eci-trusted@{trusted_id}")] },
                "commandList": { "type": "deny", "commands": ["push"] } } },
            "eci": { "dockerApiSockets": [engine_socket] }
        });
        engine.write_policy(policy);
        std::fs::copy("/usr/local/bin/docker", engine.share().join("docker"))
            .or_else(|_| std::fs::copy("/usr/bin/docker", engine.share().join("docker")))
            .expect("a docker CLI for the container");
        let socket_bind = format!("{}:/var/run/docker.sock", engine_socket.display());
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=eci",
                "--network=none",
                "-v",
                &socket_bind,
                "-v",
                &share,
                "eci-trusted:1",
                "sh",
                "-c",
                "export HOME=/tmp; echo version=$(/share/docker version --format '{{.Server.Version}}'); /share/docker push eci-trusted:1 2>&1",
            ],
        );
        let t = text(&out);
        assert!(
            t.contains("version=") && !t.contains("version=\n"),
            "the trusted container did not reach the engine through the proxy: {t}"
        );
        assert!(
            t.contains("docker command") && t.contains("is blocked"),
            "push was not blocked by the proxy: {t}"
        );
        engine.write_policy(serde_json::json!({}));
    }

    // 3. A plain runc container under /docker (a runtime that bypassed eci):
    // the kernel rules hold there too.
    let sock = format!("{}:/var/run/docker.sock", engine_socket.display());
    let out = docker(
        &engine,
        &[
            "run",
            "--rm",
            "--runtime=runc",
            "--network=none",
            "-v",
            &sock,
            IMAGE,
            "eci-test-client",
            "stream",
            "/var/run/docker.sock",
        ],
    );
    assert!(
        text(&out).contains("denied: Operation not permitted"),
        "a plain runc container reached the engine: {}",
        text(&out)
    );
    let out = docker(
        &engine,
        &[
            "run",
            "--rm",
            "--runtime=runc",
            "--network=none",
            "--privileged",
            IMAGE,
            "mount",
            "-t",
            "debugfs",
            "none",
            "/mnt",
        ],
    );
    assert!(
        !out.status.success(),
        "a privileged runc container mounted debugfs: {}",
        text(&out)
    );
    let out = docker(
        &engine,
        &[
            "run",
            "--rm",
            "--runtime=runc",
            "--pid=host",
            "--network=none",
            "--privileged",
            IMAGE,
            "nsenter",
            "-t",
            "1",
            "-m",
            "true",
        ],
    );
    assert!(
        !out.status.success(),
        "nsenter from a plain runc container with --pid=host worked: {}",
        text(&out)
    );
    let out = docker(
        &engine,
        &[
            "run",
            "--rm",
            "--runtime=runc",
            "--network=host",
            IMAGE,
            "true",
        ],
    );
    assert!(
        !out.status.success(),
        "a runc container sharing the VM's network ran: {}",
        text(&out)
    );
    agent.wait_audit(|l| l["hook"] == "bprm_check_security");

    // And the VM itself is not locked out.
    assert!(docker(&engine, &["ps"]).status.success());
    let _ = Command::new("umount").arg(&smuggled).status();
    let _ = Command::new("umount").arg(&vm_net).status();
}
