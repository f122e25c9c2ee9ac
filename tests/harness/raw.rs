//! Raw Ethernet frames in and out of a namespace's interface (AF_PACKET),
//! for the tests that play an attacker: crafted sources, VLAN tags, ARP
//! claims, floods.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use super::Netns;

const ETH_P_ALL: u16 = 0x0003;

/// The MAC of `ifname` in `ns`.
pub fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", ifname]).expect("ip link");
    let hex = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"));
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(hex.split(':')) {
        *b = u8::from_str_radix(h, 16).expect("MAC byte");
    }
    mac
}

/// A packet socket bound to `ifname` (in the calling thread's namespace).
fn socket(ifname: &str) -> OwnedFd {
    // SAFETY: plain socket/bind calls with valid arguments; the fd is owned.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        );
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(ifname).expect("ifname");
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index != 0, "no interface {ifname}");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = index as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind {ifname}: {}", std::io::Error::last_os_error());
        fd
    }
}

/// Sends every frame of `frames` out of `ifname` in `ns`, `times` rounds.
/// Returns how many were sent.
pub fn send(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>, times: usize) -> usize {
    let ifname = ifname.to_owned();
    ns.run(move || send_here(&ifname, &frames, times))
        .expect("sender thread")
}

/// [`send`] from the calling thread's namespace.
pub fn send_here(ifname: &str, frames: &[Vec<u8>], times: usize) -> usize {
    let fd = socket(ifname);
    let mut sent = 0;
    for _ in 0..times {
        for f in frames {
            // SAFETY: sending a valid buffer on our own socket.
            let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if n == f.len() as isize {
                sent += 1;
            }
        }
    }
    sent
}

/// Frames seen on `ifname` in `ns` for `window` that `keep` accepts.
pub fn capture(
    ns: &Netns,
    ifname: &str,
    window: Duration,
    keep: impl Fn(&[u8]) -> bool + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<Vec<Vec<u8>>>> {
    let ifname = ifname.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let fd = socket(&ifname);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: setting a receive timeout on our own socket.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let _ = ready_tx.send(());
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            // SAFETY: receiving into a buffer we own.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && keep(&buf[..n as usize]) {
                seen.push(buf[..n as usize].to_vec());
            }
        }
        Ok(seen)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(3))
        .expect("capture ready");
    h
}

/// `frame` (Ethernet, from `packet::frame`) with these MACs.
pub fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// `frame` with a VLAN tag (`tpid`, `vid`) inserted after the MACs.
pub fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut t = frame[..12].to_vec();
    t.extend_from_slice(&tpid.to_be_bytes());
    t.extend_from_slice(&vid.to_be_bytes());
    t.extend_from_slice(&frame[12..]);
    t
}

/// An Ethernet/IPv4 ARP packet (`op` 1 request, 2 reply) from (`sha`,
/// `spa`) to (`tha`, `tpa`), broadcast or to `tha`.
pub fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let dst = if op == 1 { [0xff; 6] } else { tha };
    let mut f = dst.to_vec();
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}
