//! Every map the datapath uses. All are pinned by name under the per-netns
//! state directory the loader passes to aya, so a later `netpath` call (or a
//! newer build) reuses them.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuHashMap},
};
use netpath_common::{
    Counter, CounterKey, IfaceInfo, MAX_COUNTERS, MAX_IFACES, MAX_NETWORKS, NetworkInfo,
};

/// ifindex -> role and network of every interface netpath attached to.
#[map]
pub static NP_IFACES: HashMap<u32, IfaceInfo> = HashMap::pinned(MAX_IFACES, 0);

/// network id -> subnet, gateway, bridge.
#[map]
pub static NP_NETWORKS: HashMap<u32, NetworkInfo> = HashMap::pinned(MAX_NETWORKS, 0);

/// Per-CPU packet/byte counters for interfaces and networks.
#[map]
pub static NP_COUNTERS: PerCpuHashMap<CounterKey, Counter> = PerCpuHashMap::pinned(MAX_COUNTERS, 0);
