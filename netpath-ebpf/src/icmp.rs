//! ICMP errors about a flow (destination unreachable, time exceeded,
//! parameter problem): found through the packet they quote, and
//! translated like the flow's own packets, quoted header included, so
//! path-MTU discovery and traceroute work through the NAT.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    counter_kind, counter_scope, csum,
    ct::{CtKey4, ct_dir, ct_flags, proto},
};

use crate::{
    counters::count,
    ct::ct_lookup,
    parse::{self, Ip4, ip4_off},
    rewrite::{Phase, Side, set_addr},
};

/// An ICMP error about a translated flow, found through the packet it
/// quotes: the quoted packet went the other way, so its reverse is the key
/// of the direction the error travels. At ingress the outer destination and
/// the quoted source are translated, at egress the outer source and the
/// quoted destination (each like the flow's own packets); the quoted IPv4
/// header's checksum and the ICMP checksum follow. Returns whether the flow
/// is a published port's, or `None` when the error is about no known flow.
#[inline(always)]
pub fn icmp_error4(ctx: &TcContext, ip: &Ip4, phase: Phase) -> Option<bool> {
    let icmp_off = ip.l4();
    let inner_off = icmp_off + 8;
    let inner = parse::ipv4_at(ctx, inner_off)?;
    if inner.is_later_fragment() {
        return None;
    }
    // An error goes back to whoever sent the packet it quotes, and one
    // leaving for the flow's far end comes from the flow's own endpoint:
    // anything else is not this flow's error, whatever it quotes.
    if ip.daddr != inner.saddr || (phase == Phase::Egress && ip.saddr != inner.daddr) {
        return None;
    }
    let inner_l4 = inner_off + inner.hlen;
    let (isport, idport) = parse::quoted_ports(ctx, &inner, inner_l4)?;
    let quoted = CtKey4::new(inner.saddr, inner.daddr, isport, idport, inner.proto);
    let key = quoted.reversed();
    let e = ct_lookup(&key)?;
    // SAFETY: map value pointer, valid during the program; fields read at once.
    let (dir, flags, net_id, want) = unsafe { ((*e).dir, (*e).flags, (*e).net_id, (*e).peer) };
    let to = want.reversed();
    // MID entries: the quoted packet's untranslated self is not their peer.
    if dir == ct_dir::MID {
        return Some(flags & ct_flags::DNAT != 0);
    }
    let icmp_csum = icmp_off + 2;
    // The outer address on this phase's side, when it is the flow's endpoint.
    let (outer_side, outer_old, outer_key, outer_new) = match phase {
        Phase::Ingress => (Side::Dst, ip.daddr, key.daddr_be, to.daddr_be),
        Phase::Egress => (Side::Src, ip.saddr, key.saddr_be, to.saddr_be),
    };
    if outer_old == outer_key && outer_new != outer_old {
        set_addr(ctx, None, outer_side, outer_old, outer_new).ok()?;
    }
    // The quoted packet travelled the other way: its source side is this
    // phase's destination side, and the other way round.
    let (addr_off, old_addr, new_addr, old_port, new_port) = match phase {
        Phase::Ingress => (
            inner_off + ip4_off::SADDR,
            quoted.saddr_be,
            want.saddr_be,
            quoted.sport_be,
            want.sport_be,
        ),
        Phase::Egress => (
            inner_off + ip4_off::DADDR,
            quoted.daddr_be,
            want.daddr_be,
            quoted.dport_be,
            want.dport_be,
        ),
    };
    if old_addr != new_addr {
        let old_check: u16 = ctx.load(inner_off + ip4_off::CHECK).ok()?;
        let check = csum::replace4(old_check, old_addr, new_addr);
        ctx.store(addr_off, &new_addr, 0).ok()?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_addr), u64::from(new_addr), 4)
            .ok()?;
        ctx.store(inner_off + ip4_off::CHECK, &check, 0).ok()?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_check), u64::from(check), 2)
            .ok()?;
    }
    if matches!(inner.proto, proto::TCP | proto::UDP | proto::ICMP) {
        let echo = inner.proto == proto::ICMP;
        quoted_port(ctx, icmp_csum, inner_l4, echo, phase, old_port, new_port)?;
    }
    translated(ctx, net_id, phase);
    Some(flags & ct_flags::DNAT != 0)
}

/// Writes the port of a quoted packet (its source port at ingress, its
/// destination port at egress; an echo's identifier) with the error's
/// checksum, for either family.
#[inline(always)]
pub fn quoted_port(
    ctx: &TcContext,
    icmp_csum: usize,
    inner_l4: usize,
    echo: bool,
    phase: Phase,
    old_port: u16,
    new_port: u16,
) -> Option<()> {
    // An echo carries its identifier once, in sport (request) or dport
    // (reply): the other is 0 and stays so.
    if old_port == new_port || echo && old_port == 0 {
        return Some(());
    }
    let off = match (echo, phase) {
        (true, _) => inner_l4 + 4,
        (false, Phase::Ingress) => inner_l4,
        (false, Phase::Egress) => inner_l4 + 2,
    };
    ctx.store(off, &new_port, 0).ok()?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_port), u64::from(new_port), 2)
        .ok()
}

/// Counts a translated error as its flow's packets are counted.
#[inline(always)]
pub fn translated(ctx: &TcContext, net_id: u32, phase: Phase) {
    let kind = match phase {
        Phase::Ingress => counter_kind::NET_REV_SNAT,
        Phase::Egress => counter_kind::NET_SNAT,
    };
    count(counter_scope::NETWORK, net_id, kind, ctx.len());
}
