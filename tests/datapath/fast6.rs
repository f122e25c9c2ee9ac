//! The IPv6 fast path on crafted packets (BPF_PROG_TEST_RUN reports the
//! redirect verdict; the kernel does not carry it out): an answer from
//! outside, once written back at the uplink, handed to the container's
//! veth peer with one hop taken off and the MACs of the last hop (only a
//! frame addressed to the host, with nothing after the packet); an
//! untracked packet between two containers of one network, port to port,
//! unchanged. Every case that must take the normal path does.

use crate::harness;

use std::net::Ipv6Addr;

use harness::testrun::{LO, SHOT, TCX_NEXT, counter, drops, in_netns, run, set_flags};
use netpath::{attach::Datapath, state::Dir};
use netpath_common::{
    DropReason, Endpoint, IfaceInfo, IfaceRole, counter_kind, counter_scope,
    ct::{Tuple as _, ct_dir},
    ct6::CtEntry6,
    net_flags,
    v6::{Addr6Key, eui64_link_local},
};

use crate::ipv6::{MAC, NEIGHBOUR_MAC, datapath, echo, ip};
use crate::nat6::{ACK, SYN, c2, key, nat6_datapath, parsed, r, tcp, u};

/// TC_ACT_REDIRECT, what `bpf_redirect_peer` returns.
const REDIRECT: u32 = 7;
/// The managed port (ifindex) the other container sits behind.
const PEER_PORT: u32 = harness::testrun::PEER_IFINDEX;
const C2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const ETH: usize = 14;
const HOP_LIMIT: usize = ETH + 7;

/// Puts the container with `addr` at managed port [`PEER_PORT`] of
/// network `net_id`.
fn bind(dp: &mut Datapath, addr: &str, mac: [u8; 6], net_id: u32) {
    let ep = Endpoint {
        ifindex: PEER_PORT,
        net_id,
        mac,
        _pad: [0; 2],
    };
    let k = Addr6Key::of(&ip(addr).octets(), net_id);
    dp.maps.v6.endpoints.insert(k, ep, 0).unwrap();
    let port = IfaceInfo {
        role: IfaceRole::Port as u32,
        net_id,
        ..Default::default()
    };
    dp.maps.ifaces.insert(PEER_PORT, port, 0).unwrap();
}

fn delivered_at_peer(dp: &Datapath) -> u64 {
    counter(dp, counter_scope::IFACE, PEER_PORT, counter_kind::IF_EGRESS).0
}

#[test]
fn an_answer_from_outside_goes_from_the_uplink_straight_to_its_container() {
    require_root!();
    in_netns("fast6up", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        bind(&mut dp, "fd00:30::3", C2_MAC, 1);
        let (_, out) = run(&mut dp, Dir::Egress, &tcp(c2(), r(), 40000, 80, SYN), 1);
        let (_, _, port, _) = parsed(&out);
        // Addressed to the host at layer 2 (loopback's MAC, all zeros).
        let for_host = |mut f: Vec<u8>| {
            f[..6].copy_from_slice(&[0; 6]);
            f
        };
        let synack = for_host(tcp(r(), u(), 80, port, SYN | ACK));
        let (v, out) = run(&mut dp, Dir::Ingress, &synack, 1);
        assert_eq!(v, REDIRECT, "handed to C2's veth peer");
        assert_eq!(parsed(&out), (r(), c2(), 80, 40000), "written back");
        crate::nat6::assert_checksum(&out);
        assert_eq!(out[HOP_LIMIT], synack[HOP_LIMIT] - 1, "routed: one hop");
        assert_eq!(&out[..6], &C2_MAC, "to the container's MAC");
        assert_eq!(&out[6..12], &synack[..6], "from the last hop's");
        assert_eq!(delivered_at_peer(&dp), 1, "counted where it is delivered");

        // The normal path for the rest: the written-back packet leaves
        // with its hop limit as it came.
        let ack = |hops: u8| {
            let mut f = for_host(tcp(r(), u(), 80, port, ACK));
            f[HOP_LIMIT] = hops;
            f
        };
        let (v, out) = run(&mut dp, Dir::Ingress, &ack(1), 1);
        assert_eq!(v, TCX_NEXT, "a hop limit that runs out here");
        assert_eq!((out[HOP_LIMIT], parsed(&out).1), (1, c2()));
        // A frame the host would not take in (the kernel forwards only
        // what is addressed to it), and one with bytes after the packet
        // (the kernel trims them before it routes).
        for (dst, why) in [
            ([0x02, 0, 0, 0, 0, 0x09], "another host's MAC"),
            ([0xff; 6], "broadcast"),
            ([0x33, 0x33, 0, 0, 0, 1], "multicast"),
        ] {
            let mut f = ack(64);
            f[..6].copy_from_slice(&dst);
            assert_eq!(run(&mut dp, Dir::Ingress, &f, 1).0, TCX_NEXT, "{why}");
        }
        let mut trailer = ack(64);
        trailer.extend_from_slice(&[0xee; 6]);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &trailer, 1).0,
            TCX_NEXT,
            "a trailer"
        );
        // A port of another network (being moved), or none at all.
        let other = IfaceInfo {
            role: IfaceRole::Port as u32,
            net_id: 2,
            ..Default::default()
        };
        dp.maps.ifaces.insert(PEER_PORT, other, 0).unwrap();
        assert_eq!(run(&mut dp, Dir::Ingress, &ack(64), 1).0, TCX_NEXT);
        dp.maps.ifaces.remove(&PEER_PORT).unwrap();
        assert_eq!(run(&mut dp, Dir::Ingress, &ack(64), 1).0, TCX_NEXT);
        bind(&mut dp, "fd00:30::3", C2_MAC, 1);
        // An internal network takes the long way (its checks at the port).
        set_flags(&mut dp, 1, net_flags::INTERNAL, true);
        assert_eq!(run(&mut dp, Dir::Ingress, &ack(64), 1).0, TCX_NEXT);
        set_flags(&mut dp, 1, net_flags::INTERNAL, false);
        assert_eq!(delivered_at_peer(&dp), 1, "none of those was redirected");
        assert_eq!(run(&mut dp, Dir::Ingress, &ack(64), 1).0, REDIRECT);

        // The host's own traffic is never redirected.
        let host = for_host(tcp(r(), u(), 80, 22, SYN));
        assert_eq!(run(&mut dp, Dir::Ingress, &host, 1), (TCX_NEXT, host));
    });
}

