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
    fastpath,
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

/// A managed network by id.
#[inline(always)]
pub fn network(id: u32) -> Option<NetworkInfo> {
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

/// Where a rewrite happens. Destinations are rewritten at ingress (before
/// the host routes the packet), sources at egress (after): a packet never
/// enters the host's routing with one of the host's own addresses as its
/// source, which the kernel would drop as a martian.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Ingress,
    Egress,
}

/// Rewrites the packet's destination (ingress) or source (egress) to what
/// the tuple `to` has: the address always, the port when the packet carries
/// a transport header (`l4`). Returns whether anything changed.
#[inline(always)]
fn translate4(
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
    if let Some(l4) = l4
        && l4.kind == L4Kind::Ports
    {
        let (old, new) = match phase {
            Phase::Ingress => (l4.dport_be, to.dport_be),
            Phase::Egress => (l4.sport_be, to.sport_be),
        };
        // An echo carries its identifier once (request: as sport, reply: as
        // dport); the other "port" is 0 on both sides.
        if old != new {
            set_port(ctx, ip, l4, side, old, new)?;
            changed = true;
        }
    }
    Ok(changed)
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

/// Per-packet conntrack bookkeeping, once per packet (at its first hook):
/// counters, TCP state, the partner check. `Err` when the entry turned out
/// stale (its partner's key now belongs to another flow; it was removed).
#[inline(always)]
fn account4(ip: &Ip4, l4: Option<&L4>, key: &CtKey4, e: *mut CtEntry4, len: u32) -> Result<(), ()> {
    let t = now();
    let refreshed = ct_touch4(e, len, t);
    if refreshed && !ct_keep_partner4(key, e) {
        return Err(());
    }
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags, peer) = unsafe { ((*e).dir, (*e).flags, (*e).peer) };
    let tcp = match l4 {
        Some(l4) if ip.proto == proto::TCP => l4.tcp_flags,
        _ => 0,
    };
    if dir == ct_dir::ORIGINAL {
        if ip.proto == proto::TCP && l4.is_some() {
            ct_tcp_update4(e, false, tcp);
        }
    } else if dir == ct_dir::REPLY
        && (flags & ct_flags::SEEN_REPLY == 0
            || tcp & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0)
        && let Some(o) = ct_lookup4(&peer)
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
        if ip.proto == proto::TCP && l4.is_some() {
            ct_tcp_update4(o, true, tcp);
        }
    }
    Ok(())
}

