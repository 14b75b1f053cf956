//! What the running agent keeps, and who owns it.
//!
//! - The policy in force: one immutable `Arc<Policy>`, owned by
//!   [`PolicyInForce`] and published through a `watch` channel. The control
//!   server answers with it, the Docker API proxies read it, a reload
//!   publishes a new one; a refused file publishes nothing.
//! - The rules store and what is named in it ([`Shared`], behind one mutex),
//!   with the parents and sockets the policy in force asks for.
//!
//! This module imports neither the control server nor the proxies: they
//! and `agent` import it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use crate::{
    audit::{self, Names},
    cgroups,
    coverage::RuleState,
    policy::{self, Policy, PolicyError},
    registry::{self, ProtectionMode, VerdictCache},
    rules::{RuleError, RuleStore},
    sockets::SocketSet,
};

/// Everything `run` is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub pin_dir: PathBuf,
    pub control_socket: PathBuf,
    pub policy_path: PathBuf,
    /// From the command line: overrides the policy's audit log.
    pub audit_log: Option<PathBuf>,
    /// From the command line: protected on top of the policy's sockets.
    pub extra_sockets: Vec<PathBuf>,
    /// From the command line: ignore the policy's protected sockets.
    pub no_policy_sockets: bool,
    /// From the command line: replace the policy's protected parents.
    pub parents: Option<Vec<String>>,
    pub unenforced_for_testing: bool,
    /// The containers' /proc views, kept current every second.
    pub views_dir: PathBuf,
    /// How the kernel is to tell a protected task (auto: by the kernel).
    pub protection: registry::Choice,
    /// Serve Prometheus metrics here (`None`: no metrics).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    /// What to protect under `policy`, after the command line's overrides.
    /// The control socket is always protected.
    pub fn effective(&self, policy: &Policy) -> (Vec<String>, SocketSet) {
        let enforcing = policy.enforcement;
        let parents = match &self.parents {
            Some(p) => p.clone(),
            None if enforcing => policy.protected_cgroup_parents.clone(),
            None => Vec::new(),
        };
        let mut sockets = self.extra_sockets.clone();
        if enforcing && !self.no_policy_sockets {
            sockets.extend(policy.protected_sockets.iter().cloned());
            sockets.extend(policy.docker_api_sockets.iter().cloned());
        }
        sockets.push(self.control_socket.clone());
        (parents, SocketSet::new(sockets))
    }

    pub fn audit_log(&self, policy: &Policy) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| policy.audit.path.clone())
    }
}

/// The rules store and what goes with it, shared by the control server and
/// the background tasks.
pub struct Shared {
    pub rules: Box<dyn RuleStore>,
    pub names: Names,
    /// The agent's own cgroup2 path: never protectable.
    pub own_cgroup: String,
    /// What the policy in force (after the command line) protects.
    pub parents: Vec<String>,
    pub sockets: SocketSet,
    /// How the kernel tells a protected task (`None`: nothing is enforced).
    pub mode: Option<ProtectionMode>,
    /// Where the ancestor walk caches verdicts (`None`: no walk).
    pub verdict_cache: Option<VerdictCache>,
    /// Every rule, enforced or missing.
    pub coverage: Vec<RuleState>,
}

impl Shared {
    /// Registry mode: make the descendants of the cgroup `dir` inherit
    /// what its map entry (now) says; nothing in the other modes.
    pub fn register_descendants(&mut self, id: u64, dir: &Path) {
        if self.mode != Some(ProtectionMode::Registry) {
            return;
        }
        // No entry left: the cgroup has no protected ancestor either (it
        // would inherit from it), so neither have its descendants.
        let value = self
            .rules
            .protected_cgroups()
            .get(&id)
            .copied()
            .unwrap_or(0);
        match registry::sync_subtree(self.rules.as_mut(), dir, value) {
            Ok(synced) if synced != registry::Synced::default() => {
                tracing::info!(cgroup = %dir.display(), registered = synced.registered, released = synced.released, "registry: descendants synced")
            }
            Ok(_) => {}
            Err(err) => tracing::error!(cgroup = %dir.display(), "registry: {err}"),
        }
    }

