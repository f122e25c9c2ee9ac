//! netpath's kernel programs: TC/TCX classifiers attached at ingress and
//! egress of every managed bridge, its ports and the uplinks.
//!
//! One concern per module; this file only dispatches.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod counters;
mod ct;
mod fastpath;
mod filter;
mod flow;
mod frag;
mod guard;
mod icmp;
mod inbound;
mod isolate;
mod lookup;
mod maps;
mod nat;
mod parse;
mod port;
mod publish;
mod rewrite;
mod sock;
mod spoof;
mod uplink;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use netpath_common::{IfaceInfo, IfaceRole, counter_kind, counter_scope};

use crate::{counters::count, maps::NP_IFACES};

/// TCX_NEXT: let the next program in the chain (or the stack) decide.
pub const TCX_NEXT: i32 = TC_ACT_UNSPEC;

/// Direction a program is attached in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

#[classifier]
pub fn netpath_ingress(ctx: TcContext) -> i32 {
    match handle(&ctx, Dir::Ingress) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[classifier]
pub fn netpath_egress(ctx: TcContext) -> i32 {
    match handle(&ctx, Dir::Egress) {
        Ok(ret) | Err(ret) => ret,
    }
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

#[inline(always)]
fn handle(ctx: &TcContext, dir: Dir) -> Result<i32, i32> {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // An interface netpath does not (or no longer) manage: not ours to judge.
    // SAFETY: the value is Copy and read at once.
    let Some(iface) = (unsafe { NP_IFACES.get(ifindex) }).copied() else {
        return Ok(TCX_NEXT);
    };
    account(ctx, dir, ifindex, &iface);
    Ok(match (IfaceRole::from_u32(iface.role), dir) {
        (Some(IfaceRole::Uplink), Dir::Egress) => nat::egress(ctx, &iface),
        (Some(IfaceRole::Uplink), Dir::Ingress) => uplink::ingress(ctx, ifindex),
        (Some(IfaceRole::Port), Dir::Ingress) => port::ingress(ctx, ifindex, &iface),
        (Some(IfaceRole::Port), Dir::Egress) => port::egress(ctx, &iface),
        _ => TCX_NEXT,
    })
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
