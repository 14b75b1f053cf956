//! The Docker Engine the engine tests talk to, one type with two ways to get
//! one:
//!
//! - the **machine's** engine ([`Engine::machine`], the host: the running
//!   dockerd that `cargo xtask docker-up` started, Docker 20.10 here): eci-runc
//!   is registered as runtimes of this test process in
//!   `/etc/docker/daemon.json` (dockerd reloads it on SIGHUP), and the agent
//!   runs in its test-only unenforced mode (registration is real, kernel
//!   enforcement is proven in the VM);
//! - a **private** engine in the test VM ([`start_engine`]).
//!
//! Suites that share one engine per test process (`docker::`) get it from
//! [`shared_engine`]: the private one with the real, enforcing agent in the
//! VM, the machine's elsewhere.
//!
//! The private engine: containerd and dockerd
//! with data on tmpfs (vfs driver, no network set-up, no registry), eci-runc
//! registered as the runtime `eci` and standing in for `runc` (first on the
//! engine's PATH, as `eci-agent install` puts it), the real runc registered
//! as `runc-real` (what an administrator's runtime that bypasses eci-runc
//! looks like), a writable copy of runc registered as `runc-writable` (and,
//! under eci-runc, as `eci-writable-runc`), eci-runc with no agent to ask as
//! `eci-noagent`, and a local image holding busybox and eci-test-client.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{TestAgent, agent_bin, bpf_lsm_or_skip, workspace_bin};

pub const IMAGE: &str = "eci-fullstack:latest";

/// A busybox image with every applet, a user 1000 with a home of its own
/// and a world-writable /tmp: on the machine's engine `cargo xtask
/// docker-up` imports it, a shared private engine imports its own.
pub const BUSYBOX_IMAGE: &str = "eci-test-busybox:latest";

pub struct Engine {
    daemons: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// The agent eci-runc asks for the policy in force, and its policy file.
    agent_socket: PathBuf,
    agent_policy: PathBuf,
    /// The agent's audit log.
    audit_log: PathBuf,
    /// The docker CLI's `--host`; `None`: the machine's engine (its default).
    host: Option<String>,
    /// eci-runc's runtime name, and that of eci-runc with no agent to ask.
    runtime: String,
    runtime_no_agent: String,
    /// eci-runc's private directories and the /proc views (which the agent
    /// re-renders): where they are, for tests that look for leftovers.
    run_dir: PathBuf,
    views_dir: PathBuf,
    /// The agent of an engine that owns one (the VM's shared engine).
    agent: Option<TestAgent>,
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
    engine.docker_command().args(args).output().expect("docker")
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
    copy_libraries(&client, &root);
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
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
    start_private(dir, agent, &Private::default())
}

/// How a private engine differs from [`start_engine`]'s.
#[derive(Default)]
struct Private {
    /// dockerd's storage driver; `vfs` when `None`.
    storage_driver: Option<&'static str>,
    /// eci-runc's `ECI_VIEWS_DIR` (the agent's `--views-dir`) and
    /// `ECI_RUNC_RUN_DIR`, below the engine's directory; eci-runc's
    /// defaults when false.
    own_dirs: bool,
    /// dockerd's `--data-root`; `/var/lib/docker` when `None`.
    data_root: Option<String>,
}

