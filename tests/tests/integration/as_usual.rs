//! Containers as usual under eci: what developers do every day works as it
//! does with runc. Each workflow runs on the tests' own engine in the VM with
//! eci and with plain runc (`runc-real`) as the control, so a test cannot
//! pass because the workflow fails everywhere.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    sync::OnceLock,
};

use eci_integration_tests::{
    TestAgent, bpf_lsm_or_skip,
    engine::{
        Engine, Ext4, IMAGE, docker, engine_or_skip, protected_engine, protected_engine_at,
        protected_overlay2_engine_at, text,
    },
};

/// The agent (kept for as long as the engine: eci-runc asks it for the
/// policy at each create) and the engine these tests share (started once:
/// under emulation an agent and a dockerd take ~20 s to start; the tests
/// run one at a time and name their containers apart).
fn engine_for(test: &str) -> Option<&'static (TestAgent, Engine)> {
    static SHARED: OnceLock<(TestAgent, Engine)> = OnceLock::new();
    if !bpf_lsm_or_skip(test) || !engine_or_skip(test) {
        return None;
    }
    Some(SHARED.get_or_init(|| protected_engine("eci-usual")))
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
            engine,
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
        engine,
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
            engine,
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
        engine,
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
        let (ok, t) = run(engine, RUNC, args, "true");
        assert!(ok, "{args:?} with runc (the control): {t}");
        let (ok, t) = run(engine, "eci", args, "true");
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

/// `docker run --rm` of `image` with plain runc (outside every protected
/// parent): how the image is, seen without eci.
fn image_with_runc(engine: &Engine, image: &str, script: &str) -> std::process::Output {
    docker(
        engine,
        &[
            "run",
            "--rm",
            "--runtime=runc-real",
            "--cgroup-parent=/eci-baseline",
            "--network=none",
            image,
            "sh",
            "-c",
            script,
        ],
    )
}

/// A stage of two layers (on overlay2 the engine mounts its result as an
/// overlay) for [`BUILDKIT_MOUNTS`] to bind from.
fn buildkit_base_stage() -> String {
    format!("FROM {IMAGE} AS base\nRUN touch /from-base && chown 1000:1000 /from-base\n")
}

/// BuildKit's mounts in RUN: a cache mount (a file owned by 1000 made in
/// it, its owner as the step sees it kept in the image), a bind of the
/// build context and a bind from the stage `base` (read-only: its file's
/// owner as the step sees it).
const BUILDKIT_MOUNTS: &str = "RUN --mount=type=cache,target=/cache touch /cache/made && chown 1000 /cache/made && stat -c 'cache %u' /cache/made > /cache-owner\n\
    RUN --mount=type=bind,target=/ctx cp /ctx/Dockerfile /from-context\n\
    RUN --mount=type=bind,from=base,target=/base stat -c 'base %u:%g' /base/from-base > /base-owner\n";

