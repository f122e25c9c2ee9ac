//! Whether this namespace's daemon runs, read from its pid file: the
//! daemon holds an flock on `/run/netpath/daemon-<cookie>.pid` for as long
//! as it lives and writes its pid and build into it. Below the daemon and
//! the reconcile, so a reconcile can tell whether a daemon of its build
//! watches the namespace (see `reconcile::Verify`).

use std::{
    fs::File,
    io::{Read as _, Seek as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{netns, sys::RUN_DIR};

/// The daemon's pid file for the namespace with `cookie`.
pub fn pid_path(cookie: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("daemon-{cookie}.pid"))
}

/// A running daemon, from its pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: i32,
    pub build: String,
}

/// Takes the pid file's lock (an flock) if it is free.
pub fn try_flock(f: &File) -> Result<bool> {
    crate::sys::try_lock(f, "the daemon pid file")
}

/// The daemon of the current namespace, if one runs (its lock is held).
pub fn running() -> Result<Option<Running>> {
    let path = pid_path(netns::cookie()?);
    let Ok(mut f) = File::open(&path) else {
        return Ok(None);
    };
    if try_flock(&f)? {
        // Nobody holds it: a stale file.
        return Ok(None);
    }
    // A daemon writes its pid right after taking the lock: give it a moment.
    for _ in 0..100 {
        let mut s = String::new();
        f.rewind()?;
        f.read_to_string(&mut s)?;
        let mut words = s.split_whitespace();
        if let (Some(Ok(pid)), Some(build)) = (words.next().map(str::parse), words.next()) {
            return Ok(Some(Running {
                pid,
                build: build.to_owned(),
            }));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{} is locked but holds no pid", path.display())
}

/// Whether a daemon of this build runs in the current namespace.
pub fn this_build_watches() -> bool {
    matches!(running(), Ok(Some(r)) if r.build == crate::attach::build_id())
}
