//! What dockerd has, reduced to what netpath acts on, and what netpath
//! should then have (pure: no I/O, unit-tested).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use bollard::models::{ContainerInspectResponse, Network, PortMap};
use ipnet::{Ipv4Net, Ipv6Net};
use netpath_common::GatewayMode;

use crate::{
    foreign::Foreign,
    net6::Net6Spec,
    publish::{Ports, v6::Ports6},
};

/// Docker's options of a bridge network (`docker network create -o …`).
pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPT_DEFAULT_BRIDGE: &str = "com.docker.network.bridge.default_bridge";
/// Docker 28's gateway mode (nat, nat-unprotected, routed, isolated).
pub const OPT_GATEWAY_MODE: &str = "com.docker.network.bridge.gateway_mode_ipv4";
/// Docker 28.2's interfaces with direct access to published container
/// ports, colon-separated.
pub const OPT_TRUSTED: &str = "com.docker.network.bridge.trusted_host_interfaces";

/// A dockerd bridge network, as `netpath up` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Net {
    pub name: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// A `--ipv6` network's IPv6 half, if netpath takes it.
    pub v6: Option<Net6Spec>,
    pub icc: bool,
    pub masquerade: bool,
    pub internal: bool,
    pub gateway_mode: GatewayMode,
    /// Trusted host interfaces (none before Docker 28.2).
    pub trusted: Vec<String>,
    /// Problems worth a log line (an option netpath cannot honour).
    pub notes: Vec<String>,
}

impl Net {
    /// `e`'s IPv6 address on this network, if netpath takes the network's
    /// IPv6 half and the address is in it.
    fn addr6(&self, e: &Endpoint) -> Option<Ipv6Addr> {
        e.addr6
            .filter(|a| self.v6.is_some_and(|v6| v6.subnet.contains(a)))
    }
}

/// A boolean network option: Docker's default is true, and only a value
/// that parses as false turns it off.
fn opt_true(opts: &HashMap<String, String>, key: &str) -> bool {
    opts.get(key)
        .is_none_or(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "0"))
}

/// The network netpath manages for `n`: `Ok(None)` for other drivers
/// (host, none, overlay, macvlan…), an error for a bridge network netpath
/// cannot take (no IPv4 subnet).
///
/// dockerd started with `--iptables=false` reports
/// `enable_ip_masquerade=false` for its default bridge whatever its
/// `--ip-masq` says (it cannot masquerade without iptables), so for that
/// network `default_masq` (netpath's own `--ip-masq`) decides.
pub fn net_from_api(n: &Network, default_masq: bool) -> Result<Option<Net>, String> {
    if n.driver.as_deref() != Some("bridge") {
        return Ok(None);
    }
    let name = n.name.clone().unwrap_or_default();
    let id = n.id.clone().unwrap_or_default();
    let empty = HashMap::new();
    let opts = n.options.as_ref().unwrap_or(&empty);
    // Docker names a user-defined network's bridge br-<first 12 of its id>.
    let bridge = match opts.get(OPT_BRIDGE_NAME) {
        Some(b) if !b.is_empty() => b.clone(),
        _ if id.len() >= 12 => format!("br-{}", &id[..12]),
        _ => return Err(format!("network {name}: no bridge name and no id")),
    };
    let configs = n
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_deref())
        .unwrap_or_default();
    let v4 = configs.iter().find_map(|c| {
        let subnet: Ipv4Net = c.subnet.as_deref()?.parse().ok()?;
        let gateway = c.gateway.as_deref().and_then(|g| g.parse().ok());
        Some((subnet, gateway))
    });
    let Some((subnet, gateway)) = v4 else {
        return Err(format!("network {name}: no IPv4 subnet"));
    };
    // An IPv6 subnet counts only on a network created with --ipv6 (for
    // the default bridge: dockerd's --ipv6 with --fixed-cidr-v6).
    let v6 = configs
        .iter()
        .filter(|_| n.enable_ipv6 == Some(true))
        .find_map(|c| {
            let subnet: Ipv6Net = c.subnet.as_deref()?.parse().ok()?;
            let gateway = c.gateway.as_deref().and_then(|g| g.parse().ok());
            Some((subnet, gateway))
        });
    let mut notes = Vec::new();
    // An IPv6 half netpath refuses (a documentation prefix…) leaves the
    // network IPv4-only: its IPv6 packets are dropped, and said so.
    let v6 = v6.and_then(|(subnet, gateway)| match Net6Spec::new(subnet, gateway) {
        Ok(v6) => Some(v6),
        Err(e) => {
            notes.push(format!(
                "network {name}: IPv6 {e:#}: its IPv6 traffic is dropped"
            ));
            None
        }
    });
    // Engines before 28 do not report a mode: Docker's default is nat.
    let gateway_mode = match opts.get(OPT_GATEWAY_MODE).map(|v| v.trim()) {
        None | Some("") => GatewayMode::Nat,
        Some(v) => match GatewayMode::ALL.into_iter().find(|m| m.as_str() == v) {
            Some(m) => m,
            None => {
                notes.push(format!(
                    "network {name}: gateway mode {v:?} is not supported, using nat"
                ));
                GatewayMode::Nat
            }
        },
    };
    Ok(Some(Net {
        name,
        bridge,
        subnet,
        gateway,
        v6,
        icc: opt_true(opts, OPT_ICC),
        masquerade: if opts.get(OPT_DEFAULT_BRIDGE).is_some_and(|v| v == "true") {
            default_masq
        } else {
            opt_true(opts, OPT_MASQUERADE)
        },
        internal: n.internal.unwrap_or(false),
        gateway_mode,
        trusted: opts
            .get(OPT_TRUSTED)
            .map(|v| {
                v.split(':')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        notes,
    }))
}

/// A container's address on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub network: String,
    pub addr: Ipv4Addr,
    /// Its global IPv6 address, on a `--ipv6` network.
    pub addr6: Option<Ipv6Addr>,
    pub mac: Option<[u8; 6]>,
    pub gw_priority: i64,
}

