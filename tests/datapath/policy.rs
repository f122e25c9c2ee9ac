//! Port policy on crafted frames (BPF_PROG_TEST_RUN): learning a port's
//! binding, anti-spoofing (IPv4 source, MAC, ARP sender), isolation between
//! networks, ICC and internal networks, each with its drop counter.
//!
//! Loopback (ifindex 1, BPF_PROG_TEST_RUN's skb->dev) plays a port of
//! network 1 (172.30.0.0/24); network 2 is 172.31.0.0/24.

use crate::{harness, nat::key};

use std::net::Ipv4Addr;

use harness::{
    packet::{self, TCP, UDP, frame},
    testrun::{LO, SHOT, TCX_NEXT, counter, drops, in_netns, run, run_from, set_flags},
};
use netpath::{attach::Datapath, codec, spec, state::Dir};
use netpath_common::{
    DropReason, Endpoint, GatewayMode, IfaceInfo, IfaceRole, TargetKey4, counter_kind,
    counter_scope,
    ct::{CtKey4, ct_flags},
    iface_flags, net_flags,
};

const C1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const GW1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const C3: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const GW2: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The source MAC `packet::frame` writes.
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn datapath(pins: &std::path::Path, flags1: u32) -> Datapath {
    let mut dp = Datapath::load_with_pins(pins).expect("loading");
    for (id, subnet, flags) in [(1, "172.30.0.0/24", flags1), (2, "172.31.0.0/24", 0)] {
        let spec =
            spec::NetworkSpec::new(&format!("np{id}"), subnet.parse().unwrap(), None).unwrap();
        dp.maps
            .networks
            .insert(id, spec.to_info(90 + id, flags), 0)
            .unwrap();
        dp.maps.add_subnet(spec.subnet().unwrap(), id).unwrap();
    }
    let port = IfaceInfo {
        role: IfaceRole::Port as u32,
        net_id: 1,
        ..Default::default()
    };
    dp.maps.ifaces.insert(LO, port, 0).unwrap();
    dp
}

fn udp_to(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    frame(
        UDP,
        src,
        dst,
        &packet::udp(src, dst, 1000, 2000, b"x", true),
        1,
        0,
    )
}

fn with_src_mac(mut f: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    f[6..12].copy_from_slice(&mac);
    f
}

/// An ARP request from (`sha`, `spa`) for `tpa`.
pub fn arp(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f.resize(60, 0);
    f
}

