//! eci-runc: use it wherever runc is used. `create` rewrites and checks the
//! bundle's spec, runs `runc create`, then registers the container with the
//! eci agent before anything of the user's can run; `delete` unregisters and
//! frees what `create` took. Everything else goes to runc unchanged.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use eci_control::{Client, Request};
use eci_runc::{args::Invocation, ranges::Ranges, relocate, settings, spec};
use oci_spec::runtime::Spec;

fn runc_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ECI_RUNC_BINARY") {
        return PathBuf::from(path);
    }
    for candidate in [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/usr/local/sbin/runc",
        "/usr/local/bin/runc",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("runc")
}

fn agent_socket() -> PathBuf {
    std::env::var_os("ECI_AGENT_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| eci_control::DEFAULT_CONTROL_SOCKET.into())
}

/// Report to the caller the way runc does: stderr, and a JSON line in the
/// `--log` file, which is what Docker shows the user.
fn log(inv: &Invocation, level: &str, msg: &str) {
    if level != "info" {
        eprintln!("eci-runc: {msg}");
    }
    if let Some(path) = &inv.log {
        let time = eci_control::rfc3339_now();
        let line = if inv.log_format_json {
            serde_json::json!({ "level": level, "msg": msg, "time": time }).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
        }
    }
}

fn fail(inv: &Invocation, msg: &str) -> ExitCode {
    log(inv, "error", msg);
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let inv = eci_runc::args::parse(&argv);
    match inv.command.as_deref() {
        Some("create") => create(&inv),
        Some("delete") => delete(&inv),
        Some("run") => fail(
            &inv,
            "`run` is not supported by eci-runc yet: use `create` then `start` (as Docker and containerd do), so the container is registered with eci before it starts",
        ),
        _ => {
            let err = Command::new(runc_binary()).args(&argv).exec();
            fail(
                &inv,
                &format!("cannot run {}: {err}", runc_binary().display()),
            )
        }
    }
}

fn runc_root(inv: &Invocation) -> PathBuf {
    inv.root.clone().unwrap_or_else(|| "/run/runc".into())
}

/// Undo what `create` did before handing over to runc.
fn undo(id: &str, ranges: &Ranges) {
    relocate::cleanup(id);
    let _ = ranges.free(id);
}

fn create(inv: &Invocation) -> ExitCode {
    let Some(id) = inv.container_id.clone() else {
        return fail(inv, "create: no container id given");
    };
    let bundle = match inv.bundle.clone().map_or_else(std::env::current_dir, Ok) {
        Ok(b) => b,
        Err(e) => return fail(inv, &format!("create: no bundle: {e}")),
    };
    let settings = match settings::load() {
        Ok(s) => s,
        Err(e) => return fail(inv, &e.to_string()),
    };
    let config = bundle.join("config.json");
    let mut oci = match Spec::load(&config) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                inv,
                &format!("invalid container spec {}: {e}", config.display()),
            );
        }
    };
    let ranges = Ranges::from_env();
    let allocation = match ranges.allocate(&id, &runc_root(inv)) {
        Ok(a) => a,
        Err(e) => return fail(inv, &e.to_string()),
    };
    let mut ctx = spec::Context::docker_defaults(&id, &bundle, allocation.base);
    ctx.shareable_host_paths = settings.shareable_host_paths.clone();
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| spec::normalize(p));
    if let Err(refusal) = spec::check(&oci, &ctx, &resolve) {
        undo(&id, &ranges);
        return fail(inv, &refusal.to_string());
    }
    match spec::rewrite(&mut oci, &ctx) {
        Ok(notes) => {
            for note in notes {
                log(inv, "info", &format!("eci: {note}"));
            }
        }
        Err(refusal) => {
            undo(&id, &ranges);
            return fail(inv, &refusal.to_string());
        }
    }
    if let Err(e) = relocate_files(&mut oci, &bundle, &id, allocation.base, inv) {
        undo(&id, &ranges);
        return fail(inv, &format!("preparing the container's files: {e}"));
    }
    if let Err(e) = oci.save(&config) {
        undo(&id, &ranges);
        return fail(inv, &format!("writing {}: {e}", config.display()));
    }

    let status = Command::new(runc_binary()).args(&inv.argv).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            undo(&id, &ranges);
            return ExitCode::from(s.code().unwrap_or(1) as u8);
        }
        Err(e) => {
            undo(&id, &ranges);
            return fail(inv, &format!("cannot run {}: {e}", runc_binary().display()));
        }
    }

    // Registration, before the user's process can start: fail closed.
    match register(inv, &id) {
        Ok(cgroup) => {
            let _ = ranges.set_cgroup(&id, &cgroup);
            ExitCode::SUCCESS
        }
        Err(msg) => {
            let mut delete = Command::new(runc_binary());
            if let Some(root) = &inv.root {
                delete.arg("--root").arg(root);
            }
            let _ = delete.args(["delete", "--force", &id]).status();
            undo(&id, &ranges);
            fail(inv, &msg)
        }
    }
}

