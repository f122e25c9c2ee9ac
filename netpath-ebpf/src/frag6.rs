//! IPv6 fragments, as `frag` does for IPv4: only a datagram's first
//! fragment carries the transport header, so the uplink records its ports
//! (`NP_FRAG6`, keyed by source, destination, identification and protocol)
//! for the later fragments coming in, which then follow the first one's
//! flow to its container (and pass its port, `flow_key`). Leaving, the
//! uplink records a container's first fragments too, so its later ones
//! get their own flow's source (a published port's host address, the
//! masquerade address, or the container's own on a routed network); one
//! of no recorded datagram gets the uplink's address on a masquerading
//! network (`nat6`). Fragments that overtake their first fragment find
//! nothing.

// The map calls take `&w.frag` (a pointer into the per-CPU `NP_WORK6`)
// rather than the 40-byte key by value, which would be copied to the stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::programs::TcContext;
use netpath_common::{
    ct::{FragPorts, ct_dir, ct_flags},
    ct6::CtEntry6,
};

use crate::{
    ct::ct_lookup,
    maps::NP_FRAG6,
    parse6::{Work6, same6},
    rewrite::{Side, set_addr6},
};

/// Fills `w.frag` with the datagram `w.ip` belongs to.
#[inline(always)]
fn frag_key(w: &mut Work6) {
    w.frag.saddr = w.ip.saddr;
    w.frag.daddr = w.ip.daddr;
    w.frag.id_be = w.ip.frag_id_be;
    w.frag.proto = w.ip.proto;
    w.frag._pad = [0; 3];
}

/// The ports its first fragment recorded for the datagram of `w.ip`, and
/// so its flow's key in `w.key`.
#[inline(always)]
pub fn flow_key(w: &mut Work6) -> Option<FragPorts> {
    frag_key(w);
    // SAFETY: map value pointer, read at once.
    let ports = unsafe { *NP_FRAG6.get_ptr(&w.frag)? };
    w.key.saddr = w.ip.saddr;
    w.key.daddr = w.ip.daddr;
    w.key.sport_be = ports.sport_be;
    w.key.dport_be = ports.dport_be;
    w.key.proto = w.ip.proto;
    w.key._pad = [0; 7];
    Some(ports)
}

/// A later fragment coming in through an uplink: its destination is
/// written back like its first fragment's. Returns `None` when it belongs
/// to no known flow, otherwise whether the flow is a published port's. A
/// BPF subprogram (its own stack frame).
#[inline(never)]
pub fn later_fragment6(ctx: &TcContext, w: &mut Work6) -> Option<bool> {
    let ports = flow_key(w)?;
    let e: *mut CtEntry6 = ct_lookup(&w.key)?;
    // SAFETY: map value pointer, valid during the program; read at once.
    let flags = unsafe { (*e).flags };
    // SAFETY: as above. The flow's packets this way become `peer` reversed.
    w.translated = unsafe { (*e).peer };
    let to = &w.translated.saddr;
    if !same6(to, &w.ip.daddr) {
        set_addr6(ctx, None, Side::Dst, &w.ip.daddr, to).ok()?;
    }
    follow(w, ports);
    Some(flags & ct_flags::DNAT != 0)
}

/// A first fragment of a flow's datagram coming in through an uplink, its
/// flow's entry `e` (already applied): records its ports for the later
/// fragments, under the key they arrive with and the one the uplink writes
/// them back to.
#[inline(never)]
pub fn first_fragment6(w: &mut Work6, e: *mut CtEntry6) {
    let Some(ports) = record(w) else {
        return;
    };
    // SAFETY: map value pointer, valid during the program.
    w.translated = unsafe { (*e).peer };
    follow(w, ports);
}

/// After the uplink wrote a fragment back to `w.translated` reversed (the
/// flow's `peer`), the datagram's later fragments carry the container's
/// address: their ports are recorded under that key too, for the port.
#[inline(always)]
fn follow(w: &mut Work6, ports: FragPorts) {
    let (to_daddr, to_dport) = (&w.translated.saddr, w.translated.sport_be);
    if same6(to_daddr, &w.frag.daddr) && to_dport == ports.dport_be {
        return;
    }
    w.frag.daddr = *to_daddr;
    let moved = FragPorts {
        sport_be: ports.sport_be,
        dport_be: to_dport,
    };
    let _ = NP_FRAG6.insert(&w.frag, &moved, 0);
}