    /// Make the whole registry match cgroupfs (see `registry::sync`).
    pub fn sync_registry(&mut self) {
        let Some(mode) = self.mode else { return };
        let mount = match cgroups::cgroup2_mount() {
            Ok(mount) => mount,
            Err(err) => {
                tracing::error!("registry: {err}");
                return;
            }
        };
        match registry::sync(self.rules.as_mut(), mode, &mount) {
            Ok(synced) if synced != registry::Synced::default() => tracing::info!(
                registered = synced.registered,
                released = synced.released,
                mode = mode.name(),
                "registry: protected map synced with cgroupfs"
            ),
            Ok(_) => {}
            Err(err) => tracing::error!("registry: {err}"),
        }
    }
}

/// The owner of the policy in force. Readers take the current `Arc<Policy>`
/// (or a receiver of it); only [`reload`] publishes a new one.
#[derive(Clone)]
pub struct PolicyInForce {
    sender: Arc<watch::Sender<Arc<Policy>>>,
}

impl PolicyInForce {
    pub fn new(policy: Policy) -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(Arc::new(policy))),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.sender.borrow().clone()
    }

    /// A reader that always sees the policy in force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policy>> {
        self.sender.subscribe()
    }
}

/// Why a reload changed nothing: the last good policy stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("policy not reloaded, the last good one stays in force: {0}")]
    Refused(#[source] PolicyError),
    #[error(
        "policy not reloaded: the policy in force is locked, and {0} would turn enforcement off or unlock it; restart the agent to apply an administrator's change"
    )]
    Locked(String),
    #[error("policy reloaded, but the protected sockets were not refreshed: {0}")]
    Sockets(#[from] StateError),
    #[error(
        "policy not reloaded, the last good one stays in force: the allowed devices could not be set in the kernel: {0}"
    )]
    Devices(#[source] RuleError),
}

/// Applying the protected sockets and writing the state file for `status`.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error("writing the agent's state file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the agent's state file: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What the running agent tells `status` (written next to the control socket).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    pub pid: u32,
    pub mode: String,
    pub pin_dir: PathBuf,
    pub audit_log: PathBuf,
    pub sockets: Vec<ProtectedSocket>,
    /// How the kernel tells a protected task (absent: nothing enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<ProtectionMode>,
    /// Where the ancestor walk caches verdicts (absent: no walk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_cache: Option<VerdictCache>,
    /// Every rule, enforced or missing, as the agent attached them.
    #[serde(default)]
    pub rules: Vec<RuleState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtectedSocket {
    pub path: PathBuf,
    pub dev: String,
    pub ino: u64,
}

pub fn state_file(control_socket: &Path) -> PathBuf {
    run_dir(control_socket).join("agent-state.json")
}

/// Re-read the policy. A bad file changes nothing (the last good policy
/// stays); a locked policy cannot be turned off or unlocked at runtime.
/// Returns the new policy's summary.
pub async fn reload(
    shared: &Arc<Mutex<Shared>>,
    policy: &PolicyInForce,
    config: &AgentConfig,
) -> Result<String, ReloadError> {
    let (new, _) = policy::load(&config.policy_path).map_err(ReloadError::Refused)?;
    // Under the rules' lock: reloads happen one at a time, and the parents
    // and sockets change with the policy.
    let mut guard = shared.lock().await;
    let current = policy.current();
    if current.locked && (!new.enforcement || !new.locked) {
        return Err(ReloadError::Locked(
            config.policy_path.display().to_string(),
        ));
    }
    let (parents, sockets) = config.effective(&new);
    guard.parents = parents;
    guard.sockets = sockets;
    guard
        .rules
        .sync_allowed_devices(&crate::vm::allowed_device_keys(&new.allowed_devices))
        .map_err(ReloadError::Devices)?;
    let summary = new.summary();
    policy.sender.send_replace(Arc::new(new));
    drop(guard);
    refresh_parents(shared).await;
    refresh_sockets(shared, policy, config).await?;
    Ok(format!("policy reloaded: {summary}"))
}

