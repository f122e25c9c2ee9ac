//! `netpath top`: a live terminal view (ratatui) of packet and byte rates
//! per network, interface and published port, drops by reason and the
//! conntrack table's fill, refreshed every second from the pinned maps.
//! `q` (or Esc, or Ctrl-C) quits. Laid out for 80×24 and up.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use netpath_common::{DropReason, counter_kind, counter_scope};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Row, Table},
};

use crate::{
    metrics::{self, Snapshot},
    plumbing::Netlink,
    state::Maps,
};

/// Rates between two snapshots, ready to draw.
#[derive(Debug, Default, PartialEq)]
pub struct View {
    /// Network: from containers (pkt/s, B/s), to containers (pkt/s, B/s).
    pub networks: Vec<(String, [f64; 4])>,
    /// Interface: ingress (pkt/s, B/s), egress (pkt/s, B/s).
    pub ifaces: Vec<(String, [f64; 4])>,
    /// Published port: to the container (pkt/s, B/s), back (pkt/s, B/s).
    pub ports: Vec<(String, [f64; 4])>,
    /// Drop reason: per second, total.
    pub drops: Vec<(String, f64, u64)>,
    pub ct_entries: u64,
    pub ct_capacity: u64,
}

/// The rates from `prev` to `cur`, `secs` apart.
pub fn view(prev: &Snapshot, cur: &Snapshot, secs: f64) -> View {
    let get = |s: &Snapshot, scope, id, kind| {
        s.counters
            .get(&(scope, id, kind))
            .copied()
            .unwrap_or((0, 0))
    };
    let rate = |scope, id, kind| {
        let (p1, b1) = get(cur, scope, id, kind);
        let (p0, b0) = get(prev, scope, id, kind);
        (
            p1.saturating_sub(p0) as f64 / secs,
            b1.saturating_sub(b0) as f64 / secs,
        )
    };
    let pair = |scope, id, a, b| {
        let (ap, ab) = rate(scope, id, a);
        let (bp, bb) = rate(scope, id, b);
        [ap, ab, bp, bb]
    };
    let mut drops: BTreeMap<&'static str, (f64, u64)> = BTreeMap::new();
    for (&(scope, id, kind), &(packets, _)) in &cur.counters {
        if scope != counter_scope::IFACE {
            continue;
        }
        let Some(r) = kind
            .checked_sub(counter_kind::DROP_BASE)
            .and_then(DropReason::from_u16)
        else {
            continue;
        };
        let d = drops.entry(r.as_str()).or_default();
        d.0 += rate(scope, id, kind).0;
        d.1 += packets;
    }
    View {
        networks: cur
            .networks
            .iter()
            .map(|(id, name)| {
                (
                    name.clone(),
                    pair(
                        counter_scope::NETWORK,
                        *id,
                        counter_kind::NET_FROM_CONTAINERS,
                        counter_kind::NET_TO_CONTAINERS,
                    ),
                )
            })
            .collect(),
        ifaces: cur
            .ifaces
            .iter()
            .map(|(id, name)| {
                (
                    name.clone(),
                    pair(
                        counter_scope::IFACE,
                        *id,
                        counter_kind::IF_INGRESS,
                        counter_kind::IF_EGRESS,
                    ),
                )
            })
            .collect(),
        ports: cur
            .published
            .iter()
            .map(|(id, label)| {
                (
                    label.clone(),
                    pair(
                        counter_scope::PUBLISH,
                        *id,
                        counter_kind::PUB_IN,
                        counter_kind::PUB_OUT,
                    ),
                )
            })
            .collect(),
        drops: drops
            .into_iter()
            .map(|(r, (per_s, total))| (r.trim_start_matches("drop_").to_owned(), per_s, total))
            .collect(),
        ct_entries: cur.ct_entries,
        ct_capacity: cur.ct_capacity,
    }
}

/// A rate as humans read it: 12, 3.4k, 5.6M.
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn rate_rows<'a>(rows: &'a [(String, [f64; 4])]) -> Vec<Row<'a>> {
    rows.iter()
        .map(|(name, r)| {
            Row::new([
                Cell::from(name.as_str()),
                Cell::from(human(r[0])),
                Cell::from(human(r[1])),
                Cell::from(human(r[2])),
                Cell::from(human(r[3])),
            ])
        })
        .collect()
}

