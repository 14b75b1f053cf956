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
    // The engine socket smuggled into an allowed (shareable) directory by a
    // hard link: a file of the share, the engine's socket by identity.
    std::fs::hard_link(&engine_socket, engine.share().join("innocent.sock")).expect("hard link");
    let share = format!("{}:/share", engine.share().display());

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
        // sees no VM process (eci-runc refuses --pid=host); the VM's network
        // namespace file bound into the shareable directory is seen by
        // eci-runc, which judges every mount below a recursive bind source:
        // the container is refused before it starts.
        let vm_net = engine.smuggle(Path::new("/proc/1/ns/net"), "vm-net");
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
        let t = text(&out);
        let _ = Command::new("umount").arg(&vm_net).status();
        let _ = std::fs::remove_file(&vm_net);
        assert!(
            !out.status.success() && t.contains("nsfs"),
            "nsenter from an eci container was not refused by eci-runc for the VM's namespace file: {t}"
        );
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

    // 3. `--runtime=runc` is eci: eci-runc stands in for `runc` on the
    // engine's PATH, so the container gets a user namespace of its own.
    let out = docker(
        &engine,
        &[
            "run",
            "--rm",
            "--runtime=runc",
            "--network=none",
            IMAGE,
            "cat",
            "/proc/self/uid_map",
        ],
    );
    let map = text(&out);
    assert!(
        out.status.success() && map.split_whitespace().nth(1).is_some_and(|b| b != "0"),
        "--runtime=runc ran without eci's user namespace: {map}"
    );
    // 4. A runtime that bypasses eci-runc (the real runc, registered by an
    // administrator as `runc-real`) under /docker: the container shares the
    // VM's user namespace, so the kernel refuses its first exec — whatever it
    // would have tried — and audits it.
    let sock = format!("{}:/var/run/docker.sock", engine_socket.display());
    for flags in [
        vec!["-v", sock.as_str()],
        vec!["--privileged"],
        vec!["--pid=host", "--privileged"],
        vec!["--network=host"],
    ] {
        let mut args = vec!["run", "--rm", "--runtime=runc-real"];
        if !flags.contains(&"--network=host") {
            args.push("--network=none");
        }
        args.extend(flags.iter().copied());
        args.extend([IMAGE, "eci-test-client", "stream", "/var/run/docker.sock"]);
        let out = docker(&engine, &args);
        let t = text(&out);
        assert!(
            !out.status.success() && t.to_lowercase().contains("operation not permitted"),
            "a plain runc container under /docker ran ({flags:?}): {t}"
        );
    }
    agent.wait_audit(|l| {
        l["hook"] == "bprm_check_security"
            && l["object"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("user namespace"))
    });

    // 5. A build's RUN step (the classic builder: the engine's default
    // runtime, `runc`, which eci-runc stands in for) runs in a user
    // namespace of its own — never as the VM's root. The step prints its
    // uid_map into the build's output (it writes nothing: on kernels whose
    // tmpfs cannot be ID-mapped the test engine's vfs layers stay the VM's,
    // which the step's root may not write).
    let dockerfile = engine.dir.path().join("build");
    std::fs::create_dir_all(&dockerfile).expect("build dir");
    std::fs::write(
        dockerfile.join("Dockerfile"),
        format!("FROM {IMAGE}\nRUN cat /proc/self/uid_map\n"),
    )
    .expect("Dockerfile");
    let built = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .arg("--host")
        .arg(format!("unix://{}", engine.socket().display()))
        .args(["build", "--no-cache", "-t", "eci-built:1"])
        .arg(&dockerfile)
        .output()
        .expect("docker build");
    let built_text = text(&built);
    // `0 <base> 65536`, possibly behind the builder's colour codes.
    let step_map = built_text.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(3)
            .find(|w| w[0].ends_with('0') && w[2] == "65536")
            .map(|w| w[1].to_owned())
    });
    println!("docker build: the RUN step's uid_map base: {step_map:?}");
    assert!(
        built.status.success() && step_map.as_deref().is_some_and(|b| b != "0"),
        "a RUN step did not run in a user namespace of its own: {built_text}"
    );

    // 6. A process that calls itself `dockerd` (every Docker-in-Docker
    // container runs one) is not the engine: its container's namespaces do
    // not become the VM's, so its own mounts stay its own.
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
            "eci-test-client named dockerd 20 >/dev/null & sleep 4; mkdir -p /tmp/own && mount -t tmpfs none /tmp/own && echo own-mount-ok",
        ],
    );
    assert!(
        text(&out).contains("own-mount-ok"),
        "a container with a process named dockerd lost its own mounts: {}",
        text(&out)
    );

    // And the VM itself is not locked out.
    assert!(docker(&engine, &["ps"]).status.success());
}
