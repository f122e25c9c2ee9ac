//! IPv6 published ports: `publish '[::]:8080' '[fd00:18::2]:80'` (every
//! host IPv6 address) or `publish '[2001:db8::1]:8080' …` (one), kept in
//! `NP_PUBLISH6` and `NP_TARGETS6` as IPv4's are in `NP_PUBLISH4` and
//! `NP_TARGETS4`. Both families' mappings share the counter ids.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use anyhow::{Context as _, Result, bail};
use netpath_common::{
    counter_scope,
    v6::{NetworkInfo6, PortKey6, PubVal6},
};

use super::{Mapping, Row, Synced, Unpublished, conflict_rows, owned_changes_of, runs_of};
use crate::{
    attach::Datapath,
    conntrack,
    ctconfig::proto_name,
    spec,
    state::{self, Maps},
};

/// An IPv6 mapping: host ports `host_first..=host_last` (on `host_addr`,
/// `None` for every host IPv6 address) leading to `target` from
/// `target_first` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ports6 {
    pub host_addr: Option<Ipv6Addr>,
    pub host_first: u16,
    pub host_last: u16,
    pub proto: u8,
    pub target: Ipv6Addr,
    pub target_first: u16,
}

impl Ports6 {
    /// The one port of an `NP_PUBLISH6` entry.
    pub fn of(k: &PortKey6, v: &PubVal6) -> Self {
        let r = row(k, v);
        let port = r.port;
        Self {
            host_addr: match r.host_addr {
                Some(IpAddr::V6(a)) => Some(a),
                _ => None,
            },
            host_first: port,
            host_last: port,
            proto: r.proto,
            target: Ipv6Addr::from(v.target),
            target_first: r.target_port,
        }
    }

    /// Its host ports as rows (what an owner's sync compares).
    pub fn rows(&self) -> Vec<Row> {
        Row::of_mapping(
            self.host_addr.map(IpAddr::V6),
            (self.host_first, self.host_last),
            self.proto,
            IpAddr::V6(self.target),
            self.target_first,
        )
    }
}

impl std::fmt::Display for Ports6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.host_addr.unwrap_or(Ipv6Addr::UNSPECIFIED);
        write!(f, "[{host}]:{}", self.host_first)?;
        if self.host_last != self.host_first {
            write!(f, "-{}", self.host_last)?;
        }
        write!(
            f,
            "/{} -> [{}]:{}",
            proto_name(self.proto),
            self.target,
            self.target_first
        )
    }
}

fn key(addr: Option<Ipv6Addr>, port: u16, proto: u8) -> PortKey6 {
    PortKey6 {
        addr: addr.map_or([0; 16], |a| a.octets()),
        port_be: port.to_be(),
        proto,
        _pad: 0,
    }
}

/// The row of an `NP_PUBLISH6` entry.
pub fn row(k: &PortKey6, v: &PubVal6) -> Row {
    let addr = Ipv6Addr::from(k.addr);
    Row {
        host_addr: (!addr.is_unspecified()).then_some(IpAddr::V6(addr)),
        port: u16::from_be(k.port_be),
        proto: k.proto,
        target: IpAddr::V6(Ipv6Addr::from(v.target)),
        target_port: u16::from_be(v.target_port_be),
    }
}

/// Every published IPv6 port.
pub fn published(maps: &Maps) -> Result<Vec<(PortKey6, PubVal6)>> {
    maps.v6
        .publish
        .iter()
        .map(|r| r.context("reading NP_PUBLISH6"))
        .collect()
}

