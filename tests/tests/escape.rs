//! The escape suite: real attacks from inside containers, in the VM with
//! dockerd, each run twice — with eci (`--runtime=eci`, under the protected
//! `/docker` parent) and with plain runc in a cgroup outside every protected
//! parent (`--cgroup-parent=/eci-baseline`) — so that no attack passes
//! vacuously: the runc run shows the attack works there, or records that
//! runc alone already stops it. Every attack must be stopped with eci; the
//! kernel's refusals are in the audit log with the container's cgroup.
//! (A masked /proc file is /dev/null inside: writing to it reaches nothing,
//! so the attacks check what they write to.)

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
};

use eci_integration_tests::{
    bpf_lsm_or_skip,
    engine::{
        Engine, IMAGE, docker, engine_or_skip, protected_engine, text, wait_container_denial,
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
    ("setns_smuggled_ns_file", "nsenter --net=/share/vm-net true"),
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
];

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
    // The VM's network namespace file, bound into the shared directory.
    let vm_net = engine.smuggle(Path::new("/proc/1/ns/net"), "vm-net");
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
    let fill = |s: &str| {
        s.replace("{sock}", &sock)
            .replace("{victim}", &victim.0.id().to_string())
            .replace("{agent}", &agent_pid.to_string())
    };
    let share_flag = format!("{}:/share", share.display());
    let dev_env = format!(
        "DEV={}",
        device.clone().unwrap_or_else(|| "/dev/none".into())
    );
    let mut common = vec!["--privileged", "-v", &share_flag, "-e", &dev_env];
    let in_container: Vec<(&str, String)> = IN_CONTAINER
        .iter()
        .filter(|(n, _)| device.is_some() || *n != "vm_block_device")
        .map(|(n, c)| (*n, c.to_string()))
        .collect();
    if device.is_none() {
        println!("SKIP: {name}: vm_block_device: no loop device in this VM (modprobe loop failed)");
    }

    // With eci.
    let (_, out) = run(&engine, &["--runtime=eci"], &common, &script(&in_container));
    let mut eci = parse(&out);
    for (attack, flags, command) in WITH_FLAGS {
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

    // Plain runc, unprotected: the attacks for real.
    common.extend_from_slice(&[
        "--pid=host",
        "-v",
        "/etc:/vm-etc",
        "-v",
        "/var/lib/docker:/vm-docker",
    ]);
    let sock_flag = format!("{sock}:/var/run/docker.sock");
    common.extend_from_slice(&["-v", &sock_flag]);
    let mut all: Vec<(&str, String)> = in_container.clone();
    all.extend(WITH_FLAGS.iter().map(|(n, _, c)| (*n, fill(c))));
    let baseline_runtime = ["--runtime=runc", "--cgroup-parent=/eci-baseline"];
    let (_, out) = run(&engine, &baseline_runtime, &common, &script(&all));
    let runc = parse(&out);

    // The table.
    println!("escape suite ({} attacks):", all.len());
    println!("{:<28} {:<60} plain runc (unprotected)", "attack", "eci");
    let mut blocked_by_eci = 0;
    let mut blocked_by_runc = 0;
    for (attack, _) in &all {
        let show = |v: Option<&Verdict>| match v {
            Some(Verdict::Escaped) => "ESCAPED".to_owned(),
            Some(Verdict::Blocked(why)) => {
                format!("blocked ({})", why.chars().take(50).collect::<String>())
            }
            None => "no result".to_owned(),
        };
        println!(
            "{attack:<28} {:<60} {}",
            show(eci.get(*attack)),
            show(runc.get(*attack))
        );
        blocked_by_eci += usize::from(matches!(eci.get(*attack), Some(Verdict::Blocked(_))));
        blocked_by_runc += usize::from(matches!(runc.get(*attack), Some(Verdict::Blocked(_))));
    }
    println!("how eci stopped each:");
    for (attack, verdict) in &eci {
        if let Verdict::Blocked(why) = verdict {
            println!("  {attack}: {why}");
        }
    }
    println!(
        "escape suite: eci blocked {blocked_by_eci}/{n}; plain runc alone blocked {blocked_by_runc}/{n}",
        n = all.len()
    );

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
    if let Some(dev) = device {
        let _ = Command::new("losetup").args(["-d", &dev]).status();
    }
    let _ = Command::new("umount").arg(&vm_net).status();
    drop(victim);
}
