//! BPF_PROG_TEST_RUN on crafted packets: the programs run without any
//! interface plumbing. Each test loads the embedded object with a private
//! map pin directory inside a fresh network namespace (so ifindex 1 is that
//! namespace's loopback, which BPF_PROG_TEST_RUN uses as skb->dev).

use crate::harness;

use harness::{
    Netns,
    testrun::{LO, PinDir, TCX_NEXT, counter, run},
};
use netpath::{attach::Datapath, state::Dir};
use netpath_common::{IfaceInfo, IfaceRole, counter_kind, counter_scope};

/// Ethernet + IPv4 + UDP, 64 bytes on the wire (without FCS).
fn udp_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = [0xabu8; 22];
    let total = 20 + 8 + payload.len();
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 172, 30, 0, 2, 198, 18, 0, 2,
    ];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let csum = !ip.chunks(2).fold(0u32, |a, c| {
        let s = a + u32::from(u16::from_be_bytes([c[0], c[1]]));
        (s & 0xffff) + (s >> 16)
    }) as u16;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(&payload);
    f
}

#[test]
fn port_packets_are_counted_and_passed_unchanged() {
    require_root!();
    let ns = Netns::new("tr").unwrap();
    let pins = PinDir::new("port");
    let dir = pins.0.clone();
    ns.run(move || {
        let mut dp = Datapath::load_with_pins(&dir).expect("loading");
        let frame = udp_frame();
        let len = frame.len() as u64;

        // Not managed: passed on, nothing counted.
        let (verdict, out) = run(&mut dp, Dir::Ingress, &frame, 1);
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(out, frame);
        assert_eq!(
            counter(&dp, counter_scope::IFACE, LO, counter_kind::IF_INGRESS),
            (0, 0)
        );

        // Loopback as a port of network 7.
        let info = IfaceInfo {
            role: IfaceRole::Port as u32,
            net_id: 7,
            ..Default::default()
        };
        dp.maps.ifaces.insert(LO, info, 0).unwrap();
        let (verdict, out) = run(&mut dp, Dir::Ingress, &frame, 3);
        assert_eq!(verdict, TCX_NEXT, "the foundation datapath never drops");
        assert_eq!(out, frame, "the foundation datapath never rewrites");
        assert_eq!(
            counter(&dp, counter_scope::IFACE, LO, counter_kind::IF_INGRESS),
            (3, 3 * len)
        );
        assert_eq!(
            counter(
                &dp,
                counter_scope::NETWORK,
                7,
                counter_kind::NET_FROM_CONTAINERS
            ),
            (3, 3 * len)
        );
        assert_eq!(
            counter(
                &dp,
                counter_scope::NETWORK,
                7,
                counter_kind::NET_TO_CONTAINERS
            ),
            (0, 0)
        );

        let (verdict, _) = run(&mut dp, Dir::Egress, &frame, 1);
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(
            counter(&dp, counter_scope::IFACE, LO, counter_kind::IF_EGRESS),
            (1, len)
        );
        assert_eq!(
            counter(
                &dp,
                counter_scope::NETWORK,
                7,
                counter_kind::NET_TO_CONTAINERS
            ),
            (1, len)
        );
    })
    .unwrap();
}

#[test]
fn uplink_and_bridge_packets_count_only_per_interface() {
    require_root!();
    let ns = Netns::new("tr").unwrap();
    let pins = PinDir::new("uplink");
    let dir = pins.0.clone();
    ns.run(move || {
        let mut dp = Datapath::load_with_pins(&dir).expect("loading");
        let frame = udp_frame();
        for role in [IfaceRole::Uplink, IfaceRole::Bridge] {
            let info = IfaceInfo {
                role: role as u32,
                net_id: 9,
                ..Default::default()
            };
            dp.maps.ifaces.insert(LO, info, 0).unwrap();
            run(&mut dp, Dir::Ingress, &frame, 1);
        }
        assert_eq!(
            counter(&dp, counter_scope::IFACE, LO, counter_kind::IF_INGRESS).0,
            2
        );
        assert_eq!(
            counter(
                &dp,
                counter_scope::NETWORK,
                9,
                counter_kind::NET_FROM_CONTAINERS
            ),
            (0, 0)
        );
    })
    .unwrap();
}

#[test]
fn truncated_frames_pass_and_count_their_length() {
    require_root!();
    let ns = Netns::new("tr").unwrap();
    let pins = PinDir::new("trunc");
    let dir = pins.0.clone();
    ns.run(move || {
        let mut dp = Datapath::load_with_pins(&dir).expect("loading");
        let info = IfaceInfo {
            role: IfaceRole::Port as u32,
            net_id: 1,
            ..Default::default()
        };
        dp.maps.ifaces.insert(LO, info, 0).unwrap();
        // The kernel refuses test input with a cut IPv4 header, so cut what
        // follows it, and cut a non-IP frame right after its Ethernet header.
        let udp = udp_frame();
        let mut arp = udp[..15].to_vec();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let frames = [&udp[..34], &udp[..38], &arp[..]];
        for frame in frames {
            let (verdict, out) = run(&mut dp, Dir::Ingress, frame, 1);
            assert_eq!(verdict, TCX_NEXT, "len {}", frame.len());
            assert_eq!(out, frame, "len {}", frame.len());
        }
        assert_eq!(
            counter(&dp, counter_scope::IFACE, LO, counter_kind::IF_INGRESS),
            (3, 34 + 38 + 15)
        );
    })
    .unwrap();
}
