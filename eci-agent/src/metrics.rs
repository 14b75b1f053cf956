//! Prometheus metrics (`eci-agent run --metrics-listen ADDR`): the OpenMetrics
//! text at `GET /metrics`, from a minimal HTTP/1.1 responder.
//!
//! Two kinds of numbers. The kernel's counters (denials by hook and by
//! container, ring-buffer drops) and the programs attached are read from the
//! pinned maps and links at each scrape, by `status`'s readers: they survive
//! agent restarts. What only the agent sees (audit lines written, decisions
//! the rate limit counted, proxy verdicts, registrations) is counted in
//! [`Counters`], a cloneable handle of atomic counters the agent's tasks
//! increment: these start at zero with each agent. Every label set is
//! bounded: hooks, verdicts and commands are fixed lists, and a container's
//! series go when the kernel's entry of its cgroup does (removed cgroups'
//! counts are deleted a few minutes after they are gone).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::{Mutex, Semaphore},
};

use crate::{pins::PinLayout, state::Shared, status};

/// A request head longer than this is refused.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A client has this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing the answer may take this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 8;
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The cause follows as the error's source (`{err:#}` prints it).
    #[error("cannot serve metrics at --metrics-listen {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("rendering the metrics: {0}")]
    Render(#[from] std::fmt::Error),
}

/// Why a request got no metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the request head is longer than {MAX_HEAD_BYTES} bytes")]
    TooLong,
    #[error("the connection closed before the request head ended")]
    Truncated,
    #[error("the request head took longer than {HEAD_TIMEOUT:?}")]
    Timeout,
    #[error("not an HTTP/1.x request line")]
    Malformed,
    #[error("reading the request: {0}")]
    Io(std::io::ErrorKind),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    hook: &'static str,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    verdict: &'static str,
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// The proxy's verdict on one call, for `eci_proxy_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVerdict {
    Allowed,
    Denied,
}

/// The counters the agent increments: cheap to clone (every clone counts
/// into the same atomics).
#[derive(Clone)]
pub struct Counters {
    audit_lines: Family<HookLabels, Counter>,
    not_logged: Counter,
    proxy_requests: Family<ProxyLabels, Counter>,
    registrations: Family<ResultLabels, Counter>,
}

impl Default for Counters {
    /// Zero, with both registration results served from the start (a
    /// family with no series is not in the text at all).
    fn default() -> Self {
        let counters = Self {
            audit_lines: Family::default(),
            not_logged: Counter::default(),
            proxy_requests: Family::default(),
            registrations: Family::default(),
        };
        for result in ["ok", "refused"] {
            drop(
                counters
                    .registrations
                    .get_or_create(&ResultLabels { result }),
            );
        }
        counters
    }
}

impl Counters {
    /// One denial written to the audit log.
    pub fn audit_line(&self, hook: &'static str) {
        self.audit_lines.get_or_create(&HookLabels { hook }).inc();
    }

    /// Decisions the audit rate limit counted instead of logging.
    pub fn not_logged(&self, count: u64) {
        self.not_logged.inc_by(count);
    }

    /// One Docker API call decided by a proxy; `command` is the name the
    /// proxy gives the call (`docker_api::classify`'s, or `unknown`).
    pub fn proxy_request(&self, verdict: ProxyVerdict, command: &'static str) {
        let verdict = match verdict {
            ProxyVerdict::Allowed => "allowed",
            ProxyVerdict::Denied => "denied",
        };
        self.proxy_requests
            .get_or_create(&ProxyLabels { verdict, command })
            .inc();
    }

