//! Filter rules (`netpath filter`, netpath's DOCKER-USER), checked before a
//! new inbound flow is admitted: a published port from anywhere (outside,
//! a container, a host process), or a routed network's container port
//! reached directly. One trie lookup per rule group in use (at most
//! [`GROUPS`]), whatever the number of rules; the most specific match
//! decides ([`specificity`]), no match allows.

use aya_ebpf::maps::lpm_trie::Key;
use netpath_common::{
    DropReason, counter_kind, counter_scope,
    filter::{EXACT_BITS, FilterData, FilterRule, GROUPS, sel, specificity, verdict},
};

use crate::{
    counters::count,
    maps::{NP_FILTER_INFO, NP_FILTER4},
};

/// What a filter rule can select a new inbound flow by.
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
}

/// The key to look `flow` up in group `group`: the selectors the group
/// names, the rest zero, and the full client address.
#[inline(always)]
fn key(flow: &Flow, group: u8) -> Key<FilterData> {
    let has = |bit: u8| group & bit != 0;
    Key::new(
        EXACT_BITS + 32,
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

/// Whether the rules let `flow` in; a denied flow counts on its rule.
#[inline(always)]
pub fn admit(flow: &Flow) -> Result<(), DropReason> {
    let groups = match NP_FILTER_INFO.get(0) {
        Some(info) if info.groups != 0 => info.groups,
        _ => return Ok(()),
    };
    let mut best: Option<FilterRule> = None;
    let mut best_rank = 0u32;
    let mut g = 0usize;
    while g < GROUPS {
        let group = g as u8;
        // A flow without a host port cannot match a rule that names one.
        if groups & (1 << g) != 0
            && !(group & sel::HOST_PORT != 0 && flow.host_port_be == 0)
            && let Some(r) = NP_FILTER4.get(key(flow, group))
        {
            // +1: a rank of 0 means "nothing matched yet".
            let rank = specificity(r.src_prefix, group) + 1;
            if rank > best_rank {
                best_rank = rank;
                best = Some(*r);
            }
        }
        g += 1;
    }
    let Some(rule) = best else {
        return Ok(());
    };
    count(counter_scope::FILTER, rule.id, counter_kind::FILTER_HITS, 0);
    if rule.verdict == verdict::DENY {
        Err(DropReason::Filter)
    } else {
        Ok(())
    }
}
