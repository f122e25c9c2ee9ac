//! IPv6 headers: the fixed header, then the extension header chain up to
//! the upper-layer header, so nothing (a Router Advertisement, say) hides
//! behind a Hop-by-Hop or Destination Options header (RFC 7113).

use aya_ebpf::programs::TcContext;
use netpath_common::{
    DropReason,
    ct6::{CtKey6, FragKey6},
};

use crate::parse::L3;

/// Next-header values netpath tells apart.
pub mod nexthdr {
    pub const HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const DSTOPTS: u8 = 60;
}

/// Field offsets in the fixed IPv6 header.
pub mod ip6_off {
    pub const HOP_LIMIT: usize = 7;
    pub const SADDR: usize = 8;
    pub const DADDR: usize = 24;
}

/// Length of the fixed IPv6 header.
pub const IP6_HLEN: usize = 40;

/// Extension headers followed before giving up (a longer chain is dropped).
const MAX_EXT: usize = 4;

/// The IPv6 header fields netpath uses.
#[derive(Clone, Copy, Default)]
pub struct Ip6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The upper-layer protocol (what the last extension header names).
    pub proto: u8,
    /// Offset of the upper-layer header in the frame (when
    /// `!later_fragment`).
    pub l4: usize,
    /// Has a fragment header.
    pub fragment: bool,
    /// A fragment after the first: no upper-layer header here.
    pub later_fragment: bool,
    /// The fragment header's identification (network order), when
    /// `fragment`.
    pub frag_id_be: u32,
    /// A fragment header saying "first and last" (RFC 6946): the datagram
    /// is whole, no other fragment will follow.
    pub atomic: bool,
    /// Offset of the end of the IPv6 payload (Ethernet padding may follow).
    pub end: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawIp6 {
    ver_tc_flow: u32,
    payload_len: u16,
    next: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// Parses the packet's IPv6 header into `ip` and walks its extension
/// headers. A routing header (type 0 lets a sender steer a packet through
/// the host to anywhere; segment routing is the host's business, not a
/// container's) or a chain longer than netpath follows is refused. A BPF
/// subprogram filling its caller's `ip` (the raw header stays in its own
/// frame).
#[inline(never)]
pub fn ipv6(ctx: &TcContext, ip: &mut Ip6) -> Result<(), DropReason> {
    let raw: RawIp6 = ctx.load(L3).map_err(|_| DropReason::Malformed)?;
    if u32::from_be(raw.ver_tc_flow) >> 28 != 6 {
        return Err(DropReason::Malformed);
    }
    let end = L3 + IP6_HLEN + usize::from(u16::from_be(raw.payload_len));
    if end > ctx.len() as usize {
        return Err(DropReason::Malformed);
    }
    ip.saddr = raw.saddr;
    ip.daddr = raw.daddr;
    ip.proto = raw.next;
    ip.l4 = L3 + IP6_HLEN;
    ip.fragment = false;
    ip.later_fragment = false;
    ip.frag_id_be = 0;
    ip.atomic = false;
    ip.end = end;
    for _ in 0..MAX_EXT {
        let len = match ip.proto {
            nexthdr::HOP | nexthdr::DSTOPTS => {
                let h: [u8; 2] = ctx.load(ip.l4).map_err(|_| DropReason::Malformed)?;
                ip.proto = h[0];
                (usize::from(h[1]) + 1) * 8
            }
            nexthdr::AH => {
                let h: [u8; 2] = ctx.load(ip.l4).map_err(|_| DropReason::Malformed)?;
                ip.proto = h[0];
                (usize::from(h[1]) + 2) * 4
            }
            nexthdr::FRAGMENT => {
                let h: [u8; 8] = ctx.load(ip.l4).map_err(|_| DropReason::Malformed)?;
                ip.proto = h[0];
                ip.fragment = true;
                ip.frag_id_be = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
                // The offset is the top 13 bits of the third and fourth
                // bytes, "more fragments" the lowest bit.
                let offset_m = u16::from_be_bytes([h[2], h[3]]);
                ip.atomic = offset_m == 0;
                if offset_m >> 3 != 0 {
                    ip.later_fragment = true;
                    return Ok(());
                }
                8
            }
            nexthdr::ROUTING => return Err(DropReason::Ipv6Header),
            // A first fragment carries the upper-layer header (RFC 8200
            // 4.5; the kernel drops one that does not), so what is read
            // there is never Ethernet padding.
            _ if ip.fragment && ip.l4 >= end => return Err(DropReason::Malformed),
            _ => return Ok(()),
        };
        ip.l4 += len;
        if ip.l4 > end {
            return Err(DropReason::Malformed);
        }
    }
    match ip.proto {
        nexthdr::HOP | nexthdr::DSTOPTS | nexthdr::AH | nexthdr::FRAGMENT | nexthdr::ROUTING => {
            Err(DropReason::Ipv6Header)
        }
        _ => Ok(()),
    }
}

/// Per-CPU room for an IPv6 packet's parsed headers and tuples
/// (`NP_WORK6`): IPv6's tuples are nearly three times IPv4's, and the
/// frames of parsing, flow creation (with its port search) and rewrite
/// would not fit the BPF stack together.
pub struct Work6 {
    pub ip: Ip6,
    pub l4: crate::parse::L4,
    /// The packet's tuple.
    pub key: CtKey6,
    /// What a new flow's packets leave as.
    pub translated: CtKey6,
    /// The datagram a fragment belongs to (`frag6`).
    pub frag: FragKey6,
    /// Where a container's allowed packet came from, for the fast path
    /// (`fastpath6::from_port6`).
    pub from: FromPort,
}

/// A container's allowed packet, as its port's ingress program left it
/// for the fast path.
#[derive(Clone, Copy)]
pub struct FromPort {
    /// The port (the host end of the container's veth).
    pub ifindex: u32,
    pub net_id: u32,
    /// The network's bridge.
    pub bridge: u32,
    pub flow: Flow,
}

/// What an allowed container packet is to conntrack, for the fast path.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// A published port's flow (or would start one): the bridge
    /// translates it.
    Published,
    /// Of another flow, or nothing conntrack can key (Neighbour
    /// Discovery, an ICMPv6 error, a later fragment).
    Other,
    /// Keyed (`Work6::key`), with no entry.
    Untracked,
}

/// Compares two IPv6 addresses (shared with the conntrack tuples).
pub use netpath_common::ct6::same_addr as same6;
