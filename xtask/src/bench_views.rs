//! `cargo xtask bench --views`: what eci's container /proc views cost next
//! to LXCFS serving the same files to the same containers, on this host's
//! Docker Engine, in one run.
//!
//! Three variants, one after the other, each with `containers` containers
//! of the test image:
//! - `runc`: plain runc, the machine's own procfs (the baseline);
//! - `eci`: eci-runc with its agent (plain files re-rendered every second);
//! - `lxcfs`: plain runc with LXCFS's files bound over the same 8 paths
//!   (LXCFS started for the run when it is not running, stopped after).
//!
//! For each: the server's CPU (utime+stime of the eci agent or the lxcfs
//! daemon, from /proc/<pid>/stat, as a % of one core) over an idle window;
//! then every container reading a file in a tight shell loop for a window,
//! with the reads per second over all containers and the server's CPU; and
//! what a `--cpus=1 -m 256m` container sees. Figures are ratios from this
//! one run, never assertions on time.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{docker::TEST_IMAGE, util};

/// The length of every measured window.
const WINDOW_SECS: u64 = 10;
/// The label every container of this benchmark carries (its value: this
/// xtask's pid); leftovers of an interrupted run are removed by it.
const LABEL: &str = "eci-bench-views";
/// The runtime registered with the host's Docker for the eci variant.
const RUNTIME: &str = "eci-bench-views";
/// Where LXCFS is mounted (Debian's lxcfs.service).
const LXCFS_MOUNT: &str = "/var/lib/lxcfs";
/// The agent's socket, state, eci-runc's run directory and the views (short
/// paths, as the tests').
const RUN_DIR: &str = "/tmp/eci-bench-views";

/// The files both eci and LXCFS stand in for, as (container path, LXCFS path).
const VIEWS: [(&str, &str); 8] = [
    ("/proc/meminfo", "proc/meminfo"),
    ("/proc/uptime", "proc/uptime"),
    ("/proc/cpuinfo", "proc/cpuinfo"),
    ("/proc/stat", "proc/stat"),
    ("/proc/loadavg", "proc/loadavg"),
    ("/proc/swaps", "proc/swaps"),
    ("/proc/diskstats", "proc/diskstats"),
    (
        "/sys/devices/system/cpu/online",
        "sys/devices/system/cpu/online",
    ),
];

/// The loaded windows: the file every container reads and how.
const LOADS: [(&str, Reader); 3] = [
    ("/proc/meminfo", Reader::Read),
    ("/proc/meminfo", Reader::Cat),
    ("/proc/stat", Reader::Read),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Runc,
    Eci,
    Lxcfs,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Runc, Variant::Eci, Variant::Lxcfs];

    fn name(self) -> &'static str {
        match self {
            Variant::Runc => "runc",
            Variant::Eci => "eci",
            Variant::Lxcfs => "lxcfs",
        }
    }

    /// `docker run` arguments choosing the runtime and the binds.
    fn run_args(self) -> Vec<String> {
        match self {
            Variant::Runc => vec!["--runtime".into(), "runc".into()],
            Variant::Eci => vec!["--runtime".into(), RUNTIME.into()],
            Variant::Lxcfs => {
                let mut args = vec!["--runtime".into(), "runc".into()];
                for (target, source) in VIEWS {
                    args.push("-v".into());
                    args.push(format!("{LXCFS_MOUNT}/{source}:{target}:rw"));
                }
                args
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reader {
    /// busybox sh's `read` builtin: no fork; it reads the first line one
    /// byte per read(2) (busybox never reads ahead).
    Read,
    /// `cat FILE >/dev/null`: a fork and exec of busybox per read, the whole
    /// file in large reads.
    Cat,
}

impl Reader {
    fn name(self) -> &'static str {
        match self {
            Reader::Read => "read",
            Reader::Cat => "cat",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reader::Read => {
                "busybox sh loop `read -r line < FILE`: the read builtin, no fork; the first line, one byte per read(2)"
            }
            Reader::Cat => {
                "busybox sh loop `cat FILE >/dev/null`: a fork+exec per read; the whole file in large reads"
            }
        }
    }
}

/// Run in each container by `docker exec -i`: says `ready`, reads the start
/// second from stdin, waits for it, runs the reader in the background for
/// the window and prints its count and the second it started in.
const LOOP_SCRIPT: &str = r#"
file=$1 how=$2 window=$3
echo ready
read -r start
while [ "$(date +%s)" -lt "$start" ]; do usleep 20000; done
began=$(date +%s)
case $how in
read) sh -c 'n=0; trap "echo count \$n; exit 0" TERM; while :; do read -r l < "$1"; n=$((n+1)); done' reader "$file" & ;;
cat) sh -c 'n=0; trap "echo count \$n; exit 0" TERM; while :; do cat "$1" >/dev/null; n=$((n+1)); done' reader "$file" & ;;
*) echo "unknown reader $how"; exit 2 ;;
esac
p=$!
sleep "$window"
kill -TERM $p
wait $p
echo "began $began"
"#;