/// Checks a mapping against the networks and what is published, then
/// inserts it, or nothing of it. Returns how many ports it took.
pub fn insert(maps: &mut Maps, p: &Ports6, owner: u16) -> Result<u32> {
    spec::check_sctp_ports(p.proto, p.host_first, p.target_first)?;
    let target = p.target;
    let octets = target.octets();
    let nets = maps.v6.all()?;
    let (net_id, info) = nets
        .iter()
        .find(|(_, i)| i.contains(&octets))
        .with_context(|| {
            format!("container address {target} is outside every managed IPv6 subnet")
        })?;
    // One network's record, not the whole map.
    match maps.networks.get(net_id, 0) {
        Ok(net) => {
            let bridge = crate::codec::ifname_from_bytes(&net.bridge_name);
            super::refuse_internal(owner, net.flags, &target.to_string(), &bridge)?;
        }
        Err(e) if state::is_missing(&e) => {}
        Err(e) => return Err(e).context("reading NP_NETWORKS"),
    }
    if info.gateway == octets {
        bail!("{target} is the IPv6 gateway of its network, not a container");
    }
    if info.subnet == octets {
        bail!("{target} is its subnet's router anycast address, not a container");
    }
    if let Some(a) = p.host_addr {
        check_host_addr(maps, &nets, a)?;
    }
    let mine = published(maps)?;
    let existing: Vec<Row> = mine.iter().map(|(k, v)| row(k, v)).collect();
    let host = p.host_addr.map(IpAddr::V6);
    if let Some(why) = conflict_rows(&existing, host, p.host_first, p.host_last, p.proto) {
        bail!("{why}");
    }
    // Counter ids are shared by both families' mappings.
    let v4_max = maps
        .published()?
        .iter()
        .map(|(_, v)| v.id)
        .max()
        .unwrap_or(0);
    let first_id = v4_max.max(max_id(&mine)) + 1;
    let mut inserted: Vec<(PortKey6, PubVal6)> = Vec::new();
    for (i, port) in (p.host_first..=p.host_last).enumerate() {
        let k = key(p.host_addr, port, p.proto);
        let v = PubVal6 {
            target: octets,
            target_port_be: (p.target_first + i as u16).to_be(),
            owner,
            net_id: *net_id,
            id: first_id + i as u32,
        };
        let added = maps
            .v6
            .publish
            .insert(k, v, 0)
            .context("recording the published port")
            .and_then(|()| target_count(maps, &k, &v, 1));
        if let Err(e) = added {
            // No half-applied state: take back what this command added.
            for (k, v) in &inserted {
                let _ = maps.v6.publish.remove(k);
                let _ = target_count(maps, k, v, -1);
            }
            let _ = maps.v6.publish.remove(&k);
            return Err(e);
        }
        inserted.push((k, v));
    }
    Ok(u32::from(p.host_last - p.host_first) + 1)
}

/// Counts a mapping in (`delta` 1) or out (-1) of `NP_TARGETS6` (what a
/// routed network lets in at the container's own address). A mapping on
/// `::1` is for the host's own processes, and opens nothing to the outside.
fn target_count(maps: &mut Maps, k: &PortKey6, v: &PubVal6, delta: i32) -> Result<()> {
    if Ipv6Addr::from(k.addr).is_loopback() {
        return Ok(());
    }
    let key = PortKey6 {
        addr: v.target,
        port_be: v.target_port_be,
        proto: k.proto,
        _pad: 0,
    };
    let n: u32 = match maps.v6.targets.get(&key, 0) {
        Ok(n) => n,
        Err(e) if state::is_missing(&e) => 0,
        Err(e) => return Err(e).context("reading NP_TARGETS6"),
    };
    let n = n.saturating_add_signed(delta);
    let res = if n == 0 {
        match maps.v6.targets.remove(&key) {
            Err(e) if state::is_missing(&e) => Ok(()),
            r => r,
        }
    } else {
        maps.v6.targets.insert(key, n, 0)
    };
    res.context("updating NP_TARGETS6")
}

/// A host IPv6 address to publish on: one of the host's own global ones
/// (or `::1`, for host processes only), not a container's.
fn check_host_addr(maps: &Maps, nets: &BTreeMap<u32, NetworkInfo6>, a: Ipv6Addr) -> Result<()> {
    if a.is_multicast() {
        bail!("{a} is not a unicast address: publish on an address of the host");
    }
    if a.is_loopback() {
        return Ok(());
    }
    if a.is_unicast_link_local() {
        bail!("{a} is link-local: publish on a global address of the host, or on [::]");
    }
    let octets = a.octets();
    if let Some((_, n)) = nets.iter().find(|(_, n)| n.contains(&octets))
        && n.gateway != octets
    {
        bail!(
            "{a} is in the IPv6 subnet {}/{} of a managed network, not an address of the host",
            Ipv6Addr::from(n.subnet),
            n.prefix_len
        );
    }
    match maps.v6.hostaddrs.get(&octets, 0) {
        Ok(_) => Ok(()),
        Err(e) if state::is_missing(&e) => bail!("the host has no address {a}"),
        Err(e) => Err(e).context("reading NP_HOSTADDRS6"),
    }
}

/// Removes the mappings (with their counters); returns how many.
fn unmap(maps: &mut Maps, keys: &[(PortKey6, PubVal6)]) -> Result<u32> {
    for (k, v) in keys {
        maps.v6
            .publish
            .remove(k)
            .context("removing a published port")?;
        target_count(maps, k, v, -1)?;
        maps.remove_counters(counter_scope::PUBLISH, v.id)?;
    }
    Ok(keys.len() as u32)
}

