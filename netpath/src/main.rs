use std::{net::IpAddr, process::ExitCode};

use anyhow::{Result, bail};
use clap::Parser as _;
use netpath::{
    apply,
    attach::Attach,
    cli::{Cli, Command, ConntrackCmd, FilterCmd, NetworkCmd},
    codec, conntrack, ctconfig, daemon,
    down::{self, DownTarget},
    endpoint, filter,
    lab::{bench, demo},
    netns, publish, resize,
    spec::NetworkSpec,
    state::{self, Maps},
    status,
    up::{self, UpArgs},
};

fn main() -> ExitCode {
    // A container runtime runs this binary as its CNI plugin: no clap, no
    // argument, the command in the environment.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return netpath::cni::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    | clap::error::ErrorKind::MissingSubcommand
            ) =>
        {
            eprintln!("netpath: error: a command is needed (see `netpath --help`)");
            return ExitCode::from(2);
        }
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error: clap's message without its usage block.
            let text = e.to_string();
            let problem: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!("netpath: {} (see `netpath --help`)", problem.join(" "));
            // A bad value is bad input (1, like every other refusal); a
            // command line that does not parse is a usage error (2).
            let bad_value = matches!(
                e.kind(),
                clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation
            );
            return ExitCode::from(if bad_value { 1 } else { 2 });
        }
    };
    logging(
        matches!(cli.command, Command::Daemon { .. } | Command::Docker(_)),
        cli.verbose,
    );
    // A one-shot command whose output goes into a closed pipe (`| head`)
    // ends quietly, as other tools do; the long-running ones keep Rust's
    // default (a write error they handle) for their sockets.
    if !matches!(
        cli.command,
        Command::Daemon { .. } | Command::Docker(_) | Command::Bench { .. } | Command::Demo
    ) {
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the whole context chain; an error in an `apply`
            // file as FILE:LINE:COLUMN: message, as compilers tell them.
            match err.downcast_ref::<netpath::config_file::FileError>() {
                Some(e) => eprintln!("{e}"),
                None => eprintln!("netpath: error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Log lines through `tracing`: the long-running commands log to stdout
/// (their log file when `up` starts the daemon) stamped with the
/// monotonic clock, as `conntrack list` and `status` count time, so lines
/// of successive daemons line up, or unstamped under systemd (journald
/// stamps them); the others log to stderr as `netpath: LEVEL …`. The
/// level: `-v` (debug) or `-vv` (trace), else `NETPATH_LOG`, else
/// `RUST_LOG` (a level, or `netpath=LEVEL`), else info; a value that is no
/// level is said once and ignored.
fn logging(long_running: bool, verbose: u8) {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::fmt;
    let parse = |v: &str| {
        let v = v.trim();
        let v = v.strip_prefix("netpath=").unwrap_or(v);
        v.parse::<LevelFilter>().ok()
    };
    let mut bad = Vec::new();
    let mut from_env = |name: &str| {
        let v = std::env::var(name).ok()?;
        let l = parse(&v);
        if l.is_none() {
            bad.push(format!("{name}={v:?}"));
        }
        l
    };
    let level = match verbose {
        0 => {
            let (own, rust) = (from_env("NETPATH_LOG"), from_env("RUST_LOG"));
            own.or(rust).unwrap_or(LevelFilter::INFO)
        }
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let builder = fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match (long_running, journald) {
        (true, true) => builder.without_time().with_writer(std::io::stdout).init(),
        (true, false) => builder
            .with_timer(Stamp::Monotonic)
            .with_writer(std::io::stdout)
            .init(),
        (false, _) => builder
            .with_timer(Stamp::Tool)
            .with_writer(std::io::stderr)
            .init(),
    }
    for v in bad {
        tracing::warn!("{v} is not a level (off, error, warn, info, debug, trace): ignored");
    }
}

/// What starts a log line.
enum Stamp {
    /// Seconds of the monotonic clock, to the millisecond.
    Monotonic,
    /// The tool's name, as its error lines start.
    Tool,
}

impl tracing_subscriber::fmt::time::FormatTime for Stamp {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match self {
            Self::Monotonic => {
                let ms = conntrack::monotonic_ns() / 1_000_000;
                write!(w, "[{}.{:03}]", ms / 1000, ms % 1000)
            }
            Self::Tool => write!(w, "netpath:"),
        }
    }
}

fn attach_word(a: Attach) -> &'static str {
    match a {
        Attach::Created => "attached",
        Attach::Updated => "replaced by this build",
        Attach::Unchanged => "unchanged",
        Attach::Removed => "an earlier build's program removed (none needed)",
        Attach::NotUsed => "none needed",
        Attach::Kept => "kept (not asked: unchanged since the last reconcile)",
    }
}

fn run(cli: Cli) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (needs CAP_NET_ADMIN, CAP_BPF and CAP_SYS_ADMIN)");
    }
    if let Command::Demo = cli.command {
        return demo::run();
    }
    if let Command::Bench {
        quick,
        reps,
        out,
        baseline,
        daemon_only,
        cni_only,
        docker_only,
        conntrack_only,
        control_only,
    } = &cli.command
    {
        let res = bench::run(&bench::Options {
            quick: *quick,
            reps: *reps as usize,
            out: out.clone(),
            baseline: baseline.clone(),
            daemon_only: *daemon_only,
            cni_only: *cni_only,
            docker_only: *docker_only,
            conntrack_only: *conntrack_only,
            control_only: *control_only,
        })?;
        print!("{}", bench::table(&res));
        println!(
            "\nwrote {0}/bench.json, {0}/bench.md, {0}/bench.svg",
            out.display()
        );
        return Ok(());
    }
    // Enter the namespace before any thread or socket exists: every thread
    // the runtime starts inherits it.
    if let Some(name) = &cli.netns {
        netns::enter(name)?;
    }
    let netns_name = cli.netns.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Up(up) => {
                let (v4, v6) = netpath::net6::split(&up.subnets, &up.gateways)?;
                let args = UpArgs {
                    spec: NetworkSpec::with(&up.bridge, v4)?,
                    v6,
                    options: up.options(),
                    uplinks: up.uplinks.clone(),
                    cgroup: up.cgroup.clone(),
                    trusted: up.trusted.clone(),
                    no_masquerade_to: up.no_masquerade_to.clone(),
                };
                let r = up::up(&args).await?;
                let verb = if r.already_up { "already up" } else { "up" };
                println!(
                    "network {} {verb} (id {}{}{})",
                    args.spec.bridge,
                    r.net_id,
                    if r.created_bridge {
                        ", bridge created"
                    } else {
                        ""
                    },
                    if r.added_gateway {
                        ", gateway address added"
                    } else {
                        ""
                    },
                );
                if !args.no_masquerade_to.is_empty() {
                    let list: Vec<String> = args
                        .no_masquerade_to
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    println!("  no masquerade to: {}", list.join(", "));
                }
                if !args.trusted.is_empty() {
                    println!("  trusted host interfaces: {}", args.trusted.join(", "));
                }
                for c in r.changes.iter().filter(|c| c.changed()) {
                    let was = match c.previous {
                        Some(p) if p != c.role => format!(" (was {})", p.as_str()),
                        _ => String::new(),
                    };
                    println!(
                        "  {}: {}{was}, ingress {}, egress {}",
                        c.name,
                        c.role.as_str(),
                        attach_word(c.ingress),
                        attach_word(c.egress)
                    );
                }
                if !r.detached.is_empty() {
                    println!(
                        "  detached from {} interface(s) no longer managed",
                        r.detached.len()
                    );
                }
                if r.socket_hooks == Some(netpath::sockhooks::Hooks::Attached) {
                    println!(
                        "  socket hooks attached to cgroup {}",
                        args.cgroup
                            .as_ref()
                            .map_or_else(|| "v2 root".to_owned(), |p| p.display().to_string())
                    );
                }
                if !up.no_daemon {
                    if let Some(a) = up.metrics {
                        daemon::record_metrics(a)?;
                    }
                    match daemon::ensure_running(netns_name.as_deref())
                        .map_err(|e| e.context("the network is up, but"))?
                    {
                        daemon::Start::AlreadyRunning(_) => {}
                        daemon::Start::Started(pid) => println!("  daemon started (pid {pid})"),
                        daemon::Start::Replaced(pid) => {
                            println!("  daemon of another build replaced (pid {pid})")
                        }
                        daemon::Start::Restarted(pid) => {
                            println!("  daemon restarted to serve metrics (pid {pid})")
                        }
                    }
                    if let Some(a) = up.metrics {
                        daemon::await_metrics(a)
                            .map_err(|e| e.context("the network is up, but"))?;
                        println!("  metrics at http://{a}/metrics");
                    }
                    // No daemon of another build needs its pins any more.
                    up::prune_other_builds()?;
                }
                Ok(())
            }
            Command::Docker(d) => {
                netpath::docker::run(netpath::docker::Options {
                    host: d.host,
                    cgroup: d.cgroup,
                    uplinks: d.uplinks,
                    once: d.once,
                    resync: std::time::Duration::from_secs(d.resync),
                    ip_masq: d.ip_masq,
                    netns: netns_name,
                })
                .await
            }
            Command::Down(down) => {
                let target = match down.bridge {
                    Some(b) => DownTarget::Bridge(b),
                    None => DownTarget::All,
                };
                let r = down::down(&target).await?;
                for b in &r.removed {
                    println!("network {b} down");
                }
                for b in &r.deleted_bridges {
                    println!("  bridge {b} deleted");
                }
                if r.unpinned_all {
                    println!("  no networks left: programs detached, state unpinned");
                    if let Some(pid) = daemon::stop()? {
                        println!("  daemon stopped (pid {pid})");
                    }
                }
                if r.unpinned_all || matches!(target, DownTarget::All) {
                    daemon::forget_metrics()?;
                }
                Ok(())
            }
            Command::Status { json } => {
                let s = status::status().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", s.render());
                }
                Ok(())
            }
            Command::Conntrack(ConntrackCmd::Config {
                timeouts,
                nat_ports,
                max,
            }) => {
                // Settings first (they change nothing but numbers), then the size.
                conntrack_config(&timeouts, nat_ports.as_deref(), max.is_none())?;
                if let Some(flows) = max {
                    let r = resize::resize(flows).await?;
                    if r.from == r.to {
                        println!("max-flows={} (unchanged)", r.to);
                    } else {
                        println!(
                            "max-flows={} (was {}): {} entries kept{}",
                            r.to,
                            r.from,
                            r.copied,
                            if r.left_out > 0 {
                                format!(", {} did not fit", r.left_out)
                            } else {
                                String::new()
                            }
                        );
                    }
                }
                Ok(())
            }
            Command::Conntrack(ConntrackCmd::List { json }) => conntrack_list(json),
            Command::Conntrack(ConntrackCmd::Flush(f)) => conntrack_flush(&f),
            Command::Publish { host, container } => {
                let n = publish::publish(&host, &container)?;
                println!(
                    "published {host} -> {container} ({n} port{})",
                    if n == 1 { "" } else { "s" }
                );
                Ok(())
            }
            Command::Unpublish { host } => {
                let r = publish::unpublish(&host)?;
                println!(
                    "unpublished {host} ({} port{}, {} conntrack flow{} removed)",
                    r.ports,
                    if r.ports == 1 { "" } else { "s" },
                    r.flows,
                    if r.flows == 1 { "" } else { "s" }
                );
                Ok(())
            }
            Command::Ports { json } => {
                let m = publish::list()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&m)?);
                } else {
                    print!("{}", publish::render(&m));
                }
                Ok(())
            }
            Command::Connect(c) => {
                let args = endpoint::ConnectArgs::named(c.netns, c.bridge, c.ip, c.ifname);
                let r = endpoint::connect(&args).await?;
                // The first line names the IPv4 address (the IPv6 one on
                // an IPv6-only network); a dual-stack one adds a line.
                let first =
                    r.v4.map(|(a, p, g)| (IpAddr::V4(a), p, IpAddr::V4(g)))
                        .or(r.v6.map(|(a, p, g)| (IpAddr::V6(a), p, IpAddr::V6(g))));
                if let Some((a, p, g)) = first {
                    println!(
                        "{} connected to {}: {} {a}/{p} mac {} via {g} (host end {})",
                        args.netns,
                        args.bridge,
                        args.ifname,
                        codec::fmt_mac(&r.mac),
                        r.host_ifname
                    );
                }
                if let (Some(_), Some((a, p, g))) = (r.v4, r.v6) {
                    println!("  {}: {a}/{p} via {g}", args.ifname);
                }
                Ok(())
            }
            Command::Disconnect { netns, bridge } => {
                let addr = endpoint::disconnect(&netns, &bridge).await?;
                println!("{netns} disconnected from {bridge} ({addr} is free)");
                Ok(())
            }
            Command::Network(NetworkCmd::Set {
                bridge,
                icc,
                gateway_mode,
            }) => {
                if icc.is_none() && gateway_mode.is_none() {
                    bail!("nothing to set: give --icc=BOOL or --gateway-mode=MODE");
                }
                up::network_set(&bridge, icc, gateway_mode)?;
                if let Some(icc) = icc {
                    println!("network {bridge}: icc {}", if icc { "on" } else { "off" });
                }
                if let Some(m) = gateway_mode {
                    println!("network {bridge}: gateway mode {}", m.as_str());
                }
                Ok(())
            }
            Command::Filter(cmd) => filter_cmd(cmd),
            Command::Apply {
                file,
                cgroup,
                no_daemon,
            } => {
                let desired = apply::read(&file)?;
                let r = apply::apply(&desired, cgroup).await?;
                if r.lines.is_empty() {
                    println!("no changes");
                }
                for l in &r.lines {
                    println!("{l}");
                }
                if r.networks_left && !no_daemon {
                    match daemon::ensure_running(netns_name.as_deref())
                        .map_err(|e| e.context("the file is applied, but"))?
                    {
                        daemon::Start::AlreadyRunning(_) => {}
                        daemon::Start::Started(pid) => println!("  daemon started (pid {pid})"),
                        daemon::Start::Replaced(pid) | daemon::Start::Restarted(pid) => {
                            println!("  daemon restarted (pid {pid})")
                        }
                    }
                    up::prune_other_builds()?;
                } else if !r.networks_left {
                    if let Some(pid) = daemon::stop()? {
                        println!("  no networks left: daemon stopped (pid {pid})");
                    }
                    daemon::forget_metrics()?;
                }
                Ok(())
            }
            Command::Export => {
                print!("{}", apply::export().await?);
                Ok(())
            }
            Command::Top { interval_ms } => {
                netpath::top::run(std::time::Duration::from_millis(interval_ms)).await
            }
            Command::Monitor(m) => {
                netpath::monitor::run(netpath::monitor::Options {
                    kinds: m.events,
                    network: m.network,
                    reason: m.reason,
                    host: m.host,
                    port: m.port,
                    json: m.json,
                    count: m.count,
                })
                .await
            }
            Command::Daemon {
                interval_ms,
                metrics,
            } => {
                daemon::run(daemon::Options {
                    netns: netns_name,
                    interval: std::time::Duration::from_millis(interval_ms),
                    metrics,
                })
                .await
            }
            Command::Demo | Command::Bench { .. } => unreachable!("handled above"),
        }
    })
}

