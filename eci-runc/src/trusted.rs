//! Which image a Docker container runs, and whether the policy's
//! `dockerSocketMount.imageList` trusts it with a (filtered) Docker socket.
//!
//! The image is read from the engine's own records, not from anything the
//! container's creator wrote into the spec: `config.v2.json` in the
//! container's directory (the image id, a content digest, and the name it
//! was asked for by), and the engine's reference store
//! (`image/<driver>/repositories.json`: which names and registry digests
//! point at which image id).
//!
//! An entry trusts an image
//! - `*`: any image;
//! - `name@sha256:<digest>`: the image whose id is that digest, or which the
//!   engine pulled as `name@sha256:<digest>` (a registry manifest digest);
//! - `name[:tag]` (tag `*`: any tag): the image the name's tag points at,
//!   *and only if* the engine pulled that same image from the registry
//!   under that name (it holds a `name@sha256:...` digest reference for it).
//!   So re-tagging another image with a trusted name does not make it
//!   trusted; a locally built image is trusted by pinning its id.
//!
//! With `allowDerivedImages`, an image built `FROM` a trusted one passes
//! too: its layers (the engine's image record, `rootfs.diff_ids`) begin
//! with all of the trusted image's layers.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use oci_spec::runtime::Spec;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "the container's image cannot be identified: no Docker container directory among its mounts (only containers Docker creates can be given the Docker socket)"
    )]
    NotADockerContainer,
    #[error("reading the engine's record {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the engine's record {path} is not what Docker writes: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// The image a container runs, as the engine recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// `sha256:<hex>`: the image's content digest.
    pub id: String,
    /// The name the container was created from (as typed).
    pub name: String,
}

/// The engine's reference store: normalized references → image id; and
/// where its image records are (for the layers of derived images).
#[derive(Debug, Clone, Default)]
pub struct References {
    by_reference: BTreeMap<String, String>,
    image_records: Option<PathBuf>,
    /// The engine keeps its images in containerd (Docker's containerd image
    /// store, an option since Docker 24, the default of new installs from
    /// Docker 29): no reference store or image records under its data root.
    /// Names then trust nothing (their pull history is not readable here);
    /// entries pinned by id still do.
    containerd_image_store: bool,
}

#[derive(Deserialize)]
struct ImageRecord {
    rootfs: ImageLayers,
}

#[derive(Deserialize)]
struct ImageLayers {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ContainerRecord {
    #[serde(rename = "Image")]
    image: String,
    #[serde(rename = "Driver", default)]
    driver: String,
    #[serde(rename = "Config")]
    config: ContainerConfig,
}

#[derive(Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Image", default)]
    image: String,
}

