//! The multi-node story (docs/multi-host.md), simulated: three "nodes"
//! (namespaces) on one LAN, each running netpath with a pod CIDR of its
//! own (10.244.N.0/24) and the cluster's pod and service CIDRs as peers
//! (`noMasqueradeTo`), its pod plugged in by netpath's CNI plugin (ADD as
//! a runtime calls it, host-local IPAM, a hostPort), with static routes to
//! the other nodes' pod CIDRs (what host routes or BGP give a real
//! cluster). The external host is on
//! the same LAN (it also plays the switch) and knows no pod route.
//! Pods reach pods on other nodes with their own addresses and no NAT,
//! reach the outside masqueraded, and a hostPort on each node works;
//! a non-peer that routes a pod CIDR to a node gets nothing.

use crate::harness;

use harness::{NETPATH, Netns, addr, topology};
use netpath::lab::cni::{Container, Runtime, netns_path};

const CLUSTER: &str = "10.244.0.0/16";
/// The cluster's service CIDR: peers too, so ClusterIP traffic takes the
/// kernel's path, where kube-proxy's DNAT is.
const SERVICES: &str = "10.96.0.0/12";
const EXT: &str = "192.168.50.100";

fn node_ip(n: usize) -> String {
    format!("192.168.50.{n}")
}

struct Node {
    ns: Netns,
    pod: Netns,
    pod_ip: String,
}

