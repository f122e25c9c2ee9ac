//! Shared namespace harness for netpath's integration tests: runs the real
//! `netpath` binary against throw-away namespaces (see `netpath::lab::topology`,
//! which removes them on drop, also when a test panics), queries TCX
//! attachments independently of netpath's own status, and snapshots a
//! namespace so a test can assert that nothing changed.
#![allow(dead_code, unused_imports)]

pub mod dockerd;
pub mod packet;
pub mod probe;
pub mod raw;
pub mod testrun;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
};

use aya::programs::{SchedClassifier, TcAttachType};
pub use netpath::lab::topology::{self, Lab, Netns};

/// The binary under test.
pub const NETPATH: &str = env!("CARGO_BIN_EXE_netpath");

/// Returns false (after printing why) when the tests cannot run here. Under
/// CI (`CI=true`) a test that cannot run fails instead: a skipped tier must
/// not pass as green.
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "netpath integration tests need root (namespaces, BPF), and CI=true says they must run"
        );
        eprintln!("SKIP: netpath integration tests need root (namespaces, BPF)");
        return false;
    }
    true
}

/// `netpath connect` of a new namespace tagged `tag` to `bridge` (plus
/// `extra` arguments): the namespace and the address it got.
pub fn connect(host: &Netns, tag: &str, bridge: &str, extra: &[&str]) -> (Netns, String) {
    let c = Netns::new(tag).unwrap();
    let mut args = vec!["connect", c.name.as_str(), "--bridge", bridge];
    args.extend_from_slice(extra);
    let out = netpath_ok(host, &args);
    let ip = out
        .split_whitespace()
        .find_map(|w| w.split_once('/').map(|(a, _)| a.to_owned()))
        .unwrap_or_else(|| panic!("no address in {out:?}"));
    (c, ip)
}

/// Held by tests that flood or time gaps (a SYN flood, a zero-loss probe,
/// the quick benchmark): on two cores, two of them at once would measure
/// each other. Poison (a failed holder) does not stop the others.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Skips the calling test (with a printed reason) when it cannot run here.
#[macro_export]
macro_rules! require_root {
    () => {
        if !harness::can_run() {
            return;
        }
    };
}

pub fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse::<Ipv4Addr>().unwrap(), port)
}

