//! What reaches a container from outside the host at the container's own
//! address (direct routing, no host address in between), for a packet
//! that belongs to no flow yet. The network's gateway mode decides
//! (Docker 28's `gateway_mode_ipv4`):
//!
//! - `nat`: nothing (replies to the containers' own flows have a flow;
//!   published ports are reached through a host address), except new
//!   flows to published container ports arriving on one of the network's
//!   trusted host interfaces (Docker's `trusted_host_interfaces`);
//! - `routed`: new flows to published container ports, and ICMP echo,
//!   tracked as `INBOUND` flows (after the filter rules);
//! - `nat-unprotected`: everything (Docker's old behaviour), tracked too.
//!
//! In every mode a network's peers (`up --no-masquerade-to CIDR`, such as
//! the pod CIDRs of other nodes) reach its containers at their own
//! addresses; internal networks take nothing from outside in any mode.

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason, GatewayMode, NetworkInfo, TrustedKey,
    ct::{CtEntry4, ct_flags, proto},
    ct6::CtEntry6,
    net_flags,
};

use crate::{
    ct::ct_create,
    filter::{self, Flow},
    flow::packet_key,
    lookup::{is_peer, is_target, is_target6},
    maps::NP_TRUSTED,
    parse::{Ip4, L4, L4Kind},
    parse6::Work6,
};

/// A packet from outside to a container of `net` that can start no flow
/// (a later fragment or an ICMP error about no known flow, a stale entry's
/// packet): why it is dropped, or `Ok` to pass it (`nat-unprotected`).
#[inline(always)]
pub fn untracked(net: &NetworkInfo) -> Result<(), DropReason> {
    if net.flags & net_flags::INTERNAL != 0 {
        return Err(DropReason::Internal);
    }
    match GatewayMode::from_flags(net.flags) {
        GatewayMode::NatUnprotected => Ok(()),
        GatewayMode::Nat => Err(DropReason::DirectRouting),
        GatewayMode::Routed => Err(DropReason::NotPublished),
    }
}

/// Whether the packet's destination is a published container port.
#[inline(always)]
fn to_published_port(ip: &Ip4, l4: &L4) -> bool {
    matches!(ip.proto, proto::TCP | proto::UDP | proto::SCTP)
        && is_target(ip.daddr, l4.dport_be, ip.proto)
}

/// A new packet from outside, arrived on `ifindex`, to container
/// `ip.daddr` of network `net_id`: `Ok` with the `INBOUND` flow it
/// starts, or why it is dropped.
#[inline(always)]
pub fn direct4(
    ctx: &TcContext,
    ip: &Ip4,
    l4: &L4,
    net_id: u32,
    net: &NetworkInfo,
    ifindex: u32,
) -> Result<*mut CtEntry4, DropReason> {
    if net.flags & net_flags::INTERNAL != 0 {
        return Err(DropReason::Internal);
    }
    // A peer of the network (`--no-masquerade-to`: another node's pods)
    // talks to containers at their own addresses, as they talk to it.
    let peer = is_peer(net_id, ip.saddr);
    match GatewayMode::from_flags(net.flags) {
        _ if peer => {}
        GatewayMode::Nat => {
            let trusted = NP_TRUSTED.get_ptr(TrustedKey { net_id, ifindex }).is_some();
            if !(trusted && to_published_port(ip, l4)) {
                return Err(DropReason::DirectRouting);
            }
        }
        // Everything, but tracked: the container's answers must not be
        // masqueraded as if they started flows of their own.
        GatewayMode::NatUnprotected => {}
        GatewayMode::Routed => {
            // An echo request carries its identifier as the source "port".
            let allowed = to_published_port(ip, l4)
                || (ip.proto == proto::ICMP && l4.kind == L4Kind::Ports && l4.sport_be != 0);
            if !allowed {
                return Err(DropReason::NotPublished);
            }
        }
    }
    filter::admit(&Flow {
        src_be: ip.saddr,
        net_id,
        proto: ip.proto,
        host_port_be: 0,
        to_be: ip.daddr,
        to_port_be: l4.dport_be,
        v6: false,
    })?;
    let key = packet_key(ip, l4);
    ct_create(
        ctx,
        &key,
        &key,
        false,
        ct_flags::INBOUND,
        net_id,
        l4.tcp_flags,
    )
}

/// [`direct4`] for IPv6, where peers name IPv4 only and the filter rules
/// that name no address apply: `nat-unprotected` lets everything in,
/// `routed` new flows to published container ports and echo requests,
/// `nat` nothing; each tracked as an `INBOUND` flow.
#[inline(always)]
pub fn direct6(
    ctx: &TcContext,
    w: &Work6,
    net_id: u32,
    net: &NetworkInfo,
) -> Result<*mut CtEntry6, DropReason> {
    if net.flags & net_flags::INTERNAL != 0 {
        return Err(DropReason::Internal);
    }
    let (ip, l4) = (&w.ip, &w.l4);
    match GatewayMode::from_flags(net.flags) {
        GatewayMode::Nat => return Err(DropReason::DirectRouting),
        GatewayMode::NatUnprotected => {}
        GatewayMode::Routed => {
            let echo = ip.proto == proto::ICMPV6 && l4.kind == L4Kind::Ports && l4.sport_be != 0;
            let published = matches!(ip.proto, proto::TCP | proto::UDP | proto::SCTP)
                && is_target6(&ip.daddr, l4.dport_be, ip.proto);
            if !(echo || published) {
                return Err(DropReason::NotPublished);
            }
        }
    }
    filter::admit(&Flow {
        src_be: 0,
        net_id,
        proto: ip.proto,
        host_port_be: 0,
        to_be: 0,
        to_port_be: l4.dport_be,
        v6: true,
    })?;
    ct_create(
        ctx,
        &w.key,
        &w.key,
        false,
        ct_flags::INBOUND,
        net_id,
        l4.tcp_flags,
    )
}
