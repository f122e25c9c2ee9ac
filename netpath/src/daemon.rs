//! `netpath daemon`: one per network namespace. It listens to rtnetlink link
//! and IPv4 address events and re-applies the recorded networks when they
//! come (new ports get the programs within about 30 ms, an uplink's new
//! address becomes its masquerade source), and every second it removes
//! expired conntrack flows.
//!
//! It holds an flock on `/run/netpath/daemon-<netns cookie>.pid` for as long
//! as it runs and logs to `daemon-<cookie>.log` next to it (both removed when
//! it exits cleanly); `netpath up` starts it when that lock is free (or when the
//! running one is another build) and the last `netpath down` stops it. It
//! also exits by itself when the namespace's state is gone.

use std::{
    collections::BTreeSet,
    fs::OpenOptions,
    io::{Seek as _, Write as _},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use tracing::{info, warn};

use crate::{
    attach::Datapath,
    events, netns,
    plumbing::Netlink,
    reconcile::{self, IfaceChange},
    resize, state,
    sweeper::Sweeper,
};

pub use crate::sys::RUN_DIR;

/// Where `up --metrics` (or `daemon --metrics`) records the metrics
/// address, so a restarted daemon serves there again.
pub fn metrics_path(cookie: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("daemon-{cookie}.metrics"))
}

