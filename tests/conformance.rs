//! MQTT 3.1.1 and 5.0 server conformance: one test per normative statement that
//! binds a server (CONNECT handling, client identifiers, sessions, QoS 0/1/2 flows,
//! SUBSCRIBE/UNSUBSCRIBE, wildcards and `$` topics, retained messages, wills and will
//! delay, keep alive, shared subscriptions, flow control, topic aliases, message
//! expiry, subscription identifiers, property pass-through, maximum packet size).
//!
//! Each test is named by the statement id of the specification it checks (`mqtt_`
//! for 3.1.1 ids or statements common to both versions, `mqtt5_` for 5.0 ids or
//! 5.0 section numbers where the statement has no id) and drives the in-process
//! broker with the raw client of `tests/common`. Timing-sensitive tests use small
//! intervals (keep alive 1 s, will delay 2 s, expiry 1 s) so the file stays fast.

mod common;

use bytes::Bytes;
use common::*;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tern::protocol::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;
/// How long "nothing arrives" is watched for when no sentinel can prove it.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------
// Helpers (local to this file; tests/common is shared and not edited).
// ---------------------------------------------------------------------------------

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

fn qos(n: u8) -> QoS {
    QoS::from_u8(n).expect("QoS 0..2")
}

/// A CONNECT with keep alive 60 and no will, credentials or properties.
fn conn(version: ProtocolVersion, id: &str, clean: bool) -> Connect {
    Connect {
        version,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

/// A v5 CONNECT with clean start 0 and the given Session Expiry Interval.
fn persistent(id: &str, expiry: u32) -> Connect {
    let mut c = conn(V5, id, false);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

fn will(topic: &str, payload: &str, q: u8, retain: bool) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: qos(q),
        retain,
        delay_interval: 0,
        properties: Default::default(),
    }
}

/// Send CONNECT, return the client and whatever CONNACK came back.
async fn open(addr: SocketAddr, c: Connect) -> (RawClient, ConnAck) {
    let mut cl = RawClient::connect(addr, c.version).await;
    cl.send(&Packet::Connect(Box::new(c))).await;
    match cl.recv().await {
        Some(Packet::ConnAck(a)) => (cl, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Send CONNECT and assert success; returns the client and the CONNACK.
async fn online(addr: SocketAddr, c: Connect) -> (RawClient, ConnAck) {
    let (cl, a) = open(addr, c).await;
    assert_eq!(a.reason_code, ReasonCode::SUCCESS, "CONNACK {a:?}");
    (cl, a)
}

/// A connected clean-start client.
async fn client(addr: SocketAddr, version: ProtocolVersion, id: &str) -> RawClient {
    online(addr, conn(version, id, true)).await.0
}

/// A QoS 0, non-retained PUBLISH.
fn msg(topic: &str, payload: &str) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

/// The same PUBLISH at QoS `q` (1 or 2) with packet id `id`.
fn at(mut p: Publish, q: u8, id: u16) -> Publish {
    p.qos = qos(q);
    p.packet_id = (q > 0).then(|| pid(id));
    p
}

fn retained(mut p: Publish) -> Publish {
    p.retain = true;
    p
}

fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Publish and complete the publisher side of the QoS flow (PUBACK, or
/// PUBREC/PUBREL/PUBCOMP). When this returns the broker has routed the message.
async fn publish(c: &mut RawClient, p: Publish) {
    let q = p.qos;
    let id = p.packet_id;
    c.send(&Packet::Publish(p)).await;
    match q {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => match c.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(Some(a.packet_id), id, "PUBACK packet id");
                assert!(!a.reason_code.is_error(), "PUBACK {a:?}");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        },
        QoS::ExactlyOnce => {
            match c.recv().await {
                Some(Packet::PubRec(a)) => {
                    assert_eq!(Some(a.packet_id), id, "PUBREC packet id");
                    assert!(!a.reason_code.is_error(), "PUBREC {a:?}");
                }
                other => panic!("expected PUBREC, got {other:?}"),
            }
            let id = id.expect("QoS 2 has a packet id");
            c.send(&Packet::PubRel(PubResponse::success(id))).await;
            match c.recv().await {
                Some(Packet::PubComp(a)) => assert_eq!(a.packet_id, id, "PUBCOMP packet id"),
                other => panic!("expected PUBCOMP, got {other:?}"),
            }
        }
    }
}

/// The next packet, which must be a PUBLISH (not acknowledged).
async fn next_pub(c: &mut RawClient) -> Publish {
    match c.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Acknowledge a received PUBLISH (PUBACK for QoS 1, PUBREC for QoS 2).
async fn ack(c: &mut RawClient, p: &Publish) {
    match (p.qos, p.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => c.send(&Packet::PubAck(PubResponse::success(id))).await,
        (QoS::ExactlyOnce, Some(id)) => c.send(&Packet::PubRec(PubResponse::success(id))).await,
        _ => {}
    }
}

/// Receive (and acknowledge) PUBLISHes until one with payload `sentinel`; returns
/// those before it. PUBRELs are answered with PUBCOMP on the way.
async fn until_sentinel(c: &mut RawClient, sentinel: &str) -> Vec<Publish> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                ack(c, &p).await;
                if p.payload.as_ref() == sentinel.as_bytes() {
                    return seen;
                }
                seen.push(p);
            }
            Some(Packet::PubRel(r)) => {
                c.send(&Packet::PubComp(PubResponse::success(r.packet_id)))
                    .await
            }
            other => panic!("waiting for sentinel {sentinel:?}: got {other:?} after {seen:?}"),
        }
    }
    panic!("sentinel {sentinel:?} not seen in 1000 packets");
}

fn opts(q: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: qos(q),
        ..Default::default()
    }
}

/// SUBSCRIBE and return the SUBACK codes (asserting the SUBACK packet id).
async fn subscribe_with(
    c: &mut RawClient,
    id: u16,
    filters: &[(&str, SubscriptionOptions)],
    sub_id: Option<u32>,
) -> Vec<u8> {
    send_subscribe(c, id, filters, sub_id).await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => {
            assert_eq!(s.packet_id, pid(id), "SUBACK packet id [MQTT-3.8.4-2]");
            s.reason_codes.iter().map(|r| r.0).collect()
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Send a SUBSCRIBE (the answer is left to the caller).
async fn send_subscribe(
    c: &mut RawClient,
    id: u16,
    filters: &[(&str, SubscriptionOptions)],
    sub_id: Option<u32>,
) {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: SubscribeProperties {
            subscription_identifier: sub_id,
            user_properties: Vec::new(),
        },
        filters: filters
            .iter()
            .map(|(f, o)| SubscribeFilter {
                filter: (*f).into(),
                options: *o,
            })
            .collect(),
    }))
    .await;
}

/// Subscribe to one filter and assert the requested QoS was granted.
async fn sub(c: &mut RawClient, filter: &str, q: u8) {
    let codes = subscribe_with(c, 1, &[(filter, opts(q))], None).await;
    assert_eq!(codes, vec![q], "SUBACK for {filter}");
}

async fn unsubscribe(c: &mut RawClient, id: u16, filters: &[&str]) -> Vec<u8> {
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(id),
        user_properties: Vec::new(),
        filters: filters.iter().map(|f| (*f).to_string()).collect(),
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(u)) => {
            assert_eq!(u.packet_id, pid(id), "UNSUBACK packet id [MQTT-3.10.4-4]");
            u.reason_codes.iter().map(|r| r.0).collect()
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

/// Normal DISCONNECT (reason 0x00), then wait for the broker to close.
async fn disconnect(mut c: RawClient) {
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    let seen = c.until_closed().await;
    assert!(seen.is_empty(), "packets after DISCONNECT: {seen:?}");
    // Let the router process the disconnection before the test goes on.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Drop the TCP connection without DISCONNECT (a network failure).
async fn drop_conn(c: RawClient) {
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// v5: the broker sends exactly one DISCONNECT with `code`, then closes.
async fn expect_disconnect(c: &mut RawClient, code: u8) {
    let seen = c.until_closed().await;
    match seen.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(
            d.reason_code.0, code,
            "DISCONNECT reason code: got 0x{:02X}, want 0x{code:02X}",
            d.reason_code.0
        ),
        _ => panic!("expected one DISCONNECT 0x{code:02X} then close, got {seen:?}"),
    }
}

/// v5: exactly one DISCONNECT with one of `codes`, then close.
async fn expect_disconnect_one_of(c: &mut RawClient, codes: &[u8]) {
    let seen = c.until_closed().await;
    match seen.as_slice() {
        [Packet::Disconnect(d)] => assert!(
            codes.contains(&d.reason_code.0),
            "DISCONNECT reason code 0x{:02X}, want one of {codes:02X?}",
            d.reason_code.0
        ),
        _ => panic!("expected one DISCONNECT {codes:02X?} then close, got {seen:?}"),
    }
}

/// A SUBSCRIBE / UNSUBSCRIBE with a malformed filter: v5 DISCONNECT 0x8F Topic
/// Filter invalid then close, 3.1.1 close without an acknowledgement.
async fn expect_filter_refused(c: &mut RawClient) {
    if c.version == V5 {
        expect_disconnect(c, 0x8F).await;
    } else {
        expect_closed(c).await;
    }
}

/// The broker closes the connection without sending anything.
async fn expect_closed(c: &mut RawClient) {
    let seen = c.until_closed().await;
    assert!(
        seen.is_empty(),
        "expected close without packets, got {seen:?}"
    );
}

/// Read raw bytes until EOF (bounded by `WAIT`).
async fn raw_until_eof(c: &mut RawClient) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, c.stream.read(&mut buf)).await {
            Err(_) => panic!("connection not closed within {WAIT:?}; got {out:02x?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn ping(c: &mut RawClient) {
    c.send(&Packet::PingReq).await;
    match c.recv().await {
        Some(Packet::PingResp) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------

/// [MQTT-3.1.0-1] "the first packet sent from the Client to the Server MUST be a
/// CONNECT packet."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let (_b, addr) = start_default().await;
    let mut c = RawClient::connect(addr, V311).await;
    c.send_bytes(&hex("c0 00")).await; // PINGREQ
    expect_closed(&mut c).await;
}

/// [MQTT-3.1.0-2] "The Server MUST process a second CONNECT packet sent from a
/// Client as a Protocol Error and close the Network Connection." (5.0: 0x82)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_2_second_connect_is_protocol_error() {
    let (_b, addr) = start_default().await;
    let (mut c, _) = online(addr, conn(V5, "twice5", true)).await;
    c.send(&Packet::Connect(Box::new(conn(V5, "twice5", true))))
        .await;
    expect_disconnect(&mut c, 0x82).await;
}

/// [MQTT-3.1.0-2] (3.1.1) "The Server MUST process a second CONNECT Packet sent
/// from a Client as a protocol violation and disconnect the Client."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_2_second_connect_closes_v311() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V311, "twice3").await;
    c.send(&Packet::Connect(Box::new(conn(V311, "twice3", true))))
        .await;
    expect_closed(&mut c).await;
}

/// [MQTT-3.1.2-1] A wrong Protocol Name: the Server MAY send CONNACK 0x84 and MUST
/// close the connection (it must not accept the CONNECT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_1_wrong_protocol_name_not_accepted() {
    let (_b, addr) = start_default().await;
    let mut c = RawClient::connect(addr, V311).await;
    // "MQTX", level 4, clean session, keep alive 60, client id "c1"
    c.send_bytes(&hex("10 0e 00 04 4d 51 54 58 04 02 00 3c 00 02 63 31"))
        .await;
    let seen = c.until_closed().await;
    for p in &seen {
        match p {
            Packet::ConnAck(a) if a.reason_code.is_error() => {}
            other => panic!("wrong protocol name must not be accepted: {other:?}"),
        }
    }
}

/// [MQTT-3.1.2-2] "The Server MUST respond to the CONNECT Packet with a CONNACK
/// return code 0x01 (unacceptable protocol level) and then disconnect the Client if
/// the Protocol Level is not supported by the Server."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_2_unsupported_protocol_level_connack_0x01() {
    let (_b, addr) = start_default().await;
    let mut c = RawClient::connect(addr, V311).await;
    // "MQTT" level 6
    c.send_bytes(&hex("10 0e 00 04 4d 51 54 54 06 02 00 3c 00 02 63 31"))
        .await;
    assert_eq!(raw_until_eof(&mut c).await, hex("20 02 00 01"));
}

/// [MQTT-3.1.2-3] "The Server MUST validate that the reserved flag in the CONNECT
/// Control Packet is set to zero and disconnect the Client if it is not zero."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_3_connect_reserved_flag_closes() {
    let (_b, addr) = start_default().await;
    let mut c = RawClient::connect(addr, V311).await;
    c.send_bytes(&hex("10 0e 00 04 4d 51 54 54 04 03 00 3c 00 02 63 31"))
        .await;
    expect_closed(&mut c).await;
}

