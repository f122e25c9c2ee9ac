//! Every map the datapath uses. All are pinned by name under the per-netns
//! state directory the loader passes to aya, so a later `netpath` call (or a
//! newer build) reuses them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use netpath_common::{
    Config, Counter, CounterKey, Endpoint, HostInfo, IfaceInfo, Lease, LeaseKey, MAX_COUNTERS,
    MAX_HOSTADDRS, MAX_IFACES, MAX_LEASES, MAX_NETWORKS, MAX_PEERS, MAX_PUBLISH, MAX_TRUSTED,
    MAX_VLANS, MacKey, NetworkInfo, PeerKey4, PubKey4, PubVal4, SockRevKey, SockRevVal, TargetKey4,
    TrustedIface, TrustedKey, VlanKey,
    ct::{CtEntry4, CtKey4, FragKey4, FragPorts, MAX_CT4, MAX_FRAG4},
    ct6::{CtEntry6, CtKey6, FragKey6, MAX_CT6, MAX_FRAG6},
    event::{self, Bucket},
    filter::{FilterData, FilterInfo, FilterRule, MAX_FILTERS},
    v6::{Addr6Key, LeaseKey6, NetworkInfo6, Port6, PortKey6, PubVal6, SockRevKey6, SockRevVal6},
};

/// The hash maps' flag: elements are allocated when inserted, not all at
/// creation. Preallocating cost a namespace's first `up` about 60 ms (40 ms
/// of it `NP_COUNTERS`, 65,536 per-CPU slots allocated one by one) for
/// tables that mostly stay small. LRU maps are always preallocated.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// Per-CPU room for the socket tuple a new flow's translated tuple is
/// checked with (`ct::host_socket4/6`): off the stack.
#[map]
pub static NP_SOCK_TUPLE: PerCpuArray<aya_ebpf::bindings::bpf_sock_tuple> =
    PerCpuArray::with_max_entries(1, 0);

/// ifindex -> role and network of every interface netpath attached to.
#[map]
pub static NP_IFACES: HashMap<u32, IfaceInfo> = HashMap::pinned(MAX_IFACES, NO_PREALLOC);

/// network id -> subnet, gateway, bridge.
#[map]
pub static NP_NETWORKS: HashMap<u32, NetworkInfo> = HashMap::pinned(MAX_NETWORKS, NO_PREALLOC);

/// Per-CPU packet/byte counters for interfaces and networks.
#[map]
pub static NP_COUNTERS: PerCpuHashMap<CounterKey, Counter> =
    PerCpuHashMap::pinned(MAX_COUNTERS, NO_PREALLOC);

/// The IPv4 conntrack table: one entry per flow direction. LRU, so a full
/// table evicts the coldest flows instead of refusing new ones; busy flows
/// keep both entries warm (each direction looks its partner up every second).
#[map]
pub static NP_CT4: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(MAX_CT4, 0);

/// Ports of fragmented datagrams, learnt from the first fragment so later
/// fragments (which carry no ports) find their flow.
#[map]
pub static NP_FRAG4: LruHashMap<FragKey4, FragPorts> = LruHashMap::pinned(MAX_FRAG4, 0);

/// Managed subnets -> network id, for "is this source one of our containers?".
#[map]
pub static NP_SUBNETS4: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_NETWORKS, 0);

/// One [`Config`] at index 0.
#[map]
pub static NP_CONFIG: Array<Config> = Array::pinned(1, 0);

/// Addresses handed out by `netpath connect`. Only userspace uses it; it is
/// declared here so it is created and pinned with the others.
#[map]
pub static NP_LEASES4: HashMap<LeaseKey, Lease> = HashMap::pinned(MAX_LEASES, NO_PREALLOC);

/// Published ports: (host address or 0, port, protocol) -> container.
#[map]
pub static NP_PUBLISH4: HashMap<PubKey4, PubVal4> = HashMap::pinned(MAX_PUBLISH, NO_PREALLOC);

/// The namespace's own IPv4 addresses ("addrtype LOCAL"), kept by the loader.
#[map]
pub static NP_HOSTADDRS4: HashMap<u32, u32> = HashMap::pinned(MAX_HOSTADDRS, NO_PREALLOC);

/// One [`HostInfo`]: the managed namespace's cookie, for the socket hooks.
#[map]
pub static NP_HOST: Array<HostInfo> = Array::pinned(1, 0);

