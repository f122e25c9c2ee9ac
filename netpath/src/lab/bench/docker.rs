//! The control plane end to end under a real dockerd (the installed one):
//! `docker network create` N times, then `docker run -d -p` N times (one
//! container with one published port on each new network), with
//! dockerd's own iptables path against `--iptables=false
//! --userland-proxy=false` followed by `netpath docker`. What a user
//! waits for is the docker command's wall time; netpath enforces after
//! dockerd has answered, so its arm also reports when `netpath status`
//! and `netpath ports` show all N (the time from the first command).
//! Before the follower starts, `netpath docker --once` reconciles the
//! empty dockerd twice: cold (nothing up in the namespace: its first `up`
//! loads and verifies the programs) and again (programs pinned, docker0
//! up). Each arm runs in namespaces of its own, one after the other.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::arms::Arm;
use crate::lab::{
    dockerlab::{self, Dockerd, Engine, IMAGE, WEB},
    topology::{self, Lab, Netns},
};

/// One timed step of one arm.
#[derive(Clone, Debug, Serialize)]
pub struct DockerStep {
    pub arm: Arm,
    pub what: String,
    pub seconds: f64,
}

/// Networks and containers per arm: `--quick` 5, otherwise 50.
pub fn count(quick: bool) -> u32 {
    if quick { 5 } else { 50 }
}

/// Network `i`'s name and subnet, and its container's published port.
fn network(i: u32) -> (String, String, u16) {
    (
        format!("bn{i}"),
        format!("10.210.{i}.0/24"),
        8100 + i as u16,
    )
}

/// Both arms, iptables first.
pub fn measure(exe: &Path, quick: bool) -> Result<Vec<DockerStep>> {
    let n = count(quick);
    let mut out = Vec::new();
    for arm in [Arm::Iptables, Arm::Netpath] {
        out.extend(one_arm(exe, arm, n).with_context(|| format!("the {} arm", arm.name()))?);
    }
    Ok(out)
}

/// Polls `netpath ARGS --json` until its array (or its `field`) has `n`
/// entries (10 s at most).
fn wait_for(exe: &Path, host: &Netns, args: &[&str], field: Option<&str>, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = topology::run(host.netpath(exe).args(args).arg("--json"))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let list = field.map_or(&v, |f| &v[f]);
        if list.as_array().is_some_and(|a| a.len() == n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("netpath {} did not list {n} within 10 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn one_arm(exe: &Path, arm: Arm, n: u32) -> Result<Vec<DockerStep>> {
    let mut steps = Vec::new();
    let mut step = |what: &str, t: Duration| {
        eprintln!(
            "  docker e2e: {} {what}: {:.3} s",
            arm.name(),
            t.as_secs_f64()
        );
        steps.push(DockerStep {
            arm,
            what: what.to_owned(),
            seconds: t.as_secs_f64(),
        });
    };
    // Dropped in reverse: the follower, then dockerd, then the namespaces
    // (the host's with `netpath down --all` first).
    let (host, _ext) = Lab::host_and_ext("bench-dk", "bench-dx", exe, "uplink0")?;
    let flags: &[&str] = match arm {
        Arm::Iptables => &["--iptables=true"],
        _ => &["--iptables=false", "--userland-proxy=false"],
    };
    let d = Dockerd::start(&host, &Engine::INSTALLED, flags)?;
    d.import_image()?;
    let mut follower = None;
    if arm == Arm::Netpath {
        for what in [
            "netpath docker --once, cold (first up: programs verified)",
            "netpath docker --once, again",
        ] {
            let t = Instant::now();
            topology::run(
                host.netpath(exe)
                    .args(["docker", "--once", "--host", &d.host()]),
            )?;
            step(what, t.elapsed());
        }
        follower = Some(d.follower(&host, exe, &d.dir.join("netpath-docker.log"))?);
    }
    let t = Instant::now();
    for i in 1..=n {
        let (name, subnet, _) = network(i);
        d.docker(&["network", "create", "--subnet", &subnet, &name])?;
    }
    step(&format!("{n} × docker network create"), t.elapsed());
    if arm == Arm::Netpath {
        // docker0 and the new ones.
        wait_for(exe, &host, &["status"], Some("networks"), n as usize + 1)?;
        step(
            &format!("{n} networks enforced by netpath (from the first create)"),
            t.elapsed(),
        );
    }
    let t = Instant::now();
    for i in 1..=n {
        let (name, _, port) = network(i);
        let publish = format!("{port}:80");
        let run = ["run", "-d", "--network", &name, "-p", &publish, IMAGE];
        d.docker(&[&run[..], &WEB[..]].concat())?;
    }
    step(&format!("{n} × docker run -d -p"), t.elapsed());
    match arm {
        Arm::Iptables => {
            // Proof of the path: a DNAT rule per published port.
            let out = topology::run(host.command("iptables").args(["-t", "nat", "-S", "DOCKER"]))?;
            let dnat = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("DNAT"))
                .count();
            if dnat != n as usize {
                bail!("dockerd wrote {dnat} DNAT rules for {n} published ports");
            }
        }
        _ => {
            wait_for(exe, &host, &["ports"], None, n as usize)?;
            step(
                &format!("{n} published ports enforced by netpath (from the first run)"),
                t.elapsed(),
            );
            let out = topology::run(host.command("iptables").args(["-t", "nat", "-S"]))?;
            if String::from_utf8_lossy(&out.stdout).contains("DNAT") {
                bail!("dockerd wrote DNAT rules with --iptables=false");
            }
        }
    }
    drop(follower);
    drop(d);
    Ok(steps)
}

/// Whether the installed dockerd can run here (else the reason).
pub fn unavailable() -> Option<String> {
    dockerlab::missing().map(|bin| format!("{bin} is not installed"))
}
