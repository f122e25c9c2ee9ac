//! `cargo xtask`: everything a fresh machine needs, then build, demo, test.
//!
//! - `cargo xtask setup` installs what is missing: Debian packages the demo
//!   and tests use, nightly's rust-src (for `-Z build-std=core`), and
//!   bpf-linker built against the nightly rustc's own LLVM.
//! - `cargo xtask demo` = setup + release build + `netpath demo`.
//! - `cargo xtask test` = setup + `cargo test` (host unit tests,
//!   BPF_PROG_TEST_RUN tests, namespace integration tests).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "netpath's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (apt packages, nightly rust-src, bpf-linker).
    Setup,
    /// Set up, build in release mode and run `netpath demo`.
    Demo,
    /// Set up and run the whole test suite (needs root for the namespace tiers).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Commands the demo and tests run, and the Debian package providing each.
const APT: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("iptables", "iptables"),
    ("ethtool", "ethtool"),
    ("python3", "python3-minimal"),
    // The dockerd end-to-end tests (a Docker CLI alone, as in
    // /usr/local/bin on some machines, is not enough).
    ("dockerd", "docker.io"),
    ("containerd", "docker.io"),
    ("runc", "docker.io"),
    // The metrics test scrapes netpath with a real Prometheus (started by
    // the test, in its namespace) and checks the exposition with promtool.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // `netpath top` is driven in a real terminal.
    ("tmux", "tmux"),
    // The CNI plugin's end-to-end tests: podman 4.3.1 with its CNI
    // backend (installed without recommends, so without netavark).
    ("podman", "podman"),
    ("catatonit", "catatonit"),
];

/// Packages needed as such (not for a command): the e2e images copy
/// busybox-static's /bin/busybox; the podman tests run the reference CNI
/// plugins (bridge, host-local) from /usr/lib/cni; the dockerd IPv6 matrix
/// crafts a frame with scapy, inside a container that runs the host's
/// /usr/bin/python3.
const APT_PACKAGES: &[&str] = &[
    "busybox-static",
    "containernetworking-plugins",
    "python3-scapy",
];

/// Whether dpkg has `pkg` installed.
fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// bpf-linker release known to work with the pinned aya versions.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Demo => {
            setup()?;
            run(Command::new("cargo")
                .args(["build", "--release", "-p", "netpath"])
                .current_dir(root()))?;
            run(Command::new(root().join("target/release/netpath")).arg("demo"))
        }
        Task::Test { args } => {
            setup()?;
            let engine = docker_26()?;
            let variant = variant_ebpf()?;
            cargo_test(&args, &variant, &engine)
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds the eBPF object a second time with `NETPATH_EBPF_VARIANT` set,
/// into its own target directory, and returns its path: the upgrade test
/// runs `netpath up` with it (`NETPATH_EBPF_OBJECT`) to replace the
/// programs in place, as a new release would. The flags are aya-build's.
fn variant_ebpf() -> Result<PathBuf> {
    let target_dir = root().join("target/ebpf-variant");
    let arch = std::env::consts::ARCH;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f");
    run(Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--package",
            "netpath-ebpf",
            "--bins",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("NETPATH_EBPF_VARIANT", "1")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(root().join("netpath-ebpf")))?;
    Ok(target_dir.join("bpfel-unknown-none/release/netpath-ebpf"))
}

/// Runs `cargo test`, echoing its output, and closes with one total line
/// over every test binary (cargo's own last line is a doc-test run's).
fn cargo_test(args: &[String], variant: &Path, engine: &Path) -> Result<()> {
    use std::io::BufRead as _;
    let mut cmd = Command::new("cargo");
    cmd.env("NETPATH_TEST_VARIANT_OBJECT", variant);
    cmd.env("NETPATH_TEST_DOCKERD26", engine);
    // Every test binary runs even after one fails, so the summary is complete.
    cmd.args(["test", "--no-fail-fast"])
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped());
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in std::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                    words.next(),
                ) {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// Whether `program` is on PATH or in an sbin directory.
fn have(program: &str) -> bool {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    which::which_in(program, std::env::join_paths(dirs).ok(), "/").is_ok()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()
}

fn apt_packages() -> Result<()> {
    let mut missing: Vec<&str> = APT
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .chain(APT_PACKAGES.iter().copied().filter(|p| !installed(p)))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    // Installing docker.io must not start a dockerd in the machine's own
    // namespace (it would rewrite the host's firewall): where no
    // policy-rc.d exists, one that refuses service starts is in place for
    // the install only.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let guard = !policy.exists();
    if guard {
        std::fs::write(
            policy,
            "#!/bin/sh\n# xtask: no service starts while installing\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let result = run(Command::new("apt-get").args(["update", "-qq"])).and_then(|_| {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    });
    if guard {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// The archive URI of the machine's own Debian sources (deb822 `URIs:` or
/// a one-line `deb URI SUITE …`), skipping the security archive.
fn debian_archive() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri.filter(|u| !u.contains("security")) {
                return Ok(uri.to_owned());
            }
        }
    }
    bail!("no Debian archive in /etc/apt/sources.list{{,.d/*}}")
}

/// Debian trixie's docker.io (dockerd 26.1), for the e2e matrix's second
/// engine: fetched with a temporary sources list (trixie, the machine's
/// own archive, apt state and cache of its own under target/engines/apt)
/// and unpacked with `dpkg-deb -x`, never installed. Cached: a later run
/// reuses the unpacked tree. Returns its root.
fn docker_26() -> Result<PathBuf> {
    let engines = root().join("target/engines");
    let dest = engines.join("docker.io-trixie");
    if dest.join("usr/sbin/dockerd").is_file() {
        return Ok(dest);
    }
    let apt = engines.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "etc"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let sources = apt.join("etc/sources.list");
    std::fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} trixie main\n",
            debian_archive()?
        ),
    )?;
    let opts = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".to_owned(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        format!(
            "Dir::Cache::archives={}",
            apt.join("cache/archives").display()
        ),
    ];
    let with_opts = |cmd: &mut Command| {
        for o in &opts {
            cmd.args(["-o", o]);
        }
    };
    let mut update = Command::new("apt-get");
    with_opts(&mut update);
    run(update.args(["update", "-qq"]))?;
    let mut download = Command::new("apt-get");
    with_opts(&mut download);
    run(download
        .args(["download", "-qq", "docker.io"])
        .current_dir(&apt))?;
    let deb = std::fs::read_dir(&apt)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("docker.io_") && n.ends_with(".deb"))
        })
        .context("apt-get download docker.io left no .deb")?;
    // Unpacked next to its destination, then renamed: an interrupted run
    // leaves no half tree that looks complete.
    let tmp = engines.join("docker.io-trixie.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    std::fs::rename(&tmp, &dest)?;
    let _ = std::fs::remove_file(&deb);
    Ok(dest)
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker must link against the LLVM that nightly rustc itself uses
/// (no system LLVM of that version exists), found in the nightly sysroot.
fn bpf_linker() -> Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", lib.display()))?;
    let dylib = llvm
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let major: String = dylib
        .trim_start_matches("LLVM-")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version of {llvm}");
    }
    let rustflags = format!(
        "-L {0} -l dylib={dylib} -C link-arg=-Wl,-rpath,{0}",
        lib.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")])
        .env("RUSTFLAGS", rustflags))
}
