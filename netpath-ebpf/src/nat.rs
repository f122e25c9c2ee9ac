//! Uplink egress: masquerade (`-A POSTROUTING -s SUBNET ! -o BRIDGE -j
//! MASQUERADE`) for containers of networks that masquerade, tracking
//! without translation for those that do not (so their replies are let
//! back in), and the source half of every other flow (answers from
//! published ports).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, GatewayMode, IfaceInfo, counter_kind, counter_scope,
    ct::{CtKey4, ct_dir, ct_flags, proto, tcp_flags},
    net_flags,
};

use crate::{
    TCX_NEXT,
    counters::count,
    ct::{ct_create, ct_lookup, ct_remove},
    flow::{apply4, packet_key},
    frag::{first_fragment4, later_fragment4},
    icmp::icmp_error4,
    lookup::{drop, is_peer, network, network_of},
    parse::{self, Ip4, L4, L4Kind},
    rewrite::{Phase, Side, set_addr},
};

/// Who a packet leaving through an uplink comes from (either family).
#[derive(Clone, Copy)]
pub enum Source {
    /// The host itself (or anything outside the managed subnets).
    Host,
    /// A container of a network that masquerades.
    Masquerade(u32),
    /// A container of a network that keeps its addresses
    /// (`--masquerade=false`, gateway mode `routed`): tracked only.
    Track(u32),
}

#[inline(always)]
fn source(saddr: u32) -> Result<Source, u32> {
    source_of(network_of(saddr))
}

/// [`Source`] for a packet from network `net_id` (`None`: no managed
/// subnet), or `Err` with the network when it is internal.
#[inline(always)]
pub fn source_of(net_id: Option<u32>) -> Result<Source, u32> {
    let Some(net_id) = net_id else {
        return Ok(Source::Host);
    };
    let Some(net) = network(net_id) else {
        return Ok(Source::Host);
    };
    if net.flags & net_flags::INTERNAL != 0 {
        // The port policy keeps these in; never let one out.
        return Err(net_id);
    }
    let keep = net.flags & net_flags::NO_MASQUERADE != 0
        || GatewayMode::from_flags(net.flags) == GatewayMode::Routed;
    Ok(if keep {
        Source::Track(net_id)
    } else {
        Source::Masquerade(net_id)
    })
}

/// Whether a new host flow's tuple (its first packet: a TCP SYN, a UDP
/// datagram, an echo request) is what replies of a translated flow carry,
/// i.e. another flow's REPLY key.
#[inline(always)]
fn held_by_a_flow(ip: &Ip4, l4: &L4, key: &CtKey4) -> bool {
    let first = match ip.proto {
        proto::TCP => l4.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN,
        // SCTP cannot be remapped (its ports are kept): a clashing host
        // association is refused rather than let its replies reach the
        // container (no socket lookup exists for SCTP to avoid the clash).
        proto::UDP | proto::SCTP => true,
        proto::ICMP => l4.kind == L4Kind::Ports && l4.sport_be != 0,
        _ => false,
    };
    // SAFETY: map value pointer, read at once.
    first && ct_lookup(&key.reversed()).is_some_and(|e| unsafe { (*e).dir } == ct_dir::REPLY)
}

