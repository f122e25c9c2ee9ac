//! The mappings an owner keeps equal to what it wants (`netpath docker`
//! for all its containers, the CNI plugin per container), each removed
//! with its flows.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use netpath_common::{PubKey4, PubVal4};

use super::{Ports, Unpublished, insert, key, remove};
use crate::{
    attach::Datapath,
    codec,
    state::{self, Maps},
};

/// What [`sync_owned`] changed.
#[derive(Debug, Default)]
pub struct Synced {
    pub added: Vec<Ports>,
    pub removed: Unpublished,
    /// Mappings that could not be published, with why (a conflict, a
    /// target outside every managed network).
    pub failed: Vec<(Ports, String)>,
}

/// Makes the single-port mappings `owner` made equal to `want`: removes the
/// ones not wanted (with their flows), then publishes the missing ones,
/// each on its own (one that fails does not stop the others). Mappings of
/// other owners are left alone and win conflicts.
pub fn sync_owned(owner: u16, want: &[Ports]) -> Result<Synced> {
    let _lock = state::lock(false)?;
    let (_, mut dp) = Datapath::open_current()?;
    let have: Vec<(PubKey4, PubVal4)> = dp.maps.published()?;
    let (stale, missing) = owned_changes(owner, &have, want);
    let mut out = Synced {
        removed: remove(&mut dp, &stale)?,
        ..Default::default()
    };
    for p in missing {
        match insert(&mut dp.maps, &p, owner) {
            Ok(_) => out.added.push(p),
            Err(e) => out.failed.push((p, format!("{e:#}"))),
        }
    }
    Ok(out)
}

/// [`sync_owned`] for the mappings of `owner` that lead to `target` only
/// (the CNI plugin: one container's mappings, other containers' stay).
/// All or nothing: a mapping that cannot be published takes back the ones
/// this call added and fails.
pub fn sync_owned_to(owner: u16, target: Ipv4Addr, want: &[Ports]) -> Result<Synced> {
    let _lock = state::lock(false)?;
    let (_, mut dp) = Datapath::open_current()?;
    let have: Vec<(PubKey4, PubVal4)> = dp
        .maps
        .published()?
        .into_iter()
        .filter(|(_, v)| v.target_be == codec::be(target))
        .collect();
    let (stale, missing) = owned_changes(owner, &have, want);
    let mut out = Synced {
        removed: remove(&mut dp, &stale)?,
        ..Default::default()
    };
    for p in missing {
        if let Err(e) = insert(&mut dp.maps, &p, owner) {
            // Take back what this call added (with their counters).
            let added: std::collections::BTreeSet<PubKey4> = out
                .added
                .iter()
                .flat_map(|a| a.entries(owner))
                .map(|(k, _)| k)
                .collect();
            let back: Vec<(PubKey4, PubVal4)> = dp
                .maps
                .published()?
                .into_iter()
                .filter(|(k, v)| v.owner == owner && added.contains(k))
                .collect();
            if let Err(undo) = remove(&mut dp, &back) {
                tracing::error!("while taking back mappings: {undo:#}");
            }
            return Err(e.context(format!("publishing {p}")));
        }
        out.added.push(p);
    }
    Ok(out)
}

/// The mappings of `owner` leading to `target`, as single ports.
pub fn owned_to(owner: u16, target: Ipv4Addr) -> Result<Vec<Ports>> {
    let (_, maps) = Maps::open_current()?;
    Ok(maps
        .published()?
        .into_iter()
        .filter(|(_, v)| v.owner == owner && v.target_be == codec::be(target))
        .map(|(k, v)| Ports::of(&k, &v))
        .collect())
}

/// What [`sync_owned`] changes: `owner`'s mappings in `have` that `want`
/// does not have (to remove), and the wanted mappings not all there (to
/// publish).
pub fn owned_changes(
    owner: u16,
    have: &[(PubKey4, PubVal4)],
    want: &[Ports],
) -> (Vec<(PubKey4, PubVal4)>, Vec<Ports>) {
    let have: BTreeMap<PubKey4, PubVal4> = have
        .iter()
        .filter(|(_, v)| v.owner == owner)
        .map(|(k, v)| (*k, *v))
        .collect();
    let mut wanted: BTreeMap<PubKey4, (u32, u16)> = BTreeMap::new();
    for p in want {
        for (i, port) in (p.host_first..=p.host_last).enumerate() {
            wanted.insert(
                key(p.host_addr, port, p.proto),
                (codec::be(p.target), p.target_first + i as u16),
            );
        }
    }
    let stale: Vec<(PubKey4, PubVal4)> = have
        .iter()
        .filter(|(k, v)| wanted.get(k) != Some(&(v.target_be, u16::from_be(v.target_port_be))))
        .map(|(k, v)| (*k, *v))
        .collect();
    let missing = want
        .iter()
        .filter(|p| {
            !(p.host_first..=p.host_last).all(|port| {
                let k = key(p.host_addr, port, p.proto);
                have.contains_key(&k) && !stale.iter().any(|(s, _)| *s == k)
            })
        })
        .copied()
        .collect();
    (stale, missing)
}
