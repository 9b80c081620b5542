//! From one message to its receivers: matching the trie, merging a client's
//! overlapping subscriptions (highest QoS, every identifier once), one member per
//! shared group, the per-receiver ACL and size checks, and handing each delivery
//! to its session (with backpressure). Also a departed member's shared messages
//! handed on to the rest of its group.

use super::*;

/// A per-receiver merge of every matching plain subscription.
pub(super) struct Target {
    client: ClientId,
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<u32>,
    /// Chosen as a member of a shared group (never merged with others).
    shared: bool,
}

/// What became of one delivery, for the publisher's acknowledgement and the store.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivered {
    /// Too big for the receiver: counts as delivered, nothing kept.
    Skipped,
    /// In the inflight window with this packet id (0 for QoS 0).
    Sent(u16),
    Queued,
    /// Queued past a connected receiver's cap: hold the publisher's ack.
    Held,
}

impl Delivered {
    /// The packet id (0: none yet) when the session kept the delivery.
    pub(super) fn kept(&self) -> Option<u16> {
        match self {
            Delivered::Skipped => None,
            Delivered::Sent(pid) => Some(*pid),
            Delivered::Queued | Delivered::Held => Some(0),
        }
    }
}

/// What routing one message found, for the publisher's acknowledgement.
#[derive(Debug, Default)]
pub struct Routed {
    /// A receiver whose full queue holds the acknowledgement (with `may_hold`).
    pub held_by: Option<ClientId>,
    /// No subscription and no work queue matched (counted in
    /// `messages_no_subscribers`).
    pub unmatched: bool,
    /// A work queue bound to the topic had no room (`overflow = "reject"`).
    pub refused: bool,
}

/// The encoded size of a delivery as a PUBLISH without topic alias (an upper bound
/// of what is sent: an alias only shrinks it).
fn publish_size(d: &Delivery, version: ProtocolVersion) -> usize {
    let m = &d.message;
    crate::protocol::PublishView {
        dup: false,
        qos: d.qos,
        retain: d.retain,
        topic: &m.topic,
        packet_id: PacketId::new(1),
        properties: &m.properties,
        topic_alias: None,
        message_expiry_interval: m.properties.message_expiry_interval,
        subscription_identifiers: &d.subscription_ids,
        payload: &m.payload,
    }
    .encoded_len(version)
}

impl Router {
    /// Route one application message: retained store, then every matching
    /// subscription. `from` is the publisher, for No Local. With `may_hold`, says
    /// which receiver's full queue should hold the publisher's acknowledgement;
    /// and whether nothing matched.
    pub fn publish(
        &mut self,
        from: Option<&ClientId>,
        mut p: Publish,
        now: Instant,
        may_hold: bool,
    ) -> Routed {
        let topic: Arc<str> = Arc::from(p.topic.as_str());
        // Per-hop properties never travel on: the alias is the publisher's,
        // subscription identifiers are the receiver's (5.0 sections 3.3.2.3.4, 3.3.4).
        p.properties.topic_alias = None;
        p.properties.subscription_identifiers.clear();
        let msg = Arc::new(Message {
            topic: topic.clone(),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            received: now,
        });
        if msg.retain {
            self.keep_retained(&topic, &msg);
        }
        let targets = self.targets(&topic, from);
        let no_subscribers = targets.is_empty();
        let imported = came_through_a_bridge(&msg);
        let mut held_by = None;
        let mut receivers = Vec::new();
        for t in targets {
            // [convention: ACLs on publish and on delivery] the receiver must
            // be allowed to read this topic, whatever its filter matched.
            if !self.may_read(&t.client, &topic) {
                continue;
            }
            // Never from one bridge into another: with both sides bridging
            // the same topics that is a loop.
            if imported && self.clients.get(&t.client).is_some_and(|c| c.remote_bridge) {
                continue;
            }
            let d = Delivery {
                message: msg.clone(),
                qos: msg.qos.min(t.qos),
                // [MQTT-3.3.1-12/13] RETAIN is kept only with Retain As Published.
                retain: msg.retain && t.retain_as_published,
                subscription_ids: t.ids,
                did: 0,
                shared: t.shared,
                queued: None,
            };
            let (outcome, receiver) = self.deliver_durably(&t.client, d, now, may_hold);
            receivers.extend(receiver);
            if outcome == Some(Delivered::Held) {
                held_by.get_or_insert(t.client);
            }
        }
        if !receivers.is_empty() {
            self.write_message(msg.clone(), receivers);
        }
        // Work queues bound to the topic take their copy too.
        let (queued, refused) = self.enqueue_to_queues(&topic, &msg, now);
        if refused {
            self.metrics.queue_refused.fetch_add(1, Ordering::Relaxed);
        }
        let unmatched = no_subscribers && queued == 0 && !refused;
        if unmatched {
            self.metrics
                .messages_no_subscribers
                .fetch_add(1, Ordering::Relaxed);
        }
        Routed {
            held_by,
            unmatched,
            refused,
        }
    }

