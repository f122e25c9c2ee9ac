//! Prometheus metrics (`--metrics ADDR`): the datapath's counters and
//! tables in Prometheus's text format (the `prometheus` crate), served by
//! the daemon over HTTP (hyper) at `/metrics`, on the address it is told
//! and nowhere else. Every scrape reads the pinned maps afresh.

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{Context as _, Result};
use netpath_common::{DropReason, counter_kind, counter_scope, ct::fill};

use crate::{
    attach::build_id,
    codec,
    plumbing::Netlink,
    state::{Maps, StateDir},
};

/// What one scrape reads, gathered first so rendering is pure.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Counters: (scope, id, kind) -> (packets, bytes).
    pub counters: BTreeMap<(u16, u32, u16), (u64, u64)>,
    /// Network id -> bridge.
    pub networks: BTreeMap<u32, String>,
    /// Managed interface ifindex -> name.
    pub ifaces: BTreeMap<u32, String>,
    pub ct_entries: u64,
    pub ct_capacity: u64,
    pub published_ports: u64,
    /// Published port counter id -> "HOSTPORT/PROTO -> CONTAINER:PORT".
    pub published: BTreeMap<u32, String>,
    /// Map -> (entries, capacity).
    pub maps: BTreeMap<&'static str, (u64, u64)>,
}

/// Reads the maps for a scrape.
pub async fn snapshot(state: &StateDir, nl: &Netlink) -> Result<Snapshot> {
    let maps = Maps::open(state)?;
    let mut s = Snapshot::default();
    for r in maps.counters.iter() {
        let Ok((k, per_cpu)) = r else { continue };
        let c = per_cpu
            .iter()
            .fold(netpath_common::Counter::default(), |a, c| a.add(*c));
        s.counters
            .insert((k.scope, k.id, k.kind), (c.packets, c.bytes));
    }
    s.networks = maps
        .networks()?
        .into_iter()
        .map(|(id, i)| (id, codec::ifname_from_bytes(&i.bridge_name)))
        .collect();
    let names = nl.names().await?;
    s.ifaces = maps
        .ifaces()?
        .into_keys()
        .map(|i| {
            (
                i,
                names.get(&i).cloned().unwrap_or_else(|| format!("if{i}")),
            )
        })
        .collect();
    let capacity = Maps::ct_capacity(&state.maps_dir())?;
    let (live, _) = maps.ct_fill()?;
    s.ct_entries = live.max(0) as u64;
    s.ct_capacity = u64::from(capacity);
    let mappings = maps.published()?;
    let published = mappings.len() as u64;
    s.published_ports = published;
    s.published = mappings
        .iter()
        .map(|(k, v)| (v.id, crate::publish::Ports::of(k, v).to_string()))
        .collect();
    s.maps.insert("NP_CT4", (s.ct_entries, u64::from(capacity)));
    s.maps.insert(
        "NP_PUBLISH4",
        (published, u64::from(netpath_common::MAX_PUBLISH)),
    );
    s.maps.insert(
        "NP_IFACES",
        (s.ifaces.len() as u64, u64::from(netpath_common::MAX_IFACES)),
    );
    s.maps.insert(
        "NP_NETWORKS",
        (
            s.networks.len() as u64,
            u64::from(netpath_common::MAX_NETWORKS),
        ),
    );
    s.maps.insert(
        "NP_LEASES4",
        (
            maps.leases()?.len() as u64,
            u64::from(netpath_common::MAX_LEASES),
        ),
    );
    s.maps.insert(
        "NP_COUNTERS",
        (
            s.counters.len() as u64,
            u64::from(netpath_common::MAX_COUNTERS),
        ),
    );
    Ok(s)
}

