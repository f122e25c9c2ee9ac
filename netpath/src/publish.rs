//! `publish` / `unpublish` / `ports`: published ports live in the pinned
//! `NP_PUBLISH4` map (IPv6 ones in `NP_PUBLISH6`, see [`v6`]), one entry
//! per host port, looked up in O(1) by the datapath (exact host address
//! first, then "every host address").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result, bail};
use netpath_common::{PubKey4, PubVal4, TargetKey4, counter_scope, owner};

use crate::{
    attach::Datapath,
    codec, conntrack,
    spec::{self, NetworkSpec, PortSpec},
    state::{self, Maps},
    table,
};

use crate::ctconfig::proto_name;

mod owned;
mod rows;
pub mod v6;
pub use owned::{Synced, owned_changes, owned_to, sync_owned, sync_owned_both, sync_owned_to};
pub use rows::{Mapping, Row, conflict_rows, owned_changes_of, runs_of};

fn key(addr: Option<Ipv4Addr>, port: u16, proto: u8) -> PubKey4 {
    PubKey4 {
        addr_be: addr.map_or(0, codec::be),
        port_be: port.to_be(),
        proto,
        _pad: 0,
    }
}

/// `publish [HOST_IP:]HOST_PORT[-END][/PROTO] CONTAINER_IP:PORT[-END]`:
/// checks everything, then inserts one entry per port. Returns how many.
pub fn publish(h: &PortSpec, t: &PortSpec) -> Result<u32> {
    spec::check_publish(h, t)?;
    let container = t.addr.context("a container address is required")?;
    let host_addr = match (h.addr, container) {
        (None, _) => None,
        (Some(a), c) if a.is_ipv6() == c.is_ipv6() => Some(a),
        (Some(a), c) => bail!(
            "host address {a} and container address {c} are of different families: IPv4 publishes to IPv4, IPv6 to IPv6"
        ),
    };
    let _lock = state::lock(false)?;
    let (_, mut maps) = Maps::open_current()?;
    let container = match container {
        IpAddr::V4(c) => c,
        IpAddr::V6(c) => {
            let ports = v6::Ports6 {
                host_addr: match host_addr {
                    Some(IpAddr::V6(a)) if !a.is_unspecified() => Some(a),
                    _ => None,
                },
                host_first: h.first,
                host_last: h.last,
                proto: h.proto_or_tcp(),
                target: c,
                target_first: t.first,
            };
            return v6::insert(&mut maps, &ports, owner::USER);
        }
    };
    let ports = Ports {
        host_addr: match host_addr {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        host_first: h.first,
        host_last: h.last,
        proto: h.proto_or_tcp(),
        target: container,
        target_first: t.first,
    };
    insert(&mut maps, &ports, owner::USER)
}

/// Host ports `host_first..=host_last` leading to `target` from `target_first` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ports {
    pub host_addr: Option<Ipv4Addr>,
    pub host_first: u16,
    pub host_last: u16,
    pub proto: u8,
    pub target: Ipv4Addr,
    pub target_first: u16,
}

impl Ports {
    /// The one port of a `NP_PUBLISH4` entry.
    pub fn of(k: &PubKey4, v: &PubVal4) -> Self {
        let port = u16::from_be(k.port_be);
        Self {
            host_addr: (k.addr_be != 0).then(|| codec::from_be(k.addr_be)),
            host_first: port,
            host_last: port,
            proto: k.proto,
            target: codec::from_be(v.target_be),
            target_first: u16::from_be(v.target_port_be),
        }
    }
}

impl Ports {
    /// Its host ports as rows (what an owner's sync compares).
    pub fn rows(&self) -> Vec<Row> {
        Row::of_mapping(
            self.host_addr.map(IpAddr::V4),
            (self.host_first, self.host_last),
            self.proto,
            IpAddr::V4(self.target),
            self.target_first,
        )
    }

    /// Its `NP_PUBLISH4` entries, one per host port, made by `owner`
    /// (network and counter ids left 0: for comparing, not for the map).
    pub fn entries(&self, owner: u16) -> Vec<(PubKey4, PubVal4)> {
        (self.host_first..=self.host_last)
            .enumerate()
            .map(|(i, port)| {
                let v = PubVal4 {
                    target_be: codec::be(self.target),
                    target_port_be: (self.target_first + i as u16).to_be(),
                    owner,
                    net_id: 0,
                    id: 0,
                };
                (key(self.host_addr, port, self.proto), v)
            })
            .collect()
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = PortSpec {
            addr: self.host_addr.map(IpAddr::V4),
            first: self.host_first,
            last: self.host_last,
            proto: None,
        };
        write!(
            f,
            "{host}/{} -> {}:{}",
            proto_name(self.proto),
            self.target,
            self.target_first
        )
    }
}

