//! What eci-runc reads of the policy file (`/etc/eci/admin-settings.json`,
//! or `ECI_POLICY`): the shareable host paths and the images allowed the
//! Docker socket. The agent validates the whole file; this reader is lenient
//! about keys it does not use but strict about the ones it does.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the eci policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the eci policy {path} is not valid JSON: {source}; `eci-agent run` explains the problem in detail"
    )]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub shareable_host_paths: Vec<PathBuf>,
    pub socket_mount_images: Vec<String>,
    /// `imageList.allowDerivedImages`: images built from listed ones pass too.
    pub allow_derived_images: bool,
    /// `eci.dockerApiSockets`: binds of these get the agent's proxy
    /// (trusted images) or are refused.
    pub docker_api_sockets: Vec<PathBuf>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            shareable_host_paths: Vec::new(),
            socket_mount_images: Vec::new(),
            allow_derived_images: false,
            docker_api_sockets: crate::spec::DOCKER_SOCKETS
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

pub fn policy_path() -> PathBuf {
    std::env::var_os("ECI_POLICY")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/etc/eci/admin-settings.json".into())
}

pub fn load() -> Result<RuntimeSettings, SettingsError> {
    let path = policy_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RuntimeSettings::default()),
        Err(source) => {
            return Err(SettingsError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| SettingsError::Parse {
            path: path.display().to_string(),
            source,
        })?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let image_list = &value["enhancedContainerIsolation"]["dockerSocketMount"]["imageList"];
    let docker_api_sockets = &value["eci"]["dockerApiSockets"];
    Ok(RuntimeSettings {
        shareable_host_paths: strings(&value["eci"]["shareableHostPaths"])
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        socket_mount_images: strings(&image_list["images"]),
        allow_derived_images: image_list["allowDerivedImages"].as_bool().unwrap_or(false),
        docker_api_sockets: if docker_api_sockets.is_array() {
            strings(docker_api_sockets)
                .into_iter()
                .map(PathBuf::from)
                .collect()
        } else {
            RuntimeSettings::default().docker_api_sockets
        },
    })
}
