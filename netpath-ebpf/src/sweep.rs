//! One pass over the conntrack table, inside the kernel (see
//! `netpath_common::sweep`): the loader runs `netpath_sweep` with
//! BPF_PROG_TEST_RUN on a frame carrying a [`SweepArgs`]; the program
//! walks `NP_CT4`, then `NP_CT6`, with `bpf_for_each_map_elem`, judges each
//! flow once
//! (from its ORIGINAL entry, or its REPLY entry when the ORIGINAL is gone),
//! removes what the arguments say and writes what it found back into the
//! frame. The daemon sweeps this way every second; `conntrack flush`,
//! `unpublish` and `down` flush this way in one pass.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_for_each_map_elem, bpf_loop},
    programs::TcContext,
};
use netpath_common::{
    Config, MAX_NETWORKS, counter_kind, counter_scope,
    ct::{CtEntry, CtKey4, TcpState, Tuple, ct_dir, ct_flags, timeout_class},
    ct6::{CtKey6, same_addr},
    sweep::{SweepArgs, mode},
};

use crate::{
    counters::count_many,
    ct::{Table, ct_lookup, ct_remove_uncounted, fill_sub, now, set_live},
    maps::{NP_CONFIG, NP_CT_NETWORKS},
    parse::ETH_HLEN,
};

/// The timeouts before the loader wrote any.
static DEFAULT_TIMEOUTS: [u32; 16] = Config::defaults().timeouts_s;

/// What the callback works with: the arguments (and results) and the
/// time of the pass.
#[repr(C)]
struct Pass {
    args: SweepArgs,
    now: u64,
}

