//! A real dockerd (Debian's docker.io) inside a throw-away network
//! namespace, for the demo and the end-to-end tests: started with
//! `nsenter --net=/run/netns/NAME` (not `ip netns exec`, which remounts /sys
//! and hides cgroups and bpffs), with its own data root, exec root, socket,
//! pid file and container cgroup parent under a temporary directory. Drop
//! stops it by its pid, unmounts and deletes what it left there and removes
//! the cgroups it created; nothing of the machine's own Docker state is
//! touched.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::lab::topology::Netns;

/// The tiny image [`Dockerd::import_image`] makes.
pub const IMAGE: &str = "npbox:1";
/// A web server in [`IMAGE`] on port 80, in the foreground.
pub const WEB: [&str; 6] = ["httpd", "-f", "-p", "80", "-h", "/www"];

/// Which dockerd runs: the installed one (Debian bookworm's docker.io,
/// 20.10), or an unpacked package (trixie's docker.io 26.1, which `cargo
/// xtask setup` fetches and extracts, not installs) whose `usr/sbin`
/// (dockerd, docker-proxy) and `usr/bin` (docker-init) go first on
/// dockerd's PATH. containerd and runc are the installed ones either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engine {
    /// The extracted package's root; None: the installed dockerd.
    pub root: Option<PathBuf>,
}

impl Engine {
    /// The installed dockerd.
    pub const INSTALLED: Self = Self { root: None };

    /// An unpacked engine at `root` (it has `usr/sbin/dockerd`).
    pub fn unpacked(root: PathBuf) -> Result<Self> {
        let dockerd = root.join("usr/sbin/dockerd");
        if !dockerd.is_file() {
            bail!("{} is missing", dockerd.display());
        }
        Ok(Self { root: Some(root) })
    }

    /// The PATH dockerd runs with (it finds docker-proxy and docker-init
    /// on it).
    fn path(&self) -> std::ffi::OsString {
        let mut dirs: Vec<PathBuf> = self
            .root
            .iter()
            .flat_map(|r| [r.join("usr/sbin"), r.join("usr/bin")])
            .collect();
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
        std::env::join_paths(dirs).unwrap_or_default()
    }

    fn dockerd(&self) -> PathBuf {
        match &self.root {
            Some(r) => r.join("usr/sbin/dockerd"),
            None => which("dockerd").unwrap_or_else(|| PathBuf::from("dockerd")),
        }
    }

    /// `dockerd --version`'s version ("20.10.24+dfsg1", "26.1.5+dfsg1").
    pub fn version(&self) -> Result<String> {
        let out = Command::new(self.dockerd())
            .arg("--version")
            .output()
            .context("running dockerd --version")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(2)
            .map(|v| v.trim_end_matches(',').to_owned())
            .with_context(|| format!("unexpected dockerd --version output {text:?}"))
    }
}

/// The tiny image's root filesystem as a tarball in `dir`
/// (`dir/rootfs.tar`, built in `dir/rootfs`): busybox-static with
/// httpd/nc/ping/ip links and a page in /www, plus `lib`/`lib64` links into
/// `/usr`, so a container that mounts the host's `/usr` read-only can run
/// python3. dockerd and podman import it alike.
pub fn busybox_rootfs_tar(dir: &std::path::Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    for d in ["bin", "usr", "tmp", "etc", "www", "np"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (the busybox-static package)")?;
    for a in [
        "sh", "httpd", "nc", "ping", "ip", "sleep", "hostname", "cat",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    std::os::unix::fs::symlink("usr/lib64", root.join("lib64"))?;
    std::fs::write(
        root.join("www/index.html"),
        "hello from a container of a real dockerd\n",
    )?;
    let tar = dir.join("rootfs.tar");
    crate::lab::topology::run(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )?;
    Ok(tar)
}

/// The first program a dockerd run needs that is not installed.
pub fn missing() -> Option<&'static str> {
    ["dockerd", "docker", "containerd", "runc"]
        .into_iter()
        .find(|b| which(b).is_none())
}

/// `bin` on PATH, or in the sbin directories a non-login root shell may
/// lack.
pub fn which(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    which::which_in(bin, std::env::join_paths(dirs).ok(), "/").ok()
}

/// cgroup directories (v1 hierarchies and the v2 mount) whose name is one of
/// `names`.
fn cgroup_dirs(names: &[&str]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for h in hier.flatten() {
        for n in names {
            let p = h.path().join(n);
            if p.is_dir() {
                out.insert(p);
            }
        }
    }
    out
}

pub struct Dockerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Child,
    cgroup_parent: String,
    cgroups_before: BTreeSet<PathBuf>,
}

