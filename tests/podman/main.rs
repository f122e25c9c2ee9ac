//! Tier 3 with a real CNI client: netpath as a CNI plugin under podman
//! 4.3.1 (its CNI backend), standalone and chained after the reference
//! `bridge` plugin, and the plugin driven by hand for its bad input.

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod cni;
mod plugin;
mod stack;
