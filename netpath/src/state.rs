//! Pinned state, per network namespace: `/sys/fs/bpf/netpath/<netns cookie>/`
//! holds `maps/` (the datapath's maps, pinned by name) and `links/` (one TCX
//! link per interface and direction). The maps are the only record of the
//! networks: a later `netpath` call, or a newer build, reads them back.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{
    Array, HashMap, Map, MapData, PerCpuHashMap,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::Ipv4Net;
use netpath_common::{
    Config, Counter, CounterKey, Endpoint, HostInfo, IfaceInfo, Lease, LeaseKey, MacKey,
    NetworkInfo, PeerKey4, PubKey4, PubVal4, TargetKey4, TrustedIface, TrustedKey, VlanKey,
    ct::{CtEntry4, CtKey4},
    filter::{FilterData, FilterInfo, FilterRule},
    map_names,
};

use crate::{netns, tables::Table as _};

/// Packets and bytes of one counter, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for Traffic {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Direction of a TCX attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// The program an interface of `role` runs in `dir` (the function names in
/// `netpath-ebpf/src/main.rs`; at most 15 bytes, the kernel's name length).
pub const fn tc_program(role: netpath_common::IfaceRole, dir: Dir) -> &'static str {
    use netpath_common::IfaceRole as R;
    match (role, dir) {
        (R::Uplink, Dir::Ingress) => "netpath_up_in",
        (R::Uplink, Dir::Egress) => "netpath_up_eg",
        (R::Port, Dir::Ingress) => "netpath_port_in",
        (R::Port, Dir::Egress) => "netpath_port_eg",
        (R::Bridge, Dir::Ingress) => "netpath_br_in",
        (R::Bridge, Dir::Egress) => "netpath_br_eg",
    }
}

/// Every TC program, in the order `Datapath` keeps them. A bridge has
/// nothing to do at egress (what the host sends to containers is judged at
/// their ports), so it gets no program there: every TCX attachment waits
/// for an RCU grace period (10–15 ms here), which made a network's second
/// attachment half the cost of creating one. Earlier builds attached
/// `netpath_br_eg` (a pass-through); the reconcile removes those links.
pub const TC_PROGRAMS: [(netpath_common::IfaceRole, Dir); 5] = {
    use netpath_common::IfaceRole as R;
    [
        (R::Uplink, Dir::Ingress),
        (R::Uplink, Dir::Egress),
        (R::Port, Dir::Ingress),
        (R::Port, Dir::Egress),
        (R::Bridge, Dir::Ingress),
    ]
};

/// Whether an interface of `role` runs a program in `dir`.
pub fn has_program(role: netpath_common::IfaceRole, dir: Dir) -> bool {
    TC_PROGRAMS.contains(&(role, dir))
}

/// Whether an interface of `role` gets its program in `dir` from a TC
/// filter (bridges and ports, where attaching fast matters: every network
/// and container adds some) rather than a TCX link (uplinks, a few, where
/// running ahead of other tools' TC programs matters).
pub fn attaches_by_filter(role: netpath_common::IfaceRole, _dir: Dir) -> bool {
    role != netpath_common::IfaceRole::Uplink
}

/// The conntrack sweep program (run with BPF_PROG_TEST_RUN, never attached).
pub const SWEEP_PROGRAM: &str = "netpath_sweep";