/// What a `--cpus=1 -m 256m` container sees.
const SEEN_SCRIPT: &str = "grep '^MemTotal:' /proc/meminfo; echo processors $(grep -c '^processor' /proc/cpuinfo); echo online $(cat /sys/devices/system/cpu/online)";

pub fn bench_views(containers: usize, binaries: &Path) -> Result<Value> {
    if containers == 0 {
        bail!("--views-containers must be at least 1");
    }
    crate::docker::ensure_docker()?;
    crate::docker::ensure_test_image()?;
    let dir = util::build_dir().join("bench/views");
    std::fs::create_dir_all(&dir)?;
    remove_labelled(LABEL);
    let clk_tck = clock_ticks();
    println!(
        "bench views: {containers} containers of {TEST_IMAGE} per variant, {WINDOW_SECS} s windows; runc, then eci (from {}), then lxcfs",
        binaries.display()
    );
    let mut results = Vec::new();
    for variant in Variant::ALL {
        let result = measure_variant(variant, containers, clk_tck, &dir, binaries)
            .with_context(|| format!("the {} variant", variant.name()))?;
        results.push(result);
    }
    let baseline: Vec<f64> = results[0].loads.iter().map(|l| l.reads_per_s).collect();
    let report = Report {
        containers,
        clk_tck,
        results,
        baseline,
    };
    report.print();
    let mut json = report.json();
    json["eci_binaries"] = json!(binaries.display().to_string());
    Ok(json)
}

struct Load {
    file: &'static str,
    reader: Reader,
    reads: u64,
    reads_per_s: f64,
    server_cpu: Option<f64>,
    late: Vec<String>,
}

struct Seen {
    mem_total: String,
    processors: String,
    online: String,
}

impl Seen {
    fn json(&self) -> Value {
        json!({
            "meminfo_mem_total": self.mem_total,
            "cpuinfo_processors": self.processors,
            "cpu_online": self.online,
        })
    }
}

struct VariantResult {
    variant: Variant,
    server: Option<String>,
    idle_cpu: Option<f64>,
    loads: Vec<Load>,
    seen: Seen,
    /// LXCFS only, when this run started it: the same container under
    /// `lxcfs --enable-cfs -l` (the CPU views follow the CFS quota).
    seen_with_cfs: Option<Seen>,
}

