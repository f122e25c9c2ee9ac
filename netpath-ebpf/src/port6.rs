//! IPv6 at the container ports of dual-stack networks. So far IPv6 stays
//! on the host: between the containers of a network, to the host (its
//! gateway and link-local addresses, other networks' gateways); leaving or
//! entering the host is dropped until IPv6 flows are tracked.
//!
//! - Ingress (a container sends): its MAC, its source (`spoof6`), the
//!   Neighbour Discovery guard (`nd`), then the destination policy
//!   (`isolate::destination6`).
//! - Both: a network without an IPv6 subnet carries none (`drop_ipv6`).
//! - Egress (delivered to a container): from the host itself or a port or
//!   bridge of the same network only; an internal network only from its
//!   own subnet and link-local addresses.

use aya_ebpf::programs::TcContext;
use netpath_common::{DropReason, IfaceInfo, IfaceRole, NetworkInfo};

use crate::{
    TCX_NEXT, guard, isolate,
    lookup::{drop, iface, network6},
    maps::NP_NETWORKS6,
    nd,
    parse6::{self, Ip6},
    spoof::Sender,
    spoof6::Sender6,
};

/// A container's IPv6 frame entering the host at its port (the program
/// dispatches IPv6 here before the IPv4 path, so each has its own stack).
#[inline(always)]
pub fn ingress(ctx: &TcContext, ifindex: u32, iface: &IfaceInfo) -> i32 {
    let net_id = iface.net_id;
    let (net, _, mac) = match guard::arriving(ctx, net_id) {
        Ok(a) => a,
        Err(v) => return v,
    };
    let sender = Sender {
        ifindex,
        iface,
        net: &net,
        mac,
    };
    match check_ingress(ctx, &sender) {
        Ok(()) => TCX_NEXT,
        Err(reason) => drop(ctx, net_id, reason),
    }
}

#[inline(always)]
fn check_ingress(ctx: &TcContext, sender: &Sender) -> Result<(), DropReason> {
    let net_id = sender.iface.net_id;
    // SAFETY: a map value, valid for the program's run.
    let net6 = unsafe { &*NP_NETWORKS6.get_ptr(net_id).ok_or(DropReason::Ipv6)? };
    if !sender.mac_ok() {
        return Err(DropReason::SpoofedMac);
    }
    let mut ip = Ip6::default();
    parse6::ipv6(ctx, &mut ip)?;
    let s6 = Sender6 { s: sender, net6 };
    s6.check_source(&ip)?;
    nd::check(ctx, &ip, &s6)?;
    let dst_mac = ctx.load::<[u8; 6]>(0).map_err(|_| DropReason::Malformed)?;
    isolate::destination6(sender.net, net6, net_id, &ip.daddr, &dst_mac)
}

/// An IPv6 packet about to be delivered to a container of `net`.
#[inline(never)]
pub fn egress(ctx: &TcContext, net_id: u32, net: &NetworkInfo) -> i32 {
    let Some(net6) = network6(net_id) else {
        return drop(ctx, net_id, DropReason::Ipv6);
    };
    // SAFETY: the context pointer is valid for the program's lifetime.
    let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
    if iif != 0 {
        match iface(iif) {
            // Bridged from a neighbour, or routed back by the host for one.
            Some(i)
                if i.net_id == net_id
                    && (i.role == IfaceRole::Port as u32 || i.role == IfaceRole::Bridge as u32) => {
            }
            Some(i) if i.role == IfaceRole::Port as u32 || i.role == IfaceRole::Bridge as u32 => {
                return drop(ctx, net_id, DropReason::Isolation);
            }
            // An uplink or an interface netpath does not manage: from
            // beyond the host, which no IPv6 flow is tracked for yet.
            _ => return drop(ctx, net_id, DropReason::Ipv6),
        }
    }
    let Ok(saddr) = ctx.load::<[u8; 16]>(crate::parse::L3 + 8) else {
        return drop(ctx, net_id, DropReason::Malformed);
    };
    match isolate::source6(net, &net6, &saddr) {
        Ok(()) => TCX_NEXT,
        Err(reason) => drop(ctx, net_id, reason),
    }
}
