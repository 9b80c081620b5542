//! The work queues' part of the store's index: which queues exist (id and name),
//! and each queue's messages with their delivery count and where their records
//! lie. Pure, like `state.rs`, which owns the byte accounting: `apply` tells it
//! which record became live and which dead.
//!
//! A queue message is live from its `QueueMsg` until its `QueueDone`; its latest
//! `QueueCount` is live with it (an older count is dead). Copying forward writes
//! one `QueueMsg` with the current count, which makes the older records dead.

use super::record::Op;
use super::state::Loc;
use crate::hash::Map;
use crate::session::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

struct QMsg {
    message: Arc<Message>,
    deliveries: u16,
    enqueued_ms: u64,
    loc: Loc,
    /// The latest `QueueCount` record, if any.
    count: Option<Loc>,
}

/// What one queue holds after recovery, for the router.
#[derive(Debug)]
pub struct RecoveredQueue {
    pub qid: u64,
    pub name: Arc<str>,
    /// In enqueue order (ids increase with it): (id, message, deliveries so far,
    /// first enqueue in Unix milliseconds).
    pub messages: Vec<(u64, Arc<Message>, u16, u64)>,
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
    /// By (queue id, message id).
    msgs: BTreeMap<(u64, u64), QMsg>,
    max_qid: u64,
    max_mid: u64,
}

impl QueueIndex {
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
            } => {
                self.max_mid = self.max_mid.max(mid);
                ch.live.push(loc);
                let new = QMsg {
                    message,
                    deliveries,
                    enqueued_ms,
                    loc,
                    count: None,
                };
                if let Some(old) = self.msgs.insert((qid, mid), new) {
                    ch.dead.push(old.loc);
                    ch.dead.extend(old.count);
                }
            }
            Op::QueueCount { qid, counts } => {
                // One record, several messages: each owns a share of its bytes,
                // live while it is that message's latest count.
                let n = counts.len().max(1) as u32;
                for (i, (mid, deliveries)) in counts.into_iter().enumerate() {
                    let share = Loc {
                        seg: loc.seg,
                        bytes: loc.bytes / n + u32::from(i == 0) * (loc.bytes % n),
                    };
                    if let Some(m) = self.msgs.get_mut(&(qid, mid)) {
                        m.deliveries = deliveries;
                        ch.live.push(share);
                        ch.dead.extend(m.count.replace(share));
                    }
                }
            }
            Op::QueueGone { qid } => {
                if let Some((_, l)) = self.queues.remove(&qid) {
                    ch.dead.push(l);
                }
                let mids: Vec<u64> = self
                    .msgs
                    .range((qid, 0)..=(qid, u64::MAX))
                    .map(|((_, m), _)| *m)
                    .collect();
                for mid in mids {
                    if let Some(old) = self.msgs.remove(&(qid, mid)) {
                        ch.dead.push(old.loc);
                        ch.dead.extend(old.count);
                    }
                }
            }
            Op::QueueDone { qid, mids } => {
                for mid in mids {
                    if let Some(old) = self.msgs.remove(&(qid, mid)) {
                        ch.dead.push(old.loc);
                        ch.dead.extend(old.count);
                    }
                }
            }
            _ => {}
        }
        ch
    }

    /// Ops that re-create the live queue records of segment `seg`.
    pub fn copy_forward(&self, seg: u64, ops: &mut Vec<Op>) {
        for (qid, (name, l)) in &self.queues {
            if l.seg == seg {
                ops.push(Op::QueueDecl {
                    qid: *qid,
                    name: name.clone(),
                });
            }
        }
        for ((qid, mid), m) in &self.msgs {
            if m.loc.seg == seg || m.count.is_some_and(|c| c.seg == seg) {
                ops.push(Op::QueueMsg {
                    qid: *qid,
                    mid: *mid,
                    message: m.message.clone(),
                    deliveries: m.deliveries,
                    enqueued_ms: m.enqueued_ms,
                });
            }
        }
    }

    /// Every queue with its messages (a message of a queue never declared is
    /// dropped: it cannot be named).
    pub fn recovered(&self) -> Vec<RecoveredQueue> {
        let mut out: BTreeMap<u64, RecoveredQueue> = self
            .queues
            .iter()
            .map(|(qid, (name, _))| {
                (
                    *qid,
                    RecoveredQueue {
                        qid: *qid,
                        name: name.clone(),
                        messages: Vec::new(),
                    },
                )
            })
            .collect();
        for ((qid, mid), m) in &self.msgs {
            if let Some(q) = out.get_mut(qid) {
                q.messages
                    .push((*mid, m.message.clone(), m.deliveries, m.enqueued_ms));
            }
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
    use bytes::Bytes;
    use std::time::Instant;

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
        Loc { seg, bytes: 10 }
    }

    fn qmsg(mid: u64) -> Op {
        Op::QueueMsg {
            qid: 1,
            mid,
            message: msg(),
            deliveries: 0,
            enqueued_ms: 1_000 + mid,
        }
    }

    #[test]
    fn queue_records_live_until_done_and_copy_forward_with_their_count() {
        let mut st = State::default();
        st.add_segment(1);
        st.add_segment(2);
        st.apply(
            Op::QueueDecl {
                qid: 1,
                name: "jobs".into(),
            },
            at(1),
        );
        st.apply(qmsg(5), at(1));
        st.apply(qmsg(6), at(1));
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
        // Freeing segment 1: the queue and message 5 with its current count.
        let ops = st.copy_forward(1);
        assert_eq!(ops.len(), 2);
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::QueueMsg {
                mid: 5,
                deliveries: 3,
                ..
            }
        )));
        for op in ops {
            st.apply(op, at(3));
        }
        assert_eq!(st.segment_live(1), 0);
        assert_eq!(st.segment_live(2), 0, "the count moved with the message");
        let (rec, _) = st.recovered(0);
        assert_eq!((rec.next_qid, rec.next_qmid), (2, 7));
        assert_eq!(rec.queues.len(), 1);
        let q = &rec.queues[0];
        assert_eq!(&*q.name, "jobs");
        assert_eq!(q.messages.len(), 1);
        assert_eq!(
            (q.messages[0].0, q.messages[0].2, q.messages[0].3),
            (5, 3, 1_005)
        );
    }
}
