//! A minimal CNI runtime (what `cnitool` or a container runtime does): runs
//! a network configuration list's plugins for one container, ADD in order
//! with each plugin's result passed on as `prevResult`, DEL in reverse.
//! Used by the benchmark's CNI pair (the reference `bridge` + `portmap`
//! plugins against netpath's) to time ADD and DEL.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// One container's side of a CNI call.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    /// `/run/netns/NAME`.
    pub netns: PathBuf,
    pub ifname: String,
}

/// Where the plugins are and which namespace the runtime (the host side)
/// runs in.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// `CNI_PATH`: directories searched for plugin binaries, in order.
    pub path: Vec<PathBuf>,
    /// The host-side network namespace (`/run/netns/NAME`) the plugins run
    /// in, as a runtime inside that namespace would run them.
    pub host_netns: PathBuf,
    /// Extra environment (e.g. `NETPATH_CGROUP`).
    pub env: Vec<(String, String)>,
}

/// `(hostPort, containerPort, protocol)` for `runtimeConfig.portMappings`.
pub type PortMapping = (u16, u16, &'static str);

impl Runtime {
    fn find(&self, ty: &str) -> Result<PathBuf> {
        self.path
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.is_file())
            .with_context(|| format!("CNI plugin {ty} not found in {:?}", self.path))
    }

    /// One plugin call: its stdout (the result), or the error result's
    /// message.
    fn call(&self, cmd: &str, c: &Container, conf: &Value) -> Result<Value> {
        let ty = conf["type"]
            .as_str()
            .context("a plugin config without type")?;
        let bin = self.find(ty)?;
        let path = std::env::join_paths(&self.path)?;
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.host_netns.display()))
            .arg(&bin)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &c.id)
            .env("CNI_NETNS", &c.netns)
            .env("CNI_IFNAME", &c.ifname)
            .env("CNI_PATH", path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", bin.display()))?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout: Value = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "{ty} {cmd}: not JSON: {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })?
        };
        if !out.status.success() {
            bail!(
                "{ty} {cmd}: {} ({})",
                stdout["msg"].as_str().unwrap_or("failed"),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }

    /// The list's plugin configs as each is called: name and cniVersion
    /// copied in, `runtimeConfig` for the capabilities it declares.
    fn confs(list: &Value, mappings: &[PortMapping]) -> Result<Vec<Value>> {
        let plugins = list["plugins"]
            .as_array()
            .context("a conflist without plugins")?;
        Ok(plugins
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["name"] = list["name"].clone();
                p["cniVersion"] = list["cniVersion"].clone();
                if p["capabilities"]["portMappings"] == json!(true) {
                    let pm: Vec<Value> = mappings
                        .iter()
                        .map(|(h, c, proto)| {
                            json!({"hostPort": h, "containerPort": c, "protocol": proto})
                        })
                        .collect();
                    p["runtimeConfig"] = json!({ "portMappings": pm });
                }
                p
            })
            .collect())
    }

    /// ADD of the whole list; the last plugin's result.
    pub fn add(&self, list: &Value, c: &Container, mappings: &[PortMapping]) -> Result<Value> {
        let mut prev = Value::Null;
        for mut conf in Self::confs(list, mappings)? {
            if !prev.is_null() {
                conf["prevResult"] = prev.clone();
            }
            prev = self.call("ADD", c, &conf)?;
        }
        Ok(prev)
    }

    /// DEL of the whole list, last plugin first; every plugin is called even
    /// after one fails (as runtimes do), and the first error is returned.
    pub fn del(&self, list: &Value, c: &Container, mappings: &[PortMapping]) -> Result<()> {
        let mut first = None;
        for conf in Self::confs(list, mappings)?.into_iter().rev() {
            if let Err(e) = self.call("DEL", c, &conf) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// `/run/netns/NAME`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confs_carry_name_version_and_port_mappings_where_asked() {
        let list = json!({
            "cniVersion": "1.0.0",
            "name": "net1",
            "plugins": [
                {"type": "bridge", "bridge": "cni0"},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        let confs = Runtime::confs(&list, &[(8080, 80, "tcp")]).unwrap();
        assert_eq!(confs[0]["name"], "net1");
        assert_eq!(confs[0]["cniVersion"], "1.0.0");
        assert!(confs[0].get("runtimeConfig").is_none());
        assert_eq!(
            confs[1]["runtimeConfig"]["portMappings"][0],
            json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
        );
    }
}
