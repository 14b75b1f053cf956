//! The Kubernetes path for real: containerd's CRI plugin, driven over its
//! socket as kubelet drives it, runs pods with the runtime handler `eci`
//! from `deploy/kubernetes/containerd-runtime.toml` (as it is) through
//! eci-runc, registered with a real agent.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use eci_control::{Request, Response};
use eci_integration_tests::{
    TestAgent, bpf_lsm_or_skip,
    cri::{Cri, EciRuncEnv, PrivateContainerd, container_config, pod_config},
    tmp_dir, unique,
};

const TEST: &str = "cri::pods_with_the_eci_handler_get_disjoint_ranges_and_leave_nothing_behind";
const RANGE_SIZE: u64 = 65536;

/// Whether the CRI path can run here: root and containerd. In the test VM
/// a missing piece is a failure, elsewhere the test says why it skips.
fn cri_or_skip(test: &str) -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root (it starts containerd and runc)".to_owned())
    } else {
        [
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "runc",
            "unshare",
        ]
        .iter()
        .find(|p| which(p).is_none())
        .map(|p| format!("{p} is not installed here"))
    };
    let Some(why) = why else { return true };
    assert!(
        std::env::var("ECI_IN_VM").is_err(),
        "{test}: {why} (in the VM; `cargo xtask setup` installs containerd and runc)"
    );
    println!("SKIP: {test}: {why}");
    false
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// One running pod: its sandbox and its one container, and what that
/// container reported (its uid_map and its connect to the engine socket).
struct Pod {
    name: String,
    sandbox: String,
    container: String,
    /// (base, length) of the container's uid_map.
    range: (u64, u64),
    /// eci-test-client's exit code for a connect to containerd's socket.
    connect: i32,
}

/// What the pods' container runs: it reports its uid_map and a connect to
/// containerd's socket (a hard link in /share) on its output, which the
/// CRI plugin writes to the container's log, then sleeps. Read from the
/// log rather than with ExecSync: see `exec_into_an_eci_pod`.
const REPORT: &str = "echo uid_map: $(cat /proc/self/uid_map); \
    echo port_start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); \
    eci-test-client stream /share/containerd.sock; echo connect=$?; \
    exec sleep 3600";

/// eci-runc's allocations (ranges.json): (container id, base, cgroup).
fn allocations(state_dir: &Path) -> Vec<(String, u64, Option<String>)> {
    let path = state_dir.join("ranges.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    let state: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    state["allocations"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no allocations list: {text}", path.display()))
        .iter()
        .map(|a| {
            (
                a["container_id"].as_str().unwrap_or_default().to_owned(),
                a["base"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{}: allocation without base: {a}", path.display())),
                a["cgroup"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// `0 <base> <length>`, the one line of a container's uid_map.
fn parse_uid_map(text: &str) -> (u64, u64, u64) {
    let lines: Vec<Vec<u64>> = text
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|n| {
                    n.parse()
                        .unwrap_or_else(|e| panic!("uid_map {text:?}: {e}"))
                })
                .collect()
        })
        .collect();
    match lines.as_slice() {
        [line] if line.len() == 3 => (line[0], line[1], line[2]),
        _ => panic!("uid_map is not one mapping: {text:?}"),
    }
}

/// The container's report in its CRI log (`<time> stdout F <line>`),
/// polled until complete: (uid_map base and length, connect exit code).
fn read_report(log: &Path, pod: &str) -> ((u64, u64), i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect();
        let map = lines.iter().find_map(|l| l.strip_prefix("uid_map: "));
        let connect = lines
            .iter()
            .find_map(|l| l.strip_prefix("connect="))
            .map(|c| {
                c.trim()
                    .parse::<i32>()
                    .unwrap_or_else(|e| panic!("{pod}: connect={c}: {e}"))
            });
        if let (Some(map), Some(connect)) = (map, connect) {
            // The sandbox's sysctl (containerd 2's default, asked here on
            // 1.6 too), written in the pod's network namespace.
            let port_start = lines.iter().find_map(|l| l.strip_prefix("port_start="));
            assert_eq!(
                port_start,
                Some("0"),
                "{pod}: net.ipv4.ip_unprivileged_port_start in the pod:\n{text}"
            );
            let (inside, base, length) = parse_uid_map(map);
            assert_eq!(inside, 0, "{pod}: uid_map {map:?}");
            return ((base, length), connect);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pod}: no complete report in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn disjoint(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0
}

/// Dropped in field order: the client, containerd (its guard kills the
/// pods and ends its mount namespace), the agent, then the directory.
struct Setup {
    cri: Cri,
    containerd: PrivateContainerd,
    agent: TestAgent,
    eci: EciRuncEnv,
    dir: PathBuf,
    share: PathBuf,
    top: String,
    _dir_guard: RemoveDir,
}

impl Setup {
    fn start_pod(&self, name: &str, handler: &str, parent: &str) -> Pod {
        let uid = unique("uid");
        let config = pod_config(
            name,
            &uid,
            &format!("{}/{parent}", self.top),
            &self.dir.join("logs"),
        );
        let sandbox = self.cri.run_pod(&config, handler).unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox {name} (handler {handler}): {e}\ncontainerd: {}\nagent: {}",
                self.containerd.log_errors(),
                self.agent.stderr()
            )
        });
        let log = self.dir.join("logs").join(name).join("sleeper.log");
        let container = self
            .cri
            .start_container(
                &sandbox,
                &container_config(
                    "sleeper",
                    &["/bin/sh", "-c", REPORT],
                    &[("/share", &self.share)],
                ),
                &config,
            )
            .unwrap_or_else(|e| {
                panic!(
                    "CreateContainer/StartContainer in {name} (handler {handler}): {e}\ncontainerd: {}",
                    self.containerd.log_errors()
                )
            });
        let (range, connect) = read_report(&log, name);
        Pod {
            name: name.to_owned(),
            sandbox,
            container,
            range,
            connect,
        }
    }

    fn remove(&self, pod: &Pod) {
        self.cri.remove_pod(&pod.sandbox).unwrap_or_else(|e| {
            panic!(
                "StopPodSandbox/RemovePodSandbox {}: {e}\ncontainerd: {}",
                pod.name,
                self.containerd.log_errors()
            )
        });
    }

    /// Nothing of eci's is left: no allocation, no registration the agent
    /// still holds (`registered`: the cgroups the pods had), no mount below
    /// the test's directory, no views, no per-container directory.
    fn assert_nothing_left(&self, registered: &[String]) {
        let left = allocations(&self.eci.state_dir);
        assert!(left.is_empty(), "ranges still allocated: {left:?}");
        for cgroup in registered {
            let answer = self.agent.client().call(&Request::Unprotect {
                cgroup: cgroup.clone(),
            });
            assert!(
                matches!(answer, Ok(Response::Error { .. })),
                "the agent still held the registration of {cgroup} (unprotect answered {answer:?})"
            );
        }
        let mounts = self.containerd.mounts_below(&self.dir);
        assert!(mounts.is_empty(), "mounts left behind: {mounts:#?}");
        for dir in [&self.eci.views_dir, &self.eci.run_dir] {
            let entries: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(entries.is_empty(), "left in {}: {entries:?}", dir.display());
        }
    }
}

