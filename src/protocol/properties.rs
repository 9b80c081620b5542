//! MQTT 5.0 properties on the way in (section 2.2.2): the property identifiers
//! (table 2-4, shared with the encoder), which packet may carry which, reading a
//! property block with every check the spec makes on one property (duplicates,
//! ranges, values other than 0 or 1, wildcards in a Response Topic) and the caps of
//! `DecodeLimits`, and the per-packet property structs a block becomes.
//!
//! Reads through the decoder's bounds-checked `Reader` and knows nothing of the
//! packet around the block. Writing properties stays beside each packet's layout
//! in `encode.rs`.

use super::decode::{has_wildcard, usize_from, DecodeError, Reader, MAX_VBI};
use super::types::*;
use bytes::Bytes;

type Result<T> = std::result::Result<T, DecodeError>;

/// v5 property identifiers (section 2.2.2.2, table 2-4). Shared with the encoder.
pub(super) mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Which packet a property block belongs to: decides the allowed identifiers
/// (table 2-4) and whether Subscription Identifier may repeat.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

impl Ctx {
    fn allows(self, id: u8) -> bool {
        use prop::*;
        match self {
            Ctx::Connect => matches!(
                id,
                SESSION_EXPIRY_INTERVAL
                    | RECEIVE_MAXIMUM
                    | MAXIMUM_PACKET_SIZE
                    | TOPIC_ALIAS_MAXIMUM
                    | REQUEST_RESPONSE_INFORMATION
                    | REQUEST_PROBLEM_INFORMATION
                    | USER_PROPERTY
                    | AUTHENTICATION_METHOD
                    | AUTHENTICATION_DATA
            ),
            Ctx::Will => matches!(
                id,
                WILL_DELAY_INTERVAL
                    | PAYLOAD_FORMAT_INDICATOR
                    | MESSAGE_EXPIRY_INTERVAL
                    | CONTENT_TYPE
                    | RESPONSE_TOPIC
                    | CORRELATION_DATA
                    | USER_PROPERTY
            ),
            Ctx::ConnAck => matches!(
                id,
                SESSION_EXPIRY_INTERVAL
                    | RECEIVE_MAXIMUM
                    | MAXIMUM_QOS
                    | RETAIN_AVAILABLE
                    | MAXIMUM_PACKET_SIZE
                    | ASSIGNED_CLIENT_IDENTIFIER
                    | TOPIC_ALIAS_MAXIMUM
                    | REASON_STRING
                    | USER_PROPERTY
                    | WILDCARD_SUBSCRIPTION_AVAILABLE
                    | SUBSCRIPTION_IDENTIFIER_AVAILABLE
                    | SHARED_SUBSCRIPTION_AVAILABLE
                    | SERVER_KEEP_ALIVE
                    | RESPONSE_INFORMATION
                    | SERVER_REFERENCE
                    | AUTHENTICATION_METHOD
                    | AUTHENTICATION_DATA
            ),
            Ctx::Publish => matches!(
                id,
                PAYLOAD_FORMAT_INDICATOR
                    | MESSAGE_EXPIRY_INTERVAL
                    | TOPIC_ALIAS
                    | RESPONSE_TOPIC
                    | CORRELATION_DATA
                    | USER_PROPERTY
                    | SUBSCRIPTION_IDENTIFIER
                    | CONTENT_TYPE
            ),
            Ctx::Ack => matches!(id, REASON_STRING | USER_PROPERTY),
            Ctx::Subscribe => matches!(id, SUBSCRIPTION_IDENTIFIER | USER_PROPERTY),
            Ctx::Unsubscribe => id == USER_PROPERTY,
            Ctx::Disconnect => matches!(
                id,
                SESSION_EXPIRY_INTERVAL | REASON_STRING | USER_PROPERTY | SERVER_REFERENCE
            ),
            Ctx::Auth => matches!(
                id,
                AUTHENTICATION_METHOD | AUTHENTICATION_DATA | REASON_STRING | USER_PROPERTY
            ),
        }
    }
}

