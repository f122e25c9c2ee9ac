//! Events for `netpath monitor` (see `netpath_common::event`): a drop with
//! its reason and the packet's addresses, a new flow with the tuple chosen
//! for it. Nothing is made unless a monitor's heartbeat is fresh and asked
//! for the kind; then at most `RATE_PER_SEC` a second per CPU, and what the
//! limit or a full ring refuses is counted. Each helper is a BPF function
//! of its own (`inline(never)`): the drop sites stay as small as they were.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use netpath_common::{
    counter_kind, counter_scope,
    ct::{CtKey4, proto},
    event::{self, Event, kind, monitor, want},
};

use crate::{
    counters::count,
    maps::{NP_EVENT_BUCKET, NP_EVENTS, NP_MONITOR},
    parse::{L3, eth_off, ip4_off},
};

/// Whether a monitor listens for `bits` now, and the rate limit lets one
/// more event through (counted when it does not).
#[inline(always)]
fn wanted(bits: u64, now: u64) -> bool {
    let (Some(hb), Some(mask)) = (
        NP_MONITOR.get(monitor::HEARTBEAT),
        NP_MONITOR.get(monitor::MASK),
    ) else {
        return false;
    };
    if *mask & bits == 0 || now.saturating_sub(*hb) > event::HEARTBEAT_NS {
        return false;
    }
    let Some(b) = NP_EVENT_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, only this CPU touches it while this program runs.
    if !event::take(unsafe { &mut *b }, now) {
        count(counter_scope::MONITOR, 0, counter_kind::EVENTS_LOST_RATE, 0);
        return false;
    }
    true
}

/// Writes `e` to the ring (counted as sent, or lost when it is full).
#[inline(always)]
fn emit(e: &Event) {
    match NP_EVENTS.output::<Event>(e, 0) {
        Ok(()) => count(counter_scope::MONITOR, 0, counter_kind::EVENTS_SENT, 0),
        Err(_) => count(counter_scope::MONITOR, 0, counter_kind::EVENTS_LOST_FULL, 0),
    }
}

/// A drop of the packet in `ctx` for `reason`.
#[inline(never)]
pub fn drop_event(ctx: &TcContext, net_id: u32, reason: u8) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !wanted(want::DROP, now) {
        return;
    }
    let mut e = Event {
        ts_ns: now,
        kind: kind::DROP,
        reason,
        net_id,
        len: ctx.len(),
        // SAFETY: the context pointer is valid for the program's lifetime.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        ..Event::default()
    };
    e.ethertype_be = ctx.load::<u16>(eth_off::PROTO).unwrap_or(0);
    if u16::from_be(e.ethertype_be) == crate::parse::eth_p::IP {
        let vihl: u8 = ctx.load(L3).unwrap_or(0);
        e.proto = ctx.load(L3 + ip4_off::TTL + 1).unwrap_or(0);
        e.saddr_be = ctx.load(L3 + ip4_off::SADDR).unwrap_or(0);
        e.daddr_be = ctx.load(L3 + ip4_off::DADDR).unwrap_or(0);
        let frag: u16 = ctx.load(L3 + 6).unwrap_or(0);
        // Ports only where the transport header is: not in later fragments.
        let later_fragment = u16::from_be(frag) & 0x1fff != 0;
        if matches!(e.proto, proto::TCP | proto::UDP | proto::SCTP) && !later_fragment {
            let l4 = L3 + usize::from(vihl & 0x0f) * 4;
            e.sport_be = ctx.load(l4).unwrap_or(0);
            e.dport_be = ctx.load(l4 + 2).unwrap_or(0);
        }
    }
    emit(&e);
}

/// A new flow: its original tuple and its REPLY key (`reply`), whose
/// reverse is the tuple the flow's packets leave with.
#[inline(never)]
pub fn flow_event(orig: &CtKey4, reply: &CtKey4, net_id: u32) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !wanted(want::FLOW, now) {
        return;
    }
    emit(&Event {
        ts_ns: now,
        kind: kind::FLOW,
        proto: orig.proto,
        net_id,
        saddr_be: orig.saddr_be,
        daddr_be: orig.daddr_be,
        sport_be: orig.sport_be,
        dport_be: orig.dport_be,
        nat_saddr_be: reply.daddr_be,
        nat_daddr_be: reply.saddr_be,
        nat_sport_be: reply.dport_be,
        nat_dport_be: reply.sport_be,
        ethertype_be: crate::parse::eth_p::IP.to_be(),
        ..Event::default()
    });
}
