//! Conntrack and NAT under pressure, with real traffic in namespaces: no
//! tuple shared with the host's own sockets (either order), a SYN flood the
//! sweeper keeps up with while established flows carry on, a sized and
//! visible table, the daemon's presence, a zero-loss lifecycle (up again,
//! kill -9 of the daemon, an in-place upgrade to other programs, a resize),
//! and strict input validation.

use crate::harness;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use harness::{
    Lab, NETPATH, Netns, addr, lab_up, lab_up_with, netpath, netpath_ok,
    packet::{self, TCP, frame},
    probe::Probe,
    raw, status, topology,
};

/// A TCP server in `ns` on `port` that keeps every connection and answers
/// each message with "<client address>:<port>".
fn who_server(ns: &Netns, port: u16, conns: usize) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(addr("0.0.0.0", port))?;
        let _ = tx.send(());
        let mut threads = Vec::new();
        for _ in 0..conns {
            let (mut s, peer) = l.accept()?;
            // A client that never closes fails the test instead of hanging it.
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(peer.to_string().as_bytes()).is_err() {
                        break;
                    }
                }
            }));
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(3))
        .expect("server ready");
    h
}

/// A TCP connection from `bind:port` (in `ns`) to `dial`.
fn connect_from(ns: &Netns, bind: &str, port: u16, dial: SocketAddrV4) -> TcpStream {
    let bind = addr(bind, port);
    ns.run(move || {
        let s = socket2_connect(bind, dial);
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
    .unwrap()
}

fn socket2_connect(bind: SocketAddrV4, dial: SocketAddrV4) -> TcpStream {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: socket/setsockopt/bind/connect on a socket this owns.
    unsafe {
        // CLOEXEC: a daemon some `netpath up` starts meanwhile (this test's
        // or another's in the same binary) must not inherit the socket and
        // keep the connection open after the test closes it.
        let fd = OwnedFd::from_raw_fd(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ));
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            4,
        );
        let (b, d) = (sin(bind), sin(dial));
        assert_eq!(
            libc::bind(fd.as_raw_fd(), (&raw const b).cast(), len),
            0,
            "bind {bind}"
        );
        assert_eq!(
            libc::connect(fd.as_raw_fd(), (&raw const d).cast(), len),
            0,
            "connect {bind} -> {dial}: {}",
            std::io::Error::last_os_error()
        );
        TcpStream::from(fd)
    }
}

