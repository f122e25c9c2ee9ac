//! Delegation to the IPAM plugin named in the config (CNI spec 1.0.0,
//! "Delegated plugins"): found in CNI_PATH, run with the same stdin and
//! environment but its own CNI_COMMAND; its result parsed, its error
//! passed through as it came.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{
    config::Env,
    result::{CniError, CniResult, code},
};

/// The IPAM plugin `kind` in CNI_PATH, or an error saying where it looked.
pub fn find(env: &Env, kind: &str) -> Result<PathBuf, CniError> {
    env.path
        .iter()
        .map(|d| d.join(kind))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "IPAM plugin {kind:?} not found in CNI_PATH ({})",
                    env.path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs the IPAM plugin with `command` (ADD, DEL, CHECK); ADD returns its
/// result.
pub fn exec(plugin: &Path, command: &str, stdin: &[u8]) -> Result<Option<CniResult>, CniError> {
    let io = |what: &str, e: std::io::Error| {
        CniError::new(
            code::IPAM,
            format!("running IPAM plugin {}: {what}: {e}", plugin.display()),
        )
    };
    // Everything else (CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS,
    // CNI_PATH) is still in this process's environment.
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("spawn", e))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(|e| io("stdin", e))?;
    }
    let out = child.wait_with_output().map_err(|e| io("wait", e))?;
    if !out.status.success() {
        // The spec has the delegate's error on its stdout: passed on.
        return Err(
            serde_json::from_slice::<CniError>(&out.stdout).unwrap_or_else(|_| {
                CniError::new(
                    code::IPAM,
                    format!(
                        "IPAM plugin {} {command} failed ({}): {}{}",
                        plugin.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                )
            }),
        );
    }
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_slice::<CniResult>(&out.stdout)
        .map(Some)
        .map_err(|e| {
            CniError::new(
                code::IPAM,
                format!(
                    "IPAM plugin {} gave no result ({e}): {}",
                    plugin.display(),
                    String::from_utf8_lossy(&out.stdout).trim()
                ),
            )
        })
}
