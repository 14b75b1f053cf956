//! eci-runc: an OCI runtime that wraps runc. Only `create` and `run` touch
//! the bundle's spec; every other command passes through unchanged. It reads
//! no policy file: `create` and `run` ask the agent for the policy in force.
//!
//! - [`args`]: runc's command line, as Docker and containerd pass it.
//! - [`joined`]: namespaces shared with another eci container, judged by
//!   the user namespace that owns them.
//! - [`lifecycle`]: one function per runc command eci-runc looks into.
//! - [`report`]: messages for the caller (stderr and runc's `--log`).
//! - [`ranges`]: the persistent, crash-safe allocator of exclusive id ranges.
//! - [`spec`]: the rewrite (user namespace, masks) and the refusals.
//! - [`sources`]: bind sources judged by the mount they are on (same mount
//!   as an allowing directory, or a fresh tmpfs below one), descriptors kept
//!   to bind from.
//! - [`trusted`]: which image a container runs, and whether the policy
//!   trusts it with a (filtered) Docker socket.
//! - [`rootfs`]: the root file system, owned by the container's root (ID-mapped
//!   layers, shifted upper layer).
//! - [`start`]: runc's `start` of a created container, done here when that
//!   is all runc would do.
//! - [`relocate`]: binds that make the container's files reachable (and
//!   ID-mapped) from inside its user namespace.

pub mod args;
pub mod joined;
pub mod lifecycle;
pub mod ranges;
pub mod relocate;
pub mod report;
pub mod rootfs;
pub mod sources;
pub mod spec;
pub mod start;
pub mod timing;
pub mod trusted;
