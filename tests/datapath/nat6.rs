//! IPv6 egress on crafted packets (BPF_PROG_TEST_RUN): NAT66 masquerade
//! with its conntrack entries, replies written back, checksums recomputed
//! from scratch (the ICMPv6 one covers the pseudo-header too), routed
//! networks tracked untranslated, what may come in from outside, the
//! host-socket rule for the host's own clashing flows, and the sweep.
//!
//! Loopback plays the uplink with global address U; network 1
//! (fd00:30::/64) masquerades, network 2 (fd00:31::/64) is routed.

use crate::harness;

use std::net::{IpAddr, Ipv6Addr};

use harness::{
    packet::{self, ETH, TCP, UDP, l4_valid},
    testrun::{LO, SHOT, TCX_NEXT, drops, in_netns, run, run_from},
};
use netpath::{attach::Datapath, conntrack, net6::Net6Spec, spec, state::Dir};
use netpath_common::{
    DropReason, GatewayMode, IfaceInfo, IfaceRole,
    ct::{TcpState, ct_dir, ct_flags},
    ct6::{CtEntry6, CtKey6},
};

use netpath::lab::frames::{ICMPV6, echo6, frame6, icmp6};

pub(crate) const SYN: u8 = 0x02;
pub(crate) const ACK: u8 = 0x10;

pub(crate) fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

pub(crate) fn u() -> Ipv6Addr {
    ip("fd00:ff::1")
}
pub(crate) fn r() -> Ipv6Addr {
    ip("fd00:ee::2")
}
pub(crate) fn c1() -> Ipv6Addr {
    ip("fd00:30::2")
}
pub(crate) fn c2() -> Ipv6Addr {
    ip("fd00:30::3")
}
pub(crate) fn c3() -> Ipv6Addr {
    ip("fd00:31::2")
}

/// Loopback as an uplink (with `uplink` as its IPv6 address), network 1
/// masquerading and network 2 routed, both dual-stack.
pub(crate) fn nat6_datapath(pins: &std::path::Path, uplink: Option<Ipv6Addr>) -> Datapath {
    let mut dp = Datapath::load_with_pins(pins).expect("loading");
    let info = IfaceInfo {
        role: IfaceRole::Uplink as u32,
        ..Default::default()
    };
    dp.maps.ifaces.insert(LO, info, 0).unwrap();
    if let Some(a) = uplink {
        dp.maps.v6.uplinks.insert(LO, a.octets(), 0).unwrap();
    }
    for (id, v4, v6, mode) in [
        (1, "172.30.0.0/24", "fd00:30::/64", GatewayMode::Nat),
        (2, "172.31.0.0/24", "fd00:31::/64", GatewayMode::Routed),
    ] {
        let spec = spec::NetworkSpec::new(&format!("np{id}"), v4.parse().unwrap(), None).unwrap();
        dp.maps
            .networks
            .insert(id, spec.to_info(90 + id, mode.flags()), 0)
            .unwrap();
        dp.maps.add_subnet(spec.subnet().unwrap(), id).unwrap();
        let v6 = Net6Spec::new(v6.parse().unwrap(), None).unwrap();
        dp.maps.v6.record(id, &v6, 0).unwrap();
    }
    dp.maps.v6.set_ct_limit().unwrap();
    dp
}

/// A UDP query from `c`:5353 to R:53.
pub(crate) fn query(c: Ipv6Addr) -> Vec<u8> {
    frame6(UDP, c, r(), &packet::udp(c, r(), 5353, 53, b"q", true))
}

/// Loopback becomes a port of network `net_id`, with an uplink at
/// ifindex 7 for packets to come in through (`run_from`). Returns the
/// port's record.
pub(crate) fn port_behind_uplink(dp: &mut Datapath, net_id: u32) -> IfaceInfo {
    let uplink = IfaceInfo {
        role: IfaceRole::Uplink as u32,
        ..Default::default()
    };
    dp.maps.ifaces.insert(7, uplink, 0).unwrap();
    let port = IfaceInfo {
        role: IfaceRole::Port as u32,
        net_id,
        ..Default::default()
    };
    dp.maps.ifaces.insert(LO, port, 0).unwrap();
    port
}

pub(crate) fn key(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, proto: u8) -> CtKey6 {
    CtKey6::new(
        src.octets(),
        dst.octets(),
        sport.to_be(),
        dport.to_be(),
        proto,
    )
}

