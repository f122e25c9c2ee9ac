//! `up` and `network set`: validate everything first, then apply; undo what
//! was applied when a later step fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use netpath_common::{GatewayMode, net_flags};

use crate::{
    attach::Datapath,
    net6::Net6Spec,
    peers,
    plan::{self, Uplinks},
    plumbing::{self, Netlink, View},
    reconcile::{self, IfaceChange},
    resize,
    spec::{NetworkOptions, NetworkSpec, validate_ifname},
    state::{self, Maps, StateDir},
    sys,
    tables::Table as _,
    trusted,
};

/// What `netpath up` (and `netpath docker`, and later the CNI plugin) asks
/// for: typed and validated at the edge.
#[derive(Clone, Debug)]
pub struct UpArgs {
    pub spec: NetworkSpec,
    /// The network's IPv6 half (a dual-stack network), if any.
    pub v6: Option<Net6Spec>,
    pub options: NetworkOptions,
    /// Uplinks to use instead of the recorded or automatic choice.
    pub uplinks: Vec<String>,
    /// cgroup v2 directory for the socket hooks; `None`: the cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    /// Trusted host interfaces (see [`crate::trusted`]); replaces the
    /// network's set.
    pub trusted: Vec<String>,
    /// Peer CIDRs (see [`crate::peers`]); replaces the network's set.
    pub no_masquerade_to: Vec<ipnet::Ipv4Net>,
}

impl UpArgs {
    /// Whether the network is up exactly like this already (bridge, subnet,
    /// gateway and options), so `up` would change nothing but attachments.
    pub fn is_recorded(&self, maps: &Maps) -> Result<bool> {
        let Some((id, info)) = maps.network_by_bridge(&self.spec.bridge)? else {
            return Ok(false);
        };
        let mut trusted = self.trusted.clone();
        trusted.sort();
        let mut peers = self.no_masquerade_to.clone();
        peers.sort();
        Ok(NetworkSpec::from_info(&info) == self.spec
            && maps.v6.spec(id)? == self.v6
            && info.flags & NetworkOptions::MASK == self.options.flags()
            && trusted::names_of(&maps.trusted.entries()?, id) == trusted
            && peers::of(&peers::all(&maps.peers4)?, id) == peers)
    }
}

/// What `up` did, for the user.
#[derive(Debug, Default)]
pub struct UpReport {
    pub net_id: u32,
    pub created_bridge: bool,
    pub added_gateway: bool,
    /// The IPv6 gateway was added to the bridge.
    pub added_gateway6: bool,
    pub enabled_forwarding: bool,
    pub enabled_forwarding6: bool,
    pub already_up: bool,
    pub changes: Vec<IfaceChange>,
    pub detached: Vec<u32>,
    pub socket_hooks: Option<crate::sockhooks::Hooks>,
}

/// What `up` found and decided before changing anything.
struct Checked {
    bridge_index: Option<u32>,
    /// The network's id when it is up already (an idempotent `up`).
    same_id: Option<u32>,
    existing: BTreeMap<u32, NetworkSpec>,
    uplinks: Uplinks,
    /// `None`: where the hooks are already, else the cgroup v2 root.
    cgroup: Option<PathBuf>,
}

/// `netpath up`: one network.
pub async fn up(args: &UpArgs) -> Result<UpReport> {
    up_many(std::slice::from_ref(args))
        .await?
        .pop()
        .context("no result for the network")?
}

