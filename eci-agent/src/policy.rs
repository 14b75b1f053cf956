//! The policy file, `/etc/eci/admin-settings.json`: Docker's admin-settings
//! schema (`configurationFileVersion`, `enhancedContainerIsolation`) plus
//! eci's own `eci` section.
//!
//! ```json
//! { "configurationFileVersion": 2,
//!   "enhancedContainerIsolation": { "value": true, "locked": true,
//!     "dockerSocketMount": {
//!       "imageList": { "images": ["docker.io/testcontainers/ryuk:*", "docker:cli"],
//!                      "allowDerivedImages": false },
//!       "commandList": { "type": "deny", "commands": ["push", "build"] } } },
//!   "eci": { "protectedCgroupParents": ["/docker"], "protectedSockets": ["/run/docker.sock"],
//!            "shareableHostPaths": ["/home"], "dockerRuntimeName": "eci",
//!            "dockerApiSockets": ["/run/docker.sock", "/var/run/docker.sock"],
//!            "audit": { "path": "/var/log/eci/audit.jsonl", "maxBytes": 52428800, "keep": 5 } } }
//! ```
//!
//! Every section and key is optional: a missing key keeps its built-in
//! default ([`Policy::default`]), and a missing file means the built-in
//! defaults altogether. `null` is not "missing": it is a wrong type. Unknown
//! keys, wrong types and bad values are errors that name the file, the key
//! path and the line and column, and say what was expected.
//!
//! `eci.auditLog` (a plain path), from the first version of this file, is
//! still read as a shorthand for `eci.audit.path`.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, Visitor},
};

/// Where the agent looks for the policy.
pub const DEFAULT_POLICY_PATH: &str = "/etc/eci/admin-settings.json";

/// The default audit log.
pub const DEFAULT_AUDIT_PATH: &str = "/var/log/eci/audit.jsonl";
/// The size at which the audit log is rotated by default (50 MiB).
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 50 * 1024 * 1024;
/// How many rotated audit logs are kept by default.
pub const DEFAULT_AUDIT_KEEP: u32 = 5;
/// The smallest `eci.audit.maxBytes` accepted.
pub const MIN_AUDIT_MAX_BYTES: u64 = 4096;
/// The largest `eci.audit.keep` accepted.
pub const MAX_AUDIT_KEEP: u32 = 100;

/// The cgroups whose processes are confined by default: where Docker (with
/// the cgroupfs or the systemd driver) and Kubernetes (cgroupfs or systemd,
/// containerd's CRI scopes included) put their containers. The engines'
/// own cgroups (`/system.slice/docker.service`, `containerd.service`) and the
/// agent's are not matched.
pub const DEFAULT_PROTECTED_CGROUP_PARENTS: &[&str] = &[
    "/docker",
    "/kubepods",
    "/kubepods.slice",
    "/system.slice/docker-*.scope",
    "/system.slice/cri-containerd-*.scope",
];

/// The container engines' API sockets, which containers must not reach.
/// The Docker Engine's API sockets unless the policy says otherwise.
pub const DEFAULT_DOCKER_API_SOCKETS: &[&str] = &["/run/docker.sock", "/var/run/docker.sock"];

/// The Docker Engine's name for eci-runc unless the policy says otherwise.
pub const DEFAULT_DOCKER_RUNTIME_NAME: &str = "eci";

pub const DEFAULT_PROTECTED_SOCKETS: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
    "/run/buildkit/buildkitd.sock",
];

/// Directories a shareable host path may neither be nor contain: sharing
/// them (or a parent of them) hands containers the VM's system, the
/// engine's state or eci's own.
const CRITICAL_DIRS: &[&str] = &[
    "/etc",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/eci",
    "/run",
    "/var/run",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/root",
];

/// Directories no shareable host path may lie in either (configuration,
/// engine and eci state, runtime sockets, kernel interfaces, boot files).
/// Below `/usr`, `/lib`, `/bin`, `/sbin` and `/root` an administrator may
/// share a directory on purpose (e.g. `/usr/share/fonts`).
const NOTHING_BELOW: &[&str] = &[
    "/etc",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/eci",
    "/run",
    "/var/run",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
];

/// The effective policy: the file's values over the built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// `enhancedContainerIsolation.value` (default `true`).
    pub enforcement: bool,
    /// `enhancedContainerIsolation.locked` (default `false`).
    pub locked: bool,
    /// `enhancedContainerIsolation.dockerSocketMount`.
    pub docker_socket_mount: DockerSocketMount,
    /// `eci.protectedCgroupParents`: cgroup2 paths relative to the cgroup2
    /// root; the last segment may hold `*` wildcards.
    pub protected_cgroup_parents: Vec<String>,
    /// `eci.protectedSockets`.
    pub protected_sockets: Vec<PathBuf>,
    /// `eci.shareableHostPaths` (default none).
    pub shareable_host_paths: Vec<PathBuf>,
    /// `eci.dockerApiSockets`: the Docker Engine's API sockets (default
    /// `/run/docker.sock`, `/var/run/docker.sock`). Protected like
    /// `protectedSockets`; a trusted image's bind of one gets the agent's
    /// filtering proxy of it.
    pub docker_api_sockets: Vec<PathBuf>,
    /// `eci.dockerRuntimeName`: the Docker Engine's name for eci-runc
    /// (default `eci`, as `eci-agent install` registers it). Containers
    /// created through a trusted container's Docker socket proxy get it.
    pub docker_runtime_name: String,
    /// `eci.audit`.
    pub audit: AuditSettings,
}

/// Which containers may mount the Docker socket, and what they may do with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DockerSocketMount {
    pub image_list: ImageList,
    pub command_list: CommandList,
}

/// `dockerSocketMount.imageList` (default: no image, no derived images).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageList {
    pub images: Vec<ImageRef>,
    pub allow_derived_images: bool,
}

/// `dockerSocketMount.commandList` (default: deny nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandList {
    #[serde(rename = "type")]
    pub kind: CommandListType,
    /// Docker command names; a trailing `*` matches a family (`container*`).
    pub commands: Vec<String>,
}

