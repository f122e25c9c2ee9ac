//! A published port's flow between two containers with real traffic:
//! port to port both ways, from another network (routed) and from the
//! same one, with the bytes a router or the bridge would write, the
//! flows answered; and what the host would not forward (a frame not
//! addressed to it, a packet too big for the container's port, one with
//! IP options) declined.

use crate::harness;

use std::{net::UdpSocket, time::Duration};

use harness::{Lab, Netns, addr, flows, netpath_ok, topology};
use netpath::lab::frames;

use crate::publish::lab_and_c3;

/// What the kernel counted on `bridge` (its own statistics, not
/// netpath's): packets the bridge took up to the host (to route) and
/// packets its ports sent (delivered to containers).
fn bridge_stats(host: &Netns, bridge: &str) -> (u64, u64) {
    let stats = |args: &[&str]| -> Vec<serde_json::Value> {
        serde_json::from_str(&host.ip(args).unwrap()).unwrap()
    };
    let taken = stats(&["-s", "-j", "link", "show", bridge])[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap();
    let sent = stats(&["-s", "-j", "link", "show", "master", bridge])
        .iter()
        .map(|p| p["stats64"]["tx"]["packets"].as_u64().unwrap())
        .sum();
    (taken, sent)
}

/// (source, TTL, destination MAC, source MAC) of the IPv4 TCP frames
/// `frames`.
fn ip_fields(frames: &[Vec<u8>]) -> Vec<(std::net::Ipv4Addr, u8, [u8; 6], [u8; 6])> {
    frames
        .iter()
        .map(|f| {
            let mac = |o: usize| <[u8; 6]>::try_from(&f[o..o + 6]).unwrap();
            (harness::packet::ip_of(f, 26), f[22], mac(0), mac(6))
        })
        .collect()
}

#[test]
fn published_ports_between_containers_go_port_to_port() {
    require_root!();
    let (lab, c3) = lab_and_c3();
    netpath_ok(&lab.host, &["publish", "8085", &format!("{}:80", Lab::C1)]);
    let rounds = 5;
    // The client address c1 saw.
    let ask = |ns: &Netns, i: u8| {
        topology::tcp_echo(
            &lab.c1,
            addr("0.0.0.0", 80),
            ns,
            addr(Lab::UPLINK, 8085),
            &[i; 100],
        )
        .unwrap_or_else(|e| panic!("{} -> {}:8085: {e:#}", ns.name, Lab::UPLINK))
        .ip()
        .to_string()
    };
    // A first exchange each resolves the neighbours (an unresolved one
    // takes the normal path, which resolves it).
    ask(&c3, 0);
    ask(&lab.c2, 0);
    let fast = |bridge: &str| fast(&lab.host, bridge);
    let tcp_from = |src: &'static str| {
        move |f: &[u8]| {
            f.len() > 34
                && f[12..14] == [8, 0]
                && f[23] == 6
                && harness::packet::ip_of(f, 26).to_string() == src
        }
    };
    let (np0_mac, np1_mac) = (
        harness::raw::mac_of(&lab.host, Lab::BRIDGE),
        harness::raw::mac_of(&lab.host, "np1"),
    );
    let (c1_mac, c2_mac, c3_mac) = (
        harness::raw::mac_of(&lab.c1, "eth0"),
        harness::raw::mac_of(&lab.c2, "eth0"),
        harness::raw::mac_of(&c3, "eth0"),
    );
    let window = Duration::from_secs(3);
    let at_c1 = harness::raw::capture(&lab.c1, "eth0", window, tcp_from("172.31.0.2"));
    let at_c3 = harness::raw::capture(&c3, "eth0", window, tcp_from(Lab::UPLINK));
    let at_c2 = harness::raw::capture(&lab.c2, "eth0", window, tcp_from(Lab::UPLINK));
    let before = (
        bridge_stats(&lab.host, Lab::BRIDGE),
        bridge_stats(&lab.host, "np1"),
        fast(Lab::BRIDGE),
        fast("np1"),
    );
    for i in 1..=rounds as u8 {
        assert_eq!(ask(&c3, i), "172.31.0.2", "c1 sees its client");
        assert_eq!(ask(&lab.c2, i), Lab::C2, "c1 sees its client");
    }
    let after = (
        bridge_stats(&lab.host, Lab::BRIDGE),
        bridge_stats(&lab.host, "np1"),
        fast(Lab::BRIDGE),
        fast("np1"),
    );
    // Ten connections are at least 50 packets each way; through the
    // bridges, np0 and np1 would have taken them up to the host (a
    // neighbour refresh may still go that way).
    let taken = (after.0.0 - before.0.0) + (after.1.0 - before.1.0);
    let delivered = (after.0.1 - before.0.1) + (after.1.1 - before.1.1);
    eprintln!(
        "bridges took {taken} up, delivered {delivered}; port to port np0 {} np1 {}",
        after.2 - before.2,
        after.3 - before.3
    );
    assert!(
        taken < 10 && delivered < 10,
        "the bridges took {taken} up and their ports delivered {delivered}"
    );
    assert!(
        after.3 - before.3 >= 20,
        "np1 port to port: {}",
        after.3 - before.3
    );
    assert!(
        after.2 - before.2 >= 50,
        "np0 port to port: {}",
        after.2 - before.2
    );

    // The bytes: routed from another network both ways (one hop, the
    // bridges' MACs as a router writes them), the answer's source the
    // published address again.
    let ttl = 64 - 1;
    for (src, t, dst_mac, src_mac) in ip_fields(&at_c1.join().unwrap().unwrap()) {
        assert_eq!(src.to_string(), "172.31.0.2");
        assert_eq!((t, dst_mac, src_mac), (ttl, c1_mac, np0_mac), "c3 -> c1");
    }
    let to_c3 = ip_fields(&at_c3.join().unwrap().unwrap());
    assert!(to_c3.len() >= 3 * rounds, "{} answers at c3", to_c3.len());
    for (_, t, dst_mac, src_mac) in to_c3 {
        assert_eq!((t, dst_mac, src_mac), (ttl, c3_mac, np1_mac), "c1 -> c3");
    }
    // On one network the answer is switched (c1 sends it to c2's MAC):
    // no hop taken, the frame as c1 wrote it, its source rewritten.
    let to_c2 = ip_fields(&at_c2.join().unwrap().unwrap());
    assert!(to_c2.len() >= 3 * rounds, "{} answers at c2", to_c2.len());
    for (_, t, dst_mac, src_mac) in to_c2 {
        assert_eq!((t, dst_mac, src_mac), (64, c2_mac, c1_mac), "c1 -> c2");
    }
    // The flows were answered and booked as such, as on the bridges' way.
    let from_c3: Vec<serde_json::Value> = flows(&lab.host)
        .into_iter()
        .filter(|f| f["original"]["src"] == "172.31.0.2")
        .collect();
    assert!(from_c3.len() > rounds, "{from_c3:#?}");
    for f in &from_c3 {
        assert_eq!(f["nat"], "dnat", "{f:#}");
        assert!(f["seen_reply"] == true && f["assured"] == true, "{f:#}");
        assert!(f["reply"]["packets"].as_u64().unwrap() >= 3, "{f:#}");
    }
}

