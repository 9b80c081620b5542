//! Regression tests for the connection-shell items of the hardening issue: what a
//! peer can make a connection hold before login (a separate CONNECT size limit and
//! a shared budget for unauthenticated read buffers), the server's cap on outbound
//! topic aliases, the reason code surviving a client that is still sending when
//! Tern closes, the CONNACK / DISCONNECT reason codes of bad packets, and the
//! environment variables that are configuration.

mod common;

use bytes::BytesMut;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tern::protocol::{self, Connect, ConnectProperties, Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// The broker's resident memory in KiB.
fn rss_of(pid: u32) -> u64 {
    proc_status(pid, "VmRSS")
}

/// The first bytes of a v5 CONNECT declaring `remaining` bytes: fixed header,
/// protocol name and level, clean start, keep alive 60, no properties. The rest of
/// the packet is never sent.
fn connect_head(remaining: usize) -> Vec<u8> {
    let mut b = bytes::BytesMut::from(&[0x10u8][..]);
    protocol::encode_vbi(remaining, &mut b).unwrap();
    b.extend(hex("00 04 4d 51 54 54 05 02 00 3c 00"));
    b.to_vec()
}

/// The CONNACK on `stream` if one arrives within `d`.
async fn connack_within(stream: &mut TcpStream, d: Duration) -> Option<protocol::ConnAck> {
    let mut buf = BytesMut::with_capacity(256);
    let deadline = tokio::time::Instant::now() + d;
    loop {
        if let Ok(Some(Packet::ConnAck(a))) = protocol::decode(&mut buf, Some(V5), 1 << 20) {
            return Some(a);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Item 3: half-sent CONNECTs cannot make Tern hold more than the pre-login
/// budget (16 MiB by default), nor a CONNECT longer than `max_connect_packet_size`
/// (64 KiB) at all; meanwhile a normal client logs in. Before the fix the first
/// packet could be `max_packet_size` (1 MiB) long and every connection held what
/// it had sent: this attack took the broker from ~10 MB to over 100 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_connects_hold_a_bounded_amount() {
    let broker = BrokerProcess::spawn(&[]);
    let addr = broker.addr;
    let pid = broker.child.id();
    let (mut probe, _) = raw_connected(addr, V5, "probe", true).await;
    probe.send(&Packet::PingReq).await;
    assert!(matches!(probe.recv().await, Some(Packet::PingResp)));
    let before = rss_of(pid);

    // 200 CONNECTs declaring just under 1 MiB (max_packet_size) with 512 KiB sent, then 400 declaring 60 KiB
    // with 56 KiB sent: all left incomplete, all held open.
    let mut tasks = Vec::new();
    for i in 0..600usize {
        let (declared, sent) = if i < 200 {
            ((1 << 20) - 8, 512 * 1024)
        } else {
            (60 * 1024, 56 * 1024)
        };
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut bytes = connect_head(declared);
            bytes.resize(sent, b'x');
            // Tern may close a refused one early: a failed write is expected.
            let _ = s.write_all(&bytes).await;
            s
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.expect("attacker task"));
    }

    // A normal client is served during the attack (timed for BENCHMARKS.md, not
    // asserted: the machine may be loaded).
    let t0 = std::time::Instant::now();
    let (mut fresh, _) = raw_connected(addr, V5, "during-attack", true).await;
    fresh.send(&Packet::PingReq).await;
    assert!(
        matches!(fresh.recv().await, Some(Packet::PingResp)),
        "a normal client during the attack"
    );
    eprintln!(
        "a normal client's CONNECT + PINGREQ round trips during the attack: {:?}",
        t0.elapsed()
    );

    // Peak resident memory while the data is being taken in (for 5 s: the
    // attackers stay within connect_timeout; stop early once over the bound).
    const BOUND_KIB: u64 = 40 * 1024;
    let mut peak = 0;
    let mut samples = Vec::new();
    for _ in 0..25 {
        let now = rss_of(pid);
        samples.push(now.saturating_sub(before) / 1024);
        peak = peak.max(now);
        if peak.saturating_sub(before) >= BOUND_KIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grown_kib = peak.saturating_sub(before);
    eprintln!(
        "RSS before {before} KiB, peak {peak} KiB: +{grown_kib} KiB; MiB over time {samples:?}"
    );

    // The 1 MiB ones are refused as too large (v5: CONNACK 0x95), and the
    // budget refuses at least the 60 KiB ones beyond 16 MiB (0x89 Server busy).
    let mut too_large = 0;
    let mut busy = 0;
    for s in held.iter_mut() {
        match connack_within(s, Duration::from_millis(50)).await {
            Some(a) if a.reason_code == ReasonCode::PACKET_TOO_LARGE => too_large += 1,
            Some(a) if a.reason_code == ReasonCode::SERVER_BUSY => busy += 1,
            _ => {}
        }
    }
    eprintln!("refused: {too_large} too large, {busy} over the budget");
    assert!(
        grown_kib < BOUND_KIB,
        "600 half-sent CONNECTs grew the broker by {grown_kib} KiB"
    );
    assert_eq!(too_large, 200, "CONNECTs over max_connect_packet_size");
    // 16 MiB / 63 KiB charged each: at most 261 of the 400 fit.
    assert!(busy >= 400 - 261, "only {busy} refused over the budget");
    drop(held);
}

/// Item 6: a subscriber announcing Topic Alias Maximum 65535 gets aliases only up
/// to `outbound_topic_alias_maximum` (10); before the fix every one of the 40
/// distinct topics got its own alias, each held for the connection's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_topic_aliases_are_capped_by_the_server() {
    let (_b, addr) = start_default().await;
    let mut sub = RawClient::connect(addr, V5).await;
    sub.send(&Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "alias-sub".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties {
            topic_alias_maximum: Some(65535),
            ..Default::default()
        },
    })))
    .await;
    match sub.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    sub.subscribe(1, "ta/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = raw_connected(addr, V5, "alias-pub", true).await;
    const TOPICS: u16 = 40;
    for i in 1..=TOPICS {
        let topic = format!("ta/{i}");
        publ.send(&publish_packet(&topic, QoS::AtLeastOnce, i, b"x"))
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    let mut aliases = Vec::new();
    for _ in 0..TOPICS {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                if let Some(pid) = p.packet_id {
                    sub.send(&Packet::PubAck(protocol::PubResponse::success(pid)))
                        .await;
                }
                aliases.extend(p.properties.topic_alias);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    let max = aliases.iter().copied().max().unwrap_or(0);
    assert_eq!(
        max, 10,
        "highest outbound alias (aliases sent: {aliases:?})"
    );
    assert_eq!(aliases.len(), 10, "one alias per topic up to the cap");
}

/// A client that is still sending when Tern closes it and reads only then:
/// write `first`, then a few PINGREQs every 10 ms for ~100 ms, close our side,
/// then read until the stream ends. Returns the packets read, how the reads
/// ended and how the writes did.
async fn flood(
    stream: TcpStream,
    first: Vec<u8>,
) -> (Vec<Packet>, std::io::Result<()>, std::io::Result<()>) {
    let (mut rd, mut wr) = stream.into_split();
    let written = async {
        wr.write_all(&first).await?;
        let pings = [0xC0u8, 0x00].repeat(1024);
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            wr.write_all(&pings).await?;
        }
        wr.shutdown().await
    }
    .await;
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let end = loop {
        while let Ok(Some(p)) = protocol::decode(&mut buf, Some(V5), 1 << 20) {
            seen.push(p);
        }
        buf.reserve(64 * 1024);
        match tokio::time::timeout(WAIT, rd.read_buf(&mut buf)).await {
            Err(_) => panic!("no end of stream within {WAIT:?}"),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break Err(e),
        }
    };
    (seen, end, written)
}

/// Item 19: a client still writing when Tern closes it with DISCONNECT 0x93 reads
/// the DISCONNECT and a clean end of stream, and its writes do not fail. Before
/// the fix Tern closed with unread input, so the kernel answered with a reset and
/// the client's next write failed (EPIPE): a client library that treats a failed
/// write as the end never reads the reason (Linux still lets a raw reader read
/// what arrived before the reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_reason_survives_a_client_still_sending() {
    let (_b, addr) = start_default().await;
    let (c, ack) = raw_connected(addr, V5, "rm93-flood", true).await;
    let receive_max = ack.properties.receive_maximum.unwrap_or(u16::MAX);
    // One more unacknowledged QoS 2 PUBLISH than our Receive Maximum (no PUBREL
    // is ever sent), then the flood.
    let mut burst = BytesMut::new();
    for i in 1..=receive_max + 1 {
        protocol::encode(
            &publish_packet("rm93/t", QoS::ExactlyOnce, i, b"x"),
            V5,
            &mut burst,
        )
        .unwrap();
    }
    let (seen, end, written) = flood(c.stream, burst.to_vec()).await;
    match seen.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
        }
        other => panic!("expected DISCONNECT 0x93 last, got {other:?}"),
    }
    assert!(
        end.is_ok(),
        "the stream ended with {end:?}, not a clean EOF"
    );
    assert!(written.is_ok(), "the client's writes failed: {written:?}");
}