/// Each node's CNI config: netpath standalone on the node's pod CIDR, the
/// cluster and service CIDRs as peers, hostPorts through portMappings.
fn conflist(n: usize, node: &Netns, dir: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [{
            "type": "netpath",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "noMasqueradeTo": [CLUSTER, SERVICES],
            "cgroup": node.cgroup.as_ref().expect("the node's cgroup"),
            "capabilities": {"portMappings": true},
            "ipam": {
                "type": "host-local",
                "subnet": format!("10.244.{n}.0/24"),
                "dataDir": dir.join(format!("ipam{n}")),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    })
}

/// The LAN (a bridge in `ext`) and three nodes with one pod each, plugged
/// in by netpath's CNI plugin (ADD with a hostPort 8080 -> 80).
fn cluster(dir: &std::path::Path) -> (Netns, Vec<Node>) {
    let ext = Netns::new("mn-ext").unwrap();
    ext.ip(&["link", "add", "lan0", "type", "bridge"]).unwrap();
    ext.ip(&["addr", "add", &format!("{EXT}/24"), "dev", "lan0"])
        .unwrap();
    ext.ip(&["link", "set", "lan0", "up"]).unwrap();
    let mut nodes = Vec::new();
    for n in 1..=3usize {
        let ns = Netns::new(&format!("mn-node{n}"))
            .unwrap()
            .cleanup_with(NETPATH);
        let port = format!("n{n}p");
        topology::veth(&ns, "eth0", &ext, &port).unwrap();
        ext.ip(&["link", "set", &port, "master", "lan0"]).unwrap();
        ns.ip(&["addr", "add", &format!("{}/24", node_ip(n)), "dev", "eth0"])
            .unwrap();
        let pod = Netns::new(&format!("mn-pod{n}")).unwrap();
        let runtime = Runtime {
            path: vec![dir.join("bin"), "/usr/lib/cni".into()],
            host_netns: netns_path(&ns.name),
            env: Vec::new(),
        };
        let c = Container {
            id: format!("pod{n}"),
            netns: netns_path(&pod.name),
            ifname: "eth0".to_owned(),
        };
        let result = runtime
            .add(&conflist(n, &ns, dir), &c, &[(8080, 80, "tcp")])
            .unwrap_or_else(|e| panic!("ADD on node{n}: {e:#}"));
        let pod_ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address in {result}"))
            .to_owned();
        nodes.push(Node { ns, pod, pod_ip });
    }
    // Each node routes the other nodes' pod CIDRs to them.
    for (i, node) in nodes.iter().enumerate() {
        for other in (1..=3usize).filter(|o| *o != i + 1) {
            node.ns
                .ip(&[
                    "route",
                    "add",
                    &format!("10.244.{other}.0/24"),
                    "via",
                    &node_ip(other),
                ])
                .unwrap();
        }
    }
    (ext, nodes)
}

#[test]
fn pods_reach_pods_on_other_nodes_unmasqueraded_and_the_outside_masqueraded() {
    require_root!();
    let have = std::path::Path::new("/usr/lib/cni/host-local").is_file();
    assert!(
        have || std::env::var("CI").map_or(true, |v| v != "true"),
        "CI: /usr/lib/cni/host-local missing (containernetworking-plugins)"
    );
    if !have {
        eprintln!("SKIP: no /usr/lib/cni/host-local (cargo xtask setup installs it)");
        return;
    }
    // The plugin as a runtime finds it: a directory with `netpath` in it,
    // then the reference plugins (host-local).
    let dir =
        harness::TempDir(std::env::temp_dir().join(format!("np-multinode-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("bin")).unwrap();
    std::os::unix::fs::symlink(
        std::fs::canonicalize(NETPATH).unwrap(),
        dir.0.join("bin/netpath"),
    )
    .unwrap();
    let (ext, nodes) = cluster(&dir.0);
    let st = harness::status(&nodes[0].ns);
    assert_eq!(
        st["networks"][0]["no_masquerade_to"],
        serde_json::json!([SERVICES, CLUSTER])
    );
    // Every pod to every pod on another node: the server sees the client
    // pod's own address.
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let port = 8000 + (10 * i + j) as u16;
            let seen = topology::tcp_echo(
                &to.pod,
                addr("0.0.0.0", port),
                &from.pod,
                addr(&to.pod_ip, port),
                b"pod to pod",
            )
            .unwrap_or_else(|e| panic!("pod{} -> pod{}: {e:#}", i + 1, j + 1));
            assert_eq!(seen.ip().to_string(), from.pod_ip, "no NAT between pods");
        }
    }
    // UDP too.
    let seen = topology::udp_echo(
        &nodes[2].pod,
        addr("0.0.0.0", 5353),
        &nodes[0].pod,
        addr(&nodes[2].pod_ip, 5353),
        b"q",
    )
    .unwrap();
    assert_eq!(seen.ip().to_string(), nodes[0].pod_ip);
    // A ClusterIP as kube-proxy (iptables mode) makes one: a DNAT rule in
    // node1's nat table to pod2. pod1 reaches it, pod2 sees pod1's own
    // address, and the answer comes back from the ClusterIP (netfilter
    // undid its translation: the peer's packets took the kernel's path).
    let dnat = format!("{}:8500", nodes[1].pod_ip);
    topology::run(nodes[0].ns.command("iptables").args([
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        "10.96.0.10/32",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        &dnat,
    ]))
    .unwrap();
    let seen = topology::tcp_echo(
        &nodes[1].pod,
        addr("0.0.0.0", 8500),
        &nodes[0].pod,
        addr("10.96.0.10", 80),
        b"service",
    )
    .unwrap_or_else(|e| panic!("pod1 -> ClusterIP -> pod2: {e:#}"));
    assert_eq!(
        seen.ip().to_string(),
        nodes[0].pod_ip,
        "no NAT but the service's"
    );
    // The outside sees each node's address.
    for (i, node) in nodes.iter().enumerate() {
        let seen = topology::tcp_echo(
            &ext,
            addr("0.0.0.0", 7000 + i as u16),
            &node.pod,
            addr(EXT, 7000 + i as u16),
            b"out",
        )
        .unwrap();
        assert_eq!(seen.ip().to_string(), node_ip(i + 1), "masqueraded");
    }
    // The hostPort on each node (the ADD's portMappings).
    for (i, node) in nodes.iter().enumerate() {
        let seen = topology::tcp_echo(
            &node.pod,
            addr("0.0.0.0", 80),
            &ext,
            addr(&node_ip(i + 1), 8080),
            b"hostport",
        )
        .unwrap();
        assert_eq!(seen.ip().to_string(), EXT, "the client's address kept");
    }
    // The pod-to-pod flows are tracked untranslated.
    let flows = harness::flows(&nodes[0].ns);
    assert!(
        flows.iter().any(|f| f["nat"] == "none"
            && f["original"]["src"] == nodes[0].pod_ip.as_str()
            && f["original"]["dst"] == nodes[1].pod_ip.as_str()),
        "{flows:#?}"
    );
    // A host that is no peer gets nothing at a pod's own address, even
    // when it routes the pod CIDR to the node.
    ext.ip(&["route", "add", "10.244.1.0/24", "via", &node_ip(1)])
        .unwrap();
    assert!(
        topology::tcp_echo(
            &nodes[0].pod,
            addr("0.0.0.0", 9000),
            &ext,
            addr(&nodes[0].pod_ip, 9000),
            b"x",
        )
        .is_err(),
        "direct routing from a non-peer"
    );
    // The last `down` takes the plugin's records of that namespace along.
    let cookie = harness::status(&nodes[0].ns)["netns_cookie"]
        .as_u64()
        .unwrap();
    let records = std::path::Path::new("/run/netpath/cni").join(cookie.to_string());
    assert!(records.is_dir(), "{}", records.display());
    harness::netpath_ok(&nodes[0].ns, &["down", "--all"]);
    assert!(!records.exists(), "{} outlived down", records.display());
}
