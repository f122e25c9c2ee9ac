//! `up`, `down` and `status`: validate everything first, then apply; undo
//! what was applied when a later step fails; tear down collecting every error.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use netpath_common::{
    GatewayMode, IfaceInfo, IfaceRole, counter_scope, ct::fill, iface_flags, net_flags,
};

use crate::{
    attach::{Attach, Datapath},
    netns,
    plan::{self, NetworkSpec, Uplinks},
    plumbing::{self, Netlink},
    state::{self, Dir, Maps, StateDir},
    sys,
};

/// Arguments of `netpath up`.
#[derive(Clone, Debug)]
pub struct UpArgs {
    pub bridge: String,
    pub subnet: String,
    pub gateway: Option<String>,
    pub uplinks: Vec<String>,
    /// Masquerade traffic of this network leaving through an uplink.
    pub masquerade: bool,
    /// Containers of this network may talk to each other.
    pub icc: bool,
    /// No traffic to or from outside the subnet.
    pub internal: bool,
    /// What reaches containers from outside the host.
    pub gateway_mode: GatewayMode,
    /// cgroup v2 directory for the socket hooks; `None`: the cgroup v2 root.
    pub cgroup: Option<std::path::PathBuf>,
    /// Mirrors a dockerd network (`netpath docker`), which takes it down
    /// again when dockerd's network goes.
    pub docker: bool,
}

impl UpArgs {
    /// The network flags these options set (the rest come from what
    /// netpath created).
    fn option_flags(&self) -> u32 {
        let mut f = 0;
        if !self.masquerade {
            f |= net_flags::NO_MASQUERADE;
        }
        if !self.icc {
            f |= net_flags::NO_ICC;
        }
        if self.internal {
            f |= net_flags::INTERNAL;
        }
        if self.docker {
            f |= net_flags::DOCKER;
        }
        f | self.gateway_mode.flags()
    }

    /// Whether the network is up exactly like this already (bridge, subnet,
    /// gateway and options), so `up` would change nothing but attachments.
    pub fn is_recorded(&self, maps: &Maps) -> Result<bool> {
        let want = plan::network_spec(&self.bridge, &self.subnet, self.gateway.as_deref())?;
        Ok(maps
            .network_by_bridge(&self.bridge)?
            .is_some_and(|(_, info)| {
                let have = NetworkSpec::from_info(&info);
                have.subnet == want.subnet
                    && have.gateway == want.gateway
                    && info.flags & OPTION_FLAGS == self.option_flags()
            }))
    }
}

/// Network flags that `up` options (and `network set`) control.
const OPTION_FLAGS: u32 = net_flags::NO_MASQUERADE
    | net_flags::NO_ICC
    | net_flags::INTERNAL
    | net_flags::DOCKER
    | GatewayMode::MASK;

/// What `up` did, for the user.
#[derive(Debug, Default)]
pub struct UpReport {
    pub net_id: u32,
    pub created_bridge: bool,
    pub added_gateway: bool,
    pub enabled_forwarding: bool,
    pub already_up: bool,
    pub changes: Vec<IfaceChange>,
    pub detached: Vec<u32>,
    pub socket_hooks: Option<crate::sockhooks::Hooks>,
}

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
            || self.ingress != Attach::Unchanged
            || self.egress != Attach::Unchanged
    }
}

