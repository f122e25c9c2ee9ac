//! Builds the kernel programs (`netpath-ebpf`) from source for
//! `bpfel-unknown-none` with the nightly toolchain and `-Z build-std=core`,
//! so `src/lib.rs` can embed the object with `include_bytes_aligned!`.

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../netpath-ebpf");
    // aya-build reruns on changes under the eBPF crate; the shared types too.
    println!("cargo:rerun-if-changed={manifest_dir}/../netpath-common");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netpath-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
