//! The router: sole owner of sessions, subscriptions, retained messages and wills.
//!
//! Connections talk to it over one bounded channel (`RouterMsg`); it answers requests
//! through oneshot replies and pushes deliveries into each connection's bounded
//! outbox with `try_send`, so it never waits on a client. No sockets here: the state
//! machine (`Router`) is synchronous with time passed in, and `run` is the thin task
//! around it.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{
    LastWill, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Subscribe,
    Unsubscribe,
};
use crate::retain::RetainTree;
use crate::session::{
    ClientId, DeliverOutcome, Delivery, DropReason, Message, Outgoing, QueueLimits, Session,
    Subscription,
};
use crate::subscriptions::SubscriptionTree;
use crate::topic::{FilterSpec, TopicLimits};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The handle a connection gives the router so it can reach the socket.
#[derive(Debug)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub version: ProtocolVersion,
    pub outbox: mpsc::Sender<Outgoing>,
    /// Closing the connection from the router side (takeover, shutdown), with the
    /// reason to put in a v5 DISCONNECT.
    pub kick: oneshot::Sender<ReasonCode>,
    /// The client's Maximum Packet Size (v5), for skipping oversized deliveries
    /// [MQTT-3.1.2-25].
    pub max_packet_size: Option<u32>,
    /// Topic Alias Maximum of the client: aliases make a PUBLISH smaller, never
    /// bigger, so the size check ignores them.
    pub window: usize,
}

pub struct ConnectRequest {
    pub client_id: ClientId,
    pub clean_start: bool,
    /// Seconds; already capped by `max_session_expiry`. u32::MAX means "never".
    pub session_expiry: u32,
    pub will: Option<LastWill>,
    pub handle: ConnHandle,
}

#[derive(Debug)]
pub struct ConnectAccepted {
    pub session_present: bool,
    /// Inbound QoS 2 ids awaiting PUBREL, handed to the connection that now owns them.
    pub inbound_qos2: Vec<u16>,
}

/// Why a connection ended, as the router needs to know it for the Will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// DISCONNECT with reason 0x00: the Will is discarded [MQTT-3.1.2-10].
    Normal,
    /// Anything else: DISCONNECT 0x04 or another code, a protocol error, keep-alive
    /// timeout, socket error, takeover, server shutdown: the Will is published.
    WithWill,
}

pub enum RouterMsg {
    Connect {
        request: Box<ConnectRequest>,
        reply: oneshot::Sender<Result<ConnectAccepted, ReasonCode>>,
    },
    Publish {
        client: ClientId,
        conn_id: u64,
        publish: Publish,
    },
    PubAck {
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
    },
    PubRec {
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
        success: bool,
    },
    PubComp {
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
    },
    Subscribe {
        client: ClientId,
        conn_id: u64,
        subscribe: Subscribe,
        reply: oneshot::Sender<Vec<ReasonCode>>,
    },
    Unsubscribe {
        client: ClientId,
        conn_id: u64,
        unsubscribe: Unsubscribe,
        reply: oneshot::Sender<Vec<ReasonCode>>,
    },
    Disconnected {
        client: ClientId,
        conn_id: u64,
        kind: DisconnectKind,
        /// A new Session Expiry Interval from a v5 DISCONNECT.
        session_expiry: Option<u32>,
        inbound_qos2: Vec<u16>,
    },
    /// Graceful shutdown: close every connection with `reason`, then publish the
    /// wills that are due. Replies when connections have been told.
    Shutdown { reply: oneshot::Sender<()> },
    /// Publish every delayed will now and stop. Sent after connections have ended.
    Finish { reply: oneshot::Sender<()> },
}

/// A Will waiting for its delay or for the session to end (section 3.1.3.2).
struct PendingWill {
    will: LastWill,
    due: Instant,
}

struct Client {
    session: Session,
    conn: Option<ConnHandle>,
    version: ProtocolVersion,
    will: Option<LastWill>,
    pending_will: Option<PendingWill>,
    session_expiry: u32,
    /// Set while offline: when the session ends.
    expires_at: Option<Instant>,
    /// This client's entries in `Router::deadlines`, removed when it comes back so
    /// a client that reconnects often does not grow the map.
    scheduled: Vec<(Instant, u64)>,
}

impl Client {
    fn online(&self) -> bool {
        self.conn.is_some()
    }
}

/// A per-receiver merge of every matching plain subscription.
struct Target {
    client: ClientId,
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<u32>,
}

