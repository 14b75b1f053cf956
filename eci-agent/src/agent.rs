//! `eci-agent run`: probe, load and pin, then serve until told to stop.
//! The rules stay pinned in the kernel when the agent exits.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, PerCpuArray};
use tokio::{io::unix::AsyncFd, sync::Mutex};

use crate::{
    audit::{self, AuditLog, Names},
    audit_limit::AuditLimitMaps,
    cgroups, control, enforcement,
    metrics::{self, Counters},
    pins::PinLayout,
    policy,
    proxy::Proxies,
    rules::{RuleError, RuleStore, UnenforcedRules},
    state::{
        AgentConfig, PolicyInForce, Shared, refresh_parents, refresh_sockets, reload, run_dir,
        state_file,
    },
    views, vm,
};

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("eci-agent run must run as root (it loads BPF programs and owns /run/eci)");
    }
    let (policy, source) = policy::load(&config.policy_path)?;
    match &source {
        policy::Source::File(path) => {
            tracing::info!(file = %path.display(), "policy: {}", policy.summary())
        }
        policy::Source::BuiltInDefaults => tracing::info!(
            file = %config.policy_path.display(),
            "no policy file; built-in defaults: {}",
            policy.summary()
        ),
    }
    if config.unenforced_for_testing && policy.locked {
        anyhow::bail!(
            "the policy {} is locked: enforcement cannot be turned off, so --unenforced-for-testing is refused",
            config.policy_path.display()
        );
    }
    // Containers are judged by their cgroup2 cgroup: with no cgroup2 mount
    // in view no container could be registered, and an agent that served
    // anyway would pass its readiness probe while protecting nothing.
    if !config.unenforced_for_testing {
        cgroups::cgroup2_mount().map_err(|err| {
            anyhow::anyhow!(
                "eci-agent run refuses to start: containers are registered by their cgroup2 cgroup, and {err}. Nothing was loaded or changed"
            )
        })?;
    }
    // Before anything is loaded or replaced: a metrics address that cannot
    // be had stops the start with nothing changed.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let counters = Counters::default();
    let layout = PinLayout::new(&config.pin_dir);
    let own_cgroup = cgroups::own_cgroup("self")?;

    let mut mode = None;
    let mut verdict_cache = None;
    let mut coverage = Vec::new();
    let (rules, kernel): (Box<dyn RuleStore>, Option<KernelParts>) = if config
        .unenforced_for_testing
    {
        let banner = "RUNNING WITHOUT KERNEL ENFORCEMENT (--unenforced-for-testing): containers are registered but NOTHING is enforced. For host-side tests only.";
        eprintln!("eci-agent: WARNING: {banner}");
        tracing::error!("{banner}");
        (Box::new(UnenforcedRules::default()), None)
    } else {
        let started = std::time::Instant::now();
        let loaded = enforcement::probe_lsm(&layout, config.protection)?;
        let mut enforcement = enforcement::attach_all(loaded, &layout)?;
        tracing::info!(
            mode = enforcement.mode.name(),
            "protection: {}",
            enforcement.mode.describe()
        );
        for rule in enforcement.coverage.iter().filter(|r| !r.is_enforced()) {
            tracing::warn!(rule = %rule.rule, "rule {} is NOT enforced on this kernel: {}", rule.rule, rule.status);
        }
        if let Some(cache) = enforcement.cache {
            tracing::info!("verdicts cached in: {}", cache.describe());
        }
        mode = Some(enforcement.mode);
        verdict_cache = enforcement.cache;
        coverage = enforcement.coverage.clone();
        let logger = match aya_log::EbpfLogger::init(&mut enforcement.ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::warn!("BPF log forwarding unavailable: {err}");
                None
            }
        };
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, pin_dir = %layout.root().display(), "BPF-LSM probe passed; programs attached and pinned");
        let drops: PerCpuArray<MapData, u64> = enforcement
            .ebpf
            .take_map(eci_common::map_names::EVENT_DROPS)
            .ok_or_else(|| anyhow::anyhow!("the BPF object has no drop counter"))
            .and_then(|m| PerCpuArray::try_from(m).map_err(anyhow::Error::from))?;
        // The pinned links hold the programs, the programs their maps, and
        // the maps the agent uses are taken: the object (every program's
        // instructions, the object's own BTF and relocations) can go.
        drop(enforcement.ebpf);
        (
            Box::new(enforcement.rules),
            Some(KernelParts {
                events: enforcement.events,
                audit_limit: enforcement.audit_limit,
                drops,
                logger,
            }),
        )
    };

    let mut names = Names::default();
    for (id, _) in rules.protected_cgroups() {
        if let Some(path) = cgroups::path_of_id(id) {
            names.cgroups.insert(id, path);
        }
    }
    let (parents, sockets) = config.effective(&policy);
    let shared = Arc::new(Mutex::new(Shared {
        rules,
        names,
        own_cgroup,
        parents,
        sockets,
        mode,
        verdict_cache,
        coverage,
    }));
    let mut vm_namespaces = vm::VmNamespaces::default();
    {
        let mut guard = shared.lock().await;
        let magics = vm::DENIED_FILESYSTEM_MAGICS.iter().copied().collect();
        guard.rules.sync_denied_filesystems(&magics)?;
        guard
            .rules
            .sync_allowed_devices(&vm::allowed_device_keys(&policy.allowed_devices))?;
    }
    let count = refresh_vm_namespaces(&shared, &mut vm_namespaces, &config).await?;
    tracing::info!(count, "VM namespaces learned");
    refresh_parents(&shared).await;
    let audit = Arc::new(Mutex::new(AuditLog::open(
        &config.audit_log(&policy),
        policy.audit.max_bytes,
        policy.audit.keep,
    )?));

    let feed = audit.lock().await.feed();
    let policy = PolicyInForce::new(policy);
    let proxies = Arc::new(Proxies::new(
        run_dir(&config.control_socket).join("proxy"),
        config.policy_path.clone(),
        policy.subscribe(),
        audit.clone(),
        counters.clone(),
    ));
    let listener = control::bind(&config.control_socket)?;
    proxies.remove_stale();
    refresh_sockets(&shared, &policy, &config).await?;
    release_freed_memory();
    tracing::info!(socket = %config.control_socket.display(), "control socket ready");
    crate::install::notify_ready();

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::serve(
        listener,
        shared.clone(),
        policy.clone(),
        proxies,
        config.clone(),
        feed,
        counters.clone(),
    ));
    {
        let shared = shared.clone();
        let policy = policy.clone();
        let config = config.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(err) = refresh_sockets(&shared, &policy, &config).await {
                    tracing::error!("refreshing protected sockets: {err:#}");
                }
                refresh_parents(&shared).await;
                if let Err(err) = refresh_vm_namespaces(&shared, &mut vm_namespaces, &config).await
                {
                    tracing::error!("refreshing VM namespaces: {err:#}");
                }
            }
        });
    }
    tasks.spawn(views::keep_current(config.views_dir.clone()));
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics served at http://{addr}/metrics");
        }
        tasks.spawn(metrics::serve(
            listener,
            metrics::Source {
                counters: counters.clone(),
                shared: shared.clone(),
                layout: layout.clone(),
                names: Default::default(),
            },
        ));
    }
    if let Some(kernel) = kernel {
        let KernelParts {
            events,
            audit_limit,
            drops,
            logger,
        } = kernel;
        tasks.spawn(read_events(
            events,
            shared.clone(),
            audit.clone(),
            counters.clone(),
        ));
        tasks.spawn(report_not_logged(
            audit_limit,
            policy.subscribe(),
            audit.clone(),
            counters.clone(),
        ));
        tasks.spawn(watch_drops(drops, audit.clone()));
        if let Some(logger) = logger {
            tasks.spawn(forward_bpf_logs(logger));
        }
    }

    {
        let shared = shared.clone();
        let policy = policy.clone();
        let config = config.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tasks.spawn(async move {
            while hangup.recv().await.is_some() {
                match reload(&shared, &policy, &config).await {
                    Ok(message) => tracing::info!("SIGHUP: {message}"),
                    Err(err) => tracing::error!("SIGHUP: {err}"),
                }
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        Some(done) = tasks.join_next() => {
            tracing::error!("an agent task ended unexpectedly: {done:?}");
        }
    }
    let _ = std::fs::remove_file(&config.control_socket);
    let _ = std::fs::remove_file(state_file(&config.control_socket));
    tracing::info!(
        "agent stopping; kernel rules stay in force (pinned under {})",
        config.pin_dir.display()
    );
    Ok(())
}

/// Give the heap freed since start back to the system: parsing the kernel's
/// BTF (twice: aya's and eci's) and loading the object take tens of MiB
/// that are all freed by now, but the allocator keeps freed memory for
/// reuse, so it would stay resident for the agent's whole life.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no arguments that point anywhere; glibc's own locking.
    unsafe {
        libc::malloc_trim(0);
    }
}

struct KernelParts {
    events: aya::maps::RingBuf<MapData>,
    audit_limit: AuditLimitMaps,
    drops: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Learn the VM's namespaces again and put them in force; returns how
/// many. The engine's sockets are the protected ones but the agent's own
/// control socket; they are asked (and /proc read) outside the rules' lock.
async fn refresh_vm_namespaces(
    shared: &Arc<Mutex<Shared>>,
    vm_namespaces: &mut vm::VmNamespaces,
    config: &AgentConfig,
) -> Result<usize, RuleError> {
    let engine_sockets: Vec<std::path::PathBuf> = {
        let guard = shared.lock().await;
        guard
            .sockets
            .paths()
            .iter()
            .filter(|p| **p != config.control_socket)
            .cloned()
            .collect()
    };
    let namespaces = vm_namespaces.learn(&engine_sockets);
    shared.lock().await.rules.sync_vm_namespaces(&namespaces)?;
    Ok(namespaces.len())
}

/// Most events read from the ring buffer before they are written.
const MAX_BATCH: usize = 256;

async fn read_events(
    events: aya::maps::RingBuf<MapData>,
    shared: Arc<Mutex<Shared>>,
    audit: Arc<Mutex<AuditLog>>,
    counters: Counters,
) {
    // SAFETY: the ring buffer owns its fd, which stays open while registered.
    let mut ring = match unsafe { AsyncFd::register(events) } {
        Ok(ring) => ring,
        Err(err) => {
            tracing::error!("cannot poll the audit ring buffer: {err}");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::error!("polling the audit ring buffer: {err}");
                return;
            }
        };
        let mut batch = Vec::new();
        // Bounded: under a storm the producer may keep up with this loop,
        // and one batch is held in memory (events, lines, text) at once.
        // Readiness is cleared only once the ring is empty, so what is
        // left after a full batch is read at once, not at the next event.
        let mut drained = false;
        while batch.len() < MAX_BATCH {
            let Some(record) = guard.get_inner_mut().next() else {
                drained = true;
                break;
            };
            match audit::decode(&record) {
                Ok(event) => batch.push(event),
                Err(err) => tracing::error!("{err}"),
            }
        }
        if drained {
            guard.clear_ready();
        }
        if batch.is_empty() {
            continue;
        }
        let names = shared.lock().await.names.clone();
        let lines: Vec<_> = batch
            .iter()
            .map(|event| audit::to_line(event, &names, audit::wall_clock_of(event.boot_time_ns)))
            .collect();
        // One journal line per batch (the first denial and the count); each
        // denial is in the audit log, and in the journal at debug level.
        if let Some(first) = lines.first() {
            tracing::warn!(
                hook = first.hook,
                verdict = first.verdict,
                pid = first.pid,
                comm = %first.comm,
                cgroup_id = first.cgroup_id,
                object = ?first.object.path,
                in_batch = lines.len(),
                "denied"
            );
        }
        for line in lines.iter().skip(1) {
            tracing::debug!(
                hook = line.hook,
                pid = line.pid,
                comm = %line.comm,
                cgroup_id = line.cgroup_id,
                object = ?line.object.path,
                "denied"
            );
        }
        match audit.lock().await.write_batch(&lines) {
            Ok(()) => {
                for line in &lines {
                    counters.audit_line(line.hook);
                }
            }
            Err(err) => tracing::error!("{err}"),
        }
    }
}

/// Keep the policy's audit rate limit in force and write, every second, one
/// line per cgroup whose decisions were counted instead of logged.
async fn report_not_logged(
    mut maps: AuditLimitMaps,
    mut policy: tokio::sync::watch::Receiver<Arc<eci_policy::Policy>>,
    audit: Arc<Mutex<AuditLog>>,
    counters: Counters,
) {
    let set = |maps: &mut AuditLimitMaps, per_second: u32| {
        if let Err(err) = maps.set_limit(per_second) {
            tracing::error!("{err}");
        }
    };
    set(&mut maps, policy.borrow_and_update().audit.lines_per_second);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = policy.changed() => {
                if changed.is_err() {
                    return;
                }
                set(&mut maps, policy.borrow_and_update().audit.lines_per_second);
                continue;
            }
        }
        let now = audit::wall_clock_of(0) + boot_now_ns();
        let lines = match maps.collect(now) {
            Ok(lines) => lines,
            Err(err) => {
                tracing::error!("{err}");
                continue;
            }
        };
        if lines.is_empty() {
            continue;
        }
        for line in &lines {
            counters.not_logged(line.count);
            tracing::warn!(
                cgroup_id = line.cgroup_id,
                cgroup = ?line.cgroup,
                count = line.count,
                "decisions counted, not logged one by one (audit rate limit)"
            );
        }
        if let Err(err) = audit.lock().await.write_batch(&lines) {
            tracing::error!("{err}");
        }
    }
}

/// Report ring-buffer drops: never silent.
async fn watch_drops(drops: PerCpuArray<MapData, u64>, audit: Arc<Mutex<AuditLog>>) {
    let mut reported = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let total: u64 = drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        if total > reported {
            tracing::error!(
                dropped = total - reported,
                total,
                "audit events dropped: the ring buffer was full"
            );
            let line = serde_json::json!({
                "time": audit::rfc3339(audit::wall_clock_of(0) + boot_now_ns()),
                "event": "audit_events_dropped",
                "dropped": total - reported,
                "total_dropped": total,
            });
            if let Err(err) = audit.lock().await.write(&line) {
                tracing::error!("{err}");
            }
            reported = total;
        }
    }
}

fn boot_now_ns() -> i128 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0)
}

async fn forward_bpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its fd, which stays open while registered.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(err) => {
            tracing::warn!("BPF log forwarding unavailable: {err}");
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(_) => return,
        }
    }
}
