//! Verifying the programs on every CPU at once.
//!
//! A namespace's first `up` spends most of its time in the kernel's
//! verifier (`BPF_PROG_LOAD`), program after program: about 0.35 s of CPU
//! here (2 to 4 s before the datapath's global functions, see the README),
//! the most of it the sweeper and the uplink's two programs (50,533,
//! 48,193 and 44,445 instructions processed, the kernel's
//! `verified_insns`), then a container port's ingress (32,302; 93,375
//! before IPv6 prefix tests went branch-light). The programs are independent of each other,
//! and a privileged load holds no global verifier lock (only unprivileged
//! loads take `bpf_verifier_lock`), so they are loaded on as many threads
//! as there are CPUs, each taking the next program from a shared queue.
//! What is loaded is the same; only the order of the `BPF_PROG_LOAD` calls
//! changes. Each program's time is logged at debug level (`-v`).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::Program;

/// Loads (verifies) the programs of `ebpf` named in `names`, in parallel,
/// starting in the order of `names`.
/// The first failure is returned (the other threads finish the program
/// they are on and stop). Returns each program's verification time, in
/// the order they finished.
pub fn verify(ebpf: &mut aya::Ebpf, names: &[&str]) -> Result<Vec<(String, Duration)>> {
    let mut queue: Vec<(String, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(n, _)| names.contains(n))
        .map(|(n, p)| (n.to_owned(), p))
        .collect();
    if let Some(missing) = names.iter().find(|n| !queue.iter().any(|(q, _)| q == *n)) {
        return Err(anyhow!("program {missing} missing from the object"));
    }
    // Loaded in the order of `names` (popped from the back): callers list
    // the slowest first, so that no long one starts last.
    queue.sort_by_key(|(n, _)| std::cmp::Reverse(names.iter().position(|x| x == n)));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(queue.len())
        .max(1);
    let queue = Mutex::new(queue);
    let done = Mutex::new(Vec::new());
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if lock(&failed).is_some() {
                        return;
                    }
                    let Some((name, prog)) = lock(&queue).pop() else {
                        return;
                    };
                    let t = Instant::now();
                    match load(prog).with_context(|| format!("verifying program {name}")) {
                        Ok(()) => {
                            let took = t.elapsed();
                            tracing::debug!(
                                program = name.as_str(),
                                ms = took.as_secs_f64() * 1e3,
                                "verified"
                            );
                            lock(&done).push((name, took));
                        }
                        Err(e) => {
                            lock(&failed).get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = lock(&failed).take() {
        return Err(e);
    }
    Ok(std::mem::take(&mut *lock(&done)))
}

/// A poisoned lock only means another loader thread panicked: its queue
/// and results are still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `load()` of the program types netpath has.
fn load(prog: &mut Program) -> Result<()> {
    match prog {
        Program::SchedClassifier(p) => p.load()?,
        Program::CgroupSockAddr(p) => p.load()?,
        other => return Err(anyhow!("unexpected program type {:?}", other.prog_type())),
    }
    Ok(())
}
