//! A work queue's messages in memory and on disk. With a store, a queue's
//! backlog waits in the store's log only: the queue core keeps a 32-byte entry
//! per message, and this file keeps in memory just the messages near the head
//! (`limits.queue_read_ahead` / `_bytes`) and those in flight. A message
//! published past that budget is dropped from memory once its record is
//! written (its batch synced); the ones about to go out are read back ahead of
//! dispatch (`LoadRequest`, answered on the store's `loaded` channel). What
//! needs a message that is not in memory (a delivery, a dead letter) waits in
//! order until it is read back, so a queue's deliveries keep their order.
//! Without a store every message stays in memory.

use super::*;
use crate::queue::policy::message_bytes;
use crate::queue::{Action, DeadReason, Entry, MsgId};
use crate::store::{LoadRequest, Read};

/// Loads asked for what waits, at most, per queue and list (a mass expiry may
/// make many dead letters at once: they are read back this many at a time).
const WAITING_LOADS: usize = 256;

/// Dead letters of one queue waiting to be read back, at most: past it the
/// queue refuses publishes (0x97) until they are moved, so a publisher to a
/// full queue with `overflow = "dead-letter"` cannot grow the list.
pub(super) const DEAD_LETTERS_WAITING: usize = 10_000;

/// Admin requests that need messages read back are tried again as loads come
/// back, this many times; then they are answered with what is in memory.
pub(super) const ADMIN_TRIES: u8 = 8;

/// One queue's messages in memory, and the rest's way back from disk.
#[derive(Default)]
pub(super) struct Resident {
    messages: Map<MsgId, Arc<Message>>,
    /// What `messages` costs (`message_bytes` of each).
    bytes: u64,
    /// Messages of the queue (or waiting to be dead-lettered) not in memory.
    on_disk: usize,
    /// Asked of the store, not back yet.
    loading: Set<MsgId>,
    /// To ask for at the end of this turn.
    to_load: Vec<MsgId>,
    /// In order: deliveries waiting for their message to be read back (and
    /// those behind them, so a queue's order holds).
    waiting: VecDeque<(ClientId, Entry)>,
    /// Dead letters waiting for their message, in no set order (they do not
    /// hold deliveries up).
    dead: VecDeque<(Entry, DeadReason)>,
    /// Messages over the budget, dropped from memory once the batch with
    /// their record (this ticket) is synced.
    evict: VecDeque<(u64, MsgId)>,
}

impl Resident {
    pub(super) fn get(&self, id: MsgId) -> Option<&Arc<Message>> {
        self.messages.get(&id)
    }

    pub(super) fn contains(&self, id: MsgId) -> bool {
        self.messages.contains_key(&id)
    }

    /// Keep `m` in memory. `written`: the ticket of the batch with its
    /// record, when there is a store; over `budget` it goes from memory once
    /// that batch is synced.
    pub(super) fn keep(
        &mut self,
        id: MsgId,
        m: Arc<Message>,
        written: Option<u64>,
        budget: (usize, u64),
    ) {
        let over = self.messages.len() >= budget.0 || self.bytes >= budget.1;
        self.insert(id, m);
        if let (true, Some(t)) = (over, written) {
            self.evict.push_back((t, id));
        }
    }

    /// Into memory, counted in `bytes`.
    fn insert(&mut self, id: MsgId, m: Arc<Message>) {
        self.bytes += u64::from(message_bytes(&m));
        if let Some(old) = self.messages.insert(id, m) {
            self.bytes = self.bytes.saturating_sub(u64::from(message_bytes(&old)));
        }
    }

    /// Out of memory, uncounted from `bytes`.
    fn remove(&mut self, id: MsgId) -> Option<Arc<Message>> {
        let m = self.messages.remove(&id)?;
        self.bytes = self.bytes.saturating_sub(u64::from(message_bytes(&m)));
        Some(m)
    }

    /// A message leaves the queue (acknowledged, moved, dropped): from memory
    /// if it is there (returned), else from what waits on disk.
    pub(super) fn take(&mut self, id: MsgId) -> Option<Arc<Message>> {
        let m = self.remove(id);
        if m.is_none() {
            self.loading.remove(&id);
            self.on_disk = self.on_disk.saturating_sub(1);
        }
        m
    }

