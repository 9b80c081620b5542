//! The messages of a queue that may be delivered now, in the order they go out.
//! Pure.
//!
//! Without an ordering key it is one FIFO. With one, each key has its own FIFO
//! and a key is busy while one of its messages is in flight or waits for a
//! retry: nothing else of that key goes out until that message is acknowledged
//! or dead-lettered, so a key's messages are processed in publish order, one at a
//! time, while different keys go to consumers in parallel.

use super::{Entry, Key};
use crate::hash::{Map, Set};
use std::collections::VecDeque;

pub enum Ready {
    Fifo(VecDeque<Entry>),
    Keyed(Keyed),
}

#[derive(Default)]
pub struct Keyed {
    groups: Map<Key, VecDeque<Entry>>,
    /// Keys with a message ready and none in flight or delayed, in turn.
    runnable: VecDeque<Key>,
    /// Keys with a message in flight or delayed.
    busy: Set<Key>,
    len: usize,
}

/// Pop the head, and give memory back once a drained backlog left the FIFO at
/// a quarter of its capacity (32 bytes a slot: a million-message backlog
/// leaves 32 MB behind otherwise). Amortised O(1).
fn pop_shrinking(q: &mut VecDeque<Entry>) -> Option<Entry> {
    let e = q.pop_front();
    if q.capacity() >= 4096 && q.len() * 4 < q.capacity() {
        q.shrink_to(q.len() * 2);
    }
    e
}

impl Ready {
    pub fn new(keyed: bool) -> Ready {
        if keyed {
            Ready::Keyed(Keyed::default())
        } else {
            Ready::Fifo(VecDeque::new())
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Ready::Fifo(q) => q.len(),
            Ready::Keyed(k) => k.len,
        }
    }

    /// A new message, after every other of its key.
    pub fn push_back(&mut self, e: Entry) {
        match self {
            Ready::Fifo(q) => q.push_back(e),
            Ready::Keyed(k) => {
                let group = k.groups.entry(e.key).or_default();
                let was_idle = group.is_empty() && !k.busy.contains(&e.key);
                group.push_back(e);
                if was_idle {
                    k.runnable.push_back(e.key);
                }
                k.len += 1;
            }
        }
    }

    /// A message back from a consumer or a retry wait: it goes before every
    /// other of its key (it is older), and its key is free again.
    pub fn push_front(&mut self, e: Entry) {
        match self {
            Ready::Fifo(q) => q.push_front(e),
            Ready::Keyed(k) => {
                let was_busy = k.busy.remove(&e.key);
                let group = k.groups.entry(e.key).or_default();
                let had_ready = !group.is_empty();
                group.push_front(e);
                // A key that was not busy and had messages is already runnable.
                if was_busy || !had_ready {
                    k.runnable.push_front(e.key);
                }
                k.len += 1;
            }
        }
    }

    /// A message taken by `pop_oldest` (never out) put back first in line: its
    /// key's state is left as it is (another message of the key may be out).
    pub fn put_back(&mut self, e: Entry) {
        match self {
            Ready::Fifo(q) => q.push_front(e),
            Ready::Keyed(k) => {
                let group = k.groups.entry(e.key).or_default();
                let had_ready = !group.is_empty();
                group.push_front(e);
                if !had_ready && !k.busy.contains(&e.key) {
                    k.runnable.push_front(e.key);
                }
                k.len += 1;
            }
        }
    }

    /// The next message to deliver; its key becomes busy.
    pub fn pop(&mut self) -> Option<Entry> {
        match self {
            Ready::Fifo(q) => pop_shrinking(q),
            Ready::Keyed(k) => {
                let key = k.runnable.pop_front()?;
                let group = k.groups.get_mut(&key)?;
                let e = group.pop_front()?;
                if group.is_empty() {
                    k.groups.remove(&key);
                }
                k.busy.insert(key);
                k.len -= 1;
                Some(e)
            }
        }
    }

    /// The message of `key` that was out is gone for good (acknowledged or
    /// dead-lettered): the key's next message may go.
    pub fn release(&mut self, key: Key) {
        if let Ready::Keyed(k) = self {
            if k.busy.remove(&key) && k.groups.contains_key(&key) {
                k.runnable.push_back(key);
            }
        }
    }

    /// Take the oldest message that is ready (overflow: drop-head). Its key's
    /// state does not change: it was not out.
    pub fn pop_oldest(&mut self) -> Option<Entry> {
        match self {
            Ready::Fifo(q) => pop_shrinking(q),
            Ready::Keyed(k) => {
                // Group heads are each group's oldest; the oldest of them is the
                // oldest ready message (ids increase in arrival order).
                let key = k
                    .groups
                    .iter()
                    .filter_map(|(key, g)| g.front().map(|e| (e.id, *key)))
                    .min()
                    .map(|(_, key)| key)?;
                let group = k.groups.get_mut(&key)?;
                let e = group.pop_front()?;
                if group.is_empty() {
                    k.groups.remove(&key);
                    k.runnable.retain(|r| *r != key);
                }
                k.len -= 1;
                Some(e)
            }
        }
    }

