//! Foundation: `netpath up/down/status` against real namespaces and traffic.

use std::time::{Duration, Instant};

use crate::harness;

use harness::{
    Lab, NETPATH, Netns, addr, iface, lab_up, netpath, netpath_ok, snapshot, status, tc_programs,
    topology,
};

/// `ifname` runs exactly one netpath program each way: the one for `role`
/// (a bridge none at egress).
fn assert_netpath_attached(ns: &Netns, ifname: &str, role: &str) {
    for (ingress, dir) in [(true, "in"), (false, "eg")] {
        let want = format!("netpath_{role}_{dir}");
        let progs = tc_programs(ns, ifname, ingress);
        let ours: Vec<_> = progs
            .iter()
            .filter(|(_, n)| n.starts_with("netpath_"))
            .collect();
        let expected = usize::from(role != "br" || ingress);
        assert!(
            ours.len() == expected && ours.iter().all(|(_, n)| *n == want),
            "{ifname} {}: expected {expected} × {want}, kernel reports {progs:?}",
            if ingress { "ingress" } else { "egress" }
        );
    }
}

#[test]
fn up_attaches_to_bridge_ports_and_uplinks() {
    require_root!();
    let lab = lab_up();
    for (ifname, role) in [
        (Lab::BRIDGE, "br"),
        ("c1h", "port"),
        ("c2h", "port"),
        ("uplink0", "up"),
    ] {
        assert_netpath_attached(&lab.host, ifname, role);
    }
    // Bridge and ports run from netpath's TC filter (not the TCX fallback
    // for interfaces that refuse clsact), each direction its own program.
    for (ifname, dirs) in [
        (Lab::BRIDGE, &[("ingress", "netpath_br_in")][..]),
        (
            "c1h",
            &[
                ("ingress", "netpath_port_in"),
                ("egress", "netpath_port_eg"),
            ][..],
        ),
    ] {
        for (dir, want) in dirs {
            let out = lab
                .host
                .command("tc")
                .args(["filter", "show", "dev", ifname, dir])
                .output()
                .expect("tc");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("handle 0x6e70 {want} direct-action")),
                "{ifname} {dir}: {text}"
            );
        }
    }
    assert!(
        tc_programs(&lab.host, "lo", true).is_empty(),
        "loopback must not be attached"
    );
    let s = status(&lab.host);
    assert_eq!(iface(&s, Lab::BRIDGE)["role"], "bridge");
    assert_eq!(iface(&s, "c1h")["role"], "port");
    assert_eq!(iface(&s, "c1h")["network"], Lab::BRIDGE);
    assert_eq!(iface(&s, "uplink0")["role"], "uplink");
    // status reports the ids the kernel reports.
    let kernel_id = tc_programs(&lab.host, "c1h", true)[0].0;
    assert_eq!(iface(&s, "c1h")["ingress_prog_ids"][0], kernel_id);
    let net = &s["networks"][0];
    assert_eq!(net["bridge"], Lab::BRIDGE);
    assert_eq!(net["subnet"], Lab::SUBNET);
    assert_eq!(net["gateway"], Lab::GATEWAY);
    assert_eq!(net["created_bridge"], true);
    // The bridge got its gateway and forwarding is on, in the lab only.
    assert!(
        lab.host
            .ip(&["-o", "-4", "addr", "show", "dev", Lab::BRIDGE])
            .unwrap()
            .contains("172.30.0.1/24")
    );
    assert_eq!(snapshot(&lab.host).forwarding.trim(), "1");
}

