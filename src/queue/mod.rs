//! A work queue: competing consumers, acknowledgements, counted retries with
//! backoff, visibility timeouts, dead-lettering, caps with an overflow policy,
//! deduplication and ordering keys. Pure: time is passed in, and it knows
//! messages by id and size only (payloads stay in the store's log; the router
//! reads them back when it delivers). It knows consumers by an opaque key `K` and
//! the credit the router gives each (prefetch capped by Receive Maximum).
//!
//! What a caller must do comes back as `Action`s: deliver a message to a
//! consumer, move one to the dead-letter queue, drop one. A message is counted
//! as delivered when it is handed to a consumer, so `deliveries` is what the
//! consumer sees as `tern-delivery-count`, and a message that keeps killing its
//! consumers reaches `max_deliveries` like one that is nacked.

mod dedup;
pub mod policy;
mod ready;

pub use dedup::Dedup;
pub use policy::{key_hash, Key, OrderingKey, Overflow, QueuePolicy};

use crate::deadlines::Deadlines;
use crate::hash::Map;
use ready::Ready;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A message's id in a queue: stable across redeliveries (the store's message
/// id, sent to consumers as `tern-message-id`).
pub type MsgId = u64;

/// What a queue keeps per message: 32 bytes, whatever the payload (a backlog
/// of a million costs 32 MB here and 32 MB in the store's index).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    pub id: MsgId,
    /// Unix milliseconds of its first enqueue, kept through redeliveries and
    /// dead-lettering (`tern-first-enqueued`, and the queue's oldest age).
    pub enqueued_ms: u64,
    /// What the message costs against `max_bytes` (topic, payload, properties).
    pub bytes: u32,
    /// Ordering key hash (see `policy::key_hash`); unused without `ordering`.
    pub key: Key,
    /// Past this it is dead-lettered as `expired` (queue TTL or v5 Message
    /// Expiry, whichever comes first), in `TICK`s after the queues' epoch,
    /// rounded up (0: never). See `Queue::expiry`.
    pub expires: u32,
    /// Times it was handed to a consumer.
    pub deliveries: u16,
}

/// The unit of `Entry::expires`: a u32 of them spans 13 years of uptime, and
/// expiry is checked to a tenth of a second (MQTT's Message Expiry counts
/// seconds).
const TICK: Duration = Duration::from_millis(100);

impl Entry {
    /// When it expires, given the queues' epoch.
    pub fn expires_at(&self, epoch: Instant) -> Option<Instant> {
        (self.expires != 0).then(|| epoch + TICK * self.expires)
    }

    fn expired(&self, epoch: Instant, now: Instant) -> bool {
        self.expires_at(epoch).is_some_and(|t| t <= now)
    }
}

