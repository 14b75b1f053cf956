//! The request bodies the proxy judges: container create and volume create.
//! Pure functions: the body in, the canonical body to forward (or the
//! refusal) out.
//!
//! Each body is read as the engine reads it (`engine_json`): the fields
//! judged or set here are taken under every spelling the engine accepts,
//! judged, and put back once under their canonical names, so the engine
//! acts on exactly what was judged. Judged:
//!
//! - container create: `HostConfig.Runtime` is set to eci's runtime;
//!   `HostConfig.CgroupParent` is refused (containers made through the
//!   proxy stay under the engine's default parent); `HostConfig.Binds` and
//!   `HostConfig.Mounts[]` of type `bind` must name paths below
//!   `eci.shareableHostPaths`; `HostConfig.VolumeDriver` and
//!   `Mounts[].VolumeOptions.DriverConfig` must be the `local` driver with
//!   options that make a plain or tmpfs volume;
//! - volume create: `Driver` must be `local`, `DriverOpts` empty or a tmpfs
//!   (a `type=none,o=bind,device=/etc` volume would bind a VM path, a
//!   `device=/dev/...` one mount a disk); no `ClusterVolumeSpec`.

use std::path::{Component, Path, PathBuf};

use serde_json::value::RawValue;

use crate::engine_json::{self, JsonError, Object};

/// What the checks need from the policy.
#[derive(Debug, Clone, Copy)]
pub struct BodyPolicy<'a> {
    /// `eci.dockerRuntimeName`.
    pub runtime: &'a str,
    /// `eci.shareableHostPaths`.
    pub shareable_host_paths: &'a [PathBuf],
}

/// How to make a volume the proxy lets through.
const VOLUME_FIX: &str = "use a plain named volume (docker volume create NAME, no -o; -v NAME:/path), a tmpfs volume (-o type=tmpfs -o device=tmpfs -o o=size=64m), or --tmpfs /path";

#[derive(Debug, thiserror::Error)]
pub enum BodyRefusal {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error(
        "HostConfig.CgroupParent {0:?} is refused: containers made through the Docker socket of a trusted image stay under the engine's default cgroup parent; leave out --cgroup-parent"
    )]
    CgroupParent(String),
    #[error(
        "{field} binds the VM path {from:?}, which is not below eci.shareableHostPaths ({shareable}); use a named volume (-v NAME:/path) or --tmpfs /path, or ask an administrator to add the directory to eci.shareableHostPaths"
    )]
    Bind {
        field: String,
        from: String,
        shareable: String,
    },
    #[error(
        "{what} uses the volume driver {driver:?}: a driver other than \"local\" is a plugin, and plugins are refused to containers (an administrator manages them on the VM); {VOLUME_FIX}"
    )]
    Driver { what: String, driver: String },
    #[error("{what} has the driver options {options} ({why}); {VOLUME_FIX}")]
    VolumeOptions {
        what: String,
        options: String,
        why: &'static str,
    },
    #[error(
        "a container start with a body (a HostConfig, API before 1.24) is refused: it would replace the container's settings, runtime included; start without one and give settings at create"
    )]
    StartWithHostConfig,
    #[error(
        "{0} is given at the top of the body, the deprecated form the engine still merges into HostConfig; the eci proxy refuses it there: put it in HostConfig"
    )]
    TopLevelHostField(&'static str),
    #[error(
        "{0} has a ClusterVolumeSpec: cluster volumes are made by plugins, refused to containers; {VOLUME_FIX}"
    )]
    ClusterVolume(String),
}

impl BodyRefusal {
    /// The HTTP status: 400 for a body the proxy cannot read as the engine
    /// would, 403 for one it reads and refuses.
    pub fn status(&self) -> u16 {
        match self {
            BodyRefusal::Json(_) | BodyRefusal::TopLevelHostField(_) => 400,
            _ => 403,
        }
    }

