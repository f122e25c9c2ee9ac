//! The command line: `netpath [--netns NAME] COMMAND …`.

use std::net::Ipv4Addr;

use clap::{Args, Parser, Subcommand, builder::TypedValueParser as _};
use ipnet::Ipv4Net;
use netpath_common::GatewayMode;

use crate::spec::{self, NetworkOptions, PortSpec};

/// `--gateway-mode`: Docker's spellings, listed in `--help`.
fn gateway_mode() -> impl clap::builder::TypedValueParser<Value = GatewayMode> {
    clap::builder::PossibleValuesParser::new(GatewayMode::ALL.map(GatewayMode::as_str)).map(|s| {
        GatewayMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .unwrap_or(GatewayMode::Nat)
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "netpath",
    version,
    about = "eBPF datapath for single-host container networking (replaces Docker's iptables bridge path)",
    long_about = "netpath attaches TCX programs to container bridges, their ports and the uplinks, \
                  and keeps its state pinned under /sys/fs/bpf/netpath/<netns cookie>/, one directory \
                  per network namespace. It acts on the network namespace it runs in. \
                  NETPATH_LOG (or RUST_LOG) = error|warn|info|debug|trace sets how much it logs \
                  (default info; -v and -vv win); under systemd its log lines carry no timestamps."
)]
pub struct Cli {
    /// Act in the named network namespace (/run/netns/NAME), like `ip -n NAME`.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    /// More log lines: -v debug, -vv trace (else NETPATH_LOG or RUST_LOG, else info).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring a network up (idempotent): create the bridge if absent, give it the
    /// gateway address, enable IPv4 forwarding, load and pin the programs and
    /// attach them to the bridge, its ports and the uplinks, attach the socket
    /// hooks to a cgroup, and start the daemon.
    Up(UpCmd),
    /// Take a network down: detach, forget it, and delete what netpath created
    /// for it (a bridge that existed before `up` stays). The last `down` unpins everything.
    Down(DownCmd),
    /// Bring networks, published ports and filter rules to a TOML file in
    /// one locked step (`[[network]]` keys as `up`'s flags, `[[publish]]`
    /// host and container as `publish`'s, `[[filter]]` as `filter add`'s):
    /// create what is missing, change what differs, remove what an earlier
    /// `apply` made that the file no longer names. What was made by hand or
    /// by `netpath docker` is never changed. An error in the file is told as
    /// FILE:LINE:COLUMN and nothing is applied.
    Apply {
        /// The file; `-` reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: std::path::PathBuf,
        /// cgroup v2 directory for the socket hooks, as for `up`.
        #[arg(long, value_name = "PATH", env = "NETPATH_CGROUP")]
        cgroup: Option<std::path::PathBuf>,
        /// Do not start the background daemon (as for `up`).
        #[arg(long)]
        no_daemon: bool,
    },
    /// Print the networks, published ports and filter rules as a file for
    /// `apply` (`export | apply -f -` changes nothing); what `netpath
    /// docker` made is left out.
    Export,
    /// Show networks, attached interfaces with program ids, and counters.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Plug a network namespace (a container) into a network: a veth pair,
    /// the next free address (or --ip), a default route via the gateway, and
    /// the port bound to that address and MAC.
    Connect(ConnectCmd),
    /// Unplug a network namespace from a network and free its address.
    Disconnect {
        /// The container's network namespace (/run/netns/NAME).
        #[arg(id = "container_netns", value_name = "NETNS")]
        netns: String,
        /// Bridge of the network.
        #[arg(long, value_name = "NAME", value_parser = spec::parse_ifname)]
        bridge: String,
    },
    /// Change a network's options at runtime.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Publish host ports to a container, like `docker run -p`:
    /// `netpath publish 8081 172.18.0.2:80`, `netpath publish 127.0.0.1:5353/udp 172.18.0.3:53`,
    /// `netpath publish 9000-9099 172.18.0.4:9000-9099`, on IPv6 `netpath publish '[::]:8080' '[fd00:18::2]:80'`.
    Publish {
        /// [HOST_IP:]HOST_PORT[-END][/tcp|/udp|/sctp]; every host address (of the container's family; `[::]` every IPv6 one) and tcp by default (sctp keeps the port: the container port must be the same).
        #[arg(value_parser = spec::parse_host_ports)]
        host: PortSpec,
        /// CONTAINER_IP:PORT[-END] (a range as long as the host range; IPv6 in brackets).
        #[arg(value_parser = spec::parse_container_ports)]
        container: PortSpec,
    },
    /// Stop publishing host ports; their conntrack flows go too.
    Unpublish {
        /// [HOST_IP:]HOST_PORT[-END][/tcp|/udp|/sctp], as published.
        #[arg(value_parser = spec::parse_host_ports)]
        host: PortSpec,
    },
    /// List published ports with packet and byte counters.
    Ports {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream datapath events: every drop with its reason, interface,
    /// network, addresses, ports and protocol; with `--events flow,nat`
    /// also new conntrack flows and the translations chosen. Events are
    /// made only while a monitor runs, at most 2,000 a second per CPU;
    /// what the limit or a slow reader loses is counted and shown.
    Monitor(MonitorCmd),
    /// A live view of packet and byte rates per network, interface and
    /// published port, drops by reason and the conntrack table's fill,
    /// refreshed every second (fits 80×24). q quits.
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(200..=60_000))]
        interval_ms: u64,
    },
    /// Show or flush the conntrack table, or set its timeouts and NAT port range.
    #[command(subcommand)]
    Conntrack(ConntrackCmd),
    /// Filter rules (netpath's DOCKER-USER): allow or deny new inbound flows
    /// to published ports (from outside, from containers, from host
    /// processes) and to routed networks' container ports, by client
    /// address, host port, container and network. The most specific rule
    /// wins: the longest --from prefix, then a rule naming the container
    /// address, its port, the host port, the network. No match allows.
    #[command(subcommand)]
    Filter(FilterCmd),
    /// Run this namespace's daemon in the foreground: sweeps expired conntrack
    /// flows every second and re-applies the networks when links or addresses
    /// change. `up` starts it in the background (log and pid file in
    /// /run/netpath/); the last `down` stops it.
    Daemon {
        /// Sweep and check interval in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
        interval_ms: u64,
        /// Serve Prometheus metrics at http://ADDR/metrics (recorded, so a
        /// restarted daemon serves there again).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Replace dockerd's iptables path: follow the Docker Engine API and
    /// mirror every bridge network (subnets of both families for `--ipv6`
    /// networks, gateways, enable_icc, enable_ip_masquerade, internal),
    /// every running container's `-p` bindings (`0.0.0.0` and `::`) and its
    /// endpoints' addresses and MAC (anti-spoofing) into netpath; remove
    /// them, with their conntrack flows, when containers stop or networks
    /// go. Reconciles at start, on every container/network event and every
    /// --resync seconds. Run dockerd with `--iptables=false
    /// --userland-proxy=false` (27 and later: also `--ip6tables=false`).
    Docker(DockerCmd),
    /// Benchmark netpath against Docker's iptables path and bare routing on
    /// identical namespace topologies, arms interleaved; prints a markdown
    /// table and writes bench.json (every sample), bench.md and bench.svg.
    Bench {
        /// One scale point and short runs (well under a minute), for CI.
        #[arg(long)]
        quick: bool,
        /// Repetitions per point (at least 5).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(5..=100))]
        reps: u64,
        /// Where to write the results.
        #[arg(long, value_name = "DIR", default_value = "bench-results")]
        out: std::path::PathBuf,
        /// Another netpath binary (an older build) to run as a fourth arm at
        /// the first scale point: the table gains netpath/baseline, the
        /// cost of what changed in between.
        #[arg(long, value_name = "BIN")]
        baseline: Option<std::path::PathBuf>,
        /// Only measure the daemon's cost (one netpath copy of the topology).
        #[arg(long, conflicts_with = "cni_only")]
        daemon_only: bool,
        /// Only the CNI pair (the reference bridge+portmap plugins against
        /// netpath's), at full size unless --quick.
        #[arg(long)]
        cni_only: bool,
        /// Only the control plane end to end under the installed dockerd:
        /// 50 × `docker network create` and 50 × `docker run -d -p` (--quick:
        /// 5) with dockerd's iptables path against `--iptables=false`
        /// followed by `netpath docker`, and a cold `netpath docker --once`.
        #[arg(long, conflicts_with_all = ["daemon_only", "cni_only"])]
        docker_only: bool,
        /// Only conntrack at scale: request/response p99 and connection
        /// rate with the table empty, holding 100,000 and 1,000,000
        /// preloaded live flows (--quick: 20,000), iptables and netpath,
        /// and the memory a flow costs in each.
        #[arg(long, conflicts_with_all = ["daemon_only", "cni_only", "docker_only"])]
        conntrack_only: bool,
        /// Only the control plane: publishing ports and creating networks
        /// (one batch and one `up` each), iptables and netpath, at full
        /// size (1000 ports, 100 networks) unless --quick.
        #[arg(long, conflicts_with_all = ["daemon_only", "cni_only", "conntrack_only", "docker_only"])]
        control_only: bool,
    },
    /// Run the demo: build a Docker-like topology in fresh network namespaces,
    /// bring netpath up in it, send traffic through masquerade and a published
    /// port, show the conntrack table and the counters; then remove it all.
    Demo,
}

