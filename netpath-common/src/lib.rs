//! Map keys, values and constants shared by netpath's kernel programs and its loader.
//!
//! Everything here is `#[repr(C)]` with explicit padding, so the layout the
//! eBPF side writes is the layout userspace reads. Maps are pinned by name and
//! survive upgrades: a map's key and value layout may only grow by adding new
//! maps or new counter kinds, never by changing an existing struct (a newer
//! build that needs a different layout must use a new map name).
//!
//! Addresses are stored in network byte order, as they appear in packets
//! (`u32::from_ne_bytes(addr.octets())` in userspace), so the datapath
//! compares them without conversion.
#![no_std]

pub mod config;
pub mod counters;
pub mod csum;
pub mod ct;
pub mod ct6;
pub mod drop;
pub mod event;
pub mod filter;
pub mod sweep;
pub mod v6;

pub use config::{Config, timeout};
pub use counters::{Counter, CounterKey, counter_kind, counter_scope};
pub use drop::DropReason;

/// Names of the pinned maps (the `#[map]` item names in `netpath-ebpf`).
pub mod map_names {
    /// ifindex -> [`IfaceInfo`](crate::IfaceInfo): every interface netpath manages.
    pub const IFACES: &str = "NP_IFACES";
    /// network id -> [`NetworkInfo`](crate::NetworkInfo).
    pub const NETWORKS: &str = "NP_NETWORKS";
    /// [`CounterKey`](crate::CounterKey) -> [`Counter`](crate::Counter), per CPU.
    pub const COUNTERS: &str = "NP_COUNTERS";
    /// [`CtKey4`](crate::ct::CtKey4) -> [`CtEntry4`](crate::ct::CtEntry4):
    /// the IPv4 conntrack table, one entry per direction (LRU).
    pub const CT4: &str = "NP_CT4";
    /// [`FragKey4`](crate::ct::FragKey4) -> [`FragPorts`](crate::ct::FragPorts):
    /// the ports of fragmented datagrams, learnt from their first fragment (LRU).
    pub const FRAG4: &str = "NP_FRAG4";
    /// Longest-prefix-match trie: managed subnet -> network id.
    pub const SUBNETS4: &str = "NP_SUBNETS4";
    /// Array of one [`Config`](crate::Config): NAT port range and conntrack timeouts.
    pub const CONFIG: &str = "NP_CONFIG";
    /// [`LeaseKey`](crate::LeaseKey) -> [`Lease`](crate::Lease): addresses
    /// `netpath connect` handed out (only userspace reads it).
    pub const LEASES4: &str = "NP_LEASES4";
    /// [`PubKey4`](crate::PubKey4) -> [`PubVal4`](crate::PubVal4): published ports.
    pub const PUBLISH4: &str = "NP_PUBLISH4";
    /// IPv4 address -> ifindex: the namespace's own addresses ("addrtype LOCAL").
    pub const HOSTADDRS4: &str = "NP_HOSTADDRS4";
    /// Array of one [`HostInfo`](crate::HostInfo): the managed namespace's cookie.
    pub const HOST: &str = "NP_HOST";
    /// [`SockRevKey`](crate::SockRevKey) -> [`SockRevVal`](crate::SockRevVal):
    /// what a host socket dialled before the socket hooks redirected it (LRU).
    pub const SOCK_REVNAT4: &str = "NP_SOCK_REVNAT4";
    /// Container IPv4 address -> [`Endpoint`](crate::Endpoint): where the
    /// fast path delivers a container's packets.
    pub const ENDPOINTS4: &str = "NP_ENDPOINTS4";
    /// LPM trie: [`FilterKey4`](crate::filter::FilterKey4) ->
    /// [`FilterRule`](crate::filter::FilterRule): the filter rules (`netpath filter`).
    pub const FILTER4: &str = "NP_FILTER4";
    /// Array of one [`FilterInfo`](crate::filter::FilterInfo): which rule groups exist.
    pub const FILTER_INFO: &str = "NP_FILTER_INFO";
    /// [`TargetKey4`](crate::TargetKey4) -> number of mappings: the container
    /// ports some published port leads to (what routed mode lets in directly).
    pub const TARGETS4: &str = "NP_TARGETS4";
    /// [`VlanKey`](crate::VlanKey) -> 1: VLANs the host terminates on an uplink.
    pub const VLANS: &str = "NP_VLANS";
    /// Array: network id -> live flows, written by a sweep pass with
    /// `sweep::mode::PER_NETWORK`.
    pub const CT_NETWORKS: &str = "NP_CT_NETWORKS";
    /// [`MacKey`](crate::MacKey) -> ifindex: the MACs of bound or learned
    /// ports and of managed bridges, which no other port may send from.
    pub const MACS: &str = "NP_MACS";
    /// Array of two u64 (see [`crate::ct::fill`]): the table's live entries
    /// and the limit past which new flows are refused.
    pub const CT_FILL: &str = "NP_CT_FILL";
    /// Ring buffer of [`Event`](crate::event::Event)s for `netpath monitor`.
    pub const EVENTS: &str = "NP_EVENTS";
    /// Array of u64: a monitor's heartbeat and the kinds it wants
    /// ([`crate::event::monitor`]).
    pub const MONITOR: &str = "NP_MONITOR";
    /// [`TrustedKey`](crate::TrustedKey) -> [`TrustedIface`](crate::TrustedIface):
    /// each network's trusted host interfaces (Docker's
    /// `trusted_host_interfaces`), whose traffic may reach published
    /// container ports at the container's address in gateway mode nat.
    pub const TRUSTED: &str = "NP_TRUSTED";
    /// LPM trie: [`PeerKey4`](crate::PeerKey4) -> 1: each network's peer
    /// CIDRs (`up --no-masquerade-to`, e.g. a cluster's pod CIDR), reached
    /// untranslated and let in at container addresses.
    pub const PEERS4: &str = "NP_PEERS4";
    /// network id -> [`NetworkInfo6`](crate::v6::NetworkInfo6): the IPv6
    /// half of a dual-stack network.
    pub const NETWORKS6: &str = "NP_NETWORKS6";
    /// LPM trie: managed IPv6 subnet -> network id.
    pub const SUBNETS6: &str = "NP_SUBNETS6";
    /// ifindex -> [`Port6`](crate::v6::Port6): the IPv6 addresses a port's
    /// container was given or learnt.
    pub const PORTS6: &str = "NP_PORTS6";
    /// [`Addr6Key`](crate::v6::Addr6Key) -> [`Endpoint`](crate::Endpoint):
    /// which port sends from an IPv6 address (none may take another's).
    pub const ENDPOINTS6: &str = "NP_ENDPOINTS6";
    /// [`LeaseKey6`](crate::v6::LeaseKey6) -> [`Lease`](crate::Lease):
    /// IPv6 addresses `netpath connect` handed out (only userspace reads it).
    pub const LEASES6: &str = "NP_LEASES6";
    /// [`CtKey6`](crate::ct6::CtKey6) -> [`CtEntry6`](crate::ct6::CtEntry6):
    /// the IPv6 conntrack table (LRU).
    pub const CT6: &str = "NP_CT6";
    /// Array: `NP_CT6`'s live entries and limit (`ct::fill`).
    pub const CT6_FILL: &str = "NP_CT6_FILL";
    /// Uplink ifindex -> the global IPv6 address NAT66 writes.
    pub const UPLINKS6: &str = "NP_UPLINKS6";
    /// [`FragKey6`](crate::ct6::FragKey6) -> [`FragPorts`](crate::ct::FragPorts):
    /// the ports of fragmented IPv6 datagrams, from their first fragment (LRU).
    pub const FRAG6: &str = "NP_FRAG6";
    /// Published IPv6 host ports (`v6::PortKey6` -> `v6::PubVal6`).
    pub const PUBLISH6: &str = "NP_PUBLISH6";
    /// Container IPv6 ports some published port leads to.
    pub const TARGETS6: &str = "NP_TARGETS6";
    /// The namespace's IPv6 addresses (what `[::]:PORT` is published on).
    pub const HOSTADDRS6: &str = "NP_HOSTADDRS6";
    /// [`SockRevKey6`](crate::v6::SockRevKey6) ->
    /// [`SockRevVal6`](crate::v6::SockRevVal6): what an IPv6 host socket
    /// dialled before the socket hooks redirected it (LRU).
    pub const SOCK_REVNAT6: &str = "NP_SOCK_REVNAT6";
    /// All pinned map names, for tooling that walks the pin directory.
    pub const ALL: [&str; 37] = [
        ENDPOINTS4,
        IFACES,
        NETWORKS,
        COUNTERS,
        CT4,
        FRAG4,
        SUBNETS4,
        CONFIG,
        LEASES4,
        PUBLISH4,
        HOSTADDRS4,
        HOST,
        SOCK_REVNAT4,
        FILTER4,
        FILTER_INFO,
        TARGETS4,
        VLANS,
        CT_NETWORKS,
        MACS,
        CT_FILL,
        EVENTS,
        MONITOR,
        TRUSTED,
        PEERS4,
        NETWORKS6,
        SUBNETS6,
        PORTS6,
        ENDPOINTS6,
        LEASES6,
        CT6,
        CT6_FILL,
        UPLINKS6,
        FRAG6,
        PUBLISH6,
        TARGETS6,
        HOSTADDRS6,
        SOCK_REVNAT6,
    ];
}

