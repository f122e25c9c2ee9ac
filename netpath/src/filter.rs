//! `netpath filter add / del / list`: filter rules (netpath's DOCKER-USER)
//! in the pinned `NP_FILTER4` trie, checked by the datapath before a new
//! inbound flow is admitted (see `netpath-common/src/filter.rs` for the
//! lookup and the order). Rules persist like published ports; `down` of a
//! network removes the rules that name it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use aya::maps::lpm_trie::Key;
use ipnet::Ipv4Net;
use netpath_common::{
    CounterKey, counter_kind, counter_scope,
    filter::{EXACT_BITS, FilterData, FilterRule, sel, specificity, verdict},
};
use serde::Serialize;

use crate::{
    codec,
    ctconfig::proto_name,
    spec,
    state::{self, Maps},
};

/// What a rule does with the flows it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    const fn code(self) -> u8 {
        match self {
            Self::Allow => verdict::ALLOW,
            Self::Deny => verdict::DENY,
        }
    }

    const fn from_code(c: u8) -> Option<Self> {
        match c {
            verdict::ALLOW => Some(Self::Allow),
            verdict::DENY => Some(Self::Deny),
            _ => None,
        }
    }
}

/// `--port HOSTPORT[/tcp|/udp|/sctp]`: a published host port (tcp by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub port: u16,
    pub proto: u8,
}

/// `--to CONTAINER_IP[:PORT]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: Ipv4Addr,
    pub port: Option<u16>,
}

/// Parses `--port`.
pub fn parse_host_port(s: &str) -> Result<HostPort> {
    let spec = spec::parse_port_spec(s, false, true)?;
    if spec.addr.is_some() || spec.first != spec.last {
        bail!("invalid --port {s:?}: expected one HOSTPORT[/tcp|/udp|/sctp]");
    }
    Ok(HostPort {
        port: spec.first,
        proto: spec.proto_or_tcp(),
    })
}

/// Parses `--to`.
pub fn parse_target(s: &str) -> Result<Target> {
    let t = match s.parse::<Ipv4Addr>() {
        Ok(addr) => Target { addr, port: None },
        Err(_) => {
            let spec = spec::parse_port_spec(s, true, false)
                .with_context(|| format!("invalid --to {s:?}: expected CONTAINER_IP[:PORT]"))?;
            match spec.addr {
                Some(std::net::IpAddr::V4(addr)) if spec.first == spec.last => Target {
                    addr,
                    port: Some(spec.first),
                },
                _ => bail!("invalid --to {s:?}: expected CONTAINER_IP[:PORT]"),
            }
        }
    };
    // No container has these: a rule naming one would never match.
    let a = t.addr;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        bail!("invalid --to {s:?}: {a} is not a container's address");
    }
    Ok(t)
}

/// Parses `--from CIDR` (a bare address is a /32); host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net> {
    let net = match s.parse::<Ipv4Addr>() {
        Ok(a) => Ipv4Net::from(a),
        Err(_) => s.parse::<Ipv4Net>().map_err(|_| {
            anyhow::anyhow!("invalid --from {s:?}: expected an IPv4 CIDR such as 10.0.0.0/8")
        })?,
    };
    if net.addr() != net.network() {
        bail!(
            "invalid --from {s}: host bits are set (did you mean {}?)",
            net.trunc()
        );
    }
    Ok(net)
}

/// What a rule selects flows by. Unset selectors match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    /// A network, by its bridge.
    pub network: Option<String>,
    pub from: Option<Ipv4Net>,
    pub port: Option<HostPort>,
    pub to: Option<Target>,
}

impl Selectors {
    /// The trie key of a rule with these selectors, the network resolved.
    fn key(&self, net_id: Option<u32>) -> Key<FilterData> {
        let mut group = 0;
        let mut d = FilterData::default();
        if let Some(id) = net_id {
            group |= sel::NETWORK;
            d.net_id = id;
        }
        if let Some(p) = self.port {
            group |= sel::HOST_PORT;
            d.proto = p.proto;
            d.host_port_be = p.port.to_be();
        }
        if let Some(t) = self.to {
            group |= sel::TO;
            d.to_be = codec::be(t.addr);
            if let Some(port) = t.port {
                group |= sel::TO_PORT;
                d.to_port_be = port.to_be();
            }
        }
        d.group = group;
        let from = self.from.unwrap_or_default();
        d.src_be = codec::be(from.network());
        Key::new(EXACT_BITS + u32::from(from.prefix_len()), d)
    }

