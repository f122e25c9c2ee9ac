//! Published IPv6 ports on crafted packets (BPF_PROG_TEST_RUN): the exact
//! destination rewrite of a client's packet and the source rewrite of the
//! answer, checksums recomputed from scratch over the pseudo-header, the
//! conntrack entries, the mapping's counters and drops, and the filter
//! rules that apply to IPv6. From outside at the uplink, from a container
//! at its bridge's ingress (another container, and the container reaching
//! itself with its source made the gateway's), the answers at the client's
//! port.
//!
//! The topology is nat6's: loopback is the uplink (U) or, turn by turn,
//! network 1's bridge or port; network 1 (fd00:30::/64, gateway
//! fd00:30::1) masquerades, network 2 (fd00:31::/64) is routed.

use crate::harness;
use crate::nat6::{
    ACK, SYN, assert_checksum, c1, c2, c3, entry, fragment6, ip, key, nat6_datapath, parsed,
    parsed_after_fragment, port_behind_uplink, r, tcp, u,
};

use std::net::Ipv6Addr;

use harness::{
    packet::{self, ETH, TCP, UDP},
    testrun::{LO, SHOT, TCX_NEXT, counter, drops, in_netns, run, run_from},
};
use netpath::{
    attach::Datapath,
    filter::{self, HostPort, Selectors, Verdict},
    lab::frames::frame6,
    publish::v6::{self as publish6, Ports6},
    state::Dir,
};
use netpath_common::{
    DropReason, Endpoint, IfaceInfo, IfaceRole, counter_kind, counter_scope,
    ct::{ct_dir, ct_flags},
    owner,
    v6::Addr6Key,
};

/// The source MAC of `frame6`'s frames.
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Publishes `[::]:host` (every host IPv6 address) to `[target]:port`.
fn publish(dp: &mut Datapath, proto: u8, host: u16, target: Ipv6Addr, port: u16) -> u32 {
    let p = Ports6 {
        host_addr: None,
        host_first: host,
        host_last: host,
        proto,
        target,
        target_first: port,
    };
    publish6::insert(&mut dp.maps, &p, owner::USER).expect("publishing");
    publish6::published(&dp.maps)
        .unwrap()
        .iter()
        .find(|(k, _)| u16::from_be(k.port_be) == host && k.proto == proto)
        .map(|(_, v)| v.id)
        .expect("the mapping's id")
}

/// Loopback takes `role` in network `net_id` (0 for the uplink).
pub fn become_(dp: &mut Datapath, role: IfaceRole, net_id: u32) {
    let info = IfaceInfo {
        role: role as u32,
        net_id,
        ..Default::default()
    };
    dp.maps.ifaces.insert(LO, info, 0).unwrap();
}

/// Records each (address, network) as held by a port of its own (ifindex
/// 10 up) with `frame6`'s MAC, so a bridge takes their packets up.
fn senders(dp: &mut Datapath, who: &[(Ipv6Addr, u32)]) {
    for (i, (c, net_id)) in who.iter().enumerate() {
        let ep = Endpoint {
            ifindex: 10 + i as u32,
            net_id: *net_id,
            mac: MAC,
            _pad: [0; 2],
        };
        let k = Addr6Key::of(&c.octets(), *net_id);
        dp.maps.v6.endpoints.insert(k, ep, 0).unwrap();
    }
}

fn packets(dp: &Datapath, id: u32, kind: u16) -> u64 {
    counter(dp, counter_scope::PUBLISH, id, kind).0
}

fn udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    frame6(
        UDP,
        src,
        dst,
        &packet::udp(src, dst, sport, dport, b"dns?", true),
    )
}

