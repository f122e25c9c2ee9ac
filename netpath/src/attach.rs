//! Loading the kernel programs and managing their TCX links.
//!
//! Maps are pinned by name in the state directory, so every load reuses the
//! maps an earlier load created. Each (interface, direction) has one pinned
//! TCX link: when a newer build runs `up`, the link is switched to the new
//! program atomically (BPF_LINK_UPDATE); the same build leaves it alone.

use std::io;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
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

/// The loaded programs and their (pinned) maps.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
}

impl Datapath {
    /// Loads the embedded object with its maps pinned under `state`
    /// (created there on first use, reused afterwards) and loads both programs.
    pub fn load(state: &StateDir) -> Result<Self> {
        Self::load_with_pins(&state.maps_dir())
    }

    /// Like [`Datapath::load`] with an explicit map pin directory (tests use
    /// a private one).
    pub fn load_with_pins(maps_dir: &std::path::Path) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(maps_dir)
            .load(EBPF_OBJECT)
            .context("loading netpath's eBPF object (pinned maps from an incompatible build? run `netpath down --all`)")?;
        for dir in Dir::BOTH {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(dir.program())
                .with_context(|| format!("program {} missing from the object", dir.program()))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying program {}", dir.program()))?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        let mut maps = Maps::from_source(|name| take(&mut ebpf, name))?;
        maps.config()?;
        Ok(Self { ebpf, maps })
    }

    /// The program for one direction (loaded).
    pub fn program(&mut self, dir: Dir) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(dir.program())
            .with_context(|| format!("program {} missing", dir.program()))?
            .try_into()?)
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
        let tag = prog.info()?.tag();
        match PinnedLink::from_pin(&pin) {
            Ok(pinned) => {
                let link = FdLink::from(pinned);
                let running = link
                    .info()
                    .context("reading pinned link info")?
                    .program_id();
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