fn filter_cmd(cmd: FilterCmd) -> Result<()> {
    match cmd {
        FilterCmd::Add { sel, verdict } => match filter::add(&sel.selectors(), verdict)? {
            filter::Added::New(id) => println!("filter rule {id} added"),
            filter::Added::Present(id) => println!("filter rule {id} is already there"),
        },
        FilterCmd::Del { sel } => {
            let id = filter::del(&sel.selectors())?;
            println!("filter rule {id} deleted");
        }
        FilterCmd::List { json } => {
            let rules = filter::list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else {
                print!("{}", filter::render(&rules));
            }
        }
    }
    Ok(())
}

/// `conntrack config`: applies the settings given and shows them all
/// (with the table's size unless a resize follows and says it).
fn conntrack_config(timeouts: &[String], nat_ports: Option<&str>, show_size: bool) -> Result<()> {
    let _lock = state::lock(false)?;
    let (state, mut maps) = Maps::open_current()?;
    let mut cfg = maps.config()?;
    if !timeouts.is_empty() || nat_ports.is_some() {
        ctconfig::apply_settings(&mut cfg, timeouts, nat_ports)?;
        maps.set_config(&cfg)?;
    }
    print!("{}", ctconfig::render_config(&cfg));
    if show_size {
        println!(
            "max-flows={}",
            netpath_common::ct::fill::max_flows(Maps::ct_capacity(&state.maps_dir())?)
        );
    }
    Ok(())
}

fn conntrack_list(json: bool) -> Result<()> {
    let mut maps = Maps::open_current()?.1;
    let cfg = maps.config()?;
    let flows = conntrack::flows(&maps, &cfg, conntrack::monotonic_ns())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
    } else {
        print!("{}", conntrack::render(&flows));
    }
    Ok(())
}

fn conntrack_flush(f: &netpath::cli::FlushCmd) -> Result<()> {
    let (src, dst) = conntrack::flush_addresses(f.src, f.dst)?;
    let filter = conntrack::Filter {
        src,
        dst,
        proto: f.proto.as_deref().map(ctconfig::parse_proto).transpose()?,
        port: f.port,
        network: None,
        published: None,
    };
    let _lock = netpath::state::lock(false)?;
    let mut dp = netpath::attach::Datapath::open_current()?.1;
    let n = conntrack::flush(&mut dp, &filter)?;
    println!("netpath conntrack: {n} flow entries have been deleted.");
    Ok(())
}
