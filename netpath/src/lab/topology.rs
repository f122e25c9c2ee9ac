//! Throw-away topologies in network namespaces, for the demo and the tests:
//! uniquely named namespaces that are removed on drop (even on panic), veth
//! pairs created directly in them, and the standard lab ([`Lab`]); the traffic
//! between them is `traffic`'s (re-exported here).
//! Nothing here touches the root namespace.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns;

pub use super::traffic::{IO_TIMEOUT, exchange, ping, tcp_bulk, tcp_echo, tcp_echo_from, udp_echo};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace that exists for the lifetime of this value.
pub struct Netns {
    pub name: String,
    /// When set, `<netpath> --netns NAME down --all` runs before the
    /// namespace is deleted, so no pinned state outlives it.
    netpath: Option<PathBuf>,
    /// A cgroup v2 directory of its own for netpath's socket hooks (made by
    /// [`Netns::cleanup_with`], removed on drop): tests and the demo never
    /// attach them to the root cgroup. Pass it as `NETPATH_CGROUP`.
    pub cgroup: Option<PathBuf>,
}

impl Netns {
    /// Creates `np-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "np-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self {
            name,
            netpath: None,
            cgroup: None,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Makes drop run `netpath down --all` in this namespace first, and
    /// gives the namespace a cgroup for netpath's socket hooks.
    pub fn cleanup_with(mut self, netpath: impl Into<PathBuf>) -> Self {
        self.netpath = Some(netpath.into());
        if let Ok(root) = crate::sockhooks::cgroup2_root() {
            let cg = root.join(format!("netpath-test-{}", self.name));
            if std::fs::create_dir(&cg).is_ok() {
                self.cgroup = Some(cg);
            }
        }
        self
    }

    /// `netpath --netns NAME` with `NETPATH_CGROUP` set to this namespace's
    /// cgroup (when it has one).
    pub fn netpath(&self, bin: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(["--netns", &self.name]);
        if let Some(cg) = &self.cgroup {
            cmd.env("NETPATH_CGROUP", cg);
        }
        cmd
    }

