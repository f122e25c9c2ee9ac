//! What a port may claim over IPv6 (found by a red-team pass): never
//! another port's or a bridge's link-local address, also before their
//! owner spoke; one MAC per port, pinned by its first IPv6 packet; nothing
//! learnt from a packet that is dropped; no upper-layer header read from
//! Ethernet padding. Same topology as `ipv6` (loopback plays a port of
//! network 1).

use crate::harness;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use harness::testrun::{LO, SHOT, TCX_NEXT, drops, in_netns, run};
use netpath::{attach::Datapath, lab::frames, state::Dir};
use netpath_common::{
    DropReason, Endpoint, Lease, MacKey, iface_flags,
    v6::{Addr6Key, eui64_link_local, port6_flags},
};

use crate::ipv6::{ALL_NODES, BRIDGE_MAC, MAC, NEIGHBOUR_MAC, RA, datapath, echo, frame6, ip, nd};

/// The bridge of network 1's ifindex in these tests.
const BRIDGE: u32 = 91;

fn ll_of(mac: &[u8; 6]) -> String {
    Ipv6Addr::from(eui64_link_local(mac)).to_string()
}

fn mac_key(mac: [u8; 6]) -> MacKey {
    MacKey { mac, _pad: [0; 2] }
}

/// `frame6` from another source MAC.
fn frame6_from(src_mac: [u8; 6], dst: &str, payload_of: &str) -> Vec<u8> {
    let mut f = echo(ALL_NODES, payload_of, dst);
    f[6..12].copy_from_slice(&src_mac);
    f
}

/// A neighbour port (ifindex 5) as `connect` leaves it: its MAC in
/// `NP_MACS`, its global address and its MAC's link-local address bound;
/// it has not sent anything yet.
fn add_neighbour(dp: &mut Datapath) {
    dp.maps.macs.insert(mac_key(NEIGHBOUR_MAC), 5, 0).unwrap();
    dp.maps
        .v6
        .bind(1, 5, ip("fd00:30::3"), NEIGHBOUR_MAC, Lease::default())
        .unwrap();
}

/// What the reconcile records of the interfaces: the port (loopback),
/// the neighbour (5) and the bridge are network 1's; `want` are the
/// bridge's own addresses.
fn reserve(dp: &mut Datapath, want: &BTreeMap<Addr6Key, Endpoint>) {
    let net_of = BTreeMap::from([(LO, 1), (5, 1), (BRIDGE, 1)]);
    dp.maps
        .v6
        .sync_endpoints(&net_of, &BTreeSet::from([BRIDGE]), want)
        .unwrap();
}

fn endpoint(dp: &Datapath, addr: &str) -> Option<Endpoint> {
    dp.maps
        .v6
        .endpoints
        .get(&Addr6Key::of(&ip(addr).octets(), 1), 0)
        .ok()
}

#[test]
fn a_port_cannot_take_or_probe_a_neighbours_or_a_bridges_link_local_address() {
    require_root!();
    in_netns("v6claim", |pins| {
        let mut dp = datapath(pins, 0);
        add_neighbour(&mut dp);
        // The bridge's actual link-local address is not always the EUI-64
        // of its MAC (stable-privacy, random): the reconcile records it.
        let stable = "fe80::b1:1234:5678:9abc";
        let ep = Endpoint {
            ifindex: BRIDGE,
            net_id: 1,
            mac: BRIDGE_MAC,
            _pad: [0; 2],
        };
        let want = BTreeMap::from([(Addr6Key::of(&ip(stable).octets(), 1), ep)]);
        reserve(&mut dp, &want);
        let own = ll_of(&MAC);
        let theirs = [ll_of(&NEIGHBOUR_MAC), ll_of(&BRIDGE_MAC), stable.to_owned()];
        for target in &theirs {
            // Sending from it, advertising it, probing for it.
            let e = echo(ALL_NODES, target, "ff02::1");
            assert_eq!(run(&mut dp, Dir::Ingress, &e, 1).0, SHOT, "from {target}");
            let na = frame6(ALL_NODES, &own, "ff02::1", 58, &nd(136, target, Some(MAC)));
            assert_eq!(run(&mut dp, Dir::Ingress, &na, 1).0, SHOT, "NA {target}");
            let dad = frame6(
                ALL_NODES,
                "::",
                "ff02::1:ff00:3",
                58,
                &nd(135, target, None),
            );
            assert_eq!(run(&mut dp, Dir::Ingress, &dad, 1).0, SHOT, "DAD {target}");
        }
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 3);
        assert_eq!(drops(&dp, 1, DropReason::NdSpoof), 6);
        // Nothing was recorded for the port: the neighbour keeps its own
        // address (bound with it), the bridge keeps its own.
        assert_eq!(endpoint(&dp, &theirs[0]).map(|e| e.ifindex), Some(5));
        assert_eq!(endpoint(&dp, &theirs[1]), None);
        assert_eq!(endpoint(&dp, stable).map(|e| e.ifindex), Some(BRIDGE));
        let port = dp.maps.v6.ports.get(&LO, 0).unwrap_or_default();
        assert_eq!(port.flags & port6_flags::LINK_LOCAL_LEARNED, 0);
        // Its own EUI-64 address, and one other free link-local, it may.
        for src in [own.as_str(), "fe80::77"] {
            let e = echo(ALL_NODES, src, "ff02::1");
            assert_eq!(run(&mut dp, Dir::Ingress, &e, 1).0, TCX_NEXT, "{src}");
            assert_eq!(endpoint(&dp, src).map(|e| e.ifindex), Some(LO), "{src}");
        }
        // A bridge address gone from the bridge is forgotten.
        reserve(&mut dp, &BTreeMap::new());
        assert_eq!(endpoint(&dp, stable), None);
    });
}

