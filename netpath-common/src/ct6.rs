//! The IPv6 conntrack table, `NP_CT6`: the same two entries per flow as
//! `NP_CT4` (see [`crate::ct`]), keyed by IPv6 tuples. ICMPv6 echo uses its
//! identifier as a port, as ICMP echo does.

use crate::{
    ct::{CtEntry, Tuple},
    v6::half,
};

/// A conntrack tuple of IPv6 addresses, as on the wire. 44 bytes: the
/// padding makes [`CtEntry6`] free of holes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CtKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 7],
}

impl CtKey6 {
    #[inline(always)]
    pub const fn new(
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport_be: u16,
        dport_be: u16,
        proto: u8,
    ) -> Self {
        Self {
            saddr,
            daddr,
            sport_be,
            dport_be,
            proto,
            _pad: [0; 7],
        }
    }
}

/// Two addresses compared as two 64-bit words each, branch-free until the
/// end: a byte loop is a branch per byte, whose paths the verifier walks
/// one by one.
#[inline(always)]
pub fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    (half(a, 0) ^ half(b, 0)) | (half(a, 8) ^ half(b, 8)) == 0
}

impl Tuple for CtKey6 {
    type Addr = [u8; 16];
    #[inline(always)]
    fn saddr(&self) -> [u8; 16] {
        self.saddr
    }
    #[inline(always)]
    fn daddr(&self) -> [u8; 16] {
        self.daddr
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
        Self::new(
            self.daddr,
            self.saddr,
            self.dport_be,
            self.sport_be,
            self.proto,
        )
    }
    #[inline(always)]
    fn set_dport(&mut self, dport_be: u16) {
        self.dport_be = dport_be;
    }
    #[inline(always)]
    fn same(&self, b: &Self) -> bool {
        same_addr(&self.saddr, &b.saddr)
            && same_addr(&self.daddr, &b.daddr)
            && self.sport_be == b.sport_be
            && self.dport_be == b.dport_be
            && self.proto == b.proto
    }
    #[inline(always)]
    fn v4(&self) -> Option<(u32, u32)> {
        None
    }
    #[inline(always)]
    fn v6(&self) -> Option<(&[u8; 16], &[u8; 16])> {
        Some((&self.saddr, &self.daddr))
    }
}

/// Value of `NP_CT6`.
pub type CtEntry6 = CtEntry<CtKey6>;

// SAFETY: `repr(C)`, plain data, no padding (44 + 16 + 2 + 1 + 1 + 4 + 4
// bytes before the first u64, at 72).
#[cfg(feature = "user")]
unsafe impl bytemuck::Zeroable for CtEntry6 {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl bytemuck::Pod for CtEntry6 {}

/// Entries of `NP_CT6` (two per flow). Smaller than `NP_CT4`'s default:
/// an entry and its key take 148 bytes, and the LRU table is allocated
/// whole.
pub const MAX_CT6: u32 = 65_536;

/// Key of `NP_FRAG6`: one fragmented datagram (RFC 8200 4.5: source,
/// destination and the fragment header's identification; the upper-layer
/// protocol as for IPv4). 40 bytes, no holes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id_be: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Entries of `NP_FRAG6` (datagrams in flight in fragments; LRU).
pub const MAX_FRAG6: u32 = 4096;

/// ICMPv6 message types netpath tells apart.
pub mod icmp6 {
    pub const DEST_UNREACH: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAM_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_holes() {
        assert_eq!(core::mem::size_of::<CtKey6>(), 44);
        assert_eq!(core::mem::size_of::<CtEntry6>(), 104);
        assert_eq!(core::mem::size_of::<FragKey6>(), 40);
    }

    #[test]
    fn reversed_swaps_ends_and_same_compares_every_field() {
        let k = CtKey6::new([1; 16], [2; 16], 10, 20, 6);
        let r = k.reversed();
        assert_eq!(
            (r.saddr, r.daddr, r.sport_be, r.dport_be),
            ([2; 16], [1; 16], 20, 10)
        );
        assert!(k.same(&r.reversed()));
        let mut other = k;
        other.daddr[15] = 3;
        assert!(!k.same(&other));
        let mut p = k;
        p.set_dport(21);
        assert!(!k.same(&p));
    }
}
