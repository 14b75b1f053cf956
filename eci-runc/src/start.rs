//! runc's `start`, done by eci-runc itself when that is all runc would do
//! (a second Go runc process costs 20–30 ms of a container's start).
//!
//! A created container's init waits in runc's `exec.fifo` (in runc's state
//! directory of the container): it opens it for writing, which blocks until
//! a reader opens it, writes one byte and execs the user's process (the
//! write end closes on exec). runc's `start` (1.1 to 1.5) opens the fifo for
//! reading, reads until end of file, and removes it; it also waits for the
//! container's `sd_notify` when `NOTIFY_SOCKET` is set, and runc 1.4 on runs
//! poststart hooks there. eci-runc does it here only without either (else
//! runc does), and only for the init it recorded at create (pid and start
//! time: a reused pid is never taken for it), watched through a pidfd so
//! an init that dies is noticed. Anything else (no fifo: already started
//! or never created; the init gone) is left to runc's `start`, which says
//! why in its own words.
//!
//! Registration is untouched: it happened at create, before this. A
//! created container that was paused, or whose freezer cannot be read, is
//! left to runc's `start` too (runc refuses to start a paused one).

use std::{
    io::{ErrorKind, Read},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{FileTypeExt, OpenOptionsExt},
    },
    path::Path,
};

use eci_views::source::CgroupVersion;
use serde::{Deserialize, Serialize};

/// The fifo runc's init waits on, in runc's state directory of the
/// container (`<root>/<id>/`), runc 1.0 to 1.5.
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the container's init {pid}: reading /proc/{pid}/stat: {source}")]
    Stat { pid: u32, source: std::io::Error },
    #[error("the container's init {pid}: no start time in /proc/{pid}/stat")]
    NoStartTime { pid: u32 },
    #[error("starting the container: {what} {path}: {source}")]
    Fifo {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot start an already running container (its init closed {path} without writing to it)"
    )]
    NothingWritten { path: String },
}

/// A container's init as recorded at create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProcess {
    pub pid: u32,
    /// Its start time, in clock ticks since boot (`/proc/<pid>/stat` field
    /// 22): with the pid, it names one process.
    pub start_ticks: u64,
}

impl InitProcess {
    pub fn of(pid: u32) -> Result<Self, StartError> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|source| StartError::Stat { pid, source })?;
        let start_ticks =
            eci_views::source::start_ticks(&stat).ok_or(StartError::NoStartTime { pid })?;
        Ok(Self { pid, start_ticks })
    }

    /// A pidfd of the init, if the process with its pid is still the one
    /// recorded (checked once the pidfd holds it).
    fn pidfd(&self) -> Option<OwnedFd> {
        let pid = libc::pid_t::try_from(self.pid).ok()?;
        // SAFETY: pidfd_open with a pid and no flags; a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: a descriptor just returned to us and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        (eci_views::source::start_ticks(&stat) == Some(self.start_ticks)).then_some(fd)
    }
}

/// What [`start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The init has execed the user's process (or exited since).
    Here,
    /// Not done: runc's `start` must (it does more here, or will say why
    /// it cannot).
    ByRunc,
}

/// Whether runc's `start` would do more than open the exec fifo:
/// `NOTIFY_SOCKET` set, or poststart hooks in the spec (`poststart`).
pub fn needs_runc(poststart: bool) -> bool {
    poststart || std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Start the created container whose runc state directory is `state_dir`
/// and whose init is `init`, as runc's `start` does: read its exec fifo to
/// end of file, then remove it.
pub fn start(state_dir: &Path, init: &InitProcess) -> Result<Started, StartError> {
    let Some(pidfd) = init.pidfd() else {
        return Ok(Started::ByRunc);
    };
    if may_be_paused(init.pid) {
        return Ok(Started::ByRunc);
    }
    let path = state_dir.join(EXEC_FIFO);
    let error = |what| {
        let path = path.display().to_string();
        move |source| StartError::Fifo { what, path, source }
    };
    // Non-blocking: the open returns at once (and lets the init's open for
    // writing return); poll says when there is something to read.
    let fifo = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(fifo) => fifo,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Started::ByRunc),
        Err(e) => return Err(error("opening")(e)),
    };
    if !fifo
        .metadata()
        .map_err(error("reading the type of"))?
        .file_type()
        .is_fifo()
    {
        return Ok(Started::ByRunc);
    }
    let (mut read, mut exited) = (0usize, false);
    let mut buf = [0u8; 64];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: fifo.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd structs; no timeout.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(error("waiting on")(e));
        }
        // A fifo read only once poll says there is data or the writer
        // closed: before the init's open for writing returned, a read would
        // find no writer and end of file.
        if fds[0].revents != 0 {
            match (&fifo).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    read += n;
                    continue;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    continue;
                }
                Err(e) => return Err(error("reading")(e)),
            }
        }
        if fds[1].revents != 0 {
            // The init (or the process it execed) exited: what it wrote
            // before, if anything, is still in the fifo.
            exited = true;
            while let Ok(n @ 1..) = (&fifo).read(&mut buf) {
                read += n;
            }
            break;
        }
    }
    if read == 0 {
        if exited {
            // It died before it was started: runc says so.
            return Ok(Started::ByRunc);
        }
        return Err(StartError::NothingWritten {
            path: path.display().to_string(),
        });
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(error("removing")(e)),
        _ => Ok(Started::Here),
    }
}

