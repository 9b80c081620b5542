//! The durable store seen from outside, with in-process brokers: old segments are
//! reclaimed under steady load, expired sessions leave the disk, the disk budget
//! refuses (v5 0x97, 3.1.1 disconnect) instead of acknowledging what it cannot
//! keep, and a graceful restart neither loses sessions nor repeats wills.
//! Crash (kill -9) and torn-write tests with the real binary are in
//! `durability.rs`.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use tern::protocol::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use tern::store::record::{Clock, Op};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn segments(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let len = e.metadata().ok()?.len();
            name.ends_with(".seg").then_some((name, len))
        })
        .collect();
    v.sort();
    v
}

fn v5_persistent(id: &str, expiry: u32) -> Packet {
    let mut c = Connect {
        version: V5,
        clean_start: false,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    c.properties.session_expiry_interval = Some(expiry);
    Packet::Connect(Box::new(c))
}

async fn open(addr: std::net::SocketAddr, p: Packet) -> (RawClient, tern::protocol::ConnAck) {
    let version = match &p {
        Packet::Connect(c) => c.version,
        _ => V5,
    };
    let mut c = RawClient::connect(addr, version).await;
    c.send(&p).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => (c, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A persistent subscriber acks everything while a publisher sends far more than
/// a segment holds: dead segments are deleted, so the log stays a few segments.
#[tokio::test]
async fn segments_are_reclaimed_under_steady_load() {
    let config = test_config();
    let dir = config.storage.dir.clone();
    let seg = config.storage.segment_size;
    let (broker, addr) = start(config).await;
    let (mut sub, _) = raw_connected(addr, V311, "steady-sub", false).await;
    sub.subscribe(1, "load/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = raw_connected(addr, V311, "steady-pub", true).await;

    const N: u16 = 6000;
    let payload = [b'x'; 100];
    let mut acked = 0u32;
    let mut received = 0u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut next = 1u16;
    // Keep 32 messages in flight; the subscriber acks as it goes.
    while received < u32::from(N) {
        assert!(std::time::Instant::now() < deadline, "load did not finish");
        while next <= N && u32::from(next) - 1 < acked + 32 {
            publ.send(&publish_packet("load/a", QoS::AtLeastOnce, next, &payload))
                .await;
            next += 1;
        }
        tokio::select! {
            p = publ.recv() => match p {
                Some(Packet::PubAck(_)) => acked += 1,
                other => panic!("publisher got {other:?}"),
            },
            p = sub.recv() => match p {
                Some(Packet::Publish(p)) => {
                    received += 1;
                    let pid = p.packet_id.expect("QoS 1");
                    sub.send(&Packet::PubAck(tern::protocol::PubResponse {
                        packet_id: pid,
                        reason_code: ReasonCode::SUCCESS,
                        properties: Default::default(),
                    })).await;
                }
                other => panic!("subscriber got {other:?}"),
            },
        }
    }
    // About 6000 x 130 bytes of records went through: 12 segments' worth.
    let written = tern::metrics::Metrics::get(&broker.metrics().store_bytes_written);
    assert!(written > 10 * seg, "only {written} bytes written");
    // Give the store a moment to finish its last reclaim round.
    let ok = wait_until(Duration::from_secs(5), || segments(&dir).len() <= 3).await;
    let segs = segments(&dir);
    assert!(ok, "old segments not reclaimed: {segs:?}");
    broker.shutdown().await;
}

/// A session that expires is removed from the log too, and does not come back.
#[tokio::test]
async fn expired_session_is_removed_from_disk() {
    let config = test_config();
    let dir = config.storage.dir.clone();
    let (broker, addr) = start(config.clone()).await;
    let (mut c, _) = open(addr, v5_persistent("short-lived", 1)).await;
    c.subscribe(1, "exp/#", QoS::AtLeastOnce).await;
    drop(c);
    let (mut p, _) = raw_connected(addr, V311, "exp-pub", true).await;
    p.send(&publish_packet("exp/1", QoS::AtLeastOnce, 1, b"queued"))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    broker.shutdown().await;

    // Read the log back: the session's end is recorded.
    let (log, replayed) =
        tern::store::log::Log::open(&dir, config.storage.segment_size, Clock::read())
            .expect("log opens");
    drop(log);
    let ops: Vec<&Op> = replayed.iter().map(|r| &r.op).collect();
    let created = ops
        .iter()
        .position(|o| matches!(o, Op::Session(s) if &*s.client_id == "short-lived"))
        .expect("session was written");
    let gone = ops
        .iter()
        .rposition(|o| matches!(o, Op::SessionGone { .. }))
        .expect("session end was written");
    assert!(gone > created);

    let (broker, addr) = start(config).await;
    let (_c, ack) = open(addr, v5_persistent("short-lived", 60)).await;
    assert!(!ack.session_present, "expired session came back");
    broker.shutdown().await;
}

/// With the disk budget reached, QoS 1 messages are refused, not acknowledged and
/// lost: v5 gets PUBACK 0x97, a 3.1.1 client is disconnected. QoS 0 still flows.
#[tokio::test]
async fn disk_budget_refuses_instead_of_losing() {
    let mut config = test_config();
    config.storage.max_bytes = 3 * config.storage.segment_size;
    config.limits.max_queued_messages = 100_000;
    config.limits.max_queued_bytes = 64 << 20;
    let (broker, addr) = start(config).await;
    let (mut s, _) = open(addr, v5_persistent("budget-sub", 3600)).await;
    s.subscribe(1, "big/#", QoS::AtLeastOnce).await;
    drop(s);
    let (mut p, _) = open(addr, {
        let mut c = v5_persistent("budget-pub", 0);
        if let Packet::Connect(c) = &mut c {
            c.clean_start = true;
        }
        c
    })
    .await;
    let payload = vec![b'y'; 2000];
    let mut refused = None;
    for i in 1..=2000u16 {
        p.send(&publish_packet("big/1", QoS::AtLeastOnce, i, &payload))
            .await;
        match p.recv().await {
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS => {}
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.reason_code, ReasonCode::QUOTA_EXCEEDED);
                refused = Some(i);
                break;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let first_refused = refused.expect("the budget was never reached");
    assert!(first_refused > 10, "refused too early: {first_refused}");
    assert!(tern::metrics::Metrics::get(&broker.metrics().store_refused) >= 1);
    // QoS 0 is not stored: it still goes through.
    p.send(&publish_packet("big/1", QoS::AtMostOnce, 0, b"q0"))
        .await;
    // 3.1.1 has no negative PUBACK: the connection is closed instead.
    let (mut old, _) = raw_connected(addr, V311, "budget-311", true).await;
    old.send(&publish_packet("big/1", QoS::AtLeastOnce, 1, b"x"))
        .await;
    let seen = old.until_closed().await;
    assert!(
        !seen.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "3.1.1 publisher was acknowledged: {seen:?}"
    );
    // Every acknowledged message is still queued for the subscriber.
    let (mut s, ack) = open(addr, v5_persistent("budget-sub", 3600)).await;
    assert!(ack.session_present);
    let mut got = 0u16;
    while let Ok(Some(Packet::Publish(m))) = s.recv_within(Duration::from_secs(2)).await {
        if m.payload.len() == payload.len() {
            got += 1;
        }
        if let Some(pid) = m.packet_id {
            s.send(&Packet::PubAck(tern::protocol::PubResponse {
                packet_id: pid,
                reason_code: ReasonCode::SUCCESS,
                properties: Default::default(),
            }))
            .await;
        }
    }
    assert_eq!(got, first_refused - 1, "acknowledged messages delivered");
    broker.shutdown().await;
}

/// A graceful restart keeps sessions and queued messages and does not publish a
/// Will a second time.
#[tokio::test]
async fn graceful_restart_keeps_sessions_without_repeating_wills() {
    let config = test_config();
    let (broker, addr) = start(config.clone()).await;
    let (mut w, _) = open(addr, v5_persistent("watcher", 3600)).await;
    w.subscribe(1, "wills/#", QoS::AtLeastOnce).await;
    let mut with_will = Connect {
        version: V5,
        clean_start: false,
        keep_alive: 60,
        client_id: "mortal".into(),
        will: Some(tern::protocol::LastWill {
            topic: "wills/mortal".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            delay_interval: 0,
            properties: Default::default(),
        }),
        username: None,
        password: None,
        properties: Default::default(),
    };
    with_will.properties.session_expiry_interval = Some(3600);
    let (_m, _) = open(addr, Packet::Connect(Box::new(with_will))).await;
    drop(w);
    // Shutdown closes "mortal" without DISCONNECT: its Will goes to the watcher's
    // queue, once.
    broker.shutdown().await;
    let (broker, addr) = start(config).await;
    let (mut w, ack) = open(addr, v5_persistent("watcher", 3600)).await;
    assert!(ack.session_present);
    let mut wills = 0;
    while let Ok(Some(p)) = w.recv_within(Duration::from_millis(1500)).await {
        if let Packet::Publish(p) = p {
            assert_eq!(p.topic, "wills/mortal");
            wills += 1;
            if let Some(pid) = p.packet_id {
                w.send(&Packet::PubAck(tern::protocol::PubResponse {
                    packet_id: pid,
                    reason_code: ReasonCode::SUCCESS,
                    properties: Default::default(),
                }))
                .await;
            }
        }
    }
    assert_eq!(wills, 1, "the Will arrives exactly once across the restart");
    broker.shutdown().await;
}
