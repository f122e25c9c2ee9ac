//! Netlink plumbing (rtnetlink): links, bridges, addresses, forwarding.
//! Acts on the network namespace the process was in when [`Netlink::new`]
//! opened its socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
        },
        link::{
            InfoData, InfoKind, InfoVlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
            LinkMessage,
        },
    },
};

use crate::plan::LinkFacts;

mod view;
pub use view::View;

/// An rtnetlink connection, driven on the current tokio runtime.
pub struct Netlink {
    handle: Handle,
}

/// A link as netlink reports it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub flags: LinkFlags,
    /// Hardware address (Ethernet links).
    pub mac: Option<[u8; 6]>,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace);
    /// for a VLAN device, its lower device.
    pub peer: Option<u32>,
    /// A VLAN device's VLAN id.
    pub vlan_id: Option<u16>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Self {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            master: None,
            flags: msg.header.flags,
            mac: None,
            peer: None,
            vlan_id: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::Address(a) => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Link(p) => link.peer = Some(*p),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::Vlan(v)) => {
                                link.vlan_id = v.iter().find_map(|a| match a {
                                    InfoVlan::Id(id) => Some(*id),
                                    _ => None,
                                });
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some(&InfoKind::Bridge.to_string())
    }

    pub fn is_loopback(&self) -> bool {
        self.flags.contains(LinkFlags::Loopback)
    }
}

/// An IPv4 address on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr4 {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// The host's addresses by family ([`Netlink::host_addrs`]).
pub struct HostAddrs {
    pub v4: Vec<crate::plan::HostAddr>,
    pub v6: Vec<crate::plan::HostAddr<Ipv6Addr>>,
}

/// An IPv6 address of global or link scope on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr6 {
    pub index: u32,
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
    /// Global and usable as a source: not tentative (duplicate address
    /// detection still running), failed or deprecated.
    pub usable: bool,
}

