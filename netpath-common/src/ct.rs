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
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
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

/// Value of `NP_CT4`. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtEntry4 {
    /// The other direction's key.
    pub peer: CtKey4,
    /// ORIGINAL: the source address written into the container's packets.
    /// REPLY: the destination address written into replies.
    pub nat_addr_be: u32,
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

/// Maximum entries of `NP_CT4` (two per flow).
pub const MAX_CT4: u32 = 262_144;
/// Maximum datagrams `NP_FRAG4` follows at once.
pub const MAX_FRAG4: u32 = 8192;

/// The TCP state after a packet with `flags` in direction `reply` (false:
/// from the originator), given the current state and [`ct_flags`]. Returns
/// the new state and the new flags. Modelled on nf_conntrack's table, without
/// window tracking: a flow picked up mid-stream is ESTABLISHED (like
/// `nf_conntrack_tcp_loose=1`).
#[inline(always)]
pub const fn tcp_transition(
    state: TcpState,
    ctflags: u32,
    reply: bool,
    flags: u8,
) -> (TcpState, u32) {
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
                ctflags & !(ct_flags::FIN_ORIGINAL | ct_flags::FIN_REPLY),
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

/// The timeout class (index into [`Config::timeouts_s`](crate::Config)) of a
/// flow, from its ORIGINAL entry.
pub const fn timeout_class(proto_nr: u8, state: u8, ctflags: u32) -> usize {
    use crate::timeout as t;
    match proto_nr {
        proto::TCP => match TcpState::from_u8(state) {
            TcpState::SynSent | TcpState::None => t::TCP_SYN_SENT,
            TcpState::SynRecv => t::TCP_SYN_RECV,
            TcpState::Established => t::TCP_ESTABLISHED,
            TcpState::FinWait => t::TCP_FIN_WAIT,
            TcpState::TimeWait => t::TCP_TIME_WAIT,
            TcpState::Close => t::TCP_CLOSE,
        },
        proto::UDP => {
            if ctflags & ct_flags::SEEN_REPLY != 0 {
                t::UDP_STREAM
            } else {
                t::UDP
            }
        }
        proto::ICMP => t::ICMP,
        _ => t::OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::{TcpState as S, tcp_flags as F, *};

    fn run(steps: &[(bool, u8)]) -> (S, u32) {
        let mut st = (S::None, 0);
        for &(reply, flags) in steps {
            st = tcp_transition(st.0, st.1, reply, flags);
        }
        st
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
    fn timeout_classes() {
        use crate::timeout as t;
        assert_eq!(timeout_class(proto::UDP, 0, 0), t::UDP);
        assert_eq!(
            timeout_class(proto::UDP, 0, ct_flags::SEEN_REPLY),
            t::UDP_STREAM
        );
        assert_eq!(
            timeout_class(proto::TCP, S::Established as u8, 0),
            t::TCP_ESTABLISHED
        );
        assert_eq!(timeout_class(proto::ICMP, 0, 0), t::ICMP);
        assert_eq!(timeout_class(47, 0, 0), t::OTHER);
        assert_eq!(core::mem::size_of::<CtEntry4>(), 64);
        assert_eq!(core::mem::size_of::<CtKey4>(), 16);
    }
}
