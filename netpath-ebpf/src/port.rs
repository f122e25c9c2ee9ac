//! The container ports (the host ends of the containers' veths).
//!
//! IPv6 (on dual-stack and IPv6-only networks) has its own path, `port6`;
//! the port of an IPv6-only network (`net_flags::NO_IPV4`) carries neither
//! IPv4 nor ARP, either way (`drop_ipv4`).
//!
//! - Ingress (a container sends): only untagged IPv4 and ARP; the sender's
//!   MAC, IPv4 source and ARP fields must be its own (`spoof`); then the
//!   flows at the port: published-port flows are translated and allowed
//!   whatever the networks (the flow was allowed when it was created;
//!   Docker's DNAT happens before its isolation chains too); then the
//!   destination policy (`isolate`); allowed packets for the outside take
//!   the fast path, and so do untracked ones for a neighbour on the same
//!   network (port to port, see `fastpath::to_neighbour4`).
//! - Egress (delivered to a container): the same frame policy; an internal
//!   network only receives from its own subnet; what comes in through an
//!   interface netpath does not manage is judged like traffic from outside
//!   (`inbound`); then the source half of published-port flows.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT},
    programs::TcContext,
};
use netpath_common::{
    DropReason, IfaceInfo, NetworkInfo, counter_kind, counter_scope,
    ct::{ct_dir, ct_flags},
    net_flags,
};

use crate::{
    TCX_NEXT,
    counters::count,
    ct::ct_lookup,
    fastpath,
    flow::{apply4, packet_key},
    frag::{first_fragment4, later_fragment4},
    guard,
    icmp::icmp_error4,
    inbound,
    isolate::{self, Destination},
    lookup::{drop, iface, is_peer, network, network_of},
    parse::{self, Ip4, L4Kind, eth_p},
    publish::publish4,
    rewrite::Phase,
    spoof::{self, Sender, handed},
};

/// What a container's packet at its port turned out to be.
enum PortNat {
    /// Not a published-port flow and no flow of the tracker's at all: the
    /// port's policy decides, and a packet for a neighbour on the same
    /// network may go port to port.
    None,
    /// Not a published-port flow, but one the tracker knows (or an ICMP
    /// error, a later fragment): the port's policy decides, and the
    /// packet takes the bridge so the other port's egress sees it.
    Tracked,
    /// A published port, or an answer from one: allowed.
    Published,
    /// Dropped (and counted).
    Dropped,
}

/// A container's packet entering the host at its port.
#[inline(always)]
pub fn ingress(ctx: &TcContext, ifindex: u32, iface: &IfaceInfo) -> i32 {
    let net_id = iface.net_id;
    let (net, ty, mac) = match guard::arriving(ctx, net_id) {
        Ok(a) => a,
        Err(v) => return v,
    };
    if net.flags & net_flags::NO_IPV4 != 0 {
        // An IPv6-only network: no IPv4 address is bound, none is
        // routed, and what a container sends over IPv4 or ARP reaches
        // nobody who asked for it.
        return drop(ctx, net_id, DropReason::Ipv4);
    }
    let sender = Sender {
        ifindex,
        iface,
        net: &net,
        mac,
    };
    if ty == eth_p::ARP {
        return sender.check_arp(ctx);
    }
    // IPv6 never gets here (the program sends it to `port6`).
    let Some(ip) = parse::ipv4(ctx) else {
        return drop(ctx, net_id, DropReason::Malformed);
    };
    // What the packet would teach its port is staged before the policy
    // (per CPU, off the stack the policy needs) and kept once it passed.
    match sender.check_ipv4(ctx, ip.saddr, ip.daddr) {
        Ok(true) => sender.stage_ipv4(ip.saddr),
        Ok(false) => {}
        Err(v) => return v,
    }
    if !spoof::hand(&sender, ip.daddr) {
        return drop(ctx, net_id, DropReason::Malformed);
    }
    POLICY
}

/// What [`ingress`] returns for a packet whose sender passed (handed over,
/// `spoof::hand`): the program's top runs [`policy4`]. No verdict has
/// this value.
pub const POLICY: i32 = i32::MIN;

/// The flows and the destination policy of a container's IPv4 packet
/// whose sender passed ([`ingress`] said [`POLICY`]), with what the packet
/// would teach its port kept if it passes.
///
/// Two global functions, each verified once on its own: inline, every way
/// through the sender's checks was a separate state through the flows,
/// and every way through the flows one through the policy (the port
/// program cost the verifier 700,000 instructions). Called from the
/// program's top: a global function's frame adds to its caller's.
#[inline(always)]
pub fn policy4(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let nat = netpath_port_flows4(skb);
    let verdict = if nat < 0 {
        TC_ACT_SHOT
    } else {
        netpath_port_policy4(skb, nat)
    };
    spoof::finish_staged(verdict);
    verdict
}