impl Default for CommandList {
    fn default() -> Self {
        Self {
            kind: CommandListType::Deny,
            commands: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandListType {
    /// Only the listed commands pass.
    Allow,
    /// The listed commands are blocked, the rest pass.
    Deny,
}

/// `eci.audit`: where the audit log goes and how it is rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditSettings {
    pub path: PathBuf,
    /// Rotate when the log reaches this size.
    pub max_bytes: u64,
    /// How many rotated files to keep.
    pub keep: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_AUDIT_PATH),
            max_bytes: DEFAULT_AUDIT_MAX_BYTES,
            keep: DEFAULT_AUDIT_KEEP,
        }
    }
}

/// A validated entry of `imageList.images`: `*` (any image), `name[:tag]`
/// (no tag means `latest`, tag `*` any tag) or `name@sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ImageRef(String);

impl ImageRef {
    pub fn parse(text: &str) -> Result<Self, String> {
        split_image(text).map(|_| Self(text.to_owned()))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for Policy {
    /// The built-in secure defaults: enforcement on (not locked), the
    /// container cgroups of Docker and Kubernetes protected, the engines'
    /// sockets protected, no shareable host path, no image allowed the
    /// Docker socket, the audit log in `/var/log/eci`.
    fn default() -> Self {
        Self {
            enforcement: true,
            locked: false,
            docker_socket_mount: DockerSocketMount::default(),
            protected_cgroup_parents: DEFAULT_PROTECTED_CGROUP_PARENTS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            protected_sockets: DEFAULT_PROTECTED_SOCKETS
                .iter()
                .map(PathBuf::from)
                .collect(),
            shareable_host_paths: Vec::new(),
            docker_api_sockets: DEFAULT_DOCKER_API_SOCKETS
                .iter()
                .map(PathBuf::from)
                .collect(),
            docker_runtime_name: DEFAULT_DOCKER_RUNTIME_NAME.to_owned(),
            audit: AuditSettings::default(),
        }
    }
}

/// Where the policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The file does not exist.
    BuiltInDefaults,
}

/// A policy that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file exists (or may) but cannot be read: a policy that cannot be
    /// read must not silently become the defaults.
    #[error("{file}: cannot read the policy file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Invalid),
}

/// What is wrong with a policy file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub file: String,
    /// 1-based; `None` when it could not be found.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// The key path, e.g. `eci.protectedCgroupParents[1]`; `None` for the
    /// document as a whole.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Invalid {
    /// `FILE: line L, column C: KEY: MESSAGE`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
            if let Some(column) = self.column {
                write!(f, ", column {column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Read the policy at `path`. A file that does not exist means the built-in
/// defaults; any other failure to read it is an error.
pub fn load(path: &Path) -> Result<(Policy, Source), PolicyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((
            parse(&text, &path.display().to_string())?,
            Source::File(path.to_owned()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((Policy::default(), Source::BuiltInDefaults))
        }
        Err(source) => Err(PolicyError::Read {
            file: path.display().to_string(),
            source,
        }),
    }
}

/// Parse and validate a policy; `origin` names the file in errors.
pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    // Some editors start a UTF-8 file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(PolicyError::Invalid(Invalid {
            file: origin.to_owned(),
            line: None,
            column: None,
            key: None,
            message: "the file is empty; write {} for the built-in defaults".into(),
        }));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: RawFile = serde_path_to_error::deserialize(MapOnly(&mut de))
        .map_err(|e| PolicyError::Invalid(from_serde(text, origin, e)))?;
    de.end().map_err(|e| {
        PolicyError::Invalid(Invalid {
            file: origin.to_owned(),
            line: Some(e.line()),
            column: Some(e.column()).filter(|c| *c > 0),
            key: None,
            message: "invalid JSON: there is more after the closing `}`".into(),
        })
    })?;
    raw.into_policy(text, origin).map_err(PolicyError::Invalid)
}

