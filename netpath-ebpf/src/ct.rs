//! The BPF conntrack table: lookups, flow creation with a claimed external
//! tuple, per-direction accounting and the TCP state machine. Every entry
//! inserted and removed is counted (`counter_scope::CONNTRACK`), so the
//! loader can tell how many the LRU evicted.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop, bpf_sk_lookup_udp, bpf_sk_release,
        bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use netpath_common::{
    Config, DropReason, counter_kind, counter_scope,
    ct::{
        CtEntry4, CtKey4, TOUCH_NS, TcpState, ct_dir, ct_flags, fill, opens_tcp_flow, proto,
        tcp_transition,
    },
};

use crate::{
    counters::count,
    lookup::published,
    maps::{NP_CONFIG, NP_CT_FILL, NP_CT_SCRATCH, NP_CT4},
};

const EEXIST: i32 = -17;
/// Candidate external ports tried before a flow counts as exhausted (the
/// container's own port, then ports from a random start in the range).
const PORT_TRIES: u32 = 32;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn ct_lookup4(key: &CtKey4) -> Option<*mut CtEntry4> {
    NP_CT4.get_ptr_mut(key)
}

#[inline(always)]
fn count_ct(kind: u16) {
    count(counter_scope::CONNTRACK, 0, kind, 0);
}

/// Adds `delta` (two's complement) to the live entry count.
#[inline(always)]
fn fill_add(delta: u64) {
    if let Some(live) = NP_CT_FILL.get_ptr_mut(fill::LIVE) {
        // SAFETY: an array slot, valid while the program runs.
        unsafe { atomic_add(live, delta) };
    }
}

/// One more entry. Not inlined: the port search's frame (on top of the
/// classifiers') has no room left for its locals, as for [`at_limit`].
#[inline(never)]
fn fill_inc() {
    fill_add(1);
}

/// Whether the table holds as many entries as it may: new flows wait
/// until the sweeper made room (see `ct::fill`). Not inlined: the
/// classifiers' frames have no room left for its locals.
#[inline(never)]
fn at_limit() -> bool {
    match (NP_CT_FILL.get(fill::LIVE), NP_CT_FILL.get(fill::LIMIT)) {
        // The count is signed in effect: races can take it below zero.
        (Some(&live), Some(&limit)) => limit != 0 && (live as i64) >= limit as i64,
        _ => false,
    }
}

/// Inserts an entry that must be new (`BPF_NOEXIST`), counting it.
#[inline(always)]
fn ct_insert_new4(key: &CtKey4, e: &CtEntry4) -> Result<(), i32> {
    NP_CT4.insert(key, e, BPF_NOEXIST as u64)?;
    count_ct(counter_kind::CT_INSERTS);
    fill_inc();
    Ok(())
}

/// Removes an entry, counting it when it was there; returns whether it was.
#[inline(always)]
pub fn ct_remove4(key: &CtKey4) -> bool {
    let removed = ct_remove4_uncounted(key);
    if removed {
        count_ct(counter_kind::CT_REMOVES);
        fill_add(u64::MAX);
    }
    removed
}

/// [`ct_remove4`] for a sweep pass, which counts what it removed once, at
/// its end ([`fill_sub`], `count_many`): counting each removal in the
/// walk's callback costs time per entry and multiplies the states the
/// verifier explores.
#[inline(always)]
pub fn ct_remove4_uncounted(key: &CtKey4) -> bool {
    NP_CT4.remove(key).is_ok()
}

/// Takes `n` entries off the live count.
#[inline(always)]
pub fn fill_sub(n: u64) {
    fill_add(n.wrapping_neg());
}

/// Sets the live entry count to what a sweep pass found.
#[inline(always)]
pub fn set_live(entries: u64) {
    if let Some(live) = NP_CT_FILL.get_ptr_mut(fill::LIVE) {
        // SAFETY: an array slot, valid while the program runs.
        unsafe { *live = entries };
    }
}

/// Records a half-way (`MID`) entry: new, or replacing the one there.
#[inline(always)]
pub fn ct_put_mid4(key: &CtKey4, e: &CtEntry4) {
    if ct_insert_new4(key, e).is_err() {
        let _ = NP_CT4.insert(key, e, 0);
    }
}