/// [MQTT-3.1.2-4] (5.0) "If a CONNECT packet is received with Clean Start is set to
/// 1, the Client and Server MUST discard any existing Session and start a new
/// Session." [MQTT-3.2.2-2] Session Present is then 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_4_clean_start_discards_session() {
    let (_b, addr) = start_default().await;
    let (mut c, a) = online(addr, persistent("cs1", 60)).await;
    assert!(!a.session_present);
    sub(&mut c, "cs/t", 1).await;
    disconnect(c).await;

    let mut c2 = conn(V5, "cs1", true);
    c2.properties.session_expiry_interval = Some(60);
    let (mut c, a) = online(addr, c2).await;
    assert!(!a.session_present, "Clean Start 1 -> Session Present 0");
    sub(&mut c, "cs/sentinel", 1).await;
    let mut p = client(addr, V5, "cs-pub").await;
    publish(&mut p, at(msg("cs/t", "old-sub"), 1, 1)).await;
    publish(&mut p, at(msg("cs/sentinel", "end"), 1, 2)).await;
    let before = until_sentinel(&mut c, "end").await;
    assert!(before.is_empty(), "old subscription survived: {before:?}");
}

/// [MQTT-3.2.2-1] (3.1.1) "If the Server accepts a connection with CleanSession set
/// to 1, the Server MUST set Session Present to 0 in the CONNACK packet."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_1_clean_session_gives_session_present_0() {
    let (_b, addr) = start_default().await;
    let (c, _) = online(addr, conn(V311, "sp0", false)).await;
    disconnect(c).await;
    let (_c, a) = online(addr, conn(V311, "sp0", true)).await;
    assert!(!a.session_present);
}

/// [MQTT-3.2.2-2] "If the Server has stored Session state, it MUST set Session
/// Present to 1" and [MQTT-3.2.2-3] "If the Server does not have stored Session
/// state, it MUST set Session Present to 0".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_2_session_present_when_session_resumed() {
    let (_b, addr) = start_default().await;
    let (c, a) = online(addr, conn(V311, "sp1", false)).await;
    assert!(!a.session_present, "no stored session yet [MQTT-3.2.2-3]");
    disconnect(c).await;
    let (_c, a) = online(addr, conn(V311, "sp1", false)).await;
    assert!(a.session_present, "stored session resumed [MQTT-3.2.2-2]");
}

/// [MQTT-3.1.3-6]/[MQTT-3.1.3-7] (5.0) A zero-length ClientID gets a unique ClientID
/// assigned and returned in the Assigned Client Identifier; [MQTT-3.2.2-16] "MUST
/// be a new Client Identifier not used by any other Session".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_3_7_assigned_client_identifier_returned() {
    let (_b, addr) = start_default().await;
    let (_c1, a1) = online(addr, conn(V5, "", true)).await;
    let (_c2, a2) = online(addr, conn(V5, "", true)).await;
    let id1 = a1
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    let id2 = a2
        .properties
        .assigned_client_identifier
        .expect("Assigned Client Identifier");
    assert!(!id1.is_empty());
    assert_ne!(id1, id2, "assigned identifiers are unique");
}

/// [MQTT-3.1.3-8] (3.1.1) "If the Client supplies a zero-byte ClientId with
/// CleanSession set to 0, the Server MUST respond to the CONNECT Packet with a
/// CONNACK return code 0x02 (Identifier rejected) and then close the Network
/// Connection."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_8_empty_client_id_without_clean_session_rejected() {
    let (_b, addr) = start_default().await;
    let mut c = RawClient::connect(addr, V311).await;
    c.send(&Packet::Connect(Box::new(conn(V311, "", false))))
        .await;
    assert_eq!(raw_until_eof(&mut c).await, hex("20 02 00 02"));
}

/// [MQTT-3.1.3-6] (3.1.1) A Server MAY allow a zero-byte ClientId (with
/// CleanSession 1) and then MUST assign a unique one: the client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_6_empty_client_id_with_clean_session_accepted() {
    let (_b, addr) = start_default().await;
    let (mut c1, _) = online(addr, conn(V311, "", true)).await;
    let (mut c2, _) = online(addr, conn(V311, "", true)).await;
    // Both are served at once: they did not get the same identifier (which would
    // have taken the first one over).
    sub(&mut c1, "anon/t", 0).await;
    ping(&mut c2).await;
    ping(&mut c1).await;
}

/// [MQTT-3.1.3-5] "The Server MUST allow ClientIDs which are between 1 and 23 UTF-8
/// encoded bytes in length, and that contain only the characters
/// 0-9a-zA-Z".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_5_alphanumeric_client_ids_up_to_23_accepted() {
    let (_b, addr) = start_default().await;
    for (v, id) in [
        (V311, "a"),
        (V311, "abcdefghijKLMNOPQRST123"),
        (V5, "Z"),
        (V5, "0123456789abcdefghijXYZ"),
    ] {
        let (c, a) = open(addr, conn(v, id, true)).await;
        assert_eq!(a.reason_code, ReasonCode::SUCCESS, "{v:?} {id}");
        disconnect(c).await;
    }
}

/// [MQTT-3.1.4-2] (3.1.1) "If the ClientId represents a Client already connected to
/// the Server then the Server MUST disconnect the existing Client."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_2_existing_client_disconnected_on_takeover() {
    let (_b, addr) = start_default().await;
    let mut old = client(addr, V311, "same").await;
    let mut new = client(addr, V311, "same").await;
    expect_closed(&mut old).await;
    ping(&mut new).await;
}

/// [MQTT-3.1.4-3] (5.0) "the Server sends a DISCONNECT packet to the existing Client
/// with Reason Code of 0x8E (Session taken over) ... and MUST close the Network
/// Connection of the existing Client."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_4_3_takeover_sends_disconnect_0x8e() {
    let (_b, addr) = start_default().await;
    let mut old = client(addr, V5, "same5").await;
    let mut new = client(addr, V5, "same5").await;
    expect_disconnect(&mut old, 0x8E).await;
    ping(&mut new).await;
}

/// [MQTT-4.12.0-1] "If the Server does not support the Authentication Method
/// supplied by the Client, it MAY send a CONNACK with a Reason Code of 0x8C (Bad
/// authentication method) or 0x87 (Not Authorized) ... and MUST close the Network
/// Connection."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_12_0_1_unsupported_authentication_method_refused() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V5, "auth1", true);
    c.properties.authentication_method = Some("X-UNKNOWN".into());
    let (mut cl, a) = open(addr, c).await;
    assert!(
        [0x8C, 0x87].contains(&a.reason_code.0),
        "CONNACK {:?}",
        a.reason_code
    );
    assert!(!a.session_present, "[MQTT-3.2.2-6]");
    expect_closed(&mut cl).await;
}

/// [MQTT-4.12.0-6] "If the Client does not include an Authentication Method in the
/// CONNECT, the Client MUST NOT send an AUTH packet": doing so is a Protocol Error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_12_0_6_auth_without_method_is_protocol_error() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "auth2").await;
    c.send_bytes(&hex("f0 00")).await;
    expect_disconnect(&mut c, 0x82).await;
}

/// 5.0 3.2.2.3: the CONNACK tells the client our Receive Maximum, Maximum Packet
/// Size and Topic Alias Maximum (from the configured limits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_2_2_3_connack_announces_limits() {
    let mut cfg = test_config();
    cfg.limits.receive_maximum = 7;
    cfg.limits.max_packet_size = 4000;
    cfg.limits.topic_alias_maximum = 5;
    let (_b, addr) = start(cfg).await;
    let (_c, a) = online(addr, conn(V5, "limits", true)).await;
    assert_eq!(a.properties.receive_maximum, Some(7));
    assert_eq!(a.properties.maximum_packet_size, Some(4000));
    assert_eq!(a.properties.topic_alias_maximum, Some(5));
}

// ---------------------------------------------------------------------------------
// Keep alive
// ---------------------------------------------------------------------------------

/// [MQTT-3.1.2-24] (3.1.1) "If the Keep Alive value is non-zero and the Server does
/// not receive a Control Packet from the Client within one and a half times the
/// Keep Alive time period, it MUST disconnect the Network Connection".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_24_keep_alive_timeout_closes() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V311, "ka3", true);
    c.keep_alive = 1;
    let (mut cl, _) = online(addr, c).await;
    let t0 = Instant::now();
    // Still open at ~1 s (less than 1.5 x keep alive).
    cl.expect_silence(Duration::from_millis(1000)).await;
    expect_closed(&mut cl).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
}

/// [MQTT-3.1.2-22] (5.0) Same rule; the 5.0 server says why with DISCONNECT 0x8D
/// (Keep Alive timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_22_keep_alive_timeout_disconnect_0x8d() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V5, "ka5", true);
    c.keep_alive = 1;
    let (mut cl, _) = online(addr, c).await;
    let t0 = Instant::now();
    cl.expect_silence(Duration::from_millis(1000)).await;
    expect_disconnect(&mut cl, 0x8D).await;
    assert!(t0.elapsed() < Duration::from_secs(4));
}

/// [MQTT-3.12.4-1] "The Server MUST send a PINGRESP packet in response to a PINGREQ
/// packet"; PINGREQs keep a connection with keep alive 1 s open well past 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_12_4_1_pingreq_answered_and_keeps_alive() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V311, "pinger", true);
    c.keep_alive = 1;
    let (mut cl, _) = online(addr, c).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        ping(&mut cl).await;
    }
}

/// [MQTT-3.2.2-21]/[MQTT-3.2.2-22] (5.0) With a Server Keep Alive in CONNACK the
/// server's value is the one in force (max_keepalive = 1 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_2_2_21_server_keep_alive_returned_and_used() {
    let mut cfg = test_config();
    cfg.limits.max_keepalive = 1;
    let (_b, addr) = start(cfg).await;
    let mut c = conn(V5, "ska", true);
    c.keep_alive = 30;
    let (mut cl, a) = online(addr, c).await;
    assert_eq!(a.properties.server_keep_alive, Some(1));
    let t0 = Instant::now();
    expect_disconnect(&mut cl, 0x8D).await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "server keep alive not used"
    );
}

// ---------------------------------------------------------------------------------
// PUBLISH and the QoS flows
// ---------------------------------------------------------------------------------

/// [MQTT-4.3.1-1] QoS 0: delivered once at most, with no packet id, DUP 0
/// ([MQTT-3.3.1-2] "The DUP flag MUST be set to 0 for all QoS 0 messages").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_1_qos0_delivered_without_packet_id() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "q0s").await;
    sub(&mut s, "q0/t", 2).await;
    let mut p = client(addr, V311, "q0p").await;
    publish(&mut p, msg("q0/t", "hello")).await;
    let got = next_pub(&mut s).await;
    assert_eq!(got.qos, QoS::AtMostOnce);
    assert_eq!(got.packet_id, None);
    assert!(!got.dup);
    assert_eq!(text(&got), "hello");
    assert_eq!(got.topic, "q0/t");
}

/// [MQTT-4.3.2-2] (3.1.1) / [MQTT-4.3.2-4] (5.0) "the receiver MUST respond with a
/// PUBACK packet containing the Packet Identifier from the incoming PUBLISH".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_2_2_qos1_puback_carries_packet_id() {
    let (_b, addr) = start_default().await;
    for (v, id) in [(V311, "pa3"), (V5, "pa5")] {
        let mut c = client(addr, v, id).await;
        c.send(&Packet::Publish(at(msg("pa/t", "x"), 1, 4242)))
            .await;
        match c.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.packet_id, pid(4242), "{v:?}");
                assert!(!a.reason_code.is_error());
            }
            other => panic!("{v:?}: expected PUBACK, got {other:?}"),
        }
    }
}

