//! Layout of eci's state in the BPF file system. Everything that must
//! outlive the agent lives here: links (the attachments) and maps (rules,
//! counters, the audit ring buffer).

use std::path::{Path, PathBuf};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/eci";
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{dir} is not on a BPF file system; mount one with `mount -t bpf bpf /sys/fs/bpf` (systemd does this at boot)"
    )]
    NotBpffs { dir: String },
    #[error("cannot create {dir}: {source}")]
    Create { dir: String, source: std::io::Error },
}

#[derive(Debug, Clone)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }

    /// Create the directories; the root's parent must be on bpffs.
    pub fn create(&self) -> Result<(), PinError> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && parent == Path::new(BPFFS_MOUNT) {
            // What systemd does at boot; a minimal VM or container host may not have.
            let _ = nix::mount::mount(
                Some("bpf"),
                BPFFS_MOUNT,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
        }
        if !is_bpffs(parent) {
            return Err(PinError::NotBpffs {
                dir: parent.display().to_string(),
            });
        }
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| PinError::Create {
                dir: dir.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Whether anything of eci is pinned here.
    pub fn exists(&self) -> bool {
        self.links_dir().is_dir() || self.maps_dir().is_dir()
    }
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
