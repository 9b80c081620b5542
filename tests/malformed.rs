//! Malformed and forbidden packets over real sockets: a table of rows (name, the
//! protocol version of the CONNECT sent first or `None` when the row's bytes are the
//! first thing on the connection, the raw bytes, the expected reaction). Covers
//! framing (remaining length), reserved fixed-header flags, PUBLISH flags and topic
//! rules, packet id 0, UTF-8, empty SUBSCRIBE/UNSUBSCRIBE, subscription options,
//! CONNECT flags and properties, property duplicates/overruns/unknown ids, topic
//! aliases, subscription identifiers, second CONNECT, AUTH, oversize packets and
//! unsupported protocol levels. Afterwards a normal client must still be served.
//!
//! Reactions: `Closed` = EOF without any packet (3.1.1 has no way to say why);
//! `Disconnect(c)` = one v5 DISCONNECT with reason code `c`, then EOF; `ConnAck(c)`
//! = one CONNACK with return code `c`, then EOF; `Refused` = a CONNECT that must not
//! be accepted: EOF, optionally preceded by a refusing CONNACK (non-zero code; 5.0
//! [MQTT-3.1.4-1] with 4.13.1 "MAY send a CONNACK", [MQTT-3.1.2-1]).

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tern::protocol::{Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The CONNECT sent before the row's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pre {
    /// The row's bytes are the first on the connection.
    None,
    V311,
    V5,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum React {
    Closed,
    Disconnect(u8),
    /// The specification names no single code; any of these is right.
    DisconnectOneOf(&'static [u8]),
    ConnAck(u8),
    Refused,
}
use React::*;

type Row = (&'static str, Pre, &'static str, React);

/// Limits the rows rely on.
const MAX_PACKET: u32 = 128;
const ALIAS_MAX: u16 = 4;

// A second CONNECT (client id "c2"), valid on its own.
// v5: 10 header bytes + property length 0 + 00 02 "c2" = 15.
// 3.1.1: 10 header bytes + 00 02 "c2" = 14.

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // --- before / instead of CONNECT ------------------------------------------------
    ("first packet PINGREQ", Pre::None, "c0 00", Closed),
    ("first packet PUBLISH", Pre::None, "30 05 00 01 61 68 69", Closed),
    ("first packet SUBSCRIBE", Pre::None, "82 06 00 01 00 01 61 00", Closed),
    ("packet type 0 before CONNECT", Pre::None, "00 00", Closed),
    ("CONNECT remaining length 5 bytes", Pre::None, "10 ff ff ff ff 7f", Closed),
    ("CONNECT fixed-header flags 0001", Pre::None, "11 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31", Closed),
    ("CONNECT reserved flag (3.1.1)", Pre::None, "10 0e 00 04 4d 51 54 54 04 03 00 3c 00 02 63 31", Closed),
    ("CONNECT reserved flag (v5)", Pre::None, "10 0f 00 04 4d 51 54 54 05 03 00 3c 00 00 02 63 31", Refused),
    ("unsupported protocol level 6", Pre::None, "10 0e 00 04 4d 51 54 54 06 02 00 3c 00 02 63 31", ConnAck(0x01)),
    ("MQTT 3.1 (MQIsdp, level 3)", Pre::None, "10 10 00 06 4d 51 49 73 64 70 03 02 00 3c 00 02 63 31", ConnAck(0x01)),
    ("protocol name MQTX", Pre::None, "10 0e 00 04 4d 51 54 58 04 02 00 3c 00 02 63 31", Refused),
    ("3.1.1 password without user name", Pre::None, "10 12 00 04 4d 51 54 54 04 42 00 3c 00 02 63 31 00 02 70 77", Closed),
    ("3.1.1 user name flag, no user name", Pre::None, "10 0e 00 04 4d 51 54 54 04 82 00 3c 00 02 63 31", Closed),
    ("will QoS 1 without will flag (3.1.1)", Pre::None, "10 0e 00 04 4d 51 54 54 04 0a 00 3c 00 02 63 31", Closed),
    ("will retain without will flag (3.1.1)", Pre::None, "10 0e 00 04 4d 51 54 54 04 22 00 3c 00 02 63 31", Closed),
    ("will QoS 3 (3.1.1)", Pre::None, "10 14 00 04 4d 51 54 54 04 1e 00 3c 00 02 63 31 00 01 77 00 01 78", Closed),
    ("will QoS 1 without will flag (v5)", Pre::None, "10 0f 00 04 4d 51 54 54 05 0a 00 3c 00 00 02 63 31", Refused),
    ("will QoS 3 (v5)", Pre::None, "10 16 00 04 4d 51 54 54 05 1e 00 3c 00 00 02 63 31 00 00 01 77 00 01 78", Refused),
    ("trailing byte after CONNECT payload (3.1.1)", Pre::None, "10 0f 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31 ff", Closed),
    ("trailing byte after CONNECT payload (v5)", Pre::None, "10 10 00 04 4d 51 54 54 05 02 00 3c 00 00 02 63 31 ff", Refused),
    ("client id not UTF-8", Pre::None, "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 c3 28", Closed),
    ("client id with U+0000", Pre::None, "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 61 00", Closed),
    ("CONNECT property length overrun", Pre::None, "10 0f 00 04 4d 51 54 54 05 02 00 3c 20 00 02 63 31", Refused),
    ("CONNECT two Session Expiry Intervals", Pre::None, "10 19 00 04 4d 51 54 54 05 02 00 3c 0a 11 00 00 00 0a 11 00 00 00 0a 00 02 63 31", Refused),
    ("CONNECT Receive Maximum 0", Pre::None, "10 12 00 04 4d 51 54 54 05 02 00 3c 03 21 00 00 00 02 63 31", Refused),
    ("CONNECT Maximum Packet Size 0", Pre::None, "10 14 00 04 4d 51 54 54 05 02 00 3c 05 27 00 00 00 00 00 02 63 31", Refused),
    ("CONNECT Request Problem Information 2", Pre::None, "10 11 00 04 4d 51 54 54 05 02 00 3c 02 17 02 00 02 63 31", Refused),
    ("CONNECT unknown property 0x7f", Pre::None, "10 12 00 04 4d 51 54 54 05 02 00 3c 03 7f 00 01 00 02 63 31", Refused),
    ("CONNECT with Topic Alias property", Pre::None, "10 12 00 04 4d 51 54 54 05 02 00 3c 03 23 00 01 00 02 63 31", Refused),

    // --- after a 3.1.1 CONNECT -------------------------------------------------------
    ("second CONNECT (3.1.1)", Pre::V311, "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 32", Closed),
    ("remaining length 5 bytes (3.1.1)", Pre::V311, "c0 80 80 80 80 01", Closed),
    ("packet type 0 (3.1.1)", Pre::V311, "00 00", Closed),
    ("PUBREL flags 0000 (3.1.1)", Pre::V311, "60 02 00 01", Closed),
    ("SUBSCRIBE flags 0000 (3.1.1)", Pre::V311, "80 06 00 01 00 01 61 00", Closed),
    ("UNSUBSCRIBE flags 0000 (3.1.1)", Pre::V311, "a0 05 00 01 00 01 61", Closed),
    ("PUBACK flags 0010 (3.1.1)", Pre::V311, "42 02 00 01", Closed),
    ("PINGREQ flags 0001 (3.1.1)", Pre::V311, "c1 00", Closed),
    ("DISCONNECT flags 0001 (3.1.1)", Pre::V311, "e1 00", Closed),
    ("PUBLISH QoS 3 (3.1.1)", Pre::V311, "36 05 00 01 61 00 01", Closed),
    ("PUBLISH QoS 1 packet id 0 (3.1.1)", Pre::V311, "32 05 00 01 61 00 00", Closed),
    ("SUBSCRIBE packet id 0 (3.1.1)", Pre::V311, "82 06 00 00 00 01 61 00", Closed),
    ("UNSUBSCRIBE packet id 0 (3.1.1)", Pre::V311, "a2 05 00 00 00 01 61", Closed),
    ("PUBLISH topic with U+0000 (3.1.1)", Pre::V311, "30 05 00 03 61 00 62", Closed),
    ("PUBLISH topic with a surrogate (3.1.1)", Pre::V311, "30 05 00 03 ed a0 80", Closed),
    ("PUBLISH '+' in topic (3.1.1)", Pre::V311, "30 05 00 03 61 2f 2b", Closed),
    ("PUBLISH empty topic (3.1.1)", Pre::V311, "30 02 00 00", Closed),
    ("SUBSCRIBE without filters (3.1.1)", Pre::V311, "82 02 00 01", Closed),
    ("SUBSCRIBE QoS byte reserved bits (3.1.1)", Pre::V311, "82 06 00 01 00 01 61 04", Closed),
    ("SUBSCRIBE requested QoS 3 (3.1.1)", Pre::V311, "82 06 00 01 00 01 61 03", Closed),
    ("UNSUBSCRIBE without filters (3.1.1)", Pre::V311, "a2 02 00 01", Closed),
    ("AUTH in 3.1.1", Pre::V311, "f0 00", Closed),
    ("PUBACK with a trailing byte (3.1.1)", Pre::V311, "40 03 00 01 00", Closed),
    ("packet over max_packet_size (3.1.1)", Pre::V311, "30 c8 01 00 01 61 78*197", Closed),

    // --- after a v5 CONNECT ----------------------------------------------------------
    ("second CONNECT (v5)", Pre::V5, "10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 63 32", Disconnect(0x82)),
    ("remaining length 5 bytes (v5)", Pre::V5, "30 ff ff ff ff 7f", Disconnect(0x81)),
    ("remaining length not minimal (v5)", Pre::V5, "c0 80 00", Disconnect(0x81)),
    ("packet type 0 (v5)", Pre::V5, "00 00", Disconnect(0x81)),
    ("PUBREL flags 0000 (v5)", Pre::V5, "60 02 00 01", Disconnect(0x81)),
    ("SUBSCRIBE flags 0000 (v5)", Pre::V5, "80 07 00 01 00 00 01 61 00", Disconnect(0x81)),
    ("UNSUBSCRIBE flags 0011 (v5)", Pre::V5, "a3 06 00 01 00 00 01 61", Disconnect(0x81)),
    ("PINGREQ flags 1000 (v5)", Pre::V5, "c8 00", Disconnect(0x81)),
    ("PINGREQ with a body (v5)", Pre::V5, "c0 01 00", Disconnect(0x81)),
    ("DISCONNECT flags 0001 (v5)", Pre::V5, "e1 00", Disconnect(0x81)),
    ("PUBLISH QoS 3 (v5)", Pre::V5, "36 06 00 01 61 00 01 00", Disconnect(0x81)),
    ("PUBLISH DUP with QoS 0 (v5)", Pre::V5, "38 04 00 01 61 00", Disconnect(0x82)),
    ("PUBLISH QoS 1 packet id 0 (v5)", Pre::V5, "32 06 00 01 61 00 00 00", DisconnectOneOf(&[0x81, 0x82])),
    ("SUBSCRIBE packet id 0 (v5)", Pre::V5, "82 07 00 00 00 00 01 61 00", DisconnectOneOf(&[0x81, 0x82])),
    ("UNSUBSCRIBE packet id 0 (v5)", Pre::V5, "a2 06 00 00 00 00 01 61", DisconnectOneOf(&[0x81, 0x82])),
    ("PUBACK packet id 0 (v5)", Pre::V5, "40 02 00 00", DisconnectOneOf(&[0x81, 0x82])),
    ("PUBLISH topic not UTF-8 (v5)", Pre::V5, "30 04 00 01 ff 00", Disconnect(0x81)),
    ("PUBLISH topic with U+0000 (v5)", Pre::V5, "30 06 00 03 61 00 62 00", Disconnect(0x81)),
    ("PUBLISH '#' in topic (v5)", Pre::V5, "30 06 00 03 61 2f 23 00", DisconnectOneOf(&[0x90, 0x82])),
    ("PUBLISH empty topic, no Topic Alias (v5)", Pre::V5, "30 03 00 00 00", Disconnect(0x82)),
    ("PUBLISH empty topic, alias never set (v5)", Pre::V5, "30 06 00 00 03 23 00 01", Disconnect(0x82)),
    ("PUBLISH Topic Alias 0 (v5)", Pre::V5, "30 07 00 01 61 03 23 00 00", Disconnect(0x94)),
    ("PUBLISH Topic Alias above maximum (v5)", Pre::V5, "30 07 00 01 61 03 23 00 05", Disconnect(0x94)),
    ("PUBLISH two Message Expiry Intervals (v5)", Pre::V5, "30 0e 00 01 61 0a 02 00 00 00 0a 02 00 00 00 0a", Disconnect(0x82)),
    ("PUBLISH property length overrun (v5)", Pre::V5, "30 05 00 01 61 09 01", Disconnect(0x81)),
    ("PUBLISH unknown property 0x7f (v5)", Pre::V5, "30 06 00 01 61 02 7f 00", Disconnect(0x81)),
    ("PUBLISH Subscription Identifier from client (v5)", Pre::V5, "30 06 00 01 61 02 0b 01", Disconnect(0x82)),
    ("SUBSCRIBE without filters (v5)", Pre::V5, "82 03 00 01 00", Disconnect(0x82)),
    ("SUBSCRIBE options reserved bits 6-7 (v5)", Pre::V5, "82 07 00 01 00 00 01 61 c0", Disconnect(0x81)),
    ("SUBSCRIBE Retain Handling 3 (v5)", Pre::V5, "82 07 00 01 00 00 01 61 30", Disconnect(0x82)),
    ("SUBSCRIBE Maximum QoS 3 (v5)", Pre::V5, "82 07 00 01 00 00 01 61 03", Disconnect(0x82)),
    ("SUBSCRIBE Subscription Identifier 0 (v5)", Pre::V5, "82 09 00 01 02 0b 00 00 01 61 00", Disconnect(0x82)),
    ("SUBSCRIBE filter not UTF-8 (v5)", Pre::V5, "82 07 00 01 00 00 01 ff 00", Disconnect(0x81)),
    ("UNSUBSCRIBE without filters (v5)", Pre::V5, "a2 03 00 01 00", Disconnect(0x82)),
    ("AUTH without Authentication Method (v5)", Pre::V5, "f0 00", Disconnect(0x82)),
    ("CONNACK sent by a client (v5)", Pre::V5, "20 03 00 00 00", Disconnect(0x82)),
    ("packet over max_packet_size (v5)", Pre::V5, "30 c8 01 00 01 61 00 78*196", Disconnect(0x95)),
];

/// Hex with spaces; a token `hh*N` stands for the byte `hh` repeated N times.
fn bytes_of(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (b, n) = match tok.split_once('*') {
            Some((b, n)) => (b, n.parse::<usize>().expect("repeat count")),
            None => (tok, 1),
        };
        let v = u8::from_str_radix(b, 16).expect("hex byte");
        out.extend(std::iter::repeat_n(v, n));
    }
    out
}