    /// Keep (or clear) the retained message of `topic`, unless the store is at
    /// its budget.
    fn keep_retained(&mut self, topic: &Arc<str>, msg: &Arc<Message>) {
        let at_budget = self.store.as_ref().is_some_and(|s| s.handle.over_budget());
        if at_budget && !msg.payload.is_empty() {
            // At the disk budget (or with the disk full) a retained message
            // would wait in the store's memory until space returns: QoS 1/2
            // ones were refused before routing, QoS 0 ones are delivered but not kept.
            // Clearing one (empty payload) still works: it frees space.
            self.metrics
                .retained_refused
                .fetch_add(1, Ordering::Relaxed);
            debug!(topic = %topic, "retained message not kept: storage is at its budget");
        } else {
            self.store_retained(topic, msg);
        }
    }

    /// The receivers of a message on `topic`: every matching subscription, one
    /// copy per client, and one member per matching shared group.
    fn targets(&mut self, topic: &str, from: Option<&ClientId>) -> Vec<Target> {
        let clients = &self.clients;
        let acl = self.acl.as_deref();
        let mut matches = std::mem::take(&mut self.scratch_matches);
        // A `$share` group's message goes to a connected member that may also read
        // the topic, so one member's narrower ACL does not lose it for the group.
        self.subs.matches_into(
            topic,
            |k| {
                clients.get(k).is_some_and(|c| {
                    c.online() && acl.is_none_or(|a| a.can_read(c.username.as_deref(), k, topic))
                })
            },
            &mut matches,
        );
        // Overlapping subscriptions of one client give one copy at the highest QoS
        // with every identifier [MQTT-3.3.4-2] [MQTT-3.3.4-3]. A handful of matches
        // is the norm: merge by a linear scan, with an index only for many.
        let mut targets: Vec<Target> =
            Vec::with_capacity(matches.plain.len() + matches.shared.len());
        let mut index: Option<Map<ClientId, usize>> = (matches.plain.len() > 16).then(Map::default);
        for (cid, s) in matches.plain.drain(..) {
            // [MQTT-3.8.3-3] No Local: not back to the publisher.
            if s.options.no_local && from == Some(&cid) {
                continue;
            }
            let found = match &index {
                Some(ix) => ix.get(&cid).copied(),
                None => targets.iter().position(|t| t.client == cid),
            };
            match found.and_then(|i| targets.get_mut(i)) {
                Some(t) => {
                    t.qos = t.qos.max(s.options.qos);
                    t.retain_as_published |= s.options.retain_as_published;
                    // Two filters of one SUBSCRIBE share its identifier: it is
                    // sent once [MQTT-3.3.4-3] (each identifier, not each match).
                    if let Some(i) = s.identifier.filter(|i| !t.ids.contains(i)) {
                        t.ids.push(i);
                    }
                }
                None => {
                    if let Some(ix) = &mut index {
                        ix.insert(cid.clone(), targets.len());
                    }
                    targets.push(Target {
                        client: cid,
                        qos: s.options.qos,
                        retain_as_published: s.options.retain_as_published,
                        ids: s.identifier.into_iter().collect(),
                        shared: false,
                    });
                }
            }
        }
        for (cid, s) in matches.shared.drain(..) {
            targets.push(Target {
                client: cid,
                qos: s.options.qos,
                retain_as_published: s.options.retain_as_published,
                ids: s.identifier.into_iter().collect(),
                shared: true,
            });
        }
        self.scratch_matches = matches;
        targets
    }

    /// `deliver_to`, durable when the receiver's session is: the delivery gets a
    /// store id first, and the `Receiver` the store writes with the message comes
    /// back when the session kept it (the caller writes the message).
    pub(super) fn deliver_durably(
        &mut self,
        to: &ClientId,
        mut d: Delivery,
        now: Instant,
        may_hold: bool,
    ) -> (Option<Delivered>, Option<Receiver>) {
        let sid = self.clients.get(to).map_or(0, |c| c.sid);
        d.did = self.new_did(sid, d.qos);
        let stored = (d.did != 0).then(|| (d.did, d.qos, d.retain, d.subscription_ids.clone()));
        let outcome = self.deliver_to(to, d, now, may_hold);
        let receiver = stored.and_then(|(did, qos, retain, sub_ids)| {
            let pid = outcome.as_ref()?.kept()?;
            Some(Receiver {
                did,
                sid,
                qos,
                retain,
                pid,
                released: false,
                sub_ids,
            })
        });
        (outcome, receiver)
    }

