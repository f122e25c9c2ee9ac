//! ICMPv6 errors about a flow (destination unreachable, packet too big,
//! time exceeded, parameter problem), as `icmp` does for IPv4: found
//! through the packet they quote and translated like the flow's own
//! packets, quoted header included, so path-MTU discovery and traceroute
//! work through NAT66. IPv6 has no header checksum; the ICMPv6 checksum
//! covers the pseudo-header (the outer addresses) and the whole message
//! (the quoted addresses and ports).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    ct::{ct_dir, ct_flags, proto},
    ct6::CtEntry6,
};

use crate::{
    ct::ct_lookup,
    icmp::{quoted_port, translated},
    parse::{self, L4Kind},
    parse6::{Work6, ip6_off, nexthdr, same6},
    rewrite::{Phase, Side, replace6, set_addr6},
};

/// The quoted packet starts after the error's 8-byte header.
const QUOTED: usize = 8;
/// Extension headers followed in a quoted packet: what a flow's packets
/// carry (a fragment header, options), not a long chain.
const QUOTED_EXT: usize = 3;

/// Reads the packet an ICMPv6 error quotes into `w.key` (its tuple), when
/// it is a TCP, UDP, SCTP or ICMPv6 echo packet (or the first fragment of
/// one) and the error goes back to its sender; returns the offset of its
/// transport header.
#[inline(always)]
fn quoted(ctx: &TcContext, w: &mut Work6, phase: Phase) -> Option<usize> {
    let inner = w.ip.l4 + QUOTED;
    let head: [u8; 8] = ctx.load(inner).ok()?;
    if head[0] >> 4 != 6 {
        return None;
    }
    let mut next = head[6];
    let mut off = inner + 40;
    for _ in 0..QUOTED_EXT {
        let len = match next {
            nexthdr::HOP | nexthdr::DSTOPTS => {
                let h: [u8; 2] = ctx.load(off).ok()?;
                next = h[0];
                (usize::from(h[1]) + 1) * 8
            }
            nexthdr::FRAGMENT => {
                let h: [u8; 4] = ctx.load(off).ok()?;
                // Only a first fragment quotes the transport header.
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    return None;
                }
                next = h[0];
                8
            }
            _ => break,
        };
        off += len;
    }
    if !matches!(
        next,
        proto::TCP | proto::UDP | proto::SCTP | nexthdr::ICMPV6
    ) {
        return None;
    }
    w.key.saddr = ctx.load(inner + ip6_off::SADDR).ok()?;
    w.key.daddr = ctx.load(inner + ip6_off::DADDR).ok()?;
    // An error goes back to whoever sent the packet it quotes, and one
    // leaving for the flow's far end comes from the flow's own endpoint.
    if !same6(&w.ip.daddr, &w.key.saddr)
        || (phase == Phase::Egress && !same6(&w.ip.saddr, &w.key.daddr))
    {
        return None;
    }
    let l4 = parse::l4_at(ctx, off, next).ok()?;
    if l4.kind == L4Kind::IcmpError {
        return None;
    }
    w.key.sport_be = l4.sport_be;
    w.key.dport_be = l4.dport_be;
    w.key.proto = next;
    w.key._pad = [0; 7];
    Some(off)
}

/// An ICMPv6 error (`w.ip`, `w.l4` parsed) about a flow: translated like
/// the flow's packets (at ingress the outer destination and the quoted
/// source, at egress the outer source and the quoted destination). Returns
/// whether the flow is a published port's, or `None` when the error is
/// about no known flow. `w.key` and `w.translated` are used as room. A
/// BPF subprogram (its own stack frame).
#[inline(never)]
pub fn icmp_error6(ctx: &TcContext, w: &mut Work6, phase: Phase) -> Option<bool> {
    let inner_l4 = quoted(ctx, w, phase)?;
    // The quoted packet went the other way: its reverse is the key of the
    // direction the error travels (reversed in place: the quoted source is
    // `w.key.daddr` from here on, its source port `w.key.dport_be`).
    let k = &mut w.key;
    core::mem::swap(&mut k.saddr, &mut k.daddr);
    core::mem::swap(&mut k.sport_be, &mut k.dport_be);
    let e: *mut CtEntry6 = ct_lookup(&w.key)?;
    // SAFETY: map value pointer, valid during the program; read at once.
    let (dir, flags, net_id) = unsafe { ((*e).dir, (*e).flags, (*e).net_id) };
    let dnat = flags & ct_flags::DNAT != 0;
    // MID entries: the quoted packet's untranslated self is not their peer.
    if dir == ct_dir::MID {
        return Some(dnat);
    }
    // What the flow's packets become on this side (`want`); this error's
    // outer addresses become `want` reversed.
    // SAFETY: as above.
    w.translated = unsafe { (*e).peer };
    let (w, icmp_csum) = (&*w, w.ip.l4 + 2);
    let (want, key) = (&w.translated, &w.key);
    // The outer address on this phase's side, when it is the flow's
    // endpoint; then the quoted packet's, on the other side (its source at
    // ingress, its destination at egress).
    let (outer_side, outer_old, outer_key, new_addr, quoted_off, quoted_addr, old_port, new_port) =
        match phase {
            Phase::Ingress => (
                Side::Dst,
                &w.ip.daddr,
                &key.daddr,
                &want.saddr,
                ip6_off::SADDR,
                &key.daddr,
                key.dport_be,
                want.sport_be,
            ),
            Phase::Egress => (
                Side::Src,
                &w.ip.saddr,
                &key.saddr,
                &want.daddr,
                ip6_off::DADDR,
                &key.saddr,
                key.sport_be,
                want.dport_be,
            ),
        };
    if same6(outer_old, outer_key) && !same6(new_addr, outer_old) {
        set_addr6(ctx, Some(&w.l4), outer_side, outer_old, new_addr).ok()?;
    }
    if !same6(quoted_addr, new_addr) {
        let off = w.ip.l4 + QUOTED + quoted_off;
        replace6(ctx, off, quoted_addr, new_addr, icmp_csum, 0).ok()?;
    }
    let echo = key.proto == nexthdr::ICMPV6;
    quoted_port(ctx, icmp_csum, inner_l4, echo, phase, old_port, new_port)?;
    translated(ctx, net_id, phase);
    Some(dnat)
}

/// Whether an ICMPv6 error from outside about to be delivered to a
/// container of network `net_id` quotes a packet of one of its flows (as
/// the uplink wrote it back): the container sent the quoted packet, so it
/// is a tracked flow's key as it stands.
#[inline(never)]
pub fn about_a_flow(ctx: &TcContext, w: &mut Work6, net_id: u32) -> bool {
    if quoted(ctx, w, Phase::Ingress).is_none() {
        return false;
    }
    // SAFETY: map value pointer, read at once.
    ct_lookup(&w.key).is_some_and(|e: *mut CtEntry6| unsafe { (*e).net_id } == net_id)
}
