//! `netpath docker`: the drop-in for dockerd's iptables path. Follows the
//! Docker Engine API (bollard) and keeps netpath's networks, published
//! ports and port bindings equal to dockerd's bridge networks and running
//! containers: at start (whatever happened while it was not running), after
//! every container/network event, and every `--resync` interval as a
//! safety net. What it made is marked as dockerd's (`net_flags::DOCKER`,
//! `owner::DOCKER`), so what users set up by hand is never touched.

pub mod model;

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use bollard::{
    Docker,
    query_parameters::{EventsOptions, ListContainersOptions, ListNetworksOptions},
};
use futures::StreamExt as _;
use netpath_common::{net_flags, owner};

use tracing::{debug, info, warn};

use crate::{
    codec, daemon,
    down::{self, DownTarget},
    events, foreign, netns, publish,
    spec::{NetworkOptions, NetworkSpec},
    state::Maps,
    up::{self, UpArgs},
};

/// Options of `netpath docker`.
#[derive(Clone, Debug)]
pub struct Options {
    /// unix:///var/run/docker.sock or a plain socket path.
    pub host: String,
    pub cgroup: Option<PathBuf>,
    pub uplinks: Vec<String>,
    /// Reconcile once and exit.
    pub once: bool,
    pub resync: Duration,
    /// Masquerade dockerd's default bridge (dockerd's `--ip-masq`).
    pub ip_masq: bool,
    /// The namespace netpath acts in (for the daemon it starts).
    pub netns: Option<String>,
}

/// The socket path of a `--host` value.
pub fn socket_path(host: &str) -> Result<PathBuf> {
    let path = match host.split_once("://") {
        Some(("unix", p)) => p,
        Some((scheme, _)) => {
            bail!("--host {host}: only unix:// sockets are supported, not {scheme}://")
        }
        None => host,
    };
    if !path.starts_with('/') {
        bail!("--host {host}: the socket path must be absolute");
    }
    Ok(PathBuf::from(path))
}

async fn connect(host: &str) -> Result<Docker> {
    let path = socket_path(host)?;
    let docker =
        Docker::connect_with_unix(&path.to_string_lossy(), 30, bollard::API_DEFAULT_VERSION)
            .with_context(|| format!("connecting to dockerd at {}", path.display()))?;
    // Speak the engine's API version (dockerd 20.10 is API 1.41).
    docker
        .negotiate_version()
        .await
        .with_context(|| format!("asking dockerd at {} for its API version", path.display()))
}

/// What one reconcile saw and changed, for the log.
#[derive(Debug, Default)]
pub struct Report {
    pub networks_up: Vec<String>,
    pub networks_down: Vec<String>,
    pub published: Vec<String>,
    pub unpublished: u32,
    pub purged_flows: usize,
    pub bound: Vec<String>,
    pub released: usize,
    /// Problems that did not stop the rest (one line each).
    pub problems: Vec<String>,
}

impl Report {
    /// What a sync of published ports (either family) changed.
    fn add_synced<P: std::fmt::Display>(&mut self, synced: publish::Synced<P>) {
        self.published
            .extend(synced.added.iter().map(ToString::to_string));
        self.unpublished += synced.removed.ports;
        self.purged_flows += synced.removed.flows;
        self.problems.extend(
            synced
                .failed
                .iter()
                .map(|(p, why)| format!("publish {p}: {why}")),
        );
    }

    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut say = |what: &str, items: &[String]| {
            if !items.is_empty() {
                out.push(format!("{what}: {}", items.join(", ")));
            }
        };
        say("network up", &self.networks_up);
        say("network down", &self.networks_down);
        say("published", &self.published);
        say("bound", &self.bound);
        if self.unpublished > 0 {
            out.push(format!(
                "unpublished {} port(s), {} flow(s) purged",
                self.unpublished, self.purged_flows
            ));
        }
        if self.released > 0 {
            out.push(format!("released {} binding(s)", self.released));
        }
        out.extend(self.problems.iter().map(|p| format!("problem: {p}")));
        out
    }
}

