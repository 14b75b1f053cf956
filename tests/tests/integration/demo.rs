//! The README's first command ends with `cargo xtask demo`: its script
//! (`xtask/src/demo.sh`) must finish with every step as expected, each step
//! within its time limit, and say so in its last line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use eci_integration_tests::{bpf_lsm_or_skip, workspace_bin};

#[test]
fn demo_ends_with_every_step_as_expected() {
    let name = "demo_ends_with_every_step_as_expected";
    if !bpf_lsm_or_skip(name) {
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let bin_dir = workspace_bin("eci-agent")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    // Its lines are shown as they come (the VM's console shows progress),
    // and kept for the verdict.
    let mut child = Command::new("sh")
        .arg(repo.join("xtask/src/demo.sh"))
        .current_dir(repo)
        .env("ECI_DEMO_BIN", &bin_dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("running the demo script");
    // Up to the verdict line, the script's last: what it started in the
    // background may hold the pipe open after it has ended.
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("the demo's stdout")).lines() {
        let line = line.expect("reading the demo's output");
        println!("{line}");
        let done = line.starts_with("ECI-DEMO-VERDICT:");
        lines.push(line);
        if done {
            break;
        }
    }
    let status = child.wait().expect("waiting for the demo script");
    let verdict = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("ECI-DEMO-VERDICT:"))
        .unwrap_or_else(|| {
            panic!(
                "the demo printed no verdict line (exit {:?})",
                status.code()
            )
        });
    assert!(
        verdict.starts_with("ECI-DEMO-VERDICT: PASS:") && status.success(),
        "{verdict} (exit {:?})",
        status.code()
    );
    // The demo leaves its engine and pinned rules behind (it runs in a VM
    // of its own); stop them so that nothing else in this VM sees them.
    let _ = Command::new("pkill").args(["-x", "dockerd"]).status();
    let _ = Command::new("pkill").args(["-x", "containerd"]).status();
    let _ = Command::new("pkill")
        .args(["-f", "eci-demo-listener"])
        .status();
    let _ = Command::new(bin_dir.join("eci-agent"))
        .arg("unload")
        .status();
}
