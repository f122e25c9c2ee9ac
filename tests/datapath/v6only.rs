//! An IPv6-only network on crafted frames (BPF_PROG_TEST_RUN): its record
//! says it has no IPv4 subnet, and its ports carry IPv6 and nothing of
//! IPv4 or ARP, either way, nor does its bridge take any up to the host;
//! each drop counted as `drop_ipv4`. A dual-stack network's port and
//! bridge, fed the same frames, pass them (what the flag changes).
//!
//! Loopback (ifindex 1) plays a port (or the bridge) of network 1
//! (fd00:40::/64 alone); network 2 is 172.31.0.0/24 and fd00:31::/64.

use crate::{
    harness,
    ipv6::{BRIDGE_MAC, MAC, echo},
    policy::arp,
    publish6::become_,
};

use std::net::Ipv4Addr;

use harness::testrun::{LO, SHOT, TCX_NEXT, drops, in_netns, run};
use netpath::{
    attach::Datapath,
    lab::frames::{frame, udp},
    net6::Net6Spec,
    spec,
    state::Dir,
};
use netpath_common::{DropReason, IfaceRole, net_flags};

fn datapath(pins: &std::path::Path) -> Datapath {
    let mut dp = Datapath::load_with_pins(pins).expect("loading");
    let only6 = spec::NetworkSpec::with("np1", None).unwrap();
    dp.maps.networks.insert(1, only6.to_info(91, 0), 0).unwrap();
    dp.maps
        .v6
        .record(
            1,
            &Net6Spec::new("fd00:40::/64".parse().unwrap(), None).unwrap(),
            0,
        )
        .unwrap();
    let dual = spec::NetworkSpec::new("np2", "172.31.0.0/24".parse().unwrap(), None).unwrap();
    dp.maps.networks.insert(2, dual.to_info(92, 0), 0).unwrap();
    dp.maps.add_subnet(dual.subnet().unwrap(), 2).unwrap();
    let v6 = Net6Spec::new("fd00:31::/64".parse().unwrap(), None).unwrap();
    dp.maps.v6.record(2, &v6, 0).unwrap();
    become_(&mut dp, IfaceRole::Port, 1);
    dp
}

/// A UDP datagram from `src` to `dst`, from the port's container's MAC.
fn udp4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = frame(17, src, dst, &udp(src, dst, 68, 67, b"x", true), 1, 0);
    f[6..12].copy_from_slice(&MAC);
    f
}

#[test]
fn an_ipv6_only_network_carries_no_ipv4_or_arp_either_way() {
    require_root!();
    in_netns("v6only", |pins| {
        let mut dp = datapath(pins);
        let info = dp.maps.networks.get(&1, 0).unwrap();
        assert_eq!(info.flags & net_flags::NO_IPV4, net_flags::NO_IPV4);
        assert_eq!((info.subnet_be, info.mask_be, info.gateway_be), (0, 0, 0));
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let ipv4 = [
            // DHCP, an address of no network, one of the other network's.
            udp4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST),
            udp4(a("10.9.0.2"), a("10.9.0.1")),
            udp4(a("172.31.0.9"), a("172.31.0.1")),
            arp(MAC, a("10.9.0.2"), a("10.9.0.1")),
            arp(MAC, Ipv4Addr::UNSPECIFIED, a("10.9.0.2")),
        ];
        // From the container and to it.
        let mut dropped = 0;
        for dir in [Dir::Ingress, Dir::Egress] {
            for (i, f) in ipv4.iter().enumerate() {
                assert_eq!(run(&mut dp, dir, f, 1).0, SHOT, "{dir:?} frame {i}");
                dropped += 1;
                assert_eq!(drops(&dp, 1, DropReason::Ipv4), dropped);
            }
        }
        // Nothing was learnt from them.
        let port = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_eq!((port.ipv4_be, port.flags), (0, 0));
        // IPv6 passes as on any network (learnt, unchanged).
        let e = echo(BRIDGE_MAC, "fd00:40::2", "fd00:40::1");
        assert_eq!(run(&mut dp, Dir::Ingress, &e, 1), (TCX_NEXT, e.clone()));
        let back = echo(MAC, "fd00:40::1", "fd00:40::2");
        assert_eq!(run(&mut dp, Dir::Egress, &back, 1).0, TCX_NEXT);

        // Its bridge takes none of it up to the host (what a port netpath
        // does not manage yet would send): DHCP, ARP from 0.0.0.0.
        become_(&mut dp, IfaceRole::Bridge, 1);
        for f in [&ipv4[0], &ipv4[4]] {
            assert_eq!(run(&mut dp, Dir::Ingress, f, 1).0, SHOT);
        }
        assert_eq!(drops(&dp, 1, DropReason::Ipv4), dropped + 2);

        // The same frames on a dual-stack network's bridge and port are
        // not netpath's IPv4 drops (DHCP and an ARP probe pass unbound).
        become_(&mut dp, IfaceRole::Bridge, 2);
        for f in [&ipv4[0], &ipv4[4]] {
            assert_eq!(run(&mut dp, Dir::Ingress, f, 1).0, TCX_NEXT);
        }
        become_(&mut dp, IfaceRole::Port, 2);
        assert_eq!(run(&mut dp, Dir::Ingress, &ipv4[2], 1).0, TCX_NEXT);
        assert_eq!(drops(&dp, 2, DropReason::Ipv4), 0);
    });
}

/// `tpid` tags (VLAN 0) pushed in front of `f`'s ethertype.
fn tagged(f: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    for t in tpids {
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(&f[12..]);
    out
}

/// What goes up from a bridge came through one of its ports; a managed
/// port passes untagged IPv4, ARP and IPv6 alone, so anything else came
/// through a port netpath does not manage yet, on any network: a tagged
/// frame (the kernel would strip the tags and hand the host what is
/// inside) or another ethertype.
#[test]
fn a_bridge_takes_up_no_tagged_frame_and_no_other_ethertype() {
    require_root!();
    in_netns("brtags", |pins| {
        let mut dp = datapath(pins);
        let dhcp = udp4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST);
        let echo6 = echo(BRIDGE_MAC, "fd00:31::2", "fd00:31::1");
        let mut lldp = dhcp.clone();
        lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        for net in [1, 2] {
            become_(&mut dp, IfaceRole::Bridge, net);
            for (i, f) in [
                tagged(&dhcp, &[0x8100, 0x8100]),
                tagged(&dhcp, &[0x88a8, 0x8100]),
                tagged(&dhcp, &[0x8100]),
                tagged(&echo6, &[0x8100, 0x8100]),
            ]
            .iter()
            .enumerate()
            {
                assert_eq!(
                    run(&mut dp, Dir::Ingress, f, 1).0,
                    SHOT,
                    "net {net} frame {i}"
                );
            }
            assert_eq!(drops(&dp, net, DropReason::Vlan), 4);
            assert_eq!(run(&mut dp, Dir::Ingress, &lldp, 1).0, SHOT, "net {net}");
            assert_eq!(drops(&dp, net, DropReason::UnmanagedPort), 1);
        }
        // Untagged, the dual-stack network's bridge passes DHCP up as before.
        assert_eq!(run(&mut dp, Dir::Ingress, &dhcp, 1).0, TCX_NEXT);
    });
}
