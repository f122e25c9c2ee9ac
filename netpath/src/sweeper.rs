//! The daemon's conntrack sweeping: when a tick walks the table (every
//! tick for the default table or while unreplied flows are worth it, less
//! often for a larger one, sooner when it grows or refuses flows, faster
//! during a flood), when the table is under pressure (unreplied flows then
//! go after 500 ms), and the report `status` reads
//! (`/run/netpath/daemon-<cookie>.json`).

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
/// Pressure lasts until the unreplied flows a pass finds (left, or
/// removed under pressure) fill less than this.
const LEFTOVER_FILL: f64 = 0.01;
/// The sweep interval during a flood (the daemon's own, when shorter).
const FLOOD_INTERVAL: Duration = Duration::from_millis(500);
const FLOOD_INTERVAL_FULL: Duration = Duration::from_millis(250);
/// The timeout of unreplied flows under pressure: a handshake takes a
/// round trip, and a client whose handshake is cut retransmits its SYN
/// (a new flow) a second later, as after a lost SYN.
const PRESSURE_TIMEOUT_MS: u32 = 500;

/// The daemon's sweeping: an in-kernel pass when a tick finds one due
/// ([`Cadence`]), under pressure when the last pass found the table at
/// least [`PRESSURE_FILL`] full or a flood on ([`FLOOD_FILL`]).
pub(crate) struct Sweeper {
    report: Report,
    cadence: Cadence,
    /// When the datapath's entry count was last set from a pass.
    calibrated: Option<Instant>,
    /// New flows refused at the table's limit, as last seen.
    refused: Option<u64>,
}

/// A table that grew by this share of its capacity since the last pass is
/// walked at the next tick, whatever the interval: a flood shows within a
/// tick or two (60,000 new flows a second fill 5 % of a 2.7 M-entry table
/// in about a second) where a large calm table's interval is seconds.
const GROWTH_FILL: f64 = FLOOD_FILL / 2.0;

/// When a tick walks the table (what the last pass found, and the rule;
/// pure, so it is tested without a kernel).
///
/// The daemon ticks every interval (faster during a flood) and each tick
/// reads the table's counters ([`Seen`]); a pass, which walks every bucket of the table full
/// or not (about 0.3 µs an entry here, 0.6 s for 2 M entries), runs only
/// when it can find something: at the interval for the default table, or
/// while unreplied flows are worth sweeping often; scaled with the table's
/// size otherwise (timeouts are seconds to days: expiry only gets
/// coarser), a large table full of live flows included; and at once when
/// the table grew by [`GROWTH_FILL`], crossed into pressure, or refused a
/// new flow at its limit since. No pass takes more than a quarter of the
/// daemon's time.
#[derive(Debug, Clone, Copy)]
struct Cadence {
    /// When the last pass started, how long it took, and the datapath's
    /// live entry count and refused flows right after it.
    last: Option<Instant>,
    took: Duration,
    live_after: u64,
    refused_after: u64,
    /// The table's capacity over the default's (at least 1).
    scale: u32,
    flood: bool,
    pressure: bool,
    /// The last pass found the table at least [`PRESSURE_FILL`] full.
    full: bool,
    /// The last pass found unreplied flows (left, or removed under
    /// pressure) of at least [`LEFTOVER_FILL`] of the table: under
    /// pressure, each pass removes some.
    unreplied: bool,
}

impl Cadence {
    const fn new() -> Self {
        Self {
            last: None,
            took: Duration::ZERO,
            live_after: 0,
            refused_after: 0,
            scale: 1,
            flood: false,
            pressure: false,
            full: false,
            unreplied: false,
        }
    }

    /// How long until the next tick.
    fn tick_interval(&self, normal: Duration) -> Duration {
        if self.flood {
            normal
                .min(if self.full {
                    FLOOD_INTERVAL_FULL
                } else {
                    FLOOD_INTERVAL
                })
                .max(self.took * 4)
        } else {
            normal
        }
    }

