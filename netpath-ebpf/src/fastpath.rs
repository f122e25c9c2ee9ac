//! The fast path: packets between an uplink and a container skip the bridge
//! and the host's IP forwarding. After its destination was translated at an
//! uplink, a packet for a container is handed straight to the container's
//! veth peer (`bpf_redirect_peer`); a container's packet for the outside is
//! routed with `bpf_fib_lookup` and sent out of the uplink
//! (`bpf_redirect`), whose egress program then does the source half of the
//! translation as usual. Both decrement the TTL as forwarding would.
//! Between two containers of one network (switched, not routed: no TTL
//! change), an untracked packet the sender's port allowed goes from that
//! port straight to the other container's veth peer, past the bridge and
//! the other port's egress program, whose checks it would pass (the same
//! network's frame policy, a managed source, no flow to translate).
//! A published port's packet from one container to another (either
//! direction, any two managed networks) goes port to port as well, routed
//! (`bpf_fib_lookup` from the sender's bridge, TTL decremented) or, for a
//! frame addressed to the other container itself, switched, with the other
//! port's egress half of the flow done first (`published_to_port4`).
//! Anything unusual (fragments, a TTL about to expire, an internal network,
//! an unresolved neighbour, a route that does not leave through an uplink,
//! a frame not addressed to the host where it would be routed, bytes after
//! the IP packet, IP options, a packet bigger than the container's port
//! takes) takes the normal path.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_fib_lookup},
    helpers::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use netpath_common::{Endpoint, IfaceRole, NetworkInfo, counter_kind, counter_scope, net_flags};

use crate::{
    counters::count,
    isolate::to_bridge,
    lookup::{iface, network, same_mac},
    maps::NP_ENDPOINTS4,
    parse::{self, Ip4, L3, L4Kind, ip4_off},
};

const AF_INET: u8 = 2;
/// `skb->pkt_type` of a frame addressed to this host (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// Decrements the TTL (fixing the header checksum); `None` when it would
/// expire here (the kernel then sends the ICMP error).
#[inline(always)]
fn forward_ttl(ctx: &TcContext) -> Option<()> {
    // TTL and protocol share one 16-bit word.
    let word: [u8; 2] = ctx.load(L3 + ip4_off::TTL).ok()?;
    if word[0] <= 1 {
        return None;
    }
    let old = u16::from_ne_bytes(word);
    let new = u16::from_ne_bytes([word[0] - 1, word[1]]);
    ctx.store(L3 + ip4_off::TTL, &new, 0).ok()?;
    ctx.l3_csum_replace(L3 + ip4_off::CHECK, u64::from(old), u64::from(new), 2)
        .ok()
}

/// Whether the frame ends where the IPv4 packet does and its header has no
/// options: the kernel's path trims what follows (Ethernet padding, a
/// trailer) before it routes, and processes options as a router does
/// (Record Route filled in, source routes refused); the fast path would
/// carry the one and skip the other.
#[inline(always)]
fn forwardable(ctx: &TcContext, ip: &Ip4) -> bool {
    ip.hlen == IPV4_HLEN && L3 + usize::from(ip.tot_len) == ctx.len() as usize
}

/// An IPv4 header without options.
const IPV4_HLEN: usize = 20;

/// Whether the packet fits the MTU of port `ifindex` (a GSO packet: each
/// of its segments), as the bridge checks before it sends a frame out of
/// a port (`is_skb_forwardable`): a port with a smaller MTU than its
/// bridge drops what does not fit, the fast path must not deliver it.
#[inline(always)]
fn fits(ctx: &TcContext, ifindex: u32) -> bool {
    let mut mtu: u32 = 0;
    // SAFETY: the helper takes the skb context and a u32 it writes.
    let rc = unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast(),
            ifindex,
            &raw mut mtu,
            0,
            u64::from(BPF_MTU_CHK_SEGS),
        )
    };
    rc == 0
}

/// A packet whose destination is now container `daddr`: straight to its
/// veth peer. `None`: take the normal path.
#[inline(always)]
pub fn to_container4(ctx: &TcContext, ip: &Ip4, daddr: u32) -> Option<i32> {
    if ip.is_fragment() || !for_this_host(ctx) || !forwardable(ctx, ip) {
        return None;
    }
    // SAFETY: the value is Copy and read at once.
    let ep = unsafe { NP_ENDPOINTS4.get(daddr) }.copied()?;
    routed_to_peer(ctx, &ep, forward_ttl)
}

