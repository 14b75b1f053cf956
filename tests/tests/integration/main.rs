//! eci's integration tests as one binary, one module per feature (aya's
//! `src/tests/<feature>.rs` layout): the kernel rules against a real agent
//! (natively or in the test VM), and the engine suites against a real
//! dockerd/containerd. `cargo xtask vm-test -- <filter>` and `cargo test -p
//! eci-integration-tests -- <filter>` select by `module::test_name`.

mod agent;
mod as_usual;
mod audit;
mod cri;
mod demo;
mod deploy;
mod dind;
mod docker;
mod escape;
mod events;
mod full_stack;
mod image;
mod mounts;
mod namespaces;
mod package;
mod policy;
mod protection;
mod resources;
mod sockets;