/// The exposition of `s` (Prometheus text format, which `promtool check
/// metrics` and every Prometheus read).
pub fn render(s: &Snapshot) -> Result<String> {
    use prometheus::{
        Encoder as _, GaugeVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
    };
    let reg = Registry::new();
    let counters = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        reg.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let drops = counters(
        "netpath_drop_packets_total",
        "Packets dropped, by network and reason",
        &["network", "reason"],
    )?;
    let iface_drops = counters(
        "netpath_interface_drop_packets_total",
        "Packets dropped, by interface and reason (drops of no network included)",
        &["interface", "reason"],
    )?;
    let fwd_packets = counters(
        "netpath_forward_packets_total",
        "Packets sent by (from_containers) or delivered to (to_containers) a network's containers",
        &["network", "direction"],
    )?;
    let fwd_bytes = counters(
        "netpath_forward_bytes_total",
        "Bytes sent by or delivered to a network's containers",
        &["network", "direction"],
    )?;
    let c2c = counters(
        "netpath_c2c_fast_packets_total",
        "Packets between two containers of a network handed from port to port, past the bridge (also in netpath_forward_packets_total to_containers)",
        &["network"],
    )?;
    let nat = counters(
        "netpath_nat_translations_total",
        "Packets translated: snat (masquerade), rev_snat (replies), dnat (published ports), rev_dnat",
        &["network", "kind"],
    )?;
    let if_packets = counters(
        "netpath_interface_packets_total",
        "Packets seen by netpath's programs, by interface and direction",
        &["interface", "direction"],
    )?;
    let if_bytes = counters(
        "netpath_interface_bytes_total",
        "Bytes seen by netpath's programs, by interface and direction",
        &["interface", "direction"],
    )?;
    let lost = counters(
        "netpath_monitor_events_lost_total",
        "Monitor events lost, to the rate limit or a full ring",
        &["cause"],
    )?;
    let ct_refused = counters(
        "netpath_conntrack_refused_total",
        "New flows refused because the conntrack table was at its limit",
        &[],
    )?;
    let network = |id: u32| {
        s.networks
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    };
    let iface = |id: u32| {
        s.ifaces
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("if{id}"))
    };
    for (&(scope, id, kind), &(packets, bytes)) in &s.counters {
        let reason = kind
            .checked_sub(counter_kind::DROP_BASE)
            .and_then(DropReason::from_u16);
        match (scope, kind, reason) {
            (counter_scope::NETWORK, _, Some(r)) => drops
                .with_label_values(&[network(id).as_str(), r.as_str()])
                .inc_by(packets),
            (counter_scope::IFACE, _, Some(r)) => iface_drops
                .with_label_values(&[iface(id).as_str(), r.as_str()])
                .inc_by(packets),
            (
                counter_scope::NETWORK,
                counter_kind::NET_FROM_CONTAINERS | counter_kind::NET_TO_CONTAINERS,
                _,
            ) => {
                let l = [network(id), counter_kind::name(kind).to_owned()];
                fwd_packets.with_label_values(&l).inc_by(packets);
                fwd_bytes.with_label_values(&l).inc_by(bytes);
            }
            (counter_scope::NETWORK, counter_kind::NET_C2C_FAST, _) => c2c
                .with_label_values(&[network(id).as_str()])
                .inc_by(packets),
            (
                counter_scope::NETWORK,
                counter_kind::NET_SNAT
                | counter_kind::NET_REV_SNAT
                | counter_kind::NET_DNAT
                | counter_kind::NET_REV_DNAT,
                _,
            ) => nat
                .with_label_values(&[network(id).as_str(), counter_kind::name(kind)])
                .inc_by(packets),
            (counter_scope::IFACE, counter_kind::IF_INGRESS | counter_kind::IF_EGRESS, _) => {
                let l = [iface(id), counter_kind::name(kind).to_owned()];
                if_packets.with_label_values(&l).inc_by(packets);
                if_bytes.with_label_values(&l).inc_by(bytes);
            }
            (counter_scope::MONITOR, counter_kind::EVENTS_LOST_RATE, _) => {
                lost.with_label_values(&["rate_limit"]).inc_by(packets)
            }
            (counter_scope::MONITOR, counter_kind::EVENTS_LOST_FULL, _) => {
                lost.with_label_values(&["ring_full"]).inc_by(packets)
            }
            (counter_scope::CONNTRACK, counter_kind::CT_REFUSED, _) => {
                ct_refused.with_label_values::<&str>(&[]).inc_by(packets)
            }
            _ => {}
        }
    }
    let gauge = |name: &str, help: &str, v: i64| -> Result<()> {
        let g = IntGauge::new(name, help)?;
        g.set(v);
        reg.register(Box::new(g))?;
        Ok(())
    };
    gauge(
        "netpath_conntrack_entries",
        "Conntrack entries in use (two per flow)",
        s.ct_entries as i64,
    )?;
    gauge(
        "netpath_conntrack_capacity",
        "Conntrack entries the table holds at most",
        s.ct_capacity as i64,
    )?;
    gauge(
        "netpath_conntrack_max_flows",
        "Flows admitted before new ones are refused",
        i64::from(fill::max_flows(s.ct_capacity as u32)),
    )?;
    gauge(
        "netpath_published_ports",
        "Published host ports (each port of a range counts)",
        s.published_ports as i64,
    )?;
    let pressure = GaugeVec::new(
        Opts::new("netpath_map_pressure", "How full a map is, from 0 to 1"),
        &["map"],
    )?;
    reg.register(Box::new(pressure.clone()))?;
    for (map, (entries, capacity)) in &s.maps {
        let v = if *capacity == 0 {
            0.0
        } else {
            *entries as f64 / *capacity as f64
        };
        pressure.with_label_values(&[*map]).set(v);
    }
    // The build as labels of a gauge of 1 (Prometheus's convention for
    // "info" metrics).
    let build = GaugeVec::new(
        Opts::new(
            "netpath_build_info",
            "The build of netpath serving these metrics",
        ),
        &["version", "build"],
    )?;
    reg.register(Box::new(build.clone()))?;
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), build_id().as_str()])
        .set(1.0);
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&reg.gather(), &mut out)
        .context("encoding metrics")?;
    String::from_utf8(out).context("metrics text")
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once; more wait in the kernel's backlog. A
/// scrape takes milliseconds: Prometheus needs one.
const MAX_CONNECTIONS: usize = 8;
/// A request must arrive whole within this, and a connection ends after
/// [`CONNECTION_LIFETIME`]: a client that sends nothing holds nothing.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Binds the metrics listener (so a bad address fails where it is asked
/// for, not later).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))
}

