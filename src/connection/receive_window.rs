//! Our Receive Maximum, as the connection keeps it: the inbound QoS 1/2 packet
//! ids not yet completed by PUBACK / PUBCOMP (what a v5 client's count is checked
//! against [MQTT-3.3.4-9]), and the replies the router still owes for packets we
//! handed it (reading pauses at `receive_maximum` of them, which also bounds the
//! outbox slots replies take). Pure.
//!
//! The inbound QoS 2 state itself (which ids were received, released) is the
//! router's, as it outlives the connection; this only counts.

use super::close::Close;
use crate::protocol::ReasonCode;
use crate::session::{Reply, ReplyKind};
use std::collections::HashSet;

#[derive(Debug, Default)]
pub(super) struct ReceiveWindow {
    /// Inbound QoS 1/2 packet ids not yet completed by PUBACK / PUBCOMP.
    /// Boxed, made at the first and let go when empty at `compact`: a
    /// subscriber that never publishes QoS 1/2 keeps no empty set.
    #[allow(clippy::box_collection)] // 8 bytes inline, not 48: the point
    unacked: Option<Box<HashSet<u16>>>,
    /// Replies the router still owes us for packets we forwarded (QoS 1/2
    /// PUBLISH, PUBREL, PUBREC).
    owed: usize,
}

impl ReceiveWindow {
    /// Replies the router still owes.
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// A packet was handed to the router that it answers (PUBREL, a successful
    /// PUBREC).
    pub fn expect_reply(&mut self) {
        self.owed += 1;
    }

    /// A QoS 1/2 PUBLISH with `packet_id` arrived. `max` is our Receive Maximum
    /// when the client must keep to it (v5); a resent id is not counted twice.
    pub fn admit(&mut self, packet_id: u16, max: Option<usize>) -> Result<(), Close> {
        let unacked = self.unacked.get_or_insert_with(Default::default);
        if let Some(max) = max {
            if !unacked.contains(&packet_id) && unacked.len() >= max {
                // [MQTT-3.3.4-9] more unacknowledged QoS 1/2 PUBLISHes than our
                // Receive Maximum. 3.1.1 has no such limit: a 3.1.1 client that
                // pipelines more is slowed by flow control instead.
                return Err(Close::error(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded",
                ));
            }
        }
        unacked.insert(packet_id);
        // The router answers with PUBACK / PUBREC once the message is routed
        // (and, while a receiver's queue is full, only when it drains).
        self.owed += 1;
        Ok(())
    }

    /// The router's reply `r` is being written.
    pub fn replied(&mut self, r: &Reply) {
        self.owed = self.owed.saturating_sub(1);
        let completes = match r.kind {
            ReplyKind::PubAck | ReplyKind::PubComp => true,
            // An error PUBREC ends the QoS 2 flow.
            ReplyKind::PubRec => r.reason.is_error(),
            ReplyKind::PubRel => false,
        };
        if completes {
            if let Some(unacked) = &mut self.unacked {
                unacked.remove(&r.packet_id.get());
            }
        }
    }

    /// Let an empty set of ids go (the connection goes idle).
    pub fn compact(&mut self) {
        if self.unacked.as_ref().is_some_and(|u| u.is_empty()) {
            self.unacked = None;
        }
    }

    /// The connection hibernates, owed nothing (`Conn::may_hibernate`): only
    /// its ids are kept (a QoS 2 id waits for its PUBREL while it sleeps).
    pub fn doze(self) -> DozingWindow {
        debug_assert_eq!(self.owed, 0);
        DozingWindow(self.unacked)
    }
}

/// What a hibernating connection keeps of its `ReceiveWindow`: 8 bytes.
#[allow(clippy::box_collection)] // as `ReceiveWindow::unacked`
pub(super) struct DozingWindow(Option<Box<HashSet<u16>>>);

impl DozingWindow {
    pub fn rouse(self) -> ReceiveWindow {
        ReceiveWindow {
            unacked: self.0,
            owed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PacketId;

    fn reply(kind: ReplyKind, id: u16, reason: ReasonCode) -> Reply {
        Reply {
            kind,
            packet_id: PacketId::new(id).unwrap(),
            reason,
        }
    }

    #[test]
    fn v5_limit_counts_unacknowledged_ids_once() {
        let mut w = ReceiveWindow::default();
        assert!(w.admit(1, Some(2)).is_ok());
        assert!(w.admit(2, Some(2)).is_ok());
        // A resend of an id already counted is not another one.
        assert!(w.admit(2, Some(2)).is_ok());
        let over = w
            .admit(3, Some(2))
            .err()
            .map(|c| (c.reason, c.reason_string));
        assert_eq!(
            over,
            Some((
                Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
                Some("receive maximum exceeded")
            ))
        );
        // 3.1.1: no limit.
        assert!(w.admit(3, None).is_ok());
        assert_eq!(w.owed(), 4);
    }

    #[test]
    fn replies_complete_ids_and_pay_what_is_owed() {
        let mut w = ReceiveWindow::default();
        for id in 1..=4 {
            assert!(w.admit(id, None).is_ok());
        }
        w.replied(&reply(ReplyKind::PubAck, 1, ReasonCode::SUCCESS));
        // A successful PUBREC keeps the id until PUBCOMP.
        w.replied(&reply(ReplyKind::PubRec, 2, ReasonCode::SUCCESS));
        // An error PUBREC ends the flow.
        w.replied(&reply(ReplyKind::PubRec, 3, ReasonCode::QUOTA_EXCEEDED));
        assert_eq!(w.owed(), 1);
        assert!(w.admit(5, Some(3)).is_ok());
        assert!(w.admit(6, Some(3)).is_err());
        w.expect_reply();
        w.replied(&reply(ReplyKind::PubComp, 2, ReasonCode::SUCCESS));
        assert!(w.admit(6, Some(3)).is_ok());
        // Never below zero.
        for _ in 0..10 {
            w.replied(&reply(ReplyKind::PubRel, 9, ReasonCode::SUCCESS));
        }
        assert_eq!(w.owed(), 0);
    }
}