/// [`netpath_port_flows4`]'s answers ([`PortNat`]); -1 is a packet
/// dropped (and counted) there.
const NAT_NONE: i32 = 0;
const NAT_TRACKED: i32 = 1;
const NAT_PUBLISHED: i32 = 2;

/// [`flows_in`] of the packet [`ingress`] handed over.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_port_flows4(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(h) = handed() else {
        return -1;
    };
    let net_id = h.iface.net_id;
    let Some(ip) = parse::ipv4(&ctx) else {
        drop(&ctx, net_id, DropReason::Malformed);
        return -1;
    };
    match flows_in(&ctx, &ip, net_id, &h.net) {
        PortNat::None => NAT_NONE,
        PortNat::Tracked => NAT_TRACKED,
        PortNat::Published => NAT_PUBLISHED,
        PortNat::Dropped => -1,
    }
}

/// The destination policy of the packet [`ingress`] handed over, once its
/// flows said `nat` ([`netpath_port_flows4`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_port_policy4(skb: *mut __sk_buff, nat: i32) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(h) = handed() else {
        return TC_ACT_SHOT;
    };
    let (net_id, net) = (h.iface.net_id, &h.net);
    let untracked = match nat {
        NAT_PUBLISHED => {
            // A published port's flow between two containers: port to
            // port, this port doing the other's egress half.
            return fastpath::published_to_port4(&ctx, h.ifindex, net_id, net, |ctx, ip| {
                flows_out(ctx, ip);
            })
            .unwrap_or_else(|| fast_out(&ctx, net_id, net));
        }
        NAT_NONE => true,
        _ => false,
    };
    // The destination the container sent to (a tracked flow's rewrite may
    // have changed the header since).
    match isolate::destination(net, net_id, h.daddr_be) {
        Ok(Destination::Neighbour) if untracked => {
            // Untracked: nothing rewrote it.
            let Some(ip) = parse::ipv4(&ctx) else {
                return TCX_NEXT;
            };
            fastpath::to_neighbour4(&ctx, &ip, h.ifindex, net_id).unwrap_or(TCX_NEXT)
        }
        Ok(_) => fast_out(&ctx, net_id, net),
        Err(reason) => drop(&ctx, net_id, reason),
    }
}

/// An allowed container packet: the fast path out of an uplink when it is
/// headed outside the managed networks, else on to the bridge.
#[inline(always)]
fn fast_out(ctx: &TcContext, net_id: u32, net: &NetworkInfo) -> i32 {
    // The header as it is now (a published flow may have rewritten it).
    let Some(ip) = parse::ipv4(ctx) else {
        return TCX_NEXT;
    };
    // Peers (`--no-masquerade-to`: other nodes' pods, a service CIDR) take
    // the kernel's path, so the host's netfilter (kube-proxy's DNAT for a
    // ClusterIP) sees their packets.
    if network_of(ip.daddr).is_some() || is_peer(net_id, ip.daddr) {
        return TCX_NEXT;
    }
    fastpath::to_uplink4(ctx, &ip, net.bridge_ifindex).unwrap_or(TCX_NEXT)
}

/// The conntrack bookkeeping of every container packet, the destination
/// half of flows (a container reaching a published port through a host
/// address; the answer of a container reaching its own), and new flows to
/// published ports.
#[inline(always)]
fn flows_in(ctx: &TcContext, ip: &Ip4, net_id: u32, net: &NetworkInfo) -> PortNat {
    if ip.is_later_fragment() {
        return match later_fragment4(ctx, ip, Phase::Ingress) {
            Some(true) => PortNat::Published,
            _ => PortNat::Tracked,
        };
    }
    let Ok(l4) = parse::l4(ctx, ip) else {
        return PortNat::Tracked;
    };
    if l4.kind == L4Kind::IcmpError {
        return match icmp_error4(ctx, ip, Phase::Ingress) {
            Some(true) => PortNat::Published,
            _ => PortNat::Tracked,
        };
    }
    let key = packet_key(ip, &l4);
    let e = match ct_lookup(&key) {
        Some(e) => e,
        None => {
            if net.flags & net_flags::INTERNAL != 0 {
                return PortNat::None;
            }
            match publish4(ctx, &key, l4.tcp_flags) {
                None => return PortNat::None,
                Some(Ok((e, id))) => {
                    count(counter_scope::NETWORK, id, counter_kind::NET_CT_NEW, 0);
                    e
                }
                Some(Err((_, reason))) => {
                    drop(ctx, net_id, reason);
                    return PortNat::Dropped;
                }
            }
        }
    };
    // SAFETY: map value pointer, valid during the program.
    let dnat = unsafe { (*e).flags } & ct_flags::DNAT != 0;
    first_fragment4(ip, &l4, e, Phase::Ingress);
    if apply4(ctx, e, Phase::Ingress).is_err() {
        drop(ctx, net_id, DropReason::Malformed);
        return PortNat::Dropped;
    }
    if dnat {
        PortNat::Published
    } else {
        PortNat::Tracked
    }
}

