//! The README's first command ends with `cargo xtask demo`: its script
//! (`xtask/src/demo.sh`) must finish with every step as expected, each step
//! within its time limit, and say so in its last line.

use std::process::Command;

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
    let out = Command::new("sh")
        .arg(repo.join("xtask/src/demo.sh"))
        .current_dir(repo)
        .env("ECI_DEMO_BIN", &bin_dir)
        .output()
        .expect("running the demo script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let verdict = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("ECI-DEMO-VERDICT:"))
        .unwrap_or_else(|| {
            panic!(
                "the demo printed no verdict line (exit {:?})",
                out.status.code()
            )
        });
    assert!(
        verdict.starts_with("ECI-DEMO-VERDICT: PASS:") && out.status.success(),
        "{verdict} (exit {:?})",
        out.status.code()
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
