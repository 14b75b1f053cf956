//! `cargo xtask image`: the agent's container image, the one
//! `deploy/kubernetes/daemonset.yaml` names, built here from the workspace's
//! binaries without a registry or a Dockerfile.
//!
//! The image is one layer: eci-agent and eci-runc in /usr/local/bin, the
//! shared libraries they load (as `ldd` lists them, the dynamic loader
//! included), Debian's static busybox (the init container's `sh`, `cp` and
//! `mv`), and no /etc/eci (the policy comes from the node). It is written
//! as an image archive in `docker save`'s format (manifest.json, config,
//! layer), which `docker load` and `ctr -n k8s.io images import` both read:
//! the file one copies to a node, and the file the VM test
//! (`image::`) loads into its own engine. Making it needs no running
//! Docker; loading it into this machine's Docker does (`cargo xtask
//! docker-up`).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// Where the DaemonSet is, whose containers name the image.
const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";

/// The agent's command in the image, as the DaemonSet runs it
/// (`command: ["/usr/local/bin/eci-agent", "run"]`).
const ENTRYPOINT: &[&str] = &["/usr/local/bin/eci-agent"];
const CMD: &[&str] = &["run"];

/// Which build of the binaries goes in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// What [`write_archive`] made.
pub struct Archive {
    pub path: PathBuf,
    pub tags: Vec<String>,
}

/// `cargo xtask image [--debug] [--no-load]`.
pub fn image(profile: Profile, load: bool) -> Result<()> {
    let bins = build(profile)?;
    let archive = write_archive(&bins, profile)?;
    println!(
        "image: wrote {} ({}; {} binaries)",
        archive.path.display(),
        archive.tags.join(", "),
        profile.name()
    );
    if !load {
        return Ok(());
    }
    if !crate::docker::docker_answers() {
        bail!(
            "the image archive is written ({}), but it is not loaded: Docker does not answer here (`docker info` fails). Start it with `cargo xtask docker-up` and run `cargo xtask image` again, or pass --no-load to only write the archive",
            archive.path.display()
        );
    }
    util::run(
        Command::new("docker")
            .arg("load")
            .arg("-i")
            .arg(&archive.path),
    )?;
    println!(
        "image: loaded into this machine's Docker as {}. On a node: `ctr -n k8s.io images import {}` (containerd) or `docker load -i {}`",
        archive.tags.join(" and "),
        archive.path.display(),
        archive.path.display()
    );
    Ok(())
}

/// Builds eci-agent and eci-runc; returns the directory they are in.
/// The debug build is the workspace's (the tests' build: the same
/// features, nothing rebuilt).
fn build(profile: Profile) -> Result<PathBuf> {
    match profile {
        Profile::Debug => {
            util::build_binaries()?;
            Ok(util::repo_root().join("target").join(profile.name()))
        }
        Profile::Release => util::release_binaries(),
    }
}

/// The archive the VM test loads, from the debug binaries the test run
/// just built (`cargo xtask vm-test` calls this before the VMs boot).
pub fn test_archive() -> Result<Archive> {
    let bins = util::repo_root().join("target/debug");
    let archive = write_archive(&bins, Profile::Debug)?;
    println!("image: {} for the image:: tests", archive.path.display());
    Ok(archive)
}

/// The image every container of the DaemonSet names (`image:` lines; one
/// name for all, the init container's included).
fn daemonset_image() -> Result<String> {
    let path = util::repo_root().join(DAEMONSET);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .collect();
    names.dedup();
    match names.as_slice() {
        [one]
            if one
                .rsplit_once(':')
                .is_some_and(|(repo, _)| !repo.is_empty()) =>
        {
            Ok(one.clone())
        }
        _ => bail!(
            "{}: its containers must name one image, as `repository:tag` (the image `cargo xtask image` tags); found {names:?}",
            path.display()
        ),
    }
}