/// Every v5 property, as read. Only the fields allowed by the block's [`Ctx`] can
/// be set; the per-packet converters move them into the packet's property struct.
#[derive(Default)]
pub(super) struct Props {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
    subscription_identifiers: Vec<u32>,
    session_expiry_interval: Option<u32>,
    assigned_client_identifier: Option<String>,
    server_keep_alive: Option<u16>,
    authentication_method: Option<String>,
    authentication_data: Option<Bytes>,
    request_problem_information: Option<u8>,
    will_delay_interval: Option<u32>,
    request_response_information: Option<u8>,
    response_information: Option<String>,
    server_reference: Option<String>,
    reason_string: Option<String>,
    receive_maximum: Option<u16>,
    topic_alias_maximum: Option<u16>,
    topic_alias: Option<u16>,
    maximum_qos: Option<u8>,
    retain_available: Option<u8>,
    user_properties: UserPropertiesBuilder,
    maximum_packet_size: Option<u32>,
    wildcard_subscription_available: Option<u8>,
    subscription_identifiers_available: Option<u8>,
    shared_subscription_available: Option<u8>,
}

/// Stores a property that may appear at most once: each property section of 5.0
/// says "It is a Protocol Error to include the X more than once".
fn once<T>(slot: &mut Option<T>, v: T, what: &'static str) -> Result<()> {
    if slot.is_some() {
        return Err(DecodeError::Protocol(what));
    }
    *slot = Some(v);
    Ok(())
}

