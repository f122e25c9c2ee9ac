//! Crafted Ethernet/IPv4 frames for BPF_PROG_TEST_RUN (built by
//! `netpath::lab::frames`), and checks of what comes out: fields and checksums
//! computed from scratch (independently of the datapath's incremental
//! updates).

use std::net::Ipv4Addr;

pub use netpath::lab::frames::{
    ETH, ICMP, SCTP, SCTP_INIT, SCTP_INIT_ACK, TCP, UDP, checksum, echo, frame, icmp, ipv4_header,
    l4_valid, sctp, sctp_crc_valid, tcp, udp, valid, with_macs,
};

/// Fields read back from an output frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

pub fn ip_of(f: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[off], f[off + 1], f[off + 2], f[off + 3])
}

pub fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

/// Addresses and ports of the outer packet (ICMP: identifier as both ports).
pub fn parse(f: &[u8]) -> Parsed {
    let l4 = ETH + 20;
    let (sport, dport) = if f[ETH + 9] == ICMP {
        (be16(f, l4 + 4), be16(f, l4 + 4))
    } else {
        (be16(f, l4), be16(f, l4 + 2))
    };
    Parsed {
        src: ip_of(f, ETH + 12),
        dst: ip_of(f, ETH + 16),
        sport,
        dport,
    }
}

/// Asserts every checksum of an unfragmented frame is right: IPv4 header,
/// and TCP/UDP (pseudo-header) or ICMP over the whole message. A zero UDP
/// checksum is accepted only when `udp_zero_ok`.
pub fn assert_checksums(f: &[u8], udp_zero_ok: bool) {
    assert!(valid(&f[ETH..ETH + 20]), "IPv4 header checksum: {f:02x?}");
    let src = ip_of(f, ETH + 12);
    let dst = ip_of(f, ETH + 16);
    let l4 = &f[ETH + 20..];
    match f[ETH + 9] {
        TCP => assert!(l4_valid(src, dst, TCP, l4), "TCP checksum: {f:02x?}"),
        UDP => {
            if be16(l4, 6) == 0 {
                assert!(udp_zero_ok, "UDP checksum became zero");
            } else {
                assert!(l4_valid(src, dst, UDP, l4), "UDP checksum: {f:02x?}");
            }
        }
        ICMP => assert!(valid(l4), "ICMP checksum: {f:02x?}"),
        _ => {}
    }
}
