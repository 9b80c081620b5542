//! A session's queue of messages waiting for a window slot or for the client to
//! come back, in delivery order. Pure: no I/O.
//!
//! A persistent session's message is already in the store's log, so once its
//! record is synced the queue keeps only a stub (`Stub`: the delivery id and
//! what it costs); the router reads the message back shortly before the
//! session sends it (the read-ahead: the first `keep` entries while the client
//! is connected, none while it is away). An offline session's backlog therefore
//! costs a few dozen bytes per message in RAM, not its payload (issue 12: the
//! backlog lives on disk). What has no record (QoS 0, sessions that end with
//! their connection, a broker without a store), a shared subscription's message
//! (handed on to another member from memory if the session ends) and a work
//! queue's delivery stay in memory, under their own, smaller caps.

use crate::session::Delivery;
use std::collections::VecDeque;

/// One waiting message: in memory, or on disk only (boxed: the stubs of a long
/// backlog are the common case, and an entry is 16 bytes either way).
#[derive(Debug)]
enum Entry {
    Here(Box<Delivery>),
    Disk(Stub),
}

/// A delivery whose message waits in the store's log.
#[derive(Debug, Clone, Copy)]
struct Stub {
    did: u64,
    /// What it counts against the session's byte cap.
    cost: u32,
    /// Asked from the store, answer not in yet.
    loading: bool,
    /// Reads that failed for a passing reason so far.
    failures: u8,
}

/// What a message read back did to the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// In memory now, at its place.
    Ready,
    /// Not waiting any more (finished or dropped meanwhile): nothing to do.
    Stale,
}

/// The queue. Boxed, made with its first entry and let go with its last:
/// most sessions wait for nothing most of the time, and every client the
/// router knows, connected, hibernating or away, would carry its 96 bytes
/// (issue 15). Its counters are all zero when it is empty.
#[derive(Debug, Default)]
pub struct PendingQueue(Option<Box<Queue>>);

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Bytes of every entry (what `max_queued_bytes` caps).
    bytes: usize,
    /// Entries that can only wait in memory, and their bytes (what
    /// `max_queued_*_in_memory` cap).
    memory_len: usize,
    memory_bytes: usize,
    /// Durable entries in memory (candidates for the disk).
    durable_here: usize,
    /// Stubs, loading or not, and their bytes.
    on_disk: usize,
    disk_bytes: usize,
    /// How many entries at the front are in memory or asked for, and their
    /// bytes: `want` goes on from there (an ack moves the read-ahead by one
    /// entry, so it looks at one entry, not the whole read-ahead).
    ready: usize,
    ready_bytes: usize,
}

/// Can this delivery wait on disk only? It needs a record in the store, and
/// must not need its message without the store (see the module doc).
fn durable(d: &Delivery) -> bool {
    d.did != 0 && !d.shared && d.queued.is_none()
}

fn cost_of(d: &Delivery) -> usize {
    d.message.cost()
}

