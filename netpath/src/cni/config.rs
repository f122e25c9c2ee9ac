//! The plugin's network configuration (stdin) and environment, typed and
//! checked before anything changes. Pure: unit-tested on the host.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use netpath_common::GatewayMode;
use serde::Deserialize;

use super::result::{CniError, CniResult, VERSION, code};
use crate::{
    publish::Ports,
    spec::{self, NetworkOptions},
};

/// The config as it arrives on stdin. Keys netpath does not know are
/// ignored (runtimes add their own, such as podman's `podman_labels`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    // cniVersion is checked before this is read.
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    chained: bool,
    bridge: Option<String>,
    is_gateway: Option<bool>,
    ip_masq: Option<bool>,
    gateway_mode: Option<String>,
    icc: Option<bool>,
    internal: Option<bool>,
    cgroup: Option<PathBuf>,
    #[serde(default)]
    uplinks: Vec<String>,
    /// Peer CIDRs (`netpath up --no-masquerade-to`): the cluster's pod
    /// CIDR on a Kubernetes node.
    #[serde(default)]
    no_masquerade_to: Vec<String>,
    ipam: Option<serde_json::Value>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    prev_result: Option<CniResult>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
}

/// One entry of `runtimeConfig.portMappings` (the `portMappings`
/// capability's convention).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    host_port: u32,
    container_port: u32,
    #[serde(default)]
    protocol: String,
    #[serde(default, rename = "hostIP")]
    host_ip: String,
}

/// The checked config.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// The CNI network's name: one netpath network.
    pub name: String,
    /// After the reference `bridge` plugin: bind, publish, police; no
    /// bridge, veth or address of its own.
    pub chained: bool,
    /// The bridge (standalone; default `cni0`, as the reference plugin's).
    pub bridge: String,
    pub options: NetworkOptions,
    /// Socket hooks' cgroup: the config's `cgroup`, else `NETPATH_CGROUP`.
    pub cgroup: Option<PathBuf>,
    pub uplinks: Vec<String>,
    /// Peer CIDRs (see [`crate::peers`]).
    pub no_masquerade_to: Vec<ipnet::Ipv4Net>,
    /// The IPAM plugin's `type` (standalone).
    pub ipam_type: Option<String>,
    pub ports: Vec<Ports>,
    pub prev_result: Option<CniResult>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// Parses and checks the config on stdin; `env_cgroup` is
