//! `netpath status`: the networks, the interfaces netpath attached to (with
//! the program ids the kernel reports), and their counters and drops, as
//! tables or JSON.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result};
use netpath_common::{
    DropReason, GatewayMode, IfaceRole, counter_kind, counter_scope, iface_flags, net_flags, owner,
    v6::{Port6, port6_flags},
};
use serde::Serialize;

use crate::{
    attach::{Datapath, attached_program_ids},
    codec, netns,
    plumbing::Netlink,
    reconcile,
    spec::NetworkSpec,
    state::{Dir, Maps, StateDir, Traffic},
    table,
};

#[derive(Debug, Serialize)]
pub struct NetworkStatus {
    pub id: u32,
    pub bridge: String,
    pub bridge_ifindex: u32,
    /// The IPv4 subnet and gateway; `null` on an IPv6-only network.
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    /// The IPv6 subnet of a dual-stack or IPv6-only network.
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    pub created_bridge: bool,
    pub masquerade: bool,
    pub icc: bool,
    pub internal: bool,
    /// nat, nat-unprotected or routed.
    pub gateway_mode: String,
    /// Interfaces with direct access to published container ports.
    pub trusted_host_interfaces: Vec<String>,
    /// Peer CIDRs (`--no-masquerade-to`).
    pub no_masquerade_to: Vec<String>,
    pub from_containers: Traffic,
    pub to_containers: Traffic,
    /// Of `to_containers`, what went port to port within the network
    /// (the fast path, past the bridge).
    pub c2c_fast: Traffic,
    /// Packets source-translated on the way out (incl. ICMP errors).
    pub snat: Traffic,
    /// Replies, later fragments and ICMP errors translated back.
    pub rev_snat: Traffic,
    /// Conntrack flows created since the network came up.
    pub ct_new: u64,
    /// Conntrack flows alive now.
    pub flows: u32,
    /// Dropped packets by reason (every reason listed, zero or not).
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct IfaceStatus {
    pub ifindex: u32,
    /// Current name; `None` when the interface no longer exists.
    pub name: Option<String>,
    pub role: String,
    /// Bridge name of the interface's network (bridges and ports).
    pub network: Option<String>,
    /// Uplinks: the primary IPv4 address, the masquerade source. Ports: the
    /// container's address once bound (anti-spoofing).
    pub address: Option<String>,
    /// Ports: the container's MAC once bound.
    pub mac: Option<String>,
    /// Ports: "connect" (assigned), "docker" (from dockerd's endpoint, by
    /// `netpath docker`), "learned" (first packet) or "mac-pinned" (its
    /// MAC only, by its first IPv6 packet); none yet otherwise.
    pub binding: Option<String>,
    /// Ports of dual-stack networks: the container's global IPv6 address
    /// once bound, and how ("connect", "docker" or "learned", as above).
    pub address6: Option<String>,
    pub binding6: Option<String>,
    pub ingress_prog_ids: Vec<u32>,
    pub egress_prog_ids: Vec<u32>,
    pub ingress: Traffic,
    pub egress: Traffic,
    /// Packets dropped on this interface, by reason (every reason listed).
    pub drops: BTreeMap<String, u64>,
}

/// The conntrack table.
#[derive(Debug, Serialize)]
pub struct ConntrackStatus {
    /// Entries the table holds at most (two per flow).
    pub capacity: u32,
    /// Entries and flows now, and the flows not established yet (see
    /// `ct::embryonic`).
    pub entries: u32,
    pub flows: u32,
    pub embryonic: u32,
    /// `entries` as a percentage of `capacity`.
    pub fill_pct: f64,
    /// Entries the datapath inserted and removed, and those the table
    /// evicted to make room (inserted − removed − present).
    pub inserted: u64,
    pub removed: u64,
    pub evicted: u64,
    /// New flows that got no entry (no free tuple, a map error).
    pub failed_inserts: u64,
    /// Flows the table admits: past them new flows are refused rather
    /// than established ones evicted (`ct::fill`).
    pub max_flows: u32,
    /// New flows refused because the table was at that limit.
    pub refused: u64,
    /// The table's kernel memory (allocated whole when it is created), in
    /// all, per entry and per flow; `None` if it could not be read.
    pub memory: Option<crate::ctmem::CtMemory>,
    /// The IPv6 table (`NP_CT6`) on its own: it is smaller and fills by
    /// itself (the figures above count both tables' entries and flows).
    pub ipv6: Ct6Status,
}

/// `NP_CT6`'s fill, from the datapath's live count.
#[derive(Debug, Serialize)]
pub struct Ct6Status {
    pub capacity: u32,
    pub entries: u64,
    pub fill_pct: f64,
    pub max_flows: u32,
}

/// The namespace's daemon.
#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<i32>,
    pub build: Option<String>,
    /// Its last sweep: how long ago (seconds), what it found.
    pub last_sweep_s_ago: Option<f64>,
    pub last_sweep: Option<crate::daemon::Sweep>,
    pub sweeps: u64,
    pub swept_flows: u64,
    /// Where it serves Prometheus metrics.
    pub metrics: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub netns_cookie: u64,
    pub state_dir: String,
    pub daemon: Option<DaemonStatus>,
    pub conntrack: Option<ConntrackStatus>,
    /// Problems worth an operator's attention (host addresses inside a
    /// managed subnet).
    pub warnings: Vec<String>,
    pub networks: Vec<NetworkStatus>,
    pub interfaces: Vec<IfaceStatus>,
}

