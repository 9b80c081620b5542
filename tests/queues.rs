//! Work queues over real sockets: competing consumers on `$queue/<name>`, acks,
//! nacks with counted redelivery, dead-lettering, a consumer that dies, topic
//! bindings from the config and from `$queue/<name>/<filter>`, 3.1.1 consumers.
//! Raw MQTT clients (tests/common), so reason codes and user properties are seen
//! as sent.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tern::config::QueueConfig;
use tern::protocol::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn queue(name: &str, topics: &[&str]) -> QueueConfig {
    let mut q = QueueConfig::named(name);
    q.topics = topics.iter().map(|t| t.to_string()).collect();
    q.retry_delay = Duration::from_millis(50);
    q.retry_delay_max = Duration::from_millis(200);
    q
}

async fn broker(queues: Vec<QueueConfig>) -> (tern::broker::Broker, SocketAddr) {
    let mut c = test_config();
    c.queues = queues;
    start(c).await
}

/// A v5 consumer of `$queue/<name>` (clean session, Receive Maximum `window`).
async fn consumer(addr: SocketAddr, id: &str, name: &str, window: u16) -> RawClient {
    let mut c = RawClient::connect(addr, V5).await;
    let Packet::Connect(mut connect) = connect_packet(V5, id, true) else {
        unreachable!()
    };
    connect.properties.receive_maximum = Some(window);
    c.send(&Packet::Connect(connect)).await;
    assert!(
        matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS)
    );
    c.subscribe(1, &format!("$queue/{name}"), QoS::AtLeastOnce)
        .await;
    c
}

async fn publisher(addr: SocketAddr, id: &str) -> RawClient {
    raw_connected(addr, V5, id, true).await.0
}

