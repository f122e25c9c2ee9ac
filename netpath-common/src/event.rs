//! Datapath events (`netpath monitor`): what the programs write to the
//! `NP_EVENTS` ring buffer. Events are made only while a monitor says it
//! listens (a heartbeat in `NP_MONITOR`), and at most
//! [`RATE_PER_SEC`] a second per CPU (a burst of [`BURST`]): a flood cannot
//! turn monitoring into a denial of service. What the limit or a full ring
//! refuses is counted (`counter_scope::MONITOR`).

/// [`Event::kind`].
pub mod kind {
    /// A packet dropped; [`super::Event::reason`] says why.
    pub const DROP: u8 = 1;
    /// A new conntrack flow; the `nat_*` fields hold the tuple its replies
    /// carry, reversed (equal to the original when nothing is translated).
    pub const FLOW: u8 = 2;
}

/// Bits of `NP_MONITOR[MASK]`: which kinds a monitor wants.
pub mod want {
    pub const DROP: u64 = 1;
    pub const FLOW: u64 = 2;
}

/// Indexes into the `NP_MONITOR` array of u64.
pub mod monitor {
    /// Monotonic ns (`bpf_ktime_get_ns`) of a monitor's last heartbeat.
    pub const HEARTBEAT: u32 = 0;
    /// [`super::want`] bits.
    pub const MASK: u32 = 1;
    /// Slots.
    pub const LEN: u32 = 2;
}

/// A monitor refreshes its heartbeat every second; without one for this
/// long, the datapath stops making events (a monitor killed leaves no cost).
pub const HEARTBEAT_NS: u64 = 5_000_000_000;
/// Events a second per CPU at most, and the burst allowed above it.
pub const RATE_PER_SEC: u64 = 2_000;
pub const BURST: u64 = 2_000;
/// Size of the ring buffer in bytes (a power-of-two number of pages).
pub const RING_BYTES: u32 = 1 << 18;

/// One event, as the datapath writes it. Addresses and ports in network
/// byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Event {
    /// Monotonic ns.
    pub ts_ns: u64,
    pub kind: u8,
    /// A [`crate::DropReason`] for drops.
    pub reason: u8,
    /// IP protocol (0 when the frame is not IPv4).
    pub proto: u8,
    pub _pad: u8,
    /// The interface whose program made the event.
    pub ifindex: u32,
    /// The network the packet belongs to, 0 when none.
    pub net_id: u32,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub nat_saddr_be: u32,
    pub nat_daddr_be: u32,
    pub nat_sport_be: u16,
    pub nat_dport_be: u16,
    /// The packet's length.
    pub len: u32,
    /// The frame's ethertype (network byte order).
    pub ethertype_be: u16,
    pub _pad2: [u8; 6],
}

/// An event about an IPv6 packet or flow: [`Event`]'s fields with IPv6
/// addresses (its ethertype is IPv6's). A ring record of this size is one;
/// [`Event`]'s size is an IPv4 or other frame's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Event6 {
    pub ts_ns: u64,
    pub kind: u8,
    pub reason: u8,
    /// The next header after the fixed IPv6 header (the transport protocol
    /// unless extension headers come first; then no ports are read).
    pub proto: u8,
    pub _pad: u8,
    pub ifindex: u32,
    pub net_id: u32,
    pub len: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub nat_saddr: [u8; 16],
    pub nat_daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub nat_sport_be: u16,
    pub nat_dport_be: u16,
}

/// The per-CPU rate limiter's state (not pinned: one per loaded object).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Bucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// Takes one token from `b` at `now`, refilling at [`RATE_PER_SEC`] up to
/// [`BURST`]; false when none is left. Pure, so the host tests it.
#[inline(always)]
pub fn take(b: &mut Bucket, now: u64) -> bool {
    let elapsed = now.saturating_sub(b.last_ns);
    let refill = elapsed / (1_000_000_000 / RATE_PER_SEC);
    if refill > 0 {
        let t = b.tokens + refill;
        b.tokens = if t > BURST { BURST } else { t };
        b.last_ns = now;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate_and_caps_at_the_burst() {
        let mut b = Bucket::default();
        // Empty at first: the first refill comes with time.
        assert!(!take(&mut b, 0));
        let mut n = 0;
        while take(&mut b, 10_000_000_000) {
            n += 1;
        }
        assert_eq!(n, BURST);
        // Half a second later, half a second's worth.
        let mut m = 0;
        while take(&mut b, 10_500_000_000) {
            m += 1;
        }
        assert_eq!(m, RATE_PER_SEC / 2);
        assert_eq!(core::mem::size_of::<Event>(), 56);
        assert_eq!(core::mem::size_of::<Event6>(), 96);
    }
}