/// `NETPATH_CGROUP`, used when the config names no cgroup.
pub fn parse(stdin: &[u8], env_cgroup: Option<PathBuf>) -> Result<NetConf, CniError> {
    // The version first: a config of another version may not even parse.
    let v: serde_json::Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE, format!("the network config is not JSON: {e}")))?;
    match v.get("cniVersion").and_then(|v| v.as_str()) {
        Some(VERSION) => {}
        Some(other) => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {other} is not supported (netpath speaks {VERSION})"),
            ));
        }
        None => return Err(invalid("the network config has no cniVersion".to_owned())),
    }
    let raw: Raw = serde_json::from_value(v)
        .map_err(|e| CniError::new(code::DECODE, format!("the network config: {e}")))?;
    if raw.kind != "netpath" {
        return Err(invalid(format!("type {:?} is not netpath", raw.kind)));
    }
    if raw.name.is_empty() {
        return Err(invalid("the network config has no name".to_owned()));
    }
    // The spec's rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (it names a
    // directory of records: no `.`, `..` or `/`).
    let name_ok = raw
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(invalid(format!(
            "network name {:?}: letters, digits, '_', '.' and '-', starting with a letter or digit",
            raw.name
        )));
    }
    let bridge = raw.bridge.clone().unwrap_or_else(|| "cni0".to_owned());
    spec::validate_ifname(&bridge).map_err(|e| invalid(format!("bridge: {e:#}")))?;
    for u in &raw.uplinks {
        spec::validate_ifname(u).map_err(|e| invalid(format!("uplinks: {e:#}")))?;
    }
    let no_masquerade_to = raw
        .no_masquerade_to
        .iter()
        .map(|c| crate::peers::parse(c))
        .collect::<anyhow::Result<Vec<_>>>()
        .and_then(|v| crate::peers::validate(&v).map(|()| v))
        .map_err(|e| invalid(format!("noMasqueradeTo: {e:#}")))?;
    if raw.is_gateway == Some(false) && !raw.chained {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "isGateway false: a netpath network always routes through its bridge's gateway",
        ));
    }
    let gateway_mode = match raw.gateway_mode.as_deref() {
        None => GatewayMode::Nat,
        Some(m) => GatewayMode::ALL
            .into_iter()
            .find(|g| g.as_str() == m)
            .ok_or_else(|| {
                invalid(format!(
                    "gatewayMode {m:?}: expected nat, nat-unprotected or routed"
                ))
            })?,
    };
    let internal = raw.internal.unwrap_or(false);
    let options = NetworkOptions {
        // netpath is the masquerade: on unless the config says otherwise
        // (the reference bridge plugin's ipMasq defaults to false).
        masquerade: raw.ip_masq.unwrap_or(true) && !internal,
        icc: raw.icc.unwrap_or(true),
        internal,
        gateway_mode,
        ..Default::default()
    };
    let ipam_type = match (&raw.ipam, raw.chained) {
        (_, true) => None,
        (None, false) => {
            return Err(invalid(
                "no ipam: standalone netpath needs an IPAM plugin".to_owned(),
            ));
        }
        (Some(i), false) => {
            let t = i
                .get("type")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty() && !t.contains('/'))
                .ok_or_else(|| invalid("ipam has no plugin type".to_owned()))?;
            Some(t.to_owned())
        }
    };
    let ports = port_mappings(&raw.runtime_config.port_mappings)?;
    Ok(NetConf {
        name: raw.name,
        chained: raw.chained,
        bridge,
        options,
        cgroup: raw.cgroup.or(env_cgroup),
        uplinks: raw.uplinks,
        no_masquerade_to,
        ipam_type,
        ports,
        prev_result: raw.prev_result,
    })
}

/// What DEL needs of a config that [`parse`] refuses (a config that was
/// never good may still have left the IPAM lease or a chained plugin's
/// veth to clean up): its name, mode and IPAM type. DEL must not fail on
/// options it will not apply.
pub fn parse_for_del(stdin: &[u8], full: CniError) -> Result<NetConf, CniError> {
    if full.code == code::DECODE || full.code == code::INCOMPATIBLE_VERSION {
        return Err(full);
    }
    let v: serde_json::Value = serde_json::from_slice(stdin).map_err(|_| full.clone())?;
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty());
    let Some(name) = name else { return Err(full) };
    let chained = v.get("chained").and_then(|c| c.as_bool()).unwrap_or(false);
    let ipam_type = v
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .map(str::to_owned);
    Ok(NetConf {
        name: name.to_owned(),
        chained,
        bridge: String::new(),
        options: NetworkOptions::default(),
        cgroup: None,
        uplinks: Vec::new(),
        no_masquerade_to: Vec::new(),
        ipam_type,
        ports: Vec::new(),
        prev_result: None,
    })
}

