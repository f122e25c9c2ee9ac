//! Address translation, driven by conntrack: masquerade
//! (`-A POSTROUTING -s SUBNET ! -o BRIDGE -j MASQUERADE`) at uplink egress,
//! published ports (the `DOCKER` DNAT chain, including the hairpin
//! MASQUERADE) at uplink ingress and at container ports, and everything that
//! comes back: replies, later fragments and ICMP errors about a flow.
//!
//! One rule does every rewrite: a packet of a flow entry leaves as the
//! entry's partner key reversed (`ORIGINAL C:c->R:r` leaves as the reverse of
//! `REPLY R:r->U:n`, i.e. `U:n->R:r`). Only the fields that differ are
//! written, through `bpf_skb_store_bytes` and the kernel's checksum helpers,
//! which keep GSO/TSO packets, partial checksums (the pseudo-header sum) and
//! UDP's "no checksum" zero right.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    programs::TcContext,
};
use netpath_common::{
    DropReason, IfaceInfo, NetworkInfo, PubKey4, counter_kind, counter_scope, csum,
    ct::{CtEntry4, CtKey4, FragKey4, FragPorts, ct_dir, ct_flags, proto, tcp_flags},
    net_flags,
};

use crate::{
    TCX_NEXT,
    counters::count,
    ct::{ct_create4, ct_keep_partner4, ct_lookup4, ct_tcp_update4, ct_touch4, now},
    maps::{NP_CT4, NP_FRAG4, NP_HOSTADDRS4, NP_NETWORKS, NP_PUBLISH4, NP_SUBNETS4},
    parse::{self, Ip4, L3, L4, L4Kind, ip4_off},
};

/// Which address (and port) of a packet a rewrite writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
}

/// Counts a drop for the network and returns the verdict.
#[inline(always)]
pub fn drop(net_id: u32, reason: DropReason, len: u32) -> i32 {
    count(counter_scope::NETWORK, net_id, reason.counter_kind(), len);
    TC_ACT_SHOT
}

/// The managed network `addr` belongs to.
#[inline(always)]
pub fn network_of(addr_be: u32) -> Option<u32> {
    let key = aya_ebpf::maps::lpm_trie::Key::new(32, addr_be);
    NP_SUBNETS4.get(&key).copied()
}

#[inline(always)]
fn network(id: u32) -> Option<NetworkInfo> {
    // SAFETY: the value is Copy and read at once.
    unsafe { NP_NETWORKS.get(&id) }.copied()
}

/// Whether `addr` is one of the namespace's own addresses ("addrtype LOCAL").
#[inline(always)]
fn is_local(addr_be: u32) -> bool {
    NP_HOSTADDRS4.get_ptr(&addr_be).is_some()
}

/// The tuple of a packet (ports only when it has them).
#[inline(always)]
fn packet_key(ip: &Ip4, l4: &L4) -> CtKey4 {
    CtKey4::new(ip.saddr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto)
}

#[inline(always)]
fn set_addr(ctx: &TcContext, l4: Option<&L4>, side: Side, old: u32, new: u32) -> Result<(), ()> {
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
        let mm0 = if l4.udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        ctx.l4_csum_replace(
            l4.csum_off,
            u64::from(old),
            u64::from(new),
            4 | mm0 | u64::from(BPF_F_PSEUDO_HDR),
        )
        .map_err(|_| ())?;
    }
    Ok(())
}