    /// Messages kept only until their record was written (`evict`), with
    /// batches up to `synced` now synced, leave memory unless `in_flight`.
    fn drop_written(&mut self, synced: u64, in_flight: impl Fn(MsgId) -> bool) {
        while self.evict.front().is_some_and(|(t, _)| *t <= synced) {
            let Some((_, id)) = self.evict.pop_front() else {
                break;
            };
            if !in_flight(id) && self.remove(id).is_some() {
                self.on_disk += 1;
            }
        }
    }

    /// Drop `id` from memory once `ticket` is synced, unless it is in flight
    /// then.
    pub(super) fn evict_later(&mut self, ticket: u64, id: MsgId) {
        self.evict.push_back((ticket, id));
    }

    /// A message recovered from the store: on disk only.
    pub(super) fn on_disk(&mut self) {
        self.on_disk += 1;
    }

    /// Read `id` back (at the end of the turn) unless it is here or asked for.
    pub(super) fn want(&mut self, id: MsgId) {
        if !self.messages.contains_key(&id) && self.loading.insert(id) {
            self.to_load.push(id);
        }
    }

    /// Must a delivery of `entry` wait (its message is not here, or a
    /// delivery before it waits)? Then it waits, and its message is asked for.
    fn park(&mut self, to: ClientId, entry: Entry) -> Option<(ClientId, Entry)> {
        if self.waiting.is_empty() && self.messages.contains_key(&entry.id) {
            return Some((to, entry));
        }
        if self.waiting.len() < WAITING_LOADS {
            self.want(entry.id);
        }
        self.waiting.push_back((to, entry));
        None
    }

    /// Must a dead letter wait for its message? Then it waits, and its message
    /// is asked for.
    fn park_dead(&mut self, entry: Entry, reason: DeadReason) -> Option<(Entry, DeadReason)> {
        if self.messages.contains_key(&entry.id) {
            return Some((entry, reason));
        }
        if self.dead.len() < WAITING_LOADS {
            self.want(entry.id);
        }
        self.dead.push_back((entry, reason));
        None
    }

    /// Dead letters waiting for their message.
    pub(super) fn dead_waiting(&self) -> usize {
        self.dead.len()
    }

    /// Messages in memory (the rest of the queue is on disk only).
    pub(super) fn in_memory(&self) -> usize {
        self.messages.len()
    }

    pub(super) fn nothing_waits(&self) -> bool {
        self.waiting.is_empty() && self.dead.is_empty()
    }
}

impl Router {
    /// `limits.queue_read_ahead` / `_bytes`.
    fn read_ahead_budget(&self) -> (usize, u64) {
        self.queues.read_ahead
    }

    /// The ticket of this turn's batch, once synced a message of queue `name`
    /// may leave memory (None without a store, or for a queue the store does
    /// not keep: nothing is dropped from memory then). That batch is submitted
    /// at the end of the turn even if the turn writes nothing (a refusal
    /// writes nothing): else the eviction would wait for whatever turn next
    /// writes something, for good if none does.
    pub(super) fn evict_ticket(&mut self, name: &str) -> Option<u64> {
        if self.qid(name) == 0 {
            return None;
        }
        self.store.as_mut().map(StoreLink::await_next)
    }

    /// Keep message `id` of queue `name` in memory, written in this turn's
    /// batch when there is a store.
    pub(super) fn keep_queued(&mut self, name: &str, id: MsgId, m: Arc<Message>) {
        let written = self.evict_ticket(name);
        let budget = self.read_ahead_budget();
        if let Some(q) = self.queues.by_name.get_mut(name) {
            q.mem.keep(id, m, written, budget);
        }
    }

    /// Deliveries and dead letters of queue `name`, each done now or, when
    /// its message must be read back (or something before it waits), later in
    /// order. Returns the deliveries done that the session could not take.
    pub(super) fn deliver_or_wait(
        &mut self,
        name: &Arc<str>,
        a: Action<ClientId>,
        now: Instant,
    ) -> Option<(ClientId, MsgId)> {
        let q = self.queues.by_name.get_mut(name)?;
        match a {
            Action::Deliver { to, entry } => {
                let (to, entry) = q.mem.park(to, entry)?;
                self.deliver_from_queue(name, to, entry, now)
            }
            // Dropped, not moved: nothing to read back for that.
            Action::DeadLetter { entry, reason } if q.dead_letter.is_none() => {
                self.dead_letter(name, entry, reason, now);
                None
            }
            Action::DeadLetter { entry, reason } => {
                let (entry, reason) = q.mem.park_dead(entry, reason)?;
                self.dead_letter(name, entry, reason, now);
                None
            }
            Action::Drop { .. } => None,
        }
    }

