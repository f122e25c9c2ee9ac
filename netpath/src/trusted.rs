//! Trusted host interfaces (Docker 28's
//! `com.docker.network.bridge.trusted_host_interfaces`): interfaces whose
//! traffic may reach a network's published container ports at the
//! container's own address in gateway mode `nat` (where direct routing is
//! otherwise dropped). Kept in `NP_TRUSTED` by interface name, keyed by
//! the current ifindex; a name that names no interface yet is kept under
//! a placeholder key and takes effect when the interface appears (the
//! daemon re-resolves on every link change).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use netpath_common::{TrustedIface, TrustedKey};

use crate::{codec, spec, tables::Table};

/// At most this many trusted interfaces per network.
pub const MAX_PER_NETWORK: usize = 32;

/// Checks a network's list: interface names, no duplicates, not too many.
pub fn validate(names: &[String]) -> Result<()> {
    if names.len() > MAX_PER_NETWORK {
        bail!(
            "{} trusted host interfaces: at most {MAX_PER_NETWORK} per network",
            names.len()
        );
    }
    for (i, n) in names.iter().enumerate() {
        spec::validate_ifname(n)
            .with_context(|| format!("invalid trusted host interface {n:?}"))?;
        if names[..i].contains(n) {
            bail!("trusted host interface {n} is given twice");
        }
    }
    Ok(())
}

/// The entries of network `net_id` for `names`, each under its current
/// ifindex (`index_of`: name -> ifindex) or a placeholder.
pub fn want(
    net_id: u32,
    names: &[String],
    index_of: &BTreeMap<String, u32>,
) -> BTreeMap<TrustedKey, TrustedIface> {
    names
        .iter()
        .enumerate()
        .map(|(slot, n)| {
            let ifindex = index_of
                .get(n)
                .copied()
                .unwrap_or(TrustedKey::ABSENT | slot as u32);
            (
                TrustedKey { net_id, ifindex },
                TrustedIface {
                    name: codec::ifname_to_bytes(n),
                },
            )
        })
        .collect()
}

/// Network `net_id`'s trusted interface names, sorted.
pub fn names_of(entries: &[(TrustedKey, TrustedIface)], net_id: u32) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter(|(k, _)| k.net_id == net_id)
        .map(|(_, v)| codec::ifname_from_bytes(&v.name))
        .collect();
    out.sort();
    out
}

/// Every network's entries re-keyed by the interfaces as they are now.
pub fn rekeyed(
    entries: &[(TrustedKey, TrustedIface)],
    index_of: &BTreeMap<String, u32>,
) -> BTreeMap<TrustedKey, TrustedIface> {
    let nets: std::collections::BTreeSet<u32> = entries.iter().map(|(k, _)| k.net_id).collect();
    nets.into_iter()
        .flat_map(|net_id| want(net_id, &names_of(entries, net_id), index_of))
        .collect()
}

/// Makes network `net_id`'s entries those of `names`, leaving other
/// networks' alone.
pub fn set(
    table: &mut impl Table<TrustedKey, TrustedIface>,
    net_id: u32,
    names: &[String],
    index_of: &BTreeMap<String, u32>,
) -> Result<()> {
    let wanted = want(net_id, names, index_of);
    for (k, _) in table.entries()? {
        if k.net_id == net_id && !wanted.contains_key(&k) {
            table
                .delete(&k)
                .context("forgetting a trusted host interface")?;
        }
    }
    for (k, v) in &wanted {
        if table.get(k)?.as_ref() != Some(v) {
            table
                .put(k, v)
                .context("recording a trusted host interface")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(n, i)| ((*n).to_owned(), *i)).collect()
    }

    #[test]
    fn names_follow_their_interfaces_and_absent_ones_wait() {
        let names = vec!["vpn0".to_owned(), "eth1".to_owned()];
        let mut t: BTreeMap<TrustedKey, TrustedIface> = BTreeMap::new();
        set(&mut t, 2, &names, &idx(&[("eth1", 7)])).unwrap();
        set(&mut t, 3, &["eth1".to_owned()], &idx(&[("eth1", 7)])).unwrap();
        let keys: Vec<(u32, u32)> = t.keys().map(|k| (k.net_id, k.ifindex)).collect();
        assert_eq!(keys, vec![(2, 7), (2, TrustedKey::ABSENT), (3, 7)]);
        let entries: Vec<_> = t.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(names_of(&entries, 2), vec!["eth1", "vpn0"]);
        // vpn0 appears (ifindex 9), eth1 is re-created (ifindex 11).
        let now = rekeyed(&entries, &idx(&[("vpn0", 9), ("eth1", 11)]));
        let keys: Vec<(u32, u32)> = now.keys().map(|k| (k.net_id, k.ifindex)).collect();
        assert_eq!(keys, vec![(2, 9), (2, 11), (3, 11)]);
        // `up` again with one name: the other goes, network 3 stays.
        set(&mut t, 2, &["eth1".to_owned()], &idx(&[("eth1", 7)])).unwrap();
        let entries: Vec<_> = t.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(names_of(&entries, 2), vec!["eth1"]);
        assert_eq!(names_of(&entries, 3), vec!["eth1"]);
        set(&mut t, 2, &[], &BTreeMap::new()).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(validate(&["eth0".to_owned(), "eth0".to_owned()]).is_err());
        assert!(validate(&["a/b".to_owned()]).is_err());
        assert!(validate(&["x".repeat(16)]).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("e{i}")).collect();
        assert!(validate(&many).is_err());
        assert!(validate(&["eth0".to_owned(), "vpn0".to_owned()]).is_ok());
    }
}
