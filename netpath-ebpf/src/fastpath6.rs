//! The IPv6 fast path, as `fastpath` is for IPv4: a packet for a
//! container, once an uplink wrote its destination, goes straight to the
//! container's veth peer (`bpf_redirect_peer`); a container's packet for
//! beyond the host is routed with `bpf_fib_lookup` and sent out of its
//! uplink, whose egress program masquerades or tracks it as usual; an
//! untracked packet between two containers of one network goes from the
//! sender's port straight to the other's peer; a published port's answer,
//! once its bridge translated it back, leaves from there for its client
//! beyond the host. Routed hops take one off
//! the hop limit (IPv6 has no header checksum to fix, and the hop limit is
//! outside the upper-layer pseudo-header).
//!
//! Anything unusual takes the normal path: fragments and other extension
//! headers on a routed hop, bytes after the payload, a frame from outside
//! not addressed to the host (another MAC, a broadcast or multicast one),
//! a hop limit about to run out (the kernel sends the Time Exceeded),
//! multicast and link-local
//! destinations, a source outside the network's subnet (a link-local one
//! the host would not forward), an internal network, a neighbour not yet
//! resolved, a packet larger than the route's MTU (the kernel sends the
//! Packet Too Big), a route that does not leave through an uplink.

use aya_ebpf::{bindings::bpf_fib_lookup, programs::TcContext};
use netpath_common::{
    Endpoint,
    ct::Tuple,
    v6::{Addr6Key, is_link_local, is_multicast},
};

use crate::{
    TCX_NEXT,
    ct::ct_lookup,
    fastpath::{for_this_host, managed_port, out_of_uplink, routed_to_peer, to_neighbour},
    flow::work6,
    lookup::network6_of,
    maps::NP_ENDPOINTS6,
    parse::L3,
    parse6::{self, Flow, FromPort, IP6_HLEN, Ip6, ip6_off},
};

const AF_INET6: u8 = 10;

/// Takes one off the hop limit; `None` when it would run out here.
#[inline(always)]
fn forward_hop(ctx: &TcContext) -> Option<()> {
    let hops: u8 = ctx.load(L3 + ip6_off::HOP_LIMIT).ok()?;
    if hops <= 1 {
        return None;
    }
    ctx.store(L3 + ip6_off::HOP_LIMIT, &(hops - 1), 0).ok()
}

/// Whom `NP_ENDPOINTS6` records as holding `addr` in network `net_id`.
#[inline(always)]
fn endpoint6(addr: &[u8; 16], net_id: u32) -> Option<Endpoint> {
    // SAFETY: the value is Copy and read at once.
    unsafe { NP_ENDPOINTS6.get(Addr6Key::of(addr, net_id)) }.copied()
}

/// A packet from an uplink whose destination (as written now) is a
/// container: straight to its veth peer. `ip` is the packet as it came
/// (for its fragment header). Else the normal path (`TCX_NEXT`). A BPF
/// subprogram (its own stack frame, beside the rewrite's).
#[inline(never)]
pub fn to_container6(ctx: &TcContext, ip: &Ip6) -> i32 {
    fast_to_container6(ctx, ip).unwrap_or(TCX_NEXT)
}

#[inline(always)]
fn fast_to_container6(ctx: &TcContext, ip: &Ip6) -> Option<i32> {
    if !routable(ctx, ip) || !for_this_host(ctx) {
        return None;
    }
    let daddr: [u8; 16] = ctx.load(L3 + ip6_off::DADDR).ok()?;
    let net_id = network6_of(&daddr)?;
    let ep = endpoint6(&daddr, net_id).filter(|ep| managed_port(ep, net_id))?;
    routed_to_peer(ctx, &ep, forward_hop)
}