/// For the byte properties whose only values are 0 and 1 ("It is a Protocol Error
/// to include a value other than 0 or 1", e.g. 3.1.2.11.6, 3.2.2.3.4).
fn zero_or_one(v: u8, what: &'static str) -> Result<u8> {
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

/// Reads a property block: Property Length (VBI) then properties (section 2.2.2).
pub(super) fn read_props(r: &mut Reader, ctx: Ctx) -> Result<Props> {
    let len = r.vbi("bad property length")?;
    if len > r.limits.max_property_bytes {
        return Err(DecodeError::PropertiesTooLarge("property section"));
    }
    let limits = r.limits;
    let mut pr = Reader {
        buf: r.take(usize_from(len), "property length exceeds packet")?,
        limits,
    };
    let mut p = Props::default();
    while !pr.is_empty() {
        let id = read_prop_id(&mut pr, ctx)?;
        read_prop(&mut pr, id, ctx, &mut p)?;
    }
    Ok(p)
}

/// A property identifier that is defined and allowed in `ctx`'s packet.
#[inline]
fn read_prop_id(pr: &mut Reader, ctx: Ctx) -> Result<u8> {
    // The identifier is a Variable Byte Integer (section 2.2.2.2); all defined
    // ones fit in one byte.
    let raw = pr.vbi("bad property identifier")?;
    let id =
        u8::try_from(raw).map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
    if !(matches!(id, 0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x1A)
        || matches!(id, 0x1C | 0x1F | 0x21..=0x2A))
    {
        return Err(DecodeError::Malformed("unknown property identifier"));
    }
    // Section 2.2.2.2: "A Control Packet which contains an Identifier which is
    // not valid for its packet type ... is a Malformed Packet".
    if !ctx.allows(id) {
        return Err(DecodeError::Malformed(
            "property not allowed in this packet",
        ));
    }
    Ok(id)
}

const TRUNCATED: &str = "truncated property";

/// The value of property `id` (known and allowed in `ctx`) into `p`, by kind:
/// the two every packet may carry here, the others by what they describe.
#[inline]
fn read_prop(pr: &mut Reader, id: u8, ctx: Ctx, p: &mut Props) -> Result<()> {
    use prop::*;
    match id {
        REASON_STRING => once(
            &mut p.reason_string,
            pr.string(TRUNCATED)?,
            "duplicate Reason String",
        ),
        USER_PROPERTY => {
            // A UTF-8 String Pair; may appear any number of times (2.2.2.2).
            if p.user_properties.len() >= usize_from(pr.limits.max_user_properties) {
                return Err(DecodeError::PropertiesTooLarge("user properties"));
            }
            let name = pr.string(TRUNCATED)?;
            let value = pr.string(TRUNCATED)?;
            // Cannot fail: both came off the wire as MQTT strings.
            p.user_properties.push(&name, &value);
            Ok(())
        }
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA
        | SUBSCRIPTION_IDENTIFIER
        | TOPIC_ALIAS
        | WILL_DELAY_INTERVAL => read_message_prop(pr, id, ctx, p),
        RECEIVE_MAXIMUM
        | TOPIC_ALIAS_MAXIMUM
        | MAXIMUM_PACKET_SIZE
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => read_limit_prop(pr, id, p),
        _ => read_session_prop(pr, id, p),
    }
}

/// Properties of an application message: PUBLISH (3.3.2.3), the Will (3.1.3.2)
/// and the Subscription Identifier a SUBSCRIBE gives (3.8.2.1.2).
#[inline]
fn read_message_prop(pr: &mut Reader, id: u8, ctx: Ctx, p: &mut Props) -> Result<()> {
    use prop::*;
    const T: &str = TRUNCATED;
    match id {
        PAYLOAD_FORMAT_INDICATOR => {
            let v = zero_or_one(pr.u8(T)?, "Payload Format Indicator not 0 or 1")?;
            once(
                &mut p.payload_format_indicator,
                v,
                "duplicate Payload Format Indicator",
            )
        }
        MESSAGE_EXPIRY_INTERVAL => once(
            &mut p.message_expiry_interval,
            pr.u32(T)?,
            "duplicate Message Expiry Interval",
        ),
        CONTENT_TYPE => once(&mut p.content_type, pr.string(T)?, "duplicate Content Type"),
        RESPONSE_TOPIC => {
            let topic = pr.string(T)?;
            // [MQTT-3.3.2-14] The Response Topic MUST NOT contain wildcards.
            if has_wildcard(&topic) {
                return Err(DecodeError::Protocol("Response Topic contains a wildcard"));
            }
            once(&mut p.response_topic, topic, "duplicate Response Topic")
        }
        CORRELATION_DATA => once(
            &mut p.correlation_data,
            pr.binary(T)?,
            "duplicate Correlation Data",
        ),
        SUBSCRIPTION_IDENTIFIER => {
            let v = pr.vbi(T)?;
            // 3.3.2.3.8 / 3.8.2.1.2: "It is a Protocol Error if the Subscription
            // Identifier has a value of 0". VBI bounds it to 268,435,455.
            if v == 0 || v > MAX_VBI {
                return Err(DecodeError::Protocol("Subscription Identifier 0"));
            }
            // May repeat only in PUBLISH (one per matching subscription); in
            // SUBSCRIBE more than one is a Protocol Error (3.8.2.1.2).
            if ctx != Ctx::Publish && !p.subscription_identifiers.is_empty() {
                return Err(DecodeError::Protocol("duplicate Subscription Identifier"));
            }
            p.subscription_identifiers.push(v);
            Ok(())
        }
        TOPIC_ALIAS => {
            let v = pr.u16(T)?;
            // [MQTT-3.3.2-8] A Topic Alias of 0 is not permitted: 0x94
            // Topic Alias invalid, like one above the maximum.
            if v == 0 {
                return Err(DecodeError::TopicAliasInvalid("Topic Alias 0"));
            }
            once(&mut p.topic_alias, v, "duplicate Topic Alias")
        }
        WILL_DELAY_INTERVAL => once(
            &mut p.will_delay_interval,
            pr.u32(T)?,
            "duplicate Will Delay Interval",
        ),
        // Not reached: `read_prop` sends only the identifiers above.
        _ => Err(DecodeError::Malformed("unknown property identifier")),
    }
}

/// What one side can take, announced in CONNECT (3.1.2.11) or CONNACK (3.2.2.3).
#[inline]
fn read_limit_prop(pr: &mut Reader, id: u8, p: &mut Props) -> Result<()> {
    use prop::*;
    const T: &str = TRUNCATED;
    match id {
        RECEIVE_MAXIMUM => {
            let v = pr.u16(T)?;
            // 3.1.2.11.3 / 3.2.2.3.3: "a Protocol Error ... for it to have the value 0".
            if v == 0 {
                return Err(DecodeError::Protocol("Receive Maximum 0"));
            }
            once(&mut p.receive_maximum, v, "duplicate Receive Maximum")
        }
        TOPIC_ALIAS_MAXIMUM => once(
            &mut p.topic_alias_maximum,
            pr.u16(T)?,
            "duplicate Topic Alias Maximum",
        ),
        MAXIMUM_PACKET_SIZE => {
            let v = pr.u32(T)?;
            // 3.1.2.11.4 / 3.2.2.3.6: "a Protocol Error ... for the value to be zero".
            if v == 0 {
                return Err(DecodeError::Protocol("Maximum Packet Size 0"));
            }
            once(
                &mut p.maximum_packet_size,
                v,
                "duplicate Maximum Packet Size",
            )
        }
        MAXIMUM_QOS => {
            // 3.2.2.3.4: only 0 or 1 may be sent (absent means 2).
            let v = zero_or_one(pr.u8(T)?, "Maximum QoS not 0 or 1")?;
            once(&mut p.maximum_qos, v, "duplicate Maximum QoS")
        }
        RETAIN_AVAILABLE => {
            let v = zero_or_one(pr.u8(T)?, "Retain Available not 0 or 1")?;
            once(&mut p.retain_available, v, "duplicate Retain Available")
        }
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            let v = zero_or_one(pr.u8(T)?, "Wildcard Subscription Available not 0 or 1")?;
            once(
                &mut p.wildcard_subscription_available,
                v,
                "duplicate Wildcard Subscription Available",
            )
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            let v = zero_or_one(pr.u8(T)?, "Subscription Identifier Available not 0 or 1")?;
            once(
                &mut p.subscription_identifiers_available,
                v,
                "duplicate Subscription Identifier Available",
            )
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            let v = zero_or_one(pr.u8(T)?, "Shared Subscription Available not 0 or 1")?;
            once(
                &mut p.shared_subscription_available,
                v,
                "duplicate Shared Subscription Available",
            )
        }
        // Not reached: `read_prop` sends only the identifiers above.
        _ => Err(DecodeError::Malformed("unknown property identifier")),
    }
}