#[test]
fn ipv6_published_ports_are_translated_from_outside_with_exact_rewrites() {
    require_root!();
    in_netns("pub6-uplink", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        // U is a usable host address (as the reconcile records it).
        dp.maps.v6.hostaddrs.insert(u().octets(), LO, 0).unwrap();

        // Nothing published: the host's own port, passed untouched.
        let syn = tcp(r(), u(), 50000, 8080, SYN);
        assert_eq!(run(&mut dp, Dir::Ingress, &syn, 1), (TCX_NEXT, syn.clone()));

        let id = publish(&mut dp, TCP, 8080, c1(), 80);
        let (v, out) = run(&mut dp, Dir::Ingress, &syn, 1);
        assert_eq!(v, TCX_NEXT);
        // Only the destination changes: the client's address is kept.
        assert_eq!(parsed(&out), (r(), c1(), 50000, 80));
        assert_checksum(&out);
        assert_eq!(out.len(), syn.len());
        let o = entry(&dp, &key(r(), u(), 50000, 8080, TCP));
        assert_eq!(
            (o.dir, o.flags & ct_flags::DNAT),
            (ct_dir::ORIGINAL, ct_flags::DNAT)
        );
        assert_eq!(o.peer, key(c1(), r(), 80, 50000, TCP));
        let rep = entry(&dp, &o.peer);
        assert_eq!(rep.dir, ct_dir::REPLY);
        assert_eq!(packets(&dp, id, counter_kind::PUB_IN), 1);

        // The answer leaves from [U]:8080.
        let synack = tcp(c1(), r(), 80, 50000, SYN | ACK);
        let (v, out) = run(&mut dp, Dir::Egress, &synack, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed(&out), (u(), r(), 8080, 50000));
        assert_checksum(&out);
        assert_eq!(packets(&dp, id, counter_kind::PUB_OUT), 1);
        // The client's next packet follows its flow.
        let (_, out) = run(&mut dp, Dir::Ingress, &tcp(r(), u(), 50000, 8080, ACK), 1);
        assert_eq!(parsed(&out), (r(), c1(), 50000, 80));
        assert_checksum(&out);

        // UDP the same way; another port of the host is its own.
        let uid = publish(&mut dp, UDP, 5353, c2(), 53);
        let (_, out) = run(&mut dp, Dir::Ingress, &udp(r(), u(), 40000, 5353), 1);
        assert_eq!(parsed(&out), (r(), c2(), 40000, 53));
        assert_checksum(&out);
        let (_, out) = run(&mut dp, Dir::Egress, &udp(c2(), r(), 53, 40000), 1);
        assert_eq!(parsed(&out), (u(), r(), 5353, 40000));
        assert_checksum(&out);
        assert_eq!(packets(&dp, uid, counter_kind::PUB_OUT), 1);
        let other = udp(r(), u(), 40000, 5354);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &other, 1),
            (TCX_NEXT, other.clone())
        );
        // A published port is TCP's or UDP's, not both.
        let wrong = tcp(r(), u(), 40001, 5353, SYN);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &wrong, 1),
            (TCX_NEXT, wrong.clone())
        );

        // Outside straight at the container's port: not asked for (nat).
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(r(), c1(), 50001, 80, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);
        // A managed source from outside is a spoof, published port or not.
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(c2(), u(), 50002, 8080, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::LocalSource), 1);
        // A routed network takes its published container ports straight,
        // and only those.
        publish(&mut dp, TCP, 9090, c3(), 80);
        let direct = tcp(r(), c3(), 50003, 80, SYN);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &direct, 1),
            (TCX_NEXT, direct.clone())
        );
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(r(), c3(), 50004, 81, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 2, DropReason::NotPublished), 1);

        // A filter rule on the host port refuses new IPv6 flows (counted);
        // one naming an IPv4 client does not apply to them.
        let sel = |from: Option<&str>| Selectors {
            network: None,
            from: from.map(|f| filter::parse_cidr(f).unwrap()),
            port: Some(HostPort {
                port: 8080,
                proto: TCP,
            }),
            to: None,
        };
        filter::add_to(
            &mut dp.maps,
            &sel(Some("0.0.0.0/1")),
            Verdict::Deny,
            owner::USER,
        )
        .unwrap();
        let (_, out) = run(&mut dp, Dir::Ingress, &tcp(r(), u(), 50005, 8080, SYN), 1);
        assert_eq!(parsed(&out), (r(), c1(), 50005, 80));
        filter::add_to(&mut dp.maps, &sel(None), Verdict::Deny, owner::USER).unwrap();
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(r(), u(), 50006, 8080, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Filter), 1);
        assert!(
            dp.maps
                .v6
                .ct
                .get(&key(r(), u(), 50006, 8080, TCP), 0)
                .is_err()
        );
        // The flows it found already go on.
        let (_, out) = run(&mut dp, Dir::Ingress, &tcp(r(), u(), 50000, 8080, ACK), 1);
        assert_eq!(parsed(&out), (r(), c1(), 50000, 80));

        // A target network made internal (as a CNI mapping may find it):
        // its published ports take no new flow.
        let mut net = dp.maps.networks.get(&1, 0).unwrap();
        net.flags |= netpath_common::net_flags::INTERNAL;
        dp.maps.networks.insert(1, net, 0).unwrap();
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(r(), u(), 50008, 8080, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Internal), 1);
        net.flags &= !netpath_common::net_flags::INTERNAL;
        dp.maps.networks.insert(1, net, 0).unwrap();

        // A mapping on ::1 is for host processes only: a packet from
        // outside to ::1 (a martian) is never translated, nor tracked.
        let p = Ports6 {
            host_addr: Some(Ipv6Addr::LOCALHOST),
            host_first: 8089,
            host_last: 8089,
            proto: TCP,
            target: c1(),
            target_first: 80,
        };
        publish6::insert(&mut dp.maps, &p, owner::USER).expect("publishing [::1]:8089");
        let lo = tcp(r(), Ipv6Addr::LOCALHOST, 50009, 8089, SYN);
        assert_eq!(run(&mut dp, Dir::Ingress, &lo, 1), (TCX_NEXT, lo.clone()));
        let k = key(r(), Ipv6Addr::LOCALHOST, 50009, 8089, TCP);
        assert!(dp.maps.v6.ct.get(&k, 0).is_err());

        // A host address the reconcile no longer lists leads nowhere.
        dp.maps.v6.hostaddrs.remove(&u().octets()).unwrap();
        let late = tcp(r(), u(), 50007, 5353, SYN);
        let late_udp = udp(r(), u(), 40002, 5353);
        assert_eq!(run(&mut dp, Dir::Ingress, &late, 1), (TCX_NEXT, late));
        assert_eq!(
            run(&mut dp, Dir::Ingress, &late_udp, 1),
            (TCX_NEXT, late_udp)
        );
    });
}

