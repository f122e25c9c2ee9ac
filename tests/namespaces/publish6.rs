//! IPv6 published ports with real TCP: `publish '[::]:PORT' '[C]:PORT'`
//! reached from outside (the client's address kept), from another network,
//! from a neighbour on the container's own network and by the container
//! itself (through its gateway); `ports` lists the mapping with its
//! counters; `unpublish` removes it with its flows; bad input is one line
//! and changes nothing. Host processes reach IPv6 ports (and IPv4 ones
//! from IPv6 sockets) through the socket hooks.

use crate::harness;
use crate::ipv6::{connect, host_and_ext6, tcp6_to, up_dual};
use crate::publish::{host_client, tcp_servers};

use harness::{Lab, NETPATH, Netns, netpath, netpath_ok};
use netpath::lab::frames::frame6;

const BRP: &str = "np6p";
const BRQ: &str = "np6q";

#[test]
fn ipv6_ports_are_published_to_outside_other_networks_neighbours_and_the_container_itself() {
    require_root!();
    let (host, ext) = Lab::host_and_ext("p6h", "p6e", NETPATH, "uplink0").unwrap();
    host.ip(&["addr", "add", "fd00:ef::1/64", "dev", "uplink0", "nodad"])
        .unwrap();
    ext.ip(&["addr", "add", "fd00:ef::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    up_dual(&host, BRP, "172.28.0.0/24", "fd00:28::/64", &[]);
    up_dual(&host, BRQ, "172.29.0.0/24", "fd00:29::/64", &[]);
    let (c1, a1) = connect(&host, "p6c1", BRP);
    let (c3, a3) = connect(&host, "p6c3", BRP);
    let (c2, a2) = connect(&host, "p6c2", BRQ);

    // Nothing published yet: the port is the host's, which has no server.
    assert!(tcp6_to(&c1, 80, &ext, "fd00:ef::1", 8086).is_err());
    let out = netpath_ok(&host, &["publish", "[::]:8086", &format!("[{a1}]:80")]);
    assert!(out.contains("(1 port)"), "{out}");

    // From outside: the client's own address reaches the container.
    let seen = tcp6_to(&c1, 80, &ext, "fd00:ef::1", 8086).expect("ext -> [::]:8086");
    assert_eq!(seen, "fd00:ef::2", "the client's address is kept");
    // From another network, through a host address: allowed although the
    // networks are isolated (as Docker's DNAT comes first).
    let seen = tcp6_to(&c1, 80, &c2, "fd00:ef::1", 8086).expect("c2 -> [::]:8086");
    assert_eq!(seen, a2);
    // A neighbour, through its gateway: the answer comes back from the
    // published port, not from the container straight.
    let seen = tcp6_to(&c1, 80, &c3, "fd00:28::1", 8086).expect("c3 -> gateway:8086");
    assert_eq!(seen, a3);
    // The container itself: it sees its gateway as the client.
    let seen = tcp6_to(&c1, 80, &c1, "fd00:ef::1", 8086).expect("c1 -> its own port");
    assert_eq!(seen, "fd00:28::1");
    // Direct routing to the container's own address stays refused (nat).
    assert!(tcp6_to(&c1, 80, &ext, &a1, 80).is_err(), "ext -> [a1]:80");
    // And the isolation between the networks holds for anything else.
    assert!(tcp6_to(&c1, 81, &c2, &a1, 81).is_err(), "c2 -> [a1]:81");

    let ports: serde_json::Value =
        serde_json::from_str(&netpath_ok(&host, &["ports", "--json"])).unwrap();
    let m = &ports[0];
    assert_eq!(
        (
            &m["host_ip"],
            &m["host_port"],
            &m["container_ip"],
            &m["network"]
        ),
        (
            &serde_json::Value::Null,
            &8086.into(),
            &a1.as_str().into(),
            &BRP.into()
        ),
        "{ports}"
    );
    assert!(
        m["to_container"]["packets"].as_u64().unwrap() >= 4 * 3,
        "{ports}"
    );
    assert!(
        m["from_container"]["packets"].as_u64().unwrap() >= 4 * 3,
        "{ports}"
    );
    let table = netpath_ok(&host, &["ports"]);
    assert!(table.contains("[::]:8086/tcp"), "{table}");
    assert!(table.contains(&format!("[{a1}]:80")), "{table}");

    // Bad input: one line, exit 1, nothing published.
    for (args, says) in [
        (
            vec!["publish", "[::]:8087", "172.28.0.2:80"],
            "different families",
        ),
        (
            vec!["publish", "[fd00:28::9]:8087", &format!("[{a1}]:80")],
            "not an address of the host",
        ),
        (
            vec!["publish", "8087", "[fd00:99::2]:80"],
            "outside every managed IPv6 subnet",
        ),
        (
            vec!["publish", "[::]:8086", &format!("[{a3}]:80")],
            "already published",
        ),
        (
            vec!["publish", "fd00::1:8087", "[fd00:28::2]:80"],
            "in brackets",
        ),
        (
            vec!["publish", "[fe80::1]:8087", &format!("[{a1}]:80")],
            "is link-local",
        ),
    ] {
        let o = netpath(&host, &args);
        assert_eq!(o.code, 1, "{args:?}: {}", o.stdout);
        assert!(o.stderr.contains(says), "{args:?}: {}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    }
    let table = netpath_ok(&host, &["ports"]);
    assert_eq!(table.matches("/tcp").count(), 1, "{table}");

    // unpublish: the port and its flows go.
    let out = netpath_ok(&host, &["unpublish", "[::]:8086"]);
    assert!(out.contains("(1 port,"), "{out}");
    let flows = harness::flows(&host);
    assert!(
        !flows.iter().any(|f| f["original"]["dport"] == 8086),
        "{flows:?}"
    );
    assert!(tcp6_to(&c1, 80, &ext, "fd00:ef::1", 8086).is_err());
    let o = netpath(&host, &["unpublish", "[::]:8086"]);
    assert!(o.stderr.contains("is not published"), "{}", o.stderr);
}

/// The answer a host client printed (`hello PEER:PORT`), with its errors.
fn answered(o: &std::process::Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    if out.is_empty() {
        String::from_utf8_lossy(&o.stderr).trim().to_owned()
    } else {
        out
    }
}

#[test]
fn host_processes_reach_ipv6_published_ports_through_the_socket_hooks() {
    require_root!();
    let (host, _ext) = Lab::host_and_ext("p6sh", "p6se", NETPATH, "uplink0").unwrap();
    host.ip(&["addr", "add", "fd00:ef::1/64", "dev", "uplink0", "nodad"])
        .unwrap();
    up_dual(&host, BRP, "172.28.0.0/24", "fd00:28::/64", &[]);
    let (c1, a1) = connect(&host, "p6sc1", BRP);
    // The IPv4 address `connect` gave (the first of the subnet's).
    let v4 = "172.28.0.2";
    netpath_ok(&host, &["publish", "[::]:8088", &format!("[{a1}]:80")]);
    netpath_ok(&host, &["publish", "[::1]:8089", &format!("[{a1}]:80")]);
    netpath_ok(&host, &["publish", "[::]:5301/udp", &format!("[{a1}]:53")]);
    netpath_ok(&host, &["publish", "8090", &format!("{v4}:80")]);

    let server = tcp_servers(&c1, "::", 80, 4);
    for (ip, port, shown) in [
        ("fd00:ef::1", 8088, "fd00:ef::1:8088"),
        ("::1", 8088, "::1:8088"),
        ("::1", 8089, "::1:8089"),
        // An IPv6 socket dialling an IPv4-mapped address: IPv4's mapping.
        ("::ffff:127.0.0.1", 8090, "::ffff:127.0.0.1:8090"),
    ] {
        let o = host_client(&host, true, false, ip, port);
        // The answer, and getpeername() showing what was dialled.
        assert_eq!(answered(&o), format!("hello {shown}"), "[{ip}]:{port}");
    }
    let peers = server.join().unwrap().unwrap();
    // The container sees the host's address on its network.
    let seen: Vec<String> = peers.iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(
        seen,
        [
            "fd00:28::1",
            "fd00:28::1",
            "fd00:28::1",
            "::ffff:172.28.0.1"
        ]
    );

    // UDP through sendmsg6/recvmsg6.
    let udp = udp_echo(&c1, 53);
    let o = host_client(&host, true, true, "::1", 5301);
    assert_eq!(answered(&o), "hello ::1:5301");
    udp.join().unwrap().unwrap();
    // Unconnected, to an IPv4 mapping through an IPv4-mapped address: the
    // kernel sends it through sendmsg4, and recvfrom still shows what was
    // dialled (found by the red-team pass: it showed the container).
    netpath_ok(&host, &["publish", "5302/udp", &format!("{v4}:53")]);
    let udp = udp_echo(&c1, 53);
    let o = host_sendto(&host, "::ffff:127.0.0.1", 5302);
    assert_eq!(answered(&o), "hello ::ffff:127.0.0.1:5302");
    udp.join().unwrap().unwrap();

    // `[::1]:8089` is the host's loopback only; `[::]:8088` is refused to a
    // filter rule's port (EPERM); a process outside the cgroup is not
    // redirected (nothing listens on the host).
    let o = host_client(&host, true, false, "fd00:ef::1", 8089);
    assert!(answered(&o).contains("refused"), "{}", answered(&o));
    netpath_ok(&host, &["filter", "add", "--port", "8088/tcp", "deny"]);
    let o = host_client(&host, true, false, "::1", 8088);
    assert!(answered(&o).contains("not permitted"), "{}", answered(&o));
    let o = host_client(&host, false, false, "::1", 8089);
    assert!(answered(&o).contains("refused"), "{}", answered(&o));
}

/// A host process in the test's cgroup sending `hello` from an unconnected
/// IPv6 UDP socket to `ip:port`, printing the answer and where `recvfrom`
/// says it came from.
fn host_sendto(host: &Netns, ip: &str, port: u16) -> std::process::Output {
    let cg = host.cgroup.as_ref().expect("host cgroup");
    let code = format!(
        "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2); \
         s.sendto(b'hello', ('{ip}', {port})); d, a = s.recvfrom(64); \
         print(d.decode(), '%s:%d' % a[:2])"
    );
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net=/run/netns/{} python3 -c \"{code}\"",
        cg.display(),
        host.name
    );
    std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawning the host client")
}

/// A UDP echo server in `ns` on `[::]:port` answering one datagram.
fn udp_echo(ns: &Netns, port: u16) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || -> anyhow::Result<()> {
        let s = std::net::UdpSocket::bind(("::", port))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(4)))?;
        tx.send(()).ok();
        let mut b = vec![0u8; 65536];
        let (n, p) = s.recv_from(&mut b)?;
        s.send_to(&b[..n], p)?;
        Ok(())
    });
    rx.recv_timeout(std::time::Duration::from_secs(3))
        .expect("UDP server ready");
    h
}

