//! What netpath's daemon costs (netpath only: iptables has no daemon, its
//! conntrack garbage collection runs in kernel workers no process is
//! charged for). The daemon's CPU time (user + system, all threads, from
//! `/proc/PID/stat`; its in-kernel sweep passes count as its system time)
//! as a share of one core, and its resident memory, while:
//!
//! - idle, with no flows;
//! - holding live flows (`--quick`: 20,000, otherwise 100,000): answered
//!   UDP flows from a container, made with crafted frames;
//! - under a random-source SYN flood at a published port (`--quick`:
//!   20,000 new flows/s for 2 s, otherwise 60,000/s for 10 s), paced; the
//!   rate reached is reported, as this machine's datapath and the
//!   container's TCP stack bound it.
//!
//! The floods are bounded in time and count and stay inside the lab's
//! namespaces.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::arms::{ArmLab, PORT};
use crate::lab::{
    frames::{self, RawSocket, TCP, UDP},
    topology::Lab,
};

/// One measurement of the daemon.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonCost {
    pub workload: String,
    /// What was offered: live flows, or new flows a second reached.
    pub load: String,
    pub seconds: f64,
    /// CPU time over wall time, percent of one core; and of it, the
    /// system time (the in-kernel passes and the syscalls).
    pub cpu_pct: f64,
    pub kernel_pct: f64,
    pub rss_kib: u64,
    /// The table's fill at the end (or its peak, for the flood), percent.
    pub fill_pct: f64,
    /// Entries the LRU evicted and new flows refused at the limit, during
    /// the measurement.
    pub evicted: u64,
    pub refused: u64,
}

/// The daemon's CPU time so far (user, system), from `/proc/PID/stat`.
fn cpu_time(pid: u64) -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is the
    // first, utime and stime the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("parsing /proc/{pid}/stat"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let d = |t: u64| Duration::from_millis(t * 1000 / hz);
    Ok((d(ticks(11)?), d(ticks(12)?)))
}

fn rss_kib(pid: u64) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn status(lab: &ArmLab) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&lab.netpath(&["status", "--json"])?)?)
}

/// `status` once the table is still: the flood's last packets may be in
/// the lab's queues when the sender returns (more so on a loaded machine),
/// and an insert counted after the counting pass would read as an
/// eviction. Waits at most 2 s for two readings 200 ms apart to agree.
fn settled_status(lab: &ArmLab) -> Result<serde_json::Value> {
    let mut last = status(lab)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = status(lab)?;
        if num(&now, "inserted") == num(&last, "inserted") {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

fn num(v: &serde_json::Value, field: &str) -> u64 {
    v["conntrack"][field].as_u64().unwrap_or(0)
}

/// `pid`'s CPU share from `start` to `end`.
struct Window {
    pid: u64,
    cpu0: (Duration, Duration),
    t0: Instant,
}

impl Window {
    fn start(pid: u64) -> Result<Self> {
        Ok(Self {
            pid,
            cpu0: cpu_time(pid)?,
            t0: Instant::now(),
        })
    }

    /// (seconds, percent of a core, of which system time).
    fn end(&self) -> Result<(f64, f64, f64)> {
        let (user, sys) = cpu_time(self.pid)?;
        let user = user.saturating_sub(self.cpu0.0);
        let sys = sys.saturating_sub(self.cpu0.1);
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let pct = |d: Duration| d.as_secs_f64() * 100.0 / wall;
        Ok((wall, pct(user + sys), pct(sys)))
    }
}

pub fn measure(lab: &ArmLab, quick: bool) -> Result<Vec<DaemonCost>> {
    let (idle_s, live_flows, live_s, flood_rate, flood_s) = if quick {
        (1, 20_000u32, 2, 20_000u32, 2)
    } else {
        (5, 100_000, 10, 60_000, 10)
    };
    let s = status(lab)?;
    let pid = s["daemon"]["pid"]
        .as_u64()
        .context("no netpath daemon runs")?;
    let mut out = Vec::new();
    let row = |workload: &str,
               load: String,
               (seconds, cpu_pct, kernel_pct): (f64, f64, f64),
               before: &serde_json::Value,
               after: &serde_json::Value|
     -> Result<DaemonCost> {
        Ok(DaemonCost {
            workload: workload.to_owned(),
            load,
            seconds,
            cpu_pct,
            kernel_pct,
            rss_kib: rss_kib(pid)?,
            fill_pct: after["conntrack"]["fill_pct"].as_f64().unwrap_or(0.0),
            evicted: num(after, "evicted").saturating_sub(num(before, "evicted")),
            refused: num(after, "refused").saturating_sub(num(before, "refused")),
        })
    };

    // Idle.
    lab.netpath(&["conntrack", "flush"])?;
    let before = status(lab)?;
    let w = Window::start(pid)?;
    std::thread::sleep(Duration::from_secs(idle_s));
    let r = w.end()?;
    out.push(row(
        "idle",
        "no flows".to_owned(),
        r,
        &before,
        &status(lab)?,
    )?);

    // Live flows.
    let made = live_udp_flows(&lab.lab, live_flows)?;
    let before = status(lab)?;
    let assured = num(&before, "flows").saturating_sub(num(&before, "embryonic"));
    if assured < u64::from(live_flows) * 9 / 10 {
        bail!(
            "only {assured} of {live_flows} crafted flows are live and answered ({made} frames sent): {}",
            before["conntrack"]
        );
    }
    let w = Window::start(pid)?;
    std::thread::sleep(Duration::from_secs(live_s));
    let r = w.end()?;
    out.push(row(
        "live flows",
        format!("{assured} answered UDP flows"),
        r,
        &before,
        &status(lab)?,
    )?);

    // A SYN flood at the published port, after the live flows went.
    lab.netpath(&["conntrack", "flush"])?;
    let before = status(lab)?;
    let w = Window::start(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let host = lab.lab.host.name.clone();
        let exe = std::env::current_exe()?;
        std::thread::spawn(move || -> f64 {
            // The peak fill, from `status` once a second.
            let mut peak: f64 = 0.0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let fill = std::process::Command::new(&exe)
                    .args(["--netns", &host, "status", "--json"])
                    .output()
                    .ok()
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|v| v["conntrack"]["fill_pct"].as_f64());
                peak = peak.max(fill.unwrap_or(0.0));
            }
            peak
        })
    };
    let sent = syn_flood(&lab.lab, flood_rate, Duration::from_secs(flood_s));
    let r = w.end()?;
    stop.store(true, Ordering::Relaxed);
    let peak = watcher.join().unwrap_or(0.0);
    let sent = sent?;
    let after = settled_status(lab)?;
    let mut c = row(
        "SYN flood",
        format!(
            "{:.0} new flows/s reached (target {flood_rate})",
            sent as f64 / r.0
        ),
        r,
        &before,
        &after,
    )?;
    c.fill_pct = peak.max(c.fill_pct);
    out.push(c);
    lab.netpath(&["conntrack", "flush"])?;
    Ok(out)
}