    /// The rule, short, for the audit line.
    pub fn rule(&self) -> &'static str {
        match self {
            BodyRefusal::Json(_) => "the body is not read as the engine would read it",
            BodyRefusal::TopLevelHostField(_) => "host settings only in HostConfig",
            BodyRefusal::StartWithHostConfig => "no HostConfig at start",
            BodyRefusal::CgroupParent(_) => "no cgroup parent through the proxy",
            BodyRefusal::Bind { .. } => "binds only below eci.shareableHostPaths",
            BodyRefusal::Driver { .. } | BodyRefusal::ClusterVolume(_) => {
                "volumes only with the local driver"
            }
            BodyRefusal::VolumeOptions { .. } => "local volumes only plain or tmpfs",
        }
    }
}

/// The value of `field` in `object`, taken (see `engine_json`).
fn take(object: &mut Object, field: &str, path: &str) -> Result<Option<Box<RawValue>>, JsonError> {
    object.take(field, &field_path(path, field))
}

/// `path.field`, or `field` at the top.
fn field_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// The string field `field` of `object`, taken; `null` reads as absent.
fn take_string(object: &mut Object, field: &str, path: &str) -> Result<Option<String>, JsonError> {
    match take(object, field, path)? {
        Some(raw) => engine_json::string(&raw, &field_path(path, field)),
        None => Ok(None),
    }
}

/// The object field `field` of `object`, taken; `null` reads as absent.
fn take_object(object: &mut Object, field: &str, path: &str) -> Result<Option<Object>, JsonError> {
    match take(object, field, path)? {
        Some(raw) => Object::parse(&raw, &field_path(path, field)),
        None => Ok(None),
    }
}

/// The object a body holds; an empty body is an empty object (as the
/// engine reads it).
fn body_object(body: &[u8]) -> Result<Object, JsonError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Object::default());
    }
    Object::parse_body(body)?.ok_or_else(|| JsonError::NotAnObject {
        path: "the body".into(),
    })
}

/// The fields of HostConfig judged or set here.
const JUDGED_HOST_FIELDS: [&str; 5] =
    ["Runtime", "CgroupParent", "VolumeDriver", "Binds", "Mounts"];

/// A container-create body as it goes to the engine: judged, with eci's
/// runtime.
pub fn container_create(body: &[u8], policy: BodyPolicy) -> Result<Vec<u8>, BodyRefusal> {
    let mut top = body_object(body)?;
    let mut host = take_object(&mut top, "HostConfig", "")?.unwrap_or_default();
    // The engine (up to 20.10 at least) also decodes HostConfig's fields at
    // the top, and takes some of them (VolumeDriver) into HostConfig.
    for field in JUDGED_HOST_FIELDS {
        if take(&mut top, field, "")?.is_some() {
            return Err(BodyRefusal::TopLevelHostField(field));
        }
    }
    let path = "HostConfig";
    // Runtime: whatever was asked, eci's.
    take(&mut host, "Runtime", path)?;
    host.put("Runtime", engine_json::string_value(policy.runtime)?);
    // CgroupParent: none (an empty one is the default: dropped).
    if let Some(parent) = take_string(&mut host, "CgroupParent", path)?
        && !parent.is_empty()
    {
        return Err(BodyRefusal::CgroupParent(parent));
    }
    // VolumeDriver: the driver of the named volumes in Binds and of the
    // anonymous ones.
    if let Some(driver) = take_string(&mut host, "VolumeDriver", path)? {
        check_driver(&driver, "HostConfig.VolumeDriver")?;
        host.put("VolumeDriver", engine_json::string_value(&driver)?);
    }
    if let Some(raw) = take(&mut host, "Binds", path)? {
        let binds: Option<Vec<String>> =
            serde_json::from_str(raw.get()).map_err(|_| JsonError::NotAList {
                path: "HostConfig.Binds (of strings)".into(),
            })?;
        for (i, bind) in binds.iter().flatten().enumerate() {
            check_bind(bind, &format!("HostConfig.Binds[{i}]"), policy)?;
        }
        host.put("Binds", raw);
    }
    if let Some(raw) = take(&mut host, "Mounts", path)? {
        let mut mounts = Vec::new();
        for (i, item) in engine_json::list(&raw, "HostConfig.Mounts")?
            .into_iter()
            .flatten()
            .enumerate()
        {
            mounts.push(mount(&item, &format!("HostConfig.Mounts[{i}]"), policy)?);
        }
        host.put("Mounts", engine_json::list_value(&mounts)?);
    }
    top.put("HostConfig", host.to_raw()?);
    Ok(top.to_raw()?.get().as_bytes().to_vec())
}