#[test]
fn ipv6_pins_an_unbound_ports_mac_so_it_cannot_rotate_macs() {
    require_root!();
    in_netns("v6pin", |pins| {
        let mut dp = datapath(pins, 0);
        let mut passed = Vec::new();
        for i in 0..64u8 {
            let mac = [0x02, 0xee, 0, 0, 1, i];
            let f = frame6_from(mac, "ff02::1", &ll_of(&mac));
            if run(&mut dp, Dir::Ingress, &f, 1).0 == TCX_NEXT {
                passed.push(mac);
            }
        }
        let first = [0x02, 0xee, 0, 0, 1, 0];
        assert_eq!(passed, [first], "one MAC only, the first");
        assert_eq!(drops(&dp, 1, DropReason::SpoofedMac), 63);
        let info = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_eq!(info.mac, first);
        assert_eq!(info.flags & iface_flags::MAC_FIXED, iface_flags::MAC_PINNED);
        assert_eq!(dp.maps.macs.get(&mac_key(first), 0).unwrap(), LO);
        let recorded = dp.maps.v6.endpoints.keys().filter_map(Result::ok).count();
        assert_eq!(recorded, 1, "only the pinned MAC's link-local");
        // The table is not filled: `connect` still binds elsewhere.
        dp.maps
            .v6
            .bind(
                2,
                77,
                ip("fd00:31::2"),
                [2, 0, 0, 0, 0, 0x77],
                Lease::default(),
            )
            .unwrap();

        // IPv4 comes later: learnt with the pinned MAC, not another.
        let (src, gw) = (Ipv4Addr::new(172, 30, 0, 5), Ipv4Addr::new(172, 30, 0, 1));
        let udp = frames::udp(src, gw, 4000, 53, b"q", true);
        let v4 = |mac| {
            let f = frames::frame(frames::UDP, src, gw, &udp, 1, 0);
            frames::with_macs(f, BRIDGE_MAC, mac)
        };
        assert_eq!(run(&mut dp, Dir::Ingress, &v4(MAC), 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedMac), 64);
        assert_eq!(run(&mut dp, Dir::Ingress, &v4(first), 1).0, TCX_NEXT);
        let info = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_eq!((info.ipv4_be, info.mac), (u32::from(src).to_be(), first));
        assert_ne!(info.flags & iface_flags::LEARNED, 0);
    });
}

