//! Filtering Docker API sockets for trusted-image containers.
//!
//! A container whose image is on `dockerSocketMount.imageList` gets, in
//! place of the engine's socket, a socket the agent serves here. Each
//! connection carries exactly one API call: the agent reads the request
//! head, asks `docker_api` for the policy's verdict, and either answers
//! `403` with an API error (audited) or forwards the call to the engine with
//! `Connection: close`, so the engine handles that one request and no
//! other can follow it unseen. Calls the engine upgrades (`attach`, `exec`
//! start) it hijacks: after the upgrade the stream is the container's
//! stdio, not API requests.
//!
//! Plugin endpoints are refused whatever `commandList` says (plugins are VM
//! administration: `docker_api`). Container and volume create bodies are
//! read as the engine reads them, judged and forwarded re-encoded
//! (`docker_body`): a container created through the proxy gets eci's
//! runtime whatever it asks for and however it spells it, no cgroup
//! parent, no bind of a VM path outside `eci.shareableHostPaths`, and no
//! volume that binds a VM path or mounts a device — a trusted container
//! cannot start a sibling with plain runc and a bind of the VM's `/`. Every
//! refusal names its rule and fix and is audited (`docker_api_denied`).
//!
//! Proxies live as long as the agent: a restarted agent does not resume
//! them, and the container's socket then refuses connections (closed, not
//! open) until the container is recreated.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{Mutex, watch},
    task::{AbortHandle, JoinSet},
};

use crate::{
    audit::AuditLog,
    docker_api::{self, JudgedBody, Verdict},
    docker_body::{self, BodyPolicy},
    metrics::{Counters, ProxyVerdict},
    policy::CommandList,
};

/// A request head longer than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A judged body (container or volume create) longer than this is refused.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0:?} is not a container id (letters, digits, `_`, `.`, `-`; at most 128)")]
    BadContainerId(String),
    #[error(
        "{0} is not one of the policy's Docker API sockets (eci.dockerApiSockets); a proxy forwards only to those"
    )]
    NotAnEngineSocket(String),
    #[error("creating the proxy socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
}

struct OpenProxy {
    path: PathBuf,
    server: AbortHandle,
}

/// The open proxies, by container id.
pub struct Proxies {
    dir: PathBuf,
    policy_path: PathBuf,
    policy: watch::Receiver<Arc<eci_policy::Policy>>,
    audit: Arc<Mutex<AuditLog>>,
    counters: Counters,
    open: std::sync::Mutex<HashMap<String, OpenProxy>>,
}

