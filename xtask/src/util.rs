//! Small helpers shared by the xtask modules: paths and running commands.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of the xtask crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The ignored `build/` directory of the workspace.
pub fn build_dir() -> PathBuf {
    repo_root().join("build")
}

/// Renders a command for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("failed to start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds an executable on PATH (and in ~/.cargo/bin).
pub fn which(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One line of output from a streamed child, tagged with its stream.
pub enum Line {
    Out(String),
    Err(String),
}

fn pump(reader: impl Read + Send + 'static, tx: mpsc::Sender<Line>, is_err: bool) {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']).to_string();
                    let line = if is_err {
                        Line::Err(text)
                    } else {
                        Line::Out(text)
                    };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Runs a command, echoing its stdout/stderr live to ours and returning all
/// lines (both streams, in arrival order) with the exit status.
pub fn run_streamed(cmd: &mut Command) -> Result<(ExitStatus, Vec<String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{}`", describe(cmd)))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone(), false);
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx.clone(), true);
    }
    drop(tx);
    let mut lines = Vec::new();
    for line in rx {
        match line {
            Line::Out(l) => {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{l}");
                let _ = o.flush();
                lines.push(l);
            }
            Line::Err(l) => {
                eprintln!("{l}");
                lines.push(l);
            }
        }
    }
    let status = child.wait().context("waiting for a child process")?;
    Ok((status, lines))
}

/// Spawns a line reader over a child's stream (used by the VM runner).
pub fn line_channel(reader: impl Read + Send + 'static) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    pump(reader, tx, false);
    rx
}

/// Every binary of the workspace (the tests run the agent, eci-runc and
/// the test helpers from target/debug).
pub fn build_binaries() -> Result<()> {
    run(Command::new("cargo").args(["build", "--workspace", "--bins"]))
}

/// The version `eci-agent --version` of `bins` prints: what the package
/// and the image are labelled with.
pub fn agent_version(bins: &Path) -> Result<String> {
    let agent = bins.join("eci-agent");
    let out = output(Command::new(&agent).arg("--version"))
        .with_context(|| format!("{} is not built", agent.display()))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("`{} --version` printed no version: {out}", agent.display()))
}

/// Builds the release eci-agent and eci-runc (what the package and the
/// image hold); returns their directory.
pub fn release_binaries() -> Result<PathBuf> {
    run(Command::new("cargo").args(["build", "--release", "-p", "eci-agent", "-p", "eci-runc"]))?;
    Ok(repo_root().join("target/release"))
}

/// Where the agent and eci-runc a bench runs are: the debug build, or with
/// `release` the release build of both (built here), as a user installs them.
pub fn bench_binaries(release: bool) -> Result<PathBuf> {
    if !release {
        return Ok(repo_root().join("target/debug"));
    }
    run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "eci-agent",
        "-p",
        "eci-runc",
        "-p",
        "eci-integration-tests",
        // `--bin` selects among every package named: all three binaries.
        "--bin",
        "eci-agent",
        "--bin",
        "eci-runc",
        "--bin",
        "eci-bench",
    ]))?;
    Ok(repo_root().join("target/release"))
}
