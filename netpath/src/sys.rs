//! The two bpf(2) commands aya does not expose for pinned links: open a pin
//! (`BPF_OBJ_GET`) and detach a link at once (`BPF_LINK_DETACH`), so `down`
//! is synchronous instead of waiting for the kernel's deferred link release.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result};

/// Where daemons keep their pid files, logs and reports, and monitors
/// their lock.
pub const RUN_DIR: &str = "/run/netpath";

/// Where the CNI plugin keeps its per-container records.
pub const CNI_DIR: &str = "/run/netpath/cni";

/// The CNI records of the namespace with `cookie` (removed with its state
/// by the last `down`: they describe attachments that are gone then).
pub fn cni_records_dir(cookie: u64) -> std::path::PathBuf {
    std::path::Path::new(CNI_DIR).join(cookie.to_string())
}

/// What `netpath docker` could not mirror (one problem a line, rewritten
/// after every reconcile that changed them, removed when it stops), for
/// `status` to show.
pub fn docker_problems_path(cookie: u64) -> std::path::PathBuf {
    std::path::Path::new(RUN_DIR).join(format!("docker-{cookie}.problems"))
}

/// `RUN_DIR/name` opened to be flocked: created when missing, never
/// truncated (another process may hold its lock).
pub fn lock_file(name: &str) -> Result<std::fs::File> {
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let path = std::path::Path::new(RUN_DIR).join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Takes `f`'s flock if it is free: false when another process holds it.
pub fn try_lock(f: &std::fs::File, what: &str) -> Result<bool> {
    match f.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {what}")),
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, 8-byte aligned bpf_attr prefix of the size we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object.
pub fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 8];
    attr[0] = c.as_ptr() as u64; // pathname; bpf_fd and file_flags stay 0
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One `BPF_MAP_LOOKUP_BATCH` on the map `fd`: up to `count` entries
/// after the position `in_batch` (`None`: from the start) into `keys` and
/// `values` (`count` keys and values of the map's sizes, back to back),
/// the next position into `out_batch` (a hash map's is a bucket index,
/// four bytes). Returns how many entries were filled and whether the map
/// has no more (the kernel says ENOENT with the last entries).
pub fn lookup_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    in_batch: Option<&[u8]>,
    out_batch: &mut [u8],
    keys: &mut [u8],
    values: &mut [u8],
    count: u32,
) -> std::io::Result<(u32, bool)> {
    let mut attr = [0u64; 8];
    attr[0] = in_batch.map_or(0, |b| b.as_ptr() as u64);
    attr[1] = out_batch.as_mut_ptr() as u64;
    attr[2] = keys.as_mut_ptr() as u64;
    attr[3] = values.as_mut_ptr() as u64;
    // count (in: room, out: filled) and map_fd, two u32s in one word.
    attr[4] = u64::from(count) | u64::from(fd.as_raw_fd() as u32) << 32;
    let end = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(_) => false,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
        Err(e) => return Err(e),
    };
    // The kernel writes the count it filled back into the attribute.
    Ok(((attr[4] & 0xffff_ffff) as u32, end))
}

/// Detaches the link pinned at `path` and removes the pin. A pin whose link
/// is already defunct (its interface is gone) is just removed.
pub fn detach_pinned_link(path: &Path) -> Result<()> {
    let fd = obj_get(path).with_context(|| format!("opening pinned link {}", path.display()))?;
    let mut attr = [0u64; 8];
    attr[0] = u64::from(fd.as_raw_fd() as u32); // link_detach.link_fd
    match bpf(BPF_LINK_DETACH, &mut attr) {
        // ENOLINK: already detached (defunct), nothing left to do.
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(e) => return Err(e).with_context(|| format!("detaching link {}", path.display())),
    }
    std::fs::remove_file(path).with_context(|| format!("removing pin {}", path.display()))
}

/// While alive, SIGINT, SIGTERM and SIGHUP are blocked for the calling
/// thread (and the threads it starts meanwhile), so a command that changes
/// state finishes what it started instead of leaving half of it (a bridge
/// without its record, a table moved aside); a signal that came meanwhile
/// is delivered when it goes. netpath's runtimes are single-threaded, so
/// the thread is the process. Children start with an empty mask (std's
/// `Command` resets it), so the daemon `up` starts is not affected. SIGKILL
/// cannot be held: the next command repairs what an interrupted resize
/// left (`resize::repair`).
pub struct HoldSignals(libc::sigset_t);

impl HoldSignals {
    pub fn new() -> Self {
        // SAFETY: sigset operations on local sets, and pthread_sigmask on
        // the calling thread, keeping the old mask to put back.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Self(old)
        }
    }
}

impl Default for HoldSignals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HoldSignals {
    fn drop(&mut self) {
        // SAFETY: restoring the mask `new` replaced.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}