/// The image's files below `root` (made afresh): the binaries from `bins`,
/// their libraries, busybox.
fn make_root(bins: &Path, root: &Path) -> Result<()> {
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    for d in [
        "bin",
        "usr/local/bin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
        "run",
        "var",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    // /var/run/docker.sock, a socket the policy protects by default, is
    // found through the node's /run (the DaemonSet mounts it).
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;
    let mut libraries = Vec::new();
    for name in ["eci-agent", "eci-runc"] {
        let bin = bins.join(name);
        std::fs::copy(&bin, root.join("usr/local/bin").join(name))
            .with_context(|| format!("copying {} (is it built?)", bin.display()))?;
        for lib in needed_libraries(&bin)? {
            if !libraries.contains(&lib) {
                libraries.push(lib);
            }
        }
    }
    for lib in &libraries {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // The file, not a link: the image has no other copy to point at.
        std::fs::copy(lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context(
        "copying /bin/busybox (Debian's busybox-static; `cargo xtask setup` installs it)",
    )?;
    let applets = util::output(Command::new("/bin/busybox").arg("--list"))?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// The shared libraries `binary` loads, the dynamic loader included (the
/// absolute paths `ldd` prints); none for a static binary.
fn needed_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("`ldd {}` failed: {err}", binary.display());
    }
    if let Some(missing) = text.lines().find(|l| l.contains("not found")) {
        bail!(
            "{} needs a library this machine lacks: {}",
            binary.display(),
            missing.trim()
        );
    }
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

fn sha256(path: &Path) -> Result<String> {
    let out = util::output(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_string)
        .with_context(|| format!("sha256sum {}: {out}", path.display()))
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Makes the image's root from the binaries in `bins` and writes it as an
/// image archive (`docker save`'s format) in build/image/, tagged with the
/// agent's version and the DaemonSet's tag.
pub fn write_archive(bins: &Path, profile: Profile) -> Result<Archive> {
    let name = daemonset_image()?;
    let (repository, tag) = name
        .rsplit_once(':')
        .with_context(|| format!("{name} has no tag"))?;
    let version = util::agent_version(bins)?;
    let mut tags = vec![format!("{repository}:{version}")];
    if tag != version {
        tags.push(name.clone());
    }

    let dir = util::build_dir().join("image");
    let root = dir.join("root");
    make_root(bins, &root)?;
    let staging = dir.join("archive");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    // The layer: the root's files, owned by root, in a stable order.
    let layer = staging.join("layer.tar");
    util::run(
        Command::new("tar")
            .args(["--sort=name", "--numeric-owner", "--owner=0", "--group=0"])
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    )?;
    let layer_sha = sha256(&layer)?;
    std::fs::create_dir_all(staging.join(&layer_sha))?;
    let layer_path = format!("{layer_sha}/layer.tar");
    std::fs::rename(&layer, staging.join(&layer_path))?;

    let created = util::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?
        .trim()
        .to_string();
    let config = serde_json::json!({
        "architecture": docker_arch(),
        "os": "linux",
        "created": created,
        "config": {
            "Entrypoint": ENTRYPOINT,
            "Cmd": CMD,
            "Env": ["PATH=/usr/local/bin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": "eci-agent",
                "org.opencontainers.image.description": "eci's agent and eci-runc (deploy/kubernetes/daemonset.yaml)",
                "org.opencontainers.image.version": version,
                "dev.eci.build": profile.name(),
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_sha}")] },
        "history": [{ "created": created, "created_by": "cargo xtask image" }],
    });
    let config_text = serde_json::to_string(&config)?;
    let config_file = staging.join("config.json");
    std::fs::write(&config_file, &config_text)?;
    let config_name = format!("{}.json", sha256(&config_file)?);
    std::fs::rename(&config_file, staging.join(&config_name))?;
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": [layer_path],
    }]);
    std::fs::write(
        staging.join("manifest.json"),
        serde_json::to_string(&manifest)?,
    )?;

    let suffix = match profile {
        Profile::Release => String::new(),
        Profile::Debug => "-debug".to_string(),
    };
    let path = dir.join(format!("eci-agent-{version}{suffix}.tar"));
    util::run(
        Command::new("tar")
            .arg("-C")
            .arg(&staging)
            .arg("-cf")
            .arg(&path)
            .args(["manifest.json", &config_name, &layer_path]),
    )?;
    std::fs::remove_dir_all(&staging)?;
    Ok(Archive { path, tags })
}