    /// `ip -n NAME ARGS…`, returning stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command run inside the namespace with `ip netns exec`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A sysctl inside this namespace (never the root one).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        netns::run_in(&self.name, move || std::fs::write(path, value))?
            .with_context(|| format!("sysctl {key} in {}", self.name))
    }

    /// Runs `f` on a thread inside this namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        netns::run_in(&self.name, f)
    }

    /// Starts `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> JoinHandle<Result<T>> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            netns::enter(&name)?;
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(bin) = &self.netpath {
            let _ = Command::new(bin)
                .args(["--netns", &self.name, "down", "--all"])
                .output();
        }
        if let Some(cg) = &self.cgroup {
            // The daemon `down` stopped may still be leaving the cgroup: a
            // cgroup with a process in it cannot be removed (EBUSY).
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(cg).is_err() && cg.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A child process that is stopped when this value goes: SIGTERM to its
/// pid, SIGKILL after 5 s.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        // Once reaped its pid may be another process's: never signal it.
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: signalling the process this value started, not yet
        // reaped (so the pid is still its).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// The demo's and tests' standard Docker-like topology:
///
/// ```text
///  far: eth0 198.19.0.2/24 ── ext: far0 198.19.0.1/24 (small MTU; only with Lab::with_far)
///  ext: eth0 198.18.0.2/24 ── host: uplink0 198.18.0.1/24
///                              host: bridge (netpath up) 172.30.0.0/24, gateway .1
///  c1: eth0 172.30.0.2/24 ──── host: c1h (port)
///  c2: eth0 172.30.0.3/24 ──── host: c2h (port)
/// ```
/// The external side has no route to the containers' subnet, as on a real
/// network: containers reach it only through masquerading. Containers
/// default-route via the gateway. `far` sits one router (ext) further out,
/// behind a link whose MTU the test chooses.
pub struct Lab {
    pub ext: Netns,
    pub host: Netns,
    pub c1: Netns,
    pub c2: Netns,
    pub far: Option<Netns>,
}

impl Lab {
    pub const BRIDGE: &'static str = "np0";
    pub const SUBNET: &'static str = "172.30.0.0/24";
    pub const GATEWAY: &'static str = "172.30.0.1";
    pub const C1: &'static str = "172.30.0.2";
    pub const C2: &'static str = "172.30.0.3";
    pub const EXT: &'static str = "198.18.0.2";
    pub const UPLINK: &'static str = "198.18.0.1";
    pub const FAR: &'static str = "198.19.0.2";
    pub const FAR_ROUTER: &'static str = "198.19.0.1";

    /// A host namespace (cleaned up with `netpath` on drop) and an external
    /// one tagged `host_tag` and `ext_tag`, joined by a veth: `uplink` on
    /// the host side with [`Lab::UPLINK`], `eth0` outside with [`Lab::EXT`]
    /// (a /24). What every lab, the demo and the end-to-end stacks stand on.
    pub fn host_and_ext(
        host_tag: &str,
        ext_tag: &str,
        netpath: impl Into<PathBuf>,
        uplink: &str,
    ) -> Result<(Netns, Netns)> {
        let host = Netns::new(host_tag)?.cleanup_with(netpath);
        let ext = Netns::new(ext_tag)?;
        veth(&host, uplink, &ext, "eth0")?;
        host.ip(&[
            "addr",
            "add",
            &format!("{}/24", Self::UPLINK),
            "dev",
            uplink,
        ])?;
        ext.ip(&["addr", "add", &format!("{}/24", Self::EXT), "dev", "eth0"])?;
        Ok((host, ext))
    }

    /// Builds everything except the bridge, which `netpath up` creates;
    /// `netpath` is the binary that cleans up pinned state on drop.
    pub fn new(netpath: impl Into<PathBuf>) -> Result<Self> {
        let (host, ext) = Self::host_and_ext("host", "ext", netpath, "uplink0")?;
        let lab = Self {
            ext,
            host,
            c1: Netns::new("c1")?,
            c2: Netns::new("c2")?,
            far: None,
        };
        for (c, host_if, addr) in [(&lab.c1, "c1h", Self::C1), (&lab.c2, "c2h", Self::C2)] {
            veth(&lab.host, host_if, c, "eth0")?;
            c.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            c.ip(&["route", "add", "default", "via", Self::GATEWAY])?;
        }
        Ok(lab)
    }

    /// Like [`Lab::new`] plus `far`, reached through ext over a link whose
    /// MTU towards far is `mtu` (ext routes; it still knows nothing of 172.30/24).
    pub fn with_far(netpath: impl Into<PathBuf>, mtu: u32) -> Result<Self> {
        let mut lab = Self::new(netpath)?;
        let far = Netns::new("far")?;
        veth(&lab.ext, "far0", &far, "eth0")?;
        // ext's side of the link has the small MTU. far keeps 1500 on its
        // device; its route caps what it sends itself but still advertises a
        // full-size TCP MSS, so the path MTU must be discovered.
        let mtu = mtu.to_string();
        lab.ext.ip(&["link", "set", "far0", "mtu", &mtu])?;
        lab.ext
            .ip(&["addr", "add", "198.19.0.1/24", "dev", "far0"])?;
        far.ip(&["addr", "add", "198.19.0.2/24", "dev", "eth0"])?;
        far.ip(&[
            "route",
            "add",
            "default",
            "via",
            Self::FAR_ROUTER,
            "mtu",
            &mtu,
            "advmss",
            "1460",
        ])?;
        lab.ext.sysctl("net.ipv4.ip_forward", "1")?;
        lab.host
            .ip(&["route", "add", "198.19.0.0/24", "via", Self::EXT])?;
        lab.far = Some(far);
        Ok(lab)
    }

    /// The far namespace (built by [`Lab::with_far`]).
    pub fn far(&self) -> &Netns {
        self.far.as_ref().expect("lab built with_far")
    }

    /// The scenario most tests repeat, outwards: `from` opens a TCP
    /// connection to an echo server on the external host's `port`; returns
    /// the source the external host saw (the uplink's address when
    /// masqueraded).
    pub fn tcp_out(&self, from: &Netns, port: u16) -> Result<SocketAddrV4> {
        let ext: Ipv4Addr = Self::EXT.parse().context("EXT")?;
        tcp_echo(
            &self.ext,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            from,
            SocketAddrV4::new(ext, port),
            b"out",
        )
    }

    /// And inwards: the external host dials `dial` (a published port, or a
    /// container address), served by `to` on `port`; returns the client
    /// address the container saw.
    pub fn tcp_in(&self, to: &Netns, port: u16, dial: SocketAddrV4) -> Result<SocketAddrV4> {
        tcp_echo(
            to,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            &self.ext,
            dial,
            b"in",
        )
    }

    /// Enslaves the container ports to the bridge (after `up` created it).
    pub fn plug_ports(&self) -> Result<()> {
        for p in ["c1h", "c2h"] {
            self.host.ip(&["link", "set", p, "master", Self::BRIDGE])?;
        }
        Ok(())
    }
}