    /// One `protect` request answered: registered or refused.
    pub fn registration(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.registrations
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// What the kernel and the agent's state say at one scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Denials by hook (ECI_DENIALS); `None`: the map could not be read.
    pub denials: Option<Vec<(&'static str, u64)>>,
    /// Denials by hook and container (ECI_CG_DENIALS, the container named
    /// by its id, else its cgroup's path); `None`: unreadable.
    pub container_denials: Option<Vec<(&'static str, String, u64)>>,
    /// ECI_EVENT_DROPS; `None`: unreadable or nothing loaded.
    pub event_drops: Option<u64>,
    pub programs_attached: usize,
    pub protected_cgroups: usize,
}

/// The OpenMetrics text of `counters` and `snapshot` (ends with `# EOF`).
pub fn render(counters: &Counters, snapshot: &Snapshot) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    let denials = Family::<ContainerLabels, Counter>::default();
    for (hook, container, count) in snapshot.container_denials.iter().flatten() {
        denials
            .get_or_create(&ContainerLabels {
                hook,
                container: container.clone(),
            })
            .inc_by(*count);
    }
    registry.register(
        "eci_denials",
        "Decisions the BPF-LSM programs denied, by hook and container (container id, else the cgroup's path; pinned kernel counters: survive agent restarts; a removed container's series goes a few minutes after it)",
        denials,
    );
    let hook_denials = Family::<HookLabels, Counter>::default();
    for (hook, count) in snapshot.denials.iter().flatten() {
        hook_denials
            .get_or_create(&HookLabels { hook })
            .inc_by(*count);
    }
    registry.register(
        "eci_hook_denials",
        "Decisions the BPF-LSM programs denied, by hook, removed containers' included (the pinned kernel counter: survives agent restarts)",
        hook_denials,
    );
    registry.register(
        "eci_audit_lines",
        "Denials written to the audit log since this agent started, by hook",
        counters.audit_lines.clone(),
    );
    if let Some(drops) = snapshot.event_drops {
        let dropped = Counter::<u64>::default();
        dropped.inc_by(drops);
        registry.register(
            "eci_audit_events_dropped",
            "Audit events the kernel's ring buffer could not take (pinned counter: survives agent restarts)",
            dropped,
        );
    }
    registry.register(
        "eci_audit_not_logged",
        "Decisions the audit rate limit counted instead of logging one by one, since this agent started",
        counters.not_logged.clone(),
    );
    let programs = Gauge::<i64>::default();
    programs.set(i64::try_from(snapshot.programs_attached).unwrap_or(i64::MAX));
    registry.register(
        "eci_programs_attached",
        "BPF programs whose pinned link is in force",
        programs,
    );
    let protected = Gauge::<i64>::default();
    protected.set(i64::try_from(snapshot.protected_cgroups).unwrap_or(i64::MAX));
    registry.register(
        "eci_protected_cgroups",
        "Cgroups protected for reasons of their own (registered containers, protected parents)",
        protected,
    );
    registry.register(
        "eci_proxy_requests",
        "Docker API calls the proxies decided, by verdict and command",
        counters.proxy_requests.clone(),
    );
    registry.register(
        "eci_registrations",
        "Container registrations (protect requests), by result",
        counters.registrations.clone(),
    );
    let build = Family::<VersionLabels, Gauge>::default();
    build
        .get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register("eci_build_info", "This eci-agent's version", build);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// What a scrape reads: the agent's counters and state, and the pins.
#[derive(Clone)]
pub struct Source {
    pub counters: Counters,
    pub shared: Arc<Mutex<Shared>>,
    pub layout: PinLayout,
    /// The container label of each cgroup id with denials, kept while the
    /// kernel keeps its counts: a removed cgroup has no path to read, and
    /// its series must keep its label.
    pub names: Arc<std::sync::Mutex<BTreeMap<u64, String>>>,
}

impl Source {
    async fn snapshot(&self) -> Snapshot {
        let (mode, protected) = {
            let shared = self.shared.lock().await;
            (
                shared.mode,
                status::count_protected(shared.rules.protected_cgroups()).cgroups,
            )
        };
        let mut snapshot = Snapshot {
            protected_cgroups: protected,
            ..Snapshot::default()
        };
        // Nothing is loaded in unenforced mode: no kernel counters.
        let Some(mode) = mode else {
            return snapshot;
        };
        let layout = self.layout.clone();
        let names = self.names.clone();
        // A few map and link reads (system calls): off the agent's thread.
        let read = tokio::task::spawn_blocking(move || {
            let counters = status::read_counters(&layout);
            let attached = status::programs(&layout, mode, None)
                .iter()
                .filter(|p| p.attached)
                .count();
            let by_container =
                status::read_cgroup_denials(&layout).map(|counts| label_containers(counts, &names));
            (counters, attached, by_container)
        })
        .await;
        match read {
            Ok((counters, attached, by_container)) => {
                match by_container {
                    Ok(counts) => snapshot.container_denials = Some(counts),
                    Err(problem) => tracing::warn!("metrics: {problem}"),
                }
                for problem in &counters.problems {
                    tracing::warn!("metrics: {problem}");
                }
                if !counters.denials.is_empty() {
                    snapshot.denials = Some(
                        eci_common::Hook::ALL
                            .iter()
                            .filter_map(|h| counters.denials.get(h.name()).map(|c| (h.name(), *c)))
                            .collect(),
                    );
                }
                snapshot.event_drops = counters.event_drops;
                snapshot.programs_attached = attached;
            }
            Err(err) => tracing::error!("metrics: reading the pinned counters: {err}"),
        }
        snapshot
    }
}

/// Names the cgroups of `counts` (container id, else the cgroup's path;
/// a cgroup removed before it was ever named: `cgroup id N`), remembering
/// each name while the kernel keeps its counts.
fn label_containers(
    counts: Vec<(u64, eci_common::Hook, u64)>,
    names: &std::sync::Mutex<BTreeMap<u64, String>>,
) -> Vec<(&'static str, String, u64)> {
    let mut names = names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut seen = std::collections::BTreeSet::new();
    let mut labelled = Vec::with_capacity(counts.len());
    for (cgroup_id, hook, count) in counts {
        seen.insert(cgroup_id);
        let name = names
            .entry(cgroup_id)
            .or_insert_with(|| match crate::cgroups::live_path_of_id(cgroup_id) {
                Ok(Some(path)) => crate::audit_feed::container_of_cgroup(&path).unwrap_or(path),
                _ => format!("cgroup id {cgroup_id}"),
            });
        labelled.push((hook.name(), name.clone(), count));
    }
    names.retain(|id, _| seen.contains(id));
    labelled
}

/// Listen on `addr` (before anything else is served, so a bad address
/// changes nothing).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serve `GET /metrics` until the agent stops. Each connection is its own
/// task with bounded reads and writes; at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: TcpListener, source: Source) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let source = source.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(err) = answer(stream, &source).await {
                        tracing::debug!(%peer, "metrics connection: {err}");
                    }
                });
            }
            Err(err) => {
                tracing::error!("metrics: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    source: &Source,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .unwrap_or(Err(RequestError::Timeout));
    let reply = match head.and_then(|h| parse_target(&h)) {
        Ok(Target::Metrics) => {
            let snapshot = source.snapshot().await;
            match render(&source.counters, &snapshot) {
                Ok(text) => Reply::metrics(text),
                Err(err) => {
                    tracing::error!("metrics: {err}");
                    Reply::text(500, "Internal Server Error", "cannot render the metrics\n")
                }
            }
        }
        Ok(Target::Other) => Reply::text(404, "Not Found", "not found; metrics are at /metrics\n"),
        Err(RequestError::Truncated | RequestError::Io(_)) => return Ok(()),
        Err(err) => Reply::text(400, "Bad Request", &format!("{err}\n")),
    };
    tokio::time::timeout(WRITE_TIMEOUT, reply.write(&mut stream))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// What was asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Metrics,
    Other,
}

/// Read up to the blank line that ends a request head, at most
/// [`MAX_HEAD_BYTES`].
pub async fn read_head<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, RequestError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|e| RequestError::Io(e.kind()))?;
        if n == 0 {
            return Err(RequestError::Truncated);
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            head.truncate(searched_from + end + 4);
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(RequestError::TooLong);
        }
    }
}

