//! `netpath apply -f FILE` and `netpath export`: the I/O around
//! `config_file` (the file) and `config_plan` (what changes). `apply`
//! reads the state, plans and checks everything under the state lock, and
//! only then changes anything, still under that lock (the commands it
//! runs, `down`, `up`, `publish`, take it again, which is reentrant).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use netpath_common::{net_flags, owner};

use crate::{
    attach::Datapath,
    codec,
    config_file::{self, Desired, Exported},
    config_plan::{self, Current, NetChange, Plan},
    conntrack,
    down::{self, DownTarget},
    filter,
    net6::Net6Spec,
    plan::{self, Uplinks},
    plumbing::Netlink,
    publish::{self, Ports},
    reconcile,
    spec::{NetworkOptions, NetworkSpec},
    state::{self, Maps, StateDir},
    sys,
    up::{self, UpArgs},
};

/// What `apply` did.
#[derive(Debug, Default)]
pub struct Applied {
    /// One line per change; empty: no changes.
    pub lines: Vec<String>,
    /// Whether any network is up afterwards (the daemon should run).
    pub networks_left: bool,
}

/// The state a file is compared with.
async fn current(nl: &Netlink, state: &StateDir) -> Result<Current> {
    let bridges: Vec<String> = if state.exists() {
        Maps::open(state)?
            .networks()?
            .values()
            .map(|i| codec::ifname_from_bytes(&i.bridge_name))
            .collect()
    } else {
        Vec::new()
    };
    let host = nl.host_addrs().await?;
    let host_addrs = host
        .v4
        .into_iter()
        .filter(|a| !bridges.contains(&a.ifname))
        .map(|a| a.addr)
        .collect();
    let host_addrs6 = host
        .v6
        .into_iter()
        .filter(|a| !bridges.contains(&a.ifname) && !a.addr.is_unicast_link_local())
        .map(|a| a.addr)
        .collect();
    if !state.exists() {
        return Ok(Current {
            host_addrs,
            host_addrs6,
            ..Default::default()
        });
    }
    let maps = Maps::open(state)?;
    let uplinks = match reconcile::uplink_choice(&[], &maps.ifaces()?, &nl.names().await?) {
        Uplinks::Explicit(v) => v,
        Uplinks::Auto => Vec::new(),
    };
    let networks6 = maps
        .v6
        .all()?
        .iter()
        .map(|(id, i)| Ok((*id, Net6Spec::from_info(i)?)))
        .collect::<Result<_>>()?;
    Ok(Current {
        networks: maps.networks()?,
        networks6,
        published: maps.published()?,
        published6: publish::v6::published(&maps)?,
        rules: filter::owned_rules(&maps)?,
        leases: maps.leases()?,
        host_addrs,
        host_addrs6,
        uplinks,
    })
}

/// The checks `up` makes against the links and addresses, made for every
/// network to bring up before any is, so a bad one stops the whole file.
async fn check_links(nl: &Netlink, d: &Desired, plan: &Plan, cur: &Current) -> Result<()> {
    let links = nl.links().await?;
    let mut bridges: std::collections::BTreeSet<String> =
        d.networks.iter().map(|n| n.spec.bridge.clone()).collect();
    bridges.extend(
        cur.networks
            .values()
            .map(|i| codec::ifname_from_bytes(&i.bridge_name)),
    );
    let host = nl.host_addrs().await?;
    let addrs = host.v4.clone();
    for c in &plan.networks {
        let (NetChange::Create(decl) | NetChange::Recreate { decl, .. }) = c else {
            continue;
        };
        let b = &decl.spec.bridge;
        if let Some(l) = links.iter().find(|l| l.name == *b)
            && l.kind.as_deref() != Some("bridge")
        {
            return Err(d
                .error(Some(decl.at), format!("{b} exists and is not a bridge"))
                .into());
        }
        let mut conflicts =
            plan::address_conflicts(std::slice::from_ref(&decl.spec), &addrs, &bridges);
        if let Some(v6) = &decl.v6 {
            conflicts.extend(plan::address_conflicts6(&v6.subnet, b, &host.v6, &bridges));
        }
        if let Some(c) = conflicts.first() {
            return Err(d.error(Some(decl.at), c.clone()).into());
        }
    }
    // New uplinks: the role plan `up` would make, dry-run with every
    // network of the file and of the namespace in place (a name that is no
    // interface, a bridge port, a managed bridge…), before anything goes.
    if let (Some(u), Some((_, at))) = (&plan.uplinks, &d.uplinks) {
        let facts = nl.link_facts().await?;
        let mut nets: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
        for (i, b) in bridges.iter().enumerate() {
            // A bridge still to be created gets an index no link has.
            let index = facts
                .iter()
                .find(|l| l.name == *b)
                .map_or(u32::MAX - i as u32, |l| l.index);
            nets.insert(index, 1);
        }
        if let Err(e) = plan::plan_roles(&facts, &nets, &Uplinks::Explicit(u.clone())) {
            return Err(d.error(Some(*at), format!("{e:#}")).into());
        }
    }
    Ok(())
}