/// `*ptr += v` as one BPF atomic add (the bpfel target has no Rust atomics).
#[inline(always)]
unsafe fn atomic_add(ptr: *mut u64, v: u64) {
    // SAFETY: the caller passes a valid, 8-byte aligned map value field.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) ptr, in(reg) v);
    }
}

/// Counts a packet of `len` bytes on the entry; returns true when its
/// `last_seen_ns` was refreshed (at most once per [`TOUCH_NS`]), which is
/// when callers check the partner entry.
#[inline(always)]
pub fn ct_touch4(e: *mut CtEntry4, len: u32, now: u64) -> bool {
    // SAFETY: `e` points into a map value that stays valid while the program
    // runs; counters are updated atomically since several CPUs may share a flow.
    unsafe {
        atomic_add(&raw mut (*e).packets, 1);
        atomic_add(&raw mut (*e).bytes, u64::from(len));
        if now.wrapping_sub((*e).last_seen_ns) >= TOUCH_NS {
            (*e).last_seen_ns = now;
            return true;
        }
    }
    false
}

/// Applies a TCP packet's flags to the flow's state, kept on the ORIGINAL
/// entry.
#[inline(always)]
pub fn ct_tcp_update4(orig: *mut CtEntry4, reply: bool, flags: u8) {
    // SAFETY: see `ct_touch4`; concurrent updates race benignly (last wins).
    unsafe {
        let (state, f) = tcp_transition(
            TcpState::from_u8((*orig).state),
            (*orig).flags,
            reply,
            flags,
        );
        if state as u8 != (*orig).state {
            (*orig).state = state as u8;
        }
        if f != (*orig).flags {
            (*orig).flags = f;
        }
    }
}

/// Field-wise tuple comparison (a derived `==` becomes a `bcmp` call).
#[inline(always)]
pub fn same_key(a: &CtKey4, b: &CtKey4) -> bool {
    a.saddr_be == b.saddr_be
        && a.daddr_be == b.daddr_be
        && a.sport_be == b.sport_be
        && a.dport_be == b.dport_be
        && a.proto == b.proto
}

/// Writes into `p` the entry for the other direction of the flow whose
/// entry `e` is keyed by `key`. `nat_addr_be`/`nat_port_be` say what each
/// direction writes on the side its NAT type changes: source NAT flows
/// write the source going out (`U:nport`) and the destination coming back
/// (`C:cport`); destination NAT flows write the destination going in
/// (`T:tport`) and the source coming back (`H:hport`). (The full
/// translated tuple is always the partner's key reversed.)
#[inline(always)]
fn fill_partner(p: &mut CtEntry4, key: &CtKey4, e: &CtEntry4) {
    let to_reply = e.dir == ct_dir::ORIGINAL;
    // Which end of `key` the partner writes: for flows a container started
    // the partner of ORIGINAL restores the key's source, the partner of
    // REPLY writes the key's destination; for flows towards a container
    // (destination NAT) the other way round.
    let key_src = to_reply != ct_flags::inbound(e.flags);
    p.peer = *key;
    p.nat_addr_be = if key_src { key.saddr_be } else { key.daddr_be };
    p.nat_port_be = if key_src { key.sport_be } else { key.dport_be };
    p.dir = if to_reply {
        ct_dir::REPLY
    } else {
        ct_dir::ORIGINAL
    };
    // A re-created ORIGINAL entry belongs to a flow seen both ways; the
    // next packets refine its state.
    p.state = if !to_reply && key.proto == proto::TCP {
        TcpState::Established as u8
    } else {
        0
    };
    p.flags = e.flags;
    p.net_id = e.net_id;
    p.created_ns = e.created_ns;
    p.last_seen_ns = e.last_seen_ns;
    p.packets = 0;
    p.bytes = 0;
}

/// Checks that the partner of an entry is still there and names it back.
/// When it is gone (LRU evicted it, which the fill limit keeps from
/// happening) or its key now belongs to another flow, this entry is
/// removed too and false returned: the caller starts over with a new flow,
/// whose tuple goes through every check again. Putting the partner back
/// as it was would skip them: a host socket may have taken the tuple
/// meanwhile.
#[inline(always)]
pub fn ct_keep_partner4(key: &CtKey4, e: *mut CtEntry4) -> bool {
    // SAFETY: see `ct_touch4`.
    let peer = unsafe { (*e).peer };
    if let Some(p) = ct_lookup4(&peer) {
        // SAFETY: as above.
        if same_key(unsafe { &(*p).peer }, key) {
            return true;
        }
    }
    ct_remove4(key);
    false
}