/// The request line's verdict: `GET /metrics` (a query string allowed) is
/// the metrics, any other well-formed request is `Other`.
pub fn parse_target(head: &[u8]) -> Result<Target, RequestError> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(RequestError::Malformed)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| RequestError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed);
    };
    if method.is_empty() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(RequestError::Malformed);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(if method == "GET" && path == "/metrics" {
        Target::Metrics
    } else {
        Target::Other
    })
}

struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn metrics(body: String) -> Self {
        Self {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            body,
        }
    }

    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
        }
    }

    async fn write<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> std::io::Result<()> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(self.body.as_bytes()).await?;
        writer.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            denials: Some(vec![("unix_stream_connect", 3), ("file_open", 0)]),
            container_denials: Some(vec![
                ("unix_stream_connect", "abc123".into(), 2),
                ("unix_stream_connect", "/odd\"cgroup\\\n".into(), 1),
            ]),
            event_drops: Some(2),
            programs_attached: 11,
            protected_cgroups: 4,
        }
    }

    #[test]
    fn the_text_names_every_metric_with_its_labels_and_ends_with_eof() {
        let counters = Counters::default();
        counters.audit_line("unix_stream_connect");
        counters.audit_line("unix_stream_connect");
        counters.not_logged(5);
        counters.proxy_request(ProxyVerdict::Denied, "push");
        counters.proxy_request(ProxyVerdict::Allowed, "ps");
        counters.registration(true);
        counters.registration(false);
        let text = render(&counters, &sample()).unwrap();
        for line in [
            "# TYPE eci_denials counter",
            r#"eci_denials_total{hook="unix_stream_connect",container="abc123"} 2"#,
            "# TYPE eci_hook_denials counter",
            r#"eci_hook_denials_total{hook="unix_stream_connect"} 3"#,
            r#"eci_hook_denials_total{hook="file_open"} 0"#,
            r#"eci_audit_lines_total{hook="unix_stream_connect"} 2"#,
            "eci_audit_events_dropped_total 2",
            "eci_audit_not_logged_total 5",
            "# TYPE eci_programs_attached gauge",
            "eci_programs_attached 11",
            "eci_protected_cgroups 4",
            r#"eci_proxy_requests_total{verdict="denied",command="push"} 1"#,
            r#"eci_proxy_requests_total{verdict="allowed",command="ps"} 1"#,
            r#"eci_registrations_total{result="ok"} 1"#,
            r#"eci_registrations_total{result="refused"} 1"#,
            &format!(
                r#"eci_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    #[test]
    fn unreadable_kernel_counters_are_left_out_not_zero() {
        let text = render(&Counters::default(), &Snapshot::default()).unwrap();
        assert!(!text.contains("eci_denials_total{"), "{text}");
        assert!(!text.contains("eci_hook_denials_total{"), "{text}");
        assert!(!text.contains("eci_audit_events_dropped"), "{text}");
        assert!(
            text.lines().any(|l| l == "eci_protected_cgroups 0"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "eci_programs_attached 0"),
            "{text}"
        );
        for line in [
            "eci_audit_not_logged_total 0",
            r#"eci_registrations_total{result="ok"} 0"#,
            r#"eci_registrations_total{result="refused"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&Counters::default(), &sample()).unwrap();
        assert!(
            text.contains(r#"container="/odd\"cgroup\\\n"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn only_get_metrics_is_the_metrics() {
        let parse = |s: &str| parse_target(s.as_bytes());
        assert_eq!(parse("GET /metrics HTTP/1.1\r\n\r\n"), Ok(Target::Metrics));
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.0\r\nHost: a\r\n\r\n"),
            Ok(Target::Metrics)
        );
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Ok(Target::Other));
        assert_eq!(parse("GET /metricsx HTTP/1.1\r\n\r\n"), Ok(Target::Other));
        assert_eq!(parse("POST /metrics HTTP/1.1\r\n\r\n"), Ok(Target::Other));
        for bad in [
            "",
            "GET /metrics\r\n\r\n",
            "GET /metrics HTTP/2\r\n\r\n",
            "GET  /metrics HTTP/1.1\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1 x\r\n\r\n",
            "GET /metrics HTTP/1.1",
        ] {
            assert_eq!(parse(bad), Err(RequestError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_target(b"GET /\xff HTTP/1.1\r\n\r\n"),
            Err(RequestError::Malformed)
        );
    }

    #[tokio::test]
    async fn the_head_is_read_to_its_end_and_bounded() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nextra")
            .await
            .unwrap();
        let head = read_head(&mut server).await.unwrap();
        assert_eq!(head, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let long = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        client.write_all(long.as_bytes()).await.unwrap();
        assert_eq!(read_head(&mut server).await, Err(RequestError::TooLong));

        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(client);
        assert_eq!(read_head(&mut server).await, Err(RequestError::Truncated));
    }

    /// A `Source` on an unenforced rule store and no pins.
    fn source(dir: &std::path::Path) -> Source {
        let (shared, _, _) = crate::state::for_tests(dir, "{}");
        Source {
            counters: Counters::default(),
            shared,
            layout: PinLayout::new(dir.join("no-pins")),
            names: Default::default(),
        }
    }

    async fn exchange(request: &[u8], source: &Source) -> String {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        client.write_all(request).await.unwrap();
        answer(server, source).await.unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn the_responder_serves_metrics_and_404_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let reply = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &source).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}\r\n")),
            "{reply}"
        );
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{reply}"
        );
        assert!(body.contains("eci_build_info{"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        let reply = exchange(b"GET /other HTTP/1.1\r\n\r\n", &source).await;
        assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");
        assert!(!reply.contains("eci_"), "{reply}");
        let reply = exchange(b"PUT /metrics HTTP/1.1\r\n\r\n", &source).await;
        assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
        let reply = exchange(b"\x16\x03\x01garbage\r\n\r\n", &source).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let source = source(dir.path());
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let served = tokio::spawn(async move { answer(server, &source).await });
        tokio::time::advance(HEAD_TIMEOUT + Duration::from_secs(1)).await;
        served.await.unwrap().unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
        assert!(reply.contains("took longer"), "{reply}");
    }
}
