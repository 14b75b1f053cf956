//! The escape suite: real attacks from inside containers, in the VM with
//! dockerd, each run three ways — with eci (`--runtime=eci`, under the
//! protected `/docker` parent); with plain runc in a cgroup outside every
//! protected parent (`--runtime=runc-real --cgroup-parent=/eci-baseline`),
//! so that no attack passes vacuously: that run shows the attack works
//! there, or records that runc alone already stops it; and with plain runc
//! under the protected parent (`--runtime=runc-real`, a runtime an
//! administrator registered that bypasses eci-runc), which must be blocked
//! or refused to run. (`--runtime=runc` itself is eci: eci-runc stands in
//! for `runc` on the engine's PATH.) Every attack must be stopped with eci;
//! the kernel's refusals are in the audit log with the container's cgroup.
//! (A masked /proc file is /dev/null inside: writing to it reaches nothing,
//! so the attacks check what they write to.)
//!
//! `runtime_exe_overwrite` (CVE-2019-5736 pattern) has a run of its own per
//! runtime: a detached container whose payload waits for the runtime, and a
//! `docker exec` that brings the runtime in; it is judged by the payload's
//! report and by the runtime binaries, hashed before and after. Both runs
//! use a writable copy of runc (`eci-writable-runc`, `runc-writable`): the
//! VM's own runc is on its read-only root, which would refuse the write
//! whatever eci or runc did.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use eci_integration_tests::{
    bpf_lsm_or_skip,
    engine::{
        Engine, IMAGE, docker, engine_or_skip, protected_engine, runc_binary, text,
        wait_container_denial,
    },
};

/// `a NAME COMMAND...` runs one attack and prints `ESCAPE NAME escaped`
/// or `ESCAPE NAME blocked: <last line of its output>`.
const HARNESS: &str = r#"a() { n=$1; shift; if o=$("$@" 2>&1); then echo "ESCAPE $n escaped"; else echo "ESCAPE $n blocked: $(echo "$o" | tail -n 1 | head -c 160)"; fi; }
"#;

/// Attacks that need no special `docker run` flag beyond `--privileged`.
const IN_CONTAINER: &[(&str, &str)] = &[
    (
        "socket_hard_link",
        "eci-test-client stream /share/hard-link.sock",
    ),
    ("vm_block_device", "mount -t ext2 \"$DEV\" /mnt"),
    ("debugfs", "mount -t debugfs none /mnt"),
    (
        "unmask_proc_kcore",
        "sh -c 'umount /proc/kcore 2>/dev/null; head -c 4 /proc/kcore | grep -q ELF'",
    ),
    (
        "remount_proc_sys_rw",
        "sh -c 'mount -o remount,rw /proc/sys 2>/dev/null; echo 3 > /proc/sys/vm/drop_caches'",
    ),
    (
        "sysrq_trigger",
        "sh -c 'umount /proc/sysrq-trigger 2>/dev/null; test ! -c /proc/sysrq-trigger && echo h > /proc/sysrq-trigger'",
    ),
    (
        "core_pattern",
        "sh -c 'mount -o remount,rw /proc/sys 2>/dev/null; p=$(cat /proc/sys/kernel/core_pattern); echo \"$p\" > /proc/sys/kernel/core_pattern'",
    ),
    (
        "cgroup_v1_release_agent",
        "sh -c 'mount -t cgroup -o none,name=eciescape cgroup /tmp && echo /bin/true > /tmp/release_agent'",
    ),
    ("load_bpf_program", "eci-test-client bpf-prog -"),
    ("vm_keyring", "eci-test-client key-find eci-vm-secret"),
    ("perf_event_open_vm", "eci-test-client perf -"),
    ("kernel_module", "eci-test-client module eci_no_such_module"),
    // Device nodes that came with the image (not in /dev): the VM's disk
    // (the loop device) and kernel log.
    (
        "device_node_in_image_disk",
        "sh -c 'head -c 2048 /vmnodes/$(basename \"$DEV\") > /dev/null'",
    ),
    ("device_node_in_image_kmsg", "head -n 1 /vmnodes/kmsg"),
    // Out of every cgroup: the cgroup2 root, and a task moved into it.
    (
        "cgroup_move_to_vm_root",
        "sh -c 'mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg && { test -d /tmp/cg/docker || { echo no VM cgroup tree here, only its own; exit 1; }; } && echo $$ > /tmp/cg/cgroup.procs'",
    ),
];

