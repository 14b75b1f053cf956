//! Which tasks are protected: registered cgroups, and everything below a
//! protected parent, whoever created it and whenever; and the rules survive
//! the agent.

use std::path::PathBuf;

use eci_integration_tests::{
    Attempt, TestAgent, TestCgroup, TestSockets, attempt, bpf_lsm_or_skip, cgroup2_mount,
    kernel_version, unique,
};

fn client() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eci-test-client"))
}

/// A cgroup at a fixed path below the cgroup2 root, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn nested(parent: &std::path::Path, name: &str) -> (Dir, TestCgroup) {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).expect("create cgroup");
    let mount = cgroup2_mount();
    let rel = format!(
        "/{}",
        dir.strip_prefix(&mount).expect("below cgroup2").display()
    );
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).expect("stat"));
    (Dir(dir.clone()), TestCgroup::at(dir, rel, id))
}

#[test]
fn every_descendant_of_a_protected_parent_is_protected_whenever_it_was_made() {
    if !bpf_lsm_or_skip("every_descendant_of_a_protected_parent_is_protected_whenever_it_was_made")
    {
        return;
    }
    let sockets = TestSockets::new();
    let parent_name = unique("eci-parent");
    let parent = Dir(cgroup2_mount().join(&parent_name));
    std::fs::create_dir(&parent.0).expect("parent cgroup");
    // A "container" that existed before the agent started.
    let (_before_dir, before) = nested(&parent.0, "before");
    let agent = TestAgent::start(&[
        "--protect-socket",
        &sockets.stream.display().to_string(),
        "--protected-parent",
        &format!("/{parent_name}"),
    ]);
    // Containers made after, at any depth, by anyone.
    let (_after_dir, after) = nested(&parent.0, "after");
    let (_deep_dir, deep) = nested(&after.dir, "deep");
    for cgroup in [&before, &after, &deep] {
        let (result, _, text) = attempt(&client(), cgroup, "stream", &sockets.stream);
        assert_eq!(
            result,
            Attempt::Denied,
            "{} is below a protected parent: {text}",
            cgroup.path
        );
    }
    let outside = TestCgroup::new("eci-free");
    assert_eq!(
        attempt(&client(), &outside, "stream", &sockets.stream).0,
        Attempt::Allowed
    );
    let status: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["status", "--json"]).stdout).expect("status JSON");
    let listed = status["protected_cgroups"].as_array().expect("cgroups");
    assert!(
        listed
            .iter()
            .any(|c| c["path"] == format!("/{parent_name}").as_str()),
        "{status}"
    );
    drop(agent);
    drop((_deep_dir, deep));
    drop((_after_dir, after));
    drop((_before_dir, before));
}

#[test]
fn glob_parents_protect_matching_cgroups_only() {
    if !bpf_lsm_or_skip("glob_parents_protect_matching_cgroups_only") {
        return;
    }
    let sockets = TestSockets::new();
    let slice_name = unique("eci-slice");
    let slice = Dir(cgroup2_mount().join(&slice_name));
    std::fs::create_dir(&slice.0).expect("slice");
    let (_a, matching) = nested(&slice.0, "docker-abc123.scope");
    let (_b, other) = nested(&slice.0, "other.service");
    let _agent = TestAgent::start(&[
        "--protect-socket",
        &sockets.stream.display().to_string(),
        "--protected-parent",
        &format!("/{slice_name}/docker-*.scope"),
    ]);
    assert_eq!(
        attempt(&client(), &matching, "stream", &sockets.stream).0,
        Attempt::Denied
    );
    assert_eq!(
        attempt(&client(), &other, "stream", &sockets.stream).0,
        Attempt::Allowed
    );
}

#[test]
fn a_restarted_agent_adopts_the_pinned_rules_and_loses_no_audit_event() {
    if !bpf_lsm_or_skip("a_restarted_agent_adopts_the_pinned_rules_and_loses_no_audit_event") {
        return;
    }
    let sockets = TestSockets::new();
    let socket_arg = sockets.stream.display().to_string();
    let mut agent = TestAgent::start(&["--protect-socket", &socket_arg]);
    let cgroup = TestCgroup::new("eci-prot");
    agent.protect(&cgroup);
    agent.kill_hard();
    // While no agent runs: still denied, and the event waits in the pinned ring buffer.
    let (result, pid_while_down, _) = attempt(&client(), &cgroup, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Denied);
    agent.spawn(&["--protect-socket", &socket_arg]);
    let (result, pid_after, _) = attempt(&client(), &cgroup, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Denied, "the restarted agent lost the rule");
    agent.wait_audit(|l| l["tgid"] == pid_while_down);
    agent.wait_audit(|l| l["tgid"] == pid_after);
    let status: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["status", "--json"]).stdout).expect("status JSON");
    assert_eq!(status["enforcing"], true, "{status}");
    assert!(
        status["protected_cgroups"]
            .as_array()
            .expect("cgroups")
            .iter()
            .any(|c| c["id"] == cgroup.id),
        "{status}"
    );
    // One link per hook: the restart replaced, not duplicated, the attachments.
    let links = std::fs::read_dir(agent.pin_dir.join("links"))
        .expect("links")
        .count();
    assert_eq!(
        links,
        status["programs"].as_array().expect("programs").len(),
        "{status}"
    );
    assert_eq!(status["event_drops"], 0, "{status}");
}