impl Proxies {
    /// Proxies with their sockets in `dir` (made 0700: only root reaches
    /// them by path; containers get theirs through a bind mount).
    pub fn new(
        dir: PathBuf,
        policy_path: PathBuf,
        policy: watch::Receiver<Arc<eci_policy::Policy>>,
        audit: Arc<Mutex<AuditLog>>,
        counters: Counters,
    ) -> Self {
        Self {
            dir,
            policy_path,
            policy,
            audit,
            counters,
            open: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Remove the sockets a previous agent left: nothing listens on them
    /// any more (called once this agent owns the control socket).
    pub fn remove_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "sock") {
                tracing::warn!(socket = %path.display(), "removing a docker API proxy socket of a previous agent (its container's Docker socket now refuses connections)");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Serve a proxy for `container` forwarding to `upstream`; returns its
    /// socket. Opening one that is open already replaces it.
    pub async fn open(
        self: &Arc<Self>,
        container: &str,
        upstream: &str,
    ) -> Result<PathBuf, ProxyError> {
        let valid_id = !container.is_empty()
            && container.len() <= 128
            && !container.starts_with('.')
            && container
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid_id {
            return Err(ProxyError::BadContainerId(container.to_owned()));
        }
        let upstream = self.engine_socket(upstream).await?;
        self.close(container);
        let socket_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| ProxyError::Socket { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(socket_err(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(socket_err(&self.dir))?;
        let path = self.dir.join(format!("{container}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(socket_err(&path))?;
        // The container's root is an unprivileged id of the VM: it connects
        // as "other".
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(socket_err(&path))?;
        let proxies = self.clone();
        let route = Route {
            container: container.to_owned(),
            upstream,
        };
        let server =
            tokio::spawn(async move { proxies.serve(listener, route).await }).abort_handle();
        if let Ok(mut open) = self.open.lock() {
            open.insert(
                container.to_owned(),
                OpenProxy {
                    path: path.clone(),
                    server,
                },
            );
        }
        tracing::info!(container, socket = %path.display(), "docker API proxy open");
        Ok(path)
    }

    /// Stop serving `container`'s proxy; `false` if it had none.
    pub fn close(&self, container: &str) -> bool {
        let removed = self.open.lock().ok().and_then(|mut o| o.remove(container));
        match removed {
            Some(proxy) => {
                proxy.server.abort();
                let _ = std::fs::remove_file(&proxy.path);
                tracing::info!(container, "docker API proxy closed");
                true
            }
            None => false,
        }
    }

    /// `upstream`, if it is one of the policy's Docker API sockets (compared
    /// after resolving symlinks: /var/run is usually /run).
    async fn engine_socket(&self, upstream: &str) -> Result<PathBuf, ProxyError> {
        let wanted = std::fs::canonicalize(upstream)
            .map_err(|_| ProxyError::NotAnEngineSocket(upstream.to_owned()))?;
        let sockets = self.policy.borrow().docker_api_sockets.clone();
        sockets
            .iter()
            .filter_map(|s| std::fs::canonicalize(s).ok())
            .find(|s| *s == wanted)
            .ok_or_else(|| ProxyError::NotAnEngineSocket(upstream.to_owned()))
    }

    async fn serve(self: Arc<Self>, listener: UnixListener, route: Route) {
        let route = Arc::new(route);
        // Connections end with the server when the proxy is closed.
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            match listener.accept().await {
                Ok((client, _)) => {
                    let proxies = self.clone();
                    let route = route.clone();
                    connections.spawn(async move {
                        if let Err(err) = proxies.relay(client, &route).await {
                            tracing::debug!(container = %route.container, "docker API proxy connection: {err}");
                        }
                    });
                }
                Err(err) => {
                    tracing::error!(container = %route.container, "docker API proxy accept failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// One connection: one vetted call.
    async fn relay(&self, mut client: UnixStream, route: &Route) -> std::io::Result<()> {
        let container = route.container.as_str();
        let Some((head, mut body_start)) = read_head(&mut client).await? else {
            return Ok(());
        };
        let Some(request) = RequestHead::parse(&head) else {
            return respond(
                &mut client,
                400,
                "Bad Request",
                "enhanced container isolation: malformed HTTP request",
            )
            .await;
        };
        let policy = self.call_policy();
        let call = docker_api::classify(&request.method, &request.target);
        let command = call
            .as_ref()
            .and_then(|c| c.names.first().copied())
            .unwrap_or("unknown");
        match docker_api::judge(&policy.command_list, call.as_ref()) {
            Verdict::Allow => {}
            Verdict::Deny(rule) => {
                let message = format!(
                    "enhanced container isolation: docker command \"{}\" is blocked ({rule}); if you wish to allow it, ask an administrator to change enhancedContainerIsolation.dockerSocketMount.commandList in {}",
                    request.target,
                    self.policy_path.display()
                );
                let denial = Denial {
                    container,
                    request: &request,
                    command,
                    rule: &rule,
                };
                return self.refuse(&mut client, denial, 403, &message).await;
            }
            Verdict::Refuse(refusal) => {
                let message = format!(
                    "enhanced container isolation: docker command \"{}\" is refused: {}; {}",
                    request.target,
                    refusal.rule(),
                    refusal.fix()
                );
                let denial = Denial {
                    container,
                    request: &request,
                    command,
                    rule: refusal.rule(),
                };
                return self.refuse(&mut client, denial, 403, &message).await;
            }
        }
        let mut forwarded = request.forwarded(None);
        if let Some(kind) = docker_api::judged_body(&request.method, &request.target) {
            let what = match kind {
                JudgedBody::ContainerCreate => "container create",
                JudgedBody::VolumeCreate => "volume create",
                JudgedBody::ContainerStart => "container start",
            };
            let denial = |rule| Denial {
                container,
                request: &request,
                command,
                rule,
            };
            let body = match read_body(&mut client, &request, body_start).await? {
                Ok(body) => body,
                Err(err) => {
                    let message = format!("enhanced container isolation: {what} refused: {err}");
                    return self
                        .refuse(&mut client, denial(err.rule()), 400, &message)
                        .await;
                }
            };
            let checked = match kind {
                JudgedBody::ContainerCreate => docker_body::container_create(
                    &body,
                    BodyPolicy {
                        runtime: &policy.runtime,
                        shareable_host_paths: &policy.shareable_host_paths,
                    },
                ),
                JudgedBody::VolumeCreate => docker_body::volume_create(&body),
                JudgedBody::ContainerStart => docker_body::container_start(&body),
            };
            body_start = match checked {
                Ok(body) => body,
                Err(refusal) => {
                    let message =
                        format!("enhanced container isolation: {what} refused: {refusal}");
                    let code = refusal.status();
                    return self
                        .refuse(&mut client, denial(refusal.rule()), code, &message)
                        .await;
                }
            };
            forwarded = request.forwarded(Some(body_start.len()));
            if kind == JudgedBody::ContainerCreate {
                tracing::info!(
                    container,
                    runtime = policy.runtime,
                    "container create through the proxy: runtime set"
                );
            }
        }
        self.counters.proxy_request(ProxyVerdict::Allowed, command);
        let upstream = &route.upstream;
        let mut engine = match UnixStream::connect(upstream).await {
            Ok(engine) => engine,
            Err(err) => {
                let message = format!(
                    "enhanced container isolation: the eci proxy cannot reach the Docker Engine at {}: {err}",
                    upstream.display()
                );
                return respond(&mut client, 502, "Bad Gateway", &message).await;
            }
        };
        engine.write_all(forwarded.as_bytes()).await?;
        engine.write_all(&body_start).await?;
        tokio::io::copy_bidirectional(&mut client, &mut engine).await?;
        Ok(())
    }
}

/// The parts of the policy one call is judged by, copied when the call
/// comes.
struct CallPolicy {
    command_list: CommandList,
    runtime: String,
    shareable_host_paths: Vec<PathBuf>,
}

impl Proxies {
    /// The policy now, for one call (the one place the proxy reads it).
    fn call_policy(&self) -> CallPolicy {
        let policy = self.policy.borrow().clone();
        CallPolicy {
            command_list: policy.docker_socket_mount.command_list.clone(),
            runtime: policy.docker_runtime_name.clone(),
            shareable_host_paths: policy.shareable_host_paths.clone(),
        }
    }

    /// Answer a refused call with an API error (`code`: 403 for a rule, 400
    /// for a request the proxy cannot read), after an audit line
    /// (`docker_api_denied`) and a warning.
    async fn refuse(
        &self,
        client: &mut UnixStream,
        denial: Denial<'_>,
        code: u16,
        message: &str,
    ) -> std::io::Result<()> {
        let Denial {
            container,
            request,
            command,
            rule,
        } = denial;
        tracing::warn!(container, method = %request.method, target = %request.target, command, rule, "docker API call denied");
        self.counters.proxy_request(ProxyVerdict::Denied, command);
        let line = serde_json::json!({
            "time": eci_control::rfc3339_now(),
            "event": "docker_api_denied",
            "container": container,
            "method": request.method,
            "target": request.target,
            "command": command,
            "rule": rule,
        });
        if let Err(err) = self.audit.lock().await.write(&line) {
            tracing::error!("{err}");
        }
        let reason = if code == 400 {
            "Bad Request"
        } else {
            "Forbidden"
        };
        respond(client, code, reason, message).await
    }
}

/// A refused call, for its audit line.
struct Denial<'a> {
    container: &'a str,
    request: &'a RequestHead,
    command: &'static str,
    rule: &'a str,
}

/// Whose proxy it is, and where it forwards.
struct Route {
    container: String,
    upstream: PathBuf,
}

/// Why a body the proxy judges was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(
        "the eci proxy judges this call's body and needs it with a Content-Length (not chunked); the docker CLI sends one"
    )]
    NoLength,
    #[error("the body is larger than the eci proxy reads ({MAX_BODY_BYTES} bytes)")]
    TooLarge,
    #[error("the Content-Length {0:?} is not a number")]
    BadLength(String),
}

impl BodyError {
    fn rule(&self) -> &'static str {
        "a judged body needs a Content-Length and at most 4 MiB"
    }
}

/// The whole body of a request that has a `Content-Length` (a create from
/// the docker CLI always has); a `BodyError` for one that is chunked or too
/// large.
async fn read_body(
    client: &mut UnixStream,
    request: &RequestHead,
    mut body: Vec<u8>,
) -> std::io::Result<Result<Vec<u8>, BodyError>> {
    if request.header("transfer-encoding").is_some() {
        return Ok(Err(BodyError::NoLength));
    }
    let length = match request
        .header("content-length")
        .map(|v| (v, v.parse::<usize>()))
    {
        None => 0,
        Some((_, Ok(n))) if n <= MAX_BODY_BYTES => n,
        Some((_, Ok(_))) => return Ok(Err(BodyError::TooLarge)),
        Some((v, Err(_))) => return Ok(Err(BodyError::BadLength(v.to_owned()))),
    };
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Ok(body))
}

/// Read up to the end of the request head; returns the head (as text) and
/// whatever of the body came with it. `None` when the client went away.
async fn read_head(client: &mut UnixStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return match String::from_utf8(buffer) {
                Ok(head) => Ok(Some((head, rest))),
                Err(_) => Ok(Some((String::new(), rest))),
            };
        }
        if buffer.len() > MAX_HEAD_BYTES {
            respond(
                client,
                431,
                "Request Header Fields Too Large",
                "enhanced container isolation: request head too large",
            )
            .await?;
            return Ok(None);
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The parts of a request head the proxy looks at.
#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    method: String,
    target: String,
    request_line: String,
    headers: Vec<String>,
}

impl RequestHead {
    fn parse(head: &str) -> Option<Self> {
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let request_line = lines.next()?.to_owned();
        let mut parts = request_line.split(' ');
        let method = parts.next()?.to_owned();
        let target = parts.next()?.to_owned();
        let version = parts.next()?;
        if parts.next().is_some()
            || !version.starts_with("HTTP/1.")
            || method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return None;
        }
        let headers: Vec<String> = lines.map(str::to_owned).collect();
        if headers.iter().any(|h| !h.contains(':')) {
            return None;
        }
        Some(Self {
            method,
            target,
            request_line,
            headers,
        })
    }

    /// The value of the first header named `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn header_is(header: &str, name: &str) -> bool {
        header
            .split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    }

    /// The head sent to the engine: one request per connection
    /// (`Connection: close`, always: a call that asks for an upgrade the
    /// engine does not grant must not keep the connection open for another
    /// call; one it grants — attach, exec — is hijacked by the engine,
    /// which answers `101` from the `Upgrade` header, kept as it is); with
    /// `body_length`, for a body the proxy rewrote.
    fn forwarded(&self, body_length: Option<usize>) -> String {
        let mut out = format!("{}\r\n", self.request_line);
        for header in &self.headers {
            let hop = ["connection", "keep-alive", "proxy-connection"]
                .iter()
                .any(|n| Self::header_is(header, n));
            let length = body_length.is_some() && Self::header_is(header, "content-length");
            if !hop && !length {
                out.push_str(header);
                out.push_str("\r\n");
            }
        }
        if let Some(n) = body_length {
            out.push_str(&format!("Content-Length: {n}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        out
    }
}

/// An API error the docker CLI shows as "Error response from daemon: ...".
async fn respond(
    client: &mut UnixStream,
    code: u16,
    reason: &str,
    message: &str,
) -> std::io::Result<()> {
    let body = serde_json::json!({ "message": message }).to_string();
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_out_one_per_connection() {
        let head = RequestHead::parse(
            "GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\nConnection: keep-alive\r\nKeep-Alive: 30\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/v1.41/containers/json");
        assert_eq!(
            head.forwarded(None),
            "GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn upgrades_keep_their_upgrade_header_but_close_the_connection() {
        let text = "POST /v1.41/exec/1/start HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n";
        let head = RequestHead::parse(text).expect("parse");
        assert_eq!(
            head.forwarded(None),
            "POST /v1.41/exec/1/start HTTP/1.1\r\nHost: docker\r\nUpgrade: tcp\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn rewritten_bodies_go_out_with_their_new_length() {
        let head = RequestHead::parse(
            "POST /v1.41/containers/create HTTP/1.1\r\nContent-Length: 10\r\ncontent-length: 10\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(head.header("content-length"), Some("10"));
        assert_eq!(
            head.forwarded(Some(42)),
            "POST /v1.41/containers/create HTTP/1.1\r\nContent-Length: 42\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "",
            "GET\r\n\r\n",
            "GET / HTTP/2\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert!(RequestHead::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn each_decided_call_is_counted_by_verdict_and_command() {
        let dir = tempfile::tempdir().unwrap();
        let engine_path = dir.path().join("engine.sock");
        let engine = UnixListener::bind(&engine_path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut call, _)) = engine.accept().await {
                let mut buf = [0u8; 4096];
                let _ = call.read(&mut buf).await;
                let _ = call
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
                let _ = call.shutdown().await;
            }
        });
        let policy_text = format!(
            r#"{{"enhancedContainerIsolation": {{"dockerSocketMount": {{"commandList": {{"type": "deny", "commands": ["push"]}}}}}}, "eci": {{"dockerApiSockets": ["{}"]}}}}"#,
            engine_path.display()
        );
        let (_, policy, config) = crate::state::for_tests(dir.path(), &policy_text);
        let audit = Arc::new(Mutex::new(
            AuditLog::open(&dir.path().join("audit.jsonl"), 1 << 20, 1).unwrap(),
        ));
        let counters = Counters::default();
        let proxies = Arc::new(Proxies::new(
            dir.path().join("proxy"),
            config.policy_path.clone(),
            policy.subscribe(),
            audit,
            counters.clone(),
        ));
        let socket = proxies
            .open("c1", &engine_path.display().to_string())
            .await
            .unwrap();
        for (target, status) in [
            ("POST /v1.41/images/x/push", "403"),
            ("GET /v1.41/containers/json", "200"),
            ("GET /v1.41/containers/json", "200"),
        ] {
            let mut client = UnixStream::connect(&socket).await.unwrap();
            client
                .write_all(format!("{target} HTTP/1.1\r\nHost: docker\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.unwrap();
            assert!(reply.starts_with(&format!("HTTP/1.1 {status} ")), "{reply}");
        }
        let text = crate::metrics::render(&counters, &Default::default()).unwrap();
        for line in [
            r#"eci_proxy_requests_total{verdict="denied",command="push"} 1"#,
            r#"eci_proxy_requests_total{verdict="allowed",command="ps"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
