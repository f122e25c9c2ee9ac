//! Pinned state, per network namespace: `/sys/fs/bpf/netpath/<netns cookie>/`
//! holds `maps/` (the datapath's maps, pinned by name) and `links/` (one TCX
//! link per interface and direction). The maps are the only record of the
//! networks: a later `netpath` call, or a newer build, reads them back.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap};
use netpath_common::{Counter, CounterKey, IfaceInfo, NetworkInfo, map_names};

use crate::netns;

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

    /// The program attached in this direction.
    pub const fn program(self) -> &'static str {
        match self {
            Self::Ingress => "netpath_ingress",
            Self::Egress => "netpath_egress",
        }
    }
}

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

/// An exclusive lock over netpath's state on this machine, held while one
/// command reads or changes it (an flock on the base directory on bpffs).
pub struct Lock(#[allow(dead_code)] std::fs::File);

/// Takes the lock. `mount`: mount bpffs if needed (commands that create
/// state); otherwise, without bpffs there is no state and no lock is needed.
pub fn lock(mount: bool) -> Result<Option<Lock>> {
    if mount {
        netns::ensure_bpffs()?;
    } else if !netns::bpffs_mounted() {
        return Ok(None);
    }
    let base = StateDir::base();
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let dir = std::fs::File::open(&base).with_context(|| format!("opening {}", base.display()))?;
    // SAFETY: flock on a valid fd; released when the file is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking netpath state");
    }
    Ok(Some(Lock(dir)))
}

/// Typed handles on the pinned maps.
pub struct Maps {
    pub ifaces: HashMap<MapData, u32, IfaceInfo>,
    pub networks: HashMap<MapData, u32, NetworkInfo>,
    pub counters: PerCpuHashMap<MapData, CounterKey, Counter>,
}

fn open_pinned(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    /// Opens the maps an earlier `up` pinned.
    pub fn open(state: &StateDir) -> Result<Self> {
        let dir = state.maps_dir();
        Self::from_maps(
            open_pinned(&dir, map_names::IFACES)?,
            open_pinned(&dir, map_names::NETWORKS)?,
            open_pinned(&dir, map_names::COUNTERS)?,
        )
    }

    /// Wraps the maps taken from a freshly loaded object.
    pub fn from_maps(ifaces: Map, networks: Map, counters: Map) -> Result<Self> {
        Ok(Self {
            ifaces: HashMap::try_from(ifaces).context("NP_IFACES layout")?,
            networks: HashMap::try_from(networks).context("NP_NETWORKS layout")?,
            counters: PerCpuHashMap::try_from(counters).context("NP_COUNTERS layout")?,
        })
    }

    pub fn networks(&self) -> Result<BTreeMap<u32, NetworkInfo>> {
        self.networks
            .iter()
            .map(|r| r.context("reading NP_NETWORKS"))
            .collect()
    }

    pub fn ifaces(&self) -> Result<BTreeMap<u32, IfaceInfo>> {
        self.ifaces
            .iter()
            .map(|r| r.context("reading NP_IFACES"))
            .collect()
    }

    /// Sum over CPUs of one counter; zero when it was never hit.
    pub fn counter(&self, key: CounterKey) -> Result<Counter> {
        match self.counters.get(&key, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().fold(Counter::default(), |a, c| a.add(*c))),
            Err(MapError::KeyNotFound) => Ok(Counter::default()),
            Err(e) => Err(e).context("reading NP_COUNTERS"),
        }
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
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing a counter"),
            }
        }
        Ok(())
    }
}
