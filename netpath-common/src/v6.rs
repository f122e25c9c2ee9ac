//! IPv6: a network's IPv6 subnet, what each container port may send from,
//! and the helpers both sides share (prefix tests, the EUI-64 link-local
//! address of a MAC). Kept in maps of their own (`NP_NETWORKS6`,
//! `NP_PORTS6`, …): a pinned map's layout never changes, so IPv6 could
//! not grow [`NetworkInfo`](crate::NetworkInfo) or
//! [`IfaceInfo`](crate::IfaceInfo).
//!
//! Addresses are 16 bytes in packet order.

/// Value of `NP_NETWORKS6`, keyed by network id: the network's IPv6 half.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NetworkInfo6 {
    pub subnet: [u8; 16],
    /// The gateway (an address of the bridge).
    pub gateway: [u8; 16],
    pub prefix_len: u8,
    pub _pad: [u8; 3],
    /// Bit set of [`net6_flags`].
    pub flags: u32,
}

impl NetworkInfo6 {
    /// Whether `addr` lies in this network's IPv6 subnet.
    #[inline(always)]
    pub fn contains(&self, addr: &[u8; 16]) -> bool {
        in_prefix(addr, &self.subnet, self.prefix_len)
    }
}

/// Flags in [`NetworkInfo6::flags`].
pub mod net6_flags {
    /// netpath added the IPv6 gateway to the bridge (so `down` removes it).
    pub const ADDED_GATEWAY: u32 = 1 << 0;
}

/// Value of `NP_PORTS6`, keyed by a port's ifindex: the IPv6 addresses its
/// container sends from besides the EUI-64 link-local address of its MAC
/// (always allowed): a global address of the network's subnet, given by
/// `connect` or learnt from the first packet (trust on first use, as for
/// IPv4), and one other link-local address, learnt.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Port6 {
    pub global: [u8; 16],
    pub link_local: [u8; 16],
    /// Bit set of [`port6_flags`].
    pub flags: u32,
    pub _pad: u32,
}

/// Flags in [`Port6::flags`].
pub mod port6_flags {
    /// `global` was given by `netpath connect`.
    pub const GLOBAL_BOUND: u32 = 1 << 0;
    /// `global` was learnt from the container's first packet.
    pub const GLOBAL_LEARNED: u32 = 1 << 1;
    /// `link_local` was learnt (an address not derived from the MAC).
    pub const LINK_LOCAL_LEARNED: u32 = 1 << 2;
}

impl Port6 {
    #[inline(always)]
    pub const fn has_global(&self) -> bool {
        self.flags & (port6_flags::GLOBAL_BOUND | port6_flags::GLOBAL_LEARNED) != 0
    }
}

/// Key of `NP_ENDPOINTS6`: an address a port sends from. Global addresses
/// have `scope` 0; a link-local one is only unique on its link, so it is
/// keyed by its network's id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Addr6Key {
    pub addr: [u8; 16],
    pub scope: u32,
}

impl Addr6Key {
    /// The key of `addr` as sent on network `net_id`.
    #[inline(always)]
    pub fn of(addr: &[u8; 16], net_id: u32) -> Self {
        Self {
            addr: *addr,
            scope: if is_link_local(addr) { net_id } else { 0 },
        }
    }
}

/// Key of `NP_LEASES6`: one IPv6 address of one network (`connect`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LeaseKey6 {
    pub net_id: u32,
    pub addr: [u8; 16],
}

/// Key of `NP_PUBLISH6` (a published host port: the host address it is
/// bound to, all zeros for every host IPv6 address) and of `NP_TARGETS6`
/// (a container port some published port leads to): an address, a port
/// and a protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PortKey6 {
    pub addr: [u8; 16],
    pub port_be: u16,
    /// 6 (TCP), 17 (UDP) or 132 (SCTP).
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `NP_PUBLISH6`: where a published IPv6 port leads (the IPv6
/// twin of [`PubVal4`](crate::PubVal4); both families' mappings share the
/// counter ids of scope `counter_scope::PUBLISH`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PubVal6 {
    pub target: [u8; 16],
    pub target_port_be: u16,
    /// Who published it (`owner::*`); the datapath ignores it.
    pub owner: u16,
    /// The target's network.
    pub net_id: u32,
    /// Counter id of this mapping.
    pub id: u32,
}

/// Key of `NP_SOCK_REVNAT6` (the IPv6 twin of
/// [`SockRevKey`](crate::SockRevKey)): a host socket and the container
/// address it was redirected to (IPv4-mapped for an IPv4 mapping reached
/// from an IPv6 socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRevKey6 {
    pub sock_cookie: u64,
    pub target: [u8; 16],
    pub target_port_be: u16,
    pub _pad: [u8; 6],
}

/// Value of `NP_SOCK_REVNAT6`: the address and port the socket dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRevVal6 {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: [u8; 2],
}

