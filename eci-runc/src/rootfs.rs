//! The container's root file system, owned by the container's root.
//!
//! Docker hands runc an overlay (`merged`) whose files belong to uid 0 of the
//! VM; inside a user namespace with `0 <base> 65536` they would all show as
//! `nobody` and the container's root could not write its own `/etc`. What
//! eci-runc does instead:
//!
//! - **Overlay rootfs, Linux 5.19 and later** (overlayfs takes ID-mapped
//!   layers, the upper one too): the container gets an overlay of its own,
//!   mounted beside the engine's, of the same layers, each bound *ID-mapped*
//!   with the container's user namespace — the lower layers, and the upper
//!   layer with a work directory of eci's (`eci-work`) as one ID-mapped
//!   mount of their parent ([`overlay_beside`]). Nothing is copied or
//!   chowned, the files on disk keep the container's own ids (0–65535), and
//!   the engine's overlay stays where the engine put it: `docker cp` in and
//!   out of a running container, `commit`, `export`, `diff` and restarts see
//!   and write the container's ids, as with runc. The two overlays share the
//!   upper layer (`index=off`, as Docker mounts its own).
//! - **Overlay rootfs, older kernels**: every lower layer is bound ID-mapped,
//!   the container's own upper layer is *shifted* (`lchown` by `+base`; it
//!   holds only what this container wrote), and a new overlay of those is
//!   mounted in place of the engine's. `delete` shifts the upper layer back
//!   to 0–65535 and puts the engine's overlay back, so a stopped container's
//!   layer, a `docker commit` of it and a restart carry the image's ids; a
//!   running container's files show its range's ids to the engine.
//! - **Plain directory** (a runc bundle's `rootfs/`): one ID-mapped bind.
//! - **Neither possible** (a file system without ID-mapped mounts): a plain
//!   bind, reported as a warning: files keep their VM owners.
//!
//! A restarted container may get another range: the shift works from any
//! range back to 0–65535 and on to the new one, so a crash between shift and
//! unshift is repaired by the next `create`.

use std::{
    os::{
        fd::OwnedFd,
        unix::fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::AtFlags,
    mount::{MntFlags, MsFlags},
    unistd::{Gid, Uid},
};

use eci_views::source::mountinfo_unescape;

use crate::{ranges::Geometry, relocate};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: String,
        source: nix::Error,
    },
    #[error(transparent)]
    Bind(#[from] relocate::RelocateError),
}

/// How the container sees its root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsView {
    /// ID-mapped lower layers and upper layer, an overlay of the
    /// container's own beside the engine's (which stays where it is).
    IdmappedOverlayBeside { layers: usize, upper: PathBuf },
    /// ID-mapped lower layers, shifted upper layer, a new overlay.
    IdmappedOverlay { layers: usize, upper: PathBuf },
    /// One ID-mapped bind of a plain directory.
    IdmappedBind,
    /// A plain bind: files keep their VM owners (the reason says why).
    PlainBind { reason: String },
}

/// The layers of an overlay mount, as the kernel shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayers {
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Options other than the layers and rw/ro (e.g. `index=off`).
    pub other_options: Vec<String>,
    /// The super options exactly as mounted, to put the engine's mount back.
    pub original_options: String,
}

/// The overlay mounted (topmost) at `path`, from the text of
/// `/proc/self/mountinfo`. Relative layer paths (Docker uses them when the
/// absolute ones would not fit a page) are taken relative to `relative_to`.
pub fn overlay_at(mountinfo: &str, path: &Path, relative_to: &Path) -> Option<OverlayLayers> {
    let line = mountinfo.lines().rev().find(|l| {
        l.split_whitespace()
            .nth(4)
            .is_some_and(|p| Path::new(&mountinfo_unescape(p)) == path)
    })?;
    let (_, after) = line.split_once(" - ")?;
    let mut fields = after.split_whitespace();
    if fields.next()? != "overlay" {
        return None;
    }
    let _source = fields.next()?;
    let options = fields.next()?;
    let absolute = |p: &str| {
        let p = PathBuf::from(mountinfo_unescape(p));
        if p.is_absolute() {
            p
        } else {
            relative_to.join(p)
        }
    };
    let (mut lower, mut upper, mut work, mut other) = (Vec::new(), None, None, Vec::new());
    for option in options.split(',') {
        if let Some(v) = option.strip_prefix("lowerdir=") {
            lower = v.split(':').map(absolute).collect();
        } else if let Some(v) = option.strip_prefix("upperdir=") {
            upper = Some(absolute(v));
        } else if let Some(v) = option.strip_prefix("workdir=") {
            work = Some(absolute(v));
        } else if option != "rw" && option != "ro" {
            other.push(option.to_owned());
        }
    }
    Some(OverlayLayers {
        lower,
        upper: upper?,
        work: work?,
        other_options: other,
        original_options: mountinfo_unescape(options),
    })
}

