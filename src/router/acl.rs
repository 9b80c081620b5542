//! The ACL inside the router: who may publish to and read which topic (a
//! delivery is checked per receiver), and what a reloaded ACL takes away from
//! existing subscriptions and queued deliveries; and the connections of users a
//! reloaded password file no longer has.

use super::*;

impl Router {
    /// Replace the ACL. Subscriptions the new one denies are removed (and the
    /// removal stored), and so are queued or unacknowledged deliveries it no
    /// longer lets their session read; new deliveries are checked per message
    /// anyway. A client is not told: MQTT has no packet for a subscription the
    /// server ends.
    pub fn set_acl(&mut self, acl: Option<Arc<Acl>>, now: Instant) {
        self.acl = acl;
        let Some(acl) = self.acl.clone() else {
            return;
        };
        let mut removed = 0u64;
        let mut touched = Vec::new();
        // Queue consumption the new ACL denies ends like an UNSUBSCRIBE (what a
        // connected consumer holds stays until it acknowledges it).
        let mut unconsumed: Vec<(ClientId, Arc<str>)> = Vec::new();
        for (id, c) in self.clients.iter() {
            for (name, _) in c.consumes() {
                if !acl.can_subscribe(c.username.as_deref(), id, &format!("$queue/{name}")) {
                    unconsumed.push((id.clone(), name.clone()));
                }
            }
        }
        for (id, name) in unconsumed {
            info!(client = %id, queue = %name, "queue subscription removed: the ACL no longer allows it");
            self.stop_consuming(&id, &name, now);
            removed += 1;
        }
        for (id, c) in self.clients.iter_mut() {
            let user = c.username.clone();
            let gone = c
                .session
                .forget_unreadable(|topic| acl.can_read(user.as_deref(), id, topic));
            if gone > 0 {
                self.metrics
                    .acl_denied_deliver
                    .fetch_add(gone as u64, Ordering::Relaxed);
                touched.push(id.clone());
            }
            let denied: Vec<FilterSpec> = self
                .subs
                .of(id)
                .map(|(spec, _)| spec)
                .filter(|spec| !acl.can_subscribe(c.username.as_deref(), id, &spec.filter))
                .cloned()
                .collect();
            for spec in denied {
                self.subs.remove(id, &spec);
                if let (true, Some(st)) = (c.sid != 0, self.store.as_mut()) {
                    st.ops.push(Op::Unsub {
                        sid: c.sid,
                        filter: Arc::from(spec.to_string()),
                    });
                }
                info!(client = %id, filter = %spec, "subscription removed: the ACL no longer allows it");
                removed += 1;
            }
        }
        self.metrics
            .acl_denied_subscribe
            .fetch_add(removed, Ordering::Relaxed);
        // Freed window slots take queued messages; the removals are stored.
        for id in touched {
            self.flush_session(&id, now);
        }
    }

    /// May `id` (logged in as its session's user) receive a message on `topic`?
    pub(super) fn may_read(&self, id: &ClientId, topic: &str) -> bool {
        self.acl_allows(id, topic, Acl::can_read, &self.metrics.acl_denied_deliver)
    }

    /// May `id` publish on `topic`? Never into `$SYS`, whatever the ACL says.
    pub(super) fn may_publish(&self, id: &ClientId, topic: &str) -> bool {
        if self.writes_sys(id, topic) {
            return false;
        }
        let ok = self.acl_allows(
            id,
            topic,
            Acl::can_publish,
            &self.metrics.acl_denied_publish,
        );
        if !ok {
            debug!(client = %id, topic, "publish denied by the ACL");
        }
        ok
    }

    /// A client's message (a PUBLISH or a Will) into the `$SYS` tree, which is
    /// the broker's (4.7.2): refused and counted, so what Tern publishes there
    /// cannot be forged (v5 0x87; 3.1.1 has no negative ack: dropped).
    pub(super) fn writes_sys(&self, id: &ClientId, topic: &str) -> bool {
        let sys = crate::topic::is_sys_topic(topic);
        if sys {
            self.metrics
                .sys_publish_denied
                .fetch_add(1, Ordering::Relaxed);
            debug!(client = %id, topic, "publish into $SYS refused");
        }
        sys
    }

    /// One ACL decision for `id`'s user; a denial is counted in `denied`. No ACL:
    /// everything is allowed.
    pub(super) fn acl_allows(
        &self,
        id: &ClientId,
        topic: &str,
        check: fn(&Acl, Option<&str>, &str, &str) -> bool,
        denied: &std::sync::atomic::AtomicU64,
    ) -> bool {
        let Some(acl) = &self.acl else {
            return true;
        };
        let username = self.clients.get(id).and_then(|c| c.username.as_deref());
        let ok = check(acl, username, id, topic);
        if !ok {
            denied.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Close the connections that logged in with a password the reloaded
    /// password file no longer has (0x87 on 5.0).
    pub(super) fn revoke(&mut self, passwords: &crate::auth::PasswordFile) {
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
    }
}
