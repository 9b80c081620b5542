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
use crate::stall::StallMeter;
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

use tracing::{debug, info, warn};

mod acl;
mod client;
mod durable;
mod fanout;
mod msg;
mod recovery;
mod retained;
mod room;
mod run;

use client::{Client, HeldAck};
pub use msg::{ConnHandle, ConnectAccepted, ConnectRequest, DisconnectKind, RouterMsg};
pub use run::run;

/// Something for a connection that must wait until the store has synced the
/// batch it depends on (write-ahead: nothing leaves before its cause is durable).
enum Held {
    Out {
        client: ClientId,
        conn_id: u64,
        item: Outgoing,
    },
    Codes {
        reply: oneshot::Sender<Vec<ReasonCode>>,
        codes: Vec<ReasonCode>,
    },
}

/// The router's side of the durable store.
struct StoreLink {
    handle: StoreHandle,
    /// Ops of the current turn, submitted as one batch at its end.
    ops: Vec<Op>,
    /// Held outputs in order, each with the ticket of the batch it waits for.
    /// Not capped by a number of its own: what waits here is what clients are
    /// owed, bounded by their windows (each publisher's Receive Maximum, each
    /// receiver's inflight window and outbox room).
    waiting: VecDeque<(u64, Held)>,
    synced: u64,
    next_sid: u64,
    next_mid: u64,
    next_did: u64,
}

impl StoreLink {
    /// Is anything written not yet durable?
    fn gating(&self) -> bool {
        !self.ops.is_empty() || self.handle.submitted() > self.synced
    }

    /// Must an output that `depends` on durable state (or not) wait, for a
    /// client with `held_out` outputs already waiting? Outputs are released in
    /// order, so holding everything behind a held one keeps each connection's
    /// packets in order [MQTT-4.6.0-2..6]; outputs that depend on nothing
    /// written (QoS 0, clean sessions) to clients with nothing waiting go at once,
    /// so durable traffic does not slow unrelated clients.
    fn must_hold(&self, held_out: u32, depends: bool) -> bool {
        held_out > 0 || (depends && self.gating())
    }

    /// Did the current router message write anything? (None: outside a message,
    /// e.g. a timer: assume yes.)
    fn wrote_since(&self, mark: Option<usize>) -> bool {
        mark.is_none_or(|m| self.ops.len() > m)
    }

    fn hold(&mut self, held: Held) {
        let t = self.handle.next_ticket();
        self.waiting.push_back((t, held));
    }
}

/// The open `Done` (or `Deliv`) record at the end of `ops` to add to: acks and
/// window moves alternate in runs (ack, next message in), so one record of each
/// kind serves the run. Only the tail made of these two kinds is searched: a
/// `Done` or `Deliv` must never move before the `Msg` that created its delivery.
/// Within the tail, order between the two kinds does not matter: replaying `Done`
/// before a `Deliv` of the same delivery ends in the same state.
fn run_of(ops: &mut [Op], done: bool) -> Option<&mut Op> {
    let mut found = None;
    for (i, op) in ops.iter().enumerate().rev() {
        match op {
            Op::Done { .. } if done => {
                found = Some(i);
                break;
            }
            Op::Deliv { .. } if !done => {
                found = Some(i);
                break;
            }
            Op::Done { .. } | Op::Deliv { .. } => continue,
            _ => break,
        }
    }
    found.and_then(move |i| ops.get_mut(i))
}

