//! The workloads `netpath bench` runs on every arm (see `load` for the
//! clients and servers), by name: which namespace serves, which dials, and
//! what address (the published port, the external host, the other
//! container), for IPv4 and, prefixed `v6 `, IPv6.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Result, bail};

use super::{
    arms::{ArmLab, EXT_PORT, PORT},
    load, v6,
};
use crate::lab::topology::Lab;

/// (workload, metric, unit, higher is better)
pub type Metric = (&'static str, &'static str, &'static str, bool);

/// Runs one workload on one arm: (metric, value) pairs.
/// The `v6 …` workloads are the same over IPv6 (see [`v6`]).
pub fn measure(lab: &ArmLab, workload: &'static str, dur: Duration) -> Result<Vec<(Metric, f64)>> {
    let l = &lab.lab;
    let (name, published, ext, c2c): (&str, SocketAddr, SocketAddr, SocketAddr) =
        match workload.strip_prefix(V6) {
            Some(name) => (
                name,
                lab.published6().into(),
                (v6::EXT6.parse::<IpAddr>()?, EXT_PORT).into(),
                (v6::C2_6.parse::<IpAddr>()?, PORT).into(),
            ),
            None => (
                workload,
                lab.published().into(),
                (Lab::EXT.parse::<IpAddr>()?, EXT_PORT).into(),
                (Lab::C2.parse::<IpAddr>()?, PORT).into(),
            ),
        };
    Ok(match name {
        "dnat tcp stream" => vec![(
            (workload, "throughput", "Gbit/s", true),
            load::tcp_stream(&l.c1, PORT, &l.ext, published, dur)?,
        )],
        "dnat udp 64B one-way" => vec![(
            (workload, "received", "pps", true),
            load::udp_pps(&l.c1, PORT, &l.ext, published, dur)?,
        )],
        "dnat udp 64B replied" => {
            let r = load::udp_replied(&l.c1, PORT, &l.ext, published, dur)?;
            let mut v = vec![((workload, "replied", "pps", true), r.pps)];
            v.extend(latency(workload, &r.rtts));
            v
        }
        "dnat rr" | "dnat rr @2k/s" => {
            let rate = (name == "dnat rr @2k/s").then_some(2000);
            let rtts = load::tcp_rr(&l.c1, PORT, &l.ext, published, dur, rate)?;
            latency(workload, &rtts).to_vec()
        }
        "dnat conn/s" => vec![(
            (workload, "rate", "conn/s", true),
            load::tcp_cps(&l.c1, PORT, &l.ext, published, dur)?,
        )],
        // Two containers of one network: the server on c2, the client on c1.
        "c2c rr" => {
            let rtts = load::tcp_rr(&l.c2, PORT, &l.c1, c2c, dur, None)?;
            latency(workload, &rtts).to_vec()
        }
        "c2c udp 64B" => vec![(
            (workload, "received", "pps", true),
            load::udp_pps(&l.c2, PORT, &l.c1, c2c, dur)?,
        )],
        "c2c conn/s" => vec![(
            (workload, "rate", "conn/s", true),
            load::tcp_cps(&l.c2, PORT, &l.c1, c2c, dur)?,
        )],
        // A container on another network (c3 on np1) reaching the
        // published port; Docker's path for it is its userland proxy.
        "xnet rr" | "xnet conn/s" => {
            let Some(dial) = lab.xnet_dial()? else {
                return Ok(Vec::new());
            };
            if name == "xnet rr" {
                let rtts = load::tcp_rr(&l.c1, PORT, &lab.c3, dial.into(), dur, None)?;
                latency(workload, &rtts).to_vec()
            } else {
                vec![(
                    (workload, "rate", "conn/s", true),
                    load::tcp_cps(&l.c1, PORT, &lab.c3, dial.into(), dur)?,
                )]
            }
        }
        "snat tcp stream" => vec![(
            (workload, "throughput", "Gbit/s", true),
            load::tcp_stream(&l.ext, EXT_PORT, &l.c1, ext, dur)?,
        )],
        "snat conn/s" => vec![(
            (workload, "rate", "conn/s", true),
            load::tcp_cps(&l.ext, EXT_PORT, &l.c1, ext, dur)?,
        )],
        w => bail!("unknown workload {w}"),
    })
}

/// The p50 and p99 of round trips `rtts` (µs) of `workload`.
fn latency(workload: &'static str, rtts: &[f64]) -> [(Metric, f64); 2] {
    [
        ((workload, "p50", "µs", false), load::percentile(rtts, 50.0)),
        ((workload, "p99", "µs", false), load::percentile(rtts, 99.0)),
    ]
}

/// "one-way" UDP never answers, so every datagram of it is a NEW packet
/// to nf_conntrack and walks iptables' chains (netpath's map lookups do not
/// grow with the rules): it favours netpath heavily. "replied" is the
/// request/response case, established after the first datagram. "xnet"
/// (a container on another network to the published port) is Docker's
/// userland proxy on the iptables arm, no proxy on bare (c3 dials c1
/// routed): it favours netpath heavily against iptables.
pub const WORKLOADS: [&str; 13] = [
    "c2c conn/s",
    "c2c rr",
    "c2c udp 64B",
    "dnat conn/s",
    "dnat rr",
    "dnat rr @2k/s",
    "dnat tcp stream",
    "dnat udp 64B one-way",
    "dnat udp 64B replied",
    "snat conn/s",
    "snat tcp stream",
    "xnet conn/s",
    "xnet rr",
];

/// The prefix of a workload run over IPv6.
pub const V6: &str = "v6 ";

/// [`WORKLOADS`] over IPv6, at the first scale point only (one published
/// port, one network; see [`v6`]).
pub const WORKLOADS6: [&str; 11] = [
    "v6 c2c conn/s",
    "v6 c2c rr",
    "v6 c2c udp 64B",
    "v6 dnat conn/s",
    "v6 dnat rr",
    "v6 dnat rr @2k/s",
    "v6 dnat tcp stream",
    "v6 dnat udp 64B one-way",
    "v6 dnat udp 64B replied",
    "v6 snat conn/s",
    "v6 snat tcp stream",
];

/// What `--quick` (CI) runs: a request/response, a packet rate and a
/// connection rate for each path, a request/response and connection
/// rates over IPv6, and the request/response from another network to the
/// published port, within a minute for the whole run (the streams, the
/// paced latency and `xnet conn/s` are in the full run).
pub const QUICK_WORKLOADS: [&str; 11] = [
    "c2c rr",
    "c2c udp 64B",
    "dnat conn/s",
    "dnat rr",
    "dnat udp 64B one-way",
    "dnat udp 64B replied",
    "snat conn/s",
    "v6 c2c rr",
    "v6 dnat rr",
    "v6 snat conn/s",
    "xnet rr",
];
