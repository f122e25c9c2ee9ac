//! The IPv6 leases: what `connect` and the other runtimes' bindings
//! (`foreign`) record for a container's IPv6 address, the port bound to
//! it, and the allocator that hands addresses out.

use std::net::Ipv6Addr;

use anyhow::{Context as _, Result, bail};
use netpath_common::{
    Endpoint, Lease,
    v6::{Addr6Key, LeaseKey6, Port6, eui64_link_local, port6_flags},
};

use super::{Maps6, Net6Spec, ignore_missing, nth};
use crate::tables::is_missing;

impl Maps6 {
    /// Binds port `ifindex` to `addr` before its container sends (for
    /// `connect`, or for the runtime that gave it, `netpath docker`): the
    /// lease, the port's record and the address's owner. Never over
    /// another owner's lease; an address another port took first (trust
    /// on first use) is this port's from now on.
    pub fn bind(
        &mut self,
        net_id: u32,
        ifindex: u32,
        addr: Ipv6Addr,
        mac: [u8; 6],
        lease: Lease,
    ) -> Result<()> {
        let octets = addr.octets();
        let key = LeaseKey6 {
            net_id,
            addr: octets,
        };
        match self.leases.get(&key, 0) {
            Ok(l) if l.flags != lease.flags => bail!("{addr} is leased already"),
            Ok(_) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e).context("reading NP_LEASES6"),
        }
        self.leases
            .insert(key, lease, 0)
            .context("recording the IPv6 lease")?;
        let port = Port6 {
            global: octets,
            flags: port6_flags::GLOBAL_BOUND,
            ..Default::default()
        };
        self.ports
            .insert(ifindex, port, 0)
            .context("recording the port's IPv6 address")?;
        let ep = Endpoint {
            ifindex,
            net_id,
            mac,
            _pad: [0; 2],
        };
        self.endpoints
            .insert(Addr6Key::of(&octets, net_id), ep, 0)
            .context("recording the port's IPv6 address")?;
        self.own_link_local(ep)
    }

    /// Records the EUI-64 link-local address of `ep`'s MAC as its port's.
    /// A port that took it first (its container guessed the MAC of one not
    /// plugged in yet: Docker's are predictable) gives it back, so it can
    /// neither keep it nor block its owner.
    fn own_link_local(&mut self, ep: Endpoint) -> Result<()> {
        let ll = eui64_link_local(&ep.mac);
        let key = Addr6Key::of(&ll, ep.net_id);
        if let Ok(held) = self.endpoints.get(&key, 0)
            && held.ifindex != ep.ifindex
            && let Ok(mut other) = self.ports.get(&held.ifindex, 0)
            && other.flags & port6_flags::LINK_LOCAL_LEARNED != 0
            && other.link_local == ll
        {
            other.flags &= !port6_flags::LINK_LOCAL_LEARNED;
            other.link_local = [0; 16];
            self.ports
                .insert(held.ifindex, other, 0)
                .context("taking back a link-local address")?;
        }
        self.endpoints
            .insert(key, ep, 0)
            .context("recording the port's link-local address")
    }

    /// Forgets the IPv6 leases of the namespace with `cookie` on network
    /// `net_id` (`disconnect`, or a failed `connect`); the reconcile drops
    /// the port's records once its veth is gone.
    pub fn release(&mut self, net_id: u32, cookie: u64) -> Result<()> {
        let keys: Vec<LeaseKey6> = self
            .leases
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, l)| k.net_id == net_id && l.netns_cookie == cookie)
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            ignore_missing(self.leases.remove(&k))?;
        }
        Ok(())
    }

    /// Every IPv6 lease.
    pub fn leases(&self) -> Result<Vec<(LeaseKey6, Lease)>> {
        self.leases
            .iter()
            .map(|r| r.context("reading NP_LEASES6"))
            .collect()
    }

    /// The IPv6 lease the namespace with `cookie` holds on network
    /// `net_id`, if any.
    pub fn lease_of(&self, net_id: u32, cookie: u64) -> Result<Option<(Ipv6Addr, Lease)>> {
        Ok(self
            .leases()?
            .into_iter()
            .find(|(k, l)| k.net_id == net_id && l.netns_cookie == cookie)
            .map(|(k, l)| (Ipv6Addr::from(k.addr), l)))
    }

    /// The first free address of `spec` for `connect` (`…::2` up, never the
    /// gateway), or the one asked for if it is free.
    pub fn free_address(
        &self,
        net_id: u32,
        spec: &Net6Spec,
        want: Option<Ipv6Addr>,
    ) -> Result<Ipv6Addr> {
        let taken = |a: Ipv6Addr| -> bool {
            let key = LeaseKey6 {
                net_id,
                addr: a.octets(),
            };
            self.leases.get(&key, 0).is_ok()
                || self
                    .endpoints
                    .get(&Addr6Key::of(&a.octets(), net_id), 0)
                    .is_ok()
        };
        if let Some(a) = want {
            if !spec.subnet.contains(&a) || a == spec.subnet.network() || a == spec.gateway {
                bail!(
                    "{a} is not a free container address of {} (gateway {})",
                    spec.subnet,
                    spec.gateway
                );
            }
            if taken(a) {
                bail!("{a} is taken on this network");
            }
            return Ok(a);
        }
        // A handful of leases per network in practice; stop at a bound so a
        // full /64 cannot keep this busy.
        for n in 1..=65_536u128 {
            let a = nth(spec.subnet, n);
            if !spec.subnet.contains(&a) {
                break;
            }
            if a != spec.gateway && !taken(a) {
                return Ok(a);
            }
        }
        bail!("no free IPv6 address in {}", spec.subnet)
    }
}
