//! Each listener's connection counts: open now, and TLS handshakes that failed (with their
//! log line, at most once a minute). Written by the listener guard, read by `/status` and the
//! metrics scrape. Atomics only.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::Repeated;

/// One listener's connections.
#[derive(Debug)]
pub struct Connections {
    /// Open now (a TLS connection from its first byte, before its handshake).
    open: AtomicUsize,
    /// TLS handshakes that failed or did not finish in time.
    handshake_failures: AtomicU64,
    handshake_log: Repeated,
}

impl Connections {
    const fn new() -> Connections {
        Connections {
            open: AtomicUsize::new(0),
            handshake_failures: AtomicU64::new(0),
            handshake_log: Repeated::new(Duration::from_secs(60)),
        }
    }

    /// A connection was accepted: how many are open now, it included.
    pub fn opened(&self) -> usize {
        self.open.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A TLS handshake failed: counted; `log` is called when a line is due (with how many
    /// failures went unlogged since the last one).
    pub fn handshake_failed(&self, log: impl FnOnce(u64)) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        self.handshake_log.occurred(log);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }
}

/// The client listener's connections (`/status`, metrics). The admin and metrics listeners
/// count theirs apart, so a flood on one cannot lock the operator out of the other.
pub static CLIENT: Connections = Connections::new();
pub static ADMIN: Connections = Connections::new();
pub static METRICS: Connections = Connections::new();
