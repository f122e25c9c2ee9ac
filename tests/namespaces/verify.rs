//! Which interfaces a reconcile asks about (`reconcile::Verify`): `up` of
//! one network asks its own network and what changed, and leaves the
//! others to the daemon of its build, which repairs a filter replaced in
//! netpath's place (no deletion, only a filter event); without a daemon
//! watching, every `up` asks every interface.

use std::time::{Duration, Instant};

use crate::harness;

use harness::{Lab, lab_up, lab_up_with, netpath_ok, status, tc_programs};

/// Replaces netpath's ingress filter on c1h with a pass-everything classic
/// BPF filter at the same priority and handle, as another tool's
/// `tc filter replace` would: the kernel sends a filter event, no deletion.
fn replace_c1h_ingress(lab: &Lab) {
    tc(
        lab,
        &[
            "replace",
            "dev",
            "c1h",
            "ingress",
            "protocol",
            "all",
            "prio",
            "1",
            "handle",
            "0x6e70",
            "bpf",
            "bytecode",
            "1,6 0 0 4294967295,",
        ],
    );
    assert!(!runs_netpath(lab), "test setup: c1h's filter replaced");
}

/// `tc filter ARGS` in the host namespace, which must succeed.
fn tc(lab: &Lab, args: &[&str]) {
    let out = lab
        .host
        .command("tc")
        .arg("filter")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tc filter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether c1h's ingress runs netpath's port program, and nothing else.
fn runs_netpath(lab: &Lab) -> bool {
    let progs = tc_programs(&lab.host, "c1h", true);
    progs.len() == 1 && progs[0].1 == "netpath_port_in"
}

fn up(lab: &Lab, bridge: &str, subnet: &str, extra: &[&str]) -> String {
    let mut args = vec!["up", "--bridge", bridge, "--subnet", subnet];
    args.extend_from_slice(extra);
    netpath_ok(&lab.host, &args)
}

fn signal(pid: i64, sig: i32) {
    // SAFETY: signalling the daemon this test's `up` started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

#[test]
fn a_replaced_filter_is_repaired_by_the_daemon_and_other_networks_are_left_to_it() {
    require_root!();
    let lab = lab_up();
    // Settled: the daemon's first re-apply is done.
    std::thread::sleep(Duration::from_millis(500));
    replace_c1h_ingress(&lab);
    let t = Instant::now();
    while !runs_netpath(&lab) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the daemon did not put netpath's filter back on c1h: {:?}",
            tc_programs(&lab.host, "c1h", true)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // With the daemon held (SIGSTOP), another network's `up` leaves c1h
    // to it: not asked, still replaced. Let go, the daemon repairs it.
    let pid = status(&lab.host)["daemon"]["pid"]
        .as_i64()
        .expect("a daemon runs");
    signal(pid, libc::SIGSTOP);
    replace_c1h_ingress(&lab);
    let out = up(&lab, "br-other", "10.61.0.0/24", &[]);
    let held = runs_netpath(&lab);
    signal(pid, libc::SIGCONT);
    assert!(!out.contains("c1h"), "{out}");
    assert!(out.contains("br-other: bridge, ingress attached"), "{out}");
    assert!(!held, "c1h was asked about by another network's up");
    let t = Instant::now();
    while !runs_netpath(&lab) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the daemon did not repair c1h after SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The network's own `up` asks its bridge and ports.
    signal(pid, libc::SIGSTOP);
    replace_c1h_ingress(&lab);
    let out = up(&lab, Lab::BRIDGE, Lab::SUBNET, &[]);
    let repaired = runs_netpath(&lab);
    signal(pid, libc::SIGCONT);
    assert!(
        out.contains("c1h: port, ingress replaced by this build"),
        "{out}"
    );
    assert!(repaired);
}

#[test]
fn without_a_daemon_every_up_asks_every_interface() {
    require_root!();
    let lab = lab_up_with(Lab::new(harness::NETPATH).unwrap(), &["--no-daemon"]);
    replace_c1h_ingress(&lab);
    let out = up(&lab, "br-other", "10.61.0.0/24", &["--no-daemon"]);
    assert!(
        out.contains("c1h: port, ingress replaced by this build"),
        "{out}"
    );
    assert!(runs_netpath(&lab));
    // A deleted filter too, from the next network's `up`.
    tc(
        &lab,
        &[
            "del", "dev", "c1h", "ingress", "protocol", "all", "prio", "1", "handle", "0x6e70",
            "bpf",
        ],
    );
    let out = up(&lab, "br-third", "10.62.0.0/24", &["--no-daemon"]);
    assert!(out.contains("c1h: port, ingress attached"), "{out}");
    assert!(runs_netpath(&lab));
}

/// Whoever asks whether a daemon runs takes its pid file's lock for a
/// moment when the lock is free (`up` polls that way, every 2 ms, for the
/// daemon it started): a daemon starting in that moment waits for the
/// lock rather than taking it for another daemon's and exiting (CI saw
/// `up` fail with "did not start").
#[test]
fn a_daemon_starting_while_its_lock_is_tested_still_starts() {
    require_root!();
    let lab = lab_up_with(Lab::new(harness::NETPATH).unwrap(), &["--no-daemon"]);
    let path = lab
        .host
        .run(|| netpath::watcher::pid_path(netpath::netns::cookie().unwrap()))
        .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let pidfile = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    // Held for 100 ms from before the daemon starts: longer than a
    // poller holds it, shorter than the daemon's patience.
    pidfile.try_lock().unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        pidfile.unlock().unwrap();
    });
    let mut daemon = lab
        .host
        .netpath(harness::NETPATH)
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    holder.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let alive = daemon.try_wait().unwrap().is_none();
    let seen = status(&lab.host)["daemon"]["pid"].as_i64();
    // Stopped by its pid (the test started it), reaped.
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(alive, "the daemon gave up on a lock held for 100 ms");
    assert_eq!(seen, Some(i64::from(daemon.id())));
}
