//! The reconcile engine `up`, `down`, `connect`, a resize and the daemon
//! share: every managed bridge, its ports and the uplinks run this build's
//! programs; the tables derived from links and addresses (host addresses,
//! endpoints, VLANs, MACs no port may borrow) hold what the links say; what
//! netpath attached earlier and no longer manages is detached.
//!
//! What each table should hold is decided by pure functions over plain
//! maps (`want_*`, [`endpoint_changes`], [`port_binding`]), unit-tested on
//! the host; [`crate::tables::sync`] writes the difference.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use netpath_common::{Endpoint, IfaceInfo, IfaceRole, MacKey, VlanKey, counter_scope, iface_flags};

use crate::{
    attach::{Attach, Datapath},
    codec, netns, plan,
    plan::{Planned, Uplinks},
    plumbing::{self, Netlink},
    spec::NetworkSpec,
    state::{Dir, Maps, StateDir},
    sys,
    tables::{self, Table},
    tcfilter, trusted,
};

/// How one interface ended up after a reconcile.
#[derive(Debug, Clone)]
pub struct IfaceChange {
    pub name: String,
    pub role: IfaceRole,
    /// Its role before, when it was managed already.
    pub previous: Option<IfaceRole>,
    pub ingress: Attach,
    pub egress: Attach,
}

impl IfaceChange {
    /// Whether anything about this interface changed.
    pub fn changed(&self) -> bool {
        self.previous != Some(self.role)
            || !matches!(self.ingress, Attach::Unchanged | Attach::NotUsed)
            || !matches!(self.egress, Attach::Unchanged | Attach::NotUsed)
    }
}

/// What a reconcile changed: the interfaces it manages, and the ifindexes
/// it stopped managing.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub changes: Vec<IfaceChange>,
    pub detached: Vec<u32>,
}

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

/// The recorded networks as specs, by network id.
pub fn network_specs(maps: &Maps) -> Result<BTreeMap<u32, NetworkSpec>> {
    Ok(maps
        .networks()?
        .iter()
        .map(|(id, info)| (*id, NetworkSpec::from_info(info)))
        .collect())
}

