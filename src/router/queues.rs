//! Work queues inside the router: the queues by name with their topic bindings,
//! a published message taken by the queues bound to its topic, consumers
//! (`$queue/<name>` subscriptions) attached with their credit, the queue core's
//! actions carried out (a delivery into the consumer's session with
//! `tern-message-id` and `tern-delivery-count`, a move to the dead-letter queue
//! with its reason), and how each delivery ended fed back to its queue.
//!
//! The queue core (`crate::queue`) decides; this file only moves messages and
//! writes what changed to the store: a queue's name (`QueueDecl`), each message
//! taken (`QueueMsg`, so the publisher's acknowledgement waits for its sync like
//! any durable write), each delivery count (`QueueCount`) and each message gone
//! (`QueueDone`). Recovery rebuilds the queues with their messages and counts;
//! what was in flight at a crash is ready again. Which messages are also held
//! in memory, and how the rest is read back, is `backlog.rs`.

use super::backlog::{Resident, DEAD_LETTERS_WAITING};
use super::*;
use crate::config::QueueConfig;
use crate::protocol::{UserProperties, UserPropertiesBuilder};
use crate::queue::policy::message_bytes;
use crate::queue::{Action, DeadReason, Enqueued, Entry, MsgId, Queue, QueuePolicy};
use crate::session::{QueueOutcome, QueueTag};
use crate::store::queue_index::RecoveredQueue;
use crate::subscriptions::SubscriptionTree;

pub(super) struct QueueState {
    pub(super) core: Queue<ClientId>,
    /// The store's id for it; 0 without a store.
    pub(super) qid: u64,
    /// Where its dead letters go; None: they are dropped (and counted).
    pub(super) dead_letter: Option<Arc<str>>,
    /// Its messages in memory (all of them without a store).
    pub(super) mem: Resident,
    /// Each consumer's QoS: 1, or 2 when its subscription asked for it.
    qos: Map<ClientId, QoS>,
    /// Declared in the config (or the dead-letter queue of one): kept while
    /// idle. Others (created by a subscription) go once idle and empty.
    pub(super) declared: bool,
    /// The filters its config binds (a reload unbinds those it drops; those
    /// subscriptions bound stay).
    pub(super) config_filters: Vec<Arc<str>>,
    /// None: it takes QoS 0 messages like any. Some(open): it takes them only
    /// while open (a bridge's buffer without `buffer_qos0`: open while the
    /// link is up), and drops them (counted) otherwise.
    pub(super) qos0_gate: Option<bool>,
}

/// Every queue, and which topics feed which queue.
pub(super) struct Queues {
    pub(super) by_name: Map<Arc<str>, QueueState>,
    /// Topic filter -> the queues bound to it.
    bindings: SubscriptionTree<Arc<str>, ()>,
    /// The filters bound so far, per queue (a filter is bound once).
    bound: Set<(Arc<str>, Arc<str>)>,
    /// How many filters each queue has.
    bindings_of: Map<Arc<str>, usize>,
    next_id: MsgId,
    /// The next store id of a queue (0: no store).
    next_qid: u64,
    max_queues: usize,
    /// `limits.auto_queue_max_length` / `_bytes`: the caps of a queue created
    /// by a subscription.
    auto_caps: (usize, u64),
    topic_limits: TopicLimits,
    /// Reused for matching a topic against the bindings.
    scratch: Matches<Arc<str>, ()>,
    /// `limits.queue_read_ahead` / `_bytes`.
    pub(super) read_ahead: (usize, u64),
    /// What every queue's entries count their expiry from.
    epoch: Instant,
    /// Queue deliveries that ended this turn (from sessions' events), acted on
    /// at its end (`queue_turn_end`).
    pub(super) ended: Vec<(ClientId, QueueTag, QueueOutcome)>,
    /// The refusal code that sent a message to its dead-letter queue, by
    /// message id, until the dead letter is written (it may wait for a read):
    /// the dead letter carries it (`tern-refused-code`). Capped (`REFUSALS`).
    pub(super) refusals: Map<MsgId, u8>,
}

/// Why a queue could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoQueue {
    /// `limits.max_queues` reached.
    Full,
}

/// Topic filters one queue may be bound to.
const MAX_BINDINGS: usize = 256;

/// The user properties a queue's delivery or dead letter carries.
const MESSAGE_ID: &str = "tern-message-id";
const DELIVERY_COUNT: &str = "tern-delivery-count";
const DEAD_LETTER_REASON: &str = "tern-dead-letter-reason";
const QUEUE: &str = "tern-queue";
const FIRST_ENQUEUED: &str = "tern-first-enqueued";
/// On a dead letter: the reason code of the refusal that ended its last
/// delivery (a consumer's nack, or a bridge's remote broker's PUBACK).
const REFUSED_CODE: &str = "tern-refused-code";
/// Refusal codes remembered for dead letters waiting to be written (each is
/// taken when its dead letter is; the cap only bounds what a purge between
/// the two leaves behind).
const REFUSALS: usize = 20_000;

impl Queues {
    /// The limits of `config` that apply to every queue (a reload).
    pub(super) fn apply_limits(&mut self, config: &Config) {
        self.max_queues = config.limits.max_queues;
        self.auto_caps = (
            config.limits.auto_queue_max_length,
            config.limits.auto_queue_max_bytes,
        );
        self.topic_limits = config.topic_limits();
        self.read_ahead = (
            config.limits.queue_read_ahead,
            config.limits.queue_read_ahead_bytes,
        );
    }