    /// How long between passes when the table does not grow.
    fn pass_interval(&self, normal: Duration) -> Duration {
        let base = if self.flood {
            self.tick_interval(normal)
        } else if self.pressure && self.unreplied {
            normal
        } else {
            normal * self.scale
        };
        base.max(self.took * 4)
    }

    /// Whether the tick at `now` walks the table: `seen` is what the
    /// datapath says now (live entries, new flows refused so far, the
    /// IPv6 table's fill) of a table of `capacity` entries.
    fn due(&self, now: Instant, normal: Duration, seen: Seen, capacity: u32) -> bool {
        let Some(last) = self.last else {
            return true;
        };
        // Ticks come an interval apart and a little late: a pass due
        // within a tenth of one is due now.
        let since = now.saturating_duration_since(last) + normal / 10;
        if since >= self.pass_interval(normal) {
            return true;
        }
        if since < self.took * 4 {
            return false;
        }
        let capacity = capacity as f64;
        let grown = seen.live.saturating_sub(self.live_after) as f64;
        grown >= GROWTH_FILL * capacity
            // At the limit, where the table cannot grow by much: only a
            // pass makes room.
            || seen.refused > self.refused_after
            || (!self.pressure
                && (seen.live as f64 >= PRESSURE_FILL * capacity || seen.v6_fill >= PRESSURE_FILL))
    }
}

/// What a tick reads from the datapath: the live entry count, the new
/// flows refused at the limit, the IPv6 table's fill.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    live: u64,
    refused: u64,
    v6_fill: f64,
}

