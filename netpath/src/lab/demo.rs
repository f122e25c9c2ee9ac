//! `netpath demo`: the embedded default job. Builds the standard [`Lab`]
//! topology in fresh namespaces, brings netpath up in the "host" namespace
//! with this very binary, sends real traffic through the programs and shows
//! the counters moving; everything is removed at the end, even on failure.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    dockerlab::{self, Dockerd},
    topology::{self, Lab, Netns},
};

fn netpath(lab: &Lab, args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("locating the netpath binary")?;
    // The host namespace's own cgroup for the socket hooks, never the root.
    let out = topology::run(lab.host.netpath(exe).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(title: &str) {
    println!("\n==> {title}");
}

fn addr(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(
        ip.parse::<Ipv4Addr>().expect("demo addresses are valid"),
        port,
    )
}

pub fn run() -> Result<()> {
    let exe = std::env::current_exe()?;
    step("building the topology in fresh network namespaces");
    let lab = Lab::new(&exe)?;
    println!(
        "  external {} ({}), host {} (uplink0 {}), containers {} ({}) and {} ({})",
        lab.ext.name,
        Lab::EXT,
        lab.host.name,
        Lab::UPLINK,
        lab.c1.name,
        Lab::C1,
        lab.c2.name,
        Lab::C2
    );

    step(&format!(
        "netpath up --bridge {} --subnet {}",
        Lab::BRIDGE,
        Lab::SUBNET
    ));
    print!(
        "{}",
        netpath(
            &lab,
            &["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET]
        )?
    );
    step(
        "plugging the containers into the bridge and re-running up (the enslaved veths become ports)",
    );
    lab.plug_ports()?;
    print!(
        "{}",
        netpath(
            &lab,
            &["up", "--bridge", Lab::BRIDGE, "--subnet", Lab::SUBNET]
        )?
    );

    step("traffic through the datapath");
    let seen = topology::tcp_echo(
        &lab.c2,
        addr("0.0.0.0", 8080),
        &lab.c1,
        addr(Lab::C2, 8080),
        b"hello over the bridge",
    )?;
    println!("  TCP  c1 -> c2:8080        ok (c2 saw {seen})");
    let seen = topology::tcp_echo(
        &lab.ext,
        addr("0.0.0.0", 80),
        &lab.c1,
        addr(Lab::EXT, 80),
        b"hello external",
    )?;
    println!("  TCP  c1 -> external:80    ok (external saw {seen}: masqueraded)");
    if seen.ip().to_string() != Lab::UPLINK {
        bail!("the external side saw {seen}, not the uplink address: no masquerade");
    }
    let seen = topology::udp_echo(
        &lab.ext,
        addr("0.0.0.0", 5353),
        &lab.c2,
        addr(Lab::EXT, 5353),
        b"udp hello",
    )?;
    println!("  UDP  c2 -> external:5353  ok (external saw {seen}: masqueraded)");
    for (what, dst) in [("gateway ", Lab::GATEWAY), ("external", Lab::EXT)] {
        match topology::ping(&lab.c1, dst) {
            Ok(()) => println!("  ICMP c1 -> {what}        ok"),
            Err(e) => println!("  ICMP c1 -> {what}        skipped: {e:#}"),
        }
    }

    step(&format!(
        "netpath publish 8080 {}:80 (like docker run -p 8080:80)",
        Lab::C1
    ));
    print!(
        "{}",
        netpath(&lab, &["publish", "8080", &format!("{}:80", Lab::C1)])?
    );
    let seen = topology::tcp_echo(
        &lab.c1,
        addr("0.0.0.0", 80),
        &lab.ext,
        addr(Lab::UPLINK, 8080),
        b"hello published port",
    )?;
    println!(
        "  TCP  external -> {}:8080   ok (c1 saw {seen}: the real client, no proxy)",
        Lab::UPLINK
    );
    if seen.ip().to_string() != Lab::EXT {
        bail!("c1 saw {seen}, not the external client: the published port is not DNAT-only");
    }
    print!("{}", netpath(&lab, &["ports"])?);

    step("netpath conntrack list (the BPF conntrack table behind masquerade and published ports)");
    print!("{}", netpath(&lab, &["conntrack", "list"])?);

    step("netpath status");
    let status = netpath(&lab, &["status"])?;
    print!("{status}");
    let json: serde_json::Value = serde_json::from_str(&netpath(&lab, &["status", "--json"])?)?;
    let from = json["networks"][0]["from_containers"]["packets"]
        .as_u64()
        .unwrap_or(0);
    if from == 0 {
        bail!("the datapath counted no packets from containers: programs are not in the path");
    }

    step(&format!("netpath down --bridge {}", Lab::BRIDGE));
    print!("{}", netpath(&lab, &["down", "--bridge", Lab::BRIDGE])?);
    drop(lab);
    docker(&exe)?;
    println!("\ndemo done: namespaces removed");
    Ok(())
}

/// `netpath --netns NS ARGS…` (with the namespace's own cgroup).
fn netpath_in(exe: &Path, ns: &Netns, args: &[&str]) -> Result<String> {
    let out = topology::run(ns.netpath(exe).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits up to 10 s for `netpath ports --json` in `ns` to list `n` ports.
fn wait_ports(exe: &Path, ns: &Netns, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(out) = netpath_in(exe, ns, &["ports", "--json"])
            && serde_json::from_str::<Vec<serde_json::Value>>(&out).is_ok_and(|p| p.len() == n)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("netpath docker did not publish/unpublish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The drop-in: a real dockerd without its iptables path, `netpath docker`
/// following it, and `docker run -p` reached from outside. Skipped (said
/// why) when docker.io is not installed.
fn docker(exe: &Path) -> Result<()> {
    step("dockerd --iptables=false --userland-proxy=false, followed by netpath docker");
    if let Some(bin) = dockerlab::missing() {
        println!("  skipped: {bin} is not installed (cargo xtask setup installs docker.io)");
        return Ok(());
    }
    let (host, ext) = Lab::host_and_ext("demo-dk", "demo-dx", exe, "uplink0")?;
    let d = Dockerd::start(
        &host,
        &dockerlab::Engine::INSTALLED,
        &["--iptables=false", "--userland-proxy=false"],
    )?;
    d.import_image()?;
    let log_path = d.dir.join("netpath-docker.log");
    let follower = d.follower(&host, exe, &log_path)?;
    println!(
        "  dockerd {} in {} (uplink0 {}), netpath docker pid {}",
        d.docker(&["version", "--format", "{{.Server.Version}}"])?,
        host.name,
        Lab::UPLINK,
        follower.0.id()
    );
    println!(
        "  $ docker run -d --name web -p 8080:80 {} httpd -f -p 80 -h /www",
        dockerlab::IMAGE
    );
    let run = [
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        dockerlab::IMAGE,
    ];
    d.docker(&[&run[..], &dockerlab::WEB[..]].concat())?;
    let follower_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_ports(exe, &host, 1)
        .with_context(|| format!("netpath docker's log:\n{}", follower_log()))?;
    print!("{}", netpath_in(exe, &host, &["ports"])?);
    let page = ext.run(|| -> Result<String> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect_timeout(
            &addr(Lab::UPLINK, 8080).into(),
            Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })??;
    let status = page.lines().next().unwrap_or_default();
    let body = page.lines().last().unwrap_or_default();
    println!(
        "  HTTP external -> {}:8080   {status}: {body:?}",
        Lab::UPLINK
    );
    if !page.contains("hello from a container") {
        bail!("the published port did not serve web's page: {page:?}");
    }
    let pinged = d
        .docker_try(&["exec", "web", "ping", "-c", "1", "-W", "2", Lab::EXT])?
        .status
        .success();
    println!(
        "  ICMP web -> external          {}",
        if pinged {
            "ok (masqueraded by netpath)"
        } else {
            "FAILED"
        }
    );
    if !pinged {
        bail!("the container could not reach the external host");
    }
    println!("  $ docker rm -f web");
    d.docker(&["rm", "-f", "web"])?;
    wait_ports(exe, &host, 0)
        .with_context(|| format!("netpath docker's log:\n{}", follower_log()))?;
    println!("  netpath docker's log:");
    for l in follower_log().lines() {
        println!("    {l}");
    }
    // Stopped in this order: netpath docker, dockerd, then the namespaces
    // (the host's `netpath down --all` first).
    drop(follower);
    drop(d);
    Ok(())
}