/// [MQTT-4.3.3-2] (3.1.1) / [MQTT-4.3.3-8], [MQTT-4.3.3-11] (5.0) QoS 2 receiver:
/// PUBREC with the packet id, then PUBCOMP with the id of the PUBREL; the message
/// reaches subscribers once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_3_2_qos2_pubrec_pubrel_pubcomp() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "q2s").await;
    sub(&mut s, "q2/t", 2).await;
    let mut p = client(addr, V311, "q2p").await;
    p.send(&Packet::Publish(at(msg("q2/t", "two"), 2, 300)))
        .await;
    match p.recv().await {
        Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, pid(300)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    p.send(&Packet::PubRel(PubResponse::success(pid(300))))
        .await;
    match p.recv().await {
        Some(Packet::PubComp(r)) => assert_eq!(r.packet_id, pid(300)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    publish(&mut p, msg("q2/t", "end")).await;
    let got = until_sentinel(&mut s, "end").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(text(&got[0]), "two");
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
}

/// [MQTT-4.3.3-10] (5.0) "Until it has received the corresponding PUBREL packet,
/// the receiver MUST acknowledge any subsequent PUBLISH packet with the same Packet
/// Identifier by sending a PUBREC. It MUST NOT cause duplicate messages to be
/// delivered to any onward recipients in this case."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_3_3_10_resent_qos2_publish_not_delivered_twice() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "dq2s").await;
    sub(&mut s, "dq2/t", 2).await;
    let mut p = client(addr, V5, "dq2p").await;
    let m = at(msg("dq2/t", "once"), 2, 7);
    p.send(&Packet::Publish(m.clone())).await;
    let mut again = m;
    again.dup = true;
    p.send(&Packet::Publish(again)).await;
    for _ in 0..2 {
        match p.recv().await {
            Some(Packet::PubRec(r)) => assert_eq!(r.packet_id, pid(7)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    p.send(&Packet::PubRel(PubResponse::success(pid(7)))).await;
    match p.recv().await {
        Some(Packet::PubComp(r)) => assert_eq!(r.packet_id, pid(7)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    publish(&mut p, msg("dq2/t", "end")).await;
    let got = until_sentinel(&mut s, "end").await;
    assert_eq!(got.len(), 1, "delivered {} times: {got:?}", got.len());
}

/// [MQTT-4.3.3-12] (5.0) "After it has sent a PUBCOMP, the receiver MUST treat any
/// subsequent PUBLISH packet that contains that Packet Identifier as being a new
/// Application Message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_3_3_12_packet_id_is_new_after_pubcomp() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "r2s").await;
    sub(&mut s, "r2/t", 2).await;
    let mut p = client(addr, V5, "r2p").await;
    publish(&mut p, at(msg("r2/t", "first"), 2, 9)).await;
    publish(&mut p, at(msg("r2/t", "second"), 2, 9)).await;
    publish(&mut p, msg("r2/t", "end")).await;
    let got: Vec<String> = until_sentinel(&mut s, "end")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(got, ["first", "second"]);
}

/// [MQTT-4.3.2-5] (5.0) / [MQTT-4.3.2-2] (3.1.1) "After it has sent a PUBACK packet
/// the receiver MUST treat any incoming PUBLISH packet that contains the same Packet
/// Identifier as being a new Application Message, irrespective of the setting of its
/// DUP flag."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_3_2_5_packet_id_is_new_after_puback() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "r1s").await;
    sub(&mut s, "r1/t", 1).await;
    let mut p = client(addr, V5, "r1p").await;
    publish(&mut p, at(msg("r1/t", "first"), 1, 5)).await;
    let mut dup = at(msg("r1/t", "second"), 1, 5);
    dup.dup = true;
    publish(&mut p, dup).await;
    publish(&mut p, msg("r1/t", "end")).await;
    let got: Vec<String> = until_sentinel(&mut s, "end")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(got, ["first", "second"]);
}

/// 5.0 3.7.2.1 / [MQTT-4.3.3-11]: PUBREL for an id the server does not hold is still
/// answered with PUBCOMP carrying that id (Reason Code 0x92, Packet Identifier not
/// found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_3_3_11_pubrel_for_unknown_id_gets_pubcomp_0x92() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "unk").await;
    c.send(&Packet::PubRel(PubResponse::success(pid(55)))).await;
    match c.recv().await {
        Some(Packet::PubComp(r)) => {
            assert_eq!(r.packet_id, pid(55));
            assert_eq!(r.reason_code.0, 0x92);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

/// [MQTT-4.3.3-1] (3.1.1) QoS 2 sender (the server towards a subscriber): PUBLISH
/// with QoS 2 and DUP 0, PUBREL with the same id after PUBREC, done after PUBCOMP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_3_1_server_qos2_sender_flow() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "o2s").await;
    sub(&mut s, "o2/t", 2).await;
    let mut p = client(addr, V311, "o2p").await;
    publish(&mut p, at(msg("o2/t", "a"), 2, 1)).await;
    let got = next_pub(&mut s).await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    assert!(!got.dup);
    let id = got.packet_id.expect("packet id");
    s.send(&Packet::PubRec(PubResponse::success(id))).await;
    match s.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    s.send(&Packet::PubComp(PubResponse::success(id))).await;
    // The flow is finished: nothing is re-sent.
    publish(&mut p, msg("o2/t", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

/// [MQTT-4.3.2-1] (3.1.1) QoS 1 sender: each unacknowledged PUBLISH gets a distinct
/// unused non-zero Packet Identifier, sent with DUP 0 ([MQTT-2.3.1-1]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_2_1_server_assigns_distinct_packet_ids() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "ids").await;
    sub(&mut s, "ids/t", 1).await;
    let mut p = client(addr, V311, "idp").await;
    for i in 1..=5u16 {
        publish(&mut p, at(msg("ids/t", &i.to_string()), 1, i)).await;
    }
    let mut ids = BTreeSet::new();
    for _ in 0..5 {
        let got = next_pub(&mut s).await;
        assert!(!got.dup);
        assert_eq!(got.qos, QoS::AtLeastOnce);
        ids.insert(got.packet_id.expect("packet id").get());
    }
    assert_eq!(ids.len(), 5, "unacknowledged ids must be distinct: {ids:?}");
}

/// [MQTT-3.3.1-3] "The DUP flag in the outgoing PUBLISH packet is set independently
/// to the incoming PUBLISH packet, its value MUST be determined solely by whether
/// the outgoing PUBLISH packet is a retransmission."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_3_dup_flag_not_propagated() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "dups").await;
    sub(&mut s, "dup/t", 1).await;
    let mut p = client(addr, V311, "dupp").await;
    let mut m = at(msg("dup/t", "d"), 1, 3);
    m.dup = true;
    publish(&mut p, m).await;
    let got = next_pub(&mut s).await;
    assert!(!got.dup, "DUP was propagated");
}

/// [MQTT-3.8.4-6] (3.1.1) / [MQTT-3.8.4-8] (5.0) "The QoS of Payload Messages sent in
/// response to a Subscription MUST be the minimum of the QoS of the originally
/// published message and the maximum QoS granted by the Server."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_6_delivery_qos_is_minimum() {
    let (_b, addr) = start_default().await;
    let mut s1 = client(addr, V311, "min1").await;
    sub(&mut s1, "min/t", 1).await;
    let mut s2 = client(addr, V311, "min2").await;
    sub(&mut s2, "min/t", 2).await;
    let mut p = client(addr, V311, "minp").await;
    publish(&mut p, at(msg("min/t", "q2"), 2, 1)).await;
    publish(&mut p, at(msg("min/t", "q1"), 1, 2)).await;
    publish(&mut p, msg("min/t", "end")).await;
    let a = until_sentinel(&mut s1, "end").await;
    let b = until_sentinel(&mut s2, "end").await;
    let qa: Vec<_> = a.iter().map(|p| p.qos.as_u8()).collect();
    let qb: Vec<_> = b.iter().map(|p| p.qos.as_u8()).collect();
    assert_eq!(qa, [1, 1], "subscriber granted QoS 1");
    assert_eq!(qb, [2, 1], "subscriber granted QoS 2");
}

/// [MQTT-4.6.0-6] "it MUST send PUBLISH packets to consumers (for the same Topic
/// and QoS) in the order that they were received from any given Client."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_6_0_6_ordered_delivery_per_topic_and_qos() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "ords").await;
    sub(&mut s, "ord/#", 1).await;
    let mut p = client(addr, V311, "ordp").await;
    // Pipelined, without waiting for acknowledgements.
    for i in 1..=40u16 {
        p.send(&Packet::Publish(at(msg("ord/q1", &i.to_string()), 1, i)))
            .await;
        p.send(&Packet::Publish(msg("ord/q0", &i.to_string())))
            .await;
    }
    // QoS 0 may overtake QoS 1 messages waiting for the inflight window; order is
    // only promised per topic and QoS, so collect both streams in full.
    let mut q1 = Vec::new();
    let mut q0 = Vec::new();
    for _ in 0..200 {
        if q1.len() == 40 && q0.len() == 40 {
            break;
        }
        let m = next_pub(&mut s).await;
        ack(&mut s, &m).await;
        match m.topic.as_str() {
            "ord/q1" => q1.push(text(&m)),
            "ord/q0" => q0.push(text(&m)),
            t => panic!("unexpected topic {t}"),
        }
    }
    let want: Vec<String> = (1..=40).map(|i: u32| i.to_string()).collect();
    assert_eq!(q1, want, "QoS 1 order");
    assert_eq!(q0, want, "QoS 0 order");
}

/// [MQTT-3.3.5-1] (3.1.1) / [MQTT-3.3.4-2] (5.0) Overlapping subscriptions: "the
/// Server MUST deliver the message to the Client respecting the maximum QoS of all
/// the matching subscriptions."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_5_1_overlapping_subscriptions_max_qos() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "ovs").await;
    let codes = subscribe_with(&mut s, 2, &[("ov/+", opts(0)), ("ov/#", opts(1))], None).await;
    assert_eq!(codes, [0, 1]);
    let mut p = client(addr, V311, "ovp").await;
    publish(&mut p, at(msg("ov/a", "x"), 1, 1)).await;
    publish(&mut p, msg("ov/end", "end")).await;
    let got = until_sentinel(&mut s, "end").await;
    assert!(!got.is_empty(), "not delivered");
    assert!(
        got.iter().any(|m| m.qos == QoS::AtLeastOnce),
        "no copy at the maximum QoS 1: {got:?}"
    );
}

/// [MQTT-3.3.2-2] / [MQTT-4.7.1-1] "The Topic Name in the PUBLISH packet MUST NOT
/// contain wildcard characters": the server closes the connection (5.0: 0x90 Topic
/// Name invalid, or 0x82 Protocol Error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_2_wildcard_in_topic_name_closes() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "wild5").await;
    c.send(&Packet::Publish(msg("a/#", "x"))).await;
    expect_disconnect_one_of(&mut c, &[0x90, 0x82]).await;
    let mut c = client(addr, V311, "wild3").await;
    c.send(&Packet::Publish(msg("a/+/b", "x"))).await;
    expect_closed(&mut c).await;
}

/// [MQTT-3.3.1-4] "A PUBLISH Packet MUST NOT have both QoS bits set to 1. If a
/// Server or Client receives a PUBLISH Packet which has both QoS bits set to 1 it
/// MUST close the Network Connection."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_4_qos3_publish_closes() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V311, "qos3").await;
    c.send_bytes(&hex("36 05 00 01 61 00 01")).await;
    expect_closed(&mut c).await;
}

/// [MQTT-3.3.4-6] (5.0) "A PUBLISH packet sent from a Client to a Server MUST NOT
/// contain a Subscription Identifier." (Protocol Error, 0x82)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_4_6_subscription_identifier_from_client_is_protocol_error() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "sidpub").await;
    let mut m = msg("sid/t", "x");
    m.properties.subscription_identifiers = vec![3];
    c.send(&Packet::Publish(m)).await;
    expect_disconnect(&mut c, 0x82).await;
}

/// 5.0 3.3.2.3.2: a PUBLISH whose Payload Format Indicator says UTF-8 but whose
/// payload is not may be refused with PUBACK 0x99 (Payload format invalid); it is
/// then not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_3_2_invalid_utf8_payload_refused_0x99() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "pfis").await;
    sub(&mut s, "pfi/t", 1).await;
    let mut p = client(addr, V5, "pfip").await;
    let mut m = at(msg("pfi/t", ""), 1, 8);
    m.payload = Bytes::from_static(&[0xff, 0xfe]);
    m.properties.payload_format_indicator = Some(1);
    p.send(&Packet::Publish(m)).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => {
            assert_eq!(a.packet_id, pid(8));
            assert_eq!(a.reason_code.0, 0x99);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    publish(&mut p, msg("pfi/t", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

/// Issue 16 (4): a v5 QoS 1/2 message that matched no subscription was
/// acknowledged with 0x00. 5.0 section 3.4.2.1 / 3.5.2.1: 0x10 No matching
/// subscribers ("The message is accepted but there are no subscribers"), which
/// is not an error: the QoS 2 flow goes on. With a subscriber: 0x00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_4_2_1_no_matching_subscribers_0x10() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "nmp").await;
    p.send(&Packet::Publish(at(msg("nm/t", "x"), 1, 1))).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!((a.packet_id, a.reason_code.0), (pid(1), 0x10)),
        other => panic!("expected PUBACK 0x10, got {other:?}"),
    }
    p.send(&Packet::Publish(at(msg("nm/t", "x"), 2, 2))).await;
    match p.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!((a.packet_id, a.reason_code.0), (pid(2), 0x10)),
        other => panic!("expected PUBREC 0x10, got {other:?}"),
    }
    p.send(&Packet::PubRel(PubResponse::success(pid(2)))).await;
    match p.recv().await {
        Some(Packet::PubComp(c)) => assert_eq!((c.packet_id, c.reason_code.0), (pid(2), 0)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    let mut s = client(addr, V5, "nms").await;
    sub(&mut s, "nm/t", 1).await;
    for (q, id) in [(1, 3), (2, 4)] {
        p.send(&Packet::Publish(at(msg("nm/t", "y"), q, id))).await;
        match p.recv().await {
            Some(Packet::PubAck(a) | Packet::PubRec(a)) => {
                assert_eq!((a.packet_id, a.reason_code.0), (pid(id), 0), "QoS {q}")
            }
            other => panic!("expected PUBACK / PUBREC 0x00, got {other:?}"),
        }
    }
}

/// Issue 16 (3): an acknowledgement of the wrong kind (PUBREC or PUBCOMP for a
/// QoS 1 delivery, PUBACK for a QoS 2 one) was ignored (3.1.1) or answered with
/// PUBREL 0x92 (5.0). It is a protocol error: the connection closes (3.1.1
/// [MQTT-4.8.0-1]; 5.0 after DISCONNECT 0x82) and the delivery stays
/// unacknowledged ([MQTT-4.3.2-1] / [MQTT-4.3.3-1]): sent again, DUP 1, on
/// the next connection [MQTT-4.4.0-1]. The wrong acks are raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_ack_of_the_wrong_kind_closes_and_leaves_the_delivery_unacknowledged() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "wkp").await;
    let mut n = 0u16;
    for v in [V311, V5] {
        // (QoS of the delivery, the wrong ack's first byte)
        for (q, first) in [(1u8, 0x50u8), (1, 0x70), (2, 0x40)] {
            n += 1;
            let (id, topic) = (format!("wk{n}"), format!("wk/{n}"));
            let session = || {
                let mut c = conn(v, &id, false);
                c.properties.session_expiry_interval = (v == V5).then_some(60);
                c
            };
            let (mut s, _) = online(addr, session()).await;
            sub(&mut s, &topic, q).await;
            publish(&mut p, at(msg(&topic, "m"), q, n)).await;
            let got = next_pub(&mut s).await;
            let pid = got.packet_id.expect("packet id").get().to_be_bytes();
            s.send_bytes(&[first, 0x02, pid[0], pid[1]]).await;
            let seen = s.until_closed().await;
            let what = format!("{v:?} QoS {q} answered with 0x{first:02x}");
            match (v, seen.as_slice()) {
                (V5, [Packet::Disconnect(d)]) => assert_eq!(d.reason_code.0, 0x82, "{what}"),
                (V311, []) => {}
                _ => panic!("{what}: expected a close, got {seen:?}"),
            }
            let (mut s, a) = online(addr, session()).await;
            assert!(a.session_present, "{what}");
            let again = next_pub(&mut s).await;
            assert_eq!(
                (again.packet_id, again.dup, text(&again)),
                (got.packet_id, true, "m".to_string()),
                "{what}: still unacknowledged"
            );
            ack(&mut s, &again).await;
            if q == 2 {
                match s.recv().await {
                    Some(Packet::PubRel(r)) => {
                        s.send(&Packet::PubComp(PubResponse::success(r.packet_id)))
                            .await
                    }
                    other => panic!("{what}: expected PUBREL, got {other:?}"),
                }
            }
            disconnect(s).await;
        }
    }
}

// ---------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE and topic matching
// ---------------------------------------------------------------------------------

/// [MQTT-3.8.4-1] "When the Server receives a SUBSCRIBE packet from a Client, the
/// Server MUST respond with a SUBACK packet" and [MQTT-3.8.4-2] "The SUBACK packet
/// MUST have the same Packet Identifier as the SUBSCRIBE packet".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_2_suback_has_subscribe_packet_id() {
    let (_b, addr) = start_default().await;
    for v in [V311, V5] {
        let mut c = client(addr, v, "subid").await;
        let codes = subscribe_with(&mut c, 0xBEEF, &[("x/y", opts(1))], None).await;
        assert_eq!(codes, [1], "{v:?}");
    }
}