#[derive(Debug, Args)]
pub struct UpCmd {
    /// Bridge name (e.g. docker0, br-1a2b3c).
    #[arg(long, value_name = "NAME", value_parser = spec::parse_ifname)]
    pub bridge: String,
    /// Subnet of the network: an IPv4 CIDR (e.g. 172.17.0.0/16), an IPv6
    /// one (an IPv6-only network: its ports carry no IPv4 or ARP), or one
    /// of each for a dual-stack network (repeat the flag:
    /// `--subnet 172.18.0.0/16 --subnet fd00:18::/64`).
    #[arg(long = "subnet", value_name = "CIDR", required = true, value_parser = crate::net6::parse_any_subnet)]
    pub subnets: Vec<ipnet::IpNet>,
    /// Gateway address on the bridge, once per family [default: the
    /// subnet's first host address; for IPv6, `…::1`].
    #[arg(long = "gateway", value_name = "IP")]
    pub gateways: Vec<std::net::IpAddr>,
    /// Uplink interface (repeatable). Replaces the uplink set of this namespace
    /// [default: every interface with an IPv4 or a global IPv6 address that is not a managed bridge, enslaved, or loopback].
    #[arg(long = "uplink", value_name = "IFACE", value_parser = spec::parse_ifname)]
    pub uplinks: Vec<String>,
    /// Masquerade traffic from this network that leaves through an uplink
    /// (Docker's enable_ip_masquerade); `--masquerade=false` keeps container
    /// source addresses.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Let containers on this bridge talk to each other (Docker's
    /// enable_icc); `--icc=false` blocks it (ARP still works).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub icc: bool,
    /// Internal network: no traffic to or from outside the subnet, no masquerade.
    #[arg(long)]
    pub internal: bool,
    /// What reaches containers from outside the host (Docker's
    /// gateway_mode_ipv4): nat (replies and published ports through a host
    /// address only), routed (no masquerade; published container ports and
    /// ping also at the container's address), nat-unprotected (everything).
    #[arg(long, value_name = "MODE", default_value = "nat", value_parser = gateway_mode())]
    pub gateway_mode: GatewayMode,
    /// A host interface whose traffic may reach this network's published
    /// container ports at the container's own address, even in gateway
    /// mode nat (Docker's trusted_host_interfaces); repeatable. Replaces the
    /// network's set; an interface that does not exist yet counts once it
    /// appears.
    #[arg(long = "trusted-host-interface", value_name = "IFACE", value_parser = spec::parse_ifname)]
    pub trusted: Vec<String>,
    /// A peer CIDR (repeatable): this network's containers reach it with
    /// their own addresses (no masquerade; tracked), and it reaches them at
    /// their own addresses in every gateway mode. On a Kubernetes node: the
    /// cluster's pod CIDR. Replaces the network's set.
    #[arg(long = "no-masquerade-to", value_name = "CIDR", value_parser = crate::peers::parse)]
    pub no_masquerade_to: Vec<Ipv4Net>,
    /// cgroup v2 directory the socket hooks attach to (host processes reaching
    /// published ports); they act only on sockets of this network namespace
    /// [default: where an earlier `up` (of any build) attached them, else the cgroup v2 root].
    #[arg(long, value_name = "PATH", env = "NETPATH_CGROUP")]
    pub cgroup: Option<std::path::PathBuf>,
    /// Do not start the background daemon (conntrack sweeping, new ports,
    /// address changes).
    #[arg(long)]
    pub no_daemon: bool,
    /// Have the daemon serve Prometheus metrics at http://ADDR/metrics
    /// (e.g. 127.0.0.1:9464); recorded for this namespace, so a restarted
    /// daemon serves there again, until the last `down`.
    #[arg(long, value_name = "ADDR", conflicts_with = "no_daemon")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl UpCmd {
    /// The network's options as given.
    pub fn options(&self) -> NetworkOptions {
        NetworkOptions {
            masquerade: self.masquerade,
            icc: self.icc,
            internal: self.internal,
            gateway_mode: self.gateway_mode,
            docker: false,
            apply: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct MonitorCmd {
    /// Kinds of events, comma-separated: drop, flow (every new flow), nat
    /// (new flows whose tuple was translated).
    #[arg(long, value_name = "KINDS", default_value = "drop", value_parser = crate::monitor::parse_kinds)]
    pub events: crate::monitor::Kinds,
    /// Only events of this network (its bridge).
    #[arg(long, value_name = "NAME", value_parser = spec::parse_ifname)]
    pub network: Option<String>,
    /// Only drops for this reason (as `status` names it, e.g. isolation or drop_icc).
    #[arg(long, value_name = "REASON", value_parser = crate::monitor::parse_reason)]
    pub reason: Option<netpath_common::DropReason>,
    /// Only events with this address, IPv4 or IPv6 (either end, or the
    /// translated tuple's).
    #[arg(long, value_name = "IP")]
    pub host: Option<std::net::IpAddr>,
    /// Only events with this port (either end, or the translated tuple's).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many events.
    #[arg(long, short = 'c', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DockerCmd {
    /// dockerd's API socket.
    #[arg(
        long,
        value_name = "URL",
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub host: String,
    /// cgroup v2 directory for the socket hooks, as for `up`.
    #[arg(long, value_name = "PATH", env = "NETPATH_CGROUP")]
    pub cgroup: Option<std::path::PathBuf>,
    /// Uplink interface (repeatable), as for `up` [default: chosen as by `up`].
    #[arg(long = "uplink", value_name = "IFACE", value_parser = spec::parse_ifname)]
    pub uplinks: Vec<String>,
    /// Masquerade dockerd's default bridge, like dockerd's own `--ip-masq`
    /// (dockerd reports false for it whenever `--iptables=false`).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub ip_masq: bool,
    /// Reconcile once and exit (non-zero when dockerd cannot be reached).
    #[arg(long)]
    pub once: bool,
    /// Full reconcile at least this often, in seconds, besides events.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub resync: u64,
}

#[derive(Debug, Subcommand)]
pub enum ConntrackCmd {
    /// List flows like `conntrack -L`: protocol, seconds left, TCP state,
    /// original and reply tuples with packets and bytes.
    #[command(alias = "ls")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove flows (both directions); filters combine, none removes all.
    Flush(FlushCmd),
    /// Show the NAT port range and conntrack timeouts, or change them.
    Config {
        /// Set a timeout, e.g. `--timeout udp=30` (tcp-syn-sent, tcp-syn-recv,
        /// tcp-established, tcp-fin-wait, tcp-time-wait, tcp-close, udp,
        /// udp-stream, icmp, other). Repeatable.
        #[arg(long = "timeout", value_name = "NAME=SECONDS")]
        timeouts: Vec<String>,
        /// Ports masquerade picks from when a container's own source port is
        /// taken [default: 1024-65535].
        #[arg(long, value_name = "MIN-MAX")]
        nat_ports: Option<String>,
        /// Size the table for this many flows [default: 114688]. Past them
        /// new flows are refused (counted, `status` shows it) and no
        /// established flow is evicted. Live flows are kept: they are
        /// copied into the new table and every interface switches to it at
        /// once; shrinking below the flows alive keeps whole flows, assured
        /// ones first, then the most recently active. A table costs 144
        /// bytes of kernel memory an entry, two entries a flow, and the
        /// daemon's passes walk all of it: larger than the default, a calm
        /// table is swept less often in proportion.
        #[arg(long, value_name = "FLOWS", value_parser = clap::value_parser!(u32).range(1024..=8_388_608))]
        max: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct FlushCmd {
    /// Original source address (the container), IPv4 or IPv6.
    #[arg(long, value_name = "IP")]
    pub src: Option<std::net::IpAddr>,
    /// Original destination address, IPv4 or IPv6 (of the source's family).
    #[arg(long, value_name = "IP")]
    pub dst: Option<std::net::IpAddr>,
    /// tcp, udp, sctp, icmp, icmpv6 or a protocol number.
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,
    /// Any port of the flow (original or translated, source or destination).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DownCmd {
    /// Bridge of the network to take down.
    #[arg(long, value_name = "NAME", value_parser = spec::parse_ifname)]
    pub bridge: Option<String>,
    /// Take every network in this namespace down and unpin everything.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ConnectCmd {
    /// The container's network namespace (/run/netns/NAME).
    #[arg(id = "container_netns", value_name = "NETNS")]
    pub netns: String,
    /// Bridge of the network.
    #[arg(long, value_name = "NAME", value_parser = spec::parse_ifname)]
    pub bridge: String,
    /// Address to give [default: the next free one].
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<Ipv4Addr>,
    /// Interface name inside the namespace.
    #[arg(long, value_name = "NAME", default_value = "eth0", value_parser = spec::parse_ifname)]
    pub ifname: String,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Set options of the network on BRIDGE; running containers follow at once.
    Set {
        /// Bridge of the network.
        #[arg(value_parser = spec::parse_ifname)]
        bridge: String,
        /// Inter-container communication on this bridge.
        #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
        icc: Option<bool>,
        /// What reaches containers from outside the host (see `up`).
        #[arg(long, value_name = "MODE", value_parser = gateway_mode())]
        gateway_mode: Option<GatewayMode>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FilterCmd {
    /// Add a rule.
    Add {
        #[command(flatten)]
        sel: SelectorArgs,
        /// allow or deny.
        verdict: crate::filter::Verdict,
    },
    /// Delete the rule with exactly these selectors.
    Del {
        #[command(flatten)]
        sel: SelectorArgs,
    },
    /// List the rules, most specific first, with the flows each decided.
    #[command(alias = "ls")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What a filter rule selects new flows by; unset selectors match all.
#[derive(Debug, Args)]
pub struct SelectorArgs {
    /// The network (its bridge) the flow goes to.
    #[arg(long, value_name = "NAME", value_parser = spec::parse_ifname)]
    pub network: Option<String>,
    /// The client's address (a CIDR or one address).
    #[arg(long, value_name = "CIDR", value_parser = crate::filter::parse_cidr)]
    pub from: Option<ipnet::Ipv4Net>,
    /// The published host port the flow comes through (tcp by default).
    #[arg(long, value_name = "HOSTPORT[/PROTO]", value_parser = crate::filter::parse_host_port)]
    pub port: Option<crate::filter::HostPort>,
    /// The container (and its port) the flow goes to.
    #[arg(long, value_name = "CONTAINER_IP[:PORT]", value_parser = crate::filter::parse_target)]
    pub to: Option<crate::filter::Target>,
}

impl SelectorArgs {
    pub fn selectors(self) -> crate::filter::Selectors {
        crate::filter::Selectors {
            network: self.network,
            from: self.from,
            port: self.port,
            to: self.to,
        }
    }
}
