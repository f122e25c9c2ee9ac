//! `down`: take one network (or all) down, carrying on past every error:
//! forget it, its leases, published ports, filter rules, counters and
//! flows, re-plan the rest (or unpin everything with the last network),
//! and delete what netpath created for it (a bridge that existed before
//! `up` stays).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use netpath_common::{
    Lease, LeaseKey, NetworkInfo, counter_scope, net_flags, owner, v6::LeaseKey6,
};

use crate::{
    attach::Datapath,
    codec, errors,
    plumbing::Netlink,
    reconcile,
    spec::NetworkSpec,
    state::{self, Maps, StateDir},
    sys,
    tables::Table as _,
};

/// Which networks `down` takes down.
#[derive(Clone, Debug)]
pub enum DownTarget {
    Bridge(String),
    All,
}

/// What `down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    pub removed: Vec<String>,
    pub deleted_bridges: Vec<String>,
    pub unpinned_all: bool,
}

/// The networks `target` names, by id.
pub fn victims(
    networks: &BTreeMap<u32, NetworkInfo>,
    target: &DownTarget,
) -> Result<Vec<(u32, NetworkInfo)>> {
    match target {
        DownTarget::Bridge(b) => {
            let found = networks
                .iter()
                .find(|(_, i)| codec::ifname_from_bytes(&i.bridge_name) == *b)
                .with_context(|| format!("no network on bridge {b}"))?;
            Ok(vec![(*found.0, *found.1)])
        }
        DownTarget::All => Ok(networks.iter().map(|(k, v)| (*k, *v)).collect()),
    }
}

/// The leases of networks `ids`, each with whether its veth is netpath's
/// to delete (`connect`'s; dockerd's veths stay dockerd's).
pub fn leases_of(leases: &[(LeaseKey, Lease)], ids: &[u32]) -> Vec<(LeaseKey, Lease, bool)> {
    leases
        .iter()
        .filter(|(k, _)| ids.contains(&k.net_id))
        .map(|(k, l)| (*k, *l, l.flags == u32::from(netpath_common::owner::USER)))
        .collect()
}