/// Brings attachments in line with the recorded networks. Returns what
/// changed.
pub async fn reconcile(
    nl: &Netlink,
    state: &StateDir,
    dp: &mut Datapath,
    uplinks: &Uplinks,
) -> Result<Reconciled> {
    // Said before the dumps, so a change during this reconcile always
    // differs from what it records at the end.
    forget_seen();
    let all = nl.links().await?;
    let (addrs, addrs6) = nl.addrs().await?;
    let links = plumbing::facts(&all, &addrs);
    // A bridge recreated under the same name gets a new ifindex: follow the name.
    let mut nets = BTreeMap::new();
    for (id, mut info) in dp.maps.networks()? {
        let name = codec::ifname_from_bytes(&info.bridge_name);
        if let Some(l) = links.iter().find(|l| l.name == name) {
            if l.index != info.bridge_ifindex {
                info.bridge_ifindex = l.index;
                dp.maps.networks.insert(id, info, 0)?;
            }
            nets.insert(l.index, id);
        }
    }
    let planned = plan::plan_roles(&links, &nets, uplinks)?;
    tables::sync(&mut dp.maps.hostaddrs4, &want_host_addrs(&addrs))?;
    record_netns_cookie(&mut dp.maps)?;
    let current = dp.maps.ifaces()?;
    // Ports `connect` made are bound to the address and MAC it gave out;
    // on an IPv6-only network, to the MAC alone (no IPv4 address).
    let mut leased: BTreeMap<u32, (u32, [u8; 6])> = dp
        .maps
        .v6
        .leases()?
        .into_iter()
        .map(|(_, l)| (l.host_ifindex, (0, l.mac)))
        .collect();
    leased.extend(
        dp.maps
            .leases()?
            .into_iter()
            .map(|(k, l)| (l.host_ifindex, (k.addr_be, l.mac))),
    );
    let mut out = Reconciled::default();
    for (&ifindex, p) in &planned {
        let info = port_binding(p.info, current.get(&ifindex), leased.get(&ifindex));
        let role = IfaceRole::from_u32(p.info.role).context("planned role")?;
        if current.get(&ifindex) != Some(&info) {
            dp.maps
                .ifaces
                .insert(ifindex, info, 0)
                .context("recording an interface")?;
        }
        out.changes.push(IfaceChange {
            name: p.name.clone(),
            role,
            previous: current
                .get(&ifindex)
                .and_then(|i| IfaceRole::from_u32(i.role)),
            ingress: dp.ensure_attached(state, ifindex, &p.name, role, Dir::Ingress)?,
            egress: dp.ensure_attached(state, ifindex, &p.name, role, Dir::Egress)?,
        });
    }
    let ifaces = dp.maps.ifaces()?;
    let (stale, missing) = endpoint_changes(&dp.maps.endpoints4.entries()?, &ifaces, &planned);
    for addr in &stale {
        dp.maps.endpoints4.delete(addr)?;
    }
    for (addr, ep) in &missing {
        dp.maps
            .endpoints4
            .put(addr, ep)
            .context("recording an endpoint")?;
    }
    // What ports that went (or moved network) sent IPv6 from; what the
    // bridges have, which no port may take.
    let in_net = |role: IfaceRole| {
        planned
            .iter()
            .filter(move |(_, p)| p.info.role == role as u32)
            .map(|(i, p)| (*i, p.info.net_id))
    };
    let senders = in_net(IfaceRole::Port).chain(in_net(IfaceRole::Bridge));
    let bridges = in_net(IfaceRole::Bridge).map(|(i, _)| i).collect();
    let bridge_addrs =
        crate::reconcile6::want_bridge_addrs(&planned, &all, &addrs6, &dp.maps.v6.all()?);
    dp.maps
        .v6
        .sync_endpoints(&senders.collect(), &bridges, &bridge_addrs)
        .context("recording the ports' and bridges' IPv6 addresses")?;
    tables::sync(
        &mut dp.maps.v6.uplinks,
        &crate::reconcile6::want_uplinks(&planned, &addrs6),
    )
    .context("recording the uplinks' IPv6 addresses")?;
    tables::sync(
        &mut dp.maps.v6.hostaddrs,
        &crate::reconcile6::want_host_addrs(&addrs6),
    )
    .context("recording the host's IPv6 addresses")?;
    tables::sync(&mut dp.maps.vlans, &want_vlans(&all, &planned)).context("recording VLANs")?;
    tables::sync(&mut dp.maps.macs, &want_macs(&all, &ifaces, &planned))
        .context("recording MACs")?;
    // Trusted host interfaces follow their names (created, re-created).
    let index_of = all.iter().map(|l| (l.name.clone(), l.index)).collect();
    let trusted_now = dp.maps.trusted.entries()?;
    tables::sync(
        &mut dp.maps.trusted,
        &trusted::rekeyed(&trusted_now, &index_of),
    )
    .context("recording trusted host interfaces")?;
    for &ifindex in current.keys().filter(|i| !planned.contains_key(i)) {
        detach_iface(state, &mut dp.maps, ifindex)?;
        out.detached.push(ifindex);
    }
    // Pins of interfaces that are neither planned nor recorded (left by an
    // interrupted run).
    for (ifindex, _, path) in state.pinned_links()? {
        if !planned.contains_key(&ifindex) && path.exists() {
            sys::detach_pinned_link(&path)?;
        }
    }
    record_seen(plumbing::digest(&all, &addrs, &addrs6));
    Ok(out)
}

/// Where the last successful reconcile in this namespace records the
/// digest of the links and addresses it saw ([`plumbing::digest`]).
pub fn seen_path(cookie: u64) -> std::path::PathBuf {
    std::path::PathBuf::from(sys::RUN_DIR).join(format!("seen-{cookie}"))
}