/// Item 19, for a refusing CONNACK: a client that sends more behind a CONNECT
/// Tern refuses (0x8C, enhanced authentication) reads the CONNACK and a clean
/// end of stream, and its writes do not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_refusal_survives_a_client_still_sending() {
    let (_b, addr) = start_default().await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut connect = BytesMut::new();
    protocol::encode(
        &Packet::Connect(Box::new(Connect {
            version: V5,
            clean_start: true,
            keep_alive: 60,
            client_id: "auth-method".into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                authentication_method: Some("SCRAM-SHA-1".into()),
                ..Default::default()
            },
        })),
        V5,
        &mut connect,
    )
    .unwrap();
    let (seen, end, written) = flood(stream, connect.to_vec()).await;
    match seen.as_slice() {
        [Packet::ConnAck(a)] => assert_eq!(a.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD),
        other => panic!("expected one CONNACK, got {other:?}"),
    }
    assert!(
        end.is_ok(),
        "the stream ended with {end:?}, not a clean EOF"
    );
    assert!(written.is_ok(), "the client's writes failed: {written:?}");
}

/// Item 20: a v5 CONNECT refused for what it contains gets a CONNACK with the
/// reason before the close (5.0 section 4.13.1, [MQTT-3.1.4-2]); before the fix
/// the connection was closed without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_v5_connect_gets_connack_with_its_reason() {
    let (_b, addr) = start_default().await;
    let too_large = {
        let mut b = connect_head(70_000);
        b.extend(hex("00 02 63 31"));
        b
    };
    let cases: &[(&str, Vec<u8>, u8)] = &[
        (
            "Receive Maximum 0",
            hex("10 12 00 04 4d 51 54 54 05 02 00 3c 03 21 00 00 00 02 63 31"),
            0x82,
        ),
        (
            "wildcard in Will Topic",
            hex("10 18 00 04 4d 51 54 54 05 06 00 3c 00 00 02 63 31 00 00 03 61 2f 23 00 01 78"),
            0x90,
        ),
        (
            "reserved flag set",
            hex("10 0f 00 04 4d 51 54 54 05 03 00 3c 00 00 02 63 31"),
            0x81,
        ),
        ("over max_connect_packet_size", too_large, 0x95),
    ];
    for (what, bytes, code) in cases {
        let mut c = RawClient::connect(addr, V5).await;
        c.send_bytes(bytes).await;
        let seen = c.until_closed().await;
        match seen.as_slice() {
            [Packet::ConnAck(a)] => assert_eq!(a.reason_code.0, *code, "{what}: {a:?}"),
            other => panic!("{what}: expected one CONNACK, got {other:?}"),
        }
    }
    // 3.1.1 has no reason to give: closed without a CONNACK [MQTT-3.1.4-1].
    let mut c = RawClient::connect(addr, ProtocolVersion::V311).await;
    c.send_bytes(&hex("10 0e 00 04 4d 51 54 54 04 03 00 3c 00 02 63 31"))
        .await;
    assert!(c.until_closed().await.is_empty());
}

