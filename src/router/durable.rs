//! The router's side of the durable store: session records, delivery state
//! changes and messages written as ops, the batch handed over at the end of a
//! turn, what is released once the store has synced, and the disk budget.

use super::*;

/// Something for a connection that must wait until the store has synced the
/// batch it depends on (write-ahead: nothing leaves before its cause is durable).
pub(super) enum Held {
    Out {
        client: ClientId,
        conn_id: u64,
        item: Outgoing,
    },
    Codes {
        reply: oneshot::Sender<Vec<ReasonCode>>,
        codes: Vec<ReasonCode>,
    },
    /// The admin endpoint's answer to an operation that wrote something.
    Admin {
        reply: oneshot::Sender<AdminReply>,
        answer: AdminReply,
    },
}

/// The router's side of the durable store.
pub(super) struct StoreLink {
    pub(super) handle: StoreHandle,
    /// Ops of the current turn, submitted as one batch at its end.
    pub(super) ops: Vec<Op>,
    /// Held outputs in order, each with the ticket of the batch it waits for.
    /// Not capped by a number of its own: what waits here is what clients are
    /// owed, bounded by their windows (each publisher's Receive Maximum, each
    /// receiver's inflight window and outbox room).
    pub(super) waiting: VecDeque<(u64, Held)>,
    /// The last ticket something in memory waits to see synced without
    /// writing anything itself (a refused queue message leaving memory): that
    /// batch is submitted even if it holds no op, else nothing may ever sync
    /// it.
    pub(super) awaited: u64,
    pub(super) synced: u64,
    pub(super) next_sid: u64,
    pub(super) next_mid: u64,
    pub(super) next_did: u64,
}

impl StoreLink {
    /// Is anything written not yet durable?
    pub(super) fn gating(&self) -> bool {
        !self.ops.is_empty() || self.handle.submitted() > self.synced
    }

    /// Must an output that `depends` on durable state (or not) wait, for a
    /// client with `held_out` outputs already waiting? Outputs are released in
    /// order, so holding everything behind a held one keeps each connection's
    /// packets in order [MQTT-4.6.0-2..6]; outputs that depend on nothing
    /// written (QoS 0, clean sessions) to clients with nothing waiting go at once,
    /// so durable traffic does not slow unrelated clients.
    pub(super) fn must_hold(&self, held_out: u32, depends: bool) -> bool {
        held_out > 0 || (depends && self.gating())
    }

    /// Did the current router message write anything? (None: outside a message,
    /// e.g. a timer: assume yes.)
    pub(super) fn wrote_since(&self, mark: Option<usize>) -> bool {
        mark.is_none_or(|m| self.ops.len() > m)
    }

    /// The ticket of this turn's batch, for something that waits for its
    /// sync: the batch is submitted at the end of the turn even if empty.
    pub(super) fn await_next(&mut self) -> u64 {
        self.awaited = self.handle.next_ticket();
        self.awaited
    }