#[derive(Deserialize)]
struct ReferenceStore {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrustError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TrustError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// The image of a container Docker created, and the engine's references.
pub fn docker_image(
    spec: &Spec,
    container_id: &str,
) -> Result<(ContainerImage, References), TrustError> {
    let dir = crate::spec::docker_container_dir(spec, &[container_id])
        .ok_or(TrustError::NotADockerContainer)?;
    let record: ContainerRecord = read_json(&dir.join("config.v2.json"))?;
    let data_root = dir
        .parent()
        .and_then(Path::parent)
        .ok_or(TrustError::NotADockerContainer)?;
    let image_dir = data_root.join("image").join(&record.driver);
    if !image_dir.is_dir() {
        // Never "trusted" for want of a record: nothing is trusted by name.
        return Ok((
            ContainerImage {
                id: record.image,
                name: record.config.image,
            },
            References {
                containerd_image_store: true,
                ..References::default()
            },
        ));
    }
    let store_path = image_dir.join("repositories.json");
    let references = match read_json::<ReferenceStore>(&store_path) {
        Ok(store) => References::from_store(store),
        // No image was ever tagged or pulled: nothing is trusted by name.
        Err(TrustError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            References::default()
        }
        Err(e) => return Err(e),
    }
    .with_image_records(
        data_root
            .join("image")
            .join(&record.driver)
            .join("imagedb/content/sha256"),
    );
    Ok((
        ContainerImage {
            id: record.image,
            name: record.config.image,
        },
        references,
    ))
}

/// `busybox` → `docker.io/library/busybox`, `me/app` → `docker.io/me/app`;
/// a name with a registry (a first component with `.` or `:`, or
/// `localhost`) stays as it is.
pub fn normalize_name(name: &str) -> String {
    match name.split_once('/') {
        None => format!("docker.io/library/{name}"),
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => name.to_owned(),
        Some(_) => format!("docker.io/{name}"),
    }
}

/// `name[:tag]` or `name@digest` → (normalized name, tag, digest).
fn split_reference(reference: &str) -> (String, Option<&str>, Option<&str>) {
    if let Some((name, digest)) = reference.split_once('@') {
        return (normalize_name(name), None, Some(digest));
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (
            normalize_name(&reference[..last_slash + i]),
            Some(&reference[last_slash + i + 1..]),
            None,
        ),
        None => (normalize_name(reference), None, None),
    }
}

impl References {
    fn from_store(store: ReferenceStore) -> Self {
        let by_reference = store
            .repositories
            .into_values()
            .flatten()
            .map(|(reference, id)| {
                let (name, tag, digest) = split_reference(&reference);
                let key = match (tag, digest) {
                    (_, Some(d)) => format!("{name}@{d}"),
                    (Some(t), None) => format!("{name}:{t}"),
                    (None, None) => format!("{name}:latest"),
                };
                (key, id)
            })
            .collect();
        Self {
            by_reference,
            image_records: None,
            containerd_image_store: false,
        }
    }

    /// Where the engine keeps its image records (`imagedb/content/sha256`).
    pub fn with_image_records(mut self, dir: PathBuf) -> Self {
        self.image_records = Some(dir);
        self
    }

    /// The layers of an image, from the engine's record of it.
    fn layers(&self, image_id: &str) -> Option<Vec<String>> {
        let hex = image_id.strip_prefix("sha256:")?;
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.image_records.as_ref()?.join(hex);
        read_json::<ImageRecord>(&path)
            .ok()
            .map(|r| r.rootfs.diff_ids)
    }

    /// The image ids an entry trusts directly (see the module's rules).
    fn trusted_ids(&self, entry: &str) -> Vec<String> {
        let (name, tag, digest) = split_reference(entry);
        let mut ids: Vec<String> = self
            .by_reference
            .values()
            .filter(|id| match digest {
                Some(d) => self.points_at(&name, id, |r| r == format!("@{d}")),
                None => self.tag_points_at(&name, tag, id) && self.pulled_as(&name, id),
            })
            .cloned()
            .collect();
        if let Some(d) = digest {
            ids.push(d.to_owned());
        }
        ids
    }

    /// `name:tag` (no tag: `latest`; `*`: any) names `image_id`.
    fn tag_points_at(&self, name: &str, tag: Option<&str>, image_id: &str) -> bool {
        let tag = tag.unwrap_or("latest");
        self.points_at(name, image_id, |r| {
            r.strip_prefix(':').is_some_and(|t| tag == "*" || t == tag)
        })
    }

    /// The engine pulled `image_id` from a registry as `name` (it holds a
    /// `name@sha256:...` reference to it).
    fn pulled_as(&self, name: &str, image_id: &str) -> bool {
        self.points_at(name, image_id, |r| r.starts_with("@sha256:"))
    }

    /// From `(reference, image id)` pairs as Docker writes them.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (reference, id) in pairs {
            repositories
                .entry(String::new())
                .or_default()
                .insert(reference.to_owned(), id.to_owned());
        }
        Self::from_store(ReferenceStore { repositories })
    }

    fn points_at(&self, name: &str, image_id: &str, wanted: impl Fn(&str) -> bool) -> bool {
        self.by_reference.iter().any(|(reference, id)| {
            id == image_id && reference.strip_prefix(name).is_some_and(&wanted)
        })
    }
}

