//! A reservation's hold on the store's budget, and the operations that reach the store after
//! the request path has moved on.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::pool::{Lease, Settlement};

use super::{KeyNames, Store};

/// An operation for the store, run by the worker off the request path.
pub enum Op {
    /// A reservation ended: `used` is the real usage, `None` gave it all back; `remaining` is
    /// what the response's rate-limit headers said the key has left.
    Settle {
        names: Arc<KeyNames>,
        member: String,
        limits: [u64; 3],
        used: Option<Settlement>,
        remaining: [Option<u64>; 3],
    },
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
    /// The reservation's member in the key's in-flight set: its id and what it charged.
    member: String,
    limits: [u64; 3],
    remaining: [AtomicU64; 3],
}

impl SharedLease {
    pub fn new(
        store: Arc<Store>,
        names: Arc<KeyNames>,
        member: String,
        limits: [u64; 3],
    ) -> SharedLease {
        SharedLease {
            store,
            names,
            member,
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
            member,
            limits,
            remaining,
        } = *self;
        let remaining = remaining.map(|r| Some(r.into_inner()).filter(|&r| r != UNKNOWN));
        store.send(Op::Settle {
            names,
            member,
            limits,
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
