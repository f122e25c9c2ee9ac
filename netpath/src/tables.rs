//! The seam between netpath's logic and its pinned maps: [`Table`] is a
//! key-value table, implemented by the real BPF hash maps and by a
//! `BTreeMap` (the in-memory fake host tests use), and [`sync`] makes one
//! equal to what is wanted. Code that decides what a table should hold
//! (reconcile, publish, down) works on `impl Table`, so its decisions are
//! unit-tested without root.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData, MapError};

/// Whether a map error means "no such key". Deleting a key someone else
/// (the datapath, the daemon's sweeper) removed meanwhile reports ENOENT
/// from the syscall rather than `KeyNotFound`.
pub fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}

/// A key-value table.
pub trait Table<K, V> {
    /// Every entry (one removed while it is read is skipped).
    fn entries(&self) -> Result<Vec<(K, V)>>;
    fn get(&self, k: &K) -> Result<Option<V>>;
    /// Inserts or replaces.
    fn put(&mut self, k: &K, v: &V) -> Result<()>;
    /// Removes `k`; a key that is not there is not an error.
    fn delete(&mut self, k: &K) -> Result<()>;
}

/// Entries asked of the kernel per `BPF_MAP_LOOKUP_BATCH`.
const BATCH: u32 = 1024;

/// Every entry of `map`, a few system calls per thousand entries
/// (`BPF_MAP_LOOKUP_BATCH`) where walking it costs two per entry (next
/// key, then lookup): a reconcile reads the interfaces, networks, host
/// addresses and MACs whole, and with a hundred networks the walks were
/// most of a `netpath up`. A kernel without batch lookups is walked.
pub fn dump<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    let (ks, vs) = (size_of::<K>(), size_of::<V>());
    let fd = map.map().fd().as_fd();
    let room = BATCH as usize;
    let (mut keys, mut values) = (vec![0u8; ks * room], vec![0u8; vs * room]);
    // Positions are a hash map's bucket index (u32); room for a key too.
    let (mut at, mut next) = (vec![0u8; ks + 8], vec![0u8; ks + 8]);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let r = crate::sys::lookup_batch(
            fd,
            (!first).then_some(at.as_slice()),
            &mut next,
            &mut keys,
            &mut values,
            BATCH,
        );
        let (n, end) = match r {
            Ok(r) => r,
            Err(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
                    ) =>
            {
                // 524: ENOTSUPP, the kernel's own "not supported".
                return walk(map);
            }
            Err(e) => return Err(e).context("reading a pinned map (batch lookup)"),
        };
        for i in 0..(n as usize).min(room) {
            // SAFETY: the buffers hold `BATCH` keys and values of exactly
            // these sizes; `Pod` types take any bytes; the reads are
            // unaligned-safe.
            let kv = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * ks).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * vs).cast::<V>()),
                )
            };
            out.push(kv);
        }
        if end {
            return Ok(out);
        }
        std::mem::swap(&mut at, &mut next);
        first = false;
    }
}

/// [`dump`] by walking: next key, then lookup, per entry.
fn walk<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for r in map.iter() {
        match r {
            Ok(kv) => out.push(kv),
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e).context("reading a pinned map"),
        }
    }
    Ok(out)
}

impl<K: aya::Pod, V: aya::Pod> Table<K, V> for HashMap<MapData, K, V> {
    fn entries(&self) -> Result<Vec<(K, V)>> {
        dump(self)
    }

    fn get(&self, k: &K) -> Result<Option<V>> {
        match HashMap::get(self, k, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e).context("reading a pinned map"),
        }
    }

    fn put(&mut self, k: &K, v: &V) -> Result<()> {
        HashMap::insert(self, k, v, 0).context("writing a pinned map")
    }

    fn delete(&mut self, k: &K) -> Result<()> {
        match HashMap::remove(self, k) {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(e).context("removing from a pinned map"),
        }
    }
}

/// The fake.
impl<K: Ord + Clone, V: Clone> Table<K, V> for BTreeMap<K, V> {
    fn entries(&self) -> Result<Vec<(K, V)>> {
        Ok(self.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn get(&self, k: &K) -> Result<Option<V>> {
        Ok(BTreeMap::get(self, k).cloned())
    }

    fn put(&mut self, k: &K, v: &V) -> Result<()> {
        self.insert(k.clone(), v.clone());
        Ok(())
    }

    fn delete(&mut self, k: &K) -> Result<()> {
        self.remove(k);
        Ok(())
    }
}

/// What [`sync`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub removed: usize,
    pub written: usize,
}

/// Makes `table` hold exactly `want`: entries not wanted go, entries
/// missing or different are written; equal ones are left alone (no write
/// the datapath could race with).
pub fn sync<K: Ord + Clone, V: PartialEq>(
    table: &mut impl Table<K, V>,
    want: &BTreeMap<K, V>,
) -> Result<Synced> {
    let have: BTreeMap<K, V> = table.entries()?.into_iter().collect();
    let mut out = Synced::default();
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        table.delete(k)?;
        out.removed += 1;
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            table.put(k, v)?;
            out.written += 1;
        }
    }
    Ok(out)
}

/// Sets the limit past which the datapath refuses new flows in a table of
/// `capacity` entries (`ct::fill`), in its fill array `fill`; a limit
/// already there is not written again.
pub fn write_ct_limit(fill: &mut aya::maps::Array<MapData, u64>, capacity: u32) -> Result<()> {
    use netpath_common::ct::fill;
    let limit = u64::from(fill::limit(capacity));
    if fill.get(&fill::LIMIT, 0).ok() != Some(limit) {
        fill.set(fill::LIMIT, limit, 0)?;
    }
    Ok(())
}

/// A conntrack table's live entry count and limit, from its fill array
/// (`name` for errors). Races can take the count below zero for a moment.
pub fn read_ct_fill(fill: &aya::maps::Array<MapData, u64>, name: &str) -> Result<(i64, u64)> {
    use netpath_common::ct::fill;
    let live = fill
        .get(&fill::LIVE, 0)
        .with_context(|| format!("reading {name}"))?;
    let limit = fill
        .get(&fill::LIMIT, 0)
        .with_context(|| format!("reading {name}"))?;
    Ok((live as i64, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_removes_writes_and_leaves_equal_entries() {
        let mut t: BTreeMap<u32, u32> = BTreeMap::from([(1, 10), (2, 20), (3, 30)]);
        let want = BTreeMap::from([(2, 20), (3, 31), (4, 40)]);
        let s = sync(&mut t, &want).unwrap();
        assert_eq!(t, want);
        assert_eq!(
            s,
            Synced {
                removed: 1,
                written: 2
            }
        );
        assert_eq!(sync(&mut t, &want).unwrap(), Synced::default());
        t.delete(&99).unwrap();
        assert_eq!(Table::get(&t, &4).unwrap(), Some(40));
    }
}
