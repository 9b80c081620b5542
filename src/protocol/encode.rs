//! MQTT 3.1.1 / 5.0 packet encoder: [`Packet`] -> bytes for the wire.
//!
//! Owns the byte layout of every packet in both versions and the exact size
//! computation used before sending (a peer's Maximum Packet Size, 3.1.2.11.4).
//! The body is written by one function over a [`Sink`] that either counts or
//! appends, so [`encoded_len`] and [`encode`] cannot disagree.
//!
//! For 3.1.1 the 5.0-only content is dropped: properties, reason codes of
//! PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK/DISCONNECT; CONNACK and SUBACK codes are
//! mapped to their 3.1.1 return codes.

use super::decode::MAX_VBI;
use super::properties::prop;
use super::types::*;
use bytes::BytesMut;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet too large to encode: {0}")]
    TooLarge(&'static str),
    /// The packet cannot be written as a valid packet of the requested version
    /// (e.g. QoS 1 PUBLISH without packet id, AUTH for 3.1.1).
    #[error("packet cannot be encoded: {0}")]
    Invalid(&'static str),
}

type Result<T> = std::result::Result<T, EncodeError>;

/// Appends `packet` in `version`'s format to `buf`. On error nothing is written.
///
/// A CONNECT is written in its own `Connect::version` (the level byte makes it
/// self-describing, as the decoder reads it), whatever `version` says.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<()> {
    let remaining = remaining_len(packet, version)?;
    buf.reserve(1 + vbi_len(remaining) + remaining);
    let sink: &mut dyn Sink = buf;
    sink.put(&[first_byte(packet)]);
    put_vbi(sink, remaining)?;
    write_body(packet, version, sink)
}

/// Exactly the number of bytes [`encode`] appends for this packet, or `usize::MAX`
/// when `encode` would fail (so any size limit check refuses it).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match remaining_len(packet, version) {
        Ok(n) => 1 + vbi_len(n) + n,
        Err(_) => usize::MAX,
    }
}

fn remaining_len(packet: &Packet, version: ProtocolVersion) -> Result<usize> {
    let mut c = Counter(0);
    write_body(packet, version, &mut c)?;
    // Section 2.1.4: the Remaining Length is at most 268,435,455.
    if c.0 > usize_from(MAX_VBI) {
        return Err(EncodeError::TooLarge(
            "remaining length exceeds 268,435,455",
        ));
    }
    Ok(c.0)
}

fn usize_from(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Byte 1 of the fixed header: type and flags (section 2.1.2/2.1.3). PUBREL,
/// SUBSCRIBE and UNSUBSCRIBE carry 0b0010 [MQTT-3.6.1-1] [MQTT-3.8.1-1]
/// [MQTT-3.10.1-1].
fn first_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(p) => {
            // [MQTT-3.3.1-2] DUP is always 0 for QoS 0, whatever the struct says.
            let dup = p.dup && p.qos != QoS::AtMostOnce;
            (u8::from(dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    (packet.packet_type() << 4) | flags
}

/// Where bytes go: a buffer, or a counter for the size pass.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

fn put_u8(s: &mut dyn Sink, v: u8) {
    s.put(&[v]);
}

fn put_u16(s: &mut dyn Sink, v: u16) {
    s.put(&v.to_be_bytes());
}

fn put_u32(s: &mut dyn Sink, v: u32) {
    s.put(&v.to_be_bytes());
}

/// Variable Byte Integer, minimal encoding [MQTT-1.5.5-1].
/// Append `v` as a Variable Byte Integer (section 1.5.5), as the Remaining
/// Length and some properties are written; for tools and tests that build
/// packets by hand (half-sent or oversized ones the encoder would not make).
pub fn encode_vbi(v: usize, out: &mut BytesMut) -> Result<()> {
    put_vbi(out, v)
}

fn put_vbi(s: &mut dyn Sink, v: usize) -> Result<()> {
    if v > usize_from(MAX_VBI) {
        return Err(EncodeError::TooLarge(
            "variable byte integer exceeds 268,435,455",
        ));
    }
    let mut x = v;
    loop {
        // `x % 128` always fits in a byte.
        let mut b = u8::try_from(x % 128).unwrap_or(0);
        x /= 128;
        if x > 0 {
            b |= 0x80;
        }
        put_u8(s, b);
        if x == 0 {
            return Ok(());
        }
    }
}

fn vbi_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Binary Data (section 1.5.6): at most 65,535 bytes.
fn put_binary(s: &mut dyn Sink, b: &[u8]) -> Result<()> {
    let n = u16::try_from(b.len())
        .map_err(|_| EncodeError::TooLarge("string or binary data longer than 65,535 bytes"))?;
    put_u16(s, n);
    s.put(b);
    Ok(())
}

fn put_string(s: &mut dyn Sink, v: &str) -> Result<()> {
    put_binary(s, v.as_bytes())
}

/// A property block: Property Length then the properties `f` writes (2.2.2.1).
fn put_props(s: &mut dyn Sink, f: &dyn Fn(&mut dyn Sink) -> Result<()>) -> Result<()> {
    let mut c = Counter(0);
    f(&mut c)?;
    put_vbi(s, c.0)?;
    f(s)
}

fn p_u8(s: &mut dyn Sink, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.put(&[id, v]);
    }
}

fn p_u16(s: &mut dyn Sink, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        put_u8(s, id);
        put_u16(s, v);
    }
}

fn p_u32(s: &mut dyn Sink, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        put_u8(s, id);
        put_u32(s, v);
    }
}

