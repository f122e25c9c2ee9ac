//! Tier 3 with a real client: the scenario matrix under an unmodified
//! dockerd, its iptables path against `netpath docker`.

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod e2e;
mod e2e6;