#[test]
fn denials_continue_through_agent_kill_and_restart_and_every_one_is_audited() {
    if !bpf_lsm_or_skip("denials_continue_through_agent_kill_and_restart_and_every_one_is_audited")
    {
        return;
    }
    let sockets = TestSockets::new();
    let socket_arg = sockets.stream.display().to_string();
    let mut agent = TestAgent::start(&["--protect-socket", &socket_arg]);
    let cgroup = TestCgroup::new("eci-prot");
    agent.protect(&cgroup);
    let dir = sockets.dir.path();
    let results = dir.join("results");
    let stop = dir.join("stop");
    // A container that keeps trying until told to stop.
    let script = format!(
        "while [ ! -e {stop} ]; do {client} stream {sock} >/dev/null 2>&1; echo $? >> {results}; done",
        stop = stop.display(),
        client = client().display(),
        sock = sockets.stream.display(),
        results = results.display()
    );
    let mut looping = cgroup
        .command("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("loop");
    let count = || {
        std::fs::read_to_string(&results)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop stalled at {}",
                count()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for(3);
    agent.kill_hard();
    let during = count();
    wait_for(during + 3);
    agent.spawn(&["--protect-socket", &socket_arg]);
    let after_restart = count();
    wait_for(after_restart + 3);
    std::fs::write(&stop, "").expect("stop");
    let _ = looping.wait();
    let outcomes = std::fs::read_to_string(&results).expect("results");
    let attempts = outcomes.lines().count();
    assert!(
        outcomes.lines().all(|l| l == "13"),
        "an attempt was not denied: {outcomes}"
    );
    // Every denial reaches the audit log, the ones made while no agent ran too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // A line of its own, or counted in a summary (the audit rate limit).
        let audited: usize = agent
            .audit_lines()
            .iter()
            .filter(|l| l["cgroup_id"] == cgroup.id)
            .map(|l| {
                if l["event"] == "audit_not_logged" {
                    l["not_logged"]["unix_stream_connect"].as_u64().unwrap_or(0) as usize
                } else {
                    usize::from(l["hook"] == "unix_stream_connect")
                }
            })
            .sum();
        let status: serde_json::Value =
            serde_json::from_slice(&agent.cli(&["status", "--json"]).stdout).expect("status JSON");
        let dropped = status["event_drops"].as_u64().unwrap_or(0) as usize;
        if audited + dropped >= attempts {
            assert_eq!(dropped, 0, "the ring buffer dropped events in a short test");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{attempts} denials, {audited} audited, {dropped} dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `depth` nested cgroups named `d` below `top`, removed deepest first.
struct Chain(Vec<PathBuf>);

impl Chain {
    fn new(top: &std::path::Path, depth: usize) -> Self {
        let mut dirs = Vec::with_capacity(depth);
        let mut dir = top.to_path_buf();
        for _ in 0..depth {
            dir = dir.join("d");
            std::fs::create_dir(&dir).expect("create nested cgroup");
            dirs.push(dir.clone());
        }
        Self(dirs)
    }

    /// The deepest cgroup (its drop removes it; the chain the rest).
    fn deepest(&self) -> TestCgroup {
        let dir = self.0.last().expect("a chain").clone();
        let mount = cgroup2_mount();
        let rel = format!(
            "/{}",
            dir.strip_prefix(&mount).expect("below cgroup2").display()
        );
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).expect("stat"));
        TestCgroup::at(dir, rel, id)
    }

    /// Its levels below the cgroup2 root.
    fn depth(&self) -> usize {
        let mount = cgroup2_mount();
        self.0
            .last()
            .and_then(|d| d.strip_prefix(&mount).ok())
            .map_or(0, |rel| rel.components().count())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `eci-agent status --json`.
fn status(agent: &TestAgent) -> serde_json::Value {
    serde_json::from_slice(&agent.cli(&["status", "--json"]).stdout).expect("status JSON")
}

/// The protection mode eci must choose here: LSM programs may call
/// `bpf_get_current_ancestor_cgroup_id` from Linux 5.14.
fn expected_mode() -> &'static str {
    if kernel_version() >= (5, 14) {
        "ancestor_walk"
    } else {
        "registry"
    }
}

/// Where the ancestor walk must cache verdicts here: cgroup local storage
/// from Linux 6.2, the LRU hash before; none in registry mode.
fn expected_verdict_cache() -> serde_json::Value {
    match kernel_version() {
        v if v >= (6, 2) => "cgroup_storage".into(),
        v if v >= (5, 14) => "lru_hash".into(),
        _ => serde_json::Value::Null,
    }
}

/// Every rule and its state, per kernel of the matrix: Debian 11's 5.10
/// has every hook eci attaches (only the ancestor walk's helper is
/// missing, which the registry replaces), and so have 6.1, 6.12 and 7.2.
fn expected_rules() -> Vec<(&'static str, &'static str)> {
    let all_enforced = vec![
        ("protected_descendants", "enforced"),
        ("sockets", "enforced"),
        ("namespace_files", "enforced"),
        ("exec_sharing_vm_namespaces", "enforced"),
        ("mounts", "enforced"),
        ("move_mount", "enforced"),
        ("devices", "enforced"),
        ("cgroup_writes", "enforced"),
        ("setid_files", "enforced"),
    ];
    match kernel_version() {
        (5, 10) => all_enforced,
        (6, _) | (7, _) => all_enforced,
        other => panic!("no expected rule list for kernel {other:?}: add one"),
    }
}

fn rules_of(status: &serde_json::Value) -> Vec<(String, String)> {
    status["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_protection_mode_is_chosen_by_the_kernel_and_every_rule_is_listed() {
    if !bpf_lsm_or_skip("the_protection_mode_is_chosen_by_the_kernel_and_every_rule_is_listed") {
        return;
    }
    let sockets = TestSockets::new();
    let parent_name = unique("eci-parent");
    let parent = Dir(cgroup2_mount().join(&parent_name));
    std::fs::create_dir(&parent.0).expect("parent cgroup");
    let agent = TestAgent::start(&[
        "--protect-socket",
        &sockets.stream.display().to_string(),
        "--protected-parent",
        &format!("/{parent_name}"),
    ]);
    let status = status(&agent);
    assert_eq!(status["protection_mode"], expected_mode(), "{status}");
    assert_eq!(
        status["verdict_cache"],
        expected_verdict_cache(),
        "{status}"
    );
    let wanted: Vec<(String, String)> = expected_rules()
        .into_iter()
        .map(|(r, s)| (r.to_owned(), s.to_owned()))
        .collect();
    assert_eq!(rules_of(&status), wanted, "{status}");
    assert_eq!(status["degraded"], false, "{status}");
    assert_eq!(status["enforcing"], true, "{status}");
    let said = if expected_mode() == "registry" {
        "protection: registry of descendants (cgroup_mkdir)"
    } else {
        "protection: ancestor walk"
    };
    assert!(agent.stderr().contains(said), "{}", agent.stderr());
    // Whichever the mode, a container made now is protected.
    let (_dir, child) = nested(&parent.0, "ctr");
    let (result, _, text) = attempt(&client(), &child, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Denied, "{text}");
}

#[test]
fn the_registry_protects_descendants_made_before_and_after_at_any_depth() {
    if !bpf_lsm_or_skip("the_registry_protects_descendants_made_before_and_after_at_any_depth") {
        return;
    }
    let sockets = TestSockets::new();
    let parent_name = unique("eci-parent");
    let parent = Dir(cgroup2_mount().join(&parent_name));
    std::fs::create_dir(&parent.0).expect("parent cgroup");
    // Made before the agent: registered by its walk of cgroupfs.
    let (_before_dir, before) = nested(&parent.0, "before");
    let before_chain = Chain::new(&before.dir, 66);
    let agent = TestAgent::start(&[
        "--protect-socket",
        &sockets.stream.display().to_string(),
        "--protected-parent",
        &format!("/{parent_name}"),
        "--protection-mode",
        "registry",
    ]);
    let status_now = status(&agent);
    assert_eq!(status_now["protection_mode"], "registry", "{status_now}");
    assert_eq!(status_now["degraded"], false, "{status_now}");
    assert!(
        agent
            .stderr()
            .contains("protection: registry of descendants (cgroup_mkdir)"),
        "{}",
        agent.stderr()
    );
    // Made after: registered by the cgroup_mkdir tracepoint as they are made.
    let (_after_dir, after) = nested(&parent.0, "after");
    let after_chain = Chain::new(&after.dir, 66);
    assert!(after_chain.depth() > 64, "{}", after_chain.depth());
    let deep_before = before_chain.deepest();
    let deep_after = after_chain.deepest();
    for cgroup in [&before, &deep_before, &after, &deep_after] {
        let (result, _, text) = attempt(&client(), cgroup, "stream", &sockets.stream);
        assert_eq!(
            result,
            Attempt::Denied,
            "{} is below a protected parent: {text}",
            cgroup.path
        );
    }
    // Outside the parent, as deep: the registry knows it is not protected
    // (no walk that stops at 64 levels).
    let outside = TestCgroup::new("eci-free");
    let outside_chain = Chain::new(&outside.dir, 66);
    let deep_outside = outside_chain.deepest();
    let (result, _, text) = attempt(&client(), &deep_outside, "stream", &sockets.stream);
    assert_eq!(result, Attempt::Allowed, "{text}");
    let registered = status(&agent)["registered_descendants"]
        .as_u64()
        .unwrap_or(0);
    assert!(registered >= 2 + 2 * 66, "{registered} registered");
    // Removed cgroups leave the registry (cgroup_rmdir).
    drop((deep_after, deep_before, deep_outside));
    drop(after_chain);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = status(&agent)["registered_descendants"]
            .as_u64()
            .unwrap_or(0);
        if now <= registered - 66 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} still registered, {registered} before the rmdirs"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(agent);
    drop(outside_chain);
    drop(before_chain);
}

/// True where BPF-LSM is usable and the kernel has the ancestor walk (the
/// verdict caches exist only there); otherwise prints why `test` skips.
fn ancestor_walk_or_skip(test: &str, without_it: &str) -> bool {
    if !bpf_lsm_or_skip(test) {
        return false;
    }
    if expected_mode() == "registry" {
        println!("SKIP: {test}: no ancestor walk before Linux 5.14, so {without_it}");
        return false;
    }
    true
}

/// A task's verdict is cached per cgroup and policy generation; wherever it
/// is kept (the cgroup's local storage where the kernel has it, the LRU
/// hash on every kernel), a cgroup protected after its tasks were judged
/// unprotected is refused at once, and allowed again once unprotected.
#[test]
fn a_cached_verdict_follows_protect_and_unprotect_in_either_verdict_cache() {
    if !ancestor_walk_or_skip(
        "a_cached_verdict_follows_protect_and_unprotect_in_either_verdict_cache",
        "no verdict cache",
    ) {
        return;
    }
    let sockets = TestSockets::new();
    let mut caches = vec![("lru-hash", serde_json::Value::from("lru_hash"))];
    if expected_verdict_cache() == "cgroup_storage" {
        caches.push(("cgroup-storage", "cgroup_storage".into()));
    }
    for (choice, said) in caches {
        let agent = TestAgent::start(&[
            "--protect-socket",
            &sockets.stream.display().to_string(),
            "--verdict-cache",
            choice,
        ]);
        let status = status(&agent);
        assert_eq!(status["verdict_cache"], said, "{status}");
        let cgroup = TestCgroup::new("eci-cached");
        let connect = || attempt(&client(), &cgroup, "stream", &sockets.stream);
        // Judged (and cached) unprotected, twice.
        for _ in 0..2 {
            let (result, _, text) = connect();
            assert_eq!(result, Attempt::Allowed, "{choice}: {text}");
        }
        agent.protect(&cgroup);
        for _ in 0..2 {
            let (result, _, text) = connect();
            assert_eq!(result, Attempt::Denied, "{choice}: protected now: {text}");
        }
        let out = agent.cli(&["unprotect", "--cgroup", &cgroup.path]);
        assert!(out.status.success(), "{choice}: unprotect: {out:?}");
        let (result, _, text) = connect();
        assert_eq!(
            result,
            Attempt::Allowed,
            "{choice}: unprotected again: {text}"
        );
    }
}

/// `--verdict-cache cgroup-storage` where the kernel has none (before Linux
/// 6.2) stops with the rule and the fix; where it has, the probe says so.
#[test]
fn asking_for_the_cgroup_storage_verdict_cache_names_the_kernel_it_needs() {
    if !ancestor_walk_or_skip(
        "asking_for_the_cgroup_storage_verdict_cache_names_the_kernel_it_needs",
        "the probe chooses the registry",
    ) {
        return;
    }
    let pin_dir = format!("/sys/fs/bpf/{}", unique("eci-probe-store"));
    let out = std::process::Command::new(eci_integration_tests::agent_bin())
        .args([
            "probe",
            "--pin-dir",
            &pin_dir,
            "--verdict-cache",
            "cgroup-storage",
        ])
        .output()
        .expect("run eci-agent probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if kernel_version() >= (6, 2) {
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.contains("verdicts in cgroup local storage"),
            "{stdout}"
        );
    } else {
        assert!(!out.status.success(), "{stdout}{stderr}");
        assert!(
            stderr.contains("Linux 6.2+") && stderr.contains("use auto or lru-hash"),
            "{stderr}"
        );
        assert!(
            !std::path::Path::new(&pin_dir).exists(),
            "a refused probe leaves nothing pinned"
        );
    }
    let _ = std::process::Command::new(eci_integration_tests::agent_bin())
        .args(["unload", "--pin-dir", &pin_dir])
        .output();
}
