//! The object and its programs: the build's identity and where its
//! programs are pinned, which a first load verifies, which wait until
//! something needs them, and in what order.
//!
//! A namespace's first `up` spends most of its time in the verifier (see
//! [`crate::loader`]). A container port's two programs are nearly half of
//! it (a port's ingress alone 100-115 ms here), and a new network has no
//! container yet: so the first load verifies the uplink's, the bridge's,
//! the sweeper's and the socket hooks' programs, and a port's are verified
//! the first time a port needs them ([`DEFERRED`]), by the daemon right
//! after it starts, or by whichever command attaches a port first.

use anyhow::{Context as _, Result};
use aya::{
    EbpfLoader,
    programs::{SchedClassifier, cgroup_sock_addr::CgroupSockAddrAttachType},
};
use netpath_common::IfaceRole;

use crate::state::{Dir, SWEEP_PROGRAM, StateDir, TC_PROGRAMS, tc_program};

/// The classifiers' names, the sweeper's included.
pub fn tc_names() -> impl Iterator<Item = &'static str> {
    TC_PROGRAMS
        .iter()
        .map(|(r, d)| tc_program(*r, *d))
        .chain([SWEEP_PROGRAM])
}

/// A container port's programs: verified when first needed, in this order
/// (the costlier first).
pub const DEFERRED: [&str; 2] = [
    tc_program(IfaceRole::Port, Dir::Ingress),
    tc_program(IfaceRole::Port, Dir::Egress),
];

/// Whether `name` is one of [`DEFERRED`].
pub fn deferred(name: &str) -> bool {
    DEFERRED.contains(&name)
}

/// The programs a first load verifies and pins (every one but
/// [`DEFERRED`]), in the order `loader::verify` starts them: the costliest
/// first, so that the CPUs finish together rather than one waiting on a
/// long program started last. Measured (`-v`, a quiet machine): the
/// uplink's egress and ingress about 60 ms each, the sweeper 50, the
/// bridge 23, the socket hooks 16 together.
pub fn first_load() -> Vec<&'static str> {
    let first = [
        tc_program(IfaceRole::Uplink, Dir::Egress),
        tc_program(IfaceRole::Uplink, Dir::Ingress),
        SWEEP_PROGRAM,
    ];
    let rest = tc_names().filter(|n| !first.contains(n) && !deferred(n));
    first
        .into_iter()
        .chain(rest)
        .chain(SockHook::ALL.iter().map(|h| h.program()))
        .collect()
}

/// The cgroup socket hooks for host processes reaching published ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockHook {
    Connect4,
    Sendmsg4,
    Recvmsg4,
    Getpeername4,
    Connect6,
    Sendmsg6,
    Recvmsg6,
    Getpeername6,
}

impl SockHook {
    pub const ALL: [Self; 8] = [
        Self::Connect4,
        Self::Sendmsg4,
        Self::Recvmsg4,
        Self::Getpeername4,
        Self::Connect6,
        Self::Sendmsg6,
        Self::Recvmsg6,
        Self::Getpeername6,
    ];

    pub const fn program(self) -> &'static str {
        match self {
            Self::Connect4 => "netpath_connect4",
            Self::Sendmsg4 => "netpath_sendmsg4",
            Self::Recvmsg4 => "netpath_recvmsg4",
            Self::Getpeername4 => "netpath_getpeername4",
            Self::Connect6 => "netpath_connect6",
            Self::Sendmsg6 => "netpath_sendmsg6",
            Self::Recvmsg6 => "netpath_recvmsg6",
            Self::Getpeername6 => "netpath_getpeername6",
        }
    }

    pub const fn attach_type(self) -> CgroupSockAddrAttachType {
        match self {
            Self::Connect4 => CgroupSockAddrAttachType::Connect4,
            Self::Sendmsg4 => CgroupSockAddrAttachType::UDPSendMsg4,
            Self::Recvmsg4 => CgroupSockAddrAttachType::UDPRecvMsg4,
            Self::Getpeername4 => CgroupSockAddrAttachType::GetPeerName4,
            Self::Connect6 => CgroupSockAddrAttachType::Connect6,
            Self::Sendmsg6 => CgroupSockAddrAttachType::UDPSendMsg6,
            Self::Recvmsg6 => CgroupSockAddrAttachType::UDPRecvMsg6,
            Self::Getpeername6 => CgroupSockAddrAttachType::GetPeerName6,
        }
    }
}

/// Identifies this build (version and embedded programs). Loaded programs
/// are pinned under `progs/<build id>/` so later commands of the same build
/// reuse them instead of running the verifier again; a daemon of another
/// build is replaced by `up`.
pub fn build_id() -> String {
    // The object is megabytes: the embedded one was hashed by build.rs;
    // another (`NETPATH_EBPF_OBJECT`) is hashed once per process.
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let h = crate::embedded_hash().unwrap_or_else(|| object_hash(crate::ebpf_object()));
        format!("{}-{h:016x}", env!("CARGO_PKG_VERSION"))
    })
    .clone()
}

/// FNV-1a of `object`, then the crate version.
pub fn object_hash(object: &[u8]) -> u64 {
    crate::codec::fnv1a(
        object
            .iter()
            .chain(env!("CARGO_PKG_VERSION").as_bytes())
            .copied(),
    )
}

/// Where every build's programs are pinned, one directory per build.
pub fn progs_root(state: &StateDir) -> std::path::PathBuf {
    state.root.join("progs")
}

/// This build's directory under `root` (bpffs refuses dots in names).
pub fn build_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join(build_id().replace('.', "_"))
}

/// Parses the embedded object and creates or opens its maps (pinned in
/// `maps_dir`; `NP_CT4` created with `ct_max` entries when given and not
/// pinned). Verifies nothing.
pub fn load_object(maps_dir: &std::path::Path, ct_max: Option<u32>) -> Result<aya::Ebpf> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(maps_dir);
    if let Some(n) = ct_max {
        loader.map_max_entries(netpath_common::map_names::CT4, n);
    }
    loader.load(crate::ebpf_object()).context(
        "loading netpath's eBPF object (pinned maps from an incompatible build? run `netpath down --all`)",
    )
}

/// The classifier pinned as `name` in `dir`, `None` when it is not.
pub fn open_pinned(dir: &std::path::Path, name: &str) -> Result<Option<SchedClassifier>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    SchedClassifier::from_pin(&path)
        .map(Some)
        .with_context(|| format!("opening pinned program {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_verified_once_first_or_deferred() {
        let mut order = first_load();
        order.extend(DEFERRED);
        let mut all: Vec<&str> = tc_names()
            .chain(SockHook::ALL.iter().map(|h| h.program()))
            .collect();
        assert_eq!(order.len(), all.len());
        order.sort_unstable();
        all.sort_unstable();
        assert_eq!(order, all);
        assert!(!first_load().iter().any(|n| deferred(n)));
    }
}
