//! Ethernet/IPv4 frames built by hand, and a packet socket to send them
//! from a namespace's interface: what the benchmark's floods and the tests'
//! crafted attacks put on the wire. Checksums are computed from scratch
//! (independently of the datapath's incremental updates), so the tests can
//! also check what comes out.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SCTP: u8 = 132;
pub const ICMPV6: u8 = 58;
/// SCTP chunk types the tests send.
pub const SCTP_INIT: u8 = 1;
pub const SCTP_INIT_ACK: u8 = 2;
/// Ethernet header length.
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

/// The pseudo-header's sum, either family (IPv6's 32-bit length and
/// next-header word sum the same as IPv4's zero, protocol and 16-bit
/// length for any length below 64 KiB).
fn pseudo(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, proto: u8, len: usize) -> u32 {
    let octets = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut p = octets(src.into());
    p.extend(octets(dst.into()));
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&p, 0)
}

/// Whether a TCP, UDP or ICMPv6 message `l4` (checksum included) sums to
/// all-ones over its pseudo-header.
pub fn l4_valid(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, proto: u8, l4: &[u8]) -> bool {
    fold(sum(l4, pseudo(src, dst, proto, l4.len()))) == 0xffff
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

/// A TCP header (20 bytes, no options) plus payload, checksum over the
/// pseudo-header.
pub fn tcp(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    tcp_seq(src, dst, sport, dport, flags, (1, 0), payload)
}

/// [`tcp`] with its sequence and acknowledgement numbers, for handshakes
/// a window-tracking conntrack (nf_conntrack) accepts.
pub fn tcp_seq(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    sport: u16,
    dport: u16,
    flags: u8,
    (seq, ack): (u32, u32),
    payload: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = !fold(sum(&t, pseudo(src, dst, TCP, t.len())));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP header plus payload; `with_csum: false` leaves the checksum zero
/// ("none").
pub fn udp(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    sport: u16,
    dport: u16,
    payload: &[u8],
    with_csum: bool,
) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
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

/// CRC32c (Castagnoli, reflected), SCTP's checksum (RFC 9260 appendix A),
/// bit by bit: these frames are few and small.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}

/// An SCTP packet: the common header (ports, verification tag, CRC32c)
/// and one chunk of `chunk_type` carrying `value`. The CRC covers only the
/// SCTP packet (no pseudo-header, no IP address), stored as Linux and
/// RFC 9260 do (least significant byte first).
pub fn sctp(sport: u16, dport: u16, vtag: u32, chunk_type: u8, value: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(16 + value.len() + 3);
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&vtag.to_be_bytes());
    s.extend_from_slice(&[0; 4]);
    s.extend_from_slice(&[chunk_type, 0]);
    s.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    s.extend_from_slice(value);
    // Chunks are padded to 4 bytes.
    s.resize(s.len().div_ceil(4) * 4, 0);
    let c = crc32c(&s);
    s[8..12].copy_from_slice(&c.to_le_bytes());
    s
}

/// Whether an SCTP packet's CRC32c holds.
pub fn sctp_crc_valid(s: &[u8]) -> bool {
    if s.len() < 12 {
        return false;
    }
    let mut copy = s.to_vec();
    copy[8..12].copy_from_slice(&[0; 4]);
    crc32c(&copy).to_le_bytes() == s[8..12]
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

/// Ethernet (placeholder MACs, see [`with_macs`]) + IPv4 (unfragmented
/// unless `frag` says otherwise) + `l4`.
pub fn frame(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8], id: u16, frag: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    f.extend_from_slice(&ipv4_header(proto, src, dst, l4.len(), id, frag));
    f.extend_from_slice(l4);
    f
}

/// An ICMPv6 message, checksum over the pseudo-header.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = !fold(sum(&m, pseudo(src, dst, ICMPV6, m.len())));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMPv6 echo request (128) or reply (129) with `id`.
pub fn echo6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, id: u16) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[2..].copy_from_slice(&1u16.to_be_bytes());
    icmp6(src, dst, ty, rest, b"netpath echo payload")
}

/// Ethernet (placeholder MACs, see [`with_macs`]) + IPv6 + `l4`.
pub fn frame6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(l4);
    f
}

/// `frame` with these MACs.
pub fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// `frame` with a VLAN tag (`tpid`, `vid`) inserted after the MACs.
pub fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut t = frame[..12].to_vec();
    t.extend_from_slice(&tpid.to_be_bytes());
    t.extend_from_slice(&vid.to_be_bytes());
    t.extend_from_slice(&frame[12..]);
    t
}

/// An Ethernet/IPv4 ARP packet (`op` 1 request, 2 reply) from (`sha`,
/// `spa`) to (`tha`, `tpa`), broadcast or to `tha`.
pub fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let dst = if op == 1 { [0xff; 6] } else { tha };
    let mut f = dst.to_vec();
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

const ETH_P_ALL: u16 = 0x0003;

/// A packet socket bound to one interface of the calling thread's network
/// namespace: frames sent on it leave that interface as they are.
pub struct RawSocket(OwnedFd);

impl RawSocket {
    pub fn bind(ifname: &str) -> Result<Self> {
        let name = std::ffi::CString::new(ifname).context("interface name")?;
        // SAFETY: plain socket/bind calls with valid arguments; the fd is
        // owned from the moment it exists.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                bail!("no interface {ifname}");
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("bind {ifname}"));
            }
            Ok(Self(fd))
        }
    }

    /// Sends one frame; false when the kernel refused it (a full queue).
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: sending a valid buffer on our own socket.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        n == frame.len() as isize
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.0.as_fd()
    }
}

/// The MAC address of `ifname` in the calling thread's namespace.
pub fn mac_of(ifname: &str) -> Result<[u8; 6]> {
    // SAFETY: an ioctl on a socket this owns, with a zeroed ifreq whose
    // name fits (checked).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        let name = ifname.as_bytes();
        if name.len() >= req.ifr_name.len() {
            bail!("interface name {ifname:?} is too long");
        }
        for (d, s) in req.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("MAC of {ifname}"));
        }
        let data = req.ifr_ifru.ifru_hwaddr.sa_data;
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data) {
            *m = d as u8;
        }
        Ok(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let f = frame(TCP, a, b, &tcp(a, b, 1000, 80, 0x02, b"x"), 7, 0);
        assert!(valid(&f[ETH..ETH + 20]));
        assert!(l4_valid(a, b, TCP, &f[ETH + 20..]));
        let u = udp(a, b, 53, 5353, b"hello", true);
        assert!(l4_valid(a, b, UDP, &u));
        assert!(valid(&echo(8, 42)));
        assert_eq!(arp(1, [2; 6], [1; 4], [0; 6], [2; 4]).len(), 60);
        let t = tagged(&f, 0x8100, 5);
        assert_eq!((t.len(), &t[12..16]), (f.len() + 4, &[0x81, 0, 0, 5][..]));
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let s = sctp(5000, 9000, 0, SCTP_INIT, &[1, 2, 3, 4, 5]);
        assert_eq!(s.len(), 24, "12 + chunk header 4 + value 5, padded");
        assert!(sctp_crc_valid(&s));
        let mut bad = s.clone();
        bad[1] ^= 1;
        assert!(!sctp_crc_valid(&bad));
    }
}
