//! `conntrack config --max FLOWS`: a new conntrack table of another size,
//! with the live flows in it and no gap for traffic; and the repair of a
//! resize that was interrupted.

use anyhow::{Context as _, Result};
use netpath_common::{counter_scope, ct::fill};

use crate::{
    attach::Datapath,
    plumbing::Netlink,
    reconcile,
    state::{self, Maps, StateDir},
    sys,
};

/// What [`resize`] did.
#[derive(Debug, Default)]
pub struct Resized {
    /// Flows the table held at most before and after.
    pub from: u32,
    pub to: u32,
    /// Entries copied into the new table, and those that did not fit.
    pub copied: usize,
    pub left_out: usize,
}

/// Where a resize keeps the old conntrack table until its flows are copied
/// (bpffs refuses dots in names).
const OLD_CT4: &str = "NP_CT4_old";

/// A new conntrack table that admits `flows` flows (`ct::fill`), with the
/// live flows in it. The pinned table is moved aside, this build's
/// programs are loaded against a new one and pinned, the most recently
/// active entries are copied (as many as the new limit takes), every link
/// switches to the new programs (`BPF_LINK_UPDATE`, no gap), what the old
/// table got meanwhile is copied too, the old table goes, and the
/// datapath's entry count is set.
pub async fn resize(flows: u32) -> Result<Resized> {
    let _lock = state::lock(false)?;
    let _hold = sys::HoldSignals::new();
    let (state, _) = Maps::open_current()?;
    let nl = Netlink::new()?;
    repair(&nl, &state).await?;
    let maps_dir = state.maps_dir();
    let from = Maps::ct_capacity(&maps_dir)?;
    let capacity = fill::capacity_for(flows);
    let mut out = Resized {
        from: fill::max_flows(from),
        to: flows,
        ..Resized::default()
    };
    if from == capacity {
        out.from = flows;
        return Ok(out);
    }
    let pin = maps_dir.join(netpath_common::map_names::CT4);
    let aside = maps_dir.join(OLD_CT4);
    std::fs::rename(&pin, &aside).context("moving the conntrack table aside")?;
    let mut dp = match Datapath::load_fresh(&state, capacity) {
        Ok(dp) => dp,
        Err(e) => {
            // Nothing changed yet: the old table goes back.
            let _ = std::fs::remove_file(&pin);
            let _ = std::fs::rename(&aside, &pin);
            return Err(e);
        }
    };
    (out.copied, out.left_out) = finish(&nl, &state, &mut dp).await?;
    Ok(out)
}

/// The second half of a resize, with the new table pinned and this
/// build's programs loaded against it: the old table's flows are copied
/// in, every link switches to the new programs, what the old table got
/// meanwhile is copied too, the old table goes and the entry count is
/// set. Returns (entries copied, entries left out).
async fn finish(nl: &Netlink, state: &StateDir, dp: &mut Datapath) -> Result<(usize, usize)> {
    let maps_dir = state.maps_dir();
    let aside = maps_dir.join(OLD_CT4);
    let budget = fill::limit(Maps::ct_capacity(&maps_dir)?) as usize;
    let old: aya::maps::HashMap<_, netpath_common::ct::CtKey4, netpath_common::ct::CtEntry4> =
        aya::maps::HashMap::try_from(state::open_pinned(&maps_dir, OLD_CT4)?)?;
    let (copied, left_out) = copy_flows(&old, dp, budget)?;
    reconcile::reapply_with(nl, state, dp, &reconcile::Verify::All).await?;
    // What the old table got until the last link switched.
    let (late, _) = copy_flows(&old, dp, budget.saturating_sub(copied))?;
    let old_entries = old.keys().count();
    drop(old);
    std::fs::remove_file(&aside).context("removing the old conntrack table")?;
    crate::conntrack::calibrate(dp)?;
    // The copies are inserts, and the old table's entries removals, so
    // that inserted - removed - present still counts the evictions.
    dp.maps.add_to_counter(
        counter_scope::CONNTRACK,
        0,
        netpath_common::counter_kind::CT_INSERTS,
        (copied + late) as u64,
    )?;
    dp.maps.add_to_counter(
        counter_scope::CONNTRACK,
        0,
        netpath_common::counter_kind::CT_REMOVES,
        old_entries as u64,
    )?;
    Ok((copied + late, left_out))
}

/// Finishes a resize that was interrupted (killed), under the lock, before
/// anything opens the maps: with the new table not pinned yet the old one
/// goes back; with it pinned, the flows are copied and the links switched
/// as the resize would have. Returns whether there was anything to do.
pub async fn repair(nl: &Netlink, state: &StateDir) -> Result<bool> {
    let maps_dir = state.maps_dir();
    let aside = maps_dir.join(OLD_CT4);
    if !aside.exists() {
        return Ok(false);
    }
    let pin = maps_dir.join(netpath_common::map_names::CT4);
    if !pin.exists() {
        std::fs::rename(&aside, &pin).context("putting the conntrack table back")?;
        return Ok(true);
    }
    // This build's programs, loaded again against the new table (pinned
    // ones may still name the old one).
    let mut dp = Datapath::load_fresh(state, Maps::ct_capacity(&maps_dir)?)?;
    finish(nl, state, &mut dp).await?;
    Ok(true)
}

/// Copies what [`crate::conntrack::pick_flows`] picks from `old` for a
/// table that takes `budget` more entries; what the new table has already
/// (newer) wins. Returns (copied, left out).
fn copy_flows(
    old: &aya::maps::HashMap<
        aya::maps::MapData,
        netpath_common::ct::CtKey4,
        netpath_common::ct::CtEntry4,
    >,
    dp: &mut Datapath,
    budget: usize,
) -> Result<(usize, usize)> {
    let entries: Vec<_> = old.iter().filter_map(std::result::Result::ok).collect();
    let (picked, mut left_out) = crate::conntrack::pick_flows(entries, budget);
    let mut copied = 0;
    for (k, e) in &picked {
        // BPF_NOEXIST: what the new table has (newer) wins.
        match dp.maps.ct4.insert(k, e, 1) {
            Ok(()) => copied += 1,
            Err(_) => left_out += 1,
        }
    }
    Ok((copied, left_out))
}
