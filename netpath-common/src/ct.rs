//! Conntrack: tuples, entries and the TCP state machine, shared by the
//! datapath (which writes entries) and the loader (which lists, sweeps and
//! flushes them). The state machine is pure so it is tested on the host.
//!
//! Each flow has two entries in `NP_CT4`:
//! - the ORIGINAL entry, keyed by the tuple the container sent
//!   (`C:cport -> R:rport`), says what to write as source (`U:nport`);
//! - the REPLY entry, keyed by the tuple replies carry (`R:rport -> U:nport`),
//!   says what to write as destination (`C:cport`).
//!
//! Each names the other in `peer`. The REPLY entry is inserted first with
//! `BPF_NOEXIST`: that insert is what claims an external tuple, so two CPUs can
//! never hand one external tuple to two flows.
//!
//! ICMP echo uses its identifier as a port: requests carry it as the source
//! port (`sport = id, dport = 0`), replies as the destination port.

/// IP protocol numbers the datapath knows.
pub mod proto {
    pub const ICMP: u8 = 1;
    /// ICMPv6 (`NP_CT6` only): echo as ICMP's, timed out as ICMP.
    pub const ICMPV6: u8 = 58;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// Translated address-only: its CRC32c covers no IP address, so a
    /// rewrite that keeps the ports needs no checksum update (and one that
    /// changed them would need the whole packet's CRC recomputed).
    pub const SCTP: u8 = 132;
}

/// A conntrack tuple as it appears on the wire (addresses and ports in
/// network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey4 {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey4 {
    /// A tuple from a packet's addresses, ports (network byte order) and protocol.
    #[inline(always)]
    pub const fn new(
        saddr_be: u32,
        daddr_be: u32,
        sport_be: u16,
        dport_be: u16,
        proto: u8,
    ) -> Self {
        Self {
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto,
            _pad: [0; 3],
        }
    }

    /// The tuple of a packet travelling the other way.
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        Self::new(
            self.daddr_be,
            self.saddr_be,
            self.dport_be,
            self.sport_be,
            self.proto,
        )
    }
}

/// Direction of a conntrack entry, [`CtEntry4::dir`].
pub mod ct_dir {
    pub const ORIGINAL: u8 = 0;
    pub const REPLY: u8 = 1;
    /// A packet half-way through a flow that rewrites both ends (a
    /// container reaching its own published port): the destination was
    /// rewritten at ingress, the source is rewritten at egress, found by this
    /// intermediate tuple. `peer` is the key whose reverse gives the source.
    pub const MID: u8 = 2;
}

/// Flags in [`CtEntry4::flags`] (kept on the ORIGINAL entry unless noted).
pub mod ct_flags {
    /// A reply has been seen (nf_conntrack's SEEN_REPLY; UDP then uses the
    /// stream timeout).
    pub const SEEN_REPLY: u32 = 1 << 0;
    /// The originator sent a FIN.
    pub const FIN_ORIGINAL: u32 = 1 << 1;
    /// The responder sent a FIN.
    pub const FIN_REPLY: u32 = 1 << 2;
    /// Source NAT (masquerade) flow.
    pub const SNAT: u32 = 1 << 3;
    /// Destination NAT flow (a published port).
    pub const DNAT: u32 = 1 << 4;
    /// Started from outside the host straight at a container's address
    /// (a routed network's published container port, ICMP echo): tracked,
    /// not translated.
    pub const INBOUND: u32 = 1 << 5;
    /// A flow of the host itself whose source port was changed because a
    /// container's translated flow holds its tuple (as netfilter's NAT
    /// remaps the later of two clashing connections).
    pub const HOST: u32 = 1 << 6;
    /// A TCP flow that completed its handshake, or was picked up mid-stream
    /// and then answered (nf_conntrack's ASSURED): only flows without it
    /// are embryonic (see [`super::embryonic`]).
    pub const ASSURED: u32 = 1 << 7;

    /// Whether the flow's first packet came towards a container (a
    /// published port, or [`INBOUND`]): its ORIGINAL direction is handled
    /// at ingress hooks, its REPLY direction at egress hooks.
    #[inline(always)]
    pub const fn inbound(flags: u32) -> bool {
        flags & (DNAT | INBOUND) != 0
    }
}

/// TCP connection states, [`CtEntry4::state`] (0 for other protocols).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    TimeWait = 5,
    Close = 6,
}