impl Policy {
    /// A few lines for the log.
    pub fn summary(&self) -> String {
        fn list<T: fmt::Display>(items: &[T]) -> String {
            if items.is_empty() {
                "none".into()
            } else {
                items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
        let paths = |p: &[PathBuf]| list(&p.iter().map(|p| p.display()).collect::<Vec<_>>());
        let mount = &self.docker_socket_mount;
        let kind = match mount.command_list.kind {
            CommandListType::Allow => "allowed: only",
            CommandListType::Deny => "denied:",
        };
        format!(
            "enforcement {}{}\n\
             protected cgroup parents: {}\n\
             protected sockets: {}\n\
             shareable host paths: {}\n\
             docker socket mount: images {}{}; commands {kind} {}\n\
             audit log: {} (rotated at {} bytes, {} kept)",
            if self.enforcement { "on" } else { "OFF" },
            if self.locked { " (locked)" } else { "" },
            list(&self.protected_cgroup_parents),
            paths(&self.protected_sockets),
            paths(&self.shareable_host_paths),
            list(&mount.image_list.images),
            if mount.image_list.allow_derived_images {
                " and images derived from them"
            } else {
                ""
            },
            list(&mount.command_list.commands),
            self.audit.path.display(),
            self.audit.max_bytes,
            self.audit.keep,
        )
    }

    /// This policy in the file's own shape, keys in the documented order;
    /// [`parse`] reads it back as it is.
    pub fn to_file_text(&self) -> String {
        let mount = &self.docker_socket_mount;
        let file = FileOut {
            configuration_file_version: 2,
            enhanced_container_isolation: EciOut {
                value: self.enforcement,
                locked: self.locked,
                docker_socket_mount: MountOut {
                    image_list: ImageListOut {
                        images: &mount.image_list.images,
                        allow_derived_images: mount.image_list.allow_derived_images,
                    },
                    command_list: CommandListOut {
                        kind: mount.command_list.kind,
                        commands: &mount.command_list.commands,
                    },
                },
            },
            eci: OwnOut {
                protected_cgroup_parents: &self.protected_cgroup_parents,
                protected_sockets: &self.protected_sockets,
                shareable_host_paths: &self.shareable_host_paths,
                docker_api_sockets: &self.docker_api_sockets,
                docker_runtime_name: &self.docker_runtime_name,
                audit: AuditOut {
                    path: &self.audit.path,
                    max_bytes: self.audit.max_bytes,
                    keep: self.audit.keep,
                },
            },
        };
        format!(
            "{}\n",
            serde_json::to_string_pretty(&file).unwrap_or_default()
        )
    }

    /// The policy written by `eci-agent install` when there is none: the
    /// built-in defaults, spelled out.
    pub fn default_file_text() -> String {
        Policy::default().to_file_text()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileOut<'a> {
    configuration_file_version: u32,
    enhanced_container_isolation: EciOut<'a>,
    eci: OwnOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EciOut<'a> {
    value: bool,
    locked: bool,
    docker_socket_mount: MountOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MountOut<'a> {
    image_list: ImageListOut<'a>,
    command_list: CommandListOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageListOut<'a> {
    images: &'a [ImageRef],
    allow_derived_images: bool,
}

#[derive(Serialize)]
struct CommandListOut<'a> {
    #[serde(rename = "type")]
    kind: CommandListType,
    commands: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditOut<'a> {
    path: &'a Path,
    max_bytes: u64,
    keep: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OwnOut<'a> {
    protected_cgroup_parents: &'a [String],
    protected_sockets: &'a [PathBuf],
    shareable_host_paths: &'a [PathBuf],
    docker_api_sockets: &'a [PathBuf],
    docker_runtime_name: &'a str,
    audit: AuditOut<'a>,
}

// ---------------------------------------------------------------------------
// The file as written. Every key is optional; `present` makes `null` a type
// error instead of "missing".

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object")]
struct RawFile {
    #[serde(default, deserialize_with = "present")]
    configuration_file_version: Option<u64>,
    #[serde(default, deserialize_with = "object")]
    enhanced_container_isolation: Option<RawEci>,
    #[serde(default, deserialize_with = "object")]
    eci: Option<RawOwn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object")]
struct RawEci {
    #[serde(default, deserialize_with = "present")]
    value: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    locked: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    docker_socket_mount: Option<RawSocketMount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object")]
struct RawSocketMount {
    #[serde(default, deserialize_with = "object")]
    image_list: Option<RawImageList>,
    #[serde(default, deserialize_with = "object")]
    command_list: Option<RawCommandList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object")]
struct RawImageList {
    #[serde(default, deserialize_with = "present")]
    images: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    allow_derived_images: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object")]
struct RawCommandList {
    #[serde(rename = "type", default, deserialize_with = "present")]
    kind: Option<CommandListType>,
    #[serde(default, deserialize_with = "present")]
    commands: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object")]
struct RawOwn {
    #[serde(default, deserialize_with = "present")]
    protected_cgroup_parents: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    protected_sockets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    shareable_host_paths: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    docker_api_sockets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    docker_runtime_name: Option<String>,
    #[serde(default, deserialize_with = "object")]
    audit: Option<RawAudit>,
    /// The first version's spelling of `audit.path`.
    #[serde(default, deserialize_with = "present")]
    audit_log: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "an object")]
struct RawAudit {
    #[serde(default, deserialize_with = "present")]
    path: Option<String>,
    #[serde(default, deserialize_with = "present")]
    max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    keep: Option<u64>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A section: a JSON object, never the array form serde also accepts for
/// structs.
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(MapOnly(d)).map(Some)
}

/// Hands a derived struct's visitor to `deserialize_map`, so that a JSON
/// array is a type error ("expected an object, found a list").
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de> Deserialize<'de> for CommandListType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Kind;
        impl Visitor<'_> for Kind {
            type Value = CommandListType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"allow\" or \"deny\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandListType, E> {
                match v {
                    "allow" => Ok(CommandListType::Allow),
                    "deny" => Ok(CommandListType::Deny),
                    _ => Err(E::custom(format!(
                        "expected \"allow\" or \"deny\", found {v:?}"
                    ))),
                }
            }
        }
        d.deserialize_str(Kind)
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn key_path(path: &[Seg]) -> Option<String> {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

fn keys(names: &[&str]) -> Vec<Seg> {
    names.iter().map(|k| Seg::Key((*k).to_owned())).collect()
}

fn item(names: &[&str], index: usize) -> Vec<Seg> {
    let mut path = keys(names);
    path.push(Seg::Index(index));
    path
}

/// An error about the value at `path`, placed at that value in `text`.
fn at_value(text: &str, file: &str, path: &[Seg], message: String) -> Invalid {
    let (line, column) = match locate(text, path, false) {
        Some(offset) => {
            let (l, c) = line_col(text, offset);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Invalid {
        file: file.to_owned(),
        line,
        column,
        key: key_path(path),
        message,
    }
}

/// Turn serde's error into ours: the key path, the place, and words a
/// person editing the file understands.
fn from_serde(
    text: &str,
    file: &str,
    err: serde_path_to_error::Error<serde_json::Error>,
) -> Invalid {
    let mut path: Vec<Seg> = err
        .path()
        .iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            _ => None,
        })
        .collect();
    let inner = err.into_inner();
    let (line, column) = (inner.line(), inner.column());
    let full = inner.to_string();
    let bare = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full);
    let serde_place = (
        Some(line).filter(|l| *l > 0),
        Some(column).filter(|c| *c > 0),
    );
    if !inner.is_data() {
        let message = if inner.is_eof() {
            format!("invalid JSON: the file ends too early ({bare})")
        } else {
            format!("invalid JSON: {bare}")
        };
        return Invalid {
            file: file.to_owned(),
            line: serde_place.0,
            column: serde_place.1,
            key: key_path(&path),
            message,
        };
    }
    let duplicate = bare
        .strip_prefix("duplicate field `")
        .and_then(|r| r.strip_suffix('`'));
    if let Some(name) = duplicate {
        // serde stops at the second one; that is the place to show.
        path.push(Seg::Key(name.to_owned()));
        return Invalid {
            file: file.to_owned(),
            line: serde_place.0,
            column: serde_place.1,
            key: key_path(&path),
            message: format!("the key \"{name}\" is given more than once"),
        };
    }
    let (message, at_key) = match unknown_field(bare) {
        Some((name, allowed)) => {
            // The path may or may not already end at the unknown key.
            if path.last() != Some(&Seg::Key(name.clone())) {
                path.push(Seg::Key(name.clone()));
            }
            let message = if allowed.is_empty() {
                format!("unknown key \"{name}\"; no keys are allowed here")
            } else {
                format!(
                    "unknown key \"{name}\"; the keys allowed here are {}",
                    allowed.join(", ")
                )
            };
            (message, true)
        }
        None => (plain_words(bare), false),
    };
    let (line, column) = match locate(text, &path, at_key) {
        Some(offset) => {
            let (l, c) = line_col(text, offset);
            (Some(l), Some(c))
        }
        None => serde_place,
    };
    Invalid {
        file: file.to_owned(),
        line,
        column,
        key: key_path(&path),
        message,
    }
}

/// serde's `unknown field `x`, expected one of `a`, `b`` as (x, [a, b]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, allowed) = match rest.rfind("`, expected ") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest.strip_suffix("`, there are no fields")?, ""),
    };
    let allowed = allowed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), allowed))
}

