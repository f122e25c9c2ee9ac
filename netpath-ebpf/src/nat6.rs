//! Uplink egress for IPv6: NAT66 masquerade for containers of networks
//! that masquerade (the uplink's global IPv6 address from `NP_UPLINKS6`,
//! ports chosen as for IPv4, host sockets' tuples avoided), tracking
//! without translation for networks that keep their addresses (routed),
//! and the source half of flows started from outside. The host's own
//! packets pass, except a new flow whose tuple a container's translated
//! flow holds: it gets another source port, as for IPv4. A container's
//! ICMPv6 error about a flow is translated like the flow (`icmp6`); one
//! about no flow it has would leak its address and is dropped.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, counter_kind, counter_scope,
    ct::{Tuple, ct_dir, ct_flags, proto, tcp_flags},
    ct6::{CtEntry6, CtKey6},
};

use crate::{
    TCX_NEXT,
    counters::count,
    ct::{ct_create, ct_lookup, ct_remove},
    flow::{apply6, packet_key6, work6},
    frag6,
    icmp6::icmp_error6,
    lookup::{drop, network6_of},
    maps::NP_UPLINKS6,
    nat::{Source, source_of},
    parse::{self, L4, L4Kind},
    parse6::{self, Ip6, Work6, ip6_off, same6},
    rewrite::{Phase, Side, set_addr6},
};

/// Whether a new host flow's first packet carries what replies of a
/// translated flow carry (another flow's REPLY key reversed).
#[inline(always)]
fn held_by_a_flow(ip: &Ip6, l4: &L4, key: &CtKey6) -> bool {
    let first = match ip.proto {
        proto::TCP => l4.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN,
        proto::UDP => true,
        proto::ICMPV6 => l4.kind == L4Kind::Ports && l4.sport_be != 0,
        _ => false,
    };
    // SAFETY: map value pointer, read at once.
    first && ct_lookup(&key.reversed()).is_some_and(|e| unsafe { (*e).dir } == ct_dir::REPLY)
}

/// An IPv6 packet leaving through uplink `ifindex` (the program runs IPv6
/// apart from IPv4, each with its own stack).
#[inline(always)]
pub fn egress(ctx: &TcContext, ifindex: u32) -> i32 {
    if parse::stripped_vlan(ctx).is_some() {
        return TCX_NEXT;
    }
    let Some(w) = work6() else {
        return drop(ctx, 0, DropReason::Malformed);
    };
    if parse6::ipv6(ctx, &mut w.ip).is_err() {
        // A container's packet we cannot parse would leak its address.
        let saddr = ctx.load::<[u8; 16]>(parse::L3 + ip6_off::SADDR);
        return match saddr.ok().and_then(|s| network6_of(&s)) {
            Some(id) => drop(ctx, id, DropReason::Malformed),
            None => TCX_NEXT,
        };
    }
    let src = match source_of(network6_of(&w.ip.saddr)) {
        Ok(s) => s,
        Err(net_id) => return drop(ctx, net_id, DropReason::Internal),
    };
    // SAFETY: a map value, read at once.
    let addr = unsafe { NP_UPLINKS6.get(ifindex) }.copied();
    if w.ip.later_fragment {
        return match frag6::later_fragment_out6(ctx, w) {
            Some(true) => TCX_NEXT,
            Some(false) => drop_from(ctx, src, DropReason::Malformed),
            None => later_fragment(ctx, &w.ip, src, addr),
        };
    }
    let l4 = parse::l4_at(ctx, w.ip.l4, w.ip.proto);
    match (l4, src) {
        (Ok(l4), _) if l4.kind != L4Kind::IcmpError => w.l4 = l4,
        (Ok(l4), _) => {
            w.l4 = l4;
            return match (icmp_error6(ctx, w, Phase::Egress), src) {
                // A container's error we cannot place would leak its address.
                (None, Source::Masquerade(net_id)) => drop(ctx, net_id, DropReason::Malformed),
                _ => TCX_NEXT,
            };
        }
        // A container's packet we cannot parse would leak its address.
        (_, Source::Masquerade(net_id)) => return drop(ctx, net_id, DropReason::Malformed),
        _ => return TCX_NEXT,
    }
    w.key = packet_key6(&w.ip, &w.l4);
    let out = Out { src, addr };
    let mut e: *mut CtEntry6 = core::ptr::null_mut();
    // A stale entry (removed by the partner check) starts over.
    if known(w, &out, &mut e) && apply6(ctx, w, e, Phase::Egress).is_ok() {
        frag6::first_fragment_out6(w);
        return TCX_NEXT;
    }
    match new_flow(ctx, w, &out, &mut e) {
        CREATED => {}
        v => return v,
    }
    if apply6(ctx, w, e, Phase::Egress).is_err() {
        // SAFETY: the entry just created, valid during the program.
        return drop(ctx, unsafe { (*e).net_id }, DropReason::Malformed);
    }
    frag6::first_fragment_out6(w);
    TCX_NEXT
}