/// Item 20: Topic Alias 0 is "Topic Alias invalid" (0x94) and DUP on a QoS 0
/// PUBLISH a Protocol Error (0x82); before the fix 0x82 and 0x81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publish_flags_and_alias_get_their_reason() {
    let (_b, addr) = start_default().await;
    for (what, bytes, code) in [
        ("Topic Alias 0", "30 07 00 01 61 03 23 00 00", 0x94),
        ("DUP on QoS 0", "38 04 00 01 61 00", 0x82),
    ] {
        let (mut c, _) = raw_connected(addr, V5, "bad-pub", true).await;
        c.send_bytes(&hex(bytes)).await;
        match c.until_closed().await.as_slice() {
            [Packet::Disconnect(d)] => assert_eq!(d.reason_code.0, code, "{what}"),
            other => panic!("{what}: expected one DISCONNECT, got {other:?}"),
        }
    }
}

/// Item 20: CONNACK says Shared Subscription Available = 1 explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_announces_shared_subscriptions() {
    let (_b, addr) = start_default().await;
    let (_c, ack) = raw_connected(addr, V5, "shared-avail", true).await;
    assert_eq!(ack.properties.shared_subscription_available, Some(1));
}

/// Item 21: `TERN_*` variables that are not `TERN_<SECTION>__<KEY>` are not
/// configuration: before the fix `TERN_ENV=production` stopped the start with
/// "unknown field `env`". Overrides of the right form still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_tern_variables_do_not_stop_startup() {
    let broker = BrokerProcess::spawn_with_env(
        &[],
        &[
            ("TERN_ENV", "production"),
            ("TERN_HOME", "/opt/tern"),
            ("TERN_LOG", "debug"),
            ("TERN_LIMITS__MAX_PACKET_SIZE", "4096"),
        ],
    );
    let addr: SocketAddr = broker.addr;
    let (_c, ack) = raw_connected(addr, V5, "env", true).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(4096));
}

