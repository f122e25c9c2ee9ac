//! Conntrack at scale: request/response p99 and the connection rate
//! through the published port with the conntrack table empty, then
//! holding 100,000 and 1,000,000 other live flows (`--quick`: 20,000),
//! iptables and netpath, arms interleaved; and what a flow costs in kernel
//! memory in each (netpath: the map, [`crate::ctmem`]; iptables: one
//! `struct nf_conn` from its slab).
//!
//! The flows are made the way a container makes them, by the datapath
//! under test: crafted TCP handshakes (SYN from c1, SYN-ACK from a remote
//! address behind ext, ACK from c1), masqueraded on the way out. Both
//! conntracks then hold established, assured flows that no timeout ends
//! during the run (five days), which is what a busy host carries. Writing
//! entries into the pinned map directly would be faster, but would measure
//! entries netpath's datapath did not make; frames keep both arms on the
//! same footing. c1's kernel, which has no socket for these flows, would
//! answer each SYN-ACK with a RST that ends the flow: a rule inside c1's
//! namespace drops those RSTs (the remote addresses are used for nothing
//! else), and ext, not a router, drops the SYNs and ACKs silently.
//!
//! nf_conntrack's limit (`nf_conntrack_max`) is writable only in the
//! initial namespace on this kernel, which the bench never touches: a
//! level past 90 % of it is not measured for iptables, and the report says
//! so.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    arms::{Arm, ArmLab},
    layout::{DUMMY_BASE, MOST_PORTS},
};
use crate::{
    ctmem::{self, CtMemory},
    lab::{
        frames::{self, RawSocket, TCP},
        topology::{self, Lab, Netns},
    },
};

/// Where the preloaded flows go: a documentation range routed via ext.
const REMOTE_NET: &str = "198.51.100.0/24";
const REMOTE_PORT: u16 = 443;
/// Container source ports the flows use, per remote address: above every
/// port the bench publishes. The masquerade never takes a published host
/// port as a flow's source (its clients' new flows would look like
/// replies), so a flow from such a port would get another one, which the
/// crafted SYN-ACK does not answer; and that other port may be a later
/// flow's, which then moves too. Flows from 20000-29998 with 10,000 ports
/// published left a third of 100,000 flows unanswered.
const SPORT_BASE: u16 = DUMMY_BASE + MOST_PORTS as u16;
const SPORTS: u32 = 35_000;
/// The measured workloads.
const WORKLOADS: [&str; 2] = ["dnat rr", "dnat conn/s"];

#[derive(Clone, Debug, Serialize)]
pub struct ScaleSample {
    pub arm: Arm,
    /// The preloaded flows asked for, and those the table held.
    pub flows: u32,
    pub held: u64,
    pub workload: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub rep: usize,
    pub value: f64,
}

/// The conntrack-scale results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CtScale {
    pub samples: Vec<ScaleSample>,
    /// netpath's table (its size here) and nf_conntrack's object size and
    /// slab slot per flow.
    pub netpath_memory: Option<CtMemory>,
    pub netpath_capacity_flows: u32,
    pub nf_conntrack_object: Option<(u64, u64)>,
    pub nf_conntrack_max: Option<u64>,
    /// (arm, flows, seconds the preload took).
    pub preload_seconds: Vec<(Arm, u32, f64)>,
    /// What was not measured, and why.
    pub notes: Vec<String>,
}

/// The flow levels: `--quick` 20,000; otherwise 100,000 and 1,000,000.
pub fn levels(quick: bool) -> Vec<u32> {
    if quick {
        vec![0, 20_000]
    } else {
        vec![0, 100_000, 1_000_000]
    }
}

/// The `i`-th preloaded flow: (container source port, remote address).
pub fn flow_tuple(i: u32) -> (u16, Ipv4Addr) {
    let sport = SPORT_BASE + (i % SPORTS) as u16;
    let remote = Ipv4Addr::new(198, 51, 100, 1 + (i / SPORTS) as u8);
    (sport, remote)
}

/// Memory only (no preload): what `--quick` runs as part of the whole
/// bench, in a second or so.
pub fn memory(labs: &[ArmLab]) -> Result<CtScale> {
    let mut out = CtScale::default();
    if let Some(np) = labs.iter().find(|l| l.arm == Arm::Netpath) {
        (out.netpath_memory, out.netpath_capacity_flows) = netpath_memory(np)?;
    }
    out.nf_conntrack_object = ctmem::nf_conntrack_object();
    if let Some(ipt) = labs.iter().find(|l| l.arm == Arm::Iptables) {
        out.nf_conntrack_max = sysctl_u64(&ipt.lab.host, "net.netfilter.nf_conntrack_max");
    }
    Ok(out)
}

fn netpath_memory(lab: &ArmLab) -> Result<(Option<CtMemory>, u32)> {
    let s: serde_json::Value = serde_json::from_str(&lab.netpath(&["status", "--json"])?)?;
    let mem = serde_json::from_value(s["conntrack"]["memory"].clone()).ok();
    let max = s["conntrack"]["max_flows"].as_u64().unwrap_or(0) as u32;
    Ok((mem, max))
}

