//! Port policy on crafted frames (BPF_PROG_TEST_RUN): learning a port's
//! binding, anti-spoofing (IPv4 source, MAC, ARP sender), isolation between
//! networks, ICC and internal networks, each with its drop counter.
//!
//! Loopback (ifindex 1, BPF_PROG_TEST_RUN's skb->dev) plays a port of
//! network 1 (172.30.0.0/24); network 2 is 172.31.0.0/24.

mod harness;

use std::net::Ipv4Addr;

use harness::{
    packet::{self, UDP, frame},
    testrun::{LO, SHOT, TCX_NEXT, drops, in_netns, run},
};
use netpath::{attach::Datapath, plan, state::Dir};
use netpath_common::{DropReason, IfaceInfo, IfaceRole, iface_flags, net_flags};

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
        let spec = plan::network_spec(&format!("np{id}"), subnet, None).unwrap();
        dp.maps
            .networks
            .insert(id, spec.to_info(90 + id, flags), 0)
            .unwrap();
        dp.maps.add_subnet(spec.subnet, id).unwrap();
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
fn arp(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
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
        assert_eq!((port.ipv4_be, port.mac), (plan::be(C1), MAC));

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
        // Other frames with the right MAC pass, with another MAC they do not.
        let mut other = udp_to(C1, GW1);
        other[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        assert_eq!(run(&mut dp, Dir::Ingress, &other, 1).0, TCX_NEXT);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &with_src_mac(other, other_mac), 1).0,
            SHOT
        );
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