/// `docker build` of a Dockerfile on the test image (two steps; with
/// BuildKit also [`BUILDKIT_MOUNTS`]), with `DOCKER_BUILDKIT=<buildkit>`;
/// returns (ok, output).
fn build(engine: &Engine, tag: &str, buildkit: &str) -> (bool, String) {
    let context = engine.dir.path().join(format!("context-{buildkit}"));
    std::fs::create_dir_all(&context).expect("build context");
    let (stage, mounts) = if buildkit == "1" {
        (buildkit_base_stage(), BUILDKIT_MOUNTS)
    } else {
        (String::new(), "")
    };
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "{stage}FROM {IMAGE}\nRUN cat /proc/self/uid_map > /uid_map\nRUN touch /owned && chown 1000:1000 /owned\n{mounts}"
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
    // overlay2, as on a real host: BuildKit's binds from a stage are the
    // engine's overlays of its layers.
    let data = Ext4::mount("/var/lib/docker-ext4");
    let (_agent, engine) = protected_overlay2_engine_at("eci-usual", "/var/lib/docker-ext4");
    for (builder, buildkit) in [("classic", "0"), ("buildkit", "1")] {
        let tag = format!("eci-usual-{builder}:latest");
        let (ok, t) = build(&engine, &tag, buildkit);
        if !ok && builder == "buildkit" && t.contains("buildx component is missing") {
            // Debian 12's docker CLI here comes without the buildx plugin.
            println!("SKIP PART: {test}: BuildKit: this stack's docker CLI has no buildx plugin");
            continue;
        }
        assert!(ok, "docker build with the {builder} builder: {t}");
        let out = image_with_runc(
            &engine,
            &tag,
            "cat /uid_map; stat -c 'owner %u:%g' /owned; cat /cache-owner /base-owner 2>/dev/null; test -s /from-context && echo CONTEXT-BOUND; true",
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
        if builder == "buildkit" {
            assert!(
                t.contains("cache 1000")
                    && t.contains("CONTEXT-BOUND")
                    && t.contains("base 1000:1000"),
                "RUN --mount=type=cache|bind: {t}"
            );
        }
    }
    drop(engine);
    drop(data);
}

/// A long-running container `name` (`--ipc=shareable`, a file in its
/// `/dev/shm`) with `runtime`; removed first if left from a run before.
fn start_partner(engine: &Engine, runtime: &str, name: &str) {
    detached(
        engine,
        runtime,
        name,
        &["--ipc=shareable"],
        "echo shared > /dev/shm/partner; exec sleep 1000",
    );
}

/// `docker run -d --name <name> --runtime=<runtime> --network=none <extra>
/// IMAGE sh -c <script>`, asserted to start (a container of that name left
/// from a run before is removed first); the control runs under
/// `--cgroup-parent=/eci-baseline`.
fn detached(engine: &Engine, runtime: &str, name: &str, extra: &[&str], script: &str) {
    detached_on(engine, runtime, name, "none", extra, script);
}

/// [`detached`] on the engine's network `network`.
fn detached_on(
    engine: &Engine,
    runtime: &str,
    name: &str,
    network: &str,
    extra: &[&str],
    script: &str,
) {
    let _ = docker(engine, &["rm", "-f", name]);
    let runtime_arg = format!("--runtime={runtime}");
    let network_arg = format!("--network={network}");
    let mut args = vec!["run", "-d", "--name", name, &runtime_arg, &network_arg];
    if runtime == RUNC {
        args.push("--cgroup-parent=/eci-baseline");
    }
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
    let out = docker(engine, &args);
    assert!(
        out.status.success(),
        "{name} with {runtime}: {}",
        text(&out)
    );
}

/// What a process of container `name` (or of the sidecar) says about its
/// namespaces and ids.
const NAMESPACES: &str =
    "for n in net pid ipc; do readlink /proc/self/ns/$n; done; cat /proc/self/uid_map";

#[test]
fn sidecars_share_network_pid_and_ipc_with_an_eci_container_as_with_runc() {
    let Some((_agent, engine)) = engine_for(
        "as_usual::sidecars_share_network_pid_and_ipc_with_an_eci_container_as_with_runc",
    ) else {
        return;
    };
    for runtime in [RUNC, "eci"] {
        let partner = format!("eci-usual-partner-{}", runtime.replace('-', ""));
        start_partner(engine, runtime, &partner);
        let theirs = text(&docker(engine, &["exec", &partner, "sh", "-c", NAMESPACES]));
        let runtime_arg = format!("--runtime={runtime}");
        let net = format!("--network=container:{partner}");
        let pid = format!("--pid=container:{partner}");
        let ipc = format!("--ipc=container:{partner}");
        let mut args = vec!["run", "--rm", runtime_arg.as_str(), &net, &pid, &ipc];
        if runtime == RUNC {
            args.push("--cgroup-parent=/eci-baseline");
        }
        let script = format!(
            "{NAMESPACES}; cat /dev/shm/partner; ps | grep -c '[s]leep 1000'; touch /tmp/own && echo ROOTFS-WRITABLE"
        );
        args.extend_from_slice(&[IMAGE, "sh", "-c", &script]);
        let out = docker(engine, &args);
        let ours = text(&out);
        let _ = docker(engine, &["rm", "-f", &partner]);
        assert!(
            out.status.success(),
            "a sidecar of {partner} with {runtime}: {ours}"
        );
        // Same network, pid and ipc namespaces, and (eci) the same user
        // namespace range: the partner's lines are the sidecar's first ones.
        let first: Vec<&str> = ours.lines().take(4).collect();
        let partner_lines: Vec<&str> = theirs.lines().take(4).collect();
        assert_eq!(
            first, partner_lines,
            "{runtime}: the sidecar's namespaces differ from {partner}'s"
        );
        assert!(
            ours.contains("shared"),
            "{runtime}: no shared /dev/shm: {ours}"
        );
        assert!(
            ours.lines().any(|l| l.trim() == "1"),
            "{runtime}: the partner's process is not seen: {ours}"
        );
        assert!(ours.contains("ROOTFS-WRITABLE"), "{runtime}: {ours}");
        if runtime == "eci" {
            assert!(
                theirs.contains("65536"),
                "no user namespace of its own: {theirs}"
            );
        }
    }
    // An eci container does not join one that runs outside eci.
    let partner = "eci-usual-partner-outside";
    start_partner(engine, RUNC, partner);
    let net = format!("--network=container:{partner}");
    let out = docker(
        engine,
        &["run", "--rm", "--runtime=eci", &net, IMAGE, "true"],
    );
    let _ = docker(engine, &["rm", "-f", partner]);
    assert!(
        !out.status.success() && text(&out).contains("runs outside eci"),
        "an eci container joined one outside eci: {}",
        text(&out)
    );
}

/// What the shared-directory test does in the container, in `/src`: files
/// made by root and by uid 1000, then every way to plant a set-id file or a
/// device node for the VM (each says what happened).
const PLANT: &str = "echo root > /src/by-root; \
    cp /bin/busybox /src/suid && chmod u+s /src/suid && echo CHMOD-SUID-OK; \
    cp /bin/busybox /src/sgid && chmod g+s /src/sgid && echo CHMOD-SGID-OK; \
    cp /bin/busybox /tmp/s && chmod u+s /tmp/s && cp -p /tmp/s /src/copied && echo COPY-SUID-OK; \
    mknod /src/disk b 7 0 && echo MKNOD-OK; \
    cp /bin/busybox /src/capped && eci-test-client file-caps /src/capped && echo FILE-CAPS-OK; \
    touch /src/plain && chmod 755 /src/plain && echo CHMOD-PLAIN-OK; true";

/// The set-id files and device nodes under `dir` as the VM sees them
/// (non-empty set-id files: an empty one runs nothing).
fn planted(dir: &str) -> String {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("find {dir} \\( -type f -size +0 \\( -perm -4000 -o -perm -2010 \\) \\) -print -o \\( -type b -o -type c \\) -print | sort"),
        ])
        .output()
        .expect("find");
    text(&out)
}