/// What a host socket dialled before the socket hooks redirected it to a
/// container, for `getpeername` and UDP `recvmsg`.
#[map]
pub static NP_SOCK_REVNAT4: LruHashMap<SockRevKey, SockRevVal> = LruHashMap::pinned(65536, 0);

/// Container address -> its port, for the fast path (kept by port learning,
/// `connect` and reconcile).
#[map]
pub static NP_ENDPOINTS4: HashMap<u32, Endpoint> = HashMap::pinned(MAX_IFACES, NO_PREALLOC);

/// Filter rules: (group, selectors, client prefix) -> verdict (`netpath filter`).
#[map]
pub static NP_FILTER4: LpmTrie<FilterData, FilterRule> = LpmTrie::pinned(MAX_FILTERS, 0);

/// One [`FilterInfo`]: which rule groups have rules (kept by the loader).
#[map]
pub static NP_FILTER_INFO: Array<FilterInfo> = Array::pinned(1, 0);

/// Container ports some published port leads to -> number of mappings
/// (kept by the loader): what a routed network lets in directly.
#[map]
pub static NP_TARGETS4: HashMap<TargetKey4, u32> = HashMap::pinned(MAX_PUBLISH, NO_PREALLOC);

/// VLANs the host terminates on an uplink (a VLAN device on it), kept by
/// the loader: tagged frames of any other VLAN are dropped at the uplink.
#[map]
pub static NP_VLANS: HashMap<VlanKey, u32> = HashMap::pinned(MAX_VLANS, NO_PREALLOC);

/// Each network's trusted host interfaces (kept by the loader): new flows
/// arriving on one may reach the network's published container ports at
/// the container's address even in gateway mode nat.
#[map]
pub static NP_TRUSTED: HashMap<TrustedKey, TrustedIface> =
    HashMap::pinned(MAX_TRUSTED, NO_PREALLOC);

/// Each network's peer CIDRs (kept by the loader): traffic to them leaves
/// untranslated, traffic from them may reach container addresses.
#[map]
pub static NP_PEERS4: LpmTrie<PeerKey4, u32> = LpmTrie::pinned(MAX_PEERS, 0);

/// Network id -> live flows, written by a sweep pass that counts per
/// network (`netpath status`).
#[map]
pub static NP_CT_NETWORKS: Array<u32> = Array::pinned(MAX_NETWORKS + 1, 0);

/// Per-CPU room to build a new flow's two entries in (they would not fit
/// the BPF stack next to the hooks' own locals). Not pinned: nothing to keep.
#[map]
pub static NP_CT_SCRATCH: PerCpuArray<[CtEntry4; 2]> = PerCpuArray::with_max_entries(1, 0);

/// How full `NP_CT4` is and the limit for new flows (`ct::fill`).
#[map]
pub static NP_CT_FILL: Array<u64> = Array::pinned(2, 0);

/// MACs of bound or learned ports and of managed bridges -> whose: no
/// other port may send from them (kept by the loader and port learning).
#[map]
pub static NP_MACS: HashMap<MacKey, u32> = HashMap::pinned(MAX_IFACES, NO_PREALLOC);

/// Events for `netpath monitor` (`netpath_common::event`).
#[map]
pub static NP_EVENTS: RingBuf = RingBuf::pinned(event::RING_BYTES, 0);

/// A monitor's heartbeat and the event kinds it wants.
#[map]
pub static NP_MONITOR: Array<u64> = Array::pinned(event::monitor::LEN, 0);

/// The events' rate limit, per CPU. Not pinned: a new build starts full.
#[map]
pub static NP_EVENT_BUCKET: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(1, 0);

/// network id -> the IPv6 half of a dual-stack network (kept by the loader).
#[map]
pub static NP_NETWORKS6: HashMap<u32, NetworkInfo6> = HashMap::pinned(MAX_NETWORKS, NO_PREALLOC);

/// Managed IPv6 subnets -> network id.
#[map]
pub static NP_SUBNETS6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(MAX_NETWORKS, 0);

/// Port ifindex -> the IPv6 addresses its container was given or learnt.
#[map]
pub static NP_PORTS6: HashMap<u32, Port6> = HashMap::pinned(MAX_IFACES, NO_PREALLOC);

