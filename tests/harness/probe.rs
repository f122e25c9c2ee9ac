//! Live traffic that watches for gaps: a masqueraded TCP stream, a
//! masqueraded UDP flow and a published-port TCP stream in the standard
//! lab, each a ping-pong every 10 ms, each answer timestamped. A test runs
//! lifecycle events while they go, then asserts no connection broke and no
//! gap between answers was longer than it allows.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Lab, Netns, addr};

/// What one flow saw.
#[derive(Debug)]
pub struct Series {
    pub name: &'static str,
    /// When each answer came.
    pub answers: Vec<Instant>,
}

impl Series {
    /// The longest time without an answer.
    pub fn max_gap(&self) -> Duration {
        self.answers
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// The running flows.
pub struct Probe {
    stop: Arc<AtomicBool>,
    clients: Vec<(&'static str, JoinHandle<Result<Vec<Instant>>>)>,
    servers: Vec<JoinHandle<Result<()>>>,
}

const TICK: Duration = Duration::from_millis(10);
/// How long a client waits for one answer before it calls the flow broken.
const PATIENCE: Duration = Duration::from_secs(2);

fn tcp_echo_server(ns: &Netns, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<Result<()>> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(addr("0.0.0.0", port))?;
        let _ = tx.send(());
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => s.write_all(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e).context("server read"),
            }
        }
        Ok(())
    });
    ready(rx, h, "TCP")
}

/// Waits for a server thread's word that it listens; when it ended
/// instead, says why (its bind failing, say).
fn ready(rx: mpsc::Receiver<()>, h: JoinHandle<Result<()>>, what: &str) -> JoinHandle<Result<()>> {
    if let Err(e) = rx.recv_timeout(Duration::from_secs(3)) {
        let why = if h.is_finished() {
            match h.join() {
                Ok(Err(err)) => format!("{err:#}"),
                Ok(Ok(())) => "it returned".to_owned(),
                Err(_) => "it panicked".to_owned(),
            }
        } else {
            "still starting".to_owned()
        };
        panic!("{what} server not ready ({e}): {why}");
    }
    h
}

fn udp_echo_server(ns: &Netns, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<Result<()>> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let s = UdpSocket::bind(addr("0.0.0.0", port))
            .with_context(|| format!("binding UDP {port}"))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let _ = tx.send(());
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                s.send_to(&buf[..n], peer)?;
            }
        }
        Ok(())
    });
    ready(rx, h, "UDP")
}

fn tcp_client(
    ns: &Netns,
    dial: SocketAddrV4,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Vec<Instant>>> {
    ns.spawn(move || {
        let mut s = TcpStream::connect_timeout(&dial.into(), PATIENCE)
            .with_context(|| format!("connect {dial}"))?;
        s.set_read_timeout(Some(PATIENCE))?;
        let mut answers = Vec::new();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            s.write_all(&[0x5a; 64]).context("send")?;
            s.read_exact(&mut buf)
                .with_context(|| format!("answer {} from {dial}", answers.len()))?;
            answers.push(Instant::now());
            std::thread::sleep(TICK);
        }
        Ok(answers)
    })
}

fn udp_client(
    ns: &Netns,
    dial: SocketAddrV4,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Vec<Instant>>> {
    ns.spawn(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(dial)?;
        s.set_read_timeout(Some(PATIENCE))?;
        let mut answers = Vec::new();
        let mut buf = [0u8; 64];
        let mut seq: u32 = 0;
        while !stop.load(Ordering::Relaxed) {
            s.send(&seq.to_be_bytes())?;
            // Answers to earlier datagrams may still come: wait for this one.
            loop {
                let n = s
                    .recv(&mut buf)
                    .with_context(|| format!("answer {seq} from {dial}"))?;
                if n == 4 && buf[..4] == seq.to_be_bytes() {
                    break;
                }
            }
            answers.push(Instant::now());
            seq += 1;
            std::thread::sleep(TICK);
        }
        Ok(answers)
    })
}

impl Probe {
    /// Starts the three flows; `published` is a host port published to
    /// `Lab::C1`'s port 80.
    pub fn start(lab: &Lab, published: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let servers = vec![
            tcp_echo_server(&lab.ext, 7300, stop.clone()),
            udp_echo_server(&lab.ext, 7301, stop.clone()),
            tcp_echo_server(&lab.c1, 80, stop.clone()),
        ];
        let clients = vec![
            (
                "masqueraded TCP",
                tcp_client(&lab.c1, addr(Lab::EXT, 7300), stop.clone()),
            ),
            (
                "masqueraded UDP",
                udp_client(&lab.c2, addr(Lab::EXT, 7301), stop.clone()),
            ),
            (
                "published TCP",
                tcp_client(&lab.ext, addr(Lab::UPLINK, published), stop.clone()),
            ),
        ];
        // Every flow answers before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Probe {
            stop,
            clients,
            servers,
        }
    }

    /// Stops the flows; what each saw, or the first failure (a broken
    /// connection, an answer that never came).
    pub fn stop(self) -> Result<Vec<Series>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        let mut failures = Vec::new();
        for (name, h) in self.clients {
            match h.join() {
                Ok(Ok(answers)) => out.push(Series { name, answers }),
                Ok(Err(e)) => failures.push(format!("{name}: {e:#}")),
                Err(_) => failures.push(format!("{name}: panicked")),
            }
        }
        for h in self.servers {
            let _ = h.join();
        }
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        Ok(out)
    }

    /// Stops the flows and asserts none broke and none waited longer than
    /// `max_gap` for an answer.
    pub fn assert_unbroken(self, max_gap: Duration, during: &str) {
        let series = self
            .stop()
            .unwrap_or_else(|e| panic!("{during}: a flow broke: {e}"));
        for s in &series {
            assert!(
                s.answers.len() > 20,
                "{during}: {} answered {} times",
                s.name,
                s.answers.len()
            );
            assert!(
                s.max_gap() <= max_gap,
                "{during}: {} went {:?} without an answer",
                s.name,
                s.max_gap()
            );
            eprintln!(
                "{during}: {} answered {} times, longest gap {:?}",
                s.name,
                s.answers.len(),
                s.max_gap()
            );
        }
    }
}
