//! The audit log: every decision the kernel reports becomes one JSON line.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use eci_common::{AuditEvent, FileId, Hook, ObjectKind, shared_ns_name, undecided};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "cannot open the audit log {path}: {source}; check the directory exists and is writable, or pass --audit-log"
    )]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("writing the audit log {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("a ring-buffer record of {0} bytes is not an audit event")]
    BadRecord(usize),
}

/// What the agent knows that the kernel event does not carry: names.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub sockets: BTreeMap<FileId, PathBuf>,
    pub cgroups: BTreeMap<u64, String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AuditObject {
    pub kind: &'static str,
    /// `major:minor` of the file's device.
    pub dev: String,
    pub ino: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What the numbers mean for this kind: the namespace kind shared with
    /// the VM, a file system's magic, a mount id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AuditLine {
    /// RFC 3339, UTC.
    pub time: String,
    pub hook: &'static str,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub object: AuditObject,
}

/// Decode one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<AuditEvent, AuditError> {
    if record.len() < std::mem::size_of::<AuditEvent>() {
        return Err(AuditError::BadRecord(record.len()));
    }
    // SAFETY: AuditEvent is repr(C) plain data, any bit pattern is valid, and
    // the length was checked; read_unaligned copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr() as *const AuditEvent) })
}

/// Userspace major/minor of a kernel `dev_t`.
pub fn kernel_dev_parts(dev: u64) -> (u64, u64) {
    (dev >> 20, dev & 0xfffff)
}

fn undecided_reason(what: u64) -> &'static str {
    match what {
        undecided::CGROUP_DEPTH => "the task's cgroup is deeper than the ancestor walk looks",
        undecided::FILE => "a field of the opened file could not be read",
        undecided::NAMESPACES => "the task's namespaces could not be read",
        undecided::MOUNT => "a superblock or mount could not be read",
        undecided::CGROUP_TREE => "a cgroup directory's ancestry could not be read",
        undecided::SOCKET => "a socket's file could not be read",
        undecided::REGISTRY => {
            "a new cgroup below a protected one could not be registered (its parent unreadable, or the protected map full); the agent's next walk of cgroupfs registers it"
        }
        _ => "unknown",
    }
}

pub fn to_line(event: &AuditEvent, names: &Names, wall_clock_ns: i128) -> AuditLine {
    let comm_end = event
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(event.comm.len());
    let (major, minor) = kernel_dev_parts(event.object.dev);
    let kind = ObjectKind::name(event.object_kind);
    let detail = match kind {
        "shared_namespace" => Some(format!(
            "shares the VM's {} namespace",
            shared_ns_name(event.object.dev)
        )),
        "device" => Some(format!(
            "{} device {}:{} is not in the allowed set",
            if event.object.ino == 0o060000 {
                "block"
            } else {
                "character"
            },
            major,
            minor
        )),
        "cgroup" => Some(format!(
            "write to cgroup id {} outside every protected cgroup",
            event.object.ino
        )),
        "undecided" if event.object.ino == undecided::REGISTRY => {
            Some(undecided_reason(event.object.ino).to_owned())
        }
        "undecided" => Some(format!(
            "could not be decided ({}): refused where the hook guards the VM",
            undecided_reason(event.object.ino)
        )),
        "namespace" => Some(format!("VM namespace inode {}", event.object.ino)),
        "filesystem" => Some(format!("file system magic {:#x}", event.object.ino)),
        "mount" => Some(format!("mount id {}", event.object.ino)),
        "setid_file" => Some(format!(
            "a set-id file (mode {:o}) that would run as the VM's id {}: a container's ids are the VM's in shared directories and volumes, for ownership only",
            event.object.ino, event.object.dev
        )),
        _ => None,
    };
    AuditLine {
        time: rfc3339(wall_clock_ns),
        hook: Hook::from_u32(event.hook).map_or("unknown", Hook::name),
        verdict: if event.verdict == 0 { "allow" } else { "deny" },
        errno: (event.verdict != 0).then_some(-event.verdict),
        pid: event.pid,
        tgid: event.tgid,
        uid: event.uid,
        gid: event.gid,
        comm: String::from_utf8_lossy(&event.comm[..comm_end]).into_owned(),
        cgroup_id: event.cgroup_id,
        cgroup: names.cgroups.get(&event.cgroup_id).cloned(),
        object: AuditObject {
            kind,
            dev: format!("{major}:{minor}"),
            ino: event.object.ino,
            path: names
                .sockets
                .get(&event.object)
                .map(|p| p.display().to_string()),
            detail,
        },
    }
}