/// The `c2c_fast` packets of network `bridge`.
fn fast(host: &Netns, bridge: &str) -> u64 {
    harness::status(host)["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["bridge"] == bridge)
        .unwrap()["c2c_fast"]["packets"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_port_to_port_path_declines_what_the_host_would_not_forward() {
    require_root!();
    let (lab, c3) = lab_and_c3();
    netpath_ok(
        &lab.host,
        &["publish", "8086/udp", &format!("{}:90", Lab::C1)],
    );
    // c1's port takes smaller frames than its bridge (set after it, so
    // the bridge keeps 1500).
    lab.host.ip(&["link", "set", "c1h", "mtu", "1000"]).unwrap();
    lab.host
        .ip(&["link", "set", Lab::BRIDGE, "mtu", "1500"])
        .unwrap();
    // What c1 receives on port 90 in the next seconds.
    let received = lab.c1.spawn(|| {
        let s = UdpSocket::bind("0.0.0.0:90")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = s.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        Ok(got)
    });
    std::thread::sleep(Duration::from_millis(200));
    let (c3_addr, uplink) = ("172.31.0.2".parse().unwrap(), Lab::UPLINK.parse().unwrap());
    let (np1_mac, c3_mac) = (
        harness::raw::mac_of(&lab.host, "np1"),
        harness::raw::mac_of(&c3, "eth0"),
    );
    let datagram = |dst_mac: [u8; 6], payload: &[u8]| {
        let udp = frames::udp(c3_addr, uplink, 40001, 8086, payload, true);
        // Don't fragment: a packet too big is dropped, not split.
        let ip = frames::frame(17, c3_addr, uplink, &udp, 7, 0x4000);
        frames::with_macs(ip, dst_mac, c3_mac)
    };
    let send = |frame: Vec<u8>| {
        assert_eq!(harness::raw::send(&c3, "eth0", vec![frame], 1), 1);
        std::thread::sleep(Duration::from_millis(150));
    };
    // The first datagram resolves c1 as np0's neighbour (the normal
    // path); the second goes port to port.
    send(datagram(np1_mac, b"first"));
    let before = fast(&lab.host, "np1");
    send(datagram(np1_mac, b"routed"));
    assert_eq!(fast(&lab.host, "np1"), before + 1, "port to port");
    // With an IP option (Record Route): the host routes it, filling the
    // option in, so it must not go port to port (which would not).
    let mut with_rr = datagram(np1_mac, b"options");
    with_rr.splice(34..34, [7, 7, 4, 0, 0, 0, 0, 1]);
    with_rr[14] = 0x47;
    let total = u16::from_be_bytes([with_rr[16], with_rr[17]]) + 8;
    with_rr[16..18].copy_from_slice(&total.to_be_bytes());
    with_rr[24..26].copy_from_slice(&[0, 0]);
    let sum = frames::checksum(&with_rr[14..42]);
    with_rr[24..26].copy_from_slice(&sum.to_be_bytes());
    send(with_rr);
    assert_eq!(
        fast(&lab.host, "np1"),
        before + 1,
        "IP options: the host's way"
    );
    // A frame for another MAC: the host does not route it (np1 floods it
    // to its other ports, of which there are none).
    send(datagram([0x02, 0, 0, 0, 0, 0x99], b"not for the host"));
    // Bigger than c1's port takes: np0 would drop it there.
    send(datagram(np1_mac, &[b'x'; 1300]));
    // And a small one still arrives after both.
    send(datagram(np1_mac, b"last"));
    // Each datagram as its length and first bytes.
    let got: Vec<String> = received
        .join()
        .unwrap()
        .unwrap()
        .iter()
        .map(|g: &Vec<u8>| {
            format!(
                "{} {}",
                g.len(),
                String::from_utf8_lossy(&g[..g.len().min(16)])
            )
        })
        .collect();
    assert_eq!(
        got,
        ["5 first", "6 routed", "7 options", "4 last"],
        "what c1 received"
    );
    assert_eq!(fast(&lab.host, "np1"), before + 2);
}