#[test]
fn counters_move_with_real_traffic() {
    require_root!();
    let lab = lab_up();
    let before = status(&lab.host);
    let seen = topology::tcp_echo(
        &lab.ext,
        addr("0.0.0.0", 8000),
        &lab.c1,
        addr(Lab::EXT, 8000),
        &[7u8; 3000],
    )
    .unwrap();
    assert_eq!(
        seen.ip().to_string(),
        Lab::UPLINK,
        "masqueraded: the external side has no route to the subnet"
    );
    topology::udp_echo(
        &lab.c2,
        addr("0.0.0.0", 9000),
        &lab.c1,
        addr(Lab::C2, 9000),
        b"ping over the bridge",
    )
    .unwrap();
    let after = status(&lab.host);
    let pk = |s: &serde_json::Value, name: &str, dir: &str| {
        iface(s, name)[dir]["packets"].as_u64().unwrap()
    };
    let by = |s: &serde_json::Value, name: &str, dir: &str| {
        iface(s, name)[dir]["bytes"].as_u64().unwrap()
    };
    // c1 sent a SYN, 3000 bytes of data and more: at least 3 packets and the payload.
    assert!(pk(&after, "c1h", "ingress") >= pk(&before, "c1h", "ingress") + 3);
    assert!(by(&after, "c1h", "ingress") >= by(&before, "c1h", "ingress") + 3000);
    // ... which left through the uplink, and the UDP datagram reached c2.
    assert!(pk(&after, "uplink0", "egress") >= pk(&before, "uplink0", "egress") + 3);
    assert!(pk(&after, "c2h", "egress") > pk(&before, "c2h", "egress"));
    let net = |s: &serde_json::Value, k: &str| s["networks"][0][k]["packets"].as_u64().unwrap();
    assert!(net(&after, "from_containers") >= net(&before, "from_containers") + 4);
    assert!(net(&after, "to_containers") >= net(&before, "to_containers") + 4);
    topology::ping(&lab.c1, Lab::GATEWAY).unwrap();
}

#[test]
fn up_twice_changes_nothing() {
    require_root!();
    let lab = lab_up();
    let first = snapshot(&lab.host);
    let out = netpath_ok(
        &lab.host,
        &["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET],
    );
    assert!(out.contains("already up"), "{out}");
    assert_eq!(
        out.lines().count(),
        1,
        "a repeated up reports no changes: {out}"
    );
    assert_eq!(snapshot(&lab.host), first);
}

#[test]
fn down_leaves_no_attachment_or_pin() {
    require_root!();
    let lab = lab_up();
    let dir = harness::state_dir(&lab.host);
    assert!(std::path::Path::new(&dir).join("maps/NP_NETWORKS").exists());
    let out = netpath_ok(&lab.host, &["down", "--bridge", Lab::BRIDGE]);
    assert!(out.contains("bridge np0 deleted"), "{out}");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} still exists after the last down"
    );
    for ifname in harness::ifnames(&lab.host) {
        assert!(
            tc_programs(&lab.host, &ifname, true).is_empty(),
            "{ifname} ingress still attached"
        );
        assert!(
            tc_programs(&lab.host, &ifname, false).is_empty(),
            "{ifname} egress still attached"
        );
    }
    assert!(
        !harness::ifnames(&lab.host).contains(&Lab::BRIDGE.to_owned()),
        "netpath created np0, down deletes it"
    );
    let r = netpath(&lab.host, &["down", "--bridge", Lab::BRIDGE]);
    assert_ne!(r.code, 0, "second down must fail: nothing is up");
}

#[test]
fn down_keeps_a_bridge_that_existed_and_other_networks() {
    require_root!();
    let host = Netns::new("keep").unwrap().cleanup_with(NETPATH);
    host.ip(&["link", "add", "br-old", "type", "bridge"])
        .unwrap();
    netpath_ok(
        &host,
        &["up", "--bridge", "br-old", "--subnet", "10.31.0.0/16"],
    );
    netpath_ok(
        &host,
        &[
            "up",
            "--bridge",
            "br-new",
            "--subnet",
            "10.32.0.0/16",
            "--gateway",
            "10.32.0.254",
        ],
    );
    let s = status(&host);
    assert_eq!(s["networks"].as_array().unwrap().len(), 2);
    assert_netpath_attached(&host, "br-old", "br");
    assert_netpath_attached(&host, "br-new", "br");

    netpath_ok(&host, &["down", "--bridge", "br-old"]);
    let names = harness::ifnames(&host);
    assert!(
        names.contains(&"br-old".to_owned()),
        "a bridge that existed before up stays"
    );
    let addrs = host
        .ip(&["-o", "-4", "addr", "show", "dev", "br-old"])
        .unwrap();
    assert!(
        !addrs.contains("10.31.0.1"),
        "the gateway address netpath added is removed: {addrs}"
    );
    // The other network is untouched and still enforced.
    assert_netpath_attached(&host, "br-new", "br");
    let s = status(&host);
    assert_eq!(s["networks"].as_array().unwrap().len(), 1);
    assert_eq!(s["networks"][0]["gateway"], "10.32.0.254");

    netpath_ok(&host, &["down", "--bridge", "br-new"]);
    assert!(!harness::ifnames(&host).contains(&"br-new".to_owned()));
    for ifname in harness::ifnames(&host) {
        assert!(
            tc_programs(&host, &ifname, true).is_empty(),
            "{ifname} still attached"
        );
    }
}

