//! `netpath monitor`: the datapath's events, live. It keeps a heartbeat in
//! `NP_MONITOR` (the datapath makes events only while one is fresh, for the
//! kinds asked for), reads the `NP_EVENTS` ring buffer, filters, and prints
//! one line per event (or one JSON object per line), and a line whenever
//! the datapath's rate limit or a full ring lost events. Events of IPv6
//! packets and flows carry IPv6 addresses (`record`).

mod record;

pub use record::{Record, Tuple, decode};

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, MapData, RingBuf};
use netpath_common::{
    DropReason, counter_kind, counter_scope,
    event::{kind, monitor, want},
    map_names,
};
use serde::Serialize;

use crate::{
    codec, conntrack, events,
    plumbing::Netlink,
    state::{self, Maps},
};

/// Which events `--events` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kinds {
    pub drop: bool,
    /// Every new flow.
    pub flow: bool,
    /// New flows whose tuple was translated.
    pub nat: bool,
}

impl Kinds {
    /// `NP_MONITOR`'s want bits for these kinds.
    pub fn bits(self) -> u64 {
        let mut b = 0;
        if self.drop {
            b |= want::DROP;
        }
        if self.flow || self.nat {
            b |= want::FLOW;
        }
        b
    }
}

/// Parses `--events drop,flow,nat`.
pub fn parse_kinds(s: &str) -> Result<Kinds> {
    let mut k = Kinds::default();
    for w in s.split(',') {
        match w.trim() {
            "drop" => k.drop = true,
            "flow" => k.flow = true,
            "nat" => k.nat = true,
            other => bail!("invalid event kind {other:?}: expected drop, flow or nat"),
        }
    }
    Ok(k)
}

/// Parses `--reason`: a drop reason as `status` names it, with or without
/// its `drop_` prefix.
pub fn parse_reason(s: &str) -> Result<DropReason> {
    let want = s.strip_prefix("drop_").unwrap_or(s);
    DropReason::ALL
        .into_iter()
        .find(|r| r.as_str().strip_prefix("drop_") == Some(want))
        .with_context(|| format!("invalid drop reason {s:?} (see `netpath status` for the names)"))
}

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub kinds: Kinds,
    pub net_id: Option<u32>,
    pub reason: Option<DropReason>,
    /// Either address of the packet (or of the translated tuple).
    pub host: Option<IpAddr>,
    /// Either port, likewise.
    pub port: Option<u16>,
}

/// One event as shown.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Shown {
    /// Monotonic seconds (`conntrack list`'s and the daemon log's clock).
    pub ts: f64,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    pub proto: String,
    /// Addresses and ports: absent for a frame that is not IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// A flow's tuple as it leaves, when translated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<Tuple>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
}

/// Names of interfaces and networks, for display.
#[derive(Debug, Default)]
pub struct Names {
    pub ifaces: BTreeMap<u32, String>,
    pub networks: BTreeMap<u32, String>,
}

/// Decides whether `e` passes `f` and how it shows; `None` when filtered out.
pub fn show(e: &Record, f: &Filter, names: &Names) -> Option<Shown> {
    let (orig, nat) = (e.orig, e.nat);
    let (event, reason, translated) = match e.kind {
        kind::DROP => {
            let r = DropReason::from_u16(u16::from(e.reason))?;
            if !f.kinds.drop || f.reason.is_some_and(|w| w != r) {
                return None;
            }
            ("drop", Some(r.as_str()), None)
        }
        kind::FLOW => {
            let changed = nat != orig;
            if f.reason.is_some() || !(f.kinds.flow || f.kinds.nat && changed) {
                return None;
            }
            (
                if changed && !f.kinds.flow {
                    "nat"
                } else {
                    "flow"
                },
                None,
                changed.then_some(nat),
            )
        }
        _ => return None,
    };
    if f.net_id.is_some_and(|n| n != e.net_id) {
        return None;
    }
    let tuples = [Some(orig), translated];
    if let Some(h) = f.host
        && !tuples.iter().flatten().any(|t| t.src == h || t.dst == h)
    {
        return None;
    }
    if let Some(p) = f.port
        && !tuples
            .iter()
            .flatten()
            .any(|t| t.sport == p || t.dport == p)
    {
        return None;
    }
    let ip = e.ip;
    Some(Shown {
        ts: e.ts_ns as f64 / 1e9,
        event,
        reason,
        iface: (e.ifindex != 0).then(|| {
            names
                .ifaces
                .get(&e.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", e.ifindex))
        }),
        network: names.networks.get(&e.net_id).cloned(),
        proto: if ip {
            crate::ctconfig::proto_name(e.proto)
        } else {
            format!("ethertype 0x{:04x}", e.ethertype)
        },
        src: ip.then_some(orig.src),
        sport: ip.then_some(orig.sport),
        dst: ip.then_some(orig.dst),
        dport: ip.then_some(orig.dport),
        nat: translated,
        len: (e.kind == kind::DROP).then_some(e.len),
    })
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ep = |a: IpAddr, p: u16| {
            if p == 0 {
                a.to_string()
            } else {
                SocketAddr::new(a, p).to_string()
            }
        };
        write!(f, "[{:.3}] {}", self.ts, self.event)?;
        if let Some(r) = self.reason {
            write!(f, " {r}")?;
        }
        if let Some(i) = &self.iface {
            write!(f, " on {i}")?;
        }
        if let Some(n) = &self.network {
            write!(f, " net {n}")?;
        }
        write!(f, " {}", self.proto)?;
        if let (Some(src), Some(dst)) = (self.src, self.dst) {
            write!(
                f,
                " {} -> {}",
                ep(src, self.sport.unwrap_or(0)),
                ep(dst, self.dport.unwrap_or(0))
            )?;
        }
        if let Some(t) = self.nat {
            write!(f, " as {} -> {}", ep(t.src, t.sport), ep(t.dst, t.dport))?;
        }
        if let Some(l) = self.len {
            write!(f, " len {l}")?;
        }
        Ok(())
    }
}

