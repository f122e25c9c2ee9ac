//! The report's conntrack-at-scale, memory-per-flow and startup tables.

use std::fmt::Write as _;

use super::{
    arms::Arm,
    ctscale::{CtScale, ScaleSample},
    startup::StartupSample,
    stats::{fmt_num, median},
};

/// Every value of one cell.
fn values(s: &[ScaleSample], arm: Arm, flows: u32, workload: &str, metric: &str) -> Vec<f64> {
    s.iter()
        .filter(|x| {
            x.arm == arm && x.flows == flows && x.workload == workload && x.metric == metric
        })
        .map(|x| x.value)
        .collect()
}

/// The conntrack-at-scale tables (nothing when there is nothing to show).
pub fn conntrack_scale(s: &mut String, c: &CtScale) {
    if !c.samples.is_empty() {
        let _ = writeln!(
            s,
            "**Conntrack at scale** (the published port with other live flows in the table: established, assured TCP flows made by crafted handshakes through each arm; netpath's table sized for {} flows at every level; medians [min–max], change against the empty table)\n",
            c.netpath_capacity_flows
        );
        let _ = writeln!(
            s,
            "| workload | metric | flows held | iptables | netpath | iptables vs empty | netpath vs empty |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        let mut rows: Vec<(&str, &str, &str, u32)> = Vec::new();
        for x in &c.samples {
            let r = (x.workload, x.metric, x.unit, x.flows);
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
        rows.sort_by_key(|r| (r.0, r.1, r.3));
        for (w, m, unit, flows) in rows {
            let cell = |arm| {
                let v = values(&c.samples, arm, flows, w, m);
                median(&v).map(|med| {
                    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    (
                        med,
                        format!("{} [{}–{}]", fmt_num(med), fmt_num(lo), fmt_num(hi)),
                    )
                })
            };
            let change = |arm| match (cell(arm), median(&values(&c.samples, arm, 0, w, m))) {
                _ if flows == 0 => "-".to_owned(),
                (Some((v, _)), Some(empty)) if empty > 0.0 => {
                    format!("{:+.1} %", (v / empty - 1.0) * 100.0)
                }
                _ => "-".to_owned(),
            };
            let show = |arm| cell(arm).map_or("not measured".to_owned(), |(_, t)| t);
            let _ = writeln!(
                s,
                "| {w} | {m} ({unit}) | {flows} | {} | {} | {} | {} |",
                show(Arm::Iptables),
                show(Arm::Netpath),
                change(Arm::Iptables),
                change(Arm::Netpath)
            );
        }
        let _ = writeln!(s);
        for n in &c.notes {
            let _ = writeln!(s, "- {n}");
        }
        for (arm, flows, secs) in &c.preload_seconds {
            let _ = writeln!(
                s,
                "- preloading up to {flows} flows took the {} arm {secs:.1} s",
                arm.name()
            );
        }
        let _ = writeln!(s);
    }
    memory(s, c);
}

/// Memory per flow, netpath's map against nf_conntrack's objects.
fn memory(s: &mut String, c: &CtScale) {
    if c.netpath_memory.is_none() && c.nf_conntrack_object.is_none() {
        return;
    }
    let _ = writeln!(
        s,
        "**Conntrack memory per flow** (netpath: the map's kernel memory per entry of its capacity, two entries a flow, allocated whole when the table is created, and that memory over the flows the table admits, 7/8 of its capacity; nf_conntrack: one `struct nf_conn` a flow, allocated as flows come, from its slab; its hash buckets and NAT extension apart)\n"
    );
    let _ = writeln!(s, "| | netpath | iptables (nf_conntrack) |");
    let _ = writeln!(s, "|---|---|---|");
    let np = c.netpath_memory.as_ref().map_or("-".to_owned(), |m| {
        format!(
            "{:.0} B ({:.0} B an entry; {:.0} B per flow admitted; {}: {:.1} MiB for a table of {} flows)",
            m.bytes_per_flow,
            m.bytes_per_entry,
            m.bytes as f64 / f64::from(c.netpath_capacity_flows.max(1)),
            if m.source == "kernel" {
                "the kernel's memlock"
            } else {
                "computed from the layout"
            },
            m.bytes as f64 / f64::from(1 << 20),
            c.netpath_capacity_flows
        )
    });
    let nf = c
        .nf_conntrack_object
        .map_or("-".to_owned(), |(object, slot)| {
            format!("{object} B object, {slot} B slab slot")
        });
    let _ = writeln!(s, "| per flow | {np} | {nf} |");
    if let Some(max) = c.nf_conntrack_max {
        let _ = writeln!(
            s,
            "| flows at most | {} | {max} (nf_conntrack_max, set in the initial namespace only) |",
            c.netpath_capacity_flows
        );
    }
    let _ = writeln!(s);
}

/// The startup table.
pub fn startup(s: &mut String, rows: &[StartupSample]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "**Startup** (`netpath up`: wall time of the command; a new port: from its veth joining the bridge until netpath's filters are on it; medians where repeated)\n"
    );
    let _ = writeln!(s, "| up | samples | median | min–max |");
    let _ = writeln!(s, "|---|---|---|---|");
    for r in rows {
        let Some(med) = median(&r.ms) else {
            continue;
        };
        let lo = r.ms.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.ms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            s,
            "| {} | {} | {} ms | {}–{} ms |",
            r.what,
            r.ms.len(),
            fmt_num(med),
            fmt_num(lo),
            fmt_num(hi)
        );
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(arm: Arm, flows: u32, value: f64) -> ScaleSample {
        ScaleSample {
            arm,
            flows,
            held: u64::from(flows),
            workload: "dnat rr",
            metric: "p99",
            unit: "µs",
            rep: 0,
            value,
        }
    }

    #[test]
    fn scale_rows_compare_with_the_empty_table() {
        let c = CtScale {
            samples: vec![
                sample(Arm::Iptables, 0, 100.0),
                sample(Arm::Netpath, 0, 80.0),
                sample(Arm::Netpath, 0, 120.0),
                sample(Arm::Iptables, 100_000, 110.0),
                sample(Arm::Netpath, 100_000, 95.0),
                sample(Arm::Netpath, 1_000_000, 105.0),
            ],
            netpath_capacity_flows: 1_200_000,
            notes: vec!["1000000 flows not measured for iptables".into()],
            ..CtScale::default()
        };
        let mut s = String::new();
        conntrack_scale(&mut s, &c);
        assert!(
            s.contains("| dnat rr | p99 (µs) | 0 | 100 [100–100] | 100 [80.0–120] | - | - |"),
            "{s}"
        );
        assert!(s.contains("| 100000 | 110 [110–110] | 95.0 [95.0–95.0] | +10.0 % | -5.0 % |"));
        assert!(s.contains("| 1000000 | not measured | 105 [105–105] | - | +5.0 % |"));
        assert!(s.contains("- 1000000 flows not measured"));
        // No memory figures: no memory table.
        assert!(!s.contains("memory per flow"));
    }

    #[test]
    fn memory_and_startup_tables() {
        let c = CtScale {
            netpath_memory: Some(crate::ctmem::CtMemory {
                bytes: 37_748_736,
                bytes_per_entry: 144.0,
                bytes_per_flow: 288.0,
                source: "kernel".to_owned(),
            }),
            netpath_capacity_flows: 114_688,
            nf_conntrack_object: Some((248, 256)),
            nf_conntrack_max: Some(262_144),
            ..CtScale::default()
        };
        let mut s = String::new();
        conntrack_scale(&mut s, &c);
        assert!(s.contains("| per flow | 288 B (144 B an entry; 329 B per flow admitted; the kernel's memlock: 36.0 MiB for a table of 114688 flows) | 248 B object, 256 B slab slot |"), "{s}");
        assert!(s.contains("| flows at most | 114688 | 262144"));
        let mut s = String::new();
        startup(
            &mut s,
            &[StartupSample {
                what: "first up",
                ms: vec![2000.0, 1800.0, 2100.0],
            }],
        );
        assert!(
            s.contains("| first up | 3 | 2000 ms | 1800–2100 ms |"),
            "{s}"
        );
        let mut s = String::new();
        startup(&mut s, &[]);
        assert!(s.is_empty());
    }
}