/// A container's first fragment leaving through an uplink, or delivered
/// at a port that wrote its source (its flow known and applied): records
/// its ports for the later fragments, under the key they arrive with
/// there. A BPF subprogram (its own stack frame).
#[inline(never)]
pub fn first_fragment_out6(w: &mut Work6) {
    record(w);
}

/// Records a first fragment's ports under its datagram's key; `None` for
/// a packet that is no first fragment of several. An atomic fragment has
/// no others to wait for: recording it would only let anyone who may
/// start a flow push real datagrams' records out of the table.
#[inline(always)]
fn record(w: &mut Work6) -> Option<FragPorts> {
    if !w.ip.fragment || w.ip.atomic {
        return None;
    }
    frag_key(w);
    let ports = FragPorts {
        sport_be: w.l4.sport_be,
        dport_be: w.l4.dport_be,
    };
    let _ = NP_FRAG6.insert(&w.frag, &ports, 0);
    Some(ports)
}

/// A container's later fragment of a published port's flow at its
/// bridge, which translated its first fragment (`first_fragment_both6`):
/// written as that one was. `None` when it belongs to no recorded datagram
/// or to no flow the bridge translates. A BPF subprogram (its own stack
/// frame).
#[inline(never)]
pub fn later_fragment_bridge6(ctx: &TcContext, w: &mut Work6) -> Option<()> {
    flow_key(w)?;
    let e: *mut CtEntry6 = ct_lookup(&w.key)?;
    // SAFETY: map value pointer, valid during the program; read at once.
    let (flags, dir) = unsafe { ((*e).flags, (*e).dir) };
    if flags & ct_flags::DNAT == 0 || dir == ct_dir::MID {
        return None;
    }
    to_peer6(ctx, w, e, Side::Dst)
}

/// Writes one half (`side`) of a later fragment of `e`'s flow as the
/// flow's packets this way are written, to the flow's `peer` reversed: the
/// destination at an ingress hook (the bridge), the source at an egress
/// one (the port delivering it). No transport header to fix.
#[inline(always)]
pub fn to_peer6(ctx: &TcContext, w: &mut Work6, e: *mut CtEntry6, side: Side) -> Option<()> {
    // SAFETY: map value pointer, valid during the program.
    w.translated = unsafe { (*e).peer };
    let (now, to) = match side {
        Side::Dst => (&w.ip.daddr, &w.translated.saddr),
        Side::Src => (&w.ip.saddr, &w.translated.daddr),
    };
    if !same6(now, to) {
        set_addr6(ctx, None, side, now, to).ok()?;
    }
    Some(())
}

/// A container's first fragment of a published port's flow whose
/// destination half its bridge just wrote (`e`, applied): records its
/// ports for the later fragments under the key they arrive with, and under
/// the one they leave the bridge with, for the port that delivers them
/// (where the source half is written, `to_peer6`). A BPF subprogram (its
/// own stack frame).
#[inline(never)]
pub fn first_fragment_both6(w: &mut Work6, e: *mut CtEntry6) {
    let Some(ports) = record(w) else {
        return;
    };
    // SAFETY: map value pointer, valid during the program.
    w.translated = unsafe { (*e).peer };
    follow(w, ports);
}

/// A container's later fragment leaving through an uplink: its source is
/// written as its first fragment's was (the flow's packets this way leave
/// as `peer` reversed). Returns `None` when it belongs to no recorded
/// datagram, else whether it was written. A BPF subprogram (its own stack
/// frame).
#[inline(never)]
pub fn later_fragment_out6(ctx: &TcContext, w: &mut Work6) -> Option<bool> {
    flow_key(w)?;
    let e: *mut CtEntry6 = ct_lookup(&w.key)?;
    // SAFETY: map value pointer, valid during the program; read at once.
    w.translated = unsafe { (*e).peer };
    let from = &w.translated.daddr;
    if same6(from, &w.ip.saddr) {
        return Some(true);
    }
    Some(set_addr6(ctx, None, Side::Src, &w.ip.saddr, from).is_ok())
}
