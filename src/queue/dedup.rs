//! A queue's deduplication window: the `message-id`s it took lately, so a
//! publisher's retry of a message the queue already holds (or held) is
//! acknowledged and not taken twice (SQS FIFO deduplication). Pure.
//!
//! Bounded twice: by time (the window counts from the first sighting and is not
//! extended by a repeat) and by count (past `max_ids` the oldest id is forgotten
//! early). An id is kept as a 128-bit keyed hash, 16 bytes whatever its length;
//! two ids that collide would drop a message, at odds of about 2^-128 per pair,
//! and a peer cannot aim at a collision because the keys are random per process.

use crate::hash::Map;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

pub struct Dedup {
    window: Duration,
    max_ids: usize,
    /// Id -> when it was first seen.
    seen: Map<u128, Instant>,
    /// The same ids in the order they were first seen, to forget them in order.
    order: VecDeque<(Instant, u128)>,
    keys: [foldhash::quality::RandomState; 2],
}

impl Dedup {
    pub fn new(window: Duration, max_ids: usize) -> Dedup {
        Dedup {
            window,
            max_ids: max_ids.max(1),
            seen: Map::default(),
            order: VecDeque::new(),
            keys: Default::default(),
        }
    }

    fn hash(&self, id: &str) -> u128 {
        let [a, b] = &self.keys;
        let (mut h1, mut h2) = (a.build_hasher(), b.build_hasher());
        h1.write(id.as_bytes());
        h2.write(id.as_bytes());
        (u128::from(h1.finish()) << 64) | u128::from(h2.finish())
    }

    /// Was `id` seen within the window before `now`? If not, it is now.
    #[cfg(test)]
    fn seen_before(&mut self, id: &str, now: Instant) -> bool {
        if self.seen(id, now) {
            return true;
        }
        self.record(id, now);
        false
    }

    /// Was `id` taken within the window before `now`?
    pub fn seen(&mut self, id: &str, now: Instant) -> bool {
        self.forget_expired(now);
        self.seen.contains_key(&self.hash(id))
    }

    /// `id` was taken at `now` (after `seen` said it was new).
    pub fn record(&mut self, id: &str, now: Instant) {
        let h = self.hash(id);
        if self.seen.insert(h, now).is_some() {
            return;
        }
        self.order.push_back((now, h));
        if self.order.len() > self.max_ids {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some(&(at, h)) = self.order.front() {
            if at + self.window > now {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&h);
        }
        // Give memory back after a burst (amortised: only when mostly unused).
        if self.seen.capacity() > 1024 && self.seen.len() * 4 < self.seen.capacity() {
            self.seen.shrink_to(self.seen.len() * 2);
            self.order.shrink_to(self.order.len() * 2);
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_from_its_first_sighting() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Dedup::new(s(60), 100);
        assert!(!d.seen_before("a", t0));
        assert!(d.seen_before("a", t0 + s(30)));
        assert!(!d.seen_before("b", t0 + s(30)));
        // The repeat at +30 s did not extend a's window.
        assert!(!d.seen_before("a", t0 + s(60)), "a's window ended");
        assert!(d.seen_before("b", t0 + s(60)));
        assert!(!d.seen_before("b", t0 + s(90)));
    }

    #[test]
    fn past_max_ids_the_oldest_are_forgotten() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(3600), 3);
        for id in ["1", "2", "3", "4"] {
            assert!(!d.seen_before(id, t0));
        }
        assert_eq!(d.len(), 3);
        assert!(d.seen_before("4", t0));
        assert!(!d.seen_before("1", t0), "the oldest was forgotten");
    }
}