/// Options of `netpath monitor`.
#[derive(Clone, Debug)]
pub struct Options {
    pub kinds: Kinds,
    pub network: Option<String>,
    pub reason: Option<DropReason>,
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub json: bool,
    /// Exit after this many events shown.
    pub count: Option<u64>,
}

/// Events lost so far, as the datapath counted them.
fn lost(maps: &Maps) -> Result<(u64, u64)> {
    let c = |k| {
        maps.traffic(counter_scope::MONITOR, 0, k)
            .map(|t| t.packets)
    };
    Ok((
        c(counter_kind::EVENTS_LOST_RATE)?,
        c(counter_kind::EVENTS_LOST_FULL)?,
    ))
}

/// Runs until SIGINT/SIGTERM or `count` events.
pub async fn run(opts: Options) -> Result<()> {
    use std::io::Write as _;
    let (state, maps) = Maps::open_current()?;
    // The ring has one read position: two readers would take each other's
    // events (and repeat them). One monitor per namespace, then.
    let _only = only_monitor()?;
    // What a monitor before this one left in the ring is not news.
    let started_ns = conntrack::monotonic_ns();
    let dir = state.maps_dir();
    let networks = maps.networks()?;
    let net_id = match &opts.network {
        Some(b) => Some(
            maps.network_by_bridge(b)?
                .with_context(|| format!("no network on bridge {b}"))?
                .0,
        ),
        None => None,
    };
    let filter = Filter {
        kinds: opts.kinds,
        net_id,
        reason: opts.reason,
        host: opts.host,
        port: opts.port,
    };
    let mut names = Names {
        networks: networks
            .iter()
            .map(|(id, i)| (*id, codec::ifname_from_bytes(&i.bridge_name)))
            .collect(),
        ..Names::default()
    };
    let nl = Netlink::new()?;
    names.ifaces = nl.names().await?;
    let mut ring = RingBuf::try_from(state::open_pinned(&dir, map_names::EVENTS)?)
        .context("NP_EVENTS layout")?;
    let mut beat: Array<MapData, u64> =
        Array::try_from(state::open_pinned(&dir, map_names::MONITOR)?)
            .context("NP_MONITOR layout")?;
    let mut stop = events::Stop::new()?;
    let mut out = std::io::stdout().lock();
    let mut shown = 0u64;
    let (mut lost_rate, mut lost_full) = lost(&maps)?;
    let mut next_beat = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_beat {
            heartbeat(&mut beat, filter.kinds.bits())?;
            let (r, f) = lost(&maps)?;
            if r > lost_rate || f > lost_full {
                let (dr, df) = (r - lost_rate, f - lost_full);
                if opts.json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"event": "lost", "rate_limited": dr, "ring_full": df})
                    )?;
                } else {
                    writeln!(
                        out,
                        "lost {} event(s): {dr} to the rate limit, {df} to a full ring",
                        dr + df
                    )?;
                }
                (lost_rate, lost_full) = (r, f);
            }
            next_beat += Duration::from_secs(1);
        }
        while let Some(item) = ring.next() {
            let Some(e) = decode(&item) else {
                continue;
            };
            drop(item);
            if e.ts_ns < started_ns {
                continue;
            }
            if e.ifindex != 0 && !names.ifaces.contains_key(&e.ifindex) {
                names.ifaces = nl.names().await?;
            }
            let Some(s) = show(&e, &filter, &names) else {
                continue;
            };
            if opts.json {
                writeln!(out, "{}", serde_json::to_string(&s)?)?;
            } else {
                writeln!(out, "{s}")?;
            }
            shown += 1;
            if opts.count.is_some_and(|c| shown >= c) {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
        tokio::select! {
            _ = stop.recv() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Refreshes the heartbeat with this monitor's kinds (the only monitor's).
fn heartbeat(beat: &mut Array<MapData, u64>, bits: u64) -> Result<()> {
    beat.set(monitor::MASK, bits, 0)
        .context("writing NP_MONITOR")?;
    beat.set(monitor::HEARTBEAT, conntrack::monotonic_ns(), 0)
        .context("writing NP_MONITOR")
}

/// The lock that makes this the namespace's only monitor, held while it
/// runs (`/run/netpath/monitor-<cookie>.lock`).
fn only_monitor() -> Result<std::fs::File> {
    let f = crate::sys::lock_file(&format!("monitor-{}.lock", crate::netns::cookie()?))?;
    if !crate::sys::try_lock(&f, "the monitor")? {
        bail!("another netpath monitor runs in this network namespace (one reader per event ring)");
    }
    Ok(f)
}

#[cfg(test)]
mod tests;
