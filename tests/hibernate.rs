//! Hibernating connections (`limits.hibernate_after`, issue 15): an idle plain
//! TCP connection's task ends and its state waits outside it. Checked over real
//! sockets: it wakes for a delivery from the router, for a packet of its
//! client, for a takeover, for the peer closing, for its keep-alive running
//! out (0x8D, the Will published) and for the broker's shutdown (0x8B); and
//! nothing it knew is lost across a sleep (QoS 2 state, topic aliases).

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tern::protocol::{
    self, Connect, LastWill, Packet, PacketId, ProtocolVersion, PubResponse, QoS, ReasonCode,
};

const WAIT: Duration = Duration::from_secs(5);

async fn broker(after: Duration) -> (tern::broker::Broker, std::net::SocketAddr) {
    let mut c = test_config();
    c.limits.hibernate_after = after;
    start(c).await
}

/// Wait until `n` connections hibernate.
async fn asleep(b: &tern::broker::Broker, n: u64) {
    let m = b.metrics();
    assert!(
        wait_until(WAIT, || m.connections_hibernating.load(Ordering::Relaxed)
            == n)
        .await,
        "expected {n} hibernating, got {}",
        m.connections_hibernating.load(Ordering::Relaxed)
    );
}

fn connect(version: ProtocolVersion, id: &str, keep_alive: u16, will: Option<LastWill>) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive,
        client_id: id.into(),
        will,
        username: None,
        password: None,
        properties: Default::default(),
    }))
}

/// A v5 PUBLISH with topic alias 1 (an empty topic: by the alias alone).
fn aliased(topic: &str, qos: QoS, packet_id: u16, dup: bool, payload: &[u8]) -> Packet {
    let Packet::Publish(mut p) = publish_packet(topic, qos, packet_id, payload) else {
        unreachable!()
    };
    p.dup = dup;
    p.properties.topic_alias = Some(1);
    Packet::Publish(p)
}

