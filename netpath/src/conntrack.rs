//! Reading, flushing and sweeping the BPF conntrack tables (`NP_CT4`,
//! `NP_CT6`): flows are put back together from their two entries, shown the
//! way `conntrack -L` shows them, and removed both entries at a time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, bail};
use netpath_common::{
    Config,
    ct::{self, CtEntry, CtEntry4, CtKey4, TcpState, ct_dir, ct_flags, proto, timeout_class},
    ct6::CtKey6,
    sweep::{self, SweepArgs},
};
use serde::Serialize;

use crate::{attach::Datapath, codec::from_be, ctconfig::proto_name, state::Maps};

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One direction's tuple and counters, for display.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports (ICMP echo: the identifier in the direction it travels).
    pub sport: u16,
    pub dport: u16,
    pub packets: u64,
    pub bytes: u64,
}

impl Tuple {
    fn of<K: Key>(k: &K, e: Option<&CtEntry<K>>) -> Self {
        Self {
            src: k.src(),
            dst: k.dst(),
            sport: u16::from_be(k.sport_be()),
            dport: u16::from_be(k.dport_be()),
            packets: e.map_or(0, |e| e.packets),
            bytes: e.map_or(0, |e| e.bytes),
        }
    }
}

/// A conntrack table's key as the listing reads it (either family).
pub trait Key: ct::Tuple + PartialEq + bytemuck::Pod {
    fn src(&self) -> IpAddr;
    fn dst(&self) -> IpAddr;
}

impl Key for CtKey4 {
    fn src(&self) -> IpAddr {
        from_be(self.saddr_be).into()
    }
    fn dst(&self) -> IpAddr {
        from_be(self.daddr_be).into()
    }
}

impl Key for CtKey6 {
    fn src(&self) -> IpAddr {
        Ipv6Addr::from(self.saddr).into()
    }
    fn dst(&self) -> IpAddr {
        Ipv6Addr::from(self.daddr).into()
    }
}

/// A flow: its original and reply tuples.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub proto: String,
    pub proto_nr: u8,
    /// TCP state, `conntrack -L` spelling; absent for other protocols.
    pub state: Option<String>,
    /// Seconds left before the sweeper removes the flow.
    pub timeout_s: u64,
    pub original: Tuple,
    pub reply: Tuple,
    /// A reply has been seen (`conntrack -L` prints `[UNREPLIED]` otherwise).
    pub seen_reply: bool,
    /// Established and answered (`conntrack -L`'s `[ASSURED]`): flows
    /// without it go first when the table is under pressure.
    pub assured: bool,
    pub network: u32,
    /// "snat" (masquerade), "dnat" (a published port), "dnat+snat" (a
    /// published port reached from its own network) or "none" (tracked,
    /// not translated).
    pub nat: String,
}

/// Puts the flows of both tables together, IPv4's first.
pub fn flows(maps: &Maps, cfg: &Config, now_ns: u64) -> Result<Vec<Flow>> {
    let mut out = flows_of(maps.ct_entries()?, cfg, now_ns);
    out.extend(flows_of(maps.v6.ct_entries()?, cfg, now_ns));
    Ok(out)
}

