//! netpath's classic TC filters: one `bpf` filter (direct action) per
//! (interface, direction) on the interface's `clsact` qdisc, at a fixed
//! priority and handle, so it is found, replaced and removed by those.
//!
//! Why not TCX links for these: every TCX attach or detach waits for an
//! RCU grace period under RTNL (13–16 ms here, serialized across
//! interfaces), which made creating networks and enforcing new ports
//! slower than iptables. A filter on `clsact` costs about 1 ms, is
//! replaced in place atomically (a newer build's program), and goes away
//! with its interface. The kernel is the record: the running program's id
//! is read back from the filter, nothing is pinned.
//!
//! Plain synchronous rtnetlink requests, so the attach path stays usable
//! from sync code (teardown) and costs one round trip each. A [`Tc`] keeps
//! one socket for a run of requests (a reconcile asks about every
//! interface it verifies); the free functions open one per request.

use std::os::fd::RawFd;

use anyhow::{Context as _, Result, bail};
use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
        NetlinkPayload,
    },
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

use crate::state::Dir;

/// netpath's filter priority: 1, ahead of any filter added with tc's
/// default priorities.
pub const PRIORITY: u16 = 1;
/// netpath's filter handle ("np").
pub const HANDLE: u32 = 0x6e70;
/// ETH_P_ALL in network byte order, as the filter's protocol.
const ETH_P_ALL_BE: u16 = 0x0003_u16.to_be();

/// A `bpf` filter found on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    pub prog_id: Option<u32>,
    pub name: Option<String>,
}

impl Filter {
    /// Whether it sits at netpath's priority and handle.
    pub fn is_ours(&self) -> bool {
        self.priority == PRIORITY && self.handle == HANDLE
    }
}

/// The clsact parent a filter of `dir` hangs from.
const fn parent(dir: Dir) -> TcHandle {
    TcHandle {
        major: u16::MAX,
        minor: match dir {
            Dir::Ingress => TcHandle::MIN_INGRESS,
            Dir::Egress => TcHandle::MIN_EGRESS,
        },
    }
}

fn header(msg: &mut TcMessage, ifindex: u32) -> Result<()> {
    msg.header.index = i32::try_from(ifindex).context("interface index out of range")?;
    Ok(())
}

/// Whether `e` is the errno `code`.
fn is_errno(e: &anyhow::Error, code: i32) -> bool {
    e.downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
        == Some(code)
}

/// Whether `e` says the thing to remove is not there: no such filter or
/// qdisc (ENOENT, EINVAL for a missing clsact parent) or interface.
fn is_gone(e: &anyhow::Error) -> bool {
    [libc::ENOENT, libc::ENODEV, libc::EINVAL]
        .iter()
        .any(|c| is_errno(e, *c))
}

/// A netlink socket for TC requests, one at a time. The socket stays in
/// the network namespace it was opened in whatever its thread does later,
/// so a `Tc` is held for a run of requests in one namespace, never cached
/// behind the caller's back.
pub struct Tc {
    socket: Socket,
    seq: u32,
}

