//! A client's token budgets per UTC day and per UTC month (`daily_token_budget`,
//! `monthly_token_budget`).
//!
//! Each period's usage is one atomic holding the period's number and the tokens used in it
//! (period in the top 24 bits, tokens in the low 40: a trillion tokens), so a request's usage
//! is added with one compare-and-swap that also starts a new period when the old one ended, and
//! no lock. What was added since the state file last took it is kept the same way, for the
//! store (`store.rs`) to add to the file: several processes (an upgrade's old and new, or
//! relays sharing the file) then add up instead of overwriting each other.
//!
//! A budget is checked when a request arrives and its tokens counted when it ends, so requests
//! in flight together may pass it by what they use.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use time::{Date, Month, OffsetDateTime};

const TOKEN_BITS: u32 = 40;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;

/// Which budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub const BOTH: [Period; 2] = [Period::Day, Period::Month];

    /// The config field, as the 429 names it.
    pub fn field(self) -> &'static str {
        match self {
            Period::Day => "daily_token_budget",
            Period::Month => "monthly_token_budget",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// Where a moment falls: its day and month numbers, and when each ends (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    /// The moment, in seconds after the Unix epoch.
    pub now: u64,
    pub day: u64,
    pub month: u64,
    pub day_ends: u64,
    pub month_ends: u64,
}

impl Calendar {
    pub fn now() -> Calendar {
        Calendar::at(crate::admin::activity::unix_now().as_secs())
    }

    /// The calendar at `secs` after the Unix epoch (UTC).
    pub fn at(secs: u64) -> Calendar {
        let day = secs / 86_400;
        let date = OffsetDateTime::from_unix_timestamp(secs as i64)
            .map(|t| t.date())
            .unwrap_or(Date::MIN);
        let (year, month) = (date.year(), date.month());
        let next = match month {
            Month::December => Date::from_calendar_date(year + 1, Month::January, 1),
            m => Date::from_calendar_date(year, m.next(), 1),
        };
        let month_ends = next
            .map(|d| d.midnight().assume_utc().unix_timestamp().max(0) as u64)
            .unwrap_or(u64::MAX);
        Calendar {
            now: secs,
            day,
            month: month_number(year, month),
            day_ends: (day + 1) * 86_400,
            month_ends,
        }
    }

    pub fn period(&self, period: Period) -> u64 {
        match period {
            Period::Day => self.day,
            Period::Month => self.month,
        }
    }

    /// When `period` ends, as the time from now, and as the instant (`2026-12-01T00:00:00Z`).
    pub fn reset(&self, period: Period) -> (Duration, String) {
        let ends = match period {
            Period::Day => self.day_ends,
            Period::Month => self.month_ends,
        };
        (
            Duration::from_secs(ends.saturating_sub(self.now)),
            utc(ends),
        )
    }
}

/// Months since January 1970.
fn month_number(year: i32, month: Month) -> u64 {
    (i64::from(year - 1970) * 12 + i64::from(u8::from(month)) - 1).max(0) as u64
}

/// `2026-11` for a month number.
pub fn month_label(month: u64) -> String {
    format!("{:04}-{:02}", 1970 + month / 12, month % 12 + 1)
}

/// The month number of `2026-11`.
pub fn parse_month(label: &str) -> Option<u64> {
    let (y, m) = label.split_once('-')?;
    let (y, m): (i32, u8) = (y.parse().ok()?, m.parse().ok()?);
    Some(month_number(y, Month::try_from(m).ok()?))
}

/// `2026-11-30` for a day number.
pub fn day_label(day: u64) -> String {
    utc(day * 86_400)[..10].to_owned()
}

/// The day number of `2026-11-30`.
pub fn parse_day(label: &str) -> Option<u64> {
    let mut parts = label.splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let d: u8 = parts.next()?.parse().ok()?;
    let date = Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()?;
    let secs = date.midnight().assume_utc().unix_timestamp();
    u64::try_from(secs).ok().map(|s| s / 86_400)
}