pub struct Router {
    clients: HashMap<ClientId, Client>,
    subs: SubscriptionTree<ClientId, Subscription>,
    retained: RetainTree<Arc<Message>>,
    /// Deadlines for delayed wills and session expiry, checked by `tick`.
    deadlines: BTreeMap<(Instant, u64), ClientId>,
    deadline_seq: u64,
    limits: QueueLimits,
    topic_limits: TopicLimits,
    max_sessions: usize,
    max_subscriptions: usize,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Router {
        Router {
            clients: HashMap::new(),
            subs: SubscriptionTree::new(),
            retained: RetainTree::new(),
            deadlines: BTreeMap::new(),
            deadline_seq: 0,
            limits: QueueLimits {
                max_messages: config.limits.max_queued_messages,
                max_bytes: config.limits.max_queued_bytes,
                queue_qos0_offline: config.mqtt.queue_qos0_offline,
            },
            topic_limits: config.topic_limits(),
            max_sessions: config.limits.max_sessions,
            max_subscriptions: config.limits.max_subscriptions_per_client,
            metrics,
        }
    }

    pub fn session_count(&self) -> usize {
        self.clients.len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    fn schedule(&mut self, at: Instant, client: &ClientId) {
        self.deadline_seq += 1;
        let key = (at, self.deadline_seq);
        if let Some(c) = self.clients.get_mut(client) {
            c.scheduled.push(key);
            self.deadlines.insert(key, client.clone());
        }
    }

    fn unschedule(&mut self, client: &ClientId) {
        if let Some(c) = self.clients.get_mut(client) {
            for key in c.scheduled.drain(..) {
                self.deadlines.remove(&key);
            }
        }
    }

    /// Handle one message. Returns false when the router should stop.
    pub fn handle(&mut self, msg: RouterMsg, now: Instant) -> bool {
        match msg {
            RouterMsg::Connect { request, reply } => {
                let r = self.connect(*request, now);
                let _ = reply.send(r);
            }
            RouterMsg::Publish {
                client, publish, ..
            } => {
                self.metrics
                    .messages_received
                    .fetch_add(1, Ordering::Relaxed);
                self.publish(Some(&client), publish, now);
            }
            RouterMsg::PubAck {
                client,
                conn_id,
                packet_id,
            } => self.with_live(&client, conn_id, now, |s| s.on_puback(packet_id)),
            RouterMsg::PubRec {
                client,
                conn_id,
                packet_id,
                success,
            } => self.with_live(&client, conn_id, now, |s| s.on_pubrec(packet_id, success)),
            RouterMsg::PubComp {
                client,
                conn_id,
                packet_id,
            } => self.with_live(&client, conn_id, now, |s| s.on_pubcomp(packet_id)),
            RouterMsg::Subscribe {
                client,
                conn_id,
                subscribe,
                reply,
            } => {
                let codes = self.subscribe(&client, conn_id, subscribe, now);
                let _ = reply.send(codes);
            }
            RouterMsg::Unsubscribe {
                client,
                conn_id,
                unsubscribe,
                reply,
            } => {
                let codes = self.unsubscribe(&client, conn_id, unsubscribe);
                let _ = reply.send(codes);
            }
            RouterMsg::Disconnected {
                client,
                conn_id,
                kind,
                session_expiry,
                inbound_qos2,
            } => self.disconnected(&client, conn_id, kind, session_expiry, inbound_qos2, now),
            RouterMsg::Shutdown { reply } => {
                for c in self.clients.values_mut() {
                    if let Some(h) = c.conn.take() {
                        // The connection drains its outbox, sends DISCONNECT 0x8B
                        // [MQTT-4.13] and then reports back as Disconnected, which
                        // is ignored because the handle is gone; so the will is
                        // scheduled here.
                        let _ = h.kick.send(ReasonCode::SERVER_SHUTTING_DOWN);
                        c.session.inbound_qos2.clear();
                        if let Some(will) = c.will.take() {
                            c.pending_will = Some(PendingWill { due: now, will });
                        }
                    }
                }
                let _ = reply.send(());
            }
            RouterMsg::Finish { reply } => {
                let due: Vec<ClientId> = self
                    .clients
                    .iter()
                    .filter(|(_, c)| c.pending_will.is_some())
                    .map(|(k, _)| k.clone())
                    .collect();
                for id in due {
                    self.fire_will(&id, now);
                }
                let _ = reply.send(());
                return false;
            }
        }
        true
    }

    /// The earliest pending deadline (delayed will or session expiry).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(t, _)| *t)
    }

