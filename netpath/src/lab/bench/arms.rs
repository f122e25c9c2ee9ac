//! The three arms, each its own copy of the same namespace topology
//! ([`Lab`]): **netpath**; **iptables**, Docker 20.10's ruleset for the same
//! networks and published ports (see `../shared/reference/docker-iptables.md`:
//! nat DOCKER chain with addrtype LOCAL, MASQUERADE per subnet, hairpin
//! MASQUERADE, filter FORWARD with DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2
//! and conntrack RELATED,ESTABLISHED), loaded with `iptables-restore`; and
//! **bare**, plain routing with no NAT and no filtering (the external side
//! routes to the containers' subnet), the physical limit here.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddrV4,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::lab::topology::{self, Lab};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    Iptables,
    Netpath,
    Bare,
    /// Another netpath binary (`--baseline`): what a change costs.
    Baseline,
}

impl Arm {
    /// The arms every run has.
    pub const ALL: [Self; 3] = [Self::Iptables, Self::Netpath, Self::Bare];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Netpath => "netpath",
            Self::Bare => "bare",
            Self::Baseline => "baseline",
        }
    }

    /// Whether a netpath binary drives this arm.
    pub const fn is_netpath(self) -> bool {
        matches!(self, Self::Netpath | Self::Baseline)
    }
}

/// The published port every workload measures (TCP and UDP), last in
/// iptables' chains.
pub const PORT: u16 = 5001;
/// The external server's port for the egress (masquerade) workloads.
pub const EXT_PORT: u16 = 6001;
/// First dummy published port (scale points).
const DUMMY_BASE: u16 = 20000;

/// One arm's topology and how it is configured now.
pub struct ArmLab {
    pub arm: Arm,
    pub lab: Lab,
    exe: std::path::PathBuf,
    ports: u32,
    networks: u32,
    /// How long this arm's first `netpath up` took (netpath arms): it
    /// loads and verifies the programs.
    pub first_up: Option<Duration>,
}

fn extra_net(i: u32) -> (String, String) {
    (format!("nb{i}"), format!("10.200.{i}.0/24"))
}