    /// Hand one delivery to a session. None when it was dropped.
    pub(super) fn deliver_to(
        &mut self,
        id: &ClientId,
        d: Delivery,
        now: Instant,
        may_hold: bool,
    ) -> Option<Delivered> {
        let c = self.clients.get_mut(id)?;
        if let Some(h) = &c.conn {
            if let Some(max) = h.max_packet_size {
                if publish_size(&d, h.version) > max as usize {
                    // [MQTT-3.1.2-25] too big for this receiver: skip it, as if
                    // delivered.
                    self.metrics
                        .dropped_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(Delivered::Skipped);
                }
            }
        }
        let online = c.online();
        if online && d.qos == QoS::AtMostOnce {
            // QoS 0 to a connected client goes straight to the outbox, keeping room
            // for a full window of QoS 1/2 and within `max_queued_bytes_in_memory`:
            // a slow reader loses QoS 0, counted.
            if let Some(h) = &c.conn {
                if c.room() <= h.window
                    || h.outbox.bytes() + d.message.cost() > self.limits.max_bytes_in_memory
                {
                    self.metrics
                        .dropped_qos0_slow
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        // Backpressure: a connected receiver at its cap takes the message anyway
        // and the publisher's ack waits, unless it has used up its holding time
        // (`StallMeter`: partial drains do not reset it).
        let mut hold = false;
        if may_hold && online && d.qos != QoS::AtMostOnce && c.session.queue_full(&self.limits) {
            if let Some(budget) = self.backpressure {
                // Never held anyone back: an empty bucket (stalled only at
                // a zero budget).
                hold = !c
                    .rare()
                    .map_or(budget.is_zero(), |r| r.stall.stalled(now, budget));
                if hold && !c.rare().is_some_and(|r| r.stall.is_holding()) {
                    let stall = &mut c.rare_mut().stall;
                    stall.start(now);
                    if let Some(at) = stall.stalls_at(now, budget) {
                        self.schedule(at, id);
                    }
                }
            }
        }
        let c = self.clients.get_mut(id)?;
        match c.session.deliver(d, online, &self.limits, now, hold) {
            DeliverOutcome::Send(o) => {
                let pid = match &o {
                    Outgoing::Publish {
                        packet_id: Some(p), ..
                    } => p.get(),
                    _ => 0,
                };
                // Only a closing connection can refuse: the message stays in
                // flight and is re-sent when the session resumes.
                if let Some(conn_id) = c.conn.as_ref().map(|h| h.conn_id) {
                    self.push_out(id, conn_id, vec![o]);
                }
                Some(Delivered::Sent(pid))
            }
            DeliverOutcome::Queued => {
                self.list_for_disk(id, false);
                Some(if hold {
                    Delivered::Held
                } else {
                    Delivered::Queued
                })
            }
            DeliverOutcome::Dropped(DropReason::QueueFull) => {
                self.metrics
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            DeliverOutcome::Dropped(DropReason::Expired) => {
                self.metrics
                    .messages_expired
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
            DeliverOutcome::Dropped(DropReason::Qos0Offline) => None,
        }
    }

    /// A session that ends with QoS 1 messages its client did not acknowledge:
    /// those a shared subscription gave it go to another member of that group,
    /// which the spec says SHOULD happen (5.0 section 4.8.2) and which keeps a
    /// clean member that drops mid-flow from losing the group's message. (A
    /// message that matched several of its groups goes to the first.)
    pub(super) fn hand_on_shared<'a>(
        &mut self,
        gone: &Session,
        subscriptions: impl Iterator<Item = &'a FilterSpec>,
        now: Instant,
    ) {
        let shared: Vec<&FilterSpec> = subscriptions.filter(|s| s.is_shared()).collect();
        if shared.is_empty() {
            return;
        }
        for m in gone.unacknowledged_qos1() {
            if m.is_expired(now) {
                continue;
            }
            let Some(spec) = shared
                .iter()
                .find(|s| crate::topic::matches(&s.filter, &m.topic))
            else {
                continue;
            };
            let clients = &self.clients;
            let acl = self.acl.as_deref();
            let topic = &m.topic;
            let Some((to, s)) = self.subs.pick_shared(spec, |k| {
                clients.get(k).is_some_and(|c| {
                    c.online() && acl.is_none_or(|a| a.can_read(c.username.as_deref(), k, topic))
                })
            }) else {
                continue;
            };
            if !self.may_read(&to, topic) {
                continue;
            }
            let d = Delivery {
                message: m.clone(),
                qos: m.qos.min(s.options.qos),
                retain: false,
                subscription_ids: s.identifier.into_iter().collect(),
                did: 0,
                queued: None,
                shared: true,
            };
            if let (_, Some(r)) = self.deliver_durably(&to, d, now, false) {
                self.write_message(m.clone(), vec![r]);
            }
            debug!(client = %gone.client_id(), to = %to, topic = %m.topic, "shared message handed on");
        }
    }
}

/// Did `m` come in through a bridge: one of ours (its `in` side), or another
/// broker's bridge connected to us? Such a message is never sent out through
/// a bridge again (`bridge::link` skips it; `publish` does not deliver it to
/// another broker's bridge).
pub fn came_through_a_bridge(m: &Message) -> bool {
    m.properties
        .user_properties
        .iter()
        .any(|(k, _)| k == crate::bridge::link::IMPORTED_BY)
}
