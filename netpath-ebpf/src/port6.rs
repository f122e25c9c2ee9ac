//! IPv6 at the container ports of dual-stack networks.
//!
//! - Ingress (a container sends): its MAC, its source (`spoof6`), the
//!   Neighbour Discovery guard (`nd`), then the destination half of
//!   published ports' flows (`publish6`), which pass whatever the
//!   networks, and the destination policy (`isolate::destination6`) for
//!   the rest; only a packet that passed them all pins the port's MAC and
//!   records a new source. What leaves the host is masqueraded or tracked
//!   at the uplink (`nat6`); the program's top then offers what passed to
//!   the fast path (`fastpath6::from_port6`: port to port, or routed out
//!   of the uplink).
//! - Both: a network without an IPv6 subnet carries none (`drop_ipv6`).
//! - Egress (delivered to a container): a published port's flow from
//!   anywhere (with the source half of its rewrite); else from the host
//!   itself or a port or
//!   bridge of the same network; from beyond the host (an uplink, an
//!   interface netpath does not manage) only packets of a tracked flow;
//!   an internal network only from its own subnet and link-local
//!   addresses.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT},
    programs::TcContext,
};
use netpath_common::{
    DropReason, IfaceInfo, IfaceRole, NetworkInfo,
    ct::{Tuple, ct_dir, ct_flags},
    ct6::CtEntry6,
    net_flags,
    v6::{Addr6Key, NetworkInfo6, is_link_local},
};

use crate::{
    TCX_NEXT,
    ct::ct_lookup,
    flow::{apply6, flow_tuple6, packet_key6, work6},
    frag6, guard,
    icmp6::about_a_flow,
    inbound, isolate,
    lookup::published6,
    lookup::{drop, iface, network, network6, same_mac},
    maps::{NP_ENDPOINTS6, NP_NETWORKS6},
    nd,
    parse::{self, L4Kind},
    parse6::{self, Flow, Work6, ip6_off},
    rewrite::{Phase, Side},
    spoof::{Sender, hand, handed},
    spoof6::Sender6,
};

/// A container's IPv6 frame entering the host at its port (the program
/// dispatches IPv6 here before the IPv4 path, so each has its own stack).
///
/// The rest is [`checks`], which the program's top runs.
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
    if !hand(&sender, 0) {
        return drop(ctx, net_id, DropReason::Malformed);
    }
    CHECKS
}

/// What [`ingress`] returns for a frame it handed over (`spoof::hand`):
/// the program's top runs [`checks`]. No verdict has this value.
pub const CHECKS: i32 = i32::MIN;

/// What [`checks`] returns for a packet it allowed: the fast path decides
/// (`fastpath6::from_port6`, from what `Work6::from` says). No verdict has
/// this value.
pub const FAST: i32 = i32::MIN + 1;

/// The checks of the frame [`ingress`] handed over, run from the program's
/// top: two global functions (`netpath_port6_*`), each verified once on
/// its own. Inline, every way through the source checks was a separate
/// state through Neighbour Discovery and the policy, and the verifier
/// walked this path 540,000 instructions deep; a global function's frame
/// adds to its caller's. A BPF subprogram: its frame is not the program
/// top's, where IPv4's global functions add theirs.
#[inline(never)]
pub fn checks(ctx: &TcContext) -> i32 {
    let Some(h) = handed() else {
        return TC_ACT_SHOT;
    };
    let net_id = h.iface.net_id;
    // The network's IPv6 record, looked up once for both checks and the
    // learning (a global function takes it as plain memory).
    let Some(net6) = NP_NETWORKS6.get_ptr(net_id) else {
        return drop(ctx, net_id, DropReason::Ipv6);
    };
    let skb = ctx.skb.skb;
    let checked = netpath_port6_source(skb, net6);
    if checked < 0 || netpath_port6_destination(skb, net6, checked & RESOLUTION) < 0 {
        return TC_ACT_SHOT;
    }
    // The packet passes: what it showed is the port's from now on.
    let sender = Sender::of(h);
    sender.pin_mac();
    let Some(w) = work6() else {
        return drop(ctx, net_id, DropReason::Malformed);
    };
    if checked & NEW_SOURCE != 0 {
        // SAFETY: a map value, valid for the program's run.
        let s6 = Sender6 {
            s: &sender,
            net6: unsafe { &*net6 },
        };
        s6.learn(&w.ip.saddr);
    }
    w.from.ifindex = h.ifindex;
    w.from.net_id = net_id;
    w.from.bridge = h.net.bridge_ifindex;
    FAST
}

