//! Masquerade with real traffic: containers reach an external namespace that
//! has no route back to them, only through netpath's translation, while the
//! kernel's nat table stays empty.

use crate::harness;

use std::{
    net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use harness::{
    Lab, NETPATH, Netns, addr, flows, lab_up, lab_up_with, netpath, netpath_ok, status, topology,
};

/// A UDP echo server in `ns` on `port` that answers every datagram until
/// `window` has passed; returns the peers it saw, in order.
fn udp_echo_server(
    ns: &Netns,
    port: u16,
    window: Duration,
) -> JoinHandle<anyhow::Result<Vec<SocketAddrV4>>> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let s = UdpSocket::bind(addr("0.0.0.0", port))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let _ = tx.send(());
        let mut peers = Vec::new();
        let mut buf = vec![0u8; 65536];
        let end = Instant::now() + window;
        while Instant::now() < end {
            if let Ok((n, std::net::SocketAddr::V4(p))) = s.recv_from(&mut buf) {
                s.send_to(&buf[..n], p)?;
                peers.push(p);
            }
        }
        Ok(peers)
    });
    rx.recv_timeout(Duration::from_secs(3))
        .expect("UDP server ready");
    h
}

/// Sends `payload` from `bind` in `ns` to `dst` and waits for the echo.
fn udp_ask(
    ns: &Netns,
    bind: SocketAddrV4,
    dst: SocketAddrV4,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    ns.run(move || -> anyhow::Result<()> {
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(&payload, dst)?;
        let mut buf = vec![0u8; 65536];
        let (n, _) = s.recv_from(&mut buf)?;
        anyhow::ensure!(buf[..n] == payload[..], "echo mismatch");
        Ok(())
    })?
}

fn net0(s: &serde_json::Value) -> &serde_json::Value {
    &s["networks"][0]
}

fn flow_from<'a>(
    flows: &'a [serde_json::Value],
    proto: &str,
    src: &str,
    dport: u64,
) -> Option<&'a serde_json::Value> {
    flows.iter().find(|f| {
        f["proto"] == proto && f["original"]["src"] == src && f["original"]["dport"] == dport
    })
}

#[test]
fn containers_reach_the_outside_as_the_uplink_with_an_empty_nat_table() {
    require_root!();
    let lab = lab_up();
    // Drops from here on: what a port sent in the moment between being
    // plugged into the bridge and netpath attaching to it (IPv6 chatter
    // from its link-local address) is the bridge refusing an unmanaged
    // port, not this traffic's.
    let before = net0(&status(&lab.host))["drops"].clone();
    let seen = topology::tcp_bulk(
        &lab.ext,
        addr("0.0.0.0", 8100),
        &lab.c1,
        addr(Lab::EXT, 8100),
        4 << 20,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        seen.ip().to_string(),
        Lab::UPLINK,
        "TCP leaves as the uplink"
    );
    let seen = topology::udp_echo(
        &lab.ext,
        addr("0.0.0.0", 8101),
        &lab.c2,
        addr(Lab::EXT, 8101),
        b"udp through the nat",
    )
    .unwrap();
    assert_eq!(
        seen.ip().to_string(),
        Lab::UPLINK,
        "UDP leaves as the uplink"
    );
    topology::ping(&lab.c1, Lab::EXT).unwrap();

    // The kernel's nat table holds no rule while this works.
    let nat = topology::run(lab.host.command("iptables").args(["-t", "nat", "-S"]))
        .expect("iptables -t nat -S");
    let rules = String::from_utf8_lossy(&nat.stdout).into_owned();
    assert!(
        rules.lines().all(|l| l.starts_with("-P ")),
        "nat table has rules:\n{rules}"
    );

    let fl = flows(&lab.host);
    let tcp =
        flow_from(&fl, "tcp", Lab::C1, 8100).unwrap_or_else(|| panic!("no TCP flow: {fl:#?}"));
    assert_eq!(tcp["original"]["dst"], Lab::EXT);
    assert_eq!(tcp["reply"]["src"], Lab::EXT);
    assert_eq!(tcp["reply"]["dst"], Lab::UPLINK);
    assert!(
        tcp["original"]["bytes"].as_u64().unwrap() >= 4 << 20,
        "{tcp}"
    );
    assert!(flow_from(&fl, "udp", Lab::C2, 8101).is_some_and(|f| f["seen_reply"] == true));
    assert!(
        fl.iter()
            .any(|f| f["proto"] == "icmp" && f["original"]["src"] == Lab::C1)
    );

    let s = status(&lab.host);
    let n = net0(&s);
    assert!(n["snat"]["packets"].as_u64().unwrap() > 0);
    assert!(n["rev_snat"]["packets"].as_u64().unwrap() > 0);
    assert!(n["ct_new"].as_u64().unwrap() >= 3);
    // Nothing dropped but the containers' own IPv6 chatter (router
    // solicitations, DAD): the network has no IPv6 subnet.
    assert!(
        n["drops"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| k == "drop_ipv6" || v == &before[k]),
        "{n}\nbefore the traffic: {before}"
    );
    let text = netpath_ok(&lab.host, &["conntrack", "list"]);
    assert!(
        text.contains(&format!("src={} dst={}", Lab::C1, Lab::EXT)),
        "{text}"
    );
}

