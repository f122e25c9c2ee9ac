//! Unit tests of the pure model (fake API values in, networks, mappings
//! and bindings out).

use bollard::models::{EndpointSettings, Ipam, IpamConfig, NetworkSettings, PortBinding};

use super::*;

fn network(name: &str, id: &str, subnet: &str, opts: &[(&str, &str)], internal: bool) -> Network {
    Network {
        name: Some(name.into()),
        id: Some(id.into()),
        driver: Some("bridge".into()),
        internal: Some(internal),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(subnet.into()),
                gateway: Some(
                    subnet
                        .replace(".0/", ".1/")
                        .split('/')
                        .next()
                        .unwrap()
                        .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        options: Some(
            opts.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        ),
        ..Default::default()
    }
}

#[test]
fn networks_map_docker_options() {
    let default = network(
        "bridge",
        "f00",
        "172.17.0.0/16",
        &[
            (OPT_BRIDGE_NAME, "docker0"),
            (OPT_ICC, "true"),
            (OPT_MASQUERADE, "true"),
        ],
        false,
    );
    let n = net_from_api(&default, true).unwrap().unwrap();
    assert_eq!(n.bridge, "docker0");
    assert_eq!(n.gateway, Some("172.17.0.1".parse().unwrap()));
    assert!(n.icc && n.masquerade && !n.internal);

    // dockerd --iptables=false says false for its default bridge: --ip-masq decides.
    let mut quiet = default.clone();
    quiet
        .options
        .as_mut()
        .unwrap()
        .insert(OPT_MASQUERADE.into(), "false".into());
    quiet
        .options
        .as_mut()
        .unwrap()
        .insert(OPT_DEFAULT_BRIDGE.into(), "true".into());
    assert!(net_from_api(&quiet, true).unwrap().unwrap().masquerade);
    assert!(!net_from_api(&quiet, false).unwrap().unwrap().masquerade);

    let user = network(
        "a",
        "0123456789abcdef",
        "10.5.0.0/24",
        &[(OPT_ICC, "false")],
        true,
    );
    let n = net_from_api(&user, true).unwrap().unwrap();
    assert_eq!(n.bridge, "br-0123456789ab");
    assert!(!n.icc && n.masquerade && n.internal);
    let n = net_from_api(
        &network(
            "m",
            "0123456789abcdef",
            "10.6.0.0/24",
            &[(OPT_MASQUERADE, "False")],
            false,
        ),
        true,
    )
    .unwrap()
    .unwrap();
    assert!(!n.masquerade);
    assert!(
        n.trusted.is_empty(),
        "no trusted interfaces before Docker 28.2"
    );
    // Docker 28's gateway mode and trusted interfaces (colon-separated).
    let n = net_from_api(
        &network(
            "t",
            "0123456789abcdef",
            "10.7.0.0/24",
            &[(OPT_GATEWAY_MODE, "routed"), (OPT_TRUSTED, "eth1:vpn0::")],
            false,
        ),
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(n.gateway_mode, GatewayMode::Routed);
    assert_eq!(n.trusted, vec!["eth1", "vpn0"]);

    let mut host = default.clone();
    host.driver = Some("host".into());
    assert_eq!(net_from_api(&host, true), Ok(None));
    let mut v6 = user.clone();
    v6.ipam.as_mut().unwrap().config.as_mut().unwrap()[0].subnet = Some("fd00::/64".into());
    assert!(
        net_from_api(&v6, true)
            .unwrap_err()
            .contains("no IPv4 subnet")
    );
}

#[test]
fn port_bindings_keep_ipv4_and_name_the_rest() {
    let b = |ip: &str, port: &str| PortBinding {
        host_ip: Some(ip.into()),
        host_port: Some(port.into()),
    };
    let ports: PortMap = [
        (
            "80/tcp".to_owned(),
            Some(vec![b("0.0.0.0", "8080"), b("::", "8080")]),
        ),
        ("53/udp".to_owned(), Some(vec![b("127.0.0.1", "5353")])),
        ("9/sctp".to_owned(), Some(vec![b("0.0.0.0", "9")])),
        ("7/sctp".to_owned(), Some(vec![b("0.0.0.0", "7007")])),
        ("443/tcp".to_owned(), None),
    ]
    .into_iter()
    .collect();
    let (got, unhonoured) = bindings_from_api(&ports);
    assert_eq!(
        got,
        vec![
            Binding {
                host_addr: None,
                host_port: 9,
                proto: 132,
                container_port: 9
            },
            Binding {
                host_addr: None,
                host_port: 8080,
                proto: 6,
                container_port: 80
            },
            Binding {
                host_addr: Some("127.0.0.1".parse().unwrap()),
                host_port: 5353,
                proto: 17,
                container_port: 53
            },
        ]
    );
    assert_eq!(unhonoured.len(), 2, "{unhonoured:?}");
    assert!(
        unhonoured[0].starts_with("0.0.0.0:7007 -> 7/sctp: an SCTP mapping cannot change ports"),
        "{unhonoured:?}"
    );
    assert_eq!(
        unhonoured[1],
        "[::]:8080 -> 80/tcp: IPv6 host addresses are not published yet"
    );
}

fn container(
    name: &str,
    eps: &[(&str, &str, i64)],
    ports: &[(&str, &str)],
) -> ContainerInspectResponse {
    ContainerInspectResponse {
        name: Some(format!("/{name}")),
        network_settings: Some(NetworkSettings {
            sandbox_key: Some(format!("/var/run/docker/netns/{name}")),
            networks: Some(
                eps.iter()
                    .map(|(net, ip, prio)| {
                        (
                            (*net).to_owned(),
                            EndpointSettings {
                                ip_address: Some((*ip).into()),
                                mac_address: Some("02:42:0a:05:00:02".into()),
                                gw_priority: Some(*prio),
                                ..Default::default()
                            },
                        )
                    })
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(c, h)| {
                        (
                            (*c).to_owned(),
                            Some(vec![PortBinding {
                                host_ip: Some("0.0.0.0".into()),
                                host_port: Some((*h).into()),
                            }]),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn desired_publishes_on_the_gateway_endpoint_and_binds_every_endpoint() {
    let nets: Vec<Net> = [
        network("a", "aaaaaaaaaaaaaaaa", "10.5.0.0/24", &[], false),
        network("b", "bbbbbbbbbbbbbbbb", "10.6.0.0/24", &[], false),
        network("i", "iiiiiiiiiiiiiiii", "10.7.0.0/24", &[], true),
    ]
    .iter()
    .map(|n| net_from_api(n, true).unwrap().unwrap())
    .collect();
    let cs: Vec<Container> = [
        // On a, b and internal i: the internal network never gets the
        // ports; a and b tie on priority, so the name decides.
        container(
            "web",
            &[
                ("i", "10.7.0.2", 9),
                ("b", "10.6.0.2", 0),
                ("a", "10.5.0.2", 0),
            ],
            &[("80/tcp", "8080")],
        ),
        // A higher gateway priority wins over the name.
        container(
            "api",
            &[("a", "10.5.0.3", 0), ("b", "10.6.0.3", 5)],
            &[("81/tcp", "8081")],
        ),
        // Only internal: nothing published, said why.
        container("db", &[("i", "10.7.0.4", 0)], &[("5432/tcp", "5432")]),
        // A network netpath does not manage (host, overlay…) is ignored.
        container("h", &[("host", "192.0.2.1", 0)], &[]),
    ]
    .iter()
    .map(container_from_api)
    .collect();
    let d = desired(nets, &cs);
    let targets: Vec<(u16, Ipv4Addr)> = d.ports.iter().map(|p| (p.host_first, p.target)).collect();
    assert_eq!(
        targets,
        vec![
            (8080, "10.5.0.2".parse().unwrap()),
            (8081, "10.6.0.3".parse().unwrap())
        ]
    );
    assert_eq!(d.endpoints.len(), 6, "{:?}", d.endpoints);
    assert!(
        d.endpoints
            .iter()
            .any(|e| e.name == "web" && e.bridge == "br-iiiiiiiiiiii")
    );
    assert_eq!(d.skipped.len(), 1, "{:?}", d.skipped);
    assert!(d.skipped[0].starts_with("db:"));
}

#[test]
fn macs_parse_strictly() {
    assert_eq!(
        parse_mac("02:42:ac:11:00:02"),
        Some([2, 0x42, 0xac, 0x11, 0, 2])
    );
    assert_eq!(parse_mac("02:42:ac:11:00"), None);
    assert_eq!(parse_mac("02:42:ac:11:00:02:03"), None);
    assert_eq!(parse_mac(""), None);
}