#[test]
fn a_dropped_packet_teaches_its_port_nothing() {
    require_root!();
    in_netns("v6nolearn", |pins| {
        let mut dp = datapath(pins, 0);
        // A Router Advertisement from a fresh global address, a packet from
        // a fresh link-local address to another network's container: both
        // dropped.
        let ra = frame6(ALL_NODES, "fd00:30::7", "ff02::1", 58, &RA);
        assert_eq!(run(&mut dp, Dir::Ingress, &ra, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::RouterAdvert), 1);
        let out = echo(BRIDGE_MAC, "fe80::dead", "fd00:31::2");
        assert_eq!(run(&mut dp, Dir::Ingress, &out, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Isolation), 1);
        assert_eq!(dp.maps.v6.ports.get(&LO, 0).ok(), None);
        assert_eq!(dp.maps.v6.endpoints.keys().count(), 0);
        let info = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_eq!(info.flags & iface_flags::MAC_FIXED, 0, "no MAC pinned");
        // An unsolicited advertisement of the address it sends from, its
        // first packet from it: passes, and the address is learnt.
        let na = frame6(
            ALL_NODES,
            "fd00:30::7",
            "ff02::1",
            58,
            &nd(136, "fd00:30::7", Some(MAC)),
        );
        assert_eq!(run(&mut dp, Dir::Ingress, &na, 1).0, TCX_NEXT);
        let port = dp.maps.v6.ports.get(&LO, 0).unwrap();
        assert_eq!(port.global, ip("fd00:30::7").octets());
        assert_eq!(endpoint(&dp, "fd00:30::7").map(|e| e.ifindex), Some(LO));
    });
    // IPv4 the same: a packet to another network's container is isolated
    // and teaches the unbound port neither address nor MAC.
    in_netns("v4nolearn", |pins| {
        let mut dp = datapath(pins, 0);
        let (src, other) = (Ipv4Addr::new(172, 30, 0, 5), Ipv4Addr::new(172, 31, 0, 2));
        let udp = frames::udp(src, other, 4000, 53, b"q", true);
        let f = frames::frame(frames::UDP, src, other, &udp, 1, 0);
        let f = frames::with_macs(f, BRIDGE_MAC, MAC);
        assert_eq!(run(&mut dp, Dir::Ingress, &f, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Isolation), 1);
        let info = dp.maps.ifaces.get(&LO, 0).unwrap();
        assert_eq!((info.flags & iface_flags::MAC_FIXED, info.ipv4_be), (0, 0));
        assert!(dp.maps.endpoints4.get(&u32::from(src).to_be(), 0).is_err());
    });
}

#[test]
fn a_bridge_address_a_port_took_first_goes_to_the_bridge() {
    require_root!();
    in_netns("v6brtaken", |pins| {
        let mut dp = datapath(pins, 0);
        // The container takes fe80::1 before its bridge has it...
        let taken = "fe80::1";
        let e = echo(ALL_NODES, taken, "ff02::1");
        assert_eq!(run(&mut dp, Dir::Ingress, &e, 1).0, TCX_NEXT);
        // ... then the address is added to the bridge, and the reconcile
        // records it as the bridge's.
        let ep = Endpoint {
            ifindex: BRIDGE,
            net_id: 1,
            mac: BRIDGE_MAC,
            _pad: [0; 2],
        };
        let want = BTreeMap::from([(Addr6Key::of(&ip(taken).octets(), 1), ep)]);
        reserve(&mut dp, &want);
        // The port may no longer send from it or advertise it.
        let na = frame6(
            ALL_NODES,
            &ll_of(&MAC),
            "ff02::1",
            58,
            &nd(136, taken, Some(MAC)),
        );
        assert_eq!(run(&mut dp, Dir::Ingress, &na, 1).0, SHOT, "NA");
        assert_eq!(run(&mut dp, Dir::Ingress, &e, 1).0, SHOT, "echo");
        assert_eq!(drops(&dp, 1, DropReason::NdSpoof), 1);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 1);
        assert_eq!(endpoint(&dp, taken).map(|e| e.ifindex), Some(BRIDGE));
    });
}

