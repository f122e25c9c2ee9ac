//! `netpath status`: the networks, the interfaces netpath attached to (with
//! the program ids the kernel reports), and their counters and drops, as
//! tables or JSON.

use std::collections::BTreeMap;

use anyhow::Result;
use netpath_common::{
    DropReason, GatewayMode, IfaceRole, counter_kind, counter_scope, iface_flags, net_flags, owner,
};
use serde::Serialize;

use crate::{
    attach::attached_program_ids,
    netns,
    plan::{self, NetworkSpec},
    plumbing::Netlink,
    state::{self, Dir, Maps, StateDir, Traffic},
    table,
};

#[derive(Debug, Serialize)]
pub struct NetworkStatus {
    pub id: u32,
    pub bridge: String,
    pub bridge_ifindex: u32,
    pub subnet: String,
    pub gateway: String,
    pub created_bridge: bool,
    pub masquerade: bool,
    pub icc: bool,
    pub internal: bool,
    /// nat, nat-unprotected or routed.
    pub gateway_mode: String,
    pub from_containers: Traffic,
    pub to_containers: Traffic,
    /// Packets source-translated on the way out (incl. ICMP errors).
    pub snat: Traffic,
    /// Replies, later fragments and ICMP errors translated back.
    pub rev_snat: Traffic,
    /// Conntrack flows created.
    pub ct_new: u64,
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
    /// `netpath docker`) or "learned" (first packet); none yet otherwise.
    pub binding: Option<String>,
    pub ingress_prog_ids: Vec<u32>,
    pub egress_prog_ids: Vec<u32>,
    pub ingress: Traffic,
    pub egress: Traffic,
    /// Packets dropped on this interface, by reason (every reason listed).
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub netns_cookie: u64,
    pub state_dir: String,
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

pub async fn status() -> Result<Status> {
    let _lock = state::lock(false)?;
    let state = StateDir::current()?;
    let mut out = Status {
        netns_cookie: netns::cookie()?,
        state_dir: state.root.display().to_string(),
        networks: Vec::new(),
        interfaces: Vec::new(),
    };
    if !state.exists() {
        return Ok(out);
    }
    let nl = Netlink::new()?;
    let names = nl.names().await?;
    let maps = Maps::open(&state)?;
    let networks = maps.networks()?;
    for (&id, info) in &networks {
        let spec = NetworkSpec::from_info(info);
        let net = |kind| maps.traffic(counter_scope::NETWORK, id, kind);
        out.networks.push(NetworkStatus {
            id,
            bridge: spec.bridge,
            bridge_ifindex: info.bridge_ifindex,
            subnet: spec.subnet.to_string(),
            gateway: spec.gateway.to_string(),
            created_bridge: info.flags & net_flags::CREATED_BRIDGE != 0,
            masquerade: info.flags & net_flags::NO_MASQUERADE == 0
                && GatewayMode::from_flags(info.flags) != GatewayMode::Routed,
            icc: info.flags & net_flags::NO_ICC == 0,
            internal: info.flags & net_flags::INTERNAL != 0,
            gateway_mode: GatewayMode::from_flags(info.flags).as_str().to_owned(),
            snat: net(counter_kind::NET_SNAT)?,
            rev_snat: net(counter_kind::NET_REV_SNAT)?,
            ct_new: net(counter_kind::NET_CT_NEW)?.packets,
            drops: drops(&maps, counter_scope::NETWORK, id)?,
            from_containers: net(counter_kind::NET_FROM_CONTAINERS)?,
            to_containers: net(counter_kind::NET_TO_CONTAINERS)?,
        });
    }
    let lease_owner: BTreeMap<u32, u32> = maps
        .leases()?
        .iter()
        .map(|(_, l)| (l.host_ifindex, l.flags))
        .collect();
    for (ifindex, info) in maps.ifaces()? {
        let name = names.get(&ifindex).cloned();
        let progs = |dir| {
            name.as_deref()
                .map(|n| attached_program_ids(n, dir).unwrap_or_default())
                .unwrap_or_default()
        };
        let binding = if info.flags & iface_flags::BOUND != 0 {
            let docker = lease_owner.get(&ifindex) == Some(&u32::from(owner::DOCKER));
            Some(if docker { "docker" } else { "connect" })
        } else if info.flags & iface_flags::LEARNED != 0 {
            Some("learned")
        } else {
            None
        };
        out.interfaces.push(IfaceStatus {
            ifindex,
            role: IfaceRole::from_u32(info.role)
                .map_or("unknown", |r| r.as_str())
                .to_owned(),
            network: networks
                .get(&info.net_id)
                .map(|n| plan::ifname_from_bytes(&n.bridge_name)),
            address: (info.ipv4_be != 0).then(|| plan::from_be(info.ipv4_be).to_string()),
            mac: (info.mac != [0; 6]).then(|| plan::fmt_mac(&info.mac)),
            binding: binding.map(str::to_owned),
            ingress_prog_ids: progs(Dir::Ingress),
            egress_prog_ids: progs(Dir::Egress),
            ingress: maps.traffic(counter_scope::IFACE, ifindex, counter_kind::IF_INGRESS)?,
            egress: maps.traffic(counter_scope::IFACE, ifindex, counter_kind::IF_EGRESS)?,
            drops: drops(&maps, counter_scope::IFACE, ifindex)?,
            name,
        });
    }
    Ok(out)
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
                vec![
                    n.bridge.clone(),
                    n.subnet.clone(),
                    n.gateway.clone(),
                    n.gateway_mode.clone(),
                    fmt_traffic(n.from_containers),
                    fmt_traffic(n.to_containers),
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
                    n.ct_new.to_string(),
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
                    i.address.clone().unwrap_or_else(|| "-".into()),
                    format!("{}/{}", ids(&i.ingress_prog_ids), ids(&i.egress_prog_ids)),
                    fmt_traffic(i.ingress),
                    fmt_traffic(i.egress),
                    fmt_drops(&i.drops),
                ]
            })
            .collect();
        format!(
            "state: {}\n{}\n{}\n{}",
            self.state_dir,
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