#[test]
fn two_namespaces_do_not_interfere() {
    require_root!();
    let a = Netns::new("twa").unwrap().cleanup_with(NETPATH);
    let b = Netns::new("twb").unwrap().cleanup_with(NETPATH);
    // Same bridge name and subnet in both: only the namespace tells them apart.
    for ns in [&a, &b] {
        netpath_ok(
            ns,
            &["up", "--bridge", "docker0", "--subnet", "172.17.0.0/16"],
        );
    }
    let (da, db) = (harness::state_dir(&a), harness::state_dir(&b));
    assert_ne!(da, db, "each namespace has its own state");
    let b_before = snapshot(&b);
    netpath_ok(&a, &["down", "--bridge", "docker0"]);
    assert!(!std::path::Path::new(&da).exists());
    assert_eq!(
        snapshot(&b),
        b_before,
        "down in one namespace changed the other"
    );
    assert_netpath_attached(&b, "docker0", "br");
}

#[test]
fn works_when_started_with_nsenter() {
    require_root!();
    let ns = Netns::new("nse").unwrap().cleanup_with(NETPATH);
    let out = std::process::Command::new("nsenter")
        .env("NETPATH_CGROUP", ns.cgroup.as_ref().expect("test cgroup"))
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args([
            NETPATH,
            "up",
            "--bridge",
            "br-nse",
            "--subnet",
            "10.77.0.0/24",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --netns sees what nsenter created: same namespace, same state.
    let s = status(&ns);
    assert_eq!(s["networks"][0]["bridge"], "br-nse");
    assert_netpath_attached(&ns, "br-nse", "br");
}

/// Every bad input: exit 1, exactly one `netpath: error:` line, and the
/// namespace exactly as it was.
#[test]
fn bad_input_is_one_error_line_and_changes_nothing() {
    require_root!();
    let ns = Netns::new("bad").unwrap().cleanup_with(NETPATH);
    ns.ip(&[
        "link", "add", "vbad0", "type", "veth", "peer", "name", "vbad1",
    ])
    .unwrap();
    netpath_ok(
        &ns,
        &["up", "--bridge", "br-ok", "--subnet", "10.40.0.0/16"],
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["up", "--bridge", "br-x", "--subnet", "10.50.0.0/33"],
            "invalid subnet",
        ),
        (
            &["up", "--bridge", "br-x", "--subnet", "not-a-cidr"],
            "invalid subnet",
        ),
        (
            &[
                "up",
                "--bridge",
                "br-x",
                "--subnet",
                "10.50.0.0/16",
                "--gateway",
                "10.51.0.1",
            ],
            "outside subnet",
        ),
        (
            &["up", "--bridge", "br-x", "--subnet", "10.40.128.0/17"],
            "overlaps network br-ok",
        ),
        (
            &["up", "--bridge", "br-ok", "--subnet", "10.41.0.0/16"],
            "already up",
        ),
        (
            &["up", "--bridge", "vbad0", "--subnet", "10.60.0.0/16"],
            "not a bridge",
        ),
        (
            &[
                "up",
                "--bridge",
                "br-x",
                "--subnet",
                "10.60.0.0/16",
                "--uplink",
                "nosuch0",
            ],
            "does not exist",
        ),
        (
            &[
                "up",
                "--bridge",
                "this-name-is-too-long",
                "--subnet",
                "10.60.0.0/16",
            ],
            "interface name",
        ),
        (
            &["down", "--bridge", "br-none"],
            "no network on bridge br-none",
        ),
    ];
    for (args, want) in cases {
        let before = snapshot(&ns);
        let r = netpath(&ns, args);
        assert_eq!(r.code, 1, "{args:?} should fail: {r:?}");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: expected one error line, got {:?}",
            r.stderr
        );
        assert!(
            lines[0].starts_with("netpath: error: ") && lines[0].contains(want),
            "{args:?}: {:?} lacks {want:?}",
            lines[0]
        );
        assert!(r.stdout.is_empty(), "{args:?} printed {:?}", r.stdout);
        assert_eq!(snapshot(&ns), before, "{args:?} changed state");
    }
    // Usage errors: one line as well (exit 2, clap's convention).
    for args in [&["up", "--bridge", "br-x"][..], &["down"], &["frobnicate"]] {
        let before = snapshot(&ns);
        let r = netpath(&ns, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {:?}", r.stderr);
        assert!(
            r.stderr.starts_with("netpath: error: "),
            "{args:?}: {:?}",
            r.stderr
        );
        assert_eq!(snapshot(&ns), before, "{args:?} changed state");
    }
    // Not root: refused before touching anything.
    let before = snapshot(&ns);
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            NETPATH,
            "--netns",
            &ns.name,
        ])
        .args(["up", "--bridge", "br-y", "--subnet", "10.70.0.0/16"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("must run as root"), "{err}");
    assert_eq!(snapshot(&ns), before);
    // Namespace that does not exist.
    let r = std::process::Command::new(NETPATH)
        .args(["--netns", "np-no-such-ns", "status"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("network namespace np-no-such-ns not found")
    );
}

/// A newer build's `up` swaps the program in netpath's filter in place and
/// keeps the pinned maps with their contents; an earlier build's TCX link
/// is replaced by the filter. To get "another build's" program onto c1h's
/// ingress, the test puts the egress program there; `up` must put
/// netpath_port_in back, and counters must survive.
#[test]
fn up_replaces_programs_in_place_and_keeps_maps() {
    use aya::programs::{LinkOrder, TcAttachType, links::FdLink, tc::TcAttachOptions};
    use netpath::{
        attach::Datapath,
        state::{Dir, StateDir},
        tcfilter,
    };
    use netpath_common::IfaceRole;

    require_root!();
    // Without the daemon: it would repair the swapped program first (which
    // is fine, but this test is about what `up` does).
    let lab = harness::lab_up_with(Lab::new(NETPATH).unwrap(), &["--no-daemon"]);
    lab.tcp_out(&lab.c1, 8001).unwrap();
    let before = status(&lab.host);
    swap_c1h_ingress(&lab.host);
    let maps_before = lab
        .host
        .run(|| map_ids(&StateDir::current().unwrap()))
        .unwrap();
    assert_eq!(
        tc_programs(&lab.host, "c1h", true),
        vec![(
            tc_programs(&lab.host, "c1h", false)[0].0,
            "netpath_port_eg".to_owned()
        )],
        "test setup: foreign program in place"
    );
    let up = || {
        netpath_ok(
            &lab.host,
            &[
                "up",
                "--bridge",
                Lab::BRIDGE,
                "--subnet",
                Lab::SUBNET,
                "--no-daemon",
            ],
        )
    };
    let out = up();
    assert!(
        out.contains("c1h: port, ingress replaced by this build, egress unchanged"),
        "{out}"
    );
    let progs = tc_programs(&lab.host, "c1h", true);
    assert_eq!(progs.len(), 1, "{progs:?}");
    assert_eq!(progs[0].1, "netpath_port_in");
    let filters = lab
        .host
        .run(|| tcfilter::list(c1h_index(), Dir::Ingress).unwrap())
        .unwrap();
    assert!(
        filters.iter().filter(|f| f.is_ours()).count() == 1,
        "replaced in netpath's one filter: {filters:?}"
    );
    let maps_after = lab
        .host
        .run(|| map_ids(&StateDir::current().unwrap()))
        .unwrap();
    assert_eq!(maps_before, maps_after, "the pinned maps were reused");

    // An earlier build attached ports with pinned TCX links: `up` moves
    // the port to the filter and removes the link and its pin.
    let pin = lab
        .host
        .run(|| {
            let state = StateDir::current().unwrap();
            let mut dp = Datapath::load(&state).unwrap();
            assert!(tcfilter::remove(c1h_index(), Dir::Ingress).unwrap());
            let prog = dp.program(IfaceRole::Port, Dir::Ingress).unwrap();
            let id = prog
                .attach_with_options(
                    "c1h",
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .unwrap();
            let link: FdLink = prog.take_link(id).unwrap().try_into().unwrap();
            let pin = state.link_pin(c1h_index(), Dir::Ingress);
            link.pin(&pin).unwrap();
            pin
        })
        .unwrap();
    let old = tc_programs(&lab.host, "c1h", true);
    assert_eq!(old.len(), 1, "test setup: only the TCX link: {old:?}");
    let out = up();
    assert!(
        out.contains("c1h: port, ingress replaced by this build, egress unchanged"),
        "{out}"
    );
    let progs = tc_programs(&lab.host, "c1h", true);
    assert_eq!(progs.len(), 1, "the filter alone: {progs:?}");
    assert!(!pin.exists(), "the earlier build's link pin is gone");
    let filters = lab
        .host
        .run(|| tcfilter::list(c1h_index(), Dir::Ingress).unwrap())
        .unwrap();
    assert_eq!(
        filters.iter().find(|f| f.is_ours()).and_then(|f| f.prog_id),
        Some(progs[0].0),
        "the program runs from netpath's filter"
    );
    let after = status(&lab.host);
    assert_eq!(
        records(&after),
        records(&before),
        "network records survived"
    );
    // Traffic still flows through the port, counted on.
    lab.tcp_out(&lab.c1, 8001).unwrap();
    let later = status(&lab.host);
    assert!(
        iface(&later, "c1h")["ingress"]["packets"].as_u64()
            > iface(&before, "c1h")["ingress"]["packets"].as_u64(),
        "counters survived the upgrade and count on"
    );
}

/// Puts the port's egress program in c1h's ingress filter, as a foreign
/// `tc filter replace` would (a filter replaced, none removed: no event
/// the daemon re-applies for).
fn swap_c1h_ingress(host: &Netns) {
    use netpath::{
        attach::Datapath,
        state::{Dir, StateDir},
        tcfilter,
    };
    use netpath_common::IfaceRole;
    use std::os::fd::{AsFd as _, AsRawFd as _};
    host.run(|| {
        let state = StateDir::current().unwrap();
        let mut dp = Datapath::load(&state).unwrap();
        let prog = dp.program(IfaceRole::Port, Dir::Egress).unwrap();
        let fd = prog.fd().unwrap().as_fd().as_raw_fd();
        tcfilter::put(c1h_index(), Dir::Ingress, fd, "netpath_port_eg").unwrap();
    })
    .unwrap();
}

fn c1h_index() -> u32 {
    let name = std::ffi::CString::new("c1h").unwrap();
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

fn map_ids(state: &netpath::state::StateDir) -> Vec<u32> {
    netpath_common::map_names::ALL
        .iter()
        .map(|n| {
            aya::maps::MapData::from_pin(state.maps_dir().join(n))
                .unwrap()
                .info()
                .unwrap()
                .id()
        })
        .collect()
}

/// Network records without their (moving) counters.
fn records(status: &serde_json::Value) -> serde_json::Value {
    let mut nets = status["networks"].clone();
    for n in nets.as_array_mut().expect("networks array") {
        let obj = n.as_object_mut().expect("network object");
        for moving in ["from_containers", "to_containers", "drops"] {
            obj.remove(moving);
        }
    }
    nets
}

/// State can be re-applied: when the bridge disappears behind netpath's back,
/// the next `up` recreates it, with its gateway and attachments, and owns it.
#[test]
fn up_reapplies_after_the_bridge_was_deleted() {
    require_root!();
    let ns = Netns::new("reap").unwrap().cleanup_with(NETPATH);
    ns.ip(&["link", "add", "br-pre", "type", "bridge"]).unwrap();
    netpath_ok(
        &ns,
        &["up", "--bridge", "br-pre", "--subnet", "10.88.0.0/24"],
    );
    ns.ip(&["link", "del", "br-pre"]).unwrap();
    let out = netpath_ok(
        &ns,
        &["up", "--bridge", "br-pre", "--subnet", "10.88.0.0/24"],
    );
    assert!(
        out.contains("already up") && out.contains("bridge created"),
        "{out}"
    );
    assert_netpath_attached(&ns, "br-pre", "br");
    assert!(
        ns.ip(&["-o", "-4", "addr", "show", "dev", "br-pre"])
            .unwrap()
            .contains("10.88.0.1/24")
    );
    let s = status(&ns);
    assert_eq!(s["networks"][0]["created_bridge"], true);
    // The record follows the new ifindex.
    assert_eq!(
        s["networks"][0]["bridge_ifindex"],
        iface(&s, "br-pre")["ifindex"]
    );
    netpath_ok(&ns, &["down", "--bridge", "br-pre"]);
    assert!(
        !harness::ifnames(&ns).contains(&"br-pre".to_owned()),
        "netpath created it the second time, down deletes it"
    );
}

/// Concurrent invocations in one namespace are serialized: every `up`
/// lands, with its own network id, and every bridge is attached.
#[test]
fn parallel_ups_in_one_namespace_all_land() {
    require_root!();
    let ns = Netns::new("par").unwrap().cleanup_with(NETPATH);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let name = ns.name.clone();
            let cgroup = ns.cgroup.clone().expect("test cgroup");
            std::thread::spawn(move || {
                std::process::Command::new(NETPATH)
                    .env("NETPATH_CGROUP", &cgroup)
                    .args([
                        "--netns",
                        &name,
                        "up",
                        "--bridge",
                        &format!("br-p{i}"),
                        "--subnet",
                        &format!("10.90.{i}.0/24"),
                    ])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = status(&ns);
    let mut ids: Vec<u64> = s["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
    for i in 0..6 {
        assert_netpath_attached(&ns, &format!("br-p{i}"), "br");
    }
}

/// Each network namespace has its own lock: while one namespace's is held
/// (here by the test, as a long command would hold it), another
/// namespace's `up` goes ahead, and the first namespace's own commands
/// wait until it is given back.
#[test]
fn one_namespaces_lock_holds_up_its_own_commands_only() {
    require_root!();
    let a = lab_up();
    let cookie = status(&a.host)["netns_cookie"].as_u64().expect("a cookie");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/run/netpath/state-{cookie}.lock"))
        .expect("namespace a's lock file");
    lock.lock().expect("taking namespace a's lock");
    let spawn_up = |ns: &Netns| {
        ns.netpath(NETPATH)
            .args(["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("netpath up")
    };
    let wait = |child: &mut std::process::Child, within: Duration| {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(s) = child.try_wait().expect("waiting") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    };
    let b = Lab::new(NETPATH).expect("a second lab");
    // Its first up verifies the programs: seconds on a busy machine.
    let mut up_b = spawn_up(&b.host);
    let done = wait(&mut up_b, Duration::from_secs(60));
    let _ = up_b.kill();
    assert!(
        done.is_some_and(|s| s.success()),
        "b's up did not finish while a's lock was held: {done:?}"
    );
    let mut up_a = spawn_up(&a.host);
    let early = wait(&mut up_a, Duration::from_secs(1));
    assert!(
        early.is_none(),
        "a's up ran while a's lock was held: {early:?}"
    );
    drop(lock);
    let done = wait(&mut up_a, Duration::from_secs(30));
    let _ = up_a.kill();
    assert!(
        done.is_some_and(|s| s.success()),
        "a's up once its lock was free: {done:?}"
    );
}