/// serde's `invalid type: string "yes", expected a boolean` as
/// `expected a boolean (true or false), found the string "yes"`.
fn plain_words(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            let expected = match expected {
                "a boolean" => "a boolean (true or false)",
                "u8" | "u16" | "u32" | "u64" => "a whole number",
                "a sequence" => "a list (a JSON array)",
                other => other,
            };
            return format!("expected {expected}, found {}", found_words(found));
        }
    }
    message.to_owned()
}

fn found_words(found: &str) -> String {
    let literal = |s: &str| s.trim_start_matches('`').trim_end_matches('`').to_owned();
    if let Some(s) = found.strip_prefix("string ") {
        format!("the string {s}")
    } else if let Some(n) = found
        .strip_prefix("integer ")
        .or_else(|| found.strip_prefix("floating point "))
    {
        format!("the number {}", literal(n))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        literal(b)
    } else {
        match found {
            "map" => "an object".into(),
            "sequence" => "a list".into(),
            "unit value" | "null" => "null".into(),
            other => other.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Finding a key's value in the text, to point at the line of a bad value.

/// The byte offset of the value at `path` in `text` (or of the last key
/// itself with `at_key`). `text` must be valid JSON up to that value.
fn locate(text: &str, path: &[Seg], at_key: bool) -> Option<usize> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
    };
    c.ws();
    for (n, seg) in path.iter().enumerate() {
        let last = n + 1 == path.len();
        match seg {
            Seg::Key(want) => {
                c.eat(b'{')?;
                loop {
                    c.ws();
                    let key_at = c.i;
                    let key = c.string()?;
                    c.ws();
                    c.eat(b':')?;
                    c.ws();
                    if key == *want {
                        if last && at_key {
                            return Some(key_at);
                        }
                        break;
                    }
                    c.skip_value()?;
                    c.ws();
                    c.eat(b',')?;
                }
            }
            Seg::Index(want) => {
                c.eat(b'[')?;
                c.ws();
                for _ in 0..*want {
                    c.skip_value()?;
                    c.ws();
                    c.eat(b',')?;
                    c.ws();
                }
                if c.peek()? == b']' {
                    return None;
                }
            }
        }
    }
    Some(c.i)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.peek()? == want).then(|| self.i += 1)
    }

    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => break,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        let raw = std::str::from_utf8(self.b.get(start..self.i)?).ok()?;
        serde_json::from_str(raw).ok()
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                self.ws();
                if self.eat(close).is_some() {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.skip_value()?;
                    self.ws();
                    if self.eat(close).is_some() {
                        return Some(());
                    }
                    self.eat(b',')?;
                    self.ws();
                }
            }
            _ => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b',' | b']' | b'}') && !b.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------
// Checking the values.

impl RawFile {
    fn into_policy(self, text: &str, file: &str) -> Result<Policy, Invalid> {
        let bad = |path: Vec<Seg>, message: String| at_value(text, file, &path, message);
        let mut policy = Policy::default();
        if let Some(version) = self.configuration_file_version
            && !(1..=2).contains(&version)
        {
            return Err(bad(
                keys(&["configurationFileVersion"]),
                format!("expected 1 or 2, found {version}"),
            ));
        }
        const ECI: &str = "enhancedContainerIsolation";
        if let Some(eci) = self.enhanced_container_isolation {
            policy.enforcement = eci.value.unwrap_or(policy.enforcement);
            policy.locked = eci.locked.unwrap_or(policy.locked);
            let mount = eci.docker_socket_mount.unwrap_or(RawSocketMount {
                image_list: None,
                command_list: None,
            });
            if let Some(list) = mount.image_list {
                for (i, image) in list.images.unwrap_or_default().into_iter().enumerate() {
                    let image = ImageRef::parse(&image).map_err(|why| {
                        bad(
                            item(&[ECI, "dockerSocketMount", "imageList", "images"], i),
                            why,
                        )
                    })?;
                    policy.docker_socket_mount.image_list.images.push(image);
                }
                policy.docker_socket_mount.image_list.allow_derived_images =
                    list.allow_derived_images.unwrap_or(false);
            }
            if let Some(list) = mount.command_list {
                let commands = list.commands.unwrap_or_default();
                for (i, command) in commands.iter().enumerate() {
                    check_command(command).map_err(|why| {
                        bad(
                            item(&[ECI, "dockerSocketMount", "commandList", "commands"], i),
                            why,
                        )
                    })?;
                }
                policy.docker_socket_mount.command_list = CommandList {
                    kind: list.kind.unwrap_or(CommandListType::Deny),
                    commands,
                };
            }
        }
        if let Some(own) = self.eci {
            if let Some(parents) = own.protected_cgroup_parents {
                for (i, parent) in parents.iter().enumerate() {
                    check_cgroup_parent(parent)
                        .map_err(|why| bad(item(&["eci", "protectedCgroupParents"], i), why))?;
                }
                policy.protected_cgroup_parents = parents;
            }
            if let Some(sockets) = own.protected_sockets {
                for (i, socket) in sockets.iter().enumerate() {
                    check_path(socket)
                        .map_err(|why| bad(item(&["eci", "protectedSockets"], i), why))?;
                }
                policy.protected_sockets = sockets.into_iter().map(PathBuf::from).collect();
            }
            let audit = own.audit.unwrap_or(RawAudit {
                path: None,
                max_bytes: None,
                keep: None,
            });
            match (audit.path, own.audit_log) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        keys(&["eci", "auditLog"]),
                        "the audit log's path is given twice; keep eci.audit.path and remove \
                         eci.auditLog"
                            .into(),
                    ));
                }
                (Some(path), None) => {
                    check_path(&path).map_err(|why| bad(keys(&["eci", "audit", "path"]), why))?;
                    policy.audit.path = PathBuf::from(path);
                }
                (None, Some(path)) => {
                    check_path(&path).map_err(|why| bad(keys(&["eci", "auditLog"]), why))?;
                    policy.audit.path = PathBuf::from(path);
                }
                (None, None) => {}
            }
            if let Some(max) = audit.max_bytes {
                if max < MIN_AUDIT_MAX_BYTES {
                    return Err(bad(
                        keys(&["eci", "audit", "maxBytes"]),
                        format!("expected at least {MIN_AUDIT_MAX_BYTES} (bytes), found {max}"),
                    ));
                }
                policy.audit.max_bytes = max;
            }
            if let Some(keep) = audit.keep {
                match u32::try_from(keep) {
                    Ok(keep) if (1..=MAX_AUDIT_KEEP).contains(&keep) => policy.audit.keep = keep,
                    _ => {
                        return Err(bad(
                            keys(&["eci", "audit", "keep"]),
                            format!(
                                "expected a number of rotated files from 1 to {MAX_AUDIT_KEEP}, \
                                 found {keep}"
                            ),
                        ));
                    }
                }
            }
            if let Some(sockets) = own.docker_api_sockets {
                for (i, socket) in sockets.iter().enumerate() {
                    check_path(socket)
                        .map_err(|why| bad(item(&["eci", "dockerApiSockets"], i), why))?;
                }
                policy.docker_api_sockets = sockets.into_iter().map(PathBuf::from).collect();
            }
            if let Some(name) = own.docker_runtime_name {
                check_runtime_name(&name)
                    .map_err(|why| bad(keys(&["eci", "dockerRuntimeName"]), why))?;
                policy.docker_runtime_name = name;
            }
            // Checked last: a shareable path must not expose the audit log.
            if let Some(paths) = own.shareable_host_paths {
                for (i, path) in paths.iter().enumerate() {
                    check_path(path)
                        .and_then(|()| check_shareable(path, &policy.audit.path))
                        .map_err(|why| bad(item(&["eci", "shareableHostPaths"], i), why))?;
                }
                policy.shareable_host_paths = paths.into_iter().map(PathBuf::from).collect();
            }
        }
        Ok(policy)
    }
}

