//! `eci-agent install` / `uninstall`: the boot service and the engine's
//! runtime registration.
//!
//! The unit starts the agent before containerd and Docker. With a locked
//! policy the engine *requires* it (`RequiredBy=`), so the engine cannot run
//! without enforcement; otherwise it only *wants* it. Docker's daemon.json
//! is merged, never rewritten: every setting the user had stays, a backup is
//! kept, and a file that is not valid JSON is refused and left untouched.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

pub const UNIT_NAME: &str = "eci-agent.service";
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// The runtime name containers choose with `--runtime=eci`.
pub const RUNTIME_NAME: &str = "eci";
/// Where eci-runc stands in for `runc`: first on the PATH systemd gives the
/// engine and containerd (and so their shims and BuildKit), so
/// `--runtime=runc`, `--runtime=io.containerd.runc.v2` and build steps get
/// eci's isolation too. eci-runc itself runs the real runc from /usr/sbin
/// or /usr/bin.
pub const DEFAULT_RUNC_STAND_IN: &str = "/usr/local/sbin/runc";
/// Docker's `data-root` when daemon.json names none.
pub const DEFAULT_DOCKER_DATA_ROOT: &str = "/var/lib/docker";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{path} is not valid JSON (line {line}, column {column}: {message}); it was left untouched. Fix it (or move it away) and run the command again"
    )]
    MalformedDaemonJson {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path} must hold a JSON object at the top level; it was left untouched")]
    NotAnObject { path: String },
    #[error("{path}: \"runtimes\" must be a JSON object; it was left untouched")]
    RuntimesNotAnObject { path: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} exists and is not eci-runc ({what}); eci stands in for `runc` there so that `docker run --runtime=runc` and build steps get eci's isolation. Move it away (runc belongs in /usr/sbin or /usr/bin) and run the command again; nothing was changed"
    )]
    StandInOccupied { path: String, what: String },
    #[error(
        "the eci policy is locked (enhancedContainerIsolation.locked in {0}); eci cannot be uninstalled or unloaded while it is locked. Unlock the policy first (an administrator's change)."
    )]
    Locked(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The systemd unit for an agent binary at `agent`.
pub fn unit_text(agent: &Path, locked: bool) -> String {
    let dependency = if locked { "RequiredBy" } else { "WantedBy" };
    format!(
        "[Unit]
Description=eci agent: kernel-enforced container isolation (BPF-LSM)
DefaultDependencies=no
Wants=sys-fs-bpf.mount
After=sys-fs-bpf.mount local-fs.target
Before=containerd.service docker.service docker.socket

[Service]
Type=notify
ExecStart={agent} run
Restart=always
RestartSec=1
# The rules stay pinned in the kernel while the agent restarts.
KillMode=process

[Install]
WantedBy=multi-user.target
{dependency}=containerd.service docker.service
",
        agent = agent.display()
    )
}

/// Merge eci's runtime into a daemon.json text; `None` input means no file.
/// With `make_default` (the policy turns ECI on) it also becomes the
/// engine's `default-runtime`, so a plain `docker run` gets a user namespace.
pub fn merge_daemon_json(
    existing: Option<&str>,
    path: &Path,
    runtime: &Path,
    make_default: bool,
) -> Result<String, InstallError> {
    let mut root = parse_object(existing, path)?;
    let runtimes = root
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(runtimes) = runtimes else {
        return Err(InstallError::RuntimesNotAnObject {
            path: path.display().to_string(),
        });
    };
    runtimes.insert(
        RUNTIME_NAME.into(),
        serde_json::json!({ "path": runtime.display().to_string() }),
    );
    if make_default {
        root.insert("default-runtime".into(), Value::String(RUNTIME_NAME.into()));
    }
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_default()
    ))
}

/// Remove eci's runtime from a daemon.json text (and `default-runtime` when it names eci).
pub fn unmerge_daemon_json(existing: &str, path: &Path) -> Result<String, InstallError> {
    let mut root = parse_object(Some(existing), path)?;
    if let Some(Value::Object(runtimes)) = root.get_mut("runtimes") {
        runtimes.remove(RUNTIME_NAME);
        if runtimes.is_empty() {
            root.remove("runtimes");
        }
    }
    if root.get("default-runtime").and_then(Value::as_str) == Some(RUNTIME_NAME) {
        root.remove("default-runtime");
    }
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_default()
    ))
}