impl TcpState {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::SynSent,
            2 => Self::SynRecv,
            3 => Self::Established,
            4 => Self::FinWait,
            5 => Self::TimeWait,
            6 => Self::Close,
            _ => Self::None,
        }
    }

    /// Spelled as `conntrack -L` does.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::Established => "ESTABLISHED",
            Self::FinWait => "FIN_WAIT",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
        }
    }
}

/// TCP header flag bits (byte 13 of the header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A conntrack tuple of either family ([`CtKey4`], [`crate::ct6::CtKey6`]):
/// what the datapath's conntrack and sweep need of a key, so one
/// implementation serves both tables.
pub trait Tuple: Copy + Default {
    /// An address as the entry stores it (network byte order).
    type Addr: Copy + Default + core::fmt::Debug + PartialEq;
    fn saddr(&self) -> Self::Addr;
    fn daddr(&self) -> Self::Addr;
    fn sport_be(&self) -> u16;
    fn dport_be(&self) -> u16;
    fn proto(&self) -> u8;
    /// The tuple of a packet travelling the other way.
    fn reversed(&self) -> Self;
    /// Sets the destination port (in place: IPv6 tuples are too big for
    /// copies on the BPF stack).
    fn set_dport(&mut self, dport_be: u16);
    /// Field-wise comparison (a derived `==` becomes a `bcmp` call the
    /// kernel does not have).
    fn same(&self, other: &Self) -> bool;
    /// The IPv4 addresses, for the flush filter.
    fn v4(&self) -> Option<(u32, u32)>;
    /// The IPv6 addresses, for the flush filter.
    fn v6(&self) -> Option<(&[u8; 16], &[u8; 16])>;
}

impl Tuple for CtKey4 {
    type Addr = u32;
    #[inline(always)]
    fn saddr(&self) -> u32 {
        self.saddr_be
    }
    #[inline(always)]
    fn daddr(&self) -> u32 {
        self.daddr_be
    }
    #[inline(always)]
    fn sport_be(&self) -> u16 {
        self.sport_be
    }
    #[inline(always)]
    fn dport_be(&self) -> u16 {
        self.dport_be
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn reversed(&self) -> Self {
        CtKey4::reversed(self)
    }
    #[inline(always)]
    fn set_dport(&mut self, dport_be: u16) {
        self.dport_be = dport_be;
    }
    #[inline(always)]
    fn same(&self, b: &Self) -> bool {
        self.saddr_be == b.saddr_be
            && self.daddr_be == b.daddr_be
            && self.sport_be == b.sport_be
            && self.dport_be == b.dport_be
            && self.proto == b.proto
    }
    #[inline(always)]
    fn v4(&self) -> Option<(u32, u32)> {
        Some((self.saddr_be, self.daddr_be))
    }
    #[inline(always)]
    fn v6(&self) -> Option<(&[u8; 16], &[u8; 16])> {
        None
    }
}

/// Value of the conntrack tables: `NP_CT4` ([`CtEntry4`], 64 bytes) and
/// `NP_CT6` ([`crate::ct6::CtEntry6`], 104 bytes). The fields line up so
/// neither has padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<K: Tuple> {
    /// The other direction's key.
    pub peer: K,
    /// ORIGINAL: the source address written into the container's packets.
    /// REPLY: the destination address written into replies.
    pub nat_addr_be: K::Addr,
    /// The port (ICMP: identifier) written next to `nat_addr_be`.
    pub nat_port_be: u16,
    /// [`ct_dir`].
    pub dir: u8,
    /// [`TcpState`] (ORIGINAL entry).
    pub state: u8,
    /// [`ct_flags`].
    pub flags: u32,
    /// The network of the container.
    pub net_id: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` of the last packet in this direction, refreshed at
    /// most every [`TOUCH_NS`].
    pub last_seen_ns: u64,
    /// Packets and bytes in this direction.
    pub packets: u64,
    pub bytes: u64,
}

/// Value of `NP_CT4`.
pub type CtEntry4 = CtEntry<CtKey4>;

// SAFETY: `repr(C)`, every field plain data, no padding (16 + 4 + 2 + 1 +
// 1 + 4 + 4 bytes before the first u64, at 32).
#[cfg(feature = "user")]
unsafe impl bytemuck::Zeroable for CtEntry4 {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl bytemuck::Pod for CtEntry4 {}

/// How stale `last_seen_ns` may get before a packet refreshes it (and checks
/// that the other direction's entry still exists). Timeouts are this precise.
pub const TOUCH_NS: u64 = 1_000_000_000;

/// Key of `NP_FRAG4`: one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey4 {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `NP_FRAG4`: the ports the first fragment carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragPorts {
    pub sport_be: u16,
    pub dport_be: u16,
}

/// Maximum entries of `NP_CT4` (two per flow) unless `conntrack config
/// --max` sized it.
pub const MAX_CT4: u32 = 262_144;

/// `NP_CT_FILL`: how full the conntrack table is, kept by the datapath. An
/// LRU table that fills up evicts its least recently used entries, which
/// are idle *established* flows (a flood's are all fresh): the datapath
/// instead refuses new flows once the live entries reach a limit below
/// the capacity, as nf_conntrack drops new connections when its table is
/// full and it finds nothing unassured to drop early; the sweeper makes
/// room by removing embryonic flows first.
pub mod fill {
    /// Index of the live entry count: incremented and decremented by every
    /// insert and remove, set to what a sweep pass found after each pass
    /// (inserts racing the pass may be lost: the reserve absorbs that).
    pub const LIVE: u32 = 0;
    /// Index of the limit (entries); 0: none.
    pub const LIMIT: u32 = 1;

