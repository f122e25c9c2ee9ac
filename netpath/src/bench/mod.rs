//! `netpath bench`: the same workloads through three copies of one
//! topology — Docker's iptables ruleset, netpath, and bare routing — in one
//! run, arms interleaved, every point repeated; medians, spread and ratios
//! as a markdown table, every sample as JSON, and an SVG chart.

pub mod arms;
pub mod load;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use arms::{Arm, ArmLab, EXT_PORT, PORT};

use crate::topology::Lab;

/// Options of `netpath bench`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Short runs at one scale point, for CI.
    pub quick: bool,
    pub reps: usize,
    pub out: PathBuf,
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
    pub samples: Vec<Sample>,
}

/// (workload, metric, unit, higher is better)
type Metric = (&'static str, &'static str, &'static str, bool);

/// Runs one workload on one arm: (metric, value) pairs.
fn measure(lab: &ArmLab, workload: &'static str, dur: Duration) -> Result<Vec<(Metric, f64)>> {
    let l = &lab.lab;
    let published = lab.published();
    let ext: SocketAddrV4 = SocketAddrV4::new(Lab::EXT.parse()?, EXT_PORT);
    Ok(match workload {
        "dnat tcp stream" => vec![(
            (workload, "throughput", "Gbit/s", true),
            load::tcp_stream(&l.c1, PORT, &l.ext, published, dur)?,
        )],
        "dnat udp 64B" => vec![(
            (workload, "received", "pps", true),
            load::udp_pps(&l.c1, PORT, &l.ext, published, dur)?,
        )],
        "dnat rr" | "dnat rr @2k/s" => {
            let rate = (workload == "dnat rr @2k/s").then_some(2000);
            let rtts = load::tcp_rr(&l.c1, PORT, &l.ext, published, dur, rate)?;
            vec![
                (
                    (workload, "p50", "µs", false),
                    load::percentile(&rtts, 50.0),
                ),
                (
                    (workload, "p99", "µs", false),
                    load::percentile(&rtts, 99.0),
                ),
            ]
        }
        "dnat conn/s" => vec![(
            (workload, "rate", "conn/s", true),
            load::tcp_cps(&l.c1, PORT, &l.ext, published, dur)?,
        )],
        "snat tcp stream" => vec![(
            (workload, "throughput", "Gbit/s", true),
            load::tcp_stream(&l.ext, EXT_PORT, &l.c1, ext, dur)?,
        )],
        "snat conn/s" => vec![(
            (workload, "rate", "conn/s", true),
            load::tcp_cps(&l.ext, EXT_PORT, &l.c1, ext, dur)?,
        )],
        w => bail!("unknown workload {w}"),
    })
}

const WORKLOADS: [&str; 7] = [
    "dnat conn/s",
    "dnat rr",
    "dnat rr @2k/s",
    "dnat tcp stream",
    "dnat udp 64B",
    "snat conn/s",
    "snat tcp stream",
];

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
                    ports: 10_000,
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
            10_000,
            100,
        )
    };
    eprintln!("netpath bench: building three copies of the topology (iptables, netpath, bare)");
    let mut labs = Vec::new();
    for arm in Arm::ALL {
        labs.push(
            ArmLab::build(arm, &exe).with_context(|| format!("building the {} arm", arm.name()))?,
        );
    }
    let mut res = Results {
        mode: if opts.quick { "quick" } else { "full" },
        reps: opts.reps,
        machine: machine(),
        iptables_mirrors: "Docker 20.10 (Debian docker.io): nat DOCKER chain with addrtype LOCAL, MASQUERADE per subnet, hairpin MASQUERADE per port, filter FORWARD with DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2, conntrack RELATED,ESTABLISHED",
        offloads: labs[0].offloads(),
        evidence: Vec::new(),
        control_plane: Vec::new(),
        samples: Vec::new(),
    };
    let started = Instant::now();
    for scale in &scales {
        for lab in &mut labs {
            lab.set_ports(1)?;
            lab.set_networks(scale.networks)?;
            lab.set_ports(scale.ports)?;
        }
        for rep in 0..opts.reps {
            for (w, workload) in WORKLOADS.iter().enumerate() {
                // Interleave the arms, rotating who goes first.
                for k in 0..labs.len() {
                    let lab = &labs[(k + rep + w) % labs.len()];
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
        for lab in &labs {
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
    // Control plane: publishing ports and creating networks.
    for lab in labs.iter_mut().filter(|l| l.arm != Arm::Bare) {
        lab.set_ports(1)?;
        let t = lab.set_ports(cp_ports)?;
        res.control_plane.push(ControlPlane {
            arm: lab.arm,
            what: format!("publish {cp_ports} ports"),
            seconds: t.as_secs_f64(),
        });
        let from = scales.iter().map(|s| s.networks).max().unwrap_or(1);
        let t = lab.set_networks(from + cp_nets)?;
        res.control_plane.push(ControlPlane {
            arm: lab.arm,
            what: format!("create {cp_nets} networks"),
            seconds: t.as_secs_f64(),
        });
    }
    drop(labs);
    write_outputs(&res, &opts.out)?;
    Ok(res)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (median, min, max) of the samples of one cell.
fn cell(
    res: &Results,
    scale: Scale,
    workload: &str,
    metric: &str,
    arm: Arm,
) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = res
        .samples
        .iter()
        .filter(|s| {
            s.scale == scale && s.workload == workload && s.metric == metric && s.arm == arm
        })
        .map(|s| s.value)
        .collect();
    if v.is_empty() {
        return None;
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((median(&mut v), min, max))
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The markdown table: medians with min–max, and the ratios.
pub fn table(res: &Results) -> String {
    let mut s = String::new();
    let mut scales: Vec<Scale> = res.samples.iter().map(|x| x.scale).collect();
    scales.sort();
    scales.dedup();
    let mut metrics: Vec<(&str, &str, &str)> = Vec::new();
    for x in &res.samples {
        if !metrics.contains(&(x.workload, x.metric, x.unit)) {
            metrics.push((x.workload, x.metric, x.unit));
        }
    }
    let _ = writeln!(
        s,
        "netpath bench ({} mode, {} repetitions, median [min–max]; kernel {}, {} × {})\n",
        res.mode, res.reps, res.machine["kernel"], res.machine["cpus"], res.machine["cpu"]
    );
    for scale in scales {
        let _ = writeln!(
            s,
            "**{} published port(s), {} network(s)**\n",
            scale.ports, scale.networks
        );
        let _ = writeln!(
            s,
            "| workload | metric | iptables | netpath | bare | netpath/iptables | netpath/bare |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (w, m, unit) in &metrics {
            let c = |arm| cell(res, scale, w, m, arm);
            let show = |x: Option<(f64, f64, f64)>| {
                x.map_or("-".to_owned(), |(med, lo, hi)| {
                    format!("{} [{}–{}]", fmt_num(med), fmt_num(lo), fmt_num(hi))
                })
            };
            let ratio = |a: Option<(f64, f64, f64)>, b: Option<(f64, f64, f64)>| match (a, b) {
                (Some(a), Some(b)) if b.0 > 0.0 => format!("{:.2}×", a.0 / b.0),
                _ => "-".to_owned(),
            };
            let (ipt, np, bare) = (c(Arm::Iptables), c(Arm::Netpath), c(Arm::Bare));
            let _ = writeln!(
                s,
                "| {w} | {m} ({unit}) | {} | {} | {} | {} | {} |",
                show(ipt),
                show(np),
                show(bare),
                ratio(np, ipt),
                ratio(np, bare)
            );
        }
        let _ = writeln!(s);
    }
    if !res.control_plane.is_empty() {
        let _ = writeln!(
            s,
            "**Control plane** (iptables: one `iptables-restore` of Docker's rules, its best case)\n"
        );
        let _ = writeln!(s, "| operation | iptables | netpath |");
        let _ = writeln!(s, "|---|---|---|");
        let mut ops: Vec<&str> = Vec::new();
        for c in &res.control_plane {
            if !ops.contains(&c.what.as_str()) {
                ops.push(&c.what);
            }
        }
        for op in ops {
            let t = |arm| {
                res.control_plane
                    .iter()
                    .find(|c| c.what == op && c.arm == arm)
                    .map_or("-".to_owned(), |c| format!("{:.3} s", c.seconds))
            };
            let _ = writeln!(s, "| {op} | {} | {} |", t(Arm::Iptables), t(Arm::Netpath));
        }
    }
    s
}

/// A small SVG chart: connection rate and p99 latency against the number
/// of published ports, iptables and netpath.
fn chart(res: &Results) -> String {
    let series = |workload: &str, metric: &str, arm: Arm| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = Vec::new();
        let mut ports: Vec<u32> = res
            .samples
            .iter()
            .filter(|s| s.scale.networks == 1)
            .map(|s| s.scale.ports)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        for p in ports {
            if let Some((m, _, _)) = cell(
                res,
                Scale {
                    ports: p,
                    networks: 1,
                },
                workload,
                metric,
                arm,
            ) {
                pts.push((f64::from(p), m));
            }
        }
        pts
    };
    let panels = [
        ("dnat conn/s", "rate", "connections/s"),
        ("dnat rr", "p99", "p99 latency (µs)"),
    ];
    let (w, h) = (420.0, 260.0);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='11'>\n",
        w * 2.0,
        h
    );
    for (i, (workload, metric, label)) in panels.iter().enumerate() {
        let x0 = i as f64 * w + 50.0;
        let (pw, ph) = (w - 80.0, h - 70.0);
        let all: Vec<(f64, f64)> = [Arm::Iptables, Arm::Netpath]
            .iter()
            .flat_map(|a| series(workload, metric, *a))
            .collect();
        let ymax = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max).max(10.0);
        let px = |x: f64| x0 + (x.max(1.0).log10() / xmax.log10()) * pw;
        let py = |y: f64| 20.0 + ph - y / ymax * ph;
        let _ = writeln!(
            s,
            "<text x='{x0}' y='14'>{label} vs published ports (log)</text>"
        );
        let _ = writeln!(
            s,
            "<line x1='{x0}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
            20.0 + ph,
            x0 + pw,
            20.0 + ph
        );
        let _ = writeln!(
            s,
            "<line x1='{x0}' y1='20' x2='{x0}' y2='{}' stroke='black'/>",
            20.0 + ph
        );
        let _ = writeln!(
            s,
            "<text x='{}' y='{}'>0</text><text x='{}' y='28'>{:.0}</text>",
            x0 - 20.0,
            20.0 + ph,
            x0 - 45.0,
            ymax
        );
        for (arm, color) in [(Arm::Iptables, "#c0392b"), (Arm::Netpath, "#2471a3")] {
            let pts = series(workload, metric, arm);
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
                path.join(" ")
            );
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{color}'/>",
                    px(*x),
                    py(*y)
                );
                let _ = writeln!(
                    s,
                    "<text x='{:.1}' y='{}' text-anchor='middle'>{x}</text>",
                    px(*x),
                    35.0 + ph
                );
            }
            let ly = if arm == Arm::Iptables { 50.0 } else { 65.0 };
            let _ = writeln!(
                s,
                "<text x='{}' y='{ly}' fill='{color}'>{}</text>",
                x0 + pw - 60.0,
                arm.name()
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn write_outputs(res: &Results, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(res)?)?;
    std::fs::write(out.join("bench.md"), table(res))?;
    std::fs::write(out.join("bench.svg"), chart(res))?;
    Ok(())
}
