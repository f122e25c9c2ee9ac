//! Loading the kernel programs and attaching them: TC filters for bridges
//! and ports ([`crate::tcfilter`]), TCX links for uplinks.
//!
//! Maps are pinned by name in the state directory, so every load reuses the
//! maps an earlier load created. Each (interface, direction) has one
//! netpath filter or one pinned TCX link: when a newer build runs `up`, it
//! is switched to the new program atomically (the filter replaced in
//! place, the link by BPF_LINK_UPDATE); the same build leaves it alone.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result};
use aya::{
    EbpfLoader,
    programs::{
        CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        cgroup_sock_addr::CgroupSockAddrAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
    sys::SyscallError,
};

use netpath_common::IfaceRole;

use crate::{
    state::{Dir, Maps, SWEEP_PROGRAM, StateDir, TC_PROGRAMS, tc_program},
    sys, tcfilter,
};

impl Dir {
    pub const fn tc(self) -> TcAttachType {
        match self {
            Self::Ingress => TcAttachType::Ingress,
            Self::Egress => TcAttachType::Egress,
        }
    }
}

/// What [`Datapath::ensure_attached`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A new link was created and pinned.
    Created,
    /// The pinned link now runs this build's program.
    Updated,
    /// The pinned link already ran this build's program.
    Unchanged,
    /// The role runs no program in this direction, and an earlier build's
    /// link there was removed.
    Removed,
    /// The role runs no program in this direction.
    NotUsed,
    /// Not asked: a finished reconcile of this build left it running this
    /// build's program, and nothing about the interface changed since
    /// (see [`crate::reconcile::Verify`]).
    Kept,
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
fn progs_root(state: &StateDir) -> std::path::PathBuf {
    state.root.join("progs")
}

/// This build's directory under `root` (bpffs refuses dots in names).
fn build_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join(build_id().replace('.', "_"))
}

/// The classifiers' names, the sweeper's included.
fn tc_names() -> impl Iterator<Item = &'static str> {
    TC_PROGRAMS
        .iter()
        .map(|(r, d)| tc_program(*r, *d))
        .chain([SWEEP_PROGRAM])
}

/// Every program, in the order `loader::verify` starts them: the costliest
/// first, so that the CPUs finish together rather than one waiting on a
/// long program started last. Measured (`-v`, two at once on a quiet
/// machine): the uplink's egress and ingress about 80 ms each, the sweeper
/// 62, a port's ingress 57 and egress 50, the bridge 30, the socket hooks
/// 20 together. (A port's ingress was 100-130 ms before IPv6 prefix tests
/// went branch-light, `netpath_common::v6::in_prefix`.)
fn verify_order() -> Vec<&'static str> {
    use netpath_common::IfaceRole as R;
    let first = [
        tc_program(R::Uplink, Dir::Egress),
        tc_program(R::Uplink, Dir::Ingress),
        SWEEP_PROGRAM,
        tc_program(R::Port, Dir::Ingress),
        tc_program(R::Port, Dir::Egress),
    ];
    let rest = tc_names().filter(|n| !first.contains(n));
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

/// The loaded programs and their (pinned) maps.
pub struct Datapath {
    /// In [`TC_PROGRAMS`] order.
    tc: Vec<SchedClassifier>,
    /// The conntrack sweep, run with BPF_PROG_TEST_RUN.
    pub sweeper: SchedClassifier,
    /// In [`SockHook::ALL`] order.
    pub sock: Vec<CgroupSockAddr>,
    pub maps: Maps,
    /// The ids of `tc`'s programs, read once (a reconcile compares them
    /// with every filter it asks about).
    tc_ids: Vec<Option<u32>>,
    /// Whether this value loaded the programs itself and no reconcile has
    /// yet put them on every interface.
    unverified: bool,
}

impl Datapath {
    /// This build's programs for `state`: the pinned ones when an earlier
    /// command of this build loaded them, otherwise the embedded object is
    /// loaded (maps pinned under `state`, created on first use and reused
    /// afterwards), verified, and its programs pinned. The caller holds the
    /// state lock: loading may create maps, and a resize moves `NP_CT4`
    /// aside for a moment.
    pub fn load(state: &StateDir) -> Result<Self> {
        Self::load_at(&state.maps_dir(), &progs_root(state), None)
    }

    /// This build's pinned programs, `None` when they are not pinned (then
    /// [`Datapath::load`] under the lock). Never loads or creates anything,
    /// so lock-free readers (`status`, the daemon's sweep) use it.
    pub fn open(state: &StateDir) -> Result<Option<Self>> {
        Self::open_at(&state.maps_dir(), &build_dir(&progs_root(state)))
    }