fn vbi(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = u8::try_from(n % 128).expect("7 bits");
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// The bytes of a valid CONNECT (clean start, keep alive 60, no properties).
fn connect_bytes(pre: Pre, client_id: &str) -> Vec<u8> {
    let level = match pre {
        Pre::V311 => 4,
        Pre::V5 => 5,
        Pre::None => unreachable!("no CONNECT for Pre::None"),
    };
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3c];
    if pre == Pre::V5 {
        body.push(0x00); // property length
    }
    let id = u16::try_from(client_id.len()).expect("short id");
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut out = vec![0x10];
    vbi(body.len(), &mut out);
    out.extend(body);
    out
}

/// Split raw bytes into (first byte, body) frames; Err on a truncated frame.
fn frames(mut b: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = b.split_first() {
        let mut len = 0usize;
        let mut used = 0;
        loop {
            let Some(&x) = rest.get(used) else {
                return Err(format!("truncated length in {b:02x?}"));
            };
            len |= usize::from(x & 0x7f) << (7 * used);
            used += 1;
            if x & 0x80 == 0 || used == 4 {
                break;
            }
        }
        let body = rest
            .get(used..used + len)
            .ok_or_else(|| format!("truncated frame in {b:02x?}"))?;
        out.push((first, body.to_vec()));
        b = &rest[used + len..];
    }
    Ok(out)
}