#[test]
fn published_ipv6_ports_keep_icc_off_and_internal_networks_closed() {
    require_root!();
    let (host, _ext) = Lab::host_and_ext("p6ih", "p6ie", NETPATH, "uplink0").unwrap();
    host.ip(&["addr", "add", "fd00:ef::1/64", "dev", "uplink0", "nodad"])
        .unwrap();
    up_dual(&host, BRP, "172.28.0.0/24", "fd00:28::/64", &[]);
    up_dual(&host, BRQ, "172.29.0.0/24", "fd00:29::/64", &["--internal"]);
    let (c1, a1) = connect(&host, "p6ic1", BRP);
    let (c3, a3) = connect(&host, "p6ic3", BRP);
    let (_ci, ai) = connect(&host, "p6ici", BRQ);
    netpath_ok(&host, &["publish", "[::]:8086", &format!("[{a1}]:80")]);
    // The neighbour reaches the published port through its gateway, the
    // answer coming straight back to its port (bridged, not routed).
    let seen = tcp6_to(&c1, 80, &c3, "fd00:28::1", 8086).expect("c3 -> gateway:8086");
    assert_eq!(seen, a3);

    // ICC off: the neighbour still reaches it (address resolution passes
    // as ARP does: the caches start empty), but not c1 straight.
    netpath_ok(&host, &["network", "set", BRP, "--icc=false"]);
    for c in [&c1, &c3] {
        c.ip(&["-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    }
    let seen = tcp6_to(&c1, 80, &c3, "fd00:28::1", 8086).expect("ICC off: c3 -> gateway:8086");
    assert_eq!(seen, a3);
    assert!(tcp6_to(&c1, 81, &c3, &a1, 81).is_err(), "ICC off: c3 -> c1");
    // A frame for a published host port sent to the neighbour's MAC
    // instead of the bridge's is judged as any other: dropped, unseen.
    let mac1 = harness::raw::mac_of(&c1, "eth0");
    let mac3 = harness::raw::mac_of(&c3, "eth0");
    let src: std::net::Ipv6Addr = a1.parse().unwrap();
    let dst: std::net::Ipv6Addr = "fd00:ef::1".parse().unwrap();
    let l4 = harness::packet::tcp(src, dst, 41000, 8086, 0x02, b"covert");
    let frame = harness::packet::with_macs(frame6(6, src, dst, &l4), mac3, mac1);
    let seen = harness::raw::capture(&c3, "eth0", std::time::Duration::from_millis(800), |f| {
        f.windows(6).any(|w| w == b"covert")
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = harness::net_drops(&harness::status(&host), BRP, "drop_icc");
    assert_eq!(harness::raw::send(&c1, "eth0", vec![frame], 3), 3);
    assert!(
        seen.join().unwrap().unwrap().is_empty(),
        "c3 got c1's frame"
    );
    let after = harness::net_drops(&harness::status(&host), BRP, "drop_icc");
    assert!(after >= before + 3, "{before} -> {after}");

    // An internal network's container is published to by no one: one
    // line, exit 1, nothing added (either family).
    for (host_port, target) in [
        ("[::]:8089".to_owned(), format!("[{ai}]:80")),
        ("8089".to_owned(), "172.29.0.2:80".to_owned()),
    ] {
        let o = netpath(&host, &["publish", &host_port, &target]);
        assert_eq!(o.code, 1, "{}", o.stdout);
        assert!(o.stderr.contains("internal network np6q"), "{}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    }
    let table = netpath_ok(&host, &["ports"]);
    assert_eq!(table.matches("/tcp").count(), 1, "{table}");
}

/// Sends a `len`-byte datagram (more than the links' MTU: it leaves in
/// fragments) from `ns` to `[dst]:port` and waits for the same bytes back.
fn udp6_ask(ns: &Netns, dst: &str, port: u16, len: usize) -> anyhow::Result<()> {
    let to: std::net::SocketAddr = format!("[{dst}]:{port}").parse()?;
    ns.run(move || -> anyhow::Result<()> {
        let s = std::net::UdpSocket::bind(("::", 0))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        s.send_to(&payload, to)?;
        let mut buf = vec![0u8; 65536];
        let (n, _) = s.recv_from(&mut buf)?;
        anyhow::ensure!(buf[..n] == payload[..], "echo mismatch ({n} bytes)");
        Ok(())
    })?
}

/// A container's datagram to a published port in fragments, and the
/// answer in fragments: the later fragments follow their first one's
/// translation at the bridge (the client's packets, and an answer routed
/// to another network) and at the client's port (an answer bridged to a
/// neighbour), so both ends reassemble them.
#[test]
fn fragmented_datagrams_between_containers_through_an_ipv6_published_port_arrive_whole() {
    require_root!();
    let (host, _ext) = host_and_ext6("p6fh", "p6fe");
    up_dual(&host, BRP, "172.28.0.0/24", "fd00:28::/64", &[]);
    up_dual(&host, BRQ, "172.29.0.0/24", "fd00:29::/64", &[]);
    let (c1, a1) = connect(&host, "p6f1", BRP);
    let (c3, _) = connect(&host, "p6f3", BRP);
    let (c2, _) = connect(&host, "p6f2", BRQ);
    netpath_ok(
        &host,
        &["publish", "[::]:8091/udp", &format!("[{a1}]:5300")],
    );
    for (client, dst, who) in [
        (&c2, "fd00:ee::1", "another network's container"),
        (&c3, "fd00:28::1", "a neighbour through its gateway"),
    ] {
        let server = udp_echo(&c1, 5300);
        udp6_ask(client, dst, 8091, 4000).unwrap_or_else(|e| panic!("{who}: {e:#}"));
        server.join().unwrap().unwrap();
    }
}