/// [MQTT-3.9.3-1] "The order of Reason Codes in the SUBACK packet MUST match the
/// order of Topic Filters in the SUBSCRIBE packet"; [MQTT-3.8.4-5] (3.1.1) one
/// return code per filter; well-formed filters this server does not accept
/// (over `max_topic_levels`) fail alone (3.1.1 0x80, 5.0 0x8F). (Malformed
/// filters close the connection: see `mqtt_4_7_1_malformed_filter_closes`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_9_3_1_suback_codes_in_filter_order() {
    let (_b, addr) = start_default().await;
    let deep = "x/".repeat(40) + "#";
    let deeper = "+/".repeat(40) + "y";
    for (v, bad) in [(V311, 0x80), (V5, 0x8F)] {
        let mut c = client(addr, v, "order").await;
        let codes = subscribe_with(
            &mut c,
            3,
            &[
                ("a/b", opts(2)),
                (&deep, opts(0)),
                ("c/+", opts(1)),
                (&deeper, opts(0)),
                ("d/#", opts(0)),
            ],
            None,
        )
        .await;
        assert_eq!(codes, [2, bad, 1, bad, 0], "{v:?}");
    }
}

/// [MQTT-4.7.3-1] "All Topic Names and Topic Filters MUST be at least one character
/// long": an empty filter makes the SUBSCRIBE malformed; the connection closes
/// (3.1.1 [MQTT-4.8.0-1]; 5.0 after DISCONNECT 0x8F) instead of a SUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_3_1_empty_topic_filter_closes() {
    let (_b, addr) = start_default().await;
    for v in [V311, V5] {
        let mut c = client(addr, v, "empty").await;
        send_subscribe(&mut c, 4, &[("", opts(0)), ("ok", opts(0))], None).await;
        expect_filter_refused(&mut c).await;
    }
}

/// Issue 16 (2): a malformed filter (`#` not last, `+` not a whole level, empty;
/// 3.1.1 [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1], 5.0 [MQTT-4.7.1-1/2]) in
/// SUBSCRIBE or UNSUBSCRIBE was answered (SUBACK 0x80 / 0x8F, even a plain
/// UNSUBACK on 3.1.1) with the connection kept. The packet is malformed: close
/// (3.1.1 [MQTT-4.8.0-1]), on 5.0 after DISCONNECT 0x8F. Raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_1_malformed_filter_closes() {
    let (_b, addr) = start_default().await;
    #[rustfmt::skip]
    let cases = [
        ("SUBSCRIBE #/a", V311, "82 08 00 01 00 03 23 2f 61 00"),
        ("SUBSCRIBE #/a", V5, "82 09 00 01 00 00 03 23 2f 61 00"),
        ("SUBSCRIBE a+ after a good filter", V311, "82 0b 00 01 00 01 62 00 00 02 61 2b 00"),
        ("SUBSCRIBE a+", V5, "82 08 00 01 00 00 02 61 2b 00"),
        ("UNSUBSCRIBE #/a", V311, "a2 07 00 01 00 03 23 2f 61"),
        ("UNSUBSCRIBE #/a", V5, "a2 08 00 01 00 00 03 23 2f 61"),
        ("UNSUBSCRIBE empty", V311, "a2 04 00 01 00 00"),
        ("UNSUBSCRIBE $share/g", V5, "a2 0d 00 01 00 00 08 24 73 68 61 72 65 2f 67"),
    ];
    for (what, v, bytes) in cases {
        let mut c = client(addr, v, "malf").await;
        c.send_bytes(&hex(bytes)).await;
        let seen = c.until_closed().await;
        match (v, seen.as_slice()) {
            (V5, [Packet::Disconnect(d)]) => {
                assert_eq!(d.reason_code.0, 0x8F, "{what} {v:?}")
            }
            (V311, []) => {}
            _ => panic!("{what} {v:?}: expected a close, got {seen:?}"),
        }
    }
}

/// [MQTT-4.7.1-2] The multi-level wildcard matches the parent level and any number
/// of child levels ("sport/tennis/player1/#" matches "sport/tennis/player1").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_1_2_multi_level_wildcard_matching() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "mlw").await;
    sub(&mut s, "sport/tennis/player1/#", 0).await;
    let mut p = client(addr, V311, "mlwp").await;
    for t in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
        "sport/tennis/player2",
        "sport/tennis",
        "sport/tennis/player1x",
    ] {
        publish(&mut p, msg(t, t)).await;
    }
    publish(&mut p, msg("sport/tennis/player1/z", "end")).await;
    let got: Vec<String> = until_sentinel(&mut s, "end")
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(
        got,
        [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon"
        ]
    );
}

/// [MQTT-4.7.1-3] The single-level wildcard matches exactly one level, including an
/// empty one ("sport/+" matches "sport/" but not "sport"; "+/finance" matches
/// "/finance").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_1_3_single_level_wildcard_matching() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "slw").await;
    let codes = subscribe_with(
        &mut s,
        1,
        &[
            ("sport/tennis/+", opts(0)),
            ("+/finance", opts(0)),
            ("sport/+", opts(0)),
        ],
        None,
    )
    .await;
    assert_eq!(codes, [0, 0, 0]);
    let mut p = client(addr, V311, "slwp").await;
    for t in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport",
        "sport/",
        "/finance",
        "finance",
    ] {
        publish(&mut p, msg(t, t)).await;
    }
    publish(&mut p, msg("sport/tennis/end", "end")).await;
    let got: Vec<String> = until_sentinel(&mut s, "end")
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(got, ["sport/tennis/player1", "sport/", "/finance"]);
}

/// [MQTT-4.7.2-1] "The Server MUST NOT match Topic Filters starting with a wildcard
/// character (# or +) with Topic Names beginning with a $ character."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard() {
    let (_b, addr) = start_default().await;
    let mut wild = client(addr, V311, "dollarw").await;
    let codes = subscribe_with(
        &mut wild,
        1,
        &[("#", opts(0)), ("+/monitor/Clients", opts(0))],
        None,
    )
    .await;
    assert_eq!(codes, [0, 0]);
    let mut exact = client(addr, V311, "dollarx").await;
    sub(&mut exact, "$test/#", 0).await;
    let mut p = client(addr, V311, "dollarp").await;
    publish(&mut p, msg("$test/monitor/Clients", "dollar")).await;
    publish(&mut p, msg("x/monitor/Clients", "end")).await;
    let got = until_sentinel(&mut wild, "end").await;
    assert!(got.is_empty(), "$ topic matched a wildcard filter: {got:?}");
    let got = next_pub(&mut exact).await;
    assert_eq!(got.topic, "$test/monitor/Clients", "$test/# matches");
}

/// Issue 16 (5): clients could publish into `$SYS/`, the server's own tree
/// (4.7.2: "$SYS/ has been widely adopted as a prefix to topics that contain
/// Server-specific information"), so they could forge what Tern will publish
/// there. Refused: v5 PUBACK / PUBREC 0x87 Not authorized; 3.1.1 has no
/// negative ack, so the flow completes and the message is dropped; each counted
/// in `sys_publish_denied`. A Will into `$SYS` is refused with the CONNECT.
/// `$SYSTEM/...` is not the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_2_client_publish_into_sys_refused() {
    let (b, addr) = start_default().await;
    let mut w = client(addr, V5, "sysw").await;
    let codes = subscribe_with(
        &mut w,
        1,
        &[
            ("$SYS/#", opts(1)),
            ("$SYSTEM/#", opts(1)),
            ("sys/end", opts(1)),
        ],
        None,
    )
    .await;
    assert_eq!(codes, [1, 1, 1]);
    let mut p5 = client(addr, V5, "sysp5").await;
    p5.send(&Packet::Publish(msg("$SYS/broker/uptime", "forged")))
        .await;
    for (q, id) in [(1u8, 1u16), (2, 2)] {
        p5.send(&Packet::Publish(at(
            msg("$SYS/broker/uptime", "forged"),
            q,
            id,
        )))
        .await;
        match p5.recv().await {
            Some(Packet::PubAck(a) | Packet::PubRec(a)) => {
                assert_eq!((a.packet_id, a.reason_code.0), (pid(id), 0x87), "QoS {q}")
            }
            other => panic!("expected 0x87, got {other:?}"),
        }
    }
    let mut p3 = client(addr, V311, "sysp3").await;
    publish(&mut p3, msg("$SYS", "forged")).await;
    publish(&mut p3, at(msg("$SYS/x", "forged"), 1, 3)).await;
    publish(&mut p3, at(msg("$SYS/x", "forged"), 2, 4)).await;
    publish(&mut p3, at(msg("$SYSTEM/x", "mine"), 1, 5)).await;
    publish(&mut p3, at(msg("sys/end", "end"), 1, 6)).await;
    let got = until_sentinel(&mut w, "end").await;
    // The broker's own $SYS tree arrives too; nothing forged does.
    let topics: Vec<&str> = got
        .iter()
        .filter(|p| !p.topic.starts_with("$SYS/broker/") || &p.payload[..] == b"forged")
        .map(|p| p.topic.as_str())
        .collect();
    assert_eq!(topics, ["$SYSTEM/x"], "nothing published into $SYS");
    let denied = b
        .metrics()
        .sys_publish_denied
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(denied, 6, "every refusal counted");
    for v in [V311, V5] {
        let mut c = conn(v, "sysw-will", true);
        c.will = Some(will("$SYS/broker/clients", "forged", 0, false));
        let (_, a) = open(addr, c).await;
        // 0x87 Not authorized; 3.1.1's 0x05 reads as 0x87.
        assert_eq!(a.reason_code.0, 0x87, "{v:?}: a Will into $SYS");
    }
}

/// [MQTT-4.7.3-4] "When it performs subscription matching the Server MUST NOT
/// perform any normalization of Topic Names or Topic Filters": matching is
/// case-sensitive and byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_3_4_no_topic_normalization() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "norm").await;
    sub(&mut s, "ACCOUNTS/é", 0).await;
    let mut p = client(addr, V311, "normp").await;
    publish(&mut p, msg("accounts/é", "lower")).await;
    publish(&mut p, msg("ACCOUNTS/e\u{301}", "decomposed")).await;
    publish(&mut p, msg("ACCOUNTS/é/", "trailing")).await;
    publish(&mut p, msg("ACCOUNTS/é", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

/// [MQTT-3.8.4-3] "If a Server receives a SUBSCRIBE Packet containing a Topic Filter
/// that is identical to an existing Subscription's Topic Filter then it MUST
/// completely replace that existing Subscription with a new Subscription."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_3_identical_filter_replaces_subscription() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "reps").await;
    sub(&mut s, "rep/t", 0).await;
    let codes = subscribe_with(&mut s, 2, &[("rep/t", opts(1))], None).await;
    assert_eq!(codes, [1]);
    let mut p = client(addr, V311, "repp").await;
    publish(&mut p, at(msg("rep/t", "x"), 1, 1)).await;
    publish(&mut p, msg("rep/t", "end")).await;
    let got = until_sentinel(&mut s, "end").await;
    assert_eq!(got.len(), 1, "one subscription, one copy: {got:?}");
    assert_eq!(got[0].qos, QoS::AtLeastOnce, "the new QoS applies");
}

/// [MQTT-3.8.4-3] (3.1.1) "Any existing retained messages matching the Topic Filter
/// MUST be re-sent" when a subscription is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_3_resubscribe_resends_retained() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V311, "rrp").await;
    publish(&mut p, retained(at(msg("rr/t", "kept"), 1, 1))).await;
    let mut s = client(addr, V311, "rrs").await;
    for round in 0..2 {
        sub(&mut s, "rr/t", 1).await;
        let got = next_pub(&mut s).await;
        ack(&mut s, &got).await;
        assert_eq!(text(&got), "kept", "round {round}");
        assert!(got.retain, "round {round}");
    }
}

