//! MQTT 3.1.1 / 5.0 packet decoder: bytes from the wire -> [`Packet`].
//!
//! Owns framing (fixed header, remaining length, the Maximum Packet Size limit) and
//! every validity check that can be made on one packet alone: reserved bits, QoS 3,
//! packet identifier 0, UTF-8 rules, reason code sets, trailing or missing bytes.
//! v5 property blocks are read, and their identifiers, duplicates and ranges
//! checked, by `properties.rs` through this file's [`Reader`]. Sequencing rules
//! (CONNECT first and once, topic alias ranges, receive maximum) belong to the
//! caller.
//!
//! Safety against hostile peers: the body is split off the input as one `Bytes`
//! (payloads and binary data are zero-copy slices of it) and read through [`Reader`],
//! which checks the remaining length before every read. Nothing is allocated from a
//! peer-declared count; every `Vec`/`String` grows only with bytes actually present
//! in a body that is at most `max_packet_size` long.

use super::properties::{read_props, Ctx};
use super::types::*;
use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    TooLarge { size: usize, max: u32 },
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("topic name invalid: {0}")]
    TopicNameInvalid(&'static str),
    /// Over `DecodeLimits`' property caps (not a violation of the spec: the
    /// packet is bigger than this broker takes).
    #[error("properties over the limit: {0}")]
    PropertiesTooLarge(&'static str),
    #[error("topic alias invalid: {0}")]
    TopicAliasInvalid(&'static str),
}

impl DecodeError {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            // 0x95 Packet too large: the closest v5 code a CONNACK and a
            // DISCONNECT can both carry for "more than we accept".
            DecodeError::PropertiesTooLarge(_) => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::TopicAliasInvalid(_) => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// The largest value a Variable Byte Integer (four bytes) can carry (section 1.5.5);
/// also the largest Remaining Length and Subscription Identifier.
pub(super) const MAX_VBI: u32 = 268_435_455;

/// Decodes one packet from the front of `buf` and advances `buf` past it.
///
/// `Ok(None)`: the packet is not complete yet; `buf` is untouched. `version == None`
/// means no CONNECT has been accepted yet, so only a CONNECT is allowed
/// [MQTT-3.1.0-1]. A CONNECT is always decoded by its own protocol level (it is
/// self-describing); every other packet in `version`'s format.
///
/// `max_packet_size` bounds the whole packet (fixed header included) and is checked
/// as soon as the fixed header is readable, before the body arrives (section
/// 3.1.2.11.4 / 3.2.2.3.6). After an error the connection must be closed; whether
/// the offending bytes were consumed is unspecified.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<Packet>> {
    decode_with(
        buf,
        version,
        DecodeLimits {
            max_packet_size,
            ..DecodeLimits::default()
        },
    )
}

/// What a decoder accepts beyond the spec's own bounds: caps on what a peer
/// could otherwise make the broker hold (properties are stored with messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_packet_size: u32,
    /// User Properties in one property section.
    pub max_user_properties: u32,
    /// Bytes of one property section (its Property Length).
    pub max_property_bytes: u32,
}

impl Default for DecodeLimits {
    /// The spec's own bounds only.
    fn default() -> Self {
        DecodeLimits {
            max_packet_size: MAX_VBI,
            max_user_properties: u32::MAX,
            max_property_bytes: MAX_VBI,
        }
    }
}

/// `decode` with property caps: a packet over them is refused with
/// `PropertiesTooLarge` (0x95) before its properties are collected.
pub fn decode_with(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: DecodeLimits,
) -> Result<Option<Packet>> {
    let max_packet_size = limits.max_packet_size;
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;

    let Some((remaining, len_len)) = parse_vbi(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let header_len = 1 + len_len;
    let total = header_len.saturating_add(usize_from(remaining));
    if total > usize_from(max_packet_size) {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }

    let mut frame = buf.split_to(total).freeze();
    frame.advance(header_len);
    let mut r = Reader { buf: frame, limits };
    let flags = first & 0x0F;
    let v = version.unwrap_or(ProtocolVersion::V5);
    let packet = match first >> 4 {
        1 => decode_connect(&mut r)?,
        2 => decode_connack(&mut r, v)?,
        3 => decode_publish(&mut r, v, flags)?,
        4 => Packet::PubAck(decode_pub_response(&mut r, v, PUBACK_CODES)?),
        5 => Packet::PubRec(decode_pub_response(&mut r, v, PUBACK_CODES)?),
        6 => Packet::PubRel(decode_pub_response(&mut r, v, PUBREL_CODES)?),
        7 => Packet::PubComp(decode_pub_response(&mut r, v, PUBREL_CODES)?),
        8 => decode_subscribe(&mut r, v)?,
        9 => decode_suback(&mut r, v)?,
        10 => decode_unsubscribe(&mut r, v)?,
        11 => decode_unsuback(&mut r, v)?,
        12 => {
            r.finish()?;
            Packet::PingReq
        }
        13 => {
            r.finish()?;
            Packet::PingResp
        }
        14 => decode_disconnect(&mut r, v)?,
        // 15, AUTH: type 0 was refused by `check_first_byte`, and so was 15 in 3.1.1.
        _ => decode_auth(&mut r)?,
    };
    Ok(Some(packet))
}

/// Checks everything the first byte alone decides, so a bad packet is refused
/// before its body is waited for.
fn check_first_byte(first: u8, version: Option<ProtocolVersion>) -> Result<()> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    if packet_type == 0 {
        // Type 0 is "Reserved / Forbidden" (table 2-1 in both versions).
        return Err(DecodeError::Malformed("packet type 0 is reserved"));
    }
    match version {
        // [MQTT-3.1.0-1] The first packet from the Client MUST be CONNECT.
        None if packet_type != 1 => {
            return Err(DecodeError::Protocol("first packet is not CONNECT"));
        }
        // Type 15 is reserved in 3.1.1 (AUTH exists only in 5.0).
        Some(ProtocolVersion::V311) if packet_type == 15 => {
            return Err(DecodeError::Malformed(
                "packet type 15 is reserved in 3.1.1",
            ));
        }
        _ => {}
    }
    if packet_type == 3 {
        let qos = (flags >> 1) & 0b11;
        if qos == 3 {
            // [MQTT-3.3.1-4] A PUBLISH MUST NOT have both QoS bits set to 1.
            return Err(DecodeError::Malformed("PUBLISH with QoS 3"));
        }
        if qos == 0 && flags & 0b1000 != 0 {
            // [MQTT-3.3.1-2] The DUP flag MUST be set to 0 for all QoS 0 messages.
            // The packet parses; the flag is not allowed: a Protocol Error (0x82),
            // not a Malformed Packet (5.0 section 4.13.1).
            return Err(DecodeError::Protocol("PUBLISH with DUP set and QoS 0"));
        }
        return Ok(());
    }
    // [MQTT-2.1.3-1] (5.0) / [MQTT-2.2.2-1], [MQTT-2.2.2-2] (3.1.1): reserved flag bits
    // MUST be set to the value listed; PUBREL [MQTT-3.6.1-1], SUBSCRIBE
    // [MQTT-3.8.1-1] and UNSUBSCRIBE [MQTT-3.10.1-1] carry 0b0010, all others 0.
    let expected = match packet_type {
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::Malformed("reserved fixed header flags"));
    }
    Ok(())
}

