//! The policy file, `/etc/eci/admin-settings.json`: Docker's admin-settings
//! schema (`configurationFileVersion`, `enhancedContainerIsolation`) plus
//! eci's own `eci` section. Every key is optional; a missing file means the
//! built-in secure defaults. Unknown keys, wrong types and bad values are
//! errors that name the file, the key and the line.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_POLICY_PATH: &str = "/etc/eci/admin-settings.json";

/// Directories a shareable host path may neither be, nor contain, nor lie in.
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

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: line {line}, column {column}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{file}: {key}: {message}")]
    InvalidValue {
        file: String,
        key: String,
        message: String,
    },
    #[error("cannot read the policy {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandListType {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub enforcement: bool,
    pub locked: bool,
    pub socket_mount_images: Vec<String>,
    pub allow_derived_images: bool,
    pub command_list_type: CommandListType,
    pub commands: Vec<String>,
    pub protected_cgroup_parents: Vec<String>,
    pub protected_sockets: Vec<PathBuf>,
    pub shareable_host_paths: Vec<PathBuf>,
    pub audit_log: PathBuf,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            enforcement: true,
            locked: false,
            socket_mount_images: Vec::new(),
            allow_derived_images: false,
            command_list_type: CommandListType::Deny,
            commands: Vec::new(),
            protected_cgroup_parents: [
                "/docker",
                "/kubepods",
                "/kubepods.slice",
                "/system.slice/docker-*.scope",
                "/system.slice/cri-containerd-*.scope",
            ]
            .map(String::from)
            .to_vec(),
            protected_sockets: [
                "/run/docker.sock",
                "/var/run/docker.sock",
                "/run/containerd/containerd.sock",
                "/run/docker/containerd/containerd.sock",
                "/run/buildkit/buildkitd.sock",
            ]
            .map(PathBuf::from)
            .to_vec(),
            shareable_host_paths: Vec::new(),
            audit_log: PathBuf::from("/var/log/eci/audit.jsonl"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    configuration_file_version: Option<u32>,
    enhanced_container_isolation: Option<RawEci>,
    eci: Option<RawEciSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEci {
    value: Option<bool>,
    locked: Option<bool>,
    docker_socket_mount: Option<RawSocketMount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSocketMount {
    image_list: Option<RawImageList>,
    command_list: Option<RawCommandList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawImageList {
    images: Option<Vec<String>>,
    allow_derived_images: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCommandList {
    #[serde(rename = "type")]
    kind: Option<CommandListType>,
    commands: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEciSection {
    protected_cgroup_parents: Option<Vec<String>>,
    protected_sockets: Option<Vec<String>>,
    shareable_host_paths: Option<Vec<String>>,
    audit_log: Option<String>,
}

/// Where the policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    BuiltInDefaults,
}

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

/// The line of the first occurrence of `"value"` after `"key"` (best effort).
fn line_of(text: &str, key: &str, value: &str) -> Option<usize> {
    let key_at = text.find(&format!("\"{key}\""))?;
    let rel = text[key_at..].find(&format!("\"{value}\""))?;
    Some(text[..key_at + rel].lines().count().max(1))
}

pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: Raw = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        PolicyError::Invalid {
            file: file.into(),
            line: inner.line(),
            column: inner.column(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message,
        }
    })?;
    let bad = |key: String, json_key: &str, value: &str, message: String| match line_of(
        text, json_key, value,
    ) {
        Some(line) => PolicyError::Invalid {
            file: file.into(),
            line,
            column: 0,
            key,
            message,
        },
        None => PolicyError::InvalidValue {
            file: file.into(),
            key,
            message,
        },
    };

    let mut policy = Policy::default();
    if let Some(version) = raw.configuration_file_version
        && !(1..=2).contains(&version)
    {
        return Err(bad(
            "configurationFileVersion".into(),
            "configurationFileVersion",
            "",
            format!("expected 1 or 2, found {version}"),
        ));
    }
    if let Some(eci) = raw.enhanced_container_isolation {
        policy.enforcement = eci.value.unwrap_or(true);
        policy.locked = eci.locked.unwrap_or(false);
        if let Some(mount) = eci.docker_socket_mount {
            if let Some(list) = mount.image_list {
                for (i, image) in list.images.iter().flatten().enumerate() {
                    if let Err(why) = check_image(image) {
                        let key = format!(
                            "enhancedContainerIsolation.dockerSocketMount.imageList.images[{i}]"
                        );
                        return Err(bad(key, "images", image, why));
                    }
                }
                policy.socket_mount_images = list.images.unwrap_or_default();
                policy.allow_derived_images = list.allow_derived_images.unwrap_or(false);
            }
            if let Some(list) = mount.command_list {
                for (i, command) in list.commands.iter().flatten().enumerate() {
                    let name = command.strip_suffix('*').unwrap_or(command);
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                    {
                        let key = format!(
                            "enhancedContainerIsolation.dockerSocketMount.commandList.commands[{i}]"
                        );
                        return Err(bad(
                            key,
                            "commands",
                            command,
                            "expected a docker command such as \"push\" or \"container*\"".into(),
                        ));
                    }
                }
                policy.command_list_type = list.kind.unwrap_or(CommandListType::Deny);
                policy.commands = list.commands.unwrap_or_default();
            }
        }
    }
    if let Some(section) = raw.eci {
        if let Some(parents) = section.protected_cgroup_parents {
            for (i, parent) in parents.iter().enumerate() {
                if let Err(why) = check_cgroup_parent(parent) {
                    return Err(bad(
                        format!("eci.protectedCgroupParents[{i}]"),
                        "protectedCgroupParents",
                        parent,
                        why,
                    ));
                }
            }
            policy.protected_cgroup_parents = parents;
        }
        if let Some(sockets) = section.protected_sockets {
            for (i, socket) in sockets.iter().enumerate() {
                if let Err(why) = check_absolute(socket) {
                    return Err(bad(
                        format!("eci.protectedSockets[{i}]"),
                        "protectedSockets",
                        socket,
                        why,
                    ));
                }
            }
            policy.protected_sockets = sockets.into_iter().map(PathBuf::from).collect();
        }
        if let Some(paths) = section.shareable_host_paths {
            for (i, path) in paths.iter().enumerate() {
                if let Err(why) = check_absolute(path).and_then(|()| check_shareable(path)) {
                    return Err(bad(
                        format!("eci.shareableHostPaths[{i}]"),
                        "shareableHostPaths",
                        path,
                        why,
                    ));
                }
            }
            policy.shareable_host_paths = paths.into_iter().map(PathBuf::from).collect();
        }
        if let Some(log) = section.audit_log {
            if let Err(why) = check_absolute(&log) {
                return Err(bad("eci.auditLog".into(), "auditLog", &log, why));
            }
            policy.audit_log = PathBuf::from(log);
        }
    }
    Ok(policy)
}

fn check_absolute(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("expected an absolute path, found \"{path}\""));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || path.contains("//")
    {
        return Err(format!(
            "the path \"{path}\" must be normalized (no `.`, `..` or `//`)"
        ));
    }
    Ok(())
}

fn check_shareable(path: &str) -> Result<(), String> {
    let p = Path::new(path.trim_end_matches('/'));
    if p == Path::new("") || p == Path::new("/") {
        return Err("sharing the VM's root directory would expose all of it".into());
    }
    for dir in CRITICAL_DIRS {
        let dir = Path::new(dir);
        if p.starts_with(dir) || dir.starts_with(p) {
            return Err(format!(
                "\"{path}\" is, holds or lies in {}, which containers must not reach",
                dir.display()
            ));
        }
    }
    Ok(())
}

fn check_cgroup_parent(parent: &str) -> Result<(), String> {
    if parent == "/" {
        return Err("protecting the root cgroup would lock out the agent and the engine".into());
    }
    if !parent.starts_with('/') {
        return Err(format!(
            "expected a cgroup path starting with '/', found \"{parent}\""
        ));
    }
    let segments: Vec<&str> = parent[1..].split('/').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(format!("\"{parent}\" has an empty, `.` or `..` segment"));
    }
    if segments[..segments.len() - 1]
        .iter()
        .any(|s| s.contains('*'))
    {
        return Err(format!(
            "\"{parent}\": `*` is allowed in the last segment only"
        ));
    }
    Ok(())
}