fn p_str(s: &mut dyn Sink, id: u8, v: &Option<String>) -> Result<()> {
    if let Some(v) = v {
        put_u8(s, id);
        put_string(s, v)?;
    }
    Ok(())
}

fn p_bin(s: &mut dyn Sink, id: u8, v: &Option<bytes::Bytes>) -> Result<()> {
    if let Some(v) = v {
        put_u8(s, id);
        put_binary(s, v)?;
    }
    Ok(())
}

fn p_user(s: &mut dyn Sink, users: &[UserProperty]) -> Result<()> {
    for (k, v) in users {
        put_u8(s, prop::USER_PROPERTY);
        put_string(s, k)?;
        put_string(s, v)?;
    }
    Ok(())
}

fn p_sub_id(s: &mut dyn Sink, v: u32) -> Result<()> {
    // 3.3.2.3.8: 1 to 268,435,455.
    if v == 0 {
        return Err(EncodeError::Invalid("Subscription Identifier 0"));
    }
    put_u8(s, prop::SUBSCRIPTION_IDENTIFIER);
    put_vbi(s, usize_from(v))
}

/// PUBLISH properties, also the Will properties (plus Will Delay Interval).
fn publish_props(s: &mut dyn Sink, p: &PublishProperties) -> Result<()> {
    p_u8(
        s,
        prop::PAYLOAD_FORMAT_INDICATOR,
        p.payload_format_indicator,
    );
    p_u32(s, prop::MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    p_u16(s, prop::TOPIC_ALIAS, p.topic_alias);
    p_str(s, prop::RESPONSE_TOPIC, &p.response_topic)?;
    p_bin(s, prop::CORRELATION_DATA, &p.correlation_data)?;
    for &id in &p.subscription_identifiers {
        p_sub_id(s, id)?;
    }
    p_str(s, prop::CONTENT_TYPE, &p.content_type)?;
    // Already in wire form (identifier bytes included).
    s.put(p.user_properties.wire());
    Ok(())
}

/// An outgoing PUBLISH borrowed from the broker's shared message, with the
/// per-delivery fields on top: the hot path encodes it without building a
/// `Publish` (no topic `String`, no property clone per receiver).
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when `topic_alias` stands for a topic the receiver already knows.
    pub topic: &'a str,
    pub packet_id: Option<PacketId>,
    /// The message's properties (v5 only; ignored for 3.1.1). Its own
    /// `topic_alias`, `message_expiry_interval` and `subscription_identifiers` are
    /// replaced by the three fields below.
    pub properties: &'a PublishProperties,
    pub topic_alias: Option<u16>,
    pub message_expiry_interval: Option<u32>,
    pub subscription_identifiers: &'a [u32],
    pub payload: &'a [u8],
}

impl PublishView<'_> {
    fn props(&self, s: &mut dyn Sink) -> Result<()> {
        let p = self.properties;
        p_u8(
            s,
            prop::PAYLOAD_FORMAT_INDICATOR,
            p.payload_format_indicator,
        );
        p_u32(
            s,
            prop::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        p_u16(s, prop::TOPIC_ALIAS, self.topic_alias);
        p_str(s, prop::RESPONSE_TOPIC, &p.response_topic)?;
        p_bin(s, prop::CORRELATION_DATA, &p.correlation_data)?;
        for &id in self.subscription_identifiers {
            p_sub_id(s, id)?;
        }
        p_str(s, prop::CONTENT_TYPE, &p.content_type)?;
        s.put(p.user_properties.wire());
        Ok(())
    }

    /// (remaining length, property length) in `version`'s format.
    fn lengths(&self, v: ProtocolVersion) -> Result<(usize, usize)> {
        if !v.is_v5() && self.topic.is_empty() {
            return Err(EncodeError::Invalid("empty topic name in a 3.1.1 PUBLISH"));
        }
        if self.topic.len() > usize::from(u16::MAX) {
            return Err(EncodeError::TooLarge("topic longer than 65,535 bytes"));
        }
        let mut n = 2 + self.topic.len() + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            n += 2;
        }
        let mut props = 0;
        if v.is_v5() {
            let mut c = Counter(0);
            self.props(&mut c)?;
            props = c.0;
            n += vbi_len(props) + props;
        }
        if n > usize_from(MAX_VBI) {
            return Err(EncodeError::TooLarge(
                "remaining length exceeds 268,435,455",
            ));
        }
        Ok((n, props))
    }

    /// Exactly the bytes `encode` appends, or `usize::MAX` if it would fail.
    pub fn encoded_len(&self, v: ProtocolVersion) -> usize {
        match self.lengths(v) {
            Ok((n, _)) => 1 + vbi_len(n) + n,
            Err(_) => usize::MAX,
        }
    }

    /// Append this PUBLISH in `v`'s format. On error nothing is written.
    pub fn encode(&self, v: ProtocolVersion, buf: &mut BytesMut) -> Result<()> {
        let (remaining, props) = self.lengths(v)?;
        let packet_id = match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) => Some(id),
            // [MQTT-2.2.1-2] QoS 1/2 carries a packet identifier.
            (_, None) => return Err(EncodeError::Invalid("QoS > 0 PUBLISH without packet id")),
        };
        buf.reserve(1 + vbi_len(remaining) + remaining);
        // [MQTT-3.3.1-2] DUP is always 0 for QoS 0.
        let dup = self.dup && self.qos != QoS::AtMostOnce;
        let first = 0x30 | (u8::from(dup) << 3) | (self.qos.as_u8() << 1) | u8::from(self.retain);
        let sink: &mut dyn Sink = buf;
        put_u8(sink, first);
        put_vbi(sink, remaining)?;
        put_string(sink, self.topic)?;
        if let Some(id) = packet_id {
            put_u16(sink, id.get());
        }
        if v.is_v5() {
            put_vbi(sink, props)?;
            self.props(sink)?;
        }
        sink.put(self.payload);
        Ok(())
    }
}