/// [MQTT-3.10.4-4] "The Server MUST respond to an UNSUBSCRIBE request by sending an
/// UNSUBACK packet ... with the same Packet Identifier" and [MQTT-3.10.4-5] "Even
/// where no Topic Subscriptions are deleted, the Server MUST respond with an
/// UNSUBACK."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_10_4_5_unsuback_even_without_subscription() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V311, "unsub").await;
    let codes = unsubscribe(&mut c, 777, &["never/subscribed"]).await;
    assert!(codes.is_empty(), "3.1.1 UNSUBACK has no payload");
}

/// [MQTT-3.11.3-1] (5.0) One UNSUBACK Reason Code per Topic Filter, in order:
/// 0x00 Success, 0x11 No subscription existed. [MQTT-3.10.4-6] one UNSUBACK for
/// several filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_11_3_1_unsuback_reason_code_per_filter() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "unsub5").await;
    let codes = subscribe_with(&mut c, 1, &[("u/a", opts(0)), ("u/c/#", opts(1))], None).await;
    assert_eq!(codes, [0, 1]);
    let codes = unsubscribe(&mut c, 2, &["u/a", "u/b", "u/c/#"]).await;
    assert_eq!(codes, [0x00, 0x11, 0x00]);
    ping(&mut c).await; // a single UNSUBACK: the next packet is our PINGRESP
}

/// [MQTT-3.10.4-2] "If a Server deletes a Subscription It MUST stop adding any new
/// messages for delivery to the Client."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_10_4_2_unsubscribe_stops_delivery() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "uss").await;
    sub(&mut s, "us/t", 1).await;
    sub(&mut s, "us/end", 0).await;
    unsubscribe(&mut s, 9, &["us/t"]).await;
    let mut p = client(addr, V311, "usp").await;
    publish(&mut p, at(msg("us/t", "after"), 1, 1)).await;
    publish(&mut p, msg("us/end", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

/// [MQTT-3.10.4-1] "The Topic Filters ... MUST be compared character-by-character
/// with the current set of Topic Filters held by the Server": unsubscribing
/// "lit/a" leaves "lit/+" in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_10_4_1_unsubscribe_compares_filters_literally() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "lits").await;
    sub(&mut s, "lit/+", 0).await;
    let codes = unsubscribe(&mut s, 2, &["lit/a"]).await;
    assert_eq!(codes, [0x11]);
    let mut p = client(addr, V5, "litp").await;
    publish(&mut p, msg("lit/a", "still")).await;
    assert_eq!(text(&next_pub(&mut s).await), "still");
}

/// [MQTT-3.8.3-3] (5.0) No Local: "Application Messages MUST NOT be forwarded to a
/// connection with a ClientID equal to the ClientID of the publishing connection."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_8_3_3_no_local() {
    let (_b, addr) = start_default().await;
    let mut me = client(addr, V5, "nl").await;
    let o = SubscriptionOptions {
        no_local: true,
        ..opts(1)
    };
    assert_eq!(subscribe_with(&mut me, 1, &[("nl/t", o)], None).await, [1]);
    publish(&mut me, at(msg("nl/t", "mine"), 1, 2)).await;
    let mut other = client(addr, V5, "nlo").await;
    publish(&mut other, msg("nl/t", "end")).await;
    assert!(until_sentinel(&mut me, "end").await.is_empty());
}

// ---------------------------------------------------------------------------------
// Retained messages
// ---------------------------------------------------------------------------------

/// [MQTT-3.3.1-5] (3.1.1) "the Server MUST store the Application Message and its
/// QoS, so that it can be delivered to future subscribers"; [MQTT-3.3.1-6] (3.1.1)
/// "When a new subscription is established, the last retained message ... MUST be
/// sent to the subscriber", [MQTT-3.3.1-8] with RETAIN 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_5_retained_message_sent_to_new_subscriber() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V311, "retp").await;
    publish(&mut p, retained(at(msg("ret/a", "r1"), 2, 1))).await;
    let mut s = client(addr, V311, "rets").await;
    sub(&mut s, "ret/#", 1).await;
    let got = next_pub(&mut s).await;
    assert_eq!(text(&got), "r1");
    assert_eq!(got.topic, "ret/a");
    assert!(got.retain, "[MQTT-3.3.1-8] RETAIN 1 on subscribe");
    assert_eq!(got.qos, QoS::AtLeastOnce, "min(stored QoS 2, granted 1)");
}

/// [MQTT-3.3.1-5] (5.0) "the Server MUST replace any existing retained message for
/// this topic and store the Application Message".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_5_retained_message_replaces() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "repl").await;
    publish(&mut p, retained(at(msg("rp/t", "old"), 1, 1))).await;
    publish(&mut p, retained(at(msg("rp/t", "new"), 1, 2))).await;
    let mut s = client(addr, V5, "repls").await;
    sub(&mut s, "rp/t", 1).await;
    publish(&mut p, msg("rp/t", "end")).await;
    let got: Vec<String> = until_sentinel(&mut s, "end")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(got, ["new"]);
}

/// [MQTT-3.3.1-10]/[MQTT-3.3.1-11] (3.1.1) A retained PUBLISH with an empty payload
/// is delivered as normal, removes the retained message, and is not itself stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_10_empty_retained_message_clears() {
    let (_b, addr) = start_default().await;
    let mut live = client(addr, V311, "clrl").await;
    sub(&mut live, "clr/t", 0).await;
    let mut p = client(addr, V311, "clrp").await;
    publish(&mut p, retained(at(msg("clr/t", "x"), 1, 1))).await;
    publish(&mut p, retained(at(msg("clr/t", ""), 1, 2))).await;
    publish(&mut p, msg("clr/t", "end")).await;
    let got: Vec<String> = until_sentinel(&mut live, "end")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(got, ["x", ""], "the empty message is delivered as normal");
    let mut s = client(addr, V311, "clrs").await;
    sub(&mut s, "clr/t", 1).await;
    publish(&mut p, msg("clr/t", "end2")).await;
    let got = until_sentinel(&mut s, "end2").await;
    assert!(got.is_empty(), "retained message not cleared: {got:?}");
}

/// [MQTT-3.3.1-12] (3.1.1) / [MQTT-3.3.1-8] (5.0) "If the RETAIN flag is 0 ... the
/// Server MUST NOT store the message and MUST NOT remove or replace any existing
/// retained message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_12_retain_0_leaves_retained_message() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V311, "keepp").await;
    publish(&mut p, retained(at(msg("kp/t", "keep"), 1, 1))).await;
    publish(&mut p, at(msg("kp/t", "live"), 1, 2)).await;
    publish(&mut p, at(msg("kp/t", ""), 1, 3)).await;
    let mut s = client(addr, V311, "keeps").await;
    sub(&mut s, "kp/t", 1).await;
    publish(&mut p, msg("kp/t", "end")).await;
    let got: Vec<String> = until_sentinel(&mut s, "end")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(got, ["keep"]);
}

/// [MQTT-3.3.1-7] (3.1.1) "If the Server receives a QoS 0 message with the RETAIN
/// flag set to 1 it MUST discard any message previously retained for that topic."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_7_qos0_retained_discards_previous() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V311, "r0p").await;
    publish(&mut p, retained(at(msg("r0/t", "old"), 1, 1))).await;
    publish(&mut p, retained(msg("r0/t", "new"))).await;
    ping(&mut p).await;
    let mut s = client(addr, V311, "r0s").await;
    sub(&mut s, "r0/t", 1).await;
    publish(&mut p, msg("r0/t", "end")).await;
    let got: Vec<String> = until_sentinel(&mut s, "end")
        .await
        .iter()
        .map(text)
        .collect();
    assert!(
        !got.contains(&"old".to_string()),
        "old retained kept: {got:?}"
    );
    assert_eq!(
        got,
        ["new"],
        "the QoS 0 message SHOULD be the new retained one"
    );
}

/// [MQTT-3.3.1-9] (3.1.1) "It MUST set the RETAIN flag to 0 when a PUBLISH Packet is
/// sent to a Client because it matches an established subscription regardless of
/// how the flag was set in the message it received."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_9_live_delivery_has_retain_0() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V311, "lrs").await;
    sub(&mut s, "lr/t", 0).await;
    let mut p = client(addr, V311, "lrp").await;
    publish(&mut p, retained(msg("lr/t", "r"))).await;
    let got = next_pub(&mut s).await;
    assert!(!got.retain, "live delivery carried RETAIN 1");
}

/// [MQTT-3.3.1-9] (5.0) Retain Handling 0: "the Server MUST send the retained
/// messages matching the Topic Filter of the subscription to the Client" on every
/// SUBSCRIBE, including a repeated one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_1_9_retain_handling_0_sends_on_every_subscribe() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "rh0p").await;
    publish(&mut p, retained(at(msg("rh0/t", "kept"), 1, 1))).await;
    let mut s = client(addr, V5, "rh0s").await;
    for round in 0..2u16 {
        let codes = subscribe_with(&mut s, 10 + round, &[("rh0/t", opts(0))], None).await;
        assert_eq!(codes, [0]);
        let got = next_pub(&mut s).await;
        assert_eq!(text(&got), "kept", "round {round}");
        assert!(got.retain);
    }
}

/// [MQTT-3.3.1-10] (5.0) Retain Handling 1: "if the subscription did not already
/// exist, the Server MUST send all retained message matching the Topic Filter ...
/// If the subscription did exist the Server MUST NOT send the retained messages."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_1_10_retain_handling_1_only_for_new_subscription() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "rh1p").await;
    publish(&mut p, retained(at(msg("rh1/t", "kept"), 1, 1))).await;
    let mut s = client(addr, V5, "rh1s").await;
    let o = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
        ..opts(0)
    };
    assert_eq!(subscribe_with(&mut s, 1, &[("rh1/t", o)], None).await, [0]);
    assert_eq!(text(&next_pub(&mut s).await), "kept");
    assert_eq!(subscribe_with(&mut s, 2, &[("rh1/t", o)], None).await, [0]);
    publish(&mut p, msg("rh1/t", "end")).await;
    let got = until_sentinel(&mut s, "end").await;
    assert!(
        got.is_empty(),
        "retained re-sent for an existing subscription: {got:?}"
    );
}

/// [MQTT-3.3.1-11] (5.0) Retain Handling 2: "the Server MUST NOT send the retained
/// messages".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_1_11_retain_handling_2_never_sends() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "rh2p").await;
    publish(&mut p, retained(at(msg("rh2/t", "kept"), 1, 1))).await;
    let mut s = client(addr, V5, "rh2s").await;
    let o = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..opts(1)
    };
    assert_eq!(subscribe_with(&mut s, 1, &[("rh2/t", o)], None).await, [1]);
    publish(&mut p, msg("rh2/t", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

/// [MQTT-3.3.1-12] (5.0) "If the value of Retain As Published subscription option is
/// set to 0, the Server MUST set the RETAIN flag to 0 when forwarding an Application
/// Message".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_1_12_retain_as_published_0_clears_retain() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "rap0s").await;
    sub(&mut s, "rap0/t", 0).await;
    let mut p = client(addr, V5, "rap0p").await;
    publish(&mut p, retained(msg("rap0/t", "r"))).await;
    assert!(!next_pub(&mut s).await.retain);
}

/// [MQTT-3.3.1-13] (5.0) "If the value of Retain As Published subscription option is
/// set to 1, the Server MUST set the RETAIN flag equal to the RETAIN flag in the
/// received PUBLISH packet."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_1_13_retain_as_published_1_keeps_retain() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "rap1s").await;
    let o = SubscriptionOptions {
        retain_as_published: true,
        ..opts(0)
    };
    assert_eq!(subscribe_with(&mut s, 1, &[("rap1/t", o)], None).await, [0]);
    let mut p = client(addr, V5, "rap1p").await;
    publish(&mut p, retained(msg("rap1/t", "r"))).await;
    publish(&mut p, msg("rap1/t", "plain")).await;
    let a = next_pub(&mut s).await;
    let b = next_pub(&mut s).await;
    assert_eq!((text(&a).as_str(), a.retain), ("r", true));
    assert_eq!((text(&b).as_str(), b.retain), ("plain", false));
}

