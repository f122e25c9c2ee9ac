//! The ring's records as `netpath monitor` reads them: an [`Event`] (an
//! IPv4 or other frame's) or an [`Event6`] (an IPv6 one's), told apart by
//! their size, decoded into one [`Record`] with addresses of either family.

use std::net::{IpAddr, Ipv6Addr};

use netpath_common::event::{Event, Event6};
use serde::Serialize;

use crate::codec;

/// An address and port pair each way.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// One event, either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub ts_ns: u64,
    pub kind: u8,
    pub reason: u8,
    pub proto: u8,
    pub ifindex: u32,
    pub net_id: u32,
    pub len: u32,
    /// The frame's ethertype (host order).
    pub ethertype: u16,
    /// Whether the addresses and ports were read (an IPv4 or IPv6 frame).
    pub ip: bool,
    pub orig: Tuple,
    /// A flow's tuple as it leaves (equal to `orig` when untranslated).
    pub nat: Tuple,
}

impl From<&Event> for Record {
    fn from(e: &Event) -> Self {
        let ethertype = u16::from_be(e.ethertype_be);
        let tuple = |s: u32, sp: u16, d: u32, dp: u16| Tuple {
            src: IpAddr::V4(codec::from_be(s)),
            sport: u16::from_be(sp),
            dst: IpAddr::V4(codec::from_be(d)),
            dport: u16::from_be(dp),
        };
        Self {
            ts_ns: e.ts_ns,
            kind: e.kind,
            reason: e.reason,
            proto: e.proto,
            ifindex: e.ifindex,
            net_id: e.net_id,
            len: e.len,
            ethertype,
            ip: ethertype == 0x0800,
            orig: tuple(e.saddr_be, e.sport_be, e.daddr_be, e.dport_be),
            nat: tuple(
                e.nat_saddr_be,
                e.nat_sport_be,
                e.nat_daddr_be,
                e.nat_dport_be,
            ),
        }
    }
}

impl From<&Event6> for Record {
    fn from(e: &Event6) -> Self {
        let tuple = |s: [u8; 16], sp: u16, d: [u8; 16], dp: u16| Tuple {
            src: IpAddr::V6(Ipv6Addr::from(s)),
            sport: u16::from_be(sp),
            dst: IpAddr::V6(Ipv6Addr::from(d)),
            dport: u16::from_be(dp),
        };
        let orig = tuple(e.saddr, e.sport_be, e.daddr, e.dport_be);
        Self {
            ts_ns: e.ts_ns,
            kind: e.kind,
            reason: e.reason,
            proto: e.proto,
            ifindex: e.ifindex,
            net_id: e.net_id,
            len: e.len,
            ethertype: 0x86dd,
            ip: true,
            orig,
            // A drop has no translated tuple: the datapath leaves it zero.
            nat: if e.kind == netpath_common::event::kind::FLOW {
                tuple(e.nat_saddr, e.nat_sport_be, e.nat_daddr, e.nat_dport_be)
            } else {
                orig
            },
        }
    }
}

/// A ring record, by its size; `None` for one of no known size.
pub fn decode(item: &[u8]) -> Option<Record> {
    if item.len() == std::mem::size_of::<Event6>() {
        let e: Event6 = bytemuck::pod_read_unaligned(item);
        return Some(Record::from(&e));
    }
    if item.len() == std::mem::size_of::<Event>() {
        let e: Event = bytemuck::pod_read_unaligned(item);
        return Some(Record::from(&e));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_told_apart_by_size() {
        let e6 = Event6 {
            kind: netpath_common::event::kind::FLOW,
            proto: 6,
            saddr: "fd00:30::2".parse::<Ipv6Addr>().unwrap().octets(),
            daddr: "fd00:ee::2".parse::<Ipv6Addr>().unwrap().octets(),
            nat_saddr: "fd00:ff::1".parse::<Ipv6Addr>().unwrap().octets(),
            nat_daddr: "fd00:ee::2".parse::<Ipv6Addr>().unwrap().octets(),
            sport_be: 4000u16.to_be(),
            dport_be: 80u16.to_be(),
            nat_sport_be: 4000u16.to_be(),
            nat_dport_be: 80u16.to_be(),
            ..Event6::default()
        };
        let r = decode(bytemuck::bytes_of(&e6)).unwrap();
        assert_eq!((r.ethertype, r.ip, r.proto), (0x86dd, true, 6));
        assert_eq!(r.nat.src, "fd00:ff::1".parse::<IpAddr>().unwrap());
        assert_eq!(r.orig.dport, 80);
        let e = Event {
            ethertype_be: 0x0806u16.to_be(),
            ..Event::default()
        };
        let r = decode(bytemuck::bytes_of(&e)).unwrap();
        assert_eq!((r.ethertype, r.ip), (0x0806, false));
        assert!(decode(&[0u8; 7]).is_none());
    }
}
