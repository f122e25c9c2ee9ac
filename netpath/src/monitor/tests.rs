//! `monitor`'s filters and lines, both families (pure, on the host).

use super::*;
use netpath_common::event::{Event, Event6};
use std::net::{Ipv4Addr, Ipv6Addr};

fn rec(e: &Event) -> Record {
    Record::from(e)
}

fn be(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn drop_event() -> Event {
    Event {
        ts_ns: 12_345_678_000_000,
        kind: kind::DROP,
        reason: DropReason::Isolation as u8,
        proto: 6,
        ifindex: 7,
        net_id: 1,
        saddr_be: be([172, 30, 0, 2]),
        daddr_be: be([172, 31, 0, 2]),
        sport_be: 40000u16.to_be(),
        dport_be: 80u16.to_be(),
        len: 74,
        ethertype_be: 0x0800u16.to_be(),
        ..Event::default()
    }
}

fn flow_event(translated: bool) -> Event {
    let mut e = Event {
        kind: kind::FLOW,
        proto: 17,
        net_id: 1,
        saddr_be: be([172, 30, 0, 2]),
        daddr_be: be([198, 18, 0, 2]),
        sport_be: 5000u16.to_be(),
        dport_be: 53u16.to_be(),
        ethertype_be: 0x0800u16.to_be(),
        ..Event::default()
    };
    e.nat_saddr_be = if translated {
        be([198, 18, 0, 1])
    } else {
        e.saddr_be
    };
    e.nat_daddr_be = e.daddr_be;
    e.nat_sport_be = e.sport_be;
    e.nat_dport_be = e.dport_be;
    e
}

fn names() -> Names {
    Names {
        ifaces: BTreeMap::from([(7, "c1h".to_owned())]),
        networks: BTreeMap::from([(1, "np0".to_owned())]),
    }
}

#[test]
fn kinds_and_reasons_parse() {
    let k = parse_kinds("drop,nat").unwrap();
    assert_eq!((k.drop, k.flow, k.nat), (true, false, true));
    assert_eq!(k.bits(), want::DROP | want::FLOW);
    assert!(parse_kinds("drop,bogus").is_err());
    assert_eq!(parse_reason("isolation").unwrap(), DropReason::Isolation);
    assert_eq!(parse_reason("drop_icc").unwrap(), DropReason::Icc);
    assert!(parse_reason("nope").is_err());
}

#[test]
fn a_drop_shows_with_names_and_filters_apply() {
    let all = Filter {
        kinds: parse_kinds("drop,flow").unwrap(),
        ..Filter::default()
    };
    let s = show(&rec(&drop_event()), &all, &names()).unwrap();
    assert_eq!(
        s.to_string(),
        "[12345.678] drop drop_isolation on c1h net np0 tcp 172.30.0.2:40000 -> 172.31.0.2:80 len 74"
    );
    let j: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(j["reason"], "drop_isolation");
    assert_eq!(j["dst"], "172.31.0.2");
    let only = |f: Filter| show(&rec(&drop_event()), &f, &names()).is_some();
    let base = || Filter {
        kinds: Kinds {
            drop: true,
            ..Kinds::default()
        },
        ..Filter::default()
    };
    assert!(only(Filter {
        reason: Some(DropReason::Isolation),
        ..base()
    }));
    assert!(!only(Filter {
        reason: Some(DropReason::Icc),
        ..base()
    }));
    assert!(!only(Filter {
        net_id: Some(2),
        ..base()
    }));
    assert!(only(Filter {
        host: Some(Ipv4Addr::new(172, 31, 0, 2).into()),
        ..base()
    }));
    assert!(!only(Filter {
        host: Some(Ipv4Addr::new(10, 0, 0, 1).into()),
        ..base()
    }));
    assert!(only(Filter {
        port: Some(40000),
        ..base()
    }));
    assert!(!only(Filter {
        port: Some(443),
        ..base()
    }));
    // Flows only: the drop is not shown.
    assert!(!only(Filter {
        kinds: parse_kinds("flow").unwrap(),
        ..Filter::default()
    }));
}

#[test]
fn frames_that_are_not_ip_show_their_ethertype_only() {
    let mut e = drop_event();
    e.ethertype_be = 0x86ddu16.to_be();
    e.reason = DropReason::Ipv6 as u8;
    let f = Filter {
        kinds: parse_kinds("drop").unwrap(),
        ..Filter::default()
    };
    let s = show(&rec(&e), &f, &names()).unwrap();
    assert_eq!(
        s.to_string(),
        "[12345.678] drop drop_ipv6 on c1h net np0 ethertype 0x86dd len 74"
    );
    let j = serde_json::to_value(&s).unwrap();
    assert!(j.get("src").is_none(), "{j}");
}

#[test]
fn flows_and_translations() {
    let flows = Filter {
        kinds: parse_kinds("flow").unwrap(),
        ..Filter::default()
    };
    let nat = Filter {
        kinds: parse_kinds("nat").unwrap(),
        ..Filter::default()
    };
    let plain = show(&rec(&flow_event(false)), &flows, &names()).unwrap();
    assert_eq!(plain.event, "flow");
    assert_eq!(plain.nat, None);
    assert!(show(&rec(&flow_event(false)), &nat, &names()).is_none());
    let t = show(&rec(&flow_event(true)), &nat, &names()).unwrap();
    assert_eq!(t.event, "nat");
    assert!(
        t.to_string()
            .ends_with("udp 172.30.0.2:5000 -> 198.18.0.2:53 as 198.18.0.1:5000 -> 198.18.0.2:53"),
        "{t}"
    );
    // --host matches the translated address too.
    let by_host = Filter {
        host: Some(Ipv4Addr::new(198, 18, 0, 1).into()),
        ..nat
    };
    assert!(show(&rec(&flow_event(true)), &by_host, &names()).is_some());
}

#[test]
fn ipv6_drops_and_flows_show_their_addresses() {
    let a = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
    let drop6 = Event6 {
        ts_ns: 12_345_678_000_000,
        kind: kind::DROP,
        reason: DropReason::DirectRouting as u8,
        proto: 6,
        ifindex: 7,
        net_id: 1,
        len: 94,
        saddr: a("fd00:ee::2"),
        daddr: a("fd00:30::2"),
        sport_be: 40000u16.to_be(),
        dport_be: 80u16.to_be(),
        ..Event6::default()
    };
    let all = Filter {
        kinds: parse_kinds("drop,flow").unwrap(),
        ..Filter::default()
    };
    let s = show(&Record::from(&drop6), &all, &names()).unwrap();
    assert_eq!(
        s.to_string(),
        "[12345.678] drop drop_direct_routing on c1h net np0 tcp [fd00:ee::2]:40000 -> [fd00:30::2]:80 len 94"
    );
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["src"], "fd00:ee::2");
    let mut flow6 = Event6 {
        kind: kind::FLOW,
        proto: 58,
        net_id: 1,
        saddr: a("fd00:30::2"),
        daddr: a("fd00:ee::2"),
        sport_be: 7u16.to_be(),
        nat_saddr: a("fd00:ff::1"),
        nat_daddr: a("fd00:ee::2"),
        nat_sport_be: 7u16.to_be(),
        ..Event6::default()
    };
    let nat = Filter {
        kinds: parse_kinds("nat").unwrap(),
        host: Some("fd00:ff::1".parse().unwrap()),
        ..Filter::default()
    };
    let t = show(&Record::from(&flow6), &nat, &names()).unwrap();
    assert!(
        t.to_string()
            .ends_with("icmpv6 [fd00:30::2]:7 -> fd00:ee::2 as [fd00:ff::1]:7 -> fd00:ee::2"),
        "{t}"
    );
    // Untranslated (routed): a flow, not a translation.
    flow6.nat_saddr = flow6.saddr;
    assert!(show(&Record::from(&flow6), &nat, &names()).is_none());
}
