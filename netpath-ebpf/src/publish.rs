//! Published ports (replaces the nat `DOCKER` chain, its filter `DOCKER`
//! ACCEPT rules and the hairpin MASQUERADE): a new flow to a published
//! host address:port is admitted by the filter rules and destination-NATed
//! to its container; a container reaching its own published port is also
//! source-NATed to its gateway.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, counter_scope,
    ct::{CtEntry4, CtKey4, ct_dir, ct_flags, proto},
};

use crate::{
    counters::count,
    ct::{ct_create, ct_put_mid},
    filter::{self, Flow},
    lookup::{network, published},
};

/// Counts a packet of a published port's flow on its mapping, found from
/// the host side of the flow (`addr:port`).
#[inline(always)]
pub fn count_published(addr: u32, port: u16, proto_nr: u8, kind: u16, len: u32) {
    if let Some(v) = published(addr, port, proto_nr, false) {
        count(counter_scope::PUBLISH, v.id, kind, len);
    }
}

/// A new flow: its entry and network, or the network it was refused for
/// and why.
pub type NewFlow = Result<(*mut CtEntry4, u32), (u32, DropReason)>;

/// A new flow to a published port, if `key` (a packet's tuple) addresses
/// one. A container reaching its own published port is
/// also source-translated to its gateway (Docker's hairpin MASQUERADE),
/// which takes two extra `MID` entries for the egress half.
///
/// A BPF subprogram: its frame is not its callers' (the flows of ports
/// and uplinks), beside which `flow::netpath_apply4` puts its own (a
/// program's call chain has 512 bytes of stack).
#[inline(never)]
pub fn publish4(ctx: &TcContext, key: &CtKey4, tcp_flags: u8) -> Option<NewFlow> {
    if !matches!(key.proto, proto::TCP | proto::UDP | proto::SCTP) {
        return None;
    }
    let target = published(key.daddr_be, key.dport_be, key.proto, false)?;
    let net_id = target.net_id;
    let flow = Flow {
        src_be: key.saddr_be,
        net_id,
        proto: key.proto,
        host_port_be: key.dport_be,
        to_be: target.target_be,
        to_port_be: target.target_port_be,
        v6: false,
    };
    if let Err(r) = filter::admit(&flow) {
        return Some(Err((net_id, r)));
    }
    let to_self = key.saddr_be == target.target_be;
    let src = if to_self {
        network(net_id)?.gateway_be
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
    let e = match ct_create(ctx, key, &translated, to_self, flags, net_id, tcp_flags) {
        Ok(e) => e,
        Err(r) => return Some(Err((net_id, r))),
    };
    if to_self {
        hairpin_mids(key, &translated, e, flags, net_id);
    }
    Some(Ok((e, net_id)))
}

/// The two `MID` entries of a container's flow to its own published port
/// (`e`, translated to `translated`): the egress half, from the container
/// to the target before its source is translated. A BPF subprogram: the
/// entries are built in its own frame, not in `publish4`'s, which sits
/// under the flow creation's global function on the deepest call chain.
#[inline(never)]
fn hairpin_mids(key: &CtKey4, translated: &CtKey4, e: *mut CtEntry4, flags: u32, net_id: u32) {
    // SAFETY: map value pointer, valid during the program.
    let reply = unsafe { (*e).peer };
    let mid = CtKey4::new(
        key.saddr_be,
        translated.daddr_be,
        key.sport_be,
        translated.dport_be,
        key.proto,
    );
    let half = |peer: CtKey4| CtEntry4 {
        peer,
        dir: ct_dir::MID,
        flags,
        net_id,
        ..CtEntry4::default()
    };
    ct_put_mid(&mid, &half(reply));
    ct_put_mid(&mid.reversed(), &half(*key));
}