pub(crate) fn entry(dp: &Datapath, k: &CtKey6) -> CtEntry6 {
    dp.maps
        .v6
        .ct
        .get(k, 0)
        .unwrap_or_else(|e| panic!("no conntrack entry {k:?}: {e}"))
}

/// Source, destination, ports (ICMPv6: the identifier twice) of a frame.
pub(crate) fn parsed(f: &[u8]) -> (Ipv6Addr, Ipv6Addr, u16, u16) {
    let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[o..o + 16]).unwrap());
    let l4 = ETH + 40;
    let be = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let ports = if f[ETH + 6] == ICMPV6 {
        (be(l4 + 4), be(l4 + 4))
    } else {
        (be(l4), be(l4 + 2))
    };
    (a(ETH + 8), a(ETH + 24), ports.0, ports.1)
}

/// The transport checksum, computed from scratch over the pseudo-header.
pub(crate) fn assert_checksum(f: &[u8]) {
    let (src, dst, ..) = parsed(f);
    assert!(
        l4_valid(src, dst, f[ETH + 6], &f[ETH + 40..]),
        "checksum: {f:02x?}"
    );
}

pub(crate) fn tcp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    frame6(
        TCP,
        src,
        dst,
        &packet::tcp(src, dst, sport, dport, flags, b"x"),
    )
}

#[test]
fn nat66_masquerades_tcp_udp_and_echo_and_writes_replies_back() {
    require_root!();
    in_netns("nat66", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        // C1:40000 -> R:80 leaves as U:40000.
        let (v, out) = run(&mut dp, Dir::Egress, &tcp(c1(), r(), 40000, 80, SYN), 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed(&out), (u(), r(), 40000, 80));
        assert_checksum(&out);
        let o = entry(&dp, &key(c1(), r(), 40000, 80, TCP));
        assert_eq!(
            (o.dir, o.nat_addr_be, o.state, o.flags & ct_flags::SNAT),
            (
                ct_dir::ORIGINAL,
                u().octets(),
                TcpState::SynSent as u8,
                ct_flags::SNAT
            )
        );
        assert_eq!(o.peer, key(r(), u(), 80, 40000, TCP));
        let rep = entry(&dp, &o.peer);
        assert_eq!((rep.dir, rep.nat_addr_be), (ct_dir::REPLY, c1().octets()));

        // C2 with the same port to the same remote gets another one.
        let (_, out) = run(&mut dp, Dir::Egress, &tcp(c2(), r(), 40000, 80, SYN), 1);
        let (src, _, sport, _) = parsed(&out);
        assert_eq!(src, u());
        assert_ne!(sport, 40000, "U:40000 -> R:80 is taken");
        assert_checksum(&out);

        // The SYN-ACK to C2's external port goes back to C2:40000.
        let synack = tcp(r(), u(), 80, sport, SYN | ACK);
        let (v, out) = run(&mut dp, Dir::Ingress, &synack, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed(&out), (r(), c2(), 80, 40000));
        assert_checksum(&out);
        let o2 = entry(&dp, &key(c2(), r(), 40000, 80, TCP));
        assert_ne!(o2.flags & ct_flags::SEEN_REPLY, 0);

        // UDP and an echo request, with the checksums right.
        let q = query(c1());
        let (_, out) = run(&mut dp, Dir::Egress, &q, 1);
        assert_eq!(parsed(&out), (u(), r(), 5353, 53));
        assert_checksum(&out);
        let ping = frame6(ICMPV6, c1(), r(), &echo6(c1(), r(), 128, 7));
        let (_, out) = run(&mut dp, Dir::Egress, &ping, 1);
        let (src, dst, id, _) = parsed(&out);
        assert_eq!((src, dst), (u(), r()));
        assert_checksum(&out);
        let pong = frame6(ICMPV6, r(), u(), &echo6(r(), u(), 129, id));
        let (v, out) = run(&mut dp, Dir::Ingress, &pong, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(parsed(&out), (r(), c1(), 7, 7));
        assert_checksum(&out);

        // From outside at a container of the masquerading network: not
        // asked for. A managed source from outside is a spoof.
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(r(), c1(), 80, 40001, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(c2(), u(), 80, 40001, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::LocalSource), 1);
        // The host's own traffic passes untouched.
        let host = tcp(r(), u(), 80, 22, SYN);
        assert_eq!(run(&mut dp, Dir::Ingress, &host, 1), (TCX_NEXT, host));

        // Four flows, eight entries; the sweep counts and flushes IPv6 too,
        // by IPv6 address; an IPv4 address names none of them.
        let found = conntrack::count(&mut dp).unwrap();
        assert_eq!((found.entries, found.flows), (8, 4));
        assert_eq!(dp.maps.v6.ct_entries().unwrap().len(), 8);
        let by = |src: Option<IpAddr>, dst: Option<IpAddr>| conntrack::Filter {
            src,
            dst,
            ..Default::default()
        };
        let v4: IpAddr = "172.30.0.2".parse().unwrap();
        assert_eq!(conntrack::flush(&mut dp, &by(Some(v4), None)).unwrap(), 0);
        assert_eq!(
            conntrack::flush(&mut dp, &by(None, Some(c2().into()))).unwrap(),
            0
        );
        assert_eq!(
            conntrack::flush(&mut dp, &by(Some(c2().into()), Some(r().into()))).unwrap(),
            1
        );
        assert!(
            dp.maps
                .v6
                .ct
                .get(&key(c2(), r(), 40000, 80, TCP), 0)
                .is_err()
        );
        assert_eq!(
            conntrack::flush(&mut dp, &conntrack::Filter::default()).unwrap(),
            3
        );
        assert!(dp.maps.v6.ct_entries().unwrap().is_empty());
    });
}

