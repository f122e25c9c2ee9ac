//! IPv6 anti-spoofing at container ports: a container sends from the
//! EUI-64 link-local address of its MAC, from the global address of its
//! network's subnet it was given (`connect`) or took first (trust on first
//! use, as for IPv4), from one other link-local address it took first (not
//! an EUI-64 one), or from `::` to a multicast group (duplicate address
//! detection, MLD). An address another port sends from, the EUI-64
//! link-local address of any other MAC (another port's, a bridge's, one
//! not plugged in yet), a bridge's link-local addresses, the gateway and
//! the subnet-router anycast address are never taken. Every
//! address a port sends from is recorded in `NP_ENDPOINTS6` once its packet
//! passed, so the bridge can tell what its ports sent.

use netpath_common::{
    DropReason, Endpoint,
    v6::{
        Addr6Key, NetworkInfo6, Port6, eui64_link_local, eui64_mac, is_link_local, is_multicast,
        is_unspecified, port6_flags,
    },
};

use crate::{
    maps::{NP_ENDPOINTS6, NP_PORTS6},
    parse6::{Ip6, same6},
    spoof::Sender,
};

/// A port's container, for IPv6.
pub struct Sender6<'a> {
    pub s: &'a Sender<'a>,
    pub net6: &'a NetworkInfo6,
}

/// What port `ifindex` was given or learnt so far.
#[inline(always)]
fn port(ifindex: u32) -> Port6 {
    // SAFETY: the value is Copy and read at once.
    unsafe { NP_PORTS6.get(ifindex) }
        .copied()
        .unwrap_or_default()
}

// its_own, may_take and learn are BPF subprograms: each has a stack frame
// of its own, instead of their 16-byte temporaries adding up in their
// callers' frames (a port's program has 512 bytes for its whole call chain).
impl Sender6<'_> {
    /// Whom `NP_ENDPOINTS6` records as sending from `addr`.
    #[inline(always)]
    fn holder(&self, addr: &[u8; 16]) -> Holder {
        // SAFETY: the value is read at once.
        match unsafe { NP_ENDPOINTS6.get(Addr6Key::of(addr, self.s.iface.net_id)) } {
            None => Holder::Nobody,
            Some(ep) if ep.ifindex == self.s.ifindex => Holder::This,
            Some(_) => Holder::Another,
        }
    }

    /// Whether the container sends from `addr` already: its own (EUI-64,
    /// learnt or bound) and not recorded as another's since (a bridge's
    /// link-local address the reconcile gave back to the bridge).
    #[inline(always)]
    pub fn owns(&self, addr: &[u8; 16]) -> bool {
        self.holder(addr) != Holder::Another && self.its_own(addr)
    }

    /// Whether the container may take `addr` (it does not send from it yet).
    #[inline(always)]
    pub fn claimable(&self, addr: &[u8; 16]) -> bool {
        self.holder(addr) != Holder::Another && self.may_take(addr)
    }

    /// `addr` is the port's own: its MAC's EUI-64 link-local, the one
    /// link-local it learnt, its global address.
    #[inline(never)]
    fn its_own(&self, addr: &[u8; 16]) -> bool {
        let port = port(self.s.ifindex);
        if is_link_local(addr) {
            same6(addr, &eui64_link_local(&self.s.mac))
                || port.flags & port6_flags::LINK_LOCAL_LEARNED != 0
                    && same6(addr, &port.link_local)
        } else {
            port.has_global() && same6(addr, &port.global)
        }
    }

    /// The port may take `addr`, no other one sending from it.
    #[inline(never)]
    fn may_take(&self, addr: &[u8; 16]) -> bool {
        let port = port(self.s.ifindex);
        if is_link_local(addr) {
            // Its MAC's own, or one other: never one made (EUI-64) from
            // another MAC, which that MAC's port or bridge will use. It may
            // not exist yet: Docker's MACs follow its addresses, so a
            // container can tell the next container's link-local address
            // and, holding it first, answer that container's duplicate
            // address detection before netpath binds it. (A bridge's
            // actual link-local addresses are recorded in NP_ENDPOINTS6
            // under the bridge.)
            if same6(addr, &eui64_link_local(&self.s.mac)) {
                return true;
            }
            return port.flags & port6_flags::LINK_LOCAL_LEARNED == 0 && eui64_mac(addr).is_none();
        }
        !port.has_global()
            && self.net6.contains(addr)
            && !same6(addr, &self.net6.gateway)
            && !same6(addr, &self.net6.subnet)
    }

    /// Records that the container sends from `addr` (checked claimable, or
    /// its EUI-64 one).
    #[inline(never)]
    pub fn learn(&self, addr: &[u8; 16]) {
        let ll = is_link_local(addr);
        if !(ll && same6(addr, &eui64_link_local(&self.s.mac))) {
            let mut port = port(self.s.ifindex);
            if ll {
                port.link_local = *addr;
                port.flags |= port6_flags::LINK_LOCAL_LEARNED;
            } else {
                port.global = *addr;
                port.flags |= port6_flags::GLOBAL_LEARNED;
            }
            if NP_PORTS6.insert(self.s.ifindex, port, 0).is_err() {
                return;
            }
        }
        let ep = Endpoint {
            ifindex: self.s.ifindex,
            net_id: self.s.iface.net_id,
            mac: self.s.mac,
            _pad: [0; 2],
        };
        let _ = NP_ENDPOINTS6.insert(Addr6Key::of(addr, self.s.iface.net_id), ep, 0);
    }

    /// The packet's source: one the container sends from, or one it may
    /// take; `::` only to a multicast group. Ok(true): the source is to be
    /// recorded ([`Self::learn`]) once the whole packet passed, so a
    /// dropped packet teaches nothing.
    #[inline(always)]
    pub fn check_source(&self, ip: &Ip6) -> Result<bool, DropReason> {
        if is_unspecified(&ip.saddr) {
            return if is_multicast(&ip.daddr) {
                Ok(false)
            } else {
                Err(DropReason::SpoofedSource)
            };
        }
        // One look at who holds the address serves both questions.
        let holder = self.holder(&ip.saddr);
        if holder == Holder::Another {
            return Err(DropReason::SpoofedSource);
        }
        if self.its_own(&ip.saddr) {
            // An EUI-64 address is recorded on its first packet (and again
            // after a reconcile dropped a stale record).
            return Ok(is_link_local(&ip.saddr) && holder == Holder::Nobody);
        }
        if self.may_take(&ip.saddr) {
            return Ok(true);
        }
        Err(DropReason::SpoofedSource)
    }
}

/// Whom `NP_ENDPOINTS6` records for an address, seen from one port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Nobody,
    This,
    Another,
}
