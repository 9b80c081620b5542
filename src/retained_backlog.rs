//! Retained messages owed to one subscriber since its SUBSCRIBE [MQTT-3.3.1-9],
//! sent as its window and outbox make room instead of all in the router turn of
//! the SUBSCRIBE. Pure: the router decides when there is room.
//!
//! Owns the order and the per-subscription options (QoS, identifier) of what is
//! still owed; it does not check the ACL, expiry or room (the router does, when it
//! sends). What is owed is a topic: the router sends the retained message the
//! topic has when it gets there (a newer one, or none if it was cleared), so a
//! backlog never keeps replaced messages alive; an entry costs one `Arc<str>`
//! pointer to a topic the retained store holds anyway.

use crate::protocol::QoS;
use std::collections::VecDeque;
use std::sync::Arc;

/// The retained messages one filter of a SUBSCRIBE matched.
struct Batch {
    filter: Arc<str>,
    qos: QoS,
    identifier: Option<u32>,
    topics: VecDeque<Arc<str>>,
}

/// One retained topic owed, with the options of the subscription that asked.
pub struct Owed {
    pub topic: Arc<str>,
    /// The subscription's maximum QoS.
    pub qos: QoS,
    pub identifier: Option<u32>,
}

#[derive(Default)]
pub struct RetainedBacklog {
    batches: VecDeque<Batch>,
    len: usize,
    /// The router has a wake-up scheduled to send more (at most one at a time).
    pub wake_scheduled: bool,
}

impl RetainedBacklog {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Owe the retained messages of `topics` for `filter`, keeping at most
    /// `cap` owed in all (a client repeating SUBSCRIBE `#` cannot pile up the
    /// whole store again and again). Returns how many were left out.
    pub fn push(
        &mut self,
        filter: Arc<str>,
        qos: QoS,
        identifier: Option<u32>,
        mut topics: Vec<Arc<str>>,
        cap: usize,
    ) -> usize {
        let room = cap.saturating_sub(self.len);
        let dropped = topics.len().saturating_sub(room);
        topics.truncate(room);
        if topics.is_empty() {
            return dropped;
        }
        self.len += topics.len();
        self.batches.push_back(Batch {
            filter,
            qos,
            identifier,
            topics: topics.into(),
        });
        dropped
    }

    /// The next owed message, in SUBSCRIBE order.
    pub fn pop(&mut self) -> Option<Owed> {
        loop {
            let batch = self.batches.front_mut()?;
            match batch.topics.pop_front() {
                Some(topic) => {
                    self.len -= 1;
                    return Some(Owed {
                        topic,
                        qos: batch.qos,
                        identifier: batch.identifier,
                    });
                }
                None => {
                    self.batches.pop_front();
                }
            }
        }
    }

    /// Put back a message `pop` gave out that could not be sent yet.
    pub fn unpop(&mut self, owed: Owed) {
        self.len += 1;
        match self.batches.front_mut() {
            Some(b) if b.qos == owed.qos && b.identifier == owed.identifier => {
                b.topics.push_front(owed.topic)
            }
            _ => self.batches.push_front(Batch {
                filter: Arc::from(""),
                qos: owed.qos,
                identifier: owed.identifier,
                topics: VecDeque::from([owed.topic]),
            }),
        }
    }

    /// The subscription to `filter` is gone: what it was owed is not sent.
    pub fn forget_filter(&mut self, filter: &str) {
        self.batches.retain(|b| {
            let keep = &*b.filter != filter;
            if !keep {
                self.len -= b.topics.len();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str) -> Arc<str> {
        Arc::from(topic)
    }

    #[test]
    fn owed_in_order_capped_and_forgotten_per_filter() {
        let mut b = RetainedBacklog::default();
        let dropped = b.push(
            Arc::from("a/#"),
            QoS::AtLeastOnce,
            Some(7),
            vec![msg("a/1"), msg("a/2")],
            3,
        );
        assert_eq!(dropped, 0);
        let dropped = b.push(
            Arc::from("b/#"),
            QoS::AtMostOnce,
            None,
            vec![msg("b/1"), msg("b/2")],
            3,
        );
        assert_eq!(dropped, 1, "over the cap of 3");
        assert_eq!(b.len(), 3);
        let first = b.pop().unwrap();
        assert_eq!((&*first.topic, first.identifier), ("a/1", Some(7)));
        b.unpop(first);
        assert_eq!(&*b.pop().unwrap().topic, "a/1");
        b.forget_filter("b/#");
        assert_eq!(b.len(), 1);
        assert_eq!(&*b.pop().unwrap().topic, "a/2");
        assert!(b.pop().is_none());
        assert!(b.is_empty());
    }
}
