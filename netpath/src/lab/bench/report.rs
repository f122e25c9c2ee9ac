//! `netpath bench`'s outputs: the markdown table (medians, spread and
//! ratios), the daemon's cost, the control plane, an SVG chart, and every
//! sample as JSON.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

use super::{
    Results, Scale,
    arms::Arm,
    stats::{fmt_num, median},
    svg,
};

/// (median, min, max) of the samples of one cell.
fn cell(
    res: &Results,
    scale: Scale,
    workload: &str,
    metric: &str,
    arm: Arm,
) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = res
        .samples
        .iter()
        .filter(|s| {
            s.scale == scale && s.workload == workload && s.metric == metric && s.arm == arm
        })
        .map(|s| s.value)
        .collect();
    let med = median(&v)?;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((med, min, max))
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
        let baseline = res
            .samples
            .iter()
            .any(|x| x.scale == scale && x.arm == Arm::Baseline);
        let _ = writeln!(
            s,
            "| workload | metric | iptables | netpath | bare | netpath/iptables | netpath/bare |{}",
            if baseline {
                " baseline | cost vs baseline |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|{}",
            if baseline { "---|---|" } else { "" }
        );
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
            let extra = if baseline {
                let base = c(Arm::Baseline);
                let cost = match (np, base) {
                    (Some(n), Some(b)) if b.0 > 0.0 => {
                        // Positive: netpath does worse than the baseline.
                        let r = n.0 / b.0;
                        let pct = if *unit == "µs" { r - 1.0 } else { 1.0 - r } * 100.0;
                        format!("{pct:+.1} %")
                    }
                    _ => "-".to_owned(),
                };
                format!(" {} | {cost} |", show(base))
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {w} | {m} ({unit}) | {} | {} | {} | {} | {} |{extra}",
                show(ipt),
                show(np),
                show(bare),
                ratio(np, ipt),
                ratio(np, bare)
            );
        }
        let _ = writeln!(s);
    }
    if let Some(b) = &res.baseline {
        let _ = writeln!(
            s,
            "baseline: {b}; cost vs baseline is how much worse netpath does (negative: better), medians of interleaved runs.\n"
        );
    }
    if !res.monitor.is_empty() {
        let _ = writeln!(
            s,
            "**A monitor attached** (netpath, last scale point; `netpath monitor --events drop,flow` reading every event, medians of interleaved runs)\n"
        );
        let _ = writeln!(s, "| workload | metric | without | with a monitor | cost |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for m in &res.monitor {
            let (Some(a), Some(b)) = (median(&m.without), median(&m.with)) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} | {} | {:+.1} % |",
                m.workload,
                m.metric,
                m.unit,
                fmt_num(a),
                fmt_num(b),
                if a == 0.0 { 0.0 } else { (a - b) / a * 100.0 }
            );
        }
        let _ = writeln!(s);
    }
    if !res.daemon.is_empty() {
        let _ = writeln!(
            s,
            "**The daemon** (netpath only; CPU time over wall time, one core = 100 %, its in-kernel sweeps included)\n"
        );
        let _ = writeln!(
            s,
            "| workload | load | seconds | CPU | of it, system | RSS | table fill | evicted | refused |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for d in &res.daemon {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.2} % | {:.2} % | {} MiB | {:.1} % | {} | {} |",
                d.workload,
                d.load,
                d.seconds,
                d.cpu_pct,
                d.kernel_pct,
                d.rss_kib / 1024,
                d.fill_pct,
                d.evicted,
                d.refused
            );
        }
        let _ = writeln!(s);
    }
    cni_section(&mut s, &res.cni);
    docker_section(&mut s, &res.docker);
    if let Some(c) = &res.conntrack_scale {
        super::report_scale::conntrack_scale(&mut s, c);
    }
    super::report_scale::startup(&mut s, &res.startup);
    if !res.control_plane.is_empty() {
        let _ = writeln!(
            s,
            "**Control plane** (iptables: its best case, one `iptables-restore` of Docker's whole ruleset; the chart is `control.svg`)\n"
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
        let _ = writeln!(s);
    }
    super::control::section(&mut s, res);
    s
}