/// The digest the last reconcile recorded, if one did and nothing started
/// another since.
pub fn recorded_seen() -> Option<u64> {
    let text = std::fs::read_to_string(seen_path(netns::cookie().ok()?)).ok()?;
    text.trim().parse().ok()
}

/// A record is only a shortcut for the daemon (a missing one means "re-
/// apply"), so failing to write or remove it is not an error.
fn record_seen(digest: u64) {
    if let Ok(c) = netns::cookie() {
        let _ = std::fs::create_dir_all(sys::RUN_DIR);
        let _ = std::fs::write(seen_path(c), format!("{digest}\n"));
    }
}

fn forget_seen() {
    if let Ok(c) = netns::cookie() {
        let _ = std::fs::remove_file(seen_path(c));
    }
}

/// Re-applies the recorded networks with the uplink choice in force.
pub async fn reapply(nl: &Netlink, state: &StateDir) -> Result<Reconciled> {
    let mut dp = Datapath::load(state)?;
    reapply_with(nl, state, &mut dp).await
}

/// [`reapply`] with programs already loaded (the daemon keeps them loaded,
/// which spares it the verifier on every event).
pub async fn reapply_with(nl: &Netlink, state: &StateDir, dp: &mut Datapath) -> Result<Reconciled> {
    let current = dp.maps.ifaces()?;
    let names = nl.names().await?;
    let uplinks = uplink_choice(&[], &current, &names);
    reconcile(nl, state, dp, &uplinks).await
}

/// Host addresses (outside the managed bridges) whose subnet overlaps a
/// managed network, one line each.
pub async fn address_conflicts(nl: &Netlink, maps: &Maps) -> Result<Vec<String>> {
    let nets: Vec<NetworkSpec> = network_specs(maps)?.into_values().collect();
    let bridges = nets.iter().map(|n| n.bridge.clone()).collect();
    Ok(plan::address_conflicts(
        &nets,
        &nl.host_addrs().await?.v4,
        &bridges,
    ))
}

/// `NP_HOSTADDRS4`: the namespace's IPv4 addresses (what a published port
/// on "every host address" answers to), each with its interface.
pub fn want_host_addrs(addrs: &[plumbing::Addr4]) -> BTreeMap<u32, u32> {
    addrs.iter().map(|a| (codec::be(a.addr), a.index)).collect()
}

/// Records the namespace's cookie for the socket hooks.
fn record_netns_cookie(maps: &mut Maps) -> Result<()> {
    let cookie = netns::cookie()?;
    let mut host = maps.host.get(&0, 0).context("reading NP_HOST")?;
    if host.netns_cookie != cookie {
        host.netns_cookie = cookie;
        maps.host.set(0, host, 0).context("writing NP_HOST")?;
    }
    Ok(())
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

/// Detaches one interface (its filters and links) and forgets it with its
/// counters.
pub fn detach_iface(state: &StateDir, maps: &mut Maps, ifindex: u32) -> Result<()> {
    tcfilter::detach(ifindex)?;
    for dir in Dir::BOTH {
        let pin = state.link_pin(ifindex, dir);
        if pin.exists() {
            sys::detach_pinned_link(&pin)?;
        }
    }
    maps.ifaces
        .delete(&ifindex)
        .context("forgetting an interface")?;
    maps.remove_counters(counter_scope::IFACE, ifindex)
}

/// Detaches every link and forgets every interface, carrying on past errors.
pub fn teardown_all_links(state: &StateDir, maps: &mut Maps) -> Vec<anyhow::Error> {
    let mut errors = crate::sockhooks::detach_all(state);
    let mut ifindexes: BTreeSet<u32> = maps
        .ifaces()
        .map(|m| m.into_keys().collect())
        .unwrap_or_default();
    if let Ok(pins) = state.pinned_links() {
        ifindexes.extend(pins.into_iter().map(|(i, _, _)| i));
    }
    for i in ifindexes {
        if let Err(e) = detach_iface(state, maps, i) {
            errors.push(e);
        }
    }
    // Filters on interfaces no record names (left by an interrupted run).
    errors.extend(tcfilter::remove_everywhere());
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

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
