//! Events for `netpath monitor` (see `netpath_common::event`): a drop with
//! its reason and the packet's addresses, a new flow with the tuple chosen
//! for it. Nothing is made unless a monitor's heartbeat is fresh and asked
//! for the kind; then at most `RATE_PER_SEC` a second per CPU, and what the
//! limit or a full ring refuses is counted. Each helper is a BPF function
//! of its own (`inline(never)`): the drop sites stay as small as they were.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    maps::ring_buf::RingBufEntry,
    programs::TcContext,
};
use netpath_common::{
    counter_kind, counter_scope,
    ct::{CtKey4, proto},
    ct6::CtKey6,
    event::{self, Event, Event6, kind, monitor, want},
};

use crate::{
    counters::count,
    maps::{NP_EVENT_BUCKET, NP_EVENTS, NP_MONITOR},
    parse::{L3, eth_off, eth_p, ip4_off},
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

/// A record of `T` reserved in the ring, to be written in place (no copy
/// of it on the BPF stack); a full ring is counted as lost.
#[inline(always)]
fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let r = NP_EVENTS.reserve::<T>(0);
    if r.is_none() {
        count(counter_scope::MONITOR, 0, counter_kind::EVENTS_LOST_FULL, 0);
    }
    r
}

/// Copies the 16 bytes at `off` of the packet to `dst` (a ring record's
/// field: no copy on the BPF stack); false when the packet is shorter.
///
/// # Safety
/// `dst` must be valid for 16 bytes of writes.
#[inline(always)]
unsafe fn load16(ctx: &TcContext, off: usize, dst: *mut [u8; 16]) -> bool {
    // SAFETY: the caller's `dst`; the helper checks the packet's bounds.
    unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off as u32, dst.cast(), 16) == 0 }
}

/// Hands a written record to the monitor.
#[inline(always)]
fn submit<T>(r: RingBufEntry<T>) {
    r.submit(0);
    count(counter_scope::MONITOR, 0, counter_kind::EVENTS_SENT, 0);
}

/// A drop of the packet in `ctx` for `reason`: an [`Event6`] for an IPv6
/// frame, an [`Event`] for any other.
#[inline(never)]
pub fn drop_event(ctx: &TcContext, net_id: u32, reason: u8) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !wanted(want::DROP, now) {
        return;
    }
    let ethertype_be = ctx.load::<u16>(eth_off::PROTO).unwrap_or(0);
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if u16::from_be(ethertype_be) == eth_p::IPV6 {
        let Some(mut r) = reserve::<Event6>() else {
            return;
        };
        let p = r.as_mut_ptr();
        let next: u8 = ctx.load(L3 + 6).unwrap_or(0);
        let ports = if matches!(next, proto::TCP | proto::UDP | proto::SCTP) {
            (
                ctx.load::<u16>(L3 + 40).unwrap_or(0),
                ctx.load::<u16>(L3 + 42).unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        // SAFETY: `p` is the reserved record, ours until it is submitted;
        // every field is written.
        unsafe {
            (*p).ts_ns = now;
            (*p).kind = kind::DROP;
            (*p).reason = reason;
            (*p).proto = next;
            (*p)._pad = 0;
            (*p).ifindex = ifindex;
            (*p).net_id = net_id;
            (*p).len = ctx.len();
            // Straight from the packet into the record.
            if !load16(ctx, L3 + 8, &raw mut (*p).saddr) {
                (*p).saddr = [0; 16];
            }
            if !load16(ctx, L3 + 24, &raw mut (*p).daddr) {
                (*p).daddr = [0; 16];
            }
            (*p).nat_saddr = [0; 16];
            (*p).nat_daddr = [0; 16];
            (*p).sport_be = ports.0;
            (*p).dport_be = ports.1;
            (*p).nat_sport_be = 0;
            (*p).nat_dport_be = 0;
        }
        submit(r);
        return;
    }
    let Some(mut r) = reserve::<Event>() else {
        return;
    };
    let p = r.as_mut_ptr();
    let (mut proto_nr, mut saddr_be, mut daddr_be, mut sport_be, mut dport_be) = (0, 0, 0, 0, 0);
    if u16::from_be(ethertype_be) == eth_p::IP {
        let vihl: u8 = ctx.load(L3).unwrap_or(0);
        proto_nr = ctx.load(L3 + ip4_off::TTL + 1).unwrap_or(0);
        saddr_be = ctx.load(L3 + ip4_off::SADDR).unwrap_or(0);
        daddr_be = ctx.load(L3 + ip4_off::DADDR).unwrap_or(0);
        let frag: u16 = ctx.load(L3 + 6).unwrap_or(0);
        // Ports only where the transport header is: not in later fragments.
        let later_fragment = u16::from_be(frag) & 0x1fff != 0;
        if matches!(proto_nr, proto::TCP | proto::UDP | proto::SCTP) && !later_fragment {
            let l4 = L3 + usize::from(vihl & 0x0f) * 4;
            sport_be = ctx.load(l4).unwrap_or(0);
            dport_be = ctx.load(l4 + 2).unwrap_or(0);
        }
    }
    // SAFETY: as above.
    unsafe {
        (*p).ts_ns = now;
        (*p).kind = kind::DROP;
        (*p).reason = reason;
        (*p).proto = proto_nr;
        (*p)._pad = 0;
        (*p).ifindex = ifindex;
        (*p).net_id = net_id;
        (*p).saddr_be = saddr_be;
        (*p).daddr_be = daddr_be;
        (*p).sport_be = sport_be;
        (*p).dport_be = dport_be;
        (*p).nat_saddr_be = 0;
        (*p).nat_daddr_be = 0;
        (*p).nat_sport_be = 0;
        (*p).nat_dport_be = 0;
        (*p).len = ctx.len();
        (*p).ethertype_be = ethertype_be;
        (*p)._pad2 = [0; 6];
    }
    submit(r);
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
    let Some(mut r) = reserve::<Event>() else {
        return;
    };
    r.write(Event {
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
        ethertype_be: eth_p::IP.to_be(),
        ..Event::default()
    });
    submit(r);
}

/// [`flow_event`] for an IPv6 flow, written in place in the ring (the
/// tuples are too big for a copy on the BPF stack).
#[inline(never)]
pub fn flow_event6(orig: &CtKey6, reply: &CtKey6, net_id: u32) {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !wanted(want::FLOW, now) {
        return;
    }
    let Some(mut r) = reserve::<Event6>() else {
        return;
    };
    let p = r.as_mut_ptr();
    // SAFETY: as in `drop_event`.
    unsafe {
        (*p).ts_ns = now;
        (*p).kind = kind::FLOW;
        (*p).reason = 0;
        (*p).proto = orig.proto;
        (*p)._pad = 0;
        (*p).ifindex = 0;
        (*p).net_id = net_id;
        (*p).len = 0;
        (*p).saddr = orig.saddr;
        (*p).daddr = orig.daddr;
        (*p).nat_saddr = reply.daddr;
        (*p).nat_daddr = reply.saddr;
        (*p).sport_be = orig.sport_be;
        (*p).dport_be = orig.dport_be;
        (*p).nat_sport_be = reply.dport_be;
        (*p).nat_dport_be = reply.sport_be;
    }
    submit(r);
}
