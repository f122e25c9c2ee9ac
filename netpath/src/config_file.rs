//! The declarative config `netpath apply -f FILE` reads and `netpath
//! export` writes: TOML whose keys mirror the CLI's flags (`[[network]]`
//! as `up`, `[[publish]]` as `publish`, `[[filter]]` as `filter add`),
//! parsed with the CLI's own value parsers so the grammar is the same.
//! Every error carries FILE:LINE:COLUMN. Pure: parsing and the static
//! checks live here; the plan against the current state is in
//! `config_plan.rs`, the I/O in `apply.rs`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
};

use ipnet::IpNet;

use netpath_common::GatewayMode;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    filter::{self, Selectors, Verdict},
    net6::Net6Spec,
    publish::{self, Ports, Row, conflict_rows, v6::Ports6},
    spec::{self, NetworkOptions, NetworkSpec},
};

/// A place in the file, both counted from 1 (columns in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    /// The position of byte `offset` of `text`.
    pub fn of(text: &str, offset: usize) -> Self {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &text[..end];
        Self {
            line: before.matches('\n').count() + 1,
            col: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
        }
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// An error in the file: `FILE:LINE:COLUMN: message` (just `FILE: message`
/// for what no line of the file names, such as a network an earlier
/// `apply` made that the file dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: String,
    pub pos: Option<Pos>,
    pub msg: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{}:{p}: {}", self.file, self.msg),
            None => write!(f, "{}: {}", self.file, self.msg),
        }
    }
}

impl std::error::Error for FileError {}

/// A `[[network]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDecl {
    pub spec: NetworkSpec,
    /// A dual-stack network's IPv6 half (`subnets = [v4, v6]`).
    pub v6: Option<Net6Spec>,
    /// With `apply` set: what `apply` creates is marked as its own.
    pub options: NetworkOptions,
    pub at: Pos,
}

/// A `[[publish]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PubDecl {
    pub ports: Ports,
    pub at: Pos,
}

/// A `[[publish]]` of IPv6 addresses (`host = "[::]:8080"`, `container =
/// "[fd00:18::2]:80"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pub6Decl {
    pub ports: Ports6,
    pub at: Pos,
}

/// A `[[filter]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterDecl {
    pub sel: Selectors,
    pub verdict: Verdict,
    pub at: Pos,
}

/// What a file asks for, checked on its own (the checks against the
/// current state come with the plan).
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// The file's name as messages give it (`<stdin>` for `-f -`).
    pub file: String,
    pub networks: Vec<NetDecl>,
    pub publish: Vec<PubDecl>,
    pub publish6: Vec<Pub6Decl>,
    pub filters: Vec<FilterDecl>,
    /// The namespace's uplinks (`up --uplink`), when a network names them.
    pub uplinks: Option<(Vec<String>, Pos)>,
}

impl Desired {
    pub fn error(&self, pos: Option<Pos>, msg: impl Into<String>) -> FileError {
        fe(&self.file, pos, msg)
    }
}

fn fe(file: &str, pos: Option<Pos>, msg: impl Into<String>) -> FileError {
    FileError {
        file: file.to_owned(),
        pos,
        msg: msg.into(),
    }
}

/// One value through a CLI parser; its error at the value.
fn parsed<T>(
    file: &str,
    text: &str,
    s: &Spanned<String>,
    f: impl Fn(&str) -> anyhow::Result<T>,
) -> Result<T, FileError> {
    f(s.get_ref()).map_err(|e| fe(file, Some(Pos::of(text, s.span().start)), format!("{e:#}")))
}

/// An optional address key (`gateway`, `gateway6`) of one family; its
/// error at the value.
fn address<A: std::str::FromStr>(
    file: &str,
    text: &str,
    value: &Option<Spanned<String>>,
    key: &str,
    family: &str,
) -> Result<Option<A>, FileError> {
    value
        .as_ref()
        .map(|v| {
            parsed(file, text, v, |s| {
                s.parse::<A>().map_err(|_| {
                    anyhow::anyhow!("invalid {key} {s:?}: expected an {family} address")
                })
            })
        })
        .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    network: Vec<Spanned<RawNetwork>>,
    #[serde(default)]
    publish: Vec<Spanned<RawPublish>>,
    #[serde(default)]
    filter: Vec<Spanned<RawFilter>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    bridge: Spanned<String>,
    subnet: Option<Spanned<String>>,
    subnets: Option<Spanned<Vec<Spanned<String>>>>,
    gateway: Option<Spanned<String>>,
    gateway6: Option<Spanned<String>>,
    masquerade: Option<bool>,
    icc: Option<bool>,
    internal: Option<bool>,
    gateway_mode: Option<Spanned<String>>,
    uplinks: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    host: Spanned<String>,
    container: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    network: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    port: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    verdict: Spanned<String>,
}