/// Whether a socket of the host would take a packet with tuple `reply`
/// (a TCP connection, time-wait or listener; a bound UDP socket): then the
/// tuple is the host's, and a translated flow must not claim it.
// A BPF function of its own: the tuple gets its own stack frame.
#[inline(never)]
fn host_socket(skb: *mut c_void, reply: &CtKey4) -> bool {
    // Only the IPv4 part is set (and read: `size`); zeroing the rest would
    // cost a byte loop the verifier walks at every call.
    let mut t = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: reply.saddr_be,
                daddr: reply.daddr_be,
                sport: reply.sport_be,
                dport: reply.dport_be,
            },
        },
    };
    let size = 12; // sizeof(bpf_sock_tuple.ipv4)
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the helpers take the program's skb and a tuple of `size`
    // bytes; a socket they return is released before returning.
    unsafe {
        let sk = match reply.proto {
            proto::TCP => bpf_skc_lookup_tcp(skb, &raw mut t, size, netns, 0),
            proto::UDP => bpf_sk_lookup_udp(skb, &raw mut t, size, netns, 0),
            _ => return false,
        };
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
    }
    true
}

/// Creates a flow whose ORIGINAL packets (`orig`, as they arrive) leave as
/// `translated`. Its REPLY key, `translated` reversed, is inserted first
/// with `BPF_NOEXIST`: that claims the tuple replies will carry. With
/// `vary` (source NAT; the context names the namespace whose sockets
/// count) the translated source port may change: the original port first,
/// then 31 ports from a random start in the configured range, skipping
/// tuples a host socket holds. Then the ORIGINAL entry is inserted; when
/// another CPU created the same flow meanwhile, the REPLY entry is removed
/// again and the winner's flow is used.
#[inline(always)]
pub fn ct_create4(
    orig: &CtKey4,
    translated: &CtKey4,
    vary: Option<&TcContext>,
    flags: u32,
    net_id: u32,
    tcp_flags: u8,
) -> Result<*mut CtEntry4, DropReason> {
    if orig.proto == proto::TCP && !opens_tcp_flow(tcp_flags) {
        return Err(DropReason::CtInvalid);
    }
    if at_limit() {
        count_ct(counter_kind::CT_REFUSED);
        return Err(DropReason::ConntrackFull);
    }
    let r = create4(orig, translated, vary, flags, net_id, now());
    match r {
        // The tuple the flow leaves with is its REPLY key reversed (the
        // source port may have been varied from `translated`'s).
        // SAFETY: a pointer to the entry just inserted, valid for this program.
        Ok(e) => crate::events::flow_event(orig, unsafe { &(*e).peer }, net_id),
        Err(_) => count_ct(counter_kind::CT_INSERT_FAILED),
    }
    r
}