/// One of `HostConfig.Mounts`, judged and canonical.
fn mount(raw: &RawValue, path: &str, policy: BodyPolicy) -> Result<Box<RawValue>, BodyRefusal> {
    let Some(mut mount) = Object::parse(raw, path)? else {
        // A null item: an empty mount, which the engine refuses itself.
        return Ok(raw.to_owned());
    };
    let kind = take_string(&mut mount, "Type", path)?;
    let source = take_string(&mut mount, "Source", path)?;
    if kind.as_deref() == Some("bind") {
        let source = source.as_deref().unwrap_or("");
        check_host_path(source, &format!("{path} (type bind)"), policy)?;
    }
    if let Some(kind) = &kind {
        mount.put("Type", engine_json::string_value(kind)?);
    }
    if let Some(source) = &source {
        mount.put("Source", engine_json::string_value(source)?);
    }
    let options_path = format!("{path}.VolumeOptions");
    if let Some(mut options) = take_object(&mut mount, "VolumeOptions", path)? {
        let driver_path = format!("{options_path}.DriverConfig");
        if let Some(mut driver) = take_object(&mut options, "DriverConfig", &options_path)? {
            let what = format!(
                "the volume {:?} ({driver_path})",
                source.as_deref().unwrap_or("")
            );
            if let Some(name) = take_string(&mut driver, "Name", &driver_path)? {
                check_driver(&name, &what)?;
                driver.put("Name", engine_json::string_value(&name)?);
            }
            if let Some(opts) = take_object(&mut driver, "Options", &driver_path)? {
                check_local_options(&opts, &what, &format!("{driver_path}.Options"))?;
                driver.put("Options", opts.to_raw()?);
            }
            options.put("DriverConfig", driver.to_raw()?);
        }
        mount.put("VolumeOptions", options.to_raw()?);
    }
    Ok(mount.to_raw()?)
}

/// A container-start body as it goes to the engine: none (empty, `{}` or
/// `null`, forwarded as they came); any other is refused.
pub fn container_start(body: &[u8]) -> Result<Vec<u8>, BodyRefusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(body.to_vec());
    }
    match Object::parse_body(body)? {
        Some(object) if object.is_empty() => Ok(body.to_vec()),
        None => Ok(body.to_vec()),
        Some(_) => Err(BodyRefusal::StartWithHostConfig),
    }
}

/// A volume-create body as it goes to the engine: judged.
pub fn volume_create(body: &[u8]) -> Result<Vec<u8>, BodyRefusal> {
    let mut top = body_object(body)?;
    let name = take_string(&mut top, "Name", "")?;
    let what = format!("the volume {:?}", name.as_deref().unwrap_or(""));
    if let Some(name) = &name {
        top.put("Name", engine_json::string_value(name)?);
    }
    if let Some(driver) = take_string(&mut top, "Driver", "")? {
        check_driver(&driver, &what)?;
        top.put("Driver", engine_json::string_value(&driver)?);
    }
    if let Some(opts) = take_object(&mut top, "DriverOpts", "")? {
        check_local_options(&opts, &what, "DriverOpts")?;
        top.put("DriverOpts", opts.to_raw()?);
    }
    if let Some(spec) = take(&mut top, "ClusterVolumeSpec", "")?
        && spec.get().trim() != "null"
    {
        return Err(BodyRefusal::ClusterVolume(what));
    }
    Ok(top.to_raw()?.get().as_bytes().to_vec())
}

/// Only the `local` driver (`""` is the engine's default, `local`).
fn check_driver(driver: &str, what: &str) -> Result<(), BodyRefusal> {
    if driver.is_empty() || driver == "local" {
        return Ok(());
    }
    Err(BodyRefusal::Driver {
        what: what.to_owned(),
        driver: driver.to_owned(),
    })
}

