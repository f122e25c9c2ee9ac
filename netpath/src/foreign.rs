//! Endpoints another runtime plugged in (dockerd's containers, the CNI
//! reference `bridge` plugin's): their veths stay that runtime's, netpath
//! only binds each port to the addresses and MAC the runtime gave it, with
//! leases of the runtime's owner, so anti-spoofing holds from the first
//! packet.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use netpath_common::{Lease, LeaseKey, v6::LeaseKey6};

use crate::{
    codec,
    endpoint::{BPF_NOEXIST, lease_name, open_network},
    netns,
    plumbing::Netlink,
    reconcile,
    state::{self, Maps},
};

/// A container endpoint that another runtime plugged in (dockerd): its
/// addresses and MAC on the network of `bridge`, and the file of its
/// network namespace (Docker's `SandboxKey`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub bridge: String,
    pub addr: Ipv4Addr,
    /// Its global IPv6 address, on a dual-stack network.
    pub addr6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    pub sandbox: PathBuf,
    /// For `status` (the lease's name).
    pub name: String,
}

/// What [`bind_owned`] changed.
#[derive(Debug, Default)]
pub struct Bound {
    /// Each address bound (either family), with its container's name.
    pub bound: Vec<(String, IpAddr)>,
    pub released: usize,
    pub failed: Vec<(String, String)>,
}

/// The host end of the veth whose container end has `mac`, found from
/// inside the namespace at `sandbox`, and that namespace's cookie.
fn host_end(sandbox: &Path, mac: [u8; 6]) -> Result<(u32, u64)> {
    netns::run_in_path(sandbox, move || -> Result<(u32, u64)> {
        let cookie = netns::cookie()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let links = rt.block_on(async { Netlink::new()?.links().await })?;
        let link = links
            .iter()
            .find(|l| l.mac == Some(mac))
            .with_context(|| format!("no interface with MAC {} inside", codec::fmt_mac(&mac)))?;
        let peer = link
            .peer
            .filter(|p| *p != link.index)
            .with_context(|| format!("{} inside is not a veth", link.name))?;
        Ok((peer, cookie))
    })?
}

/// Binds the ports of `want`'s endpoints to their addresses (IPv4 and, on
/// a dual-stack network, IPv6) and MAC with leases of `owner` (so
/// anti-spoofing holds from their first packet), releases `owner`'s leases
/// of either family that are no longer wanted or whose veth is gone, and
/// re-applies when anything changed. The veths stay the other
/// runtime's: nothing here creates or deletes links.
pub async fn bind_owned(owner: u16, want: &[Foreign]) -> Result<Bound> {
    let _lock = state::lock(false)?;
    let (state, mut maps) = Maps::open_current()?;
    let nl = Netlink::new()?;
    let links = nl.links().await?;
    let bridges: BTreeMap<u32, (String, Option<u32>)> = maps
        .networks()?
        .into_iter()
        .map(|(id, info)| {
            let name = codec::ifname_from_bytes(&info.bridge_name);
            let index = links.iter().find(|l| l.name == name).map(|l| l.index);
            (id, (name, index))
        })
        .collect();
    let net_of = |bridge: &str| {
        bridges
            .iter()
            .find(|(_, (name, _))| name == bridge)
            .map(|(id, (_, index))| (*id, *index))
    };
    // A port still plugged into the network's bridge.
    let plugged = |ifindex: u32, bridge_index: Option<u32>| {
        links
            .iter()
            .any(|l| l.index == ifindex && l.master.is_some() && l.master == bridge_index)
    };
    let mut out = Bound::default();
    let mut kept = BTreeSet::new();
    for (key, lease) in maps.leases()? {
        if lease.flags != u32::from(owner) {
            continue;
        }
        let index = bridges.get(&key.net_id).and_then(|(_, i)| *i);
        let still = want.iter().any(|w| {
            net_of(&w.bridge).map(|(id, _)| id) == Some(key.net_id)
                && codec::be(w.addr) == key.addr_be
                && w.mac == lease.mac
        }) && plugged(lease.host_ifindex, index);
        if still {
            kept.insert((key.net_id, IpAddr::V4(codec::from_be(key.addr_be))));
        } else {
            maps.leases4.remove(&key).context("releasing a lease")?;
            out.released += 1;
        }
    }
    for (key, lease) in leases6_of(&maps, owner)? {
        let index = bridges.get(&key.net_id).and_then(|(_, i)| *i);
        let addr = Ipv6Addr::from(key.addr);
        let still = want.iter().any(|w| {
            net_of(&w.bridge).map(|(id, _)| id) == Some(key.net_id)
                && w.addr6 == Some(addr)
                && w.mac == lease.mac
        }) && plugged(lease.host_ifindex, index);
        if still {
            kept.insert((key.net_id, IpAddr::V6(addr)));
        } else {
            match maps.v6.leases.remove(&key) {
                Err(e) if !state::is_missing(&e) => {
                    return Err(e).context("releasing an IPv6 lease");
                }
                _ => out.released += 1,
            }
        }
    }
    for w in want {
        let Some((net_id, index)) = net_of(&w.bridge) else {
            out.failed
                .push((w.name.clone(), format!("no network on bridge {}", w.bridge)));
            continue;
        };
        let v4 = Some(w.addr).filter(|a| !kept.contains(&(net_id, IpAddr::V4(*a))));
        let v6 = w
            .addr6
            .filter(|a| !kept.contains(&(net_id, IpAddr::V6(*a))));
        if v4.is_none() && v6.is_none() {
            continue;
        }
        let found = host_end(&w.sandbox, w.mac).and_then(|(ifindex, cookie)| {
            if !plugged(ifindex, index) {
                bail!("its veth is not a port of {}", w.bridge);
            }
            let lease = foreign_lease(owner, w, ifindex, cookie);
            if let Some(a) = v4 {
                let key = LeaseKey {
                    net_id,
                    addr_be: codec::be(a),
                };
                // Never over another owner's lease (`connect`'s address).
                maps.leases4
                    .insert(key, lease, BPF_NOEXIST)
                    .with_context(|| format!("{a} is leased already"))?;
                out.bound.push((w.name.clone(), IpAddr::V4(a)));
            }
            if let Some(a) = v6 {
                maps.v6.bind(net_id, ifindex, a, w.mac, lease)?;
                out.bound.push((w.name.clone(), IpAddr::V6(a)));
            }
            Ok(())
        });
        if let Err(e) = found {
            out.failed.push((w.name.clone(), format!("{e:#}")));
        }
    }
    if out.released > 0 || !out.bound.is_empty() {
        reconcile::reapply(&nl, &state).await?;
    }
    Ok(out)
}

