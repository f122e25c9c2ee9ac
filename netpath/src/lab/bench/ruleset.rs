//! Docker 20.10's iptables ruleset for the bench's networks and published
//! ports (see `../shared/reference/docker-iptables.md`: nat DOCKER chain
//! with addrtype LOCAL, MASQUERADE per subnet, hairpin MASQUERADE, filter
//! FORWARD with DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2 and conntrack
//! RELATED,ESTABLISHED), for IPv4 (`iptables-restore`) and, translated,
//! for IPv6 (`ip6tables-restore`, Docker's `--ip6tables`).

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::{Context as _, Result};

use super::{
    layout::{DUMMY_BASE, PORT, XNET_BRIDGE, XNET_SUBNET, extra_net},
    v6,
};
use crate::lab::topology::Lab;

/// One family's ruleset: its networks (bridge, subnet), newest first as
/// Docker inserts them, the measured one (np0) last; the container the
/// ports lead to (c1); what `OUTPUT` leaves to the host (loopback).
struct Family<'a> {
    nets: Vec<(String, String)>,
    c1: &'a str,
    /// c1 as a host route (`/32`, `/128`).
    c1_host: String,
    loopback: &'a str,
}

/// The published ports (port, protocol) of a scale point with `ports`
/// ports: the dummies (tcp), then the measured `PORT`, tcp and udp, last
/// in the chains.
fn published(ports: u32) -> Vec<(u16, &'static str)> {
    let mut published: Vec<(u16, &str)> = (0..ports.saturating_sub(1))
        .map(|i| (DUMMY_BASE + i as u16, "tcp"))
        .collect();
    if ports > 0 {
        published.push((PORT, "tcp"));
        published.push((PORT, "udp"));
    }
    published
}

/// Docker's IPv4 rules for `networks` bridges (np0, then nb1, nb2, …) and
/// the second network np1 (made just after np0), and
/// `ports` published ports to c1.
pub fn docker_ruleset(networks: u32, ports: u32) -> Result<String> {
    let mut nets: Vec<(String, String)> = (1..networks).rev().map(extra_net).collect();
    // The second network, made just after the measured one.
    nets.push((XNET_BRIDGE.to_owned(), XNET_SUBNET.to_owned()));
    nets.push((Lab::BRIDGE.to_owned(), Lab::SUBNET.to_owned()));
    let f = Family {
        nets,
        c1: Lab::C1,
        c1_host: format!("{}/32", Lab::C1),
        loopback: "127.0.0.0/8",
    };
    rules(&f, &published(ports))
}

/// Docker's IPv6 rules for `ports` published ports to c1's IPv6 address.
/// Only np0 is dual-stack (the scale points' extra networks are
/// IPv4-only, and Docker writes a network's IPv6 rules only when it has
/// IPv6).
pub fn docker_ruleset6(ports: u32) -> Result<String> {
    let f = Family {
        nets: vec![(Lab::BRIDGE.to_owned(), v6::SUBNET6.to_owned())],
        c1: v6::C1_6,
        c1_host: format!("{}/128", v6::C1_6),
        loopback: "::1/128",
    };
    rules(&f, &published(ports))
}

