//! Masquerade (`-t nat -A POSTROUTING -s SUBNET ! -o BRIDGE -j MASQUERADE`):
//! container packets leaving through an uplink get the uplink's address
//! (`snat4_egress`), and what comes back — replies, later fragments and ICMP
//! errors about the flow — is translated back (`rev_snat4_ingress`).
//!
//! Rewrites go through `bpf_skb_store_bytes` and the kernel's checksum
//! helpers, which keep GSO/TSO packets, partial checksums
//! (`CHECKSUM_PARTIAL`, the pseudo-header sum) and UDP's "no checksum" zero
//! right.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    programs::TcContext,
};
use netpath_common::{
    DropReason, IfaceInfo, counter_kind, counter_scope, csum,
    ct::{CtEntry4, CtKey4, FragKey4, FragPorts, ct_dir, ct_flags, proto, tcp_flags},
    net_flags,
};

use crate::{
    TCX_NEXT,
    counters::count,
    ct::{ct_create_snat4, ct_keep_partner4, ct_lookup4, ct_tcp_update4, ct_touch4, now},
    maps::{NP_FRAG4, NP_NETWORKS, NP_SUBNETS4},
    parse::{self, Ip4, L3, L4, L4Kind, ip4_off},
};

/// Which address (and port) of a packet a translation writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

impl Side {
    const fn addr_off(self, ip_off: usize) -> usize {
        match self {
            Self::Src => ip_off + ip4_off::SADDR,
            Self::Dst => ip_off + ip4_off::DADDR,
        }
    }
}

/// Counts a drop for the network and returns the verdict.
#[inline(always)]
fn drop(net_id: u32, reason: DropReason, len: u32) -> i32 {
    count(counter_scope::NETWORK, net_id, reason.counter_kind(), len);
    TC_ACT_SHOT
}

/// The managed network `addr` belongs to.
#[inline(always)]
pub fn network_of(addr_be: u32) -> Option<u32> {
    let key = aya_ebpf::maps::lpm_trie::Key::new(32, addr_be);
    NP_SUBNETS4.get(&key).copied()
}

/// Rewrites one address of the outer header and, when the packet carries a
/// transport header, the port next to it, keeping every checksum right.
#[inline(always)]
fn rewrite4(
    ctx: &TcContext,
    ip: &Ip4,
    l4: Option<&L4>,
    side: Side,
    addr: u32,
    port_be: u16,
) -> Result<(), ()> {
    let old_addr = match side {
        Side::Src => ip.saddr,
        Side::Dst => ip.daddr,
    };
    let l4_csum_flags = |size: u64, l4: &L4| {
        size | if l4.udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    };
    if old_addr != addr {
        ctx.store(side.addr_off(L3), &addr, 0).map_err(|_| ())?;
        ctx.l3_csum_replace(L3 + ip4_off::CHECK, u64::from(old_addr), u64::from(addr), 4)
            .map_err(|_| ())?;
        if let Some(l4) = l4
            && l4.pseudo
        {
            ctx.l4_csum_replace(
                l4.csum_off,
                u64::from(old_addr),
                u64::from(addr),
                l4_csum_flags(4, l4) | u64::from(BPF_F_PSEUDO_HDR),
            )
            .map_err(|_| ())?;
        }
    }
    let Some(l4) = l4 else { return Ok(()) };
    if l4.kind != L4Kind::Ports {
        return Ok(());
    }
    let (old_port, off) = match side {
        Side::Src => (l4.sport_be, l4.sport_off(ip.l4(), ip.proto)),
        Side::Dst => (l4.dport_be, l4.dport_off(ip.l4(), ip.proto)),
    };
    if old_port != port_be {
        ctx.store(off, &port_be, 0).map_err(|_| ())?;
        ctx.l4_csum_replace(
            l4.csum_off,
            u64::from(old_port),
            u64::from(port_be),
            l4_csum_flags(2, l4),
        )
        .map_err(|_| ())?;
    }
    Ok(())
}

