//! The numbers the router publishes for readers that must never wait on it:
//! the Prometheus scrape, `/api/v1/status`, the status page and `$SYS`. Taken
//! once a second (`SNAPSHOT_EVERY`) by the router task and handed over as an
//! `Arc` in a `watch` channel; a reader clones the `Arc` and is done. Counters
//! that connections and the store update themselves stay in `Metrics`.

use super::admin::QueueInfo;
use super::*;
use serde::Serialize;

/// How often the router takes a snapshot.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Unix milliseconds when it was taken (0: none taken yet).
    pub taken_unix_ms: u64,
    /// Sessions with a live connection.
    pub clients_connected: usize,
    /// Every session: connected, and persistent ones whose client is away.
    pub sessions: usize,
    /// The most sessions connected at once, as seen by snapshots.
    pub clients_maximum: usize,
    /// Subscriptions (a client's filter counts once), `$queue/` ones aside.
    pub subscriptions: usize,
    /// Retained messages, `$SYS` aside.
    pub retained_messages: usize,
    pub retained_bytes: usize,
    /// QoS 1/2 deliveries sent and not yet acknowledged, all sessions.
    pub inflight: usize,
    /// Deliveries waiting in sessions' queues (in memory or on disk).
    pub queued: usize,
    /// Every work queue, by name.
    pub queues: Vec<QueueInfo>,
}

impl Router {
    /// The numbers as of now; `previous` carries the maxima.
    pub fn snapshot(&self, previous: &Snapshot) -> Snapshot {
        let mut s = Snapshot {
            taken_unix_ms: self.turn.unix_ms,
            sessions: self.clients.len(),
            subscriptions: self.subs.len(),
            retained_messages: self.retained.len() - self.sys_retained,
            retained_bytes: self.retained_bytes,
            ..Snapshot::default()
        };
        for c in self.clients.values() {
            if c.conn.is_some() {
                s.clients_connected += 1;
            }
            s.inflight += c.session.inflight_len();
            s.queued += c.session.pending_len();
        }
        s.clients_maximum = previous.clients_maximum.max(s.clients_connected);
        let mut names = self.queues.names();
        names.sort();
        s.queues = names.iter().filter_map(|n| self.queue_info(n)).collect();
        s
    }
}

impl Router {
    /// Publish the `$SYS` tree: retained QoS 0 messages from the broker
    /// itself (the ACL still decides who may read them).
    pub(super) fn publish_sys(&mut self, messages: Vec<(String, String)>, now: Instant) {
        for (topic, payload) in messages {
            let p = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic,
                packet_id: None,
                properties: Default::default(),
                payload: payload.into(),
            };
            self.publish(None, p, now, false);
        }
    }

    /// The counters `$SYS` reports.
    pub(super) fn sys_counters(&self) -> crate::sys::SysCounters {
        let m = &self.metrics;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        crate::sys::SysCounters {
            publish_received: m.messages_received(),
            publish_sent: m.messages_sent(),
            publish_dropped: m.messages_dropped(),
            bytes_received: get(&m.bytes_received),
            bytes_sent: get(&m.bytes_sent),
            connections_accepted: get(&m.connections_accepted),
        }
    }
}
