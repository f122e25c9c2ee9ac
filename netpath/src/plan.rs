//! Pure decisions, no I/O: how a request fits the networks already up,
//! which interface gets which role, which address and MAC a container gets.
//! Everything here is unit-tested on the host.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result, bail};
use ipnet::{Ipv4Net, Ipv6Net};
use netpath_common::{IfaceInfo, IfaceRole, iface_flags};

use crate::{
    codec::{be, fnv1a},
    spec::{NetworkSpec, overlaps},
};

/// An address the host has on an interface (IPv4 unless said otherwise),
/// with its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddr<A = Ipv4Addr> {
    pub ifname: String,
    pub addr: A,
    pub prefix_len: u8,
}

impl HostAddr {
    /// The subnet the address routes (its prefix).
    pub fn subnet(&self) -> Ipv4Net {
        Ipv4Net::new(self.addr, self.prefix_len)
            .map_or_else(|_| Ipv4Net::from(self.addr), |n| n.trunc())
    }
}

impl HostAddr<Ipv6Addr> {
    /// The subnet the address routes (its prefix).
    pub fn subnet(&self) -> Ipv6Net {
        Ipv6Net::new(self.addr, self.prefix_len)
            .map_or_else(|_| Ipv6Net::from(self.addr), |n| n.trunc())
    }
}

/// Host addresses (on interfaces other than managed bridges, `bridges`)
/// whose subnet overlaps one of `networks`: with one, egress from that
/// network to that interface's neighbours breaks, and their packets look
/// like spoofed container sources. One line each.
pub fn address_conflicts(
    networks: &[NetworkSpec],
    addrs: &[HostAddr],
    bridges: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for a in addrs.iter().filter(|a| !bridges.contains(&a.ifname)) {
        for n in networks {
            if let Some(subnet) = n.subnet().filter(|s| overlaps(s, &a.subnet())) {
                out.push(conflict(&subnet, &n.bridge, a));
            }
        }
    }
    out
}

/// [`address_conflicts`] for a network's IPv6 subnet on `bridge`.
pub fn address_conflicts6(
    subnet: &Ipv6Net,
    bridge: &str,
    addrs: &[HostAddr<Ipv6Addr>],
    bridges: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    // Overlapping: either holds the other's first address.
    let overlaps = |n: &Ipv6Net| subnet.contains(&n.network()) || n.contains(&subnet.network());
    addrs
        .iter()
        .filter(|a| !bridges.contains(&a.ifname) && overlaps(&a.subnet()))
        .map(|a| conflict(subnet, bridge, a))
        .collect()
}

fn conflict<A: std::fmt::Display>(
    subnet: &dyn std::fmt::Display,
    bridge: &str,
    a: &HostAddr<A>,
) -> String {
    format!(
        "subnet {subnet} of {bridge} overlaps {}'s address {}/{}",
        a.ifname, a.addr, a.prefix_len
    )
}

/// Rejects a request that clashes with the networks already managed
/// (`existing`: network id -> spec). Returns the id of the same network when
/// the request repeats one exactly (an idempotent `up`).
pub fn check_against_existing(
    spec: &NetworkSpec,
    existing: &BTreeMap<u32, NetworkSpec>,
) -> Result<Option<u32>> {
    let mut same = None;
    let says = |s: &NetworkSpec| match s.v4 {
        Some(v) => format!("subnet {v}"),
        None => "no IPv4 subnet".to_owned(),
    };
    for (&id, other) in existing {
        if other.bridge == spec.bridge {
            if other.v4 != spec.v4 {
                bail!(
                    "network {} is already up with {}; run `netpath down --bridge {}` first",
                    other.bridge,
                    says(other),
                    other.bridge
                );
            }
            same = Some(id);
        } else if let (Some(a), Some(b)) = (spec.subnet(), other.subnet())
            && overlaps(&a, &b)
        {
            bail!("subnet {a} overlaps network {} ({b})", other.bridge);
        }
    }
    Ok(same)
}

/// Lowest network id not in use (ids start at 1; 0 means "no network").
pub fn next_network_id(used: impl IntoIterator<Item = u32>, max: u32) -> Result<u32> {
    let used: std::collections::BTreeSet<u32> = used.into_iter().collect();
    (1..=max)
        .find(|id| !used.contains(id))
        .ok_or_else(|| anyhow::anyhow!("too many networks (at most {max})"))
}

/// What netpath needs to know about an interface to plan roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    pub is_bridge: bool,
    pub is_loopback: bool,
    /// ifindex of the bridge (or other master) this is enslaved to.
    pub master: Option<u32>,
    /// Primary IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// Whether it has a global IPv6 address usable as a source (what NAT66
    /// writes).
    pub ipv6: bool,
}

