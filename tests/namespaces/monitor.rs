//! `netpath monitor` with real traffic: a container hitting isolation is
//! an event within a second with the right reason and addresses, JSON
//! lines parse, filters filter, translations show, and a flood of refused
//! packets neither stalls the monitor nor goes uncounted. IPv6 drops and
//! NAT66 flows show their IPv6 addresses.

use crate::harness;
use crate::ipv6::{connect as connect6, host_and_ext6, tcp6_to, up_dual};

use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use harness::{
    Lab, NETPATH, Netns, addr, lab_up, netpath_ok,
    packet::{self, UDP, frame},
    raw, topology,
};

/// A monitor in `ns` with `args`, its JSON lines coming through a channel
/// (read on a thread, so a test can wait with a deadline).
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Monitor {
    fn start(ns: &Netns, args: &[&str]) -> Self {
        let mut child = ns
            .netpath(NETPATH)
            .arg("monitor")
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let v: serde_json::Value =
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        // Its first heartbeat is written before it reads.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, lines }
    }

    /// The next line that `keep` accepts, within `wait`.
    fn next(
        &self,
        wait: Duration,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if keep(&v) => return Some(v),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // SAFETY: signalling the monitor this test started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn isolated_attempt(lab: &Lab, to: &str, port: u16) {
    let r = topology::tcp_echo(
        &lab.ext,
        addr("0.0.0.0", port),
        &lab.c1,
        addr(to, port),
        b"x",
    );
    assert!(r.is_err(), "isolation let {to}:{port} through");
}

#[test]
fn drops_and_flows_are_events_with_filters() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["up", "--bridge", "np1", "--subnet", "172.31.0.0/24"],
    );
    let (_c3, c3_ip) = harness::connect(&lab.host, "c3", "np1", &[]);

    // Isolation: an event within a second, right reason and addresses.
    let all = Monitor::start(&lab.host, &["--events", "drop,flow"]);
    let t = Instant::now();
    attempt_from_41000(&lab, &c3_ip);
    let e = all
        .next(Duration::from_secs(3), |v| v["reason"] == "drop_isolation")
        .expect("an isolation drop event");
    assert!(
        t.elapsed() < Duration::from_millis(1300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e["event"], "drop");
    assert_eq!(e["proto"], "tcp");
    assert_eq!(e["src"], Lab::C1);
    assert_eq!(e["sport"], 41000);
    assert_eq!(e["dst"], c3_ip.as_str());
    assert_eq!(e["dport"], 7001);
    assert_eq!(e["iface"], "c1h");
    assert_eq!(e["network"], Lab::BRIDGE);
    assert!(e["len"].as_u64().unwrap() >= 54, "{e}");
    // One reader per ring: a second monitor is refused, one line.
    let second = harness::netpath(&lab.host, &["monitor", "-c", "1"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("another netpath monitor runs"),
        "{second:?}"
    );
    drop(all);

    // Filters: a reason and a network that do not match see nothing.
    for filter in [
        &["--reason", "icc"][..],
        &["--network", "np1", "--reason", "isolation"],
    ] {
        let m = Monitor::start(&lab.host, filter);
        attempt_from_41000(&lab, &c3_ip);
        assert!(
            m.next(Duration::from_millis(1500), |_| true).is_none(),
            "{filter:?} let an event through"
        );
    }

    // Flows and translations: a masqueraded connection out.
    let mut nat = Monitor::start(
        &lab.host,
        &["--events", "nat", "--host", Lab::EXT, "-c", "1"],
    );
    let seen = lab.tcp_out(&lab.c1, 7300).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);
    let e = nat
        .next(Duration::from_secs(3), |_| true)
        .expect("a translated flow");
    assert_eq!(e["event"], "nat");
    assert_eq!(e["src"], Lab::C1);
    assert_eq!(e["dst"], Lab::EXT);
    assert_eq!(e["dport"], 7300);
    assert_eq!(e["nat"]["src"], Lab::UPLINK);
    assert_eq!(e["nat"]["dst"], Lab::EXT);
    assert_eq!(e["nat"]["sport"], seen.port());
    // --count: it exits by itself after one event.
    let deadline = Instant::now() + Duration::from_secs(2);
    while nat.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(nat.child.try_wait().unwrap().is_some_and(|s| s.success()));
    drop(nat);
    // Every new flow with --events flow, filtered by port.
    let flows = Monitor::start(&lab.host, &["--events", "flow", "--port", "7301"]);
    lab.tcp_out(&lab.c1, 7301).unwrap();
    let e = flows
        .next(Duration::from_secs(3), |_| true)
        .expect("a flow event");
    assert_eq!(
        (e["event"].as_str(), e["dport"].as_u64()),
        (Some("flow"), Some(7301))
    );
}