#[test]
fn routed_ipv6_is_tracked_untranslated_and_only_its_flows_reach_a_container() {
    require_root!();
    in_netns("routed6", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        let syn = tcp(c3(), r(), 1234, 80, SYN);
        let (v, out) = run(&mut dp, Dir::Egress, &syn, 1);
        assert_eq!((v, out.as_slice()), (TCX_NEXT, syn.as_slice()));
        let o = entry(&dp, &key(c3(), r(), 1234, 80, TCP));
        assert_eq!((o.flags, o.peer), (0, key(r(), c3(), 80, 1234, TCP)));
        let synack = tcp(r(), c3(), 80, 1234, SYN | ACK);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &synack, 1),
            (TCX_NEXT, synack.clone())
        );
        // Unasked: a SYN to a container is not published; an echo request
        // is let in as a flow of its own (routed mode, as for IPv4).
        let (v, _) = run(&mut dp, Dir::Ingress, &tcp(r(), c3(), 80, 1235, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 2, DropReason::NotPublished), 1);
        let ping = frame6(ICMPV6, r(), c3(), &echo6(r(), c3(), 128, 9));
        assert_eq!(run(&mut dp, Dir::Ingress, &ping, 1).0, TCX_NEXT);
        let i = entry(&dp, &key(r(), c3(), 9, 0, ICMPV6));
        assert_ne!(i.flags & ct_flags::INBOUND, 0);

        // At the container's port (loopback becomes one of network 2):
        // from the uplink (ifindex 7) only what a flow expects.
        let port = port_behind_uplink(&mut dp, 2);
        assert_eq!(run_from(&mut dp, Dir::Egress, &synack, 7).0, TCX_NEXT);
        assert_eq!(run_from(&mut dp, Dir::Egress, &ping, 7).0, TCX_NEXT);
        let stray = tcp(r(), c3(), 80, 1236, SYN);
        assert_eq!(run_from(&mut dp, Dir::Egress, &stray, 7).0, SHOT);
        assert_eq!(drops(&dp, 2, DropReason::NotPublished), 2);
        // Another network's flow does not open this one's port.
        dp.maps
            .ifaces
            .insert(LO, IfaceInfo { net_id: 1, ..port }, 0)
            .unwrap();
        assert_eq!(run_from(&mut dp, Dir::Egress, &synack, 7).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);
    });
}