/// `unpublish '[ADDR]:PORT[-END][/PROTO]'` for an IPv6 mapping (`[::]`:
/// the one on every host IPv6 address), with its flows.
pub fn unpublish(dp: &mut Datapath, addr: Ipv6Addr, h: &spec::PortSpec) -> Result<Unpublished> {
    let host = (!addr.is_unspecified()).then_some(addr);
    let proto = h.proto_or_tcp();
    let mut victims = Vec::new();
    for port in h.first..=h.last {
        let k = key(host, port, proto);
        match dp.maps.v6.publish.get(&k, 0) {
            Ok(v) => victims.push((k, v)),
            Err(_) => bail!(
                "host port [{addr}]:{port}/{} is not published",
                proto_name(proto)
            ),
        }
    }
    remove(dp, &victims)
}

/// Removes the mappings with their flows (see `publish::remove`): one
/// pass over the table per run of ports.
fn remove(dp: &mut Datapath, victims: &[(PortKey6, PubVal6)]) -> Result<Unpublished> {
    let ports = unmap(&mut dp.maps, victims)?;
    let mut flows = 0;
    let rows: Vec<Row> = victims.iter().map(|(k, v)| row(k, v)).collect();
    for run in runs_of(&rows) {
        let filter = conntrack::Filter {
            published: Some(run),
            ..Default::default()
        };
        flows += conntrack::flush(dp, &filter)?;
    }
    Ok(Unpublished { ports, flows })
}

/// Makes the single-port IPv6 mappings `owner` made equal to `want`, as
/// `publish::sync_owned` does for IPv4: the unwanted go with their flows,
/// then each missing one is published on its own. The caller holds the
/// lock (`publish::sync_owned_both`).
pub(super) fn sync_owned_in(
    dp: &mut Datapath,
    owner: u16,
    want: &[Ports6],
) -> Result<Synced<Ports6>> {
    let mine: Vec<(PortKey6, PubVal6)> = published(&dp.maps)?
        .into_iter()
        .filter(|(_, v)| v.owner == owner)
        .collect();
    let rows: Vec<Row> = mine.iter().map(|(k, v)| row(k, v)).collect();
    let wanted: Vec<Vec<Row>> = want.iter().map(Ports6::rows).collect();
    let (stale, missing) = owned_changes_of(&rows, &wanted);
    let stale: Vec<(PortKey6, PubVal6)> = stale.into_iter().map(|i| mine[i]).collect();
    let mut out = Synced {
        removed: remove(dp, &stale)?,
        ..Default::default()
    };
    for p in missing.into_iter().map(|i| want[i]) {
        match insert(&mut dp.maps, &p, owner) {
            Ok(_) => out.added.push(p),
            Err(e) => out.failed.push((p, format!("{e:#}"))),
        }
    }
    Ok(out)
}

/// Removes every IPv6 mapping leading into network `net_id`.
pub fn remove_network(maps: &mut Maps, net_id: u32) -> Result<u32> {
    let victims: Vec<(PortKey6, PubVal6)> = published(maps)?
        .into_iter()
        .filter(|(_, v)| v.net_id == net_id)
        .collect();
    unmap(maps, &victims)
}

/// The IPv6 mappings for `ports`.
pub fn list(maps: &Maps, bridge_of: &dyn Fn(u32) -> String) -> Result<Vec<Mapping>> {
    let mut out = Vec::new();
    for (k, v) in published(maps)? {
        out.push(Mapping::of(maps, &row(&k, &v), v.id, bridge_of(v.net_id))?);
    }
    Ok(out)
}

/// The largest counter id of IPv6 mappings `m` (0 for none).
pub fn max_id(m: &[(PortKey6, PubVal6)]) -> u32 {
    m.iter().map(|(_, v)| v.id).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_rows_round_trip() {
        let k = key(None, 8080, 6);
        assert_eq!(k.addr, [0; 16]);
        let v = PubVal6 {
            target: "fd00:18::2".parse::<Ipv6Addr>().unwrap().octets(),
            target_port_be: 80u16.to_be(),
            ..PubVal6::default()
        };
        let r = row(&k, &v);
        assert_eq!(r.host_addr, None);
        assert_eq!((r.port, r.target_port), (8080, 80));
        let one = key(Some("2001:db8::1".parse().unwrap()), 9000, 17);
        assert_eq!(
            row(&one, &v).host_addr,
            Some("2001:db8::1".parse().unwrap())
        );
    }
}