    /// The message `pop` would give, without taking it (FIFO only: with keys the
    /// order depends on which keys are busy).
    pub fn front(&self) -> Option<&Entry> {
        match self {
            Ready::Fifo(q) => q.front(),
            Ready::Keyed(_) => None,
        }
    }

    /// The first enqueue time of the oldest ready message: the head of the FIFO
    /// (messages that came back go first, and they are older), or the oldest of
    /// the keys' heads.
    pub fn oldest_enqueued_ms(&self) -> Option<u64> {
        match self {
            Ready::Fifo(q) => q.front().map(|e| e.enqueued_ms),
            Ready::Keyed(k) => k
                .groups
                .values()
                .filter_map(|g| g.front())
                .map(|e| e.enqueued_ms)
                .min(),
        }
    }

    /// The ready messages roughly in the order they will go out (what to read
    /// back from the store first): the FIFO from its head; with keys, the head
    /// of each runnable key in turn, then every key's messages from its head
    /// (a busy key's head goes next once its key is free; the runnable heads
    /// come twice, which the caller skips).
    pub fn upcoming(&self) -> Box<dyn Iterator<Item = &Entry> + '_> {
        match self {
            Ready::Fifo(q) => Box::new(q.iter()),
            Ready::Keyed(k) => Box::new(
                k.runnable
                    .iter()
                    .filter_map(|key| k.groups.get(key).and_then(|g| g.front()))
                    .chain(k.groups.values().flatten()),
            ),
        }
    }

    /// Every ready message, in no particular order across keys.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &Entry> + '_> {
        match self {
            Ready::Fifo(q) => Box::new(q.iter()),
            Ready::Keyed(k) => Box::new(k.groups.values().flatten()),
        }
    }

    /// Remove the messages `drop` says, keeping the order of the rest.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&Entry) -> bool, out: &mut Vec<Entry>) {
        match self {
            Ready::Fifo(q) => {
                q.retain(|e| {
                    let d = drop(e);
                    if d {
                        out.push(*e);
                    }
                    !d
                });
            }
            Ready::Keyed(k) => {
                let mut removed = 0;
                k.groups.retain(|_, g| {
                    g.retain(|e| {
                        let d = drop(e);
                        if d {
                            out.push(*e);
                            removed += 1;
                        }
                        !d
                    });
                    !g.is_empty()
                });
                let groups = &k.groups;
                k.runnable.retain(|key| groups.contains_key(key));
                k.len -= removed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64, key: Key) -> Entry {
        Entry {
            id,
            key,
            ..Entry::default()
        }
    }

    fn ids(r: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| r.pop()).map(|e| e.id).collect()
    }

    #[test]
    fn a_key_goes_out_one_message_at_a_time_in_order() {
        let mut r = Ready::new(true);
        for (id, key) in [(1, 7), (2, 7), (3, 8), (4, 7), (5, 9)] {
            r.push_back(e(id, key));
        }
        // One of each key, in order of their first message.
        assert_eq!(ids(&mut r), vec![1, 3, 5]);
        assert_eq!(r.len(), 2);
        r.release(8);
        r.release(9);
        assert_eq!(ids(&mut r), Vec::<u64>::new(), "key 7 is still out");
        // Message 1 comes back (nack): it goes before 2 and 4.
        r.push_front(e(1, 7));
        assert_eq!(ids(&mut r), vec![1]);
        r.release(7);
        assert_eq!(ids(&mut r), vec![2]);
        r.release(7);
        assert_eq!(ids(&mut r), vec![4]);
        r.release(7);
        assert_eq!(r.len(), 0);
        assert!(matches!(&r, Ready::Keyed(k) if k.groups.is_empty() && k.busy.is_empty()));
    }

    #[test]
    fn drop_head_takes_the_oldest_ready_message_of_any_key() {
        let mut r = Ready::new(true);
        for (id, key) in [(1, 7), (2, 8), (3, 7)] {
            r.push_back(e(id, key));
        }
        assert_eq!(r.pop().map(|e| e.id), Some(1));
        assert_eq!(r.pop_oldest().map(|e| e.id), Some(2));
        assert_eq!(r.pop_oldest().map(|e| e.id), Some(3));
        assert_eq!(r.len(), 0);
        let mut f = Ready::new(false);
        f.push_back(e(1, 0));
        f.push_back(e(2, 0));
        f.push_front(e(0, 0));
        assert_eq!(ids(&mut f), vec![0, 1, 2]);
    }

    #[test]
    fn remove_where_keeps_the_rest_in_order_and_counts() {
        let mut r = Ready::new(true);
        for (id, key) in [(1, 7), (2, 7), (3, 8), (4, 8)] {
            r.push_back(e(id, key));
        }
        let mut out = Vec::new();
        r.remove_where(|e| e.id % 2 == 1, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(r.len(), 2);
        assert_eq!(ids(&mut r), vec![2, 4]);
    }
}
