//! Per-CPU packet and byte counters keyed by (scope, id, kind).

use aya_ebpf::bindings::BPF_NOEXIST;
use netpath_common::{Counter, CounterKey};

use crate::maps::NP_COUNTERS;

/// Adds one packet of `bytes` to the counter `(scope, id, kind)`, creating it
/// on first use. A full counter map loses the update; it never drops traffic.
// A global BPF function, not inlined: called from dozens of places, its
// key and zero value would otherwise take stack slots at each, and the
// verifier checks it once, not again at every call in every state.
#[inline(always)]
pub fn count(scope: u16, id: u32, kind: u16, bytes: u32) {
    netpath_count(u32::from(scope), id, u32::from(kind), bytes);
}

/// [`count`] as a global function (its arguments widened to 32 bits).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_count(scope: u32, id: u32, kind: u32, bytes: u32) -> i32 {
    add(scope as u16, id, kind as u16, 1, bytes);
    0
}

/// Adds `packets` packets of `bytes` in all (a sweep pass's removals, once
/// at its end).
#[inline(never)]
pub fn count_many(scope: u16, id: u32, kind: u16, packets: u32, bytes: u32) {
    add(scope, id, kind, packets, bytes);
}

#[inline(always)]
fn add(scope: u16, id: u32, kind: u16, packets: u32, bytes: u32) {
    let key = CounterKey { id, scope, kind };
    let ptr = match NP_COUNTERS.get_ptr_mut(key) {
        Some(ptr) => ptr,
        None => {
            // Another CPU may win the insert: NOEXIST failing is fine, the
            // lookup below then finds its (per-CPU, so still ours) slot.
            let _ = NP_COUNTERS.insert(key, Counter::default(), BPF_NOEXIST as u64);
            match NP_COUNTERS.get_ptr_mut(key) {
                Some(ptr) => ptr,
                None => return,
            }
        }
    };
    // SAFETY: per-CPU value, only this CPU writes it while this program runs.
    unsafe {
        (*ptr).packets += u64::from(packets);
        (*ptr).bytes += u64::from(bytes);
    }
}