/// Whether the first `len` bits of `addr` and `prefix` agree (all 128 when
/// `len` is more).
///
/// Two 64-bit halves under a mask each, with two branches in all: the
/// verifier walks every path of this for each caller, and the byte loop
/// it replaces (a branch or four per byte, the length unknown) was two
/// thirds of the container port's ingress program's verification (about
/// 60,000 of its 89,000 instructions processed, `BPF_LOG_LEVEL2`).
#[inline(always)]
pub fn in_prefix(addr: &[u8; 16], prefix: &[u8; 16], len: u8) -> bool {
    let len = u32::from(len.min(128));
    let high = len.min(64);
    let low = len - high;
    let diff = |o: usize| half(addr, o) ^ half(prefix, o);
    (diff(0) & leading_ones(high)) | (diff(8) & leading_ones(low)) == 0
}

/// The 8 bytes of an address `a` from `o` (0 or 8), big-endian: its
/// prefix tests here and its comparisons (`ct6::same_addr`) read it so.
#[inline(always)]
pub(crate) fn half(a: &[u8; 16], o: usize) -> u64 {
    u64::from_be_bytes([
        a[o],
        a[o + 1],
        a[o + 2],
        a[o + 3],
        a[o + 4],
        a[o + 5],
        a[o + 6],
        a[o + 7],
    ])
}

/// A mask of the `n` (0 to 64) high bits, without a branch: two shifts of
/// at most 32 each, as a shift by 64 is not defined.
#[inline(always)]
fn leading_ones(n: u32) -> u64 {
    !((u64::MAX >> (n / 2)) >> (n - n / 2))
}

/// fe80::/10.
#[inline(always)]
pub fn is_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// ff00::/8.
#[inline(always)]
pub fn is_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff
}

/// `::`.
#[inline(always)]
pub fn is_unspecified(addr: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// The link-local address the kernel gives an interface with `mac`
/// (`addr_gen_mode` eui64, the default): fe80::/64 with the modified
/// EUI-64 interface identifier (RFC 4291, appendix A).
#[inline(always)]
pub const fn eui64_link_local(mac: &[u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

/// The MAC an EUI-64 interface identifier was made from (the inverse of
/// [`eui64_link_local`]'s last 8 bytes), if `addr` has one.
#[inline(always)]
pub const fn eui64_mac(addr: &[u8; 16]) -> Option<[u8; 6]> {
    if addr[11] != 0xff || addr[12] != 0xfe {
        return None;
    }
    Some([
        addr[8] ^ 0x02,
        addr[9],
        addr[10],
        addr[13],
        addr[14],
        addr[15],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compare_bits() {
        let net = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut a = net;
        a[15] = 2;
        assert!(in_prefix(&a, &net, 64));
        assert!(in_prefix(&a, &net, 120));
        assert!(!in_prefix(&a, &net, 128));
        a[7] = 1;
        assert!(!in_prefix(&a, &net, 64));
        assert!(in_prefix(&a, &net, 56));
        // A prefix ending inside a byte.
        let mut b = net;
        b[3] = 0x19;
        assert!(in_prefix(&b, &net, 31));
        assert!(!in_prefix(&b, &net, 32));
        assert!(in_prefix(&b, &net, 0));
    }

    /// Bit by bit, the plainest way.
    fn in_prefix_by_bits(addr: &[u8; 16], prefix: &[u8; 16], len: u8) -> bool {
        (0..usize::from(len).min(128)).all(|b| {
            let bit = |x: &[u8; 16]| x[b / 8] >> (7 - b % 8) & 1;
            bit(addr) == bit(prefix)
        })
    }

    #[test]
    fn prefixes_agree_with_a_bit_by_bit_comparison_at_every_length() {
        let net = [
            0xfd, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22, 0x33, 0x44,
            0x55, 0x66,
        ];
        assert_eq!(leading_ones(0), 0);
        assert_eq!(leading_ones(1), 1 << 63);
        assert_eq!(leading_ones(64), u64::MAX);
        for len in 0..=u8::MAX {
            assert!(in_prefix(&net, &net, len), "/{len}");
            // The address differing in one bit, at every bit: inside the
            // prefix only when that bit is past its length.
            for b in 0..128 {
                let mut a = net;
                a[b / 8] ^= 0x80 >> (b % 8);
                assert_eq!(
                    in_prefix(&a, &net, len),
                    in_prefix_by_bits(&a, &net, len),
                    "bit {b} /{len}"
                );
                assert_eq!(
                    in_prefix(&a, &net, len),
                    usize::from(len) <= b,
                    "bit {b} /{len}"
                );
            }
        }
    }

    #[test]
    fn eui64_flips_the_universal_bit() {
        let ll = eui64_link_local(&[0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(
            ll,
            [
                0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x00, 0x42, 0xac, 0xff, 0xfe, 0x11, 0x00, 0x02
            ]
        );
        assert!(is_link_local(&ll));
        assert!(!is_multicast(&ll));
        assert_eq!(eui64_mac(&ll), Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]));
        let mut other = ll;
        other[12] = 0xfd;
        assert_eq!(eui64_mac(&other), None);
        assert!(Addr6Key::of(&ll, 7).scope == 7);
        let mut g = [0u8; 16];
        g[0] = 0xfd;
        assert_eq!(Addr6Key::of(&g, 7).scope, 0);
        assert!(is_unspecified(&[0; 16]));
    }
}