fn start_private(dir: tempfile::TempDir, agent: &TestAgent, private: &Private) -> Engine {
    let agent_socket = &agent.control_socket;
    // runc from a writable file (the engine's directory is on tmpfs in the
    // VM): what stops a write to this one is runc's doing, not the VM's
    // read-only root.
    let writable_runc = dir.path().join("runc-writable");
    std::fs::copy(runc_binary(), &writable_runc).expect("copy runc");
    let own_dirs = if private.own_dirs {
        format!(
            " ECI_RUNC_RUN_DIR={} ECI_VIEWS_DIR={}",
            dir.path().join("run").display(),
            dir.path().join("views").display()
        )
    } else {
        String::new()
    };
    // eci-runc as the runtime `eci`, as `eci-writable-runc` running the
    // writable copy of runc, and as `eci-noagent` with no agent to ask.
    let eci_runtime = |name: &str, socket: &Path, extra_env: &str| {
        let wrapper = dir.path().join(name);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport ECI_AGENT_SOCKET={} ECI_STATE_DIR={}{own_dirs}{extra_env}\nexec {} \"$@\"\n",
                socket.display(),
                dir.path().join("state").display(),
                workspace_bin("eci-runc").display()
            ),
        )
        .expect("wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        wrapper
    };
    let runtime = eci_runtime("eci-runc", agent_socket, "");
    let runtime_writable_runc = eci_runtime(
        "eci-runc-writable-runc",
        agent_socket,
        &format!(" ECI_RUNC_BINARY={}", writable_runc.display()),
    );
    let runtime_no_agent = eci_runtime(
        "eci-runc-noagent",
        &dir.path().join("nowhere/agent.sock"),
        "",
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
    let containerd = start_containerd(Some(&path), log("containerd.log"));
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
            private.data_root.as_deref().unwrap_or("/var/lib/docker"),
        ])
        .arg(format!(
            "--storage-driver={}",
            private.storage_driver.unwrap_or("vfs")
        ))
        .args([
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
        .arg(format!("eci-noagent={}", runtime_no_agent.display()))
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
    let (run_dir, views_dir) = if private.own_dirs {
        (dir.path().join("run"), dir.path().join("views"))
    } else {
        (
            PathBuf::from("/run/eci-runc"),
            PathBuf::from(eci_views::DEFAULT_ROOT),
        )
    };
    let host = format!("unix://{}", dir.path().join("docker.sock").display());
    let engine = Engine {
        daemons: vec![containerd, dockerd],
        dir,
        agent_socket: agent_socket.clone(),
        agent_policy: agent.dir.path().join("admin-settings.json"),
        audit_log: agent.audit_log.clone(),
        host: Some(host),
        runtime: "eci".into(),
        runtime_no_agent: "eci-noagent".into(),
        run_dir,
        views_dir,
        agent: None,
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
    engine.import(&root, IMAGE);
    engine
}

/// containerd at the machine's default root and state (its socket
/// `/run/containerd/containerd.sock`), its log in `log`, with `path` as its
/// PATH (else ours); returns once the socket takes connections.
pub fn start_containerd(path: Option<&str>, log: std::fs::File) -> Child {
    let mut cmd = Command::new("containerd");
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let containerd = cmd
        .args([
            "--root",
            "/var/lib/containerd",
            "--state",
            "/run/containerd",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("containerd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect("/run/containerd/containerd.sock").is_err() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    containerd
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

/// A fresh ext4 file system of `size` in the file `image`, on a loop device,
/// mounted at `point` (made if missing).
pub fn mount_ext4(image: &Path, size: &str, point: &Path) {
    let script = format!(
        "modprobe loop; modprobe ext4; truncate -s {size} {image} && mkfs.ext4 -q -F {image} && dev=$(losetup -f --show {image}) && mkdir -p {point} && mount -t ext4 \"$dev\" {point}",
        image = image.display(),
        point = point.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    assert!(out.status.success(), "{script}: {}", text(&out));
}

/// Where a test engine keeps its files (its socket, the shareable
/// directory containers bind): `/tmp`, unless that is a tmpfs this kernel
/// cannot ID-map (before 6.3; the VM's /tmp is one), then an ext4 file
/// system mounted once at `/tmp/eci-idmappable`: eci-runc refuses a shared
/// directory whose files its containers could not own.
pub fn idmappable_tmp() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = PathBuf::from("/tmp");
        let on_tmpfs = nix::sys::statfs::statfs(&tmp)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !on_tmpfs || crate::kernel_version() >= (6, 3) {
            return tmp;
        }
        let point = tmp.join("eci-idmappable");
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(&point)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            mount_ext4(&tmp.join("eci-idmappable.ext4"), "2G", &point);
        }
        point
    })
    .clone()
}

/// [`protected_engine`] with the engine's `--data-root` at `data_root`.
pub fn protected_engine_at(prefix: &str, data_root: &str) -> (TestAgent, Engine) {
    protected_engine_with(prefix, data_root, None)
}

/// [`protected_engine_at`] with the overlay2 storage driver, as on a real
/// host (no copy of the image per container).
pub fn protected_overlay2_engine_at(prefix: &str, data_root: &str) -> (TestAgent, Engine) {
    protected_engine_with(prefix, data_root, Some("overlay2"))
}

fn protected_engine_with(
    prefix: &str,
    data_root: &str,
    storage_driver: Option<&'static str>,
) -> (TestAgent, Engine) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(idmappable_tmp())
        .expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let agent = TestAgent::start(&["--protect-socket", &socket.display().to_string()]);
    let private = Private {
        data_root: Some(data_root.to_owned()),
        storage_driver,
        ..Private::default()
    };
    let engine = start_private(dir, &agent, &private);
    // The agent protects a socket within a second of its appearing.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    (agent, engine)
}

impl Engine {
    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        match &self.host {
            Some(_) => self.dir.path().join("docker.sock"),
            None => PathBuf::from(MACHINE_SOCKET),
        }
    }

    /// Whether this is the machine's engine (else a private one in the VM).
    pub fn is_machine(&self) -> bool {
        self.host.is_none()
    }

    /// The docker CLI, talking to this engine.
    pub fn docker_command(&self) -> Command {
        let mut cmd = Command::new("docker");
        if let Some(host) = &self.host {
            cmd.arg("--host").arg(host);
        }
        cmd
    }

    /// `docker <args>` against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        docker(self, args)
    }

    /// The runtime that is eci-runc asking this engine's agent.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// The runtime that is eci-runc with no agent to ask.
    pub fn runtime_no_agent(&self) -> &str {
        &self.runtime_no_agent
    }

    /// `docker run` flags for plain runc in a cgroup no rule protects: the
    /// baseline that shows what a container gets without eci. On the
    /// machine that is Docker's own `runc`; in the VM eci-runc stands in
    /// for `runc`, so it is the real runc registered as `runc-real`, outside
    /// every protected parent (below one the kernel refuses it to run).
    pub fn plain_runc_flags(&self) -> Vec<String> {
        if self.is_machine() {
            vec!["--runtime=runc".into()]
        } else {
            vec![
                "--runtime=runc-real".into(),
                "--cgroup-parent=/eci-baseline".into(),
            ]
        }
    }

    /// The agent's control socket, audit log and policy file.
    pub fn agent_socket(&self) -> &Path {
        &self.agent_socket
    }

    pub fn audit_log(&self) -> &Path {
        &self.audit_log
    }

    pub fn policy_file(&self) -> &Path {
        &self.agent_policy
    }

    /// Where the agent serves the proxies of trusted containers.
    pub fn proxy_dir(&self) -> PathBuf {
        self.agent_socket
            .parent()
            .unwrap_or(Path::new("/run/eci"))
            .join("proxy")
    }

    /// eci-runc's state (`ranges.json`), private directories and /proc views.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn views_dir(&self) -> &Path {
        &self.views_dir
    }

    /// A command running eci-runc directly (no engine) as this engine's
    /// runtime does, asking the agent at `agent_socket`.
    pub fn eci_runc(&self, agent_socket: &Path) -> Command {
        let mut cmd = Command::new(workspace_bin("eci-runc"));
        cmd.env("ECI_AGENT_SOCKET", agent_socket)
            .env("ECI_STATE_DIR", self.state_dir())
            .env("ECI_RUNC_RUN_DIR", &self.run_dir)
            .env("ECI_VIEWS_DIR", &self.views_dir);
        cmd
    }

    /// `tar -C root -c . | docker import` as `name`, with `sh` as its command.
    pub fn import(&self, root: &Path, name: &str) {
        let host = match &self.host {
            Some(host) => format!("--host {host} "),
            None => String::new(),
        };
        let import = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C {} -c . | docker {host}import -c 'CMD [\"/bin/sh\"]' - {name}",
                root.display(),
            ))
            .output()
            .expect("import");
        assert!(import.status.success(), "import: {}", text(&import));
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
    /// (the shareable directory stays shareable, beside those the policy
    /// names or, naming none, the default ones), and reload it.
    pub fn write_policy(&self, policy: serde_json::Value) {
        self.write_policy_file(policy);
        eci_control::Client::new(&self.agent_socket)
            .call_ok(&eci_control::Request::Reload)
            .expect("reload the agent's policy");
    }

    /// The policy file as [`Engine::write_policy`] writes it, not reloaded.
    fn write_policy_file(&self, mut policy: serde_json::Value) {
        // What the policy names, else the built-in default (as the agent
        // reads a file without the key), and the test's own directory.
        let mut shareable = policy["eci"]["shareableHostPaths"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| {
                eci_policy::DEFAULT_SHAREABLE_HOST_PATHS
                    .iter()
                    .map(|p| serde_json::json!(p))
                    .collect()
            });
        shareable.push(serde_json::json!(self.share()));
        policy["eci"]["shareableHostPaths"] = serde_json::Value::Array(shareable);
        std::fs::write(&self.agent_policy, policy.to_string()).expect("policy");
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

/// The machine's engine's API socket (the docker CLI's default).
const MACHINE_SOCKET: &str = "/var/run/docker.sock";

/// Runtime names and fixture directories of test processes on the
/// machine's engine: test runs in other trees (a CI clone, say) may share
/// the machine's dockerd at the same time, so each carries its pid.
const RUNTIME_PREFIX: &str = "eci-test-";
const FIXTURE_PREFIX: &str = "eci-runc-test-";

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

impl Engine {
    /// The machine's engine (the running dockerd), with eci-runc registered
    /// in `/etc/docker/daemon.json` as runtimes of this test process, and an
    /// agent in its test-only unenforced mode that ends with this process.
    /// `None` when `docker info` fails and this run does not require Docker
    /// (`ECI_REQUIRE_DOCKER`).
    pub fn machine() -> Option<Engine> {
        if !Command::new("docker")
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::env::var("ECI_REQUIRE_DOCKER").is_err(),
                "Docker is required in this run (ECI_REQUIRE_DOCKER) but `docker info` fails; `cargo xtask docker-up` starts it"
            );
            return None;
        }
        forget_dead_test_runs();
        let pid = std::process::id();
        // No random suffix: the agent's proxy sockets go below it
        // (`agent/proxy/<container id>.sock`), within SUN_LEN.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{FIXTURE_PREFIX}{pid}"))
            .rand_bytes(0)
            .tempdir_in("/tmp")
            .expect("fixture dir");
        std::fs::create_dir_all(dir.path().join("share")).expect("share");
        let socket = dir.path().join("agent/agent.sock");
        let wrapper = |name: &str, socket: &Path| {
            let path = dir.path().join(name);
            let script = format!(
                "#!/bin/sh\nexport ECI_AGENT_SOCKET={} ECI_STATE_DIR={} ECI_RUNC_RUN_DIR={} ECI_VIEWS_DIR={}\nexec {} \"$@\"\n",
                socket.display(),
                dir.path().join("state").display(),
                dir.path().join("run").display(),
                dir.path().join("views").display(),
                workspace_bin("eci-runc").display()
            );
            std::fs::write(&path, script).expect("wrapper");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        let with_agent = wrapper("eci-runc", &socket);
        let without = wrapper("eci-runc-noagent", &dir.path().join("nowhere/agent.sock"));
        let engine = Engine {
            daemons: Vec::new(),
            agent_socket: socket.clone(),
            agent_policy: dir.path().join("admin-settings.json"),
            audit_log: dir.path().join("audit.jsonl"),
            host: None,
            runtime: format!("{RUNTIME_PREFIX}{pid}"),
            runtime_no_agent: format!("{RUNTIME_PREFIX}noagent-{pid}"),
            run_dir: dir.path().join("run"),
            views_dir: dir.path().join("views"),
            agent: None,
            dir,
        };
        // In force before the agent starts (without a file the built-in
        // defaults are locked, which refuses the unenforced mode).
        engine.write_policy_file(serde_json::json!({}));
        let mut cmd = Command::new(agent_bin());
        cmd.args([
            "run",
            "--unenforced-for-testing",
            "--no-default-sockets",
            "--control-socket",
        ])
        .arg(&socket)
        .arg("--audit-log")
        .arg(&engine.audit_log)
        .arg("--policy")
        .arg(&engine.agent_policy)
        .arg("--views-dir")
        .arg(&engine.views_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe. The parent-death signal follows
        // the spawning *thread*, so a thread that lives as long as this
        // process spawns the agent: the agent ends with the test process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let (started, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = cmd.spawn();
            let _ = started.send(child.is_ok());
            loop {
                std::thread::park();
            }
        });
        assert!(ready.recv().unwrap_or(false), "start the agent");
        let deadline = Instant::now() + Duration::from_secs(30);
        while eci_control::Client::new(&socket)
            .call(&eci_control::Request::Ping)
            .is_err()
        {
            assert!(Instant::now() < deadline, "the agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        register_runtimes(&[
            (engine.runtime(), &with_agent),
            (engine.runtime_no_agent(), &without),
        ]);
        Some(engine)
    }
}