/// Wall-clock time of an event stamped with CLOCK_BOOTTIME.
pub fn wall_clock_of(boot_time_ns: u64) -> i128 {
    let now = |clock| {
        nix::time::clock_gettime(clock)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    let real = now(nix::time::ClockId::CLOCK_REALTIME);
    let boot = now(nix::time::ClockId::CLOCK_BOOTTIME);
    real - (boot - boot_time_ns as i128)
}

pub use eci_control::rfc3339;

/// Append-only JSON-lines writer; every line goes to the live feed too.
pub struct AuditLog {
    path: PathBuf,
    feed: Arc<crate::audit_feed::AuditFeed>,
    file: std::fs::File,
    /// Rotate when the file grows past this many bytes (0: never).
    max_bytes: u64,
    /// Rotated files kept: `<path>.1` (newest) .. `<path>.<keep>`.
    keep: u32,
}

impl AuditLog {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(open_err)?;
        Ok(Self {
            path: path.to_owned(),
            feed: Arc::default(),
            file,
            max_bytes,
            keep,
        })
    }

    /// The live feed of the lines written (`eci-agent events`).
    pub fn feed(&self) -> Arc<crate::audit_feed::AuditFeed> {
        self.feed.clone()
    }

    fn rotate_if_full(&mut self) -> std::io::Result<()> {
        if self.max_bytes == 0 || self.file.metadata()?.len() < self.max_bytes {
            return Ok(());
        }
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.keep.max(1)));
        for n in (1..self.keep.max(1)).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        Ok(())
    }

    /// Write a batch of lines with one write (rotation is checked once per
    /// batch, so a file may exceed `max_bytes` by at most one batch).
    pub fn write_batch<T: Serialize>(&mut self, lines: &[T]) -> Result<(), AuditError> {
        let path = self.path.display().to_string();
        let err = |source| AuditError::Write {
            path: path.clone(),
            source,
        };
        let mut text = String::new();
        let mut each = Vec::with_capacity(lines.len());
        for line in lines {
            let json = serde_json::to_string(line).map_err(|e| err(std::io::Error::other(e)))?;
            text.push_str(&json);
            text.push('\n');
            each.push(json);
        }
        let written = self
            .rotate_if_full()
            .and_then(|()| self.file.write_all(text.as_bytes()))
            .map_err(err);
        // A reader watching learns of each line even when the file failed.
        for json in each {
            self.feed.publish(Arc::from(json));
        }
        written
    }

    pub fn write<T: Serialize>(&mut self, line: &T) -> Result<(), AuditError> {
        self.write_batch(std::slice::from_ref(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(1_795_824_000_500_000_000),
            "2026-11-28T00:00:00.500000000Z"
        );
    }

    fn event() -> AuditEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"evil");
        AuditEvent {
            boot_time_ns: 1,
            cgroup_id: 77,
            object: FileId {
                dev: FileId::kernel_dev(0, 25),
                ino: 4242,
            },
            pid: 10,
            tgid: 9,
            uid: 0,
            gid: 0,
            hook: Hook::UnixStreamConnect as u32,
            object_kind: ObjectKind::UnixSocket as u32,
            verdict: -1,
            _pad: 0,
            comm,
        }
    }

    #[test]
    fn a_denial_becomes_a_named_json_line() {
        let ev = event();
        let mut names = Names::default();
        names
            .sockets
            .insert(ev.object, PathBuf::from("/run/docker.sock"));
        names.cgroups.insert(77, "/docker/abc".into());
        let line = to_line(&ev, &names, 0);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["hook"], "unix_stream_connect");
        assert_eq!(json["verdict"], "deny");
        assert_eq!(json["errno"], 1);
        assert_eq!(json["comm"], "evil");
        assert_eq!(json["pid"], 10);
        assert_eq!(json["tgid"], 9);
        assert_eq!(json["cgroup"], "/docker/abc");
        assert_eq!(json["object"]["dev"], "0:25");
        assert_eq!(json["object"]["path"], "/run/docker.sock");
    }

    #[test]
    fn the_log_rotates_and_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 64, 2).unwrap();
        for i in 0..20 {
            log.write(&serde_json::json!({ "n": i, "pad": "xxxxxxxxxxxxxxxxxxxx" }))
                .unwrap();
        }
        assert!(path.exists());
        assert!(dir.path().join("audit.jsonl.1").exists());
        assert!(dir.path().join("audit.jsonl.2").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.contains("\"n\":19"), "{newest}");
    }

    #[test]
    fn every_line_written_is_published_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 0, 1).unwrap();
        let feed = log.feed();
        log.write_batch(&[serde_json::json!({"a": 1}), serde_json::json!({"b": 2})])
            .unwrap();
        let (recent, _) = feed.subscribe();
        let file = std::fs::read_to_string(&path).unwrap();
        let published: Vec<&str> = recent.iter().map(|l| &**l).collect();
        assert_eq!(published, file.lines().collect::<Vec<_>>());
    }

    #[test]
    fn short_records_are_rejected() {
        assert!(decode(&[0u8; 8]).is_err());
        let ev = event();
        // SAFETY: viewing a repr(C) value as bytes for the round trip.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &ev as *const AuditEvent as *const u8,
                std::mem::size_of::<AuditEvent>(),
            )
        };
        assert_eq!(decode(bytes).unwrap().ino_for_test(), 4242);
    }

    trait InoForTest {
        fn ino_for_test(&self) -> u64;
    }
    impl InoForTest for AuditEvent {
        fn ino_for_test(&self) -> u64 {
            self.object.ino
        }
    }
}
