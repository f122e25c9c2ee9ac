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
    )?;
    // The build id's hash of the object (FNV-1a over the object, then the
    // version; `attach::build_id`), computed once here: hashing megabytes
    // cost every command about 2 ms at run time.
    let object = std::fs::read(format!("{}/netpath-ebpf", std::env::var("OUT_DIR")?))?;
    let version = std::env::var("CARGO_PKG_VERSION")?;
    let h = object
        .iter()
        .chain(version.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    println!("cargo:rustc-env=NETPATH_EBPF_FNV={h:016x}");
    Ok(())
}