/// Maximum number of managed networks (bridges) per network namespace.
pub const MAX_NETWORKS: u32 = 4096;
/// Maximum number of interfaces netpath attaches to per network namespace.
pub const MAX_IFACES: u32 = 16384;
/// Maximum number of counter entries (interfaces and networks, all kinds).
pub const MAX_COUNTERS: u32 = 65536;

/// Length of an interface name including the terminating NUL (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// What an interface is to netpath. Stored as `u32` in [`IfaceInfo::role`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceRole {
    /// A managed bridge (`docker0`, `br-…`); ingress is traffic from the
    /// bridge towards the host stack.
    Bridge = 1,
    /// A port of a managed bridge (the host end of a container's veth);
    /// ingress is traffic *from* the container.
    Port = 2,
    /// An uplink: where traffic leaves the host.
    Uplink = 3,
}

impl IfaceRole {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Bridge),
            2 => Some(Self::Port),
            3 => Some(Self::Uplink),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Port => "port",
            Self::Uplink => "uplink",
        }
    }
}

/// Value of the `NP_IFACES` map, keyed by ifindex (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct IfaceInfo {
    /// An [`IfaceRole`] as `u32`.
    pub role: u32,
    /// The network this interface belongs to; 0 for uplinks (shared by all).
    pub net_id: u32,
    /// Bit set of [`iface_flags`].
    pub flags: u32,
    /// Uplink: its primary IPv4 address (the masquerade source). Port: the
    /// container's assigned address when known. 0 when unknown.
    pub ipv4_be: u32,
    /// Port: the container's MAC when known; zero otherwise.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Interface flags in [`IfaceInfo::flags`].