    /// The network id of `--network`, which must be up.
    fn net_id(&self, maps: &Maps) -> Result<Option<u32>> {
        match &self.network {
            None => Ok(None),
            Some(b) => Ok(Some(
                maps.network_by_bridge(b)?
                    .with_context(|| format!("no network on bridge {b}"))?
                    .0,
            )),
        }
    }
}

/// One rule, for `filter list`.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    pub id: u32,
    pub verdict: Verdict,
    /// The network's bridge; absent when the rule names none.
    pub network: Option<String>,
    pub from: Ipv4Net,
    /// `PORT/PROTO` of the host port; absent when the rule names none.
    pub port: Option<String>,
    pub to: Option<Ipv4Addr>,
    pub to_port: Option<u16>,
    /// New flows the rule decided.
    pub hits: u64,
    #[serde(skip)]
    rank: u32,
}

fn read_rules(maps: &Maps) -> Result<Vec<(Key<FilterData>, FilterRule)>> {
    let mut out = Vec::new();
    for k in maps.filter4.keys() {
        let k = k.context("reading NP_FILTER4")?;
        match maps.filter4.get(&k, 0) {
            Ok(v) => out.push((k, v)),
            Err(e) if state::is_missing(&e) => {}
            Err(e) => return Err(e).context("reading NP_FILTER4"),
        }
    }
    Ok(out)
}

/// Counts a rule of `group` in (`delta` 1) or out (-1) of `NP_FILTER_INFO`,
/// which tells the datapath which groups to look up; returns the id a new
/// rule gets.
fn count_rule(maps: &mut Maps, group: u8, delta: i32) -> Result<u32> {
    let mut info = maps
        .filter_info
        .get(&0, 0)
        .context("reading NP_FILTER_INFO")?;
    let g = usize::from(group);
    info.counts[g] = info.counts[g].saturating_add_signed(delta);
    if info.counts[g] == 0 {
        info.groups &= !(1 << g);
    } else {
        info.groups |= 1 << g;
    }
    let id = info.next_id.max(1);
    if delta > 0 {
        info.next_id = id + 1;
    }
    maps.filter_info
        .set(0, info, 0)
        .context("writing NP_FILTER_INFO")?;
    Ok(id)
}

/// The rule stored under exactly `key`. (A trie lookup returns the longest
/// matching prefix, which may be a shorter rule of the same group.)
fn exact(maps: &Maps, key: &Key<FilterData>) -> Result<Option<FilterRule>> {
    let want = key.prefix_len().saturating_sub(EXACT_BITS);
    match maps.filter4.get(key, 0) {
        Ok(r) if u32::from(r.src_prefix) == want => Ok(Some(r)),
        Ok(_) => Ok(None),
        Err(e) if state::is_missing(&e) => Ok(None),
        Err(e) => Err(e).context("reading NP_FILTER4"),
    }
}

/// What `filter add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New(u32),
    /// The same rule was there already (same selectors and verdict).
    Present(u32),
}

/// `filter add`: a rule with the same selectors and another verdict must
/// be deleted first.
pub fn add(sel: &Selectors, v: Verdict) -> Result<Added> {
    let _lock = state::lock(false)?;
    let (_, mut maps) = Maps::open_current()?;
    add_to(&mut maps, sel, v, netpath_common::owner::USER)
}

/// [`add`] on open maps, the rule marked as `owner`'s. A rule with the same
/// selectors and verdict that is there already is left as it is (and its
/// owner's).
pub fn add_to(maps: &mut Maps, sel: &Selectors, v: Verdict, owner: u16) -> Result<Added> {
    let key = sel.key(sel.net_id(maps)?);
    match exact(maps, &key)? {
        Some(r) if r.verdict == v.code() => return Ok(Added::Present(r.id)),
        Some(r) => bail!(
            "rule {} already has these selectors ({}); delete it first",
            r.id,
            if r.verdict == verdict::ALLOW {
                "allow"
            } else {
                "deny"
            }
        ),
        None => {}
    }
    let id = count_rule(maps, key.data().group, 1)?;
    let rule = FilterRule {
        verdict: v.code(),
        src_prefix: key.prefix_len().saturating_sub(EXACT_BITS) as u8,
        owner,
        id,
    };
    if let Err(e) = maps.filter4.insert(&key, rule, 0) {
        let _ = count_rule(maps, key.data().group, -1);
        return Err(e).context("recording the filter rule");
    }
    Ok(Added::New(id))
}