async fn expect_publish(c: &mut RawClient, topic: &str, payload: &[u8]) -> protocol::Publish {
    match c.recv_within(WAIT).await {
        Ok(Some(Packet::Publish(p))) => {
            assert_eq!(p.topic, topic);
            assert_eq!(&p.payload[..], payload);
            p
        }
        other => panic!("expected PUBLISH on {topic}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernating_connection_wakes_for_a_delivery_and_for_its_client() {
    let (b, addr) = broker(Duration::from_millis(200)).await;
    let (mut sub, _) = raw_connected(addr, ProtocolVersion::V5, "sub", true).await;
    sub.subscribe(1, "t/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = raw_connected(addr, ProtocolVersion::V311, "pub", true).await;
    asleep(&b, 2).await;
    assert_eq!(b.metrics().connections_current.load(Ordering::Relaxed), 2);

    // The publisher's packet wakes it (its socket); the delivery wakes the
    // subscriber (the router's push to its outbox).
    publ.send(&publish_packet("t/1", QoS::AtLeastOnce, 7, b"one"))
        .await;
    match publ.recv_within(WAIT).await {
        Ok(Some(Packet::PubAck(a))) => assert_eq!(a.packet_id.get(), 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let p = expect_publish(&mut sub, "t/1", b"one").await;
    // Asleep again with the delivery unacknowledged: the PUBACK wakes it and
    // the next delivery follows.
    asleep(&b, 2).await;
    sub.send(&Packet::PubAck(PubResponse::success(p.packet_id.unwrap())))
        .await;
    publ.send(&publish_packet("t/2", QoS::AtMostOnce, 0, b"two"))
        .await;
    expect_publish(&mut sub, "t/2", b"two").await;
    // A PINGREQ is answered by a woken connection.
    asleep(&b, 2).await;
    sub.send(&Packet::PingReq).await;
    match sub.recv_within(WAIT).await {
        Ok(Some(Packet::PingResp)) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
    // Many sleeps and wakes lose nothing, in order.
    for i in 0..5u16 {
        asleep(&b, 2).await;
        let body = format!("m{i}");
        publ.send(&publish_packet(
            "t/3",
            QoS::AtLeastOnce,
            10 + i,
            body.as_bytes(),
        ))
        .await;
        assert!(matches!(
            publ.recv_within(WAIT).await,
            Ok(Some(Packet::PubAck(_)))
        ));
        let p = expect_publish(&mut sub, "t/3", body.as_bytes()).await;
        sub.send(&Packet::PubAck(PubResponse::success(p.packet_id.unwrap())))
            .await;
    }
    assert!(b.metrics().connections_hibernating.load(Ordering::Relaxed) <= 2);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_state_and_topic_aliases_survive_a_sleep() {
    let (b, addr) = broker(Duration::from_millis(200)).await;
    let (mut sub, _) = raw_connected(addr, ProtocolVersion::V311, "q2sub", true).await;
    sub.subscribe(1, "q/#", QoS::ExactlyOnce).await;
    let (mut publ, _) = raw_connected(addr, ProtocolVersion::V5, "q2pub", true).await;
    // A QoS 2 publish with a topic alias, then sleep before PUBREL.
    publ.send(&aliased("q/a", QoS::ExactlyOnce, 3, false, b"x"))
        .await;
    match publ.recv_within(WAIT).await {
        Ok(Some(Packet::PubRec(r))) => assert_eq!(r.packet_id.get(), 3),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let d = expect_publish(&mut sub, "q/a", b"x").await;
    asleep(&b, 2).await;
    // The re-sent PUBLISH (DUP) before PUBREL is recognised, not delivered
    // twice [MQTT-4.3.3-10]; the alias set before the sleep still resolves.
    publ.send(&aliased("", QoS::ExactlyOnce, 3, true, b"x"))
        .await;
    assert!(matches!(
        publ.recv_within(WAIT).await,
        Ok(Some(Packet::PubRec(_)))
    ));
    publ.send(&Packet::PubRel(PubResponse::success(
        PacketId::new(3).unwrap(),
    )))
    .await;
    assert!(matches!(
        publ.recv_within(WAIT).await,
        Ok(Some(Packet::PubComp(_)))
    ));
    // The subscriber completes its QoS 2 flow after a sleep, and got it once.
    asleep(&b, 2).await;
    sub.send(&Packet::PubRec(PubResponse::success(d.packet_id.unwrap())))
        .await;
    assert!(matches!(
        sub.recv_within(WAIT).await,
        Ok(Some(Packet::PubRel(_)))
    ));
    sub.send(&Packet::PubComp(PubResponse::success(d.packet_id.unwrap())))
        .await;
    sub.expect_silence(Duration::from_millis(500)).await;
    // A new message by alias alone, after another sleep.
    asleep(&b, 2).await;
    publ.send(&aliased("", QoS::AtMostOnce, 0, false, b"y"))
        .await;
    expect_publish(&mut sub, "q/a", b"y").await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_runs_out_while_hibernating() {
    let (b, addr) = broker(Duration::from_millis(200)).await;
    let (mut watcher, _) = raw_connected(addr, ProtocolVersion::V5, "watch", true).await;
    watcher.subscribe(1, "will/#", QoS::AtLeastOnce).await;
    let mut c = RawClient::connect(addr, ProtocolVersion::V5).await;
    let will = LastWill {
        topic: "will/quiet".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: 0,
        properties: Default::default(),
    };
    let started = Instant::now();
    c.send(&connect(ProtocolVersion::V5, "quiet", 1, Some(will)))
        .await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    // Keep alive 1 s: closed 1.5 s after the CONNACK [MQTT-3.1.2-24], asleep
    // most of that time.
    asleep(&b, 2).await;
    match c.recv_within(WAIT).await {
        Ok(Some(Packet::Disconnect(d))) => {
            assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT)
        }
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    expect_publish(&mut watcher, "will/quiet", b"gone").await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_and_a_peer_closing_wake_a_hibernating_connection() {
    let (b, addr) = broker(Duration::from_millis(200)).await;
    let (mut old, _) = raw_connected(addr, ProtocolVersion::V5, "same", true).await;
    let (gone, _) = raw_connected(addr, ProtocolVersion::V311, "leaver", true).await;
    asleep(&b, 2).await;
    // The peer closing: its socket wakes it, and the connection ends.
    drop(gone);
    let m = b.metrics();
    assert!(
        wait_until(WAIT, || m.connections_current.load(Ordering::Relaxed) == 1).await,
        "the closed connection is still counted"
    );
    assert_eq!(m.connections_hibernating.load(Ordering::Relaxed), 1);
    // A takeover: the router's kick wakes the old connection, which gets
    // 0x8E, and the new one its CONNACK without waiting for a timeout.
    let started = Instant::now();
    let (_new, _) = raw_connected(addr, ProtocolVersion::V5, "same", true).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "CONNACK after {:?}",
        started.elapsed()
    );
    match old.recv_within(WAIT).await {
        Ok(Some(Packet::Disconnect(d))) => {
            assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER)
        }
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wakes_hibernating_connections_with_0x8b() {
    let (b, addr) = broker(Duration::from_millis(200)).await;
    let (mut v5, _) = raw_connected(addr, ProtocolVersion::V5, "h5", false).await;
    let (mut v3, _) = raw_connected(addr, ProtocolVersion::V311, "h3", true).await;
    asleep(&b, 2).await;
    tokio::time::timeout(Duration::from_secs(10), b.shutdown())
        .await
        .expect("shutdown finishes");
    match v5.recv_within(WAIT).await {
        Ok(Some(Packet::Disconnect(d))) => {
            assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN)
        }
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    assert!(matches!(v3.recv_within(WAIT).await, Ok(None)), "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_turns_hibernation_off() {
    let (b, addr) = broker(Duration::ZERO).await;
    let (mut c, _) = raw_connected(addr, ProtocolVersion::V5, "awake", true).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        b.metrics().connections_hibernating.load(Ordering::Relaxed),
        0
    );
    c.send(&Packet::PingReq).await;
    assert!(matches!(
        c.recv_within(WAIT).await,
        Ok(Some(Packet::PingResp))
    ));
    b.shutdown().await;
}

/// Many connections falling asleep and woken over and over, with deliveries
/// racing their sleep: every subscriber gets every message, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_sleeping_and_waking_loses_nothing() {
    const SUBS: usize = 100;
    const MESSAGES: u16 = 12;
    let (b, addr) = broker(Duration::from_millis(30)).await;
    let mut subs = Vec::new();
    for i in 0..SUBS {
        let version = if i % 2 == 0 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        let (mut s, _) = raw_connected(addr, version, &format!("crowd-{i}"), true).await;
        s.subscribe(1, "crowd/#", QoS::AtLeastOnce).await;
        subs.push(s);
    }
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                for n in 0..MESSAGES {
                    let p = match s.recv_within(WAIT).await {
                        Ok(Some(Packet::Publish(p))) => p,
                        other => panic!("subscriber {i}: expected message {n}, got {other:?}"),
                    };
                    assert_eq!(&p.payload[..], format!("m{n}").as_bytes(), "subscriber {i}");
                    s.send(&Packet::PubAck(PubResponse::success(p.packet_id.unwrap())))
                        .await;
                }
                s.expect_silence(Duration::from_millis(200)).await;
            })
        })
        .collect();
    let (mut publ, _) = raw_connected(addr, ProtocolVersion::V5, "crowd-pub", true).await;
    let mut slept = 0;
    for n in 0..MESSAGES {
        // Sleep spans around the deadline, so some deliveries meet a
        // connection falling asleep; one long enough for all to sleep.
        let pause = if n == 6 {
            200
        } else {
            20 + 7 * u64::from(n % 5)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        slept = slept.max(b.metrics().connections_hibernating.load(Ordering::Relaxed));
        publ.send(&publish_packet(
            "crowd/t",
            QoS::AtLeastOnce,
            n + 1,
            format!("m{n}").as_bytes(),
        ))
        .await;
        assert!(matches!(
            publ.recv_within(WAIT).await,
            Ok(Some(Packet::PubAck(_)))
        ));
    }
    for r in readers {
        r.await.expect("subscriber");
    }
    assert!(slept > 10, "the crowd never slept ({slept} at most)");
    b.shutdown().await;
}

/// WebSocket over plain TCP hibernates too, its framing kept aside: it wakes
/// for a Ping (answered), for the rest of a fragmented message it slept in
/// the middle of, and for a delivery; asleep, its Close is echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_hibernates_with_its_framing() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::*, Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::Message;
    let mut c = test_config();
    c.limits.hibernate_after = Duration::from_millis(200);
    let mut l = tern::config::ListenerConfig::plain("127.0.0.1:0".parse().unwrap());
    l.websocket = true;
    c.listeners.push(l);
    let (b, addr) = start(c).await;
    let ws_addr = b.local_addrs()[1];
    let v = ProtocolVersion::V311;
    let encode = |p: &Packet| {
        let mut buf = bytes::BytesMut::new();
        protocol::encode(p, v, &mut buf).unwrap();
        buf.to_vec()
    };
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{ws_addr}/mqtt"),
    )
    .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut inbox = bytes::BytesMut::new();
    macro_rules! next_packet {
        () => {
            loop {
                if let Some(p) = protocol::decode(&mut inbox, Some(v), 1 << 20).unwrap() {
                    break p;
                }
                match tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("a message")
                {
                    Some(Ok(Message::Binary(m))) => inbox.extend_from_slice(&m),
                    other => panic!("{other:?}"),
                }
            }
        };
    }
    ws.send(Message::Binary(
        encode(&connect_packet(v, "ws-sleeper", true)).into(),
    ))
    .await
    .unwrap();
    assert!(matches!(next_packet!(), Packet::ConnAck(_)));
    let sub = encode(&subscribe_packet(1, "w/#", QoS::AtMostOnce));
    let (first, rest) = sub.split_at(3);
    let fragment = |fin: bool, opcode: OpCode, payload: &[u8]| {
        Message::Frame(Frame::from_payload(
            FrameHeader {
                is_final: fin,
                opcode,
                ..FrameHeader::default()
            },
            payload.to_vec().into(),
        ))
    };
    // A packet split across two fragments.
    ws.send(fragment(false, OpCode::Data(Data::Binary), first))
        .await
        .unwrap();
    ws.send(fragment(true, OpCode::Data(Data::Continue), rest))
        .await
        .unwrap();
    assert!(matches!(next_packet!(), Packet::SubAck(_)));
    asleep(&b, 1).await;
    // A Ping wakes it and is answered.
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await.expect("pong") {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"still there?"),
        other => panic!("{other:?}"),
    }
    // Asleep in the middle of a fragmented message: its first fragment holds
    // a whole PINGREQ, answered; the connection sleeps with the message open;
    // the final fragment (a continuation, which a fresh framing would refuse
    // with Close 1002) wakes it and its PINGREQ is answered too.
    asleep(&b, 1).await;
    let ping = encode(&Packet::PingReq);
    ws.send(fragment(false, OpCode::Data(Data::Binary), &ping))
        .await
        .unwrap();
    assert!(matches!(next_packet!(), Packet::PingResp));
    asleep(&b, 1).await;
    ws.send(fragment(true, OpCode::Data(Data::Continue), &ping))
        .await
        .unwrap();
    assert!(matches!(next_packet!(), Packet::PingResp));
    // A delivery wakes it (the router's push), over the framing kept asleep.
    asleep(&b, 1).await;
    let mut publ = RawClient::connect(addr, v).await;
    publ.send(&connect_packet(v, "pub", true)).await;
    assert!(matches!(publ.recv().await, Some(Packet::ConnAck(_))));
    publ.send(&publish_packet("w/1", QoS::AtMostOnce, 0, b"to a sleeper"))
        .await;
    match next_packet!() {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"to a sleeper"),
        other => panic!("{other:?}"),
    }
    // Asleep, a Close is echoed.
    asleep(&b, 2).await;
    ws.send(Message::Close(None)).await.unwrap();
    let mut closed = false;
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, ws.next()).await {
        match m {
            Ok(Message::Close(_)) => closed = true,
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    assert!(closed, "the Close echoed");
    b.shutdown().await;
}

/// A TLS connection hibernates as its whole stream (rustls's state kept, its
/// socket watched): it wakes for a delivery, for its client's packet, and
/// for its client closing (the broker counts it gone, asleep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_hibernates_whole() {
    let pki = common::pki::Pki::new();
    let mut c = test_config();
    c.limits.hibernate_after = Duration::from_millis(200);
    let mut l = tern::config::ListenerConfig::plain("127.0.0.1:0".parse().unwrap());
    l.tls = Some(pki.tls_config(false, false, false));
    c.listeners.push(l);
    let (b, addr) = start(c).await;
    let tls_addr = b.local_addrs()[1];
    let v = ProtocolVersion::V311;
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(None))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut sub = RawIo::new(tls, v);
    sub.send(&connect_packet(v, "tls-sleeper", true)).await;
    assert!(matches!(sub.recv().await, Some(Packet::ConnAck(_))));
    sub.send(&subscribe_packet(1, "s/#", QoS::AtLeastOnce))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = raw_connected(addr, v, "pub", true).await;
    for i in 0..3u16 {
        // Both asleep; the delivery wakes the TLS one.
        asleep(&b, 2).await;
        let body = format!("to a TLS sleeper {i}");
        publ.send(&publish_packet(
            "s/1",
            QoS::AtLeastOnce,
            1 + i,
            body.as_bytes(),
        ))
        .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
        let p = match sub.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(&p.payload[..], body.as_bytes());
        // Its client's PUBACK, after it slept again, wakes it.
        asleep(&b, 2).await;
        sub.send(&Packet::PubAck(PubResponse::success(p.packet_id.unwrap())))
            .await;
        sub.send(&Packet::PingReq).await;
        assert!(matches!(sub.recv().await, Some(Packet::PingResp)));
    }
    // Closed by its client while asleep: gone.
    asleep(&b, 2).await;
    drop(sub);
    let m = b.metrics();
    assert!(
        wait_until(WAIT, || m.connections_current.load(Ordering::Relaxed) == 1).await,
        "the closed TLS sleeper is still counted"
    );
    b.shutdown().await;
}