/// Reads dockerd's bridge networks and running containers.
async fn observe(
    docker: &Docker,
    ip_masq: bool,
) -> Result<(Vec<model::Net>, Vec<model::Container>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut nets = Vec::new();
    for n in docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .context("listing dockerd's networks")?
    {
        match model::net_from_api(&n, ip_masq) {
            Ok(Some(net)) => {
                problems.extend(net.notes.iter().cloned());
                nets.push(net);
            }
            Ok(None) => {}
            Err(why) => problems.push(why),
        }
    }
    let mut containers = Vec::new();
    let running = docker
        .list_containers(None::<ListContainersOptions>)
        .await
        .context("listing dockerd's containers")?;
    for c in running {
        let Some(id) = c.id else { continue };
        match docker.inspect_container(&id, None).await {
            Ok(info) => containers.push(model::container_from_api(&info)),
            // Gone between the list and the inspect: its event follows.
            Err(e) => problems.push(format!("inspecting container {id}: {e}")),
        }
    }
    Ok((nets, containers, problems))
}

/// dockerd leaves the gateway out of its default bridge's IPAM data: it is
/// the address dockerd put on the bridge (`--bip`).
async fn bridge_gateways(nets: &mut [model::Net]) -> Result<()> {
    if nets.iter().all(|n| n.gateway.is_some()) {
        return Ok(());
    }
    let nl = crate::plumbing::Netlink::new()?;
    let links = nl.links().await?;
    let addrs = nl.ipv4_addrs().await?;
    for n in nets.iter_mut().filter(|n| n.gateway.is_none()) {
        let Some(bridge) = links.iter().find(|l| l.name == n.bridge) else {
            continue;
        };
        n.gateway = addrs
            .iter()
            .find(|a| a.index == bridge.index && n.subnet.contains(&a.addr))
            .map(|a| a.addr);
    }
    Ok(())
}

/// Makes netpath's state equal to dockerd's, carrying on past problems of
/// one network or container.
pub async fn reconcile(docker: &Docker, opts: &Options) -> Result<Report> {
    let (mut nets, containers, problems) = observe(docker, opts.ip_masq).await?;
    bridge_gateways(&mut nets).await?;
    let want = model::desired(nets, &containers);
    let mut report = Report {
        problems,
        ..Default::default()
    };
    report.problems.extend(want.skipped.iter().cloned());
    // dockerd's networks as netpath network specs (one it cannot take,
    // such as a subnet netpath refuses, is a problem, not a stop).
    let mut args: Vec<UpArgs> = Vec::new();
    for n in &want.nets {
        match NetworkSpec::new(&n.bridge, n.subnet, n.gateway) {
            Ok(spec) => args.push(UpArgs {
                v6: n.v6,
                spec,
                options: NetworkOptions {
                    masquerade: n.masquerade,
                    icc: n.icc,
                    internal: n.internal,
                    gateway_mode: n.gateway_mode,
                    docker: true,
                    apply: false,
                },
                uplinks: opts.uplinks.clone(),
                cgroup: opts.cgroup.clone(),
                trusted: n.trusted.clone(),
                no_masquerade_to: Vec::new(),
            }),
            Err(e) => report.problems.push(format!("network {}: {e:#}", n.name)),
        }
    }

    // Networks: dockerd's that went (or changed) go down first, so a
    // re-created network may take the subnet back.
    let current = Maps::open_current().ok().map(|(_, m)| m);
    if let Some(maps) = &current {
        for (_, info) in maps.networks()? {
            if info.flags & net_flags::DOCKER == 0 {
                continue;
            }
            let bridge = codec::ifname_from_bytes(&info.bridge_name);
            let keep = match args.iter().find(|a| a.spec.bridge == bridge) {
                Some(a) => a.is_recorded(maps).unwrap_or(false),
                None => false,
            };
            if !keep {
                match down::down(&DownTarget::Bridge(bridge.clone())).await {
                    Ok(_) => report.networks_down.push(bridge),
                    Err(e) => report.problems.push(format!("down {bridge}: {e:#}")),
                }
            }
        }
    }
    let current = Maps::open_current().ok().map(|(_, m)| m);
    let mut any_up = current.is_some();
    // The networks not up as dockerd has them, brought up together: one
    // lock and one reconcile for all.
    let missing: Vec<UpArgs> = args
        .iter()
        .filter(|a| {
            !current
                .as_ref()
                .is_some_and(|m| a.is_recorded(m).unwrap_or(false))
        })
        .cloned()
        .collect();
    if !missing.is_empty() {
        match up::up_many(&missing).await {
            Ok(results) => {
                for (a, r) in missing.iter().zip(results) {
                    match r {
                        Ok(_) => {
                            any_up = true;
                            report.networks_up.push(a.spec.bridge.clone());
                        }
                        Err(e) => report.problems.push(format!("up {}: {e:#}", a.spec.bridge)),
                    }
                }
            }
            Err(e) => report.problems.push(format!("up: {e:#}")),
        }
    }
    drop(current);
    if !any_up {
        // No bridge network netpath could take: nothing to publish or bind.
        return Ok(report);
    }
    if !report.networks_up.is_empty() {
        match daemon::ensure_running(opts.netns.as_deref()) {
            Ok(_) => {}
            Err(e) => report.problems.push(format!("starting the daemon: {e:#}")),
        }
    }

    let (synced, synced6) = publish::sync_owned_both(owner::DOCKER, &want.ports, &want.ports6)?;
    report.add_synced(synced);
    report.add_synced(synced6);

    let bound = foreign::bind_owned(owner::DOCKER, &want.endpoints).await?;
    report.bound = bound
        .bound
        .iter()
        .map(|(name, addr)| format!("{name} {addr}"))
        .collect();
    report.released = bound.released;
    report.problems.extend(
        bound
            .failed
            .iter()
            .map(|(name, why)| format!("bind {name}: {why}")),
    );
    Ok(report)
}