/// A container's IPv6 packet that its port's ingress program allowed
/// (`port6::FAST`), as it left it in `Work6::from`: to a neighbour's peer
/// or out of an uplink, when it can; else on to the bridge (`TCX_NEXT`).
/// Called at the top of the program, where nothing else is live, so the
/// verifier walks it once rather than once for every way through the
/// port's checks.
#[inline(never)]
pub fn from_port6(ctx: &TcContext) -> i32 {
    fast_from_port6(ctx).unwrap_or(TCX_NEXT)
}

#[inline(always)]
fn fast_from_port6(ctx: &TcContext) -> Option<i32> {
    let w = work6()?;
    let FromPort {
        ifindex: from,
        net_id,
        bridge,
        flow,
    } = w.from;
    // The bridge translates a published port's flow.
    if flow == Flow::Published || w.ip.fragment || is_multicast(&w.ip.daddr) {
        return None;
    }
    if let Some(ep) = endpoint6(&w.ip.daddr, net_id) {
        // Skipping the other port's egress program is only right for a
        // packet it would pass untouched: no flow to translate either way.
        if flow != Flow::Untracked || ct_lookup(&w.key.reversed()).is_some() {
            return None;
        }
        return to_neighbour(ctx, &ep, from, net_id);
    }
    // The host, the gateways and the managed networks take the bridge;
    // so does a source the host would not forward (a link-local one: the
    // kernel answers it with an error rather than let it leave the link).
    if is_link_local(&w.ip.daddr)
        || network6_of(&w.ip.daddr).is_some()
        || network6_of(&w.ip.saddr) != Some(net_id)
    {
        return None;
    }
    to_uplink6(ctx, &w.ip, bridge)
}

/// A container's answer from a published port that its bridge just
/// translated back (`bridge::published_flows6`): out of an uplink when it
/// is for beyond the host, as a port sends an IPv4 one (`port::fast_out`);
/// a client on another network, the container itself, anything unusual:
/// the normal path (`TCX_NEXT`). A BPF subprogram, walked once.
#[inline(never)]
pub fn from_bridge6(ctx: &TcContext) -> i32 {
    fast_from_bridge6(ctx).unwrap_or(TCX_NEXT)
}

#[inline(always)]
fn fast_from_bridge6(ctx: &TcContext) -> Option<i32> {
    // Only what the bridge would pass up for the host to route.
    if !for_this_host(ctx) {
        return None;
    }
    let w = work6()?;
    // The header as the translation left it.
    parse6::ipv6(ctx, &mut w.ip).ok()?;
    let daddr = &w.ip.daddr;
    if is_multicast(daddr) || is_link_local(daddr) || network6_of(daddr).is_some() {
        return None;
    }
    // SAFETY: the context pointer is valid for the program's lifetime.
    let bridge = unsafe { (*ctx.skb.skb).ifindex };
    to_uplink6(ctx, &w.ip, bridge)
}

/// Whether the host's forwarding would route `ip` as it is: no extension
/// header (it drops some Hop-by-Hop options, answers others; fragments
/// are reassembled or followed elsewhere), nothing after the payload
/// (trimmed before it routes).
#[inline(always)]
fn routable(ctx: &TcContext, ip: &Ip6) -> bool {
    !ip.fragment && ip.l4 == L3 + IP6_HLEN && ip.end == ctx.len() as usize
}

/// Routes a container's packet for beyond the host and sends it out of
/// its uplink. `None`: the normal path.
#[inline(always)]
fn to_uplink6(ctx: &TcContext, ip: &Ip6, bridge_ifindex: u32) -> Option<i32> {
    if !routable(ctx, ip) {
        return None;
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid starting point.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET6;
    p.l4_protocol = ip.proto;
    p.ifindex = bridge_ifindex;
    // The whole packet, headers included, for the route's MTU check.
    p.__bindgen_anon_1.tot_len = u16::try_from(ip.end - L3).ok()?;
    // SAFETY: the unions' IPv6 members, 16 bytes each, written whole.
    unsafe {
        p.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(ip.saddr);
        p.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(ip.daddr);
    }
    out_of_uplink(ctx, &mut p, forward_hop)
}