#[test]
fn without_an_ipv6_address_nat66_drops_and_the_hosts_clashing_flow_is_remapped() {
    require_root!();
    in_netns("nat66addr", |pins| {
        let mut dp = nat6_datapath(pins, None);
        let (v, _) = run(&mut dp, Dir::Egress, &tcp(c1(), r(), 40000, 80, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::NatNoAddress), 1);
        // The host's own IPv6 passes untouched.
        let host = tcp(u(), r(), 50000, 80, SYN);
        assert_eq!(
            run(&mut dp, Dir::Egress, &host, 1),
            (TCX_NEXT, host.clone())
        );

        // With an address: a container's flow takes U:40000 -> R:80; the
        // host's own later flow with that tuple gets another port.
        dp.maps.v6.uplinks.insert(LO, u().octets(), 0).unwrap();
        run(&mut dp, Dir::Egress, &tcp(c1(), r(), 40000, 80, SYN), 1);
        let (v, out) = run(&mut dp, Dir::Egress, &tcp(u(), r(), 40000, 80, SYN), 1);
        assert_eq!(v, TCX_NEXT);
        let (src, _, sport, _) = parsed(&out);
        assert_eq!(src, u());
        assert_ne!(sport, 40000);
        assert_checksum(&out);
        let h = entry(&dp, &key(u(), r(), 40000, 80, TCP));
        assert_eq!(h.flags, ct_flags::SNAT | ct_flags::HOST);

        // An internal network never lets IPv6 out.
        let mut info = dp.maps.networks.get(&1, 0).unwrap();
        info.flags |= netpath_common::net_flags::INTERNAL;
        dp.maps.networks.insert(1, info, 0).unwrap();
        let (v, _) = run(&mut dp, Dir::Egress, &tcp(c2(), r(), 1, 80, SYN), 1);
        assert_eq!(v, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Internal), 1);
    });
}

/// An ICMPv6 error (`ty`, `rest`) from `src` to `dst` quoting `quoted`'s
/// IPv6 packet.
fn error6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    frame6(ICMPV6, src, dst, &icmp6(src, dst, ty, rest, &quoted[ETH..]))
}

/// The quoted packet's source, destination and ports in an error frame.
fn quoted_of(f: &[u8]) -> (Ipv6Addr, Ipv6Addr, u16, u16) {
    // `parsed` reads past an Ethernet header: skip the outer packet's
    // headers but ETH bytes of them.
    parsed(&f[40 + 8..])
}

#[test]
fn icmpv6_errors_about_nat66_flows_are_translated_quoted_packet_included() {
    require_root!();
    in_netns("icmp66", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        let router = ip("fd00:ee::1");
        // C1 takes U:40000; C2's flow with the same port gets another one.
        run(&mut dp, Dir::Egress, &tcp(c1(), r(), 40000, 80, SYN), 1);
        let (_, sent) = run(&mut dp, Dir::Egress, &tcp(c2(), r(), 40000, 80, SYN), 1);
        let (_, _, sport, _) = parsed(&sent);
        assert_ne!(sport, 40000);

        // A router on the way says Packet Too Big (MTU 1280) about what C2
        // sent: it reaches C2, the quoted packet as C2 sent it.
        let ptb = error6(router, u(), 2, 1280u32.to_be_bytes(), &sent);
        let (v, out) = run(&mut dp, Dir::Ingress, &ptb, 1);
        assert_eq!(v, TCX_NEXT);
        let (src, dst, ..) = parsed(&out);
        assert_eq!((src, dst), (router, c2()));
        assert_eq!(quoted_of(&out), (c2(), r(), 40000, 80));
        assert_eq!(out[ETH + 44..ETH + 48], 1280u32.to_be_bytes());
        assert_checksum(&out);
        assert_eq!(out.len(), ptb.len());

        // Errors about no flow, or not going back to the quoted sender:
        // the host's when addressed to it, refused at a container.
        let stray = tcp(u(), r(), 40999, 80, SYN);
        let none = error6(router, u(), 1, [0; 4], &stray);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &none, 1),
            (TCX_NEXT, none.clone())
        );
        let sideways = error6(router, u(), 1, [0; 4], &tcp(r(), u(), 80, sport, ACK));
        assert_eq!(
            run(&mut dp, Dir::Ingress, &sideways, 1),
            (TCX_NEXT, sideways.clone())
        );
        let forged = error6(router, c1(), 1, [0; 4], &tcp(c1(), r(), 40000, 80, SYN));
        assert_eq!(run(&mut dp, Dir::Ingress, &forged, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);

        // At C2's port (loopback becomes one of network 1), from the uplink
        // (ifindex 7): the written-back error is delivered, one quoting no
        // flow of the network is not.
        let uplink = dp.maps.ifaces.get(&LO, 0).unwrap();
        port_behind_uplink(&mut dp, 1);
        assert_eq!(run_from(&mut dp, Dir::Egress, &out, 7).0, TCX_NEXT);
        let unasked = error6(router, c2(), 2, [0, 0, 5, 0], &tcp(c2(), r(), 1, 80, SYN));
        assert_eq!(run_from(&mut dp, Dir::Egress, &unasked, 7).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 2);

        // C1's UDP query gets an answer, which C1 refuses with a Port
        // Unreachable: it leaves from U, quoting the answer as R sent it.
        dp.maps.ifaces.insert(LO, uplink, 0).unwrap();
        let q = query(c1());
        let (_, q_out) = run(&mut dp, Dir::Egress, &q, 1);
        let (_, _, qport, _) = parsed(&q_out);
        let answer = frame6(UDP, r(), u(), &packet::udp(r(), u(), 53, qport, b"a", true));
        let (_, delivered) = run(&mut dp, Dir::Ingress, &answer, 1);
        assert_eq!(parsed(&delivered), (r(), c1(), 53, 5353));
        let refusal = error6(c1(), r(), 1, [0; 4], &delivered);
        let (v, out) = run(&mut dp, Dir::Egress, &refusal, 1);
        assert_eq!(v, TCX_NEXT);
        let (src, dst, ..) = parsed(&out);
        assert_eq!((src, dst), (u(), r()));
        assert_eq!(quoted_of(&out), (r(), u(), 53, qport));
        assert_checksum(&out);
        // A container's error about no flow of its own would leak it.
        let leak = error6(c1(), r(), 1, [0; 4], &tcp(r(), c1(), 80, 999, ACK));
        assert_eq!(run(&mut dp, Dir::Egress, &leak, 1).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::Malformed), 1);
    });
}

