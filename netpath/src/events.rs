//! The event loop pieces the long-running commands (the daemon and
//! `netpath docker`) share: a stop signal, and settling a burst of events
//! into one reaction.

use std::time::Duration;

use anyhow::Result;
use futures::{Stream, StreamExt as _};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT, whichever comes first.
pub struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    pub fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for one; returns its name (for the log).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// After an event, lets the burst it starts end (a veth pair and its
/// addresses, a container's connect and start): takes further items until
/// none comes for `quiet`, or `limit` has passed. Returns how many it took
/// and whether the stream ended.
pub async fn settle<S: Stream + Unpin>(
    stream: &mut S,
    quiet: Duration,
    limit: Duration,
) -> (usize, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut n = 0;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return (n, false);
        }
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (n, true),
            Err(_) => return (n, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_settles_into_one() {
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<u32>();
        for i in 0..5 {
            tx.unbounded_send(i).unwrap();
        }
        let q = Duration::from_millis(20);
        assert_eq!(settle(&mut rx, q, Duration::from_secs(1)).await, (5, false));
        // Nothing more: settles at once after `quiet`.
        assert_eq!(settle(&mut rx, q, Duration::from_secs(1)).await, (0, false));
        drop(tx);
        assert_eq!(settle(&mut rx, q, Duration::from_secs(1)).await, (0, true));
        // An endless stream stops at the limit.
        let mut endless = futures::stream::repeat(1u8);
        let (n, ended) = settle(&mut endless, q, Duration::from_millis(50)).await;
        assert!(n > 0 && !ended);
    }
}
