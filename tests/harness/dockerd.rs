//! The e2e tests' side of [`netpath::lab::dockerlab`]: whether dockerd can run,
//! and a panicking `docker` for test code.

pub use netpath::lab::dockerlab::{Dockerd, IMAGE};

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
