//! Header parsing with bounds-checked loads (`bpf_skb_load_bytes`), which also
//! reach headers in non-linear parts of GSO packets. Anything that does not
//! parse is reported as such; callers decide whether that means "not ours"
//! or "drop".

use aya_ebpf::programs::TcContext;
use netpath_common::{ct::proto, ct6::icmp6};

/// Ethernet header length: netpath manages Ethernet-like devices only.
pub const ETH_HLEN: usize = 14;
/// Offset of the IPv4 header.
pub const L3: usize = ETH_HLEN;

/// Ethertypes netpath tells apart.
pub mod eth_p {
    pub const IP: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q, 802.1ad and the old pre-standard QinQ tag.
    pub const VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
}

/// Ethernet header field offsets.
pub mod eth_off {
    pub const SRC: usize = 6;
    pub const PROTO: usize = 12;
}

/// IPv4 header field offsets (from the start of the IP header).
pub mod ip4_off {
    /// TTL, then the protocol: one 16-bit word.
    pub const TTL: usize = 8;
    pub const CHECK: usize = 10;
    pub const SADDR: usize = 12;
    pub const DADDR: usize = 16;
}

/// The ethertype in the frame itself (after any tag the kernel took off).
#[inline(always)]
pub fn ethertype(ctx: &TcContext) -> Option<u16> {
    ctx.load::<u16>(eth_off::PROTO).ok().map(u16::from_be)
}

/// Whether the frame is an untagged IPv4 frame: no tag the kernel took off
/// (a packet of a VLAN device on this one carries its tag that way on the
/// way out) and IPv4 in the frame itself.
#[inline(always)]
pub fn is_plain_ipv4(ctx: &TcContext) -> bool {
    stripped_vlan(ctx).is_none() && ethertype(ctx) == Some(eth_p::IP)
}

/// Whether `t` is a VLAN tag's ethertype.
#[inline(always)]
pub fn is_vlan(t: u16) -> bool {
    t == eth_p::VLAN[0] || t == eth_p::VLAN[1] || t == eth_p::VLAN[2]
}

/// The VLAN id of the tag the kernel took off the frame on receive
/// (`skb->vlan_present`), if it had one.
#[inline(always)]
pub fn stripped_vlan(ctx: &TcContext) -> Option<u16> {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let (present, tci) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci) };
    (present != 0).then_some(tci as u16 & 0x0fff)
}

const IP_MF: u16 = 0x2000;
const IP_OFFMASK: u16 = 0x1fff;

/// The IPv4 header fields netpath uses.
#[derive(Clone, Copy)]
pub struct Ip4 {
    /// Header length in bytes.
    pub hlen: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub id_be: u16,
    /// Flags and fragment offset, host byte order.
    pub frag: u16,
    /// Total length, host byte order.
    pub tot_len: u16,
}