/// A packet about to be delivered to a container.
#[inline(always)]
pub fn egress(ctx: &TcContext, iface: &IfaceInfo) -> i32 {
    let net_id = iface.net_id;
    let Some(net) = network(net_id) else {
        return TCX_NEXT;
    };
    let ty = match guard::port_frame(ctx, net_id) {
        Ok(t) => t,
        Err(v) => return v,
    };
    if ty == eth_p::IPV6 {
        // The program hands IPv6 to `port6` before this path; a frame
        // that reads otherwise now is not what it was.
        return drop(ctx, net_id, DropReason::Malformed);
    }
    if net.flags & net_flags::NO_IPV4 != 0 {
        // Nothing IPv4 is delivered into an IPv6-only network (a route
        // someone added by hand, a frame a host process wrote).
        return drop(ctx, net_id, DropReason::Ipv4);
    }
    let managed_source = came_from_managed(ctx);
    if ty == eth_p::ARP {
        // ARP only from the host, the bridge or ports netpath checks.
        return if managed_source {
            TCX_NEXT
        } else {
            drop(ctx, net_id, DropReason::UnmanagedPort)
        };
    }
    let Some(ip) = parse::ipv4(ctx) else {
        return drop(ctx, net_id, DropReason::Malformed);
    };
    if let Err(r) = isolate::source(&net, ip.saddr) {
        return drop(ctx, net_id, r);
    }
    // A managed subnet's source coming in elsewhere is a port nobody
    // attached yet (or a spoofer).
    if !managed_source && network_of(ip.saddr).is_some() {
        return drop(ctx, net_id, DropReason::UnmanagedPort);
    }
    let known = flows_out(ctx, &ip);
    if !managed_source
        && !known
        && let Err(r) = from_outside(ctx, &ip, net_id, &net)
    {
        return drop(ctx, net_id, r);
    }
    TCX_NEXT
}

/// Whether the packet came into the host where netpath checks what enters:
/// the host itself (no ingress interface), a managed port, bridge or uplink.
#[inline(always)]
fn came_from_managed(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
    iif == 0 || iface(iif).is_some()
}

/// A packet of no known flow that came in through an interface netpath
/// does not manage: judged like traffic from outside at an uplink.
#[inline(always)]
fn from_outside(
    ctx: &TcContext,
    ip: &Ip4,
    net_id: u32,
    net: &NetworkInfo,
) -> Result<(), DropReason> {
    if ip.is_later_fragment() {
        return inbound::untracked(net);
    }
    match parse::l4(ctx, ip) {
        Ok(l4) if l4.kind != L4Kind::IcmpError => {
            // SAFETY: the context pointer is valid for the program's lifetime.
            let iif = unsafe { (*ctx.skb.skb).ingress_ifindex };
            inbound::direct4(ctx, ip, &l4, net_id, net, iif).map(|_| ())
        }
        Ok(_) => inbound::untracked(net),
        Err(()) => Err(DropReason::Malformed),
    }
}

/// The source half of flows delivered to a container (answers from a
/// published port to a container client; a container reaching its own
/// published port). Returns whether the packet belongs to a known flow.
#[inline(always)]
fn flows_out(ctx: &TcContext, ip: &Ip4) -> bool {
    if ip.is_later_fragment() {
        return later_fragment4(ctx, ip, Phase::Egress).is_some();
    }
    let Ok(l4) = parse::l4(ctx, ip) else {
        return false;
    };
    if l4.kind == L4Kind::IcmpError {
        return icmp_error4(ctx, ip, Phase::Egress).is_some();
    }
    let key = packet_key(ip, &l4);
    let Some(e) = ct_lookup(&key) else {
        return false;
    };
    // SAFETY: map value pointer, valid during the program.
    let (flags, dir) = unsafe { ((*e).flags, (*e).dir) };
    // Masquerade flows have nothing to do here (their reply's source is
    // the remote's own).
    if flags & ct_flags::DNAT != 0 || dir == ct_dir::MID {
        first_fragment4(ip, &l4, e, Phase::Egress);
        let _ = apply4(ctx, e, Phase::Egress);
    }
    true
}