/// `runtimeConfig.portMappings` as mappings to a container address still
/// unknown (0.0.0.0, filled in by [`with_target`]).
fn port_mappings(maps: &[PortMapping]) -> Result<Vec<Ports>, CniError> {
    let mut out: Vec<Ports> = Vec::new();
    for m in maps {
        let port = |p: u32, what: &str| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(format!("portMappings: {what} {p} is not a port")))
        };
        let proto = match m.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => 6,
            "udp" => 17,
            "sctp" => 132,
            other => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("portMappings: protocol {other:?}"),
                ));
            }
        };
        let host_addr = match m.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            a => Some(a.parse::<Ipv4Addr>().map_err(|_| {
                CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("portMappings: hostIP {a:?} is not IPv4 (netpath publishes IPv4)"),
                )
            })?),
        };
        let host = port(m.host_port, "hostPort")?;
        let p = Ports {
            host_addr,
            host_first: host,
            host_last: host,
            proto,
            target: Ipv4Addr::UNSPECIFIED,
            target_first: port(m.container_port, "containerPort")?,
        };
        spec::check_sctp_ports(proto, host, p.target_first)
            .map_err(|e| invalid(format!("{e:#}")))?;
        if let Some(c) = crate::publish::conflict(
            &out.iter().flat_map(|o| o.entries(0)).collect::<Vec<_>>(),
            &p,
        ) {
            return Err(invalid(format!("portMappings: {c}")));
        }
        out.push(p);
    }
    Ok(out)
}

/// The mappings aimed at the container's address.
pub fn with_target(ports: &[Ports], target: Ipv4Addr) -> Vec<Ports> {
    ports.iter().map(|p| Ports { target, ..*p }).collect()
}

