//! Container views of `/proc` and `/sys` files, LXCFS-style but with plain
//! files: the container's `/proc/meminfo`, `uptime`, `cpuinfo`, `stat`,
//! `loadavg`, `swaps`, `diskstats` and `/sys/devices/system/cpu/online`
//! ([`View`] lists them) show files the agent re-renders every second from
//! the container's cgroup, tasks and start time.
//!
//! Whole reads: each /proc file is a symlink (eci-runc mounts one over it)
//! into [`SHOWN_IN_CONTAINER`], where eci-runc binds the container's
//! `shown` directory read-only. A new render is written into the view's
//! standby file, then exchanged with the shown one in one `renameat2`:
//! nothing is ever written into a file an open can find, and an open keeps
//! its one whole render until the second render after it (renders are a
//! second apart at least: a reader has that long). A descriptor kept open
//! and read again from offset 0 (procps `top`, `free -s`) sees its file
//! rewritten when it is the standby: at most one render late, and a read
//! of it racing that rewrite is the one read that can still mix two renders
//! (a file of its own per render would leave such a reader a stale one).
//!
//! - [`ContainerViews`]: one container's directory (`prepare`, `start`,
//!   `refresh`, `remove`).
//! - [`Refresher`]: what the agent runs every second.
//! - [`source`]: where a container's numbers come from (`view.json`),
//!   resolved from its init's `/proc/<pid>/cgroup`.
//! - [`meminfo`] (and swaps), [`uptime`], [`cpus`] (online, cpuinfo),
//!   [`stat`], [`loadavg`], [`diskstats`], [`tasks`]: reading the cgroup
//!   files and rendering.

pub mod cpus;
pub mod diskstats;
pub mod loadavg;
pub mod meminfo;
pub mod source;
pub mod stat;
pub mod tasks;
pub mod uptime;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::unix::fs::{FileExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use loadavg::LoadAverage;

pub use source::{CgroupDir, CgroupVersion, ViewSource};

/// Where the views live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/run/eci/views";
/// The environment variable eci-runc reads the views root from.
pub const ROOT_ENV: &str = "ECI_VIEWS_DIR";

const DESCRIPTION: &str = "view.json";

/// Where a container finds its views' shown files: eci-runc binds the
/// container's `shown` directory here, read-only; the symlinks it mounts
/// over the /proc and /sys files point into it. runc makes the directory in
/// the container's own /dev (a tmpfs): nothing of the image changes.
pub const SHOWN_IN_CONTAINER: &str = "/dev/.eci";

const SHOWN: &str = "shown";
const STANDBY: &str = "standby";
const LINKS: &str = "links";

/// A file a container sees through eci.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum View {
    Meminfo,
    Uptime,
    Cpuinfo,
    Stat,
    Loadavg,
    Swaps,
    Diskstats,
    CpuOnline,
}

impl View {
    pub const ALL: [View; 8] = [
        View::Meminfo,
        View::Uptime,
        View::Cpuinfo,
        View::Stat,
        View::Loadavg,
        View::Swaps,
        View::Diskstats,
        View::CpuOnline,
    ];

    /// Its number, the same on the kernel side.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Its file's name in a container's views directory.
    pub const fn file_name(self) -> &'static str {
        match self {
            View::Meminfo => "meminfo",
            View::Uptime => "uptime",
            View::Cpuinfo => "cpuinfo",
            View::Stat => "stat",
            View::Loadavg => "loadavg",
            View::Swaps => "swaps",
            View::Diskstats => "diskstats",
            View::CpuOnline => "online",
        }
    }

    /// The file of the container it stands in for.
    pub const fn target(self) -> &'static str {
        match self {
            View::Meminfo => "/proc/meminfo",
            View::Uptime => "/proc/uptime",
            View::Cpuinfo => "/proc/cpuinfo",
            View::Stat => "/proc/stat",
            View::Loadavg => "/proc/loadavg",
            View::Swaps => "/proc/swaps",
            View::Diskstats => "/proc/diskstats",
            View::CpuOnline => "/sys/devices/system/cpu/online",
        }
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    Written(Rendered),
    /// No `view.json` yet: the container is not registered yet.
    NotStarted,
    /// Its cgroup or its directory is gone; its runtime removes the rest.
    Gone,
}