/// `filter del`: removes the rule with exactly these selectors.
pub fn del(sel: &Selectors) -> Result<u32> {
    let _lock = state::lock(false)?;
    let (_, mut maps) = Maps::open_current()?;
    delete_from(&mut maps, sel)
}

/// [`del`] on open maps; returns the rule's id.
pub fn delete_from(maps: &mut Maps, sel: &Selectors) -> Result<u32> {
    let key = sel.key(sel.net_id(maps)?);
    let rule = exact(maps, &key)?.context("no filter rule has these selectors")?;
    remove(maps, &[(key, rule)])?;
    Ok(rule.id)
}

fn remove(maps: &mut Maps, rules: &[(Key<FilterData>, FilterRule)]) -> Result<()> {
    for (k, r) in rules {
        match maps.filter4.remove(k) {
            Ok(()) => count_rule(maps, k.data().group, -1).map(|_| ())?,
            Err(e) if state::is_missing(&e) => {}
            Err(e) => return Err(e).context("removing a filter rule"),
        }
        maps.remove_counters(counter_scope::FILTER, r.id)?;
    }
    Ok(())
}

/// Removes the rules that name network `net_id` (its `down`).
pub fn remove_network(maps: &mut Maps, net_id: u32) -> Result<usize> {
    let victims: Vec<_> = read_rules(maps)?
        .into_iter()
        .filter(|(k, _)| k.data().group & sel::NETWORK != 0 && k.data().net_id == net_id)
        .collect();
    remove(maps, &victims)?;
    Ok(victims.len())
}

/// Every rule as its selectors (the network by its bridge), verdict and
/// owner, in no particular order: what `apply` compares a file with and
/// `export` writes. A rule naming a network that is gone is left out.
pub fn owned_rules(maps: &Maps) -> Result<Vec<(Selectors, Verdict, u16)>> {
    let networks = maps.networks()?;
    let mut out = Vec::new();
    for (k, r) in read_rules(maps)? {
        let d = k.data();
        let has = |bit: u8| d.group & bit != 0;
        let network = match has(sel::NETWORK) {
            false => None,
            true => match networks.get(&d.net_id) {
                Some(i) => Some(codec::ifname_from_bytes(&i.bridge_name)),
                None => continue,
            },
        };
        let src_prefix = k.prefix_len().saturating_sub(EXACT_BITS) as u8;
        let from = Ipv4Net::new(codec::from_be(d.src_be), src_prefix).context("rule prefix")?;
        let sel = Selectors {
            network,
            from: (src_prefix > 0).then_some(from),
            port: has(sel::HOST_PORT).then(|| HostPort {
                port: u16::from_be(d.host_port_be),
                proto: d.proto,
            }),
            to: has(sel::TO).then(|| Target {
                addr: codec::from_be(d.to_be),
                port: has(sel::TO_PORT).then(|| u16::from_be(d.to_port_be)),
            }),
        };
        let v = Verdict::from_code(r.verdict).context("a filter rule with no verdict")?;
        out.push((sel, v, r.owner));
    }
    Ok(out)
}

