//! Startup: how long `netpath up` takes, told apart by what it has to do.
//!
//! - **first up**: a namespace netpath never ran in; it loads and verifies
//!   the programs, creates and pins the maps, creates the bridge and
//!   starts the daemon. One sample is the netpath arm's own first `up`;
//!   outside `--quick`, fresh topologies add more (`reps` in all);
//! - **later up, a new network**: the programs are pinned already; a new
//!   bridge, its links and the daemon's re-apply;
//! - **idempotent up**: `up` of a network that is up, as scripts and the
//!   CNI plugin repeat it: the checks alone;
//! - **a new port enforced**: a veth pair is made and one end joins the
//!   bridge (one `ip -batch`, as a container runtime does it); from then
//!   until netpath's filters run on it both ways, put there by the daemon.
//!
//! Each `up` is the wall time of the command, process start to exit;
//! medians where repeated.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::arms::{ArmLab, UP};
use crate::lab::topology::{self, Lab};

/// One kind of `up`, every sample in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct StartupSample {
    pub what: &'static str,
    pub ms: Vec<f64>,
}

pub const FIRST: &str = "first up (loads and verifies the programs)";
pub const NEW_NETWORK: &str = "later up, a new network";
pub const IDEMPOTENT: &str = "idempotent up (the network is up)";
pub const NEW_PORT: &str =
    "a new port enforced (its veth joins the bridge → netpath's filters on it, by the daemon)";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Measures on `lab` (the netpath arm, built already) and, outside
/// `quick`, on fresh topologies of `exe`. Leaves `reps` (quick: 2) more
/// networks on `lab` (`npst0`, …, 10.201.x.0/24: no other part of the
/// bench uses those names).
pub fn measure(
    lab: &ArmLab,
    exe: &std::path::Path,
    quick: bool,
    reps: usize,
) -> Result<Vec<StartupSample>> {
    let n = if quick { 2 } else { reps };
    let mut first: Vec<f64> = lab.first_up.map(ms).into_iter().collect();
    if !quick {
        for _ in 1..reps {
            let fresh = Lab::new(exe)?;
            let t = Instant::now();
            topology::run(fresh.host.netpath(exe).args(UP))
                .context("first up in a fresh topology")?;
            first.push(ms(t.elapsed()));
        }
    }
    let mut new_net = Vec::new();
    for i in 0..n {
        let (bridge, subnet) = (format!("npst{i}"), format!("10.201.{i}.0/24"));
        let t = Instant::now();
        lab.netpath(&["up", "--bridge", &bridge, "--subnet", &subnet])?;
        new_net.push(ms(t.elapsed()));
    }
    let mut again = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        lab.netpath(&UP)?;
        again.push(ms(t.elapsed()));
    }
    let mut port = Vec::new();
    for i in 0..n.max(3) {
        port.push(ms(port_enforced(lab, i)?));
    }
    Ok(vec![
        StartupSample {
            what: NEW_PORT,
            ms: port,
        },
        StartupSample {
            what: FIRST,
            ms: first,
        },
        StartupSample {
            what: NEW_NETWORK,
            ms: new_net,
        },
        StartupSample {
            what: IDEMPOTENT,
            ms: again,
        },
    ])
}

/// Plugs a new veth into the arm's bridge and times how long until both
/// of netpath's filters are on its bridge end; removes the pair after.
fn port_enforced(lab: &ArmLab, i: usize) -> Result<Duration> {
    let (host_end, peer) = (format!("npvp{i}"), format!("npvq{i}"));
    let ns = lab.lab.host.name.clone();
    let timed = lab.lab.host.run(move || -> Result<Duration> {
        let batch = format!(
            "link add {host_end} type veth peer name {peer}\nlink set {host_end} master {} up\n",
            Lab::BRIDGE
        );
        let mut child = std::process::Command::new("ip")
            .args(["-n", &ns, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running ip -batch")?;
        std::io::Write::write_all(
            &mut child.stdin.take().context("ip's stdin")?,
            batch.as_bytes(),
        )?;
        anyhow::ensure!(child.wait()?.success(), "ip -batch failed");
        let t = Instant::now();
        let name = std::ffi::CString::new(host_end.as_str())?;
        // SAFETY: a valid C string, read by the call only.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "{host_end} not found");
        let ours = |dir| -> Result<bool> {
            Ok(crate::tcfilter::list(ifindex, dir)?
                .iter()
                .any(crate::tcfilter::Filter::is_ours))
        };
        while t.elapsed() < Duration::from_secs(5) {
            if ours(crate::state::Dir::Ingress)? && ours(crate::state::Dir::Egress)? {
                return Ok(t.elapsed());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        anyhow::bail!("{host_end} was not attached within 5 s")
    })??;
    lab.lab.host.ip(&["link", "del", &format!("npvp{i}")])?;
    Ok(timed)
}
