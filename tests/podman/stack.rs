//! A podman whose every command runs in a host namespace the test made
//! (`nsenter --net=/run/netns/HOST`: outside it, CNI DEL would run against
//! the root namespace), with its own storage, run root, CNI config
//! directory, host-local data directory and containers.conf, and an image
//! imported from busybox-static with the host's /usr mounted for python3.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{Lab, NETPATH, Netns};

pub const HOST_IP: &str = Lab::UPLINK;
pub const EXT_IP: &str = Lab::EXT;
pub const IMAGE: &str = "localhost/npbox:1";

/// Answers "NAME PEER_ADDRESS" on TCP port argv[1] (default 80): in
/// containers, and in the external namespace.
pub const SERVER: &str = r#"
import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]) if len(sys.argv) > 1 else 80)); s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    try:
        c.settimeout(2); c.recv(64); c.sendall(("%s %s" % (os.environ.get("NAME", "?"), peer[0])).encode())
    except OSError:
        pass
    c.close()
"#;

/// Whether podman and the reference plugins are installed (`cargo xtask
/// setup` installs them); under CI=true their absence fails.
pub fn available() -> bool {
    let ok = Path::new("/usr/bin/podman").exists()
        && Path::new("/usr/lib/cni/host-local").exists()
        && Path::new("/usr/lib/cni/bridge").exists()
        && Path::new("/bin/busybox").exists();
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "podman, containernetworking-plugins or busybox-static missing, and CI=true"
        );
        eprintln!("SKIP: podman / containernetworking-plugins / busybox-static not installed");
    }
    ok
}

/// Fields drop in order: containers first (their DEL runs while netpath's
/// state is there), then the directory, then the namespaces.
pub struct Podman {
    pub dir: TempDir,
    pub host: Netns,
    pub ext: Netns,
}

pub use crate::harness::TempDir;

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
    }
}

impl Podman {
    pub fn new(tag: &str) -> Self {
        let (host, ext) = Lab::host_and_ext(tag, &format!("{tag}x"), NETPATH, "up0")
            .expect("host and external namespaces");
        let dir = TempDir(std::env::temp_dir().join(format!("np-podman-{}", host.name)));
        for d in ["bin", "net", "root", "runroot", "ipam", "np", "rootfs"] {
            std::fs::create_dir_all(dir.0.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(NETPATH, dir.0.join("bin/netpath")).unwrap();
        std::fs::write(dir.0.join("np/server.py"), SERVER).unwrap();
        let d = dir.0.display();
        std::fs::write(
            dir.0.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits=[\"nofile=16384:16384\",\"nproc=32768:32768\"]\n\
                 [network]\nnetwork_backend=\"cni\"\nnetwork_config_dir=\"{d}/net\"\n\
                 cni_plugin_dirs=[\"{d}/bin\",\"/usr/lib/cni\"]\ndefault_network=\"net1\"\n\
                 [engine]\ncgroup_manager=\"cgroupfs\"\nevents_logger=\"file\"\n"
            ),
        )
        .unwrap();
        let p = Self { dir, host, ext };
        p.import_image();
        p
    }

    fn import_image(&self) {
        let tar = netpath::lab::dockerlab::busybox_rootfs_tar(&self.dir.0)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.ok(&["import", &tar.to_string_lossy(), IMAGE]);
    }

    /// The socket hooks' cgroup of the host namespace (never the root one).
    pub fn cgroup(&self) -> String {
        self.host
            .cgroup
            .as_ref()
            .expect("a test cgroup")
            .display()
            .to_string()
    }

    /// Writes network `name`'s conflist: netpath standalone on `bridge`
    /// with host-local on `subnet`, or the reference bridge plugin
    /// (ipMasq off) followed by netpath chained; `extra` is JSON added to
    /// netpath's entry (`"icc":false,` …).
    pub fn network(&self, name: &str, bridge: &str, subnet: &str, chained: bool, extra: &str) {
        let ipam = format!(
            r#"{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}/ipam"}}"#,
            self.dir.0.display()
        );
        let cg = self.cgroup();
        let plugins = if chained {
            format!(
                r#"{{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{ipam}}},
                   {{"type":"netpath",{extra}"chained":true,"cgroup":"{cg}","capabilities":{{"portMappings":true}}}}"#
            )
        } else {
            format!(
                r#"{{"type":"netpath",{extra}"bridge":"{bridge}","cgroup":"{cg}","ipam":{ipam},"capabilities":{{"portMappings":true}}}}"#
            )
        };
        std::fs::write(
            self.dir.0.join(format!("net/{name}.conflist")),
            format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{plugins}]}}"#),
        )
        .unwrap();
    }

    /// `podman ARGS…` inside the host namespace.
    pub fn podman(&self, args: &[&str]) -> Output {
        let d = &self.dir.0;
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host.name))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .arg("--network-config-dir")
            .arg(d.join("net"))
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("spawning podman")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `podman run -d` of server `name` on `network` with `-p` options.
    pub fn run(&self, name: &str, network: &str, publish: &[&str]) -> Output {
        let env = format!("NAME={name}");
        let np = format!("{}/np:/np:ro", self.dir.0.display());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--stop-signal",
            "KILL",
            "-e",
            &env,
            "-v",
            "/usr:/usr:ro",
            "-v",
            &np,
        ];
        for p in publish {
            args.extend_from_slice(&["-p", p]);
        }
        args.extend_from_slice(&[IMAGE, "python3", "-u", "/np/server.py"]);
        self.podman(&args)
    }

    pub fn run_ok(&self, name: &str, network: &str, publish: &[&str]) {
        let out = self.run(name, network, publish);
        assert!(
            out.status.success(),
            "podman run {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_ready(name);
    }

    pub fn wait_ready(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.ok(&["logs", name]).contains("ready") {
            assert!(Instant::now() < deadline, "{name} did not start its server");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ip_of(&self, name: &str) -> String {
        self.ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ])
    }

    /// `echo hi | nc IP PORT` in container `name`: the answer, or "" when
    /// blocked.
    pub fn nc_from(&self, name: &str, ip: &str, port: u16) -> String {
        let script = format!("echo hi | timeout 3 nc {ip} {port}");
        let out = self.podman(&["exec", name, "sh", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The `nat` table of the host namespace has its policies only.
    pub fn assert_nat_empty(&self) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host.name))
            .args(["iptables", "-t", "nat", "-S"])
            .output()
            .expect("iptables");
        let rules = String::from_utf8_lossy(&out.stdout);
        assert!(
            rules.lines().all(|l| l.starts_with("-P ")),
            "the host namespace's nat table has rules (podman's own cni-podman0?):\n{rules}"
        );
    }

    /// `bridge` exists in the host namespace (podman did not fall back to
    /// its cni-podman0).
    pub fn assert_bridge(&self, bridge: &str) {
        let links = crate::harness::ifnames(&self.host);
        assert!(
            links.iter().any(|l| l == bridge),
            "no bridge {bridge}: {links:?}"
        );
        assert!(
            !links.iter().any(|l| l == "cni-podman0"),
            "podman fell back to cni-podman0"
        );
    }
}
