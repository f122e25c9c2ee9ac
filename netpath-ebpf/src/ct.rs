//! The BPF conntrack tables: lookups, flow creation with a claimed external
//! tuple, per-direction accounting and the TCP state machine. One
//! implementation for both families: what differs (the map, its fill
//! count, the host socket lookup) is the key's [`Table`]. Every entry
//! inserted and removed is counted (`counter_scope::CONNTRACK`), so the
//! loader can tell how many the LRU evicted.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop, bpf_sk_lookup_udp, bpf_sk_release,
        bpf_skc_lookup_tcp,
    },
    maps::{Array, LruHashMap},
    programs::TcContext,
};
use netpath_common::{
    Config, DropReason, counter_kind, counter_scope,
    ct::{
        CtEntry, CtKey4, TOUCH_NS, TcpState, Tuple, ct_dir, ct_flags, fill, opens_tcp_flow, proto,
        tcp_transition,
    },
    ct6::CtKey6,
};

use crate::{
    counters::count,
    lookup::{published, published6},
    maps::{
        NP_CONFIG, NP_CT_FILL, NP_CT_SCRATCH, NP_CT4, NP_CT6, NP_CT6_FILL, NP_CT6_SCRATCH,
        NP_SOCK_TUPLE,
    },
};

/// What a conntrack key's family brings: its table, the table's fill
/// count, scratch room for a new flow's entries, and the checks a
/// translated tuple must pass.
pub trait Table: Tuple + 'static {
    fn map() -> &'static LruHashMap<Self, CtEntry<Self>>;
    fn fill() -> &'static Array<u64>;
    /// This CPU's room for a new flow's two entries.
    fn scratch() -> Option<*mut [CtEntry<Self>; 2]>;
    /// Whether a socket of the host, or a published host port, holds the
    /// REPLY tuple `reply` (then a translated flow must not claim it).
    fn held_by_host(skb: *mut c_void, reply: &Self) -> bool;
    /// Tells `netpath monitor` about a new flow.
    fn flow_event(orig: &Self, reply: &Self, net_id: u32);
    /// This table's global function for [`ct_create`] (`new`: the
    /// translated tuple).
    fn create_global(skb: *mut __sk_buff, orig: &Self, new: &Self, ids: u64, meta: u32) -> i32;
}

impl Table for CtKey4 {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, CtEntry<Self>> {
        &NP_CT4
    }
    #[inline(always)]
    fn fill() -> &'static Array<u64> {
        &NP_CT_FILL
    }
    #[inline(always)]
    fn scratch() -> Option<*mut [CtEntry<Self>; 2]> {
        NP_CT_SCRATCH.get_ptr_mut(0)
    }
    #[inline(always)]
    fn held_by_host(skb: *mut c_void, reply: &Self) -> bool {
        host_socket4(skb, reply)
            || published(reply.daddr_be, reply.dport_be, reply.proto, false).is_some()
    }
    #[inline(always)]
    fn flow_event(orig: &Self, reply: &Self, net_id: u32) {
        crate::events::flow_event(orig, reply, net_id);
    }
    #[inline(always)]
    fn create_global(skb: *mut __sk_buff, orig: &Self, new: &Self, ids: u64, meta: u32) -> i32 {
        netpath_ct_create4(skb, orig, new, ids, meta)
    }
}

impl Table for CtKey6 {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, CtEntry<Self>> {
        &NP_CT6
    }
    #[inline(always)]
    fn fill() -> &'static Array<u64> {
        &NP_CT6_FILL
    }
    #[inline(always)]
    fn scratch() -> Option<*mut [CtEntry<Self>; 2]> {
        NP_CT6_SCRATCH.get_ptr_mut(0)
    }
    #[inline(always)]
    fn held_by_host(skb: *mut c_void, reply: &Self) -> bool {
        host_socket6(skb, reply) || published6(&reply.daddr, reply.dport_be, reply.proto).is_some()
    }
    #[inline(always)]
    fn flow_event(orig: &Self, reply: &Self, net_id: u32) {
        crate::events::flow_event6(orig, reply, net_id);
    }
    #[inline(always)]
    fn create_global(skb: *mut __sk_buff, orig: &Self, new: &Self, ids: u64, meta: u32) -> i32 {
        netpath_ct_create6(skb, orig, new, ids, meta)
    }
}

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
pub fn ct_lookup<K: Table>(key: &K) -> Option<*mut CtEntry<K>> {
    K::map().get_ptr_mut(key)
}

