//! One side of a published port as users write it (`[IP:]PORT[-END][/PROTO]`),
//! typed and checked at the edge; `spec` re-exports it. Pure, unit-tested
//! on the host.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, bail};

/// One side of `netpath publish`: `[IP:]PORT[-END][/PROTO]`, an IPv6
/// address in brackets (`[fd00::2]:80`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// `None`: every host IPv4 address (`0.0.0.0` reads so too). `[::]`
    /// stays: every host IPv6 address.
    pub addr: Option<IpAddr>,
    pub first: u16,
    pub last: u16,
    /// 6, 17 or 132; `None` when not given (tcp by default).
    pub proto: Option<u8>,
}

impl PortSpec {
    /// Number of ports (a spec always has at least one).
    pub fn count(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn proto_or_tcp(&self) -> u8 {
        self.proto.unwrap_or(6)
    }
}

impl std::fmt::Display for PortSpec {
    /// As typed, in canonical form (`0.0.0.0:` and `/TCP` spelled the
    /// short way).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(IpAddr::V4(a)) => write!(f, "{a}:")?,
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:")?,
            None => {}
        }
        write!(f, "{}", self.first)?;
        if self.last != self.first {
            write!(f, "-{}", self.last)?;
        }
        match self.proto {
            Some(6) => write!(f, "/tcp"),
            Some(17) => write!(f, "/udp"),
            Some(132) => write!(f, "/sctp"),
            Some(p) => write!(f, "/{p}"),
            None => Ok(()),
        }
    }
}

fn parse_port(s: &str, what: &str) -> Result<u16> {
    let bad = || anyhow::anyhow!("invalid {what} {s:?}: expected a number from 1 to 65535");
    // Digits only: no sign, no space.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 5 {
        return Err(bad());
    }
    let n: u32 = s.parse().map_err(|_| bad())?;
    if n == 0 || n > 65535 {
        bail!("invalid {what} {n}: ports go from 1 to 65535");
    }
    Ok(n as u16)
}

/// Parses `[IP:]PORT[-END][/tcp|/udp|/sctp]`. `need_addr`: the address is
/// mandatory (the container side); `allow_proto`: a protocol may follow.
pub fn parse_port_spec(s: &str, need_addr: bool, allow_proto: bool) -> Result<PortSpec> {
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, p)) if allow_proto => {
            let p = match p.to_ascii_lowercase().as_str() {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                _ => bail!("invalid protocol {p:?} in {s:?}: expected tcp, udp or sctp"),
            };
            (r, Some(p))
        }
        Some(_) => bail!("invalid {s:?}: the protocol goes with the host port"),
        None => (s, None),
    };
    let (addr, ports) = match rest.rsplit_once(':') {
        Some((a, p)) => (Some(parse_spec_addr(a, s)?), p),
        None if need_addr => bail!("invalid {s:?}: expected CONTAINER_IP:PORT[-END]"),
        None => (None, rest),
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (parse_port(a, "port")?, parse_port(b, "port")?),
        None => {
            let p = parse_port(ports, "port")?;
            (p, p)
        }
    };
    if last < first {
        bail!("invalid port range {first}-{last} in {s:?}: the end is below the start");
    }
    Ok(PortSpec {
        addr: addr.filter(|a| *a != IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        first,
        last,
        proto,
    })
}

/// The address of a port spec `s`: IPv4, or IPv6 in brackets.
fn parse_spec_addr(a: &str, s: &str) -> Result<IpAddr> {
    if let Some(inner) = a.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => Ok(IpAddr::V6(v6)),
            Err(_) => bail!("invalid IPv6 address {inner:?} in {s:?}"),
        };
    }
    if a.contains(':') {
        bail!("invalid {s:?}: an IPv6 address goes in brackets, as [fd00::2]:80");
    }
    a.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| anyhow::anyhow!("invalid address {a:?} in {s:?}"))
}

/// The host side of `publish`/`unpublish`, as a clap value parser.
pub fn parse_host_ports(s: &str) -> Result<PortSpec> {
    parse_port_spec(s, false, true)
}

/// The container side of `publish`, as a clap value parser.
pub fn parse_container_ports(s: &str) -> Result<PortSpec> {
    parse_port_spec(s, true, false)
}

