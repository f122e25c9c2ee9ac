//! netpath's kernel programs: TC/TCX classifiers attached at ingress and
//! egress of every managed bridge, its ports and the uplinks (one program
//! per role and direction), the cgroup socket hooks, and the conntrack
//! sweep.
//!
//! One concern per module; this file only dispatches.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod bridge;
mod counters;
mod ct;
mod events;
mod fastpath;
mod fastpath6;
mod filter;
mod flow;
mod frag;
mod frag6;
mod guard;
mod icmp;
mod icmp6;
mod inbound;
mod isolate;
mod lookup;
mod maps;
mod nat;
mod nat6;
mod nd;
mod parse;
mod parse6;
mod port;
mod port6;
mod publish;
mod publish6;
mod rewrite;
mod sock;
mod sock6;
mod spoof;
mod spoof6;
mod sweep;
mod uplink;
mod uplink6;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use netpath_common::{IfaceInfo, IfaceRole, counter_kind, counter_scope};

use crate::counters::count;

/// A build with `NETPATH_EBPF_VARIANT` set has (slightly) different
/// programs that behave the same: the upgrade test switches to it in place.
const VARIANT: bool = option_env!("NETPATH_EBPF_VARIANT").is_some();

/// TCX_NEXT: let the next program in the chain (or the stack) decide.
pub const TCX_NEXT: i32 = TC_ACT_UNSPEC;

/// Direction a program is attached in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

// One program per interface role and direction, so each verifies (and
// gets its stack) on its own; the loader attaches the one that fits. A
// bridge has none at egress: what the host sends to containers is judged
// at their ports, and an attachment costs an RCU grace period.

// Uplinks and ports run IPv4 and IPv6 as subprograms of their own, so
// their stack frames never add up (a program's call chain has 512 bytes).

#[classifier]
pub fn netpath_up_in(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        up_in6(&ctx)
    } else {
        match up_in4(&ctx) {
            uplink::FLOW => uplink::flow4(&ctx),
            v => v,
        }
    }
}

#[inline(never)]
fn up_in4(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Uplink, Dir::Ingress, |ctx, ifindex, _| {
        uplink::ingress(ctx, ifindex)
    })
}

#[inline(never)]
fn up_in6(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Uplink, Dir::Ingress, |ctx, ifindex, _| {
        uplink6::ingress(ctx, ifindex)
    })
}

#[classifier]
pub fn netpath_up_eg(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        up_eg6(&ctx)
    } else {
        up_eg4(&ctx)
    }
}

#[inline(never)]
fn up_eg4(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Uplink, Dir::Egress, |ctx, _, iface| {
        nat::egress(ctx, iface)
    })
}

#[inline(never)]
fn up_eg6(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Uplink, Dir::Egress, |ctx, ifindex, _| {
        nat6::egress(ctx, ifindex)
    })
}

// An IPv6 packet the port's checks passed is offered to the fast path
// here, where nothing else is live: the verifier then walks the fast path
// once, not once for every way through the checks.
#[classifier]
pub fn netpath_port_in(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        match port_in6(&ctx) {
            port6::CHECKS => match port6::checks(&ctx) {
                port6::FAST => fastpath6::from_port6(&ctx),
                v => v,
            },
            v => v,
        }
    } else {
        match port_in4(&ctx) {
            port::POLICY => port::policy4(&ctx),
            v => v,
        }
    }
}

#[inline(never)]
fn port_in4(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Port, Dir::Ingress, port::ingress)
}

#[inline(never)]
fn port_in6(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Port, Dir::Ingress, port6::ingress)
}

#[classifier]
pub fn netpath_port_eg(ctx: TcContext) -> i32 {
    if is_ipv6(&ctx) {
        port_eg6(&ctx)
    } else {
        port_eg4(&ctx)
    }
}

#[inline(never)]
fn port_eg4(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Port, Dir::Egress, |ctx, _, iface| {
        port::egress(ctx, iface)
    })
}

#[inline(never)]
fn port_eg6(ctx: &TcContext) -> i32 {
    hook(ctx, IfaceRole::Port, Dir::Egress, |ctx, _, iface| {
        port6::egress(ctx, iface)
    })
}

/// Whether the frame carries IPv6 (a tag the kernel took off is in the
/// skb, not the frame: the guards judge it on either path).
#[inline(always)]
fn is_ipv6(ctx: &TcContext) -> bool {
    parse::ethertype(ctx) == Some(parse::eth_p::IPV6)
}

#[classifier]
pub fn netpath_br_in(ctx: TcContext) -> i32 {
    hook(&ctx, IfaceRole::Bridge, Dir::Ingress, |ctx, _, iface| {
        bridge::ingress(ctx, iface)
    })
}

/// The conntrack sweep (run by the loader with BPF_PROG_TEST_RUN, never
/// attached).
#[classifier]
pub fn netpath_sweep(ctx: TcContext) -> i32 {
    sweep::run(&ctx)
}

/// Accounts a packet on the interface it is on and hands it to `f`, if
/// the interface is managed in the role the program was attached for (a
/// role that just changed is left alone until the loader swaps the
/// program).
#[inline(always)]
fn hook(
    ctx: &TcContext,
    role: IfaceRole,
    dir: Dir,
    f: impl FnOnce(&TcContext, u32, &IfaceInfo) -> i32,
) -> i32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // An interface netpath does not (or no longer) manage: not ours to judge.
    let Some(iface) = lookup::iface(ifindex) else {
        return TCX_NEXT;
    };
    if iface.role != role as u32 || VARIANT && iface.flags == u32::MAX {
        return TCX_NEXT;
    }
    account(ctx, dir, ifindex, &iface);
    f(ctx, ifindex, &iface)
}

#[cgroup_sock_addr(connect4)]
pub fn netpath_connect4(ctx: SockAddrContext) -> i32 {
    sock::redirect4(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn netpath_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::redirect4(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn netpath_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn netpath_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn netpath_connect6(ctx: SockAddrContext) -> i32 {
    sock6::redirect6(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn netpath_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock6::redirect6(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn netpath_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock6::reverse6(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn netpath_getpeername6(ctx: SockAddrContext) -> i32 {
    sock6::reverse6(&ctx)
}

/// Interface counters everywhere; network counters on container ports, where
/// ingress means "sent by a container" and egress "delivered to one".
#[inline(always)]
fn account(ctx: &TcContext, dir: Dir, ifindex: u32, iface: &IfaceInfo) {
    let len = ctx.len();
    let if_kind = match dir {
        Dir::Ingress => counter_kind::IF_INGRESS,
        Dir::Egress => counter_kind::IF_EGRESS,
    };
    count(counter_scope::IFACE, ifindex, if_kind, len);
    if iface.role == IfaceRole::Port as u32 {
        let net_kind = match dir {
            Dir::Ingress => counter_kind::NET_FROM_CONTAINERS,
            Dir::Egress => counter_kind::NET_TO_CONTAINERS,
        };
        count(counter_scope::NETWORK, iface.net_id, net_kind, len);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
