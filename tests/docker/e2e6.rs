//! The IPv6 rows of the end-to-end matrix, under dockerd 26.1 with
//! `--ipv6 --fixed-cidr-v6`: first its own ip6tables path (which 26.1 still
//! calls experimental: `--experimental --ip6tables`, userland proxy on, as
//! shipped), then `--ip6tables=false --iptables=false
//! --userland-proxy=false` with `netpath docker`. Same rule as the IPv4
//! matrix: every cell gives the same outcome in both, except where netpath
//! is better on purpose, which asserts netpath's and prints dockerd's.
//!
//! dockerd 20.10 is left out: its `--ipv6` bridge has no NAT66 at all (a
//! container's packets leave with their own ULA source), so no cell of
//! egress or publishing can be compared with it.

use crate::{
    e2e::{Mode, Stack, judge},
    harness,
};

use std::collections::BTreeMap;

use harness::{Netns, dockerd::Engine, status};

const UPLINK6: &str = "fd00:ee::1";
const EXT6: &str = "fd00:ee::2";

/// What every run gives dockerd: IPv6 on, docker0's IPv6 subnet.
const IPV6: [&str; 3] = ["--ipv6", "--fixed-cidr-v6", "fd00:17::/64"];

fn ip6_of(s: &Stack, name: &str) -> String {
    s.docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
        name,
    ])
}

/// The uplink's and the external side's IPv6 addresses (no DAD wait).
fn addresses(host: &Netns, ext: &Netns) {
    host.ip(&[
        "addr",
        "add",
        &format!("{UPLINK6}/64"),
        "dev",
        "up0",
        "nodad",
    ])
    .unwrap();
    ext.ip(&["addr", "add", &format!("{EXT6}/64"), "dev", "eth0", "nodad"])
        .unwrap();
}

/// Servers on both families (the container's IPv4 ones answer the IPv4
/// half of a dual-stack binding).
const SERVERS: [&str; 3] = ["tcp:80", "tcp6:80", "udp6:9999"];