impl Tc {
    pub fn new() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        socket.bind_auto().context("binding a netlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connecting a netlink socket")?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and collects the answers until the kernel's ack
    /// (or the end of a dump). An error answer becomes `Err` with its
    /// errno. Answers to an earlier request (one that failed halfway
    /// through reading them) carry another sequence number and are skipped.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<TcMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .context("sending a netlink request")?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .context("reading a netlink answer")?;
            let mut off = 0;
            while off < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .context("decoding a netlink answer")?;
                let len = msg.header.length as usize;
                if len == 0 {
                    bail!("a netlink answer of length 0");
                }
                off += len;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(anyhow::Error::new(
                                std::io::Error::from_raw_os_error(-code.get()),
                            )),
                        };
                    }
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewTrafficFilter(m)
                        | RouteNetlinkMessage::NewQueueDiscipline(m),
                    ) => {
                        out.push(m);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The `bpf` filters on `ifindex` in `dir` (empty without a clsact
    /// qdisc, or when the interface is gone).
    pub fn list(&mut self, ifindex: u32, dir: Dir) -> Result<Vec<Filter>> {
        let mut msg = TcMessage::default();
        header(&mut msg, ifindex)?;
        msg.header.parent = parent(dir);
        let answers = match self.request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) {
            Ok(a) => a,
            Err(e) if is_errno(&e, libc::EINVAL) || is_errno(&e, libc::ENODEV) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e).context("listing TC filters"),
        };
        Ok(answers.iter().filter_map(parse).collect())
    }

    /// Adds the clsact qdisc to `ifindex` unless there is one.
    fn ensure_clsact(&mut self, ifindex: u32) -> Result<()> {
        match self.request(
            RouteNetlinkMessage::NewQueueDiscipline(clsact(ifindex)?),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            // A qdisc at ffff: already: clsact, or a classic `ingress` one
            // (another tool's), whose block would take both directions'
            // filters, so netpath must not use it.
            Err(e) if is_errno(&e, libc::EEXIST) => {
                let kind = self.ingress_qdisc_kind(ifindex)?;
                if kind.as_deref() == Some("clsact") {
                    Ok(())
                } else {
                    bail!(
                        "the interface has a {} qdisc where clsact would go",
                        kind.as_deref().unwrap_or("foreign")
                    )
                }
            }
            Err(e) => Err(e).context("adding a clsact qdisc"),
        }
    }

    /// The kind of the qdisc at `ifindex`'s ingress hook (clsact or a
    /// classic ingress one), if any: one GET for that qdisc, not a dump of
    /// every interface's.
    fn ingress_qdisc_kind(&mut self, ifindex: u32) -> Result<Option<String>> {
        let mut msg = TcMessage::default();
        header(&mut msg, ifindex)?;
        msg.header.parent = TcHandle::INGRESS;
        // NLM_F_ECHO: some kernels answer a qdisc GET as a notification,
        // which reaches the asker only when it asks for the echo.
        let answer = match self.request(
            RouteNetlinkMessage::GetQueueDiscipline(msg),
            NLM_F_ACK | NLM_F_ECHO,
        ) {
            Ok(a) => a,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e).context("reading the ingress qdisc"),
        };
        Ok(answer.iter().find_map(|q| {
            q.attributes.iter().find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.clone()),
                _ => None,
            })
        }))
    }

    /// Puts the program `prog_fd` (named `name`) in netpath's filter on
    /// `ifindex` in `dir`: created, or its program replaced atomically.
    pub fn put(&mut self, ifindex: u32, dir: Dir, prog_fd: RawFd, name: &str) -> Result<()> {
        self.ensure_clsact(ifindex)?;
        let mut msg = ours(ifindex, dir)?;
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(
                u32::try_from(prog_fd).context("program fd")?,
            )),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        // Without NLM_F_EXCL an existing filter at this handle gets the new
        // program (cls_bpf swaps it under RCU), so there is no gap.
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_ACK | NLM_F_CREATE,
        )
        .map(drop)
        .context("adding a TC filter")
    }

    /// Removes netpath's filter from `ifindex` in `dir`; `false` when there
    /// was none (or the interface is gone, which took it along).
    pub fn remove(&mut self, ifindex: u32, dir: Dir) -> Result<bool> {
        match self.request(
            RouteNetlinkMessage::DelTrafficFilter(ours(ifindex, dir)?),
            NLM_F_ACK,
        ) {
            Ok(_) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(e).context("removing a TC filter"),
        }
    }

    /// Removes netpath's filters from `ifindex` in both directions, and the
    /// clsact qdisc when no filter is left on it (it does nothing empty,
    /// and the interface is left as netpath found it).
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        let mut removed = false;
        for dir in Dir::BOTH {
            removed |= self.remove(ifindex, dir)?;
        }
        if removed
            && self.list(ifindex, Dir::Ingress)?.is_empty()
            && self.list(ifindex, Dir::Egress)?.is_empty()
        {
            match self.request(
                RouteNetlinkMessage::DelQueueDiscipline(clsact(ifindex)?),
                NLM_F_ACK,
            ) {
                Ok(_) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(e).context("removing an empty clsact qdisc"),
            }
        }
        Ok(())
    }
}

/// Whether a filter event (`RTM_NEWTFILTER`) puts something at netpath's
/// priority that does not run one of `ours` (the ids of netpath's
/// programs): another tool replacing netpath's filter (`tc filter
/// replace`, `tc filter change`) sends no deletion, only this.
pub fn displaces_ours(m: &TcMessage, ours: &std::collections::BTreeSet<u32>) -> bool {
    let handle = u32::from(m.header.handle.major) << 16 | u32::from(m.header.handle.minor);
    if (m.header.info >> 16) as u16 != PRIORITY || handle == 0 {
        return false;
    }
    !matches!(parse(m), Some(f) if f.is_ours() && f.prog_id.is_some_and(|id| ours.contains(&id)))
}

/// [`Tc::list`] on a socket of its own.
pub fn list(ifindex: u32, dir: Dir) -> Result<Vec<Filter>> {
    Tc::new()?.list(ifindex, dir)
}

/// [`Tc::put`] on a socket of its own.
pub fn put(ifindex: u32, dir: Dir, prog_fd: RawFd, name: &str) -> Result<()> {
    Tc::new()?.put(ifindex, dir, prog_fd, name)
}

/// [`Tc::remove`] on a socket of its own.
pub fn remove(ifindex: u32, dir: Dir) -> Result<bool> {
    Tc::new()?.remove(ifindex, dir)
}

