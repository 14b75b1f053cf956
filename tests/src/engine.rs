//! A Docker Engine of the tests' own in the test VM: containerd and dockerd
//! with data on tmpfs (vfs driver, no network set-up, no registry), eci-runc
//! registered as the runtime `eci` and standing in for `runc` (first on the
//! engine's PATH, as `eci-agent install` puts it), the real runc registered
//! as `runc-real` (what an administrator's runtime that bypasses eci-runc
//! looks like), a writable copy of runc registered as `runc-writable` (and,
//! under eci-runc, as `eci-writable-runc`), and a local image holding
//! busybox and eci-test-client.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{TestAgent, workspace_bin};

pub const IMAGE: &str = "eci-fullstack:latest";

pub struct Engine {
    daemons: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// The agent eci-runc asks for the policy in force, and its policy file.
    agent_socket: PathBuf,
    agent_policy: PathBuf,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
    }
}

pub fn docker(engine: &Engine, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("--host")
        .arg(format!(
            "unix://{}",
            engine.dir.path().join("docker.sock").display()
        ))
        .args(args)
        .output()
        .expect("docker")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A busybox image that also holds eci-test-client and the libraries it needs.
pub fn image_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "share", "mnt"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    for applet in [
        "sh", "cat", "mount", "umount", "nsenter", "ls", "echo", "true", "head", "tail", "grep",
        "mkdir", "test", "kill", "basename", "cp", "sleep",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let client = workspace_bin("eci-test-client");
    std::fs::copy(&client, root.join("bin/eci-test-client")).expect("client");
    let ldd = Command::new("ldd").arg(&client).output().expect("ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("lib dir")).expect("lib dir");
        std::fs::copy(lib, &dest).expect("copy lib");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    // Device nodes of the VM, as an image can carry them (not in /dev): its
    // kernel log and its loop devices (the escape suite's "disk").
    let nodes = root.join("vmnodes");
    std::fs::create_dir_all(&nodes).expect("vmnodes");
    let mut made = vec![("kmsg".to_owned(), "c", 1, 11)];
    made.extend((0..8).map(|n| (format!("loop{n}"), "b", 7, n)));
    for (name, kind, major, minor) in made {
        let status = Command::new("mknod")
            .args(["-m", "0666"])
            .arg(nodes.join(&name))
            .args([kind, &major.to_string(), &minor.to_string()])
            .status()
            .expect("mknod");
        assert!(status.success(), "mknod vmnodes/{name}");
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");
    root
}

/// The runc eci-runc runs by default, and dockerd's `runc`.
pub fn runc_binary() -> PathBuf {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("runc is not installed in /usr/sbin or /usr/bin")
}

pub fn start_engine(dir: tempfile::TempDir, agent: &TestAgent) -> Engine {
    start_engine_at(dir, agent, "/var/lib/docker")
}

/// [`start_engine`] with the engine's `--data-root` at `data_root`.
pub fn start_engine_at(dir: tempfile::TempDir, agent: &TestAgent, data_root: &str) -> Engine {
    let agent_socket = &agent.control_socket;
    // runc from a writable file (the engine's directory is on tmpfs in the
    // VM): what stops a write to this one is runc's doing, not the VM's
    // read-only root.
    let writable_runc = dir.path().join("runc-writable");
    std::fs::copy(runc_binary(), &writable_runc).expect("copy runc");
    // eci-runc as the runtime `eci`, and as `eci-writable-runc` running the
    // writable copy of runc.
    let eci_runtime = |name: &str, extra_env: &str| {
        let wrapper = dir.path().join(name);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport ECI_AGENT_SOCKET={} ECI_STATE_DIR={}{extra_env}\nexec {} \"$@\"\n",
                agent_socket.display(),
                dir.path().join("state").display(),
                workspace_bin("eci-runc").display()
            ),
        )
        .expect("wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        wrapper
    };
    let runtime = eci_runtime("eci-runc", "");
    let runtime_writable_runc = eci_runtime(
        "eci-runc-writable-runc",
        &format!(" ECI_RUNC_BINARY={}", writable_runc.display()),
    );
    // eci-runc standing in for `runc` on the engine's PATH (the shim and
    // BuildKit run `runc` by name).
    let stand_in_dir = dir.path().join("stand-in");
    std::fs::create_dir_all(&stand_in_dir).expect("stand-in dir");
    std::fs::copy(&runtime, stand_in_dir.join("runc")).expect("stand-in");
    let path = format!(
        "{}:{}",
        stand_in_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    std::fs::create_dir_all(dir.path().join("share")).expect("share");
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log");
    let containerd = Command::new("containerd")
        .env("PATH", &path)
        .args([
            "--root",
            "/var/lib/containerd",
            "--state",
            "/run/containerd",
        ])
        .stdout(Stdio::null())
        .stderr(log("containerd.log"))
        .spawn()
        .expect("containerd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new("/run/containerd/containerd.sock").exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its own configuration: nothing from the machine's daemon.json.
    std::fs::write(dir.path().join("daemon.json"), "{}").expect("daemon.json");
    let dockerd = Command::new("dockerd")
        .env("PATH", &path)
        .arg("--config-file")
        .arg(dir.path().join("daemon.json"))
        .arg("--host")
        .arg(format!(
            "unix://{}",
            dir.path().join("docker.sock").display()
        ))
        .args([
            "--containerd=/run/containerd/containerd.sock",
            "--data-root",
            data_root,
        ])
        .args([
            "--storage-driver=vfs",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--exec-root",
            "/run/docker",
        ])
        .arg("--pidfile")
        .arg(dir.path().join("docker.pid"))
        .arg("--add-runtime")
        .arg(format!("eci={}", runtime.display()))
        .arg("--add-runtime")
        .arg(format!("runc-real={}", runc_binary().display()))
        .arg("--add-runtime")
        .arg(format!("runc-writable={}", writable_runc.display()))
        .arg("--add-runtime")
        .arg(format!(
            "eci-writable-runc={}",
            runtime_writable_runc.display()
        ))
        .stdout(Stdio::null())
        .stderr(log("dockerd.log"))
        .spawn()
        .expect("dockerd");
    let engine = Engine {
        daemons: vec![containerd, dockerd],
        dir,
        agent_socket: agent_socket.clone(),
        agent_policy: agent.dir.path().join("admin-settings.json"),
    };
    // eci-runc asks the agent for it at each create: in force before the
    // first.
    engine.write_policy(serde_json::json!({}));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !docker(&engine, &["info"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "dockerd did not start:\n{}",
            std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let root = image_rootfs(engine.dir.path());
    let import = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker --host unix://{} import -c 'CMD [\"/bin/sh\"]' - {IMAGE}",
            root.display(),
            engine.dir.path().join("docker.sock").display()
        ))
        .output()
        .expect("import");
    assert!(import.status.success(), "import: {}", text(&import));
    engine
}

/// Whether this test can start an engine here: in the test VM it must
/// (dockerd missing there is a failure); elsewhere it says why it skips.
pub fn engine_or_skip(test: &str) -> bool {
    if Command::new("dockerd").arg("--version").output().is_err() {
        assert!(
            std::env::var("ECI_IN_VM").is_err(),
            "dockerd is missing in the VM (cargo xtask setup installs docker.io)"
        );
        println!("SKIP: {test}: dockerd is not installed here");
        return false;
    }
    if std::env::var("ECI_IN_VM").is_err() {
        println!(
            "SKIP: {test}: runs in the test VM only (it starts its own dockerd and containerd)"
        );
        return false;
    }
    true
}

/// The agent (default parents: /docker ...) protecting the socket of an
/// engine of the test's own, and that engine. The socket is world-writable,
/// so file permissions never answer first (on kernels where tmpfs cannot be
/// ID-mapped the container's root is "other"): every refusal of it is the
/// kernel rule's.
pub fn protected_engine(prefix: &str) -> (TestAgent, Engine) {
    protected_engine_at(prefix, "/var/lib/docker")
}

/// [`protected_engine`] with the engine's `--data-root` at `data_root`.
pub fn protected_engine_at(prefix: &str, data_root: &str) -> (TestAgent, Engine) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let agent = TestAgent::start(&["--protect-socket", &socket.display().to_string()]);
    let engine = start_engine_at(dir, &agent, data_root);
    // The agent protects a socket within a second of its appearing.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    (agent, engine)
}

impl Engine {
    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// The copy of runc registered as the runtimes `runc-writable` and
    /// `eci-writable-runc`.
    pub fn writable_runc(&self) -> PathBuf {
        self.dir.path().join("runc-writable")
    }

    /// The policy's shareable directory, which containers may bind.
    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    /// Replace the agent's policy, which eci-runc asks for at each create
    /// (the shareable directory stays shareable), and reload it.
    pub fn write_policy(&self, mut policy: serde_json::Value) {
        policy["eci"]["shareableHostPaths"] = serde_json::json!([self.share()]);
        std::fs::write(&self.agent_policy, policy.to_string()).expect("policy");
        eci_control::Client::new(&self.agent_socket)
            .call_ok(&eci_control::Request::Reload)
            .expect("reload the agent's policy");
    }

    /// Commit a container of the test image with one file added (a layer
    /// of its own, never started) as `name`; returns the image id.
    pub fn commit_image(&self, name: &str) -> String {
        let created = docker(self, &["create", IMAGE, "true"]);
        assert!(created.status.success(), "{}", text(&created));
        let container = String::from_utf8_lossy(&created.stdout).trim().to_owned();
        let marker = self.dir.path().join("marker");
        std::fs::write(&marker, name).expect("marker");
        let copied = docker(
            self,
            &[
                "cp",
                &marker.display().to_string(),
                &format!("{container}:/marker"),
            ],
        );
        let committed = docker(self, &["commit", &container, name]);
        let _ = docker(self, &["rm", &container]);
        assert!(copied.status.success(), "{}", text(&copied));
        assert!(committed.status.success(), "{}", text(&committed));
        text(&docker(
            self,
            &["image", "inspect", "--format", "{{.Id}}", name],
        ))
        .trim()
        .to_owned()
    }

    /// Bind-mount `source` (a socket, a namespace file) over a new file
    /// `name` in the shareable directory: a VM object smuggled in where a
    /// container may bind. Returns the new path (unmount it when done).
    pub fn smuggle(&self, source: &Path, name: &str) -> PathBuf {
        let target = self.share().join(name);
        std::fs::write(&target, "").expect("bind target");
        let bind = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(&target)
            .status()
            .expect("mount");
        assert!(
            bind.success(),
            "bind {} onto {}",
            source.display(),
            target.display()
        );
        target
    }
}

/// Wait for `hook`'s denial of a task in one of the engine's containers
/// (cgroup /docker/<id>) in the audit log, and return its line.
pub fn wait_container_denial(agent: &TestAgent, hook: &str) -> serde_json::Value {
    agent.wait_audit(|l| {
        l["hook"] == hook
            && l["verdict"] == "deny"
            && l["cgroup"]
                .as_str()
                .is_some_and(|c| c.starts_with("/docker/"))
    })
}
