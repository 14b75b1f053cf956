//! `cargo xtask package`: eci as a Debian package, built with dpkg-deb.
//!
//! What it holds: `eci-agent` and `eci-runc` in /usr/sbin, the default
//! policy as a conffile (/etc/eci/admin-settings.json: an administrator's
//! edits survive upgrades, and dpkg asks before replacing them), the
//! copyright, and the maintainer scripts of `deploy/debian/`. Those call
//! the binary's own `eci-agent install` / `uninstall` — the code a source
//! install runs — so the unit, the daemon.json merge (backup kept, a
//! malformed file left untouched) and the runc stand-in are made and
//! undone in one place, and the unit follows the policy in force when it is
//! written (a locked policy makes the engine require the agent).
//!
//! The release build is what users install; `--debug` packages the debug
//! binaries the tests already built (the VM test `package::` installs it).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// The package's name, as `apt` and `dpkg` know it.
pub const NAME: &str = "eci";

/// Where the package of a profile is written.
pub fn output_dir(release: bool) -> PathBuf {
    let dir = util::build_dir().join("package");
    if release { dir } else { dir.join("debug") }
}

/// Builds the binaries of the profile (the debug ones are taken as built)
/// and the package; returns the `.deb`'s path.
pub fn package(release: bool) -> Result<PathBuf> {
    let bin_dir = if release {
        util::release_binaries()?
    } else {
        util::repo_root().join("target/debug")
    };
    let arch = util::output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg is needed to build the package (apt-get install dpkg-dev)")?
        .trim()
        .to_string();

    let out = output_dir(release);
    let root = out.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let mut binaries = Vec::new();
    for name in ["eci-agent", "eci-runc"] {
        let from = bin_dir.join(name);
        if !from.is_file() {
            bail!(
                "{} is missing: build it first (`cargo build{}`)",
                from.display(),
                if release { " --release" } else { "" }
            );
        }
        let to = root.join("usr/sbin").join(name);
        copy(&from, &to, 0o755)?;
        binaries.push(to);
    }
    let version = util::agent_version(&bin_dir)?;
    write(
        &root.join("etc/eci/admin-settings.json"),
        &eci_policy::Policy::default_file_text(),
        0o644,
    )?;
    write(
        &root.join("usr/share/doc/eci/copyright"),
        &copyright(),
        0o644,
    )?;

    let debian = root.join("DEBIAN");
    let scripts = util::repo_root().join("deploy/debian");
    for script in ["postinst", "prerm", "postrm"] {
        copy(&scripts.join(script), &debian.join(script), 0o755)?;
    }
    write(
        &debian.join("conffiles"),
        "/etc/eci/admin-settings.json\n",
        0o644,
    )?;
    let control = control(&ControlFields {
        version: &version,
        arch: &arch,
        glibc: newest_glibc_symbol(&binaries)?,
        installed_kib: tree_size(&root)?.div_ceil(1024),
    });
    write(&debian.join("control"), &control, 0o644)?;

    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    // The debug binaries are large: fast compression for the tests' package.
    let compression: &[&str] = if release {
        &["-Zxz"]
    } else {
        &["-Zgzip", "-z1"]
    };
    util::run(
        Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .args(compression)
            .arg("--build")
            .arg(&root)
            .arg(&deb),
    )?;
    println!(
        "package: {} ({} build, {:.1} MiB)",
        deb.display(),
        if release { "release" } else { "debug" },
        fs::metadata(&deb)?.len() as f64 / (1024.0 * 1024.0)
    );
    Ok(deb)
}

struct ControlFields<'a> {
    version: &'a str,
    arch: &'a str,
    /// The newest glibc symbol version the binaries need (`2.34`).
    glibc: Option<String>,
    installed_kib: u64,
}

fn control(f: &ControlFields) -> String {
    let libc = match &f.glibc {
        Some(v) => format!("libc6 (>= {v})"),
        None => "libc6".to_string(),
    };
    format!(
        "Package: {NAME}
Version: {version}
Architecture: {arch}
Maintainer: eci developers <eci@example.invalid>
Section: admin
Priority: optional
Installed-Size: {kib}
Depends: {libc}, runc
Recommends: docker.io | docker-ce
Homepage: https://example.invalid/eci
Description: Enhanced Container Isolation, kernel-enforced (BPF-LSM)
 Every container in its own user namespace with an exclusive id range,
 sensitive /proc and /sys hidden, and no way from a container to the
 engine's sockets, the host's namespaces or the host's mounts, enforced in
 the kernel with BPF-LSM whatever runtime started the container.
 .
 Installing registers eci with Docker as its default runtime and starts the
 agent (eci-agent doctor must pass first); removing reverses it, and is
 refused while the policy is locked.
",
        version = f.version,
        arch = f.arch,
        kib = f.installed_kib,
    )
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: eci
Source: https://example.invalid/eci

Files: *
Copyright: the eci developers
License: Apache-2.0 or MIT
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
"
    .to_string()
}

/// The newest `GLIBC_x.y` symbol version the binaries import (`objdump -T`),
/// so that `Depends: libc6 (>= x.y)` keeps the package off older systems.
fn newest_glibc_symbol(binaries: &[PathBuf]) -> Result<Option<String>> {
    let mut newest: Option<Vec<u32>> = None;
    for bin in binaries {
        let text = util::output(Command::new("objdump").arg("-T").arg(bin))
            .context("objdump (binutils) reads the glibc versions the binaries need")?;
        for word in text.split_whitespace() {
            let Some(v) = word.trim_matches(['(', ')']).strip_prefix("GLIBC_") else {
                continue;
            };
            let Ok(parts) = v
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            if newest.as_ref().is_none_or(|n| parts > *n) {
                newest = Some(parts);
            }
        }
    }
    Ok(newest.map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")))
}

fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            if entry.file_name() != "DEBIAN" {
                total += tree_size(&entry.path())?;
            }
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_names_the_package_its_glibc_and_runc() {
        let text = control(&ControlFields {
            version: "0.1.0",
            arch: "amd64",
            glibc: Some("2.34".into()),
            installed_kib: 12,
        });
        assert!(text.starts_with("Package: eci\nVersion: 0.1.0\nArchitecture: amd64\n"));
        assert!(text.contains("\nDepends: libc6 (>= 2.34), runc\n"));
        assert!(text.contains("\nInstalled-Size: 12\n"));
        assert!(text.ends_with('\n') && !text.contains("\n\n"));
    }
}
