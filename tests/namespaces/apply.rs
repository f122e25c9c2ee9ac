//! `netpath apply -f FILE` and `netpath export` in the lab: create from
//! nothing, a second apply changes nothing, an edited file removes,
//! changes and adds while a live TCP flow through an untouched published
//! port carries on, what was made by hand stays, every error in a file
//! says FILE:LINE:COLUMN and applies nothing, and `export | apply -f -`
//! changes nothing.

use crate::harness;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use harness::{Lab, NETPATH, Netns, addr, netpath, netpath_ok, snapshot, status};

/// A file of the test's own, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("netpath-apply-{}-{tag}.toml", std::process::id()));
        std::fs::write(&p, text).expect("writing the test file");
        Self(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn apply(ns: &Netns, tag: &str, text: &str) -> harness::Run {
    let f = TempFile::new(tag, text);
    netpath(ns, &["apply", "-f", f.path()])
}

fn apply_ok(ns: &Netns, tag: &str, text: &str) -> String {
    let r = apply(ns, tag, text);
    assert_eq!(r.code, 0, "apply {tag} failed:\n{}{}", r.stdout, r.stderr);
    r.stdout
}

fn network<'a>(s: &'a serde_json::Value, bridge: &str) -> Option<&'a serde_json::Value> {
    s["networks"]
        .as_array()
        .expect("networks")
        .iter()
        .find(|n| n["bridge"] == bridge)
}