/// 5.0 4.8.2: retained messages are not sent when a Shared Subscription is made
/// ("Retained messages are not sent to the Session when it first subscribes to a
/// Shared Subscription" — 3.8.3.1 Retain Handling, note on shared subscriptions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_8_2_shared_subscription_gets_no_retained() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "shrp").await;
    publish(&mut p, retained(at(msg("shr/t", "kept"), 1, 1))).await;
    let mut s = client(addr, V5, "shrs").await;
    sub(&mut s, "$share/g/shr/t", 1).await;
    publish(&mut p, msg("shr/t", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

// ---------------------------------------------------------------------------------
// Will messages
// ---------------------------------------------------------------------------------

/// [MQTT-3.1.2-8] "The Will Message MUST be published when the Network Connection is
/// subsequently closed unless the Will Message has been deleted by the Server on
/// receipt of a DISCONNECT Packet" — here the network connection just drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_8_will_published_on_network_failure() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V311, "willw").await;
    sub(&mut w, "will/t", 1).await;
    let mut c = conn(V311, "willc", true);
    c.will = Some(will("will/t", "gone", 1, false));
    let (cl, _) = online(addr, c).await;
    drop_conn(cl).await;
    let got = next_pub(&mut w).await;
    assert_eq!(
        (got.topic.as_str(), text(&got).as_str()),
        ("will/t", "gone")
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);
}

/// [MQTT-3.14.4-3] (3.1.1) "On receipt of DISCONNECT the Server MUST discard any Will
/// Message associated with the current connection without publishing it."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_14_4_3_will_discarded_on_disconnect() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V311, "wdw").await;
    sub(&mut w, "wd/t", 0).await;
    let mut c = conn(V311, "wdc", true);
    c.will = Some(will("wd/t", "gone", 0, false));
    let (cl, _) = online(addr, c).await;
    disconnect(cl).await;
    let mut p = client(addr, V311, "wdp").await;
    publish(&mut p, msg("wd/t", "end")).await;
    assert!(until_sentinel(&mut w, "end").await.is_empty());
    w.expect_silence(QUIET).await;
}

/// [MQTT-3.14.4-3] (5.0) "On receipt of DISCONNECT with a Reason Code of 0x00
/// (Success) the Server MUST discard any Will Message associated with the current
/// Connection without publishing it."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_14_4_3_will_discarded_on_disconnect_0x00() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V5, "wd5w").await;
    sub(&mut w, "wd5/t", 0).await;
    let mut c = conn(V5, "wd5c", true);
    c.will = Some(will("wd5/t", "gone", 0, false));
    let (cl, _) = online(addr, c).await;
    disconnect(cl).await;
    let mut p = client(addr, V5, "wd5p").await;
    publish(&mut p, msg("wd5/t", "end")).await;
    assert!(until_sentinel(&mut w, "end").await.is_empty());
    w.expect_silence(QUIET).await;
}

/// 5.0 3.14.2.1: DISCONNECT with Reason Code 0x04 "Disconnect with Will Message":
/// "The Client wishes to disconnect but requires that the Server also publishes its
/// Will Message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_14_2_1_disconnect_0x04_publishes_will() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V5, "w4w").await;
    sub(&mut w, "w4/t", 0).await;
    let mut c = conn(V5, "w4c", true);
    c.will = Some(will("w4/t", "bye", 0, false));
    let (mut cl, _) = online(addr, c).await;
    cl.send(&Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Default::default(),
    }))
    .await;
    assert!(cl.until_closed().await.is_empty());
    assert_eq!(text(&next_pub(&mut w).await), "bye");
}

/// [MQTT-3.1.2-17] (3.1.1) / [MQTT-3.1.2-15] (5.0) "If the Will Flag is set to 1 and
/// If Will Retain is set to 1, the Server MUST publish the Will Message as a
/// retained message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_17_will_retain_published_as_retained() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V311, "wrw").await;
    sub(&mut w, "wr/t", 1).await;
    let mut c = conn(V311, "wrc", true);
    c.will = Some(will("wr/t", "ret-will", 1, true));
    let (cl, _) = online(addr, c).await;
    drop_conn(cl).await;
    let live = next_pub(&mut w).await;
    ack(&mut w, &live).await;
    assert_eq!(text(&live), "ret-will");
    let mut s = client(addr, V311, "wrs").await;
    sub(&mut s, "wr/t", 1).await;
    let got = next_pub(&mut s).await;
    assert_eq!(text(&got), "ret-will");
    assert!(got.retain, "stored as retained");
}

/// [MQTT-3.1.2-16] (3.1.1) / [MQTT-3.1.2-14] (5.0) "If ... Will Retain is set to 0,
/// the Server MUST publish the Will Message as a non-retained message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_16_will_retain_0_not_retained() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V311, "wnw").await;
    sub(&mut w, "wn/t", 0).await;
    let mut c = conn(V311, "wnc", true);
    c.will = Some(will("wn/t", "plain-will", 0, false));
    let (cl, _) = online(addr, c).await;
    drop_conn(cl).await;
    assert_eq!(text(&next_pub(&mut w).await), "plain-will");
    let mut s = client(addr, V311, "wns").await;
    sub(&mut s, "wn/t", 0).await;
    let mut p = client(addr, V311, "wnp").await;
    publish(&mut p, msg("wn/t", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

/// [MQTT-3.1.2-8] The will is published when the server closes the connection for a
/// keep-alive timeout ("as if the network had failed", [MQTT-3.1.2-24]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_8_will_published_after_keep_alive_timeout() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V311, "wkw").await;
    sub(&mut w, "wk/t", 0).await;
    let mut c = conn(V311, "wkc", true);
    c.keep_alive = 1;
    c.will = Some(will("wk/t", "timed-out", 0, false));
    let (_cl, _) = online(addr, c).await;
    // Keep `_cl` open and silent: the broker must close it and publish the will.
    assert_eq!(text(&next_pub(&mut w).await), "timed-out");
}

/// 5.0 3.1.2.5: the will is published when "The Server closes the Network Connection
/// because of a protocol error" ([MQTT-3.1.2-8]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_8_will_published_after_protocol_error() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V5, "wpw").await;
    sub(&mut w, "wp/t", 0).await;
    let mut c = conn(V5, "wpc", true);
    c.will = Some(will("wp/t", "broken", 0, false));
    let (mut cl, _) = online(addr, c).await;
    cl.send_bytes(&hex("36 04 00 01 61 00")).await; // PUBLISH QoS 3
    expect_disconnect(&mut cl, 0x81).await;
    assert_eq!(text(&next_pub(&mut w).await), "broken");
}

/// [MQTT-3.1.2-8] (3.1.1 reading of takeover) A connection closed by the server
/// because the same ClientId connected again did not DISCONNECT: its will goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_2_takeover_publishes_old_will() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V311, "wtw").await;
    sub(&mut w, "wt/t", 0).await;
    let mut c = conn(V311, "wtc", true);
    c.will = Some(will("wt/t", "taken-over", 0, false));
    let (mut old, _) = online(addr, c).await;
    let _new = client(addr, V311, "wtc").await;
    expect_closed(&mut old).await;
    assert_eq!(text(&next_pub(&mut w).await), "taken-over");
}

/// [MQTT-3.1.2-8] (5.0) The will is published "after the Network Connection is
/// subsequently closed and either the Will Delay Interval has elapsed or the Session
/// ends": with a delay of 2 s it is not sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_8_will_delay_interval_delays_will() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V5, "wdlw").await;
    sub(&mut w, "wdl/t", 0).await;
    let mut c = persistent("wdlc", 30);
    let mut lw = will("wdl/t", "late", 0, false);
    lw.delay_interval = 2;
    c.will = Some(lw);
    let (cl, _) = online(addr, c).await;
    let t0 = Instant::now();
    drop(cl);
    w.expect_silence(Duration::from_millis(1200)).await;
    match w.recv_within(Duration::from_secs(4)).await {
        Ok(Some(Packet::Publish(p))) => assert_eq!(text(&p), "late"),
        other => panic!("delayed will not published: {other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "will sent after {took:?}, delay was 2 s"
    );
}

/// [MQTT-3.1.3-9] (5.0) "If a new Network Connection to this Session is made before
/// the Will Delay Interval has passed, the Server MUST NOT send the Will Message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_3_9_reconnect_within_will_delay_cancels_will() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V5, "wcw").await;
    sub(&mut w, "wc/t", 0).await;
    let mut c = persistent("wcc", 30);
    let mut lw = will("wc/t", "cancelled", 0, false);
    lw.delay_interval = 2;
    c.will = Some(lw);
    let (cl, _) = online(addr, c).await;
    drop_conn(cl).await;
    let (_back, a) = online(addr, persistent("wcc", 30)).await;
    assert!(a.session_present);
    w.expect_silence(Duration::from_millis(2600)).await;
}

/// [MQTT-3.1.2-8] (5.0) The will goes out when the Session ends, even before its
/// Will Delay Interval: session expiry 1 s, will delay 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_8_will_sent_when_session_ends_before_delay() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V5, "wsw").await;
    sub(&mut w, "ws/t", 0).await;
    let mut c = persistent("wsc", 1);
    let mut lw = will("ws/t", "session-over", 0, false);
    lw.delay_interval = 30;
    c.will = Some(lw);
    let (cl, _) = online(addr, c).await;
    drop(cl);
    match w.recv_within(Duration::from_secs(4)).await {
        Ok(Some(Packet::Publish(p))) => assert_eq!(text(&p), "session-over"),
        other => panic!("will not published at session end: {other:?}"),
    }
}

/// [MQTT-3.1.3-10] (5.0) "The Server MUST maintain the order of User Properties when
/// publishing the Will Message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_3_10_will_user_properties_order_kept() {
    let (_b, addr) = start_default().await;
    let mut w = client(addr, V5, "wuw").await;
    sub(&mut w, "wu/t", 0).await;
    let props: Vec<(String, String)> = [("b", "1"), ("a", "2"), ("b", "3"), ("a", "0")]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let mut c = conn(V5, "wuc", true);
    let mut lw = will("wu/t", "props", 0, false);
    lw.properties.user_properties = props.clone().into();
    c.will = Some(lw);
    let (cl, _) = online(addr, c).await;
    drop_conn(cl).await;
    let got = next_pub(&mut w).await;
    assert_eq!(got.properties.user_properties.to_vec(), props);
}

// ---------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------

/// [MQTT-3.1.2-5] (3.1.1) "After the disconnection of a Session that had
/// CleanSession set to 0, the Server MUST store further QoS 1 and QoS 2 messages
/// that match any subscriptions that the client had at the time of disconnection
/// as part of the Session state."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_5_messages_queued_for_offline_session() {
    let (_b, addr) = start_default().await;
    let (mut s, _) = online(addr, conn(V311, "offq", false)).await;
    sub(&mut s, "offq/t", 2).await;
    disconnect(s).await;
    let mut p = client(addr, V311, "offqp").await;
    publish(&mut p, at(msg("offq/t", "m1"), 1, 1)).await;
    publish(&mut p, at(msg("offq/t", "m2"), 2, 2)).await;
    let (mut s, a) = online(addr, conn(V311, "offq", false)).await;
    assert!(a.session_present);
    let a1 = next_pub(&mut s).await;
    ack(&mut s, &a1).await;
    let a2 = next_pub(&mut s).await;
    assert_eq!(
        (text(&a1), a1.qos, text(&a2), a2.qos),
        (
            String::from("m1"),
            QoS::AtLeastOnce,
            String::from("m2"),
            QoS::ExactlyOnce
        )
    );
}

/// [MQTT-4.4.0-1] "When a Client reconnects with Clean Start set to 0 and a session
/// is present, both the Client and Server MUST resend any unacknowledged PUBLISH
/// packets (where QoS > 0) ... using their original Packet Identifiers", with DUP 1
/// ([MQTT-3.3.1-1]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_4_0_1_unacknowledged_publish_resent_with_dup() {
    let (_b, addr) = start_default().await;
    let (mut s, _) = online(addr, persistent("redel", 60)).await;
    sub(&mut s, "redel/t", 1).await;
    let mut p = client(addr, V5, "redelp").await;
    publish(&mut p, at(msg("redel/t", "again"), 1, 1)).await;
    let first = next_pub(&mut s).await;
    assert!(!first.dup);
    drop_conn(s).await; // no PUBACK
    let (mut s, a) = online(addr, persistent("redel", 60)).await;
    assert!(a.session_present);
    let again = next_pub(&mut s).await;
    assert_eq!(text(&again), "again");
    assert_eq!(again.packet_id, first.packet_id, "original packet id");
    assert!(again.dup, "[MQTT-3.3.1-1] DUP 1 on re-delivery");
}

/// [MQTT-4.4.0-1] ... "and PUBREL packets using their original Packet Identifiers":
/// a QoS 2 delivery PUBREC'd but not PUBCOMP'd is resumed with PUBREL, not PUBLISH
/// ([MQTT-4.3.3-6] "MUST NOT re-send the PUBLISH once it has sent the PUBREL").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_4_0_1_pubrel_resent_on_resume() {
    let (_b, addr) = start_default().await;
    let (mut s, _) = online(addr, persistent("prel", 60)).await;
    sub(&mut s, "prel/t", 2).await;
    let mut p = client(addr, V5, "prelp").await;
    publish(&mut p, at(msg("prel/t", "q2"), 2, 1)).await;
    let got = next_pub(&mut s).await;
    let id = got.packet_id.expect("packet id");
    s.send(&Packet::PubRec(PubResponse::success(id))).await;
    match s.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop_conn(s).await; // no PUBCOMP
    let (mut s, a) = online(addr, persistent("prel", 60)).await;
    assert!(a.session_present);
    match s.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, id),
        other => panic!("expected PUBREL re-sent, got {other:?}"),
    }
    s.send(&Packet::PubComp(PubResponse::success(id))).await;
    s.expect_silence(QUIET).await;
}

