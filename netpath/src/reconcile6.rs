//! What the reconcile records for the IPv6 half of dual-stack networks,
//! from the links and addresses it read: each uplink's NAT66 address and
//! each bridge's own link-local addresses. Pure, unit-tested on the host.

use std::collections::BTreeMap;

use netpath_common::{
    Endpoint, IfaceRole,
    v6::{Addr6Key, NetworkInfo6, is_link_local},
};

use crate::{
    plan::Planned,
    plumbing::{Addr6, Link},
};

/// `NP_UPLINKS6`: each uplink's first usable global IPv6 address, the
/// source NAT66 writes (as IPv4 masquerade takes the primary address).
pub fn want_uplinks(planned: &BTreeMap<u32, Planned>, addrs6: &[Addr6]) -> BTreeMap<u32, [u8; 16]> {
    let mut want = BTreeMap::new();
    for a in addrs6.iter().filter(|a| a.usable) {
        if role_of(planned, a.index) == Some(IfaceRole::Uplink) {
            want.entry(a.index).or_insert(a.addr.octets());
        }
    }
    want
}

/// `NP_HOSTADDRS6`: the namespace's usable IPv6 addresses other than
/// link-local ones (what a port published on `[::]` answers to), each with
/// its interface.
pub fn want_host_addrs(addrs6: &[Addr6]) -> BTreeMap<[u8; 16], u32> {
    addrs6
        .iter()
        .filter(|a| a.usable && !is_link_local(&a.addr.octets()))
        .map(|a| (a.addr.octets(), a.index))
        .collect()
}

/// The link-local addresses of the bridges of dual-stack networks
/// (`v6_nets`), recorded in `NP_ENDPOINTS6` as the bridge's: no port may
/// take them, whatever way the kernel made them (EUI-64 of the MAC,
/// stable-privacy, random).
pub fn want_bridge_addrs(
    planned: &BTreeMap<u32, Planned>,
    links: &[Link],
    addrs6: &[Addr6],
    v6_nets: &BTreeMap<u32, NetworkInfo6>,
) -> BTreeMap<Addr6Key, Endpoint> {
    let mut want = BTreeMap::new();
    for a in addrs6.iter().filter(|a| is_link_local(&a.addr.octets())) {
        let Some(p) = planned.get(&a.index) else {
            continue;
        };
        let net_id = p.info.net_id;
        if role_of(planned, a.index) != Some(IfaceRole::Bridge) || !v6_nets.contains_key(&net_id) {
            continue;
        }
        let mac = links
            .iter()
            .find(|l| l.index == a.index)
            .and_then(|l| l.mac)
            .unwrap_or_default();
        let ep = Endpoint {
            ifindex: a.index,
            net_id,
            mac,
            _pad: [0; 2],
        };
        want.insert(Addr6Key::of(&a.addr.octets(), net_id), ep);
    }
    want
}

fn role_of(planned: &BTreeMap<u32, Planned>, ifindex: u32) -> Option<IfaceRole> {
    planned
        .get(&ifindex)
        .and_then(|p| IfaceRole::from_u32(p.info.role))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn bridges_of_dual_stack_networks_keep_their_link_local_addresses() {
        let planned = |role: IfaceRole, net_id| Planned {
            name: String::new(),
            info: netpath_common::IfaceInfo {
                role: role as u32,
                net_id,
                ..Default::default()
            },
        };
        // Bridges 10 (network 1, dual stack) and 20 (network 2, IPv4
        // only), port 11, uplink 30.
        let plan = BTreeMap::from([
            (10, planned(IfaceRole::Bridge, 1)),
            (11, planned(IfaceRole::Port, 1)),
            (20, planned(IfaceRole::Bridge, 2)),
            (30, planned(IfaceRole::Uplink, 0)),
        ]);
        let links: Vec<Link> = [10, 11, 20, 30]
            .map(|index| Link {
                index,
                name: format!("if{index}"),
                kind: None,
                master: None,
                flags: rtnetlink::packet_route::link::LinkFlags::empty(),
                mac: Some([2, 0, 0, 0, 0, index as u8]),
                peer: None,
                vlan_id: None,
            })
            .to_vec();
        let addr = |index, a: &str| Addr6 {
            index,
            addr: a.parse().unwrap(),
            prefix_len: 64,
            usable: !a.starts_with("fe80"),
        };
        let addrs = [
            addr(10, "fe80::1234:5678:9abc:def0"),
            addr(10, "fe80::2"),
            addr(10, "fd00:18::1"),
            addr(11, "fe80::11"),
            addr(20, "fe80::20"),
            addr(30, "fe80::30"),
            addr(30, "2001:470::1"),
        ];
        let v6_nets = BTreeMap::from([(1, NetworkInfo6::default())]);
        let want = want_bridge_addrs(&plan, &links, &addrs, &v6_nets);
        let got: Vec<(Ipv6Addr, u32, u32, [u8; 6])> = want
            .iter()
            .map(|(k, e)| (Ipv6Addr::from(k.addr), k.scope, e.ifindex, e.mac))
            .collect();
        let mac = [2, 0, 0, 0, 0, 10];
        assert_eq!(
            got,
            [
                ("fe80::2".parse().unwrap(), 1, 10, mac),
                ("fe80::1234:5678:9abc:def0".parse().unwrap(), 1, 10, mac),
            ]
        );
        // Every usable address but link-local ones is the host's.
        let host: Vec<Ipv6Addr> = want_host_addrs(&addrs)
            .keys()
            .map(|a| Ipv6Addr::from(*a))
            .collect();
        assert_eq!(
            host,
            [
                "2001:470::1".parse::<Ipv6Addr>().unwrap(),
                "fd00:18::1".parse().unwrap()
            ]
        );
        // The uplink's usable global address is NAT66's.
        let up = want_uplinks(&plan, &addrs);
        assert_eq!(
            up,
            BTreeMap::from([(30, "2001:470::1".parse::<Ipv6Addr>().unwrap().octets())])
        );
    }
}
