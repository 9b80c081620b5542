//! Caps on what a peer controls, and the offline-queue policy: CONNECT timeout,
//! max_connections, max_sessions, max_subscriptions_per_client, max_queued_messages
//! and max_queued_bytes for offline sessions (drops counted), queue_qos0_offline, and
//! wills published on graceful shutdown.

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;
use tern::metrics::Metrics;
use tern::protocol::{Packet, ProtocolVersion, PubResponse, QoS, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

async fn suback(c: &mut RawClient) -> Vec<ReasonCode> {
    match c.recv().await {
        Some(Packet::SubAck(s)) => s.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Publish with QoS 1 and wait for the PUBACK (the message is routed by then).
async fn publish_acked(c: &mut RawClient, topic: &str, pid: u16, payload: &[u8]) {
    c.send(&publish_packet(topic, QoS::AtLeastOnce, pid, payload))
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id.get(), pid),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// A persistent 3.1.1 session subscribed to `filter`, then disconnected.
async fn offline_session(addr: std::net::SocketAddr, id: &str, filter: &str, qos: QoS) {
    let (mut c, _) = raw_connected(addr, V311, id, false).await;
    c.send(&subscribe_packet(1, filter, qos)).await;
    assert_eq!(suback(&mut c).await, vec![ReasonCode(qos.as_u8())]);
    c.send(&Packet::Disconnect(Default::default())).await;
    assert!(c.until_closed().await.is_empty());
}

/// Resume `id` and collect PUBLISH payloads until `quiet` passes with nothing new,
/// acknowledging QoS 1 ones.
async fn resume_and_drain(
    addr: std::net::SocketAddr,
    id: &str,
    quiet: Duration,
) -> (RawClient, Vec<Bytes>) {
    let (mut c, ack) = raw_connected(addr, V311, id, false).await;
    assert!(ack.session_present, "the session was kept");
    let mut got = Vec::new();
    for _ in 0..10_000 {
        match c.recv_within(quiet).await {
            Ok(Some(Packet::Publish(p))) => {
                if let Some(pid) = p.packet_id {
                    c.send(&Packet::PubAck(PubResponse::success(pid))).await;
                }
                got.push(p.payload);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(()) => break,
        }
    }
    (c, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_closed_after_connect_timeout() {
    let mut cfg = test_config();
    cfg.limits.connect_timeout = Duration::from_millis(500);
    let (_b, addr) = start(cfg).await;
    let started = std::time::Instant::now();
    let mut silent = RawClient::connect(addr, V311).await;
    // Half a CONNECT counts as no CONNECT.
    let mut partial = RawClient::connect(addr, V311).await;
    partial.send_bytes(&hex("10 10 00 04 4d 51")).await;
    assert!(silent.until_closed().await.is_empty(), "no CONNACK");
    assert!(partial.until_closed().await.is_empty(), "no CONNACK");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed() {
    let mut cfg = test_config();
    cfg.limits.max_connections = 2;
    let (b, addr) = start(cfg).await;
    let (_a, _) = raw_connected(addr, V5, "a", true).await;
    let (_b2, _) = raw_connected(addr, V5, "b", true).await;
    let mut third = RawClient::connect(addr, V5).await;
    third.send(&connect_packet(V5, "c", true)).await;
    assert!(third.until_closed().await.is_empty(), "closed, no CONNACK");
    assert_eq!(Metrics::get(&b.metrics().connections_refused_limit), 1);
    // A slot frees when a connection ends.
    drop(_a);
    let mut ok = false;
    for _ in 0..50 {
        let mut c = RawClient::connect(addr, V5).await;
        c.send(&connect_packet(V5, "d", true)).await;
        if let Ok(Some(Packet::ConnAck(_))) = c.recv_within(Duration::from_secs(1)).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a freed slot is usable again");
}

/// `max_sessions` caps persistent sessions: clean clients are never refused for
/// it, and a full table makes room by expiring the oldest offline anonymous
/// session, while a session that is online cannot be pushed out (0x97 / 3.1.1 0x03).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_max_sessions_get_quota_exceeded() {
    let mut cfg = test_config();
    cfg.limits.max_sessions = 2;
    let (b, addr) = start(cfg).await;
    offline_session(addr, "kept1", "x", QoS::AtLeastOnce).await;
    let (_online, _) = raw_connected(addr, V311, "online", false).await;
    // Clean sessions take no persistent room.
    let mut clean = Vec::new();
    for i in 0..5 {
        clean.push(raw_connected(addr, V5, &format!("clean{i}"), true).await.0);
    }
    // A third persistent session expires the offline one ("kept1").
    let (_third, _) = raw_connected(addr, V311, "third", false).await;
    assert_eq!(Metrics::get(&b.metrics().sessions_evicted), 1);
    let (_k, ack) = raw_connected(addr, V5, "kept1", true).await;
    assert!(!ack.session_present, "kept1 was expired for room");
    drop(_k);
    // Both persistent sessions are online now: nothing can be expired.
    let mut v3 = RawClient::connect(addr, V311).await;
    v3.send(&connect_packet(V311, "fourth", false)).await;
    match v3.recv().await {
        // 3.1.1 has no quota code: 0x03 "server unavailable".
        Some(Packet::ConnAck(a)) => assert!(a.reason_code.is_error(), "{a:?}"),
        other => panic!("expected a refusing CONNACK, got {other:?}"),
    }
    // An existing session can still reconnect.
    let (_o, ack) = raw_connected(addr, V311, "online", false).await;
    assert!(ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_over_the_cap_get_quota_exceeded() {
    let mut cfg = test_config();
    cfg.limits.max_subscriptions_per_client = 2;
    let (_b, addr) = start(cfg).await;
    let (mut c, _) = raw_connected(addr, V5, "s", true).await;
    for (i, f) in ["a", "b"].iter().enumerate() {
        c.send(&subscribe_packet(i as u16 + 1, f, QoS::AtMostOnce))
            .await;
        assert_eq!(suback(&mut c).await, vec![ReasonCode::GRANTED_QOS_0]);
    }
    c.send(&subscribe_packet(3, "c", QoS::AtMostOnce)).await;
    assert_eq!(suback(&mut c).await, vec![ReasonCode::QUOTA_EXCEEDED]);
    // Replacing an existing subscription is not a new one.
    c.send(&subscribe_packet(4, "a", QoS::AtLeastOnce)).await;
    assert_eq!(suback(&mut c).await, vec![ReasonCode::GRANTED_QOS_1]);
    let (mut v3, _) = raw_connected(addr, V311, "s3", true).await;
    for (i, f) in ["a", "b", "c"].iter().enumerate() {
        v3.send(&subscribe_packet(i as u16 + 1, f, QoS::AtMostOnce))
            .await;
        let want = if i < 2 { 0x00 } else { 0x80 };
        assert_eq!(suback(&mut v3).await, vec![ReasonCode(want)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_capped_by_count_and_drops_counted() {
    let mut cfg = test_config();
    cfg.limits.max_queued_messages = 5;
    let (b, addr) = start(cfg).await;
    offline_session(addr, "q", "t", QoS::AtLeastOnce).await;
    let (mut p, _) = raw_connected(addr, V311, "pub", true).await;
    for i in 1..=12u16 {
        publish_acked(&mut p, "t", i, format!("m{i}").as_bytes()).await;
    }
    let (_c, got) = resume_and_drain(addr, "q", Duration::from_millis(500)).await;
    let want: Vec<Bytes> = (1..=5).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(got, want, "the first five, in order");
    assert_eq!(Metrics::get(&b.metrics().dropped_queue_full), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_capped_by_bytes() {
    let mut cfg = test_config();
    // Each queued message costs its topic + payload + the message's own size.
    cfg.limits.max_queued_bytes = 3 * (1 + 1000 + tern::session::Message::OVERHEAD);
    let (b, addr) = start(cfg).await;
    offline_session(addr, "qb", "t", QoS::AtLeastOnce).await;
    let (mut p, _) = raw_connected(addr, V311, "pub", true).await;
    for i in 1..=6u16 {
        publish_acked(&mut p, "t", i, &[i as u8; 1000]).await;
    }
    let (_c, got) = resume_and_drain(addr, "qb", Duration::from_millis(500)).await;
    assert_eq!(got.len(), 3, "three 1 KB messages fit");
    assert_eq!(got[0][0], 1);
    assert_eq!(Metrics::get(&b.metrics().dropped_queue_full), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_queued_for_offline_sessions_only_when_configured() {
    for queue_qos0 in [false, true] {
        let mut cfg = test_config();
        cfg.mqtt.queue_qos0_offline = queue_qos0;
        let (_b, addr) = start(cfg).await;
        offline_session(addr, "z", "t", QoS::AtLeastOnce).await;
        let (mut p, _) = raw_connected(addr, V311, "pub", true).await;
        p.send(&publish_packet("t", QoS::AtMostOnce, 0, b"zero"))
            .await;
        // A QoS 1 publish behind it: once acked, the QoS 0 one was routed too.
        publish_acked(&mut p, "t", 1, b"one").await;
        let (_c, got) = resume_and_drain(addr, "z", Duration::from_millis(500)).await;
        let want: Vec<Bytes> = if queue_qos0 {
            vec![Bytes::from("zero"), Bytes::from("one")]
        } else {
            vec![Bytes::from("one")]
        };
        assert_eq!(got, want, "queue_qos0_offline = {queue_qos0}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_publishes_wills_including_delayed_ones() {
    let (b, addr) = start_default().await;
    let metrics = b.metrics();
    for (id, delay) in [("w0", 0u32), ("w60", 60)] {
        let mut c = RawClient::connect(addr, V5).await;
        let mut connect = match connect_packet(V5, id, true) {
            Packet::Connect(c) => c,
            _ => unreachable!(),
        };
        connect.will = Some(tern::protocol::LastWill {
            topic: format!("wills/{id}"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: delay,
            properties: Default::default(),
        });
        connect.properties.session_expiry_interval = Some(300);
        c.send(&Packet::Connect(connect)).await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
        // Keep the connection open through the shutdown.
        std::mem::forget(c);
    }
    b.shutdown().await;
    assert_eq!(
        Metrics::get(&metrics.wills_published),
        2,
        "both wills are published when the broker stops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_capped_by_count() {
    let mut cfg = test_config();
    cfg.limits.max_retained_messages = 2;
    let (b, addr) = start(cfg).await;
    let (mut p, _) = raw_connected(addr, V311, "rpub", true).await;
    for i in 1..=3u16 {
        let mut m = match publish_packet(&format!("rc/{i}"), QoS::AtLeastOnce, i, b"v") {
            Packet::Publish(m) => m,
            _ => unreachable!(),
        };
        m.retain = true;
        p.send(&Packet::Publish(m)).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    assert_eq!(Metrics::get(&b.metrics().retained_refused), 1);
    let (mut s, _) = raw_connected(addr, V311, "rsub", true).await;
    s.send(&subscribe_packet(1, "rc/#", QoS::AtMostOnce)).await;
    assert_eq!(suback(&mut s).await, vec![ReasonCode::GRANTED_QOS_0]);
    let mut topics = Vec::new();
    while let Ok(Some(Packet::Publish(m))) = s.recv_within(Duration::from_millis(300)).await {
        topics.push(m.topic);
    }
    topics.sort();
    assert_eq!(topics, vec!["rc/1", "rc/2"], "the third was not retained");
}
