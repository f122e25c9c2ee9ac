//! What both families' published ports share: a mapping as `ports` shows
//! it ([`Mapping`]), a published host port as the checks and flushes see
//! it ([`Row`]), the conflict check and the runs of ports a flush takes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::Result;
use netpath_common::{PubKey4, PubVal4, counter_kind, counter_scope};
use serde::Serialize;

use crate::{
    codec, conntrack,
    ctconfig::proto_name,
    state::{Maps, Traffic},
};

/// One published port, for `ports`.
#[derive(Clone, Debug, Serialize)]
pub struct Mapping {
    /// The host address it is bound to; absent for every host address (of
    /// the container's family).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub proto: String,
    pub container_ip: IpAddr,
    pub container_port: u16,
    /// Bridge of the container's network.
    pub network: String,
    /// Packets to the container and back.
    pub to_container: Traffic,
    pub from_container: Traffic,
}

impl Mapping {
    pub fn host(&self) -> String {
        // Every address: the container family's unspecified one.
        let addr = self.host_ip.unwrap_or(match self.container_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        format!("{}/{}", SocketAddr::new(addr, self.host_port), self.proto)
    }
}

impl Mapping {
    /// The mapping of `row` (counter id `id`, into bridge `network`) with
    /// its counters.
    pub fn of(maps: &Maps, row: &Row, id: u32, network: String) -> Result<Self> {
        let traffic = |kind| maps.traffic(counter_scope::PUBLISH, id, kind);
        Ok(Self {
            host_ip: row.host_addr,
            host_port: row.port,
            proto: proto_name(row.proto),
            container_ip: row.target,
            container_port: row.target_port,
            network,
            to_container: traffic(counter_kind::PUB_IN)?,
            from_container: traffic(counter_kind::PUB_OUT)?,
        })
    }
}

/// One published host port of either family, as the checks and flushes
/// both families share see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    /// `None`: every host address of the family.
    pub host_addr: Option<IpAddr>,
    pub port: u16,
    pub proto: u8,
    pub target: IpAddr,
    pub target_port: u16,
}

impl Row {
    /// The rows of a mapping: host ports `first..=last` of `proto` on
    /// `host` (None: every address of the target's family) leading to
    /// `target` from `target_first` on.
    pub fn of_mapping(
        host: Option<IpAddr>,
        (first, last): (u16, u16),
        proto: u8,
        target: IpAddr,
        target_first: u16,
    ) -> Vec<Self> {
        (first..=last)
            .enumerate()
            .map(|(i, port)| Self {
                host_addr: host,
                port,
                proto,
                target,
                target_port: target_first + i as u16,
            })
            .collect()
    }

    /// What identifies the host port (its map key).
    fn host_key(&self) -> (Option<IpAddr>, u16, u8) {
        (self.host_addr, self.port, self.proto)
    }

    pub(super) fn of4(k: &PubKey4, v: &PubVal4) -> Self {
        Self {
            host_addr: (k.addr_be != 0).then(|| IpAddr::V4(codec::from_be(k.addr_be))),
            port: u16::from_be(k.port_be),
            proto: k.proto,
            target: IpAddr::V4(codec::from_be(v.target_be)),
            target_port: u16::from_be(v.target_port_be),
        }
    }
}

/// Why host ports `first..=last` of `proto` on `host` (`None`: every
/// address) cannot be published next to `existing` (mappings of the same
/// family), if they cannot. Per (port, protocol): a port published on
/// every address conflicts with any address, and the other way round.
pub fn conflict_rows(
    existing: &[Row],
    host: Option<IpAddr>,
    first: u16,
    last: u16,
    proto: u8,
) -> Option<String> {
    let by_port: BTreeMap<(u16, u8), Vec<&Row>> =
        existing.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry((r.port, r.proto)).or_default().push(r);
            m
        });
    for port in first..=last {
        for r in by_port.get(&(port, proto)).into_iter().flatten() {
            if r.host_addr.is_none() || host.is_none() || r.host_addr == host {
                // IPv4's every-address mappings are written as the bare port.
                let at = match r.host_addr {
                    Some(a) => SocketAddr::new(a, port).to_string(),
                    None if r.target.is_ipv6() => format!("[::]:{port}"),
                    None => port.to_string(),
                };
                return Some(format!(
                    "host port {at}/{} is already published (to {})",
                    proto_name(proto),
                    SocketAddr::new(r.target, r.target_port)
                ));
            }
        }
    }
    None
}

/// [`runs`] over rows of either family: a mapping on every host address
/// flushes its family's flows on every address.
pub fn runs_of(rows: &[Row]) -> Vec<conntrack::Published> {
    let mut sorted: Vec<(IpAddr, u8, u16)> = rows
        .iter()
        .map(|r| {
            let every = match r.target {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            (r.host_addr.unwrap_or(every), r.proto, r.port)
        })
        .collect();
    sorted.sort_unstable();
    let mut out: Vec<conntrack::Published> = Vec::new();
    for (addr, proto, port) in sorted {
        match out.last_mut() {
            Some(r)
                if r.addr == addr
                    && r.proto == proto
                    && u32::from(r.last) + 1 == u32::from(port) =>
            {
                r.last = port;
            }
            _ => out.push(conntrack::Published {
                addr,
                first: port,
                last: port,
                proto,
            }),
        }
    }
    out
}

/// What an owner's sync changes, for one family: which of `have` (the
/// owner's published ports) `want` (each wanted mapping as its ports) no
/// longer leads where it should (to remove), and which wanted mappings are
/// not all there (to publish). Indices into `have` and `want`.
pub fn owned_changes_of(have: &[Row], want: &[Vec<Row>]) -> (Vec<usize>, Vec<usize>) {
    let wanted: BTreeMap<(Option<IpAddr>, u16, u8), (IpAddr, u16)> = want
        .iter()
        .flatten()
        .map(|r| (r.host_key(), (r.target, r.target_port)))
        .collect();
    let is_stale = |r: &Row| wanted.get(&r.host_key()) != Some(&(r.target, r.target_port));
    let stale: Vec<usize> = (0..have.len()).filter(|&i| is_stale(&have[i])).collect();
    let kept: BTreeSet<_> = have
        .iter()
        .filter(|r| !is_stale(r))
        .map(Row::host_key)
        .collect();
    let missing = want
        .iter()
        .enumerate()
        .filter(|(_, rows)| !rows.iter().all(|r| kept.contains(&r.host_key())))
        .map(|(i, _)| i)
        .collect();
    (stale, missing)
}
