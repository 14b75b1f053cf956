//! The user-space side: the runc eci-runc wraps, Docker and containerd, and
//! eci's registration in Docker's daemon.json.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::Check;
use crate::install::{self, DaemonSettings, InstallError, RUNTIME_NAME};

/// How long a `--version` may take (a hung engine must not hang the doctor).
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} is not installed (not found)")]
    NotFound { program: String },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout { program: String },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The standard output of `program args`, within [`TIMEOUT`].
fn output_of(program: &str, args: &[&str]) -> Result<String, ToolError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ToolError::NotFound {
                program: program.into(),
            },
            _ => ToolError::Spawn {
                program: program.into(),
                source,
            },
        })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout {
                    program: program.into(),
                });
            }
            Err(source) => {
                return Err(ToolError::Spawn {
                    program: program.into(),
                    source,
                });
            }
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if !status.success() {
        return Err(ToolError::Failed {
            program: program.into(),
            status,
            stderr: stderr.lines().next().unwrap_or("").trim().to_owned(),
        });
    }
    Ok(stdout)
}

/// `runc version 1.1.5+ds1` (the first line of `runc --version`) → `1.1.5+ds1`.
pub fn runc_version(output: &str) -> Option<&str> {
    output
        .lines()
        .next()?
        .strip_prefix("runc version ")
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `containerd <package> <version> <revision>` → the version.
pub fn containerd_version(output: &str) -> Option<&str> {
    let mut words = output.split_whitespace();
    (words.next()? == "containerd").then_some(())?;
    words.nth(1)
}

/// The runc eci-runc would wrap: eci-runc's own choice (`ECI_RUNC_BINARY`,
/// the usual places, then PATH).
pub fn runc() -> Check {
    let runc = eci_runc::lifecycle::runc_binary();
    let install_it = "install runc (e.g. `apt install runc`) in /usr/sbin or /usr/bin, or point ECI_RUNC_BINARY at it in eci-runc's environment";
    if !runc.is_file() {
        return Check::fail(
            "runc",
            format!(
                "no runc (looked for ECI_RUNC_BINARY, /usr/sbin, /usr/bin, /usr/local/sbin, /usr/local/bin and PATH; {} is not there)",
                runc.display()
            ),
            install_it,
        );
    }
    // From the agent, eci-runc's stand-in for `runc` is a candidate too;
    // eci-runc skips itself, so that would leave it with no runc at all.
    if std::fs::canonicalize(&runc)
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "eci-runc"))
        .unwrap_or(false)
    {
        return Check::fail(
            "runc",
            format!(
                "the only runc found, {}, is eci-runc itself (its stand-in)",
                runc.display()
            ),
            install_it,
        );
    }
    let program = runc.display().to_string();
    match output_of(&program, &["--version"]) {
        Ok(out) => match runc_version(&out) {
            Some(version) => Check::ok(
                "runc",
                format!("runc {version} at {program} (the one eci-runc wraps)"),
            ),
            None => Check::warning(
                "runc",
                format!(
                    "{program} --version said \"{}\", not a runc version",
                    out.lines().next().unwrap_or("")
                ),
                install_it,
            ),
        },
        Err(err) => Check::fail("runc", err.to_string(), install_it),
    }
}

pub fn docker() -> Check {
    match output_of("docker", &["version", "--format", "{{.Server.Version}}"]) {
        Ok(out) => Check::ok("docker", format!("Docker Engine {}", out.trim())),
        Err(err @ ToolError::NotFound { .. }) => Check::warning(
            "docker",
            err.to_string(),
            "install Docker Engine (eci registers with it: `eci-agent install`); without it only runtimes that call runc directly get eci",
        ),
        Err(err) => Check::warning(
            "docker",
            format!("the Docker Engine did not answer: {err}"),
            "start it (`systemctl start docker`) and run the doctor again",
        ),
    }
}

pub fn containerd() -> Check {
    match output_of("containerd", &["--version"]) {
        Ok(out) => match containerd_version(&out) {
            Some(version) => Check::ok("containerd", format!("containerd {version}")),
            None => Check::warning(
                "containerd",
                format!("containerd --version said \"{}\"", out.trim()),
                "check the containerd installation",
            ),
        },
        Err(err @ ToolError::NotFound { .. }) => Check::warning(
            "containerd",
            err.to_string(),
            "install containerd (the Docker Engine runs its containers through it)",
        ),
        Err(err) => Check::warning(
            "containerd",
            err.to_string(),
            "check the containerd installation",
        ),
    }
}