/// Puts one table's flows together. An entry whose partner is missing
/// (evicted, or being created right now) still shows, with the partner's
/// tuple derived from its `peer`.
pub fn flows_of<K: Key>(entries: Vec<(K, CtEntry<K>)>, cfg: &Config, now_ns: u64) -> Vec<Flow> {
    let entries: BTreeMap<KeyOrd<K>, CtEntry<K>> =
        entries.into_iter().map(|(k, e)| (KeyOrd(k), e)).collect();
    let mut out = Vec::new();
    for (k, e) in &entries {
        let k = &k.0;
        if e.dir == ct_dir::MID {
            // Half-way tuples of a flow, not a flow of their own.
            continue;
        }
        let (orig_key, orig, reply_key, reply) = if e.dir == ct_dir::ORIGINAL {
            let r = entries.get(&KeyOrd(e.peer)).filter(|r| r.peer == *k);
            (*k, Some(e), e.peer, r)
        } else {
            // Shown once, from the ORIGINAL side, unless that one is gone.
            if entries
                .get(&KeyOrd(e.peer))
                .is_some_and(|o| o.peer == *k && o.dir == ct_dir::ORIGINAL)
            {
                continue;
            }
            (e.peer, None, *k, Some(e))
        };
        let last = orig
            .map_or(0, |o| o.last_seen_ns)
            .max(reply.map_or(0, |r| r.last_seen_ns));
        let (state, flags) = match orig {
            Some(o) => (o.state, o.flags),
            // Orphaned reply entry: judge it as a live flow would be.
            None => (TcpState::Established as u8, e.flags),
        };
        let p = orig_key.proto();
        let class = timeout_class(p, state, flags);
        let timeout_ns = u64::from(cfg.timeouts_s[class]) * 1_000_000_000;
        let age = now_ns.saturating_sub(last);
        out.push(Flow {
            proto: proto_name(p),
            proto_nr: p,
            state: (p == proto::TCP).then(|| TcpState::from_u8(state).as_str().to_owned()),
            timeout_s: timeout_ns.saturating_sub(age).div_ceil(1_000_000_000),
            original: Tuple::of(&orig_key, orig),
            reply: Tuple::of(&reply_key, reply),
            seen_reply: flags & ct_flags::SEEN_REPLY != 0,
            assured: !netpath_common::ct::embryonic(p, state, flags),
            network: e.net_id,
            nat: match (e.flags & ct_flags::DNAT != 0, e.flags & ct_flags::SNAT != 0) {
                (true, true) => "dnat+snat",
                (true, false) => "dnat",
                // The host's own flow, moved off a container's tuple.
                (false, true) if e.flags & ct_flags::HOST != 0 => "host-snat",
                (false, true) => "snat",
                // Tracked only (a network that keeps its addresses, a
                // routed network's inbound flow).
                (false, false) => "none",
            }
            .to_owned(),
        });
    }
    out
}

/// A key ordered by its bytes, for a map keyed by tuple.
#[derive(Clone, Copy, PartialEq)]
struct KeyOrd<K>(K);

impl<K: Key> Eq for KeyOrd<K> {}

impl<K: Key> PartialOrd for KeyOrd<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Key> Ord for KeyOrd<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        bytemuck::bytes_of(&self.0).cmp(bytemuck::bytes_of(&other.0))
    }
}

/// Which flows `conntrack flush` removes. Every set field must match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The original source (the container), of either family.
    pub src: Option<IpAddr>,
    /// The original destination.
    pub dst: Option<IpAddr>,
    pub proto: Option<u8>,
    /// Any port of the flow: original or reply, source or destination.
    pub port: Option<u16>,
    pub network: Option<u32>,
    /// Flows of published ports (see [`Published`]).
    pub published: Option<Published>,
}

/// Published host ports `first..=last` of one protocol, on one host
/// address: its family's flows only, on every host address of the family
/// when it is unspecified (`0.0.0.0`, `::`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub addr: IpAddr,
    pub first: u16,
    pub last: u16,
    pub proto: u8,
}

impl Filter {
    pub fn network(id: u32) -> Self {
        Self {
            network: Some(id),
            ..Self::default()
        }
    }

    /// The filter as the in-kernel pass takes it.
    fn args(&self, mode: u32) -> SweepArgs {
        let mut a = SweepArgs {
            mode,
            net_id: self.network.unwrap_or(0),
            port_be: self.port.unwrap_or(0).to_be(),
            proto: self.proto.unwrap_or(0),
            ..SweepArgs::default()
        };
        match self.src {
            Some(IpAddr::V4(s)) => a.src_be = from_addr(s),
            Some(IpAddr::V6(s)) => a.src6 = s.octets(),
            None => {}
        }
        match self.dst {
            Some(IpAddr::V4(d)) => a.dst_be = from_addr(d),
            Some(IpAddr::V6(d)) => a.dst6 = d.octets(),
            None => {}
        }
        if let Some(p) = self.published {
            match p.addr {
                IpAddr::V4(h) => {
                    a.pub_addr_be = from_addr(h);
                    a.family = 4;
                }
                IpAddr::V6(h) => {
                    a.pub_addr6 = h.octets();
                    a.family = 6;
                }
            }
            a.pub_first = p.first;
            a.pub_last = p.last;
            a.pub_proto = p.proto;
        }
        a
    }
}

