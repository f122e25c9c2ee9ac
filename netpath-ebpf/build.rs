use which::which;

/// The eBPF crate links with bpf-linker; rebuild when it changes and fail
/// early with a clear message when it is missing (`cargo xtask setup` installs it).
fn main() {
    // The variant build (`NETPATH_EBPF_VARIANT`, for the upgrade test) differs.
    println!("cargo:rerun-if-env-changed=NETPATH_EBPF_VARIANT");
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!("bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