/// Options of the local driver: none (a plain volume) or a tmpfs.
fn check_local_options(opts: &Object, what: &str, path: &str) -> Result<(), BodyRefusal> {
    // A map: keys match exactly; each once.
    let mut values: Vec<(&str, String)> = Vec::new();
    for (key, raw) in opts.map_entries(path)? {
        let value = engine_json::string(raw, &format!("{path}[{key:?}]"))?;
        values.push((key, value.unwrap_or_default()));
    }
    if values.is_empty() {
        return Ok(());
    }
    let get = |name: &str| {
        values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let why = if get("type") != Some("tmpfs") {
        Some(
            "only type=tmpfs is allowed: another type mounts a device, a VM path or a network share",
        )
    } else if values
        .iter()
        .any(|(k, _)| !["type", "o", "device", "size"].contains(k))
    {
        Some("only the options type, o, device and size are allowed")
    } else if !matches!(get("device"), None | Some("") | Some("tmpfs")) {
        Some("a tmpfs volume's device must be tmpfs")
    } else if get("o").is_some_and(|o| {
        o.split(',').any(|flag| {
            ["bind", "rbind", "remount", "move"]
                .iter()
                .any(|f| flag.trim().eq_ignore_ascii_case(f))
        })
    }) {
        Some("o=bind/rbind would bind the device path instead of making a tmpfs")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(BodyRefusal::VolumeOptions {
            what: what.to_owned(),
            options: values
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            why,
        }),
    }
}

/// A `Binds` entry: `source:target[:options]`; a source that begins with
/// `/` is a VM path, another a named volume (of `VolumeDriver`).
fn check_bind(bind: &str, field: &str, policy: BodyPolicy) -> Result<(), BodyRefusal> {
    match bind.split_once(':') {
        Some((source, _)) if source.starts_with('/') => check_host_path(source, field, policy),
        // A named volume, or a target alone (an anonymous volume).
        _ => Ok(()),
    }
}

/// A VM path bound into a container: only below a shareable host path,
/// spelled without `..`.
fn check_host_path(source: &str, field: &str, policy: BodyPolicy) -> Result<(), BodyRefusal> {
    let path = Path::new(source);
    let plain = path.is_absolute() && !path.components().any(|c| c == Component::ParentDir);
    if plain
        && policy
            .shareable_host_paths
            .iter()
            .any(|p| path.starts_with(p))
    {
        return Ok(());
    }
    let shareable = if policy.shareable_host_paths.is_empty() {
        "none".to_owned()
    } else {
        policy
            .shareable_host_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(BodyRefusal::Bind {
        field: field.to_owned(),
        from: source.to_owned(),
        shareable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BodyPolicy<'static> {
        static SHAREABLE: std::sync::LazyLock<Vec<PathBuf>> =
            std::sync::LazyLock::new(|| vec![PathBuf::from("/home")]);
        BodyPolicy {
            runtime: "eci",
            shareable_host_paths: &SHAREABLE,
        }
    }

    fn create(body: &str) -> Result<serde_json::Value, BodyRefusal> {
        let out = container_create(body.as_bytes(), policy())?;
        Ok(serde_json::from_slice(&out).expect("the proxy forwards JSON"))
    }

    fn refused(result: Result<impl std::fmt::Debug, BodyRefusal>) -> BodyRefusal {
        result.expect_err("refused")
    }

    #[test]
    fn containers_created_through_the_proxy_get_ecis_runtime_whatever_the_spelling() {
        for body in [
            r#"{"Image":"busybox","HostConfig":{"Runtime":"runc","Privileged":true}}"#,
            r#"{"Image":"busybox","hostconfig":{"runtime":"runc","Privileged":true}}"#,
            r#"{"Image":"busybox","HOSTCONFIG":{"RUNTIME":"runc","Privileged":true}}"#,
            "{\"Image\":\"busybox\",\"Ho\u{17F}tConfig\":{\"Runt\u{131}me\":\"runc\",\"Privileged\":true}}",
        ] {
            let out = create(body).expect(body);
            assert_eq!(out["HostConfig"]["Runtime"], "eci", "{body}");
            assert_eq!(out["HostConfig"]["Privileged"], true, "{body}");
            assert_eq!(out["Image"], "busybox");
            let keys = out.as_object().expect("object").len();
            assert_eq!(keys, 2, "no other spelling of HostConfig is left: {out}");
        }
        for body in ["", " ", r#"{"Image":"x"}"#, r#"{"HostConfig":null}"#] {
            assert_eq!(create(body).expect(body)["HostConfig"]["Runtime"], "eci");
        }
    }

    #[test]
    fn a_start_that_carries_a_host_config_is_refused() {
        for body in ["", "{}", " { } ", "null"] {
            assert_eq!(
                container_start(body.as_bytes()).expect(body),
                body.as_bytes()
            );
        }
        for body in [r#"{"Runtime":"runc"}"#, r#"{"binds":["/:/host"]}"#] {
            let refusal = refused(container_start(body.as_bytes()));
            assert!(
                matches!(refusal, BodyRefusal::StartWithHostConfig),
                "{refusal}"
            );
        }
        assert_eq!(refused(container_start(b"[")).status(), 400);
    }

    #[test]
    fn host_settings_at_the_top_of_the_body_are_refused() {
        for body in [
            r#"{"Image":"x","Runtime":"runc"}"#,
            r#"{"Image":"x","HostConfig":{},"volumedriver":"sshfs"}"#,
            r#"{"Image":"x","Binds":["/:/host"]}"#,
            r#"{"Image":"x","CgroupParent":"/"}"#,
        ] {
            let refusal = refused(create(body));
            assert!(
                matches!(refusal, BodyRefusal::TopLevelHostField(_)),
                "{body}: {refusal}"
            );
        }
    }

    #[test]
    fn a_field_given_twice_under_any_spelling_is_refused_as_unreadable() {
        for body in [
            r#"{"HostConfig":{"Runtime":"eci"},"hostconfig":{"Runtime":"runc"}}"#,
            r#"{"HostConfig":{"Runtime":"eci","runtime":"runc"}}"#,
            r#"{"HostConfig":{"CgroupParent":"","cgroupparent":"/x"}}"#,
            r#"{"HostConfig":{"Binds":[],"BINDS":["/etc:/x"]}}"#,
        ] {
            let refusal = refused(create(body));
            assert_eq!(refusal.status(), 400, "{body}: {refusal}");
            assert!(refusal.to_string().contains("more than once"), "{refusal}");
        }
    }

    #[test]
    fn bodies_the_engine_would_not_read_as_one_object_are_refused() {
        for body in [
            "[]",
            "nope",
            r#"{"HostConfig":[]}"#,
            "{} {}",
            r#"{"HostConfig":{"CgroupParent":1}}"#,
        ] {
            assert_eq!(refused(create(body)).status(), 400, "{body}");
        }
    }

    #[test]
    fn a_cgroup_parent_is_refused_and_an_empty_one_dropped() {
        for body in [
            r#"{"HostConfig":{"CgroupParent":"/"}}"#,
            r#"{"HostConfig":{"cgroupParent":"system.slice"}}"#,
        ] {
            let refusal = refused(create(body));
            assert!(matches!(refusal, BodyRefusal::CgroupParent(_)), "{refusal}");
            assert_eq!(refusal.status(), 403);
        }
        let out = create(r#"{"HostConfig":{"CgroupParent":""}}"#).expect("default parent");
        assert!(out["HostConfig"].get("CgroupParent").is_none());
        create(r#"{"HostConfig":{"CgroupParent":null}}"#).expect("null parent");
    }

    #[test]
    fn binds_of_vm_paths_outside_the_shareable_ones_are_refused() {
        for body in [
            r#"{"HostConfig":{"Binds":["/:/host"]}}"#,
            r#"{"HostConfig":{"binds":["/etc:/x:ro"]}}"#,
            r#"{"HostConfig":{"Binds":["/home/../etc:/x"]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/etc","Target":"/x"}]}}"#,
            r#"{"HostConfig":{"mounts":[{"type":"bind","source":"/","target":"/x"}]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"bind","Target":"/x"}]}}"#,
        ] {
            let refusal = refused(create(body));
            assert!(
                matches!(refusal, BodyRefusal::Bind { .. }),
                "{body}: {refusal}"
            );
            assert!(refusal.to_string().contains("eci.shareableHostPaths"));
        }
        for body in [
            r#"{"HostConfig":{"Binds":["/home/me:/x","data:/data","/anon"]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/home/me","Target":"/x"}]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"volume","Source":"data","Target":"/x"}]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"tmpfs","Target":"/x"}]}}"#,
        ] {
            create(body).expect(body);
        }
    }

    #[test]
    fn inline_volume_options_that_bind_or_mount_a_device_are_refused() {
        let mount = |config: &str| {
            format!(
                r#"{{"HostConfig":{{"Mounts":[{{"Type":"volume","Source":"v","Target":"/x","VolumeOptions":{{"DriverConfig":{config}}}}}]}}}}"#
            )
        };
        for config in [
            r#"{"Name":"local","Options":{"type":"none","o":"bind","device":"/etc"}}"#,
            r#"{"options":{"type":"ext4","device":"/dev/vda1"}}"#,
            r#"{"Options":{"type":"tmpfs","o":"rbind","device":"/"}}"#,
            r#"{"Name":"sshfs"}"#,
        ] {
            let refusal = refused(create(&mount(config)));
            assert_eq!(refusal.status(), 403, "{config}: {refusal}");
            assert!(
                refusal.to_string().contains("plain named volume"),
                "{refusal}"
            );
        }
        for config in [
            r#"{"Name":"local","Options":{"type":"tmpfs","device":"tmpfs","o":"size=64m"}}"#,
            r#"{"Name":"","Options":{}}"#,
            "null",
        ] {
            create(&mount(config)).expect(config);
        }
        let refusal = refused(create(r#"{"HostConfig":{"VolumeDriver":"sshfs"}}"#));
        assert!(matches!(refusal, BodyRefusal::Driver { .. }), "{refusal}");
    }

    #[test]
    fn volumes_created_from_inside_are_plain_or_tmpfs_with_the_local_driver() {
        for body in [
            r#"{"Name":"etc","DriverOpts":{"type":"none","o":"bind","device":"/etc"}}"#,
            r#"{"Name":"etc","driveropts":{"type":"none","o":"ro,rbind","device":"/"}}"#,
            r#"{"Name":"disk","DriverOpts":{"type":"ext4","device":"/dev/vda1"}}"#,
            r#"{"Name":"t","DriverOpts":{"type":"tmpfs","device":"/dev/vda1"}}"#,
            r#"{"Name":"t","DriverOpts":{"type":"tmpfs","Device":"/etc"}}"#,
            r#"{"Name":"x","Driver":"vieux/sshfs"}"#,
            r#"{"Name":"x","DRIVER":"Local"}"#,
            r#"{"Name":"x","ClusterVolumeSpec":{}}"#,
        ] {
            let refusal = refused(volume_create(body.as_bytes()));
            assert_eq!(refusal.status(), 403, "{body}: {refusal}");
        }
        let refusal = refused(volume_create(
            br#"{"Name":"etc","DriverOpts":{"type":"none","o":"bind","device":"/etc"}}"#,
        ));
        let message = refusal.to_string();
        for part in ["\"etc\"", "type=none", "o=bind", "device=/etc", "tmpfs"] {
            assert!(message.contains(part), "{part} in {message}");
        }
        let twice = refused(volume_create(
            br#"{"DriverOpts":{"type":"tmpfs","type":"none"}}"#,
        ));
        assert_eq!(twice.status(), 400, "{twice}");
        for body in [
            r#"{"Name":"data"}"#,
            r#"{"Name":"data","Driver":"local","DriverOpts":{},"Labels":{"a":"b"}}"#,
            r#"{"Name":"t","DriverOpts":{"type":"tmpfs","device":"tmpfs","o":"size=100m,uid=1000"}}"#,
            "{}",
        ] {
            volume_create(body.as_bytes()).expect(body);
        }
    }
}

#[cfg(test)]
#[path = "docker_body_properties.rs"]
mod properties;
