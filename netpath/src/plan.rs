//! Pure decisions, no I/O: validating a network request and working out which
//! interface gets which role. Everything here is unit-tested on the host.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use ipnet::Ipv4Net;
use netpath_common::{IFNAMSIZ, IfaceInfo, IfaceRole, NetworkInfo, iface_flags};

/// A network as the user asked for it, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Checks an interface name the way the kernel does (`dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        bail!(
            "invalid interface name {name:?}: must be 1 to {} bytes",
            IFNAMSIZ - 1
        );
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        bail!("invalid interface name {name:?}");
    }
    Ok(())
}

/// Parses a subnet in CIDR notation; host bits must be zero.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        anyhow::anyhow!("invalid subnet {s:?}: expected IPv4 CIDR such as 172.17.0.0/16")
    })?;
    if net.addr() != net.network() {
        bail!(
            "invalid subnet {s}: host bits are set (did you mean {}?)",
            net.trunc()
        );
    }
    if net.prefix_len() > 30 {
        bail!(
            "invalid subnet {s}: prefix longer than /30 leaves no room for a gateway and a container"
        );
    }
    for (block, what) in RESERVED {
        let block: Ipv4Net = block.parse().expect("a valid block");
        if overlaps(&net, &block) {
            bail!("invalid subnet {s}: it overlaps {block} ({what})");
        }
    }
    Ok(net)
}

/// Address blocks no container network may use.
const RESERVED: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, with the limited broadcast"),
];

/// Whether two subnets share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// An IPv4 address the host has on an interface, with its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddr {
    pub ifname: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl HostAddr {
    /// The subnet the address routes (its prefix).
    pub fn subnet(&self) -> Ipv4Net {
        Ipv4Net::new(self.addr, self.prefix_len)
            .map_or_else(|_| Ipv4Net::from(self.addr), |n| n.trunc())
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
        for n in networks.iter().filter(|n| overlaps(&n.subnet, &a.subnet())) {
            out.push(format!(
                "subnet {} of {} overlaps {}'s address {}/{}",
                n.subnet, n.bridge, a.ifname, a.addr, a.prefix_len
            ));
        }
    }
    out
}

/// Builds a [`NetworkSpec`], defaulting the gateway to the first host address.
pub fn network_spec(bridge: &str, subnet: &str, gateway: Option<&str>) -> Result<NetworkSpec> {
    validate_ifname(bridge)?;
    let subnet = parse_subnet(subnet)?;
    let gateway = match gateway {
        None => subnet
            .hosts()
            .next()
            .expect("a /30 or larger subnet has hosts"),
        Some(g) => {
            let g: Ipv4Addr = g
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid gateway {g:?}: expected an IPv4 address"))?;
            if !subnet.contains(&g) {
                bail!("gateway {g} is outside subnet {subnet}");
            }
            if g == subnet.network() || g == subnet.broadcast() {
                bail!("gateway {g} is the network or broadcast address of {subnet}");
            }
            g
        }
    };
    Ok(NetworkSpec {
        bridge: bridge.to_owned(),
        subnet,
        gateway,
    })
}