/// Sends `msg` and returns what the `who_server` answered (the address it
/// saw), or the error.
fn ask(s: &mut TcpStream) -> Result<String, String> {
    s.write_all(b"who").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn host_and_container_flows_never_share_a_tuple_in_either_order() {
    require_root!();
    let lab = lab_up();
    let server = who_server(&lab.ext, 9000, 4);
    let dial = addr(Lab::EXT, 9000);
    // Host first: the host holds 198.18.0.1:45000 -> ext:9000; the
    // container's flow from the same port gets another.
    let mut host = connect_from(&lab.host, Lab::UPLINK, 45000, dial);
    assert_eq!(ask(&mut host).unwrap(), "198.18.0.1:45000");
    let mut c1 = connect_from(&lab.c1, Lab::C1, 45000, dial);
    let c1_seen = ask(&mut c1).unwrap();
    assert!(
        c1_seen.starts_with("198.18.0.1:") && c1_seen != "198.18.0.1:45000",
        "{c1_seen}"
    );
    assert_eq!(
        ask(&mut host).unwrap(),
        "198.18.0.1:45000",
        "the host keeps its connection"
    );
    // Container first: the container keeps its port; the host's later
    // connection from it is given another on the wire, and both work.
    let mut c2 = connect_from(&lab.c2, Lab::C2, 46000, dial);
    assert_eq!(ask(&mut c2).unwrap(), "198.18.0.1:46000");
    let mut host2 = connect_from(&lab.host, Lab::UPLINK, 46000, dial);
    let seen = ask(&mut host2).unwrap();
    assert!(
        seen.starts_with("198.18.0.1:") && seen != "198.18.0.1:46000",
        "{seen}"
    );
    assert_eq!(
        ask(&mut c2).unwrap(),
        "198.18.0.1:46000",
        "the container keeps its"
    );
    assert_eq!(
        ask(&mut c1).unwrap(),
        c1_seen,
        "the first container keeps its tuple"
    );
    drop((host, c1, c2, host2));
    server.join().unwrap().unwrap();
    let flows = harness::flows(&lab.host);
    assert!(
        flows.iter().any(|f| f["nat"] == "host-snat"),
        "the host's remapped flow shows: {flows:#?}"
    );

    // UDP, both orders.
    let echo = lab.ext.spawn(|| {
        let s = UdpSocket::bind("0.0.0.0:9001")?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            let (_, peer) = s.recv_from(&mut buf)?;
            s.send_to(peer.to_string().as_bytes(), peer)?;
        }
        Ok(())
    });
    let udp = |ns: &Netns, bind: &'static str, port: u16| -> UdpSocket {
        ns.run(move || {
            let s = UdpSocket::bind(addr(bind, port)).unwrap();
            s.connect(addr(Lab::EXT, 9001)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        })
        .unwrap()
    };
    let say = |s: &UdpSocket| -> String {
        s.send(b"who").unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).expect("an answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    std::thread::sleep(Duration::from_millis(100));
    let host_u = udp(&lab.host, Lab::UPLINK, 47000);
    assert_eq!(say(&host_u), "198.18.0.1:47000");
    let c1_u = udp(&lab.c1, Lab::C1, 47000);
    assert_ne!(say(&c1_u), "198.18.0.1:47000");
    assert_eq!(say(&host_u), "198.18.0.1:47000");
    let c2_u = udp(&lab.c2, Lab::C2, 47001);
    assert_eq!(say(&c2_u), "198.18.0.1:47001");
    let host_u2 = udp(&lab.host, Lab::UPLINK, 47001);
    assert_ne!(say(&host_u2), "198.18.0.1:47001");
    echo.join().unwrap().unwrap();
}

/// The daemon's CPU time (user + system), from /proc.
fn cpu_time(pid: i64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn daemon_pid(lab: &Lab) -> i64 {
    status(&lab.host)["daemon"]["pid"]
        .as_i64()
        .expect("a daemon runs")
}

/// A random-source flood at published ports (bounded: 6 s) of SYNs to a
/// listening port, SYNs to a closed one (reset by the container) and bare
/// ACKs (flows picked up mid-stream): none of them is ever established, so
/// the sweeper takes them first; the table never evicts, the daemon keeps
/// up at a modest cost (the real target is measured by `netpath bench`),
/// and flows in use, or idle, keep working during and after.
#[test]
fn a_syn_flood_is_swept_cheaply_while_established_flows_carry_on() {
    require_root!();
    let _heavy = harness::exclusive();
    let lab = lab_up();
    netpath_ok(&lab.host, &["publish", "8080", &format!("{}:80", Lab::C1)]);
    netpath_ok(&lab.host, &["publish", "8081", &format!("{}:81", Lab::C1)]);
    // An idle connection, used again after the flood.
    let server = who_server(&lab.ext, 9200, 1);
    let mut idle = connect_from(&lab.c2, Lab::C2, 42000, addr(Lab::EXT, 9200));
    assert_eq!(ask(&mut idle).unwrap(), "198.18.0.1:42000");
    let probe = Probe::start(&lab, 8080);
    let pid = daemon_pid(&lab);
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    let uplink_mac = raw::mac_of(&lab.host, "uplink0");
    let ext_mac = raw::mac_of(&lab.ext, "eth0");
    let flood = lab.ext.spawn(move || {
        // From 11.0.0.0/8 with varying ports: every one a new flow.
        let mut frames = Vec::with_capacity(4096);
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut n: u32 = 0;
        let mut sent = 0usize;
        while Instant::now() < deadline {
            frames.clear();
            for _ in 0..4096 {
                let src = Ipv4Addr::from(0x0b00_0000 + (n.wrapping_mul(2_654_435_761) >> 8));
                let uplink: Ipv4Addr = Lab::UPLINK.parse().unwrap();
                let sport = 1024 + (n % 60000) as u16;
                // SYN to 8080, SYN to 8081 (closed: reset), ACK to 8080.
                let (dport, flags) = [(8080, 0x02), (8081, 0x02), (8080, 0x10)][n as usize % 3];
                let syn = frame(
                    TCP,
                    src,
                    uplink,
                    &packet::tcp(src, uplink, sport, dport, flags, b""),
                    1,
                    0,
                );
                frames.push(raw::with_macs(syn, uplink_mac, ext_mac));
                n = n.wrapping_add(1);
            }
            sent += raw::send_here("eth0", &frames, 1);
        }
        Ok(sent)
    });
    // Asked while the flood fills the table: new flows keep coming during
    // status's own counting pass, and are no evictions.
    std::thread::sleep(Duration::from_secs(3));
    let mid = status(&lab.host);
    assert_eq!(
        mid["conntrack"]["evicted"], 0,
        "nothing evicted mid-flood: {}",
        mid["conntrack"]
    );
    let sent = flood.join().unwrap().unwrap();
    let during = t0.elapsed();
    let s = status(&lab.host);
    let ct = &s["conntrack"];
    eprintln!(
        "flood: {sent} SYNs in {during:?}; conntrack {ct}; daemon {}",
        s["daemon"]
    );
    assert!(ct["entries"].as_u64().unwrap() <= ct["capacity"].as_u64().unwrap());
    // Let the sweeper clear the flood's leftovers.
    std::thread::sleep(Duration::from_secs(3));
    probe.assert_unbroken(Duration::from_millis(1000), "a SYN flood");
    let cpu = cpu_time(pid) - cpu0;
    let wall = t0.elapsed();
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "daemon: {cpu:?} of CPU in {wall:?} ({:.1} % of a core) for {sent} SYNs",
        share * 100.0
    );
    // Generous: the benchmark measures the real figure.
    assert!(
        share < 0.25,
        "the daemon used {:.1} % of a core",
        share * 100.0
    );
    let s = status(&lab.host);
    assert!(
        s["conntrack"]["embryonic"].as_u64().unwrap() < 1000,
        "the flood's flows were swept: {}",
        s["conntrack"]
    );
    assert!(s["daemon"]["swept_flows"].as_u64().unwrap() > 1000);
    assert_eq!(s["conntrack"]["evicted"], 0, "no flow was evicted");
    assert_eq!(
        ask(&mut idle).unwrap(),
        "198.18.0.1:42000",
        "the idle flow lives"
    );
    drop(idle);
    server.join().unwrap().unwrap();
}

/// A table at its limit refuses new flows (counted) rather than evicting
/// an established one, and admits them again once the sweeper removed the
/// embryonic ones.
#[test]
fn a_full_table_refuses_new_flows_and_evicts_nothing() {
    require_root!();
    let _heavy = harness::exclusive();
    let lab = lab_up();
    netpath_ok(&lab.host, &["conntrack", "config", "--max", "1024"]);
    netpath_ok(&lab.host, &["publish", "8080", &format!("{}:80", Lab::C1)]);
    let server = who_server(&lab.ext, 9300, 2);
    let mut idle = connect_from(&lab.c2, Lab::C2, 43000, addr(Lab::EXT, 9300));
    assert_eq!(ask(&mut idle).unwrap(), "198.18.0.1:43000");
    let uplink_mac = raw::mac_of(&lab.host, "uplink0");
    let ext_mac = raw::mac_of(&lab.ext, "eth0");
    let uplink: Ipv4Addr = Lab::UPLINK.parse().unwrap();
    // 4000 SYNs in one burst: far more than the table admits, faster than
    // any sweep.
    let frames: Vec<Vec<u8>> = (0..4000u32)
        .map(|n| {
            let src = Ipv4Addr::from(0x0b00_0000 + n * 7);
            let l4 = packet::tcp(src, uplink, 2000 + n as u16, 8080, 0x02, b"");
            raw::with_macs(frame(TCP, src, uplink, &l4, 1, 0), uplink_mac, ext_mac)
        })
        .collect();
    assert_eq!(raw::send(&lab.ext, "eth0", frames, 1), 4000);
    let ct = status(&lab.host)["conntrack"].clone();
    assert!(ct["refused"].as_u64().unwrap() > 1000, "{ct}");
    assert_eq!(ct["evicted"], 0, "{ct}");
    assert_eq!(ct["max_flows"], 1024);
    assert!(ct["flows"].as_u64().unwrap() <= 1024, "{ct}");
    let s = status(&lab.host);
    assert!(
        s["networks"][0]["drops"]["drop_conntrack_full"]
            .as_u64()
            .unwrap()
            > 1000,
        "{s}"
    );
    assert_eq!(
        ask(&mut idle).unwrap(),
        "198.18.0.1:43000",
        "the idle flow lives"
    );
    // The sweeper takes the embryonic flows out; new flows pass again.
    std::thread::sleep(Duration::from_millis(2500));
    let mut fresh = connect_from(&lab.c1, Lab::C1, 43001, addr(Lab::EXT, 9300));
    assert_eq!(ask(&mut fresh).unwrap(), "198.18.0.1:43001");
    drop((idle, fresh));
    server.join().unwrap().unwrap();
}

#[test]
fn status_shows_the_table_the_daemon_and_live_flows() {
    require_root!();
    let lab = lab_up();
    let server = who_server(&lab.ext, 9100, 2);
    let mut a = connect_from(&lab.c1, Lab::C1, 41000, addr(Lab::EXT, 9100));
    let mut b = connect_from(&lab.c2, Lab::C2, 41001, addr(Lab::EXT, 9100));
    ask(&mut a).unwrap();
    ask(&mut b).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let s = status(&lab.host);
    let ct = &s["conntrack"];
    assert_eq!(ct["capacity"], netpath_common::ct::MAX_CT4);
    assert!(ct["flows"].as_u64().unwrap() >= 2, "{ct}");
    assert_eq!(ct["evicted"], 0);
    assert_eq!(
        s["networks"][0]["flows"].as_u64().unwrap(),
        ct["flows"].as_u64().unwrap()
    );
    let d = &s["daemon"];
    assert_eq!(d["running"], true);
    assert!(d["last_sweep_s_ago"].as_f64().unwrap() < 3.0, "{d}");
    let text = netpath_ok(&lab.host, &["status"]);
    assert!(text.contains("daemon: pid"), "{text}");
    assert!(text.contains("conntrack: "), "{text}");
    drop((a, b));
    server.join().unwrap().unwrap();

    // kill -9: status says so, loudly; a port plugged in meanwhile is not
    // managed, so its traffic is dropped, until a daemon runs again.
    let pid = d["pid"].as_i64().unwrap();
    // SAFETY: signalling the daemon this test's `up` started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    let s = status(&lab.host);
    assert_eq!(s["daemon"]["running"], false);
    let text = netpath_ok(&lab.host, &["status"]);
    assert!(text.contains("WARNING: no netpath daemon runs"), "{text}");
    let c3 = Netns::new("c3").unwrap();
    topology::veth(&lab.host, "c3h", &c3, "eth0").unwrap();
    c3.ip(&["addr", "add", "172.30.0.4/24", "dev", "eth0"])
        .unwrap();
    c3.ip(&["route", "add", "default", "via", Lab::GATEWAY])
        .unwrap();
    lab.host
        .ip(&["link", "set", "c3h", "master", Lab::BRIDGE])
        .unwrap();
    assert!(
        topology::ping(&c3, Lab::GATEWAY).is_err(),
        "an unmanaged port reaches the host"
    );
    assert!(
        topology::ping(&c3, Lab::C1).is_err(),
        "an unmanaged port reaches a container"
    );
    let s = status(&lab.host);
    assert!(
        s["networks"][0]["drops"]["drop_unmanaged_port"]
            .as_u64()
            .unwrap()
            > 0,
        "{s}"
    );
    netpath_ok(
        &lab.host,
        &["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET],
    );
    std::thread::sleep(Duration::from_millis(300));
    topology::ping(&c3, Lab::GATEWAY).unwrap();
    assert_eq!(status(&lab.host)["daemon"]["running"], true);
}

fn variant_object() -> Option<String> {
    match std::env::var("NETPATH_TEST_VARIANT_OBJECT") {
        Ok(p) if std::path::Path::new(&p).exists() => Some(p),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: NETPATH_TEST_VARIANT_OBJECT is not set (cargo xtask test builds it)"
            );
            eprintln!("SKIP: no variant eBPF object (cargo xtask test builds one)");
            None
        }
    }
}