/// One container's views as rendered (and written) in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub texts: Vec<(View, String)>,
}

/// The host's numbers and texts a render needs, read once per round.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub memory: meminfo::HostMemory,
    pub uptime_seconds: f64,
    pub online: Vec<u32>,
    pub ticks_per_second: u64,
    pub cpuinfo: String,
    pub stat: String,
    pub diskstats: String,
}

impl Host {
    pub fn read() -> Result<Self, ViewsError> {
        Ok(Self {
            memory: meminfo::HostMemory::read(Path::new("/proc/meminfo"))?,
            uptime_seconds: uptime::read_host_uptime(Path::new("/proc/uptime"))?,
            online: cpus::read_online(Path::new("/sys/devices/system/cpu/online"))?,
            ticks_per_second: uptime::ticks_per_second(),
            cpuinfo: read_text(Path::new("/proc/cpuinfo"))?,
            stat: read_text(Path::new("/proc/stat"))?,
            diskstats: read_text(Path::new("/proc/diskstats"))?,
        })
    }
}

/// What lives from one round to the next for a container: its load
/// average, when that is next sampled, and the texts last written (a view
/// whose text did not change is not rewritten: no write a reader could
/// race, and less work; `/proc/cpuinfo` and `online` stay put).
#[derive(Debug, Clone)]
pub struct Carried {
    average: LoadAverage,
    next_sample: Instant,
    written: Vec<String>,
}

impl Carried {
    pub fn new(now: Instant) -> Self {
        Self {
            average: LoadAverage::default(),
            next_sample: now,
            written: vec![String::new(); View::ALL.len()],
        }
    }

    /// Whether `text` differs from what was last written for `view`;
    /// remembers it as written.
    fn changed(&mut self, view: View, text: &str) -> bool {
        let slot = &mut self.written[view.index() as usize];
        if slot == text {
            return false;
        }
        text.clone_into(slot);
        true
    }

    /// Forget what was written (a write failed: write everything again).
    fn forget_written(&mut self) {
        self.written.iter_mut().for_each(String::clear);
    }

    /// Sample `active` tasks if a sample is due (every 5 seconds, as the
    /// kernel does; a late round takes the samples it missed).
    fn update(&mut self, active: u64, now: Instant) {
        let period = Duration::from_secs(loadavg::SAMPLE_SECONDS);
        let mut missed = 0;
        while self.next_sample <= now && missed < 180 {
            self.average.sample(active);
            self.next_sample += period;
            missed += 1;
        }
        if self.next_sample <= now {
            self.next_sample = now + period;
        }
    }
}

