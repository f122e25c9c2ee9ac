//! What comes in through an uplink, on crafted packets (BPF_PROG_TEST_RUN):
//! the sanity checks before any translation (martian and local sources,
//! VLANs), direct routing to containers under each gateway mode, and the
//! filter rules in front of published ports.
//!
//! Loopback (ifindex 1, BPF_PROG_TEST_RUN's skb->dev) plays the uplink with
//! address U. Networks: 1 = 172.30.0.0/24 (nat), 2 = 172.31.0.0/24
//! (routed), 3 = 172.29.0.0/24 (nat, masquerade off).

use crate::{harness, nat::key};

use std::net::Ipv4Addr;

use harness::{
    packet::{
        self, ETH, ICMP, SCTP, SCTP_INIT, SCTP_INIT_ACK, TCP, UDP, echo, frame, icmp, parse, sctp,
        sctp_crc_valid,
    },
    testrun::{LO, SHOT, TCX_NEXT, counter, drops, in_netns, run},
};
use netpath::{
    attach::Datapath,
    codec,
    filter::{self, HostPort, Selectors, Target, Verdict},
    publish::{self, Ports},
    spec,
    state::Dir,
    trusted,
};
use netpath_common::{
    DropReason, GatewayMode, IfaceInfo, IfaceRole, counter_kind, counter_scope, ct::ct_flags,
    net_flags, owner,
};

const U: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const R: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GW1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const C1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const C3: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const C5: Ipv4Addr = Ipv4Addr::new(172, 29, 0, 5);
const TRUSTED: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const SYN: u8 = 0x02;
const SYNACK: u8 = 0x12;

fn datapath(pins: &std::path::Path) -> Datapath {
    let mut dp = Datapath::load_with_pins(pins).expect("loading");
    let uplink = IfaceInfo {
        role: IfaceRole::Uplink as u32,
        ipv4_be: codec::be(U),
        ..Default::default()
    };
    dp.maps.ifaces.insert(LO, uplink, 0).unwrap();
    dp.maps.hostaddrs4.insert(codec::be(U), LO, 0).unwrap();
    for (id, subnet, flags) in [
        (1, "172.30.0.0/24", 0),
        (2, "172.31.0.0/24", GatewayMode::Routed.flags()),
        (3, "172.29.0.0/24", net_flags::NO_MASQUERADE),
    ] {
        let spec =
            spec::NetworkSpec::new(&format!("np{id}"), subnet.parse().unwrap(), None).unwrap();
        dp.maps
            .networks
            .insert(id, spec.to_info(90 + id, flags), 0)
            .unwrap();
        dp.maps.add_subnet(spec.subnet().unwrap(), id).unwrap();
        dp.maps
            .hostaddrs4
            .insert(codec::be(spec.v4.unwrap().gateway), 90 + id, 0)
            .unwrap();
    }
    dp
}

fn publish(dp: &mut Datapath, host_port: u16, target: Ipv4Addr, port: u16) {
    let p = Ports {
        host_addr: None,
        host_first: host_port,
        host_last: host_port,
        proto: TCP,
        target,
        target_first: port,
    };
    publish::insert(&mut dp.maps, &p, owner::USER).expect("publishing");
}

pub(crate) fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame(
        TCP,
        src,
        dst,
        &packet::tcp(src, dst, sport, dport, flags, b""),
        1,
        0,
    )
}

fn uplink_drops(dp: &Datapath, why: DropReason) -> u64 {
    counter(dp, counter_scope::IFACE, LO, why.counter_kind()).0
}