#[test]
fn a_port_learns_its_binding_then_drops_spoofed_sources_and_macs() {
    require_root!();
    in_netns("spoof", |pins| {
        let mut dp = datapath(pins, 0);
        // Unbound: a source outside the subnet is not one this network gives out.
        assert_eq!(run(&mut dp, Dir::Ingress, &udp_to(EXT, GW1), 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 1);
        let port = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_eq!(
            port.flags & iface_flags::LEARNED,
            0,
            "nothing learnt from a bad packet"
        );

        // The first good packet binds the port.
        assert_eq!(run(&mut dp, Dir::Ingress, &udp_to(C1, GW1), 1).0, TCX_NEXT);
        let port = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_ne!(port.flags & iface_flags::LEARNED, 0);
        assert_eq!((port.ipv4_be, port.mac), (codec::be(C1), MAC));

        // Then: another source, another MAC, a lying ARP sender.
        assert_eq!(run(&mut dp, Dir::Ingress, &udp_to(C2, GW1), 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 2);
        let other_mac = [0x02, 0, 0, 0, 0, 0x99];
        assert_eq!(
            run(
                &mut dp,
                Dir::Ingress,
                &with_src_mac(udp_to(C1, GW1), other_mac),
                1
            )
            .0,
            SHOT
        );
        assert_eq!(drops(&dp, 1, DropReason::SpoofedMac), 1);
        assert_eq!(run(&mut dp, Dir::Ingress, &arp(MAC, C2, GW1), 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 3);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &arp(MAC, C1, GW1), 1).0,
            TCX_NEXT
        );
        assert_eq!(
            run(
                &mut dp,
                Dir::Ingress,
                &arp(MAC, Ipv4Addr::UNSPECIFIED, C1),
                1
            )
            .0,
            TCX_NEXT,
            "ARP probe"
        );
        // An ARP sender MAC that is not the frame's.
        let mut lying = arp(MAC, C1, GW1);
        lying[22..28].copy_from_slice(&other_mac);
        assert_eq!(run(&mut dp, Dir::Ingress, &lying, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedMac), 2);
    });
}

#[test]
fn destinations_decide_isolation_icc_and_internal() {
    require_root!();
    in_netns("dst", |pins| {
        let mut dp = datapath(pins, 0);
        let verdict = |dp: &mut Datapath, dst| run(dp, Dir::Ingress, &udp_to(C1, dst), 1).0;
        assert_eq!(verdict(&mut dp, C2), TCX_NEXT, "same network, ICC on");
        assert_eq!(verdict(&mut dp, GW1), TCX_NEXT);
        assert_eq!(verdict(&mut dp, EXT), TCX_NEXT);
        assert_eq!(
            verdict(&mut dp, GW2),
            TCX_NEXT,
            "another bridge's gateway is a host address"
        );
        assert_eq!(verdict(&mut dp, C3), SHOT, "another network");
        assert_eq!(drops(&dp, 1, DropReason::Isolation), 1);

        // ICC off, flipped in the map as `network set` does.
        let mut net = dp.maps.networks.get(&1, 0).unwrap();
        net.flags |= net_flags::NO_ICC;
        dp.maps.networks.insert(1, net, 0).unwrap();
        assert_eq!(verdict(&mut dp, C2), SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Icc), 1);
        assert_eq!(verdict(&mut dp, GW1), TCX_NEXT);
        assert_eq!(verdict(&mut dp, EXT), TCX_NEXT);

        // Internal: nothing leaves the subnet, nothing from outside arrives.
        net.flags = net.flags & !net_flags::NO_ICC | net_flags::INTERNAL;
        dp.maps.networks.insert(1, net, 0).unwrap();
        assert_eq!(verdict(&mut dp, EXT), SHOT);
        assert_eq!(verdict(&mut dp, GW2), SHOT);
        assert_eq!(verdict(&mut dp, C2), TCX_NEXT);
        assert_eq!(verdict(&mut dp, GW1), TCX_NEXT);
        assert_eq!(drops(&dp, 1, DropReason::Internal), 2);
        assert_eq!(
            run(&mut dp, Dir::Egress, &udp_to(EXT, C1), 1).0,
            SHOT,
            "delivery from outside"
        );
        assert_eq!(run(&mut dp, Dir::Egress, &udp_to(GW1, C1), 1).0, TCX_NEXT);
        assert_eq!(drops(&dp, 1, DropReason::Internal), 3);
    });
}

/// `frame` with a VLAN tag of ethertype `tpid` inserted after the MACs.
fn tagged(f: &[u8], tpid: u16) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&tpid.to_be_bytes());
    t.extend_from_slice(&[0, 7]);
    t.extend_from_slice(&f[12..]);
    t
}

/// An IPv6 UDP datagram between link-local addresses.
fn ipv6() -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 9, 17, 64]);
    for last in [1u8, 2] {
        f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
    }
    f.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 9, 0, 0, b'x']);
    f
}

fn with_ethertype(mut f: Vec<u8>, t: u16) -> Vec<u8> {
    f[12..14].copy_from_slice(&t.to_be_bytes());
    f
}

#[test]
fn container_ports_carry_untagged_ipv4_and_arp_only() {
    require_root!();
    in_netns("frames", |pins| {
        let mut dp = datapath(pins, 0);
        let ok = udp_to(C1, GW1);
        let single = tagged(&ok, 0x8100);
        let double = tagged(&single, 0x88a8);
        let cases = [
            (single.clone(), DropReason::Vlan),
            (tagged(&ok, 0x88a8), DropReason::Vlan),
            (double, DropReason::Vlan),
            (ipv6(), DropReason::Ipv6),
            (with_ethertype(ok.clone(), 0x88b5), DropReason::Ethertype),
            (with_ethertype(ok.clone(), 0x88cc), DropReason::Ethertype),
        ];
        for dir in [Dir::Ingress, Dir::Egress] {
            for (f, why) in &cases {
                let before = drops(&dp, 1, *why);
                assert_eq!(run(&mut dp, dir, f, 1).0, SHOT, "{why:?} at {dir:?}");
                assert_eq!(
                    drops(&dp, 1, *why),
                    before + 1,
                    "{why:?} counted on the network"
                );
            }
        }
        assert_eq!(
            counter(
                &dp,
                counter_scope::IFACE,
                LO,
                DropReason::Vlan.counter_kind()
            )
            .0,
            6,
            "and on the port"
        );
        // IPv4 and ARP pass both ways.
        assert_eq!(run(&mut dp, Dir::Ingress, &ok, 1).0, TCX_NEXT);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &arp(MAC, C1, GW1), 1).0,
            TCX_NEXT
        );
        assert_eq!(run(&mut dp, Dir::Egress, &udp_to(GW1, C1), 1).0, TCX_NEXT);
        // An IPv4 packet longer than its frame is dropped, not passed on.
        let mut cut = ok.clone();
        cut[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(run(&mut dp, Dir::Ingress, &cut, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Malformed), 1);
    });
}