    /// The limit for a table of `capacity` entries: 7/8 of it, so flows
    /// created on all CPUs at once, and the slack of the count, never reach
    /// the capacity.
    pub const fn limit(capacity: u32) -> u32 {
        capacity - capacity / 8
    }

    /// The flows a table of `capacity` entries admits.
    pub const fn max_flows(capacity: u32) -> u32 {
        limit(capacity) / 2
    }

    /// The smallest capacity (entries) that admits `flows` flows.
    pub const fn capacity_for(flows: u32) -> u32 {
        let want = flows as u64 * 2;
        // limit(c) = c - c/8 grows by at most one per step of c: start
        // just below the answer and step up.
        let mut c = (want * 8 / 7).saturating_sub(8);
        while c - c / 8 < want {
            c += 1;
        }
        c as u32
    }
}
/// Maximum datagrams `NP_FRAG4` follows at once.
pub const MAX_FRAG4: u32 = 8192;

/// The TCP state after a packet with `flags` in direction `reply` (false:
/// from the originator), given the current state and [`ct_flags`]. Returns
/// the new state and the new flags. Modelled on nf_conntrack's table, without
/// window tracking: a flow picked up mid-stream is ESTABLISHED (like
/// `nf_conntrack_tcp_loose=1`).
///
/// A flow becomes [`ct_flags::ASSURED`] once it is ESTABLISHED with a reply
/// seen; a new SYN on a closed tuple starts over without it.
#[inline(always)]
pub const fn tcp_transition(
    state: TcpState,
    ctflags: u32,
    reply: bool,
    flags: u8,
) -> (TcpState, u32) {
    let (s, f) = tcp_step(state, ctflags, reply, flags);
    if matches!(s, TcpState::Established) && f & ct_flags::SEEN_REPLY != 0 {
        (s, f | ct_flags::ASSURED)
    } else {
        (s, f)
    }
}

/// One step of nf_conntrack's table, before [`ct_flags::ASSURED`].
#[inline(always)]
const fn tcp_step(state: TcpState, ctflags: u32, reply: bool, flags: u8) -> (TcpState, u32) {
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    if flags & tcp_flags::RST != 0 {
        return (TcpState::Close, ctflags);
    }
    if syn && !ack && !reply {
        return match state {
            // A new connection on a tuple that closed: start over.
            TcpState::None | TcpState::TimeWait | TcpState::Close => (
                TcpState::SynSent,
                ctflags
                    & !(ct_flags::FIN_ORIGINAL
                        | ct_flags::FIN_REPLY
                        | ct_flags::ASSURED
                        | ct_flags::SEEN_REPLY),
            ),
            s => (s, ctflags),
        };
    }
    if syn && ack && reply {
        return match state {
            TcpState::SynSent => (TcpState::SynRecv, ctflags),
            s => (s, ctflags),
        };
    }
    if flags & tcp_flags::FIN != 0 {
        let f = ctflags
            | if reply {
                ct_flags::FIN_REPLY
            } else {
                ct_flags::FIN_ORIGINAL
            };
        let both = ct_flags::FIN_ORIGINAL | ct_flags::FIN_REPLY;
        return if f & both == both {
            (TcpState::TimeWait, f)
        } else {
            (TcpState::FinWait, f)
        };
    }
    match state {
        TcpState::None => (TcpState::Established, ctflags),
        TcpState::SynRecv if ack && !reply => (TcpState::Established, ctflags),
        s => (s, ctflags),
    }
}

/// Whether a flow is embryonic (nf_conntrack's "not assured"), from its
/// ORIGINAL entry: TCP before its handshake completed (or picked up
/// mid-stream and never answered, or reset before it was established),
/// anything else without a reply. The daemon removes these first when the
/// table is under pressure. An ESTABLISHED flow with a reply counts as
/// assured even without the flag (entries of builds before it).
#[inline(always)]
pub const fn embryonic(proto_nr: u8, state: u8, ctflags: u32) -> bool {
    if proto_nr == proto::TCP {
        ctflags & ct_flags::ASSURED == 0
            && !(state == TcpState::Established as u8 && ctflags & ct_flags::SEEN_REPLY != 0)
    } else {
        ctflags & ct_flags::SEEN_REPLY == 0
    }
}

/// Whether a packet with TCP `flags` may open a new TCP flow: a SYN (not
/// SYN+ACK, nor with FIN or RST), or an ACK without SYN, FIN or RST (a
/// connection picked up mid-stream, as `nf_conntrack_tcp_loose=1` does).
/// Everything else (no flags, FIN or RST first, SYN+FIN …) is what
/// nf_conntrack calls INVALID: it opens nothing.
#[inline(always)]
pub const fn opens_tcp_flow(flags: u8) -> bool {
    let (syn, ack) = (flags & tcp_flags::SYN != 0, flags & tcp_flags::ACK != 0);
    let ends = flags & (tcp_flags::FIN | tcp_flags::RST) != 0;
    !ends && syn != ack
}

/// The timeout class (index into [`Config::timeouts_s`](crate::Config)) of a
/// flow, from its ORIGINAL entry.
pub const fn timeout_class(proto_nr: u8, state: u8, ctflags: u32) -> usize {
    use crate::timeout as t;
    match proto_nr {
        proto::TCP => match TcpState::from_u8(state) {
            TcpState::SynSent | TcpState::None => t::TCP_SYN_SENT,
            TcpState::SynRecv => t::TCP_SYN_RECV,
            // Picked up mid-stream and never answered: nf_conntrack's
            // "unacknowledged" timeout, not five days.
            TcpState::Established if ctflags & ct_flags::SEEN_REPLY == 0 => t::TCP_UNACK,
            TcpState::Established => t::TCP_ESTABLISHED,
            TcpState::FinWait => t::TCP_FIN_WAIT,
            TcpState::TimeWait => t::TCP_TIME_WAIT,
            TcpState::Close => t::TCP_CLOSE,
        },
        // An SCTP association answered keeps its entry with heartbeats
        // (every 30 s by default), as a UDP stream does.
        proto::UDP | proto::SCTP => {
            if ctflags & ct_flags::SEEN_REPLY != 0 {
                t::UDP_STREAM
            } else {
                t::UDP
            }
        }
        proto::ICMP | proto::ICMPV6 => t::ICMP,
        _ => t::OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::{TcpState as S, tcp_flags as F, *};

    /// As the datapath does: a reply marks SEEN_REPLY, then the step.
    fn run(steps: &[(bool, u8)]) -> (S, u32) {
        let mut st = (S::None, 0);
        for &(reply, flags) in steps {
            if reply {
                st.1 |= ct_flags::SEEN_REPLY;
            }
            st = tcp_transition(st.0, st.1, reply, flags);
        }
        st
    }

    fn embryonic_after(steps: &[(bool, u8)]) -> bool {
        let (s, f) = run(steps);
        embryonic(proto::TCP, s as u8, f)
    }

    #[test]
    fn only_answered_established_flows_are_assured() {
        let est = [(false, F::SYN), (true, F::SYN | F::ACK), (false, F::ACK)];
        assert_eq!(
            run(&est),
            (S::Established, ct_flags::SEEN_REPLY | ct_flags::ASSURED)
        );
        assert!(!embryonic_after(&est));
        assert!(embryonic_after(&[(false, F::SYN)]));
        assert!(embryonic_after(&[(false, F::SYN), (true, F::SYN | F::ACK)]));
        // Reset before it was established (a SYN to a closed port).
        assert!(embryonic_after(&[(false, F::SYN), (true, F::RST | F::ACK)]));
        // Picked up mid-stream: embryonic, with the short timeout, until
        // answered.
        let (s, f) = run(&[(false, F::ACK)]);
        assert!(embryonic(proto::TCP, s as u8, f));
        assert_eq!(
            timeout_class(proto::TCP, s as u8, f),
            crate::timeout::TCP_UNACK
        );
        assert!(!embryonic_after(&[(false, F::ACK), (true, F::ACK)]));
        // A closed assured flow stays assured; a new SYN starts over.
        let mut fin = est.to_vec();
        fin.extend([(false, F::FIN | F::ACK), (true, F::FIN | F::ACK)]);
        assert!(!embryonic_after(&fin));
        fin.push((false, F::SYN));
        assert!(embryonic_after(&fin));
        // Entries of builds before the flag: established and answered.
        assert!(!embryonic(
            proto::TCP,
            S::Established as u8,
            ct_flags::SEEN_REPLY
        ));
        assert!(embryonic(proto::UDP, 0, 0));
        assert!(!embryonic(proto::UDP, 0, ct_flags::SEEN_REPLY));
    }

    #[test]
    fn handshake_and_close() {
        assert_eq!(run(&[(false, F::SYN)]).0, S::SynSent);
        assert_eq!(
            run(&[(false, F::SYN), (true, F::SYN | F::ACK)]).0,
            S::SynRecv
        );
        let est = [(false, F::SYN), (true, F::SYN | F::ACK), (false, F::ACK)];
        assert_eq!(run(&est).0, S::Established);
        let mut fin = est.to_vec();
        fin.push((false, F::FIN | F::ACK));
        assert_eq!(run(&fin).0, S::FinWait);
        fin.push((true, F::ACK));
        assert_eq!(run(&fin).0, S::FinWait);
        fin.push((true, F::FIN | F::ACK));
        assert_eq!(run(&fin).0, S::TimeWait);
        // The tuple is reused after TIME_WAIT.
        fin.push((false, F::SYN));
        assert_eq!(run(&fin), (S::SynSent, 0));
    }

    #[test]
    fn rst_closes_and_midstream_is_established() {
        assert_eq!(run(&[(false, F::SYN), (true, F::RST | F::ACK)]).0, S::Close);
        assert_eq!(run(&[(false, F::ACK)]).0, S::Established);
        // A retransmitted SYN does not reset an open connection.
        let est = [
            (false, F::SYN),
            (true, F::SYN | F::ACK),
            (false, F::ACK),
            (false, F::SYN),
        ];
        assert_eq!(run(&est).0, S::Established);
    }

    #[test]
    fn only_syns_and_acks_open_flows() {
        assert!(opens_tcp_flow(F::SYN));
        assert!(opens_tcp_flow(F::ACK));
        assert!(opens_tcp_flow(F::ACK | 0x08), "ACK+PSH: data picked up");
        for bad in [
            0,
            F::FIN,
            F::RST,
            F::SYN | F::ACK,
            F::SYN | F::FIN,
            F::RST | F::ACK,
            F::FIN | F::ACK,
        ] {
            assert!(!opens_tcp_flow(bad), "{bad:#x}");
        }
    }

    #[test]
    fn the_fill_limit_admits_what_was_asked() {
        for flows in [1024u32, 4096, 114_688, 131_072, 1_000_000, 8_388_608] {
            let c = fill::capacity_for(flows);
            assert_eq!(fill::max_flows(c), flows);
            assert!(fill::max_flows(c - 1) < flows, "the smallest");
            assert!(fill::limit(c) < c);
        }
        assert_eq!(fill::max_flows(MAX_CT4), 114_688);
    }

    #[test]
    fn timeout_classes() {
        use crate::timeout as t;
        assert_eq!(timeout_class(proto::UDP, 0, 0), t::UDP);
        assert_eq!(
            timeout_class(proto::UDP, 0, ct_flags::SEEN_REPLY),
            t::UDP_STREAM
        );
        assert_eq!(
            timeout_class(proto::TCP, S::Established as u8, ct_flags::SEEN_REPLY),
            t::TCP_ESTABLISHED
        );
        assert_eq!(
            timeout_class(proto::TCP, S::Established as u8, 0),
            t::TCP_UNACK
        );
        assert_eq!(timeout_class(proto::ICMP, 0, 0), t::ICMP);
        assert_eq!(timeout_class(proto::SCTP, 0, 0), t::UDP);
        assert_eq!(
            timeout_class(proto::SCTP, 0, ct_flags::SEEN_REPLY),
            t::UDP_STREAM
        );
        assert_eq!(timeout_class(47, 0, 0), t::OTHER);
        assert_eq!(core::mem::size_of::<CtEntry4>(), 64);
        assert_eq!(core::mem::size_of::<CtKey4>(), 16);
    }
}