/// A runtime name as Docker accepts it in daemon.json `runtimes`.
fn check_runtime_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a Docker runtime name (letters, digits, `_`, `.`, `-`), found {name:?}"
        ))
    }
}

/// An absolute, normalized path: no `.`, `..` or empty segments, no
/// trailing `/`, no control characters, not `/` itself.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("expected an absolute path, found {path:?}"));
    }
    if path == "/" {
        return Err("expected a path below \"/\", found \"/\"".into());
    }
    if path.chars().any(char::is_control) {
        return Err(format!("the path {path:?} holds a control character"));
    }
    if path[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "expected a normalized path (no `.`, `..`, `//` or trailing `/`), found {path:?}"
        ));
    }
    Ok(())
}

/// A host path containers may be given: not a system, engine or eci
/// directory, not a parent of one, not inside one of those in
/// [`NOTHING_BELOW`], and not where the audit log is.
fn check_shareable(path: &str, audit_log: &Path) -> Result<(), String> {
    let p = Path::new(path);
    for dir in CRITICAL_DIRS {
        let dir_path = Path::new(dir);
        if p == dir_path {
            return Err(format!(
                "{path:?} is a directory of the VM's system or of its engines; containers must \
                 not share it"
            ));
        }
        if dir_path.starts_with(p) {
            return Err(format!(
                "{path:?} contains {dir}, which containers must not reach; share a directory \
                 beside it instead"
            ));
        }
    }
    for dir in NOTHING_BELOW {
        if p.starts_with(dir) {
            return Err(format!(
                "{path:?} lies inside {dir}, which containers must not reach"
            ));
        }
    }
    if audit_log.starts_with(p) {
        return Err(format!(
            "{path:?} contains the audit log {}, which containers must not reach",
            audit_log.display()
        ));
    }
    Ok(())
}

/// An absolute cgroup2 path, normalized, not the root; `*` only in the last
/// segment, which must not be all wildcard (that would take in every
/// sibling: the engine's and the agent's own cgroups too).
fn check_cgroup_parent(parent: &str) -> Result<(), String> {
    if parent == "/" {
        return Err(
            "protecting the root cgroup would lock out the agent and the container engine; \
             name the engines' container cgroups (e.g. \"/docker\")"
                .into(),
        );
    }
    if !parent.starts_with('/') {
        return Err(format!(
            "expected a cgroup path from the cgroup2 root, starting with '/' (e.g. \"/docker\"), \
             found {parent:?}"
        ));
    }
    if parent.chars().any(char::is_control) {
        return Err(format!(
            "the cgroup path {parent:?} holds a control character"
        ));
    }
    let segments: Vec<&str> = parent[1..].split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(format!(
            "expected a normalized cgroup path (no `.`, `..`, `//` or trailing `/`), found \
             {parent:?}"
        ));
    }
    let (last, above) = segments.split_last().unwrap_or((&"", &[]));
    if above.iter().any(|s| s.contains('*')) {
        return Err(format!(
            "{parent:?}: `*` is allowed in the last segment only (e.g. \
             \"/system.slice/docker-*.scope\")"
        ));
    }
    if last.chars().all(|c| c == '*') {
        return Err(format!(
            "{parent:?}: a last segment of only `*` matches every sibling cgroup, the engine's \
             and the agent's included; protect the parent or use a pattern such as \"docker-*.scope\""
        ));
    }
    Ok(())
}

/// A Docker command name (`push`, `build`, `container`), optionally with a
/// trailing `*` for a family (`container*`).
fn check_command(command: &str) -> Result<(), String> {
    let name = command.strip_suffix('*').unwrap_or(command);
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a docker command such as \"push\", or a family such as \"container*\" \
             (`*` only at the end), found {command:?}"
        ))
    }
}