/// Uplink egress: masquerade packets from managed subnets.
#[inline(always)]
pub fn snat4_egress(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    if !parse::is_ipv4(ctx) {
        return TCX_NEXT;
    }
    let Some(ip) = parse::ipv4_at(ctx, L3) else {
        return TCX_NEXT;
    };
    let Some(net_id) = network_of(ip.saddr) else {
        return TCX_NEXT;
    };
    // SAFETY: the value is Copy and read at once.
    let Some(net) = (unsafe { NP_NETWORKS.get(&net_id) }).copied() else {
        return TCX_NEXT;
    };
    if net.flags & (net_flags::NO_MASQUERADE | net_flags::INTERNAL) != 0 {
        return TCX_NEXT;
    }
    let len = ctx.len();
    let addr = iface.ipv4_be;
    if addr == 0 {
        return drop(net_id, DropReason::NatNoAddress, len);
    }
    if ip.is_later_fragment() {
        // No ports here: the source address is all there is, and it is the
        // same for every flow of this network leaving through this uplink.
        if rewrite4(ctx, &ip, None, Side::Src, addr, 0).is_err() {
            return drop(net_id, DropReason::Malformed, len);
        }
        count(counter_scope::NETWORK, net_id, counter_kind::NET_SNAT, len);
        return TCX_NEXT;
    }
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return drop(net_id, DropReason::Malformed, len);
    };
    if l4.kind == L4Kind::IcmpError {
        return icmp_error4(ctx, &ip, Side::Src, net_id, len);
    }
    let orig = CtKey4::new(ip.saddr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto);
    let t = now();
    let mut entry = None;
    if let Some(e) = ct_lookup4(&orig) {
        // SAFETY: map value pointer, valid during the program.
        let (dir, nat_addr) = unsafe { ((*e).dir, (*e).nat_addr_be) };
        if dir == ct_dir::ORIGINAL && nat_addr == addr {
            if !ct_touch4(e, len, t) || ct_keep_partner4(&orig, e) {
                entry = Some(e);
            }
        } else if dir == ct_dir::ORIGINAL {
            // The uplink's address changed (or the route moved to another
            // uplink): like MASQUERADE, the old mapping is gone.
            // SAFETY: as above.
            let peer = unsafe { (*e).peer };
            let _ = crate::maps::NP_CT4.remove(&peer);
            let _ = crate::maps::NP_CT4.remove(&orig);
        }
    }
    let e = match entry {
        Some(e) => e,
        None => match ct_create_snat4(&orig, addr, net_id, t) {
            Ok(e) => {
                count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
                ct_touch4(e, len, t);
                e
            }
            Err(reason) => return drop(net_id, reason, len),
        },
    };
    if ip.proto == proto::TCP {
        ct_tcp_update4(e, false, l4.tcp_flags);
    }
    // SAFETY: as above.
    let (nat_addr, nat_port) = unsafe { ((*e).nat_addr_be, (*e).nat_port_be) };
    if rewrite4(ctx, &ip, Some(&l4), Side::Src, nat_addr, nat_port).is_err() {
        return drop(net_id, DropReason::Malformed, len);
    }
    count(counter_scope::NETWORK, net_id, counter_kind::NET_SNAT, len);
    TCX_NEXT
}

/// Uplink ingress: replies to masqueraded flows go back to the container.
/// Anything else (the host's own traffic) passes untouched.
#[inline(always)]
pub fn rev_snat4_ingress(ctx: &TcContext) -> i32 {
    if !parse::is_ipv4(ctx) {
        return TCX_NEXT;
    }
    let Some(ip) = parse::ipv4_at(ctx, L3) else {
        return TCX_NEXT;
    };
    let len = ctx.len();
    let frag_key = FragKey4 {
        saddr_be: ip.saddr,
        daddr_be: ip.daddr,
        id_be: ip.id_be,
        proto: ip.proto,
        _pad: 0,
    };
    if ip.is_later_fragment() {
        // Ports come from the first fragment; fragments that overtook it are
        // left to the host (it cannot reassemble them either).
        let Some(ports) = NP_FRAG4.get_ptr(&frag_key) else {
            return TCX_NEXT;
        };
        // SAFETY: map value pointer, valid during the program.
        let ports = unsafe { *ports };
        let key = CtKey4::new(ip.saddr, ip.daddr, ports.sport_be, ports.dport_be, ip.proto);
        let Some(e) = ct_lookup4(&key) else {
            return TCX_NEXT;
        };
        // SAFETY: as above.
        let e = unsafe { *e };
        if e.dir != ct_dir::REPLY {
            return TCX_NEXT;
        }
        if rewrite4(ctx, &ip, None, Side::Dst, e.nat_addr_be, 0).is_ok() {
            count(
                counter_scope::NETWORK,
                e.net_id,
                counter_kind::NET_REV_SNAT,
                len,
            );
        }
        return TCX_NEXT;
    }
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return TCX_NEXT;
    };
    if l4.kind == L4Kind::IcmpError {
        return icmp_error4(ctx, &ip, Side::Dst, 0, len);
    }
    let key = CtKey4::new(ip.saddr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto);
    let Some(e) = ct_lookup4(&key) else {
        return TCX_NEXT;
    };
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags) = unsafe { ((*e).dir, (*e).flags) };
    if dir != ct_dir::REPLY {
        return TCX_NEXT;
    }
    if ip.is_fragment() {
        let ports = FragPorts {
            sport_be: l4.sport_be,
            dport_be: l4.dport_be,
        };
        let _ = NP_FRAG4.insert(&frag_key, &ports, 0);
    }
    let t = now();
    let refreshed = ct_touch4(e, len, t);
    let state_change = ip.proto == proto::TCP
        && l4.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0;
    if refreshed || state_change || flags & ct_flags::SEEN_REPLY == 0 {
        if refreshed && !ct_keep_partner4(&key, e) {
            return TCX_NEXT;
        }
        // SAFETY: as above.
        let peer = unsafe { (*e).peer };
        if let Some(o) = ct_lookup4(&peer) {
            // SAFETY: as above.
            unsafe {
                if (*o).flags & ct_flags::SEEN_REPLY == 0 {
                    (*o).flags |= ct_flags::SEEN_REPLY;
                }
                if (*e).flags & ct_flags::SEEN_REPLY == 0 {
                    (*e).flags |= ct_flags::SEEN_REPLY;
                }
            }
            if ip.proto == proto::TCP {
                ct_tcp_update4(o, true, l4.tcp_flags);
            }
        }
    }
    // SAFETY: as above.
    let (nat_addr, nat_port, net_id) = unsafe { ((*e).nat_addr_be, (*e).nat_port_be, (*e).net_id) };
    if rewrite4(ctx, &ip, Some(&l4), Side::Dst, nat_addr, nat_port).is_ok() {
        count(
            counter_scope::NETWORK,
            net_id,
            counter_kind::NET_REV_SNAT,
            len,
        );
    }
    TCX_NEXT
}

