//! The socket hooks for IPv6 sockets (`connect6`, `sendmsg6`, `recvmsg6`,
//! `getpeername6`), as `sock` is for IPv4: a host process reaching a
//! published IPv6 port on a host address, on `::1` (for ports published on
//! every address, or on `::1` itself) goes straight to the container, and
//! sees the address it dialled. An IPv6 socket dialling an IPv4-mapped
//! address (`::ffff:127.0.0.1`) reaches the IPv4 mappings: a TCP connect of
//! such a socket never passes `connect4`. (Its UDP datagrams do: the kernel
//! hands them to the IPv4 path, hooks included, before the IPv6 ones.)

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use netpath_common::{
    SockRevKey, counter_scope,
    ct::proto,
    v6::{SockRevKey6, SockRevVal6},
};

use crate::{
    counters::count,
    filter::{self, Flow},
    lookup::{published, published6_host},
    maps::{NP_SOCK_REVNAT4, NP_SOCK_REVNAT6},
    sock::{ALLOW, REFUSE, client_addr, managed},
};

/// `user_ip6` as its 16 bytes (the words are in network order already).
#[inline(always)]
fn octets(words: &[u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        a[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    a
}

/// [`octets`] back to `user_ip6`'s words.
#[inline(always)]
fn words_of(a: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, v) in w.iter_mut().enumerate() {
        *v = u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
    }
    w
}

/// The IPv4 address of `::ffff:a.b.c.d` (network order).
#[inline(always)]
fn v4_mapped(words: &[u32; 4]) -> Option<u32> {
    (words[0] == 0 && words[1] == 0 && u32::from_be(words[2]) == 0xffff).then_some(words[3])
}

/// `::ffff:` and `addr_be`.
#[inline(always)]
fn mapped(addr_be: u32) -> [u32; 4] {
    [0, 0, 0xffff_u32.to_be(), addr_be]
}

/// Reads `user_ip6` one word at a time (the only access the verifier
/// allows on it besides aligned pairs).
#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> [u32; 4] {
    let sa = ctx.sock_addr;
    let mut w = [0u32; 4];
    for (i, v) in w.iter_mut().enumerate() {
        // SAFETY: the context's bpf_sock_addr is valid for the program's run.
        *v = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
    }
    w
}

/// Writes `user_ip6` one word at a time, and the port.
#[inline(always)]
fn set_user(ctx: &SockAddrContext, words: &[u32; 4], port_be: u16) {
    let sa = ctx.sock_addr;
    for (i, v) in words.iter().enumerate() {
        // SAFETY: user_ip6 and user_port are writable in these hooks.
        unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], *v) };
    }
    // SAFETY: as above.
    unsafe { (*sa).user_port = u32::from(port_be) };
}

/// Where a dialled `words`:`port_be` leads: the container's address (as
/// this socket must write it), its port and the flow the filter judges.
#[inline(always)]
fn target(
    ctx: &SockAddrContext,
    words: &[u32; 4],
    port_be: u16,
    proto_nr: u8,
) -> Option<([u32; 4], u16, Flow)> {
    if let Some(v4) = v4_mapped(words) {
        let t = published(v4, port_be, proto_nr, true)?;
        let flow = Flow {
            src_be: client_addr(ctx, v4),
            net_id: t.net_id,
            proto: proto_nr,
            host_port_be: port_be,
            to_be: t.target_be,
            to_port_be: t.target_port_be,
            v6: false,
        };
        return Some((mapped(t.target_be), t.target_port_be, flow));
    }
    // `::1` reaches what is published on every address, as 127/8 does
    // for IPv4 (a mapping on `::1` itself is found by its own key).
    let t = published6_host(&octets(words), port_be, proto_nr)?;
    let flow = Flow {
        src_be: 0,
        net_id: t.net_id,
        proto: proto_nr,
        host_port_be: port_be,
        to_be: 0,
        to_port_be: t.target_port_be,
        v6: true,
    };
    Some((words_of(&t.target), t.target_port_be, flow))
}

/// `connect6` and `sendmsg6`: redirect a published destination.
#[inline(always)]
pub fn redirect6(ctx: &SockAddrContext) -> i32 {
    if !managed(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context's bpf_sock_addr is valid for the program's run.
    let (port_be, proto_nr) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    if !matches!(proto_nr, proto::TCP | proto::UDP | proto::SCTP) {
        return ALLOW;
    }
    let words = user_ip6(ctx);
    let Some((to, to_port_be, flow)) = target(ctx, &words, port_be, proto_nr) else {
        return ALLOW;
    };
    if let Err(r) = filter::admit(&flow) {
        count(counter_scope::NETWORK, flow.net_id, r.counter_kind(), 0);
        return REFUSE;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let key = SockRevKey6 {
        sock_cookie: cookie,
        target: octets(&to),
        target_port_be: to_port_be,
        _pad: [0; 6],
    };
    let val = SockRevVal6 {
        addr: octets(&words),
        port_be,
        _pad: [0; 2],
    };
    let _ = NP_SOCK_REVNAT6.insert(key, val, 0);
    set_user(ctx, &to, to_port_be);
    ALLOW
}

/// `getpeername6` and `recvmsg6`: show the address the socket dialled.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) -> i32 {
    if !managed(ctx) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    let words = user_ip6(ctx);
    // SAFETY: as in `redirect6`.
    let (port_be, cookie) = unsafe { ((*sa).user_port as u16, bpf_get_socket_cookie(sa.cast())) };
    // A dual-stack socket's UDP datagram to an IPv4-mapped address went
    // through `sendmsg4`, which recorded it in the IPv4 map.
    if let Some(v4) = v4_mapped(&words) {
        let key = SockRevKey {
            sock_cookie: cookie,
            target_be: v4,
            target_port_be: port_be,
            _pad: 0,
        };
        // SAFETY: value is Copy and read at once.
        if let Some(orig) = unsafe { NP_SOCK_REVNAT4.get(key) }.copied() {
            set_user(ctx, &mapped(orig.addr_be), orig.port_be);
            return ALLOW;
        }
    }
    let key = SockRevKey6 {
        sock_cookie: cookie,
        target: octets(&words),
        target_port_be: port_be,
        _pad: [0; 6],
    };
    // SAFETY: value is Copy and read at once.
    let Some(orig) = (unsafe { NP_SOCK_REVNAT6.get(key) }).copied() else {
        return ALLOW;
    };
    set_user(ctx, &words_of(&orig.addr), orig.port_be);
    ALLOW
}
