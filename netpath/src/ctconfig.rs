//! The words of `netpath conntrack` and the commands that name
//! protocols: protocol names and numbers, and the NAT port range and
//! timeouts (`NP_CONFIG`) as `conntrack config` sets and shows them. Pure,
//! unit-tested on the host.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use netpath_common::{Config, ct::proto};

/// A protocol's name as the CLI spells it, or its number.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::SCTP => "sctp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// A number written as plain digits (`parse` also takes a leading '+').
fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `tcp`, `udp`, `sctp`, `icmp`, `icmpv6` or a protocol number.
pub fn parse_proto(s: &str) -> Result<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(proto::TCP),
        "udp" => Ok(proto::UDP),
        "sctp" => Ok(proto::SCTP),
        "icmp" => Ok(proto::ICMP),
        "icmpv6" | "ipv6-icmp" => Ok(proto::ICMPV6),
        // Digits only (`parse` takes a leading '+'); 0 would be the flush
        // filter's "any protocol".
        n => digits::<u8>(n).filter(|p| *p != 0).ok_or_else(|| {
            anyhow::anyhow!(
                "invalid protocol {s:?}: expected tcp, udp, sctp, icmp, icmpv6 or 1-255"
            )
        }),
    }
}

/// Applies `NAME=SECONDS` timeout settings and a `MIN-MAX` port range.
pub fn apply_settings(cfg: &mut Config, timeouts: &[String], ports: Option<&str>) -> Result<()> {
    use netpath_common::timeout::NAMES;
    for t in timeouts {
        let Some((name, secs)) = t.split_once('=') else {
            bail!(
                "invalid timeout {t:?}: expected NAME=SECONDS, NAME one of {}",
                NAMES.join(", ")
            );
        };
        let Some(i) = NAMES.iter().position(|n| *n == name) else {
            bail!(
                "unknown timeout {name:?}: expected one of {}",
                NAMES.join(", ")
            );
        };
        let secs: u32 = digits(secs).filter(|s| *s > 0).ok_or_else(|| {
            anyhow::anyhow!("invalid timeout {t:?}: seconds must be a positive integer")
        })?;
        cfg.timeouts_s[i] = secs;
    }
    if let Some(r) = ports {
        let bad = || anyhow::anyhow!("invalid port range {r:?}: expected MIN-MAX within 1-65535");
        let (a, b) = r.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (digits(a).ok_or_else(bad)?, digits(b).ok_or_else(bad)?);
        if a == 0 || a > b {
            return Err(bad());
        }
        cfg.nat_port_min = a;
        cfg.nat_port_max = b;
    }
    Ok(())
}

/// The configuration as `NAME=VALUE` lines.
pub fn render_config(cfg: &Config) -> String {
    let mut s = format!("nat-ports={}-{}\n", cfg.nat_port_min, cfg.nat_port_max);
    for (i, n) in netpath_common::timeout::NAMES.iter().enumerate() {
        let _ = writeln!(s, "timeout {n}={}", cfg.timeouts_s[i]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_reject() {
        let mut c = Config::defaults();
        apply_settings(
            &mut c,
            &["udp=5".into(), "tcp-established=60".into()],
            Some("40000-40010"),
        )
        .unwrap();
        assert_eq!(c.timeouts_s[netpath_common::timeout::UDP], 5);
        assert_eq!(c.timeouts_s[netpath_common::timeout::TCP_ESTABLISHED], 60);
        assert_eq!((c.nat_port_min, c.nat_port_max), (40000, 40010));
        for (t, p) in [
            (vec!["udp".to_string()], None),
            (vec!["nope=3".to_string()], None),
            (vec!["udp=0".to_string()], None),
            (vec![], Some("10-5")),
            (vec![], Some("0-5")),
            (vec![], Some("1-70000")),
        ] {
            assert!(apply_settings(&mut c, &t, p).is_err(), "{t:?} {p:?}");
        }
        assert_eq!(parse_proto("TCP").unwrap(), 6);
        assert_eq!(parse_proto("47").unwrap(), 47);
        for p in ["icmpv6", "ipv6-icmp", "58"] {
            assert_eq!(proto_name(parse_proto(p).unwrap()), "icmpv6");
        }
        assert!(parse_proto("tcpx").is_err());
        assert!(parse_proto("0").is_err(), "0 would match every protocol");
        assert!(parse_proto("+6").is_err());
        let mut cfg = netpath_common::Config::defaults();
        assert!(apply_settings(&mut cfg, &["udp=+5".to_owned()], None).is_err());
        assert!(apply_settings(&mut cfg, &[], Some("+1024-2000")).is_err());
        assert!(apply_settings(&mut cfg, &["udp=5".to_owned()], Some("1024-2000")).is_ok());
    }
}
