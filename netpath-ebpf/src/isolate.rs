//! Policy at container ports (replaces DOCKER-ISOLATION-STAGE-1/2,
//! `-i br -o br -j DROP` for `--icc=false`, and Docker's internal networks),
//! plus anti-spoofing, which Docker lacks. Every decision costs the same
//! few map lookups whatever the number of networks: the destination's
//! network comes from one longest-prefix-match lookup.
//!
//! - Ingress on a port (a container sends): its MAC, IPv4 source and ARP
//!   sender must be its own; an unbound port learns them from its first ARP
//!   or IPv4 packet sourced in its subnet. Then the destination decides:
//!   own gateway always; own subnet unless ICC is off; another managed
//!   subnet never (its gateway, a host address, is fine); outside the
//!   managed subnets unless the network is internal.
//!   Before the destination policy, published-port flows are translated
//!   (see `nat::port4_ingress`): a container reaching a published port and a
//!   container answering through one are allowed whatever the networks,
//!   because the flow was allowed when it was created (Docker's DNAT happens
//!   before its isolation chains too).
//! - Egress on a port (delivered to a container): an internal network only
//!   receives from its own subnet.

use aya_ebpf::{bindings::BPF_EXIST, programs::TcContext};
use netpath_common::{DropReason, Endpoint, IfaceInfo, NetworkInfo, iface_flags, net_flags};

use crate::{
    TCX_NEXT, fastpath,
    maps::{NP_ENDPOINTS4, NP_IFACES},
    nat::{self, drop, network, network_of},
    parse::{self, ETH_HLEN, L3},
};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;

#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}

/// Whether `addr` may be a container of `net`: in the subnet, not the
/// gateway, the network or the broadcast address, not 0.0.0.0.
#[inline(always)]
fn container_addr(net: &NetworkInfo, addr: u32) -> bool {
    net.contains_be(addr)
        && addr != net.gateway_be
        && addr != net.subnet_be
        && addr != (net.subnet_be | !net.mask_be)
}

/// Records what an unbound port's container uses (trust on first use).
#[inline(always)]
fn learn(ifindex: u32, iface: &IfaceInfo, addr: u32, mac: [u8; 6]) {
    let info = IfaceInfo {
        ipv4_be: addr,
        mac,
        flags: iface.flags | iface_flags::LEARNED,
        ..*iface
    };
    // Only while the port is still managed (BPF_EXIST).
    if NP_IFACES.insert(&ifindex, &info, BPF_EXIST as u64).is_ok() {
        let ep = Endpoint {
            ifindex,
            net_id: iface.net_id,
            mac,
            _pad: [0; 2],
        };
        let _ = NP_ENDPOINTS4.insert(&addr, &ep, 0);
    }
}

/// A container's packet entering the host at its port.
#[inline(always)]
pub fn port_ingress(ctx: &TcContext, ifindex: u32, iface: &IfaceInfo) -> i32 {
    let Ok(eth) = ctx.load::<[u8; ETH_HLEN]>(0) else {
        return TCX_NEXT;
    };
    let Some(net) = network(iface.net_id) else {
        return TCX_NEXT;
    };
    let len = ctx.len();
    let net_id = iface.net_id;
    let src_mac = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    let bound = iface.flags & (iface_flags::BOUND | iface_flags::LEARNED) != 0;
    if bound && !same_mac(&src_mac, &iface.mac) {
        return drop(net_id, DropReason::SpoofedMac, len);
    }
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_ARP => {
            // Ethernet/IPv4 ARP: sender MAC at 8, sender IP at 14.
            let Ok(arp) = ctx.load::<[u8; 28]>(ETH_HLEN) else {
                return TCX_NEXT;
            };
            let sha = [arp[8], arp[9], arp[10], arp[11], arp[12], arp[13]];
            let spa = u32::from_ne_bytes([arp[14], arp[15], arp[16], arp[17]]);
            if bound {
                if !same_mac(&sha, &iface.mac) {
                    return drop(net_id, DropReason::SpoofedMac, len);
                }
                // 0.0.0.0 is an address probe (RFC 5227), not a claim.
                if spa != 0 && spa != iface.ipv4_be {
                    return drop(net_id, DropReason::SpoofedSource, len);
                }
            } else if container_addr(&net, spa) && same_mac(&sha, &src_mac) {
                learn(ifindex, iface, spa, src_mac);
            }
            TCX_NEXT
        }
        ETH_P_IP => {
            let Some(ip) = parse::ipv4_at(ctx, L3) else {
                return TCX_NEXT;
            };
            if bound {
                if ip.saddr != iface.ipv4_be {
                    return drop(net_id, DropReason::SpoofedSource, len);
                }
            } else if container_addr(&net, ip.saddr) {
                learn(ifindex, iface, ip.saddr, src_mac);
            } else if ip.saddr != 0 {
                // Not an address this network hands out (0.0.0.0 is DHCP).
                return drop(net_id, DropReason::SpoofedSource, len);
            }
            // Published ports and their replies pass whatever the policy:
            // the flow was allowed when it was created.
            match nat::port4_ingress(ctx, &ip, net_id, &net) {
                nat::PortNat::Published => return fast_out(ctx, &net),
                nat::PortNat::Verdict(v) => return v,
                nat::PortNat::None => {}
            }
            match destination(&net, net_id, ip.daddr) {
                Ok(()) => fast_out(ctx, &net),
                Err(reason) => drop(net_id, reason, len),
            }
        }
        _ => TCX_NEXT,
    }
}

/// An allowed container packet: the fast path out of an uplink when it is
/// headed outside the managed networks, else on to the bridge.
#[inline(always)]
fn fast_out(ctx: &TcContext, net: &NetworkInfo) -> i32 {
    // The header as it is now (a published flow may have rewritten it).
    let Some(ip) = parse::ipv4_at(ctx, L3) else {
        return TCX_NEXT;
    };
    if network_of(ip.daddr).is_some() {
        return TCX_NEXT;
    }
    fastpath::to_uplink4(ctx, &ip, net.bridge_ifindex, ip.tot_len).unwrap_or(TCX_NEXT)
}

/// Whether a container of `net` may send to `daddr`.
#[inline(always)]
fn destination(net: &NetworkInfo, net_id: u32, daddr: u32) -> Result<(), DropReason> {
    let internal = net.flags & net_flags::INTERNAL != 0;
    if daddr == net.gateway_be {
        return Ok(());
    }
    match network_of(daddr) {
        Some(id) if id == net_id => {
            if net.flags & net_flags::NO_ICC != 0 {
                Err(DropReason::Icc)
            } else {
                Ok(())
            }
        }
        _ if internal => Err(DropReason::Internal),
        Some(other) => match network(other) {
            // Another bridge's gateway is a host address.
            Some(o) if o.gateway_be == daddr => Ok(()),
            _ => Err(DropReason::Isolation),
        },
        None => Ok(()),
    }
}

/// A packet about to be delivered to a container: the source half of
/// published-port flows, then the internal network's check.
#[inline(always)]
pub fn port_egress(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    if !parse::is_ipv4(ctx) {
        return TCX_NEXT;
    }
    let Some(ip) = parse::ipv4_at(ctx, L3) else {
        return TCX_NEXT;
    };
    let Some(net) = network(iface.net_id) else {
        return TCX_NEXT;
    };
    if net.flags & net_flags::INTERNAL != 0 && !net.contains_be(ip.saddr) {
        return drop(iface.net_id, DropReason::Internal, ctx.len());
    }
    nat::port4_egress(ctx, &ip);
    TCX_NEXT
}