/// A small SVG chart: connection rate and p99 latency against the number
/// of published ports, iptables and netpath.
fn chart(res: &Results) -> String {
    let series = |workload: &str, metric: &str, arm: Arm| -> Vec<(f64, f64)> {
        let mut ports: Vec<u32> = res
            .samples
            .iter()
            .filter(|s| s.scale.networks == 1)
            .map(|s| s.scale.ports)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
            .into_iter()
            .filter_map(|p| {
                let scale = Scale {
                    ports: p,
                    networks: 1,
                };
                cell(res, scale, workload, metric, arm).map(|(m, _, _)| (f64::from(p), m))
            })
            .collect()
    };
    let panels: Vec<(String, Vec<svg::Line>)> = [
        ("dnat conn/s", "rate", "connections/s"),
        ("dnat rr", "p99", "p99 latency (µs)"),
    ]
    .iter()
    .map(|(workload, metric, label)| {
        (
            format!("{label} vs published ports (log)"),
            svg::ARMS
                .iter()
                .map(|(a, c)| (*a, *c, series(workload, metric, *a)))
                .collect(),
        )
    })
    .collect();
    svg::panels(&panels)
}

pub(super) fn write_outputs(res: &Results, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(res)?)?;
    std::fs::write(out.join("bench.md"), table(res))?;
    std::fs::write(out.join("bench.svg"), chart(res))?;
    std::fs::write(out.join("control.svg"), super::control::chart(res))?;
    Ok(())
}

/// The control plane under a real dockerd: one row per step, each arm's
/// seconds (one run).
fn docker_section(s: &mut String, steps: &[super::docker::DockerStep]) {
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "**Under a real dockerd** (the installed dockerd with its iptables path, against `--iptables=false --userland-proxy=false` followed by `netpath docker`; one run; the docker rows are the CLI's wall time, what a user waits for, and favour neither; netpath's \"enforced\" rows run from the first command until `netpath status`/`ports` list them all)\n"
    );
    let _ = writeln!(s, "| step | iptables | netpath | netpath / iptables |");
    let _ = writeln!(s, "|---|---|---|---|");
    let mut rows: Vec<&str> = Vec::new();
    for x in steps {
        if !rows.contains(&x.what.as_str()) {
            rows.push(&x.what);
        }
    }
    for what in rows {
        let get = |arm: Arm| {
            steps
                .iter()
                .find(|x| x.arm == arm && x.what == what)
                .map(|x| x.seconds)
        };
        let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3} s"));
        let (i, n) = (get(Arm::Iptables), get(Arm::Netpath));
        let ratio = match (i, n) {
            (Some(i), Some(n)) if i > 0.0 => format!("{:.2}×", n / i),
            _ => "-".to_owned(),
        };
        let _ = writeln!(s, "| {what} | {} | {} | {ratio} |", cell(i), cell(n));
    }
    let _ = writeln!(s);
}

/// The CNI pair: one row per measurement, medians of interleaved runs.
fn cni_section(s: &mut String, samples: &[super::cni::CniSample]) {
    use super::cni::Plugins;
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "**CNI pair** (the reference `bridge` + `portmap` plugins, iptables, against netpath's plugin; one container, driven as a runtime drives them; medians of interleaved runs; ADD/DEL favour nothing, the traffic rows are one hostPort with one container)\n"
    );
    let _ = writeln!(
        s,
        "| measurement | mappings | bridge+portmap | netpath | netpath / reference |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let mut rows: Vec<(&str, u32)> = Vec::new();
    for x in samples {
        if !rows.contains(&(x.what, x.mappings)) {
            rows.push((x.what, x.mappings));
        }
    }
    for (what, n) in rows {
        let get = |p: Plugins| {
            samples
                .iter()
                .find(|x| x.plugins == p && x.what == what && x.mappings == n)
                .and_then(|x| median(&x.values))
        };
        let (Some(r), Some(np)) = (get(Plugins::Reference), get(Plugins::Netpath)) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {what} | {n} | {} | {} | {:.2}× |",
            fmt_num(r),
            fmt_num(np),
            if r == 0.0 { 0.0 } else { np / r }
        );
    }
    let _ = writeln!(s);
}
