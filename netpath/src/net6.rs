//! The IPv6 half of a dual-stack network: typed and checked at the edge
//! ([`Net6Spec`]), the maps that hold it ([`Maps6`]) and what `up`,
//! `down`, `connect` and the reconcile do with them. Pure except for the
//! map handles, so the checks are unit-tested on the host.

mod leases;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{
    Array, HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::{IpNet, Ipv6Net};
use netpath_common::{
    Endpoint, Lease,
    ct6::{CtEntry6, CtKey6, MAX_CT6},
    map_names,
    v6::{Addr6Key, LeaseKey6, NetworkInfo6, Port6, PortKey6, PubVal6, net6_flags},
};

use crate::{
    spec::Net4Spec,
    tables::{Table as _, is_missing},
};

/// A network's IPv6 subnet and gateway, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net6Spec {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
}

/// Blocks no container network may use (RFC 6890's special-purpose ones
/// the host itself gives meaning to).
const RESERVED6: [(&str, &str); 9] = [
    (
        "::/8",
        "loopback, unspecified, IPv4-mapped and NAT64 addresses",
    ),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "deprecated site-local"),
    ("ff00::/8", "multicast"),
];

impl Net6Spec {
    /// Checks a request; the gateway defaults to the subnet's first
    /// address after the subnet-router anycast one (`…::1`).
    pub fn new(subnet: Ipv6Net, gateway: Option<Ipv6Addr>) -> Result<Self> {
        if subnet.addr() != subnet.network() {
            bail!(
                "invalid subnet {subnet}: host bits are set (did you mean {}?)",
                subnet.trunc()
            );
        }
        if subnet.prefix_len() > 126 {
            bail!(
                "invalid subnet {subnet}: prefix longer than /126 leaves no room for a gateway and a container"
            );
        }
        for (block, what) in RESERVED6 {
            let block: Ipv6Net = block.parse().context("a valid block")?;
            if overlaps(&block, &subnet) {
                bail!("invalid subnet {subnet}: it overlaps {block} ({what})");
            }
        }
        let gateway = match gateway {
            None => nth(subnet, 1),
            Some(g) => {
                if !subnet.contains(&g) {
                    bail!("gateway {g} is outside subnet {subnet}");
                }
                if g == subnet.network() {
                    bail!("gateway {g} is the subnet-router anycast address of {subnet}");
                }
                g
            }
        };
        Ok(Self { subnet, gateway })
    }

    /// The record kept in `NP_NETWORKS6`.
    pub fn to_info(&self, flags: u32) -> NetworkInfo6 {
        NetworkInfo6 {
            subnet: self.subnet.network().octets(),
            gateway: self.gateway.octets(),
            prefix_len: self.subnet.prefix_len(),
            _pad: [0; 3],
            flags,
        }
    }

    /// Reads a record back.
    pub fn from_info(info: &NetworkInfo6) -> Result<Self> {
        Ok(Self {
            subnet: Ipv6Net::new(Ipv6Addr::from(info.subnet), info.prefix_len)
                .context("a stored IPv6 prefix length")?,
            gateway: Ipv6Addr::from(info.gateway),
        })
    }
}

/// "SUBNET gateway GATEWAY", as messages name a network's IPv6 half.
impl std::fmt::Display for Net6Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} gateway {}", self.subnet, self.gateway)
    }
}

/// Whether two subnets share an address.
pub fn overlaps(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The `n`th address of `subnet` (0 is the subnet-router anycast address).
pub fn nth(subnet: Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(n))
}

/// Parses `--subnet`: IPv4 or IPv6 CIDR (host bits and reserved blocks are
/// checked where the family's rules are, see [`split`]).
pub fn parse_any_subnet(s: &str) -> Result<IpNet> {
    if s.contains(':') {
        let net: Ipv6Net = s.parse().map_err(|_| {
            anyhow::anyhow!("invalid subnet {s:?}: expected IPv6 CIDR such as fd00:18::/64")
        })?;
        Net6Spec::new(net, None)?;
        Ok(IpNet::V6(net))
    } else {
        crate::spec::parse_subnet(s).map(IpNet::V4)
    }
}