/// Push into a connection's outbox, counting what was sent and what a closing
/// connection refused (the room checks make a refusal impossible otherwise).
fn send_now(h: &ConnHandle, item: Outgoing, metrics: &Metrics) {
    let delivery = matches!(item, Outgoing::Publish { .. });
    if h.outbox.try_send(item).is_err() {
        metrics.dropped_outbox_full.fetch_add(1, Ordering::Relaxed);
    } else if delivery {
        metrics.messages_sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Add a delivery state to the open `Deliv` record of the run, or start one.
fn push_deliv(ops: &mut Vec<Op>, did: u64, pid: PacketId, released: bool) {
    let s = crate::store::record::DelivState {
        did,
        pid: pid.get(),
        released,
    };
    match run_of(ops, false) {
        Some(Op::Deliv { states }) => states.push(s),
        _ => ops.push(Op::Deliv { states: vec![s] }),
    }
}

pub struct Router {
    clients: Map<ClientId, Client>,
    subs: SubscriptionIndex<ClientId, Subscription>,
    retained: RetainTree<Arc<Message>>,
    retained_bytes: usize,
    /// Deadlines for delayed wills, session expiry and backpressure timeouts,
    /// checked by `tick`.
    deadlines: Deadlines<ClientId>,
    limits: QueueLimits,
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
    shutting_down: bool,
    metrics: Arc<Metrics>,
    /// Reused by every `publish` so matching does not allocate per message.
    scratch_matches: Matches<ClientId, Subscription>,
    /// None for an in-memory broker.
    store: Option<StoreLink>,
    /// Answered once the last batch is durable, after `Finish`.
    finish_reply: Option<oneshot::Sender<()>>,
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
}

impl Router {
    /// A router starting at `now` (the clock is the caller's: see `turn`).
    pub fn new(config: &Config, metrics: Arc<Metrics>, now: Clock) -> Router {
        Router {
            clients: Map::default(),
            subs: SubscriptionIndex::new(),
            retained: RetainTree::new(),
            retained_bytes: 0,
            deadlines: Deadlines::new(),
            limits: QueueLimits {
                max_messages: config.limits.max_queued_messages,
                max_bytes: config.limits.max_queued_bytes,
                queue_qos0_offline: config.mqtt.queue_qos0_offline,
            },
            topic_limits: config.topic_limits(),
            cross_user_takeover: config.auth.allow_cross_user_takeover,
            quota: SessionQuota::new(QuotaLimits {
                max_sessions: config.limits.max_sessions,
                per_address: config.limits.max_sessions_per_address,
                per_user: config.limits.max_sessions_per_user,
            }),
            evictable: Vec::new(),
            max_subscriptions: config.limits.max_subscriptions_per_client,
            max_subscription_bytes: config.limits.max_subscription_bytes,
            max_inbound_qos2: usize::from(config.limits.receive_maximum),
            max_retained_messages: config.limits.max_retained_messages,
            max_retained_bytes: config.limits.max_retained_bytes,
            backpressure: config
                .mqtt
                .backpressure
                .then_some(config.mqtt.backpressure_timeout),
            shutting_down: false,
            metrics,
            scratch_matches: Matches::default(),
            store: None,
            finish_reply: None,
            mark: None,
            acl: None,
            turn: now,
        }
    }

    /// Answer `reply` with `codes` now, or once what this turn wrote is durable.
    fn answer(&mut self, reply: oneshot::Sender<Vec<ReasonCode>>, codes: Vec<ReasonCode>) {
        let mark = self.mark;
        match self
            .store
            .as_mut()
            .filter(|s| s.wrote_since(mark) && s.gating())
        {
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
            self.deadlines.schedule(at, client.clone());
        }
    }

    /// Cancel every deadline of `client` (it came back, or its session ended), so
    /// a client that reconnects often does not grow the map.
    fn unschedule(&mut self, client: &ClientId) {
        self.deadlines.cancel(client);
        if let Some(c) = self.clients.get_mut(client) {
            // Its wake-up is gone with the rest: the next pump schedules anew.
            if let Some(b) = c.retained.as_mut() {
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
        self.mark = None;
        go_on
    }

    fn handle_msg(&mut self, msg: RouterMsg, now: Instant) -> bool {
        match msg {
            RouterMsg::Connect { request, reply } => {
                let r = self.connect(*request, now);
                let _ = reply.send(r);
            }
            RouterMsg::SetAcl { acl, reply } => {
                self.set_acl(acl, now);
                let _ = reply.send(());
            }
            RouterMsg::Revoke { passwords, reply } => {
                for (id, c) in self.clients.iter_mut() {
                    let gone = c.by_password
                        && c.username
                            .as_deref()
                            .is_some_and(|u| !passwords.contains(u));
                    if let (true, Some(h)) = (gone, c.conn.as_mut()) {
                        info!(client = %id, user = c.username.as_deref().unwrap_or(""), "disconnected: the user is no longer in the password file");
                        // The connection closes and reports back as usual.
                        h.close_with(ReasonCode::NOT_AUTHORIZED);
                    }
                }
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
            RouterMsg::PubAck {
                client,
                conn_id,
                packet_id,
            } => self.on_receiver_ack(&client, conn_id, now, |s| s.on_puback(packet_id)),
            RouterMsg::PubRec {
                client,
                conn_id,
                packet_id,
                success,
            } => {
                let mut known = false;
                self.on_receiver_ack(&client, conn_id, now, |s| {
                    known = s.on_pubrec(packet_id, success);
                    known
                });
                if success {
                    // PUBREC is answered with PUBREL (5.0 section 4.3.3); 0x92 for an id
                    // we do not have in flight.
                    self.reply(&client, conn_id, ReplyKind::PubRel, packet_id, found(known));
                }
            }
            RouterMsg::PubRel {
                client,
                conn_id,
                packet_id,
            } => {
                // Release the id: a PUBLISH with it is new again (5.0 section 4.3.3).
                let mut known = false;
                if let Some(c) = self.clients.get_mut(&client) {
                    known = c.session.inbound_qos2_release(packet_id.get());
                    if let (true, Some(st)) = (known && c.sid != 0, self.store.as_mut()) {
                        // PUBCOMP waits for this: after it the client may reuse the id.
                        st.ops.push(Op::InQos2Done {
                            sid: c.sid,
                            pid: packet_id.get(),
                        });
                    }
                }
                self.reply(
                    &client,
                    conn_id,
                    ReplyKind::PubComp,
                    packet_id,
                    found(known),
                );
            }
            RouterMsg::PubComp {
                client,
                conn_id,
                packet_id,
            } => self.on_receiver_ack(&client, conn_id, now, |s| s.on_pubcomp(packet_id)),
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
                let codes = self.unsubscribe(&client, conn_id, unsubscribe);
                self.answer(reply, codes);
            }
            RouterMsg::Disconnected {
                client,
                conn_id,
                kind,
                session_expiry,
            } => self.disconnected(&client, conn_id, kind, session_expiry, now),
            RouterMsg::Shutdown { reply } => {
                self.shutting_down = true;
                let now_unix = self.turn.unix_secs_of(now);
                let mut persisted = Vec::new();
                for (id, c) in self.clients.iter_mut() {
                    if let Some(h) = c.conn.take() {
                        c.disconnected_unix = now_unix;
                        if c.sid != 0 {
                            persisted.push(id.clone());
                        }
                        // The connection drains its outbox, sends DISCONNECT 0x8B
                        // [MQTT-4.13] and reports back as Disconnected, which is
                        // ignored because the handle is gone; so the will is
                        // scheduled here.
                        let _ = h.kick.send(ReasonCode::SERVER_SHUTTING_DOWN);
                        if let Some(will) = c.will.take() {
                            c.pend_will(will, now);
                        }
                    }
                }
                // Disconnected from now on: expiry counts from here after a restart.
                for id in persisted {
                    self.save_session(&id);
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
                // Answered by `run` once this last batch is durable.
                self.finish_reply = Some(reply);
                return false;
            }
        }
        true
    }

    /// Push a reply into `client`'s outbox if `conn_id` is still its connection.
    fn reply(
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

    /// The earliest pending deadline (delayed will, session expiry, backpressure).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next()
    }

    /// Fire what is due at `now`: delayed wills, backpressure timeouts, expired
    /// sessions.
    pub fn tick(&mut self, now: Clock) {
        self.turn = now;
        let now = now.now;
        while let Some(id) = self.deadlines.pop_due(now) {
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            if let Some(b) = c.retained.as_mut() {
                b.wake_scheduled = false;
                self.pump_retained(&id, now);
            }
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            if c.pending_will.as_ref().is_some_and(|w| w.due <= now) {
                self.fire_will(&id, now);
            }
            if let (Some(c), Some(budget)) = (self.clients.get_mut(&id), self.backpressure) {
                if c.stall.is_holding() && c.stall.stalled(now, budget) {
                    // Stalled: let the publishers go; its further overflow drops
                    // until its holding time has leaked below the budget.
                    c.stall.stop(now);
                    self.release_held(&id);
                }
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
    }

    /// Send the acknowledgements held back by `id`'s full queue.
    fn release_held(&mut self, id: &ClientId) {
        let held = match self.clients.get_mut(id) {
            Some(c) => std::mem::take(&mut c.held_acks),
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

    fn fire_will(&mut self, id: &ClientId, now: Instant) {
        let Some(pw) = self.clients.get_mut(id).and_then(|c| c.pending_will.take()) else {
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
            .is_some_and(|c| c.pending_will.is_some())
        {
            self.fire_will(id, now);
        }
        self.release_held(id);
        self.unschedule(id);
        if let Some(c) = self.clients.remove(id) {
            if let Some(h) = &c.holder {
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

    fn connect(
        &mut self,
        req: ConnectRequest,
        now: Instant,
    ) -> Result<ConnectAccepted, ReasonCode> {
        if self.shutting_down {
            return Err(ReasonCode::SERVER_UNAVAILABLE);
        }
        let id = req.client_id.clone();
        // A Will the client may not publish is refused with the CONNECT, as
        // Mosquitto does, rather than accepted and silently dropped later.
        if let (Some(acl), Some(w)) = (&self.acl, &req.will) {
            if !acl.can_publish(req.username.as_deref(), &id, &w.topic) {
                self.metrics
                    .acl_denied_publish
                    .fetch_add(1, Ordering::Relaxed);
                info!(client = %id, topic = %w.topic, "CONNECT refused: the ACL denies its Will topic");
                return Err(ReasonCode::NOT_AUTHORIZED);
            }
        }
        // A persistent session belongs to its user: another user may neither
        // resume it nor wipe it with a clean start (nor kick its connection), unless
        // the operator allows it (then it starts clean, below).
        if let Some(c) = self.clients.get(&id) {
            if c.session_expiry > 0 && c.username != req.username && !self.cross_user_takeover {
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
                .get(&id)
                .and_then(|c| c.holder.as_ref())
                .is_some_and(|old| old.user == h.user);
            if !counted {
                if let Err(why) = self.make_room(h, &id, now) {
                    info!(client = %id, reason = ?why, "CONNECT refused: no room for another persistent session");
                    self.metrics
                        .sessions_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ReasonCode::QUOTA_EXCEEDED);
                }
            }
        }
        // Takeover: close the existing connection [MQTT-3.1.4-3]; its will follows
        // the normal rules (published now, or after its delay unless this
        // connection resumes the session first).
        let mut ended = false;
        let mut taken_over = false;
        if let Some(c) = self.clients.get_mut(&id) {
            if let Some(old) = c.conn.take() {
                let _ = old.kick.send(ReasonCode::SESSION_TAKEN_OVER);
                self.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
                c.arm_will(now);
                // A session with expiry 0 ends with its connection: nothing to
                // resume [MQTT-3.1.2-?, 3.1.2.11.2].
                ended = c.session_expiry == 0;
                // Publishers it held back no longer wait for it (as on a
                // disconnect): its stall deadline goes with `unschedule` below,
                // and the new connection may never read.
                c.stall.stop(now);
                taken_over = true;
            }
        }
        if taken_over {
            self.release_held(&id);
        }
        // A session belongs to the user who made it: another login taking the
        // client id over starts clean, so it cannot read what was queued for the
        // first (a stored session from before usernames were kept counts as
        // anonymous).
        let other_user = self
            .clients
            .get(&id)
            .is_some_and(|c| c.username != req.username);
        if other_user {
            info!(client = %id, "session taken over by another user: started clean");
        }
        let session_present = if req.clean_start || ended || other_user {
            // [MQTT-3.1.2-4] clean start discards any existing session.
            self.end_session(&id, now);
            false
        } else if let Some(c) = self.clients.get_mut(&id) {
            // Resuming: a will still waiting for its delay is not sent
            // [MQTT-3.1.3-9]; one already due goes out now.
            if c.pending_will.as_ref().is_some_and(|pw| pw.due > now) {
                c.pending_will = None;
            }
            self.fire_will(&id, now);
            true
        } else {
            false
        };
        self.unschedule(&id);
        let client = self
            .clients
            .entry(id.clone())
            .or_insert_with(|| Client::new(id.clone()));
        // Count the session against its holder, or stop counting one that now
        // ends with its connection.
        let keep = match (&holder, &client.holder) {
            (Some(h), Some(old)) => old.user == h.user,
            _ => false,
        };
        if !keep {
            if let Some(old) = client.holder.take() {
                self.quota.remove(&old);
            }
            if let Some(h) = holder {
                self.quota.add(&h);
                client.holder = Some(Box::new(h));
            }
        }
        client.will = req.will.map(Box::new);
        client.username = req.username;
        client.by_password = req.by_password;
        client.session_expiry = req.session_expiry;
        client.expires_at = None;
        client.gated = 0;
        client.held_out = 0;
        client.session.set_window(req.handle.window);
        let mut gone_sid = 0;
        if let Some(st) = self.store.as_mut() {
            if req.session_expiry > 0 && client.sid == 0 {
                client.sid = st.next_sid;
                st.next_sid += 1;
            } else if req.session_expiry == 0 && client.sid != 0 {
                // Resumed, but it ends with this connection now: not kept on disk.
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
        let conn_id = req.handle.conn_id;
        let out = client.session.resume(now, req.handle.room());
        client.conn = Some(req.handle);
        if let Some(st) = self.store.as_mut() {
            if gone_sid != 0 {
                st.ops.push(Op::SessionGone { sid: gone_sid });
            }
        }
        self.save_session(&id);
        self.store_events(&id);
        self.push_out(&id, conn_id, out);
        self.pump_retained(&id, now);
        Ok(ConnectAccepted { session_present })
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
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if c.session.queue_drained(&self.limits) {
            c.stall.stop(now);
            if !c.held_acks.is_empty() {
                self.release_held(id);
            }
        }
        if self.clients.get(id).is_some_and(|c| c.retained.is_some()) {
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
        c.stall.stop(now);
        if let Some(e) = session_expiry {
            c.session_expiry = e;
        }
        if kind == DisconnectKind::WithWill {
            c.arm_will(now);
        } else {
            // DISCONNECT 0x00: the Will is discarded [MQTT-3.1.2-10].
            c.will = None;
        }
        // Publishers held back by this client no longer wait for it: offline
        // sessions drop at their cap instead.
        self.release_held(id);
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        let expiry = c.session_expiry;
        if expiry == 0 {
            self.end_session(id, now);
            return;
        }
        let will_due = c.pending_will.as_ref().map(|w| w.due);
        c.disconnected_unix = self.turn.unix_secs_of(now);
        if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            c.expires_at = Some(at);
            self.schedule(at, id);
        }
        self.save_session(id);
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
        if c.live(conn_id).is_none() {
            return vec![ReasonCode::UNSPECIFIED_ERROR; sub.filters.len()];
        }
        // What this session's subscriptions hold (they stay while it is offline,
        // so they are capped in bytes as well as in number).
        let mut sub_bytes: usize = self.subs.of(id).map(|(s, _)| subscription_cost(s)).sum();
        // Retained messages go once per distinct filter of this packet, so a
        // SUBSCRIBE repeating `#` cannot multiply them.
        let mut retained_for: Vec<(Arc<str>, QoS, Option<u32>)> = Vec::new();
        let mut seen: Set<&str> = Set::default();
        for f in &sub.filters {
            let spec = match FilterSpec::parse(&f.filter, self.topic_limits) {
                Ok(s) => s,
                Err(_) => {
                    codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if let Some(acl) = &self.acl {
                if !acl.can_subscribe(c.username.as_deref(), id, &spec.filter) {
                    self.metrics
                        .acl_denied_subscribe
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(client = %id, filter = %f.filter, "subscribe denied by the ACL");
                    // v5 0x87; 3.1.1 has only 0x80 (the encoder maps it).
                    codes.push(ReasonCode::NOT_AUTHORIZED);
                    continue;
                }
            }
            let existed = self.subs.contains(id, &spec);
            let cost = subscription_cost(&spec);
            if !existed
                && (self.subs.count(id) >= self.max_subscriptions
                    || sub_bytes + cost > self.max_subscription_bytes)
            {
                codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            if !existed {
                sub_bytes += cost;
            }
            let s = Subscription {
                options: f.options,
                identifier: sub.properties.subscription_identifier,
            };
            self.subs.add(id, spec.clone(), s);
            if let (true, Some(st)) = (c.sid != 0, self.store.as_mut()) {
                st.ops.push(Op::Sub {
                    sid: c.sid,
                    filter: Arc::from(f.filter.as_str()),
                    options: f.options,
                    identifier: s.identifier,
                });
            }
            codes.push(ReasonCode(f.options.qos.as_u8()));
            // Retained messages at subscribe time [MQTT-3.3.1-9] per Retain
            // Handling [MQTT-3.3.1-10/11]; never for a shared subscription.
            let send = match f.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send && !spec.is_shared() && seen.insert(f.filter.as_str()) {
                retained_for.push((spec.filter.clone(), f.options.qos, s.identifier));
            }
        }
        for (filter, qos, identifier) in retained_for {
            let matching: Vec<Arc<str>> = self
                .retained
                .matching(&filter)
                .into_iter()
                .map(|m| m.topic.clone())
                .collect();
            if matching.is_empty() {
                continue;
            }
            let cap = self.max_retained_messages;
            let Some(c) = self.clients.get_mut(id) else {
                break;
            };
            let backlog = c.retained.get_or_insert_with(Default::default);
            let dropped = backlog.push(filter, qos, identifier, matching, cap);
            if dropped > 0 {
                self.metrics
                    .retained_not_sent
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                warn!(client = %id, dropped, "retained messages not sent: the client already waits for max_retained_messages of them");
            }
        }
        self.pump_retained(id, now);
        codes
    }

    fn unsubscribe(&mut self, id: &ClientId, conn_id: u64, unsub: Unsubscribe) -> Vec<ReasonCode> {
        let n = unsub.filters.len();
        let Some(c) = self.clients.get_mut(id) else {
            return vec![ReasonCode::UNSPECIFIED_ERROR; n];
        };
        if c.live(conn_id).is_none() {
            return vec![ReasonCode::UNSPECIFIED_ERROR; n];
        }
        unsub
            .filters
            .iter()
            .map(|f| match FilterSpec::parse(f, self.topic_limits) {
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(spec) => {
                    if self.subs.remove(id, &spec) {
                        if let Some(b) = c.retained.as_mut() {
                            b.forget_filter(&spec.filter);
                        }
                        if let (true, Some(st)) = (c.sid != 0, self.store.as_mut()) {
                            st.ops.push(Op::Unsub {
                                sid: c.sid,
                                filter: Arc::from(f.as_str()),
                            });
                        }
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::NO_SUBSCRIPTION_EXISTED
                    }
                }
            })
            .collect()
    }

    /// A PUBLISH from a connected client: QoS 2 duplicate suppression, routing, and
    /// the acknowledgement (now, or held while a receiver's queue is full).
    fn publish_from_client(&mut self, id: &ClientId, conn_id: u64, p: Publish, now: Instant) {
        self.metrics
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        // A taken-over connection's last packets: its client resends what was
        // not acknowledged on the new connection.
        if c.live(conn_id).is_none() {
            return;
        }
        let v5 = c.conn.as_ref().is_some_and(|h| h.version.is_v5());
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
                if c.session.inbound_qos2_len() >= self.max_inbound_qos2 {
                    self.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(client = %id, limit = self.max_inbound_qos2, "QoS 2 messages waiting for PUBREL over receive_maximum: closing the connection");
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
                self.publish(Some(id), p, now, false);
                return;
            }
        };
        if !allowed {
            // A denied 3.1.1 QoS 2 message: its id is kept (above) so the
            // client's PUBREL gets its PUBCOMP; nothing is routed.
            self.reply(id, conn_id, kind, pid, ReasonCode::SUCCESS);
            return;
        }
        let held_by = self.publish(Some(id), p, now, true);
        let reply = Reply {
            kind,
            packet_id: pid,
            reason: ReasonCode::SUCCESS,
        };
        match held_by.and_then(|t| self.clients.get_mut(&t)) {
            Some(target) => {
                self.metrics.acks_held.fetch_add(1, Ordering::Relaxed);
                target.held_acks.push(HeldAck {
                    publisher: id.clone(),
                    conn_id,
                    reply,
                })
            }
            None => self.reply(id, conn_id, kind, pid, ReasonCode::SUCCESS),
        }
    }
}

/// What one subscription costs in memory, for `max_subscription_bytes`: its
/// filter and share name (in the session's index and the trie's levels), the
/// index entry, and a trie node per level it may create.
fn subscription_cost(spec: &FilterSpec) -> usize {
    const ENTRY: usize = 96;
    const NODE: usize = 96;
    let levels = spec.filter.split('/').count();
    2 * (spec.filter.len() + spec.share_group.as_ref().map_or(0, |g| g.len()))
        + ENTRY
        + levels * NODE
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        PublishProperties, SubscribeFilter, SubscribeProperties, SubscriptionOptions,
    };
    use bytes::Bytes;

    struct TestConn {
        outbox: crate::outbox::OutboxReceiver,
        kick: oneshot::Receiver<ReasonCode>,
    }

    fn router() -> Router {
        Router::new(
            &Config::default(),
            Arc::new(Metrics::default()),
            Clock::read(),
        )
    }

    /// The clock of a turn at `now` (the wall clock is not looked at by these
    /// tests).
    fn at(now: Instant) -> Clock {
        Clock::at(now, 0)
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
        let (otx, orx) = crate::outbox::outbox(64);
        let (ktx, krx) = oneshot::channel();
        let req = ConnectRequest {
            client_id: id.into(),
            clean_start: clean,
            session_expiry: expiry,
            will,
            username: None,
            by_password: false,
            addr: None,
            verified: false,
            handle: ConnHandle {
                conn_id,
                version: ProtocolVersion::V5,
                outbox: otx,
                kick: ktx,
                max_packet_size: None,
                window: 10,
                reply_reserve: 8,
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
        while let Some(Outgoing::Publish { delivery, .. }) = c.outbox.try_recv() {
            v.push(delivery.message.topic.to_string());
        }
        v
    }

    fn drop_conn(r: &mut Router, id: &str, conn_id: u64, kind: DisconnectKind, now: Instant) {
        r.disconnected(&id.into(), conn_id, kind, None, now);
    }

    #[test]
    fn delayed_will_fires_after_delay_and_is_cancelled_by_resume() {
        let t0 = Instant::now();
        let mut r = router();
        let (_, mut watcher) = connect(&mut r, "w", 1, true, 0, None, t0);
        subscribe(&mut r, "w", 1, "will/#", QoS::AtLeastOnce, t0);
        let (_, _c) = connect(&mut r, "c", 2, false, 100, Some(will("will/c", 5)), t0);
        drop_conn(&mut r, "c", 2, DisconnectKind::WithWill, t0);
        r.tick(at(t0 + Duration::from_secs(4)));
        assert!(topics(&mut watcher).is_empty(), "not before the delay");
        r.tick(at(t0 + Duration::from_secs(5)));
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
        r.tick(at(t0 + Duration::from_secs(60)));
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
        r.tick(at(t0 + Duration::from_secs(3)));
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
        r.publish(None, p, t0, false);
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
            r.publish(None, p, t0, false);
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
        r.tick(at(t0 + Duration::from_secs(14)));
        assert_eq!(r.session_count(), 1);
        r.tick(at(t0 + Duration::from_secs(15)));
        assert_eq!(r.session_count(), 0, "expired 10 s after the disconnect");
    }

    fn publish_packet(topic: &str, qos: QoS, pid: u16, retain: bool) -> Publish {
        Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: PacketId::new(pid).filter(|_| qos != QoS::AtMostOnce),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"x"),
        }
    }

    fn replies(c: &mut TestConn) -> usize {
        let mut n = 0;
        while let Some(o) = c.outbox.try_recv() {
            n += usize::from(matches!(o, Outgoing::Reply(_)));
        }
        n
    }

    /// Review finding: a takeover of a subscriber that was holding publishers
    /// back kept their acks held (its stall deadline went with `unschedule`), so
    /// a new connection that never reads held them for ever.
    #[test]
    fn takeover_releases_the_publishers_a_full_subscriber_held() {
        let t0 = Instant::now();
        let mut cfg = Config::default();
        cfg.limits.max_queued_messages = 5;
        let mut r = Router::new(&cfg, Arc::new(Metrics::default()), Clock::read());
        let (_, _sub) = connect(&mut r, "sub", 1, false, 100, None, t0);
        subscribe(&mut r, "sub", 1, "t", QoS::AtLeastOnce, t0);
        let (_, mut publ) = connect(&mut r, "pub", 2, true, 0, None, t0);
        for pid in 1..=30 {
            r.publish_from_client(
                &"pub".into(),
                2,
                publish_packet("t", QoS::AtLeastOnce, pid, false),
                t0,
            );
        }
        let acked = replies(&mut publ);
        assert!(acked < 30, "some acks are held ({acked} of 30 sent)");
        let (_, _sub2) = connect(&mut r, "sub", 3, false, 100, None, t0);
        r.tick(at(t0 + Duration::from_secs(3600)));
        assert_eq!(
            acked + replies(&mut publ),
            30,
            "all acks released by the takeover"
        );
    }

    /// Only what a shared subscription gave a member is handed on when it goes:
    /// not its copy from a plain subscription to the same topic (review finding:
    /// the group got the message twice).
    #[test]
    fn only_shared_deliveries_are_handed_on() {
        let t0 = Instant::now();
        let mut r = router();
        let (_, _a) = connect(&mut r, "a", 1, true, 0, None, t0);
        subscribe(&mut r, "a", 1, "$share/g/t", QoS::AtLeastOnce, t0);
        subscribe(&mut r, "a", 1, "t", QoS::AtLeastOnce, t0);
        let (_, mut b) = connect(&mut r, "b", 2, true, 0, None, t0);
        subscribe(&mut r, "b", 2, "$share/g/t", QoS::AtLeastOnce, t0);
        for round in 0..2u16 {
            r.publish(
                None,
                publish_packet("t", QoS::AtLeastOnce, round + 1, false),
                t0,
                false,
            );
        }
        // Two messages: the group gave one to each member; A also has both
        // through its plain subscription.
        assert_eq!(topics(&mut b).len(), 1);
        drop_conn(&mut r, "a", 1, DisconnectKind::WithWill, t0);
        assert_eq!(topics(&mut b).len(), 1, "only A's shared one is handed on");
    }

    /// Review finding: a takeover removed the QoS 0 retained backlog's wake-up
    /// but left it marked as scheduled, so the rest was never sent.
    #[test]
    fn qos0_retained_backlog_goes_on_after_a_takeover() {
        let t0 = Instant::now();
        let mut r = router();
        for i in 0..2000 {
            r.publish(
                None,
                publish_packet(&format!("r/{i}"), QoS::AtMostOnce, 0, true),
                t0,
                false,
            );
        }
        let (_, mut first) = connect(&mut r, "s", 1, false, 100, None, t0);
        subscribe(&mut r, "s", 1, "r/#", QoS::AtMostOnce, t0);
        let mut got = topics(&mut first).len();
        let (_, mut second) = connect(&mut r, "s", 2, false, 100, None, t0);
        let mut now = t0;
        for _ in 0..1000 {
            got += topics(&mut second).len();
            if got >= 2000 {
                break;
            }
            now += Duration::from_millis(20);
            r.tick(at(now));
        }
        assert_eq!(got, 2000, "every retained message arrived");
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every connected or offline client costs one `Client` in the router's map:
    /// keep it small (wills and rarely used parts are boxed).
    #[test]
    fn client_record_stays_small() {
        let c = std::mem::size_of::<Client>();
        let s = std::mem::size_of::<Session>();
        eprintln!(
            "Client: {c} bytes, Session: {s}, LastWill: {}",
            std::mem::size_of::<LastWill>()
        );
        assert!(c <= 512, "Client grew to {c} bytes");
    }
}
