//! The IPv6 fast path with real traffic: a container's flow to beyond the
//! host leaves through the uplink and its answers come back without the
//! bridge or the host ends of the veths carrying them (the kernel's own
//! interface statistics say so), masqueraded all the same; neighbours on
//! one network go port to port; a hop limit that runs out here still gets
//! its Time Exceeded from the host; a link-local source and a Hop-by-Hop
//! option to discard are left to the host, which does not forward them.

use crate::harness;
use crate::ipv6::{connect, host_and_ext6, tcp6_to, up_dual};

use std::{net::Ipv6Addr, time::Duration};

use harness::{Netns, link_local, raw, status};
use netpath::lab::frames;

const BR: &str = "np6f";

/// What the kernel counted (its own statistics, not netpath's): packets
/// the bridge took in (what it passed up to the host to route) and packets
/// its ports sent (what it delivered to containers).
fn bridge_stats(host: &Netns) -> (u64, u64) {
    let stats = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = host.ip(args).unwrap();
        serde_json::from_str(&out).unwrap()
    };
    let bridge = stats(&["-s", "-j", "link", "show", BR]);
    let ports = stats(&["-s", "-j", "link", "show", "master", BR]);
    let sent = ports
        .iter()
        .map(|p| p["stats64"]["tx"]["packets"].as_u64().unwrap())
        .sum();
    (
        bridge[0]["stats64"]["rx"]["packets"].as_u64().unwrap(),
        sent,
    )
}

