//! Filter rules (`netpath filter`, netpath's DOCKER-USER), checked before a
//! new inbound flow is admitted: a published port from anywhere (outside,
//! a container, a host process), or a routed network's container port
//! reached directly. One trie lookup per rule group in use (at most
//! [`GROUPS`]), whatever the number of rules; the most specific match
//! decides ([`specificity`]), no match allows.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_loop, maps::lpm_trie::Key};
use netpath_common::{
    DropReason, counter_kind, counter_scope,
    filter::{EXACT_BITS, FilterData, FilterRule, GROUPS, sel, specificity, verdict},
};

use crate::{
    counters::count,
    maps::{NP_FILTER_INFO, NP_FILTER4},
};

/// What a filter rule can select a new inbound flow by.
#[derive(Clone, Copy)]
pub struct Flow {
    /// The client's address.
    pub src_be: u32,
    pub net_id: u32,
    pub proto: u8,
    /// The published host port it came through; 0 when it came straight to
    /// the container.
    pub host_port_be: u16,
    /// The container's address and port.
    pub to_be: u32,
    pub to_port_be: u16,
    /// An IPv6 flow: its addresses are not in `src_be` and `to_be` (both
    /// 0), so only rules that name neither a client nor a container
    /// address apply (selecting by network, host port, or container port).
    pub v6: bool,
}

/// The key to look `flow` up in group `group`: the selectors the group
/// names, the rest zero, and the full client address (none for IPv6, so
/// only a rule for every source matches).
#[inline(always)]
fn key(flow: &Flow, group: u8) -> Key<FilterData> {
    let has = |bit: u8| group & bit != 0;
    Key::new(
        EXACT_BITS + if flow.v6 { 0 } else { 32 },
        FilterData {
            group,
            proto: if has(sel::HOST_PORT) { flow.proto } else { 0 },
            host_port_be: if has(sel::HOST_PORT) {
                flow.host_port_be
            } else {
                0
            },
            net_id: if has(sel::NETWORK) { flow.net_id } else { 0 },
            to_be: if has(sel::TO) { flow.to_be } else { 0 },
            to_port_be: if has(sel::TO_PORT) {
                flow.to_port_be
            } else {
                0
            },
            _pad: 0,
            src_be: flow.src_be,
        },
    )
}

/// The search over the rule groups: the flow, the groups in use, and the
/// best match so far.
#[repr(C)]
struct Search {
    flow: Flow,
    groups: u32,
    best_rank: u32,
    best: FilterRule,
}

/// Whether the rules let `flow` in; a denied flow counts on its rule.
#[inline(always)]
pub fn admit(flow: &Flow) -> Result<(), DropReason> {
    let groups = match NP_FILTER_INFO.get(0) {
        Some(info) if info.groups != 0 => info.groups,
        _ => return Ok(()),
    };
    let mut s = Search {
        flow: *flow,
        groups,
        // 0: nothing matched yet (ranks start at 1).
        best_rank: 0,
        best: FilterRule::default(),
    };
    // One callback verified once, rather than the verifier walking every
    // combination of matches across the groups.
    // SAFETY: the callback has the signature the helper expects and `s`
    // outlives the call.
    unsafe {
        bpf_loop(
            GROUPS as u32,
            visit_group as *mut c_void,
            (&raw mut s).cast(),
            0,
        );
    }
    if s.best_rank == 0 {
        return Ok(());
    }
    count(
        counter_scope::FILTER,
        s.best.id,
        counter_kind::FILTER_HITS,
        0,
    );
    if s.best.verdict == verdict::DENY {
        Err(DropReason::Filter)
    } else {
        Ok(())
    }
}

/// `bpf_loop`'s callback: group `i`. Returns 0 (go on).
#[inline(never)]
unsafe extern "C" fn visit_group(i: u64, s: *mut c_void) -> i64 {
    // SAFETY: the helper passes our `Search`.
    let s = unsafe { &mut *(s as *mut Search) };
    let group = (i & (GROUPS as u64 - 1)) as u8;
    // A flow without a host port cannot match a rule that names one, nor
    // an IPv6 flow one that names a container address.
    if s.groups & (1u32 << group) == 0
        || (group & sel::HOST_PORT != 0 && s.flow.host_port_be == 0)
        || (group & sel::TO != 0 && s.flow.v6)
    {
        return 0;
    }
    if let Some(r) = NP_FILTER4.get(key(&s.flow, group)) {
        let rank = specificity(r.src_prefix, group) + 1;
        if rank > s.best_rank {
            s.best_rank = rank;
            s.best = *r;
        }
    }
    0
}
