//! The workloads: small purpose-built clients and servers run on threads
//! inside the namespaces (so every arm runs the very same code), each pinned
//! to a CPU of its own (server on CPU 0, client on CPU 1 when there are two).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::topology::Netns;

/// Pins the calling thread to `cpu` (modulo the CPUs there are).
fn pin(cpu: usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;

/// A server thread in `ns`: `serve(stop)` runs until `stop` is set.
struct Server {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<u64>>,
}

impl Server {
    fn start(
        ns: &Netns,
        serve: impl FnOnce(Arc<AtomicBool>, mpsc::Sender<()>) -> Result<u64> + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let s = stop.clone();
        let handle = ns.spawn(move || {
            pin(SERVER_CPU);
            serve(s, tx)
        });
        if rx.recv_timeout(Duration::from_secs(3)).is_err() {
            return Err(handle
                .join()
                .map_err(|_| anyhow::anyhow!("server panicked"))?
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("server did not start")));
        }
        Ok(Self { stop, handle })
    }

    fn finish(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))?
    }
}

fn client<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    ns.spawn(move || {
        pin(CLIENT_CPU);
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client panicked"))?
}

/// The unspecified address of `dial`'s family with `port`: what a server
/// (or a client's own end) of a workload dialled at `dial` binds.
fn any(dial: SocketAddr, port: u16) -> SocketAddr {
    match dial {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
    }
}

/// Accepts connections until stopped, each handled by `conn` on this thread.
fn accept_loop(
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
    mut conn: impl FnMut(TcpStream) -> u64,
) -> Result<u64> {
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    l.set_nonblocking(true)?;
    let _ = ready.send(());
    let mut total = 0;
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                total += conn(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(total)
}

/// TCP stream: one connection writing 64 KiB chunks for `dur`. Gbit/s
/// received by the server.
pub fn tcp_stream(
    server_ns: &Netns,
    port: u16,
    client_ns: &Netns,
    dial: SocketAddr,
    dur: Duration,
) -> Result<f64> {
    let server = Server::start(server_ns, move |stop, ready| {
        accept_loop(any(dial, port), stop, ready, |mut s| {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            n
        })
    })?;
    let started = Instant::now();
    let sent = client(client_ns, move || -> Result<u64> {
        let mut s = TcpStream::connect_timeout(&dial, Duration::from_secs(2))
            .with_context(|| format!("connect {dial}"))?;
        let buf = vec![0x5au8; 1 << 16];
        let mut n = 0u64;
        let t = Instant::now();
        while t.elapsed() < dur {
            s.write_all(&buf)?;
            n += buf.len() as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
        Ok(n)
    })?;
    let secs = started.elapsed().as_secs_f64();
    let received = server.finish()?;
    if received < sent {
        bail!("server received {received} of {sent} bytes");
    }
    Ok(received as f64 * 8.0 / secs / 1e9)
}

/// UDP 64-byte datagrams sent as fast as one thread can for `dur`:
/// datagrams per second the server received.
pub fn udp_pps(
    server_ns: &Netns,
    port: u16,
    client_ns: &Netns,
    dial: SocketAddr,
    dur: Duration,
) -> Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let server = Server::start(server_ns, move |stop, ready| {
        let s = UdpSocket::bind(any(dial, port))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = ready.send(());
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if s.recv(&mut buf).is_ok() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(0)
    })?;
    client(client_ns, move || -> Result<()> {
        let s = UdpSocket::bind(any(dial, 0))?;
        s.connect(dial)?;
        let buf = [0x42u8; 64];
        let t = Instant::now();
        while t.elapsed() < dur {
            // ENOBUFS/ECONNREFUSED under load are part of the measurement.
            let _ = s.send(&buf);
        }
        Ok(())
    })?;
    // Let the last datagrams land.
    std::thread::sleep(Duration::from_millis(100));
    server.finish()?;
    Ok(count.load(Ordering::Relaxed) as f64 / dur.as_secs_f64())
}

/// What [`udp_replied`] measured: replies received a second, and every
/// replied datagram's round trip in microseconds.
pub struct UdpReplied {
    pub pps: f64,
    pub rtts: Vec<f64>,
}

/// Datagrams in flight at once in [`udp_replied`]: enough to keep both
/// CPUs busy (a strict ping-pong would measure wake-up latency, not the
/// datapath), few enough that the socket buffers never overflow.
pub const UDP_WINDOW: usize = 8;

/// UDP 64-byte request/response: the server echoes every datagram, the
/// client keeps [`UDP_WINDOW`] in flight on one socket for `dur`, so the
/// flow is answered (conntrack sees it established, as for DNS or QUIC)
/// and every datagram after the first takes the established path. Each
/// datagram carries its send time, so the round trips are exact per
/// datagram (queueing behind the window included). A window lost to a
/// drop is refilled after 20 ms without replies.
pub fn udp_replied(
    server_ns: &Netns,
    port: u16,
    client_ns: &Netns,
    dial: SocketAddr,
    dur: Duration,
) -> Result<UdpReplied> {
    let server = Server::start(server_ns, move |stop, ready| {
        let s = UdpSocket::bind(any(dial, port))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = ready.send(());
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((k, from)) = s.recv_from(&mut buf) {
                // A full socket buffer under load is part of the measurement.
                let _ = s.send_to(&buf[..k], from);
                n += 1;
            }
        }
        Ok(n)
    })?;
    let rtts = client(client_ns, move || -> Result<Vec<f64>> {
        let s = UdpSocket::bind(any(dial, 0))?;
        s.connect(dial)?;
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        let t0 = Instant::now();
        let send = |buf: &mut [u8; 64]| {
            let ns = t0.elapsed().as_nanos() as u64;
            buf[..8].copy_from_slice(&ns.to_le_bytes());
            // ECONNREFUSED (an ICMP error of an earlier datagram) and
            // ENOBUFS are losses the window refill covers.
            let _ = s.send(buf);
        };
        let mut out = Vec::new();
        let mut buf = [0x42u8; 64];
        // Datagrams believed in flight: a reply takes one off, a silence
        // declares them all lost (a late reply then only lowers the count
        // further), and the window is topped up after either.
        let mut in_flight = 0;
        while t0.elapsed() < dur {
            while in_flight < UDP_WINDOW {
                send(&mut buf);
                in_flight += 1;
            }
            match s.recv(&mut buf) {
                Ok(64) => {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&buf[..8]);
                    let at = Duration::from_nanos(u64::from_le_bytes(sent));
                    out.push(t0.elapsed().saturating_sub(at).as_secs_f64() * 1e6);
                    in_flight = in_flight.saturating_sub(1);
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    in_flight = 0;
                }
                // ECONNREFUSED reported on recv: keep going.
                Err(_) => {}
            }
        }
        Ok(out)
    })?;
    server.finish()?;
    if rtts.is_empty() {
        bail!("no datagram was answered");
    }
    Ok(UdpReplied {
        pps: rtts.len() as f64 / dur.as_secs_f64(),
        rtts,
    })
}

