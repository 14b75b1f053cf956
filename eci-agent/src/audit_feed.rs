//! The audit stream, live: every line the audit log gets (denials, the
//! rate limit's and the ring buffer's summary lines, the proxy's refusals)
//! is published here too, kept among the last [`RECENT`] and sent to every
//! `eci-agent events` reader. A reader never holds the writer up: one that
//! lags is told how many lines it missed.

use std::{collections::VecDeque, sync::Arc};

use eci_control::Response;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::broadcast,
};

/// Lines kept for a reader that asks what happened recently.
pub const RECENT: usize = 256;
/// Lines a following reader may fall behind before it misses some.
const BACKLOG: usize = 1024;

pub struct AuditFeed {
    sender: broadcast::Sender<Arc<str>>,
    recent: std::sync::Mutex<VecDeque<Arc<str>>>,
}

impl Default for AuditFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            recent: std::sync::Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }
}

impl AuditFeed {
    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<str>>> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One written line (its JSON text). Never waits.
    pub fn publish(&self, line: Arc<str>) {
        let mut recent = self.recent();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(line.clone());
        // No reader is no error.
        let _ = self.sender.send(line);
    }

    /// The recent lines and a receiver of every later one: taken under the
    /// same lock as `publish`, so no line is in both or in neither.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let recent = self.recent();
        (recent.iter().cloned().collect(), self.sender.subscribe())
    }
}

/// The container a line is about: its `container` field (the proxy's
/// lines), else the container id its cgroup's last segment names
/// (`/docker/ID`, `/system.slice/docker-ID.scope`, `.../cri-containerd-ID.scope`).
pub fn container_of(line: &serde_json::Value) -> Option<String> {
    if let Some(id) = line["container"].as_str() {
        return Some(id.to_owned());
    }
    container_of_cgroup(line["cgroup"].as_str()?)
}

/// The container id a cgroup path's last segment names (`/docker/ID`,
/// `/system.slice/docker-ID.scope`, `.../cri-containerd-ID.scope`).
pub fn container_of_cgroup(cgroup: &str) -> Option<String> {
    let last = cgroup.rsplit('/').next()?;
    let last = last.strip_suffix(".scope").unwrap_or(last);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|prefix| last.strip_prefix(prefix))
        .unwrap_or(last);
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// Whether `line` goes to a reader that asked for `container` (a prefix of
/// the id). Lines about no cgroup (lost events) concern every reader.
fn wanted(line: &str, container: Option<&str>) -> bool {
    let Some(prefix) = container else {
        return true;
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return true;
    };
    if value["cgroup"].is_null() && value["cgroup_id"].is_null() && value["container"].is_null() {
        return true;
    }
    container_of(&value).is_some_and(|id| id.starts_with(prefix))
}

async fn send(write: &mut (impl AsyncWrite + Unpin), item: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(item).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Answer an `Events` request on one connection: the recent lines, then
/// with `follow` every new one until the reader hangs up (`read` ends).
pub async fn stream(
    feed: &AuditFeed,
    mut read: impl AsyncRead + Unpin,
    write: &mut (impl AsyncWrite + Unpin),
    follow: bool,
    container: Option<&str>,
) -> std::io::Result<()> {
    let (recent, mut receiver) = feed.subscribe();
    for line in recent.iter().filter(|l| wanted(l, container)) {
        send(
            write,
            &Response::Event {
                line: line.to_string(),
            },
        )
        .await?;
    }
    if !follow {
        return Ok(());
    }
    let mut byte = [0u8; 1];
    loop {
        let item = tokio::select! {
            // The reader sends nothing more: end (hung up) or anything else.
            _ = read.read(&mut byte) => return Ok(()),
            next = receiver.recv() => match next {
                Ok(line) if wanted(&line, container) => Response::Event { line: line.to_string() },
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(count)) => Response::Missed { count },
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        };
        send(write, &item).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(cgroup: &str) -> String {
        serde_json::json!({"hook": "unix_stream_connect", "verdict": "deny", "cgroup_id": 7, "cgroup": cgroup})
            .to_string()
    }

    #[test]
    fn container_ids_come_from_the_cgroup_or_the_line() {
        let id = "4f2a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";
        for cgroup in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods.slice/pod1/cri-containerd-{id}.scope"),
        ] {
            let line = serde_json::json!({ "cgroup": cgroup });
            assert_eq!(container_of(&line).as_deref(), Some(id), "{cgroup}");
        }
        assert_eq!(
            container_of(&serde_json::json!({"cgroup": "/eci-test-1"})),
            None
        );
        assert_eq!(
            container_of(&serde_json::json!({"container": "abc"})).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn the_filter_is_a_prefix_of_the_container_id_and_keeps_lost_events() {
        let line = denial("/docker/4f2a0b1c2d3e4f5a6b7c");
        assert!(wanted(&line, None));
        assert!(wanted(&line, Some("4f2a")));
        assert!(!wanted(&line, Some("4f2b")));
        assert!(!wanted(&denial("/eci-test"), Some("4f2a")));
        let dropped = r#"{"event":"audit_events_dropped","dropped":3}"#;
        assert!(wanted(dropped, Some("4f2a")));
    }

    #[test]
    fn the_recent_lines_are_bounded_and_the_newest_kept() {
        let feed = AuditFeed::default();
        for n in 0..RECENT + 10 {
            feed.publish(Arc::from(format!("{{\"n\":{n}}}")));
        }
        let (recent, _) = feed.subscribe();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(&*recent[0], "{\"n\":10}");
    }

    #[tokio::test]
    async fn a_reader_gets_the_recent_lines_then_new_ones_and_a_slow_one_is_told_what_it_missed() {
        let feed = Arc::new(AuditFeed::default());
        feed.publish(Arc::from(denial("/docker/a")));
        // Without follow: the recent lines and the end.
        let mut out = Vec::new();
        stream(&feed, tokio::io::empty(), &mut out, false, None)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r#""result":"event""#), "{text}");

        // Following, a reader that falls more than BACKLOG behind.
        let (client, server) = tokio::io::duplex(1 << 20);
        let (server_read, mut server_write) = tokio::io::split(server);
        let following = {
            let feed = feed.clone();
            tokio::spawn(
                async move { stream(&feed, server_read, &mut server_write, true, None).await },
            )
        };
        // Let the stream subscribe, then write faster than it can be read.
        while feed.sender.receiver_count() == 0 {
            tokio::task::yield_now().await;
        }
        for n in 0..BACKLOG + 50 {
            feed.publish(Arc::from(format!("{{\"n\":{n}}}")));
        }
        let (mut client_read, client_write) = tokio::io::split(client);
        let mut seen = String::new();
        let mut buf = vec![0u8; 1 << 16];
        while !seen.contains(r#""result":"missed""#) {
            let n = client_read.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(seen.contains(r#""count":50"#), "{seen}");
        // The reader hangs up: the stream ends.
        drop(client_write);
        drop(client_read);
        following.await.unwrap().unwrap_or(());
    }
}
