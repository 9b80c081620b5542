//! The router: sole owner of sessions, subscriptions, retained messages and wills.
//!
//! Connections talk to it over one bounded channel (`RouterMsg`); it answers
//! CONNECT / SUBSCRIBE / UNSUBSCRIBE through oneshot replies and everything else
//! through each connection's bounded outbox, into which it pushes with `try_send`:
//! it never waits on a client. It also decides every reply of an inbound QoS flow
//! (PUBACK, PUBREC, PUBREL, PUBCOMP), because it owns the session's QoS 2 state and
//! knows when a message may be acknowledged: a publisher's acknowledgement is held
//! back while a connected receiver's queue is full (backpressure), up to
//! `backpressure_timeout`. No sockets here: `Router` is synchronous with time passed
//! in, and `run` is the thin task around it.

use crate::auth::Acl;
use crate::clock::Clock;
use crate::config::Config;
use crate::deadlines::Deadlines;
use crate::hash::{Map, Set};
use crate::metrics::Metrics;
use crate::protocol::{
    LastWill, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Subscribe,
    Unsubscribe,
};
use crate::retain::RetainTree;
use crate::retained_backlog::RetainedBacklog;
use crate::session::{
    ClientId, DeliverOutcome, Delivery, DropReason, Event, Message, Outgoing, QueueLimits, Reply,
    ReplyKind, Session, Subscription,
};
use crate::session_quota::{Full, Holder, QuotaLimits, SessionQuota};
use crate::store::record::{Op, Receiver, SessionRec};
use crate::store::state::Recovered;
use crate::store::StoreHandle;
use crate::subscription_index::SubscriptionIndex;
use crate::subscriptions::Matches;
use crate::topic::{FilterSpec, TopicLimits};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

use tracing::{debug, error, info, warn};

mod acl;
mod admin;
mod admin_clients;
mod admin_retained;
mod backlog;
mod client;
mod durable;
mod fanout;
mod inbound;
mod msg;
mod queue_reload;
mod queues;
mod recovery;
mod retained;
mod room;
mod run;
mod session_disk;
mod snapshot;
mod subscribe;
mod takeover;

pub use admin::{AdminReply, AdminRequest, PeekedMessage, QueueInfo, REDRIVE_BATCH};
pub use admin_clients::{ClientInfo, DEFAULT_CLIENTS_PAGE, MAX_CLIENTS_PAGE};
pub use admin_retained::{
    RetainedInfo, RetainedPage, RetainedQuery, DEFAULT_RETAINED_PAGE, MAX_RETAINED_PAGE,
};
use client::{Client, HeldAck};
use durable::{Held, StoreLink};
pub use fanout::came_through_a_bridge;
pub use msg::{ConnHandle, ConnectAccepted, ConnectRequest, DisconnectKind, RouterMsg};
use queues::{Queues, Timer};
pub use run::{run, Publishing};
pub use snapshot::Snapshot;