/// A network's subnets and gateways as given (`--subnet`, `--gateway`,
/// each repeatable): at most one subnet per family and at least one, at
/// most one gateway per family, each in its family's subnet.
pub fn split(
    subnets: &[IpNet],
    gateways: &[IpAddr],
) -> Result<(Option<Net4Spec>, Option<Net6Spec>)> {
    let mut v4 = None;
    let mut v6 = None;
    for s in subnets {
        match s {
            IpNet::V4(n) if v4.is_some() => bail!(
                "two IPv4 subnets ({} and {n}): a network has at most one per family",
                v4.unwrap_or(*n)
            ),
            IpNet::V4(n) => v4 = Some(*n),
            IpNet::V6(n) if v6.is_some() => bail!(
                "two IPv6 subnets ({} and {n}): a network has at most one per family",
                v6.unwrap_or(*n)
            ),
            IpNet::V6(n) => v6 = Some(*n),
        }
    }
    let (mut gw4, mut gw6) = (None, None);
    for g in gateways {
        match g {
            IpAddr::V4(a) if gw4.replace(*a).is_some() => {
                bail!("two IPv4 gateways: give --gateway once per family")
            }
            IpAddr::V6(a) if gw6.replace(*a).is_some() => {
                bail!("two IPv6 gateways: give --gateway once per family")
            }
            _ => {}
        }
    }
    if v4.is_none() && v6.is_none() {
        bail!("a network needs a subnet: give --subnet (IPv4, IPv6, or one of each)");
    }
    if gw4.is_some() && v4.is_none() {
        bail!("an IPv4 gateway needs an IPv4 subnet");
    }
    if gw6.is_some() && v6.is_none() {
        bail!("an IPv6 gateway needs an IPv6 subnet");
    }
    let v4 = v4.map(|n| Net4Spec::new(n, gw4)).transpose()?;
    let v6 = v6.map(|n| Net6Spec::new(n, gw6)).transpose()?;
    Ok((v4, v6))
}

/// Typed handles on the IPv6 maps.
pub struct Maps6 {
    pub networks: HashMap<MapData, u32, NetworkInfo6>,
    pub subnets: LpmTrie<MapData, [u8; 16], u32>,
    pub ports: HashMap<MapData, u32, Port6>,
    pub endpoints: HashMap<MapData, Addr6Key, Endpoint>,
    pub leases: HashMap<MapData, LeaseKey6, Lease>,
    /// The IPv6 conntrack table, its fill count and limit.
    pub ct: HashMap<MapData, CtKey6, CtEntry6>,
    pub ct_fill: Array<MapData, u64>,
    /// Uplink ifindex -> the address NAT66 writes.
    pub uplinks: HashMap<MapData, u32, [u8; 16]>,
    /// Published IPv6 ports, the container ports they lead to, and the
    /// host's IPv6 addresses (`publish::v6`).
    pub publish: HashMap<MapData, PortKey6, PubVal6>,
    pub targets: HashMap<MapData, PortKey6, u32>,
    pub hostaddrs: HashMap<MapData, [u8; 16], u32>,
}

impl Maps6 {
    /// Wraps the maps by name (see `Maps::from_source`).
    pub fn from_source(take: &mut impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let layout = |name: &str| format!("{name} layout");
        Ok(Self {
            networks: HashMap::try_from(take(map_names::NETWORKS6)?)
                .context(layout(map_names::NETWORKS6))?,
            subnets: LpmTrie::try_from(take(map_names::SUBNETS6)?)
                .context(layout(map_names::SUBNETS6))?,
            ports: HashMap::try_from(take(map_names::PORTS6)?)
                .context(layout(map_names::PORTS6))?,
            endpoints: HashMap::try_from(take(map_names::ENDPOINTS6)?)
                .context(layout(map_names::ENDPOINTS6))?,
            leases: HashMap::try_from(take(map_names::LEASES6)?)
                .context(layout(map_names::LEASES6))?,
            ct: HashMap::try_from(take(map_names::CT6)?).context(layout(map_names::CT6))?,
            ct_fill: Array::try_from(take(map_names::CT6_FILL)?)
                .context(layout(map_names::CT6_FILL))?,
            uplinks: HashMap::try_from(take(map_names::UPLINKS6)?)
                .context(layout(map_names::UPLINKS6))?,
            publish: HashMap::try_from(take(map_names::PUBLISH6)?)
                .context(layout(map_names::PUBLISH6))?,
            targets: HashMap::try_from(take(map_names::TARGETS6)?)
                .context(layout(map_names::TARGETS6))?,
            hostaddrs: HashMap::try_from(take(map_names::HOSTADDRS6)?)
                .context(layout(map_names::HOSTADDRS6))?,
        })
    }

    /// Every IPv6 conntrack entry (both directions; one deleted while we
    /// walk is skipped).
    pub fn ct_entries(&self) -> Result<Vec<(CtKey6, CtEntry6)>> {
        self.ct.entries().context("reading NP_CT6")
    }

    /// Sets the limit past which the datapath refuses new IPv6 flows
    /// (`ct::fill`; the table keeps its built-in size).
    /// `NP_CT6`'s live entry count and limit (see `Maps::ct_fill`).
    pub fn ct_fill(&self) -> Result<(i64, u64)> {
        crate::tables::read_ct_fill(&self.ct_fill, map_names::CT6_FILL)
    }