/// A user's mapping (`publish`, `apply`) into an internal network is
/// refused: nothing reaches such a container from beyond its subnet, so
/// the datapath would never use it. (`netpath docker` leaves internal
/// networks' ports out itself; CNI's mappings are left to the datapath,
/// which refuses their flows, `drop_internal`.)
pub(crate) fn refuse_internal(owner: u16, flags: u32, target: &str, bridge: &str) -> Result<()> {
    let user = owner == netpath_common::owner::USER || owner == netpath_common::owner::APPLY;
    if user && flags & netpath_common::net_flags::INTERNAL != 0 {
        bail!(
            "{target} is on the internal network {bridge}: nothing outside its subnet reaches it"
        );
    }
    Ok(())
}

/// Checks a mapping against the networks and what is published, then
/// inserts it, or nothing of it. Returns how many ports it took.
pub fn insert(maps: &mut Maps, p: &Ports, owner: u16) -> Result<u32> {
    spec::check_sctp_ports(p.proto, p.host_first, p.target_first)?;
    let container = p.target;
    let (net_id, info, net, v4) = maps
        .networks()?
        .into_iter()
        .filter(|(_, i)| i.contains_be(codec::be(container)))
        .find_map(|(id, i)| {
            let net = NetworkSpec::from_info(&i);
            net.v4.map(|v4| (id, i, net, v4))
        })
        .with_context(|| {
            format!("container address {container} is outside every managed subnet")
        })?;
    refuse_internal(owner, info.flags, &container.to_string(), &net.bridge)?;
    if container == v4.gateway {
        bail!(
            "{container} is the gateway of {}, not a container",
            net.bridge
        );
    }
    if container == v4.subnet.network() || container == v4.subnet.broadcast() {
        bail!(
            "{container} is the network or broadcast address of {}, not a container",
            v4.subnet
        );
    }
    if let Some(a) = p.host_addr {
        check_host_addr(maps, a)?;
    }
    let proto = p.proto;
    let existing = maps.published()?;
    if let Some(why) = conflict(&existing, p) {
        bail!("{why}");
    }
    // Counter ids are shared by both families' mappings.
    let v4_max = existing.iter().map(|(_, v)| v.id).max().unwrap_or(0);
    let first_id = v4_max.max(v6::max_id(&v6::published(maps)?)) + 1;
    let mut inserted: Vec<(PubKey4, PubVal4)> = Vec::new();
    for (i, port) in (p.host_first..=p.host_last).enumerate() {
        let id = first_id + i as u32;
        let k = key(p.host_addr, port, proto);
        let v = PubVal4 {
            target_be: codec::be(container),
            target_port_be: (p.target_first + i as u16).to_be(),
            owner,
            net_id,
            id,
        };
        let added = maps
            .publish4
            .insert(k, v, 0)
            .context("recording the published port")
            .and_then(|()| target_count(maps, &k, &v, 1));
        if let Err(e) = added {
            // No half-applied state: take back what this command added.
            for (k, v) in &inserted {
                let _ = maps.publish4.remove(k);
                let _ = target_count(maps, k, v, -1);
            }
            let _ = maps.publish4.remove(&k);
            return Err(e);
        }
        inserted.push((k, v));
    }
    Ok(u32::from(p.host_last - p.host_first) + 1)
}

/// Why `p` cannot be published next to `existing`, if it cannot.
pub fn conflict(existing: &[(PubKey4, PubVal4)], p: &Ports) -> Option<String> {
    let rows: Vec<Row> = existing.iter().map(|(k, v)| Row::of4(k, v)).collect();
    let host = p.host_addr.map(IpAddr::V4);
    conflict_rows(&rows, host, p.host_first, p.host_last, p.proto)
}

/// Counts a mapping in (`delta` 1) or out (-1) of `NP_TARGETS4`, which
/// tells the datapath which container ports some published port leads to
/// (what a routed network lets in at the container's own address). A
/// mapping on a loopback address only is for the host's own processes,
/// and opens nothing to the outside.
fn target_count(maps: &mut Maps, k: &PubKey4, v: &PubVal4, delta: i32) -> Result<()> {
    if codec::from_be(k.addr_be).is_loopback() {
        return Ok(());
    }
    let proto = k.proto;
    let key = TargetKey4 {
        addr_be: v.target_be,
        port_be: v.target_port_be,
        proto,
        _pad: 0,
    };
    let n = match maps.targets4.get(&key, 0) {
        Ok(n) => n,
        Err(e) if state::is_missing(&e) => 0,
        Err(e) => return Err(e).context("reading NP_TARGETS4"),
    };
    let n = n.saturating_add_signed(delta);
    let res = if n == 0 {
        match maps.targets4.remove(&key) {
            Err(e) if state::is_missing(&e) => Ok(()),
            r => r,
        }
    } else {
        maps.targets4.insert(key, n, 0)
    };
    res.context("updating NP_TARGETS4")
}

