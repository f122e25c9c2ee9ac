//! Incremental Internet checksum updates (RFC 1624), for fields the kernel's
//! checksum helpers cannot reach (the IPv4 header quoted inside an ICMP error).
//!
//! Values are 16-bit words exactly as they sit in the packet (read with a
//! native-endian load); one's-complement arithmetic gives the same result in
//! either byte order as long as every operand uses the same one.

/// Adds with end-around carry.
#[inline(always)]
const fn add(a: u32, b: u32) -> u32 {
    let s = a + b;
    (s & 0xffff) + (s >> 16)
}

/// New checksum after one 16-bit word changed from `old` to `new`:
/// `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let s = add(add(!check as u32, !old as u32 & 0xffff), new as u32);
    !(add(s, 0) as u16)
}

/// New checksum after a 32-bit field changed from `old` to `new` (both as
/// loaded from the packet).
#[inline(always)]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let c = replace2(check, old as u16, new as u16);
    replace2(c, (old >> 16) as u16, (new >> 16) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum over native-endian words, the way a receiver checks it.
    fn full(words: &[u16]) -> u16 {
        let mut s: u32 = 0;
        for w in words {
            s = add(s, u32::from(*w));
        }
        !(s as u16)
    }

    #[test]
    fn incremental_matches_full_recompute() {
        // An IPv4 header as 10 words with the checksum (word 5) zeroed.
        let mut h: [u16; 10] = [
            0x0045, 0x5400, 0x3412, 0x0040, 0x0140, 0, 0x1eac, 0x0200, 0x12c6, 0x0200,
        ];
        h[5] = full(&h);
        for (old_addr, new_addr) in [(0x0200_1eacu32, 0x0100_12c6u32), (0xffff_ffff, 0), (0, 1)] {
            let mut g = h;
            g[6] = old_addr as u16;
            g[7] = (old_addr >> 16) as u16;
            g[5] = 0;
            g[5] = full(&g);
            let c = replace4(g[5], old_addr, new_addr);
            g[6] = new_addr as u16;
            g[7] = (new_addr >> 16) as u16;
            g[5] = 0;
            assert_eq!(c, full(&g), "{old_addr:#x} -> {new_addr:#x}");
        }
    }
}