/// [`netpath_port6_source`]'s answer: the source is one the port takes
/// with this packet (recorded once the whole packet passed).
const NEW_SOURCE: i32 = 1;
/// [`netpath_port6_source`]'s answer: Neighbour Discovery's address
/// resolution, which passed its guard.
const RESOLUTION: i32 = 2;

/// The sender's MAC and source and the Neighbour Discovery guard, with the
/// packet's header parsed into `Work6::ip` (`net6`: the network's IPv6
/// record, which the caller looked up): `NEW_SOURCE | RESOLUTION` bits,
/// or -1 for a packet dropped (and counted) here.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_port6_source(skb: *mut __sk_buff, net6: *const NetworkInfo6) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(h) = handed() else {
        return -1;
    };
    // SAFETY: null or the caller's map value, valid for the call.
    let Some(net6) = (unsafe { net6.as_ref() }) else {
        drop(&ctx, h.iface.net_id, DropReason::Ipv6);
        return -1;
    };
    check_source(&ctx, &Sender::of(h), net6)
}

/// [`netpath_port6_source`]'s checks. Each drop is counted where it is
/// found: a `Result` of these checks, carried out, was packed into one
/// register whose bits on the `Ok` side LLVM leaves undefined, and the
/// verifier refuses to read an undefined register.
#[inline(always)]
fn check_source(ctx: &TcContext, sender: &Sender, net6: &NetworkInfo6) -> i32 {
    let net_id = sender.iface.net_id;
    let fail = |reason| {
        drop(ctx, net_id, reason);
        -1
    };
    if !sender.mac_ok() {
        return fail(DropReason::SpoofedMac);
    }
    let Some(w) = work6() else {
        return fail(DropReason::Malformed);
    };
    if let Err(reason) = parse6::ipv6(ctx, &mut w.ip) {
        return fail(reason);
    }
    let s6 = Sender6 { s: sender, net6 };
    let new_source = match s6.check_source(&w.ip) {
        Ok(new) => new,
        Err(reason) => return fail(reason),
    };
    let resolution = match nd::check(ctx, &w.ip, &s6, new_source) {
        Ok(resolution) => resolution,
        Err(reason) => return fail(reason),
    };
    let mut bits = 0;
    if new_source {
        bits |= NEW_SOURCE;
    }
    if resolution {
        bits |= RESOLUTION;
    }
    bits
}

/// The destination policy of a packet whose sender passed
/// ([`netpath_port6_source`], `resolution` its `RESOLUTION` bit): 0 with
/// `Work6::from.flow` set, or -1 for a packet dropped (and counted) here.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_port6_destination(
    skb: *mut __sk_buff,
    net6: *const NetworkInfo6,
    resolution: i32,
) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(h) = handed() else {
        return -1;
    };
    let net_id = h.iface.net_id;
    // SAFETY: null or the caller's map value, valid for the call.
    let Some(net6) = (unsafe { net6.as_ref() }) else {
        drop(&ctx, net_id, DropReason::Ipv6);
        return -1;
    };
    match destination(&ctx, &h.net, net6, net_id, resolution != 0) {
        Ok(()) => 0,
        Err(reason) => {
            drop(&ctx, net_id, reason);
            -1
        }
    }
}

#[inline(always)]
fn destination(
    ctx: &TcContext,
    net: &NetworkInfo,
    net6: &NetworkInfo6,
    net_id: u32,
    resolution: bool,
) -> Result<(), DropReason> {
    let w = work6().ok_or(DropReason::Malformed)?;
    // A published port's flow was admitted when it was created, whatever
    // the networks (as for IPv4: Docker's DNAT comes before its isolation
    // chains).
    // Only as far as its frame goes where the flow does: a packet for a
    // host address up to the bridge, an answer to the client's port (or
    // up); any other frame is judged by the policy, as if unpublished.
    let dst_mac = ctx.load::<[u8; 6]>(0).map_err(|_| DropReason::Malformed)?;
    // Address resolution within the network passes whatever ICC says, as
    // ARP does (a neighbour must still find a container answering it
    // through a published port); the guard above vouched for it.
    // At most one link-layer option long: no room to carry data past ICC.
    let neighbour = resolution
        && w.ip.end - w.ip.l4 <= RESOLUTION_LEN
        && (net6.contains(&w.ip.daddr) || is_link_local(&w.ip.daddr));
    let flow = if neighbour {
        Flow::Other
    } else {
        let flow = published_in(ctx, w, net, net_id, &dst_mac);
        if flow != Flow::Published {
            let daddr = w.ip.daddr;
            let code = isolate::netpath_isolate6(net, net6, net_id, &daddr, &dst_mac);
            if code != 0 {
                return Err(DropReason::from_u16(code as u16).unwrap_or(DropReason::Malformed));
            }
        }
        flow
    };
    w.from.flow = flow;
    Ok(())
}

