//! The agent's control protocol.
//!
//! One request per connection: the client writes one JSON line, the agent
//! answers with one JSON line and closes — except `Events`, answered with
//! a stream of `Event` and `Missed` lines (see [`Client::events`]). The socket is root-only (mode 0600
//! in a 0700 directory) and the agent also checks the peer's credentials.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/eci/agent.sock";

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Is the agent alive? Answered with its pid and mode.
    Ping,
    /// Protect a cgroup (a cgroup2 path, absolute on disk or relative to the
    /// cgroup2 mount).
    Protect { cgroup: String },
    /// Stop protecting a cgroup that was registered with `Protect`.
    Unprotect { cgroup: String },
    /// Re-read the policy file (a bad file keeps the last good policy).
    Reload,
    /// Serve a filtering Docker API socket for a trusted-image container:
    /// the agent forwards the calls the policy's `commandList` allows to
    /// `upstream` (one of the protected engine sockets) and answers the rest
    /// with an API error. Answered with `Proxy`.
    /// Containers created through the proxy get eci's runtime (the
    /// policy's `eci.dockerRuntimeName`), whatever they ask for.
    OpenProxy { container: String, upstream: String },
    /// Stop serving the container's proxy socket and remove it.
    CloseProxy { container: String },
    /// The policy in force (the last good one the agent read). Answered
    /// with `Policy`. eci-runc reads no policy file: it asks this.
    Policy,
    /// The audit stream: the recent lines the agent keeps, then (with
    /// `follow`) every new one until the client hangs up. `container`
    /// keeps the lines of containers whose id starts with it. Answered
    /// with a stream of `Event` and `Missed`.
    Events {
        #[serde(default)]
        follow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok {
        message: String,
        /// The cgroup id a protect/unprotect acted on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup_id: Option<u64>,
    },
    Pong {
        pid: u32,
        /// `kernel` when rules are enforced by BPF-LSM, `unenforced` in the
        /// test-only mode without kernel enforcement.
        mode: String,
    },
    /// The socket a container's Docker API proxy listens on.
    Proxy {
        path: String,
    },
    /// The policy in force.
    Policy {
        policy: Box<eci_policy::Policy>,
    },
    /// One audit line, the JSON text as the agent wrote it to the audit log.
    Event {
        line: String,
    },
    /// This many lines were missed: the client read more slowly than the
    /// agent wrote (the agent never waits for a reader).
    Missed {
        count: u64,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot reach the eci agent at {path}: {source}; is it running? (start it with `eci-agent run`, or check `systemctl status eci-agent`)"
    )]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the eci agent at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the eci agent at {path} sent an answer that is not valid: {source}")]
    BadAnswer {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the eci agent closed the connection at {path} without answering")]
    NoAnswer { path: PathBuf },
    #[error("the eci agent refused: {0}")]
    Refused(String),
    #[error("the eci agent at {path} answered {request} with something else: {answer}")]
    Unexpected {
        path: PathBuf,
        request: &'static str,
        answer: String,
    },
}

/// One item of the audit stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// An audit line's JSON text.
    Line(String),
    /// Lines missed by a reader too slow.
    Missed(u64),
}

/// The audit stream an `Events` request opened: its items until the agent
/// closes it (at once without `follow`).
pub struct EventStream {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Iterator for EventStream {
    type Item = Result<StreamItem, ControlError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Err(source) => Some(Err(ControlError::Io {
                path: self.path.clone(),
                source,
            })),
            Ok(_) => Some(match serde_json::from_str(line.trim()) {
                Ok(Response::Event { line }) => Ok(StreamItem::Line(line)),
                Ok(Response::Missed { count }) => Ok(StreamItem::Missed(count)),
                Ok(Response::Error { message }) => Err(ControlError::Refused(message)),
                Ok(other) => Err(ControlError::Unexpected {
                    path: self.path.clone(),
                    request: "events",
                    answer: format!("{other:?}"),
                }),
                Err(source) => Err(ControlError::BadAnswer {
                    path: self.path.clone(),
                    source,
                }),
            }),
        }
    }
}