/// `netpath up` with the variant programs (`NETPATH_EBPF_OBJECT`).
fn up_with(lab: &Lab, object: Option<&str>) -> String {
    let mut cmd = lab.host.netpath(NETPATH);
    cmd.args(["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET]);
    if let Some(o) = object {
        cmd.env("NETPATH_EBPF_OBJECT", o);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every lifecycle event with live traffic: no connection breaks and no
/// flow waits more than 100 ms for an answer.
#[test]
fn lifecycle_events_lose_nothing_under_live_traffic() {
    require_root!();
    let _heavy = harness::exclusive();
    let Some(variant) = variant_object() else {
        return;
    };
    let lab = lab_up();
    netpath_ok(&lab.host, &["publish", "8080", &format!("{}:80", Lab::C1)]);
    let limit = Duration::from_millis(100);

    let probe = Probe::start(&lab, 8080);
    up_with(&lab, None);
    probe.assert_unbroken(limit, "up re-run");

    let probe = Probe::start(&lab, 8080);
    let pid = daemon_pid(&lab);
    // SAFETY: signalling the daemon this test's `up` started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    let out = up_with(&lab, None);
    assert!(out.contains("daemon started"), "{out}");
    probe.assert_unbroken(limit, "kill -9 of the daemon and its restart");

    let probe = Probe::start(&lab, 8080);
    let out = up_with(&lab, Some(&variant));
    assert!(
        out.contains("c1h: port, ingress replaced by this build"),
        "{out}"
    );
    assert!(out.contains("daemon of another build replaced"), "{out}");
    let out = up_with(&lab, None);
    assert!(out.contains("replaced by this build"), "{out}");
    probe.assert_unbroken(limit, "an in-place upgrade to other programs and back");

    let probe = Probe::start(&lab, 8080);
    let out = netpath_ok(&lab.host, &["conntrack", "config", "--max", "4096"]);
    assert!(out.contains("max-flows=4096 (was 114688)"), "{out}");
    probe.assert_unbroken(limit, "a conntrack resize");
    let ct = &status(&lab.host)["conntrack"];
    assert_eq!(ct["max_flows"], 4096);
    assert_eq!(ct["capacity"], netpath_common::ct::fill::capacity_for(4096));
    // The flows carried over: a new probe's flows work too, and the old
    // table is gone.
    let probe = Probe::start(&lab, 8080);
    std::thread::sleep(Duration::from_millis(500));
    probe.assert_unbroken(limit, "after the resize");
}

/// A container's packet whose IPv4 total length says more than its frame
/// holds, or less than its header, never leaves (the fast path used to
/// forward one): dropped at its port and counted.
#[test]
fn packets_whose_length_lies_never_leave() {
    require_root!();
    let lab = lab_up();
    // A real packet first: the binding is learned, the neighbours known.
    topology::ping(&lab.c1, Lab::EXT).unwrap();
    let (c1, ext): (Ipv4Addr, Ipv4Addr) = (Lab::C1.parse().unwrap(), Lab::EXT.parse().unwrap());
    let (c1_mac, gw_mac) = (
        raw::mac_of(&lab.c1, "eth0"),
        raw::mac_of(&lab.host, Lab::BRIDGE),
    );
    let good = raw::with_macs(
        frame(
            packet::UDP,
            c1,
            ext,
            &packet::udp(c1, ext, 5555, 9999, b"x", true),
            1,
            0,
        ),
        gw_mac,
        c1_mac,
    );
    let with_len = |n: u16| {
        let mut f = good.clone();
        f[packet::ETH + 2..packet::ETH + 4].copy_from_slice(&n.to_be_bytes());
        f
    };
    let cap = raw::capture(&lab.ext, "eth0", Duration::from_millis(800), |f| {
        f.len() > 40
            && f[12..14] == [8, 0]
            && f[23] == packet::UDP
            && f[36..38] == 9999u16.to_be_bytes()
    });
    raw::send(&lab.c1, "eth0", vec![with_len(1000), with_len(10)], 3);
    assert!(cap.join().unwrap().unwrap().is_empty(), "nothing left");
    let s = status(&lab.host);
    assert_eq!(s["networks"][0]["drops"]["drop_malformed"], 6, "{s}");
    // The same packet with its true length does leave.
    let cap = raw::capture(&lab.ext, "eth0", Duration::from_millis(800), |f| {
        f.len() > 40
            && f[12..14] == [8, 0]
            && f[23] == packet::UDP
            && f[36..38] == 9999u16.to_be_bytes()
    });
    raw::send(&lab.c1, "eth0", vec![good], 1);
    assert_eq!(cap.join().unwrap().unwrap().len(), 1);
}

/// A resize killed half-way (its old table still pinned aside, a new one
/// pinned) is finished by the next command that takes the lock: the flows
/// are copied, every link moves to the new table, the old one goes.
#[test]
fn an_interrupted_resize_is_finished_by_the_next_up() {
    require_root!();
    let lab = lab_up();
    let server = who_server(&lab.ext, 9400, 1);
    let mut idle = connect_from(&lab.c1, Lab::C1, 44000, addr(Lab::EXT, 9400));
    assert_eq!(ask(&mut idle).unwrap(), "198.18.0.1:44000");
    let maps =
        std::path::PathBuf::from(status(&lab.host)["state_dir"].as_str().unwrap()).join("maps");
    // The daemon would finish the resize itself the next time it re-applies
    // (a link event): it goes first, killed as a crash would, so that the
    // next `up` is the command that finds the leftovers.
    let pid = daemon_pid(&lab);
    // SAFETY: signalling the daemon this test's `up` started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let gone = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}/stat")).exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    // What a resize killed after its new table was made leaves behind: the
    // old table aside, a new empty one pinned (here made by a command that
    // opens the maps).
    std::fs::rename(maps.join("NP_CT4"), maps.join("NP_CT4_old")).unwrap();
    netpath_ok(&lab.host, &["conntrack", "list"]);
    assert!(maps.join("NP_CT4").exists() && maps.join("NP_CT4_old").exists());
    netpath_ok(
        &lab.host,
        &["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET],
    );
    assert!(!maps.join("NP_CT4_old").exists(), "the old table went");
    let flows = harness::flows(&lab.host);
    assert!(
        flows.iter().any(|f| f["original"]["sport"] == 44000),
        "the flow was copied: {flows:#?}"
    );
    assert_eq!(
        ask(&mut idle).unwrap(),
        "198.18.0.1:44000",
        "and it still works"
    );
    drop(idle);
    server.join().unwrap().unwrap();
}

#[test]
fn bad_input_is_one_line_exit_1_and_changes_nothing() {
    require_root!();
    let lab = lab_up();
    // A second host interface with an address (a veth: this kernel has no
    // dummy driver).
    lab.host
        .ip(&[
            "link", "add", "side0", "type", "veth", "peer", "name", "side1",
        ])
        .unwrap();
    lab.host
        .ip(&["addr", "add", "10.77.0.1/16", "dev", "side0"])
        .unwrap();
    // The daemon reacts to the new interface (an uplink now): let it
    // attach there and settle first (10 s at most; a loaded machine may
    // take a while to run it).
    let mut last = harness::snapshot(&lab.host);
    for _ in 0..33 {
        std::thread::sleep(Duration::from_millis(300));
        let now = harness::snapshot(&lab.host);
        let attached = now
            .tc
            .get("side0")
            .is_some_and(|(i, e)| !i.is_empty() && !e.is_empty());
        if attached && now == last {
            break;
        }
        last = now;
    }
    let cases: &[(&[&str], &str)] = &[
        (&["publish", "8081", "172.30.0.255:80"], "broadcast address"),
        (
            &["publish", "8082", "172.30.0.0:80"],
            "network or broadcast",
        ),
        (
            &["publish", "255.255.255.255:8083", "172.30.0.2:80"],
            "not a unicast",
        ),
        (
            &["publish", "224.0.0.1:8084", "172.30.0.2:80"],
            "not a unicast",
        ),
        (
            &["publish", "10.1.1.1:8085", "172.30.0.2:80"],
            "has no address 10.1.1.1",
        ),
        (
            &["publish", "172.30.0.3:22", "172.30.0.2:22"],
            "not an address of the host",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "0.0.0.0/0"],
            "overlaps 0.0.0.0/8",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "127.0.0.0/8"],
            "loopback",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "240.0.0.0/24"],
            "reserved",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "255.255.255.0/24"],
            "reserved",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "224.0.0.0/24"],
            "multicast",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "198.18.0.0/24"],
            "overlaps uplink0's address",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "10.77.3.0/24"],
            "overlaps side0's address",
        ),
        (&["conntrack", "config", "--max", "10"], "invalid value"),
        (&["conntrack", "flush", "--src", "0.0.0.0"], "names no flow"),
        (&["conntrack", "flush", "--proto", "0"], "invalid protocol"),
        (&["conntrack", "flush", "--port", "0"], "invalid value"),
        (
            &["conntrack", "config", "--timeout", "udp=+5"],
            "invalid timeout",
        ),
        (
            &["filter", "add", "--to", "0.0.0.0", "deny"],
            "not a container's address",
        ),
        (
            &["up", "--bridge", "np9", "--subnet", "169.254.0.0/24"],
            "link-local",
        ),
    ];
    for (args, want) in cases {
        let before = (
            netpath_ok(&lab.host, &["ports", "--json"]),
            harness::snapshot(&lab.host),
        );
        let r = netpath(&lab.host, args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
        assert_eq!(
            (
                netpath_ok(&lab.host, &["ports", "--json"]),
                harness::snapshot(&lab.host)
            ),
            before,
            "{args:?} changed something"
        );
    }
    // The host's own addresses and a gateway are fine.
    netpath_ok(&lab.host, &["publish", "198.18.0.1:8086", "172.30.0.2:80"]);
    netpath_ok(&lab.host, &["publish", "172.30.0.1:8087", "172.30.0.2:80"]);
    netpath_ok(&lab.host, &["publish", "127.0.0.1:8088", "172.30.0.2:80"]);
    // Output into a closed pipe ends quietly.
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "NETPATH_CGROUP= {NETPATH} --netns {} ports | head -1; {NETPATH} --netns {} status | head -1",
                lab.host.name, lab.host.name
            ),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