/// `conntrack flush`'s `--src` and `--dst` as the pass takes them: an
/// IPv4-mapped address names an IPv4 flow; `0.0.0.0` and `::` are refused
/// (the pass's "any address": asked for, they would flush every flow), and
/// so are two families at once (no flow has both).
pub fn flush_addresses(
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
) -> Result<(Option<IpAddr>, Option<IpAddr>)> {
    let (src, dst) = (src.map(|a| a.to_canonical()), dst.map(|a| a.to_canonical()));
    for (name, a) in [("--src", src), ("--dst", dst)] {
        if let Some(a) = a.filter(|a| a.is_unspecified()) {
            bail!("{name} {a} names no flow (leave it out to match every address)");
        }
    }
    if let (Some(s), Some(d)) = (src, dst)
        && s.is_ipv4() != d.is_ipv4()
    {
        bail!("--src {s} and --dst {d} are of different families: no flow has both");
    }
    Ok((src, dst))
}

fn from_addr(a: Ipv4Addr) -> u32 {
    crate::codec::be(a)
}

/// One pass of the sweep program over the conntrack table (see
/// `netpath_common::sweep`): what it found and removed.
pub fn pass(dp: &mut Datapath, args: &SweepArgs) -> Result<SweepArgs> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let n = std::mem::size_of::<SweepArgs>();
    let mut frame = vec![0u8; ETH_HLEN + n];
    frame[12..14].copy_from_slice(&sweep::ETHERTYPE.to_be_bytes());
    frame[ETH_HLEN..].copy_from_slice(bytemuck::bytes_of(args));
    let mut out = vec![0u8; frame.len() + 64];
    let r = dp
        .sweeper
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .context("running the conntrack sweep")?;
    if r.return_value != 0 || (r.data_size_out as usize) < ETH_HLEN + n {
        bail!("the conntrack sweep failed ({})", r.return_value);
    }
    Ok(bytemuck::pod_read_unaligned(&out[ETH_HLEN..ETH_HLEN + n]))
}

const ETH_HLEN: usize = 14;

/// Removes the flows `filter` matches, in one pass; returns how many.
pub fn flush(dp: &mut Datapath, filter: &Filter) -> Result<usize> {
    Ok(pass(dp, &filter.args(sweep::mode::FLUSH))?.removed_flows as usize)
}

/// Removes flows idle for longer than their state's timeout (under
/// `pressure`, unreplied ones idle for longer than `pressure_timeout_ms`
/// too), in one pass; returns what the pass found.
pub fn sweep(dp: &mut Datapath, pressure: Option<u32>) -> Result<SweepArgs> {
    let mut args = SweepArgs {
        mode: sweep::mode::EXPIRE,
        ..SweepArgs::default()
    };
    if let Some(t) = pressure {
        args.mode |= sweep::mode::PRESSURE;
        args.pressure_timeout_ms = t;
    }
    pass(dp, &args)
}

/// Counts the live flows (and per network, into `NP_CT_NETWORKS`), removing
/// nothing.
pub fn count(dp: &mut Datapath) -> Result<SweepArgs> {
    pass(
        dp,
        &SweepArgs {
            mode: sweep::mode::PER_NETWORK,
            ..SweepArgs::default()
        },
    )
}

/// Sets the datapath's live entry count to the entries the table holds
/// (`sweep::mode::CALIBRATE`); returns them.
pub fn calibrate(dp: &mut Datapath) -> Result<u32> {
    Ok(pass(
        dp,
        &SweepArgs {
            mode: sweep::mode::CALIBRATE,
            ..SweepArgs::default()
        },
    )?
    .entries)
}

