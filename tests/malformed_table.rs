//! Table-driven negative tests for the packet decoder: one row per validity rule
//! (fixed header, remaining length, PUBLISH, strings, packet ids, SUBSCRIBE /
//! UNSUBSCRIBE, CONNECT, CONNACK, acks, properties). Uses only the public API.
//!
//! Each row names the rule, the protocol state (`None` = before CONNECT), the raw
//! bytes, the expected error kind and a fragment of its message (so a row cannot
//! pass by tripping over a different check than the one it is about).

use bytes::BytesMut;
use tern::protocol::{decode, DecodeError, Packet, ProtocolVersion};

const MAX: u32 = 256;
const NONE: Option<ProtocolVersion> = None;
const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Malformed,
    Protocol,
    TooLarge,
    Unsupported(u8),
    TopicName,
    TopicAlias,
}
use Want::*;

type Row = (
    &'static str,
    Option<ProtocolVersion>,
    &'static str,
    Want,
    &'static str,
);

// CONNECT variable header prefixes (protocol name "MQTT", level, flags, keep alive
// 60) are spelled out in each row so the bytes are visible.
#[rustfmt::skip]
const TABLE: &[Row] = &[
    // --- fixed header -------------------------------------------------------------
    ("packet type 0", V5, "00 00", Malformed, "type 0"),
    ("PUBREL flags 0000", V5, "60 02 00 01", Malformed, "reserved fixed header flags"),
    ("SUBSCRIBE flags 0000", V311, "80 06 00 01 00 01 61 00", Malformed, "reserved fixed header flags"),
    ("UNSUBSCRIBE flags 0000", V311, "a0 05 00 01 00 01 61", Malformed, "reserved fixed header flags"),
    ("PUBACK flags 0001", V311, "41 02 00 01", Malformed, "reserved fixed header flags"),
    ("CONNECT flags 0001", NONE, "11 0c 00 04 4d 51 54 54 04 02 00 3c 00 00", Malformed, "reserved fixed header flags"),
    ("PINGREQ flags 1000", V5, "c8 00", Malformed, "reserved fixed header flags"),
    ("DISCONNECT flags 0010", V5, "e2 00", Malformed, "reserved fixed header flags"),
    ("AUTH in a 3.1.1 connection", V311, "f0 00", Malformed, "reserved in 3.1.1"),
    ("PINGREQ before CONNECT", NONE, "c0 00", Protocol, "not CONNECT"),
    ("PUBLISH before CONNECT", NONE, "30 03 00 01 61", Protocol, "not CONNECT"),
    ("CONNACK before CONNECT", NONE, "20 02 00 00", Protocol, "not CONNECT"),
    // --- remaining length ---------------------------------------------------------
    ("remaining length of 5 bytes", V5, "30 ff ff ff ff 7f", Malformed, "longer than 4 bytes"),
    ("remaining length 0x80 0x00", V5, "c0 80 00", Malformed, "not minimally encoded"),
    ("remaining length 0x85 0x80 0x00", V5, "30 85 80 00", Malformed, "not minimally encoded"),
    ("too large, only the header buffered", V5, "30 ff 7f 00 01", TooLarge, ""),
    ("too large CONNECT before CONNECT", NONE, "10 ac 02", TooLarge, ""),
    // --- PUBLISH --------------------------------------------------------------------
    ("PUBLISH QoS 3", V311, "36 05 00 01 61 00 01", Malformed, "QoS 3"),
    ("PUBLISH DUP with QoS 0", V311, "38 03 00 01 61", Protocol, "DUP"),
    ("PUBLISH QoS 1 packet id 0", V311, "32 05 00 01 61 00 00", Malformed, "packet identifier 0"),
    ("PUBLISH QoS 2 packet id 0 (v5)", V5, "34 06 00 01 61 00 00 00", Malformed, "packet identifier 0"),
    ("PUBLISH QoS 1 truncated packet id", V311, "32 04 00 01 61 00", Malformed, "packet identifier"),
    ("PUBLISH topic with +", V311, "30 05 00 03 61 2b 62", TopicName, "wildcard"),
    ("PUBLISH topic with # (v5)", V5, "30 04 00 01 23 00", TopicName, "wildcard"),
    ("PUBLISH empty topic in 3.1.1", V311, "30 02 00 00", TopicName, "empty topic"),
    ("PUBLISH empty topic without alias", V5, "30 03 00 00 00", Protocol, "without Topic Alias"),
    ("PUBLISH Topic Alias 0", V5, "30 07 00 01 61 03 23 00 00", TopicAlias, "Topic Alias 0"),
    ("PUBLISH Topic Alias twice", V5, "30 0a 00 01 61 06 23 00 01 23 00 02", Protocol, "duplicate Topic Alias"),
    ("PUBLISH Subscription Identifier 0", V5, "30 06 00 01 61 02 0b 00", Protocol, "Subscription Identifier 0"),
    ("PUBLISH Subscription Identifier 0x81 0x00", V5, "30 07 00 01 61 03 0b 81 00", Malformed, "not minimally encoded"),
    ("PUBLISH Subscription Identifier 5 bytes", V5, "30 0a 00 01 61 06 0b ff ff ff ff 7f", Malformed, "longer than 4 bytes"),
    ("PUBLISH Payload Format Indicator 2", V5, "30 06 00 01 61 02 01 02", Protocol, "Payload Format Indicator"),
    ("PUBLISH Response Topic with wildcard", V5, "30 09 00 01 61 05 08 00 02 61 23", Protocol, "Response Topic"),
    ("PUBLISH Session Expiry not allowed", V5, "30 09 00 01 61 05 11 00 00 00 01", Malformed, "not allowed"),
    ("PUBLISH unknown property 0x2B", V5, "30 06 00 01 61 02 2b 00", Malformed, "unknown property"),
    ("PUBLISH property length overruns", V5, "30 05 00 01 61 09 01", Malformed, "property length exceeds"),
    ("PUBLISH property value truncated", V5, "30 07 00 01 61 03 02 00 00", Malformed, "truncated property"),
    ("PUBLISH missing property length", V5, "30 03 00 01 61", Malformed, "property length"),
    // --- strings --------------------------------------------------------------------
    ("topic not UTF-8", V311, "30 04 00 02 c3 28", Malformed, "UTF-8"),
    ("topic with UTF-16 surrogate", V311, "30 05 00 03 ed a0 80", Malformed, "UTF-8"),
    ("topic with U+0000", V311, "30 04 00 02 61 00", Malformed, "U+0000"),
    ("string length overruns packet", V311, "30 03 00 05 61", Malformed, "topic name"),
    ("user property value not UTF-8", V5, "30 0b 00 01 61 07 26 00 01 6b 00 01 ff", Malformed, "UTF-8"),
    // --- packet identifier 0 --------------------------------------------------------
    ("PUBACK packet id 0", V5, "40 02 00 00", Malformed, "packet identifier 0"),
    ("PUBREC packet id 0", V311, "50 02 00 00", Malformed, "packet identifier 0"),
    ("PUBREL packet id 0", V311, "62 02 00 00", Malformed, "packet identifier 0"),
    ("PUBCOMP packet id 0", V5, "70 02 00 00", Malformed, "packet identifier 0"),
    ("SUBSCRIBE packet id 0", V311, "82 06 00 00 00 01 61 00", Malformed, "packet identifier 0"),
    ("SUBACK packet id 0", V311, "90 03 00 00 00", Malformed, "packet identifier 0"),
    ("UNSUBSCRIBE packet id 0", V311, "a2 05 00 00 00 01 61", Malformed, "packet identifier 0"),
    ("UNSUBACK packet id 0", V311, "b0 02 00 00", Malformed, "packet identifier 0"),
    ("PUBACK truncated packet id", V311, "40 01 00", Malformed, "packet identifier"),
    // --- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------
    ("SUBSCRIBE without filters", V311, "82 02 00 01", Protocol, "without topic filters"),
    ("SUBSCRIBE without filters (v5)", V5, "82 03 00 01 00", Protocol, "without topic filters"),
    ("SUBSCRIBE options bits 6-7", V5, "82 07 00 01 00 00 01 61 c0", Malformed, "reserved bits"),
    ("SUBSCRIBE options QoS 3", V5, "82 07 00 01 00 00 01 61 03", Protocol, "QoS 3"),
    ("SUBSCRIBE requested QoS 3", V311, "82 06 00 01 00 01 61 03", Malformed, "QoS 3"),
    ("SUBSCRIBE 3.1.1 upper QoS bits", V311, "82 06 00 01 00 01 61 04", Malformed, "reserved bits"),
    ("SUBSCRIBE Retain Handling 3", V5, "82 07 00 01 00 00 01 61 30", Protocol, "Retain Handling 3"),
    ("SUBSCRIBE two Subscription Identifiers", V5, "82 0b 00 01 04 0b 01 0b 02 00 01 61 00", Protocol, "duplicate Subscription Identifier"),
    ("SUBSCRIBE Subscription Identifier 0", V5, "82 09 00 01 02 0b 00 00 01 61 00", Protocol, "Subscription Identifier 0"),
    ("SUBSCRIBE missing options byte", V311, "82 05 00 01 00 01 61", Malformed, "subscription options"),
    ("SUBSCRIBE Topic Alias not allowed", V5, "82 0a 00 01 03 23 00 01 00 01 61 00", Malformed, "not allowed"),
    ("UNSUBSCRIBE without filters", V311, "a2 02 00 01", Protocol, "without topic filters"),
    ("UNSUBSCRIBE without filters (v5)", V5, "a2 03 00 01 00", Protocol, "without topic filters"),
    ("UNSUBSCRIBE Reason String not allowed", V5, "a2 0a 00 01 04 1f 00 01 78 00 01 61", Malformed, "not allowed"),
    ("UNSUBSCRIBE truncated filter", V311, "a2 05 00 01 00 05 61", Malformed, "topic filter"),
    // --- CONNECT --------------------------------------------------------------------
    ("CONNECT MQIsdp level 3", NONE, "10 0e 00 06 4d 51 49 73 64 70 03 02 00 3c 00 00", Unsupported(3), ""),
    ("CONNECT MQTT level 3", NONE, "10 0c 00 04 4d 51 54 54 03 02 00 3c 00 00", Unsupported(3), ""),
    ("CONNECT MQTT level 6", NONE, "10 0c 00 04 4d 51 54 54 06 02 00 3c 00 00", Unsupported(6), ""),
    ("CONNECT name MQTX level 4", NONE, "10 0c 00 04 4d 51 54 58 04 02 00 3c 00 00", Unsupported(4), ""),
    ("CONNECT reserved flag bit 0", NONE, "10 0c 00 04 4d 51 54 54 04 03 00 3c 00 00", Malformed, "reserved flag"),
    ("CONNECT Will QoS without Will", NONE, "10 0c 00 04 4d 51 54 54 04 0a 00 3c 00 00", Malformed, "without Will flag"),
    ("CONNECT Will Retain without Will", NONE, "10 0c 00 04 4d 51 54 54 04 22 00 3c 00 00", Malformed, "without Will flag"),
    ("CONNECT Will QoS 3", NONE, "10 11 00 04 4d 51 54 54 04 1e 00 3c 00 00 00 01 61 00 00", Malformed, "Will QoS 3"),
    ("CONNECT 3.1.1 password without user name", NONE, "10 0f 00 04 4d 51 54 54 04 42 00 3c 00 00 00 01 70", Malformed, "password flag"),
    ("CONNECT trailing bytes", NONE, "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 00 ff", Malformed, "trailing"),
    ("CONNECT truncated before client id", NONE, "10 0a 00 04 4d 51 54 54 04 02 00 3c", Malformed, "client identifier"),
    ("CONNECT user name flag, no user name", NONE, "10 0c 00 04 4d 51 54 54 04 82 00 3c 00 00", Malformed, "user name"),
    ("CONNECT will topic with wildcard", NONE, "10 11 00 04 4d 51 54 54 04 06 00 3c 00 00 00 01 23 00 00", TopicName, "wildcard"),
    ("CONNECT empty will topic", NONE, "10 10 00 04 4d 51 54 54 04 06 00 3c 00 00 00 00 00 00", TopicName, "empty will topic"),
    ("CONNECT v5 Receive Maximum 0", NONE, "10 10 00 04 4d 51 54 54 05 02 00 3c 03 21 00 00 00 00", Protocol, "Receive Maximum 0"),
    ("CONNECT v5 Maximum Packet Size 0", NONE, "10 12 00 04 4d 51 54 54 05 02 00 3c 05 27 00 00 00 00 00 00", Protocol, "Maximum Packet Size 0"),
    ("CONNECT v5 Request Problem Information 2", NONE, "10 0f 00 04 4d 51 54 54 05 02 00 3c 02 17 02 00 00", Protocol, "Request Problem Information"),
    ("CONNECT v5 Request Response Information 2", NONE, "10 0f 00 04 4d 51 54 54 05 02 00 3c 02 19 02 00 00", Protocol, "Request Response Information"),
    ("CONNECT v5 Session Expiry twice", NONE, "10 17 00 04 4d 51 54 54 05 02 00 3c 0a 11 00 00 00 01 11 00 00 00 02 00 00", Protocol, "duplicate Session Expiry"),
    ("CONNECT v5 unknown property 0x04", NONE, "10 0f 00 04 4d 51 54 54 05 02 00 3c 02 04 00 00 00", Malformed, "unknown property"),
    ("CONNECT v5 property length overruns", NONE, "10 0f 00 04 4d 51 54 54 05 02 00 3c 05 11 00 00 00", Malformed, "property length exceeds"),
    ("CONNECT v5 property length 5 bytes", NONE, "10 11 00 04 4d 51 54 54 05 02 00 3c ff ff ff ff 7f 00 00", Malformed, "longer than 4 bytes"),
    ("CONNECT v5 Topic Alias not allowed", NONE, "10 10 00 04 4d 51 54 54 05 02 00 3c 03 23 00 01 00 00", Malformed, "not allowed"),
    ("CONNECT v5 auth data without method", NONE, "10 11 00 04 4d 51 54 54 05 02 00 3c 04 16 00 01 78 00 00", Protocol, "Authentication Method"),
    ("CONNECT v5 Will with Topic Alias", NONE, "10 16 00 04 4d 51 54 54 05 06 00 3c 00 00 00 03 23 00 01 00 01 61 00 00", Malformed, "not allowed"),
    ("CONNECT v5 Will with Subscription Identifier", NONE, "10 15 00 04 4d 51 54 54 05 06 00 3c 00 00 00 02 0b 01 00 01 61 00 00", Malformed, "not allowed"),
    ("CONNECT v5 Will Delay twice", NONE, "10 1d 00 04 4d 51 54 54 05 06 00 3c 00 00 00 0a 18 00 00 00 01 18 00 00 00 02 00 01 61 00 00", Protocol, "duplicate Will Delay"),
    // --- CONNACK --------------------------------------------------------------------
    ("CONNACK reserved flags", V311, "20 02 02 00", Malformed, "reserved flags"),
    ("CONNACK 3.1.1 return code 6", V311, "20 02 00 06", Protocol, "return code"),
    ("CONNACK 3.1.1 trailing byte", V311, "20 03 00 00 00", Malformed, "trailing"),
    ("CONNACK v5 reason code 0x10", V5, "20 03 00 10 00", Protocol, "reason code"),
    ("CONNACK v5 Maximum QoS 2", V5, "20 05 00 00 02 24 02", Protocol, "Maximum QoS"),
    ("CONNACK v5 Retain Available 2", V5, "20 05 00 00 02 25 02", Protocol, "Retain Available"),
    ("CONNACK v5 Wildcard Subscription Available 2", V5, "20 05 00 00 02 28 02", Protocol, "Wildcard Subscription Available"),
    ("CONNACK v5 Subscription Identifier Available 2", V5, "20 05 00 00 02 29 02", Protocol, "Subscription Identifier Available"),
    ("CONNACK v5 Shared Subscription Available 2", V5, "20 05 00 00 02 2a 02", Protocol, "Shared Subscription Available"),
    ("CONNACK v5 Receive Maximum 0", V5, "20 06 00 00 03 21 00 00", Protocol, "Receive Maximum 0"),
    ("CONNACK v5 Maximum Packet Size 0", V5, "20 08 00 00 05 27 00 00 00 00", Protocol, "Maximum Packet Size 0"),
    ("CONNACK v5 missing properties", V5, "20 02 00 00", Malformed, "property length"),
    // --- acks, PING, DISCONNECT, AUTH --------------------------------------------
    ("PUBACK 3.1.1 with reason code", V311, "40 03 00 01 00", Malformed, "trailing"),
    ("PUBREL v5 reason code 0x10", V5, "62 03 00 01 10", Protocol, "reason code"),
    ("PUBACK v5 reason code 0x92", V5, "40 03 00 01 92", Protocol, "reason code"),
    ("PUBACK v5 Reason String twice", V5, "40 0c 00 01 00 08 1f 00 01 61 1f 00 01 62", Protocol, "duplicate Reason String"),
    ("PUBCOMP v5 Topic Alias not allowed", V5, "70 07 00 01 00 03 23 00 01", Malformed, "not allowed"),
    ("PUBREC v5 property truncated", V5, "50 06 00 01 00 03 1f 00", Malformed, "property length exceeds"),
    ("PUBACK v5 trailing after properties", V5, "40 05 00 01 00 00 00", Malformed, "trailing"),
    ("SUBACK 3.1.1 return code 3", V311, "90 03 00 01 03", Protocol, "reason code"),
    ("SUBACK without return codes", V311, "90 02 00 01", Protocol, "without reason codes"),
    ("SUBACK v5 reason code 0x92", V5, "90 04 00 01 00 92", Protocol, "reason code"),
    ("UNSUBACK 3.1.1 with payload", V311, "b0 03 00 01 00", Malformed, "trailing"),
    ("UNSUBACK v5 without reason codes", V5, "b0 03 00 01 00", Protocol, "without reason codes"),
    ("PINGREQ with a body", V311, "c0 01 00", Malformed, "trailing"),
    ("PINGRESP with a body", V5, "d0 01 00", Malformed, "trailing"),
    ("DISCONNECT 3.1.1 with a body", V311, "e0 01 00", Malformed, "trailing"),
    ("DISCONNECT v5 reason code 0x01", V5, "e0 01 01", Protocol, "reason code"),
    ("DISCONNECT v5 trailing after properties", V5, "e0 03 00 00 ff", Malformed, "trailing"),
    ("DISCONNECT v5 Topic Alias not allowed", V5, "e0 05 00 03 23 00 01", Malformed, "not allowed"),
    ("AUTH v5 reason code 0x01", V5, "f0 01 01", Protocol, "reason code"),
    ("AUTH v5 Session Expiry not allowed", V5, "f0 07 18 05 11 00 00 00 01", Malformed, "not allowed"),
    ("AUTH v5 Authentication Method duplicated", V5, "f0 0a 18 08 15 00 01 61 15 00 01 62", Protocol, "duplicate Authentication Method"),
];

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad hex byte {h:?}")))
        .collect()
}

