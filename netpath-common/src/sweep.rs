//! One pass over the conntrack table inside the kernel: the program
//! `netpath_ct_sweep` is run with `BPF_PROG_TEST_RUN` on a made-up frame
//! whose payload is a [`SweepArgs`]; it walks `NP_CT4` with
//! `bpf_for_each_map_elem`, removes what the arguments say (expired flows,
//! flows a filter matches) and writes what it found back into the frame.
//! No entry crosses into userspace, so a pass over a full table costs
//! milliseconds of kernel time and no memory in the daemon.

/// [`SweepArgs::mode`] bits.
pub mod mode {
    /// Remove flows idle for longer than their state's timeout.
    pub const EXPIRE: u32 = 1 << 0;
    /// Remove flows the filter matches.
    pub const FLUSH: u32 = 1 << 1;
    /// The table is under pressure: embryonic flows (TCP in SYN_SENT or
    /// SYN_RECV, unreplied UDP and ICMP) idle longer than
    /// [`SweepArgs::pressure_timeout_ms`] go too, as nf_conntrack's
    /// early drop takes unassured flows first.
    pub const PRESSURE: u32 = 1 << 2;
    /// Count the live flows of each network into `NP_CT_NETWORKS`.
    pub const PER_NETWORK: u32 = 1 << 3;
    /// Only count the entries, and set the datapath's live entry count
    /// (`ct::fill::LIVE`) to it: the count drifts when entries change
    /// behind the datapath's back (an older build's, a resize's copy).
    pub const CALIBRATE: u32 = 1 << 4;
}

/// The ethertype of the made-up frame (IEEE 802 local experimental).
pub const ETHERTYPE: u16 = 0x88b5;

/// What a pass does (set by the caller) and found (set by the program).
/// Filter fields that are zero match everything; every set one must match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SweepArgs {
    /// [`mode`] bits.
    pub mode: u32,
    /// See [`mode::PRESSURE`].
    pub pressure_timeout_ms: u32,
    /// The flow's network.
    pub net_id: u32,
    /// The original source (the flow's first packet's sender).
    pub src_be: u32,
    /// The original destination.
    pub dst_be: u32,
    /// Any port of the flow (original or reply, source or destination).
    pub port_be: u16,
    /// The flow's protocol.
    pub proto: u8,
    /// With `pub_last` != 0: flows of published host ports
    /// `pub_first..=pub_last` (host byte order) of this protocol, to
    /// `pub_addr_be` (0: any host address).
    pub pub_proto: u8,
    pub pub_addr_be: u32,
    pub pub_first: u16,
    pub pub_last: u16,
    /// Found: entries visited.
    pub entries: u32,
    /// Found: flows left.
    pub flows: u32,
    /// Found: flows left that are embryonic (see [`mode::PRESSURE`]).
    pub embryonic: u32,
    /// Found: flows removed.
    pub removed_flows: u32,
    /// Found: entries removed.
    pub removed_entries: u32,
    /// Only flows of one family: 4 or 6; 0 for both.
    pub family: u8,
    pub _pad: [u8; 3],
    /// `src_be`, `dst_be` and `pub_addr_be` for IPv6 flows (all zeros:
    /// any). A filter naming an address of one family matches no flow of
    /// the other.
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
    pub pub_addr6: [u8; 16],
}