/// One container's views: `<root>/<id>/` holds `view.json` (where its
/// numbers come from), `shown/<view>` (what an open finds), `standby/<view>`
/// (the render before, the next one's file) and `links/<view>` (a symlink to
/// `/dev/.eci/<view>`, mounted over the file the view stands in for).
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

    /// The directory bound at [`SHOWN_IN_CONTAINER`].
    pub fn shown_dir(&self) -> PathBuf {
        self.dir.join(SHOWN)
    }

    /// The file of `view` an open finds now.
    pub fn file(&self, view: View) -> PathBuf {
        self.shown_dir().join(view.file_name())
    }

    fn standby(&self, view: View) -> PathBuf {
        self.dir.join(STANDBY).join(view.file_name())
    }

    /// The symlink of `view`, to mount (itself) over its target.
    pub fn link(&self, view: View) -> PathBuf {
        self.dir.join(LINKS).join(view.file_name())
    }

    pub fn meminfo(&self) -> PathBuf {
        self.file(View::Meminfo)
    }

    pub fn uptime(&self) -> PathBuf {
        self.file(View::Uptime)
    }

    pub fn description(&self) -> PathBuf {
        self.dir.join(DESCRIPTION)
    }

    /// The file each view stands in for, with its symlink.
    pub fn links(&self) -> Vec<(&'static str, PathBuf)> {
        View::ALL
            .iter()
            .map(|&view| (view.target(), self.link(view)))
            .collect()
    }

    /// Create the directories (0755) with empty shown and standby files
    /// (0644) and the symlinks, ready to be bound and mounted; a description
    /// left by an earlier container of the same id is dropped, so nothing
    /// renders until [`Self::start`].
    pub fn prepare(&self) -> Result<(), ViewsError> {
        let dirs = [
            self.root.clone(),
            self.dir.clone(),
            self.shown_dir(),
            self.dir.join(STANDBY),
            self.dir.join(LINKS),
        ];
        for dir in &dirs {
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
        for view in View::ALL {
            for file in [self.file(view), self.standby(view)] {
                std::fs::write(&file, b"").map_err(ViewsError::io("creating", &file))?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
                    .map_err(ViewsError::io("setting the mode of", &file))?;
            }
            let link = self.link(view);
            match std::fs::remove_file(&link) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ViewsError::io("removing", &link)(e));
                }
                _ => {}
            }
            let points_to = Path::new(SHOWN_IN_CONTAINER).join(view.file_name());
            std::os::unix::fs::symlink(&points_to, &link)
                .map_err(ViewsError::io("making the symlink", &link))?;
        }
        Ok(())
    }

    /// Show `text` as `view`: written into the standby file, which is then
    /// exchanged with the shown one (see the crate's documentation).
    fn show(&self, view: View, text: &str) -> Result<(), ViewsError> {
        let standby = self.standby(view);
        write_in_place(&standby, text)?;
        exchange(&standby, &self.file(view))
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
        let mut carried = Carried::new(Instant::now());
        self.render(&source, &Host::read()?, &mut carried, Instant::now())
            .map(drop)
    }

    /// Re-render both views from the description, if there is one and the
    /// container's cgroup still exists.
    pub fn refresh(
        &self,
        host: &Host,
        carried: &mut Carried,
        now: Instant,
    ) -> Result<Refreshed, ViewsError> {
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
        match self.render(&source, host, carried, now) {
            Ok(rendered) => Ok(Refreshed::Written(rendered)),
            Err(e) if gone() || (e.is_not_found() && !self.meminfo().exists()) => {
                Ok(Refreshed::Gone)
            }
            Err(e) => Err(e),
        }
    }

    /// Render every view and write it in place.
    fn render(
        &self,
        source: &ViewSource,
        host: &Host,
        carried: &mut Carried,
        now: Instant,
    ) -> Result<Rendered, ViewsError> {
        let texts = render_views(source, host, carried, now)?;
        for (view, text) in &texts {
            if carried.changed(*view, text)
                && let Err(e) = self.show(*view, text)
            {
                carried.forget_written();
                return Err(e);
            }
        }
        Ok(Rendered { texts })
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

/// Swap two files' names in one step (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> Result<(), ViewsError> {
    let c = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            ViewsError::io("exchanging", path)(io::Error::from(io::ErrorKind::InvalidInput))
        })
    };
    let (from, to) = (c(a)?, c(b)?);
    // SAFETY: two valid C strings; a plain syscall.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(ViewsError::io(
            "exchanging (renameat2 RENAME_EXCHANGE: the views directory needs a file system that has it, such as tmpfs) with its standby",
            b,
        )(io::Error::last_os_error()));
    }
    Ok(())
}

/// Replace a file's content keeping its inode (a standby file a descriptor
/// kept open may still read): no rename, no `O_TRUNC`; written at offset 0,
/// then cut to length. The file must exist: a removed container's is never
/// recreated.
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