/// IPv4 address in network byte order, as the datapath stores it.
pub fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`be`].
pub fn from_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// Decodes a NUL-padded interface name.
pub fn ifname_from_bytes(b: &[u8; IFNAMSIZ]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(IFNAMSIZ);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl NetworkSpec {
    /// The record kept in `NP_NETWORKS`.
    pub fn to_info(&self, bridge_ifindex: u32, flags: u32) -> NetworkInfo {
        let mut bridge_name = [0u8; IFNAMSIZ];
        bridge_name[..self.bridge.len()].copy_from_slice(self.bridge.as_bytes());
        NetworkInfo {
            subnet_be: be(self.subnet.network()),
            mask_be: be(self.subnet.netmask()),
            gateway_be: be(self.gateway),
            bridge_ifindex,
            flags,
            prefix_len: self.subnet.prefix_len(),
            _pad: [0; 3],
            bridge_name,
        }
    }

    /// Reads a record back.
    pub fn from_info(info: &NetworkInfo) -> Self {
        Self {
            bridge: ifname_from_bytes(&info.bridge_name),
            subnet: Ipv4Net::new(from_be(info.subnet_be), info.prefix_len)
                .expect("stored prefix length is valid"),
            gateway: from_be(info.gateway_be),
        }
    }
}

/// Rejects a request that clashes with the networks already managed
/// (`existing`: network id -> spec). Returns the id of the same network when
/// the request repeats one exactly (an idempotent `up`).
pub fn check_against_existing(
    spec: &NetworkSpec,
    existing: &BTreeMap<u32, NetworkSpec>,
) -> Result<Option<u32>> {
    let mut same = None;
    for (&id, other) in existing {
        if other.bridge == spec.bridge {
            if other.subnet != spec.subnet || other.gateway != spec.gateway {
                bail!(
                    "network {} is already up with subnet {} gateway {}; run `netpath down --bridge {}` first",
                    other.bridge,
                    other.subnet,
                    other.gateway,
                    other.bridge
                );
            }
            same = Some(id);
        } else if other.subnet.contains(&spec.subnet.network())
            || spec.subnet.contains(&other.subnet.network())
        {
            bail!(
                "subnet {} overlaps network {} ({})",
                spec.subnet,
                other.bridge,
                other.subnet
            );
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
                // Without an IPv4 address it cannot be a masquerade source
                // (a veth not yet enslaved, say); the daemon re-plans when
                // one is added.
                if !l.is_loopback
                    && l.master.is_none()
                    && l.ipv4.is_some()
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
    requested: Option<&str>,
    used: &std::collections::BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    let net = spec.subnet;
    if let Some(r) = requested {
        let a: Ipv4Addr = r
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid address {r:?}: expected an IPv4 address"))?;
        if !net.contains(&a) {
            bail!("address {a} is outside {} ({net})", spec.bridge);
        }
        if a == net.network() || a == net.broadcast() {
            bail!("address {a} is the network or broadcast address of {net}");
        }
        if a == spec.gateway {
            bail!("address {a} is the gateway of {}", spec.bridge);
        }
        if used.contains(&a) {
            bail!("address {a} is already in use on {}", spec.bridge);
        }
        return Ok(a);
    }
    net.hosts()
        .find(|a| *a != spec.gateway && !used.contains(a))
        .with_context(|| format!("no free address left in {net}"))
}

/// A container's MAC, derived from its address the way Docker does
/// (`02:42:` + the four address bytes): locally administered, unicast, stable.
pub fn container_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A MAC as `ip link` prints it (`02:42:ac:11:00:02`).
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// 64-bit FNV-1a of `bytes`: a stable, dependency-free fingerprint.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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

/// One side of `netpath publish`: `[IP:]PORT[-END][/PROTO]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `None`: every host address.
    pub addr: Option<Ipv4Addr>,
    pub first: u16,
    pub last: u16,
    /// 6 or 17; `None` when not given (tcp by default).
    pub proto: Option<u8>,
}

impl PortSpec {
    /// Number of ports (a spec always has at least one).
    pub fn count(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn proto_or_tcp(&self) -> u8 {
        self.proto.unwrap_or(6)
    }
}

fn parse_port(s: &str, what: &str) -> Result<u16> {
    let n: u32 = s
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid {what} {s:?}: expected a number from 1 to 65535"))?;
    if n == 0 || n > 65535 {
        bail!("invalid {what} {n}: ports go from 1 to 65535");
    }
    Ok(n as u16)
}

/// Parses `[IP:]PORT[-END][/tcp|/udp]`. `need_addr`: the address is
/// mandatory (the container side); `allow_proto`: a protocol may follow.
pub fn parse_port_spec(s: &str, need_addr: bool, allow_proto: bool) -> Result<PortSpec> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) if allow_proto => {
            let p = match p.to_ascii_lowercase().as_str() {
                "tcp" => 6,
                "udp" => 17,
                _ => bail!("invalid protocol {p:?} in {s:?}: expected tcp or udp"),
            };
            (r, Some(p))
        }
        Some(_) => bail!("invalid {s:?}: the protocol goes with the host port"),
        None => (s, None),
    };
    let (addr, ports) = match rest.rsplit_once(':') {
        Some((a, p)) => {
            let a: Ipv4Addr = a
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid address {a:?} in {s:?}"))?;
            (Some(a), p)
        }
        None if need_addr => bail!("invalid {s:?}: expected CONTAINER_IP:PORT[-END]"),
        None => (None, rest),
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (parse_port(a, "port")?, parse_port(b, "port")?),
        None => {
            let p = parse_port(ports, "port")?;
            (p, p)
        }
    };
    if last < first {
        bail!("invalid port range {first}-{last} in {s:?}: the end is below the start");
    }
    Ok(PortSpec {
        addr: addr.filter(|a| !a.is_unspecified()),
        first,
        last,
        proto,
    })
}