    pub fn set_ct_limit(&mut self) -> Result<()> {
        crate::tables::write_ct_limit(&mut self.ct_fill, MAX_CT6)
            .context("writing the IPv6 conntrack limit")
    }

    /// The IPv6 half of network `net_id`, if it has one.
    pub fn network(&self, net_id: u32) -> Result<Option<NetworkInfo6>> {
        match self.networks.get(&net_id, 0) {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e).context("reading NP_NETWORKS6"),
        }
    }

    /// The IPv6 half of network `net_id` as a spec, if it has one.
    pub fn spec(&self, net_id: u32) -> Result<Option<Net6Spec>> {
        self.network(net_id)?
            .map(|i| Net6Spec::from_info(&i))
            .transpose()
    }

    /// Every network's IPv6 half.
    pub fn all(&self) -> Result<BTreeMap<u32, NetworkInfo6>> {
        self.networks
            .iter()
            .map(|r| r.context("reading NP_NETWORKS6"))
            .collect()
    }

    /// Records (or replaces) network `net_id`'s IPv6 half.
    pub fn record(&mut self, net_id: u32, spec: &Net6Spec, flags: u32) -> Result<()> {
        if let Some(old) = self.network(net_id)? {
            let old = Net6Spec::from_info(&old)?;
            if old.subnet != spec.subnet {
                self.remove_subnet(old.subnet)?;
            }
        }
        self.networks
            .insert(net_id, spec.to_info(flags), 0)
            .context("recording the IPv6 subnet")?;
        self.subnets
            .insert(&subnet_key(spec.subnet), net_id, 0)
            .context("recording the IPv6 subnet")
    }

    /// Forgets network `net_id`'s IPv6 half and every port, endpoint and
    /// lease of it; returns what it was, with its flags.
    pub fn forget(&mut self, net_id: u32) -> Result<Option<(Net6Spec, u32)>> {
        let Some(info) = self.network(net_id)? else {
            return Ok(None);
        };
        let spec = Net6Spec::from_info(&info)?;
        self.remove_subnet(spec.subnet)?;
        let leases: Vec<LeaseKey6> = self
            .leases
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.net_id == net_id)
            .collect();
        for k in leases {
            ignore_missing(self.leases.remove(&k))?;
        }
        let eps: Vec<(Addr6Key, Endpoint)> = self
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.net_id == net_id)
            .collect();
        for (k, e) in eps {
            ignore_missing(self.endpoints.remove(&k))?;
            ignore_missing(self.ports.remove(&e.ifindex))?;
        }
        ignore_missing(self.networks.remove(&net_id))?;
        Ok(Some((spec, info.flags)))
    }

    fn remove_subnet(&mut self, subnet: Ipv6Net) -> Result<()> {
        ignore_missing(self.subnets.remove(&subnet_key(subnet)))
    }

    /// Brings `NP_ENDPOINTS6` and `NP_PORTS6` in line with the interfaces,
    /// in one walk of each: drops what ports and bridges that are no longer
    /// ports or bridges of `net_of` (ifindex -> network) sent from, the
    /// records of ports that went, and addresses `bridges` no longer have;
    /// records the bridges' own addresses (`bridge_addrs`, from
    /// [`crate::reconcile6::want_bridge_addrs`]). An address a port took
    /// before its bridge had it goes to the bridge.
    pub fn sync_endpoints(
        &mut self,
        net_of: &BTreeMap<u32, u32>,
        bridges: &BTreeSet<u32>,
        bridge_addrs: &BTreeMap<Addr6Key, Endpoint>,
    ) -> Result<()> {
        let stale: Vec<Addr6Key> = self
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| {
                net_of.get(&e.ifindex) != Some(&e.net_id)
                    || bridges.contains(&e.ifindex) && !bridge_addrs.contains_key(k)
            })
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            ignore_missing(self.endpoints.remove(&k))?;
        }
        let ports: Vec<u32> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !net_of.contains_key(i))
            .collect();
        for i in ports {
            ignore_missing(self.ports.remove(&i))?;
        }
        for (k, e) in bridge_addrs {
            if self.endpoints.get(k, 0).ok().as_ref() != Some(e) {
                self.endpoints
                    .insert(k, e, 0)
                    .context("recording a bridge's IPv6 address")?;
            }
        }
        Ok(())
    }
}

/// The LPM key of a subnet.
pub fn subnet_key(subnet: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(subnet.prefix_len()), subnet.network().octets())
}

fn ignore_missing(r: std::result::Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(e).context("updating an IPv6 map"),
    }
}

/// Whether the flags say netpath added the gateway.
pub fn added_gateway(flags: u32) -> bool {
    flags & net6_flags::ADDED_GATEWAY != 0
}