#[inline(always)]
fn set_port(ctx: &TcContext, ip: &Ip4, l4: &L4, side: Side, old: u16, new: u16) -> Result<(), ()> {
    let off = match side {
        Side::Src => l4.sport_off(ip.l4(), ip.proto),
        Side::Dst => l4.dport_off(ip.l4(), ip.proto),
    };
    ctx.store(off, &new, 0).map_err(|_| ())?;
    let mm0 = if l4.udp {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    ctx.l4_csum_replace(l4.csum_off, u64::from(old), u64::from(new), 2 | mm0)
        .map_err(|_| ())
}

/// Rewrites the packet into the tuple `to`: addresses always, ports when
/// the packet carries a transport header (`l4`).
#[inline(always)]
fn translate4(ctx: &TcContext, ip: &Ip4, l4: Option<&L4>, to: &CtKey4) -> Result<(), ()> {
    if to.saddr_be != ip.saddr {
        set_addr(ctx, l4, Side::Src, ip.saddr, to.saddr_be)?;
    }
    if to.daddr_be != ip.daddr {
        set_addr(ctx, l4, Side::Dst, ip.daddr, to.daddr_be)?;
    }
    if let Some(l4) = l4
        && l4.kind == L4Kind::Ports
    {
        if to.sport_be != l4.sport_be {
            set_port(ctx, ip, l4, Side::Src, l4.sport_be, to.sport_be)?;
        }
        if to.dport_be != l4.dport_be {
            set_port(ctx, ip, l4, Side::Dst, l4.dport_be, to.dport_be)?;
        }
    }
    Ok(())
}

/// Counts a packet of a published port's flow on its mapping, found from
/// the host side of the flow (`addr:port`).
#[inline(always)]
fn count_published(addr: u32, port: u16, proto_nr: u8, kind: u16, len: u32) {
    let mut key = PubKey4 {
        addr_be: addr,
        port_be: port,
        proto: proto_nr,
        _pad: 0,
    };
    // SAFETY: values are Copy and read at once.
    let found = match unsafe { NP_PUBLISH4.get(&key) } {
        Some(v) => Some(*v),
        None => {
            key.addr_be = 0;
            unsafe { NP_PUBLISH4.get(&key) }.copied()
        }
    };
    if let Some(v) = found {
        count(counter_scope::PUBLISH, v.id, kind, len);
    }
}

/// A packet of the flow entry `e` (keyed `key`): accounting, TCP state, the
/// partner check, then the rewrite. `Err` when the entry turned out stale
/// (its partner's key now belongs to another flow; it was removed).
#[inline(always)]
fn apply4(
    ctx: &TcContext,
    ip: &Ip4,
    l4: Option<&L4>,
    key: &CtKey4,
    e: *mut CtEntry4,
    len: u32,
) -> Result<(), ()> {
    let t = now();
    let refreshed = ct_touch4(e, len, t);
    if refreshed && !ct_keep_partner4(key, e) {
        return Err(());
    }
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags, peer, net_id) = unsafe { ((*e).dir, (*e).flags, (*e).peer, (*e).net_id) };
    let tcp = match l4 {
        Some(l4) if ip.proto == proto::TCP => l4.tcp_flags,
        _ => 0,
    };
    if dir == ct_dir::ORIGINAL {
        if ip.proto == proto::TCP && l4.is_some() {
            ct_tcp_update4(e, false, tcp);
        }
    } else if flags & ct_flags::SEEN_REPLY == 0
        || tcp & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0
    {
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
            if ip.proto == proto::TCP && l4.is_some() {
                ct_tcp_update4(o, true, tcp);
            }
        }
    }
    let to = peer.reversed();
    translate4(ctx, ip, l4, &to)?;
    let kind = match (flags & ct_flags::DNAT != 0, dir == ct_dir::ORIGINAL) {
        (false, true) => counter_kind::NET_SNAT,
        (false, false) => counter_kind::NET_REV_SNAT,
        (true, true) => {
            count_published(
                key.daddr_be,
                key.dport_be,
                key.proto,
                counter_kind::PUB_IN,
                len,
            );
            counter_kind::NET_DNAT
        }
        (true, false) => {
            count_published(
                to.saddr_be,
                to.sport_be,
                to.proto,
                counter_kind::PUB_OUT,
                len,
            );
            counter_kind::NET_REV_SNAT
        }
    };
    count(counter_scope::NETWORK, net_id, kind, len);
    Ok(())
}

