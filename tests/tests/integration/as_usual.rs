//! Containers as usual under eci: what developers do every day works as it
//! does with runc. Each workflow runs on the tests' own engine in the VM with
//! eci and with plain runc (`runc-real`) as the control, so a test cannot
//! pass because the workflow fails everywhere.

use eci_integration_tests::{
    TestAgent, bpf_lsm_or_skip,
    engine::{Engine, IMAGE, docker, engine_or_skip, protected_engine, protected_engine_at, text},
};

/// The agent (kept for as long as the engine: eci-runc asks it for the
/// policy at each create) and the tests' own engine.
fn engine_for(test: &str) -> Option<(TestAgent, Engine)> {
    if !bpf_lsm_or_skip(test) || !engine_or_skip(test) {
        return None;
    }
    Some(protected_engine("eci-usual"))
}

/// The control: plain runc in a cgroup outside every protected parent
/// (under `/docker` the kernel refuses a task in the VM's user namespace).
const RUNC: &str = "runc-real";

/// `docker run --rm --runtime=<runtime> --network=none <args> IMAGE sh -c
/// <script>`; the control runs under `--cgroup-parent=/eci-baseline`.
fn run(engine: &Engine, runtime: &str, args: &[&str], script: &str) -> (bool, String) {
    let runtime_arg = format!("--runtime={runtime}");
    let mut all = vec!["run", "--rm", runtime_arg.as_str(), "--network=none"];
    if runtime == RUNC {
        all.push("--cgroup-parent=/eci-baseline");
    }
    all.extend_from_slice(args);
    all.extend_from_slice(&[IMAGE, "sh", "-c", script]);
    let out = docker(engine, &all);
    (out.status.success(), text(&out))
}

#[test]
fn init_runs_the_engines_docker_init_as_pid_1_with_eci_as_with_runc() {
    let Some((_agent, engine)) =
        engine_for("as_usual::init_runs_the_engines_docker_init_as_pid_1_with_eci_as_with_runc")
    else {
        return;
    };
    for runtime in [RUNC, "eci"] {
        let (ok, t) = run(
            &engine,
            runtime,
            &["--init"],
            "cat /proc/1/comm; cat /proc/self/uid_map",
        );
        assert!(ok, "--init with {runtime}: {t}");
        assert!(
            t.contains("docker-init"),
            "PID 1 is not docker-init with {runtime}: {t}"
        );
        if runtime == "eci" {
            assert!(t.contains("65536"), "no user namespace of its own: {t}");
        }
    }
    // The init binary is known by what it is: another VM file at the
    // init's place is not let in.
    let (ok, t) = run(
        &engine,
        "eci",
        &["-v", "/etc/passwd:/sbin/docker-init:ro"],
        "true",
    );
    assert!(
        !ok && t.contains("VM path"),
        "a VM file posing as docker-init: {t}"
    );
}

#[test]
fn the_vms_time_zone_and_kernel_modules_bind_read_only_and_nothing_else_of_the_vm() {
    let Some((_agent, engine)) = engine_for(
        "as_usual::the_vms_time_zone_and_kernel_modules_bind_read_only_and_nothing_else_of_the_vm",
    ) else {
        return;
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let release = release.trim();
    // What compose files and kind do, with both runtimes.
    for runtime in [RUNC, "eci"] {
        let (ok, t) = run(
            &engine,
            runtime,
            &[
                "-v",
                "/etc/localtime:/etc/localtime:ro",
                "-v",
                "/lib/modules:/lib/modules:ro",
            ],
            "head -c 4 /etc/localtime; echo; ls /lib/modules",
        );
        assert!(ok, "read-only binds with {runtime}: {t}");
        assert!(t.contains("TZif"), "no zone file with {runtime}: {t}");
        assert!(
            t.contains(release),
            "no modules of {release} with {runtime}: {t}"
        );
    }
    // Under eci they are read-only as a whole and the container's root
    // owns none of it (not ID-mapped), even privileged.
    let (ok, t) = run(
        &engine,
        "eci",
        &["--privileged", "-v", "/lib/modules:/lib/modules:ro"],
        &format!(
            "stat -c 'owner %u' /lib/modules/{release}; touch /lib/modules/{release}/x && echo WROTE; mount -o remount,rw /lib/modules && echo REMOUNTED; true"
        ),
    );
    assert!(ok, "{t}");
    assert!(
        t.contains("owner 65534"),
        "the container's root owns the VM's modules: {t}"
    );
    assert!(
        !t.contains("WROTE") && !t.contains("REMOUNTED"),
        "the VM's modules became writable: {t}"
    );

    // Writable binds of them, and other VM files at their places: refused
    // by eci (with the way to ask), done by runc.
    let cases: [(&[&str], &str); 3] = [
        (&["-v", "/etc/localtime:/etc/localtime"], ":ro"),
        (&["-v", "/etc/passwd:/etc/localtime:ro"], "VM path"),
        (&["-v", "/etc:/usr/share/zoneinfo:ro"], "VM path"),
    ];
    for (args, why) in cases {
        let (ok, t) = run(&engine, RUNC, args, "true");
        assert!(ok, "{args:?} with runc (the control): {t}");
        let (ok, t) = run(&engine, "eci", args, "true");
        assert!(!ok, "{args:?} started with eci: {t}");
        assert!(
            t.contains(why),
            "{args:?}: the refusal does not say {why:?}: {t}"
        );
    }
}

#[test]
fn an_engine_with_another_data_root_runs_eci_containers_with_their_files_and_volumes() {
    let test = "as_usual::an_engine_with_another_data_root_runs_eci_containers_with_their_files_and_volumes";
    if !bpf_lsm_or_skip(test) || !engine_or_skip(test) {
        return;
    }
    let (_agent, engine) = protected_engine_at("eci-usual", "/var/lib/docker-alt");
    let info = text(&docker(
        &engine,
        &["info", "--format", "{{.DockerRootDir}}"],
    ));
    assert_eq!(info.trim(), "/var/lib/docker-alt", "the engine's data root");
    for runtime in [RUNC, "eci"] {
        let (ok, t) = run(
            &engine,
            runtime,
            &["-v", "eci-usual-data:/data"],
            // (Reads only: the test engine's data is on tmpfs, which
            // kernels before 6.3 cannot ID-map, so a volume there is not
            // the container root's to write on 5.10 and 6.1.)
            "cat /etc/hostname /etc/resolv.conf >/dev/null && ls -d /data && echo started; cat /proc/self/uid_map",
        );
        assert!(
            ok,
            "a container of an engine at /var/lib/docker-alt with {runtime}: {t}"
        );
        assert!(t.contains("started"), "{runtime}: {t}");
        if runtime == "eci" {
            assert!(t.contains("65536"), "no user namespace of its own: {t}");
        }
    }
    // The engine's directories are its own, not any path: a VM directory
    // is still refused.
    let (ok, t) = run(&engine, "eci", &["-v", "/var/lib:/x"], "true");
    assert!(!ok && t.contains("VM path"), "{t}");
}

/// A file system the engine's data may live on that the kernel can ID-map
/// (ext4 on a loop device), mounted at `point` for as long as it lives:
/// the tests' usual engine keeps its data on tmpfs, whose container root
/// file systems eci-runc binds as they are.
struct Ext4 {
    point: std::path::PathBuf,
}

impl Ext4 {
    fn mount(point: &str) -> Self {
        let image = format!(
            "/tmp/{}.ext4",
            point.trim_start_matches('/').replace('/', "-")
        );
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", script])
                .output()
                .expect("sh");
            assert!(out.status.success(), "{script}: {}", text(&out));
        };
        sh(&format!(
            "modprobe loop; modprobe ext4; truncate -s 512M {image} && mkfs.ext4 -q -F {image} && dev=$(losetup -f --show {image}) && mkdir -p {point} && mount -t ext4 \"$dev\" {point}"
        ));
        Self {
            point: point.into(),
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.point)
            .status();
    }
}