/// `*`, `name[:tag]` or `name@sha256:<64 hex>`, as (name, tag, digest).
/// The name follows Docker's reference grammar: an optional registry
/// (`host[:port]/`, recognised by a `.` or `:` or as `localhost`), then
/// lowercase path components separated by `/`.
fn split_image(image: &str) -> Result<(&str, Option<&str>, Option<&str>), String> {
    if image == "*" {
        return Ok((image, None, None));
    }
    let fail = |why: &str| {
        Err(format!(
            "{image:?} is not an image reference (name[:tag], name@sha256:<digest>, or \"*\"): {why}"
        ))
    };
    let (name, tag, digest) = match image.split_once('@') {
        Some((name, digest)) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return fail("a digest is sha256: and 64 lowercase hex digits");
            }
            (name, None, Some(digest))
        }
        None => {
            let last_slash = image.rfind('/').map_or(0, |i| i + 1);
            match image[last_slash..].rfind(':') {
                Some(i) => (
                    &image[..last_slash + i],
                    Some(&image[last_slash + i + 1..]),
                    None,
                ),
                None => (image, None, None),
            }
        }
    };
    if let Some(tag) = tag {
        let tag_ok = tag == "*"
            || (tag.len() <= 128
                && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
        if !tag_ok {
            return fail("a tag is letters, digits, `_`, `.` and `-` (at most 128), or `*`");
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost")
    {
        let registry = components.remove(0);
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        let host_ok = host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok || !port_ok {
            return fail("the registry is host[:port]");
        }
    }
    if components.iter().any(|c| !path_component_ok(c)) {
        return fail(
            "a name is lowercase letters and digits, separated by `/`, `.`, `_`, `__` or `-`",
        );
    }
    Ok((name, tag, digest))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let Some(first) = component.chars().next() else {
        return false;
    };
    let Some(last) = component.chars().last() else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Runs of separators between alphanumerics: `.`, `_`, `__` or any `-`s.
    component
        .split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-'))
        && component
            .chars()
            .all(|c| alnum(c) || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/eci/admin-settings.json";

    const FULL: &str = r#"{
  "configurationFileVersion": 2,
  "enhancedContainerIsolation": {
    "value": true,
    "locked": true,
    "dockerSocketMount": {
      "imageList": {
        "images": ["docker.io/testcontainers/ryuk:*", "docker:cli"],
        "allowDerivedImages": false
      },
      "commandList": { "type": "deny", "commands": ["push", "build", "container*"] }
    }
  },
  "eci": {
    "protectedCgroupParents": ["/docker", "/system.slice/docker-*.scope"],
    "protectedSockets": ["/run/docker.sock"],
    "shareableHostPaths": ["/home"],
    "audit": { "path": "/var/log/eci/audit.jsonl", "maxBytes": 52428800, "keep": 5 }
  }
}
"#;

    fn invalid(text: &str) -> Invalid {
        match parse(text, FILE) {
            Err(PolicyError::Invalid(invalid)) => invalid,
            other => panic!("expected an invalid policy, got {other:?}"),
        }
    }

    /// The error's text, after checking it names the file, `key` and `line`.
    fn expect(text: &str, key: &str, line: usize) -> String {
        let e = invalid(text);
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{FILE}: line {line}")),
            "{shown}"
        );
        assert_eq!(e.key.as_deref(), Some(key), "{shown}");
        assert!(shown.contains(&format!(": {key}: ")), "{shown}");
        assert_eq!(e.line, Some(line), "{shown}");
        shown
    }

    #[test]
    fn a_missing_file_means_the_secure_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, source) = load(&dir.path().join("admin-settings.json")).unwrap();
        assert_eq!(source, Source::BuiltInDefaults);
        assert_eq!(policy, Policy::default());
        assert!(policy.enforcement && !policy.locked);
        assert!(policy.protected_cgroup_parents.contains(&"/docker".into()));
        assert!(
            policy
                .protected_sockets
                .contains(&PathBuf::from("/run/docker.sock"))
        );
        assert!(policy.shareable_host_paths.is_empty());
        assert!(policy.docker_socket_mount.image_list.images.is_empty());
        assert_eq!(
            policy.docker_socket_mount.command_list,
            CommandList {
                kind: CommandListType::Deny,
                commands: vec![]
            }
        );
        assert_eq!(policy.audit.path, PathBuf::from("/var/log/eci/audit.jsonl"));
        assert_eq!((policy.audit.max_bytes, policy.audit.keep), (52_428_800, 5));
        // The defaults pass their own checks.
        for parent in DEFAULT_PROTECTED_CGROUP_PARENTS {
            check_cgroup_parent(parent).unwrap();
        }
        assert_eq!(parse("{}", FILE).unwrap(), Policy::default());
    }

    #[test]
    fn a_file_that_exists_is_read_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-settings.json");
        std::fs::write(&path, FULL).unwrap();
        let (policy, source) = load(&path).unwrap();
        assert_eq!(source, Source::File(path.clone()));
        assert!(policy.locked);
        std::fs::write(&path, "{\"eci\": 3}").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: line 1", path.display())), "{e}");
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as one.
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, PolicyError::Read { .. }), "{e:?}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "{}: cannot read the policy file",
                dir.path().display()
            )),
            "{shown}"
        );
        // Invalid UTF-8 is no policy either.
        let path = dir.path().join("admin-settings.json");
        std::fs::write(&path, b"{\"eci\": \xff}").unwrap();
        assert!(matches!(load(&path), Err(PolicyError::Read { .. })));
        // Without permission (root reads anything, so only as a user).
        if !nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, "{}").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains("Permission denied"), "{e}");
        }
    }

    #[test]
    fn the_full_example_parses() {
        let p = parse(FULL, FILE).unwrap();
        assert!(p.enforcement && p.locked);
        let images = &p.docker_socket_mount.image_list.images;
        assert_eq!(
            images.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["docker.io/testcontainers/ryuk:*", "docker:cli"]
        );
        assert!(!p.docker_socket_mount.image_list.allow_derived_images);
        assert_eq!(
            p.docker_socket_mount.command_list,
            CommandList {
                kind: CommandListType::Deny,
                commands: vec!["push".into(), "build".into(), "container*".into()]
            }
        );
        assert_eq!(
            p.protected_cgroup_parents,
            ["/docker", "/system.slice/docker-*.scope"]
        );
        assert_eq!(p.protected_sockets, [PathBuf::from("/run/docker.sock")]);
        assert_eq!(p.shareable_host_paths, [PathBuf::from("/home")]);
        assert_eq!(p.audit, AuditSettings::default());
        // Written out and read back, a policy stays the same.
        let text = p.to_file_text();
        assert_eq!(parse(&text, FILE).unwrap(), p);
        assert_eq!(
            parse(&Policy::default_file_text(), FILE).unwrap(),
            Policy::default()
        );
        // Serialisable for `status`.
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["docker_socket_mount"]["command_list"]["type"], "deny");
        assert_eq!(json["audit"]["max_bytes"], 52_428_800);
        let summary = p.summary();
        assert!(
            summary.starts_with("enforcement on (locked)\n"),
            "{summary}"
        );
        assert!(
            summary.contains("/system.slice/docker-*.scope"),
            "{summary}"
        );
    }

    #[test]
    fn docker_only_files_and_the_first_versions_audit_log_key_still_parse() {
        let p = parse(
            "{\"configurationFileVersion\": 1, \"enhancedContainerIsolation\": {\"value\": false}}",
            FILE,
        )
        .unwrap();
        assert!(!p.enforcement);
        assert_eq!(
            p.protected_cgroup_parents,
            Policy::default().protected_cgroup_parents
        );
        let p = parse(r#"{"eci": {"auditLog": "/var/log/x.jsonl"}}"#, FILE).unwrap();
        assert_eq!(p.audit.path, PathBuf::from("/var/log/x.jsonl"));
        let e = invalid(r#"{"eci": {"auditLog": "/a", "audit": {"path": "/b"}}}"#);
        assert_eq!(e.key.as_deref(), Some("eci.auditLog"));
    }

    #[test]
    fn a_wrong_type_names_file_key_line_and_what_was_expected() {
        let text = "{\n  \"enhancedContainerIsolation\": {\n    \"value\": \"yes\"\n  }\n}\n";
        let e = expect(text, "enhancedContainerIsolation.value", 3);
        assert_eq!(
            e,
            "/etc/eci/admin-settings.json: line 3, column 14: enhancedContainerIsolation.value: \
             expected a boolean (true or false), found the string \"yes\""
        );
        let e = expect(
            "{\n\"eci\": {\"protectedSockets\": \"/run/docker.sock\"}}",
            "eci.protectedSockets",
            2,
        );
        assert!(
            e.contains("expected a list (a JSON array), found the string"),
            "{e}"
        );
        let e = expect(
            "{\"eci\": {\"protectedSockets\": [\"/a\", 7]}}",
            "eci.protectedSockets[1]",
            1,
        );
        assert!(
            e.contains("column 37") && e.contains("expected a string, found the number 7"),
            "{e}"
        );
        let e = expect(
            "{\"eci\": {\"audit\": {\"keep\": -1}}}",
            "eci.audit.keep",
            1,
        );
        assert!(
            e.contains("expected a whole number, found the number -1"),
            "{e}"
        );
        let e = expect(
            "{\"eci\": {\"audit\": {\"keep\": 2.5}}}",
            "eci.audit.keep",
            1,
        );
        assert!(e.contains("found the number 2.5"), "{e}");
        let e = expect(
            "{\"enhancedContainerIsolation\": {\"locked\": null}}",
            "enhancedContainerIsolation.locked",
            1,
        );
        assert!(e.contains("found null"), "{e}");
        let e = expect("{\n\"eci\": [\"/home\"]}", "eci", 2);
        assert!(e.contains("expected an object, found a list"), "{e}");
        let e = invalid("[]").to_string();
        assert!(e.contains("expected an object, found a list"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named_with_the_allowed_ones() {
        let text = "{\n  \"eci\": {\n    \"protectedCgroupParents\": [],\n    \"protectedParents\": []\n  }\n}";
        let e = expect(text, "eci.protectedParents", 4);
        assert!(e.contains("line 4, column 5:"), "{e}");
        assert!(
            e.contains("unknown key \"protectedParents\"; the keys allowed here are protectedCgroupParents, protectedSockets, shareableHostPaths, dockerApiSockets, dockerRuntimeName, audit, auditLog"),
            "{e}"
        );
        // Deeper down.
        let text = "{\"enhancedContainerIsolation\": {\n \"dockerSocketMount\": {\n  \"imageList\": {\n   \"images\": [],\n   \"allowDerived\": true}}}}";
        let e = expect(
            text,
            "enhancedContainerIsolation.dockerSocketMount.imageList.allowDerived",
            5,
        );
        assert!(e.contains("images, allowDerivedImages"), "{e}");
        // At the top.
        let e = expect(
            "{\n\"exposeDockerAPIOnTCP2375\": true}",
            "exposeDockerAPIOnTCP2375",
            2,
        );
        assert!(
            e.contains("configurationFileVersion, enhancedContainerIsolation, eci"),
            "{e}"
        );
        let e = expect("{\"eci\": {\"audit\": {}, \"audit\": {}}}", "eci.audit", 1);
        assert!(e.contains("given more than once"), "{e}");
    }

    #[test]
    fn syntax_errors_have_the_line_and_column() {
        let e = invalid("{\n  \"eci\": {,\n}");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("invalid JSON"), "{e}");
        let e = invalid("{\n  \"eci\": {}\n");
        assert!(e.to_string().contains("ends too early"), "{e}");
        let e = invalid("{}\n{}");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(invalid("  \n").to_string().contains("empty"));
        assert_eq!(parse("\u{feff}{}", FILE).unwrap(), Policy::default());
    }

    #[test]
    fn the_version_must_be_1_or_2() {
        let e = expect(
            "{\n\n  \"configurationFileVersion\": 7\n}",
            "configurationFileVersion",
            3,
        );
        assert!(e.ends_with("expected 1 or 2, found 7"), "{e}");
        let e = expect(
            "{\"configurationFileVersion\": \"2\"}",
            "configurationFileVersion",
            1,
        );
        assert!(
            e.contains("expected a whole number, found the string \"2\""),
            "{e}"
        );
    }

    #[test]
    fn bad_cgroup_parents_name_the_index_and_the_line() {
        for (parent, why) in [
            ("/", "lock out"),
            ("/docker/../system.slice", "normalized"),
            ("/docker/./x", "normalized"),
            ("/docker//x", "normalized"),
            ("/docker/", "normalized"),
            ("docker", "starting with '/'"),
            ("", "starting with '/'"),
            ("/system.slice/*/x", "last segment only"),
            ("/docker-*/x.scope", "last segment only"),
            ("/system.slice/*", "every sibling"),
            ("/*", "every sibling"),
        ] {
            let text = format!(
                "{{\n \"eci\": {{\n  \"protectedCgroupParents\": [\"/docker\",\n   \"{parent}\"]\n }}\n}}"
            );
            let e = expect(&text, "eci.protectedCgroupParents[1]", 4);
            assert!(e.contains(why), "{parent}: {e}");
        }
        for good in [
            "/docker",
            "/system.slice/docker-*.scope",
            "/a/b/c*d*",
            "/kubepods.slice",
        ] {
            check_cgroup_parent(good).unwrap();
        }
    }

    #[test]
    fn bad_sockets_and_audit_settings() {
        for bad in [
            "run/docker.sock",
            "/run/../docker.sock",
            "/",
            "/run/docker.sock/",
        ] {
            let text = format!("{{\"eci\": {{\n\"protectedSockets\": [\"{bad}\"]}}}}");
            expect(&text, "eci.protectedSockets[0]", 2);
        }
        let e = expect(
            "{\"eci\": {\"audit\": {\n\"maxBytes\": 100}}}",
            "eci.audit.maxBytes",
            2,
        );
        assert!(e.contains("at least 4096"), "{e}");
        for keep in [0_u64, 101, 1 << 40] {
            let e = expect(
                &format!("{{\"eci\": {{\"audit\": {{\"keep\": {keep}}}}}}}"),
                "eci.audit.keep",
                1,
            );
            assert!(e.contains("from 1 to 100"), "{e}");
        }
        expect(
            "{\"eci\": {\"audit\": {\"path\": \"audit.jsonl\"}}}",
            "eci.audit.path",
            1,
        );
    }

    #[test]
    fn bad_shareable_paths_are_refused() {
        for (bad, why) in [
            ("/etc", "must not share it"),
            ("/", "below \"/\""),
            ("/var/lib/docker/volumes", "lies inside /var/lib/docker"),
            ("/var/lib/docker", "must not share it"),
            ("/var", "contains /var/lib/docker"),
            ("/var/lib", "contains /var/lib/docker"),
            ("/usr", "must not share it"),
            ("/run/user/1000", "lies inside /run"),
            ("/etc/eci", "lies inside /etc"),
            ("/proc/1", "lies inside /proc"),
            ("/var/log", "contains the audit log"),
            ("home", "absolute"),
            ("/home/../etc", "normalized"),
        ] {
            let text = format!(
                "{{\n  \"eci\": {{\n    \"shareableHostPaths\": [\n      \"/home\", \"{bad}\"\n    ]\n  }}\n}}"
            );
            let e = expect(&text, "eci.shareableHostPaths[1]", 4);
            assert!(e.contains(why), "{bad}: {e}");
        }
        let p = parse(
            r#"{"eci": {"shareableHostPaths": ["/home", "/Users", "/tmp", "/mnt/data", "/usr/share/fonts", "/var/log"],
                        "audit": {"path": "/var/lib/eci-audit/audit.jsonl"}}}"#,
            FILE,
        )
        .unwrap();
        assert_eq!(p.shareable_host_paths.len(), 6);
    }

    #[test]
    fn image_references() {
        let digest = format!("alpine@sha256:{}", "a".repeat(64));
        for ok in [
            "*",
            "alpine",
            "docker:cli",
            "docker.io/testcontainers/ryuk:*",
            "localhost:5000/my-team/app_x:1.2.3",
            "ghcr.io/a/b__c/d--e:latest",
            &digest,
        ] {
            ImageRef::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(
            split_image("docker.io/testcontainers/ryuk:*"),
            Ok(("docker.io/testcontainers/ryuk", Some("*"), None))
        );
        assert_eq!(
            split_image("localhost:5000/app"),
            Ok(("localhost:5000/app", None, None))
        );
        assert_eq!(
            split_image(&digest),
            Ok(("alpine", None, Some(&digest["alpine@".len()..])))
        );
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine@sha256:abc",
            "alpine@md5:0123",
            "docker.io/*",
            "alpine:la*st",
            "a..b",
            "-alpine",
            "alpine/",
            "reg:port/x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        let text = "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\"imageList\": {\n  \"images\": [\"docker:cli\",\n    \"Bad Image\"]}}}}";
        let e = expect(
            text,
            "enhancedContainerIsolation.dockerSocketMount.imageList.images[1]",
            3,
        );
        assert!(
            e.contains("column 5") && e.contains("not an image reference"),
            "{e}"
        );
    }

    #[test]
    fn command_lists() {
        let text = "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\n  \"commandList\": {\n    \"type\": \"maybe\"}}}}";
        let e = expect(
            text,
            "enhancedContainerIsolation.dockerSocketMount.commandList.type",
            3,
        );
        assert!(
            e.ends_with("expected \"allow\" or \"deny\", found \"maybe\""),
            "{e}"
        );
        let e = expect(
            "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\"commandList\": {\"type\": true}}}}",
            "enhancedContainerIsolation.dockerSocketMount.commandList.type",
            1,
        );
        assert!(
            e.ends_with("expected \"allow\" or \"deny\", found true"),
            "{e}"
        );
        for bad in ["", "*", "con*tainer", "Push", "push "] {
            let text = format!(
                "{{\"enhancedContainerIsolation\": {{\"dockerSocketMount\": {{\"commandList\": {{\n\"commands\": [\"push\", \"{bad}\"]}}}}}}}}"
            );
            expect(
                &text,
                "enhancedContainerIsolation.dockerSocketMount.commandList.commands[1]",
                2,
            );
        }
        let p = parse(
            r#"{"enhancedContainerIsolation": {"dockerSocketMount": {"commandList": {"type": "allow", "commands": ["image*", "ps"]}}}}"#,
            FILE,
        )
        .unwrap();
        assert_eq!(
            p.docker_socket_mount.command_list.kind,
            CommandListType::Allow
        );
    }

    #[test]
    fn values_are_found_past_lookalike_keys_and_strings() {
        // The same key in another section, and the value as a string elsewhere,
        // do not mislead the locator.
        let text = "{\"enhancedContainerIsolation\": {\"dockerSocketMount\": {\"imageList\": {\"images\": [\"/\"]}}},\n \"eci\": {\"protectedSockets\": [\"/\"],\n  \"protectedCgroupParents\": [\"/docker\", \"/\"]}}";
        let e = invalid(text);
        // Images are checked first: "/" is not an image.
        assert_eq!((e.line, e.column), (Some(1), Some(80)), "{e}");
        let text = "{\"eci\": {\"shareableHostPaths\": [\"/home\"], \"audit\": {\"path\": \"/x\"},\n \"protectedCgroupParents\": [\"/docker\", {\"nested\": [1, \"/\"]}]}}";
        let e = invalid(text);
        assert_eq!(
            e.key.as_deref(),
            Some("eci.protectedCgroupParents[1]"),
            "{e}"
        );
        assert_eq!((e.line, e.column), (Some(2), Some(40)), "{e}");
    }
}
