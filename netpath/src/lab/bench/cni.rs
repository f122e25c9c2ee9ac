//! The CNI pair: the reference `bridge` (with `ipMasq`) + `portmap`
//! plugins, which program iptables, against netpath's plugin, on the same
//! topology (a host namespace with an uplink to an external one, one
//! container namespace at a time), both driven by [`crate::lab::cni`] as a
//! runtime drives them. Measured: ADD and DEL of one container with 1, 100
//! and 1,000 port mappings (`--quick`: 1 and 10), the first ADD (which
//! also brings the network up) apart (portmap writes rules per mapping; netpath
//! writes map entries), and, with one mapping, request/response latency and
//! the connection rate from the external namespace through the hostPort.
//! Arms are interleaved per repetition.

use std::{path::PathBuf, time::Duration, time::Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::{Value, json};

use super::load;
use crate::lab::{
    cni::{Container, PortMapping, Runtime, netns_path},
    topology::{Lab, Netns},
};

/// Which plugins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Plugins {
    /// `bridge` (ipMasq) + `portmap`: iptables.
    Reference,
    /// `netpath`, standalone.
    Netpath,
}

impl Plugins {
    pub fn name(self) -> &'static str {
        match self {
            Self::Reference => "bridge+portmap",
            Self::Netpath => "netpath",
        }
    }
}

/// One measurement of one pair member.
#[derive(Clone, Debug, Serialize)]
pub struct CniSample {
    pub plugins: Plugins,
    /// `first add ms (network up)`, `add ms`, `del ms` (with `mappings`),
    /// `rr p50 us`, `rr p99 us`, `conn/s`.
    pub what: &'static str,
    pub mappings: u32,
    pub values: Vec<f64>,
}

const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;

/// One member's topology: host and external namespaces, the plugin dir.
struct Side {
    plugins: Plugins,
    /// Held for its drop (`netpath down --all`, then the namespace goes).
    _host: Netns,
    ext: Netns,
    runtime: Runtime,
    list: Value,
    dir: PathBuf,
    next: usize,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Side {
    fn new(plugins: Plugins, exe: &std::path::Path) -> Result<Self> {
        let (host, ext) = Lab::host_and_ext("cni-host", "cni-ext", exe, "uplink0")?;
        host.sysctl("net.ipv4.ip_forward", "1")?;
        let dir = std::env::temp_dir().join(format!("np-bench-{}", host.name));
        std::fs::create_dir_all(dir.join("bin"))?;
        std::os::unix::fs::symlink(exe, dir.join("bin/netpath")).context("linking the plugin")?;
        let ipam = json!({
            "type": "host-local",
            "subnet": "10.88.0.0/16",
            "dataDir": dir.join("ipam"),
            "routes": [{"dst": "0.0.0.0/0"}],
        });
        let plugins_list = match plugins {
            Plugins::Reference => json!([
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "ipam": ipam},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            ]),
            Plugins::Netpath => json!([
                {"type": "netpath", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                 "ipam": ipam, "capabilities": {"portMappings": true}},
            ]),
        };
        let list = json!({"cniVersion": "1.0.0", "name": "bench", "plugins": plugins_list});
        let mut env = Vec::new();
        if let Some(cg) = &host.cgroup {
            env.push(("NETPATH_CGROUP".to_owned(), cg.display().to_string()));
        }
        let runtime = Runtime {
            path: vec![dir.join("bin"), PathBuf::from("/usr/lib/cni")],
            host_netns: netns_path(&host.name),
            env,
        };
        Ok(Self {
            plugins,
            _host: host,
            ext,
            runtime,
            list,
            dir,
            next: 0,
        })
    }

    fn container(&mut self) -> Result<(Netns, Container)> {
        let ns = Netns::new("cni-c")?;
        self.next += 1;
        let c = Container {
            id: format!("bench{}", self.next),
            netns: netns_path(&ns.name),
            ifname: "eth0".to_owned(),
        };
        Ok((ns, c))
    }

    /// ADD then DEL of a fresh container with `n` mappings: seconds each.
    fn add_del(&mut self, n: u32) -> Result<(f64, f64)> {
        let (ns, c) = self.container()?;
        let maps: Vec<PortMapping> = (0..n)
            .map(|i| (20_000 + i as u16, CONTAINER_PORT, "tcp"))
            .collect();
        let t = Instant::now();
        self.runtime
            .add(&self.list, &c, &maps)
            .with_context(|| format!("{} ADD", self.plugins.name()))?;
        let add = t.elapsed().as_secs_f64();
        let t = Instant::now();
        self.runtime
            .del(&self.list, &c, &maps)
            .with_context(|| format!("{} DEL", self.plugins.name()))?;
        let del = t.elapsed().as_secs_f64();
        drop(ns);
        Ok((add, del))
    }
}

/// The pair: ADD/DEL at each mapping count, then the traffic workloads.
pub fn measure(
    exe: &std::path::Path,
    quick: bool,
    reps: usize,
    dur: Duration,
) -> Result<Vec<CniSample>> {
    let mut sides = vec![
        Side::new(Plugins::Reference, exe)?,
        Side::new(Plugins::Netpath, exe)?,
    ];
    let counts: &[u32] = if quick { &[1, 10] } else { &[1, 100, 1000] };
    let reps = if quick { 2 } else { reps };
    let mut out: Vec<CniSample> = Vec::new();
    let mut push = |plugins, what, mappings, v: f64| match out
        .iter_mut()
        .find(|s| s.plugins == plugins && s.what == what && s.mappings == mappings)
    {
        Some(s) => s.values.push(v),
        None => out.push(CniSample {
            plugins,
            what,
            mappings,
            values: vec![v],
        }),
    };
    // The first container of a network also brings the network up (for
    // netpath: loading and verifying its programs): its own row, kept out
    // of the per-container figures.
    for side in &mut sides {
        let (add, _) = side.add_del(1)?;
        push(side.plugins, "first add ms (network up)", 1, add * 1e3);
    }
    for &n in counts {
        for rep in 0..reps {
            // Alternate which member goes first.
            let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let side = &mut sides[i];
                let (add, del) = side.add_del(n)?;
                push(side.plugins, "add ms", n, add * 1e3);
                push(side.plugins, "del ms", n, del * 1e3);
            }
        }
    }
    // Traffic through one container's hostPort.
    let mut live = Vec::new();
    for side in &mut sides {
        let (ns, c) = side.container()?;
        let maps = [(HOST_PORT, CONTAINER_PORT, "tcp")];
        side.runtime.add(&side.list, &c, &maps)?;
        live.push((ns, c, maps));
    }
    let dial = std::net::SocketAddrV4::new(
        Lab::UPLINK.parse().context("the uplink address")?,
        HOST_PORT,
    );
    for rep in 0..reps {
        let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (side, (ns, _, _)) = (&sides[i], &live[i]);
            let rtts = load::tcp_rr(ns, CONTAINER_PORT, &side.ext, dial.into(), dur, None)?;
            push(side.plugins, "rr p50 us", 1, load::percentile(&rtts, 50.0));
            push(side.plugins, "rr p99 us", 1, load::percentile(&rtts, 99.0));
            let cps = load::tcp_cps(ns, CONTAINER_PORT, &side.ext, dial.into(), dur)?;
            push(side.plugins, "conn/s", 1, cps);
        }
    }
    for (side, (ns, c, maps)) in sides.iter().zip(live) {
        side.runtime.del(&side.list, &c, &maps)?;
        drop(ns);
    }
    // The host namespaces go with `sides` (netpath down --all first).
    Ok(out)
}
