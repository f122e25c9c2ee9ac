//! What the reconcile's tables and roles should hold, decided by pure
//! functions over plain maps (unit-tested on the host): the uplink choice
//! in force, the host addresses, the container endpoints, the VLANs, the
//! MACs no port may borrow, and what a port is bound to; and which
//! interfaces a reconcile asks whether they run this build's programs.

use std::collections::{BTreeMap, BTreeSet};

use netpath_common::{Endpoint, IfaceInfo, IfaceRole, MacKey, VlanKey, iface_flags};

use crate::{
    codec,
    plan::{Planned, Uplinks},
    plumbing,
};

/// The uplink choice in force: explicit uplinks recorded earlier stay until
/// another `--uplink` replaces them.
pub fn uplink_choice(
    requested: &[String],
    current: &BTreeMap<u32, IfaceInfo>,
    names: &BTreeMap<u32, String>,
) -> Uplinks {
    if !requested.is_empty() {
        return Uplinks::Explicit(requested.to_vec());
    }
    let explicit: Vec<String> = current
        .iter()
        .filter(|(_, i)| i.flags & iface_flags::EXPLICIT_UPLINK != 0)
        .filter_map(|(idx, _)| names.get(idx).cloned())
        .collect();
    if explicit.is_empty() {
        Uplinks::Auto
    } else {
        Uplinks::Explicit(explicit)
    }
}

/// `NP_HOSTADDRS4`: the namespace's IPv4 addresses (what a published port
/// on "every host address" answers to), each with its interface.
pub fn want_host_addrs(addrs: &[plumbing::Addr4]) -> BTreeMap<u32, u32> {
    addrs.iter().map(|a| (codec::be(a.addr), a.index)).collect()
}

/// `NP_ENDPOINTS4` (container address -> port, for the fast path) against
/// the ports' bindings: the datapath adds entries as ports learn, so this
/// is not a plain sync. Returns the addresses to remove (ports gone or
/// moved) and the entries to add (`connect`'s and learned ones missing).
pub fn endpoint_changes(
    have: &[(u32, Endpoint)],
    ifaces: &BTreeMap<u32, IfaceInfo>,
    planned: &BTreeMap<u32, Planned>,
) -> (Vec<u32>, Vec<(u32, Endpoint)>) {
    let bound = |i: &IfaceInfo| {
        i.role == IfaceRole::Port as u32
            && i.ipv4_be != 0
            && i.flags & (iface_flags::BOUND | iface_flags::LEARNED) != 0
    };
    let stale = have
        .iter()
        .filter(|(addr, ep)| {
            let keep = planned.contains_key(&ep.ifindex)
                && ifaces
                    .get(&ep.ifindex)
                    .is_some_and(|i| i.ipv4_be == 0 || i.ipv4_be == *addr);
            !keep
        })
        .map(|(addr, _)| *addr)
        .collect();
    let missing = ifaces
        .iter()
        .filter(|(i, info)| planned.contains_key(i) && bound(info))
        .map(|(ifindex, info)| {
            (
                info.ipv4_be,
                Endpoint {
                    ifindex: *ifindex,
                    net_id: info.net_id,
                    mac: info.mac,
                    _pad: [0; 2],
                },
            )
        })
        .filter(|e| !have.contains(e))
        .collect();
    (stale, missing)
}

/// `NP_VLANS`: the VLAN devices on uplinks. Tagged frames of those VLANs
/// are the host's; an uplink drops every other tag.
pub fn want_vlans(
    links: &[plumbing::Link],
    planned: &BTreeMap<u32, Planned>,
) -> BTreeMap<VlanKey, u32> {
    let uplink = |i: u32| {
        planned
            .get(&i)
            .is_some_and(|p| p.info.role == IfaceRole::Uplink as u32)
    };
    links
        .iter()
        .filter_map(|l| {
            let (lower, vid) = (l.peer?, l.vlan_id?);
            uplink(lower).then_some((
                VlanKey {
                    ifindex: lower,
                    vid,
                    _pad: 0,
                },
                1,
            ))
        })
        .collect()
}