/// An address that an uplink gains inside a managed subnet is reported:
/// in the daemon's log and in `status`.
#[test]
fn an_uplink_address_inside_a_managed_subnet_is_warned_about() {
    require_root!();
    let lab = lab_up_with(Lab::new(NETPATH).unwrap(), &[]);
    lab.host
        .ip(&["addr", "add", "172.30.0.200/24", "dev", "uplink0"])
        .unwrap();
    // The daemon warns when it sees the address (polled: a loaded machine
    // may take a while to run it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let overlap = "subnet 172.30.0.0/24 of np0 overlaps uplink0";
    loop {
        let cookie = status(&lab.host)["netns_cookie"].as_u64().unwrap();
        let log = std::fs::read_to_string(format!("/run/netpath/daemon-{cookie}.log"))
            .unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains(overlap))
            || std::time::Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = status(&lab.host);
    let w = s["warnings"].as_array().unwrap();
    assert!(
        w.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("uplink0's address 172.30.0.200/24")),
        "{s}"
    );
    let cookie = s["netns_cookie"].as_u64().unwrap();
    let log = std::fs::read_to_string(format!("/run/netpath/daemon-{cookie}.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(" WARN ")
                && l.contains("subnet 172.30.0.0/24 of np0 overlaps uplink0")),
        "{log}"
    );
}
