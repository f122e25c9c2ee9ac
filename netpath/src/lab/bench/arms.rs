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
    net::{SocketAddrV4, SocketAddrV6},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{proxy, ruleset, v6};
use crate::lab::topology::{self, Lab, Netns};

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

pub use super::layout::{DUMMY_BASE, EXT_PORT, PORT, XNET_BRIDGE, XNET_SUBNET, extra_net};

/// The second network's gateway and its container `c3`.
const XNET_GATEWAY: &str = "172.30.1.1";
const C3: &str = "172.30.1.2";

/// One arm's topology and how it is configured now.
pub struct ArmLab {
    /// The iptables arm's `docker-proxy` for `PORT` (stopped first, before
    /// the namespaces go).
    proxy: Option<proxy::Proxy>,
    pub arm: Arm,
    pub lab: Lab,
    /// The container on the second network (`np1`).
    pub c3: Netns,
    exe: std::path::PathBuf,
    ports: u32,
    networks: u32,
    /// How long this arm's first `netpath up` took (netpath arms): it
    /// loads and verifies the programs.
    pub first_up: Option<Duration>,
}

/// `netpath up` of the measured network, dual-stack (see [`v6`]).
pub const UP: [&str; 7] = [
    "up",
    "--bridge",
    Lab::BRIDGE,
    "--subnet",
    Lab::SUBNET,
    "--subnet",
    v6::SUBNET6,
];

impl ArmLab {
    pub fn build(arm: Arm, exe: &Path) -> Result<Self> {
        let lab = Lab::new(exe)?;
        let mut me = Self {
            proxy: None,
            arm,
            lab,
            c3: Netns::new("c3")?,
            exe: exe.to_owned(),
            ports: 0,
            networks: 1,
            first_up: None,
        };
        v6::addresses(&me.lab)?;
        match arm {
            Arm::Netpath | Arm::Baseline => {
                let t = Instant::now();
                me.netpath(&UP)?;
                me.first_up = Some(t.elapsed());
                me.lab.plug_ports()?;
                me.netpath(&UP)?;
            }
            Arm::Iptables | Arm::Bare => {
                me.plain_bridge(Lab::BRIDGE, "172.30.0.1/24")?;
                me.lab.plug_ports()?;
                me.lab.host.sysctl("net.ipv4.ip_forward", "1")?;
                v6::plain_host(&me.lab, arm == Arm::Bare)?;
                if arm == Arm::Bare {
                    me.lab
                        .ext
                        .ip(&["route", "add", Lab::SUBNET, "via", Lab::UPLINK])?;
                }
            }
        }
        me.publish6()?;
        me.second_network()?;
        Ok(me)
    }

    /// `np1` and its container `c3` (see the module's comment), and the
    /// iptables arm's `docker-proxy` for `PORT` when the binary is here.
    fn second_network(&mut self) -> Result<()> {
        let (host, c3) = (&self.lab.host, &self.c3);
        topology::veth(host, "c3h", c3, "eth0")?;
        c3.ip(&["addr", "add", &format!("{C3}/24"), "dev", "eth0"])?;
        c3.ip(&["route", "add", "default", "via", XNET_GATEWAY])?;
        let up = ["up", "--bridge", XNET_BRIDGE, "--subnet", XNET_SUBNET];
        match self.arm {
            Arm::Netpath | Arm::Baseline => {
                self.netpath(&up)?;
                host.ip(&["link", "set", "c3h", "master", XNET_BRIDGE])?;
                self.netpath(&up)?;
            }
            Arm::Iptables | Arm::Bare => {
                self.plain_bridge(XNET_BRIDGE, &format!("{XNET_GATEWAY}/24"))?;
                host.ip(&["link", "set", "c3h", "master", XNET_BRIDGE])?;
            }
        }
        if self.arm == Arm::Iptables {
            self.proxy = proxy::start(host, PORT, Lab::C1)?;
        }
        Ok(())
    }

    /// What `c3` dials for the container's `PORT` (the `xnet` workloads):
    /// the published port (the uplink's address), c1 itself on bare,
    /// `None` on an iptables arm without `docker-proxy` (Docker's path for
    /// it; its rules alone do not carry it); an error when that proxy no
    /// longer listens.
    pub fn xnet_dial(&self) -> Result<Option<SocketAddrV4>> {
        match (self.arm, &self.proxy) {
            (Arm::Iptables, None) => Ok(None),
            (Arm::Iptables, Some(p)) if !p.listens(PORT) => {
                bail!("{p} no longer listens on {PORT}")
            }
            _ => Ok(Some(self.published())),
        }
    }

