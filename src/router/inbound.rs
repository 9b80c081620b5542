//! A publisher's side of the router: its PUBLISH (QoS 2 duplicate suppression,
//! the ACL, the disk budget, routing), and every reply of an inbound QoS flow
//! (PUBACK, PUBREC, PUBREL, PUBCOMP), sent now, held while a receiver's queue is
//! full (backpressure), or held until what it acknowledges is durable.

use super::*;
use crate::bridge::link::IMPORTED_BY;

impl Router {
    /// A PUBLISH from a connected client: QoS 2 duplicate suppression, routing, and
    /// the acknowledgement (now, or held while a receiver's queue is full).
    pub(super) fn publish_from_client(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        p: Publish,
        now: Instant,
    ) {
        self.metrics.received_by_qos[usize::from(p.qos.as_u8())].fetch_add(1, Ordering::Relaxed);
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        // A taken-over connection's last packets: its client resends what was
        // not acknowledged on the new connection.
        if c.live(conn_id).is_none() {
            return;
        }
        let v5 = c.conn.as_ref().is_some_and(|h| h.version.is_v5());
        // A copy of a message that already passed here through a bridge (a
        // loop through other brokers' bridges): its flow completes, it goes
        // nowhere.
        let echo = !c.own_bridge
            && crate::bridge::origin::is_echo(&p.properties.user_properties, &self.node_id);
        if echo {
            self.metrics.bridge_loops.fetch_add(1, Ordering::Relaxed);
        }
        let allowed = self.may_publish(id, &p.topic);
        if !allowed {
            match (p.qos, p.packet_id) {
                // v5 says why: 0x87 in the PUBACK, or in the PUBREC, which ends
                // the QoS 2 exchange there (5.0 section 4.3.3: no PUBREL follows
                // a PUBREC of 0x80 or more), so no inbound id is kept.
                (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(pid)) if v5 => {
                    let kind = if p.qos == QoS::AtLeastOnce {
                        ReplyKind::PubAck
                    } else {
                        ReplyKind::PubRec
                    };
                    self.reply(id, conn_id, kind, pid, ReasonCode::NOT_AUTHORIZED);
                    return;
                }
                // 3.1.1 has no negative acknowledgement: the flow completes as
                // usual (as with Mosquitto) and the message goes nowhere.
                (QoS::AtLeastOnce, Some(pid)) => {
                    self.reply(id, conn_id, ReplyKind::PubAck, pid, ReasonCode::SUCCESS);
                    return;
                }
                (QoS::ExactlyOnce, Some(_)) => {}
                _ => return,
            }
        }
        if p.qos != QoS::AtMostOnce
            && self.store.as_ref().is_some_and(|s| s.handle.over_budget())
            && self.needs_store(&p)
        {
            self.refuse_over_budget(id, conn_id, &p);
            return;
        }
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        let mut p = p;
        if c.remote_bridge {
            // Brought in by another broker's bridge: marked, so no bridge
            // (ours or theirs) carries it back out.
            p.properties.user_properties =
                super::queues::with_properties(&p.properties.user_properties, &[(IMPORTED_BY, id)]);
        }
        let (kind, pid) = match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(pid)) => (ReplyKind::PubAck, pid),
            (QoS::ExactlyOnce, Some(pid)) => {
                if c.session.inbound_qos2_seen(pid.get()) {
                    // Re-sent before PUBREL: acknowledge again, deliver once
                    // [MQTT-4.3.3-10].
                    self.reply(id, conn_id, ReplyKind::PubRec, pid, ReasonCode::SUCCESS);
                    return;
                }
                // Each id waits for its PUBREL, kept across reconnects and
                // restarts. v5 bounds them by our Receive Maximum
                // [MQTT-3.3.4-9]; 3.1.1 has none, so a client that never sends
                // PUBREL could hold 65,535 ids per session (5 MB, stored). The
                // same cap applies: beyond it the connection is closed.
                // The limit this connection was told at CONNECT, which a
                // reload does not lower under it.
                let limit = c
                    .conn
                    .as_ref()
                    .map(|h| usize::from(h.receive_maximum))
                    .filter(|&m| m > 0)
                    .unwrap_or(self.max_inbound_qos2);
                if c.session.inbound_qos2_len() >= limit {
                    self.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(client = %id, limit, "QoS 2 messages waiting for PUBREL over receive_maximum: closing the connection");
                    if let Some(h) = c.conn.as_mut().filter(|h| h.conn_id == conn_id) {
                        h.close_with(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
                    }
                    return;
                }
                c.session.inbound_qos2_routed(pid.get());
                if let (true, Some(st)) = (c.sid != 0, self.store.as_mut()) {
                    // Durable before PUBREC, so a re-sent PUBLISH after a crash is
                    // still recognised as a duplicate.
                    st.ops.push(Op::InQos2 {
                        sid: c.sid,
                        pid: pid.get(),
                    });
                }
                (ReplyKind::PubRec, pid)
            }
            _ => {
                if !echo {
                    self.publish(Some(id), p, now, false);
                }
                return;
            }
        };
        if !allowed || echo {
            // A denied 3.1.1 QoS 2 message: its id is kept (above) so the
            // client's PUBREL gets its PUBCOMP; nothing is routed.
            self.reply(id, conn_id, kind, pid, ReasonCode::SUCCESS);
            return;
        }
        let routed = self.publish(Some(id), p, now, true);
        // 5.0: a message that matched no subscription is accepted with 0x10 No
        // matching subscribers (section 3.4.2.1), so a publisher can learn of a
        // mistyped topic; 3.1.1 has only success.
        // A work queue with no room refuses it: v5 0x97 Quota exceeded (the
        // publisher retries later); 3.1.1 has no negative acknowledgement, so
        // its message is acknowledged and counted as refused (queue_refused).
        let reason = if v5 && routed.refused {
            ReasonCode::QUOTA_EXCEEDED
        } else if v5 && routed.unmatched {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        let reply = Reply {
            kind,
            packet_id: pid,
            reason,
        };
        match routed.held_by.and_then(|t| self.clients.get_mut(&t)) {
            Some(target) => {
                self.metrics.acks_held.fetch_add(1, Ordering::Relaxed);
                target.rare_mut().held_acks.push(HeldAck {
                    publisher: id.clone(),
                    conn_id,
                    reply,
                })
            }
            None => self.reply(id, conn_id, kind, pid, reason),
        }
    }

