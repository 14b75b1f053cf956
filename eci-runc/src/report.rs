//! Telling the caller what happened, the way runc does: stderr, and one line
//! per message in the `--log` file (JSON with `--log-format json`), which is
//! what Docker and containerd show the user when a command fails.

use std::{io::Write, path::PathBuf};

use crate::args::Invocation;

#[derive(Debug, Clone, Default)]
pub struct Reporter {
    log: Option<PathBuf>,
    json: bool,
}

impl Reporter {
    pub fn new(inv: &Invocation) -> Self {
        Self {
            log: inv.log.clone(),
            json: inv.log_format_json,
        }
    }

    /// Only in the log file: adjustments made to the spec, and the like.
    pub fn info(&self, msg: &str) {
        self.write("info", msg);
    }

    pub fn warning(&self, msg: &str) {
        eprintln!("eci-runc: warning: {msg}");
        self.write("warning", msg);
    }

    pub fn error(&self, msg: &str) {
        eprintln!("eci-runc: {msg}");
        self.write("error", msg);
    }

    fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.log else {
            return;
        };
        let time = eci_control::rfc3339_now();
        let line = if self.json {
            serde_json::json!({ "level": level, "msg": msg, "time": time }).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        // A log we cannot write must not change the outcome; stderr has it.
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(format!("{line}\n").as_bytes());
        }
    }
}
