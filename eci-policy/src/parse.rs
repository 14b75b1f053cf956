//! Reading the file: every key optional, unknown keys and wrong types
//! refused, then each value checked.

use std::{fmt, path::PathBuf};

use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};

use crate::{
    PolicyError,
    checks::*,
    defaults::*,
    diagnostics::{Invalid, Seg, at_value, from_serde, item, keys},
    model::*,
};

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
    #[serde(default, deserialize_with = "present")]
    allowed_devices: Option<Vec<String>>,
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
    #[serde(default, deserialize_with = "present")]
    lines_per_second: Option<u64>,
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
                            why.0,
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
                            why.0,
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
                        .map_err(|why| bad(item(&["eci", "protectedCgroupParents"], i), why.0))?;
                }
                policy.protected_cgroup_parents = parents;
            }
            if let Some(sockets) = own.protected_sockets {
                for (i, socket) in sockets.iter().enumerate() {
                    check_path(socket)
                        .map_err(|why| bad(item(&["eci", "protectedSockets"], i), why.0))?;
                }
                policy.protected_sockets = sockets.into_iter().map(PathBuf::from).collect();
            }
            let audit = own.audit.unwrap_or(RawAudit {
                path: None,
                max_bytes: None,
                keep: None,
                lines_per_second: None,
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
                    check_path(&path).map_err(|why| bad(keys(&["eci", "audit", "path"]), why.0))?;
                    policy.audit.path = PathBuf::from(path);
                }
                (None, Some(path)) => {
                    check_path(&path).map_err(|why| bad(keys(&["eci", "auditLog"]), why.0))?;
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
            if let Some(rate) = audit.lines_per_second {
                match u32::try_from(rate) {
                    Ok(rate) if (1..=MAX_AUDIT_LINES_PER_SECOND).contains(&rate) => {
                        policy.audit.lines_per_second = rate;
                    }
                    _ => {
                        return Err(bad(
                            keys(&["eci", "audit", "linesPerSecond"]),
                            format!(
                                "expected audit lines per container and second from 1 to \
                                 {MAX_AUDIT_LINES_PER_SECOND}, found {rate}"
                            ),
                        ));
                    }
                }
            }
            if let Some(sockets) = own.docker_api_sockets {
                for (i, socket) in sockets.iter().enumerate() {
                    check_path(socket)
                        .map_err(|why| bad(item(&["eci", "dockerApiSockets"], i), why.0))?;
                }
                policy.docker_api_sockets = sockets.into_iter().map(PathBuf::from).collect();
            }
            if let Some(name) = own.docker_runtime_name {
                check_runtime_name(&name)
                    .map_err(|why| bad(keys(&["eci", "dockerRuntimeName"]), why.0))?;
                policy.docker_runtime_name = name;
            }
            if let Some(devices) = own.allowed_devices {
                policy.allowed_devices = devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        DeviceRule::parse(d)
                            .map_err(|why| bad(item(&["eci", "allowedDevices"], i), why))
                    })
                    .collect::<Result<_, _>>()?;
            }
            // Checked last: a shareable path must not expose the audit log.
            if let Some(paths) = own.shareable_host_paths {
                for (i, path) in paths.iter().enumerate() {
                    check_path(path)
                        .and_then(|()| check_shareable(path, &policy.audit.path))
                        .map_err(|why| bad(item(&["eci", "shareableHostPaths"], i), why.0))?;
                }
                policy.shareable_host_paths = paths.into_iter().map(PathBuf::from).collect();
            }
        }
        Ok(policy)
    }
}