/// A running container's port bindings (`-p`) and endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub sandbox: Option<PathBuf>,
    pub endpoints: Vec<Endpoint>,
    pub bindings: Vec<Binding>,
    /// Bindings netpath cannot honour, each with why (port-changing SCTP,
    /// other protocols, host addresses that are not addresses).
    pub unhonoured: Vec<String>,
}

/// One `-p` binding as dockerd resolved it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    /// The host address; unspecified (`0.0.0.0`, `::`) for every host
    /// address of its family.
    pub host: IpAddr,
    pub host_port: u16,
    pub proto: u8,
    pub container_port: u16,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Bindings from Docker's `NetworkSettings.Ports` (`"80/tcp": [{HostIp,
/// HostPort}]`): TCP, UDP and SCTP (the same port on both sides), on
/// IPv4 and IPv6 host addresses.
/// Every other binding is returned in the second list, each with why,
/// so it is reported rather than dropped without a word.
pub fn bindings_from_api(ports: &PortMap) -> (Vec<Binding>, Vec<String>) {
    let mut out = Vec::new();
    let mut unhonoured = Vec::new();
    for (spec, hosts) in ports {
        let parsed = spec.split_once('/').and_then(|(port, proto)| {
            let proto = match proto {
                "tcp" => libc::IPPROTO_TCP as u8,
                "udp" => libc::IPPROTO_UDP as u8,
                "sctp" => libc::IPPROTO_SCTP as u8,
                _ => return None,
            };
            Some((port.parse::<u16>().ok()?, proto))
        });
        let Some((container_port, proto)) = parsed else {
            if hosts.as_ref().is_some_and(|h| !h.is_empty()) {
                unhonoured.push(format!("{spec}: only tcp, udp and sctp are published"));
            }
            continue;
        };
        for h in hosts.iter().flatten() {
            let host_ip = h.host_ip.as_deref().unwrap_or("");
            let Some(host_port) = h.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) else {
                unhonoured.push(format!("{spec} on {host_ip:?}: no host port"));
                continue;
            };
            // dockerd writes every IPv4 address as "0.0.0.0" (or nothing)
            // and every IPv6 address as "::".
            let host = match host_ip {
                "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ip => match ip.trim_start_matches('[').trim_end_matches(']').parse() {
                    Ok(a) => a,
                    Err(_) => {
                        unhonoured.push(format!("{ip}:{host_port} -> {spec}: not an address"));
                        continue;
                    }
                },
            };
            if let Err(e) = crate::spec::check_sctp_ports(proto, host_port, container_port) {
                unhonoured.push(format!("{}: {e:#}", binding_name(host, host_port, spec)));
                continue;
            }
            out.push(Binding {
                host,
                host_port,
                proto,
                container_port,
            });
        }
    }
    out.sort();
    out.dedup();
    unhonoured.sort();
    unhonoured.dedup();
    (out, unhonoured)
}

/// A binding as users write it: `0.0.0.0:8080 -> 80/tcp`,
/// `[::]:8080 -> 80/tcp`.
fn binding_name(host: IpAddr, port: u16, spec: &str) -> String {
    format!("{} -> {spec}", std::net::SocketAddr::new(host, port))
}