/// An IPv6 fragment (`next` inside, byte `offset`, more to come or not, `id`)
/// of `part`.
pub(crate) fn fragment6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    offset: u16,
    more: bool,
    id: u32,
    part: &[u8],
) -> Vec<u8> {
    let mut p = vec![next, 0];
    p.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(part);
    frame6(44, src, dst, &p)
}

#[test]
fn later_ipv6_fragments_follow_their_first_fragments_flow_in() {
    require_root!();
    in_netns("frag66", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        // C2 then C1 ask R from port 5353: C1's flow leaves on another port.
        for c in [c2(), c1()] {
            let q = query(c);
            run(&mut dp, Dir::Egress, &q, 1);
        }
        let o = entry(&dp, &key(c1(), r(), 5353, 53, UDP));
        let port = u16::from_be(o.peer.dport_be);
        assert_ne!(port, 5353);
        // R's answer to C1 comes back in two fragments (16 bytes each).
        let payload: Vec<u8> = (0..24u8).collect();
        let answer = packet::udp(r(), u(), 53, port, &payload, true);
        let (id, proto) = (0x1234_5678, UDP);
        let first = fragment6(r(), u(), proto, 0, true, id, &answer[..16]);
        let later = fragment6(r(), u(), proto, 16, false, id, &answer[16..]);
        let (v, first_out) = run(&mut dp, Dir::Ingress, &first, 1);
        assert_eq!(v, TCX_NEXT);
        let (src, dst, sport, dport) = parsed_after_fragment(&first_out);
        assert_eq!((src, dst, sport, dport), (r(), c1(), 53, 5353));
        let (v, later_out) = run(&mut dp, Dir::Ingress, &later, 1);
        assert_eq!(v, TCX_NEXT, "the later fragment follows its flow");
        assert_eq!(parsed(&later_out).1, c1());
        assert_eq!(later_out[ETH + 48..], answer[16..], "payload untouched");
        // Put together again, the datagram's checksum holds for C1.
        let whole = [&first_out[ETH + 48..], &later_out[ETH + 48..]].concat();
        assert!(
            l4_valid(r(), c1(), UDP, &whole),
            "UDP checksum of the datagram"
        );
        // A later fragment of no recorded datagram: the host's own.
        let stray = fragment6(r(), u(), proto, 16, false, 0x9999, &answer[16..]);
        assert_eq!(
            run(&mut dp, Dir::Ingress, &stray, 1),
            (TCX_NEXT, stray.clone())
        );

        // At C1's port, from the uplink: the written-back fragment passes,
        // another datagram's later fragment for C1 does not.
        port_behind_uplink(&mut dp, 1);
        assert_eq!(run_from(&mut dp, Dir::Egress, &later_out, 7).0, TCX_NEXT);
        let unasked = fragment6(r(), c1(), proto, 16, false, 0x9999, &answer[16..]);
        assert_eq!(run_from(&mut dp, Dir::Egress, &unasked, 7).0, SHOT);
        assert_eq!(drops(&dp, 1, DropReason::DirectRouting), 1);
    });
}