pub fn run(ctx: &TcContext) -> i32 {
    let Ok(args) = ctx.load::<SweepArgs>(ETH_HLEN) else {
        return TC_ACT_SHOT;
    };
    let mut pass = Pass { args, now: now() };
    pass.args.entries = 0;
    pass.args.flows = 0;
    pass.args.embryonic = 0;
    pass.args.removed_flows = 0;
    pass.args.removed_entries = 0;
    if pass.args.mode & mode::PER_NETWORK != 0 {
        // SAFETY: the callback has the signature the helper expects and
        // takes no context.
        unsafe {
            bpf_loop(
                MAX_NETWORKS + 1,
                zero_network as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        }
    }
    walk::<CtKey4>(&mut pass);
    walk::<CtKey6>(&mut pass);
    if pass.args.removed_entries > 0 {
        count_many(
            counter_scope::CONNTRACK,
            0,
            counter_kind::CT_REMOVES,
            pass.args.removed_entries,
            0,
        );
    }
    if ctx.store(ETH_HLEN, &pass.args, 0).is_err() {
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// `bpf_loop`'s callback: network `id`'s flow count back to zero before a
/// counting pass. A loop in the program itself was verified once per
/// iteration, 4,097 of them.
#[inline(never)]
unsafe extern "C" fn zero_network(id: u64, _ctx: *mut c_void) -> i64 {
    if let Some(n) = NP_CT_NETWORKS.get_ptr_mut(id as u32) {
        // SAFETY: an array slot, valid while the program runs.
        unsafe { *n = 0 };
    }
    0
}

/// One table's walk, adding to the pass's results, and its fill count
/// brought up to date.
#[inline(always)]
fn walk<K: Judged>(pass: &mut Pass) {
    let (entries, removed) = (pass.args.entries, pass.args.removed_entries);
    // SAFETY: the map pointer is the map's definition (relocated by the
    // loader), the callback has the signature the helper expects and the
    // context is this frame's `pass`, which outlives the call.
    unsafe {
        bpf_for_each_map_elem(
            (K::map() as *const _ as *mut c_void).cast(),
            visit::<K> as *mut c_void,
            (pass as *mut Pass).cast(),
            0,
        );
    }
    if pass.args.mode & mode::CALIBRATE != 0 {
        // The exact count as of this pass (see `ct::fill`).
        set_live::<K>(u64::from(pass.args.entries - entries));
    } else if pass.args.removed_entries > removed {
        fill_sub::<K>(u64::from(pass.args.removed_entries - removed));
    }
}

/// `bpf_for_each_map_elem`'s callback: one entry of a conntrack table. Returns 0
/// (go on).
///
/// The walk itself costs about 90 ns an entry; what makes a pass cheap is
/// doing nothing more for most entries. An entry that saw a packet within
/// its flow's timeout keeps its flow alive whatever its partner does, so
/// only stale entries look their partner up; under pressure an embryonic
/// flow goes whole from its ORIGINAL entry. Counting passes look every
/// partner up, to count each flow once.
#[inline(never)]
unsafe extern "C" fn visit<K: Judged>(
    _map: *mut c_void,
    key: *mut c_void,
    value: *mut c_void,
    pass: *mut c_void,
) -> i64 {
    // SAFETY: the helper passes this entry's key and value (valid for the
    // call) and our `Pass`.
    let (key, e, pass) = unsafe {
        (
            &*(key as *const K),
            &*(value as *const CtEntry<K>),
            &mut *(pass as *mut Pass),
        )
    };
    pass.args.entries += 1;
    let mode = pass.args.mode;
    if mode & mode::CALIBRATE != 0 {
        return 0;
    }
    let (dir, flags, last) = (e.dir, e.flags, e.last_seen_ns);
    if dir == ct_dir::MID {
        // Half-way entries go with their flow, once the entry they name is
        // gone.
        if ct_lookup(&e.peer).is_none() {
            remove(pass, key);
        }
        return 0;
    }
    let idle = pass.now.saturating_sub(last);
    let counting = mode & (mode::PER_NETWORK | mode::FLUSH) != 0;
    if mode & mode::PRESSURE != 0
        && dir == ct_dir::ORIGINAL
        && idle > u64::from(pass.args.pressure_timeout_ms) * 1_000_000
        && embryonic(key.proto(), e)
    {
        // An embryonic flow goes whole, on its ORIGINAL entry's age (both
        // entries of an unanswered flow are as old): its REPLY entry with
        // it, so REPLY entries, the established flows' among them, never
        // look anything up under pressure. The ORIGINAL first, as below.
        let peer = e.peer;
        let whole = partner(key, e).is_some();
        remove(pass, key);
        if whole {
            remove(pass, &peer);
        }
        pass.args.removed_flows += 1;
        return 0;
    }
    let unreplied = dir == ct_dir::ORIGINAL && embryonic(key.proto(), e);
    // The state is on the ORIGINAL entry; a REPLY entry's flow is judged
    // as established until its ORIGINAL says more.
    let state = if dir == ct_dir::ORIGINAL {
        e.state
    } else {
        TcpState::Established as u8
    };
    let fresh = idle <= timeout_s(key.proto(), state, flags) * NS;
    if fresh && !counting {
        // Alive whatever the partner says; counted once, from the ORIGINAL.
        if dir == ct_dir::ORIGINAL {
            pass.args.flows += 1;
            if unreplied {
                pass.args.embryonic += 1;
            }
        }
        return 0;
    }
    let partner = partner(key, e);
    if dir == ct_dir::ORIGINAL {
        // SAFETY: a map value pointer, valid while the program runs.
        K::judge(pass, key, e, &e.peer, partner.unwrap_or(core::ptr::null()));
        return 0;
    }
    // Judged with its ORIGINAL, unless that one is gone (evicted).
    if let Some(o) = partner
        // SAFETY: as above.
        && unsafe { (*o).dir } == ct_dir::ORIGINAL
    {
        return 0;
    }
    K::judge(pass, &e.peer, core::ptr::null(), key, e);
    0
}

const NS: u64 = 1_000_000_000;

/// A flow not established yet (see [`netpath_common::ct::embryonic`]).
/// For a REPLY entry of a TCP flow only its ORIGINAL knows.
#[inline(always)]
fn embryonic<K: Tuple>(proto_nr: u8, e: &CtEntry<K>) -> bool {
    if e.dir == ct_dir::ORIGINAL {
        netpath_common::ct::embryonic(proto_nr, e.state, e.flags)
    } else {
        e.flags & ct_flags::SEEN_REPLY == 0
    }
}

/// The timeout, in seconds, of a flow in this state.
#[inline(always)]
fn timeout_s(proto: u8, state: u8, flags: u32) -> u64 {
    netpath_timeout_s(u32::from(proto), u32::from(state), flags)
}

/// [`timeout_s`] as a global function: the verifier checks it once on its
/// own and its callers see an unknown number. Inlined, every timeout class
/// became a separate path through the rest of the walk's callback (the
/// class indexes an array, so the verifier keeps it exact), and the
/// verifier gave up.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netpath_timeout_s(proto: u32, state: u32, flags: u32) -> u64 {
    let (proto, state) = (proto as u8, state as u8);
    let class = timeout_class(proto, state, flags);
    // The compiler knows the class is below 16 and would drop the bound
    // check; the verifier does not, and needs it.
    // SAFETY: reading a local.
    let class = unsafe { core::ptr::read_volatile(&class) };
    // Read from the map (a variable index into the stack is not allowed).
    let timeouts = match NP_CONFIG.get(0) {
        Some(c) if !c.is_unset() => &c.timeouts_s,
        _ => &DEFAULT_TIMEOUTS,
    };
    u64::from(timeouts.get(class).copied().unwrap_or(0))
}

/// The other entry of `e`'s flow, if it is there and names `key` back.
#[inline(always)]
fn partner<K: Table>(key: &K, e: &CtEntry<K>) -> Option<*const CtEntry<K>> {
    let p = ct_lookup(&e.peer)?;
    // SAFETY: map value pointer, valid while the program runs.
    unsafe { &(*p).peer }.same(key).then_some(p.cast_const())
}

#[inline(always)]
fn remove<K: Table>(pass: &mut Pass, key: &K) {
    if ct_remove_uncounted(key) {
        pass.args.removed_entries += 1;
    }
}

/// A table whose flows [`judge`] judges as a global function (one per
/// table), verified once on its own: inline, the flush filter's every
/// way through was a separate state through the rest of the callback, and
/// the sweeper cost the verifier 690,000 instructions.
trait Judged: Table {
    /// [`judge`]; `orig` and `reply` may be null (absent).
    fn judge(
        pass: &mut Pass,
        okey: &Self,
        orig: *const CtEntry<Self>,
        rkey: &Self,
        reply: *const CtEntry<Self>,
    );
}

/// The [`Judged`] impl of one table, with its global function.
macro_rules! judged {
    ($key:ty, $global:ident) => {
        impl Judged for $key {
            #[inline(always)]
            fn judge(
                pass: &mut Pass,
                okey: &Self,
                orig: *const CtEntry<Self>,
                rkey: &Self,
                reply: *const CtEntry<Self>,
            ) {
                // Copies: a map's key is read-only, a global function's
                // memory arguments writable.
                let (okey, rkey) = (*okey, *rkey);
                $global(pass, &okey, orig, &rkey, reply);
            }
        }

        /// [`judge`] of one table's flow (see [`Judged`]).
        #[unsafe(no_mangle)]
        #[inline(never)]
        extern "C" fn $global(
            pass: *mut Pass,
            okey: *const $key,
            orig: *const CtEntry<$key>,
            rkey: *const $key,
            reply: *const CtEntry<$key>,
        ) -> i32 {
            judge_at(pass, okey, orig, rkey, reply)
        }
    };
}

judged!(CtKey4, netpath_sweep_judge4);
judged!(CtKey6, netpath_sweep_judge6);

/// [`judge`] from a global function's pointers (each may be null to the
/// verifier; the callback passes `pass` and both keys).
#[inline(always)]
fn judge_at<K: Table>(
    pass: *mut Pass,
    okey: *const K,
    orig: *const CtEntry<K>,
    rkey: *const K,
    reply: *const CtEntry<K>,
) -> i32 {
    // SAFETY: null or the callback's pass and the walked map's keys and
    // values, valid for the call.
    let (Some(pass), Some(okey), Some(rkey)) =
        (unsafe { (pass.as_mut(), okey.as_ref(), rkey.as_ref()) })
    else {
        return 0;
    };
    // SAFETY: as above.
    let (orig, reply) = unsafe { (orig.as_ref(), reply.as_ref()) };
    judge(pass, okey, orig, rkey, reply);
    0
}

/// One flow: its ORIGINAL key and entry (absent when evicted), its REPLY
/// key and entry (absent when evicted or taken by another flow).
#[inline(always)]
fn judge<K: Table>(
    pass: &mut Pass,
    okey: &K,
    orig: Option<&CtEntry<K>>,
    rkey: &K,
    reply: Option<&CtEntry<K>>,
) {
    let (first, flags, state, net_id) = match (orig, reply) {
        (Some(o), _) => (o, o.flags, o.state, o.net_id),
        // Orphaned reply entry: judged as a live flow would be.
        (None, Some(r)) => (r, r.flags, TcpState::Established as u8, r.net_id),
        (None, None) => return,
    };
    let last = match reply {
        Some(r) if r.last_seen_ns > first.last_seen_ns => r.last_seen_ns,
        _ => first.last_seen_ns,
    };
    let expired = pass.now.saturating_sub(last) > timeout_s(okey.proto(), state, flags) * NS;
    let a = &pass.args;
    let go = (a.mode & mode::EXPIRE != 0 && expired)
        || (a.mode & mode::FLUSH != 0 && matches(a, okey, rkey, flags, net_id));
    if go {
        // The ORIGINAL entry first: a container packet racing this finds no
        // flow and creates a new one (its old external tuple is still
        // claimed, so it gets a fresh one) instead of using a half-removed
        // flow.
        if orig.is_some() {
            remove(pass, okey);
        }
        if reply.is_some() {
            remove(pass, rkey);
        }
        pass.args.removed_flows += 1;
        return;
    }
    pass.args.flows += 1;
    if embryonic(okey.proto(), first) {
        pass.args.embryonic += 1;
    }
    if pass.args.mode & mode::PER_NETWORK != 0
        && let Some(n) = NP_CT_NETWORKS.get_ptr_mut(net_id)
    {
        // SAFETY: an array slot, valid while the program runs; only this
        // pass writes it.
        unsafe { *n += 1 };
    }
}

/// Whether a flow matches the flush filter (every set field must; an
/// address of one family matches no flow of the other).
#[inline(always)]
fn matches<K: Tuple>(a: &SweepArgs, okey: &K, rkey: &K, flags: u32, net_id: u32) -> bool {
    let port = a.port_be;
    let named4 = a.src_be != 0 || a.dst_be != 0 || a.pub_addr_be != 0;
    let named6 = !zero6(&a.src6) || !zero6(&a.dst6) || !zero6(&a.pub_addr6);
    let addrs = match (okey.v4(), okey.v6()) {
        (Some((src, dst)), _) => {
            !named6
                && (a.src_be == 0 || src == a.src_be)
                && (a.dst_be == 0 || dst == a.dst_be)
                && (a.pub_addr_be == 0 || dst == a.pub_addr_be)
        }
        (None, Some((src, dst))) => {
            !named4
                && (zero6(&a.src6) || same_addr(src, &a.src6))
                && (zero6(&a.dst6) || same_addr(dst, &a.dst6))
                && (zero6(&a.pub_addr6) || same_addr(dst, &a.pub_addr6))
        }
        (None, None) => false,
    };
    let published = a.pub_last == 0 || {
        let p = u16::from_be(okey.dport_be());
        flags & ct_flags::DNAT != 0
            && okey.proto() == a.pub_proto
            && p >= a.pub_first
            && p <= a.pub_last
    };
    let family = match a.family {
        4 => okey.v4().is_some(),
        6 => okey.v4().is_none(),
        _ => true,
    };
    addrs
        && family
        && (a.net_id == 0 || net_id == a.net_id)
        && (a.proto == 0 || okey.proto() == a.proto)
        && (port == 0
            || okey.sport_be() == port
            || okey.dport_be() == port
            || rkey.sport_be() == port
            || rkey.dport_be() == port)
        && published
}

/// Whether an IPv6 filter address is unset (all zeros).
#[inline(always)]
fn zero6(a: &[u8; 16]) -> bool {
    same_addr(a, &[0; 16])
}