fn measure_variant(
    variant: Variant,
    containers: usize,
    clk_tck: f64,
    dir: &Path,
    binaries: &Path,
) -> Result<VariantResult> {
    let server = match variant {
        Variant::Runc => None,
        Variant::Eci => Some(start_agent(dir, binaries)?),
        Variant::Lxcfs => Some(lxcfs(dir, &[])?),
    };
    let label = format!("{LABEL}={}", std::process::id());
    // Declared after the server: dropped (its containers removed) first.
    let fleet = Fleet {
        label: label.clone(),
    };
    let started = Instant::now();
    let names: Vec<String> = (0..containers)
        .map(|i| format!("{LABEL}-{}-{i}", variant.name()))
        .collect();
    for name in &names {
        fleet.run_detached(variant, name)?;
    }
    println!(
        "bench views: {}: {containers} containers started in {:.1} s",
        variant.name(),
        started.elapsed().as_secs_f64()
    );
    // Start-up work (registration, first renders) out of the windows.
    std::thread::sleep(Duration::from_secs(2));
    let idle_cpu = match &server {
        Some(server) => {
            let before = cpu_ticks(server.pid)?;
            let at = Instant::now();
            std::thread::sleep(Duration::from_secs(WINDOW_SECS));
            let ticks = cpu_ticks(server.pid)? - before;
            let pct = percent(ticks, clk_tck, at.elapsed());
            println!(
                "bench views: {}: idle, {}: {pct:.2}% of one core",
                variant.name(),
                server.what
            );
            Some(pct)
        }
        None => None,
    };
    let mut loads = Vec::new();
    for (file, reader) in LOADS {
        let load = loaded_window(&names, file, reader, server.as_ref(), clk_tck)
            .with_context(|| format!("{} reading {file} with {}", variant.name(), reader.name()))?;
        println!(
            "bench views: {}: {file} ({}): {:.0} reads/s, server {}",
            variant.name(),
            reader.name(),
            load.reads_per_s,
            load.server_cpu
                .map(|c| format!("{c:.1}% of one core"))
                .unwrap_or_else(|| "none".into())
        );
        loads.push(load);
    }
    fleet.remove_all();
    let seen = fleet.seen(variant)?;
    drop(fleet);
    let what = server.as_ref().map(|s| s.what.clone());
    let ours = server.as_ref().is_some_and(|s| s.child.is_some());
    drop(server);
    // What LXCFS can show when told to follow the CFS quota (only with an
    // LXCFS of this run's: the machine's own is not restarted).
    let seen_with_cfs = if variant == Variant::Lxcfs && ours {
        let _cfs = lxcfs(dir, &["--enable-cfs", "-l"])?;
        let fleet = Fleet { label };
        Some(fleet.seen(variant)?)
    } else {
        None
    };
    Ok(VariantResult {
        variant,
        server: what,
        idle_cpu,
        loads,
        seen,
        seen_with_cfs,
    })
}

