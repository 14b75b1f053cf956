//! Container views of `/proc/meminfo` and `/proc/uptime`, LXCFS-style but
//! with plain files: eci-runc binds `<root>/<container-id>/meminfo` and
//! `uptime` read-only over the container's `/proc` files, and the agent
//! re-renders them every second from the container's cgroup and start time.
//!
//! - [`ContainerViews`]: one container's directory (`prepare`, `start`,
//!   `refresh`, `remove`).
//! - [`refresh_all`]: what the agent calls every second.
//! - [`source`]: where a container's numbers come from (`view.json`),
//!   resolved from its init's `/proc/<pid>/cgroup`.
//! - [`meminfo`], [`uptime`]: reading the cgroup files and rendering.

pub mod meminfo;
pub mod source;
pub mod uptime;

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::{FileExt, PermissionsExt},
    path::{Path, PathBuf},
};

pub use source::{CgroupDir, CgroupVersion, ViewSource};

/// Where the views live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/run/eci/views";
/// The environment variable eci-runc reads the views root from.
pub const ROOT_ENV: &str = "ECI_VIEWS_DIR";

const MEMINFO: &str = "meminfo";
const UPTIME: &str = "uptime";
const DESCRIPTION: &str = "view.json";

#[derive(Debug, thiserror::Error)]
pub enum ViewsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{path}: unexpected content ({why}): {content:?}")]
    Parse {
        path: String,
        why: &'static str,
        content: String,
    },
    #[error("{path}: {source}")]
    Description {
        path: String,
        source: serde_json::Error,
    },
    #[error("container init {pid}: {why}")]
    Resolve { pid: u32, why: String },
    #[error("{0:?} is not a usable container id for a views directory")]
    ContainerId(String),
}

impl ViewsError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ViewsError {
        let path = path.display().to_string();
        move |source| ViewsError::Io { what, path, source }
    }

    fn parse(path: &Path, why: &'static str, content: &str) -> ViewsError {
        ViewsError::Parse {
            path: path.display().to_string(),
            why,
            content: content.chars().take(200).collect(),
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, ViewsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The views root: `ECI_VIEWS_DIR`, else [`DEFAULT_ROOT`].
pub fn root_from_env() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_ROOT.into())
}

pub(crate) fn read_text(path: &Path) -> Result<String, ViewsError> {
    std::fs::read_to_string(path).map_err(ViewsError::io("reading", path))
}

/// `Ok(None)` for a file that does not exist (a feature the kernel lacks).
pub(crate) fn optional<T>(read: Result<T, ViewsError>) -> Result<Option<T>, ViewsError> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn read_number(path: &Path) -> Result<u64, ViewsError> {
    let text = read_text(path)?;
    text.trim()
        .parse()
        .map_err(|_| ViewsError::parse(path, "expected a number", &text))
}

/// A v2 limit: a number, or `max` for none.
pub(crate) fn read_limit(path: &Path) -> Result<Option<u64>, ViewsError> {
    let text = read_text(path)?;
    match text.trim() {
        "max" => Ok(None),
        number => number
            .parse()
            .map(Some)
            .map_err(|_| ViewsError::parse(path, "expected a number or max", &text)),
    }
}

/// `name value` lines; other lines are not ours to judge and are skipped.
pub(crate) fn read_stat(path: &Path) -> Result<BTreeMap<String, u64>, ViewsError> {
    Ok(parse_stat(&read_text(path)?))
}

pub(crate) fn parse_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// What a refresh did for one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    Written,
    /// No `view.json` yet: the container is not registered yet.
    NotStarted,
    /// Its cgroup or its directory is gone; its runtime removes the rest.
    Gone,
}

/// The host's numbers a render needs, read once per refresh round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Host {
    pub memory: meminfo::HostMemory,
    pub uptime_seconds: f64,
    pub online_cpus: f64,
    pub ticks_per_second: u64,
}

impl Host {
    pub fn read() -> Result<Self, ViewsError> {
        Ok(Self {
            memory: meminfo::HostMemory::read(Path::new("/proc/meminfo"))?,
            uptime_seconds: uptime::read_host_uptime(Path::new("/proc/uptime"))?,
            online_cpus: uptime::online_cpus(),
            ticks_per_second: uptime::ticks_per_second(),
        })
    }
}

/// One container's views: `<root>/<id>/{meminfo,uptime,view.json}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerViews {
    root: PathBuf,
    dir: PathBuf,
}

