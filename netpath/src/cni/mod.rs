//! netpath as a CNI plugin (CNI spec 1.0.0): the same binary, run by a
//! container runtime (podman, containerd, CRI-O) with `CNI_COMMAND` set.
//! A front door like `docker/`: it drives `up`, `endpoint`, `publish` and
//! `down`, which know nothing of it.
//!
//! - `config`: the network config on stdin and the CNI_* environment, typed;
//! - `result`: the result and error JSON, the spec's error codes;
//! - `ipam`: delegation to the IPAM plugin (standalone mode);
//! - `store`: per-attachment records under /run/netpath/cni;
//! - `ops`: ADD, DEL, CHECK.
//!
//! stdout carries the result or the error and nothing else; logs go to
//! stderr (`NETPATH_LOG` sets the level, warn by default).

pub mod config;
pub mod ipam;
mod ops;
pub mod result;
pub mod store;

use std::{collections::BTreeMap, io::Read as _, process::ExitCode};

use result::{CniError, code};

/// The plugin's entry point: called by `main` before clap when
/// `CNI_COMMAND` is set, before any thread exists.
pub fn main() -> ExitCode {
    logging();
    let vars: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    // SAFETY: no other thread exists yet (this runs first in main). The
    // daemon this process may start, and the IPAM plugin, must not see a
    // CNI_COMMAND of ours (the daemon would act as a plugin); the IPAM
    // plugin gets its own explicitly.
    unsafe { std::env::remove_var("CNI_COMMAND") };
    match run(&vars) {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::debug!("{e}");
            match serde_json::to_string(&e) {
                Ok(json) => println!("{json}"),
                Err(_) => println!(r#"{{"cniVersion":"1.0.0","code":100,"msg":"netpath"}}"#),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(vars: &BTreeMap<String, String>) -> Result<Option<String>, CniError> {
    let env = config::Env::from_vars(vars)?;
    if env.command == "VERSION" {
        return Ok(Some(json(&result::VERSION_INFO)?));
    }
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(code::IO, format!("reading stdin: {e}")))?;
    let cgroup = std::env::var_os("NETPATH_CGROUP")
        .filter(|v| !v.is_empty())
        .map(Into::into);
    let conf = match config::parse(&stdin, cgroup) {
        Ok(c) => c,
        Err(e) if env.command == "DEL" => config::parse_for_del(&stdin, e)?,
        Err(e) => return Err(e),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(CniError::new(
            code::NETPATH,
            "netpath must run as root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)",
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::NETPATH, format!("tokio: {e}")))?;
    rt.block_on(async {
        match env.command.as_str() {
            "ADD" => {
                let r = ops::add(&env, &conf, &stdin).await?;
                Ok(Some(json(&r)?))
            }
            "DEL" => ops::del(&env, &conf, &stdin).await.map(|()| None),
            "CHECK" => ops::check(&env, &conf, &stdin).await.map(|()| None),
            other => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND {other:?}: netpath knows ADD, DEL, CHECK and VERSION"),
            )),
        }
    })
}

/// A value as stdout's JSON.
fn json<T: serde::Serialize>(v: &T) -> Result<String, CniError> {
    serde_json::to_string(v)
        .map_err(|e| CniError::new(code::NETPATH, format!("encoding the result: {e}")))
}

/// Logs to stderr only: stdout is the result.
fn logging() {
    use tracing::level_filters::LevelFilter;
    let level = std::env::var("NETPATH_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
}
