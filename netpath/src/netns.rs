//! Network namespaces and bpffs: entering a namespace like `ip -n`, naming the
//! current one (its cookie) and making sure bpffs is mounted.

use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Where `ip netns add` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `SO_NETNS_COOKIE` (Linux 5.14+), not yet in every libc crate.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Path of a named namespace (`/run/netns/NAME`).
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Moves the calling thread into the named network namespace. Threads it
/// spawns afterwards inherit it, so call this before starting a runtime.
pub fn enter(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid network namespace name {name:?}");
    }
    let path = path_of(name);
    if !path.exists() {
        bail!("network namespace {name} not found ({})", path.display());
    }
    enter_path(&path)
}

/// Moves the calling thread into the network namespace at `path` (a
/// `/run/netns` entry, a container runtime's sandbox file, `/proc/PID/ns/net`).
pub fn enter_path(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a valid fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into {}", path.display()));
    }
    Ok(())
}

/// Runs `f` on a new thread inside the named namespace and returns its result.
/// The calling thread's namespace is untouched.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let name = name.to_owned();
    run_on_thread(move || enter(&name), f)
}

/// [`run_in`] for the namespace at `path` (see [`enter_path`]).
pub fn run_in_path<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = path.to_owned();
    run_on_thread(move || enter_path(&path), f)
}

fn run_on_thread<T: Send + 'static>(
    enter: impl FnOnce() -> Result<()> + Send + 'static,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        enter()?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in network namespace panicked"))?
}

/// The cookie of the calling thread's network namespace: a 64-bit id that is
/// never reused while the machine is up (unlike inode numbers).
pub fn cookie() -> Result<u64> {
    // SAFETY: plain socket/getsockopt/close calls with valid arguments.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for SO_NETNS_COOKIE");
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err).context("getsockopt(SO_NETNS_COOKIE)");
        }
        Ok(cookie)
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs into a zeroed struct with a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Whether bpffs is mounted at [`BPFFS`].
pub fn bpffs_mounted() -> bool {
    is_bpffs(Path::new(BPFFS)).unwrap_or(false)
}

/// Mounts bpffs at [`BPFFS`] when it is not mounted yet.
pub fn ensure_bpffs() -> Result<()> {
    if bpffs_mounted() {
        return Ok(());
    }
    // Commands of two namespaces may both find it unmounted (each holds
    // only its own namespace's lock): one mounts, the other sees it
    // mounted, never a second bpffs stacked over the first's pins.
    let guard = crate::sys::lock_file("bpffs.lock")?;
    guard.lock().context("locking the bpffs mount")?;
    if bpffs_mounted() {
        return Ok(());
    }
    let target = CString::new(BPFFS)?;
    let fstype = CString::new("bpf")?;
    // SAFETY: mount(2) with valid C strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    Ok(())
}
