//! The engine stacks the VM tests run on. `bookworm` is this machine's own
//! root (shared read-only over 9p): Docker 20.10, containerd 1.6, runc 1.1.
//! `sid` is a Debian unstable root made with mmdebstrap under
//! `build/vm/roots/sid/` (Docker 28, containerd 2, runc 1.3, BuildKit): the
//! newest stack users run. The project's binaries, built here against glibc
//! 2.36, run unchanged on it; the repository is bound into it at the same
//! path.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::apt;
use crate::util::{self, run};

/// What the sid root holds: the engine stack, what the tests and the guest
/// script run (mount, losetup, mke2fs, unshare, ip, python3), busybox for
/// the test image, the time zone data (a container may bind the VM's
/// /etc/localtime read-only, as countless compose files do).
const SID_PACKAGES: &[&str] = &[
    "docker.io",
    "docker-cli",
    "docker-buildx",
    "containerd",
    "runc",
    "crun",
    "iptables",
    "iproute2",
    "procps",
    "util-linux",
    "util-linux-extra",
    "mount",
    "kmod",
    "e2fsprogs",
    "busybox-static",
    "python3",
    "tzdata",
];

/// The root directory of a stack, as a path on this machine; `/` for the
/// machine's own.
pub fn root(stack: &str) -> Result<PathBuf> {
    match stack {
        "bookworm" => Ok(PathBuf::from("/")),
        "sid" => Ok(sid_dir()),
        other => bail!("unknown engine stack {other:?} (bookworm or sid)"),
    }
}

fn sid_dir() -> PathBuf {
    util::build_dir().join("vm/roots/sid")
}

fn stamp_text() -> String {
    format!("packages: {}\n", SID_PACKAGES.join(","))
}

