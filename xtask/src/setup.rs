//! `cargo xtask setup`: install what a fresh machine of this kind lacks.
//! Idempotent; every step says whether it did something or skipped.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{kernels, util};

/// The pinned BPF nightly: `channel` of eci-ebpf/rust-toolchain.toml, the
/// one place it is written (eci-agent's build script reads it too).
pub fn bpf_nightly() -> Result<String> {
    let file = util::repo_root().join("eci-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .with_context(|| format!("{} names no channel", file.display()))
}

/// Debian packages the build, the VM tests and the Docker tests need.
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "bpftool",
    "docker.io",
    "containerd",
    "runc",
    "busybox-static",
    "kmod",
    "cpio",
    "iproute2",
    "xz-utils",
    "util-linux",
    "systemd",
    "mmdebstrap",
    // k8s-cri's build script (the CRI client of the tests) runs protoc.
    "protobuf-compiler",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: apt packages: skipped (all {} present)",
            APT_PACKAGES.len()
        );
        return Ok(());
    }
    println!("setup: apt packages: installing {}", missing.join(" "));
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

fn rustup_components() -> Result<()> {
    let list = util::output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> = ["clippy", "rustfmt"]
        .into_iter()
        .filter(|c| !list.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        println!("setup: clippy, rustfmt: skipped (installed)");
        return Ok(());
    }
    println!("setup: rustup component add {}", missing.join(" "));
    util::run(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
}

fn nightly() -> Result<()> {
    let nightly = bpf_nightly()?;
    let has_src = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            nightly.as_str(),
        ])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src")
        });
    if has_src {
        println!("setup: {nightly} with rust-src: skipped (installed)");
        return Ok(());
    }
    println!("setup: installing {nightly} with rust-src");
    util::run(
        Command::new("rustup")
            .args([
                "toolchain",
                "install",
                nightly.as_str(),
                "--profile",
                "minimal",
                "-c",
                "rust-src",
            ])
            .env("RUSTUP_AUTO_INSTALL", "1"),
    )
}

/// The pinned nightly's own libLLVM: bpf-linker must link exactly this one.
fn nightly_llvm() -> Result<(PathBuf, String)> {
    let nightly = bpf_nightly()?;
    let sysroot = util::output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let soname = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    Ok((lib, soname))
}

fn bpf_linker() -> Result<()> {
    let nightly = bpf_nightly()?;
    let (lib, soname) = nightly_llvm()?;
    if let Some(linker) = util::which("bpf-linker") {
        let ldd = util::output(Command::new("ldd").arg(&linker)).unwrap_or_default();
        if ldd
            .lines()
            .any(|l| l.contains(&soname) && !l.contains("not found"))
        {
            println!(
                "setup: bpf-linker: skipped ({} links {soname})",
                linker.display()
            );
            return Ok(());
        }
        println!(
            "setup: bpf-linker at {} does not link {soname}; reinstalling",
            linker.display()
        );
    }
    let prefix = util::build_dir().join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&soname), &link)?;
    }
    println!("setup: cargo install bpf-linker (LLVM from {nightly})");
    let llvm_major = soname
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|m| m.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {soname}"))?
        .to_owned();
    util::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            ),
    )
}

pub fn setup() -> Result<()> {
    let started = Instant::now();
    if !nix_is_root() {
        bail!("`cargo xtask setup` installs system packages: run it as root");
    }
    apt()?;
    rustup_components()?;
    nightly()?;
    bpf_linker()?;
    for k in kernels::ensure()? {
        crate::stacks::ensure(&k.stack)?;
    }
    crate::stacks::ensure_dind_image()?;
    modules_mount_point()?;
    println!("setup: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn nix_is_root() -> bool {
    util::output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

/// The guest binds the VM kernel's extracted modules on
/// /lib/modules/<release> (so `modprobe` works there), but the host root is
/// read-only in the guest: the mount point must exist on the host.
fn modules_mount_point() -> Result<()> {
    let dir = std::path::Path::new("/lib/modules");
    if dir.is_dir() {
        println!("setup: /lib/modules: skipped (exists)");
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    println!("setup: /lib/modules: created (mount point for the VM kernel's modules)");
    Ok(())
}