#[inline(always)]
fn count_ct(kind: u16) {
    count(counter_scope::CONNTRACK, 0, kind, 0);
}

/// Adds `delta` (two's complement) to the live entry count of `K`'s table.
#[inline(always)]
fn fill_add<K: Table>(delta: u64) {
    if let Some(live) = K::fill().get_ptr_mut(fill::LIVE) {
        // SAFETY: an array slot, valid while the program runs.
        unsafe { atomic_add(live, delta) };
    }
}

/// One more entry. Not inlined: the port search's frame (on top of the
/// classifiers') has no room left for its locals, as for [`at_limit`].
#[inline(never)]
fn fill_inc<K: Table>() {
    fill_add::<K>(1);
}

/// Whether the table holds as many entries as it may: new flows wait
/// until the sweeper made room (see `ct::fill`). Not inlined: the
/// classifiers' frames have no room left for its locals.
#[inline(never)]
fn at_limit<K: Table>() -> bool {
    match (K::fill().get(fill::LIVE), K::fill().get(fill::LIMIT)) {
        // The count is signed in effect: races can take it below zero.
        (Some(&live), Some(&limit)) => limit != 0 && (live as i64) >= limit as i64,
        _ => false,
    }
}

/// Inserts an entry that must be new (`BPF_NOEXIST`), counting it.
#[inline(always)]
fn ct_insert_new<K: Table>(key: &K, e: &CtEntry<K>) -> Result<(), i32> {
    K::map().insert(key, e, BPF_NOEXIST as u64)?;
    count_ct(counter_kind::CT_INSERTS);
    fill_inc::<K>();
    Ok(())
}

/// Removes an entry, counting it when it was there; returns whether it was.
#[inline(always)]
pub fn ct_remove<K: Table>(key: &K) -> bool {
    let removed = ct_remove_uncounted(key);
    if removed {
        count_ct(counter_kind::CT_REMOVES);
        fill_add::<K>(u64::MAX);
    }
    removed
}

/// [`ct_remove`] for a sweep pass, which counts what it removed once, at
/// its end ([`fill_sub`], `count_many`): counting each removal in the
/// walk's callback costs time per entry and multiplies the states the
/// verifier explores.
#[inline(always)]
pub fn ct_remove_uncounted<K: Table>(key: &K) -> bool {
    K::map().remove(key).is_ok()
}

/// Takes `n` entries off the live count.
#[inline(always)]
pub fn fill_sub<K: Table>(n: u64) {
    fill_add::<K>(n.wrapping_neg());
}

/// Sets the live entry count to what a sweep pass found.
#[inline(always)]
pub fn set_live<K: Table>(entries: u64) {
    if let Some(live) = K::fill().get_ptr_mut(fill::LIVE) {
        // SAFETY: an array slot, valid while the program runs.
        unsafe { *live = entries };
    }
}

/// Records a half-way (`MID`) entry: new, or replacing the one there.
#[inline(always)]
pub fn ct_put_mid<K: Table>(key: &K, e: &CtEntry<K>) {
    if ct_insert_new(key, e).is_err() {
        let _ = K::map().insert(key, e, 0);
    }
}