/// Rewrites a packet of flow entry `e` (keyed `key`) for `phase`: it leaves
/// as the entry's partner key reversed. Counts what was translated.
#[inline(always)]
fn apply4(
    ctx: &TcContext,
    ip: &Ip4,
    l4: Option<&L4>,
    key: &CtKey4,
    e: *mut CtEntry4,
    len: u32,
    phase: Phase,
) -> Result<(), ()> {
    // SAFETY: map value pointer, valid during the program.
    let (dir, flags, peer, net_id) = unsafe { ((*e).dir, (*e).flags, (*e).peer, (*e).net_id) };
    // Bookkeeping happens once per packet, at the hook that translates the
    // entry's direction (every packet of a flow passes it).
    let translating = match dir {
        ct_dir::ORIGINAL => (flags & ct_flags::DNAT != 0) == (phase == Phase::Ingress),
        ct_dir::REPLY => (flags & ct_flags::DNAT != 0) == (phase == Phase::Egress),
        _ => false,
    };
    if translating {
        account4(ip, l4, key, e, len)?;
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

/// A later fragment (no transport header): the ports come from its first
/// fragment, recorded in `NP_FRAG4`; the addresses are rewritten like the
/// first fragment's. Fragments that overtook their first one are left alone.
/// Returns `None` when the fragment belongs to no known flow, otherwise
/// whether the flow is a published port's.
#[inline(always)]
fn later_fragment4(ctx: &TcContext, ip: &Ip4, phase: Phase) -> Option<bool> {
    let fk = frag_key(ip);
    // SAFETY: map value pointer, valid during the program.
    let ports = unsafe { *NP_FRAG4.get_ptr(&fk)? };
    let key = CtKey4::new(ip.saddr, ip.daddr, ports.sport_be, ports.dport_be, ip.proto);
    let e = ct_lookup4(&key)?;
    // SAFETY: as above.
    let (to, flags) = unsafe { ((*e).peer.reversed(), (*e).flags) };
    let _ = translate4(ctx, ip, None, &to, phase);
    if phase == Phase::Ingress {
        follow_fragments(&fk, ports.sport_be, ports.dport_be, &to);
    }
    Some(flags & ct_flags::DNAT != 0)
}

/// The datagram a fragment belongs to.
#[inline(always)]
fn frag_key(ip: &Ip4) -> FragKey4 {
    FragKey4 {
        saddr_be: ip.saddr,
        daddr_be: ip.daddr,
        id_be: ip.id_be,
        proto: ip.proto,
        _pad: 0,
    }
}

/// After an ingress rewrite to `to`, the datagram's later fragments carry
/// its new destination: record their ports under that key too, for the
/// egress hook.
#[inline(always)]
fn follow_fragments(fk: &FragKey4, sport_be: u16, dport_be: u16, to: &CtKey4) {
    if to.daddr_be != fk.daddr_be || to.dport_be != dport_be {
        let moved = FragKey4 {
            daddr_be: to.daddr_be,
            ..*fk
        };
        let ports = FragPorts {
            sport_be,
            dport_be: to.dport_be,
        };
        let _ = NP_FRAG4.insert(&moved, &ports, 0);
    }
}

/// Records the ports of a first fragment for its later fragments, as they
/// will look at the next hook too (after this hook's rewrite).
#[inline(always)]
fn first_fragment4(ip: &Ip4, l4: &L4, e: *mut CtEntry4, phase: Phase) {
    if !ip.is_fragment() {
        return;
    }
    let fk = frag_key(ip);
    let ports = FragPorts {
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
    };
    let _ = NP_FRAG4.insert(&fk, &ports, 0);
    if phase == Phase::Ingress {
        // SAFETY: map value pointer, valid during the program.
        let to = unsafe { (*e).peer }.reversed();
        follow_fragments(&fk, l4.sport_be, l4.dport_be, &to);
    }
}

/// The masquerade source and network of a packet leaving through an uplink:
/// `Some` when it comes from a managed subnet that masquerades.
#[inline(always)]
fn masquerading(ip: &Ip4) -> Option<u32> {
    let net_id = network_of(ip.saddr)?;
    let net = network(net_id)?;
    if net.flags & (net_flags::NO_MASQUERADE | net_flags::INTERNAL) != 0 {
        return None;
    }
    Some(net_id)
}

/// Uplink egress: the source half of every flow (masquerade, answers from
/// published ports), and new masquerade flows from managed subnets.
#[inline(always)]
pub fn nat4_egress(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    if !parse::is_ipv4(ctx) {
        return TCX_NEXT;
    }
    let Some(ip) = parse::ipv4_at(ctx, L3) else {
        return TCX_NEXT;
    };
    let len = ctx.len();
    let masq = masquerading(&ip);
    let addr = iface.ipv4_be;
    if ip.is_later_fragment() {
        if later_fragment4(ctx, &ip, Phase::Egress).is_some() {
            return TCX_NEXT;
        }
        let Some(net_id) = masq else {
            return TCX_NEXT;
        };
        if addr == 0 {
            return drop(net_id, DropReason::NatNoAddress, len);
        }
        // No ports here: the source address is all there is, and it is the
        // same for every flow of this network leaving through this uplink.
        if ip.saddr != addr && set_addr(ctx, None, Side::Src, ip.saddr, addr).is_err() {
            return drop(net_id, DropReason::Malformed, len);
        }
        count(counter_scope::NETWORK, net_id, counter_kind::NET_SNAT, len);
        return TCX_NEXT;
    }
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return match masq {
            Some(net_id) => drop(net_id, DropReason::Malformed, len),
            None => TCX_NEXT,
        };
    };
    if l4.kind == L4Kind::IcmpError {
        return match (icmp_error4(ctx, &ip, Phase::Egress), masq) {
            (Some(_), _) | (None, None) => TCX_NEXT,
            // A container's error we cannot place would leak its address.
            (None, Some(net_id)) => drop(net_id, DropReason::Malformed, len),
        };
    }
    let key = packet_key(&ip, &l4);
    if let Some(e) = ct_lookup4(&key) {
        // SAFETY: map value pointer, valid during the program.
        let (dir, flags, nat_addr, peer) =
            unsafe { ((*e).dir, (*e).flags, (*e).nat_addr_be, (*e).peer) };
        let masquerade_flow = flags & ct_flags::DNAT == 0 && dir == ct_dir::ORIGINAL;
        if !masquerade_flow || nat_addr == addr {
            first_fragment4(&ip, &l4, e, Phase::Egress);
            if apply4(ctx, &ip, Some(&l4), &key, e, len, Phase::Egress).is_ok() {
                return TCX_NEXT;
            }
            // A stale entry (removed by the partner check): start over below.
        } else {
            // The uplink's address changed (or the route moved to another
            // uplink): like MASQUERADE, the old mapping is gone.
            let _ = NP_CT4.remove(&peer);
            let _ = NP_CT4.remove(&key);
        }
    }
    let Some(net_id) = masq else {
        return TCX_NEXT;
    };
    if addr == 0 {
        return drop(net_id, DropReason::NatNoAddress, len);
    }
    let translated = CtKey4::new(addr, ip.daddr, l4.sport_be, l4.dport_be, ip.proto);
    match ct_create4(&key, &translated, true, ct_flags::SNAT, net_id, now()) {
        Ok(e) => {
            count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
            first_fragment4(&ip, &l4, e, Phase::Egress);
            if apply4(ctx, &ip, Some(&l4), &key, e, len, Phase::Egress).is_err() {
                return drop(net_id, DropReason::Malformed, len);
            }
            TCX_NEXT
        }
        Err(reason) => drop(net_id, reason, len),
    }
}

/// A new flow to a published port, if `key` (a packet's tuple) addresses
/// one: DNAT to the container. A container reaching its own published port
/// is also source-translated to its gateway (Docker's hairpin MASQUERADE),
/// which takes two extra `MID` entries for the egress half.
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
    let to_self = key.saddr_be == target.target_be;
    let src = if to_self {
        network(target.net_id)?.gateway_be
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
    let flags = ct_flags::DNAT | if to_self { ct_flags::SNAT } else { 0 };
    let e = match ct_create4(key, &translated, to_self, flags, target.net_id, now()) {
        Ok(e) => e,
        Err(r) => return Some(Err(r)),
    };
    if to_self {
        // SAFETY: map value pointer, valid during the program.
        let reply = unsafe { (*e).peer };
        let mid = CtKey4::new(
            key.saddr_be,
            target.target_be,
            key.sport_be,
            target.target_port_be,
            key.proto,
        );
        let half = |peer: CtKey4| CtEntry4 {
            peer,
            dir: ct_dir::MID,
            flags,
            net_id: target.net_id,
            ..CtEntry4::default()
        };
        let _ = NP_CT4.insert(&mid, &half(reply), 0);
        let _ = NP_CT4.insert(&mid.reversed(), &half(*key), 0);
    }
    Some(Ok((e, target.net_id)))
}

/// Uplink ingress: the destination half of every flow (answers to
/// masquerade, packets to published ports), and new flows to published
/// ports. Anything else (the host's own traffic) passes untouched.
#[inline(always)]
pub fn nat4_ingress(ctx: &TcContext) -> i32 {
    if !parse::is_ipv4(ctx) {
        return TCX_NEXT;
    }
    let Some(ip) = parse::ipv4_at(ctx, L3) else {
        return TCX_NEXT;
    };
    if ip.is_later_fragment() {
        later_fragment4(ctx, &ip, Phase::Ingress);
        return TCX_NEXT;
    }
    let Ok(l4) = parse::l4(ctx, &ip) else {
        return TCX_NEXT;
    };
    if l4.kind == L4Kind::IcmpError {
        icmp_error4(ctx, &ip, Phase::Ingress);
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
    first_fragment4(&ip, &l4, e, Phase::Ingress);
    if apply4(ctx, &ip, Some(&l4), &key, e, len, Phase::Ingress).is_ok() {
        // SAFETY: map value pointer, valid during the program.
        let to = unsafe { (*e).peer }.reversed();
        if let Some(verdict) = fastpath::to_container4(ctx, &ip, to.daddr_be) {
            return verdict;
        }
    }
    TCX_NEXT
}

/// What a container's packet at its port turned out to be.
pub enum PortNat {
    /// Not a published-port flow: the port's policy decides.
    None,
    /// A published port, or an answer from one: allowed, the flow was
    /// allowed when it was created.
    Published,
    /// Dropped with this verdict.
    Verdict(i32),
}

/// Container port ingress: the conntrack bookkeeping of every container
/// packet, the destination half of flows (a container reaching a published
/// port through a host address; the answer of a container reaching its own),
/// and new flows to published ports.
#[inline(always)]
pub fn port4_ingress(ctx: &TcContext, ip: &Ip4, net_id: u32, net: &NetworkInfo) -> PortNat {
    if ip.is_later_fragment() {
        return match later_fragment4(ctx, ip, Phase::Ingress) {
            Some(true) => PortNat::Published,
            _ => PortNat::None,
        };
    }
    let Ok(l4) = parse::l4(ctx, ip) else {
        return PortNat::None;
    };
    if l4.kind == L4Kind::IcmpError {
        return match icmp_error4(ctx, ip, Phase::Ingress) {
            Some(true) => PortNat::Published,
            _ => PortNat::None,
        };
    }
    let len = ctx.len();
    let key = packet_key(ip, &l4);
    let e = match ct_lookup4(&key) {
        Some(e) => e,
        None => {
            if net.flags & net_flags::INTERNAL != 0 {
                return PortNat::None;
            }
            match publish4(&key) {
                None => return PortNat::None,
                Some(Ok((e, id))) => {
                    count(counter_scope::NETWORK, id, counter_kind::NET_CT_NEW, 0);
                    e
                }
                Some(Err(reason)) => return PortNat::Verdict(drop(net_id, reason, len)),
            }
        }
    };
    // SAFETY: map value pointer, valid during the program.
    let dnat = unsafe { (*e).flags } & ct_flags::DNAT != 0;
    first_fragment4(ip, &l4, e, Phase::Ingress);
    if apply4(ctx, ip, Some(&l4), &key, e, len, Phase::Ingress).is_err() {
        return PortNat::Verdict(drop(net_id, DropReason::Malformed, len));
    }
    if dnat {
        PortNat::Published
    } else {
        PortNat::None
    }
}

/// Container port egress: the source half of flows delivered to a container
/// (answers from a published port to a container client; a container
/// reaching its own published port).
#[inline(always)]
pub fn port4_egress(ctx: &TcContext, ip: &Ip4) {
    if ip.is_later_fragment() {
        later_fragment4(ctx, ip, Phase::Egress);
        return;
    }
    let Ok(l4) = parse::l4(ctx, ip) else {
        return;
    };
    if l4.kind == L4Kind::IcmpError {
        icmp_error4(ctx, ip, Phase::Egress);
        return;
    }
    let key = packet_key(ip, &l4);
    if let Some(e) = ct_lookup4(&key) {
        // SAFETY: map value pointer, valid during the program.
        let (flags, dir) = unsafe { ((*e).flags, (*e).dir) };
        // Masquerade flows have nothing to do here (their reply's source is
        // the remote's own).
        if flags & ct_flags::DNAT != 0 || dir == ct_dir::MID {
            first_fragment4(ip, &l4, e, Phase::Egress);
            let _ = apply4(ctx, ip, Some(&l4), &key, e, ctx.len(), Phase::Egress);
        }
    }
}

/// An ICMP error about a translated flow, found through the packet it
/// quotes: the quoted packet went the other way, so its reverse is the key
/// of the direction the error travels. At ingress the outer destination and
/// the quoted source are translated, at egress the outer source and the
/// quoted destination (each like the flow's own packets); the quoted IPv4
/// header's checksum and the ICMP checksum follow. Returns whether the flow
/// is a published port's, or `None` when the error is about no known flow.
#[inline(always)]
fn icmp_error4(ctx: &TcContext, ip: &Ip4, phase: Phase) -> Option<bool> {
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
    // MID entries: the quoted packet's untranslated self is not their peer.
    if e.dir == ct_dir::MID {
        return Some(e.flags & ct_flags::DNAT != 0);
    }
    let want = e.peer;
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
    let icmp_id = inner.proto == proto::ICMP;
    let has_port = match inner.proto {
        proto::TCP | proto::UDP => true,
        // An echo carries its identifier once, in sport (request) or dport (reply).
        proto::ICMP => old_port != 0,
        _ => false,
    };
    if has_port && old_port != new_port {
        let off = match (icmp_id, phase) {
            (true, _) => inner_l4 + 4,
            (false, Phase::Ingress) => inner_l4,
            (false, Phase::Egress) => inner_l4 + 2,
        };
        ctx.store(off, &new_port, 0).ok()?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_port), u64::from(new_port), 2)
            .ok()?;
    }
    let kind = match phase {
        Phase::Ingress => counter_kind::NET_REV_SNAT,
        Phase::Egress => counter_kind::NET_SNAT,
    };
    count(counter_scope::NETWORK, e.net_id, kind, ctx.len());
    Some(e.flags & ct_flags::DNAT != 0)
}
