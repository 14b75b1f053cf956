//! The control socket: root-only, one JSON request per connection.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use eci_common::protect_reason;
use eci_control::{Request, Response};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};

use crate::{
    agent::{AgentConfig, Shared},
    cgroups,
    proxy::Proxies,
};

/// Requests are small; anything longer is refused.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlServerError {
    #[error("cannot create the control socket directory {dir}: {source}")]
    Dir { dir: String, source: std::io::Error },
    #[error(
        "another eci agent is already serving {0}; stop it first (or use another --control-socket)"
    )]
    AlreadyRunning(String),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
}

/// Bind the control socket: directory 0700, socket 0600. A stale socket file
/// from a killed agent is replaced; a live agent is not.
pub fn bind(path: &Path) -> Result<UnixListener, ControlServerError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_err = |source| ControlServerError::Dir {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlServerError::AlreadyRunning(
                path.display().to_string(),
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ControlServerError::Bind {
        path: path.display().to_string(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    shared: Arc<Mutex<Shared>>,
    proxies: Arc<Proxies>,
    config: AgentConfig,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let proxies = proxies.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    if let Err(err) = handle(stream, shared, &proxies, &config).await {
                        tracing::warn!("control connection: {err}");
                    }
                });
            }
            Err(err) => {
                tracing::error!("control socket accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    stream: UnixStream,
    shared: Arc<Mutex<Shared>>,
    proxies: &Arc<Proxies>,
    config: &AgentConfig,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let response = if peer.uid() != 0 {
        tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "control request from non-root refused");
        Response::Error {
            message: "only root may talk to the eci agent".into(),
        }
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
        reader.read_line(&mut line).await?;
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => {
                tracing::debug!(?request, pid = ?peer.pid(), "control request");
                answer(request, &shared, proxies, config).await
            }
            Err(err) => Response::Error {
                message: format!("malformed request: {err}"),
            },
        }
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

async fn answer(
    request: Request,
    shared_lock: &Arc<Mutex<Shared>>,
    proxies: &Arc<Proxies>,
    config: &AgentConfig,
) -> Response {
    match &request {
        Request::Reload => {
            return match crate::agent::reload(shared_lock, config).await {
                Ok(message) => Response::Ok {
                    message,
                    cgroup_id: None,
                },
                Err(message) => Response::Error { message },
            };
        }
        Request::OpenProxy {
            container,
            upstream,
        } => {
            return match proxies.open(container, upstream).await {
                Ok(path) => Response::Proxy {
                    path: path.display().to_string(),
                },
                Err(err) => Response::Error {
                    message: err.to_string(),
                },
            };
        }
        Request::CloseProxy { container } => {
            let message = if proxies.close(container) {
                format!("the docker API proxy of {container} is closed")
            } else {
                format!("{container} had no docker API proxy")
            };
            return Response::Ok {
                message,
                cgroup_id: None,
            };
        }
        _ => {}
    }
    let mut shared = shared_lock.lock().await;
    match request {
        Request::Ping => Response::Pong {
            pid: std::process::id(),
            mode: if shared.rules.enforced_in_kernel() {
                "kernel".into()
            } else {
                "unenforced".into()
            },
        },
        Request::Protect { cgroup } => match protect(&mut shared, &cgroup) {
            Ok((id, path)) => {
                tracing::info!(cgroup = %path, id, "cgroup protected");
                Response::Ok {
                    message: format!("cgroup {path} (id {id}) is protected"),
                    cgroup_id: Some(id),
                }
            }
            Err(message) => Response::Error { message },
        },
        Request::Unprotect { cgroup } => match unprotect(&mut shared, &cgroup) {
            Ok((id, path)) => {
                tracing::info!(cgroup = %path, id, "cgroup no longer protected");
                Response::Ok {
                    message: format!("cgroup {path} (id {id}) is no longer protected"),
                    cgroup_id: Some(id),
                }
            }
            Err(message) => Response::Error { message },
        },
        Request::Reload | Request::OpenProxy { .. } | Request::CloseProxy { .. } => {
            Response::Error {
                message: "answered above".into(),
            }
        }
    }
}

fn protect(shared: &mut Shared, spec: &str) -> Result<(u64, String), String> {
    let cgroup = cgroups::resolve(spec).map_err(|e| e.to_string())?;
    if cgroups::is_same_or_below(&shared.own_cgroup, &cgroup.path) {
        return Err(format!(
            "refusing to protect cgroup {}: the eci agent itself runs in {} and would lock itself out",
            cgroup.path, shared.own_cgroup
        ));
    }
    // The mounts the container starts with become immutable. They are read
    // before the cgroup is protected, while the runtime still holds the
    // container's init process before its first exec.
    let mounts = cgroups::initial_mount_ids(&cgroup);
    shared
        .rules
        .set_immutable_mounts(cgroup.id, &mounts)
        .map_err(|e| e.to_string())?;
    if let Err(err) = shared
        .rules
        .protect_cgroup(cgroup.id, protect_reason::REGISTERED)
    {
        let _ = shared.rules.clear_immutable_mounts(cgroup.id);
        return Err(err.to_string());
    }
    shared.names.cgroups.insert(cgroup.id, cgroup.path.clone());
    tracing::info!(cgroup = %cgroup.path, immutable_mounts = mounts.len(), "initial mounts recorded");
    Ok((cgroup.id, cgroup.path))
}

fn unprotect(shared: &mut Shared, spec: &str) -> Result<(u64, String), String> {
    // A runtime may unregister after the cgroup is gone: the registry still
    // knows its id.
    let (id, path) = match cgroups::resolve(spec) {
        Ok(cgroup) => (cgroup.id, cgroup.path),
        Err(err) => {
            let wanted = format!("/{}", spec.trim_start_matches('/'));
            shared
                .names
                .cgroups
                .iter()
                .find(|(_, p)| **p == wanted)
                .map(|(id, p)| (*id, p.clone()))
                .ok_or_else(|| err.to_string())?
        }
    };
    match shared
        .rules
        .unprotect_cgroup(id, protect_reason::REGISTERED)
    {
        Ok(Some(left)) => {
            let _ = shared.rules.clear_immutable_mounts(id);
            if left == 0 {
                shared.names.cgroups.remove(&id);
            }
            Ok((id, path))
        }
        Ok(None) => Err(format!("cgroup {path} (id {id}) was not registered")),
        Err(err) => Err(err.to_string()),
    }
}

/// Directory holding the control socket and the agent's state file.
pub fn run_dir(control_socket: &Path) -> PathBuf {
    control_socket
        .parent()
        .unwrap_or(Path::new("/run/eci"))
        .to_owned()
}
