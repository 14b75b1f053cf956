//! Which Unix sockets are protected, by file identity.
//!
//! The policy names paths; the kernel matches device and inode. Paths are
//! re-read periodically because engines create (and re-create) their
//! sockets after the agent starts.

use std::{
    collections::BTreeMap,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use eci_common::FileId;

/// Identity of the socket file at `path`, or `None` when there is none
/// (yet) or it is not a socket.
pub fn socket_file_id(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_socket() {
        return None;
    }
    Some(file_id_of(&meta))
}

pub fn file_id_of(meta: &std::fs::Metadata) -> FileId {
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    FileId {
        dev: FileId::kernel_dev(major, minor),
        ino: meta.ino(),
    }
}

/// The configured socket paths and what they currently resolve to.
#[derive(Debug, Clone, Default)]
pub struct SocketSet {
    paths: Vec<PathBuf>,
}

impl SocketSet {
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut paths: Vec<PathBuf> = paths.into_iter().collect();
        paths.sort();
        paths.dedup();
        Self { paths }
    }

    /// The configured paths.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Current identities of the sockets that exist, with a path for each.
    pub fn scan(&self) -> BTreeMap<FileId, PathBuf> {
        let mut found = BTreeMap::new();
        for path in &self.paths {
            if let Some(id) = socket_file_id(path) {
                found.entry(id).or_insert_with(|| path.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_renames_keep_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let id = socket_file_id(&path).unwrap();
        let link = dir.path().join("hard.sock");
        std::fs::hard_link(&path, &link).unwrap();
        assert_eq!(socket_file_id(&link), Some(id));
        let renamed = dir.path().join("renamed.sock");
        std::fs::rename(&path, &renamed).unwrap();
        assert_eq!(socket_file_id(&renamed), Some(id));
    }

    #[test]
    fn non_sockets_and_missing_paths_are_not_protected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(socket_file_id(&file), None);
        assert_eq!(socket_file_id(&dir.path().join("missing")), None);
    }

    #[test]
    fn kernel_dev_encoding_matches_the_kernel() {
        // MKDEV(major, minor) = major << 20 | minor
        assert_eq!(FileId::kernel_dev(8, 1), (8 << 20) | 1);
        assert_eq!(FileId::kernel_dev(0, 300), 300);
    }

    #[test]
    fn scan_dedups_paths_to_the_same_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let link = dir.path().join("b.sock");
        std::fs::hard_link(&path, &link).unwrap();
        let set = SocketSet::new([path.clone(), link, dir.path().join("none.sock")]);
        let found = set.scan();
        assert_eq!(found.len(), 1);
        assert_eq!(found.values().next(), Some(&path));
    }
}