#[test]
fn local_destinations_are_not_masqueraded() {
    // (Another managed network is not reachable at all: tests/isolation.rs.)
    require_root!();
    let lab = lab_up();
    // The host's own address, and a container on the same bridge.
    let seen = topology::tcp_echo(
        &lab.host,
        addr(Lab::UPLINK, 8200),
        &lab.c1,
        addr(Lab::UPLINK, 8200),
        b"to the host",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::C1);
    let seen = topology::udp_echo(
        &lab.c2,
        addr("0.0.0.0", 8201),
        &lab.c1,
        addr(Lab::C2, 8201),
        b"x",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::C1);

    assert!(flows(&lab.host).is_empty(), "no flow was translated");
}

#[test]
fn masquerade_false_keeps_container_addresses() {
    require_root!();
    let lab = lab_up_with(Lab::new(NETPATH).unwrap(), &["--masquerade=false"]);
    lab.ext
        .ip(&["route", "add", Lab::SUBNET, "via", Lab::UPLINK])
        .unwrap();
    let seen = lab.tcp_out(&lab.c1, 8300).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::C1);
    let s = status(&lab.host);
    assert_eq!(net0(&s)["masquerade"], false);
    // Tracked (so the reply is let in), not translated.
    let fl = flows(&lab.host);
    let f = flow_from(&fl, "tcp", Lab::C1, 8300).unwrap_or_else(|| panic!("{fl:#?}"));
    assert_eq!(f["nat"], "none");
    assert_eq!(f["reply"]["dst"], Lab::C1);
    assert_eq!(f["seen_reply"], true);
    assert!(fl.iter().all(|f| f["nat"] == "none"), "{fl:#?}");
    // Re-applying with masquerading on turns it on.
    netpath_ok(
        &lab.host,
        &["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET],
    );
    let seen = lab.tcp_out(&lab.c1, 8301).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);
}

#[test]
fn two_containers_on_one_source_port_both_work_and_exhaustion_is_counted() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["conntrack", "config", "--nat-ports", "61000-61000"],
    );
    // A third container on the bridge (a second address on c1 would be
    // spoofing now).
    let c3 = Netns::new("c3").unwrap();
    netpath_ok(
        &lab.host,
        &[
            "connect",
            &c3.name,
            "--bridge",
            Lab::BRIDGE,
            "--ip",
            "172.30.0.4",
        ],
    );
    let server = udp_echo_server(&lab.ext, 9100, Duration::from_secs(4));
    let dst = addr(Lab::EXT, 9100);
    udp_ask(&lab.c1, addr(Lab::C1, 40000), dst, b"c1".to_vec()).expect("c1 from port 40000");
    udp_ask(&lab.c2, addr(Lab::C2, 40000), dst, b"c2".to_vec()).expect("c2 from port 40000");
    // Both flows are alive: each still gets its answers.
    udp_ask(&lab.c1, addr(Lab::C1, 40000), dst, b"c1 again".to_vec()).expect("c1 again");
    udp_ask(&lab.c2, addr(Lab::C2, 40000), dst, b"c2 again".to_vec()).expect("c2 again");
    // A third source on the same port finds the one-port range taken.
    let third = udp_ask(&c3, addr("172.30.0.4", 40000), dst, b"c3".to_vec());
    assert!(third.is_err(), "a third flow cannot get an external port");
    let peers = server.join().unwrap().unwrap();
    let ports: Vec<u16> = peers.iter().map(|p| p.port()).collect();
    assert!(
        peers.iter().all(|p| p.ip().to_string() == Lab::UPLINK),
        "{peers:?}"
    );
    assert_eq!(
        ports,
        [40000, 61000, 40000, 61000],
        "container port kept, then the range"
    );
    let s = status(&lab.host);
    assert!(
        net0(&s)["drops"]["drop_nat_ports_exhausted"]
            .as_u64()
            .unwrap()
            >= 1,
        "{s}"
    );
    let text = netpath_ok(&lab.host, &["status"]);
    assert!(text.contains("nat_ports_exhausted="), "{text}");
}

