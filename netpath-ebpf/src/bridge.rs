//! The managed bridges. What enters the host from a bridge came from one of
//! its ports; a managed port checked it already, so its IPv4 source (or ARP
//! sender) is a container address bound to or learned by that port, with
//! its MAC. Anything else came through a port netpath does not manage (one
//! plugged in while no daemon ran to attach it) and is dropped until the
//! port is attached, so a container never goes unchecked. IPv6 the same
//! way, from `NP_ENDPOINTS6`.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, IfaceInfo,
    v6::{Addr6Key, is_unspecified},
};

use crate::{
    TCX_NEXT,
    lookup::{drop, same_mac},
    maps::{NP_ENDPOINTS4, NP_ENDPOINTS6},
    parse::{ETH_HLEN, eth_off, eth_p, ethertype, ip4_off},
};

/// Bridge ingress: frames on their way up to the host.
#[inline(always)]
pub fn ingress(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    let (sender_off, mac_off) = match ethertype(ctx) {
        Some(eth_p::IP) => (ETH_HLEN + ip4_off::SADDR, eth_off::SRC),
        // Ethernet/IPv4 ARP: sender MAC at 8, sender address at 14.
        Some(eth_p::ARP) => (ETH_HLEN + 14, ETH_HLEN + 8),
        Some(eth_p::IPV6) => return ingress6(ctx, iface),
        _ => return TCX_NEXT,
    };
    let (Ok(addr), Ok(mac)) = (ctx.load::<u32>(sender_off), ctx.load::<[u8; 6]>(mac_off)) else {
        return TCX_NEXT;
    };
    // 0.0.0.0: DHCP or an address probe, which ports let through unbound.
    if addr == 0 {
        return TCX_NEXT;
    }
    // SAFETY: the value is read at once.
    match unsafe { NP_ENDPOINTS4.get(addr) } {
        Some(ep) if same_mac(&ep.mac, &mac) => TCX_NEXT,
        _ => drop(ctx, iface.net_id, DropReason::UnmanagedPort),
    }
}

/// The same for IPv6: a source some port sends from (`NP_ENDPOINTS6`,
/// link-local ones per network), with its MAC; `::` (duplicate address
/// detection, MLD) passes as 0.0.0.0 does.
#[inline(always)]
fn ingress6(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    let (Ok(addr), Ok(mac)) = (
        ctx.load::<[u8; 16]>(ETH_HLEN + 8),
        ctx.load::<[u8; 6]>(eth_off::SRC),
    ) else {
        return TCX_NEXT;
    };
    if is_unspecified(&addr) {
        return TCX_NEXT;
    }
    // SAFETY: the value is read at once.
    match unsafe { NP_ENDPOINTS6.get(Addr6Key::of(&addr, iface.net_id)) } {
        Some(ep) if same_mac(&ep.mac, &mac) => TCX_NEXT,
        _ => drop(ctx, iface.net_id, DropReason::UnmanagedPort),
    }
}
