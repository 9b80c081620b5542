//! Retained messages in the router: setting, replacing and clearing them within
//! the caps, and sending what a SUBSCRIBE is owed as the subscriber makes room.
//! (The admin endpoint's listing and clear are `admin_retained.rs`.)

use super::*;

impl Router {
    /// Send retained messages owed since SUBSCRIBE [MQTT-3.3.1-9] as far as the
    /// client has room: QoS 1/2 while its queue is empty (its window paces them,
    /// and each acknowledgement sends more), QoS 0 while its outbox has room
    /// beyond a full window (a short wake-up retries). All of them arrive, however
    /// many, without one router turn doing them all or a queue cap cutting them
    /// short; an offline session gets the rest when it resumes.
    pub(super) fn pump_retained(&mut self, id: &ClientId, now: Instant) {
        // Work per call, so a 10,000-message backlog does not stall the router.
        const PER_CALL: usize = 256;
        const WAKE: Duration = Duration::from_millis(10);
        for _ in 0..PER_CALL {
            let Some(c) = self.clients.get_mut(id) else {
                return;
            };
            let Some(h) = c.conn.as_ref() else {
                return;
            };
            let room_qos0 = c.room() > h.window;
            let outbox_bytes = h.outbox.bytes();
            let queue_empty = c.session.pending_len() == 0;
            let Some(backlog) = c.retained_mut() else {
                return;
            };
            let Some(owed) = backlog.pop() else {
                c.take_rare(|r| r.retained.take());
                return;
            };
            // The topic's retained message now (cleared since: nothing to send).
            let Some(m) = self.retained.get(&owed.topic).cloned() else {
                continue;
            };
            let qos = m.qos.min(owed.qos);
            let room = if qos == QoS::AtMostOnce {
                // One bigger than the whole outbox budget never fits: let
                // `deliver_to` drop it (counted) rather than wait for ever.
                room_qos0
                    && (outbox_bytes + m.cost() <= self.limits.max_bytes
                        || m.cost() > self.limits.max_bytes)
            } else {
                queue_empty
            };
            if !room {
                backlog.unpop(owed);
                if qos == QoS::AtMostOnce && !backlog.wake_scheduled {
                    backlog.wake_scheduled = true;
                    self.schedule(now + WAKE, id);
                }
                return;
            }
            if m.is_expired(now) || !self.may_read(id, &m.topic) {
                continue;
            }
            let d = Delivery {
                qos,
                // [MQTT-3.3.1-8] retained-on-subscribe carries RETAIN 1.
                retain: true,
                subscription_ids: owed.identifier.into_iter().collect(),
                message: m.clone(),
                did: 0,
                shared: false,
                queued: None,
            };
            // Never held: nobody waits for an ack of a retained message.
            if let (_, Some(r)) = self.deliver_durably(id, d, now, false) {
                self.write_message(m, vec![r]);
            }
        }
        // More left and room for it: go on after other work (just after `now`,
        // so a `tick` at `now` does not take it up again at once).
        if let Some(b) = self.clients.get_mut(id).and_then(|c| c.retained_mut()) {
            if !b.wake_scheduled {
                b.wake_scheduled = true;
                self.schedule(now + Duration::from_micros(1), id);
            }
        }
    }

    /// Remove the retained message of `topic` and write its removal; whether
    /// there was one. The first half of every set, replace or clear (an empty
    /// retained PUBLISH, the admin endpoint's clear).
    pub(super) fn unset_retained(&mut self, topic: &str) -> bool {
        // `$SYS` is the broker's own, rewritten every interval: in memory only.
        let durable = !crate::topic::is_sys_topic(topic);
        let Some(old) = self.retained.remove(topic) else {
            return false;
        };
        if durable {
            self.retained_bytes = self.retained_bytes.saturating_sub(old.cost());
        } else {
            self.sys_retained -= 1;
        }
        if let Some(st) = self.store.as_mut().filter(|_| durable) {
            st.ops.push(Op::RetainClear {
                topic: old.topic.clone(),
            });
        }
        true
    }

    /// Set, replace or clear a retained message [MQTT-3.3.1-5/6], within the caps.
    pub(super) fn store_retained(&mut self, topic: &str, msg: &Arc<Message>) {
        let durable = !crate::topic::is_sys_topic(topic);
        self.unset_retained(topic);
        if msg.payload.is_empty() {
            // [MQTT-3.3.1-6] an empty retained message clears the topic.
            return;
        }
        // The caps are the clients': `$SYS` neither counts nor is refused.
        if durable
            && (self.retained.len() - self.sys_retained >= self.max_retained_messages
                || self.retained_bytes + msg.cost() > self.max_retained_bytes)
        {
            self.metrics
                .retained_refused
                .fetch_add(1, Ordering::Relaxed);
            warn!(topic, "retained message not kept: max_retained_* reached");
            return;
        }
        // Kept for long: its own exact allocations, not slices of a read buffer
        // shared with other packets (which it would keep alive).
        let msg = Arc::new(Message {
            topic: msg.topic.clone(),
            payload: bytes::Bytes::copy_from_slice(&msg.payload),
            qos: msg.qos,
            retain: msg.retain,
            properties: crate::protocol::PublishProperties {
                correlation_data: msg
                    .properties
                    .correlation_data
                    .as_deref()
                    .map(bytes::Bytes::copy_from_slice),
                ..msg.properties.clone()
            },
            received: msg.received,
        });
        if durable {
            self.retained_bytes += msg.cost();
        } else {
            self.sys_retained += 1;
        }
        self.retained.set(topic, msg.clone());
        if let Some(st) = self.store.as_mut().filter(|_| durable) {
            if let Some(Op::RetainClear { topic: t }) = st.ops.last() {
                if **t == *topic {
                    // Replaced, not cleared: the new record supersedes the old.
                    st.ops.pop();
                }
            }
            st.ops.push(Op::Retain {
                message: msg.clone(),
            });
        }
    }
}