/// The session and its authentication: CONNECT, CONNACK, DISCONNECT and AUTH
/// (3.1.2.11, 3.2.2.3, 3.14.2.2, 3.15.2.2).
#[inline]
fn read_session_prop(pr: &mut Reader, id: u8, p: &mut Props) -> Result<()> {
    use prop::*;
    const T: &str = TRUNCATED;
    match id {
        SESSION_EXPIRY_INTERVAL => once(
            &mut p.session_expiry_interval,
            pr.u32(T)?,
            "duplicate Session Expiry Interval",
        ),
        ASSIGNED_CLIENT_IDENTIFIER => once(
            &mut p.assigned_client_identifier,
            pr.string(T)?,
            "duplicate Assigned Client Identifier",
        ),
        SERVER_KEEP_ALIVE => once(
            &mut p.server_keep_alive,
            pr.u16(T)?,
            "duplicate Server Keep Alive",
        ),
        AUTHENTICATION_METHOD => once(
            &mut p.authentication_method,
            pr.string(T)?,
            "duplicate Authentication Method",
        ),
        AUTHENTICATION_DATA => once(
            &mut p.authentication_data,
            pr.binary(T)?,
            "duplicate Authentication Data",
        ),
        REQUEST_PROBLEM_INFORMATION => {
            let v = zero_or_one(pr.u8(T)?, "Request Problem Information not 0 or 1")?;
            once(
                &mut p.request_problem_information,
                v,
                "duplicate Request Problem Information",
            )
        }
        REQUEST_RESPONSE_INFORMATION => {
            let v = zero_or_one(pr.u8(T)?, "Request Response Information not 0 or 1")?;
            once(
                &mut p.request_response_information,
                v,
                "duplicate Request Response Information",
            )
        }
        RESPONSE_INFORMATION => once(
            &mut p.response_information,
            pr.string(T)?,
            "duplicate Response Information",
        ),
        SERVER_REFERENCE => once(
            &mut p.server_reference,
            pr.string(T)?,
            "duplicate Server Reference",
        ),
        // Not reached: `read_prop` sends every other identifier elsewhere.
        _ => Err(DecodeError::Malformed("unknown property identifier")),
    }
}

