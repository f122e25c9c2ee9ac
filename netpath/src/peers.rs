//! Peer CIDRs of a network (`up --no-masquerade-to CIDR`): destinations its
//! containers reach with their own addresses (no masquerade; the flows are
//! tracked so answers come back), and sources that may reach its
//! containers at their own addresses in every gateway mode. On a
//! Kubernetes node these are the cluster's pod CIDR: pods talk to pods on
//! other nodes unmasqueraded, routed by the cluster's own means.
//! Kept in `NP_PEERS4`, an LPM trie keyed by network id and prefix.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, lpm_trie::Key, lpm_trie::LpmTrie};
use ipnet::Ipv4Net;
use netpath_common::PeerKey4;

/// At most this many peer CIDRs per network.
pub const MAX_PER_NETWORK: usize = 64;

/// Parses one `--no-masquerade-to` value: an IPv4 CIDR (or one address),
/// written canonically. 0.0.0.0/0 is refused: it would open every
/// container to the whole world (that is `--gateway-mode nat-unprotected
/// --masquerade=false`, said explicitly).
pub fn parse(s: &str) -> Result<Ipv4Net> {
    let bad = || {
        anyhow::anyhow!(
            "invalid --no-masquerade-to {s:?}: expected an IPv4 CIDR such as 10.244.0.0/16"
        )
    };
    let addr = s.split('/').next().unwrap_or_default();
    if addr.split('.').any(|o| o.len() > 1 && o.starts_with('0')) {
        return Err(bad());
    }
    let net = match s.parse::<std::net::Ipv4Addr>() {
        Ok(a) => Ipv4Net::from(a),
        Err(_) => s.parse::<Ipv4Net>().map_err(|_| bad())?,
    };
    if net.prefix_len() == 0 {
        bail!(
            "invalid --no-masquerade-to {s}: every address; use --masquerade=false and a gateway mode instead"
        );
    }
    Ok(net)
}

/// Checks a network's list: canonical CIDRs (no host bits), no duplicates,
/// not too many. A CIDR may hold the network's own subnet (a cluster's pod
/// CIDR holds every node's): the own subnet never leaves through an uplink,
/// and uplinks drop it as a source before any of this.
pub fn validate(cidrs: &[Ipv4Net]) -> Result<()> {
    if cidrs.len() > MAX_PER_NETWORK {
        bail!(
            "{} --no-masquerade-to CIDRs: at most {MAX_PER_NETWORK} per network",
            cidrs.len()
        );
    }
    let mut seen = BTreeSet::new();
    for c in cidrs {
        if c.trunc() != *c {
            bail!(
                "--no-masquerade-to {c}: host bits set (did you mean {}?)",
                c.trunc()
            );
        }
        if !seen.insert(*c) {
            bail!("--no-masquerade-to {c} is given twice");
        }
    }
    Ok(())
}

fn key(net_id: u32, c: &Ipv4Net) -> Key<PeerKey4> {
    Key::new(
        32 + u32::from(c.prefix_len()),
        PeerKey4 {
            net_id,
            addr_be: u32::from_ne_bytes(c.network().octets()),
        },
    )
}

/// Every (network, CIDR) in the trie.
pub fn all(trie: &LpmTrie<MapData, PeerKey4, u32>) -> Result<Vec<(u32, Ipv4Net)>> {
    let mut out = Vec::new();
    for k in trie.keys() {
        let k = k.context("reading NP_PEERS4")?;
        let data = k.data();
        let len = k.prefix_len().saturating_sub(32).min(32) as u8;
        let addr = std::net::Ipv4Addr::from(data.addr_be.to_ne_bytes());
        out.push((
            data.net_id,
            Ipv4Net::new(addr, len).context("a stored prefix")?,
        ));
    }
    out.sort();
    Ok(out)
}

/// Network `net_id`'s peer CIDRs, sorted.
pub fn of(all: &[(u32, Ipv4Net)], net_id: u32) -> Vec<Ipv4Net> {
    all.iter()
        .filter(|(id, _)| *id == net_id)
        .map(|(_, c)| *c)
        .collect()
}

/// Makes network `net_id`'s peer CIDRs `cidrs`, leaving other networks'
/// alone.
pub fn set(
    trie: &mut LpmTrie<MapData, PeerKey4, u32>,
    net_id: u32,
    cidrs: &[Ipv4Net],
) -> Result<()> {
    let want: BTreeSet<Ipv4Net> = cidrs.iter().copied().collect();
    let have: BTreeSet<Ipv4Net> = of(&all(trie)?, net_id).into_iter().collect();
    for c in have.difference(&want) {
        trie.remove(&key(net_id, c))
            .with_context(|| format!("forgetting peer CIDR {c}"))?;
    }
    for c in want.difference(&have) {
        trie.insert(&key(net_id, c), 1, 0)
            .with_context(|| format!("recording peer CIDR {c}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn values_parse_strictly() {
        assert_eq!(parse("10.244.0.0/16").unwrap(), n("10.244.0.0/16"));
        assert_eq!(parse("192.0.2.7").unwrap(), n("192.0.2.7/32"));
        for bad in [
            "10.244.0.0/33",
            "010.1.0.0/16",
            "x",
            "0.0.0.0/0",
            "10.0.0.0/-1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_are_checked() {
        assert!(validate(&[n("10.244.0.0/16"), n("10.96.0.0/12")]).is_ok());
        let err = |c: &[Ipv4Net]| validate(c).unwrap_err().to_string();
        assert!(err(&[n("10.244.0.1/24")]).contains("host bits"));
        assert!(err(&[n("10.9.0.0/16"), n("10.9.0.0/16")]).contains("twice"));
        let many: Vec<Ipv4Net> = (0..65).map(|i| n(&format!("10.{i}.0.0/16"))).collect();
        assert!(err(&many).contains("at most 64"));
    }

    #[test]
    fn keys_match_the_network_then_the_prefix() {
        let k = key(7, &n("10.244.0.0/16"));
        assert_eq!(k.prefix_len(), 48);
        assert_eq!(k.data().net_id, 7);
        assert_eq!(k.data().addr_be.to_ne_bytes(), [10, 244, 0, 0]);
    }
}