impl Netlink {
    /// Opens a connection in the current network namespace. Needs a tokio runtime.
    pub fn new() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        // Without statistics: netpath reads none, and they are most of a
        // dump's bytes and of the kernel's work (IPv6's are summed over
        // every CPU for each link).
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
            .execute()
            .try_collect()
            .await
            .context("listing links")?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// ifindex -> name of every link.
    pub async fn names(&self) -> Result<std::collections::BTreeMap<u32, String>> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect())
    }

    /// One link by name, asked for alone (not a dump of every link). The
    /// kernel also matches alternative names (`ip link property add …
    /// altname`): only a link whose name it is counts.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let got: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
            .match_name(name)
            .execute()
            .try_collect()
            .await;
        Ok(
            missing_is_none(got.with_context(|| format!("looking link {name} up")))?
                .filter(|l| l.name == name),
        )
    }

    pub async fn ipv4_addrs(&self) -> Result<Vec<Addr4>> {
        Ok(self.addrs().await?.0)
    }

    /// Every IPv4 address, and every global or link-local IPv6 address
    /// ([`Addr6`]), in the kernel's order, from one dump.
    pub async fn addrs(&self) -> Result<(Vec<Addr4>, Vec<Addr6>)> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        let unusable = AddressFlags::Tentative | AddressFlags::Dadfailed | AddressFlags::Deprecated;
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for m in &msgs {
            let index = m.header.index;
            match own_addr(m) {
                Some(IpAddr::V4(addr)) => v4.push(Addr4 {
                    index,
                    addr,
                    prefix_len: m.header.prefix_len,
                }),
                Some(IpAddr::V6(addr))
                    if matches!(m.header.scope, AddressScope::Universe | AddressScope::Link) =>
                {
                    let global = m.header.scope == AddressScope::Universe;
                    let flagged = m
                        .attributes
                        .iter()
                        .any(|a| matches!(a, AddressAttribute::Flags(f) if f.intersects(unusable)));
                    v6.push(Addr6 {
                        index,
                        addr,
                        prefix_len: m.header.prefix_len,
                        usable: global && !flagged,
                    })
                }
                _ => {}
            }
        }
        Ok((v4, v6))
    }

    /// Every IPv4 address of the namespace, and every global IPv6 one
    /// (tentative ones too), with its interface's name, from one dump.
    pub async fn host_addrs(&self) -> Result<HostAddrs> {
        Ok(View::read(self).await?.host_addrs())
    }

    /// Every link with what role planning needs, including its primary
    /// (first listed) IPv4 address and whether it has a global IPv6 one.
    pub async fn link_facts(&self) -> Result<Vec<LinkFacts>> {
        Ok(View::read(self).await?.facts())
    }

    /// Creates a bridge (set up) and returns it as the kernel reports it.
    pub async fn create_bridge(&self, name: &str) -> Result<Link> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        self.link_by_name(name)
            .await?
            .with_context(|| format!("bridge {name} vanished after creation"))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting link {index} up"))
    }

    /// Creates a veth pair, `host` here and `peer` (with MAC `peer_mac`)
    /// moved into the namespace open as `netns_fd`. Returns the host end's ifindex.
    pub async fn create_veth_into(
        &self,
        host: &str,
        peer: &str,
        peer_mac: [u8; 6],
        netns_fd: std::os::fd::RawFd,
    ) -> Result<u32> {
        self.handle
            .link()
            .add(LinkVeth::new(host, peer).build())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {host}/{peer}"))?;
        let index = self
            .link_by_name(host)
            .await?
            .map(|l| l.index)
            .with_context(|| format!("veth {host} vanished after creation"))?;
        let peer_index = self
            .link_by_name(peer)
            .await?
            .map(|l| l.index)
            .with_context(|| format!("veth {peer} vanished after creation"))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .address(peer_mac.to_vec())
                    .setns_by_fd(netns_fd)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("moving {peer} into the container's namespace"))?;
        Ok(index)
    }

    /// Enslaves `index` to the bridge `master` and sets it up.
    pub async fn enslave_up(&self, index: u32, master: u32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(master)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("enslaving link {index} to {master}"))
    }

    /// Renames `index` to `name` and sets it up.
    pub async fn rename_up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.to_owned())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("renaming link {index} to {name}"))
    }

    /// Adds a default route via `gateway`.
    pub async fn add_default_route(&self, gateway: impl Into<IpAddr>) -> Result<()> {
        let gateway = gateway.into();
        let route = match gateway {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(g).build(),
            IpAddr::V6(g) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .gateway(g)
                .build(),
        };
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("adding a default route via {gateway}"))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .with_context(|| format!("deleting link {index}"))
    }

    /// Adds an address; an IPv6 one without duplicate address detection
    /// (a gateway netpath owns is usable at once, as Docker's is).
    pub async fn add_addr(
        &self,
        index: u32,
        addr: impl Into<IpAddr>,
        prefix_len: u8,
    ) -> Result<()> {
        let addr = addr.into();
        let mut req = self.handle.address().add(index, addr, prefix_len);
        if addr.is_ipv6() {
            req.message_mut().header.flags = AddressHeaderFlags::Nodad;
        }
        req.execute()
            .await
            .with_context(|| format!("adding {addr}/{prefix_len} to link {index}"))
    }

    pub async fn del_addr(
        &self,
        index: u32,
        addr: impl Into<IpAddr>,
        prefix_len: u8,
    ) -> Result<()> {
        let addr = addr.into();
        for m in self.matching_addrs(index, addr, prefix_len).await? {
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .with_context(|| format!("removing {addr}/{prefix_len} from link {index}"))?;
        }
        Ok(())
    }

    async fn matching_addrs(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<Vec<AddressMessage>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        Ok(msgs
            .into_iter()
            .filter(|m| {
                m.header.index == index
                    && m.header.prefix_len == prefix_len
                    && m.attributes.iter().any(|a| {
                        matches!(a, AddressAttribute::Local(v) | AddressAttribute::Address(v) if *v == addr)
                    })
            })
            .collect())
    }
}

/// The facts role planning needs, from a link dump and an address dump.
pub fn facts(links: &[Link], addrs: &[Addr4], addrs6: &[Addr6]) -> Vec<LinkFacts> {
    links
        .iter()
        .map(|l| LinkFacts {
            index: l.index,
            is_bridge: l.is_bridge(),
            is_loopback: l.is_loopback(),
            master: l.master,
            ipv4: addrs.iter().find(|a| a.index == l.index).map(|a| a.addr),
            ipv6: addrs6.iter().any(|a| a.index == l.index && a.usable),
            name: l.name.clone(),
        })
        .collect()
}

