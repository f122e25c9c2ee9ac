//! The e2e tests' side of [`netpath::lab::dockerlab`]: whether dockerd can run,
//! and a panicking `docker` for test code.

pub use netpath::lab::dockerlab::{Dockerd, Engine, IMAGE};

/// Where `cargo xtask setup` unpacks Debian trixie's docker.io (dockerd
/// 26.1): `NETPATH_TEST_DOCKERD26`, else the workspace's
/// `target/engines/docker.io-trixie`.
fn trixie_root() -> std::path::PathBuf {
    std::env::var_os("NETPATH_TEST_DOCKERD26")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/engines/docker.io-trixie")
        })
}

/// dockerd 26.1 (trixie's docker.io, unpacked by `cargo xtask setup`), or
/// None with the reason printed. Under CI its absence is a failure.
pub fn engine_26() -> Option<Engine> {
    match Engine::unpacked(trixie_root()) {
        Ok(e) => Some(e),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: dockerd 26.1: {e:#} (cargo xtask setup unpacks it)"
            );
            eprintln!("SKIP: dockerd 26.1: {e:#} (cargo xtask setup unpacks it)");
            None
        }
    }
}

/// Whether dockerd can run here; prints why not. Under CI a missing
/// dockerd is a failure, not a skip (`.ci/run` installs docker.io).
pub fn available() -> bool {
    let Some(bin) = netpath::lab::dockerlab::missing() else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: {bin} is missing (cargo xtask setup installs docker.io)"
    );
    eprintln!("SKIP: {bin} is not installed (cargo xtask setup installs docker.io)");
    false
}

/// `docker ARGS…` against `d`, panicking with its output unless it succeeds.
pub fn docker(d: &Dockerd, args: &[&str]) -> String {
    d.docker(args).unwrap_or_else(|e| panic!("{e:#}"))
}
