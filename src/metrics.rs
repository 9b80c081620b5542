//! Broker-wide counters: lock-free atomics written by the router and connections.
//!
//! Owns the numbers only; exporting them is `admin::prometheus` and `sys`. Every
//! message the broker drops is counted here under its reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connections_refused_limit: AtomicU64,
    pub connections_current: AtomicU64,
    /// Of those, hibernating (`connection/hibernate.rs`).
    pub connections_hibernating: AtomicU64,
    /// PUBLISHes received from clients, by QoS (0, 1, 2); the total is
    /// `messages_received()`.
    pub received_by_qos: [AtomicU64; 3],
    /// PUBLISHes handed to connections, by QoS.
    pub sent_by_qos: [AtomicU64; 3],
    /// MQTT bytes read from and written to clients (inside TLS / WebSocket).
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_no_subscribers: AtomicU64,
    /// Work-queue messages dropped by `overflow = "drop-head"`.
    pub queue_dropped: AtomicU64,
    /// Work-queue messages moved to a dead-letter queue (or dropped, when the
    /// queue has none).
    pub queue_dead_lettered: AtomicU64,
    /// Publishes a work queue refused for lack of room (`overflow = "reject"`).
    pub queue_refused: AtomicU64,
    /// Messages in all work queues now (a gauge, set once per router turn).
    pub queue_messages: AtomicU64,
    /// Work-queue messages lost because their record could not be read back
    /// from the log (damaged on disk).
    pub queue_unreadable: AtomicU64,
    /// Messages for persistent sessions lost because their record could not
    /// be read back from the log (damaged on disk), one per delivery.
    pub messages_unreadable: AtomicU64,
    pub messages_expired: AtomicU64,
    /// QoS 1/2 messages dropped because a session's queue was at its cap.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages dropped because a connected subscriber reads too slowly.
    pub dropped_qos0_slow: AtomicU64,
    /// Deliveries skipped because they exceed the receiver's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Pushes refused by a connection's outbox (only when it is closing).
    pub dropped_outbox_full: AtomicU64,
    /// Retained messages not kept because of max_retained_messages / _bytes.
    pub retained_refused: AtomicU64,
    /// Retained messages not sent at SUBSCRIBE because the client already waited
    /// for max_retained_messages of them (it repeated a wide SUBSCRIBE).
    pub retained_not_sent: AtomicU64,
    /// Publisher acknowledgements held back by a full subscriber queue.
    pub acks_held: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub takeovers: AtomicU64,
    pub wills_published: AtomicU64,
    pub sessions_expired: AtomicU64,
    /// CONNECTs refused for lack of persistent-session room (max_sessions, or the
    /// per-address / per-user caps).
    pub sessions_refused: AtomicU64,
    /// Offline anonymous sessions expired early to make room in a full table.
    pub sessions_evicted: AtomicU64,
    /// Bytes the store appended to its log (records, not file system overhead).
    pub store_bytes_written: AtomicU64,
    /// fsyncs by the store (one per group of writes).
    pub store_syncs: AtomicU64,
    /// How long each of them took.
    pub fsync_seconds: LatencyHistogram,
    /// QoS 1/2 messages refused because the disk budget (storage.max_bytes) was
    /// reached.
    pub store_refused: AtomicU64,
    /// TLS handshakes that failed or timed out (no certificate, wrong CA, expired,
    /// not TLS at all).
    pub tls_handshake_failed: AtomicU64,
    /// WebSocket upgrades that failed (bad request, wrong subprotocol, timeout).
    pub ws_handshake_failed: AtomicU64,
    /// CONNECTs refused for a wrong password, unknown user, missing certificate
    /// identity or because anonymous clients are not allowed.
    pub logins_refused: AtomicU64,
    /// PUBLISHes (and Wills) dropped because the ACL denies writing the topic.
    pub acl_denied_publish: AtomicU64,
    /// Client PUBLISHes (and Wills) refused because they write into `$SYS`.
    pub sys_publish_denied: AtomicU64,
    /// Subscriptions refused (SUBACK 0x80 / 0x87) or removed by an ACL reload.
    pub acl_denied_subscribe: AtomicU64,
    /// Deliveries not made because the ACL denies the receiver reading the topic.
    pub acl_denied_deliver: AtomicU64,
    /// PUBLISHes dropped as copies of messages that had passed here through a
    /// bridge already (`bridge::origin`): a loop through other brokers.
    pub bridge_loops: AtomicU64,
    /// CONNECTs refused because the connections not yet logged in held
    /// `limits.unauthenticated_buffer_bytes`.
    pub connects_over_budget: AtomicU64,
}

impl Metrics {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// PUBLISHes received from clients, every QoS.
    pub fn messages_received(&self) -> u64 {
        self.received_by_qos.iter().map(Metrics::get).sum()
    }

    /// PUBLISHes handed to connections, every QoS.
    pub fn messages_sent(&self) -> u64 {
        self.sent_by_qos.iter().map(Metrics::get).sum()
    }

    /// Messages or deliveries not made, every reason together (`$SYS`
    /// `publish/messages/dropped`, `/api/v1/status`; `/metrics` has them by
    /// reason).
    pub fn messages_dropped(&self) -> u64 {
        [
            &self.dropped_queue_full,
            &self.dropped_qos0_slow,
            &self.dropped_too_large,
            &self.dropped_outbox_full,
            &self.messages_expired,
            &self.acl_denied_publish,
            &self.acl_denied_deliver,
            &self.bridge_loops,
            &self.messages_unreadable,
            &self.store_refused,
        ]
        .into_iter()
        .map(Metrics::get)
        .sum()
    }
}

/// Upper bounds of the latency buckets, seconds (an fsync on an SD card takes
/// milliseconds to a second; on an SSD tens of microseconds).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets, lock-free: written by one thread
/// (the store), read by scrapes.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations at most each bound (not cumulative); the last is past all.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// (sum in seconds, count, cumulative counts per bound, +Inf last).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut out = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            out.push((bound, cumulative));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        // The count is the +Inf bucket's, so the two always agree.
        (sum, cumulative, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_cumulative_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 3);
        assert!((sum - 10.00305).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.0001, 1));
        assert_eq!(buckets[5], (0.005, 2));
        assert_eq!(buckets[13], (2.5, 2));
        assert_eq!(buckets[14], (f64::INFINITY, 3));
    }
}
