//! An IPv6-only network on an IPv6-only host (its uplink chosen by the
//! default rule for its global IPv6 address) with real traffic: `up` with
//! one IPv6 subnet puts no IPv4 address on the bridge, `connect` hands out
//! an IPv6 address alone, containers reach each other, the outside
//! (NAT66) and a published port, and IPv4 a container configures by hand
//! reaches nobody (its ARP and datagrams are dropped and counted as
//! `drop_ipv4`). IPv4 input on the network is one clear line; `down`
//! removes it all, the containers' veths included.

use crate::harness;
use crate::ipv6::{host_and_ext6, tcp6_to};

use harness::{Netns, net_drops, netpath, netpath_ok, status, topology};

const BR: &str = "np6o";
const UP: [&str; 6] = [
    "up",
    "--bridge",
    BR,
    "--subnet",
    "fd00:41::/64",
    "--no-daemon",
];

fn ping(ns: &Netns, family: &str, dst: &str) -> bool {
    topology::run(ns.command("ping").args([family, "-c", "1", "-W", "1", dst])).is_ok()
}

/// `connect`, and the address its first line names
/// ("NS connected to BR: eth0 ADDR/64 mac … via GW (host end …)").
fn connect_v6only(host: &Netns, tag: &str) -> (Netns, String) {
    let c = Netns::new(tag).unwrap();
    let out = netpath_ok(host, &["connect", c.name.as_str(), "--bridge", BR]);
    let first = out.lines().next().unwrap_or_default();
    let addr = first
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/64"))
        .unwrap_or_else(|| panic!("no /64 address in {out:?}"))
        .to_owned();
    assert_eq!(out.lines().count(), 1, "one family, one line: {out}");
    (c, addr)
}

#[test]
fn an_ipv6_only_network_carries_ipv6_everywhere_and_no_ipv4() {
    require_root!();
    let (host, ext) = host_and_ext6("v6oh", "v6oe");
    // An IPv6-only host: its uplink has no IPv4 address, and is one by the
    // default rule all the same (NAT66 writes its global address).
    host.ip(&["-4", "addr", "flush", "dev", "uplink0"]).unwrap();
    let out = netpath_ok(&host, &UP);
    assert!(out.contains("bridge created"), "{out}");
    // The bridge has the IPv6 gateway and no IPv4 address at all.
    let v4 = host.ip(&["-4", "-o", "addr", "show", "dev", BR]).unwrap();
    assert_eq!(v4.trim(), "", "no IPv4 address on {BR}");
    let v6 = host.ip(&["-6", "-o", "addr", "show", "dev", BR]).unwrap();
    assert!(v6.contains("fd00:41::1/64"), "{v6}");
    let s = status(&host);
    let n = &s["networks"][0];
    assert_eq!(
        (&n["subnet"], &n["gateway"], &n["subnet6"], &n["gateway6"]),
        (
            &serde_json::Value::Null,
            &serde_json::Value::Null,
            &"fd00:41::/64".into(),
            &"fd00:41::1".into()
        ),
        "{n}"
    );
    assert_eq!(harness::iface(&s, "uplink0")["role"], "uplink", "{s}");
    let text = netpath_ok(&host, &["status"]);
    assert!(text.contains("fd00:41::/64"), "{text}");

    let (c1, a1) = connect_v6only(&host, "v6o1");
    let (c2, a2) = connect_v6only(&host, "v6o2");
    assert_eq!((a1.as_str(), a2.as_str()), ("fd00:41::2", "fd00:41::3"));
    let inside = c1.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert_eq!(inside.trim(), "", "the container got no IPv4 address");

    // Between containers, to the gateway, out (NAT66) and in through a
    // published port (the client's address kept).
    assert!(ping(&c1, "-6", &a2), "c1 -> c2");
    assert!(ping(&c1, "-6", "fd00:41::1"), "c1 -> gateway");
    let seen = tcp6_to(&ext, 7611, &c1, "fd00:ee::2", 7611).expect("c1 -> ext");
    assert_eq!(seen, "fd00:ee::1", "masqueraded to the uplink's address");
    netpath_ok(&host, &["publish", "[::]:8088", &format!("[{a1}]:80")]);
    let seen = tcp6_to(&c1, 80, &ext, "fd00:ee::1", 8088).expect("ext -> [::]:8088");
    assert_eq!(seen, "fd00:ee::2");

    // IPv4 set up by hand inside the containers reaches nobody: without
    // netpath the bridge would switch it.
    for (c, a) in [(&c1, "10.99.0.2/24"), (&c2, "10.99.0.3/24")] {
        c.ip(&["addr", "add", a, "dev", "eth0"]).unwrap();
    }
    let before = net_drops(&status(&host), BR, "drop_ipv4");
    assert!(!ping(&c1, "-4", "10.99.0.3"), "c1 -> c2 over IPv4");
    let after = net_drops(&status(&host), BR, "drop_ipv4");
    assert!(
        after > before,
        "ARP counted as drop_ipv4: {before} -> {after}"
    );

    // IPv4 input about the network: one line each, nothing changed.
    let c3 = Netns::new("v6o3").unwrap();
    for (args, says) in [
        (
            vec![
                "connect",
                c3.name.as_str(),
                "--bridge",
                BR,
                "--ip",
                "10.99.0.4",
            ],
            "has no IPv4 subnet",
        ),
        (
            vec!["publish", "8089", "10.99.0.2:80"],
            "outside every managed subnet",
        ),
        (
            vec![
                "up",
                "--bridge",
                BR,
                "--subnet",
                "fd00:41::/64",
                "--subnet",
                "172.25.9.0/24",
                "--no-daemon",
            ],
            "already up with no IPv4 subnet",
        ),
        (
            vec![
                "up",
                "--bridge",
                "np6x",
                "--subnet",
                "fd00:42::/64",
                "--gateway",
                "10.1.0.1",
            ],
            "an IPv4 gateway needs an IPv4 subnet",
        ),
    ] {
        let o = netpath(&host, &args);
        assert_eq!(o.code, 1, "{args:?}: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains(says), "{args:?}: {}", o.stderr);
        assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    }
    assert_eq!(status(&host)["networks"].as_array().unwrap().len(), 1);
    // The same `up` again changes nothing.
    let again = netpath_ok(&host, &UP);
    assert!(again.contains("already up"), "{again}");

    let out = netpath_ok(&host, &["disconnect", c2.name.as_str(), "--bridge", BR]);
    assert!(out.contains("fd00:41::3 is free"), "{out}");
    netpath_ok(&host, &["down", "--bridge", BR]);
    assert!(host.ip(&["link", "show", BR]).is_err(), "{BR} deleted");
    // c1, still connected, is unplugged: its veth went with the network
    // (it holds an IPv6 lease alone), so the bridge can come back.
    assert!(
        c1.ip(&["link", "show", "eth0"]).is_err(),
        "c1's eth0 is gone"
    );
    let links = host.ip(&["-o", "link", "show", "type", "veth"]).unwrap();
    let left: Vec<&str> = links.lines().filter(|l| !l.contains("uplink0")).collect();
    assert!(left.is_empty(), "host ends left: {left:?}");
    netpath_ok(&host, &UP);
    connect_v6only(&host, "v6o4");
    let (_, again) = connect_v6only(&host, "v6o5");
    assert_eq!(again, "fd00:41::3", "addresses start over");
}
