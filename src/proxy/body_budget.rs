//! The memory buffered request bodies may hold: all together (`server.max_buffered_body_bytes`)
//! and those of one client address (`server.max_buffered_body_bytes_per_address`). The relay
//! buffers each body whole (to replay it on another key), so without a bound 40 clients sending
//! 32 MiB bodies at once pin more than a gigabyte, and without a share per address two clients
//! declaring large bodies can hold the whole budget and have everyone else refused. A request
//! takes its share before reading (its declared length, or chunk by chunk when it declares
//! none) and gives it back when it ends; one that would go over gets 503 `overloaded_error` at
//! once. Atomic counters, no lock.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Bytes held by all requests' bodies now.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many per-address counters there are. Addresses are hashed onto them; two addresses that
/// land on one slot share its limit (conservative: never more than the limit per address, at
/// worst less for the unlucky pair). 4,096 slots are 32 KiB.
const SLOTS: usize = 4096;

/// Bytes held by the bodies of the addresses hashed onto each slot.
static BY_ADDRESS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

/// Keyed per process, so a client cannot pick addresses that collide with another's slot.
fn hasher() -> &'static RandomState {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new)
}

/// The slot of `ip`. An IPv6 client is its /64 (what one host or one subscriber is usually
/// given), so it cannot spread its bodies over addresses of its own prefix.
fn slot_of(ip: IpAddr) -> usize {
    let key: u128 = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 127,
    };
    (hasher().hash_one(key) % SLOTS as u64) as usize
}

/// Bytes held by all buffered request bodies now.
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// What bodies may hold: all of them, and those of one address.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub all: usize,
    pub per_address: usize,
}

/// Which limit refused a share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    All,
    Address,
}

/// One request's share of the budget, given back on drop: the bytes held in the low 48 bits,
/// the client address's slot + 1 in the high 16 (0: no address, a Unix socket, which counts
/// only against the global cap). One word, so the request context does not grow.
#[derive(Debug, Default)]
pub struct BodyBudget {
    packed: u64,
}

const HELD_MASK: u64 = (1 << 48) - 1;

/// Add `more` to `counter` if it stays within `cap`.
fn add_within(counter: &AtomicUsize, more: usize, cap: usize) -> bool {
    let mut now = counter.load(Ordering::Relaxed);
    loop {
        let Some(after) = now.checked_add(more).filter(|&a| a <= cap) else {
            return false;
        };
        match counter.compare_exchange_weak(now, after, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(current) => now = current,
        }
    }
}

impl BodyBudget {
    /// An empty share for a request from `ip`.
    pub fn new(ip: Option<IpAddr>) -> BodyBudget {
        BodyBudget {
            packed: ip.map_or(0, |ip| (slot_of(ip) as u64 + 1) << 48),
        }
    }

    /// The client address's slot.
    fn slot(&self) -> Option<usize> {
        match self.packed >> 48 {
            0 => None,
            s => Some(s as usize - 1),
        }
    }

    /// Take `more` bytes if the address's bodies and all bodies together stay within `caps`;
    /// otherwise nothing is taken and the limit that refused is said.
    pub fn take(&mut self, more: usize, caps: Caps) -> Result<(), Refused> {
        // 256 TiB: never reached by a real cap, refused rather than overflowing the packing.
        if (self.bytes() as u64).saturating_add(more as u64) > HELD_MASK {
            return Err(Refused::All);
        }
        let slot = self.slot().map(|i| &BY_ADDRESS[i]);
        if let Some(slot) = slot {
            if !add_within(slot, more, caps.per_address) {
                return Err(Refused::Address);
            }
        }
        if !add_within(&HELD, more, caps.all) {
            if let Some(slot) = slot {
                slot.fetch_sub(more, Ordering::AcqRel);
            }
            return Err(Refused::All);
        }
        self.packed += more as u64;
        Ok(())
    }

    /// What this request holds.
    pub fn bytes(&self) -> usize {
        (self.packed & HELD_MASK) as usize
    }
}

impl Drop for BodyBudget {
    fn drop(&mut self) {
        let held = self.bytes();
        if held > 0 {
            if let Some(i) = self.slot() {
                BY_ADDRESS[i].fetch_sub(held, Ordering::AcqRel);
            }
            HELD.fetch_sub(held, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    // One test touches the process-wide counters, so the others in this binary cannot race it.
    #[test]
    fn shares_are_taken_within_both_caps_and_given_back() {
        // Measure relative to now anyway.
        let base = held();
        let caps = Caps {
            all: base + 100,
            per_address: 100,
        };
        let mut a = BodyBudget::default();
        let mut b = BodyBudget::default();
        assert_eq!(a.take(60, caps), Ok(()));
        assert_eq!(b.take(50, caps), Err(Refused::All));
        assert_eq!(b.bytes(), 0);
        assert_eq!(b.take(40, caps), Ok(()));
        assert_eq!(a.take(1, caps), Err(Refused::All));
        drop(a);
        assert_eq!(held(), base + 40);
        drop(b);
        assert_eq!(held(), base);

        // One address holds at most its share; another address still gets the rest.
        let caps = Caps {
            all: base + 100,
            per_address: 60,
        };
        let (one, other) = distinct_slots();
        let mut a = BodyBudget::new(one);
        let mut a2 = BodyBudget::new(one);
        let mut b = BodyBudget::new(other);
        assert_eq!(a.take(50, caps), Ok(()));
        assert_eq!(a2.take(11, caps), Err(Refused::Address));
        assert_eq!(a2.take(10, caps), Ok(()));
        assert_eq!(b.take(41, caps), Err(Refused::All));
        // Refused by the global cap: the address's slot got its bytes back.
        assert_eq!(BY_ADDRESS[b.slot().unwrap()].load(Ordering::Relaxed), 0);
        assert_eq!(b.take(40, caps), Ok(()));
        // a goes: its address's share comes back.
        drop(a);
        assert_eq!(a2.take(51, caps), Err(Refused::Address));
        assert_eq!(a2.take(50, caps), Ok(()));
        assert_eq!(a2.bytes(), 60);
        assert_eq!(held(), base + 100);
        drop((a2, b));
        assert_eq!(held(), base);
        assert_eq!(BY_ADDRESS[slot_of(one.unwrap())].load(Ordering::Relaxed), 0);
    }

    /// Two addresses on different slots (the hash is keyed per process).
    fn distinct_slots() -> (Option<IpAddr>, Option<IpAddr>) {
        let one = addr("192.0.2.1");
        let other = (2..=255)
            .map(|i| addr(&format!("192.0.2.{i}")))
            .find(|o| slot_of(o.unwrap()) != slot_of(one.unwrap()))
            .unwrap();
        (one, other)
    }

    #[test]
    fn an_ipv6_prefix_is_one_address() {
        let a = slot_of("2001:db8:1:2::1".parse().unwrap());
        assert_eq!(a, slot_of("2001:db8:1:2:ffff::9".parse().unwrap()));
        let v4 = slot_of("10.0.0.1".parse().unwrap());
        assert_eq!(v4, slot_of("10.0.0.1".parse().unwrap()));
    }
}
