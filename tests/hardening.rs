//! What a hostile or unlucky peer could make Tern hold or do, one regression test
//! per defect found by attacking the broker (issue "Hardening"): memory a peer
//! controls is counted at its real size and capped, and protocol answers a client
//! should get.

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;
use tern::protocol::{self, Packet, ProtocolVersion, PublishProperties, QoS, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A v5 PUBLISH carrying `n` tiny user properties (7 wire bytes each).
fn publish_with_user_properties(topic: &str, n: usize, retain: bool) -> Packet {
    let users: protocol::UserProperties = (0..n).map(|i| ((i % 10).to_string(), "v")).collect();
    Packet::Publish(protocol::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain,
        topic: topic.into(),
        packet_id: None,
        properties: PublishProperties {
            user_properties: users,
            ..Default::default()
        },
        payload: Bytes::from_static(b"x"),
    })
}

/// A packet with more user properties than `max_user_properties` is refused with
/// DISCONNECT 0x95 before they are collected; one within the cap is forwarded
/// whole, in order.
#[tokio::test]
async fn user_properties_over_the_cap_are_refused_with_0x95() {
    let b = BrokerProcess::spawn(&[]);
    let (mut sub, _) = raw_connected(b.addr, V5, "props-sub", true).await;
    sub.subscribe(1, "p/#", QoS::AtMostOnce).await;
    let (mut publ, _) = raw_connected(b.addr, V5, "props-pub", true).await;
    // The default cap is 128: 128 pass.
    publ.send(&publish_with_user_properties("p/ok", 128, false))
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            let got: Vec<_> = p.properties.user_properties.iter().collect();
            assert_eq!(got.len(), 128);
            assert_eq!(got[11], ("1", "v"));
        }
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
    // 129 do not.
    publ.send(&publish_with_user_properties("p/no", 129, false))
        .await;
    match publ.until_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::PACKET_TOO_LARGE),
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }
    sub.expect_silence(Duration::from_millis(300)).await;
}

/// Was: 60 retained messages of ~150k tiny user properties (1 MB each) held
/// 1.05 GB although `max_retained_bytes` is 16 MiB, because a message's cost
/// counted only topic and payload and a property cost ~100x its wire size. With
/// the cap raised so the packets are accepted, the retained store now stops at
/// its byte cap counted in real bytes, and the broker's memory stays near it,
/// also after a restart from the store.
#[tokio::test]
async fn retained_user_property_flood_stays_within_max_retained_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("TERN_LIMITS__MAX_USER_PROPERTIES", "1000000"),
        ("TERN_LIMITS__MAX_PROPERTY_BYTES", "2000000"),
    ];
    let data = dir.path().to_str().unwrap().to_string();
    let spawn = || BrokerProcess::spawn_with_env(&["--data-dir", &data], &env);
    let mut b = spawn();
    let (mut publ, _) = raw_connected(b.addr, V5, "flood", true).await;
    for i in 0..60 {
        publ.send(&publish_with_user_properties(
            &format!("r/{i}"),
            140_000,
            true,
        ))
        .await;
    }
    // A ping answered means every publish before it was handled.
    publ.send(&Packet::PingReq).await;
    assert!(matches!(publ.recv().await, Some(Packet::PingResp)));
    let rss = proc_status(b.child.id(), "VmRSS") / 1024;
    // Before: ~1,000 MB. The cap is 16 MiB of retained messages; allow the
    // runtime, buffers and allocator slack on top.
    assert!(rss < 160, "broker RSS {rss} MB after the retained flood");
    // Only what fits the byte cap was kept (each message ~1 MB). One topic per
    // SUBSCRIBE, so the reader's queue cap does not decide the count.
    let (mut sub, _) = raw_connected(b.addr, V5, "reader", true).await;
    let mut kept = 0;
    for i in 0..60u16 {
        sub.send(&subscribe_packet(i + 1, &format!("r/{i}"), QoS::AtMostOnce))
            .await;
        assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
        if let Ok(Some(Packet::Publish(_))) = sub.recv_within(Duration::from_millis(200)).await {
            kept += 1;
        }
    }
    assert!(
        (5..=17).contains(&kept),
        "{kept} retained messages kept under a 16 MiB cap"
    );
    drop(sub);
    drop(publ);
    b.terminate();
    let b = spawn();
    let rss = proc_status(b.child.id(), "VmRSS") / 1024;
    assert!(rss < 160, "broker RSS {rss} MB after restarting with them");
}

