//! Empty library target: the kernel programs live in the `netpath-ebpf` binary
//! (`src/main.rs`), which netpath's build script builds for `bpfel-unknown-none`.
#![no_std]
