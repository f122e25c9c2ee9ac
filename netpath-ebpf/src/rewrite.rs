//! The L3/L4 rewrite primitives: addresses and ports written with
//! `bpf_skb_store_bytes` and the kernel's checksum helpers, which keep
//! GSO/TSO packets, partial checksums (the pseudo-header sum) and UDP's
//! "no checksum" zero right.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use netpath_common::{
    ct::{CtKey4, Tuple, proto},
    ct6::CtKey6,
};

use crate::{
    parse::{Ip4, L3, L4, L4Kind, ip4_off},
    parse6::{Ip6, ip6_off, same6},
};

/// Which address (and port) of a packet a rewrite writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Where a rewrite happens. Destinations are rewritten at ingress (before
/// the host routes the packet), sources at egress (after): a packet never
/// enters the host's routing with one of the host's own addresses as its
/// source, which the kernel would drop as a martian.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ingress,
    Egress,
}

/// `BPF_F_MARK_MANGLED_0` for UDP: a zero checksum means "none" and stays zero.
#[inline(always)]
const fn mangled0(l4: &L4) -> u64 {
    if l4.udp {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// Writes the packet's source or destination address, with the IPv4
/// header checksum and, when `l4` has one, the transport checksum over the
/// pseudo-header.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    l4: Option<&L4>,
    side: Side,
    old: u32,
    new: u32,
) -> Result<(), ()> {
    let off = match side {
        Side::Src => L3 + ip4_off::SADDR,
        Side::Dst => L3 + ip4_off::DADDR,
    };
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l3_csum_replace(L3 + ip4_off::CHECK, u64::from(old), u64::from(new), 4)
        .map_err(|_| ())?;
    if let Some(l4) = l4
        && l4.pseudo
    {
        ctx.l4_csum_replace(
            l4.csum_off,
            u64::from(old),
            u64::from(new),
            4 | mangled0(l4) | u64::from(BPF_F_PSEUDO_HDR),
        )
        .map_err(|_| ())?;
    }
    Ok(())
}

/// Writes the packet's source or destination port (ICMP echo: its identifier).
#[inline(always)]
pub fn set_port(
    ctx: &TcContext,
    (l4_off, proto_nr): (usize, u8),
    l4: &L4,
    side: Side,
    old: u16,
    new: u16,
) -> Result<(), ()> {
    // SCTP's CRC32c covers its ports: a changed port would need the whole
    // packet's CRC recomputed. Mappings and NAT keep SCTP ports, so this
    // is only reached by a tuple that says otherwise: refuse it.
    if proto_nr == proto::SCTP {
        return if old == new { Ok(()) } else { Err(()) };
    }
    let off = match side {
        Side::Src => l4.sport_off(l4_off, proto_nr),
        Side::Dst => l4.dport_off(l4_off, proto_nr),
    };
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l4_csum_replace(
        l4.csum_off,
        u64::from(old),
        u64::from(new),
        2 | mangled0(l4),
    )
    .map_err(|_| ())
}

/// Rewrites the packet's destination (ingress) or source (egress) to what
/// the tuple `to` has: the address always, the port when the packet carries
/// a transport header (`l4`). Returns whether anything changed.
#[inline(always)]
pub fn translate4(
    ctx: &TcContext,
    ip: &Ip4,
    l4: Option<&L4>,
    to: &CtKey4,
    phase: Phase,
) -> Result<bool, ()> {
    let (side, old_addr, new_addr) = match phase {
        Phase::Ingress => (Side::Dst, ip.daddr, to.daddr_be),
        Phase::Egress => (Side::Src, ip.saddr, to.saddr_be),
    };
    let mut changed = false;
    if old_addr != new_addr {
        set_addr(ctx, l4, side, old_addr, new_addr)?;
        changed = true;
    }
    let ports = translate_port(ctx, (ip.l4(), ip.proto), l4, to, phase)?;
    Ok(changed || ports)
}

/// The port half of a translation (either family): the destination port
/// (ingress) or source port (egress) becomes `to`'s, when the packet
/// carries ports. Returns whether it changed.
#[inline(always)]
fn translate_port<K: Tuple>(
    ctx: &TcContext,
    at: (usize, u8),
    l4: Option<&L4>,
    to: &K,
    phase: Phase,
) -> Result<bool, ()> {
    let Some(l4) = l4.filter(|l4| l4.kind == L4Kind::Ports) else {
        return Ok(false);
    };
    let (side, old, new) = match phase {
        Phase::Ingress => (Side::Dst, l4.dport_be, to.dport_be()),
        Phase::Egress => (Side::Src, l4.sport_be, to.sport_be()),
    };
    // An echo carries its identifier once (request: as sport, reply: as
    // dport); the other "port" is 0 on both sides.
    if old == new {
        return Ok(false);
    }
    set_port(ctx, at, l4, side, old, new)?;
    Ok(true)
}

/// Writes an IPv6 packet's source or destination address, with the
/// transport checksum over the pseudo-header when `l4` has one (IPv6 has
/// no header checksum; ICMPv6's covers the pseudo-header too).
#[inline(always)]
pub fn set_addr6(
    ctx: &TcContext,
    l4: Option<&L4>,
    side: Side,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<(), ()> {
    let off = match side {
        Side::Src => L3 + ip6_off::SADDR,
        Side::Dst => L3 + ip6_off::DADDR,
    };
    match l4 {
        Some(l4) if l4.pseudo => {
            let flags = mangled0(l4) | u64::from(BPF_F_PSEUDO_HDR);
            replace6(ctx, off, old, new, l4.csum_off, flags)
        }
        _ => ctx.store(off, new, 0).map_err(|_| ()),
    }
}

/// Writes 16 bytes at `off` (an address), `old` before, and updates the
/// checksum at `csum_off` with `flags` (`BPF_F_PSEUDO_HDR` when the
/// address is in the pseudo-header, 0 when it is in the checksummed data).
#[inline(always)]
pub fn replace6(
    ctx: &TcContext,
    off: usize,
    old: &[u8; 16],
    new: &[u8; 16],
    csum_off: usize,
    flags: u64,
) -> Result<(), ()> {
    ctx.store(off, new, 0).map_err(|_| ())?;
    // SAFETY: both are 16 readable bytes (stack or map value) the helper
    // only reads; no copy, so no stack for it.
    let diff = unsafe {
        bpf_csum_diff(
            old.as_ptr().cast_mut().cast(),
            16,
            new.as_ptr().cast_mut().cast(),
            16,
            0,
        )
    };
    if diff < 0 {
        return Err(());
    }
    ctx.l4_csum_replace(csum_off, 0, diff as u64, flags)
        .map_err(|_| ())
}

/// [`translate4`] for IPv6: the destination (ingress) or source (egress)
/// address and port become what `to` has. A BPF subprogram (its own
/// stack frame).
#[inline(never)]
pub fn translate6(
    ctx: &TcContext,
    ip: &Ip6,
    l4: Option<&L4>,
    to: &CtKey6,
    phase: Phase,
) -> Result<bool, ()> {
    let (side, old_addr, new_addr) = match phase {
        Phase::Ingress => (Side::Dst, &ip.daddr, &to.daddr),
        Phase::Egress => (Side::Src, &ip.saddr, &to.saddr),
    };
    let mut changed = false;
    if !same6(old_addr, new_addr) {
        set_addr6(ctx, l4, side, old_addr, new_addr)?;
        changed = true;
    }
    let ports = translate_port(ctx, (ip.l4, ip.proto), l4, to, phase)?;
    Ok(changed || ports)
}