/// Brings networks up under one lock, with one reconcile and one
/// socket-hook check for all of them (`netpath docker` brings up every
/// dockerd network it finds this way). Each network is checked, then
/// recorded, before the next is looked at; one that fails is undone and
/// reported in its slot while the others carry on. When the final
/// reconcile fails, every network this call created is undone and each
/// slot reports the failure. The outer error is for what stops the whole
/// batch (the lock, netlink).
pub async fn up_many(batch: &[UpArgs]) -> Result<Vec<Result<UpReport>>> {
    // Held from here on whenever state can exist (bpffs mounted).
    let mut lock = state::lock(false)?;
    let nl = Netlink::new()?;
    let state = StateDir::current()?;
    if state.exists() {
        resize::repair(&nl, &state).await?;
    }
    let mut out: Vec<Result<UpReport>> = Vec::with_capacity(batch.len());
    // Networks this call created: (slot, spec, whether state existed before).
    let mut created: Vec<(usize, &UpArgs, bool)> = Vec::new();
    let mut dp: Option<Datapath> = None;
    let mut last: Option<Checked> = None;
    let mut hold = None;
    // Links and addresses, read once for the batch and kept up to date
    // with what it adds (see `plumbing::View`).
    let mut view = View::read(&nl).await?;
    for args in batch {
        // The maps the batch loaded, once it has (opening them costs a
        // system call per map).
        let opened;
        let maps = match &dp {
            Some(dp) => Some(&dp.maps),
            None if state.exists() => match Maps::open(&state) {
                Ok(m) => {
                    opened = m;
                    Some(&opened)
                }
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            },
            None => None,
        };
        let checked = match check(&view, maps, args) {
            Ok(c) => c,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        if lock.is_none() {
            // First use on this machine: mount bpffs now that the input is valid.
            lock = state::lock(true)?;
        }
        hold.get_or_insert_with(sys::HoldSignals::new);
        let had_state = state.exists();
        let mut report = UpReport {
            already_up: checked.same_id.is_some(),
            ..Default::default()
        };
        match record(&nl, &mut view, &state, &mut dp, args, &checked, &mut report).await {
            Ok(()) => {
                if checked.same_id.is_none() {
                    created.push((out.len(), args, had_state));
                }
                out.push(Ok(report));
                last = Some(checked);
            }
            Err(e) => {
                if checked.same_id.is_none() {
                    rollback(&nl, &state, args, &report, had_state).await;
                }
                out.push(Err(e));
                // A rollback that removed the state took the maps `dp`
                // holds with it: the next network loads them afresh.
                if !state.exists() {
                    dp = None;
                }
                // What the rollback removed (or a half-made change the view
                // did not see) must not stay in the view for the next ones.
                // Should the re-read fail, the old view can only make later
                // checks stricter or their changes fail, never pass wrongly.
                if let Ok(v) = View::read(&nl).await {
                    view = v;
                }
            }
        }
    }
    let (Some(dp), Some(last)) = (dp.as_mut(), last) else {
        return Ok(out);
    };
    // The batch's networks are asked about whole (repeating `up` repairs a
    // network); the others only where something changed.
    let nets = out.iter().flatten().map(|r| r.net_id).collect();
    let finished = async {
        let verify = reconcile::Verify::Changed {
            nets,
            ifaces: BTreeSet::new(),
        };
        let r = reconcile::reconcile(&nl, &state, dp, &last.uplinks, &verify, Some(&view)).await?;
        let hooks = crate::sockhooks::ensure(&state, dp, last.cgroup.as_deref())?;
        anyhow::Ok((r, hooks))
    }
    .await;
    match finished {
        Ok((r, hooks)) => {
            for report in out.iter_mut().flatten() {
                report.changes.clone_from(&r.changes);
                report.detached.clone_from(&r.detached);
                report.socket_hooks = Some(hooks);
            }
        }
        Err(e) => {
            let why = format!("{e:#}");
            let mut e = Some(e);
            for (slot, args, had_state) in created.iter().rev() {
                if let Some(Ok(report)) = out.get(*slot) {
                    rollback(&nl, &state, args, report, *had_state).await;
                }
            }
            for slot in out.iter_mut().filter(|r| r.is_ok()) {
                *slot = Err(e.take().unwrap_or_else(|| anyhow::anyhow!("{why}")));
            }
        }
    }
    drop(lock);
    Ok(out)
}

/// The checking half of `up`, against the links and addresses in `view`:
/// nothing changes.
fn check(view: &View, maps: Option<&Maps>, args: &UpArgs) -> Result<Checked> {
    let spec = &args.spec;
    if spec.v4.is_none() && args.v6.is_none() {
        bail!(
            "network {} needs a subnet (IPv4, IPv6 or one of each)",
            spec.bridge
        );
    }
    for u in &args.uplinks {
        validate_ifname(u)?;
    }
    trusted::validate(&args.trusted)?;
    peers::validate(&args.no_masquerade_to)?;
    let (existing, current_ifaces) = match maps {
        Some(maps) => (reconcile::network_specs(maps)?, maps.ifaces()?),
        None => (BTreeMap::new(), BTreeMap::new()),
    };
    let same_id = plan::check_against_existing(spec, &existing)?;
    if let Some(maps) = maps {
        check_v6_against_existing(args, same_id, maps)?;
    }
    let cgroup = args.cgroup.clone();
    match &cgroup {
        Some(p) => crate::sockhooks::check_cgroup(p)?,
        None => crate::sockhooks::check_cgroup(&crate::sockhooks::cgroup2_root()?)?,
    }
    let links = view.facts();
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
    let host = view.host_addrs();
    if let Some(c) = plan::address_conflicts(std::slice::from_ref(spec), &host.v4, &bridges).first()
    {
        bail!("{c}");
    }
    if let Some(v6) = &args.v6 {
        if let Some(c) =
            plan::address_conflicts6(&v6.subnet, &spec.bridge, &host.v6, &bridges).first()
        {
            bail!("{c}");
        }
        check_ipv6_enabled(&spec.bridge, bridge.is_some())?;
    }
    let uplinks = reconcile::uplink_choice(&args.uplinks, &current_ifaces, &names);
    // Dry-run the role plan with the new bridge in place, so a bad uplink is
    // reported before anything changes.
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
    Ok(Checked {
        bridge_index: bridge.map(|b| b.index),
        same_id,
        existing,
        uplinks,
        cgroup,
    })
}

/// An IPv6 subnet may not overlap another network's, and a network up
/// already keeps its IPv6 half as it is (as its IPv4 subnet): its ports'
/// bindings and its containers' addresses were made from it.
fn check_v6_against_existing(args: &UpArgs, same_id: Option<u32>, maps: &Maps) -> Result<()> {
    let bridge = &args.spec.bridge;
    if let Some(id) = same_id {
        let had = maps.v6.spec(id)?;
        if had != args.v6 {
            let was = had.map_or_else(
                || "without an IPv6 subnet".to_owned(),
                |h| format!("with IPv6 subnet {h}"),
            );
            bail!(
                "network {bridge} is already up {was}; run `netpath down --bridge {bridge}` first"
            );
        }
    }
    let Some(v6) = &args.v6 else {
        return Ok(());
    };
    for (id, info) in maps.v6.all()? {
        let other = Net6Spec::from_info(&info)?;
        if Some(id) != same_id && crate::net6::overlaps(&other.subnet, &v6.subnet) {
            bail!(
                "subnet {} overlaps {} of another network",
                v6.subnet,
                other.subnet
            );
        }
    }
    Ok(())
}

/// IPv6 on the bridge (or, for one `up` creates, on new interfaces) must
/// not be turned off: the gateway could not be added.
fn check_ipv6_enabled(bridge: &str, exists: bool) -> Result<()> {
    let conf = Path::new("/proc/sys/net/ipv6/conf");
    if !conf.exists() {
        bail!(
            "IPv6 is not available in this namespace (no /proc/sys/net/ipv6): leave out the IPv6 subnet"
        );
    }
    let which = if exists { bridge } else { "default" };
    let path = conf.join(which).join("disable_ipv6");
    let off =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if off.trim() != "0" {
        bail!(
            "IPv6 is disabled on {} (net.ipv6.conf.{which}.disable_ipv6={}): enable it or leave out the IPv6 subnet",
            if exists { bridge } else { "new interfaces" },
            off.trim()
        );
    }
    Ok(())
}

/// The changing half of `up` for one network, up to its record (the
/// reconcile comes once per batch); `report` says what it did so far.
/// `dp` is loaded on first use and kept for the batch.
async fn record(
    nl: &Netlink,
    view: &mut View,
    state: &StateDir,
    dp: &mut Option<Datapath>,
    args: &UpArgs,
    c: &Checked,
    report: &mut UpReport,
) -> Result<()> {
    let spec = &args.spec;
    let index = match c.bridge_index {
        Some(i) => i,
        None => {
            let bridge = nl.create_bridge(&spec.bridge).await?;
            report.created_bridge = true;
            let i = bridge.index;
            view.put_link(bridge);
            i
        }
    };
    nl.set_up(index).await?;
    // An IPv6-only network leaves the bridge without an IPv4 address and
    // IPv4 forwarding as it is.
    if let Some(v4) = spec.v4 {
        let prefix = v4.subnet.prefix_len();
        if !view.has_ip(index, v4.gateway.into(), prefix) {
            nl.add_addr(index, v4.gateway, prefix).await?;
            view.put_addr(index, v4.gateway.into(), prefix);
            report.added_gateway = true;
        }
        if !plumbing::ip_forward()? {
            plumbing::set_ip_forward(true)?;
            report.enabled_forwarding = true;
        }
    }
    state.create()?;
    let dp = match dp {
        Some(dp) => dp,
        None => dp.insert(Datapath::load(state)?),
    };
    // What this run created is netpath's to remove; an idempotent `up` that
    // had to re-create the bridge or the address adds to what it owned.
    let mut flags = 0;
    if report.created_bridge {
        flags |= net_flags::CREATED_BRIDGE;
    }
    if report.added_gateway {
        flags |= net_flags::ADDED_GATEWAY;
    }
    let net_id = match c.same_id {
        Some(id) => {
            let old = dp
                .maps
                .networks
                .get(&id, 0)
                .context("reading the existing network")?;
            flags |= old.flags & !NetworkOptions::MASK;
            id
        }
        None => plan::next_network_id(c.existing.keys().copied(), netpath_common::MAX_NETWORKS)?,
    };
    flags |= args.options.flags();
    report.net_id = net_id;
    dp.maps
        .networks
        .insert(net_id, spec.to_info(index, flags), 0)
        .context("recording the network")?;
    if let Some(subnet) = spec.subnet() {
        dp.maps.add_subnet(subnet, net_id)?;
    }
    let index_of = view
        .links
        .iter()
        .map(|l| (l.name.clone(), l.index))
        .collect();
    trusted::set(&mut dp.maps.trusted, net_id, &args.trusted, &index_of)?;
    peers::set(&mut dp.maps.peers4, net_id, &args.no_masquerade_to)?;
    record_v6(
        nl,
        view,
        &mut dp.maps,
        net_id,
        index,
        args.v6.as_ref(),
        report,
    )
    .await
}

/// The IPv6 half of `record`: the gateway on the bridge, forwarding, the
/// record. A network up already keeps its IPv6 half (`check` refuses a
/// change), and whether netpath added its gateway.
async fn record_v6(
    nl: &Netlink,
    view: &mut View,
    maps: &mut Maps,
    net_id: u32,
    bridge: u32,
    v6: Option<&Net6Spec>,
    report: &mut UpReport,
) -> Result<()> {
    let Some(v6) = v6 else {
        return Ok(());
    };
    let prefix = v6.subnet.prefix_len();
    let added = netpath_common::v6::net6_flags::ADDED_GATEWAY;
    let mut flags = maps.v6.network(net_id)?.map_or(0, |old| old.flags & added);
    if !view.has_ip(bridge, v6.gateway.into(), prefix) {
        nl.add_addr(bridge, v6.gateway, prefix).await?;
        view.put_addr(bridge, v6.gateway.into(), prefix);
        report.added_gateway6 = true;
        flags |= added;
    }
    if !plumbing::ip6_forward()? {
        plumbing::set_ip6_forward(true)?;
        report.enabled_forwarding6 = true;
    }
    maps.v6.record(net_id, v6, flags)
}

/// Undoes a failed `up` of a new network, reporting (not returning) errors.
async fn rollback(
    nl: &Netlink,
    state: &StateDir,
    args: &UpArgs,
    report: &UpReport,
    had_state: bool,
) {
    let spec = &args.spec;
    let mut errors = Vec::new();
    if state.exists() {
        match Maps::open(state) {
            Ok(mut maps) => {
                if report.net_id != 0 {
                    let _ = maps.networks.remove(&report.net_id);
                    if let Some(subnet) = spec.subnet() {
                        let _ = maps.remove_subnet(subnet);
                    }
                    if let Err(e) = maps.v6.forget(report.net_id) {
                        errors.push(e);
                    }
                }
                let remaining = maps.networks().map(|n| n.len()).unwrap_or(0);
                if !had_state || remaining == 0 {
                    errors.extend(reconcile::teardown_all_links(state, &mut maps));
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
        } else {
            if let (true, Some(v4)) = (report.added_gateway, spec.v4)
                && let Err(e) = nl
                    .del_addr(l.index, v4.gateway, v4.subnet.prefix_len())
                    .await
            {
                errors.push(e);
            }
            if let (true, Some(v6)) = (report.added_gateway6, &args.v6)
                && let Err(e) = nl
                    .del_addr(l.index, v6.gateway, v6.subnet.prefix_len())
                    .await
            {
                errors.push(e);
            }
        }
    }
    if report.enabled_forwarding
        && let Err(e) = plumbing::set_ip_forward(false)
    {
        errors.push(e);
    }
    if report.enabled_forwarding6
        && let Err(e) = plumbing::set_ip6_forward(false)
    {
        errors.push(e);
    }
    for e in errors {
        tracing::error!("while undoing the failed up: {e:#}");
    }
}

/// Removes other builds' pinned programs (see
/// [`Datapath::prune_other_builds`]), under the state lock: once `up`
/// replaced their daemon, nothing needs them.
pub fn prune_other_builds() -> Result<usize> {
    let _lock = state::lock(false)?;
    let state = StateDir::current()?;
    if !state.exists() {
        return Ok(0);
    }
    Datapath::prune_other_builds(&state)
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