/// The owner an id should have: inside `base`'s range (`Some`), or back in
/// 0–65535 (`None`). Ids outside every range and above 65535 stay as they are.
pub fn shifted_id(id: u32, base: Option<u32>, geometry: &Geometry) -> u32 {
    let inner = geometry.container_id_of(id).unwrap_or(id);
    match base {
        _ if inner >= crate::ranges::RANGE_SIZE => id,
        Some(base) => base + inner,
        None => inner,
    }
}

/// Shift the owners of every file under `root` (one file system, symlinks
/// not followed); returns how many files changed owner.
pub fn shift_tree(root: &Path, base: Option<u32>, geometry: &Geometry) -> Result<u64, RootfsError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| RootfsError::Io { what, path, source }
    };
    let top = std::fs::symlink_metadata(root).map_err(io("stat", root))?;
    let mut changed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        if meta.dev() != top.dev() {
            continue;
        }
        let (uid, gid) = (
            shifted_id(meta.uid(), base, geometry),
            shifted_id(meta.gid(), base, geometry),
        );
        if (uid, gid) != (meta.uid(), meta.gid()) {
            nix::unistd::fchownat(
                None,
                &path,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|source| RootfsError::Sys {
                what: "changing the owner of",
                path: path.display().to_string(),
                source,
            })?;
            // chown clears set-user-ID and set-group-ID: put them back.
            if meta.is_file() && meta.mode() & 0o6000 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode()))
                    .map_err(io("restoring the mode of", &path))?;
            }
            changed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io("reading", &path))? {
                pending.push(entry.map_err(io("reading", &path))?.path());
            }
        }
    }
    Ok(changed)
}

