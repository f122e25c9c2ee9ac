//! `netpath top` in a real terminal: run under tmux at 80×24, the screen
//! read with `capture-pane` shows the networks, interfaces and a published
//! port with live rates while traffic flows, and `q` quits.

use crate::harness;

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use harness::{Lab, NETPATH, lab_up, netpath_ok};

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "top"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[test]
fn top_shows_live_rates_in_80_by_24_and_q_quits() {
    require_root!();
    let lab = lab_up();
    netpath_ok(&lab.host, &["publish", "8080", &format!("{}:80", Lab::C1)]);
    let tmux = Tmux(format!("np-top-{}", std::process::id()));
    let stop = AtomicBool::new(false);
    // Traffic out of c1 while top runs.
    let screen = std::thread::scope(|s| {
        s.spawn(|| {
            let mut port = 7400;
            while !stop.load(Ordering::Relaxed) {
                let _ = lab.tcp_out(&lab.c1, port);
                port += 1;
            }
        });
        let started = tmux
            .cmd()
            .args([
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "24",
                "-s",
                "top",
                NETPATH,
                "--netns",
            ])
            .arg(&lab.host.name)
            .arg("top")
            .status()
            .expect("tmux (cargo xtask setup installs it)");
        assert!(started.success());
        std::thread::sleep(Duration::from_millis(3500));
        let screen = tmux.screen();
        stop.store(true, Ordering::Relaxed);
        screen
    });
    assert_eq!(screen.lines().count(), 24, "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    for want in [
        "netpath top",
        "conntrack",
        "np0",
        "c1h",
        "uplink0",
        "8080/tcp -> 172.30.0.2:80",
        "q quits",
    ] {
        assert!(screen.contains(want), "{want} missing:\n{screen}");
    }
    // The network's row shows packets from its containers.
    let row = screen
        .lines()
        .find(|l| l.trim_start_matches('│').starts_with("np0 "))
        .unwrap_or_else(|| panic!("no np0 row:\n{screen}"));
    let from_pps = row
        .trim_matches('│')
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{row}"));
    assert_ne!(from_pps, "0", "no rate in {row:?}:\n{screen}");
    tmux.cmd()
        .args(["send-keys", "-t", "top", "q"])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while tmux.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tmux.alive(), "q did not quit:\n{}", tmux.screen());
}