/// Bind the rootfs and every bind source under the container's private
/// directory, ID-mapped where the file system allows.
fn relocate_files(
    oci: &mut Spec,
    bundle: &Path,
    id: &str,
    base: u32,
    inv: &Invocation,
) -> Result<(), String> {
    let run_dir = relocate::run_dir();
    let dir = relocate::container_dir(id);
    for d in [&run_dir, &dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let userns = relocate::user_namespace(base).map_err(|e| e.to_string())?;
    if let Some(mut root) = oci.root().clone() {
        let path = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        let target = dir.join("rootfs");
        relocate::bind(&path, &target, None, false).map_err(|e| e.to_string())?;
        root.set_path(target);
        oci.set_root(Some(root));
    }
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    let points: Vec<(PathBuf, bool)> = mounts
        .iter()
        .map(|m| {
            (
                m.destination().clone(),
                m.source().as_ref().is_some_and(|s| s.is_file()),
            )
        })
        .collect();
    relocate::create_mount_points(&dir.join("rootfs"), &points).map_err(|e| e.to_string())?;
    let mut plain = Vec::new();
    for (n, mount) in mounts.iter_mut().enumerate() {
        let is_bind = mount.typ().as_deref() == Some("bind")
            || mount
                .options()
                .as_ref()
                .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
        let Some(source) = mount.source().clone() else {
            continue;
        };
        if !is_bind || !source.is_absolute() || source.starts_with(&dir) {
            continue;
        }
        let target = dir.join(format!("mount-{n}"));
        let recursive = mount
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "rbind"));
        let idmapped = relocate::bind(&source, &target, Some(&userns), recursive)
            .map_err(|e| e.to_string())?;
        if !idmapped {
            plain.push(source.display().to_string());
        }
        mount.set_source(Some(target));
    }
    oci.set_mounts(Some(mounts));
    if !plain.is_empty() {
        log(
            inv,
            "warning",
            &format!(
                "eci: these mounts could not be ID-mapped (the file system does not support it); files in them keep their VM owners: {}",
                plain.join(", ")
            ),
        );
    }
    Ok(())
}

fn init_pid(inv: &Invocation, id: &str) -> Result<u32, String> {
    if let Some(file) = &inv.pid_file
        && let Ok(text) = std::fs::read_to_string(file)
        && let Ok(pid) = text.trim().parse()
    {
        return Ok(pid);
    }
    let mut state = Command::new(runc_binary());
    if let Some(root) = &inv.root {
        state.arg("--root").arg(root);
    }
    let out = state
        .args(["state", id])
        .output()
        .map_err(|e| format!("runc state: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("runc state {id}: {e}"))?;
    value["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| format!("runc state {id} has no pid"))
}

fn register(inv: &Invocation, id: &str) -> Result<String, String> {
    let pid = init_pid(inv, id)?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("reading the container's cgroup: {e}"))?;
    let cgroup = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or("the container has no cgroup v2 (eci needs cgroup2 mounted)")?;
    let socket = agent_socket();
    Client::new(&socket).call_ok(&Request::Protect { cgroup: cgroup.clone() }).map_err(|e| {
        format!(
            "enhanced container isolation: the container was not started because it could not be registered with the eci agent ({e}). Start the agent (`systemctl start eci-agent`, or `eci-agent run`) and try again"
        )
    })?;
    Ok(cgroup)
}

fn delete(inv: &Invocation) -> ExitCode {
    let ranges = Ranges::from_env();
    let id = inv.container_id.clone().unwrap_or_default();
    let allocation = ranges.get(&id).ok().flatten();
    let status = Command::new(runc_binary()).args(&inv.argv).status();
    let ok = status.as_ref().is_ok_and(|s| s.success());
    let gone = !runc_root(inv).join(&id).exists();
    if ok || gone {
        if let Some(cgroup) = allocation.and_then(|a| a.cgroup) {
            let answer = Client::new(agent_socket()).call_ok(&Request::Unprotect {
                cgroup: cgroup.clone(),
            });
            if let Err(e) = answer {
                log(inv, "warning", &format!("eci: unregistering {cgroup}: {e}"));
            }
        }
        undo(&id, &ranges);
    }
    match status {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
        Err(e) => fail(inv, &format!("cannot run {}: {e}", runc_binary().display())),
    }
}