pub mod iface_flags {
    /// The uplink was named with `--uplink` (not chosen by the default rule).
    pub const EXPLICIT_UPLINK: u32 = 1 << 0;
    /// Port: `ipv4_be` and `mac` were assigned by `netpath connect`.
    pub const BOUND: u32 = 1 << 1;
    /// Port: `ipv4_be` and `mac` were learnt from the container's first
    /// packet (ARP or IPv4 from an address of its subnet).
    pub const LEARNED: u32 = 1 << 2;
    /// Port: `mac` was learnt from the container's first IPv6 packet that
    /// passed (no IPv4 binding yet): the port keeps that MAC, as a bound
    /// one does, so it cannot rotate MACs (and EUI-64 addresses) over IPv6.
    pub const MAC_PINNED: u32 = 1 << 3;
    /// Port: its frames must carry `mac`.
    pub const MAC_FIXED: u32 = BOUND | LEARNED | MAC_PINNED;
}

/// Network flags in [`NetworkInfo::flags`].
pub mod net_flags {
    /// netpath created the bridge (so `down` deletes it).
    pub const CREATED_BRIDGE: u32 = 1 << 0;
    /// netpath added the gateway address to the bridge (so `down` removes it).
    pub const ADDED_GATEWAY: u32 = 1 << 1;
    /// Leave source addresses alone on the way out (Docker's
    /// `com.docker.network.bridge.enable_ip_masquerade=false`).
    pub const NO_MASQUERADE: u32 = 1 << 2;
    /// Containers on this bridge may not talk to each other (`--icc=false`).
    pub const NO_ICC: u32 = 1 << 3;
    /// No traffic to or from outside the subnet (Docker's `--internal`).
    pub const INTERNAL: u32 = 1 << 4;
    /// Brought up by `netpath docker` from a dockerd network (so it goes
    /// when that network goes).
    pub const DOCKER: u32 = 1 << 5;
    /// Gateway mode `routed` (see [`GatewayMode`](crate::GatewayMode)).
    pub const GW_ROUTED: u32 = 1 << 6;
    /// Gateway mode `nat-unprotected` (see [`GatewayMode`](crate::GatewayMode)).
    pub const GW_UNPROTECTED: u32 = 1 << 7;
    /// Made by `netpath apply` from a config file (so a later `apply` whose
    /// file no longer names it takes it down).
    pub const APPLY: u32 = 1 << 8;
    /// The network has no IPv4 subnet (IPv6 only): its record's IPv4
    /// fields are zero and mean nothing, and its ports carry neither IPv4
    /// nor ARP.
    pub const NO_IPV4: u32 = 1 << 9;
}