fn sysctl_u64(ns: &Netns, key: &str) -> Option<u64> {
    let out = topology::run(ns.command("sysctl").args(["-n", key])).ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Live flows the arm's conntrack holds now (netpath: answered ones).
fn held(lab: &ArmLab) -> Result<u64> {
    if lab.arm.is_netpath() {
        let s: serde_json::Value = serde_json::from_str(&lab.netpath(&["status", "--json"])?)?;
        let c = &s["conntrack"];
        Ok(c["flows"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(c["embryonic"].as_u64().unwrap_or(0)))
    } else {
        sysctl_u64(&lab.lab.host, "net.netfilter.nf_conntrack_count")
            .context("reading nf_conntrack_count")
    }
}

/// What netpath's status says of its table (refusals, failed inserts,
/// evictions), for a preload that fell short; nothing for iptables.
fn why_short(lab: &ArmLab) -> String {
    if !lab.arm.is_netpath() {
        return String::new();
    }
    let Ok(s) = lab
        .netpath(&["status", "--json"])
        .and_then(|s| Ok(serde_json::from_str::<serde_json::Value>(&s)?))
    else {
        return String::new();
    };
    let c = &s["conntrack"];
    format!(
        " (status: {} flows, {} embryonic, {} refused when full, {} failed inserts, {} evicted)",
        c["flows"], c["embryonic"], c["refused"], c["failed_inserts"], c["evicted"]
    )
}

/// The whole measurement on the iptables and netpath arms (the measured
/// port published on both).
pub fn measure(labs: &mut [ArmLab], quick: bool, reps: usize, dur: Duration) -> Result<CtScale> {
    let levels = levels(quick);
    let top = levels.iter().copied().max().unwrap_or(0);
    for lab in labs.iter_mut() {
        if lab.arm.is_netpath() {
            // Room for the top level plus the workloads' own flows (the
            // connection rate leaves thousands closing): the same table
            // at every level, only its fill changes.
            let max = (top + top / 5).max(120_000);
            lab.netpath(&["conntrack", "config", "--max", &max.to_string()])?;
            lab.netpath(&["conntrack", "flush"])?;
        }
        prepare(&lab.lab)?;
    }
    let mut out = memory(labs)?;
    let nf_max = out.nf_conntrack_max;
    let started = Instant::now();
    let mut made = 0u32;
    for &level in &levels {
        let mut here = Vec::new();
        // iptables and netpath only: bare routing has no conntrack to
        // fill (the full run's labs include it and a baseline).
        let measured = labs
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l.arm, Arm::Iptables | Arm::Netpath));
        for (k, lab) in measured {
            if !lab.arm.is_netpath()
                && let Some(max) = nf_max
                && u64::from(level) > max * 9 / 10
            {
                out.notes.push(format!(
                    "{} flows not measured for iptables: nf_conntrack_max is {max} here, \
                     writable only in the initial network namespace, which the bench does not touch",
                    level
                ));
                continue;
            }
            if level > made {
                let t = Instant::now();
                preload(&lab.lab, made, level)?;
                out.preload_seconds
                    .push((lab.arm, level, t.elapsed().as_secs_f64()));
            }
            let h = held(lab)?;
            if h < u64::from(level) * 9 / 10 {
                bail!(
                    "the {} arm holds {h} live flows of the {level} preloaded{}",
                    lab.arm.name(),
                    why_short(lab)
                );
            }
            eprintln!(
                "[{:>5.1}s] conntrack scale: {} holds {h} flows",
                started.elapsed().as_secs_f64(),
                lab.arm.name()
            );
            here.push((k, h));
        }
        made = level;
        for rep in 0..reps {
            for (w, workload) in WORKLOADS.iter().enumerate() {
                for i in 0..here.len() {
                    let (k, h) = here[(i + rep + w) % here.len()];
                    let lab = &labs[k];
                    let values =
                        super::workloads::measure(lab, workload, dur).with_context(|| {
                            format!("{workload} on the {} arm at {level} flows", lab.arm.name())
                        })?;
                    for ((workload, metric, unit, _), value) in values {
                        eprintln!(
                            "[{:>5.1}s] conntrack scale {level:>7} flows rep {}/{reps} {workload} {} {metric} {value:.1} {unit}",
                            started.elapsed().as_secs_f64(),
                            rep + 1,
                            lab.arm.name()
                        );
                        out.samples.push(ScaleSample {
                            arm: lab.arm,
                            flows: level,
                            held: h,
                            workload,
                            metric,
                            unit,
                            rep,
                            value,
                        });
                    }
                }
            }
        }
    }
    // The table as sized for the run.
    if let Some(np) = labs.iter().find(|l| l.arm == Arm::Netpath) {
        (out.netpath_memory, out.netpath_capacity_flows) = netpath_memory(np)?;
        np.netpath(&["conntrack", "flush"])?;
    }
    Ok(out)
}