/// A later fragment (no transport header): the ports come from its first
/// fragment, recorded in `NP_FRAG4`; the addresses are rewritten like the
/// first fragment's. Fragments that overtook their first one are left alone.
#[inline(always)]
fn later_fragment4(ctx: &TcContext, ip: &Ip4) -> bool {
    let fk = FragKey4 {
        saddr_be: ip.saddr,
        daddr_be: ip.daddr,
        id_be: ip.id_be,
        proto: ip.proto,
        _pad: 0,
    };
    let Some(ports) = NP_FRAG4.get_ptr(&fk) else {
        return false;
    };
    // SAFETY: map value pointer, valid during the program.
    let ports = unsafe { *ports };
    let key = CtKey4::new(ip.saddr, ip.daddr, ports.sport_be, ports.dport_be, ip.proto);
    let Some(e) = ct_lookup4(&key) else {
        return false;
    };
    // SAFETY: as above.
    let to = unsafe { (*e).peer }.reversed();
    translate4(ctx, ip, None, &to).is_ok()
}

/// Records the ports of a first fragment for its later fragments.
#[inline(always)]
fn first_fragment4(ip: &Ip4, l4: &L4) {
    if ip.is_fragment() {
        let fk = FragKey4 {
            saddr_be: ip.saddr,
            daddr_be: ip.daddr,
            id_be: ip.id_be,
            proto: ip.proto,
            _pad: 0,
        };
        let ports = FragPorts {
            sport_be: l4.sport_be,
            dport_be: l4.dport_be,
        };
        let _ = NP_FRAG4.insert(&fk, &ports, 0);
    }
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
    let Some(net) = network(net_id) else {
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
        if set_addr(ctx, None, Side::Src, ip.saddr, addr).is_err() {
            return drop(net_id, DropReason::Malformed, len);
        }
        count(counter_scope::NETWORK, net_id, counter_kind::NET_SNAT, len);
        return TCX_NEXT;
    }
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return drop(net_id, DropReason::Malformed, len);
    };
    if l4.kind == L4Kind::IcmpError {
        return match icmp_error4(ctx, &ip) {
            Some(_) => TCX_NEXT,
            // A container's error we cannot place would leak its address.
            None => drop(net_id, DropReason::Malformed, len),
        };
    }
    let key = packet_key(&ip, &l4);
    if let Some(e) = ct_lookup4(&key) {
        // SAFETY: map value pointer, valid during the program.
        let (dir, flags, nat_addr, peer) =
            unsafe { ((*e).dir, (*e).flags, (*e).nat_addr_be, (*e).peer) };
        let current = flags & ct_flags::DNAT != 0 || (dir == ct_dir::ORIGINAL && nat_addr == addr);
        if current {
            if apply4(ctx, &ip, Some(&l4), &key, e, len).is_ok() {
                return TCX_NEXT;
            }
        } else {
            // The uplink's address changed (or the route moved to another
            // uplink): like MASQUERADE, the old mapping is gone.
            let _ = NP_CT4.remove(&peer);
            let _ = NP_CT4.remove(&key);
        }
    }
    let translated = CtKey4::new(addr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto);
    match ct_create4(&key, &translated, true, ct_flags::SNAT, net_id, now()) {
        Ok(e) => {
            count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
            if apply4(ctx, &ip, Some(&l4), &key, e, len).is_err() {
                return drop(net_id, DropReason::Malformed, len);
            }
            TCX_NEXT
        }
        Err(reason) => drop(net_id, reason, len),
    }
}