#[test]
fn path_mtu_discovery_fragments_and_traceroute_work_through_the_nat() {
    require_root!();
    let lab = lab_up_with(Lab::with_far(NETPATH, 1280).unwrap(), &[]);
    let far = lab.far();
    // A large TCP transfer: ext cannot forward 1500-byte DF segments onto the
    // 1280 link and says so to the uplink address; only a translated error
    // reaches c1, which must lower its path MTU or the transfer stalls.
    let seen = topology::tcp_bulk(
        far,
        addr("0.0.0.0", 9300),
        &lab.c1,
        addr(Lab::FAR, 9300),
        2 << 20,
        Duration::from_secs(5),
    )
    .expect("bulk TCP across the smaller MTU");
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);
    let route = lab.c1.ip(&["route", "get", Lab::FAR]).unwrap();
    assert!(
        route.contains("mtu 1280"),
        "c1 learnt the path MTU: {route}"
    );

    // A UDP datagram larger than any MTU here goes out and comes back in fragments.
    let payload: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    let server = udp_echo_server(far, 9400, Duration::from_secs(3));
    udp_ask(&lab.c1, addr("0.0.0.0", 0), addr(Lab::FAR, 9400), payload)
        .expect("fragmented UDP echo");
    server.join().unwrap().unwrap();
    // So does a large ping.
    topology::run(
        lab.c1
            .command("ping")
            .args(["-c", "1", "-W", "2", "-s", "4000", Lab::FAR]),
    )
    .expect("fragmented ping");

    // traceroute's second hop: the time-exceeded error from ext finds c1.
    let out = lab
        .c1
        .command("ping")
        .args(["-c", "1", "-W", "2", "-t", "2", Lab::FAR])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("From {}", Lab::EXT)) && text.contains("Time to live exceeded"),
        "{text}"
    );
}

