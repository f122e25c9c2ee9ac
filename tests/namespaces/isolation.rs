//! Isolation between networks, ICC, internal networks, anti-spoofing,
//! `connect`/`disconnect` with IPAM, and ports plugged in by someone else,
//! all with real traffic in namespaces.

use crate::harness;

use std::time::{Duration, Instant};

use harness::{
    Lab, NETPATH, Netns, addr, iface, lab_up, lab_up_with, net_drops as drops, netpath, netpath_ok,
    status, topology,
};

fn blocked(r: anyhow::Result<std::net::SocketAddrV4>, what: &str) {
    assert!(
        r.is_err(),
        "{what} should be blocked, got through as {:?}",
        r.ok()
    );
}

fn ping_fails(ns: &Netns, dst: &str) {
    assert!(
        topology::ping(ns, dst).is_err(),
        "ping {dst} from {} should fail",
        ns.name
    );
}

/// `connect` a fresh namespace to `bridge`; returns it and its address.
#[test]
fn two_networks_cannot_reach_each_other_but_reach_gateways_and_outside() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["up", "--bridge", "np1", "--subnet", "172.31.0.0/24"],
    );
    let (c3, c3_ip) = harness::connect(&lab.host, "c3", "np1", &[]);
    assert_eq!(c3_ip, "172.31.0.2");

    // Both directions, every protocol.
    blocked(
        topology::tcp_echo(
            &c3,
            addr("0.0.0.0", 7001),
            &lab.c1,
            addr(&c3_ip, 7001),
            b"x",
        ),
        "TCP np0->np1",
    );
    blocked(
        topology::udp_echo(
            &c3,
            addr("0.0.0.0", 7002),
            &lab.c1,
            addr(&c3_ip, 7002),
            b"x",
        ),
        "UDP np0->np1",
    );
    ping_fails(&lab.c1, &c3_ip);
    blocked(
        topology::tcp_echo(
            &lab.c1,
            addr("0.0.0.0", 7003),
            &c3,
            addr(Lab::C1, 7003),
            b"x",
        ),
        "TCP np1->np0",
    );
    blocked(
        topology::udp_echo(
            &lab.c1,
            addr("0.0.0.0", 7004),
            &c3,
            addr(Lab::C1, 7004),
            b"x",
        ),
        "UDP np1->np0",
    );
    ping_fails(&c3, Lab::C1);
    let s = status(&lab.host);
    assert!(drops(&s, Lab::BRIDGE, "drop_isolation") >= 3, "{s}");
    assert!(drops(&s, "np1", "drop_isolation") >= 3, "{s}");

    // Gateways (host addresses, also the other bridge's) and the outside stay reachable.
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
    topology::ping(&lab.c1, "172.31.0.1").unwrap();
    topology::ping(&c3, "172.31.0.1").unwrap();
    let seen = topology::tcp_echo(
        &lab.ext,
        addr("0.0.0.0", 7005),
        &c3,
        addr(Lab::EXT, 7005),
        b"out",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);
    // Inside one network nothing changed.
    topology::tcp_echo(
        &lab.c2,
        addr("0.0.0.0", 7006),
        &lab.c1,
        addr(Lab::C2, 7006),
        b"in",
    )
    .unwrap();
}