fn parse(m: &TcMessage) -> Option<Filter> {
    let mut bpf = false;
    let mut f = Filter {
        priority: (m.header.info >> 16) as u16,
        handle: u32::from(m.header.handle.major) << 16 | u32::from(m.header.handle.minor),
        prog_id: None,
        name: None,
    };
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => bpf = k == "bpf",
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.prog_id = Some(*id),
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.name = Some(n.clone()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // A dump also lists the priority's chain head without a handle.
    (bpf && f.handle != 0).then_some(f)
}

/// The clsact qdisc of `ifindex`, as a request names it.
fn clsact(ifindex: u32) -> Result<TcMessage> {
    let mut msg = TcMessage::default();
    header(&mut msg, ifindex)?;
    msg.header.handle = TcHandle {
        major: u16::MAX,
        minor: 0,
    };
    msg.header.parent = TcHandle::CLSACT;
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    Ok(msg)
}

/// netpath's filter on `ifindex` in `dir`, as a request names it.
fn ours(ifindex: u32, dir: Dir) -> Result<TcMessage> {
    let mut msg = TcMessage::default();
    header(&mut msg, ifindex)?;
    msg.header.parent = parent(dir);
    msg.header.handle = TcHandle::from(HANDLE);
    msg.header.info = u32::from(PRIORITY) << 16 | u32::from(ETH_P_ALL_BE);
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    Ok(msg)
}

/// The interfaces of this network namespace, by index.
fn ifindexes() -> Vec<u32> {
    // SAFETY: if_nameindex returns an array ended by a zero entry (or
    // null), which is read up to that entry and freed once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut p = list;
        while (*p).if_index != 0 {
            out.push((*p).if_index);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        out
    }
}

/// Removes netpath's filter (one running a `netpath_` program) from every
/// interface of the namespace, carrying on past errors.
pub fn remove_everywhere() -> Vec<anyhow::Error> {
    let mut tc = match Tc::new() {
        Ok(tc) => tc,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    for ifindex in ifindexes() {
        let mut ours = false;
        for dir in Dir::BOTH {
            match tc.list(ifindex, dir) {
                Ok(f) => {
                    ours |= f.iter().any(|f| {
                        f.is_ours() && f.name.as_deref().is_some_and(|n| n.starts_with("netpath_"))
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if ours && let Err(e) = tc.detach(ifindex) {
            errors.push(e);
        }
    }
    errors
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_clsact_ingress_and_egress() {
        assert_eq!(u32::from(parent(Dir::Ingress)), 0xffff_fff2);
        assert_eq!(u32::from(parent(Dir::Egress)), 0xffff_fff3);
    }

    #[test]
    fn a_dumped_filter_is_ours_only_at_our_priority_and_handle() {
        let mut m = TcMessage::default();
        m.header.info = u32::from(PRIORITY) << 16 | u32::from(ETH_P_ALL_BE);
        m.header.handle = TcHandle::from(HANDLE);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![TcOption::Bpf(
            TcFilterBpfOption::ProgId(42),
        )]));
        let f = parse(&m).expect("a bpf filter");
        assert!(f.is_ours());
        assert_eq!(f.prog_id, Some(42));
        m.header.info = 2 << 16;
        assert!(!parse(&m).expect("a bpf filter").is_ours());
        m.attributes[0] = TcAttribute::Kind("u32".into());
        assert_eq!(parse(&m), None);
    }

    #[test]
    fn a_filter_event_displaces_ours_unless_it_runs_our_program() {
        let ours = std::collections::BTreeSet::from([42, 43]);
        let event = |prio: u16, handle: u32, id: Option<u32>| {
            let mut m = TcMessage::default();
            m.header.info = u32::from(prio) << 16 | u32::from(ETH_P_ALL_BE);
            m.header.handle = TcHandle::from(handle);
            m.attributes.push(TcAttribute::Kind("bpf".into()));
            if let Some(id) = id {
                m.attributes.push(TcAttribute::Options(vec![TcOption::Bpf(
                    TcFilterBpfOption::ProgId(id),
                )]));
            }
            m
        };
        // netpath's own filter (an attach, a replace by this build).
        assert!(!displaces_ours(&event(PRIORITY, HANDLE, Some(43)), &ours));
        // Another program in its place, or classic bytecode (no id).
        assert!(displaces_ours(&event(PRIORITY, HANDLE, Some(7)), &ours));
        assert!(displaces_ours(&event(PRIORITY, HANDLE, None), &ours));
        // Another kind at netpath's priority and handle.
        let mut u32_filter = event(PRIORITY, HANDLE, None);
        u32_filter.attributes[0] = TcAttribute::Kind("u32".into());
        assert!(displaces_ours(&u32_filter, &ours));
        // Elsewhere: other priorities, a chain head without a handle.
        assert!(!displaces_ours(&event(2, HANDLE, Some(7)), &ours));
        assert!(!displaces_ours(&event(PRIORITY, 0, None), &ours));
    }
}