impl PendingQueue {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.bytes)
    }

    #[cfg(test)]
    fn memory_len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.memory_len)
    }

    /// Messages waiting on disk only.
    pub fn on_disk(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.on_disk)
    }

    /// Entries held in memory, and their bytes (see `Queue::in_memory`).
    pub fn in_memory(&self) -> (usize, usize) {
        self.0.as_ref().map_or((0, 0), |q| q.in_memory())
    }

    /// Durable messages held in memory (once synced, they may go to disk).
    pub fn durable_here(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.durable_here)
    }

    /// Would `d` fit under the caps? (see `Queue::fits`)
    pub fn fits(
        &self,
        d: &Delivery,
        max_len: usize,
        max_bytes: usize,
        memory_len: usize,
        memory_bytes: usize,
    ) -> bool {
        match &self.0 {
            Some(q) => q.fits(d, max_len, max_bytes, memory_len, memory_bytes),
            None => Queue::default().fits(d, max_len, max_bytes, memory_len, memory_bytes),
        }
    }

    /// The queue, made if need be.
    fn made(&mut self) -> &mut Queue {
        self.0.get_or_insert_with(Default::default)
    }

    /// Run `f` on the queue, if there is one, and let it go if it is empty
    /// after.
    fn with<T>(&mut self, none: T, f: impl FnOnce(&mut Queue) -> T) -> T {
        let Some(q) = self.0.as_mut() else {
            return none;
        };
        let out = f(q);
        if q.entries.is_empty() {
            self.0 = None;
        }
        out
    }

    pub fn push_back(&mut self, d: Delivery) {
        self.made().push_back(d);
    }

    /// Recovery: a delivery whose message waits on disk.
    pub fn push_stub(&mut self, did: u64, cost: u32) {
        self.made().push_stub(did, cost);
    }

    /// The first entry, if it is in memory (None: empty, or it waits for a read).
    pub fn front(&self) -> Option<&Delivery> {
        self.0.as_ref()?.front()
    }

    /// Take the first entry if it is in memory.
    pub fn pop_front(&mut self) -> Option<Delivery> {
        self.with(None, Queue::pop_front)
    }

    /// The deliveries in memory, in order.
    pub fn iter_here(&self) -> impl Iterator<Item = &Delivery> {
        self.0.iter().flat_map(|q| q.iter_here())
    }

    /// See `Queue::remove_here`.
    pub fn remove_here(&mut self, keep: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        self.with(Vec::new(), |q| q.remove_here(keep))
    }

    /// See `Queue::to_disk`.
    pub fn to_disk(&mut self, synced_did: u64, keep: usize, keep_bytes: usize, full: bool) -> bool {
        self.with(false, |q| q.to_disk(synced_did, keep, keep_bytes, full))
    }

    /// See `Queue::want`.
    pub fn want(&mut self, keep: usize, keep_bytes: usize, out: &mut Vec<u64>) {
        self.with((), |q| q.want(keep, keep_bytes, out))
    }

    /// See `Queue::fill`.
    pub fn fill(&mut self, d: Delivery) -> Filled {
        self.with(Filled::Stale, |q| q.fill(d))
    }

    /// See `Queue::unload`.
    pub fn unload(&mut self, did: u64) -> u8 {
        self.with(0, |q| q.unload(did))
    }

    /// See `Queue::remove_stub`.
    pub fn remove_stub(&mut self, did: u64) -> bool {
        self.with(false, |q| q.remove_stub(did))
    }

    #[cfg(test)]
    fn loading(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.loading())
    }
}

impl Queue {
    /// Entries held in memory, and their bytes (what a connected client's
    /// backpressure counts: a backlog on disk is not its publishers' doing).
    pub fn in_memory(&self) -> (usize, usize) {
        (
            self.entries.len() - self.on_disk,
            self.bytes.saturating_sub(self.disk_bytes),
        )
    }

    /// Would `d` fit under the caps? (`memory_*`: the caps of what can only
    /// wait in memory.)
    pub fn fits(
        &self,
        d: &Delivery,
        max_len: usize,
        max_bytes: usize,
        memory_len: usize,
        memory_bytes: usize,
    ) -> bool {
        let cost = cost_of(d);
        if self.entries.len() >= max_len || self.bytes.saturating_add(cost) > max_bytes {
            return false;
        }
        durable(d)
            || (self.memory_len < memory_len
                && self.memory_bytes.saturating_add(cost) <= memory_bytes)
    }

    fn count_in(&mut self, d: &Delivery) {
        let cost = cost_of(d);
        self.bytes += cost;
        if durable(d) {
            self.durable_here += 1;
        } else {
            self.memory_len += 1;
            self.memory_bytes += cost;
        }
    }

    fn count_out(&mut self, d: &Delivery) {
        let cost = cost_of(d);
        self.bytes = self.bytes.saturating_sub(cost);
        if durable(d) {
            self.durable_here = self.durable_here.saturating_sub(1);
        } else {
            self.memory_len = self.memory_len.saturating_sub(1);
            self.memory_bytes = self.memory_bytes.saturating_sub(cost);
        }
    }

    pub fn push_back(&mut self, d: Delivery) {
        self.count_in(&d);
        self.entries.push_back(Entry::Here(Box::new(d)));
    }

    /// Recovery: a delivery whose message waits on disk.
    pub fn push_stub(&mut self, did: u64, cost: u32) {
        self.bytes += cost as usize;
        self.on_disk += 1;
        self.disk_bytes += cost as usize;
        self.entries.push_back(Entry::Disk(Stub {
            did,
            cost,
            loading: false,
            failures: 0,
        }));
    }

