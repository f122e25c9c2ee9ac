//! What the conntrack table costs in kernel memory, for `status` and the
//! benchmark: the kernel's own figure for the map (`memlock` in the map
//! fd's `/proc/self/fdinfo`, which is `htab_map_mem_usage()` since Linux
//! 6.4), or, where a kernel does not report it, the same sum from the
//! map's definition. Next to it, nf_conntrack's cost per flow, read from
//! the slab allocator (read-only).
//!
//! `NP_CT4` is a preallocated LRU hash: every entry of its capacity is
//! allocated when the map is created, full or empty, as one
//! `struct htab_elem` (48 bytes on 64-bit: the bucket list node, the LRU
//! list node and the hash) plus the key and the value rounded up to 8
//! bytes; and the bucket array, one 16-byte `struct bucket` (list head and
//! lock) per power of two at or above the capacity. A flow takes two
//! entries (its original and reply tuples).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// `sizeof(struct htab_elem)` on 64-bit kernels, before the key.
pub const HTAB_ELEM_HEADER: u64 = 48;
/// `sizeof(struct bucket)`: a `hlist_nulls_head` and a spinlock, padded.
pub const HTAB_BUCKET: u64 = 16;

/// The conntrack table's memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CtMemory {
    /// Kernel memory of the whole table (allocated at creation: the same
    /// empty or full).
    pub bytes: u64,
    /// `bytes` over the entries it holds at most, and over the flows
    /// (two entries each).
    pub bytes_per_entry: f64,
    pub bytes_per_flow: f64,
    /// "kernel" (the map's memlock, as the kernel reports it) or "layout"
    /// (computed from the map's definition, see [`lru_htab_bytes`]).
    pub source: String,
}

impl CtMemory {
    fn new(bytes: u64, capacity: u32, source: &'static str) -> Self {
        let per_entry = bytes as f64 / f64::from(capacity.max(1));
        Self {
            bytes,
            bytes_per_entry: per_entry,
            bytes_per_flow: per_entry * 2.0,
            source: source.to_owned(),
        }
    }
}

const fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// A preallocated LRU hash map's memory as the kernel allocates it (the
/// elements and the buckets; the map's own struct and per-CPU LRU lists,
/// a few KiB, are left out).
pub fn lru_htab_bytes(max_entries: u32, key_size: u32, value_size: u32) -> u64 {
    let elem = HTAB_ELEM_HEADER + round8(u64::from(key_size)) + round8(u64::from(value_size));
    let buckets = u64::from(max_entries.max(1)).next_power_of_two();
    elem * u64::from(max_entries) + HTAB_BUCKET * buckets
}

/// The `memlock:` line of a map fd's fdinfo.
pub fn memlock_from_fdinfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The memory of the pinned conntrack table at `path`.
pub fn of_pinned(path: &Path) -> Result<CtMemory> {
    let info = aya::maps::MapInfo::from_pin(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let map = aya::maps::MapData::from_pin(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        map.fd().as_fd().as_raw_fd()
    ))
    .unwrap_or_default();
    Ok(match memlock_from_fdinfo(&fdinfo) {
        // Kernels before 6.4 report a page-rounded guess from the
        // definition alone; ours is as good then.
        Some(bytes) if bytes > 0 => CtMemory::new(bytes, info.max_entries(), "kernel"),
        _ => CtMemory::new(
            lru_htab_bytes(info.max_entries(), info.key_size(), info.value_size()),
            info.max_entries(),
            "layout",
        ),
    })
}

/// nf_conntrack's memory per flow: one `struct nf_conn` (both directions
/// in one object) from its slab cache. Returns (object size, slot size
/// with the slab's alignment); the hash buckets (8 bytes each, sized by
/// `nf_conntrack_buckets`, not by the flows) and the NAT and accounting
/// extensions (allocated apart) are not counted.
pub fn nf_conntrack_object() -> Option<(u64, u64)> {
    let object = std::fs::read_to_string("/sys/kernel/slab/nf_conntrack/object_size")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let slot = std::fs::read_to_string("/proc/slabinfo")
        .ok()
        .and_then(|s| slabinfo_objsize(&s, "nf_conntrack"));
    match (object, slot) {
        (Some(o), Some(s)) => Some((o, s)),
        (Some(o), None) => Some((o, o)),
        (None, Some(s)) => Some((s, s)),
        (None, None) => None,
    }
}

/// The `<objsize>` column of `cache` in /proc/slabinfo.
pub fn slabinfo_objsize(text: &str, cache: &str) -> Option<u64> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&cache))
        .and_then(|f| f.get(3)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_the_conntrack_table() {
        // CtKey4 is 16 bytes, CtEntry4 64: 128 bytes an element; the
        // default 262,144 entries are a power of two already.
        let key = std::mem::size_of::<netpath_common::ct::CtKey4>() as u32;
        let value = std::mem::size_of::<netpath_common::ct::CtEntry4>() as u32;
        assert_eq!((key, value), (16, 64));
        assert_eq!(lru_htab_bytes(262_144, key, value), 262_144 * (128 + 16));
        // Not a power of two: the buckets round up.
        assert_eq!(lru_htab_bytes(3, 13, 60), 3 * (48 + 16 + 64) + 4 * 16);
        let m = CtMemory::new(262_144 * 144, 262_144, "layout");
        assert_eq!((m.bytes_per_entry, m.bytes_per_flow), (144.0, 288.0));
    }

    #[test]
    fn reads_memlock_and_slabinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmap_type:\t9\nkey_size:\t16\nmemlock:\t37748736\nmap_id:\t12\n";
        assert_eq!(memlock_from_fdinfo(fdinfo), Some(37_748_736));
        assert_eq!(memlock_from_fdinfo("pos:\t0\n"), None);
        let slab = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> <objperslab>\nnf_conntrack_expect 0 0 208 19 1 : tunables 0 0 0\nnf_conntrack          80    160    256   16    1 : tunables    0    0    0 : slabdata     10     10      0\n";
        assert_eq!(slabinfo_objsize(slab, "nf_conntrack"), Some(256));
        assert_eq!(slabinfo_objsize(slab, "kmalloc-64"), None);
    }
}
