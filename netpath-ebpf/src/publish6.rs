//! Published IPv6 ports (`NP_PUBLISH6`), as `publish` is for IPv4: a new
//! flow to a published host `[addr]:port` is admitted by the filter rules
//! and destination-NATed to its container; a container reaching its own
//! published port is also source-NATed to its network's IPv6 gateway.
//!
//! From outside, at the uplink (`uplink6`). From a container, at its
//! bridge's ingress hook, where its packet for a host address goes up to
//! the host (`bridge::ingress6`): IPv4 does this at the port, but an IPv6
//! port's checks leave no stack for a flow's creation and rewrite; the
//! port only lets such a packet past the network policy (`port6`).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, counter_kind, counter_scope,
    ct::{ct_flags, proto},
    ct6::{CtEntry6, CtKey6},
    net_flags,
};

use crate::{
    counters::count,
    ct::{ct_create, ct_put_mids},
    filter::{self, Flow},
    lookup::published6,
    maps::{NP_NETWORKS, NP_NETWORKS6},
    parse6::{Work6, same6},
};

/// A new IPv6 flow: its entry and network, or the network it was refused
/// for and why.
pub type NewFlow6 = Result<(*mut CtEntry6, u32), (u32, DropReason)>;

/// Counts a packet of a published IPv6 port's flow on its mapping, found
/// from the host side of the flow (`addr:port`).
#[inline(always)]
pub fn count_published6(key: &CtKey6, host_side_is_dst: bool, kind: u16, len: u32) {
    let (addr, port) = if host_side_is_dst {
        (&key.daddr, key.dport_be)
    } else {
        (&key.saddr, key.sport_be)
    };
    if let Some(v) = published6(addr, port, key.proto) {
        count(counter_scope::PUBLISH, v.id, kind, len);
    }
}

/// A new flow to a published port, if `w.key` (a packet's tuple)
/// addresses one. With `hairpin` (a container's packet) the container may
/// be reaching its own published port: then its source becomes the
/// gateway's too (Docker's hairpin MASQUERADE), with two `MID` entries for
/// the egress half. Leaves the translated tuple in `w.translated`.
#[inline(always)]
pub fn publish6(ctx: &TcContext, w: &mut Work6, hairpin: bool) -> Option<NewFlow6> {
    let proto_nr = w.key.proto;
    if !matches!(proto_nr, proto::TCP | proto::UDP | proto::SCTP) {
        return None;
    }
    let target = published6(&w.key.daddr, w.key.dport_be, proto_nr)?;
    let net_id = target.net_id;
    // An internal network's container reaches no one and is reached by
    // no one beyond its subnet, published or not (`publish` refuses such
    // a target; a network made internal later keeps its mappings inert).
    // SAFETY: map value pointer, read at once.
    let flags = NP_NETWORKS.get_ptr(net_id).map(|n| unsafe { (*n).flags });
    if flags.is_none_or(|f| f & net_flags::INTERNAL != 0) {
        return Some(Err((net_id, DropReason::Internal)));
    }
    // IPv4-only selectors (a client or container address) cannot name an
    // IPv6 flow; the rest of the rules apply.
    let flow = Flow {
        src_be: 0,
        net_id,
        proto: proto_nr,
        host_port_be: w.key.dport_be,
        to_be: 0,
        to_port_be: target.target_port_be,
        v6: true,
    };
    if let Err(r) = filter::admit(&flow) {
        return Some(Err((net_id, r)));
    }
    // Built in the per-CPU work area, not on the stack.
    w.translated = w.key;
    w.translated.daddr = target.target;
    w.translated.dport_be = target.target_port_be;
    let to_self = hairpin && to_itself(w, net_id);
    let flags = ct_flags::DNAT | if to_self { ct_flags::SNAT } else { 0 };
    // The source port is kept, not searched as IPv4's hairpin does: the
    // search's frame does not fit under the bridge's hook. The gateway's
    // tuple to the container is free unless the same container port
    // reaches itself through two host ports from one source port at once;
    // then the second flow is refused (`drop_ct_insert_failed`).
    let e = match ct_create(
        ctx,
        &w.key,
        &w.translated,
        false,
        flags,
        net_id,
        w.l4.tcp_flags,
    ) {
        Ok(e) => e,
        Err(r) => return Some(Err((net_id, r))),
    };
    count(counter_scope::NETWORK, net_id, counter_kind::NET_CT_NEW, 0);
    if to_self {
        // The packet between the two rewrites: the container to itself.
        w.translated.saddr = w.key.saddr;
        w.translated.sport_be = w.key.sport_be;
        // SAFETY: map value pointer, valid during the program.
        let reply = unsafe { &(*e).peer };
        ct_put_mids(&w.translated, &w.key, reply, flags, net_id);
    }
    Some(Ok((e, net_id)))
}

/// Whether a new flow's container (`w.translated`'s destination) is its
/// client too; then the flow's source becomes the network's gateway. A
/// BPF subprogram (the comparison's frame stays out of the flow's).
#[inline(never)]
fn to_itself(w: &mut Work6, net_id: u32) -> bool {
    if !same6(&w.key.saddr, &w.translated.daddr) {
        return false;
    }
    let Some(n6) = NP_NETWORKS6.get_ptr(net_id) else {
        return false;
    };
    // SAFETY: map value pointer, read at once.
    w.translated.saddr = unsafe { (*n6).gateway };
    true
}