/// The state directory of one network namespace.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// Base directory of all netpath state on bpffs.
    pub fn base() -> PathBuf {
        Path::new(netns::BPFFS).join("netpath")
    }

    /// The state directory of the namespace this thread is in.
    pub fn current() -> Result<Self> {
        Ok(Self {
            root: Self::base().join(netns::cookie()?.to_string()),
        })
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Pin path of the link attaching to `ifindex` in `dir`.
    pub fn link_pin(&self, ifindex: u32, dir: Dir) -> PathBuf {
        self.links_dir().join(format!("{ifindex}-{}", dir.as_str()))
    }

    /// Whether an earlier `up` left state here.
    pub fn exists(&self) -> bool {
        self.maps_dir().join(map_names::NETWORKS).exists()
    }

    pub fn create(&self) -> Result<()> {
        for d in [self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// Every pinned link: (ifindex, direction, path).
    pub fn pinned_links(&self) -> Result<Vec<(u32, Dir, PathBuf)>> {
        let mut out = Vec::new();
        let dir = self.links_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name.split_once('-').and_then(|(i, d)| {
                let d = Dir::BOTH.into_iter().find(|x| x.as_str() == d)?;
                Some((i.parse().ok()?, d))
            });
            if let Some((ifindex, d)) = parsed {
                out.push((ifindex, d, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes the whole directory (after every link and map pin is gone).
    /// The base directory stays: it carries the lock.
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_dir_all(&self.root)
            .with_context(|| format!("removing {}", self.root.display()))
    }
}

/// An exclusive lock over netpath's state in this network namespace, held
/// while one command reads or changes it (an flock on
/// `/run/netpath/`[`lock_name`]). Namespaces have their own: their state, daemons and
/// links are their own, and one machine-wide lock let a long command in
/// one namespace (the first `up` verifying programs, a `down --all` of
/// 100 networks) hold up another's daemon for seconds while it was
/// putting back a filter someone removed from a port.
/// Reentrant on one thread: `apply` runs `down`, `up`, `publish`… as one
/// locked step, and a second flock on another open file of the same
/// directory would wait for the first forever.
pub struct Lock(#[allow(dead_code)] Option<std::fs::File>);

thread_local! {
    /// How many [`Lock`]s this thread holds.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Lock {
    fn held(file: Option<std::fs::File>) -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        Self(file)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Whether this thread holds the lock already.
fn nested() -> bool {
    DEPTH.with(std::cell::Cell::get) > 0
}

/// Takes the lock. `mount`: mount bpffs if needed (commands that create
/// state); otherwise, without bpffs there is no state and no lock is needed.
pub fn lock(mount: bool) -> Result<Option<Lock>> {
    if nested() {
        return Ok(Some(Lock::held(None)));
    }
    let Some(dir) = lock_file(mount)? else {
        return Ok(None);
    };
    dir.lock().context("locking netpath state")?;
    Ok(Some(Lock::held(Some(dir))))
}

/// Takes the lock when it is free: `Ok(Some(None))` when another command
/// holds it (the daemon retries later instead of blocking).
pub fn try_lock() -> Result<Option<Option<Lock>>> {
    if nested() {
        return Ok(Some(Some(Lock::held(None))));
    }
    let Some(dir) = lock_file(false)? else {
        return Ok(None);
    };
    Ok(Some(
        crate::sys::try_lock(&dir, "netpath state")?.then(|| Lock::held(Some(dir))),
    ))
}

/// The lock file (in `/run/netpath`) of the network namespace with `cookie` (cookies are
/// never reused while the machine is up). It is never removed: a command
/// waiting on a removed file would lock it while the next one locked a
/// new file of the same name.
pub fn lock_name(cookie: u64) -> String {
    format!("state-{cookie}.lock")
}

/// This namespace's lock file, opened to be locked (an flock, released
/// when the file is closed); `None` without bpffs unless `mount`.
fn lock_file(mount: bool) -> Result<Option<std::fs::File>> {
    if mount {
        netns::ensure_bpffs()?;
    } else if !netns::bpffs_mounted() {
        return Ok(None);
    }
    crate::sys::lock_file(&lock_name(netns::cookie()?)).map(Some)
}

pub use crate::tables::is_missing;

/// Typed handles on the pinned maps.
pub struct Maps {
    pub ifaces: HashMap<MapData, u32, IfaceInfo>,
    pub networks: HashMap<MapData, u32, NetworkInfo>,
    pub counters: PerCpuHashMap<MapData, CounterKey, Counter>,
    pub ct4: HashMap<MapData, CtKey4, CtEntry4>,
    pub subnets4: LpmTrie<MapData, u32, u32>,
    pub config: Array<MapData, Config>,
    pub leases4: HashMap<MapData, LeaseKey, Lease>,
    pub publish4: HashMap<MapData, PubKey4, PubVal4>,
    pub hostaddrs4: HashMap<MapData, u32, u32>,
    pub host: Array<MapData, HostInfo>,
    pub endpoints4: HashMap<MapData, u32, Endpoint>,
    pub filter4: LpmTrie<MapData, FilterData, FilterRule>,
    pub filter_info: Array<MapData, FilterInfo>,
    pub targets4: HashMap<MapData, TargetKey4, u32>,
    pub vlans: HashMap<MapData, VlanKey, u32>,
    pub macs: HashMap<MapData, MacKey, u32>,
    pub trusted: HashMap<MapData, TrustedKey, TrustedIface>,
    pub peers4: LpmTrie<MapData, PeerKey4, u32>,
    /// Live flows per network, as the last counting sweep pass found them.
    pub ct_networks: Array<MapData, u32>,
    /// The table's live entries and limit (`ct::fill`).
    pub ct_fill: Array<MapData, u64>,
    /// The IPv6 maps.
    pub v6: crate::net6::Maps6,
}

pub(crate) fn open_pinned(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    /// The current namespace's state and maps; an error when nothing is up.
    pub fn open_current() -> Result<(StateDir, Self)> {
        let state = StateDir::current()?;
        if !netns::bpffs_mounted() || !state.exists() {
            anyhow::bail!("nothing is up in this network namespace");
        }
        let maps = Self::open(&state)?;
        Ok((state, maps))
    }

    /// Opens the maps an earlier `up` pinned.
    pub fn open(state: &StateDir) -> Result<Self> {
        Self::open_dir(&state.maps_dir())
    }

    /// Opens the maps pinned in `dir`. A map this build has and the pins do
    /// not (state left by an older build) is created and pinned, so every
    /// command works on older state; no program is loaded.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let missing = map_names::ALL.iter().any(|n| !dir.join(n).exists());
        if !missing {
            return Self::from_source(|name| open_pinned(dir, name));
        }
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(crate::ebpf_object())
            .context("opening netpath's maps (pinned maps from an incompatible build? run `netpath down --all`)")?;
        Self::from_source(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        })
    }

    /// Wraps maps by name, from the pins or from a freshly loaded object.
    pub fn from_source(mut take: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        let layout = |name: &str| format!("{name} layout");
        Ok(Self {
            ifaces: HashMap::try_from(take(map_names::IFACES)?)
                .context(layout(map_names::IFACES))?,
            networks: HashMap::try_from(take(map_names::NETWORKS)?)
                .context(layout(map_names::NETWORKS))?,
            counters: PerCpuHashMap::try_from(take(map_names::COUNTERS)?)
                .context(layout(map_names::COUNTERS))?,
            ct4: HashMap::try_from(take(map_names::CT4)?).context(layout(map_names::CT4))?,
            subnets4: LpmTrie::try_from(take(map_names::SUBNETS4)?)
                .context(layout(map_names::SUBNETS4))?,
            config: Array::try_from(take(map_names::CONFIG)?).context(layout(map_names::CONFIG))?,
            leases4: HashMap::try_from(take(map_names::LEASES4)?)
                .context(layout(map_names::LEASES4))?,
            publish4: HashMap::try_from(take(map_names::PUBLISH4)?)
                .context(layout(map_names::PUBLISH4))?,
            hostaddrs4: HashMap::try_from(take(map_names::HOSTADDRS4)?)
                .context(layout(map_names::HOSTADDRS4))?,
            host: Array::try_from(take(map_names::HOST)?).context(layout(map_names::HOST))?,
            endpoints4: HashMap::try_from(take(map_names::ENDPOINTS4)?)
                .context(layout(map_names::ENDPOINTS4))?,
            filter4: LpmTrie::try_from(take(map_names::FILTER4)?)
                .context(layout(map_names::FILTER4))?,
            filter_info: Array::try_from(take(map_names::FILTER_INFO)?)
                .context(layout(map_names::FILTER_INFO))?,
            targets4: HashMap::try_from(take(map_names::TARGETS4)?)
                .context(layout(map_names::TARGETS4))?,
            vlans: HashMap::try_from(take(map_names::VLANS)?).context(layout(map_names::VLANS))?,
            macs: HashMap::try_from(take(map_names::MACS)?).context(layout(map_names::MACS))?,
            trusted: HashMap::try_from(take(map_names::TRUSTED)?)
                .context(layout(map_names::TRUSTED))?,
            peers4: LpmTrie::try_from(take(map_names::PEERS4)?)
                .context(layout(map_names::PEERS4))?,
            ct_networks: Array::try_from(take(map_names::CT_NETWORKS)?)
                .context(layout(map_names::CT_NETWORKS))?,
            ct_fill: Array::try_from(take(map_names::CT_FILL)?)
                .context(layout(map_names::CT_FILL))?,
            v6: crate::net6::Maps6::from_source(&mut take)?,
        })
    }

    /// The shared configuration, written with defaults on first use; a
    /// timeout class a newer build added (zero in a table an older build
    /// wrote) gets its default.
    pub fn config(&mut self) -> Result<Config> {
        let mut c = self.config.get(&0, 0).context("reading NP_CONFIG")?;
        if c.is_unset() {
            let d = Config::defaults();
            self.set_config(&d)?;
            return Ok(d);
        }
        let d = Config::defaults();
        let mut filled = false;
        for (t, default) in c.timeouts_s.iter_mut().zip(d.timeouts_s) {
            if *t == 0 && default != 0 {
                *t = default;
                filled = true;
            }
        }
        if filled {
            self.set_config(&c)?;
        }
        Ok(c)
    }

    pub fn set_config(&mut self, c: &Config) -> Result<()> {
        self.config.set(0, c, 0).context("writing NP_CONFIG")
    }

    /// Records `subnet` as network `net_id` for the datapath's source lookup.
    pub fn add_subnet(&mut self, subnet: Ipv4Net, net_id: u32) -> Result<()> {
        let key = Key::new(
            u32::from(subnet.prefix_len()),
            u32::from_ne_bytes(subnet.network().octets()),
        );
        self.subnets4
            .insert(&key, net_id, 0)
            .context("recording the subnet")
    }

    pub fn remove_subnet(&mut self, subnet: Ipv4Net) -> Result<()> {
        let key = Key::new(
            u32::from(subnet.prefix_len()),
            u32::from_ne_bytes(subnet.network().octets()),
        );
        match self.subnets4.remove(&key) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e).context("removing the subnet"),
        }
    }

    /// Every published port.
    pub fn published(&self) -> Result<Vec<(PubKey4, PubVal4)>> {
        self.publish4
            .iter()
            .map(|r| r.context("reading NP_PUBLISH4"))
            .collect()
    }

    /// Every address `connect` handed out.
    pub fn leases(&self) -> Result<Vec<(LeaseKey, Lease)>> {
        self.leases4
            .iter()
            .map(|r| r.context("reading NP_LEASES4"))
            .collect()
    }

    /// The network recorded for bridge `name`.
    pub fn network_by_bridge(&self, name: &str) -> Result<Option<(u32, NetworkInfo)>> {
        Ok(self
            .networks()?
            .into_iter()
            .find(|(_, i)| crate::codec::ifname_from_bytes(&i.bridge_name) == name))
    }

    /// Every conntrack entry (both directions; one deleted while we walk
    /// is skipped).
    pub fn ct_entries(&self) -> Result<Vec<(CtKey4, CtEntry4)>> {
        self.ct4.entries().context("reading NP_CT4")
    }

    /// How many entries the conntrack table holds at most (two per flow).
    pub fn ct_capacity(dir: &Path) -> Result<u32> {
        let path = dir.join(map_names::CT4);
        Ok(aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .max_entries())
    }

    /// Sets the limit past which the datapath refuses new flows, for a
    /// table of `capacity` entries (`ct::fill`).
    pub fn set_ct_limit(&mut self, capacity: u32) -> Result<()> {
        crate::tables::write_ct_limit(&mut self.ct_fill, capacity)
            .context("writing the conntrack limit")
    }

    /// The datapath's live entry count and limit (`ct::fill`).
    pub fn ct_fill(&self) -> Result<(i64, u64)> {
        crate::tables::read_ct_fill(&self.ct_fill, map_names::CT_FILL)
    }

    /// Removes one conntrack entry; a missing one is fine.
    pub fn remove_ct(&mut self, key: &CtKey4) -> Result<()> {
        match self.ct4.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e).context("removing a conntrack entry"),
        }
    }

    pub fn networks(&self) -> Result<BTreeMap<u32, NetworkInfo>> {
        Ok(crate::tables::dump(&self.networks)
            .context("reading NP_NETWORKS")?
            .into_iter()
            .collect())
    }

    pub fn ifaces(&self) -> Result<BTreeMap<u32, IfaceInfo>> {
        Ok(crate::tables::dump(&self.ifaces)
            .context("reading NP_IFACES")?
            .into_iter()
            .collect())
    }

    /// Sum over CPUs of one counter; zero when it was never hit.
    pub fn counter(&self, key: CounterKey) -> Result<Counter> {
        match self.counters.get(&key, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().fold(Counter::default(), |a, c| a.add(*c))),
            Err(e) if is_missing(&e) => Ok(Counter::default()),
            Err(e) => Err(e).context("reading NP_COUNTERS"),
        }
    }

    /// Adds `packets` to one counter (on the first CPU's slot: the
    /// datapath only ever adds to its own CPU's, and readers sum them).
    pub fn add_to_counter(&mut self, scope: u16, id: u32, kind: u16, packets: u64) -> Result<()> {
        let key = CounterKey { id, scope, kind };
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let mut values: Vec<Counter> = match self.counters.get(&key, 0) {
            Ok(v) => v.iter().copied().collect(),
            Err(e) if is_missing(&e) => vec![Counter::default(); cpus],
            Err(e) => return Err(e).context("reading NP_COUNTERS"),
        };
        if let Some(first) = values.first_mut() {
            first.packets += packets;
        }
        let values = aya::maps::PerCpuValues::try_from(values).context("per-CPU values")?;
        self.counters
            .insert(key, values, 0)
            .context("writing NP_COUNTERS")
    }

    /// One counter as [`Traffic`].
    pub fn traffic(&self, scope: u16, id: u32, kind: u16) -> Result<Traffic> {
        Ok(self.counter(CounterKey { id, scope, kind })?.into())
    }

    /// A conntrack counter (`counter_scope::CONNTRACK`, `kind` one of
    /// `counter_kind::CT_*`): its events, every CPU's together.
    pub fn ct_counter(&self, kind: u16) -> Result<u64> {
        Ok(self
            .traffic(netpath_common::counter_scope::CONNTRACK, 0, kind)?
            .packets)
    }

    /// Removes every counter of `scope` with id `id`.
    pub fn remove_counters(&mut self, scope: u16, id: u32) -> Result<()> {
        let keys: Vec<CounterKey> = self
            .counters
            .keys()
            .filter_map(std::result::Result::ok)
            .filter(|k| k.scope == scope && k.id == id)
            .collect();
        for k in keys {
            match self.counters.remove(&k) {
                Ok(()) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(e).context("removing a counter"),
            }
        }
        Ok(())
    }
}