/// Serves `/metrics` on `listener` until the task is dropped, at most
/// [`MAX_CONNECTIONS`] at once, each bounded in time; accept errors (out
/// of file descriptors) back off instead of spinning.
pub async fn serve(listener: tokio::net::TcpListener, state: StateDir) {
    use http_body_util::Full;
    use hyper::{Request, Response, body::Bytes, service::service_fn};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    if req.uri().path() != "/metrics" {
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    } else {
                        let text = match Netlink::new() {
                            Ok(nl) => match snapshot(&state, &nl).await {
                                Ok(s) => render(&s),
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(e),
                        };
                        match text {
                            Ok(t) => Response::builder()
                                .header("content-type", CONTENT_TYPE)
                                .body(Full::new(Bytes::from(t))),
                            Err(e) => Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::from(format!("{e:#}\n")))),
                        }
                    }
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_families_with_names_and_labels() {
        let mut s = Snapshot::default();
        s.networks.insert(1, "np0".into());
        s.ifaces.insert(7, "c1h".into());
        let drop = counter_kind::DROP_BASE + DropReason::Isolation as u16;
        s.counters
            .insert((counter_scope::NETWORK, 1, drop), (3, 222));
        s.counters.insert((counter_scope::IFACE, 7, drop), (3, 222));
        s.counters.insert(
            (counter_scope::NETWORK, 1, counter_kind::NET_FROM_CONTAINERS),
            (10, 1000),
        );
        s.counters.insert(
            (counter_scope::NETWORK, 1, counter_kind::NET_SNAT),
            (4, 400),
        );
        s.counters.insert(
            (counter_scope::IFACE, 7, counter_kind::IF_INGRESS),
            (12, 1200),
        );
        s.ct_entries = 4;
        s.ct_capacity = 262_144;
        s.published_ports = 2;
        s.maps.insert("NP_CT4", (4, 262_144));
        let text = render(&s).unwrap();
        for want in [
            "netpath_drop_packets_total{network=\"np0\",reason=\"drop_isolation\"} 3",
            "netpath_interface_drop_packets_total{interface=\"c1h\",reason=\"drop_isolation\"} 3",
            "netpath_forward_packets_total{direction=\"from_containers\",network=\"np0\"} 10",
            "netpath_forward_bytes_total{direction=\"from_containers\",network=\"np0\"} 1000",
            "netpath_nat_translations_total{kind=\"snat\",network=\"np0\"} 4",
            "netpath_interface_packets_total{direction=\"ingress\",interface=\"c1h\"} 12",
            "netpath_conntrack_entries 4",
            "netpath_conntrack_capacity 262144",
            "netpath_published_ports 2",
            "netpath_map_pressure{map=\"NP_CT4\"} 0.0000152587890625",
            "# TYPE netpath_drop_packets_total counter",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(text.contains("netpath_build_info{build=\""), "{text}");
    }
}