/// What a network lets in from outside the host (Docker 28's
/// `com.docker.network.bridge.gateway_mode_ipv4`), kept as
/// [`net_flags`] bits. In every mode the host itself reaches its
/// containers, and containers of other networks come in only through
/// published ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayMode {
    /// Replies to the containers' own flows and published ports reached
    /// through a host address; nothing else.
    Nat,
    /// Docker's old behaviour: anything routed to a container reaches it.
    NatUnprotected,
    /// No masquerade. Also: published container ports reached at the
    /// container's own address, and ICMP echo.
    Routed,
}

impl GatewayMode {
    pub const ALL: [Self; 3] = [Self::Nat, Self::NatUnprotected, Self::Routed];
    /// The [`net_flags`] bits that encode the mode.
    pub const MASK: u32 = net_flags::GW_ROUTED | net_flags::GW_UNPROTECTED;

    #[inline(always)]
    pub const fn from_flags(flags: u32) -> Self {
        if flags & net_flags::GW_ROUTED != 0 {
            Self::Routed
        } else if flags & net_flags::GW_UNPROTECTED != 0 {
            Self::NatUnprotected
        } else {
            Self::Nat
        }
    }

    pub const fn flags(self) -> u32 {
        match self {
            Self::Nat => 0,
            Self::NatUnprotected => net_flags::GW_UNPROTECTED,
            Self::Routed => net_flags::GW_ROUTED,
        }
    }

    /// Spelled as Docker spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::NatUnprotected => "nat-unprotected",
            Self::Routed => "routed",
        }
    }
}

/// Who made an entry of `NP_PUBLISH4` (`PubVal4::owner`), `NP_FILTER4`
/// (`FilterRule::owner`) or `NP_LEASES4`
/// (`Lease::flags`).
pub mod owner {
    /// `netpath publish` / `netpath connect`.
    pub const USER: u16 = 0;
    /// `netpath docker`, from a container's port bindings or endpoint
    /// (dockerd owns the veth; `down` leaves it alone).
    pub const DOCKER: u16 = 1;
    /// `netpath apply`, from a config file (a later `apply` whose file no
    /// longer names the entry removes it).
    pub const APPLY: u16 = 2;
    /// The CNI plugin (`CNI_COMMAND=ADD`), per container: its DEL removes
    /// exactly the mappings and the lease of that container's address.
    pub const CNI: u16 = 3;
}

