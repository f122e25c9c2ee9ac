//! The command line: `netpath [--netns NAME] COMMAND …`.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "netpath",
    version,
    about = "eBPF datapath for single-host container networking (replaces Docker's iptables bridge path)",
    long_about = "netpath attaches TCX programs to container bridges, their ports and the uplinks, \
                  and keeps its state pinned under /sys/fs/bpf/netpath/<netns cookie>/, one directory \
                  per network namespace. It acts on the network namespace it runs in."
)]
pub struct Cli {
    /// Act in the named network namespace (/run/netns/NAME), like `ip -n NAME`.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring a network up (idempotent): create the bridge if absent, give it the
    /// gateway address, enable IPv4 forwarding, load and pin the programs and
    /// attach them to the bridge, its ports and the uplinks.
    Up(UpCmd),
    /// Take a network down: detach, forget it, and delete what netpath created
    /// for it (a bridge that existed before `up` stays). The last `down` unpins everything.
    Down(DownCmd),
    /// Show networks, attached interfaces with program ids, and counters.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Run the demo: build a Docker-like topology in fresh network namespaces,
    /// bring netpath up in it, send traffic and show the counters; then remove it all.
    Demo,
}

#[derive(Debug, Args)]
pub struct UpCmd {
    /// Bridge name (e.g. docker0, br-1a2b3c).
    #[arg(long, value_name = "NAME")]
    pub bridge: String,
    /// Subnet of the network, IPv4 CIDR (e.g. 172.17.0.0/16).
    #[arg(long, value_name = "CIDR")]
    pub subnet: String,
    /// Gateway address on the bridge [default: first host address of the subnet].
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// Uplink interface (repeatable). Replaces the uplink set of this namespace
    /// [default: every interface that is not a managed bridge, a port of one, or loopback].
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DownCmd {
    /// Bridge of the network to take down.
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Take every network in this namespace down and unpin everything.
    #[arg(long)]
    pub all: bool,
}