/// Push into a connection's outbox, counting what was sent and what a closing
/// connection refused (the room checks make a refusal impossible otherwise).
fn send_now(h: &ConnHandle, item: Outgoing, metrics: &Metrics) {
    let qos = match &item {
        Outgoing::Publish { delivery, .. } => Some(delivery.qos),
        _ => None,
    };
    if h.outbox.try_send(item).is_err() {
        metrics.dropped_outbox_full.fetch_add(1, Ordering::Relaxed);
    } else if let Some(qos) = qos {
        metrics.sent_by_qos[usize::from(qos.as_u8())].fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Router {
    /// Boxed records: the table keeps room for about 40% more entries than
    /// it holds, and inline each empty slot would cost a whole record (496
    /// bytes; 840 per client at 10,000 clients, 550 boxed: issue 15).
    clients: Map<ClientId, Box<Client>>,
    subs: SubscriptionIndex<ClientId, Subscription>,
    retained: RetainTree<Arc<Message>>,
    /// Bytes of retained messages, `$SYS` aside.
    retained_bytes: usize,
    /// Retained `$SYS` messages (in `retained`, outside its caps and bytes).
    sys_retained: usize,
    /// Deadlines for delayed wills, session expiry and backpressure timeouts,
    /// checked by `tick`.
    deadlines: Deadlines<Timer>,
    /// Work queues and their topic bindings.
    queues: Queues,
    limits: QueueLimits,
    /// `limits.session_read_ahead` and `_bytes`.
    session_read_ahead: (usize, usize),
    /// Persistent sessions' backlogs on disk.
    session_disk: session_disk::SessionDisk,
    topic_limits: TopicLimits,
    /// Persistent sessions in all, per anonymous address, per user.
    quota: SessionQuota,
    /// Offline anonymous persistent sessions to expire first when the table is
    /// full, oldest last; refilled by a scan when used up.
    evictable: Vec<ClientId>,
    max_subscriptions: usize,
    max_subscription_bytes: usize,
    /// Inbound QoS 2 ids a session may hold until their PUBREL (receive_maximum).
    max_inbound_qos2: usize,
    max_retained_messages: usize,
    max_retained_bytes: usize,
    backpressure: Option<Duration>,
    /// `[mqtt] sys_interval`; None: no `$SYS`.
    sys_every: Option<Duration>,
    shutting_down: bool,
    metrics: Arc<Metrics>,
    /// Reused by every `publish` so matching does not allocate per message.
    scratch_matches: Matches<ClientId, Subscription>,
    /// None for an in-memory broker.
    store: Option<StoreLink>,
    /// Answered once the last batch is durable, after `Finish`.
    finish_reply: Option<oneshot::Sender<()>>,
    /// Admin requests waiting for queue messages to be read back, with the
    /// times they were tried.
    admin_parked: Vec<(AdminRequest, oneshot::Sender<AdminReply>, u8)>,
    /// Length of the store's op list when the current router message began: a
    /// reply depends on durable state when its message wrote something.
    mark: Option<usize>,
    /// Who may publish and subscribe where; None: everyone everywhere.
    acl: Option<Arc<Acl>>,
    /// The clock of the current turn, given by the caller of `handle`, `tick` or
    /// `with_store`: Unix times written to the store are read from it.
    turn: Clock,
    /// `auth.allow_cross_user_takeover`.
    cross_user_takeover: bool,
    /// This broker's id: a PUBLISH stamped with it (`tern-origin`) is a copy
    /// of a message that already passed here through a bridge, and is dropped.
    node_id: Arc<str>,
}

impl Router {
    /// A router starting at `now` (the clock is the caller's: see `turn`).
    pub fn new(config: &Config, metrics: Arc<Metrics>, now: Clock) -> Router {
        let mut r = Router {
            clients: Map::default(),
            subs: SubscriptionIndex::new(),
            retained: RetainTree::new(),
            retained_bytes: 0,
            sys_retained: 0,
            deadlines: Deadlines::new(),
            queues: Queues::from_config(config, now.now),
            limits: QueueLimits {
                max_messages: 0,
                max_bytes: 0,
                max_messages_in_memory: 0,
                max_bytes_in_memory: 0,
                queue_qos0_offline: false,
            },
            session_read_ahead: (0, 0),
            session_disk: session_disk::SessionDisk::default(),
            topic_limits: config.topic_limits(),
            cross_user_takeover: false,
            node_id: Arc::from(crate::bridge::origin::node_id(None).unwrap_or_default()),
            quota: SessionQuota::new(QuotaLimits {
                max_sessions: 0,
                per_address: 0,
                per_user: 0,
            }),
            evictable: Vec::new(),
            max_subscriptions: 0,
            max_subscription_bytes: 0,
            max_inbound_qos2: 0,
            max_retained_messages: 0,
            max_retained_bytes: 0,
            backpressure: None,
            sys_every: None,
            shutting_down: false,
            metrics,
            scratch_matches: Matches::default(),
            store: None,
            finish_reply: None,
            admin_parked: Vec::new(),
            mark: None,
            acl: None,
            turn: now,
        };
        r.apply_config(config);
        r
    }

    /// Take the limits and options of `config` (at start, and on a reload).
    /// Nothing already admitted is undone: a session over a lowered cap keeps
    /// what it holds, and the cap applies to what comes next.
    pub fn apply_config(&mut self, config: &Config) {
        let l = &config.limits;
        self.limits = QueueLimits {
            max_messages: l.max_queued_messages,
            max_bytes: l.max_queued_bytes,
            max_messages_in_memory: l.max_queued_messages_in_memory,
            max_bytes_in_memory: l.max_queued_bytes_in_memory,
            queue_qos0_offline: config.mqtt.queue_qos0_offline,
        };
        self.session_read_ahead = (l.session_read_ahead, l.session_read_ahead_bytes);
        self.topic_limits = config.topic_limits();
        self.cross_user_takeover = config.auth.allow_cross_user_takeover;
        self.quota.set_limits(QuotaLimits {
            max_sessions: l.max_sessions,
            per_address: l.max_sessions_per_address,
            per_user: l.max_sessions_per_user,
        });
        self.max_subscriptions = l.max_subscriptions_per_client;
        self.max_subscription_bytes = l.max_subscription_bytes;
        self.max_inbound_qos2 = usize::from(l.receive_maximum);
        self.max_retained_messages = l.max_retained_messages;
        self.max_retained_bytes = l.max_retained_bytes;
        self.backpressure = config
            .mqtt
            .backpressure
            .then_some(config.mqtt.backpressure_timeout);
        self.sys_every = Some(config.mqtt.sys_interval).filter(|d| !d.is_zero());
        self.queues.apply_limits(config);
    }

    /// `[mqtt] sys_interval`, as last configured.
    pub fn sys_every(&self) -> Option<Duration> {
        self.sys_every
    }

    /// The store, when an answer given now must wait for it: this turn wrote
    /// something and acknowledgements wait for the disk.
    fn durable_gate(&mut self) -> Option<&mut StoreLink> {
        let mark = self.mark;
        self.store
            .as_mut()
            .filter(|s| s.wrote_since(mark) && s.gating())
    }

    /// Answer `reply` with `codes` now, or once what this turn wrote is durable.
    fn answer(&mut self, reply: oneshot::Sender<Vec<ReasonCode>>, codes: Vec<ReasonCode>) {
        match self.durable_gate() {
            Some(st) => st.hold(Held::Codes { reply, codes }),
            None => {
                let _ = reply.send(codes);
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.clients.len()
    }

    fn schedule(&mut self, at: Instant, client: &ClientId) {
        if self.clients.contains_key(client) {
            self.deadlines.schedule(at, Timer::Client(client.clone()));
        }
    }

    /// Cancel every deadline of `client` (it came back, or its session ended), so
    /// a client that reconnects often does not grow the map.
    fn unschedule(&mut self, client: &ClientId) {
        self.deadlines.cancel(&Timer::Client(client.clone()));
        if let Some(c) = self.clients.get_mut(client) {
            // Its wake-up is gone with the rest: the next pump schedules anew.
            if let Some(b) = c.retained_mut() {
                b.wake_scheduled = false;
            }
        }
    }

    /// Handle one message at `now`. Returns false when the router should stop.
    pub fn handle(&mut self, msg: RouterMsg, now: Clock) -> bool {
        self.turn = now;
        let now = now.now;
        self.mark = self.store.as_ref().map(|s| s.ops.len());
        let go_on = self.handle_msg(msg, now);
        self.queue_turn_end();
        self.mark = None;
        go_on
    }

    /// Take this broker's kept id (`bridge::origin::node_id`).
    pub fn set_node_id(&mut self, id: Arc<str>) {
        self.node_id = id;
    }

    fn handle_msg(&mut self, msg: RouterMsg, now: Instant) -> bool {
        match msg {
            RouterMsg::Connect { request, reply } => self.connect_or_park(*request, reply, now),
            RouterMsg::SetAcl { acl, reply } => {
                self.set_acl(acl, now);
                let _ = reply.send(());
            }
            RouterMsg::Reconfigure { config, reply } => {
                self.apply_config(&config);
                let _ = reply.send(());
            }
            RouterMsg::ReloadQueues { declared, reply } => {
                let _ = reply.send(self.reload_queues(declared, now));
            }
            RouterMsg::Qos0Gate { queue, gate } => {
                if let Some(q) = self.queues.by_name.get_mut(queue.as_str()) {
                    q.qos0_gate = gate;
                }
            }
            RouterMsg::Revoke { passwords, reply } => {
                self.revoke(&passwords);
                let _ = reply.send(());
            }
            RouterMsg::Publishes {
                client,
                conn_id,
                publishes,
            } => {
                for p in publishes {
                    self.publish_from_client(&client, conn_id, p, now);
                }
            }
            RouterMsg::Admin { request, reply } => match self.admin(request.clone(), now, false) {
                Some(r) => self.answer_admin(reply, r),
                // It needs messages read back first.
                None => self.admin_parked.push((request, reply, 0)),
            },
            RouterMsg::PubAck {
                client,
                conn_id,
                packet_id,
                reason,
            } => {
                if !self.ack_of_wrong_kind(&client, conn_id, packet_id, QoS::AtLeastOnce) {
                    self.on_receiver_ack(&client, conn_id, now, |s| {
                        s.on_puback_with(packet_id, reason)
                    })
                }
            }
            RouterMsg::PubRec {
                client,
                conn_id,
                packet_id,
                success,
                reason,
            } => self.on_pubrec(&client, conn_id, packet_id, success, reason, now),
            RouterMsg::PubRel {
                client,
                conn_id,
                packet_id,
            } => self.on_pubrel(&client, conn_id, packet_id),
            RouterMsg::PubComp {
                client,
                conn_id,
                packet_id,
            } => {
                if !self.ack_of_wrong_kind(&client, conn_id, packet_id, QoS::ExactlyOnce) {
                    self.on_receiver_ack(&client, conn_id, now, |s| s.on_pubcomp(packet_id))
                }
            }
            RouterMsg::Skipped {
                client,
                conn_id,
                packet_id,
            } => {
                self.metrics
                    .dropped_too_large
                    .fetch_add(1, Ordering::Relaxed);
                self.on_receiver_ack(&client, conn_id, now, |s| s.skip(packet_id))
            }
            RouterMsg::Subscribe {
                client,
                conn_id,
                subscribe,
                reply,
            } => {
                let codes = self.subscribe(&client, conn_id, subscribe, now);
                self.answer(reply, codes);
            }
            RouterMsg::Unsubscribe {
                client,
                conn_id,
                unsubscribe,
                reply,
            } => {
                let codes = self.unsubscribe(&client, conn_id, unsubscribe, now);
                self.answer(reply, codes);
            }
            RouterMsg::Disconnected {
                client,
                conn_id,
                kind,
                session_expiry,
            } => self.connection_ended(&client, conn_id, kind, session_expiry, now),
            RouterMsg::Shutdown { reply } => {
                self.shutdown(now);
                let _ = reply.send(());
            }
            RouterMsg::Finish { reply } => {
                self.finish(now);
                // Answered by `run` once this last batch is durable.
                self.finish_reply = Some(reply);
                return false;
            }
        }
        true
    }

    /// The earliest pending deadline (delayed will, session expiry, backpressure).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    /// Fire what is due at `now`: delayed wills, backpressure timeouts, expired
    /// sessions.
    pub fn tick(&mut self, now: Clock) {
        self.turn = now;
        self.tick_at(now.now);
        self.queue_turn_end();
    }

    /// Messages the store read back, for a work queue or a session.
    pub fn loaded(&mut self, loaded: crate::store::Loaded, now: Clock) {
        self.turn = now;
        if let Some(st) = self.store.as_mut() {
            st.handle.loads_answered += 1;
        }
        match loaded {
            crate::store::Loaded::Queue { qid, messages } => {
                self.queue_loaded(qid, messages, now.now)
            }
            crate::store::Loaded::Session { client, deliveries } => {
                self.session_loaded(&client, deliveries, now.now)
            }
        }
        self.queue_turn_end();
    }

    fn tick_at(&mut self, now: Instant) {
        while let Some(timer) = self.deadlines.pop_due(now) {
            let id = match timer {
                Timer::Client(id) => id,
                Timer::Queue(name) => {
                    self.tick_queue(&name, now);
                    continue;
                }
            };
            self.parked_overdue(&id, now);
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            if let Some(b) = c.retained_mut() {
                b.wake_scheduled = false;
                self.pump_retained(&id, now);
            }
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            if c.pending_will().is_some_and(|w| w.due <= now) {
                self.fire_will(&id, now);
            }
            // A read of its backlog that failed is asked again.
            if self
                .clients
                .get(&id)
                .is_some_and(|c| c.online() && c.session.pending().on_disk() > 0)
            {
                self.flush_session(&id, now);
            }
            if let (Some(c), Some(budget)) = (self.clients.get_mut(&id), self.backpressure) {
                let stalled = c
                    .rare()
                    .is_some_and(|r| r.stall.is_holding() && r.stall.stalled(now, budget));
                if stalled {
                    // Stalled: let the publishers go; its further overflow drops
                    // until its holding time has leaked below the budget.
                    c.rare_mut().stall.stop(now);
                    self.release_held(&id);
                }
            }
            let expired = self
                .clients
                .get(&id)
                .is_some_and(|c| !c.online() && c.expires_at().is_some_and(|t| t <= now));
            if expired {
                self.end_session(&id, now);
                self.metrics
                    .sessions_expired
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drop expired retained messages (called periodically) [MQTT-3.3.2-5].
    pub fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.retained.retain_where(|m| {
            let keep = !m.is_expired(now);
            if !keep {
                freed += m.cost();
            }
            keep
        });
        self.retained_bytes = self.retained_bytes.saturating_sub(freed);
        self.sweep_queues(now);
    }

    /// Graceful shutdown begins: every connection is told to close (DISCONNECT
    /// 0x8B), new ones are refused, and persistent sessions are stored as
    /// disconnected now.
    fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let now_unix = self.turn.unix_secs_of(now);
        let mut persisted = Vec::new();
        for (id, c) in self.clients.iter_mut() {
            if let Some(p) = c.take_rare(|r| r.parked.take()) {
                p.refuse(ReasonCode::SERVER_UNAVAILABLE);
            }
            if let Some(h) = c.conn.take() {
                c.disconnected_unix = now_unix;
                if c.sid != 0 {
                    persisted.push(id.clone());
                }
                // The connection drains its outbox, sends DISCONNECT 0x8B
                // [MQTT-4.13] and reports back as Disconnected, which is
                // ignored because the handle is gone; so the will is
                // scheduled here.
                h.close_with(ReasonCode::SERVER_SHUTTING_DOWN);
                if let Some(will) = c.take_rare(|r| r.will.take()) {
                    c.pend_will(will, now);
                }
            }
        }
        // Disconnected from now on: expiry counts from here after a restart.
        for id in persisted {
            self.save_session(&id);
        }
    }

    /// The last turn: wills still pending go out now (the sessions stay stored).
    fn finish(&mut self, now: Instant) {
        let due: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.pending_will().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            self.fire_will(&id, now);
        }
    }

    fn fire_will(&mut self, id: &ClientId, now: Instant) {
        let Some(pw) = self
            .clients
            .get_mut(id)
            .and_then(|c| c.take_rare(|r| r.pending_will.take()))
        else {
            return;
        };
        let w = *pw.will;
        if self.clients.get(id).is_some_and(|c| !c.online()) {
            // The Will is spent (sent or denied): a restart must not try again.
            self.save_session(id);
        }
        // A Will is a publish by its client: the ACL applies when it is sent too
        // (it may have changed since the CONNECT was checked).
        if !self.may_publish(id, &w.topic) {
            return;
        }
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
        self.publish(Some(id), publish, now, false);
    }

    /// Remove a session and everything it holds. A will still waiting for its
    /// delay is published now: the session ending sends it [MQTT-3.1.3-9].
    fn end_session(&mut self, id: &ClientId, now: Instant) {
        if self
            .clients
            .get(id)
            .is_some_and(|c| c.pending_will().is_some())
        {
            self.fire_will(id, now);
        }
        self.release_held(id);
        self.detach_consumer(id, None, now);
        self.unschedule(id);
        if let Some(c) = self.clients.remove(id) {
            if let Some(h) = c.holder() {
                self.quota.remove(h);
            }
            let subscriptions = self.subs.remove_client(id);
            // Handed-on messages are written before the session's end, so no torn
            // batch can keep the end and lose the hand-on.
            self.hand_on_shared(&c.session, subscriptions.keys(), now);
            if let (true, Some(st)) = (c.sid != 0, self.store.as_mut()) {
                st.ops.push(Op::SessionGone { sid: c.sid });
            }
        }
        // A map keeps its largest size: after a burst of clients has gone, give
        // the room back (amortised: only when a quarter or less is used).
        if self.clients.capacity() > 64 && self.clients.len() * 4 < self.clients.capacity() {
            self.clients.shrink_to(self.clients.len() * 2);
        }
    }

    /// A CONNECT for a client id: refusals first (nothing changes when refused),
    /// then the takeover of a live connection, the session started clean or
    /// resumed, and the new connection attached.
    fn connect(
        &mut self,
        req: ConnectRequest,
        now: Instant,
    ) -> Result<ConnectAccepted, ReasonCode> {
        let holder = self.admit(&req, now)?;
        let id = req.client_id.clone();
        let ended = self.take_over(&id, now);
        let session_present = self.start_or_resume(&id, &req, ended, now);
        self.unschedule(&id);
        let (client_id, outbox) = self.attach(req, holder, now);
        Ok(ConnectAccepted {
            session_present,
            client_id,
            outbox,
        })
    }

    /// The router's refusals of a CONNECT (shutting down, a Will the ACL denies,
    /// another user's session, no room for another persistent session). Returns
    /// whom an accepted persistent session counts against.
    fn admit(&mut self, req: &ConnectRequest, now: Instant) -> Result<Option<Holder>, ReasonCode> {
        if self.shutting_down {
            return Err(ReasonCode::SERVER_UNAVAILABLE);
        }
        let id = &req.client_id;
        // A Will the client may not publish is refused with the CONNECT, as
        // Mosquitto does, rather than accepted and silently dropped later.
        if req
            .will
            .as_ref()
            .is_some_and(|w| self.writes_sys(id, &w.topic))
        {
            return Err(ReasonCode::NOT_AUTHORIZED);
        }
        if let (Some(acl), Some(w)) = (&self.acl, &req.will) {
            if !acl.can_publish(req.username.as_deref(), id, &w.topic) {
                self.metrics
                    .acl_denied_publish
                    .fetch_add(1, Ordering::Relaxed);
                info!(client = %id, topic = %w.topic, "CONNECT refused: the ACL denies its Will topic");
                return Err(ReasonCode::NOT_AUTHORIZED);
            }
        }
        // A persistent session belongs to its user: another user may neither
        // resume it nor wipe it with a clean start (nor kick its connection), unless
        // the operator allows it (then it starts clean, below). One of our own
        // bridges keeps its session when its `local_user` changes.
        if let Some(c) = self.clients.get(id) {
            if c.session_expiry > 0
                && c.username != req.username
                && !self.cross_user_takeover
                && !req.own_bridge
            {
                warn!(client = %id, user = req.username.as_deref().unwrap_or(""),
                    owner = c.username.as_deref().unwrap_or(""),
                    "CONNECT refused: the client id's persistent session belongs to another user");
                return Err(ReasonCode::NOT_AUTHORIZED);
            }
        }
        // Room in the persistent-session table, after every other refusal (making
        // room may expire someone) and before anything changes. A
        // session that ends with its connection needs none: clean clients are
        // never refused for it (max_connections bounds them).
        let holder = (req.session_expiry > 0).then(|| {
            let user = req.username.clone().filter(|_| req.verified);
            Holder::new(user, req.addr)
        });
        if let Some(h) = &holder {
            let counted = self
                .clients
                .get(id)
                .and_then(|c| c.holder())
                .is_some_and(|old| old.user == h.user);
            if !counted {
                if let Err(why) = self.make_room(h, id, now) {
                    info!(client = %id, reason = ?why, "CONNECT refused: no room for another persistent session");
                    self.metrics
                        .sessions_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ReasonCode::QUOTA_EXCEEDED);
                }
            }
        }
        Ok(holder)
    }

    /// Close `id`'s live connection, if any, for a new one [MQTT-3.1.4-3]; its
    /// will follows the normal rules (published now, or after its delay unless
    /// the new connection resumes the session first). Returns whether the session
    /// ended with it. A CONNECT from a connection task waits for the old
    /// connection's own report first (`takeover.rs`): a live one is left here
    /// only when it did not report within `TAKEOVER_WAIT`.
    fn take_over(&mut self, id: &ClientId, now: Instant) -> bool {
        let mut ended = false;
        let mut taken_over = false;
        if let Some(c) = self.clients.get_mut(id) {
            if let Some(old) = c.conn.take() {
                old.close_with(ReasonCode::SESSION_TAKEN_OVER);
                c.arm_will(now);
                // A session with expiry 0 ends with its connection: nothing to
                // resume [MQTT-3.1.2-?, 3.1.2.11.2].
                ended = c.session_expiry == 0;
                // Publishers it held back no longer wait for it (as on a
                // disconnect): its stall deadline goes with `unschedule` below,
                // and the new connection may never read.
                c.stop_stall(now);
                taken_over = true;
            }
        }
        if taken_over {
            self.release_held(id);
            // Its queue deliveries were the old connection's: they go back (and
            // the new connection attaches again with its own window).
            self.detach_consumer(id, None, now);
        }
        ended
    }

    /// Discard `id`'s session (clean start, a session that ended with its last
    /// connection, another user) or resume it. Returns Session Present.
    fn start_or_resume(
        &mut self,
        id: &ClientId,
        req: &ConnectRequest,
        ended: bool,
        now: Instant,
    ) -> bool {
        // A session belongs to the user who made it: another login taking the
        // client id over starts clean, so it cannot read what was queued for the
        // first (a stored session from before usernames were kept counts as
        // anonymous).
        let other_user = self
            .clients
            .get(id)
            .is_some_and(|c| c.username != req.username);
        if other_user {
            info!(client = %id, "session taken over by another user: started clean");
        }
        if req.clean_start || ended || other_user {
            // [MQTT-3.1.2-4] clean start discards any existing session.
            self.end_session(id, now);
            false
        } else if let Some(c) = self.clients.get_mut(id) {
            // Resuming: a will still waiting for its delay is not sent
            // [MQTT-3.1.3-9]; one already due goes out now.
            if c.pending_will().is_some_and(|pw| pw.due > now) {
                c.take_rare(|r| r.pending_will.take());
            }
            self.fire_will(id, now);
            true
        } else {
            false
        }
    }

    /// The accepted connection becomes `id`'s: identity, will, expiry, window and
    /// store id set, what the ACL no longer allows forgotten, and what was in flight
    /// or queued sent again.
    /// Returns the client id as the router keeps it and the connection's end
    /// of its outbox, both made here with the client's record (see
    /// `ConnHandle`): a new client's id is copied out of the request.
    fn attach(
        &mut self,
        req: ConnectRequest,
        holder: Option<Holder>,
        now: Instant,
    ) -> (ClientId, crate::outbox::OutboxReceiver) {
        let id = match self.clients.get_key_value(&req.client_id) {
            Some((kept, _)) => kept.clone(),
            None => ClientId::from(&*req.client_id),
        };
        let (handle, outbox) = req.handle.with_outbox();
        let client = self
            .clients
            .entry(id.clone())
            .or_insert_with(|| Box::new(Client::new(id.clone())));
        // Count the session against its holder, or stop counting one that now
        // ends with its connection.
        let keep = match (&holder, client.holder()) {
            (Some(h), Some(old)) => old.user == h.user,
            _ => false,
        };
        if !keep {
            if let Some(old) = client.take_rare(|r| r.holder.take()) {
                self.quota.remove(&old);
            }
            if let Some(h) = holder {
                self.quota.add(&h);
                client.rare_mut().holder = Some(Box::new(h));
            }
        }
        let will = req.will.map(Box::new);
        // A clean client without a Will makes no `Rare` to let go at once.
        if will.is_some() || client.rare.is_some() {
            client.update_rare(|r| {
                r.will = will;
                r.expires_at = None;
            });
        }
        client.username = req.username;
        client.by_password = req.by_password;
        client.remote_bridge = req.remote_bridge;
        client.own_bridge = req.own_bridge;
        client.session_expiry = req.session_expiry;
        client.gated = 0;
        client.held_out = 0;
        client.session.set_window(handle.window);
        let mut gone_sid = 0;
        if let Some(st) = self.store.as_mut() {
            if req.session_expiry > 0 && client.sid == 0 {
                client.sid = st.next_sid;
                st.next_sid += 1;
            } else if req.session_expiry == 0
                && client.sid != 0
                && client.session.pending().on_disk() == 0
                && client.session.pending().durable_here() == 0
            {
                // Resumed, but it ends with this connection now: not kept on
                // disk. (A backlog on disk, or on its way there, is read from
                // there first: the session's records go when it ends, and a
                // restart meanwhile drops a session with expiry 0 anyway.)
                gone_sid = std::mem::take(&mut client.sid);
            }
        }
        // What the ACL (perhaps changed while the client was away) no longer lets
        // it read is not redelivered.
        if let Some(acl) = &self.acl {
            let user = client.username.clone();
            let gone = client
                .session
                .forget_unreadable(|topic| acl.can_read(user.as_deref(), &id, topic));
            self.metrics
                .acl_denied_deliver
                .fetch_add(gone as u64, Ordering::Relaxed);
        }
        // Redeliver what was in flight with DUP, then queued messages
        // [MQTT-4.4.0-1], as far as the window and outbox allow.
        let conn_id = handle.conn_id;
        let out = client.session.resume(now, handle.room());
        client.conn = Some(handle);
        if let Some(st) = self.store.as_mut() {
            if gone_sid != 0 {
                st.ops.push(Op::SessionGone { sid: gone_sid });
            }
        }
        self.save_session(&id);
        self.store_events(&id);
        self.push_out(&id, conn_id, out);
        self.read_ahead_session(&id);
        self.pump_retained(&id, now);
        self.attach_consumes(&id, now);
        (id, outbox)
    }

    /// A receiver acknowledged (or skipped) a delivery: run `f` on its session if
    /// `conn_id` is its live connection, move waiting messages into the freed
    /// room, and let held-back publishers go once its queue has drained.
    fn on_receiver_ack(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        now: Instant,
        f: impl FnOnce(&mut Session) -> bool,
    ) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if c.live(conn_id).is_none() || !f(&mut c.session) {
            return;
        }
        self.flush_session(id, now);
    }

    /// An acknowledgement meant for a `qos` delivery (PUBACK: 1; PUBREC, PUBCOMP:
    /// 2) for a delivery in flight at the other QoS is a protocol error: the
    /// connection closes (v5 DISCONNECT 0x82; 3.1.1 [MQTT-4.8.0-1]) and the
    /// delivery stays unacknowledged in the session [MQTT-4.3.2-1]
    /// [MQTT-4.3.3-1], sent again on the next connection. Returns whether it was.
    fn ack_of_wrong_kind(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        packet_id: PacketId,
        qos: QoS,
    ) -> bool {
        let Some(c) = self.clients.get_mut(id) else {
            return false;
        };
        if !c.session.inflight_at_other_qos(packet_id, qos) {
            return false;
        }
        let Some(h) = c.conn.as_mut().filter(|h| h.conn_id == conn_id) else {
            return false;
        };
        self.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
        debug!(client = %id, packet_id = packet_id.get(), "acknowledgement of the wrong kind: closing the connection");
        h.close_with(ReasonCode::PROTOCOL_ERROR);
        true
    }

    /// Push deliveries into `id`'s outbox, or hold them for the store's sync.
    fn push_out(&mut self, id: &ClientId, conn_id: u64, out: Vec<Outgoing>) {
        if out.is_empty() {
            return;
        }
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        // Durable deliveries and PUBRELs depend on their packet id / state being
        // on disk; others only wait behind what already waits for this client.
        let depends = out.iter().any(|o| match o {
            Outgoing::Publish { delivery, .. } => delivery.did != 0,
            Outgoing::PubRel(_) | Outgoing::Reply(_) => true,
        });
        if let Some(st) = self
            .store
            .as_mut()
            .filter(|s| s.must_hold(c.held_out, depends))
        {
            for item in out {
                if matches!(item, Outgoing::Publish { .. }) {
                    c.gated += 1;
                }
                c.held_out += 1;
                st.hold(Held::Out {
                    client: id.clone(),
                    conn_id,
                    item,
                });
            }
            return;
        }
        let Some(h) = c.live(conn_id) else {
            return;
        };
        for o in out {
            send_now(h, o, &self.metrics);
        }
    }

    /// Push what the session can release now into its outbox.
    fn flush_session(&mut self, id: &ClientId, now: Instant) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        let Some(conn_id) = c.conn.as_ref().map(|h| h.conn_id) else {
            self.store_events(id);
            return;
        };
        let mut out = Vec::new();
        c.session.fill_window(now, c.room(), &mut out);
        self.store_events(id);
        self.push_out(id, conn_id, out);
        self.read_ahead_session(id);
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if c.session.queue_drained(&self.limits) {
            c.stop_stall(now);
            if c.rare().is_some_and(|r| !r.held_acks.is_empty()) {
                self.release_held(id);
            }
        }
        if self
            .clients
            .get(id)
            .is_some_and(|c| c.rare().is_some_and(|r| r.retained.is_some()))
        {
            self.pump_retained(id, now);
        }
    }

    fn disconnected(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        kind: DisconnectKind,
        session_expiry: Option<u32>,
        now: Instant,
    ) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        // A connection that was taken over reports late: the session is no longer
        // its own.
        if c.live(conn_id).is_none() {
            return;
        }
        c.conn = None;
        c.stop_stall(now);
        if let Some(e) = session_expiry {
            c.session_expiry = e;
        }
        if kind == DisconnectKind::WithWill {
            c.arm_will(now);
        } else {
            // DISCONNECT 0x00: the Will is discarded [MQTT-3.1.2-10].
            c.take_rare(|r| r.will.take());
        }
        // Publishers held back by this client no longer wait for it: offline
        // sessions drop at their cap instead.
        self.release_held(id);
        // What it held of the queues it consumes goes to other consumers.
        self.detach_consumer(id, None, now);
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        let expiry = c.session_expiry;
        if expiry == 0 {
            self.end_session(id, now);
            return;
        }
        let will_due = c.pending_will().map(|w| w.due);
        c.disconnected_unix = self.turn.unix_secs_of(now);
        if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            c.rare_mut().expires_at = Some(at);
            self.schedule(at, id);
        }
        // While it is away, its whole backlog waits on disk.
        self.list_for_disk(id, true);
        self.save_session(id);
        if let Some(due) = will_due {
            if due <= now {
                self.fire_will(id, now);
            } else {
                self.schedule(due, id);
            }
        }
    }
}

#[cfg(test)]
mod tests;