/// Parses a Variable Byte Integer (section 1.5.5) at the front of `bytes`.
/// `Ok(None)`: more bytes are needed. A fifth byte, or a non-minimal encoding
/// (a last byte of 0 after a continuation, e.g. 0x80 0x00), is malformed
/// [MQTT-1.5.5-1] (5.0: "MUST use the minimum number of bytes").
fn parse_vbi(bytes: &[u8]) -> Result<Option<(u32, usize)>> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer not minimally encoded",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    } else {
        Ok(None)
    }
}

/// Widens without `as`: saturates on a (hypothetical) 16-bit target.
pub(super) fn usize_from(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// A bounds-checked cursor over one packet body. Every read checks what is left;
/// running out is Malformed, never `Ok(None)`: the Remaining Length said the packet
/// was complete.
pub(super) struct Reader {
    pub(super) buf: Bytes,
    pub(super) limits: DecodeLimits,
}

impl Reader {
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8> {
        let v = *self.buf.first().ok_or(DecodeError::Malformed(what))?;
        self.buf.advance(1);
        Ok(v)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let a = self
            .buf
            .get(..N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(DecodeError::Malformed(what))?;
        self.buf.advance(N);
        Ok(a)
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(super) fn vbi(&mut self, what: &'static str) -> Result<u32> {
        match parse_vbi(&self.buf)? {
            Some((v, n)) => {
                self.buf.advance(n);
                Ok(v)
            }
            None => Err(DecodeError::Malformed(what)),
        }
    }

    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        if n > self.buf.len() {
            return Err(DecodeError::Malformed(what));
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary Data (section 1.5.6): two-byte length then that many bytes.
    pub(super) fn binary(&mut self, what: &'static str) -> Result<Bytes> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    /// UTF-8 Encoded String (section 1.5.4).
    pub(super) fn string(&mut self, what: &'static str) -> Result<String> {
        let raw = self.binary(what)?;
        // [MQTT-1.5.4-1] (5.0) / [MQTT-1.5.3-1] (3.1.1): well-formed UTF-8, no
        // surrogate code points (std's validator refuses them).
        let s = std::str::from_utf8(&raw)
            .map_err(|_| DecodeError::Malformed("string is not valid UTF-8"))?;
        // [MQTT-1.5.4-2] (5.0) / [MQTT-1.5.3-2] (3.1.1): no U+0000.
        if s.contains('\0') {
            return Err(DecodeError::Malformed("string contains U+0000"));
        }
        Ok(s.to_owned())
    }

    fn packet_id(&mut self) -> Result<PacketId> {
        let v = self.u16("missing packet identifier")?;
        // [MQTT-2.2.1-3] (5.0) / [MQTT-2.3.1-1] (3.1.1): packet identifiers are non-zero.
        PacketId::new(v).ok_or(DecodeError::Malformed("packet identifier 0"))
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("trailing bytes after packet"))
        }
    }
}

pub(super) fn has_wildcard(topic: &str) -> bool {
    topic.contains(['+', '#'])
}

// Reason codes each v5 packet may carry (sections 3.2.2.2, 3.4.2.1, 3.5.2.1,
// 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1). Any other value is refused
// as a Protocol Error: the packet parses, but its content is not allowed.
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];
/// 3.1.1 SUBACK return codes [MQTT-3.9.3-2]: granted QoS 0-2 or 0x80 Failure.
const V311_SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];

fn reason(r: &mut Reader, allowed: &[u8]) -> Result<ReasonCode> {
    let code = r.u8("missing reason code")?;
    if !allowed.contains(&code) {
        return Err(DecodeError::Protocol(
            "reason code not allowed in this packet",
        ));
    }
    Ok(ReasonCode(code))
}

fn decode_connect(r: &mut Reader) -> Result<Packet> {
    let name = r.string("bad protocol name")?;
    let level = r.u8("missing protocol level")?;
    // [MQTT-3.1.2-1], [MQTT-3.1.2-2]: name "MQTT", level 4 (3.1.1) or 5 (5.0).
    // 3.1 ("MQIsdp", level 3) is not supported either; the caller answers with
    // 0x84 / return code 0x01.
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        _ => return Err(DecodeError::UnsupportedVersion(level)),
    };
    let v5 = version.is_v5();

    let flags = r.u8("missing connect flags")?;
    if flags & 0x01 != 0 {
        // [MQTT-3.1.2-3] The reserved flag MUST be 0.
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        // 5.0 [MQTT-3.1.2-11], [MQTT-3.1.2-13]; 3.1.1 [MQTT-3.1.2-11], [MQTT-3.1.2-13],
        // [MQTT-3.1.2-15]: without a Will, Will QoS and Will Retain MUST be 0.
        return Err(DecodeError::Malformed(
            "Will QoS/Retain set without Will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos)
        // 5.0 [MQTT-3.1.2-12] / 3.1.1 [MQTT-3.1.2-14]: Will QoS MUST NOT be 3.
        .ok_or(DecodeError::Malformed("Will QoS 3"))?;
    if !v5 && password_flag && !username_flag {
        // 3.1.1 [MQTT-3.1.2-22]: no password without a user name (5.0 allows it).
        return Err(DecodeError::Malformed(
            "password flag without user name flag",
        ));
    }
    let keep_alive = r.u16("missing keep alive")?;
    let properties = if v5 {
        read_props(r, Ctx::Connect)?.into_connect()?
    } else {
        ConnectProperties::default()
    };

    // Payload order is fixed: client id, will properties, will topic, will payload,
    // user name, password [MQTT-3.1.3-1].
    let client_id = r.string("bad client identifier")?;
    let will = if will_flag {
        Some(decode_will(r, v5, will_qos, will_retain)?)
    } else {
        None
    };
    // [MQTT-3.1.2-17]..[MQTT-3.1.2-21]: user name / password present iff flagged.
    let username = if username_flag {
        Some(r.string("bad user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("bad password")?)
    } else {
        None
    };
    r.finish()?;
    Ok(Packet::Connect(Box::new(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}

/// The Will in a CONNECT's payload (3.1.3.2 - 3.1.3.4): its properties (5.0),
/// topic and payload; QoS and Retain come from the Connect Flags.
fn decode_will(r: &mut Reader, v5: bool, qos: QoS, retain: bool) -> Result<LastWill> {
    let (delay_interval, properties) = if v5 {
        read_props(r, Ctx::Will)?.into_will()
    } else {
        (0, PublishProperties::default())
    };
    let topic = r.string("bad will topic")?;
    // The Will Topic becomes a PUBLISH topic name: it must be at least one
    // character [MQTT-4.7.3-1] and hold no wildcard [MQTT-3.3.2-2]. CONNACK 0x90
    // (Topic Name invalid) is the 5.0 answer.
    if topic.is_empty() {
        return Err(DecodeError::TopicNameInvalid("empty will topic"));
    }
    if has_wildcard(&topic) {
        return Err(DecodeError::TopicNameInvalid("wildcard in will topic"));
    }
    let payload = r.binary("bad will payload")?;
    Ok(LastWill {
        topic,
        payload,
        qos,
        retain,
        delay_interval,
        properties,
    })
}

fn decode_connack(r: &mut Reader, v: ProtocolVersion) -> Result<Packet> {
    let flags = r.u8("missing acknowledge flags")?;
    if flags & 0xFE != 0 {
        // 5.0 section 3.2.2.1 / 3.1.1 section 3.2.2.1: bits 7-1 are reserved, 0.
        return Err(DecodeError::Malformed("CONNACK reserved flags set"));
    }
    let session_present = flags & 0x01 != 0;
    let (reason_code, properties) = if v.is_v5() {
        let rc = reason(r, CONNACK_CODES)?;
        (rc, read_props(r, Ctx::ConnAck)?.into_connack())
    } else {
        // 3.1.1 return codes (section 3.2.2.3) mapped to their 5.0 equivalents, the
        // inverse of `ReasonCode::to_v311_connack`.
        let rc = match r.u8("missing return code")? {
            0 => ReasonCode::SUCCESS,
            1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            3 => ReasonCode::SERVER_UNAVAILABLE,
            4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            5 => ReasonCode::NOT_AUTHORIZED,
            _ => return Err(DecodeError::Protocol("reserved CONNACK return code")),
        };
        (rc, ConnAckProperties::default())
    };
    r.finish()?;
    Ok(Packet::ConnAck(ConnAck {
        session_present,
        reason_code,
        properties,
    }))
}

fn decode_publish(r: &mut Reader, v: ProtocolVersion, flags: u8) -> Result<Packet> {
    // The flags were validated by `check_first_byte` (QoS 3, DUP with QoS 0).
    let qos =
        QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    let topic = r.string("bad topic name")?;
    // [MQTT-2.2.1-2] Only QoS 1 and 2 carry a packet identifier.
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = if v.is_v5() {
        read_props(r, Ctx::Publish)?.into_publish()
    } else {
        PublishProperties::default()
    };
    // [MQTT-3.3.2-2] The Topic Name MUST NOT contain wildcard characters.
    if has_wildcard(&topic) {
        return Err(DecodeError::TopicNameInvalid("wildcard in topic name"));
    }
    if topic.is_empty() {
        if !v.is_v5() {
            // 3.1.1 [MQTT-4.7.3-1]: topic names are at least one character long.
            return Err(DecodeError::TopicNameInvalid("empty topic name"));
        }
        // 5.0 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and
        // there is no Topic Alias".
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol(
                "empty topic name without Topic Alias",
            ));
        }
    }
    Ok(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    }))
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP.
fn decode_pub_response(r: &mut Reader, v: ProtocolVersion, codes: &[u8]) -> Result<PubResponse> {
    let packet_id = r.packet_id()?;
    let mut resp = PubResponse::success(packet_id);
    // 5.0 3.4.2.1: Reason Code and Property Length may be omitted (Remaining Length
    // 2); with Remaining Length 3 the Property Length is absent and taken as 0.
    if v.is_v5() && !r.is_empty() {
        resp.reason_code = reason(r, codes)?;
        if !r.is_empty() {
            resp.properties = read_props(r, Ctx::Ack)?.into_ack();
        }
    }
    r.finish()?;
    Ok(resp)
}

fn decode_subscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Packet> {
    let packet_id = r.packet_id()?;
    let properties = if v.is_v5() {
        read_props(r, Ctx::Subscribe)?.into_subscribe()
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        // Filter syntax (wildcard placement, emptiness) is checked by the
        // connection (a malformed filter closes it) and the limits by the
        // router (SUBACK 0x8F): only the encoding is checked here.
        let filter = r.string("bad topic filter")?;
        let opts = r.u8("missing subscription options")?;
        let options = if v.is_v5() {
            if opts & 0xC0 != 0 {
                // [MQTT-3.8.3-5] Reserved bits 6-7 MUST be 0.
                return Err(DecodeError::Malformed(
                    "subscription options reserved bits set",
                ));
            }
            let retain_handling = match (opts >> 4) & 0b11 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendAtSubscribeIfNew,
                2 => RetainHandling::DoNotSend,
                // 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3".
                _ => return Err(DecodeError::Protocol("Retain Handling 3")),
            };
            SubscriptionOptions {
                // 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the
                // value 3".
                qos: QoS::from_u8(opts & 0b11)
                    .ok_or(DecodeError::Protocol("subscription QoS 3"))?,
                no_local: opts & 0x04 != 0,
                retain_as_published: opts & 0x08 != 0,
                retain_handling,
            }
        } else {
            if opts & 0xFC != 0 {
                // 3.1.1 [MQTT-3-8.3-4]: reserved bits of the Requested QoS byte are 0.
                return Err(DecodeError::Malformed("requested QoS reserved bits set"));
            }
            SubscriptionOptions {
                // 3.1.1 [MQTT-3-8.3-4]: a requested QoS of 3 is malformed.
                qos: QoS::from_u8(opts & 0b11)
                    .ok_or(DecodeError::Malformed("subscription QoS 3"))?,
                ..SubscriptionOptions::default()
            }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        // [MQTT-3.8.3-3] At least one Topic Filter; none is a Protocol Error.
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Packet::Subscribe(Subscribe {
        packet_id,
        properties,
        filters,
    }))
}

fn decode_suback(r: &mut Reader, v: ProtocolVersion) -> Result<Packet> {
    let packet_id = r.packet_id()?;
    let (properties, codes) = if v.is_v5() {
        (read_props(r, Ctx::Ack)?.into_ack(), SUBACK_CODES)
    } else {
        (AckProperties::default(), V311_SUBACK_CODES)
    };
    let mut reason_codes = Vec::new();
    while !r.is_empty() {
        reason_codes.push(reason(r, codes)?);
    }
    // One reason code per filter of the SUBSCRIBE, which had at least one.
    if reason_codes.is_empty() {
        return Err(DecodeError::Protocol("SUBACK without reason codes"));
    }
    Ok(Packet::SubAck(SubAck {
        packet_id,
        properties,
        reason_codes,
    }))
}

fn decode_unsubscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Packet> {
    let packet_id = r.packet_id()?;
    let user_properties = if v.is_v5() {
        read_props(r, Ctx::Unsubscribe)?.into_user_properties()
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("bad topic filter")?);
    }
    if filters.is_empty() {
        // [MQTT-3.10.3-2] At least one Topic Filter.
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Packet::Unsubscribe(Unsubscribe {
        packet_id,
        user_properties,
        filters,
    }))
}

fn decode_unsuback(r: &mut Reader, v: ProtocolVersion) -> Result<Packet> {
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck {
        packet_id,
        properties: AckProperties::default(),
        reason_codes: Vec::new(),
    };
    // 3.1.1 UNSUBACK is only the packet identifier (Remaining Length 2).
    if v.is_v5() {
        ack.properties = read_props(r, Ctx::Ack)?.into_ack();
        while !r.is_empty() {
            ack.reason_codes.push(reason(r, UNSUBACK_CODES)?);
        }
        if ack.reason_codes.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
        }
    }
    r.finish()?;
    Ok(Packet::UnsubAck(ack))
}

fn decode_disconnect(r: &mut Reader, v: ProtocolVersion) -> Result<Packet> {
    let mut d = Disconnect::default();
    // 3.1.1 DISCONNECT has no variable header. 5.0 3.14.2.1: the Reason Code may be
    // omitted (Remaining Length 0), and with Remaining Length 1 the Property Length
    // is absent (taken as 0).
    if v.is_v5() && !r.is_empty() {
        d.reason_code = reason(r, DISCONNECT_CODES)?;
        if !r.is_empty() {
            d.properties = read_props(r, Ctx::Disconnect)?.into_disconnect();
        }
    }
    r.finish()?;
    Ok(Packet::Disconnect(d))
}

/// AUTH (5.0 only; a 3.1.1 type 15 is refused by `check_first_byte`).
fn decode_auth(r: &mut Reader) -> Result<Packet> {
    let mut a = Auth {
        reason_code: ReasonCode::SUCCESS,
        properties: AuthProperties::default(),
    };
    // 3.15.2.1: Reason Code and properties may be omitted (Remaining Length 0).
    if !r.is_empty() {
        a.reason_code = reason(r, AUTH_CODES)?;
        if !r.is_empty() {
            a.properties = read_props(r, Ctx::Auth)?.into_auth();
        }
    }
    r.finish()?;
    Ok(Packet::Auth(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode::{encode, encoded_len, samples};

    const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
    const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);

    fn bytes(b: &[u8]) -> BytesMut {
        BytesMut::from(b)
    }

    #[test]
    fn empty_and_partial_input_is_none_and_untouched() {
        let mut b = BytesMut::new();
        assert_eq!(decode(&mut b, None, 1024), Ok(None));
        // CONNECT whose remaining length is still arriving.
        let mut b = bytes(&[0x10, 0x80]);
        assert_eq!(decode(&mut b, None, 1024), Ok(None));
        assert_eq!(&b[..], &[0x10, 0x80]);
        // Header complete, body not.
        let mut b = bytes(&[0x30, 0x05, 0x00, 0x01]);
        assert_eq!(decode(&mut b, V5, 1024), Ok(None));
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn too_large_is_reported_from_the_header_alone() {
        // 5 bytes buffered: fixed header says 2 + 200 bytes.
        let mut b = bytes(&[0x30, 0xC8, 0x01, 0x00, 0x01]);
        assert_eq!(
            decode(&mut b, V5, 100),
            Err(DecodeError::TooLarge {
                size: 203,
                max: 100
            })
        );
        // Exactly at the limit is fine (PINGREQ is 2 bytes).
        let mut b = bytes(&[0xC0, 0x00]);
        assert_eq!(decode(&mut b, V5, 2), Ok(Some(Packet::PingReq)));
        let mut b = bytes(&[0xC0, 0x00]);
        assert_eq!(
            decode(&mut b, V5, 1),
            Err(DecodeError::TooLarge { size: 2, max: 1 })
        );
    }

    #[test]
    fn decodes_several_packets_in_sequence() {
        let mut b = bytes(&[0xC0, 0x00, 0xD0, 0x00, 0x40, 0x02, 0x00, 0x07, 0xE0]);
        assert_eq!(decode(&mut b, V311, 64), Ok(Some(Packet::PingReq)));
        assert_eq!(decode(&mut b, V311, 64), Ok(Some(Packet::PingResp)));
        let pid = PacketId::new(7).expect("non-zero");
        assert_eq!(
            decode(&mut b, V311, 64),
            Ok(Some(Packet::PubAck(PubResponse::success(pid))))
        );
        assert_eq!(decode(&mut b, V311, 64), Ok(None));
        assert_eq!(&b[..], &[0xE0]);
    }

    #[test]
    fn payload_is_a_zero_copy_slice() {
        let mut b = bytes(&[0x30, 0x06, 0x00, 0x01, b'a', b'x', b'y', b'z']);
        let start = b.as_ptr() as usize;
        let Ok(Some(Packet::Publish(p))) = decode(&mut b, V311, 64) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!(&p.payload[..], b"xyz");
        assert_eq!(p.payload.as_ptr() as usize, start + 5);
    }

    #[test]
    fn v5_short_forms_of_acks_and_disconnect() {
        let pid = PacketId::new(1).expect("non-zero");
        // PUBACK, Remaining Length 3: reason code without property length.
        let mut b = bytes(&[0x40, 0x03, 0x00, 0x01, 0x10]);
        let mut want = PubResponse::success(pid);
        want.reason_code = ReasonCode::NO_MATCHING_SUBSCRIBERS;
        assert_eq!(decode(&mut b, V5, 64), Ok(Some(Packet::PubAck(want))));
        // DISCONNECT, Remaining Length 1.
        let mut b = bytes(&[0xE0, 0x01, 0x04]);
        let want = Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL,
            ..Disconnect::default()
        };
        assert_eq!(decode(&mut b, V5, 64), Ok(Some(Packet::Disconnect(want))));
        // AUTH, Remaining Length 0.
        let mut b = bytes(&[0xF0, 0x00]);
        assert!(matches!(decode(&mut b, V5, 64), Ok(Some(Packet::Auth(_)))));
    }

    #[test]
    fn publish_may_repeat_subscription_identifier() {
        // Topic "t", properties: 0x0B 1, 0x0B 2.
        let mut b = bytes(&[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x0B, 0x01, 0x0B, 0x02]);
        let Ok(Some(Packet::Publish(p))) = decode(&mut b, V5, 64) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!(p.properties.subscription_identifiers, vec![1, 2]);
    }

    #[test]
    fn connect_with_some_version_uses_its_own_level() {
        for p in samples::v311() {
            if let Packet::Connect(_) = p {
                let mut b = BytesMut::new();
                encode(&p, ProtocolVersion::V311, &mut b).expect("encodes");
                assert_eq!(decode(&mut b, V5, 4096), Ok(Some(p)));
            }
        }
    }

    /// Tiny deterministic PRNG (xorshift64*): no dependency, same sequence on every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            // n is small and non-zero at every call site.
            usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
        }
        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    /// Anything the decoder accepts re-encodes, with `encoded_len` exact, to bytes
    /// that decode to the same packet.
    fn assert_reencodes(p: &Packet, version: Option<ProtocolVersion>) {
        let v = version.unwrap_or(ProtocolVersion::V5);
        let mut out = BytesMut::new();
        if let Err(e) = encode(p, v, &mut out) {
            panic!("decoded packet does not re-encode: {e}: {p:?}");
        }
        assert_eq!(out.len(), encoded_len(p, v));
        assert_eq!(
            decode(&mut out, version, u32::MAX).as_ref(),
            Ok(&Some(p.clone()))
        );
        assert!(out.is_empty());
    }

    /// Smoke fuzz: mutate valid packets (flip, insert, delete, truncate, splice
    /// interesting bytes) and feed them to the decoder in every version mode. Checks
    /// that nothing panics, that decode never consumes more than it was given, and
    /// that every accepted packet survives a re-encode.
    #[test]
    fn smoke_fuzz_mutated_packets() {
        let mut corpus: Vec<Vec<u8>> = Vec::new();
        for (v, packets) in [
            (ProtocolVersion::V311, samples::v311()),
            (ProtocolVersion::V5, samples::v5()),
        ] {
            for p in packets {
                let mut b = BytesMut::new();
                if encode(&p, v, &mut b).is_ok() {
                    corpus.push(b.to_vec());
                }
            }
        }
        assert!(corpus.len() > 20);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let versions = [None, V311, V5];
        let mut decoded = 0usize;
        for i in 0..50_000usize {
            let mut data = corpus[rng.below(corpus.len())].clone();
            // Sometimes append a second packet so framing across packets is exercised.
            if rng.below(8) == 0 {
                data.extend_from_slice(&corpus[rng.below(corpus.len())]);
            }
            for _ in 0..=rng.below(4) {
                let len = data.len();
                match rng.below(6) {
                    0 if len > 0 => {
                        let at = rng.below(len);
                        data[at] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let at = rng.below(len + 1);
                        data.insert(at, rng.byte());
                    }
                    2 if len > 0 => {
                        data.remove(rng.below(len));
                    }
                    3 => data.truncate(rng.below(len + 1)),
                    4 if len > 0 => {
                        let at = rng.below(len);
                        data[at] = [0x00, 0x7F, 0x80, 0xFF, 0x01, 0x0B, 0x26][rng.below(7)];
                    }
                    _ if len > 0 => {
                        let at = rng.below(len);
                        data[at] = rng.byte();
                    }
                    _ => {}
                }
            }
            let version = versions[i % 3];
            let mut buf = BytesMut::from(&data[..]);
            // Decode until the buffer is exhausted, incomplete or rejected.
            for _ in 0..4 {
                let before = buf.len();
                let res = decode(&mut buf, version, 4096);
                assert!(buf.len() <= before, "decode grew the buffer");
                match res {
                    Ok(Some(p)) => {
                        assert!(buf.len() < before, "a packet consumed no bytes");
                        decoded += 1;
                        assert_reencodes(&p, version);
                    }
                    Ok(None) => {
                        assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                        break;
                    }
                    Err(e) => {
                        let _ = e.reason_code();
                        break;
                    }
                }
            }
        }
        // Sanity: the mutations are not so aggressive that nothing decodes.
        assert!(decoded > 1_000, "only {decoded} packets decoded");
    }

    /// User Properties are kept in wire form: a message full of tiny pairs costs
    /// its wire size, not ~100x; the caps refuse a packet before collecting more.
    #[test]
    fn user_properties_are_compact_and_capped() {
        let users: UserProperties = (0..1000).map(|i| (format!("k{i}"), "v")).collect();
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: PublishProperties {
                user_properties: users.clone(),
                ..Default::default()
            },
            payload: Bytes::new(),
        });
        let mut wire = BytesMut::new();
        crate::protocol::encode(&p, ProtocolVersion::V5, &mut wire).unwrap();
        let v5 = Some(ProtocolVersion::V5);
        let Ok(Some(Packet::Publish(back))) = decode(&mut wire.clone(), v5, 1 << 20) else {
            panic!("decodes");
        };
        let got = &back.properties.user_properties;
        assert_eq!(got, &users);
        assert_eq!(got.len(), 1000);
        assert_eq!(got.iter().nth(999), Some(("k999", "v")));
        // The heap holds the pairs' wire bytes and nothing more.
        let wire_props: usize = (0..1000).map(|i| 5 + format!("k{i}").len() + 1).sum();
        assert_eq!(back.properties.heap_size(), wire_props);
        let limits = DecodeLimits {
            max_packet_size: 1 << 20,
            max_user_properties: 999,
            max_property_bytes: 1 << 20,
        };
        assert_eq!(
            decode_with(&mut wire.clone(), v5, limits).unwrap_err(),
            DecodeError::PropertiesTooLarge("user properties")
        );
        let limits = DecodeLimits {
            max_user_properties: 1000,
            max_property_bytes: wire_props as u32 - 1,
            ..limits
        };
        let e = decode_with(&mut wire.clone(), v5, limits).unwrap_err();
        assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
        let limits = DecodeLimits {
            max_property_bytes: wire_props as u32,
            ..limits
        };
        assert!(decode_with(&mut wire, v5, limits).unwrap().is_some());
    }
}
