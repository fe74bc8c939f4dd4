//! The least rate a request body must arrive at (`server.min_body_rate_bytes_per_s`). The
//! pause timeout alone (`server.client_body_timeout_ms`) lets a client that sends a byte just
//! under it hold its connection, and its share of the body budget, for as long as it likes:
//! two such clients declaring 1 MiB bodies had every other request refused 503. The first
//! `client_body_timeout` after the header is free (a client may take a moment to start); after
//! it, at time t since the body read started, `received ≥ rate × (t − grace)`.

use std::time::Duration;

/// The rule for one body.
#[derive(Clone, Copy, Debug)]
pub struct MinRate {
    /// Free time before the rate applies.
    pub grace: Duration,
    /// Bytes per second; 0 = no rate.
    pub bytes_per_s: u64,
}

impl MinRate {
    /// When, counted from the start of the body read, `received` bytes fall behind the rate;
    /// `None` when there is no rate.
    pub fn deadline(&self, received: usize) -> Option<Duration> {
        if self.bytes_per_s == 0 {
            return None;
        }
        let nanos = (received as u128).saturating_mul(1_000_000_000) / u128::from(self.bytes_per_s);
        let behind_at = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Some(self.grace.saturating_add(behind_at))
    }

    /// How long the next read may wait, `elapsed` into the body with `received` bytes: the
    /// pause timeout, or less when the rate would be broken sooner (then `true`), so a client
    /// that falls behind is cut at that moment rather than at its next byte.
    pub fn next_wait(
        &self,
        pause: Duration,
        elapsed: Duration,
        received: usize,
    ) -> (Duration, bool) {
        match self.deadline(received) {
            Some(d) if d.saturating_sub(elapsed) < pause => (d.saturating_sub(elapsed), true),
            _ => (pause, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_grace_is_free_then_the_average_rate_applies() {
        let rule = MinRate {
            grace: 2 * S,
            bytes_per_s: 1000,
        };
        assert_eq!(rule.deadline(0), Some(2 * S));
        assert_eq!(rule.deadline(500), Some(2 * S + S / 2));
        assert_eq!(rule.deadline(3000), Some(5 * S));
        // Off.
        let off = MinRate {
            grace: 2 * S,
            bytes_per_s: 0,
        };
        assert_eq!(off.deadline(0), None);
        assert_eq!(off.next_wait(30 * S, 100 * S, 1), (30 * S, false));
        // A huge body never overflows.
        let fast = MinRate {
            grace: S,
            bytes_per_s: 1,
        };
        assert!(fast.deadline(usize::MAX).is_some());
    }

    #[test]
    fn each_wait_ends_at_the_pause_or_when_the_rate_is_broken() {
        let rule = MinRate {
            grace: 2 * S,
            bytes_per_s: 1000,
        };
        // Early on, the pause timeout binds.
        assert_eq!(rule.next_wait(S, Duration::ZERO, 0), (S, false));
        // 10 bytes 1.5 s in: behind at 2.01 s, sooner than the 1 s pause.
        assert_eq!(
            rule.next_wait(S, S + S / 2, 10),
            (S / 2 + Duration::from_millis(10), true)
        );
        // Already behind: no wait at all.
        assert_eq!(rule.next_wait(S, 3 * S, 10), (Duration::ZERO, true));
        // Well ahead: the pause timeout binds again.
        assert_eq!(rule.next_wait(S, 3 * S, 10_000), (S, false));
    }
}
