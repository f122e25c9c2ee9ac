//! SCTP through the datapath without the kernel's SCTP stack (this
//! machine's kernel is built without `CONFIG_IP_SCTP`, so there are no
//! SCTP sockets): both ends are raw IPv4 sockets of protocol 132 that send
//! real SCTP packets (an INIT, then an INIT ACK, CRC32c computed here) and
//! check what arrives: the peer's address as the datapath left it, the
//! ports, and that the CRC32c still holds (the datapath never recomputes
//! it: an address-only rewrite must keep it valid).

use std::{
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{
    frames::{SCTP, SCTP_INIT, SCTP_INIT_ACK, sctp, sctp_crc_valid},
    topology::{IO_TIMEOUT, Netns, exchange},
};

/// What one side received: the sender's address, the SCTP packet.
fn recv_sctp(s: &Socket, local_port: u16, chunk: u8) -> Result<(Ipv4Addr, Vec<u8>)> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < deadline {
        let (n, _) = match s.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e).context("raw SCTP recv"),
        };
        // SAFETY: recv_from initialised the first `n` bytes.
        let pkt: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // A raw IPv4 socket returns the IP header too.
        let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
        if pkt.len() < ihl + 16 {
            continue;
        }
        let l4 = pkt[ihl..].to_vec();
        let dport = u16::from_be_bytes([l4[2], l4[3]]);
        if dport != local_port || l4[12] != chunk {
            continue; // someone else's
        }
        let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
        return Ok((src, l4));
    }
    bail!("no SCTP chunk {chunk} to port {local_port} within {IO_TIMEOUT:?}")
}

fn raw() -> Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(SCTP))),
    )
    .context("raw IPv4 socket of protocol 132")?;
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    Ok(s)
}

/// What an SCTP INIT / INIT ACK exchange saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The INIT's source as the server saw it.
    pub client: Ipv4Addr,
    /// The INIT ACK's source as the client saw it.
    pub server: Ipv4Addr,
}

/// `client_ns` sends an INIT from port `sport` to `dial`; `server_ns`
/// answers on `dial`'s port with an INIT ACK. Fails unless both packets
/// arrive with their ports and a valid CRC32c.
pub fn sctp_init(
    server_ns: &Netns,
    client_ns: &Netns,
    sport: u16,
    dial: SocketAddrV4,
) -> Result<Seen> {
    let port = dial.port();
    let server = move |ready: std::sync::mpsc::Sender<()>| -> Result<Ipv4Addr> {
        let s = raw()?;
        let _ = ready.send(());
        let (from, init) = recv_sctp(&s, port, SCTP_INIT)?;
        if !sctp_crc_valid(&init) {
            bail!("the INIT arrived with a bad CRC32c");
        }
        let cport = u16::from_be_bytes([init[0], init[1]]);
        let ack = sctp(port, cport, 0x0bad_cafe, SCTP_INIT_ACK, b"netpath init ack");
        s.send_to(&ack, &SockAddr::from(SocketAddrV4::new(from, 0)))
            .context("sending the INIT ACK")?;
        Ok(from)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let client = move || -> Result<()> {
        let s = raw()?;
        let init = sctp(sport, port, 0, SCTP_INIT, b"netpath init");
        s.send_to(&init, &SockAddr::from(SocketAddrV4::new(*dial.ip(), 0)))
            .context("sending the INIT")?;
        let (from, ack) = recv_sctp(&s, sport, SCTP_INIT_ACK)?;
        if !sctp_crc_valid(&ack) {
            bail!("the INIT ACK arrived with a bad CRC32c");
        }
        if u16::from_be_bytes([ack[0], ack[1]]) != port {
            bail!("the INIT ACK came from another port");
        }
        let _ = tx.send(from);
        Ok(())
    };
    let client_seen = exchange(
        &format!("SCTP {dial}"),
        server_ns,
        client_ns,
        server,
        client,
    )?;
    let server_seen = rx.recv().context("the client saw no INIT ACK")?;
    Ok(Seen {
        client: client_seen,
        server: server_seen,
    })
}