/// A host address to publish on: one of the host's own (any loopback
/// address too), not a broadcast, multicast or container address.
fn check_host_addr(maps: &Maps, a: Ipv4Addr) -> Result<()> {
    if a.is_broadcast() || a.is_multicast() {
        bail!("{a} is not a unicast address: publish on an address of the host");
    }
    if a.is_loopback() {
        return Ok(());
    }
    let networks = maps.networks()?;
    let within = networks
        .iter()
        .filter(|(_, n)| n.contains_be(codec::be(a)))
        .map(|(_, n)| NetworkSpec::from_info(n));
    for net in within {
        if let Some(v4) = net.v4.filter(|v4| a != v4.gateway) {
            bail!(
                "{a} is in {}'s subnet {}, not an address of the host",
                net.bridge,
                v4.subnet
            );
        }
    }
    match maps.hostaddrs4.get(&codec::be(a), 0) {
        Ok(_) => Ok(()),
        Err(e) if state::is_missing(&e) => bail!("the host has no address {a}"),
        Err(e) => Err(e).context("reading NP_HOSTADDRS4"),
    }
}

/// What `unpublish` removed.
#[derive(Debug, Default)]
pub struct Unpublished {
    pub ports: u32,
    pub flows: usize,
}

/// Removes published ports and their mappings' conntrack flows.
fn remove(dp: &mut Datapath, keys: &[(PubKey4, PubVal4)]) -> Result<Unpublished> {
    let ports = unmap(&mut dp.maps, keys)?;
    // Their flows go too, so a client that keeps sending reaches whatever
    // is published next (moby#53384: Docker leaves UDP entries behind):
    // one pass over the table per run of consecutive ports.
    let mut flows = 0;
    for run in runs(keys) {
        let filter = conntrack::Filter {
            published: Some(run),
            ..Default::default()
        };
        flows += conntrack::flush(dp, &filter)?;
    }
    Ok(Unpublished { ports, flows })
}

/// Removes the mappings (with their counters); returns how many.
fn unmap(maps: &mut Maps, keys: &[(PubKey4, PubVal4)]) -> Result<u32> {
    for (k, v) in keys {
        maps.publish4
            .remove(k)
            .context("removing a published port")?;
        target_count(maps, k, v, -1)?;
        maps.remove_counters(counter_scope::PUBLISH, v.id)?;
    }
    Ok(keys.len() as u32)
}

/// The mappings as runs of consecutive host ports (same address and
/// protocol).
fn runs(keys: &[(PubKey4, PubVal4)]) -> Vec<conntrack::Published> {
    let rows: Vec<Row> = keys.iter().map(|(k, v)| Row::of4(k, v)).collect();
    runs_of(&rows)
}

/// `unpublish [HOST_IP:]HOST_PORT[-END][/PROTO]`.
pub fn unpublish(h: &PortSpec) -> Result<Unpublished> {
    let _lock = state::lock(false)?;
    let (_, mut dp) = Datapath::open_current()?;
    let addr = match h.addr {
        Some(IpAddr::V6(a)) => return v6::unpublish(&mut dp, a, h),
        Some(IpAddr::V4(a)) => Some(a),
        None => None,
    };
    let proto = h.proto_or_tcp();
    let mut victims = Vec::new();
    for port in h.first..=h.last {
        let k = key(addr, port, proto);
        match dp.maps.publish4.get(&k, 0) {
            Ok(v) => victims.push((k, v)),
            Err(_) => bail!(
                "host port {}{port}/{} is not published",
                addr.map_or(String::new(), |a| format!("{a}:")),
                proto_name(proto)
            ),
        }
    }
    remove(&mut dp, &victims)
}

/// Removes every published port leading into network `net_id`, of both
/// families (its `down`, which flushes the network's flows itself).
/// Returns how many.
pub fn remove_network(maps: &mut Maps, net_id: u32) -> Result<u32> {
    let victims: Vec<(PubKey4, PubVal4)> = maps
        .published()?
        .into_iter()
        .filter(|(_, v)| v.net_id == net_id)
        .collect();
    Ok(unmap(maps, &victims)? + v6::remove_network(maps, net_id)?)
}