#[test]
fn no_port_claims_the_gateway_or_another_ports_address() {
    require_root!();
    in_netns("claims", |pins| {
        let mut dp = datapath(pins, 0);
        // Another port (ifindex 42) learnt C2.
        let other = Endpoint {
            ifindex: 42,
            net_id: 1,
            mac: [2, 0, 0, 0, 0, 0x42],
            _pad: [0; 2],
        };
        dp.maps.endpoints4.insert(codec::be(C2), other, 0).unwrap();
        let unbound =
            |dp: &Datapath| dp.maps.ifaces.get(&LO, 0).unwrap().flags & iface_flags::LEARNED == 0;
        for (f, what) in [
            (arp(MAC, GW1, C2), "ARP claiming the gateway"),
            (arp(MAC, C2, GW1), "ARP claiming another port's address"),
            (udp_to(GW1, C2), "IPv4 from the gateway"),
            (udp_to(C2, GW1), "IPv4 from another port's address"),
        ] {
            assert_eq!(run(&mut dp, Dir::Ingress, &f, 1).0, SHOT, "{what}");
            assert!(unbound(&dp), "{what}: nothing learnt");
        }
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 4);
        // The ARP sender MAC must be the frame's even before learning.
        let mut lying = arp(MAC, C1, GW1);
        lying[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
        assert_eq!(run(&mut dp, Dir::Ingress, &lying, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedMac), 1);
        // A probe is no claim; its own address it learns.
        assert_eq!(
            run(
                &mut dp,
                Dir::Ingress,
                &arp(MAC, Ipv4Addr::UNSPECIFIED, GW1),
                1
            )
            .0,
            TCX_NEXT
        );
        assert!(unbound(&dp));
        assert_eq!(
            run(&mut dp, Dir::Ingress, &arp(MAC, C1, GW1), 1).0,
            TCX_NEXT
        );
        assert!(!unbound(&dp));
        assert_eq!(
            dp.maps.endpoints4.get(&codec::be(C1), 0).unwrap().ifindex,
            LO
        );
    });
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    frame(
        TCP,
        src,
        dst,
        &packet::tcp(src, dst, 40000, dport, 0x02, b""),
        1,
        0,
    )
}

fn set_mode(dp: &mut Datapath, m: GatewayMode) {
    let mut net = dp.maps.networks.get(&1, 0).unwrap();
    net.flags = net.flags & !GatewayMode::MASK | m.flags();
    dp.maps.networks.insert(1, net, 0).unwrap();
}