/// `docker volume create` arguments of the volumes the attacks use
/// (`{dev}`: the loop device).
const VOLUMES: &[&[&str]] = &[
    &[
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        "device=/etc",
        "eci-vol-etc",
    ],
    &[
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        "device=/run",
        "eci-vol-run",
    ],
    &[
        "--opt",
        "type=ext2",
        "--opt",
        "device={dev}",
        "eci-vol-disk",
    ],
];

/// A cgroup parent 20 levels deep (`{deep}` in the flags): under the
/// protected parent for the run that must be refused, elsewhere for eci.
const DEEP_PARENT: &str =
    "/eci-deep/l1/l2/l3/l4/l5/l6/l7/l8/l9/l10/l11/l12/l13/l14/l15/l16/l17/l18/l19";

/// Attacks that need a `docker run` flag eci-runc refuses: (name, flags,
/// command). `{sock}` and `{victim}` are filled in.
const WITH_FLAGS: &[(&str, &str, &str)] = &[
    (
        "socket_bind_mount",
        "-v {sock}:/var/run/docker.sock",
        "eci-test-client stream /var/run/docker.sock",
    ),
    (
        "socket_via_proc_pid_root",
        "--pid=host",
        "eci-test-client stream /proc/1/root{sock}",
    ),
    ("bind_vm_etc", "-v /etc:/vm-etc", "ls /vm-etc/passwd"),
    (
        "bind_vm_var_lib_docker",
        "-v /var/lib/docker:/vm-docker",
        "ls /vm-docker/containers",
    ),
    (
        "nsenter_vm_namespaces",
        "--pid=host --privileged",
        "nsenter -t 1 -m -u -i -n -p true",
    ),
    (
        "kill_the_agent",
        "--pid=host --privileged",
        "kill -0 {agent}",
    ),
    (
        "ptrace_vm_process",
        "--pid=host --privileged",
        "eci-test-client ptrace {victim}",
    ),
    // The VM's network namespace file, bound into the shareable directory
    // by a VM process after the other attacks ran (eci-runc judges every
    // mount below a recursive bind source, so it refuses the share then).
    (
        "setns_smuggled_ns_file",
        "--privileged -v {share}:/share",
        "nsenter --net=/share/vm-net true",
    ),
    // `--runtime=runc` needs no privilege: the opt-out anyone can type.
    (
        "runtime_flag_runc",
        "--runtime=runc -v /etc:/vm-etc",
        "head -c 1 /vm-etc/shadow",
    ),
    // Volumes the engine mounts from what the request said: a bind of the
    // VM's /etc (made with `volume create`, and inline with --mount), of
    // its /run (the engine's sockets), a mount of its disk. Made by the test
    // before the runs (see VOLUMES).
    (
        "volume_bind_vm_etc",
        "-v eci-vol-etc:/vol-etc",
        "head -c 1 /vol-etc/shadow",
    ),
    (
        "volume_inline_bind_vm_etc",
        "--mount type=volume,src=eci-vol-inline,dst=/vol-inline,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/etc",
        "head -c 1 /vol-inline/shadow",
    ),
    (
        "volume_bind_vm_run",
        "-v eci-vol-run:/vol-run",
        "eci-test-client stream /vol-run/containerd/containerd.sock",
    ),
    (
        "volume_block_device",
        "-v eci-vol-disk:/vol-disk",
        "ls /vol-disk/lost+found",
    ),
    // A cgroup deeper than a fixed ancestor walk looks.
    (
        "deep_cgroup_parent",
        "--cgroup-parent={deep} --mount type=bind,src={share},dst=/share,bind-nonrecursive=true",
        "eci-test-client stream /share/hard-link.sock",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Escaped,
    Blocked(String),
}

fn parse(out: &str) -> BTreeMap<String, Verdict> {
    out.lines()
        .filter_map(|l| l.strip_prefix("ESCAPE "))
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let verdict = match rest.strip_prefix("blocked: ") {
                Some(why) => Verdict::Blocked(why.to_owned()),
                None if rest == "escaped" => Verdict::Escaped,
                None => return None,
            };
            Some((name.to_owned(), verdict))
        })
        .collect()
}

