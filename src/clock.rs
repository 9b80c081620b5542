//! The time the pure core is given: a monotonic `Instant` and the wall clock read
//! together by a shell (`Clock::read`, the one place that reads both). The router,
//! sessions and the store's record format take a `Clock` or an `Instant` from
//! their caller, so tests drive them with fake time.
//!
//! The wall clock is read again for every turn, never derived from a start-up
//! anchor: a Raspberry Pi without a real-time clock boots with a stale date and
//! jumps when NTP syncs, and stored times (session disconnects, will due times,
//! message receipt) must follow the wall clock of the moment they are written.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall clock and monotonic clock read together, to store `Instant`s as Unix time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub unix_ms: u64,
}

impl Clock {
    /// Read both clocks now (shells only: the pure core is handed a `Clock`).
    pub fn read() -> Clock {
        Clock {
            now: Instant::now(),
            unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// A clock at `now` whose wall clock reads `unix_ms` (fake time in tests,
    /// or an `Instant` of this turn paired with its wall time).
    pub fn at(now: Instant, unix_ms: u64) -> Clock {
        Clock { now, unix_ms }
    }

    /// This clock moved on by `d` on both clocks.
    pub fn after(self, d: Duration) -> Clock {
        Clock {
            now: self.now + d,
            unix_ms: self
                .unix_ms
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// The Unix time in milliseconds of `at` (an `Instant` at or before `now`).
    pub fn to_unix_ms(self, at: Instant) -> u64 {
        let back = self.now.saturating_duration_since(at);
        self.unix_ms
            .saturating_sub(u64::try_from(back.as_millis()).unwrap_or(u64::MAX))
    }

    /// The Unix time in seconds of `at`, before or after `now`.
    pub fn unix_secs_of(&self, at: Instant) -> u64 {
        let now_unix = self.unix_secs();
        if at >= self.now {
            now_unix + (at - self.now).as_secs()
        } else {
            now_unix.saturating_sub((self.now - at).as_secs())
        }
    }

    /// The `Instant` of a Unix time in seconds (clamped to now when in the past
    /// beyond what `Instant` can hold).
    pub fn instant_of_secs(&self, unix_secs: u64) -> Instant {
        let now_s = self.unix_secs();
        if unix_secs >= now_s {
            self.now + Duration::from_secs(unix_secs - now_s)
        } else {
            self.now
                .checked_sub(Duration::from_secs(now_s - unix_secs))
                .unwrap_or(self.now)
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_of_instants_before_and_after_now() {
        let t0 = Instant::now();
        let c = Clock::at(t0 + Duration::from_secs(100), 1_000_000_000_000);
        assert_eq!(c.unix_secs(), 1_000_000_000);
        assert_eq!(c.unix_secs_of(t0 + Duration::from_secs(130)), 1_000_000_030);
        assert_eq!(c.unix_secs_of(t0), 999_999_900);
        assert_eq!(c.to_unix_ms(t0 + Duration::from_secs(99)), 999_999_999_000);
        assert_eq!(
            c.instant_of_secs(1_000_000_030),
            c.now + Duration::from_secs(30)
        );
        assert_eq!(c.instant_of_secs(999_999_900), t0);
        let later = c.after(Duration::from_millis(1_500));
        assert_eq!(later.now, c.now + Duration::from_millis(1_500));
        assert_eq!(later.unix_ms, 1_000_000_001_500);
    }
}