/// The entries a resize copies into a table that takes `budget` of them:
/// whole flows (both directions, and a hairpin flow's half-way entries),
/// assured flows first, then the most recently active. Returns them and
/// how many entries were left out.
pub fn pick_flows(
    entries: Vec<(CtKey4, CtEntry4)>,
    budget: usize,
) -> (Vec<(CtKey4, CtEntry4)>, usize) {
    let total = entries.len();
    let index: std::collections::HashMap<[u8; 16], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (bytemuck::cast(*k), i))
        .collect();
    let find = |k: &CtKey4| index.get(&bytemuck::cast::<CtKey4, [u8; 16]>(*k)).copied();
    // Each entry's flow: the index of its ORIGINAL entry (its own when it
    // has none, an orphan).
    let group_of = |i: usize| -> usize {
        let (k, e) = &entries[i];
        let named = find(&e.peer);
        match e.dir {
            ct_dir::ORIGINAL => i,
            ct_dir::REPLY => named
                .filter(|&o| entries[o].1.dir == ct_dir::ORIGINAL && entries[o].1.peer == *k)
                .unwrap_or(i),
            // A half-way entry names one of its flow's entries.
            _ => match named {
                Some(n) if entries[n].1.dir == ct_dir::ORIGINAL => n,
                Some(n) => find(&entries[n].1.peer).unwrap_or(n),
                None => i,
            },
        }
    };
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..total {
        groups.entry(group_of(i)).or_default().push(i);
    }
    let mut ranked: Vec<(bool, u64, Vec<usize>)> = groups
        .into_iter()
        .map(|(lead, members)| {
            let (k, e) = &entries[lead];
            let assured = e.dir == ct_dir::ORIGINAL && !ct::embryonic(k.proto, e.state, e.flags);
            let last = members
                .iter()
                .map(|&m| entries[m].1.last_seen_ns)
                .max()
                .unwrap_or(0);
            (assured, last, members)
        })
        .collect();
    ranked.sort_by_key(|r| std::cmp::Reverse((r.0, r.1)));
    let mut keep = Vec::new();
    for (_, _, members) in ranked {
        if keep.len() + members.len() > budget {
            continue;
        }
        keep.extend(members);
    }
    let left_out = total - keep.len();
    let picked = keep.into_iter().map(|i| entries[i]).collect();
    (picked, left_out)
}

