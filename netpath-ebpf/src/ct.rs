//! The BPF conntrack table: lookups, flow creation with a claimed external
//! tuple, per-direction accounting and the TCP state machine.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use netpath_common::{
    Config, DropReason,
    ct::{CtEntry4, CtKey4, TOUCH_NS, TcpState, ct_dir, ct_flags, proto, tcp_transition},
};

use crate::maps::{NP_CONFIG, NP_CT4};

const EEXIST: i32 = -17;
/// Candidate external ports tried before a flow counts as exhausted (the
/// container's own port, then ports from a random start in the range).
const PORT_TRIES: u32 = 32;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The shared configuration; defaults until the loader has written it.
#[inline(always)]
pub fn config() -> Config {
    match NP_CONFIG.get(0) {
        Some(c) if !c.is_unset() => *c,
        _ => Config::defaults(),
    }
}

#[inline(always)]
pub fn ct_lookup4(key: &CtKey4) -> Option<*mut CtEntry4> {
    NP_CT4.get_ptr_mut(key)
}

/// `*ptr += v` as one BPF atomic add (the bpfel target has no Rust atomics).
#[inline(always)]
unsafe fn atomic_add(ptr: *mut u64, v: u64) {
    // SAFETY: the caller passes a valid, 8-byte aligned map value field.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) ptr, in(reg) v);
    }
}

/// Counts a packet of `len` bytes on the entry; returns true when its
/// `last_seen_ns` was refreshed (at most once per [`TOUCH_NS`]), which is
/// when callers check the partner entry.
#[inline(always)]
pub fn ct_touch4(e: *mut CtEntry4, len: u32, now: u64) -> bool {
    // SAFETY: `e` points into a map value that stays valid while the program
    // runs; counters are updated atomically since several CPUs may share a flow.
    unsafe {
        atomic_add(&raw mut (*e).packets, 1);
        atomic_add(&raw mut (*e).bytes, u64::from(len));
        if now.wrapping_sub((*e).last_seen_ns) >= TOUCH_NS {
            (*e).last_seen_ns = now;
            return true;
        }
    }
    false
}

/// Applies a TCP packet's flags to the flow's state, kept on the ORIGINAL
/// entry.
#[inline(always)]
pub fn ct_tcp_update4(orig: *mut CtEntry4, reply: bool, flags: u8) {
    // SAFETY: see `ct_touch4`; concurrent updates race benignly (last wins).
    unsafe {
        let (state, f) = tcp_transition(
            TcpState::from_u8((*orig).state),
            (*orig).flags,
            reply,
            flags,
        );
        if state as u8 != (*orig).state {
            (*orig).state = state as u8;
        }
        if f != (*orig).flags {
            (*orig).flags = f;
        }
    }
}

/// Field-wise tuple comparison (a derived `==` becomes a `bcmp` call).
#[inline(always)]
pub fn same_key(a: &CtKey4, b: &CtKey4) -> bool {
    a.saddr_be == b.saddr_be
        && a.daddr_be == b.daddr_be
        && a.sport_be == b.sport_be
        && a.dport_be == b.dport_be
        && a.proto == b.proto
}

/// The entry for the other direction of the flow whose entry `e` is keyed
/// by `key`. `nat_addr_be`/`nat_port_be` say what each direction writes on
/// the side its NAT type changes: source NAT flows write the source going
/// out (`U:nport`) and the destination coming back (`C:cport`); destination
/// NAT flows write the destination going in (`T:tport`) and the source
/// coming back (`H:hport`). (The full translated tuple is always the
/// partner's key reversed.)
#[inline(always)]
fn partner_entry(key: &CtKey4, e: &CtEntry4) -> CtEntry4 {
    let to_reply = e.dir == ct_dir::ORIGINAL;
    let dnat = e.flags & ct_flags::DNAT != 0;
    // Which end of `key` the partner writes: for source NAT the partner of
    // ORIGINAL restores the key's source, the partner of REPLY writes the
    // key's destination; destination NAT the other way round.
    let key_src = to_reply != dnat;
    CtEntry4 {
        peer: *key,
        nat_addr_be: if key_src { key.saddr_be } else { key.daddr_be },
        nat_port_be: if key_src { key.sport_be } else { key.dport_be },
        dir: if to_reply {
            ct_dir::REPLY
        } else {
            ct_dir::ORIGINAL
        },
        // A re-created ORIGINAL entry belongs to a flow seen both ways; the
        // next packets refine its state.
        state: if !to_reply && key.proto == proto::TCP {
            TcpState::Established as u8
        } else {
            0
        },
        flags: e.flags,
        net_id: e.net_id,
        created_ns: e.created_ns,
        last_seen_ns: e.last_seen_ns,
        packets: 0,
        bytes: 0,
    }
}

