//! Docker's userland proxy (`docker-proxy`) on the iptables arm: Docker's
//! path for a container reaching another network's published port, which
//! its nat rules leave alone (`-A DOCKER -i <bridge> -j RETURN`).

use std::{
    fmt,
    io::{Read as _, Seek as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::topology::{Netns, Process};

/// How long a starting proxy may take to listen.
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
/// listens. `None` when the binary is not here.
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
    launch(cmd, bin, port, &log).map(Some)
}

/// Runs `cmd` (nsenter, which execs `bin`: the pid is then the proxy's)
/// and waits until it listens on `port`. Its stderr goes to `log`,
/// unlinked at once: read when it fails, gone with the process.
fn launch(mut cmd: Command, bin: PathBuf, port: u16, log: &Path) -> Result<Proxy> {
    let mut said = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(log)
        .with_context(|| format!("creating {}", log.display()))?;
    std::fs::remove_file(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(said.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proxy = Proxy {
        bin,
        process: Process(child),
    };
    let deadline = Instant::now() + PATIENCE;
    let failed = loop {
        if let Some(status) = proxy.process.0.try_wait()? {
            break format!("exited ({status})");
        }
        if proxy.listens(port) {
            return Ok(proxy);
        }
        if Instant::now() > deadline {
            break format!("did not listen on {port} within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut text = String::new();
    said.rewind()?;
    said.read_to_string(&mut text)?;
    bail!("{proxy} {failed}: {}", text.trim())
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

    #[test]
    fn a_proxy_that_exits_says_why() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "echo 'listen tcp 0.0.0.0:5001: bind: address already in use' >&2; exit 1",
        ]);
        let log = std::env::temp_dir().join(format!("np-proxy-test-{}.log", std::process::id()));
        let err = launch(cmd, PathBuf::from("/bin/sh"), 5001, &log)
            .err()
            .expect("an exiting proxy is an error");
        let err = format!("{err:#}");
        assert!(err.contains("exited (exit status: 1)"), "{err}");
        assert!(err.contains("address already in use"), "{err}");
        assert!(!log.exists(), "the log is unlinked");
    }
}
