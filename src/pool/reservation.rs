//! A request's hold on one key's budget, from admission until the response ends.

use std::sync::Arc;
use std::time::Instant;

use super::bucket::Charge;
use super::clock::ns;
use super::key::{KeyState, INPUT, OUTPUT};
use super::Settlement;

/// A hold on the same budget kept outside this process (the shared store of `shared_state`),
/// which has to hear how the reservation ended. The pool stays free of I/O: ending a lease only
/// hands it over (to a queue), it never waits.
pub trait Lease: Send + Sync {
    /// `used`: what the request really cost; `None`: it never got a real answer (released).
    fn end(self: Box<Self>, used: Option<Settlement>);

    /// What the response's rate-limit headers said the key has left (requests, input, output;
    /// `None`: not reported), to go with the end.
    fn note_remaining(&self, _remaining: [Option<u64>; 3]) {}
}

/// Holds an `Arc<KeyState>`, so settling still reaches the key's budget after a reload swapped
/// the pool. Dropping it unsettled gives everything back, like [`Reservation::release`], so a
/// panic or a cancelled request cannot leak budget.
pub struct Reservation {
    key: Arc<KeyState>,
    index: usize,
    charges: [Charge; 3],
    done: bool,
    lease: Option<Box<dyn Lease>>,
}

impl Reservation {
    pub(crate) fn new(key: Arc<KeyState>, index: usize, charges: [Charge; 3]) -> Reservation {
        Reservation {
            key,
            index,
            charges,
            done: false,
            lease: None,
        }
    }

    /// Tie a hold kept elsewhere to this reservation: it ends when this one does, the same way
    /// (settled, released or dropped).
    pub fn attach_lease(&mut self, lease: Box<dyn Lease>) {
        self.lease = Some(lease);
    }

    /// The hold kept elsewhere tied to this reservation, if any.
    pub fn lease(&self) -> Option<&dyn Lease> {
        self.lease.as_deref()
    }

    /// The key's index in the pool it was acquired from (what `tried` takes).
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn key(&self) -> &Arc<KeyState> {
        &self.key
    }

    /// Tokens this reservation holds against the key's budgets (0 for a dimension whose limit
    /// was unknown at admission).
    pub fn reserved(&self) -> Settlement {
        Settlement {
            input_tokens: self.charges[INPUT].tokens,
            output_tokens: self.charges[OUTPUT].tokens,
        }
    }

    /// The response ended: correct the reservation to the real usage (refund or charge the
    /// difference) and feed the output estimate. Also counts as a success that ends backoff.
    pub fn settle(self, usage: Settlement) {
        self.settle_at(usage, Instant::now());
    }

    pub fn settle_at(mut self, usage: Settlement, now: Instant) {
        self.done = true;
        self.key.core.settle(&self.charges, usage, ns(now));
        if let Some(lease) = self.lease.take() {
            lease.end(Some(usage));
        }
    }

    /// The request never got a real answer from the upstream (connect error, 429, 5xx): give
    /// everything back, the request included.
    pub fn release(mut self) {
        self.done = true;
        self.key.core.release(&self.charges);
        if let Some(lease) = self.lease.take() {
            lease.end(None);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.key.core.release(&self.charges);
        }
        if let Some(lease) = self.lease.take() {
            lease.end(None);
        }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key.id())
            .field("index", &self.index)
            .field("reserved", &self.reserved())
            .finish()
    }
}
