//! Read-only admission: can the pool take a request now, without reserving anything.
//!
//! The proxy asks this before it opens an upstream connection (so a request the pool cannot
//! serve is answered 429 without touching the upstream) and before it turns a failed attempt
//! into a retry (so a retry is only made when another key can take it).

use std::time::Instant;

use super::clock::ns;
use super::select::KeyPool;
use super::{Demand, Exhausted};

impl KeyPool {
    /// `Ok` when some key outside `tried` could admit `demand` now; otherwise how long until
    /// one could.
    pub fn check(&self, demand: &Demand, tried: &[usize]) -> Result<(), Exhausted> {
        self.check_at(demand, tried, Instant::now())
    }

    pub fn check_at(
        &self,
        demand: &Demand,
        tried: &[usize],
        now: Instant,
    ) -> Result<(), Exhausted> {
        let now_ns = ns(now);
        let admissible = self
            .keys_with_core()
            .enumerate()
            .any(|(i, core)| !tried.contains(&i) && core.probe(demand, now_ns).is_some());
        if admissible {
            Ok(())
        } else {
            Err(self.exhausted(demand, now_ns))
        }
    }
}