/// Which interfaces are uplinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uplinks {
    /// Every interface with an IPv4 address that is not a managed bridge,
    /// loopback, or enslaved (a port of any bridge).
    Auto,
    /// Exactly these names (set with `--uplink`).
    Explicit(Vec<String>),
}

/// An interface with the role netpath gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub info: IfaceInfo,
}

/// Assigns roles: managed bridges, their ports, then uplinks. `networks` maps
/// each managed bridge's ifindex to its network id. Fails when an explicit
/// uplink is missing or is itself a managed bridge or port.
pub fn plan_roles(
    links: &[LinkFacts],
    networks: &BTreeMap<u32, u32>,
    uplinks: &Uplinks,
) -> Result<BTreeMap<u32, Planned>> {
    let mut out = BTreeMap::new();
    for l in links {
        let (role, net_id) = if let Some(&net_id) = networks.get(&l.index) {
            (IfaceRole::Bridge, net_id)
        } else if let Some(&net_id) = l.master.and_then(|m| networks.get(&m)) {
            (IfaceRole::Port, net_id)
        } else {
            continue;
        };
        out.insert(l.index, planned(l, role, net_id, 0));
    }
    match uplinks {
        Uplinks::Auto => {
            for l in links {
                // An interface enslaved to anything (an unmanaged bridge's
                // port, a bond member) is not where IP traffic leaves: its
                // master is. Counting both would translate a packet twice.
                // Without an IPv4 or a global IPv6 address it cannot be a
                // masquerade source (a veth not yet enslaved, say); the
                // daemon re-plans when one is added. An IPv6-only host's
                // uplinks have the second alone.
                if !l.is_loopback
                    && l.master.is_none()
                    && (l.ipv4.is_some() || l.ipv6)
                    && !out.contains_key(&l.index)
                {
                    out.insert(l.index, planned(l, IfaceRole::Uplink, 0, 0));
                }
            }
        }
        Uplinks::Explicit(names) => {
            for name in names {
                let Some(l) = links.iter().find(|l| &l.name == name) else {
                    bail!("uplink {name} does not exist");
                };
                if let Some(p) = out.get(&l.index) {
                    bail!(
                        "uplink {name} is a managed {}",
                        IfaceRole::from_u32(p.info.role).map_or("interface", IfaceRole::as_str)
                    );
                }
                if l.is_loopback {
                    bail!("uplink {name} is the loopback interface");
                }
                out.insert(
                    l.index,
                    planned(l, IfaceRole::Uplink, 0, iface_flags::EXPLICIT_UPLINK),
                );
            }
        }
    }
    Ok(out)
}

fn planned(l: &LinkFacts, role: IfaceRole, net_id: u32, flags: u32) -> Planned {
    Planned {
        name: l.name.clone(),
        info: IfaceInfo {
            role: role as u32,
            net_id,
            flags,
            ipv4_be: l.ipv4.map_or(0, be),
            mac: [0; 6],
            _pad: [0; 2],
        },
    }
}

/// The address `connect` gives a container: `requested` after checking it,
/// otherwise the first host address of the subnet that is neither the
/// gateway nor in `used`.
pub fn choose_address(
    spec: &NetworkSpec,
    requested: Option<Ipv4Addr>,
    used: &std::collections::BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    let Some(v4) = spec.v4 else {
        bail!(
            "{} has no IPv4 subnet: it gives IPv6 addresses only",
            spec.bridge
        );
    };
    let net = v4.subnet;
    if let Some(a) = requested {
        if !net.contains(&a) {
            bail!("address {a} is outside {} ({net})", spec.bridge);
        }
        if a == net.network() || a == net.broadcast() {
            bail!("address {a} is the network or broadcast address of {net}");
        }
        if a == v4.gateway {
            bail!("address {a} is the gateway of {}", spec.bridge);
        }
        if used.contains(&a) {
            bail!("address {a} is already in use on {}", spec.bridge);
        }
        return Ok(a);
    }
    net.hosts()
        .find(|a| *a != v4.gateway && !used.contains(a))
        .with_context(|| format!("no free address left in {net}"))
}

/// A container's MAC, derived from its address the way Docker does
/// (`02:42:` + the four address bytes): locally administered, unicast, stable.
pub fn container_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A container's MAC on an IPv6-only network: `02:42:` and the address's
/// last four bytes, as [`container_mac`] does with an IPv4 address
/// (addresses are handed out from the subnet's start, so these differ
/// within a network).
pub fn container_mac6(addr: Ipv6Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[12], o[13], o[14], o[15]]
}

