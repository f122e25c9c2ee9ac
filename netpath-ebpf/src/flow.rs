//! A packet of a known conntrack flow: its bookkeeping (counters, TCP
//! state, the partner check) and its rewrite. One rule does every
//! rewrite: a flow entry's packet leaves as the entry's partner key
//! reversed (`ORIGINAL C:c->R:r` leaves as the reverse of `REPLY
//! R:r->U:n`, i.e. `U:n->R:r`).

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use netpath_common::{
    counter_kind, counter_scope,
    ct::{CtEntry, CtEntry4, CtKey4, Tuple, ct_dir, ct_flags, proto, tcp_flags},
    ct6::{CtEntry6, CtKey6},
};

use crate::{
    counters::count,
    ct::{Table, ct_keep_partner, ct_lookup, ct_tcp_update, ct_touch, now},
    maps::NP_WORK6,
    parse::{self, Ip4, L4},
    parse6::{Ip6, Work6},
    publish::count_published,
    publish6::count_published6,
    rewrite::{Phase, translate4, translate6},
};

/// The tuple of a packet (ports only when it has them).
#[inline(always)]
pub fn packet_key(ip: &Ip4, l4: &L4) -> CtKey4 {
    CtKey4::new(ip.saddr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto)
}

/// The tuple of an IPv6 packet.
#[inline(always)]
pub fn packet_key6(ip: &Ip6, l4: &L4) -> CtKey6 {
    CtKey6::new(ip.saddr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto)
}

/// Fills `w.l4` and `w.key` when the packet whose IPv6 header is in `w.ip`
/// has a tuple of its own: not a later fragment, not an ICMPv6 error, an
/// upper-layer header that parses. What the published-port hooks of ports
/// and bridges look up by.
#[inline(always)]
pub fn own_tuple6(ctx: &TcContext, w: &mut Work6) -> bool {
    if w.ip.later_fragment {
        return false;
    }
    match crate::parse::l4_at(ctx, w.ip.l4, w.ip.proto) {
        Ok(l4) if l4.kind != crate::parse::L4Kind::IcmpError => w.l4 = l4,
        _ => return false,
    }
    w.key = packet_key6(&w.ip, &w.l4);
    true
}

/// [`own_tuple6`], or for a later fragment the tuple its first fragment
/// recorded (`frag6::flow_key`): what a port judges a packet of a
/// published port's flow by.
#[inline(always)]
pub fn flow_tuple6(ctx: &TcContext, w: &mut Work6) -> bool {
    if w.ip.later_fragment {
        crate::frag6::flow_key(w).is_some()
    } else {
        own_tuple6(ctx, w)
    }
}

/// Per-packet conntrack bookkeeping, once per packet (at its first hook):
/// counters, TCP state, the partner check. `Err` when the entry turned out
/// stale (its partner's key now belongs to another flow; it was removed).
#[inline(always)]
fn account<K: Table>(
    proto_nr: u8,
    l4: Option<&L4>,
    key: &K,
    e: *mut CtEntry<K>,
    len: u32,
) -> Result<(), ()> {
    let t = now();
    let refreshed = ct_touch(e, len, t);
    if refreshed && !ct_keep_partner(key, e) {
        return Err(());
    }
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags, peer) = unsafe { ((*e).dir, (*e).flags, (*e).peer) };
    let tcp = match l4 {
        Some(l4) if proto_nr == proto::TCP => l4.tcp_flags,
        _ => 0,
    };
    if dir == ct_dir::ORIGINAL {
        if proto_nr == proto::TCP && l4.is_some() {
            ct_tcp_update(e, false, tcp);
        }
    } else if dir == ct_dir::REPLY
        && (flags & ct_flags::SEEN_REPLY == 0
            || tcp & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0)
        && let Some(o) = ct_lookup(&peer)
    {
        // SAFETY: as above.
        unsafe {
            if (*o).flags & ct_flags::SEEN_REPLY == 0 {
                (*o).flags |= ct_flags::SEEN_REPLY;
            }
            if (*e).flags & ct_flags::SEEN_REPLY == 0 {
                (*e).flags |= ct_flags::SEEN_REPLY;
            }
        }
        if proto_nr == proto::TCP && l4.is_some() {
            ct_tcp_update(o, true, tcp);
        }
    }
    Ok(())
}

/// Whether the hook of `phase` keeps the books for a packet of entry
/// direction `dir` (every packet of a flow passes it once): ingress for
/// the first direction of flows started towards a container, egress for
/// the first direction of flows a container started (and a hairpin's
/// answer at ingress, see below).
#[inline(always)]
fn translating(dir: u8, flags: u32, phase: Phase) -> bool {
    let inbound = ct_flags::inbound(flags);
    let hairpin = ct_flags::DNAT | ct_flags::SNAT;
    match dir {
        ct_dir::ORIGINAL => inbound == (phase == Phase::Ingress),
        // A container reaching its own published port: its answer matches
        // the REPLY entry only where it goes up to the host (the rewrite
        // there makes it the half-way `MID` tuple its port's egress finds),
        // so that is where it is booked, or the flow never sees a reply.
        ct_dir::REPLY if flags & hairpin == hairpin => phase == Phase::Ingress,
        ct_dir::REPLY => inbound == (phase == Phase::Egress),
        _ => false,
    }
}

