//! The reconcile engine `up`, `down`, `connect`, a resize and the daemon
//! share: every managed bridge, its ports and the uplinks run this build's
//! programs; the tables derived from links and addresses (host addresses,
//! endpoints, VLANs, MACs no port may borrow) hold what the links say; what
//! netpath attached earlier and no longer manages is detached.
//!
//! What each table should hold is decided by pure functions over plain
//! maps (`want`: `want_*`, [`endpoint_changes`], [`port_binding`]),
//! unit-tested on the host; [`crate::tables::sync`] writes the difference.

mod want;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use netpath_common::{IfaceRole, counter_scope};

use crate::{
    attach::{self, Attach, Datapath},
    codec, netns, plan,
    plan::Uplinks,
    plumbing::{self, Netlink, View},
    spec::NetworkSpec,
    state::{Dir, Maps, StateDir},
    sys,
    tables::{self, Table},
    tcfilter, trusted,
};

pub use want::{
    Verify, endpoint_changes, port_binding, uplink_choice, want_host_addrs, want_macs, want_vlans,
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
            || !matches!(
                self.ingress,
                Attach::Unchanged | Attach::NotUsed | Attach::Kept
            )
            || !matches!(
                self.egress,
                Attach::Unchanged | Attach::NotUsed | Attach::Kept
            )
    }
}