/// `parsed` for a frame with an 8-byte fragment header after the IPv6 one.
pub(crate) fn parsed_after_fragment(f: &[u8]) -> (Ipv6Addr, Ipv6Addr, u16, u16) {
    let (src, dst, ..) = parsed(f);
    let l4 = ETH + 48;
    let be = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    (src, dst, be(l4), be(l4 + 2))
}

#[test]
fn errors_quoting_a_first_fragment_or_sctp_reach_their_container() {
    require_root!();
    in_netns("icmp66more", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        let router = ip("fd00:ee::1");
        // C1's large UDP datagram leaves in fragments; a router says Packet
        // Too Big quoting the first one (its Fragment header first).
        let whole = packet::udp(c1(), r(), 5353, 53, &[0x55; 48], true);
        let first = fragment6(c1(), r(), UDP, 0, true, 0xabcd, &whole[..32]);
        let (v, sent) = run(&mut dp, Dir::Egress, &first, 1);
        assert_eq!((v, parsed(&sent).0), (TCX_NEXT, u()));
        let ptb = error6(router, u(), 2, 1280u32.to_be_bytes(), &sent);
        let (v, out) = run(&mut dp, Dir::Ingress, &ptb, 1);
        assert_eq!(v, TCX_NEXT);
        let (src, dst, ..) = parsed(&out);
        assert_eq!((src, dst), (router, c1()), "written back to C1");
        // The quoted source is C1's again (after the 8-byte fragment header).
        assert_eq!(out[ETH + 48 + 8..ETH + 48 + 24], c1().octets());
        assert_checksum(&out);
        // SCTP: masqueraded, and its Packet Too Big finds C1 too.
        let init = netpath::lab::frames::sctp(5000, 5001, 0, 1, &[0; 16]);
        let (v, sent) = run(&mut dp, Dir::Egress, &frame6(132, c1(), r(), &init), 1);
        assert_eq!((v, parsed(&sent).0), (TCX_NEXT, u()));
        let ptb = error6(router, u(), 2, 1280u32.to_be_bytes(), &sent);
        let (v, out) = run(&mut dp, Dir::Ingress, &ptb, 1);
        assert_eq!(v, TCX_NEXT);
        let (src, dst, ..) = parsed(&out);
        assert_eq!((src, dst), (router, c1()));
        assert_eq!(quoted_of(&out), (c1(), r(), 5000, 5001));
        assert_checksum(&out);
    });
}

#[test]
fn atomic_fragments_from_outside_leave_other_datagrams_records_alone() {
    require_root!();
    in_netns("frag66lru", |pins| {
        let mut dp = nat6_datapath(pins, Some(u()));
        // C1 (NAT66) asks R; R's answer comes in two fragments.
        let q = query(c1());
        let (_, q_out) = run(&mut dp, Dir::Egress, &q, 1);
        let port = parsed(&q_out).2;
        let answer = packet::udp(r(), u(), 53, port, &[7; 24], true);
        let first = fragment6(r(), u(), UDP, 0, true, 0x1111, &answer[..16]);
        let later = fragment6(r(), u(), UDP, 16, false, 0x1111, &answer[16..]);
        assert_eq!(run(&mut dp, Dir::Ingress, &first, 1).0, TCX_NEXT);
        // Anyone may ping C3 (routed); 8192 atomic fragments (first and
        // last at once) of those pings record nothing, so they cannot push
        // C1's datagram out of the table (4096 entries).
        let attacker = ip("2001:470:1::66");
        let echo = echo6(attacker, c3(), 128, 0x4242);
        for id in 0..8192u32 {
            let f = fragment6(attacker, c3(), ICMPV6, 0, false, id, &echo);
            assert_eq!(run(&mut dp, Dir::Ingress, &f, 1).0, TCX_NEXT);
        }
        let (v, out) = run(&mut dp, Dir::Ingress, &later, 1);
        assert_eq!((v, parsed(&out).1), (TCX_NEXT, c1()), "C1's later fragment");
    });
}
