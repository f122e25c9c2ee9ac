//! Uplink ingress: what comes into the host from outside. First the
//! sanity checks (VLANs the host does not terminate, martian sources; for
//! a packet of no flow also local sources), before any translation or
//! fast-path decision; then the
//! destination half of every flow (answers to masquerade, packets to
//! published ports, replies to tracked container flows), new flows to
//! published ports, and what the gateway mode lets through straight to a
//! container. Anything else (the host's own traffic) passes untouched.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use netpath_common::{DropReason, NetworkInfo, counter_kind, counter_scope};

use crate::{
    TCX_NEXT,
    counters::count,
    ct::ct_lookup,
    fastpath,
    flow::{apply4, packet_key},
    frag::{first_fragment4, later_fragment4},
    guard::{self, UplinkFrame},
    icmp::icmp_error4,
    inbound,
    lookup::{drop, is_peer, network, network_of},
    parse::{self, Ip4, L4, L4Kind},
    publish::publish4,
    rewrite::Phase,
};

/// The container network a packet is addressed to straight at a
/// container (not its gateway, which is a host address).
#[inline(always)]
fn direct_to(daddr: u32) -> Option<(u32, NetworkInfo)> {
    let id = network_of(daddr)?;
    let net = network(id)?;
    (net.gateway_be != daddr).then_some((id, net))
}

/// Drops a packet to a container that can start no flow, unless the
/// network's gateway mode passes those (either family: `direct` is the
/// network the packet is addressed to straight at a container).
#[inline(always)]
pub fn untracked(ctx: &TcContext, direct: Option<(u32, NetworkInfo)>) -> i32 {
    match direct {
        Some((id, net)) => match inbound::untracked(&net) {
            Ok(()) => TCX_NEXT,
            Err(r) => drop(ctx, id, r),
        },
        None => TCX_NEXT,
    }
}

#[inline(always)]
pub fn ingress(ctx: &TcContext, ifindex: u32) -> i32 {
    match guard::uplink_frame(ctx, ifindex) {
        UplinkFrame::Ipv4 => {}
        // IPv6 runs as a program of its own (`uplink6`); a frame whose tag
        // hid it from the dispatch is the host's.
        UplinkFrame::Host | UplinkFrame::Ipv6 => return TCX_NEXT,
        UplinkFrame::Verdict(v) => return v,
    }
    let Some(ip) = parse::ipv4(ctx) else {
        return drop(ctx, 0, DropReason::Malformed);
    };
    if let Err(v) = guard::martian_source(ctx, ip.saddr, ip.daddr) {
        return v;
    }
    // A packet of an established flow needs nothing more: its source
    // passed the lookups below when the flow was made. Fragments and ICMP
    // errors are judged in full.
    let l4 = if ip.is_later_fragment() {
        None
    } else {
        match parse::l4(ctx, &ip) {
            Ok(l4) => Some(l4),
            Err(()) => {
                if let Err(v) = guard::local_source(ctx, ip.saddr) {
                    return v;
                }
                let direct = direct_to(ip.daddr);
                return drop(ctx, direct.map_or(0, |(id, _)| id), DropReason::Malformed);
            }
        }
    };
    match l4 {
        // The rest is `flow4`'s, which the program's top runs.
        Some(l4) if l4.kind != L4Kind::IcmpError => FLOW,
        l4 => {
            if let Err(v) = guard::local_source(ctx, ip.saddr) {
                return v;
            }
            let direct = direct_to(ip.daddr);
            let placed = match l4 {
                None => later_fragment4(ctx, &ip, Phase::Ingress).is_some(),
                Some(_) => icmp_error4(ctx, &ip, Phase::Ingress).is_some(),
            };
            if placed {
                TCX_NEXT
            } else {
                untracked(ctx, direct)
            }
        }
    }
}

/// What [`ingress`] returns for a packet with a tuple of its own (not a
/// later fragment, not an ICMP error) that passed the sanity checks: the
/// program's top runs [`flow4`]. No verdict has this value.
pub const FLOW: i32 = i32::MIN;

/// The flows of a packet [`ingress`] said [`FLOW`] of: the destination
/// half of every flow, new flows to published ports and what the gateway
/// mode lets through straight to a container. A global function
/// ([`netpath_uplink_flow4`]), verified once on its own, run from the
/// program's top: its frame and the rewrite's (`flow::netpath_apply4`)
/// add up beside nothing else.
#[inline(always)]
pub fn flow4(ctx: &TcContext) -> i32 {
    netpath_uplink_flow4(ctx.skb.skb)
}

/// [`flow4`], with the header and tuple parsed again (a global function
/// takes no pointer with its bounds; the packet is as `ingress` saw it).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_uplink_flow4(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(ip) = parse::ipv4(&ctx) else {
        return drop(&ctx, 0, DropReason::Malformed);
    };
    let Ok(l4) = parse::l4(&ctx, &ip) else {
        return drop(&ctx, 0, DropReason::Malformed);
    };
    flow(&ctx, &ip, &l4)
}

#[inline(always)]
fn flow(ctx: &TcContext, ip: &Ip4, l4: &L4) -> i32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = packet_key(ip, l4);
    let e = match ct_lookup(&key) {
        Some(e) => e,
        None => {
            if let Err(v) = guard::local_source(ctx, ip.saddr) {
                return v;
            }
            let direct = direct_to(ip.daddr);
            let created = match (publish4(ctx, &key, l4.tcp_flags), direct) {
                (Some(r), _) => r,
                // The host's own traffic.
                (None, None) => return TCX_NEXT,
                (None, Some((id, net))) => inbound::direct4(ctx, ip, l4, id, &net, ifindex)
                    .map(|e| (e, id))
                    .map_err(|r| (id, r)),
            };
            match created {
                Ok((e, net_id)) => {
                    count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
                    e
                }
                Err((net_id, r)) => return drop(ctx, net_id, r),
            }
        }
    };
    first_fragment4(ip, l4, e, Phase::Ingress);
    if apply4(ctx, e, Phase::Ingress).is_err() {
        // A stale entry (removed): what is left is a packet without a flow.
        return untracked(ctx, direct_to(ip.daddr));
    }
    // SAFETY: map value pointer, valid during the program.
    let (to, net_id) = unsafe { ((*e).peer.reversed(), (*e).net_id) };
    // A peer's packet (see `port::fast_out`) takes the kernel's path: the
    // host's netfilter may have to undo its own translation (kube-proxy).
    if is_peer(net_id, ip.saddr) {
        return TCX_NEXT;
    }
    fastpath::to_container4(ctx, ip, to.daddr_be).unwrap_or(TCX_NEXT)
}