pub fn container_from_api(c: &ContainerInspectResponse) -> Container {
    let ns = c.network_settings.as_ref();
    let (bindings, unhonoured) = ns
        .and_then(|s| s.ports.as_ref())
        .map(bindings_from_api)
        .unwrap_or_default();
    let mut endpoints: Vec<Endpoint> = ns
        .and_then(|s| s.networks.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(net, ep)| {
            Some(Endpoint {
                network: net.clone(),
                addr: ep.ip_address.as_deref()?.parse().ok()?,
                addr6: ep
                    .global_ipv6_address
                    .as_deref()
                    .and_then(|a| a.parse().ok()),
                mac: ep.mac_address.as_deref().and_then(parse_mac),
                gw_priority: ep.gw_priority.unwrap_or(0),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| a.network.cmp(&b.network));
    Container {
        name: c
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        sandbox: ns
            .and_then(|s| s.sandbox_key.as_deref())
            .filter(|k| !k.is_empty())
            .map(PathBuf::from),
        endpoints,
        bindings,
        unhonoured,
    }
}

/// What netpath should have for dockerd's networks and running containers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub nets: Vec<Net>,
    pub ports: Vec<Ports>,
    pub ports6: Vec<Ports6>,
    pub endpoints: Vec<Foreign>,
    /// Why something of dockerd's is not mirrored.
    pub skipped: Vec<String>,
}

/// The container's endpoint that its published ports lead to: Docker
/// programs port mappings on the endpoint that gives the container its
/// default gateway, which is never on an internal network; among the rest
/// the highest gateway priority wins, then the network name.
fn published_endpoint<'a>(c: &'a Container, nets: &BTreeMap<&str, &Net>) -> Option<&'a Endpoint> {
    c.endpoints
        .iter()
        .filter(|e| nets.get(e.network.as_str()).is_some_and(|n| !n.internal))
        .min_by(|a, b| {
            b.gw_priority
                .cmp(&a.gw_priority)
                .then_with(|| a.network.cmp(&b.network))
        })
}

/// A binding's container side as Docker writes it (`80/tcp`).
fn port_spec(b: &Binding) -> String {
    format!(
        "{}/{}",
        b.container_port,
        crate::ctconfig::proto_name(b.proto)
    )
}

pub fn desired(nets: Vec<Net>, containers: &[Container]) -> Desired {
    let by_name: BTreeMap<&str, &Net> = nets.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut out = Desired::default();
    for c in containers {
        for e in &c.endpoints {
            let Some(net) = by_name.get(e.network.as_str()) else {
                continue;
            };
            match (e.mac, &c.sandbox) {
                (Some(mac), Some(sandbox)) => out.endpoints.push(Foreign {
                    bridge: net.bridge.clone(),
                    addr: e.addr,
                    addr6: net.addr6(e),
                    mac,
                    sandbox: sandbox.clone(),
                    name: c.name.clone(),
                }),
                _ => out.skipped.push(format!(
                    "{} on {}: no MAC or sandbox to bind its port to",
                    c.name, e.network
                )),
            }
        }
        out.skipped.extend(
            c.unhonoured
                .iter()
                .map(|why| format!("{}: binding {why}", c.name)),
        );
        if c.bindings.is_empty() {
            continue;
        }
        let Some(target) = published_endpoint(c, &by_name) else {
            out.skipped.push(format!(
                "{}: published ports but no endpoint on a non-internal bridge network",
                c.name
            ));
            continue;
        };
        let target6 = by_name
            .get(target.network.as_str())
            .and_then(|n| n.addr6(target));
        for b in &c.bindings {
            let (host_first, host_last, proto) = (b.host_port, b.host_port, b.proto);
            match (b.host, target6) {
                (IpAddr::V4(h), _) => out.ports.push(Ports {
                    host_addr: (!h.is_unspecified()).then_some(h),
                    host_first,
                    host_last,
                    proto,
                    target: target.addr,
                    target_first: b.container_port,
                }),
                (IpAddr::V6(h), Some(target6)) => out.ports6.push(Ports6 {
                    host_addr: (!h.is_unspecified()).then_some(h),
                    host_first,
                    host_last,
                    proto,
                    target: target6,
                    target_first: b.container_port,
                }),
                // An IPv6 host port to an IPv4-only container would take
                // NAT64, which netpath does not do.
                (IpAddr::V6(_), None) => out.skipped.push(format!(
                    "{}: binding {}: {}",
                    c.name,
                    binding_name(b.host, b.host_port, &port_spec(b)),
                    match target.addr6 {
                        Some(_) => format!(
                            "netpath does not take the IPv6 half of network {} (see its warning)",
                            target.network
                        ),
                        None => format!("its endpoint on {} has no IPv6 address", target.network),
                    }
                )),
            }
        }
    }
    out.ports.sort();
    out.ports.dedup();
    out.ports6.sort();
    out.ports6.dedup();
    out.nets = nets;
    out
}

#[cfg(test)]
mod tests;
