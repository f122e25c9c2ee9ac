//! Loading the kernel programs and managing their TCX links.
//!
//! Maps are pinned by name in the state directory, so every load reuses the
//! maps an earlier load created. Each (interface, direction) has one pinned
//! TCX link: when a newer build runs `up`, the link is switched to the new
//! program atomically (BPF_LINK_UPDATE); the same build leaves it alone.

use std::io;

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

use crate::{
    EBPF_OBJECT,
    state::{Dir, Maps, StateDir},
    sys,
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
}

/// Identifies this build (version and embedded programs). Loaded programs
/// are pinned under `progs/<build id>/` so later commands of the same build
/// reuse them instead of running the verifier again; a daemon of another
/// build is replaced by `up`.
pub fn build_id() -> String {
    let h = crate::plan::fnv1a(
        EBPF_OBJECT
            .iter()
            .chain(env!("CARGO_PKG_VERSION").as_bytes())
            .copied(),
    );
    format!("{}-{h:016x}", env!("CARGO_PKG_VERSION"))
}

/// The cgroup socket hooks for host processes reaching published ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockHook {
    Connect4,
    Sendmsg4,
    Recvmsg4,
    Getpeername4,
}

impl SockHook {
    pub const ALL: [Self; 4] = [
        Self::Connect4,
        Self::Sendmsg4,
        Self::Recvmsg4,
        Self::Getpeername4,
    ];

    pub const fn program(self) -> &'static str {
        match self {
            Self::Connect4 => "netpath_connect4",
            Self::Sendmsg4 => "netpath_sendmsg4",
            Self::Recvmsg4 => "netpath_recvmsg4",
            Self::Getpeername4 => "netpath_getpeername4",
        }
    }

    pub const fn attach_type(self) -> CgroupSockAddrAttachType {
        match self {
            Self::Connect4 => CgroupSockAddrAttachType::Connect4,
            Self::Sendmsg4 => CgroupSockAddrAttachType::UDPSendMsg4,
            Self::Recvmsg4 => CgroupSockAddrAttachType::UDPRecvMsg4,
            Self::Getpeername4 => CgroupSockAddrAttachType::GetPeerName4,
        }
    }
}

/// The loaded programs and their (pinned) maps.
pub struct Datapath {
    ingress: SchedClassifier,
    egress: SchedClassifier,
    /// In [`SockHook::ALL`] order.
    pub sock: Vec<CgroupSockAddr>,
    pub maps: Maps,
}

impl Datapath {
    /// This build's programs for `state`: the pinned ones when an earlier
    /// command of this build loaded them, otherwise the embedded object is
    /// loaded (maps pinned under `state`, created on first use and reused
    /// afterwards), verified, and its programs pinned.
    pub fn load(state: &StateDir) -> Result<Self> {
        Self::load_at(&state.maps_dir(), &state.root.join("progs"))
    }

    /// Like [`Datapath::load`] with explicit pin directories (tests use
    /// private ones).
    pub fn load_with_pins(maps_dir: &std::path::Path) -> Result<Self> {
        Self::load_at(maps_dir, &maps_dir.join("progs"))
    }

    fn load_at(maps_dir: &std::path::Path, progs_root: &std::path::Path) -> Result<Self> {
        // bpffs refuses dots in names.
        let dir = progs_root.join(build_id().replace('.', "_"));
        let pinned = |d: Dir| dir.join(d.program());
        let sock_pinned = |h: SockHook| dir.join(h.program());
        let complete = Dir::BOTH.iter().all(|d| pinned(*d).exists())
            && SockHook::ALL.iter().all(|h| sock_pinned(*h).exists());
        if !complete {
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(maps_dir)
                .load(EBPF_OBJECT)
                .context("loading netpath's eBPF object (pinned maps from an incompatible build? run `netpath down --all`)")?;
            // Programs of other builds stay alive while links use them.
            let _ = std::fs::remove_dir_all(progs_root);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for d in Dir::BOTH {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(d.program())
                    .with_context(|| format!("program {} missing from the object", d.program()))?
                    .try_into()?;
                prog.load()
                    .with_context(|| format!("verifying program {}", d.program()))?;
                prog.pin(pinned(d))
                    .with_context(|| format!("pinning program {}", d.program()))?;
            }
            for h in SockHook::ALL {
                let prog: &mut CgroupSockAddr = ebpf
                    .program_mut(h.program())
                    .with_context(|| format!("program {} missing from the object", h.program()))?
                    .try_into()?;
                prog.load()
                    .with_context(|| format!("verifying program {}", h.program()))?;
                prog.pin(sock_pinned(h))
                    .with_context(|| format!("pinning program {}", h.program()))?;
            }
        }
        let sock = SockHook::ALL
            .iter()
            .map(|h| {
                CgroupSockAddr::from_pin(sock_pinned(*h), h.attach_type()).with_context(|| {
                    format!("opening pinned program {}", sock_pinned(*h).display())
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let open = |d: Dir| {
            SchedClassifier::from_pin(pinned(d))
                .with_context(|| format!("opening pinned program {}", pinned(d).display()))
        };
        let mut maps = Maps::open_dir(maps_dir)?;
        maps.config()?;
        Ok(Self {
            ingress: open(Dir::Ingress)?,
            egress: open(Dir::Egress)?,
            sock,
            maps,
        })
    }

    /// The program for one direction (loaded).
    pub fn program(&mut self, dir: Dir) -> Result<&mut SchedClassifier> {
        Ok(match dir {
            Dir::Ingress => &mut self.ingress,
            Dir::Egress => &mut self.egress,
        })
    }

    /// Makes sure `ifname` (`ifindex`) runs this build's program in `dir`,
    /// through a TCX link pinned in `state`.
    pub fn ensure_attached(
        &mut self,
        state: &StateDir,
        ifindex: u32,
        ifname: &str,
        dir: Dir,
    ) -> Result<Attach> {
        let pin = state.link_pin(ifindex, dir);
        let prog = self.program(dir)?;
        let info = prog.info()?;
        let (tag, ours) = (info.tag(), info.id());
        match PinnedLink::from_pin(&pin) {
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
                    Some(p) if p.tag() == tag => Ok(Attach::Unchanged),
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
                        sys::detach_pinned_link(&pin)?;
                        attach_new(prog, &pin, ifname, dir)
                    }
                }
            }
            Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                attach_new(prog, &pin, ifname, dir)
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

/// The ids of netpath's programs attached to `ifname` in `dir` (via TCX query).
pub fn attached_program_ids(ifname: &str, dir: Dir) -> Result<Vec<u32>> {
    let (_, progs) = SchedClassifier::query_tcx(ifname, dir.tc())?;
    Ok(progs
        .iter()
        .filter(|p| p.name_as_str() == Some(&dir.program()[..dir.program().len().min(15)]))
        .map(|p| p.id())
        .collect())
}