/// The frame length the fixed header declares, when it is a valid header.
fn declared_len(b: &[u8]) -> Option<usize> {
    let mut value = 0usize;
    for (i, &byte) in b.iter().skip(1).take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A non-minimal length is itself the error under test.
            return (i == 0 || byte != 0).then_some(2 + i + value);
        }
    }
    None
}

fn kind(e: &DecodeError) -> Want {
    match e {
        DecodeError::Malformed(_) => Malformed,
        DecodeError::Protocol(_) => Protocol,
        DecodeError::TooLarge { .. } | DecodeError::PropertiesTooLarge(_) => TooLarge,
        DecodeError::UnsupportedVersion(v) => Unsupported(*v),
        DecodeError::TopicNameInvalid(_) => TopicName,
        DecodeError::TopicAliasInvalid(_) => TopicAlias,
    }
}

fn want_code(w: Want) -> u8 {
    match w {
        Malformed => 0x81,
        Protocol => 0x82,
        Unsupported(_) => 0x84,
        TopicName => 0x90,
        TopicAlias => 0x94,
        TooLarge => 0x95,
    }
}

#[test]
fn malformed_table() {
    assert!(TABLE.len() >= 40);
    let mut failures = Vec::new();
    for &(name, version, h, want, needle) in TABLE {
        let bytes = hex(h);
        // Self-check of the table: a complete, in-limit frame must be exactly the
        // row's bytes, so a miscounted row cannot fail for an unrelated reason.
        if let Some(n) = declared_len(&bytes) {
            if want != TooLarge && n <= MAX as usize && n != bytes.len() {
                failures.push(format!(
                    "{name}: header declares {n} bytes, row has {}",
                    bytes.len()
                ));
                continue;
            }
        }
        let mut buf = BytesMut::from(&bytes[..]);
        match decode(&mut buf, version, MAX) {
            Err(e) => {
                let msg = e.to_string();
                if kind(&e) != want || !msg.contains(needle) {
                    failures.push(format!("{name}: expected {want:?} ({needle:?}), got {e:?}"));
                } else if e.reason_code().0 != want_code(want) {
                    failures.push(format!("{name}: reason code {}", e.reason_code()));
                }
            }
            Ok(p) => failures.push(format!("{name}: expected {want:?}, decoded {p:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Neighbours of table rows that ARE valid, so the table is not passing because
/// the decoder refuses everything.
#[test]
fn valid_neighbours_decode() {
    let ok: &[(&str, Option<ProtocolVersion>, &str)] = &[
        (
            "v5 password without user name",
            NONE,
            "10 10 00 04 4d 51 54 54 05 42 00 3c 00 00 00 00 01 70",
        ),
        (
            "3.1.1 minimal CONNECT",
            NONE,
            "10 0c 00 04 4d 51 54 54 04 02 00 3c 00 00",
        ),
        (
            "PUBLISH empty topic with alias",
            V5,
            "30 06 00 00 03 23 00 01",
        ),
        (
            "PUBLISH two Subscription Identifiers",
            V5,
            "30 08 00 01 61 04 0b 01 0b 02",
        ),
        (
            "SUBSCRIBE invalid filter syntax",
            V5,
            "82 09 00 01 00 00 03 61 23 62 2e",
        ),
        ("SUBSCRIBE empty filter", V311, "82 05 00 01 00 00 00"),
        ("PUBACK v5 3-byte form", V5, "40 03 00 01 10"),
        ("DISCONNECT v5 1-byte form", V5, "e0 01 04"),
        (
            "user property repeated",
            V5,
            "e0 0e 00 0c 26 00 01 6b 00 00 26 00 01 6b 00 00",
        ),
        ("at the size limit", V5, "c0 00"),
    ];
    for &(name, version, h) in ok {
        let mut buf = BytesMut::from(&hex(h)[..]);
        let res = decode(&mut buf, version, MAX);
        assert!(matches!(res, Ok(Some(_))), "{name}: {res:?}");
        assert!(buf.is_empty(), "{name}: bytes left over");
    }
    // A complete packet one byte short of its declared length is "not yet", not an error.
    let mut buf = BytesMut::from(&hex("30 03 00 01")[..]);
    assert_eq!(decode(&mut buf, V5, MAX), Ok(None));
    let mut buf = BytesMut::from(&hex("c0 00")[..]);
    assert_eq!(decode(&mut buf, V5, MAX), Ok(Some(Packet::PingReq)));
}