fn rules(f: &Family, published: &[(u16, &str)]) -> Result<String> {
    let (c1, c1_host) = (f.c1, &f.c1_host);
    let c1_ip: std::net::IpAddr = c1.parse().with_context(|| format!("address {c1}"))?;
    let br = Lab::BRIDGE;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]"
    );
    let _ = writeln!(s, "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER");
    let _ = writeln!(
        s,
        "-A OUTPUT ! -d {} -m addrtype --dst-type LOCAL -j DOCKER",
        f.loopback
    );
    for (b, sub) in &f.nets {
        let _ = writeln!(s, "-A POSTROUTING -s {sub} ! -o {b} -j MASQUERADE");
    }
    for (p, proto) in published {
        let _ = writeln!(
            s,
            "-A POSTROUTING -s {c1_host} -d {c1_host} -p {proto} -m {proto} --dport {p} -j MASQUERADE"
        );
    }
    for (b, _) in &f.nets {
        let _ = writeln!(s, "-A DOCKER -i {b} -j RETURN");
    }
    for (p, proto) in published {
        let to = SocketAddr::new(c1_ip, *p);
        let _ = writeln!(
            s,
            "-A DOCKER ! -i {br} -p {proto} -m {proto} --dport {p} -j DNAT --to-destination {to}"
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
    for (b, _) in &f.nets {
        let _ = writeln!(
            s,
            "-A FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        let _ = writeln!(s, "-A FORWARD -o {b} -j DOCKER");
        let _ = writeln!(s, "-A FORWARD -i {b} ! -o {b} -j ACCEPT");
        let _ = writeln!(s, "-A FORWARD -i {b} -o {b} -j ACCEPT");
    }
    for (p, proto) in published {
        let _ = writeln!(
            s,
            "-A DOCKER -d {c1_host} ! -i {br} -o {br} -p {proto} -m {proto} --dport {p} -j ACCEPT"
        );
    }
    for (b, _) in &f.nets {
        let _ = writeln!(
            s,
            "-A DOCKER-ISOLATION-STAGE-1 -i {b} ! -o {b} -j DOCKER-ISOLATION-STAGE-2"
        );
    }
    let _ = writeln!(s, "-A DOCKER-ISOLATION-STAGE-1 -j RETURN");
    for (b, _) in &f.nets {
        let _ = writeln!(s, "-A DOCKER-ISOLATION-STAGE-2 -o {b} -j DROP");
    }
    let _ = writeln!(
        s,
        "-A DOCKER-ISOLATION-STAGE-2 -j RETURN\n-A DOCKER-USER -j RETURN\nCOMMIT"
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_mirrors_docker_and_puts_the_measured_port_last() {
        let r = docker_ruleset(2, 3).unwrap();
        assert!(r.contains("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER"));
        assert!(r.contains("-A POSTROUTING -s 172.30.0.0/24 ! -o np0 -j MASQUERADE"));
        assert!(r.contains("-A POSTROUTING -s 10.200.1.0/24 ! -o nb1 -j MASQUERADE"));
        assert!(r.contains("-A DOCKER-ISOLATION-STAGE-2 -o nb1 -j DROP"));
        // The cross-network client's network: no translation from it.
        assert!(r.contains("-A DOCKER -i np1 -j RETURN"));
        let dnat: Vec<&str> = r.lines().filter(|l| l.contains("DNAT")).collect();
        assert_eq!(dnat.len(), 4, "2 dummies + the measured port, tcp and udp");
        assert!(dnat[2].contains("--dport 5001") && dnat[3].contains("-p udp"));
        assert!(dnat[3].ends_with("--to-destination 172.30.0.2:5001"));
        // The measured network is the oldest: its rules come last.
        let fw: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A FORWARD -o"))
            .collect();
        assert!(fw.last().unwrap().contains("np0"));
        assert_eq!(r.matches("COMMIT").count(), 2);
    }

    #[test]
    fn the_ipv6_ruleset_is_the_ipv4_one_translated() {
        let r = docker_ruleset6(2).unwrap();
        assert!(r.contains("-A POSTROUTING -s fd00:30::/64 ! -o np0 -j MASQUERADE"));
        assert!(r.contains("-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER"));
        assert!(r.contains(
            "-A POSTROUTING -s fd00:30::2/128 -d fd00:30::2/128 -p udp -m udp --dport 5001 -j MASQUERADE"
        ));
        let dnat: Vec<&str> = r.lines().filter(|l| l.contains("DNAT")).collect();
        assert_eq!(dnat.len(), 3);
        assert!(dnat[2].contains("-p udp"));
        assert!(dnat[2].ends_with("--to-destination [fd00:30::2]:5001"));
        assert!(r.contains(
            "-A DOCKER -d fd00:30::2/128 ! -i np0 -o np0 -p tcp -m tcp --dport 5001 -j ACCEPT"
        ));
        assert!(r.contains("-A DOCKER-ISOLATION-STAGE-2 -o np0 -j DROP"));
        assert!(!r.contains("172.30.") && !r.contains("nb1"));
        assert_eq!(r.matches("COMMIT").count(), 2);
    }
}