/// Protect the cgroups the policy names as parents (with their whole
/// subtree) and stop protecting ones that went away.
pub async fn refresh_parents(shared: &Arc<Mutex<Shared>>) {
    let mut guard = shared.lock().await;
    let patterns = guard.parents.clone();
    let own = guard.own_cgroup.clone();
    let mut wanted = std::collections::BTreeMap::new();
    for pattern in &patterns {
        for cgroup in cgroups::expand(pattern) {
            if cgroups::is_same_or_below(&own, &cgroup.path) {
                tracing::error!(parent = %cgroup.path, agent = %own, "not protecting a parent that holds the agent itself");
                continue;
            }
            wanted.insert(cgroup.id, cgroup.path);
        }
    }
    let current: Vec<u64> = guard
        .rules
        .protected_cgroups()
        .into_iter()
        .filter(|(_, r)| r & eci_common::protect_reason::POLICY_PARENT != 0)
        .map(|(id, _)| id)
        .collect();
    for (id, path) in &wanted {
        if !current.contains(id) {
            match guard
                .rules
                .protect_cgroup(*id, eci_common::protect_reason::POLICY_PARENT)
            {
                Ok(()) => tracing::info!(parent = %path, id, "protected parent cgroup"),
                Err(err) => tracing::error!(parent = %path, "protecting parent: {err}"),
            }
            guard.names.cgroups.insert(*id, path.clone());
        }
    }
    for id in current.into_iter().filter(|id| !wanted.contains_key(id)) {
        if let Err(err) = guard
            .rules
            .unprotect_cgroup(id, eci_common::protect_reason::POLICY_PARENT)
        {
            tracing::error!(id, "unprotecting a vanished parent: {err}");
        }
    }
    guard.sync_registry();
}