impl Props {
    pub(super) fn into_connect(self) -> Result<ConnectProperties> {
        // 3.1.2.11.10: "It is a Protocol Error to include Authentication Data if
        // there is no Authentication Method".
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(DecodeError::Protocol(
                "Authentication Data without Authentication Method",
            ));
        }
        Ok(ConnectProperties {
            session_expiry_interval: self.session_expiry_interval,
            receive_maximum: self.receive_maximum,
            maximum_packet_size: self.maximum_packet_size,
            topic_alias_maximum: self.topic_alias_maximum,
            request_response_information: self.request_response_information,
            request_problem_information: self.request_problem_information,
            user_properties: self.user_properties.build().to_vec(),
            authentication_method: self.authentication_method,
            authentication_data: self.authentication_data,
        })
    }

    pub(super) fn into_publish(self) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: self.topic_alias,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            user_properties: self.user_properties.build(),
            subscription_identifiers: self.subscription_identifiers,
            content_type: self.content_type,
        }
    }

    /// The Will's Delay Interval (0 when absent, 3.1.3.2.2) and its message
    /// properties.
    pub(super) fn into_will(mut self) -> (u32, PublishProperties) {
        (
            self.will_delay_interval.take().unwrap_or(0),
            self.into_publish(),
        )
    }

    pub(super) fn into_subscribe(self) -> SubscribeProperties {
        SubscribeProperties {
            subscription_identifier: self.subscription_identifiers.first().copied(),
            user_properties: self.user_properties.build().to_vec(),
        }
    }

    /// UNSUBSCRIBE carries nothing else (3.10.2.1).
    pub(super) fn into_user_properties(self) -> Vec<UserProperty> {
        self.user_properties.build().to_vec()
    }

    pub(super) fn into_connack(self) -> ConnAckProperties {
        ConnAckProperties {
            session_expiry_interval: self.session_expiry_interval,
            receive_maximum: self.receive_maximum,
            maximum_qos: self.maximum_qos,
            retain_available: self.retain_available,
            maximum_packet_size: self.maximum_packet_size,
            assigned_client_identifier: self.assigned_client_identifier,
            topic_alias_maximum: self.topic_alias_maximum,
            reason_string: self.reason_string,
            user_properties: self.user_properties.build().to_vec(),
            wildcard_subscription_available: self.wildcard_subscription_available,
            subscription_identifiers_available: self.subscription_identifiers_available,
            shared_subscription_available: self.shared_subscription_available,
            server_keep_alive: self.server_keep_alive,
            response_information: self.response_information,
            server_reference: self.server_reference,
            authentication_method: self.authentication_method,
            authentication_data: self.authentication_data,
        }
    }

    pub(super) fn into_ack(self) -> AckProperties {
        AckProperties {
            reason_string: self.reason_string,
            user_properties: self.user_properties.build().to_vec(),
        }
    }

    pub(super) fn into_disconnect(self) -> DisconnectProperties {
        DisconnectProperties {
            session_expiry_interval: self.session_expiry_interval,
            reason_string: self.reason_string,
            user_properties: self.user_properties.build().to_vec(),
            server_reference: self.server_reference,
        }
    }

    pub(super) fn into_auth(self) -> AuthProperties {
        AuthProperties {
            authentication_method: self.authentication_method,
            authentication_data: self.authentication_data,
            reason_string: self.reason_string,
            user_properties: self.user_properties.build().to_vec(),
        }
    }
}
