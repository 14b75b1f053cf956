//! The image `cargo xtask image` makes, run the way
//! `deploy/kubernetes/daemonset.yaml` says, in the test VM: the archive
//! (what one copies to a node) is loaded into an engine of the test's own
//! (dockerd at the node's default socket, the default `runc` for the
//! DaemonSet's pod as on a node), and also imported with `ctr -n k8s.io`;
//! the init container and the agent container are started with the
//! DaemonSet's privileges and host mounts, read from the YAML and put as
//! `docker run` flags; then a container started with the eci-runc the init
//! container installed is denied the engine's socket by the kernel, the
//! same attack with plain runc works, and the rules stay pinned once the
//! agent's container is stopped. No kubelet: Kubernetes' own part (the
//! pod's admission, probes run by kubelet, hostPath types) is translated,
//! not run.

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use eci_integration_tests::{
    bpf_lsm_or_skip,
    engine::{engine_or_skip, image_rootfs, start_containerd, text},
    workspace_bin,
};

/// The node's socket of the engine: the policy's default, which the agent
/// finds through the node's /run.
const DOCKER_SOCKET: &str = "/run/docker.sock";
const ATTACK_IMAGE: &str = "eci-image-attack:latest";
const AGENT_CONTAINER: &str = "eci-agent-daemonset";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The archive `cargo xtask vm-test` writes before the VM boots (`cargo
/// xtask image --debug --no-load` by hand), from the debug binaries.
fn archive() -> PathBuf {
    let out = Command::new(workspace_bin("eci-agent"))
        .arg("--version")
        .output()
        .expect("eci-agent --version");
    let version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a version")
        .to_owned();
    let path = repo().join(format!("build/image/eci-agent-{version}-debug.tar"));
    assert!(
        path.is_file(),
        "{} is missing: `cargo xtask vm-test` makes it before the VM boots (by hand: `cargo xtask image --debug --no-load`)",
        path.display()
    );
    path
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .arg("--host")
        .arg(format!("unix://{DOCKER_SOCKET}"))
        .args(args)
        .output()
        .expect("docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Makes the mount holding `path` a shared one, as systemd makes every
/// mount of a node (Docker binds with `rshared`/`rslave` only from one).
fn make_shared(path: &str) {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "TARGET", "--target", path])
        .output()
        .expect("findmnt");
    let point = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let status = Command::new("mount")
        .args(["--make-shared", &point])
        .status()
        .expect("mount --make-shared");
    assert!(status.success(), "mount --make-shared {point}");
}

/// `docker run` flags for one of the DaemonSet's containers: its
/// privileges, the pod's hostPID and its hostPath volumes (with their
/// read-only flag and propagation). `substitute` maps a node path that
/// cannot be had in the VM to a directory standing in for it.
fn run_flags(
    pod: &serde_yaml::Value,
    container: &serde_yaml::Value,
    substitute: &BTreeMap<&str, PathBuf>,
) -> Vec<String> {
    let mut flags = Vec::new();
    if container["securityContext"]["privileged"] == true {
        flags.push("--privileged".to_owned());
    }
    if pod["hostPID"] == true {
        flags.push("--pid=host".to_owned());
    }
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    for mount in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let name = mount["name"].as_str().expect("a mount's name");
        let volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"));
        let node = volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("volume {name} is not a hostPath"));
        let host = substitute
            .get(node)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(node));
        match volume["hostPath"]["type"].as_str() {
            Some("DirectoryOrCreate") => std::fs::create_dir_all(&host).expect("hostPath dir"),
            Some("Directory") => assert!(host.is_dir(), "hostPath {} is missing", host.display()),
            other => panic!("hostPath type {other:?} of {name} is not translated here"),
        }
        let mut options = Vec::new();
        if mount["readOnly"] == true {
            options.push("ro");
        }
        match mount["mountPropagation"].as_str() {
            None | Some("None") => {}
            Some("HostToContainer") => {
                make_shared(&host.display().to_string());
                options.push("rslave");
            }
            Some("Bidirectional") => {
                make_shared(&host.display().to_string());
                options.push("rshared");
            }
            Some(other) => panic!("mountPropagation {other} is not translated here"),
        }
        let at = mount["mountPath"].as_str().expect("mountPath");
        let mut flag = format!("{}:{at}", host.display());
        if !options.is_empty() {
            flag.push(':');
            flag.push_str(&options.join(","));
        }
        flags.push("-v".to_owned());
        flags.push(flag);
    }
    flags
}

