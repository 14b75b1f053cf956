//! The Docker Engine the runtime tests use: Debian's dockerd and containerd,
//! started in the background when not running, and a local test image made
//! from busybox-static (there is no registry).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

pub const TEST_IMAGE: &str = "eci-test-busybox:latest";

/// Whether this machine's Docker answers.
pub fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// A socket file can outlive its daemon (a machine snapshotted with the
/// daemon running, a killed session): only a connection proves a listener.
fn socket_answers(path: &str) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

fn start_background(program: &str, args: &[&str], log: &str) -> Result<()> {
    let logs = util::build_dir().join("docker");
    std::fs::create_dir_all(&logs)?;
    let out = std::fs::File::create(logs.join(log))?;
    let err = out.try_clone()?;
    // setsid: the daemons outlive xtask and are not in its process group.
    Command::new("setsid")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    Ok(())
}

/// The lines of a daemon's log that say why it failed (errors and fatals,
/// else the last lines), so that the reason reaches the CI output.
fn log_reason(log: &str) -> String {
    let path = util::build_dir().join("docker").join(log);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut picked: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            l.contains("level=error")
                || l.contains("level=fatal")
                || l.starts_with("failed to start daemon")
        })
        .collect();
    if picked.is_empty() {
        picked = lines.clone();
    }
    let tail = picked.len().saturating_sub(6);
    format!("{}:\n{}", path.display(), picked[tail..].join("\n"))
}

fn wait_for(what: &str, limit: Duration, ready: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            println!("docker: {what} not ready after {}s", limit.as_secs());
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    true
}

fn ensure_containerd() -> Result<()> {
    if socket_answers(CONTAINERD_SOCKET) {
        return Ok(());
    }
    if std::path::Path::new(CONTAINERD_SOCKET).exists() {
        println!("docker: removing stale {CONTAINERD_SOCKET} (nothing listens on it)");
        std::fs::remove_file(CONTAINERD_SOCKET)
            .with_context(|| format!("removing stale {CONTAINERD_SOCKET}"))?;
    }
    start_background("containerd", &[], "containerd.log")?;
    if !wait_for("containerd", Duration::from_secs(30), || {
        socket_answers(CONTAINERD_SOCKET)
    }) {
        bail!("containerd did not start; {}", log_reason("containerd.log"));
    }
    Ok(())
}

/// dockerd refuses to start while its pid file names a live process, even
/// when that pid now belongs to something else.
fn remove_stale_pid_file(path: &str, daemon: &str) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", text.trim())).unwrap_or_default();
    if comm.trim() != daemon {
        println!("docker: removing stale {path} ({daemon} is not running)");
        std::fs::remove_file(path).with_context(|| format!("removing stale {path}"))?;
    }
    Ok(())
}

/// Starts dockerd; when the default network set-up is what fails (no bridge
/// or iptables support in this kernel), starts it again without the default
/// bridge and without iptables: the tests need no container network.
fn start_dockerd() -> Result<()> {
    remove_stale_pid_file("/var/run/docker.pid", "dockerd")?;
    let base = ["--containerd", CONTAINERD_SOCKET];
    start_background("dockerd", &base, "dockerd.log")?;
    if wait_for("dockerd", Duration::from_secs(60), docker_answers) {
        return Ok(());
    }
    let first = log_reason("dockerd.log");
    let network_trouble = ["bridge", "iptables", "NAT", "nat", "netlink"]
        .iter()
        .any(|w| first.contains(w));
    if !network_trouble {
        bail!("dockerd did not answer within 60 s; {first}");
    }
    println!("docker: dockerd failed to set up its default network; retrying without it:\n{first}");
    let _ = Command::new("pkill").args(["-x", "dockerd"]).status();
    std::thread::sleep(Duration::from_secs(2));
    let mut args = base.to_vec();
    args.extend(["--bridge=none", "--iptables=false", "--ip6tables=false"]);
    start_background("dockerd", &args, "dockerd.log")?;
    if !wait_for("dockerd", Duration::from_secs(60), docker_answers) {
        bail!(
            "dockerd did not answer within 60 s (also without its default network); {}",
            log_reason("dockerd.log")
        );
    }
    Ok(())
}

pub fn ensure_docker() -> Result<()> {
    if docker_answers() {
        println!("docker: skipped (the engine answers)");
        return Ok(());
    }
    let started = Instant::now();
    ensure_containerd()?;
    start_dockerd()?;
    println!(
        "docker: started containerd and dockerd in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn ensure_test_image() -> Result<()> {
    let present = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        println!("docker: image {TEST_IMAGE}: skipped (present)");
        return Ok(());
    }
    let root = util::build_dir().join("docker/rootfs");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
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
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    let applets = util::output(Command::new("/bin/busybox").arg("--list"))?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n")?;
    util::run(
        Command::new("chown")
            .args(["1000:1000"])
            .arg(root.join("home/user")),
    )?;
    util::run(Command::new("chmod").args(["1777"]).arg(root.join("tmp")))?;
    util::run(Command::new("sh").arg("-c").arg(format!(
        "tar -C {} -c . | docker import -c 'CMD [\"/bin/sh\"]' - {TEST_IMAGE} >/dev/null",
        util::shell_quote(&root.to_string_lossy())
    )))?;
    println!("docker: imported {TEST_IMAGE}");
    Ok(())
}