fn matrix(mode: Mode, engine: &Engine) -> BTreeMap<&'static str, String> {
    let flags: Vec<&str> = match mode {
        Mode::Iptables => vec!["--experimental", "--ip6tables=true"],
        Mode::Netpath => vec![],
    }
    .into_iter()
    .chain(IPV6)
    .collect();
    let mut s = Stack::with_flags(mode, engine, &flags, addresses);
    let mut cells = BTreeMap::new();
    let net = |s: &Stack, name: &str, v4: &str, v6: &str, extra: &[&str]| {
        let mut a = vec![
            "network", "create", "--ipv6", "--subnet", v4, "--subnet", v6,
        ];
        a.extend_from_slice(extra);
        a.push(name);
        s.docker(&a);
    };
    net(&s, "v6a", "172.31.1.0/24", "fd00:31::/64", &[]);
    net(&s, "v6b", "172.31.2.0/24", "fd00:32::/64", &[]);
    net(
        &s,
        "v6noicc",
        "172.31.3.0/24",
        "fd00:33::/64",
        &["-o", "com.docker.network.bridge.enable_icc=false"],
    );
    net(
        &s,
        "v6int",
        "172.31.4.0/24",
        "fd00:34::/64",
        &["--internal"],
    );
    s.run_servers("web6", &["--network", "v6a", "-p", "8080:80"], &SERVERS);
    s.run_servers("a6", &["--network", "v6a"], &SERVERS);
    s.run_servers("b6", &["--network", "v6b"], &SERVERS);
    s.run_servers("c0", &[], &SERVERS);
    if mode == Mode::Netpath {
        s.start_follower();
    }
    // Containers on dual-stack networks: one binding per container, each
    // published port twice (0.0.0.0 and ::).
    s.settle(4, 2);
    s.run_servers("n1", &["--network", "v6noicc"], &SERVERS);
    s.run_servers("n2", &["--network", "v6noicc"], &SERVERS);
    s.run_servers("i1", &["--network", "v6int"], &SERVERS);
    s.run_servers("i2", &["--network", "v6int"], &SERVERS);
    s.run_servers(
        "spoofer",
        &["--network", "v6a", "--cap-add", "NET_ADMIN"],
        &SERVERS,
    );
    s.settle(9, 2);

    let ext = EXT6.to_owned();
    let port = "7001";
    cells.insert(
        "egress6 tcp",
        s.client_in_container("a6", &["tcp", &ext, port]),
    );
    cells.insert(
        "egress6 udp",
        s.client_in_container("a6", &["udp", &ext, port]),
    );
    cells.insert(
        "egress6 from the default bridge",
        s.client_in_container("c0", &["tcp", &ext, port]),
    );
    cells.insert(
        "published6 from external",
        s.client_in(&s.ext, None, "tcp", UPLINK6, 8080),
    );
    cells.insert(
        "published6 from other network",
        s.client_in_container("b6", &["tcp", UPLINK6, "8080"]),
    );
    cells.insert(
        "published6 from same network",
        s.client_in_container("a6", &["tcp", UPLINK6, "8080"]),
    );
    cells.insert(
        "published6 from host [::1]",
        s.client_on_host("tcp", "::1", 8080),
    );
    cells.insert(
        "published4 still from external",
        s.client_in_ext("tcp", harness::Lab::UPLINK, 8080),
    );
    let (b6, a6) = (ip6_of(&s, "b6"), ip6_of(&s, "a6"));
    cells.insert(
        "isolation6 a->b tcp",
        s.client_in_container("a6", &["tcp", &b6, "80"]),
    );
    cells.insert(
        "isolation6 b->a udp",
        s.client_in_container("b6", &["udp", &a6, "9999"]),
    );
    let n2 = ip6_of(&s, "n2");
    cells.insert(
        "icc=false6 tcp",
        s.client_in_container("n1", &["tcp", &n2, "80"]),
    );
    cells.insert(
        "icc=false6 egress",
        s.client_in_container("n1", &["tcp", &ext, port]),
    );
    let i2 = ip6_of(&s, "i2");
    cells.insert(
        "internal6 egress",
        s.client_in_container("i1", &["tcp", &ext, port]),
    );
    cells.insert(
        "internal6 same network",
        s.client_in_container("i1", &["tcp", &i2, "80"]),
    );
    // Direct routing: the external side routes v6a's subnet through the
    // host and dials containers at their own addresses.
    s.ext
        .ip(&["-6", "route", "add", "fd00:31::/64", "via", UPLINK6])
        .unwrap();
    let web6 = ip6_of(&s, "web6");
    cells.insert(
        "direct routing6 to an unpublished container",
        s.client_in(&s.ext, None, "tcp", &a6, 80),
    );
    cells.insert(
        "direct routing6 to a published container port",
        s.client_in(&s.ext, None, "tcp", &web6, 80),
    );
    s.ext
        .ip(&["-6", "route", "del", "fd00:31::/64", "via", UPLINK6])
        .unwrap();
    // A container sending from an address of its subnet that is not its
    // own.
    let spoof = "fd00:31::200";
    s.docker(&[
        "exec",
        "spoofer",
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{spoof}/64"),
        "dev",
        "eth0",
    ]);
    // Busybox's ip has no nodad: wait out duplicate address detection, so
    // "blocked" below cannot come from a source the container cannot bind.
    let bind = format!("import socket; socket.socket(socket.AF_INET6).bind(('{spoof}', 0))");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s
        .d
        .docker_try(&["exec", "spoofer", "python3", "-c", &bind])
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{spoof} never became usable in spoofer"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    cells.insert(
        "spoofed6 source",
        s.client_in_container("spoofer", &["tcp", &ext, port, spoof]),
    );
    // A container that guesses the MAC of one not started yet (Docker's
    // follow the address; here it is given) sends once from that MAC's
    // link-local address: the owner, started next, must still be reached
    // there.
    let (late_mac, late_ll) = ("02:42:ac:1f:01:99", "fe80::42:acff:fe1f:199");
    let squat = format!(
        "from scapy.all import Ether, IPv6, ICMPv6EchoRequest, sendp; \
         sendp(Ether()/IPv6(src='{late_ll}', dst='ff02::1')/ICMPv6EchoRequest(), iface='eth0', verbose=0)"
    );
    s.docker(&["exec", "spoofer", "python3", "-c", &squat]);
    s.run_servers(
        "late6",
        &["--network", "v6a", "--mac-address", late_mac],
        &SERVERS,
    );
    s.settle(10, 2);
    let target = format!("{late_ll}%eth0");
    // Its link-local address is usable once duplicate address detection
    // is over: a few tries.
    let mut answer = String::new();
    for _ in 0..10 {
        answer = s.client_in_container("a6", &["tcp", &target, "80"]);
        if answer.starts_with("late6 ") {
            answer = "late6 answers".to_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    cells.insert("link-local of a container started later", answer);
    if mode == Mode::Netpath {
        // Every container's port is bound to the IPv6 address dockerd gave
        // it (a lease of dockerd's), not learnt from its first packet.
        let given: Vec<String> = [
            "web6", "a6", "b6", "c0", "n1", "n2", "i1", "i2", "spoofer", "late6",
        ]
        .iter()
        .map(|c| ip6_of(&s, c))
        .collect();
        let st = status(&s.host);
        let bound = st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                i["binding6"] == "docker" && given.iter().any(|g| i["address6"].as_str() == Some(g))
            })
            .count();
        cells.insert(
            "ports bound to their IPv6 address",
            format!("{bound} of {}", given.len()),
        );
        let drops: u64 = st["networks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["drops"]["drop_spoofed_source"].as_u64().unwrap_or(0))
            .sum();
        cells.insert("spoofed6 source counted", format!("{}", drops > 0));
        // A container gone takes its IPv6 mapping with it.
        s.docker(&["rm", "-f", "web6"]);
        s.settle(9, 0);
        cells.insert(
            "published6 after its container went",
            s.client_in(&s.ext, None, "tcp", UPLINK6, 8080),
        );
        eprintln!("netpath docker log:\n{}", s.follower_log());
    }
    eprintln!("IPv6 {mode:?}: {cells:#?}");
    cells
}