/// What a reconcile changed: the interfaces it manages, and the ifindexes
/// it stopped managing.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub changes: Vec<IfaceChange>,
    pub detached: Vec<u32>,
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
    verify: &Verify,
    known: Option<&View>,
) -> Result<Reconciled> {
    // Only a finished reconcile of this build vouches for the attachments
    // it left, and only while a daemon of this build watches them; this
    // one stops vouching until it finishes itself. Asked only where it
    // matters (`Verify::All` reads neither record).
    let vouched = matches!(verify, Verify::Changed { .. })
        && !dp.unverified()
        && seen_build().as_deref() == Some(attach::build_id().as_str())
        && crate::watcher::this_build_watches();
    // Said before the dumps, so a change during this reconcile always
    // differs from what it records at the end.
    forget_seen()?;
    // Links and addresses: what the caller holds up to date (`up`'s batch
    // read them once and recorded its own changes), else read now. A link
    // dump costs about 7 µs a link in the kernel and as much again to parse.
    let read;
    let (all, addrs, addrs6) = match known {
        Some(v) => (&v.links, &v.v4, &v.v6),
        None => {
            read = View::read(nl).await?;
            (&read.links, &read.v4, &read.v6)
        }
    };
    let links = plumbing::facts(all, addrs, addrs6);
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
    tables::sync(&mut dp.maps.hostaddrs4, &want_host_addrs(addrs))?;
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
    let mut tc = tcfilter::Tc::new()?;
    for (&ifindex, p) in &planned {
        let info = port_binding(p.info, current.get(&ifindex), leased.get(&ifindex));
        let role = IfaceRole::from_u32(p.info.role).context("planned role")?;
        let recorded = current.get(&ifindex) == Some(&info);
        if !recorded {
            dp.maps
                .ifaces
                .insert(ifindex, info, 0)
                .context("recording an interface")?;
        }
        let ask = verify.asks(vouched, recorded, ifindex, role, info.net_id);
        let mut attach = |dir| {
            if ask {
                dp.ensure_attached(&mut tc, state, ifindex, &p.name, role, dir)
            } else {
                Ok(Attach::Kept)
            }
        };
        out.changes.push(IfaceChange {
            name: p.name.clone(),
            role,
            previous: current
                .get(&ifindex)
                .and_then(|i| IfaceRole::from_u32(i.role)),
            ingress: attach(Dir::Ingress)?,
            egress: attach(Dir::Egress)?,
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
        crate::reconcile6::want_bridge_addrs(&planned, all, addrs6, &dp.maps.v6.all()?);
    dp.maps
        .v6
        .sync_endpoints(&senders.collect(), &bridges, &bridge_addrs)
        .context("recording the ports' and bridges' IPv6 addresses")?;
    tables::sync(
        &mut dp.maps.v6.uplinks,
        &crate::reconcile6::want_uplinks(&planned, addrs6),
    )
    .context("recording the uplinks' IPv6 addresses")?;
    tables::sync(
        &mut dp.maps.v6.hostaddrs,
        &crate::reconcile6::want_host_addrs(addrs6),
    )
    .context("recording the host's IPv6 addresses")?;
    tables::sync(&mut dp.maps.vlans, &want_vlans(all, &planned)).context("recording VLANs")?;
    tables::sync(&mut dp.maps.macs, &want_macs(all, &ifaces, &planned))
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
        detach_iface(&mut tc, state, &mut dp.maps, ifindex)?;
        out.detached.push(ifindex);
    }
    // Pins of interfaces that are neither planned nor recorded (left by an
    // interrupted run).
    for (ifindex, _, path) in state.pinned_links()? {
        if !planned.contains_key(&ifindex) && path.exists() {
            sys::detach_pinned_link(&path)?;
        }
    }
    if verify.asks_all(vouched) {
        dp.mark_verified();
    }
    record_seen(plumbing::digest(all, addrs, addrs6));
    Ok(out)
}

/// Where the last successful reconcile in this namespace records the
/// digest of the links and addresses it saw ([`plumbing::digest`]).
pub fn seen_path(cookie: u64) -> std::path::PathBuf {
    std::path::PathBuf::from(sys::RUN_DIR).join(format!("seen-{cookie}"))
}

/// The last finished reconcile's record: the digest and the build that
/// made it (`<digest> <build id>`).
fn read_seen() -> Option<(u64, Option<String>)> {
    let text = std::fs::read_to_string(seen_path(netns::cookie().ok()?)).ok()?;
    let mut words = text.split_whitespace();
    let digest = words.next()?.parse().ok()?;
    Some((digest, words.next().map(str::to_owned)))
}

/// The digest the last reconcile recorded, if one did and nothing started
/// another since.
pub fn recorded_seen() -> Option<u64> {
    read_seen().map(|(d, _)| d)
}

/// The build whose reconcile made the record, if one did and nothing
/// started another since.
pub fn seen_build() -> Option<String> {
    read_seen().and_then(|(_, b)| b)
}

/// Failing to write the record only costs the next reconcile its
/// shortcuts (a missing one means "re-apply, ask every interface"), so it
/// is not an error.
fn record_seen(digest: u64) {
    if let Ok(c) = netns::cookie() {
        let _ = std::fs::create_dir_all(sys::RUN_DIR);
        let _ = std::fs::write(seen_path(c), format!("{digest} {}\n", attach::build_id()));
    }
}

/// Failing to remove it is: a record left in place would vouch for a
/// reconcile that may not finish.
fn forget_seen() -> Result<()> {
    let path = seen_path(netns::cookie()?);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Re-applies the recorded networks with the uplink choice in force,
/// asking every interface.
pub async fn reapply(nl: &Netlink, state: &StateDir) -> Result<Reconciled> {
    let mut dp = Datapath::load(state)?;
    reapply_with(nl, state, &mut dp, &Verify::All).await
}

/// [`reapply`] with programs already loaded (the daemon keeps them loaded,
/// which spares it the verifier on every event).
pub async fn reapply_with(
    nl: &Netlink,
    state: &StateDir,
    dp: &mut Datapath,
    verify: &Verify,
) -> Result<Reconciled> {
    let current = dp.maps.ifaces()?;
    let names = nl.names().await?;
    let uplinks = uplink_choice(&[], &current, &names);
    reconcile(nl, state, dp, &uplinks, verify, None).await
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

/// Detaches one interface (its filters, on `tc`'s socket, and links) and
/// forgets it with its counters.
pub fn detach_iface(
    tc: &mut tcfilter::Tc,
    state: &StateDir,
    maps: &mut Maps,
    ifindex: u32,
) -> Result<()> {
    tc.detach(ifindex)?;
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
    match tcfilter::Tc::new() {
        Ok(mut tc) => {
            for i in ifindexes {
                if let Err(e) = detach_iface(&mut tc, state, maps, i) {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    // Filters on interfaces no record names (left by an interrupted run).
    errors.extend(tcfilter::remove_everywhere());
    errors
}
