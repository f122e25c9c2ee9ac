//! What users ask for, typed and validated at the edge: a network
//! ([`NetworkSpec`] with its [`NetworkOptions`]) and one side of a published
//! port ([`PortSpec`]). clap's value parsers, the docker model and (later)
//! the CNI config all produce these; nothing past them parses strings.
//! Pure: no I/O, unit-tested on the host.

mod ports;

use std::net::Ipv4Addr;

use anyhow::{Result, bail};
use ipnet::Ipv4Net;
use netpath_common::{GatewayMode, IFNAMSIZ, NetworkInfo, net_flags};

use crate::codec::{be, from_be, ifname_from_bytes, ifname_to_bytes};

pub use ports::{
    PortSpec, check_publish, check_sctp_ports, parse_container_ports, parse_host_ports,
    parse_port_spec,
};

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
    // The kernel reads a '%' as a name template (`br%d` becomes br0), so
    // the link made would not be the one asked for.
    if name.contains('%') {
        bail!("invalid interface name {name:?}: '%' makes it a kernel name template");
    }
    Ok(())
}

/// [`validate_ifname`] as a clap value parser.
pub fn parse_ifname(s: &str) -> Result<String> {
    validate_ifname(s)?;
    Ok(s.to_owned())
}

/// Parses a subnet in CIDR notation; host bits must be zero, and no
/// reserved block may overlap it.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net> {
    let expected =
        || anyhow::anyhow!("invalid subnet {s:?}: expected IPv4 CIDR such as 172.17.0.0/16");
    // Leading zeros read as octal elsewhere (inet_aton: 010 is 8): refused
    // rather than guessed.
    let addr = s.split('/').next().unwrap_or_default();
    if addr.split('.').any(|o| o.len() > 1 && o.starts_with('0')) {
        return Err(expected());
    }
    let net: Ipv4Net = s.parse().map_err(|_| expected())?;
    if net.addr() != net.network() {
        bail!(
            "invalid subnet {s}: host bits are set (did you mean {}?)",
            net.trunc()
        );
    }
    check_subnet(net)?;
    Ok(net)
}

/// The checks of [`parse_subnet`] that a typed subnet (from dockerd, say)
/// still needs.
pub fn check_subnet(net: Ipv4Net) -> Result<()> {
    if net.addr() != net.network() {
        bail!("invalid subnet {net}: host bits are set");
    }
    if net.prefix_len() > 30 {
        bail!(
            "invalid subnet {net}: prefix longer than /30 leaves no room for a gateway and a container"
        );
    }
    for (block, what) in RESERVED {
        let block = Ipv4Net::new(Ipv4Addr::from(block.0), block.1).expect("a valid block");
        if overlaps(&net, &block) {
            bail!("invalid subnet {net}: it overlaps {block} ({what})");
        }
    }
    Ok(())
}

/// Address blocks no container network may use.
const RESERVED: [(([u8; 4], u8), &str); 5] = [
    (([0, 0, 0, 0], 8), "\"this network\""),
    (([127, 0, 0, 0], 8), "loopback"),
    (([169, 254, 0, 0], 16), "link-local"),
    (([224, 0, 0, 0], 4), "multicast"),
    (([240, 0, 0, 0], 4), "reserved, with the limited broadcast"),
];

/// Whether two subnets share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A network's IPv4 subnet and gateway, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4Spec {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Net4Spec {
    /// Checks a request; the gateway defaults to the subnet's first host
    /// address.
    pub fn new(subnet: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<Self> {
        check_subnet(subnet)?;
        let gateway = match gateway {
            None => subnet
                .hosts()
                .next()
                .expect("a /30 or larger subnet has hosts"),
            Some(g) => {
                if !subnet.contains(&g) {
                    bail!("gateway {g} is outside subnet {subnet}");
                }
                if g == subnet.network() || g == subnet.broadcast() {
                    bail!("gateway {g} is the network or broadcast address of {subnet}");
                }
                g
            }
        };
        Ok(Self { subnet, gateway })
    }

    /// Whether `gateway` is the one a network gets by default.
    pub fn default_gateway(&self) -> bool {
        self.subnet.hosts().next() == Some(self.gateway)
    }
}

/// "SUBNET gateway GATEWAY", as messages name a network's IPv4 half.
impl std::fmt::Display for Net4Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} gateway {}", self.subnet, self.gateway)
    }
}