#[test]
fn sources_no_outside_host_sends_from_are_dropped_before_any_translation() {
    require_root!();
    in_netns("sources", |pins| {
        let mut dp = datapath(pins);
        publish(&mut dp, 8080, C1, 80);
        for src in [
            "0.0.0.5",
            "127.0.0.1",
            "224.0.0.5",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            let src: Ipv4Addr = src.parse().unwrap();
            let (v, _) = run(&mut dp, Dir::Ingress, &tcp(src, U, 1234, 8080, SYN), 1);
            assert_eq!(v, SHOT, "martian {src}");
        }
        assert_eq!(uplink_drops(&dp, DropReason::MartianSource), 6);
        for src in [U, GW1, C1] {
            let (v, _) = run(&mut dp, Dir::Ingress, &tcp(src, U, 1234, 8080, SYN), 1);
            assert_eq!(v, SHOT, "local {src}");
        }
        assert_eq!(uplink_drops(&dp, DropReason::LocalSource), 3);
        assert_eq!(
            drops(&dp, 1, DropReason::LocalSource),
            2,
            "the claimed network counts too"
        );
        assert!(
            dp.maps.ct_entries().unwrap().is_empty(),
            "nothing was translated"
        );

        // DHCP towards the limited broadcast is the host's.
        let dhcp = frame(
            UDP,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            &packet::udp(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                68,
                67,
                b"discover",
                true,
            ),
            1,
            0,
        );
        assert_eq!(run(&mut dp, Dir::Ingress, &dhcp, 1).0, TCX_NEXT);
        // A tag the host has no VLAN device for (here: left in the frame).
        let mut tagged = tcp(R, U, 1234, 8080, SYN);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        assert_eq!(run(&mut dp, Dir::Ingress, &tagged, 1).0, SHOT);
        assert_eq!(uplink_drops(&dp, DropReason::Vlan), 1);
        // A real client is translated as ever.
        let (v, out) = run(&mut dp, Dir::Ingress, &tcp(R, U, 1234, 8080, SYN), 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!((parse(&out).dst, parse(&out).dport), (C1, 80));
    });
}

#[test]
fn a_published_sctp_port_is_translated_address_only() {
    require_root!();
    in_netns("sctp-pub", |pins| {
        let mut dp = datapath(pins);
        let p = Ports {
            host_addr: None,
            host_first: 9000,
            host_last: 9000,
            proto: SCTP,
            target: C1,
            target_first: 9000,
        };
        publish::insert(&mut dp.maps, &p, owner::USER).expect("publishing 9000/sctp");
        let moved = Ports {
            target_first: 9001,
            ..p
        };
        let err = publish::insert(&mut dp.maps, &moved, owner::USER).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot change ports"),
            "{err:#}"
        );

        let init = sctp(40000, 9000, 0, SCTP_INIT, b"init");
        let (v, out) = run(&mut dp, Dir::Ingress, &frame(SCTP, R, U, &init, 1, 0), 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(
            packet::parse(&out),
            packet::Parsed {
                src: R,
                dst: C1,
                sport: 40000,
                dport: 9000
            }
        );
        assert!(packet::valid(&out[ETH..ETH + 20]));
        assert_eq!(&out[ETH + 20..], &init[..], "the SCTP packet untouched");
        assert!(sctp_crc_valid(&out[ETH + 20..]));
        // The answer leaves from the host address, bytes untouched.
        let ack = sctp(9000, 40000, 7, SCTP_INIT_ACK, b"ack");
        let (v, back) = run(&mut dp, Dir::Egress, &frame(SCTP, C1, R, &ack, 2, 0), 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(
            (packet::parse(&back).src, packet::parse(&back).sport),
            (U, 9000)
        );
        assert_eq!(&back[ETH + 20..], &ack[..]);
        // The same port over TCP is not published.
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(R, U, 40001, 9000, SYN), 1);
        assert_eq!(v, TCX_NEXT, "a host port of nobody: the host's");
        assert!(dp.maps.ct4.get(&key(R, U, 40001, 9000, TCP), 0).is_err());
    });
}

#[test]
fn a_port_published_on_loopback_is_for_host_processes_only() {
    require_root!();
    in_netns("lo-pub", |pins| {
        let mut dp = datapath(pins);
        let lo = Ipv4Addr::LOCALHOST;
        let p = Ports {
            host_addr: Some(lo),
            host_first: 8093,
            host_last: 8093,
            proto: TCP,
            target: C1,
            target_first: 80,
        };
        publish::insert(&mut dp.maps, &p, owner::USER).expect("publishing 127.0.0.1:8093");
        // A packet from outside to 127.0.0.1 (a martian the kernel drops)
        // is never translated to the container, nor tracked.
        let syn = tcp(R, lo, 40000, 8093, SYN);
        assert_eq!(run(&mut dp, Dir::Ingress, &syn, 1), (TCX_NEXT, syn.clone()));
        assert!(dp.maps.ct4.get(&key(R, lo, 40000, 8093, TCP), 0).is_err());
    });
}

#[test]
fn a_trusted_interface_reaches_published_container_ports_in_nat_mode() {
    require_root!();
    in_netns("trusted", |pins| {
        let mut dp = datapath(pins);
        publish(&mut dp, 8080, C1, 80);
        publish(&mut dp, 8081, C5, 80);
        let lo = |net_id, names: &[&str], dp: &mut Datapath| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let index_of = [("lo".to_owned(), LO)].into_iter().collect();
            trusted::set(&mut dp.maps.trusted, net_id, &names, &index_of).unwrap();
        };
        // Network 1 (nat) trusts an interface that does not exist: no change.
        lo(1, &["vpn0"], &mut dp);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, C1, 40000, 80, SYN), 1).0,
            SHOT
        );
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);

        // Trusting the uplink the packet comes in on: the published
        // container port is reached at the container's address, untranslated
        // and tracked.
        lo(1, &["vpn0", "lo"], &mut dp);
        let syn = tcp(R, C1, 40001, 80, SYN);
        let (v, out) = run(&mut dp, Dir::Ingress, &syn, 1);
        assert_eq!((v, &out), (TCX_NEXT, &syn));
        let e = dp
            .maps
            .ct4
            .get(&key(R, C1, 40001, 80, TCP), 0)
            .expect("an INBOUND flow");
        assert_ne!(e.flags & ct_flags::INBOUND, 0);
        // Only published ports: another port of that container, and ping,
        // are still direct routing.
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, C1, 40002, 81, SYN), 1).0,
            SHOT
        );
        let ping = frame(ICMP, R, C1, &echo(8, 77), 1, 0);
        assert_eq!(run(&mut dp, Dir::Ingress, &ping, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 3);
        // Network 3 does not trust it.
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, C5, 40003, 80, SYN), 1).0,
            SHOT
        );
        assert_eq!(drops(&dp, 3, DropReason::DirectRouting), 1);
        // Untrusted again (an `up` without it): dropped again.
        lo(1, &[], &mut dp);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, C1, 40004, 80, SYN), 1).0,
            SHOT
        );
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 4);
    });
}