/// Remove what test processes that are gone left: their fixture directory
/// (`/tmp/eci-runc-test-<pid>`: state, wrappers, bundles); their runtimes in
/// daemon.json go when this
/// process registers its own.
fn forget_dead_test_runs() {
    for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(FIXTURE_PREFIX))
            .map(str::to_owned)
        else {
            continue;
        };
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(path.to_string_lossy().as_ref());
        if !alive(&pid) && !mounted {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Merge the runtimes into /etc/docker/daemon.json (dropping those of dead
/// test processes) and make dockerd reload.
fn register_runtimes(runtimes: &[(&str, &PathBuf)]) {
    let path = Path::new("/etc/docker/daemon.json");
    let mut config: serde_json::Value = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(known) = config["runtimes"].as_object_mut() {
        known.retain(|name, _| {
            let pid = name
                .strip_prefix(RUNTIME_PREFIX)
                .map(|rest| rest.trim_start_matches("noagent-"));
            // Unsuffixed names are from older test versions: drop them too.
            match pid {
                Some(pid) if pid.chars().all(|c| c.is_ascii_digit()) => alive(pid),
                Some(_) => false,
                None => name != "eci-test",
            }
        });
    }
    for (name, bin) in runtimes {
        config["runtimes"][*name] = serde_json::json!({ "path": bin.display().to_string() });
    }
    std::fs::create_dir_all("/etc/docker").expect("/etc/docker");
    std::fs::write(path, serde_json::to_string_pretty(&config).expect("json"))
        .expect("daemon.json");
    let pid = String::from_utf8_lossy(
        &Command::new("pidof")
            .arg("dockerd")
            .output()
            .expect("pidof")
            .stdout,
    )
    .trim()
    .to_owned();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success(),
        "SIGHUP dockerd"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let known = text(
            &Command::new("docker")
                .args(["info", "--format", "{{json .Runtimes}}"])
                .output()
                .expect("docker info"),
        );
        if runtimes.iter().all(|(name, _)| known.contains(name)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dockerd did not pick up the runtimes: {known}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A private engine of the tests' own in the VM that suites share (one per
/// test process): overlay2 as on a real host, eci-runc's directories and
/// the /proc views below its directory, the real agent (enforcing,
/// protecting the engine's socket, re-rendering those views), and
/// [`BUSYBOX_IMAGE`] beside [`IMAGE`].
fn start_shared_private() -> Engine {
    let dir = tempfile::Builder::new()
        .prefix("eci-shared-engine")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let agent = TestAgent::start(&[
        "--protect-socket",
        &dir.path().join("docker.sock").display().to_string(),
        "--views-dir",
        &dir.path().join("views").display().to_string(),
    ]);
    let mut engine = start_private(
        dir,
        &agent,
        &Private {
            storage_driver: Some("overlay2"),
            own_dirs: true,
            data_root: None,
        },
    );
    let root = busybox_rootfs(engine.dir.path());
    engine.import(&root, BUSYBOX_IMAGE);
    engine.agent = Some(agent);
    engine
}

/// The engine of the suites that share one per test process: in the test
/// VM ([`start_shared_private`]; dockerd missing there is a failure), the
/// machine's engine elsewhere ([`Engine::machine`]). `None`, with a printed
/// `SKIP: <test>: <reason>`, where there is none to have.
pub fn shared_engine(test: &str) -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    let in_vm = std::env::var("ECI_IN_VM").is_ok();
    if in_vm && (!bpf_lsm_or_skip(test) || !engine_or_skip(test)) {
        return None;
    }
    let engine = ENGINE.get_or_init(|| {
        if in_vm {
            Some(start_shared_private())
        } else {
            Engine::machine()
        }
    });
    if engine.is_none() {
        println!("SKIP: {test}: Docker is not running here (`cargo xtask docker-up` starts it)");
    }
    engine.as_ref()
}

/// The docker CLI of this machine (or VM), for containers given the
/// engine's API.
pub fn docker_cli() -> PathBuf {
    ["/usr/local/bin/docker", "/usr/bin/docker"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("a docker CLI in /usr/local/bin or /usr/bin")
}

/// [`BUSYBOX_IMAGE`]'s files, as `cargo xtask docker-up` makes them, plus
/// the libraries of [`docker_cli`] (a dynamically linked one in the VM).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-rootfs");
    for d in [
        "bin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    let applets = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
    std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000)).expect("chown");
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod tmp");
    copy_libraries(&docker_cli(), &root);
    root
}

/// The shared libraries `binary` needs (as `ldd` lists them), copied into
/// the image root `root` at their paths.
fn copy_libraries(binary: &Path, root: &Path) {
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("lib dir")).expect("lib dir");
        std::fs::copy(lib, &dest).expect("copy lib");
    }
}

/// A file system the engine's data may live on that the kernel can ID-map
/// (ext4 on a loop device), mounted at `point` for as long as it lives:
/// the tests' usual engine keeps its data on tmpfs, whose container root
/// file systems eci-runc binds as they are.
pub struct Ext4 {
    point: std::path::PathBuf,
}

impl Ext4 {
    pub fn mount(point: &str) -> Self {
        Self::mount_sized(point, "512M")
    }

    pub fn mount_sized(point: &str, size: &str) -> Self {
        let image = format!(
            "/tmp/{}.ext4",
            point.trim_start_matches('/').replace('/', "-")
        );
        mount_ext4(Path::new(&image), size, Path::new(point));
        Self {
            point: point.into(),
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.point)
            .status();
    }
}