impl ContainerViews {
    /// Refuses ids that are not a single plain path component.
    pub fn new(root: &Path, container_id: &str) -> Result<Self, ViewsError> {
        let plain = !container_id.is_empty()
            && container_id != "."
            && container_id != ".."
            && !container_id.contains(['/', '\0']);
        if !plain {
            return Err(ViewsError::ContainerId(container_id.to_owned()));
        }
        Ok(Self {
            root: root.to_path_buf(),
            dir: root.join(container_id),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meminfo(&self) -> PathBuf {
        self.dir.join(MEMINFO)
    }

    pub fn uptime(&self) -> PathBuf {
        self.dir.join(UPTIME)
    }

    pub fn description(&self) -> PathBuf {
        self.dir.join(DESCRIPTION)
    }

    /// The `/proc` file each view stands in for, with its file.
    pub fn proc_files(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("/proc/meminfo", self.meminfo()),
            ("/proc/uptime", self.uptime()),
        ]
    }

    /// Create the directory (0755) with empty view files (0644), ready to
    /// be bound; a description left by an earlier container of the same id
    /// is dropped, so nothing renders until [`Self::start`].
    pub fn prepare(&self) -> Result<(), ViewsError> {
        for dir in [&self.root, &self.dir] {
            std::fs::create_dir_all(dir).map_err(ViewsError::io("creating", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(ViewsError::io("setting the mode of", dir))?;
        }
        match std::fs::remove_file(self.description()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ViewsError::io("removing", &self.description())(e));
            }
            _ => {}
        }
        for file in [self.meminfo(), self.uptime()] {
            std::fs::write(&file, b"").map_err(ViewsError::io("creating", &file))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
                .map_err(ViewsError::io("setting the mode of", &file))?;
        }
        Ok(())
    }

    /// Describe where the numbers of the container whose init is `pid`
    /// come from, and render both views once.
    pub fn start(&self, pid: u32) -> Result<(), ViewsError> {
        let source = source::resolve(pid)?;
        let path = self.description();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&source).map_err(|e| ViewsError::Description {
            path: path.display().to_string(),
            source: e,
        })?;
        std::fs::write(&tmp, text).map_err(ViewsError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(ViewsError::io("renaming onto", &path))?;
        self.render(&source, &Host::read()?)
    }

    /// Re-render both views from the description, if there is one and the
    /// container's cgroup still exists.
    pub fn refresh(&self, host: &Host) -> Result<Refreshed, ViewsError> {
        let path = self.description();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(if self.dir.exists() {
                    Refreshed::NotStarted
                } else {
                    Refreshed::Gone
                });
            }
            Err(e) => return Err(ViewsError::io("reading", &path)(e)),
        };
        let source: ViewSource =
            serde_json::from_str(&text).map_err(|e| ViewsError::Description {
                path: path.display().to_string(),
                source: e,
            })?;
        let gone = || !source.memory.dir.exists() || !self.dir.exists();
        if gone() {
            return Ok(Refreshed::Gone);
        }
        match self.render(&source, host) {
            Ok(()) => Ok(Refreshed::Written),
            Err(e) if gone() || (e.is_not_found() && !self.meminfo().exists()) => {
                Ok(Refreshed::Gone)
            }
            Err(e) => Err(e),
        }
    }

    fn render(&self, source: &ViewSource, host: &Host) -> Result<(), ViewsError> {
        let memory = meminfo::ContainerMemory::read(&source.memory)?;
        write_in_place(&self.meminfo(), &meminfo::render(&host.memory, &memory))?;
        let cpu = uptime::ContainerCpu::read(source, host.online_cpus)?;
        let text = uptime::render(
            host.uptime_seconds,
            source.start_ticks,
            host.ticks_per_second,
            &cpu,
        );
        write_in_place(&self.uptime(), &text)
    }

    /// Remove the directory (nothing to do when it is not there).
    pub fn remove(&self) -> Result<(), ViewsError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ViewsError::io("removing", &self.dir)(e))
            }
            _ => Ok(()),
        }
    }
}

/// Replace a view's content keeping its inode (it is bind-mounted into the
/// container): no rename, no `O_TRUNC`; written at offset 0, then cut to
/// length. The file must exist: a removed container's is never recreated.
pub fn write_in_place(path: &Path, content: &str) -> Result<(), ViewsError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(ViewsError::io("opening", path))?;
    file.write_all_at(content.as_bytes(), 0)
        .map_err(ViewsError::io("writing", path))?;
    file.set_len(content.len() as u64)
        .map_err(ViewsError::io("cutting to length", path))
}

/// Re-render the views of every container under `root`. A container whose
/// cgroup is gone is skipped silently; every other failure is returned, one
/// per container (a missing root means no containers yet).
pub fn refresh_all(root: &Path) -> Vec<ViewsError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => return vec![ViewsError::io("listing", root)(e)],
    };
    let host = match Host::read() {
        Ok(host) => host,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let name = entry.file_name();
        let Some(id) = name.to_str().filter(|_| is_dir) else {
            continue;
        };
        let refreshed = ContainerViews::new(root, id).and_then(|views| views.refresh(&host));
        if let Err(e) = refreshed {
            errors.push(e);
        }
    }
    errors
}

