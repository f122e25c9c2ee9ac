//! Tier 3: the real `netpath` binary in throw-away namespaces with real
//! traffic. One test binary: foundation (up/down/status), masquerade,
//! isolation, conntrack under pressure, inbound security, publishing and
//! the quick benchmark. Tests that flood or time gaps take
//! [`harness::exclusive`] so that no two of them share the machine.

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod apply;
mod bench;
mod conntrack;
mod fast6;
mod foundation;
mod inbound;
mod ipv6;
mod isolation;
mod masquerade;
mod metrics;
mod monitor;
mod multinode;
mod publish;
mod publish6;
mod publish_fast;
mod top;
mod v6only;
mod verify;
