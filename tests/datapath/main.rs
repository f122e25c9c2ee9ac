//! Tier 2: netpath's programs on crafted packets (BPF_PROG_TEST_RUN), no
//! interface plumbing. One test binary: the basics (roles, counters), NAT,
//! port policy and what comes in through an uplink.

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod basics;
mod fast6;
mod inbound;
mod ipv6;
mod ipv6_claims;
mod nat;
mod nat6;
mod policy;
mod publish4;
mod publish6;
mod v6only;