fn sys(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> RootfsError {
    let path = path.display().to_string();
    move |source| RootfsError::Sys { what, path, source }
}

/// The overlay the engine mounted at `root`, if it is one.
pub fn overlay_of(root: &Path) -> Result<Option<OverlayLayers>, RootfsError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| RootfsError::Io {
            what: "reading",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    Ok(overlay_at(&mountinfo, root, store_of(root)))
}

/// Docker's layout: `<store>/<layer>/merged`, with layers named relative to
/// the store (`l/<id>`) in the overlay's options.
fn store_of(root: &Path) -> &Path {
    root.parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/"))
}

/// Make `root` (the spec's root path; `overlay` is what [`overlay_of`] found
/// there) usable by the container whose user namespace is `userns` (range
/// `base`): the result is mounted at `target`, which the spec names from now
/// on. Record `overlay.upper` as shifted *before* calling this: a crash in
/// the middle is repaired by shifting it back.
pub fn prepare(
    root: &Path,
    target: &Path,
    overlay: Option<&OverlayLayers>,
    userns: &OwnedFd,
    base: u32,
    geometry: &Geometry,
) -> Result<RootfsView, RootfsError> {
    if let Some(layers) = overlay {
        let layer_dir = target.with_file_name("layers");
        match idmapped_overlay(root, target, &layer_dir, layers, userns, base, geometry) {
            Ok(()) => {
                return Ok(RootfsView::IdmappedOverlay {
                    layers: layers.lower.len(),
                    upper: layers.upper.clone(),
                });
            }
            Err(e) => {
                relocate::unmount_below(&layer_dir);
                let _ = std::fs::remove_dir_all(&layer_dir);
                let reason = format!("the overlay's layers could not be ID-mapped ({e})");
                relocate::bind(root, target, None, false)?;
                return Ok(RootfsView::PlainBind { reason });
            }
        }
    }
    // A plain directory (a runc bundle, Docker's vfs driver) gets one
    // ID-mapped bind, except on tmpfs: there an ID-mapped rootfs made runc's
    // init fail in the test VM (Docker's vfs driver on tmpfs, 6.12), which
    // is not understood yet, so it is bound as it is.
    let on_tmpfs = nix::sys::statfs::statfs(root)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !on_tmpfs && relocate::bind(root, target, Some(userns), false)? {
        return Ok(RootfsView::IdmappedBind);
    }
    if on_tmpfs {
        relocate::bind(root, target, None, false)?;
    }
    Ok(RootfsView::PlainBind {
        reason: format!(
            "{} cannot be ID-mapped ({})",
            root.display(),
            if on_tmpfs {
                "a tmpfs rootfs is bound as it is"
            } else {
                "its file system does not support it"
            }
        ),
    })
}

fn idmapped_overlay(
    root: &Path,
    target: &Path,
    layer_dir: &Path,
    layers: &OverlayLayers,
    userns: &OwnedFd,
    base: u32,
    geometry: &Geometry,
) -> Result<(), RootfsError> {
    bind_lower_layers(layer_dir, &layers.lower, userns)?;
    shift_tree(&layers.upper, Some(base), geometry)?;
    std::fs::create_dir_all(target).map_err(|source| RootfsError::Io {
        what: "creating",
        path: target.display().to_string(),
        source,
    })?;
    let options = overlay_options(
        layers.lower.len(),
        &layers.upper,
        &layers.work,
        &layers.other_options,
    );
    // The engine's overlay goes first: it must not show the upper layer
    // while it is shifted.
    nix::mount::umount2(root, MntFlags::MNT_DETACH).map_err(sys("unmounting", root))?;
    let mounted = mount_overlay_from(layer_dir, target, &options).and_then(|()| {
        // The engine keeps seeing the container's files where it put them.
        relocate::bind(target, root, None, false)
            .map(|_| ())
            .map_err(RootfsError::from)
    });
    if let Err(e) = mounted {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        let _ = shift_tree(&layers.upper, None, geometry);
        let _ = put_back(root, &layers.original_options);
        return Err(e);
    }
    Ok(())
}

/// Shift `upper` back to 0–65535 if its top directory is owned by an id of
/// a container's range (left by the shifting way); one `stat` otherwise.
pub fn unshift_if_left_shifted(upper: &Path, geometry: &Geometry) -> Result<(), RootfsError> {
    let owner = std::fs::symlink_metadata(upper)
        .map_err(|source| RootfsError::Io {
            what: "reading the owner of",
            path: upper.display().to_string(),
            source,
        })?
        .uid();
    if geometry.container_id_of(owner).is_some() {
        shift_tree(upper, None, geometry)?;
    }
    Ok(())
}

/// The container's own overlay of the engine's layers, mounted at `target`
/// (which the spec names from now on) beside the engine's, which stays
/// where the engine put it: every lower layer and the upper layer are bound
/// ID-mapped with the container's user namespace (Linux 5.19 and later
/// take ID-mapped layers, the upper one too), so the files on disk keep the
/// container's own ids (0–65535) while it runs. The engine reads and writes
/// them through its own overlay as they are, as with runc: `docker cp` in
/// and out of a running container, `commit`, `export`, `diff`, restarts.
/// The upper layer and the container's own work directory (`eci-work`
/// beside it: the engine's is its overlay's) are bound as one ID-mapped
/// mount of their parent, as overlayfs needs, with on-disk 65536 for the
/// VM's root, who mounts the overlay (its work files, whiteouts). Both
/// overlays share the upper layer (`index=off`, as Docker mounts its own):
/// each sees the other's writes as it looks the files up again.
pub fn overlay_beside(
    target: &Path,
    layers: &OverlayLayers,
    userns: &OwnedFd,
    base: u32,
) -> Result<RootfsView, RootfsError> {
    let layer_dir = target.with_file_name("layers");
    let result = overlay_beside_at(target, &layer_dir, layers, userns, base);
    if result.is_err() {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        relocate::unmount_below(&layer_dir);
        let _ = std::fs::remove_dir_all(&layer_dir);
    }
    result.map(|()| RootfsView::IdmappedOverlayBeside {
        layers: layers.lower.len(),
        upper: layers.upper.clone(),
    })
}

fn overlay_beside_at(
    target: &Path,
    layer_dir: &Path,
    layers: &OverlayLayers,
    userns: &OwnedFd,
    base: u32,
) -> Result<(), RootfsError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| RootfsError::Io { what, path, source }
    };
    bind_lower_layers(layer_dir, &layers.lower, userns)?;
    let (Some(parent), Some(upper_name)) = (layers.upper.parent(), layers.upper.file_name()) else {
        return Err(RootfsError::Io {
            what: "finding the directory of the upper layer",
            path: layers.upper.display().to_string(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    };
    let work = parent.join("eci-work");
    std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
    let upper_userns = relocate::upper_user_namespace(base)?;
    let upper_dir = layer_dir.join("upper");
    if !relocate::bind(parent, &upper_dir, Some(&upper_userns), false)? {
        return Err(RootfsError::Io {
            what: "ID-mapping the upper layer's directory",
            path: parent.display().to_string(),
            source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        });
    }
    std::fs::create_dir_all(target).map_err(io("creating", target))?;
    let upper = Path::new("upper").join(upper_name);
    let mut other: Vec<String> = layers
        .other_options
        .iter()
        .filter(|o| !o.starts_with("index="))
        .cloned()
        .collect();
    other.push("index=off".into());
    let options = overlay_options(
        layers.lower.len(),
        &upper,
        Path::new("upper/eci-work"),
        &other,
    );
    mount_overlay_from(layer_dir, target, &options)
}

/// The options of an overlay of `lowers` layers bound at `0`, `1`... (short
/// relative names: the mount data must fit a page), `upper`, `work` and the
/// `other` options.
fn overlay_options(lowers: usize, upper: &Path, work: &Path, other: &[String]) -> String {
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        layer_names(lowers),
        upper.display(),
        work.display()
    );
    for o in other {
        options.push(',');
        options.push_str(o);
    }
    options
}

/// `0:1:...`: the names [`bind_lower_layers`] binds `count` layers at.
fn layer_names(count: usize) -> String {
    (0..count)
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Every layer of `lower`, bound ID-mapped with `userns` at
/// `layer_dir/<n>` (short names: the mount data must fit a page).
fn bind_lower_layers(
    layer_dir: &Path,
    lower: &[PathBuf],
    userns: &OwnedFd,
) -> Result<(), RootfsError> {
    for (n, lower) in lower.iter().enumerate() {
        let real = std::fs::canonicalize(lower).map_err(|source| RootfsError::Io {
            what: "resolving the layer",
            path: lower.display().to_string(),
            source,
        })?;
        if !relocate::bind(&real, &layer_dir.join(n.to_string()), Some(userns), false)? {
            return Err(RootfsError::Io {
                what: "ID-mapping the layer",
                path: real.display().to_string(),
                source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
    }
    Ok(())
}

/// A read-only view, ID-mapped with `userns`, of an overlay the engine
/// mounted of its layers (a BuildKit step's `--mount=type=bind,from=...`):
/// an overlay of ID-mapped binds of its upper layer (on top) and its lower
/// layers, with no upper layer of its own, mounted at `dir/merged`, which is
/// returned. Nothing of the engine's changes; the whole lies below `dir`.
pub fn read_only_overlay(
    layers: &OverlayLayers,
    userns: &OwnedFd,
    dir: &Path,
) -> Result<PathBuf, RootfsError> {
    let stack: Vec<PathBuf> = std::iter::once(layers.upper.clone())
        .chain(layers.lower.iter().cloned())
        .collect();
    let layer_dir = dir.join("layers");
    let merged = dir.join("merged");
    let result = bind_lower_layers(&layer_dir, &stack, userns).and_then(|()| {
        std::fs::create_dir_all(&merged).map_err(|source| RootfsError::Io {
            what: "creating",
            path: merged.display().to_string(),
            source,
        })?;
        let options = format!("lowerdir={}", layer_names(stack.len()));
        mount_overlay_flags(&layer_dir, &merged, &options, MsFlags::MS_RDONLY)
    });
    if let Err(e) = result {
        let _ = nix::mount::umount2(&merged, MntFlags::MNT_DETACH);
        relocate::unmount_below(&layer_dir);
        return Err(e);
    }
    Ok(merged)
}

/// eci's overlay leaves the engine's place at `root` (the bind of it there
/// is unmounted, lazily; nothing there is fine).
pub fn leave(root: &Path) {
    let _ = nix::mount::umount2(root, MntFlags::MNT_DETACH);
}

/// The engine's overlay is mounted again at `root` with the options the
/// kernel showed for it, unless an overlay is there already.
pub fn put_back(root: &Path, options: &str) -> Result<(), RootfsError> {
    if overlay_of(root)?.is_some() || !root.exists() {
        return Ok(());
    }
    mount_overlay_from(store_of(root), root, options)
}

fn mount_overlay_from(dir: &Path, target: &Path, options: &str) -> Result<(), RootfsError> {
    mount_overlay_flags(dir, target, options, MsFlags::empty())
}

/// An overlay mounted at `target` with `options` whose layer paths are
/// relative to `dir`, and `flags`.
fn mount_overlay_flags(
    dir: &Path,
    target: &Path,
    options: &str,
    flags: MsFlags,
) -> Result<(), RootfsError> {
    let cwd = std::env::current_dir().map_err(|source| RootfsError::Io {
        what: "reading the working directory",
        path: ".".into(),
        source,
    })?;
    nix::unistd::chdir(dir).map_err(sys("entering", dir))?;
    let result = nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options),
    )
    .map_err(sys("mounting an overlay at", target));
    let back = nix::unistd::chdir(&cwd).map_err(sys("returning to", &cwd));
    result.and(back)
}

#[cfg(test)]
mod tests {

    #[test]
    fn overlay_options_name_the_layers_by_their_short_binds_then_the_rest() {
        assert_eq!(
            overlay_options(
                3,
                Path::new("upper/diff"),
                Path::new("upper/eci-work"),
                &["userxattr".into(), "index=off".into()]
            ),
            "lowerdir=0:1:2,upperdir=upper/diff,workdir=upper/eci-work,userxattr,index=off"
        );
    }

    use super::*;

    const DOCKER: &str = "48 44 0:40 / /var/lib/docker/overlay2/d59c/merged rw,relatime shared:2 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/7OTF:/var/lib/docker/overlay2/l/CWYB,upperdir=/var/lib/docker/overlay2/d59c/diff,workdir=/var/lib/docker/overlay2/d59c/work\n";

    #[test]
    fn docker_overlay_layers_are_read_from_mountinfo() {
        let merged = Path::new("/var/lib/docker/overlay2/d59c/merged");
        let layers = overlay_at(DOCKER, merged, Path::new("/var/lib/docker/overlay2")).unwrap();
        assert_eq!(
            layers.lower,
            vec![
                PathBuf::from("/var/lib/docker/overlay2/l/7OTF"),
                PathBuf::from("/var/lib/docker/overlay2/l/CWYB")
            ]
        );
        assert_eq!(
            layers.upper,
            Path::new("/var/lib/docker/overlay2/d59c/diff")
        );
        assert_eq!(layers.work, Path::new("/var/lib/docker/overlay2/d59c/work"));
        assert!(layers.other_options.is_empty());
        assert!(overlay_at(DOCKER, Path::new("/elsewhere"), Path::new("/")).is_none());
    }

    #[test]
    fn relative_layers_and_escapes_are_resolved() {
        let info = "1 2 0:1 / /a\\040b rw - overlay overlay rw,lowerdir=l/A:l/B,upperdir=x/diff,workdir=x/work,index=off\n";
        let layers = overlay_at(info, Path::new("/a b"), Path::new("/store")).unwrap();
        assert_eq!(layers.lower[1], Path::new("/store/l/B"));
        assert_eq!(layers.upper, Path::new("/store/x/diff"));
        assert_eq!(layers.other_options, vec!["index=off"]);
    }

    #[test]
    fn the_topmost_mount_wins_and_other_types_are_not_overlays() {
        let info = format!(
            "{DOCKER}49 48 0:41 / /var/lib/docker/overlay2/d59c/merged rw - ext4 /dev/vda rw\n"
        );
        let merged = Path::new("/var/lib/docker/overlay2/d59c/merged");
        assert!(overlay_at(&info, merged, Path::new("/")).is_none());
    }

    #[test]
    fn ids_shift_between_ranges_and_back() {
        let g = Geometry::default();
        assert_eq!(shifted_id(0, Some(165_536), &g), 165_536);
        assert_eq!(shifted_id(1000, Some(165_536), &g), 166_536);
        // From another range, straight to this one.
        assert_eq!(shifted_id(100_000 + 1000, Some(165_536), &g), 166_536);
        // Back to the VM's 0-65535.
        assert_eq!(shifted_id(166_536, None, &g), 1000);
        assert_eq!(shifted_id(1000, None, &g), 1000);
        // Ids above 65535 that belong to no range are left alone.
        assert_eq!(shifted_id(70_000, Some(165_536), &g), 70_000);
    }

    #[test]
    fn a_tree_shifts_into_a_range_and_back_keeping_setuid_bits() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: shifting owners needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("upper");
        std::fs::create_dir_all(root.join("home/user")).unwrap();
        std::fs::write(root.join("home/user/f"), "x").unwrap();
        std::fs::write(root.join("tool"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("link")).unwrap();
        std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(root.join("home/user/f"), Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(root.join("tool"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        let g = Geometry::default();
        let uid = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().uid();
        assert_eq!(shift_tree(&root, Some(165_536), &g).unwrap(), 6);
        assert_eq!(
            (uid(""), uid("home/user/f"), uid("link")),
            (165_536, 166_536, 165_536)
        );
        let mode = std::fs::metadata(root.join("tool")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o4755, "set-user-ID survives the shift");
        // Into another range directly (a restart), then back to the VM's.
        shift_tree(&root, Some(100_000), &g).unwrap();
        assert_eq!(uid("home/user/f"), 101_000);
        shift_tree(&root, None, &g).unwrap();
        assert_eq!((uid(""), uid("home/user/f"), uid("link")), (0, 1000, 0));
        assert_eq!(shift_tree(&root, None, &g).unwrap(), 0, "idempotent");
        assert_eq!(
            std::fs::metadata("/etc/shadow")
                .map(|m| m.uid())
                .unwrap_or(0),
            0,
            "symlinks are not followed"
        );
    }

    #[test]
    fn the_engines_overlay_is_put_back_where_eci_took_its_place() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: mounting an overlay needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("overlay2");
        for d in ["l/low", "c/diff", "c/work", "c/merged"] {
            std::fs::create_dir_all(store.join(d)).unwrap();
        }
        std::fs::write(store.join("l/low/from-the-image"), "x").unwrap();
        let merged = store.join("c/merged");
        // As Docker mounts it: layers relative to the store.
        let options = "lowerdir=l/low,upperdir=c/diff,workdir=c/work";
        mount_overlay_from(&store, &merged, options).unwrap();
        let seen = overlay_of(&merged).unwrap().expect("the engine's overlay");
        leave(&merged);
        assert!(overlay_of(&merged).unwrap().is_none());
        put_back(&merged, &seen.original_options).unwrap();
        assert!(merged.join("from-the-image").exists(), "the image's files");
        // Already there: left as it is (not mounted twice).
        put_back(&merged, &seen.original_options).unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let at = format!(" {} ", merged.display());
        assert_eq!(mountinfo.lines().filter(|l| l.contains(&at)).count(), 1);
        leave(&merged);
    }
}
