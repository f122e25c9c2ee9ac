//! Published ports with real traffic: from the external namespace (the
//! container sees the real client), from another network, from the same
//! network and from the container itself (hairpin), from host processes
//! through the socket hooks (in the test's own cgroup), bound to one host
//! address, ranges, every error, unpublish with conntrack purge, and 10,000
//! mappings.

use crate::harness;

use std::{
    net::UdpSocket,
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use harness::{Lab, Netns, addr, flows, lab_up, netpath, netpath_ok, topology};
use netpath::lab::sctp::sctp_init;

/// The lab up, and a second network np1 (172.31.0.0/24) with container
/// c3 on it (172.31.0.2).
pub(crate) fn lab_and_c3() -> (Lab, Netns) {
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["up", "--bridge", "np1", "--subnet", "172.31.0.0/24"],
    );
    let c3 = Netns::new("c3").unwrap();
    netpath_ok(&lab.host, &["connect", &c3.name, "--bridge", "np1"]);
    (lab, c3)
}

fn ports(ns: &Netns) -> Vec<serde_json::Value> {
    let out = netpath_ok(ns, &["ports", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ports --json ({e}): {out}"))
}

/// A client process on the host side (`host`, a lab's host namespace),
/// inside the namespace's test cgroup when `in_cgroup` (where netpath's
/// socket hooks are attached), else outside it. It sends `hello` over TCP
/// or UDP to `ip:port` (an IPv6 socket when `ip` has a colon) and prints
/// the answer and the peer its socket reports (`getpeername`).
pub(crate) fn host_client(host: &Netns, in_cgroup: bool, udp: bool, ip: &str, port: u16) -> Output {
    let cg = host.cgroup.as_ref().expect("host cgroup");
    let join = if in_cgroup {
        format!("echo $$ > {}/cgroup.procs && ", cg.display())
    } else {
        String::new()
    };
    let kind = if udp { "SOCK_DGRAM" } else { "SOCK_STREAM" };
    let family = if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let code = format!(
        "import socket; s = socket.socket(socket.{family}, socket.{kind}); s.settimeout(2); \
         s.connect(('{ip}', {port})); s.send(b'hello'); \
         print(s.recv(64).decode(), '%s:%d' % s.getpeername()[:2])"
    );
    let script = format!(
        "{join}exec nsenter --net=/run/netns/{} python3 -c \"{code}\"",
        host.name
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("spawning the host client")
}

/// A TCP echo server in `ns` on `bind`:`port` answering `n` connections
/// in turn.
pub(crate) fn tcp_servers(
    ns: &Netns,
    bind: &'static str,
    port: u16,
    n: usize,
) -> std::thread::JoinHandle<anyhow::Result<Vec<std::net::SocketAddr>>> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        use std::io::{Read as _, Write as _};
        let l = std::net::TcpListener::bind((bind, port))?;
        l.set_nonblocking(true)?;
        tx.send(()).ok();
        let mut peers = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(8);
        while peers.len() < n && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut buf = [0u8; 512];
                    let k = s.read(&mut buf).unwrap_or(0);
                    let _ = s.write_all(&buf[..k]);
                    peers.push(peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        Ok(peers)
    });
    rx.recv_timeout(Duration::from_secs(3))
        .expect("server ready");
    h
}

#[test]
fn external_clients_reach_published_ports_and_keep_their_address() {
    require_root!();
    let lab = lab_up();
    netpath_ok(&lab.host, &["publish", "8081", &format!("{}:80", Lab::C1)]);
    netpath_ok(
        &lab.host,
        &["publish", "5353/udp", &format!("{}:53", Lab::C2)],
    );
    let seen = lab.tcp_in(&lab.c1, 80, addr(Lab::UPLINK, 8081)).unwrap();
    assert_eq!(
        seen.ip().to_string(),
        Lab::EXT,
        "the container sees the real client"
    );
    let seen = topology::udp_echo(
        &lab.c2,
        addr("0.0.0.0", 53),
        &lab.ext,
        addr(Lab::UPLINK, 5353),
        b"query",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);
    let p = ports(&lab.host);
    assert_eq!(p.len(), 2);
    for m in &p {
        assert!(m["to_container"]["packets"].as_u64().unwrap() >= 1, "{m}");
        assert!(m["from_container"]["packets"].as_u64().unwrap() >= 1, "{m}");
    }
    let fl = flows(&lab.host);
    assert!(
        fl.iter()
            .any(|f| f["nat"] == "dnat" && f["original"]["dport"] == 8081),
        "{fl:#?}"
    );
    let table = netpath_ok(&lab.host, &["ports"]);
    assert!(
        table.contains("0.0.0.0:8081/tcp") && table.contains("172.30.0.2:80"),
        "{table}"
    );
}

#[test]
fn containers_reach_published_ports_from_other_networks_the_same_network_and_themselves() {
    require_root!();
    let (lab, c3) = lab_and_c3();
    netpath_ok(&lab.host, &["publish", "8082", &format!("{}:80", Lab::C1)]);
    let server = tcp_servers(&lab.c1, "0.0.0.0", 80, 4);
    let ask = |ns: &Netns, ip: &str| {
        let ip = ip.to_owned();
        ns.run(move || -> anyhow::Result<()> {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect_timeout(
                &addr(&ip, 8082).into(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"hi")?;
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            // What the client sees as its peer is what it dialled.
            anyhow::ensure!(
                s.peer_addr()?.to_string() == format!("{ip}:8082"),
                "peer {}",
                s.peer_addr()?
            );
            Ok(())
        })
        .unwrap()
    };
    ask(&c3, Lab::UPLINK).expect("another network, through the uplink address");
    ask(&lab.c2, Lab::UPLINK).expect("the same network (hairpin)");
    ask(&lab.c1, Lab::UPLINK).expect("the container itself");
    ask(&lab.c2, Lab::GATEWAY).expect("through the gateway address");
    let peers: Vec<String> = server
        .join()
        .unwrap()
        .unwrap()
        .iter()
        .map(|p| p.ip().to_string())
        .collect();
    assert_eq!(
        peers,
        ["172.31.0.2", Lab::C2, Lab::GATEWAY, Lab::C2],
        "what c1 saw"
    );
    // Every flow was answered, the container's own through its port too
    // (its answer is booked where it goes up to the host).
    for f in flows(&lab.host) {
        assert!(f["seen_reply"] == true && f["assured"] == true, "{f:#}");
    }
    // Isolation still holds for the containers' own addresses.
    assert!(topology::ping(&c3, Lab::C1).is_err());
    // The flows expire with every entry they made, the hairpin's two
    // half-way (MID) entries included.
    let raw_entries = |lab: &Lab| {
        lab.host
            .run(|| {
                let state = netpath::state::StateDir::current().unwrap();
                netpath::state::Maps::open(&state)
                    .unwrap()
                    .ct_entries()
                    .unwrap()
                    .len()
            })
            .unwrap()
    };
    assert!(
        raw_entries(&lab) >= 10,
        "4 flows (8 entries) and 2 MID entries"
    );
    netpath_ok(
        &lab.host,
        &[
            "conntrack",
            "config",
            "--timeout",
            "tcp-time-wait=1",
            "--timeout",
            "tcp-close=1",
            "--timeout",
            "tcp-fin-wait=1",
            "--timeout",
            "icmp=1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw_entries(&lab) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(raw_entries(&lab), 0, "{:#?}", flows(&lab.host));
}

#[test]
fn host_processes_reach_published_ports_through_the_socket_hooks() {
    require_root!();
    let lab = lab_up();
    netpath_ok(&lab.host, &["publish", "8083", &format!("{}:80", Lab::C1)]);
    netpath_ok(
        &lab.host,
        &["publish", "127.0.0.1:8084", &format!("{}:80", Lab::C1)],
    );
    netpath_ok(
        &lab.host,
        &["publish", "5300/udp", &format!("{}:53", Lab::C2)],
    );
    let server = tcp_servers(&lab.c1, "0.0.0.0", 80, 3);
    for (ip, port) in [
        ("127.0.0.1", 8083),
        (Lab::UPLINK, 8083),
        ("127.0.0.1", 8084),
    ] {
        let out = host_client(&lab.host, true, false, ip, port);
        // The answer, and getpeername() showing what was dialled.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("hello {ip}:{port}"),
            "{ip}:{port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peers = server.join().unwrap().unwrap();
    assert_eq!(peers.len(), 3);
    // UDP through sendmsg/recvmsg.
    let (tx, rx) = mpsc::channel();
    let udp = lab.c2.spawn(move || -> anyhow::Result<()> {
        let s = UdpSocket::bind(addr("0.0.0.0", 53))?;
        s.set_read_timeout(Some(Duration::from_secs(4)))?;
        tx.send(()).ok();
        let mut b = [0u8; 64];
        let (n, p) = s.recv_from(&mut b)?;
        s.send_to(&b[..n], p)?;
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(3)).unwrap();
    let out = host_client(&lab.host, true, true, "127.0.0.1", 5300);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello 127.0.0.1:5300",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    udp.join().unwrap().unwrap();
    // A process outside the cgroup is not redirected: nothing listens there.
    let out = host_client(&lab.host, false, false, "127.0.0.1", 8083);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("refused"),
        "not redirected outside the cgroup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_port_bound_to_one_host_address_is_reachable_there_only() {
    require_root!();
    let lab = lab_up();
    lab.host
        .ip(&["addr", "add", "198.18.0.9/24", "dev", "uplink0"])
        .unwrap();
    netpath_ok(
        &lab.host,
        &["publish", "198.18.0.1:8085", &format!("{}:80", Lab::C1)],
    );
    let seen = lab.tcp_in(&lab.c1, 80, addr(Lab::UPLINK, 8085)).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);
    let other = lab.tcp_in(&lab.c1, 80, addr("198.18.0.9", 8085));
    assert!(other.is_err(), "reachable through another host address");
    // Every host address when published so.
    netpath_ok(&lab.host, &["publish", "8086", &format!("{}:80", Lab::C1)]);
    lab.tcp_in(&lab.c1, 80, addr("198.18.0.9", 8086)).unwrap();
}

#[test]
fn sctp_is_published_and_masqueraded_address_only() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["publish", "9000/sctp", &format!("{}:9000", Lab::C1)],
    );
    // From outside: the container sees the real client, the client sees
    // the host's address; both packets keep ports and a valid CRC32c.
    let seen = sctp_init(&lab.c1, &lab.ext, 40000, addr(Lab::UPLINK, 9000)).unwrap();
    assert_eq!(
        (seen.client.to_string(), seen.server.to_string()),
        (Lab::EXT.to_owned(), Lab::UPLINK.to_owned())
    );
    // Out of a container: masqueraded to the uplink's address, answered back.
    let seen = sctp_init(&lab.ext, &lab.c2, 41000, addr(Lab::EXT, 7000)).unwrap();
    assert_eq!(
        (seen.client.to_string(), seen.server.to_string()),
        (Lab::UPLINK.to_owned(), Lab::EXT.to_owned())
    );
    let fl = flows(&lab.host);
    let sctp_flows: Vec<_> = fl.iter().filter(|f| f["proto"] == "sctp").collect();
    assert_eq!(sctp_flows.len(), 2, "{fl:#?}");
    assert!(
        sctp_flows
            .iter()
            .any(|f| f["nat"] == "dnat" && f["original"]["dport"] == 9000),
        "{fl:#?}"
    );
    let p = ports(&lab.host);
    assert_eq!(p.len(), 1);
    assert!(
        p[0]["to_container"]["packets"].as_u64().unwrap() >= 1,
        "{p:?}"
    );
    let table = netpath_ok(&lab.host, &["ports"]);
    assert!(table.contains("0.0.0.0:9000/sctp"), "{table}");
    // An unpublished SCTP port is not let in.
    assert!(sctp_init(&lab.c1, &lab.ext, 40001, addr(Lab::UPLINK, 9001)).is_err());
}

#[test]
fn ranges_and_every_error() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["publish", "9000-9009", &format!("{}:7000-7009", Lab::C1)],
    );
    let seen = lab.tcp_in(&lab.c1, 7005, addr(Lab::UPLINK, 9005)).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);
    netpath_ok(
        &lab.host,
        &["publish", "127.0.0.1:9100/udp", &format!("{}:53", Lab::C2)],
    );
    let before = ports(&lab.host);
    let c1 = |p: &str| format!("{}:{p}", Lab::C1);
    for (args, want) in [
        (vec!["publish", "9005", &c1("80")], "already published"),
        (
            vec!["publish", "198.18.0.1:9005", &c1("80")],
            "already published",
        ),
        (vec!["publish", "9100/udp", &c1("80")], "already published"),
        (
            vec!["publish", "9200", "10.9.9.9:80"],
            "outside every managed subnet",
        ),
        (
            vec!["publish", "9200", &format!("{}:80", Lab::GATEWAY)],
            "gateway",
        ),
        (vec!["publish", "9200-9201", &c1("80")], "same length"),
        (vec!["publish", "0", &c1("80")], "1 to 65535"),
        (vec!["publish", "65536", &c1("80")], "1 to 65535"),
        (vec!["publish", "9200", &c1("0")], "1 to 65535"),
        (vec!["publish", "9200/dccp", &c1("80")], "tcp, udp or sctp"),
        (
            vec!["publish", "9200/sctp", &c1("80")],
            "cannot change ports",
        ),
        (vec!["unpublish", "9300"], "not published"),
        (vec!["unpublish", "9009-9010"], "not published"),
    ] {
        let r = netpath(&lab.host, &args);
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    let after = ports(&lab.host);
    assert_eq!(after.len(), before.len(), "nothing changed");
    netpath_ok(&lab.host, &["unpublish", "9000-9009"]);
    assert_eq!(ports(&lab.host).len(), 1);
    // `down` of the target's network removes what leads into it.
    netpath_ok(
        &lab.host,
        &["up", "--bridge", "np1", "--subnet", "172.31.0.0/24"],
    );
    netpath_ok(&lab.host, &["down", "--bridge", Lab::BRIDGE]);
    assert!(ports(&lab.host).is_empty());
}

#[test]
fn unpublish_purges_conntrack_and_a_republished_port_reaches_the_new_container() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["publish", "5000/udp", &format!("{}:5000", Lab::C1)],
    );
    // Each container answers with its name.
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (ns, name) in [(&lab.c1, "c1"), (&lab.c2, "c2")] {
        let stop = stop.clone();
        let (tx, rx) = mpsc::channel();
        servers.push(ns.spawn(move || -> anyhow::Result<()> {
            let s = UdpSocket::bind(addr("0.0.0.0", 5000))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            tx.send(()).ok();
            let mut b = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, p)) = s.recv_from(&mut b) {
                    s.send_to(name.as_bytes(), p)?;
                }
            }
            Ok(())
        }));
        rx.recv_timeout(Duration::from_secs(3)).unwrap();
    }
    // A client that keeps sending from one socket, as a DNS resolver or a
    // game client does.
    let (tx, answers) = mpsc::channel::<String>();
    let stop_client = stop.clone();
    let client = lab.ext.spawn(move || -> anyhow::Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut b = [0u8; 64];
        while !stop_client.load(Ordering::Relaxed) {
            s.send_to(b"who?", addr(Lab::UPLINK, 5000))?;
            if let Ok((n, _)) = s.recv_from(&mut b) {
                let _ = tx.send(String::from_utf8_lossy(&b[..n]).into_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    });
    let wait_for = |who: &str| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if answers
                .recv_timeout(Duration::from_millis(200))
                .is_ok_and(|a| a == who)
            {
                return true;
            }
        }
        false
    };
    assert!(wait_for("c1"), "c1 answers first");
    let out = netpath_ok(&lab.host, &["unpublish", "5000/udp"]);
    assert!(out.contains("1 conntrack flow removed"), "{out}");
    netpath_ok(
        &lab.host,
        &["publish", "5000/udp", &format!("{}:5000", Lab::C2)],
    );
    while answers.try_recv().is_ok() {}
    assert!(
        wait_for("c2"),
        "the same client reaches c2 at once (no stale entry)"
    );
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap().unwrap();
    for s in servers {
        s.join().unwrap().unwrap();
    }
}