/// How long a burst of dockerd's events may pause before the reconcile,
/// and how long it waits for one to end at most.
const BURST_QUIET: Duration = Duration::from_millis(50);
const BURST_LIMIT: Duration = Duration::from_secs(2);

/// Events after which dockerd's networking may differ.
fn relevant(ev: &bollard::models::EventMessage) -> bool {
    use bollard::models::EventMessageTypeEnum as T;
    let action = ev.action.as_deref().unwrap_or("");
    match ev.typ {
        Some(T::NETWORK) => true,
        Some(T::CONTAINER) => matches!(action, "start" | "die" | "destroy" | "pause" | "unpause"),
        _ => false,
    }
}

/// The problems of the last reconcile: each is logged at warning level
/// when it first appears (not again at every resync) and the current set
/// is kept in [`crate::sys::docker_problems_path`] for `status`.
#[derive(Default)]
struct Problems {
    seen: BTreeSet<String>,
    /// Whether the file was written (so it is removed at the end).
    written: bool,
}

impl Problems {
    fn path() -> Result<PathBuf> {
        Ok(crate::sys::docker_problems_path(netns::cookie()?))
    }

    /// Records `now`; returns whether `p` is new.
    fn update(&mut self, now: BTreeSet<String>) {
        if now == self.seen && (self.written || now.is_empty()) {
            return;
        }
        self.seen = now;
        if let Err(e) = self.write() {
            warn!("recording the problems for status: {e:#}");
        }
    }

    fn write(&mut self) -> Result<()> {
        let path = Self::path()?;
        std::fs::create_dir_all(crate::sys::RUN_DIR)?;
        // Written whole and renamed: `status` never reads half a file.
        let tmp = path.with_extension("problems.tmp");
        let mut text = String::new();
        for p in &self.seen {
            text.push_str(p);
            text.push('\n');
        }
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        self.written = true;
        Ok(())
    }

    /// Removes the file: problems of a stopped follower are not current.
    fn clear(&self) {
        if !self.written {
            return;
        }
        if let Ok(path) = Self::path()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!("removing {}: {e}", path.display());
        }
    }
}