    /// A receiver's PUBREC for a QoS 2 delivery.
    pub(super) fn on_pubrec(
        &mut self,
        client: &ClientId,
        conn_id: u64,
        packet_id: PacketId,
        success: bool,
        reason: ReasonCode,
        now: Instant,
    ) {
        if self.ack_of_wrong_kind(client, conn_id, packet_id, QoS::ExactlyOnce) {
            return;
        }
        let mut known = false;
        self.on_receiver_ack(client, conn_id, now, |s| {
            known = s.on_pubrec_with(packet_id, reason);
            known
        });
        if success {
            // PUBREC is answered with PUBREL (5.0 section 4.3.3); 0x92 for an id
            // we do not have in flight.
            self.reply(client, conn_id, ReplyKind::PubRel, packet_id, found(known));
        }
    }

    /// A publisher's PUBREL: its inbound QoS 2 id is released.
    pub(super) fn on_pubrel(&mut self, client: &ClientId, conn_id: u64, packet_id: PacketId) {
        // Release the id: a PUBLISH with it is new again (5.0 section 4.3.3).
        let mut known = false;
        if let Some(c) = self.clients.get_mut(client) {
            known = c.session.inbound_qos2_release(packet_id.get());
            if let (true, Some(st)) = (known && c.sid != 0, self.store.as_mut()) {
                // PUBCOMP waits for this: after it the client may reuse the id.
                st.ops.push(Op::InQos2Done {
                    sid: c.sid,
                    pid: packet_id.get(),
                });
            }
        }
        self.reply(client, conn_id, ReplyKind::PubComp, packet_id, found(known));
    }

    /// Push a reply into `client`'s outbox if `conn_id` is still its connection.
    pub(super) fn reply(
        &mut self,
        client: &ClientId,
        conn_id: u64,
        kind: ReplyKind,
        packet_id: PacketId,
        reason: ReasonCode,
    ) {
        let r = Reply {
            kind,
            packet_id,
            reason,
        };
        let mark = self.mark;
        let Some(c) = self
            .clients
            .get_mut(client)
            .filter(|c| c.live(conn_id).is_some())
        else {
            return;
        };
        // A reply depends on what its message wrote (the publish, the PUBREC,
        // the release of an inbound id); a persistent client's own state may
        // also still be on its way to the disk.
        let depends = c.sid != 0 || self.store.as_ref().is_some_and(|s| s.wrote_since(mark));
        if let Some(st) = self
            .store
            .as_mut()
            .filter(|s| s.must_hold(c.held_out, depends))
        {
            c.held_out += 1;
            st.hold(Held::Out {
                client: client.clone(),
                conn_id,
                item: Outgoing::Reply(r),
            });
            return;
        }
        let Some(h) = c.live(conn_id) else {
            return;
        };
        // INVARIANT: the connection keeps `reply_reserve` slots for replies by not
        // reading while it owes that many, so only a closing connection refuses.
        send_now(h, Outgoing::Reply(r), &self.metrics);
    }

    /// Send the acknowledgements held back by `id`'s full queue.
    pub(super) fn release_held(&mut self, id: &ClientId) {
        let held = match self.clients.get_mut(id) {
            Some(c) => c
                .take_rare(|r| Some(std::mem::take(&mut r.held_acks)))
                .unwrap_or_default(),
            None => return,
        };
        // These acknowledge publishes of earlier turns whose writes may still be
        // on their way: treat them as depending on the store.
        let mark = self.mark.take();
        for h in held {
            self.reply(
                &h.publisher,
                h.conn_id,
                h.reply.kind,
                h.reply.packet_id,
                h.reply.reason,
            );
        }
        self.mark = mark;
    }
}

/// The reason code of a QoS 2 reply: 0x92 Packet Identifier not found for an id
/// that is not in flight.
fn found(known: bool) -> ReasonCode {
    if known {
        ReasonCode::SUCCESS
    } else {
        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
    }
}