/// Hands a routed packet to container `ep`: `hop` takes the hop off its
/// header, the container's MAC becomes the destination and the old
/// destination (the uplink's) the source. `None` (the normal path) for a
/// container of an internal network, whose checks are at its port.
#[inline(always)]
pub fn routed_to_peer(
    ctx: &TcContext,
    ep: &Endpoint,
    hop: impl FnOnce(&TcContext) -> Option<()>,
) -> Option<i32> {
    let net = network(ep.net_id)?;
    if net.flags & net_flags::INTERNAL != 0 || !fits(ctx, ep.ifindex) {
        return None;
    }
    let eth: [u8; 6] = ctx.load(0).ok()?;
    hop(ctx)?;
    set_macs(ctx, &ep.mac, &eth)?;
    Some(to_peer(ctx, ep))
}

/// Writes the frame's destination and source MACs.
#[inline(always)]
fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Option<()> {
    let mut hdr = [0u8; 12];
    hdr[..6].copy_from_slice(dst);
    hdr[6..].copy_from_slice(src);
    ctx.store(0, &hdr, 0).ok()
}

/// Whether a packet that came in through an uplink was addressed to the
/// host at layer 2 (`PACKET_HOST`): the kernel forwards nothing else (a
/// frame for another MAC, a broadcast or a multicast one), so neither may
/// the fast path.
#[inline(always)]
pub fn for_this_host(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).pkt_type == PACKET_HOST }
}

/// Hands the packet to the veth peer of `ep`'s port, counted as that
/// port's egress program would have counted it (the redirect skips it).
#[inline(always)]
pub fn to_peer(ctx: &TcContext, ep: &Endpoint) -> i32 {
    let len = ctx.len();
    count(
        counter_scope::NETWORK,
        ep.net_id,
        counter_kind::NET_TO_CONTAINERS,
        len,
    );
    count(
        counter_scope::IFACE,
        ep.ifindex,
        counter_kind::IF_EGRESS,
        len,
    );
    // SAFETY: no preconditions beyond a valid ifindex (checked by the helper).
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}

/// An untracked packet from the container at port `from` to a neighbour
/// on its network `net_id`, allowed by the port's policy: straight to the
/// neighbour's veth peer when it is addressed (MAC and IPv4) to a
/// container bound or learned at another managed port of the network.
/// `None`: take the bridge.
#[inline(always)]
pub fn to_neighbour4(ctx: &TcContext, ip: &Ip4, from: u32, net_id: u32) -> Option<i32> {
    if ip.is_fragment() {
        return None;
    }
    // SAFETY: the value is Copy and read at once.
    let ep = unsafe { NP_ENDPOINTS4.get(ip.daddr) }.copied()?;
    to_neighbour(ctx, &ep, from, net_id)
}

/// Whether `ep` is at a port netpath manages in network `net_id` (one
/// being set up or torn down, or in another network, is not): only then
/// may a packet skip that port's egress program.
#[inline(always)]
pub fn managed_port(ep: &Endpoint, net_id: u32) -> bool {
    ep.net_id == net_id
        && iface(ep.ifindex).is_some_and(|p| p.role == IfaceRole::Port as u32 && p.net_id == net_id)
}

/// A packet from port `from` of network `net_id` for container `ep`, in a
/// frame addressed to that container (not to the bridge, a stale MAC or a
/// broadcast) at another managed port of the network: straight to its
/// veth peer, counted as port to port. `None`: the bridge.
#[inline(always)]
pub fn to_neighbour(ctx: &TcContext, ep: &Endpoint, from: u32, net_id: u32) -> Option<i32> {
    if ep.ifindex == from || !managed_port(ep, net_id) || !fits(ctx, ep.ifindex) {
        return None;
    }
    let dst: [u8; 6] = ctx.load(0).ok()?;
    if !same_mac(&dst, &ep.mac) {
        return None;
    }
    count(
        counter_scope::NETWORK,
        net_id,
        counter_kind::NET_C2C_FAST,
        ctx.len(),
    );
    Some(to_peer(ctx, ep))
}

/// A container's packet for outside the managed networks and the host:
/// routed here and sent out of its uplink. `None`: the normal path.
#[inline(always)]
pub fn to_uplink4(ctx: &TcContext, ip: &Ip4, bridge_ifindex: u32) -> Option<i32> {
    if ip.is_fragment() || !forwardable(ctx, ip) {
        return None;
    }
    out_of_uplink(ctx, &mut route4(ip, bridge_ifindex), forward_ttl)
}

