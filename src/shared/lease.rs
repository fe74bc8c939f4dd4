//! A reservation's hold on the store's budget, and the operations that reach the store after
//! the request path has moved on.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::pool::{Lease, Settlement};

use super::link::{figure, Settle};
use super::{KeyNames, Store};

/// An operation for the background task, off the request path.
pub enum Op {
    /// A reservation ended off a worker thread (which has no line to the store of its own).
    Settle(Settle),
    /// A cooldown (and the figures that came with it), at once (see `Store::learn`).
    Learn {
        names: Arc<KeyNames>,
        limits: [u64; 3],
        remaining: [Option<u64>; 3],
        bench: Duration,
    },
}

/// `remaining` not reported.
const UNKNOWN: u64 = u64::MAX;

/// Tied to the local reservation the store admitted: ends the store's reservation the same way
/// the local one ends (settled, released, or dropped by a cancelled request).
pub struct SharedLease {
    store: Arc<Store>,
    names: Arc<KeyNames>,
    /// The reservation's number (its member in the key's in-flight set names it).
    seq: u64,
    /// What the store charged for it.
    charged: [u64; 3],
    limits: [u64; 3],
    remaining: [AtomicU64; 3],
}

impl SharedLease {
    pub fn new(
        store: Arc<Store>,
        names: Arc<KeyNames>,
        seq: u64,
        charged: [u64; 3],
        limits: [u64; 3],
    ) -> SharedLease {
        SharedLease {
            store,
            names,
            seq,
            charged,
            limits,
            remaining: [const { AtomicU64::new(UNKNOWN) }; 3],
        }
    }
}

impl Lease for SharedLease {
    fn end(self: Box<Self>, used: Option<Settlement>) {
        let SharedLease {
            store,
            names,
            seq,
            charged,
            limits,
            remaining,
        } = *self;
        let remaining = remaining.map(|r| figure(Some(r.into_inner()).filter(|&r| r != UNKNOWN)));
        store.settle(Settle {
            names,
            seq,
            limits,
            charged,
            used,
            remaining,
        });
    }

    fn note_remaining(&self, remaining: [Option<u64>; 3]) {
        for (slot, r) in self.remaining.iter().zip(remaining) {
            slot.store(r.unwrap_or(UNKNOWN).min(UNKNOWN - 1), Relaxed);
        }
    }
}