/// `apply -f FILE`: brings the namespace to the file in one locked step.
pub async fn apply(d: &Desired, cgroup: Option<PathBuf>) -> Result<Applied> {
    let mut lock = state::lock(false)?;
    let nl = Netlink::new()?;
    let state = StateDir::current()?;
    let cur = current(&nl, &state).await?;
    let plan = config_plan::plan(d, &cur)?;
    check_links(&nl, d, &plan, &cur).await?;
    let mut out = Applied {
        lines: plan.lines(),
        networks_left: !cur.networks.is_empty(),
    };
    if plan.is_empty() {
        return Ok(out);
    }
    if lock.is_none() {
        // First use on this machine: mount bpffs now that the file is valid.
        lock = state::lock(true)?;
    }
    let _hold = sys::HoldSignals::new();
    let carried = carry_out(&nl, &state, d, &plan, &cur, cgroup).await;
    drop(lock);
    carried.context("applying the file failed part way; what came before is applied (apply again once it is fixed)")?;
    out.networks_left = state.exists() && !Maps::open(&state)?.networks()?.is_empty();
    Ok(out)
}

async fn carry_out(
    nl: &Netlink,
    state: &StateDir,
    d: &Desired,
    plan: &Plan,
    cur: &Current,
    cgroup: Option<PathBuf>,
) -> Result<()> {
    // Networks that go, or go down to come back: their ports (enslaved
    // interfaces) go back onto the new bridge when `down` deletes it.
    let mut replug: Vec<(String, Vec<u32>)> = Vec::new();
    for c in &plan.networks {
        let bridge = match c {
            NetChange::Remove(b) => b,
            NetChange::Recreate { decl, .. } => {
                let b = &decl.spec.bridge;
                if let Some(br) = nl.link_by_name(b).await? {
                    let ports = nl
                        .links()
                        .await?
                        .into_iter()
                        .filter(|l| l.master == Some(br.index))
                        .map(|l| l.index)
                        .collect();
                    replug.push((b.clone(), ports));
                }
                b
            }
            _ => continue,
        };
        down::down(&DownTarget::Bridge(bridge.clone()))
            .await
            .with_context(|| format!("taking network {bridge} down"))?;
    }
    let uplinks = plan.uplinks.clone().unwrap_or_default();
    let mut batch: Vec<UpArgs> = plan
        .networks
        .iter()
        .filter_map(|c| match c {
            NetChange::Create(decl) | NetChange::Recreate { decl, .. } => Some(UpArgs {
                v6: decl.v6,
                spec: decl.spec.clone(),
                options: decl.options,
                uplinks: uplinks.clone(),
                cgroup: cgroup.clone(),
                // The file has no key for them (yet): none.
                trusted: Vec::new(),
                no_masquerade_to: Vec::new(),
            }),
            _ => None,
        })
        .collect();
    if batch.is_empty() && !uplinks.is_empty() {
        // New uplinks and no network to bring up: `up` of one that is up,
        // as it is recorded, sets them.
        if let Some((id, info)) = cur.networks.iter().find(|(_, i)| {
            d.networks
                .iter()
                .any(|n| n.spec.bridge == codec::ifname_from_bytes(&i.bridge_name))
        }) {
            // Its trusted interfaces as they are (`up` replaces the set).
            let maps = Maps::open(state)?;
            let entries = crate::tables::Table::entries(&maps.trusted)?;
            batch.push(UpArgs {
                v6: maps.v6.spec(*id)?,
                spec: NetworkSpec::from_info(info),
                options: NetworkOptions::from_flags(info.flags),
                uplinks: uplinks.clone(),
                cgroup: cgroup.clone(),
                trusted: crate::trusted::names_of(&entries, *id),
                no_masquerade_to: crate::peers::of(&crate::peers::all(&maps.peers4)?, *id),
            });
        }
    }
    if !batch.is_empty() {
        for (a, r) in batch.iter().zip(up::up_many(&batch).await?) {
            r.with_context(|| format!("bringing network {} up", a.spec.bridge))?;
        }
    }
    for (bridge, ports) in &replug {
        let Some(br) = nl.link_by_name(bridge).await? else {
            continue;
        };
        let alive = nl.names().await?;
        for p in ports.iter().filter(|p| alive.contains_key(p)) {
            nl.enslave_up(*p, br.index).await?;
        }
        if !ports.is_empty() {
            // The ports were plugged after the up: plan them in now.
            reconcile::reapply(nl, state).await?;
        }
    }
    for c in &plan.networks {
        if let NetChange::Set { decl, flush, .. } = c {
            set_options(&decl.spec.bridge, decl.options, *flush)?;
        }
    }
    let (synced, synced6) =
        publish::sync_owned_both(owner::APPLY, &plan.want_ports, &plan.want_ports6)?;
    if let Some((p, why)) = synced.failed.first() {
        anyhow::bail!("publishing {p}: {why}");
    }
    if let Some((p, why)) = synced6.failed.first() {
        anyhow::bail!("publishing {p}: {why}");
    }
    let (_, mut maps) = Maps::open_current()?;
    let mine: Vec<_> = filter::owned_rules(&maps)?
        .into_iter()
        .filter(|(_, _, o)| *o == owner::APPLY)
        .map(|(s, v, _)| (s, v))
        .collect();
    for r in mine.iter().filter(|r| !plan.want_rules.contains(r)) {
        filter::delete_from(&mut maps, &r.0)?;
    }
    for (s, v) in plan.want_rules.iter().filter(|r| !mine.contains(r)) {
        filter::add_to(&mut maps, s, *v, owner::APPLY)
            .with_context(|| format!("adding filter rule {s} {}", v.as_str()))?;
    }
    Ok(())
}

