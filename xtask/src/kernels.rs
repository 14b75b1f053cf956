//! The VM kernel matrix: Debian kernel packages, downloaded with
//! `apt-get download` and extracted with `dpkg -x` under `build/vm/`
//! (never installed). The chosen versions are recorded in
//! `build/vm/kernels.json` so later runs are stable and need no network.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::apt::PrivateApt;
use crate::util::{self, output, run};

/// One kernel of the matrix, extracted under `build/vm/kernels/<release>/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    /// Short name used on the command line: "6.1" or "6.12".
    pub name: String,
    /// Debian package, e.g. `linux-image-6.1.0-56-amd64-unsigned`.
    pub package: String,
    /// Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// Kernel release (`uname -r` in the guest), e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Debian suite the package came from when it is not the machine's own
    /// (reached through a private apt configuration, see `apt.rs`).
    #[serde(default)]
    pub suite: Option<String>,
    /// Packages extracted beside `package` (sid splits image and modules).
    #[serde(default)]
    pub companions: Vec<String>,
    /// The root file system the VM boots with this kernel: `bookworm` (this
    /// machine's root, Docker 20.10 / containerd 1.6 / runc 1.1) or `sid`
    /// (Docker 28 / containerd 2 / runc 1.3, see `stacks.rs`).
    #[serde(default = "bookworm")]
    pub stack: String,
}

fn bookworm() -> String {
    "bookworm".into()
}

impl Kernel {
    /// The extracted package tree (contains `boot/` and `lib/modules/`).
    pub fn root(&self) -> PathBuf {
        vm_dir().join("kernels").join(&self.release)
    }
    pub fn vmlinuz(&self) -> PathBuf {
        let boot = self
            .root()
            .join("boot")
            .join(format!("vmlinuz-{}", self.release));
        if boot.is_file() {
            return boot;
        }
        // sid's linux-binary-unsigned packages (merged /usr).
        self.modules_dir().join("vmlinuz.unsigned")
    }
    /// `lib/modules/<release>` inside the extracted tree.
    pub fn modules_dir(&self) -> PathBuf {
        self.root().join("lib/modules").join(&self.release)
    }
    fn is_extracted(&self) -> bool {
        self.vmlinuz().is_file() && self.modules_dir().join("modules.dep").is_file()
    }
}

/// A matrix entry: short name and the apt package-name pattern.
struct Series {
    name: &'static str,
    /// Package names are `<prefix><n><suffix>`; the newest `n` wins.
    prefix: &'static str,
    suffix: &'static str,
    /// `None`: the machine's own apt sources; else a private configuration.
    suite: Option<&'static str>,
    /// Prefix replacements naming packages to extract beside the image
    /// (`linux-binary-unsigned-` -> `linux-modules-`).
    companions: &'static [(&'static str, &'static str)],
    stack: &'static str,
}

const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64-unsigned",
        suite: Some("bullseye"),
        companions: &[],
        stack: "bookworm",
    },
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64-unsigned",
        suite: None,
        companions: &[],
        stack: "bookworm",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
        suite: None,
        companions: &[],
        stack: "bookworm",
    },
    Series {
        name: "7.2",
        prefix: "linux-binary-unsigned-7.2.",
        suffix: "+deb14-amd64",
        suite: Some("sid"),
        companions: &[("linux-binary-unsigned-", "linux-modules-")],
        stack: "sid",
    },
];

/// The names of the matrix, for messages.
pub fn names() -> String {
    SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

pub fn vm_dir() -> PathBuf {
    util::build_dir().join("vm")
}

fn matrix_file() -> PathBuf {
    vm_dir().join("kernels.json")
}

/// The recorded matrix, without touching the network.
pub fn load() -> Result<Vec<Kernel>> {
    let path = matrix_file();
    let text = fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `cargo xtask setup`)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Picks kernels by name: "6.1", "6.12" or "all".
pub fn select(spec: &str) -> Result<Vec<Kernel>> {
    let all = ensure()?;
    let picked: Vec<Kernel> = all
        .into_iter()
        .filter(|k| spec == "all" || k.name == spec)
        .collect();
    for k in &picked {
        crate::stacks::ensure(&k.stack)?;
    }
    if !picked.is_empty() {
        crate::stacks::ensure_dind_image()?;
    }
    if picked.is_empty() {
        bail!("unknown kernel {spec:?}: expected one of {}, all", names());
    }
    Ok(picked)
}

/// Newest package of a series among the configured apt sources.
fn newest_package(series: &Series) -> Result<Option<String>> {
    let pattern = format!(
        "^{}[0-9]+{}$",
        series.prefix.replace('.', r"\."),
        series.suffix.replace('.', r"\.").replace('+', r"\+")
    );
    let names: Vec<String> = match series.suite {
        None => output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
        Some(suite) => PrivateApt::new(suite).search(&pattern)?,
    };
    let mut best: Option<(u64, String)> = None;
    for name in &names {
        let Some(n) = name
            .strip_prefix(series.prefix)
            .and_then(|r| r.strip_suffix(series.suffix))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, name.to_string()));
        }
    }
    Ok(best.map(|(_, name)| name))
}

/// Where a kernel's packages come from and what the VM boots with it.
struct Origin<'a> {
    name: &'a str,
    suite: Option<&'a str>,
    companions: Vec<String>,
    stack: &'a str,
}

impl<'a> Origin<'a> {
    fn of_series(series: &'a Series, package: &str) -> Self {
        Origin {
            name: series.name,
            suite: series.suite,
            companions: series
                .companions
                .iter()
                .filter_map(|(from, to)| {
                    package.strip_prefix(from).map(|rest| format!("{to}{rest}"))
                })
                .collect(),
            stack: series.stack,
        }
    }

