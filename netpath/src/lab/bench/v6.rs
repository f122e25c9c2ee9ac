//! The IPv6 half of the bench's topology, so every arm runs the same
//! workloads over IPv6 too (the `v6 …` rows): the measured network np0 is
//! dual-stack (fd00:30::/64, gateway `…::1`, c1 `…::2`, c2 `…::3`) and the
//! uplink link carries fd00:ee::/64 (the host `…::1`, ext `…::2`).
//!
//! - **iptables**: Docker's ip6tables ruleset (`--ip6tables`), the IPv4
//!   one translated (`ruleset::docker_ruleset6`). The extra networks of
//!   the scale points are IPv4-only, as in the netpath arm, so Docker
//!   writes no IPv6 rules for them: the IPv6 chains grow with the
//!   published ports, not with the networks.
//! - **netpath**: `up` with both subnets; every published port is also
//!   published on `[::]` to c1's IPv6 address, as `docker run -p` on a
//!   dual-stack network does.
//! - **bare**: plain IPv6 forwarding, ext routing the subnet to the host.

use anyhow::Result;

use crate::lab::topology::Lab;

pub const SUBNET6: &str = "fd00:30::/64";
pub const GATEWAY6: &str = "fd00:30::1";
pub const C1_6: &str = "fd00:30::2";
pub const C2_6: &str = "fd00:30::3";
pub const EXT6: &str = "fd00:ee::2";
pub const UPLINK6: &str = "fd00:ee::1";

/// The addresses every arm needs before its bridge exists: the uplink
/// link's and the containers' (static, without duplicate address
/// detection, with their default route through the gateway).
pub fn addresses(lab: &Lab) -> Result<()> {
    lab.host.ip(&[
        "addr",
        "add",
        &format!("{UPLINK6}/64"),
        "dev",
        "uplink0",
        "nodad",
    ])?;
    lab.ext
        .ip(&["addr", "add", &format!("{EXT6}/64"), "dev", "eth0", "nodad"])?;
    for (c, addr) in [(&lab.c1, C1_6), (&lab.c2, C2_6)] {
        c.ip(&["addr", "add", &format!("{addr}/64"), "dev", "eth0", "nodad"])?;
        c.ip(&[
            "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0",
        ])?;
    }
    Ok(())
}

/// The host side of the iptables and bare arms (netpath's `up` does its
/// own): the gateway on the bridge, IPv6 forwarding, and with `routed`
/// (bare) ext's route to the subnet.
pub fn plain_host(lab: &Lab, routed: bool) -> Result<()> {
    lab.host.ip(&[
        "addr",
        "add",
        &format!("{GATEWAY6}/64"),
        "dev",
        Lab::BRIDGE,
        "nodad",
    ])?;
    lab.host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    if routed {
        lab.ext
            .ip(&["-6", "route", "add", SUBNET6, "via", UPLINK6])?;
    }
    Ok(())
}