#[test]
fn containers_reach_ipv6_published_ports_at_the_bridge_and_themselves_through_the_gateway() {
    require_root!();
    in_netns("pub6-bridge", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        dp.maps.v6.hostaddrs.insert(u().octets(), 7, 0).unwrap();
        let id = publish(&mut dp, TCP, 8080, c1(), 80);
        let gw = ip("fd00:30::1");
        senders(&mut dp, &[(c1(), 1), (c2(), 1), (c3(), 2)]);

        // A neighbour (C2) to [U]:8080: at the bridge's ingress its packet
        // is sent to C1:80, its source kept.
        become_(&mut dp, IfaceRole::Bridge, 1);
        let (v, out) = run(&mut dp, Dir::Ingress, &tcp(c2(), u(), 41000, 8080, SYN), 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed(&out), (c2(), c1(), 41000, 80));
        assert_checksum(&out);
        // A source no port holds is refused before any flow is made.
        let stranger = ip("fd00:30::99");
        let (v, _) = run(
            &mut dp,
            Dir::Ingress,
            &tcp(stranger, u(), 41000, 8080, SYN),
            1,
        );
        assert_eq!(v, SHOT);
        assert!(
            dp.maps
                .v6
                .ct
                .get(&key(stranger, u(), 41000, 8080, TCP), 0)
                .is_err()
        );
        // C1's answer, bridged to C2's port: its source becomes [U]:8080.
        become_(&mut dp, IfaceRole::Port, 1);
        let (v, out) = run(
            &mut dp,
            Dir::Egress,
            &tcp(c1(), c2(), 80, 41000, SYN | ACK),
            1,
        );
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed(&out), (u(), c2(), 8080, 41000));
        assert_checksum(&out);
        // C2's next packet, delivered at C1's port as it was sent by the
        // bridge: passed unchanged.
        let next = tcp(c2(), c1(), 41000, 80, ACK);
        assert_eq!(run(&mut dp, Dir::Egress, &next, 1), (TCX_NEXT, next));

        // C1 to its own published port: the destination half at the
        // bridge, the source half (the gateway) at its port.
        become_(&mut dp, IfaceRole::Bridge, 1);
        let (_, mid) = run(&mut dp, Dir::Ingress, &tcp(c1(), u(), 42000, 8080, SYN), 1);
        assert_eq!(parsed(&mid), (c1(), c1(), 42000, 80));
        assert_checksum(&mid);
        let o = entry(&dp, &key(c1(), u(), 42000, 8080, TCP));
        assert_eq!(
            o.flags & (ct_flags::DNAT | ct_flags::SNAT),
            ct_flags::DNAT | ct_flags::SNAT
        );
        assert_eq!(o.peer, key(c1(), gw, 80, 42000, TCP));
        assert_eq!(
            entry(&dp, &key(c1(), c1(), 42000, 80, TCP)).dir,
            ct_dir::MID
        );
        assert_eq!(
            entry(&dp, &key(c1(), c1(), 80, 42000, TCP)).dir,
            ct_dir::MID
        );
        become_(&mut dp, IfaceRole::Port, 1);
        let (_, out) = run(&mut dp, Dir::Egress, &mid, 1);
        assert_eq!(parsed(&out), (gw, c1(), 42000, 80));
        assert_checksum(&out);
        // Its answer to the gateway goes up through the bridge, comes back
        // down to its port, and arrives from [U]:8080.
        become_(&mut dp, IfaceRole::Bridge, 1);
        let (_, back) = run(
            &mut dp,
            Dir::Ingress,
            &tcp(c1(), gw, 80, 42000, SYN | ACK),
            1,
        );
        assert_eq!(parsed(&back), (c1(), c1(), 80, 42000));
        assert_checksum(&back);
        become_(&mut dp, IfaceRole::Port, 1);
        let (_, out) = run(&mut dp, Dir::Egress, &back, 1);
        assert_eq!(parsed(&out), (u(), c1(), 8080, 42000));
        assert_checksum(&out);
        assert_eq!(packets(&dp, id, counter_kind::PUB_IN), 2);
        // Booked as answered once, where the answer matched the REPLY
        // entry (the bridge); its port's egress found the MID one.
        let o = entry(&dp, &key(c1(), u(), 42000, 8080, TCP));
        assert_ne!(o.flags & ct_flags::SEEN_REPLY, 0, "{o:?}");
        assert_eq!(entry(&dp, &o.peer).packets, 1, "the answer, once");

        // At the bridge: another network's container (C3, routed) reaches
        // it too, while the host's own ports stay the host's.
        become_(&mut dp, IfaceRole::Bridge, 2);
        let (_, out) = run(&mut dp, Dir::Ingress, &tcp(c3(), u(), 43000, 8080, SYN), 1);
        assert_eq!(parsed(&out), (c3(), c1(), 43000, 80));
        let own = tcp(c3(), u(), 43001, 22, SYN);
        assert_eq!(run(&mut dp, Dir::Ingress, &own, 1), (TCX_NEXT, own));

        // An internal network reaches no host port, published or not.
        let mut net = dp.maps.networks.get(&2, 0).unwrap();
        net.flags |= netpath_common::net_flags::INTERNAL;
        dp.maps.networks.insert(2, net, 0).unwrap();
        let inside = tcp(c3(), u(), 43002, 8080, SYN);
        assert_eq!(run(&mut dp, Dir::Ingress, &inside, 1), (TCX_NEXT, inside));
        assert!(
            dp.maps
                .v6
                .ct
                .get(&key(c3(), u(), 43002, 8080, TCP), 0)
                .is_err()
        );
    });
}

