//! IP fragments. Only a datagram's first fragment carries the transport
//! header, so its ports are recorded (`NP_FRAG4`, keyed by the datagram)
//! for the later fragments, which then follow the first one's flow.
//! Fragments that overtake their first fragment find nothing.

use aya_ebpf::programs::TcContext;
use netpath_common::ct::{CtEntry4, CtKey4, FragKey4, FragPorts, ct_flags};

use crate::{
    ct::ct_lookup,
    maps::NP_FRAG4,
    parse::{Ip4, L4},
    rewrite::{Phase, translate4},
};

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

/// A later fragment (no transport header): the ports come from its first
/// fragment; the addresses are rewritten like the first fragment's.
/// Returns `None` when the fragment belongs to no known flow, otherwise
/// whether the flow is a published port's.
#[inline(always)]
pub fn later_fragment4(ctx: &TcContext, ip: &Ip4, phase: Phase) -> Option<bool> {
    let fk = frag_key(ip);
    // SAFETY: map value pointer, valid during the program.
    let ports = unsafe { *NP_FRAG4.get_ptr(fk)? };
    let key = CtKey4::new(ip.saddr, ip.daddr, ports.sport_be, ports.dport_be, ip.proto);
    let e = ct_lookup(&key)?;
    // SAFETY: as above.
    let (to, flags) = unsafe { ((*e).peer.reversed(), (*e).flags) };
    let _ = translate4(ctx, ip, None, &to, phase);
    if phase == Phase::Ingress {
        follow_fragments(&fk, ports.sport_be, ports.dport_be, &to);
    }
    Some(flags & ct_flags::DNAT != 0)
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
        let _ = NP_FRAG4.insert(moved, ports, 0);
    }
}

/// Records the ports of a first fragment for its later fragments, as they
/// will look at the next hook too (after this hook's rewrite).
#[inline(always)]
pub fn first_fragment4(ip: &Ip4, l4: &L4, e: *mut CtEntry4, phase: Phase) {
    if !ip.is_fragment() {
        return;
    }
    let fk = frag_key(ip);
    let ports = FragPorts {
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
    };
    let _ = NP_FRAG4.insert(fk, ports, 0);
    if phase == Phase::Ingress {
        // SAFETY: map value pointer, valid during the program.
        let to = unsafe { (*e).peer }.reversed();
        follow_fragments(&fk, l4.sport_be, l4.dport_be, &to);
    }
}