/// Drops a packet leaving from `src`, counted on its network if a
/// container's.
#[inline(always)]
fn drop_from(ctx: &TcContext, src: Source, reason: DropReason) -> i32 {
    let net_id = match src {
        Source::Masquerade(id) | Source::Track(id) => id,
        Source::Host => 0,
    };
    drop(ctx, net_id, reason)
}

/// Where a packet leaving comes from, and the uplink's address.
struct Out {
    src: Source,
    addr: Option<[u8; 16]>,
}

/// Whether the packet's flow is known (its entry in `e`). A masquerade
/// flow whose uplink address changed is removed instead, like
/// MASQUERADE's mappings. A BPF subprogram (its own stack frame; the
/// classifier path applies the entry, so the frames of lookup and rewrite
/// never add up).
#[inline(never)]
fn known(w: &Work6, out: &Out, e: &mut *mut CtEntry6) -> bool {
    let Some(found) = ct_lookup(&w.key) else {
        return false;
    };
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags, nat_addr) = unsafe { ((*found).dir, (*found).flags, (*found).nat_addr_be) };
    let masquerade_flow = flags & ct_flags::SNAT != 0 && dir == ct_dir::ORIGINAL;
    let moved = masquerade_flow
        && flags & ct_flags::HOST == 0
        && !out.addr.is_some_and(|a| same6(&a, &nat_addr));
    if moved {
        // SAFETY: as above.
        ct_remove(&unsafe { (*found).peer });
        ct_remove(&w.key);
        return false;
    }
    *e = found;
    true
}

/// What [`new_flow`] returns when it created the flow (its entry in `e`).
/// No verdict has this value.
const CREATED: i32 = i32::MIN;

/// A packet of no known flow: a container's starts one (masqueraded or
/// tracked), [`CREATED`]; the host's passes (its verdict), unless its
/// tuple is a translated flow's. A BPF subprogram (its own stack frame).
#[inline(never)]
fn new_flow(ctx: &TcContext, w: &mut Work6, out: &Out, e: &mut *mut CtEntry6) -> i32 {
    w.translated = w.key;
    let (net_id, flags) = match out.src {
        Source::Host if held_by_a_flow(&w.ip, &w.l4, &w.key) => {
            (0, ct_flags::SNAT | ct_flags::HOST)
        }
        Source::Host => return TCX_NEXT,
        Source::Track(net_id) => (net_id, 0),
        Source::Masquerade(net_id) => {
            let Some(a) = out.addr else {
                return drop(ctx, net_id, DropReason::NatNoAddress);
            };
            w.translated.saddr = a;
            (net_id, ct_flags::SNAT)
        }
    };
    let vary = flags & ct_flags::SNAT != 0;
    match ct_create(
        ctx,
        &w.key,
        &w.translated,
        vary,
        flags,
        net_id,
        w.l4.tcp_flags,
    ) {
        Ok(created) => {
            count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
            *e = created;
            CREATED
        }
        Err(reason) => drop(ctx, net_id, reason),
    }
}

/// A later fragment (no ports) of no recorded datagram: a masquerading
/// network's gets the uplink's address, the same for each of its flows
/// through this uplink.
#[inline(always)]
fn later_fragment(ctx: &TcContext, ip: &Ip6, src: Source, addr: Option<[u8; 16]>) -> i32 {
    let Source::Masquerade(net_id) = src else {
        return TCX_NEXT;
    };
    let Some(a) = addr else {
        return drop(ctx, net_id, DropReason::NatNoAddress);
    };
    if set_addr6(ctx, None, Side::Src, &ip.saddr, &a).is_err() {
        return drop(ctx, net_id, DropReason::Malformed);
    }
    count(
        counter_scope::NETWORK,
        net_id,
        counter_kind::NET_SNAT,
        ctx.len(),
    );
    TCX_NEXT
}