/// `2026-12-01T00:00:00Z`.
fn utc(secs: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(secs.min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Tokens used in one period, packed with the period's number.
#[derive(Default)]
struct PeriodCounter(AtomicU64);

fn pack(period: u64, tokens: u64) -> u64 {
    (period << TOKEN_BITS) | tokens.min(TOKEN_MASK)
}

fn unpack(packed: u64) -> (u64, u64) {
    (packed >> TOKEN_BITS, packed & TOKEN_MASK)
}

impl PeriodCounter {
    /// Tokens used in `period` (0 when the counter is still on an older one).
    fn used(&self, period: u64) -> u64 {
        match unpack(self.0.load(Relaxed)) {
            (p, used) if p == period => used,
            _ => 0,
        }
    }

    fn add(&self, period: u64, tokens: u64) {
        // Never fails: the closure always returns Some.
        let _ = self.0.fetch_update(Relaxed, Relaxed, |packed| {
            Some(match unpack(packed) {
                (p, used) if p == period => pack(p, used.saturating_add(tokens)),
                (p, _) if p > period => packed, // a later period already began
                _ => pack(period, tokens),
            })
        });
    }

    /// Take what was counted (its period and tokens), leaving 0 in the same period.
    fn take(&self) -> (u64, u64) {
        let packed = self
            .0
            .fetch_update(Relaxed, Relaxed, |packed| Some(pack(unpack(packed).0, 0)))
            .unwrap_or_default();
        unpack(packed)
    }

    /// Raise the period's total to `tokens` (from the state file): never lower it, and leave
    /// a later period alone.
    fn raise(&self, period: u64, tokens: u64) {
        let _ = self
            .0
            .fetch_update(Relaxed, Relaxed, |packed| match unpack(packed) {
                (p, used) if p == period && used < tokens => Some(pack(period, tokens)),
                (p, _) if p < period => Some(pack(period, tokens)),
                _ => None,
            });
    }

    /// Its period and tokens.
    fn get(&self) -> (u64, u64) {
        unpack(self.0.load(Relaxed))
    }
}

/// One client's usage toward its budgets; shared by every config that has the client.
#[derive(Default)]
pub struct Budget {
    used: [PeriodCounter; 2],
    /// Added since the store last wrote them to the state file.
    unsaved: [PeriodCounter; 2],
}

fn slot(period: Period) -> usize {
    match period {
        Period::Day => 0,
        Period::Month => 1,
    }
}

impl Budget {
    pub fn used(&self, period: Period, calendar: &Calendar) -> u64 {
        self.used[slot(period)].used(calendar.period(period))
    }

    /// Count `tokens` a request used, in the periods of `calendar`.
    pub fn add(&self, tokens: u64, calendar: &Calendar) {
        if tokens == 0 {
            return;
        }
        for period in Period::BOTH {
            let number = calendar.period(period);
            // Unsaved first: what `known` sees in `used` is then already in `unsaved`.
            self.unsaved[slot(period)].add(number, tokens);
            self.used[slot(period)].add(number, tokens);
        }
    }

    /// What was added since the last call: (period number, tokens) per period.
    pub(super) fn take_unsaved(&self, period: Period) -> (u64, u64) {
        self.unsaved[slot(period)].take()
    }

    /// The tokens counted and not taken by a save yet (the larger of its two periods').
    pub(super) fn unsaved(&self) -> u64 {
        Period::BOTH
            .iter()
            .map(|&p| self.unsaved[slot(p)].get().1)
            .max()
            .unwrap_or(0)
    }

    /// What [`Budget::take_unsaved`] gave and could not be saved: to be saved next time.
    pub(super) fn return_unsaved(&self, period: Period, number: u64, tokens: u64) {
        self.unsaved[slot(period)].add(number, tokens);
    }

    /// What this process has seen of its latest period, less what is still unsaved: (period
    /// number, tokens). Called after [`Budget::take_unsaved`], it is what the file must hold at
    /// least once the taken tokens are in it, whatever happened to the file meanwhile.
    pub(super) fn known(&self, period: Period) -> (u64, u64) {
        let (number, used) = self.used[slot(period)].get();
        // Read after `used`: an add counted there is already here (see `add`).
        (
            number,
            used.saturating_sub(self.unsaved[slot(period)].used(number)),
        )
    }

    /// The period's total as the state file has it, plus what was added since it was taken;
    /// never less than what this process already counted (a file replaced or deleted under
    /// it does not make it forget).
    pub(super) fn set_saved(&self, period: Period, number: u64, tokens: u64) {
        let pending = self.unsaved[slot(period)].used(number);
        self.used[slot(period)].raise(number, tokens.saturating_add(pending));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_knows_days_months_and_their_ends() {
        // 2026-11-30T19:54:03Z
        let c = Calendar::at(1_796_068_443);
        assert_eq!(day_label(c.day), "2026-11-30");
        assert_eq!(month_label(c.month), "2026-11");
        assert_eq!(utc(c.day_ends), "2026-12-01T00:00:00Z");
        assert_eq!(utc(c.month_ends), "2026-12-01T00:00:00Z");
        assert_eq!(parse_day("2026-11-30"), Some(c.day));
        assert_eq!(parse_month("2026-11"), Some(c.month));
        let dec = Calendar::at(c.month_ends + 86_400 * 15);
        assert_eq!(utc(dec.month_ends), "2027-01-01T00:00:00Z");
        assert_eq!(parse_day("2026-02-30"), None);
        assert_eq!(parse_month("2026-13"), None);
    }

    #[test]
    fn a_new_period_starts_from_zero() {
        let b = Budget::default();
        let today = Calendar::at(1_796_068_443);
        b.add(100, &today);
        assert_eq!(b.used(Period::Day, &today), 100);
        let tomorrow = Calendar::at(today.day_ends + 10);
        assert_eq!(b.used(Period::Day, &tomorrow), 0);
        assert_eq!(b.used(Period::Month, &tomorrow), 0); // 1 December: a new month too
        b.add(5, &tomorrow);
        assert_eq!(b.used(Period::Day, &tomorrow), 5);
        // A late request of yesterday does not reset today's count.
        b.add(7, &today);
        assert_eq!(b.used(Period::Day, &tomorrow), 5);
    }

    #[test]
    fn saving_adds_what_came_meanwhile() {
        let b = Budget::default();
        let now = Calendar::at(1_796_068_443);
        b.add(10, &now);
        let (period, tokens) = b.take_unsaved(Period::Day);
        assert_eq!((period, tokens), (now.day, 10));
        b.add(3, &now); // while the store writes
        b.set_saved(Period::Day, now.day, 1010); // another process had used 1000
        assert_eq!(b.used(Period::Day, &now), 1013);
        assert_eq!(b.take_unsaved(Period::Day), (now.day, 3));
    }

    #[test]
    fn a_file_that_says_less_does_not_lower_the_count() {
        let b = Budget::default();
        let now = Calendar::at(1_796_068_443);
        b.set_saved(Period::Day, now.day, 150);
        b.add(10, &now);
        assert_eq!(b.take_unsaved(Period::Day), (now.day, 10));
        assert_eq!(b.known(Period::Day), (now.day, 160));
        b.add(5, &now); // not saved yet: not known to the file
        assert_eq!(b.known(Period::Day), (now.day, 160));
        b.set_saved(Period::Day, now.day, 10); // the file was deleted: only the 10 came back
        assert_eq!(b.used(Period::Day, &now), 165);
        // A later period in the file does replace it.
        let tomorrow = Calendar::at(now.day_ends + 1);
        b.set_saved(Period::Day, tomorrow.day, 7);
        assert_eq!(b.used(Period::Day, &tomorrow), 7);
    }
}