    fn of_kernel(k: &'a Kernel) -> Self {
        Origin {
            name: &k.name,
            suite: k.suite.as_deref(),
            companions: k.companions.clone(),
            stack: &k.stack,
        }
    }
}

/// The downloaded `.deb` of `package` (at `version` when given).
fn existing_deb(debs: &Path, package: &str, version: Option<&str>) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let ver = version.map(|v| v.replace(':', "%3a"));
    let mut found = None;
    for entry in fs::read_dir(debs)? {
        let p = entry?.path();
        let fname = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if fname.starts_with(&prefix)
            && fname.ends_with(".deb")
            && ver
                .as_ref()
                .is_none_or(|v| fname.contains(&format!("_{v}_")))
        {
            found = Some(p);
        }
    }
    Ok(found)
}

/// Downloads (if needed) and extracts one kernel's packages; returns the kernel.
fn fetch(origin: &Origin, package: &str, version: Option<&str>) -> Result<Kernel> {
    let debs = vm_dir().join("debs");
    fs::create_dir_all(&debs)?;
    let packages: Vec<&str> = std::iter::once(package)
        .chain(origin.companions.iter().map(String::as_str))
        .collect();
    let mut files = Vec::new();
    for pkg in &packages {
        let deb = match existing_deb(&debs, pkg, version)? {
            Some(deb) if version.is_some() => deb,
            _ => {
                let spec = match version {
                    Some(v) => format!("{pkg}={v}"),
                    None => pkg.to_string(),
                };
                println!(
                    "kernels: downloading {spec}{}",
                    origin
                        .suite
                        .map(|s| format!(" from {s} (private apt configuration)"))
                        .unwrap_or_default()
                );
                let started = std::time::Instant::now();
                match origin.suite {
                    None => run(Command::new("apt-get")
                        .args(["download", "-q", &spec])
                        .current_dir(&debs))?,
                    Some(suite) => {
                        PrivateApt::new(suite).download(std::slice::from_ref(&spec), &debs)?
                    }
                }
                println!(
                    "kernels: downloaded {spec} in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                existing_deb(&debs, pkg, version)?
                    .with_context(|| format!("apt-get download left no .deb for {pkg}"))?
            }
        };
        files.push(deb);
    }
    let version = output(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(&files[0])
            .arg("Version"),
    )?
    .trim()
    .to_string();
    // Extract into a scratch dir, then name it after the kernel release.
    let scratch = vm_dir().join("kernels").join(format!(".extract-{package}"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&scratch)?;
    for deb in &files {
        run(Command::new("dpkg").arg("-x").arg(deb).arg(&scratch))?;
    }
    // Merged-/usr packages (sid): modules under usr/lib/modules. A `lib`
    // link keeps one layout for depmod, the initramfs and the guest.
    if !scratch.join("lib").exists() && scratch.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", scratch.join("lib"))?;
    }
    let mods = scratch.join("lib/modules");
    let release = fs::read_dir(&mods)
        .with_context(|| format!("{} has no lib/modules", files[0].display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{} has no kernel release dir", files[0].display()))?;
    let kernel = Kernel {
        name: origin.name.to_string(),
        package: package.to_string(),
        version,
        release,
        suite: origin.suite.map(str::to_string),
        companions: origin.companions.clone(),
        stack: origin.stack.to_string(),
    };
    let root = kernel.root();
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::rename(&scratch, &root)?;
    // Debian generates modules.dep at install time; do it here so that
    // modprobe works in the guest (where this tree is bound on /lib/modules).
    run(Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(&kernel.release))?;
    println!(
        "kernels: extracted {} {} into {}",
        kernel.package,
        kernel.version,
        root.display()
    );
    Ok(kernel)
}

/// Makes sure the matrix is recorded and extracted. Offline and quick when
/// it already is; a series not yet recorded is resolved (newest package of
/// its suite) and downloaded, the recorded ones stay as they are.
pub fn ensure() -> Result<Vec<Kernel>> {
    let recorded = load().unwrap_or_default();
    let mut all = Vec::new();
    let mut changed = false;
    for series in SERIES {
        if let Some(k) = recorded.iter().find(|k| k.name == series.name) {
            if k.is_extracted() {
                all.push(k.clone());
            } else {
                changed = true;
                all.push(fetch(&Origin::of_kernel(k), &k.package, Some(&k.version))?);
            }
            continue;
        }
        changed = true;
        let mut package = newest_package(series)?;
        if package.is_none() {
            match series.suite {
                None => run(Command::new("apt-get").arg("update"))?,
                Some(suite) => PrivateApt::new(suite).update(true)?,
            }
            package = newest_package(series)?;
        }
        let package = package.with_context(|| {
            format!(
                "no {}<n>{} package in the apt sources{}",
                series.prefix,
                series.suffix,
                series.suite.map(|s| format!(" of {s}")).unwrap_or_default()
            )
        })?;
        all.push(fetch(&Origin::of_series(series, &package), &package, None)?);
    }
    if changed {
        save(&all)?;
    } else {
        println!("kernels: skipped (recorded in {})", matrix_file().display());
    }
    Ok(all)
}

fn save(all: &[Kernel]) -> Result<()> {
    fs::create_dir_all(vm_dir())?;
    let text = serde_json::to_string_pretty(all)?;
    fs::write(matrix_file(), text + "\n")?;
    println!("kernels: recorded {}", matrix_file().display());
    Ok(())
}