    /// [`Datapath::open`], or [`Datapath::load`] under the state lock when
    /// this build's programs are not pinned yet.
    pub fn open_or_load(state: &StateDir) -> Result<Self> {
        if let Some(dp) = Self::open(state)? {
            return Ok(dp);
        }
        let _lock = crate::state::lock(false)?;
        Self::load(state)
    }

    /// Programs kept loaded between uses (the daemon's), opened again when
    /// this build's pinned ones changed (a conntrack resize pins new ones).
    /// Only a caller holding the state lock (`locked`) may load them when
    /// they are not pinned; any other gets `None` if the lock is busy (try
    /// again later).
    pub fn current<'a>(
        state: &StateDir,
        loaded: &'a mut Option<Self>,
        locked: bool,
    ) -> Result<Option<&'a mut Self>> {
        if let Some(dp) = loaded
            && !dp.is_current(state)
        {
            *loaded = None;
        }
        if loaded.is_none() {
            *loaded = match Self::open(state)? {
                Some(dp) => Some(dp),
                None if locked => Some(Self::load(state)?),
                None => match crate::state::try_lock()? {
                    Some(Some(_lock)) => Some(Self::load(state)?),
                    _ => None,
                },
            };
        }
        Ok(loaded.as_mut())
    }

    /// The current namespace's state and this build's programs for it; an
    /// error when nothing is up. The caller holds the state lock.
    pub fn open_current() -> Result<(StateDir, Self)> {
        let (state, _) = Maps::open_current()?;
        let dp = Self::load(&state)?;
        Ok((state, dp))
    }

    /// Like [`Datapath::load`] with explicit pin directories (tests use
    /// private ones).
    pub fn load_with_pins(maps_dir: &std::path::Path) -> Result<Self> {
        Self::load_at(maps_dir, &maps_dir.join("progs"), None)
    }

    /// Loads the object afresh whatever is pinned, creating `NP_CT4` with
    /// `ct_max` entries when it is not pinned (a resize moved the old one
    /// aside), and pins this build's programs again. The caller holds the
    /// state lock.
    pub fn load_fresh(state: &StateDir, ct_max: u32) -> Result<Self> {
        let root = progs_root(state);
        let dir = build_dir(&root);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Self::load_at(&state.maps_dir(), &root, Some(ct_max))
    }

    /// Removes the pinned programs of every other build (links keep the
    /// ones still attached alive); `up` does it once this build's daemon
    /// runs, so a daemon of another build never finds its pins gone.
    pub fn prune_other_builds(state: &StateDir) -> Result<usize> {
        let root = progs_root(state);
        let mine = build_dir(&root);
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(0);
        };
        let mut pruned = 0;
        for e in entries {
            let path = e?.path();
            if path != mine {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    fn load_at(
        maps_dir: &std::path::Path,
        progs_root: &std::path::Path,
        ct_max: Option<u32>,
    ) -> Result<Self> {
        let dir = build_dir(progs_root);
        if let Some(dp) = Self::open_at(maps_dir, &dir)? {
            return Ok(dp);
        }
        // Pinned in a scratch directory first and renamed into place, so a
        // build's directory is complete or absent: a crash halfway leaves
        // only scratch behind, removed here next time.
        let scratch = progs_root.join(format!("loading-{}", std::process::id()));
        for stale in [&dir, &scratch] {
            if stale.exists() {
                std::fs::remove_dir_all(stale)
                    .with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(maps_dir);
        if let Some(n) = ct_max {
            loader.map_max_entries(netpath_common::map_names::CT4, n);
        }
        let mut ebpf = loader
            .load(crate::ebpf_object())
            .context("loading netpath's eBPF object (pinned maps from an incompatible build? run `netpath down --all`)")?;
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        // Verified on every CPU at once (`loader`), the costliest first.
        let names = verify_order();
        crate::loader::verify(&mut ebpf, &names)?;
        for name in tc_names() {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.pin(scratch.join(name))
                .with_context(|| format!("pinning program {name}"))?;
        }
        for h in SockHook::ALL {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(h.program())
                .with_context(|| format!("program {} missing from the object", h.program()))?
                .try_into()?;
            prog.pin(scratch.join(h.program()))
                .with_context(|| format!("pinning program {}", h.program()))?;
        }
        std::fs::rename(&scratch, &dir)
            .with_context(|| format!("renaming {} to {}", scratch.display(), dir.display()))?;
        let mut dp = Self::open_at(maps_dir, &dir)?
            .with_context(|| format!("{} vanished right after pinning", dir.display()))?;
        dp.unverified = true;
        Ok(dp)
    }

    /// The programs pinned in `dir`, `None` unless all of them are.
    fn open_at(maps_dir: &std::path::Path, dir: &std::path::Path) -> Result<Option<Self>> {
        let pinned = |name: &str| dir.join(name);
        let complete = tc_names().all(|n| pinned(n).exists())
            && SockHook::ALL.iter().all(|h| pinned(h.program()).exists());
        if !complete {
            return Ok(None);
        }
        let sock = SockHook::ALL
            .iter()
            .map(|h| {
                let p = pinned(h.program());
                CgroupSockAddr::from_pin(&p, h.attach_type())
                    .with_context(|| format!("opening pinned program {}", p.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let open = |name: &str| {
            SchedClassifier::from_pin(pinned(name))
                .with_context(|| format!("opening pinned program {}", pinned(name).display()))
        };
        let tc = TC_PROGRAMS
            .iter()
            .map(|(r, d)| open(tc_program(*r, *d)))
            .collect::<Result<Vec<_>>>()?;
        let mut maps = Maps::open_dir(maps_dir)?;
        maps.config()?;
        maps.set_ct_limit(Maps::ct_capacity(maps_dir)?)?;
        maps.v6.set_ct_limit()?;
        Ok(Some(Self {
            tc_ids: vec![None; tc.len()],
            tc,
            sweeper: open(SWEEP_PROGRAM)?,
            sock,
            maps,
            unverified: false,
        }))
    }

    /// Whether this value loaded (and verified) the programs itself and no
    /// reconcile has put them on every interface yet: then no interface
    /// may be taken as running them unasked.
    pub const fn unverified(&self) -> bool {
        self.unverified
    }

    /// Said by a reconcile that asked every interface.
    pub const fn mark_verified(&mut self) {
        self.unverified = false;
    }

    /// The program an interface of `role` runs in `dir` (loaded).
    pub fn program(&mut self, role: IfaceRole, dir: Dir) -> Result<&mut SchedClassifier> {
        let i = Self::tc_index(role, dir)?;
        Ok(&mut self.tc[i])
    }

    fn tc_index(role: IfaceRole, dir: Dir) -> Result<usize> {
        TC_PROGRAMS
            .iter()
            .position(|p| *p == (role, dir))
            .context("no program for this role")
    }

    /// The kernel's ids of the classifiers: a filter running any other
    /// program is not netpath's.
    pub fn program_ids(&mut self) -> Result<std::collections::BTreeSet<u32>> {
        TC_PROGRAMS
            .iter()
            .map(|(r, d)| self.program_id(*r, *d))
            .collect()
    }

    /// The kernel's id of [`Datapath::program`]`(role, dir)`.
    fn program_id(&mut self, role: IfaceRole, dir: Dir) -> Result<u32> {
        let i = Self::tc_index(role, dir)?;
        if let Some(id) = self.tc_ids[i] {
            return Ok(id);
        }
        let id = self.tc[i].info()?.id();
        self.tc_ids[i] = Some(id);
        Ok(id)
    }

    /// Whether this build's pinned programs are still the ones loaded here
    /// (a resize of the conntrack table pins new ones; the daemon, which
    /// keeps its programs loaded, then loads them again).
    pub fn is_current(&mut self, state: &StateDir) -> bool {
        let dir = build_dir(&progs_root(state));
        let Ok(pinned) = SchedClassifier::from_pin(dir.join(SWEEP_PROGRAM)) else {
            return false;
        };
        match (pinned.info(), self.sweeper.info()) {
            (Ok(a), Ok(b)) => a.id() == b.id(),
            _ => false,
        }
    }

    /// Makes sure `ifname` (`ifindex`) runs this build's program for `role`
    /// in `dir`: in netpath's TC filter where the role takes one (see
    /// [`crate::tcfilter`]), else (or when the interface refuses a clsact
    /// qdisc) through a TCX link pinned in `state`; nothing where the role
    /// has no program.
    pub fn ensure_attached(
        &mut self,
        tc: &mut tcfilter::Tc,
        state: &StateDir,
        ifindex: u32,
        ifname: &str,
        role: IfaceRole,
        dir: Dir,
    ) -> Result<Attach> {
        let pin = state.link_pin(ifindex, dir);
        if !crate::state::has_program(role, dir) {
            if pin.exists() {
                sys::detach_pinned_link(&pin)?;
                return Ok(Attach::Removed);
            }
            return Ok(Attach::NotUsed);
        }
        if !crate::state::attaches_by_filter(role, dir) {
            // A bridge or port that became an uplink: its filter goes, or
            // the old role's program would run after the new one's.
            tc.remove(ifindex, dir)?;
            return self.ensure_tcx(&pin, ifname, role, dir);
        }
        let ours = self.program_id(role, dir)?;
        let found = tc
            .list(ifindex, dir)?
            .into_iter()
            .find(tcfilter::Filter::is_ours);
        let done = match found {
            Some(f) if f.prog_id == Some(ours) => Attach::Unchanged,
            found => {
                let fd = self.program(role, dir)?.fd()?.as_fd().as_raw_fd();
                match tc.put(ifindex, dir, fd, tc_program(role, dir)) {
                    Ok(()) if found.is_some() || pin.exists() => Attach::Updated,
                    Ok(()) => Attach::Created,
                    // A classic `ingress` qdisc (another tool's) leaves no
                    // room for clsact: a TCX link does the job there.
                    Err(e) => {
                        return self.ensure_tcx(&pin, ifname, role, dir).with_context(|| {
                            format!("and no TC filter on {ifname} either: {e:#}")
                        });
                    }
                }
            }
        };
        // An earlier build's TCX link: the filter runs the program now.
        if pin.exists() {
            sys::detach_pinned_link(&pin)?;
        }
        Ok(done)
    }

    /// [`Datapath::ensure_attached`] through a TCX link pinned at `pin`.
    fn ensure_tcx(
        &mut self,
        pin: &std::path::Path,
        ifname: &str,
        role: IfaceRole,
        dir: Dir,
    ) -> Result<Attach> {
        let prog = self.program(role, dir)?;
        let info = prog.info()?;
        let (tag, ours, maps) = (info.tag(), info.id(), info.map_ids()?);
        match PinnedLink::from_pin(pin) {
            Ok(pinned) => {
                let link = FdLink::from(pinned);
                let running = link
                    .info()
                    .context("reading pinned link info")?
                    .program_id();
                // The very program this build pinned: nothing to ask the
                // interface (this keeps `up` cheap with many interfaces).
                if running == ours {
                    return Ok(Attach::Unchanged);
                }
                let (_, attached) =
                    SchedClassifier::query_tcx(ifname, dir.tc()).with_context(|| {
                        format!("querying TCX {} programs on {ifname}", dir.as_str())
                    })?;
                match attached.iter().find(|p| p.id() == running) {
                    // The same code on the same maps (loaded again by another
                    // command of this build).
                    Some(p) if p.tag() == tag && p.map_ids()? == maps => Ok(Attach::Unchanged),
                    Some(_) => {
                        let link = SchedClassifierLink::try_from(link)?;
                        let id = prog.attach_to_link(link).with_context(|| {
                            format!("replacing the {} program on {ifname}", dir.as_str())
                        })?;
                        // The pin keeps the link; our fd can go.
                        drop(prog.take_link(id)?);
                        Ok(Attach::Updated)
                    }
                    None => {
                        // A pin whose link is not on this interface any more
                        // (the interface was recreated): start over.
                        drop(link);
                        sys::detach_pinned_link(pin)?;
                        attach_new(prog, pin, ifname, dir)
                    }
                }
            }
            Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                attach_new(prog, pin, ifname, dir)
            }
            Err(e) => Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
        }
    }
}

fn attach_new(
    prog: &mut SchedClassifier,
    pin: &std::path::Path,
    ifname: &str,
    dir: Dir,
) -> Result<Attach> {
    let id = prog
        .attach_with_options(
            ifname,
            dir.tc(),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("attaching TCX {} program to {ifname}", dir.as_str()))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    link.pin(pin)
        .with_context(|| format!("pinning link at {}", pin.display()))?;
    Ok(Attach::Created)
}

/// The ids of netpath's programs on `ifname` (`ifindex`) in `dir`: its TC
/// filter's, then any TCX link's.
pub fn attached_program_ids(ifindex: u32, ifname: &str, dir: Dir) -> Result<Vec<u32>> {
    let ours = |name: Option<&str>| {
        TC_PROGRAMS
            .iter()
            .any(|(r, d)| name == Some(tc_program(*r, *d)))
    };
    let mut ids: Vec<u32> = tcfilter::list(ifindex, dir)?
        .iter()
        .filter(|f| f.is_ours() && ours(f.name.as_deref()))
        .filter_map(|f| f.prog_id)
        .collect();
    let (_, progs) = SchedClassifier::query_tcx(ifname, dir.tc())?;
    ids.extend(
        progs
            .iter()
            .filter(|p| ours(p.name_as_str()))
            .map(|p| p.id()),
    );
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_verified_once() {
        let mut order = verify_order();
        let mut all: Vec<&str> = tc_names()
            .chain(SockHook::ALL.iter().map(|h| h.program()))
            .collect();
        assert_eq!(order.len(), all.len());
        order.sort_unstable();
        all.sort_unstable();
        assert_eq!(order, all);
    }
}
