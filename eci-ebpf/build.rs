//! bpf-linker must be rebuilt when the nightly toolchain changes; make cargo
//! notice a new linker binary.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