/// The host ends `connect` plugged into networks `ids` that hold IPv6
/// leases alone (an IPv6-only network's containers), not already among
/// `v4`'s: netpath's veths to delete as well.
pub fn v6_only_veths(
    v4: &[(LeaseKey, Lease, bool)],
    v6: &[(LeaseKey6, Lease)],
    ids: &[u32],
) -> Vec<u32> {
    let mut out: Vec<u32> = v6
        .iter()
        .filter(|(k, l)| ids.contains(&k.net_id) && l.flags == u32::from(owner::USER))
        .map(|(_, l)| l.host_ifindex)
        .filter(|i| !v4.iter().any(|(_, l, _)| l.host_ifindex == *i))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub async fn down(target: &DownTarget) -> Result<DownReport> {
    let _lock = state::lock(false)?;
    let _hold = sys::HoldSignals::new();
    let nl = Netlink::new()?;
    let state = StateDir::current()?;
    let mut report = DownReport::default();
    if !state.exists() {
        return match target {
            DownTarget::Bridge(b) => {
                bail!("no network on bridge {b}: nothing is up in this network namespace")
            }
            DownTarget::All => {
                // Links left by an interrupted run still go.
                crate::errors::combine(crate::tcfilter::remove_everywhere())?;
                if state.root.exists() {
                    for (_, _, path) in state.pinned_links()? {
                        sys::detach_pinned_link(&path)?;
                    }
                    state.remove()?;
                    report.unpinned_all = true;
                }
                Ok(report)
            }
        };
    }
    let mut maps = Maps::open(&state)?;
    let networks = maps.networks()?;
    let victims = victims(&networks, target)?;
    let mut errors: Vec<anyhow::Error> = Vec::new();
    // Containers `connect` plugged into these networks are unplugged (their
    // veths are netpath's); the namespaces themselves stay. Every lease goes.
    let ids: Vec<u32> = victims.iter().map(|(id, _)| *id).collect();
    let v4 = leases_of(&maps.leases().unwrap_or_default(), &ids);
    let v6 = v6_only_veths(&v4, &maps.v6.leases().unwrap_or_default(), &ids);
    let veths = v4
        .iter()
        .filter(|(_, _, ours)| *ours)
        .map(|(_, l, _)| l.host_ifindex)
        .chain(v6);
    for ifindex in veths {
        if let Err(e) = nl.delete_link(ifindex).await
            && nl.names().await.is_ok_and(|n| n.contains_key(&ifindex))
        {
            errors.push(e);
        }
    }
    // The IPv6 leases go with the network (`Maps6::forget`).
    for (key, _, _) in &v4 {
        if let Err(e) = maps.leases4.delete(key) {
            errors.push(e.context("forgetting a lease"));
        }
    }
    // The IPv6 gateways netpath added, to take off bridges that stay.
    let mut gateways6 = BTreeMap::new();
    for (id, info) in &victims {
        if let Err(e) = maps.networks.delete(id) {
            errors.push(e.context("forgetting the network"));
        }
        match maps.v6.forget(*id) {
            Ok(Some((v6, flags))) if crate::net6::added_gateway(flags) => {
                gateways6.insert(*id, v6);
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        if let Some(subnet) = NetworkSpec::from_info(info).subnet()
            && let Err(e) = maps.remove_subnet(subnet)
        {
            errors.push(e);
        }
        if let Err(e) = crate::publish::remove_network(&mut maps, *id) {
            errors.push(e);
        }
        if let Err(e) = crate::filter::remove_network(&mut maps, *id) {
            errors.push(e);
        }
        if let Err(e) = crate::trusted::set(&mut maps.trusted, *id, &[], &BTreeMap::new()) {
            errors.push(e);
        }
        if let Err(e) = crate::peers::set(&mut maps.peers4, *id, &[]) {
            errors.push(e);
        }
        if let Err(e) = maps.remove_counters(counter_scope::NETWORK, *id) {
            errors.push(e);
        }
    }
    let remaining = networks.len() - victims.len();
    if remaining > 0 {
        // The networks' flows go, one pass over the table each (with the
        // last network the whole table goes anyway).
        let flushed = Datapath::load(&state).and_then(|mut dp| {
            for (id, _) in &victims {
                crate::conntrack::flush(&mut dp, &crate::conntrack::Filter::network(*id))?;
            }
            Ok(())
        });
        if let Err(e) = flushed {
            errors.push(e.context("removing the network's conntrack flows"));
        }
        // Other networks stay: re-plan (the downed bridge's ports lose their
        // role, a kept bridge may become an uplink by the default rule).
        drop(maps);
        if let Err(e) = reconcile::reapply(&nl, &state).await {
            errors.push(e);
        }
    } else {
        errors.extend(reconcile::teardown_all_links(&state, &mut maps));
        drop(maps);
        match state.remove() {
            Ok(()) => report.unpinned_all = true,
            Err(e) => errors.push(e),
        }
        // The CNI plugin's records of this namespace describe attachments
        // that went with the state.
        if let Ok(cookie) = crate::netns::cookie() {
            let dir = crate::sys::cni_records_dir(cookie);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors
                    .push(anyhow::Error::from(e).context(format!("removing {}", dir.display()))),
            }
        }
    }
    for (id, info) in &victims {
        let spec = NetworkSpec::from_info(info);
        report.removed.push(spec.bridge.clone());
        let link = match nl.link_by_name(&spec.bridge).await {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let res = if info.flags & net_flags::CREATED_BRIDGE != 0 {
            report.deleted_bridges.push(spec.bridge.clone());
            nl.delete_link(link.index).await
        } else if let (true, Some(v4)) = (info.flags & net_flags::ADDED_GATEWAY != 0, spec.v4) {
            nl.del_addr(link.index, v4.gateway, v4.subnet.prefix_len())
                .await
        } else {
            Ok(())
        };
        if let Err(e) = res {
            errors.push(e);
        }
        if let (false, Some(v6)) = (
            info.flags & net_flags::CREATED_BRIDGE != 0,
            gateways6.get(id),
        ) && let Err(e) = nl
            .del_addr(link.index, v6.gateway, v6.subnet.prefix_len())
            .await
        {
            errors.push(e);
        }
    }
    errors::combine(errors)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::net;

    #[test]
    fn down_takes_the_named_network_or_all_and_only_netpaths_veths() {
        let networks = BTreeMap::from([
            (1, net("br-a", "10.1.0.0/16", None).unwrap().to_info(3, 0)),
            (2, net("br-b", "10.2.0.0/16", None).unwrap().to_info(4, 0)),
        ]);
        let one = victims(&networks, &DownTarget::Bridge("br-b".into())).unwrap();
        assert_eq!(one.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(victims(&networks, &DownTarget::All).unwrap().len(), 2);
        let e = victims(&networks, &DownTarget::Bridge("br-c".into())).unwrap_err();
        assert_eq!(e.to_string(), "no network on bridge br-c");
        let lease = |net_id, owner: u16| {
            (
                LeaseKey {
                    net_id,
                    addr_be: net_id,
                },
                Lease {
                    host_ifindex: 10 + net_id,
                    flags: u32::from(owner),
                    ..Default::default()
                },
            )
        };
        let leases = vec![
            lease(1, netpath_common::owner::USER),
            lease(2, netpath_common::owner::USER),
            lease(2, netpath_common::owner::DOCKER),
        ];
        let of_b: Vec<(u32, bool)> = leases_of(&leases, &[2])
            .into_iter()
            .map(|(k, _, ours)| (k.net_id, ours))
            .collect();
        assert_eq!(of_b, vec![(2, true), (2, false)]);
        // IPv6 leases: a dual-stack container's veth is among the IPv4
        // leases' already; an IPv6-only one's is not; dockerd's stay.
        let v4 = leases_of(&leases, &[1, 2, 3]);
        let six = |net_id, ifindex, owner: u16| {
            (
                LeaseKey6 {
                    net_id,
                    addr: [net_id as u8; 16],
                },
                Lease {
                    host_ifindex: ifindex,
                    flags: u32::from(owner),
                    ..Default::default()
                },
            )
        };
        let v6 = vec![
            six(1, 11, owner::USER),
            six(3, 30, owner::USER),
            six(3, 31, owner::DOCKER),
            six(4, 40, owner::USER),
        ];
        assert_eq!(v6_only_veths(&v4, &v6, &[1, 2, 3]), vec![30]);
    }
}