/// Protect the sockets the policy in force names (as they are now on disk)
/// and write the state file `status` reads.
pub async fn refresh_sockets(
    shared: &Arc<Mutex<Shared>>,
    policy: &PolicyInForce,
    config: &AgentConfig,
) -> Result<(), StateError> {
    let audit_log = config.audit_log(&policy.current());
    let mut guard = shared.lock().await;
    let (protection, verdict_cache, rules) =
        (guard.mode, guard.verdict_cache, guard.coverage.clone());
    let found = guard.sockets.scan();
    let wanted: BTreeSet<_> = found.keys().copied().collect();
    if guard.names.sockets != found {
        guard.rules.sync_sockets(&wanted)?;
        for (id, path) in &found {
            if !guard.names.sockets.contains_key(id) {
                tracing::info!(path = %path.display(), ino = id.ino, "socket protected");
            }
        }
        guard.names.sockets = found.clone();
    }
    drop(guard);
    let state = AgentState {
        pid: std::process::id(),
        mode: if config.unenforced_for_testing {
            "unenforced".into()
        } else {
            "kernel".into()
        },
        pin_dir: config.pin_dir.clone(),
        audit_log,
        protection,
        verdict_cache,
        rules,
        sockets: found
            .iter()
            .map(|(id, path)| {
                let (major, minor) = audit::kernel_dev_parts(id.dev);
                ProtectedSocket {
                    path: path.clone(),
                    dev: format!("{major}:{minor}"),
                    ino: id.ino,
                }
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&state)?;
    let path = state_file(&config.control_socket);
    let tmp = path.with_extension("json.tmp");
    let write_err = |source| StateError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, text).map_err(write_err)?;
    std::fs::rename(&tmp, &path).map_err(write_err)?;
    Ok(())
}
/// Directory holding the control socket and the agent's state file.
pub fn run_dir(control_socket: &Path) -> PathBuf {
    control_socket
        .parent()
        .unwrap_or(Path::new("/run/eci"))
        .to_owned()
}

/// An agent's state for unit tests: unenforced rules, no parents, no
/// sockets, `policy_text` as its policy file in `dir`, in force.
#[cfg(test)]
pub fn for_tests(
    dir: &Path,
    policy_text: &str,
) -> (Arc<Mutex<Shared>>, PolicyInForce, AgentConfig) {
    let config = AgentConfig {
        pin_dir: dir.join("pins"),
        control_socket: dir.join("run/agent.sock"),
        policy_path: dir.join("admin-settings.json"),
        audit_log: Some(dir.join("audit.jsonl")),
        extra_sockets: Vec::new(),
        no_policy_sockets: true,
        parents: Some(Vec::new()),
        unenforced_for_testing: true,
        views_dir: dir.join("views"),
        protection: registry::Choice::default(),
        metrics_listen: None,
    };
    std::fs::create_dir_all(dir.join("run")).expect("run dir");
    std::fs::write(&config.policy_path, policy_text).expect("policy file");
    let (policy, _) = policy::load(&config.policy_path).expect("a valid policy");
    let (parents, sockets) = config.effective(&policy);
    let shared = Arc::new(Mutex::new(Shared {
        rules: Box::new(crate::rules::UnenforcedRules::default()),
        names: Names::default(),
        own_cgroup: "/agent".into(),
        parents,
        sockets,
        mode: None,
        verdict_cache: None,
        coverage: Vec::new(),
    }));
    (shared, PolicyInForce::new(policy), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"eci": {"shareableHostPaths": ["/home"]}}"#;
    const BAD: &str = r#"{"eci": {"shareableHostPaths": ["/etc"]}}"#;

    #[tokio::test]
    async fn a_refused_file_leaves_the_last_good_policy_in_force_for_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, policy, config) = for_tests(dir.path(), GOOD);
        let reader = policy.subscribe();
        assert_eq!(
            policy.current().shareable_host_paths,
            vec![PathBuf::from("/home")]
        );
        std::fs::write(&config.policy_path, BAD).unwrap();
        let err = reload(&shared, &policy, &config).await.unwrap_err();
        assert!(matches!(err, ReloadError::Refused(_)), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains("the last good one stays in force"),
            "{shown}"
        );
        assert!(shown.contains("eci.shareableHostPaths[0]"), "{shown}");
        for seen in [policy.current(), reader.borrow().clone()] {
            assert_eq!(seen.shareable_host_paths, vec![PathBuf::from("/home")]);
        }
    }

    #[tokio::test]
    async fn a_good_file_is_published_to_every_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, policy, config) = for_tests(dir.path(), GOOD);
        let reader = policy.subscribe();
        std::fs::write(
            &config.policy_path,
            r#"{"eci": {"shareableHostPaths": ["/srv/data"]}}"#,
        )
        .unwrap();
        let message = reload(&shared, &policy, &config).await.unwrap();
        assert!(message.starts_with("policy reloaded"), "{message}");
        for seen in [policy.current(), reader.borrow().clone()] {
            assert_eq!(seen.shareable_host_paths, vec![PathBuf::from("/srv/data")]);
        }
        assert!(state_file(&config.control_socket).exists());
    }

    #[tokio::test]
    async fn a_locked_policy_is_not_unlocked_by_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, _, config) = for_tests(dir.path(), GOOD);
        let locked = Policy {
            locked: true,
            ..Policy::default()
        };
        let policy = PolicyInForce::new(locked);
        std::fs::write(
            &config.policy_path,
            r#"{"enhancedContainerIsolation": {"locked": false}}"#,
        )
        .unwrap();
        let err = reload(&shared, &policy, &config).await.unwrap_err();
        assert!(matches!(err, ReloadError::Locked(_)), "{err}");
        assert!(policy.current().locked);
    }
}