/// Every drop reason's count for one network or interface.
fn drops(maps: &Maps, scope: u16, id: u32) -> Result<BTreeMap<String, u64>> {
    DropReason::ALL
        .iter()
        .map(|r| {
            let t = maps.traffic(scope, id, r.counter_kind())?;
            Ok((r.as_str().to_owned(), t.packets))
        })
        .collect()
}

/// Reads the state without netpath's lock: it changes nothing that other
/// commands keep (the per-network flow counts it writes are its own), and
/// a monitoring loop calling it must not keep the daemon from the lock.
pub async fn status() -> Result<Status> {
    let state = StateDir::current()?;
    let cookie = netns::cookie()?;
    let mut out = Status {
        netns_cookie: cookie,
        state_dir: state.root.display().to_string(),
        daemon: None,
        conntrack: None,
        warnings: Vec::new(),
        networks: Vec::new(),
        interfaces: Vec::new(),
    };
    if !state.exists() {
        return Ok(out);
    }
    let nl = Netlink::new()?;
    let names = nl.names().await?;
    let mut dp = Datapath::open_or_load(&state)?;
    out.conntrack = Some(conntrack_status(&state, &mut dp, cookie)?);
    out.daemon = Some(daemon_status(cookie)?);
    out.warnings = reconcile::address_conflicts(&nl, &dp.maps)
        .await?
        .into_iter()
        .map(|c| format!("{c}: egress to it breaks"))
        .collect();
    // What a running `netpath docker` could not mirror (bindings it cannot
    // honour, networks it cannot take).
    if let Ok(text) = std::fs::read_to_string(crate::sys::docker_problems_path(cookie)) {
        out.warnings.extend(
            text.lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("netpath docker: {l}")),
        );
    }
    let maps = &dp.maps;
    let networks = maps.networks()?;
    let trusted = crate::tables::Table::entries(&maps.trusted)?;
    let peers = crate::peers::all(&maps.peers4)?;
    for (&id, info) in &networks {
        let spec = NetworkSpec::from_info(info);
        let v6 = maps.v6.spec(id)?;
        let net = |kind| maps.traffic(counter_scope::NETWORK, id, kind);
        out.networks.push(NetworkStatus {
            id,
            bridge: spec.bridge,
            bridge_ifindex: info.bridge_ifindex,
            subnet: spec.v4.map(|v| v.subnet.to_string()),
            gateway: spec.v4.map(|v| v.gateway.to_string()),
            subnet6: v6.map(|v| v.subnet.to_string()),
            gateway6: v6.map(|v| v.gateway.to_string()),
            created_bridge: info.flags & net_flags::CREATED_BRIDGE != 0,
            masquerade: info.flags & net_flags::NO_MASQUERADE == 0
                && GatewayMode::from_flags(info.flags) != GatewayMode::Routed,
            icc: info.flags & net_flags::NO_ICC == 0,
            internal: info.flags & net_flags::INTERNAL != 0,
            gateway_mode: GatewayMode::from_flags(info.flags).as_str().to_owned(),
            trusted_host_interfaces: crate::trusted::names_of(&trusted, id),
            no_masquerade_to: crate::peers::of(&peers, id)
                .iter()
                .map(ToString::to_string)
                .collect(),
            snat: net(counter_kind::NET_SNAT)?,
            rev_snat: net(counter_kind::NET_REV_SNAT)?,
            ct_new: net(counter_kind::NET_CT_NEW)?.packets,
            flows: maps.ct_networks.get(&id, 0).unwrap_or(0),
            drops: drops(maps, counter_scope::NETWORK, id)?,
            from_containers: net(counter_kind::NET_FROM_CONTAINERS)?,
            to_containers: net(counter_kind::NET_TO_CONTAINERS)?,
            c2c_fast: net(counter_kind::NET_C2C_FAST)?,
        });
    }
    let lease_owner: BTreeMap<u32, u32> = maps
        .leases()?
        .iter()
        .map(|(_, l)| (l.host_ifindex, l.flags))
        .collect();
    let ports6: BTreeMap<u32, Port6> = maps
        .v6
        .ports
        .iter()
        .collect::<Result<_, _>>()
        .context("reading NP_PORTS6")?;
    let lease6_owner: BTreeMap<u32, u32> = maps
        .v6
        .leases
        .iter()
        .filter_map(Result::ok)
        .map(|(_, l)| (l.host_ifindex, l.flags))
        .collect();
    for (ifindex, info) in maps.ifaces()? {
        let name = names.get(&ifindex).cloned();
        let progs = |dir| {
            name.as_deref()
                .map(|n| attached_program_ids(ifindex, n, dir).unwrap_or_default())
                .unwrap_or_default()
        };
        let binding = if info.flags & iface_flags::BOUND != 0 {
            let docker = lease_owner.get(&ifindex) == Some(&u32::from(owner::DOCKER));
            Some(if docker { "docker" } else { "connect" })
        } else if info.flags & iface_flags::LEARNED != 0 {
            Some("learned")
        } else if info.flags & iface_flags::MAC_PINNED != 0 {
            Some("mac-pinned")
        } else {
            None
        };
        let port6 = ports6.get(&ifindex).filter(|p| p.has_global());
        let binding6 = port6.map(|p| {
            if p.flags & port6_flags::GLOBAL_BOUND == 0 {
                "learned"
            } else if lease6_owner.get(&ifindex) == Some(&u32::from(owner::DOCKER)) {
                "docker"
            } else {
                "connect"
            }
        });
        out.interfaces.push(IfaceStatus {
            ifindex,
            role: IfaceRole::from_u32(info.role)
                .map_or("unknown", |r| r.as_str())
                .to_owned(),
            network: networks
                .get(&info.net_id)
                .map(|n| codec::ifname_from_bytes(&n.bridge_name)),
            address: (info.ipv4_be != 0).then(|| codec::from_be(info.ipv4_be).to_string()),
            mac: (info.mac != [0; 6]).then(|| codec::fmt_mac(&info.mac)),
            binding: binding.map(str::to_owned),
            address6: port6.map(|p| std::net::Ipv6Addr::from(p.global).to_string()),
            binding6: binding6.map(str::to_owned),
            ingress_prog_ids: progs(Dir::Ingress),
            egress_prog_ids: progs(Dir::Egress),
            ingress: maps.traffic(counter_scope::IFACE, ifindex, counter_kind::IF_INGRESS)?,
            egress: maps.traffic(counter_scope::IFACE, ifindex, counter_kind::IF_EGRESS)?,
            drops: drops(maps, counter_scope::IFACE, ifindex)?,
            name,
        });
    }
    Ok(out)
}

