//! BPF_PROG_TEST_RUN scaffolding: a private pin directory and a runner.

use std::path::PathBuf;

use aya::programs::{TestRun as _, TestRunOptions};
use netpath::{attach::Datapath, state::Dir};
use netpath_common::CounterKey;

/// TCX_NEXT (-1) as the u32 BPF_PROG_TEST_RUN reports.
pub const TCX_NEXT: u32 = u32::MAX;
/// TC_ACT_SHOT.
pub const SHOT: u32 = 2;
/// Loopback's ifindex in a fresh namespace: BPF_PROG_TEST_RUN's skb->dev.
pub const LO: u32 = 1;

/// A private pin directory on bpffs, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
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

/// Sum over CPUs of one counter: (packets, bytes).
pub fn counter(dp: &Datapath, scope: u16, id: u32, kind: u16) -> (u64, u64) {
    let c = dp
        .maps
        .counter(CounterKey { id, scope, kind })
        .expect("reading counter");
    (c.packets, c.bytes)
}

/// Runs `dir`'s program on `frame` `repeat` times; returns (verdict, output bytes).
pub fn run(dp: &mut Datapath, dir: Dir, frame: &[u8], repeat: u32) -> (u32, Vec<u8>) {
    run_with(dp, dir, frame, repeat, None)
}

/// [`run`] with the packet having come into the host through interface
/// `iif` (`skb->skb_iif`; 0: sent by the host itself).
pub fn run_from(dp: &mut Datapath, dir: Dir, frame: &[u8], iif: u32) -> (u32, Vec<u8>) {
    run_with(dp, dir, frame, 1, Some(iif))
}

fn run_with(
    dp: &mut Datapath,
    dir: Dir,
    frame: &[u8],
    repeat: u32,
    iif: Option<u32>,
) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    // The head of a `struct __sk_buff` up to `ingress_ifindex` (offset 36):
    // the kernel takes a shorter context and zero-fills the rest.
    let mut ctx = [0u8; 40];
    if let Some(i) = iif {
        ctx[36..40].copy_from_slice(&i.to_ne_bytes());
    }
    // The program of the role the test gave loopback (a port's when none:
    // every program passes what it does not manage).
    let role = dp
        .maps
        .ifaces
        .get(&LO, 0)
        .ok()
        .and_then(|i| netpath_common::IfaceRole::from_u32(i.role))
        .unwrap_or(netpath_common::IfaceRole::Port);
    let prog = dp.program(role, dir).expect("program");
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: iif.map(|_| &ctx[..]),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// Drops of network `net_id` counted for `reason`.
pub fn drops(dp: &Datapath, net_id: u32, reason: netpath_common::DropReason) -> u64 {
    counter(
        dp,
        netpath_common::counter_scope::NETWORK,
        net_id,
        reason.counter_kind(),
    )
    .0
}

/// Turns `flags` on (`on`) or off in network `id`'s record, as `network
/// set` flips them in the map.
pub fn set_flags(dp: &mut Datapath, id: u32, flags: u32, on: bool) {
    let mut net = dp.maps.networks.get(&id, 0).unwrap();
    if on {
        net.flags |= flags;
    } else {
        net.flags &= !flags;
    }
    dp.maps.networks.insert(id, net, 0).unwrap();
}

/// The ifindex of the other container port the tests play (a veth
/// [`in_netns`] makes): the fast path hands packets to it only
/// when they fit its MTU, which the kernel reads from a real device.
pub const PEER_IFINDEX: u32 = 42;

/// Runs a test body on a thread inside a fresh namespace (so loopback is
/// ifindex 1, and a veth is [`PEER_IFINDEX`]) with a private pin
/// directory `tag`.
pub fn in_netns(tag: &'static str, f: impl FnOnce(&std::path::Path) + Send + 'static) {
    let ns = crate::harness::Netns::new("tr").unwrap();
    ns.ip(&[
        "link",
        "add",
        "peer",
        "index",
        &PEER_IFINDEX.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        "peer-end",
    ])
    .unwrap();
    let pins = PinDir::new(tag);
    let dir = pins.0.clone();
    ns.run(move || f(&dir)).expect("test thread in namespace");
}