/// A network as the user asked for it, validated: its bridge and, unless
/// it is IPv6-only, its IPv4 half (the IPv6 half is a [`Net6Spec`] next
/// to it, see `net6`).
///
/// [`Net6Spec`]: crate::net6::Net6Spec
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub bridge: String,
    /// `None`: an IPv6-only network.
    pub v4: Option<Net4Spec>,
}

impl NetworkSpec {
    /// An IPv4 (or dual-stack) network; see [`Net4Spec::new`].
    pub fn new(bridge: &str, subnet: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<Self> {
        validate_ifname(bridge)?;
        Ok(Self {
            bridge: bridge.to_owned(),
            v4: Some(Net4Spec::new(subnet, gateway)?),
        })
    }

    /// A network whose IPv4 half may be absent (an IPv6-only network,
    /// whose IPv6 half the caller holds).
    pub fn with(bridge: &str, v4: Option<Net4Spec>) -> Result<Self> {
        validate_ifname(bridge)?;
        Ok(Self {
            bridge: bridge.to_owned(),
            v4,
        })
    }

    /// The IPv4 subnet, if the network has one.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.v4.map(|v| v.subnet)
    }

    /// The record kept in `NP_NETWORKS`: an IPv6-only network's IPv4
    /// fields are zero and `net_flags::NO_IPV4` says they mean nothing.
    pub fn to_info(&self, bridge_ifindex: u32, flags: u32) -> NetworkInfo {
        let (subnet_be, mask_be, gateway_be, prefix_len, no_v4) = match self.v4 {
            Some(v) => (
                be(v.subnet.network()),
                be(v.subnet.netmask()),
                be(v.gateway),
                v.subnet.prefix_len(),
                0,
            ),
            None => (0, 0, 0, 0, net_flags::NO_IPV4),
        };
        NetworkInfo {
            subnet_be,
            mask_be,
            gateway_be,
            bridge_ifindex,
            flags: (flags & !net_flags::NO_IPV4) | no_v4,
            prefix_len,
            _pad: [0; 3],
            bridge_name: ifname_to_bytes(&self.bridge),
        }
    }

    /// Reads a record back.
    pub fn from_info(info: &NetworkInfo) -> Self {
        let v4 = (info.flags & net_flags::NO_IPV4 == 0).then(|| Net4Spec {
            subnet: Ipv4Net::new(from_be(info.subnet_be), info.prefix_len)
                .expect("stored prefix length is valid"),
            gateway: from_be(info.gateway_be),
        });
        Self {
            bridge: ifname_from_bytes(&info.bridge_name),
            v4,
        }
    }
}

/// A network's options (what `up`'s flags and `network set` control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Masquerade traffic of this network leaving through an uplink.
    pub masquerade: bool,
    /// Containers of this network may talk to each other.
    pub icc: bool,
    /// No traffic to or from outside the subnet.
    pub internal: bool,
    /// What reaches containers from outside the host.
    pub gateway_mode: GatewayMode,
    /// Mirrors a dockerd network (`netpath docker`), which takes it down
    /// again when dockerd's network goes.
    pub docker: bool,
    /// Made by `netpath apply` from a config file, which takes it down
    /// again when the file no longer names it.
    pub apply: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            masquerade: true,
            icc: true,
            internal: false,
            gateway_mode: GatewayMode::Nat,
            docker: false,
            apply: false,
        }
    }
}

impl NetworkOptions {
    /// Network flags that options control (the rest record what netpath
    /// created).
    pub const MASK: u32 = net_flags::NO_MASQUERADE
        | net_flags::NO_ICC
        | net_flags::INTERNAL
        | net_flags::DOCKER
        | net_flags::APPLY
        | GatewayMode::MASK;

    /// The options a network record carries.
    pub fn from_flags(flags: u32) -> Self {
        Self {
            masquerade: flags & net_flags::NO_MASQUERADE == 0,
            icc: flags & net_flags::NO_ICC == 0,
            internal: flags & net_flags::INTERNAL != 0,
            gateway_mode: GatewayMode::from_flags(flags),
            docker: flags & net_flags::DOCKER != 0,
            apply: flags & net_flags::APPLY != 0,
        }
    }

    /// The network flags these options set.
    pub fn flags(&self) -> u32 {
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
        if self.apply {
            f |= net_flags::APPLY;
        }
        f | self.gateway_mode.flags()
    }
}