fn ack_props(s: &mut dyn Sink, p: &AckProperties) -> Result<()> {
    p_str(s, prop::REASON_STRING, &p.reason_string)?;
    p_user(s, &p.user_properties)
}

/// The variable header and payload of `packet` in `v`'s format: one writer per
/// packet type, so the size pass and the write pass share every line.
fn write_body(packet: &Packet, v: ProtocolVersion, s: &mut dyn Sink) -> Result<()> {
    let v5 = v.is_v5();
    match packet {
        Packet::Connect(c) => write_connect(c, s),
        Packet::ConnAck(c) => write_connack(c, v5, s),
        Packet::Publish(p) => write_publish(p, v5, s),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            write_pub_response(r, v5, s)
        }
        Packet::Subscribe(sub) => write_subscribe(sub, v5, s),
        Packet::SubAck(a) => write_suback(a, v5, s),
        Packet::Unsubscribe(u) => write_unsubscribe(u, v5, s),
        Packet::UnsubAck(a) => write_unsuback(a, v5, s),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => write_disconnect(d, v5, s),
        Packet::Auth(a) => write_auth(a, v5, s),
    }
}

#[inline]
fn write_connack(c: &ConnAck, v5: bool, s: &mut dyn Sink) -> Result<()> {
    put_u8(s, u8::from(c.session_present));
    if !v5 {
        put_u8(s, c.reason_code.to_v311_connack());
        return Ok(());
    }
    put_u8(s, c.reason_code.0);
    put_props(s, &|s| connack_props(s, &c.properties))
}

