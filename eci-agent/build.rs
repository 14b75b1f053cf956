//! Builds the BPF programs (crate `eci-ebpf`) for the BPF target with the
//! pinned nightly toolchain and bpf-linker; the object is embedded in the
//! agent with `include_bytes_aligned!`.
//!
//! The nightly is pinned because bpf-linker must link the same LLVM as the
//! rustc that emits the bitcode (`cargo xtask setup` installs both).

/// The pinned nightly: `channel` of eci-ebpf's rust-toolchain.toml (the one
/// place it is written; `cargo xtask setup` reads it too).
fn bpf_nightly(ebpf_dir: &std::path::Path) -> anyhow::Result<String> {
    let file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", file.display());
    let text = std::fs::read_to_string(&file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} names no channel", file.display()))
}

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("eci-agent has no parent directory"))?;
    let ebpf_dir = root.join("eci-ebpf");
    let nightly = bpf_nightly(&ebpf_dir)?;
    let common_dir = root.join("eci-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("the eci-ebpf path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "eci-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(&nightly),
    )
    .map_err(|err| {
        anyhow::anyhow!(
            "building the BPF programs failed: {err:#}\nrun `cargo xtask setup` to install the pinned nightly ({nightly}) with rust-src and a matching bpf-linker"
        )
    })
}