#[test]
fn direct_routing_to_containers_follows_each_networks_gateway_mode() {
    require_root!();
    in_netns("direct", |pins| {
        let mut dp = datapath(pins);
        publish(&mut dp, 8080, C1, 80);
        publish(&mut dp, 9090, C3, 80);
        let ping = |dst| frame(ICMP, R, dst, &echo(8, 77), 1, 0);
        let udp = |dst| {
            frame(
                UDP,
                R,
                dst,
                &packet::udp(R, dst, 5000, 53, b"q", true),
                1,
                0,
            )
        };

        // nat: nothing at a container's own address, its published port included.
        for f in [
            tcp(R, C1, 1234, 22, SYN),
            tcp(R, C1, 1234, 80, SYN),
            udp(C1),
            ping(C1),
        ] {
            assert_eq!(run(&mut dp, Dir::Ingress, &f, 1).0, SHOT);
        }
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 4);
        // Neither a later fragment nor an ICMP error about no flow.
        let frag = frame(UDP, R, C1, b"later fragment body", 9, 185);
        let quoted = packet::ipv4_header(TCP, C1, R, 8, 1, 0);
        let mut body = quoted.clone();
        body.extend_from_slice(&[0, 80, 4, 210, 0, 0, 0, 0]);
        let unreach = frame(ICMP, R, C1, &icmp(3, 1, [0; 4], &body), 3, 0);
        for f in [&frag, &unreach] {
            assert_eq!(run(&mut dp, Dir::Ingress, f, 1).0, SHOT);
        }
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 6);
        // A gateway is a host address: the host's business.
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, GW1, 1234, 22, SYN), 1).0,
            TCX_NEXT
        );

        // routed: published container ports and ping, tracked untranslated.
        // (A port published on loopback only is for host processes: it
        // opens nothing.)
        let lo_only = Ports {
            host_addr: Some(Ipv4Addr::LOCALHOST),
            host_first: 7070,
            host_last: 7070,
            proto: TCP,
            target: C3,
            target_first: 22,
        };
        publish::insert(&mut dp.maps, &lo_only, owner::USER).unwrap();
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, C3, 1234, 22, SYN), 1).0,
            SHOT
        );
        assert_eq!(run(&mut dp, Dir::Ingress, &udp(C3), 1).0, SHOT);
        assert_eq!(drops(&dp, 2, DropReason::NotPublished), 2);
        let syn = tcp(R, C3, 1234, 80, SYN);
        let (v, out) = run(&mut dp, Dir::Ingress, &syn, 1);
        assert_eq!((v, &out), (TCX_NEXT, &syn), "let in as it is");
        let e = dp
            .maps
            .ct4
            .get(&key(R, C3, 1234, 80, TCP), 0)
            .expect("a flow");
        assert_ne!(e.flags & ct_flags::INBOUND, 0);
        let answer = tcp(C3, R, 80, 1234, SYNACK);
        let (v, out) = run(&mut dp, Dir::Egress, &answer, 1);
        assert_eq!(
            (v, &out),
            (TCX_NEXT, &answer),
            "the answer leaves untranslated"
        );
        assert_eq!(run(&mut dp, Dir::Ingress, &ping(C3), 1).0, TCX_NEXT);
        let pong = frame(ICMP, C3, R, &echo(0, 77), 1, 0);
        assert_eq!(run(&mut dp, Dir::Egress, &pong, 1).0, TCX_NEXT);

        // nat with masquerade off: the container's flow keeps its address
        // and lets its replies in; nothing else comes in.
        let out_syn = tcp(C5, R, 40000, 443, SYN);
        let (v, out) = run(&mut dp, Dir::Egress, &out_syn, 1);
        assert_eq!((v, &out), (TCX_NEXT, &out_syn));
        let reply = tcp(R, C5, 443, 40000, SYNACK);
        assert_eq!(run(&mut dp, Dir::Ingress, &reply, 1).0, TCX_NEXT);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, C5, 443, 40001, SYNACK), 1).0,
            SHOT
        );
        assert_eq!(drops(&dp, 3, DropReason::DirectRouting), 1);
        let f = dp
            .maps
            .ct4
            .get(&key(C5, R, 40000, 443, TCP), 0)
            .expect("tracked");
        assert_eq!(
            f.flags & (ct_flags::SNAT | ct_flags::DNAT | ct_flags::INBOUND),
            0
        );
        assert_ne!(f.flags & ct_flags::SEEN_REPLY, 0);

        // nat-unprotected: Docker's old behaviour.
        let mut net = dp.maps.networks.get(&1, 0).unwrap();
        net.flags |= GatewayMode::NatUnprotected.flags();
        dp.maps.networks.insert(1, net, 0).unwrap();
        assert_eq!(
            run(&mut dp, Dir::Ingress, &tcp(R, C1, 1234, 22, SYN), 1).0,
            TCX_NEXT
        );
    });
}