fn setup(lsm: bool) -> Option<Setup> {
    let dir = tempfile::Builder::new()
        .prefix("eci-cri")
        .tempdir_in(tmp_dir())
        .expect("tempdir")
        .keep();
    let socket = dir.join("containerd.sock");
    let mut args = vec!["--protect-socket".to_owned(), socket.display().to_string()];
    if !lsm {
        args.push("--unenforced-for-testing".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = TestAgent::start(&args);
    // Pods may bind this directory (the policy's shareable host path):
    // the way the engine socket is smuggled in, as a hard link (same inode,
    // the agent's rule holds) that eci-runc has no reason to refuse.
    let share = dir.join("share");
    std::fs::create_dir_all(&share).expect("share dir");
    let policy = serde_json::json!({ "eci": { "shareableHostPaths": [share] } });
    std::fs::write(
        agent.dir.path().join("admin-settings.json"),
        policy.to_string(),
    )
    .expect("policy");
    agent
        .client()
        .call_ok(&Request::Reload)
        .expect("reload the agent's policy");
    let eci = EciRuncEnv {
        agent_socket: agent.control_socket.clone(),
        state_dir: dir.join("eci-state"),
        run_dir: dir.join("eci-run"),
        views_dir: dir.join("eci-views"),
    };
    let top = format!("/{}", unique("eci-cri"));
    let containerd = match PrivateContainerd::start(&dir, &eci, &[&top]) {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var("ECI_IN_VM").is_err(),
                "{TEST}: containerd's CRI path is unavailable in the VM: {}",
                why.0
            );
            println!("SKIP: {TEST}: {}", why.0);
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
    };
    println!("{TEST}: containerd {}", containerd.version.2);
    let cri = Cri::connect(&containerd.socket).expect("CRI client");
    containerd.import_image();
    let link = share.join("containerd.sock");
    std::fs::hard_link(&containerd.socket, &link).expect("hard link the socket");
    // World-writable: no file permission answers before the kernel rule.
    std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    if lsm {
        wait_protected(&agent, &containerd.socket);
    }
    Some(Setup {
        cri,
        containerd,
        agent,
        eci,
        _dir_guard: RemoveDir(dir.clone()),
        dir,
        share,
        top,
    })
}

#[test]
fn pods_with_the_eci_handler_get_disjoint_ranges_and_leave_nothing_behind() {
    if !cri_or_skip(TEST) {
        return;
    }
    let lsm = bpf_lsm_or_skip(&format!("{TEST} (the engine-socket part)"));
    let Some(s) = setup(lsm) else { return };

    // Two pods with the eci handler: each container in a range of its own.
    let a = s.start_pod("pod-a", "eci", "pod-a");
    let b = s.start_pod("pod-b", "eci", "pod-b");
    for pod in [&a, &b] {
        println!(
            "{TEST}: {}: uid_map 0 {} {}",
            pod.name, pod.range.0, pod.range.1
        );
        assert_ne!(
            pod.range.0, 0,
            "{}: the container's root is the VM's root",
            pod.name
        );
        assert_eq!(pod.range.1, RANGE_SIZE, "{}: range length", pod.name);
    }
    // eci-runc's records: every container of both pods (sandboxes
    // included) holds a range and a registered cgroup; all are disjoint,
    // and the one each sleeper reported is its own.
    let records = allocations(&s.eci.state_dir);
    for pod in [&a, &b] {
        for id in [&pod.sandbox, &pod.container] {
            assert!(
                records.iter().any(|r| &r.0 == id && r.2.is_some()),
                "{}: no registered allocation for {id}: {records:?}",
                pod.name
            );
        }
        assert!(
            records
                .iter()
                .any(|r| r.0 == pod.container && r.1 == pod.range.0),
            "{}: its uid_map base {} is not its allocation: {records:?}",
            pod.name,
            pod.range.0
        );
    }
    assert_eq!(records.len(), 4, "{records:?}");
    for (i, x) in records.iter().enumerate() {
        for y in &records[i + 1..] {
            assert!(
                disjoint((x.1, RANGE_SIZE), (y.1, RANGE_SIZE)),
                "overlapping ranges: {x:?} {y:?}"
            );
        }
    }
    let used_bases: Vec<u64> = records.iter().map(|r| r.1).collect();
    let registered: Vec<String> = records.iter().filter_map(|r| r.2.clone()).collect();
    exec_into_an_eci_pod(&s, &a);

    // containerd's socket, reached from a pod (a hard link in /share):
    // connected from a plain runc pod (the runtime handler `runc`, outside
    // every protected parent), so a refusal is not vacuous; refused by the
    // kernel for the eci pods where the agent enforces.
    let baseline = s.start_pod("pod-runc", "runc", "baseline");
    assert_eq!(
        baseline.connect, 0,
        "plain runc pod (unprotected) could not connect to containerd's socket"
    );
    s.remove(&baseline);
    if lsm {
        for pod in [&a, &b] {
            assert_eq!(
                pod.connect, 13,
                "{}: the connect to containerd's socket was not refused (EACCES/EPERM)",
                pod.name
            );
        }
        println!(
            "{TEST}: engine socket: eci pods refused (EACCES/EPERM), plain runc pod connected"
        );
    } else {
        println!(
            "{TEST}: engine socket: plain runc pod connected; eci pods (nothing enforced here): connect exit {} and {}",
            a.connect, b.connect
        );
    }

    // Pods ended as kubelet ends them: nothing of eci's is left.
    s.remove(&a);
    s.remove(&b);
    s.assert_nothing_left(&registered);

    // The ranges are free again: a third pod reuses them.
    let c = s.start_pod("pod-c", "eci", "pod-c");
    println!(
        "{TEST}: pod-c: uid_map 0 {} {} (freed: {used_bases:?})",
        c.range.0, c.range.1
    );
    let records = allocations(&s.eci.state_dir);
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert!(
            used_bases.contains(&r.1),
            "pod-c: {} got {}, not one of the freed ranges {used_bases:?}",
            r.0,
            r.1
        );
    }
    let registered: Vec<String> = records.into_iter().filter_map(|r| r.2).collect();
    s.remove(&c);
    s.assert_nothing_left(&registered);
}