/// Checks `publish HOST CONTAINER`: equal range lengths. (Conflicts and the
/// container's network need the current state; see `publish`.)
pub fn check_publish(host: &PortSpec, target: &PortSpec) -> Result<()> {
    if host.count() != target.count() {
        bail!(
            "the host range has {} ports and the container range {}: they must be the same length",
            host.count(),
            target.count()
        );
    }
    check_sctp_ports(host.proto_or_tcp(), host.first, target.first)
}

/// SCTP is published address-only: its CRC32c covers the ports (not the
/// addresses), so a mapping that changes ports would need every packet's
/// CRC recomputed. Docker users write `-p 9000:9000/sctp`.
pub fn check_sctp_ports(proto: u8, host_first: u16, target_first: u16) -> Result<()> {
    if proto == 132 && host_first != target_first {
        bail!(
            "an SCTP mapping cannot change ports (host {host_first}, container {target_first}): \
             SCTP is published address-only, use the same port on both sides"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_and_reject() {
        let p = parse_host_ports("8081").unwrap();
        assert_eq!(
            (p.addr, p.first, p.last, p.proto_or_tcp()),
            (None, 8081, 8081, 6)
        );
        assert_eq!(p.to_string(), "8081");
        let p = parse_host_ports("127.0.0.1:8080-8090/UDP").unwrap();
        assert_eq!(
            (p.addr, p.first, p.last, p.proto),
            (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), 8080, 8090, Some(17))
        );
        assert_eq!(p.count(), 11);
        assert_eq!(p.to_string(), "127.0.0.1:8080-8090/udp");
        let t = parse_container_ports("172.18.0.2:80").unwrap();
        assert_eq!((t.addr, t.first), (Some("172.18.0.2".parse().unwrap()), 80));
        assert_eq!(t.to_string(), "172.18.0.2:80");
        assert_eq!(parse_host_ports("0.0.0.0:53/udp").unwrap().addr, None);
        // IPv6 in brackets; `[::]` stays (every host IPv6 address).
        let h = parse_host_ports("[::]:8080/udp").unwrap();
        assert_eq!(
            (h.addr, h.to_string()),
            (Some("::".parse().unwrap()), "[::]:8080/udp".to_owned())
        );
        let t = parse_container_ports("[fd00:18::2]:80-81").unwrap();
        assert_eq!(
            (t.addr, t.to_string()),
            (
                Some("fd00:18::2".parse().unwrap()),
                "[fd00:18::2]:80-81".to_owned()
            )
        );
        assert!(
            parse_host_ports("fd00::1:8080")
                .unwrap_err()
                .to_string()
                .contains("in brackets")
        );
        assert!(
            parse_host_ports("[fd00::zz]:8080")
                .unwrap_err()
                .to_string()
                .contains("invalid IPv6 address")
        );
        assert!(parse_container_ports("[fd00::2]").is_err());
        let err = |s: &str, need: bool, proto: bool| {
            parse_port_spec(s, need, proto).unwrap_err().to_string()
        };
        let s = parse_host_ports("9000/sctp").unwrap();
        assert_eq!(
            (s.proto, s.to_string()),
            (Some(132), "9000/sctp".to_owned())
        );
        let t = parse_container_ports("172.18.0.2:9000").unwrap();
        assert!(check_publish(&s, &t).is_ok());
        let moved = parse_container_ports("172.18.0.2:9001").unwrap();
        assert!(
            check_publish(&s, &moved)
                .unwrap_err()
                .to_string()
                .contains("cannot change ports")
        );
        assert!(err("0", false, true).contains("1 to 65535"));
        assert!(err("65536", false, true).contains("1 to 65535"));
        assert!(err("x", false, true).contains("invalid port"));
        assert!(err("+8080", false, true).contains("invalid port"));
        assert!(err("080080", false, true).contains("invalid port"));
        assert!(err("80/dccp", false, true).contains("tcp, udp or sctp"));
        assert!(err("90-80", false, true).contains("below"));
        assert!(err("80", true, false).contains("CONTAINER_IP:PORT"));
        assert!(err("172.18.0.2:80/tcp", true, false).contains("host port"));
        assert!(err("1.2.3:80", false, true).contains("invalid address"));
        let h = parse_host_ports("8000-8009").unwrap();
        let t = parse_container_ports("172.18.0.2:80-88").unwrap();
        assert!(
            check_publish(&h, &t)
                .unwrap_err()
                .to_string()
                .contains("same length")
        );
    }
}