/// An ICMP error about a translated flow. `outer` is the side of the outer
/// header to rewrite: `Dst` for errors coming in (about a packet the
/// container sent, quoted after translation), `Src` for errors a container
/// sends out (about a reply it received). The quoted packet gets the
/// opposite side rewritten, and the IPv4 header checksum inside it and the
/// ICMP checksum over it are updated.
#[inline(always)]
fn icmp_error4(ctx: &TcContext, ip: &Ip4, outer: Side, net_id: u32, len: u32) -> i32 {
    match icmp_error_translate4(ctx, ip, outer) {
        Some(net) => {
            let kind = if outer == Side::Dst {
                counter_kind::NET_REV_SNAT
            } else {
                counter_kind::NET_SNAT
            };
            count(counter_scope::NETWORK, net, kind, len);
            TCX_NEXT
        }
        // A container's error we cannot place would leak its address.
        None if outer == Side::Src => drop(net_id, DropReason::Malformed, len),
        None => TCX_NEXT,
    }
}

/// Finds the flow an ICMP error is about and rewrites it; returns the flow's
/// network, or `None` when the error is not about a translated flow (or
/// could not be rewritten).
#[inline(always)]
fn icmp_error_translate4(ctx: &TcContext, ip: &Ip4, outer: Side) -> Option<u32> {
    let icmp_off = ip.l4();
    let inner_off = icmp_off + 8;
    let inner = parse::ipv4_at(ctx, inner_off)?;
    if inner.is_later_fragment() {
        return None;
    }
    let inner_l4 = inner_off + inner.hlen;
    let (isport, idport) = parse::quoted_ports(ctx, &inner, inner_l4)?;
    // The quoted packet travelled the other way: its reverse is the tuple of
    // the packets this error travels with.
    let key = CtKey4::new(inner.daddr, inner.saddr, idport, isport, inner.proto);
    let e = ct_lookup4(&key)?;
    // SAFETY: map value pointer, valid during the program.
    let e: CtEntry4 = unsafe { *e };
    let want_dir = if outer == Side::Dst {
        ct_dir::REPLY
    } else {
        ct_dir::ORIGINAL
    };
    // The error must travel between the flow's endpoints.
    let (outer_addr, inner_addr) = match outer {
        Side::Dst => (ip.daddr, inner.saddr),
        Side::Src => (ip.saddr, inner.daddr),
    };
    if e.dir != want_dir || outer_addr != inner_addr {
        return None;
    }
    let icmp_port = inner.proto == proto::ICMP;
    let (inner_addr_off, inner_port_off, old_iport) = match outer {
        // Quoted: what the container sent, after translation: its source.
        Side::Dst => (
            inner_off + ip4_off::SADDR,
            if icmp_port { inner_l4 + 4 } else { inner_l4 },
            isport,
        ),
        // Quoted: the reply the container got: its destination.
        Side::Src => (
            inner_off + ip4_off::DADDR,
            if icmp_port {
                inner_l4 + 4
            } else {
                inner_l4 + 2
            },
            idport,
        ),
    };
    let icmp_csum = icmp_off + 2;
    let new_addr = e.nat_addr_be;
    let new_port = e.nat_port_be;
    // Outer address: the IPv4 header checksum only (ICMP has no pseudo-header).
    rewrite4(ctx, ip, None, outer, new_addr, 0).ok()?;
    // Quoted address, the quoted header's checksum, and the ICMP checksum
    // over both.
    let old_check: u16 = ctx.load(inner_off + ip4_off::CHECK).ok()?;
    let new_check = csum::replace4(old_check, inner_addr, new_addr);
    ctx.store(inner_addr_off, &new_addr, 0).ok()?;
    ctx.store(inner_off + ip4_off::CHECK, &new_check, 0).ok()?;
    ctx.l4_csum_replace(icmp_csum, u64::from(inner_addr), u64::from(new_addr), 4)
        .ok()?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_check), u64::from(new_check), 2)
        .ok()?;
    let has_ports = match inner.proto {
        proto::TCP | proto::UDP => true,
        proto::ICMP => old_iport != 0,
        _ => false,
    };
    if has_ports && old_iport != new_port {
        ctx.store(inner_port_off, &new_port, 0).ok()?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_iport), u64::from(new_port), 2)
            .ok()?;
    }
    Some(e.net_id)
}
