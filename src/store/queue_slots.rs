//! One work queue's messages in the store's index, by message id: where each
//! message's record lies and its latest delivery count, 32 bytes a message
//! (the payload stays on disk). Pure.
//!
//! Ids mostly arrive in increasing order (a queue takes new ids), but not always:
//! at start a message copied forward is read back after younger ones, and a
//! redriven message keeps its id. So the slots are kept in sorted chunks of at
//! most `CHUNK` (a B-tree with wide leaves): an append goes to the last chunk,
//! an insert in the middle shifts at most one chunk, and a removal leaves a
//! tombstone until half its chunk is dead. A `BTreeMap` per message cost about
//! 100 bytes a message; a sorted `VecDeque` cost O(n) per insert in the middle.

use super::state::Loc;
use std::collections::BTreeMap;

/// What the index keeps per queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub mid: u64,
    /// Its `QueueMsg` record. Segment 0: removed (a tombstone).
    pub msg: Loc,
    /// The segment of its share of its latest `QueueCount` record, as
    /// `1 + segment - msg.seg` (0: none). A count is written after its message
    /// (copying the message forward drops the count), so never in an older
    /// segment.
    count_after: u32,
    /// That share's bytes (a share of a record of counts is a few bytes).
    count_bytes: u16,
    pub deliveries: u16,
}

impl Slot {
    pub fn new(mid: u64, msg: Loc, deliveries: u16) -> Slot {
        Slot {
            mid,
            msg,
            count_after: 0,
            count_bytes: 0,
            deliveries,
        }
    }

    /// Its latest count is now this share of a `QueueCount` record.
    pub fn set_count(&mut self, deliveries: u16, share: Loc) {
        self.deliveries = deliveries;
        let after = share.seg.saturating_sub(self.msg.seg).saturating_add(1);
        self.count_after = u32::try_from(after).unwrap_or(u32::MAX);
        self.count_bytes = u16::try_from(share.bytes).unwrap_or(u16::MAX);
    }

    /// Is its latest count's share in segment `seg`?
    pub fn count_in(&self, seg: u64) -> bool {
        self.count().is_some_and(|c| c.seg == seg)
    }

    fn live(&self) -> bool {
        self.msg.seg != 0
    }

    /// Its share of its latest `QueueCount` record, if any.
    pub fn count(&self) -> Option<Loc> {
        (self.count_after != 0).then_some(Loc {
            seg: self.msg.seg + u64::from(self.count_after) - 1,
            bytes: u32::from(self.count_bytes),
            offset: 0,
        })
    }
}

/// Slots per chunk.
const CHUNK: usize = 128;

#[derive(Debug)]
struct Chunk {
    /// Sorted by id, tombstones included.
    slots: Vec<Slot>,
    live: usize,
}

impl Chunk {
    fn with(slots: Vec<Slot>) -> Chunk {
        let live = slots.iter().filter(|s| s.live()).count();
        let mut v = Vec::with_capacity(CHUNK);
        v.extend(slots);
        Chunk { slots: v, live }
    }

    fn compact(&mut self) {
        self.slots.retain(Slot::live);
    }
}

/// A queue's slots. Every chunk's key is at most its first id and above the
/// last id of the chunk before it.
#[derive(Debug, Default)]
pub struct Slots {
    chunks: BTreeMap<u64, Chunk>,
    len: usize,
}

impl Slots {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `mid`, or would.
    fn chunk_key(&self, mid: u64) -> Option<u64> {
        self.chunks
            .range(..=mid)
            .next_back()
            .map(|(k, _)| *k)
            .or_else(|| self.chunks.keys().next().copied())
    }

    pub fn get(&self, mid: u64) -> Option<&Slot> {
        let (_, c) = self.chunks.range(..=mid).next_back()?;
        let i = c.slots.binary_search_by_key(&mid, |s| s.mid).ok()?;
        Some(&c.slots[i]).filter(|s| s.live())
    }

    pub fn get_mut(&mut self, mid: u64) -> Option<&mut Slot> {
        let (_, c) = self.chunks.range_mut(..=mid).next_back()?;
        let i = c.slots.binary_search_by_key(&mid, |s| s.mid).ok()?;
        Some(&mut c.slots[i]).filter(|s| s.live())
    }