#[inline(always)]
fn create4(
    orig: &CtKey4,
    translated: &CtKey4,
    vary: Option<&TcContext>,
    flags: u32,
    net_id: u32,
    now: u64,
) -> Result<*mut CtEntry4, DropReason> {
    let has_ports = match orig.proto {
        proto::TCP | proto::UDP | proto::SCTP => true,
        proto::ICMP => translated.sport_be != 0,
        _ => false,
    };
    let dst_side = ct_flags::inbound(flags);
    // The two entries are built in per-CPU scratch space, not on the stack.
    let sc = NP_CT_SCRATCH
        .get_ptr_mut(0)
        .ok_or(DropReason::CtInsertFailed)?;
    // SAFETY: this CPU's slot, used by nothing else while the program runs.
    let (oentry, partner) = unsafe { (&mut (*sc)[0], &mut (*sc)[1]) };
    oentry.peer = translated.reversed();
    oentry.nat_addr_be = if dst_side {
        translated.daddr_be
    } else {
        translated.saddr_be
    };
    oentry.nat_port_be = if dst_side {
        translated.dport_be
    } else {
        translated.sport_be
    };
    oentry.dir = ct_dir::ORIGINAL;
    oentry.state = 0;
    oentry.flags = flags;
    oentry.net_id = net_id;
    oentry.created_ns = now;
    oentry.last_seen_ns = now;
    oentry.packets = 0;
    oentry.bytes = 0;
    fill_partner(partner, orig, oentry);
    let (min, max) = nat_ports();
    let mut s = PortSearch {
        skb: match vary {
            Some(ctx) => ctx.skb.skb.cast(),
            None => core::ptr::null_mut(),
        },
        partner,
        reply: translated.reversed(),
        min,
        span: max - min + 1,
        // SAFETY: no preconditions.
        start: unsafe { bpf_get_prandom_u32() },
        result: 0,
    };
    // SCTP keeps its source port (see `proto::SCTP`): a taken tuple is not
    // remapped, the new flow is refused.
    let tries = if vary.is_some() && has_ports && orig.proto != proto::SCTP {
        PORT_TRIES
    } else {
        1
    };
    // One callback verified once, rather than the verifier walking every
    // candidate port's branches.
    // SAFETY: the callback has the signature the helper expects and `s`
    // outlives the call.
    unsafe {
        bpf_loop(tries, try_port as *mut c_void, (&raw mut s).cast(), 0);
    }
    match s.result {
        CLAIMED => {}
        FAILED => return Err(DropReason::CtInsertFailed),
        _ => return Err(DropReason::NatPortsExhausted),
    }
    let reply = s.reply;
    oentry.peer = reply;
    if !dst_side {
        oentry.nat_port_be = reply.dport_be;
    }
    if ct_insert_new4(orig, oentry).is_err() {
        // Lost a race with another CPU creating the same flow: give our
        // claimed tuple back and use the winner's entry.
        ct_remove4(&reply);
    }
    ct_lookup4(orig).ok_or(DropReason::CtInsertFailed)
}

/// The NAT port range, inclusive, lowest first.
#[inline(always)]
fn nat_ports() -> (u32, u32) {
    let (a, b) = match NP_CONFIG.get(0) {
        Some(c) if !c.is_unset() => (c.nat_port_min, c.nat_port_max),
        _ => (Config::DEFAULT_PORT_MIN, Config::DEFAULT_PORT_MAX),
    };
    (u32::from(a.min(b)), u32::from(a.max(b)))
}

const CLAIMED: i32 = 1;
const FAILED: i32 = -1;

/// The search for a free translated tuple: the REPLY key being tried and
/// the REPLY entry to claim it with.
#[repr(C)]
struct PortSearch {
    /// The packet's skb for host socket lookups; null when the port is kept.
    skb: *mut c_void,
    /// The REPLY entry (in the scratch map).
    partner: *const CtEntry4,
    reply: CtKey4,
    min: u32,
    span: u32,
    start: u32,
    /// 0 searching, [`CLAIMED`], [`FAILED`].
    result: i32,
}

/// `bpf_loop`'s callback: candidate `i` (0: the original port, then ports
/// from a random start in the range). Returns 1 when done.
#[inline(never)]
unsafe extern "C" fn try_port(i: u64, s: *mut c_void) -> i64 {
    // SAFETY: the helper passes our `PortSearch`.
    let s = unsafe { &mut *(s as *mut PortSearch) };
    if i > 0 {
        if s.span == 0 {
            return 1;
        }
        let port = s.min + s.start.wrapping_add(i as u32) % s.span;
        s.reply.dport_be = (port as u16).to_be();
    }
    // A tuple a host socket holds, or a published host port (its clients'
    // new flows would look like replies), is not ours to take.
    if !s.skb.is_null()
        && (host_socket(s.skb, &s.reply)
            || published(s.reply.daddr_be, s.reply.dport_be, s.reply.proto, false).is_some())
    {
        return 0;
    }
    // SAFETY: the scratch entry `create4` filled, valid while the program runs.
    match ct_insert_new4(&s.reply, unsafe { &*s.partner }) {
        Ok(()) => {
            s.result = CLAIMED;
            1
        }
        Err(err) if err == EEXIST => 0,
        Err(_) => {
            s.result = FAILED;
            1
        }
    }
}