#[test]
fn a_fragmented_datagram_to_an_ipv6_published_port_reaches_its_container_whole() {
    require_root!();
    in_netns("pub6-frag", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        dp.maps.v6.hostaddrs.insert(u().octets(), LO, 0).unwrap();
        publish(&mut dp, UDP, 5353, c1(), 53);
        // R sends a datagram to [U]:5353 in two fragments.
        let payload: Vec<u8> = (0..40u8).collect();
        let datagram = packet::udp(r(), u(), 40000, 5353, &payload, true);
        let id = 0x0bad_cafe;
        let first = fragment6(r(), u(), UDP, 0, true, id, &datagram[..24]);
        let later = fragment6(r(), u(), UDP, 24, false, id, &datagram[24..]);
        let (v, first_out) = run(&mut dp, Dir::Ingress, &first, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed_after_fragment(&first_out), (r(), c1(), 40000, 53));
        let (v, later_out) = run(&mut dp, Dir::Ingress, &later, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed(&later_out).1, c1(), "the later fragment follows");
        let whole = [
            &first_out[harness::packet::ETH + 48..],
            &later_out[harness::packet::ETH + 48..],
        ]
        .concat();
        assert!(harness::packet::l4_valid(r(), c1(), UDP, &whole));
        // At C1's port, from the uplink (ifindex 7): both pass.
        port_behind_uplink(&mut dp, 1);
        assert_eq!(run_from(&mut dp, Dir::Egress, &first_out, 7).0, TCX_NEXT);
        assert_eq!(run_from(&mut dp, Dir::Egress, &later_out, 7).0, TCX_NEXT);
        // A later fragment of no datagram recorded does not.
        let stray = fragment6(r(), c1(), UDP, 24, false, 0x0bad_0000, &datagram[24..]);
        assert_eq!(run_from(&mut dp, Dir::Egress, &stray, 7).0, SHOT);

        // The answers leave in fragments too, every one from [U]:5353:
        // C1's network masquerades, C3's is routed (its address must not
        // leak either).
        publish(&mut dp, UDP, 5354, c3(), 53);
        become_(&mut dp, IfaceRole::Uplink, 0);
        let (_, out) = run(&mut dp, Dir::Ingress, &udp(r(), u(), 40001, 5354), 1);
        assert_eq!(parsed(&out), (r(), c3(), 40001, 53));
        for (c, sport, dport, id) in [
            (c1(), 5353, 40000, 0x0f00_0001),
            (c3(), 5354, 40001, 0x0f00_0002),
        ] {
            let answer = packet::udp(c, r(), 53, dport, &payload, true);
            let first = fragment6(c, r(), UDP, 0, true, id, &answer[..24]);
            let later = fragment6(c, r(), UDP, 24, false, id, &answer[24..]);
            let (v, first_out) = run(&mut dp, Dir::Egress, &first, 1);
            assert_eq!(v, TCX_NEXT);
            assert_eq!(parsed_after_fragment(&first_out), (u(), r(), sport, dport));
            let (v, later_out) = run(&mut dp, Dir::Egress, &later, 1);
            assert_eq!(v, TCX_NEXT);
            assert_eq!(parsed(&later_out).0, u(), "{c}'s later fragment");
            let whole = [&first_out[ETH + 48..], &later_out[ETH + 48..]].concat();
            assert!(harness::packet::l4_valid(u(), r(), UDP, &whole));
        }
    });
}