/// The text of daemon.json; `None` when there is no such file. The one
/// reader of it: install, uninstall and the doctor.
pub fn read_daemon_json(path: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// What eci needs to know of the engine's daemon.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// The path registered for eci's runtime (`runtimes.eci.path`).
    pub eci_runtime: Option<PathBuf>,
    /// `default-runtime` (Docker's own default, `runc`, when absent).
    pub default_runtime: Option<String>,
    /// `data-root`: the image layers (overlay lower directories) and volumes.
    pub data_root: PathBuf,
}

impl DaemonSettings {
    /// Whether eci's runtime is what a plain `docker run` gets.
    pub fn eci_is_default(&self) -> bool {
        self.default_runtime.as_deref() == Some(RUNTIME_NAME)
    }
}

/// daemon.json's settings for eci; `None` text is no file (Docker's defaults).
pub fn daemon_settings(text: Option<&str>, path: &Path) -> Result<DaemonSettings, InstallError> {
    let root = parse_object(text, path)?;
    let eci_runtime = root
        .get("runtimes")
        .and_then(|r| r.get(RUNTIME_NAME))
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
        .map(PathBuf::from);
    Ok(DaemonSettings {
        eci_runtime,
        default_runtime: root
            .get("default-runtime")
            .and_then(Value::as_str)
            .map(str::to_owned),
        data_root: root
            .get("data-root")
            .and_then(Value::as_str)
            .map_or_else(|| PathBuf::from(DEFAULT_DOCKER_DATA_ROOT), PathBuf::from),
    })
}

fn parse_object(text: Option<&str>, path: &Path) -> Result<Map<String, Value>, InstallError> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(InstallError::NotAnObject {
            path: path.display().to_string(),
        }),
        Err(e) => Err(InstallError::MalformedDaemonJson {
            path: path.display().to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        }),
    }
}

/// Write `text` to `path` atomically, keeping the old file as `<path>.eci-backup`.
fn replace_with_backup(path: &Path, text: &str) -> Result<Option<PathBuf>, InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut backup = None;
    let mode = match std::fs::metadata(path) {
        Ok(meta) => {
            let copy = PathBuf::from(format!("{}.eci-backup", path.display()));
            std::fs::copy(path, &copy).map_err(io("backing up", path))?;
            backup = Some(copy);
            meta.permissions().mode()
        }
        Err(_) => 0o644,
    };
    let tmp = PathBuf::from(format!("{}.eci-tmp", path.display()));
    let mut file = std::fs::File::create(&tmp).map_err(io("writing", &tmp))?;
    file.write_all(text.as_bytes())
        .map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("replacing", path))?;
    Ok(backup)
}

fn default_note(plan: &InstallPlan) -> &'static str {
    if plan.make_default {
        " as the default runtime"
    } else {
        " (not the default: the policy turns ECI off)"
    }
}

pub struct InstallPlan {
    /// The policy turns ECI on: eci becomes the engine's default runtime,
    /// and stands in for `runc` at `runc_stand_in`.
    pub make_default: bool,
    pub runc_stand_in: Option<PathBuf>,
    pub agent: PathBuf,
    pub runtime: PathBuf,
    pub unit_dir: PathBuf,
    pub daemon_json: PathBuf,
    pub policy_path: PathBuf,
    pub default_policy: String,
    pub locked: bool,
    pub run_systemctl: bool,
}

