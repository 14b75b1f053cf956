//! Can the mounts of a directory be ID-mapped here? Tried for real, the way
//! eci-runc binds a container's files: a detached clone of the directory's
//! mount (`open_tree(OPEN_TREE_CLONE)`) is given an ID mapping
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`) of a throw-away user namespace made
//! by eci-runc's own helper, then dropped. Nothing is mounted anywhere.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// The throw-away namespace maps container ids from here, as eci-runc's
/// first range would; any range serves.
const TEST_RANGE_BASE: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("{path} has a NUL byte")]
    Path { path: String },
    #[error("open_tree(OPEN_TREE_CLONE) of {path}: {source}")]
    OpenTree {
        path: String,
        source: std::io::Error,
    },
    #[error("making a user namespace for the test: {0}")]
    UserNamespace(#[from] eci_runc::relocate::RelocateError),
    #[error("mount_setattr(MOUNT_ATTR_IDMAP) on a clone of {path}: {source}")]
    Refused {
        path: String,
        source: std::io::Error,
    },
}

impl IdmapError {
    /// The errno the kernel answered, when it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::OpenTree { source, .. } | Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Ok when a clone of `dir`'s mount takes an ID mapping.
pub fn try_idmap(dir: &Path) -> Result<(), IdmapError> {
    let path = || dir.display().to_string();
    let c_dir =
        CString::new(dir.as_os_str().as_bytes()).map_err(|_| IdmapError::Path { path: path() })?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_dir.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(IdmapError::OpenTree {
            path: path(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: open_tree returned a new fd that nothing else owns; closing
    // it unmounts the detached clone.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let userns = eci_runc::relocate::user_namespace(TEST_RANGE_BASE)?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: valid fds, an empty C string with AT_EMPTY_PATH, and a
    // mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        return Err(IdmapError::Refused {
            path: path(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_a_nul_byte_is_an_error_not_a_panic() {
        let err = try_idmap(Path::new("/tmp/a\0b")).unwrap_err();
        assert!(matches!(err, IdmapError::Path { .. }), "{err}");
    }

    #[test]
    fn procfs_cannot_be_idmapped_and_the_kernel_says_einval() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: procfs_cannot_be_idmapped_and_the_kernel_says_einval: needs root");
            return;
        }
        let err = try_idmap(Path::new("/proc")).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
    }
}
