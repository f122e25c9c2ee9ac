//! The daemon's conntrack sweeping: one in-kernel pass per tick, how
//! often (faster during a flood, slower for a large calm table), when the
//! table is under pressure (unreplied flows then go after 500 ms), and
//! the report `status` reads (`/run/netpath/daemon-<cookie>.json`).

use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use crate::{
    attach::{Datapath, build_id},
    conntrack, state,
};

/// What the daemon of the namespace with `cookie` last did (`status`).
pub fn report_path(cookie: u64) -> std::path::PathBuf {
    std::path::PathBuf::from(crate::sys::RUN_DIR).join(format!("daemon-{cookie}.json"))
}

/// What the daemon did, written after each sweep to `daemon-<cookie>.json`
/// (for `status`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub pid: u32,
    pub build: String,
    /// Where it serves metrics.
    #[serde(default)]
    pub metrics: Option<String>,
    pub sweeps: u64,
    /// Flows the sweeps removed since the daemon started.
    pub swept_flows: u64,
    pub last_sweep: Option<Sweep>,
}

/// One sweep pass.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Sweep {
    /// Wall clock, milliseconds since the epoch.
    pub at_unix_ms: u64,
    /// How long the pass took in the kernel and around it.
    pub took_us: u64,
    /// Entries and flows left, unreplied flows among them.
    pub entries: u32,
    pub flows: u32,
    pub embryonic: u32,
    pub removed_flows: u32,
    /// Whether unreplied flows had only the pressure timeout.
    pub pressure: bool,
}

/// Reads the daemon's report, if it wrote one.
pub fn report(cookie: u64) -> Option<Report> {
    let text = std::fs::read_to_string(report_path(cookie)).ok()?;
    serde_json::from_str(&text).ok()
}

/// When the table is this full, unreplied flows (a SYN flood's, a UDP
/// scan's) go after [`PRESSURE_TIMEOUT_MS`] instead of their usual timeout,
/// so the LRU never has to evict established flows to make room.
const PRESSURE_FILL: f64 = 0.5;
/// When embryonic flows left after a sweep fill this much of the table, a
/// flood is on: they go after [`PRESSURE_TIMEOUT_MS`] too, and the sweeps
/// come every [`FLOOD_INTERVAL`] until it ends (every
/// [`FLOOD_INTERVAL_FULL`] once the table is half full), so a flood of
/// 60,000 new flows a second peaks near half the default table instead of
/// reaching its limit. Most of a flood's cost is removing its flows, which
/// no interval saves; a shorter one walks the table more often.
const FLOOD_FILL: f64 = 0.1;
/// Pressure lasts until the unreplied flows left fill less than this.
const LEFTOVER_FILL: f64 = 0.01;
/// The sweep interval during a flood (the daemon's own, when shorter).
const FLOOD_INTERVAL: Duration = Duration::from_millis(500);
const FLOOD_INTERVAL_FULL: Duration = Duration::from_millis(250);
/// The timeout of unreplied flows under pressure: a handshake takes a
/// round trip, and a client whose handshake is cut retransmits its SYN
/// (a new flow) a second later, as after a lost SYN.
const PRESSURE_TIMEOUT_MS: u32 = 500;

/// The daemon's sweeping: one in-kernel pass per tick, under pressure when
/// the last pass found the table at least [`PRESSURE_FILL`] full or a
/// flood on ([`FLOOD_FILL`]).
pub(crate) struct Sweeper {
    report: Report,
    pressure: bool,
    flood: bool,
    /// The last pass found the table at least [`PRESSURE_FILL`] full.
    full: bool,
    /// When the datapath's entry count was last set from a pass.
    calibrated: Option<Instant>,
    /// New flows refused at the table's limit, as last seen.
    refused: Option<u64>,
    /// The table's capacity over the default's (at least 1), and how long
    /// the last pass took: see [`Sweeper::interval`].
    scale: u32,
    took: Duration,
}

/// How often the datapath's entry count is set from a counting pass: it
/// only drifts when entries change behind its back.
const CALIBRATE_EVERY: Duration = Duration::from_secs(10);

impl Sweeper {
    /// A sweeper for this process, reporting `metrics` as served.
    pub(crate) fn new(metrics: Option<String>) -> Self {
        Self {
            report: Report {
                pid: std::process::id(),
                build: build_id(),
                metrics,
                ..Report::default()
            },
            pressure: false,
            flood: false,
            full: false,
            calibrated: None,
            refused: None,
            scale: 1,
            took: Duration::ZERO,
        }
    }