impl Dockerd {
    /// Starts `engine`'s dockerd in `ns` with `flags` (e.g.
    /// `--iptables=false`) and waits until its API answers.
    pub fn start(ns: &Netns, engine: &Engine, flags: &[&str]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("np-dockerd-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).context("creating dockerd's directory")?;
        let sock = dir.join("docker.sock");
        let cgroup_parent = format!("np-e2e-{}", ns.name);
        let cgroups_before = cgroup_dirs(&["docker", &cgroup_parent]);
        let log = std::fs::File::create(dir.join("dockerd.log")).context("dockerd's log")?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(engine.dockerd())
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", sock.display()))
            .arg(format!("--cgroup-parent=/{cgroup_parent}"))
            .arg("--log-level=warn")
            .args(flags)
            .env("PATH", engine.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dockerd")?;
        // From here on, drop cleans up whatever happens next.
        let d = Self {
            dir,
            sock,
            child,
            cgroup_parent,
            cgroups_before,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.sock.exists()
                && d.docker_try(&["version", "--format", "{{.Server.Version}}"])?
                    .status
                    .success()
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("dockerd did not come up in 60 s:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The API address, for `docker -H` and `netpath docker --host`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// `docker -H SOCK ARGS…`, whatever its outcome.
    pub fn docker_try(&self, args: &[&str]) -> Result<Output> {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("spawning docker")
    }

    /// `docker ARGS…`, failing with its output unless it succeeds; stdout.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self.docker_try(args)?;
        if !out.status.success() {
            bail!(
                "docker {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Imports the tiny image [`IMAGE`] from [`busybox_rootfs_tar`].
    pub fn import_image(&self) -> Result<()> {
        let tar = busybox_rootfs_tar(&self.dir)?;
        self.docker(&["import", &tar.to_string_lossy(), IMAGE])?;
        Ok(())
    }

    /// `netpath docker` following this dockerd from `ns`, its output
    /// appended to `log`; stopped when the value is dropped.
    pub fn follower(
        &self,
        ns: &Netns,
        netpath: &std::path::Path,
        log: &std::path::Path,
    ) -> Result<crate::lab::topology::Process> {
        let log = std::fs::File::create(log).context("the follower's log")?;
        Ok(crate::lab::topology::Process(
            ns.netpath(netpath)
                .args(["docker", "--host", &self.host()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting netpath docker")?,
        ))
    }

    /// Pids of `pid`'s descendants (dockerd's containerd and shims).
    fn descendants(pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut todo = vec![pid];
        while let Some(p) = todo.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                    out.push(k);
                    todo.push(k);
                }
            }
        }
        out
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // nsenter execs dockerd: the child's pid is dockerd's.
        let pid = self.child.id();
        let kids = Self::descendants(pid);
        // SAFETY: signalling the process this value started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !exited {
            eprintln!("dockerd {pid} ignored SIGTERM for 30 s: killing it and its children");
            for k in kids.iter().chain(std::iter::once(&pid)) {
                // SAFETY: dockerd (started here) and processes it started.
                unsafe { libc::kill(*k as i32, libc::SIGKILL) };
            }
            let _ = self.child.wait();
        }
        // Whatever dockerd left mounted under its directories.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // cgroups it created (children first: the parent's per-container ones).
        for dir in cgroup_dirs(&["docker", &self.cgroup_parent]) {
            if self.cgroups_before.contains(&dir) {
                continue;
            }
            if let Ok(kids) = std::fs::read_dir(&dir) {
                for k in kids.flatten().filter(|k| k.path().is_dir()) {
                    let _ = std::fs::remove_dir(k.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