/// [MQTT-3.1.2-23] (5.0) Session state is kept after close only "if the Session
/// Expiry Interval is greater than 0": with 0 (absent) nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_23_session_expiry_0_ends_session_at_close() {
    let (_b, addr) = start_default().await;
    let (mut s, _) = online(addr, conn(V5, "se0", false)).await;
    sub(&mut s, "se0/t", 1).await;
    disconnect(s).await;
    let (mut s, a) = online(addr, conn(V5, "se0", false)).await;
    assert!(!a.session_present, "session should have ended");
    sub(&mut s, "se0/end", 0).await;
    let mut p = client(addr, V5, "se0p").await;
    publish(&mut p, at(msg("se0/t", "x"), 1, 1)).await;
    publish(&mut p, msg("se0/end", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

/// 5.0 3.1.2.11.2: the session ends when the Session Expiry Interval (1 s) has
/// passed after the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_11_2_session_expires_after_interval() {
    let (_b, addr) = start_default().await;
    let (s, _) = online(addr, persistent("se1", 1)).await;
    disconnect(s).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_s, a) = online(addr, persistent("se1", 1)).await;
    assert!(!a.session_present, "session outlived its expiry interval");
}

/// 5.0 3.14.2.2.2: "If the Session Expiry Interval in the CONNECT packet was zero,
/// then it is a Protocol Error to set a non-zero Session Expiry Interval in the
/// DISCONNECT packet sent by the Client" (the server answers DISCONNECT 0x82).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_14_2_2_session_expiry_from_zero_in_disconnect_is_protocol_error() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "sez").await;
    c.send(&Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::NORMAL_DISCONNECTION,
        properties: DisconnectProperties {
            session_expiry_interval: Some(30),
            ..Default::default()
        },
    }))
    .await;
    expect_disconnect(&mut c, 0x82).await;
}

// ---------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------

/// 5.0 4.8.2: each message of a Shared Subscription goes to exactly one member of
/// the group ([MQTT-4.8.2-3] the granted QoS is respected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_8_2_shared_subscription_one_member_per_message() {
    let (_b, addr) = start_default().await;
    let mut a = client(addr, V5, "sha").await;
    let mut b = client(addr, V5, "shb").await;
    sub(&mut a, "$share/grp/sh/t", 1).await;
    sub(&mut b, "$share/grp/sh/t", 1).await;
    let mut p = client(addr, V5, "shp").await;
    for i in 1..=10u16 {
        publish(&mut p, at(msg("sh/t", &i.to_string()), 1, i)).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got_a.len() + got_b.len() < 10 && Instant::now() < deadline {
        for (c, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
            if let Ok(Some(Packet::Publish(m))) = c.recv_within(Duration::from_millis(50)).await {
                assert_eq!(m.qos, QoS::AtLeastOnce, "[MQTT-4.8.2-3]");
                ack(c, &m).await;
                got.push(text(&m));
            }
        }
    }
    a.expect_silence(QUIET).await;
    b.expect_silence(Duration::from_millis(50)).await;
    let mut all: Vec<u32> = got_a
        .iter()
        .chain(got_b.iter())
        .map(|s| s.parse().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=10).collect::<Vec<_>>(), "a={got_a:?} b={got_b:?}");
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "messages not distributed: a={got_a:?} b={got_b:?}"
    );
}

/// [MQTT-3.8.3-4] (5.0) "It is a Protocol Error to set the No Local bit to 1 on a
/// Shared Subscription."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_8_3_4_no_local_on_shared_subscription_is_protocol_error() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "shnl").await;
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        filters: vec![SubscribeFilter {
            filter: "$share/g/t".into(),
            options: SubscriptionOptions {
                no_local: true,
                ..opts(0)
            },
        }],
    }))
    .await;
    expect_disconnect(&mut c, 0x82).await;
}

/// [MQTT-4.8.2-1] "A Shared Subscription's Topic Filter MUST start with $share/ and
/// MUST contain a ShareName that is at least one character long" and
/// [MQTT-4.8.2-2] "The ShareName MUST NOT contain the characters "/", "+" or "#",
/// but MUST be followed by a "/" character. This "/" character MUST be followed by a
/// Topic Filter." A filter that breaks this is malformed: DISCONNECT 0x8F, close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_4_8_2_2_malformed_shared_filters_close() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "shok").await;
    sub(&mut c, "$share/g/t/#", 1).await;
    for bad in [
        "$share//t",
        "$share/g+/t",
        "$share/g#/t",
        "$share/g",
        "$share/g/",
    ] {
        let mut c = client(addr, V5, "shbad").await;
        send_subscribe(&mut c, 1, &[(bad, opts(0))], None).await;
        expect_filter_refused(&mut c).await;
    }
}

// ---------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------

/// [MQTT-3.3.4-9] (5.0) "The Server MUST NOT send more than Receive Maximum QoS 1
/// and QoS 2 PUBLISH packets for which it has not received PUBACK, PUBCOMP, or
/// PUBREC with a Reason Code of 128 or greater from the Client."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_4_9_client_receive_maximum_honoured() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V5, "rmx", true);
    c.properties.receive_maximum = Some(2);
    let (mut s, _) = online(addr, c).await;
    sub(&mut s, "rmx/t", 2).await;
    let mut p = client(addr, V5, "rmxp").await;
    for i in 1..=6u16 {
        let q = if i % 2 == 0 { 2 } else { 1 };
        publish(&mut p, at(msg("rmx/t", &i.to_string()), q, i)).await;
    }
    let mut outstanding: Vec<Publish> = Vec::new();
    let mut received = Vec::new();
    for _ in 0..40 {
        if received.len() == 6 && outstanding.is_empty() {
            break;
        }
        if outstanding.len() == 2 || received.len() == 6 {
            // Window full: nothing more may arrive until we acknowledge.
            s.expect_silence(Duration::from_millis(200)).await;
            let m = outstanding.remove(0);
            let id = m.packet_id.unwrap();
            if m.qos == QoS::AtLeastOnce {
                s.send(&Packet::PubAck(PubResponse::success(id))).await;
            } else {
                s.send(&Packet::PubRec(PubResponse::success(id))).await;
                match s.recv().await {
                    Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                s.send(&Packet::PubComp(PubResponse::success(id))).await;
            }
            continue;
        }
        let m = next_pub(&mut s).await;
        received.push(text(&m));
        outstanding.push(m);
        assert!(outstanding.len() <= 2);
    }
    assert_eq!(received, ["1", "2", "3", "4", "5", "6"]);
}

/// [MQTT-3.3.4-10] (5.0) "The Server MUST NOT delay the sending of any packets other
/// than PUBLISH packets due to having sent Receive Maximum PUBLISH packets without
/// receiving acknowledgements for them" ([MQTT-4.9.0-3]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_4_10_other_packets_not_delayed_by_full_window() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V5, "rmo", true);
    c.properties.receive_maximum = Some(1);
    let (mut s, _) = online(addr, c).await;
    sub(&mut s, "rmo/t", 1).await;
    let mut p = client(addr, V5, "rmop").await;
    publish(&mut p, at(msg("rmo/t", "1"), 1, 1)).await;
    publish(&mut p, at(msg("rmo/t", "2"), 1, 2)).await;
    let first = next_pub(&mut s).await;
    ping(&mut s).await;
    assert_eq!(
        subscribe_with(&mut s, 5, &[("rmo/other", opts(0))], None).await,
        [0]
    );
    assert_eq!(unsubscribe(&mut s, 6, &["rmo/other"]).await, [0]);
    ack(&mut s, &first).await;
    assert_eq!(text(&next_pub(&mut s).await), "2");
}

/// 5.0 3.3.4 / 3.2.2.3.3: "If it receives more than Receive Maximum QoS 1 and QoS 2
/// PUBLISH packets where it has not sent a PUBACK or PUBCOMP in response, the
/// [receiver] uses a DISCONNECT packet with Reason Code 0x93 (Receive Maximum
/// exceeded)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_4_receive_maximum_exceeded_disconnect_0x93() {
    let mut cfg = test_config();
    cfg.limits.receive_maximum = 2;
    let (_b, addr) = start(cfg).await;
    let (mut c, a) = online(addr, conn(V5, "rm93", true)).await;
    assert_eq!(a.properties.receive_maximum, Some(2));
    for i in 1..=3u16 {
        c.send(&Packet::Publish(at(msg("rm93/t", "x"), 2, i))).await;
    }
    let seen = c.until_closed().await;
    let recs = seen
        .iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count();
    assert_eq!(recs, 2, "{seen:?}");
    match seen.last() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x93),
        _ => panic!("expected DISCONNECT 0x93 last, got {seen:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Topic aliases
// ---------------------------------------------------------------------------------

/// [MQTT-3.3.2-12] (5.0) "The Server MUST accept all Topic Alias values greater than
/// 0 and less than or equal to the Topic Alias Maximum value that it returned in the
/// CONNACK packet"; an alias can be remapped by sending it with a topic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_12_inbound_topic_alias_accepted() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "tas").await;
    sub(&mut s, "ta/#", 0).await;
    let (mut p, a) = online(addr, conn(V5, "tap", true)).await;
    let max = a
        .properties
        .topic_alias_maximum
        .expect("Topic Alias Maximum");
    assert!(max >= 2);
    let aliased = |topic: &str, alias: u16, payload: &str| {
        let mut m = msg(topic, payload);
        m.properties.topic_alias = Some(alias);
        m
    };
    publish(&mut p, aliased("ta/x", 1, "a")).await;
    publish(&mut p, aliased("", 1, "b")).await;
    publish(&mut p, aliased("ta/y", max, "c")).await;
    publish(&mut p, aliased("", max, "d")).await;
    publish(&mut p, aliased("ta/z", 1, "e")).await; // remap alias 1
    publish(&mut p, aliased("", 1, "f")).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        let m = next_pub(&mut s).await;
        assert_eq!(
            m.properties.topic_alias, None,
            "subscriber set no alias max"
        );
        got.push((m.topic.clone(), text(&m)));
    }
    let want: Vec<(String, String)> = [
        ("ta/x", "a"),
        ("ta/x", "b"),
        ("ta/y", "c"),
        ("ta/y", "d"),
        ("ta/z", "e"),
        ("ta/z", "f"),
    ]
    .iter()
    .map(|(t, p)| ((*t).into(), (*p).into()))
    .collect();
    assert_eq!(got, want);
}

/// [MQTT-3.3.2-8] (5.0) "A sender MUST NOT send a PUBLISH packet containing a Topic
/// Alias which has the value 0"; 3.3.2.3.4: "A Topic Alias value of 0 or greater
/// than the Maximum is a Protocol Error", answered with DISCONNECT 0x94.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_8_topic_alias_0_disconnect_0x94() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "ta0").await;
    let mut m = msg("ta0/t", "x");
    m.properties.topic_alias = Some(0);
    c.send(&Packet::Publish(m)).await;
    // 0x94 (Topic Alias invalid) or 0x82 (Protocol Error): the reason code table
    // only names 0x94 for an alias above the maximum.
    expect_disconnect_one_of(&mut c, &[0x94, 0x82]).await;
}

/// [MQTT-3.3.2-9] (5.0) "A Client MUST NOT send a PUBLISH packet with a Topic Alias
/// greater than the Topic Alias Maximum value returned by the Server in the
/// CONNACK packet" (DISCONNECT 0x94).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_9_topic_alias_above_maximum_disconnect_0x94() {
    let mut cfg = test_config();
    cfg.limits.topic_alias_maximum = 4;
    let (_b, addr) = start(cfg).await;
    let (mut c, a) = online(addr, conn(V5, "tamax", true)).await;
    assert_eq!(a.properties.topic_alias_maximum, Some(4));
    let mut m = msg("tamax/t", "x");
    m.properties.topic_alias = Some(5);
    c.send(&Packet::Publish(m)).await;
    expect_disconnect(&mut c, 0x94).await;
}

/// 5.0 3.3.2.3.4: "It is a Protocol Error if the Topic Name is zero length and there
/// is no Topic Alias" mapping for it (alias never set on this connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_3_4_unknown_topic_alias_is_protocol_error() {
    let (_b, addr) = start_default().await;
    let mut c = client(addr, V5, "taunk").await;
    let mut m = msg("", "x");
    m.properties.topic_alias = Some(3);
    c.send(&Packet::Publish(m)).await;
    expect_disconnect(&mut c, 0x82).await;
}

/// [MQTT-3.3.2-7] (5.0) "A receiver MUST NOT carry forward any Topic Alias mappings
/// from one Network Connection to another."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_7_topic_aliases_not_carried_across_connections() {
    let (_b, addr) = start_default().await;
    let (mut c, _) = online(addr, persistent("tacar", 60)).await;
    let mut m = msg("tacar/t", "x");
    m.properties.topic_alias = Some(1);
    publish(&mut c, m).await;
    ping(&mut c).await;
    disconnect(c).await;
    let (mut c, a) = online(addr, persistent("tacar", 60)).await;
    assert!(a.session_present);
    let mut m = msg("", "y");
    m.properties.topic_alias = Some(1);
    c.send(&Packet::Publish(m)).await;
    expect_disconnect(&mut c, 0x82).await;
}

