//! Uplink ingress for IPv6: the destination half of flows containers
//! started (NAT66 answers are written back to the container's address,
//! routed networks' answers pass as they are), new flows to published
//! ports (`publish6`), and what the gateway mode lets in straight at a
//! container (`inbound::direct6`). Anything for the
//! host itself (Neighbour Discovery, its own flows) passes untouched;
//! nothing from outside may claim a managed subnet's source.
//!
//! An ICMPv6 error about a flow is written back like the flow's packets
//! (`icmp6`), so a Packet Too Big for a NAT66 flow reaches its container;
//! so are a flow's later fragments, found through the ports their first
//! fragment recorded (`frag6`). A flow's packet, once written, takes the
//! fast path to its container when it can (`fastpath6::to_container6`).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, NetworkInfo, counter_kind, counter_scope, ct6::CtEntry6, v6::is_multicast,
};

use crate::{
    TCX_NEXT,
    counters::count,
    ct::ct_lookup,
    fastpath6,
    flow::{apply6, packet_key6, work6},
    frag6::{first_fragment6, later_fragment6},
    guard::{self, UplinkFrame},
    icmp6::icmp_error6,
    inbound,
    lookup::{drop, network, network6, network6_of},
    parse::{self, L4Kind},
    parse6::{self, Ip6, Work6, same6},
    publish6::publish6,
    rewrite::Phase,
    uplink,
};

/// The network a packet is addressed to straight at one of its containers
/// (not its gateway, which is a host address).
#[inline(always)]
fn direct_to(daddr: &[u8; 16]) -> Option<(u32, NetworkInfo)> {
    let id = network6_of(daddr)?;
    let net6 = network6(id)?;
    if same6(&net6.gateway, daddr) {
        return None;
    }
    Some((id, network(id)?))
}

/// A packet from outside that can start no flow: dropped when it is for a
/// container (unless the gateway mode passes those), the host's otherwise.
#[inline(always)]
fn untracked(ctx: &TcContext, ip: &Ip6) -> i32 {
    uplink::untracked(ctx, direct_to(&ip.daddr))
}

/// An IPv6 frame coming into the host through an uplink (the program runs
/// IPv6 apart from IPv4, each with its own stack).
#[inline(always)]
pub fn ingress(ctx: &TcContext, ifindex: u32) -> i32 {
    match guard::uplink_frame(ctx, ifindex) {
        UplinkFrame::Ipv6 => {}
        UplinkFrame::Ipv4 | UplinkFrame::Host => return TCX_NEXT,
        UplinkFrame::Verdict(v) => return v,
    }
    let Some(w) = work6() else {
        return drop(ctx, 0, DropReason::Malformed);
    };
    if let Err(r) = parse6::ipv6(ctx, &mut w.ip) {
        // What the host cannot parse either is the host's to drop, unless
        // it is headed for a container.
        let header = ctx.load::<[u8; 16]>(parse::L3 + parse6::ip6_off::DADDR);
        return match header.ok().and_then(|d| network6_of(&d)) {
            Some(id) => drop(ctx, id, r),
            None => TCX_NEXT,
        };
    }
    let ip = &w.ip;
    // A managed subnet's address never comes from outside; a multicast
    // one is no source at all.
    if let Some(id) = network6_of(&ip.saddr) {
        return drop(ctx, id, DropReason::LocalSource);
    }
    if is_multicast(&ip.saddr) {
        return drop(ctx, 0, DropReason::MartianSource);
    }
    if ip.later_fragment {
        if later_fragment6(ctx, w).is_some() {
            return TCX_NEXT;
        }
        return untracked(ctx, &w.ip);
    }
    let ip = &w.ip;
    match parse::l4_at(ctx, ip.l4, ip.proto) {
        Ok(l4) if l4.kind != L4Kind::IcmpError => w.l4 = l4,
        Ok(l4) => {
            // An error about a flow is written back like its packets.
            w.l4 = l4;
            if icmp_error6(ctx, w, Phase::Ingress).is_some() {
                return TCX_NEXT;
            }
            return untracked(ctx, &w.ip);
        }
        Err(()) => {
            return match direct_to(&ip.daddr) {
                Some((id, _)) => drop(ctx, id, DropReason::Malformed),
                None => TCX_NEXT,
            };
        }
    }
    w.key = packet_key6(&w.ip, &w.l4);
    let mut e: *mut CtEntry6 = core::ptr::null_mut();
    match flow(ctx, w, &mut e) {
        FOUND => {}
        v => return v,
    }
    if apply6(ctx, w, e, Phase::Ingress).is_err() {
        // A stale entry (removed): a packet without a flow.
        return untracked(ctx, &w.ip);
    }
    first_fragment6(w, e);
    fastpath6::to_container6(ctx, &w.ip)
}

/// What [`flow`] returns when the packet has a flow (its entry in `e`).
/// No verdict has this value.
const FOUND: i32 = i32::MIN;

/// The packet's flow, known, started from outside to a published port or
/// straight at a container ([`FOUND`]), or the verdict for a packet that has none. A
/// BPF subprogram (its own stack frame, next to the rewrite's).
#[inline(never)]
fn flow(ctx: &TcContext, w: &mut Work6, e: &mut *mut CtEntry6) -> i32 {
    if let Some(found) = ct_lookup(&w.key) {
        *e = found;
        return FOUND;
    }
    match publish6(ctx, w, false) {
        Some(Ok((created, _))) => {
            *e = created;
            return FOUND;
        }
        Some(Err((id, r))) => return drop(ctx, id, r),
        None => {}
    }
    let Some((id, net)) = direct_to(&w.ip.daddr) else {
        // The host's own traffic.
        return TCX_NEXT;
    };
    match inbound::direct6(ctx, w, id, &net) {
        Ok(created) => {
            count(counter_scope::NETWORK, id, counter_kind::NET_CT_NEW, 0);
            *e = created;
            FOUND
        }
        Err(r) => drop(ctx, id, r),
    }
}
