//! What `netpath apply` changes: a checked file ([`Desired`]) against the
//! namespace's current state ([`Current`]) gives a [`Plan`], or the
//! reason (at its place in the file) why nothing may be applied. Pure:
//! unit-tested on the host with plain maps; `apply.rs` reads the state
//! and carries the plan out.
//!
//! Ownership: what `apply` made is marked (`net_flags::APPLY`,
//! `owner::APPLY`); only that is changed or pruned. An entry of the file
//! that is there already exactly as made by hand or by `netpath docker`
//! is left as it is (not adopted); one that would change such an entry is
//! an error.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use netpath_common::{
    Lease, LeaseKey, NetworkInfo, PubKey4, PubVal4, net_flags, owner,
    v6::{PortKey6, PubVal6},
};

use crate::{
    codec,
    config_file::{Desired, FileError, NetDecl},
    filter::{Selectors, Verdict},
    net6::Net6Spec,
    publish::{
        self, Ports, Row,
        v6::{self, Ports6},
    },
    spec::{NetworkOptions, NetworkSpec, overlaps},
};

/// The state `apply` compares a file with.
#[derive(Clone, Debug, Default)]
pub struct Current {
    pub networks: BTreeMap<u32, NetworkInfo>,
    /// The IPv6 halves of dual-stack networks, by network id.
    pub networks6: BTreeMap<u32, Net6Spec>,
    pub published: Vec<(PubKey4, PubVal4)>,
    pub published6: Vec<(PortKey6, PubVal6)>,
    /// Filter rules: selectors (network by bridge), verdict, owner.
    pub rules: Vec<(Selectors, Verdict, u16)>,
    pub leases: Vec<(LeaseKey, Lease)>,
    /// The host's own addresses outside the managed bridges (what a port
    /// may be published on, besides loopback and the gateways).
    pub host_addrs: Vec<Ipv4Addr>,
    pub host_addrs6: Vec<Ipv6Addr>,
    /// Explicit uplinks in force (empty: chosen automatically).
    pub uplinks: Vec<String>,
}

/// One network's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetChange {
    Create(NetDecl),
    /// Options the datapath reads per new flow change in place (`network
    /// set`); `flush`: masquerade or internal changed, so the network's
    /// flows go.
    Set {
        decl: NetDecl,
        what: Vec<String>,
        flush: bool,
    },
    /// The subnet or gateway changed: down, then up again.
    Recreate {
        decl: NetDecl,
        what: Vec<String>,
    },
    /// Made by an earlier `apply`, no longer in the file.
    Remove(String),
}

