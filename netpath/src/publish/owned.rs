//! The mappings an owner keeps equal to what it wants (`netpath docker`
//! for all its containers, the CNI plugin per container), each removed
//! with its flows.

use std::net::Ipv4Addr;

use anyhow::Result;
use netpath_common::{PubKey4, PubVal4};

use super::{Ports, Row, Unpublished, insert, owned_changes_of, remove, v6::Ports6};
use crate::{
    attach::Datapath,
    codec,
    state::{self, Maps},
};

/// What [`sync_owned`] (or IPv6's `v6::sync_owned`) changed.
#[derive(Debug)]
pub struct Synced<P = Ports> {
    pub added: Vec<P>,
    pub removed: Unpublished,
    /// Mappings that could not be published, with why (a conflict, a
    /// target outside every managed network).
    pub failed: Vec<(P, String)>,
}

impl<P> Default for Synced<P> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            removed: Unpublished::default(),
            failed: Vec::new(),
        }
    }
}

/// Makes the single-port mappings `owner` made equal to `want`: removes the
/// ones not wanted (with their flows), then publishes the missing ones,
/// each on its own (one that fails does not stop the others). Mappings of
/// other owners are left alone and win conflicts.
pub fn sync_owned(owner: u16, want: &[Ports]) -> Result<Synced> {
    let _lock = state::lock(false)?;
    let (_, mut dp) = Datapath::open_current()?;
    sync_owned_in(&mut dp, owner, want)
}

/// [`sync_owned`] for both families at once (one lock, one open of the
/// maps): `netpath docker`'s dual-stack bindings.
pub fn sync_owned_both(
    owner: u16,
    want: &[Ports],
    want6: &[Ports6],
) -> Result<(Synced, Synced<Ports6>)> {
    let _lock = state::lock(false)?;
    let (_, mut dp) = Datapath::open_current()?;
    Ok((
        sync_owned_in(&mut dp, owner, want)?,
        super::v6::sync_owned_in(&mut dp, owner, want6)?,
    ))
}

/// [`sync_owned`] under a lock the caller holds.
fn sync_owned_in(dp: &mut Datapath, owner: u16, want: &[Ports]) -> Result<Synced> {
    let have: Vec<(PubKey4, PubVal4)> = dp.maps.published()?;
    let (stale, missing) = owned_changes(owner, &have, want);
    let mut out: Synced = Synced {
        removed: remove(dp, &stale)?,
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
    let mut out: Synced = Synced {
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
    let mine: Vec<(PubKey4, PubVal4)> = have
        .iter()
        .filter(|(_, v)| v.owner == owner)
        .copied()
        .collect();
    let rows: Vec<Row> = mine.iter().map(|(k, v)| Row::of4(k, v)).collect();
    let wanted: Vec<Vec<Row>> = want.iter().map(Ports::rows).collect();
    let (stale, missing) = owned_changes_of(&rows, &wanted);
    (
        stale.into_iter().map(|i| mine[i]).collect(),
        missing.into_iter().map(|i| want[i]).collect(),
    )
}
