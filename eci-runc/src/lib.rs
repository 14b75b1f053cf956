//! eci-runc: an OCI runtime that wraps runc. Only `create` and `run` touch
//! the bundle's spec; every other command passes through unchanged.
//!
//! - [`args`]: runc's command line, as Docker and containerd pass it.
//! - [`ranges`]: the persistent, crash-safe allocator of exclusive id ranges.
//! - [`spec`]: the rewrite (user namespace, masks) and the refusals.
//! - [`settings`]: what eci-runc reads of the policy file.
//! - [`relocate`]: binds that make the container's files reachable (and
//!   ID-mapped) from inside its user namespace.

pub mod args;
pub mod ranges;
pub mod relocate;
pub mod settings;
pub mod spec;