/// c1 tries 172.31/24 from port 41000 (isolation drops it).
fn attempt_from_41000(lab: &Lab, c3_ip: &str) {
    let out = std::process::Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{}", lab.c1.name),
            "/usr/bin/python3",
            "-c",
        ])
        .arg(format!(
            "import socket; s=socket.socket(); s.settimeout(0.2)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 41000))\n\
             try: s.connect(('{c3_ip}', 7001))\nexcept Exception: pass"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_flood_is_rate_limited_counted_and_does_not_stall_the_monitor() {
    require_root!();
    let _heavy = harness::exclusive();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["up", "--bridge", "np1", "--subnet", "172.31.0.0/24"],
    );
    let (_c3, c3_ip) = harness::connect(&lab.host, "c3", "np1", &[]);
    let mon = Monitor::start(&lab.host, &[]);
    // 60,000 packets with a martian source at the uplink, as fast as the
    // packet socket sends them: far past the 2,000 events a second a CPU.
    let uplink: Ipv4Addr = Lab::UPLINK.parse().unwrap();
    let lo: Ipv4Addr = "127.0.0.1".parse().unwrap();
    let f = raw::with_macs(
        frame(
            UDP,
            lo,
            uplink,
            &packet::udp(lo, uplink, 1, 9, b"flood", true),
            1,
            0,
        ),
        raw::mac_of(&lab.host, "uplink0"),
        raw::mac_of(&lab.ext, "eth0"),
    );
    let sent = raw::send(&lab.ext, "eth0", vec![f], 60_000);
    assert_eq!(sent, 60_000);
    let martian = |v: &serde_json::Value| v["reason"] == "drop_martian_source";
    assert!(mon.next(Duration::from_secs(2), martian).is_some());
    let lost = mon
        .next(Duration::from_secs(4), |v| v["event"] == "lost")
        .expect("a lost line");
    assert!(lost["rate_limited"].as_u64().unwrap() > 10_000, "{lost}");
    // Not stalled: a new drop still shows within a second or so.
    isolated_attempt(&lab, &c3_ip, 7002);
    assert!(
        mon.next(Duration::from_secs(3), |v| v["reason"] == "drop_isolation")
            .is_some(),
        "the monitor stalled after the flood"
    );
}

#[test]
fn ipv6_drops_and_nat66_flows_are_events_with_their_addresses() {
    require_root!();
    let (host, ext) = host_and_ext6("m6h", "m6e");
    up_dual(&host, "np6m", "172.26.0.0/24", "fd00:26::/64", &[]);
    let (c1, a1) = connect6(&host, "m6c1", "np6m");
    ext.ip(&["-6", "route", "add", "fd00:26::/64", "via", "fd00:ee::1"])
        .unwrap();

    // A translated flow out, filtered by an IPv6 address.
    let nat = Monitor::start(&host, &["--events", "nat", "--host", "fd00:ee::2"]);
    let seen = tcp6_to(&ext, 7610, &c1, "fd00:ee::2", 7610).expect("c1 -> ext");
    assert_eq!(seen, "fd00:ee::1");
    let e = nat
        .next(Duration::from_secs(3), |_| true)
        .expect("a NAT66 flow event");
    assert_eq!(
        (&e["event"], &e["proto"], &e["src"], &e["dst"], &e["dport"]),
        (
            &"nat".into(),
            &"tcp".into(),
            &a1.as_str().into(),
            &"fd00:ee::2".into(),
            &7610.into()
        ),
        "{e}"
    );
    assert_eq!(e["nat"]["src"], "fd00:ee::1", "{e}");
    drop(nat);

    // Outside straight at the container: a drop with both IPv6 addresses.
    let drops = Monitor::start(&host, &["--events", "drop", "--host", &a1]);
    assert!(tcp6_to(&c1, 7611, &ext, &a1, 7611).is_err());
    let e = drops
        .next(Duration::from_secs(3), |v| {
            v["reason"] == "drop_direct_routing"
        })
        .expect("a direct-routing drop event");
    assert_eq!(
        (&e["proto"], &e["src"], &e["dst"], &e["dport"], &e["iface"]),
        (
            &"tcp".into(),
            &"fd00:ee::2".into(),
            &a1.as_str().into(),
            &7611.into(),
            &"uplink0".into()
        ),
        "{e}"
    );
}
