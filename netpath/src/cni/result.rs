//! The CNI 1.0.0 result and error JSON (what the plugin prints on stdout),
//! and the spec's error codes. Pure: unit-tested on the host.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The one spec version this plugin speaks.
pub const VERSION: &str = "1.0.0";

/// The spec's error codes (CNI spec 1.0.0, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// netpath's own: the datapath, netlink or the state refused or failed
    /// (an overlapping subnet, a host port published already, …).
    pub const NETPATH: u32 = 100;
    /// netpath's own: the IPAM plugin could not be run or said nonsense.
    pub const IPAM: u32 = 101;
    /// netpath's own: CHECK found something ADD made missing or changed.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    // The reference IPAM plugins leave it out of their errors.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            cni_version: VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// `msg` with `err`'s whole context chain as the details.
    pub fn with(code: u32, msg: impl Into<String>, err: &anyhow::Error) -> Self {
        Self {
            details: format!("{err:#}"),
            ..Self::new(code, msg)
        }
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// An interface of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The container's namespace; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR: the address and its subnet's prefix length.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A CNI 1.0.0 success result (also an IPAM plugin's, and `prevResult`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Passed through from IPAM as it came.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub dns: serde_json::Value,
}

/// The one IPv4 address of a result, typed: (address, its subnet,
/// gateway, the index of its interface).
pub type Ipv4Of = (Ipv4Addr, Ipv4Net, Option<Ipv4Addr>, Option<usize>);

impl CniResult {
    /// The first IPv4 address (netpath networks are IPv4 only); an IPv6
    /// address is refused rather than dropped silently.
    pub fn ipv4(&self) -> Result<Ipv4Of, CniError> {
        let bad = |what: String| CniError::new(code::IPAM, what);
        let mut found = None;
        for ip in &self.ips {
            let net: ipnet::IpNet = ip
                .address
                .parse()
                .map_err(|_| bad(format!("address {:?} is not CIDR", ip.address)))?;
            match net {
                ipnet::IpNet::V6(_) => {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!("IPv6 address {net}: netpath networks are IPv4 only"),
                    ));
                }
                ipnet::IpNet::V4(v4) if found.is_none() => {
                    let gw = match &ip.gateway {
                        None => None,
                        Some(g) => Some(
                            g.parse::<Ipv4Addr>()
                                .map_err(|_| bad(format!("gateway {g:?} is not IPv4")))?,
                        ),
                    };
                    found = Some((v4.addr(), v4.trunc(), gw, ip.interface));
                }
                ipnet::IpNet::V4(v4) => {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!("a second IPv4 address {v4}: netpath gives a container one"),
                    ));
                }
            }
        }
        found.ok_or_else(|| bad("the result has no IPv4 address".to_owned()))
    }
}

/// The answer to VERSION.
#[derive(Debug, Serialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: &'static str,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: [&'static str; 1],
}

pub const VERSION_INFO: VersionInfo = VersionInfo {
    cni_version: VERSION,
    supported_versions: [VERSION],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_is_spec_shaped() {
        let e = CniError::with(
            code::INVALID_CONFIG,
            "bad config",
            &anyhow::anyhow!("inner").context("outer"),
        );
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"outer: inner"})
        );
        let bare = serde_json::to_value(CniError::new(code::INVALID_ENV, "x")).unwrap();
        assert!(bare.get("details").is_none());
    }

    #[test]
    fn result_json_round_trip_and_ipv4() {
        let text = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},
            {"name":"eth0","mac":"02:42:0a:58:00:02","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.88.0.2/16","gateway":"10.88.0.1","interface":1}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["1.1.1.1"]}}"#;
        let r: CniResult = serde_json::from_str(text).unwrap();
        let (a, net, gw, i) = r.ipv4().unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(net.to_string(), "10.88.0.0/16");
        assert_eq!(gw, Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(i, Some(1));
        let back: serde_json::Value = serde_json::to_value(&r).unwrap();
        let orig: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig);
        let v6: CniResult =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::2/64"}]}"#)
                .unwrap();
        assert_eq!(v6.ipv4().unwrap_err().code, code::UNSUPPORTED_FIELD);
        let none: CniResult = serde_json::from_str(r#"{"cniVersion":"1.0.0","ips":[]}"#).unwrap();
        assert_eq!(none.ipv4().unwrap_err().code, code::IPAM);
        let v = serde_json::to_value(VERSION_INFO).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","supportedVersions":["1.0.0"]})
        );
    }
}
