//! The control socket: root-only, one JSON request per connection, one
//! answer — or, for `Events`, the audit stream (`audit_feed::stream`).

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use eci_common::protect_reason;
use eci_control::{Request, Response};
use eci_policy::Policy;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};

use crate::{
    audit_feed::{self, AuditFeed},
    cgroups::{self, CgroupError},
    metrics::Counters,
    proxy::Proxies,
    rules::RuleError,
    state::{AgentConfig, PolicyInForce, Shared, reload},
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
    policy: PolicyInForce,
    proxies: Arc<Proxies>,
    config: AgentConfig,
    feed: Arc<AuditFeed>,
    counters: Counters,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let policy = policy.clone();
                let proxies = proxies.clone();
                let config = config.clone();
                let feed = feed.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    let context = Context {
                        policy: &policy,
                        proxies: &proxies,
                        config: &config,
                        feed: &feed,
                        counters: &counters,
                    };
                    if let Err(err) = handle(stream, shared, context).await {
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

/// What a connection's answer may need besides the rules.
#[derive(Clone, Copy)]
struct Context<'a> {
    policy: &'a PolicyInForce,
    proxies: &'a Arc<Proxies>,
    config: &'a AgentConfig,
    feed: &'a AuditFeed,
    counters: &'a Counters,
}

async fn handle(
    stream: UnixStream,
    shared: Arc<Mutex<Shared>>,
    context: Context<'_>,
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
            Ok(Request::Events { follow, container }) => {
                tracing::debug!(follow, ?container, pid = ?peer.pid(), "audit stream opened");
                let streamed = audit_feed::stream(
                    context.feed,
                    reader,
                    &mut write,
                    follow,
                    container.as_deref(),
                )
                .await;
                return match streamed {
                    // A reader that hung up mid-line is no error of ours.
                    Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    Err(err) => Err(err),
                    Ok(()) => write.shutdown().await,
                };
            }
            Ok(request) => {
                tracing::debug!(?request, pid = ?peer.pid(), "control request");
                let registration = matches!(request, Request::Protect { .. });
                let response = answer(
                    request,
                    &shared,
                    context.policy,
                    context.proxies,
                    context.config,
                )
                .await;
                if registration {
                    context
                        .counters
                        .registration(matches!(response, Response::Ok { .. }));
                }
                response
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
    policy: &PolicyInForce,
    proxies: &Arc<Proxies>,
    config: &AgentConfig,
) -> Response {
    match &request {
        Request::Reload => {
            return match reload(shared_lock, policy, config).await {
                Ok(message) => Response::Ok {
                    message,
                    cgroup_id: None,
                },
                Err(err) => Response::Error {
                    message: err.to_string(),
                },
            };
        }
        Request::Policy => {
            return Response::Policy {
                policy: Box::new(Policy::clone(&policy.current())),
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
            Err(err) => Response::Error {
                message: err.to_string(),
            },
        },
        Request::Unprotect { cgroup } => match unprotect(&mut shared, &cgroup) {
            Ok((id, path)) => {
                tracing::info!(cgroup = %path, id, "cgroup no longer protected");
                Response::Ok {
                    message: format!("cgroup {path} (id {id}) is no longer protected"),
                    cgroup_id: Some(id),
                }
            }
            Err(err) => Response::Error {
                message: err.to_string(),
            },
        },
        Request::Reload
        | Request::Policy
        | Request::OpenProxy { .. }
        | Request::CloseProxy { .. }
        | Request::Events { .. } => Response::Error {
            message: "answered above".into(),
        },
    }
}

/// Why a cgroup was not (un)registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "refusing to protect cgroup {cgroup}: the eci agent itself runs in {agent} and would lock itself out"
    )]
    HoldsTheAgent { cgroup: String, agent: String },
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error("cgroup {path} (id {id}) was not registered")]
    NotRegistered { path: String, id: u64 },
}

fn protect(shared: &mut Shared, spec: &str) -> Result<(u64, String), RegisterError> {
    let cgroup = cgroups::resolve(spec)?;
    if cgroups::is_same_or_below(&shared.own_cgroup, &cgroup.path) {
        return Err(RegisterError::HoldsTheAgent {
            cgroup: cgroup.path,
            agent: shared.own_cgroup.clone(),
        });
    }
    // The mounts the container starts with become immutable. They are read
    // before the cgroup is protected, while the runtime still holds the
    // container's init process before its first exec. Unreadable, the
    // container is refused: registered, it would have no immutable mount.
    let mounts = cgroups::initial_mount_ids(&cgroup)?;
    shared.rules.set_immutable_mounts(cgroup.id, &mounts)?;
    if let Err(err) = shared
        .rules
        .protect_cgroup(cgroup.id, protect_reason::REGISTERED)
    {
        let _ = shared.rules.clear_immutable_mounts(cgroup.id);
        return Err(err.into());
    }
    shared.names.cgroups.insert(cgroup.id, cgroup.path.clone());
    shared.register_descendants(cgroup.id, &cgroup.dir);
    tracing::info!(cgroup = %cgroup.path, immutable_mounts = mounts.len(), "initial mounts recorded");
    Ok((cgroup.id, cgroup.path))
}

fn unprotect(shared: &mut Shared, spec: &str) -> Result<(u64, String), RegisterError> {
    // A runtime may unregister after the cgroup is gone: the registry still
    // knows its id.
    let (id, path, dir) = match cgroups::resolve(spec) {
        Ok(cgroup) => (cgroup.id, cgroup.path, Some(cgroup.dir)),
        Err(err) => {
            let wanted = format!("/{}", spec.trim_start_matches('/'));
            shared
                .names
                .cgroups
                .iter()
                .find(|(_, p)| **p == wanted)
                .map(|(id, p)| (*id, p.clone(), None))
                .ok_or(err)?
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
            if let Some(dir) = dir {
                shared.register_descendants(id, &dir);
            }
            Ok((id, path))
        }
        Ok(None) => Err(RegisterError::NotRegistered { path, id }),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_policy_request_is_answered_with_the_policy_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, policy, config) =
            crate::state::for_tests(dir.path(), r#"{"eci": {"shareableHostPaths": ["/home"]}}"#);
        let audit = Arc::new(Mutex::new(
            crate::audit::AuditLog::open(&dir.path().join("audit.jsonl"), 1 << 20, 1).unwrap(),
        ));
        let proxies = Arc::new(Proxies::new(
            dir.path().join("proxy"),
            config.policy_path.clone(),
            policy.subscribe(),
            audit,
            Counters::default(),
        ));
        let answer = answer(Request::Policy, &shared, &policy, &proxies, &config).await;
        // As it goes over the wire.
        let wire = serde_json::to_string(&answer).unwrap();
        let back: Response = serde_json::from_str(&wire).unwrap();
        match back {
            Response::Policy { policy: got } => assert_eq!(*got, *policy.current()),
            other => panic!("expected the policy, got {other:?}"),
        }
    }
}
