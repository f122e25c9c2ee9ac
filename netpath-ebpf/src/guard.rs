//! Sanity checks before any policy or translation: which frames a
//! container port carries, and which packets an uplink lets in at all.
//! Together they restore what the kernel's martian and rp_filter checks
//! did for the traffic the fast path now takes, and close the VLAN and
//! ethertype side doors.

use aya_ebpf::{helpers::bpf_skb_vlan_pop, programs::TcContext};
use netpath_common::{DropReason, NetworkInfo, VlanKey};

use crate::{
    TCX_NEXT,
    lookup::{drop, is_local, network, network_of},
    maps::NP_VLANS,
    parse::{self, eth_off, eth_p},
};

/// What a frame a container sends is checked for first, whatever its
/// family: its port's network, its ethertype ([`port_frame`]) and its source
/// MAC. `Ok` with the three, or the verdict: `TCX_NEXT` for the port of a
/// network being taken down, else a counted drop.
#[inline(always)]
pub fn arriving(ctx: &TcContext, net_id: u32) -> Result<(NetworkInfo, u16, [u8; 6]), i32> {
    let Some(net) = network(net_id) else {
        return Err(TCX_NEXT);
    };
    let ty = port_frame(ctx, net_id)?;
    let Ok(mac) = ctx.load::<[u8; 6]>(eth_off::SRC) else {
        return Err(drop(ctx, net_id, DropReason::Malformed));
    };
    Ok((net, ty, mac))
}

/// What a container port carries: IPv4, ARP and IPv6, untagged. `Ok` with
/// the ethertype, or the drop verdict (counted on `net_id`): a VLAN tag at
/// any depth (also one the kernel already took off), any other ethertype.
/// Whether the network has an IPv6 subnet is `port6`'s to ask: it needs the
/// record anyway, so the map is looked up once.
#[inline(always)]
pub fn port_frame(ctx: &TcContext, net_id: u32) -> Result<u16, i32> {
    if parse::stripped_vlan(ctx).is_some() {
        return Err(drop(ctx, net_id, DropReason::Vlan));
    }
    match parse::ethertype(ctx) {
        Some(t @ (eth_p::IP | eth_p::ARP)) => Ok(t),
        Some(t) if parse::is_vlan(t) => Err(drop(ctx, net_id, DropReason::Vlan)),
        Some(t @ eth_p::IPV6) => Ok(t),
        Some(_) => Err(drop(ctx, net_id, DropReason::Ethertype)),
        None => Err(drop(ctx, net_id, DropReason::Malformed)),
    }
}

/// What an uplink does with a frame coming in.
pub enum UplinkFrame {
    /// Untagged IPv4: netpath's to inspect.
    Ipv4,
    /// Untagged IPv6: netpath's to inspect.
    Ipv6,
    /// Not netpath's (ARP, a VLAN the host terminates on
    /// a VLAN device, whose own hooks see it next).
    Host,
    /// Dropped with this verdict.
    Verdict(i32),
}

/// Tagged frames only pass for a VLAN the host has a device for on this
/// uplink (`NP_VLANS`); a priority tag (VLAN 0) is taken off and the frame
/// judged as untagged, as the kernel treats it.
#[inline(always)]
pub fn uplink_frame(ctx: &TcContext, ifindex: u32) -> UplinkFrame {
    match parse::stripped_vlan(ctx) {
        None => {}
        // A priority tag: the kernel treats the frame as untagged, and so
        // does netpath, without the tag (the fast path would hand it to a
        // container as it is).
        // SAFETY: the helper takes the program's skb.
        Some(0) => {
            if unsafe { bpf_skb_vlan_pop(ctx.skb.skb.cast()) } != 0 {
                return UplinkFrame::Verdict(drop(ctx, 0, DropReason::Malformed));
            }
        }
        Some(vid) => {
            let key = VlanKey {
                ifindex,
                vid,
                _pad: 0,
            };
            return if NP_VLANS.get_ptr(key).is_some() {
                UplinkFrame::Host
            } else {
                UplinkFrame::Verdict(drop(ctx, 0, DropReason::Vlan))
            };
        }
    }
    match parse::ethertype(ctx) {
        Some(eth_p::IP) => UplinkFrame::Ipv4,
        Some(eth_p::IPV6) => UplinkFrame::Ipv6,
        // A tag inside the one taken off, or one the kernel left on.
        Some(t) if parse::is_vlan(t) => UplinkFrame::Verdict(drop(ctx, 0, DropReason::Vlan)),
        _ => UplinkFrame::Host,
    }
}

const LIMITED_BROADCAST: u32 = 0xffff_ffff;

/// A source no packet from outside may carry, by its value alone: `Ok`
/// for a plausible one, otherwise the drop verdict (counted on the
/// uplink). 0.0.0.0 is fine only towards the limited broadcast (DHCP, as
/// the kernel allows it). Every packet is checked: it costs no lookup.
#[inline(always)]
pub fn martian_source(ctx: &TcContext, saddr_be: u32, daddr_be: u32) -> Result<(), i32> {
    let s = u32::from_be(saddr_be);
    let martian = match s >> 24 {
        0 => !(s == 0 && u32::from_be(daddr_be) == LIMITED_BROADCAST),
        127 => true,
        // 224.0.0.0/4 (multicast) and 240.0.0.0/4 (reserved, broadcast).
        top => top >= 224,
    };
    if martian {
        return Err(drop(ctx, 0, DropReason::MartianSource));
    }
    Ok(())
}

/// A source that is the host's own or in a managed subnet: from outside,
/// a spoof (counted on the uplink, and on the network it claims). Checked
/// for every packet that belongs to no flow; a packet of a flow carries the
/// source the flow was created with, which passed this check then (no flow
/// has a host or container address as its outside end).
#[inline(always)]
pub fn local_source(ctx: &TcContext, saddr_be: u32) -> Result<(), i32> {
    if let Some(net_id) = network_of(saddr_be) {
        return Err(drop(ctx, net_id, DropReason::LocalSource));
    }
    if is_local(saddr_be) {
        return Err(drop(ctx, 0, DropReason::LocalSource));
    }
    Ok(())
}
