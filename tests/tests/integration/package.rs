//! The Debian package (`cargo xtask package`), installed with `dpkg -i`
//! into the test VM's own root, as an administrator would: what it puts
//! where, the merged daemon.json, the unit (`systemd-analyze verify`), a
//! protected `docker run` with nothing else set up, the policy as a
//! conffile, the refusal to remove it while the policy is locked, and a
//! purge that leaves nothing but what the administrator had.
//!
//! The VM's root is the host's, read-only over 9p: each test writes into
//! overlays (tmpfs upper layers) on /etc, /usr and /var/lib/dpkg in a mount
//! namespace of its own, so nothing it installs is seen by other tests, and
//! the upper layers show exactly which files the package left behind. The
//! VM runs no systemd: where systemd would start the agent and reload
//! Docker (the postinst does on a systemd host), the test does it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use eci_integration_tests::{
    bpf_lsm_or_skip,
    engine::{busybox_rootfs, engine_or_skip, text},
};
use serde_json::{Value, json};

/// What the administrator had in daemon.json before eci.
fn admins_daemon_json() -> Value {
    json!({"log-level": "warn", "runtimes": {"runc-real": {"path": "/usr/sbin/runc"}}})
}

/// The package `cargo xtask vm-test` builds (`cargo xtask package --debug`).
fn package_file() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/package/debug");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: `cargo xtask package --debug` builds it (`cargo xtask vm-test` does)",
                dir.display()
            )
        })
}

/// A mount namespace with writable overlays on the VM's /etc, /usr and
/// /var/lib/dpkg; every command of the test runs in it.
struct Sandbox {
    holder: Child,
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

const OVERLAID: &[&str] = &["/etc", "/usr", "/var/lib/dpkg"];

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("eci-package-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "infinity"])
            .spawn()
            .expect("unshare");
        let ours = std::fs::read_link("/proc/self/ns/mnt").expect("our mount namespace");
        let theirs = format!("/proc/{}/ns/mnt", holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(&theirs)
            .ok()
            .as_ref()
            .is_none_or(|ns| *ns == ours)
        {
            assert!(Instant::now() < deadline, "unshare made no mount namespace");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sandbox = Sandbox {
            holder,
            dir,
            daemons: Vec::new(),
        };
        for lower in OVERLAID {
            let (upper, work) = sandbox.layer(lower);
            std::fs::create_dir_all(&upper).expect("upper dir");
            std::fs::create_dir_all(&work).expect("work dir");
            sandbox.ok(&format!(
                "mount -t overlay overlay -o lowerdir={lower},upperdir={},workdir={} {lower}",
                upper.display(),
                work.display()
            ));
        }
        sandbox
    }

    /// The overlay's upper and work directories for `lower`.
    fn layer(&self, lower: &str) -> (PathBuf, PathBuf) {
        let name = lower.trim_start_matches('/').replace('/', "_");
        (
            self.dir.path().join("upper").join(&name),
            self.dir.path().join("work").join(&name),
        )
    }

    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.holder.id().to_string())
            .args(["--mount", "--", "sh", "-c", script])
            // systemd's PATH: /usr/local/sbin first, where the stand-in is.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        cmd
    }

    fn sh(&self, script: &str) -> Output {
        self.command(script).output().expect("nsenter")
    }

