//! The file's grammar, its errors' positions, the plan against a state
//! held in plain maps, and export's round trip.

use std::collections::BTreeMap;

use netpath_common::{net_flags, owner};

use super::*;
use crate::config_plan::{Current, NetChange, plan};

const FILE: &str = r#"
[[network]]
bridge = "br0"
subnet = "172.18.0.0/16"
icc = false

[[network]]
bridge = "br1"
subnet = "10.9.0.0/24"
gateway = "10.9.0.254"
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
"#;

fn err(text: &str) -> String {
    parse("f.toml", text).unwrap_err().to_string()
}

#[test]
fn a_file_parses_with_the_clis_grammar() {
    let d = parse("f.toml", FILE).unwrap();
    assert_eq!(d.networks.len(), 2);
    let n = &d.networks[0];
    assert_eq!(n.spec.gateway.to_string(), "172.18.0.1");
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
    }
    for p in &d.publish {
        let net = d
            .networks
            .iter()
            .position(|n| n.spec.subnet.contains(&p.ports.target))
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
    cur
}

#[test]
fn plans_create_then_nothing_then_the_edits() {
    let d = parse("f", FILE).unwrap();
    let p = plan(&d, &Current::default()).unwrap();
    assert_eq!(p.networks.len(), 2);
    assert!(matches!(p.networks[0], NetChange::Create(_)));
    assert_eq!(p.publish.len(), 2);
    assert_eq!(p.filter_add.len(), 1);
    // Applied: the same file again changes nothing.
    let cur = state_of(FILE);
    assert!(plan(&d, &cur).unwrap().is_empty());
    // Edited: br1 goes (with its mapping), br0's icc in place, a new
    // mapping, the rule's verdict flips; 8081 is untouched.
    let edited = FILE
        .replace("icc = false", "icc = true\nmasquerade = false")
        .replace("bridge = \"br1\"\nsubnet = \"10.9.0.0/24\"\ngateway = \"10.9.0.254\"\ngateway_mode = \"routed\"\n", "bridge = \"br2\"\nsubnet = \"10.8.0.0/24\"\n")
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
    // An empty file prunes everything apply made.
    let p = plan(&parse("f", "").unwrap(), &cur).unwrap();
    assert_eq!(p.networks.len(), 2);
    assert_eq!(p.unpublish.len(), 2);
    assert_eq!(p.filter_del.len(), 0, "the rule goes with its network");
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
        e.starts_with("f:13:1: host port 8081/tcp is already published"),
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

#[test]
fn export_round_trips() {
    let cur = state_of(FILE);
    let mut by_net: BTreeMap<u32, Vec<Ports>> = BTreeMap::new();
    for (k, v) in &cur.published {
        by_net.entry(v.net_id).or_default().push(Ports::of(k, v));
    }
    let e = Exported {
        networks: cur
            .networks
            .values()
            .map(|i| {
                (
                    NetworkSpec::from_info(i),
                    NetworkOptions::from_flags(i.flags),
                )
            })
            .collect(),
        uplinks: vec!["eth0".into()],
        publish: merge_ports(by_net.into_values().flatten().collect()),
        filters: cur.rules.iter().map(|(s, v, _)| (s.clone(), *v)).collect(),
        notes: vec!["a note".into()],
    };
    let text = render(&e);
    let d = parse("export", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(d.publish.len(), 2, "{text}");
    let mut cur = cur;
    cur.uplinks = vec!["eth0".into()];
    let p = plan(&d, &cur).unwrap();
    assert!(p.is_empty(), "{:#?}\n{text}", p.lines());
    assert!(text.contains("gateway = \"10.9.0.254\""), "{text}");
    assert!(!text.contains("gateway = \"172.18.0.1\""), "{text}");
    assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
}