/// IPv6 address (link-local ones per network) -> the port sending from it,
/// or the bridge that has it. A port's MAC is fixed by its first packet, so
/// it records at most three: its EUI-64 link-local, one other link-local
/// and one global address.
#[map]
pub static NP_ENDPOINTS6: HashMap<Addr6Key, Endpoint> =
    HashMap::pinned(MAX_IFACES * 4, NO_PREALLOC);

/// IPv6 addresses handed out by `netpath connect` (only userspace uses it).
#[map]
pub static NP_LEASES6: HashMap<LeaseKey6, Lease> = HashMap::pinned(MAX_LEASES, NO_PREALLOC);

/// The IPv6 conntrack table (`netpath_common::ct6`), as `NP_CT4` is for
/// IPv4, with its own fill count and limit (`NP_CT6_FILL`).
#[map]
pub static NP_CT6: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(MAX_CT6, 0);

/// How full `NP_CT6` is and its limit for new flows (`ct::fill`).
#[map]
pub static NP_CT6_FILL: Array<u64> = Array::pinned(2, 0);

/// Per-CPU room for a new IPv6 flow's two entries. Not pinned.
#[map]
pub static NP_CT6_SCRATCH: PerCpuArray<[CtEntry6; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Uplink ifindex -> the global IPv6 address IPv6 masquerade writes
/// (kept by the loader, as `IfaceInfo::ipv4_be` is for IPv4).
#[map]
pub static NP_UPLINKS6: HashMap<u32, [u8; 16]> = HashMap::pinned(MAX_IFACES, NO_PREALLOC);

/// Ports of fragmented IPv6 datagrams, learnt from the first fragment so
/// later fragments (which carry no ports) find their flow.
#[map]
pub static NP_FRAG6: LruHashMap<FragKey6, FragPorts> = LruHashMap::pinned(MAX_FRAG6, 0);

/// Published IPv6 host ports, as `NP_PUBLISH4` for IPv4 (an all-zero
/// address: every host IPv6 address).
#[map]
pub static NP_PUBLISH6: HashMap<PortKey6, PubVal6> = HashMap::pinned(MAX_PUBLISH, NO_PREALLOC);

/// Container IPv6 ports some published port leads to (value: how many),
/// as `NP_TARGETS4`.
#[map]
pub static NP_TARGETS6: HashMap<PortKey6, u32> = HashMap::pinned(MAX_PUBLISH, NO_PREALLOC);

/// The namespace's own IPv6 addresses, as `NP_HOSTADDRS4` (kept by the
/// loader): where a port published on every address is reached.
#[map]
pub static NP_HOSTADDRS6: HashMap<[u8; 16], u32> = HashMap::pinned(MAX_HOSTADDRS, NO_PREALLOC);

/// What an IPv6 host socket dialled before the socket hooks redirected it,
/// as `NP_SOCK_REVNAT4`.
#[map]
pub static NP_SOCK_REVNAT6: LruHashMap<SockRevKey6, SockRevVal6> = LruHashMap::pinned(65536, 0);

/// What a container's IPv4 packet would teach its port (`NP_LEARN4`),
/// staged before the policy and kept once the packet passed it.
pub struct Staged {
    /// The port; 0: nothing staged.
    pub ifindex: u32,
    pub info: IfaceInfo,
}

/// Per-CPU room for what a container's IPv4 packet would teach its port,
/// kept once the packet passed the policy. Not pinned.
#[map]
pub static NP_LEARN4: PerCpuArray<Staged> = PerCpuArray::with_max_entries(1, 0);

/// A container's packet that its port's first checks passed, as the
/// port's ingress hands it to the checks the program's top runs as global
/// functions (`port::policy4`, `port6::checks`; see `spoof::hand`).
pub struct Handed {
    pub iface: IfaceInfo,
    pub net: NetworkInfo,
    /// The port.
    pub ifindex: u32,
    /// IPv4: the destination the container sent to.
    pub daddr_be: u32,
    /// The frame's source MAC.
    pub mac: [u8; 6],
}

/// Per-CPU room for [`Handed`]. Not pinned.
#[map]
pub static NP_HANDED: PerCpuArray<Handed> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for an IPv6 packet's headers and tuples. Not pinned.
#[map]
pub static NP_WORK6: PerCpuArray<crate::parse6::Work6> = PerCpuArray::with_max_entries(1, 0);