/// Every container reads `file` in a loop for the window, all starting at
/// the same second; the server's CPU is measured over that window.
fn loaded_window(
    names: &[String],
    file: &'static str,
    reader: Reader,
    server: Option<&Server>,
    clk_tck: f64,
) -> Result<Load> {
    struct Exec {
        name: String,
        child: Child,
        stdin: Option<ChildStdin>,
        lines: mpsc::Receiver<util::Line>,
    }
    // Killed on any early return (their loops end with their window anyway).
    struct Execs(Vec<Exec>);
    impl Drop for Execs {
        fn drop(&mut self) {
            for e in &mut self.0 {
                let _ = e.child.kill();
                let _ = e.child.wait();
            }
        }
    }
    let mut execs = Execs(Vec::new());
    for name in names {
        let mut child = Command::new("docker")
            .args(["exec", "-i", name, "sh", "-c", LOOP_SCRIPT, "loop", file])
            .arg(reader.name())
            .arg(WINDOW_SECS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting docker exec")?;
        let stdin = child.stdin.take();
        let lines = util::line_channel(child.stdout.take().context("docker exec stdout")?);
        execs.0.push(Exec {
            name: name.clone(),
            child,
            stdin,
            lines,
        });
    }
    // A line, or an error when the exec ends or says nothing in time.
    let next_line = |e: &Exec, limit: Duration| -> Result<String> {
        match e.lines.recv_timeout(limit) {
            Ok(util::Line::Out(line) | util::Line::Err(line)) => Ok(line.trim().to_owned()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "{}: docker exec said nothing for {} s",
                    e.name,
                    limit.as_secs()
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{}: docker exec ended early", e.name)
            }
        }
    };
    for e in &execs.0 {
        let line = next_line(e, Duration::from_secs(60))?;
        if line != "ready" {
            bail!("{}: expected `ready` from its loop, got {line:?}", e.name);
        }
    }
    // At least a second ahead: every loop waits for it, polling `date`.
    let start = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 2;
    for e in &mut execs.0 {
        let mut stdin = e.stdin.take().context("docker exec stdin")?;
        writeln!(stdin, "{start}").with_context(|| format!("{}: writing the start", e.name))?;
    }
    sleep_until(start);
    let before = server.map(|s| cpu_ticks(s.pid)).transpose()?;
    let at = Instant::now();
    sleep_until(start + WINDOW_SECS);
    let server_cpu = match (server, before) {
        (Some(s), Some(before)) => Some(percent(cpu_ticks(s.pid)? - before, clk_tck, at.elapsed())),
        _ => None,
    };
    let (mut reads, mut late) = (0u64, Vec::new());
    for e in &mut execs.0 {
        let (mut count, mut began) = (None, None);
        while began.is_none() {
            let line = next_line(e, Duration::from_secs(60))?;
            if let Some(n) = line.strip_prefix("count ") {
                count = n.parse::<u64>().ok();
            } else if let Some(s) = line.strip_prefix("began ") {
                began = s.parse::<u64>().ok();
            }
        }
        let status = e.child.wait()?;
        let (Some(count), Some(began)) = (count, began) else {
            bail!("{}: its loop reported no count ({status})", e.name);
        };
        if began != start {
            late.push(format!("{} began at {began}, not {start}", e.name));
        }
        reads += count;
    }
    if !late.is_empty() {
        println!("bench views: warning: late loops: {}", late.join("; "));
    }
    Ok(Load {
        file,
        reader,
        reads,
        reads_per_s: reads as f64 / WINDOW_SECS as f64,
        server_cpu,
        late,
    })
}

fn sleep_until(epoch_secs: u64) {
    let target = UNIX_EPOCH + Duration::from_secs(epoch_secs);
    if let Ok(wait) = target.duration_since(SystemTime::now()) {
        std::thread::sleep(wait);
    }
}

fn percent(ticks: u64, clk_tck: f64, over: Duration) -> f64 {
    ticks as f64 / clk_tck / over.as_secs_f64() * 100.0
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command, which may hold spaces and parentheses.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: {text:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime (14) and stime (15).
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} in {text:?}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

fn clock_ticks() -> f64 {
    util::output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One variant's containers: all removed when dropped, even on error.
struct Fleet {
    /// `eci-bench-views=<pid>`.
    label: String,
}

impl Fleet {
    fn run_detached(&self, variant: Variant, name: &str) -> Result<()> {
        let out = Command::new("docker")
            .args(["run", "-d", "--name", name, "--label", &self.label])
            .args(variant.run_args())
            .args([TEST_IMAGE, "sleep", "1000000"])
            .output()
            .context("starting docker run")?;
        if !out.status.success() {
            bail!(
                "docker run {name} ({}) failed: {}",
                variant.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// MemTotal, the `processor` lines of /proc/cpuinfo and
    /// /sys/devices/system/cpu/online in a `--cpus=1 -m 256m` container.
    fn seen(&self, variant: Variant) -> Result<Seen> {
        let out = Command::new("docker")
            .args(["run", "--rm", "--label", &self.label])
            .args(["--name", &format!("{LABEL}-{}-seen", variant.name())])
            .args(variant.run_args())
            .args([
                "--cpus=1",
                "-m",
                "256m",
                TEST_IMAGE,
                "sh",
                "-c",
                SEEN_SCRIPT,
            ])
            .output()
            .context("starting docker run")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "docker run --cpus=1 -m 256m ({}) failed: {}{}",
                variant.name(),
                text,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pick = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "?".into())
        };
        Ok(Seen {
            mem_total: pick("MemTotal:"),
            processors: pick("processors "),
            online: pick("online "),
        })
    }

    fn remove_all(&self) {
        remove_labelled(&self.label);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// `docker rm -f` of every container with this label (`key` or `key=value`).
fn remove_labelled(label: &str) {
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return;
    }
    let removed = Command::new("docker")
        .args(["rm", "-f"])
        .args(&ids)
        .stdout(Stdio::null())
        .status();
    if !removed.is_ok_and(|s| s.success()) {
        eprintln!(
            "bench views: warning: `docker rm -f` of {} containers labelled {label} failed",
            ids.len()
        );
    }
}

/// The eci agent or the LXCFS daemon; stopped when dropped if this run
/// started it.
struct Server {
    what: String,
    pid: u32,
    child: Option<Child>,
    /// Unmounted (lazily) after it stops, if still mounted.
    unmount: Option<PathBuf>,
    /// Removed after it stops.
    remove: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(point) = &self.unmount
                && is_mount_point(point)
            {
                let _ = Command::new("umount").arg("-l").arg(point).status();
            }
            if let Some(dir) = &self.remove {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn is_mount_point(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(path.as_ref()))
    })
}

/// The last lines of a log, for errors.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(8);
    format!("{}:\n{}", path.display(), lines[from..].join("\n"))
}

/// Waits for `ready`, failing early when the child exits.
fn wait_ready(child: &mut Child, what: &str, log: &Path, ready: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}); {}", log_tail(log));
        }
        if Instant::now() > deadline {
            bail!("{what} not ready after 30 s; {}", log_tail(log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The agent (unenforced, as the start-up bench runs it: registration and
/// the views, no kernel part) and the runtime `eci-bench-views` using it.
fn start_agent(dir: &Path, binaries: &Path) -> Result<Server> {
    let target = binaries.to_owned();
    let run = PathBuf::from(RUN_DIR);
    let _ = std::fs::remove_dir_all(&run);
    // Traversable by the containers' roots; what is inside is made by the
    // agent and eci-runc, as they want it.
    std::fs::create_dir_all(&run)?;
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // In a directory of its own: the agent keeps its socket's private.
    let socket = run.join("agent/agent.sock");
    // The built-in defaults are locked, which refuses the unenforced mode.
    let policy = dir.join("policy.json");
    std::fs::write(&policy, "{}\n")?;
    let log = dir.join("agent.log");
    let log_file = std::fs::File::create(&log)?;
    let mut child = crate::showcase::unenforced_agent(&target, &socket, dir, &policy)
        .arg("--views-dir")
        .arg(run.join("views"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", target.join("eci-agent").display()))?;
    let pid = child.id();
    let server = |child| Server {
        what: "eci-agent".into(),
        pid,
        child: Some(child),
        unmount: None,
        remove: Some(run.clone()),
    };
    if let Err(e) = wait_ready(&mut child, "eci-agent", &log, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    }) {
        drop(server(child));
        return Err(e);
    }
    let server = server(child);
    let wrapper = dir.join("eci-runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport ECI_AGENT_SOCKET={} ECI_STATE_DIR={} ECI_RUNC_RUN_DIR={} ECI_VIEWS_DIR={}\nexec {} \"$@\"\n",
            util::shell_quote(&socket.to_string_lossy()),
            util::shell_quote(&run.join("state").to_string_lossy()),
            util::shell_quote(&run.join("run").to_string_lossy()),
            util::shell_quote(&run.join("views").to_string_lossy()),
            util::shell_quote(&target.join("eci-runc").to_string_lossy()),
        ),
    )?;
    util::run(Command::new("chmod").arg("755").arg(&wrapper))?;
    register_runtime(&wrapper)?;
    Ok(server)
}

/// Adds the runtime to /etc/docker/daemon.json (kept, like `eci-bench`)
/// and has dockerd reload it.
fn register_runtime(wrapper: &Path) -> Result<()> {
    let daemon_json = Path::new("/etc/docker/daemon.json");
    let mut config: Value = std::fs::read_to_string(daemon_json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    let entry = json!({ "path": wrapper.display().to_string() });
    if config["runtimes"][RUNTIME] != entry {
        config["runtimes"][RUNTIME] = entry;
        std::fs::create_dir_all("/etc/docker")?;
        std::fs::write(daemon_json, serde_json::to_string_pretty(&config)? + "\n")?;
    }
    util::run(Command::new("sh").args(["-c", "kill -HUP $(pidof dockerd)"]))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let runtimes =
            util::output(Command::new("docker").args(["info", "--format", "{{json .Runtimes}}"]))?;
        if runtimes.contains(&format!("\"{RUNTIME}\"")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "dockerd did not take the runtime {RUNTIME} from {}",
                daemon_json.display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A running LXCFS at [`LXCFS_MOUNT`]: the machine's own if one serves it
/// (kept running; `flags` then ignored), else one started here with `flags`
/// (Debian's lxcfs.service runs it with none).
fn lxcfs(dir: &Path, flags: &[&str]) -> Result<Server> {
    let meminfo = Path::new(LXCFS_MOUNT).join("proc/meminfo");
    if let Some(pid) = running_lxcfs()
        && std::fs::read_to_string(&meminfo).is_ok()
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        println!(
            "bench views: using the running LXCFS (pid {pid}: {})",
            cmdline.trim()
        );
        return Ok(Server {
            what: format!("lxcfs (running: {})", cmdline.trim()),
            pid,
            child: None,
            unmount: None,
            remove: None,
        });
    }
    if util::which("lxcfs").is_none() {
        println!("bench views: installing lxcfs (apt-get install -y lxcfs)");
        util::run(Command::new("apt-get").args(["install", "-y", "lxcfs"]))
            .context("lxcfs is not installed and `apt-get install -y lxcfs` failed")?;
    }
    // A mount left by a LXCFS that died.
    if is_mount_point(Path::new(LXCFS_MOUNT)) {
        let _ = Command::new("umount").args(["-l", LXCFS_MOUNT]).status();
    }
    std::fs::create_dir_all(LXCFS_MOUNT)?;
    let log = dir.join("lxcfs.log");
    let log_file = std::fs::File::create(&log)?;
    let mut child = Command::new("lxcfs")
        .arg("-f")
        .args(flags)
        .arg("-p")
        .arg(dir.join("lxcfs.pid"))
        .arg(LXCFS_MOUNT)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting lxcfs")?;
    let pid = child.id();
    let what = format!("lxcfs {}", flags.join(" ")).trim().to_owned();
    let ready = wait_ready(&mut child, "lxcfs", &log, || {
        is_mount_point(Path::new(LXCFS_MOUNT)) && std::fs::read_to_string(&meminfo).is_ok()
    });
    let server = Server {
        what,
        pid,
        child: Some(child),
        unmount: Some(LXCFS_MOUNT.into()),
        remove: None,
    };
    ready?;
    Ok(server)
}

/// The kernel, CPUs and Docker Engine the figures come from.
fn host_facts() -> Value {
    let out = |cmd: &mut Command| util::output(cmd).ok().map(|t| t.trim().to_owned());
    json!({
        "kernel": out(Command::new("uname").arg("-r")),
        "cpus": out(&mut Command::new("nproc")),
        "docker": out(Command::new("docker").args([
            "info",
            "--format",
            "{{.ServerVersion}}, cgroup v{{.CgroupVersion}}, {{.CgroupDriver}} driver",
        ])),
    })
}

/// `lxcfs --version` (printed on stderr).
fn lxcfs_version() -> Option<String> {
    let out = Command::new("lxcfs").arg("--version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some(text.trim().trim_matches('"').to_owned()).filter(|t| !t.is_empty())
}

fn running_lxcfs() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "lxcfs").then_some(pid)
    })
}

struct Report {
    containers: usize,
    clk_tck: f64,
    results: Vec<VariantResult>,
    /// runc's reads/s per load.
    baseline: Vec<f64>,
}

impl Report {
    fn print(&self) {
        let pct = |v: Option<f64>| v.map(|c| format!("{c:.1}%")).unwrap_or_else(|| "-".into());
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        rows.push((
            "server".into(),
            self.results
                .iter()
                .map(|r| match r.variant {
                    Variant::Runc => "none".into(),
                    Variant::Eci => "eci-agent".into(),
                    Variant::Lxcfs => "lxcfs".into(),
                })
                .collect(),
        ));
        rows.push((
            format!("idle {WINDOW_SECS} s: server CPU"),
            self.results.iter().map(|r| pct(r.idle_cpu)).collect(),
        ));
        for (i, (file, reader)) in LOADS.iter().enumerate() {
            let title = format!("{file} ({})", reader.name());
            rows.push((
                format!("{title}: reads/s"),
                self.results
                    .iter()
                    .map(|r| format!("{:.0}", r.loads[i].reads_per_s))
                    .collect(),
            ));
            rows.push((
                "  vs runc".into(),
                self.results
                    .iter()
                    .map(|r| format!("{:.2}", r.loads[i].reads_per_s / self.baseline[i]))
                    .collect(),
            ));
            rows.push((
                "  server CPU".into(),
                self.results
                    .iter()
                    .map(|r| pct(r.loads[i].server_cpu))
                    .collect(),
            ));
        }
        type Pick = fn(&Seen) -> String;
        let seen_rows: [(&str, Pick); 3] = [
            ("--cpus=1 -m 256m: MemTotal", |s| s.mem_total.clone()),
            ("  cpuinfo processors", |s| s.processors.clone()),
            ("  cpu/online", |s| s.online.clone()),
        ];
        for (title, pick) in seen_rows {
            rows.push((
                title.into(),
                self.results.iter().map(|r| pick(&r.seen)).collect(),
            ));
        }
        let first = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        let width = rows
            .iter()
            .flat_map(|(_, cells)| cells.iter().map(String::len))
            .max()
            .unwrap_or(0)
            .max(6);
        println!(
            "\nviews bench: {} containers of {TEST_IMAGE} per variant, {WINDOW_SECS} s windows, CPU in % of one core (utime+stime), one run",
            self.containers
        );
        let mut header = format!("{:first$}", "");
        for r in &self.results {
            header.push_str(&format!("  {:>width$}", r.variant.name()));
        }
        println!("{header}");
        for (title, cells) in &rows {
            let mut line = format!("{title:first$}");
            for cell in cells {
                line.push_str(&format!("  {cell:>width$}"));
            }
            println!("{line}");
        }
        for r in &self.results {
            if let Some(s) = &r.seen_with_cfs {
                println!(
                    "with `lxcfs --enable-cfs -l`: MemTotal {}, cpuinfo processors {}, cpu/online {}",
                    s.mem_total, s.processors, s.online
                );
            }
        }
        println!(
            "readers: read = {}; cat = {}",
            Reader::Read.describe(),
            Reader::Cat.describe()
        );
    }

    fn json(&self) -> Value {
        let variants: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                let loads: Vec<Value> = r
                    .loads
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        json!({
                            "file": l.file,
                            "reader": l.reader.name(),
                            "reads": l.reads,
                            "reads_per_s": l.reads_per_s,
                            "ratio_to_runc": l.reads_per_s / self.baseline[i],
                            "server_cpu_pct_of_one_core": l.server_cpu,
                            "late_loops": l.late,
                        })
                    })
                    .collect();
                json!({
                    "variant": r.variant.name(),
                    "server": r.server,
                    "idle_server_cpu_pct_of_one_core": r.idle_cpu,
                    "loads": loads,
                    "cpus_1_memory_256m": r.seen.json(),
                    "cpus_1_memory_256m_lxcfs_enable_cfs": r.seen_with_cfs.as_ref().map(Seen::json),
                })
            })
            .collect();
        json!({
            "benchmark": "views",
            "containers": self.containers,
            "image": TEST_IMAGE,
            "window_s": WINDOW_SECS,
            "clk_tck": self.clk_tck,
            "readers": {
                "read": Reader::Read.describe(),
                "cat": Reader::Cat.describe(),
            },
            "lxcfs_version": lxcfs_version(),
            "host": host_facts(),
            "variants": variants,
        })
    }
}