#[test]
fn icc_off_blocks_the_bridge_and_can_be_toggled_for_live_containers() {
    require_root!();
    let lab = lab_up_with(Lab::new(NETPATH).unwrap(), &["--icc=false"]);
    assert_eq!(status(&lab.host)["networks"][0]["icc"], false);
    blocked(
        topology::tcp_echo(
            &lab.c2,
            addr("0.0.0.0", 7101),
            &lab.c1,
            addr(Lab::C2, 7101),
            b"x",
        ),
        "TCP c1->c2",
    );
    blocked(
        topology::udp_echo(
            &lab.c1,
            addr("0.0.0.0", 7102),
            &lab.c2,
            addr(Lab::C1, 7102),
            b"x",
        ),
        "UDP c2->c1",
    );
    ping_fails(&lab.c1, Lab::C2);
    // ARP still works: c1 resolved c2's MAC while its pings were dropped.
    let neigh = lab.c1.ip(&["neigh", "show", Lab::C2]).unwrap();
    assert!(neigh.contains("lladdr"), "ARP with ICC off: {neigh}");
    // Gateway and outside are fine.
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
    lab.tcp_out(&lab.c1, 7103).unwrap();
    assert!(drops(&status(&lab.host), Lab::BRIDGE, "drop_icc") >= 3);

    // At runtime, without touching the containers.
    netpath_ok(&lab.host, &["network", "set", Lab::BRIDGE, "--icc=true"]);
    topology::tcp_echo(
        &lab.c2,
        addr("0.0.0.0", 7104),
        &lab.c1,
        addr(Lab::C2, 7104),
        b"on",
    )
    .unwrap();
    topology::ping(&lab.c2, Lab::C1).unwrap();
    netpath_ok(&lab.host, &["network", "set", Lab::BRIDGE, "--icc=false"]);
    blocked(
        topology::tcp_echo(
            &lab.c2,
            addr("0.0.0.0", 7105),
            &lab.c1,
            addr(Lab::C2, 7105),
            b"x",
        ),
        "TCP after icc off",
    );
    let r = netpath(&lab.host, &["network", "set", "nope0", "--icc=true"]);
    assert_eq!((r.code, r.stderr.lines().count()), (1, 1), "{}", r.stderr);
}

#[test]
fn an_internal_network_keeps_to_its_subnet() {
    require_root!();
    let lab = lab_up_with(Lab::new(NETPATH).unwrap(), &["--internal"]);
    // Even with a route to the subnet, the outside cannot get in.
    lab.ext
        .ip(&["route", "add", Lab::SUBNET, "via", Lab::UPLINK])
        .unwrap();
    blocked(lab.tcp_out(&lab.c1, 7201), "internal -> outside");
    ping_fails(&lab.c1, Lab::UPLINK);
    blocked(
        lab.tcp_in(&lab.c1, 7202, addr(Lab::C1, 7202)),
        "outside -> internal",
    );
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
    topology::tcp_echo(
        &lab.c2,
        addr("0.0.0.0", 7203),
        &lab.c1,
        addr(Lab::C2, 7203),
        b"in",
    )
    .unwrap();
    let s = status(&lab.host);
    assert_eq!(s["networks"][0]["internal"], true);
    assert!(drops(&s, Lab::BRIDGE, "drop_internal") >= 3, "{s}");
    assert_eq!(s["networks"][0]["snat"]["packets"], 0, "no masquerade");
}