/// How often the datapath's entry count is set from a counting pass (for
/// the default table; in proportion for a larger one): it only drifts
/// when entries change behind its back. The pass cannot ride along a
/// sweep: a sweep removes a flow's two entries at once, one maybe not yet
/// walked, so what it walked less what it removed is not what is left.
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
            cadence: Cadence::new(),
            calibrated: None,
            refused: None,
        }
    }

    /// How long until the next tick (see [`Cadence`]).
    pub(crate) fn interval(&self, normal: Duration) -> Duration {
        self.cadence.tick_interval(normal)
    }

    /// One tick: reads the counters, and walks the table when a pass is
    /// due (see [`Cadence`]). Returns whether it did, so the report
    /// changed.
    pub(crate) fn tick(
        &mut self,
        state: &state::StateDir,
        loaded: &mut Option<Datapath>,
        normal: Duration,
    ) -> Result<bool> {
        let Some(dp) = Datapath::current(state, loaded, false)? else {
            // A command is loading programs: sweep on the next tick.
            return Ok(false);
        };
        let cap = state::Maps::ct_capacity(&state.maps_dir())?;
        self.cadence.scale = cap.div_ceil(netpath_common::ct::MAX_CT4).max(1);
        let capacity = f64::from(cap);
        let seen = |dp: &Datapath| -> Result<Seen> {
            Ok(Seen {
                live: dp.maps.ct_fill()?.0.max(0) as u64,
                refused: dp
                    .maps
                    .ct_counter(netpath_common::counter_kind::CT_REFUSED)?,
                v6_fill: dp.maps.v6.ct_fill()?.0.max(0) as f64
                    / f64::from(netpath_common::ct6::MAX_CT6),
            })
        };
        let before = seen(dp)?;
        if !self.cadence.due(Instant::now(), normal, before, cap) {
            return Ok(false);
        }
        // A counting pass of its own, on a pass's tick, and as much less
        // often as the passes on a larger table.
        if self
            .calibrated
            .is_none_or(|t| t.elapsed() >= CALIBRATE_EVERY * self.cadence.scale)
        {
            conntrack::calibrate(dp)?;
            self.calibrated = Some(Instant::now());
        }
        if let Some(earlier) = self.refused
            && before.refused > earlier
        {
            warn!(
                "conntrack table at its limit: {} new flow(s) refused since the last sweep",
                before.refused - earlier
            );
        }
        self.refused = Some(before.refused);
        let t = Instant::now();
        let pressure = self.cadence.pressure;
        let found = conntrack::sweep(dp, pressure.then_some(PRESSURE_TIMEOUT_MS))?;
        self.cadence.took = t.elapsed();
        self.cadence.last = Some(t);
        let after = seen(dp)?;
        (self.cadence.live_after, self.cadence.refused_after) = (after.live, after.refused);
        let took_us = self.cadence.took.as_micros() as u64;
        let sweep = Sweep {
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            took_us,
            // The datapath's count as the pass left it: what the pass
            // walked less what it removed is not (a flow's second entry
            // may go before the walk reached it).
            entries: u32::try_from(after.live).unwrap_or(u32::MAX),
            flows: found.flows,
            embryonic: found.embryonic,
            removed_flows: found.removed_flows,
            pressure,
        };
        // A flood's log is one line when it starts and one when it ends,
        // not one per sweep.
        if found.removed_flows > 0 && !self.cadence.flood {
            info!(
                "swept {} expired flow(s){}",
                found.removed_flows,
                if pressure { " (under pressure)" } else { "" }
            );
        }
        // Under pressure a pass removes most unreplied flows itself: those
        // count as found, or a flood would look over (and sweeping often
        // pointless) right after the pass that purged it. An unreplied
        // flow has two entries.
        let unreplied_found = f64::from(found.embryonic)
            + if pressure {
                f64::from(found.removed_flows)
            } else {
                0.0
            };
        let flood = unreplied_found * 2.0 >= FLOOD_FILL * capacity;
        // The IPv6 table is smaller and fills by itself (its live count,
        // as this pass set it, against its own capacity).
        let v6 = after.v6_fill;
        let full = f64::from(sweep.entries) >= PRESSURE_FILL * capacity || v6 >= PRESSURE_FILL;
        self.cadence.full = full;
        let unreplied = unreplied_found * 2.0 >= LEFTOVER_FILL * capacity;
        self.cadence.unreplied = unreplied;
        if flood != self.cadence.flood {
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
            self.cadence.flood = flood;
        }
        // Pressure ends once the flood's leftovers are gone too (and the
        // table is well below half full), not as soon as it ebbs.
        let pressure = if self.cadence.pressure {
            f64::from(sweep.entries) >= PRESSURE_FILL * 0.8 * capacity
                || v6 >= PRESSURE_FILL * 0.8
                || unreplied
        } else {
            full || flood
        };
        if pressure != self.cadence.pressure {
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
            self.cadence.pressure = pressure;
        }
        self.report.sweeps += 1;
        self.report.swept_flows += u64::from(found.removed_flows);
        self.report.last_sweep = Some(sweep);
        Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    const NORMAL: Duration = Duration::from_secs(1);
    /// The bench's table for 1.2 M flows, and the default one.
    const BIG: u32 = 2_742_857;
    const DEFAULT: u32 = netpath_common::ct::MAX_CT4;

    /// What a pass at `at` left: `live` entries of a table of `capacity`.
    fn after_pass(at: Instant, capacity: u32, live: u64, took: Duration) -> Cadence {
        Cadence {
            last: Some(at),
            took,
            live_after: live,
            scale: capacity.div_ceil(DEFAULT).max(1),
            ..Cadence::new()
        }
    }

    fn live(live: u64) -> Seen {
        Seen {
            live,
            ..Seen::default()
        }
    }

    #[test]
    fn the_first_tick_walks_the_table() {
        assert!(Cadence::new().due(Instant::now(), NORMAL, live(0), DEFAULT));
    }

    #[test]
    fn the_default_table_is_walked_every_tick() {
        let t = Instant::now();
        let c = after_pass(t, DEFAULT, 1000, Duration::from_millis(20));
        assert_eq!(c.tick_interval(NORMAL), NORMAL);
        assert!(c.due(t + NORMAL, NORMAL, live(1000), DEFAULT));
    }

    #[test]
    fn a_large_table_of_live_flows_is_walked_seldom_even_when_over_half_full() {
        // 1 M established flows in the bench's table: 73 % full, under
        // pressure, but nothing unreplied to sweep.
        let t = Instant::now();
        let n = 2_000_000;
        let mut c = after_pass(t, BIG, n, Duration::from_millis(600));
        c.pressure = true;
        c.full = true;
        assert_eq!(c.scale, 11);
        for s in 1..=9 {
            let now = t + NORMAL * s;
            assert!(!c.due(now, NORMAL, live(n + 20_000), BIG), "{s} s");
        }
        assert!(c.due(t + NORMAL * 11, NORMAL, live(n), BIG));
        // With unreplied flows worth sweeping, every tick the passes'
        // time allows (as before).
        c.unreplied = true;
        assert!(!c.due(t + NORMAL * 2, NORMAL, live(n), BIG));
        assert!(c.due(t + NORMAL * 3, NORMAL, live(n), BIG));
    }

    #[test]
    fn growth_crossing_into_pressure_or_refusals_bring_the_next_pass_forward() {
        let t = Instant::now();
        let c = after_pass(t, BIG, 100_000, Duration::from_millis(100));
        let now = t + NORMAL;
        // 5 % of the table since the last pass: a flood, maybe.
        assert!(!c.due(now, NORMAL, live(100_000 + 137_000), BIG));
        assert!(c.due(now, NORMAL, live(100_000 + 137_143), BIG));
        // Half full (IPv4, or the IPv6 table) while not under pressure.
        let mut c = after_pass(t, BIG, 1_300_000, Duration::from_millis(200));
        assert!(!c.due(now, NORMAL, live(1_370_000), BIG));
        assert!(c.due(now, NORMAL, live(1_371_429), BIG));
        let v6 = Seen {
            live: 1_300_000,
            v6_fill: 0.5,
            ..Seen::default()
        };
        assert!(c.due(now, NORMAL, v6, BIG));
        // Shrinking is no reason.
        assert!(!c.due(now, NORMAL, live(0), BIG));
        // At the limit, under pressure: a refused flow since the last pass
        // is, as soon as the passes' time allows.
        c.pressure = true;
        c.refused_after = 7;
        let refusing = Seen {
            live: 1_300_000,
            refused: 8,
            ..Seen::default()
        };
        assert!(!c.due(t + NORMAL / 2, NORMAL, refusing, BIG));
        assert!(c.due(t + NORMAL * 2, NORMAL, refusing, BIG));
        assert!(!c.due(
            t + NORMAL * 2,
            NORMAL,
            Seen {
                refused: 7,
                ..refusing
            },
            BIG
        ));
    }

    #[test]
    fn a_flood_ticks_fast_but_no_pass_takes_over_a_quarter_of_the_time() {
        let t = Instant::now();
        let mut c = after_pass(t, DEFAULT, 100_000, Duration::from_millis(50));
        c.flood = true;
        c.pressure = true;
        assert_eq!(c.tick_interval(NORMAL), FLOOD_INTERVAL);
        c.full = true;
        assert_eq!(c.tick_interval(NORMAL), FLOOD_INTERVAL_FULL);
        assert!(c.due(t + FLOOD_INTERVAL_FULL, NORMAL, live(100_000), DEFAULT));
        c.took = Duration::from_millis(200);
        assert_eq!(c.tick_interval(NORMAL), Duration::from_millis(800));
        assert_eq!(c.pass_interval(NORMAL), Duration::from_millis(800));
        // A calm large table: the scaled interval, or four passes' time.
        let c = after_pass(t, BIG, 10, Duration::from_secs(3));
        assert_eq!(c.pass_interval(NORMAL), Duration::from_secs(12));
        // Growth does not make passes closer than that either.
        assert!(!c.due(t + NORMAL * 5, NORMAL, live(1_000_000), BIG));
        assert!(c.due(t + NORMAL * 12, NORMAL, live(1_000_000), BIG));
    }
}
