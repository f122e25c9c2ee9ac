//! The managed bridges. What enters the host from a bridge came from one of
//! its ports; a managed port checked it already, so its IPv4 source (or ARP
//! sender) is a container address bound to or learned by that port, with
//! its MAC. Anything else came through a port netpath does not manage (one
//! plugged in while no daemon ran to attach it) and is dropped until the
//! port is attached, so a container never goes unchecked. IPv6 the same
//! way, from `NP_ENDPOINTS6`; then a container's IPv6 packet of a
//! published port's flow is translated here ([`published_flows6`]), and
//! an answer for a client beyond the host takes the fast path out of its
//! uplink (`fastpath6::from_bridge6`).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, IfaceInfo,
    ct::{ct_dir, ct_flags},
    ct6::CtEntry6,
    net_flags,
    v6::{Addr6Key, is_unspecified},
};

use crate::{
    TCX_NEXT,
    ct::ct_lookup,
    fastpath6,
    flow::{apply6, own_tuple6, work6},
    frag6,
    lookup::{drop, same_mac},
    maps::{NP_ENDPOINTS4, NP_ENDPOINTS6, NP_NETWORKS},
    parse::{ETH_HLEN, eth_off, eth_p, ethertype, ip4_off, is_vlan, stripped_vlan},
    parse6::{self, Work6},
    publish6::publish6,
    rewrite::Phase,
};

/// Bridge ingress: frames on their way up to the host.
#[inline(always)]
pub fn ingress(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    // A managed port passes untagged IPv4, ARP and IPv6 only: a tag (at
    // any depth, also one the kernel took off on the way) or another
    // ethertype came through a port netpath does not manage, and would
    // reach the host with its tags stripped.
    if stripped_vlan(ctx).is_some() {
        return drop(ctx, iface.net_id, DropReason::Vlan);
    }
    let (sender_off, mac_off) = match ethertype(ctx) {
        Some(eth_p::IP) => (ETH_HLEN + ip4_off::SADDR, eth_off::SRC),
        // Ethernet/IPv4 ARP: sender MAC at 8, sender address at 14.
        Some(eth_p::ARP) => (ETH_HLEN + 14, ETH_HLEN + 8),
        Some(eth_p::IPV6) => return ingress6(ctx, iface),
        Some(t) if is_vlan(t) => return drop(ctx, iface.net_id, DropReason::Vlan),
        _ => return drop(ctx, iface.net_id, DropReason::UnmanagedPort),
    };
    // An IPv6-only network's managed ports send no IPv4 or ARP; what
    // comes anyway came through a port netpath does not manage.
    if NP_NETWORKS
        .get_ptr(iface.net_id)
        // SAFETY: map value pointer, read at once.
        .is_some_and(|n| unsafe { (*n).flags } & net_flags::NO_IPV4 != 0)
    {
        return drop(ctx, iface.net_id, DropReason::Ipv4);
    }
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
        Some(ep) if same_mac(&ep.mac, &mac) => published_flows6(ctx, iface.net_id),
        _ => drop(ctx, iface.net_id, DropReason::UnmanagedPort),
    }
}

/// A container's IPv6 packet going up to the host from its bridge, its
/// source checked at its port and by the bridge: the destination half of
/// a published port's flow (the client's packet to the container, or a
/// container's answer to itself through its own port), and new such flows.
#[inline(always)]
fn published_flows6(ctx: &TcContext, net_id: u32) -> i32 {
    let Some(w) = work6() else {
        return TCX_NEXT;
    };
    if parse6::ipv6(ctx, &mut w.ip).is_err() {
        return TCX_NEXT;
    }
    // A later fragment follows its first one (recorded below).
    if w.ip.later_fragment {
        let _ = frag6::later_fragment_bridge6(ctx, w);
        return TCX_NEXT;
    }
    // The port judged the packet whole; what is no flow's passes.
    if !own_tuple6(ctx, w) {
        return TCX_NEXT;
    }
    let mut e: *mut CtEntry6 = core::ptr::null_mut();
    match flow(ctx, w, net_id, &mut e) {
        FOUND => {}
        v => return v,
    }
    if apply6(ctx, w, e, Phase::Ingress).is_err() {
        return drop(ctx, net_id, DropReason::Malformed);
    }
    frag6::first_fragment_both6(w, e);
    // An answer to a client beyond the host leaves from here.
    fastpath6::from_bridge6(ctx)
}

/// What [`flow`] returns when the packet is a published port's (its entry
/// in `e`). No verdict has this value.
const FOUND: i32 = i32::MIN;

/// The published port's flow of a container's packet to the host, known
/// or new ([`FOUND`]), or the verdict for any other packet. A BPF
/// subprogram (its own stack frame, next to the rewrite's).
#[inline(never)]
fn flow(ctx: &TcContext, w: &mut Work6, net_id: u32, e: &mut *mut CtEntry6) -> i32 {
    let found = match ct_lookup(&w.key) {
        Some(found) => found,
        None => {
            // An internal network reaches no host port.
            // SAFETY: map value pointer, read at once (not copied whole).
            let flags = NP_NETWORKS.get_ptr(net_id).map(|n| unsafe { (*n).flags });
            if flags.is_none_or(|f| f & net_flags::INTERNAL != 0) {
                return TCX_NEXT;
            }
            match publish6(ctx, w, true) {
                None => return TCX_NEXT,
                Some(Ok((created, _))) => created,
                Some(Err((_, r))) => return drop(ctx, net_id, r),
            }
        }
    };
    // SAFETY: map value pointer, read at once.
    let (flags, dir) = unsafe { ((*found).flags, (*found).dir) };
    if flags & ct_flags::DNAT == 0 || dir == ct_dir::MID {
        return TCX_NEXT;
    }
    *e = found;
    FOUND
}