    pub(super) fn hold(&mut self, held: Held) {
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
pub(super) fn run_of(ops: &mut [Op], done: bool) -> Option<&mut Op> {
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

/// Add a delivery state to the open `Deliv` record of the run, or start one.
pub(super) fn push_deliv(ops: &mut Vec<Op>, did: u64, pid: PacketId, released: bool) {
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

impl Router {
    /// Write `id`'s session record (if it is persisted).
    pub(super) fn save_session(&mut self, id: &ClientId) {
        let Some(st) = self.store.as_mut() else {
            return;
        };
        let Some(c) = self.clients.get(id) else {
            return;
        };
        if c.sid == 0 {
            return;
        }
        let (disconnected_at, will, will_due) = if c.online() {
            (None, c.rare().and_then(|r| r.will.clone()), None)
        } else {
            match c.pending_will() {
                Some(pw) => (
                    Some(c.disconnected_unix),
                    Some(pw.will.clone()),
                    Some(self.turn.unix_secs_of(pw.due)),
                ),
                None => (Some(c.disconnected_unix), None, None),
            }
        };
        st.ops.push(Op::Session(SessionRec {
            sid: c.sid,
            client_id: id.clone(),
            expiry: c.session_expiry,
            disconnected_at,
            will,
            will_due,
            username: c.username.clone(),
            verified: c.holder().is_some_and(|h| h.user.is_some()),
        }));
    }

    /// Act on the session's delivery events: store ops for durable deliveries,
    /// the queue's side for work-queue deliveries.
    pub(super) fn store_events(&mut self, id: &ClientId) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if !c.session.has_events() {
            return;
        }
        let mut queue_events = Vec::new();
        for e in c.session.drain_events() {
            let st = self.store.as_mut();
            match (e, st) {
                (Event::Queue { tag, outcome }, _) => queue_events.push((tag, outcome)),
                (_, None) => {}
                (Event::Assigned { did, pid }, Some(st)) => {
                    push_deliv(&mut st.ops, did, pid, false)
                }
                (Event::Released { did, pid }, Some(st)) => push_deliv(&mut st.ops, did, pid, true),
                (Event::Done { did }, Some(st)) => match run_of(&mut st.ops, true) {
                    Some(Op::Done { dids }) => dids.push(did),
                    _ => st.ops.push(Op::Done { dids: vec![did] }),
                },
            }
        }
        // Acted on at the end of the router's turn, so a queue's next delivery
        // never overtakes what this session is releasing now.
        self.queues
            .ended
            .extend(queue_events.into_iter().map(|(t, o)| (id.clone(), t, o)));
    }

    /// End of a router turn: hand this turn's ops to the store as one batch (also
    /// an empty one when outputs or queue evictions wait for its ticket: an
    /// empty batch costs no write and no fsync, but without it their wait
    /// would last until some later turn happens to write something).
    pub fn end_turn(&mut self) {
        self.queues.publish_gauge(&self.metrics);
        let Some(st) = self.store.as_mut() else {
            return;
        };
        let next = st.handle.next_ticket();
        if !st.ops.is_empty()
            || st.awaited == next
            || st.waiting.back().is_some_and(|(t, _)| *t == next)
        {
            let ticket = st.handle.submit(&mut st.ops);
            self.session_disk.submitted(ticket, st.next_did);
        }
        self.submit_loads();
        self.submit_session_loads();
    }

    /// The store made batches up to `synced` durable: let what waited on them go.
    pub fn release(&mut self, synced: u64) {
        let Some(st) = self.store.as_mut() else {
            return;
        };
        st.synced = st.synced.max(synced);
        let synced = st.synced;
        while st.waiting.front().is_some_and(|(t, _)| *t <= st.synced) {
            let Some((_, held)) = st.waiting.pop_front() else {
                break;
            };
            match held {
                Held::Codes { reply, codes } => {
                    let _ = reply.send(codes);
                }
                Held::Admin { reply, answer } => {
                    let _ = reply.send(answer);
                }
                Held::Out {
                    client,
                    conn_id,
                    item,
                } => {
                    let Some(c) = self.clients.get_mut(&client) else {
                        continue;
                    };
                    // For a connection that is gone the session keeps what matters:
                    // unacknowledged deliveries are re-sent on resume.
                    let Some(h) = c.conn.as_ref().filter(|h| h.conn_id == conn_id) else {
                        continue;
                    };
                    let delivery = matches!(item, Outgoing::Publish { .. });
                    send_now(h, item, &self.metrics);
                    if delivery {
                        c.gated = c.gated.saturating_sub(1);
                    }
                    c.held_out = c.held_out.saturating_sub(1);
                }
            }
        }
        self.evict_written(synced);
        self.sessions_to_disk(synced);
    }

    /// The store's synced-ticket watch, for `run`.
    pub(super) fn synced_watch(&self) -> Option<watch::Receiver<u64>> {
        self.store.as_ref().map(|s| s.handle.synced.clone())
    }

    /// The store's answers to queue loads, for `run` (taken once).
    pub(super) fn take_loaded(
        &mut self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::store::Loaded>> {
        self.store.as_mut().and_then(|s| s.handle.loaded.take())
    }

    /// The disk budget is reached: a QoS 1/2 message that may need storing is
    /// refused rather than acknowledged and lost. v5 clients get 0x97 Quota
    /// exceeded; 3.1.1 has no negative acknowledgement, so the connection is
    /// closed and the client re-sends later.
    pub(super) fn refuse_over_budget(&mut self, id: &ClientId, conn_id: u64, p: &Publish) {
        self.metrics.store_refused.fetch_add(1, Ordering::Relaxed);
        let Some(pid) = p.packet_id else {
            return;
        };
        let v5 = self
            .clients
            .get(id)
            .and_then(|c| c.live(conn_id))
            .is_some_and(|h| h.version == ProtocolVersion::V5);
        if v5 {
            let kind = match p.qos {
                QoS::ExactlyOnce => ReplyKind::PubRec,
                _ => ReplyKind::PubAck,
            };
            self.reply(id, conn_id, kind, pid, ReasonCode::QUOTA_EXCEEDED);
        } else if let Some(h) = self
            .clients
            .get_mut(id)
            .and_then(|c| c.conn.as_mut())
            .filter(|h| h.conn_id == conn_id)
        {
            warn!(client = %id, "disk budget reached: closing a 3.1.1 connection instead of acknowledging a message it cannot store");
            h.close_with(ReasonCode::QUOTA_EXCEEDED);
        }
    }

    /// Would routing this QoS 1/2 message write anything durable: a retained
    /// message, or a delivery to a persistent session? Asked only at the disk
    /// budget, so a message that needs no storage is never refused for it. Every
    /// member of a matching `$share` group counts (any may be chosen); the walk
    /// moves each group's round-robin turn on by one, a small unfairness only
    /// while the budget is reached.
    pub(super) fn needs_store(&mut self, p: &Publish) -> bool {
        if p.retain {
            return true;
        }
        let clients = &self.clients;
        let persistent = |k: &ClientId| clients.get(k).is_some_and(|c| c.sid != 0);
        let shared_persistent = std::cell::Cell::new(false);
        let mut matches = std::mem::take(&mut self.scratch_matches);
        // Returning false visits every member of each group.
        self.subs.matches_into(
            &p.topic,
            |k| {
                if persistent(k) {
                    shared_persistent.set(true);
                }
                false
            },
            &mut matches,
        );
        let plain = matches
            .plain
            .iter()
            .any(|(k, s)| s.options.qos != QoS::AtMostOnce && persistent(k));
        matches.plain.clear();
        matches.shared.clear();
        self.scratch_matches = matches;
        plain || shared_persistent.get() || self.queues.bound(&p.topic)
    }

    /// A new delivery id when a delivery at `qos` to session `sid` must be durable.
    pub(super) fn new_did(&mut self, sid: u64, qos: QoS) -> u64 {
        match self.store.as_mut() {
            Some(st) if sid != 0 && qos != QoS::AtMostOnce => {
                st.next_did += 1;
                st.next_did - 1
            }
            _ => 0,
        }
    }

    /// Write a message with its durable deliveries.
    pub(super) fn write_message(&mut self, message: Arc<Message>, receivers: Vec<Receiver>) {
        if let Some(st) = self.store.as_mut() {
            let mid = st.next_mid;
            st.next_mid += 1;
            st.ops.push(Op::Msg {
                mid,
                message,
                receivers,
            });
        }
    }
}