/// Do everything; each step says what it did. Nothing is written before
/// every input was checked (a malformed daemon.json stops it first).
pub fn install(plan: &InstallPlan) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    let existing = read_daemon_json(&plan.daemon_json)?;
    let merged = merge_daemon_json(
        existing.as_deref(),
        &plan.daemon_json,
        &plan.runtime,
        plan.make_default,
    )?;
    let stand_in = match &plan.runc_stand_in {
        Some(path) if plan.make_default => Some((path, stand_in_state(path, &plan.runtime)?)),
        _ => None,
    };

    let unit = plan.unit_dir.join(UNIT_NAME);
    std::fs::create_dir_all(&plan.unit_dir).map_err(io("creating", &plan.unit_dir))?;
    std::fs::write(&unit, unit_text(&plan.agent, plan.locked)).map_err(io("writing", &unit))?;
    done.push(format!("wrote {}", unit.display()));

    match replace_with_backup(&plan.daemon_json, &merged)? {
        Some(backup) => done.push(format!(
            "added runtime \"{RUNTIME_NAME}\"{} to {} (previous version kept as {})",
            default_note(plan),
            plan.daemon_json.display(),
            backup.display()
        )),
        None => done.push(format!(
            "created {} with runtime \"{RUNTIME_NAME}\"{}",
            plan.daemon_json.display(),
            default_note(plan)
        )),
    }

    if let Some((path, present)) = stand_in {
        if present {
            done.push(format!("{} already stands in for runc", path.display()));
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            }
            std::os::unix::fs::symlink(&plan.runtime, path).map_err(io("linking", path))?;
            done.push(format!(
                "{} -> {}: eci-runc stands in for runc (--runtime=runc and build steps get eci too)",
                path.display(),
                plan.runtime.display()
            ));
        }
    }

    if plan.policy_path.exists() {
        done.push(format!(
            "kept the existing policy {}",
            plan.policy_path.display()
        ));
    } else {
        if let Some(dir) = plan.policy_path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        std::fs::write(&plan.policy_path, &plan.default_policy)
            .map_err(io("writing", &plan.policy_path))?;
        done.push(format!(
            "installed the default policy {}",
            plan.policy_path.display()
        ));
    }

    if plan.run_systemctl {
        for args in [&["daemon-reload"][..], &["enable", UNIT_NAME][..]] {
            let status = std::process::Command::new("systemctl").args(args).status();
            match status {
                Ok(s) if s.success() => done.push(format!("systemctl {}", args.join(" "))),
                _ => done.push(format!(
                    "systemctl {} did not succeed: run it yourself",
                    args.join(" ")
                )),
            }
        }
        done.push(
            "reload Docker to pick up the runtime: `systemctl reload docker` (or SIGHUP dockerd)"
                .into(),
        );
    }
    Ok(done)
}