/// Whether the maps pinned in `dir` include the IPv6 ones (an older
/// build's state does not until a command recreates them).
pub fn pinned(dir: &Path) -> bool {
    dir.join(map_names::NETWORKS6).exists()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|x| parse_any_subnet(x).unwrap()).collect()
    }

    #[test]
    fn dual_stack_subnets_split_by_family() {
        let (v4, v6) = split(&nets(&["172.18.0.0/16", "fd00:18::/64"]), &[]).unwrap();
        let v4 = v4.unwrap();
        assert_eq!(v4.subnet.to_string(), "172.18.0.0/16");
        assert_eq!(v4.gateway, Ipv4Addr::new(172, 18, 0, 1));
        let v6 = v6.unwrap();
        assert_eq!(v6.gateway, "fd00:18::1".parse::<Ipv6Addr>().unwrap());
        let gws: Vec<IpAddr> = vec![
            "fd00:18::fe".parse().unwrap(),
            "172.18.0.254".parse().unwrap(),
        ];
        let (v4, v6) = split(&nets(&["fd00:18::/64", "172.18.0.0/16"]), &gws).unwrap();
        assert_eq!(v4.unwrap().gateway, Ipv4Addr::new(172, 18, 0, 254));
        assert_eq!(v6.unwrap().gateway.to_string(), "fd00:18::fe");
        let (_, none) = split(&nets(&["172.18.0.0/16"]), &[]).unwrap();
        assert_eq!(none, None);
        // IPv6 alone.
        let (none, v6) = split(&nets(&["fd00:18::/64"]), &gws[..1]).unwrap();
        assert_eq!(none, None);
        assert_eq!(v6.unwrap().gateway.to_string(), "fd00:18::fe");
    }

    #[test]
    fn bad_dual_stack_input_is_one_clear_error() {
        let err = |s: &[&str], g: &[&str]| {
            let g: Vec<IpAddr> = g.iter().map(|x| x.parse().unwrap()).collect();
            split(&nets(s), &g).unwrap_err().to_string()
        };
        assert!(err(&[], &[]).contains("needs a subnet"));
        assert!(err(&["fd00:18::/64"], &["10.1.0.1"]).contains("needs an IPv4 subnet"));
        assert!(err(&["10.1.0.0/16"], &["10.2.0.1"]).contains("outside"));
        assert!(err(&["10.1.0.0/16", "10.2.0.0/16"], &[]).contains("two IPv4 subnets"));
        assert!(err(&["10.1.0.0/16", "fd00::/64", "fd01::/64"], &[]).contains("two IPv6"));
        assert!(err(&["10.1.0.0/16"], &["fd00::1"]).contains("needs an IPv6 subnet"));
        assert!(err(&["10.1.0.0/16", "fd00::/64"], &["fd01::1"]).contains("outside"));
        assert!(err(&["10.1.0.0/16", "fd00::/64"], &["fd00::"]).contains("anycast"));
        assert!(err(&["10.1.0.0/16", "fd00::/64"], &["fd00::1", "fd00::2"]).contains("two IPv6"));
        let perr = |s: &str| parse_any_subnet(s).unwrap_err().to_string();
        assert!(perr("fd00::1/64").contains("host bits"));
        assert!(perr("fe80::/64").contains("link-local"));
        assert!(perr("ff02::/16").contains("multicast"));
        for (block, what) in [
            ("2002::/16", "6to4"),
            ("3fff::/20", "documentation"),
            ("2001::/32", "Teredo"),
            ("fec0::/10", "site-local"),
            ("100::/64", "discard"),
            ("2000::/3", "Teredo"),
            ("3fff::/64", "documentation"),
            ("64:ff9b::/96", "NAT64"),
            ("64:ff9b:1::/64", "NAT64"),
        ] {
            assert!(perr(block).contains(what), "{block}");
        }
        // Unique local and global unicast blocks are fine.
        assert!(parse_any_subnet("fd00::/8").is_ok());
        assert!(parse_any_subnet("2001:470::/48").is_ok());
        assert!(perr("::/0").contains("overlaps"));
        assert!(perr("fd00::/127").contains("/126"));
        assert!(perr("fd00:zz::/64").contains("expected IPv6 CIDR"));
    }

    #[test]
    fn records_round_trip() {
        let s = Net6Spec::new("fd00:18::/64".parse().unwrap(), None).unwrap();
        let info = s.to_info(net6_flags::ADDED_GATEWAY);
        assert_eq!(Net6Spec::from_info(&info).unwrap(), s);
        assert!(info.contains(&"fd00:18::5".parse::<Ipv6Addr>().unwrap().octets()));
        assert!(!info.contains(&"fd00:19::5".parse::<Ipv6Addr>().unwrap().octets()));
        assert!(added_gateway(info.flags));
        assert_eq!(nth(s.subnet, 2).to_string(), "fd00:18::2");
    }
}