/// Makes the sid root if it is missing or was made for another package
/// list; quick and offline when it is there.
pub fn ensure(stack: &str) -> Result<()> {
    if stack != "sid" {
        return Ok(());
    }
    let dir = sid_dir();
    let stamp = dir.with_extension("stamp");
    if dir.join("usr/sbin/dockerd").is_file()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text().as_str())
    {
        mount_points(&dir)?;
        println!("stacks: sid root: skipped (present in {})", dir.display());
        return Ok(());
    }
    if util::which("mmdebstrap").is_none() {
        bail!(
            "mmdebstrap is missing: `cargo xtask setup` installs it (apt-get install mmdebstrap)"
        );
    }
    let scratch = dir.with_extension("new");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(dir.parent().context("roots dir")?)?;
    println!(
        "stacks: making the sid root with mmdebstrap ({})",
        SID_PACKAGES.join(" ")
    );
    let started = Instant::now();
    run(&mut mmdebstrap_sid("apt", SID_PACKAGES, &[], &scratch))
        .context("mmdebstrap of the sid root")?;
    fs::rename(&scratch, &dir)?;
    mount_points(&dir)?;
    let versions = util::output(
        Command::new("chroot")
            .arg(&dir)
            .args(["dpkg-query", "-W", "-f", "${Package} ${Version}\n"])
            .args(["docker.io", "containerd", "runc", "crun", "docker-buildx"]),
    )
    .unwrap_or_default();
    fs::write(dir.with_extension("versions"), &versions)?;
    fs::write(&stamp, stamp_text())?;
    println!(
        "stacks: sid root made in {:.0}s: {}",
        started.elapsed().as_secs_f64(),
        versions.lines().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Directories the guest mounts on (the root is read-only in the VM): the
/// repository at its own path, and `/lib/modules` for the kernel's modules.
fn mount_points(dir: &std::path::Path) -> Result<()> {
    let repo = util::repo_root();
    let inside = dir.join(repo.strip_prefix("/").unwrap_or(&repo));
    fs::create_dir_all(&inside)
        .with_context(|| format!("making the repository's mount point {}", inside.display()))?;
    fs::create_dir_all(dir.join("usr/lib/modules"))?;
    Ok(())
}

/// One line naming a stack's engine versions, for summaries.
pub fn describe(stack: &str) -> String {
    match stack {
        "sid" => fs::read_to_string(sid_dir().with_extension("versions"))
            .map(|v| format!("sid ({})", v.lines().collect::<Vec<_>>().join(", ")))
            .unwrap_or_else(|_| "sid".into()),
        other => other.to_string(),
    }
}

/// What the Docker-in-Docker test image holds: an engine to run inside a
/// container (`docker:dind`'s part), the tools its script uses, busybox
/// for the nested image. The engine's parts the test does not use (ctr,
/// containerd's extra shims and plugins, CNI) are left out to keep the
/// import short.
const DIND_PACKAGES: &[&str] = &[
    "docker.io",
    "docker-cli",
    "iptables",
    "iproute2",
    "procps",
    "busybox-static",
];
const DIND_EXCLUDED: &[&str] = &[
    "/usr/bin/ctr",
    "/usr/lib/containerd/*",
    "/usr/lib/cni/*",
    // runc's test helpers.
    "/usr/sbin/pidfd-kill",
    "/usr/sbin/recvtty",
    "/usr/sbin/sd-helper",
    "/usr/sbin/remap-rootfs",
    "/usr/sbin/seccompagent",
    "/usr/sbin/fs-idmap",
];

/// The Docker-in-Docker image's root as a tar (`build/images/dind-root.tar`,
/// what the test imports), made with mmdebstrap from sid if missing or made
/// for another package list; quick and offline when it is there.
pub fn ensure_dind_image() -> Result<()> {
    let tar = util::build_dir().join("images/dind-root.tar");
    let stamp = tar.with_extension("stamp");
    let stamp_text = format!(
        "packages: {}; excluded: {}\n",
        DIND_PACKAGES.join(","),
        DIND_EXCLUDED.join(",")
    );
    if tar.is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        println!(
            "stacks: Docker-in-Docker image root: skipped (present in {})",
            tar.display()
        );
        return Ok(());
    }
    if util::which("mmdebstrap").is_none() {
        bail!(
            "mmdebstrap is missing: `cargo xtask setup` installs it (apt-get install mmdebstrap)"
        );
    }
    fs::create_dir_all(tar.parent().context("images dir")?)?;
    let scratch = tar.with_extension("new.tar");
    let started = Instant::now();
    run(&mut mmdebstrap_sid(
        "essential",
        DIND_PACKAGES,
        DIND_EXCLUDED,
        &scratch,
    ))
    .context("mmdebstrap of the Docker-in-Docker image root")?;
    fs::rename(&scratch, &tar)?;
    fs::write(&stamp, stamp_text)?;
    println!(
        "stacks: Docker-in-Docker image root made in {:.0}s ({} MB)",
        started.elapsed().as_secs_f64(),
        fs::metadata(&tar).map(|m| m.len() >> 20).unwrap_or(0)
    );
    Ok(())
}

/// Left out of every root made here: documentation, manual pages, locales.
const DOCS_EXCLUDED: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
];

/// mmdebstrap of a Debian sid root (`target`: a directory, or a tar by its
/// name) from this machine's mirror: `variant`, `packages` included,
/// [`DOCS_EXCLUDED`] and the paths `excluded` left out by dpkg. The
/// mirror's sid Release file is past its date, hence Check-Valid-Until.
fn mmdebstrap_sid(
    variant: &str,
    packages: &[&str],
    excluded: &[&str],
    target: &std::path::Path,
) -> Command {
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--quiet".to_string(),
        format!("--variant={variant}"),
        "--aptopt=Acquire::Check-Valid-Until \"false\"".to_string(),
    ]);
    for path in DOCS_EXCLUDED.iter().chain(excluded) {
        cmd.arg(format!("--dpkgopt=path-exclude={path}"));
    }
    cmd.arg(format!("--include={}", packages.join(",")))
        .arg("sid")
        .arg(target)
        .arg(apt::mirror());
    cmd
}