/// `at` as `Entry::expires` counts it after `epoch`.
pub fn expiry_ticks(epoch: Instant, at: Option<Instant>) -> u32 {
    let Some(at) = at else {
        return 0;
    };
    let ms = at.saturating_duration_since(epoch).as_millis();
    let ticks = ms.div_ceil(TICK.as_millis()).max(1);
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Why a message left for the dead-letter queue (`tern-dead-letter-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    MaxDeliveries,
    Rejected,
    Expired,
    Overflow,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::MaxDeliveries => "max-deliveries",
            DeadReason::Rejected => "rejected",
            DeadReason::Expired => "expired",
            DeadReason::Overflow => "overflow",
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<K> {
    /// Send the message to this consumer (its `deliveries` already counts it).
    Deliver { to: K, entry: Entry },
    /// Move the message to the dead-letter queue.
    DeadLetter { entry: Entry, reason: DeadReason },
    /// The message is gone (overflow `drop-head`): free it, count it.
    Drop { entry: Entry },
}

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Taken,
    /// Its `message-id` was seen within the dedup window: acknowledge, do not
    /// keep.
    Duplicate,
    /// Over `max_length` / `max_bytes` with `overflow = "reject"` (or nothing
    /// ready to make room): v5 publishers get 0x97.
    Refused,
}

/// Counters since start (the store does not keep them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub enqueued: u64,
    pub acked: u64,
    pub nacked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    pub dropped: u64,
    pub duplicates: u64,
    pub refused: u64,
}

/// A queue's numbers now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Waiting: ready or waiting for a retry.
    pub depth: usize,
    pub in_flight: usize,
    pub bytes: u64,
    pub consumers: usize,
    /// Unix milliseconds of the first enqueue of the oldest waiting message.
    pub oldest_enqueued_ms: Option<u64>,
    pub counters: Counters,
}

struct Consumer<K> {
    key: K,
    credit: u16,
    held: u16,
    /// It could not take a message (`give_back`): nothing more until it
    /// acknowledges or refuses one.
    paused: bool,
}

struct InFlight<K> {
    consumer: K,
    entry: Entry,
}

pub struct Queue<K> {
    policy: QueuePolicy,
    ready: Ready,
    /// Nacked messages waiting for their retry delay.
    delayed: Map<MsgId, Entry>,
    retries: Deadlines<MsgId>,
    in_flight: Map<MsgId, InFlight<K>>,
    /// Ack timeouts of messages in flight.
    timeouts: Deadlines<MsgId>,
    consumers: Vec<Consumer<K>>,
    /// Where the search for the next consumer starts (ties go round-robin).
    next_consumer: usize,
    bytes: u64,
    dedup: Option<Dedup>,
    counters: Counters,
    /// What `Entry::expires` counts from: the same for every queue of a
    /// router, so an entry keeps its expiry when it moves between queues.
    epoch: Instant,
}

impl<K: Clone + Eq + Hash> Queue<K> {
    pub fn new(policy: QueuePolicy, epoch: Instant) -> Queue<K> {
        Queue {
            epoch,
            ready: Ready::new(policy.ordering.is_some()),
            dedup: policy
                .dedup_window
                .map(|w| Dedup::new(w, policy.dedup_max_ids)),
            policy,
            delayed: Map::default(),
            retries: Deadlines::new(),
            in_flight: Map::default(),
            timeouts: Deadlines::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            bytes: 0,
            counters: Counters::default(),
        }
    }

    /// A message the queue was offered and did not take for a reason of the
    /// caller's (a bridge's QoS 0 while its link is down): counted as dropped.
    pub fn count_dropped(&mut self) {
        self.counters.dropped += 1;
    }

    pub fn policy(&self) -> &QueuePolicy {
        &self.policy
    }

    /// Take a new policy (a reload). Caps, retries, timeouts and codes apply
    /// from the next decision on; what the queue holds stays even when it is
    /// now over a cap (nothing is dropped by a reload). The ordering key keys
    /// entries as they are taken, so it changes only while the queue is empty:
    /// otherwise the old one is kept and `Err` says so. A new dedup window
    /// starts with no ids remembered.
    pub fn set_policy(&mut self, mut policy: QueuePolicy) -> Result<(), &'static str> {
        let mut kept = Ok(());
        if policy.ordering != self.policy.ordering {
            if self.is_empty() {
                self.ready = Ready::new(policy.ordering.is_some());
            } else {
                policy.ordering = self.policy.ordering.clone();
                kept = Err("ordering_key changes only while the queue is empty: kept the old one");
            }
        }
        if (policy.dedup_window, policy.dedup_max_ids)
            != (self.policy.dedup_window, self.policy.dedup_max_ids)
        {
            self.dedup = policy
                .dedup_window
                .map(|w| Dedup::new(w, policy.dedup_max_ids));
        }
        self.policy = policy;
        kept
    }

    /// `at` as an entry of this queue keeps it (`Entry::expires`).
    pub fn expiry(&self, at: Option<Instant>) -> u32 {
        expiry_ticks(self.epoch, at)
    }

    /// Messages held: ready, delayed and in flight.
    pub fn len(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take a published message (`e.deliveries` 0), unless its `dedup_id` was
    /// seen within the window or it does not fit. Making room may drop or
    /// dead-letter the oldest ready messages (`overflow`).
    pub fn enqueue(
        &mut self,
        mut e: Entry,
        dedup_id: Option<&str>,
        now: Instant,
        out: &mut Vec<Action<K>>,
    ) -> Enqueued {
        if let (Some(d), Some(id)) = (self.dedup.as_mut(), dedup_id) {
            if d.seen(id, now) {
                self.counters.duplicates += 1;
                return Enqueued::Duplicate;
            }
        }
        if !self.make_room(e.bytes, out) {
            self.counters.refused += 1;
            return Enqueued::Refused;
        }
        // Remembered only once taken: a refused message's retry is new.
        if let (Some(d), Some(id)) = (self.dedup.as_mut(), dedup_id) {
            d.record(id, now);
        }
        if let Some(ttl) = self.policy.message_ttl {
            let t = now + ttl;
            let at = e.expires_at(self.epoch).map_or(t, |x| x.min(t));
            e.expires = self.expiry(Some(at));
        }
        e.deliveries = 0;
        self.bytes += u64::from(e.bytes);
        self.counters.enqueued += 1;
        self.ready.push_back(e);
        Enqueued::Taken
    }

    /// Room for one more message of `bytes`: per the overflow policy, by taking
    /// the oldest ready messages out. False when it cannot be made.
    fn make_room(&mut self, bytes: u32, out: &mut Vec<Action<K>>) -> bool {
        let fits = |q: &Self| {
            q.len() < q.policy.max_length && q.bytes + u64::from(bytes) <= q.policy.max_bytes
        };
        if u64::from(bytes) > self.policy.max_bytes {
            return false;
        }
        // What cannot be made room for even with every ready message gone is
        // refused before anything is dropped.
        // (In flight and delayed are few: bounded by the consumers' credit and
        // the nacks waiting; the ready ones may be millions.)
        if !fits(self) {
            let fixed_bytes: u64 = self
                .in_flight
                .values()
                .map(|f| u64::from(f.entry.bytes))
                .chain(self.delayed.values().map(|e| u64::from(e.bytes)))
                .sum();
            let fixed_len = self.in_flight.len() + self.delayed.len();
            if fixed_len >= self.policy.max_length
                || fixed_bytes + u64::from(bytes) > self.policy.max_bytes
            {
                return false;
            }
        }
        while !fits(self) {
            if self.policy.overflow == Overflow::Reject {
                return false;
            }
            let Some(old) = self.ready.pop_oldest() else {
                return false;
            };
            self.forget_ready(old);
            if self.policy.overflow == Overflow::DropHead {
                self.counters.dropped += 1;
                out.push(Action::Drop { entry: old });
            } else {
                self.dead_letter(old, DeadReason::Overflow, out);
            }
        }
        true
    }

    /// Recovery: a message that was in the queue (ready now, with the deliveries
    /// it had), in enqueue order. No caps: it was accepted before. Its dedup id
    /// (taken at `taken_at`) is remembered again, so a publisher's retry after a
    /// crash is still recognised while the message is held.
    pub fn restore(&mut self, e: Entry, dedup_id: Option<&str>, taken_at: Instant) {
        if let (Some(d), Some(id)) = (self.dedup.as_mut(), dedup_id) {
            d.record(id, taken_at);
        }
        self.bytes += u64::from(e.bytes);
        self.ready.push_back(e);
    }

    /// A consumer joins (or changes its credit: `prefetch` capped by its
    /// Receive Maximum, computed by the caller).
    pub fn attach(&mut self, consumer: K, credit: u16) {
        let credit = credit.min(self.policy.prefetch).max(1);
        match self.consumers.iter_mut().find(|c| c.key == consumer) {
            Some(c) => c.credit = credit,
            None => self.consumers.push(Consumer {
                key: consumer,
                credit,
                held: 0,
                paused: false,
            }),
        }
    }

    /// A consumer left (unsubscribed, disconnected, died): what it held goes back
    /// to the queue for another consumer, or to the dead-letter queue if it has
    /// been delivered `max_deliveries` times.
    pub fn detach(&mut self, consumer: &K, now: Instant, out: &mut Vec<Action<K>>) {
        self.consumers.retain(|c| c.key != *consumer);
        let mut held: Vec<MsgId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == *consumer)
            .map(|(id, _)| *id)
            .collect();
        // Back in their order: each goes to the front, so the newest first.
        held.sort_unstable_by(|a, b| b.cmp(a));
        for id in held {
            if let Some(f) = self.take_in_flight(id) {
                self.come_back(f.entry, now, out);
            }
        }
    }

    /// Is `consumer` attached (taking messages, or stopped with some held)?
    pub fn is_consumer(&self, consumer: &K) -> bool {
        self.consumers.iter().any(|c| c.key == *consumer)
    }

    /// Consumers attached now.
    pub fn consumers(&self) -> usize {
        self.consumers.len()
    }

    /// Take `id` out of flight if `consumer` holds it (a late answer from a
    /// consumer it was taken from is ignored).
    fn take_own(&mut self, consumer: &K, id: MsgId) -> Option<InFlight<K>> {
        if self.in_flight.get(&id)?.consumer != *consumer {
            return None;
        }
        self.take_in_flight(id)
    }

    fn take_in_flight(&mut self, id: MsgId) -> Option<InFlight<K>> {
        let f = self.in_flight.remove(&id)?;
        self.timeouts.cancel(&id);
        if let Some(c) = self.consumers.iter_mut().find(|c| c.key == f.consumer) {
            c.held = c.held.saturating_sub(1);
            c.paused = false;
        }
        // A stopped consumer leaves with its last message.
        self.consumers.retain(|c| c.credit > 0 || c.held > 0);
        Some(f)
    }

    /// A message that was out came back unacknowledged (its consumer left, or its
    /// ack timeout passed): to the dead-letter queue once delivered
    /// `max_deliveries` times or expired, else first in line again.
    fn come_back(&mut self, e: Entry, now: Instant, out: &mut Vec<Action<K>>) {
        if e.deliveries >= self.policy.max_deliveries {
            self.forget(e);
            self.dead_letter(e, DeadReason::MaxDeliveries, out);
        } else if e.expired(self.epoch, now) {
            self.forget(e);
            self.counters.expired += 1;
            self.dead_letter(e, DeadReason::Expired, out);
        } else {
            self.counters.redelivered += 1;
            self.ready.push_front(e);
        }
    }

    /// `e`, which was out (in flight or waiting for a retry), leaves the queue
    /// for good: its bytes, and its key is free for the next message.
    fn forget(&mut self, e: Entry) {
        self.bytes = self.bytes.saturating_sub(u64::from(e.bytes));
        self.ready.release(e.key);
    }

    /// `e`, taken from the ready messages (never out), leaves the queue: its
    /// key may still be busy with another message that is out.
    fn forget_ready(&mut self, e: Entry) {
        self.bytes = self.bytes.saturating_sub(u64::from(e.bytes));
    }

    fn dead_letter(&mut self, e: Entry, reason: DeadReason, out: &mut Vec<Action<K>>) {
        self.counters.dead_lettered += 1;
        out.push(Action::DeadLetter { entry: e, reason });
    }

    /// `id`, handed to `consumer`, expired before it could be sent: it goes to
    /// the dead-letter queue as `expired`.
    pub fn expire(&mut self, consumer: &K, id: MsgId, out: &mut Vec<Action<K>>) -> bool {
        let Some(f) = self.take_own(consumer, id) else {
            return false;
        };
        self.forget(f.entry);
        self.counters.expired += 1;
        self.dead_letter(f.entry, DeadReason::Expired, out);
        true
    }

    /// The consumer stops taking new messages (it unsubscribed) but keeps
    /// those it holds until it acknowledges them; it leaves once it holds none.
    pub fn stop(&mut self, consumer: &K) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.key == *consumer) {
            c.credit = 0;
        }
        self.consumers.retain(|c| c.credit > 0 || c.held > 0);
    }

    /// The consumer could not take `id` after all (its session dropped it): it
    /// goes back first in line, not counted as a delivery, and the consumer gets
    /// nothing more until it acknowledges or refuses one of those it holds.
    pub fn give_back(&mut self, consumer: &K, id: MsgId) -> bool {
        let Some(mut f) = self.take_own(consumer, id) else {
            return false;
        };
        if let Some(c) = self.consumers.iter_mut().find(|c| c.key == *consumer) {
            c.paused = c.held > 0;
        }
        f.entry.deliveries = f.entry.deliveries.saturating_sub(1);
        self.ready.push_front(f.entry);
        true
    }

    /// The consumer acknowledged `id`: it is gone. Returns it (the caller frees
    /// it in the store); None when `id` is not this consumer's (a late ack after
    /// its ack timeout gave the message to another).
    pub fn ack(&mut self, consumer: &K, id: MsgId) -> Option<Entry> {
        let f = self.take_own(consumer, id)?;
        self.forget(f.entry);
        self.counters.acked += 1;
        Some(f.entry)
    }

    /// The consumer refused `id` (v5 PUBACK / PUBREC >= 0x80 with `code`): a reject
    /// code or the last allowed delivery dead-letters it; otherwise it is
    /// delivered again after the retry delay. False when `id` is not this
    /// consumer's.
    pub fn nack(
        &mut self,
        consumer: &K,
        id: MsgId,
        code: u8,
        now: Instant,
        out: &mut Vec<Action<K>>,
    ) -> bool {
        let Some(f) = self.take_own(consumer, id) else {
            return false;
        };
        self.counters.nacked += 1;
        let e = f.entry;
        if self.policy.rejects(code) {
            self.forget(e);
            self.dead_letter(e, DeadReason::Rejected, out);
        } else if e.deliveries >= self.policy.max_deliveries {
            self.forget(e);
            self.dead_letter(e, DeadReason::MaxDeliveries, out);
        } else {
            // Its key stays busy while it waits: nothing of its key overtakes it.
            let at = now + self.policy.retry_after(e.deliveries);
            self.delayed.insert(id, e);
            self.retries.schedule(at, id);
        }
        true
    }

    /// Hand ready messages to consumers with credit, the least busy first (ties
    /// in turn). Expired messages met on the way are dead-lettered.
    pub fn dispatch(&mut self, now: Instant, out: &mut Vec<Action<K>>) {
        while let Some(ci) = self.pick_consumer() {
            let Some(mut e) = self.ready.pop() else {
                return;
            };
            if e.expired(self.epoch, now) {
                self.forget(e);
                self.counters.expired += 1;
                self.dead_letter(e, DeadReason::Expired, out);
                continue;
            }
            // Delivered max_deliveries times already (it was out when the broker
            // stopped): it does not go out again.
            if e.deliveries >= self.policy.max_deliveries {
                self.forget(e);
                self.dead_letter(e, DeadReason::MaxDeliveries, out);
                continue;
            }
            e.deliveries = e.deliveries.saturating_add(1);
            let Some(c) = self.consumers.get_mut(ci) else {
                return;
            };
            c.held += 1;
            let to = c.key.clone();
            self.next_consumer = ci + 1;
            if let Some(t) = self.policy.ack_timeout {
                self.timeouts.schedule(now + t, e.id);
            }
            self.in_flight.insert(
                e.id,
                InFlight {
                    consumer: to.clone(),
                    entry: e,
                },
            );
            out.push(Action::Deliver { to, entry: e });
        }
    }

    /// The consumer with room and the fewest messages held, searching from
    /// `next_consumer` so equals take turns.
    fn pick_consumer(&self) -> Option<usize> {
        let n = self.consumers.len();
        (0..n)
            .map(|i| (self.next_consumer + i) % n)
            .filter(|&i| {
                self.consumers
                    .get(i)
                    .is_some_and(|c| c.held < c.credit && !c.paused)
            })
            .min_by_key(|&i| self.consumers.get(i).map_or(u16::MAX, |c| c.held))
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let head = self.ready.front().and_then(|e| e.expires_at(self.epoch));
        [self.retries.next(), self.timeouts.next(), head]
            .into_iter()
            .flatten()
            .min()
    }

    /// Retries that are due become ready (first in line), ack timeouts give
    /// their message to another consumer, expired messages at the head are
    /// dead-lettered; then `dispatch`.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action<K>>) {
        let epoch = self.epoch;
        while let Some(id) = self.retries.pop_due(now) {
            if let Some(e) = self.delayed.remove(&id) {
                self.counters.redelivered += 1;
                self.ready.push_front(e);
            }
        }
        while let Some(id) = self.timeouts.pop_due(now) {
            if let Some(f) = self.take_in_flight(id) {
                self.come_back(f.entry, now, out);
            }
        }
        while let Some(e) = self
            .ready
            .front()
            .copied()
            .filter(|e| e.expired(epoch, now))
        {
            self.ready.pop();
            self.forget(e);
            self.counters.expired += 1;
            self.dead_letter(e, DeadReason::Expired, out);
        }
        self.dispatch(now, out);
    }

    /// Dead-letter every expired ready or delayed message, wherever it is (the
    /// head check of `tick` finds those in arrival order; this the rest).
    pub fn sweep_expired(&mut self, now: Instant, out: &mut Vec<Action<K>>) {
        let epoch = self.epoch;
        let mut gone = Vec::new();
        self.ready
            .remove_where(|e| e.expired(epoch, now), &mut gone);
        for e in gone {
            self.forget_ready(e);
            self.counters.expired += 1;
            self.dead_letter(e, DeadReason::Expired, out);
        }
        let delayed: Vec<MsgId> = self
            .delayed
            .values()
            .filter(|e| e.expired(epoch, now))
            .map(|e| e.id)
            .collect();
        for id in delayed {
            self.retries.cancel(&id);
            if let Some(e) = self.delayed.remove(&id) {
                self.forget(e);
                self.counters.expired += 1;
                self.dead_letter(e, DeadReason::Expired, out);
            }
        }
    }

    /// The ready messages, about in the order they will go out (for the
    /// read-ahead of their payloads).
    pub fn upcoming(&self) -> impl Iterator<Item = &Entry> {
        self.ready.upcoming()
    }

    /// Who holds message `id` and its entry, while it is in flight.
    pub fn holder(&self, id: MsgId) -> Option<(&K, &Entry)> {
        self.in_flight.get(&id).map(|f| (&f.consumer, &f.entry))
    }

    /// Message `id` cannot be read back from the store (its record is
    /// damaged): it leaves the queue wherever it waits, counted as dropped.
    /// O(ready messages) when it is ready: a rare event.
    pub fn lose(&mut self, id: MsgId) -> Option<Entry> {
        let e = if let Some(f) = self.take_in_flight(id) {
            self.forget(f.entry);
            f.entry
        } else if let Some(e) = self.delayed.remove(&id) {
            self.retries.cancel(&id);
            self.forget(e);
            e
        } else {
            let mut out = Vec::new();
            self.ready.remove_where(|e| e.id == id, &mut out);
            let e = out.pop()?;
            self.forget_ready(e);
            e
        };
        self.counters.dropped += 1;
        Some(e)
    }

    /// How many messages are in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Up to `n` ready messages, in the order they would go out (FIFO queues;
    /// with ordering keys, in no set order).
    pub fn peek(&self, n: usize) -> Vec<Entry> {
        self.ready.iter().take(n).copied().collect()
    }

    /// Put a message taken by `take_ready` back, first in line.
    pub fn put_back(&mut self, e: Entry) {
        self.bytes += u64::from(e.bytes);
        self.ready.put_back(e);
    }

    /// Take up to `n` ready messages out, oldest first (a redrive moves them to
    /// another queue). Returns them for the caller to move or free.
    pub fn take_ready(&mut self, n: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(e) = self.ready.pop_oldest() else {
                break;
            };
            self.forget_ready(e);
            out.push(e);
        }
        out
    }

    /// Remove every waiting message (ready and delayed; those in flight stay
    /// with their consumers). Returns them for the caller to free.
    pub fn purge(&mut self) -> Vec<Entry> {
        let mut gone = Vec::new();
        self.ready.remove_where(|_| true, &mut gone);
        for e in &gone {
            self.forget_ready(*e);
        }
        let delayed: Vec<Entry> = self.delayed.drain().map(|(_, e)| e).collect();
        for e in delayed {
            self.retries.cancel(&e.id);
            self.forget(e);
            gone.push(e);
        }
        gone
    }

    pub fn stats(&self) -> Stats {
        Stats {
            depth: self.ready.len() + self.delayed.len(),
            in_flight: self.in_flight.len(),
            bytes: self.bytes,
            consumers: self.consumers.len(),
            oldest_enqueued_ms: self
                .delayed
                .values()
                .map(|e| e.enqueued_ms)
                .chain(self.ready.oldest_enqueued_ms())
                .min(),
            counters: self.counters,
        }
    }
}

#[cfg(test)]
mod tests;