    /// Read ahead for queue `name`: ask for the next messages to go out that
    /// are on disk, while its budget has room (a quarter of it at least, so
    /// reads come in batches).
    pub(super) fn read_ahead(&mut self, name: &str) {
        let (count, bytes) = self.read_ahead_budget();
        let Some(q) = self.queues.by_name.get_mut(name) else {
            return;
        };
        if q.mem.on_disk == 0 || q.qid == 0 {
            return;
        }
        let limit = count + q.core.in_flight();
        let held = q.mem.messages.len() + q.mem.loading.len();
        let room = limit.saturating_sub(held);
        if room < count.div_ceil(4) || q.mem.bytes >= bytes / 4 * 3 {
            return;
        }
        let mut budget_bytes = bytes.saturating_sub(q.mem.bytes);
        let mut want = Vec::new();
        for e in q.core.upcoming().take(limit.saturating_mul(2)) {
            if want.len() >= room || budget_bytes == 0 {
                break;
            }
            if q.mem.messages.contains_key(&e.id) || q.mem.loading.contains(&e.id) {
                continue;
            }
            budget_bytes = budget_bytes.saturating_sub(u64::from(e.bytes));
            want.push(e.id);
        }
        for id in want {
            q.mem.want(id);
        }
    }

    /// End of a turn: ask the store for what the queues want read back (after
    /// this turn's batch, so every record asked for is written first).
    pub(super) fn submit_loads(&mut self) {
        let Some(st) = self.store.as_mut() else {
            return;
        };
        for q in self.queues.by_name.values_mut() {
            if !q.mem.to_load.is_empty() {
                st.handle.load(LoadRequest::Queue {
                    qid: q.qid,
                    mids: std::mem::take(&mut q.mem.to_load),
                });
            }
        }
    }

    /// The store synced batches up to `synced`: messages kept only until
    /// their record was written leave memory (unless in flight).
    pub(super) fn evict_written(&mut self, synced: u64) {
        for q in self.queues.by_name.values_mut() {
            let core = &q.core;
            q.mem.drop_written(synced, |id| core.holder(id).is_some());
        }
    }

    /// Messages read back by the store: into memory, then what waited for
    /// them is done in order. A message that could not be read is lost: it
    /// leaves its queue, counted and logged.
    pub(super) fn queue_loaded(&mut self, qid: u64, messages: Vec<(u64, Read)>, now: Instant) {
        let name = self
            .queues
            .by_name
            .iter()
            .find(|(_, q)| q.qid == qid && q.qid != 0)
            .map(|(n, _)| n.clone());
        let Some(name) = name else {
            // The queue is gone meanwhile; a parked admin request may still
            // wait for something.
            self.retry_admin(now, None);
            return;
        };
        let mut lost = Vec::new();
        let mut failed = false;
        if let Some(q) = self.queues.by_name.get_mut(&name) {
            for (id, r) in messages {
                if !q.mem.loading.remove(&id) {
                    // Gone meanwhile (acknowledged, purged).
                    continue;
                }
                match r {
                    Read::Message(m) => {
                        q.mem.on_disk = q.mem.on_disk.saturating_sub(1);
                        q.mem.insert(id, m);
                    }
                    // Still on disk: asked for again later, not now (the
                    // cause, e.g. no file descriptor left, may last a while).
                    Read::Failed => failed = true,
                    Read::Gone | Read::Damaged => {
                        // Lost only if the queue still had it (in its core, or
                        // waiting to be dead-lettered).
                        let dead_letter = q.mem.dead.iter().any(|(e, _)| e.id == id);
                        if q.core.lose(id).is_some() || dead_letter {
                            q.mem.on_disk = q.mem.on_disk.saturating_sub(1);
                            q.mem.waiting.retain(|(_, e)| e.id != id);
                            q.mem.dead.retain(|(e, _)| e.id != id);
                            lost.push(id);
                        }
                    }
                }
            }
        }
        if !lost.is_empty() {
            error!(queue = %name, lost = lost.len(), "work-queue messages could not be read back from the store: lost (counted in queue_unreadable)");
            self.metrics
                .queue_unreadable
                .fetch_add(lost.len() as u64, Ordering::Relaxed);
            let qid = self.qid(&name);
            self.queue_op(Op::QueueDone { qid, mids: lost });
        }
        self.drain_waiting(&name, now, !failed);
        self.retry_admin(now, Some(&name));
    }

