//! Isolation between networks (replaces DOCKER-ISOLATION-STAGE-1/2), ICC
//! (`-i br -o br -j DROP` for `--icc=false`) and internal networks. Every
//! decision costs the same few map lookups whatever the number of
//! networks: the destination's network comes from one longest-prefix-match
//! lookup.

use netpath_common::{DropReason, NetworkInfo, net_flags};

use crate::lookup::{network, network_of};

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