/// Whether the VM sees file capabilities on `path`.
fn has_file_caps(path: &str) -> bool {
    let path = std::ffi::CString::new(path).expect("path");
    // SAFETY: valid C strings; a size query (no buffer).
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

#[test]
fn a_project_under_home_binds_by_default_and_plants_no_setid_file_or_device_for_the_vm() {
    let test = "as_usual::a_project_under_home_binds_by_default_and_plants_no_setid_file_or_device_for_the_vm";
    let Some((agent, engine)) = engine_for(test) else {
        return;
    };
    // /home on a file system the kernel can ID-map (the VM's own /home is
    // the read-only share of the host; this one covers it).
    let home = Ext4::mount("/home");
    let _ = &home;
    for runtime in [RUNC, "eci"] {
        let project = format!("/home/dev-{}/proj", runtime.replace('-', ""));
        std::fs::create_dir_all(&project).expect("project dir");
        std::os::unix::fs::chown(&project, Some(1000), Some(1000)).expect("chown project");
        std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o777))
            .expect("chmod project");
        let bind = format!("{project}:/src");
        // No policy names /home: it is shareable by default.
        let (ok, t) = run(engine, runtime, &["--privileged", "-v", &bind], PLANT);
        assert!(ok, "-v {bind} with {runtime}: {t}");
        let (ok, t1000) = run(
            engine,
            runtime,
            &["-u", "1000", "-v", &bind],
            "echo dev > /src/by-1000 && echo WROTE-AS-1000",
        );
        assert!(
            ok && t1000.contains("WROTE-AS-1000"),
            "-u 1000 with {runtime}: {t1000}"
        );
        let owner = |f: &str| {
            let m = std::fs::metadata(format!("{project}/{f}")).expect(f);
            (m.uid(), m.gid())
        };
        // Ownership as with runc: container uid N is VM uid N here.
        assert_eq!(owner("by-root"), (0, 0), "{runtime}: root's file");
        assert_eq!(owner("by-1000").0, 1000, "{runtime}: uid 1000's file");
        assert!(t.contains("CHMOD-PLAIN-OK"), "{runtime}: plain chmod: {t}");
        let found = planted(&project);
        println!(
            "{test}: {runtime}: container says: {}",
            t.replace('\n', " | ")
        );
        println!(
            "{test}: {runtime}: set-id files and devices in the VM: {}",
            found.replace('\n', " ")
        );
        let capped = has_file_caps(&format!("{project}/capped"));
        if runtime == RUNC {
            // The control: each way works where nothing stops it.
            for done in [
                "CHMOD-SUID-OK",
                "CHMOD-SGID-OK",
                "COPY-SUID-OK",
                "MKNOD-OK",
                "FILE-CAPS-OK",
            ] {
                assert!(
                    t.contains(done),
                    "runc (the control) could not: {done}: {t}"
                );
            }
            for f in ["suid", "sgid", "copied", "disk"] {
                assert!(
                    found.contains(&format!("{project}/{f}")),
                    "runc: {f} not planted: {found}"
                );
            }
            assert!(capped, "runc: no file capabilities planted");
        } else {
            // (`cp -p` may say it copied: what counts is what the VM has.)
            for done in ["CHMOD-SUID-OK", "CHMOD-SGID-OK", "MKNOD-OK", "FILE-CAPS-OK"] {
                assert!(
                    !t.contains(done),
                    "eci let the container do it: {done}: {t}"
                );
            }
            assert!(found.trim().is_empty(), "eci: planted for the VM: {found}");
            assert!(!capped, "eci: file capabilities planted for the VM");
            for hook in ["path_chmod", "inode_setxattr"] {
                let line = agent.wait_audit(|l| l["hook"] == hook);
                assert_eq!(line["object"]["kind"], "setid_file", "{line}");
            }
        }
    }
    // A system path stays refused without a policy naming it.
    let (ok, t) = run(engine, "eci", &["-v", "/etc:/src"], "true");
    assert!(!ok && t.contains("VM path"), "{t}");
}