/// Rewrites a packet (a first fragment or a whole datagram, with its
/// transport header) of flow entry `e`, which its tuple found, for
/// `phase`: it leaves as the entry's partner key reversed. Counts what was
/// translated. `Err`: a stale entry (removed) or a rewrite that failed.
#[inline(always)]
pub fn apply4(ctx: &TcContext, e: *mut CtEntry4, phase: Phase) -> Result<(), ()> {
    if netpath_apply4(ctx.skb.skb, e, phase as u32) == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// [`apply4`] as a global function, verified once on its own: inline, it
/// was walked again for every way its five callers (ports, uplinks, both
/// directions) reach it, about half of what the port and uplink programs
/// cost the verifier. The header and the tuple are parsed again here (a
/// global function takes no pointer with its bounds); the packet is the
/// caller's, unchanged. 0, or -1 for `Err`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_apply4(skb: *mut __sk_buff, e: *mut CtEntry4, phase: u32) -> i32 {
    let ctx = TcContext::new(skb);
    if e.is_null() {
        return -1;
    }
    let Some(ip) = parse::ipv4(&ctx) else {
        return -1;
    };
    let Ok(l4) = parse::l4(&ctx, &ip) else {
        return -1;
    };
    let key = packet_key(&ip, &l4);
    let phase = if phase == Phase::Ingress as u32 {
        Phase::Ingress
    } else {
        Phase::Egress
    };
    match rewrite4(&ctx, &ip, Some(&l4), &key, e, phase) {
        Ok(()) => 0,
        Err(()) => -1,
    }
}

#[inline(always)]
fn rewrite4(
    ctx: &TcContext,
    ip: &Ip4,
    l4: Option<&L4>,
    key: &CtKey4,
    e: *mut CtEntry4,
    phase: Phase,
) -> Result<(), ()> {
    let len = ctx.len();
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags, peer, net_id) = unsafe { ((*e).dir, (*e).flags, (*e).peer, (*e).net_id) };
    if translating(dir, flags, phase) {
        account(ip.proto, l4, key, e, len)?;
    }
    let to = peer.reversed();
    if !translate4(ctx, ip, l4, &to, phase)? {
        return Ok(());
    }
    let dnat = flags & ct_flags::DNAT != 0;
    let kind = match (phase, dir) {
        (Phase::Ingress, ct_dir::ORIGINAL) if dnat => {
            count_published(
                key.daddr_be,
                key.dport_be,
                key.proto,
                counter_kind::PUB_IN,
                len,
            );
            counter_kind::NET_DNAT
        }
        (Phase::Egress, ct_dir::REPLY) if dnat => {
            count_published(
                to.saddr_be,
                to.sport_be,
                to.proto,
                counter_kind::PUB_OUT,
                len,
            );
            counter_kind::NET_REV_DNAT
        }
        (Phase::Egress, ct_dir::ORIGINAL) => counter_kind::NET_SNAT,
        (Phase::Ingress, ct_dir::REPLY) => counter_kind::NET_REV_SNAT,
        // The source half of a flow that rewrites both ends.
        _ => counter_kind::NET_SNAT,
    };
    count(counter_scope::NETWORK, net_id, kind, len);
    Ok(())
}

/// This CPU's [`Work6`].
#[inline(always)]
pub fn work6() -> Option<&'static mut Work6> {
    // SAFETY: this CPU's slot, used by one program run at a time.
    NP_WORK6.get_ptr_mut(0).map(|w| unsafe { &mut *w })
}

/// [`apply4`] for IPv6 flows whose tuple is `w.key`. A BPF subprogram
/// (its own stack frame).
#[inline(never)]
pub fn apply6(ctx: &TcContext, w: &Work6, e: *mut CtEntry6, phase: Phase) -> Result<(), ()> {
    let len = ctx.len();
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags, net_id) = unsafe { ((*e).dir, (*e).flags, (*e).net_id) };
    if translating(dir, flags, phase) {
        account(w.ip.proto, Some(&w.l4), &w.key, e, len)?;
    }
    // SAFETY: as above.
    let to = unsafe { (*e).peer }.reversed();
    if !translate6(ctx, &w.ip, Some(&w.l4), &to, phase)? {
        return Ok(());
    }
    let dnat = flags & ct_flags::DNAT != 0;
    let kind = match (phase, dir) {
        (Phase::Ingress, ct_dir::ORIGINAL) if dnat => {
            count_published6(&w.key, true, counter_kind::PUB_IN, len);
            counter_kind::NET_DNAT
        }
        (Phase::Egress, ct_dir::REPLY) if dnat => {
            count_published6(&to, false, counter_kind::PUB_OUT, len);
            counter_kind::NET_REV_DNAT
        }
        (Phase::Ingress, ct_dir::REPLY) => counter_kind::NET_REV_SNAT,
        _ => counter_kind::NET_SNAT,
    };
    count(counter_scope::NETWORK, net_id, kind, len);
    Ok(())
}