fn ping6(ns: &Netns, args: &[&str]) -> String {
    let out = ns.command("ping").arg("-6").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ipv6_takes_the_fast_path_out_of_the_uplink_back_and_between_neighbours() {
    require_root!();
    let (host, ext) = host_and_ext6("v6fh", "v6fe");
    up_dual(&host, BR, "172.29.0.0/24", "fd00:29::/64", &[]);
    let (c1, a1) = connect(&host, "v6f1", BR);
    let (c2, a2) = connect(&host, "v6f2", BR);
    let c2c = || {
        status(&host)["networks"][0]["c2c_fast"]["packets"]
            .as_u64()
            .unwrap()
    };
    // A first exchange each way resolves the neighbours (an unresolved
    // one takes the normal path, which resolves it).
    tcp6_to(&ext, 7701, &c1, "fd00:ee::2", 7701).expect("c1 -> ext");
    tcp6_to(&c2, 7702, &c1, &a2, 7702).expect("c1 -> c2");

    let before = (bridge_stats(&host), c2c());
    for i in 0..5 {
        let seen = tcp6_to(&ext, 7710 + i, &c1, "fd00:ee::2", 7710 + i).expect("c1 -> ext");
        assert_eq!(seen, "fd00:ee::1", "masqueraded to the uplink's address");
        let seen = tcp6_to(&c2, 7720 + i, &c1, &a2, 7720 + i).expect("c1 -> c2");
        assert_eq!(seen, a1, "the neighbour sees the client's own address");
    }
    let after = (bridge_stats(&host), c2c());
    // Five connections each way are 50 packets and more; an ND refresh
    // may still go the bridge's way.
    let (taken, delivered) = (after.0.0 - before.0.0, after.0.1 - before.0.1);
    eprintln!(
        "bridge took {taken} up, ports delivered {delivered}, port to port {}",
        after.1 - before.1
    );
    assert!(
        taken < 12 && delivered < 12,
        "the bridge took {taken} up and its ports delivered {delivered}"
    );
    assert!(
        after.1 >= before.1 + 25,
        "port to port: {}",
        after.1 - before.1
    );

    // Routed on the way in: the answer lost one hop (ext sends 64).
    let out = ping6(&c1, &["-c", "1", "-W", "2", "fd00:ee::2"]);
    assert!(out.contains("ttl=63"), "{out}");
    // Switched between neighbours: no hop taken.
    let out = ping6(&c1, &["-c", "1", "-W", "2", &a2]);
    assert!(out.contains("ttl=64"), "{out}");
    // A hop limit of 1 runs out here: the host says so, as it would
    // without netpath.
    let out = ping6(&c1, &["-c", "1", "-W", "2", "-t", "1", "fd00:ee::2"]);
    assert!(
        out.contains("From fd00:29::1") && out.contains("Time exceeded"),
        "{out}"
    );
    // Still only what was asked for: nothing from ext reaches c1.
    assert!(tcp6_to(&c1, 7730, &ext, &a1, 7730).is_err(), "ext -> c1");

    // What the host does not forward as it is stays the host's to judge:
    // c1's own link-local address as a source (its own on the link, not
    // beyond it), and a Hop-by-Hop option the host must discard (type
    // 0x9e: discard and say so). Neither leaves (the fast path would have
    // sent both out), and both go up to the host through the bridge.
    let ll: Ipv6Addr = link_local(&c1, "eth0").parse().unwrap();
    let own: Ipv6Addr = a1.parse().unwrap();
    let ext_addr: Ipv6Addr = "fd00:ee::2".parse().unwrap();
    let marker = b"np-fast6-not-forwarded";
    let udp = |src: Ipv6Addr| frames::udp(src, ext_addr, 7740, 7740, marker, true);
    let mut hop_by_hop = vec![17, 0, 0x9e, 4, 0, 0, 0, 0];
    hop_by_hop.extend_from_slice(&udp(own));
    let (bridge_mac, c1_mac) = (raw::mac_of(&host, BR), raw::mac_of(&c1, "eth0"));
    for (datagram, why) in [
        (
            frames::frame6(17, ll, ext_addr, &udp(ll)),
            "a link-local source",
        ),
        (
            frames::frame6(0, own, ext_addr, &hop_by_hop),
            "a Hop-by-Hop option to discard",
        ),
    ] {
        let datagram = raw::with_macs(datagram, bridge_mac, c1_mac);
        let seen = raw::capture(&ext, "eth0", Duration::from_millis(800), move |f| {
            f.windows(marker.len()).any(|w| w == marker)
        });
        let before = bridge_stats(&host).0;
        assert_eq!(raw::send(&c1, "eth0", vec![datagram], 3), 3);
        let seen = seen.join().unwrap().unwrap();
        assert!(seen.is_empty(), "{why} left the host: {seen:02x?}");
        let taken = bridge_stats(&host).0 - before;
        assert!(taken >= 3, "{why}: the bridge took {taken} up");
    }
    drop(c2);
}

/// The host's count of IPv6 packets it forwarded (its own statistics).
fn forwarded6(host: &Netns) -> u64 {
    let out = host.command("cat").arg("/proc/net/snmp6").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Ip6OutForwDatagrams in /proc/net/snmp6")
}

#[test]
fn a_published_ports_ipv6_answers_leave_from_the_bridge_without_the_host_forwarding_them() {
    require_root!();
    let (host, ext) = host_and_ext6("v6ph", "v6pe");
    up_dual(&host, BR, "172.29.0.0/24", "fd00:29::/64", &[]);
    let (c1, a1) = connect(&host, "v6p1", BR);
    let (c2, a2) = connect(&host, "v6p2", BR);
    harness::netpath_ok(&host, &["publish", "[::]:8090", &format!("[{a1}]:80")]);
    // A first exchange resolves the neighbours (an unresolved one takes
    // the normal path, which resolves it).
    tcp6_to(&c1, 80, &ext, "fd00:ee::1", 8090).expect("ext -> [::]:8090");
    let before = forwarded6(&host);
    for _ in 0..5 {
        let seen = tcp6_to(&c1, 80, &ext, "fd00:ee::1", 8090).expect("ext -> [::]:8090");
        assert_eq!(seen, "fd00:ee::2", "the client's address is kept");
    }
    let fast = forwarded6(&host) - before;
    // A neighbour reaching the port through its gateway is answered the
    // normal way (its answer is for a managed network): the host forwards.
    let before = forwarded6(&host);
    for _ in 0..5 {
        let seen = tcp6_to(&c1, 80, &c2, "fd00:29::1", 8090).expect("c2 -> gateway:8090");
        assert_eq!(seen, a2);
    }
    let normal = forwarded6(&host) - before;
    eprintln!("host forwarded {fast} for ext's connections, {normal} for c2's");
    // Five connections are 25 answers and more; an ND refresh may still
    // go the normal way. The client's packets come in on the fast path
    // already (the uplink hands them to the container).
    assert!(fast < 5, "the host forwarded {fast} packets of ext's flows");
    assert!(normal >= 25, "the host forwarded only {normal} of c2's");
}