/// The uplink choice in force: explicit uplinks recorded earlier stay until
/// another `--uplink` replaces them.
fn uplink_choice(
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

fn specs(maps: &Maps) -> Result<BTreeMap<u32, NetworkSpec>> {
    Ok(maps
        .networks()?
        .iter()
        .map(|(id, info)| (*id, NetworkSpec::from_info(info)))
        .collect())
}

pub async fn up(args: &UpArgs) -> Result<UpReport> {
    // Held from here on whenever state can exist (bpffs mounted).
    let mut lock = state::lock(false)?;
    let spec = plan::network_spec(&args.bridge, &args.subnet, args.gateway.as_deref())?;
    for u in &args.uplinks {
        plan::validate_ifname(u)?;
    }
    let nl = Netlink::new()?;
    let state = StateDir::current()?;
    let had_state = state.exists();
    if had_state {
        repair_resize(&nl, &state).await?;
    }
    let (existing, current_ifaces) = if had_state {
        let maps = Maps::open(&state)?;
        (specs(&maps)?, maps.ifaces()?)
    } else {
        (BTreeMap::new(), BTreeMap::new())
    };
    let same_id = plan::check_against_existing(&spec, &existing)?;
    let cgroup = match &args.cgroup {
        Some(p) => p.clone(),
        None => crate::sockhooks::cgroup2_root()?,
    };
    crate::sockhooks::check_cgroup(&cgroup)?;
    let links = nl.link_facts().await?;
    let bridge = links.iter().find(|l| l.name == spec.bridge);
    if let Some(b) = bridge
        && !b.is_bridge
    {
        bail!("{} exists and is not a bridge", spec.bridge);
    }
    let names: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    // A subnet that overlaps an address the host has elsewhere would cut
    // the host off from that address's neighbours.
    let bridges: std::collections::BTreeSet<String> = existing
        .values()
        .map(|s| s.bridge.clone())
        .chain([spec.bridge.clone()])
        .collect();
    if let Some(c) = plan::address_conflicts(
        std::slice::from_ref(&spec),
        &nl.host_addrs().await?,
        &bridges,
    )
    .first()
    {
        bail!("{c}");
    }
    let uplinks = uplink_choice(&args.uplinks, &current_ifaces, &names);
    // Dry-run the role plan with the new bridge in place, so a bad uplink is
    // reported before anything changes.
    {
        let mut nets: BTreeMap<u32, u32> = existing
            .values()
            .filter_map(|s| {
                links
                    .iter()
                    .find(|l| l.name == s.bridge)
                    .map(|l| (l.index, 1))
            })
            .collect();
        nets.insert(bridge.map_or(u32::MAX, |b| b.index), 1);
        plan::plan_roles(&links, &nets, &uplinks)?;
    }

    if lock.is_none() {
        // First use on this machine: mount bpffs now that the input is valid.
        lock = state::lock(true)?;
    }
    let _lock = lock;
    let _hold = sys::HoldSignals::new();
    let mut report = UpReport {
        already_up: same_id.is_some(),
        ..Default::default()
    };
    let result = apply_up(
        &nl,
        &state,
        &spec,
        bridge.map(|b| b.index),
        same_id,
        &existing,
        &uplinks,
        args.option_flags(),
        &cgroup,
        &mut report,
    )
    .await;
    if let Err(err) = result {
        if same_id.is_none() {
            rollback_up(&nl, &state, &spec, &report, had_state).await;
        }
        return Err(err);
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn apply_up(
    nl: &Netlink,
    state: &StateDir,
    spec: &NetworkSpec,
    bridge_index: Option<u32>,
    same_id: Option<u32>,
    existing: &BTreeMap<u32, NetworkSpec>,
    uplinks: &Uplinks,
    option_flags: u32,
    cgroup: &std::path::Path,
    report: &mut UpReport,
) -> Result<()> {
    let index = match bridge_index {
        Some(i) => i,
        None => {
            let i = nl.create_bridge(&spec.bridge).await?;
            report.created_bridge = true;
            i
        }
    };
    nl.set_up(index).await?;
    let prefix = spec.subnet.prefix_len();
    if !nl.has_addr(index, spec.gateway, prefix).await? {
        nl.add_addr(index, spec.gateway, prefix).await?;
        report.added_gateway = true;
    }
    if !plumbing::ip_forward()? {
        plumbing::set_ip_forward(true)?;
        report.enabled_forwarding = true;
    }
    state.create()?;
    let mut dp = Datapath::load(state)?;
    // What this run created is netpath's to remove; an idempotent `up` that
    // had to re-create the bridge or the address adds to what it owned.
    let mut flags = 0;
    if report.created_bridge {
        flags |= net_flags::CREATED_BRIDGE;
    }
    if report.added_gateway {
        flags |= net_flags::ADDED_GATEWAY;
    }
    let net_id = match same_id {
        Some(id) => {
            let old = dp
                .maps
                .networks
                .get(&id, 0)
                .context("reading the existing network")?;
            flags |= old.flags & !OPTION_FLAGS;
            id
        }
        None => plan::next_network_id(existing.keys().copied(), netpath_common::MAX_NETWORKS)?,
    };
    flags |= option_flags;
    report.net_id = net_id;
    dp.maps
        .networks
        .insert(net_id, spec.to_info(index, flags), 0)
        .context("recording the network")?;
    dp.maps.add_subnet(spec.subnet, net_id)?;
    let (changes, detached) = reconcile(nl, state, &mut dp, uplinks).await?;
    report.changes = changes;
    report.detached = detached;
    report.socket_hooks = Some(crate::sockhooks::ensure(state, &mut dp, cgroup)?);
    Ok(())
}

/// Undoes a failed `up` of a new network, reporting (not returning) errors.
async fn rollback_up(
    nl: &Netlink,
    state: &StateDir,
    spec: &NetworkSpec,
    report: &UpReport,
    had_state: bool,
) {
    let mut errors = Vec::new();
    if state.exists() {
        match Maps::open(state) {
            Ok(mut maps) => {
                if report.net_id != 0 {
                    let _ = maps.networks.remove(&report.net_id);
                    let _ = maps.remove_subnet(spec.subnet);
                }
                let remaining = maps.networks().map(|n| n.len()).unwrap_or(0);
                if !had_state || remaining == 0 {
                    errors.extend(teardown_all_links(state, &mut maps));
                    drop(maps);
                    if let Err(e) = state.remove() {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if let Ok(Some(l)) = nl.link_by_name(&spec.bridge).await {
        if report.created_bridge {
            if let Err(e) = nl.delete_link(l.index).await {
                errors.push(e);
            }
        } else if report.added_gateway
            && let Err(e) = nl
                .del_addr(l.index, spec.gateway, spec.subnet.prefix_len())
                .await
        {
            errors.push(e);
        }
    }
    if report.enabled_forwarding
        && let Err(e) = plumbing::set_ip_forward(false)
    {
        errors.push(e);
    }
    for e in errors {
        eprintln!("netpath: while undoing the failed up: {e:#}");
    }
}

/// Brings attachments in line with the recorded networks: every managed
/// bridge, its ports and the uplinks run this build's programs; everything
/// else netpath attached earlier is detached. Returns what changed.
pub async fn reconcile(
    nl: &Netlink,
    state: &StateDir,
    dp: &mut Datapath,
    uplinks: &Uplinks,
) -> Result<(Vec<IfaceChange>, Vec<u32>)> {
    let links = nl.link_facts().await?;
    // A bridge recreated under the same name gets a new ifindex: follow the name.
    let mut nets = BTreeMap::new();
    for (id, mut info) in dp.maps.networks()? {
        let name = plan::ifname_from_bytes(&info.bridge_name);
        if let Some(l) = links.iter().find(|l| l.name == name) {
            if l.index != info.bridge_ifindex {
                info.bridge_ifindex = l.index;
                dp.maps.networks.insert(id, info, 0)?;
            }
            nets.insert(l.index, id);
        }
    }
    let planned = plan::plan_roles(&links, &nets, uplinks)?;
    sync_host_addrs(nl, &mut dp.maps).await?;
    let current = dp.maps.ifaces()?;
    // Ports `connect` made are bound to the address and MAC it gave out.
    let leased: BTreeMap<u32, (u32, [u8; 6])> = dp
        .maps
        .leases()?
        .into_iter()
        .map(|(k, l)| (l.host_ifindex, (k.addr_be, l.mac)))
        .collect();
    let mut changes = Vec::new();
    for (&ifindex, p) in &planned {
        let info = port_binding(p.info, current.get(&ifindex), leased.get(&ifindex));
        let role = IfaceRole::from_u32(p.info.role).context("planned role")?;
        if current.get(&ifindex) != Some(&info) {
            dp.maps
                .ifaces
                .insert(ifindex, info, 0)
                .context("recording an interface")?;
        }
        changes.push(IfaceChange {
            name: p.name.clone(),
            role,
            previous: current
                .get(&ifindex)
                .and_then(|i| IfaceRole::from_u32(i.role)),
            ingress: dp.ensure_attached(state, ifindex, &p.name, role, Dir::Ingress)?,
            egress: dp.ensure_attached(state, ifindex, &p.name, role, Dir::Egress)?,
        });
    }
    sync_endpoints(&mut dp.maps, &planned)?;
    let all = nl.links().await?;
    sync_vlans(&all, &mut dp.maps, &planned)?;
    sync_macs(&all, &mut dp.maps, &planned)?;
    let mut detached = Vec::new();
    for &ifindex in current.keys().filter(|i| !planned.contains_key(i)) {
        detach_iface(state, &mut dp.maps, ifindex)?;
        detached.push(ifindex);
    }
    // Pins of interfaces that are neither planned nor recorded (left by an
    // interrupted run).
    for (ifindex, _, path) in state.pinned_links()? {
        if !planned.contains_key(&ifindex) && path.exists() {
            sys::detach_pinned_link(&path)?;
        }
    }
    Ok((changes, detached))
}

/// Re-applies the recorded networks with the uplink choice in force.
pub(crate) async fn reapply(
    nl: &Netlink,
    state: &StateDir,
) -> Result<(Vec<IfaceChange>, Vec<u32>)> {
    let mut dp = Datapath::load(state)?;
    reapply_with(nl, state, &mut dp).await
}

/// [`reapply`] with programs already loaded (the daemon keeps them loaded,
/// which spares it the verifier on every event).
async fn reapply_with(
    nl: &Netlink,
    state: &StateDir,
    dp: &mut Datapath,
) -> Result<(Vec<IfaceChange>, Vec<u32>)> {
    let current = dp.maps.ifaces()?;
    let names = nl.names().await?;
    let uplinks = uplink_choice(&[], &current, &names);
    reconcile(nl, state, dp, &uplinks).await
}

/// What [`resize_conntrack`] did.
#[derive(Debug, Default)]
pub struct Resized {
    /// Flows the table held at most before and after.
    pub from: u32,
    pub to: u32,
    /// Entries copied into the new table, and those that did not fit.
    pub copied: usize,
    pub left_out: usize,
}

/// Where a resize keeps the old conntrack table until its flows are copied.
const OLD_CT4: &str = "NP_CT4_old";

/// `conntrack config --max FLOWS`: a new conntrack table that admits that
/// many flows (`ct::fill`), with the live flows in it. The pinned table is
/// moved aside, this build's programs are loaded against a new one and
/// pinned, the most recently active entries are copied (as many as the new
/// limit takes), every link switches to the new programs
/// (`BPF_LINK_UPDATE`, no gap), what the old table got meanwhile is copied
/// too, the old table goes, and the datapath's entry count is set.
pub async fn resize_conntrack(flows: u32) -> Result<Resized> {
    let _lock = state::lock(false)?;
    let _hold = sys::HoldSignals::new();
    let (state, _) = Maps::open_current()?;
    let nl = Netlink::new()?;
    repair_resize(&nl, &state).await?;
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
    // bpffs refuses dots in names.
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
    (out.copied, out.left_out) = finish_resize(&nl, &state, &mut dp).await?;
    Ok(out)
}

/// The second half of a resize, with the new table pinned and this
/// build's programs loaded against it: the old table's flows are copied
/// in, every link switches to the new programs, what the old table got
/// meanwhile is copied too, the old table goes and the entry count is
/// set. Returns (entries copied, entries left out).
async fn finish_resize(
    nl: &Netlink,
    state: &StateDir,
    dp: &mut Datapath,
) -> Result<(usize, usize)> {
    let maps_dir = state.maps_dir();
    let aside = maps_dir.join(OLD_CT4);
    let budget = fill::limit(Maps::ct_capacity(&maps_dir)?) as usize;
    let old: aya::maps::HashMap<_, netpath_common::ct::CtKey4, netpath_common::ct::CtEntry4> =
        aya::maps::HashMap::try_from(state::open_pinned(&maps_dir, OLD_CT4)?)?;
    let (copied, left_out) = copy_flows(&old, dp, budget)?;
    reapply_with(nl, state, dp).await?;
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
pub async fn repair_resize(nl: &Netlink, state: &StateDir) -> Result<bool> {
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
    finish_resize(nl, state, &mut dp).await?;
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

/// `network set BRIDGE --icc=… --gateway-mode=…`: changes a network's
/// options in place; the datapath reads them per packet, so live containers
/// follow at once (flows already admitted stay).
pub fn network_set(
    bridge: &str,
    icc: Option<bool>,
    gateway_mode: Option<GatewayMode>,
) -> Result<NetworkSpec> {
    let _lock = state::lock(false)?;
    let (_, mut maps) =
        Maps::open_current().map_err(|e| e.context(format!("no network on bridge {bridge}")))?;
    let (id, mut info) = maps
        .network_by_bridge(bridge)?
        .with_context(|| format!("no network on bridge {bridge}"))?;
    if let Some(icc) = icc {
        if icc {
            info.flags &= !net_flags::NO_ICC;
        } else {
            info.flags |= net_flags::NO_ICC;
        }
    }
    if let Some(m) = gateway_mode {
        info.flags = info.flags & !GatewayMode::MASK | m.flags();
    }
    maps.networks
        .insert(id, info, 0)
        .context("updating the network")?;
    Ok(NetworkSpec::from_info(&info))
}

/// What [`refresh`] changed.
#[derive(Debug, Default)]
pub struct RefreshReport {
    pub changes: Vec<IfaceChange>,
    pub detached: Vec<u32>,
    /// Host addresses that now overlap a managed subnet.
    pub conflicts: Vec<String>,
}

/// Host addresses (outside the managed bridges) whose subnet overlaps a
/// managed network, one line each.
pub async fn address_conflicts(nl: &Netlink, maps: &Maps) -> Result<Vec<String>> {
    let nets: Vec<NetworkSpec> = specs(maps)?.into_values().collect();
    let bridges = nets.iter().map(|n| n.bridge.clone()).collect();
    Ok(plan::address_conflicts(
        &nets,
        &nl.host_addrs().await?,
        &bridges,
    ))
}

/// Removes other builds' pinned programs (see
/// [`Datapath::prune_other_builds`]), under the state lock.
pub fn prune_other_builds() -> Result<usize> {
    let _lock = state::lock(false)?;
    let state = StateDir::current()?;
    if !state.exists() {
        return Ok(0);
    }
    Datapath::prune_other_builds(&state)
}

/// The daemon's re-apply after links or addresses changed: `Ok(None)` when
/// another command held the lock for two seconds (try again later).
pub async fn refresh(nl: &Netlink, loaded: &mut Option<Datapath>) -> Result<Option<RefreshReport>> {
    // Commands hold the lock for milliseconds: poll for it rather than
    // block, so the daemon keeps answering signals.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let _lock = loop {
        match state::try_lock()? {
            None => return Ok(None),
            Some(Some(l)) => break l,
            Some(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Some(None) => return Ok(None),
        }
    };
    let state = StateDir::current()?;
    if !state.exists() {
        return Ok(Some(RefreshReport::default()));
    }
    if repair_resize(nl, &state).await? {
        // The programs changed under the daemon's loaded ones.
        *loaded = None;
    }
    let dp = Datapath::current(&state, loaded, true)?
        .context("this build's programs could not be loaded")?;
    let (changes, detached) = reapply_with(nl, &state, dp).await?;
    let conflicts = address_conflicts(nl, &dp.maps).await?;
    Ok(Some(RefreshReport {
        changes,
        detached,
        conflicts,
    }))
}

/// Mirrors the namespace's IPv4 addresses into `NP_HOSTADDRS4` (what a
/// published port on "every host address" answers to) and records the
/// namespace's cookie for the socket hooks.
async fn sync_host_addrs(nl: &Netlink, maps: &mut Maps) -> Result<()> {
    let want: BTreeMap<u32, u32> = nl
        .ipv4_addrs()
        .await?
        .into_iter()
        .map(|a| (plan::be(a.addr), a.index))
        .collect();
    let have: BTreeMap<u32, u32> = maps
        .hostaddrs4
        .iter()
        .filter_map(std::result::Result::ok)
        .collect();
    for addr in have.keys().filter(|a| !want.contains_key(a)) {
        let _ = maps.hostaddrs4.remove(addr);
    }
    for (addr, index) in &want {
        if have.get(addr) != Some(index) {
            maps.hostaddrs4
                .insert(addr, index, 0)
                .context("recording a host address")?;
        }
    }
    let cookie = netns::cookie()?;
    let mut host = maps.host.get(&0, 0).context("reading NP_HOST")?;
    if host.netns_cookie != cookie {
        host.netns_cookie = cookie;
        maps.host.set(0, host, 0).context("writing NP_HOST")?;
    }
    Ok(())
}

/// Keeps `NP_ENDPOINTS4` (container address -> port, for the fast path) in
/// line with the ports' bindings. The datapath adds entries as ports learn;
/// this adds `connect`'s and removes those of ports that are gone or moved.
fn sync_endpoints(maps: &mut Maps, planned: &BTreeMap<u32, plan::Planned>) -> Result<()> {
    let ports = maps.ifaces()?;
    let bound = |i: &IfaceInfo| {
        i.role == IfaceRole::Port as u32
            && i.ipv4_be != 0
            && i.flags & (iface_flags::BOUND | iface_flags::LEARNED) != 0
    };
    let have: Vec<(u32, netpath_common::Endpoint)> = maps
        .endpoints4
        .iter()
        .filter_map(std::result::Result::ok)
        .collect();
    for (addr, ep) in &have {
        let keep = planned.contains_key(&ep.ifindex)
            && ports
                .get(&ep.ifindex)
                .is_some_and(|i| i.ipv4_be == 0 || i.ipv4_be == *addr);
        if !keep {
            let _ = maps.endpoints4.remove(addr);
        }
    }
    for (ifindex, info) in ports
        .iter()
        .filter(|(i, info)| planned.contains_key(i) && bound(info))
    {
        let ep = netpath_common::Endpoint {
            ifindex: *ifindex,
            net_id: info.net_id,
            mac: info.mac,
            _pad: [0; 2],
        };
        if !have.contains(&(info.ipv4_be, ep)) {
            maps.endpoints4
                .insert(info.ipv4_be, ep, 0)
                .context("recording an endpoint")?;
        }
    }
    Ok(())
}

/// Keeps `NP_VLANS` equal to the VLAN devices on uplinks: tagged frames
/// of those VLANs are the host's; an uplink drops every other tag.
fn sync_vlans(
    links: &[plumbing::Link],
    maps: &mut Maps,
    planned: &BTreeMap<u32, plan::Planned>,
) -> Result<()> {
    let uplink = |i: u32| {
        planned
            .get(&i)
            .is_some_and(|p| p.info.role == IfaceRole::Uplink as u32)
    };
    let want: std::collections::BTreeSet<netpath_common::VlanKey> = links
        .iter()
        .filter_map(|l| {
            let (lower, vid) = (l.peer?, l.vlan_id?);
            uplink(lower).then_some(netpath_common::VlanKey {
                ifindex: lower,
                vid,
                _pad: 0,
            })
        })
        .collect();
    let have: Vec<netpath_common::VlanKey> = maps
        .vlans
        .keys()
        .filter_map(std::result::Result::ok)
        .collect();
    for k in have.iter().filter(|k| !want.contains(k)) {
        let _ = maps.vlans.remove(k);
    }
    for k in want.iter().filter(|k| !have.contains(k)) {
        maps.vlans.insert(k, 1, 0).context("recording a VLAN")?;
    }
    Ok(())
}

/// Keeps `NP_MACS` equal to the MACs no port may borrow: bound or learned
/// ports' and managed bridges'.
fn sync_macs(
    links: &[plumbing::Link],
    maps: &mut Maps,
    planned: &BTreeMap<u32, plan::Planned>,
) -> Result<()> {
    let key = |mac: [u8; 6]| netpath_common::MacKey { mac, _pad: [0; 2] };
    let mut want: BTreeMap<netpath_common::MacKey, u32> = BTreeMap::new();
    for (ifindex, info) in maps.ifaces()? {
        let bound = info.flags & (iface_flags::BOUND | iface_flags::LEARNED) != 0;
        if info.role == IfaceRole::Port as u32 && bound && planned.contains_key(&ifindex) {
            want.insert(key(info.mac), ifindex);
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
    let have: BTreeMap<netpath_common::MacKey, u32> = maps
        .macs
        .iter()
        .filter_map(std::result::Result::ok)
        .collect();
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        let _ = maps.macs.remove(k);
    }
    for (k, v) in &want {
        if have.get(k) != Some(v) {
            maps.macs.insert(k, v, 0).context("recording a MAC")?;
        }
    }
    Ok(())
}

/// A port keeps what it is bound to: the lease `connect` made, or what the
/// datapath learnt while it stays a port of the same network.
fn port_binding(
    mut info: IfaceInfo,
    current: Option<&IfaceInfo>,
    lease: Option<&(u32, [u8; 6])>,
) -> IfaceInfo {
    if info.role != IfaceRole::Port as u32 {
        return info;
    }
    if let Some(&(addr, mac)) = lease {
        info.ipv4_be = addr;
        info.mac = mac;
        info.flags |= iface_flags::BOUND;
    } else if let Some(cur) = current
        && cur.role == info.role
        && cur.net_id == info.net_id
        && cur.flags & iface_flags::LEARNED != 0
    {
        info.ipv4_be = cur.ipv4_be;
        info.mac = cur.mac;
        info.flags |= iface_flags::LEARNED;
    }
    info
}

fn detach_iface(state: &StateDir, maps: &mut Maps, ifindex: u32) -> Result<()> {
    for dir in Dir::BOTH {
        let pin = state.link_pin(ifindex, dir);
        if pin.exists() {
            sys::detach_pinned_link(&pin)?;
        }
    }
    match maps.ifaces.remove(&ifindex) {
        Ok(()) => {}
        Err(e) if state::is_missing(&e) => {}
        Err(e) => return Err(e).context("forgetting an interface"),
    }
    maps.remove_counters(counter_scope::IFACE, ifindex)
}

/// Detaches every link and forgets every interface, carrying on past errors.
fn teardown_all_links(state: &StateDir, maps: &mut Maps) -> Vec<anyhow::Error> {
    let mut errors = crate::sockhooks::detach_all(state);
    let mut ifindexes: Vec<u32> = maps
        .ifaces()
        .map(|m| m.into_keys().collect())
        .unwrap_or_default();
    if let Ok(pins) = state.pinned_links() {
        ifindexes.extend(pins.into_iter().map(|(i, _, _)| i));
    }
    ifindexes.sort_unstable();
    ifindexes.dedup();
    for i in ifindexes {
        if let Err(e) = detach_iface(state, maps, i) {
            errors.push(e);
        }
    }
    errors
}

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
    let victims: Vec<(u32, netpath_common::NetworkInfo)> = match target {
        DownTarget::Bridge(b) => {
            let found = networks
                .iter()
                .find(|(_, i)| plan::ifname_from_bytes(&i.bridge_name) == *b)
                .with_context(|| format!("no network on bridge {b}"))?;
            vec![(*found.0, *found.1)]
        }
        DownTarget::All => networks.iter().map(|(k, v)| (*k, *v)).collect(),
    };
    let mut errors: Vec<anyhow::Error> = Vec::new();
    // Containers `connect` plugged into these networks are unplugged (their
    // veths are netpath's); the namespaces themselves stay. Every lease goes.
    let victim_ids: Vec<u32> = victims.iter().map(|(id, _)| *id).collect();
    for (key, lease) in maps.leases().unwrap_or_default() {
        if victim_ids.contains(&key.net_id) {
            // dockerd's veths (leases of `netpath docker`) stay dockerd's.
            let ours = lease.flags == u32::from(netpath_common::owner::USER);
            if ours
                && let Err(e) = nl.delete_link(lease.host_ifindex).await
                && nl
                    .names()
                    .await
                    .is_ok_and(|n| n.contains_key(&lease.host_ifindex))
            {
                errors.push(e);
            }
            if let Err(e) = maps.leases4.remove(&key) {
                errors.push(anyhow::Error::new(e).context("forgetting a lease"));
            }
        }
    }
    for (id, info) in &victims {
        if let Err(e) = maps.networks.remove(id) {
            errors.push(anyhow::Error::new(e).context("forgetting the network"));
        }
        if let Err(e) = maps.remove_subnet(NetworkSpec::from_info(info).subnet) {
            errors.push(e);
        }
        if let Err(e) = crate::publish::remove_network(&mut maps, *id) {
            errors.push(e);
        }
        if let Err(e) = crate::filter::remove_network(&mut maps, *id) {
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
    }
    if remaining == 0 {
        errors.extend(teardown_all_links(&state, &mut maps));
        drop(maps);
        match state.remove() {
            Ok(()) => report.unpinned_all = true,
            Err(e) => errors.push(e),
        }
    } else {
        // Other networks stay: re-plan (the downed bridge's ports lose their
        // role, a kept bridge may become an uplink by the default rule).
        drop(maps);
        if let Err(e) = reapply(&nl, &state).await {
            errors.push(e);
        }
    }
    for (_, info) in &victims {
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
        } else if info.flags & net_flags::ADDED_GATEWAY != 0 {
            nl.del_addr(link.index, spec.gateway, spec.subnet.prefix_len())
                .await
        } else {
            Ok(())
        };
        if let Err(e) = res {
            errors.push(e);
        }
    }
    combine(errors)?;
    Ok(report)
}

/// One error carrying every message, or Ok when there were none.
pub fn combine(errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one error")),
        n => bail!(
            "{n} errors: {}",
            errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}