/// Publish at QoS 1 and return the PUBACK's reason code.
async fn publish(p: &mut RawClient, topic: &str, pid: u16, payload: &[u8]) -> ReasonCode {
    p.send(&publish_packet(topic, QoS::AtLeastOnce, pid, payload))
        .await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => a.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

struct Got {
    topic: String,
    payload: Vec<u8>,
    packet_id: PacketId,
    props: HashMap<String, String>,
}

/// The next PUBLISH within `d`, or None.
async fn next(c: &mut RawClient, d: Duration) -> Option<Got> {
    match c.recv_within(d).await {
        Ok(Some(Packet::Publish(p))) => Some(Got {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            packet_id: p.packet_id.expect("QoS 1 or 2"),
            props: p
                .properties
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        Err(()) => None,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

async fn ack(c: &mut RawClient, pid: PacketId, code: ReasonCode) {
    c.send(&Packet::PubAck(PubResponse {
        packet_id: pid,
        reason_code: code,
        properties: Default::default(),
    }))
    .await;
}

#[tokio::test]
async fn each_message_is_processed_once_across_competing_consumers() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    let mut a = consumer(addr, "worker-a", "jobs", 4).await;
    let mut b = consumer(addr, "worker-b", "jobs", 4).await;
    let mut p = publisher(addr, "producer").await;
    for i in 0..40u16 {
        assert_eq!(
            publish(&mut p, &format!("jobs/{i}"), i + 1, b"work").await,
            ReasonCode::SUCCESS
        );
    }
    let mut seen = HashMap::new();
    let mut per_worker = [0usize; 2];
    for _ in 0..200 {
        let mut progressed = false;
        for (w, c) in [&mut a, &mut b].into_iter().enumerate() {
            if let Some(g) = next(c, Duration::from_millis(100)).await {
                progressed = true;
                assert_eq!(
                    g.props.get("tern-delivery-count").map(String::as_str),
                    Some("1")
                );
                let id = g.props.get("tern-message-id").cloned().expect("message id");
                assert!(
                    seen.insert(id, g.topic.clone()).is_none(),
                    "delivered twice: {}",
                    g.topic
                );
                per_worker[w] += 1;
                ack(c, g.packet_id, ReasonCode::SUCCESS).await;
            }
        }
        if !progressed && seen.len() == 40 {
            break;
        }
    }
    assert_eq!(seen.len(), 40, "every message once");
    assert!(
        per_worker[0] > 0 && per_worker[1] > 0,
        "both workers got work: {per_worker:?}"
    );
}

#[tokio::test]
async fn a_consumer_holds_at_most_its_receive_maximum_unacknowledged() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    let mut p = publisher(addr, "producer").await;
    for i in 0..10u16 {
        publish(&mut p, "jobs/x", i + 1, b"w").await;
    }
    let mut c = consumer(addr, "slow", "jobs", 3).await;
    let mut held = Vec::new();
    while let Some(g) = next(&mut c, Duration::from_millis(300)).await {
        held.push(g);
    }
    assert_eq!(held.len(), 3, "prefetch is capped by Receive Maximum 3");
    ack(&mut c, held[0].packet_id, ReasonCode::SUCCESS).await;
    let more = next(&mut c, Duration::from_secs(2)).await;
    assert!(more.is_some(), "an ack makes room for the next");
    assert!(next(&mut c, Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn a_nack_redelivers_with_a_higher_count_and_a_poison_message_ends_in_the_dlq() {
    let mut q = queue("jobs", &["jobs/#"]);
    q.max_deliveries = 3;
    let (_b, addr) = broker(vec![q]).await;
    let mut dlq = consumer(addr, "dlq-reader", "jobs-dlq", 10).await;
    let mut w = consumer(addr, "worker", "jobs", 10).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/poison", 1, b"bad").await;
    let mut first_id = None;
    for n in 1..=3 {
        let g = next(&mut w, Duration::from_secs(3))
            .await
            .expect("delivered");
        assert_eq!(g.payload, b"bad");
        assert_eq!(
            g.props.get("tern-delivery-count"),
            Some(&n.to_string()),
            "delivery {n}"
        );
        let id = g.props.get("tern-message-id").cloned();
        first_id.get_or_insert(id.clone());
        assert_eq!(
            first_id.as_ref(),
            Some(&id),
            "the id stays across redeliveries"
        );
        // 0x80 Unspecified error: a nack, retried.
        ack(&mut w, g.packet_id, ReasonCode::UNSPECIFIED_ERROR).await;
    }
    assert!(
        next(&mut w, Duration::from_millis(500)).await.is_none(),
        "not a fourth time"
    );
    let d = next(&mut dlq, Duration::from_secs(3))
        .await
        .expect("dead-lettered");
    assert_eq!(d.topic, "jobs/poison");
    assert_eq!(d.payload, b"bad");
    assert_eq!(
        d.props.get("tern-dead-letter-reason").map(String::as_str),
        Some("max-deliveries")
    );
    assert_eq!(d.props.get("tern-queue").map(String::as_str), Some("jobs"));
    assert!(d.props.contains_key("tern-first-enqueued"));
}

#[tokio::test]
async fn a_reject_code_dead_letters_at_once() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    let mut dlq = consumer(addr, "dlq-reader", "jobs-dlq", 10).await;
    let mut w = consumer(addr, "worker", "jobs", 10).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/x", 1, b"not json").await;
    let g = next(&mut w, Duration::from_secs(3))
        .await
        .expect("delivered");
    ack(&mut w, g.packet_id, ReasonCode(0x99)).await;
    let d = next(&mut dlq, Duration::from_secs(3))
        .await
        .expect("dead-lettered");
    assert_eq!(
        d.props.get("tern-dead-letter-reason").map(String::as_str),
        Some("rejected")
    );
    assert!(
        next(&mut w, Duration::from_millis(300)).await.is_none(),
        "no retry"
    );
}

#[tokio::test]
async fn a_consumer_killed_mid_processing_hands_its_messages_to_another() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    let mut p = publisher(addr, "producer").await;
    for i in 0..3u16 {
        publish(&mut p, &format!("jobs/{i}"), i + 1, b"w").await;
    }
    let mut doomed = consumer(addr, "doomed", "jobs", 10).await;
    let mut taken = Vec::new();
    while let Some(g) = next(&mut doomed, Duration::from_millis(300)).await {
        taken.push(g.topic);
    }
    assert_eq!(taken.len(), 3);
    // Killed: the socket goes away without DISCONNECT.
    drop(doomed);
    let mut heir = consumer(addr, "heir", "jobs", 10).await;
    let mut got = Vec::new();
    while let Some(g) = next(&mut heir, Duration::from_secs(1)).await {
        assert_eq!(
            g.props.get("tern-delivery-count").map(String::as_str),
            Some("2")
        );
        got.push(g.topic);
        ack(&mut heir, g.packet_id, ReasonCode::SUCCESS).await;
    }
    assert_eq!(got, taken, "the same messages, in order");
}

#[tokio::test]
async fn a_queue_created_by_subscribing_with_a_filter_collects_its_topics() {
    let (_b, addr) = broker(vec![]).await;
    let mut c = RawClient::connect(addr, V5).await;
    c.send(&connect_packet(V5, "emqx-style", true)).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    c.subscribe(1, "$queue/readings/sensors/+/temp", QoS::AtLeastOnce)
        .await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "sensors/7/temp", 1, b"21.5").await;
    let g = next(&mut c, Duration::from_secs(3))
        .await
        .expect("delivered from the queue");
    assert_eq!(g.topic, "sensors/7/temp");
    assert_eq!(
        g.props.get("tern-delivery-count").map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn a_3_1_1_consumer_acks_with_puback_and_its_disconnect_is_its_nack() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    let (mut old, _) = raw_connected(addr, ProtocolVersion::V311, "old-worker", true).await;
    old.subscribe(1, "$queue/jobs", QoS::AtLeastOnce).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/a", 1, b"a").await;
    publish(&mut p, "jobs/b", 2, b"b").await;
    let a = next(&mut old, Duration::from_secs(3)).await.expect("a");
    let b = next(&mut old, Duration::from_secs(3)).await.expect("b");
    assert_eq!((a.topic.as_str(), b.topic.as_str()), ("jobs/a", "jobs/b"));
    ack(&mut old, a.packet_id, ReasonCode::SUCCESS).await;
    // Give the ack time to arrive before the connection goes.
    old.send(&Packet::PingReq).await;
    assert!(matches!(old.recv().await, Some(Packet::PingResp)));
    drop(old);
    let (mut next_worker, _) = raw_connected(addr, ProtocolVersion::V311, "new-worker", true).await;
    next_worker
        .subscribe(1, "$queue/jobs", QoS::AtLeastOnce)
        .await;
    let again = next(&mut next_worker, Duration::from_secs(3))
        .await
        .expect("b again");
    assert_eq!(
        again.topic, "jobs/b",
        "only the unacknowledged one comes back"
    );
    assert!(next(&mut next_worker, Duration::from_millis(300))
        .await
        .is_none());
}

/// A config file with one queue, for the spawned broker.
fn queue_config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("queues.toml");
    std::fs::write(
        &p,
        "[[queues]]\nname = \"jobs\"\ntopics = [\"jobs/#\"]\nmax_deliveries = 3\n\
         retry_delay = \"50ms\"\nretry_delay_max = \"100ms\"\n",
    )
    .unwrap();
    p
}

#[tokio::test]
async fn kill_9_keeps_the_backlog_the_in_flight_counts_and_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = queue_config_file(dir.path());
    let cfg = cfg.to_str().unwrap();
    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let mut p = publisher(b.addr, "producer").await;
    for i in 0..6u16 {
        // Acknowledged: durable from here on.
        assert_eq!(
            publish(&mut p, &format!("jobs/{i}"), i + 1, b"w").await,
            ReasonCode::SUCCESS
        );
    }
    let mut w = consumer(b.addr, "worker", "jobs", 10).await;
    let mut got = Vec::new();
    while let Some(g) = next(&mut w, Duration::from_millis(500)).await {
        got.push(g);
    }
    assert_eq!(got.len(), 6);
    // jobs/0 is processed; jobs/1 is rejected (dead-lettered); the rest are in
    // flight, unacknowledged, when the broker dies.
    ack(&mut w, got[0].packet_id, ReasonCode::SUCCESS).await;
    ack(&mut w, got[1].packet_id, ReasonCode(0x99)).await;
    w.send(&Packet::PingReq).await;
    assert!(matches!(w.recv().await, Some(Packet::PingResp)));
    // Let the acks reach the disk (group commit: a few milliseconds).
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(b); // SIGKILL

    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let mut dlq = consumer(b.addr, "dlq-reader", "jobs-dlq", 10).await;
    let d = next(&mut dlq, Duration::from_secs(3))
        .await
        .expect("the dead letter survived");
    assert_eq!(d.topic, "jobs/1");
    assert_eq!(
        d.props.get("tern-dead-letter-reason").map(String::as_str),
        Some("rejected")
    );
    let mut w = consumer(b.addr, "worker-2", "jobs", 10).await;
    let mut again = Vec::new();
    while let Some(g) = next(&mut w, Duration::from_millis(500)).await {
        assert_eq!(
            g.props.get("tern-delivery-count").map(String::as_str),
            Some("2"),
            "{}: its first delivery was counted before the crash",
            g.topic
        );
        again.push(g.topic.clone());
        ack(&mut w, g.packet_id, ReasonCode::SUCCESS).await;
    }
    assert_eq!(
        again,
        vec!["jobs/2", "jobs/3", "jobs/4", "jobs/5"],
        "nothing lost, nothing done twice"
    );
}

#[tokio::test]
async fn a_persistent_consumer_keeps_consuming_across_a_restart_without_resubscribing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = queue_config_file(dir.path());
    let cfg = cfg.to_str().unwrap();
    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let (mut w, _) = raw_connected(b.addr, ProtocolVersion::V311, "steady", false).await;
    w.subscribe(1, "$queue/jobs", QoS::AtLeastOnce).await;
    w.send(&Packet::Disconnect(Default::default())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(b); // SIGKILL

    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let mut p = publisher(b.addr, "producer").await;
    publish(&mut p, "jobs/after-restart", 1, b"w").await;
    let (mut w, ack_) = raw_connected(b.addr, ProtocolVersion::V311, "steady", false).await;
    assert!(ack_.session_present);
    let g = next(&mut w, Duration::from_secs(3))
        .await
        .expect("its queue subscription came back with its session");
    assert_eq!(g.topic, "jobs/after-restart");
}

#[tokio::test]
async fn past_the_ack_timeout_a_message_goes_to_another_consumer() {
    let mut q = queue("jobs", &["jobs/#"]);
    q.ack_timeout = Some(Duration::from_millis(300));
    let (_b, addr) = broker(vec![q]).await;
    let mut slow = consumer(addr, "slow", "jobs", 1).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/x", 1, b"w").await;
    let first = next(&mut slow, Duration::from_secs(3))
        .await
        .expect("delivered");
    let mut fast = consumer(addr, "fast", "jobs", 1).await;
    let g = next(&mut fast, Duration::from_secs(3))
        .await
        .expect("handed on after the ack timeout");
    assert_eq!(g.topic, "jobs/x");
    assert_eq!(
        g.props.get("tern-delivery-count").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        g.props.get("tern-message-id"),
        first.props.get("tern-message-id")
    );
    // The slow consumer's late ack does not count; the fast one's does.
    ack(&mut slow, first.packet_id, ReasonCode::SUCCESS).await;
    ack(&mut fast, g.packet_id, ReasonCode::SUCCESS).await;
    assert!(next(&mut fast, Duration::from_millis(500)).await.is_none());
    assert!(next(&mut slow, Duration::from_millis(100)).await.is_none());
}

/// Publish at QoS 1 with user properties; the PUBACK's code.
async fn publish_with(
    p: &mut RawClient,
    topic: &str,
    pid: u16,
    payload: &[u8],
    props: &[(&str, &str)],
) -> ReasonCode {
    let Packet::Publish(mut m) = publish_packet(topic, QoS::AtLeastOnce, pid, payload) else {
        unreachable!()
    };
    m.properties.user_properties = props.iter().copied().collect();
    p.send(&Packet::Publish(m)).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => a.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn an_ordering_key_keeps_each_devices_order_under_four_consumers() {
    let mut q = queue("jobs", &["jobs/#"]);
    q.ordering_key = Some("user-property:device".into());
    let (_b, addr) = broker(vec![q]).await;
    let mut p = publisher(addr, "producer").await;
    let devices = ["pump", "fan", "valve"];
    for i in 0..30u16 {
        let d = devices[usize::from(i) % 3];
        let payload = format!("{d}:{i}");
        publish_with(
            &mut p,
            "jobs/x",
            i + 1,
            payload.as_bytes(),
            &[("device", d)],
        )
        .await;
    }
    let mut workers = Vec::new();
    for w in 0..4 {
        workers.push(consumer(addr, &format!("w{w}"), "jobs", 4).await);
    }
    let mut held: HashMap<String, (usize, PacketId)> = HashMap::new();
    let mut done: HashMap<String, Vec<u16>> = HashMap::new();
    let mut total = 0;
    for _ in 0..400 {
        for (w, c) in workers.iter_mut().enumerate() {
            // Acknowledge what this worker held since its last turn, then take more.
            let mine: Vec<String> = held
                .iter()
                .filter(|(_, (o, _))| *o == w)
                .map(|(d, _)| d.clone())
                .collect();
            for d in mine {
                if let Some((_, pid)) = held.remove(&d) {
                    ack(c, pid, ReasonCode::SUCCESS).await;
                }
            }
            while let Some(g) = next(c, Duration::from_millis(20)).await {
                let text = String::from_utf8(g.payload.clone()).unwrap();
                let (d, seq) = text.split_once(':').unwrap();
                assert!(
                    !held.contains_key(d),
                    "two messages of {d} in flight at once"
                );
                done.entry(d.to_string())
                    .or_default()
                    .push(seq.parse().unwrap());
                held.insert(d.to_string(), (w, g.packet_id));
                total += 1;
            }
        }
        if total == 30 && held.is_empty() {
            break;
        }
    }
    assert_eq!(total, 30, "every message delivered once");
    for (d, seqs) in &done {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, &sorted, "{d} in publish order");
        assert_eq!(seqs.len(), 10);
    }
}

#[tokio::test]
async fn a_repeated_message_id_is_acknowledged_and_taken_once() {
    let mut q = queue("jobs", &["jobs/#"]);
    q.dedup_window = Some(Duration::from_secs(60));
    let (_b, addr) = broker(vec![q]).await;
    let mut p = publisher(addr, "producer").await;
    for pid in 1..=3 {
        // The publisher retries the same message (e.g. after a lost PUBACK).
        assert_eq!(
            publish_with(
                &mut p,
                "jobs/x",
                pid,
                b"once",
                &[("message-id", "order-42")]
            )
            .await,
            ReasonCode::SUCCESS
        );
    }
    publish_with(&mut p, "jobs/x", 4, b"other", &[("message-id", "order-43")]).await;
    let mut w = consumer(addr, "w", "jobs", 10).await;
    let mut got = Vec::new();
    while let Some(g) = next(&mut w, Duration::from_millis(500)).await {
        got.push(g.payload);
    }
    assert_eq!(got, vec![b"once".to_vec(), b"other".to_vec()]);
}

#[tokio::test]
async fn drop_head_and_dead_letter_overflow_keep_the_newest_and_count() {
    for (overflow, to_dlq) in [("drop-head", false), ("dead-letter", true)] {
        let mut q = queue("jobs", &["jobs/#"]);
        q.max_length = 3;
        q.overflow = overflow.into();
        let (_b, addr) = broker(vec![q]).await;
        let mut p = publisher(addr, "producer").await;
        for i in 0..5u16 {
            publish(&mut p, &format!("jobs/{i}"), i + 1, b"w").await;
        }
        let mut w = consumer(addr, "w", "jobs", 10).await;
        let mut got = Vec::new();
        while let Some(g) = next(&mut w, Duration::from_millis(300)).await {
            got.push(g.topic);
        }
        assert_eq!(
            got,
            vec!["jobs/2", "jobs/3", "jobs/4"],
            "{overflow}: the newest three"
        );
        let mut dlq = consumer(addr, "d", "jobs-dlq", 10).await;
        let mut dead = Vec::new();
        while let Some(g) = next(&mut dlq, Duration::from_millis(300)).await {
            assert_eq!(
                g.props.get("tern-dead-letter-reason").map(String::as_str),
                Some("overflow")
            );
            dead.push(g.topic);
        }
        let want: Vec<String> = if to_dlq {
            vec!["jobs/0".into(), "jobs/1".into()]
        } else {
            vec![]
        };
        assert_eq!(dead, want, "{overflow}");
    }
}

#[tokio::test]
async fn a_message_past_its_ttl_is_dead_lettered_not_delivered() {
    let mut q = queue("jobs", &["jobs/#"]);
    q.message_ttl = Some(Duration::from_millis(200));
    let (_b, addr) = broker(vec![q]).await;
    let mut dlq = consumer(addr, "d", "jobs-dlq", 10).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/stale", 1, b"w").await;
    let d = next(&mut dlq, Duration::from_secs(3))
        .await
        .expect("expired into the DLQ");
    assert_eq!(d.topic, "jobs/stale");
    assert_eq!(
        d.props.get("tern-dead-letter-reason").map(String::as_str),
        Some("expired")
    );
    let mut w = consumer(addr, "w", "jobs", 10).await;
    assert!(next(&mut w, Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn the_admin_endpoint_lists_peeks_purges_and_redrives() {
    use tern::admin::cli::{run, Endpoint, QueueOp};
    let mut c = test_config();
    let mut q = queue("jobs", &["jobs/#"]);
    q.max_deliveries = 1;
    c.queues = vec![q];
    c.admin.bind = Some("127.0.0.1:0".parse().unwrap());
    c.admin.token = Some("a-token-of-16-chars".into());
    let (b, addr) = start(c).await;
    let ep = Endpoint {
        tls: None,
        addr: b.admin_addr().expect("admin on"),
        token: Some("a-token-of-16-chars".into()),
    };
    let mut p = publisher(addr, "producer").await;
    for i in 0..3u16 {
        publish(
            &mut p,
            &format!("jobs/{i}"),
            i + 1,
            format!("job {i}").as_bytes(),
        )
        .await;
    }
    let list = run(&ep, QueueOp::List).await.expect("list");
    assert!(
        list.lines()
            .any(|l| l.starts_with("jobs ") && l.split_whitespace().nth(1) == Some("3")),
        "{list}"
    );
    assert!(list.contains("jobs-dlq"), "{list}");
    let peek = run(&ep, QueueOp::Peek("jobs".into(), 2))
        .await
        .expect("peek");
    assert!(
        peek.contains("\"job 0\"") && peek.contains("\"job 1\"") && !peek.contains("job 2"),
        "{peek}"
    );

    // A worker refuses all three: with max_deliveries 1 they are dead letters.
    let mut w = consumer(addr, "w", "jobs", 10).await;
    for _ in 0..3 {
        let g = next(&mut w, Duration::from_secs(3))
            .await
            .expect("delivered");
        ack(&mut w, g.packet_id, ReasonCode::UNSPECIFIED_ERROR).await;
    }
    w.send(&Packet::Disconnect(Default::default())).await;
    // Wait (bounded) until the broker saw the refusals and the worker leave.
    let mut stats = String::new();
    for _ in 0..100 {
        stats = run(&ep, QueueOp::Stats("jobs-dlq".into()))
            .await
            .expect("stats");
        let jobs = run(&ep, QueueOp::Stats("jobs".into()))
            .await
            .expect("stats");
        if stats.contains("\"depth\": 3") && jobs.contains("\"consumers\": 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stats.contains("\"depth\": 3"), "{stats}");
    // Redrive at 2 per second: all three back in "jobs", counts reset.
    let moved = run(
        &ep,
        QueueOp::Redrive {
            dlq: "jobs-dlq".into(),
            to: None,
            rate: Some(2),
        },
    )
    .await
    .expect("redrive");
    assert_eq!(moved, "moved 3 messages out of jobs-dlq");
    let stats = run(&ep, QueueOp::Stats("jobs".into()))
        .await
        .expect("stats");
    assert!(stats.contains("\"depth\": 3"), "{stats}");
    let purged = run(&ep, QueueOp::Purge("jobs".into()))
        .await
        .expect("purge");
    assert_eq!(purged, "purged 3 messages from jobs");

    // Errors: an unknown queue, and a wrong token.
    let err = run(&ep, QueueOp::Stats("nope".into())).await.unwrap_err();
    assert!(
        err.contains("no queue named") && err.contains("404"),
        "{err}"
    );
    let wrong = Endpoint {
        tls: None,
        addr: ep.addr,
        token: Some("wrong".into()),
    };
    let err = run(&wrong, QueueOp::List).await.unwrap_err();
    assert!(err.contains("401"), "{err}");
}

#[tokio::test]
async fn a_full_queue_refuses_a_v5_publisher_with_0x97_and_takes_nothing() {
    let mut q = queue("jobs", &["jobs/#"]);
    q.max_length = 2;
    let (_b, addr) = broker(vec![q]).await;
    let mut p = publisher(addr, "producer").await;
    assert_eq!(
        publish(&mut p, "jobs/1", 1, b"a").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish(&mut p, "jobs/2", 2, b"b").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish(&mut p, "jobs/3", 3, b"c").await,
        ReasonCode::QUOTA_EXCEEDED
    );
    // A topic no queue or subscriber takes is still 0x10.
    assert_eq!(
        publish(&mut p, "elsewhere", 4, b"d").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    let mut w = consumer(addr, "w", "jobs", 10).await;
    let mut got = Vec::new();
    while let Some(g) = next(&mut w, Duration::from_millis(300)).await {
        got.push(g.topic);
    }
    assert_eq!(got, vec!["jobs/1", "jobs/2"]);
}

#[tokio::test]
async fn consuming_a_queue_and_binding_a_filter_need_the_acl() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read $queue/jobs\ntopic readwrite jobs/#\n").unwrap();
    let mut c = test_config();
    c.auth.acl_file = Some(acl);
    c.queues = vec![queue("jobs", &["jobs/#"]), queue("secret", &["secret/#"])];
    let (_b, addr) = start(c).await;
    let mut w = RawClient::connect(addr, V5).await;
    w.send(&connect_packet(V5, "w", true)).await;
    assert!(matches!(w.recv().await, Some(Packet::ConnAck(_))));
    for (pid, filter, want) in [
        (1, "$queue/jobs", ReasonCode(1)),
        (2, "$queue/secret", ReasonCode::NOT_AUTHORIZED),
        // Creating a queue that binds a topic the client may not read.
        (3, "$queue/jobs/other/#", ReasonCode::NOT_AUTHORIZED),
    ] {
        w.send(&subscribe_packet(pid, filter, QoS::AtLeastOnce))
            .await;
        match w.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, vec![want], "{filter}"),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    // Publishing to a bound topic needs write on it.
    let mut p = publisher(addr, "producer").await;
    assert_eq!(
        publish(&mut p, "secret/x", 1, b"s").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        publish(&mut p, "jobs/x", 2, b"j").await,
        ReasonCode::SUCCESS
    );
    let g = next(&mut w, Duration::from_secs(3))
        .await
        .expect("delivered");
    assert_eq!(g.topic, "jobs/x");
}

#[tokio::test]
async fn a_message_too_big_for_a_consumer_goes_to_one_that_can_take_it() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    // A consumer whose Maximum Packet Size is 128 bytes.
    let mut small = RawClient::connect(addr, V5).await;
    let Packet::Connect(mut connect) = connect_packet(V5, "small", true) else {
        unreachable!()
    };
    connect.properties.maximum_packet_size = Some(128);
    small.send(&Packet::Connect(connect)).await;
    assert!(matches!(small.recv().await, Some(Packet::ConnAck(_))));
    small.subscribe(1, "$queue/jobs", QoS::AtLeastOnce).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/big", 1, &[7u8; 1000]).await;
    assert!(next(&mut small, Duration::from_millis(300)).await.is_none());
    // It was not lost: a consumer that can take it gets it.
    let mut big = consumer(addr, "big", "jobs", 10).await;
    let g = next(&mut big, Duration::from_secs(3))
        .await
        .expect("delivered to the one that fits");
    assert_eq!(g.payload.len(), 1000);
}

#[tokio::test]
async fn an_expired_message_in_the_dead_letter_queue_is_still_delivered() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    let mut p = publisher(addr, "producer").await;
    let Packet::Publish(mut m) = publish_packet("jobs/short-lived", QoS::AtLeastOnce, 1, b"w")
    else {
        unreachable!()
    };
    m.properties.message_expiry_interval = Some(1);
    p.send(&Packet::Publish(m)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // A consumer comes: the message has expired, so it goes to the DLQ, which
    // delivers it (dead letters do not expire).
    let mut w = consumer(addr, "w", "jobs", 1).await;
    assert!(next(&mut w, Duration::from_millis(300)).await.is_none());
    let mut dlq = consumer(addr, "d", "jobs-dlq", 1).await;
    let d = next(&mut dlq, Duration::from_secs(3))
        .await
        .expect("the dead letter");
    assert_eq!(
        d.props.get("tern-dead-letter-reason").map(String::as_str),
        Some("expired")
    );
}

#[tokio::test]
async fn an_unsubscribed_consumer_keeps_what_it_holds_until_it_acks() {
    let (_b, addr) = broker(vec![queue("jobs", &["jobs/#"])]).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/1", 1, b"w").await;
    publish(&mut p, "jobs/2", 2, b"w").await;
    let mut a = consumer(addr, "a", "jobs", 1).await;
    let g = next(&mut a, Duration::from_secs(3)).await.expect("jobs/1");
    assert_eq!(g.topic, "jobs/1");
    a.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: PacketId::new(9).unwrap(),
        user_properties: Vec::new(),
        filters: vec!["$queue/jobs".into()],
    }))
    .await;
    assert!(matches!(a.recv().await, Some(Packet::UnsubAck(_))));
    let mut b = consumer(addr, "b", "jobs", 10).await;
    let g2 = next(&mut b, Duration::from_secs(3)).await.expect("jobs/2");
    assert_eq!(g2.topic, "jobs/2");
    assert!(
        next(&mut b, Duration::from_millis(300)).await.is_none(),
        "jobs/1 stays with a"
    );
    ack(&mut a, g.packet_id, ReasonCode::SUCCESS).await;
    ack(&mut b, g2.packet_id, ReasonCode::SUCCESS).await;
    drop(a);
    assert!(
        next(&mut b, Duration::from_millis(500)).await.is_none(),
        "acked: not handed on"
    );
}

#[tokio::test]
async fn a_publisher_retry_after_a_crash_is_still_recognised_by_the_dedup_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("dedup.toml");
    std::fs::write(
        &cfg,
        "[[queues]]\nname = \"jobs\"\ntopics = [\"jobs/#\"]\ndedup_window = \"5m\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let mut p = publisher(b.addr, "producer").await;
    publish_with(&mut p, "jobs/x", 1, b"once", &[("message-id", "order-7")]).await;
    drop(b); // SIGKILL: the publisher may not have seen its PUBACK; it retries.
    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let mut p = publisher(b.addr, "producer").await;
    publish_with(&mut p, "jobs/x", 1, b"once", &[("message-id", "order-7")]).await;
    let mut w = consumer(b.addr, "w", "jobs", 10).await;
    assert!(next(&mut w, Duration::from_secs(3)).await.is_some());
    assert!(
        next(&mut w, Duration::from_millis(500)).await.is_none(),
        "taken once"
    );
}

#[tokio::test]
async fn a_queue_created_by_a_subscription_has_the_small_auto_caps() {
    let mut c = test_config();
    c.limits.auto_queue_max_length = 2;
    let (_b, addr) = start(c).await;
    let mut w = RawClient::connect(addr, V5).await;
    w.send(&connect_packet(V5, "creator", true)).await;
    assert!(matches!(w.recv().await, Some(Packet::ConnAck(_))));
    w.subscribe(1, "$queue/sink/x/#", QoS::AtLeastOnce).await;
    w.send(&Packet::Disconnect(Default::default())).await;
    let mut p = publisher(addr, "producer").await;
    // The queue it left behind takes two, then refuses.
    let mut codes = Vec::new();
    for i in 0..3u16 {
        codes.push(publish(&mut p, "x/1", i + 1, b"w").await);
    }
    assert_eq!(codes.last(), Some(&ReasonCode::QUOTA_EXCEEDED), "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| **c == ReasonCode::SUCCESS).count(),
        2,
        "{codes:?}"
    );
}

/// `test_config` with the durable store even under TEST_IN_MEMORY=1: these
/// tests are about the backlog on disk.
fn stored_config() -> tern::config::Config {
    let mut c = test_config();
    if c.storage.in_memory {
        with_store(&mut c);
    }
    c
}

/// The admin endpoint of an in-process broker (with a store), and the broker.
async fn broker_with_admin(
    queues: Vec<QueueConfig>,
    read_ahead: usize,
) -> (tern::broker::Broker, SocketAddr, tern::admin::cli::Endpoint) {
    let mut c = stored_config();
    c.queues = queues;
    c.limits.queue_read_ahead = read_ahead;
    c.admin.bind = Some("127.0.0.1:0".parse().unwrap());
    let (b, addr) = start(c).await;
    let ep = tern::admin::cli::Endpoint {
        tls: None,
        addr: b.admin_addr().expect("admin on"),
        token: None,
    };
    (b, addr, ep)
}

/// A queue's numbers from the admin endpoint, as JSON.
async fn queue_stats(ep: &tern::admin::cli::Endpoint, name: &str) -> serde_json::Value {
    let s = tern::admin::cli::run(ep, tern::admin::cli::QueueOp::Stats(name.into()))
        .await
        .expect("stats");
    serde_json::from_str(&s).expect("stats are JSON")
}

#[tokio::test]
async fn a_backlog_past_the_read_ahead_waits_on_disk_and_is_read_back_for_peek_dlq_and_redrive() {
    use tern::admin::cli::{run, QueueOp};
    let mut q = queue("jobs", &["jobs/#"]);
    q.max_deliveries = 1;
    let (_b, addr, ep) = broker_with_admin(vec![q], 4).await;
    let mut p = publisher(addr, "producer").await;
    const N: u16 = 60;
    for i in 0..N {
        let payload = format!("job {i:03} {}", "x".repeat(500));
        assert_eq!(
            publish(&mut p, &format!("jobs/{i}"), i + 1, payload.as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }
    // Written and synced: only the read-ahead is in memory, the rest is on disk.
    let mut st = queue_stats(&ep, "jobs").await;
    for _ in 0..50 {
        if st["in_memory"].as_u64() <= Some(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = queue_stats(&ep, "jobs").await;
    }
    assert_eq!(st["depth"], N as u64, "{st}");
    assert!(st["in_memory"].as_u64().unwrap() <= 4, "{st}");
    // A peek past the read-ahead reads the messages back.
    let peek = run(&ep, QueueOp::Peek("jobs".into(), 10))
        .await
        .expect("peek");
    for i in 0..10 {
        assert!(peek.contains(&format!("job {i:03} ")), "job {i}: {peek}");
    }
    // A worker refuses every message (max_deliveries 1): each is read back to
    // be delivered, then to be dead-lettered, in order.
    let mut w = consumer(addr, "w", "jobs", 3).await;
    for i in 0..N {
        let g = next(&mut w, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("job {i} delivered"));
        assert_eq!(g.topic, format!("jobs/{i}"), "in publish order");
        assert!(g.payload.starts_with(format!("job {i:03} ").as_bytes()));
        ack(&mut w, g.packet_id, ReasonCode::UNSPECIFIED_ERROR).await;
    }
    w.send(&Packet::Disconnect(Default::default())).await;
    let mut dlq = queue_stats(&ep, "jobs-dlq").await;
    for _ in 0..100 {
        if dlq["depth"] == N as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        dlq = queue_stats(&ep, "jobs-dlq").await;
    }
    assert_eq!(dlq["depth"], N as u64, "{dlq}");
    // Redrive them all back (read back from disk in batches), then a worker
    // takes every one, in order, with its count reset.
    let moved = run(
        &ep,
        QueueOp::Redrive {
            dlq: "jobs-dlq".into(),
            to: None,
            rate: None,
        },
    )
    .await
    .expect("redrive");
    assert_eq!(moved, format!("moved {N} messages out of jobs-dlq"));
    let mut w = consumer(addr, "w2", "jobs", 5).await;
    for i in 0..N {
        let g = next(&mut w, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("job {i} redelivered"));
        assert_eq!(g.topic, format!("jobs/{i}"));
        assert_eq!(
            g.props.get("tern-delivery-count").map(String::as_str),
            Some("1")
        );
        assert!(g.payload.starts_with(format!("job {i:03} ").as_bytes()));
        ack(&mut w, g.packet_id, ReasonCode::SUCCESS).await;
    }
    assert!(next(&mut w, Duration::from_millis(300)).await.is_none());
    let st = queue_stats(&ep, "jobs").await;
    assert_eq!(
        (st["depth"].as_u64(), st["in_flight"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
}

#[tokio::test]
async fn after_kill_9_a_backlog_is_read_back_from_disk_in_order_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("small.toml");
    std::fs::write(
        &cfg,
        "[limits]\nqueue_read_ahead = 8\n[storage]\nsegment_size = 65536\n\
         [[queues]]\nname = \"jobs\"\ntopics = [\"jobs/#\"]\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let mut p = publisher(b.addr, "producer").await;
    // About 240 KB: several segments.
    const N: u16 = 400;
    for i in 0..N {
        let payload = format!("{i:04}{}", "y".repeat(600));
        assert_eq!(
            publish(
                &mut p,
                &format!("jobs/{}", i % 7),
                i + 1,
                payload.as_bytes()
            )
            .await,
            ReasonCode::SUCCESS
        );
    }
    drop(b); // SIGKILL
    let b = BrokerProcess::spawn_in(&data, &["-c", cfg]);
    let mut w = consumer(b.addr, "worker", "jobs", 16).await;
    for i in 0..N {
        let g = next(&mut w, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("message {i} came back"));
        assert!(
            g.payload.starts_with(format!("{i:04}").as_bytes()) && g.payload.len() == 604,
            "message {i} in order and whole"
        );
        assert_eq!(g.topic, format!("jobs/{}", i % 7));
        ack(&mut w, g.packet_id, ReasonCode::SUCCESS).await;
    }
    assert!(next(&mut w, Duration::from_millis(300)).await.is_none());
}

/// The `.seg` files of a data directory, oldest first.
fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_few_old_queue_messages_do_not_pin_the_log() {
    let mut c = stored_config();
    let dir = c.storage.dir.clone();
    c.limits.queue_read_ahead = 2;
    c.queues = vec![queue("stuck", &["stuck/#"]), queue("busy", &["busy/#"])];
    let (_b, addr) = start(c).await;
    let mut p = publisher(addr, "producer").await;
    for i in 0..3u16 {
        publish(
            &mut p,
            &format!("stuck/{i}"),
            i + 1,
            format!("old {i}").as_bytes(),
        )
        .await;
    }
    let first = segments(&dir)[0].clone();
    // About 2 MB through another queue (64 KiB segments): the first segment
    // must be copied forward, its three live messages read back from disk.
    let mut w = consumer(addr, "busy-worker", "busy", 32).await;
    let big = vec![b'z'; 1000];
    let mut pid = 10u16;
    for _round in 0..125 {
        for _ in 0..16 {
            pid += 1;
            p.send(&publish_packet("busy/x", QoS::AtLeastOnce, pid, &big))
                .await;
        }
        let mut acked = 0;
        while acked < 16 {
            match p.recv().await {
                Some(Packet::PubAck(a)) => {
                    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
                    acked += 1;
                }
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
        while let Some(g) = next(&mut w, Duration::from_millis(1)).await {
            ack(&mut w, g.packet_id, ReasonCode::SUCCESS).await;
        }
    }
    let mut got = 0;
    while let Some(g) = next(&mut w, Duration::from_millis(300)).await {
        ack(&mut w, g.packet_id, ReasonCode::SUCCESS).await;
        got += 1;
    }
    assert!(got <= 2000);
    let segs = segments(&dir);
    assert!(
        !segs.contains(&first),
        "the segment with the old messages was reclaimed: {segs:?}"
    );
    assert!(segs.len() <= 8, "the log stays small: {segs:?}");
    // The old messages are whole.
    let mut s = consumer(addr, "stuck-worker", "stuck", 10).await;
    for i in 0..3 {
        let g = next(&mut s, Duration::from_secs(3))
            .await
            .expect("old message");
        assert_eq!(g.payload, format!("old {i}").as_bytes());
        ack(&mut s, g.packet_id, ReasonCode::SUCCESS).await;
    }
}

#[tokio::test]
async fn a_binding_made_by_a_subscription_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let b = BrokerProcess::spawn_in(&data, &[]);
    let mut c = consumer(b.addr, "binder", "auto/sensors/#", 10).await;
    c.send(&Packet::Disconnect(Default::default())).await;
    let mut p = publisher(b.addr, "producer").await;
    assert_eq!(
        publish(&mut p, "sensors/before", 1, b"one").await,
        ReasonCode::SUCCESS
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(b); // SIGKILL
    let b = BrokerProcess::spawn_in(&data, &[]);
    // Nobody consumes yet: the queue collects by its stored binding (a v5
    // publisher would get 0x10 No matching subscribers otherwise).
    let mut p = publisher(b.addr, "producer").await;
    assert_eq!(
        publish(&mut p, "sensors/after", 1, b"two").await,
        ReasonCode::SUCCESS
    );
    let mut w = consumer(b.addr, "worker", "auto", 10).await;
    let mut got = Vec::new();
    while let Some(g) = next(&mut w, Duration::from_millis(500)).await {
        got.push(g.topic.clone());
        ack(&mut w, g.packet_id, ReasonCode::SUCCESS).await;
    }
    assert_eq!(got, vec!["sensors/before", "sensors/after"]);
}

#[tokio::test]
async fn a_consumer_that_refuses_everything_does_not_pull_the_backlog_into_memory() {
    let mut q = queue("jobs", &["jobs/#"]);
    // Refused messages wait 10 s for their retry: long past this test.
    q.retry_delay = Duration::from_secs(10);
    q.retry_delay_max = Duration::from_secs(10);
    let (_b, addr, ep) = broker_with_admin(vec![q], 4).await;
    let mut p = publisher(addr, "producer").await;
    const N: u16 = 40;
    for i in 0..N {
        publish(&mut p, &format!("jobs/{i}"), i + 1, &[b'r'; 300]).await;
    }
    let mut w = consumer(addr, "refuser", "jobs", 5).await;
    for i in 0..N {
        let g = next(&mut w, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("job {i} delivered"));
        ack(&mut w, g.packet_id, ReasonCode::UNSPECIFIED_ERROR).await;
    }
    // All 40 wait for their retry, on disk: none is ready, so the read-ahead
    // holds nothing and memory none of them (before, every refused message
    // stayed in memory; then the last refusals, in turns that wrote nothing,
    // stayed until something else was written).
    let mut st = queue_stats(&ep, "jobs").await;
    for _ in 0..100 {
        if st["in_memory"].as_u64() == Some(0) && st["depth"] == N as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = queue_stats(&ep, "jobs").await;
    }
    assert_eq!(st["depth"], N as u64, "{st}");
    assert_eq!(st["in_memory"], 0, "{st}");
}

/// A reload with a new config changes the declared queues live: a queue's
/// topics and options change (what it holds stays), a new queue collects.
#[tokio::test]
async fn a_reload_rebinds_a_queue_changes_its_options_and_adds_one() {
    let mut c = test_config();
    c.queues = vec![queue("jobs", &["jobs/#"])];
    let (b, addr) = start(c.clone()).await;
    let mut p = publisher(addr, "producer").await;
    publish(&mut p, "jobs/1", 1, b"before").await;

    let mut jobs = queue("jobs", &["work/#"]);
    jobs.max_deliveries = 1;
    c.queues = vec![jobs, queue("extra", &["extra/#"])];
    assert_eq!(b.reload(Some(&c)).await, Vec::<String>::new());
    publish(&mut p, "jobs/2", 2, b"unbound now").await;
    publish(&mut p, "work/1", 3, b"after").await;
    publish(&mut p, "extra/1", 4, b"new queue").await;

    let mut w = consumer(addr, "w", "jobs", 10).await;
    let first = next(&mut w, Duration::from_secs(5)).await.expect("held");
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        ("jobs/1", &b"before"[..])
    );
    ack(&mut w, first.packet_id, ReasonCode::SUCCESS).await;
    let second = next(&mut w, Duration::from_secs(5)).await.expect("rebound");
    assert_eq!(second.topic, "work/1");
    // max_deliveries is 1 now: one refusal dead-letters it.
    ack(&mut w, second.packet_id, ReasonCode(0x80)).await;
    assert!(next(&mut w, Duration::from_millis(300)).await.is_none());
    let mut d = consumer(addr, "d", "jobs-dlq", 10).await;
    let dead = next(&mut d, Duration::from_secs(5))
        .await
        .expect("dead letter");
    assert_eq!(dead.topic, "work/1");
    let mut e = consumer(addr, "e", "extra", 10).await;
    let got = next(&mut e, Duration::from_secs(5))
        .await
        .expect("collected");
    assert_eq!(got.topic, "extra/1");
}