#[test]
fn spoofed_addresses_and_macs_are_dropped_and_counted() {
    require_root!();
    let lab = lab_up();
    // c1's port learns 172.30.0.2 and its MAC from its first packets.
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
    let s = status(&lab.host);
    assert_eq!(iface(&s, "c1h")["binding"], "learned");
    assert_eq!(iface(&s, "c1h")["address"], Lab::C1);
    // Another source address (added to the container) is dropped.
    lab.c1
        .ip(&["addr", "add", "172.30.0.9/32", "dev", "eth0"])
        .unwrap();
    let spoofed = topology::run(lab.c1.command("ping").args([
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "172.30.0.9",
        Lab::GATEWAY,
    ]));
    assert!(spoofed.is_err(), "ping from a spoofed source got through");
    assert!(drops(&status(&lab.host), Lab::BRIDGE, "drop_spoofed_source") >= 1);
    // So is another MAC.
    lab.c1
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:00:99"])
        .unwrap();
    ping_fails(&lab.c1, Lab::GATEWAY);
    assert!(drops(&status(&lab.host), Lab::BRIDGE, "drop_spoofed_mac") >= 1);
    // c2 is unaffected.
    topology::ping(&lab.c2, Lab::GATEWAY).unwrap();

    // A connected container is bound to what connect assigned, from the start.
    let (c4, ip) = harness::connect(&lab.host, "c4", Lab::BRIDGE, &[]);
    let s = status(&lab.host);
    let port = s["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == ip.as_str())
        .unwrap_or_else(|| panic!("no port bound to {ip}: {s}"));
    assert_eq!(port["binding"], "connect");
    c4.ip(&["addr", "add", "172.30.0.10/32", "dev", "eth0"])
        .unwrap();
    let spoofed = topology::run(c4.command("ping").args([
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "172.30.0.10",
        Lab::GATEWAY,
    ]));
    assert!(spoofed.is_err(), "a connected container spoofed its source");
    topology::ping(&c4, Lab::GATEWAY).unwrap();
}

#[test]
fn a_port_plugged_in_after_up_is_enforced_within_a_second() {
    require_root!();
    let lab = Lab::new(NETPATH).unwrap();
    netpath_ok(
        &lab.host,
        &[
            "up",
            "--bridge",
            Lab::BRIDGE,
            "--subnet",
            Lab::SUBNET,
            "--icc=false",
        ],
    );
    let plugged = Instant::now();
    lab.plug_ports().unwrap();
    let attached = |lab: &Lab| {
        let s = status(&lab.host);
        ["c1h", "c2h"].iter().all(|p| {
            s["interfaces"].as_array().unwrap().iter().any(|i| {
                i["name"] == *p
                    && i["role"] == "port"
                    && !i["ingress_prog_ids"].as_array().unwrap().is_empty()
            })
        })
    };
    while !attached(&lab) && plugged.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = plugged.elapsed();
    assert!(attached(&lab), "ports not attached after {took:?}");
    assert!(took < Duration::from_secs(1), "attached after {took:?}");
    eprintln!("ports attached {took:?} after they were plugged in");
    // ... and enforced: ICC is off.
    ping_fails(&lab.c1, Lab::C2);
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
}

/// Polls `done` every 20 ms for up to 3 s; how long it took.
fn wait_for(mut done: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !done() && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// A port's programs run from netpath's TC filter; when someone removes it
/// (or the whole clsact qdisc) the daemon hears the TC event and puts it
/// back, and the port is enforced again.
#[test]
fn a_port_whose_filter_is_removed_is_guarded_again_by_the_daemon() {
    require_root!();
    let lab = harness::lab_up_with(Lab::new(NETPATH).unwrap(), &["--icc=false"]);
    let guarded = |lab: &Lab| {
        [true, false].iter().all(|&ingress| {
            harness::tc_programs(&lab.host, "c1h", ingress)
                .iter()
                .any(|(_, n)| n.starts_with("netpath_port_"))
        })
    };
    assert!(guarded(&lab), "c1h runs netpath's programs after up");
    ping_fails(&lab.c1, Lab::C2);
    for removal in [
        &["filter", "del", "dev", "c1h", "ingress"][..],
        &["qdisc", "del", "dev", "c1h", "clsact"][..],
    ] {
        let out = lab.host.command("tc").args(removal).output().expect("tc");
        assert!(out.status.success(), "tc {removal:?}: {out:?}");
        let took = wait_for(|| guarded(&lab));
        assert!(
            guarded(&lab),
            "c1h not guarded {took:?} after tc {removal:?}"
        );
        eprintln!("c1h guarded again {took:?} after tc {removal:?}");
        // ... and enforced: ICC is off.
        ping_fails(&lab.c1, Lab::C2);
    }
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
}

/// A port that already has another tool's classic `ingress` qdisc (whose
/// one block would take both directions' filters) gets TCX links instead,
/// each direction its own program, and `down` leaves that qdisc alone.
#[test]
fn a_port_with_a_classic_ingress_qdisc_gets_tcx_links() {
    require_root!();
    let tc = |lab: &Lab, args: &[&str]| {
        let out = lab.host.command("tc").args(args).output().expect("tc");
        assert!(out.status.success(), "tc {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let lab = Lab::new(NETPATH).unwrap();
    tc(&lab, &["qdisc", "add", "dev", "c1h", "ingress"]);
    let lab = harness::lab_up_with(lab, &["--icc=false"]);
    for (ingress, want) in [(true, "netpath_port_in"), (false, "netpath_port_eg")] {
        let progs = harness::tc_programs(&lab.host, "c1h", ingress);
        assert!(
            progs.len() == 1 && progs[0].1 == want,
            "c1h {want}: {progs:?}"
        );
    }
    ping_fails(&lab.c1, Lab::C2);
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
    netpath_ok(&lab.host, &["down", "--all"]);
    assert!(
        tc(&lab, &["qdisc", "show", "dev", "c1h"]).contains("qdisc ingress"),
        "the other tool's qdisc stays"
    );
    for ingress in [true, false] {
        assert!(harness::tc_programs(&lab.host, "c1h", ingress).is_empty());
    }
}

#[test]
fn connect_and_disconnect_manage_veths_addresses_and_errors() {
    require_root!();
    // Only connected containers here (c1 and c2 stay unplugged).
    let lab = Lab::new(NETPATH).unwrap();
    netpath_ok(
        &lab.host,
        &["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET],
    );
    let (x1, ip1) = harness::connect(&lab.host, "x1", Lab::BRIDGE, &[]);
    let (x2, ip2) = harness::connect(&lab.host, "x2", Lab::BRIDGE, &["--ifname", "net0"]);
    assert_eq!((ip1.as_str(), ip2.as_str()), ("172.30.0.2", "172.30.0.3"));
    assert!(x2.ip(&["-o", "link", "show", "net0"]).is_ok());
    assert!(
        x1.ip(&["route", "show", "default"])
            .unwrap()
            .contains(Lab::GATEWAY)
    );
    topology::ping(&x1, &ip2).unwrap();
    let seen = topology::tcp_echo(
        &lab.ext,
        addr("0.0.0.0", 7301),
        &x1,
        addr(Lab::EXT, 7301),
        b"out",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);

    // Errors: one line, exit 1, nothing made.
    let x3 = Netns::new("x3").unwrap();
    // Names and masters (operstate and the bridge's MAC follow its ports).
    let links = |ns: &Netns| -> Vec<String> {
        ns.ip(&["-o", "link", "show"])
            .unwrap()
            .lines()
            .map(|l| {
                let name = l.split(": ").nth(1).unwrap_or_default().to_owned();
                let master = l.split(" master ").nth(1).and_then(|m| m.split(' ').next());
                format!("{name} {}", master.unwrap_or("-"))
            })
            .collect()
    };
    let links_before = links(&lab.host);
    for (args, want) in [
        (
            vec![
                "connect",
                &x3.name,
                "--bridge",
                Lab::BRIDGE,
                "--ip",
                "172.30.0.3",
            ],
            "already in use",
        ),
        (
            vec![
                "connect",
                &x3.name,
                "--bridge",
                Lab::BRIDGE,
                "--ip",
                "10.0.0.5",
            ],
            "outside",
        ),
        (
            vec![
                "connect",
                &x3.name,
                "--bridge",
                Lab::BRIDGE,
                "--ip",
                Lab::GATEWAY,
            ],
            "gateway",
        ),
        (
            vec!["connect", "np-no-such-ns", "--bridge", Lab::BRIDGE],
            "not found",
        ),
        (
            vec!["connect", &x3.name, "--bridge", "nope0"],
            "no network on bridge nope0",
        ),
        (
            vec!["connect", &x1.name, "--bridge", Lab::BRIDGE],
            "already connected",
        ),
        (
            vec![
                "connect",
                &x3.name,
                "--bridge",
                Lab::BRIDGE,
                "--ifname",
                "lo",
            ],
            "already exists",
        ),
        (
            vec!["disconnect", &x3.name, "--bridge", Lab::BRIDGE],
            "not connected",
        ),
    ] {
        let r = netpath(&lab.host, &args);
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    assert_eq!(links(&lab.host), links_before, "nothing half-made");
    assert_eq!(
        x3.ip(&["-o", "link", "show"]).unwrap().lines().count(),
        1,
        "only lo in x3"
    );

    // Disconnect frees the address and removes the pair; the next connect reuses it.
    let out = netpath_ok(
        &lab.host,
        &["disconnect", &x1.name, "--bridge", Lab::BRIDGE],
    );
    assert!(out.contains("172.30.0.2 is free"), "{out}");
    assert_eq!(
        x1.ip(&["-o", "link", "show"]).unwrap().lines().count(),
        1,
        "x1 keeps only lo"
    );
    let (_x4, ip4) = harness::connect(&lab.host, "x4", Lab::BRIDGE, &[]);
    assert_eq!(ip4, "172.30.0.2");
    // `down` unplugs what connect plugged in.
    netpath_ok(&lab.host, &["down", "--all"]);
    assert_eq!(
        x2.ip(&["-o", "link", "show"]).unwrap().lines().count(),
        1,
        "x2 keeps only lo"
    );
}

#[test]
fn a_hundred_networks_stay_isolated() {
    require_root!();
    let host = Netns::new("h100").unwrap().cleanup_with(NETPATH);
    let started = Instant::now();
    for i in 0..100 {
        let bridge = format!("nb{i}");
        let subnet = format!("10.77.{i}.0/24");
        netpath_ok(&host, &["up", "--bridge", &bridge, "--subnet", &subnet]);
    }
    eprintln!("100 networks up in {:?}", started.elapsed());
    let s = status(&host);
    assert_eq!(s["networks"].as_array().unwrap().len(), 100);
    let (a, a_ip) = harness::connect(&host, "a", "nb0", &[]);
    let (b, b_ip) = harness::connect(&host, "b", "nb99", &[]);
    let (a2, _) = harness::connect(&host, "a2", "nb0", &[]);
    ping_fails(&a, &b_ip);
    ping_fails(&b, &a_ip);
    topology::ping(&a2, &a_ip).unwrap();
    topology::ping(&b, "10.77.99.1").unwrap();
    let s = status(&host);
    assert!(drops(&s, "nb0", "drop_isolation") >= 1);
    assert!(drops(&s, "nb99", "drop_isolation") >= 1);
}

/// Packets the kernel sent out of `dev` in `ns` (its own statistics, not
/// netpath's counters).
fn tx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ip(&["-s", "-j", "link", "show", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

#[test]
fn neighbours_on_one_network_go_port_to_port_past_the_bridge() {
    require_root!();
    let lab = lab_up();
    let c2c = |lab: &Lab| {
        status(&lab.host)["networks"][0]["c2c_fast"]["packets"]
            .as_u64()
            .unwrap()
    };
    // A first exchange teaches both ports their containers (the fast path
    // needs the other end bound or learned) and the containers each other's MAC.
    topology::tcp_echo(
        &lab.c2,
        addr("0.0.0.0", 7201),
        &lab.c1,
        addr(Lab::C2, 7201),
        b"hi",
    )
    .unwrap();
    let before = (
        c2c(&lab),
        tx_packets(&lab.host, "c1h"),
        tx_packets(&lab.host, "c2h"),
    );
    for i in 0..5u8 {
        let seen = topology::tcp_echo(
            &lab.c2,
            addr("0.0.0.0", 7202),
            &lab.c1,
            addr(Lab::C2, 7202),
            &[i; 1000],
        )
        .unwrap();
        assert_eq!(seen.ip().to_string(), Lab::C1, "the client's own address");
        topology::udp_echo(
            &lab.c1,
            addr("0.0.0.0", 7203),
            &lab.c2,
            addr(Lab::C1, 7203),
            &[i; 64],
        )
        .unwrap();
    }
    let after = (
        c2c(&lab),
        tx_packets(&lab.host, "c1h"),
        tx_packets(&lab.host, "c2h"),
    );
    // Five TCP connections are at least 25 packets, five UDP echoes 10.
    assert!(
        after.0 >= before.0 + 35,
        "port to port: {}",
        after.0 - before.0
    );
    // Through the bridge, the host ends of the veths would have sent every
    // one of them (an ARP refresh may still go the bridge's way).
    assert!(
        after.1 - before.1 < 5 && after.2 - before.2 < 5,
        "the bridge delivered {} to c1 and {} to c2",
        after.1 - before.1,
        after.2 - before.2
    );
    // ICC off stops them at once, live containers and all.
    netpath_ok(&lab.host, &["network", "set", Lab::BRIDGE, "--icc=false"]);
    blocked(
        topology::tcp_echo(
            &lab.c2,
            addr("0.0.0.0", 7204),
            &lab.c1,
            addr(Lab::C2, 7204),
            b"x",
        ),
        "TCP c1->c2 with ICC off",
    );
    assert_eq!(c2c(&lab), after.0, "nothing port to port with ICC off");
}
