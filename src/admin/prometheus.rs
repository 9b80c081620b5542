//! `GET /metrics`: the Prometheus text exposition (the `prometheus-client`
//! crate's encoder). A scrape reads only what is already published: the
//! counters in `Metrics` (atomics), the router's last `Snapshot` (gauges and
//! the work queues), the bridges' statuses, and the process's own numbers from
//! `/proc`; it never waits on the router. Names follow Prometheus's rules:
//! `tern_` prefix, counters end in `_total`, units in the name.

use crate::bridge::status::BridgeStatus;
use crate::metrics::Metrics;
use crate::router::Snapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Result;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything one scrape shows.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    snapshot: Arc<Snapshot>,
    bridges: Arc<Vec<Arc<BridgeStatus>>>,
    process: Option<crate::admin::process::ProcessStats>,
}

/// The exposition text.
pub fn render(
    metrics: Arc<Metrics>,
    snapshot: Arc<Snapshot>,
    bridges: Arc<Vec<Arc<BridgeStatus>>>,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        metrics,
        snapshot,
        bridges,
        process: crate::admin::process::ProcessStats::read(),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would only cut the
    // text short, which a scraper reports.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

fn get(c: &AtomicU64) -> u64 {
    Metrics::get(c)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// One counter family: a value per value of `label`.
fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: &[(&str, u64)],
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in rows {
        let labels = [(label, *value)];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family: a value per value of `label`.
fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: &[(&str, f64)],
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in rows {
        let labels = [(label, *value)];
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result {
        let m = &self.metrics;
        let s = &self.snapshot;
        let e = &mut e;
        // Connections and sessions.
        gauge(
            e,
            "tern_connections",
            "Client connections open now",
            get(&m.connections_current) as f64,
        )?;
        gauge(
            e,
            "tern_connections_hibernating",
            "Client connections open now that hibernate (idle, held outside any task)",
            get(&m.connections_hibernating) as f64,
        )?;
        counter(
            e,
            "tern_connections_accepted",
            "Client connections accepted",
            get(&m.connections_accepted),
        )?;
        counters(
            e,
            "tern_connections_refused",
            "Connections or logins refused, by reason",
            "reason",
            &[
                ("max_connections", get(&m.connections_refused_limit)),
                ("login", get(&m.logins_refused)),
                ("unauthenticated_budget", get(&m.connects_over_budget)),
                ("tls_handshake", get(&m.tls_handshake_failed)),
                ("websocket_handshake", get(&m.ws_handshake_failed)),
                ("session_room", get(&m.sessions_refused)),
            ],
        )?;
        gauge(
            e,
            "tern_sessions",
            "Sessions: connected, and persistent ones whose client is away",
            s.sessions as f64,
        )?;
        gauge(
            e,
            "tern_sessions_connected",
            "Sessions with a live connection",
            s.clients_connected as f64,
        )?;
        counter(
            e,
            "tern_sessions_expired",
            "Sessions ended by their expiry",
            get(&m.sessions_expired),
        )?;
        counter(
            e,
            "tern_sessions_evicted",
            "Offline anonymous sessions expired early to make room",
            get(&m.sessions_evicted),
        )?;
        counter(
            e,
            "tern_takeovers",
            "Connections taken over by a new one with the same client id",
            get(&m.takeovers),
        )?;
        counter(
            e,
            "tern_protocol_errors",
            "Connections closed for a protocol violation",
            get(&m.protocol_errors),
        )?;
        // Messages.
        let qos = ["0", "1", "2"];
        let by_qos = |a: &[AtomicU64; 3]| -> Vec<(&str, u64)> {
            qos.iter().zip(a).map(|(q, c)| (*q, get(c))).collect()
        };
        counters(
            e,
            "tern_messages_received",
            "PUBLISH packets received from clients, by QoS",
            "qos",
            &by_qos(&m.received_by_qos),
        )?;
        counters(
            e,
            "tern_messages_sent",
            "PUBLISH packets handed to connections, by QoS",
            "qos",
            &by_qos(&m.sent_by_qos),
        )?;
        counter(
            e,
            "tern_received_bytes",
            "MQTT bytes read from clients",
            get(&m.bytes_received),
        )?;
        counter(
            e,
            "tern_sent_bytes",
            "MQTT bytes written to clients",
            get(&m.bytes_sent),
        )?;
        counter(
            e,
            "tern_messages_no_subscribers",
            "Messages published where nobody subscribed",
            get(&m.messages_no_subscribers),
        )?;
        counters(
            e,
            "tern_messages_dropped",
            "Messages or deliveries not made, by reason",
            "reason",
            &[
                ("session_queue_full", get(&m.dropped_queue_full)),
                ("qos0_slow_subscriber", get(&m.dropped_qos0_slow)),
                ("too_large_for_receiver", get(&m.dropped_too_large)),
                ("connection_closing", get(&m.dropped_outbox_full)),
                ("expired", get(&m.messages_expired)),
                ("acl_publish", get(&m.acl_denied_publish)),
                ("acl_deliver", get(&m.acl_denied_deliver)),
                ("bridge_loop", get(&m.bridge_loops)),
                ("sys_publish", get(&m.sys_publish_denied)),
                ("unreadable_on_disk", get(&m.messages_unreadable)),
                ("disk_budget", get(&m.store_refused)),
            ],
        )?;
        counter(
            e,
            "tern_publishers_held",
            "Publisher acknowledgements held back by a full subscriber queue",
            get(&m.acks_held),
        )?;
        counter(
            e,
            "tern_wills_published",
            "Will messages published",
            get(&m.wills_published),
        )?;
        gauge(
            e,
            "tern_inflight",
            "QoS 1/2 deliveries sent and not yet acknowledged",
            s.inflight as f64,
        )?;
        gauge(
            e,
            "tern_queued",
            "Deliveries waiting in sessions' queues (in memory or on disk)",
            s.queued as f64,
        )?;
        gauge(
            e,
            "tern_subscriptions",
            "Subscriptions",
            s.subscriptions as f64,
        )?;
        counter(
            e,
            "tern_subscriptions_denied",
            "Subscriptions refused or removed by the ACL",
            get(&m.acl_denied_subscribe),
        )?;
        gauge(
            e,
            "tern_retained_messages",
            "Retained messages",
            s.retained_messages as f64,
        )?;
        gauge(
            e,
            "tern_retained_bytes",
            "Bytes of retained messages",
            s.retained_bytes as f64,
        )?;
        counter(
            e,
            "tern_retained_refused",
            "Retained messages not kept for the retained caps",
            get(&m.retained_refused),
        )?;
        // The store.
        counter(
            e,
            "tern_store_written_bytes",
            "Bytes the store appended to its log",
            get(&m.store_bytes_written),
        )?;
        counter(
            e,
            "tern_store_syncs",
            "fsyncs of the store (one per group commit)",
            get(&m.store_syncs),
        )?;
        let (sum, count, buckets) = m.fsync_seconds.read();
        let mut h = e.encode_descriptor(
            "tern_store_fsync_seconds",
            "How long the store's fsyncs took",
            None,
            MetricType::Histogram,
        )?;
        h.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        self.encode_queues(e)?;
        self.encode_bridges(e)?;
        if let Some(p) = &self.process {
            p.encode(e)?;
        }
        Ok(())
    }
}

impl Scrape {
    fn encode_queues(&self, e: &mut DescriptorEncoder) -> Result {
        let qs = &self.snapshot.queues;
        let g = |f: fn(&crate::router::QueueInfo) -> f64| -> Vec<(&str, f64)> {
            qs.iter().map(|q| (q.name.as_str(), f(q))).collect()
        };
        let c = |f: fn(&crate::queue::Counters) -> u64| -> Vec<(&str, u64)> {
            qs.iter()
                .map(|q| (q.name.as_str(), f(&q.counters)))
                .collect()
        };
        gauges(
            e,
            "tern_queue_depth",
            "Work-queue messages waiting (ready or for a retry)",
            "queue",
            &g(|q| q.depth as f64),
        )?;
        gauges(
            e,
            "tern_queue_in_flight",
            "Work-queue messages delivered and not yet acknowledged",
            "queue",
            &g(|q| q.in_flight as f64),
        )?;
        gauges(
            e,
            "tern_queue_bytes",
            "Bytes a work queue holds",
            "queue",
            &g(|q| q.bytes as f64),
        )?;
        gauges(
            e,
            "tern_queue_consumers",
            "Consumers attached to a work queue",
            "queue",
            &g(|q| q.consumers as f64),
        )?;
        gauges(
            e,
            "tern_queue_oldest_age_seconds",
            "Age of a work queue's oldest waiting message (consumer lag)",
            "queue",
            &g(|q| q.oldest_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0)),
        )?;
        for (name, help, f) in [
            (
                "tern_queue_enqueued",
                "Messages a work queue took",
                (|c: &crate::queue::Counters| c.enqueued) as fn(&crate::queue::Counters) -> u64,
            ),
            ("tern_queue_acked", "Messages acknowledged", |c| c.acked),
            ("tern_queue_nacked", "Deliveries refused (nack)", |c| {
                c.nacked
            }),
            ("tern_queue_redelivered", "Messages delivered again", |c| {
                c.redelivered
            }),
            (
                "tern_queue_dead_lettered",
                "Messages moved to the dead-letter queue",
                |c| c.dead_lettered,
            ),
            ("tern_queue_expired", "Messages past their TTL", |c| {
                c.expired
            }),
            (
                "tern_queue_dropped",
                "Messages dropped (drop-head overflow, or a bridge's QoS 0 while its link is down)",
                |c| c.dropped,
            ),
            (
                "tern_queue_duplicates",
                "Publishes taken once for their message-id (dedup)",
                |c| c.duplicates,
            ),
            (
                "tern_queue_refused",
                "Publishes refused for lack of room",
                |c| c.refused,
            ),
        ] {
            counters(e, name, help, "queue", &c(f))?;
        }
        Ok(())
    }

    fn encode_bridges(&self, e: &mut DescriptorEncoder) -> Result {
        let bs = &self.bridges;
        let rows = |f: fn(&BridgeStatus) -> u64| -> Vec<(&str, u64)> {
            bs.iter().map(|b| (b.name.as_str(), f(b))).collect()
        };
        let buffered = |b: &BridgeStatus| {
            self.snapshot
                .queues
                .iter()
                .find(|q| q.name == b.queue)
                .map_or(0.0, |q| (q.depth + q.in_flight) as f64)
        };
        gauges(
            e,
            "tern_bridge_connected",
            "1 when the bridge's link to its remote is up",
            "bridge",
            &bs.iter()
                .map(|b| (b.name.as_str(), f64::from(u8::from(b.is_connected()))))
                .collect::<Vec<_>>(),
        )?;
        gauges(
            e,
            "tern_bridge_buffered",
            "Messages in a bridge's buffer (waiting and in flight)",
            "bridge",
            &bs.iter()
                .map(|b| (b.name.as_str(), buffered(b)))
                .collect::<Vec<_>>(),
        )?;
        counters(
            e,
            "tern_bridge_forwarded",
            "Messages the remote acknowledged",
            "bridge",
            &rows(|b| get(&b.forwarded)),
        )?;
        counters(
            e,
            "tern_bridge_received",
            "Messages brought in from the remote",
            "bridge",
            &rows(|b| get(&b.received)),
        )?;
        counters(
            e,
            "tern_bridge_refused",
            "Refusals by the remote (retried, then dead-lettered)",
            "bridge",
            &rows(|b| get(&b.refused)),
        )?;
        counters(
            e,
            "tern_bridge_unmapped",
            "Messages from the remote that no incoming mapping takes",
            "bridge",
            &rows(|b| get(&b.unmapped)),
        )
    }
}