/// Changes a network's options in place (as `network set` does for icc and
/// the gateway mode: the datapath reads them per new flow); `flush`: its
/// flows go, so none keeps what masquerade or internal no longer allow.
fn set_options(bridge: &str, options: NetworkOptions, flush: bool) -> Result<()> {
    let _lock = state::lock(false)?;
    let (_, mut dp) = Datapath::open_current()?;
    let (id, mut info) = dp
        .maps
        .network_by_bridge(bridge)?
        .with_context(|| format!("no network on bridge {bridge}"))?;
    info.flags = info.flags & !NetworkOptions::MASK | options.flags();
    dp.maps
        .networks
        .insert(id, info, 0)
        .context("updating the network")?;
    if flush {
        conntrack::flush(&mut dp, &conntrack::Filter::network(id))?;
    }
    Ok(())
}

/// `export`: the current state as a file `apply` takes back unchanged.
/// What `netpath docker` made is left out (it makes it again from
/// dockerd), as are mappings and rules into its networks.
pub async fn export() -> Result<String> {
    let state = StateDir::current()?;
    if !state.exists() {
        return Ok(config_file::render(&Exported::default()));
    }
    let nl = Netlink::new()?;
    let maps = Maps::open(&state)?;
    let mut e = Exported::default();
    let networks = maps.networks()?;
    let docker = |i: &netpath_common::NetworkInfo| i.flags & net_flags::DOCKER != 0;
    let docker_bridges: Vec<String> = networks
        .values()
        .filter(|i| docker(i))
        .map(|i| codec::ifname_from_bytes(&i.bridge_name))
        .collect();
    let trusted = crate::tables::Table::entries(&maps.trusted)?;
    for (id, i) in networks.iter().filter(|(_, i)| !docker(i)) {
        e.networks.push((
            NetworkSpec::from_info(i),
            maps.v6.spec(*id)?,
            NetworkOptions::from_flags(i.flags),
        ));
        // The file has no key for them yet: said, not dropped silently.
        let names = crate::trusted::names_of(&trusted, *id);
        if !names.is_empty() {
            e.notes.push(format!(
                "{}: trusted host interfaces {} are not in this file (set them with \
                 `netpath up --trusted-host-interface`)",
                codec::ifname_from_bytes(&i.bridge_name),
                names.join(", ")
            ));
        }
    }
    if let Uplinks::Explicit(v) = reconcile::uplink_choice(&[], &maps.ifaces()?, &nl.names().await?)
    {
        e.uplinks = v;
        e.uplinks.sort();
    }
    let mut left_out = 0;
    let mut by_owner: std::collections::BTreeMap<u16, Vec<Ports>> = Default::default();
    for (k, v) in maps.published()? {
        if v.owner == owner::DOCKER || networks.get(&v.net_id).is_some_and(docker) {
            left_out += 1;
            continue;
        }
        by_owner.entry(v.owner).or_default().push(Ports::of(&k, &v));
    }
    // Ranges are merged per owner: `apply` leaves one that is all someone
    // else's alone, and one half its own would conflict.
    for (_, ports) in by_owner {
        e.publish.extend(config_file::merge_ports(ports));
    }
    e.publish
        .sort_by_key(|p| (p.host_first, p.proto, p.host_addr));
    for (k, v) in publish::v6::published(&maps)? {
        if v.owner == owner::DOCKER || networks.get(&v.net_id).is_some_and(docker) {
            left_out += 1;
            continue;
        }
        e.publish6.push(publish::v6::Ports6::of(&k, &v));
    }
    e.publish6.sort();
    for (s, v, o) in filter::owned_rules(&maps)? {
        if o == owner::DOCKER
            || s.network
                .as_ref()
                .is_some_and(|n| docker_bridges.contains(n))
        {
            left_out += 1;
            continue;
        }
        e.filters.push((s, v));
    }
    if !docker_bridges.is_empty() || left_out > 0 {
        e.notes.push(format!(
            "left out: {} network(s) and {left_out} published port(s) or rule(s) of netpath docker (it makes them again from dockerd)",
            docker_bridges.len()
        ));
    }
    Ok(config_file::render(&e))
}

/// Reads the file `apply -f` names (`-`: standard input) and parses it.
pub fn read(path: &std::path::Path) -> Result<Desired> {
    let (name, text) = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the file from standard input")?;
        ("<stdin>".to_owned(), s)
    } else {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        (path.display().to_string(), s)
    };
    Ok(config_file::parse(&name, &text)?)
}