/// `docker build` of a two-step Dockerfile on the test image, with
/// `DOCKER_BUILDKIT=<buildkit>`; returns (ok, output).
fn build(engine: &Engine, tag: &str, buildkit: &str) -> (bool, String) {
    let context = engine.dir.path().join(format!("context-{buildkit}"));
    std::fs::create_dir_all(&context).expect("build context");
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {IMAGE}\nRUN cat /proc/self/uid_map > /uid_map\nRUN touch /owned && chown 1000:1000 /owned\n"
        ),
    )
    .expect("Dockerfile");
    let out = std::process::Command::new("docker")
        .arg("--host")
        .arg(format!("unix://{}", engine.socket().display()))
        // (The tests' engine has no bridge network.)
        .args(["build", "--network=none", "-t", tag])
        .arg(&context)
        .env("DOCKER_BUILDKIT", buildkit)
        .output()
        .expect("docker build");
    (out.status.success(), text(&out))
}

#[test]
fn builds_run_each_step_in_a_user_namespace_of_its_own_and_files_keep_their_owners() {
    let test =
        "as_usual::builds_run_each_step_in_a_user_namespace_of_its_own_and_files_keep_their_owners";
    if !bpf_lsm_or_skip(test) || !engine_or_skip(test) {
        return;
    }
    let data = Ext4::mount("/var/lib/docker-ext4");
    let (_agent, engine) = protected_engine_at("eci-usual", "/var/lib/docker-ext4");
    for (builder, buildkit) in [("classic", "0"), ("buildkit", "1")] {
        let tag = format!("eci-usual-{builder}:latest");
        let (ok, t) = build(&engine, &tag, buildkit);
        if !ok && builder == "buildkit" && t.contains("buildx component is missing") {
            // Debian 12's docker CLI here comes without the buildx plugin.
            println!("SKIP PART: {test}: BuildKit: this stack's docker CLI has no buildx plugin");
            continue;
        }
        assert!(ok, "docker build with the {builder} builder: {t}");
        let out = docker(
            &engine,
            &[
                "run",
                "--rm",
                "--runtime=runc-real",
                "--cgroup-parent=/eci-baseline",
                "--network=none",
                &tag,
                "sh",
                "-c",
                "cat /uid_map; stat -c 'owner %u:%g' /owned",
            ],
        );
        let t = text(&out);
        assert!(out.status.success(), "{builder}: {t}");
        let map: Vec<&str> = t
            .lines()
            .find(|l| l.split_whitespace().count() == 3)
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        assert!(
            map.len() == 3 && map[0] == "0" && map[1] != "0",
            "a RUN step of the {builder} builder ran with the VM's root as its root: {t}"
        );
        assert!(
            t.contains("owner 1000:1000"),
            "{builder}: a RUN step's file lost its owner: {t}"
        );
    }
    drop(engine);
    drop(data);
}