/// A new flow to a published port, if `key` (a packet's tuple) addresses
/// one: DNAT to the container, plus source NAT to the target network's
/// gateway when the client is in that network (so the reply comes back
/// through the translator, as Docker's hairpin MASQUERADE does).
#[inline(always)]
fn publish4(key: &CtKey4) -> Option<Result<(*mut CtEntry4, u32), DropReason>> {
    if key.proto != proto::TCP && key.proto != proto::UDP {
        return None;
    }
    let mut pk = PubKey4 {
        addr_be: key.daddr_be,
        port_be: key.dport_be,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: values are Copy and read at once.
    let target = match unsafe { NP_PUBLISH4.get(&pk) } {
        Some(v) => *v,
        None => {
            if !is_local(key.daddr_be) {
                return None;
            }
            pk.addr_be = 0;
            *unsafe { NP_PUBLISH4.get(&pk) }?
        }
    };
    let hairpin = network_of(key.saddr_be) == Some(target.net_id);
    let src = if hairpin {
        match network(target.net_id) {
            Some(n) => n.gateway_be,
            None => return None,
        }
    } else {
        key.saddr_be
    };
    let translated = CtKey4::new(
        src,
        target.target_be,
        key.sport_be,
        target.target_port_be,
        key.proto,
    );
    let flags = ct_flags::DNAT | if hairpin { ct_flags::SNAT } else { 0 };
    Some(
        ct_create4(key, &translated, hairpin, flags, target.net_id, now())
            .map(|e| (e, target.net_id)),
    )
}

/// Uplink ingress: replies to masqueraded flows go back to their container,
/// packets to published ports go to theirs. Anything else (the host's own
/// traffic) passes untouched.
#[inline(always)]
pub fn nat4_ingress(ctx: &TcContext) -> i32 {
    if !parse::is_ipv4(ctx) {
        return TCX_NEXT;
    }
    let Some(ip) = parse::ipv4_at(ctx, L3) else {
        return TCX_NEXT;
    };
    if ip.is_later_fragment() {
        later_fragment4(ctx, &ip);
        return TCX_NEXT;
    }
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return TCX_NEXT;
    };
    if l4.kind == L4Kind::IcmpError {
        icmp_error4(ctx, &ip);
        return TCX_NEXT;
    }
    let len = ctx.len();
    let key = packet_key(&ip, &l4);
    let e = match ct_lookup4(&key) {
        Some(e) => e,
        None => match publish4(&key) {
            None => return TCX_NEXT,
            Some(Ok((e, net_id))) => {
                count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
                e
            }
            Some(Err(reason)) => return drop(0, reason, len),
        },
    };
    first_fragment4(&ip, &l4);
    let _ = apply4(ctx, &ip, Some(&l4), &key, e, len);
    TCX_NEXT
}

/// What a container's packet at its port turned out to be.
pub enum PortNat {
    /// Not a published-port flow: the port's policy decides.
    None,
    /// Translated (a published port, or a reply from one): allowed.
    Translated,
    /// Dropped with this verdict.
    Verdict(i32),
}

/// Container port ingress: a container reaching a published port through a
/// host address (DNAT, with hairpin source NAT inside its own network), and
/// a container answering through its published port (reverse DNAT).
/// Masquerade flows are left to the uplink.
#[inline(always)]
pub fn port4_ingress(ctx: &TcContext, ip: &Ip4, net_id: u32, net: &NetworkInfo) -> PortNat {
    if ip.is_later_fragment() {
        return if later_fragment4(ctx, ip) {
            PortNat::Translated
        } else {
            PortNat::None
        };
    }
    let Ok(l4) = parse::l4(ctx, ip) else {
        return PortNat::None;
    };
    if l4.kind == L4Kind::IcmpError {
        return match icmp_error4(ctx, ip) {
            Some(_) => PortNat::Translated,
            None => PortNat::None,
        };
    }
    let len = ctx.len();
    let key = packet_key(ip, &l4);
    let e = match ct_lookup4(&key) {
        // SAFETY: map value pointer, valid during the program.
        Some(e) if unsafe { (*e).flags } & ct_flags::DNAT != 0 => e,
        Some(_) => return PortNat::None,
        None => {
            if net.flags & net_flags::INTERNAL != 0 {
                return PortNat::None;
            }
            match publish4(&key) {
                None => return PortNat::None,
                Some(Ok((e, net_id))) => {
                    count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
                    e
                }
                Some(Err(reason)) => return PortNat::Verdict(drop(net_id, reason, len)),
            }
        }
    };
    first_fragment4(ip, &l4);
    match apply4(ctx, ip, Some(&l4), &key, e, len) {
        Ok(()) => PortNat::Translated,
        Err(()) => PortNat::None,
    }
}

