//! The work queues' part of the store's index: which queues exist (id and name),
//! and each queue's messages with their delivery count and where their records
//! lie (`queue_slots.rs`, 32 bytes a message), never their payloads: those stay in the log and are
//! read back when the router asks (`Log::read_record`). Pure, like `state.rs`,
//! which owns the byte accounting: `apply` tells it which record became live
//! and which dead.
//!
//! A queue message is live from its `QueueMsg` until its `QueueDone`; its latest
//! `QueueCount` is live with it (an older count is dead). Copying forward writes
//! one `QueueMsg` with the current count, which makes the older records dead;
//! the store thread reads the record to copy (`copy_forward` says which).
//!
//! At start, what the router needs to rebuild a queue without payloads (size,
//! expiry, ordering key, dedup id) is taken from each `QueueMsg` as it is read
//! back, kept until `recovered`, then dropped.

use super::queue_slots::{Slot, Slots};
use super::record::Op;
use super::state::Loc;
use crate::hash::Map;
use crate::queue::policy::{key_hash, message_bytes, message_id, Key};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// A queue message as recovery hands it to the router: everything but the
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMsg {
    pub id: u64,
    pub deliveries: u16,
    /// Unix milliseconds of its first enqueue.
    pub enqueued_ms: u64,
    /// What it costs against `max_bytes`.
    pub bytes: u32,
    /// Its v5 Message Expiry, if any.
    pub expires: Option<Instant>,
    /// Its ordering-key hash (this process's), from the key it was taken with.
    pub key: Key,
    /// Its `message-id` user property (the dedup window), if any.
    pub message_id: Option<Box<str>>,
}

/// What one queue holds after recovery, for the router.
#[derive(Debug)]
pub struct RecoveredQueue {
    pub qid: u64,
    pub name: Arc<str>,
    /// Topic filters subscriptions bound to it.
    pub bindings: Vec<Arc<str>>,
    /// In enqueue order (ids increase with it).
    pub messages: Vec<RecoveredMsg>,
}

/// A queue message whose record must be read and written again to free a
/// segment (`copy_forward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCopy {
    pub qid: u64,
    pub mid: u64,
    /// Where its `QueueMsg` record lies.
    pub at: Loc,
    /// Its current delivery count (the copy carries it).
    pub deliveries: u16,
}

/// The records (or shares of one) an op made live and dead.
#[derive(Default)]
pub struct Changes {
    pub live: Vec<Loc>,
    pub dead: Vec<Loc>,
}

#[derive(Default)]
pub struct QueueIndex {
    queues: Map<u64, (Arc<str>, Loc)>,
    /// Bindings made by subscriptions, by queue id.
    bindings: Map<u64, Vec<(Arc<str>, Loc)>>,
    /// By queue id.
    msgs: Map<u64, Slots>,
    max_qid: u64,
    max_mid: u64,
    /// While replaying: what recovery needs of each `QueueMsg` read, in log
    /// order ((queue id, message id) and the rest of `RecoveredMsg`).
    replayed: Option<Vec<(u64, RecoveredMsg)>>,
}

impl QueueIndex {
    /// Keep what recovery needs of each message read, until `recovered`.
    pub fn begin_replay(&mut self) {
        self.replayed.get_or_insert_with(Vec::new);
    }

    /// Where message `mid` of queue `qid` lies, if it is live.
    pub fn locate(&self, qid: u64, mid: u64) -> Option<Loc> {
        self.msgs.get(&qid)?.get(mid).map(|s| s.msg)
    }

    /// Messages held, in every queue.
    pub fn messages(&self) -> usize {
        self.msgs.values().map(Slots::len).sum()
    }