    /// Reads that failed for a passing reason are asked for again (the
    /// periodic sweep): what waits at the head of each queue.
    pub(super) fn retry_waiting(&mut self, now: Instant) {
        let names: Vec<Arc<str>> = self
            .queues
            .by_name
            .iter()
            .filter(|(_, q)| !q.mem.nothing_waits() && q.mem.loading.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.drain_waiting(&name, now, true);
        }
    }

    /// Do what waits on queue `name`, in order, as far as its messages are in
    /// memory; ask for the next ones (unless `ask` is false: a read just
    /// failed).
    fn drain_waiting(&mut self, name: &Arc<str>, now: Instant, ask: bool) {
        let mut back: Vec<(ClientId, MsgId)> = Vec::new();
        loop {
            let Some(q) = self.queues.by_name.get_mut(name) else {
                return;
            };
            let Some((to, entry)) = q.mem.waiting.front() else {
                break;
            };
            let id = entry.id;
            // A delivery that is no longer this consumer's at this count (it
            // left, or its ack timeout passed, and the message went back)
            // is dropped unread: it must not ask for a message that may be
            // gone.
            let current = q
                .core
                .holder(id)
                .is_some_and(|(k, e)| k == to && e.deliveries == entry.deliveries);
            if !current {
                q.mem.waiting.pop_front();
                continue;
            }
            if !q.mem.messages.contains_key(&id) {
                // Evicted again, or never asked for (past WAITING_LOADS).
                if ask {
                    q.mem.want(id);
                }
                break;
            }
            let Some((to, entry)) = q.mem.waiting.pop_front() else {
                break;
            };
            if back.iter().any(|(c, _)| *c == to) {
                // Its session could not take an earlier one: this one goes
                // back too, behind it, so the order holds.
                back.push((to, id));
            } else {
                back.extend(self.deliver_from_queue(name, to, entry, now));
            }
        }
        // Dead letters whose message is here.
        let ready: Vec<(Entry, DeadReason)> = match self.queues.by_name.get_mut(name) {
            Some(q) if !q.mem.dead.is_empty() => {
                let (here, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut q.mem.dead)
                    .into_iter()
                    .partition(|(e, _)| q.mem.messages.contains_key(&e.id));
                q.mem.dead = rest;
                here.into()
            }
            _ => Vec::new(),
        };
        for (entry, reason) in ready {
            self.dead_letter(name, entry, reason, now);
        }
        if let Some(q) = self.queues.by_name.get_mut(name) {
            for (to, id) in back.into_iter().rev() {
                q.core.give_back(&to, id);
            }
            if q.mem.waiting.is_empty() && q.mem.waiting.capacity() > WAITING_LOADS {
                q.mem.waiting.shrink_to_fit();
            }
            if q.mem.dead.is_empty() && q.mem.dead.capacity() > WAITING_LOADS {
                q.mem.dead.shrink_to_fit();
            }
            if ask {
                let ids: Vec<MsgId> = q
                    .mem
                    .waiting
                    .iter()
                    .map(|(_, e)| e.id)
                    .take(WAITING_LOADS)
                    .chain(q.mem.dead.iter().map(|(e, _)| e.id).take(WAITING_LOADS))
                    .collect();
                for id in ids {
                    q.mem.want(id);
                }
            }
        }
        // Given-back messages and freed credit: dispatch again.
        let mut actions = Vec::new();
        if let Some(q) = self.queues.by_name.get_mut(name) {
            q.core.dispatch(now, &mut actions);
        }
        self.carry_out(name, actions, now);
    }
}
