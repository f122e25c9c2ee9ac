//! The lookups every program shares, each written once: managed networks
//! by id and by address, managed interfaces, the host's own addresses,
//! published ports, and the drop helper that counts why.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use netpath_common::{
    DropReason, IfaceInfo, NetworkInfo, PeerKey4, PubKey4, PubVal4, TargetKey4, counter_scope,
    ct6::same_addr,
    v6::{NetworkInfo6, PortKey6, PubVal6},
};

use crate::{
    counters::count,
    maps::{
        NP_HOSTADDRS4, NP_HOSTADDRS6, NP_IFACES, NP_NETWORKS, NP_NETWORKS6, NP_PEERS4, NP_PUBLISH4,
        NP_PUBLISH6, NP_SUBNETS4, NP_SUBNETS6, NP_TARGETS4, NP_TARGETS6,
    },
};

/// A managed network by id.
#[inline(always)]
pub fn network(id: u32) -> Option<NetworkInfo> {
    // SAFETY: the value is Copy and read at once.
    unsafe { NP_NETWORKS.get(id) }.copied()
}

/// The managed network whose subnet holds `addr_be`.
#[inline(always)]
pub fn network_of(addr_be: u32) -> Option<u32> {
    NP_SUBNETS4.get(Key::new(32, addr_be)).copied()
}

/// The IPv6 half of a managed network, when it has one.
#[inline(always)]
pub fn network6(id: u32) -> Option<NetworkInfo6> {
    // SAFETY: the value is Copy and read at once.
    unsafe { NP_NETWORKS6.get(id) }.copied()
}

/// The managed network whose IPv6 subnet holds `addr`.
#[inline(always)]
pub fn network6_of(addr: &[u8; 16]) -> Option<u32> {
    NP_SUBNETS6.get(Key::new(128, *addr)).copied()
}

/// Whether `addr_be` lies in one of network `net_id`'s peer CIDRs
/// (`up --no-masquerade-to`).
#[inline(always)]
pub fn is_peer(net_id: u32, addr_be: u32) -> bool {
    NP_PEERS4
        .get(Key::new(64, PeerKey4 { net_id, addr_be }))
        .is_some()
}

/// A managed interface by ifindex.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<IfaceInfo> {
    // SAFETY: the value is Copy and read at once.
    unsafe { NP_IFACES.get(ifindex) }.copied()
}

/// Whether `addr_be` is one of the namespace's own addresses ("addrtype LOCAL").
#[inline(always)]
pub fn is_local(addr_be: u32) -> bool {
    NP_HOSTADDRS4.get_ptr(addr_be).is_some()
}

/// Whether `addr_be` is in 127.0.0.0/8.
#[inline(always)]
pub fn is_loopback(addr_be: u32) -> bool {
    u32::from_be(addr_be) >> 24 == 127
}

/// Where a published host `addr:port` leads: a mapping bound to exactly
/// that address, else one on every host address when `addr` is a host
/// address (or, with `loopback`, any 127/8 address: only host processes
/// reach those, through the socket hooks).
#[inline(always)]
pub fn published(addr_be: u32, port_be: u16, proto: u8, loopback: bool) -> Option<PubVal4> {
    // A loopback destination from a packet (not a socket) is a martian
    // one: a mapping on 127.0.0.1 is for host processes only.
    if !loopback && is_loopback(addr_be) {
        return None;
    }
    let mut key = PubKey4 {
        addr_be,
        port_be,
        proto,
        _pad: 0,
    };
    // SAFETY: values are Copy and read at once.
    if let Some(v) = unsafe { NP_PUBLISH4.get(key) } {
        return Some(*v);
    }
    if !(is_local(addr_be) || loopback && is_loopback(addr_be)) {
        return None;
    }
    key.addr_be = 0;
    // SAFETY: as above.
    unsafe { NP_PUBLISH4.get(key) }.copied()
}

/// Whether some published port leads to container port `addr:port`.
#[inline(always)]
pub fn is_target(addr_be: u32, port_be: u16, proto: u8) -> bool {
    let key = TargetKey4 {
        addr_be,
        port_be,
        proto,
        _pad: 0,
    };
    NP_TARGETS4.get_ptr(key).is_some()
}

/// [`published`] for IPv6: a mapping bound to exactly `addr`, else one on
/// every host IPv6 address when `addr` is one of the host's. `::1` finds
/// nothing: a packet for it is a martian, and its mappings are for host
/// processes ([`published6_host`]).
#[inline(always)]
pub fn published6(addr: &[u8; 16], port_be: u16, proto: u8) -> Option<PubVal6> {
    if same_addr(addr, &LOOPBACK6) {
        return None;
    }
    mapping6(addr, port_be, proto, || {
        NP_HOSTADDRS6.get_ptr(*addr).is_some()
    })
}

/// [`published6`] for the socket hooks: `::1` too, its own mapping or
/// else the one on every address (as 127/8 for IPv4).
#[inline(always)]
pub fn published6_host(addr: &[u8; 16], port_be: u16, proto: u8) -> Option<PubVal6> {
    if !same_addr(addr, &LOOPBACK6) {
        return published6(addr, port_be, proto);
    }
    mapping6(addr, port_be, proto, || true)
}

/// The mapping bound to exactly `addr`, else, when `every` says so, the
/// one on every address.
#[inline(always)]
fn mapping6(
    addr: &[u8; 16],
    port_be: u16,
    proto: u8,
    every: impl FnOnce() -> bool,
) -> Option<PubVal6> {
    let mut key = PortKey6 {
        addr: *addr,
        port_be,
        proto,
        _pad: 0,
    };
    // SAFETY: values are Copy and read at once.
    if let Some(v) = unsafe { NP_PUBLISH6.get(key) } {
        return Some(*v);
    }
    if !every() {
        return None;
    }
    key.addr = [0; 16];
    // SAFETY: as above.
    unsafe { NP_PUBLISH6.get(key) }.copied()
}

/// `::1`.
const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// [`is_target`] for IPv6.
#[inline(always)]
pub fn is_target6(addr: &[u8; 16], port_be: u16, proto: u8) -> bool {
    let key = PortKey6 {
        addr: *addr,
        port_be,
        proto,
        _pad: 0,
    };
    NP_TARGETS6.get_ptr(key).is_some()
}

/// Counts a drop for `reason` on the interface the program runs on and,
/// when the packet belongs to one (`net_id` != 0), on its network; returns
/// the verdict.
#[inline(always)]
pub fn drop(ctx: &TcContext, net_id: u32, reason: DropReason) -> i32 {
    netpath_drop(ctx.skb.skb, net_id, u32::from(reason as u16))
}

/// [`drop`] as a global function, verified once on its own: a program has
/// dozens of drops, and inline each one walked the counting and the
/// monitor's event again, for every state that reached it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_drop(skb: *mut __sk_buff, net_id: u32, reason: u32) -> i32 {
    let ctx = TcContext::new(skb);
    let len = ctx.len();
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*skb).ifindex };
    let kind = DropReason::counter_kind_of(reason as u16);
    count(counter_scope::IFACE, ifindex, kind, len);
    if net_id != 0 {
        count(counter_scope::NETWORK, net_id, kind, len);
    }
    crate::events::drop_event(&ctx, net_id, reason as u8);
    TC_ACT_SHOT
}

/// Byte-wise MAC comparison (a derived `==` becomes a `bcmp` call).
#[inline(always)]
pub fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}
