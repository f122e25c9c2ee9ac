//! The file's grammar, its errors' positions, the plan against a state
//! held in plain maps, and export's round trip.

use std::collections::BTreeMap;

use netpath_common::{net_flags, owner};

use super::*;
use crate::config_plan::{Current, NetChange, plan};

const FILE: &str = r#"
[[network]]
bridge = "br0"
subnets = ["172.18.0.0/16", "fd00:18::/64"]
icc = false

[[network]]
bridge = "br1"
subnets = ["fd00:19::/64", "10.9.0.0/24"]
gateway = "10.9.0.254"
gateway6 = "fd00:19::fe"
gateway_mode = "routed"

[[publish]]
host = "8081"
container = "172.18.0.2:80"

[[publish]]
host = "127.0.0.1:9000-9001/udp"
container = "10.9.0.5:53-54"

[[filter]]
network = "br0"
from = "10.0.0.0/8"
port = "8081"
verdict = "deny"

[[publish]]
host = "[::]:8082"
container = "[fd00:18::2]:80"
"#;

fn err(text: &str) -> String {
    parse("f.toml", text).unwrap_err().to_string()
}

#[test]
fn a_file_parses_with_the_clis_grammar() {
    let d = parse("f.toml", FILE).unwrap();
    assert_eq!(d.networks.len(), 2);
    let n = &d.networks[0];
    assert_eq!(n.spec.v4.unwrap().gateway.to_string(), "172.18.0.1");
    // Dual-stack: the IPv6 gateway defaults to ::1, or is given.
    let v6 = n.v6.unwrap();
    assert_eq!(
        (v6.subnet.to_string(), v6.gateway.to_string()),
        ("fd00:18::/64".into(), "fd00:18::1".into())
    );
    assert_eq!(d.networks[1].v6.unwrap().gateway.to_string(), "fd00:19::fe");
    assert_eq!(
        d.networks[1].spec.subnet().unwrap().to_string(),
        "10.9.0.0/24"
    );
    assert!(!n.options.icc && n.options.masquerade && n.options.apply);
    assert_eq!(n.at, Pos { line: 2, col: 1 });
    assert_eq!(d.networks[1].options.gateway_mode, GatewayMode::Routed);
    assert_eq!(d.publish[1].ports.proto, 17);
    assert_eq!(d.publish[1].ports.host_last, 9001);
    assert_eq!(d.filters[0].verdict, Verdict::Deny);
    assert_eq!(d.filters[0].sel.port.unwrap().port, 8081);
    assert!(parse("empty", "").unwrap().networks.is_empty());
}

