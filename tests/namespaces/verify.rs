//! Which interfaces a reconcile asks about (`reconcile::Verify`): `up` of
//! one network leaves the others' filters as the last finished reconcile
//! put them, repairs its own network, and asks everything again when no
//! finished reconcile of this build vouches for the namespace.

use crate::harness;

use harness::{Lab, lab_up_with, netpath_ok, tc_programs};

/// c1h's foreign program swap, checked.
fn swap_c1h_ingress(lab: &Lab) {
    crate::foundation::swap_c1h_ingress(&lab.host);
    assert_eq!(c1h_ingress(lab), "netpath_port_eg", "test setup");
}

fn c1h_ingress(lab: &Lab) -> String {
    let progs = tc_programs(&lab.host, "c1h", true);
    assert_eq!(progs.len(), 1, "{progs:?}");
    progs[0].1.clone()
}

fn up(lab: &Lab, bridge: &str, subnet: &str) -> String {
    netpath_ok(
        &lab.host,
        &["up", "--bridge", bridge, "--subnet", subnet, "--no-daemon"],
    )
}

#[test]
fn up_asks_its_own_network_and_what_changed_unless_nothing_vouches() {
    require_root!();
    let lab = lab_up_with(Lab::new(harness::NETPATH).unwrap(), &["--no-daemon"]);
    swap_c1h_ingress(&lab);
    // Another network's `up`: c1h's record did not change, its network is
    // not the one brought up, so c1h is not asked (and stays swapped); the
    // new bridge is attached.
    let out = up(&lab, "br-other", "10.61.0.0/24");
    assert!(!out.contains("c1h"), "{out}");
    assert!(out.contains("br-other: bridge, ingress attached"), "{out}");
    assert_eq!(c1h_ingress(&lab), "netpath_port_eg");
    // The network's own `up` asks its bridge and ports and repairs c1h.
    let out = up(&lab, Lab::BRIDGE, Lab::SUBNET);
    assert!(
        out.contains("c1h: port, ingress replaced by this build, egress unchanged"),
        "{out}"
    );
    assert_eq!(c1h_ingress(&lab), "netpath_port_in");
    // Without the record of a finished reconcile (one that stopped
    // halfway leaves none), any `up` asks every interface.
    swap_c1h_ingress(&lab);
    let seen = lab
        .host
        .run(|| netpath::reconcile::seen_path(netpath::netns::cookie().unwrap()))
        .unwrap();
    assert!(
        seen.exists(),
        "a finished reconcile's record at {}",
        seen.display()
    );
    std::fs::remove_file(&seen).unwrap();
    let out = up(&lab, "br-other", "10.61.0.0/24");
    assert!(
        out.contains("c1h: port, ingress replaced by this build, egress unchanged"),
        "{out}"
    );
    assert_eq!(c1h_ingress(&lab), "netpath_port_in");
}