/// The recorded metrics address of this namespace's daemon, if any.
pub fn recorded_metrics() -> Result<Option<std::net::SocketAddr>> {
    let path = metrics_path(netns::cookie()?);
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            Ok(Some(t.trim().parse().with_context(|| {
                format!("{} holds no address", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Records `addr` as the daemon's metrics address.
pub fn record_metrics(addr: std::net::SocketAddr) -> Result<()> {
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let path = metrics_path(netns::cookie()?);
    std::fs::write(&path, format!("{addr}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Waits (up to 5 s) for this namespace's daemon to report that it serves
/// metrics on `addr`; an error naming its log when it could not.
pub fn await_metrics(addr: std::net::SocketAddr) -> Result<()> {
    let cookie = netns::cookie()?;
    let want = addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = report(cookie);
        if r.as_ref()
            .is_some_and(|r| r.metrics.as_deref() == Some(&want))
        {
            return Ok(());
        }
        // Its first report comes right after it bound (or failed to).
        if Instant::now() >= deadline || r.is_some_and(|r| r.sweeps > 0 && r.metrics.is_none()) {
            bail!(
                "the daemon does not serve metrics on {addr}; see {}",
                log_path(cookie).display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Forgets the recorded metrics address (the last `down`).
pub fn forget_metrics() -> Result<()> {
    match std::fs::remove_file(metrics_path(netns::cookie()?)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context("forgetting the metrics address")
        }
        _ => Ok(()),
    }
}

/// The daemon's log for the namespace with `cookie`.
pub fn log_path(cookie: u64) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("daemon-{cookie}.log"))
}

pub use crate::attach::build_id;

pub use crate::watcher::{Running, running};
use crate::watcher::{pid_path, try_flock};

/// What [`ensure_running`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    AlreadyRunning(i32),
    Started(i32),
    /// A daemon of another build was stopped and this build's started.
    Replaced(i32),
    /// This build's daemon was restarted to serve metrics where they are
    /// now recorded.
    Restarted(i32),
}

/// Starts this namespace's daemon unless this build's already runs. The
/// daemon inherits the calling thread's namespace; `netns` is its name, which
/// the daemon watches so it ends when the namespace is deleted.
pub fn ensure_running(netns_name: Option<&str>) -> Result<Start> {
    let mut replaced = None;
    if let Some(r) = running()? {
        // A daemon of this build that serves metrics where they are
        // recorded (or none when none are) stays.
        let want = recorded_metrics()?.map(|a| a.to_string());
        let serves = report(netns::cookie()?).and_then(|r| r.metrics);
        let same_build = r.build == build_id();
        if same_build && serves == want {
            return Ok(Start::AlreadyRunning(r.pid));
        }
        stop()?;
        replaced = Some(same_build);
    }
    let cookie = netns::cookie()?;
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(cookie))
        .context("opening the daemon log")?;
    let mut cmd = Command::new(std::env::current_exe().context("locating the netpath binary")?);
    if let Some(n) = netns_name {
        cmd.args(["--netns", n]);
    }
    cmd.arg("daemon")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for `up` does not reach it.
        .process_group(0);
    let child = cmd.spawn().context("starting netpath daemon")?;
    let pid = child.id() as i32;
    // Detached: it is reaped by init once this process exits.
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(r) = running()? {
            return Ok(match replaced {
                None => Start::Started(r.pid),
                Some(false) => Start::Replaced(r.pid),
                Some(true) => Start::Restarted(r.pid),
            });
        }
        // The daemon is ready within milliseconds, and `up` waits for it:
        // polled finely (reading its pid file and testing its lock is
        // cheap), where 20 ms steps cost a first `up` 10 ms on average.
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!(
        "netpath daemon (pid {pid}) did not start; see {}",
        log_path(cookie).display()
    )
}

/// Stops this namespace's daemon (SIGTERM, then SIGKILL after 5 s); returns
/// its pid when one ran.
pub fn stop() -> Result<Option<i32>> {
    let Some(r) = running()? else {
        return Ok(None);
    };
    // SAFETY: signalling the pid the daemon wrote while holding its lock.
    unsafe { libc::kill(r.pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if running()?.is_none() {
            return Ok(Some(r.pid));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Asked again right before: a daemon that left since the last look
    // may have passed its pid on to another process.
    if running()?.is_some_and(|now| now.pid == r.pid) {
        // SAFETY: as above.
        unsafe { libc::kill(r.pid, libc::SIGKILL) };
    }
    Ok(Some(r.pid))
}

/// Options of `netpath daemon`.
#[derive(Debug, Clone)]
pub struct Options {
    pub netns: Option<String>,
    pub interval: Duration,
    /// Serve Prometheus metrics here (recorded for later daemons); `None`:
    /// where `up --metrics` recorded, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

pub use crate::sweeper::{Report, Sweep, report, report_path};

/// What [`refresh`] changed.
#[derive(Debug, Default)]
pub struct RefreshReport {
    pub changes: Vec<IfaceChange>,
    pub detached: Vec<u32>,
    /// Host addresses that now overlap a managed subnet.
    pub conflicts: Vec<String>,
}

/// The daemon's re-apply after links or addresses changed: `Ok(None)` when
/// another command held the lock for two seconds (try again later).
pub async fn refresh(
    nl: &Netlink,
    loaded: &mut Option<Datapath>,
    verify: &reconcile::Verify,
) -> Result<Option<RefreshReport>> {
    // Commands hold the lock for milliseconds: poll for it rather than
    // block, so the daemon keeps answering signals.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let _lock = loop {
        match state::try_lock()? {
            None => return Ok(None),
            Some(Some(l)) => break l,
            Some(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Some(None) => return Ok(None),
        }
    };
    let state = state::StateDir::current()?;
    if !state.exists() {
        return Ok(Some(RefreshReport::default()));
    }
    if resize::repair(nl, &state).await? {
        // The programs changed under the daemon's loaded ones.
        *loaded = None;
    }
    let dp = Datapath::current(&state, loaded, true)?
        .context("this build's programs could not be loaded")?;
    let r = reconcile::reapply_with(nl, &state, dp, verify).await?;
    let conflicts = reconcile::address_conflicts(nl, &dp.maps).await?;
    Ok(Some(RefreshReport {
        changes: r.changes,
        detached: r.detached,
        conflicts,
    }))
}

/// A task that ends when its handle goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a starting daemon tries for its pid file's lock before it
/// takes a held lock for another daemon's.
const LOCK_PATIENCE: Duration = Duration::from_millis(200);

/// How long a burst of link and address events may pause before the
/// daemon re-applies, and how long it waits for one to end at most.
const BURST_QUIET: Duration = Duration::from_millis(20);
const BURST_LIMIT: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM/SIGINT, the namespace's state goes away, or
/// the named namespace is deleted.
pub async fn run(opts: Options) -> Result<()> {
    let cookie = netns::cookie()?;
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let mut pidfile = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(pid_path(cookie))
        .context("opening the daemon pid file")?;
    // Whoever asks whether a daemon runs (`watcher::running`: `up`
    // polling for this very daemon every 2 ms, `status`) takes the lock
    // for a moment when it is free: a held lock is only another daemon's
    // once it stays held (CI saw `up` report "did not start" when this
    // daemon gave up on the first try).
    let deadline = Instant::now() + LOCK_PATIENCE;
    while !try_flock(&pidfile)? {
        if Instant::now() >= deadline {
            bail!("a netpath daemon already runs for this network namespace");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // One write, so a reader sees all of it or nothing.
    pidfile.set_len(0)?;
    pidfile.rewind()?;
    pidfile.write_all(format!("{} {}\n", std::process::id(), build_id()).as_bytes())?;
    info!(
        "netpath daemon {} started (pid {}, netns cookie {cookie})",
        build_id(),
        std::process::id()
    );

    let state = state::StateDir::current()?;
    if !state.exists() {
        bail!("nothing is up in this network namespace");
    }
    let metrics = match opts.metrics {
        Some(a) => {
            record_metrics(a)?;
            Some(a)
        }
        None => recorded_metrics()?,
    };
    // The report says where metrics are served only once the listener is
    // bound; `up --metrics` checks it. Dropped (and so stopped) with the
    // daemon.
    let mut serving = None;
    let _server = match metrics {
        Some(addr) => match crate::metrics::bind(addr).await {
            Ok(listener) => {
                info!("serving metrics on http://{addr}/metrics");
                serving = Some(addr.to_string());
                Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                    listener,
                    state.clone(),
                ))))
            }
            Err(e) => {
                warn!("{e:#}");
                None
            }
        },
        None => None,
    };
    let nl = Netlink::new()?;
    // Link and address events (both families): new ports, enslaving,
    // address changes (an uplink's NAT66 address, a bridge's link-local
    // address, which no port may take); and TC events: a filter or clsact
    // qdisc removed by someone else (`tc qdisc del dev c1h clsact`) leaves
    // a port unguarded until the next re-apply, which then must not be
    // skipped (see `forces_reapply`).
    let (conn, _, nl_events) = rtnetlink::new_multicast_connection(&[
        rtnetlink::MulticastGroup::Link,
        rtnetlink::MulticastGroup::Ipv4Ifaddr,
        rtnetlink::MulticastGroup::Ipv6Ifaddr,
        rtnetlink::MulticastGroup::Tc,
    ])
    .context("subscribing to link, address and TC events")?;
    tokio::spawn(conn);
    let must_reapply = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The managed bridges, as of the last re-apply: of link-local IPv6
    // address events only theirs matter (every new port's veth gets one,
    // which would only stretch the burst the port's attachment waits for).
    let bridges = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    // The ids of the programs loaded here, as of the last re-apply, and
    // the interfaces where a filter event put something else in netpath's
    // place since (asked about by the next re-apply).
    let ours = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let displaced = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut nl_events = nl_events
        .filter({
            let bridges = bridges.clone();
            move |(msg, _)| futures::future::ready(!port_link_local(msg, &bridges))
        })
        .inspect({
            let flag = must_reapply.clone();
            let (ours, displaced) = (ours.clone(), displaced.clone());
            move |(msg, _)| {
                if forces_reapply(msg) {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(index) = displacing(msg, &ours)
                    && let Ok(mut d) = displaced.lock()
                {
                    d.insert(index);
                }
            }
        });
    let mut stop = events::Stop::new()?;
    // The first tick at once, then after each sweep the sweeper's interval.
    let mut next_tick = tokio::time::Instant::now();
    // Re-apply once at start: things may have changed while no daemon ran.
    let mut dirty = true;
    let mut started = false;
    // Programs and maps stay loaded between sweeps and re-applies (the
    // state directory cannot change under a running daemon: it exits when
    // the state goes).
    let mut loaded = None;
    // Address overlaps already logged.
    let mut conflicts: Vec<String> = Vec::new();
    let mut sweeper = Sweeper::new(serving);
    let reason = loop {
        tokio::select! {
            why = stop.recv() => break why,
            ev = nl_events.next() => {
                // Changes come in bursts (a veth pair, its addresses): let
                // the burst finish, then re-apply once.
                if ev.is_none()
                    || events::settle(&mut nl_events, BURST_QUIET, BURST_LIMIT).await.1
                {
                    break "the netlink event stream ended";
                }
                dirty = true;
            }
            () = tokio::time::sleep_until(next_tick) => {
                if !state.exists() {
                    break "no networks left in this namespace";
                }
                if let Some(name) = &opts.netns {
                    let n = name.clone();
                    // Only a namespace that is gone (or replaced) ends the
                    // daemon; a check that fails for another reason (out
                    // of file descriptors, say) is said and tried again.
                    match netns::run_in(&n, netns::cookie) {
                        Ok(Ok(c)) if c == cookie => {}
                        Ok(Ok(_)) => break "its network namespace was replaced",
                        _ if !netns::path_of(&n).exists() => break "its network namespace is gone",
                        Ok(Err(e)) => warn!("checking the network namespace: {e:#}"),
                        Err(e) => warn!("checking the network namespace: {e:#}"),
                    }
                }
                match sweeper.tick(&state, &mut loaded, opts.interval) {
                    Ok(false) => {}
                    Ok(true) => {
                        if let Err(e) = sweeper.write(cookie) {
                            warn!("writing the sweep report: {e:#}");
                        }
                    }
                    Err(e) => warn!("sweep failed: {e:#}"),
                }
                next_tick = tokio::time::Instant::now() + sweeper.interval(opts.interval);
            }
        }
        if !dirty || !state.exists() {
            continue;
        }
        // Taken now, given back when the re-apply does not happen (lock
        // busy, an error), so a removal is never forgotten.
        let forced = must_reapply.swap(false, std::sync::atomic::Ordering::Relaxed);
        let mut suspects: BTreeSet<u32> = displaced
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        // Filters another build of netpath put in place (an upgrade's `up`,
        // which replaces this daemon next) are not this one's to take back.
        if let Some(other) = reconcile::seen_build().filter(|b| *b != build_id())
            && !suspects.is_empty()
        {
            tracing::debug!("filters put in place by netpath {other}: left to it");
            suspects.clear();
        }
        let give_back = |suspects: BTreeSet<u32>| {
            if let Ok(mut d) = displaced.lock() {
                d.extend(suspects);
            }
        };
        // Events a command's own reconcile already covered (its bridge,
        // the ports it attached): nothing to do, and no re-apply holding
        // the lock while the next command waits for it.
        if started && !forced && suspects.is_empty() && already_seen(&nl).await {
            tracing::debug!("link and address events already covered by the last reconcile");
            dirty = false;
            continue;
        }
        tracing::debug!("re-applying after link or address events");
        // Link and address events alone change what the records say; a
        // first re-apply, or one after something went away, asks every
        // interface.
        let verify = if started && !forced {
            reconcile::Verify::Changed {
                nets: BTreeSet::new(),
                ifaces: suspects.clone(),
            }
        } else {
            reconcile::Verify::All
        };
        match refresh(&nl, &mut loaded, &verify).await {
            Ok(Some(r)) => {
                if let (Some(dp), Ok(mut b)) = (&loaded, bridges.lock()) {
                    *b = dp
                        .maps
                        .networks()
                        .map(|n| n.values().map(|i| i.bridge_ifindex).collect())
                        .unwrap_or_default();
                }
                if let (Some(dp), Ok(mut o)) = (loaded.as_mut(), ours.lock()) {
                    *o = dp.program_ids().unwrap_or_default();
                }
                for c in r.changes.iter().filter(|c| c.changed()) {
                    info!("{}: {}", c.name, c.role.as_str());
                }
                if !r.detached.is_empty() {
                    info!("detached {} interface(s)", r.detached.len());
                }
                if r.conflicts != conflicts {
                    for c in &r.conflicts {
                        warn!("{c}: egress to it breaks");
                    }
                    conflicts = r.conflicts;
                }
                dirty = false;
                started = true;
            }
            // Another command holds the lock: try again on the next tick.
            Ok(None) => {
                must_reapply.fetch_or(forced, std::sync::atomic::Ordering::Relaxed);
                give_back(suspects);
            }
            Err(e) => {
                warn!("re-applying networks failed: {e:#}");
                must_reapply.fetch_or(forced, std::sync::atomic::Ordering::Relaxed);
                give_back(suspects);
                dirty = false;
            }
        }
    };
    info!("netpath daemon exits: {reason}");
    // A clean exit leaves nothing behind in /run (a crash leaves the log).
    let _ = std::fs::remove_file(log_path(cookie));
    let _ = std::fs::remove_file(report_path(cookie));
    let _ = std::fs::remove_file(pid_path(cookie));
    let _ = std::fs::remove_file(reconcile::seen_path(cookie));
    Ok(())
}

/// Whether `msg` is a link-local IPv6 address event on an interface that
/// is not a managed bridge (`bridges`): nothing a re-apply reads.
fn port_link_local(
    msg: &rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    bridges: &std::sync::Mutex<BTreeSet<u32>>,
) -> bool {
    use rtnetlink::{
        packet_core::NetlinkPayload,
        packet_route::{AddressFamily, RouteNetlinkMessage as M, address::AddressScope},
    };
    let (NetlinkPayload::InnerMessage(M::NewAddress(a))
    | NetlinkPayload::InnerMessage(M::DelAddress(a))) = &msg.payload
    else {
        return false;
    };
    a.header.family == AddressFamily::Inet6
        && a.header.scope == AddressScope::Link
        && bridges.lock().is_ok_and(|b| !b.contains(&a.header.index))
}

/// The interface of a filter event that puts something other than one of
/// `ours` (the loaded programs' ids) in netpath's place: a foreign
/// `tc filter replace` deletes nothing, and links and addresses stay as
/// they were, so only this event tells.
fn displacing(
    msg: &rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    ours: &std::sync::Mutex<BTreeSet<u32>>,
) -> Option<u32> {
    use rtnetlink::{packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage as M};
    let NetlinkPayload::InnerMessage(M::NewTrafficFilter(m)) = &msg.payload else {
        return None;
    };
    let ours = ours.lock().ok()?;
    crate::tcfilter::displaces_ours(m, &ours)
        .then(|| u32::try_from(m.header.index).ok())
        .flatten()
}

/// Events after which the digest of links and addresses cannot tell that
/// nothing is to do: a TC filter or qdisc going away (maybe netpath's), a
/// link deleted (it took its filters along, and one re-created under the
/// same index, name and MAC would leave the digest as it was), and lost
/// events (an overrun).
fn forces_reapply(
    msg: &rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
) -> bool {
    use rtnetlink::{packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage as M};
    matches!(
        msg.payload,
        NetlinkPayload::InnerMessage(
            M::DelTrafficFilter(_) | M::DelQueueDiscipline(_) | M::DelLink(_)
        ) | NetlinkPayload::Overrun(_)
    )
}

/// Whether the links and addresses now are what the last reconcile saw.
async fn already_seen(nl: &Netlink) -> bool {
    let Some(recorded) = reconcile::recorded_seen() else {
        return false;
    };
    match (nl.links().await, nl.addrs().await) {
        (Ok(links), Ok((addrs, addrs6))) => {
            crate::plumbing::digest(&links, &addrs, &addrs6) == recorded
        }
        _ => false,
    }
}