/// Run `attacks` in one container with `runtime` and `flags`; a container
/// that does not run at all blocks every one of them, with docker's reason.
fn run_group(
    engine: &Engine,
    runtime: &[&str],
    flags: &[&str],
    attacks: &[(&str, String)],
) -> BTreeMap<String, Verdict> {
    let (started, out) = run(engine, runtime, flags, &script(attacks));
    let mut verdicts = parse(&out);
    if !started && verdicts.is_empty() {
        // Docker's own error line says why; else the last line.
        let line = out
            .lines()
            .rev()
            .find(|l| l.contains("Error response") || l.contains("exec "))
            .or_else(|| out.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("(no output)");
        // Its last 90 characters: the reason ends the line.
        let from = line.char_indices().rev().nth(89).map_or(0, |(i, _)| i);
        let why = &line[from..];
        for (name, _) in attacks {
            verdicts.insert(
                (*name).to_owned(),
                Verdict::Blocked(format!("refused to run: {why}")),
            );
        }
    }
    verdicts
}

fn script(attacks: &[(&str, String)]) -> String {
    let mut s = HARNESS.to_owned();
    for (name, command) in attacks {
        s.push_str(&format!("a {name} {command}\n"));
    }
    s
}

fn run(engine: &Engine, runtime: &[&str], flags: &[&str], script: &str) -> (bool, String) {
    let mut args = vec!["run", "--rm", "--network=none"];
    args.extend_from_slice(runtime);
    args.extend_from_slice(flags);
    args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
    let out = docker(engine, &args);
    (out.status.success(), text(&out))
}

/// An ext2 image on a loop device: the VM's "disk" for the block-device attack.
fn loop_device(dir: &std::path::Path) -> Option<String> {
    let image = dir.join("disk.img");
    let _ = Command::new("modprobe").arg("loop").status();
    let ok = Command::new("truncate")
        .args(["-s", "8M"])
        .arg(&image)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("mke2fs")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&image)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The attack with a run of its own (see the module's documentation).
const RUNTIME_EXE: &str = "runtime_exe_overwrite";

/// The VM's runtime binaries a write through `/proc/<pid>/exe` could reach:
/// runc (the one eci-runc and dockerd run), the shim, containerd, dockerd
/// and eci-runc.
fn runtime_binaries() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = vec![runc_binary()];
    found.extend(
        ["containerd-shim-runc-v2", "containerd", "dockerd"]
            .iter()
            .map(|name| {
                let out = Command::new("sh")
                    .args(["-c", &format!("command -v {name}")])
                    .output()
                    .expect("sh");
                let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                assert!(!path.is_empty(), "{name} is not on PATH in the VM");
                std::fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(path))
            }),
    );
    found.push(eci_integration_tests::workspace_bin("eci-runc"));
    found
}

/// `sha256sum` of each binary.
fn hashes(binaries: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    binaries
        .iter()
        .map(|b| {
            let out = Command::new("sha256sum")
                .arg(b)
                .output()
                .expect("sha256sum");
            assert!(
                out.status.success(),
                "sha256sum {}: {}",
                b.display(),
                text(&out)
            );
            let sum = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            (b.clone(), sum)
        })
        .collect()
}