    /// Fire what is due at `now`: delayed wills, then expired sessions.
    pub fn tick(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (key, id) = entry.remove_entry();
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            c.scheduled.retain(|k| *k != key);
            if c.pending_will.as_ref().is_some_and(|w| w.due <= now) {
                self.fire_will(&id, now);
            }
            let expired = self
                .clients
                .get(&id)
                .is_some_and(|c| !c.online() && c.expires_at.is_some_and(|t| t <= now));
            if expired {
                self.end_session(&id, now);
                self.metrics
                    .sessions_expired
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn fire_will(&mut self, id: &ClientId, now: Instant) {
        let Some(pw) = self.clients.get_mut(id).and_then(|c| c.pending_will.take()) else {
            return;
        };
        let w = pw.will;
        self.metrics.wills_published.fetch_add(1, Ordering::Relaxed);
        let publish = Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic,
            packet_id: None,
            properties: w.properties,
            payload: w.payload,
        };
        self.publish(Some(id), publish, now);
    }

    /// Remove a session and everything it holds. A will still waiting for its
    /// delay is published now: the session ending sends it [MQTT-3.1.3-9].
    fn end_session(&mut self, id: &ClientId, now: Instant) {
        if self
            .clients
            .get(id)
            .is_some_and(|c| c.pending_will.is_some())
        {
            self.fire_will(id, now);
        }
        self.unschedule(id);
        if let Some(c) = self.clients.remove(id) {
            for spec in c.session.subscriptions.keys() {
                self.subs.remove(spec, id);
            }
        }
    }

    fn connect(
        &mut self,
        req: ConnectRequest,
        now: Instant,
    ) -> Result<ConnectAccepted, ReasonCode> {
        let id = req.client_id.clone();
        if !self.clients.contains_key(&id) && self.clients.len() >= self.max_sessions {
            return Err(ReasonCode::QUOTA_EXCEEDED);
        }
        // Takeover: close the existing connection [MQTT-3.1.4-3]; its will follows
        // the normal rules (published now, or after its delay unless this
        // connection resumes the session first).
        if let Some(c) = self.clients.get_mut(&id) {
            if let Some(old) = c.conn.take() {
                let _ = old.kick.send(ReasonCode::SESSION_TAKEN_OVER);
                c.session.inbound_qos2.clear();
                self.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
                if let Some(will) = c.will.take() {
                    let due = now + Duration::from_secs(u64::from(will.delay_interval));
                    c.pending_will = Some(PendingWill { will, due });
                }
            }
        }
        let session_present = if req.clean_start {
            // [MQTT-3.1.2-4] clean start discards any existing session.
            self.end_session(&id, now);
            false
        } else if let Some(c) = self.clients.get_mut(&id) {
            // Resuming: a will still waiting for its delay is not sent
            // [MQTT-3.1.3-9].
            if let Some(pw) = c.pending_will.take() {
                if pw.due <= now {
                    c.pending_will = Some(pw);
                }
            }
            if self
                .clients
                .get(&id)
                .is_some_and(|c| c.pending_will.is_some())
            {
                self.fire_will(&id, now);
            }
            true
        } else {
            false
        };
        self.unschedule(&id);
        let window = req.handle.window;
        let version = req.handle.version;
        let client = self.clients.entry(id.clone()).or_insert_with(|| Client {
            session: Session::new(id.clone()),
            conn: None,
            version,
            will: None,
            pending_will: None,
            session_expiry: 0,
            expires_at: None,
            scheduled: Vec::new(),
        });
        client.version = version;
        client.will = req.will;
        client.session_expiry = req.session_expiry;
        client.expires_at = None;
        client.session.set_window(window);
        let inbound_qos2 = std::mem::take(&mut client.session.inbound_qos2);
        // Redeliver what was in flight with DUP, then queued messages
        // [MQTT-4.4.0-1]. The outbox is sized to hold a full window.
        let out = client.session.resume(now);
        for o in out {
            if req.handle.outbox.try_send(o).is_err() {
                self.metrics
                    .dropped_outbox_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        client.conn = Some(req.handle);
        Ok(ConnectAccepted {
            session_present,
            inbound_qos2,
        })
    }

    /// Run `f` on the session of `id` if `conn_id` is its live connection, then
    /// refill the window and push what it releases.
    fn with_live(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        now: Instant,
        f: impl FnOnce(&mut Session) -> bool,
    ) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        let Some(h) = c.conn.as_ref().filter(|h| h.conn_id == conn_id) else {
            return;
        };
        if f(&mut c.session) {
            let mut out = Vec::new();
            c.session.fill_window(now, &mut out);
            for o in out {
                if h.outbox.try_send(o).is_err() {
                    self.metrics
                        .dropped_outbox_full
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn disconnected(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        kind: DisconnectKind,
        session_expiry: Option<u32>,
        inbound_qos2: Vec<u16>,
        now: Instant,
    ) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        // A connection that was taken over reports late: the session is no longer
        // its own.
        if c.conn.as_ref().is_none_or(|h| h.conn_id != conn_id) {
            return;
        }
        c.conn = None;
        c.session.inbound_qos2 = inbound_qos2;
        if let Some(e) = session_expiry {
            c.session_expiry = e;
        }
        let will = c.will.take();
        if kind == DisconnectKind::WithWill {
            if let Some(will) = will {
                let due = now + Duration::from_secs(u64::from(will.delay_interval));
                c.pending_will = Some(PendingWill { will, due });
            }
        }
        let expiry = c.session_expiry;
        if expiry == 0 {
            self.end_session(id, now);
            return;
        }
        let will_due = c.pending_will.as_ref().map(|w| w.due);
        if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            c.expires_at = Some(at);
            self.schedule(at, id);
        }
        if let Some(due) = will_due {
            if due <= now {
                self.fire_will(id, now);
            } else {
                self.schedule(due, id);
            }
        }
    }

    fn subscribe(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        sub: Subscribe,
        now: Instant,
    ) -> Vec<ReasonCode> {
        let mut codes = Vec::with_capacity(sub.filters.len());
        let Some(c) = self.clients.get_mut(id) else {
            return vec![ReasonCode::UNSPECIFIED_ERROR; sub.filters.len()];
        };
        if c.conn.as_ref().is_none_or(|h| h.conn_id != conn_id) {
            return vec![ReasonCode::UNSPECIFIED_ERROR; sub.filters.len()];
        }
        let mut retained_out: Vec<Delivery> = Vec::new();
        for f in sub.filters {
            let spec = match FilterSpec::parse(&f.filter, self.topic_limits) {
                Ok(s) => s,
                Err(_) => {
                    codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            let existed = c.session.subscriptions.contains_key(&spec);
            if !existed && c.session.subscriptions.len() >= self.max_subscriptions {
                codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            let s = Subscription {
                options: f.options,
                identifier: sub.properties.subscription_identifier,
            };
            c.session.subscriptions.insert(spec.clone(), s);
            self.subs.insert(&spec, id.clone(), s);
            codes.push(ReasonCode(f.options.qos.as_u8()));
            // Retained messages at subscribe time [MQTT-3.3.1-9] per Retain
            // Handling [MQTT-3.3.1-10/11]; never for a shared subscription
            // [MQTT-3.8.4-?: retained messages are not sent to $share].
            let send = match f.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send && !spec.is_shared() {
                for m in self.retained.matching(&spec.filter) {
                    if m.is_expired(now) {
                        continue;
                    }
                    retained_out.push(Delivery {
                        qos: m.qos.min(f.options.qos),
                        // [MQTT-3.3.1-8] retained-on-subscribe carries RETAIN 1.
                        retain: true,
                        subscription_ids: s.identifier.into_iter().collect(),
                        message: m,
                    });
                }
            }
        }
        for d in retained_out {
            self.deliver_to(id, d, now);
        }
        codes
    }

    fn unsubscribe(&mut self, id: &ClientId, conn_id: u64, unsub: Unsubscribe) -> Vec<ReasonCode> {
        let n = unsub.filters.len();
        let Some(c) = self.clients.get_mut(id) else {
            return vec![ReasonCode::UNSPECIFIED_ERROR; n];
        };
        if c.conn.as_ref().is_none_or(|h| h.conn_id != conn_id) {
            return vec![ReasonCode::UNSPECIFIED_ERROR; n];
        }
        unsub
            .filters
            .iter()
            .map(|f| match FilterSpec::parse(f, self.topic_limits) {
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(spec) => {
                    if c.session.subscriptions.remove(&spec).is_some() {
                        self.subs.remove(&spec, id);
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::NO_SUBSCRIPTION_EXISTED
                    }
                }
            })
            .collect()
    }

    /// Route one application message: retained store, then every matching
    /// subscription. `from` is the publisher, for No Local.
    pub fn publish(&mut self, from: Option<&ClientId>, mut p: Publish, now: Instant) {
        let topic: Arc<str> = Arc::from(p.topic.as_str());
        // Per-hop properties never travel on [MQTT-3.3.2-?]: the alias is the
        // publisher's, subscription identifiers are the receiver's.
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
            if msg.payload.is_empty() {
                // [MQTT-3.3.1-6] an empty retained message clears the topic.
                self.retained.remove(&topic);
            } else {
                self.retained.set(&topic, msg.clone());
            }
        }
        let clients = &self.clients;
        let matches = self
            .subs
            .matches(&topic, |k| clients.get(k).is_some_and(|c| c.online()));
        // Overlapping subscriptions of one client give one copy at the highest QoS
        // with every identifier [MQTT-3.3.4-2] [MQTT-3.3.4-3].
        let mut targets: Vec<Target> = Vec::new();
        let mut index: HashMap<ClientId, usize> = HashMap::new();
        for (cid, s) in matches.plain {
            // [MQTT-3.8.3-3] No Local: not back to the publisher.
            if s.options.no_local && from == Some(&cid) {
                continue;
            }
            match index.get(&cid) {
                Some(&i) => {
                    let t = &mut targets[i];
                    t.qos = t.qos.max(s.options.qos);
                    t.retain_as_published |= s.options.retain_as_published;
                    t.ids.extend(s.identifier);
                }
                None => {
                    index.insert(cid.clone(), targets.len());
                    targets.push(Target {
                        client: cid,
                        qos: s.options.qos,
                        retain_as_published: s.options.retain_as_published,
                        ids: s.identifier.into_iter().collect(),
                    });
                }
            }
        }
        for (cid, s) in matches.shared {
            targets.push(Target {
                client: cid,
                qos: s.options.qos,
                retain_as_published: s.options.retain_as_published,
                ids: s.identifier.into_iter().collect(),
            });
        }
        if targets.is_empty() {
            self.metrics
                .messages_no_subscribers
                .fetch_add(1, Ordering::Relaxed);
        }
        for t in targets {
            let d = Delivery {
                message: msg.clone(),
                qos: msg.qos.min(t.qos),
                // [MQTT-3.3.1-12/13] RETAIN is kept only with Retain As Published.
                retain: msg.retain && t.retain_as_published,
                subscription_ids: t.ids,
            };
            self.deliver_to(&t.client, d, now);
        }
    }

    fn deliver_to(&mut self, id: &ClientId, d: Delivery, now: Instant) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if let Some(h) = &c.conn {
            if let Some(max) = h.max_packet_size {
                if publish_size(&d, c.version) > max as usize {
                    // [MQTT-3.1.2-25] too big for this receiver: skip it, as if
                    // delivered.
                    self.metrics
                        .dropped_too_large
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let online = c.online();
        let qos0 = d.qos == QoS::AtMostOnce;
        if qos0 && online {
            // QoS 0 to a connected client goes straight to the outbox, keeping room
            // for a full window of QoS 1/2: a slow reader loses QoS 0, counted.
            if let Some(h) = &c.conn {
                if h.outbox.capacity() <= h.window {
                    self.metrics
                        .dropped_qos0_slow
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        match c.session.deliver(d, online, &self.limits, now) {
            DeliverOutcome::Send(o) => {
                if let Some(h) = &c.conn {
                    if h.outbox.try_send(o).is_err() {
                        // Only a closing connection can refuse: the message stays in
                        // flight and is re-sent when the session resumes.
                        self.metrics
                            .dropped_outbox_full
                            .fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.metrics.messages_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            DeliverOutcome::Queued => {}
            DeliverOutcome::Dropped(DropReason::QueueFull) => {
                self.metrics
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
            DeliverOutcome::Dropped(DropReason::Expired) => {
                self.metrics
                    .messages_expired
                    .fetch_add(1, Ordering::Relaxed);
            }
            DeliverOutcome::Dropped(DropReason::Qos0Offline) => {}
        }
    }
}

/// The encoded size of a delivery as a PUBLISH without topic alias (an upper bound
/// of what is sent: an alias only shrinks it).
fn publish_size(d: &Delivery, version: ProtocolVersion) -> usize {
    let m = &d.message;
    let mut props = m.properties.clone();
    props.subscription_identifiers = d.subscription_ids.clone();
    props.message_expiry_interval = m.properties.message_expiry_interval;
    let p = Publish {
        dup: false,
        qos: d.qos,
        retain: d.retain,
        topic: m.topic.to_string(),
        packet_id: if d.qos == QoS::AtMostOnce {
            None
        } else {
            PacketId::new(1)
        },
        properties: props,
        payload: m.payload.clone(),
    };
    crate::protocol::encoded_len(&crate::protocol::Packet::Publish(p), version)
}

/// The router task: handle messages in order, fire deadlines on time. Stops after
/// `Finish`, or when every sender is gone.
pub async fn run(mut router: Router, mut rx: mpsc::Receiver<RouterMsg>) {
    // Limit work per turn so deadlines are not starved by a message flood.
    const BATCH: usize = 256;
    loop {
        let deadline = router.next_deadline();
        let msg = match deadline {
            Some(d) => {
                tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(d.into()) => {
                        router.tick(Instant::now());
                        continue;
                    }
                }
            }
            None => rx.recv().await,
        };
        let Some(msg) = msg else {
            break;
        };
        let now = Instant::now();
        if !router.handle(msg, now) {
            break;
        }
        for _ in 0..BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    if !router.handle(m, now) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        if router.next_deadline().is_some_and(|d| d <= now) {
            router.tick(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        PublishProperties, SubscribeFilter, SubscribeProperties, SubscriptionOptions,
    };
    use bytes::Bytes;

    struct TestConn {
        outbox: mpsc::Receiver<Outgoing>,
        kick: oneshot::Receiver<ReasonCode>,
    }

    fn router() -> Router {
        Router::new(&Config::default(), Arc::new(Metrics::default()))
    }

    fn connect(
        r: &mut Router,
        id: &str,
        conn_id: u64,
        clean: bool,
        expiry: u32,
        will: Option<LastWill>,
        now: Instant,
    ) -> (ConnectAccepted, TestConn) {
        let (otx, orx) = mpsc::channel(64);
        let (ktx, krx) = oneshot::channel();
        let req = ConnectRequest {
            client_id: id.into(),
            clean_start: clean,
            session_expiry: expiry,
            will,
            handle: ConnHandle {
                conn_id,
                version: ProtocolVersion::V5,
                outbox: otx,
                kick: ktx,
                max_packet_size: None,
                window: 10,
            },
        };
        let acc = r.connect(req, now).expect("accepted");
        (
            acc,
            TestConn {
                outbox: orx,
                kick: krx,
            },
        )
    }

    fn subscribe(r: &mut Router, id: &str, conn_id: u64, filter: &str, qos: QoS, now: Instant) {
        let codes = r.subscribe(
            &id.into(),
            conn_id,
            Subscribe {
                packet_id: PacketId::new(1).unwrap(),
                properties: SubscribeProperties::default(),
                filters: vec![SubscribeFilter {
                    filter: filter.into(),
                    options: SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                }],
            },
            now,
        );
        assert_eq!(codes, vec![ReasonCode(qos.as_u8())]);
    }

    fn will(topic: &str, delay: u32) -> LastWill {
        LastWill {
            topic: topic.into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            delay_interval: delay,
            properties: PublishProperties::default(),
        }
    }

    fn topics(c: &mut TestConn) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(Outgoing::Publish { delivery, .. }) = c.outbox.try_recv() {
            v.push(delivery.message.topic.to_string());
        }
        v
    }

    fn drop_conn(r: &mut Router, id: &str, conn_id: u64, kind: DisconnectKind, now: Instant) {
        r.disconnected(&id.into(), conn_id, kind, None, vec![], now);
    }

    #[test]
    fn delayed_will_fires_after_delay_and_is_cancelled_by_resume() {
        let t0 = Instant::now();
        let mut r = router();
        let (_, mut watcher) = connect(&mut r, "w", 1, true, 0, None, t0);
        subscribe(&mut r, "w", 1, "will/#", QoS::AtLeastOnce, t0);
        let (_, _c) = connect(&mut r, "c", 2, false, 100, Some(will("will/c", 5)), t0);
        drop_conn(&mut r, "c", 2, DisconnectKind::WithWill, t0);
        r.tick(t0 + Duration::from_secs(4));
        assert!(topics(&mut watcher).is_empty(), "not before the delay");
        r.tick(t0 + Duration::from_secs(5));
        assert_eq!(topics(&mut watcher), vec!["will/c"]);

        // Again, but the client resumes within the delay: no will [MQTT-3.1.3-9].
        let (acc, _c) = connect(&mut r, "c", 3, false, 100, Some(will("will/c", 5)), t0);
        assert!(acc.session_present);
        drop_conn(&mut r, "c", 3, DisconnectKind::WithWill, t0);
        let (_, _c) = connect(
            &mut r,
            "c",
            4,
            false,
            100,
            None,
            t0 + Duration::from_secs(2),
        );
        r.tick(t0 + Duration::from_secs(60));
        assert!(topics(&mut watcher).is_empty());
        assert!(r.deadlines.is_empty(), "resume removed the deadlines");
    }

    #[test]
    fn will_sent_when_session_ends_before_delay() {
        let t0 = Instant::now();
        let mut r = router();
        let (_, mut watcher) = connect(&mut r, "w", 1, true, 0, None, t0);
        subscribe(&mut r, "w", 1, "will/#", QoS::AtMostOnce, t0);
        let (_, _c) = connect(&mut r, "c", 2, true, 3, Some(will("will/c", 60)), t0);
        drop_conn(&mut r, "c", 2, DisconnectKind::WithWill, t0);
        r.tick(t0 + Duration::from_secs(3));
        assert_eq!(topics(&mut watcher), vec!["will/c"]);
        assert!(!r.clients.contains_key("c"), "session expired");
    }

    #[test]
    fn normal_disconnect_discards_will_and_zero_expiry_ends_session() {
        let t0 = Instant::now();
        let mut r = router();
        let (_, mut watcher) = connect(&mut r, "w", 1, true, 0, None, t0);
        subscribe(&mut r, "w", 1, "#", QoS::AtMostOnce, t0);
        let (_, _c) = connect(&mut r, "c", 2, true, 0, Some(will("will/c", 0)), t0);
        drop_conn(&mut r, "c", 2, DisconnectKind::Normal, t0);
        assert!(topics(&mut watcher).is_empty());
        assert_eq!(r.session_count(), 1);
    }

    #[test]
    fn takeover_kicks_old_connection_and_ignores_its_late_report() {
        let t0 = Instant::now();
        let mut r = router();
        let (_, mut old) = connect(&mut r, "c", 1, false, 100, None, t0);
        subscribe(&mut r, "c", 1, "t", QoS::AtLeastOnce, t0);
        let (acc, mut new) = connect(&mut r, "c", 2, false, 100, None, t0);
        assert!(acc.session_present);
        assert_eq!(old.kick.try_recv(), Ok(ReasonCode::SESSION_TAKEN_OVER));
        // The old connection reports its end after the takeover: ignored.
        drop_conn(&mut r, "c", 1, DisconnectKind::WithWill, t0);
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: PacketId::new(9),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"x"),
        };
        r.publish(None, p, t0);
        assert_eq!(
            topics(&mut new),
            vec!["t"],
            "the new connection still gets it"
        );
    }

    #[test]
    fn offline_queue_redelivered_on_resume_and_expiry_sweeps() {
        let t0 = Instant::now();
        let mut r = router();
        let (_, _c) = connect(&mut r, "c", 1, false, 10, None, t0);
        subscribe(&mut r, "c", 1, "t/#", QoS::ExactlyOnce, t0);
        drop_conn(&mut r, "c", 1, DisconnectKind::Normal, t0);
        for i in 0..3 {
            let p = Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: format!("t/{i}"),
                packet_id: PacketId::new(1),
                properties: PublishProperties::default(),
                payload: Bytes::from_static(b"x"),
            };
            r.publish(None, p, t0);
        }
        let (acc, mut c) = connect(&mut r, "c", 2, false, 10, None, t0 + Duration::from_secs(5));
        assert!(acc.session_present);
        assert_eq!(topics(&mut c), vec!["t/0", "t/1", "t/2"]);
        drop_conn(
            &mut r,
            "c",
            2,
            DisconnectKind::Normal,
            t0 + Duration::from_secs(5),
        );
        r.tick(t0 + Duration::from_secs(14));
        assert_eq!(r.session_count(), 1);
        r.tick(t0 + Duration::from_secs(15));
        assert_eq!(r.session_count(), 0, "expired 10 s after the disconnect");
    }
}
