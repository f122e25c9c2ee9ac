//! Raw Ethernet frames in and out of a namespace's interface (AF_PACKET),
//! for the tests that play an attacker: crafted sources, VLAN tags, ARP
//! claims, floods.

use std::{
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use super::Netns;

use netpath::lab::frames::RawSocket;
pub use netpath::lab::frames::{arp, tagged, with_macs};

/// The MAC of `ifname` in `ns`.
pub fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let ifname = ifname.to_owned();
    ns.run(move || netpath::lab::frames::mac_of(&ifname))
        .expect("thread in the namespace")
        .expect("MAC address")
}

/// A packet socket bound to `ifname` (in the calling thread's namespace).
fn socket(ifname: &str) -> RawSocket {
    RawSocket::bind(ifname).expect("packet socket")
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
    let sock = socket(ifname);
    let mut sent = 0;
    for _ in 0..times {
        sent += frames.iter().filter(|f| sock.send(f)).count();
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
        let sock = socket(&ifname);
        let fd = sock.fd();
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