/// What the CVE-2019-5736 payload reported from one container.
struct ExeOverwrite {
    /// Every `runtime-exe:` line, in order.
    report: Vec<String>,
    /// The `result ...` line's text.
    result: String,
}

impl ExeOverwrite {
    /// Escaped if the runtime's binary changed, whatever the payload said;
    /// else the payload's verdict.
    fn verdict(&self, runtime_changed: bool) -> Verdict {
        match self.result.strip_prefix("blocked: ") {
            Some(why) if !runtime_changed => Verdict::Blocked(why.to_owned()),
            _ => Verdict::Escaped,
        }
    }
}

/// Run the payload in a detached container with `runtime` flags, bring the
/// runtime in with `docker exec` (again, up to three times, until the
/// payload reports) and return its report. The container is removed.
fn runtime_exe_overwrite(engine: &Engine, runtime: &[&str], runc_size: u64) -> ExeOverwrite {
    let name = eci_integration_tests::unique("eci-exe");
    let size = runc_size.to_string();
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--network=none",
        "--privileged",
    ];
    args.extend_from_slice(runtime);
    args.extend_from_slice(&[IMAGE, "eci-test-client", "runtime-exe", &size]);
    let started = docker(engine, &args);
    assert!(
        started.status.success(),
        "{RUNTIME_EXE} {runtime:?}: docker run -d: {}",
        text(&started)
    );
    let logs = || text(&docker(engine, &["logs", &name]));
    let wait_for = |needle: &str, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let out = logs();
            if out.contains(needle) || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let ready = wait_for("runtime-exe: ready", Duration::from_secs(120));
    // The script the payload planted: /bin/sh, or its fallback.
    let target = ready
        .lines()
        .find_map(|l| l.strip_prefix("runtime-exe: ready: exec "))
        .unwrap_or_else(|| {
            panic!("{RUNTIME_EXE} {runtime:?}: the payload did not get ready:\n{ready}")
        })
        .trim()
        .to_owned();
    let mut out = String::new();
    for attempt in 1..=3 {
        // The target is `#!/proc/self/exe` now: the runtime executes itself.
        let exec = docker(engine, &["exec", &name, &target, "-c", "true"]);
        println!(
            "{RUNTIME_EXE} {runtime:?}: docker exec #{attempt}: {}",
            text(&exec).lines().next().unwrap_or("(no output)")
        );
        out = wait_for("runtime-exe: result", Duration::from_secs(90));
        if out.contains("runtime-exe: result") {
            break;
        }
    }
    let _ = docker(engine, &["rm", "-f", &name]);
    let report: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("runtime-exe: "))
        .map(str::to_owned)
        .collect();
    let result = report
        .iter()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| {
            panic!("{RUNTIME_EXE} {runtime:?}: the payload never reported a result:\n{out}")
        })
        .to_owned();
    // Not vacuous: the runtime must have come into the container.
    assert!(
        !result.starts_with("none-seen") && !result.starts_with("error"),
        "{RUNTIME_EXE} {runtime:?}: the payload never saw the runtime's process during docker exec, so it proves nothing:\n{out}"
    );
    ExeOverwrite { report, result }
}

