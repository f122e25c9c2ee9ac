//! `netpath bench`: the same workloads through three copies of one
//! topology — Docker's iptables ruleset, netpath, and bare routing — in one
//! run, arms interleaved, every point repeated; medians, spread and ratios
//! as a markdown table, every sample as JSON, and an SVG chart. With
//! `--baseline BIN` a fourth copy runs another netpath binary at the first
//! scale point (what a change costs); then the daemon's own cost
//! ([`daemon`]) and the control plane.

pub mod arms;
pub mod cni;
pub mod control;
pub mod ctscale;
pub mod daemon;
pub mod docker;
pub mod layout;
pub mod load;
pub mod monitor;
pub mod proxy;
mod report;
mod report_scale;
pub mod ruleset;
pub mod startup;
mod stats;
mod svg;
pub mod v6;
pub mod workloads;

pub use report::table;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use arms::{Arm, ArmLab};
use workloads::{QUICK_WORKLOADS, V6, WORKLOADS, WORKLOADS6, measure};

/// Options of `netpath bench`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Short runs at one scale point, for CI.
    pub quick: bool,
    pub reps: usize,
    pub out: PathBuf,
    /// Another netpath binary to compare with (an older build).
    pub baseline: Option<PathBuf>,
    /// Only the daemon's cost (one netpath copy of the topology).
    pub daemon_only: bool,
    /// Only the CNI pair.
    pub cni_only: bool,
    /// Only the control plane end to end under a real dockerd.
    pub docker_only: bool,
    /// Only conntrack at scale (iptables and netpath copies).
    pub conntrack_only: bool,
    /// Only the control plane (iptables and netpath copies).
    pub control_only: bool,
}

/// One scale point: published ports and managed networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Scale {
    pub ports: u32,
    pub networks: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub scale: Scale,
    pub workload: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub arm: Arm,
    pub rep: usize,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ControlPlane {
    pub arm: Arm,
    pub what: String,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub mode: &'static str,
    pub reps: usize,
    pub machine: BTreeMap<&'static str, String>,
    pub iptables_mirrors: &'static str,
    pub offloads: String,
    pub evidence: Vec<(Arm, Scale, String, u64)>,
    pub control_plane: Vec<ControlPlane>,
    /// Networks added, step by step, per arm (see [`control`]).
    pub network_steps: Vec<control::NetworkStep>,
    /// Ports published, step by step, per arm.
    pub publish_steps: Vec<control::PublishStep>,
    /// The binary of the baseline arm, if one ran.
    pub baseline: Option<String>,
    pub daemon: Vec<daemon::DaemonCost>,
    /// The netpath arm with and without a monitor attached.
    pub monitor: Vec<monitor::MonitorCost>,
    /// The CNI pair (reference plugins against netpath's).
    pub cni: Vec<cni::CniSample>,
    /// The control plane end to end under a real dockerd (full mode and
    /// `--docker-only`).
    pub docker: Vec<docker::DockerStep>,
    /// Conntrack at scale (`--quick`: the memory per flow only).
    pub conntrack_scale: Option<ctscale::CtScale>,
    /// `netpath up`: the first, a later one, an idempotent one.
    pub startup: Vec<startup::StartupSample>,
    pub samples: Vec<Sample>,
}

fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    m.insert(
        "kernel",
        read("/proc/sys/kernel/osrelease").trim().to_owned(),
    );
    m.insert(
        "cpu",
        read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_owned(),
    );
    m.insert(
        "cpus",
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string(),
    );
    m
}

/// `--cni-only`: the CNI pair alone.
fn cni_only(opts: &Options, exe: &std::path::Path, dur: Duration) -> Result<Results> {
    if !std::path::Path::new("/usr/lib/cni/portmap").is_file() {
        bail!("no reference plugins in /usr/lib/cni (containernetworking-plugins)");
    }
    eprintln!("netpath bench: the CNI pair (bridge+portmap vs netpath)");
    let res = Results {
        cni: cni::measure(exe, opts.quick, opts.reps, dur).context("measuring the CNI pair")?,
        ..Results::only(opts, "the reference CNI plugins bridge (ipMasq) + portmap")
    };
    report::write_outputs(&res, &opts.out)?;
    Ok(res)
}

