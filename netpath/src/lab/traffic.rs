//! Real TCP, UDP and ICMP traffic between throw-away namespaces
//! (`topology`), for the demo and the tests: a server started and ready
//! before its client, echo exchanges from a chosen source, a bulk transfer,
//! a ping. Every wait has a deadline ([`IO_TIMEOUT`]).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::topology::{Netns, run};

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
        let s = TcpStream::connect_timeout(&dial.into(), IO_TIMEOUT)
            .with_context(|| format!("connect {dial}"))?;
        echo_client(s, &payload)
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

/// The client's half of an echo: sends `payload`, reads it back.
fn echo_client(mut s: TcpStream, payload: &[u8]) -> Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(payload)?;
    let mut got = vec![0u8; payload.len()];
    s.read_exact(&mut got).context("client read echo")?;
    if got != payload {
        bail!("echo mismatch");
    }
    Ok(())
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
    let client = move || -> Result<()> { echo_client(connect_from(bind, dial)?, &payload) };
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