    /// Apply a queue op written at `loc`; other ops change nothing.
    pub fn apply(&mut self, op: Op, loc: Loc) -> Changes {
        let mut ch = Changes::default();
        match op {
            Op::QueueDecl { qid, name } => {
                self.max_qid = self.max_qid.max(qid);
                ch.live.push(loc);
                if let Some((_, old)) = self.queues.insert(qid, (name, loc)) {
                    ch.dead.push(old);
                }
            }
            Op::QueueMsg {
                qid,
                mid,
                message,
                deliveries,
                enqueued_ms,
                key,
            } => {
                self.max_mid = self.max_mid.max(mid);
                if let Some(r) = self.replayed.as_mut() {
                    r.push((
                        qid,
                        RecoveredMsg {
                            id: mid,
                            deliveries,
                            enqueued_ms,
                            bytes: message_bytes(&message),
                            expires: message.expires_at(),
                            key: key.as_deref().map_or(0, key_hash),
                            message_id: message_id(&message).map(Box::from),
                        },
                    ));
                }
                ch.live.push(loc);
                let slots = self.msgs.entry(qid).or_default();
                if let Some(old) = slots.insert(Slot::new(mid, loc, deliveries)) {
                    ch.dead.push(old.msg);
                    ch.dead.extend(old.count());
                }
                self.compact_replayed();
            }
            Op::QueueCount { qid, counts } => {
                // One record, several messages: each owns a share of its bytes,
                // live while it is that message's latest count.
                let n = counts.len().max(1) as u32;
                let Some(slots) = self.msgs.get_mut(&qid) else {
                    return ch;
                };
                for (i, (mid, deliveries)) in counts.into_iter().enumerate() {
                    let bytes = loc.bytes / n + u32::from(i == 0) * (loc.bytes % n);
                    if let Some(m) = slots.get_mut(mid) {
                        ch.dead.extend(m.count());
                        m.set_count(
                            deliveries,
                            Loc {
                                seg: loc.seg,
                                bytes,
                                offset: 0,
                            },
                        );
                        // What is accounted is what `count` gives back.
                        ch.live.extend(m.count());
                    }
                }
            }
            Op::QueueBind { qid, filter } => {
                ch.live.push(loc);
                let b = self.bindings.entry(qid).or_default();
                match b.iter_mut().find(|(f, _)| *f == filter) {
                    Some((_, l)) => ch.dead.push(std::mem::replace(l, loc)),
                    None => b.push((filter, loc)),
                }
            }
            Op::QueueGone { qid } => {
                if let Some((_, l)) = self.queues.remove(&qid) {
                    ch.dead.push(l);
                }
                for (_, l) in self.bindings.remove(&qid).unwrap_or_default() {
                    ch.dead.push(l);
                }
                for s in self.msgs.remove(&qid).iter().flat_map(Slots::iter) {
                    ch.dead.push(s.msg);
                    ch.dead.extend(s.count());
                }
            }
            Op::QueueDone { qid, mids } => {
                let Some(slots) = self.msgs.get_mut(&qid) else {
                    return ch;
                };
                for mid in mids {
                    if let Some(old) = slots.remove(mid) {
                        ch.dead.push(old.msg);
                        ch.dead.extend(old.count());
                    }
                }
                if slots.is_empty() {
                    self.msgs.remove(&qid);
                }
            }
            _ => {}
        }
        ch
    }

    /// The live queue records of segment `seg`: queue names as ops, messages
    /// as records to read and write again (with their current count).
    pub fn copy_forward(&self, seg: u64, ops: &mut Vec<Op>, copies: &mut Vec<QueueCopy>) {
        for (qid, (name, l)) in &self.queues {
            if l.seg == seg {
                ops.push(Op::QueueDecl {
                    qid: *qid,
                    name: name.clone(),
                });
            }
        }
        for (qid, b) in &self.bindings {
            for (filter, l) in b {
                if l.seg == seg {
                    ops.push(Op::QueueBind {
                        qid: *qid,
                        filter: filter.clone(),
                    });
                }
            }
        }
        for (qid, slots) in &self.msgs {
            for s in slots.iter() {
                if s.msg.seg == seg || s.count_in(seg) {
                    copies.push(QueueCopy {
                        qid: *qid,
                        mid: s.mid,
                        at: s.msg,
                        deliveries: s.deliveries,
                    });
                }
            }
        }
    }

    /// While replaying: once what is kept of each message read is more than
    /// twice the live messages, keep only the latest of each live one (the
    /// log holds many more records than live messages when consumers keep up;
    /// amortised O(log n) per record).
    fn compact_replayed(&mut self) {
        let Some(r) = self.replayed.as_mut() else {
            return;
        };
        let live: usize = self.msgs.values().map(Slots::len).sum();
        if r.len() < 2 * live + 4096 {
            return;
        }
        r.sort_by_key(|(qid, m)| (*qid, m.id));
        let mut kept: Vec<(u64, RecoveredMsg)> = Vec::with_capacity(live);
        for (qid, m) in r.drain(..) {
            let live = self.msgs.get(&qid).and_then(|s| s.get(m.id)).is_some();
            match kept.last_mut() {
                // The later record of the same message wins (stable sort).
                Some((q, last)) if *q == qid && last.id == m.id => *last = m,
                _ if live => kept.push((qid, m)),
                _ => {}
            }
        }
        *r = kept;
    }

    /// Every queue with its messages (a message of a queue never declared is
    /// dropped: it cannot be named). Ends the replay: what was kept of each
    /// message read goes.
    pub fn recovered(&mut self) -> Vec<RecoveredQueue> {
        let mut out: BTreeMap<u64, RecoveredQueue> = self
            .queues
            .iter()
            .map(|(qid, (name, _))| {
                (
                    *qid,
                    RecoveredQueue {
                        qid: *qid,
                        name: name.clone(),
                        bindings: self
                            .bindings
                            .get(qid)
                            .map(|b| b.iter().map(|(f, _)| f.clone()).collect())
                            .unwrap_or_default(),
                        messages: Vec::new(),
                    },
                )
            })
            .collect();
        let mut replayed = self.replayed.take().unwrap_or_default();
        // The last record of each message is the one that counts (a stable
        // sort keeps log order among the records of one message).
        replayed.sort_by_key(|(qid, m)| (*qid, m.id));
        let mut it = replayed.into_iter().peekable();
        while let Some((qid, mut m)) = it.next() {
            if it
                .peek()
                .is_some_and(|(q, next)| *q == qid && next.id == m.id)
            {
                continue;
            }
            let (Some(q), Some(s)) = (
                out.get_mut(&qid),
                self.msgs.get(&qid).and_then(|s| s.get(m.id)),
            ) else {
                continue;
            };
            m.deliveries = s.deliveries;
            q.messages.push(m);
        }
        out.into_values().collect()
    }

