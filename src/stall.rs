//! How long one subscriber has held publishers back, as a measure that partial
//! drains cannot reset. Pure, time passed in.
//!
//! Backpressure lets a connected subscriber whose queue is full hold the
//! publishers' acknowledgements instead of losing QoS 1/2 messages. A subscriber
//! that reads slowly but steadily drains its queue to half again and again; when
//! "stalled" meant "full for `backpressure_timeout` without a break", such a
//! subscriber on `#` held every publisher at its own pace for as long as it
//! liked (an unrelated pair at 205 instead of 9,800 msg/s for 40 s).
//!
//! The meter is a leaky bucket of holding time: it fills at the rate of real time
//! while the subscriber holds publishers back and leaks at `1 / SHARE` of real time
//! always. It is stalled while the bucket holds `budget` (= `backpressure_timeout`)
//! or more. So a subscriber may hold publishers for about `budget` at a stretch,
//! and in the long run for at most a `1 / SHARE` share of the time: publishers
//! keep at least 95 % of their rate whatever one subscriber does.

use std::time::{Duration, Instant};

/// The long-run share of time one subscriber may hold publishers back is
/// `1 / SHARE`.
const SHARE: u32 = 20;

#[derive(Debug, Clone, Copy, Default)]
pub struct StallMeter {
    /// Holding time in the bucket as of `at`.
    level: Duration,
    at: Option<Instant>,
    /// Holding publishers back since `at`.
    holding: bool,
}

impl StallMeter {
    /// The bucket's level at `now`.
    fn level_at(&self, now: Instant) -> Duration {
        let Some(at) = self.at else {
            return Duration::ZERO;
        };
        let dt = now.saturating_duration_since(at);
        let filled = if self.holding {
            self.level + dt
        } else {
            self.level
        };
        filled.saturating_sub(dt / SHARE)
    }

    fn settle(&mut self, now: Instant) {
        self.level = self.level_at(now);
        self.at = Some(now);
    }

    pub fn is_holding(&self) -> bool {
        self.holding
    }

    /// Publishers are held back from `now` on (no change if they already are).
    pub fn start(&mut self, now: Instant) {
        if !self.holding {
            self.settle(now);
            self.holding = true;
        }
    }

    /// Nobody is held back any more.
    pub fn stop(&mut self, now: Instant) {
        if self.holding {
            self.settle(now);
            self.holding = false;
        }
    }

    /// Has this subscriber used up its holding time?
    pub fn stalled(&self, now: Instant, budget: Duration) -> bool {
        self.level_at(now) >= budget
    }

    /// While holding: when the bucket will reach `budget` (so the router can
    /// release the publishers then).
    pub fn stalls_at(&self, now: Instant, budget: Duration) -> Option<Instant> {
        if !self.holding {
            return None;
        }
        let left = budget.saturating_sub(self.level_at(now));
        // Net fill rate while holding: 1 - 1/SHARE.
        Some(now + left * SHARE / (SHARE - 1))
    }
}

/// A `StallMeter` made when its subscriber first holds publishers back:
/// most subscribers never do, and every client record would carry the
/// 40-byte meter (8 bytes here). Kept once made: the bucket leaks with time.
#[derive(Debug, Default)]
pub struct LazyStall(Option<Box<StallMeter>>);

impl LazyStall {
    /// Never made: this client never held anyone back.
    pub fn is_unmade(&self) -> bool {
        self.0.is_none()
    }

    pub fn is_holding(&self) -> bool {
        self.0.as_ref().is_some_and(|m| m.is_holding())
    }

    pub fn start(&mut self, now: Instant) {
        self.0.get_or_insert_with(Default::default).start(now);
    }

    pub fn stop(&mut self, now: Instant) {
        if let Some(m) = &mut self.0 {
            m.stop(now);
        }
    }

    pub fn stalled(&self, now: Instant, budget: Duration) -> bool {
        // Never held back: an empty bucket (stalled only at a zero budget).
        self.0
            .as_ref()
            .map_or(budget.is_zero(), |m| m.stalled(now, budget))
    }

    pub fn stalls_at(&self, now: Instant, budget: Duration) -> Option<Instant> {
        self.0.as_ref().and_then(|m| m.stalls_at(now, budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_steady_stretch_stalls_after_about_the_budget() {
        let t0 = Instant::now();
        let mut m = StallMeter::default();
        m.start(t0);
        let at = m.stalls_at(t0, T).unwrap();
        assert!(at > t0 + T && at < t0 + T + Duration::from_secs(2));
        assert!(!m.stalled(at - Duration::from_millis(10), T));
        assert!(m.stalled(at, T));
    }

    /// The bug: draining to half before the timeout reset the old check. Here
    /// the time held adds up across breaks.
    #[test]
    fn partial_drains_do_not_reset_it() {
        let t0 = Instant::now();
        let mut m = StallMeter::default();
        let mut now = t0;
        let mut stalled_after = None;
        // Full for 4 s, half-drained for 1 s, again and again.
        for round in 0..20 {
            m.start(now);
            now += Duration::from_secs(4);
            if m.stalled(now, T) {
                stalled_after = Some(round);
                break;
            }
            m.stop(now);
            now += Duration::from_secs(1);
        }
        assert_eq!(
            stalled_after,
            Some(2),
            "stalled in the third stretch: 12 s held of 14 s"
        );
    }

    /// In the long run a stalled subscriber may hold at most 1/SHARE of the time:
    /// it becomes unstalled once the bucket leaks below the budget.
    #[test]
    fn long_run_share_is_bounded() {
        let t0 = Instant::now();
        let mut m = StallMeter::default();
        let step = Duration::from_millis(100);
        let mut held = Duration::ZERO;
        let mut now = t0;
        for _ in 0..6000 {
            // The subscriber would hold all the time; the router lets it only
            // while it is not stalled.
            if m.stalled(now, T) {
                m.stop(now);
            } else {
                m.start(now);
                held += step;
            }
            now += step;
        }
        let total = now - t0;
        // 600 s: at most the budget plus 1/SHARE of the time, and some holding.
        assert!(
            held <= T + total / SHARE + step * 2,
            "held {held:?} of {total:?}"
        );
        assert!(held >= total / SHARE - T, "held {held:?} of {total:?}");
    }
}