/// The route to the remote addresses, and c1 not resetting flows it has no
/// socket for (see the module's comment). Inside the arm's namespaces only.
fn prepare(lab: &Lab) -> Result<()> {
    lab.host
        .ip(&["route", "replace", REMOTE_NET, "via", Lab::EXT])?;
    // A new namespace inherits IPv4 forwarding from the initial one: ext
    // must drop what is sent to the remote addresses, not route it or
    // answer with ICMP errors.
    lab.ext.sysctl("net.ipv4.ip_forward", "0")?;
    topology::run(lab.c1.command("iptables").args([
        "-A",
        "OUTPUT",
        "-d",
        REMOTE_NET,
        "-p",
        "tcp",
        "--tcp-flags",
        "RST",
        "RST",
        "-j",
        "DROP",
    ]))?;
    // The host must know ext's MAC before the first SYN leaves.
    topology::ping(&lab.c1, Lab::EXT)?;
    Ok(())
}

/// Flows `from..to` (see [`flow_tuple`]) as handshakes, in batches so no
/// SYN waits long for its answer.
fn preload(lab: &Lab, from: u32, to: u32) -> Result<()> {
    let c1: Ipv4Addr = Lab::C1.parse()?;
    let uplink: Ipv4Addr = Lab::UPLINK.parse()?;
    let mac = |ns: &Netns, ifname: &'static str| -> Result<[u8; 6]> {
        ns.run(move || frames::mac_of(ifname))?
    };
    let (c1_mac, gw_mac) = (mac(&lab.c1, "eth0")?, mac(&lab.host, "np0")?);
    let (ext_mac, up_mac) = (mac(&lab.ext, "eth0")?, mac(&lab.host, "uplink0")?);
    let out_sock = lab.c1.run(|| RawSocket::bind("eth0"))??;
    let in_sock = lab.ext.run(|| RawSocket::bind("eth0"))??;
    // Sequence numbers a window-tracking conntrack accepts: SYN at S,
    // SYN-ACK at T acknowledging S+1, ACK at S+1 acknowledging T+1.
    const S: u32 = 1_000;
    const T: u32 = 5_000;
    use netpath_common::ct::tcp_flags::{ACK, SYN};
    let to_remote = |i: u32, flags: u8, seq: (u32, u32)| {
        let (sport, remote) = flow_tuple(i);
        let l4 = frames::tcp_seq(c1, remote, sport, REMOTE_PORT, flags, seq, b"");
        frames::with_macs(frames::frame(TCP, c1, remote, &l4, 1, 0), gw_mac, c1_mac)
    };
    let ids: Vec<u32> = (from..to).collect();
    for batch in ids.chunks(1000) {
        for &i in batch {
            send_retrying(&out_sock, &to_remote(i, SYN, (S, 0)))?;
        }
        for &i in batch {
            let (sport, remote) = flow_tuple(i);
            let l4 = frames::tcp_seq(
                remote,
                uplink,
                REMOTE_PORT,
                sport,
                SYN | ACK,
                (T, S + 1),
                b"",
            );
            let f = frames::with_macs(
                frames::frame(TCP, remote, uplink, &l4, 2, 0),
                up_mac,
                ext_mac,
            );
            send_retrying(&in_sock, &f)?;
        }
        for &i in batch {
            send_retrying(&out_sock, &to_remote(i, ACK, (S + 1, T + 1)))?;
        }
    }
    Ok(())
}

/// Sends a frame, waiting a little when the queue is full.
fn send_retrying(sock: &RawSocket, frame: &[u8]) -> Result<()> {
    for _ in 0..1000 {
        if sock.send(frame) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    bail!("a crafted frame could not be sent for 200 ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::bench::layout::PORT;

    #[test]
    fn preloaded_tuples_are_distinct_and_stay_in_the_remote_range() {
        let top = *levels(false).iter().max().unwrap_or(&0);
        assert_eq!(flow_tuple(0), (30000, Ipv4Addr::new(198, 51, 100, 1)));
        let (sport, remote) = flow_tuple(top - 1);
        assert!(sport >= SPORT_BASE && remote.octets()[..3] == [198, 51, 100]);
        assert!(remote.octets()[3] < 255);
        // No flow leaves from a port the bench publishes.
        let published = u32::from(DUMMY_BASE)..u32::from(DUMMY_BASE) + MOST_PORTS;
        for i in (0..top).step_by(101).chain(top - 100..top) {
            let (sport, _) = flow_tuple(i);
            assert!(
                !published.contains(&u32::from(sport)) && sport != PORT,
                "{i}: {sport}"
            );
            assert!(sport >= SPORT_BASE && u32::from(sport) < u32::from(SPORT_BASE) + SPORTS);
        }
        let ids: std::collections::BTreeSet<u32> =
            (0..top).step_by(997).chain(top - 100..top).collect();
        let tuples: std::collections::HashSet<_> = ids.iter().map(|&i| flow_tuple(i)).collect();
        assert_eq!(tuples.len(), ids.len());
        assert_ne!(flow_tuple(SPORTS - 1), flow_tuple(SPORTS));
    }
}
