//! Helpers shared by eci's integration tests: a real agent, real cgroups,
//! real processes. Tests that need BPF-LSM run where the kernel has it (the
//! test VM, or a capable host) and say why when they skip elsewhere.

pub mod cri;
pub mod engine;

use std::{
    io::Write,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use eci_control::{Client, Request, Response};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// A name unique in this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `target/<profile>/<name>`: the workspace's binaries sit next to `deps/`
/// (test binaries) or next to this one (the crate's own binaries).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("binary in target/<profile>");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>/deps has a parent");
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p eci-agent`)",
        bin.display()
    );
    bin
}

pub fn agent_bin() -> PathBuf {
    workspace_bin("eci-agent")
}

/// Whether this run must prove kernel enforcement (the VM sets this).
pub fn lsm_required() -> bool {
    std::env::var("ECI_REQUIRE_LSM").is_ok_and(|v| v == "1")
        || std::env::var("ECI_LSM_EXPECTED").is_ok_and(|v| v == "present")
}

/// True when BPF-LSM is usable here. When it is not and this run does not
/// require it, prints why the calling test skips; when it is required and
/// missing, panics.
pub fn bpf_lsm_or_skip(test: &str) -> bool {
    if std::env::var("ECI_LSM_EXPECTED").is_ok_and(|v| v == "absent") {
        println!(
            "SKIP: {test}: this run is on a kernel without BPF-LSM (ECI_LSM_EXPECTED=absent); it runs in the test VM"
        );
        return false;
    }
    let probe = PROBE.get_or_init(|| {
        let pin_dir = format!("/sys/fs/bpf/{}", unique("eci-probe"));
        let out = Command::new(agent_bin())
            .args(["probe", "--pin-dir", &pin_dir])
            .output()
            .expect("run eci-agent probe");
        let _ = Command::new(agent_bin())
            .args(["unload", "--pin-dir", &pin_dir])
            .output();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    });
    let Err(why) = probe else { return true };
    assert!(
        !lsm_required(),
        "{test}: BPF-LSM is required in this run but the probe failed: {why}"
    );
    let short: String = why.chars().take(140).collect();
    println!(
        "SKIP: {test}: BPF-LSM is not usable on this kernel (`cargo xtask vm-test` runs this in a VM); probe: {short}..."
    );
    false
}

/// A running `eci-agent run` with its own pin dir, control socket and audit
/// log. Stopped (SIGTERM) and unloaded on drop.
pub struct TestAgent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub pin_dir: PathBuf,
    pub control_socket: PathBuf,
    pub audit_log: PathBuf,
    pub stderr_log: PathBuf,
}

impl TestAgent {
    /// Start with `--no-default-sockets` plus the given extra arguments, and
    /// wait until the control socket answers.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_policy(None, extra)
    }

    /// As `start`, with `policy` (admin-settings.json's text) in force from
    /// the start.
    pub fn start_with_policy(policy: Option<&str>, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("eci-agent-test")
            .tempdir_in(tmp_dir())
            .expect("tempdir");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", unique("eci-test")));
        let control_socket = dir.path().join("run/agent.sock");
        let audit_log = dir.path().join("audit.jsonl");
        let stderr_log = dir.path().join("agent.stderr");
        let mut agent = Self {
            child: None,
            dir,
            pin_dir,
            control_socket,
            audit_log,
            stderr_log,
        };
        if let Some(policy) = policy {
            std::fs::write(agent.dir.path().join("admin-settings.json"), policy)
                .expect("write the test's policy");
        }
        agent.spawn(extra);
        agent
    }

    pub fn common_args(&self) -> Vec<String> {
        vec![
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
            "--control-socket".into(),
            self.control_socket.display().to_string(),
            // Isolated from any policy on the machine: built-in defaults
            // unless a test writes this file.
            "--policy".into(),
            self.dir
                .path()
                .join("admin-settings.json")
                .display()
                .to_string(),
        ]
    }

    /// (Re)start the agent process with the same locations.
    pub fn spawn(&mut self, extra: &[&str]) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("agent stderr log");
        let child = Command::new(agent_bin())
            .arg("run")
            .args(self.common_args())
            .args([
                "--audit-log",
                &self.audit_log.display().to_string(),
                "--no-default-sockets",
            ])
            .args(extra)
            .env("ECI_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn eci-agent");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Response::Pong { .. }) =
                Client::new(&self.control_socket).call(&Request::Ping)
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("eci-agent exited early ({status}):\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "eci-agent did not become ready:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.control_socket)
    }

    pub fn protect(&self, cgroup: &TestCgroup) {
        let answer = self.client().call_ok(&Request::Protect {
            cgroup: cgroup.path.clone(),
        });
        assert!(answer.is_ok(), "protect {}: {answer:?}", cgroup.path);
    }

    /// Run an `eci-agent` subcommand against this agent's locations.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args).args(self.common_args());
        cmd.output().expect("run eci-agent")
    }

    /// SIGKILL: no clean-up of any kind.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Events the ring buffer could not take (`status`'s `event_drops`; 0
    /// when the status cannot be read).
    pub fn event_drops(&self) -> u64 {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["event_drops"].as_u64())
            .unwrap_or(0)
    }

    /// Audit lines written so far, parsed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (bounded) until at least `count` audit lines match `pred`, and
    /// return the matching lines (denials reach the log through the ring
    /// buffer and the agent's writer: not at once).
    pub fn wait_audit_count(
        &self,
        count: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines: Vec<_> = self.audit_lines().into_iter().filter(|l| pred(l)).collect();
            if lines.len() >= count || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (bounded) for an audit line matching `pred`.
    pub fn wait_audit(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let first = self.wait_audit_count(1, pred).into_iter().next();
        first.unwrap_or_else(|| {
            panic!(
                "no matching audit line in {}:\n{}\nagent log:\n{}",
                self.audit_log.display(),
                std::fs::read_to_string(&self.audit_log).unwrap_or_default(),
                self.stderr()
            )
        })
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        let _ = Command::new(agent_bin())
            .args(["unload", "--pin-dir", &self.pin_dir.display().to_string()])
            .output();
    }
}

/// Where tests put sockets: a tmpfs in the VM (AF_UNIX on 9p is unreliable).
/// The running kernel's version (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

pub fn tmp_dir() -> PathBuf {
    PathBuf::from(std::env::var("ECI_TEST_TMP").unwrap_or_else(|_| "/tmp".into()))
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split_whitespace().collect();
            (right.starts_with("cgroup2 ") && fields.get(3) == Some(&"/"))
                .then(|| PathBuf::from(fields[4]))
        })
        .next_back()
        .expect("a cgroup2 mount")
}

/// A fresh cgroup2 directory, removed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Path relative to the cgroup2 root.
    pub path: String,
    pub id: u64,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let name = unique(name);
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        let id = std::fs::metadata(&dir).expect("cgroup metadata").ino();
        Self {
            dir,
            path: format!("/{name}"),
            id,
        }
    }

    /// Adopt an existing cgroup directory (removed on drop like the others).
    pub fn at(dir: PathBuf, path: String, id: u64) -> Self {
        Self { dir, path, id }
    }

    /// A command that runs `program` inside this cgroup *as a container
    /// would*: in new uts, ipc, net, mount and pid namespaces (made before it
    /// joins the cgroup, as a runtime does). Arguments added by the caller
    /// go to `program`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = container_namespaces();
        cmd.args([
            "/bin/sh",
            "-c",
            r#"echo 0 > "$1/cgroup.procs" && shift && exec "$@""#,
            "sh",
        ])
        .arg(&self.dir)
        .arg(program);
        cmd
    }

    /// `eci-test-client` in container namespaces (as `command` makes them)
    /// that joins this cgroup itself, before its attempt: no exec happens
    /// inside the cgroup, which below a protected parent a task in the VM's
    /// user namespace may not do.
    pub fn self_joining_client(&self, client: &Path) -> Command {
        let mut cmd = container_namespaces();
        cmd.arg(client).env("ECI_TEST_JOIN_CGROUP", &self.dir);
        cmd
    }

    /// A command that joins this cgroup while sharing the VM's uts, ipc,
    /// net and pid namespaces, in a mount namespace of its own (what
    /// `--network=host --pid=host --ipc=host --uts=host` with a runtime that
    /// bypassed eci-runc gives).
    pub fn command_sharing_vm_namespaces(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_joining(program, true)
    }

    /// A command that joins this cgroup and keeps every namespace of the
    /// VM, its mount namespace included (a runtime that made none).
    pub fn command_in_vm_namespaces(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_joining(program, false)
    }

    fn command_joining(&self, program: impl AsRef<std::ffi::OsStr>, own_mounts: bool) -> Command {
        let procs = std::ffi::CString::new(self.dir.join("cgroup.procs").display().to_string())
            .expect("path");
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (open, write, close) in the child.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if own_mounts && libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `unshare` into new uts, ipc, net, mount and pid namespaces, as a
/// runtime makes them for a container; the program follows.
fn container_namespaces() -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--fork",
        "--pid",
        "--uts",
        "--ipc",
        "--net",
        "--mount",
        "--propagation",
        "private",
        "--",
    ]);
    cmd
}

/// Result of one `eci-test-client` run.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Attempt {
    Allowed,
    Denied,
    Failed(i32),
}

/// Run `eci-test-client MODE PATH` inside `cgroup`; returns the result, the
/// client's pid as the VM sees it, and what it printed.
pub fn attempt(
    client: &Path,
    cgroup: &TestCgroup,
    mode: &str,
    path: &Path,
) -> (Attempt, u32, String) {
    let out = cgroup
        .self_joining_client(client)
        .args([mode, &path.display().to_string()])
        .output()
        .expect("run eci-test-client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    let result = match out.status.code() {
        Some(0) => Attempt::Allowed,
        Some(13) => Attempt::Denied,
        other => Attempt::Failed(other.unwrap_or(-1)),
    };
    (result, pid, text)
}

/// The eci-test-client binary of this crate, for tests in other files.
pub fn test_client() -> PathBuf {
    workspace_bin("eci-test-client")
}

/// `mode` on `path` is denied from `protected` and allowed from `unprotected`.
pub fn assert_denied_only_when_protected(
    protected: &TestCgroup,
    unprotected: &TestCgroup,
    mode: &str,
    path: &Path,
) {
    let client = test_client();
    let (result, _, text) = attempt(&client, protected, mode, path);
    assert_eq!(
        result,
        Attempt::Denied,
        "{mode} {} from a protected cgroup: {text}",
        path.display()
    );
    let (result, _, text) = attempt(&client, unprotected, mode, path);
    assert_eq!(
        result,
        Attempt::Allowed,
        "{mode} {} from an unprotected cgroup: {text}",
        path.display()
    );
}

/// A stream listener and a datagram socket on a tmpfs, accepting in the
/// background so connects complete.
pub struct TestSockets {
    pub dir: tempfile::TempDir,
    pub stream: PathBuf,
    pub dgram: PathBuf,
    _stream_listener: std::os::unix::net::UnixListener,
    _dgram: std::os::unix::net::UnixDatagram,
}

impl TestSockets {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("eci-sockets")
            .tempdir_in(tmp_dir())
            .expect("tempdir");
        let stream = dir.path().join("engine.sock");
        let dgram = dir.path().join("dgram.sock");
        let listener = std::os::unix::net::UnixListener::bind(&stream).expect("bind stream");
        let accepting = listener.try_clone().expect("clone listener");
        std::thread::spawn(move || {
            for conn in accepting.incoming() {
                match conn {
                    Ok(mut c) => {
                        let _ = c.write_all(b"hi");
                    }
                    Err(_) => return,
                }
            }
        });
        let dgram_socket = std::os::unix::net::UnixDatagram::bind(&dgram).expect("bind dgram");
        Self {
            dir,
            stream,
            dgram,
            _stream_listener: listener,
            _dgram: dgram_socket,
        }
    }
}

impl Default for TestSockets {
    fn default() -> Self {
        Self::new()
    }
}