/// `conntrack -L` style lines.
pub fn render(flows: &[Flow]) -> String {
    let mut s = String::new();
    for f in flows {
        let t = |t: &Tuple| {
            format!(
                "src={} dst={} sport={} dport={} packets={} bytes={}",
                t.src, t.dst, t.sport, t.dport, t.packets, t.bytes
            )
        };
        let _ = writeln!(
            s,
            "{:<8} {:<3} {} {}{} {}{} {}net={} nat={}",
            f.proto,
            f.proto_nr,
            f.timeout_s,
            f.state
                .as_deref()
                .map(|st| format!("{st} "))
                .unwrap_or_default(),
            t(&f.original),
            if f.seen_reply { "" } else { "[UNREPLIED] " },
            t(&f.reply),
            if f.assured { "[ASSURED] " } else { "" },
            f.network,
            f.nat,
        );
    }
    let _ = writeln!(s, "netpath conntrack: {} flow entries listed.", flows.len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_addresses_read_mapped_as_ipv4_and_refuse_any_and_mixed() {
        let a = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            flush_addresses(a("::ffff:172.28.0.2"), None).unwrap(),
            (a("172.28.0.2"), None)
        );
        assert_eq!(
            flush_addresses(a("fd00::2"), a("fd00::1")).unwrap(),
            (a("fd00::2"), a("fd00::1"))
        );
        for (src, dst, says) in [
            (a("0.0.0.0"), None, "--src 0.0.0.0 names no flow"),
            (None, a("::"), "--dst :: names no flow"),
            (a("fd00::2"), a("10.0.0.1"), "different families"),
        ] {
            let e = flush_addresses(src, dst).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    /// A flow's entries: ORIGINAL `a -> b`, REPLY `b -> a`.
    fn flow(n: u32, state: TcpState, flags: u32, last: u64) -> [(CtKey4, CtEntry4); 2] {
        let o = CtKey4::new(n, 100, 1, 2, proto::TCP);
        let r = o.reversed();
        let e = |dir, peer| CtEntry4 {
            peer,
            dir,
            state: state as u8,
            flags,
            last_seen_ns: last,
            ..CtEntry4::default()
        };
        [(o, e(ct_dir::ORIGINAL, r)), (r, e(ct_dir::REPLY, o))]
    }

    #[test]
    fn ipv6_flows_are_listed_from_their_two_entries() {
        let addr = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
        let (c, r, u) = (addr("fd00:30::2"), addr("fd00:ee::2"), addr("fd00:ff::1"));
        let o = CtKey6::new(c, r, 4000u16.to_be(), 80u16.to_be(), proto::TCP);
        let rep = CtKey6::new(r, u, 80u16.to_be(), 4001u16.to_be(), proto::TCP);
        let e = |dir, peer, packets| ct::CtEntry {
            peer,
            dir,
            state: TcpState::Established as u8,
            flags: ct_flags::SNAT | ct_flags::SEEN_REPLY | ct_flags::ASSURED,
            net_id: 3,
            packets,
            ..ct::CtEntry::default()
        };
        let entries = vec![
            (rep, e(ct_dir::REPLY, o, 5)),
            (o, e(ct_dir::ORIGINAL, rep, 7)),
        ];
        let cfg = Config::defaults();
        let flows = flows_of(entries, &cfg, 0);
        assert_eq!(flows.len(), 1, "one flow, shown once");
        let f = &flows[0];
        assert_eq!(
            (f.proto.as_str(), f.nat.as_str(), f.network),
            ("tcp", "snat", 3)
        );
        assert_eq!(f.state.as_deref(), Some("ESTABLISHED"));
        assert!(f.assured && f.seen_reply);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            (
                f.original.src,
                f.original.dst,
                f.original.sport,
                f.original.dport,
                f.original.packets
            ),
            (ip("fd00:30::2"), ip("fd00:ee::2"), 4000, 80, 7)
        );
        assert_eq!(
            (
                f.reply.src,
                f.reply.dst,
                f.reply.sport,
                f.reply.dport,
                f.reply.packets
            ),
            (ip("fd00:ee::2"), ip("fd00:ff::1"), 80, 4001, 5)
        );
        let text = render(&flows);
        assert!(
            text.contains("src=fd00:30::2 dst=fd00:ee::2 sport=4000 dport=80"),
            "{text}"
        );
    }

    #[test]
    fn a_smaller_table_keeps_whole_assured_flows_first() {
        let assured = ct_flags::SEEN_REPLY | ct_flags::ASSURED;
        let mut all = Vec::new();
        // An old established flow, newer embryonic junk, a newer
        // established flow with a hairpin half-way entry.
        all.extend(flow(1, TcpState::Established, assured, 10));
        for n in 2..6 {
            all.extend(flow(
                n,
                TcpState::SynRecv,
                ct_flags::SEEN_REPLY,
                100 + u64::from(n),
            ));
        }
        let [o, r] = flow(9, TcpState::Established, assured, 50);
        let mid = CtEntry4 {
            peer: r.0,
            dir: ct_dir::MID,
            ..CtEntry4::default()
        };
        all.extend([o, r, (CtKey4::new(9, 7, 1, 2, proto::TCP), mid)]);
        let (kept, left_out) = pick_flows(all.clone(), 7);
        assert_eq!((kept.len(), left_out), (7, all.len() - 7));
        let has = |n: u32| {
            kept.iter()
                .filter(|(k, _)| k.saddr_be == n || k.daddr_be == n)
                .count()
        };
        assert_eq!(has(1), 2, "the old assured flow, whole");
        assert_eq!(has(9), 3, "the hairpin flow with its half-way entry");
        assert_eq!(has(5), 2, "then the newest embryonic one");
        assert_eq!(has(2), 0);
    }
}
