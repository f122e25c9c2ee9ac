//! One snapshot of the namespace's links and addresses, read with a link
//! dump and an address dump, and kept up to date by the caller that holds
//! the state lock as it adds bridges and addresses itself.
//!
//! A dump walks every interface, and a bridge's attributes are long: with
//! 300 interfaces one link dump cost about a millisecond of kernel and
//! parsing time. `up` read links and addresses three times per network, so
//! a batch of 100 networks on top of 200 spent most of its time re-reading
//! what it had just read. A batch ([`crate::up::up_many`]) now reads once
//! and records its own changes here.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;

use super::{Addr4, Addr6, HostAddrs, Link, Netlink, facts};
use crate::plan::{HostAddr, LinkFacts};
use netpath_common::v6::is_link_local;

/// Links and addresses as read, plus what the holder added since.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub links: Vec<Link>,
    pub v4: Vec<Addr4>,
    pub v6: Vec<Addr6>,
}

impl View {
    /// Reads links and addresses (one dump each).
    pub async fn read(nl: &Netlink) -> Result<Self> {
        let (v4, v6) = nl.addrs().await?;
        Ok(Self {
            links: nl.links().await?,
            v4,
            v6,
        })
    }

    /// What role planning needs of every link.
    pub fn facts(&self) -> Vec<LinkFacts> {
        facts(&self.links, &self.v4, &self.v6)
    }

    /// ifindex -> name of every link.
    pub fn names(&self) -> BTreeMap<u32, String> {
        self.links
            .iter()
            .map(|l| (l.index, l.name.clone()))
            .collect()
    }

    /// The host's addresses with their interfaces' names (IPv6: global
    /// ones, tentative too), as [`Netlink::host_addrs`] reports them.
    pub fn host_addrs(&self) -> HostAddrs {
        let names = self.names();
        let name = |index: u32| names.get(&index).cloned().unwrap_or_default();
        HostAddrs {
            v4: self
                .v4
                .iter()
                .map(|a| HostAddr::<Ipv4Addr> {
                    ifname: name(a.index),
                    addr: a.addr,
                    prefix_len: a.prefix_len,
                })
                .collect(),
            v6: self
                .v6
                .iter()
                .filter(|a| !is_link_local(&a.addr.octets()))
                .map(|a| HostAddr::<Ipv6Addr> {
                    ifname: name(a.index),
                    addr: a.addr,
                    prefix_len: a.prefix_len,
                })
                .collect(),
        }
    }

    /// Whether link `index` has `addr/prefix_len`.
    pub fn has_ip(&self, index: u32, addr: IpAddr, prefix_len: u8) -> bool {
        match addr {
            IpAddr::V4(a) => self
                .v4
                .iter()
                .any(|x| x.index == index && x.addr == a && x.prefix_len == prefix_len),
            IpAddr::V6(a) => self
                .v6
                .iter()
                .any(|x| x.index == index && x.addr == a && x.prefix_len == prefix_len),
        }
    }

    /// A link the holder created (or found), replacing one of its index.
    pub fn put_link(&mut self, link: Link) {
        self.links.retain(|l| l.index != link.index);
        self.links.push(link);
    }

    /// An address the holder added. An IPv6 one is added without duplicate
    /// address detection, so it is usable at once.
    pub fn put_addr(&mut self, index: u32, addr: IpAddr, prefix_len: u8) {
        if self.has_ip(index, addr, prefix_len) {
            return;
        }
        match addr {
            IpAddr::V4(addr) => self.v4.push(Addr4 {
                index,
                addr,
                prefix_len,
            }),
            IpAddr::V6(addr) => self.v6.push(Addr6 {
                index,
                addr,
                prefix_len,
                usable: !is_link_local(&addr.octets()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::LinkFlags;

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.to_owned(),
            kind: kind.map(str::to_owned),
            master: None,
            flags: LinkFlags::Up,
            mac: None,
            peer: None,
            vlan_id: None,
        }
    }

    #[test]
    fn what_the_holder_adds_is_seen_as_a_dump_would_show_it() {
        let mut v = View {
            links: vec![link(1, "lo", None), link(2, "uplink0", Some("veth"))],
            v4: vec![Addr4 {
                index: 2,
                addr: Ipv4Addr::new(192, 0, 2, 1),
                prefix_len: 24,
            }],
            v6: Vec::new(),
        };
        v.put_link(link(7, "br0", Some("bridge")));
        let gw: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        assert!(!v.has_ip(7, gw, 24));
        v.put_addr(7, gw, 24);
        v.put_addr(7, gw, 24);
        assert!(v.has_ip(7, gw, 24) && !v.has_ip(7, gw, 16) && !v.has_ip(2, gw, 24));
        assert_eq!(v.v4.len(), 2, "added once");
        let gw6: IpAddr = "fd00::1".parse().unwrap();
        v.put_addr(7, gw6, 64);
        v.put_addr(7, "fe80::1".parse().unwrap(), 64);
        let f = v.facts();
        let br = f.iter().find(|f| f.name == "br0").unwrap();
        assert!(br.is_bridge && br.ipv4 == Some(Ipv4Addr::new(10, 0, 0, 1)) && br.ipv6);
        let h = v.host_addrs();
        assert_eq!(h.v4.len(), 2);
        assert_eq!(h.v6.len(), 1, "link-local left out");
        assert_eq!(h.v6[0].ifname, "br0");
        // A link seen again replaces the old record of its index.
        v.put_link(link(7, "br0", Some("bridge")));
        assert_eq!(v.links.len(), 3);
        assert_eq!(v.names().get(&7).map(String::as_str), Some("br0"));
    }
}