    /// The first entry, if it is in memory (None: empty, or it waits for a read).
    pub fn front(&self) -> Option<&Delivery> {
        match self.entries.front() {
            Some(Entry::Here(d)) => Some(d),
            _ => None,
        }
    }

    /// Take the first entry if it is in memory.
    pub fn pop_front(&mut self) -> Option<Delivery> {
        if !matches!(self.entries.front(), Some(Entry::Here(_))) {
            return None;
        }
        let Some(Entry::Here(d)) = self.entries.pop_front() else {
            return None;
        };
        self.count_out(&d);
        self.ready = self.ready.saturating_sub(1);
        self.ready_bytes = self.ready_bytes.saturating_sub(cost_of(&d));
        // A drained backlog gives its slots back.
        let cap = self.entries.capacity();
        if cap > 64 && self.entries.len() < cap / 4 {
            self.entries.shrink_to(cap / 2);
        }
        Some(*d)
    }

    /// The deliveries in memory, in order.
    pub fn iter_here(&self) -> impl Iterator<Item = &Delivery> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Here(d) => Some(&**d),
            Entry::Disk(_) => None,
        })
    }

    /// Remove the in-memory deliveries `keep` refuses, in order; stubs stay
    /// (what applies to their message is checked when it is read back).
    pub fn remove_here(&mut self, mut keep: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let mut removed = Vec::new();
        // Entries before the first refused one stay where they are.
        let Some(first) = self
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Here(d) if !keep(d)))
        else {
            return removed;
        };
        let tail = self.entries.split_off(first);
        let mut tail = tail.into_iter();
        if let Some(Entry::Here(d)) = tail.next() {
            removed.push(*d);
        }
        for e in tail {
            match e {
                Entry::Here(d) if !keep(&d) => removed.push(*d),
                other => self.entries.push_back(other),
            }
        }
        for d in &removed {
            self.count_out(d);
        }
        if !removed.is_empty() {
            self.ready = 0;
            self.ready_bytes = 0;
        }
        removed
    }

    /// Where the first `keep` messages (or `keep_bytes`) end: the read-ahead.
    fn boundary(&self, keep: usize, keep_bytes: usize) -> usize {
        let mut bytes = 0usize;
        let mut i = 0;
        for e in self.entries.iter().take(keep) {
            if bytes >= keep_bytes {
                break;
            }
            bytes += match e {
                Entry::Here(d) => cost_of(d),
                Entry::Disk(s) => s.cost as usize,
            };
            i += 1;
        }
        i
    }

    /// Let durable messages past the read-ahead (`keep`, `keep_bytes`) wait on
    /// disk only, those whose record is synced (delivery id up to
    /// `synced_did`). Walks back from the newest and stops at the first stub:
    /// before it everything that can is on disk already, unless `full` (the
    /// read-ahead shrank: the client left). Returns whether durable messages
    /// past the read-ahead still wait for their sync.
    #[allow(clippy::wrong_self_convention)] // `PendingQueue::to_disk`'s body
    pub fn to_disk(&mut self, synced_did: u64, keep: usize, keep_bytes: usize, full: bool) -> bool {
        let start = self.boundary(keep, keep_bytes);
        let mut unsynced = false;
        for i in (start..self.entries.len()).rev() {
            let Some(e) = self.entries.get_mut(i) else {
                break;
            };
            let d = match e {
                Entry::Disk(_) if full => continue,
                Entry::Disk(_) => break,
                Entry::Here(d) => d,
            };
            if !durable(d) {
                continue;
            }
            if d.did > synced_did {
                unsynced = true;
                continue;
            }
            let cost = u32::try_from(cost_of(d)).unwrap_or(u32::MAX);
            *e = Entry::Disk(Stub {
                did: d.did,
                cost,
                loading: false,
                failures: 0,
            });
            self.durable_here = self.durable_here.saturating_sub(1);
            self.on_disk += 1;
            self.disk_bytes += cost as usize;
        }
        if self.ready > start {
            // Entries `want` counted as ready may be on disk again.
            self.ready = 0;
            self.ready_bytes = 0;
        }
        unsynced
    }

    /// The stubs within the read-ahead not asked for yet: marked as loading,
    /// their delivery ids added to `out`.
    pub fn want(&mut self, keep: usize, keep_bytes: usize, out: &mut Vec<u64>) {
        if self.on_disk == 0 {
            return;
        }
        // Ask in batches, not one read per acknowledgement: only once a
        // quarter of the read-ahead is missing, or the head waits.
        let head_waits = matches!(self.entries.front(), Some(Entry::Disk(s)) if !s.loading);
        let mostly_ready = self.ready.saturating_mul(4) >= keep.saturating_mul(3)
            || self.ready_bytes.saturating_mul(4) >= keep_bytes.saturating_mul(3);
        if mostly_ready && !head_waits {
            return;
        }
        while self.ready < keep && self.ready_bytes < keep_bytes {
            let Some(e) = self.entries.get_mut(self.ready) else {
                break;
            };
            let cost = match e {
                Entry::Here(d) => cost_of(d),
                Entry::Disk(s) => {
                    if !s.loading {
                        s.loading = true;
                        out.push(s.did);
                    }
                    s.cost as usize
                }
            };
            self.ready += 1;
            self.ready_bytes += cost;
        }
    }

    /// Where stub `did` is. A stub asked for lies within the ready prefix,
    /// usually near its end: looked for from there back first.
    fn stub_at(&self, did: u64) -> Option<usize> {
        let is = |e: &Entry| matches!(e, Entry::Disk(s) if s.did == did);
        let ready = self.ready.min(self.entries.len());
        self.entries
            .range(..ready)
            .rposition(is)
            .or_else(|| self.entries.range(ready..).position(is).map(|i| i + ready))
    }

    /// Delivery `did`'s message was read back: it takes its place in memory.
    pub fn fill(&mut self, d: Delivery) -> Filled {
        let Some(i) = self.stub_at(d.did) else {
            return Filled::Stale;
        };
        let Some(Entry::Disk(s)) = self.entries.get(i) else {
            return Filled::Stale;
        };
        let stub_cost = s.cost as usize;
        self.bytes = self.bytes.saturating_sub(stub_cost);
        self.on_disk = self.on_disk.saturating_sub(1);
        self.disk_bytes = self.disk_bytes.saturating_sub(stub_cost);
        if i < self.ready {
            self.ready_bytes = self.ready_bytes.saturating_sub(stub_cost) + cost_of(&d);
        }
        self.count_in(&d);
        if let Some(e) = self.entries.get_mut(i) {
            *e = Entry::Here(Box::new(d));
        }
        Filled::Ready
    }

    /// Delivery `did` could not be read back now: it is asked for again
    /// later. Returns how many times its read has failed.
    pub fn unload(&mut self, did: u64) -> u8 {
        let Some(i) = self.stub_at(did) else {
            return 0;
        };
        let mut failures = 0;
        if let Some(Entry::Disk(s)) = self.entries.get_mut(i) {
            s.loading = false;
            s.failures = s.failures.saturating_add(1);
            failures = s.failures;
        }
        if i < self.ready {
            self.ready = 0;
            self.ready_bytes = 0;
        }
        failures
    }

    /// Delivery `did`'s message is lost or gone: its stub leaves. Returns
    /// whether it was here.
    pub fn remove_stub(&mut self, did: u64) -> bool {
        let Some(i) = self.stub_at(did) else {
            return false;
        };
        if let Some(Entry::Disk(s)) = self.entries.remove(i) {
            self.bytes = self.bytes.saturating_sub(s.cost as usize);
            self.on_disk = self.on_disk.saturating_sub(1);
            self.disk_bytes = self.disk_bytes.saturating_sub(s.cost as usize);
            if i < self.ready {
                self.ready -= 1;
                self.ready_bytes = self.ready_bytes.saturating_sub(s.cost as usize);
            }
        }
        true
    }

    /// Stubs asked for whose answer has not come.
    #[cfg(test)]
    fn loading(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Disk(s) if s.loading))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PublishProperties, QoS};
    use crate::session::Message;
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Instant;

    fn d(did: u64) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(b"0123456789"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                received: Instant::now(),
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            did,
            shared: false,
            queued: None,
        }
    }

    #[test]
    fn an_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    /// Every client the router knows carries a `PendingQueue`: a null
    /// pointer while it is empty, its queue made with the first entry and let
    /// go with the last.
    #[test]
    fn an_empty_queue_holds_nothing() {
        assert_eq!(std::mem::size_of::<PendingQueue>(), 8);
        let mut q = PendingQueue::default();
        q.push_back(d(1));
        q.push_stub(2, 10);
        assert!(q.0.is_some() && q.len() == 2);
        assert_eq!(q.pop_front().map(|d| d.did), Some(1));
        assert!(q.0.is_some(), "the stub still waits");
        assert!(q.remove_stub(2));
        assert!(q.0.is_none() && q.is_empty());
        assert_eq!((q.bytes(), q.on_disk(), q.in_memory()), (0, 0, (0, 0)));
    }

    #[test]
    fn synced_messages_past_the_read_ahead_go_to_disk_and_come_back_in_order() {
        let mut q = PendingQueue::default();
        for did in 1..=10 {
            q.push_back(d(did));
        }
        q.push_back(d(0)); // not durable: stays in memory
        let bytes = q.bytes();
        // Synced up to 8: keep 3 in memory, 4..=8 to disk, 9 and 10 wait.
        assert!(q.to_disk(8, 3, usize::MAX, false));
        assert_eq!(q.on_disk(), 5);
        assert_eq!(q.durable_here(), 5);
        assert_eq!(q.bytes(), bytes, "a stub costs what its message did");
        assert!(!q.to_disk(10, 3, usize::MAX, false));
        assert_eq!(q.on_disk(), 7);
        // Offline: everything durable goes.
        assert!(!q.to_disk(10, 0, 0, true));
        assert_eq!(q.on_disk(), 10);
        assert_eq!(q.memory_len(), 1);
        assert!(q.front().is_none(), "the head waits for a read");
        let mut want = Vec::new();
        q.want(4, usize::MAX, &mut want);
        assert_eq!(want, vec![1, 2, 3, 4]);
        want.clear();
        q.want(4, usize::MAX, &mut want);
        assert!(want.is_empty(), "asked once");
        // Answers in any order; the queue keeps its own.
        assert_eq!(q.fill(d(2)), Filled::Ready);
        assert!(q.front().is_none());
        assert_eq!(q.fill(d(1)), Filled::Ready);
        assert_eq!(q.fill(d(42)), Filled::Stale);
        assert_eq!(q.pop_front().map(|d| d.did), Some(1));
        assert_eq!(q.pop_front().map(|d| d.did), Some(2));
        assert!(q.pop_front().is_none());
        q.unload(3);
        want.clear();
        q.want(2, usize::MAX, &mut want);
        assert_eq!(want, vec![3], "a failed read is asked again");
        assert!(q.remove_stub(3));
        assert_eq!(q.len(), 8);
        assert_eq!(q.loading(), 1);
    }

    #[test]
    fn removing_in_memory_deliveries_keeps_the_order_and_the_stubs() {
        let mut q = PendingQueue::default();
        for did in 1..=6 {
            q.push_back(d(did));
        }
        q.to_disk(6, 0, 0, true);
        q.push_back(d(7));
        q.push_back(d(8));
        q.push_back(d(9));
        let gone = q.remove_here(|d| d.did != 8);
        assert_eq!(gone.iter().map(|d| d.did).collect::<Vec<_>>(), vec![8]);
        assert!(q.remove_here(|_| true).is_empty());
        assert_eq!(q.len(), 8);
        assert_eq!((q.on_disk(), q.durable_here()), (6, 2));
        let mut want = Vec::new();
        q.want(8, usize::MAX, &mut want);
        assert_eq!(want, vec![1, 2, 3, 4, 5, 6], "the stubs stayed first");
    }

    #[test]
    fn what_cannot_wait_on_disk_has_its_own_caps() {
        let mut q = PendingQueue::default();
        let cost = cost_of(&d(0));
        q.push_back(d(0));
        assert!(!q.fits(&d(0), 100, usize::MAX, 1, usize::MAX));
        assert!(q.fits(&d(5), 100, usize::MAX, 1, usize::MAX));
        assert!(!q.fits(&d(5), 1, usize::MAX, 1, usize::MAX), "total cap");
        assert!(!q.fits(&d(5), 100, cost, 10, usize::MAX), "total bytes");
    }
}