/// `NP_MACS`: the MACs no port may borrow (bound, learned or pinned
/// ports' and managed bridges'), each with its owner.
pub fn want_macs(
    links: &[plumbing::Link],
    ifaces: &BTreeMap<u32, IfaceInfo>,
    planned: &BTreeMap<u32, Planned>,
) -> BTreeMap<MacKey, u32> {
    let key = |mac: [u8; 6]| MacKey { mac, _pad: [0; 2] };
    let mut want = BTreeMap::new();
    for (ifindex, info) in ifaces {
        let fixed = info.flags & iface_flags::MAC_FIXED != 0;
        if info.role == IfaceRole::Port as u32 && fixed && planned.contains_key(ifindex) {
            want.insert(key(info.mac), *ifindex);
        }
    }
    for l in links {
        let bridge = planned
            .get(&l.index)
            .is_some_and(|p| p.info.role == IfaceRole::Bridge as u32);
        if let (true, Some(mac)) = (bridge, l.mac) {
            want.insert(key(mac), l.index);
        }
    }
    want
}

/// A port keeps what it is bound to: the lease `connect` made, or what the
/// datapath learnt while it stays a port of the same network. A lease of
/// an IPv6 address alone (address 0: an IPv6-only network) fixes the MAC
/// as IPv6 pins it, so an IPv4 address may still be learnt with it.
pub fn port_binding(
    mut info: IfaceInfo,
    current: Option<&IfaceInfo>,
    lease: Option<&(u32, [u8; 6])>,
) -> IfaceInfo {
    if info.role != IfaceRole::Port as u32 {
        return info;
    }
    let same_net = current.filter(|c| c.role == info.role && c.net_id == info.net_id);
    if let Some(&(addr, mac)) = lease {
        info.mac = mac;
        if addr != 0 {
            info.ipv4_be = addr;
            info.flags |= iface_flags::BOUND;
            return info;
        }
        info.flags |= iface_flags::MAC_PINNED;
        if let Some(cur) = same_net.filter(|c| c.flags & iface_flags::LEARNED != 0 && c.mac == mac)
        {
            info.ipv4_be = cur.ipv4_be;
            info.flags |= iface_flags::LEARNED;
        }
    } else if let Some(cur) = same_net
        && cur.flags & (iface_flags::LEARNED | iface_flags::MAC_PINNED) != 0
    {
        // An address (IPv4) and MAC learnt, or only the MAC (IPv6 first).
        info.ipv4_be = cur.ipv4_be;
        info.mac = cur.mac;
        info.flags |= cur.flags & (iface_flags::LEARNED | iface_flags::MAC_PINNED);
    }
    info
}

/// Which interfaces a reconcile asks the kernel whether they run this
/// build's programs (a filter dump per interface and direction: with a
/// hundred networks, most of a `netpath up` was asking about the bridges
/// and ports of networks it did not touch).
#[derive(Clone, Debug)]
pub enum Verify {
    /// Every interface it manages: a daemon's first and forced re-applies
    /// (a filter, a qdisc or a link went away; events were lost), the
    /// commands that change ports and teardown.
    All,
    /// Only what can have changed since the last finished reconcile: an
    /// interface whose record is new or different, the uplinks, the
    /// bridges and ports of networks `nets` (the ones an `up` brings up, so
    /// repeating `up` repairs that network) and interfaces `ifaces` (where
    /// the daemon saw a filter put in netpath's place that does not run
    /// one of its programs). The others keep what that reconcile put
    /// there: the daemon of this build watches them, re-applying with
    /// [`Verify::All`] when a filter, qdisc or link goes away and asking
    /// about an interface whose filter is replaced. Taken as `All` unless
    /// a finished reconcile of this build vouches for the namespace and a
    /// daemon of this build runs (not with `--no-daemon`), and when the
    /// programs were just loaded.
    Changed {
        nets: BTreeSet<u32>,
        ifaces: BTreeSet<u32>,
    },
}

impl Verify {
    /// Whether every interface is asked, `vouched` saying whether a
    /// finished reconcile of this build left the namespace as recorded.
    pub const fn asks_all(&self, vouched: bool) -> bool {
        matches!(self, Self::All) || !vouched
    }