fn connack_props(s: &mut dyn Sink, p: &ConnAckProperties) -> Result<()> {
    p_u32(s, prop::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    p_u16(s, prop::RECEIVE_MAXIMUM, p.receive_maximum);
    p_u8(s, prop::MAXIMUM_QOS, p.maximum_qos);
    p_u8(s, prop::RETAIN_AVAILABLE, p.retain_available);
    p_u32(s, prop::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    p_str(
        s,
        prop::ASSIGNED_CLIENT_IDENTIFIER,
        &p.assigned_client_identifier,
    )?;
    p_u16(s, prop::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    p_str(s, prop::REASON_STRING, &p.reason_string)?;
    p_u8(
        s,
        prop::WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    p_u8(
        s,
        prop::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifiers_available,
    );
    p_u8(
        s,
        prop::SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    p_u16(s, prop::SERVER_KEEP_ALIVE, p.server_keep_alive);
    p_str(s, prop::RESPONSE_INFORMATION, &p.response_information)?;
    p_str(s, prop::SERVER_REFERENCE, &p.server_reference)?;
    p_str(s, prop::AUTHENTICATION_METHOD, &p.authentication_method)?;
    p_bin(s, prop::AUTHENTICATION_DATA, &p.authentication_data)?;
    p_user(s, &p.user_properties)
}

#[inline]
fn write_publish(p: &Publish, v5: bool, s: &mut dyn Sink) -> Result<()> {
    if !v5 && p.topic.is_empty() {
        // 3.1.1 has no Topic Alias: an empty topic name is invalid [MQTT-4.7.3-1].
        return Err(EncodeError::Invalid("empty topic name in a 3.1.1 PUBLISH"));
    }
    put_string(s, &p.topic)?;
    // [MQTT-2.2.1-2] A QoS 0 PUBLISH MUST NOT contain a packet identifier.
    if p.qos != QoS::AtMostOnce {
        let id = p
            .packet_id
            .ok_or(EncodeError::Invalid("QoS > 0 PUBLISH without packet id"))?;
        put_u16(s, id.get());
    }
    if v5 {
        put_props(s, &|s| publish_props(s, &p.properties))?;
    }
    s.put(&p.payload);
    Ok(())
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one layout.
#[inline]
fn write_pub_response(r: &PubResponse, v5: bool, s: &mut dyn Sink) -> Result<()> {
    put_u16(s, r.packet_id.get());
    // 5.0 [MQTT-3.4.2.1]: Success without properties uses the 2-byte form;
    // a reason code without properties may omit the Property Length.
    if v5 && (r.reason_code != ReasonCode::SUCCESS || !r.properties.is_empty()) {
        put_u8(s, r.reason_code.0);
        if !r.properties.is_empty() {
            put_props(s, &|s| ack_props(s, &r.properties))?;
        }
    }
    Ok(())
}

#[inline]
fn write_subscribe(sub: &Subscribe, v5: bool, s: &mut dyn Sink) -> Result<()> {
    if sub.filters.is_empty() {
        return Err(EncodeError::Invalid("SUBSCRIBE without topic filters"));
    }
    put_u16(s, sub.packet_id.get());
    if v5 {
        let p = &sub.properties;
        put_props(s, &|s| {
            if let Some(id) = p.subscription_identifier {
                p_sub_id(s, id)?;
            }
            p_user(s, &p.user_properties)
        })?;
    }
    for f in &sub.filters {
        put_string(s, &f.filter)?;
        let o = &f.options;
        let mut opts = o.qos.as_u8();
        if v5 {
            // 5.0 3.8.3.1: bit 2 No Local, bit 3 Retain As Published,
            // bits 4-5 Retain Handling; 3.1.1 has only the QoS bits.
            opts |= u8::from(o.no_local) << 2;
            opts |= u8::from(o.retain_as_published) << 3;
            opts |= (o.retain_handling as u8) << 4;
        }
        put_u8(s, opts);
    }
    Ok(())
}

#[inline]
fn write_suback(a: &SubAck, v5: bool, s: &mut dyn Sink) -> Result<()> {
    if a.reason_codes.is_empty() {
        return Err(EncodeError::Invalid("SUBACK without reason codes"));
    }
    put_u16(s, a.packet_id.get());
    if v5 {
        put_props(s, &|s| ack_props(s, &a.properties))?;
    }
    for rc in &a.reason_codes {
        put_u8(s, if v5 { rc.0 } else { rc.to_v311_suback() });
    }
    Ok(())
}

#[inline]
fn write_unsubscribe(u: &Unsubscribe, v5: bool, s: &mut dyn Sink) -> Result<()> {
    if u.filters.is_empty() {
        return Err(EncodeError::Invalid("UNSUBSCRIBE without topic filters"));
    }
    put_u16(s, u.packet_id.get());
    if v5 {
        put_props(s, &|s| p_user(s, &u.user_properties))?;
    }
    for f in &u.filters {
        put_string(s, f)?;
    }
    Ok(())
}

#[inline]
fn write_unsuback(a: &UnsubAck, v5: bool, s: &mut dyn Sink) -> Result<()> {
    put_u16(s, a.packet_id.get());
    // A 3.1.1 UNSUBACK is just the packet identifier.
    if v5 {
        if a.reason_codes.is_empty() {
            return Err(EncodeError::Invalid("UNSUBACK without reason codes"));
        }
        put_props(s, &|s| ack_props(s, &a.properties))?;
        for rc in &a.reason_codes {
            put_u8(s, rc.0);
        }
    }
    Ok(())
}

#[inline]
fn write_disconnect(d: &Disconnect, v5: bool, s: &mut dyn Sink) -> Result<()> {
    let p = &d.properties;
    let no_props = *p == DisconnectProperties::default();
    // 5.0 3.14.2.1: Normal disconnection without properties has Remaining
    // Length 0; a reason code alone may omit the Property Length.
    if v5 && (d.reason_code != ReasonCode::NORMAL_DISCONNECTION || !no_props) {
        put_u8(s, d.reason_code.0);
        if !no_props {
            put_props(s, &|s| {
                p_u32(s, prop::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
                p_str(s, prop::REASON_STRING, &p.reason_string)?;
                p_str(s, prop::SERVER_REFERENCE, &p.server_reference)?;
                p_user(s, &p.user_properties)
            })?;
        }
    }
    Ok(())
}

#[inline]
fn write_auth(a: &Auth, v5: bool, s: &mut dyn Sink) -> Result<()> {
    if !v5 {
        return Err(EncodeError::Invalid("AUTH does not exist in 3.1.1"));
    }
    let p = &a.properties;
    // 3.15.2.1: Success without properties may be sent as Remaining Length 0.
    if a.reason_code != ReasonCode::SUCCESS || *p != AuthProperties::default() {
        put_u8(s, a.reason_code.0);
        put_props(s, &|s| {
            p_str(s, prop::AUTHENTICATION_METHOD, &p.authentication_method)?;
            p_bin(s, prop::AUTHENTICATION_DATA, &p.authentication_data)?;
            p_str(s, prop::REASON_STRING, &p.reason_string)?;
            p_user(s, &p.user_properties)
        })?;
    }
    Ok(())
}

fn write_connect(c: &Connect, s: &mut dyn Sink) -> Result<()> {
    let v5 = c.version.is_v5();
    if !v5 && c.password.is_some() && c.username.is_none() {
        // 3.1.1 [MQTT-3.1.2-22]: no password without a user name.
        return Err(EncodeError::Invalid(
            "3.1.1 CONNECT with password but no user name",
        ));
    }
    put_string(s, "MQTT")?;
    put_u8(s, c.version.level());
    // Connect Flags (3.1.2.3); bit 0 is reserved and 0 [MQTT-3.1.2-3].
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos.as_u8() << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    put_u8(s, flags);
    put_u16(s, c.keep_alive);
    if v5 {
        let p = &c.properties;
        put_props(s, &|s| {
            p_u32(s, prop::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
            p_u16(s, prop::RECEIVE_MAXIMUM, p.receive_maximum);
            p_u32(s, prop::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
            p_u16(s, prop::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
            p_u8(
                s,
                prop::REQUEST_RESPONSE_INFORMATION,
                p.request_response_information,
            );
            p_u8(
                s,
                prop::REQUEST_PROBLEM_INFORMATION,
                p.request_problem_information,
            );
            p_str(s, prop::AUTHENTICATION_METHOD, &p.authentication_method)?;
            p_bin(s, prop::AUTHENTICATION_DATA, &p.authentication_data)?;
            p_user(s, &p.user_properties)
        })?;
    }
    // Payload order [MQTT-3.1.3-1]: client id, will properties, will topic, will
    // payload, user name, password.
    put_string(s, &c.client_id)?;
    if let Some(w) = &c.will {
        if v5 {
            put_props(s, &|s| {
                // Will Delay Interval 0 is the default (3.1.3.2.2): left out.
                if w.delay_interval != 0 {
                    p_u32(s, prop::WILL_DELAY_INTERVAL, Some(w.delay_interval));
                }
                publish_props(s, &w.properties)
            })?;
        }
        put_string(s, &w.topic)?;
        put_binary(s, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_string(s, u)?;
    }
    if let Some(pw) = &c.password {
        put_binary(s, pw)?;
    }
    Ok(())
}

/// Sample packets for the codec's unit tests (round trip, smoke fuzz).
#[cfg(test)]
pub(crate) mod samples {
    use super::super::types::*;
    use bytes::Bytes;

    pub fn pid(v: u16) -> PacketId {
        PacketId::new(v).unwrap_or(PacketId(std::num::NonZeroU16::MIN))
    }

    fn users() -> Vec<UserProperty> {
        vec![
            ("k1".into(), "v1".into()),
            ("k1".into(), "v2 with ünïcödé".into()),
            (String::new(), String::new()),
        ]
    }

    fn ack_props() -> AckProperties {
        AckProperties {
            reason_string: Some("because".into()),
            user_properties: users(),
        }
    }

    fn full_publish_props() -> PublishProperties {
        PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            topic_alias: Some(7),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: users().into(),
            subscription_identifiers: vec![1, 127, 128, 16_384, 268_435_455],
            content_type: Some("text/plain".into()),
        }
    }

    /// Packets valid in 3.1.1 (no 5.0-only content), so they round-trip exactly.
    pub fn v311() -> Vec<Packet> {
        let connect = Connect {
            version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: "client-1".into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        let full_connect = Connect {
            clean_start: false,
            keep_alive: 0,
            client_id: String::new(),
            will: Some(LastWill {
                topic: "will/topic".into(),
                payload: Bytes::from_static(b"gone\x00\xff"),
                qos: QoS::ExactlyOnce,
                retain: true,
                delay_interval: 0,
                properties: PublishProperties::default(),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"\x00secret\xff")),
            ..connect.clone()
        };
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a/b/c".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"hello"),
        };
        vec![
            Packet::Connect(Box::new(connect)),
            Packet::Connect(Box::new(full_connect)),
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::SUCCESS,
                properties: ConnAckProperties::default(),
            }),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::NOT_AUTHORIZED,
                properties: ConnAckProperties::default(),
            }),
            Packet::Publish(publish.clone()),
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: true,
                packet_id: Some(pid(1)),
                payload: Bytes::new(),
                ..publish.clone()
            }),
            Packet::Publish(Publish {
                qos: QoS::ExactlyOnce,
                packet_id: Some(pid(65535)),
                payload: Bytes::from(vec![0xAB; 300]),
                ..publish
            }),
            Packet::PubAck(PubResponse::success(pid(2))),
            Packet::PubRec(PubResponse::success(pid(3))),
            Packet::PubRel(PubResponse::success(pid(4))),
            Packet::PubComp(PubResponse::success(pid(5))),
            Packet::Subscribe(Subscribe {
                packet_id: pid(6),
                properties: SubscribeProperties::default(),
                filters: vec![
                    SubscribeFilter {
                        filter: "a/+/c".into(),
                        options: SubscriptionOptions::default(),
                    },
                    SubscribeFilter {
                        filter: "#".into(),
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            ..SubscriptionOptions::default()
                        },
                    },
                ],
            }),
            Packet::SubAck(SubAck {
                packet_id: pid(6),
                properties: AckProperties::default(),
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_0,
                    ReasonCode::GRANTED_QOS_2,
                    ReasonCode::UNSPECIFIED_ERROR,
                ],
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(7),
                user_properties: Vec::new(),
                filters: vec!["a/+/c".into(), "x".into()],
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(7),
                properties: AckProperties::default(),
                reason_codes: Vec::new(),
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect::default()),
        ]
    }

    /// 5.0 packets with every property each packet allows populated, plus the
    /// short forms.
    pub fn v5() -> Vec<Packet> {
        let connect = Connect {
            version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: "c5".into(),
            will: Some(LastWill {
                topic: "will/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                delay_interval: 120,
                properties: PublishProperties {
                    topic_alias: None,
                    subscription_identifiers: Vec::new(),
                    ..full_publish_props()
                },
            }),
            username: None,
            // 5.0 allows a password without a user name (3.1.2.9).
            password: Some(Bytes::from_static(b"pw")),
            properties: ConnectProperties {
                session_expiry_interval: Some(0xFFFF_FFFF),
                receive_maximum: Some(10),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(16),
                request_response_information: Some(1),
                request_problem_information: Some(0),
                user_properties: users(),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"\x01\x02")),
            },
        };
        let publish = Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "sensors/1/temp".into(),
            packet_id: Some(pid(42)),
            properties: full_publish_props(),
            payload: Bytes::from_static(b"{\"t\":21.5}"),
        };
        let full_resp = PubResponse {
            packet_id: pid(9),
            reason_code: ReasonCode::SUCCESS,
            properties: ack_props(),
        };
        vec![
            Packet::Connect(Box::new(connect.clone())),
            Packet::Connect(Box::new(Connect {
                will: None,
                username: Some("u".into()),
                password: None,
                properties: ConnectProperties::default(),
                ..connect
            })),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::SUCCESS,
                properties: ConnAckProperties {
                    session_expiry_interval: Some(100),
                    receive_maximum: Some(65535),
                    maximum_qos: Some(1),
                    retain_available: Some(0),
                    maximum_packet_size: Some(4096),
                    assigned_client_identifier: Some("auto-123".into()),
                    topic_alias_maximum: Some(5),
                    reason_string: Some("welcome".into()),
                    user_properties: users(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: Some(1),
                    server_keep_alive: Some(20),
                    response_information: Some("resp/".into()),
                    server_reference: Some("other:1883".into()),
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"srv")),
                },
            }),
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::BAD_AUTHENTICATION_METHOD,
                properties: ConnAckProperties::default(),
            }),
            Packet::Publish(publish.clone()),
            // Topic alias in use: empty topic name.
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: String::new(),
                packet_id: None,
                properties: PublishProperties {
                    topic_alias: Some(7),
                    ..PublishProperties::default()
                },
                payload: Bytes::new(),
            }),
            Packet::Publish(Publish {
                properties: PublishProperties::default(),
                ..publish
            }),
            Packet::PubAck(PubResponse::success(pid(1))),
            Packet::PubAck(PubResponse {
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                ..full_resp.clone()
            }),
            Packet::PubAck(PubResponse {
                reason_code: ReasonCode::QUOTA_EXCEEDED,
                properties: AckProperties::default(),
                ..full_resp.clone()
            }),
            Packet::PubRec(PubResponse {
                reason_code: ReasonCode::PAYLOAD_FORMAT_INVALID,
                ..full_resp.clone()
            }),
            Packet::PubRel(PubResponse {
                reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                ..full_resp.clone()
            }),
            Packet::PubComp(full_resp.clone()),
            Packet::PubComp(PubResponse::success(pid(2))),
            Packet::Subscribe(Subscribe {
                packet_id: pid(3),
                properties: SubscribeProperties {
                    subscription_identifier: Some(268_435_455),
                    user_properties: users(),
                },
                filters: vec![
                    SubscribeFilter {
                        filter: "$share/g/a/#".into(),
                        options: SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: false,
                            retain_as_published: true,
                            retain_handling: RetainHandling::DoNotSend,
                        },
                    },
                    SubscribeFilter {
                        filter: "b/+".into(),
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: true,
                            retain_as_published: false,
                            retain_handling: RetainHandling::SendAtSubscribeIfNew,
                        },
                    },
                    // Invalid filters still decode: the broker judges them.
                    SubscribeFilter {
                        filter: "a/#/b".into(),
                        options: SubscriptionOptions::default(),
                    },
                ],
            }),
            Packet::SubAck(SubAck {
                packet_id: pid(3),
                properties: ack_props(),
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_1,
                    ReasonCode::GRANTED_QOS_2,
                    ReasonCode::TOPIC_FILTER_INVALID,
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                ],
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(4),
                user_properties: users(),
                filters: vec!["a/#".into(), "b/+".into()],
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(4),
                properties: ack_props(),
                reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(5),
                properties: AckProperties::default(),
                reason_codes: vec![ReasonCode::NOT_AUTHORIZED],
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect::default()),
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL,
                properties: DisconnectProperties::default(),
            }),
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::SERVER_MOVED,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("moving".into()),
                    user_properties: users(),
                    server_reference: Some("new-host".into()),
                },
            }),
            Packet::Auth(Auth {
                reason_code: ReasonCode::SUCCESS,
                properties: AuthProperties::default(),
            }),
            Packet::Auth(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"\x00challenge")),
                    reason_string: Some("more".into()),
                    user_properties: users(),
                },
            }),
            Packet::Auth(Auth {
                reason_code: ReasonCode::RE_AUTHENTICATE,
                properties: AuthProperties::default(),
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{self, pid};
    use super::*;
    use crate::protocol::decode::decode;
    use bytes::Bytes;

    fn enc(p: &Packet, v: ProtocolVersion) -> BytesMut {
        let mut b = BytesMut::new();
        encode(p, v, &mut b).expect("sample encodes");
        b
    }

    fn round_trip(p: &Packet, v: ProtocolVersion) {
        let mut b = enc(p, v);
        assert_eq!(b.len(), encoded_len(p, v), "encoded_len of {}", p.name());
        // Trailing garbage must stay in the buffer.
        b.extend_from_slice(&[0xFF]);
        let got = decode(&mut b, Some(v), 1 << 20);
        assert_eq!(got, Ok(Some(p.clone())), "{} {:?}", p.name(), v);
        assert_eq!(&b[..], &[0xFF]);
        if let Packet::Connect(_) = p {
            let mut b = enc(p, v);
            assert_eq!(decode(&mut b, None, 1 << 20), Ok(Some(p.clone())));
        }
    }

    #[test]
    fn round_trip_v311_every_packet_type() {
        let all = samples::v311();
        let mut types: Vec<u8> = all.iter().map(Packet::packet_type).collect();
        types.dedup();
        assert_eq!(types, (1..=14).collect::<Vec<u8>>());
        for p in &all {
            round_trip(p, ProtocolVersion::V311);
        }
    }

    #[test]
    fn round_trip_v5_every_packet_type() {
        let all = samples::v5();
        let mut types: Vec<u8> = all.iter().map(Packet::packet_type).collect();
        types.dedup();
        assert_eq!(types, (1..=15).collect::<Vec<u8>>());
        for p in &all {
            round_trip(p, ProtocolVersion::V5);
        }
    }

    #[test]
    fn v5_packets_written_for_v311_lose_v5_content() {
        let resp = PubResponse {
            packet_id: pid(3),
            reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
            properties: AckProperties {
                reason_string: Some("x".into()),
                user_properties: Vec::new(),
            },
        };
        assert_eq!(
            &enc(&Packet::PubAck(resp), ProtocolVersion::V311)[..],
            &[0x40, 0x02, 0x00, 0x03]
        );
        let d = Disconnect {
            reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
            ..Disconnect::default()
        };
        assert_eq!(
            &enc(&Packet::Disconnect(d), ProtocolVersion::V311)[..],
            &[0xE0, 0x00]
        );
        let ua = UnsubAck {
            packet_id: pid(1),
            properties: AckProperties::default(),
            reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        };
        assert_eq!(
            &enc(&Packet::UnsubAck(ua), ProtocolVersion::V311)[..],
            &[0xB0, 0x02, 0x00, 0x01]
        );
        let ca = ConnAck {
            session_present: false,
            reason_code: ReasonCode::BANNED,
            properties: ConnAckProperties {
                reason_string: Some("no".into()),
                ..ConnAckProperties::default()
            },
        };
        assert_eq!(
            &enc(&Packet::ConnAck(ca), ProtocolVersion::V311)[..],
            &[0x20, 0x02, 0x00, 0x05]
        );
        let sa = SubAck {
            packet_id: pid(2),
            properties: AckProperties::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::QUOTA_EXCEEDED],
        };
        assert_eq!(
            &enc(&Packet::SubAck(sa), ProtocolVersion::V311)[..],
            &[0x90, 0x04, 0x00, 0x02, 0x01, 0x80]
        );
        // Every v5 sample either encodes for 3.1.1 into something the 3.1.1
        // decoder accepts, or is refused by the encoder (AUTH, alias-only topic).
        for p in samples::v5() {
            let v = ProtocolVersion::V311;
            let mut b = BytesMut::new();
            match encode(&p, v, &mut b) {
                Ok(()) => {
                    assert_eq!(b.len(), encoded_len(&p, v));
                    let r = decode(&mut b, Some(v), 1 << 20);
                    // The v5 CONNECT keeps its own level and so round-trips exactly.
                    assert!(matches!(r, Ok(Some(_))), "{}: {r:?}", p.name());
                    assert!(b.is_empty());
                }
                Err(_) => assert_eq!(encoded_len(&p, v), usize::MAX),
            }
        }
    }

    #[test]
    fn v5_short_forms() {
        let v = ProtocolVersion::V5;
        assert_eq!(
            &enc(&Packet::PubRel(PubResponse::success(pid(0x102))), v)[..],
            &[0x62, 0x02, 0x01, 0x02]
        );
        let r = PubResponse {
            reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            ..PubResponse::success(pid(1))
        };
        assert_eq!(
            &enc(&Packet::PubComp(r), v)[..],
            &[0x70, 0x03, 0x00, 0x01, 0x92]
        );
        assert_eq!(
            &enc(&Packet::Disconnect(Disconnect::default()), v)[..],
            &[0xE0, 0x00]
        );
    }

    #[test]
    fn publish_header_flags() {
        let p = Publish {
            dup: true,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: "t".into(),
            packet_id: Some(pid(9)),
            properties: PublishProperties::default(),
            payload: Bytes::new(),
        };
        // DUP and the packet id are dropped for QoS 0 [MQTT-3.3.1-2] [MQTT-2.2.1-2].
        assert_eq!(
            &enc(&Packet::Publish(p.clone()), ProtocolVersion::V311)[..],
            &[0x31, 0x03, 0x00, 0x01, b't']
        );
        let q2 = Publish {
            qos: QoS::ExactlyOnce,
            ..p.clone()
        };
        assert_eq!(
            &enc(&Packet::Publish(q2), ProtocolVersion::V5)[..],
            &[0x3D, 0x06, 0x00, 0x01, b't', 0x00, 0x09, 0x00]
        );
        let no_id = Publish {
            qos: QoS::AtLeastOnce,
            packet_id: None,
            ..p
        };
        let pk = Packet::Publish(no_id);
        let mut b = BytesMut::new();
        assert!(matches!(
            encode(&pk, ProtocolVersion::V5, &mut b),
            Err(EncodeError::Invalid(_))
        ));
        assert!(b.is_empty());
        assert_eq!(encoded_len(&pk, ProtocolVersion::V5), usize::MAX);
    }

    #[test]
    fn unrepresentable_packets_are_errors() {
        let long = "x".repeat(65_536);
        let p = Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(1),
            user_properties: Vec::new(),
            filters: vec![long],
        });
        let mut b = BytesMut::new();
        assert!(matches!(
            encode(&p, ProtocolVersion::V311, &mut b),
            Err(EncodeError::TooLarge(_))
        ));
        assert!(b.is_empty());
        let auth = Packet::Auth(Auth {
            reason_code: ReasonCode::SUCCESS,
            properties: AuthProperties::default(),
        });
        assert!(encode(&auth, ProtocolVersion::V311, &mut b).is_err());
        let c = Connect {
            version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: None,
            password: Some(Bytes::from_static(b"p")),
            properties: ConnectProperties::default(),
        };
        assert!(encode(&Packet::Connect(Box::new(c)), ProtocolVersion::V311, &mut b).is_err());
        assert!(b.is_empty());
    }

    #[test]
    fn remaining_length_limit() {
        // A payload of exactly the maximum minus the topic overhead encodes; one more
        // byte does not. Checked with encoded_len only, to keep memory low.
        let overhead = 2 + 1; // topic "t"
        let max = 268_435_455usize;
        let mut p = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; max - overhead]),
        };
        let v = ProtocolVersion::V311;
        assert_eq!(encoded_len(&Packet::Publish(p.clone()), v), 1 + 4 + max);
        p.payload = Bytes::from(vec![0u8; max - overhead + 1]);
        assert_eq!(encoded_len(&Packet::Publish(p), v), usize::MAX);
    }

    #[test]
    fn vbi_lengths_match_encoding() {
        for v in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut c = Counter(0);
            put_vbi(&mut c, v).expect("in range");
            assert_eq!(c.0, vbi_len(v), "{v}");
        }
        assert!(put_vbi(&mut Counter(0), 268_435_456).is_err());
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use bytes::Bytes;

    /// The borrowed fast path writes exactly what the general encoder writes.
    #[test]
    fn publish_view_matches_the_general_encoder() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(99),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"cd")),
            user_properties: vec![
                ("k".to_string(), "v".to_string()),
                ("k".to_string(), "w".to_string()),
            ]
            .into(),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for (qos, pid) in [
                (QoS::AtMostOnce, None),
                (QoS::ExactlyOnce, PacketId::new(7)),
            ] {
                for (alias, topic) in [(None, "a/b"), (Some(3u16), "a/b")] {
                    let ids = [5u32, 300];
                    let view = PublishView {
                        dup: true,
                        qos,
                        retain: true,
                        topic,
                        packet_id: pid,
                        properties: &props,
                        topic_alias: alias,
                        message_expiry_interval: Some(42),
                        subscription_identifiers: &ids,
                        payload: b"hello",
                    };
                    let mut owned_props = props.clone();
                    owned_props.topic_alias = alias;
                    owned_props.message_expiry_interval = Some(42);
                    owned_props.subscription_identifiers = ids.to_vec();
                    let owned = Packet::Publish(Publish {
                        dup: true,
                        qos,
                        retain: true,
                        topic: topic.into(),
                        packet_id: pid,
                        properties: owned_props,
                        payload: Bytes::from_static(b"hello"),
                    });
                    let mut a = BytesMut::new();
                    let mut b = BytesMut::new();
                    view.encode(v, &mut a).unwrap();
                    encode(&owned, v, &mut b).unwrap();
                    assert_eq!(a, b, "{v:?} {qos:?} {alias:?}");
                    assert_eq!(view.encoded_len(v), a.len());
                }
            }
        }
    }
}
