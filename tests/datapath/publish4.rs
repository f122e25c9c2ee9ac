//! A published port's flow between two containers on crafted frames
//! (BPF_PROG_TEST_RUN): the answer of the container behind the port goes
//! from its port straight to the client's veth peer, with the half of the
//! translation the client's port would have done (its source the published
//! address again) done first, and the flow booked as answered; what cannot
//! go that way (no route the test's namespace knows, a port of another
//! network) keeps to the normal path, untouched.
//!
//! Loopback (ifindex 1) plays the client's port first, then the server's.

use crate::{harness, inbound::tcp, nat::key};

use std::net::Ipv4Addr;

use harness::{
    packet::{self, TCP, parse},
    testrun::{LO, TCX_NEXT, counter, in_netns, run},
};
use netpath::{
    attach::Datapath,
    codec,
    publish::{self, Ports},
    spec,
    state::Dir,
};
use netpath_common::{
    Endpoint, IfaceInfo, IfaceRole, counter_kind, counter_scope, ct::ct_flags, owner,
};

const U: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const C1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
/// TC_ACT_REDIRECT: what `bpf_redirect_peer` returns.
const REDIRECT: u32 = 7;
/// The MACs: c1's (what `packet::frame` writes as the source), c2's, and
/// the gateway's (the bridge).
const C1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const C2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
/// The client's port (c2's), besides loopback.
const C2_PORT: u32 = harness::testrun::PEER_IFINDEX;

fn port(net_id: u32) -> IfaceInfo {
    IfaceInfo {
        role: IfaceRole::Port as u32,
        net_id,
        ..Default::default()
    }
}

fn datapath(pins: &std::path::Path) -> Datapath {
    let mut dp = Datapath::load_with_pins(pins).expect("loading");
    for (id, subnet) in [(1, "172.30.0.0/24"), (2, "172.31.0.0/24")] {
        let spec =
            spec::NetworkSpec::new(&format!("np{id}"), subnet.parse().unwrap(), None).unwrap();
        dp.maps
            .networks
            .insert(id, spec.to_info(90 + id, 0), 0)
            .unwrap();
        dp.maps.add_subnet(spec.subnet().unwrap(), id).unwrap();
    }
    dp.maps.hostaddrs4.insert(codec::be(U), 2, 0).unwrap();
    let p = Ports {
        host_addr: None,
        host_first: 8085,
        host_last: 8085,
        proto: TCP,
        target: C1,
        target_first: 80,
    };
    publish::insert(&mut dp.maps, &p, owner::USER).expect("publishing");
    dp
}

#[test]
fn a_published_ports_answer_to_a_neighbour_goes_port_to_port_translated() {
    require_root!();
    in_netns("pub4", |pins| {
        let mut dp = datapath(pins);
        // c2 (at loopback, its port) opens the flow to the published port.
        dp.maps.ifaces.insert(LO, port(1), 0).unwrap();
        let syn = packet::with_macs(tcp(C2, U, 40000, 8085, SYN), GW_MAC, C2_MAC);
        let (v, out) = run(&mut dp, Dir::Ingress, &syn, 1);
        assert_eq!(v, TCX_NEXT, "c1's endpoint is not known yet: the bridge");
        let p = parse(&out);
        assert_eq!((p.dst, p.dport), (C1, 80), "translated at c2's port");

        // Now loopback is c1's port, and c2 sits at port 42.
        dp.maps.ifaces.insert(LO, port(1), 0).unwrap();
        dp.maps.ifaces.insert(C2_PORT, port(1), 0).unwrap();
        let c2 = Endpoint {
            ifindex: C2_PORT,
            net_id: 1,
            mac: C2_MAC,
            _pad: [0; 2],
        };
        dp.maps.endpoints4.insert(codec::be(C2), c2, 0).unwrap();
        let fast =
            |dp: &Datapath| counter(dp, counter_scope::NETWORK, 1, counter_kind::NET_C2C_FAST);

        // The answer addressed to the gateway's MAC would be routed: the
        // test's namespace has no route to the bridge (ifindex 91), so
        // the normal path, the packet as c1 sent it (c2's port translates).
        let routed = packet::with_macs(tcp(C1, C2, 80, 40000, SYN | ACK), GW_MAC, C1_MAC);
        let (v, out) = run(&mut dp, Dir::Ingress, &routed, 1);
        assert_eq!((v, &out), (TCX_NEXT, &routed), "no route: untouched");
        assert_eq!(fast(&dp).0, 0);

        // Addressed to c2 itself on its network: switched, port to port.
        let answer = packet::with_macs(tcp(C1, C2, 80, 40000, SYN | ACK), C2_MAC, C1_MAC);
        let (v, out) = run(&mut dp, Dir::Ingress, &answer, 1);
        assert_eq!(v, REDIRECT, "handed to c2's veth peer");
        let p = parse(&out);
        assert_eq!(
            (p.src, p.sport, p.dst, p.dport),
            (U, 8085, C2, 40000),
            "c2 sees the address it dialled"
        );
        packet::assert_checksums(&out, false);
        assert_eq!(
            out[..12],
            answer[..12],
            "switched: the MACs as c1 wrote them"
        );
        assert_eq!(out[22], answer[22], "switched: no hop taken (TTL)");
        assert_eq!(fast(&dp), (1, answer.len() as u64));
        assert_eq!(
            counter(&dp, counter_scope::IFACE, C2_PORT, counter_kind::IF_EGRESS).0,
            1,
            "counted as delivered at c2's port"
        );
        // Booked as answered, as c2's port's egress would have booked it.
        let original = key(C2, U, 40000, 8085, TCP);
        let e = dp.maps.ct4.get(&original, 0).expect("the flow");
        assert_ne!(e.flags & ct_flags::SEEN_REPLY, 0, "{e:?}");

        // c2's port in another network (being moved): the bridge's way.
        dp.maps.ifaces.insert(C2_PORT, port(2), 0).unwrap();
        let (v, out) = run(&mut dp, Dir::Ingress, &answer, 1);
        assert_eq!((v, &out), (TCX_NEXT, &answer), "a port of another network");
        assert_eq!(fast(&dp).0, 1);
    });
}
