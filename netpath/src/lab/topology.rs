//! Throw-away topologies in network namespaces, for the demo and the tests:
//! uniquely named namespaces that are removed on drop (even on panic), veth
//! pairs created directly in them, and real TCP/UDP/ICMP traffic between them.
//! Nothing here touches the root namespace.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns;

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
            let _ = std::fs::remove_dir(cg);
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
        // SAFETY: signalling the process this value started.
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

pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn join<T>(h: JoinHandle<Result<T>>, what: &str) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("{what} thread panicked"))?
}

fn v4(peer: std::net::SocketAddr) -> Result<SocketAddrV4> {
    match peer {
        std::net::SocketAddr::V4(p) => Ok(p),
        std::net::SocketAddr::V6(p) => bail!("unexpected IPv6 peer {p}"),
    }
}

/// Starts `server` in `server_ns` and waits until it says it is ready
/// (listening), then runs `client` in `client_ns`. Returns the server's result.
pub fn exchange<T: Send + 'static>(
    what: &str,
    server_ns: &Netns,
    client_ns: &Netns,
    server: impl FnOnce(std::sync::mpsc::Sender<()>) -> Result<T> + Send + 'static,
    client: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<T> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = server_ns.spawn(move || server(ready_tx));
    if ready_rx.recv_timeout(IO_TIMEOUT).is_err() {
        return Err(join(server, "server")
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("server did not start")))
        .with_context(|| format!("{what} server in {}", server_ns.name));
    }
    let c = join(client_ns.spawn(client), "client");
    let s = join(server, "server");
    c.with_context(|| format!("{what} client in {}", client_ns.name))?;
    s.with_context(|| format!("{what} server in {}", server_ns.name))
}

/// Accepts one connection, giving up after `timeout` (so a server never
/// outlives a client that failed to connect).
fn accept_within(l: &TcpListener, timeout: Duration) -> Result<(TcpStream, std::net::SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false)?;
                return Ok((s, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// One TCP connection from `client_ns` to `server_ns`: the server (bound to
/// `listen`) echoes what it reads. Returns the client address the server saw.
pub fn tcp_echo(
    server_ns: &Netns,
    listen: SocketAddrV4,
    client_ns: &Netns,
    dial: SocketAddrV4,
    payload: &[u8],
) -> Result<SocketAddrV4> {
    let payload = payload.to_vec();
    let client = move || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&dial.into(), IO_TIMEOUT)
            .with_context(|| format!("connect {dial}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(&payload)?;
        let mut got = vec![0u8; payload.len()];
        s.read_exact(&mut got).context("client read echo")?;
        if got != payload {
            bail!("echo mismatch");
        }
        Ok(())
    };
    exchange(
        &format!("TCP {dial}"),
        server_ns,
        client_ns,
        echo_server(listen),
        client,
    )
}

/// Binds a listener on `listen`, trying again for up to a second while the
/// port is still in use: the previous exchange's server closed first, and
/// on a loaded machine its last socket can still hold the port for a
/// moment (seen once in CI as EADDRINUSE between two back-to-back echoes).
fn bind_again(listen: SocketAddrV4) -> Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match TcpListener::bind(listen) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("bind {listen}")),
        }
    }
}

/// A TCP server that accepts one connection on `listen`, echoes what it
/// reads and returns the client's address.
fn echo_server(
    listen: SocketAddrV4,
) -> impl FnOnce(std::sync::mpsc::Sender<()>) -> Result<SocketAddrV4> + Send + 'static {
    move |ready| {
        let l = bind_again(listen)?;
        let _ = ready.send(());
        let (mut s, peer) = accept_within(&l, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = vec![0u8; 65536];
        let n = s.read(&mut buf).context("server read")?;
        s.write_all(&buf[..n]).context("server write")?;
        v4(peer)
    }
}

/// A TCP connection from a socket bound to `bind` (an address of the
/// calling thread's namespace) to `dial`.
fn connect_from(bind: std::net::Ipv4Addr, dial: SocketAddrV4) -> Result<TcpStream> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let sin = |a: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: socket/bind/connect with valid arguments on a socket we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let local = sin(bind, 0);
        if libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {bind}"));
        }
        // Bounded like connect_timeout: a send timeout limits connect().
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as i64,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let remote = sin(*dial.ip(), dial.port());
        if libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("connect {dial}"));
        }
        Ok(TcpStream::from(fd))
    }
}

