//! Masquerade on crafted packets (BPF_PROG_TEST_RUN): rewritten bytes,
//! checksums recomputed from scratch, conntrack map contents, ICMP errors
//! with their quoted headers, fragments, and malformed input that must be
//! neither mis-translated nor crash anything.
//!
//! Loopback (ifindex 1 in the test's fresh namespace, BPF_PROG_TEST_RUN's
//! skb->dev) plays the uplink with address U; network 1 is 172.30.0.0/24.

use crate::harness;

use std::net::Ipv4Addr;

use harness::{
    packet::{
        self, ETH, ICMP, SCTP, SCTP_INIT, SCTP_INIT_ACK, TCP, UDP, assert_checksums, be16, echo,
        frame, icmp, ip_of, parse, sctp, sctp_crc_valid,
    },
    testrun::{LO, SHOT, TCX_NEXT, counter, drops, in_netns, run},
};
use netpath::{attach::Datapath, codec, spec, state::Dir};
use netpath_common::{
    DropReason, IfaceInfo, IfaceRole, counter_kind, counter_scope,
    ct::{CtEntry4, CtKey4, TcpState, ct_dir, ct_flags},
};

const U: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const R: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const C1: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn be(a: Ipv4Addr) -> u32 {
    codec::be(a)
}

/// Loads the datapath with loopback as an uplink with address `uplink`
/// (0.0.0.0: none) and network 1.
fn nat_datapath(pins: &std::path::Path, uplink: Ipv4Addr) -> Datapath {
    let mut dp = Datapath::load_with_pins(pins).expect("loading");
    let info = IfaceInfo {
        role: IfaceRole::Uplink as u32,
        ipv4_be: be(uplink),
        ..Default::default()
    };
    dp.maps.ifaces.insert(LO, info, 0).unwrap();
    let spec = spec::NetworkSpec::new("np0", "172.30.0.0/24".parse().unwrap(), None).unwrap();
    dp.maps.networks.insert(1, spec.to_info(99, 0), 0).unwrap();
    dp.maps.add_subnet(spec.subnet().unwrap(), 1).unwrap();
    dp
}

/// A packet's IPv4 tuple as conntrack keys it.
pub(crate) fn key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> CtKey4 {
    CtKey4::new(be(src), be(dst), sport.to_be(), dport.to_be(), proto)
}

fn entry(dp: &Datapath, k: &CtKey4) -> CtEntry4 {
    dp.maps
        .ct4
        .get(k, 0)
        .unwrap_or_else(|e| panic!("no conntrack entry {k:?}: {e}"))
}