#[test]
fn conntrack_lists_states_expires_and_flushes() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &[
            "conntrack",
            "config",
            "--timeout",
            "udp=5",
            "--timeout",
            "udp-stream=5",
            "--timeout",
            "tcp-time-wait=2",
            "--timeout",
            "tcp-close=2",
            "--timeout",
            "icmp=2",
        ],
    );
    let cfg = netpath_ok(&lab.host, &["conntrack", "config"]);
    assert!(
        cfg.contains("timeout udp=5") && cfg.contains("nat-ports=1024-65535"),
        "{cfg}"
    );

    // An open TCP connection is ESTABLISHED; once both sides closed it is TIME_WAIT.
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = lab.ext.spawn(move || -> anyhow::Result<()> {
        let l = TcpListener::bind(addr("0.0.0.0", 9500))?;
        ready_tx.send(()).ok();
        let (mut s, _) = l.accept()?;
        std::io::copy(&mut s, &mut std::io::sink())?;
        Ok(())
    });
    ready_rx.recv_timeout(Duration::from_secs(3)).unwrap();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let client = lab.c1.spawn(move || -> anyhow::Result<()> {
        let mut s = TcpStream::connect(addr(Lab::EXT, 9500))?;
        std::io::Write::write_all(&mut s, b"hello")?;
        close_rx.recv()?;
        Ok(())
    });
    let state_of = |lab: &Lab| {
        flow_from(&flows(&lab.host), "tcp", Lab::C1, 9500)
            .map(|f| f["state"].as_str().unwrap().to_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while state_of(&lab).as_deref() != Some("ESTABLISHED") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state_of(&lab).as_deref(), Some("ESTABLISHED"));
    close_tx.send(()).unwrap();
    client.join().unwrap().unwrap();
    server.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state_of(&lab).as_deref(), Some("TIME_WAIT"));

    // Two UDP flows: flush one by port, the other expires on its own (UDP's
    // timeout is 5 s: 2 s, the others', a loaded machine could spend
    // between the two asks and the flush).
    let s1 = udp_echo_server(&lab.ext, 9501, Duration::from_secs(2));
    let s2 = udp_echo_server(&lab.ext, 9502, Duration::from_secs(2));
    udp_ask(
        &lab.c1,
        addr("0.0.0.0", 0),
        addr(Lab::EXT, 9502),
        b"b".to_vec(),
    )
    .unwrap();
    udp_ask(
        &lab.c1,
        addr("0.0.0.0", 0),
        addr(Lab::EXT, 9501),
        b"a".to_vec(),
    )
    .unwrap();
    let out = netpath_ok(
        &lab.host,
        &["conntrack", "flush", "--proto", "udp", "--port", "9501"],
    );
    assert!(out.contains("1 flow entries have been deleted"), "{out}");
    let fl = flows(&lab.host);
    assert!(flow_from(&fl, "udp", Lab::C1, 9501).is_none());
    let left = flow_from(&fl, "udp", Lab::C1, 9502).expect("the other flow stays");
    assert!(left["timeout_s"].as_u64().unwrap() <= 5, "{left}");
    s1.join().unwrap().unwrap();
    s2.join().unwrap().unwrap();
    // The daemon's sweeper removes everything within the timeouts (+1 s).
    let deadline = Instant::now() + Duration::from_secs(8);
    while !flows(&lab.host).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(flows(&lab.host).is_empty(), "{:#?}", flows(&lab.host));

    // Bad settings: one line, nothing changed.
    for bad in [["--timeout", "nope=1"], ["--nat-ports", "9-1"]] {
        let mut args = vec!["conntrack", "config"];
        args.extend_from_slice(&bad);
        let r = netpath(&lab.host, &args);
        assert_eq!(r.code, 1, "{bad:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
    assert_eq!(netpath_ok(&lab.host, &["conntrack", "config"]), cfg);
}

#[test]
fn a_new_uplink_address_becomes_the_masquerade_source() {
    require_root!();
    let lab = lab_up();
    let server = udp_echo_server(&lab.ext, 9600, Duration::from_secs(6));
    let dst = addr(Lab::EXT, 9600);
    udp_ask(&lab.c1, addr("0.0.0.0", 0), dst, b"before".to_vec()).unwrap();
    lab.host
        .ip(&["addr", "del", "198.18.0.1/24", "dev", "uplink0"])
        .unwrap();
    lab.host
        .ip(&["addr", "add", "198.18.0.7/24", "dev", "uplink0"])
        .unwrap();
    // The daemon notices within its one-second tick. Between the two
    // changes uplink0 has no address, so a re-apply then takes it out of
    // the uplinks until the new one comes: absent is "not yet".
    let changed = Instant::now();
    let addr_of = |lab: &Lab| {
        status(&lab.host)["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == "uplink0"))
            .map_or(serde_json::Value::Null, |i| i["address"].clone())
    };
    while addr_of(&lab) != "198.18.0.7" && changed.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(addr_of(&lab), "198.18.0.7", "uplink address re-read");
    // The old mapping is dropped, like MASQUERADE does; the next packet
    // leaves with the new address.
    udp_ask(&lab.c1, addr("0.0.0.0", 0), dst, b"after".to_vec()).expect("echo after the change");
    let peers = server.join().unwrap().unwrap();
    assert_eq!(peers.first().unwrap().ip().to_string(), Lab::UPLINK);
    assert_eq!(peers.last().unwrap().ip().to_string(), "198.18.0.7");
}

#[test]
fn checksums_of_offloaded_packets_hold_where_software_checks_them() {
    require_root!();
    let lab = lab_up_with(Lab::with_far(NETPATH, 1500).unwrap(), &[]);
    let far = lab.far();
    let ethtool = |ns: &Netns, args: &[&str]| {
        topology::run(ns.command("ethtool").args(args))
            .unwrap_or_else(|e| panic!("ethtool {args:?}: {e:#}"));
    };
    // c1 keeps TSO and checksum offload, so its packets cross the NAT as
    // 64 KB GSO packets with partial checksums. ext must finish them in
    // software when forwarding to far, and far checks every checksum in
    // software; the same for replies towards c1.
    ethtool(&lab.ext, &["-K", "far0", "tx", "off"]);
    ethtool(far, &["-K", "eth0", "rx", "off"]);
    ethtool(&lab.host, &["-K", "c1h", "tx", "off"]);
    ethtool(&lab.c1, &["-K", "eth0", "rx", "off"]);
    let seen = topology::tcp_bulk(
        far,
        addr("0.0.0.0", 9700),
        &lab.c1,
        addr(Lab::FAR, 9700),
        8 << 20,
        Duration::from_secs(5),
    )
    .expect("bulk TCP with software-checked checksums");
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);
    let seen = topology::udp_echo(
        far,
        addr("0.0.0.0", 9701),
        &lab.c1,
        addr(Lab::FAR, 9701),
        &[1u8; 1200],
    )
    .expect("UDP with software-checked checksums");
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);
    // Nothing was dropped for a bad checksum on the way.
    let snmp = far
        .run(|| std::fs::read_to_string("/proc/net/snmp"))
        .unwrap()
        .unwrap();
    let csum_errors = |proto: &str| -> u64 {
        let mut lines = snmp.lines().filter(|l| l.starts_with(proto));
        let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let i = names.iter().position(|n| *n == "InCsumErrors").unwrap();
        values[i].parse().unwrap()
    };
    assert_eq!((csum_errors("Tcp:"), csum_errors("Udp:")), (0, 0), "{snmp}");
}
