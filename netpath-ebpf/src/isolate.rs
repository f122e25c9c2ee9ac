//! Isolation between networks (replaces DOCKER-ISOLATION-STAGE-1/2), ICC
//! (`-i br -o br -j DROP` for `--icc=false`) and internal networks. Every
//! decision costs the same few map lookups whatever the number of
//! networks: the destination's network comes from one longest-prefix-match
//! lookup.

use netpath_common::{
    DropReason, MacKey, NetworkInfo, net_flags,
    v6::{NetworkInfo6, is_link_local, is_multicast, is_unspecified},
};

use crate::{
    lookup::{network, network_of, network6, network6_of},
    maps::NP_MACS,
    parse6::same6,
};

/// Where an allowed container packet is headed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A neighbour's address on the sender's own network.
    Neighbour,
    /// Anything else allowed: a gateway (a host address), outside.
    Elsewhere,
}

/// Whether a container of network `net_id` may send to `daddr`: its own
/// gateway always; its own subnet unless ICC is off; another managed
/// subnet never (its gateway, a host address, is fine); outside the
/// managed subnets unless the network is internal.
#[inline(always)]
pub fn destination(net: &NetworkInfo, net_id: u32, daddr: u32) -> Result<Destination, DropReason> {
    let internal = net.flags & net_flags::INTERNAL != 0;
    if daddr == net.gateway_be {
        return Ok(Destination::Elsewhere);
    }
    match network_of(daddr) {
        Some(id) if id == net_id => {
            if net.flags & net_flags::NO_ICC != 0 {
                Err(DropReason::Icc)
            } else {
                Ok(Destination::Neighbour)
            }
        }
        _ if internal => Err(DropReason::Internal),
        Some(other) => match network(other) {
            // Another bridge's gateway is a host address.
            Some(o) if o.gateway_be == daddr => Ok(Destination::Elsewhere),
            _ => Err(DropReason::Isolation),
        },
        None => Ok(Destination::Elsewhere),
    }
}

/// Whether a container of `net` may receive from `saddr`: an internal
/// network only from its own subnet.
#[inline(always)]
pub fn source(net: &NetworkInfo, saddr: u32) -> Result<(), DropReason> {
    if net.flags & net_flags::INTERNAL != 0 && !net.contains_be(saddr) {
        return Err(DropReason::Internal);
    }
    Ok(())
}

/// Whether a container of network `net_id` may send IPv6 to `daddr` in a
/// frame for `dst_mac`. The MAC tells where the frame goes on the bridge,
/// for link-local destinations too: the bridge's own (the host, which may
/// route it on) or a neighbour's (ICC). Multicast stays on the link (ND,
/// MLD), as IPv4 broadcast does. Through the host: its own gateway, any
/// link-local address (the bridge's), another network's gateway, its own
/// subnet (hairpin, unless ICC is off); another network's containers
/// never; beyond the host unless the network is internal (the uplink's
/// egress masquerades or tracks it). Verified as the global function
/// [`netpath_isolate6`].
#[inline(always)]
fn destination6(
    net: &NetworkInfo,
    net6: &NetworkInfo6,
    net_id: u32,
    daddr: &[u8; 16],
    dst_mac: &[u8; 6],
) -> Result<(), DropReason> {
    let no_icc = net.flags & net_flags::NO_ICC != 0;
    // A multicast address in a multicast frame (33:33:…). One in a frame
    // for a single neighbour's MAC is a unicast in disguise: judged by
    // the MAC as any other.
    if is_multicast(daddr) && dst_mac[0] & 1 == 1 {
        return Ok(());
    }
    let ours = net6.contains(daddr) || is_link_local(daddr);
    if !to_bridge(net, dst_mac) {
        // A neighbour on the bridge, which routes nothing on.
        return match (no_icc, ours) {
            (true, _) => Err(DropReason::Icc),
            (false, true) => Ok(()),
            (false, false) => Err(DropReason::Isolation),
        };
    }
    if is_link_local(daddr) || same6(daddr, &net6.gateway) {
        return Ok(());
    }
    match network6_of(daddr) {
        Some(id) if id == net_id => {
            if no_icc {
                Err(DropReason::Icc)
            } else {
                Ok(())
            }
        }
        _ if net.flags & net_flags::INTERNAL != 0 => Err(DropReason::Internal),
        Some(other) => match network6(other) {
            Some(o) if same6(&o.gateway, daddr) => Ok(()),
            _ => Err(DropReason::Isolation),
        },
        None => Ok(()),
    }
}

/// [`destination6`] as a global function, verified once on its own (inline,
/// once for every state the port's checks reached it in): 0, or the
/// number of the `DropReason`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_isolate6(
    net: *const NetworkInfo,
    net6: *const NetworkInfo6,
    net_id: u32,
    daddr: *const [u8; 16],
    dst_mac: *const [u8; 6],
) -> i32 {
    // SAFETY: null or the caller's values, valid for the call.
    let (Some(net), Some(net6), Some(daddr), Some(dst_mac)) = (unsafe {
        (
            net.as_ref(),
            net6.as_ref(),
            daddr.as_ref(),
            dst_mac.as_ref(),
        )
    }) else {
        return i32::from(DropReason::Malformed as u16);
    };
    match destination6(net, net6, net_id, daddr, dst_mac) {
        Ok(()) => 0,
        Err(reason) => i32::from(reason as u16),
    }
}

/// Whether a frame for `dst_mac` goes up to `net`'s bridge (the host), not
/// to a neighbour on it.
#[inline(always)]
pub fn to_bridge(net: &NetworkInfo, dst_mac: &[u8; 6]) -> bool {
    let key = MacKey {
        mac: *dst_mac,
        _pad: [0; 2],
    };
    // SAFETY: the value is read at once.
    unsafe { NP_MACS.get(key) }.is_some_and(|o| *o == net.bridge_ifindex)
}

/// Whether a container of `net` may receive IPv6 from `saddr`: an internal
/// network only from its own subnet and link-local addresses.
#[inline(always)]
pub fn source6(net: &NetworkInfo, net6: &NetworkInfo6, saddr: &[u8; 16]) -> Result<(), DropReason> {
    if net.flags & net_flags::INTERNAL != 0
        && !(net6.contains(saddr) || is_link_local(saddr) || is_unspecified(saddr))
    {
        return Err(DropReason::Internal);
    }
    Ok(())
}