async fn reconcile_and_log(
    docker: &Docker,
    opts: &Options,
    why: &str,
    problems: &mut Problems,
) -> Result<()> {
    let started = std::time::Instant::now();
    let r = reconcile(docker, opts).await?;
    let changes: Vec<String> = r
        .lines()
        .into_iter()
        .filter(|l| !l.starts_with("problem: "))
        .collect();
    let now: BTreeSet<String> = r.problems.iter().cloned().collect();
    let fresh: Vec<&String> = now.difference(&problems.seen).collect();
    if !changes.is_empty() || !fresh.is_empty() || opts.once {
        info!("reconciled ({why}) in {} ms", started.elapsed().as_millis());
    }
    for l in &changes {
        info!("  {l}");
    }
    for p in &now {
        if opts.once || fresh.contains(&p) {
            warn!("  problem: {p}");
        } else {
            debug!("  problem (still): {p}");
        }
    }
    problems.update(now);
    Ok(())
}

/// Runs until SIGTERM/SIGINT (or once with `--once`). dockerd may start
/// later or restart: the client reconnects every second and reconciles
/// each time it gets through.
pub async fn run(opts: Options) -> Result<()> {
    let mut problems = Problems::default();
    let r = follow(&opts, &mut problems).await;
    problems.clear();
    r
}

async fn follow(opts: &Options, problems: &mut Problems) -> Result<()> {
    socket_path(&opts.host)?;
    let mut stop = events::Stop::new()?;
    let mut waiting_said = false;
    loop {
        let docker = match connect(&opts.host).await {
            Ok(d) => d,
            Err(e) if opts.once => return Err(e),
            Err(e) => {
                if !waiting_said {
                    info!("waiting for dockerd: {e:#}");
                    waiting_said = true;
                }
                tokio::select! {
                    _ = stop.recv() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        waiting_said = false;
        // The event stream only connects when first polled, after the
        // reconcile below: it asks for events since just before that
        // reconcile read dockerd's state, so none in between is lost
        // (replays only cause a reconcile that changes nothing).
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(1));
        let filters: HashMap<String, Vec<String>> = [(
            "type".to_owned(),
            vec!["container".to_owned(), "network".to_owned()],
        )]
        .into();
        let mut stream = docker.events(Some(EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            filters: Some(filters),
            ..Default::default()
        }));
        if opts.once {
            return reconcile_and_log(&docker, opts, "once", problems).await;
        }
        if let Err(e) = reconcile_and_log(&docker, opts, "start", problems).await {
            warn!("reconcile failed: {e:#}");
        }
        let mut resync = tokio::time::interval(opts.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            let why = tokio::select! {
                _ = stop.recv() => return Ok(()),
                _ = resync.tick() => "resync".to_owned(),
                ev = stream.next() => match ev {
                    Some(Ok(ev)) if relevant(&ev) => {
                        let first = format!(
                            "{} {}",
                            ev.action.as_deref().unwrap_or("?"),
                            ev.actor
                                .as_ref()
                                .and_then(|a| a.attributes.as_ref())
                                .and_then(|a| a.get("name"))
                                .map_or("", String::as_str)
                        );
                        // Events come in bursts (connect, start…): let the
                        // burst end, then reconcile once (an ended stream
                        // shows on the next poll).
                        events::settle(&mut stream, BURST_QUIET, BURST_LIMIT).await;
                        first
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        warn!("dockerd's event stream failed: {e}");
                        break;
                    }
                    None => {
                        info!("dockerd's event stream ended");
                        break;
                    }
                },
            };
            if let Err(e) = reconcile_and_log(&docker, opts, &why, problems).await {
                warn!("reconcile failed: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values() {
        assert_eq!(
            socket_path("unix:///var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            socket_path("/run/d.sock").unwrap(),
            PathBuf::from("/run/d.sock")
        );
        assert!(
            format!("{:#}", socket_path("tcp://127.0.0.1:2375").unwrap_err())
                .contains("only unix://")
        );
        assert!(socket_path("unix://relative").is_err());
    }
}