/// What reaches a container through an interface netpath does not manage
/// (ingress ifindex 77) is judged like traffic from outside; the host
/// (no ingress interface) and managed interfaces are trusted (they were
/// checked where the packet came in).
#[test]
fn deliveries_from_unmanaged_interfaces_follow_the_gateway_mode() {
    require_root!();
    const UNMANAGED: u32 = 77;
    const UPLINK: u32 = 5;
    in_netns("deliver", |pins| {
        let mut dp = datapath(pins, 0);
        let uplink = IfaceInfo {
            role: IfaceRole::Uplink as u32,
            ..Default::default()
        };
        dp.maps.ifaces.insert(UPLINK, uplink, 0).unwrap();
        let to_c1 = syn(EXT, C1, 22);
        assert_eq!(
            run_from(&mut dp, Dir::Egress, &to_c1, 0).0,
            TCX_NEXT,
            "the host"
        );
        assert_eq!(
            run_from(&mut dp, Dir::Egress, &to_c1, UPLINK).0,
            TCX_NEXT,
            "an uplink"
        );
        // nat: nothing new from elsewhere.
        assert_eq!(run_from(&mut dp, Dir::Egress, &to_c1, UNMANAGED).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);
        // A managed subnet's source there: a port nobody attached.
        assert_eq!(
            run_from(&mut dp, Dir::Egress, &syn(C2, C1, 22), UNMANAGED).0,
            SHOT
        );
        assert_eq!(
            run_from(&mut dp, Dir::Egress, &arp(MAC, C2, C1), UNMANAGED).0,
            SHOT
        );
        assert_eq!(drops(&dp, 1, DropReason::UnmanagedPort), 2);

        // routed: a published container port (and only that) gets a flow.
        set_mode(&mut dp, GatewayMode::Routed);
        let target = TargetKey4 {
            addr_be: codec::be(C1),
            port_be: 80u16.to_be(),
            proto: TCP,
            _pad: 0,
        };
        dp.maps.targets4.insert(target, 1, 0).unwrap();
        assert_eq!(run_from(&mut dp, Dir::Egress, &to_c1, UNMANAGED).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::NotPublished), 1);
        let to_80 = syn(EXT, C1, 80);
        assert_eq!(
            run_from(&mut dp, Dir::Egress, &to_80, UNMANAGED).0,
            TCX_NEXT
        );
        let k = key(EXT, C1, 40000, 80, TCP);
        let e = dp.maps.ct4.get(&k, 0).expect("an INBOUND flow");
        assert_eq!(e.flags & ct_flags::INBOUND, ct_flags::INBOUND);
        assert_eq!(e.peer, k.reversed(), "tracked, not translated");

        // nat-unprotected: Docker's old behaviour.
        set_mode(&mut dp, GatewayMode::NatUnprotected);
        assert_eq!(
            run_from(&mut dp, Dir::Egress, &to_c1, UNMANAGED).0,
            TCX_NEXT
        );
        // Internal networks take nothing from outside in any mode.
        set_flags(&mut dp, 1, net_flags::INTERNAL, true);
        assert_eq!(run_from(&mut dp, Dir::Egress, &to_c1, UNMANAGED).0, SHOT);
    });
}

/// Before its port learned anything, a container may not borrow another
/// port's or a bridge's MAC (the bridge would move that MAC to it), and
/// may send from 0.0.0.0 only to the limited broadcast (DHCP).
#[test]
fn an_unbound_port_borrows_no_mac_and_sends_from_nowhere_only_to_broadcast() {
    require_root!();
    in_netns("borrow", |pins| {
        let mut dp = datapath(pins, 0);
        let theirs = [0x02, 0, 0, 0, 0, 0xc1];
        let key = netpath_common::MacKey {
            mac: theirs,
            _pad: [0; 2],
        };
        dp.maps.macs.insert(key, 42, 0).unwrap();
        let probe = with_src_mac(arp(theirs, Ipv4Addr::UNSPECIFIED, C2), theirs);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &probe, 1).0,
            SHOT,
            "an ARP probe"
        );
        let ip = with_src_mac(udp_to(C2, GW1), theirs);
        assert_eq!(run(&mut dp, Dir::Ingress, &ip, 1).0, SHOT, "IPv4");
        assert_eq!(drops(&dp, 1, DropReason::SpoofedMac), 2);
        let port = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_eq!(port.flags & iface_flags::LEARNED, 0, "nothing learnt");

        let from_nowhere = |dst| udp_to(Ipv4Addr::UNSPECIFIED, dst);
        assert_eq!(run(&mut dp, Dir::Ingress, &from_nowhere(EXT), 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 1);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &from_nowhere(Ipv4Addr::BROADCAST), 1).0,
            TCX_NEXT,
            "DHCP"
        );
        // Its own MAC learns, and is then its own.
        assert_eq!(run(&mut dp, Dir::Ingress, &udp_to(C1, GW1), 1).0, TCX_NEXT);
        let own = netpath_common::MacKey {
            mac: MAC,
            _pad: [0; 2],
        };
        assert_eq!(dp.maps.macs.get(&own, 0).unwrap(), LO);
    });
}

/// TC_ACT_REDIRECT: what `bpf_redirect_peer` returns (BPF_PROG_TEST_RUN
/// reports the verdict; the kernel does not carry the redirect out).
const REDIRECT: u32 = 7;

