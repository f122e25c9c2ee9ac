//! Crafting Ethernet/IPv4 frames for BPF_PROG_TEST_RUN and checking the
//! checksums of what comes out, computed from scratch (independently of the
//! datapath's incremental updates).

use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ETH: usize = 14;

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (with its checksum field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Whether `data` (checksum field included) sums to all-ones.
pub fn valid(data: &[u8]) -> bool {
    fold(sum(data, 0)) == 0xffff
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

/// An IPv4 header (20 bytes) with a correct checksum.
pub fn ipv4_header(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload_len: usize,
    id: u16,
    frag: u16,
) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// A TCP header (20 bytes, no options) plus payload, checksum over the pseudo-header.
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = !fold(sum(&t, pseudo(src, dst, TCP, t.len())));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP header plus payload; `with_csum: false` leaves the checksum zero ("none").
pub fn udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    with_csum: bool,
) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    if with_csum {
        let mut c = !fold(sum(&u, pseudo(src, dst, UDP, u.len())));
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

/// An ICMP message: type, code, 4 bytes of "rest of header", body.
pub fn icmp(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An echo request (8) or reply (0) with `id`.
pub fn echo(ty: u8, id: u16) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&1u16.to_be_bytes());
    icmp(ty, 0, rest, b"netpath echo payload")
}

/// Ethernet + IPv4 (unfragmented unless `frag` says otherwise) + `l4`.
pub fn frame(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8], id: u16, frag: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    f.extend_from_slice(&ipv4_header(proto, src, dst, l4.len(), id, frag));
    f.extend_from_slice(l4);
    f
}

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
        TCP => assert!(
            fold(sum(l4, pseudo(src, dst, TCP, l4.len()))) == 0xffff,
            "TCP checksum: {f:02x?}"
        ),
        UDP => {
            if be16(l4, 6) == 0 {
                assert!(udp_zero_ok, "UDP checksum became zero");
            } else {
                assert!(
                    fold(sum(l4, pseudo(src, dst, UDP, l4.len()))) == 0xffff,
                    "UDP checksum: {f:02x?}"
                );
            }
        }
        ICMP => assert!(valid(l4), "ICMP checksum: {f:02x?}"),
        _ => {}
    }
}