/// Uplink egress: the source half of every flow, and new flows of the
/// managed subnets.
#[inline(always)]
pub fn egress(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    if !parse::is_plain_ipv4(ctx) {
        return TCX_NEXT;
    }
    let Some(ip) = parse::ipv4(ctx) else {
        return TCX_NEXT;
    };
    let src = match source(ip.saddr) {
        // A peer of the network (another node's pods, say): no masquerade,
        // tracked so its answers come back.
        Ok(Source::Masquerade(net_id)) if is_peer(net_id, ip.daddr) => Source::Track(net_id),
        Ok(s) => s,
        Err(net_id) => return drop(ctx, net_id, DropReason::Internal),
    };
    let addr = iface.ipv4_be;
    if ip.is_later_fragment() {
        if later_fragment4(ctx, &ip, Phase::Egress).is_some() {
            return TCX_NEXT;
        }
        let Source::Masquerade(net_id) = src else {
            return TCX_NEXT;
        };
        if addr == 0 {
            return drop(ctx, net_id, DropReason::NatNoAddress);
        }
        // No ports here: the source address is all there is, and it is the
        // same for every flow of this network leaving through this uplink.
        if ip.saddr != addr && set_addr(ctx, None, Side::Src, ip.saddr, addr).is_err() {
            return drop(ctx, net_id, DropReason::Malformed);
        }
        count(
            counter_scope::NETWORK,
            net_id,
            counter_kind::NET_SNAT,
            ctx.len(),
        );
        return TCX_NEXT;
    }
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return match src {
            // A container packet we cannot parse would leak its address.
            Source::Masquerade(net_id) => drop(ctx, net_id, DropReason::Malformed),
            _ => TCX_NEXT,
        };
    };
    if l4.kind == L4Kind::IcmpError {
        return match (icmp_error4(ctx, &ip, Phase::Egress), src) {
            // A container's error we cannot place would leak its address.
            (None, Source::Masquerade(net_id)) => drop(ctx, net_id, DropReason::Malformed),
            _ => TCX_NEXT,
        };
    }
    let key = packet_key(&ip, &l4);
    if let Some(e) = ct_lookup(&key) {
        // SAFETY: map value pointer, valid during the program.
        let (dir, flags, nat_addr, peer) =
            unsafe { ((*e).dir, (*e).flags, (*e).nat_addr_be, (*e).peer) };
        let masquerade_flow =
            flags & ct_flags::SNAT != 0 && flags & ct_flags::DNAT == 0 && dir == ct_dir::ORIGINAL;
        if !masquerade_flow || nat_addr == addr {
            first_fragment4(&ip, &l4, e, Phase::Egress);
            if apply4(ctx, e, Phase::Egress).is_ok() {
                return TCX_NEXT;
            }
            // A stale entry (removed by the partner check): start over below.
        } else {
            // The uplink's address changed (or the route moved to another
            // uplink): like MASQUERADE, the old mapping is gone.
            ct_remove(&peer);
            ct_remove(&key);
        }
    }
    let (net_id, translated, flags) = match src {
        // The host's own packet: untouched, unless a translated flow holds
        // its tuple already (a container's flow got there first): then the
        // host's flow gets another source port, as netfilter's NAT does with
        // the later of two clashing connections.
        Source::Host if held_by_a_flow(&ip, &l4, &key) => (0, key, ct_flags::SNAT | ct_flags::HOST),
        // The host's own SCTP is tracked, untranslated: no socket lookup
        // exists for SCTP, so this entry is how a container's later flow
        // finds the tuple taken (instead of capturing the host's replies).
        Source::Host if ip.proto == proto::SCTP => (0, key, ct_flags::HOST),
        Source::Host => return TCX_NEXT,
        Source::Track(net_id) => (net_id, key, 0),
        Source::Masquerade(net_id) => {
            if addr == 0 {
                return drop(ctx, net_id, DropReason::NatNoAddress);
            }
            let t = CtKey4::new(addr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto);
            (net_id, t, ct_flags::SNAT)
        }
    };
    let vary = flags & ct_flags::SNAT != 0;
    match ct_create(ctx, &key, &translated, vary, flags, net_id, l4.tcp_flags) {
        Ok(e) => {
            count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
            first_fragment4(&ip, &l4, e, Phase::Egress);
            if apply4(ctx, e, Phase::Egress).is_err() {
                return drop(ctx, net_id, DropReason::Malformed);
            }
            TCX_NEXT
        }
        // Tracking the host's own SCTP is best effort: a full table must
        // not cut the host off.
        Err(_) if flags == ct_flags::HOST => TCX_NEXT,
        Err(reason) => drop(ctx, net_id, reason),
    }
}
