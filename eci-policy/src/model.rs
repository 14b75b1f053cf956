//! The policy in force, as the agent and eci-runc use it: the file's values
//! over the built-in defaults.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{checks::split_image, defaults::*};

/// The effective policy: the file's values over the built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `eci.shareableHostPaths` (default `/home`).
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
    /// `eci.allowedDevices`: device nodes containers may open beyond the
    /// standard set (null, zero, full, random, urandom, tty, ptmx and their
    /// own ptys), by what they are: `"c 10:200"`, `"c 10:*"`, `"b 7:0"`.
    /// Default none: a VM disk never is.
    #[serde(default)]
    pub allowed_devices: Vec<DeviceRule>,
    /// `eci.audit`.
    pub audit: AuditSettings,
}

/// One entry of `eci.allowedDevices`: a character or block device by its
/// major and minor number (`None`: every minor of the major).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub block: bool,
    pub major: u32,
    pub minor: Option<u32>,
}

impl DeviceRule {
    /// `"c 10:200"`, `"c 10:*"`, `"b 7:0"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected a device as \"c MAJOR:MINOR\" or \"b MAJOR:MINOR\" (MINOR may be *), found {text:?}"
            )
        };
        let (kind, numbers) = text.trim().split_once(' ').ok_or_else(bad)?;
        let block = match kind {
            "c" => false,
            "b" => true,
            _ => return Err(bad()),
        };
        let (major, minor) = numbers.trim().split_once(':').ok_or_else(bad)?;
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor = match minor {
            "*" => None,
            m => Some(m.parse::<u32>().map_err(|_| bad())?),
        };
        // The kernel's dev_t: 12 bits of major, 20 of minor.
        if major >= 1 << 12 || minor.is_some_and(|m| m >= (1 << 20) - 1) {
            return Err(format!("{text:?}: the device number is out of range"));
        }
        Ok(Self {
            block,
            major,
            minor,
        })
    }
}

impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.block { 'b' } else { 'c' };
        match self.minor {
            Some(minor) => write!(f, "{kind} {}:{minor}", self.major),
            None => write!(f, "{kind} {}:*", self.major),
        }
    }
}

/// Which containers may mount the Docker socket, and what they may do with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerSocketMount {
    pub image_list: ImageList,
    pub command_list: CommandList,
}

/// `dockerSocketMount.imageList` (default: no image, no derived images).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<ImageRef>,
    pub allow_derived_images: bool,
}

/// `dockerSocketMount.commandList` (default: deny nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSettings {
    pub path: PathBuf,
    /// Rotate when the log reaches this size.
    pub max_bytes: u64,
    /// How many rotated files to keep.
    pub keep: u32,
    /// Lines per second each container's decisions may take; beyond, they
    /// are counted per container and hook and reported as one summary line
    /// a second, so one container cannot crowd out another's events.
    pub lines_per_second: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_AUDIT_PATH),
            max_bytes: DEFAULT_AUDIT_MAX_BYTES,
            keep: DEFAULT_AUDIT_KEEP,
            lines_per_second: DEFAULT_AUDIT_LINES_PER_SECOND,
        }
    }
}

/// A validated entry of `imageList.images`: `*` (any image), `name[:tag]`
/// (no tag means `latest`, tag `*` any tag) or `name@sha256:<64 hex>`.
/// Read from the wire (the agent's answer to eci-runc) it is checked again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ImageRef(String);

/// Text that is not an image reference; says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAnImageRef(pub String);

impl ImageRef {
    pub fn parse(text: &str) -> Result<Self, NotAnImageRef> {
        split_image(text)
            .map(|_| Self(text.to_owned()))
            .map_err(|why| NotAnImageRef(why.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageRef {
    type Error = NotAnImageRef;

    fn try_from(text: String) -> Result<Self, NotAnImageRef> {
        Self::parse(&text)
    }
}

impl From<ImageRef> for String {
    fn from(image: ImageRef) -> String {
        image.0
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
    /// sockets protected, `/home` shareable, no image allowed the
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
            shareable_host_paths: DEFAULT_SHAREABLE_HOST_PATHS
                .iter()
                .map(PathBuf::from)
                .collect(),
            docker_api_sockets: DEFAULT_DOCKER_API_SOCKETS
                .iter()
                .map(PathBuf::from)
                .collect(),
            docker_runtime_name: DEFAULT_DOCKER_RUNTIME_NAME.to_owned(),
            allowed_devices: Vec::new(),
            audit: AuditSettings::default(),
        }
    }
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
             allowed devices beyond the standard set: {}\n\
             docker socket mount: images {}{}; commands {kind} {}\n\
             audit log: {} (rotated at {} bytes, {} kept; {} lines per container and second, the rest counted)",
            if self.enforcement { "on" } else { "OFF" },
            if self.locked { " (locked)" } else { "" },
            list(&self.protected_cgroup_parents),
            paths(&self.protected_sockets),
            paths(&self.shareable_host_paths),
            list(&self.allowed_devices),
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
            self.audit.lines_per_second,
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
                allowed_devices: self
                    .allowed_devices
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                audit: AuditOut {
                    path: &self.audit.path,
                    max_bytes: self.audit.max_bytes,
                    keep: self.audit.keep,
                    lines_per_second: self.audit.lines_per_second,
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
    lines_per_second: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OwnOut<'a> {
    protected_cgroup_parents: &'a [String],
    protected_sockets: &'a [PathBuf],
    shareable_host_paths: &'a [PathBuf],
    docker_api_sockets: &'a [PathBuf],
    docker_runtime_name: &'a str,
    allowed_devices: Vec<String>,
    audit: AuditOut<'a>,
}