/// The route lookup of IPv4 packet `ip` as it came in through `ifindex`.
#[inline(always)]
fn route4(ip: &Ip4, ifindex: u32) -> bpf_fib_lookup {
    // SAFETY: an all-zero bpf_fib_lookup is a valid starting point.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.ifindex = ifindex;
    p.__bindgen_anon_1.tot_len = ip.tot_len;
    p.__bindgen_anon_3.ipv4_src = ip.saddr;
    p.__bindgen_anon_4.ipv4_dst = ip.daddr;
    p
}

/// Looks the route of `p` up (`bpf_fib_lookup`, which fills in the
/// outgoing ifindex and the next hop's MACs): whether one was found, its
/// neighbour resolved and the packet within its MTU.
#[inline(always)]
fn fib(ctx: &TcContext, p: &mut bpf_fib_lookup) -> bool {
    // SAFETY: the helper takes the skb context and a struct of its size.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &raw mut *p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    rc == BPF_FIB_LKUP_RET_SUCCESS as i64
}

/// Looks the route of `p` up and, when it leaves through an uplink (where
/// the egress program translates), takes the hop off the header (`hop`),
/// writes the next hop's MACs and sends the packet out of it. `None`: the
/// normal path.
#[inline(always)]
pub fn out_of_uplink(
    ctx: &TcContext,
    p: &mut bpf_fib_lookup,
    hop: impl FnOnce(&TcContext) -> Option<()>,
) -> Option<i32> {
    if !fib(ctx, p) {
        return None;
    }
    let out = iface(p.ifindex)?;
    if out.role != IfaceRole::Uplink as u32 {
        return None;
    }
    hop(ctx)?;
    set_macs(ctx, &p.dmac, &p.smac)?;
    // SAFETY: no preconditions beyond a valid ifindex (checked by the helper).
    Some(unsafe { bpf_redirect(p.ifindex, 0) } as i32)
}

/// A packet of a published port's flow (either direction, rewritten by
/// the sender's port) from the container at port `from` of network
/// `net_id` (`net`) to a container at another managed port, of this or
/// another network: straight to that container's veth peer, past the
/// bridges, the host's routing and the other port's egress program.
/// `egress_half` does what that program would do to the packet first (the
/// source half of the flow: an answer's source becomes the published
/// address again). Routed (`bpf_fib_lookup` from the sender's bridge must
/// lead to the other network's bridge and its neighbour entry to the
/// container's MAC; TTL decremented, MACs rewritten) unless the frame is
/// addressed to the container itself on the same network (switched, as the
/// bridge would). `None`: the normal path (fragments, IP options, ICMP
/// errors, the sender itself, an internal network, a frame not addressed
/// to the bridge or the container, an unresolved neighbour, a packet too
/// big for the route or the container's port).
#[inline(always)]
pub fn published_to_port4(
    ctx: &TcContext,
    from: u32,
    net_id: u32,
    net: &NetworkInfo,
    egress_half: impl FnOnce(&TcContext, &Ip4),
) -> Option<i32> {
    // The header as it is now (the flow rewrote it).
    let ip = parse::ipv4(ctx)?;
    if ip.is_fragment() || !forwardable(ctx, &ip) {
        return None;
    }
    match parse::l4(ctx, &ip) {
        Ok(l4) if l4.kind != L4Kind::IcmpError => {}
        _ => return None,
    }
    // SAFETY: the value is Copy and read at once.
    let ep = unsafe { NP_ENDPOINTS4.get(ip.daddr) }.copied()?;
    if ep.ifindex == from || !managed_port(&ep, ep.net_id) || !fits(ctx, ep.ifindex) {
        return None;
    }
    let to_net = network(ep.net_id)?;
    if to_net.flags & net_flags::INTERNAL != 0 {
        return None;
    }
    let dst: [u8; 6] = ctx.load(0).ok()?;
    if same_mac(&dst, &ep.mac) {
        // Switched: only within one network.
        if ep.net_id != net_id {
            return None;
        }
    } else {
        // Routed: only what the sender addressed to its bridge (the host),
        // as the kernel forwards nothing else.
        if !to_bridge(net, &dst) {
            return None;
        }
        let mut p = route4(&ip, net.bridge_ifindex);
        if !fib(ctx, &mut p) || p.ifindex != to_net.bridge_ifindex || !same_mac(&p.dmac, &ep.mac) {
            return None;
        }
        forward_ttl(ctx)?;
        set_macs(ctx, &ep.mac, &p.smac)?;
    }
    egress_half(ctx, &ip);
    count(
        counter_scope::NETWORK,
        net_id,
        counter_kind::NET_C2C_FAST,
        ctx.len(),
    );
    Some(to_peer(ctx, &ep))
}
