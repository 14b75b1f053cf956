//! The policy file, `/etc/eci/admin-settings.json`: Docker's admin-settings
//! schema (`configurationFileVersion`, `enhancedContainerIsolation`) plus
//! eci's own `eci` section.
//!
//! ```json
//! { "configurationFileVersion": 2,
//!   "enhancedContainerIsolation": { "value": true, "locked": true,
//!     "dockerSocketMount": {
//!       "imageList": { "images": ["docker.io/testcontainers/ryuk:*", "docker:cli"],
//!                      "allowDerivedImages": false },
//!       "commandList": { "type": "deny", "commands": ["push", "build"] } } },
//!   "eci": { "protectedCgroupParents": ["/docker"], "protectedSockets": ["/run/docker.sock"],
//!            "shareableHostPaths": ["/home"], "dockerRuntimeName": "eci",
//!            "dockerApiSockets": ["/run/docker.sock", "/var/run/docker.sock"],
//!            "audit": { "path": "/var/log/eci/audit.jsonl", "maxBytes": 52428800, "keep": 5,
//!                       "linesPerSecond": 100 } } }
//! ```
//!
//! Every section and key is optional: a missing key keeps its built-in
//! default ([`Policy::default`]), and a missing file means the built-in
//! defaults altogether. `null` is not "missing": it is a wrong type. Unknown
//! keys, wrong types and bad values are errors that name the file, the key
//! path and the line and column, and say what was expected.
//!
//! `eci.auditLog` (a plain path), from the first version of this file, is
//! still read as a shorthand for `eci.audit.path`.
//!
//! This crate is the only reader of the file: the agent loads it (and keeps
//! the last good one on reload); eci-runc asks the agent for the policy in
//! force over the control socket.

mod checks;
pub mod defaults;
mod diagnostics;
mod model;
mod parse;

use std::path::{Path, PathBuf};

pub use defaults::*;
pub use diagnostics::Invalid;
pub use model::*;
pub use parse::parse;

/// Where the policy came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The file does not exist.
    BuiltInDefaults,
}

/// A policy that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file exists (or may) but cannot be read: a policy that cannot be
    /// read must not silently become the defaults.
    #[error("{file}: cannot read the policy file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Invalid),
}

/// Read the policy at `path`. A file that does not exist means the built-in
/// defaults; any other failure to read it is an error.
pub fn load(path: &Path) -> Result<(Policy, Source), PolicyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((
            parse(&text, &path.display().to_string())?,
            Source::File(path.to_owned()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((Policy::default(), Source::BuiltInDefaults))
        }
        Err(source) => Err(PolicyError::Read {
            file: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