/// An address message's own address: IFA_LOCAL (IFA_ADDRESS is the peer
/// on point-to-point links) when present, of the message's family.
fn own_addr(m: &AddressMessage) -> Option<IpAddr> {
    let family = |a: &IpAddr| match m.header.family {
        AddressFamily::Inet => a.is_ipv4(),
        AddressFamily::Inet6 => a.is_ipv6(),
        _ => false,
    };
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) if family(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if family(ip) && addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    addr
}

/// A digest of what a reconcile reads from links and addresses (not
/// their operational flags, which move by themselves): equal digests, and
/// a re-apply would change nothing.
pub fn digest(links: &[Link], addrs: &[Addr4], addrs6: &[Addr6]) -> u64 {
    let mut bytes = Vec::with_capacity(links.len() * 48 + addrs.len() * 9);
    for l in links {
        bytes.extend(l.index.to_le_bytes());
        bytes.extend(l.name.as_bytes());
        bytes.push(0);
        bytes.extend(l.kind.as_deref().unwrap_or("").as_bytes());
        bytes.push(0);
        bytes.extend(l.master.unwrap_or(0).to_le_bytes());
        bytes.extend(l.mac.unwrap_or_default());
        bytes.extend(l.peer.unwrap_or(0).to_le_bytes());
        bytes.extend(l.vlan_id.unwrap_or(0).to_le_bytes());
        bytes.push(u8::from(l.is_loopback()));
    }
    for a in addrs {
        bytes.extend(a.index.to_le_bytes());
        bytes.extend(a.addr.octets());
        bytes.push(a.prefix_len);
    }
    // Of IPv6 addresses, what a reconcile uses: usable global ones (NAT66
    // takes an uplink's) and bridges' link-local ones (no port may take
    // them); not the link-local address every new port's veth gets.
    let bridges: std::collections::BTreeSet<u32> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| l.index)
        .collect();
    for a in addrs6
        .iter()
        .filter(|a| a.usable || bridges.contains(&a.index))
    {
        bytes.extend(a.index.to_le_bytes());
        bytes.extend(a.addr.octets());
        bytes.push(a.prefix_len);
        bytes.push(u8::from(a.usable));
    }
    crate::codec::fnv1a(bytes)
}

/// A single-link answer: the link, or `None` when the kernel has none by
/// that name or index (ENODEV).
fn missing_is_none(got: Result<Vec<LinkMessage>>) -> Result<Option<Link>> {
    match got {
        Ok(msgs) => Ok(msgs.first().map(Link::from_message)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The errno (positive) the kernel answered a netlink request with, when
/// that is what `e` carries: callers match `libc::EEXIST`, not message text.
pub fn errno(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<rtnetlink::Error>() {
            Some(rtnetlink::Error::NetlinkError(m)) => m.to_io().raw_os_error(),
            _ => None,
        })
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether IPv4 forwarding is on in the current network namespace.
pub fn ip_forward() -> Result<bool> {
    let v = std::fs::read_to_string(IP_FORWARD).context("reading net.ipv4.ip_forward")?;
    Ok(v.trim() == "1")
}

/// Turns IPv4 forwarding on or off in the current network namespace.
pub fn set_ip_forward(on: bool) -> Result<()> {
    std::fs::write(IP_FORWARD, if on { "1" } else { "0" }).context("setting net.ipv4.ip_forward")
}

const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Whether IPv6 forwarding is on in the current network namespace.
pub fn ip6_forward() -> Result<bool> {
    let v = std::fs::read_to_string(IP6_FORWARD)
        .context("reading net.ipv6.conf.all.forwarding (is IPv6 disabled?)")?;
    Ok(v.trim() == "1")
}

/// Turns IPv6 forwarding on or off in the current network namespace.
pub fn set_ip6_forward(on: bool) -> Result<()> {
    std::fs::write(IP6_FORWARD, if on { "1" } else { "0" })
        .context("setting net.ipv6.conf.all.forwarding")
}