/// Parses and checks a file: each entry on its own with the CLI's parsers,
/// then the entries against each other (one bridge per network, no
/// overlapping subnets or host ports, one rule per set of selectors).
pub fn parse(file: &str, text: &str) -> Result<Desired, FileError> {
    let mut d = Desired {
        file: file.to_owned(),
        ..Default::default()
    };
    let at = |span: Range<usize>| Some(Pos::of(text, span.start));
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        fe(
            file,
            Some(Pos::of(text, e.span().map_or(0, |s| s.start))),
            e.message().trim().to_owned(),
        )
    })?;
    let mut networks = Vec::new();
    let mut uplinks: Option<(Vec<String>, Pos)> = None;
    for n in &raw.network {
        let pos = at(n.span());
        let n = n.get_ref();
        let bridge = parsed(file, text, &n.bridge, spec::parse_ifname)?;
        let values: Vec<&Spanned<String>> = match (&n.subnet, &n.subnets) {
            (Some(s), None) => vec![s],
            (None, Some(list)) => list.get_ref().iter().collect(),
            (Some(_), Some(list)) => {
                return Err(fe(
                    file,
                    at(list.span()),
                    "give subnet or subnets, not both",
                ));
            }
            (None, None) => {
                return Err(fe(file, pos, format!("network {bridge} has no subnet")));
            }
        };
        // One subnet per family, as `up --subnet` (twice at most).
        let (mut v4, mut v6) = (None, None);
        for v in &values {
            let slot = match parsed(file, text, v, crate::net6::parse_any_subnet)? {
                IpNet::V4(n) => v4.replace((*v, IpNet::V4(n))),
                IpNet::V6(n) => v6.replace((*v, IpNet::V6(n))),
            };
            if let Some((first, _)) = slot {
                return Err(fe(
                    file,
                    at(v.span()),
                    format!(
                        "{} and {} are of one family: a network has at most one subnet per family",
                        first.get_ref(),
                        v.get_ref()
                    ),
                ));
            }
        }
        // Where an IPv4 subnet's problem is reported (none: an IPv6-only
        // network, whose `gateway`, if given, is refused below).
        let subnet_value = v4.map(|(v, _)| v);
        let v6 = match (v6, &n.gateway6) {
            (Some((at6, IpNet::V6(net))), g) => {
                let gateway = address::<Ipv6Addr>(file, text, g, "gateway6", "IPv6")?;
                let where_ = g.as_ref().map_or(at(at6.span()), |g| at(g.span()));
                Some(Net6Spec::new(net, gateway).map_err(|e| fe(file, where_, format!("{e:#}")))?)
            }
            (_, Some(g)) => {
                return Err(fe(
                    file,
                    at(g.span()),
                    "gateway6 needs an IPv6 subnet in subnets",
                ));
            }
            (_, None) => None,
        };
        let gateway = address::<Ipv4Addr>(file, text, &n.gateway, "gateway", "IPv4")?;
        let spec = match v4 {
            Some((_, IpNet::V4(subnet))) => NetworkSpec::new(&bridge, subnet, gateway),
            _ if gateway.is_some() => {
                Err(anyhow::anyhow!("gateway needs an IPv4 subnet in subnets"))
            }
            _ => NetworkSpec::with(&bridge, None),
        }
        .map_err(|e| {
            let where_ = n.gateway.as_ref().map_or(pos, |g| at(g.span()));
            fe(file, where_, format!("{e:#}"))
        })?;
        let gateway_mode = match &n.gateway_mode {
            None => GatewayMode::Nat,
            Some(m) => GatewayMode::ALL
                .into_iter()
                .find(|g| g.as_str() == m.get_ref())
                .ok_or_else(|| {
                    fe(
                        file,
                        at(m.span()),
                        format!(
                            "invalid gateway_mode {:?}: expected nat, nat-unprotected or routed",
                            m.get_ref()
                        ),
                    )
                })?,
        };
        let options = NetworkOptions {
            masquerade: n.masquerade.unwrap_or(true),
            icc: n.icc.unwrap_or(true),
            internal: n.internal.unwrap_or(false),
            gateway_mode,
            docker: false,
            apply: true,
        };
        if let Some(list) = &n.uplinks {
            let mut names = Vec::new();
            for u in list.get_ref() {
                names.push(parsed(file, text, u, spec::parse_ifname)?);
            }
            names.sort();
            names.dedup();
            match &uplinks {
                // The uplink set is the namespace's (as `up --uplink`
                // replaces it), so every network naming it names the same.
                Some((first, p)) if *first != names => {
                    return Err(fe(
                        file,
                        at(list.span()),
                        format!(
                            "uplinks are the namespace's, not one network's: these differ from the ones at {p}"
                        ),
                    ));
                }
                Some(_) => {}
                None => uplinks = Some((names, pos.unwrap_or(Pos { line: 1, col: 1 }))),
            }
        }
        let decl = NetDecl {
            spec,
            v6,
            options,
            at: pos.unwrap_or(Pos { line: 1, col: 1 }),
        };
        for other in &networks {
            let other: &NetDecl = other;
            if other.spec.bridge == decl.spec.bridge {
                return Err(fe(
                    file,
                    pos,
                    format!("network {bridge} is named twice (also at {})", other.at),
                ));
            }
            if let (Some(a), Some(b)) = (&other.v6, &decl.v6)
                && crate::net6::overlaps(&a.subnet, &b.subnet)
            {
                return Err(fe(
                    file,
                    pos,
                    format!(
                        "IPv6 subnet {} overlaps network {} ({}) at {}",
                        b.subnet, other.spec.bridge, a.subnet, other.at
                    ),
                ));
            }
            if let (Some(a), Some(b), Some(value)) =
                (other.spec.subnet(), decl.spec.subnet(), subnet_value)
                && spec::overlaps(&a, &b)
            {
                return Err(fe(
                    file,
                    at(value.span()),
                    format!(
                        "subnet {b} overlaps network {} ({a}) at {}",
                        other.spec.bridge, other.at
                    ),
                ));
            }
        }
        networks.push(decl);
    }
    d.networks = networks;
    d.uplinks = uplinks;
    for p in &raw.publish {
        let pos = at(p.span());
        let p = p.get_ref();
        let h = parsed(file, text, &p.host, spec::parse_host_ports)?;
        let t = parsed(file, text, &p.container, spec::parse_container_ports)?;
        spec::check_publish(&h, &t).map_err(|e| fe(file, pos, format!("{e:#}")))?;
        let at_ = pos.unwrap_or(Pos { line: 1, col: 1 });
        // The family is the container's, as for `publish`.
        let (host_addr, target) = match (h.addr, t.addr) {
            (None | Some(IpAddr::V6(_)), Some(IpAddr::V6(target))) => {
                let ports = Ports6 {
                    host_addr: match h.addr {
                        Some(IpAddr::V6(a)) if !a.is_unspecified() => Some(a),
                        _ => None,
                    },
                    host_first: h.first,
                    host_last: h.last,
                    proto: h.proto_or_tcp(),
                    target,
                    target_first: t.first,
                };
                let earlier: Vec<Row> = d.publish6.iter().flat_map(|e| e.ports.rows()).collect();
                let host = ports.host_addr.map(IpAddr::V6);
                if let Some(why) = conflict_rows(&earlier, host, h.first, h.last, ports.proto) {
                    return Err(fe(file, pos, format!("{why} by an earlier [[publish]]")));
                }
                d.publish6.push(Pub6Decl { ports, at: at_ });
                continue;
            }
            (None | Some(IpAddr::V4(_)), Some(IpAddr::V4(target))) => (
                match h.addr {
                    Some(IpAddr::V4(a)) => Some(a),
                    _ => None,
                },
                Some(target),
            ),
            (Some(a), Some(c)) => {
                return Err(fe(
                    file,
                    pos,
                    format!(
                        "host address {a} and container address {c} are of different families: IPv4 publishes to IPv4, IPv6 to IPv6"
                    ),
                ));
            }
            (_, None) => (None, None),
        };
        let ports = Ports {
            host_addr,
            host_first: h.first,
            host_last: h.last,
            proto: h.proto_or_tcp(),
            target: target.unwrap_or(Ipv4Addr::UNSPECIFIED),
            target_first: t.first,
        };
        let earlier: Vec<_> = d
            .publish
            .iter()
            .flat_map(|e| e.ports.entries(netpath_common::owner::APPLY))
            .collect();
        if let Some(why) = publish::conflict(&earlier, &ports) {
            return Err(fe(file, pos, format!("{why} by an earlier [[publish]]")));
        }
        d.publish.push(PubDecl { ports, at: at_ });
    }
    for f in &raw.filter {
        let pos = at(f.span());
        let f = f.get_ref();
        let mut sel = Selectors::default();
        if let Some(n) = &f.network {
            sel.network = Some(parsed(file, text, n, spec::parse_ifname)?);
        }
        if let Some(v) = &f.from {
            sel.from = Some(parsed(file, text, v, filter::parse_cidr)?);
        }
        if let Some(v) = &f.port {
            sel.port = Some(parsed(file, text, v, filter::parse_host_port)?);
        }
        if let Some(v) = &f.to {
            sel.to = Some(parsed(file, text, v, filter::parse_target)?);
        }
        let verdict = match f.verdict.get_ref().as_str() {
            "allow" => Verdict::Allow,
            "deny" => Verdict::Deny,
            other => {
                return Err(fe(
                    file,
                    at(f.verdict.span()),
                    format!("invalid verdict {other:?}: expected allow or deny"),
                ));
            }
        };
        if let Some(other) = d.filters.iter().find(|o| o.sel == sel) {
            return Err(fe(
                file,
                pos,
                format!(
                    "a rule with these selectors ({sel}) is already at {}",
                    other.at
                ),
            ));
        }
        d.filters.push(FilterDecl {
            sel,
            verdict,
            at: pos.unwrap_or(Pos { line: 1, col: 1 }),
        });
    }
    Ok(d)
}

mod render;
#[cfg(test)]
use render::quoted;
pub use render::{Exported, merge_ports, render};

#[cfg(test)]
mod tests;