/// Every published port with its counters, ordered by host port.
pub fn list() -> Result<Vec<Mapping>> {
    let (_, maps) = Maps::open_current()?;
    let networks = maps.networks()?;
    let bridge_of = |id: u32| {
        networks
            .get(&id)
            .map(|n| codec::ifname_from_bytes(&n.bridge_name))
            .unwrap_or_default()
    };
    let mut out: Vec<Mapping> = Vec::new();
    for (k, v) in maps.published()? {
        out.push(Mapping::of(
            &maps,
            &Row::of4(&k, &v),
            v.id,
            bridge_of(v.net_id),
        )?);
    }
    out.extend(v6::list(&maps, &bridge_of)?);
    out.sort_by_key(|m| {
        (
            m.host_port,
            m.proto.clone(),
            m.container_ip.is_ipv6(),
            m.host_ip,
        )
    });
    Ok(out)
}

/// `ports` as a table.
pub fn render(maps: &[Mapping]) -> String {
    let rows: Vec<Vec<String>> = maps
        .iter()
        .map(|m| {
            vec![
                m.host(),
                SocketAddr::new(m.container_ip, m.container_port).to_string(),
                m.network.clone(),
                format!("{} pkts {} B", m.to_container.packets, m.to_container.bytes),
                format!(
                    "{} pkts {} B",
                    m.from_container.packets, m.from_container.bytes
                ),
            ]
        })
        .collect();
    table::render(
        &[
            "HOST",
            "CONTAINER",
            "NETWORK",
            "TO-CONTAINER",
            "FROM-CONTAINER",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(addr: Option<&str>, first: u16, last: u16, proto: u8, target: &str) -> Ports {
        Ports {
            host_addr: addr.map(|a| a.parse().unwrap()),
            host_first: first,
            host_last: last,
            proto,
            target: target.parse().unwrap(),
            target_first: 80,
        }
    }

    fn entries(p: &Ports, owner: u16) -> Vec<(PubKey4, PubVal4)> {
        p.entries(owner)
    }

    #[test]
    fn conflicts_per_port_and_protocol() {
        let existing = entries(&ports(None, 8080, 8089, 6, "10.0.0.2"), owner::USER);
        let why = conflict(&existing, &ports(None, 8085, 8085, 6, "10.0.0.3")).unwrap();
        assert_eq!(
            why,
            "host port 8085/tcp is already published (to 10.0.0.2:85)"
        );
        // Every address vs one address, both ways.
        assert!(
            conflict(
                &existing,
                &ports(Some("198.18.0.1"), 8080, 8080, 6, "10.0.0.3")
            )
            .is_some()
        );
        let on_addr = entries(
            &ports(Some("198.18.0.1"), 9000, 9000, 6, "10.0.0.2"),
            owner::USER,
        );
        assert!(conflict(&on_addr, &ports(None, 9000, 9000, 6, "10.0.0.3")).is_some());
        assert!(
            conflict(
                &on_addr,
                &ports(Some("198.18.0.1"), 9000, 9000, 6, "10.0.0.3")
            )
            .is_some()
        );
        // Another address, another protocol, another port: free.
        assert!(
            conflict(
                &on_addr,
                &ports(Some("127.0.0.1"), 9000, 9000, 6, "10.0.0.3")
            )
            .is_none()
        );
        assert!(conflict(&existing, &ports(None, 8080, 8089, 17, "10.0.0.3")).is_none());
        assert!(conflict(&existing, &ports(None, 8090, 8099, 6, "10.0.0.3")).is_none());
    }

    #[test]
    fn sync_owned_touches_only_its_owners_mappings() {
        let keep = ports(None, 8080, 8080, 6, "10.0.0.2");
        let moved = ports(None, 8081, 8081, 6, "10.0.0.3");
        let gone = ports(None, 8082, 8082, 17, "10.0.0.4");
        let users = ports(None, 9000, 9000, 6, "10.0.0.9");
        let mut have = entries(&keep, owner::DOCKER);
        have.extend(entries(&moved, owner::DOCKER));
        have.extend(entries(&gone, owner::DOCKER));
        have.extend(entries(&users, owner::USER));
        let moved_now = ports(None, 8081, 8081, 6, "10.0.0.5");
        let new = ports(None, 8083, 8083, 6, "10.0.0.6");
        let (stale, missing) = owned_changes(owner::DOCKER, &have, &[keep, moved_now, new]);
        let stale_ports: Vec<u16> = stale.iter().map(|(k, _)| u16::from_be(k.port_be)).collect();
        assert_eq!(stale_ports, vec![8081, 8082]);
        assert_eq!(missing, vec![moved_now, new]);
        // Nothing wanted: all of its own go, the user's stay.
        let (stale, missing) = owned_changes(owner::DOCKER, &have, &[]);
        assert_eq!(stale.len(), 3);
        assert!(missing.is_empty());
        // Runs of consecutive ports make one flush pass each.
        let r = runs(&entries(
            &ports(None, 7000, 7009, 6, "10.0.0.2"),
            owner::USER,
        ));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].first, r[0].last), (7000, 7009));
    }
}