/// Whether the cgroup of process `pid` may be frozen (`runc pause`): its
/// freezer says so, or cannot be found or read (runc's `start` then judges).
/// A freezer file that does not exist (a root cgroup; cgroup2 before Linux
/// 5.2) cannot be frozen.
fn may_be_paused(pid: u32) -> bool {
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let Some(dir) = read(Path::new(&format!("/proc/{pid}/cgroup")))
        .zip(read(Path::new("/proc/self/mountinfo")))
        .and_then(|(cgroups, mounts)| eci_views::source::freezer_dir(&cgroups, &mounts))
    else {
        return true;
    };
    let (file, thawed) = match dir.version {
        CgroupVersion::V1 => ("freezer.state", "THAWED"),
        CgroupVersion::V2 => ("cgroup.freeze", "0"),
    };
    match std::fs::read_to_string(dir.dir.join(file)) {
        Ok(state) => state.trim() != thawed,
        Err(e) => e.kind() != ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// A child that plays runc's init: opens the fifo for writing (blocks
    /// until a reader), writes `byte` if any, then sleeps `hold` before it
    /// closes it (the exec).
    fn fake_init(fifo: &Path, byte: Option<u8>, hold: std::time::Duration) -> std::process::Child {
        let script = match byte {
            Some(b) => format!(
                "exec 3>{} && printf '\\{b:03o}' >&3 && sleep {} && exec 3>&-; sleep 5",
                fifo.display(),
                hold.as_secs_f64()
            ),
            None => format!("exec 3>{} && exec 3>&-; sleep 5", fifo.display()),
        };
        std::process::Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .unwrap()
    }

    #[test]
    fn the_fifo_is_read_to_its_end_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(EXEC_FIFO);
        mkfifo(&fifo);
        let mut child = fake_init(&fifo, Some(b'0'), std::time::Duration::from_millis(200));
        let init = InitProcess::of(child.id()).unwrap();
        let begun = std::time::Instant::now();
        assert_eq!(start(dir.path(), &init).unwrap(), Started::Here);
        // Not before the writer closed it (the init's exec).
        assert!(begun.elapsed() >= std::time::Duration::from_millis(150));
        assert!(!fifo.exists());
        // Started: no fifo, so runc's start is asked (and refuses).
        assert_eq!(start(dir.path(), &init).unwrap(), Started::ByRunc);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn nothing_written_is_an_error_and_a_dead_or_other_init_is_left_to_runc() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(EXEC_FIFO);
        mkfifo(&fifo);
        let mut child = fake_init(&fifo, None, std::time::Duration::ZERO);
        let init = InitProcess::of(child.id()).unwrap();
        let err = start(dir.path(), &init).unwrap_err();
        assert!(matches!(err, StartError::NothingWritten { .. }), "{err}");
        assert!(fifo.exists());
        child.kill().unwrap();
        child.wait().unwrap();
        // The init is gone: runc's start.
        assert_eq!(start(dir.path(), &init).unwrap(), Started::ByRunc);
        // A process with another start time is not the init.
        let me = InitProcess::of(std::process::id()).unwrap();
        let other = InitProcess {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert_eq!(start(dir.path(), &other).unwrap(), Started::ByRunc);
        // Not a fifo: runc's start.
        std::fs::remove_file(&fifo).unwrap();
        std::fs::File::create(&fifo)
            .unwrap()
            .write_all(b"0")
            .unwrap();
        assert_eq!(start(dir.path(), &me).unwrap(), Started::ByRunc);
    }

    #[test]
    fn a_paused_container_is_left_to_runc_and_started_here_once_thawed() {
        let text = |path: &str| std::fs::read_to_string(path).unwrap();
        let Some(parent) = eci_views::source::freezer_dir(
            &text("/proc/self/cgroup"),
            &text("/proc/self/mountinfo"),
        ) else {
            println!("SKIP: a_paused_container_is_left_to_runc: no freezer is mounted here");
            return;
        };
        let cgroup = parent
            .dir
            .join(format!("eci-start-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&cgroup) {
            println!(
                "SKIP: a_paused_container_is_left_to_runc: cannot make {}: {e}",
                cgroup.display()
            );
            return;
        }
        let (file, frozen, thawed) = match parent.version {
            CgroupVersion::V1 => ("freezer.state", "FROZEN", "THAWED"),
            CgroupVersion::V2 => ("cgroup.freeze", "1", "0"),
        };
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(EXEC_FIFO);
        mkfifo(&fifo);
        let mut child = fake_init(&fifo, Some(b'0'), std::time::Duration::ZERO);
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
        std::fs::write(cgroup.join(file), frozen).unwrap();
        let init = InitProcess::of(child.id()).unwrap();
        assert_eq!(start(dir.path(), &init).unwrap(), Started::ByRunc);
        assert!(fifo.exists());
        std::fs::write(cgroup.join(file), thawed).unwrap();
        assert_eq!(start(dir.path(), &init).unwrap(), Started::Here);
        child.kill().unwrap();
        child.wait().unwrap();
        // The init's `sleep`, then the cgroup.
        for pid in text(&cgroup.join("cgroup.procs").display().to_string()).lines() {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::remove_dir(&cgroup).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }

    #[test]
    fn an_init_that_dies_before_it_is_started_is_left_to_runc() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(EXEC_FIFO);
        mkfifo(&fifo);
        // Never opens the fifo: exits after a moment.
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let init = InitProcess::of(child.id()).unwrap();
        let waiter = std::thread::spawn(move || child.wait());
        assert_eq!(start(dir.path(), &init).unwrap(), Started::ByRunc);
        waiter.join().unwrap().unwrap();
        assert!(fifo.exists());
    }
}