/// Host-side veth name for a container namespace on a network: stable for
/// the pair, 12 bytes, so `disconnect` and humans can find it.
pub fn host_veth_name(netns_cookie: u64, net_id: u32) -> String {
    let h = fnv1a(
        netns_cookie
            .to_le_bytes()
            .iter()
            .chain(&net_id.to_le_bytes())
            .copied(),
    );
    format!("np{:010x}", h & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec::fmt_mac, spec::net};

    fn link(index: u32, name: &str, master: Option<u32>) -> LinkFacts {
        LinkFacts {
            index,
            name: name.into(),
            is_bridge: false,
            is_loopback: index == 1,
            master,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, index as u8)),
            ipv6: false,
        }
    }

    #[test]
    fn host_address_overlaps_are_refused() {
        let nets = vec![net("np0", "198.18.0.0/16", None).unwrap()];
        let addr = |ifname: &str, a: &str, p| HostAddr {
            ifname: ifname.into(),
            addr: a.parse().unwrap(),
            prefix_len: p,
        };
        let addrs = vec![
            addr("uplink0", "198.18.0.1", 24),
            addr("np0", "198.18.0.1", 16),
            addr("eth1", "10.0.0.1", 8),
        ];
        let bridges = std::collections::BTreeSet::from(["np0".to_owned()]);
        let c = address_conflicts(&nets, &addrs, &bridges);
        assert_eq!(
            c,
            vec!["subnet 198.18.0.0/16 of np0 overlaps uplink0's address 198.18.0.1/24"]
        );
        // IPv6: an address inside the subnet, or a prefix around it.
        let addr6 = |ifname: &str, a: &str, p| HostAddr {
            ifname: ifname.to_owned(),
            addr: a.parse::<Ipv6Addr>().unwrap(),
            prefix_len: p,
        };
        let addrs6 = [
            addr6("eth1", "fd00:44::5", 128),
            addr6("eth2", "fd00::1", 16),
            addr6("eth3", "fd00:45::1", 64),
            addr6("np0", "fd00:44::1", 64),
        ];
        let c = address_conflicts6(&"fd00:44::/64".parse().unwrap(), "np0", &addrs6, &bridges);
        assert_eq!(
            c,
            vec![
                "subnet fd00:44::/64 of np0 overlaps eth1's address fd00:44::5/128",
                "subnet fd00:44::/64 of np0 overlaps eth2's address fd00::1/16",
            ]
        );
    }

    #[test]
    fn existing_networks_idempotent_conflict_overlap() {
        let mut existing = BTreeMap::new();
        existing.insert(1, net("docker0", "172.17.0.0/16", None).unwrap());
        let same = net("docker0", "172.17.0.0/16", None).unwrap();
        assert_eq!(check_against_existing(&same, &existing).unwrap(), Some(1));
        let other = net("br-a", "172.18.0.0/16", None).unwrap();
        assert_eq!(check_against_existing(&other, &existing).unwrap(), None);
        let changed = net("docker0", "172.17.0.0/24", None).unwrap();
        assert!(
            check_against_existing(&changed, &existing)
                .unwrap_err()
                .to_string()
                .contains("already up")
        );
        let inner = net("br-b", "172.17.5.0/24", None).unwrap();
        assert!(
            check_against_existing(&inner, &existing)
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
        let outer = net("br-c", "172.16.0.0/12", None).unwrap();
        assert!(
            check_against_existing(&outer, &existing)
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
        // IPv6-only: the same again is the same network, one with an IPv4
        // half is not, and it overlaps no IPv4 network.
        existing.insert(2, NetworkSpec::with("np6", None).unwrap());
        let only6 = NetworkSpec::with("np6", None).unwrap();
        assert_eq!(check_against_existing(&only6, &existing).unwrap(), Some(2));
        let grown = net("np6", "172.19.0.0/16", None).unwrap();
        let e = check_against_existing(&grown, &existing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already up with no IPv4 subnet"), "{e}");
        let shrunk = NetworkSpec::with("docker0", None).unwrap();
        let e = check_against_existing(&shrunk, &existing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already up with subnet 172.17.0.0/16"), "{e}");
        assert_eq!(
            check_against_existing(&NetworkSpec::with("np7", None).unwrap(), &existing).unwrap(),
            None
        );
        let e = choose_address(&only6, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no IPv4 subnet"), "{e}");
    }

    #[test]
    fn network_ids_fill_gaps() {
        assert_eq!(next_network_id([], 4).unwrap(), 1);
        assert_eq!(next_network_id([1, 2, 4], 4).unwrap(), 3);
        assert!(next_network_id([1, 2, 3, 4], 4).is_err());
    }

    #[test]
    fn roles_auto_uplinks() {
        let links = vec![
            link(1, "lo", None),
            link(2, "eth0", None),
            link(3, "docker0", None),
            link(4, "veth1", Some(3)),
            link(5, "br-x", None),
            link(6, "veth2", Some(5)),
        ];
        let nets = BTreeMap::from([(3, 1)]);
        let plan = plan_roles(&links, &nets, &Uplinks::Auto).unwrap();
        let role = |i: u32| plan.get(&i).map(|p| (p.info.role, p.info.net_id));
        assert_eq!(role(1), None, "loopback is never attached");
        assert_eq!(role(2), Some((IfaceRole::Uplink as u32, 0)));
        assert_eq!(role(3), Some((IfaceRole::Bridge as u32, 1)));
        assert_eq!(role(4), Some((IfaceRole::Port as u32, 1)));
        // An unmanaged bridge is an uplink by the default rule; its ports are not.
        assert_eq!(role(5), Some((IfaceRole::Uplink as u32, 0)));
        assert_eq!(role(6), None);
        // Neither is an interface without an IPv4 or global IPv6 address;
        // one with the second alone is (an IPv6-only host's).
        let mut bare = links.clone();
        bare[1].ipv4 = None;
        let plan = plan_roles(&bare, &nets, &Uplinks::Auto).unwrap();
        assert!(!plan.contains_key(&2));
        bare[1].ipv6 = true;
        let plan = plan_roles(&bare, &nets, &Uplinks::Auto).unwrap();
        assert_eq!(plan[&2].info.role, IfaceRole::Uplink as u32);
        assert_eq!(plan[&2].info.ipv4_be, 0);
    }

    #[test]
    fn roles_explicit_uplinks() {
        let links = vec![
            link(1, "lo", None),
            link(2, "eth0", None),
            link(3, "eth1", None),
            link(4, "docker0", None),
        ];
        let nets = BTreeMap::from([(4, 1)]);
        let plan = plan_roles(&links, &nets, &Uplinks::Explicit(vec!["eth1".into()])).unwrap();
        assert!(!plan.contains_key(&2));
        assert_eq!(
            plan[&3].info.flags & iface_flags::EXPLICIT_UPLINK,
            iface_flags::EXPLICIT_UPLINK
        );
        let e = |n: &str| {
            plan_roles(&links, &nets, &Uplinks::Explicit(vec![n.into()]))
                .unwrap_err()
                .to_string()
        };
        assert!(e("eth9").contains("does not exist"));
        assert!(e("docker0").contains("managed bridge"));
        assert!(e("lo").contains("loopback"));
    }

    #[test]
    fn addresses_skip_the_gateway_and_used_ones() {
        let spec = net("np0", "10.9.0.0/29", None).unwrap();
        let mut used = std::collections::BTreeSet::new();
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(choose_address(&spec, None, &used).unwrap(), a("10.9.0.2"));
        used.insert(a("10.9.0.2"));
        used.insert(a("10.9.0.4"));
        assert_eq!(choose_address(&spec, None, &used).unwrap(), a("10.9.0.3"));
        assert_eq!(
            choose_address(&spec, Some(a("10.9.0.6")), &used).unwrap(),
            a("10.9.0.6")
        );
        let err = |r: &str| {
            choose_address(&spec, Some(a(r)), &used)
                .unwrap_err()
                .to_string()
        };
        assert!(err("10.9.0.4").contains("in use"));
        assert!(err("10.9.0.1").contains("gateway"));
        assert!(err("10.9.0.7").contains("broadcast"));
        assert!(err("10.9.1.2").contains("outside"));
        for h in 3..=6 {
            used.insert(Ipv4Addr::new(10, 9, 0, h));
        }
        assert!(
            choose_address(&spec, None, &used)
                .unwrap_err()
                .to_string()
                .contains("no free address")
        );
        assert_eq!(container_mac(a("172.17.0.2")), [2, 0x42, 172, 17, 0, 2]);
        assert_eq!(
            fmt_mac(&container_mac(a("172.17.0.2"))),
            "02:42:ac:11:00:02"
        );
        let n = host_veth_name(12345, 1);
        assert_eq!(n.len(), 12);
        assert_eq!(n, host_veth_name(12345, 1));
        assert_ne!(n, host_veth_name(12345, 2));
    }
}