impl Ip4 {
    /// Offset of the transport header in the frame.
    #[inline(always)]
    pub const fn l4(&self) -> usize {
        L3 + self.hlen
    }
    /// Part of a fragmented datagram.
    #[inline(always)]
    pub const fn is_fragment(&self) -> bool {
        self.frag & (IP_MF | IP_OFFMASK) != 0
    }
    /// A fragment after the first: it carries no transport header.
    #[inline(always)]
    pub const fn is_later_fragment(&self) -> bool {
        self.frag & IP_OFFMASK != 0
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawIp4 {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// Parses the packet's own IPv4 header (at [`L3`]): `None` when it is cut
/// short or inconsistent, or when its total length is below its header's
/// or beyond the frame (the kernel's `ip_rcv` drops those too).
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<Ip4> {
    let ip = ipv4_at(ctx, L3)?;
    if usize::from(ip.tot_len) > (ctx.len() as usize).saturating_sub(L3) {
        return None;
    }
    Some(ip)
}

/// Parses an IPv4 header at `off` (the packet's own, see [`ipv4`], or one
/// quoted in an ICMP error, which is cut short by design). `None` when it
/// is cut short or inconsistent.
#[inline(always)]
pub fn ipv4_at(ctx: &TcContext, off: usize) -> Option<Ip4> {
    let raw: RawIp4 = ctx.load(off).ok()?;
    if raw.ver_ihl >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(raw.ver_ihl & 0x0f) * 4;
    if hlen < 20 || usize::from(u16::from_be(raw.tot_len)) < hlen {
        return None;
    }
    Some(Ip4 {
        hlen,
        proto: raw.proto,
        saddr: raw.saddr,
        daddr: raw.daddr,
        id_be: raw.id,
        frag: u16::from_be(raw.frag),
        tot_len: u16::from_be(raw.tot_len),
    })
}

/// ICMP message types netpath translates.
pub mod icmp {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// What a transport header holds for NAT.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4Kind {
    /// TCP, UDP or ICMP echo: the tuple has ports (ICMP: the identifier).
    Ports,
    /// Another protocol or ICMP type: addresses only.
    NoPorts,
    /// An ICMP error quoting the packet it is about.
    IcmpError,
}

/// The transport header fields netpath uses.
#[derive(Clone, Copy)]
pub struct L4 {
    pub kind: L4Kind,
    /// Tuple ports, network byte order; ICMP echo requests put the identifier
    /// in `sport`, replies in `dport`.
    pub sport_be: u16,
    pub dport_be: u16,
    /// Offset of the checksum in the frame; 0 when there is none to update.
    pub csum_off: usize,
    /// Whether the checksum covers the pseudo-header (TCP, UDP).
    pub pseudo: bool,
    /// UDP: a zero checksum means "none" and must stay zero.
    pub udp: bool,
    /// TCP flags; 0 for other protocols.
    pub tcp_flags: u8,
}

impl L4 {
    const fn no_ports() -> Self {
        Self {
            kind: L4Kind::NoPorts,
            sport_be: 0,
            dport_be: 0,
            csum_off: 0,
            pseudo: false,
            udp: false,
            tcp_flags: 0,
        }
    }

    /// Offset of the source "port" field (ICMP echo: the identifier).
    #[inline(always)]
    pub const fn sport_off(&self, l4: usize, proto_nr: u8) -> usize {
        if proto_nr == proto::ICMP || proto_nr == proto::ICMPV6 {
            l4 + 4
        } else {
            l4
        }
    }

    /// Offset of the destination "port" field (ICMP echo: the identifier).
    #[inline(always)]
    pub const fn dport_off(&self, l4: usize, proto_nr: u8) -> usize {
        if proto_nr == proto::ICMP || proto_nr == proto::ICMPV6 {
            l4 + 4
        } else {
            l4 + 2
        }
    }
}

/// Parses the transport header of a packet that has one (not a later
/// fragment). `Err` when it is cut short.
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ip4) -> Result<L4, ()> {
    l4_at(ctx, ip.l4(), ip.proto)
}

/// Parses the transport header of protocol `proto_nr` at `off` (either
/// family: ICMPv6 is told apart by its protocol number).
#[inline(always)]
pub fn l4_at(ctx: &TcContext, off: usize, proto_nr: u8) -> Result<L4, ()> {
    match proto_nr {
        proto::TCP => {
            // Ports, then the flags at 13 and the checksum at 16.
            let hdr: [u8; 20] = ctx.load(off).map_err(|_| ())?;
            Ok(L4 {
                kind: L4Kind::Ports,
                sport_be: u16::from_ne_bytes([hdr[0], hdr[1]]),
                dport_be: u16::from_ne_bytes([hdr[2], hdr[3]]),
                csum_off: off + 16,
                pseudo: true,
                udp: false,
                tcp_flags: hdr[13],
            })
        }
        proto::UDP => {
            let hdr: [u16; 4] = ctx.load(off).map_err(|_| ())?;
            Ok(L4 {
                kind: L4Kind::Ports,
                sport_be: hdr[0],
                dport_be: hdr[1],
                csum_off: off + 6,
                pseudo: true,
                udp: true,
                tcp_flags: 0,
            })
        }
        proto::SCTP => {
            // The common header: ports, verification tag, CRC32c. The CRC
            // covers no IP address and ports are never changed, so there
            // is no checksum to update (`csum_off` 0).
            let hdr: [u16; 6] = ctx.load(off).map_err(|_| ())?;
            Ok(L4 {
                kind: L4Kind::Ports,
                sport_be: hdr[0],
                dport_be: hdr[1],
                csum_off: 0,
                pseudo: false,
                udp: false,
                tcp_flags: 0,
            })
        }
        proto::ICMP | proto::ICMPV6 => {
            let hdr: [u8; 8] = ctx.load(off).map_err(|_| ())?;
            let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
            let v6 = proto_nr == proto::ICMPV6;
            let (request, reply) = if v6 {
                (icmp6::ECHO_REQUEST, icmp6::ECHO_REPLY)
            } else {
                (icmp::ECHO_REQUEST, icmp::ECHO_REPLY)
            };
            let error = if v6 {
                matches!(
                    hdr[0],
                    icmp6::DEST_UNREACH
                        | icmp6::PACKET_TOO_BIG
                        | icmp6::TIME_EXCEEDED
                        | icmp6::PARAM_PROBLEM
                )
            } else {
                matches!(
                    hdr[0],
                    icmp::DEST_UNREACH | icmp::TIME_EXCEEDED | icmp::PARAMETER_PROBLEM
                )
            };
            let (kind, sport_be, dport_be) = match hdr[0] {
                t if t == request => (L4Kind::Ports, id, 0),
                t if t == reply => (L4Kind::Ports, 0, id),
                _ if error => (L4Kind::IcmpError, 0, 0),
                _ => (L4Kind::NoPorts, 0, 0),
            };
            Ok(L4 {
                kind,
                sport_be,
                dport_be,
                csum_off: off + 2,
                // Unlike ICMP's, the ICMPv6 checksum covers the pseudo-header.
                pseudo: v6,
                udp: false,
                tcp_flags: 0,
            })
        }
        _ => Ok(L4::no_ports()),
    }
}

/// The first 8 bytes of a transport header quoted in an ICMP error (all an
/// error is guaranteed to carry): ports, or an echo's identifier.
#[inline(always)]
pub fn quoted_ports(ctx: &TcContext, inner: &Ip4, off: usize) -> Option<(u16, u16)> {
    match inner.proto {
        proto::TCP | proto::UDP | proto::SCTP => {
            let p: [u16; 2] = ctx.load(off).ok()?;
            Some((p[0], p[1]))
        }
        proto::ICMP => {
            let hdr: [u8; 8] = ctx.load(off).ok()?;
            let id = u16::from_ne_bytes([hdr[4], hdr[5]]);
            match hdr[0] {
                icmp::ECHO_REQUEST => Some((id, 0)),
                icmp::ECHO_REPLY => Some((0, id)),
                _ => None,
            }
        }
        _ => Some((0, 0)),
    }
}
