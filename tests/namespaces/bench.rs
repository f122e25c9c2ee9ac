//! `netpath bench --quick`: every arm runs every workload at least five
//! times, takes its own path (counters prove it), the daemon's cost is
//! measured, and the table and JSON come out. (Performance is measured by
//! the benchmark, never asserted here.)

use crate::harness;

use harness::NETPATH;

#[test]
fn quick_bench_runs_every_arm_and_proves_its_path() {
    require_root!();
    let _heavy = harness::exclusive();
    let out = std::env::temp_dir().join(format!("netpath-bench-test-{}", std::process::id()));
    let r = std::process::Command::new(NETPATH)
        .args(["bench", "--quick", "--out"])
        .arg(&out)
        .output()
        .expect("running netpath bench");
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    for want in [
        "| dnat conn/s |",
        "| snat conn/s |",
        "| dnat rr | p99",
        "| c2c rr | p50",
        "| c2c udp 64B |",
        "| dnat udp 64B one-way | received",
        "| dnat udp 64B replied | replied (pps)",
        "| dnat udp 64B replied | p99",
        "| v6 c2c rr | p50",
        "| v6 dnat rr | p99",
        "| v6 snat conn/s |",
        "netpath/iptables",
        "publish 1000 ports",
        "create 10 networks in one batch",
        "create 10 networks, one `netpath up` each",
        "**One more network**",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    let evidence = json["evidence"].as_array().unwrap();
    for arm in ["iptables", "netpath"] {
        let seen: Vec<u64> = evidence
            .iter()
            .filter(|e| e[0] == arm)
            .map(|e| e[3].as_u64().unwrap())
            .collect();
        assert!(
            !seen.is_empty() && seen.iter().all(|p| *p > 0),
            "{arm}: {evidence:?}"
        );
    }
    assert!(evidence.iter().any(|e| e[0] == "bare" && e[3] == 0));
    // IPv6 took each arm's path too (the counts are checked above).
    for what in [
        "ip6tables DNAT rule for 5001 packets",
        "ip6tables MASQUERADE for the subnet packets",
        "netpath published [::]:5001 packets to container (IPv6)",
        "bare: ip6tables nat rules (must be 0)",
    ] {
        assert!(
            evidence.iter().any(|e| e[2] == what),
            "{what}: {evidence:?}"
        );
    }
    let samples = json["samples"].as_array().unwrap();
    for arm in ["iptables", "netpath", "bare"] {
        let n = samples
            .iter()
            .filter(|s| s["arm"] == arm && s["workload"] == "dnat conn/s")
            .count();
        assert!(n >= 5, "{arm}: {n} samples");
    }
    // The daemon's rows: measured (a process's CPU time, so some), and the
    // bounded flood reached the table without evicting anything.
    let daemon = json["daemon"].as_array().unwrap();
    let rows: Vec<&str> = daemon
        .iter()
        .map(|d| d["workload"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["idle", "live flows", "SYN flood"]);
    for d in daemon {
        assert!(
            d["cpu_pct"].as_f64().unwrap() >= 0.0 && d["rss_kib"].as_u64().unwrap() > 0,
            "{d}"
        );
        assert_eq!(d["evicted"], 0, "{d}");
    }
    assert!(
        daemon[1]["load"].as_str().unwrap().starts_with("20"),
        "{}",
        daemon[1]
    );
    assert!(stdout.contains("**The daemon**"), "{stdout}");
    // A monitor's cost: both workloads, every repetition each way.
    let monitor = json["monitor"].as_array().unwrap();
    assert_eq!(monitor.len(), 2, "{monitor:?}");
    for m in monitor {
        assert_eq!(m["with"].as_array().unwrap().len(), 3, "{m}");
        assert_eq!(m["without"].as_array().unwrap().len(), 3, "{m}");
        assert!(
            m["with"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v.as_f64().unwrap() > 0.0),
            "{m}"
        );
    }
    assert!(stdout.contains("**A monitor attached**"), "{stdout}");
    // Memory per flow (quick mode measures no preload): the kernel's
    // figure for netpath's table, nf_conntrack's slab object.
    let ct = &json["conntrack_scale"];
    assert!(
        ct["netpath_memory"]["bytes_per_flow"].as_f64().unwrap() > 0.0,
        "{ct}"
    );
    assert!(stdout.contains("**Conntrack memory per flow**"), "{stdout}");
    // Startup: a new port's enforcement, the first up, a new network's,
    // an idempotent one.
    let startup = json["startup"].as_array().unwrap();
    assert_eq!(startup.len(), 4, "{startup:?}");
    assert!(
        startup[0]["what"]
            .as_str()
            .unwrap()
            .starts_with("a new port enforced"),
        "{startup:?}"
    );
    assert!(
        startup[0]["ms"].as_array().unwrap().len() >= 3,
        "{startup:?}"
    );
    for s in startup {
        let ms = s["ms"].as_array().unwrap();
        assert!(
            !ms.is_empty() && ms.iter().all(|v| v.as_f64().unwrap() > 0.0),
            "{s}"
        );
    }
    assert!(stdout.contains("**Startup**"), "{stdout}");
    // The CNI pair (the reference plugins are installed by xtask; under CI
    // their absence fails the test): both members, every measurement.
    let have_plugins = std::path::Path::new("/usr/lib/cni/portmap").is_file();
    assert!(
        have_plugins || std::env::var("CI").map_or(true, |v| v != "true"),
        "CI: /usr/lib/cni/portmap missing (containernetworking-plugins)"
    );
    if have_plugins {
        let cni = json["cni"].as_array().unwrap();
        for plugins in ["Reference", "Netpath"] {
            for (what, mappings) in [
                ("first add ms (network up)", 1),
                ("add ms", 1),
                ("del ms", 10),
                ("rr p50 us", 1),
                ("conn/s", 1),
            ] {
                let s = cni
                    .iter()
                    .find(|s| {
                        s["plugins"] == plugins && s["what"] == what && s["mappings"] == mappings
                    })
                    .unwrap_or_else(|| panic!("{plugins} {what} {mappings}: {cni:?}"));
                assert!(
                    s["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|v| v.as_f64().unwrap() > 0.0),
                    "{s}"
                );
            }
        }
        assert!(stdout.contains("**CNI pair**"), "{stdout}");
    }
    for svg in ["bench.svg", "control.svg"] {
        assert!(
            std::fs::read_to_string(out.join(svg))
                .unwrap()
                .starts_with("<svg"),
            "{svg}"
        );
    }
    // The control plane step by step: netpath's ups one by one.
    let steps = json["network_steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["arm"] == "netpath" && s["each_ms"].as_array().unwrap().len() == 10),
        "{steps:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
