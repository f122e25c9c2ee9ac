//! The plugin driven by hand, as a runtime would (CNI_* variables, the
//! config on stdin): VERSION, CHECK, DEL twice and with the namespace
//! gone, and every bad input as a spec-shaped error on stdout with exit 1
//! and nothing changed.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use crate::{
    harness::{self, NETPATH, Netns, netpath, netpath_ok},
    stack::{HOST_IP, TempDir},
};

struct Out {
    code: i32,
    json: serde_json::Value,
    stdout: String,
}

/// Runs the plugin in `host` with `command` and `config`.
fn plugin(host: &Netns, command: &str, config: &str, env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", host.name))
        .arg(NETPATH)
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .env_remove("NETPATH_CGROUP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawning the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Out {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stdout,
    }
}

fn config(
    name: &str,
    bridge: &str,
    subnet: &str,
    cgroup: &Path,
    ipam_dir: &Path,
    extra: &str,
) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","type":"netpath","bridge":"{bridge}","cgroup":"{}",{extra}
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"dataDir":"{}"}},
            "runtimeConfig":{{"portMappings":[{{"hostPort":8080,"containerPort":80,"protocol":"tcp"}},
                                               {{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"{HOST_IP}"}}]}}}}"#,
        cgroup.display(),
        ipam_dir.display()
    )
}

/// Links, addresses and routes of `ns`, and whether netpath has state.
fn world(ns: &Netns) -> (String, String, String, bool) {
    (
        harness::links(ns),
        ns.ip(&["-o", "-4", "addr", "show"]).unwrap(),
        ns.ip(&["-4", "route", "show"]).unwrap(),
        netpath(ns, &["ports"]).code == 0,
    )
}

fn assert_error(o: &Out, code: u64, says: &str) {
    assert_eq!(o.code, 1, "exit code, stdout {}", o.stdout);
    assert_eq!(o.json["cniVersion"], "1.0.0", "{}", o.stdout);
    assert_eq!(o.json["code"], code, "{}", o.stdout);
    let text = format!("{} {}", o.json["msg"], o.json["details"]);
    assert!(text.contains(says), "{text:?} does not say {says:?}");
}

fn ipam_leases(dir: &Path) -> usize {
    walk_count(dir)
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() {
                    walk_count(&e.path())
                } else {
                    usize::from(name.starts_with("10."))
                }
            })
            .sum()
    })
}