impl std::fmt::Display for Selectors {
    /// As `filter add` takes them (`every flow` when none is set).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut words = Vec::new();
        if let Some(n) = &self.network {
            words.push(format!("--network {n}"));
        }
        if let Some(c) = self.from {
            words.push(format!("--from {c}"));
        }
        if let Some(p) = self.port {
            words.push(format!("--port {}/{}", p.port, proto_name(p.proto)));
        }
        match self.to {
            Some(Target {
                addr,
                port: Some(p),
            }) => words.push(format!("--to {addr}:{p}")),
            Some(Target { addr, port: None }) => words.push(format!("--to {addr}")),
            None => {}
        }
        if words.is_empty() {
            return write!(f, "every flow");
        }
        write!(f, "{}", words.join(" "))
    }
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// Every rule, in the order the datapath prefers them (most specific first).
pub fn list() -> Result<Vec<Rule>> {
    let (_, maps) = Maps::open_current()?;
    let networks: BTreeMap<u32, String> = maps
        .networks()?
        .into_iter()
        .map(|(id, i)| (id, codec::ifname_from_bytes(&i.bridge_name)))
        .collect();
    let mut out = Vec::new();
    for (k, r) in read_rules(&maps)? {
        let d = k.data();
        let has = |bit: u8| d.group & bit != 0;
        let src_prefix = k.prefix_len().saturating_sub(EXACT_BITS) as u8;
        let hits = maps
            .counter(CounterKey {
                id: r.id,
                scope: counter_scope::FILTER,
                kind: counter_kind::FILTER_HITS,
            })?
            .packets;
        out.push(Rule {
            id: r.id,
            verdict: Verdict::from_code(r.verdict).context("a filter rule with no verdict")?,
            network: has(sel::NETWORK).then(|| {
                networks
                    .get(&d.net_id)
                    .cloned()
                    .unwrap_or_else(|| format!("(network {})", d.net_id))
            }),
            from: Ipv4Net::new(codec::from_be(d.src_be), src_prefix).context("rule prefix")?,
            port: has(sel::HOST_PORT)
                .then(|| format!("{}/{}", u16::from_be(d.host_port_be), proto_name(d.proto))),
            to: has(sel::TO).then(|| codec::from_be(d.to_be)),
            to_port: has(sel::TO_PORT).then(|| u16::from_be(d.to_port_be)),
            hits,
            rank: specificity(src_prefix, d.group),
        });
    }
    out.sort_by(|a, b| b.rank.cmp(&a.rank).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// `filter list` as a table.
pub fn render(rules: &[Rule]) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                format!("{:?}", r.verdict).to_lowercase(),
                r.from.to_string(),
                r.port.clone().unwrap_or_else(|| "*".into()),
                match (r.to, r.to_port) {
                    (Some(a), Some(p)) => format!("{a}:{p}"),
                    (Some(a), None) => a.to_string(),
                    _ => "*".into(),
                },
                r.network.clone().unwrap_or_else(|| "*".into()),
                r.hits.to_string(),
            ]
        })
        .collect();
    crate::table::render(
        &["ID", "VERDICT", "FROM", "PORT", "TO", "NETWORK", "HITS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_reject() {
        assert_eq!(
            parse_host_port("8080").unwrap(),
            HostPort {
                port: 8080,
                proto: 6
            }
        );
        assert_eq!(parse_host_port("53/udp").unwrap().proto, 17);
        assert!(parse_host_port("0").is_err());
        assert!(parse_host_port("70000").is_err());
        assert!(parse_host_port("80-90").is_err());
        assert!(parse_host_port("1.2.3.4:80").is_err());
        assert_eq!(
            parse_target("172.18.0.2").unwrap(),
            Target {
                addr: Ipv4Addr::new(172, 18, 0, 2),
                port: None
            }
        );
        assert_eq!(parse_target("172.18.0.2:80").unwrap().port, Some(80));
        assert!(parse_target("172.18.0.2:0").is_err());
        assert!(parse_target("nope").is_err());
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1:80", "127.0.0.1"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().prefix_len(), 8);
        assert_eq!(parse_cidr("10.1.2.3").unwrap().prefix_len(), 32);
        assert!(
            parse_cidr("10.0.0.1/8")
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn keys_carry_exactly_the_named_selectors() {
        let s = Selectors {
            from: Some("10.0.0.0/8".parse().unwrap()),
            port: Some(HostPort {
                port: 8080,
                proto: 6,
            }),
            ..Default::default()
        };
        let k = s.key(None);
        assert_eq!(k.prefix_len(), EXACT_BITS + 8);
        assert_eq!(k.data().group, sel::HOST_PORT);
        assert_eq!(k.data().host_port_be, 8080u16.to_be());
        assert_eq!(k.data().to_be, 0);
        let all = Selectors {
            to: Some(Target {
                addr: Ipv4Addr::new(172, 18, 0, 2),
                port: Some(80),
            }),
            ..Default::default()
        }
        .key(Some(3));
        assert_eq!(all.data().group, sel::NETWORK | sel::TO | sel::TO_PORT);
        assert_eq!(all.data().net_id, 3);
        assert_eq!(all.prefix_len(), EXACT_BITS, "no --from: every client");
    }
}
