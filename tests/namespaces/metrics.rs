//! Prometheus metrics, checked by a real Prometheus: `up --metrics` makes
//! the daemon serve `/metrics` in the namespace (recorded, so a restarted
//! daemon serves again), `promtool` accepts the exposition, and after an
//! isolation drop a PromQL query over Prometheus's HTTP API returns the
//! drop counter with the value `status` shows.

use crate::harness;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use harness::{Lab, NETPATH, Netns, addr, lab_up_with, netpath_ok, status, topology};

const METRICS: &str = "127.0.0.1:9464";

/// `GET path` from `ns` to `to`: (status line and headers, body).
fn get(ns: &Netns, to: &str, path: &str) -> anyhow::Result<(String, String)> {
    let (to, path) = (to.to_owned(), path.to_owned());
    ns.run(move || -> anyhow::Result<(String, String)> {
        let mut s = TcpStream::connect(&to)?;
        s.set_read_timeout(Some(Duration::from_secs(25)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
        )?;
        let mut all = String::new();
        s.read_to_string(&mut all)?;
        let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
        Ok((head.to_owned(), body.to_owned()))
    })?
}

fn isolation_drops(ns: &Netns) -> u64 {
    status(ns)["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["bridge"] == Lab::BRIDGE)
        .and_then(|n| n["drops"]["drop_isolation"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_real_prometheus_scrapes_the_drop_counters() {
    require_root!();
    let lab = lab_up_with(Lab::new(NETPATH).unwrap(), &["--metrics", METRICS]);
    let s = status(&lab.host);
    assert_eq!(s["daemon"]["metrics"], METRICS, "{s}");
    netpath_ok(
        &lab.host,
        &["up", "--bridge", "np1", "--subnet", "172.31.0.0/24"],
    );
    // The address stays recorded: the daemon `up` replaced still serves.
    assert_eq!(status(&lab.host)["daemon"]["metrics"], METRICS);
    let c3 = Netns::new("c3").unwrap();
    netpath_ok(&lab.host, &["connect", c3.name.as_str(), "--bridge", "np1"]);
    for port in [7001, 7002] {
        let r = topology::tcp_echo(
            &c3,
            addr("0.0.0.0", port),
            &lab.c1,
            addr("172.31.0.2", port),
            b"x",
        );
        assert!(r.is_err(), "isolation let a connection through");
    }
    let want = isolation_drops(&lab.host);
    assert!(want >= 2, "{want}");

    // The exposition, as served; promtool accepts it.
    let (head, body) = get(&lab.host, METRICS, "/metrics").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let line = format!(
        "netpath_drop_packets_total{{network=\"{}\",reason=\"drop_isolation\"}} {want}",
        Lab::BRIDGE
    );
    assert!(body.contains(&line), "{line} missing:\n{body}");
    for name in [
        "netpath_forward_packets_total{",
        "netpath_conntrack_entries ",
        "netpath_conntrack_capacity 262144",
        "netpath_published_ports 0",
        "netpath_map_pressure{map=\"NP_CT4\"}",
        "netpath_interface_packets_total{direction=\"ingress\",interface=\"c1h\"}",
        "netpath_build_info{",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Clients that send nothing hold a connection slot for 5 s at most:
    // with more of them than slots, a scrape still gets through.
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| {
            lab.host
                .run(|| TcpStream::connect(METRICS))
                .unwrap()
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    let (head, _) = get(&lab.host, METRICS, "/metrics").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    drop(idle);
    // It listens where it was told only: not on the uplink's address.
    assert!(get(&lab.ext, &format!("{}:9464", Lab::UPLINK), "/metrics").is_err());
    assert!(
        get(&lab.host, METRICS, "/other")
            .unwrap()
            .0
            .starts_with("HTTP/1.1 404")
    );

    // A real Prometheus in the lab's host namespace scrapes it.
    let dir = std::env::temp_dir().join(format!("np-prom-{}", lab.host.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: netpath\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    // nsenter execs prometheus: the child's pid is Prometheus's.
    let _prom = topology::Process(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.host.name))
            .arg("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let query = "/api/v1/query?query=netpath_drop_packets_total%7Breason%3D%22drop_isolation%22%7D";
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        if let Ok((_, body)) = get(&lab.host, "127.0.0.1:9090", query)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && let Some(r) = v["data"]["result"].as_array().and_then(|r| r.first())
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the counter:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got["metric"]["network"], Lab::BRIDGE, "{got}");
    assert_eq!(got["metric"]["job"], "netpath");
    assert_eq!(got["value"][1], want.to_string(), "{got}");
    drop(_prom);
    let _ = std::fs::remove_dir_all(&dir);

    // An address the daemon cannot serve is an error, not a silence; the
    // network stays up.
    let r = harness::netpath(
        &lab.host,
        &[
            "up",
            "--bridge",
            Lab::BRIDGE,
            "--subnet",
            Lab::SUBNET,
            "--metrics",
            "10.9.9.9:9464",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(
        r.stderr.contains("does not serve metrics on 10.9.9.9:9464"),
        "{r:?}"
    );
    // The last `down` forgets the address.
    netpath_ok(&lab.host, &["down", "--all"]);
    let cookie = status(&lab.host)["netns_cookie"].as_u64().unwrap();
    assert!(!std::path::Path::new(&format!("/run/netpath/daemon-{cookie}.metrics")).exists());
}