fn rule(
    dp: &mut Datapath,
    from: Option<&str>,
    port: Option<u16>,
    to: Option<(Ipv4Addr, Option<u16>)>,
    v: Verdict,
) -> u32 {
    let sel = Selectors {
        network: None,
        from: from.map(|f| filter::parse_cidr(f).unwrap()),
        port: port.map(|port| HostPort { port, proto: TCP }),
        to: to.map(|(addr, port)| Target { addr, port }),
    };
    match filter::add_to(&mut dp.maps, &sel, v, netpath_common::owner::USER).expect("adding a rule")
    {
        filter::Added::New(id) => id,
        filter::Added::Present(id) => panic!("rule {id} was there already"),
    }
}

fn hits(dp: &Datapath, id: u32) -> u64 {
    counter(dp, counter_scope::FILTER, id, counter_kind::FILTER_HITS).0
}

#[test]
fn filter_rules_admit_new_flows_by_the_most_specific_match() {
    require_root!();
    in_netns("filter", |pins| {
        let mut dp = datapath(pins);
        publish(&mut dp, 8080, C1, 80);
        publish(&mut dp, 8081, C1, 81);
        publish(&mut dp, 9090, C3, 80);
        // Each call is a new flow (a new client port), unless `sport` repeats.
        let next = std::cell::Cell::new(2000u16);
        let new_flow = |dp: &mut Datapath, src, dst, dport| {
            next.set(next.get() + 1);
            run(dp, Dir::Ingress, &tcp(src, dst, next.get(), dport, SYN), 1).0
        };
        let verdict = new_flow;
        let trusted = rule(
            &mut dp,
            Some("10.0.0.0/8"),
            Some(8080),
            None,
            Verdict::Allow,
        );
        let closed = rule(&mut dp, None, Some(8080), None, Verdict::Deny);
        assert_eq!(verdict(&mut dp, TRUSTED, U, 8080), TCX_NEXT);
        assert_eq!(verdict(&mut dp, R, U, 8080), SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Filter), 1);
        assert_eq!(verdict(&mut dp, R, U, 8081), TCX_NEXT, "no rule for 8081");
        assert_eq!((hits(&dp, trusted), hits(&dp, closed)), (1, 1));
        // Established flows are not re-judged.
        let again = tcp(TRUSTED, U, 2001, 8080, 0x10);
        assert_eq!(run(&mut dp, Dir::Ingress, &again, 1).0, TCX_NEXT);
        assert_eq!(hits(&dp, trusted), 1);

        // The longer client prefix wins over a rule naming more of the destination.
        let bad_net = rule(&mut dp, Some("198.18.0.0/24"), None, None, Verdict::Deny);
        assert_eq!(verdict(&mut dp, R, U, 8081), SHOT);
        assert_eq!(hits(&dp, bad_net), 1);
        // On the same prefix, naming the container wins.
        rule(&mut dp, Some("198.18.0.2"), None, None, Verdict::Deny);
        rule(
            &mut dp,
            Some("198.18.0.2"),
            None,
            Some((C1, None)),
            Verdict::Allow,
        );
        assert_eq!(verdict(&mut dp, R, U, 8080), TCX_NEXT);

        // A routed network's container port reached directly.
        rule(&mut dp, None, None, Some((C3, Some(80))), Verdict::Deny);
        let other = Ipv4Addr::new(203, 0, 113, 9);
        assert_eq!(verdict(&mut dp, other, C3, 80), SHOT);
        assert_eq!(
            verdict(&mut dp, other, U, 9090),
            SHOT,
            "and through its published port"
        );
        assert_eq!(drops(&dp, 2, DropReason::Filter), 2);

        // Ten thousand rules: the same lookups, the same answers.
        for i in 0..10_000u32 {
            let a = Ipv4Addr::from(0x0b00_0000 + i);
            rule(
                &mut dp,
                Some(&a.to_string()),
                Some(8081),
                None,
                Verdict::Deny,
            );
        }
        assert_eq!(
            verdict(&mut dp, Ipv4Addr::new(11, 0, 39, 15), U, 8081),
            SHOT
        );
        assert_eq!(
            verdict(&mut dp, Ipv4Addr::new(11, 0, 39, 16), U, 8081),
            TCX_NEXT
        );
        assert_eq!(verdict(&mut dp, TRUSTED, U, 8080), TCX_NEXT);
        // Deleting a rule takes it out of the decision.
        let sel = Selectors {
            from: Some(filter::parse_cidr("10.0.0.0/8").unwrap()),
            port: Some(HostPort {
                port: 8080,
                proto: TCP,
            }),
            ..Default::default()
        };
        assert_eq!(filter::delete_from(&mut dp.maps, &sel).unwrap(), trusted);
        let fresh = Ipv4Addr::new(10, 9, 9, 9);
        assert_eq!(verdict(&mut dp, fresh, U, 8080), SHOT);
    });
}