    /// The measured port on IPv6 (tcp and udp, to c1's IPv6 address), set
    /// once: the IPv6 rows run at the first scale point (one port, one
    /// network), and neither `set_ports` nor `set_networks` touches it
    /// (`unpublish 5001/tcp` and `iptables-restore` are IPv4's).
    fn publish6(&self) -> Result<()> {
        match self.arm {
            Arm::Netpath | Arm::Baseline => {
                let to = format!("[{}]:{PORT}", v6::C1_6);
                for p in ["tcp", "udp"] {
                    self.netpath(&["publish", &format!("[::]:{PORT}/{p}"), &to])?;
                }
                Ok(())
            }
            Arm::Iptables => {
                let rules = ruleset::docker_ruleset6(1)?;
                restore(&self.lab.host, "ip6tables-restore", &rules, false)
            }
            Arm::Bare => Ok(()),
        }
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

    /// [`ArmLab::published`] on IPv6.
    pub fn published6(&self) -> SocketAddrV6 {
        let ip = match self.arm {
            Arm::Bare => v6::C1_6,
            _ => v6::UPLINK6,
        };
        SocketAddrV6::new(ip.parse().expect("address"), PORT, 0, 0)
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
        let rules = ruleset::docker_ruleset(self.networks, self.ports)?;
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
                // Of each family (an IPv6 container address has a colon).
                let measured = |v6: bool| -> u64 {
                    ports
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| m["host_port"] == PORT)
                        .filter(|m| {
                            m["container_ip"].as_str().is_some_and(|a| a.contains(':')) == v6
                        })
                        .map(|m| m["to_container"]["packets"].as_u64().unwrap_or(0))
                        .sum()
                };
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
                        measured(false),
                    ),
                    (
                        format!("{arm} published [::]:{PORT} packets to container (IPv6)"),
                        measured(true),
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
                    let np1 = status["networks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|n| n["bridge"] == XNET_BRIDGE);
                    v.push((
                        format!("{arm} {XNET_BRIDGE} to the published port, port to port"),
                        np1.map_or(0, |n| n["c2c_fast"]["packets"].as_u64().unwrap_or(0)),
                    ));
                }
                v
            }
            Arm::Iptables => {
                let nat = |tool: &str| -> Result<String> {
                    let out = topology::run(
                        self.lab
                            .host
                            .command(tool)
                            .args(["-t", "nat", "-L", "-v", "-x", "-n"]),
                    )?;
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                };
                let (text, text6) = (nat("iptables")?, nat("ip6tables")?);
                let count = |text: &str, want: &dyn Fn(&str) -> bool| -> u64 {
                    text.lines()
                        .filter(|l| want(l))
                        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                        .sum()
                };
                let dnat = |l: &str| l.contains("DNAT") && l.contains(&format!("dpt:{PORT} "));
                vec![
                    (
                        format!("iptables DNAT rule for {PORT} packets"),
                        count(&text, &dnat),
                    ),
                    (
                        "iptables MASQUERADE for the subnet packets".to_owned(),
                        count(&text, &|l: &str| {
                            l.contains("MASQUERADE") && l.contains(Lab::SUBNET)
                        }),
                    ),
                    (
                        format!("ip6tables DNAT rule for {PORT} packets"),
                        count(&text6, &dnat),
                    ),
                    (
                        "ip6tables MASQUERADE for the subnet packets".to_owned(),
                        count(&text6, &|l: &str| {
                            l.contains("MASQUERADE") && l.contains(v6::SUBNET6)
                        }),
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
                let mut v = Vec::new();
                for tool in ["iptables", "ip6tables"] {
                    let out = topology::run(self.lab.host.command(tool).args(["-t", "nat", "-S"]))?;
                    let rules = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.starts_with("-A"))
                        .count();
                    v.push((format!("bare: {tool} nat rules (must be 0)"), rules as u64));
                }
                v
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
    restore(ns, "iptables-restore", rules, noflush)
}

/// Feeds `rules` to `tool` (`iptables-restore`, `ip6tables-restore`)
/// inside `ns`.
fn restore(ns: &topology::Netns, tool: &str, rules: &str, noflush: bool) -> Result<()> {
    // nsenter rather than `ip netns exec` (which also remounts /sys): the
    // timing is iptables-restore's own.
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name)).arg(tool);
    if noflush {
        cmd.arg("--noflush");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{tool}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