/// `docker run` of one of the DaemonSet's containers with `flags`: its
/// `command` replaces the image's entrypoint, as in Kubernetes.
fn run_container(
    image: &str,
    container: &serde_yaml::Value,
    flags: &[String],
    detached: bool,
) -> Output {
    let command = strings(&container["command"]);
    let (entrypoint, args) = command.split_first().expect("a command");
    let mut all: Vec<&str> = vec!["run"];
    if detached {
        all.extend(["-d", "--name", AGENT_CONTAINER]);
    } else {
        all.push("--rm");
    }
    all.extend(flags.iter().map(String::as_str));
    all.extend(["--entrypoint", entrypoint, image]);
    all.extend(args.iter().map(String::as_str));
    docker(&all)
}

/// The engine of the test (containerd and dockerd, at the node's default
/// sockets), the agent's container and the pins: gone when the test ends.
struct Node {
    daemons: Vec<Child>,
    dir: tempfile::TempDir,
    /// The shareable directory the attack binds: a bind of `share_source`,
    /// a directory on /run (the engine's socket's file system, so a hard
    /// link of it fits) at a path outside /run (which containers may never
    /// bind).
    share: PathBuf,
    share_source: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", AGENT_CONTAINER]);
        for d in self.daemons.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
        let _ = Command::new(workspace_bin("eci-agent"))
            .arg("unload")
            .output();
        let _ = Command::new("umount").arg(&self.share).status();
        let _ = std::fs::remove_dir(&self.share);
        let _ = std::fs::remove_dir_all(&self.share_source);
        let _ = std::fs::remove_file(DOCKER_SOCKET);
    }
}

