//! `eci-agent events`: the audit stream, one line per event, through the
//! agent's control socket. Human form by default:
//! `12:00:01 denied connect /run/docker.sock container 4f2a0b1c2d3e… (comm curl)`;
//! `--json` prints the audit lines as the agent writes them.

use std::io::Write;

use eci_control::{Client, ControlError, StreamItem};
use serde_json::Value;

use crate::audit_feed::container_of;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("writing the events: {0}")]
    Write(std::io::Error),
}

/// Print the stream until the agent ends it (at once without `follow`) or
/// the reader of our output goes away.
pub fn print(
    client: &Client,
    follow: bool,
    json: bool,
    container: Option<String>,
) -> Result<(), EventsError> {
    let mut out = std::io::stdout().lock();
    for item in client.events(follow, container)? {
        let text = match item? {
            StreamItem::Line(line) if json => line,
            StreamItem::Line(line) => human(&line),
            StreamItem::Missed(count) if json => {
                serde_json::json!({"event": "events_missed", "count": count}).to_string()
            }
            StreamItem::Missed(count) => format!("… {count} events missed (too slow a reader)"),
        };
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(err) => return Err(EventsError::Write(err)),
        }
    }
    Ok(())
}

/// The short name of a hook for people: what the task tried.
fn action(hook: &str) -> &str {
    match hook {
        "unix_stream_connect" => "connect",
        "unix_may_send" => "send",
        "file_open" => "open",
        "bprm_check_security" => "exec",
        "sb_mount" | "sb_kern_mount" => "mount",
        "sb_umount" => "umount",
        "path_chmod" => "chmod",
        "inode_setxattr" => "setxattr",
        other => other,
    }
}

/// A container id as Docker shows it: 12 characters.
fn short(id: &str) -> String {
    match id.char_indices().nth(12) {
        Some((end, _)) => format!("{}…", &id[..end]),
        None => id.to_owned(),
    }
}

/// Whose event: the container, else the cgroup's path, else its id.
fn subject(line: &Value) -> String {
    if let Some(id) = container_of(line) {
        return format!("container {}", short(&id));
    }
    match (line["cgroup"].as_str(), line["cgroup_id"].as_u64()) {
        (Some(path), _) => format!("cgroup {path}"),
        (None, Some(id)) => format!("cgroup id {id}"),
        (None, None) => "no cgroup".into(),
    }
}

/// `HH:MM:SS` in local time of an RFC 3339 time stamp.
fn local_time(text: &str) -> Option<String> {
    let secs = libc::time_t::try_from(eci_control::rfc3339_seconds(text)?).ok()?;
    // SAFETY: tm is plain data; localtime_r writes it and reads secs only.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm for the call's duration.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return None;
    }
    Some(format!(
        "{:02}:{:02}:{:02}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    ))
}

/// One audit line for people; a line it does not know is shown as it is.
pub fn human(line: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    let time = value["time"]
        .as_str()
        .and_then(local_time)
        .unwrap_or_else(|| "--:--:--".into());
    let text = |key: &str| value[key].as_str().unwrap_or("?").to_owned();
    let number = |key: &str| value[key].as_u64().unwrap_or(0);
    match value["event"].as_str() {
        Some("audit_not_logged") => {
            let hooks = value["not_logged"]
                .as_object()
                .map(|hooks| {
                    hooks
                        .iter()
                        .map(|(hook, n)| format!("{} {n}", action(hook)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!(
                "{time} counted, not logged: {} decisions of {} ({hooks}; audit rate limit)",
                number("count"),
                subject(&value)
            )
        }
        Some("audit_events_dropped") => format!(
            "{time} lost {} events: the ring buffer was full ({} in all)",
            number("dropped"),
            number("total_dropped")
        ),
        Some("docker_api_denied") => format!(
            "{time} denied docker API {} {} {} (rule {})",
            text("method"),
            text("target"),
            subject(&value),
            text("rule")
        ),
        Some(_) => format!("{time} {line}"),
        None => {
            let verdict = match value["verdict"].as_str() {
                Some("deny") => "denied",
                Some("allow") => "allowed",
                _ => "?",
            };
            let object = &value["object"];
            let what = object["path"]
                .as_str()
                .or_else(|| object["detail"].as_str())
                .map_or_else(
                    || {
                        format!(
                            "{} {}:{}",
                            object["kind"].as_str().unwrap_or("?"),
                            object["dev"].as_str().unwrap_or("?"),
                            object["ino"].as_u64().unwrap_or(0)
                        )
                    },
                    str::to_owned,
                );
            format!(
                "{time} {verdict} {} {what} {} (comm {})",
                action(value["hook"].as_str().unwrap_or("?")),
                subject(&value),
                text("comm")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time part is local; what follows it is fixed.
    fn after_time(line: &str) -> &str {
        line.split_once(' ').map_or("", |(_, rest)| rest)
    }

    #[test]
    fn a_denial_reads_as_verdict_action_object_container_and_comm() {
        let line = r#"{"time":"2026-12-04T12:00:01.000000000Z","hook":"unix_stream_connect","verdict":"deny","errno":1,"pid":10,"tgid":10,"uid":0,"gid":0,"comm":"curl","cgroup_id":77,"cgroup":"/docker/4f2a0b1c2d3e4f5a6b7c8d9e","object":{"kind":"unix_socket","dev":"0:25","ino":4242,"path":"/run/docker.sock"}}"#;
        let text = human(line);
        assert_eq!(
            after_time(&text),
            "denied connect /run/docker.sock container 4f2a0b1c2d3e… (comm curl)"
        );
        assert!(local_time("2026-12-04T12:00:01.5Z").is_some());
        assert_eq!(text.split(' ').next().map(str::len), Some(8), "{text}");
    }

    #[test]
    fn an_unregistered_cgroup_is_named_by_its_path_or_id() {
        let line = r#"{"time":"x","hook":"file_open","verdict":"deny","comm":"sh","cgroup_id":9,"object":{"kind":"device","dev":"8:0","ino":24576,"detail":"block device 8:0 is not in the allowed set"}}"#;
        assert_eq!(
            human(line),
            "--:--:-- denied open block device 8:0 is not in the allowed set cgroup id 9 (comm sh)"
        );
    }

    #[test]
    fn summary_lines_say_what_was_counted_or_lost() {
        let counted = r#"{"time":"2026-12-04T12:00:01Z","event":"audit_not_logged","cgroup_id":5,"cgroup":"/eci-storm","not_logged":{"unix_stream_connect":48},"count":48,"total":48}"#;
        assert_eq!(
            after_time(&human(counted)),
            "counted, not logged: 48 decisions of cgroup /eci-storm (connect 48; audit rate limit)"
        );
        let lost = r#"{"time":"2026-12-04T12:00:01Z","event":"audit_events_dropped","dropped":3,"total_dropped":7}"#;
        assert_eq!(
            after_time(&human(lost)),
            "lost 3 events: the ring buffer was full (7 in all)"
        );
        assert_eq!(human("not json"), "not json");
    }
}