struct Victim(Child);

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn escape_suite_every_attack_is_stopped_with_eci_and_shown_against_plain_runc() {
    let name = "escape_suite_every_attack_is_stopped_with_eci_and_shown_against_plain_runc";
    if !bpf_lsm_or_skip(name) {
        return;
    }
    if !engine_or_skip(name) {
        return;
    }
    let (agent, engine) = protected_engine("eci-escape");
    let sock = engine.socket().display().to_string();
    let share = engine.share();
    std::fs::hard_link(engine.socket(), share.join("hard-link.sock")).expect("hard link");
    let device = loop_device(engine.dir.path());
    let victim = Victim(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep"),
    );
    let agent_pid = agent.child.as_ref().map(|c| c.id()).unwrap_or(1);
    // A secret in the VM root's user keyring.
    let key = Command::new(eci_integration_tests::test_client())
        .args(["key-add", "eci-vm-secret"])
        .output()
        .expect("key-add");
    assert!(key.status.success(), "key-add: {key:?}");
    let share_dir = share.display().to_string();
    let fill_deep = |s: &str, deep: &str| {
        s.replace("{sock}", &sock)
            .replace("{victim}", &victim.0.id().to_string())
            .replace("{agent}", &agent_pid.to_string())
            .replace("{share}", &share_dir)
            .replace("{deep}", deep)
    };
    let fill = |s: &str| fill_deep(s, DEEP_PARENT);
    let share_flag = format!("{}:/share", share.display());
    let dev_env = format!(
        "DEV={}",
        device.clone().unwrap_or_else(|| "/dev/none".into())
    );
    let mut common = vec!["--privileged", "-v", &share_flag, "-e", &dev_env];
    let in_container: Vec<(&str, String)> = IN_CONTAINER
        .iter()
        .filter(|(n, _)| {
            device.is_some() || !["vm_block_device", "device_node_in_image_disk"].contains(n)
        })
        .map(|(n, c)| (*n, c.to_string()))
        .collect();
    if device.is_none() {
        println!(
            "SKIP PART: {name}: vm_block_device: no loop device in this VM (modprobe loop failed)"
        );
    }

    let dev_path = device.clone().unwrap_or_else(|| "/dev/none".into());
    for volume in VOLUMES {
        if device.is_none() && volume.iter().any(|a| a.contains("{dev}")) {
            continue;
        }
        let mut args = vec!["volume", "create"];
        let filled: Vec<String> = volume
            .iter()
            .map(|a| a.replace("{dev}", &dev_path))
            .collect();
        args.extend(filled.iter().map(String::as_str));
        let out = docker(&engine, &args);
        assert!(
            out.status.success(),
            "volume create {volume:?}: {}",
            text(&out)
        );
    }
    let with_flags: Vec<&(&str, &str, &str)> = WITH_FLAGS
        .iter()
        .filter(|(n, _, _)| device.is_some() || *n != "volume_block_device")
        .collect();

    let binaries = runtime_binaries();
    let runc_size = std::fs::metadata(runc_binary()).expect("runc").len();
    let before = hashes(&binaries);
    let writable_runc = [engine.writable_runc()];
    let writable_before = hashes(&writable_runc);

    // With eci (running the writable copy of runc, as the baseline does: the
    // VM's own runc is on the read-only root, which would refuse the write
    // whatever eci or runc did).
    let exe_with_eci = runtime_exe_overwrite(&engine, &["--runtime=eci-writable-runc"], runc_size);
    let writable_after_eci = hashes(&writable_runc);
    let (_, out) = run(&engine, &["--runtime=eci"], &common, &script(&in_container));
    let mut eci = parse(&out);
    eci.insert(
        RUNTIME_EXE.to_owned(),
        exe_with_eci.verdict(writable_after_eci != writable_before),
    );
    // Now the VM's network namespace file is smuggled into the share.
    let vm_net = engine.smuggle(Path::new("/proc/1/ns/net"), "vm-net");
    for (attack, flags, command) in with_flags.iter().copied() {
        let flags = fill(flags);
        let flags: Vec<&str> = flags.split_whitespace().collect();
        let (started, out) = run(
            &engine,
            &["--runtime=eci"],
            &flags,
            &script(&[(attack, fill(command))]),
        );
        if started {
            eci.extend(parse(&out));
        } else {
            assert!(
                out.contains("eci"),
                "{attack}: docker run failed, not by eci's refusal: {out}"
            );
            let why = out
                .lines()
                .find(|l| l.contains("eci"))
                .map(|l| {
                    let from = l.rfind("runc create failed: ").map_or(0, |i| i + 20);
                    l[from..].trim().to_owned()
                })
                .unwrap_or_default();
            eci.insert(
                attack.to_string(),
                Verdict::Blocked(format!("refused by eci-runc: {why}")),
            );
        }
    }

    // Plain runc under the protected parent (a runtime that bypasses
    // eci-runc): blocked, or refused to run.
    let under_parent = ["--runtime=runc-real"];
    let mut runc_protected = run_group(&engine, &under_parent, &common, &in_container);
    let deep_under_parent = format!("/docker{DEEP_PARENT}");
    for (attack, flags, command) in with_flags.iter().copied() {
        let flags = fill_deep(flags, &deep_under_parent);
        let flags: Vec<&str> = flags.split_whitespace().collect();
        runc_protected.extend(run_group(
            &engine,
            &under_parent,
            &flags,
            &[(attack, fill(command))],
        ));
    }

    // Plain runc, unprotected: the attacks for real.
    common.extend_from_slice(&[
        "--pid=host",
        "--cgroupns=host",
        "-v",
        "/etc:/vm-etc",
        "-v",
        "/var/lib/docker:/vm-docker",
    ]);
    let sock_flag = format!("{sock}:/var/run/docker.sock");
    common.extend_from_slice(&["-v", &sock_flag]);
    // The volumes, mounted as the attacks expect them.
    for (attack, flags, _) in &with_flags {
        if attack.starts_with("volume_") {
            common.extend(flags.split_whitespace());
        }
    }
    let mut all: Vec<(&str, String)> = in_container.clone();
    all.extend(with_flags.iter().map(|(n, _, c)| (*n, fill(c))));
    let baseline_runtime = ["--runtime=runc-real", "--cgroup-parent=/eci-baseline"];
    let (_, out) = run(&engine, &baseline_runtime, &common, &script(&all));
    let mut runc = parse(&out);
    // The same writable copy of runc, without eci.
    let exe_with_runc = runtime_exe_overwrite(
        &engine,
        &["--runtime=runc-writable", "--cgroup-parent=/eci-baseline"],
        runc_size,
    );
    let writable_changed = hashes(&writable_runc) != writable_after_eci;
    runc.insert(
        RUNTIME_EXE.to_owned(),
        exe_with_runc.verdict(writable_changed),
    );
    all.push((RUNTIME_EXE, String::new()));
    // Not vacuous: against plain runc the attack gets as far as a handle on
    // the runtime's executable, so what stops it is the last step.
    assert!(
        exe_with_runc
            .report
            .iter()
            .any(|l| l.starts_with("handle on pid")),
        "{RUNTIME_EXE}: no handle on runc's executable even without eci:\n{}",
        exe_with_runc.report.join("\n")
    );
    let after = hashes(&binaries);
    for (label, exe) in [("eci", &exe_with_eci), ("plain runc", &exe_with_runc)] {
        println!("{RUNTIME_EXE} with {label}:");
        for line in &exe.report {
            println!("  {line}");
        }
    }
    let state = |changed: bool| if changed { "CHANGED" } else { "unchanged" };
    println!(
        "{RUNTIME_EXE}: the writable copy of runc {}: {} by the eci run, {} by the plain runc run",
        writable_runc[0].display(),
        state(writable_after_eci != writable_before),
        state(writable_changed)
    );
    for (binary, sum) in &before {
        println!("{RUNTIME_EXE}: {} sha256 {sum}", binary.display());
        assert_eq!(
            after.get(binary),
            Some(sum),
            "{RUNTIME_EXE}: {} changed during the attack",
            binary.display()
        );
    }

    // The table.
    println!("escape suite ({} attacks):", all.len());
    println!(
        "{:<28} {:<50} {:<50} plain runc (unprotected)",
        "attack", "eci", "plain runc under /docker"
    );
    let mut blocked_by_eci = 0;
    let mut blocked_under_parent = 0;
    let mut blocked_by_runc = 0;
    let blocked = |v: Option<&Verdict>| usize::from(matches!(v, Some(Verdict::Blocked(_))));
    for (attack, _) in &all {
        let show = |v: Option<&Verdict>| match v {
            Some(Verdict::Escaped) => "ESCAPED".to_owned(),
            Some(Verdict::Blocked(why)) => {
                format!("blocked ({})", why.chars().take(40).collect::<String>())
            }
            None => "no result".to_owned(),
        };
        println!(
            "{attack:<28} {:<50} {:<50} {}",
            show(eci.get(*attack)),
            show(runc_protected.get(*attack)),
            show(runc.get(*attack))
        );
        blocked_by_eci += blocked(eci.get(*attack));
        blocked_under_parent += blocked(runc_protected.get(*attack));
        blocked_by_runc += blocked(runc.get(*attack));
    }
    println!("how eci stopped each:");
    for (attack, verdict) in &eci {
        if let Verdict::Blocked(why) = verdict {
            println!("  {attack}: {why}");
        }
    }
    println!(
        "escape suite: eci blocked {blocked_by_eci}/{n}; plain runc under the protected parent blocked {blocked_under_parent}/{n}; plain runc alone blocked {blocked_by_runc}/{n}",
        n = all.len()
    );

    for (attack, _) in &all {
        if *attack != RUNTIME_EXE {
            assert!(
                matches!(runc_protected.get(*attack), Some(Verdict::Blocked(_))),
                "{attack} was not stopped for plain runc under the protected parent: {:?}",
                runc_protected.get(*attack)
            );
        }
    }
    for (attack, _) in &all {
        assert!(
            matches!(eci.get(*attack), Some(Verdict::Blocked(_))),
            "{attack} was not stopped with eci: {:?}",
            eci.get(*attack)
        );
        assert!(
            runc.contains_key(*attack),
            "{attack}: no result from the plain runc run:\n{out}"
        );
    }
    // Not vacuous: the core attacks work against plain runc in this VM.
    for attack in [
        "socket_hard_link",
        "socket_bind_mount",
        "bind_vm_etc",
        "nsenter_vm_namespaces",
        "setns_smuggled_ns_file",
        "vm_block_device",
        "sysrq_trigger",
        "unmask_proc_kcore",
        "device_node_in_image_disk",
        "device_node_in_image_kmsg",
        "cgroup_move_to_vm_root",
        "runtime_flag_runc",
        "deep_cgroup_parent",
        "volume_bind_vm_etc",
        "volume_inline_bind_vm_etc",
        "volume_bind_vm_run",
        "volume_block_device",
    ] {
        if !all.iter().any(|(n, _)| *n == attack) {
            continue; // skipped above, with the reason
        }
        assert_eq!(
            runc.get(attack),
            Some(&Verdict::Escaped),
            "{attack} did not work against plain runc, so the suite proves nothing about it:\n{out}"
        );
    }
    // The kernel's refusals are audited with the container's cgroup.
    // (debugfs and the disk are refused by the user namespace first: a
    // file system without FS_USERNS_MOUNT needs CAP_SYS_ADMIN in the VM.)
    for hook in ["unix_stream_connect", "sb_umount", "file_open"] {
        wait_container_denial(&agent, hook);
    }
    for volume in [
        "eci-vol-etc",
        "eci-vol-run",
        "eci-vol-disk",
        "eci-vol-inline",
    ] {
        let _ = docker(&engine, &["volume", "rm", "-f", volume]);
    }
    if let Some(dev) = device {
        let _ = Command::new("losetup").args(["-d", &dev]).status();
    }
    let _ = Command::new("umount").arg(&vm_net).status();
    drop(victim);
}
