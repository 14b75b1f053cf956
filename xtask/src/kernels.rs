//! The VM kernel matrix: Debian kernel packages, downloaded with
//! `apt-get download` and extracted with `dpkg -x` under `build/vm/`
//! (never installed). The chosen versions are recorded in
//! `build/vm/kernels.json` so later runs are stable and need no network.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

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
}

impl Kernel {
    /// The extracted package tree (contains `boot/` and `lib/modules/`).
    pub fn root(&self) -> PathBuf {
        vm_dir().join("kernels").join(&self.release)
    }
    pub fn vmlinuz(&self) -> PathBuf {
        self.root()
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
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
}

const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64-unsigned",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
    },
];

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
    if spec == "all" {
        return Ok(all);
    }
    let picked: Vec<Kernel> = all.into_iter().filter(|k| k.name == spec).collect();
    if picked.is_empty() {
        bail!("unknown kernel {spec:?}: expected one of 6.1, 6.12, all");
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
    let text = output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?;
    let mut best: Option<(u64, String)> = None;
    for line in text.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
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

/// Downloads (if needed) and extracts one package version; returns the kernel.
fn fetch(name: &str, package: &str, version: Option<&str>) -> Result<Kernel> {
    let debs = vm_dir().join("debs");
    fs::create_dir_all(&debs)?;
    let existing = |debs: &Path| -> Result<Option<PathBuf>> {
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
    };
    let deb = match existing(&debs)? {
        Some(deb) if version.is_some() => deb,
        _ => {
            let spec = match version {
                Some(v) => format!("{package}={v}"),
                None => package.to_string(),
            };
            println!("kernels: downloading {spec}");
            let started = std::time::Instant::now();
            run(Command::new("apt-get")
                .args(["download", "-q", &spec])
                .current_dir(&debs))?;
            println!(
                "kernels: downloaded {spec} in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            existing(&debs)?
                .with_context(|| format!("apt-get download left no .deb for {package}"))?
        }
    };
    let version = output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
        .trim()
        .to_string();
    // Extract into a scratch dir, then name it after the kernel release.
    let scratch = vm_dir().join("kernels").join(format!(".extract-{package}"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&scratch)?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&scratch))?;
    let mods = scratch.join("lib/modules");
    let release = fs::read_dir(&mods)
        .with_context(|| format!("{} has no lib/modules", deb.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{} has no kernel release dir", deb.display()))?;
    let kernel = Kernel {
        name: name.to_string(),
        package: package.to_string(),
        version,
        release,
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
/// it already is; otherwise resolves the newest packages and downloads them.
pub fn ensure() -> Result<Vec<Kernel>> {
    if let Ok(recorded) = load()
        && recorded.len() == SERIES.len()
    {
        let mut all = Vec::new();
        let mut changed = false;
        for k in recorded {
            if k.is_extracted() {
                all.push(k);
            } else {
                changed = true;
                all.push(fetch(&k.name, &k.package, Some(&k.version))?);
            }
        }
        if changed {
            save(&all)?;
        } else {
            println!("kernels: skipped (recorded in {})", matrix_file().display());
        }
        return Ok(all);
    }
    let mut all = Vec::new();
    for series in SERIES {
        let mut package = newest_package(series)?;
        if package.is_none() {
            run(Command::new("apt-get").arg("update"))?;
            package = newest_package(series)?;
        }
        let package = package.with_context(|| {
            format!(
                "no {}<n>{} package in the apt sources",
                series.prefix, series.suffix
            )
        })?;
        all.push(fetch(series.name, &package, None)?);
    }
    save(&all)?;
    Ok(all)
}

fn save(all: &[Kernel]) -> Result<()> {
    fs::create_dir_all(vm_dir())?;
    let text = serde_json::to_string_pretty(all)?;
    fs::write(matrix_file(), text + "\n")?;
    println!("kernels: recorded {}", matrix_file().display());
    Ok(())
}
