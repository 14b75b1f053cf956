//! Builds the BPF programs (crate `eci-ebpf`) for the BPF target with the
//! pinned nightly toolchain and bpf-linker; the object is embedded in the
//! agent with `include_bytes_aligned!`.
//!
//! The nightly is pinned because bpf-linker must link the same LLVM as the
//! rustc that emits the bitcode (`cargo xtask setup` installs both).

/// Keep in sync with `xtask` (`BPF_NIGHTLY`).
const BPF_NIGHTLY: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("eci-agent has no parent directory"))?;
    let ebpf_dir = root.join("eci-ebpf");
    let common_dir = root.join("eci-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("the eci-ebpf path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "eci-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(BPF_NIGHTLY),
    )
    .map_err(|err| {
        anyhow::anyhow!(
            "building the BPF programs failed: {err:#}\nrun `cargo xtask setup` to install the pinned nightly ({BPF_NIGHTLY}) with rust-src and a matching bpf-linker"
        )
    })
}