#[test]
fn no_upper_layer_header_is_read_from_ethernet_padding() {
    require_root!();
    in_netns("v6pad", |pins| {
        let mut dp = datapath(pins, 0);
        let ll = ll_of(&MAC);
        // A first fragment whose header chain ends at the payload's end
        // (Fragment, then Destination Options naming ICMPv6), padding
        // after it that reads as an echo request; the RA would come in the
        // next fragment.
        let mut p = vec![60, 0, 0, 1, 0, 0, 0x12, 0x34];
        p.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
        let mut first = frame6(ALL_NODES, &ll, "ff02::1", 44, &p);
        first.extend_from_slice(&[128, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(run(&mut dp, Dir::Ingress, &first, 1).0, SHOT);
        // An ICMPv6 message shorter than its 4-byte header, padded.
        let mut short = frame6(ALL_NODES, &ll, "ff02::1", 58, &[128, 0]);
        short.extend_from_slice(&[0; 16]);
        assert_eq!(run(&mut dp, Dir::Ingress, &short, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Malformed), 2);
    });
}

#[test]
fn router_only_messages_are_refused_and_mld_reports_pass() {
    require_root!();
    in_netns("v6router", |pins| {
        let mut dp = datapath(pins, 0);
        let ll = ll_of(&MAC);
        // MLD query (general), router renumbering, multicast router
        // advertisement and termination: a router's to send, not a
        // container's.
        let query = [130u8, 0, 0, 0, 0, 10, 0, 0]
            .iter()
            .copied()
            .chain([0; 16])
            .collect::<Vec<_>>();
        for (ty, msg) in [
            (130, query.clone()),
            (138, vec![138, 0, 0, 0, 0, 0, 0, 0]),
            (151, vec![151, 20, 0, 0, 0, 0, 0, 0]),
            (153, vec![153, 0, 0, 0]),
        ] {
            let f = frame6(ALL_NODES, &ll, "ff02::1", 58, &msg);
            assert_eq!(run(&mut dp, Dir::Ingress, &f, 1).0, SHOT, "type {ty}");
        }
        // From :: too (an MLD query may come from the unspecified address).
        let f = frame6(ALL_NODES, "::", "ff02::1", 58, &query);
        assert_eq!(run(&mut dp, Dir::Ingress, &f, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::RouterAdvert), 5);
        // An MLDv2 report (143) with no records, and a multicast router
        // solicitation (152): a host's to send.
        for msg in [vec![143u8, 0, 0, 0, 0, 0, 0, 0], vec![152, 0, 0, 0]] {
            let f = frame6(ALL_NODES, &ll, "ff02::16", 58, &msg);
            assert_eq!(
                run(&mut dp, Dir::Ingress, &f, 1).0,
                TCX_NEXT,
                "type {}",
                msg[0]
            );
        }
    });
}

#[test]
fn a_port_cannot_take_the_link_local_address_of_a_mac_not_plugged_in_yet() {
    require_root!();
    in_netns("v6squat", |pins| {
        let mut dp = datapath(pins, 0);
        // A MAC nobody has yet (Docker's follow the address: a container
        // can guess the next one). Holding its EUI-64 address first would
        // let the port answer the owner's duplicate address detection
        // before netpath binds the owner: sending from it, advertising it
        // and probing for it are refused, and nothing is recorded.
        let future = [0x02, 0, 0, 0, 0, 0x09];
        let ll = ll_of(&future);
        let e = echo(ALL_NODES, &ll, "ff02::1");
        assert_eq!(run(&mut dp, Dir::Ingress, &e, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 1);
        let own = ll_of(&MAC);
        let na = frame6(ALL_NODES, &own, "ff02::1", 58, &nd(136, &ll, Some(MAC)));
        assert_eq!(run(&mut dp, Dir::Ingress, &na, 1).0, SHOT, "its NA");
        let dad = frame6(ALL_NODES, "::", "ff02::1:ff00:9", 58, &nd(135, &ll, None));
        assert_eq!(run(&mut dp, Dir::Ingress, &dad, 1).0, SHOT, "its DAD");
        assert_eq!(drops(&dp, 1, DropReason::NdSpoof), 2);
        assert_eq!(endpoint(&dp, &ll), None);
        let port = dp.maps.v6.ports.get(&LO, 0).unwrap_or_default();
        assert_eq!(port.flags & port6_flags::LINK_LOCAL_LEARNED, 0);

        // One an older build let the port learn is taken back when its
        // owner is bound.
        let mut squatted = port;
        squatted.link_local = ip(&ll).octets();
        squatted.flags |= port6_flags::LINK_LOCAL_LEARNED;
        dp.maps.v6.ports.insert(LO, squatted, 0).unwrap();
        let held = Endpoint {
            ifindex: LO,
            net_id: 1,
            mac: MAC,
            _pad: [0; 2],
        };
        let key = Addr6Key::of(&ip(&ll).octets(), 1);
        dp.maps.v6.endpoints.insert(key, held, 0).unwrap();
        dp.maps.macs.insert(mac_key(future), 6, 0).unwrap();
        dp.maps
            .v6
            .bind(1, 6, ip("fd00:30::9"), future, Lease::default())
            .unwrap();
        assert_eq!(endpoint(&dp, &ll).map(|e| e.ifindex), Some(6));
        let port = dp.maps.v6.ports.get(&LO, 0).unwrap_or_default();
        assert_eq!(port.flags & port6_flags::LINK_LOCAL_LEARNED, 0);
        assert_eq!(run(&mut dp, Dir::Ingress, &e, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::SpoofedSource), 2);
    });
}