impl Results {
    /// The results of a run that measures one part alone, empty but for
    /// what describes the run.
    fn only(opts: &Options, iptables_mirrors: &'static str) -> Self {
        Self {
            mode: if opts.quick { "quick" } else { "full" },
            reps: opts.reps,
            machine: machine(),
            iptables_mirrors,
            offloads: String::new(),
            evidence: Vec::new(),
            control_plane: Vec::new(),
            network_steps: Vec::new(),
            publish_steps: Vec::new(),
            baseline: None,
            daemon: Vec::new(),
            monitor: Vec::new(),
            cni: Vec::new(),
            docker: Vec::new(),
            conntrack_scale: None,
            startup: Vec::new(),
            samples: Vec::new(),
        }
    }
}

/// `--docker-only`: the control plane end to end under a real dockerd.
fn docker_only(opts: &Options, exe: &std::path::Path) -> Result<Results> {
    if let Some(why) = docker::unavailable() {
        bail!("no dockerd to measure: {why} (cargo xtask setup installs docker.io)");
    }
    eprintln!("netpath bench: the control plane under a real dockerd");
    let res = Results {
        reps: 1,
        docker: docker::measure(exe, opts.quick).context("measuring under dockerd")?,
        ..Results::only(
            opts,
            "dockerd's own iptables path (the installed docker.io)",
        )
    };
    report::write_outputs(&res, &opts.out)?;
    Ok(res)
}

/// Conntrack at scale (full mode; `--quick`: the memory per flow only)
/// and startup, after everything else: both leave the netpath copy
/// changed (a larger table, more networks).
fn scale_and_startup(
    opts: &Options,
    exe: &std::path::Path,
    labs: &mut [ArmLab],
    res: &mut Results,
    dur: Duration,
) -> Result<()> {
    eprintln!("netpath bench: conntrack at scale");
    res.conntrack_scale = Some(if opts.quick {
        ctscale::memory(labs)?
    } else {
        ctscale::measure(labs, false, opts.reps, dur).context("measuring conntrack at scale")?
    });
    eprintln!("netpath bench: startup");
    if let Some(lab) = labs.iter().find(|l| l.arm == Arm::Netpath) {
        res.startup =
            startup::measure(lab, exe, opts.quick, opts.reps).context("measuring startup")?;
    }
    Ok(())
}

/// `--conntrack-only`: conntrack at scale alone, on iptables and netpath
/// copies with the measured port published (`--quick`: a small preload).
fn conntrack_only(
    opts: &Options,
    mut labs: Vec<ArmLab>,
    mut res: Results,
    dur: Duration,
) -> Result<Results> {
    for lab in &mut labs {
        lab.set_ports(1)?;
    }
    eprintln!("netpath bench: conntrack at scale");
    res.conntrack_scale = Some(
        ctscale::measure(&mut labs, opts.quick, opts.reps, dur)
            .context("measuring conntrack at scale")?,
    );
    drop(labs);
    report::write_outputs(&res, &opts.out)?;
    Ok(res)
}

