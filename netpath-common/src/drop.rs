//! Why the datapath dropped a packet: every drop is counted per network
//! (when the packet belongs to one) and per interface, under the counter
//! kind `counter_kind::DROP_BASE + reason`. Values never change; new
//! reasons are added at the end.

/// Why the datapath dropped a packet.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A container packet must be masqueraded but the uplink has no IPv4 address.
    NatNoAddress = 1,
    /// Every candidate source port for the external tuple was taken.
    NatPortsExhausted = 2,
    /// A packet that could not be parsed (truncated or inconsistent headers).
    Malformed = 3,
    /// The conntrack entry could not be written (map error other than a race).
    CtInsertFailed = 4,
    /// A container addressed a container of another managed network.
    Isolation = 5,
    /// A container addressed a container of its own network with ICC off.
    Icc = 6,
    /// Traffic of an internal network to or from outside its subnet.
    Internal = 7,
    /// A container sent with an IPv4 source (or ARP sender) not its own, or
    /// claimed the gateway or another port's address.
    SpoofedSource = 8,
    /// A container sent with a MAC source (or ARP sender) not its own.
    SpoofedMac = 9,
    /// A VLAN-tagged frame at a container port (any depth, also a tag the
    /// kernel already took off), or at an uplink on a VLAN the host has no
    /// interface for.
    Vlan = 10,
    /// A frame at a container port that is neither IPv4 nor ARP.
    Ethertype = 11,
    /// IPv6 netpath does not carry: at a container port of a network
    /// without an IPv6 subnet, or between a container and anything beyond
    /// the host's managed bridges (IPv6 egress and inbound are not built
    /// yet, so nothing leaves or enters untracked).
    Ipv6 = 12,
    /// From outside, a source no host sends from: 0.0.0.0/8, 127.0.0.0/8,
    /// 224.0.0.0/4, 240.0.0.0/4.
    MartianSource = 13,
    /// From outside, a source that is one of the host's own addresses or in
    /// a managed subnet.
    LocalSource = 14,
    /// From outside, straight to a container of a `nat` network: neither a
    /// reply to one of its flows nor a published port reached through a
    /// host address.
    DirectRouting = 15,
    /// From outside, straight to a container of a `routed` network: a new
    /// flow to a container port no published port leads to.
    NotPublished = 16,
    /// Refused by a filter rule (`netpath filter`).
    Filter = 17,
    /// From a port of a managed bridge that netpath does not manage (yet).
    UnmanagedPort = 18,
    /// A new flow while the conntrack table was at its limit (nf_conntrack's
    /// "table full, dropping packet"): established flows are never evicted
    /// to make room.
    ConntrackFull = 19,
    /// A TCP packet that opens no flow and belongs to none (no SYN or ACK,
    /// FIN or RST first: nf_conntrack's INVALID).
    CtInvalid = 20,
    /// A container sent a Router Advertisement or a Redirect (RA guard), or
    /// another router-only ICMPv6 message (an MLD query, router
    /// renumbering, a multicast router advertisement or termination), or a
    /// first fragment carrying an ICMPv6 Neighbour Discovery message.
    RouterAdvert = 21,
    /// A container's Neighbour Solicitation or Advertisement claimed an
    /// address that is not its own (or one it may not take), or carried a
    /// link-layer address that is not its MAC.
    NdSpoof = 22,
    /// An IPv6 routing header, or an extension header chain netpath does
    /// not follow to its end.
    Ipv6Header = 23,
    /// IPv4 or ARP at a container port of an IPv6-only network (either
    /// way), or on its way up from its bridge.
    Ipv4 = 24,
}

impl DropReason {
    pub const ALL: [Self; 24] = [
        Self::NatNoAddress,
        Self::NatPortsExhausted,
        Self::Malformed,
        Self::CtInsertFailed,
        Self::Isolation,
        Self::Icc,
        Self::Internal,
        Self::SpoofedSource,
        Self::SpoofedMac,
        Self::Vlan,
        Self::Ethertype,
        Self::Ipv6,
        Self::MartianSource,
        Self::LocalSource,
        Self::DirectRouting,
        Self::NotPublished,
        Self::Filter,
        Self::UnmanagedPort,
        Self::ConntrackFull,
        Self::CtInvalid,
        Self::RouterAdvert,
        Self::NdSpoof,
        Self::Ipv6Header,
        Self::Ipv4,
    ];

    pub const fn from_u16(v: u16) -> Option<Self> {
        let i = v as usize;
        if i >= 1 && i <= Self::ALL.len() {
            Some(Self::ALL[i - 1])
        } else {
            None
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NatNoAddress => "drop_nat_no_address",
            Self::NatPortsExhausted => "drop_nat_ports_exhausted",
            Self::Malformed => "drop_malformed",
            Self::CtInsertFailed => "drop_ct_insert_failed",
            Self::Isolation => "drop_isolation",
            Self::Icc => "drop_icc",
            Self::Internal => "drop_internal",
            Self::SpoofedSource => "drop_spoofed_source",
            Self::SpoofedMac => "drop_spoofed_mac",
            Self::Vlan => "drop_vlan",
            Self::Ethertype => "drop_ethertype",
            Self::Ipv6 => "drop_ipv6",
            Self::MartianSource => "drop_martian_source",
            Self::LocalSource => "drop_local_source",
            Self::DirectRouting => "drop_direct_routing",
            Self::NotPublished => "drop_not_published",
            Self::Filter => "drop_filter",
            Self::UnmanagedPort => "drop_unmanaged_port",
            Self::ConntrackFull => "drop_conntrack_full",
            Self::CtInvalid => "drop_ct_invalid",
            Self::RouterAdvert => "drop_router_advert",
            Self::NdSpoof => "drop_nd_spoof",
            Self::Ipv6Header => "drop_ipv6_header",
            Self::Ipv4 => "drop_ipv4",
        }
    }

    pub const fn counter_kind(self) -> u16 {
        Self::counter_kind_of(self as u16)
    }

    /// [`Self::counter_kind`] of a reason's number (the datapath passes
    /// it as a number to the global function that counts drops).
    pub const fn counter_kind_of(reason: u16) -> u16 {
        crate::counter_kind::DROP_BASE + reason
    }
}

#[cfg(test)]
mod tests {
    use super::DropReason;

    #[test]
    fn reasons_round_trip_and_keep_their_values() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i + 1, "{r:?}: values never change");
            assert_eq!(DropReason::from_u16(*r as u16), Some(*r));
            assert!(r.as_str().starts_with("drop_"));
        }
        assert_eq!(DropReason::from_u16(0), None);
        assert_eq!(DropReason::from_u16(DropReason::ALL.len() as u16 + 1), None);
    }
}
