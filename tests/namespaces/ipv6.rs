//! Dual-stack networks with real traffic: `up` with an IPv6 subnet,
//! `connect` handing out both families, IPv6 between containers and to the
//! gateway (link-local too), isolation between networks, ICC, anti-spoofing
//! and the Neighbour Discovery guard, each drop counted with its reason;
//! `down` leaves no IPv6 address behind.

use crate::harness;

use harness::{
    NETPATH, Netns, link_local, net_drops as drops, netpath, netpath_ok, raw, status, topology,
};

const BR1: &str = "np6a";
const BR2: &str = "np6b";

fn ping6(ns: &Netns, dst: &str) -> bool {
    topology::run(ns.command("ping").args(["-6", "-c", "1", "-W", "1", dst])).is_ok()
}

/// `up` of a dual-stack network (no daemon) with `extra` arguments.
pub fn up_dual(host: &Netns, bridge: &str, v4: &str, v6: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "up",
        "--bridge",
        bridge,
        "--subnet",
        v4,
        "--subnet",
        v6,
        "--no-daemon",
    ];
    args.extend_from_slice(extra);
    netpath_ok(host, &args)
}

/// A host and an external namespace (`Lab::host_and_ext`) whose link
/// also carries fd00:ee::/64: the host's uplink `…::1`, ext `…::2`.
pub fn host_and_ext6(host_tag: &str, ext_tag: &str) -> (Netns, Netns) {
    let (host, ext) = harness::Lab::host_and_ext(host_tag, ext_tag, NETPATH, "uplink0").unwrap();
    host.ip(&["addr", "add", "fd00:ee::1/64", "dev", "uplink0", "nodad"])
        .unwrap();
    ext.ip(&["addr", "add", "fd00:ee::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    // Until duplicate address detection is done with the link's own
    // link-local addresses, the first neighbour resolution across it
    // takes a retransmission (a second); the seconds the first `up` spent
    // in the verifier used to hide that.
    harness::link_local(&host, "uplink0");
    harness::link_local(&ext, "eth0");
    (host, ext)
}

pub fn connect(host: &Netns, tag: &str, bridge: &str) -> (Netns, String) {
    let c = Netns::new(tag).unwrap();
    let out = netpath_ok(host, &["connect", c.name.as_str(), "--bridge", bridge]);
    // "  eth0: fd00:…/64 via …"
    let v6 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("eth0: "))
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no IPv6 address in {out:?}"))
        .to_owned();
    // The bridge's carrier comes with its first port, and with it
    // duplicate address detection of its link-local address, during which
    // the host's first neighbour resolution on it takes a retransmission
    // (a second).
    harness::link_local(host, bridge);
    (c, v6)
}

/// An Ethernet + IPv6 + ICMPv6 frame from `mac` (the ICMPv6 checksum is
/// left zero: the port's guard drops these before anyone checks it).
fn icmp6_frame(mac: [u8; 6], dst_mac: [u8; 6], src: &str, dst: &str, icmp: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().unwrap();
    let dst: std::net::Ipv6Addr = dst.parse().unwrap();
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(icmp);
    f
}

/// A Neighbour Advertisement for `target` with a target link-layer
/// address option of `lladdr`.
fn na(target: &str, lladdr: [u8; 6]) -> Vec<u8> {
    let t: std::net::Ipv6Addr = target.parse().unwrap();
    let mut m = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    m.extend_from_slice(&t.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&lladdr);
    m
}

#[test]
fn dual_stack_networks_carry_ipv6_between_containers_with_isolation_icc_and_guards() {
    require_root!();
    let host = Netns::new("v6h").unwrap().cleanup_with(NETPATH);
    // BR2 exists before `up` (as docker0 does): `down` must leave it bare.
    host.ip(&["link", "add", BR2, "type", "bridge"]).unwrap();
    for (br, v4, v6) in [
        (BR1, "172.26.0.0/24", "fd00:26::/64"),
        (BR2, "172.27.0.0/24", "fd00:27::/64"),
    ] {
        let out = up_dual(&host, br, v4, v6, &[]);
        assert!(out.contains("gateway address added"), "{out}");
    }
    let (c1, a1) = connect(&host, "v6c1", BR1);
    let (c2, a2) = connect(&host, "v6c2", BR1);
    let (_c3, a3) = connect(&host, "v6c3", BR2);
    assert_eq!(
        (a1.as_str(), a2.as_str(), a3.as_str()),
        ("fd00:26::2", "fd00:26::3", "fd00:27::2")
    );
    let s = status(&host);
    let n1 = &s["networks"][0];
    assert_eq!(
        (n1["subnet6"].as_str(), n1["gateway6"].as_str()),
        (Some("fd00:26::/64"), Some("fd00:26::1"))
    );
    // The gateway is on the bridge, usable at once (no DAD), and the
    // namespace forwards IPv6.
    let addrs = host.ip(&["-6", "addr", "show", "dev", BR1]).unwrap();
    // (The bridge's own link-local may still be in DAD under load: only
    // the gateway's line counts.)
    let gw = addrs.lines().find(|l| l.contains("fd00:26::1/64"));
    assert!(gw.is_some_and(|l| !l.contains("tentative")), "{addrs}");
    let fwd = host
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding"))
        .unwrap()
        .unwrap();
    assert_eq!(fwd.trim(), "1");

    // Within the network, global and link-local; to the gateway; from the host.
    let (ll1, ll2) = (link_local(&c1, "eth0"), link_local(&c2, "eth0"));
    assert!(ping6(&c1, &a2), "c1 -> c2");
    assert!(ping6(&c1, &format!("{ll2}%eth0")), "c1 -> c2 link-local");
    assert!(ping6(&c1, "fd00:26::1"), "c1 -> its gateway");
    assert!(ping6(&host, &a1), "host -> c1");
    // Another network's container never; its gateway (a host address) yes.
    assert!(!ping6(&c1, &a3), "c1 -> c3 crosses networks");
    assert!(ping6(&c1, "fd00:27::1"), "c1 -> the other gateway");
    let s = status(&host);
    assert!(drops(&s, BR1, "drop_isolation") >= 1);

    // A source the container was not given.
    c1.ip(&["addr", "add", "fd00:26::99/64", "dev", "eth0", "nodad"])
        .unwrap();
    assert!(
        topology::run(c1.command("ping").args([
            "-6",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "fd00:26::99",
            "fd00:26::1"
        ]))
        .is_err(),
        "a spoofed IPv6 source got through"
    );
    c1.ip(&["addr", "del", "fd00:26::99/64", "dev", "eth0"])
        .unwrap();
    assert!(drops(&status(&host), BR1, "drop_spoofed_source") >= 1);

    // The ND guard: a Router Advertisement, a Neighbour Advertisement for
    // c2's address, and one for c1's own address with another MAC; the
    // bridge's link-local address is not c1's to send from or probe for.
    let mac1 = raw::mac_of(&c1, "eth0");
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    let ra = [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let bridge_ll = link_local(&host, BR1);
    let mut probe = vec![135, 0, 0, 0, 0, 0, 0, 0];
    probe.extend_from_slice(&bridge_ll.parse::<std::net::Ipv6Addr>().unwrap().octets());
    let before = status(&host);
    raw::send(
        &c1,
        "eth0",
        vec![
            icmp6_frame(mac1, all_nodes, &ll1, "ff02::1", &ra),
            icmp6_frame(mac1, all_nodes, &ll1, "ff02::1", &na(&a2, mac1)),
            icmp6_frame(
                mac1,
                all_nodes,
                &ll1,
                "ff02::1",
                &na(&a1, [2, 0, 0, 0, 0, 9]),
            ),
            icmp6_frame(
                mac1,
                all_nodes,
                &bridge_ll,
                "ff02::1",
                &[128, 0, 0, 0, 0, 1, 0, 1],
            ),
            icmp6_frame(mac1, all_nodes, "::", "ff02::1", &probe),
        ],
        1,
    );
    let after = status(&host);
    let grew = |r: &str| drops(&after, BR1, r) - drops(&before, BR1, r);
    assert_eq!(grew("drop_router_advert"), 1);
    assert_eq!(grew("drop_nd_spoof"), 3);
    assert_eq!(grew("drop_spoofed_source"), 1);
    // c2 still answers at its own address (nobody took it over).
    assert!(ping6(&c1, &a2), "c1 -> c2 after the spoofed NA");

    // ICC off: container to container fails, link-local too; the gateway works.
    netpath_ok(&host, &["network", "set", BR1, "--icc=false"]);
    assert!(!ping6(&c1, &a2), "ICC off: c1 -> c2");
    assert!(
        !ping6(&c1, &format!("{ll2}%eth0")),
        "ICC off: c1 -> c2 link-local"
    );
    assert!(ping6(&c1, "fd00:26::1"), "ICC off: c1 -> gateway");
    assert!(drops(&status(&host), BR1, "drop_icc") >= 2);

    // Down takes both gateways off a bridge it did not create.
    netpath_ok(&host, &["down", "--bridge", BR2]);
    let left = host.ip(&["addr", "show", "dev", BR2]).unwrap();
    assert!(
        !left.contains("fd00:27::1") && !left.contains("172.27.0.1"),
        "{left}"
    );
    netpath_ok(&host, &["down", "--all"]);
    assert!(host.ip(&["link", "show", BR1]).is_err());
}

#[test]
fn dual_stack_input_errors_are_one_line_and_change_nothing() {
    require_root!();
    let host = Netns::new("v6e").unwrap().cleanup_with(NETPATH);
    for (args, says) in [
        (
            &["--subnet", "fd00:30::/64", "--gateway", "172.25.0.1"][..],
            "needs an IPv4 subnet",
        ),
        (
            &["--subnet", "172.25.0.0/24", "--subnet", "fd00:30::1/64"],
            "host bits",
        ),
        (
            &["--subnet", "172.25.0.0/24", "--subnet", "fe80::/64"],
            "link-local",
        ),
        (
            &["--subnet", "172.25.0.0/24", "--gateway", "fd00:30::1"],
            "needs an IPv6 subnet",
        ),
        (
            &[
                "--subnet",
                "172.25.0.0/24",
                "--subnet",
                "fd00:30::/64",
                "--gateway",
                "fd00:31::1",
            ],
            "outside",
        ),
    ] {
        let mut a = vec!["up", "--bridge", "np6e"];
        a.extend_from_slice(args);
        let r = netpath(&host, &a);
        assert!(r.code != 0, "{a:?} succeeded");
        assert!(r.stderr.contains(says), "{a:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
    assert!(
        host.ip(&["link", "show", "np6e"]).is_err(),
        "nothing half-applied"
    );
    // An IPv6 subnet another network has is refused too.
    netpath_ok(
        &host,
        &[
            "up",
            "--bridge",
            "np6f",
            "--subnet",
            "172.24.0.0/24",
            "--subnet",
            "fd00:32::/64",
            "--no-daemon",
        ],
    );
    let r = netpath(
        &host,
        &[
            "up",
            "--bridge",
            "np6g",
            "--subnet",
            "172.23.0.0/24",
            "--subnet",
            "fd00:32::/56",
            "--no-daemon",
        ],
    );
    assert!(r.code != 0 && r.stderr.contains("overlaps"), "{}", r.stderr);
    assert!(
        host.ip(&["link", "show", "np6g"]).is_err(),
        "nothing half-applied"
    );
    let v6_of = |bridge: &str| {
        let s = status(&host);
        let net = s["networks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["bridge"] == bridge)
            .cloned()
            .unwrap();
        net["subnet6"].as_str().map(str::to_owned)
    };
    let refused = |args: &[&str], says: &str| {
        let r = netpath(&host, args);
        assert!(r.code != 0, "{args:?} succeeded");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    };
    // A network up already keeps its IPv6 half, as its IPv4 subnet: another
    // IPv6 subnet, or none, is refused; the same one is an idempotent `up`.
    let up_f = |v6: Option<&str>| {
        let mut a = vec!["up", "--bridge", "np6f", "--subnet", "172.24.0.0/24"];
        if let Some(v6) = v6 {
            a.extend_from_slice(&["--subnet", v6]);
        }
        a.push("--no-daemon");
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    for (v6, says) in [
        (
            Some("fd00:33::/64"),
            "already up with IPv6 subnet fd00:32::/64",
        ),
        (None, "already up with IPv6 subnet fd00:32::/64"),
    ] {
        let a = up_f(v6);
        refused(&a.iter().map(String::as_str).collect::<Vec<_>>(), says);
        assert_eq!(v6_of("np6f").as_deref(), Some("fd00:32::/64"));
    }
    let a = up_f(Some("fd00:32::/64"));
    netpath_ok(&host, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let gw = host
        .ip(&["-6", "-o", "addr", "show", "dev", "np6f"])
        .unwrap();
    assert!(
        gw.contains("fd00:32::1/64") && !gw.contains("fd00:33"),
        "{gw}"
    );

    // An IPv6 subnet overlapping an address the host has elsewhere, a
    // reserved block, a bridge with IPv6 turned off: refused, one line.
    host.ip(&[
        "link", "add", "np6dum", "type", "veth", "peer", "name", "np6dup",
    ])
    .unwrap();
    host.ip(&["addr", "add", "fd00:44::5/64", "dev", "np6dum", "nodad"])
        .unwrap();
    host.ip(&["link", "add", "np6h", "type", "bridge"]).unwrap();
    host.sysctl("net.ipv6.conf.np6h.disable_ipv6", "1").unwrap();
    let v4 = ["up", "--no-daemon", "--subnet", "172.22.0.0/24", "--bridge"];
    for (args, says) in [
        (
            &["np6i", "--subnet", "fd00:44::/64"][..],
            "subnet fd00:44::/64 of np6i overlaps np6dum's address fd00:44::5/64",
        ),
        (&["np6i", "--subnet", "2002:ac16::/48"], "6to4"),
        (
            &["np6h", "--subnet", "fd00:48::/64"],
            "IPv6 is disabled on np6h",
        ),
    ] {
        refused(&[&v4[..], args].concat(), says);
    }
    assert!(
        host.ip(&["link", "show", "np6i"]).is_err(),
        "nothing half-applied"
    );
    let h = host.ip(&["-o", "addr", "show", "dev", "np6h"]).unwrap();
    assert!(!h.contains("172.22.0.1"), "nothing half-applied: {h}");
}

/// One TCP connection from `client` to `[dst]:port`, with an echo server in
/// `server`: the client address the server saw, or why it failed.
fn tcp6(server: &Netns, client: &Netns, dst: &str, port: u16) -> anyhow::Result<String> {
    tcp6_to(server, port, client, dst, port)
}

/// [`tcp6`] with the server on `listen` and the client dialling
/// `[dst]:port` (a published port leading to it).
pub fn tcp6_to(
    server: &Netns,
    listen: u16,
    client: &Netns,
    dst: &str,
    port: u16,
) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let listener = server.run(move || TcpListener::bind(("::", listen)))??;
    let seen = server.spawn(move || -> anyhow::Result<String> {
        // Accepts within 3 s, so a refused client leaves no thread behind.
        listener.set_nonblocking(true)?;
        let end = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let (mut s, peer) = loop {
            match listener.accept() {
                Ok(a) => break a,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    anyhow::ensure!(std::time::Instant::now() < end, "nobody connected");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        s.set_nonblocking(false)?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        s.write_all(&buf)?;
        Ok(peer.ip().to_string())
    });
    let to: SocketAddr = format!("[{dst}]:{port}").parse()?;
    let asked = client.run(move || -> anyhow::Result<()> {
        let timeout = std::time::Duration::from_secs(2);
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"hello")?;
        let mut got = [0u8; 5];
        s.read_exact(&mut got)?;
        anyhow::ensure!(&got == b"hello", "echo mismatch");
        Ok(())
    })?;
    let seen = seen
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))?;
    asked?;
    seen
}

#[test]
fn ipv6_leaves_masqueraded_or_routed_and_only_tracked_flows_come_back() {
    require_root!();
    let (host, ext) = host_and_ext6("v6nh", "v6ne");
    for (br, v4, v6, mode) in [
        (BR1, "172.26.0.0/24", "fd00:26::/64", "nat"),
        (BR2, "172.27.0.0/24", "fd00:27::/64", "routed"),
    ] {
        up_dual(&host, br, v4, v6, &["--gateway-mode", mode]);
    }
    let (c1, a1) = connect(&host, "v6n1", BR1);
    let (c3, a3) = connect(&host, "v6n3", BR2);
    // ext routes both subnets back through the host (a routed network's
    // must be reachable; the masquerading one's is there to be refused).
    for net in ["fd00:26::/64", "fd00:27::/64"] {
        ext.ip(&["-6", "route", "add", net, "via", "fd00:ee::1"])
            .unwrap();
    }

    // nat: out as the uplink's address, answers written back.
    assert!(ping6(&c1, "fd00:ee::2"), "c1 -> ext");
    let seen = tcp6(&ext, &c1, "fd00:ee::2", 7601).expect("c1 -> ext over TCP");
    assert_eq!(seen, "fd00:ee::1", "masqueraded to the uplink's address");
    // routed: out as itself, answers tracked.
    let seen = tcp6(&ext, &c3, "fd00:ee::2", 7602).expect("c3 -> ext over TCP");
    assert_eq!(seen, a3, "routed keeps the container's address");
    // `conntrack list` shows both IPv6 flows with their two tuples.
    let flows = harness::flows(&host);
    let tcp_from = |src: &str| {
        flows
            .iter()
            .find(|f| f["proto"] == "tcp" && f["original"]["src"] == src)
            .unwrap_or_else(|| panic!("no TCP flow from {src}: {flows:?}"))
    };
    let f = tcp_from(&a1);
    assert_eq!(
        (&f["nat"], &f["original"]["dport"], &f["reply"]["dst"]),
        (&"snat".into(), &7601.into(), &"fd00:ee::1".into()),
        "{f}"
    );
    let f = tcp_from(&a3);
    assert_eq!(
        (&f["nat"], &f["reply"]["src"], &f["reply"]["dst"]),
        (&"none".into(), &"fd00:ee::2".into(), &a3.as_str().into()),
        "{f}"
    );
    // The echo is listed by its name; a flush by IPv6 address takes that
    // container's flows only; mixed families are refused in one line.
    assert!(
        flows
            .iter()
            .any(|f| f["proto"] == "icmpv6" && f["original"]["src"] == a1.as_str()),
        "{flows:?}"
    );
    let out = netpath_ok(&host, &["conntrack", "flush", "--src", &a1]);
    // Its TCP flow and its echo's.
    assert!(out.contains(": 2 flow entries"), "{out}");
    let left = harness::flows(&host);
    assert!(
        !left.iter().any(|f| f["original"]["src"] == a1.as_str()),
        "{left:?}"
    );
    assert!(
        left.iter().any(|f| f["original"]["src"] == a3.as_str()),
        "{left:?}"
    );
    // `status` shows the IPv6 table's own fill: a3's flow, two entries.
    let ct6 = &status(&host)["conntrack"]["ipv6"];
    assert_eq!(ct6["capacity"], 65536, "{ct6}");
    let live = ct6["entries"].as_u64().unwrap();
    assert!(
        (2..=2 * left.len() as u64).contains(&live),
        "{ct6} {left:?}"
    );
    let o = netpath(
        &host,
        &["conntrack", "flush", "--src", &a3, "--dst", "10.0.0.1"],
    );
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("different families"), "{}", o.stderr);
    let o = netpath(&host, &["conntrack", "flush", "--dst", "::"]);
    assert!(o.stderr.contains("--dst :: names no flow"), "{}", o.stderr);
    assert_eq!(harness::flows(&host).len(), left.len());

    // From outside, nothing was asked for: nat takes nothing straight at a
    // container; routed takes echo requests, no unpublished port.
    assert!(!ping6(&ext, &a1), "ext -> c1");
    assert!(tcp6(&c1, &ext, &a1, 7603).is_err(), "ext -> c1 over TCP");
    assert!(ping6(&ext, &a3), "ext -> c3 (routed: ping)");
    assert!(tcp6(&c3, &ext, &a3, 7604).is_err(), "ext -> c3 over TCP");
    let s = status(&host);
    assert!(drops(&s, BR1, "drop_direct_routing") >= 2, "{s}");
    assert!(drops(&s, BR2, "drop_not_published") >= 1, "{s}");
}

#[test]
fn path_mtu_discovery_fragments_and_hop_errors_work_through_nat66() {
    require_root!();
    let (host, ext) = host_and_ext6("v6mh", "v6me");
    // far sits behind ext over a link whose MTU towards far is 1280 (the
    // IPv6 minimum).
    let far = Netns::new("v6mf").unwrap();
    topology::veth(&ext, "far0", &far, "eth0").unwrap();
    ext.ip(&["link", "set", "far0", "mtu", "1280"]).unwrap();
    ext.ip(&["addr", "add", "fd00:ef::1/64", "dev", "far0", "nodad"])
        .unwrap();
    far.ip(&["addr", "add", "fd00:ef::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    // far's own route caps what it sends at 1280 (a veth drops frames over
    // its receiving end's MTU), but still advertises a full-size MSS.
    far.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:ef::1",
        "mtu",
        "1280",
        "advmss",
        "1440",
    ])
    .unwrap();
    ext.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    host.ip(&["-6", "route", "add", "fd00:ef::/64", "via", "fd00:ee::2"])
        .unwrap();
    up_dual(&host, BR1, "172.26.0.0/24", "fd00:26::/64", &[]);
    let (c1, _) = connect(&host, "v6m1", BR1);

    // c1 sends 2 MB in full-size segments: ext cannot forward them onto
    // the 1280 link and says Packet Too Big to the uplink address; only
    // the written-back error tells c1, which must lower its path MTU.
    let listen: std::net::SocketAddr = "[::]:9310".parse().unwrap();
    let dial: std::net::SocketAddr = "[fd00:ef::2]:9310".parse().unwrap();
    let seen = topology::tcp_bulk(
        &far,
        listen,
        &c1,
        dial,
        2 << 20,
        std::time::Duration::from_secs(5),
    )
    .expect("bulk TCP across the smaller MTU");
    assert_eq!(seen.ip().to_string(), "fd00:ee::1", "masqueraded");
    let route = c1.ip(&["-6", "route", "get", "fd00:ef::2"]).unwrap();
    assert!(
        route.contains("mtu 1280"),
        "c1 learnt the path MTU: {route}"
    );
    // The error went to c1, not to the host's own stack.
    let route = host.ip(&["-6", "route", "get", "fd00:ef::2"]).unwrap();
    assert!(
        !route.contains("mtu 1280"),
        "the host took the error: {route}"
    );

    // A 4000-byte ping goes out in fragments (all from the uplink address)
    // and its answer comes back in fragments: the later ones find their
    // way to c1 through the ports the first one recorded.
    topology::run(c1.command("ping").args([
        "-6",
        "-c",
        "1",
        "-W",
        "2",
        "-s",
        "4000",
        "fd00:ef::2",
    ]))
    .expect("fragmented ping over NAT66");

    // traceroute's second hop: ext's Time Exceeded finds c1.
    let out = c1
        .command("ping")
        .args(["-6", "-c", "1", "-W", "2", "-t", "2", "fd00:ef::2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From fd00:ee::2") && text.contains("Time exceeded"),
        "{text}"
    );
    let s = status(&host);
    assert_eq!(drops(&s, BR1, "drop_malformed"), 0, "{s}");
}

#[test]
fn a_link_local_address_added_to_a_bridge_is_the_bridges_at_once() {
    require_root!();
    let host = Netns::new("v6bl").unwrap().cleanup_with(NETPATH);
    // With the daemon: it follows IPv6 address events.
    netpath_ok(
        &host,
        &[
            "up",
            "--bridge",
            BR1,
            "--subnet",
            "172.28.0.0/24",
            "--subnet",
            "fd00:28::/64",
        ],
    );
    let (c1, _) = connect(&host, "v6bl1", BR1);
    let mac1 = raw::mac_of(&c1, "eth0");
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    // c1 advertises fe80::1 as its own before the bridge has it: allowed
    // (a free link-local address).
    let claim = || {
        raw::send(
            &c1,
            "eth0",
            vec![icmp6_frame(
                mac1,
                all_nodes,
                "fe80::1",
                "ff02::1",
                &na("fe80::1", mac1),
            )],
            1,
        )
    };
    let spoofed = || drops(&status(&host), BR1, "drop_spoofed_source");
    claim();
    assert_eq!(spoofed(), 0, "fe80::1 was free");
    // Let the daemon settle after connect's events (it takes a burst of
    // them for up to a second), so only the address event can wake it.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The bridge gets fe80::1: the daemon's next reconcile makes it the
    // bridge's, and c1's claim is refused from then on.
    host.ip(&["addr", "add", "fe80::1/64", "dev", BR1, "nodad"])
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while spoofed() == 0 && std::time::Instant::now() < deadline {
        claim();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(spoofed() >= 1, "c1 still sends from the bridge's fe80::1");
}