/// [`tcp_echo`] with the client's socket bound to `bind` (an address of
/// `client_ns`).
pub fn tcp_echo_from(
    server_ns: &Netns,
    listen: SocketAddrV4,
    client_ns: &Netns,
    bind: std::net::Ipv4Addr,
    dial: SocketAddrV4,
    payload: &[u8],
) -> Result<SocketAddrV4> {
    let payload = payload.to_vec();
    let client = move || -> Result<()> {
        let mut s = connect_from(bind, dial)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(&payload)?;
        let mut got = vec![0u8; payload.len()];
        s.read_exact(&mut got).context("client read echo")?;
        if got != payload {
            bail!("echo mismatch");
        }
        Ok(())
    };
    exchange(
        &format!("TCP {bind} -> {dial}"),
        server_ns,
        client_ns,
        echo_server(listen),
        client,
    )
}

/// A bulk TCP transfer: the client sends `bytes` bytes and half-closes; the
/// server counts them and answers with the count. Returns the client address
/// the server saw. Fails on a stall longer than `timeout`.
pub fn tcp_bulk(
    server_ns: &Netns,
    listen: impl Into<std::net::SocketAddr>,
    client_ns: &Netns,
    dial: impl Into<std::net::SocketAddr>,
    bytes: usize,
    timeout: Duration,
) -> Result<std::net::SocketAddr> {
    let (listen, dial) = (listen.into(), dial.into());
    let server = move |ready: std::sync::mpsc::Sender<()>| -> Result<std::net::SocketAddr> {
        let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
        let _ = ready.send(());
        let (mut s, peer) = accept_within(&l, IO_TIMEOUT)?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 65536];
        let mut total: u64 = 0;
        loop {
            match s.read(&mut buf).context("server read")? {
                0 => break,
                n => total += n as u64,
            }
        }
        s.write_all(&total.to_be_bytes())?;
        Ok(peer)
    };
    let client = move || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&dial, IO_TIMEOUT)
            .with_context(|| format!("connect {dial}"))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_read_timeout(Some(timeout))?;
        let chunk = vec![0x5au8; 65536];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).context("client write")?;
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut got = [0u8; 8];
        s.read_exact(&mut got).context("client read count")?;
        if u64::from_be_bytes(got) != bytes as u64 {
            bail!(
                "server counted {} of {bytes} bytes",
                u64::from_be_bytes(got)
            );
        }
        Ok(())
    };
    exchange(
        &format!("TCP bulk {dial}"),
        server_ns,
        client_ns,
        server,
        client,
    )
}

/// One UDP datagram from `client_ns` to `server_ns` and its echo. Returns the
/// client address the server saw.
pub fn udp_echo(
    server_ns: &Netns,
    listen: SocketAddrV4,
    client_ns: &Netns,
    dial: SocketAddrV4,
    payload: &[u8],
) -> Result<SocketAddrV4> {
    let payload = payload.to_vec();
    let server = move |ready: std::sync::mpsc::Sender<()>| -> Result<SocketAddrV4> {
        let s = UdpSocket::bind(listen).with_context(|| format!("bind udp {listen}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let _ = ready.send(());
        let mut buf = vec![0u8; 65536];
        let (n, peer) = s.recv_from(&mut buf).context("udp server recv")?;
        s.send_to(&buf[..n], peer)?;
        v4(peer)
    };
    let client = move || -> Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.send_to(&payload, dial)?;
        let mut buf = vec![0u8; 65536];
        let (n, _) = s.recv_from(&mut buf).context("udp client recv echo")?;
        if buf[..n] != payload[..] {
            bail!("udp echo mismatch");
        }
        Ok(())
    };
    exchange(&format!("UDP {dial}"), server_ns, client_ns, server, client)
}

/// `ping -c 1` from inside `ns`; Ok when a reply came back.
pub fn ping(ns: &Netns, dst: &str) -> Result<()> {
    run(ns.command("ping").args(["-c", "1", "-W", "2", dst]))
        .with_context(|| format!("ping {dst} from {}", ns.name))?;
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