/// Value of the `NP_NETWORKS` map, keyed by network id (`u32`, from 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NetworkInfo {
    /// Subnet address, network byte order.
    pub subnet_be: u32,
    /// Subnet mask, network byte order.
    pub mask_be: u32,
    /// Gateway (the bridge's address), network byte order.
    pub gateway_be: u32,
    /// ifindex of the bridge.
    pub bridge_ifindex: u32,
    /// Bit set of [`net_flags`].
    pub flags: u32,
    /// Prefix length of the subnet.
    pub prefix_len: u8,
    pub _pad: [u8; 3],
    /// Bridge name, NUL-padded.
    pub bridge_name: [u8; IFNAMSIZ],
}

impl NetworkInfo {
    /// Whether `addr_be` (network byte order) lies in this network's
    /// subnet: never for an IPv6-only network (whose zero mask would
    /// otherwise match every address).
    #[inline(always)]
    pub const fn contains_be(&self, addr_be: u32) -> bool {
        self.flags & net_flags::NO_IPV4 == 0 && addr_be & self.mask_be == self.subnet_be
    }
}

/// Key of `NP_LEASES4`: one address of one network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct LeaseKey {
    pub net_id: u32,
    pub addr_be: u32,
}

/// Value of `NP_LEASES4`: who holds the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Lease {
    /// Cookie of the container's network namespace.
    pub netns_cookie: u64,
    /// ifindex of the host end of the veth `connect` created.
    pub host_ifindex: u32,
    pub flags: u32,
    /// The container's MAC.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Name of the namespace as given to `connect`, NUL-padded (cut at 32
    /// bytes; for display, the cookie is what identifies it).
    pub netns_name: [u8; 32],
}

/// Key of `NP_PUBLISH4`: a published host port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PubKey4 {
    /// The host address it is bound to; 0 for every host address.
    pub addr_be: u32,
    pub port_be: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `NP_PUBLISH4`: where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PubVal4 {
    pub target_be: u32,
    pub target_port_be: u16,
    /// Who published it (`owner::*`); the datapath ignores it.
    pub owner: u16,
    /// The target's network.
    pub net_id: u32,
    /// Counter id of this mapping (scope `counter_scope::PUBLISH`).
    pub id: u32,
}

/// Key of `NP_TARGETS4`: a container port that a published port leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TargetKey4 {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of `NP_VLANS`: a VLAN id on an uplink that has a VLAN device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct VlanKey {
    /// The uplink (the VLAN device's lower device).
    pub ifindex: u32,
    /// The VLAN id (12 bits), host byte order.
    pub vid: u16,
    pub _pad: u16,
}

/// Key of `NP_MACS`: a MAC address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct MacKey {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of `NP_TRUSTED`: a network and one of its trusted host interfaces.
/// An interface that does not exist (yet) is keyed by
/// [`TrustedKey::ABSENT`] plus its slot, which no real ifindex (a positive
/// `int`) reaches, so the datapath never matches it and the name is kept
/// for when it appears.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TrustedKey {
    pub net_id: u32,
    pub ifindex: u32,
}

impl TrustedKey {
    pub const ABSENT: u32 = 1 << 31;
}

/// Value of `NP_TRUSTED`: the interface's name (what the user gave).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TrustedIface {
    pub name: [u8; IFNAMSIZ],
}

/// Key of `NP_PEERS4` (an LPM trie): a network and a peer CIDR, matched on
/// 32 + the CIDR's prefix length bits (the network id exactly, then the
/// address prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PeerKey4 {
    pub net_id: u32,
    pub addr_be: u32,
}

/// Maximum peer CIDRs, over all networks.
pub const MAX_PEERS: u32 = 4096;

/// Maximum trusted host interfaces, over all networks.
pub const MAX_TRUSTED: u32 = 1024;