/// eci's runtime in daemon.json (as `install` writes it), and the default
/// while the policy turns ECI on.
pub fn docker_runtime(
    path: &Path,
    daemon: &Result<DaemonSettings, InstallError>,
    enforcement: bool,
) -> Check {
    let name = "docker-runtime";
    let reload = "then `systemctl reload docker`";
    let settings = match daemon {
        Ok(settings) => settings,
        Err(err) => {
            return Check::fail(
                name,
                err.to_string(),
                format!(
                    "fix {} (Docker does not start with it either), then `eci-agent install`",
                    path.display()
                ),
            );
        }
    };
    let Some(runtime) = &settings.eci_runtime else {
        return Check::warning(
            name,
            format!(
                "eci's runtime \"{RUNTIME_NAME}\" is not registered in {}",
                path.display()
            ),
            format!("`eci-agent install` registers eci-runc with Docker, {reload}"),
        );
    };
    if !runtime.is_file() {
        return Check::fail(
            name,
            format!(
                "runtime \"{RUNTIME_NAME}\" in {} is {}, which does not exist",
                path.display(),
                runtime.display()
            ),
            format!("`eci-agent install --runtime <path of eci-runc>`, {reload}"),
        );
    }
    let registered = format!(
        "runtime \"{RUNTIME_NAME}\" is {} in {}",
        runtime.display(),
        path.display()
    );
    match (settings.eci_is_default(), enforcement) {
        (true, _) => Check::ok(name, format!("{registered}, the default runtime")),
        (false, false) => Check::ok(
            name,
            format!("{registered}, not the default (the policy turns ECI off)"),
        ),
        (false, true) => Check::warning(
            name,
            format!(
                "{registered} but not the default runtime (default-runtime: {})",
                settings
                    .default_runtime
                    .as_deref()
                    .unwrap_or("runc, Docker's own")
            ),
            format!(
                "`eci-agent install` makes it the default while the policy turns ECI on (or set \"default-runtime\": \"{RUNTIME_NAME}\" in {}), {reload}",
                path.display()
            ),
        ),
    }
}

/// daemon.json's settings for the other checks (`install`'s reader).
pub fn daemon_settings(path: &Path) -> Result<DaemonSettings, InstallError> {
    let text = install::read_daemon_json(path)?;
    install::daemon_settings(text.as_deref(), path)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::doctor::Status;

    #[test]
    fn versions_are_read_from_what_the_tools_print() {
        let runc = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        assert_eq!(runc_version(runc), Some("1.1.5+ds1"));
        assert_eq!(runc_version("crun version 1.8"), None);
        assert_eq!(
            containerd_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"
            ),
            Some("1.6.20~ds1")
        );
        assert_eq!(
            containerd_version("containerd containerd.io 1.7.27 05044ec0a9a7"),
            Some("1.7.27")
        );
        assert_eq!(containerd_version("something else 1 2"), None);
    }

    #[test]
    fn eci_must_be_registered_and_the_default_while_the_policy_turns_it_on() {
        let path = Path::new("/etc/docker/daemon.json");
        let exe = std::env::current_exe().unwrap();
        let settings = |runtime: Option<PathBuf>, default: Option<&str>| {
            Ok(DaemonSettings {
                eci_runtime: runtime,
                default_runtime: default.map(str::to_owned),
                data_root: "/var/lib/docker".into(),
            })
        };
        let check = docker_runtime(path, &settings(None, None), true);
        assert_eq!(check.status, Status::Warning);
        assert!(check.fix.unwrap().contains("eci-agent install"));
        let check = docker_runtime(path, &settings(Some(exe.clone()), Some("runc")), true);
        assert_eq!(check.status, Status::Warning, "{check:?}");
        let check = docker_runtime(path, &settings(Some(exe.clone()), Some("runc")), false);
        assert_eq!(check.status, Status::Ok, "{check:?}");
        let check = docker_runtime(path, &settings(Some(exe), Some("eci")), true);
        assert_eq!(check.status, Status::Ok, "{check:?}");
        let check = docker_runtime(
            path,
            &settings(Some("/nowhere/eci-runc".into()), None),
            true,
        );
        assert_eq!(check.status, Status::Fail, "{check:?}");
        let broken = install::daemon_settings(Some("{oops"), path);
        assert_eq!(docker_runtime(path, &broken, true).status, Status::Fail);
    }
}