#[test]
fn a_neighbour_on_the_same_network_is_reached_port_to_port() {
    require_root!();
    in_netns("c2c", |pins| {
        let mut dp = datapath(pins, 0);
        // C2 is bound at another managed port (ifindex 42) of network 1.
        let c2_mac = [2, 0, 0, 0, 0, 0x42];
        let c2 = Endpoint {
            ifindex: 42,
            net_id: 1,
            mac: c2_mac,
            _pad: [0; 2],
        };
        dp.maps.endpoints4.insert(codec::be(C2), c2, 0).unwrap();
        let port = IfaceInfo {
            role: IfaceRole::Port as u32,
            net_id: 1,
            ..Default::default()
        };
        dp.maps.ifaces.insert(42, port, 0).unwrap();
        let to_c2 = packet::with_macs(udp_to(C1, C2), c2_mac, MAC);
        let fast =
            |dp: &Datapath| counter(dp, counter_scope::NETWORK, 1, counter_kind::NET_C2C_FAST);
        let (verdict, out) = run(&mut dp, Dir::Ingress, &to_c2, 1);
        assert_eq!(verdict, REDIRECT, "handed to C2's veth peer");
        assert_eq!(
            out, to_c2,
            "switched, not routed: not a byte changed (TTL kept)"
        );
        assert_eq!(fast(&dp), (1, to_c2.len() as u64));
        assert_eq!(
            counter(&dp, counter_scope::IFACE, 42, counter_kind::IF_EGRESS).0,
            1,
            "counted as delivered at C2's port"
        );

        // The bridge's way for everything else.
        let to_bridge_mac = packet::with_macs(udp_to(C1, C2), [2, 0, 0, 0, 0, 0x77], MAC);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &to_bridge_mac, 1).0,
            TCX_NEXT,
            "another MAC"
        );
        let broadcast = packet::with_macs(udp_to(C1, C2), [0xff; 6], MAC);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &broadcast, 1).0,
            TCX_NEXT,
            "broadcast"
        );
        let first_fragment = packet::with_macs(
            frame(
                UDP,
                C1,
                C2,
                &packet::udp(C1, C2, 1000, 2000, b"x", true),
                7,
                0x2000,
            ),
            c2_mac,
            MAC,
        );
        assert_eq!(
            run(&mut dp, Dir::Ingress, &first_fragment, 1).0,
            TCX_NEXT,
            "a fragment"
        );
        // A flow the tracker knows goes past C2's egress program.
        let key = key(C1, C2, 1000, 2000, UDP);
        // An untranslated entry (its source written as it is).
        let entry = netpath_common::ct::CtEntry4 {
            peer: CtKey4::new(key.daddr_be, key.saddr_be, key.dport_be, key.sport_be, UDP),
            nat_addr_be: key.saddr_be,
            nat_port_be: key.sport_be,
            net_id: 1,
            ..Default::default()
        };
        dp.maps.ct4.insert(key, entry, 0).unwrap();
        assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, TCX_NEXT, "tracked");
        dp.maps.ct4.remove(&key).unwrap();
        // C2's port being set up in another network, or not a port at all.
        dp.maps
            .ifaces
            .insert(42, IfaceInfo { net_id: 2, ..port }, 0)
            .unwrap();
        assert_eq!(
            run(&mut dp, Dir::Ingress, &to_c2, 1).0,
            TCX_NEXT,
            "port of another network"
        );
        dp.maps.ifaces.remove(&42).unwrap();
        assert_eq!(
            run(&mut dp, Dir::Ingress, &to_c2, 1).0,
            TCX_NEXT,
            "unmanaged port"
        );
        dp.maps.ifaces.insert(42, port, 0).unwrap();
        assert_eq!(fast(&dp).0, 1, "none of those took the fast path");

        // ICC off: dropped as before, never redirected.
        set_flags(&mut dp, 1, net_flags::NO_ICC, true);
        assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Icc), 1);
        set_flags(&mut dp, 1, net_flags::NO_ICC, false);
        // A spoofed source never gets there either.
        let spoofed = packet::with_macs(udp_to(C3, C2), c2_mac, MAC);
        assert_eq!(run(&mut dp, Dir::Ingress, &spoofed, 1).0, SHOT);
        assert_eq!(run(&mut dp, Dir::Ingress, &to_c2, 1).0, REDIRECT);
        assert_eq!(fast(&dp).0, 2);
    });
}