/// Request/response latency: 64-byte ping-pong on one TCP connection, back
/// to back for `dur` (or at `rate` requests per second). Returns every
/// round trip in microseconds.
pub fn tcp_rr(
    server_ns: &Netns,
    port: u16,
    client_ns: &Netns,
    dial: SocketAddr,
    dur: Duration,
    rate: Option<u32>,
) -> Result<Vec<f64>> {
    let server = Server::start(server_ns, move |stop, ready| {
        accept_loop(any(dial, port), stop, ready, |mut s| {
            let mut buf = [0u8; 64];
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            let mut n = 0;
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
                n += 1;
            }
            n
        })
    })?;
    let rtts = client(client_ns, move || -> Result<Vec<f64>> {
        let mut s = TcpStream::connect_timeout(&dial, Duration::from_secs(2))
            .with_context(|| format!("connect {dial}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0x11u8; 64];
        let mut out = Vec::new();
        let gap = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        let t = Instant::now();
        let mut next = t;
        while t.elapsed() < dur {
            if let Some(g) = gap {
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
                next += g;
            }
            let start = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            out.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(out)
    })?;
    server.finish()?;
    if rtts.is_empty() {
        bail!("no round trip completed");
    }
    Ok(rtts)
}

/// New TCP connections per second: connect, one byte each way, close (with
/// RST, so the client's ports do not pile up in TIME_WAIT), for `dur`.
pub fn tcp_cps(
    server_ns: &Netns,
    port: u16,
    client_ns: &Netns,
    dial: SocketAddr,
    dur: Duration,
) -> Result<f64> {
    let server = Server::start(server_ns, move |stop, ready| {
        accept_loop(any(dial, port), stop, ready, |mut s| {
            let mut b = [0u8; 1];
            s.set_read_timeout(Some(Duration::from_secs(1))).ok();
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
            1
        })
    })?;
    let done = client(client_ns, move || -> Result<u64> {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < dur {
            let mut s = TcpStream::connect_timeout(&dial, Duration::from_secs(2))
                .with_context(|| format!("connect {dial}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            set_linger_zero(&s);
            n += 1;
        }
        Ok(n)
    })?;
    server.finish()?;
    Ok(done as f64 / dur.as_secs_f64())
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket with a valid linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The `p`-th percentile (0..=100) of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}