/// Was: a 3.1.1 client that never sends PUBREL made Tern keep every QoS 2 id
/// (65,535 per session, 5 MB, stored across restarts). Now the ids waiting for
/// PUBREL are capped by `receive_maximum` in both versions: one more closes the
/// connection.
#[tokio::test]
async fn qos2_ids_waiting_for_pubrel_are_capped_on_3_1_1() {
    let b = BrokerProcess::spawn_with_env(&[], &[("TERN_LIMITS__RECEIVE_MAXIMUM", "8")]);
    let (mut c, _) = raw_connected(b.addr, ProtocolVersion::V311, "no-pubrel", false).await;
    for pid in 1..=8u16 {
        c.send(&publish_packet("q2", QoS::ExactlyOnce, pid, b"x"))
            .await;
        match c.recv().await {
            Some(Packet::PubRec(r)) => assert_eq!(r.packet_id.get(), pid),
            other => panic!("expected PUBREC {pid}, got {other:?}"),
        }
    }
    c.send(&publish_packet("q2", QoS::ExactlyOnce, 9, b"x"))
        .await;
    assert!(
        c.until_closed().await.is_empty(),
        "the ninth id waiting for PUBREL closes the connection"
    );
    assert!(b.wait_log_count("waiting for PUBREL over receive_maximum", 1, WAIT));
    // A client that completes its flows is not affected.
    let (mut ok, _) = raw_connected(b.addr, ProtocolVersion::V311, "pubrel", true).await;
    for pid in 1..=20u16 {
        ok.send(&publish_packet("q2", QoS::ExactlyOnce, pid, b"x"))
            .await;
        assert!(matches!(ok.recv().await, Some(Packet::PubRec(_))));
        let id = protocol::PacketId::new(pid).unwrap();
        ok.send(&Packet::PubRel(protocol::PubResponse::success(id)))
            .await;
        assert!(matches!(ok.recv().await, Some(Packet::PubComp(_))));
    }
}

