//! Deadlines: an ordered map of `(Instant, seq) -> key` with cancel by key. Pure:
//! the caller says what time it is.
//!
//! The router keeps one for delayed wills, session expiry, backpressure
//! timeouts and retained-message wake-ups; queue ack timeouts, retry delays and
//! bridge reconnects use the same shape. Several deadlines may share an instant
//! (`seq` keeps them apart and fires them in the order they were set) and a key
//! may have several. A key's deadlines are found without a scan, so a client that
//! reconnects often does not grow the map: its old deadlines go when it comes
//! back.

use crate::hash::Map;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::Instant;

pub struct Deadlines<K> {
    by_time: BTreeMap<(Instant, u64), K>,
    /// Each key's entries in `by_time`, for `cancel`.
    by_key: Map<K, Vec<(Instant, u64)>>,
    seq: u64,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            by_time: BTreeMap::new(),
            by_key: Map::default(),
            seq: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> Deadlines<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wake `key` at `at` (in addition to its other deadlines).
    pub fn schedule(&mut self, at: Instant, key: K) {
        self.seq += 1;
        let entry = (at, self.seq);
        self.by_key.entry(key.clone()).or_default().push(entry);
        self.by_time.insert(entry, key);
    }

    /// Remove every deadline of `key`; returns how many there were.
    pub fn cancel(&mut self, key: &K) -> usize {
        let Some(entries) = self.by_key.remove(key) else {
            return 0;
        };
        for e in &entries {
            self.by_time.remove(e);
        }
        entries.len()
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.keys().next().map(|(t, _)| *t)
    }

    /// Take the earliest deadline that is due at `now`, and return its key.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let entry = self.by_time.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let (at, key) = entry.remove_entry();
        if let Some(entries) = self.by_key.get_mut(&key) {
            entries.retain(|e| *e != at);
            if entries.is_empty() {
                self.by_key.remove(&key);
            }
        }
        Some(key)
    }

    /// Deadlines set for `key`.
    pub fn count(&self, key: &K) -> usize {
        self.by_key.get(key).map_or(0, Vec::len)
    }

    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn due_deadlines_come_out_in_time_order_then_in_order_set() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        d.schedule(secs(t0, 5), "b");
        d.schedule(secs(t0, 1), "a");
        d.schedule(secs(t0, 5), "c");
        assert_eq!(d.next(), Some(secs(t0, 1)));
        assert_eq!(d.pop_due(t0), None, "nothing due yet");
        assert_eq!(d.pop_due(secs(t0, 4)), Some("a"));
        assert_eq!(d.pop_due(secs(t0, 4)), None);
        assert_eq!(d.pop_due(secs(t0, 5)), Some("b"));
        assert_eq!(d.pop_due(secs(t0, 5)), Some("c"));
        assert!(d.is_empty());
        assert_eq!(d.next(), None);
        assert_eq!(d.count(&"a"), 0, "a fired key keeps no index entry");
    }

    #[test]
    fn cancel_removes_every_deadline_of_a_key_and_only_those() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        d.schedule(secs(t0, 1), 1u32);
        d.schedule(secs(t0, 2), 2);
        d.schedule(secs(t0, 3), 1);
        assert_eq!(d.count(&1), 2);
        assert_eq!(d.cancel(&1), 2);
        assert_eq!(d.cancel(&1), 0);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(secs(t0, 10)), Some(2));
        assert!(d.is_empty());
    }

    #[test]
    fn a_key_rescheduled_many_times_and_cancelled_leaves_nothing() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        for i in 0..1_000 {
            d.schedule(secs(t0, i), "k");
            if i % 10 == 0 {
                d.cancel(&"k");
            }
        }
        d.cancel(&"k");
        assert!(d.is_empty());
        assert!(d.by_key.is_empty());
    }
}