/// [MQTT-3.3.2-11] (5.0) / [MQTT-3.1.2-26] "The Server MUST NOT send a Topic Alias in
/// a PUBLISH packet to the Client greater than [the client's] Topic Alias Maximum";
/// aliases it does send resolve to the right topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_11_outbound_topic_aliases_within_client_maximum() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V5, "tao", true);
    c.properties.topic_alias_maximum = Some(1);
    let (mut s, _) = online(addr, c).await;
    sub(&mut s, "al/#", 0).await;
    let mut p = client(addr, V5, "taop").await;
    let topics = ["al/a", "al/a", "al/b", "al/a", "al/b", "al/b", "al/a"];
    for (i, t) in topics.iter().enumerate() {
        publish(&mut p, msg(t, &i.to_string())).await;
    }
    let mut map: HashMap<u16, String> = HashMap::new();
    let mut resolved = Vec::new();
    let mut used_alias = false;
    for _ in 0..topics.len() {
        let m = next_pub(&mut s).await;
        let topic = match m.properties.topic_alias {
            None => {
                assert!(!m.topic.is_empty(), "empty topic without alias");
                m.topic.clone()
            }
            Some(a) => {
                assert!((1..=1).contains(&a), "alias {a} above client maximum 1");
                if m.topic.is_empty() {
                    used_alias = true;
                    map.get(&a)
                        .unwrap_or_else(|| panic!("alias {a} used before being set"))
                        .clone()
                } else {
                    map.insert(a, m.topic.clone());
                    m.topic.clone()
                }
            }
        };
        resolved.push(topic);
    }
    assert_eq!(resolved, topics);
    assert!(used_alias, "the server never used an outbound topic alias");
}

/// [MQTT-3.1.2-27] (5.0) "If Topic Alias Maximum is absent or zero, the Server MUST
/// NOT send any Topic Aliases to the Client."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_27_no_outbound_alias_without_client_maximum() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "tanone").await;
    sub(&mut s, "na/t", 0).await;
    let mut p = client(addr, V5, "tanonep").await;
    for i in 0..3 {
        publish(&mut p, msg("na/t", &i.to_string())).await;
    }
    for _ in 0..3 {
        let m = next_pub(&mut s).await;
        assert_eq!(m.properties.topic_alias, None);
        assert_eq!(m.topic, "na/t");
    }
}

// ---------------------------------------------------------------------------------
// Message expiry
// ---------------------------------------------------------------------------------

/// [MQTT-3.3.2-5] (5.0) "If the Message Expiry Interval has passed and the Server has
/// not managed to start onward delivery to a matching subscriber, then it MUST
/// delete the copy of the message for that subscriber."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_5_expired_queued_message_not_delivered() {
    let (_b, addr) = start_default().await;
    let (mut s, _) = online(addr, persistent("mexp", 60)).await;
    sub(&mut s, "mexp/t", 1).await;
    disconnect(s).await;
    let mut p = client(addr, V5, "mexpp").await;
    let mut short = at(msg("mexp/t", "short"), 1, 1);
    short.properties.message_expiry_interval = Some(1);
    publish(&mut p, short).await;
    publish(&mut p, at(msg("mexp/t", "long"), 1, 2)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut s, a) = online(addr, persistent("mexp", 60)).await;
    assert!(a.session_present);
    let got = next_pub(&mut s).await;
    assert_eq!(text(&got), "long", "expired message delivered");
    ack(&mut s, &got).await;
    s.expect_silence(QUIET).await;
}

/// [MQTT-3.3.2-6] (5.0) "The PUBLISH packet sent to a Client by the Server MUST
/// contain a Message Expiry Interval set to the received value minus the time that
/// the message has been waiting in the Server."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_6_expiry_interval_reduced_by_waiting_time() {
    let (_b, addr) = start_default().await;
    let (mut s, _) = online(addr, persistent("mrem", 60)).await;
    sub(&mut s, "mrem/t", 1).await;
    disconnect(s).await;
    let mut p = client(addr, V5, "mremp").await;
    let mut m = at(msg("mrem/t", "x"), 1, 1);
    m.properties.message_expiry_interval = Some(30);
    publish(&mut p, m).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (mut s, _) = online(addr, persistent("mrem", 60)).await;
    let got = next_pub(&mut s).await;
    let left = got
        .properties
        .message_expiry_interval
        .expect("Message Expiry Interval forwarded");
    assert!(
        (25..30).contains(&left),
        "remaining interval {left}, want < 30"
    );
}

/// [MQTT-3.3.2-6] (5.0) A message forwarded at once carries (about) the interval it
/// was published with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_6_live_delivery_carries_expiry_interval() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "mlive").await;
    sub(&mut s, "mlive/t", 0).await;
    let mut p = client(addr, V5, "mlivep").await;
    let mut m = msg("mlive/t", "x");
    m.properties.message_expiry_interval = Some(100);
    publish(&mut p, m).await;
    let left = next_pub(&mut s).await.properties.message_expiry_interval;
    assert!(matches!(left, Some(99..=100)), "got {left:?}");
}

/// [MQTT-3.3.2-5] (5.0) A retained message whose expiry has passed is no longer
/// sent to new subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_5_expired_retained_message_not_sent() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "mretp").await;
    let mut m = retained(at(msg("mret/t", "stale"), 1, 1));
    m.properties.message_expiry_interval = Some(1);
    publish(&mut p, m).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut s = client(addr, V5, "mrets").await;
    sub(&mut s, "mret/t", 1).await;
    publish(&mut p, msg("mret/t", "end")).await;
    assert!(until_sentinel(&mut s, "end").await.is_empty());
}

// ---------------------------------------------------------------------------------
// Subscription identifiers
// ---------------------------------------------------------------------------------

/// 5.0 3.8.2.1.2 / [MQTT-3.3.4-3]: the Subscription Identifier of a subscription is
/// carried on the PUBLISHes sent because of it (live and retained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_4_3_subscription_identifier_carried() {
    let (_b, addr) = start_default().await;
    let mut p = client(addr, V5, "sidp").await;
    publish(&mut p, retained(at(msg("sid/r", "kept"), 1, 1))).await;
    let mut s = client(addr, V5, "sids").await;
    let codes = subscribe_with(&mut s, 1, &[("sid/#", opts(0))], Some(42)).await;
    assert_eq!(codes, [0]);
    let r = next_pub(&mut s).await;
    assert_eq!(r.properties.subscription_identifiers, [42], "retained");
    publish(&mut p, msg("sid/live", "x")).await;
    let l = next_pub(&mut s).await;
    assert_eq!(l.properties.subscription_identifiers, [42], "live");
}

/// [MQTT-3.3.4-4] (5.0) "If the Server sends a single copy of the message it MUST
/// include in the PUBLISH packet the Subscription Identifiers for all matching
/// subscriptions which have a Subscription Identifiers" and [MQTT-3.3.4-5] with
/// several copies each carries its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_4_4_overlapping_subscriptions_carry_all_identifiers() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "msid").await;
    assert_eq!(
        subscribe_with(&mut s, 1, &[("ms/+", opts(0))], Some(1)).await,
        [0]
    );
    assert_eq!(
        subscribe_with(&mut s, 2, &[("ms/#", opts(1))], Some(2)).await,
        [1]
    );
    assert_eq!(
        subscribe_with(&mut s, 3, &[("ms/a", opts(0))], None).await,
        [0]
    );
    let mut p = client(addr, V5, "msidp").await;
    publish(&mut p, at(msg("ms/a", "x"), 1, 1)).await;
    publish(&mut p, msg("ms/end", "end")).await;
    let got = until_sentinel(&mut s, "end").await;
    assert!(!got.is_empty());
    let ids: BTreeSet<u32> = got
        .iter()
        .flat_map(|m| m.properties.subscription_identifiers.iter().copied())
        .collect();
    assert_eq!(ids, BTreeSet::from([1, 2]), "copies: {got:?}");
    if got.len() == 1 {
        let mut one = got[0].properties.subscription_identifiers.clone();
        one.sort_unstable();
        assert_eq!(one, [1, 2]);
    }
}

/// 5.0 3.8.2.1.2: a subscription made without an identifier gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_8_2_1_2_no_identifier_without_one() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "nosid").await;
    sub(&mut s, "nosid/t", 0).await;
    let mut p = client(addr, V5, "nosidp").await;
    publish(&mut p, msg("nosid/t", "x")).await;
    assert!(next_pub(&mut s)
        .await
        .properties
        .subscription_identifiers
        .is_empty());
}

// ---------------------------------------------------------------------------------
// Property pass-through
// ---------------------------------------------------------------------------------

/// [MQTT-3.3.2-15] "The Server MUST send the Response Topic unaltered to all
/// subscribers receiving the Application Message" and [MQTT-3.3.2-16] "The Server
/// MUST send the Correlation Data unaltered" (request/response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_15_response_topic_and_correlation_data_unaltered() {
    let (_b, addr) = start_default().await;
    let mut responder = client(addr, V5, "resp").await;
    sub(&mut responder, "svc/req", 1).await;
    let mut requester = client(addr, V5, "reqr").await;
    sub(&mut requester, "svc/reply/reqr", 1).await;
    let corr = Bytes::from_static(&[0, 1, 2, 0xff, 0x80]);
    let mut req = at(msg("svc/req", "ping?"), 1, 1);
    req.properties.response_topic = Some("svc/reply/reqr".into());
    req.properties.correlation_data = Some(corr.clone());
    publish(&mut requester, req).await;
    let got = next_pub(&mut responder).await;
    ack(&mut responder, &got).await;
    assert_eq!(
        got.properties.response_topic.as_deref(),
        Some("svc/reply/reqr")
    );
    assert_eq!(got.properties.correlation_data.as_ref(), Some(&corr));
    let mut answer = at(msg("svc/reply/reqr", "pong"), 1, 2);
    answer.properties.correlation_data = got.properties.correlation_data.clone();
    publish(&mut responder, answer).await;
    let back = next_pub(&mut requester).await;
    assert_eq!(text(&back), "pong");
    assert_eq!(back.properties.correlation_data.as_ref(), Some(&corr));
}

/// [MQTT-3.3.2-17] "The Server MUST send all User Properties unaltered in a PUBLISH
/// packet when forwarding the Application Message" and [MQTT-3.3.2-18] "The Server
/// MUST maintain the order of User Properties".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_18_user_properties_forwarded_in_order() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "ups").await;
    sub(&mut s, "up/t", 0).await;
    let mut p = client(addr, V5, "upp").await;
    let props: Vec<(String, String)> = [
        ("z", "1"),
        ("a", "2"),
        ("z", "3"),
        ("", ""),
        ("ключ", "值"),
        ("a", "2"),
    ]
    .iter()
    .map(|(k, v)| ((*k).into(), (*v).into()))
    .collect();
    let mut m = msg("up/t", "x");
    m.properties.user_properties = props.clone().into();
    publish(&mut p, m).await;
    assert_eq!(
        next_pub(&mut s).await.properties.user_properties.to_vec(),
        props
    );
}

/// [MQTT-3.3.2-4] "A Server MUST send the Payload Format Indicator unaltered to all
/// subscribers" and [MQTT-3.3.2-20] "A Server MUST send the Content Type unaltered".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_3_2_4_payload_format_and_content_type_unaltered() {
    let (_b, addr) = start_default().await;
    let mut s = client(addr, V5, "pfs").await;
    sub(&mut s, "pf/t", 0).await;
    let mut p = client(addr, V5, "pfp").await;
    let mut m = msg("pf/t", "{\"k\":1}");
    m.properties.payload_format_indicator = Some(1);
    m.properties.content_type = Some("application/json; charset=utf-8".into());
    publish(&mut p, m).await;
    let mut m = msg("pf/t", "");
    m.payload = Bytes::from_static(&[0xff, 0x00]);
    m.properties.payload_format_indicator = Some(0);
    publish(&mut p, m).await;
    let a = next_pub(&mut s).await;
    assert_eq!(a.properties.payload_format_indicator, Some(1));
    assert_eq!(
        a.properties.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    let b = next_pub(&mut s).await;
    assert!(matches!(
        b.properties.payload_format_indicator,
        None | Some(0)
    ));
    assert_eq!(b.payload.as_ref(), &[0xff, 0x00]);
}

// ---------------------------------------------------------------------------------
// Maximum Packet Size
// ---------------------------------------------------------------------------------

/// [MQTT-3.1.2-24] (5.0) "The Server MUST NOT send packets exceeding Maximum Packet
/// Size to the Client" and [MQTT-3.1.2-25] "Where a Packet is too large to send, the
/// Server MUST discard it without sending it and then behave as if it had completed
/// sending that Application Message."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_1_2_25_oversize_delivery_discarded() {
    let (_b, addr) = start_default().await;
    let mut c = conn(V5, "mps", true);
    c.properties.maximum_packet_size = Some(64);
    c.properties.receive_maximum = Some(1);
    let (mut s, _) = online(addr, c).await;
    sub(&mut s, "mps/t", 1).await;
    let mut p = client(addr, V5, "mpsp").await;
    let big = "x".repeat(200);
    publish(&mut p, at(msg("mps/t", &big), 1, 1)).await;
    publish(&mut p, at(msg("mps/t", "small"), 1, 2)).await;
    // Receive Maximum 1: had the big one been left "in flight", nothing would come.
    let got = next_pub(&mut s).await;
    assert_eq!(text(&got), "small");
    ack(&mut s, &got).await;
    s.expect_silence(QUIET).await;
}

/// 5.0 3.2.2.3.6 / [MQTT-3.2.2-15]: a packet larger than the server's Maximum Packet
/// Size is refused with DISCONNECT 0x95 (Packet too large).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_3_2_2_3_6_packet_over_server_maximum_disconnect_0x95() {
    let mut cfg = test_config();
    cfg.limits.max_packet_size = 128;
    let (_b, addr) = start(cfg).await;
    let (mut c, a) = online(addr, conn(V5, "big", true)).await;
    assert_eq!(a.properties.maximum_packet_size, Some(128));
    c.send(&Packet::Publish(msg("big/t", &"y".repeat(300))))
        .await;
    expect_disconnect(&mut c, 0x95).await;
}