impl Node {
    fn start(node_bin: &Path) -> Node {
        // The VM's engine and agent are this test's alone: a suite before
        // it in the same VM (the demo) may still be stopping its own.
        let deadline = Instant::now() + Duration::from_secs(60);
        for daemon in ["eci-agent", "dockerd", "containerd"] {
            while Command::new("pgrep")
                .args(["-x", daemon])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                assert!(
                    Instant::now() < deadline,
                    "{daemon} of an earlier test still runs in the VM"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("eci-image-node")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let logs = dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(logs.join(name)).expect("log");
        let containerd = start_containerd(None, log("containerd.log"));
        let mut node = Node {
            daemons: vec![containerd],
            share: PathBuf::from(format!("/tmp/eci-image-share-{}", std::process::id())),
            share_source: PathBuf::from(format!("/run/eci-image-share-{}", std::process::id())),
            dir,
        };
        std::fs::create_dir_all(&node.share).expect("share");
        std::fs::create_dir_all(&node.share_source).expect("share source");
        let bind = Command::new("mount")
            .arg("--bind")
            .arg(&node.share_source)
            .arg(&node.share)
            .status()
            .expect("mount --bind");
        assert!(bind.success(), "bind the share");
        std::fs::write(node.dir.path().join("daemon.json"), "{}").expect("daemon.json");
        // `runc` (the default, the DaemonSet's pod's) is the real runc;
        // `eci` is the file the init container installs.
        let dockerd = Command::new("dockerd")
            .arg("--config-file")
            .arg(node.dir.path().join("daemon.json"))
            .arg(format!("--host=unix://{DOCKER_SOCKET}"))
            .args([
                "--containerd=/run/containerd/containerd.sock",
                "--data-root=/var/lib/docker",
                "--storage-driver=overlay2",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--exec-root=/run/docker",
            ])
            .arg("--pidfile")
            .arg(node.dir.path().join("docker.pid"))
            .arg("--add-runtime")
            .arg(format!("eci={}", node_bin.join("eci-runc").display()))
            .stdout(Stdio::null())
            .stderr(log("dockerd.log"))
            .spawn()
            .expect("dockerd");
        node.daemons.push(dockerd);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start:\n{}",
                std::fs::read_to_string(node.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        node
    }
}

/// A container of the attack image, with the share bound at /share,
/// connects to the engine's socket there; `runtime_flags` pick the runtime.
/// Returns what it printed and its id.
fn attack(share: &Path, runtime_flags: &[&str], name: &str) -> (String, String) {
    let bind = format!("{}:/share", share.display());
    let mut args = vec!["run", "--name", name, "--network=none"];
    args.extend(runtime_flags);
    args.extend([
        "-v",
        &bind,
        ATTACK_IMAGE,
        "sh",
        "-c",
        "cat /proc/self/uid_map; eci-test-client stream /share/engine.sock",
    ]);
    let out = docker(&args);
    let id = docker(&["inspect", "--format", "{{.Id}}", name]);
    let _ = docker(&["rm", "-f", name]);
    (
        text(&out),
        String::from_utf8_lossy(&id.stdout).trim().to_owned(),
    )
}

#[test]
fn the_daemonsets_image_installs_eci_runc_and_its_agent_denies_eci_containers_the_engine() {
    let name = "image::the_daemonsets_image_installs_eci_runc_and_its_agent_denies_eci_containers_the_engine";
    if !bpf_lsm_or_skip(name) || !engine_or_skip(name) {
        return;
    }
    let archive = archive();
    let ds: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml"))
            .expect("daemonset.yaml"),
    )
    .expect("daemonset.yaml parses");
    let pod = &ds["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    let agent = &pod["containers"][0];
    let image = agent["image"].as_str().expect("the agent's image");

    // The node's /usr/local/bin and /etc/eci are the VM's read-only root
    // here: directories of the test stand in for them.
    let stand_ins = tempfile::Builder::new()
        .prefix("eci-image-stand-ins")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let node_bin = stand_ins.path().join("usr-local-bin");
    let policy_dir = stand_ins.path().join("etc-eci");
    std::fs::create_dir_all(&node_bin).expect("node bin");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    let substitute = BTreeMap::from([
        ("/usr/local/bin", node_bin.clone()),
        ("/etc/eci", policy_dir.clone()),
    ]);
    println!(
        "image: the node's /usr/local/bin is {} and its /etc/eci is {} (the VM's are read-only)",
        node_bin.display(),
        policy_dir.display()
    );

    let node = Node::start(&node_bin);
    // The policy: built-in defaults (sockets, protected parents) but for
    // the one shareable directory the attack binds.
    std::fs::write(
        policy_dir.join("admin-settings.json"),
        serde_json::json!({ "eci": { "shareableHostPaths": [node.share] } }).to_string(),
    )
    .expect("policy");

    // 1. The archive loads as the image the DaemonSet names, whose command
    // is the agent's; containerd imports it as kubelet will look it up.
    let loaded = docker_ok(&["load", "-i", &archive.display().to_string()]);
    println!("{loaded}");
    let config = docker_ok(&["image", "inspect", "--format", "{{json .Config}}", image]);
    let config: serde_json::Value = serde_json::from_str(&config).expect("image config");
    let mut command: Vec<String> =
        serde_json::from_value(config["Entrypoint"].clone()).expect("the image's entrypoint");
    command.extend(
        serde_json::from_value::<Vec<String>>(config["Cmd"].clone()).expect("the image's command"),
    );
    assert_eq!(command, strings(&agent["command"]), "the image's command");
    let imported = Command::new("ctr")
        .args(["-n", "k8s.io", "images", "import"])
        .arg(&archive)
        .output()
        .expect("ctr images import");
    assert!(imported.status.success(), "ctr import: {}", text(&imported));
    let listed = Command::new("ctr")
        .args(["-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .expect("ctr images ls");
    assert!(
        text(&listed)
            .lines()
            .any(|l| l == format!("docker.io/{image}")),
        "containerd does not hold {image}: {}",
        text(&listed)
    );

    // 2. The init container installs eci-runc on the node (twice: the
    // second replaces the first, as a DaemonSet update does).
    let init_flags = run_flags(pod, init, &substitute);
    for round in 0..2 {
        let out = run_container(image, init, &init_flags, false);
        assert!(
            out.status.success(),
            "init container ({round}): {}",
            text(&out)
        );
    }
    let installed = node_bin.join("eci-runc");
    let meta = std::fs::metadata(&installed).expect("the installed eci-runc");
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&installed).expect("installed eci-runc"),
        std::fs::read(workspace_bin("eci-runc")).expect("built eci-runc"),
        "the image's eci-runc is not the one built (an old archive?)"
    );
    let names: Vec<String> = std::fs::read_dir(&node_bin)
        .expect("node bin")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names, ["eci-runc"], "left behind in the node's bin");

    // 3. The agent's container, as the DaemonSet runs it, until its
    // readiness probe passes.
    let agent_flags = run_flags(pod, agent, &substitute);
    println!(
        "image: the agent's container: docker run {}",
        agent_flags.join(" ")
    );
    let started = run_container(image, agent, &agent_flags, true);
    assert!(
        started.status.success(),
        "the agent's container: {}",
        text(&started)
    );
    let probe = strings(&agent["readinessProbe"]["exec"]["command"]);
    let mut exec = vec!["exec", AGENT_CONTAINER];
    exec.extend(probe.iter().map(String::as_str));
    let deadline = Instant::now() + Duration::from_secs(180);
    let ready_at = loop {
        let out = docker(&exec);
        if out.status.success() {
            break text(&out);
        }
        let running = docker_ok(&["inspect", "--format", "{{.State.Running}}", AGENT_CONTAINER]);
        assert!(
            running == "true" && Instant::now() < deadline,
            "the agent's container is not ready (running: {running}); probe: {}\nits log:\n{}",
            text(&out),
            text(&docker(&["logs", AGENT_CONTAINER]))
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    println!("image: readiness probe passed:\n{ready_at}");

    // 4. The attack: the engine's socket, hard-linked into the shareable
    // directory (world-writable: only the kernel rule can refuse it).
    std::fs::set_permissions(DOCKER_SOCKET, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    std::fs::hard_link(DOCKER_SOCKET, node.share_source.join("engine.sock")).expect("hard link");
    let rootfs = image_rootfs(node.dir.path());
    let import = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker --host unix://{DOCKER_SOCKET} import -c 'CMD [\"/bin/sh\"]' - {ATTACK_IMAGE}",
            rootfs.display()
        ))
        .output()
        .expect("import");
    assert!(import.status.success(), "import: {}", text(&import));

    // With plain runc (outside the protected parents): it works.
    let (plain, _) = attack(
        &node.share,
        &["--runtime=runc", "--cgroup-parent=/eci-baseline"],
        "eci-image-plain",
    );
    assert!(
        plain
            .lines()
            .any(|l| l.split_whitespace().eq(["0", "0", "4294967295"]))
            && plain.lines().any(|l| l == "ok"),
        "plain runc: the baseline attack must work (VM root reaching the engine): {plain}"
    );
    // With the eci-runc the init container installed: its own user
    // namespace, and the kernel refuses the connect.
    let (eci, id) = attack(&node.share, &["--runtime=eci"], "eci-image-eci");
    assert!(eci.contains("65536"), "no user namespace of its own: {eci}");
    assert!(
        eci.contains("denied: Operation not permitted"),
        "the eci container reached the engine: {eci}"
    );
    let audit = Path::new("/var/log/eci/audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    let cgroup = format!("/docker/{id}");
    loop {
        let log = std::fs::read_to_string(audit).unwrap_or_default();
        let denied = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| {
                l["hook"] == "unix_stream_connect"
                    && l["verdict"] == "deny"
                    && l["cgroup"].as_str() == Some(&cgroup)
            });
        if denied {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no denial of {cgroup} in the agent's audit log {}:\n{log}",
            audit.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // 5. The agent's container stops; the rules stay pinned: the VM's
    // eci-agent reads them (exit 3: no agent to answer), still enforcing,
    // the engine's socket still protected, the denial still counted.
    docker_ok(&["stop", "-t", "30", AGENT_CONTAINER]);
    let status = Command::new(workspace_bin("eci-agent"))
        .args(["status", "--json"])
        .output()
        .expect("eci-agent status");
    assert_eq!(status.status.code(), Some(3), "{}", text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let socket = std::fs::metadata(DOCKER_SOCKET).expect("the engine's socket");
    let dev = format!(
        "{}:{}",
        libc::major(socket.dev()),
        libc::minor(socket.dev())
    );
    assert!(
        status["agent"]["running"] == false
            && status["enforcing"] == true
            && status["protected_sockets"].as_array().is_some_and(|s| s
                .iter()
                .any(|s| s["ino"] == socket.ino() && s["dev"] == dev))
            && status["denials"]["unix_stream_connect"]
                .as_u64()
                .is_some_and(|n| n >= 1),
        "the rules did not stay pinned when the agent's container stopped: {status:#}"
    );
}