/// A Neighbour Solicitation or Advertisement with one link-layer address
/// option: 24 bytes and 8.
const RESOLUTION_LEN: usize = 32;

/// [`Flow::Published`] when a container's packet belongs to a published
/// port's flow, or would start one (its destination is a published host
/// port), and its frame (`dst_mac`) goes where that flow goes: then the
/// bridge's ingress hook translates it (`bridge::published_flows6`) and
/// the network policy does not apply. A BPF subprogram (its own stack
/// frame).
#[inline(never)]
fn published_in(
    ctx: &TcContext,
    w: &mut Work6,
    net: &NetworkInfo,
    net_id: u32,
    dst_mac: &[u8; 6],
) -> Flow {
    // A later fragment is its first fragment's (recorded where that one
    // was translated): up to the bridge with it, whatever the policy.
    if !flow_tuple6(ctx, w) {
        return Flow::Other;
    }
    let internal = net.flags & net_flags::INTERNAL != 0;
    let up = isolate::to_bridge(net, dst_mac);
    let published = match ct_lookup(&w.key) {
        Some(e) => {
            // SAFETY: map value pointer, read at once.
            let (flags, dir) = unsafe { ((*e).flags, (*e).dir) };
            if flags & ct_flags::DNAT == 0 {
                return Flow::Other;
            }
            // The container answering a client: up, or bridged straight
            // to the client's own port (a neighbour's MAC for its address).
            up || dir == ct_dir::REPLY && answer_to_client(net_id, &w.key.daddr, dst_mac)
        }
        // An internal network reaches no host port.
        None => {
            if !(up && !internal && published6(&w.key.daddr, w.key.dport_be, w.key.proto).is_some())
            {
                return Flow::Untracked;
            }
            true
        }
    };
    if published {
        Flow::Published
    } else {
        Flow::Other
    }
}

/// Whether `dst_mac` is the MAC of the port that holds `daddr` on network
/// `net_id`.
#[inline(always)]
fn answer_to_client(net_id: u32, daddr: &[u8; 16], dst_mac: &[u8; 6]) -> bool {
    let key = Addr6Key::of(daddr, net_id);
    // SAFETY: the value is read at once.
    unsafe { NP_ENDPOINTS6.get(key) }.is_some_and(|ep| same_mac(&ep.mac, dst_mac))
}

/// An IPv6 packet about to be delivered to a container (the program
/// dispatches IPv6 here, so each family has its own stack).
#[inline(always)]
pub fn egress(ctx: &TcContext, port: &IfaceInfo) -> i32 {
    let net_id = port.net_id;
    let Some(net) = network(net_id) else {
        return TCX_NEXT;
    };
    if let Err(v) = guard::port_frame(ctx, net_id) {
        return v;
    }
    let net = &net;
    let Some(net6) = network6(net_id) else {
        return drop(ctx, net_id, DropReason::Ipv6);
    };
    // SAFETY: the context pointer is valid for the program's lifetime.
    let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let mut e: *mut CtEntry6 = core::ptr::null_mut();
    if published_out(ctx, &mut e) {
        // The source half (the answer to a container client; either half
        // of a container reaching its own published port).
        let rewritten = e.is_null()
            || work6().is_some_and(|w| {
                let done = apply6(ctx, w, e, Phase::Egress).is_ok();
                frag6::first_fragment_out6(w);
                done
            });
        return if rewritten {
            TCX_NEXT
        } else {
            drop(ctx, net_id, DropReason::Malformed)
        };
    }
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
            // beyond the host, only what a flow of this network expects.
            _ => {
                if let Err(r) = from_outside(ctx, net_id, net) {
                    return drop(ctx, net_id, r);
                }
            }
        }
    }
    let Ok(saddr) = ctx.load::<[u8; 16]>(parse::L3 + ip6_off::SADDR) else {
        return drop(ctx, net_id, DropReason::Malformed);
    };
    match isolate::source6(net, &net6, &saddr) {
        Ok(()) => TCX_NEXT,
        Err(reason) => drop(ctx, net_id, reason),
    }
}

