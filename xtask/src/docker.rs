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

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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

pub fn ensure_docker() -> Result<()> {
    if docker_answers() {
        println!("docker: skipped (the engine answers)");
        return Ok(());
    }
    let started = Instant::now();
    if !std::path::Path::new("/run/containerd/containerd.sock").exists() {
        start_background("containerd", &[], "containerd.log")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::path::Path::new("/run/containerd/containerd.sock").exists() {
            if Instant::now() > deadline {
                bail!("containerd did not start (see build/docker/containerd.log)");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    start_background(
        "dockerd",
        &["--containerd=/run/containerd/containerd.sock"],
        "dockerd.log",
    )?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while !docker_answers() {
        if Instant::now() > deadline {
            bail!("dockerd did not answer within 90 s (see build/docker/dockerd.log)");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
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