/// Entries the LRU evicted: inserted − removed − present. The counting
/// pass takes a while on a large table (about 1 ms per 10,000 entries),
/// and flows keep coming meanwhile: an entry inserted during it may be
/// missed by the walk, so inserts are taken from *before* the pass
/// (`inserted_before`) and removals from after it (and after a sweep
/// running beside it has counted its own). An entry present throughout is
/// counted, so this never reports an eviction that did not happen;
/// evictions during the pass may show on the next look.
fn evicted(inserted_before: u64, removed_after: u64, counted: u32) -> u64 {
    inserted_before.saturating_sub(removed_after + u64::from(counted))
}

/// The table, from a counting pass (which also fills the per-network
/// counts) and the insert/remove counters.
fn conntrack_status(state: &StateDir, dp: &mut Datapath, cookie: u64) -> Result<ConntrackStatus> {
    let inserted_before = dp.maps.ct_counter(counter_kind::CT_INSERTS)?;
    let found = crate::conntrack::count(dp)?;
    let capacity = Maps::ct_capacity(&state.maps_dir())?;
    let ct = |kind| dp.maps.ct_counter(kind);
    let (inserted, mut removed) = (ct(counter_kind::CT_INSERTS)?, ct(counter_kind::CT_REMOVES)?);
    if evicted(inserted_before, removed, found.entries) > 0 {
        // The daemon's sweep, running beside this pass, counts what it
        // removed when it ends: give it as long as its last pass took, then
        // read again (later removals only lower the figure).
        let took = crate::daemon::report(cookie)
            .and_then(|r| r.last_sweep)
            .map_or(Duration::from_millis(100), |s| {
                Duration::from_micros(s.took_us)
            });
        std::thread::sleep((took * 3 / 2).min(Duration::from_secs(1)));
        removed = ct(counter_kind::CT_REMOVES)?;
    }
    Ok(ConntrackStatus {
        capacity,
        entries: found.entries,
        flows: found.flows,
        embryonic: found.embryonic,
        fill_pct: f64::from(found.entries) * 100.0 / f64::from(capacity.max(1)),
        inserted,
        removed,
        evicted: evicted(inserted_before, removed, found.entries),
        failed_inserts: ct(counter_kind::CT_INSERT_FAILED)?,
        max_flows: netpath_common::ct::fill::max_flows(capacity),
        refused: ct(counter_kind::CT_REFUSED)?,
        memory: crate::ctmem::of_pinned(&state.maps_dir().join(netpath_common::map_names::CT4))
            .ok(),
        ipv6: {
            let capacity = netpath_common::ct6::MAX_CT6;
            let entries = dp.maps.v6.ct_fill()?.0.max(0) as u64;
            Ct6Status {
                capacity,
                entries,
                fill_pct: entries as f64 * 100.0 / f64::from(capacity),
                max_flows: netpath_common::ct::fill::max_flows(capacity),
            }
        },
    })
}