/// A blocking client for the control socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connect and send `request`; the stream reads with `read_timeout`.
    fn send(
        &self,
        request: &Request,
        read_timeout: Option<Duration>,
    ) -> Result<UnixStream, ControlError> {
        let io = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ControlError::Unreachable {
                path: self.path.clone(),
                source,
            })?;
        stream.set_read_timeout(read_timeout).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut line =
            serde_json::to_string(request).map_err(|source| ControlError::BadAnswer {
                path: self.path.clone(),
                source,
            })?;
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(io)?;
        Ok(stream)
    }

    /// The audit stream (`Request::Events`). With `follow` it waits for
    /// new lines as long as the agent runs (no read timeout).
    pub fn events(
        &self,
        follow: bool,
        container: Option<String>,
    ) -> Result<EventStream, ControlError> {
        let timeout = (!follow).then_some(self.timeout);
        let stream = self.send(&Request::Events { follow, container }, timeout)?;
        Ok(EventStream {
            path: self.path.clone(),
            reader: BufReader::new(stream),
        })
    }

    /// Send one request and read the answer. An `Error` answer is returned
    /// as `Ok(Response::Error)`; use [`Client::call_ok`] to turn it into an error.
    pub fn call(&self, request: &Request) -> Result<Response, ControlError> {
        let io = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        let stream = self.send(request, Some(self.timeout))?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
        if answer.trim().is_empty() {
            return Err(ControlError::NoAnswer {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(answer.trim()).map_err(|source| ControlError::BadAnswer {
            path: self.path.clone(),
            source,
        })
    }

    /// Like [`Client::call`], with an `Error` answer as `Err(Refused)`.
    pub fn call_ok(&self, request: &Request) -> Result<Response, ControlError> {
        match self.call(request)? {
            Response::Error { message } => Err(ControlError::Refused(message)),
            other => Ok(other),
        }
    }

    /// The policy in force in the agent.
    pub fn policy(&self) -> Result<eci_policy::Policy, ControlError> {
        match self.call_ok(&Request::Policy)? {
            Response::Policy { policy } => Ok(*policy),
            other => Err(ControlError::Unexpected {
                path: self.path.clone(),
                request: "policy",
                answer: format!("{other:?}"),
            }),
        }
    }
}

/// Time stamps in logs, shared by the agent's audit log and the runtime's
/// log lines.
/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` from nanoseconds since the epoch.
pub fn rfc3339(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch of a time [`rfc3339`] wrote
/// (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`); `None` for anything else.
pub fn rfc3339_seconds(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let time = time.split('.').next()?;
    let mut time = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (time.next()??, time.next()??, time.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days since 1970-01-01 from the civil date (the inverse of rfc3339's).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Now, as RFC 3339.
pub fn rfc3339_now() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    rfc3339(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let text = serde_json::to_string(&Request::Protect {
            cgroup: "/docker/abc".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"request":"protect","cgroup":"/docker/abc"}"#);
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            Request::Protect {
                cgroup: "/docker/abc".into()
            }
        );
    }

    #[test]
    fn an_events_request_defaults_to_the_recent_lines_of_every_container() {
        let back: Request = serde_json::from_str(r#"{"request":"events"}"#).unwrap();
        assert_eq!(
            back,
            Request::Events {
                follow: false,
                container: None
            }
        );
        let text = serde_json::to_string(&Response::Missed { count: 3 }).unwrap();
        assert_eq!(text, r#"{"result":"missed","count":3}"#);
    }

    #[test]
    fn rfc3339_times_read_back_to_their_seconds() {
        for secs in [0i64, 951_782_400, 1_795_824_000, 1_700_000_123] {
            let text = rfc3339(i128::from(secs) * 1_000_000_000 + 5);
            assert_eq!(rfc3339_seconds(&text), Some(secs), "{text}");
        }
        assert_eq!(rfc3339_seconds("2026-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }

    #[test]
    fn unknown_requests_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"request":"format_disk"}"#).is_err());
    }

    #[test]
    fn a_policy_answer_with_a_bad_image_reference_is_not_valid() {
        let answer = Response::Policy {
            policy: Box::default(),
        };
        let mut wire = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            serde_json::from_value::<Response>(wire.clone()).unwrap(),
            answer
        );
        wire["policy"]["docker_socket_mount"]["image_list"]["images"] =
            serde_json::json!(["Bad Image"]);
        assert!(serde_json::from_value::<Response>(wire).is_err());
    }

    #[test]
    fn unreachable_agent_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("eci-control-test-{}", std::process::id()));
        let err = Client::new(dir.join("none.sock"))
            .call(&Request::Ping)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("is it running?"), "{text}");
        assert!(text.contains("eci-agent run"), "{text}");
    }
}
