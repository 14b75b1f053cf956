fn main() {
    let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eci-ebpf"));
    println!("{}", object.len());
}