/// Was: one SUBSCRIBE with two overlapping filters and one Subscription
/// Identifier gave `[2333, 2333]` in the PUBLISH: each identifier goes once.
#[tokio::test]
async fn one_subscription_identifier_is_not_repeated_for_overlapping_filters() {
    let b = BrokerProcess::spawn(&[]);
    let (mut sub, _) = raw_connected(b.addr, V5, "ids", true).await;
    let Packet::Subscribe(mut s) = subscribe_packet(1, "a/#", QoS::AtMostOnce) else {
        unreachable!()
    };
    let mut second = s.filters[0].clone();
    second.filter = "a/+".into();
    s.filters.push(second);
    s.properties.subscription_identifier = Some(2333);
    sub.send(&Packet::Subscribe(s)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = raw_connected(b.addr, V5, "ids-pub", true).await;
    publ.send(&publish_packet("a/b", QoS::AtMostOnce, 0, b"x"))
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.properties.subscription_identifiers, vec![2333]);
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Publish `n` retained messages `r/0..n` and wait until the broker handled them.
async fn retain_many(addr: std::net::SocketAddr, n: usize) {
    let (mut publ, _) = raw_connected(addr, V5, "retainer", true).await;
    let mut batch = bytes::BytesMut::new();
    for i in 0..n {
        let Packet::Publish(mut p) = publish_packet(&format!("r/{i}"), QoS::AtMostOnce, 0, b"v")
        else {
            unreachable!()
        };
        p.retain = true;
        protocol::encode(&Packet::Publish(p), V5, &mut batch).unwrap();
        if batch.len() > 16 * 1024 || i + 1 == n {
            publ.send_bytes(&batch).await;
            batch.clear();
        }
    }
    publ.send(&Packet::PingReq).await;
    assert!(matches!(publ.recv().await, Some(Packet::PingResp)));
}

/// Receive retained PUBLISHes (acknowledging QoS 1) until `n` arrived or 2 s pass
/// with nothing new; returns the distinct topics.
async fn count_retained(c: &mut RawClient, n: usize) -> usize {
    let mut topics = std::collections::HashSet::new();
    while topics.len() < n {
        match c.recv_within(Duration::from_secs(2)).await {
            Ok(Some(Packet::Publish(p))) => {
                assert!(p.retain, "retained-on-subscribe carries RETAIN");
                if let Some(pid) = p.packet_id {
                    c.send(&Packet::PubAck(protocol::PubResponse::success(pid)))
                        .await;
                }
                topics.insert(p.topic);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    topics.len()
}

/// Was: a new `r/#` subscriber over 10,000 retained topics got 1,256 at QoS 1/2
/// (inflight window + queue cap) and 4,096 at QoS 0 (the outbox), silently. Now
/// every one arrives, paced by the subscriber's window [MQTT-3.3.1-9].
#[tokio::test]
async fn every_retained_message_reaches_a_new_wildcard_subscriber() {
    let b = BrokerProcess::spawn(&[]);
    retain_many(b.addr, 10_000).await;
    for (id, qos) in [("r-q1", QoS::AtLeastOnce), ("r-q0", QoS::AtMostOnce)] {
        let (mut sub, _) = raw_connected(b.addr, V5, id, true).await;
        sub.send(&subscribe_packet(1, "r/#", qos)).await;
        assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
        assert_eq!(count_retained(&mut sub, 10_000).await, 10_000, "{qos:?}");
    }
    // Meanwhile the router stayed responsive to others.
    let (mut other, _) = raw_connected(b.addr, V5, "other", true).await;
    other.send(&Packet::PingReq).await;
    assert!(matches!(other.recv().await, Some(Packet::PingResp)));
}

/// Was: a `$share` QoS 1 message given to a clean member that dropped before its
/// PUBACK was lost. Now it goes to another member of the group (5.0 section
/// 4.8.2: SHOULD), on both protocol versions.
#[tokio::test]
async fn shared_qos1_message_of_a_dropped_member_goes_to_another() {
    let b = BrokerProcess::spawn(&[]);
    for version in [ProtocolVersion::V311, V5] {
        let filter = "$share/g/work";
        let (mut a, _) = raw_connected(b.addr, version, "member-a", true).await;
        a.subscribe(1, filter, QoS::AtLeastOnce).await;
        let (mut m, _) = raw_connected(b.addr, version, "member-b", true).await;
        m.subscribe(1, filter, QoS::AtLeastOnce).await;
        let (mut publ, _) = raw_connected(b.addr, V5, "work-pub", true).await;
        for (pid, body) in [(1, b"one"), (2, b"two")] {
            publ.send(&publish_packet("work", QoS::AtLeastOnce, pid, body))
                .await;
            assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        }
        // Round-robin: one each. A never acknowledges and goes away.
        let Some(Packet::Publish(to_a)) = a.recv().await else {
            panic!("member A got nothing")
        };
        let Some(Packet::Publish(to_b)) = m.recv().await else {
            panic!("member B got nothing")
        };
        assert_ne!(to_a.payload, to_b.payload);
        m.send(&Packet::PubAck(protocol::PubResponse::success(
            to_b.packet_id.unwrap(),
        )))
        .await;
        drop(a);
        match m.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.payload, to_a.payload, "{version:?}");
                assert_eq!(p.qos, QoS::AtLeastOnce);
            }
            other => panic!("{version:?}: expected A's message at B, got {other:?}"),
        }
        m.send(&Packet::Disconnect(Default::default())).await;
    }
}

/// CONNECT from `from` (3.1.1, clean start off unless `clean`): the CONNACK's
/// (return code, session present), with the stream kept open as long as the
/// caller holds it.
async fn connect_from(
    addr: std::net::SocketAddr,
    from: &str,
    id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
) -> ((u8, bool), tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(std::net::SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut stream = s.connect(addr).await.unwrap();
    let mut packet = match login {
        Some((u, p)) => connect_with_login(ProtocolVersion::V311, id, Some(u), Some(p.as_bytes())),
        None => connect_packet(ProtocolVersion::V311, id, clean),
    };
    if let Packet::Connect(c) = &mut packet {
        c.clean_start = clean;
    }
    let mut b = bytes::BytesMut::new();
    protocol::encode(&packet, ProtocolVersion::V311, &mut b).unwrap();
    stream.write_all(&b).await.unwrap();
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(head[0], 0x20, "CONNACK");
    ((head[3], head[2] & 1 == 1), stream)
}

/// Alice's persistent session `alice-{i}`: (return code, session present).
async fn alice(addr: std::net::SocketAddr, i: usize) -> (u8, bool) {
    let id = format!("alice-{i}");
    connect_from(addr, "127.0.0.1", &id, Some(("alice", "secret")), false)
        .await
        .0
}

/// Was: 20,000 CONNECTs with random ids and long expiry filled the session
/// table in 4 s and then every new client, clean ones too, was refused (0x97 /
/// 0x03) for 7 days, across restarts. Now clean sessions take no persistent
/// room, one anonymous address holds at most `max_sessions_per_address`, and a
/// full table expires the oldest offline anonymous sessions (logged), never an
/// authenticated user's.
#[tokio::test]
async fn a_session_flood_cannot_lock_others_out_or_push_out_users() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = argon2_password_file(dir.path(), &[("alice", "secret")]);
    let config = config_file(
        dir.path(),
        "max_sessions = 30\nmax_sessions_per_address = 10",
        &format!(
            "allow_anonymous = true\npassword_file = {}",
            toml_path(&passwords)
        ),
    );
    let b = BrokerProcess::spawn_config(&config);
    let addr = b.listener_addrs(1)[0];
    for i in 0..5 {
        assert_eq!(alice(addr, i).await.0, 0);
    }
    // One anonymous address: 10 persistent sessions, then refused; clean ones
    // still welcome.
    for i in 0..10 {
        let (ack, _) = connect_from(addr, "127.0.0.1", &format!("anon-{i}"), None, false).await;
        assert_eq!(ack.0, 0, "anon-{i}");
    }
    let (ack, _) = connect_from(addr, "127.0.0.1", "anon-10", None, false).await;
    assert_eq!(ack.0, 3, "over max_sessions_per_address: 3.1.1 0x03");
    let (ack, _clean) = connect_from(addr, "127.0.0.1", "clean-1", None, true).await;
    assert_eq!(ack.0, 0, "a clean session is never refused for room");
    // Many addresses fill the table (30): the oldest offline anonymous sessions
    // make room; alice's five stay.
    for a in 1..=3 {
        for i in 0..10 {
            let from = format!("127.2.0.{a}");
            let (ack, _) = connect_from(addr, &from, &format!("flood-{a}-{i}"), None, false).await;
            assert_eq!(ack.0, 0, "flood-{a}-{i}");
        }
    }
    assert!(b.wait_log_count("expired the oldest offline anonymous session", 15, WAIT));
    for i in 0..5 {
        assert_eq!(
            alice(addr, i).await,
            (0, true),
            "alice-{i} kept her session"
        );
    }
    let ((code, present), _) = connect_from(addr, "127.0.0.1", "anon-0", None, false).await;
    assert_eq!(
        (code, present),
        (0, false),
        "the oldest anonymous session was expired"
    );
    let (ack, _) = connect_from(addr, "127.3.0.1", "clean-2", None, true).await;
    assert_eq!(ack.0, 0, "clean sessions get in at a full table");
}

/// Read PUBLISHes for 8 s, acknowledging each and pausing `pause` after it.
async fn read_and_ack(mut c: RawClient, pause: Duration) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Packet::Publish(p))) = c.recv_within(Duration::from_millis(200)).await {
            if let Some(pid) = p.packet_id {
                c.send(&Packet::PubAck(protocol::PubResponse::success(pid)))
                    .await;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Was: a subscriber on `#` reading ~200 msg/s held an unrelated
/// publisher->subscriber pair at ~205 msg/s for 40 s (normally ~9,800): it
/// drained its queue to half before `backpressure_timeout` again and again, which
/// reset the stall check. Now the time it holds publishers adds up (a leaky
/// bucket), so after the budget the pair keeps at least 90% of its rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_wildcard_subscriber_cannot_throttle_an_unrelated_pair() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = BrokerProcess::spawn_with_env(
        &[],
        &[
            ("TERN_MQTT__BACKPRESSURE_TIMEOUT", "1s"),
            ("TERN_LIMITS__MAX_QUEUED_MESSAGES", "50"),
            ("TERN_LIMITS__MAX_INFLIGHT", "10"),
        ],
    );
    // The slow one: everything, QoS 1, about 200 messages a second.
    let (mut slow, _) = raw_connected(b.addr, V5, "slow", true).await;
    slow.subscribe(1, "#", QoS::AtLeastOnce).await;
    let slow_task = tokio::spawn(read_and_ack(slow, Duration::from_millis(5)));
    // The pair's subscriber reads as fast as it can.
    let (mut fast, _) = raw_connected(b.addr, V5, "fast", true).await;
    fast.subscribe(1, "pair/t", QoS::AtLeastOnce).await;
    let fast_task = tokio::spawn(read_and_ack(fast, Duration::ZERO));
    // The pair's publisher: QoS 1 at a steady 1,000 messages a second, at most
    // 64 unacknowledged.
    let (publ, _) = raw_connected(b.addr, V5, "pair-pub", true).await;
    let (mut rd, mut wr) = publ.stream.into_split();
    let acked = Arc::new(AtomicU64::new(0));
    let acks = acked.clone();
    let reader = tokio::spawn(async move {
        let mut buf = bytes::BytesMut::new();
        loop {
            if rd.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            while let Ok(Some(p)) = protocol::decode(&mut buf, Some(V5), 1 << 20) {
                if matches!(p, Packet::PubAck(_)) {
                    acks.fetch_add(1, Relaxed);
                }
            }
        }
    });
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    let mut acked_at_3s = None;
    while start.elapsed() < Duration::from_secs(6) {
        tick.tick().await;
        if acked_at_3s.is_none() && start.elapsed() >= Duration::from_secs(3) {
            acked_at_3s = Some(acked.load(Relaxed));
        }
        if sent - acked.load(Relaxed) >= 64 {
            continue;
        }
        sent += 1;
        let pid = (sent % 65_535) as u16 + 1;
        let mut out = bytes::BytesMut::new();
        protocol::encode(
            &publish_packet("pair/t", QoS::AtLeastOnce, pid, b"x"),
            V5,
            &mut out,
        )
        .unwrap();
        wr.write_all(&out).await.unwrap();
    }
    // From 3 s to 6 s, well past the 1 s budget: at least 90% of 1,000/s (one
    // subscriber may hold publishers a twentieth of the time; the bug: ~150/s).
    let rate = (acked.load(Relaxed) - acked_at_3s.unwrap()) as f64 / 3.0;
    reader.abort();
    slow_task.abort();
    fast_task.abort();
    assert!(rate >= 900.0, "the pair ran at {rate:.0} msg/s of 1000");
}