/// Maximum VLAN devices on uplinks netpath follows.
pub const MAX_VLANS: u32 = 4096;

/// Maximum published ports (each port of a range counts) per namespace.
pub const MAX_PUBLISH: u32 = 65536 * 2;
/// Maximum IPv4 addresses of the namespace netpath tracks.
pub const MAX_HOSTADDRS: u32 = 4096;

/// Value of the one-element `NP_HOST` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct HostInfo {
    /// Cookie of the network namespace netpath manages: the socket hooks
    /// act only on sockets of this namespace.
    pub netns_cookie: u64,
    /// Inode of the cgroup the socket hooks are attached to (0: none).
    pub cgroup_id: u64,
}

/// Value of `NP_ENDPOINTS4`: a container's port, for delivering its
/// packets straight to its veth (`bpf_redirect_peer`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Endpoint {
    /// The host end of the container's veth (the bridge port).
    pub ifindex: u32,
    pub net_id: u32,
    /// The container's MAC.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of `NP_SOCK_REVNAT4`: a socket and the address it was redirected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRevKey {
    pub sock_cookie: u64,
    pub target_be: u32,
    pub target_port_be: u16,
    pub _pad: u16,
}

/// Value of `NP_SOCK_REVNAT4`: the address the socket dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockRevVal {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

/// Maximum addresses `connect` hands out per namespace.
pub const MAX_LEASES: u32 = 65536;

// SAFETY: each type is `#[repr(C)]`, `Copy`, has explicit padding and no
// invalid bit patterns (bytemuck's derive checks the same at compile time).
#[cfg(feature = "user")]
mod user {
    use super::{
        Config, Counter, CounterKey, Endpoint, HostInfo, IfaceInfo, Lease, LeaseKey, MacKey,
        NetworkInfo, PeerKey4, PubKey4, PubVal4, SockRevKey, SockRevVal, TargetKey4, TrustedIface,
        TrustedKey, VlanKey,
        ct::{CtEntry4, CtKey4, FragKey4, FragPorts},
        event::Event,
        filter::{FilterData, FilterInfo, FilterRule},
        sweep::SweepArgs,
        v6::{
            Addr6Key, LeaseKey6, NetworkInfo6, Port6, PortKey6, PubVal6, SockRevKey6, SockRevVal6,
        },
    };
    unsafe impl aya::Pod for NetworkInfo6 {}
    unsafe impl aya::Pod for Port6 {}
    unsafe impl aya::Pod for Addr6Key {}
    unsafe impl aya::Pod for LeaseKey6 {}
    unsafe impl aya::Pod for PortKey6 {}
    unsafe impl aya::Pod for PubVal6 {}
    unsafe impl aya::Pod for SockRevKey6 {}
    unsafe impl aya::Pod for SockRevVal6 {}
    unsafe impl aya::Pod for SweepArgs {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for crate::event::Event6 {}
    unsafe impl aya::Pod for TargetKey4 {}
    unsafe impl aya::Pod for MacKey {}
    unsafe impl aya::Pod for VlanKey {}
    unsafe impl aya::Pod for TrustedKey {}
    unsafe impl aya::Pod for PeerKey4 {}
    unsafe impl aya::Pod for TrustedIface {}
    unsafe impl aya::Pod for FilterData {}
    unsafe impl aya::Pod for FilterInfo {}
    unsafe impl aya::Pod for FilterRule {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for HostInfo {}
    unsafe impl aya::Pod for PubKey4 {}
    unsafe impl aya::Pod for PubVal4 {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevVal {}
    unsafe impl aya::Pod for Lease {}
    unsafe impl aya::Pod for LeaseKey {}
    unsafe impl aya::Pod for CtKey4 {}
    unsafe impl aya::Pod for CtEntry4 {}
    unsafe impl aya::Pod for crate::ct6::CtKey6 {}
    unsafe impl aya::Pod for crate::ct6::CtEntry6 {}
    unsafe impl aya::Pod for FragKey4 {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for NetworkInfo {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for Counter {}
}