/// An ICMP error about a translated flow, found through the packet it
/// quotes: the quoted packet went the other way, so its reverse is the key
/// of the direction the error travels. The quoted packet becomes its
/// untranslated self (the entry's partner key); the outer addresses that are
/// the flow's endpoints are translated like the flow's packets; the quoted
/// IPv4 header's checksum and the ICMP checksum follow. Returns the flow's
/// network, or `None` when the error is about no translated flow.
#[inline(always)]
fn icmp_error4(ctx: &TcContext, ip: &Ip4) -> Option<u32> {
    let icmp_off = ip.l4();
    let inner_off = icmp_off + 8;
    let inner = parse::ipv4_at(ctx, inner_off)?;
    if inner.is_later_fragment() {
        return None;
    }
    let inner_l4 = inner_off + inner.hlen;
    let (isport, idport) = parse::quoted_ports(ctx, &inner, inner_l4)?;
    let quoted = CtKey4::new(inner.saddr, inner.daddr, isport, idport, inner.proto);
    let key = quoted.reversed();
    let e = ct_lookup4(&key)?;
    // SAFETY: map value pointer, valid during the program.
    let e: CtEntry4 = unsafe { *e };
    let to = e.peer.reversed();
    // The outer addresses that are the flow's endpoints.
    let outer = CtKey4::new(
        if ip.saddr == key.saddr_be {
            to.saddr_be
        } else {
            ip.saddr
        },
        if ip.daddr == key.daddr_be {
            to.daddr_be
        } else {
            ip.daddr
        },
        0,
        0,
        ip.proto,
    );
    if outer.saddr_be == ip.saddr && outer.daddr_be == ip.daddr {
        // The error is not addressed to or from an endpoint of this flow.
        return None;
    }
    translate4(ctx, ip, None, &outer).ok()?;
    // The quoted packet: addresses (with its header checksum) and ports,
    // every change folded into the ICMP checksum.
    let icmp_csum = icmp_off + 2;
    let want = e.peer;
    let mut check: u16 = ctx.load(inner_off + ip4_off::CHECK).ok()?;
    let old_check = check;
    let mut i = 0;
    while i < 2 {
        let (off, old, new) = if i == 0 {
            (inner_off + ip4_off::SADDR, quoted.saddr_be, want.saddr_be)
        } else {
            (inner_off + ip4_off::DADDR, quoted.daddr_be, want.daddr_be)
        };
        if old != new {
            ctx.store(off, &new, 0).ok()?;
            ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 4)
                .ok()?;
            check = csum::replace4(check, old, new);
        }
        i += 1;
    }
    if check != old_check {
        ctx.store(inner_off + ip4_off::CHECK, &check, 0).ok()?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_check), u64::from(check), 2)
            .ok()?;
    }
    let has_ports = match inner.proto {
        proto::TCP | proto::UDP => true,
        proto::ICMP => true,
        _ => false,
    };
    if has_ports {
        let icmp_id = inner.proto == proto::ICMP;
        let mut j = 0;
        while j < 2 {
            let (off, old, new) = if j == 0 {
                (
                    if icmp_id { inner_l4 + 4 } else { inner_l4 },
                    quoted.sport_be,
                    want.sport_be,
                )
            } else {
                (
                    if icmp_id { inner_l4 + 4 } else { inner_l4 + 2 },
                    quoted.dport_be,
                    want.dport_be,
                )
            };
            // An echo carries its identifier once: in sport (request) or dport (reply).
            let present = !icmp_id || old != 0;
            if present && old != new {
                ctx.store(off, &new, 0).ok()?;
                ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 2)
                    .ok()?;
            }
            j += 1;
        }
    }
    let kind = if e.dir == ct_dir::ORIGINAL {
        counter_kind::NET_SNAT
    } else {
        counter_kind::NET_REV_SNAT
    };
    count(counter_scope::NETWORK, e.net_id, kind, ctx.len());
    Some(e.net_id)
}
