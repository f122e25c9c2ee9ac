//! Secure by default, with real traffic and crafted frames in namespaces:
//! nothing reaches a container unless it was asked for. Direct routing
//! under each gateway mode, spoofed and tagged frames from outside, VLAN
//! tags, IPv6 and ARP claims from containers, filter rules for external
//! clients, other networks and host processes, and a flood of refused
//! packets that leaks nothing while real flows carry on.

use crate::harness;

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use harness::{
    Lab, NETPATH, Netns, addr, lab_up, lab_up_with, netpath, netpath_ok,
    packet::{self, UDP, frame},
    raw, status, topology,
};

/// The drops of network `bridge` for `reason`.
fn drops(ns: &Netns, bridge: &str, reason: &str) -> u64 {
    harness::net_drops(&status(ns), bridge, reason)
}

/// The drops of interface `ifname` for `reason`.
fn iface_drops(ns: &Netns, ifname: &str, reason: &str) -> u64 {
    harness::iface(&status(ns), ifname)["drops"][reason]
        .as_u64()
        .unwrap()
}

fn blocked<T: std::fmt::Debug>(r: anyhow::Result<T>, what: &str) {
    assert!(r.is_err(), "{what} should be blocked, got {:?}", r.ok());
}

/// ext routes the container subnet through the host's uplink, as a
/// neighbour on the same network might.
fn route_subnet_via_host(lab: &Lab) {
    lab.ext
        .ip(&["route", "add", Lab::SUBNET, "via", Lab::UPLINK])
        .unwrap();
}

fn set_mode(lab: &Lab, mode: &str) {
    netpath_ok(
        &lab.host,
        &["network", "set", Lab::BRIDGE, "--gateway-mode", mode],
    );
}

#[test]
fn direct_routing_reaches_only_what_the_gateway_mode_allows() {
    require_root!();
    let lab = lab_up();
    route_subnet_via_host(&lab);
    netpath_ok(&lab.host, &["publish", "8080", &format!("{}:80", Lab::C1)]);
    let tcp_to = |port: u16, dial: &str| {
        topology::tcp_echo(
            &lab.c1,
            addr("0.0.0.0", port),
            &lab.ext,
            addr(dial, port),
            b"x",
        )
    };

    // nat (the default): nothing straight at the container, published
    // container port included; the published host port works.
    blocked(tcp_to(2222, Lab::C1), "TCP to an unpublished port");
    blocked(tcp_to(80, Lab::C1), "TCP to the published container port");
    blocked(
        topology::udp_echo(
            &lab.c1,
            addr("0.0.0.0", 5353),
            &lab.ext,
            addr(Lab::C1, 5353),
            b"q",
        ),
        "UDP to an unpublished port",
    );
    assert!(
        topology::ping(&lab.ext, Lab::C1).is_err(),
        "ping the container"
    );
    assert!(drops(&lab.host, Lab::BRIDGE, "drop_direct_routing") >= 4);
    let seen = lab.tcp_in(&lab.c1, 80, addr(Lab::UPLINK, 8080)).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);
    // The container's own flows still come back (masqueraded).
    let seen = lab.tcp_out(&lab.c1, 7000).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);

    // routed: no masquerade; published container ports and ping come in.
    set_mode(&lab, "routed");
    let seen = tcp_to(80, Lab::C1).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);
    topology::ping(&lab.ext, Lab::C1).unwrap();
    blocked(tcp_to(2222, Lab::C1), "routed: TCP to an unpublished port");
    assert!(drops(&lab.host, Lab::BRIDGE, "drop_not_published") >= 1);
    let seen = lab.tcp_out(&lab.c1, 7001).unwrap();
    assert_eq!(
        seen.ip().to_string(),
        Lab::C1,
        "routed keeps the container's address"
    );

    // nat-unprotected: Docker's old behaviour.
    set_mode(&lab, "nat-unprotected");
    tcp_to(2222, Lab::C1).unwrap();
    set_mode(&lab, "nat");
    blocked(tcp_to(2223, Lab::C1), "nat again");
    let s = status(&lab.host);
    assert_eq!(s["networks"][0]["gateway_mode"], "nat");
}