/// The entry of `images` that trusts `image` (directly, or with
/// `allow_derived` as the base it was built from), or why none does.
pub fn trusting_entry<'a>(
    images: &'a [String],
    allow_derived: bool,
    image: &ContainerImage,
    references: &References,
) -> Result<&'a str, String> {
    let direct = directly_trusting_entry(images, image, references)
        .map_err(|why| format!("{why}{}", store_note(references)));
    if direct.is_ok() || !allow_derived {
        return direct;
    }
    let Some(layers) = references.layers(&image.id) else {
        return direct;
    };
    for entry in images {
        let derived = references.trusted_ids(entry).iter().any(|base| {
            references.layers(base).is_some_and(|base_layers| {
                !base_layers.is_empty() && layers.starts_with(&base_layers)
            })
        });
        if derived {
            return Ok(entry);
        }
    }
    direct.map_err(|why| format!("{why}; nor is it built from an allowed image"))
}

/// Why names cannot trust an image on this engine, if that is the case.
fn store_note(references: &References) -> &'static str {
    if references.containerd_image_store {
        " (this engine keeps its images in containerd's image store, where eci does not read a name's pull history: only entries pinned by image id, name@sha256:<id>, trust an image here)"
    } else {
        ""
    }
}

fn directly_trusting_entry<'a>(
    images: &'a [String],
    image: &ContainerImage,
    references: &References,
) -> Result<&'a str, String> {
    let mut why = Vec::new();
    for entry in images {
        if entry == "*" || references.trusted_ids(entry).contains(&image.id) {
            return Ok(entry);
        }
        let (name, tag, digest) = split_reference(entry);
        if digest.is_none() && references.tag_points_at(&name, tag, &image.id) {
            // A pinned entry is `name@digest`, without the tag.
            let untagged = tag
                .and_then(|t| entry.strip_suffix(&format!(":{t}")))
                .unwrap_or(entry);
            why.push(format!(
                "it carries the name {entry:?} but the engine holds no registry digest of {name} for it (a locally built or re-tagged image); pin it by its id instead: \"{untagged}@{}\"",
                image.id
            ));
        }
    }
    Err(if why.is_empty() {
        "the image is not in the allowed list".to_owned()
    } else {
        why.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const ID_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const MANIFEST: &str =
        "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn image(id: &str, name: &str) -> ContainerImage {
        ContainerImage {
            id: id.into(),
            name: name.into(),
        }
    }

    fn trusting_entry_direct<'a>(
        images: &'a [String],
        image: &ContainerImage,
        refs: &References,
    ) -> Result<&'a str, String> {
        trusting_entry(images, false, image, refs)
    }

    fn entries(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_normalized_as_docker_does() {
        assert_eq!(normalize_name("busybox"), "docker.io/library/busybox");
        assert_eq!(normalize_name("me/app"), "docker.io/me/app");
        assert_eq!(
            normalize_name("docker.io/library/busybox"),
            "docker.io/library/busybox"
        );
        assert_eq!(normalize_name("localhost/app"), "localhost/app");
        assert_eq!(normalize_name("reg:5000/app"), "reg:5000/app");
    }

    #[test]
    fn on_the_containerd_image_store_names_trust_nothing_and_say_why_while_ids_still_do() {
        let refs = References {
            containerd_image_store: true,
            ..References::default()
        };
        let a = image(ID_A, "docker:cli");
        let why = trusting_entry_direct(&entries(&["docker:cli"]), &a, &refs)
            .expect_err("a name must not trust an image whose records eci cannot read");
        assert!(why.contains("containerd's image store"), "{why}");
        let pinned = format!("docker@{ID_A}");
        assert_eq!(
            trusting_entry_direct(&entries(&[&pinned]), &a, &refs),
            Ok(pinned.as_str())
        );
        assert!(trusting_entry(&entries(&["docker:cli"]), true, &a, &refs).is_err());
    }

    #[test]
    fn a_pulled_image_is_trusted_by_name_and_tag() {
        let refs =
            References::from_pairs([("docker:cli", ID_A), (&*format!("docker@{MANIFEST}"), ID_A)]);
        let a = image(ID_A, "docker:cli");
        assert_eq!(
            trusting_entry_direct(&entries(&["docker:cli"]), &a, &refs),
            Ok("docker:cli")
        );
        assert_eq!(
            trusting_entry_direct(&entries(&["docker.io/library/docker:*"]), &a, &refs),
            Ok("docker.io/library/docker:*")
        );
        assert!(trusting_entry_direct(&entries(&["docker:dind"]), &a, &refs).is_err());
        let by_manifest = format!("docker@{MANIFEST}");
        assert!(trusting_entry_direct(&entries(&[&by_manifest]), &a, &refs).is_ok());
    }

    #[test]
    fn a_retagged_image_is_not_trusted_by_the_name_it_borrowed() {
        // The engine pulled docker:cli as A; then B (built here) was tagged docker:cli.
        let refs =
            References::from_pairs([("docker:cli", ID_B), (&*format!("docker@{MANIFEST}"), ID_A)]);
        let b = image(ID_B, "docker:cli");
        let why = trusting_entry_direct(&entries(&["docker:cli"]), &b, &refs).unwrap_err();
        assert!(why.contains("no registry digest"), "{why}");
        assert!(why.contains(ID_B), "the message says how to pin it: {why}");
        assert!(
            why.contains(&format!("\"docker@{ID_B}\"")),
            "the pin it suggests is an entry the policy accepts: {why}"
        );
    }

    #[test]
    fn a_local_image_is_trusted_by_its_id_only() {
        let refs = References::from_pairs([("tools:latest", ID_B)]);
        let b = image(ID_B, "tools");
        let pinned = format!("tools@{ID_B}");
        assert!(trusting_entry_direct(&entries(&[&pinned]), &b, &refs).is_ok());
        let other = format!("tools@{ID_A}");
        assert!(trusting_entry_direct(&entries(&[&other]), &b, &refs).is_err());
        assert!(trusting_entry_direct(&entries(&["*"]), &b, &refs).is_ok());
        assert!(trusting_entry_direct(&[], &b, &refs).is_err());
    }

    #[test]
    fn a_derived_image_is_trusted_only_when_allowed_and_built_on_all_base_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = |id: &str, layers: &[&str]| {
            let json = serde_json::json!({ "rootfs": { "type": "layers", "diff_ids": layers } });
            std::fs::write(
                dir.path().join(id.trim_start_matches("sha256:")),
                json.to_string(),
            )
            .expect("record");
        };
        const ID_C: &str =
            "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
        record(ID_A, &["sha256:l1", "sha256:l2"]);
        record(ID_B, &["sha256:l1", "sha256:l2", "sha256:l3"]);
        record(ID_C, &["sha256:l1"]);
        let refs = References::from_pairs([("base:latest", ID_A)])
            .with_image_records(dir.path().to_owned());
        let pinned = entries(&[&format!("base@{ID_A}")]);
        let derived = image(ID_B, "app");
        assert!(trusting_entry(&pinned, false, &derived, &refs).is_err());
        assert!(trusting_entry(&pinned, true, &derived, &refs).is_ok());
        // The base's own base is not derived from it.
        let parent = image(ID_C, "parent");
        let why = trusting_entry(&pinned, true, &parent, &refs).unwrap_err();
        assert!(why.contains("built from an allowed image"), "{why}");
        // A name entry trusts a base only if it was pulled under that name.
        let by_name = entries(&["base:latest"]);
        assert!(trusting_entry(&by_name, true, &derived, &refs).is_err());
    }
}
