//! The scenarios under podman, each standalone and chained: a published
//! port reachable from outside with the client's address kept, egress
//! masqueraded, two networks isolated, `podman rm` taking the mapping and
//! its flows, `stop`/`start` re-adding them, and a bad config failing
//! cleanly. podman falls back to its own cni-podman0 (iptables) on a
//! config it cannot read, so every case checks that the bridge it named
//! exists and that the nat table is empty.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    harness::{self, netpath_ok, topology::Process},
    stack::{EXT_IP, HOST_IP, Podman, SERVER, available},
};

/// A TCP exchange from the external namespace: the answer, or "" when
/// nothing answered.
fn from_ext(p: &Podman, ip: &str, port: u16) -> String {
    let dial = harness::addr(ip, port);
    p.ext
        .run(move || {
            let mut s = TcpStream::connect_timeout(&dial.into(), Duration::from_secs(3)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            s.write_all(b"hi").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .expect("thread")
        .unwrap_or_default()
}

/// The external namespace's server on port 7001 (stopped on drop).
fn ext_server(p: &Podman) -> Process {
    let script = p.dir.0.join("np/server.py");
    std::fs::write(&script, SERVER).unwrap();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", p.ext.name))
        .args(["python3", "-u"])
        .arg(&script)
        .arg("7001")
        .env("NAME", "ext")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("external server");
    let mut line = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"ready\n");
    Process(child)
}

/// Published ports of the host namespace, as (host port, container address).
fn ports(p: &Podman) -> Vec<(u64, String)> {
    let out = netpath_ok(&p.host, &["ports", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["host_port"].as_u64().unwrap(),
                m["container_ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Flows of the host namespace through a published port to `ip` (its
/// own flows out, masqueraded, time out as netfilter's would).
fn flows_of(p: &Podman, ip: &str) -> usize {
    harness::flows(&p.host)
        .iter()
        .filter(|f| f["nat"].as_str().is_some_and(|n| n.starts_with("dnat")))
        .filter(|f| f.to_string().contains(&format!("\"{ip}\"")))
        .count()
}

fn scenarios(chained: bool) {
    let _heavy = harness::exclusive();
    let p = Podman::new(if chained { "pc" } else { "ps" });
    let (b1, b2) = ("npc1", "npc2");
    p.network("net1", b1, "10.89.1.0/24", chained, "");
    p.network("net2", b2, "10.89.2.0/24", chained, "");
    let _ext = ext_server(&p);

    // Published, from outside, the client's address kept.
    p.run_ok("web", "net1", &["8080:80"]);
    p.assert_bridge(b1);
    p.assert_nat_empty();
    let web = p.ip_of("web");
    assert!(web.starts_with("10.89.1."), "web got {web}");
    assert_eq!(from_ext(&p, HOST_IP, 8080), format!("web {EXT_IP}"));
    assert_eq!(ports(&p), vec![(8080, web.clone())]);

    // Egress masqueraded to the uplink's address.
    assert_eq!(p.nc_from("web", EXT_IP, 7001), format!("ext {HOST_IP}"));

    // Two networks, isolated both ways; each still reaches the outside.
    // hostIP honoured: 8084 on the uplink's address only.
    let on_host = format!("{HOST_IP}:8084:80");
    p.run_ok("other", "net2", &["8082:80", &on_host]);
    p.assert_bridge(b2);
    let other = p.ip_of("other");
    assert!(other.starts_with("10.89.2."), "other got {other}");
    assert_eq!(p.nc_from("web", &other, 80), "", "net1 reached net2");
    assert_eq!(p.nc_from("other", &web, 80), "", "net2 reached net1");
    assert_eq!(p.nc_from("other", EXT_IP, 7001), format!("ext {HOST_IP}"));
    assert_eq!(from_ext(&p, HOST_IP, 8082), format!("other {EXT_IP}"));
    assert_eq!(from_ext(&p, HOST_IP, 8084), format!("other {EXT_IP}"));
    let bound = netpath_ok(&p.host, &["ports"]);
    assert!(bound.contains(&format!("{HOST_IP}:8084/tcp")), "{bound}");

    // stop takes the mapping away, start puts it back (a new address, maybe).
    p.ok(&["stop", "other"]);
    assert_eq!(ports(&p), vec![(8080, web.clone())]);
    assert_eq!(from_ext(&p, HOST_IP, 8082), "");
    p.ok(&["start", "other"]);
    p.wait_ready("other");
    let other = p.ip_of("other");
    assert_eq!(
        ports(&p),
        vec![
            (8080, web.clone()),
            (8082, other.clone()),
            (8084, other.clone())
        ]
    );
    assert_eq!(from_ext(&p, HOST_IP, 8082), format!("other {EXT_IP}"));

    // rm takes the mapping and its flows; the other container's stay.
    assert!(flows_of(&p, &web) > 0, "no flow of web to purge");
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    assert_eq!(
        ports(&p),
        vec![(8082, other.clone()), (8084, other.clone())]
    );
    assert_eq!(flows_of(&p, &web), 0, "web's flows outlived it");
    assert_eq!(from_ext(&p, HOST_IP, 8080), "");
    assert_eq!(from_ext(&p, HOST_IP, 8082), format!("other {EXT_IP}"));
    p.assert_nat_empty();

    // A config netpath refuses: podman run fails, nothing is left.
    p.network(
        "bad",
        "npc9",
        "10.89.9.0/24",
        chained,
        r#""gatewayMode":"open","#,
    );
    let before = harness::ifnames(&p.host);
    let out = p.run("broken", "bad", &["8090:80"]);
    assert!(
        !out.status.success(),
        "podman run on a bad config succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gatewayMode"),
        "podman's error does not say why: {err}"
    );
    let mut after = harness::ifnames(&p.host);
    // The chained bridge plugin made its bridge before netpath refused;
    // podman's DEL takes its veth, the bridge stays (as the reference
    // plugin leaves it).
    after.retain(|l| !(chained && l == "npc9"));
    assert_eq!(before, after, "a failed run left links behind");
    assert_eq!(
        ports(&p),
        vec![(8082, other.clone()), (8084, other.clone())]
    );
    let leases = std::fs::read_dir(p.dir.0.join("ipam/bad"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(leases, 0, "the failed run's address stayed reserved");
    p.assert_nat_empty();

    // Everything goes with the last container; netpath's records too.
    p.ok(&["rm", "-f", "-t", "0", "other"]);
    assert!(ports(&p).is_empty());
    let st = harness::status(&p.host);
    let bound = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["role"] == "port")
        .count();
    assert_eq!(bound, 0, "ports left: {st:#}");
}

#[test]
fn podman_standalone() {
    require_root!();
    if !available() {
        return;
    }
    scenarios(false);
}

#[test]
fn podman_chained_after_bridge() {
    require_root!();
    if !available() {
        return;
    }
    scenarios(true);
}