/// Every view of the container `source` describes.
pub fn render_views(
    source: &ViewSource,
    host: &Host,
    carried: &mut Carried,
    now: Instant,
) -> Result<Vec<(View, String)>, ViewsError> {
    let memory = meminfo::ContainerMemory::read(&source.memory)?;
    let cpu = cpus::ContainerCpu::read(source, &host.online, host.ticks_per_second)?;
    let tasks = tasks::TaskCounts::read(&source.memory, Path::new("/proc"))?;
    let io = match &source.io {
        Some(cgroup) => diskstats::read(cgroup)?,
        None => diskstats::ContainerIo::new(),
    };
    carried.update(tasks.running + tasks.blocked, now);
    let up = uptime::container_seconds(
        host.uptime_seconds,
        source.start_ticks,
        host.ticks_per_second,
    );
    let stat_inputs = stat::StatInputs {
        cpu: &cpu,
        tasks: &tasks,
        uptime: up,
        ticks_per_second: host.ticks_per_second,
    };
    Ok(View::ALL
        .iter()
        .map(|&view| {
            let text = match view {
                View::Meminfo => meminfo::render(&host.memory, &memory),
                View::Uptime => uptime::render(up, &cpu),
                View::Cpuinfo => cpus::render_cpuinfo(&host.cpuinfo, &cpu.visible),
                View::Stat => stat::render(&host.stat, &stat_inputs),
                View::Loadavg => carried.average.render(&tasks),
                View::Swaps => meminfo::render_swaps(&host.memory, &memory),
                View::Diskstats => diskstats::render(&host.diskstats, &io),
                View::CpuOnline => cpus::format_list(&cpu.visible),
            };
            (view, text)
        })
        .collect())
}

/// A round of [`Refresher::refresh_all`].
#[derive(Debug, Default)]
pub struct Round {
    /// Per container id, what was rendered.
    pub rendered: Vec<(String, Rendered)>,
    /// Containers whose cgroup or directory went away.
    pub gone: Vec<String>,
    /// One per container that failed.
    pub errors: Vec<ViewsError>,
}

/// Re-renders every container's views under a root; keeps what is
/// carried from one round to the next ([`Carried`]).
#[derive(Debug)]
pub struct Refresher {
    root: PathBuf,
    carried: HashMap<String, Carried>,
}

impl Refresher {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            carried: HashMap::new(),
        }
    }

    /// Re-render the views of every container under the root. A container
    /// whose cgroup is gone is reported as gone, not as an error (a missing
    /// root means no containers yet).
    pub fn refresh_all(&mut self) -> Round {
        let mut round = Round::default();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.carried.clear();
                return round;
            }
            Err(e) => {
                round.errors.push(ViewsError::io("listing", &self.root)(e));
                return round;
            }
        };
        let host = match Host::read() {
            Ok(host) => host,
            Err(e) => {
                round.errors.push(e);
                return round;
            }
        };
        let now = Instant::now();
        let mut seen = Vec::new();
        for entry in entries.flatten() {
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let name = entry.file_name();
            let Some(id) = name.to_str().filter(|_| is_dir) else {
                continue;
            };
            let carried = self
                .carried
                .entry(id.to_owned())
                .or_insert_with(|| Carried::new(now));
            let refreshed = ContainerViews::new(&self.root, id)
                .and_then(|views| views.refresh(&host, carried, now));
            match refreshed {
                Ok(Refreshed::Written(rendered)) => {
                    seen.push(id.to_owned());
                    round.rendered.push((id.to_owned(), rendered));
                }
                Ok(Refreshed::NotStarted) => seen.push(id.to_owned()),
                Ok(Refreshed::Gone) => round.gone.push(id.to_owned()),
                Err(e) => {
                    seen.push(id.to_owned());
                    round.errors.push(e);
                }
            }
        }
        self.carried.retain(|id, _| seen.contains(id));
        round
    }
}