#[test]
fn plugin_by_hand_add_check_del_and_bad_input() {
    require_root!();
    if !Path::new("/usr/lib/cni/host-local").exists() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "host-local missing, CI=true"
        );
        eprintln!("SKIP: containernetworking-plugins not installed");
        return;
    }
    let (host, _ext) = harness::Lab::host_and_ext("cp", "cpx", NETPATH, "up0").unwrap();
    let c1 = Netns::new("cpc").unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!("np-cni-{}", host.name)));
    let ipam = dir.0.join("ipam");
    let cg = host.cgroup.clone().expect("test cgroup");
    let good = config("n1", "npk1", "10.91.0.0/24", &cg, &ipam, "");
    let c1_path = format!("/run/netns/{}", c1.name);
    fn env(ns: &str) -> Vec<(&'static str, &str)> {
        vec![
            ("CNI_CONTAINERID", "c0ffee01"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ns),
        ]
    }

    // VERSION.
    let v = plugin(&host, "VERSION", r#"{"cniVersion":"1.0.0"}"#, &[]);
    assert_eq!(v.code, 0);
    assert_eq!(v.json["supportedVersions"], serde_json::json!(["1.0.0"]));

    // Bad input: each a spec error, exit 1, nothing changed.
    let before = world(&host);
    assert!(!before.3, "netpath state before any ADD");
    assert_error(
        &plugin(&host, "ADD", "{not json", &env(&c1_path)),
        6,
        "not JSON",
    );
    assert_error(
        &plugin(
            &host,
            "ADD",
            &good.replace("1.0.0", "0.3.1"),
            &env(&c1_path),
        ),
        1,
        "0.3.1",
    );
    assert_error(
        &plugin(
            &host,
            "ADD",
            &good,
            &[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")],
        ),
        4,
        "CNI_NETNS",
    );
    assert_error(
        &plugin(&host, "ADD", &good, &env("/run/netns/np-none-such")),
        3,
        "not found",
    );
    assert_error(
        &plugin(
            &host,
            "ADD",
            &good.replace("host-local", "no-such-ipam"),
            &env(&c1_path),
        ),
        7,
        "no-such-ipam",
    );
    // A subnet on top of the uplink's: IPAM hands out an address, up
    // refuses the network, the address goes back.
    let overlap = config("n9", "npk9", "198.18.0.0/24", &cg, &ipam, "");
    assert_error(
        &plugin(&host, "ADD", &overlap, &env(&c1_path)),
        100,
        "198.18.0",
    );
    assert_eq!(
        world(&host),
        before,
        "a failed ADD changed the host namespace"
    );
    assert_eq!(ipam_leases(&ipam), 0, "a failed ADD kept its IPAM address");
    assert!(
        c1.ip(&["-o", "link", "show"]).unwrap().lines().count() == 1,
        "a veth was left in c1"
    );
    assert_error(&plugin(&host, "FROB", &good, &env(&c1_path)), 4, "FROB");

    // ADD: the result, the port bound, the mappings there.
    let add = plugin(&host, "ADD", &good, &env(&c1_path));
    assert_eq!(add.code, 0, "ADD: {}", add.stdout);
    let r = &add.json;
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0]["name"], "npk1");
    assert_eq!(r["interfaces"][2]["name"], "eth0");
    assert_eq!(r["interfaces"][2]["sandbox"], c1_path.as_str());
    assert_eq!(r["ips"][0]["gateway"], "10.91.0.1");
    assert_eq!(r["ips"][0]["interface"], 2);
    let addr = r["ips"][0]["address"].as_str().unwrap().to_owned();
    let ip = addr.split('/').next().unwrap().to_owned();
    assert!(
        c1.ip(&["-o", "-4", "addr", "show", "eth0"])
            .unwrap()
            .contains(&addr)
    );
    assert!(
        c1.ip(&["route", "show", "default"])
            .unwrap()
            .contains("via 10.91.0.1")
    );
    let ports = netpath_ok(&host, &["ports"]);
    assert!(
        ports.contains("0.0.0.0:8080/tcp") && ports.contains(&format!("{ip}:80 ")),
        "{ports}"
    );
    assert!(ports.contains(&format!("{HOST_IP}:5353/udp")), "{ports}");
    let st = harness::status(&host);
    let port = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["role"] == "port")
        .expect("a port");
    assert_eq!(port["address"], ip.as_str(), "{port:#}");

    // Red-team regressions: each refused, and c1's attachment untouched.
    let intact = |what: &str| {
        let ports = netpath_ok(&host, &["ports"]);
        assert!(ports.contains("0.0.0.0:8080/tcp"), "{what}: {ports}");
        let st = harness::status(&host);
        assert!(
            st["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["role"] == "port"
                    && i["address"] == ip.as_str()
                    && i["binding"].is_string()),
            "{what}: {st:#}"
        );
        assert!(
            c1.ip(&["-o", "-4", "addr", "show", "eth0"])
                .unwrap()
                .contains(&addr),
            "{what}"
        );
    };
    // An ADD again without a DEL.
    assert_error(
        &plugin(&host, "ADD", &good, &env(&c1_path)),
        100,
        "DEL it first",
    );
    intact("ADD again");
    // Another config on the same bridge with other options.
    let other_opts = config(
        "n1b",
        "npk1",
        "10.91.0.0/24",
        &cg,
        &ipam,
        r#""ipMasq":false,"#,
    );
    let c9 = harness::Netns::new("cni-c9").unwrap();
    let c9_path = format!("/run/netns/{}", c9.name);
    assert_error(
        &plugin(&host, "ADD", &other_opts, &env(&c9_path)),
        100,
        "other options",
    );
    intact("other options");
    assert_eq!(harness::status(&host)["networks"][0]["masquerade"], true);
    // A chained ADD whose prevResult claims c1's address for another
    // namespace.
    let forged = format!(
        r#"{{"cniVersion":"1.0.0","name":"n1","type":"netpath","chained":true,"cgroup":"{}",
            "prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"npk1"}},
              {{"name":"eth0","mac":"02:42:0a:5b:00:99","sandbox":"{c9_path}"}}],
              "ips":[{{"address":"{addr}","gateway":"10.91.0.1","interface":1}}]}}}}"#,
        cg.display()
    );
    let forged_env = vec![
        ("CNI_CONTAINERID", "evil"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", c9_path.as_str()),
    ];
    assert_error(
        &plugin(&host, "ADD", &forged, &forged_env),
        100,
        "bound to another container",
    );
    intact("forged prevResult");
    // A network name that is no name.
    assert_error(
        &plugin(
            &host,
            "ADD",
            &good.replace(r#""name":"n1""#, r#""name":"..""#),
            &env(&c9_path),
        ),
        7,
        "network name",
    );

    // CHECK passes, then fails once a mapping is gone.
    let prev = format!(r#""prevResult":{},"#, add.stdout.trim());
    let checked = config("n1", "npk1", "10.91.0.0/24", &cg, &ipam, &prev);
    let ok = plugin(&host, "CHECK", &checked, &env(&c1_path));
    assert_eq!(ok.code, 0, "CHECK: {}", ok.stdout);
    netpath_ok(&host, &["unpublish", "8080"]);
    assert_error(
        &plugin(&host, "CHECK", &checked, &env(&c1_path)),
        102,
        "8080",
    );

    // IPAM exhausted: its error passed on, nothing made.
    let one = config("n3", "npk3", "10.93.0.0/24", &cg, &ipam, "").replace(
        r#"{"subnet":"10.93.0.0/24"}"#,
        r#"{"subnet":"10.93.0.0/24","rangeStart":"10.93.0.2","rangeEnd":"10.93.0.2"}"#,
    );
    let one = one.replace("8080", "8083").replace("5353", "5355");
    let (c3, c4) = (Netns::new("cpe").unwrap(), Netns::new("cpf").unwrap());
    let (c3_path, c4_path) = (
        format!("/run/netns/{}", c3.name),
        format!("/run/netns/{}", c4.name),
    );
    let env3 = vec![
        ("CNI_CONTAINERID", "c0ffee03"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", c3_path.as_str()),
    ];
    let env4 = vec![
        ("CNI_CONTAINERID", "c0ffee04"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", c4_path.as_str()),
    ];
    assert_eq!(plugin(&host, "ADD", &one, &env3).code, 0);
    let (links, ports) = (harness::links(&host), netpath_ok(&host, &["ports"]));
    let full = plugin(&host, "ADD", &one, &env4);
    assert_eq!(full.code, 1, "ADD with IPAM exhausted: {}", full.stdout);
    assert!(full.json["code"].as_u64().is_some(), "{}", full.stdout);
    assert!(
        full.stdout.contains("10.93.0"),
        "host-local's error: {}",
        full.stdout
    );
    assert_eq!(harness::links(&host), links, "links changed");
    assert_eq!(netpath_ok(&host, &["ports"]), ports, "mappings changed");
    assert_eq!(
        c4.ip(&["-o", "link", "show"]).unwrap().lines().count(),
        1,
        "a veth in c4"
    );
    assert_eq!(plugin(&host, "DEL", &one, &env4).code, 0);
    assert_eq!(plugin(&host, "DEL", &one, &env3).code, 0);

    // A second network, isolated; its DEL leaves the first alone.
    let c2 = Netns::new("cpd").unwrap();
    let c2_path = format!("/run/netns/{}", c2.name);
    let other = config("n2", "npk2", "10.92.0.0/24", &cg, &ipam, "")
        .replace("8080", "8081")
        .replace("5353", "5354");
    let env2 = vec![
        ("CNI_CONTAINERID", "c0ffee02"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", c2_path.as_str()),
    ];
    assert_eq!(plugin(&host, "ADD", &other, &env2).code, 0);
    let ip2 = c2.ip(&["-o", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(ip2.contains("10.92.0."), "{ip2}");
    assert!(
        harness::topology::ping(&c1, "10.92.0.2").is_err(),
        "n1 reached n2"
    );
    assert!(
        harness::topology::ping(&c1, "10.91.0.1").is_ok(),
        "n1's gateway"
    );

    // DEL, twice; then DEL of c2 with its namespace gone.
    assert_eq!(plugin(&host, "DEL", &good, &env(&c1_path)).code, 0);
    assert_eq!(
        plugin(&host, "DEL", &good, &env(&c1_path)).code,
        0,
        "a second DEL"
    );
    let ports = netpath_ok(&host, &["ports"]);
    assert!(!ports.contains(&ip), "{ports}");
    assert!(ports.contains("8081"), "{ports}");
    assert!(
        c1.ip(&["-o", "link", "show"]).unwrap().lines().count() == 1,
        "c1's veth stayed"
    );
    drop(c2);
    let gone = vec![
        ("CNI_CONTAINERID", "c0ffee02"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", c2_path.as_str()),
    ];
    let del = plugin(&host, "DEL", &other, &gone);
    assert_eq!(del.code, 0, "DEL with the namespace gone: {}", del.stdout);
    let del = plugin(
        &host,
        "DEL",
        &other,
        &[("CNI_CONTAINERID", "c0ffee02"), ("CNI_IFNAME", "eth0")],
    );
    assert_eq!(del.code, 0, "DEL without CNI_NETNS: {}", del.stdout);
    assert!(!netpath_ok(&host, &["ports"]).contains("8081"));
    assert_eq!(ipam_leases(&ipam), 0, "DEL kept IPAM addresses");
    let st = harness::status(&host);
    assert!(
        !st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["role"] == "port"),
        "{st:#}"
    );
}
