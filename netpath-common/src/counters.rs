//! Per-CPU packet and byte counters (`NP_COUNTERS`): which id space a
//! counter is in (its scope), what it counts (its kind), and the key and
//! value layouts. New kinds may be added; existing values never change.

/// Scope of a counter: which id space [`CounterKey::id`] is in.
pub mod counter_scope {
    /// `id` is an ifindex.
    pub const IFACE: u16 = 1;
    /// `id` is a network id.
    pub const NETWORK: u16 = 2;
    /// `id` is a published port's [`PubVal4::id`](crate::PubVal4).
    pub const PUBLISH: u16 = 3;
    /// `id` is a filter rule's [`FilterRule::id`](crate::filter::FilterRule).
    pub const FILTER: u16 = 4;
    /// The conntrack table as a whole (`id` 0).
    pub const CONNTRACK: u16 = 5;
    /// Datapath events for `netpath monitor` (`id` 0).
    pub const MONITOR: u16 = 6;
}

/// Kinds of counters. New kinds may be added; existing values never change.
pub mod counter_kind {
    /// Interface: packets seen at TC ingress.
    pub const IF_INGRESS: u16 = 1;
    /// Interface: packets seen at TC egress.
    pub const IF_EGRESS: u16 = 2;
    /// Network: packets sent by containers (ingress on a port).
    pub const NET_FROM_CONTAINERS: u16 = 16;
    /// Network: packets delivered to containers (egress on a port).
    pub const NET_TO_CONTAINERS: u16 = 17;
    /// Network: packets of its containers source-translated on the way out.
    pub const NET_SNAT: u16 = 18;
    /// Network: replies (and ICMP errors) translated back to its containers.
    pub const NET_REV_SNAT: u16 = 19;
    /// Network: conntrack flows created.
    pub const NET_CT_NEW: u16 = 20;
    /// Network: packets destination-translated to a published port of one of its containers.
    pub const NET_DNAT: u16 = 21;
    /// Network: its containers' answers from published ports, source-translated back.
    pub const NET_REV_DNAT: u16 = 22;
    /// Network: packets between two of its containers handed from port to
    /// port (the fast path; also counted in [`NET_TO_CONTAINERS`]).
    pub const NET_C2C_FAST: u16 = 23;
    /// Published port: packets to the container.
    pub const PUB_IN: u16 = 32;
    /// Published port: packets back from the container.
    pub const PUB_OUT: u16 = 33;
    /// Filter rule: new flows it decided.
    pub const FILTER_HITS: u16 = 48;
    /// Conntrack: entries inserted (by the datapath).
    pub const CT_INSERTS: u16 = 64;
    /// Conntrack: entries removed (by the datapath or a sweep pass).
    pub const CT_REMOVES: u16 = 65;
    /// Conntrack: new flows that could not be inserted (no free tuple, a
    /// map error).
    pub const CT_INSERT_FAILED: u16 = 66;
    /// Conntrack: new flows refused because the table was at its limit
    /// (see [`crate::ct::fill`]).
    pub const CT_REFUSED: u16 = 67;
    /// Monitor: events written to the ring buffer.
    pub const EVENTS_SENT: u16 = 80;
    /// Monitor: events the rate limit refused.
    pub const EVENTS_LOST_RATE: u16 = 81;
    /// Monitor: events the ring buffer had no room for (a slow reader).
    pub const EVENTS_LOST_FULL: u16 = 82;
    /// Network: packets dropped, one kind per [`DropReason`](crate::DropReason)
    /// (`DROP_BASE + reason`).
    pub const DROP_BASE: u16 = 256;

    pub const fn name(kind: u16) -> &'static str {
        match kind {
            IF_INGRESS => "ingress",
            IF_EGRESS => "egress",
            NET_FROM_CONTAINERS => "from_containers",
            NET_TO_CONTAINERS => "to_containers",
            NET_SNAT => "snat",
            NET_REV_SNAT => "rev_snat",
            NET_CT_NEW => "ct_new",
            NET_DNAT => "dnat",
            NET_REV_DNAT => "rev_dnat",
            NET_C2C_FAST => "c2c_fast",
            PUB_IN => "in",
            PUB_OUT => "out",
            FILTER_HITS => "hits",
            CT_INSERTS => "inserts",
            CT_REMOVES => "removes",
            CT_INSERT_FAILED => "insert_failed",
            CT_REFUSED => "refused",
            EVENTS_SENT => "events_sent",
            EVENTS_LOST_RATE => "events_lost_rate",
            EVENTS_LOST_FULL => "events_lost_full",
            k if k > DROP_BASE => match crate::DropReason::from_u16(k - DROP_BASE) {
                Some(r) => r.as_str(),
                None => "drop_unknown",
            },
            _ => "unknown",
        }
    }
}

/// Key of the per-CPU `NP_COUNTERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CounterKey {
    /// ifindex or network id, see `scope`.
    pub id: u32,
    /// One of [`counter_scope`].
    pub scope: u16,
    /// One of [`counter_kind`].
    pub kind: u16,
}

/// Value of the per-CPU `NP_COUNTERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    pub const fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }
}