#[cfg(test)]
pub(crate) fn net(bridge: &str, subnet: &str, gateway: Option<&str>) -> Result<NetworkSpec> {
    NetworkSpec::new(
        bridge,
        parse_subnet(subnet)?,
        gateway.map(|g| g.parse().expect("a test gateway")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_gateway_to_first_host() {
        let s = net("docker0", "172.17.0.0/16", None).unwrap();
        assert_eq!(s.v4.unwrap().gateway, Ipv4Addr::new(172, 17, 0, 1));
        assert!(s.v4.unwrap().default_gateway());
        let s = net("br-x", "10.9.0.0/24", Some("10.9.0.254")).unwrap();
        assert_eq!(s.v4.unwrap().gateway, Ipv4Addr::new(10, 9, 0, 254));
        assert!(!s.v4.unwrap().default_gateway());
    }

    #[test]
    fn spec_rejects_bad_input() {
        let err = |b, s, g| net(b, s, g).unwrap_err().to_string();
        assert!(err("d0", "172.17.0.0/33", None).contains("invalid subnet"));
        assert!(err("d0", "nonsense", None).contains("invalid subnet"));
        assert!(err("d0", "172.17.0.1/16", None).contains("host bits"));
        assert!(err("d0", "10.0.0.0/31", None).contains("/30"));
        assert!(err("d0", "172.17.0.0/16", Some("172.18.0.1")).contains("outside"));
        assert!(err("d0", "172.17.0.0/16", Some("172.17.0.0")).contains("network or broadcast"));
        assert!(err("d0", "172.17.0.0/16", Some("172.17.255.255")).contains("broadcast"));
        assert!(err("", "172.17.0.0/16", None).contains("interface name"));
        assert!(err("averyveryverylongname", "172.17.0.0/16", None).contains("interface name"));
        assert!(err("a/b", "172.17.0.0/16", None).contains("interface name"));
        assert!(err("br%d", "172.17.0.0/16", None).contains("template"));
        assert!(err("d0", "010.30.0.0/16", None).contains("invalid subnet"));
        // A typed subnet with host bits (from an API) is refused too.
        let typed = Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 1), 16).unwrap();
        assert!(
            NetworkSpec::new("d0", typed, None)
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
    }

    #[test]
    fn reserved_blocks_are_refused() {
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
    }

    #[test]
    fn info_round_trips() {
        let s = net("br-abc", "172.18.0.0/16", None).unwrap();
        let info = s.to_info(7, 3);
        assert_eq!(NetworkSpec::from_info(&info), s);
        assert!(info.contains_be(be(Ipv4Addr::new(172, 18, 3, 4))));
        assert!(!info.contains_be(be(Ipv4Addr::new(172, 19, 0, 1))));
        assert_eq!(info.bridge_ifindex, 7);
        assert_eq!(info.flags & net_flags::NO_IPV4, 0);
    }

    #[test]
    fn an_ipv6_only_record_says_so_and_contains_no_ipv4_address() {
        let s = NetworkSpec::with("br-v6", None).unwrap();
        let info = s.to_info(9, net_flags::NO_ICC);
        assert_eq!(info.flags, net_flags::NO_ICC | net_flags::NO_IPV4);
        assert_eq!((info.subnet_be, info.mask_be, info.gateway_be), (0, 0, 0));
        // A zero mask would match everything: the flag keeps it from it.
        for a in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(172, 18, 0, 2)] {
            assert!(!info.contains_be(be(a)), "{a}");
        }
        assert_eq!(NetworkSpec::from_info(&info), s);
        assert_eq!(s.subnet(), None);
        // A dual-stack spec never inherits the flag from stale bits.
        let d = net("br-d", "172.18.0.0/16", None).unwrap();
        let info = d.to_info(9, net_flags::NO_IPV4);
        assert_eq!(info.flags & net_flags::NO_IPV4, 0);
        assert!(NetworkSpec::with("a/b", None).is_err());
    }

    #[test]
    fn options_are_flags() {
        let o = NetworkOptions::default();
        assert_eq!(o.flags(), GatewayMode::Nat.flags());
        let o = NetworkOptions {
            masquerade: false,
            icc: false,
            internal: true,
            gateway_mode: GatewayMode::Routed,
            docker: true,
            apply: false,
        };
        assert_eq!(NetworkOptions::from_flags(o.flags()), o);
        let f = o.flags();
        assert_eq!(f & !NetworkOptions::MASK, 0);
        for bit in [
            net_flags::NO_MASQUERADE,
            net_flags::NO_ICC,
            net_flags::INTERNAL,
            net_flags::DOCKER,
        ] {
            assert_ne!(f & bit, 0);
        }
        assert_eq!(f & GatewayMode::MASK, GatewayMode::Routed.flags());
    }
}