/// The lease of `owner` for an endpoint another runtime plugged in, whose
/// host end is `ifindex` and whose namespace has `cookie`.
fn foreign_lease(owner: u16, w: &Foreign, ifindex: u32, cookie: u64) -> Lease {
    Lease {
        netns_cookie: cookie,
        host_ifindex: ifindex,
        flags: u32::from(owner),
        mac: w.mac,
        _pad: [0; 2],
        netns_name: lease_name(&w.name),
    }
}

/// Binds one endpoint another runtime plugged in (the CNI plugin chained
/// after the reference `bridge` plugin) with a lease of `owner`, leaving
/// every other lease alone. Idempotent: the same lease again is fine.
pub async fn bind_one(owner: u16, w: &Foreign) -> Result<()> {
    let _lock = state::lock(false)?;
    let (state, mut maps, net_id, _) = open_network(&w.bridge)?;
    let nl = Netlink::new()?;
    let bridge_index = nl.link_by_name(&w.bridge).await?.map(|l| l.index);
    let (ifindex, cookie) = host_end(&w.sandbox, w.mac)?;
    let plugged = nl
        .links()
        .await?
        .iter()
        .any(|l| l.index == ifindex && l.master.is_some() && l.master == bridge_index);
    if !plugged {
        bail!("its veth is not a port of {}", w.bridge);
    }
    let key = LeaseKey {
        net_id,
        addr_be: codec::be(w.addr),
    };
    let lease = foreign_lease(owner, w, ifindex, cookie);
    match maps.leases4.get(&key, 0) {
        Ok(l) if l.flags == u32::from(owner) && l.host_ifindex == ifindex && l.mac == w.mac => {}
        Ok(_) => bail!("{} is leased already", w.addr),
        Err(_) => maps
            .leases4
            .insert(key, lease, BPF_NOEXIST)
            .with_context(|| format!("{} is leased already", w.addr))?,
    }
    reconcile::reapply(&nl, &state).await.map(drop)
}

/// `owner`'s IPv6 leases.
fn leases6_of(maps: &Maps, owner: u16) -> Result<Vec<(LeaseKey6, Lease)>> {
    Ok(maps
        .v6
        .leases
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .context("reading NP_LEASES6")?
        .into_iter()
        .filter(|(_, l)| l.flags == u32::from(owner))
        .collect())
}