    /// Whether interface `ifindex` of `role` in network `net_id` is asked
    /// about, `recorded` saying whether its record was already what it is
    /// now.
    pub fn asks(
        &self,
        vouched: bool,
        recorded: bool,
        ifindex: u32,
        role: IfaceRole,
        net_id: u32,
    ) -> bool {
        match self {
            Self::Changed { nets, ifaces } if vouched => {
                !recorded
                    || role == IfaceRole::Uplink
                    || nets.contains(&net_id)
                    || ifaces.contains(&ifindex)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables;

    #[test]
    fn a_scoped_reconcile_asks_what_changed_the_uplinks_and_its_networks() {
        let v = Verify::Changed {
            nets: BTreeSet::from([7]),
            ifaces: BTreeSet::from([40]),
        };
        // Vouched for: an unchanged port or bridge of another network is
        // not asked; a changed record, an uplink, the named network and
        // the named interface are.
        assert!(!v.asks(true, true, 30, IfaceRole::Port, 3));
        assert!(!v.asks(true, true, 31, IfaceRole::Bridge, 3));
        assert!(v.asks(true, false, 30, IfaceRole::Port, 3));
        assert!(v.asks(true, true, 2, IfaceRole::Uplink, 0));
        assert!(v.asks(true, true, 30, IfaceRole::Port, 7));
        assert!(v.asks(true, true, 31, IfaceRole::Bridge, 7));
        assert!(v.asks(true, true, 40, IfaceRole::Port, 3));
        assert!(!v.asks_all(true));
        // Nothing vouched for (a reconcile that did not finish, another
        // build's, no daemon of this build watching, programs just
        // loaded): everything.
        assert!(v.asks(false, true, 30, IfaceRole::Port, 3));
        assert!(v.asks_all(false));
        // All asks everything, vouched or not.
        assert!(Verify::All.asks(true, true, 30, IfaceRole::Port, 3));
        assert!(Verify::All.asks_all(true));
    }

    fn info(role: IfaceRole, net_id: u32, addr: [u8; 4], mac: u8, flags: u32) -> IfaceInfo {
        IfaceInfo {
            role: role as u32,
            net_id,
            flags,
            ipv4_be: u32::from_ne_bytes(addr),
            mac: [2, 0x42, 0, 0, 0, mac],
            _pad: [0; 2],
        }
    }

    fn planned(ifaces: &BTreeMap<u32, IfaceInfo>) -> BTreeMap<u32, Planned> {
        ifaces
            .iter()
            .map(|(i, info)| {
                (
                    *i,
                    Planned {
                        name: format!("if{i}"),
                        info: *info,
                    },
                )
            })
            .collect()
    }

    fn link(
        index: u32,
        peer: Option<u32>,
        vlan_id: Option<u16>,
        mac: Option<u8>,
    ) -> plumbing::Link {
        plumbing::Link {
            index,
            name: format!("if{index}"),
            kind: None,
            master: None,
            flags: rtnetlink::packet_route::link::LinkFlags::empty(),
            mac: mac.map(|m| [2, 0, 0, 0, 0, m]),
            peer,
            vlan_id,
        }
    }

    #[test]
    fn a_port_keeps_its_lease_or_what_it_learnt_in_the_same_network() {
        let fresh = info(IfaceRole::Port, 1, [0; 4], 0, 0);
        let learnt = info(IfaceRole::Port, 1, [10, 0, 0, 2], 2, iface_flags::LEARNED);
        let kept = port_binding(fresh, Some(&learnt), None);
        assert_eq!((kept.ipv4_be, kept.mac), (learnt.ipv4_be, learnt.mac));
        assert_ne!(kept.flags & iface_flags::LEARNED, 0);
        // A MAC pinned by IPv6 alone is kept, with no IPv4 address.
        let pinned = info(IfaceRole::Port, 1, [0; 4], 3, iface_flags::MAC_PINNED);
        let kept = port_binding(fresh, Some(&pinned), None);
        assert_eq!((kept.ipv4_be, kept.mac), (0, pinned.mac));
        assert_eq!(kept.flags & iface_flags::MAC_FIXED, iface_flags::MAC_PINNED);
        // Moved to another network: it learns again.
        let moved = info(IfaceRole::Port, 2, [0; 4], 0, 0);
        assert_eq!(port_binding(moved, Some(&learnt), None), moved);
        // A lease wins over what was learnt.
        let leased = port_binding(fresh, Some(&learnt), Some(&(7, [9; 6])));
        assert_eq!((leased.ipv4_be, leased.mac), (7, [9; 6]));
        assert_ne!(leased.flags & iface_flags::BOUND, 0);
        // An IPv6 lease alone pins its MAC and keeps an IPv4 address learnt
        // with that MAC (never one learnt with another).
        let six = port_binding(fresh, None, Some(&(0, [2; 6])));
        assert_eq!((six.ipv4_be, six.mac), (0, [2; 6]));
        assert_eq!(six.flags & iface_flags::MAC_FIXED, iface_flags::MAC_PINNED);
        let six = port_binding(fresh, Some(&learnt), Some(&(0, learnt.mac)));
        assert_eq!(six.ipv4_be, learnt.ipv4_be);
        assert_eq!(
            six.flags & iface_flags::MAC_FIXED,
            iface_flags::MAC_PINNED | iface_flags::LEARNED
        );
        let other = port_binding(fresh, Some(&learnt), Some(&(0, [9; 6])));
        assert_eq!((other.ipv4_be, other.mac), (0, [9; 6]));
        // Other roles are not bound.
        let up = info(IfaceRole::Uplink, 0, [198, 18, 0, 1], 0, 0);
        assert_eq!(port_binding(up, None, Some(&(7, [9; 6]))), up);
    }

    #[test]
    fn endpoints_follow_bound_ports_and_keep_learnt_ones() {
        let a = |o: u8| u32::from_ne_bytes([10, 0, 0, o]);
        let ifaces = BTreeMap::from([
            (
                5,
                info(IfaceRole::Port, 1, [10, 0, 0, 2], 2, iface_flags::BOUND),
            ),
            (6, info(IfaceRole::Port, 1, [0; 4], 0, 0)),
            (
                7,
                info(IfaceRole::Port, 1, [10, 0, 0, 4], 4, iface_flags::LEARNED),
            ),
        ]);
        let plan = planned(&ifaces);
        let ep = |ifindex, mac| Endpoint {
            ifindex,
            net_id: 1,
            mac: [2, 0x42, 0, 0, 0, mac],
            _pad: [0; 2],
        };
        let have = vec![
            (a(3), ep(6, 3)),  // learnt by the datapath on an unbound port: kept
            (a(9), ep(5, 9)),  // port 5 is bound to another address: stale
            (a(8), ep(42, 8)), // port gone: stale
            (a(4), ep(7, 4)),  // already right
        ];
        let (stale, missing) = endpoint_changes(&have, &ifaces, &plan);
        assert_eq!(stale, vec![a(9), a(8)]);
        assert_eq!(missing, vec![(a(2), ep(5, 2))]);
    }

    #[test]
    fn vlans_of_uplinks_and_macs_of_bound_ports_and_bridges() {
        let ifaces = BTreeMap::from([
            (2, info(IfaceRole::Uplink, 0, [198, 18, 0, 1], 0, 0)),
            (3, info(IfaceRole::Bridge, 1, [10, 0, 0, 1], 0, 0)),
            (
                4,
                info(IfaceRole::Port, 1, [10, 0, 0, 2], 2, iface_flags::BOUND),
            ),
            (5, info(IfaceRole::Port, 1, [0; 4], 0, 0)),
        ]);
        let plan = planned(&ifaces);
        let links = vec![
            link(2, None, None, Some(2)),
            link(3, None, None, Some(3)),
            link(10, Some(2), Some(100), None), // VLAN 100 on the uplink
            link(11, Some(3), Some(200), None), // on a bridge: not the host's
        ];
        let vlans = want_vlans(&links, &plan);
        assert_eq!(
            vlans.keys().map(|k| (k.ifindex, k.vid)).collect::<Vec<_>>(),
            vec![(2, 100)]
        );
        let macs = want_macs(&links, &ifaces, &plan);
        let owners: Vec<u32> = macs.values().copied().collect();
        assert_eq!(macs.len(), 2, "{macs:?}");
        assert!(owners.contains(&4) && owners.contains(&3));
        // Synced into a fake table: the uplink's old entry goes.
        let mut table: BTreeMap<MacKey, u32> = BTreeMap::from([(
            MacKey {
                mac: [2, 0, 0, 0, 0, 2],
                _pad: [0; 2],
            },
            2,
        )]);
        let s = tables::sync(&mut table, &macs).unwrap();
        assert_eq!((s.removed, s.written), (1, 2));
        assert_eq!(table, macs);
    }

    #[test]
    fn explicit_uplinks_stay_until_replaced() {
        let mut current = BTreeMap::new();
        let names = BTreeMap::from([(2, "eth0".to_owned()), (3, "eth1".to_owned())]);
        assert_eq!(uplink_choice(&[], &current, &names), Uplinks::Auto);
        let mut up = info(
            IfaceRole::Uplink,
            0,
            [1, 2, 3, 4],
            0,
            iface_flags::EXPLICIT_UPLINK,
        );
        current.insert(3, up);
        assert_eq!(
            uplink_choice(&[], &current, &names),
            Uplinks::Explicit(vec!["eth1".into()])
        );
        assert_eq!(
            uplink_choice(&["eth0".into()], &current, &names),
            Uplinks::Explicit(vec!["eth0".into()])
        );
        up.flags = 0;
        current.insert(3, up);
        assert_eq!(uplink_choice(&[], &current, &names), Uplinks::Auto);
    }
}
