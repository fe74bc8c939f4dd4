//! Session stickiness: which provider and key a session last used, so its prompt cache (kept
//! per organisation) is not thrown away by moving it.
//!
//! A fixed table of slots, each two atomics: the session's hash packed with the provider and
//! key it sticks to and the config generation they index into, and when it was last used.
//! A session maps to one slot (direct-mapped, like a CPU cache): a collision evicts the older
//! session, memory stays `max_sessions` × 16 bytes whatever clients send, and neither a lookup
//! nor an update takes a lock. An entry idle past the TTL, or from another config generation
//! (indexes change on reload), is a miss.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);

/// Where a session sticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stick {
    pub provider: usize,
    pub key: usize,
}

pub struct SessionTable {
    /// hash (32 bits) | generation (8) | provider (8) | key (16); 0 = empty.
    entries: Box<[AtomicU64]>,
    /// Seconds since the epoch, +1, of the last use.
    used: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl SessionTable {
    pub fn new(slots: usize) -> SessionTable {
        Lazy::force(&EPOCH);
        let slots = slots.max(1);
        SessionTable {
            entries: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            used: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    fn hash(&self, session: &str) -> u64 {
        self.hasher.hash_one(session)
    }

    /// The slot and the tag (upper 32 bits of the entry) of `session`.
    fn place(&self, session: &str) -> (usize, u64) {
        let h = self.hash(session);
        let slot = (h % self.entries.len() as u64) as usize;
        // A zero tag would read as an empty slot.
        let tag = (h >> 32).max(1);
        (slot, tag)
    }

    /// Where `session` sticks, if it was seen within `ttl` under config `generation`.
    pub fn get(&self, session: &str, generation: u64, ttl: Duration) -> Option<Stick> {
        let (slot, tag) = self.place(session);
        let entry = self.entries[slot].load(Relaxed);
        if entry >> 32 != tag || (entry >> 24) & 0xff != generation & 0xff {
            return None;
        }
        let now = seconds(Instant::now());
        if now.saturating_sub(self.used[slot].load(Relaxed)) > ttl.as_secs().max(1) {
            return None;
        }
        Some(Stick {
            provider: ((entry >> 16) & 0xff) as usize,
            key: (entry & 0xffff) as usize,
        })
    }

    /// Remember that `session` now uses `stick` (refreshing its last use).
    pub fn put(&self, session: &str, generation: u64, stick: Stick) {
        if stick.provider > 0xff || stick.key > 0xffff {
            return; // beyond what a slot can say: not sticky
        }
        let (slot, tag) = self.place(session);
        let entry = (tag << 32)
            | ((generation & 0xff) << 24)
            | ((stick.provider as u64) << 16)
            | stick.key as u64;
        if self.entries[slot].load(Relaxed) != entry {
            self.entries[slot].store(entry, Relaxed);
        }
        self.used[slot].store(seconds(Instant::now()), Relaxed);
    }
}

fn seconds(now: Instant) -> u64 {
    now.saturating_duration_since(*EPOCH).as_secs() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_sticks_until_another_generation() {
        let t = SessionTable::new(1024);
        let ttl = Duration::from_secs(60);
        assert_eq!(t.get("s1", 1, ttl), None);
        let stick = Stick {
            provider: 2,
            key: 7,
        };
        t.put("s1", 1, stick);
        assert_eq!(t.get("s1", 1, ttl), Some(stick));
        assert_eq!(t.get("s2", 1, ttl), None);
        assert_eq!(t.get("s1", 2, ttl), None, "indexes of another config");
    }

    #[test]
    fn memory_is_fixed_whatever_the_number_of_sessions() {
        let t = SessionTable::new(64);
        let ttl = Duration::from_secs(60);
        for i in 0..10_000 {
            t.put(
                &format!("session-{i}"),
                1,
                Stick {
                    provider: 0,
                    key: i % 3,
                },
            );
        }
        assert_eq!(t.slots(), 64);
        // The latest sessions are found (a collision evicts the older one).
        assert!(t.get("session-9999", 1, ttl).is_some());
    }
}
