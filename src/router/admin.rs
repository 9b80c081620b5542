//! The router's answers to the admin endpoint: queue lists and numbers, a peek
//! at a queue's next messages, and the operations (purge, redrive a dead-letter
//! queue). The HTTP side is `crate::admin`; this file only reads and changes
//! the router's own state, and writes what changes to the store.

use super::backlog::ADMIN_TRIES;
use super::*;
use crate::queue::{Counters, Entry};
use serde::Serialize;

/// A question or an operation from the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    Queues,
    Queue(String),
    /// The next `n` messages of a queue, without taking them.
    Peek {
        queue: String,
        n: usize,
    },
    /// Remove every waiting message of a queue (not those in flight).
    Purge(String),
    /// Move up to `max` messages of dead-letter queue `from` back to the queue
    /// each came from (its `tern-queue` property), or to `to`, with their
    /// delivery count reset (SQS's StartMessageMoveTask).
    Redrive {
        from: String,
        to: Option<String>,
        max: usize,
    },
    /// A page of clients in id order, after `after`.
    Clients {
        after: Option<String>,
        limit: usize,
    },
    /// Close a client's connection.
    Kick(String),
    /// A page of retained messages in topic order.
    Retained(super::admin_retained::RetainedQuery),
    /// Clear the retained message of a topic.
    ClearRetained(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub dead_letter: Option<String>,
    /// Waiting: ready, or waiting for a retry.
    pub depth: usize,
    pub in_flight: usize,
    pub bytes: u64,
    pub consumers: usize,
    /// Its messages held in memory (in flight and read ahead); the rest of
    /// its backlog is on disk only.
    pub in_memory: usize,
    /// Age of the oldest waiting message (consumer lag), milliseconds.
    pub oldest_age_ms: Option<u64>,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeekedMessage {
    pub id: u64,
    pub topic: String,
    /// UTF-8 when it is (lossy otherwise: a peek is for a person to read).
    pub payload: String,
    pub payload_bytes: usize,
    pub deliveries: u16,
    pub enqueued_ms: u64,
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    Queues(Vec<QueueInfo>),
    Queue(QueueInfo),
    Peek(Vec<PeekedMessage>),
    /// How many messages an operation purged or moved.
    Count(usize),
    NoSuchQueue(String),
    /// A message to redrive names no queue that exists (and no `to` was given).
    NoTarget,
    Clients(Vec<super::admin_clients::ClientInfo>),
    NoSuchClient(String),
    Retained(super::admin_retained::RetainedPage),
    NoSuchRetained(String),
}

/// Messages one redrive request moves at most (they are read back into memory
/// first); the CLI asks again until the dead-letter queue is empty.
pub const REDRIVE_BATCH: usize = 1_000;

impl Router {
    /// Answer `request`; None when it needs queue messages read back first
    /// (asked for: it is tried again as they come). `last_try`: answer with
    /// what is in memory.
    pub(super) fn admin(
        &mut self,
        request: AdminRequest,
        now: Instant,
        last_try: bool,
    ) -> Option<AdminReply> {
        if let AdminRequest::Peek { queue, n }
        | AdminRequest::Redrive {
            from: queue,
            max: n,
            ..
        } = &request
        {
            let n = (*n).min(REDRIVE_BATCH);
            if !last_try && !self.queue_head_in_memory(queue, n) {
                return None;
            }
        }
        Some(match request {
            AdminRequest::Queues => {
                let mut names: Vec<Arc<str>> = self.queues.names();
                names.sort();
                AdminReply::Queues(names.iter().filter_map(|n| self.queue_info(n)).collect())
            }
            AdminRequest::Queue(name) => match self.queue_info(&name) {
                Some(i) => AdminReply::Queue(i),
                None => AdminReply::NoSuchQueue(name),
            },
            AdminRequest::Peek { queue, n } => match self.queues.peek(&queue, n.min(1_000)) {
                Some(v) => AdminReply::Peek(
                    v.into_iter()
                        .filter_map(|(e, m)| m.map(|m| peeked((e, m))))
                        .collect(),
                ),
                None => AdminReply::NoSuchQueue(queue),
            },
            AdminRequest::Purge(name) => match self.purge_queue(&name) {
                Some(n) => AdminReply::Count(n),
                None => AdminReply::NoSuchQueue(name),
            },
            AdminRequest::Redrive { from, to, max } => {
                self.redrive(&from, to.as_deref(), max.min(REDRIVE_BATCH), now)
            }
            AdminRequest::Clients { after, limit } => {
                AdminReply::Clients(self.clients_page(after.as_deref(), limit))
            }
            AdminRequest::Kick(id) => {
                if self.kick(&id) {
                    AdminReply::Count(1)
                } else {
                    AdminReply::NoSuchClient(id)
                }
            }
            AdminRequest::Retained(q) => AdminReply::Retained(self.retained_page(&q, now)),
            AdminRequest::ClearRetained(topic) => {
                if self.clear_retained(&topic) {
                    AdminReply::Count(1)
                } else {
                    AdminReply::NoSuchRetained(topic)
                }
            }
        })
    }

    /// Send an admin answer now, or once what this turn wrote is durable: an
    /// operation reported done (a purge, a redrive, a retained message
    /// cleared) is not undone by a crash after the answer.
    pub(super) fn answer_admin(&mut self, reply: oneshot::Sender<AdminReply>, answer: AdminReply) {
        match self.durable_gate() {
            Some(st) => st.hold(Held::Admin { reply, answer }),
            None => {
                let _ = reply.send(answer);
            }
        }
    }

    /// Are the first `n` ready messages of `name` in memory? Those that are
    /// not are asked of the store. (A queue that does not exist: yes.)
    fn queue_head_in_memory(&mut self, name: &str, n: usize) -> bool {
        let Some(head) = self.queues.peek(name, n) else {
            return true;
        };
        let Some(q) = self.queues.by_name.get_mut(name) else {
            return true;
        };
        let mut all = true;
        for (e, m) in head {
            if m.is_none() {
                q.mem.want(e.id);
                all = false;
            }
        }
        all
    }

    /// Queue messages of `loaded` came back from the store: try the parked
    /// admin requests again. A request's tries count only the answers for its
    /// own queue (or for a queue that is gone), so other queues' reads on a
    /// busy broker do not use them up.
    pub(super) fn retry_admin(&mut self, now: Instant, loaded: Option<&str>) {
        for (request, reply, tries) in std::mem::take(&mut self.admin_parked) {
            let queue = match &request {
                AdminRequest::Peek { queue, .. } => Some(queue.as_str()),
                AdminRequest::Redrive { from, .. } => Some(from.as_str()),
                _ => None,
            };
            let tries = if loaded.is_none() || queue == loaded {
                tries + 1
            } else {
                tries
            };
            match self.admin(request.clone(), now, tries >= ADMIN_TRIES) {
                Some(r) => self.answer_admin(reply, r),
                None => self.admin_parked.push((request, reply, tries)),
            }
        }
    }

    pub(super) fn queue_info(&self, name: &str) -> Option<QueueInfo> {
        let (stats, dead_letter, in_memory) = self.queues.stats(name)?;
        let now_ms = self.turn.unix_ms;
        Some(QueueInfo {
            name: name.to_string(),
            dead_letter: dead_letter.map(|d| d.to_string()),
            depth: stats.depth,
            in_flight: stats.in_flight,
            bytes: stats.bytes,
            consumers: stats.consumers,
            in_memory,
            oldest_age_ms: stats.oldest_enqueued_ms.map(|t| now_ms.saturating_sub(t)),
            counters: stats.counters,
        })
    }

    /// Remove the waiting messages of `name`; how many.
    fn purge_queue(&mut self, name: &str) -> Option<usize> {
        let (qid, gone) = self.queues.purge(name)?;
        if qid != 0 && !gone.is_empty() {
            self.queue_op(Op::QueueDone {
                qid,
                mids: gone.iter().map(|e| e.id).collect(),
            });
        }
        info!(queue = name, purged = gone.len(), "queue purged");
        Some(gone.len())
    }

    fn redrive(&mut self, from: &str, to: Option<&str>, max: usize, now: Instant) -> AdminReply {
        if !self.queues.exists(from) {
            return AdminReply::NoSuchQueue(from.to_string());
        }
        if let Some(t) = to.filter(|t| !self.queues.exists(t)) {
            return AdminReply::NoSuchQueue(t.to_string());
        }
        let taken = self.queues.take_ready(from, max);
        let mut moved = 0;
        let mut back: Vec<(Entry, Arc<Message>)> = Vec::new();
        for (e, m) in taken {
            let target = to.map(str::to_string).or_else(|| {
                m.properties
                    .user_properties
                    .iter()
                    .find(|(k, _)| *k == "tern-queue")
                    .map(|(_, v)| v.to_string())
            });
            match target.filter(|t| self.queues.exists(t) && t != from) {
                Some(t) => {
                    let name: Arc<str> = Arc::from(t.as_str());
                    if self.move_into(from, &name, e, m, now) {
                        moved += 1;
                    }
                }
                None => back.push((e, m)),
            }
        }
        let unmovable = back.len();
        // Nowhere to go: they stay where they were, first in line.
        self.queues.put_back(from, back);
        if moved == 0 && unmovable > 0 {
            return AdminReply::NoTarget;
        }
        info!(from, moved, "dead letters redriven");
        AdminReply::Count(moved)
    }
}

/// Payload bytes a peek shows of each message (a peek is for a person).
const PEEK_PAYLOAD: usize = 1024;

fn peeked((e, m): (Entry, Arc<Message>)) -> PeekedMessage {
    let shown = m.payload.get(..PEEK_PAYLOAD).unwrap_or(&m.payload);
    PeekedMessage {
        id: e.id,
        topic: m.topic.to_string(),
        payload: String::from_utf8_lossy(shown).into_owned(),
        payload_bytes: m.payload.len(),
        deliveries: e.deliveries,
        enqueued_ms: e.enqueued_ms,
        user_properties: m.properties.user_properties.to_vec(),
    }
}