/// Whether a packet delivered to a container belongs to a published
/// port's flow, from wherever it came (the flow was admitted when it was
/// created): the client's packet, sent to the container at the ingress
/// hook it came in by; the answer to a container client, or either half of
/// a container reaching its own published port, whose entry (`e`) writes
/// the source here. A BPF subprogram (its own stack frame; the caller
/// rewrites, so the frames of lookup and rewrite never add up).
#[inline(never)]
fn published_out(ctx: &TcContext, e: &mut *mut CtEntry6) -> bool {
    let Some(w) = work6() else {
        return false;
    };
    if parse6::ipv6(ctx, &mut w.ip).is_err() {
        return false;
    }
    // A later fragment is judged by the key its first fragment recorded
    // (here, or at the bridge that translated it), and written as that
    // one was.
    let later = w.ip.later_fragment;
    if !flow_tuple6(ctx, w) {
        return false;
    }
    if let Some(found) = ct_lookup(&w.key) {
        // SAFETY: map value pointer, read at once.
        let (flags, dir) = unsafe { ((*found).flags, (*found).dir) };
        if flags & ct_flags::DNAT == 0 || dir == ct_dir::ORIGINAL {
            return false;
        }
        if later {
            return frag6::to_peer6(ctx, w, found, Side::Src).is_some();
        }
        *e = found;
        return true;
    }
    // The client's packet: its flow's answer is keyed by the tuple
    // reversed.
    // SAFETY: as above.
    ct_lookup(&w.key.reversed())
        .is_some_and(|r| unsafe { (*r).dir == ct_dir::REPLY && (*r).flags & ct_flags::DNAT != 0 })
}

/// A packet from beyond the host for a container of `net`: it must belong
/// to one of the network's flows (the REPLY direction of a flow the
/// container started, as written back at the uplink; the ORIGINAL
/// direction of one started from outside), be a later fragment of one's
/// datagram, or be an ICMPv6 error about a packet of one; else the gateway
/// mode decides as for a packet of no flow (`inbound::untracked`).
#[inline(always)]
fn from_outside(ctx: &TcContext, net_id: u32, net: &NetworkInfo) -> Result<(), DropReason> {
    let w = work6().ok_or(DropReason::Malformed)?;
    parse6::ipv6(ctx, &mut w.ip)?;
    let tracked = if w.ip.later_fragment {
        frag6::flow_key(w).is_some() && of_a_flow(w, net_id)
    } else {
        w.l4 = parse::l4_at(ctx, w.ip.l4, w.ip.proto).map_err(|_| DropReason::Malformed)?;
        if w.l4.kind == L4Kind::IcmpError {
            about_a_flow(ctx, w, net_id)
        } else {
            w.key = packet_key6(&w.ip, &w.l4);
            of_a_flow(w, net_id)
        }
    };
    if tracked {
        Ok(())
    } else {
        inbound::untracked(net)
    }
}

/// Whether `w.key` (a packet coming in to a container of `net_id`) is a
/// flow's: one started from outside (the key itself), the answer to one
/// the container started (the key reversed, ORIGINAL), or a client's
/// packet of a published port's flow, already written to the container
/// (the key reversed is its answer's, REPLY with DNAT: a later fragment's
/// key, from the record its first fragment left). A BPF subprogram (its
/// own stack frame).
#[inline(never)]
fn of_a_flow(w: &Work6, net_id: u32) -> bool {
    // SAFETY: map value pointers, read at once.
    let ours = |e: *mut CtEntry6| unsafe { (*e).net_id } == net_id;
    ct_lookup(&w.key).is_some_and(ours)
        || ct_lookup(&w.key.reversed()).is_some_and(|e| {
            // SAFETY: as above.
            let (dir, flags) = unsafe { ((*e).dir, (*e).flags) };
            ours(e)
                && (dir == ct_dir::ORIGINAL || dir == ct_dir::REPLY && flags & ct_flags::DNAT != 0)
        })
}