    /// The queues the config declares, each with its dead-letter queue.
    pub(super) fn from_config(config: &Config, epoch: Instant) -> Queues {
        let mut q = Queues {
            epoch,
            by_name: Map::default(),
            bindings: SubscriptionTree::new(),
            bound: Set::default(),
            bindings_of: Map::default(),
            next_id: 1,
            next_qid: 0,
            max_queues: config.limits.max_queues,
            auto_caps: (
                config.limits.auto_queue_max_length,
                config.limits.auto_queue_max_bytes,
            ),
            topic_limits: config.topic_limits(),
            read_ahead: (
                config.limits.queue_read_ahead,
                config.limits.queue_read_ahead_bytes,
            ),
            scratch: Matches::default(),
            ended: Vec::new(),
            refusals: Map::default(),
        };
        // Config::validate checked names, filters and the count. Declared queues
        // first: one may be another's dead-letter queue with its own options.
        let declared = config.all_queues();
        for qc in &declared {
            let _ = q.declare(qc);
            for f in &qc.topics {
                let _ = q.bind(&qc.name, f);
            }
            if let Some(s) = q.by_name.get_mut(qc.name.as_str()) {
                s.config_filters = qc.topics.iter().map(|f| Arc::from(f.as_str())).collect();
            }
        }
        for qc in &declared {
            if let Some(dlq) = qc.dead_letter_name() {
                if !q.by_name.contains_key(dlq.as_str()) {
                    let _ = q.declare(&dead_letter_queue(&dlq));
                }
            }
        }
        for s in q.by_name.values_mut() {
            s.declared = true;
        }
        q
    }

    /// Create `qc.name` unless it exists.
    pub(super) fn declare(&mut self, qc: &QueueConfig) -> Result<(), NoQueue> {
        if self.by_name.contains_key(qc.name.as_str()) {
            return Ok(());
        }
        if self.by_name.len() >= self.max_queues {
            return Err(NoQueue::Full);
        }
        let qid = if self.next_qid == 0 {
            0
        } else {
            self.next_qid += 1;
            self.next_qid - 1
        };
        self.by_name.insert(
            Arc::from(qc.name.as_str()),
            QueueState {
                qid,
                core: Queue::new(QueuePolicy::from_config(qc), self.epoch),
                dead_letter: qc.dead_letter_name().map(Arc::from),
                mem: Resident::default(),
                qos: Map::default(),
                declared: false,
                config_filters: Vec::new(),
                // Closed until its link says it is up.
                qos0_gate: qc.qos0_while_up.then_some(false),
            },
        );
        Ok(())
    }

    /// The config of a queue a subscription creates: defaults with the small
    /// caps of `limits.auto_queue_*`.
    fn auto_queue(&self, name: &str) -> QueueConfig {
        let mut qc = QueueConfig::named(name);
        (qc.max_length, qc.max_bytes) = self.auto_caps;
        qc
    }

    /// Remove queue `name` and its bindings; its store id.
    fn remove(&mut self, name: &Arc<str>) -> Option<u64> {
        let q = self.by_name.remove(name)?;
        let filters: Vec<Arc<str>> = self
            .bound
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect();
        for f in filters {
            self.bound.remove(&(name.clone(), f.clone()));
            if let Ok(spec) = FilterSpec::parse(&f, self.topic_limits) {
                self.bindings.remove(&spec, name);
            }
        }
        self.bindings_of.remove(name);
        Some(q.qid)
    }

    /// Bind topic filter `filter` to queue `name` (once): Some(true) when new,
    /// Some(false) when it was bound already. None when the queue has
    /// `MAX_BINDINGS` already (bindings made by subscriptions stay: without a
    /// cap a client could grow them without end).
    pub(super) fn bind(&mut self, name: &str, filter: &str) -> Option<bool> {
        let (Some((name, _)), Ok(spec)) = (
            self.by_name.get_key_value(name),
            FilterSpec::parse(filter, self.topic_limits),
        ) else {
            return None;
        };
        let key = (name.clone(), spec.filter.clone());
        if self.bound.contains(&key) {
            return Some(false);
        }
        let n = self.bindings_of.entry(name.clone()).or_default();
        if *n >= MAX_BINDINGS {
            return None;
        }
        *n += 1;
        self.bound.insert(key);
        self.bindings.insert(&spec, name.clone(), ());
        Some(true)
    }

    /// Unbind topic filter `filter` from queue `name`, if bound.
    pub(super) fn unbind(&mut self, name: &str, filter: &str) {
        let Some((name, _)) = self.by_name.get_key_value(name) else {
            return;
        };
        let name = name.clone();
        let Ok(spec) = FilterSpec::parse(filter, self.topic_limits) else {
            return;
        };
        if self.bound.remove(&(name.clone(), spec.filter.clone())) {
            self.bindings.remove(&spec, &name);
            if let Some(n) = self.bindings_of.get_mut(&name) {
                *n = n.saturating_sub(1);
            }
        }
    }

