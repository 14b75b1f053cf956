//! The built-in defaults: listed here once, for the agent and eci-runc.

/// Where the agent looks for the policy.
pub const DEFAULT_POLICY_PATH: &str = "/etc/eci/admin-settings.json";

/// The default audit log.
pub const DEFAULT_AUDIT_PATH: &str = "/var/log/eci/audit.jsonl";
/// The size at which the audit log is rotated by default (50 MiB).
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 50 * 1024 * 1024;
/// How many rotated audit logs are kept by default.
pub const DEFAULT_AUDIT_KEEP: u32 = 5;
/// Audit lines per second each container's decisions may take by default;
/// the rest of a burst is counted and reported as one summary line per
/// container and second (`eci.audit.linesPerSecond`).
pub const DEFAULT_AUDIT_LINES_PER_SECOND: u32 = 100;
/// The largest `eci.audit.linesPerSecond` accepted.
pub const MAX_AUDIT_LINES_PER_SECOND: u32 = 100_000;
/// The smallest `eci.audit.maxBytes` accepted.
pub const MIN_AUDIT_MAX_BYTES: u64 = 4096;
/// The largest `eci.audit.keep` accepted.
pub const MAX_AUDIT_KEEP: u32 = 100;

/// The cgroups whose processes are confined by default: where Docker (with
/// the cgroupfs or the systemd driver) and Kubernetes (cgroupfs or systemd,
/// containerd's CRI scopes included) put their containers. The engines'
/// own cgroups (`/system.slice/docker.service`, `containerd.service`) and the
/// agent's are not matched.
pub const DEFAULT_PROTECTED_CGROUP_PARENTS: &[&str] = &[
    "/docker",
    "/kubepods",
    "/kubepods.slice",
    "/system.slice/docker-*.scope",
    "/system.slice/cri-containerd-*.scope",
];

/// The container engines' API sockets, which containers must not reach.
/// The Docker Engine's API sockets unless the policy says otherwise.
pub const DEFAULT_DOCKER_API_SOCKETS: &[&str] = &["/run/docker.sock", "/var/run/docker.sock"];

/// The VM directories containers may bind unless the policy says
/// otherwise: the users' homes, where their projects are (`docker run -v
/// "$PWD":/src`). What a container's root makes there is VM root's for
/// ownership only: the kernel rule on set-id files keeps it from being
/// privilege. `"shareableHostPaths": []` shares nothing.
pub const DEFAULT_SHAREABLE_HOST_PATHS: &[&str] = &["/home"];

/// The Docker Engine's name for eci-runc unless the policy says otherwise.
pub const DEFAULT_DOCKER_RUNTIME_NAME: &str = "eci";

pub const DEFAULT_PROTECTED_SOCKETS: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
    "/run/buildkit/buildkitd.sock",
];