impl ArmLab {
    pub fn build(arm: Arm, exe: &Path) -> Result<Self> {
        let lab = Lab::new(exe)?;
        let mut me = Self {
            arm,
            lab,
            exe: exe.to_owned(),
            ports: 0,
            networks: 1,
            first_up: None,
        };
        match arm {
            Arm::Netpath | Arm::Baseline => {
                let up = ["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET];
                let t = Instant::now();
                me.netpath(&up)?;
                me.first_up = Some(t.elapsed());
                me.lab.plug_ports()?;
                me.netpath(&up)?;
            }
            Arm::Iptables | Arm::Bare => {
                me.plain_bridge(Lab::BRIDGE, "172.30.0.1/24")?;
                me.lab.plug_ports()?;
                me.lab.host.sysctl("net.ipv4.ip_forward", "1")?;
                if arm == Arm::Bare {
                    me.lab
                        .ext
                        .ip(&["route", "add", Lab::SUBNET, "via", Lab::UPLINK])?;
                }
            }
        }
        Ok(me)
    }

    fn plain_bridge(&self, name: &str, addr: &str) -> Result<()> {
        self.lab.host.ip(&["link", "add", name, "type", "bridge"])?;
        self.lab.host.ip(&["addr", "add", addr, "dev", name])?;
        self.lab.host.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    pub fn netpath(&self, args: &[&str]) -> Result<String> {
        let out = topology::run(self.lab.host.netpath(&self.exe).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What the external client dials to reach the container's `PORT`.
    /// The netpath binary this arm runs.
    pub fn exe(&self) -> &std::path::Path {
        &self.exe
    }

    pub fn published(&self) -> SocketAddrV4 {
        let ip = match self.arm {
            Arm::Bare => Lab::C1,
            _ => Lab::UPLINK,
        };
        SocketAddrV4::new(ip.parse().expect("address"), PORT)
    }

    /// Publishes `PORT` (tcp and udp) plus `n - 1` other ports before it.
    /// Returns how long the control plane took.
    pub fn set_ports(&mut self, n: u32) -> Result<Duration> {
        let t = Instant::now();
        match self.arm {
            Arm::Netpath | Arm::Baseline => {
                if self.ports > 0 {
                    self.netpath(&["unpublish", &format!("{PORT}/tcp")])?;
                    self.netpath(&["unpublish", &format!("{PORT}/udp")])?;
                    if self.ports > 1 {
                        let last = DUMMY_BASE + (self.ports - 2) as u16;
                        self.netpath(&["unpublish", &format!("{DUMMY_BASE}-{last}")])?;
                    }
                }
                if n > 1 {
                    let last = DUMMY_BASE + (n - 2) as u16;
                    self.netpath(&[
                        "publish",
                        &format!("{DUMMY_BASE}-{last}"),
                        &format!("{}:{DUMMY_BASE}-{last}", Lab::C1),
                    ])?;
                }
                for p in ["tcp", "udp"] {
                    self.netpath(&[
                        "publish",
                        &format!("{PORT}/{p}"),
                        &format!("{}:{PORT}", Lab::C1),
                    ])?;
                }
            }
            Arm::Iptables => {
                self.ports = n;
                self.restore()?;
            }
            Arm::Bare => {}
        }
        self.ports = n;
        Ok(t.elapsed())
    }

    /// Adds managed networks until there are `m` (the measured one, np0,
    /// is the oldest: last in iptables' chains), each arm its way: netpath
    /// one `netpath up` per network (as `docker network create` makes one
    /// each); iptables its best case, every bridge from one `ip -batch`
    /// and then one `iptables-restore` of the whole ruleset; bare the
    /// bridges alone.
    pub fn set_networks(&mut self, m: u32) -> Result<NetworksTiming> {
        let t = Instant::now();
        let mut timing = NetworksTiming {
            from: self.networks,
            ..Default::default()
        };
        match self.arm {
            Arm::Netpath | Arm::Baseline => {
                for i in self.networks..m {
                    let (bridge, subnet) = extra_net(i);
                    let one = Instant::now();
                    self.netpath(&["up", "--bridge", &bridge, "--subnet", &subnet])?;
                    timing.each.push(one.elapsed());
                }
            }
            Arm::Iptables | Arm::Bare => {
                let mut batch = String::new();
                for i in self.networks..m {
                    let (bridge, subnet) = extra_net(i);
                    let gw = subnet.replace(".0/24", ".1/24");
                    let _ = writeln!(
                        batch,
                        "link add {bridge} type bridge\naddr add {gw} dev {bridge}\nlink set {bridge} up"
                    );
                }
                if !batch.is_empty() {
                    ip_batch(&self.lab.host, &batch)?;
                }
            }
        }
        self.networks = self.networks.max(m);
        if self.arm == Arm::Iptables {
            let r = Instant::now();
            self.restore()?;
            timing.restore = Some(r.elapsed());
        }
        timing.to = self.networks;
        timing.total = t.elapsed();
        Ok(timing)
    }

    /// Creates `n` more networks (`na1`…, 10.202.i.0/24) with one
    /// `netpath apply` (netpath arms only): the batched way, one lock and
    /// one reconcile for all of them.
    pub fn apply_networks(&self, n: u32) -> Result<Duration> {
        let mut file = String::new();
        for i in 1..=n {
            let _ = writeln!(
                file,
                "[[network]]\nbridge = \"na{i}\"\nsubnet = \"10.202.{i}.0/24\"\n"
            );
        }
        let t = Instant::now();
        let mut child = self
            .lab
            .host
            .netpath(&self.exe)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running netpath apply")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(file.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "netpath apply: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(t.elapsed())
    }

    /// Loads Docker's ruleset for the current networks and ports.
    fn restore(&self) -> Result<()> {
        let rules = docker_ruleset(self.networks, self.ports);
        iptables_restore(&self.lab.host, &rules, false)
    }

    /// Proof the arm took its path: (what was checked, packets seen).
    pub fn path_evidence(&self) -> Result<Vec<(String, u64)>> {
        Ok(match self.arm {
            Arm::Netpath | Arm::Baseline => {
                let ports: serde_json::Value =
                    serde_json::from_str(&self.netpath(&["ports", "--json"])?)?;
                let status: serde_json::Value =
                    serde_json::from_str(&self.netpath(&["status", "--json"])?)?;
                let measured = ports
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["host_port"] == PORT)
                    .map(|m| m["to_container"]["packets"].as_u64().unwrap_or(0))
                    .sum();
                let net = status["networks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|n| n["bridge"] == Lab::BRIDGE);
                let net_packets =
                    |what: &str| net.map_or(0, |n| n[what]["packets"].as_u64().unwrap_or(0));
                let arm = self.arm.name();
                let mut v = vec![
                    (
                        format!("{arm} published {PORT} packets to container"),
                        measured,
                    ),
                    (
                        format!("{arm} masquerade (snat) packets"),
                        net_packets("snat"),
                    ),
                ];
                // An older build (the baseline) has no port-to-port path.
                if self.arm == Arm::Netpath {
                    v.push((
                        format!("{arm} container to container, port to port"),
                        net_packets("c2c_fast"),
                    ));
                }
                v
            }
            Arm::Iptables => {
                let out = topology::run(
                    self.lab
                        .host
                        .command("iptables")
                        .args(["-t", "nat", "-L", "-v", "-x", "-n"]),
                )?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let count = |want: &dyn Fn(&str) -> bool| -> u64 {
                    text.lines()
                        .filter(|l| want(l))
                        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                        .sum()
                };
                vec![
                    (
                        format!("iptables DNAT rule for {PORT} packets"),
                        count(&|l: &str| l.contains("DNAT") && l.contains(&format!("dpt:{PORT} "))),
                    ),
                    (
                        "iptables MASQUERADE for the subnet packets".to_owned(),
                        count(&|l: &str| l.contains("MASQUERADE") && l.contains(Lab::SUBNET)),
                    ),
                    (
                        // Bridged traffic walks FORWARD (br_netfilter, as
                        // Docker sets it up) and ends at `-i np0 -o np0`.
                        format!("iptables FORWARD -i {0} -o {0} ACCEPT packets", Lab::BRIDGE),
                        forward_within(&self.lab.host)?,
                    ),
                ]
            }
            Arm::Bare => {
                let out =
                    topology::run(self.lab.host.command("iptables").args(["-t", "nat", "-S"]))?;
                let rules = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A"))
                    .count();
                vec![("bare: nat rules (must be 0)".to_owned(), rules as u64)]
            }
        })
    }

    /// The uplink's offload settings (recorded with the results).
    pub fn offloads(&self) -> String {
        topology::run(self.lab.host.command("ethtool").args(["-k", "uplink0"]))
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| {
                        !l.contains("[fixed]")
                            && (l.contains("segmentation")
                                || l.contains("checksumming")
                                || l.contains("receive-offload"))
                    })
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|e| format!("unavailable: {e:#}"))
    }
}

/// Packets of `-A FORWARD -i np0 -o np0 -j ACCEPT` (the counter of the
/// rule Docker adds for traffic between two containers of one network).
fn forward_within(host: &topology::Netns) -> Result<u64> {
    let out = topology::run(
        host.command("iptables")
            .args(["-L", "FORWARD", "-v", "-x", "-n"]),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 7 && f[2] == "ACCEPT" && f[5] == Lab::BRIDGE && f[6] == Lab::BRIDGE
        })
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum())
}

