//! Neighbour Discovery guard at container ports (RFC 6105's RA guard and
//! more): a container never sends Router Advertisements, Redirects or
//! other router-only messages (MLD queries, router renumbering, multicast
//! router advertisements); its
//! Neighbour Advertisements only speak for addresses it sends from; a
//! duplicate address probe (NS from `::`) only for one it may take; and
//! every link-layer address option carries its own MAC. ND messages in a
//! fragment are refused (RFC 6980).

use aya_ebpf::programs::TcContext;
use netpath_common::{DropReason, v6::is_unspecified};

use crate::{
    lookup::same_mac,
    parse6::{Ip6, nexthdr, same6},
    spoof6::Sender6,
};

/// ICMPv6 types the guard looks at.
mod icmp6 {
    pub const MLD_QUERY: u8 = 130;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const ROUTER_ADVERT: u8 = 134;
    pub const NEIGHBOUR_SOLICIT: u8 = 135;
    pub const NEIGHBOUR_ADVERT: u8 = 136;
    pub const REDIRECT: u8 = 137;
    pub const ROUTER_RENUMBERING: u8 = 138;
    /// Multicast Router Discovery (RFC 4286): advertisement, termination.
    pub const MRD_ADVERT: u8 = 151;
    pub const MRD_TERMINATE: u8 = 153;
}

/// Messages only a router sends: a container sending one would take over
/// its neighbours' routes, renumber them, or become the link's multicast
/// querier (the bridge's snooping then follows it).
#[inline(always)]
const fn router_only(ty: u8) -> bool {
    matches!(
        ty,
        icmp6::MLD_QUERY
            | icmp6::ROUTER_ADVERT
            | icmp6::REDIRECT
            | icmp6::ROUTER_RENUMBERING
            | icmp6::MRD_ADVERT
            | icmp6::MRD_TERMINATE
    )
}

/// Options (source or target link-layer address) looked at per message.
const MAX_OPTIONS: usize = 4;

/// Checks an ICMPv6 message a container sends (after its source passed;
/// `new_source`: the source is one the port takes with this packet).
/// Returns whether it is a Neighbour Solicitation or Advertisement that
/// passed (address resolution, which ICC leaves alone as it does ARP). A
/// BPF subprogram (its own stack frame, see `spoof6`).
#[inline(never)]
pub fn check(
    ctx: &TcContext,
    ip: &Ip6,
    sender: &Sender6,
    new_source: bool,
) -> Result<bool, DropReason> {
    if ip.proto != nexthdr::ICMPV6 || ip.later_fragment {
        return Ok(false);
    }
    // Type, code and checksum within the payload (not Ethernet padding).
    if ip.l4 + 4 > ip.end {
        return Err(DropReason::Malformed);
    }
    let Ok(ty) = ctx.load::<u8>(ip.l4) else {
        return Err(DropReason::Malformed);
    };
    let nd = (icmp6::ROUTER_SOLICIT..=icmp6::REDIRECT).contains(&ty);
    if router_only(ty) || nd && ip.fragment {
        return Err(DropReason::RouterAdvert);
    }
    // The target address follows 4 bytes of flags; options follow it.
    let opts = match ty {
        icmp6::NEIGHBOUR_SOLICIT | icmp6::NEIGHBOUR_ADVERT => {
            let Ok(target) = ctx.load::<[u8; 16]>(ip.l4 + 8) else {
                return Err(DropReason::Malformed);
            };
            let ok = if ty == icmp6::NEIGHBOUR_ADVERT {
                sender.owns(&target) || new_source && same6(&target, &ip.saddr)
            } else if is_unspecified(&ip.saddr) {
                sender.owns(&target) || sender.claimable(&target)
            } else {
                true
            };
            if !ok {
                return Err(DropReason::NdSpoof);
            }
            ip.l4 + 24
        }
        icmp6::ROUTER_SOLICIT => ip.l4 + 8,
        _ => return Ok(false),
    };
    link_layer_options(ctx, opts, ip.end, sender)?;
    Ok(ty != icmp6::ROUTER_SOLICIT)
}

/// Every source/target link-layer address option must be the sender's MAC
/// (they fill the neighbour caches of whoever reads them).
#[inline(always)]
fn link_layer_options(
    ctx: &TcContext,
    mut off: usize,
    end: usize,
    sender: &Sender6,
) -> Result<(), DropReason> {
    for _ in 0..MAX_OPTIONS {
        if off >= end {
            return Ok(());
        }
        // Type, length in units of 8 bytes, then (for types 1 and 2) the MAC.
        let Ok(opt) = ctx.load::<[u8; 8]>(off) else {
            return Err(DropReason::Malformed);
        };
        if opt[1] == 0 {
            return Err(DropReason::Malformed);
        }
        if opt[0] == 1 || opt[0] == 2 {
            let mac = [opt[2], opt[3], opt[4], opt[5], opt[6], opt[7]];
            if !same_mac(&mac, &sender.s.mac) {
                return Err(DropReason::NdSpoof);
            }
        }
        off += usize::from(opt[1]) * 8;
    }
    // More options than are looked at: a legitimate message has one.
    if off < end {
        return Err(DropReason::NdSpoof);
    }
    Ok(())
}