fn rate_table<'a>(
    title: &'a str,
    first: &'a str,
    a: &'a str,
    b: &'a str,
    rows: &'a [(String, [f64; 4])],
) -> Table<'a> {
    let header = Row::new([
        first.to_owned(),
        format!("{a} pkt/s"),
        format!("{a} B/s"),
        format!("{b} pkt/s"),
        format!("{b} B/s"),
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    Table::new(
        rate_rows(rows),
        [
            Constraint::Fill(1),
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(10),
        ],
    )
    .header(header)
    .block(Block::bordered().title(title))
}

/// Draws `v` into `f`.
pub fn draw(f: &mut Frame, v: &View) {
    let fill = if v.ct_capacity == 0 {
        0.0
    } else {
        v.ct_entries as f64 * 100.0 / v.ct_capacity as f64
    };
    let [head, nets, ifaces, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(v.networks.len().clamp(1, 4) as u16 + 3),
        Constraint::Fill(1),
        Constraint::Length(7),
    ])
    .areas(f.area());
    f.render_widget(
        Line::from(format!(
            "netpath top · conntrack {} of {} entries ({fill:.1} %) · q quits",
            v.ct_entries, v.ct_capacity
        )),
        head,
    );
    f.render_widget(
        rate_table("networks", "NETWORK", "from", "to", &v.networks),
        nets,
    );
    f.render_widget(
        rate_table("interfaces", "INTERFACE", "in", "out", &v.ifaces),
        ifaces,
    );
    let [ports, drops] =
        Layout::horizontal([Constraint::Fill(3), Constraint::Fill(2)]).areas(bottom);
    let port_rows: Vec<Row> = v
        .ports
        .iter()
        .map(|(label, r)| Row::new([label.clone(), human(r[0]), human(r[2])]))
        .collect();
    f.render_widget(
        Table::new(
            port_rows,
            [
                Constraint::Fill(1),
                Constraint::Length(7),
                Constraint::Length(7),
            ],
        )
        .header(
            Row::new(["PUBLISHED", "in/s", "out/s"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title("published ports")),
        ports,
    );
    let drop_rows: Vec<Row> = v
        .drops
        .iter()
        .map(|(r, per_s, total)| Row::new([r.clone(), human(*per_s), total.to_string()]))
        .collect();
    f.render_widget(
        Table::new(
            drop_rows,
            [
                Constraint::Fill(1),
                Constraint::Length(6),
                Constraint::Length(8),
            ],
        )
        .header(
            Row::new(["DROP", "/s", "total"]).style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title("drops")),
        drops,
    );
}

/// Whether a key asks to quit.
fn quit(e: &Event) -> bool {
    match e {
        Event::Key(k) => {
            matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)
        }
        _ => false,
    }
}

/// Runs the view until `q`.
pub async fn run(interval: Duration) -> Result<()> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top draws on a terminal: run it in one (status --json and the metrics serve scripts)"
        );
    }
    let (state, _) = Maps::open_current()?;
    // SIGTERM, SIGINT (outside raw mode) and SIGHUP (the terminal went)
    // end it with the terminal restored.
    let mut stop = crate::events::Stop::new()?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let nl = Netlink::new()?;
    let mut prev = metrics::snapshot(&state, &nl).await?;
    let mut at = tokio::time::Instant::now();
    let mut current = View::default();
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            terminal.draw(|f| draw(f, &current))?;
            let next = at + interval;
            // Keys are read every 50 ms until the next refresh.
            while tokio::time::Instant::now() < next {
                if event::poll(Duration::ZERO)? && quit(&event::read()?) {
                    return anyhow::Ok(());
                }
                tokio::select! {
                    _ = stop.recv() => return anyhow::Ok(()),
                    _ = hup.recv() => return anyhow::Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            let cur = metrics::snapshot(&state, &nl).await?;
            let now = tokio::time::Instant::now();
            current = view(&prev, &cur, (now - at).as_secs_f64());
            (prev, at) = (cur, now);
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::{Terminal, backend::TestBackend};

    #[test]
    fn rates_between_snapshots_fit_an_80_by_24_screen() {
        let mut a = Snapshot::default();
        a.networks.insert(1, "np0".into());
        a.ifaces.insert(7, "c1h".into());
        a.published.insert(1, "8080/tcp -> 172.30.0.2:80".into());
        let mut b = Snapshot {
            ct_entries: 4,
            ct_capacity: 262_144,
            ..Snapshot::default()
        };
        b.networks = a.networks.clone();
        b.ifaces = a.ifaces.clone();
        b.published = a.published.clone();
        let drop = counter_kind::DROP_BASE + DropReason::Isolation as u16;
        a.counters.insert(
            (counter_scope::NETWORK, 1, counter_kind::NET_FROM_CONTAINERS),
            (100, 10_000),
        );
        b.counters.insert(
            (counter_scope::NETWORK, 1, counter_kind::NET_FROM_CONTAINERS),
            (300, 30_000),
        );
        b.counters.insert(
            (counter_scope::IFACE, 7, counter_kind::IF_INGRESS),
            (4000, 400_000),
        );
        b.counters.insert((counter_scope::IFACE, 7, drop), (6, 600));
        b.counters.insert(
            (counter_scope::PUBLISH, 1, counter_kind::PUB_IN),
            (50, 5000),
        );
        let v = view(&a, &b, 2.0);
        assert_eq!(
            v.networks,
            vec![("np0".to_owned(), [100.0, 10_000.0, 0.0, 0.0])]
        );
        assert_eq!(v.ifaces[0].1[0], 2000.0);
        assert_eq!(v.ports[0].1[0], 25.0);
        assert_eq!(v.drops, vec![("isolation".to_owned(), 3.0, 6)]);
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| draw(f, &v)).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .chunks(80)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        for want in [
            "conntrack 4 of 262144",
            "np0",
            "10.0k",
            "c1h",
            "2.0k",
            "8080/tcp -> 172.30.0.2:80",
            "isolation",
        ] {
            assert!(screen.contains(want), "{want} missing:\n{screen}");
        }
    }
}
