//! netpath: the loader and CLI of an eBPF datapath for single-host container
//! networking. The binary (`src/main.rs`) is a thin CLI over this library;
//! integration tests in `tests/` drive the binary and use this library's
//! helpers.

pub mod apply;
pub mod attach;
pub mod cli;
pub mod cni;
pub mod codec;
pub mod config_file;
pub mod config_plan;
pub mod conntrack;
pub mod ctconfig;
pub mod ctmem;
pub mod daemon;
pub mod docker;
pub mod down;
pub mod endpoint;
pub mod errors;
pub mod events;
pub mod filter;
pub mod foreign;
pub mod lab;
pub mod loader;
pub mod metrics;
pub mod monitor;
pub mod net6;
pub mod netns;
pub mod peers;
pub mod plan;
pub mod plumbing;
pub mod publish;
pub mod reconcile;
pub mod reconcile6;
pub mod resize;
pub mod sockhooks;
pub mod spec;
pub mod state;
pub mod status;
pub mod sweeper;
pub mod sys;
pub mod table;
pub mod tables;
pub mod tcfilter;
pub mod top;
pub mod trusted;
pub mod up;
pub mod watcher;

/// The kernel programs, built from `netpath-ebpf` by build.rs.
static EMBEDDED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpath-ebpf"));

/// FNV-1a of the embedded object followed by the crate version, by
/// build.rs (see [`attach::build_id`]).
const EMBEDDED_HASH: &str = env!("NETPATH_EBPF_FNV");

/// The hash build.rs computed, when this process loads the embedded
/// object (`None` under `NETPATH_EBPF_OBJECT`).
pub fn embedded_hash() -> Option<u64> {
    std::ptr::eq(ebpf_object().as_ptr(), EMBEDDED_OBJECT.as_ptr())
        .then(|| u64::from_str_radix(EMBEDDED_HASH, 16).ok())
        .flatten()
}

/// The eBPF object this process loads: the embedded one, or the file named
/// by `NETPATH_EBPF_OBJECT` (a developer's knob: another build of
/// `netpath-ebpf` without rebuilding the CLI; the upgrade test uses it).
pub fn ebpf_object() -> &'static [u8] {
    static OBJECT: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    OBJECT.get_or_init(|| {
        let Some(path) = std::env::var_os("NETPATH_EBPF_OBJECT") else {
            return EMBEDDED_OBJECT;
        };
        match std::fs::read(&path) {
            // The ELF parser wants 8-byte alignment: copy into u64 words.
            Ok(bytes) => {
                let mut words = vec![0u64; bytes.len().div_ceil(8)];
                bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()]
                    .copy_from_slice(&bytes);
                let all: &'static [u8] = bytemuck::cast_slice(Vec::leak(words));
                &all[..bytes.len()]
            }
            Err(e) => {
                eprintln!(
                    "netpath: NETPATH_EBPF_OBJECT={}: {e}; using the embedded programs",
                    std::path::Path::new(&path).display()
                );
                EMBEDDED_OBJECT
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_rs_hashes_the_embedded_object_as_the_build_id_does() {
        assert_eq!(
            super::embedded_hash(),
            Some(super::attach::object_hash(super::EMBEDDED_OBJECT))
        );
    }
}