/// Item 3 (what a CONNECT leaves behind): 400 clients log in with 60 KiB
/// CONNECTs (padded by the password), half of them with a 1-byte Will. Before the
/// fix each connection kept its whole CONNECT buffer: the empty remainder of the
/// read buffer still shared its allocation and lived as long as the connection,
/// and a Will's payload, a slice of it, as long as the session. The broker grew
/// by ~32 MB; now by what 400 idle connections cost (~6 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_connection_does_not_keep_its_connect_buffer() {
    let broker = BrokerProcess::spawn(&[]);
    let addr = broker.addr;
    let pid = broker.child.id();
    let (_probe, _) = raw_connected(addr, V5, "will-probe", true).await;
    let before = rss_of(pid);
    let mut held = Vec::new();
    for i in 0..400 {
        let mut c = RawClient::connect(addr, V5).await;
        c.send(&Packet::Connect(Box::new(Connect {
            version: V5,
            clean_start: true,
            keep_alive: 60,
            client_id: format!("will-{i}"),
            will: (i % 2 == 0).then(|| protocol::LastWill {
                topic: "will/t".into(),
                payload: bytes::Bytes::from_static(b"w"),
                qos: QoS::AtMostOnce,
                retain: false,
                delay_interval: 0,
                properties: Default::default(),
            }),
            username: Some("u".into()),
            password: Some(bytes::Bytes::from(vec![b'p'; 60 * 1024])),
            properties: Default::default(),
        })))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        held.push(c);
    }
    let grown_kib = rss_of(pid).saturating_sub(before);
    eprintln!("400 connections from 60 KiB CONNECTs, 200 with a Will: +{grown_kib} KiB");
    assert!(
        grown_kib < 12 * 1024,
        "400 connections grew the broker by {grown_kib} KiB"
    );
}