/// The CNI_* environment.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and checks the CNI_* variables `command` needs.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let missing = |k: &str| CniError::new(code::INVALID_ENV, format!("{k} is not set"));
        let command = get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?;
        if command == "VERSION" {
            return Ok(Self {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                path: Vec::new(),
            });
        }
        let container_id = get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
        if !container_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {container_id:?} has characters a container id cannot have"
                ),
            ));
        }
        let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
        spec::validate_ifname(&ifname)
            .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {e:#}")))?;
        let netns = get("CNI_NETNS").map(PathBuf::from);
        // DEL must work when the namespace is gone, even unnamed.
        if netns.is_none() && command != "DEL" {
            return Err(missing("CNI_NETNS"));
        }
        let path: Vec<PathBuf> = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDALONE: &str = r#"{"cniVersion":"1.0.0","name":"net1","type":"netpath","bridge":"np-cni0",
        "ipMasq":true,"gatewayMode":"routed","icc":false,
        "ipam":{"type":"host-local","ranges":[[{"subnet":"10.89.0.0/24"}]]},
        "capabilities":{"portMappings":true},"podman_labels":{},
        "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},
                                         {"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}]}}"#;

    #[test]
    fn standalone_config_is_typed() {
        let c = parse(STANDALONE.as_bytes(), Some("/sys/fs/cgroup/x".into())).unwrap();
        assert_eq!((c.name.as_str(), c.bridge.as_str()), ("net1", "np-cni0"));
        assert!(!c.chained);
        assert!(c.options.masquerade && !c.options.icc && !c.options.internal);
        assert_eq!(c.options.gateway_mode, GatewayMode::Routed);
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.cgroup, Some(PathBuf::from("/sys/fs/cgroup/x")));
        assert!(c.no_masquerade_to.is_empty());
        let with_peers = STANDALONE.replace(
            r#""icc":false,"#,
            r#""icc":false,"noMasqueradeTo":["10.244.0.0/16","10.96.0.0/12"],"#,
        );
        let p = parse(with_peers.as_bytes(), None).unwrap();
        assert_eq!(p.no_masquerade_to.len(), 2);
        for bad in [r#"["0.0.0.0/0"]"#, r#"["10.244.0.1/16"]"#, r#"["x"]"#] {
            let text = STANDALONE.replace(
                r#""icc":false,"#,
                &format!(r#""icc":false,"noMasqueradeTo":{bad},"#),
            );
            let e = parse(text.as_bytes(), None).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
        }
        let t: Ipv4Addr = "10.89.0.2".parse().unwrap();
        let p = with_target(&c.ports, t);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (
                p[0].host_addr,
                p[0].host_first,
                p[0].proto,
                p[0].target_first
            ),
            (None, 8080, 6, 80)
        );
        assert_eq!(p[1].host_addr, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((p[1].proto, p[1].target), (17, t));
    }

    #[test]
    fn defaults_and_chained() {
        let c = parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netpath","chained":true,"cgroup":"/cg"}"#,
            Some("/env".into()),
        )
        .unwrap();
        assert!(c.chained && c.options.masquerade && c.options.icc);
        assert_eq!(c.bridge, "cni0");
        assert_eq!(c.cgroup, Some(PathBuf::from("/cg")));
        assert!(c.ipam_type.is_none() && c.ports.is_empty());
        let internal = parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"netpath","internal":true,"ipam":{"type":"host-local"}}"#,
            None,
        )
        .unwrap();
        assert!(internal.options.internal && !internal.options.masquerade);
    }

    #[test]
    fn bad_configs_get_spec_codes() {
        let code_of = |s: &str| parse(s.as_bytes(), None).unwrap_err().code;
        assert_eq!(code_of("{not json"), code::DECODE);
        assert_eq!(
            code_of(r#"{"cniVersion":"0.4.0","name":"n","type":"netpath"}"#),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            code_of(r#"{"name":"n","type":"netpath"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"x"}}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","type":"netpath"}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","name":"n","type":"netpath","ipam":{}}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(
                r#"{"cniVersion":"1.0.0","name":"n","type":"netpath","ipam":{"type":"x"},"gatewayMode":"open"}"#
            ),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(
                r#"{"cniVersion":"1.0.0","name":"n","type":"netpath","ipam":{"type":"x"},"bridge":"a/b"}"#
            ),
            code::INVALID_CONFIG
        );
        assert_eq!(
            code_of(
                r#"{"cniVersion":"1.0.0","name":"n","type":"netpath","ipam":{"type":"x"},"isGateway":false}"#
            ),
            code::UNSUPPORTED_FIELD
        );
        assert_eq!(
            code_of(
                r#"{"cniVersion":"1.0.0","name":"n","type":"netpath","ipMasq":"yes","ipam":{"type":"x"}}"#
            ),
            code::DECODE
        );
        let pm = |m: &str| {
            code_of(&format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"netpath","ipam":{{"type":"x"}},"runtimeConfig":{{"portMappings":[{m}]}}}}"#
            ))
        };
        assert_eq!(
            pm(r#"{"hostPort":70000,"containerPort":80}"#),
            code::INVALID_CONFIG
        );
        assert_eq!(
            pm(r#"{"hostPort":80,"containerPort":80,"protocol":"icmp"}"#),
            code::UNSUPPORTED_FIELD
        );
        assert_eq!(
            pm(r#"{"hostPort":80,"containerPort":80,"hostIP":"::1"}"#),
            code::UNSUPPORTED_FIELD
        );
        assert_eq!(
            pm(r#"{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81}"#),
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn environment() {
        let vars = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let e = Env::from_vars(&vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(e.path.len(), 2);
        let no_netns = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(
            Env::from_vars(&no_netns).unwrap_err().code,
            code::INVALID_ENV
        );
        let del = vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert!(Env::from_vars(&del).unwrap().netns.is_none());
        let bad_id = vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../x"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(Env::from_vars(&bad_id).unwrap_err().code, code::INVALID_ENV);
        assert!(Env::from_vars(&vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }

    #[test]
    fn del_takes_what_it_can_of_a_refused_config() {
        let text = br#"{"cniVersion":"1.0.0","name":"n","type":"netpath","gatewayMode":"open","ipam":{"type":"host-local"}}"#;
        let full = parse(text, None).unwrap_err();
        let c = parse_for_del(text, full).unwrap();
        assert_eq!(
            (c.name.as_str(), c.ipam_type.as_deref(), c.chained),
            ("n", Some("host-local"), false)
        );
        let junk = parse(b"{", None).unwrap_err();
        assert_eq!(parse_for_del(b"{", junk).unwrap_err().code, code::DECODE);
    }
}
