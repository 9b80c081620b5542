//! SUBSCRIBE and UNSUBSCRIBE inside the router: the filter checks, the ACL, the
//! per-session caps (count and bytes), the stored change, and the retained
//! messages owed at subscribe time.

use super::*;

impl Router {
    pub(super) fn subscribe(
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
        // `$queue/` filters are answered after the loop (consuming a queue needs
        // the whole router), in their place.
        let mut queue_subs: Vec<(usize, &str, QoS)> = Vec::new();
        for f in &sub.filters {
            if f.filter.starts_with("$queue/") {
                queue_subs.push((codes.len(), &f.filter, f.options.qos));
                codes.push(ReasonCode::UNSPECIFIED_ERROR);
                continue;
            }
            let spec = match FilterSpec::parse(&f.filter, self.topic_limits) {
                Ok(s) => s,
                // Over the limits: a malformed filter closed the connection
                // before it came here.
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
        for (i, filter, qos) in queue_subs {
            let code = self.queue_subscribe(id, filter, qos, now);
            if let Some(c) = codes.get_mut(i) {
                *c = code;
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
            let backlog = c.rare_mut().retained.get_or_insert_with(Default::default);
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

    pub(super) fn unsubscribe(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        unsub: Unsubscribe,
        now: Instant,
    ) -> Vec<ReasonCode> {
        let n = unsub.filters.len();
        let Some(c) = self.clients.get_mut(id) else {
            return vec![ReasonCode::UNSPECIFIED_ERROR; n];
        };
        if c.live(conn_id).is_none() {
            return vec![ReasonCode::UNSPECIFIED_ERROR; n];
        }
        let mut codes: Vec<ReasonCode> = unsub
            .filters
            .iter()
            .map(|f| match FilterSpec::parse(f, self.topic_limits) {
                // Answered below.
                _ if f.starts_with("$queue/") => ReasonCode::UNSPECIFIED_ERROR,
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(spec) => {
                    if self.subs.remove(id, &spec) {
                        if let Some(b) = c.retained_mut() {
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
            .collect();
        for (f, code) in unsub.filters.iter().zip(codes.iter_mut()) {
            if f.starts_with("$queue/") {
                *code = self.queue_unsubscribe(id, f, now);
            }
        }
        codes
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
