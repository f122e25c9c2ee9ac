//! Docker's userland proxy (`docker-proxy`) on the iptables arm: Docker's
//! path for a container reaching another network's published port, which
//! its nat rules leave alone (`-A DOCKER -i <bridge> -j RETURN`).

use std::{
    fmt,
    io::{Read as _, Seek as _},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::lab::topology::{Netns, Process};

/// How long a starting proxy may take to report.
const PATIENCE: Duration = Duration::from_secs(5);

/// A running `docker-proxy`, stopped when dropped.
pub struct Proxy {
    bin: PathBuf,
    process: Process,
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {})", self.bin.display(), self.process.0.id())
    }
}

/// Where Debian's docker.io puts it.
fn binary() -> Option<PathBuf> {
    [
        "/usr/sbin/docker-proxy",
        "/usr/bin/docker-proxy",
        "/usr/libexec/docker/docker-proxy",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Starts a proxy in `ns` from TCP `port` on every address to `to`'s
/// `port`, as Docker does for a published port, and waits until it
/// says it listens. `None` when the binary is not here.
pub fn start(ns: &Netns, port: u16, to: &str) -> Result<Option<Proxy>> {
    let Some(bin) = binary() else {
        return Ok(None);
    };
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name))
        .arg(&bin)
        .args(["-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port"])
        .arg(port.to_string())
        .args(["-container-ip", to, "-container-port"])
        .arg(port.to_string());
    let log = std::env::temp_dir().join(format!("{}-proxy.log", ns.name));
    launch(cmd, bin, &log).map(Some)
}

/// The fd on which `docker-proxy` reports its start to its parent:
/// `0\n` once it listens, `1\n<error>` when it cannot. Docker always
/// passes a pipe there. Without one the proxy's own socket (or Go's
/// epoll) may be fd 3, and the proxy closes it right after starting:
/// `accept4: bad file descriptor`, exit 0 (a CI failure of the bench).
const PARENT_FD: RawFd = 3;

/// Runs `cmd` (nsenter, which execs `bin`: the pid is then the proxy's)
/// with a status pipe on fd 3, and waits for the proxy's report. Its
/// stderr goes to `log`, unlinked at once: read when it fails, gone with
/// the process.
fn launch(mut cmd: Command, bin: PathBuf, log: &Path) -> Result<Proxy> {
    let mut said = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(log)
        .with_context(|| format!("creating {}", log.display()))?;
    std::fs::remove_file(log)?;
    let (mut status, to_parent) = std::io::pipe().context("a status pipe for the proxy")?;
    let fd = to_parent.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, and
    // makes only async-signal-safe calls (dup2, fcntl) on fds it owns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would leave close-on-exec set.
            let r = if fd == PARENT_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, PARENT_FD)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(said.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // Ours closed, the pipe ends when the proxy closes its end or exits.
    drop(to_parent);
    let mut proxy = Proxy {
        bin,
        process: Process(child),
    };
    // A blocking read on its own thread: a proxy that never reports is
    // killed when `proxy` drops, which ends the read.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut report = String::new();
        let _ = tx.send(status.read_to_string(&mut report).map(|_| report));
    });
    let failed = match rx.recv_timeout(PATIENCE) {
        Ok(Ok(report)) if report.starts_with("0\n") => return Ok(proxy),
        Ok(Ok(report)) => match report.strip_prefix("1\n") {
            Some(why) => format!("could not start: {why}"),
            None => format!("reported {report:?}"),
        },
        Ok(Err(e)) => format!("status pipe: {e}"),
        Err(_) => format!("did not report within {PATIENCE:?}"),
    };
    // A failing proxy exits right after its report: give it a moment.
    let mut exited = String::new();
    for _ in 0..50 {
        if let Some(status) = proxy.process.0.try_wait()? {
            exited = format!(" (exited, {status})");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    said.rewind()?;
    said.read_to_string(&mut text)?;
    bail!("{proxy} {failed}{exited}: {}", text.trim())
}

impl Proxy {
    /// Whether it has a TCP socket listening on `port`, read from its own
    /// view of its namespace (`/proc/<pid>/net`).
    pub fn listens(&self, port: u16) -> bool {
        let pid = self.process.0.id();
        // Before nsenter execs the proxy the pid is nsenter's, which may
        // still see the namespace it started in.
        let execd = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == self.bin);
        execd
            && ["tcp", "tcp6"].iter().any(|t| {
                std::fs::read_to_string(format!("/proc/{pid}/net/{t}"))
                    .is_ok_and(|table| listening_on(&table, port))
            })
    }
}

/// Whether a `/proc/net/tcp{,6}` table has a socket listening on `port`.
fn listening_on(table: &str, port: u16) -> bool {
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local_address rem_address st: 0A is LISTEN.
        f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
            0: 00000000:1389 00000000:0000 0A 00000000:00000000\n   \
            1: 0100007F:138A 0100007F:1389 01 00000000:00000000\n";
        assert!(listening_on(table, 5001));
        // 5002 only as an established connection's local end.
        assert!(!listening_on(table, 5002));
        assert!(!listening_on(table, 1389));
        let v6 = "  sl  local_address                         remote_address                        st\n   \
            0: 00000000000000000000000000000000:1389 00000000000000000000000000000000:0000 0A\n";
        assert!(listening_on(v6, 5001));
    }

    fn fake(script: &str) -> Result<Proxy> {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("np-proxy-test-{}-{n}.log", std::process::id()));
        let r = launch(cmd, PathBuf::from("/bin/sh"), &log);
        assert!(!log.exists(), "the log is unlinked");
        r
    }

    #[test]
    fn a_proxy_that_cannot_listen_says_why() {
        let err = fake(
            "printf '1\\nlisten tcp 0.0.0.0:5001: bind: address already in use' >&3; \
             echo 'giving up' >&2; exit 1",
        )
        .err()
        .expect("a failing proxy is an error");
        let err = format!("{err:#}");
        assert!(err.contains("could not start: listen tcp"), "{err}");
        assert!(err.contains("address already in use"), "{err}");
        assert!(err.contains("exit status: 1"), "{err}");
        assert!(err.contains("giving up"), "{err}");
    }

    #[test]
    fn a_proxy_is_started_once_it_reports_on_fd_3() {
        // fd 3 must be the pipe: writing to it fails the script otherwise.
        let mut proxy = fake("printf '0\\n' >&3 || exit 3; exec 3>&-; exec sleep 30")
            .expect("a proxy that reports 0 is started");
        assert!(proxy.process.0.try_wait().unwrap().is_none(), "it runs");
        drop(proxy);
        let err = fake("exec 3>&-; exit 0").err().expect("no report");
        let err = format!("{err:#}");
        assert!(err.contains("reported \"\""), "{err}");
        assert!(err.contains("exit status: 0"), "{err}");
    }
}