/// `docker <args>`, asserted to succeed; its output.
fn docker_ok(engine: &Engine, args: &[&str]) -> String {
    let out = docker(engine, args);
    let t = text(&out);
    assert!(out.status.success(), "docker {args:?}: {t}");
    t
}

/// `tar -tv --numeric-owner` of an archive.
fn tar_listing(archive: &[u8], name: &str) -> String {
    let path = std::env::temp_dir().join(format!("{name}.tar"));
    std::fs::write(&path, archive).expect("the archive");
    let tar = std::process::Command::new("tar")
        .arg("--numeric-owner")
        .arg("-tvf")
        .arg(&path)
        .output()
        .expect("tar");
    let _ = std::fs::remove_file(&path);
    text(&tar)
}

/// The owner `tar -tv --numeric-owner` shows for `path` in `listing`.
fn owner_in_listing<'a>(listing: &'a str, path: &str) -> Option<&'a str> {
    listing
        .lines()
        .find(|l| l.split_whitespace().last() == Some(path))
        .and_then(|l| l.split_whitespace().nth(1))
}

/// What the engine does with a *running* container's files, as with runc:
/// `docker cp` in (as the container's root, and `-a` keeping 1000:1000) of
/// a file the container had looked for before, `docker cp` out, `docker
/// export`, `docker commit` (paused) and `docker diff` — each with the
/// container's own ids (`/etc/made` is 1000's, from its first run).
fn running_container_files_as_the_engine_sees_them(
    engine: &Engine,
    runtime: &str,
    name: &str,
    test: &str,
) {
    let host = tempfile::tempdir().expect("tempdir");
    let plain = host.path().join("copied-in");
    std::fs::write(&plain, "in\n").expect("file");
    let kept = host.path().join("copied-kept");
    std::fs::write(&kept, "kept\n").expect("file");
    std::os::unix::fs::chown(&kept, Some(1000), Some(1000)).expect("chown");
    // Looked for first: the container's overlay has seen it missing.
    let _ = docker(
        engine,
        &["exec", name, "ls", "/etc/copied-in", "/etc/copied-kept"],
    );
    docker_ok(
        engine,
        &[
            "cp",
            &plain.display().to_string(),
            &format!("{name}:/etc/copied-in"),
        ],
    );
    docker_ok(
        engine,
        &[
            "cp",
            "-a",
            &kept.display().to_string(),
            &format!("{name}:/etc/copied-kept"),
        ],
    );
    let inside = docker_ok(
        engine,
        &[
            "exec",
            name,
            "sh",
            "-c",
            "stat -c 'in %u:%g' /etc/copied-in; stat -c 'kept %u:%g' /etc/copied-kept; echo more >> /etc/copied-in && echo ROOT-WRITES-COPIED",
        ],
    );
    println!(
        "{test}: {runtime}: docker cp into the running container: {}",
        inside.replace('\n', " | ")
    );
    for want in ["in 0:0", "kept 1000:1000", "ROOT-WRITES-COPIED"] {
        assert!(
            inside.contains(want),
            "{runtime}: docker cp in: {want}: {inside}"
        );
    }
    let out = docker(engine, &["cp", &format!("{name}:/etc/made"), "-"]);
    assert!(out.status.success(), "{runtime}: {}", text(&out));
    let listed = tar_listing(&out.stdout, name);
    assert_eq!(
        owner_in_listing(&listed, "made"),
        Some("1000/1000"),
        "{runtime}: docker cp out of the running container: {listed}"
    );
    let out = docker(engine, &["export", name]);
    assert!(out.status.success(), "{runtime}: docker export");
    let listed = tar_listing(&out.stdout, name);
    for (path, owner) in [
        ("etc/made", "1000/1000"),
        ("etc/copied-kept", "1000/1000"),
        ("etc/copied-in", "0/0"),
        ("etc/passwd", "0/0"),
    ] {
        assert_eq!(
            owner_in_listing(&listed, path),
            Some(owner),
            "{runtime}: docker export of the running container: {path}"
        );
    }
    let image = format!("{name}-running");
    docker_ok(engine, &["commit", name, &image]);
    let out = image_with_runc(
        engine,
        &image,
        "stat -c '%n %u:%g' /etc/made /etc/copied-in /etc/copied-kept",
    );
    let committed = text(&out);
    let _ = docker(engine, &["rmi", &image]);
    for want in [
        "/etc/made 1000:1000",
        "/etc/copied-in 0:0",
        "/etc/copied-kept 1000:1000",
    ] {
        assert!(
            committed.contains(want),
            "{runtime}: committed while running: {want}: {committed}"
        );
    }
    // Both ways over a file of the image that the other side had looked at.
    let _ = docker_ok(engine, &["exec", name, "cat", "/etc/group"]);
    let group = host.path().join("group");
    std::fs::write(&group, "root:x:0:\nfrom-the-engine:x:4242:\n").expect("group");
    docker_ok(
        engine,
        &[
            "cp",
            &group.display().to_string(),
            &format!("{name}:/etc/group"),
        ],
    );
    let seen = docker_ok(engine, &["exec", name, "cat", "/etc/group"]);
    println!(
        "{test}: {runtime}: COHERENCE container sees the engine's write: {}",
        seen.contains("from-the-engine")
    );
    let _ = docker(engine, &["cp", &format!("{name}:/etc/passwd"), "-"]);
    docker_ok(
        engine,
        &[
            "exec",
            name,
            "sh",
            "-c",
            "echo from-the-container:x:4243:4243::/:/bin/sh >> /etc/passwd",
        ],
    );
    let out = docker(engine, &["cp", &format!("{name}:/etc/passwd"), "-"]);
    println!(
        "{test}: {runtime}: COHERENCE engine sees the container's write: {}",
        String::from_utf8_lossy(&out.stdout).contains("from-the-container")
    );
    let diff = docker_ok(engine, &["diff", name]);
    assert!(
        diff.contains("A /etc/made"),
        "{runtime}: docker diff: {diff}"
    );
}

