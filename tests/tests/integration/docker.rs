//! eci-runc with a real Docker Engine, the same tests on both: on the
//! host the machine's engine (started by `cargo xtask docker-up`) with the
//! agent in its test-only unenforced mode (registration is exercised for
//! real, kernel enforcement is proven in the VM); in the test VM a private
//! engine with the real agent enforcing (see `engine::shared_engine`).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use eci_integration_tests::engine::{
    BUSYBOX_IMAGE as IMAGE, Engine, docker_cli, shared_engine, text,
};

struct Fixture {
    engine: &'static Engine,
    /// An image of this test process the policy trusts with the Docker
    /// socket (pinned by its id: it was built here, not pulled).
    trusted_image: String,
    /// An image built from the trusted one (`allowDerivedImages` is on).
    derived_image: String,
}

/// A name that points at the test image too, listed in the policy by name
/// only: a re-tag, which must not make the image trusted.
const RETAGGED_IMAGE: &str = "eci-test-retagged:latest";

impl Fixture {
    fn docker(&self, args: &[&str]) -> Output {
        self.engine.docker(args)
    }

    /// eci-runc's runtime on this engine.
    fn runtime(&self) -> &str {
        self.engine.runtime()
    }

    /// The engine's directory: bundles and other files of the tests.
    fn dir(&self) -> &Path {
        self.engine.dir.path()
    }

    /// The policy's shareable directory (a file `hello` and a docker CLI).
    fn shared(&self) -> PathBuf {
        self.engine.share()
    }

    /// `<engine socket>:/var/run/docker.sock`
    fn socket_bind(&self) -> String {
        format!("{}:/var/run/docker.sock", self.engine.socket().display())
    }

    fn new(engine: &'static Engine) -> Self {
        assert!(
            engine.docker(&["image", "inspect", IMAGE]).status.success(),
            "{IMAGE} is missing: `cargo xtask docker-up`"
        );
        std::fs::write(engine.share().join("hello"), "hello from the VM\n").expect("shared file");
        let (trusted_image, trusted_id) = commit_image(engine, IMAGE, "eci-test-trusted");
        let (derived_image, _) = commit_image(engine, &trusted_image, "eci-test-derived");
        assert!(
            engine
                .docker(&["tag", IMAGE, RETAGGED_IMAGE])
                .status
                .success(),
            "docker tag"
        );
        // The docker CLI, for containers given the socket.
        std::fs::copy(docker_cli(), engine.share().join("docker"))
            .expect("a docker CLI to copy into the shared directory");
        let mut policy = serde_json::json!({
            "enhancedContainerIsolation": { "dockerSocketMount": {
                "imageList": { "images": [format!("eci-test-trusted@{trusted_id}"), RETAGGED_IMAGE],
                               "allowDerivedImages": true },
                "commandList": { "type": "deny", "commands": ["push", "rm", "build"] } } },
            "eci": { "dockerRuntimeName": engine.runtime(),
                     "shareableHostPaths": [rbind_shareable(engine)] }
        });
        if !engine.is_machine() {
            // The private engine's API socket is not one of the defaults.
            policy["eci"]["dockerApiSockets"] = serde_json::json!([engine.socket()]);
        }
        std::fs::create_dir_all(rbind_shareable(engine)).expect("shareable dir");
        engine.write_policy(policy);
        Self {
            engine,
            trusted_image,
            derived_image,
        }
    }
}

/// A second shareable directory, for the test that mounts VM paths below
/// one (tests run in parallel: the first one stays free of them).
fn rbind_shareable(engine: &Engine) -> PathBuf {
    engine.dir.path().join("shared-rbind")
}

/// The engine (see `engine::shared_engine`) with the images and the policy
/// of these tests, once per test process; `None` (with a printed reason)
/// when there is no engine here.
fn fixture(test: &str) -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let engine = shared_engine(test)?;
    Some(FIXTURE.get_or_init(|| Fixture::new(engine)))
}

/// Commit a container of `from` with one file added (never started: no
/// runtime runs) as
/// `<repository>:<this process>`, after dropping the tags of processes that
/// are gone; returns the name and the image id.
fn commit_image(engine: &Engine, from: &str, repository: &str) -> (String, String) {
    let docker = |args: &[&str]| engine.docker(args);
    let tags = text(&docker(&["images", repository, "--format", "{{.Tag}}"]));
    for tag in tags.lines().filter(|t| !alive(t)) {
        let _ = docker(&["rmi", &format!("{repository}:{tag}")]);
    }
    let name = format!("{repository}:{}", std::process::id());
    let created = docker(&["create", from, "true"]);
    assert!(created.status.success(), "{}", text(&created));
    let container = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    // A layer of its own (a marker file), as a real build adds.
    let marker = std::env::temp_dir().join(format!("{repository}-{}", std::process::id()));
    std::fs::write(&marker, repository).expect("marker file");
    let copied = docker(&[
        "cp",
        &marker.display().to_string(),
        &format!("{container}:/{repository}"),
    ]);
    let _ = std::fs::remove_file(&marker);
    assert!(copied.status.success(), "{}", text(&copied));
    let label = format!("LABEL eci.test={repository}");
    let committed = docker(&["commit", "-c", &label, &container, &name]);
    let _ = docker(&["rm", &container]);
    assert!(committed.status.success(), "{}", text(&committed));
    let id = text(&docker(&["image", "inspect", "--format", "{{.Id}}", &name]))
        .trim()
        .to_owned();
    assert!(id.starts_with("sha256:"), "image id of {name}: {id}");
    (name, id)
}

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

fn uid_map_base(map: &str) -> u64 {
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "uid_map: {map:?}");
    assert_eq!(fields[0], "0");
    assert_eq!(fields[2], "65536");
    fields[1].parse().expect("base")
}

fn allocations(f: &Fixture) -> Vec<serde_json::Value> {
    std::fs::read_to_string(f.engine.state_dir().join("ranges.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["allocations"].as_array().cloned())
        .unwrap_or_default()
}

/// Allocations of containers Docker no longer has: leaks. (Tests run in
/// parallel, so counting allocations before and after would race; Docker
/// records a container before the runtime creates it and forgets it only
/// after the runtime deleted it.)
fn leaked_allocations(f: &Fixture) -> Vec<String> {
    let allocated: Vec<String> = allocations(f)
        .iter()
        .filter_map(|a| a["container_id"].as_str().map(String::from))
        .collect();
    let known =
        String::from_utf8_lossy(&f.docker(&["ps", "-aq", "--no-trunc"]).stdout).into_owned();
    allocated
        .into_iter()
        .filter(|id| !known.lines().any(|k| k == id))
        .collect()
}

/// Anything of container `id` (a prefix) left in the state, the private
/// directories or the /proc views.
fn leftovers(f: &Fixture, id: &str) -> bool {
    let in_dir = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(id))
            })
            .unwrap_or(false)
    };
    allocations(f).iter().any(|a| {
        a["container_id"]
            .as_str()
            .is_some_and(|c| c.starts_with(id))
    }) || in_dir(f.engine.run_dir())
        || in_dir(f.engine.views_dir())
}

