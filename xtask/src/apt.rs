//! Debian suites other than the machine's own (bullseye for Linux 5.10, sid
//! for Linux 7.2 and the newest engine stack), reached through a private apt
//! configuration under `build/vm/apt/<suite>/`: the machine's sources, lists
//! and cache are never touched, so the host stays Debian 12.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::util::{self, output, run};

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The Debian mirror the machine's own sources use (the first `URIs:` or
/// `deb` entry that is not the security archive).
pub fn mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            let name = p.to_string_lossy().into_owned();
            if (name.ends_with(".sources") || name.ends_with(".list"))
                && let Ok(t) = fs::read_to_string(&p)
            {
                texts.push(t);
            }
        }
    }
    for text in texts {
        for line in text.lines().map(str::trim) {
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if line.starts_with("deb ") {
                line.split_whitespace()
                    .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            } else {
                None
            };
            if let Some(uri) = uri
                && uri.trim_end_matches('/').ends_with("/debian")
            {
                return uri.trim_end_matches('/').to_string();
            }
        }
    }
    DEFAULT_MIRROR.to_string()
}

/// One suite reached through its own apt configuration.
pub struct PrivateApt {
    suite: String,
    dir: PathBuf,
}

impl PrivateApt {
    pub fn new(suite: &str) -> Self {
        PrivateApt {
            suite: suite.to_string(),
            dir: util::build_dir().join("vm/apt").join(suite),
        }
    }

    /// The `-o` options that point apt at this suite only. sid's Release
    /// file on the mirrors reached here is past its Valid-Until date.
    pub fn options(&self) -> Vec<String> {
        let d = &self.dir;
        vec![
            "-o".into(),
            format!("Dir::Etc::sourcelist={}", d.join("sources.list").display()),
            "-o".into(),
            "Dir::Etc::sourceparts=/dev/null".into(),
            "-o".into(),
            format!("Dir::State::Lists={}", d.join("lists").display()),
            "-o".into(),
            format!("Dir::Cache={}", d.join("cache").display()),
            "-o".into(),
            "Acquire::Check-Valid-Until=false".into(),
        ]
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false)
    }

    /// `apt-get update` for this suite (once; `force` to refresh).
    pub fn update(&self, force: bool) -> Result<()> {
        if self.has_lists() && !force {
            return Ok(());
        }
        fs::create_dir_all(self.dir.join("lists/partial"))?;
        fs::create_dir_all(self.dir.join("cache/archives/partial"))?;
        fs::write(
            self.dir.join("sources.list"),
            format!(
                "deb [signed-by={KEYRING}] {} {} main\n",
                mirror(),
                self.suite
            ),
        )?;
        println!("apt: updating the private lists of {}", self.suite);
        run(Command::new("apt-get")
            .args(self.options())
            .args(["update", "-q"]))
        .with_context(|| format!("apt-get update for {} (private configuration)", self.suite))
    }

    /// Package names matching an `apt-cache search --names-only` pattern.
    pub fn search(&self, pattern: &str) -> Result<Vec<String>> {
        self.update(false)?;
        let text = output(Command::new("apt-cache").args(self.options()).args([
            "search",
            "--names-only",
            pattern,
        ]))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// `apt-get download` of `specs` (`name` or `name=version`) into `dest`.
    pub fn download(&self, specs: &[String], dest: &Path) -> Result<()> {
        self.update(false)?;
        fs::create_dir_all(dest)?;
        run(Command::new("apt-get")
            .args(self.options())
            .args(["download", "-q"])
            .args(specs)
            .current_dir(dest))
    }
}