    /// How long until the next sweep. A pass walks every bucket of the
    /// table, full or not (about 1 ms per 10,000 entries here), so a
    /// calm table larger than the default is swept less often, in
    /// proportion (timeouts are seconds to days: expiry only gets coarser),
    /// and no pass takes more than a quarter of the daemon's time.
    pub(crate) fn interval(&self, normal: Duration) -> Duration {
        let base = if self.flood {
            normal.min(if self.full {
                FLOOD_INTERVAL_FULL
            } else {
                FLOOD_INTERVAL
            })
        } else if self.pressure {
            normal
        } else {
            normal * self.scale
        };
        base.max(self.took * 4)
    }

    pub(crate) fn tick(
        &mut self,
        state: &state::StateDir,
        loaded: &mut Option<Datapath>,
    ) -> Result<()> {
        let Some(dp) = Datapath::current(state, loaded, false)? else {
            // A command is loading programs: sweep on the next tick.
            return Ok(());
        };
        let cap = state::Maps::ct_capacity(&state.maps_dir())?;
        self.scale = cap.div_ceil(netpath_common::ct::MAX_CT4).max(1);
        let capacity = f64::from(cap);
        if self
            .calibrated
            .is_none_or(|t| t.elapsed() >= CALIBRATE_EVERY)
        {
            conntrack::calibrate(dp)?;
            self.calibrated = Some(Instant::now());
        }
        let refused = dp
            .maps
            .traffic(
                netpath_common::counter_scope::CONNTRACK,
                0,
                netpath_common::counter_kind::CT_REFUSED,
            )?
            .packets;
        if let Some(before) = self.refused
            && refused > before
        {
            warn!(
                "conntrack table at its limit: {} new flow(s) refused since the last sweep",
                refused - before
            );
        }
        self.refused = Some(refused);
        let t = Instant::now();
        let found = conntrack::sweep(dp, self.pressure.then_some(PRESSURE_TIMEOUT_MS))?;
        self.took = t.elapsed();
        let took_us = self.took.as_micros() as u64;
        let sweep = Sweep {
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            took_us,
            entries: found.entries - found.removed_entries.min(found.entries),
            flows: found.flows,
            embryonic: found.embryonic,
            removed_flows: found.removed_flows,
            pressure: self.pressure,
        };
        // A flood's log is one line when it starts and one when it ends,
        // not one per sweep.
        if found.removed_flows > 0 && !self.flood {
            info!(
                "swept {} expired flow(s){}",
                found.removed_flows,
                if self.pressure {
                    " (under pressure)"
                } else {
                    ""
                }
            );
        }
        // An unreplied flow has two entries.
        let flood = f64::from(found.embryonic) * 2.0 >= FLOOD_FILL * capacity;
        // The IPv6 table is smaller and fills by itself (its live count,
        // as this pass set it, against its own capacity).
        let v6 = dp.maps.v6.ct_fill()?.0.max(0) as f64 / f64::from(netpath_common::ct6::MAX_CT6);
        let full = f64::from(sweep.entries) >= PRESSURE_FILL * capacity || v6 >= PRESSURE_FILL;
        self.full = full;
        if flood != self.flood {
            info!(
                "{} ({} unreplied flows, {} of {capacity} entries)",
                if flood {
                    "embryonic flows flood the conntrack table: sweeping faster"
                } else {
                    "the flood of unreplied flows is over"
                },
                found.embryonic,
                sweep.entries,
            );
            self.flood = flood;
        }
        // Pressure ends once the flood's leftovers are gone too (and the
        // table is well below half full), not as soon as it ebbs.
        let pressure = if self.pressure {
            f64::from(sweep.entries) >= PRESSURE_FILL * 0.8 * capacity
                || v6 >= PRESSURE_FILL * 0.8
                || f64::from(found.embryonic) * 2.0 >= LEFTOVER_FILL * capacity
        } else {
            full || flood
        };
        if pressure != self.pressure {
            info!(
                "conntrack table {} pressure ({} of {capacity} entries): unreplied flows {}",
                if pressure { "under" } else { "no longer under" },
                sweep.entries,
                if pressure {
                    format!("go after {PRESSURE_TIMEOUT_MS} ms")
                } else {
                    "keep their timeouts".to_owned()
                }
            );
            self.pressure = pressure;
        }
        self.report.sweeps += 1;
        self.report.swept_flows += u64::from(found.removed_flows);
        self.report.last_sweep = Some(sweep);
        Ok(())
    }

    /// Writes the report where `status` reads it (atomically: a new file
    /// renamed over the old one).
    pub(crate) fn write(&self, cookie: u64) -> Result<()> {
        let path = report_path(cookie);
        let tmp = path.with_extension("json.new");
        std::fs::write(&tmp, serde_json::to_vec(&self.report)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}