    /// Add `s`, or replace the slot of its id (returned).
    pub fn insert(&mut self, s: Slot) -> Option<Slot> {
        let Some(key) = self.chunk_key(s.mid) else {
            self.chunks.insert(s.mid, Chunk::with(vec![s]));
            self.len += 1;
            return None;
        };
        let c = self.chunks.get_mut(&key)?;
        let pos = match c.slots.binary_search_by_key(&s.mid, |x| x.mid) {
            Ok(i) => {
                let old = std::mem::replace(&mut c.slots[i], s);
                if old.live() {
                    return Some(old);
                }
                c.live += 1;
                self.len += 1;
                return None;
            }
            Err(i) => i,
        };
        self.len += 1;
        if c.slots.len() < CHUNK {
            c.slots.insert(pos, s);
            c.live += 1;
            if s.mid < key {
                // Below every chunk: this one starts lower now.
                if let Some(c) = self.chunks.remove(&key) {
                    self.chunks.insert(s.mid, c);
                }
            }
            return None;
        }
        if pos == c.slots.len() {
            // Past the end of a full chunk: the usual append.
            self.chunks.insert(s.mid, Chunk::with(vec![s]));
            return None;
        }
        // A full chunk: drop its tombstones, or split it in two.
        if c.live < c.slots.len() {
            c.compact();
        } else {
            let right = c.slots.split_off(CHUNK / 2);
            c.live = c.slots.len();
            let first = right[0].mid;
            self.chunks.insert(first, Chunk::with(right));
        }
        self.len -= 1;
        self.insert(s)
    }

    /// Remove the slot of `mid`.
    pub fn remove(&mut self, mid: u64) -> Option<Slot> {
        let (&key, c) = self.chunks.range_mut(..=mid).next_back()?;
        let i = c.slots.binary_search_by_key(&mid, |s| s.mid).ok()?;
        let old = c.slots[i];
        if !old.live() {
            return None;
        }
        c.slots[i].msg.seg = 0;
        c.live -= 1;
        self.len -= 1;
        if c.live == 0 {
            self.chunks.remove(&key);
        } else if c.live * 2 < c.slots.len() {
            c.compact();
        }
        Some(old)
    }

    /// Every slot, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks
            .values()
            .flat_map(|c| c.slots.iter().filter(|s| s.live()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(mid: u64) -> Slot {
        Slot::new(
            mid,
            Loc {
                seg: 1,
                bytes: 10,
                offset: mid as u32,
            },
            0,
        )
    }

    fn ids(s: &Slots) -> Vec<u64> {
        s.iter().map(|x| x.mid).collect()
    }

    #[test]
    fn appends_inserts_and_removals_keep_ids_sorted_and_findable() {
        let mut s = Slots::default();
        // Appends, then ids copied forward (lower) read back later.
        for mid in 1_000..1_500 {
            assert!(s.insert(slot(mid)).is_none());
        }
        for mid in (0..1_000).step_by(3) {
            assert!(s.insert(slot(mid)).is_none());
        }
        for mid in (1..1_000).step_by(3) {
            assert!(s.insert(slot(mid)).is_none());
        }
        let mut want: Vec<u64> = (1_000..1_500)
            .chain((0..1_000).step_by(3))
            .chain((1..1_000).step_by(3))
            .collect();
        want.sort_unstable();
        assert_eq!(ids(&s), want);
        assert_eq!(s.len(), want.len());
        for &mid in &want {
            assert_eq!(s.get(mid).map(|x| x.mid), Some(mid));
        }
        assert!(s.get(2).is_none(), "never inserted");
        // Replacing returns the old slot and keeps the count.
        let old = s.insert(Slot::new(1_200, slot(1_200).msg, 7));
        assert_eq!(old.map(|o| o.deliveries), Some(0));
        assert_eq!(s.get(1_200).map(|x| x.deliveries), Some(7));
        assert_eq!(s.len(), want.len());
        // Remove most, in an order unlike insertion.
        for &mid in want.iter().rev().step_by(2) {
            assert_eq!(s.remove(mid).map(|x| x.mid), Some(mid));
            assert!(s.remove(mid).is_none(), "removed once");
        }
        let left: Vec<u64> = want
            .iter()
            .rev()
            .skip(1)
            .step_by(2)
            .rev()
            .copied()
            .collect();
        assert_eq!(ids(&s), left);
        assert_eq!(s.len(), left.len());
        // A removed id may come back (revived tombstone or re-inserted).
        let gone = want[want.len() - 1];
        assert!(s.insert(slot(gone)).is_none());
        assert!(s.get(gone).is_some());
        for mid in ids(&s) {
            s.remove(mid);
        }
        assert!(s.is_empty());
        assert_eq!(s.chunks.len(), 0, "empty chunks are freed");
    }

    #[test]
    fn a_sequential_backlog_fills_its_chunks() {
        let mut s = Slots::default();
        for mid in 0..10_000 {
            s.insert(slot(mid));
        }
        assert_eq!(s.chunks.len(), 10_000usize.div_ceil(CHUNK));
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }
}
