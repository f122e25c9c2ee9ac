//! netpath: the loader and CLI of an eBPF datapath for single-host container
//! networking. The binary (`src/main.rs`) is a thin CLI over this library;
//! integration tests in `tests/` drive the binary and use this library's
//! helpers.

pub mod attach;
pub mod bench;
pub mod cli;
pub mod conntrack;
pub mod daemon;
pub mod demo;
pub mod docker;
pub mod dockerlab;
pub mod endpoint;
pub mod filter;
pub mod netns;
pub mod ops;
pub mod plan;
pub mod plumbing;
pub mod publish;
pub mod sockhooks;
pub mod state;
pub mod status;
pub mod sys;
pub mod table;
pub mod topology;

/// The kernel programs, built from `netpath-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath-ebpf"));