    /// Ids above every queue id and queue message id on disk.
    pub fn next_ids(&self) -> (u64, u64) {
        (self.max_qid + 1, self.max_mid + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::State;
    use super::*;
    use crate::protocol::{PublishProperties, QoS};
    use crate::session::Message;
    use bytes::Bytes;

    fn msg() -> Arc<Message> {
        Arc::new(Message {
            topic: "jobs/1".into(),
            payload: Bytes::from_static(b"work"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties::default(),
            received: Instant::now(),
        })
    }

    fn at(seg: u64) -> Loc {
        Loc {
            seg,
            bytes: 10,
            offset: 0,
        }
    }

    fn qmsg(mid: u64, deliveries: u16) -> Op {
        Op::QueueMsg {
            qid: 1,
            mid,
            message: msg(),
            deliveries,
            enqueued_ms: 1_000 + mid,
            key: Some(format!("k{mid}").into()),
        }
    }

    #[test]
    fn queue_records_live_until_done_and_copy_forward_with_their_count() {
        let mut st = State::default();
        st.begin_replay();
        st.add_segment(1);
        st.add_segment(2);
        st.apply(
            Op::QueueDecl {
                qid: 1,
                name: "jobs".into(),
            },
            at(1),
        );
        st.apply(qmsg(5, 0), at(1));
        st.apply(qmsg(6, 0), at(1));
        st.apply(
            Op::QueueCount {
                qid: 1,
                counts: vec![(5, 2)],
            },
            at(2),
        );
        st.apply(
            Op::QueueCount {
                qid: 1,
                counts: vec![(5, 3)],
            },
            at(2),
        );
        assert_eq!(st.segment_live(1), 30);
        assert_eq!(st.segment_live(2), 10, "only the latest count is live");
        st.apply(
            Op::QueueDone {
                qid: 1,
                mids: vec![6],
            },
            at(2),
        );
        assert_eq!(st.segment_live(1), 20);
        // Freeing segment 1: the queue as an op, message 5 as a record to read
        // back and write again with its current count.
        let (ops, copies) = st.copy_forward(1);
        assert_eq!(ops.len(), 1);
        assert_eq!(
            copies.queue,
            vec![QueueCopy {
                qid: 1,
                mid: 5,
                at: at(1),
                deliveries: 3
            }]
        );
        for op in ops {
            st.apply(op, at(3));
        }
        st.apply(qmsg(5, 3), at(3));
        assert_eq!(st.segment_live(1), 0);
        assert_eq!(st.segment_live(2), 0, "the count moved with the message");
        st.finish_replay();
        let (rec, _) = st.recovered(0, std::time::Instant::now());
        assert_eq!((rec.next_qid, rec.next_qmid), (2, 7));
        assert_eq!(rec.queues.len(), 1);
        let q = &rec.queues[0];
        assert_eq!(&*q.name, "jobs");
        assert_eq!(q.messages.len(), 1, "message 6 is done");
        let m = &q.messages[0];
        assert_eq!(
            (m.id, m.deliveries, m.enqueued_ms, m.key),
            (5, 3, 1_005, key_hash("k5"))
        );
        assert_eq!(m.bytes, message_bytes(&msg()));
        assert_eq!(st.queue_msgs(), 1);
    }

    #[test]
    fn replay_keeps_what_recovery_needs_of_live_messages_only() {
        let mut st = State::default();
        st.begin_replay();
        st.add_segment(1);
        st.apply(
            Op::QueueDecl {
                qid: 1,
                name: "jobs".into(),
            },
            at(1),
        );
        // 20,000 messages through the queue, every tenth still there, and
        // message 7 written twice (copied forward with its count).
        for mid in 0..20_000u64 {
            st.apply(qmsg(mid, 0), at(1));
            if mid % 10 != 7 {
                st.apply(
                    Op::QueueDone {
                        qid: 1,
                        mids: vec![mid],
                    },
                    at(1),
                );
            }
        }
        st.apply(qmsg(7, 2), at(1));
        let kept = st.queues.replayed.as_ref().map_or(0, Vec::len);
        assert!(kept < 2 * 2_000 + 4_096 + 1, "kept {kept}");
        st.finish_replay();
        let (rec, _) = st.recovered(0, std::time::Instant::now());
        let ids: Vec<u64> = rec.queues[0].messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, (7..20_000).step_by(10).collect::<Vec<u64>>());
        assert_eq!(rec.queues[0].messages[0].deliveries, 2);
        assert_eq!(rec.queues[0].messages[0].key, key_hash("k7"));
    }
}