/// Was: 200 offline sessions x 256 filters of 1 KB held 221 MB (21 GB projected
/// at the session default). Now one session's subscriptions are capped in bytes
/// (`max_subscription_bytes`, 16 KiB): the rest get SUBACK 0x97, and the broker
/// stays small.
#[tokio::test]
async fn long_subscriptions_are_capped_in_bytes_per_session() {
    let b = BrokerProcess::spawn(&[]);
    let rss_before = proc_status(b.child.id(), "VmRSS");
    let long = "f".repeat(1000);
    for s in 0..200 {
        let (mut c, _) = raw_connected(b.addr, V5, &format!("subs-{s}"), false).await;
        let mut granted = 0;
        for chunk in 0..8u16 {
            let Packet::Subscribe(mut sub) = subscribe_packet(chunk + 1, "x", QoS::AtLeastOnce)
            else {
                unreachable!()
            };
            sub.filters = (0..32)
                .map(|i| {
                    let mut f = sub.filters[0].clone();
                    f.filter = format!("{long}/{}", chunk * 32 + i);
                    f
                })
                .collect();
            c.send(&Packet::Subscribe(sub)).await;
            match c.recv().await {
                Some(Packet::SubAck(a)) => {
                    for code in a.reason_codes {
                        if code == ReasonCode(1) {
                            granted += 1;
                        } else {
                            assert_eq!(code, ReasonCode::QUOTA_EXCEEDED);
                        }
                    }
                }
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
        // 16 KiB at ~2.3 KB per 1 KB filter.
        assert!((5..=8).contains(&granted), "{granted} long filters granted");
        if s == 0 {
            // A short filter still fits beside them.
            c.subscribe(100, "short/+", QoS::AtMostOnce).await;
        }
        c.send(&Packet::Disconnect(Default::default())).await;
    }
    let grown = (proc_status(b.child.id(), "VmRSS") - rss_before) / 1024;
    // Before: ~220 MB.
    assert!(grown < 60, "the broker grew by {grown} MB");
}

/// Was: 5,000 idle connections cost ~15 KB each and the memory stayed after
/// they closed (malloc keeps freed memory in its arenas, maps keep their
/// largest size). Now a broker that went back to idle gives most of it back.
#[tokio::test]
async fn memory_of_closed_connections_is_returned() {
    let b = BrokerProcess::spawn(&[]);
    let pid = b.child.id();
    let idle = proc_status(pid, "VmRSS");
    let mut conns = Vec::new();
    for i in 0..3000 {
        let mut c = RawClient::connect(b.addr, ProtocolVersion::V311).await;
        c.send(&connect_packet(
            ProtocolVersion::V311,
            &format!("idle-{i}"),
            true,
        ))
        .await;
        conns.push(c);
    }
    for c in &mut conns {
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    }
    let peak = proc_status(pid, "VmRSS");
    let grown = peak - idle;
    // Enough to measure a return by (3,000 connections cost ~3 KB each in a
    // debug build since issue 15's work; ~15 KB before).
    assert!(
        grown > 4_000,
        "3,000 connections grew RSS by only {grown} kB"
    );
    drop(conns);
    // Returned within a few seconds: at least two thirds of the growth.
    let returned = wait_until(Duration::from_secs(15), || {
        proc_status(pid, "VmRSS") < idle + grown / 3
    })
    .await;
    let after = proc_status(pid, "VmRSS");
    assert!(
        returned,
        "RSS idle {idle} kB, with 3,000 connections {peak} kB, 15 s after they closed {after} kB"
    );
}

/// Was: a 1-byte retained message sent in the same write behind a 1 MB PUBLISH
/// kept the whole 1 MB read buffer alive (its payload was a slice of it): 200 of
/// them held ~300 MB against the 16 MiB retained cap. Now a small part of a
/// large buffer is copied out, and retained messages keep exact allocations.
#[tokio::test]
async fn small_retained_messages_do_not_pin_large_read_buffers() {
    let b = BrokerProcess::spawn(&[]);
    let pid = b.child.id();
    let idle = proc_status(pid, "VmRSS");
    let (mut c, _) = raw_connected(b.addr, ProtocolVersion::V311, "pinner", true).await;
    let big = vec![0u8; 1_000_000];
    for i in 0..200 {
        let mut out = bytes::BytesMut::new();
        let junk = publish_packet("junk", QoS::AtMostOnce, 0, &big);
        protocol::encode(&junk, ProtocolVersion::V311, &mut out).unwrap();
        let Packet::Publish(mut tiny) =
            publish_packet(&format!("pin/{i}"), QoS::AtMostOnce, 0, b"x")
        else {
            unreachable!()
        };
        tiny.retain = true;
        protocol::encode(&Packet::Publish(tiny), ProtocolVersion::V311, &mut out).unwrap();
        c.send_bytes(&out).await;
    }
    c.send(&Packet::PingReq).await;
    assert!(matches!(c.recv().await, Some(Packet::PingResp)));
    drop(c);
    // Let the connection's buffers go (and malloc give them back).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = proc_status(pid, "VmRSS").saturating_sub(idle) / 1024;
    // Pinning holds at least the 200 read buffers (200 MB; 300 MB before the
    // fix). What glibc keeps of freed 1 MB buffers without a trim (one closed
    // connection does not trigger one) varied up to ~90 MB under CI load, so
    // the bound sits between the two.
    assert!(grown < 150, "200 tiny retained messages hold {grown} MB");
    // And they are all kept.
    let (mut s, _) = raw_connected(b.addr, V5, "pin-reader", true).await;
    s.subscribe(1, "pin/#", QoS::AtMostOnce).await;
    assert_eq!(count_retained(&mut s, 200).await, 200);
}

/// Review finding: after a restart, sessions made under a merely claimed
/// username (no password file) counted as a verified user's and could never be
/// expired for room, so a flood of them locked new persistent clients out until
/// they expired. Whether a username was verified is now stored with the session.
#[tokio::test]
async fn claimed_usernames_stay_anonymous_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TERN_LIMITS__MAX_SESSIONS", "5")];
    let spawn = || {
        let mut cmd = BrokerProcess::command();
        cmd.arg("--data-dir").arg(dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        BrokerProcess::spawn_cmd(cmd)
    };
    let mut b = spawn();
    for i in 0..5 {
        let ((code, _), _) = connect_from(
            b.addr,
            "127.0.0.1",
            &format!("claimed-{i}"),
            Some(("anyone", "")),
            false,
        )
        .await;
        assert_eq!(code, 0);
    }
    b.terminate();
    let b = spawn();
    let ((code, _), _) = connect_from(b.addr, "127.0.0.1", "newcomer", None, false).await;
    assert_eq!(code, 0, "an offline session with a claimed name makes room");
    assert!(b.wait_log_count("expired the oldest offline anonymous session", 1, WAIT));
}