/// A cgroup directory of `version` holding `files` (name, text), for tests.
#[cfg(test)]
pub(crate) fn test_cgroup(
    version: CgroupVersion,
    files: &[(&str, &str)],
) -> (tempfile::TempDir, CgroupDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(tmp.path().join(name), text).expect("cgroup file");
    }
    let dir = CgroupDir {
        version,
        dir: tmp.path().to_path_buf(),
    };
    (tmp, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn container_ids_must_be_one_plain_component() {
        let root = Path::new("/run/eci/views");
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(ContainerViews::new(root, bad).is_err(), "{bad:?}");
        }
        let views = ContainerViews::new(root, "abc-1.2_x").unwrap();
        assert_eq!(
            views.meminfo(),
            Path::new("/run/eci/views/abc-1.2_x/meminfo")
        );
    }

    #[test]
    fn prepare_makes_empty_files_and_writes_keep_the_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let views = ContainerViews::new(&tmp.path().join("views"), "c1").unwrap();
        views.prepare().unwrap();
        let meta = std::fs::metadata(views.meminfo()).unwrap();
        assert_eq!(meta.len(), 0);
        assert_eq!(meta.mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::metadata(views.dir()).unwrap().mode() & 0o777,
            0o755
        );
        let inode = meta.ino();
        write_in_place(&views.meminfo(), "a longer first content\n").unwrap();
        write_in_place(&views.meminfo(), "short\n").unwrap();
        assert_eq!(std::fs::read_to_string(views.meminfo()).unwrap(), "short\n");
        assert_eq!(std::fs::metadata(views.meminfo()).unwrap().ino(), inode);
        // Not started: nothing rendered, nothing reported.
        assert!(refresh_all(&tmp.path().join("views")).is_empty());
        assert_eq!(std::fs::read_to_string(views.uptime()).unwrap(), "");
        views.remove().unwrap();
        assert!(!views.dir().exists());
        views.remove().unwrap();
        // A removed container's file is never recreated.
        assert!(write_in_place(&views.meminfo(), "x").is_err());
    }

    #[test]
    fn a_container_whose_cgroup_is_gone_is_skipped_silently() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("views");
        let views = ContainerViews::new(&root, "c1").unwrap();
        views.prepare().unwrap();
        let source = ViewSource {
            memory: CgroupDir {
                version: CgroupVersion::V2,
                dir: tmp.path().join("no-such-cgroup"),
            },
            cpu_usage: None,
            cpu_limit: None,
            start_ticks: 1,
        };
        std::fs::write(views.description(), serde_json::to_string(&source).unwrap()).unwrap();
        assert_eq!(
            views.refresh(&Host::read().unwrap()).unwrap(),
            Refreshed::Gone
        );
        assert!(refresh_all(&root).is_empty());
        assert!(refresh_all(&tmp.path().join("no-root")).is_empty());
    }

    #[test]
    fn start_resolves_and_renders_this_processs_own_cgroup() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if !mountinfo.contains(" - cgroup") {
            println!("SKIP: no cgroup file system mounted here");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let views = ContainerViews::new(tmp.path(), "self").unwrap();
        views.prepare().unwrap();
        views.start(std::process::id()).unwrap();
        let host = Host::read().unwrap();
        let meminfo = std::fs::read_to_string(views.meminfo()).unwrap();
        let total_kb: u64 = meminfo
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().strip_suffix(" kB"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{meminfo}"));
        assert!(
            total_kb > 0 && total_kb <= host.memory.mem_total / 1024,
            "{meminfo}"
        );
        let uptime = std::fs::read_to_string(views.uptime()).unwrap();
        let seconds: f64 = uptime
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{uptime:?}"));
        assert!(
            seconds >= 0.0 && seconds <= host.uptime_seconds,
            "{uptime:?}"
        );
        assert_eq!(views.refresh(&host).unwrap(), Refreshed::Written);
    }

    #[test]
    fn refresh_renders_from_a_v2_cgroup_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = tmp.path().join("cgroup");
        std::fs::create_dir_all(&cgroup).unwrap();
        for (name, text) in [
            ("memory.max", "67108864\n"),
            ("memory.current", "1048576\n"),
            ("memory.stat", "anon 524288\nfile 262144\n"),
            ("cpu.stat", "usage_usec 500000\nuser_usec 1\n"),
            ("cpu.max", "max 100000\n"),
        ] {
            std::fs::write(cgroup.join(name), text).unwrap();
        }
        let root = tmp.path().join("views");
        let views = ContainerViews::new(&root, "c1").unwrap();
        views.prepare().unwrap();
        let dir = CgroupDir {
            version: CgroupVersion::V2,
            dir: cgroup.clone(),
        };
        let source = ViewSource {
            memory: dir.clone(),
            cpu_usage: Some(dir.clone()),
            cpu_limit: Some(dir),
            start_ticks: 0,
        };
        std::fs::write(views.description(), serde_json::to_string(&source).unwrap()).unwrap();
        assert_eq!(refresh_all(&root).len(), 0);
        let meminfo = std::fs::read_to_string(views.meminfo()).unwrap();
        assert!(
            meminfo.starts_with("MemTotal:          65536 kB\nMemFree:           64512 kB\n"),
            "{meminfo}"
        );
        let uptime = std::fs::read_to_string(views.uptime()).unwrap();
        assert!(
            uptime.ends_with('\n') && uptime.split_whitespace().count() == 2,
            "{uptime:?}"
        );
    }
}