/// Makes sure the partner of an entry exists (LRU may have evicted it).
/// Returns false when the partner's key now belongs to another flow, in which
/// case this entry is removed and the caller starts over.
#[inline(always)]
pub fn ct_keep_partner4(key: &CtKey4, e: *mut CtEntry4) -> bool {
    // SAFETY: see `ct_touch4`.
    let e = unsafe { *e };
    if let Some(p) = ct_lookup4(&e.peer) {
        // SAFETY: as above.
        if same_key(unsafe { &(*p).peer }, key) {
            return true;
        }
    } else {
        match NP_CT4.insert(e.peer, partner_entry(key, &e), BPF_NOEXIST as u64) {
            Ok(()) => return true,
            Err(err) if err == EEXIST => {}
            // Could not write it now: try again on the next refresh.
            Err(_) => return true,
        }
    }
    let _ = NP_CT4.remove(key);
    false
}

/// Creates a flow whose ORIGINAL packets (`orig`, as they arrive) leave as
/// `translated`. Its REPLY key, `translated` reversed, is inserted first
/// with `BPF_NOEXIST`: that claims the tuple replies will carry. With
/// `vary_sport` (source NAT) the translated source port may change: the
/// original port first, then 31 ports from a random start in the configured
/// range. Then the ORIGINAL entry is inserted; when another CPU created the
/// same flow meanwhile, the REPLY entry is removed again and the winner's
/// flow is used.
#[inline(always)]
pub fn ct_create4(
    orig: &CtKey4,
    translated: &CtKey4,
    vary_sport: bool,
    flags: u32,
    net_id: u32,
    now: u64,
) -> Result<*mut CtEntry4, DropReason> {
    let has_ports = match orig.proto {
        proto::TCP | proto::UDP => true,
        proto::ICMP => translated.sport_be != 0,
        _ => false,
    };
    let mut reply = translated.reversed();
    let dnat = flags & ct_flags::DNAT != 0;
    let mut oentry = CtEntry4 {
        peer: reply,
        nat_addr_be: if dnat {
            translated.daddr_be
        } else {
            translated.saddr_be
        },
        nat_port_be: if dnat {
            translated.dport_be
        } else {
            translated.sport_be
        },
        dir: ct_dir::ORIGINAL,
        state: 0,
        flags,
        net_id,
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    };
    let cfg = config();
    let (min, max) = if cfg.nat_port_min <= cfg.nat_port_max {
        (u32::from(cfg.nat_port_min), u32::from(cfg.nat_port_max))
    } else {
        (u32::from(cfg.nat_port_max), u32::from(cfg.nat_port_min))
    };
    let span = max - min + 1;
    if span == 0 {
        // Unreachable (min <= max); tells the compiler `%` cannot trap.
        return Err(DropReason::NatPortsExhausted);
    }
    // SAFETY: no preconditions.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let tries = if vary_sport && has_ports {
        PORT_TRIES
    } else {
        1
    };
    let mut claimed = false;
    let mut i: u32 = 0;
    while i < tries {
        if i > 0 {
            let port = min + (start + i) % span;
            reply.dport_be = (port as u16).to_be();
        }
        match NP_CT4.insert(reply, partner_entry(orig, &oentry), BPF_NOEXIST as u64) {
            Ok(()) => {
                claimed = true;
                break;
            }
            Err(err) if err == EEXIST => {}
            Err(_) => return Err(DropReason::CtInsertFailed),
        }
        i += 1;
    }
    if !claimed {
        return Err(DropReason::NatPortsExhausted);
    }
    oentry.peer = reply;
    if !dnat {
        oentry.nat_port_be = reply.dport_be;
    }
    if NP_CT4.insert(orig, oentry, BPF_NOEXIST as u64).is_err() {
        // Lost a race with another CPU creating the same flow: give our
        // claimed tuple back and use the winner's entry.
        let _ = NP_CT4.remove(reply);
    }
    ct_lookup4(orig).ok_or(DropReason::CtInsertFailed)
}