#[test]
fn each_container_gets_its_own_user_namespace_and_shows_runtime_eci() {
    let Some(f) = fixture("each_container_gets_its_own_user_namespace_and_shows_runtime_eci")
    else {
        return;
    };
    let out = f.docker(&[
        "run",
        "--rm",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "cat",
        "/proc/self/uid_map",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(uid_map_base(&String::from_utf8_lossy(&out.stdout)) >= 100_000);
    let out = f.docker(&[
        "run",
        "--rm",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "cat",
        "/proc/self/gid_map",
    ]);
    assert!(uid_map_base(&String::from_utf8_lossy(&out.stdout)) >= 100_000);
    let id = String::from_utf8_lossy(
        &f.docker(&[
            "create",
            &format!("--runtime={}", f.runtime()),
            IMAGE,
            "true",
        ])
        .stdout,
    )
    .trim()
    .to_owned();
    let shown = f.docker(&["inspect", "--format", "{{.HostConfig.Runtime}}", &id]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), f.runtime());
    f.docker(&["rm", "-f", &id]);
}

#[test]
fn concurrent_containers_get_disjoint_ranges_and_delete_frees_them() {
    let Some(f) = fixture("concurrent_containers_get_disjoint_ranges_and_delete_frees_them") else {
        return;
    };
    let mut ids = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..3 {
        let out = f.docker(&[
            "run",
            "-d",
            &format!("--runtime={}", f.runtime()),
            IMAGE,
            "sleep",
            "300",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let map = f.docker(&["exec", &id, "cat", "/proc/self/uid_map"]);
        bases.push(uid_map_base(&String::from_utf8_lossy(&map.stdout)));
        ids.push(id);
    }
    let mut unique = bases.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "ranges overlap: {bases:?}");
    for pair in unique.windows(2) {
        assert!(pair[1] - pair[0] >= 65536, "ranges overlap: {bases:?}");
    }
    for id in &ids {
        assert!(f.docker(&["rm", "-f", id]).status.success());
        assert!(!leftovers(f, &id[..12]), "{id} left state behind");
    }
}

#[test]
fn refusals_name_the_rule_and_the_fix_and_leave_nothing() {
    let Some(f) = fixture("refusals_name_the_rule_and_the_fix_and_leave_nothing") else {
        return;
    };
    let socket = f.socket_bind();
    let cases: [(&[&str], &str); 7] = [
        (&["--network=host"], "--network=host"),
        (&["--pid=host"], "--pid=host"),
        (&["--ipc=host"], "--ipc=host"),
        (&["--uts=host"], "--uts=host"),
        (&["-v", "/etc:/vm-etc"], "can't mount /etc"),
        (&["-v", "/var/lib/docker:/d"], "shareableHostPaths"),
        (&["-v", &socket], "docker socket mount denied"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["run", "--rm", "--runtime", f.runtime()];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, "true"]);
        let out = f.docker(&args);
        let message = text(&out);
        assert!(!out.status.success(), "{flags:?} was not refused");
        assert!(
            message.contains("enhanced container isolation"),
            "{flags:?}: {message}"
        );
        assert!(message.contains(expected), "{flags:?}: {message}");
    }
    assert_eq!(
        leaked_allocations(f),
        Vec::<String>::new(),
        "a refusal left an allocation"
    );
}

#[test]
fn a_policy_file_the_agent_refused_does_not_steer_eci_runc() {
    let Some(f) = fixture("a_policy_file_the_agent_refused_does_not_steer_eci_runc") else {
        return;
    };
    // The agent alone reads the file: a bad one, refused at reload, leaves
    // the last good policy in force for eci-runc too.
    let path = f.engine.policy_file();
    let good = std::fs::read_to_string(path).expect("policy");
    std::fs::write(path, r#"{"eci": {"shareableHostPaths": ["/etc"]}}"#).expect("bad policy");
    let reload =
        eci_control::Client::new(f.engine.agent_socket()).call_ok(&eci_control::Request::Reload);
    std::fs::write(path, good).expect("good policy back");
    let refused = reload
        .expect_err("the agent took a policy sharing /etc")
        .to_string();
    assert!(
        refused.contains("the last good one stays in force"),
        "{refused}"
    );
    assert!(refused.contains("eci.shareableHostPaths[0]"), "{refused}");
    let out = f.docker(&[
        "run",
        "--rm",
        "--runtime",
        f.runtime(),
        "-v",
        "/etc:/vm-etc",
        IMAGE,
        "true",
    ]);
    assert!(!out.status.success(), "-v /etc was not refused");
    assert!(text(&out).contains("can't mount /etc"), "{}", text(&out));
    assert_eq!(leaked_allocations(f), Vec::<String>::new());
}

#[test]
fn userns_host_is_ignored_and_the_container_still_gets_a_range() {
    let Some(f) = fixture("userns_host_is_ignored_and_the_container_still_gets_a_range") else {
        return;
    };
    let out = f.docker(&[
        "run",
        "--rm",
        "--userns=host",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "cat",
        "/proc/self/uid_map",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(uid_map_base(&String::from_utf8_lossy(&out.stdout)) >= 100_000);
}

#[test]
fn non_root_image_users_own_their_files_and_image_files_belong_to_root() {
    let Some(f) = fixture("non_root_image_users_own_their_files_and_image_files_belong_to_root")
    else {
        return;
    };
    let out = f.docker(&[
        "run",
        "--rm",
        "--user",
        "1000:1000",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "sh",
        "-c",
        "id -u; echo x > /home/user/f && stat -c %u:%g /home/user/f; echo y > /tmp/f && cat /tmp/f; stat -c %u /etc/passwd; echo no > /etc/passwd || echo refused",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n1000:1000\ny\n0\nrefused\n",
        "{}",
        text(&out)
    );
}

#[test]
fn the_container_root_owns_its_image_files_and_the_layer_has_the_containers_own_ids_on_disk() {
    let Some(f) = fixture(
        "the_container_root_owns_its_image_files_and_the_layer_has_the_containers_own_ids_on_disk",
    ) else {
        return;
    };
    let out = f.docker(&[
        "run",
        "-d",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "sh",
        "-c",
        "echo made > /etc/made && mkdir -p /newdir && chown 1000:1000 /home/user/. && touch /home/user/g && chown 1000:1000 /home/user/g && sleep 300",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let wait = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = f.docker(&[
            "exec",
            &id,
            "sh",
            "-c",
            "stat -c '%u %n' / /etc /etc/passwd /etc/made /newdir /home/user/g 2>&1",
        ]);
        let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
        if seen.contains("/home/user/g") || Instant::now() > wait {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        seen, "0 /\n0 /etc\n0 /etc/passwd\n0 /etc/made\n0 /newdir\n1000 /home/user/g\n",
        "inside, the image's files and the container's own belong to its root"
    );
    let base = uid_map_base(&String::from_utf8_lossy(
        &f.docker(&["exec", &id, "cat", "/proc/self/uid_map"]).stdout,
    ));
    let upper = String::from_utf8_lossy(
        &f.docker(&["inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", &id])
            .stdout,
    )
    .trim()
    .to_owned();
    let owner = |p: &str| {
        std::fs::symlink_metadata(Path::new(&upper).join(p))
            .map(|m| u64::from(m.uid()))
            .unwrap_or(u64::MAX)
    };
    // From 5.19 the upper layer is ID-mapped (nothing is shifted): on disk
    // it has the container's own ids while it runs, as with runc; before,
    // it is shifted into the range while the container runs.
    let running = if eci_integration_tests::kernel_version() >= (5, 19) {
        0
    } else {
        base
    };
    assert_eq!(
        owner("etc/made"),
        running,
        "running: the upper layer's ids on disk"
    );
    assert_eq!(owner("home/user/g"), running + 1000);
    assert!(f.docker(&["stop", "-t", "1", &id]).status.success());
    assert_eq!(
        owner("etc/made"),
        0,
        "stopped: the upper layer has the container's own ids"
    );
    assert_eq!(owner("home/user/g"), 1000);
    assert!(!leftovers(f, &id[..12]));
    // Started again (maybe with another range), the files are still its own.
    assert!(f.docker(&["start", &id]).status.success());
    let again = f.docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo more >> /etc/made && cat /etc/made && stat -c %u /home/user/g",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "made\nmore\n1000\n",
        "{}",
        text(&again)
    );
    assert!(f.docker(&["rm", "-f", &id]).status.success());
    assert!(!leftovers(f, &id[..12]));
    let overlays = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&upper))
        .count();
    assert_eq!(
        overlays, 0,
        "an overlay of the removed container is still mounted"
    );
}

#[test]
fn a_named_volume_written_by_one_container_is_usable_by_the_next_with_another_range() {
    let Some(f) =
        fixture("a_named_volume_written_by_one_container_is_usable_by_the_next_with_another_range")
    else {
        return;
    };
    let volume = format!("eci-test-vol-{}", std::process::id());
    let rt = format!("--runtime={}", f.runtime());
    let mount = format!("{volume}:/data");
    let holder =
        String::from_utf8_lossy(&f.docker(&["run", "-d", &rt, IMAGE, "sleep", "300"]).stdout)
            .trim()
            .to_owned();
    let writer = f.docker(&[
        "run",
        "--rm",
        &rt,
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "cat /proc/self/uid_map; echo one > /data/f; ls -ln /data/f",
    ]);
    assert!(writer.status.success(), "{}", text(&writer));
    let writer_base = uid_map_base(
        String::from_utf8_lossy(&writer.stdout)
            .lines()
            .next()
            .unwrap_or_default(),
    );
    // Keep the writer's (now free) range busy so the reader gets another.
    let holder2 =
        String::from_utf8_lossy(&f.docker(&["run", "-d", &rt, IMAGE, "sleep", "300"]).stdout)
            .trim()
            .to_owned();
    let reader = f.docker(&[
        "run",
        "--rm",
        &rt,
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "cat /proc/self/uid_map; cat /data/f; echo two >> /data/f; cat /data/f; stat -c %u /data/f",
    ]);
    assert!(reader.status.success(), "{}", text(&reader));
    let out = String::from_utf8_lossy(&reader.stdout).into_owned();
    let mut lines = out.lines();
    let reader_base = uid_map_base(lines.next().unwrap_or_default());
    assert_ne!(
        writer_base, reader_base,
        "the test needs two different ranges"
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        vec!["one", "one", "two", "0"],
        "{out}"
    );
    // On the VM side the file belongs to 0, not to either container's range.
    let data = String::from_utf8_lossy(
        &f.docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])
            .stdout,
    )
    .trim()
    .to_owned();
    assert_eq!(
        std::fs::metadata(Path::new(&data).join("f"))
            .expect("volume file")
            .uid(),
        0
    );
    f.docker(&["rm", "-f", &holder, &holder2]);
    f.docker(&["volume", "rm", &volume]);
}

#[test]
fn a_shareable_host_path_can_be_bind_mounted() {
    let Some(f) = fixture("a_shareable_host_path_can_be_bind_mounted") else {
        return;
    };
    let mount = format!("{}:/shared", f.shared().display());
    let out = f.docker(&[
        "run",
        "--rm",
        &format!("--runtime={}", f.runtime()),
        "-v",
        &mount,
        IMAGE,
        "cat",
        "/shared/hello",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the VM\n");
}

#[test]
fn sensitive_proc_and_sys_entries_are_masked_or_read_only() {
    let Some(f) = fixture("sensitive_proc_and_sys_entries_are_masked_or_read_only") else {
        return;
    };
    let script = "wc -c < /proc/kallsyms; ls /sys/firmware | wc -l; echo 1 > /proc/sys/kernel/sysrq && echo WROTE-SYSCTL; echo done";
    let out = f.docker(&[
        "run",
        "--rm",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().map(|l| l.trim()),
        Some("0"),
        "kallsyms not masked: {stdout}"
    );
    assert_eq!(
        lines.get(1).map(|l| l.trim()),
        Some("0"),
        "/sys/firmware not masked: {stdout}"
    );
    assert!(
        !stdout.contains("WROTE-SYSCTL"),
        "/proc/sys is writable: {stdout}"
    );
}

/// A `Name:   1234 kB` value of a meminfo text.
fn meminfo_kb(meminfo: &str, name: &str) -> u64 {
    eci_views::meminfo::kb_value(meminfo, name).unwrap_or_else(|| panic!("no {name} in {meminfo}"))
}

/// The first field of a `/proc/uptime` text.
fn uptime_seconds(uptime: &str) -> f64 {
    uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an uptime: {uptime:?}"))
}

#[test]
fn proc_meminfo_shows_the_containers_memory_limit_or_the_hosts_memory() {
    let Some(f) = fixture("proc_meminfo_shows_the_containers_memory_limit_or_the_hosts_memory")
    else {
        return;
    };
    let rt = format!("--runtime={}", f.runtime());
    // Read at once: rendered at registration, never an empty file.
    let limited = f.docker(&[
        "run",
        "--rm",
        &rt,
        "-m",
        "64m",
        IMAGE,
        "sh",
        "-c",
        "cat /proc/meminfo; echo; cat /proc/uptime",
    ]);
    assert!(limited.status.success(), "{}", text(&limited));
    let out = String::from_utf8_lossy(&limited.stdout).into_owned();
    let (meminfo, uptime) = out.split_once("\n\n").unwrap_or((&out, ""));
    assert_eq!(
        meminfo.lines().next(),
        Some("MemTotal:          65536 kB"),
        "{out}"
    );
    assert!(meminfo_kb(meminfo, "MemFree") <= 65536, "{meminfo}");
    assert!(meminfo_kb(meminfo, "MemAvailable") <= 65536, "{meminfo}");
    assert!(uptime_seconds(uptime) < 60.0, "{uptime:?}");
    let unlimited = f.docker(&["run", "--rm", &rt, IMAGE, "cat", "/proc/meminfo"]);
    assert!(unlimited.status.success(), "{}", text(&unlimited));
    let host = std::fs::read_to_string("/proc/meminfo").expect("host meminfo");
    assert_eq!(
        meminfo_kb(&String::from_utf8_lossy(&unlimited.stdout), "MemTotal"),
        meminfo_kb(&host, "MemTotal")
    );
}

/// What a container reads of its resources, one `---`-separated section
/// each: `nproc`, cpuinfo, cpu/online, stat, meminfo, swaps, loadavg,
/// diskstats, busybox `top -bn1`'s header.
const RESOURCE_SCRIPT: &str = "nproc; echo ---; cat /proc/cpuinfo; echo ---; cat /sys/devices/system/cpu/online; echo ---; cat /proc/stat; echo ---; cat /proc/meminfo; echo ---; cat /proc/swaps; echo ---; cat /proc/loadavg; echo ---; cat /proc/diskstats; echo ---; top -bn1 | head -3";

/// The sections of [`RESOURCE_SCRIPT`]'s output, by name.
struct Resources {
    nproc: usize,
    cpuinfo: String,
    online: String,
    stat: String,
    meminfo: String,
    swaps: String,
    loadavg: String,
    diskstats: String,
    top: String,
}

impl Resources {
    fn read(f: &Fixture, runtime_flags: &[String], limits: &[&str]) -> Self {
        let mut args: Vec<&str> = vec!["run", "--rm"];
        args.extend(runtime_flags.iter().map(String::as_str));
        args.extend(limits);
        args.extend([IMAGE, "sh", "-c", RESOURCE_SCRIPT]);
        let out = f.docker(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let parts: Vec<String> = stdout.split("---\n").map(str::to_owned).collect();
        assert_eq!(parts.len(), 9, "{stdout}");
        Self {
            nproc: parts[0]
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("nproc: {stdout}")),
            cpuinfo: parts[1].clone(),
            online: parts[2].trim().to_owned(),
            stat: parts[3].clone(),
            meminfo: parts[4].clone(),
            swaps: parts[5].clone(),
            loadavg: parts[6].clone(),
            diskstats: parts[7].clone(),
            top: parts[8].clone(),
        }
    }

    fn processors(&self) -> usize {
        self.cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
    }

    fn stat_cpus(&self) -> usize {
        self.stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count()
    }

    fn stat_value(&self, name: &str) -> Option<String> {
        self.stat.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
        })
    }

    /// `T` of the loadavg's `R/T` field.
    fn tasks(&self) -> u64 {
        self.loadavg
            .split_whitespace()
            .nth(3)
            .and_then(|f| f.split_once('/'))
            .and_then(|(_, total)| total.parse().ok())
            .unwrap_or_else(|| panic!("loadavg: {:?}", self.loadavg))
    }

    /// Size and used of `/proc/swaps`, in kB (0, 0 without a line).
    fn swap(&self) -> (u64, u64) {
        self.swaps
            .lines()
            .nth(1)
            .map(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .skip(2)
                    .take(2)
                    .map(|v| v.parse().unwrap_or(u64::MAX))
                    .collect();
                (f[0], f[1])
            })
            .unwrap_or((0, 0))
    }

    /// busybox top's `Mem: <used>K used, <free>K free` total, in kB.
    fn top_memory(&self) -> u64 {
        let line = self
            .top
            .lines()
            .find(|l| l.starts_with("Mem:"))
            .unwrap_or_else(|| panic!("top: {}", self.top));
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.strip_suffix('K').and_then(|n| n.parse().ok()))
            .collect();
        numbers.iter().take(2).sum()
    }
}

/// Readers of `/proc/stat` in a loop while the agent re-renders it every
/// second (its idle time follows uptime): slow readers (a line, 0.3 s,
/// the next line, as a shell loop reads) and whole-file readers. With one
/// CPU the `cpu` line and the `cpu0` line are the same numbers in every
/// render, so a read that mixed two renders shows.
const TORN_READ_SCRIPT: &str = r#"
for i in $(seq 15); do
  { read -r a; sleep 0.3; read -r b; } < /proc/stat
  echo "slow $a|$b"
done
for i in $(seq 60); do
  cat /proc/stat > /tmp/stat
  echo "fast $(head -n 2 /tmp/stat | tr '\n' '|')$(tail -n 1 /tmp/stat | cut -c1-7)"
done
"#;

#[test]
fn every_read_of_a_view_is_one_whole_render_while_the_agent_re_renders_it() {
    let Some(f) = fixture("every_read_of_a_view_is_one_whole_render_while_the_agent_re_renders_it")
    else {
        return;
    };
    let runtime = format!("--runtime={}", f.runtime());
    let out = f.docker(&[
        "run",
        "--rm",
        &runtime,
        "--cpuset-cpus=0",
        IMAGE,
        "sh",
        "-c",
        TORN_READ_SCRIPT,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let numbers = |line: &str, name: &str| -> Vec<u64> {
        let rest = line
            .strip_prefix(name)
            .unwrap_or_else(|| panic!("not a {name:?} line: {line:?}\n{stdout}"));
        rest.split_whitespace()
            .map(|n| n.parse().unwrap_or(u64::MAX))
            .collect()
    };
    let mut slow = Vec::new();
    let mut fast = 0;
    for line in stdout.lines() {
        if let Some(read) = line.strip_prefix("slow ") {
            let (a, b) = read.split_once('|').expect("two lines");
            assert_eq!(
                numbers(a, "cpu "),
                numbers(b, "cpu0 "),
                "a slow read mixed two renders: {read}\n{stdout}"
            );
            slow.push(a.to_owned());
        } else if let Some(read) = line.strip_prefix("fast ") {
            let parts: Vec<&str> = read.split('|').collect();
            assert_eq!(parts.len(), 3, "{read}");
            assert_eq!(
                numbers(parts[0], "cpu "),
                numbers(parts[1], "cpu0 "),
                "{read}"
            );
            assert_eq!(
                parts[2], "softirq",
                "a read did not end where a render does: {read}"
            );
            fast += 1;
        }
    }
    assert_eq!((slow.len(), fast), (15, 60), "{stdout}");
    // Not vacuous: the renders changed while they were read.
    slow.dedup();
    assert!(
        slow.len() > 3,
        "the view was not re-rendered during the reads: {slow:?}"
    );
}

#[test]
fn cpu_memory_swap_load_and_disk_views_are_the_containers_where_runc_shows_the_vms() {
    let Some(f) =
        fixture("cpu_memory_swap_load_and_disk_views_are_the_containers_where_runc_shows_the_vms")
    else {
        return;
    };
    let host_online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online");
    let host_cpus = eci_views::cpus::parse_list(&host_online).expect("cpu list");
    let host_meminfo = std::fs::read_to_string("/proc/meminfo").expect("host meminfo");
    let host_stat = std::fs::read_to_string("/proc/stat").expect("host stat");
    let btime = host_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .expect("btime")
        .to_owned();
    let limits = ["--cpus=1", "-m", "256m", "--memory-swap", "512m"];
    let runc = Resources::read(f, &f.engine.plain_runc_flags(), &limits);
    let eci = Resources::read(f, &[format!("--runtime={}", f.runtime())], &limits);
    // runc: the VM's CPUs, memory and tasks.
    assert_eq!(runc.processors(), host_cpus.len(), "{}", runc.cpuinfo);
    assert_eq!(runc.online, host_online.trim());
    assert_eq!(runc.stat_cpus(), host_cpus.len(), "{}", runc.stat);
    assert_eq!(
        meminfo_kb(&runc.meminfo, "MemTotal"),
        meminfo_kb(&host_meminfo, "MemTotal")
    );
    assert!(runc.top_memory() > 262_144, "{}", runc.top);
    // eci: one CPU (the quota rounded up), the first of the VM's.
    assert_eq!(eci.processors(), 1, "{}", eci.cpuinfo);
    assert_eq!(eci.online, host_cpus[0].to_string());
    assert_eq!(eci.stat_cpus(), 1, "{}", eci.stat);
    assert!(
        eci.stat
            .lines()
            .any(|l| l.starts_with(&format!("cpu{} ", host_cpus[0]))),
        "{}",
        eci.stat
    );
    assert_eq!(
        eci.stat_value("btime").as_deref(),
        Some(btime.as_str()),
        "{}",
        eci.stat
    );
    // nproc asks sched_getaffinity, which a quota does not narrow: the
    // same under runc and eci (and LXCFS).
    assert_eq!(eci.nproc, runc.nproc);
    // Memory: the limit; swap: the limit's swap or none, as the VM has.
    assert_eq!(
        meminfo_kb(&eci.meminfo, "MemTotal"),
        262_144,
        "{}",
        eci.meminfo
    );
    assert!(eci.top_memory() <= 262_144, "{}", eci.top);
    let swap_total = meminfo_kb(&eci.meminfo, "SwapTotal");
    assert!(
        swap_total <= 262_144.max(meminfo_kb(&host_meminfo, "SwapTotal")),
        "{}",
        eci.meminfo
    );
    assert_eq!(eci.swap().0, swap_total, "{}\n{}", eci.swaps, eci.meminfo);
    assert!(eci.swaps.starts_with("Filename"), "{}", eci.swaps);
    // Load: its own few tasks, not the VM's.
    assert!(eci.tasks() >= 1 && eci.tasks() < 10, "{}", eci.loadavg);
    assert!(
        runc.tasks() > eci.tasks(),
        "runc {} eci {}",
        runc.loadavg,
        eci.loadavg
    );
    // Disks: only devices the VM has, no more lines than the VM's.
    let devices = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
            .collect()
    };
    let vm_devices = devices(&runc.diskstats);
    assert!(
        devices(&eci.diskstats)
            .iter()
            .all(|d| vm_devices.contains(d)),
        "{}",
        eci.diskstats
    );
    // A cpuset: exactly its CPU, whose number it keeps (as
    // sched_getaffinity and /sys/devices/system/cpu/cpuN have it).
    let last = host_cpus[host_cpus.len() - 1].to_string();
    let cpuset = ["--cpuset-cpus", last.as_str()];
    let eci = Resources::read(f, &[format!("--runtime={}", f.runtime())], &cpuset);
    let runc = Resources::read(f, &f.engine.plain_runc_flags(), &cpuset);
    assert_eq!((eci.nproc, runc.nproc), (1, 1));
    assert_eq!(eci.online, last);
    assert_eq!(eci.processors(), 1, "{}", eci.cpuinfo);
    assert!(
        eci.cpuinfo
            .lines()
            .any(|l| l.starts_with("processor") && l.ends_with(&format!(": {last}"))),
        "{}",
        eci.cpuinfo
    );
    assert_eq!(runc.processors(), host_cpus.len());
}

#[test]
fn proc_sys_knobs_of_the_containers_namespaces_are_writable_and_the_vms_are_not() {
    let Some(f) =
        fixture("proc_sys_knobs_of_the_containers_namespaces_are_writable_and_the_vms_are_not")
    else {
        return;
    };
    // Its own IPC namespace's knob (the kernel gives those to the
    // namespace's root from 5.19), then global ones (the VM's).
    let script = "v=$(cat /proc/sys/kernel/msgmax); echo $((v + 1)) > /proc/sys/kernel/msgmax && echo IPC-WROTE; \
        echo 0 > /proc/sys/kernel/sysrq && echo SYSRQ-WROTE; echo 3 > /proc/sys/vm/drop_caches && echo DROP-WROTE; \
        echo 77 > /proc/sys/kernel/panic && echo PANIC-WROTE; echo 4096 > /proc/sys/fs/file-max && echo FILE-MAX-WROTE; \
        echo 1 > /proc/sys/net/ipv4/ip_forward && echo NET-WROTE; echo done";
    let vm = [
        "kernel/msgmax",
        "kernel/sysrq",
        "kernel/panic",
        "fs/file-max",
    ];
    let vm_values = || -> Vec<String> {
        vm.iter()
            .map(|k| std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default())
            .collect()
    };
    let before = vm_values();
    let run = |flags: &[String]| -> String {
        let mut args: Vec<&str> = vec!["run", "--rm"];
        args.extend(flags.iter().map(String::as_str));
        args.extend([IMAGE, "sh", "-c", script]);
        let out = f.docker(&args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let eci = run(&[format!("--runtime={}", f.runtime())]);
    let runc = run(&f.engine.plain_runc_flags());
    // eci: /proc/sys is writable; the kernel lets it write its IPC
    // namespace's knob and refuses every global one. The network namespace
    // is the engine's (made before the container's user namespace): its
    // knobs stay the VM root's, as `--sysctl` sets them.
    assert_eq!(
        eci.contains("IPC-WROTE"),
        eci_integration_tests::kernel_version() >= (5, 19),
        "{eci}"
    );
    for refused in [
        "SYSRQ-WROTE",
        "DROP-WROTE",
        "PANIC-WROTE",
        "FILE-MAX-WROTE",
        "NET-WROTE",
    ] {
        assert!(!eci.contains(refused), "{refused}: {eci}");
    }
    // runc: /proc/sys is read-only for a container that is not privileged.
    assert!(!runc.contains("WROTE") && runc.contains("done"), "{runc}");
    assert_eq!(vm_values(), before, "a knob of the VM changed");
}

#[test]
fn proc_uptime_counts_from_the_containers_start_and_advances() {
    let Some(f) = fixture("proc_uptime_counts_from_the_containers_start_and_advances") else {
        return;
    };
    let out = f.docker(&[
        "run",
        "--rm",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "sh",
        "-c",
        "sleep 3; cat /proc/uptime; sleep 2; cat /proc/uptime",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let host = uptime_seconds(&std::fs::read_to_string("/proc/uptime").expect("host uptime"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let seen: Vec<f64> = stdout.lines().map(uptime_seconds).collect();
    assert_eq!(seen.len(), 2, "{stdout}");
    assert!(seen[0] >= 2.0 && seen[0] < 60.0, "{stdout}");
    assert!(seen[0] < host, "{stdout} (host: {host})");
    // Re-rendered by the agent meanwhile, through the same bind mount.
    assert!(seen[1] > seen[0], "{stdout}");
}

#[test]
fn a_privileged_container_cannot_write_its_proc_views() {
    let Some(f) = fixture("a_privileged_container_cannot_write_its_proc_views") else {
        return;
    };
    // Even remounted read-write, the file is the VM root's (unmapped:
    // nobody inside), and capabilities in the container's user namespace do
    // not override the permissions of an unmapped owner.
    let out = f.docker(&[
        "run",
        "--rm",
        "--privileged",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "sh",
        "-c",
        "stat -c %u /proc/meminfo; mount -o remount,bind,rw /proc/meminfo; echo x > /proc/meminfo && echo WROTE; head -1 /proc/meminfo",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"65534"), "{}", text(&out));
    assert!(!stdout.contains("WROTE"), "{}", text(&out));
    assert!(
        lines.last().is_some_and(|l| l.starts_with("MemTotal:")),
        "{}",
        text(&out)
    );
}

#[test]
fn the_proc_views_of_a_container_go_with_it() {
    let Some(f) = fixture("the_proc_views_of_a_container_go_with_it") else {
        return;
    };
    let out = f.docker(&[
        "run",
        "-d",
        &format!("--runtime={}", f.runtime()),
        "-m",
        "32m",
        IMAGE,
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let views = f.engine.views_dir().join(&id);
    assert!(views.join("view.json").exists(), "no {}", views.display());
    let meminfo = f.docker(&["exec", &id, "cat", "/proc/meminfo"]);
    assert_eq!(
        meminfo_kb(&String::from_utf8_lossy(&meminfo.stdout), "MemTotal"),
        32768
    );
    assert_eq!(
        std::fs::read_to_string(views.join("shown/meminfo"))
            .map(|t| meminfo_kb(&t, "MemTotal"))
            .ok(),
        Some(32768)
    );
    // The container's /proc/meminfo is a symlink into its views' directory.
    let link = f.docker(&["exec", &id, "readlink", "/proc/meminfo"]);
    assert_eq!(
        String::from_utf8_lossy(&link.stdout).trim(),
        "/dev/.eci/meminfo",
        "{}",
        text(&link)
    );
    assert!(f.docker(&["rm", "-f", &id]).status.success());
    assert!(!views.exists(), "{} is left", views.display());
    assert!(!leftovers(f, &id[..12]), "{id} left state behind");
}

#[test]
fn exec_stop_restart_and_rm_work_and_leave_nothing_behind() {
    let Some(f) = fixture("exec_stop_restart_and_rm_work_and_leave_nothing_behind") else {
        return;
    };
    let out = f.docker(&[
        "run",
        "-d",
        &format!("--runtime={}", f.runtime()),
        IMAGE,
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        String::from_utf8_lossy(&f.docker(&["exec", &id, "echo", "in"]).stdout),
        "in\n"
    );
    assert!(f.docker(&["stop", "-t", "1", &id]).status.success());
    assert!(
        !leftovers(f, &id[..12]),
        "a stopped container kept its range"
    );
    assert!(f.docker(&["start", &id]).status.success());
    let map = f.docker(&["exec", &id, "cat", "/proc/self/uid_map"]);
    uid_map_base(&String::from_utf8_lossy(&map.stdout));
    assert!(f.docker(&["restart", "-t", "1", &id]).status.success());
    assert!(f.docker(&["rm", "-f", &id]).status.success());
    assert!(!leftovers(f, &id[..12]), "{id} left state behind");
}

#[test]
fn without_the_agent_containers_do_not_start_and_nothing_is_left() {
    let Some(f) = fixture("without_the_agent_containers_do_not_start_and_nothing_is_left") else {
        return;
    };
    let out = f.docker(&[
        "run",
        "--rm",
        &format!("--runtime={}", f.engine.runtime_no_agent()),
        IMAGE,
        "true",
    ]);
    assert!(
        !out.status.success(),
        "a container started without the agent"
    );
    let message = text(&out);
    assert!(
        message.contains("could not get the policy in force from the eci agent"),
        "{message}"
    );
    assert!(message.contains("eci-agent run"), "{message}");
    assert_eq!(leaked_allocations(f), Vec::<String>::new());
}

/// A runc bundle of the test image (rootfs exported from Docker) whose
/// process runs `script`.
fn bundle(f: &Fixture, name: &str, script: &str) -> PathBuf {
    let dir = f.dir().join("bundles").join(name);
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("bundle dir");
    let created = f.docker(&["create", IMAGE]);
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let export = f
        .engine
        .docker_command()
        .args(["export", &id])
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut exporting| {
            let untar = Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-x")
                .stdin(exporting.stdout.take().expect("piped"))
                .status();
            let exported = exporting.wait()?;
            Ok(untar?.success() && exported.success())
        })
        .expect("export");
    f.docker(&["rm", &id]);
    assert!(export, "docker export");
    let spec = Command::new("runc")
        .arg("spec")
        .current_dir(&dir)
        .status()
        .expect("runc spec");
    assert!(spec.success());
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    config["process"]["terminal"] = serde_json::json!(false);
    config["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    config["root"]["readonly"] = serde_json::json!(false);
    std::fs::write(&path, config.to_string()).expect("config");
    dir
}

/// Give the bundle's container a memory limit of `bytes`.
fn limit_memory(bundle: &Path, bytes: u64) {
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    config["linux"]["resources"]["memory"] = serde_json::json!({ "limit": bytes });
    std::fs::write(&path, config.to_string()).expect("config");
}

fn eci_runc(f: &Fixture, socket: &Path) -> Command {
    f.engine.eci_runc(socket)
}

/// `eci-runc run` of a bundle that wants a terminal, given none to pass on
/// (as from an interactive shell): runc relays the terminal itself, and
/// eci-runc registers from runc's createRuntime hook, before pivot_root — the
/// views' symlinks are mounted below the root file system's path then.
#[test]
fn a_run_with_a_terminal_runc_relays_gets_the_containers_views() {
    let Some(f) = fixture("a_run_with_a_terminal_runc_relays_gets_the_containers_views") else {
        return;
    };
    if !f.engine.is_machine() {
        // README, limits: under kernel enforcement the registered container
        // may not unmount what it started with, and runc's init unmounts
        // its old root after the hook.
        println!(
            "SKIP: a_run_with_a_terminal_runc_relays_gets_the_containers_views: a relayed-terminal run registers before pivot_root, which kernel enforcement refuses (README)"
        );
        return;
    }
    let dir = bundle(
        f,
        "terminal",
        "head -1 /proc/meminfo; readlink /proc/meminfo",
    );
    limit_memory(&dir, 48 << 20);
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    config["process"]["terminal"] = serde_json::json!(true);
    std::fs::write(&path, config.to_string()).expect("config");
    let root = f.dir().join("runc-root");
    let id = format!("eci-tty-{}", std::process::id());
    let eci = eci_runc(f, f.engine.agent_socket());
    let command = format!(
        "{} --root {} run --bundle {} {id}",
        eci.get_program().to_string_lossy(),
        root.display(),
        dir.display()
    );
    // `script` gives the run a terminal of its own.
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .envs(
            eci.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let shown = text(&out).replace('\r', "");
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("MemTotal:          49152 kB"),
        "not the container's meminfo: {shown}"
    );
    assert!(shown.contains("/dev/.eci/meminfo"), "{shown}");
    assert!(!leftovers(f, &id), "{id} left state behind");
}

#[test]
fn eci_runc_run_registers_releases_and_leaves_the_bundle_as_it_was() {
    let Some(f) = fixture("eci_runc_run_registers_releases_and_leaves_the_bundle_as_it_was") else {
        return;
    };
    let dir = bundle(
        f,
        "run",
        "cat /proc/self/uid_map; echo x > /etc/w && stat -c %u /etc/w && rm /etc/w; head -1 /proc/meminfo",
    );
    limit_memory(&dir, 48 << 20);
    let original = std::fs::read(dir.join("config.json")).expect("config");
    let root = f.dir().join("runc-root");
    let id = format!("eci-run-{}", std::process::id());
    for _ in 0..2 {
        let out = eci_runc(f, f.engine.agent_socket())
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(&id)
            .output()
            .expect("eci-runc run");
        assert!(
            out.status.success(),
            "{}\nthe agent's denials of umounts:\n{}",
            text(&out),
            std::fs::read_to_string(f.engine.audit_log())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("sb_umount"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = stdout.lines();
        assert!(uid_map_base(lines.next().unwrap_or_default()) >= 100_000);
        // eci-runc binds a rootfs on tmpfs as it is (README: not ID-mapped
        // there), so its root cannot write it: the bundle is on tmpfs in
        // the VM.
        let on_tmpfs = nix::sys::statfs::statfs(&dir)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if on_tmpfs {
            println!(
                "SKIP PART: eci_runc_run_registers_releases_and_leaves_the_bundle_as_it_was: the rootfs's owner (the bundle is on tmpfs here, which eci-runc does not ID-map)"
            );
        } else {
            assert_eq!(
                lines.next(),
                Some("0"),
                "the rootfs belongs to the container's root"
            );
        }
        assert_eq!(
            lines.next(),
            Some("MemTotal:          49152 kB"),
            "the view, described and rendered by the registration hook"
        );
        assert_eq!(
            std::fs::read(dir.join("config.json")).expect("config"),
            original
        );
        assert!(!leftovers(f, &id));
    }
    // Without the agent: refused before anything is prepared (no policy in
    // force to be had), nothing left.
    let out = eci_runc(f, &f.dir().join("nowhere/agent.sock"))
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .output()
        .expect("eci-runc run");
    let refused = RefusedRun {
        root: &root,
        bundle: &dir,
        id: &id,
        original: &original,
    };
    refused.assert(
        f,
        &out,
        "could not get the policy in force from the eci agent",
    );
}

/// An `eci-runc run` that must have failed and left nothing behind.
struct RefusedRun<'a> {
    root: &'a Path,
    bundle: &'a Path,
    id: &'a str,
    /// The bundle's config.json before the run.
    original: &'a [u8],
}

impl RefusedRun<'_> {
    fn assert(&self, f: &Fixture, out: &Output, expected: &str) {
        assert!(!out.status.success(), "the run did not fail");
        assert!(text(out).contains(expected), "{}", text(out));
        assert!(!leftovers(f, self.id), "a refused run left state");
        assert!(
            !self.root.join(self.id).exists(),
            "runc kept the refused container"
        );
        assert_eq!(
            std::fs::read(self.bundle.join("config.json")).expect("config"),
            self.original
        );
    }
}

#[test]
fn a_failure_to_prepare_the_proc_views_fails_the_run_and_leaves_nothing() {
    let Some(f) = fixture("a_failure_to_prepare_the_proc_views_fails_the_run_and_leaves_nothing")
    else {
        return;
    };
    let dir = bundle(f, "noviews", "true");
    let original = std::fs::read(dir.join("config.json")).expect("config");
    // A file where the views root's parent should be: no directory there.
    let blocker = f.dir().join("views-blocker");
    std::fs::write(&blocker, "").expect("blocker");
    let root = f.dir().join("runc-root");
    let id = format!("eci-noviews-{}", std::process::id());
    let out = eci_runc(f, f.engine.agent_socket())
        .env("ECI_VIEWS_DIR", blocker.join("views"))
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .output()
        .expect("eci-runc run");
    let refused = RefusedRun {
        root: &root,
        bundle: &dir,
        id: &id,
        original: &original,
    };
    refused.assert(f, &out, "the container's /proc and /sys views");
}

#[test]
fn start_refuses_a_container_eci_runc_did_not_register() {
    let Some(f) = fixture("start_refuses_a_container_eci_runc_did_not_register") else {
        return;
    };
    let dir = bundle(f, "unregistered", "true");
    let root = f.dir().join("runc-root");
    let id = format!("eci-plain-{}", std::process::id());
    let created = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runc create");
    assert!(created.success());
    let out = eci_runc(f, f.engine.agent_socket())
        .arg("--root")
        .arg(&root)
        .args(["start", &id])
        .output()
        .expect("eci-runc start");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &id])
        .status();
    assert!(!out.status.success(), "an unregistered container started");
    assert!(
        text(&out).contains("was not created by eci-runc"),
        "{}",
        text(&out)
    );
}

/// `docker run --rm` of `image` with eci, the Docker socket and the shared
/// directory (which holds a docker CLI) bound in.
fn run_with_docker_socket(f: &Fixture, image: &str, command: &[&str]) -> Output {
    let runtime = format!("--runtime={}", f.runtime());
    let shared = format!("{}:/shared", f.shared().display());
    let socket = f.socket_bind();
    let mut args = vec!["run", "--rm", &runtime, "-v", &socket, "-v", &shared, image];
    args.extend_from_slice(command);
    f.docker(&args)
}

#[test]
fn a_trusted_image_gets_a_docker_socket_filtered_by_the_command_list() {
    let Some(f) = fixture("a_trusted_image_gets_a_docker_socket_filtered_by_the_command_list")
    else {
        return;
    };
    // Allowed: version, ps, and a whole `docker run` (create, attach through
    // an upgraded connection, start, wait). Denied: push and rm.
    let script = format!(
        "export HOME=/tmp; d=/shared/docker; \
         echo version=$($d version --format '{{{{.Server.Version}}}}'); \
         $d ps -q >/dev/null && echo ps=ok; \
         echo run=$($d run --rm {IMAGE} echo nested); \
         echo nested-map=$($d run --rm --runtime=runc {IMAGE} cat /proc/self/uid_map); \
         c=$($d run -d --rm {IMAGE} sleep 60); echo exec=$($d exec $c echo ok); $d kill $c >/dev/null; \
         echo push: $($d push {IMAGE} 2>&1); \
         echo rm: $($d rm no-such-container 2>&1); \
         echo plugin: $($d plugin ls 2>&1); \
         echo volume: $($d volume create -o type=none -o o=bind -o device=/etc eci-etc 2>&1); \
         echo bind: $($d run --rm -v /etc:/x {IMAGE} true 2>&1)"
    );
    let out = run_with_docker_socket(f, &f.trusted_image, &["sh", "-c", &script]);
    let output = text(&out);
    println!("{output}");
    assert!(out.status.success(), "{output}");
    let server = text(&f.docker(&["version", "--format", "{{.Server.Version}}"]));
    assert!(
        output.contains(&format!("version={}", server.trim())),
        "version through the proxy: {output}"
    );
    assert!(output.contains("ps=ok"), "{output}");
    assert!(
        output.contains("run=nested"),
        "docker run through the proxy: {output}"
    );
    assert!(
        output.contains("exec=ok"),
        "docker exec through the proxy: {output}"
    );
    // Created through the proxy with `--runtime=runc`: it got
    // eci's runtime anyway (its own user namespace and range).
    let nested_map = output
        .lines()
        .find_map(|l| l.strip_prefix("nested-map="))
        .unwrap_or_default();
    assert!(
        uid_map_base(nested_map) >= 65536,
        "a container created through the proxy escaped eci's runtime: {output}"
    );
    for command in ["push", "rm"] {
        let line = output
            .lines()
            .find(|l| l.starts_with(&format!("{command}:")))
            .unwrap_or_default();
        assert!(
            line.contains("enhanced container isolation: docker command")
                && line.contains("is blocked")
                && line.contains(&format!("\"{command}\" is on the deny list"))
                && line.contains("commandList"),
            "{command} was not blocked with the rule and the fix: {line}"
        );
    }
    // Refused whatever commandList says: plugins (VM administration), a
    // volume that binds a VM path, a bind of a VM path.
    for (what, expected) in [
        ("plugin:", "an administrator installs and manages plugins"),
        ("volume:", "device=/etc"),
        ("bind:", "eci.shareableHostPaths"),
    ] {
        let line = output
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_default();
        assert!(
            line.contains("enhanced container isolation") && line.contains(expected),
            "{what} was not refused with the rule and the fix: {line}"
        );
    }
    let audit = std::fs::read_to_string(f.engine.audit_log()).unwrap_or_default();
    for command in ["push", "rm", "plugin", "volume", "create"] {
        assert!(
            audit.lines().any(|l| l.contains("docker_api_denied")
                && l.contains(&format!("\"command\":\"{command}\""))),
            "the denied {command} is not in the audit log"
        );
    }
    // Built from the trusted image: trusted too (allowDerivedImages).
    let derived = run_with_docker_socket(
        f,
        &f.derived_image,
        &[
            "/shared/docker",
            "version",
            "--format",
            "{{.Server.Version}}",
        ],
    );
    assert!(
        derived.status.success(),
        "derived image: {}",
        text(&derived)
    );
    let sockets: Vec<_> = std::fs::read_dir(f.engine.proxy_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(sockets.is_empty(), "proxy sockets left behind: {sockets:?}");
    assert_eq!(leaked_allocations(f), Vec::<String>::new());
}

#[test]
fn the_docker_socket_is_refused_to_untrusted_and_retagged_images() {
    let Some(f) = fixture("the_docker_socket_is_refused_to_untrusted_and_retagged_images") else {
        return;
    };
    let socket = &f.socket_bind();
    let containerd = "/run/containerd/containerd.sock:/c.sock";
    let cases: [(&str, &str, &str); 3] = [
        (IMAGE, socket, "image \"eci-test-busybox:latest\""),
        (RETAGGED_IMAGE, socket, "no registry digest"),
        (&f.trusted_image, containerd, "engine socket mount denied"),
    ];
    for (image, mount, expected) in cases {
        let out = f.docker(&[
            "run",
            "--rm",
            &format!("--runtime={}", f.runtime()),
            "-v",
            mount,
            image,
            "true",
        ]);
        let message = text(&out);
        assert!(
            !out.status.success(),
            "{image} with {mount} was not refused"
        );
        assert!(
            message.contains("enhanced container isolation") && message.contains(expected),
            "{image} with {mount}: {message}"
        );
        if mount == socket {
            assert!(message.contains("imageList"), "{message}");
        }
    }
    assert_eq!(leaked_allocations(f), Vec::<String>::new());
}

/// Volumes a test made (or had the engine make), removed when the test
/// ends, also when it fails.
struct Volumes {
    engine: &'static Engine,
    names: Vec<String>,
}

impl Volumes {
    fn new(f: &Fixture) -> Self {
        Self {
            engine: f.engine,
            names: Vec::new(),
        }
    }

    /// A name of this test process for `what`, forgotten first if a failed
    /// run left it, removed at the end.
    fn name(&mut self, what: &str) -> String {
        let name = format!("eci-test-{what}-{}", std::process::id());
        let _ = self.engine.docker(&["volume", "rm", "-f", &name]);
        self.names.push(name.clone());
        name
    }

    /// `docker volume create --opt <opt>... <name>`.
    fn create(&mut self, what: &str, opts: &[&str]) -> String {
        let name = self.name(what);
        let mut args = vec!["volume", "create"];
        for opt in opts {
            args.extend_from_slice(&["--opt", opt]);
        }
        args.push(&name);
        let out = self.engine.docker(&args);
        assert!(out.status.success(), "{}", text(&out));
        name
    }
}

impl Drop for Volumes {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.engine.docker(&["volume", "rm", "-f", name]);
        }
    }
}

/// `docker run --rm <runtime flags> <flags> IMAGE sh -c <script>`.
fn run_with(f: &Fixture, runtime: &[String], flags: &[&str], script: &str) -> Output {
    let mut args = vec!["run", "--rm"];
    args.extend(runtime.iter().map(String::as_str));
    args.extend_from_slice(flags);
    args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
    f.docker(&args)
}

/// [`run_with`] eci's runtime.
fn run_eci(f: &Fixture, flags: &[&str], script: &str) -> Output {
    run_with(f, &[format!("--runtime={}", f.runtime())], flags, script)
}

/// [`run_with`] plain runc, outside every protected cgroup (see
/// `Engine::plain_runc_flags`).
fn run_plain(f: &Fixture, flags: &[&str], script: &str) -> Output {
    run_with(f, &f.engine.plain_runc_flags(), flags, script)
}

/// Plain runc mounts what `flags` give (`proof` succeeds: the VM's files are
/// there, so the refusal below is not vacuous), and eci refuses the same
/// flags before start, naming what the source is and the fix, leaving
/// nothing behind.
fn runc_mounts_it_and_eci_refuses_it(
    f: &Fixture,
    runc_flags: &[&str],
    eci_flags: &[&str],
    proof: &str,
    expected: &[&str],
) {
    let out = run_plain(f, runc_flags, proof);
    assert!(
        out.status.success(),
        "plain runc should mount {runc_flags:?} ({proof}): {}",
        text(&out)
    );
    let out = run_eci(f, eci_flags, "echo started");
    let message = text(&out);
    assert!(!out.status.success(), "{eci_flags:?} was not refused");
    assert!(!message.contains("started"), "{message}");
    for e in [
        "enhanced container isolation",
        "can't mount",
        "plain named volume",
        "eci.shareableHostPaths",
    ]
    .iter()
    .chain(expected)
    {
        assert!(message.contains(e), "{eci_flags:?}: no {e:?} in: {message}");
    }
    assert_eq!(
        leaked_allocations(f),
        Vec::<String>::new(),
        "a refusal left an allocation"
    );
}

/// [`runc_mounts_it_and_eci_refuses_it`] for `-v <volume>:/x`, the volume
/// created with `opts`; the refusal names the volume too.
fn a_volume_is_refused(f: &Fixture, what: &str, opts: &[&str], proof: &str, expected: &[&str]) {
    let mut volumes = Volumes::new(f);
    let v = volumes.create(what, opts);
    let flags = ["-v", &format!("{v}:/x")];
    let named = format!("volume \"{v}\"");
    let expected: Vec<&str> = expected.iter().copied().chain([named.as_str()]).collect();
    runc_mounts_it_and_eci_refuses_it(f, &flags, &flags, proof, &expected);
}

#[test]
fn a_volume_bound_to_the_vms_etc_is_refused_with_its_name_and_driver_options() {
    let Some(f) =
        fixture("a_volume_bound_to_the_vms_etc_is_refused_with_its_name_and_driver_options")
    else {
        return;
    };
    a_volume_is_refused(
        f,
        "etc",
        &["type=none", "o=bind", "device=/etc"],
        "test -s /x/passwd",
        &["type=none, o=bind, device=/etc", &etc_bind()],
    );
}

#[test]
fn an_inline_volume_mount_with_bind_driver_options_is_refused() {
    let Some(f) = fixture("an_inline_volume_mount_with_bind_driver_options_is_refused") else {
        return;
    };
    let mut volumes = Volumes::new(f);
    let inline = |name: &str| {
        format!(
            "type=volume,src={name},dst=/x,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/etc"
        )
    };
    // Two volumes: the engine creates each with the options on first use.
    let (for_runc, for_eci) = (volumes.name("inline-runc"), volumes.name("inline-eci"));
    runc_mounts_it_and_eci_refuses_it(
        f,
        &["--mount", &inline(&for_runc)],
        &["--mount", &inline(&for_eci)],
        "test -s /x/passwd",
        &[&format!("volume \"{for_eci}\""), "device=/etc", &etc_bind()],
    );
}

#[test]
fn a_volume_bound_to_the_vms_run_is_refused_as_a_bind_of_a_vm_path() {
    let Some(f) = fixture("a_volume_bound_to_the_vms_run_is_refused_as_a_bind_of_a_vm_path") else {
        return;
    };
    // /run is a tmpfs of its own on most VMs, a directory of / on others.
    let what = if is_mount_point("/run") {
        "a bind of the VM's /run (tmpfs"
    } else {
        "a bind of /run on the VM's root file system"
    };
    a_volume_is_refused(
        f,
        "run",
        &["type=none", "o=bind", "device=/run"],
        // A VM file below /run: containerd's socket (the machine's; the
        // private engine's in the VM).
        "test -e /x/containerd/containerd.sock",
        &["device=/run", what],
    );
}

/// How eci-runc names a bind of the VM's /etc: on the machine, / is a
/// file system on a block device; in the test VM it is the host's root over
/// 9p (no device), a bind of which is named as such (by the path the 9p
/// mount's root has on the host: "a bind of the VM's
/// /work/.../build/vm/roots/sid/etc (9p, device 0:24)").
fn etc_bind() -> String {
    let root_on_device = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_once(" - "))
        .and_then(|(_, right)| right.split_whitespace().nth(1))
        .is_some_and(|source| source.starts_with("/dev/"));
    if root_on_device {
        "a bind of /etc on the VM's root file system".into()
    } else {
        "/etc (9p, device ".into()
    }
}

fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path))
}

#[test]
fn a_volume_bound_to_the_vms_dev_shm_is_refused_as_no_fresh_tmpfs() {
    let Some(f) = fixture("a_volume_bound_to_the_vms_dev_shm_is_refused_as_no_fresh_tmpfs") else {
        return;
    };
    if !is_mount_point("/dev/shm") {
        println!(
            "SKIP: a_volume_bound_to_the_vms_dev_shm_is_refused_as_no_fresh_tmpfs: /dev/shm is not a mount here"
        );
        return;
    }
    let marker = format!("/dev/shm/eci-test-{}", std::process::id());
    std::fs::write(&marker, "the VM's\n").expect("marker in /dev/shm");
    let proof = format!("test -e /x/eci-test-{}", std::process::id());
    a_volume_is_refused(
        f,
        "shm",
        &["type=none", "o=bind", "device=/dev/shm"],
        &proof,
        &["device=/dev/shm", "a bind of the VM's /dev/shm (tmpfs"],
    );
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn a_volume_bound_to_the_vms_proc_is_refused_as_a_kernel_file_system() {
    let Some(f) = fixture("a_volume_bound_to_the_vms_proc_is_refused_as_a_kernel_file_system")
    else {
        return;
    };
    a_volume_is_refused(
        f,
        "proc",
        &["type=none", "o=bind", "device=/proc"],
        "test -e /x/1/cmdline",
        &[
            "device=/proc",
            "a bind of the VM's /proc (proc, a kernel file system)",
        ],
    );
}

/// A loop device with an ext4 file system, detached at the end.
struct LoopDevice {
    device: String,
    file: PathBuf,
}

impl LoopDevice {
    fn make() -> Result<Self, String> {
        let file = std::env::temp_dir().join(format!("eci-test-disk-{}", std::process::id()));
        let run = |cmd: &mut Command| {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            } else {
                Err(format!("{cmd:?}: {}", text(&out)))
            }
        };
        // The loop driver may be a module (the test VM's kernels).
        let _ = Command::new("modprobe")
            .arg("loop")
            .stderr(Stdio::null())
            .status();
        std::fs::write(&file, vec![0u8; 8 << 20]).map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&file))?;
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&file))?;
        Ok(Self { device, file })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn a_volume_on_a_vm_block_device_is_refused_with_its_device() {
    let Some(f) = fixture("a_volume_on_a_vm_block_device_is_refused_with_its_device") else {
        return;
    };
    let disk = match LoopDevice::make() {
        Ok(disk) => disk,
        Err(why) => {
            println!(
                "SKIP: a_volume_on_a_vm_block_device_is_refused_with_its_device: no loop device here ({why})"
            );
            return;
        }
    };
    let device = format!("device={}", disk.device);
    let rdev = std::fs::metadata(&disk.device).expect("loop device").rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    a_volume_is_refused(
        f,
        "disk",
        &["type=ext4", &device],
        "test -d /x/lost+found",
        &[
            &device,
            &format!("ext4 on block device {major}:{minor} ({})", disk.device),
        ],
    );
}

#[test]
fn tmpfs_volumes_plain_named_volumes_and_shm_keep_working() {
    let Some(f) = fixture("tmpfs_volumes_plain_named_volumes_and_shm_keep_working") else {
        return;
    };
    let mut volumes = Volumes::new(f);
    let tmpfs = volumes.create("tmpfs", &["type=tmpfs", "device=tmpfs", "o=size=10m"]);
    let plain = volumes.create("plain", &[]);
    let inline = volumes.name("inline-tmpfs");
    let inline_mount =
        format!("type=volume,src={inline},dst=/i,volume-opt=type=tmpfs,volume-opt=device=tmpfs");
    let out = run_eci(
        f,
        &[
            "-v",
            &format!("{tmpfs}:/t"),
            "-v",
            &format!("{plain}:/p"),
            "--mount",
            &inline_mount,
        ],
        "for d in /t /p /i /dev/shm; do echo ok > $d/f && cat $d/f || exit 1; done; grep -c ' /t tmpfs ' /proc/mounts",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\nok\nok\nok\n1\n",
        "{}",
        text(&out)
    );
}

/// A bind of `source` at `target`, unmounted (and the mount point removed)
/// at the end.
struct BindMount(PathBuf);

impl BindMount {
    fn new(source: &str, target: &Path) -> Self {
        std::fs::create_dir_all(target).expect("mount point");
        let out = Command::new("mount")
            .args(["--bind", source])
            .arg(target)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount --bind: {}", text(&out));
        Self(target.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_recursive_bind_of_a_shareable_directory_is_refused_for_a_vm_mount_below_it() {
    let Some(f) =
        fixture("a_recursive_bind_of_a_shareable_directory_is_refused_for_a_vm_mount_below_it")
    else {
        return;
    };
    let dir = rbind_shareable(f.engine).join("rbind");
    let below = BindMount::new("/etc", &dir.join("vm-etc"));
    let rbind = ["-v", &format!("{}:/x", dir.display())];
    runc_mounts_it_and_eci_refuses_it(
        f,
        &rbind,
        &rbind,
        "test -s /x/vm-etc/passwd",
        &[
            "a recursive bind of it would take a bind of ",
            &etc_bind(),
            &format!("mounted at {}", below.0.display()),
        ],
    );
    // Without the mounts below it, the directory itself is fine.
    let plain = format!(
        "type=bind,source={},target=/x,bind-nonrecursive=true",
        dir.display()
    );
    let out = run_eci(
        f,
        &["--mount", &plain],
        "test -d /x/vm-etc && ! test -e /x/vm-etc/passwd && echo empty",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "empty\n");
}