/// Checks `publish HOST CONTAINER`: equal range lengths. (Conflicts and the
/// container's network need the current state; see `publish`.)
pub fn check_publish(host: &PortSpec, target: &PortSpec) -> Result<()> {
    if host.count() != target.count() {
        bail!(
            "the host range has {} ports and the container range {}: they must be the same length",
            host.count(),
            target.count()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, master: Option<u32>) -> LinkFacts {
        LinkFacts {
            index,
            name: name.into(),
            is_bridge: false,
            is_loopback: index == 1,
            master,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, index as u8)),
        }
    }

    #[test]
    fn spec_defaults_gateway_to_first_host() {
        let s = network_spec("docker0", "172.17.0.0/16", None).unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(172, 17, 0, 1));
        let s = network_spec("br-x", "10.9.0.0/24", Some("10.9.0.254")).unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(10, 9, 0, 254));
    }

    #[test]
    fn spec_rejects_bad_input() {
        let err = |b, s, g| network_spec(b, s, g).unwrap_err().to_string();
        assert!(err("d0", "172.17.0.0/33", None).contains("invalid subnet"));
        assert!(err("d0", "nonsense", None).contains("invalid subnet"));
        assert!(err("d0", "172.17.0.1/16", None).contains("host bits"));
        assert!(err("d0", "10.0.0.0/31", None).contains("/30"));
        assert!(err("d0", "172.17.0.0/16", Some("172.18.0.1")).contains("outside"));
        assert!(err("d0", "172.17.0.0/16", Some("172.17.0.0")).contains("network or broadcast"));
        assert!(err("d0", "172.17.0.0/16", Some("172.17.255.255")).contains("broadcast"));
        assert!(err("d0", "172.17.0.0/16", Some("x")).contains("invalid gateway"));
        assert!(err("", "172.17.0.0/16", None).contains("interface name"));
        assert!(err("averyveryverylongname", "172.17.0.0/16", None).contains("interface name"));
        assert!(err("a/b", "172.17.0.0/16", None).contains("interface name"));
    }

    #[test]
    fn reserved_blocks_and_host_address_overlaps_are_refused() {
        for bad in [
            "0.0.0.0/0",
            "0.0.0.0/24",
            "127.0.0.0/8",
            "127.1.0.0/16",
            "224.0.0.0/24",
            "239.1.0.0/16",
            "240.0.0.0/24",
            "255.255.255.0/24",
            "169.254.0.0/24",
        ] {
            let e = parse_subnet(bad).unwrap_err().to_string();
            assert!(e.contains("overlaps"), "{bad}: {e}");
        }
        assert!(parse_subnet("172.16.0.0/12").is_ok());
        let nets = vec![network_spec("np0", "198.18.0.0/16", None).unwrap()];
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
    }

    #[test]
    fn info_round_trips() {
        let s = network_spec("br-abc", "172.18.0.0/16", None).unwrap();
        let info = s.to_info(7, 3);
        assert_eq!(NetworkSpec::from_info(&info), s);
        assert!(info.contains_be(be(Ipv4Addr::new(172, 18, 3, 4))));
        assert!(!info.contains_be(be(Ipv4Addr::new(172, 19, 0, 1))));
        assert_eq!(info.bridge_ifindex, 7);
    }

    #[test]
    fn existing_networks_idempotent_conflict_overlap() {
        let mut existing = BTreeMap::new();
        existing.insert(1, network_spec("docker0", "172.17.0.0/16", None).unwrap());
        let same = network_spec("docker0", "172.17.0.0/16", None).unwrap();
        assert_eq!(check_against_existing(&same, &existing).unwrap(), Some(1));
        let other = network_spec("br-a", "172.18.0.0/16", None).unwrap();
        assert_eq!(check_against_existing(&other, &existing).unwrap(), None);
        let changed = network_spec("docker0", "172.17.0.0/24", None).unwrap();
        assert!(
            check_against_existing(&changed, &existing)
                .unwrap_err()
                .to_string()
                .contains("already up")
        );
        let inner = network_spec("br-b", "172.17.5.0/24", None).unwrap();
        assert!(
            check_against_existing(&inner, &existing)
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
        let outer = network_spec("br-c", "172.16.0.0/12", None).unwrap();
        assert!(
            check_against_existing(&outer, &existing)
                .unwrap_err()
                .to_string()
                .contains("overlaps")
        );
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
        // Neither is an interface without an IPv4 address.
        let mut bare = links.clone();
        bare[1].ipv4 = None;
        let plan = plan_roles(&bare, &nets, &Uplinks::Auto).unwrap();
        assert!(!plan.contains_key(&2));
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
        let spec = network_spec("np0", "10.9.0.0/29", None).unwrap();
        let mut used = std::collections::BTreeSet::new();
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(choose_address(&spec, None, &used).unwrap(), a("10.9.0.2"));
        used.insert(a("10.9.0.2"));
        used.insert(a("10.9.0.4"));
        assert_eq!(choose_address(&spec, None, &used).unwrap(), a("10.9.0.3"));
        assert_eq!(
            choose_address(&spec, Some("10.9.0.6"), &used).unwrap(),
            a("10.9.0.6")
        );
        let err = |r: &str| {
            choose_address(&spec, Some(r), &used)
                .unwrap_err()
                .to_string()
        };
        assert!(err("10.9.0.4").contains("in use"));
        assert!(err("10.9.0.1").contains("gateway"));
        assert!(err("10.9.0.7").contains("broadcast"));
        assert!(err("10.9.1.2").contains("outside"));
        assert!(err("nope").contains("invalid address"));
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

    #[test]
    fn port_specs_parse_and_reject() {
        let p = parse_port_spec("8081", false, true).unwrap();
        assert_eq!(
            (p.addr, p.first, p.last, p.proto_or_tcp()),
            (None, 8081, 8081, 6)
        );
        let p = parse_port_spec("127.0.0.1:8080-8090/udp", false, true).unwrap();
        assert_eq!(
            (p.addr, p.first, p.last, p.proto),
            (Some(Ipv4Addr::LOCALHOST), 8080, 8090, Some(17))
        );
        assert_eq!(p.count(), 11);
        let t = parse_port_spec("172.18.0.2:80", true, false).unwrap();
        assert_eq!((t.addr, t.first), (Some(Ipv4Addr::new(172, 18, 0, 2)), 80));
        assert_eq!(
            parse_port_spec("0.0.0.0:53/udp", false, true).unwrap().addr,
            None
        );
        let err = |s: &str, need: bool, proto: bool| {
            parse_port_spec(s, need, proto).unwrap_err().to_string()
        };
        assert!(err("0", false, true).contains("1 to 65535"));
        assert!(err("65536", false, true).contains("1 to 65535"));
        assert!(err("x", false, true).contains("invalid port"));
        assert!(err("80/sctp", false, true).contains("tcp or udp"));
        assert!(err("90-80", false, true).contains("below"));
        assert!(err("80", true, false).contains("CONTAINER_IP:PORT"));
        assert!(err("172.18.0.2:80/tcp", true, false).contains("host port"));
        assert!(err("1.2.3:80", false, true).contains("invalid address"));
        let h = parse_port_spec("8000-8009", false, true).unwrap();
        let t = parse_port_spec("172.18.0.2:80-88", true, false).unwrap();
        assert!(
            check_publish(&h, &t)
                .unwrap_err()
                .to_string()
                .contains("same length")
        );
    }
}
