//! Published ports for processes on the host itself, at the socket level
//! (cgroup sock_addr hooks) instead of docker-proxy: `connect()` and UDP
//! `sendmsg()` to a published host address:port (or to any loopback
//! address for ports published on every address) go straight to the
//! container; `getpeername()` and UDP `recvmsg()` show the address that was
//! dialled. The filter rules apply (a refused `connect()` or `sendmsg()`
//! fails with EPERM). Only sockets of the namespace netpath manages are
//! touched (its netns cookie is in `NP_HOST`); every other socket passes as
//! it is. IPv6 sockets have their own hooks (`sock6`).

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use netpath_common::{SockRevKey, SockRevVal, counter_scope, ct::proto};

use crate::{
    counters::count,
    filter::{self, Flow},
    lookup::published,
    maps::{NP_HOST, NP_SOCK_REVNAT4},
};

/// Let the call proceed.
pub const ALLOW: i32 = 1;
/// Refuse it (EPERM).
pub const REFUSE: i32 = 0;

/// Whether the socket lives in the managed namespace.
#[inline(always)]
pub fn managed(ctx: &SockAddrContext) -> bool {
    let Some(host) = NP_HOST.get(0) else {
        return false;
    };
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    host.netns_cookie != 0 && cookie == host.netns_cookie
}

/// The client address of a host socket, for the filter rules: the one it
/// is bound to, else the one it dialled (a host or loopback address, which
/// the kernel picks as the source for those).
#[inline(always)]
pub fn client_addr(ctx: &SockAddrContext, dialled: u32) -> u32 {
    // SAFETY: `sk` is the (non-null) socket of the call, readable in these hooks.
    let bound = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_ip4 };
    if bound != 0 { bound } else { dialled }
}

/// `connect4` and `sendmsg4`: redirect a published destination.
#[inline(always)]
pub fn redirect4(ctx: &SockAddrContext) -> i32 {
    if !managed(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context's bpf_sock_addr is valid for the program's run.
    let (addr, port, proto_nr) =
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol as u8) };
    if !matches!(proto_nr, proto::TCP | proto::UDP | proto::SCTP) {
        return ALLOW;
    }
    let Some(target) = published(addr, port, proto_nr, true) else {
        return ALLOW;
    };
    let flow = Flow {
        src_be: client_addr(ctx, addr),
        net_id: target.net_id,
        proto: proto_nr,
        host_port_be: port,
        to_be: target.target_be,
        to_port_be: target.target_port_be,
        v6: false,
    };
    if let Err(r) = filter::admit(&flow) {
        count(counter_scope::NETWORK, target.net_id, r.counter_kind(), 0);
        return REFUSE;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let key = SockRevKey {
        sock_cookie: cookie,
        target_be: target.target_be,
        target_port_be: target.target_port_be,
        _pad: 0,
    };
    let val = SockRevVal {
        addr_be: addr,
        port_be: port,
        _pad: 0,
    };
    let _ = NP_SOCK_REVNAT4.insert(key, val, 0);
    // SAFETY: user_ip4 and user_port are writable in these hooks.
    unsafe {
        (*sa).user_ip4 = target.target_be;
        (*sa).user_port = u32::from(target.target_port_be);
    }
    ALLOW
}

/// `getpeername4` and `recvmsg4`: show the address the socket dialled.
#[inline(always)]
pub fn reverse4(ctx: &SockAddrContext) -> i32 {
    if !managed(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: as in `redirect4`.
    let (addr, port, cookie) = unsafe {
        (
            (*sa).user_ip4,
            (*sa).user_port as u16,
            bpf_get_socket_cookie(sa.cast()),
        )
    };
    let key = SockRevKey {
        sock_cookie: cookie,
        target_be: addr,
        target_port_be: port,
        _pad: 0,
    };
    // SAFETY: value is Copy and read at once.
    if let Some(orig) = unsafe { NP_SOCK_REVNAT4.get(key) }.copied() {
        // SAFETY: writable in these hooks.
        unsafe {
            (*sa).user_ip4 = orig.addr_be;
            (*sa).user_port = u32::from(orig.port_be);
        }
    }
    ALLOW
}