/// C3 (network 2) sends a datagram in two fragments to [U]:5353, published
/// to C1 (network 1), and C1 answers in two: each later fragment is
/// written as its first fragment was, where it was (the request's
/// destination made C1's at C3's bridge; the answer's source made U's at
/// C3's port), and passes the port it is delivered at, coming from the
/// other network's bridge. Both ends reassemble valid datagrams.
#[test]
fn fragments_between_containers_through_an_ipv6_published_port_follow_their_first() {
    require_root!();
    in_netns("pub6-cfrag", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        dp.maps.v6.hostaddrs.insert(u().octets(), 7, 0).unwrap();
        publish(&mut dp, UDP, 5353, c1(), 53);
        senders(&mut dp, &[(c1(), 1), (c3(), 2)]);
        // The two bridges, where the fragments come to the ports from.
        for (ifindex, net_id) in [(91, 1), (92, 2)] {
            let bridge = IfaceInfo {
                role: IfaceRole::Bridge as u32,
                net_id,
                ..Default::default()
            };
            dp.maps.ifaces.insert(ifindex, bridge, 0).unwrap();
        }
        let payload: Vec<u8> = (0..40u8).collect();
        let ask = packet::udp(c3(), u(), 40000, 5353, &payload, true);
        let answer = packet::udp(c1(), c3(), 53, 40000, &payload, true);
        let c3_to_c1 = (c3(), c1(), 40000, 53);
        let (c1_to_c3, u_to_c3) = ((c1(), c3(), 53, 40000), (u(), c3(), 5353, 40000));
        // (the datagram, its addresses, its bridge's network, the
        // delivering port's, the bridge's ifindex, what the bridge makes of
        // it, what the port makes of it, its id)
        let cases = [
            (&ask, (c3(), u()), 2, 1, 92, c3_to_c1, c3_to_c1, 0x0c0f_0001),
            (
                &answer,
                (c1(), c3()),
                1,
                2,
                91,
                c1_to_c3,
                u_to_c3,
                0x0c0f_0002,
            ),
        ];
        for (datagram, (src, dst), bridge_net, port_net, from, at_bridge, at_port, id) in cases {
            let first = fragment6(src, dst, UDP, 0, true, id, &datagram[..24]);
            let later = fragment6(src, dst, UDP, 24, false, id, &datagram[24..]);
            become_(&mut dp, IfaceRole::Bridge, bridge_net);
            let (v, first_out) = run(&mut dp, Dir::Ingress, &first, 1);
            assert_eq!(v, TCX_NEXT);
            assert_eq!(parsed_after_fragment(&first_out), at_bridge);
            let (v, later_out) = run(&mut dp, Dir::Ingress, &later, 1);
            assert_eq!(v, TCX_NEXT);
            let (s, d, _, _) = parsed(&later_out);
            assert_eq!(
                (s, d),
                (at_bridge.0, at_bridge.1),
                "the later fragment follows"
            );
            // Delivered at the other network's port, from this bridge.
            become_(&mut dp, IfaceRole::Port, port_net);
            let (v, first_out) = run_from(&mut dp, Dir::Egress, &first_out, from);
            assert_eq!(v, TCX_NEXT);
            assert_eq!(parsed_after_fragment(&first_out), at_port);
            let (v, later_out) = run_from(&mut dp, Dir::Egress, &later_out, from);
            assert_eq!(v, TCX_NEXT);
            let (s, d, _, _) = parsed(&later_out);
            assert_eq!((s, d), (at_port.0, at_port.1), "the later fragment follows");
            let whole = [&first_out[ETH + 48..], &later_out[ETH + 48..]].concat();
            assert!(packet::l4_valid(at_port.0, at_port.1, UDP, &whole));
        }
        // A later fragment of no recorded datagram from the other bridge
        // stays refused there.
        let stray = fragment6(c3(), c1(), UDP, 24, false, 0x0c0f_0009, &ask[24..]);
        become_(&mut dp, IfaceRole::Port, 1);
        assert_eq!(run_from(&mut dp, Dir::Egress, &stray, 92).0, SHOT);
    });
}