fn ports(ns: &Netns) -> Vec<(u64, String)> {
    let out = netpath_ok(ns, &["ports", "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).expect("ports --json");
    v.iter()
        .map(|m| {
            (
                m["host_port"].as_u64().unwrap_or(0),
                format!(
                    "{}:{}",
                    m["container_ip"].as_str().unwrap_or(""),
                    m["container_port"]
                ),
            )
        })
        .collect()
}

const V1: &str = r#"
# np0 is the lab's bridge (made by the test, with the containers on it).
[[network]]
bridge = "np0"
subnet = "172.30.0.0/24"

[[network]]
bridge = "npa9"
subnet = "172.31.9.0/24"
icc = false

[[publish]]
host = "8081"
container = "172.30.0.2:80"

[[publish]]
host = "8082"
container = "172.30.0.3:80"

[[filter]]
network = "np0"
port = "8083"
verdict = "deny"
"#;

/// np9 goes, np0's icc goes off (in place), 8082 goes, 8083 comes (and
/// its rule flips to allow), 8081 stays untouched.
const V2: &str = r#"
[[network]]
bridge = "np0"
subnet = "172.30.0.0/24"
icc = false

[[publish]]
host = "8081"
container = "172.30.0.2:80"

[[publish]]
host = "8083"
container = "172.30.0.3:80"

[[filter]]
network = "np0"
port = "8083"
verdict = "allow"
"#;

#[test]
fn apply_creates_is_idempotent_edits_prunes_and_keeps_live_flows() {
    require_root!();
    let lab = Lab::new(NETPATH).expect("building the lab");
    // The bridge exists with the containers on it: apply takes it as `up` would.
    lab.host
        .ip(&["link", "add", Lab::BRIDGE, "type", "bridge"])
        .unwrap();
    lab.host.ip(&["link", "set", Lab::BRIDGE, "up"]).unwrap();
    lab.plug_ports().unwrap();
    // A network made by hand, with a port published by hand.
    netpath_ok(
        &lab.host,
        &[
            "up",
            "--bridge",
            "nph",
            "--subnet",
            "172.29.0.0/24",
            "--no-daemon",
        ],
    );
    netpath_ok(&lab.host, &["publish", "9090", "172.29.0.2:80"]);

    let out = apply_ok(&lab.host, "v1", V1);
    for l in [
        "network np0 created (172.30.0.0/24 gateway 172.30.0.1)",
        "network npa9 created",
        "published 8081/tcp -> 172.30.0.2:80",
        "published 8082/tcp -> 172.30.0.3:80",
        "filter rule added: --network np0 --port 8083/tcp deny",
    ] {
        assert!(out.contains(l), "{l:?} not in:\n{out}");
    }
    let s = status(&lab.host);
    assert_eq!(network(&s, "npa9").unwrap()["icc"], false);
    assert!(harness::ifnames(&lab.host).contains(&"npa9".to_owned()));
    let seen = lab.tcp_in(&lab.c1, 80, addr(Lab::UPLINK, 8081)).unwrap();
    assert_eq!(seen.ip().to_string(), Lab::EXT);

    // Again: nothing to do.
    assert_eq!(apply_ok(&lab.host, "v1-again", V1).trim(), "no changes");

    // A live connection through 8081, kept open across the next apply.
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = lab.c1.spawn(move || {
        let l = std::net::TcpListener::bind(addr("0.0.0.0", 80))?;
        ready_tx.send(()).ok();
        let (mut s, _) = l.accept()?;
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(3)).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let client = lab.ext.spawn(move || {
        let mut s =
            TcpStream::connect_timeout(&addr(Lab::UPLINK, 8081).into(), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 6];
        s.write_all(b"before")?;
        s.read_exact(&mut buf)?;
        anyhow::ensure!(&buf == b"before", "echo before");
        go_rx.recv()?;
        s.write_all(b"after!")?;
        s.read_exact(&mut buf)?;
        anyhow::ensure!(&buf == b"after!", "echo after");
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(300));

    let out = apply_ok(&lab.host, "v2", V2);
    for l in [
        "network npa9 removed",
        "network np0 changed: icc off",
        "unpublished 8082/tcp -> 172.30.0.3:80",
        "published 8083/tcp -> 172.30.0.3:80",
        "filter rule removed: --network np0 --port 8083/tcp deny",
        "filter rule added: --network np0 --port 8083/tcp allow",
    ] {
        assert!(out.contains(l), "{l:?} not in:\n{out}");
    }
    assert!(!out.contains("8081"), "8081 is untouched:\n{out}");
    go_tx.send(()).unwrap();
    client
        .join()
        .unwrap()
        .expect("the live flow through 8081 survives the apply");
    server.join().unwrap().unwrap();

    let s = status(&lab.host);
    assert!(network(&s, "npa9").is_none());
    assert!(
        !harness::ifnames(&lab.host).contains(&"npa9".to_owned()),
        "apply's bridge deleted"
    );
    assert_eq!(network(&s, "np0").unwrap()["icc"], false);
    let p = ports(&lab.host);
    assert!(p.contains(&(8081, "172.30.0.2:80".into())), "{p:?}");
    assert!(p.contains(&(8083, "172.30.0.3:80".into())), "{p:?}");
    assert!(!p.iter().any(|(port, _)| *port == 8082), "{p:?}");
    // The hand-made network and its port: still there.
    assert!(network(&s, "nph").is_some());
    assert!(p.contains(&(9090, "172.29.0.2:80".into())), "{p:?}");
    let rules = netpath_ok(&lab.host, &["filter", "list"]);
    assert!(
        rules.contains("allow") && !rules.contains("deny"),
        "{rules}"
    );
    assert_eq!(apply_ok(&lab.host, "v2-again", V2).trim(), "no changes");

    // export | apply -f - changes nothing (the hand-made network included).
    let exported = netpath_ok(&lab.host, &["export"]);
    assert!(exported.contains("bridge = \"nph\""), "{exported}");
    let mut child = lab
        .host
        .netpath(NETPATH)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exported.as_bytes())
        .unwrap();
    let r = child.wait_with_output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "no changes",
        "{exported}"
    );

    // An empty file prunes what apply made, and only that.
    let out = apply_ok(&lab.host, "empty", "");
    assert!(out.contains("network np0 removed"), "{out}");
    let s = status(&lab.host);
    assert!(network(&s, "np0").is_none() && network(&s, "nph").is_some());
    assert!(
        harness::ifnames(&lab.host).contains(&"np0".to_owned()),
        "the test's bridge stays"
    );
    assert_eq!(ports(&lab.host), vec![(9090, "172.29.0.2:80".into())]);
}

#[test]
fn errors_in_the_file_say_where_and_apply_nothing() {
    require_root!();
    let host = Netns::new("apply-err").unwrap().cleanup_with(NETPATH);
    netpath_ok(
        &host,
        &[
            "up",
            "--bridge",
            "nph",
            "--subnet",
            "172.29.0.0/24",
            "--no-daemon",
        ],
    );
    let before = snapshot(&host);
    let good = "[[network]]\nbridge = \"npa1\"\nsubnet = \"10.77.0.0/24\"\n\n";
    for (text, at, what) in [
        // TOML syntax.
        (
            format!("{good}[[publish]\n"),
            "5:11",
            "unclosed array table",
        ),
        // An unknown key.
        (
            format!("{good}[[publish]]\nhots = \"80\"\n"),
            "6:1",
            "unknown field `hots`",
        ),
        // A wrong type.
        (
            format!("{good}[[network]]\nbridge = \"npa2\"\nsubnet = \"10.78.0.0/24\"\nicc = 1\n"),
            "8:7",
            "invalid type",
        ),
        // A bad value.
        (
            format!("{good}[[publish]]\nhost = \"8080-8070\"\ncontainer = \"10.77.0.2:80\"\n"),
            "6:8",
            "below the start",
        ),
        // Entries against each other.
        (
            format!("{good}[[network]]\nbridge = \"npa1\"\nsubnet = \"10.79.0.0/24\"\n"),
            "5:1",
            "named twice",
        ),
        // Against the state: a hand-made network changed, an address in no
        // network, a subnet overlapping a hand-made one.
        (
            format!(
                "{good}[[network]]\nbridge = \"nph\"\nsubnet = \"172.29.0.0/24\"\nicc = false\n"
            ),
            "5:1",
            "made by hand",
        ),
        (
            format!("{good}[[publish]]\nhost = \"80\"\ncontainer = \"10.99.0.2:80\"\n"),
            "5:1",
            "in no network",
        ),
        (
            format!("{good}[[network]]\nbridge = \"npa3\"\nsubnet = \"172.29.0.0/16\"\n"),
            "5:1",
            "overlaps network nph",
        ),
        // An uplink that is no interface: found before anything (the
        // hand-made network, an earlier apply's) is touched.
        (
            format!(
                "{good}[[network]]\nbridge = \"npa2\"\nsubnet = \"10.78.0.0/24\"\nuplinks = [\"nosuch0\"]\n"
            ),
            "5:1",
            "uplink nosuch0 does not exist",
        ),
    ] {
        let f = TempFile::new("bad", &text);
        let r = netpath(&host, &["apply", "-f", f.path()]);
        let line = r.stderr.trim();
        assert_eq!(r.code, 1, "{text}\n{}{}", r.stdout, r.stderr);
        assert!(
            line.starts_with(&format!("{}:{at}: ", f.path())) && line.contains(what),
            "expected {at} {what:?} for:\n{text}\ngot: {line}"
        );
        assert_eq!(line.lines().count(), 1, "one line: {line}");
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert_eq!(snapshot(&host), before, "nothing applied for:\n{text}");
    }
    let r = netpath(&host, &["apply", "-f", "/nonexistent/netpath.toml"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("reading /nonexistent/netpath.toml"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_new_subnet_takes_the_network_down_and_up_with_its_ports_and_mappings() {
    require_root!();
    let host = Netns::new("apply-re").unwrap().cleanup_with(NETPATH);
    let file = |net: &str| {
        format!(
            "[[network]]\nbridge = \"npa5\"\nsubnet = \"10.{net}.0.0/24\"\n\n[[publish]]\nhost = \"7070\"\ncontainer = \"10.{net}.0.2:80\"\n"
        )
    };
    let out = apply_ok(&host, "re1", &file("55"));
    assert!(out.contains("network npa5 created"), "{out}");
    // A port plugged by hand (the bridge is apply's, so `down` deletes it).
    host.ip(&[
        "link", "add", "vre0", "type", "veth", "peer", "name", "vre1",
    ])
    .unwrap();
    host.ip(&["link", "set", "vre0", "master", "npa5", "up"])
        .unwrap();
    let out = apply_ok(&host, "re2", &file("56"));
    assert!(
        out.contains("network npa5 changed: subnet 10.55.0.0/24 -> 10.56.0.0/24, gateway 10.55.0.1 -> 10.56.0.1 (taken down and up again"),
        "{out}"
    );
    assert!(out.contains("published 7070/tcp -> 10.56.0.2:80"), "{out}");
    let s = status(&host);
    assert_eq!(network(&s, "npa5").unwrap()["subnet"], "10.56.0.0/24");
    assert!(
        host.ip(&["-4", "addr", "show", "npa5"])
            .unwrap()
            .contains("10.56.0.1/24")
    );
    assert!(
        host.ip(&["link", "show", "vre0"])
            .unwrap()
            .contains("master npa5"),
        "the hand-plugged port is back on the new bridge"
    );
    assert_eq!(ports(&host), vec![(7070, "10.56.0.2:80".into())]);
    assert_eq!(apply_ok(&host, "re3", &file("56")).trim(), "no changes");
}

#[test]
fn a_dual_stack_network_is_applied_exported_and_moved() {
    require_root!();
    let host = Netns::new("apply-v6").unwrap().cleanup_with(NETPATH);
    let file =
        |v6: &str| format!("[[network]]\nbridge = \"npa6\"\nsubnets = [\"10.57.0.0/24\"{v6}]\n");
    let published6 = "\n[[publish]]\nhost = \"[::]:8086\"\ncontainer = \"[fd00:57::2]:80\"\n";
    let out = apply_ok(
        &host,
        "v61",
        &format!("{}{published6}", file(", \"fd00:57::/64\"")),
    );
    assert!(
        out.starts_with(
            "network npa6 created (10.57.0.0/24 gateway 10.57.0.1, fd00:57::/64 gateway fd00:57::1)\npublished [::]:8086/tcp -> [fd00:57::2]:80\n"
        ),
        "{out}"
    );
    assert_eq!(ports(&host), vec![(8086, "fd00:57::2:80".into())]);
    let s = status(&host);
    let n = network(&s, "npa6").unwrap();
    assert_eq!(
        (n["subnet6"].as_str(), n["gateway6"].as_str()),
        (Some("fd00:57::/64"), Some("fd00:57::1"))
    );
    assert!(
        host.ip(&["-6", "addr", "show", "npa6"])
            .unwrap()
            .contains("fd00:57::1/64")
    );
    // export gives it back as a file that changes nothing.
    let exported = netpath_ok(&host, &["export"]);
    assert!(
        exported.contains("subnets = [\"10.57.0.0/24\", \"fd00:57::/64\"]")
            && exported.contains("host = \"[::]:8086/tcp\"\ncontainer = \"[fd00:57::2]:80\""),
        "{exported}"
    );
    assert_eq!(apply_ok(&host, "v62", &exported).trim(), "no changes");
    // Another IPv6 half: down and up again, with the new gateway on the
    // bridge and the old one gone.
    let out = apply_ok(
        &host,
        "v63",
        &format!("{}gateway6 = \"fd00:58::fe\"\n", file(", \"fd00:58::/64\"")),
    );
    assert!(
        out.contains("network npa6 changed: IPv6 fd00:57::/64 gateway fd00:57::1 -> fd00:58::/64 gateway fd00:58::fe (taken down and up again")
            && out.contains("unpublished [::]:8086/tcp -> [fd00:57::2]:80"),
        "{out}"
    );
    assert_eq!(ports(&host), vec![]);
    let addrs = host.ip(&["-6", "addr", "show", "npa6"]).unwrap();
    assert!(
        addrs.contains("fd00:58::fe/64") && !addrs.contains("fd00:57::1"),
        "{addrs}"
    );
    // No IPv6 half: IPv4-only again.
    let out = apply_ok(&host, "v64", &file(""));
    assert!(
        out.contains("IPv6 fd00:58::/64 gateway fd00:58::fe -> none"),
        "{out}"
    );
    let s = status(&host);
    assert!(network(&s, "npa6").unwrap()["subnet6"].is_null(), "{s}");
    // A bad IPv6 half: one line with its place, nothing applied.
    let r = apply(&host, "v65", &file(", \"fd00:59::1/64\""));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(".toml:3:28: invalid subnet fd00:59::1/64: host bits are set"),
        "{}",
        r.stderr
    );
    assert!(network(&status(&host), "npa6").unwrap()["subnet6"].is_null());
}
