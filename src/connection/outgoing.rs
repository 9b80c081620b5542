//! What the outbox hands a connection, encoded into its write buffer: the
//! router's replies (which also move our Receive Maximum), PUBRELs, and
//! deliveries, with outgoing topic aliases and the client's Maximum Packet Size.
//!
//! Writes only into the buffer; the run loop in `mod.rs` writes the buffer to the
//! socket.

use super::topic_alias::OutAlias;
use super::Conn;
use crate::protocol::{AckProperties, Packet, PacketId, PubResponse, PublishView};
use crate::session::{Delivery, Outgoing, ReplyKind};
use std::time::Instant;
use tracing::warn;

impl Conn {
    /// Encode one outbox item into the write buffer.
    pub(super) fn push_outgoing(&mut self, o: Outgoing) {
        match o {
            Outgoing::PubRel(pid) => {
                self.write_packet(&Packet::PubRel(PubResponse::success(pid)));
            }
            Outgoing::Reply(r) => {
                self.inbound.replied(&r);
                let body = PubResponse {
                    packet_id: r.packet_id,
                    reason_code: r.reason,
                    properties: AckProperties::default(),
                };
                let pkt = match r.kind {
                    ReplyKind::PubAck => Packet::PubAck(body),
                    ReplyKind::PubRec => Packet::PubRec(body),
                    ReplyKind::PubRel => Packet::PubRel(body),
                    ReplyKind::PubComp => Packet::PubComp(body),
                };
                self.write_packet(&pkt);
            }
            Outgoing::Publish {
                delivery,
                packet_id,
                dup,
            } => self.push_delivery(delivery, packet_id, dup),
        }
    }

    /// Encode one delivery: with a topic alias when the client allows one, or
    /// not at all when it is bigger than the client's Maximum Packet Size.
    fn push_delivery(&mut self, delivery: Delivery, packet_id: Option<PacketId>, dup: bool) {
        let m = &delivery.message;
        let v5 = self.version.is_v5();
        let mut view = PublishView {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: &m.topic,
            packet_id,
            properties: &m.properties,
            topic_alias: None,
            // [MQTT-3.3.2-6] the expiry sent on is what is left of it.
            message_expiry_interval: m.expiry_left(Instant::now()).map(|s| s.max(1)),
            subscription_identifiers: &delivery.subscription_ids,
            payload: &m.payload,
        };
        let mut alias_added = false;
        if v5 {
            match self.out_aliases.alias(&m.topic) {
                OutAlias::Known(alias) => {
                    view.topic_alias = Some(alias);
                    view.topic = "";
                }
                OutAlias::New(alias) => {
                    view.topic_alias = Some(alias);
                    alias_added = true;
                }
                OutAlias::None => {}
            }
        }
        if let Some(max) = self.client_max_packet {
            let max = max as usize;
            if alias_added && view.encoded_len(self.version) > max {
                // The alias property made it 3 bytes too big: send it without.
                view.topic_alias = None;
                self.out_aliases.forget(&m.topic);
            }
            if view.encoded_len(self.version) > max {
                // [MQTT-3.1.2-25] too big for this client (queued or resumed before
                // its limit was known): skip it, as if delivered.
                self.skipped.extend(packet_id);
                return;
            }
        }
        if let Err(e) = view.encode(self.version, &mut self.wbuf) {
            warn!(error = %e, "cannot encode a delivery");
        }
    }
}