/// What `apply` does.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub networks: Vec<NetChange>,
    /// New explicit uplinks.
    pub uplinks: Option<Vec<String>>,
    /// The mappings `apply` is to own (the file's, less those there
    /// already as someone else's).
    pub want_ports: Vec<Ports>,
    pub publish: Vec<Ports>,
    pub unpublish: Vec<Ports>,
    /// The same for IPv6 mappings (single ports).
    pub want_ports6: Vec<Ports6>,
    pub publish6: Vec<Ports6>,
    pub unpublish6: Vec<Ports6>,
    /// The rules `apply` is to own, likewise.
    pub want_rules: Vec<(Selectors, Verdict)>,
    pub filter_add: Vec<(Selectors, Verdict)>,
    pub filter_del: Vec<(Selectors, Verdict)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
            && self.uplinks.is_none()
            && self.publish.is_empty()
            && self.unpublish.is_empty()
            && self.publish6.is_empty()
            && self.unpublish6.is_empty()
            && self.filter_add.is_empty()
            && self.filter_del.is_empty()
    }

    /// What it does, one line each, for the user.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.networks {
            out.push(match c {
                NetChange::Create(d) => format!(
                    "network {} created ({})",
                    d.spec.bridge,
                    d.spec
                        .v4
                        .map(|v| v.to_string())
                        .into_iter()
                        .chain(d.v6.map(|v| v.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                NetChange::Set { decl, what, flush } => format!(
                    "network {} changed: {}{}",
                    decl.spec.bridge,
                    what.join(", "),
                    if *flush { " (its flows flushed)" } else { "" }
                ),
                NetChange::Recreate { decl, what } => format!(
                    "network {} changed: {} (taken down and up again: its flows end)",
                    decl.spec.bridge,
                    what.join(", ")
                ),
                NetChange::Remove(b) => format!("network {b} removed"),
            });
        }
        if let Some(u) = &self.uplinks {
            out.push(format!("uplinks set to {}", u.join(", ")));
        }
        out.extend(self.unpublish.iter().map(|p| format!("unpublished {p}")));
        out.extend(self.publish.iter().map(|p| format!("published {p}")));
        out.extend(self.unpublish6.iter().map(|p| format!("unpublished {p}")));
        out.extend(self.publish6.iter().map(|p| format!("published {p}")));
        for (s, v) in &self.filter_del {
            out.push(format!("filter rule removed: {s} {}", v.as_str()));
        }
        for (s, v) in &self.filter_add {
            out.push(format!("filter rule added: {s} {}", v.as_str()));
        }
        out
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// How `new` differs from a network as recorded: (changes in place,
/// changes that take it down and up).
fn differences(
    old: &NetworkSpec,
    old6: Option<&Net6Spec>,
    o: &NetworkOptions,
    new: &NetDecl,
) -> (Vec<String>, Vec<String>, bool) {
    let (mut set, mut recreate) = (Vec::new(), Vec::new());
    let n = &new.options;
    // The IPv4 half: `none` on an IPv6-only network.
    let text = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
    let (a, b) = (old.v4, new.spec.v4);
    let (sa, sb) = (a.map(|v| v.subnet), b.map(|v| v.subnet));
    if sa != sb {
        let s = |v: Option<ipnet::Ipv4Net>| text(v.map(|n| n.to_string()));
        recreate.push(format!("subnet {} -> {}", s(sa), s(sb)));
    }
    let (ga, gb) = (a.map(|v| v.gateway), b.map(|v| v.gateway));
    if ga != gb {
        let g = |v: Option<std::net::Ipv4Addr>| text(v.map(|a| a.to_string()));
        recreate.push(format!("gateway {} -> {}", g(ga), g(gb)));
    }
    // A network's IPv6 half changes only with the network (as `up`).
    let half = |v: Option<&Net6Spec>| v.map_or("none".to_owned(), ToString::to_string);
    if old6 != new.v6.as_ref() {
        recreate.push(format!("IPv6 {} -> {}", half(old6), half(new.v6.as_ref())));
    }
    if o.icc != n.icc {
        set.push(format!("icc {}", on_off(n.icc)));
    }
    if o.gateway_mode != n.gateway_mode {
        set.push(format!("gateway_mode {}", n.gateway_mode.as_str()));
    }
    let flush = o.masquerade != n.masquerade || o.internal != n.internal;
    if o.masquerade != n.masquerade {
        set.push(format!("masquerade {}", on_off(n.masquerade)));
    }
    if o.internal != n.internal {
        set.push(format!("internal {}", on_off(n.internal)));
    }
    (set, recreate, flush)
}

/// Compares the file with the current state. Fails, at the entry's place,
/// when applying it would change or remove what `apply` did not make.
pub fn plan(d: &Desired, cur: &Current) -> Result<Plan, FileError> {
    let mut plan = Plan::default();
    let ours = |i: &NetworkInfo| i.flags & net_flags::APPLY != 0;
    let bridge_of = |i: &NetworkInfo| codec::ifname_from_bytes(&i.bridge_name);
    let by_bridge: BTreeMap<String, (u32, NetworkInfo)> = cur
        .networks
        .iter()
        .map(|(id, i)| (bridge_of(i), (*id, *i)))
        .collect();
    // What would take a network of ours down breaks what others made in it.
    let dependents = |id: u32, bridge: &str| {
        let leases = cur.leases.iter().filter(|(k, _)| k.net_id == id).count();
        let ports = cur
            .published
            .iter()
            .filter(|(_, v)| v.net_id == id && v.owner != owner::APPLY)
            .count()
            + cur
                .published6
                .iter()
                .filter(|(_, v)| v.net_id == id && v.owner != owner::APPLY)
                .count();
        let rules = cur
            .rules
            .iter()
            .filter(|(s, _, o)| *o != owner::APPLY && s.network.as_deref() == Some(bridge))
            .count();
        (leases + ports + rules > 0).then(|| {
            format!(
                "{leases} connected container(s), {ports} published port(s) and {rules} filter rule(s) not made by apply are in it: remove them first"
            )
        })
    };
    for decl in &d.networks {
        let b = &decl.spec.bridge;
        let at = Some(decl.at);
        match by_bridge.get(b) {
            None => plan.networks.push(NetChange::Create(decl.clone())),
            Some((id, info)) => {
                let old = NetworkSpec::from_info(info);
                let o = NetworkOptions::from_flags(info.flags);
                let (set, recreate, flush) = differences(&old, cur.networks6.get(id), &o, decl);
                if !ours(info) {
                    if set.is_empty() && recreate.is_empty() {
                        continue; // There as the file has it: left alone.
                    }
                    let who = if o.docker { "netpath docker" } else { "hand" };
                    let mut what = recreate;
                    what.extend(set);
                    return Err(d.error(
                        at,
                        format!(
                            "network {b} was made by {who}, not by apply, and the file changes it ({}): apply leaves it alone; make the file match it, or take it down first",
                            what.join(", ")
                        ),
                    ));
                }
                if !recreate.is_empty() {
                    if let Some(why) = dependents(*id, b) {
                        return Err(d.error(
                            at,
                            format!(
                                "network {b} must be taken down to change {}, but {why}",
                                recreate.join(", ")
                            ),
                        ));
                    }
                    let mut what = recreate;
                    what.extend(set);
                    plan.networks.push(NetChange::Recreate {
                        decl: decl.clone(),
                        what,
                    });
                } else if !set.is_empty() {
                    plan.networks.push(NetChange::Set {
                        decl: decl.clone(),
                        what: set,
                        flush,
                    });
                }
            }
        }
        // Another bridge's network that stays (one apply did not make).
        for (id, info) in &cur.networks {
            let other = NetworkSpec::from_info(info);
            if let (Some(theirs), Some(mine)) = (cur.networks6.get(id), &decl.v6)
                && other.bridge != *b
                && !ours(info)
                && crate::net6::overlaps(&theirs.subnet, &mine.subnet)
            {
                return Err(d.error(
                    at,
                    format!(
                        "IPv6 subnet {} overlaps network {} ({}), which apply did not make",
                        mine.subnet, other.bridge, theirs.subnet
                    ),
                ));
            }
            if let (Some(theirs), Some(mine)) = (other.subnet(), decl.spec.subnet())
                && other.bridge != *b
                && !ours(info)
                && overlaps(&theirs, &mine)
            {
                return Err(d.error(
                    at,
                    format!(
                        "subnet {mine} overlaps network {} ({theirs}), which apply did not make",
                        other.bridge
                    ),
                ));
            }
        }
    }
    for (b, (id, info)) in &by_bridge {
        if ours(info) && !d.networks.iter().any(|n| n.spec.bridge == *b) {
            if let Some(why) = dependents(*id, b) {
                return Err(d.error(
                    None,
                    format!(
                        "network {b} (made by an earlier apply) is no longer in the file, but {why}"
                    ),
                ));
            }
            // Removals first: a created network may take the subnet back.
            plan.networks.insert(0, NetChange::Remove(b.clone()));
        }
    }
    if let Some((u, _)) = &d.uplinks {
        let mut have = cur.uplinks.clone();
        have.sort();
        if *u != have {
            plan.uplinks = Some(u.clone());
        }
    }
    // The networks as they will be: the file's and the others that stay.
    let mut after: Vec<NetworkSpec> = d.networks.iter().map(|n| n.spec.clone()).collect();
    after.extend(
        cur.networks
            .values()
            .filter(|i| !ours(i) && !d.networks.iter().any(|n| n.spec.bridge == bridge_of(i)))
            .map(NetworkSpec::from_info),
    );
    let gone: Vec<String> = plan
        .networks
        .iter()
        .filter_map(|c| match c {
            NetChange::Remove(b) => Some(b.clone()),
            _ => None,
        })
        .collect();
    plan_ports(d, cur, &after, &mut plan)?;
    // The IPv6 halves as they will be.
    let mut after6: Vec<(String, Net6Spec)> = d
        .networks
        .iter()
        .filter_map(|n| Some((n.spec.bridge.clone(), n.v6?)))
        .collect();
    after6.extend(cur.networks.iter().filter_map(|(id, i)| {
        let keep = !ours(i) && !d.networks.iter().any(|n| n.spec.bridge == bridge_of(i));
        Some((bridge_of(i), *cur.networks6.get(id).filter(|_| keep)?))
    }));
    plan_ports6(d, cur, &after6, &mut plan)?;
    plan_rules(d, cur, &after, &gone, &mut plan)?;
    Ok(plan)
}

fn plan_ports(
    d: &Desired,
    cur: &Current,
    after: &[NetworkSpec],
    plan: &mut Plan,
) -> Result<(), FileError> {
    let others: Vec<(PubKey4, PubVal4)> = cur
        .published
        .iter()
        .filter(|(_, v)| v.owner != owner::APPLY)
        .copied()
        .collect();
    for p in &d.publish {
        let at = Some(p.at);
        let ports = &p.ports;
        let c = ports.target;
        let Some((net, v4)) = after
            .iter()
            .find_map(|n| Some((n, n.v4.filter(|v| v.subnet.contains(&c))?)))
        else {
            return Err(d.error(
                at,
                format!("container address {c} is in no network of the file or the host"),
            ));
        };
        if c == v4.gateway || c == v4.subnet.network() || c == v4.subnet.broadcast() {
            return Err(d.error(
                at,
                format!(
                    "{c} is the gateway, network or broadcast address of {}, not a container",
                    net.bridge
                ),
            ));
        }
        if let Some(a) = ports.host_addr {
            let usable = a.is_loopback()
                || cur.host_addrs.contains(&a)
                || after.iter().any(|n| n.v4.is_some_and(|v| v.gateway == a));
            if !usable {
                return Err(d.error(at, format!("the host has no address {a} to publish on")));
            }
        }
        let mine = ports.entries(owner::APPLY);
        // There already, exactly, as someone else's: left alone.
        let theirs = mine.iter().all(|(k, v)| {
            others.iter().any(|(ok, ov)| {
                ok == k && ov.target_be == v.target_be && ov.target_port_be == v.target_port_be
            })
        });
        if theirs {
            continue;
        }
        if let Some(why) = publish::conflict(&others, ports) {
            return Err(d.error(at, format!("{why}, not by apply")));
        }
        plan.want_ports.push(*ports);
    }
    let (stale, missing) = publish::owned_changes(owner::APPLY, &cur.published, &plan.want_ports);
    plan.unpublish =
        crate::config_file::merge_ports(stale.iter().map(|(k, v)| Ports::of(k, v)).collect());
    plan.publish = missing;
    Ok(())
}

fn plan_ports6(
    d: &Desired,
    cur: &Current,
    after6: &[(String, Net6Spec)],
    plan: &mut Plan,
) -> Result<(), FileError> {
    let others: Vec<Row> = cur
        .published6
        .iter()
        .filter(|(_, v)| v.owner != owner::APPLY)
        .map(|(k, v)| v6::row(k, v))
        .collect();
    for p in &d.publish6 {
        let at = Some(p.at);
        let ports = &p.ports;
        let c = ports.target;
        let Some((bridge, net)) = after6.iter().find(|(_, n)| n.subnet.contains(&c)) else {
            return Err(d.error(
                at,
                format!("container address {c} is in no IPv6 subnet of the file or the host"),
            ));
        };
        if c == net.gateway || c == net.subnet.network() {
            return Err(d.error(
                at,
                format!(
                    "{c} is the IPv6 gateway or subnet-router anycast address of {bridge}, not a container"
                ),
            ));
        }
        if let Some(a) = ports.host_addr {
            let usable = a.is_loopback()
                || cur.host_addrs6.contains(&a)
                || after6.iter().any(|(_, n)| n.gateway == a);
            if !usable {
                return Err(d.error(at, format!("the host has no address {a} to publish on")));
            }
        }
        // There already, exactly, as someone else's: left alone.
        if ports.rows().iter().all(|r| others.contains(r)) {
            continue;
        }
        let host = ports.host_addr.map(std::net::IpAddr::V6);
        if let Some(why) = publish::conflict_rows(
            &others,
            host,
            ports.host_first,
            ports.host_last,
            ports.proto,
        ) {
            return Err(d.error(at, format!("{why}, not by apply")));
        }
        plan.want_ports6.push(*ports);
    }
    let mine: Vec<(PortKey6, PubVal6)> = cur
        .published6
        .iter()
        .filter(|(_, v)| v.owner == owner::APPLY)
        .copied()
        .collect();
    let rows: Vec<Row> = mine.iter().map(|(k, v)| v6::row(k, v)).collect();
    let wanted: Vec<Vec<Row>> = plan.want_ports6.iter().map(Ports6::rows).collect();
    let (stale, missing) = publish::owned_changes_of(&rows, &wanted);
    plan.unpublish6 = stale
        .into_iter()
        .map(|i| Ports6::of(&mine[i].0, &mine[i].1))
        .collect();
    plan.publish6 = missing.into_iter().map(|i| plan.want_ports6[i]).collect();
    Ok(())
}

fn plan_rules(
    d: &Desired,
    cur: &Current,
    after: &[NetworkSpec],
    gone: &[String],
    plan: &mut Plan,
) -> Result<(), FileError> {
    for f in &d.filters {
        let at = Some(f.at);
        if let Some(n) = &f.sel.network
            && !after.iter().any(|s| s.bridge == *n)
        {
            return Err(d.error(
                at,
                format!("no network on bridge {n} in the file or the host"),
            ));
        }
        match cur
            .rules
            .iter()
            .find(|(s, _, o)| *s == f.sel && *o != owner::APPLY)
        {
            Some((_, v, _)) if *v == f.verdict => continue, // someone else's, the same
            Some((_, v, _)) => {
                return Err(d.error(
                    at,
                    format!(
                        "a rule with these selectors ({}) is there already with verdict {}, not made by apply: delete it first",
                        f.sel,
                        v.as_str()
                    ),
                ));
            }
            None => plan.want_rules.push((f.sel.clone(), f.verdict)),
        }
    }
    let mine: Vec<(Selectors, Verdict)> = cur
        .rules
        .iter()
        .filter(|(_, _, o)| *o == owner::APPLY)
        .map(|(s, v, _)| (s.clone(), *v))
        .collect();
    plan.filter_del = mine
        .iter()
        .filter(|r| !plan.want_rules.contains(r))
        // A removed network's rules go with it.
        .filter(|(s, _)| !s.network.as_ref().is_some_and(|n| gone.contains(n)))
        .cloned()
        .collect();
    plan.filter_add = plan
        .want_rules
        .iter()
        .filter(|r| !mine.contains(r))
        .cloned()
        .collect();
    Ok(())
}