#[test]
fn files_keep_their_owners_through_restart_stop_cp_out_and_commit() {
    let test = "as_usual::files_keep_their_owners_through_restart_stop_cp_out_and_commit";
    if !bpf_lsm_or_skip(test) || !engine_or_skip(test) {
        return;
    }
    // The engine's data on a file system whose layers the kernel can
    // ID-map (the usual test engine's tmpfs cannot before 6.3).
    let data = Ext4::mount("/var/lib/docker-ext4");
    let (_agent, engine) = protected_engine_at("eci-usual", "/var/lib/docker-ext4");
    for runtime in [RUNC, "eci"] {
        let name = format!("eci-usual-keep-{}", runtime.replace('-', ""));
        let image = format!("{name}-committed");
        // The first run makes the file and fails: the restart policy starts
        // it again with the engine's root file system still mounted.
        detached(
            &engine,
            runtime,
            &name,
            &["--restart=on-failure:3"],
            "[ -e /etc/made ] || { echo made > /etc/made && chown 1000:1000 /etc/made; exit 3; }; exec sleep 1000",
        );
        let check = "stat -c 'owner %u:%g' /etc/made; echo more >> /etc/made && echo ROOT-WRITES; stat -c 'passwd %u' /etc/passwd";
        let mut after = String::new();
        for _ in 0..60 {
            after = text(&docker(&engine, &["exec", &name, "sh", "-c", check]));
            if after.contains("owner") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let restarts = docker_ok(&engine, &["inspect", "-f", "{{.RestartCount}}", &name]);
        for (how, restart) in [("the restart policy", false), ("docker restart", true)] {
            if restart {
                docker_ok(&engine, &["restart", "-t", "1", &name]);
                after = docker_ok(&engine, &["exec", &name, "sh", "-c", check]);
            }
            println!(
                "{test}: {runtime}: after {how} (restarts: {}): {}",
                restarts.trim(),
                after.replace('\n', " | ")
            );
            for want in ["owner 1000:1000", "ROOT-WRITES", "passwd 0"] {
                assert!(
                    after.contains(want),
                    "{runtime}: after {how}: {want}: {after}"
                );
            }
        }
        assert_eq!(
            restarts.trim(),
            "1",
            "{runtime}: the restart policy's restarts"
        );

        running_container_files_as_the_engine_sees_them(&engine, runtime, &name, test);

        // Stopped: what the engine reads from the layer (cp out, commit).
        docker_ok(&engine, &["stop", "-t", "1", &name]);
        let copied = docker(&engine, &["cp", &format!("{name}:/etc/made"), "-"]);
        assert!(
            copied.status.success(),
            "{runtime}: docker cp out: {}",
            text(&copied)
        );
        let archive = std::env::temp_dir().join(format!("{name}.tar"));
        std::fs::write(&archive, &copied.stdout).expect("the copied archive");
        let tar = std::process::Command::new("tar")
            .arg("--numeric-owner")
            .arg("-tvf")
            .arg(&archive)
            .output()
            .expect("tar");
        let _ = std::fs::remove_file(&archive);
        let listed = text(&tar);
        println!("{test}: {runtime}: docker cp out: {}", listed.trim());
        assert!(
            listed.contains("1000/1000") || listed.contains("1000 1000"),
            "{runtime}: docker cp out of the stopped container: {listed}"
        );
        docker_ok(&engine, &["commit", &name, &image]);
        let out = image_with_runc(&engine, &image, "stat -c %u:%g /etc/made");
        let committed = text(&out);
        assert!(out.status.success(), "{runtime}: {committed}");
        assert!(
            committed.contains("1000:1000"),
            "{runtime}: committed image: {committed}"
        );
        let _ = docker(&engine, &["rm", "-f", &name]);
        let _ = docker(&engine, &["rmi", &image]);
    }
    drop(engine);
    drop(data);
}

#[test]
fn everyday_flags_and_commands_work_with_eci_as_with_runc() {
    let test = "as_usual::everyday_flags_and_commands_work_with_eci_as_with_runc";
    let Some((_agent, engine)) = engine_for(test) else {
        return;
    };
    for runtime in [RUNC, "eci"] {
        let name = format!("eci-usual-daily-{}", runtime.replace('-', ""));
        detached(
            engine,
            runtime,
            &name,
            &[
                "--read-only",
                "--tmpfs",
                "/scratch",
                "--health-cmd",
                "test -e /scratch/ready",
                "--health-interval",
                "1s",
            ],
            "echo ready > /scratch/ready && exec sleep 1000",
        );
        let mut health = String::new();
        for _ in 0..60 {
            health = docker_ok(
                engine,
                &["inspect", "-f", "{{.State.Health.Status}}", &name],
            );
            if health.trim() == "healthy" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        assert_eq!(health.trim(), "healthy", "{runtime}: the healthcheck");
        let inside = docker_ok(
            engine,
            &[
                "exec",
                &name,
                "sh",
                "-c",
                "cat /scratch/ready; touch /etc/x 2>/dev/null && echo ROOT-FS-WRITABLE; true",
            ],
        );
        assert!(inside.contains("ready"), "{runtime}: --tmpfs: {inside}");
        assert!(
            !inside.contains("ROOT-FS-WRITABLE"),
            "{runtime}: --read-only: {inside}"
        );
        let top = docker_ok(engine, &["top", &name]);
        assert!(top.contains("sleep 1000"), "{runtime}: docker top: {top}");
        let stats = docker_ok(
            engine,
            &[
                "stats",
                "--no-stream",
                "--format",
                "{{.Name}} {{.MemUsage}}",
                &name,
            ],
        );
        assert!(stats.contains(&name), "{runtime}: docker stats: {stats}");
        docker_ok(engine, &["pause", &name]);
        let state = docker_ok(engine, &["inspect", "-f", "{{.State.Status}}", &name]);
        assert_eq!(state.trim(), "paused", "{runtime}: docker pause");
        docker_ok(engine, &["unpause", &name]);
        docker_ok(engine, &["exec", &name, "true"]);
        println!(
            "{test}: {runtime}: healthy, --read-only, --tmpfs, top, stats, pause/unpause as expected"
        );
        let _ = docker(engine, &["rm", "-f", &name]);
    }
}

/// `GET /<path>` from `port` on the VM's loopback; the response, or why not.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let attempt = (|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            write!(s, "GET /{path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok::<String, std::io::Error>(answer)
        })();
        match attempt {
            Ok(answer) if answer.contains("200") => return answer,
            other if std::time::Instant::now() > deadline => return format!("{other:?}"),
            _ => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

#[test]
fn published_ports_reach_the_container_with_eci_as_with_runc() {
    let Some((_agent, engine)) =
        engine_for("as_usual::published_ports_reach_the_container_with_eci_as_with_runc")
    else {
        return;
    };
    // The tests' engine has no default bridge: a network of the test's own.
    let network = "eci-usual-published";
    let _ = docker(engine, &["network", "rm", network]);
    docker_ok(engine, &["network", "create", network]);
    for (runtime, port) in [(RUNC, 18080u16), ("eci", 18081)] {
        let name = format!("eci-usual-web-{}", runtime.replace('-', ""));
        let publish = format!("127.0.0.1:{port}:8080");
        detached_on(
            engine,
            runtime,
            &name,
            network,
            &["-p", &publish],
            "exec busybox httpd -f -p 8080 -h /etc",
        );
        let answer = http_get(port, "passwd");
        let _ = docker(engine, &["rm", "-f", &name]);
        assert!(
            answer.contains("root:x:0:0"),
            "{runtime}: -p {publish}: {answer}"
        );
    }
    let _ = docker(engine, &["network", "rm", network]);
}