/// How long adding networks took on one arm.
#[derive(Clone, Debug, Default)]
pub struct NetworksTiming {
    /// Networks before and after.
    pub from: u32,
    pub to: u32,
    pub total: Duration,
    /// Each `netpath up` (netpath arms), in order.
    pub each: Vec<Duration>,
    /// Of the total, the one `iptables-restore` (iptables arm).
    pub restore: Option<Duration>,
}

/// Runs `ip -batch -` inside `ns` on `lines`.
fn ip_batch(ns: &topology::Netns, lines: &str) -> Result<()> {
    let mut child = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(lines.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Feeds `rules` to `iptables-restore` inside `ns`.
pub fn iptables_restore(ns: &topology::Netns, rules: &str, noflush: bool) -> Result<()> {
    // nsenter rather than `ip netns exec` (which also remounts /sys): the
    // timing is iptables-restore's own.
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name))
        .arg("iptables-restore");
    if noflush {
        cmd.arg("--noflush");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Docker 20.10's rules for `networks` bridges (np0, then nb1, nb2, …,
/// newest first as Docker inserts them) and `ports` published ports to c1
/// (the measured `PORT`, tcp and udp, last).
pub fn docker_ruleset(networks: u32, ports: u32) -> String {
    let mut nets: Vec<(String, String)> = (1..networks).rev().map(extra_net).collect();
    nets.push((Lab::BRIDGE.to_owned(), Lab::SUBNET.to_owned()));
    let c1 = Lab::C1;
    let mut published: Vec<(u16, &str)> = (0..ports.saturating_sub(1))
        .map(|i| (DUMMY_BASE + i as u16, "tcp"))
        .collect();
    if ports > 0 {
        published.push((PORT, "tcp"));
        published.push((PORT, "udp"));
    }
    let br = Lab::BRIDGE;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]"
    );
    let _ = writeln!(s, "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER");
    let _ = writeln!(
        s,
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"
    );
    for (b, sub) in &nets {
        let _ = writeln!(s, "-A POSTROUTING -s {sub} ! -o {b} -j MASQUERADE");
    }
    for (p, proto) in &published {
        let _ = writeln!(
            s,
            "-A POSTROUTING -s {c1}/32 -d {c1}/32 -p {proto} -m {proto} --dport {p} -j MASQUERADE"
        );
    }
    for (b, _) in &nets {
        let _ = writeln!(s, "-A DOCKER -i {b} -j RETURN");
    }
    for (p, proto) in &published {
        let _ = writeln!(
            s,
            "-A DOCKER ! -i {br} -p {proto} -m {proto} --dport {p} -j DNAT --to-destination {c1}:{p}"
        );
    }
    let _ = writeln!(
        s,
        "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n:DOCKER-USER - [0:0]"
    );
    let _ = writeln!(
        s,
        "-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1"
    );
    for (b, _) in &nets {
        let _ = writeln!(
            s,
            "-A FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        let _ = writeln!(s, "-A FORWARD -o {b} -j DOCKER");
        let _ = writeln!(s, "-A FORWARD -i {b} ! -o {b} -j ACCEPT");
        let _ = writeln!(s, "-A FORWARD -i {b} -o {b} -j ACCEPT");
    }
    for (p, proto) in &published {
        let _ = writeln!(
            s,
            "-A DOCKER -d {c1}/32 ! -i {br} -o {br} -p {proto} -m {proto} --dport {p} -j ACCEPT"
        );
    }
    for (b, _) in &nets {
        let _ = writeln!(
            s,
            "-A DOCKER-ISOLATION-STAGE-1 -i {b} ! -o {b} -j DOCKER-ISOLATION-STAGE-2"
        );
    }
    let _ = writeln!(s, "-A DOCKER-ISOLATION-STAGE-1 -j RETURN");
    for (b, _) in &nets {
        let _ = writeln!(s, "-A DOCKER-ISOLATION-STAGE-2 -o {b} -j DROP");
    }
    let _ = writeln!(
        s,
        "-A DOCKER-ISOLATION-STAGE-2 -j RETURN\n-A DOCKER-USER -j RETURN\nCOMMIT"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_mirrors_docker_and_puts_the_measured_port_last() {
        let r = docker_ruleset(2, 3);
        assert!(r.contains("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER"));
        assert!(r.contains("-A POSTROUTING -s 172.30.0.0/24 ! -o np0 -j MASQUERADE"));
        assert!(r.contains("-A POSTROUTING -s 10.200.1.0/24 ! -o nb1 -j MASQUERADE"));
        assert!(r.contains("-A DOCKER-ISOLATION-STAGE-2 -o nb1 -j DROP"));
        let dnat: Vec<&str> = r.lines().filter(|l| l.contains("DNAT")).collect();
        assert_eq!(dnat.len(), 4, "2 dummies + the measured port, tcp and udp");
        assert!(dnat[2].contains("--dport 5001") && dnat[3].contains("-p udp"));
        // The measured network is the oldest: its rules come last.
        let fw: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A FORWARD -o"))
            .collect();
        assert!(fw.last().unwrap().contains("np0"));
        assert_eq!(r.matches("COMMIT").count(), 2);
    }
}