    /// Runs `script`, which must succeed; returns its output.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "`{script}` failed: {}", text(&out));
        text(&out)
    }

    /// Starts a daemon in the namespace; its output goes to `log`.
    fn daemon(&mut self, script: &str, log: &str) {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        let child = self
            .command(&format!("exec {script}"))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("daemon");
        self.daemons.push(child);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn stop_daemons(&mut self) {
        for mut child in self.daemons.drain(..) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Files (not directories) the upper layer over `lower` holds: what
    /// changed there, relative to `lower`.
    fn changed_files(&self, lower: &str) -> Vec<String> {
        let (upper, _) = self.layer(lower);
        let out = Command::new("find")
            .arg(&upper)
            .args(["-mindepth", "1", "-not", "-type", "d"])
            .output()
            .expect("find");
        let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_prefix(&upper.display().to_string())
                    .map(str::to_owned)
            })
            .map(|l| format!("{lower}{l}"))
            .collect();
        files.sort();
        files
    }

    fn read_json(&self, path: &str) -> Value {
        self.read_json_of(&format!("cat {path}"))
    }

    /// The JSON `script` prints.
    fn read_json_of(&self, script: &str) -> Value {
        let text = self.ok(script);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{script}`: not JSON ({e}): {text}"))
    }

    fn write(&self, path: &str, content: &str) {
        let mut child = self
            .command(&format!("mkdir -p \"$(dirname {path})\" && cat > {path}"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("nsenter");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(content.as_bytes())
            .expect("write");
        assert!(child.wait().expect("wait").success(), "writing {path}");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_daemons();
        // A test that failed half-way leaves the rules pinned: remove them
        // (the binary is the package's, in this namespace only).
        let _ = self.sh("[ -x /usr/sbin/eci-agent ] && /usr/sbin/eci-agent unload");
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).expect("json"))
}

/// Files the package may leave in the upper layers after a purge, that are
/// not its own: dpkg's database (under /var/lib/dpkg, not checked) and what
/// dockerd writes itself.
fn not_eci(path: &str) -> bool {
    path == "/etc/docker/key.json"
}

#[test]
fn dpkg_install_protects_docker_run_and_purge_leaves_only_the_admins_settings() {
    let name = "dpkg_install_protects_docker_run_and_purge_leaves_only_the_admins_settings";
    if !bpf_lsm_or_skip(name) || !engine_or_skip(name) {
        return;
    }
    let deb = package_file();
    let mut sb = Sandbox::new();
    let admins = pretty(&admins_daemon_json());
    sb.write("/etc/docker/daemon.json", &admins);
    // An engine of this host, running before eci is installed; its data on
    // the test's tmpfs, its socket the default one the policy protects.
    let data_root = sb.dir.path().join("docker");
    let dockerd = format!(
        "dockerd --data-root {} --storage-driver=vfs --bridge=none --iptables=false --ip-masq=false",
        data_root.display()
    );
    sb.daemon(&dockerd, "dockerd.log");
    let wait_docker = |sb: &Sandbox, log: &str| {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !sb.sh("docker info").status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start:\n{}",
                sb.log(log)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait_docker(&sb, "dockerd.log");
    let root = busybox_rootfs(sb.dir.path());
    sb.ok(&format!(
        "tar -C {} -c . | docker import -c 'CMD [\"/bin/sh\"]' - eci-package-test",
        root.display()
    ));
    let uid_map = |sb: &Sandbox, flags: &str| -> String {
        sb.ok(&format!(
            "docker run --rm --network=none {flags} eci-package-test cat /proc/self/uid_map"
        ))
    };
    let identity =
        |map: &str| map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    let socket_mount = "docker run --rm --network=none -v /var/run/docker.sock:/var/run/docker.sock eci-package-test true";
    // Before eci: the container's root is the VM's root, and the engine's
    // socket can be handed to it (what eci must stop, shown to work here).
    assert!(
        identity(&uid_map(&sb, "")),
        "before eci: {}",
        uid_map(&sb, "")
    );
    sb.ok(socket_mount);

    // Install, as an administrator would.
    let install = sb.sh(&format!("dpkg -i {}", deb.display()));
    let said = text(&install);
    println!("dpkg -i {}:\n{said}", deb.display());
    assert!(install.status.success(), "dpkg -i: {said}");
    assert!(
        said.contains("systemd is not running here"),
        "the postinst says what systemd would have done: {said}"
    );
    let listed = sb.ok("dpkg -L eci");
    println!("dpkg -L eci:\n{listed}");
    for file in [
        "/usr/sbin/eci-agent",
        "/usr/sbin/eci-runc",
        "/etc/eci/admin-settings.json",
        "/usr/share/doc/eci/copyright",
    ] {
        assert!(listed.lines().any(|l| l == file), "{file} not in: {listed}");
    }
    let conffiles = sb.ok("dpkg-query -W -f='${Conffiles}' eci");
    assert!(
        conffiles.contains("/etc/eci/admin-settings.json"),
        "the policy is a conffile: {conffiles}"
    );
    let unit = "/etc/systemd/system/eci-agent.service";
    let unit_text = sb.ok(&format!("cat {unit}"));
    assert!(
        unit_text.contains("ExecStart=/usr/sbin/eci-agent run"),
        "{unit_text}"
    );
    let verify = sb.sh(&format!("systemd-analyze verify {unit}"));
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    let merged = sb.read_json("/etc/docker/daemon.json");
    let mut expected = admins_daemon_json();
    expected["runtimes"]["eci"] = json!({"path": "/usr/sbin/eci-runc"});
    expected["default-runtime"] = json!("eci");
    assert_eq!(
        merged, expected,
        "daemon.json: the admin's settings and eci's"
    );
    assert_eq!(
        sb.ok("cat /etc/docker/daemon.json.eci-backup"),
        admins,
        "the admin's daemon.json is kept as it was"
    );
    assert_eq!(
        sb.ok("readlink /usr/local/sbin/runc").trim(),
        "/usr/sbin/eci-runc",
        "eci-runc stands in for runc"
    );

    // What systemd does on a systemd host: start the unit's ExecStart,
    // reload Docker.
    let exec_start = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart")
        .to_string();
    sb.daemon(&exec_start, "agent.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sb.sh("/usr/sbin/eci-agent status").status.success() {
        assert!(
            Instant::now() < deadline,
            "the agent did not start:\n{}",
            sb.log("agent.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    sb.ok("kill -HUP $(cat /var/run/docker.pid)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sb
        .ok("docker info --format '{{.DefaultRuntime}}'")
        .contains("eci")
    {
        assert!(
            Instant::now() < deadline,
            "dockerd did not reload daemon.json"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A plain `docker run` is protected now, and so is `--runtime=runc`.
    for flags in ["", "--runtime=runc"] {
        let map = uid_map(&sb, flags);
        assert!(
            !identity(&map) && !map.starts_with("0 0 "),
            "docker run {flags}: the container's root must be an id range of its own: {map}"
        );
    }
    let refused = sb.sh(socket_mount);
    assert!(
        !refused.status.success() && text(&refused).contains("enhanced container isolation"),
        "the engine's socket is refused to a container, with the rule: {}",
        text(&refused)
    );
    let status = sb.read_json_of("/usr/sbin/eci-agent status --json");
    assert_eq!(status["enforcing"], true, "{status}");
    assert!(
        status["protected_sockets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/docker.sock")))),
        "the engine's socket is protected: {status}"
    );

    // The policy is the administrator's: an edit survives a reinstall.
    let policy_path = "/etc/eci/admin-settings.json";
    let mut policy = sb.read_json(policy_path);
    policy["eci"]["audit"]["linesPerSecond"] = json!(50);
    sb.write(policy_path, &pretty(&policy));
    let again = sb.sh(&format!("dpkg -i {}", deb.display()));
    assert!(again.status.success(), "dpkg -i again: {}", text(&again));
    assert_eq!(
        sb.read_json(policy_path)["eci"]["audit"]["linesPerSecond"],
        50,
        "the admin's edit of the conffile survives"
    );

    // Locked: removal is refused, and everything stays.
    policy["enhancedContainerIsolation"]["locked"] = json!(true);
    sb.write(policy_path, &pretty(&policy));
    let remove = sb.sh("dpkg -r eci");
    println!("dpkg -r eci (locked):\n{}", text(&remove));
    assert!(
        !remove.status.success() && text(&remove).contains("locked"),
        "removal must be refused while the policy is locked: {}",
        text(&remove)
    );
    assert!(
        sb.ok("dpkg-query -W -f='${Status}' eci")
            .contains("install ok installed"),
        "still installed"
    );
    assert_eq!(sb.read_json("/etc/docker/daemon.json"), expected);
    assert!(sb.sh("/usr/sbin/eci-agent status").status.success());

    // Unlocked: what systemd does at removal (stop the agent), then purge.
    policy["enhancedContainerIsolation"]["locked"] = json!(false);
    sb.write(policy_path, &pretty(&policy));
    sb.stop_daemons();
    let purge = sb.sh("dpkg --purge eci");
    println!("dpkg --purge eci:\n{}", text(&purge));
    assert!(purge.status.success(), "dpkg --purge: {}", text(&purge));
    let state = sb.sh("dpkg-query -W -f='${Status}' eci");
    assert!(
        !state.status.success() || text(&state).contains("not-installed"),
        "dpkg still knows eci after the purge: {}",
        text(&state)
    );
    assert_eq!(
        sb.read_json("/etc/docker/daemon.json"),
        admins_daemon_json(),
        "daemon.json is the admin's again"
    );
    let mut left = sb.changed_files("/etc");
    left.retain(|f| f != "/etc/docker/daemon.json" && !not_eci(f));
    left.extend(sb.changed_files("/usr"));
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
    for gone in [
        "/var/lib/eci",
        "/var/log/eci",
        "/run/eci",
        "/sys/fs/bpf/eci",
    ] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is left behind by the purge"
        );
    }

    // Docker restarted without eci: the same runs as before it.
    sb.daemon(&dockerd, "dockerd-after.log");
    wait_docker(&sb, "dockerd-after.log");
    assert!(
        identity(&uid_map(&sb, "")),
        "after the purge: {}",
        uid_map(&sb, "")
    );
    sb.ok(socket_mount);
}

#[test]
fn a_malformed_daemon_json_stops_the_install_untouched_and_it_finishes_once_fixed() {
    let name = "a_malformed_daemon_json_stops_the_install_untouched_and_it_finishes_once_fixed";
    if !bpf_lsm_or_skip(name) || !engine_or_skip(name) {
        return;
    }
    let deb = package_file();
    let sb = Sandbox::new();
    let broken = "{\"log-level\": \"warn\",\n";
    sb.write("/etc/docker/daemon.json", broken);
    let install = sb.sh(&format!("dpkg -i {}", deb.display()));
    let said = text(&install);
    println!("dpkg -i with a malformed daemon.json:\n{said}");
    assert!(!install.status.success(), "dpkg -i must fail: {said}");
    assert!(
        said.contains("not valid JSON") && said.contains("dpkg --configure eci"),
        "the failure names the file's error and how to finish: {said}"
    );
    assert_eq!(
        sb.ok("cat /etc/docker/daemon.json"),
        broken,
        "left untouched"
    );
    for never in [
        "/etc/systemd/system/eci-agent.service",
        "/usr/local/sbin/runc",
    ] {
        assert!(
            !sb.sh(&format!("[ -e {never} ] || [ -L {never} ]"))
                .status
                .success(),
            "{never} was made although the set-up stopped"
        );
    }

    sb.write("/etc/docker/daemon.json", "{\"log-level\": \"warn\"}\n");
    let configure = sb.sh("dpkg --configure eci");
    assert!(
        configure.status.success(),
        "dpkg --configure: {}",
        text(&configure)
    );
    assert_eq!(
        sb.read_json("/etc/docker/daemon.json")["runtimes"]["eci"]["path"],
        "/usr/sbin/eci-runc"
    );
    let purge = sb.sh("dpkg --purge eci");
    assert!(purge.status.success(), "dpkg --purge: {}", text(&purge));
    assert_eq!(
        sb.read_json("/etc/docker/daemon.json"),
        json!({"log-level": "warn"})
    );
    let mut left = sb.changed_files("/etc");
    left.retain(|f| f != "/etc/docker/daemon.json");
    left.extend(sb.changed_files("/usr"));
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
}