#[test]
fn ipv6_neighbours_on_one_network_go_port_to_port_unchanged() {
    require_root!();
    in_netns("fast6c2c", |pins| {
        let mut dp = datapath(pins, 0);
        let me = "fd00:30::2";
        bind(&mut dp, "fd00:30::3", NEIGHBOUR_MAC, 1);
        let fast =
            |dp: &Datapath| counter(dp, counter_scope::NETWORK, 1, counter_kind::NET_C2C_FAST).0;
        let to_c2 = echo(NEIGHBOUR_MAC, me, "fd00:30::3");
        let (v, out) = run(&mut dp, Dir::Ingress, &to_c2, 1);
        assert_eq!(v, REDIRECT, "handed to the neighbour's veth peer");
        assert_eq!(out, to_c2, "switched, not routed: not a byte changed");
        assert_eq!((fast(&dp), delivered_at_peer(&dp)), (1, 1));

        // A neighbour's link-local address, bound with its network, from
        // the port's own.
        bind(&mut dp, "fe80::3", NEIGHBOUR_MAC, 1);
        let own_ll = Ipv6Addr::from(eui64_link_local(&MAC)).to_string();
        let ll = echo(NEIGHBOUR_MAC, &own_ll, "fe80::3");
        assert_eq!(run(&mut dp, Dir::Ingress, &ll, 1).0, REDIRECT);
        assert_eq!(fast(&dp), 2);

        // The bridge's way for everything else.
        let via_bridge = echo(crate::ipv6::BRIDGE_MAC, me, "fd00:30::3");
        assert_eq!(
            run(&mut dp, Dir::Ingress, &via_bridge, 1).0,
            TCX_NEXT,
            "framed for the bridge (the host routes it)"
        );
        let stale = echo([0x02, 0, 0, 0, 0, 0x77], me, "fd00:30::3");
        assert_eq!(
            run(&mut dp, Dir::Ingress, &stale, 1).0,
            TCX_NEXT,
            "a stale MAC"
        );
        let multicast = echo(crate::ipv6::ALL_NODES, me, "ff02::1");
        assert_eq!(run(&mut dp, Dir::Ingress, &multicast, 1).0, TCX_NEXT);
        // A fragment (a whole datagram in one: fragment header, offset 0).
        let mut frag = vec![58, 0, 0, 0, 0, 0, 0, 9];
        frag.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
        let fragment = crate::ipv6::frame6(NEIGHBOUR_MAC, me, "fd00:30::3", 44, &frag);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &fragment, 1).0,
            TCX_NEXT,
            "a fragment"
        );
        // A flow the tracker knows, either way, goes past the peer's
        // egress program only the long way.
        // (An echo request's tuple: its identifier, 1, as the source port.)
        let forward = key(ip(me), ip("fd00:30::3"), 1, 0, 58);
        let entry = CtEntry6 {
            dir: ct_dir::REPLY,
            net_id: 1,
            ..Default::default()
        };
        for k in [forward, forward.reversed()] {
            dp.maps.v6.ct.insert(k, entry, 0).unwrap();
            assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, TCX_NEXT, "tracked");
            dp.maps.v6.ct.remove(&k).unwrap();
        }
        // Its port moved to another network, or not managed at all.
        let other = IfaceInfo {
            role: IfaceRole::Port as u32,
            net_id: 2,
            ..Default::default()
        };
        dp.maps.ifaces.insert(PEER_PORT, other, 0).unwrap();
        assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, TCX_NEXT);
        dp.maps.ifaces.remove(&PEER_PORT).unwrap();
        assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, TCX_NEXT);
        bind(&mut dp, "fd00:30::3", NEIGHBOUR_MAC, 1);
        // Itself (its own address at its own port) is no neighbour.
        let own = Endpoint {
            ifindex: LO,
            net_id: 1,
            mac: MAC,
            _pad: [0; 2],
        };
        let k = Addr6Key::of(&ip("fd00:30::9").octets(), 1);
        dp.maps.v6.endpoints.insert(k, own, 0).unwrap();
        let to_self = echo(MAC, me, "fd00:30::9");
        assert_eq!(run(&mut dp, Dir::Ingress, &to_self, 1).0, TCX_NEXT);
        assert_eq!(fast(&dp), 2, "none of those took the fast path");

        // ICC off: dropped as before, never redirected; a spoofed source
        // never gets there either.
        set_flags(&mut dp, 1, net_flags::NO_ICC, true);
        assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Icc), 1);
        set_flags(&mut dp, 1, net_flags::NO_ICC, false);
        let spoofed = echo(NEIGHBOUR_MAC, "fd00:30::77", "fd00:30::3");
        assert_eq!(run(&mut dp, Dir::Ingress, &spoofed, 1).0, SHOT);
        assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, REDIRECT);
        assert_eq!(fast(&dp), 3);
    });
}