/// Whether `path` is eci-runc's stand-in already (`true`) or free
/// (`false`); anything else there is an error that names it.
fn stand_in_state(path: &Path, runtime: &Path) -> Result<bool, InstallError> {
    let occupied = |what: String| InstallError::StandInOccupied {
        path: path.display().to_string(),
        what,
    };
    match std::fs::read_link(path) {
        Ok(target) if target == runtime => Ok(true),
        Ok(target) => Err(occupied(format!("a symbolic link to {}", target.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(_) if path.exists() => Err(occupied("a file".into())),
        Err(e) => Err(io("reading", path)(e)),
    }
}

pub fn uninstall(plan: &InstallPlan) -> Result<Vec<String>, InstallError> {
    if plan.locked {
        return Err(InstallError::Locked(plan.policy_path.display().to_string()));
    }
    let mut done = Vec::new();
    if let Some(path) = &plan.runc_stand_in
        && std::fs::read_link(path).is_ok_and(|t| t == plan.runtime)
    {
        std::fs::remove_file(path).map_err(io("removing", path))?;
        done.push(format!("removed the runc stand-in {}", path.display()));
    }
    if let Some(text) = read_daemon_json(&plan.daemon_json)? {
        let unmerged = unmerge_daemon_json(&text, &plan.daemon_json)?;
        replace_with_backup(&plan.daemon_json, &unmerged)?;
        // Nothing but eci's own settings were in it (install made it):
        // no file at all is what Docker had before.
        if parse_object(Some(&unmerged), &plan.daemon_json)?.is_empty() {
            std::fs::remove_file(&plan.daemon_json).map_err(io("removing", &plan.daemon_json))?;
            done.push(format!(
                "removed {}: only eci's runtime was in it (previous version kept as {}.eci-backup)",
                plan.daemon_json.display(),
                plan.daemon_json.display()
            ));
        } else {
            done.push(format!(
                "removed runtime \"{RUNTIME_NAME}\" from {}",
                plan.daemon_json.display()
            ));
        }
    }
    if plan.run_systemctl {
        let _ = std::process::Command::new("systemctl")
            .args(["disable", UNIT_NAME])
            .status();
        done.push(format!("systemctl disable {UNIT_NAME}"));
    }
    let unit = plan.unit_dir.join(UNIT_NAME);
    if unit.exists() {
        std::fs::remove_file(&unit).map_err(io("removing", &unit))?;
        done.push(format!("removed {}", unit.display()));
    }
    done.push(format!(
        "kept the policy {} (remove it yourself if you wish)",
        plan.policy_path.display()
    ));
    Ok(done)
}

/// Tell systemd (Type=notify) that the agent enforces and serves.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = PathBuf::from(path);
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let _ = if let Some(abstract_name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| socket.send_to_addr(b"READY=1", &addr))
    } else {
        socket.send_to(b"READY=1", &path)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path) -> InstallPlan {
        InstallPlan {
            agent: "/usr/local/bin/eci-agent".into(),
            runtime: "/usr/local/bin/eci-runc".into(),
            unit_dir: dir.join("systemd"),
            daemon_json: dir.join("docker/daemon.json"),
            policy_path: dir.join("eci/admin-settings.json"),
            default_policy: "{}\n".into(),
            locked: false,
            run_systemctl: false,
            make_default: true,
            runc_stand_in: Some(dir.join("sbin/runc")),
        }
    }

    #[test]
    fn merge_keeps_every_user_setting() {
        let before = r#"{"log-driver": "journald", "runtimes": {"kata": {"path": "/k"}}, "default-runtime": "runc"}"#;
        let after = merge_daemon_json(
            Some(before),
            Path::new("d.json"),
            Path::new("/x/eci-runc"),
            false,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&after).unwrap();
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(v["default-runtime"], "runc");
        assert_eq!(v["runtimes"]["kata"]["path"], "/k");
        assert_eq!(v["runtimes"]["eci"]["path"], "/x/eci-runc");
        let undone = unmerge_daemon_json(&after, Path::new("d.json")).unwrap();
        let u: Value = serde_json::from_str(&undone).unwrap();
        assert_eq!(u["runtimes"]["kata"]["path"], "/k");
        assert!(u["runtimes"].get("eci").is_none());
    }

    #[test]
    fn the_settings_eci_needs_are_read_from_what_install_writes() {
        let none = daemon_settings(None, Path::new("d.json")).unwrap();
        assert_eq!(none.eci_runtime, None);
        assert_eq!(none.data_root, PathBuf::from(DEFAULT_DOCKER_DATA_ROOT));
        assert!(!none.eci_is_default());
        let merged = merge_daemon_json(
            Some(r#"{"data-root": "/srv/docker"}"#),
            Path::new("d.json"),
            Path::new("/x/eci-runc"),
            true,
        )
        .unwrap();
        let read = daemon_settings(Some(&merged), Path::new("d.json")).unwrap();
        assert_eq!(read.eci_runtime, Some(PathBuf::from("/x/eci-runc")));
        assert!(read.eci_is_default());
        assert_eq!(read.data_root, PathBuf::from("/srv/docker"));
        assert!(daemon_settings(Some("{oops"), Path::new("d.json")).is_err());
    }

    #[test]
    fn eci_becomes_the_default_runtime_while_the_policy_turns_it_on() {
        let before = r#"{"default-runtime": "runc"}"#;
        let after = merge_daemon_json(
            Some(before),
            Path::new("d.json"),
            Path::new("/x/eci-runc"),
            true,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&after).unwrap();
        assert_eq!(v["default-runtime"], "eci");
        let undone = unmerge_daemon_json(&after, Path::new("d.json")).unwrap();
        let u: Value = serde_json::from_str(&undone).unwrap();
        assert!(u.get("default-runtime").is_none());
    }

    #[test]
    fn uninstall_removes_a_daemon_json_that_only_eci_filled_and_keeps_the_admins() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        install(&p).unwrap();
        assert!(p.daemon_json.exists());
        uninstall(&p).unwrap();
        assert!(
            !p.daemon_json.exists(),
            "install made it: uninstall removes it"
        );

        std::fs::write(&p.daemon_json, r#"{"log-level": "warn"}"#).unwrap();
        install(&p).unwrap();
        uninstall(&p).unwrap();
        let left: Value =
            serde_json::from_str(&std::fs::read_to_string(&p.daemon_json).unwrap()).unwrap();
        assert_eq!(left, serde_json::json!({"log-level": "warn"}));
    }

    #[test]
    fn eci_runc_stands_in_for_runc_and_never_replaces_a_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        let stand_in = p.runc_stand_in.clone().unwrap();
        install(&p).unwrap();
        assert_eq!(std::fs::read_link(&stand_in).unwrap(), p.runtime);
        install(&p).unwrap(); // again: nothing to do
        uninstall(&p).unwrap();
        assert!(std::fs::symlink_metadata(&stand_in).is_err());
        // A real runc there is the administrator's: refused, nothing written.
        std::fs::write(&stand_in, "#!/bin/sh\n").unwrap();
        let before = std::fs::read_to_string(&p.daemon_json).ok();
        let err = install(&p).unwrap_err().to_string();
        assert!(
            err.contains("stands in for `runc`") && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&p.daemon_json).ok(), before);
        assert_eq!(std::fs::read_to_string(&stand_in).unwrap(), "#!/bin/sh\n");
    }

    #[test]
    fn install_on_real_files_backs_up_and_uninstall_reverts() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        std::fs::create_dir_all(p.daemon_json.parent().unwrap()).unwrap();
        std::fs::write(&p.daemon_json, r#"{"debug": true}"#).unwrap();
        std::fs::set_permissions(&p.daemon_json, std::fs::Permissions::from_mode(0o600)).unwrap();
        let done = install(&p).unwrap();
        assert!(
            done.iter().any(|d| d.contains("previous version kept")),
            "{done:?}"
        );
        let backup =
            std::fs::read_to_string(format!("{}.eci-backup", p.daemon_json.display())).unwrap();
        assert_eq!(backup, r#"{"debug": true}"#);
        let merged: Value =
            serde_json::from_str(&std::fs::read_to_string(&p.daemon_json).unwrap()).unwrap();
        assert_eq!(merged["debug"], true);
        assert_eq!(merged["runtimes"]["eci"]["path"], "/usr/local/bin/eci-runc");
        assert_eq!(
            std::fs::metadata(&p.daemon_json)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(p.unit_dir.join(UNIT_NAME).exists());
        assert_eq!(std::fs::read_to_string(&p.policy_path).unwrap(), "{}\n");
        uninstall(&p).unwrap();
        let reverted: Value =
            serde_json::from_str(&std::fs::read_to_string(&p.daemon_json).unwrap()).unwrap();
        assert_eq!(reverted, serde_json::json!({"debug": true}));
        assert!(!p.unit_dir.join(UNIT_NAME).exists());
    }

    #[test]
    fn malformed_daemon_json_is_refused_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        std::fs::create_dir_all(p.daemon_json.parent().unwrap()).unwrap();
        let broken = "{\n  \"debug\": true,\n  oops\n}";
        std::fs::write(&p.daemon_json, broken).unwrap();
        let err = install(&p).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("left untouched"), "{err}");
        assert_eq!(std::fs::read_to_string(&p.daemon_json).unwrap(), broken);
        assert!(
            !p.unit_dir.join(UNIT_NAME).exists(),
            "nothing is written before the inputs check out"
        );
        std::fs::write(&p.daemon_json, "[1, 2]").unwrap();
        assert!(install(&p).unwrap_err().to_string().contains("JSON object"));
    }

    #[test]
    fn locked_policy_refuses_uninstall() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = plan(dir.path());
        p.locked = true;
        let err = uninstall(&p).unwrap_err().to_string();
        assert!(err.contains("locked"), "{err}");
    }

    #[test]
    fn locked_unit_is_required_by_the_engine() {
        let text = unit_text(Path::new("/usr/local/bin/eci-agent"), true);
        assert!(text.contains("RequiredBy=containerd.service docker.service"));
        assert!(text.contains("Before=containerd.service docker.service"));
        assert!(
            unit_text(Path::new("/a"), false)
                .contains("WantedBy=containerd.service docker.service")
        );
    }

    #[test]
    fn unit_passes_systemd_analyze_verify() {
        let Ok(out) = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        else {
            println!("SKIP: unit_passes_systemd_analyze_verify: systemd-analyze is not installed");
            return;
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        // verify checks that ExecStart exists: point it at a real binary.
        let agent = std::env::current_exe().unwrap();
        let unit = dir.path().join(UNIT_NAME);
        std::fs::write(&unit, unit_text(&agent, true)).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = text.lines().filter(|l| l.contains(UNIT_NAME)).collect();
        assert!(
            out.status.success() && problems.is_empty(),
            "systemd-analyze verify: {text}"
        );
    }
}
