//! Rebuilding the router from what the store recovered: retained messages,
//! sessions with their subscriptions, queued and in-flight deliveries, inbound
//! QoS 2 ids and pending wills, with expiry and will deadlines; work queues with
//! their messages.

use super::*;

impl Router {
    /// Persist through `store`, starting from what it recovered.
    pub fn with_store(mut self, handle: StoreHandle, recovered: Recovered, now: Clock) -> Router {
        self.turn = now;
        self.store = Some(StoreLink {
            handle,
            ops: Vec::new(),
            waiting: VecDeque::new(),
            awaited: 0,
            synced: 0,
            next_sid: recovered.next_sid.max(1),
            next_mid: recovered.next_mid.max(1),
            next_did: recovered.next_did.max(1),
        });
        self.session_disk = session_disk::SessionDisk::new(recovered.next_did.saturating_sub(1));
        self.restore(recovered, now.now);
        self
    }

    /// Rebuild sessions, subscriptions, queues and retained messages from the store.
    pub(super) fn restore(&mut self, mut rec: Recovered, now: Instant) {
        let queues = std::mem::take(&mut rec.queues);
        self.restore_queues(queues, rec.next_qid, rec.next_qmid);
        let clock = self.turn;
        let now_unix = clock.unix_secs_of(now);
        for m in rec.retained {
            if m.is_expired(now) {
                continue;
            }
            self.retained_bytes += m.cost();
            self.retained.set(&m.topic.clone(), m);
        }
        for s in rec.sessions {
            let id = s.rec.client_id.clone();
            let mut c = Client::new(id.clone());
            for (filter, options, identifier) in s.subs {
                if filter.starts_with("$queue/") {
                    self.restore_consumer(&mut c, &filter, options.qos);
                    continue;
                }
                let Ok(spec) = FilterSpec::parse(&filter, self.topic_limits) else {
                    warn!(%filter, "stored subscription no longer valid under the topic limits: dropped");
                    continue;
                };
                let sub = Subscription {
                    options,
                    identifier,
                };
                self.subs.add(&id, spec, sub);
            }
            c.session.restore_inbound_qos2(s.inbound_qos2);
            for rd in s.deliveries {
                let r = rd.r;
                let Some(message) = rd.message else {
                    // Queued: it waits on disk until the session is about to
                    // send it.
                    c.session.restore_pending_on_disk(r.did, rd.cost);
                    continue;
                };
                let d = Delivery {
                    message,
                    qos: r.qos,
                    retain: r.retain,
                    subscription_ids: r.sub_ids,
                    did: r.did,
                    shared: false,
                    queued: None,
                };
                match PacketId::new(r.pid) {
                    Some(pid) => c.session.restore_inflight(d, pid, r.released),
                    None => c.session.restore_pending(d),
                }
            }
            c.sid = s.rec.sid;
            c.username = s.rec.username.clone();
            c.session_expiry = s.rec.expiry;
            // Its address is not stored. A claimed (unverified) username counts
            // as anonymous, as it did before the restart.
            let user = c.username.clone().filter(|_| s.rec.verified);
            let holder = Holder::new(user, None);
            self.quota.add(&holder);
            c.rare_mut().holder = Some(Box::new(holder));
            // A session that was connected when Tern stopped counts as
            // disconnected now, without DISCONNECT: its Will applies.
            let was_online = s.rec.disconnected_at.is_none();
            c.disconnected_unix = s.rec.disconnected_at.unwrap_or(now_unix);
            if let Some(will) = s.rec.will {
                let due = match s.rec.will_due {
                    Some(t) if !was_online => clock.instant_of_secs(t),
                    _ => now + Duration::from_secs(u64::from(will.delay_interval)),
                };
                c.pend_will(will, due);
            }
            let will_due = c.pending_will().map(|w| w.due);
            let disconnected = c.disconnected_unix;
            self.clients.insert(id.clone(), Box::new(c));
            if s.rec.expiry != u32::MAX {
                let at =
                    clock.instant_of_secs(disconnected.saturating_add(u64::from(s.rec.expiry)));
                if let Some(c) = self.clients.get_mut(&id) {
                    c.rare_mut().expires_at = Some(at);
                }
                self.schedule(at, &id);
            }
            if let Some(due) = will_due {
                self.schedule(due, &id);
            }
            if was_online {
                self.save_session(&id);
            }
        }
    }
}