/// ExecSync into an eci pod's container (kubelet's exec probes, `kubectl
/// exec`). runc joins a container's user namespace before its others, so
/// where it joins no namespace its user namespace does not own it works;
/// a pod's network namespace is made by containerd for CNI (owned by the
/// VM's user namespace) and the sleeper also joins the sandbox's IPC and
/// UTS namespaces. What happens is reported; when it works, it must show
/// the container's own range.
fn exec_into_an_eci_pod(s: &Setup, pod: &Pod) {
    match s.cri.exec(&pod.container, &["cat", "/proc/self/uid_map"]) {
        Ok((0, out, _)) => {
            let (_, base, length) = parse_uid_map(&out);
            assert_eq!((base, length), pod.range, "{}: ExecSync uid_map", pod.name);
            println!(
                "{TEST}: ExecSync into {}: works, uid_map {}",
                pod.name,
                out.trim()
            );
        }
        Ok((code, out, err)) => panic!(
            "{}: ExecSync cat uid_map exited {code}: {out}{err}",
            pod.name
        ),
        Err(e) => println!(
            "{TEST}: NOTE: ExecSync into an eci pod fails here (runc {}): {}",
            runc_version(),
            e.message()
        ),
    }
}

fn runc_version() -> String {
    std::process::Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

/// The agent protects a socket within a second of its appearing: wait
/// until its status lists this one.
fn wait_protected(agent: &TestAgent, socket: &Path) {
    let wanted = socket.display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = agent.cli(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let listed = status["protected_sockets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|p| p["path"] == wanted.as_str()));
        if listed {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not protect {wanted}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Removes the test's directory last (after containerd's guard ran).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
