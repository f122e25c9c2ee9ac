//! What a `netpath monitor` attached costs: the netpath arm measured with
//! and without `netpath monitor --events drop,flow` reading every event
//! (its output thrown away), repetitions interleaved, order alternated.
//! Events are made on drops and new flows only, so the connection rate
//! (one flow event per connection) is where a cost can show; UDP 64 B (one
//! flow, no drops) shows the heartbeat check alone.

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::arms::ArmLab;
use crate::lab::topology::Process;

/// One workload with and without a monitor.
#[derive(Clone, Debug, Serialize)]
pub struct MonitorCost {
    pub workload: &'static str,
    pub metric: &'static str,
    pub unit: &'static str,
    pub without: Vec<f64>,
    pub with: Vec<f64>,
}

const WORKLOADS: [&str; 2] = ["dnat conn/s", "dnat udp 64B one-way"];

/// Measures `lab` (the netpath arm) `reps` times each way.
pub fn measure(lab: &ArmLab, reps: usize, dur: Duration) -> Result<Vec<MonitorCost>> {
    let mut out: Vec<MonitorCost> = Vec::new();
    for workload in WORKLOADS {
        let mut cost: Option<MonitorCost> = None;
        for rep in 0..reps {
            for with in [rep % 2 == 1, rep % 2 == 0] {
                let _monitor = if with {
                    let child = lab
                        .lab
                        .host
                        .netpath(lab.exe())
                        .args(["monitor", "--events", "drop,flow"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                        .context("starting netpath monitor")?;
                    // Its first heartbeat.
                    std::thread::sleep(Duration::from_millis(300));
                    Some(Process(child))
                } else {
                    None
                };
                let values = super::workloads::measure(lab, workload, dur)?;
                let ((_, metric, unit, _), value) = *values
                    .first()
                    .with_context(|| format!("{workload} gave no value"))?;
                let c = cost.get_or_insert_with(|| MonitorCost {
                    workload,
                    metric,
                    unit,
                    without: Vec::new(),
                    with: Vec::new(),
                });
                if with {
                    c.with.push(value);
                } else {
                    c.without.push(value);
                }
                eprintln!(
                    "monitor cost: {workload} {} rep {}/{reps}: {metric} {value:.1} {unit}",
                    if with { "with a monitor" } else { "without" },
                    rep + 1
                );
            }
        }
        out.extend(cost);
    }
    Ok(out)
}
