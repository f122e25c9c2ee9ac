//! BPF_PROG_TEST_RUN on crafted packets: the programs run without any
//! interface plumbing. Each test loads the embedded object with a private
//! map pin directory inside a fresh network namespace (so ifindex 1 is that
//! namespace's loopback, which BPF_PROG_TEST_RUN uses as skb->dev).

mod harness;

use std::path::PathBuf;

use aya::programs::{TestRun as _, TestRunOptions};
use harness::Netns;
use netpath::{attach::Datapath, state::Dir};
use netpath_common::{CounterKey, IfaceInfo, IfaceRole, counter_kind, counter_scope};

/// TCX_NEXT (-1) as the u32 BPF_PROG_TEST_RUN reports.
const TCX_NEXT: u32 = u32::MAX;
const LO: u32 = 1;

/// A private pin directory on bpffs, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        netpath::netns::ensure_bpffs().expect("bpffs");
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/netpath-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating pin dir");
        Self(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

fn counter(dp: &Datapath, scope: u16, id: u32, kind: u16) -> (u64, u64) {
    let c = dp
        .maps
        .counter(CounterKey { id, scope, kind })
        .expect("reading counter");
    (c.packets, c.bytes)
}

/// Runs `dir`'s program on `frame` `repeat` times; returns (verdict, output bytes).
fn run(dp: &mut Datapath, dir: Dir, frame: &[u8], repeat: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let prog = dp.program(dir).expect("program");
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
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
