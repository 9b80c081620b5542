//! The `limits.max_connections` cap: a count of open connections against a
//! limit that a reload may change. Owns only that count.
//!
//! A connection holds a `Slot` for its whole life (it moves into the
//! connection's task), so a finished task frees its slot however it ends. The
//! limit may drop below the open count (a reload): the connections stay, and
//! new ones are refused until enough have closed. A counter rather than a
//! semaphore, so that lowering and raising the limit again is exact: there is
//! no debt of permits to collect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Inner {
    open: AtomicUsize,
    limit: AtomicUsize,
}

#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    inner: Arc<Inner>,
}

/// One open connection's place; given back on drop.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<Inner>,
}

impl ConnectionSlots {
    pub fn new(limit: usize) -> ConnectionSlots {
        ConnectionSlots {
            inner: Arc::new(Inner {
                open: AtomicUsize::new(0),
                limit: AtomicUsize::new(limit),
            }),
        }
    }

    /// A slot, unless `limit` connections are open.
    pub fn try_take(&self) -> Option<Slot> {
        let limit = self.inner.limit.load(Ordering::Relaxed);
        self.inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot {
                inner: self.inner.clone(),
            })
    }

    /// A new limit (a reload); open connections over it stay.
    pub fn set_limit(&self, limit: usize) {
        self.inner.limit.store(limit, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_limit_keeps_the_open_and_refuses_until_room() {
        let slots = ConnectionSlots::new(3);
        let mut held: Vec<Slot> = (0..3).filter_map(|_| slots.try_take()).collect();
        assert_eq!(held.len(), 3);
        assert!(slots.try_take().is_none());
        slots.set_limit(1);
        assert_eq!(slots.open(), 3, "the open ones stay");
        held.pop();
        assert!(slots.try_take().is_none(), "2 open, limit 1");
        held.pop();
        assert!(slots.try_take().is_none(), "1 open, limit 1");
        // Raised again: exactly the new limit, nothing lost on the way.
        slots.set_limit(4);
        let more: Vec<Slot> = (0..5).filter_map(|_| slots.try_take()).collect();
        assert_eq!(more.len(), 3);
        assert_eq!(slots.open(), 4);
        drop(more);
        drop(held);
        assert_eq!(slots.open(), 0);
    }
}
