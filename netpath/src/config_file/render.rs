//! What `netpath export` writes: the state as a file [`super::parse`]
//! reads back to the same state, and the single-port mappings merged back
//! into the ranges `publish` made.

use std::net::{IpAddr, Ipv6Addr};

use crate::{
    filter::{Selectors, Verdict},
    net6::Net6Spec,
    publish::{Ports, v6::Ports6},
    spec::{self, NetworkOptions, NetworkSpec},
};

/// `s` as a TOML basic string.
pub(super) fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What `export` writes, in the order it writes it.
#[derive(Clone, Debug, Default)]
pub struct Exported {
    /// Each network with its IPv6 half, if it has one.
    pub networks: Vec<(NetworkSpec, Option<Net6Spec>, NetworkOptions)>,
    /// Explicit uplinks (empty: chosen automatically), written on every
    /// network.
    pub uplinks: Vec<String>,
    pub publish: Vec<Ports>,
    pub publish6: Vec<Ports6>,
    pub filters: Vec<(Selectors, Verdict)>,
    /// Comment lines on what was left out (`netpath docker`'s).
    pub notes: Vec<String>,
}

/// The file `export` prints; [`parse`] reads it back to the same state.
pub fn render(e: &Exported) -> String {
    let mut out = String::from(
        "# netpath apply -f FILE: the networks, published ports and filter rules below\n",
    );
    for n in &e.notes {
        out.push_str(&format!("# {n}\n"));
    }
    for (spec, v6, o) in &e.networks {
        out.push_str("\n[[network]]\n");
        out.push_str(&format!("bridge = {}\n", quoted(&spec.bridge)));
        let subnets: Vec<String> = spec
            .subnet()
            .map(|s| s.to_string())
            .into_iter()
            .chain(v6.map(|v| v.subnet.to_string()))
            .map(|s| quoted(&s))
            .collect();
        match subnets.as_slice() {
            [one] => out.push_str(&format!("subnet = {one}\n")),
            many => out.push_str(&format!("subnets = [{}]\n", many.join(", "))),
        }
        if let Some(v6) = v6
            && Net6Spec::new(v6.subnet, None).is_ok_and(|d| d.gateway != v6.gateway)
        {
            out.push_str(&format!("gateway6 = {}\n", quoted(&v6.gateway.to_string())));
        }
        if let Some(v4) = spec.v4.filter(|v| !v.default_gateway()) {
            out.push_str(&format!("gateway = {}\n", quoted(&v4.gateway.to_string())));
        }
        out.push_str(&format!("masquerade = {}\n", o.masquerade));
        out.push_str(&format!("icc = {}\n", o.icc));
        out.push_str(&format!("internal = {}\n", o.internal));
        out.push_str(&format!(
            "gateway_mode = {}\n",
            quoted(o.gateway_mode.as_str())
        ));
        if !e.uplinks.is_empty() {
            let list: Vec<String> = e.uplinks.iter().map(|u| quoted(u)).collect();
            out.push_str(&format!("uplinks = [{}]\n", list.join(", ")));
        }
    }
    for p in &e.publish {
        let host = p.host_addr.map(IpAddr::V4);
        publish_entry(
            &mut out,
            host,
            IpAddr::V4(p.target),
            p.host_first,
            p.host_last,
            p.proto,
            p.target_first,
        );
    }
    for p in &e.publish6 {
        // Every IPv6 address is `[::]` (a bare port is IPv4's).
        let host = IpAddr::V6(p.host_addr.unwrap_or(Ipv6Addr::UNSPECIFIED));
        publish_entry(
            &mut out,
            Some(host),
            IpAddr::V6(p.target),
            p.host_first,
            p.host_last,
            p.proto,
            p.target_first,
        );
    }
    for (s, v) in &e.filters {
        out.push_str("\n[[filter]]\n");
        if let Some(n) = &s.network {
            out.push_str(&format!("network = {}\n", quoted(n)));
        }
        if let Some(c) = s.from {
            out.push_str(&format!("from = {}\n", quoted(&c.to_string())));
        }
        if let Some(p) = s.port {
            let port = format!("{}/{}", p.port, crate::ctconfig::proto_name(p.proto));
            out.push_str(&format!("port = {}\n", quoted(&port)));
        }
        if let Some(t) = s.to {
            let to = match t.port {
                Some(p) => format!("{}:{p}", t.addr),
                None => t.addr.to_string(),
            };
            out.push_str(&format!("to = {}\n", quoted(&to)));
        }
        out.push_str(&format!("verdict = {}\n", quoted(v.as_str())));
    }
    out
}

/// One `[[publish]]`: host ports `first..=last` of `proto` on `host`
/// (None: every IPv4 address) to `target` from `target_first` on.
fn publish_entry(
    out: &mut String,
    host: Option<IpAddr>,
    target: IpAddr,
    first: u16,
    last: u16,
    proto: u8,
    target_first: u16,
) {
    let host = spec::PortSpec {
        addr: host,
        first,
        last,
        proto: Some(proto),
    };
    let target = spec::PortSpec {
        addr: Some(target),
        first: target_first,
        last: target_first + (last - first),
        proto: None,
    };
    out.push_str(&format!(
        "\n[[publish]]\nhost = {}\ncontainer = {}\n",
        quoted(&host.to_string()),
        quoted(&target.to_string())
    ));
}

/// Single-port mappings merged into ranges where host and container
/// ports both run on (what `publish` of a range made), ordered.
pub fn merge_ports(mut single: Vec<Ports>) -> Vec<Ports> {
    single.sort_by_key(|p| (p.host_addr, p.proto, p.host_first));
    let mut out: Vec<Ports> = Vec::new();
    for p in single {
        match out.last_mut() {
            Some(r)
                if r.host_addr == p.host_addr
                    && r.proto == p.proto
                    && r.target == p.target
                    && u32::from(r.host_last) + 1 == u32::from(p.host_first)
                    && u32::from(r.target_first) + u32::from(r.host_last - r.host_first) + 1
                        == u32::from(p.target_first) =>
            {
                r.host_last = p.host_first;
            }
            _ => out.push(p),
        }
    }
    out
}
