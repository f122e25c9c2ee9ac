//! What the plugin's ADD made for one container attachment, kept where it
//! outlives the container's namespace: one JSON file per (container id,
//! interface) under `/run/netpath/cni/<netns cookie>/<network>/`, the netns
//! cookie being the host namespace's (netpath's state is per namespace,
//! and a cookie is never reused while the machine is up). /run is a tmpfs:
//! after a reboot neither the veths, the maps nor the records exist.
//! DEL reads it to know which address's lease and mappings to remove, and
//! removes it; CHECK compares against it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

const ROOT: &str = crate::sys::CNI_DIR;

/// One attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The bridge of the netpath network.
    pub bridge: String,
    pub addr: Ipv4Addr,
    /// The host end of the veth; netpath's to delete unless chained.
    pub host_ifname: String,
    pub chained: bool,
}

/// The record file of one attachment.
pub fn path(host_cookie: u64, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    // Network names are the runtime's; keep them one path component.
    let network: String = network
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    crate::sys::cni_records_dir(host_cookie)
        .join(network)
        .join(container_id)
        .join(format!("{ifname}.json"))
}

pub fn load(p: &Path) -> Result<Option<Record>> {
    match std::fs::read(p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Written under a scratch name and renamed into place, so a reader never
/// sees half a record.
pub fn save(p: &Path, r: &Record) -> Result<()> {
    let dir = p.parent().context("a record has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(r)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))
}

/// Removes the record (and its directories once empty).
pub fn remove(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
    }
    let mut dir = p.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(ROOT) && *d != Path::new(ROOT)) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_paths_stay_under_the_root() {
        let p = path(42, "a/b", "abc", "eth0");
        assert_eq!(p, PathBuf::from("/run/netpath/cni/42/a_b/abc/eth0.json"));
        // Ids and interface names may both hold '-': no two attachments
        // share a record.
        assert_ne!(path(1, "n", "v-w", "eth0"), path(1, "n", "v", "w-eth0"));
        let r = Record {
            bridge: "cni0".into(),
            addr: Ipv4Addr::new(10, 88, 0, 2),
            host_ifname: "np0123456789".into(),
            chained: false,
        };
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