/// Records the two `MID` entries of a flow whose packets are rewritten at
/// both ends (a container reaching its own published port): `mid`, the
/// tuple between the two rewrites, leaves as `reply` reversed, and `mid`
/// reversed leaves as `orig` reversed. Built in the scratch space (the
/// flow's own entries are in the map by now), not on the stack. A BPF
/// subprogram (its own stack frame, apart from the flow's creation).
#[inline(never)]
pub fn ct_put_mids<K: Table>(mid: &K, orig: &K, reply: &K, flags: u32, net_id: u32) {
    let Some(sc) = K::scratch() else {
        return;
    };
    // SAFETY: this CPU's slot, used by nothing else while the program runs.
    let (a, b) = unsafe { (&mut (*sc)[0], &mut (*sc)[1]) };
    let t = now();
    for (e, peer) in [(&mut *a, reply), (&mut *b, orig)] {
        e.peer = *peer;
        e.nat_addr_be = K::Addr::default();
        e.nat_port_be = 0;
        e.created_ns = t;
        e.last_seen_ns = t;
        e.dir = ct_dir::MID;
        e.state = 0;
        e.flags = flags;
        e.net_id = net_id;
        e.packets = 0;
        e.bytes = 0;
    }
    ct_put_mid(mid, a);
    ct_put_mid(&mid.reversed(), b);
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
pub fn ct_touch<K: Tuple>(e: *mut CtEntry<K>, len: u32, now: u64) -> bool {
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
pub fn ct_tcp_update<K: Tuple>(orig: *mut CtEntry<K>, reply: bool, flags: u8) {
    // SAFETY: see `ct_touch`; concurrent updates race benignly (last wins).
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

/// Writes into `p` the entry for the other direction of the flow whose
/// entry `e` is keyed by `key`. `nat_addr_be`/`nat_port_be` say what each
/// direction writes on the side its NAT type changes: source NAT flows
/// write the source going out (`U:nport`) and the destination coming back
/// (`C:cport`); destination NAT flows write the destination going in
/// (`T:tport`) and the source coming back (`H:hport`). (The full
/// translated tuple is always the partner's key reversed.)
#[inline(always)]
fn fill_partner<K: Tuple>(p: &mut CtEntry<K>, key: &K, e: &CtEntry<K>) {
    let to_reply = e.dir == ct_dir::ORIGINAL;
    // Which end of `key` the partner writes: for flows a container started
    // the partner of ORIGINAL restores the key's source, the partner of
    // REPLY writes the key's destination; for flows towards a container
    // (destination NAT) the other way round.
    let key_src = to_reply != ct_flags::inbound(e.flags);
    p.peer = *key;
    p.nat_addr_be = if key_src { key.saddr() } else { key.daddr() };
    p.nat_port_be = if key_src {
        key.sport_be()
    } else {
        key.dport_be()
    };
    p.dir = if to_reply {
        ct_dir::REPLY
    } else {
        ct_dir::ORIGINAL
    };
    // A re-created ORIGINAL entry belongs to a flow seen both ways; the
    // next packets refine its state.
    p.state = if !to_reply && key.proto() == proto::TCP {
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
pub fn ct_keep_partner<K: Table>(key: &K, e: *mut CtEntry<K>) -> bool {
    // SAFETY: see `ct_touch`.
    let peer = unsafe { (*e).peer };
    if let Some(p) = ct_lookup(&peer) {
        // SAFETY: as above.
        if unsafe { &(*p).peer }.same(key) {
            return true;
        }
    }
    ct_remove(key);
    false
}

/// Whether a socket of the host would take a packet with IPv4 tuple
/// `reply` (a TCP connection, time-wait or listener; a bound UDP socket):
/// then the tuple is the host's, and a translated flow must not claim it.
/// The tuple is built in per-CPU scratch (`NP_SOCK_TUPLE`), not on the
/// stack: this is the deepest call of a flow's creation, under the
/// creation's global function, whose frames all count against one stack.
#[inline(never)]
fn host_socket4(skb: *mut c_void, reply: &CtKey4) -> bool {
    let Some(t) = NP_SOCK_TUPLE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used by nothing else while the program
    // runs. Only the IPv4 part is set (and read: `size`).
    unsafe {
        (*t).__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: reply.saddr_be,
            daddr: reply.daddr_be,
            sport: reply.sport_be,
            dport: reply.dport_be,
        };
    }
    // sizeof(bpf_sock_tuple.ipv4)
    host_socket(skb, t, 12, reply.proto)
}

/// [`host_socket4`] for an IPv6 tuple.
#[inline(never)]
fn host_socket6(skb: *mut c_void, reply: &CtKey6) -> bool {
    let Some(t) = NP_SOCK_TUPLE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: 16 bytes as four words in the same (wire) order.
    let words = |a: [u8; 16]| unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(a) };
    // SAFETY: as in `host_socket4`.
    unsafe {
        (*t).__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: words(reply.saddr),
            daddr: words(reply.daddr),
            sport: reply.sport_be,
            dport: reply.dport_be,
        };
    }
    // sizeof(bpf_sock_tuple.ipv6)
    host_socket(skb, t, 36, reply.proto)
}

#[inline(always)]
fn host_socket(skb: *mut c_void, t: *mut bpf_sock_tuple, size: u32, proto_nr: u8) -> bool {
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the helpers take the program's skb and a tuple of `size`
    // bytes; a socket they return is released before returning.
    unsafe {
        let sk = match proto_nr {
            proto::TCP => bpf_skc_lookup_tcp(skb, t, size, netns, 0),
            proto::UDP => bpf_sk_lookup_udp(skb, t, size, netns, 0),
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
///
/// Verified once per table as a global function ([`netpath_ct_create4`],
/// [`netpath_ct_create6`]): inline, the verifier walked the creation again
/// for every way each caller (masquerade, publishing, inbound flows, both
/// families) reached it, a third of the uplink's programs. The flow is
/// then looked up by `orig` (a global function returns a number only).
#[inline(always)]
pub fn ct_create<K: Table>(
    ctx: &TcContext,
    orig: &K,
    translated: &K,
    vary: bool,
    flags: u32,
    net_id: u32,
    tcp_flags: u8,
) -> Result<*mut CtEntry<K>, DropReason> {
    let ids = u64::from(flags) << 32 | u64::from(net_id);
    let meta = u32::from(tcp_flags) | u32::from(vary) << 8;
    // Read back through the stack: LLVM knows the body's codes are valid
    // and would drop `from_u16`'s bounds check, which the verifier (for
    // which a global function returns any number) needs.
    let code = K::create_global(ctx.skb.skb, orig, translated, ids, meta);
    // SAFETY: a local, read once.
    match unsafe { core::ptr::read_volatile(&raw const code) } {
        0 => {
            let e = ct_lookup(orig).ok_or(DropReason::CtInsertFailed)?;
            // Told here, not in the global function: the event's frame
            // would sit on top of the creation's, the deepest of the
            // programs' call chains.
            // The tuple the flow leaves with is its REPLY key reversed
            // (the source port may have been varied from `translated`'s).
            // SAFETY: a pointer to the entry just found, valid for this program.
            K::flow_event(orig, unsafe { &(*e).peer }, net_id);
            Ok(e)
        }
        code => {
            let reason = DropReason::from_u16(code as u16).unwrap_or(DropReason::CtInsertFailed);
            // Another CPU may have made this very flow meanwhile: its
            // REPLY claim beat ours (a kept port has one try). Its flow
            // is the packet's.
            ct_lookup(orig).ok_or(reason)
        }
    }
}

/// [`ct_create`] for IPv4 flows: 0, or the number of the `DropReason`.
/// `ids`: the flags above the network id; `meta`: the TCP flags, and bit 8
/// set when the source port may vary.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_ct_create4(
    skb: *mut __sk_buff,
    orig: *const CtKey4,
    translated: *const CtKey4,
    ids: u64,
    meta: u32,
) -> i32 {
    create_numbered(skb, orig, translated, ids, meta)
}

/// [`ct_create`] for IPv6 flows, as [`netpath_ct_create4`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_ct_create6(
    skb: *mut __sk_buff,
    orig: *const CtKey6,
    translated: *const CtKey6,
    ids: u64,
    meta: u32,
) -> i32 {
    create_numbered(skb, orig, translated, ids, meta)
}

#[inline(always)]
fn create_numbered<K: Table>(
    skb: *mut __sk_buff,
    orig: *const K,
    translated: *const K,
    ids: u64,
    meta: u32,
) -> i32 {
    // SAFETY: null or the caller's keys, valid for the call.
    let (Some(orig), Some(translated)) = (unsafe { (orig.as_ref(), translated.as_ref()) }) else {
        return i32::from(DropReason::CtInsertFailed as u16);
    };
    let ctx = TcContext::new(skb);
    let vary = (meta & 1 << 8 != 0).then_some(&ctx);
    let (flags, net_id) = ((ids >> 32) as u32, ids as u32);
    match create_flow(orig, translated, vary, flags, net_id, meta as u8) {
        Ok(_) => 0,
        Err(reason) => i32::from(reason as u16),
    }
}

#[inline(always)]
fn create_flow<K: Table>(
    orig: &K,
    translated: &K,
    vary: Option<&TcContext>,
    flags: u32,
    net_id: u32,
    tcp_flags: u8,
) -> Result<*mut CtEntry<K>, DropReason> {
    if orig.proto() == proto::TCP && !opens_tcp_flow(tcp_flags) {
        return Err(DropReason::CtInvalid);
    }
    if at_limit::<K>() {
        count_ct(counter_kind::CT_REFUSED);
        return Err(DropReason::ConntrackFull);
    }
    let r = create(orig, translated, vary, flags, net_id, now());
    if r.is_err() {
        count_ct(counter_kind::CT_INSERT_FAILED);
    }
    r
}

#[inline(always)]
fn create<K: Table>(
    orig: &K,
    translated: &K,
    vary: Option<&TcContext>,
    flags: u32,
    net_id: u32,
    now: u64,
) -> Result<*mut CtEntry<K>, DropReason> {
    let has_ports = match orig.proto() {
        proto::TCP | proto::UDP | proto::SCTP => true,
        proto::ICMP | proto::ICMPV6 => translated.sport_be() != 0,
        _ => false,
    };
    let dst_side = ct_flags::inbound(flags);
    // The two entries are built in per-CPU scratch space, not on the stack.
    let sc = K::scratch().ok_or(DropReason::CtInsertFailed)?;
    // SAFETY: this CPU's slot, used by nothing else while the program runs.
    let (oentry, partner) = unsafe { (&mut (*sc)[0], &mut (*sc)[1]) };
    oentry.peer = translated.reversed();
    oentry.nat_addr_be = if dst_side {
        translated.daddr()
    } else {
        translated.saddr()
    };
    oentry.nat_port_be = if dst_side {
        translated.dport_be()
    } else {
        translated.sport_be()
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
        // The ORIGINAL entry names its REPLY key: the search varies it
        // there, in the scratch map, not in a copy on the stack.
        reply: &raw mut oentry.peer,
        min,
        span: max - min + 1,
        // SAFETY: no preconditions.
        start: unsafe { bpf_get_prandom_u32() },
        result: 0,
    };
    // SCTP keeps its source port (see `proto::SCTP`): a taken tuple is not
    // remapped, the new flow is refused.
    let tries = if vary.is_some() && has_ports && orig.proto() != proto::SCTP {
        PORT_TRIES
    } else {
        1
    };
    // One callback verified once, rather than the verifier walking every
    // candidate port's branches.
    // SAFETY: the callback has the signature the helper expects and `s`
    // outlives the call.
    unsafe {
        bpf_loop(tries, try_port::<K> as *mut c_void, (&raw mut s).cast(), 0);
    }
    match s.result {
        CLAIMED => {}
        FAILED => return Err(DropReason::CtInsertFailed),
        _ => return Err(DropReason::NatPortsExhausted),
    }
    if !dst_side {
        oentry.nat_port_be = oentry.peer.dport_be();
    }
    if ct_insert_new(orig, oentry).is_err() {
        // Lost a race with another CPU creating the same flow: give our
        // claimed tuple back and use the winner's entry.
        ct_remove(&oentry.peer);
    }
    ct_lookup(orig).ok_or(DropReason::CtInsertFailed)
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
struct PortSearch<K: Tuple> {
    /// The packet's skb for host socket lookups; null when the port is kept.
    skb: *mut c_void,
    /// The REPLY entry (in the scratch map).
    partner: *const CtEntry<K>,
    /// The REPLY key being tried (the ORIGINAL entry's `peer`, in the
    /// scratch map).
    reply: *mut K,
    min: u32,
    span: u32,
    start: u32,
    /// 0 searching, [`CLAIMED`], [`FAILED`].
    result: i32,
}

/// `bpf_loop`'s callback: candidate `i` (0: the original port, then ports
/// from a random start in the range). Returns 1 when done.
#[inline(never)]
unsafe extern "C" fn try_port<K: Table>(i: u64, s: *mut c_void) -> i64 {
    // SAFETY: the helper passes our `PortSearch`.
    let s = unsafe { &mut *(s as *mut PortSearch<K>) };
    if i > 0 {
        if s.span == 0 {
            return 1;
        }
        let port = s.min + s.start.wrapping_add(i as u32) % s.span;
        // SAFETY: the scratch key `create` set, valid while the program runs.
        unsafe { (*s.reply).set_dport((port as u16).to_be()) };
    }
    // SAFETY: as above.
    let reply = unsafe { &*s.reply };
    // A tuple a host socket holds, or a published host port (its clients'
    // new flows would look like replies), is not ours to take.
    if !s.skb.is_null() && K::held_by_host(s.skb, reply) {
        return 0;
    }
    // SAFETY: the scratch entry `create` filled, valid while the program runs.
    match ct_insert_new(reply, unsafe { &*s.partner }) {
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
