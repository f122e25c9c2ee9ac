//! Byte-level encodings shared by every room: IPv4 addresses as the
//! datapath stores them (network byte order in a native `u32`), interface
//! names as NUL-padded arrays, MACs as `ip link` prints them, and a stable
//! hash. No I/O, no netpath types: the ground floor.

use std::net::Ipv4Addr;

use netpath_common::IFNAMSIZ;

/// IPv4 address in network byte order, as the datapath stores it.
pub fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`be`].
pub fn from_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// Decodes a NUL-padded interface name.
pub fn ifname_from_bytes(b: &[u8; IFNAMSIZ]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(IFNAMSIZ);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Encodes an interface name NUL-padded (at most `IFNAMSIZ - 1` bytes are
/// kept, the kernel's limit; names are validated before they get here).
pub fn ifname_to_bytes(name: &str) -> [u8; IFNAMSIZ] {
    let mut out = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// A MAC as `ip link` prints it (`02:42:ac:11:00:02`).
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case); `None` for anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// 64-bit FNV-1a of `bytes`: a stable, dependency-free fingerprint.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = [0x02, 0x42, 0x0a, 0x58, 0x00, 0xff];
        assert_eq!(parse_mac(&fmt_mac(&m)), Some(m));
        assert_eq!(parse_mac("02:42:0A:58:00:FF"), Some(m));
        for bad in [
            "",
            "02:42:0a:58:00",
            "02:42:0a:58:00:ff:01",
            "2:42:0a:58:00:ff",
            "zz:42:0a:58:00:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn encodings_round_trip() {
        let a = Ipv4Addr::new(172, 17, 0, 2);
        assert_eq!(be(a).to_ne_bytes(), [172, 17, 0, 2]);
        assert_eq!(from_be(be(a)), a);
        let n = ifname_to_bytes("br-abc");
        assert_eq!(&n[..7], b"br-abc\0");
        assert_eq!(ifname_from_bytes(&n), "br-abc");
        assert_eq!(ifname_from_bytes(&[b'x'; IFNAMSIZ]).len(), IFNAMSIZ);
        assert_eq!(fmt_mac(&[2, 0x42, 0xac, 0x11, 0, 2]), "02:42:ac:11:00:02");
        // FNV-1a's published test vector.
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