pub fn run(opts: &Options) -> Result<Results> {
    let exe = std::env::current_exe().context("locating the netpath binary")?;
    let (scales, dur, cp_ports, cp_nets) = if opts.quick {
        (
            vec![Scale {
                ports: 1,
                networks: 1,
            }],
            Duration::from_millis(300),
            1000,
            10,
        )
    } else {
        (
            vec![
                Scale {
                    ports: 1,
                    networks: 1,
                },
                Scale {
                    ports: 100,
                    networks: 1,
                },
                Scale {
                    ports: 1000,
                    networks: 1,
                },
                Scale {
                    ports: layout::MOST_PORTS,
                    networks: 1,
                },
                Scale {
                    ports: 1,
                    networks: 10,
                },
                Scale {
                    ports: 1,
                    networks: 100,
                },
            ],
            Duration::from_secs(1),
            layout::MOST_PORTS,
            100,
        )
    };
    if opts.cni_only {
        return cni_only(opts, &exe, dur);
    }
    if opts.docker_only {
        return docker_only(opts, &exe);
    }
    eprintln!("netpath bench: building three copies of the topology (iptables, netpath, bare)");
    let mut labs = Vec::new();
    let arms: &[Arm] = if opts.daemon_only {
        &[Arm::Netpath]
    } else if opts.conntrack_only || opts.control_only {
        &[Arm::Iptables, Arm::Netpath]
    } else {
        &Arm::ALL
    };
    for &arm in arms {
        labs.push(
            ArmLab::build(arm, &exe).with_context(|| format!("building the {} arm", arm.name()))?,
        );
    }
    if let Some(b) = opts
        .baseline
        .as_ref()
        .filter(|_| !opts.daemon_only && !opts.conntrack_only && !opts.control_only)
    {
        let b = std::fs::canonicalize(b)
            .with_context(|| format!("the baseline binary {}", b.display()))?;
        eprintln!("netpath bench: and a fourth, the baseline {}", b.display());
        labs.push(ArmLab::build(Arm::Baseline, &b).context("building the baseline arm")?);
    }
    let mut res = Results {
        mode: if opts.quick { "quick" } else { "full" },
        reps: opts.reps,
        offloads: labs[0].offloads(),
        baseline: opts.baseline.as_ref().map(|b| b.display().to_string()),
        ..Results::only(
            opts,
            "Docker 20.10 (Debian docker.io): nat DOCKER chain with addrtype LOCAL, MASQUERADE per subnet, hairpin MASQUERADE per port, filter FORWARD with DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2, conntrack RELATED,ESTABLISHED",
        )
    };
    if opts.conntrack_only {
        return conntrack_only(opts, labs, res, dur);
    }
    let started = Instant::now();
    let scales = if opts.daemon_only || opts.control_only {
        Vec::new()
    } else {
        scales
    };
    for (i, scale) in scales.iter().enumerate() {
        // The baseline runs at the first point only.
        let here: Vec<usize> = (0..labs.len())
            .filter(|&k| i == 0 || labs[k].arm != Arm::Baseline)
            .collect();
        for lab in labs.iter_mut().filter(|l| i == 0 || l.arm != Arm::Baseline) {
            lab.set_ports(1)?;
            let nets = lab.set_networks(scale.networks)?;
            let t = lab.set_ports(scale.ports)?;
            if matches!(lab.arm, Arm::Iptables | Arm::Netpath) {
                res.network_steps
                    .push(control::NetworkStep::new(lab.arm, &nets));
                if scale.ports > 1 {
                    res.publish_steps.push(control::PublishStep {
                        arm: lab.arm,
                        ports: scale.ports,
                        seconds: t.as_secs_f64(),
                    });
                }
            }
        }
        for rep in 0..opts.reps {
            let workloads: Vec<&'static str> = if opts.quick {
                QUICK_WORKLOADS.to_vec()
            } else {
                WORKLOADS.iter().chain(&WORKLOADS6).copied().collect()
            };
            // IPv6 at the first scale point only.
            let workloads = workloads
                .into_iter()
                .filter(|w| i == 0 || !w.starts_with(V6));
            for (w, workload) in workloads.enumerate() {
                // Interleave the arms, rotating who goes first.
                for k in 0..here.len() {
                    let lab = &labs[here[(k + rep + w) % here.len()]];
                    let values = measure(lab, workload, dur).with_context(|| {
                        format!(
                            "{workload} on the {} arm (ports {}, networks {})",
                            lab.arm.name(),
                            scale.ports,
                            scale.networks
                        )
                    })?;
                    let mut line = format!(
                        "[{:>5.1}s] ports {:>5} networks {:>3} rep {}/{} {:<16} {:<9}",
                        started.elapsed().as_secs_f64(),
                        scale.ports,
                        scale.networks,
                        rep + 1,
                        opts.reps,
                        workload,
                        lab.arm.name()
                    );
                    for ((workload, metric, unit, _), value) in values {
                        let _ = write!(line, " {metric} {value:.1} {unit}");
                        res.samples.push(Sample {
                            scale: *scale,
                            workload,
                            metric,
                            unit,
                            arm: lab.arm,
                            rep,
                            value,
                        });
                    }
                    eprintln!("{line}");
                }
            }
        }
        for lab in here.iter().map(|&k| &labs[k]) {
            for (what, packets) in lab.path_evidence()? {
                let ok = if lab.arm == Arm::Bare {
                    packets == 0
                } else {
                    packets > 0
                };
                if !ok {
                    bail!(
                        "the {} arm did not take its path: {what} = {packets}",
                        lab.arm.name()
                    );
                }
                res.evidence.push((lab.arm, *scale, what, packets));
            }
        }
    }
    if !opts.daemon_only
        && !opts.control_only
        && let Some(lab) = labs.iter().find(|l| l.arm == Arm::Netpath)
    {
        eprintln!("netpath bench: the cost of a monitor");
        // Quick: three repetitions each way (CI checks the path works).
        let reps = if opts.quick { 3 } else { opts.reps };
        res.monitor = monitor::measure(lab, reps, dur).context("measuring a monitor's cost")?;
    }
    if let Some(lab) = labs
        .iter_mut()
        .find(|l| l.arm == Arm::Netpath && !opts.control_only)
    {
        eprintln!("netpath bench: the daemon's cost");
        if opts.daemon_only {
            // The flood's target.
            lab.set_ports(1)?;
        }
        res.daemon = daemon::measure(lab, opts.quick).context("measuring the daemon")?;
    }
    // Control plane: publishing ports and creating networks.
    for lab in labs
        .iter_mut()
        .filter(|l| !opts.daemon_only && (l.arm == Arm::Iptables || l.arm == Arm::Netpath))
    {
        lab.set_ports(1)?;
        let t = lab.set_ports(cp_ports)?;
        let arm = lab.arm;
        res.publish_steps.push(control::PublishStep {
            arm,
            ports: cp_ports,
            seconds: t.as_secs_f64(),
        });
        let mut row = |what: String, seconds: f64| {
            res.control_plane.push(ControlPlane { arm, what, seconds });
        };
        row(format!("publish {cp_ports} ports"), t.as_secs_f64());
        let from = scales.iter().map(|s| s.networks).max().unwrap_or(1);
        let t = lab.set_networks(from + cp_nets)?;
        let batched = format!(
            "create {cp_nets} networks in one batch (iptables: one `ip -batch` for the bridges + one `iptables-restore`; netpath: one `netpath apply`)"
        );
        match arm {
            Arm::Iptables => {
                row(batched, t.total.as_secs_f64());
                if let Some(r) = t.restore {
                    row(
                        format!(
                            "of it, the `iptables-restore` of the whole ruleset ({} networks)",
                            t.to
                        ),
                        r.as_secs_f64(),
                    );
                }
            }
            _ => {
                row(
                    format!("create {cp_nets} networks, one `netpath up` each"),
                    t.total.as_secs_f64(),
                );
                row(batched, lab.apply_networks(cp_nets)?.as_secs_f64());
            }
        }
        res.network_steps.push(control::NetworkStep::new(arm, &t));
    }
    if opts.control_only {
        drop(labs);
        report::write_outputs(&res, &opts.out)?;
        return Ok(res);
    }
    if !opts.daemon_only {
        scale_and_startup(opts, &exe, &mut labs, &mut res, dur)?;
    }
    drop(labs);
    if !opts.daemon_only {
        if std::path::Path::new("/usr/lib/cni/portmap").is_file() {
            eprintln!("netpath bench: the CNI pair (bridge+portmap vs netpath)");
            res.cni =
                cni::measure(&exe, opts.quick, opts.reps, dur).context("measuring the CNI pair")?;
        } else {
            eprintln!(
                "netpath bench: the CNI pair skipped: no reference plugins in /usr/lib/cni \
                 (containernetworking-plugins; cargo xtask setup installs it)"
            );
        }
    }
    // Full mode only: two dockerds would take the quick mode past its
    // minute.
    if !opts.daemon_only && !opts.quick {
        match docker::unavailable() {
            None => {
                eprintln!("netpath bench: the control plane under a real dockerd");
                res.docker = docker::measure(&exe, false).context("measuring under dockerd")?;
            }
            Some(why) => eprintln!("netpath bench: the dockerd comparison skipped: {why}"),
        }
    }
    report::write_outputs(&res, &opts.out)?;
    Ok(res)
}