/// The lab with `netpath up` (plus `extra` arguments) run, the container
/// ports plugged in, and `up` run again so they become ports.
pub fn lab_up_with(lab: Lab, extra: &[&str]) -> Lab {
    let mut args = vec!["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET];
    args.extend_from_slice(extra);
    netpath_ok(&lab.host, &args);
    lab.plug_ports().expect("plugging ports");
    netpath_ok(&lab.host, &args);
    lab
}

/// [`lab_up_with`] on a plain lab with default options.
pub fn lab_up() -> Lab {
    lab_up_with(Lab::new(NETPATH).expect("building the lab"), &[])
}

/// `netpath conntrack list --json`, parsed.
pub fn flows(ns: &Netns) -> Vec<serde_json::Value> {
    let out = netpath_ok(ns, &["conntrack", "list", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("conntrack list --json ({e}): {out}"))
}

/// A scratch directory a test makes (scripts, plugin links, IPAM data),
/// removed with everything in it on drop, also when the test panics.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

/// Result of one `netpath` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `netpath --netns NS ARGS…`.
pub fn netpath(ns: &Netns, args: &[&str]) -> Run {
    // Safety rule: socket hooks never go on the root cgroup in tests.
    assert!(
        args.first() != Some(&"up") || ns.cgroup.is_some(),
        "`netpath up` in {} needs a namespace made with cleanup_with (its own cgroup)",
        ns.name
    );
    let out = ns
        .netpath(NETPATH)
        .args(args)
        .output()
        .expect("spawning netpath");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs netpath and panics with its output unless it succeeds.
pub fn netpath_ok(ns: &Netns, args: &[&str]) -> String {
    let r = netpath(ns, args);
    assert_eq!(
        r.code, 0,
        "netpath {args:?} in {} failed:\n{}{}",
        ns.name, r.stdout, r.stderr
    );
    r.stdout
}

/// The drops of network `bridge` for `reason` in a `status --json`.
pub fn net_drops(s: &serde_json::Value, bridge: &str, reason: &str) -> u64 {
    s["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["bridge"] == bridge)
        .unwrap_or_else(|| panic!("no network {bridge}: {s}"))["drops"][reason]
        .as_u64()
        .unwrap()
}

/// The link-local IPv6 address of `ifname` in `ns`, once duplicate address
/// detection is done with it (a tentative address answers nothing).
pub fn link_local(ns: &Netns, ifname: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let out = loop {
        let out = ns
            .ip(&["-6", "-o", "addr", "show", "dev", ifname, "scope", "link"])
            .unwrap();
        if !out.contains("tentative") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no link-local address on {ifname}: {out}"))
}

/// `netpath status --json`, parsed.
pub fn status(ns: &Netns) -> serde_json::Value {
    let out = netpath_ok(ns, &["status", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

/// The status entry of interface `name`.
pub fn iface<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["interfaces"]
        .as_array()
        .expect("interfaces array")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in status: {status:#}"))
}

/// (id, name) of every TC program on `ifname` in `dir`, asked of the
/// kernel from inside `ns` (not through netpath): the `bpf` filters
/// `tc filter show` lists, then the TCX programs.
pub fn tc_programs(ns: &Netns, ifname: &str, ingress: bool) -> Vec<(u32, String)> {
    let out = ns
        .command("tc")
        .args(["-j", "filter", "show", "dev", ifname])
        .arg(if ingress { "ingress" } else { "egress" })
        .output()
        .expect("tc filter show");
    assert!(
        out.status.success(),
        "tc filter show dev {ifname}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let filters: Vec<serde_json::Value> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("tc -j ({e}): {text}"))
    };
    let mut progs: Vec<(u32, String)> = filters
        .iter()
        .filter_map(|f| {
            let p = &f["options"]["prog"];
            Some((
                u32::try_from(p["id"].as_u64()?).ok()?,
                p["name"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let ifname = ifname.to_owned();
    let dir = if ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    progs.extend(
        ns.run(move || {
            let (_, progs) = SchedClassifier::query_tcx(&ifname, dir)
                .unwrap_or_else(|e| panic!("query_tcx {ifname}: {e}"));
            progs
                .iter()
                .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
                .collect::<Vec<_>>()
        })
        .expect("query thread"),
    );
    progs
}

/// Interface names in `ns`.
pub fn ifnames(ns: &Netns) -> Vec<String> {
    ns.ip(&["-o", "link", "show"])
        .expect("ip link")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// `ip -o link show` of `ns` without what follows carrier: the operstate
/// and the LOWER_UP / NO-CARRIER flags. A bridge's carrier comes and goes
/// with its ports' (and settles a moment after a port is added), so a
/// "nothing changed" comparison of the raw lines fails on a quiet machine's
/// timing; names, masters, MTUs, admin flags and MACs remain.
pub fn links(ns: &Netns) -> String {
    ns.ip(&["-o", "link", "show"])
        .expect("ip link")
        .lines()
        .map(|l| {
            let mut words = Vec::new();
            let mut it = l.split(' ');
            while let Some(w) = it.next() {
                if w == "state" {
                    it.next();
                    continue;
                }
                words.push(if w.starts_with('<') {
                    let flags: Vec<&str> = w
                        .trim_matches(|c| c == '<' || c == '>')
                        .split(',')
                        .filter(|f| !matches!(*f, "LOWER_UP" | "NO-CARRIER"))
                        .collect();
                    format!("<{}>", flags.join(","))
                } else {
                    w.to_owned()
                });
            }
            words.join(" ") + "\n"
        })
        .collect()
}

/// TCX programs (id, name) of one interface: (ingress, egress).
pub type TcPair = (Vec<(u32, String)>, Vec<(u32, String)>);

/// Everything netpath could change in a namespace: links (with flags and
/// masters), addresses, routes, forwarding, TCX programs per interface, and
/// its pinned state.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub links: String,
    pub addrs: String,
    pub routes: String,
    pub forwarding: String,
    pub tc: BTreeMap<String, TcPair>,
    pub pins: Vec<String>,
}

pub fn snapshot(ns: &Netns) -> Snapshot {
    let forwarding = {
        let name = ns.name.clone();
        ns.run(move || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .map_err(|e| format!("{name}: {e}"))
        })
        .expect("thread")
        .expect("read ip_forward")
    };
    let state_dir = state_dir(ns);
    let mut pins: Vec<String> = walk(std::path::Path::new(&state_dir));
    pins.sort();
    Snapshot {
        links: links(ns),
        addrs: ns.ip(&["-o", "-4", "addr", "show"]).expect("ip addr"),
        routes: ns.ip(&["-4", "route", "show"]).expect("ip route"),
        forwarding,
        tc: ifnames(ns)
            .into_iter()
            .map(|n| {
                let v = (tc_programs(ns, &n, true), tc_programs(ns, &n, false));
                (n, v)
            })
            .collect(),
        pins,
    }
}

/// The state directory netpath uses for `ns` (reported by status).
pub fn state_dir(ns: &Netns) -> String {
    status(ns)["state_dir"]
        .as_str()
        .expect("state_dir")
        .to_owned()
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}
