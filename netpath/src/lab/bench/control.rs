//! The control plane in the benchmark: what creating networks and
//! publishing ports costs on each arm, as steps recorded while the scale
//! points are set up and in the control-plane section; the per-network
//! cost against the number of networks already there (is it flat?), a
//! markdown section and an SVG chart (`control.svg`).

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    Results,
    arms::{Arm, NetworksTiming},
    stats::median,
    svg,
};

/// Networks added on one arm in one go.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkStep {
    pub arm: Arm,
    /// Networks before and after.
    pub from: u32,
    pub to: u32,
    pub seconds: f64,
    /// Of it, the one `iptables-restore` (iptables arm).
    pub restore_seconds: Option<f64>,
    /// Each `netpath up`, in order (netpath arms), in ms.
    pub each_ms: Vec<f64>,
}

impl NetworkStep {
    pub fn new(arm: Arm, t: &NetworksTiming) -> Self {
        Self {
            arm,
            from: t.from,
            to: t.to,
            seconds: t.total.as_secs_f64(),
            restore_seconds: t.restore.map(|d| d.as_secs_f64()),
            each_ms: t.each.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        }
    }
}

/// Ports published on one arm in one go (from one port to `ports`).
#[derive(Clone, Debug, Serialize)]
pub struct PublishStep {
    pub arm: Arm,
    pub ports: u32,
    pub seconds: f64,
}

/// The cost of one more network with `existing` networks there already
/// (the median over the networks added in that range).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PerNetwork {
    pub arm: Arm,
    /// The range of networks already there: `[from, to)`.
    pub from: u32,
    pub to: u32,
    pub ms: f64,
    pub samples: usize,
}

/// The decade a count of existing networks falls in: [1, 10), [10, 100), …
fn decade(existing: u32) -> (u32, u32) {
    let mut lo = 1;
    while existing >= lo * 10 {
        lo *= 10;
    }
    (lo, lo * 10)
}

/// Per-network cost by decade of existing networks: netpath's from each
/// `up`; a batched arm's (iptables) as its step's time over the networks
/// it added (its cost is per batch, so its figure falls as batches grow).
pub fn per_network(steps: &[NetworkStep]) -> Vec<PerNetwork> {
    let mut groups: std::collections::BTreeMap<(Arm, (u32, u32)), Vec<f64>> =
        std::collections::BTreeMap::new();
    for s in steps.iter().filter(|s| s.to > s.from) {
        if s.each_ms.is_empty() {
            let per = s.seconds * 1e3 / f64::from(s.to - s.from);
            groups.entry((s.arm, decade(s.from))).or_default().push(per);
        } else {
            for (k, ms) in s.each_ms.iter().enumerate() {
                let existing = s.from + k as u32;
                groups
                    .entry((s.arm, decade(existing)))
                    .or_default()
                    .push(*ms);
            }
        }
    }
    groups
        .into_iter()
        .map(|((arm, (from, to)), v)| PerNetwork {
            arm,
            from,
            to,
            samples: v.len(),
            ms: median(&v).unwrap_or(f64::NAN),
        })
        .collect()
}

/// The markdown section: per-network cost by networks already there.
pub fn section(s: &mut String, res: &Results) {
    let rows = per_network(&res.network_steps);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "**One more network** (median time per network, by networks already there; netpath: one `netpath up` each; iptables: its batch, bridges from one `ip -batch` and one `iptables-restore` of the whole ruleset, over the networks in it)\n"
    );
    let _ = writeln!(
        s,
        "| networks there | arm | per network | networks measured |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            s,
            "| {}–{} | {} | {:.1} ms | {} |",
            r.from,
            r.to - 1,
            r.arm.name(),
            r.ms,
            r.samples
        );
    }
    let _ = writeln!(s);
}

/// Two panels: per-network cost against networks already there, and the
/// time to publish ports against their number; one line per arm.
pub fn chart(res: &Results) -> String {
    let per = per_network(&res.network_steps);
    let nets = |arm: Arm| -> Vec<(f64, f64)> {
        per.iter()
            .filter(|p| p.arm == arm)
            .map(|p| (f64::from(p.from), p.ms))
            .collect()
    };
    let ports = |arm: Arm| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = res
            .publish_steps
            .iter()
            .filter(|p| p.arm == arm)
            .map(|p| (f64::from(p.ports), p.seconds * 1e3))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    };
    let lines = |f: &dyn Fn(Arm) -> Vec<(f64, f64)>| -> Vec<svg::Line> {
        svg::ARMS.iter().map(|(a, c)| (*a, *c, f(*a))).collect()
    };
    svg::panels(&[
        (
            "ms per new network vs networks there (log)".to_owned(),
            lines(&nets),
        ),
        ("ms to publish vs ports (log)".to_owned(), lines(&ports)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(arm: Arm, from: u32, to: u32, seconds: f64, each_ms: Vec<f64>) -> NetworkStep {
        NetworkStep {
            arm,
            from,
            to,
            seconds,
            restore_seconds: None,
            each_ms,
        }
    }

    #[test]
    fn decades_of_existing_networks() {
        assert_eq!(decade(1), (1, 10));
        assert_eq!(decade(9), (1, 10));
        assert_eq!(decade(10), (10, 100));
        assert_eq!(decade(100), (100, 1000));
        assert_eq!(decade(0), (1, 10));
    }

    #[test]
    fn per_network_cost_by_decade_from_each_up_or_per_batch() {
        let steps = [
            // netpath: networks 1..4 then 9..12, one up each.
            step(Arm::Netpath, 1, 4, 0.09, vec![10.0, 30.0, 20.0]),
            step(Arm::Netpath, 9, 12, 0.1, vec![40.0, 50.0, 70.0]),
            // iptables: one batch of 9 in 0.018 s, then 90 in 0.09 s.
            step(Arm::Iptables, 1, 10, 0.018, vec![]),
            step(Arm::Iptables, 10, 100, 0.09, vec![]),
            // nothing added: no sample.
            step(Arm::Iptables, 100, 100, 0.05, vec![]),
        ];
        let got = per_network(&steps);
        let find = |arm, from| got.iter().find(|p| p.arm == arm && p.from == from).unwrap();
        // 10, 30, 20 and the 9th network's 40: median of four.
        assert_eq!(find(Arm::Netpath, 1).ms, 25.0);
        assert_eq!(find(Arm::Netpath, 1).samples, 4);
        assert_eq!(find(Arm::Netpath, 10).ms, 60.0);
        assert!((find(Arm::Iptables, 1).ms - 2.0).abs() < 1e-9);
        assert!((find(Arm::Iptables, 10).ms - 1.0).abs() < 1e-9);
        assert_eq!(got.len(), 4);
    }
}
