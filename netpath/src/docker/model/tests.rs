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
fn port_bindings_keep_both_families_and_name_the_rest() {
    let b = |ip: &str, port: &str| PortBinding {
        host_ip: Some(ip.into()),
        host_port: Some(port.into()),
    };
    let ports: PortMap = [
        (
            "80/tcp".to_owned(),
            Some(vec![b("0.0.0.0", "8080"), b("::", "8080")]),
        ),
        (
            "53/udp".to_owned(),
            Some(vec![b("127.0.0.1", "5353"), b("bogus", "5353")]),
        ),
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
                host: "0.0.0.0".parse().unwrap(),
                host_port: 9,
                proto: 132,
                container_port: 9
            },
            Binding {
                host: "0.0.0.0".parse().unwrap(),
                host_port: 8080,
                proto: 6,
                container_port: 80
            },
            Binding {
                host: "127.0.0.1".parse().unwrap(),
                host_port: 5353,
                proto: 17,
                container_port: 53
            },
            Binding {
                host: "::".parse().unwrap(),
                host_port: 8080,
                proto: 6,
                container_port: 80
            },
        ]
    );
    assert_eq!(
        unhonoured,
        vec![
            "0.0.0.0:7007 -> 7/sctp: an SCTP mapping cannot change ports (host 7007, container 7): \
             SCTP is published address-only, use the same port on both sides",
            "bogus:5353 -> 53/udp: not an address",
        ]
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

#[test]
fn dual_stack_networks_bind_and_publish_both_families() {
    let ipv6 = |n: &mut Network, subnet: &str, gateway: Option<&str>, enabled: bool| {
        n.enable_ipv6 = Some(enabled);
        n.ipam
            .as_mut()
            .unwrap()
            .config
            .as_mut()
            .unwrap()
            .push(IpamConfig {
                subnet: Some(subnet.into()),
                gateway: gateway.map(Into::into),
                ..Default::default()
            });
    };
    let mut a = network("a", "aaaaaaaaaaaaaaaa", "10.5.0.0/24", &[], false);
    ipv6(&mut a, "fd00:5::/64", Some("fd00:5::1"), true);
    // A documentation prefix (Docker's own examples use one): netpath
    // refuses the IPv6 half, and says its IPv6 traffic is dropped.
    let mut b = network("b", "bbbbbbbbbbbbbbbb", "10.6.0.0/24", &[], false);
    ipv6(&mut b, "2001:db8:6::/64", None, true);
    // IPv6 IPAM data on a network without --ipv6 does not count.
    let mut c = network("c", "cccccccccccccccc", "10.8.0.0/24", &[], false);
    ipv6(&mut c, "fd00:8::/64", None, false);
    let nets: Vec<Net> = [a, b, c]
        .iter()
        .map(|n| net_from_api(n, true).unwrap().unwrap())
        .collect();
    let v6 = nets[0].v6.unwrap();
    assert_eq!(v6.subnet, "fd00:5::/64".parse::<Ipv6Net>().unwrap());
    assert_eq!(v6.gateway, "fd00:5::1".parse::<Ipv6Addr>().unwrap());
    assert!(nets[0].notes.is_empty());
    assert_eq!(nets[1].v6, None);
    assert_eq!(nets[1].notes.len(), 1);
    assert!(
        nets[1].notes[0].starts_with("network b: IPv6 ")
            && nets[1].notes[0].contains("documentation")
            && nets[1].notes[0].ends_with(": its IPv6 traffic is dropped"),
        "{:?}",
        nets[1].notes
    );
    assert_eq!((nets[2].v6, nets[2].notes.len()), (None, 0));

    let with_v6 = |mut c: ContainerInspectResponse, addr6: &str, host6: &str| {
        let ns = c.network_settings.as_mut().unwrap();
        for ep in ns.networks.as_mut().unwrap().values_mut() {
            ep.global_ipv6_address = Some(addr6.into());
        }
        for hosts in ns.ports.as_mut().unwrap().values_mut() {
            let h = hosts.as_mut().unwrap();
            let port = h[0].host_port.clone();
            h.push(PortBinding {
                host_ip: Some(host6.into()),
                host_port: port,
            });
        }
        c
    };
    let cs: Vec<Container> = [
        with_v6(
            container("web", &[("a", "10.5.0.2", 0)], &[("80/tcp", "8080")]),
            "fd00:5::2",
            "::",
        ),
        // dockerd gives an IPv6 address on b, whose IPv6 half netpath
        // does not take: the IPv6 binding cannot be honoured, said so.
        with_v6(
            container("old", &[("b", "10.6.0.2", 0)], &[("81/udp", "8081")]),
            "2001:db8:6::2",
            "::",
        ),
        // One IPv6 host address (host processes only, on ::1).
        with_v6(
            container("lo", &[("a", "10.5.0.3", 0)], &[("82/tcp", "8082")]),
            "fd00:5::3",
            "::1",
        ),
    ]
    .iter()
    .map(container_from_api)
    .collect();
    let d = desired(nets, &cs);
    let v4: Vec<(u16, Ipv4Addr)> = d.ports.iter().map(|p| (p.host_first, p.target)).collect();
    assert_eq!(
        v4,
        vec![
            (8080, "10.5.0.2".parse().unwrap()),
            (8081, "10.6.0.2".parse().unwrap()),
            (8082, "10.5.0.3".parse().unwrap()),
        ]
    );
    let v6: Vec<String> = d.ports6.iter().map(ToString::to_string).collect();
    assert_eq!(
        v6,
        vec![
            "[::]:8080/tcp -> [fd00:5::2]:80",
            "[::1]:8082/tcp -> [fd00:5::3]:82"
        ]
    );
    let bound: Vec<(&str, Option<Ipv6Addr>)> = d
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.addr6))
        .collect();
    assert_eq!(
        bound,
        vec![
            ("web", Some("fd00:5::2".parse().unwrap())),
            ("old", None),
            ("lo", Some("fd00:5::3".parse().unwrap())),
        ]
    );
    assert_eq!(
        d.skipped,
        vec![
            "old: binding [::]:8081 -> 81/udp: netpath does not take the IPv6 half of network b (see its warning)"
        ]
    );
}