#[test]
fn a_trusted_host_interface_reaches_published_container_ports_directly() {
    require_root!();
    // The uplink, and an interface that does not exist (yet).
    let trusting = [
        "--trusted-host-interface",
        "vpn0",
        "--trusted-host-interface",
        "uplink0",
    ];
    let lab = lab_up_with(Lab::new(NETPATH).expect("building the lab"), &trusting);
    route_subnet_via_host(&lab);
    netpath_ok(&lab.host, &["publish", "8080", &format!("{}:80", Lab::C1)]);
    let tcp_to = |port: u16| {
        topology::tcp_echo(
            &lab.c1,
            addr("0.0.0.0", port),
            &lab.ext,
            addr(Lab::C1, port),
            b"x",
        )
    };
    let seen = tcp_to(80).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT, "untranslated");
    // Only published container ports: not another port, not ping.
    blocked(tcp_to(2222), "TCP to an unpublished port");
    assert!(topology::ping(&lab.ext, Lab::C1).is_err(), "ping");
    let s = status(&lab.host);
    assert_eq!(
        s["networks"][0]["trusted_host_interfaces"],
        serde_json::json!(["uplink0", "vpn0"])
    );
    let table = netpath_ok(&lab.host, &["status"]);
    assert!(table.contains("nat (trusted: uplink0,vpn0)"), "{table}");

    // Bad lists: one line, exit 1, nothing changed.
    let up = ["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET];
    let long = "x".repeat(16);
    let many: Vec<String> = (0..33)
        .flat_map(|i| ["--trusted-host-interface".to_owned(), format!("e{i}")])
        .collect();
    for (extra, want) in [
        (
            vec![
                "--trusted-host-interface",
                "uplink0",
                "--trusted-host-interface",
                "uplink0",
            ],
            "given twice",
        ),
        (
            vec!["--trusted-host-interface", long.as_str()],
            "interface name",
        ),
        (many.iter().map(String::as_str).collect(), "at most 32"),
    ] {
        let mut args = up.to_vec();
        args.extend(extra.iter().copied());
        let r = netpath(&lab.host, &args);
        assert_eq!(r.code, 1, "{extra:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{extra:?}: {}", r.stderr);
    }
    // (Traffic counters move with the daemon's own ARP and such: the
    // network's settings are what must not.)
    let after = status(&lab.host);
    for field in ["trusted_host_interfaces", "gateway_mode", "subnet", "icc"] {
        assert_eq!(
            after["networks"][0][field], s["networks"][0][field],
            "nothing changed: {field}"
        );
    }

    // `up` without them closes direct access again.
    netpath_ok(&lab.host, &up);
    blocked(tcp_to(80), "no longer trusted");
    assert_eq!(
        status(&lab.host)["networks"][0]["trusted_host_interfaces"],
        serde_json::json!([])
    );
}

#[test]
fn masquerade_off_keeps_addresses_and_still_refuses_new_inbound_flows() {
    require_root!();
    let lab = lab_up_with(Lab::new(NETPATH).unwrap(), &["--masquerade=false"]);
    route_subnet_via_host(&lab);
    let seen = lab.tcp_out(&lab.c1, 7100).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::C1);
    topology::udp_echo(
        &lab.ext,
        addr("0.0.0.0", 7101),
        &lab.c1,
        addr(Lab::EXT, 7101),
        b"out",
    )
    .unwrap();
    topology::ping(&lab.c1, Lab::EXT).unwrap();
    blocked(
        lab.tcp_in(&lab.c1, 7102, addr(Lab::C1, 7102)),
        "a plain connect() from outside",
    );
    assert!(drops(&lab.host, Lab::BRIDGE, "drop_direct_routing") >= 1);
}

/// Frames ext sends to the uplink's MAC, as an attacker on its link would.
fn to_uplink(lab: &Lab, f: Vec<u8>) -> Vec<u8> {
    raw::with_macs(
        f,
        raw::mac_of(&lab.host, "uplink0"),
        raw::mac_of(&lab.ext, "eth0"),
    )
}

fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame(
        UDP,
        src,
        dst,
        &packet::udp(src, dst, 33333, dport, b"spoofed", true),
        1,
        0,
    )
}

/// Counts UDP datagrams to `port` that reach `ns` (anywhere).
fn udp_sink(
    ns: &Netns,
    port: u16,
    window: Duration,
) -> std::thread::JoinHandle<anyhow::Result<usize>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let s = std::net::UdpSocket::bind(addr("0.0.0.0", port))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = tx.send(());
        let deadline = std::time::Instant::now() + window;
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            if s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    });
    rx.recv_timeout(Duration::from_secs(3)).expect("sink ready");
    h
}

#[test]
fn spoofed_sources_and_foreign_vlans_from_outside_never_reach_a_container() {
    require_root!();
    let lab = lab_up();
    netpath_ok(
        &lab.host,
        &["publish", "5353/udp", &format!("{}:53", Lab::C1)],
    );
    let uplink: Ipv4Addr = Lab::UPLINK.parse().unwrap();
    let ext: Ipv4Addr = Lab::EXT.parse().unwrap();
    let sink = udp_sink(&lab.c1, 53, Duration::from_millis(1500));
    let bad_sources = [
        "198.18.0.1",
        "127.0.0.1",
        "172.30.0.1",
        "172.30.0.3",
        "0.0.0.7",
        "224.0.0.9",
        "240.0.0.1",
    ];
    let mut frames: Vec<Vec<u8>> = bad_sources
        .iter()
        .map(|s| to_uplink(&lab, udp_frame(s.parse().unwrap(), uplink, 5353)))
        .collect();
    // A VLAN the host has no interface for; a double tag.
    let good = to_uplink(&lab, udp_frame(ext, uplink, 5353));
    frames.push(raw::tagged(&good, 0x8100, 100));
    frames.push(raw::tagged(&raw::tagged(&good, 0x8100, 100), 0x88a8, 200));
    let sent = raw::send(&lab.ext, "eth0", frames, 3);
    assert_eq!(sent, 27);
    assert_eq!(
        sink.join().unwrap().unwrap(),
        0,
        "nothing reached the container"
    );
    assert_eq!(iface_drops(&lab.host, "uplink0", "drop_local_source"), 9);
    assert_eq!(iface_drops(&lab.host, "uplink0", "drop_martian_source"), 12);
    assert_eq!(iface_drops(&lab.host, "uplink0", "drop_vlan"), 6);
    assert_eq!(
        drops(&lab.host, Lab::BRIDGE, "drop_local_source"),
        6,
        "gateway and C2 claimed"
    );

    // The same datagram from ext itself reaches it.
    let sink = udp_sink(&lab.c1, 53, Duration::from_millis(700));
    raw::send(&lab.ext, "eth0", vec![good.clone()], 1);
    assert_eq!(
        sink.join().unwrap().unwrap(),
        1,
        "the real client gets through"
    );

    // With a VLAN device for 100 on the uplink, that VLAN is the host's:
    // its frames are no longer dropped as foreign (the device's own
    // program judges them). Kernels without 802.1Q devices cannot have one.
    let vlan = lab.host.ip(&[
        "link",
        "add",
        "link",
        "uplink0",
        "name",
        "uplink0.100",
        "type",
        "vlan",
        "id",
        "100",
    ]);
    if let Err(e) = vlan {
        assert!(format!("{e:#}").contains("Unknown device type"), "{e:#}");
        eprintln!("NOTE: this kernel has no 802.1Q devices; the VLAN-device case is not checked");
        return;
    }
    lab.host.ip(&["link", "set", "uplink0.100", "up"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = iface_drops(&lab.host, "uplink0", "drop_vlan");
    raw::send(&lab.ext, "eth0", vec![raw::tagged(&good, 0x8100, 100)], 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(iface_drops(&lab.host, "uplink0", "drop_vlan"), before);
    raw::send(&lab.ext, "eth0", vec![raw::tagged(&good, 0x8100, 101)], 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(iface_drops(&lab.host, "uplink0", "drop_vlan"), before + 1);
}

#[test]
fn containers_cannot_tag_frames_speak_ipv6_or_claim_the_gateway() {
    require_root!();
    let lab = lab_up();
    let c1_mac = raw::mac_of(&lab.c1, "eth0");
    let ext: Ipv4Addr = Lab::EXT.parse().unwrap();
    let gw_mac = raw::mac_of(&lab.host, Lab::BRIDGE);
    // Tagged frames at any depth, with a spoofed source that would be
    // masqueraded out if it got through: a tag the kernel takes off on
    // receive (single), and tags inside it.
    let spoofed = raw::with_macs(
        udp_frame("172.30.0.99".parse().unwrap(), ext, 9999),
        gw_mac,
        c1_mac,
    );
    let cap = raw::capture(&lab.ext, "eth0", Duration::from_millis(800), |f| {
        f.len() > 40 && f[12..14] == [8, 0] && f[23] == UDP
    });
    let frames = vec![
        raw::tagged(&spoofed, 0x8100, 5),
        raw::tagged(&raw::tagged(&spoofed, 0x8100, 5), 0x8100, 6),
        raw::tagged(&raw::tagged(&spoofed, 0x8100, 5), 0x88a8, 6),
    ];
    raw::send(&lab.c1, "eth0", frames, 2);
    assert!(
        cap.join().unwrap().unwrap().is_empty(),
        "nothing left through the uplink"
    );
    assert_eq!(drops(&lab.host, Lab::BRIDGE, "drop_vlan"), 6);

    // IPv6 on a network without an IPv6 subnet: not even link-local.
    let c2_ll = format!("{}%eth0", harness::link_local(&lab.c2, "eth0"));
    let before = drops(&lab.host, Lab::BRIDGE, "drop_ipv6");
    let r = topology::run(
        lab.c1
            .command("ping")
            .args(["-6", "-c", "2", "-W", "1", &c2_ll]),
    );
    assert!(r.is_err(), "IPv6 between containers must not pass");
    assert!(drops(&lab.host, Lab::BRIDGE, "drop_ipv6") > before);

    // ARP: c2 knows the gateway; c1, whose port has learnt nothing yet,
    // claims the gateway's address. c2's neighbour entry must not move.
    topology::ping(&lab.c2, Lab::GATEWAY).unwrap();
    let status0 = status(&lab.host);
    assert!(
        harness::iface(&status0, "c1h")["binding"].is_null(),
        "c1's port is unbound"
    );
    std::thread::sleep(Duration::from_millis(1100)); // past the neighbour locktime
    let gw: [u8; 4] = [172, 30, 0, 1];
    let claim = raw::arp(2, c1_mac, gw, [0xff; 6], gw);
    raw::send(
        &lab.c1,
        "eth0",
        vec![raw::with_macs(claim, [0xff; 6], c1_mac)],
        3,
    );
    std::thread::sleep(Duration::from_millis(200));
    let neigh = lab.c2.ip(&["neigh", "show", Lab::GATEWAY]).unwrap();
    let gw_mac_s = netpath::codec::fmt_mac(&gw_mac);
    assert!(
        neigh.contains(&gw_mac_s),
        "c2's entry for the gateway moved: {neigh}"
    );
    assert!(drops(&lab.host, Lab::BRIDGE, "drop_spoofed_source") >= 3);
    assert!(
        harness::iface(&status(&lab.host), "c1h")["binding"].is_null(),
        "nothing learnt"
    );
}

#[test]
fn ipv6_between_networks_is_dropped() {
    require_root!();
    let (lab, c3) = crate::publish::lab_and_c3();
    lab.host
        .sysctl("net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    lab.host
        .ip(&["addr", "add", "fd00:a::1/64", "dev", Lab::BRIDGE])
        .unwrap();
    lab.host
        .ip(&["addr", "add", "fd00:b::1/64", "dev", "np1"])
        .unwrap();
    lab.c1
        .ip(&["addr", "add", "fd00:a::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    lab.c1
        .ip(&["-6", "route", "add", "default", "via", "fd00:a::1"])
        .unwrap();
    c3.ip(&["addr", "add", "fd00:b::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    c3.ip(&["-6", "route", "add", "default", "via", "fd00:b::1"])
        .unwrap();
    let before = drops(&lab.host, Lab::BRIDGE, "drop_ipv6");
    let r = topology::run(
        lab.c1
            .command("ping")
            .args(["-6", "-c", "2", "-W", "1", "fd00:b::2"]),
    );
    assert!(r.is_err(), "IPv6 across networks must not pass");
    assert!(drops(&lab.host, Lab::BRIDGE, "drop_ipv6") > before);
    // IPv4 between them stays blocked as ever, and IPv4 to the outside works.
    assert!(topology::ping(&lab.c1, "172.31.0.2").is_err());
    topology::ping(&c3, Lab::EXT).unwrap();
}

/// A host process (in the hooks' cgroup) connecting to `ip:port`: Ok with
/// the answer, Err with what it printed.
fn host_connect(lab: &Lab, ip: &str, port: u16) -> Result<String, String> {
    let cg = lab.host.cgroup.as_ref().expect("host cgroup");
    let code = format!(
        "import socket; s = socket.create_connection(('{ip}', {port}), 2); s.send(b'hi'); print(s.recv(16).decode())"
    );
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net=/run/netns/{} python3 -c \"{code}\"",
        cg.display(),
        lab.host.name
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("host client");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn filter_rules_restrict_published_ports_for_every_kind_of_client() {
    require_root!();
    let (lab, c3) = crate::publish::lab_and_c3();
    // A trusted client address on ext, routed back by the host.
    lab.ext
        .ip(&["addr", "add", "10.9.9.9/32", "dev", "eth0"])
        .unwrap();
    lab.host
        .ip(&["route", "add", "10.9.9.9/32", "via", Lab::EXT])
        .unwrap();
    netpath_ok(&lab.host, &["publish", "8080", &format!("{}:80", Lab::C1)]);
    netpath_ok(
        &lab.host,
        &[
            "filter",
            "add",
            "--from",
            "10.0.0.0/8",
            "--port",
            "8080/tcp",
            "allow",
        ],
    );
    netpath_ok(&lab.host, &["filter", "add", "--port", "8080/tcp", "deny"]);

    blocked(
        lab.tcp_in(&lab.c1, 80, addr(Lab::UPLINK, 8080)),
        "an external client outside 10/8",
    );
    blocked(
        topology::tcp_echo(
            &lab.c1,
            addr("0.0.0.0", 80),
            &c3,
            addr("172.31.0.1", 8080),
            b"x",
        ),
        "a container of another network",
    );
    let host = host_connect(&lab, Lab::UPLINK, 8080);
    assert!(host.is_err(), "a host process: {host:?}");
    // The trusted address gets in.
    let seen = topology::tcp_echo_from(
        &lab.c1,
        addr("0.0.0.0", 80),
        &lab.ext,
        "10.9.9.9".parse().unwrap(),
        addr(Lab::UPLINK, 8080),
        b"ok",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), "10.9.9.9");

    let listed: serde_json::Value =
        serde_json::from_str(&netpath_ok(&lab.host, &["filter", "list", "--json"])).unwrap();
    let rules = listed.as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["from"], "10.0.0.0/8", "most specific first");
    assert_eq!(rules[0]["hits"], 1);
    assert!(rules[1]["hits"].as_u64().unwrap() >= 2);
    assert!(drops(&lab.host, Lab::BRIDGE, "drop_filter") >= 2);

    // Without the deny rule everyone is back.
    netpath_ok(&lab.host, &["filter", "del", "--port", "8080/tcp"]);
    lab.tcp_in(&lab.c1, 80, addr(Lab::UPLINK, 8080)).unwrap();

    // Bad input: one line, exit 1, nothing changed.
    for (args, want) in [
        (
            &["filter", "add", "--from", "10.0.0.1/8", "deny"][..],
            "host bits",
        ),
        (
            &["filter", "add", "--from", "nope", "deny"],
            "invalid --from",
        ),
        (&["filter", "add", "--port", "70000", "deny"], "65535"),
        (
            &["filter", "add", "--network", "nosuch", "deny"],
            "no network on bridge nosuch",
        ),
        (
            &["filter", "add", "--port", "8080", "maybe"],
            "invalid value",
        ),
        (&["filter", "del", "--port", "9999"], "no filter rule"),
        (
            &["network", "set", Lab::BRIDGE, "--gateway-mode", "open"],
            "invalid value",
        ),
        (
            &[
                "up",
                "--bridge",
                "np9",
                "--subnet",
                "172.32.0.0/24",
                "--gateway-mode",
                "x",
            ],
            "invalid value",
        ),
    ] {
        let before = netpath_ok(&lab.host, &["filter", "list", "--json"]);
        let r = netpath(&lab.host, args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
        assert_eq!(netpath_ok(&lab.host, &["filter", "list", "--json"]), before);
    }
}

/// Packets ext's eth0 could not hand over (the veth counts them as tx drops).
fn tx_dropped(ns: &Netns, ifname: &str) -> u64 {
    let out = ns.ip(&["-s", "-j", "link", "show", ifname]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

/// 100,000 packets of refused classes (direct routing to an unpublished
/// port, spoofed local sources at a published port, a foreign VLAN) leak
/// none, while a masqueraded TCP stream and the published port keep
/// working through the flood.
#[test]
fn a_flood_of_refused_packets_leaks_nothing_and_real_flows_carry_on() {
    require_root!();
    let _heavy = harness::exclusive();
    let lab = lab_up();
    route_subnet_via_host(&lab);
    netpath_ok(
        &lab.host,
        &["publish", "5353/udp", &format!("{}:53", Lab::C1)],
    );
    let uplink: Ipv4Addr = Lab::UPLINK.parse().unwrap();
    let ext: Ipv4Addr = Lab::EXT.parse().unwrap();
    let c1: Ipv4Addr = Lab::C1.parse().unwrap();
    let frames = vec![
        to_uplink(&lab, udp_frame(ext, c1, 9999)),
        to_uplink(&lab, udp_frame("172.30.0.1".parse().unwrap(), uplink, 5353)),
        to_uplink(&lab, udp_frame("127.0.0.1".parse().unwrap(), uplink, 5353)),
        raw::tagged(&to_uplink(&lab, udp_frame(ext, uplink, 5353)), 0x8100, 42),
    ];
    let sink = udp_sink(&lab.c1, 9999, Duration::from_secs(6));
    let before = status(&lab.host);
    let lost_before = tx_dropped(&lab.ext, "eth0");
    let flood = lab
        .ext
        .spawn(move || Ok(raw::send_here("eth0", &frames, 25_000)));
    // Through the flood: a masqueraded stream and the published port.
    let seen = topology::tcp_bulk(
        &lab.ext,
        addr("0.0.0.0", 7200),
        &lab.c2,
        addr(Lab::EXT, 7200),
        8 << 20,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::UPLINK);
    let seen = topology::udp_echo(
        &lab.c1,
        addr("0.0.0.0", 53),
        &lab.ext,
        addr(Lab::UPLINK, 5353),
        b"q",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);
    let sent = flood.join().unwrap().unwrap();
    assert_eq!(sent, 100_000);
    assert_eq!(
        sink.join().unwrap().unwrap(),
        0,
        "the flood leaked into the container"
    );
    let after = status(&lab.host);
    let d =
        |s: &serde_json::Value, r: &str| harness::iface(s, "uplink0")["drops"][r].as_u64().unwrap();
    let refused: u64 = [
        "drop_direct_routing",
        "drop_local_source",
        "drop_martian_source",
        "drop_vlan",
    ]
    .iter()
    .map(|r| d(&after, r) - d(&before, r))
    .sum();
    // Every frame that reached the uplink was refused and counted.
    let lost = tx_dropped(&lab.ext, "eth0") - lost_before;
    assert_eq!(
        refused + lost,
        100_000,
        "refused {refused}, lost on the way {lost}"
    );
    assert!(refused >= 99_000, "refused {refused}");
}
