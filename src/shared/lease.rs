//! A reservation's hold on the store's budget, and the operations that reach the store after
//! the request path has moved on.

use std::sync::Arc;
use std::time::Duration;

use crate::pool::{Lease, Settlement};

use super::{KeyNames, Store};

/// An operation for the store, run by the worker off the request path.
pub enum Op {
    /// A reservation ended: `used` is the real usage, `None` gave it all back.
    Settle {
        names: Arc<KeyNames>,
        member: String,
        limits: [u64; 3],
        used: Option<Settlement>,
    },
    /// What a response said about the key (see `Store::learn`).
    Learn {
        names: Arc<KeyNames>,
        limits: [u64; 3],
        remaining: [Option<u64>; 3],
        bench: Duration,
    },
}

/// Tied to the local reservation the store admitted: ends the store's reservation the same way
/// the local one ends (settled, released, or dropped by a cancelled request).
pub struct SharedLease {
    store: Arc<Store>,
    names: Arc<KeyNames>,
    /// The reservation's member in the key's in-flight set: its id and what it charged.
    member: String,
    limits: [u64; 3],
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
        } = *self;
        store.send(Op::Settle {
            names,
            member,
            limits,
            used,
        });
    }
}