/// A source whose every cgroup is `dir`, for tests.
#[cfg(test)]
pub(crate) fn test_source(dir: CgroupDir, cgroup2: Option<PathBuf>) -> ViewSource {
    ViewSource {
        memory: dir.clone(),
        cpu_usage: Some(dir.clone()),
        cpu_limit: Some(dir.clone()),
        cpuset: Some(dir.clone()),
        io: Some(dir),
        cgroup2,
        start_ticks: 0,
    }
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
            Path::new("/run/eci/views/abc-1.2_x/shown/meminfo")
        );
        assert_eq!(
            views.link(View::CpuOnline),
            Path::new("/run/eci/views/abc-1.2_x/links/online")
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
        let round = Refresher::new(tmp.path().join("views")).refresh_all();
        assert!(round.errors.is_empty() && round.rendered.is_empty() && round.gone.is_empty());
        assert_eq!(std::fs::read_to_string(views.uptime()).unwrap(), "");
        views.remove().unwrap();
        assert!(!views.dir().exists());
        views.remove().unwrap();
        // A removed container's file is never recreated.
        assert!(write_in_place(&views.meminfo(), "x").is_err());
    }

    #[test]
    fn an_open_keeps_one_whole_render_and_a_kept_descriptor_is_at_most_one_render_late() {
        use std::io::{Read, Seek};
        let tmp = tempfile::tempdir().unwrap();
        let views = ContainerViews::new(&tmp.path().join("views"), "c1").unwrap();
        views.prepare().unwrap();
        let link = std::fs::read_link(views.link(View::Stat)).unwrap();
        assert_eq!(link, Path::new("/dev/.eci/stat"));
        let read_again = |file: &mut std::fs::File| {
            let mut text = String::new();
            file.rewind().unwrap();
            file.read_to_string(&mut text).unwrap();
            text
        };
        views.show(View::Stat, "render 1, a long one\n").unwrap();
        let mut kept = std::fs::File::open(views.file(View::Stat)).unwrap();
        assert_eq!(read_again(&mut kept), "render 1, a long one\n");
        // A new render goes to another file: what was opened stays whole.
        views.show(View::Stat, "render 2\n").unwrap();
        assert_eq!(read_again(&mut kept), "render 1, a long one\n");
        assert_eq!(
            std::fs::read_to_string(views.file(View::Stat)).unwrap(),
            "render 2\n"
        );
        // The next lands in the kept file again.
        views.show(View::Stat, "render 3\n").unwrap();
        assert_eq!(read_again(&mut kept), "render 3\n");
        assert_eq!(
            std::fs::read_to_string(views.file(View::Stat)).unwrap(),
            "render 3\n"
        );
        // An earlier container's directory of the same id is made again.
        views.prepare().unwrap();
        assert_eq!(std::fs::read_to_string(views.file(View::Stat)).unwrap(), "");
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
            cpuset: None,
            io: None,
            cgroup2: None,
            start_ticks: 1,
        };
        std::fs::write(views.description(), serde_json::to_string(&source).unwrap()).unwrap();
        let now = Instant::now();
        assert_eq!(
            views
                .refresh(&Host::read().unwrap(), &mut Carried::new(now), now)
                .unwrap(),
            Refreshed::Gone
        );
        let round = Refresher::new(&root).refresh_all();
        assert!(round.errors.is_empty(), "{:?}", round.errors);
        assert_eq!(round.gone, vec!["c1".to_owned()]);
        assert!(
            Refresher::new(tmp.path().join("no-root"))
                .refresh_all()
                .errors
                .is_empty()
        );
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
        let now = Instant::now();
        let refreshed = views.refresh(&host, &mut Carried::new(now), now).unwrap();
        let Refreshed::Written(rendered) = refreshed else {
            panic!("{refreshed:?}");
        };
        assert_eq!(rendered.texts.len(), View::ALL.len());
        let online = std::fs::read_to_string(views.file(View::CpuOnline)).unwrap();
        assert!(
            cpus::parse_list(&online).is_some_and(|c| !c.is_empty()),
            "{online:?}"
        );
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
        let source = test_source(dir, Some(cgroup.clone()));
        std::fs::write(views.description(), serde_json::to_string(&source).unwrap()).unwrap();
        let round = Refresher::new(&root).refresh_all();
        assert!(round.errors.is_empty(), "{:?}", round.errors);
        assert_eq!(round.rendered.len(), 1);
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
        // A view whose text did not change is not written again.
        let mut refresher = Refresher::new(&root);
        assert!(refresher.refresh_all().errors.is_empty());
        let online = views.file(View::CpuOnline);
        let inode = std::fs::metadata(&online).unwrap().ino();
        write_in_place(&online, "marker\n").unwrap();
        std::fs::write(cgroup.join("memory.current"), "2097152\n").unwrap();
        assert!(refresher.refresh_all().errors.is_empty());
        assert_eq!(std::fs::read_to_string(&online).unwrap(), "marker\n");
        assert_eq!(std::fs::metadata(&online).unwrap().ino(), inode);
        let meminfo = std::fs::read_to_string(views.meminfo()).unwrap();
        assert_eq!(
            meminfo::kb_value(&meminfo, "MemFree"),
            Some(63488),
            "{meminfo}"
        );
    }
}