/// Read everything until EOF (or reset); Err if the connection stays open.
async fn read_to_eof(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let mut buf = [0u8; 512];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                return Err(format!(
                    "connection still open after {limit:?} (received {out:02x?})"
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Read exactly one frame (the CONNACK of the preceding CONNECT).
async fn read_frame(s: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(f) = frames(&got) {
            if let Some(first) = f.into_iter().next() {
                return Ok(first);
            }
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Err("no CONNACK".into()),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(format!("closed before CONNACK: {got:02x?}")),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Run one row; Err describes what differed.
async fn run_row(addr: SocketAddr, i: usize, row: &Row) -> Result<(), String> {
    let (_, pre, hexstr, want) = *row;
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).ok();
    if pre != Pre::None {
        s.write_all(&connect_bytes(pre, &format!("row{i}")))
            .await
            .map_err(|e| format!("write CONNECT: {e}"))?;
        let (first, body) = read_frame(&mut s).await?;
        if first != 0x20 || body.get(1) != Some(&0) {
            return Err(format!(
                "preceding CONNECT refused: {first:02x} {body:02x?}"
            ));
        }
    }
    // A write error means the broker already closed: still judged by what was read.
    let _ = s.write_all(&bytes_of(hexstr)).await;
    let got = read_to_eof(&mut s, WAIT).await?;
    let f = frames(&got)?;
    let ok = match want {
        Closed => f.is_empty(),
        Disconnect(c) => matches!(f.as_slice(), [(0xe0, b)] if b.first() == Some(&c)),
        DisconnectOneOf(cs) => {
            matches!(f.as_slice(), [(0xe0, b)] if b.first().is_some_and(|c| cs.contains(c)))
        }
        ConnAck(c) => matches!(f.as_slice(), [(0x20, b)] if b.get(1) == Some(&c)),
        Refused => match f.as_slice() {
            [] => true,
            [(0x20, b)] => b.get(1).is_some_and(|&c| c != 0),
            _ => false,
        },
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {want:x?}, received {got:02x?} then EOF"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_table() {
    assert!(TABLE.len() >= 35);
    let mut cfg = test_config();
    cfg.limits.max_packet_size = MAX_PACKET;
    cfg.limits.topic_alias_maximum = ALIAS_MAX;
    cfg.limits.connect_timeout = Duration::from_secs(3);
    let (_b, addr) = start(cfg).await;

    let mut failures = Vec::new();
    for (i, row) in TABLE.iter().enumerate() {
        if let Err(e) = run_row(addr, i, row).await {
            failures.push(format!("row {i} {:?}: {e}", row.0));
        }
    }

    // The broker still serves a well-behaved client after all of the above.
    let (mut sub, _) = raw_connected(addr, ProtocolVersion::V5, "after-sub", true).await;
    sub.send(&Packet::Subscribe(tern::protocol::Subscribe {
        packet_id: tern::protocol::PacketId::new(1).unwrap(),
        properties: Default::default(),
        filters: vec![tern::protocol::SubscribeFilter {
            filter: "after/t".into(),
            options: tern::protocol::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    }))
    .await;
    match sub.recv().await {
        Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, [ReasonCode::GRANTED_QOS_1]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let (mut publ, _) = raw_connected(addr, ProtocolVersion::V311, "after-pub", true).await;
    publ.send_bytes(&hex("32 0d 00 07 61 66 74 65 72 2f 74 00 01 6f 6b"))
        .await;
    match publ.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id.get(), 1),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.topic, "after/t");
            assert_eq!(p.payload.as_ref(), b"ok");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n")
    );
}

/// The row helper itself: a CONNECT built by `connect_bytes` is what the table's
/// hand-written CONNECTs look like.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_bytes_matches_hand_written() {
    assert_eq!(
        connect_bytes(Pre::V5, "c2"),
        bytes_of("10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 63 32")
    );
    assert_eq!(
        connect_bytes(Pre::V311, "c2"),
        bytes_of("10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 32")
    );
    assert_eq!(bytes_of("78*3 01"), [0x78, 0x78, 0x78, 0x01]);
}