#[test]
fn tcp_masquerade_keeps_the_port_when_free_and_translates_replies_back() {
    require_root!();
    in_netns("tcp", |pins| {
        let mut dp = nat_datapath(pins, U);
        // C1:40000 -> R:80 keeps its port.
        let syn1 = frame(TCP, C1, R, &packet::tcp(C1, R, 40000, 80, SYN, b""), 1, 0);
        let (v, out) = run(&mut dp, Dir::Egress, &syn1, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(
            parse(&out),
            packet::Parsed {
                src: U,
                dst: R,
                sport: 40000,
                dport: 80
            }
        );
        assert_checksums(&out, false);
        let o1 = entry(&dp, &key(C1, R, 40000, 80, TCP));
        assert_eq!(
            (o1.dir, o1.nat_addr_be, u16::from_be(o1.nat_port_be)),
            (ct_dir::ORIGINAL, be(U), 40000)
        );
        assert_eq!(o1.state, TcpState::SynSent as u8);
        assert_eq!(o1.peer, key(R, U, 80, 40000, TCP));
        let r1 = entry(&dp, &o1.peer);
        assert_eq!(
            (r1.dir, r1.nat_addr_be, r1.peer),
            (ct_dir::REPLY, be(C1), key(C1, R, 40000, 80, TCP))
        );

        // C2 with the same source port to the same remote gets another port.
        let syn2 = frame(
            TCP,
            C2,
            R,
            &packet::tcp(C2, R, 40000, 80, SYN, b"data"),
            2,
            0,
        );
        let (v, out) = run(&mut dp, Dir::Egress, &syn2, 1);
        assert_eq!(v, TCX_NEXT);
        let p = parse(&out);
        assert_eq!((p.src, p.dst, p.dport), (U, R, 80));
        assert_ne!(p.sport, 40000, "the external tuple U:40000->R:80 is taken");
        assert!(
            p.sport >= 1024,
            "port {} outside the default range",
            p.sport
        );
        assert_checksums(&out, false);
        assert_eq!(dp.maps.ct_entries().unwrap().len(), 4);

        // The SYN-ACK to C2's external port goes back to C2:40000.
        let synack = frame(
            TCP,
            R,
            U,
            &packet::tcp(R, U, 80, p.sport, SYN | ACK, b""),
            3,
            0,
        );
        let (v, out) = run(&mut dp, Dir::Ingress, &synack, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(
            parse(&out),
            packet::Parsed {
                src: R,
                dst: C2,
                sport: 80,
                dport: 40000
            }
        );
        assert_checksums(&out, false);
        let o2 = entry(&dp, &key(C2, R, 40000, 80, TCP));
        assert_eq!(o2.state, TcpState::SynRecv as u8);
        assert_ne!(o2.flags & ct_flags::SEEN_REPLY, 0);
        // ... and the final ACK makes it ESTABLISHED.
        let ack = frame(TCP, C2, R, &packet::tcp(C2, R, 40000, 80, ACK, b""), 4, 0);
        run(&mut dp, Dir::Egress, &ack, 1);
        assert_eq!(
            entry(&dp, &key(C2, R, 40000, 80, TCP)).state,
            TcpState::Established as u8
        );
        assert_eq!(entry(&dp, &key(C2, R, 40000, 80, TCP)).packets, 2);

        // A packet to U that belongs to no flow is the host's: untouched.
        let stray = frame(
            TCP,
            R,
            U,
            &packet::tcp(R, U, 80, 5555, SYN | ACK, b""),
            5,
            0,
        );
        let (v, out) = run(&mut dp, Dir::Ingress, &stray, 1);
        assert_eq!((v, out), (TCX_NEXT, stray));
        // So is traffic from outside the managed subnets.
        let host = frame(
            TCP,
            OTHER,
            R,
            &packet::tcp(OTHER, R, 1234, 80, SYN, b""),
            6,
            0,
        );
        let (v, out) = run(&mut dp, Dir::Egress, &host, 1);
        assert_eq!((v, out), (TCX_NEXT, host));
        assert_eq!(
            counter(&dp, counter_scope::NETWORK, 1, counter_kind::NET_CT_NEW).0,
            2
        );
    });
}

#[test]
fn a_claimed_external_tuple_is_never_reused_and_a_lost_partner_starts_the_flow_over() {
    require_root!();
    in_netns("claim", |pins| {
        let mut dp = nat_datapath(pins, U);
        // Someone else's flow holds U:7000 <- R:53.
        let foreign = CtEntry4 {
            peer: key(C2, R, 9, 53, UDP),
            nat_addr_be: be(C2),
            nat_port_be: 9u16.to_be(),
            dir: ct_dir::REPLY,
            ..Default::default()
        };
        dp.maps
            .ct4
            .insert(key(R, U, 53, 7000, UDP), foreign, 0)
            .unwrap();
        let q = frame(
            UDP,
            C1,
            R,
            &packet::udp(C1, R, 7000, 53, b"query", true),
            1,
            0,
        );
        let (_, out) = run(&mut dp, Dir::Egress, &q, 1);
        assert_ne!(parse(&out).sport, 7000);
        assert_eq!(
            entry(&dp, &key(R, U, 53, 7000, UDP)),
            foreign,
            "the claim stands"
        );

        // Lose the reply entry (LRU eviction), make the flow look a second
        // old: the next packet does not put the partner back blindly (a
        // host socket may hold its tuple by now) but starts a new flow,
        // whose tuple is checked again.
        let o = entry(&dp, &key(C1, R, 7000, 53, UDP));
        dp.maps.ct4.remove(&o.peer).unwrap();
        let mut aged = o;
        aged.last_seen_ns = 0;
        dp.maps
            .ct4
            .insert(key(C1, R, 7000, 53, UDP), aged, 0)
            .unwrap();
        let (v, out2) = run(&mut dp, Dir::Egress, &q, 1);
        assert_eq!((v, parse(&out2).src), (TCX_NEXT, U));
        assert_ne!(parse(&out2).sport, 7000, "the foreign claim still stands");
        let renewed = entry(&dp, &key(C1, R, 7000, 53, UDP));
        assert_ne!(renewed.last_seen_ns, 0, "a new flow");
        let back = entry(&dp, &renewed.peer);
        assert_eq!(
            (back.dir, back.nat_addr_be, back.peer),
            (ct_dir::REPLY, be(C1), key(C1, R, 7000, 53, UDP))
        );
        assert_eq!(
            counter(&dp, counter_scope::NETWORK, 1, counter_kind::NET_CT_NEW).0,
            2
        );
    });
}

#[test]
fn udp_checksums_stay_right_and_a_zero_checksum_stays_zero() {
    require_root!();
    in_netns("udp", |pins| {
        let mut dp = nat_datapath(pins, U);
        for (sport, with_csum) in [(5000u16, true), (5001, false)] {
            let f = frame(
                UDP,
                C1,
                R,
                &packet::udp(C1, R, sport, 53, b"dns?", with_csum),
                1,
                0,
            );
            let (v, out) = run(&mut dp, Dir::Egress, &f, 1);
            assert_eq!(v, TCX_NEXT);
            assert_eq!(parse(&out).src, U);
            assert_eq!(
                be16(&out, ETH + 20 + 6) == 0,
                !with_csum,
                "zero stays zero, non-zero stays non-zero"
            );
            assert_checksums(&out, !with_csum);
            let reply = frame(
                UDP,
                R,
                U,
                &packet::udp(R, U, 53, sport, b"dns!", with_csum),
                2,
                0,
            );
            let (_, back) = run(&mut dp, Dir::Ingress, &reply, 1);
            assert_eq!(
                parse(&back),
                packet::Parsed {
                    src: R,
                    dst: C1,
                    sport: 53,
                    dport: sport
                }
            );
            assert_checksums(&back, !with_csum);
        }
    });
}

#[test]
fn sctp_is_masqueraded_address_only_and_a_taken_tuple_is_refused() {
    require_root!();
    in_netns("sctp", |pins| {
        let mut dp = nat_datapath(pins, U);
        let init = sctp(5000, 9000, 0, SCTP_INIT, b"init chunk");
        let f = frame(SCTP, C1, R, &init, 1, 0);
        let (v, out) = run(&mut dp, Dir::Egress, &f, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(
            parse(&out),
            packet::Parsed {
                src: U,
                dst: R,
                sport: 5000,
                dport: 9000
            }
        );
        assert!(packet::valid(&out[ETH..ETH + 20]), "IPv4 header checksum");
        // The CRC32c covers no address: the SCTP packet leaves byte for byte
        // as it came, and its CRC still holds.
        assert_eq!(&out[ETH + 20..], &init[..]);
        assert!(sctp_crc_valid(&out[ETH + 20..]));
        let o = entry(&dp, &key(C1, R, 5000, 9000, SCTP));
        assert_eq!(o.peer, key(R, U, 9000, 5000, SCTP));

        // The INIT ACK comes back to C1, its bytes untouched too.
        let ack = sctp(9000, 5000, 0x1234_5678, SCTP_INIT_ACK, b"init ack");
        let (v, back) = run(&mut dp, Dir::Ingress, &frame(SCTP, R, U, &ack, 2, 0), 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(
            parse(&back),
            packet::Parsed {
                src: R,
                dst: C1,
                sport: 9000,
                dport: 5000
            }
        );
        assert!(packet::valid(&back[ETH..ETH + 20]));
        assert_eq!(&back[ETH + 20..], &ack[..]);
        assert_ne!(
            entry(&dp, &key(C1, R, 5000, 9000, SCTP)).flags & ct_flags::SEEN_REPLY,
            0
        );

        // C2 with the same port to the same peer would need another port,
        // which SCTP cannot get without a new CRC: refused and counted, no
        // flow half made.
        let before = dp.maps.ct_entries().unwrap().len();
        let f2 = frame(SCTP, C2, R, &sctp(5000, 9000, 0, SCTP_INIT, b"x"), 3, 0);
        let (v, _) = run(&mut dp, Dir::Egress, &f2, 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::NatPortsExhausted), 1);
        assert_eq!(dp.maps.ct_entries().unwrap().len(), before);
        // Another port is another tuple: fine.
        let f3 = frame(SCTP, C2, R, &sctp(5001, 9000, 0, SCTP_INIT, b"x"), 4, 0);
        let (v, out) = run(&mut dp, Dir::Egress, &f3, 1);
        assert_eq!((v, parse(&out).src, parse(&out).sport), (TCX_NEXT, U, 5001));

        // A host association clashing with C1's flow is refused as well:
        // its replies would otherwise be handed to C1.
        let host = frame(SCTP, U, R, &sctp(5000, 9000, 0, SCTP_INIT, b"h"), 5, 0);
        let (v, _) = run(&mut dp, Dir::Egress, &host, 1);
        assert_eq!(v, SHOT);
        // The other order: the host's association first (tracked as it
        // is), then a container from the same port to the same peer is
        // refused, and the peer's answer stays the host's.
        let host_init = frame(SCTP, U, R, &sctp(7400, 5000, 0, SCTP_INIT, b"h"), 7, 0);
        let (v, out) = run(&mut dp, Dir::Egress, &host_init, 1);
        assert_eq!(
            (v, &out),
            (TCX_NEXT, &host_init),
            "the host's own: untouched"
        );
        let h = entry(&dp, &key(U, R, 7400, 5000, SCTP));
        assert_eq!(h.flags & (ct_flags::HOST | ct_flags::SNAT), ct_flags::HOST);
        let exhausted = drops(&dp, 1, DropReason::NatPortsExhausted);
        let f4 = frame(SCTP, C1, R, &sctp(7400, 5000, 0, SCTP_INIT, b"c"), 8, 0);
        assert_eq!(run(&mut dp, Dir::Egress, &f4, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::NatPortsExhausted), exhausted + 1);
        let answer = frame(SCTP, R, U, &sctp(5000, 7400, 9, SCTP_INIT_ACK, b"a"), 9, 0);
        let (v, out) = run(&mut dp, Dir::Ingress, &answer, 1);
        assert_eq!((v, &out), (TCX_NEXT, &answer), "still the host's");
        // A cut common header is malformed, not passed with the container's address.
        let mut cut = frame(SCTP, C1, R, &init[..8], 6, 0);
        cut.truncate(ETH + 20 + 8);
        let (v, _) = run(&mut dp, Dir::Egress, &cut, 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Malformed), 1);
    });
}

#[test]
fn icmp_echo_and_errors_are_translated_with_their_quoted_headers() {
    require_root!();
    in_netns("icmp", |pins| {
        let mut dp = nat_datapath(pins, U);
        // Echo: the identifier is the port.
        let req = frame(ICMP, C1, R, &echo(8, 0x1234), 1, 0);
        let (_, out) = run(&mut dp, Dir::Egress, &req, 1);
        assert_eq!((parse(&out).src, parse(&out).sport), (U, 0x1234));
        assert_checksums(&out, false);
        let rep = frame(ICMP, R, U, &echo(0, 0x1234), 2, 0);
        let (_, back) = run(&mut dp, Dir::Ingress, &rep, 1);
        assert_eq!((parse(&back).dst, parse(&back).dport), (C1, 0x1234));
        assert_checksums(&back, false);

        // Two UDP flows on one source port: C2's gets another external port.
        for c in [C1, C2] {
            let f = frame(UDP, c, R, &packet::udp(c, R, 5000, 53, b"q", true), 3, 0);
            run(&mut dp, Dir::Egress, &f, 1);
        }
        let p2 = u16::from_be(entry(&dp, &key(C2, R, 5000, 53, UDP)).nat_port_be);
        assert_ne!(p2, 5000);

        // A router says "fragmentation needed" about C2's translated packet.
        let quoted = {
            let u = packet::udp(U, R, p2, 53, b"q", true);
            let mut q = packet::ipv4_header(UDP, U, R, u.len(), 3, 0x4000);
            q.extend_from_slice(&u[..8]);
            q
        };
        let err = icmp(3, 4, [0, 0, 0x05, 0x00], &quoted);
        let f = frame(ICMP, ROUTER, U, &err, 4, 0);
        let (v, out) = run(&mut dp, Dir::Ingress, &f, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(ip_of(&out, ETH + 16), C2, "outer destination");
        let inner = ETH + 20 + 8;
        assert_eq!(ip_of(&out, inner + 12), C2, "quoted source");
        assert_eq!(ip_of(&out, inner + 16), R, "quoted destination");
        assert_eq!(be16(&out, inner + 20), 5000, "quoted source port");
        assert!(
            packet::valid(&out[inner..inner + 20]),
            "quoted header checksum"
        );
        assert_checksums(&out, false);
        assert_eq!(be16(&out, ETH + 20 + 6), 0x0500, "the MTU is kept");

        // Time exceeded about C1's echo request (traceroute with ping).
        let quoted = {
            let e = echo(8, 0x1234);
            let mut q = packet::ipv4_header(ICMP, U, R, e.len(), 9, 0);
            q.extend_from_slice(&e[..8]);
            q
        };
        let f = frame(ICMP, ROUTER, U, &icmp(11, 0, [0; 4], &quoted), 5, 0);
        let (_, out) = run(&mut dp, Dir::Ingress, &f, 1);
        assert_eq!(ip_of(&out, ETH + 16), C1);
        assert_eq!(ip_of(&out, inner + 12), C1);
        assert!(packet::valid(&out[inner..inner + 20]));
        assert_checksums(&out, false);

        // C2 answers a reply with port unreachable: the error leaves as U, quoting U:p2.
        let quoted = {
            let u = packet::udp(R, C2, 53, 5000, b"a", true);
            let mut q = packet::ipv4_header(UDP, R, C2, u.len(), 7, 0);
            q.extend_from_slice(&u[..8]);
            q
        };
        let f = frame(ICMP, C2, R, &icmp(3, 3, [0; 4], &quoted), 6, 0);
        let (v, out) = run(&mut dp, Dir::Egress, &f, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(ip_of(&out, ETH + 12), U, "outer source");
        assert_eq!(ip_of(&out, inner + 16), U, "quoted destination");
        assert_eq!(be16(&out, inner + 22), p2, "quoted destination port");
        assert!(packet::valid(&out[inner..inner + 20]));
        assert_checksums(&out, false);

        // An error about a flow netpath does not know is the host's business.
        let quoted = {
            let u = packet::udp(U, R, 999, 53, b"q", true);
            let mut q = packet::ipv4_header(UDP, U, R, u.len(), 3, 0);
            q.extend_from_slice(&u[..8]);
            q
        };
        let f = frame(ICMP, ROUTER, U, &icmp(3, 4, [0; 4], &quoted), 7, 0);
        let (v, out) = run(&mut dp, Dir::Ingress, &f, 1);
        assert_eq!((v, out), (TCX_NEXT, f));
    });
}

#[test]
fn fragments_follow_their_first_fragment() {
    require_root!();
    in_netns("frag", |pins| {
        let mut dp = nat_datapath(pins, U);
        // C1 opens the flow; a later fragment of its next datagram only
        // needs the source address.
        let first = frame(UDP, C1, R, &packet::udp(C1, R, 6000, 7, b"x", true), 1, 0);
        run(&mut dp, Dir::Egress, &first, 1);
        let later = frame(UDP, C1, R, &[0xaa; 64], 42, 185);
        let (v, out) = run(&mut dp, Dir::Egress, &later, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(ip_of(&out, ETH + 12), U);
        assert!(packet::valid(&out[ETH..ETH + 20]));
        assert_eq!(out[ETH + 20..], later[ETH + 20..], "payload untouched");

        // The reply comes back in two fragments: first (MF, with ports), then the rest.
        let mut udp = packet::udp(R, U, 7, 6000, &[0x55; 48], true);
        let rest = udp.split_off(24);
        let f1 = frame(UDP, R, U, &udp, 77, 0x2000);
        let f2 = frame(UDP, R, U, &rest, 77, 3);
        let (_, o1) = run(&mut dp, Dir::Ingress, &f1, 1);
        assert_eq!(
            parse(&o1),
            packet::Parsed {
                src: R,
                dst: C1,
                sport: 7,
                dport: 6000
            }
        );
        assert!(packet::valid(&o1[ETH..ETH + 20]));
        let (_, o2) = run(&mut dp, Dir::Ingress, &f2, 1);
        assert_eq!(ip_of(&o2, ETH + 16), C1);
        assert!(packet::valid(&o2[ETH..ETH + 20]));
        // The reassembled datagram's checksum still holds.
        let mut whole = o1[ETH + 20..].to_vec();
        whole.extend_from_slice(&o2[ETH + 20..]);
        let re = frame(UDP, R, C1, &whole, 1, 0);
        assert_checksums(&re, false);

        // A later fragment of a datagram whose first fragment was never seen: untouched.
        let orphan = frame(UDP, R, U, &rest, 78, 3);
        let (v, out) = run(&mut dp, Dir::Ingress, &orphan, 1);
        assert_eq!((v, out), (TCX_NEXT, orphan));
    });
}

#[test]
fn malformed_and_untranslatable_packets_are_never_mistranslated() {
    require_root!();
    in_netns("bad", |pins| {
        let mut dp = nat_datapath(pins, U);
        // A container TCP segment cut inside its header: dropped, not leaked.
        let full = frame(TCP, C1, R, &packet::tcp(C1, R, 40000, 80, SYN, b""), 1, 0);
        let mut cut = full[..ETH + 20 + 10].to_vec();
        cut[ETH + 2..ETH + 4].copy_from_slice(&30u16.to_be_bytes());
        let (v, _) = run(&mut dp, Dir::Egress, &cut, 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Malformed), 1);
        assert!(
            dp.maps.ct_entries().unwrap().is_empty(),
            "no flow from a bad packet"
        );

        // The same coming in from outside is dropped, counted on the uplink.
        let cut_in = {
            let mut f = frame(TCP, R, U, &packet::tcp(R, U, 80, 40000, SYN, b""), 1, 0);
            f.truncate(ETH + 20 + 10);
            f[ETH + 2..ETH + 4].copy_from_slice(&30u16.to_be_bytes());
            f
        };
        assert_eq!(run(&mut dp, Dir::Ingress, &cut_in, 1).0, SHOT);
        let uplink_drops = |dp: &Datapath| {
            counter(
                dp,
                counter_scope::IFACE,
                LO,
                DropReason::Malformed.counter_kind(),
            )
            .0
        };
        assert_eq!(uplink_drops(&dp), 2, "counted on the uplink too");

        // An IPv4 header with a bad length field, or a total length beyond
        // the frame: the host's own going out passes untouched (the kernel
        // judges it), from outside it is dropped.
        let mut bad_ihl = frame(UDP, C1, R, &packet::udp(C1, R, 1, 2, b"x", true), 1, 0);
        bad_ihl[ETH] = 0x44;
        let mut too_long = frame(UDP, R, U, &packet::udp(R, U, 1, 2, b"x", true), 1, 0);
        too_long[ETH + 2..ETH + 4].copy_from_slice(&1000u16.to_be_bytes());
        for f in [&bad_ihl, &too_long] {
            let (v, out) = run(&mut dp, Dir::Egress, f, 1);
            assert_eq!((v, &out), (TCX_NEXT, f));
            assert_eq!(run(&mut dp, Dir::Ingress, f, 1).0, SHOT);
        }
        assert_eq!(uplink_drops(&dp), 4);

        // An ICMP error whose quoted header is cut short: untouched coming
        // in, dropped (it cannot be placed) going out.
        let short = icmp(3, 4, [0; 4], &[0x45, 0, 0, 40, 0, 0]);
        let f = frame(ICMP, ROUTER, U, &short, 2, 0);
        let (v, out) = run(&mut dp, Dir::Ingress, &f, 1);
        assert_eq!((v, out), (TCX_NEXT, f));
        let f = frame(ICMP, C1, R, &short, 2, 0);
        let (v, _) = run(&mut dp, Dir::Egress, &f, 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Malformed), 2);
    });
}

#[test]
fn an_uplink_without_address_and_an_exhausted_range_drop_with_reasons() {
    require_root!();
    in_netns("drops", |pins| {
        let mut dp = nat_datapath(pins, Ipv4Addr::UNSPECIFIED);
        let f = frame(UDP, C1, R, &packet::udp(C1, R, 5000, 53, b"q", true), 1, 0);
        let (v, _) = run(&mut dp, Dir::Egress, &f, 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::NatNoAddress), 1);

        let mut dp = nat_datapath(pins, U);
        let mut cfg = dp.maps.config().unwrap();
        cfg.nat_port_min = 61000;
        cfg.nat_port_max = 61000;
        dp.maps.set_config(&cfg).unwrap();
        let c3 = Ipv4Addr::new(172, 30, 0, 4);
        let mut verdicts = Vec::new();
        for c in [C1, C2, c3] {
            let f = frame(UDP, c, R, &packet::udp(c, R, 5000, 53, b"q", true), 1, 0);
            let (v, out) = run(&mut dp, Dir::Egress, &f, 1);
            verdicts.push((v, parse(&out).sport));
        }
        assert_eq!(verdicts[0], (TCX_NEXT, 5000));
        assert_eq!(verdicts[1], (TCX_NEXT, 61000));
        assert_eq!(verdicts[2].0, SHOT, "no free external port left");
        assert_eq!(drops(&dp, 1, DropReason::NatPortsExhausted), 1);
    });
}

#[test]
fn a_full_table_evicts_idle_entries_not_a_busy_flow() {
    require_root!();
    in_netns("lru", |pins| {
        let mut dp = nat_datapath(pins, U);
        let out_pkt = frame(UDP, C1, R, &packet::udp(C1, R, 5353, 53, b"q", true), 1, 0);
        let in_pkt = frame(UDP, R, U, &packet::udp(R, U, 53, 5353, b"a", true), 2, 0);
        run(&mut dp, Dir::Egress, &out_pkt, 1);
        // A flood of other flows, well past the table's capacity, while the
        // busy flow keeps passing packets both ways.
        let cap = netpath_common::ct::MAX_CT4;
        let mut n: u32 = 0;
        while n < cap + cap / 2 {
            for _ in 0..8192 {
                let k = CtKey4::new(
                    0x0a00_0000u32.wrapping_add(n).to_be(),
                    be(R),
                    (n as u16).to_be(),
                    80u16.to_be(),
                    TCP,
                );
                dp.maps.ct4.insert(k, CtEntry4::default(), 0).unwrap();
                n += 1;
            }
            let (v, o) = run(&mut dp, Dir::Egress, &out_pkt, 1);
            assert_eq!(
                (v, parse(&o).src, parse(&o).sport),
                (TCX_NEXT, U, 5353),
                "after {n} inserts"
            );
            let (v, o) = run(&mut dp, Dir::Ingress, &in_pkt, 1);
            assert_eq!(
                (v, parse(&o).dst, parse(&o).dport),
                (TCX_NEXT, C1, 5353),
                "after {n} inserts"
            );
        }
        let entries = dp.maps.ct_entries().unwrap();
        assert!(entries.len() <= cap as usize, "the table stays bounded");
        assert_eq!(
            counter(&dp, counter_scope::NETWORK, 1, counter_kind::NET_CT_NEW).0,
            1,
            "never re-created"
        );
    });
}

/// Only a SYN, or an ACK (a connection picked up mid-stream), opens a TCP
/// flow; a packet with no flags, FIN or RST first, or SYN+FIN opens
/// nothing (nf_conntrack's INVALID) and is dropped with its reason rather
/// than leaving untranslated. A picked-up flow is not assured until it is
/// answered.
#[test]
fn tcp_packets_that_open_nothing_are_dropped() {
    require_root!();
    in_netns("invalid", |pins| {
        let mut dp = nat_datapath(pins, U);
        let seg = |sport: u16, flags: u8| {
            frame(
                TCP,
                C1,
                R,
                &packet::tcp(C1, R, sport, 443, flags, b""),
                1,
                0,
            )
        };
        for (i, flags) in [0u8, 0x01, 0x04, 0x03, 0x14].into_iter().enumerate() {
            let (v, _) = run(&mut dp, Dir::Egress, &seg(30000 + i as u16, flags), 1);
            assert_eq!(v, SHOT, "flags {flags:#x}");
        }
        assert_eq!(drops(&dp, 1, DropReason::CtInvalid), 5);
        assert!(dp.maps.ct_entries().unwrap().is_empty(), "no flow");
        let (v, out) = run(&mut dp, Dir::Egress, &seg(30010, ACK), 1);
        assert_eq!((v, parse(&out).src), (TCX_NEXT, U));
        let e = entry(&dp, &key(C1, R, 30010, 443, TCP));
        assert_eq!(e.state, TcpState::Established as u8);
        assert!(
            netpath_common::ct::embryonic(TCP, e.state, e.flags),
            "not answered yet"
        );
        let back = frame(TCP, R, U, &packet::tcp(R, U, 443, 30010, ACK, b""), 2, 0);
        assert_eq!(run(&mut dp, Dir::Ingress, &back, 1).0, TCX_NEXT);
        let e = entry(&dp, &key(C1, R, 30010, 443, TCP));
        assert!(
            !netpath_common::ct::embryonic(TCP, e.state, e.flags),
            "answered"
        );
        assert_ne!(e.flags & ct_flags::ASSURED, 0);
    });
}

/// At the table's limit new flows are refused (counted, with a drop
/// reason) and the flows already there carry on; a calibrating pass sets
/// the count to what the table holds, and flows are admitted again once
/// there is room.
#[test]
fn at_the_limit_new_flows_are_refused_and_old_ones_carry_on() {
    require_root!();
    in_netns("limit", |pins| {
        use netpath_common::ct::fill;
        let mut dp = nat_datapath(pins, U);
        let out = |c: Ipv4Addr, sport: u16| {
            frame(UDP, c, R, &packet::udp(c, R, sport, 53, b"q", true), 1, 0)
        };
        let reply = frame(UDP, R, U, &packet::udp(R, U, 53, 5000, b"a", true), 2, 0);
        assert_eq!(run(&mut dp, Dir::Egress, &out(C1, 5000), 1).0, TCX_NEXT);
        assert_eq!(
            dp.maps.ct_fill().unwrap(),
            (2, u64::from(fill::limit(netpath_common::ct::MAX_CT4))),
            "two entries counted; the loader wrote the limit"
        );
        // A limit of three entries: the next flow (two more) is refused.
        dp.maps.ct_fill.set(fill::LIMIT, 3, 0).unwrap();
        assert_eq!(run(&mut dp, Dir::Egress, &out(C2, 5001), 1).0, TCX_NEXT);
        let (v, _) = run(&mut dp, Dir::Egress, &out(C2, 5002), 1);
        assert_eq!(v, SHOT, "at the limit");
        assert_eq!(drops(&dp, 1, DropReason::ConntrackFull), 1);
        assert_eq!(
            counter(&dp, counter_scope::CONNTRACK, 0, counter_kind::CT_REFUSED).0,
            1
        );
        // The flows there pass both ways.
        assert_eq!(run(&mut dp, Dir::Egress, &out(C1, 5000), 1).0, TCX_NEXT);
        let (v, o) = run(&mut dp, Dir::Ingress, &reply, 1);
        assert_eq!((v, parse(&o).dst), (TCX_NEXT, C1));
        // A count gone wrong (entries changed behind the datapath's back)
        // is set right by a calibrating pass.
        dp.maps.ct_fill.set(fill::LIVE, 1000, 0).unwrap();
        assert_eq!(netpath::conntrack::calibrate(&mut dp).unwrap(), 4);
        assert_eq!(dp.maps.ct_fill().unwrap().0, 4);
        // Room again: a flush removes C2's flow and its entries' count.
        let c2 = netpath::conntrack::Filter {
            src: Some(C2.into()),
            ..Default::default()
        };
        assert_eq!(netpath::conntrack::flush(&mut dp, &c2).unwrap(), 1);
        assert_eq!(dp.maps.ct_fill().unwrap().0, 2);
        assert_eq!(run(&mut dp, Dir::Egress, &out(C2, 5002), 1).0, TCX_NEXT);
    });
}

/// A socket of the host (here: of the test's namespace, where the program
/// runs) keeps its tuples: a container's flow never takes a source port
/// that a host socket holds towards that remote, nor a published host
/// port; a host flow that meets a container's claim gets another port.
#[test]
fn host_sockets_and_published_ports_keep_their_tuples_in_both_orders() {
    require_root!();
    in_netns("sockets", |pins| {
        let mut dp = nat_datapath(pins, U);
        let _udp = std::net::UdpSocket::bind("0.0.0.0:40000").unwrap();
        let _tcp = std::net::TcpListener::bind("0.0.0.0:40001").unwrap();
        let p = netpath::publish::Ports {
            host_addr: None,
            host_first: 8080,
            host_last: 8080,
            proto: UDP,
            target: C2,
            target_first: 80,
        };
        netpath::publish::insert(&mut dp.maps, &p, netpath_common::owner::USER).unwrap();
        dp.maps.hostaddrs4.insert(be(U), LO, 0).unwrap();
        let sport_out = |dp: &mut Datapath, proto: u8, sport: u16| {
            let l4 = if proto == UDP {
                packet::udp(C1, R, sport, 53, b"q", true)
            } else {
                packet::tcp(C1, R, sport, 53, SYN, b"")
            };
            let (v, out) = run(dp, Dir::Egress, &frame(proto, C1, R, &l4, 1, 0), 1);
            assert_eq!(v, TCX_NEXT);
            parse(&out).sport
        };
        assert_ne!(sport_out(&mut dp, UDP, 40000), 40000, "a bound UDP socket");
        assert_ne!(sport_out(&mut dp, TCP, 40001), 40001, "a TCP listener");
        assert_ne!(sport_out(&mut dp, UDP, 8080), 8080, "a published host port");
        assert_eq!(sport_out(&mut dp, UDP, 40002), 40002, "a free port is kept");

        // The other order: the container's flow holds U:45000 <- R:9000
        // first; the host's own connection from 45000 gets another port,
        // and its replies come back to 45000.
        assert_eq!(sport_out(&mut dp, TCP, 45000), 45000);
        let host_syn = frame(TCP, U, R, &packet::tcp(U, R, 45000, 53, SYN, b""), 3, 0);
        let (v, out) = run(&mut dp, Dir::Egress, &host_syn, 1);
        assert_eq!(v, TCX_NEXT);
        let moved = parse(&out).sport;
        assert_ne!(moved, 45000);
        assert_checksums(&out, false);
        let e = entry(&dp, &key(U, R, 45000, 53, TCP));
        assert_eq!(e.flags & ct_flags::HOST, ct_flags::HOST);
        let reply = frame(
            TCP,
            R,
            U,
            &packet::tcp(R, U, 53, moved, SYN | ACK, b""),
            4,
            0,
        );
        let (v, out) = run(&mut dp, Dir::Ingress, &reply, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!((parse(&out).dst, parse(&out).dport), (U, 45000));
        // The container's own replies still reach it.
        let to_c1 = frame(
            TCP,
            R,
            U,
            &packet::tcp(R, U, 53, 45000, SYN | ACK, b""),
            5,
            0,
        );
        let (_, out) = run(&mut dp, Dir::Ingress, &to_c1, 1);
        assert_eq!((parse(&out).dst, parse(&out).dport), (C1, 45000));
        // A host packet that clashes with nothing is left alone.
        let plain = frame(TCP, U, R, &packet::tcp(U, R, 45001, 53, SYN, b""), 6, 0);
        let (v, out) = run(&mut dp, Dir::Egress, &plain, 1);
        assert_eq!((v, &out), (TCX_NEXT, &plain));
        assert!(dp.maps.ct4.get(&key(U, R, 45001, 53, TCP), 0).is_err());
    });
}

/// An ICMP error is a flow's only when it goes back to whoever sent the
/// packet it quotes (and, leaving for the far end, comes from the flow's own
/// endpoint): quoting a flow opens nothing else.
#[test]
fn icmp_errors_belong_to_a_flow_only_at_its_own_ends() {
    require_root!();
    in_netns("icmpends", |pins| {
        let mut dp = nat_datapath(pins, U);
        let q = frame(UDP, C1, R, &packet::udp(C1, R, 6000, 53, b"q", true), 1, 0);
        let (_, out) = run(&mut dp, Dir::Egress, &q, 1);
        let n = parse(&out).sport;
        // The packet as it left, quoted by an error.
        let mut quoted = packet::ipv4_header(UDP, U, R, 8 + 1, 1, 0);
        quoted.extend_from_slice(&packet::udp(U, R, n, 53, b"q", true));
        let real = frame(ICMP, ROUTER, U, &icmp(3, 3, [0; 4], &quoted), 7, 0);
        let (v, out) = run(&mut dp, Dir::Ingress, &real, 1);
        assert_eq!(
            (v, parse(&out).dst),
            (TCX_NEXT, C1),
            "the real one is translated"
        );
        // The same quote sent to another container: not this flow's error.
        let forged = frame(ICMP, ROUTER, C2, &icmp(3, 3, [0; 4], &quoted), 8, 0);
        assert_eq!(run(&mut dp, Dir::Ingress, &forged, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);
        // A container's error about another container's flow would leave
        // with its private address: dropped.
        let mut got = packet::ipv4_header(UDP, R, C1, 8 + 1, 1, 0);
        got.extend_from_slice(&packet::udp(R, C1, 53, 6000, b"a", true));
        let from_c2 = frame(ICMP, C2, R, &icmp(3, 3, [0; 4], &got), 9, 0);
        assert_eq!(run(&mut dp, Dir::Egress, &from_c2, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Malformed), 1);
    });
}

/// The in-kernel sweep pass: expiry by state and timeout (embryonic flows
/// first under pressure), flushing by filter, live counts per network, and
/// insert/remove counters that account for every entry.
#[test]
fn the_sweep_pass_expires_flushes_and_counts_in_one_walk() {
    use netpath::conntrack::{self, Filter, Published};
    require_root!();
    in_netns("sweep", |pins| {
        let mut dp = nat_datapath(pins, U);
        let mut cfg = dp.maps.config().unwrap();
        cfg.timeouts_s[netpath_common::timeout::UDP_STREAM] = 1;
        dp.maps.set_config(&cfg).unwrap();
        let udp_out = |c: Ipv4Addr, sport: u16| {
            frame(UDP, c, R, &packet::udp(c, R, sport, 53, b"q", true), 1, 0)
        };
        // An answered UDP flow (1 s timeout), an unanswered one (30 s), a
        // TCP flow in SYN_SENT (120 s), and C2's UDP flow.
        run(&mut dp, Dir::Egress, &udp_out(C1, 7001), 1);
        let a = frame(UDP, R, U, &packet::udp(R, U, 53, 7001, b"a", true), 2, 0);
        run(&mut dp, Dir::Ingress, &a, 1);
        run(&mut dp, Dir::Egress, &udp_out(C1, 7002), 1);
        let syn = frame(TCP, C1, R, &packet::tcp(C1, R, 7003, 80, SYN, b""), 3, 0);
        run(&mut dp, Dir::Egress, &syn, 1);
        run(&mut dp, Dir::Egress, &udp_out(C2, 7004), 1);

        let found = conntrack::count(&mut dp).unwrap();
        assert_eq!((found.entries, found.flows, found.embryonic), (8, 4, 3));
        assert_eq!(found.removed_flows, 0);
        assert_eq!(
            dp.maps.ct_networks.get(&1, 0).unwrap(),
            4,
            "live flows per network"
        );
        // Each counting pass starts every network from zero.
        conntrack::count(&mut dp).unwrap();
        assert_eq!(dp.maps.ct_networks.get(&1, 0).unwrap(), 4, "counted afresh");
        // Nothing has timed out yet.
        assert_eq!(conntrack::sweep(&mut dp, None).unwrap().removed_flows, 0);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        // The answered UDP flow has; under pressure, unreplied flows idle
        // for a second go too.
        let swept = conntrack::sweep(&mut dp, None).unwrap();
        assert_eq!(
            (swept.removed_flows, swept.removed_entries, swept.flows),
            (1, 2, 3)
        );
        assert!(dp.maps.ct4.get(&key(C1, R, 7001, 53, UDP), 0).is_err());
        let swept = conntrack::sweep(&mut dp, Some(5000)).unwrap();
        assert_eq!(
            (swept.removed_flows, swept.flows),
            (0, 3),
            "idle for less than 5 s"
        );
        let swept = conntrack::sweep(&mut dp, Some(1000)).unwrap();
        assert_eq!((swept.removed_flows, swept.flows), (3, 0));

        // Flushing by filter, one pass each.
        for sport in [7010u16, 7011, 7012] {
            run(&mut dp, Dir::Egress, &udp_out(C1, sport), 1);
        }
        run(&mut dp, Dir::Egress, &udp_out(C2, 7013), 1);
        let by_src = Filter {
            src: Some(C2.into()),
            ..Filter::default()
        };
        assert_eq!(conntrack::flush(&mut dp, &by_src).unwrap(), 1);
        let by_port = Filter {
            port: Some(7011),
            ..Filter::default()
        };
        assert_eq!(conntrack::flush(&mut dp, &by_port).unwrap(), 1);
        let published = Filter {
            published: Some(Published {
                addr: Ipv4Addr::UNSPECIFIED.into(),
                first: 1,
                last: 65535,
                proto: UDP,
            }),
            ..Filter::default()
        };
        assert_eq!(
            conntrack::flush(&mut dp, &published).unwrap(),
            0,
            "no DNAT flow"
        );
        assert_eq!(conntrack::flush(&mut dp, &Filter::network(1)).unwrap(), 2);
        assert!(dp.maps.ct_entries().unwrap().is_empty());

        // Every entry the datapath inserted was removed by someone: nothing
        // was evicted.
        let ct = |kind| counter(&dp, counter_scope::CONNTRACK, 0, kind).0;
        assert_eq!(ct(counter_kind::CT_INSERTS), 16);
        assert_eq!(ct(counter_kind::CT_REMOVES), 16);
    });
}