fn daemon_status(cookie: u64) -> Result<DaemonStatus> {
    let running = crate::daemon::running()?;
    let report = running.as_ref().and_then(|_| crate::daemon::report(cookie));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = report.as_ref().and_then(|r| r.last_sweep);
    Ok(DaemonStatus {
        running: running.is_some(),
        pid: running.as_ref().map(|r| r.pid),
        build: running.map(|r| r.build),
        last_sweep_s_ago: last.map(|l| now_ms.saturating_sub(l.at_unix_ms) as f64 / 1000.0),
        last_sweep: last,
        sweeps: report.as_ref().map_or(0, |r| r.sweeps),
        swept_flows: report.as_ref().map_or(0, |r| r.swept_flows),
        metrics: report.and_then(|r| r.metrics),
    })
}

fn fmt_traffic(t: Traffic) -> String {
    format!("{} pkts {} B", t.packets, t.bytes)
}

/// Non-zero drops as `reason=N …`, or `-`.
fn fmt_drops(d: &BTreeMap<String, u64>) -> String {
    let v: Vec<String> = d
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{}={n}", k.trim_start_matches("drop_")))
        .collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(" ")
    }
}

impl Status {
    /// The human-readable form of `netpath status`.
    pub fn render(&self) -> String {
        if self.networks.is_empty() {
            return "no networks are up in this network namespace\n".to_owned();
        }
        let on = |b: bool| if b { "on" } else { "off" }.to_owned();
        let nets: Vec<Vec<String>> = self
            .networks
            .iter()
            .map(|n| {
                let both = |a: &Option<String>, b: &Option<String>| {
                    [a, b]
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                vec![
                    n.bridge.clone(),
                    both(&n.subnet, &n.subnet6),
                    both(&n.gateway, &n.gateway6),
                    if n.trusted_host_interfaces.is_empty() {
                        n.gateway_mode.clone()
                    } else {
                        format!(
                            "{} (trusted: {})",
                            n.gateway_mode,
                            n.trusted_host_interfaces.join(",")
                        )
                    },
                    fmt_traffic(n.from_containers),
                    if n.c2c_fast.packets == 0 {
                        fmt_traffic(n.to_containers)
                    } else {
                        format!(
                            "{} ({} port to port)",
                            fmt_traffic(n.to_containers),
                            n.c2c_fast.packets
                        )
                    },
                ]
            })
            .collect();
        let opts: Vec<Vec<String>> = self
            .networks
            .iter()
            .map(|n| {
                vec![
                    n.bridge.clone(),
                    on(n.masquerade),
                    on(n.icc),
                    if n.internal { "yes" } else { "no" }.to_owned(),
                    fmt_traffic(n.snat),
                    fmt_traffic(n.rev_snat),
                    n.flows.to_string(),
                    fmt_drops(&n.drops),
                ]
            })
            .collect();
        let ids = |v: &[u32]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            }
        };
        let ifaces: Vec<Vec<String>> = self
            .interfaces
            .iter()
            .map(|i| {
                vec![
                    i.name.clone().unwrap_or_else(|| "(gone)".into()),
                    i.role.clone(),
                    i.network.clone().unwrap_or_else(|| "-".into()),
                    match (&i.address, &i.address6) {
                        (Some(a), Some(b)) => format!("{a} {b}"),
                        (a, b) => a
                            .clone()
                            .or_else(|| b.clone())
                            .unwrap_or_else(|| "-".into()),
                    },
                    format!("{}/{}", ids(&i.ingress_prog_ids), ids(&i.egress_prog_ids)),
                    fmt_traffic(i.ingress),
                    fmt_traffic(i.egress),
                    fmt_drops(&i.drops),
                ]
            })
            .collect();
        let mut head = format!("state: {}\n", self.state_dir);
        match &self.daemon {
            Some(d) if d.running => {
                let _ = writeln!(
                    head,
                    "daemon: pid {} ({}){}",
                    d.pid.unwrap_or(0),
                    d.build.as_deref().unwrap_or("?"),
                    d.last_sweep_s_ago.map_or(String::new(), |s| format!(
                        ", last sweep {s:.1} s ago, {} sweeps, {} flows swept",
                        d.sweeps, d.swept_flows
                    ))
                );
                if let Some(m) = &d.metrics {
                    let _ = writeln!(head, "metrics: http://{m}/metrics");
                }
            }
            Some(_) => head.push_str(
                "WARNING: no netpath daemon runs for this namespace: expired flows are not swept \
                 and ports plugged in now stay unmanaged (their traffic is dropped) until \
                 `netpath up` or `netpath daemon` runs\n",
            ),
            None => {}
        }
        for w in &self.warnings {
            let _ = writeln!(head, "WARNING: {w}");
        }
        if let Some(c) = &self.conntrack {
            let _ = writeln!(
                head,
                "conntrack: {} of at most {} flows ({} embryonic), {} of {} entries ({:.1} %), {} refused when full, {} evicted, {} failed inserts",
                c.flows,
                c.max_flows,
                c.embryonic,
                c.entries,
                c.capacity,
                c.fill_pct,
                c.refused,
                c.evicted,
                c.failed_inserts
            );
            let _ = writeln!(
                head,
                "conntrack IPv6: {} of {} entries ({:.1} %, at most {} flows)",
                c.ipv6.entries, c.ipv6.capacity, c.ipv6.fill_pct, c.ipv6.max_flows
            );
            if let Some(m) = &c.memory {
                let _ = writeln!(
                    head,
                    "conntrack memory: {:.1} MiB ({:.0} B an entry, {:.0} B a flow; {})",
                    m.bytes as f64 / f64::from(1 << 20),
                    m.bytes_per_entry,
                    m.bytes_per_flow,
                    if m.source == "kernel" {
                        "the map's memlock as the kernel reports it"
                    } else {
                        "computed from the map's layout"
                    }
                );
            }
        }
        format!(
            "{head}{}\n{}\n{}",
            table::render(
                &[
                    "NETWORK",
                    "SUBNET",
                    "GATEWAY",
                    "MODE",
                    "FROM-CONTAINERS",
                    "TO-CONTAINERS"
                ],
                &nets
            ),
            table::render(
                &[
                    "NETWORK", "MASQ", "ICC", "INTERNAL", "SNAT", "REV-SNAT", "FLOWS", "DROPS"
                ],
                &opts
            ),
            table::render(
                &[
                    "INTERFACE",
                    "ROLE",
                    "NETWORK",
                    "ADDRESS",
                    "PROG(IN/EG)",
                    "INGRESS",
                    "EGRESS",
                    "DROPS"
                ],
                &ifaces
            ),
        )
    }
}