/// The MAC of `ifname` inside `ns`.
fn mac(ns: &crate::lab::topology::Netns, ifname: &str) -> Result<[u8; 6]> {
    let i = ifname.to_owned();
    ns.run(move || frames::mac_of(&i))?
}

/// `n` answered UDP flows from c1 to ext: a datagram from c1 (sport, dport
/// varying) and ext's answer to the masqueraded tuple, in batches so no
/// flow waits long for its answer. Returns the frames sent.
fn live_udp_flows(lab: &Lab, n: u32) -> Result<u64> {
    let c1: Ipv4Addr = Lab::C1.parse()?;
    let ext: Ipv4Addr = Lab::EXT.parse()?;
    let uplink: Ipv4Addr = Lab::UPLINK.parse()?;
    let (c1_mac, gw_mac) = (mac(&lab.c1, "eth0")?, mac(&lab.host, Lab::BRIDGE)?);
    let (ext_mac, up_mac) = (mac(&lab.ext, "eth0")?, mac(&lab.host, "uplink0")?);
    // The host must know ext's MAC before the first datagram leaves.
    crate::lab::topology::ping(&lab.c1, Lab::EXT)?;
    let tuples: Vec<(u16, u16)> = (0..n)
        .map(|i| (20_000 + (i % 40_000) as u16, 7001 + (i / 40_000) as u16))
        .collect();
    let out_sock = lab.c1.run(|| RawSocket::bind("eth0"))??;
    let in_sock = lab.ext.run(|| RawSocket::bind("eth0"))??;
    let mut sent = 0;
    for batch in tuples.chunks(500) {
        for &(sport, dport) in batch {
            let l4 = frames::udp(c1, ext, sport, dport, b"live", true);
            let f = frames::with_macs(frames::frame(UDP, c1, ext, &l4, 1, 0), gw_mac, c1_mac);
            sent += u64::from(send_retrying(&out_sock, &f));
        }
        for &(sport, dport) in batch {
            let l4 = frames::udp(ext, uplink, dport, sport, b"back", true);
            let f = frames::with_macs(frames::frame(UDP, ext, uplink, &l4, 2, 0), up_mac, ext_mac);
            sent += u64::from(send_retrying(&in_sock, &f));
        }
    }
    Ok(sent)
}

/// Sends a frame, waiting a little when the queue is full.
fn send_retrying(sock: &RawSocket, frame: &[u8]) -> bool {
    for _ in 0..100 {
        if sock.send(frame) {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

/// SYNs from random 11.0.0.0/8 sources and ports to the published `PORT`
/// at `rate` a second for `dur`, paced in 1 ms slices. Returns those sent.
fn syn_flood(lab: &Lab, rate: u32, dur: Duration) -> Result<u64> {
    let uplink: Ipv4Addr = Lab::UPLINK.parse()?;
    let (ext_mac, up_mac) = (mac(&lab.ext, "eth0")?, mac(&lab.host, "uplink0")?);
    lab.ext.run(move || -> Result<u64> {
        let sock = RawSocket::bind("eth0")?;
        let t0 = Instant::now();
        let mut n: u32 = 0;
        let mut sent = 0u64;
        while t0.elapsed() < dur {
            // Catch up to where the rate says we should be.
            let due = (t0.elapsed().as_secs_f64() * f64::from(rate)) as u32;
            while n < due {
                let src = Ipv4Addr::from(0x0b00_0000 | (n.wrapping_mul(2_654_435_761) >> 8));
                let sport = 1024 + (n % 60_000) as u16;
                let l4 = frames::tcp(src, uplink, sport, PORT, 0x02, b"");
                let f =
                    frames::with_macs(frames::frame(TCP, src, uplink, &l4, 1, 0), up_mac, ext_mac);
                sent += u64::from(sock.send(&f));
                n = n.wrapping_add(1);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(sent)
    })?
}