#[test]
fn ten_thousand_published_ports_and_the_last_one_works() {
    require_root!();
    let _heavy = harness::exclusive();
    let lab = lab_up();
    let started = Instant::now();
    netpath_ok(
        &lab.host,
        &[
            "publish",
            "20000-29999",
            &format!("{}:20000-29999", Lab::C1),
        ],
    );
    // How long it takes is the benchmark's business (its control plane
    // table), not a test's: tests run side by side.
    eprintln!("publishing 10,000 ports took {:?}", started.elapsed());
    assert_eq!(ports(&lab.host).len(), 10_000);
    let seen = lab
        .tcp_in(&lab.c1, 29999, addr(Lab::UPLINK, 29999))
        .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);
}

#[test]
fn uplink_traffic_to_a_container_skips_the_bridge() {
    require_root!();
    let lab = lab_up();
    netpath_ok(&lab.host, &["publish", "8090", &format!("{}:80", Lab::C1)]);
    // A first exchange teaches c1's port its address and MAC (the fast
    // path's endpoint); the next ones can use it.
    lab.tcp_in(&lab.c1, 80, addr(Lab::UPLINK, 8090)).unwrap();
    let bridge = |lab: &Lab| {
        let s = harness::status(&lab.host);
        let i = harness::iface(&s, Lab::BRIDGE);
        i["ingress"]["packets"].as_u64().unwrap() + i["egress"]["packets"].as_u64().unwrap()
    };
    let port = |lab: &Lab| {
        harness::iface(&harness::status(&lab.host), "c1h")["egress"]["packets"]
            .as_u64()
            .unwrap()
    };
    let (bridge_before, port_before) = (bridge(&lab), port(&lab));
    for i in 0..5 {
        let seen = topology::tcp_echo(
            &lab.c1,
            addr("0.0.0.0", 80),
            &lab.ext,
            addr(Lab::UPLINK, 8090),
            &[i; 100],
        )
        .unwrap();
        assert_eq!(seen.ip().to_string(), Lab::EXT);
    }
    let (bridge_after, port_after) = (bridge(&lab), port(&lab));
    // Five connections are at least 25 packets each way; through the
    // bridge, np0 would have counted them.
    assert!(
        port_after >= port_before + 25,
        "c1h delivered {}",
        port_after - port_before
    );
    assert!(
        bridge_after - bridge_before < 5,
        "the bridge saw {} packets of uplink <-> container traffic",
        bridge_after - bridge_before
    );
}