/// `name[:tag]` (tag `*` = any), `name@sha256:<64 hex>`, or `*`.
fn check_image(image: &str) -> Result<(), String> {
    if image == "*" {
        return Ok(());
    }
    let (name, rest) = match image.split_once('@') {
        Some((name, digest)) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "\"{image}\": a digest must be sha256:<64 hex digits>"
                ));
            }
            (name, None)
        }
        None => match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
            Some((name, tag)) => (name, Some(tag)),
            None => (image, None),
        },
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b));
    let tag_ok = rest.is_none_or(|t| {
        t == "*"
            || (!t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    });
    if name_ok && tag_ok {
        Ok(())
    } else {
        Err(format!(
            "\"{image}\" is not an image reference (name[:tag], name@sha256:<digest>, or *)"
        ))
    }
}

impl Policy {
    /// A few lines for the log.
    pub fn summary(&self) -> String {
        format!(
            "enforcement {}{}; protected parents {:?}; protected sockets {}; shareable paths {}; audit log {}",
            if self.enforcement { "on" } else { "OFF" },
            if self.locked { " (locked)" } else { "" },
            self.protected_cgroup_parents,
            self.protected_sockets.len(),
            self.shareable_host_paths.len(),
            self.audit_log.display()
        )
    }

    /// The policy written by `eci-agent install` when there is none.
    pub fn default_file_text() -> String {
        let d = Policy::default();
        let value = serde_json::json!({
            "configurationFileVersion": 2,
            "enhancedContainerIsolation": {
                "value": true,
                "locked": false,
                "dockerSocketMount": {
                    "imageList": { "images": [], "allowDerivedImages": false },
                    "commandList": { "type": "deny", "commands": [] }
                }
            },
            "eci": {
                "protectedCgroupParents": d.protected_cgroup_parents,
                "protectedSockets": d.protected_sockets,
                "shareableHostPaths": [],
                "auditLog": d.audit_log,
            }
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
  "configurationFileVersion": 2,
  "enhancedContainerIsolation": {
    "value": true,
    "locked": true,
    "dockerSocketMount": {
      "imageList": { "images": ["docker.io/testcontainers/ryuk:*", "docker:cli"], "allowDerivedImages": false },
      "commandList": { "type": "deny", "commands": ["push", "build", "container*"] }
    }
  },
  "eci": {
    "protectedCgroupParents": ["/docker", "/system.slice/docker-*.scope"],
    "protectedSockets": ["/run/docker.sock"],
    "shareableHostPaths": ["/home"],
    "auditLog": "/var/log/eci/audit.jsonl"
  }
}"#;

    fn err(text: &str) -> String {
        parse(text, "/etc/eci/admin-settings.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn missing_file_means_secure_defaults() {
        let (policy, source) = load(Path::new("/nonexistent/eci/admin-settings.json")).unwrap();
        assert_eq!(source, Source::BuiltInDefaults);
        assert!(policy.enforcement);
        assert!(
            policy
                .protected_cgroup_parents
                .contains(&"/docker".to_string())
        );
        assert!(
            policy
                .protected_sockets
                .contains(&PathBuf::from("/run/docker.sock"))
        );
    }

    #[test]
    fn the_full_example_parses() {
        let p = parse(FULL, "f").unwrap();
        assert!(p.locked);
        assert_eq!(p.command_list_type, CommandListType::Deny);
        assert_eq!(p.commands, vec!["push", "build", "container*"]);
        assert_eq!(p.shareable_host_paths, vec![PathBuf::from("/home")]);
        assert_eq!(
            parse(&Policy::default_file_text(), "f").unwrap(),
            Policy::default()
        );
    }

    #[test]
    fn wrong_type_names_file_key_and_line() {
        let text = "{\n  \"enhancedContainerIsolation\": {\n    \"value\": \"yes\"\n  }\n}";
        let e = err(text);
        assert!(e.starts_with("/etc/eci/admin-settings.json: line 3"), "{e}");
        assert!(e.contains("enhancedContainerIsolation.value"), "{e}");
        assert!(e.contains("expected a boolean"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_with_the_allowed_ones() {
        let e = err("{\n  \"eci\": {\n    \"protectedParents\": []\n  }\n}");
        assert!(
            e.contains("line 3")
                && e.contains("eci")
                && e.contains("unknown field `protectedParents`"),
            "{e}"
        );
        assert!(e.contains("protectedCgroupParents"), "{e}");
    }

    #[test]
    fn bad_values_name_key_index_and_line() {
        let e =
            err("{\n \"eci\": {\n  \"protectedCgroupParents\": [\"/docker\",\n   \"/\"]\n }\n}");
        assert!(
            e.contains("eci.protectedCgroupParents[1]")
                && e.contains("line 4")
                && e.contains("lock out"),
            "{e}"
        );
        let e = err(r#"{"eci": {"protectedCgroupParents": ["docker"]}}"#);
        assert!(e.contains("starting with '/'"), "{e}");
        let e = err(r#"{"eci": {"protectedCgroupParents": ["/a*/b"]}}"#);
        assert!(e.contains("last segment"), "{e}");
        for bad in [
            "/etc",
            "/",
            "/var/lib/docker/volumes",
            "/var",
            "relative",
            "/home/../etc",
        ] {
            let e = err(&format!(
                r#"{{"eci": {{"shareableHostPaths": ["{bad}"]}}}}"#
            ));
            assert!(e.contains("eci.shareableHostPaths[0]"), "{bad}: {e}");
        }
        let e = err(
            r#"{"enhancedContainerIsolation": {"dockerSocketMount": {"imageList": {"images": ["Bad Image"]}}}}"#,
        );
        assert!(
            e.contains("images[0]") && e.contains("not an image reference"),
            "{e}"
        );
        let e = err(
            r#"{"enhancedContainerIsolation": {"dockerSocketMount": {"commandList": {"type": "maybe"}}}}"#,
        );
        assert!(
            e.contains("commandList.type") && e.contains("allow") && e.contains("deny"),
            "{e}"
        );
        let e = err(r#"{"configurationFileVersion": 7}"#);
        assert!(
            e.contains("configurationFileVersion") && e.contains("1 or 2"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = err("{\n  \"eci\": {,\n}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn image_references() {
        for ok in [
            "*",
            "docker:cli",
            "docker.io/testcontainers/ryuk:*",
            "alpine",
            &format!("alpine@sha256:{}", "a".repeat(64)),
        ] {
            assert!(check_image(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alpine", "alpine@sha256:abc", "alpine:"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unreadable_file_is_an_error_not_defaults() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as a file.
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot read the policy"), "{e}");
    }
}