#[test]
fn dockerd_26_1_ipv6_matrix_ip6tables_vs_netpath() {
    require_root!();
    if !harness::dockerd::available() {
        return;
    }
    let Some(engine) = harness::dockerd::engine_26() else {
        return;
    };
    let _heavy = harness::exclusive();
    let version = engine.version().unwrap_or_else(|e| panic!("{e:#}"));
    let ipt = matrix(Mode::Iptables, &engine);
    let np = matrix(Mode::Netpath, &engine);
    let masq = format!("ext {UPLINK6}");
    let from_ext = format!("web6 {EXT6}");
    let expect: &[(&str, &str, Option<&str>)] = &[
        ("egress6 tcp", &masq, None),
        ("egress6 udp", &masq, None),
        ("egress6 from the default bridge", &masq, None),
        ("published6 from external", &from_ext, None),
        ("published6 from host [::1]", "web6", None),
        ("published4 still from external", "web6 198.18.0.2", None),
        ("isolation6 a->b tcp", "blocked", None),
        ("isolation6 b->a udp", "blocked", None),
        ("icc=false6 tcp", "blocked", None),
        ("icc=false6 egress", &masq, None),
        ("internal6 egress", "blocked", None),
        (
            "direct routing6 to an unpublished container",
            "blocked",
            None,
        ),
        ("internal6 same network", "i2 fd00:34::2", None),
        // Docker's userland proxy answers traffic from its own bridges, so
        // the target sees its gateway; netpath keeps the client's address
        // (b6, a6).
        (
            "published6 from other network",
            "web6 fd00:31::1",
            Some("web6 fd00:32::2"),
        ),
        (
            "published6 from same network",
            "web6 fd00:31::1",
            Some("web6 fd00:31::3"),
        ),
        // Docker 26's ip6tables path lets a published container port be
        // reached at the container's own address; netpath's default gateway
        // mode (nat) refuses it, as Docker 28 does (and as for IPv4).
        (
            "direct routing6 to a published container port",
            &from_ext,
            Some("blocked"),
        ),
        // Docker masquerades whatever source of the subnet a container
        // uses; netpath binds each port to the address dockerd gave it.
        ("spoofed6 source", &masq, Some("blocked")),
        (
            "link-local of a container started later",
            "late6 answers",
            None,
        ),
    ];
    // Cells only netpath has (its own behaviour, no baseline).
    let only: &[(&str, &str)] = &[
        ("ports bound to their IPv6 address", "10 of 10"),
        ("spoofed6 source counted", "true"),
        ("published6 after its container went", "blocked"),
    ];
    judge(
        expect,
        only,
        &ipt,
        &np,
        "ip6tables",
        &format!("dockerd {version} IPv6"),
    );
}