    fn next_id(&mut self) -> MsgId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Set the gauge of messages in all queues (end of a turn).
    pub(super) fn publish_gauge(&self, metrics: &Metrics) {
        if !self.by_name.is_empty() {
            let n: usize = self.by_name.values().map(|q| q.core.len()).sum();
            metrics.queue_messages.store(n as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn exists(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub(super) fn names(&self) -> Vec<Arc<str>> {
        self.by_name.keys().cloned().collect()
    }

    /// A queue's numbers, its dead-letter queue and how many of its messages
    /// are in memory.
    pub(super) fn stats(
        &self,
        name: &str,
    ) -> Option<(crate::queue::Stats, Option<Arc<str>>, usize)> {
        let q = self.by_name.get(name)?;
        Some((q.core.stats(), q.dead_letter.clone(), q.mem.in_memory()))
    }

    /// The next `n` ready messages of `name`, left where they are, with
    /// those in memory (None: on disk only).
    pub(super) fn peek(&self, name: &str, n: usize) -> Option<Vec<(Entry, Option<Arc<Message>>)>> {
        let q = self.by_name.get(name)?;
        Some(
            q.core
                .peek(n)
                .into_iter()
                .map(|e| (e, q.mem.get(e.id).cloned()))
                .collect(),
        )
    }

    /// Remove the waiting messages of `name`: its store id and what went.
    pub(super) fn purge(&mut self, name: &str) -> Option<(u64, Vec<Entry>)> {
        let q = self.by_name.get_mut(name)?;
        let gone = q.core.purge();
        for e in &gone {
            q.mem.take(e.id);
        }
        Some((q.qid, gone))
    }

    /// Take up to `n` ready messages of `name` out, with their messages: as
    /// many as are in memory from the head (the first on disk stays).
    pub(super) fn take_ready(&mut self, name: &str, n: usize) -> Vec<(Entry, Arc<Message>)> {
        let Some(q) = self.by_name.get_mut(name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < n {
            let Some(e) = q.core.take_ready(1).pop() else {
                break;
            };
            if !q.mem.contains(e.id) {
                q.core.put_back(e);
                break;
            }
            if let Some(m) = q.mem.take(e.id) {
                out.push((e, m));
            }
        }
        out
    }

    /// Undo `take_ready` for these: first in line again, in their order.
    pub(super) fn put_back(&mut self, name: &str, back: Vec<(Entry, Arc<Message>)>) {
        let Some(q) = self.by_name.get_mut(name) else {
            return;
        };
        for (e, m) in back.into_iter().rev() {
            q.mem.keep(e.id, m, None, self.read_ahead);
            q.core.put_back(e);
        }
    }

    /// Is `id` attached to some queue?
    fn any_consumer(&self, id: &ClientId) -> bool {
        self.by_name.values().any(|q| q.qos.contains_key(id))
    }

    /// Is a queue bound to `topic`?
    pub(super) fn bound(&mut self, topic: &str) -> bool {
        let mut m = std::mem::take(&mut self.scratch);
        self.bindings.matches_into(topic, |_| true, &mut m);
        let any = !m.plain.is_empty();
        m.plain.clear();
        self.scratch = m;
        any
    }
}

/// The config of a dead-letter queue made for another: it keeps what it gets
/// (no dead-letter queue of its own, no limit on deliveries).
pub(super) fn dead_letter_queue(name: &str) -> QueueConfig {
    let mut d = QueueConfig::named(name);
    d.dead_letter = Some(String::new());
    d.max_deliveries = u16::MAX;
    d
}

/// `props` with `pairs` set: earlier pairs of the same names are replaced.
pub(super) fn with_properties(props: &UserProperties, pairs: &[(&str, &str)]) -> UserProperties {
    let mut b = UserPropertiesBuilder::default();
    for (k, v) in props.iter() {
        if !pairs.iter().any(|(n, _)| *n == k) {
            b.push(k, v);
        }
    }
    for (k, v) in pairs {
        b.push(k, v);
    }
    b.build()
}

/// `m` with `pairs` set in its user properties.
fn relabel(m: &Message, pairs: &[(&str, &str)]) -> Arc<Message> {
    let mut properties = m.properties.clone();
    properties.user_properties = with_properties(&m.properties.user_properties, pairs);
    Arc::new(Message {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: false,
        properties,
        received: m.received,
    })
}

impl Router {
    /// Recovery: the queues on disk with their messages (a queue the config no
    /// longer declares is kept, as one created by a subscription), and store ids
    /// for the declared queues that have none yet.
    pub(super) fn restore_queues(
        &mut self,
        rec: Vec<RecoveredQueue>,
        next_qid: u64,
        next_qmid: u64,
    ) {
        self.queues.next_qid = next_qid.max(1);
        // Message ids stay unique across restarts even when the records of the
        // last ones were reclaimed: they start above the wall clock's
        // microseconds too (a consumer may de-duplicate on tern-message-id).
        self.queues.next_id = self
            .queues
            .next_id
            .max(next_qmid)
            .max(self.turn.unix_ms.saturating_mul(1000));
        for rq in rec {
            if !self.queues.exists(&rq.name) {
                // Its options are not stored: a dead-letter queue by its name
                // keeps what it gets.
                let mut qc = if rq.name.ends_with("-dlq") {
                    dead_letter_queue(&rq.name)
                } else {
                    QueueConfig::named(&rq.name)
                };
                (qc.max_length, qc.max_bytes) = self.queues.auto_caps;
                if self.queues.declare(&qc).is_err() {
                    warn!(queue = %rq.name, dropped = rq.messages.len(), "stored queue not restored: limits.max_queues reached");
                    continue;
                }
            }
            for f in &rq.bindings {
                self.queues.bind(&rq.name, f);
            }
            let turn = self.turn;
            let Some(q) = self.queues.by_name.get_mut(&*rq.name) else {
                continue;
            };
            q.qid = rq.qid;
            let ttl = q.core.policy().message_ttl;
            let dedup = q.core.policy().dedup_window.is_some();
            // Payloads stay on disk: they are read back as consumers come.
            for m in rq.messages {
                let enqueued = turn.instant_of_secs(m.enqueued_ms / 1000);
                let expires = [m.expires, ttl.map(|t| enqueued + t)]
                    .into_iter()
                    .flatten()
                    .min();
                let entry = Entry {
                    id: m.id,
                    bytes: m.bytes,
                    deliveries: m.deliveries,
                    enqueued_ms: m.enqueued_ms,
                    expires: q.core.expiry(expires),
                    key: m.key,
                };
                let dedup_id = m.message_id.as_deref().filter(|_| dedup);
                q.core.restore(entry, dedup_id, enqueued);
                q.mem.on_disk();
            }
        }
        // Declared queues new since the last start get their id now, in name
        // order (so their ids do not depend on hashing).
        let mut new: Vec<Arc<str>> = self
            .queues
            .by_name
            .iter()
            .filter(|(_, q)| q.qid == 0)
            .map(|(n, _)| n.clone())
            .collect();
        new.sort();
        for name in new {
            let qid = self.queues.next_qid;
            self.queues.next_qid += 1;
            if let Some(q) = self.queues.by_name.get_mut(&name) {
                q.qid = qid;
            }
            self.queue_op(Op::QueueDecl { qid, name });
        }
        let names: Vec<Arc<str>> = self.queues.by_name.keys().cloned().collect();
        let now = self.turn.now;
        for name in names {
            self.tick_queue(&name, now);
        }
    }

    /// Write a queue op (when there is a store), merging runs of `QueueDone`
    /// and of `QueueCount` (deliveries and acks come in runs).
    pub(super) fn queue_op(&mut self, op: Op) {
        let Some(st) = self.store.as_mut() else {
            return;
        };
        match (&op, st.ops.last_mut()) {
            (
                Op::QueueDone { qid, mids },
                Some(Op::QueueDone {
                    qid: last,
                    mids: run,
                }),
            ) if qid == last => run.extend_from_slice(mids),
            (
                Op::QueueCount { qid, counts },
                Some(Op::QueueCount {
                    qid: last,
                    counts: run,
                }),
            ) if qid == last => run.extend_from_slice(counts),
            _ => st.ops.push(op),
        }
    }

    /// The store id of queue `name` (0: none).
    pub(super) fn qid(&self, name: &str) -> u64 {
        self.queues.by_name.get(name).map_or(0, |q| q.qid)
    }

    /// Hand a routed message to every queue bound to its topic. Returns how many
    /// took it and whether one refused it for lack of room.
    pub(super) fn enqueue_to_queues(
        &mut self,
        topic: &str,
        msg: &Arc<Message>,
        now: Instant,
    ) -> (usize, bool) {
        // Every publish passes here: nothing to match without a binding.
        if self.queues.bindings.is_empty() {
            return (0, false);
        }
        let mut matches = std::mem::take(&mut self.queues.scratch);
        self.queues
            .bindings
            .matches_into(topic, |_| true, &mut matches);
        let mut names: Vec<Arc<str>> = matches.plain.drain(..).map(|(n, _)| n).collect();
        self.queues.scratch = matches;
        if names.is_empty() {
            return (0, false);
        }
        // A message matching two filters of one queue is taken once.
        names.sort_unstable();
        names.dedup();
        let (mut taken, mut refused) = (0, false);
        for name in names {
            match self.enqueue_one(&name, msg.clone(), now) {
                Enqueued::Taken | Enqueued::Duplicate => taken += 1,
                Enqueued::Refused => refused = true,
            }
        }
        (taken, refused)
    }

    /// Put `msg` into queue `name` as a new message (deliveries 0).
    fn enqueue_one(&mut self, name: &Arc<str>, msg: Arc<Message>, now: Instant) -> Enqueued {
        let id = self.queues.next_id();
        let enqueued_ms = self.turn.to_unix_ms(now);
        let Some(q) = self.queues.by_name.get_mut(name) else {
            return Enqueued::Refused;
        };
        if msg.qos == QoS::AtMostOnce && q.qos0_gate == Some(false) {
            // At most once, as published: not kept for a link that is down.
            // Nobody waits for an answer to a QoS 0 publish.
            q.core.count_dropped();
            return Enqueued::Duplicate;
        }
        if q.mem.dead_waiting() >= DEAD_LETTERS_WAITING {
            // Its dead letters wait to be read back: nothing more until they
            // are moved (see DEAD_LETTERS_WAITING).
            return Enqueued::Refused;
        }
        let entry = Entry {
            id,
            bytes: message_bytes(&msg),
            deliveries: 0,
            enqueued_ms,
            expires: q.core.expiry(msg.expires_at()),
            key: q.core.policy().key_of_message(&msg),
        };
        let key_text = q.core.policy().key_text(&msg).map(Box::from);
        let dedup_id = q.core.policy().dedup_id(&msg).map(str::to_string);
        let mut actions = Vec::new();
        let r = q
            .core
            .enqueue(entry, dedup_id.as_deref(), now, &mut actions);
        if r == Enqueued::Taken {
            let qid = q.qid;
            if qid != 0 {
                self.queue_op(Op::QueueMsg {
                    qid,
                    mid: id,
                    message: msg.clone(),
                    deliveries: 0,
                    enqueued_ms,
                    key: key_text,
                });
            }
            self.keep_queued(name, id, msg);
            if let Some(q) = self.queues.by_name.get_mut(name) {
                q.core.dispatch(now, &mut actions);
            }
        }
        self.carry_out(name, actions, now);
        r
    }

    /// Recovery: a persistent session consumed `filter` (`$queue/<name>`); it
    /// consumes again once connected. A queue gone meanwhile is created anew.
    pub(super) fn restore_consumer(&mut self, c: &mut Client, filter: &str, qos: QoS) {
        let Some(Ok(qf)) = crate::topic::parse_queue_filter(filter, self.topic_limits) else {
            warn!(%filter, "stored queue subscription no longer valid: dropped");
            return;
        };
        let qc = self.queues.auto_queue(qf.name);
        if !self.queues.exists(qf.name) && self.declare_queue(&qc).is_err() {
            warn!(
                queue = qf.name,
                "stored queue subscription dropped: limits.max_queues reached"
            );
            return;
        }
        if let Some((name, _)) = self.queues.by_name.get_key_value(qf.name) {
            c.rare_mut().consumes.push((name.clone(), qos));
        }
    }

    /// Create a queue while running, and store its name.
    pub(super) fn declare_queue(&mut self, qc: &QueueConfig) -> Result<(), NoQueue> {
        self.queues.declare(qc)?;
        let qid = self.qid(&qc.name);
        if qid != 0 {
            self.queue_op(Op::QueueDecl {
                qid,
                name: Arc::from(qc.name.as_str()),
            });
        }
        Ok(())
    }

    /// Move message `e` of queue `from` (taken out of it) into queue `to`, its
    /// delivery count reset; back into `from` if `to` has no room. Returns
    /// whether it moved.
    pub(super) fn move_into(
        &mut self,
        from: &str,
        to: &Arc<str>,
        e: Entry,
        m: Arc<Message>,
        now: Instant,
    ) -> bool {
        let Some(q) = self.queues.by_name.get_mut(to) else {
            self.queues.put_back(from, vec![(e, m)]);
            return false;
        };
        // Its key under the target's ordering policy.
        let entry = Entry {
            deliveries: 0,
            key: q.core.policy().key_of_message(&m),
            ..e
        };
        let mut actions = Vec::new();
        if q.core.enqueue(entry, None, now, &mut actions) != Enqueued::Taken {
            self.queues.put_back(from, vec![(e, m)]);
            self.carry_out(to, actions, now);
            return false;
        }
        let to_qid = q.qid;
        let key = q.core.policy().key_text(&m).map(Box::from);
        let from_qid = self.qid(from);
        if from_qid != 0 {
            self.queue_op(Op::QueueDone {
                qid: from_qid,
                mids: vec![e.id],
            });
        }
        if to_qid != 0 {
            self.queue_op(Op::QueueMsg {
                qid: to_qid,
                mid: e.id,
                message: m.clone(),
                deliveries: 0,
                enqueued_ms: e.enqueued_ms,
                key,
            });
        }
        self.keep_queued(to, e.id, m);
        if let Some(q) = self.queues.by_name.get_mut(to) {
            q.core.dispatch(now, &mut actions);
        }
        self.carry_out(to, actions, now);
        true
    }

    /// A `$queue/` filter in a SUBSCRIBE: checked, allowed by the ACL (read on
    /// `$queue/<name>`, and on the filter it binds), then consumed.
    pub(super) fn queue_subscribe(
        &mut self,
        id: &ClientId,
        filter: &str,
        qos: QoS,
        now: Instant,
    ) -> ReasonCode {
        let Some(Ok(qf)) = crate::topic::parse_queue_filter(filter, self.topic_limits) else {
            return ReasonCode::TOPIC_FILTER_INVALID;
        };
        let user = self.clients.get(id).and_then(|c| c.username.clone());
        if let Some(acl) = &self.acl {
            let queue = format!("$queue/{}", qf.name);
            let allowed = acl.can_subscribe(user.as_deref(), id, &queue)
                && qf
                    .bind
                    .is_none_or(|b| acl.can_subscribe(user.as_deref(), id, b));
            if !allowed {
                self.metrics
                    .acl_denied_subscribe
                    .fetch_add(1, Ordering::Relaxed);
                debug!(client = %id, filter, "queue subscription denied by the ACL");
                return ReasonCode::NOT_AUTHORIZED;
            }
        }
        self.consume(id, qf.name, qf.bind, qos, now)
    }

    /// A `$queue/` filter in an UNSUBSCRIBE.
    pub(super) fn queue_unsubscribe(
        &mut self,
        id: &ClientId,
        filter: &str,
        now: Instant,
    ) -> ReasonCode {
        match crate::topic::parse_queue_filter(filter, self.topic_limits) {
            Some(Ok(qf)) if self.stop_consuming(id, qf.name, now) => ReasonCode::SUCCESS,
            Some(Ok(_)) => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            _ => ReasonCode::TOPIC_FILTER_INVALID,
        }
    }

    /// A `$queue/` subscription: consume queue `name` at `qos` (1 or 2), creating
    /// it (and binding `bind`) if need be. Returns the SUBACK code.
    pub(super) fn consume(
        &mut self,
        id: &ClientId,
        name: &str,
        bind: Option<&str>,
        qos: QoS,
        now: Instant,
    ) -> ReasonCode {
        let (name, created) = match self.queues.by_name.get_key_value(name) {
            Some((n, _)) => (n.clone(), false),
            None => {
                let qc = self.queues.auto_queue(name);
                if self.declare_queue(&qc).is_err() {
                    warn!(client = %id, queue = name, "queue not created: limits.max_queues reached");
                    return ReasonCode::QUOTA_EXCEEDED;
                }
                (Arc::from(name), true)
            }
        };
        if created {
            info!(client = %id, queue = %name, "queue created by a subscription");
        }
        if let Some(f) = bind {
            match self.queues.bind(&name, f) {
                None => {
                    warn!(client = %id, queue = %name, "queue binding refused: the queue has {MAX_BINDINGS} topic filters");
                    return ReasonCode::QUOTA_EXCEEDED;
                }
                // Stored: the queue collects its topics after a restart too,
                // before any consumer is back.
                Some(true) => {
                    let qid = self.qid(&name);
                    if qid != 0 {
                        self.queue_op(Op::QueueBind {
                            qid,
                            filter: Arc::from(f),
                        });
                    }
                }
                Some(false) => {}
            }
        }
        // Work is delivered at least once: QoS 0 asks for QoS 1.
        let qos = qos.max(QoS::AtLeastOnce);
        if let Some(c) = self.clients.get_mut(id) {
            let consumes = &mut c.rare_mut().consumes;
            let known = consumes.iter_mut().find(|(n, _)| *n == name);
            let changed = match known {
                Some((_, q)) if *q == qos => false,
                Some((_, q)) => {
                    // A repeated SUBSCRIBE replaces the subscription [MQTT-3.8.4-3].
                    *q = qos;
                    true
                }
                None => {
                    consumes.push((name.clone(), qos));
                    true
                }
            };
            if changed {
                // A persistent session keeps consuming across reconnects and
                // restarts, like any of its subscriptions.
                if let (true, Some(st)) = (c.sid != 0, self.store.as_mut()) {
                    st.ops.push(Op::Sub {
                        sid: c.sid,
                        filter: Arc::from(format!("$queue/{name}")),
                        options: crate::protocol::SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                        identifier: None,
                    });
                }
            }
        }
        self.attach_consumer(id, &name, qos, now);
        ReasonCode(qos.as_u8())
    }

    /// `id` (connected) takes messages of `name` within its window.
    fn attach_consumer(&mut self, id: &ClientId, name: &Arc<str>, qos: QoS, now: Instant) {
        let Some(window) = self
            .clients
            .get(id)
            .and_then(|c| c.conn.as_ref())
            .map(|h| h.window)
        else {
            return;
        };
        let Some(q) = self.queues.by_name.get_mut(name) else {
            return;
        };
        q.qos.insert(id.clone(), qos);
        q.core
            .attach(id.clone(), u16::try_from(window).unwrap_or(u16::MAX));
        let mut actions = Vec::new();
        q.core.dispatch(now, &mut actions);
        self.carry_out(name, actions, now);
    }

    /// Every queue `id` consumes takes it back (it connected again).
    pub(super) fn attach_consumes(&mut self, id: &ClientId, now: Instant) {
        let consumes = self
            .clients
            .get(id)
            .map(|c| c.consumes().to_vec())
            .unwrap_or_default();
        for (name, qos) in consumes {
            self.attach_consumer(id, &name, qos, now);
        }
    }

    /// UNSUBSCRIBE of `$queue/<name>`: returns whether `id` consumed it.
    pub(super) fn stop_consuming(&mut self, id: &ClientId, name: &str, now: Instant) -> bool {
        let Some(c) = self.clients.get_mut(id) else {
            return false;
        };
        let before = c.consumes().len();
        let after = c
            .take_rare(|r| {
                r.consumes.retain(|(n, _)| &**n != name);
                Some(r.consumes.len())
            })
            .unwrap_or(0);
        if after == before {
            return false;
        }
        if let (true, Some(st)) = (c.sid != 0, self.store.as_mut()) {
            st.ops.push(Op::Unsub {
                sid: c.sid,
                filter: Arc::from(format!("$queue/{name}")),
            });
        }
        self.detach_consumer(id, Some(name), now);
        true
    }

    /// `id` stops consuming `only` (or every queue): what it holds of them goes
    /// back to their queues, for other consumers.
    pub(super) fn detach_consumer(&mut self, id: &ClientId, only: Option<&str>, now: Instant) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        // Every queue it is attached to (`qos` has it: also one it unsubscribed
        // from while it still holds messages of it).
        let names: Vec<Arc<str>> = match only {
            Some(n) => self
                .queues
                .by_name
                .get_key_value(n)
                .map(|(k, _)| k.clone())
                .into_iter()
                .collect(),
            None if c.consumes().is_empty() && !self.queues.any_consumer(id) => return,
            None => self
                .queues
                .by_name
                .iter()
                .filter(|(_, q)| q.qos.contains_key(id))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        // The session gives up those deliveries (their packet ids are free);
        // the queues count them as delivered and hand them on. While still
        // connected (UNSUBSCRIBE) it keeps what it was sent, until acknowledged.
        let connected = c.online();
        let taken = c
            .session
            .take_queue_deliveries(|q| names.iter().any(|n| **n == *q), connected);
        for tag in taken {
            self.queue_ack(id, &tag);
        }
        for name in names {
            let Some(q) = self.queues.by_name.get_mut(&name) else {
                continue;
            };
            let mut actions = Vec::new();
            if connected {
                // Unsubscribed: nothing new, what it holds waits for its ack.
                q.core.stop(id);
                if !q.core.is_consumer(id) {
                    q.qos.remove(id);
                }
            } else {
                q.qos.remove(id);
                q.core.detach(id, now, &mut actions);
            }
            q.core.dispatch(now, &mut actions);
            self.carry_out(&name, actions, now);
        }
    }

    /// `id` acknowledged `tag`: the message is gone (and its end stored).
    /// False when it was not `id`'s to acknowledge.
    fn queue_ack(&mut self, id: &ClientId, tag: &QueueTag) -> bool {
        let Some(q) = self.queues.by_name.get_mut(&tag.queue) else {
            return false;
        };
        if q.core.ack(id, tag.id).is_none() {
            return false;
        }
        q.mem.take(tag.id);
        let qid = q.qid;
        if qid != 0 {
            self.queue_op(Op::QueueDone {
                qid,
                mids: vec![tag.id],
            });
        }
        true
    }

    /// The end of a router turn: act on the queue deliveries that ended in it.
    pub(super) fn queue_turn_end(&mut self) {
        // Acting may end more (a delivery refused at once): bounded, as each
        // round only acts on deliveries that ended.
        for _ in 0..16 {
            if self.queues.ended.is_empty() {
                return;
            }
            for (id, tag, outcome) in std::mem::take(&mut self.queues.ended) {
                self.queue_delivery_ended(&id, tag, outcome);
            }
        }
    }

    /// How a delivery of `tag` to `id` ended (from its session's events).
    pub(super) fn queue_delivery_ended(
        &mut self,
        id: &ClientId,
        tag: QueueTag,
        outcome: QueueOutcome,
    ) {
        let now = self.turn.now;
        if outcome == QueueOutcome::Acked {
            self.queue_ack(id, &tag);
        }
        // Refused: it waits for its retry delay on disk, not in memory (a
        // consumer that refuses everything would otherwise pull the backlog
        // into memory at its retry delay's pace). A refusal writes nothing of
        // its own, so `evict_ticket` makes sure this turn's batch is
        // submitted (and synced) even when empty: the last refusals of a
        // burst, with no delivery after them, would otherwise stay in memory.
        let refused = matches!(
            outcome,
            QueueOutcome::Refused(_) | QueueOutcome::Expired | QueueOutcome::Unreadable
        );
        let ticket = if refused {
            self.evict_ticket(&tag.queue)
        } else {
            None
        };
        let Some(q) = self.queues.by_name.get_mut(&tag.queue) else {
            return;
        };
        if let Some(t) = ticket {
            q.mem.evict_later(t, tag.id);
        }
        let mut actions = Vec::new();
        match outcome {
            QueueOutcome::Acked => {}
            QueueOutcome::Refused(code) => {
                q.core.nack(id, tag.id, code, now, &mut actions);
                let dead = actions
                    .iter()
                    .any(|a| matches!(a, Action::DeadLetter { entry, .. } if entry.id == tag.id));
                if dead {
                    if self.queues.refusals.len() >= REFUSALS {
                        self.queues.refusals.clear();
                    }
                    self.queues.refusals.insert(tag.id, code);
                }
            }
            // Not processed by its consumer: another try (counted).
            QueueOutcome::Expired | QueueOutcome::Unreadable => {
                q.core.nack(id, tag.id, 0x80, now, &mut actions);
            }
        }
        // A consumer that unsubscribed leaves with its last message.
        if !q.core.is_consumer(id) {
            q.qos.remove(id);
        }
        q.core.dispatch(now, &mut actions);
        self.carry_out(&tag.queue, actions, now);
    }

    /// Remove the queues clients created by subscribing that nobody consumes
    /// (connected or not) and that hold nothing, so subscriptions cannot use up
    /// `max_queues` for good (called with the periodic sweep).
    pub(super) fn remove_idle_queues(&mut self) {
        let idle: Vec<Arc<str>> = self
            .queues
            .by_name
            .iter()
            .filter(|(_, q)| {
                !q.declared && q.core.is_empty() && q.qos.is_empty() && q.mem.nothing_waits()
            })
            .map(|(n, _)| n.clone())
            .filter(|n| {
                !self
                    .clients
                    .values()
                    .any(|c| c.consumes().iter().any(|(m, _)| m == n))
            })
            .collect();
        for name in idle {
            self.deadlines.cancel(&Timer::Queue(name.clone()));
            if let Some(qid) = self.queues.remove(&name).filter(|q| *q != 0) {
                self.queue_op(Op::QueueGone { qid });
            }
            info!(queue = %name, "queue removed: created by a subscription, now idle and empty");
        }
    }

    /// Dead-letter the expired messages of every queue, wherever they wait
    /// (called with the retained sweep).
    pub(super) fn sweep_queues(&mut self, now: Instant) {
        self.retry_waiting(now);
        let names = self.queues.names();
        for name in names {
            let Some(q) = self.queues.by_name.get_mut(&name) else {
                continue;
            };
            let mut actions = Vec::new();
            q.core.sweep_expired(now, &mut actions);
            if !actions.is_empty() {
                self.carry_out(&name, actions, now);
            }
        }
        self.remove_idle_queues();
    }

    /// A queue's timer: retries due, ack timeouts, expiry.
    pub(super) fn tick_queue(&mut self, name: &Arc<str>, now: Instant) {
        let Some(q) = self.queues.by_name.get_mut(name) else {
            return;
        };
        let mut actions = Vec::new();
        q.core.tick(now, &mut actions);
        self.carry_out(name, actions, now);
    }

    /// Do what queue `name`'s core asked, then set its timer.
    pub(super) fn carry_out(
        &mut self,
        name: &Arc<str>,
        actions: Vec<Action<ClientId>>,
        now: Instant,
    ) {
        // Deliveries a session could not take, given back after the others in
        // reverse, so they are first in line in their original order.
        let mut back: Vec<(ClientId, MsgId)> = Vec::new();
        for a in actions {
            match a {
                Action::Deliver { .. } | Action::DeadLetter { .. } => {
                    back.extend(self.deliver_or_wait(name, a, now));
                }
                Action::Drop { entry } => {
                    if let Some(q) = self.queues.by_name.get_mut(name) {
                        q.mem.take(entry.id);
                    }
                    let qid = self.qid(name);
                    if qid != 0 {
                        self.queue_op(Op::QueueDone {
                            qid,
                            mids: vec![entry.id],
                        });
                    }
                    self.metrics.queue_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(q) = self.queues.by_name.get_mut(name) {
            for (to, id) in back.into_iter().rev() {
                q.core.give_back(&to, id);
            }
        }
        self.deadlines.cancel(&Timer::Queue(name.clone()));
        if let Some(at) = self
            .queues
            .by_name
            .get(name)
            .and_then(|q| q.core.next_deadline())
        {
            self.deadlines.schedule(at, Timer::Queue(name.clone()));
        }
        self.read_ahead(name);
    }

    /// Hand `entry` (in memory) to `to`'s session. Returns it when the
    /// session could not take it (the caller gives it back).
    pub(super) fn deliver_from_queue(
        &mut self,
        name: &Arc<str>,
        to: ClientId,
        entry: Entry,
        now: Instant,
    ) -> Option<(ClientId, MsgId)> {
        let v5 = self
            .clients
            .get(&to)
            .and_then(|c| c.conn.as_ref())
            .is_some_and(|h| h.version.is_v5());
        let q = self.queues.by_name.get_mut(name)?;
        let Some(&qos) = q.qos.get(&to) else {
            // Not (or no longer) attached: back to the queue.
            return Some((to, entry.id));
        };
        // `deliver_or_wait` made sure it is in memory.
        let Some(m) = q.mem.get(entry.id) else {
            return Some((to, entry.id));
        };
        if m.is_expired(now) {
            // Expired since it was taken (v5 Message Expiry): dead, not sent.
            let mut actions = Vec::new();
            q.core.expire(&to, entry.id, &mut actions);
            self.carry_out(name, actions, now);
            return None;
        }
        // 3.1.1 has no user properties: its consumers get the message as it
        // is, without a copy per delivery.
        let message = if v5 {
            let (id, count) = (entry.id.to_string(), entry.deliveries.to_string());
            relabel(m, &[(MESSAGE_ID, &id), (DELIVERY_COUNT, &count)])
        } else {
            m.clone()
        };
        let d = Delivery {
            message,
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            did: 0,
            shared: false,
            queued: Some(Box::new(QueueTag {
                queue: name.clone(),
                id: entry.id,
            })),
        };
        let qid = self.qid(name);
        let outcome = self.deliver_to(&to, d, now, false);
        if outcome == Some(super::fanout::Delivered::Skipped) {
            // Larger than the consumer's Maximum Packet Size: a refusal (0x95),
            // retried (perhaps by another consumer) and dead-lettered in the end.
            if let Some(q) = self.queues.by_name.get_mut(name) {
                let mut actions = Vec::new();
                q.core.nack(&to, entry.id, 0x95, now, &mut actions);
                self.carry_out(name, actions, now);
            }
        } else if outcome.is_some() {
            if qid != 0 {
                // Counted before it is acknowledged: after a crash the count
                // includes this delivery (a message that crashes its consumers
                // still reaches max_deliveries).
                self.queue_op(Op::QueueCount {
                    qid,
                    counts: vec![(entry.id, entry.deliveries)],
                });
            }
        } else {
            // Its session could not take it (a full queue): back first in line.
            return Some((to, entry.id));
        }
        None
    }

    /// Move a message of `from` to its dead-letter queue with the reason, or drop
    /// it when it has none.
    pub(super) fn dead_letter(
        &mut self,
        from: &Arc<str>,
        entry: Entry,
        reason: DeadReason,
        now: Instant,
    ) {
        let refused = self
            .queues
            .refusals
            .remove(&entry.id)
            .map(|c| format!("0x{c:02x}"));
        let Some(q) = self.queues.by_name.get_mut(from) else {
            return;
        };
        // `deliver_or_wait` made sure it is in memory when it has somewhere
        // to go (a dropped one is not read back).
        let m = q.mem.take(entry.id);
        let (qid, dead_letter) = (q.qid, q.dead_letter.clone());
        if qid != 0 {
            self.queue_op(Op::QueueDone {
                qid,
                mids: vec![entry.id],
            });
        }
        self.metrics
            .queue_dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        let Some(dlq) = dead_letter else {
            self.metrics.queue_dropped.fetch_add(1, Ordering::Relaxed);
            info!(queue = %from, id = entry.id, reason = reason.as_str(), "dead letter dropped: the queue has no dead-letter queue");
            return;
        };
        let Some(m) = m else {
            // Not reached: `deliver_or_wait` reads it back first.
            self.metrics.queue_dropped.fetch_add(1, Ordering::Relaxed);
            warn!(queue = %from, id = entry.id, "dead letter dropped (counted in queue_dropped): its message was not in memory");
            return;
        };
        let mut dlq_config = dead_letter_queue(&dlq);
        if !self.queues.by_name.get(from).is_some_and(|q| q.declared) {
            (dlq_config.max_length, dlq_config.max_bytes) = self.queues.auto_caps;
        }
        if !self.queues.exists(&dlq) && self.declare_queue(&dlq_config).is_err() {
            self.metrics.queue_dropped.fetch_add(1, Ordering::Relaxed);
            warn!(queue = %from, dead_letter = %dlq, "dead letter dropped (counted in queue_dropped): limits.max_queues reached");
            return;
        }
        let (count, first) = (entry.deliveries.to_string(), entry.enqueued_ms.to_string());
        let mut labels = vec![
            (DELIVERY_COUNT, count.as_str()),
            (DEAD_LETTER_REASON, reason.as_str()),
            (QUEUE, &**from),
            (FIRST_ENQUEUED, first.as_str()),
        ];
        if let Some(code) = &refused {
            labels.push((REFUSED_CODE, code));
        }
        let mut m = relabel(&m, &labels);
        // A dead letter waits for a person: it does not expire (an expired
        // message would otherwise never leave the dead-letter queue).
        if let Some(mm) = Arc::get_mut(&mut m) {
            mm.properties.message_expiry_interval = None;
        }
        let Some((dlq, _)) = self.queues.by_name.get_key_value(&*dlq) else {
            return;
        };
        let dlq = dlq.clone();
        let Some(d) = self.queues.by_name.get_mut(&dlq) else {
            return;
        };
        let mut actions = Vec::new();
        let e = Entry {
            deliveries: 0,
            expires: 0,
            // It carries more properties now.
            bytes: message_bytes(&m),
            key: d.core.policy().key_of_message(&m),
            ..entry
        };
        let key_text = d.core.policy().key_text(&m).map(Box::from);
        if d.core.enqueue(e, None, now, &mut actions) == Enqueued::Taken {
            let qid = d.qid;
            if qid != 0 {
                self.queue_op(Op::QueueMsg {
                    qid,
                    mid: e.id,
                    message: m.clone(),
                    deliveries: 0,
                    enqueued_ms: e.enqueued_ms,
                    key: key_text,
                });
            }
            self.keep_queued(&dlq, e.id, m);
            if let Some(d) = self.queues.by_name.get_mut(&dlq) {
                d.core.dispatch(now, &mut actions);
            }
        } else {
            self.metrics.queue_dropped.fetch_add(1, Ordering::Relaxed);
            warn!(queue = %from, dead_letter = %dlq, "dead letter dropped (counted in queue_dropped): the dead-letter queue is full");
        }
        self.carry_out(&dlq, actions, now);
    }
}

/// What wakes the router: a client's deadline (will, expiry, backpressure,
/// retained wake-up) or a queue's (retry, ack timeout, expiry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Timer {
    Client(ClientId),
    Queue(Arc<str>),
}
