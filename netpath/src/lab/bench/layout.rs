//! Where the bench's copies put things: the ports the workloads use and
//! the extra networks of the scale points (what the arms and Docker's
//! ruleset share).

/// The published port every workload measures (TCP and UDP), last in
/// iptables' chains.
pub const PORT: u16 = 5001;
/// The external server's port for the egress (masquerade) workloads.
pub const EXT_PORT: u16 = 6001;
/// First dummy published port (scale points).
pub const DUMMY_BASE: u16 = 20000;
/// The most ports a scale point or the control plane publishes: `PORT`
/// and dummies from `DUMMY_BASE` up.
pub const MOST_PORTS: u32 = 10_000;

/// Extra network `i` of the scale points: its bridge and (IPv4) subnet.
pub fn extra_net(i: u32) -> (String, String) {
    (format!("nb{i}"), format!("10.200.{i}.0/24"))
}

/// The second network of every copy (its container c3 is the `xnet`
/// workloads' client): bridge and subnet.
pub const XNET_BRIDGE: &str = "np1";
pub const XNET_SUBNET: &str = "172.30.1.0/24";