#[test]
fn every_kind_of_error_says_file_line_and_column() {
    // TOML syntax.
    assert_eq!(
        err("[[network]]\nbridge = \"br0\nsubnet = \"x\"\n"),
        "f.toml:2:14: invalid basic string, expected `\"`"
    );
    // Unknown keys, at the key.
    let e = err("[[network]]\nbridge = \"br0\"\nsubnet = \"10.1.0.0/24\"\nicc_ = true\n");
    assert!(e.starts_with("f.toml:4:1: unknown field `icc_`"), "{e}");
    let e = err("[[netwrk]]\nbridge = \"br0\"\n");
    assert!(e.starts_with("f.toml:1:3: unknown field `netwrk`"), "{e}");
    // Wrong types.
    let e = err("[[network]]\nbridge = \"br0\"\nsubnet = \"10.1.0.0/24\"\nicc = \"no\"\n");
    assert!(e.starts_with("f.toml:4:7: invalid type"), "{e}");
    // Bad values, at the value, with the CLI's message.
    assert_eq!(
        err("[[network]]\nbridge = \"br0\"\nsubnet = \"10.1.0.1/24\"\n"),
        "f.toml:3:10: invalid subnet 10.1.0.1/24: host bits are set (did you mean 10.1.0.0/24?)"
    );
    let e = err("[[network]]\nbridge = \"br%d\"\nsubnet = \"10.1.0.0/24\"\n");
    assert!(e.starts_with("f.toml:2:10: invalid interface name"), "{e}");
    let e = err("[[network]]\nbridge = \"b\"\nsubnet = \"10.1.0.0/24\"\ngateway_mode = \"open\"\n");
    assert!(e.starts_with("f.toml:4:16: invalid gateway_mode"), "{e}");
    let e = err("[[network]]\nbridge = \"b\"\nsubnet = \"10.1.0.0/24\"\ngateway = \"10.2.0.1\"\n");
    assert_eq!(
        e,
        "f.toml:4:11: gateway 10.2.0.1 is outside subnet 10.1.0.0/24"
    );
    let e = err("[[network]]\nbridge = \"b\"\n");
    assert!(e.starts_with("f.toml:1:1:"), "{e}");
    let e = err("[[publish]]\nhost = \"70000\"\ncontainer = \"10.1.0.2:80\"\n");
    assert!(e.starts_with("f.toml:2:8: invalid port 70000"), "{e}");
    let e = err("[[publish]]\nhost = \"80-81\"\ncontainer = \"10.1.0.2:80\"\n");
    assert!(
        e.starts_with("f.toml:1:1: the host range has 2 ports"),
        "{e}"
    );
    let e = err("[[filter]]\nfrom = \"10.0.0.1/8\"\nverdict = \"deny\"\n");
    assert!(e.starts_with("f.toml:2:8: invalid --from"), "{e}");
    let e = err("[[filter]]\nverdict = \"drop\"\n");
    assert!(e.starts_with("f.toml:2:11: invalid verdict"), "{e}");
    // Entries against each other.
    let two = "[[network]]\nbridge = \"b\"\nsubnet = \"10.1.0.0/24\"\n\n[[network]]\nbridge = \"b\"\nsubnet = \"10.2.0.0/24\"\n";
    assert_eq!(
        err(two),
        "f.toml:5:1: network b is named twice (also at 1:1)"
    );
    let overlap = "[[network]]\nbridge = \"a\"\nsubnet = \"10.1.0.0/16\"\n\n[[network]]\nbridge = \"b\"\nsubnet = \"10.1.2.0/24\"\n";
    assert!(err(overlap).starts_with("f.toml:7:10: subnet 10.1.2.0/24 overlaps network a"));
    let ports = "[[publish]]\nhost = \"8080-8090\"\ncontainer = \"10.1.0.2:80-90\"\n[[publish]]\nhost = \"8085\"\ncontainer = \"10.1.0.3:80\"\n";
    assert!(err(ports).starts_with("f.toml:4:1: host port 8085/tcp is already published"));
    let rules = "[[filter]]\nport = \"80\"\nverdict = \"deny\"\n[[filter]]\nport = \"80/tcp\"\nverdict = \"allow\"\n";
    assert!(err(rules).starts_with("f.toml:4:1: a rule with these selectors"));
    let up = "[[network]]\nbridge = \"a\"\nsubnet = \"10.1.0.0/16\"\nuplinks = [\"eth0\"]\n[[network]]\nbridge = \"b\"\nsubnet = \"10.2.0.0/16\"\nuplinks = [\"eth1\"]\n";
    assert!(err(up).starts_with("f.toml:8:11: uplinks are the namespace's"));
    // IPv6 mappings: one family per mapping, no two on one port.
    let e = err("[[publish]]\nhost = \"[::]:8080\"\ncontainer = \"10.1.0.2:80\"\n");
    assert!(
        e.starts_with(
            "f.toml:1:1: host address :: and container address 10.1.0.2 are of different families"
        ),
        "{e}"
    );
    let twice = "[[publish]]\nhost = \"[::]:8080\"\ncontainer = \"[fd00:1::2]:80\"\n[[publish]]\nhost = \"[::]:8080\"\ncontainer = \"[fd00:1::3]:80\"\n";
    assert!(
        err(twice).starts_with("f.toml:4:1: host port [::]:8080/tcp is already published"),
        "{}",
        err(twice)
    );
    // Dual stack: one subnet per family, gateway6 with an IPv6 subnet and
    // inside it, gateway with an IPv4 one; IPv6 subnets do not overlap.
    let net = |subnets: &str, extra: &str| {
        err(&format!(
            "[[network]]\nbridge = \"b\"\nsubnets = {subnets}\n{extra}"
        ))
    };
    assert_eq!(
        net(r#"["10.1.0.0/24", "10.2.0.0/24"]"#, ""),
        "f.toml:3:27: 10.1.0.0/24 and 10.2.0.0/24 are of one family: a network has at most one subnet per family"
    );
    assert_eq!(
        net(r#"["fd00:1::/64"]"#, "gateway = \"10.1.0.1\"\n"),
        "f.toml:4:11: gateway needs an IPv4 subnet in subnets"
    );
    let e = net(r#"["10.1.0.0/24", "fe80::/64"]"#, "");
    assert!(
        e.starts_with("f.toml:3:27:") && e.contains("link-local"),
        "{e}"
    );
    assert_eq!(
        net(r#"["10.1.0.0/24"]"#, "gateway6 = \"fd00:1::1\"\n"),
        "f.toml:4:12: gateway6 needs an IPv6 subnet in subnets"
    );
    let e = net(
        r#"["10.1.0.0/24", "fd00:1::/64"]"#,
        "gateway6 = \"fd00:2::1\"\n",
    );
    assert!(
        e.starts_with("f.toml:4:12:") && e.contains("outside"),
        "{e}"
    );
    let e = net(
        r#"["10.1.0.0/24", "fd00:1::/64"]"#,
        "gateway6 = \"10.1.0.1\"\n",
    );
    assert!(e.starts_with("f.toml:4:12: invalid gateway6"), "{e}");
    let six = "[[network]]\nbridge = \"a\"\nsubnets = [\"10.1.0.0/24\", \"fd00:1::/56\"]\n\n[[network]]\nbridge = \"b\"\nsubnets = [\"10.2.0.0/24\", \"fd00:1:0:2::/64\"]\n";
    assert_eq!(
        err(six),
        "f.toml:5:1: IPv6 subnet fd00:1:0:2::/64 overlaps network a (fd00:1::/56) at 1:1"
    );
    // Positions count characters, not bytes.
    assert_eq!(Pos::of("é = 1\nab", 8), Pos { line: 2, col: 2 });
}

/// The state an apply of `text` would leave, as the maps hold it.
fn state_of(text: &str) -> Current {
    let d = parse("f", text).unwrap();
    let mut cur = Current::default();
    for (i, n) in d.networks.iter().enumerate() {
        cur.networks.insert(
            i as u32 + 1,
            n.spec.to_info(10 + i as u32, n.options.flags()),
        );
        if let Some(v6) = n.v6 {
            cur.networks6.insert(i as u32 + 1, v6);
        }
    }
    for p in &d.publish {
        let net = d
            .networks
            .iter()
            .position(|n| n.spec.subnet().is_some_and(|s| s.contains(&p.ports.target)))
            .unwrap() as u32
            + 1;
        for (k, mut v) in p.ports.entries(owner::APPLY) {
            v.net_id = net;
            cur.published.push((k, v));
        }
    }
    for f in &d.filters {
        cur.rules.push((f.sel.clone(), f.verdict, owner::APPLY));
    }
    for p in &d.publish6 {
        let net = d
            .networks
            .iter()
            .position(|n| n.v6.is_some_and(|v| v.subnet.contains(&p.ports.target)))
            .unwrap() as u32
            + 1;
        for r in p.ports.rows() {
            let (std::net::IpAddr::V6(target), host) = (r.target, r.host_addr) else {
                unreachable!()
            };
            let k = netpath_common::v6::PortKey6 {
                addr: host.map_or([0; 16], |h| match h {
                    std::net::IpAddr::V6(a) => a.octets(),
                    std::net::IpAddr::V4(_) => unreachable!(),
                }),
                port_be: r.port.to_be(),
                proto: r.proto,
                _pad: 0,
            };
            let v = netpath_common::v6::PubVal6 {
                target: target.octets(),
                target_port_be: r.target_port.to_be(),
                owner: owner::APPLY,
                net_id: net,
                id: 0,
            };
            cur.published6.push((k, v));
        }
    }
    cur
}

#[test]
fn plans_create_then_nothing_then_the_edits() {
    let d = parse("f", FILE).unwrap();
    let p = plan(&d, &Current::default()).unwrap();
    assert_eq!(p.networks.len(), 2);
    assert!(matches!(p.networks[0], NetChange::Create(_)));
    assert_eq!(p.publish.len(), 2);
    assert_eq!(
        p.publish6
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["[::]:8082/tcp -> [fd00:18::2]:80"]
    );
    assert_eq!(p.filter_add.len(), 1);
    // Applied: the same file again changes nothing.
    let cur = state_of(FILE);
    assert!(plan(&d, &cur).unwrap().is_empty());
    // Edited: br1 goes (with its mapping), br0's icc in place, a new
    // mapping, the rule's verdict flips; 8081 is untouched.
    let edited = FILE
        .replace("icc = false", "icc = true\nmasquerade = false")
        .replace("bridge = \"br1\"\nsubnets = [\"fd00:19::/64\", \"10.9.0.0/24\"]\ngateway = \"10.9.0.254\"\ngateway6 = \"fd00:19::fe\"\ngateway_mode = \"routed\"\n", "bridge = \"br2\"\nsubnet = \"10.8.0.0/24\"\n")
        .replace("127.0.0.1:9000-9001/udp", "9000/udp")
        .replace("10.9.0.5:53-54", "10.8.0.5:53")
        .replace("verdict = \"deny\"", "verdict = \"allow\"");
    let p = plan(&parse("f", &edited).unwrap(), &cur).unwrap();
    let lines = p.lines();
    assert_eq!(
        lines,
        vec![
            "network br1 removed",
            "network br0 changed: icc on, masquerade off (its flows flushed)",
            "network br2 created (10.8.0.0/24 gateway 10.8.0.1)",
            "unpublished 127.0.0.1:9000-9001/udp -> 10.9.0.5:53",
            "published 9000/udp -> 10.8.0.5:53",
            "filter rule removed: --network br0 --from 10.0.0.0/8 --port 8081/tcp deny",
            "filter rule added: --network br0 --from 10.0.0.0/8 --port 8081/tcp allow",
        ],
        "{lines:#?}"
    );
    // A new subnet takes the network down and up.
    let moved = FILE
        .replace("172.18.0.0/16", "172.19.0.0/16")
        .replace("172.18.0.2", "172.19.0.2");
    let p = plan(&parse("f", &moved).unwrap(), &cur).unwrap();
    assert!(
        matches!(&p.networks[0], NetChange::Recreate { what, .. } if what[0] == "subnet 172.18.0.0/16 -> 172.19.0.0/16")
    );
    // So does a new IPv6 half, or none.
    let p = plan(
        &parse("f", &FILE.replace("fd00:18::", "fd00:28::")).unwrap(),
        &cur,
    )
    .unwrap();
    assert!(
        matches!(&p.networks[0], NetChange::Recreate { what, .. } if what[0] == "IPv6 fd00:18::/64 gateway fd00:18::1 -> fd00:28::/64 gateway fd00:28::1"),
        "{:?}",
        p.lines()
    );
    // (Without its IPv6 mapping, whose container would be in no subnet.)
    let v4_only = FILE
        .split("\n[[publish]]\nhost = \"[::]:8082\"")
        .next()
        .unwrap()
        .replace(
            r#"subnets = ["172.18.0.0/16", "fd00:18::/64"]"#,
            r#"subnet = "172.18.0.0/16""#,
        );
    let p = plan(&parse("f", &v4_only).unwrap(), &cur).unwrap();
    assert!(
        matches!(&p.networks[0], NetChange::Recreate { what, .. } if what[0] == "IPv6 fd00:18::/64 gateway fd00:18::1 -> none"),
        "{:?}",
        p.lines()
    );
    // An IPv6 subnet overlapping a network apply did not make is refused.
    let mut theirs = cur.clone();
    let (id, mut info) = theirs.networks.pop_first().unwrap();
    info.flags &= !net_flags::APPLY;
    let mut name = [0u8; 16];
    name[..3].copy_from_slice(b"hnd");
    info.bridge_name = name;
    info.subnet_be = u32::from(std::net::Ipv4Addr::new(10, 77, 0, 0)).to_be();
    theirs.networks.insert(id, info);
    let e = plan(&d, &theirs).unwrap_err().to_string();
    assert!(
        e.contains(
            "IPv6 subnet fd00:18::/64 overlaps network hnd (fd00:18::/64), which apply did not make"
        ),
        "{e}"
    );
    // An empty file prunes everything apply made.
    let p = plan(&parse("f", "").unwrap(), &cur).unwrap();
    assert_eq!(p.networks.len(), 2);
    assert_eq!(p.unpublish.len(), 2);
    assert_eq!(p.unpublish6.len(), 1);
    assert_eq!(p.filter_del.len(), 0, "the rule goes with its network");
    // IPv6 mappings: a moved one is unpublished and published again; one
    // outside every IPv6 subnet, to a gateway or on an address the host
    // does not have is refused at its entry.
    let p = plan(
        &parse("f", &FILE.replace("[fd00:18::2]:80", "[fd00:18::3]:80")).unwrap(),
        &cur,
    )
    .unwrap();
    assert_eq!(
        p.lines(),
        vec![
            "unpublished [::]:8082/tcp -> [fd00:18::2]:80",
            "published [::]:8082/tcp -> [fd00:18::3]:80"
        ]
    );
    for (target, says) in [
        (
            "[fd00:99::2]:80",
            "f:28:1: container address fd00:99::2 is in no IPv6 subnet",
        ),
        (
            "[fd00:18::1]:80",
            "f:28:1: fd00:18::1 is the IPv6 gateway or subnet-router anycast address of br0",
        ),
    ] {
        let e = plan(
            &parse("f", &FILE.replace("[fd00:18::2]:80", target)).unwrap(),
            &cur,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with(says), "{e}");
    }
    let e = plan(
        &parse("f", &FILE.replace("[::]:8082", "[fd00:ee::9]:8082")).unwrap(),
        &cur,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "f:28:1: the host has no address fd00:ee::9 to publish on"
    );
    let mut with_host = cur.clone();
    with_host.host_addrs6.push("fd00:ee::9".parse().unwrap());
    let p = plan(
        &parse("f", &FILE.replace("[::]:8082", "[fd00:ee::9]:8082")).unwrap(),
        &with_host,
    )
    .unwrap();
    assert_eq!(p.publish6.len(), 1, "{:?}", p.lines());
}

#[test]
fn what_apply_did_not_make_is_left_alone_or_refused() {
    let mut cur = state_of(FILE);
    // br0 made by hand, br1 by netpath docker; their mappings by hand.
    for (id, info) in cur.networks.iter_mut() {
        info.flags &= !net_flags::APPLY;
        if *id == 2 {
            info.flags |= net_flags::DOCKER;
        }
    }
    for (_, v) in cur.published.iter_mut() {
        v.owner = owner::USER;
    }
    for (_, v) in cur.published6.iter_mut() {
        v.owner = owner::USER;
    }
    cur.rules[0].2 = owner::USER;
    // The file as they are: nothing to do, nothing adopted.
    let d = parse("f", FILE).unwrap();
    assert!(plan(&d, &cur).unwrap().is_empty());
    // Without them: nothing pruned either.
    assert!(plan(&parse("f", "").unwrap(), &cur).unwrap().is_empty());
    // Changing them is refused, at the entry.
    let e = plan(
        &parse("f", &FILE.replace("icc = false", "icc = true")).unwrap(),
        &cur,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(
            "f:2:1: network br0 was made by hand, not by apply, and the file changes it (icc on)"
        ),
        "{e}"
    );
    let e = plan(
        &parse("f", &FILE.replace("\"routed\"", "\"nat\"")).unwrap(),
        &cur,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("made by netpath docker"), "{e}");
    let e = plan(
        &parse("f", &FILE.replace("172.18.0.2:80", "172.18.0.3:80")).unwrap(),
        &cur,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("f:14:1: host port 8081/tcp is already published"),
        "{e}"
    );
    let e = plan(
        &parse("f", &FILE.replace("\"deny\"", "\"allow\"")).unwrap(),
        &cur,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not made by apply: delete it first"), "{e}");
    // A new network overlapping one made by hand.
    let e = plan(
        &parse(
            "f",
            "[[network]]\nbridge = \"x\"\nsubnet = \"172.18.5.0/24\"\n",
        )
        .unwrap(),
        &cur,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("overlaps network br0"), "{e}");
    // A mapping to an address in no network.
    let e = plan(
        &parse(
            "f",
            "[[publish]]\nhost = \"80\"\ncontainer = \"192.168.0.2:80\"\n",
        )
        .unwrap(),
        &Current::default(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "f:1:1: container address 192.168.0.2 is in no network of the file or the host"
    );
    // An apply network with a hand-made mapping in it is not taken down.
    let mut cur = state_of(FILE);
    cur.published[0].1.owner = owner::USER;
    let e = plan(&parse("f", "").unwrap(), &cur)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("f: network br0 (made by an earlier apply) is no longer in the file, but"),
        "{e}"
    );
}

/// The networks of `cur` as `export` reads them back from the maps.
fn exported_networks(cur: &Current) -> Vec<(NetworkSpec, Option<Net6Spec>, NetworkOptions)> {
    cur.networks
        .iter()
        .map(|(id, i)| {
            (
                NetworkSpec::from_info(i),
                cur.networks6.get(id).copied(),
                NetworkOptions::from_flags(i.flags),
            )
        })
        .collect()
}

#[test]
fn export_round_trips() {
    let cur = state_of(FILE);
    let mut by_net: BTreeMap<u32, Vec<Ports>> = BTreeMap::new();
    for (k, v) in &cur.published {
        by_net.entry(v.net_id).or_default().push(Ports::of(k, v));
    }
    let e = Exported {
        networks: exported_networks(&cur),
        uplinks: vec!["eth0".into()],
        publish: merge_ports(by_net.into_values().flatten().collect()),
        publish6: cur
            .published6
            .iter()
            .map(|(k, v)| crate::publish::v6::Ports6::of(k, v))
            .collect(),
        filters: cur.rules.iter().map(|(s, v, _)| (s.clone(), *v)).collect(),
        notes: vec!["a note".into()],
    };
    let text = render(&e);
    let d = parse("export", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(d.publish.len(), 2, "{text}");
    assert_eq!(d.publish6.len(), 1, "{text}");
    assert!(text.contains("host = \"[::]:8082/tcp\""), "{text}");
    let mut cur = cur;
    cur.uplinks = vec!["eth0".into()];
    let p = plan(&d, &cur).unwrap();
    assert!(p.is_empty(), "{:#?}\n{text}", p.lines());
    assert!(text.contains("gateway = \"10.9.0.254\""), "{text}");
    assert!(
        text.contains("subnets = [\"172.18.0.0/16\", \"fd00:18::/64\"]"),
        "{text}"
    );
    assert!(text.contains("gateway6 = \"fd00:19::fe\""), "{text}");
    assert!(!text.contains("gateway = \"172.18.0.1\""), "{text}");
    assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
}

#[test]
fn ipv6_only_networks_parse_plan_and_export_back() {
    let text = "[[network]]\nbridge = \"v6a\"\nsubnet = \"fd00:50::/64\"\n\n[[network]]\nbridge = \"v6b\"\nsubnets = [\"fd00:51::/64\"]\ngateway6 = \"fd00:51::fe\"\n";
    let d = parse("f.toml", text).unwrap();
    assert_eq!((d.networks[0].spec.v4, d.networks[1].spec.v4), (None, None));
    assert_eq!(d.networks[0].v6.unwrap().gateway.to_string(), "fd00:50::1");
    let cur = state_of(text);
    assert!(
        cur.networks
            .values()
            .all(|i| i.flags & net_flags::NO_IPV4 != 0)
    );
    // An IPv4 port cannot lead into either.
    let publish = format!("{text}\n[[publish]]\nhost = \"8080\"\ncontainer = \"10.9.0.2:80\"\n");
    let e = parse("f.toml", &publish)
        .and_then(|d| plan(&d, &cur).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("in no network"), "{e}");
    let e = Exported {
        networks: exported_networks(&cur),
        uplinks: vec![],
        publish: vec![],
        publish6: vec![],
        filters: vec![],
        notes: vec![],
    };
    let out = render(&e);
    assert!(out.contains("subnet = \"fd00:50::/64\"\n"), "{out}");
    assert!(
        out.contains("subnet = \"fd00:51::/64\"\ngateway6 = \"fd00:51::fe\"\n"),
        "{out}"
    );
    assert!(!out.contains("gateway = "), "{out}");
    let again = parse("export", &out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let p = plan(&again, &cur).unwrap();
    assert!(p.is_empty(), "{:#?}\n{out}", p.lines());
    // Giving it an IPv4 subnet takes it down and up.
    let grown = text.replacen(
        "subnet = \"fd00:50::/64\"",
        "subnets = [\"fd00:50::/64\", \"10.50.0.0/24\"]",
        1,
    );
    let p = plan(&parse("f.toml", &grown).unwrap(), &cur).unwrap();
    let lines = p.lines().join("\n");
    assert!(lines.contains("subnet none -> 10.50.0.0/24"), "{lines}");
}
