//! The CONNECT negotiation: what a decoded CONNECT and the configured limits agree
//! on (client id, keep alive, session expiry, windows, packet sizes, topic
//! aliases, the CONNACK properties that tell a v5 client), or the refusal, with
//! the reason code each protocol version gets, that ends the handshake.
//!
//! Pure: no I/O, no clock, no randomness (the suffix of an assigned client id
//! comes from the caller). The login, the router's answer and the writing of
//! CONNACK belong to the connection task (`handshake` in `mod.rs`); refusals from
//! those are mapped here too, so every CONNACK reason code is chosen in one file.

use crate::config::Limits;
use crate::login::Refused;
use crate::protocol::{ConnAckProperties, Connect, ProtocolVersion, ReasonCode};
use crate::session::ClientId;
use crate::topic::{validate_topic_name, TopicLimits};
use std::time::Duration;

/// Why a CONNECT is refused: the CONNACK reason code (the encoder maps it to the
/// 3.1.1 return code) and the reason string sent to a v5 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub code: ReasonCode,
    pub why: &'static str,
}

impl Refusal {
    /// The router is gone (shutting down) before it answered.
    pub const SHUTTING_DOWN: Refusal = Refusal {
        code: ReasonCode::SERVER_UNAVAILABLE,
        why: "shutting down",
    };

    /// A login refused by `login::Logins::check`.
    pub fn login(version: ProtocolVersion, why: Refused) -> Refusal {
        // v5: 0x86 for bad credentials, 0x87 otherwise; 3.1.1 gets 0x05 "not
        // authorized" for both (what Mosquitto answers). Busy: v5 0x89, 3.1.1
        // 0x03 "server unavailable" (via to_v311_connack), so a client retries.
        let (code, why) = match (version.is_v5(), why) {
            (_, Refused::ServerBusy) => (ReasonCode::SERVER_BUSY, "server busy"),
            (true, Refused::BadCredentials) => {
                (ReasonCode::BAD_USER_NAME_OR_PASSWORD, "not authorized")
            }
            _ => (ReasonCode::NOT_AUTHORIZED, "not authorized"),
        };
        Refusal { code, why }
    }

    /// A CONNECT the router refused with `code`: its ACL denies the Will topic
    /// (0x87), or there is no room for the session.
    pub fn by_router(code: ReasonCode) -> Refusal {
        let why = if code == ReasonCode::NOT_AUTHORIZED {
            "will topic not authorized"
        } else {
            "session limit reached"
        };
        Refusal { code, why }
    }

    fn new(code: ReasonCode, why: &'static str) -> Refusal {
        Refusal { code, why }
    }
}

/// What one CONNECT was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Negotiated {
    pub version: ProtocolVersion,
    pub client_id: ClientId,
    /// The id we assigned to an empty one, which a v5 client is told.
    pub assigned: Option<String>,
    /// The keep alive in force, in seconds (0: none).
    pub keep_alive: u16,
    /// Set when it differs from the client's: v5 Server Keep Alive.
    pub server_keep_alive: Option<u16>,
    pub session_expiry: u32,
    /// The client asked for more than `max_session_expiry`: CONNACK says what it got.
    pub expiry_changed: bool,
    /// Deliveries in flight to the client at once: its Receive Maximum, capped by
    /// `max_inflight`.
    pub window: usize,
    /// The client's Maximum Packet Size (v5 only).
    pub client_max_packet: Option<u32>,
    /// Topic aliases we may assign on deliveries (0 for 3.1.1).
    pub out_alias_max: u16,
    /// Reason strings and user properties may be sent [MQTT-3.1.2-29].
    pub problem_info: bool,
}

/// Negotiate `c` against the limits. `id_suffix` is asked for only when an id
/// must be assigned. The checks run in the order a refusal is chosen in.
pub(super) fn negotiate(
    c: &Connect,
    lim: &Limits,
    topics: TopicLimits,
    id_suffix: impl FnOnce() -> u64,
) -> Result<Negotiated, Refusal> {
    let version = c.version;
    let v5 = version.is_v5();
    if c.properties.authentication_method.is_some() {
        // Enhanced authentication is not offered: [MQTT-4.12.0-1] answer 0x8C.
        return Err(Refusal::new(
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication is not supported",
        ));
    }
    let (client_id, assigned) = client_id(c, id_suffix)?;
    let (keep_alive, server_keep_alive) = keep_alive(c, lim)?;
    check_will(c, topics)?;
    let (session_expiry, expiry_changed) = session_expiry(c, lim);
    Ok(Negotiated {
        version,
        client_id,
        assigned,
        keep_alive,
        server_keep_alive,
        session_expiry,
        expiry_changed,
        window: usize::from(
            c.properties
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(lim.max_inflight),
        ),
        client_max_packet: if v5 {
            c.properties.maximum_packet_size
        } else {
            None
        },
        // Each alias keeps its topic for the connection's life: the client's
        // maximum is a ceiling, ours the cap (5.0 section 3.3.2.3.4).
        out_alias_max: if v5 {
            c.properties
                .topic_alias_maximum
                .unwrap_or(0)
                .min(lim.outbound_topic_alias_maximum)
        } else {
            0
        },
        problem_info: c.properties.request_problem_information != Some(0),
    })
}

/// The client id, and the one we assigned if the client sent none.
fn client_id(
    c: &Connect,
    id_suffix: impl FnOnce() -> u64,
) -> Result<(ClientId, Option<String>), Refusal> {
    if !c.client_id.is_empty() {
        return Ok((c.client_id.as_str().into(), None));
    }
    if !c.version.is_v5() && !c.clean_start {
        // [MQTT-3.1.3-8] a 3.1.1 client with an empty id must ask for a clean
        // session: refuse with 0x02 "identifier rejected".
        return Err(Refusal::new(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "empty client id needs clean session",
        ));
    }
    // [MQTT-3.1.3-6] assign a unique id; v5 tells the client (5.0 section 3.2.2.3.7).
    let id = format!("tern-{:016x}", id_suffix());
    Ok((id.as_str().into(), Some(id)))
}

/// The keep alive in force and the Server Keep Alive to return, if any.
fn keep_alive(c: &Connect, lim: &Limits) -> Result<(u16, Option<u16>), Refusal> {
    // Keep alive: 1.5 x the client's value [MQTT-3.1.2-24], capped by max_keepalive.
    let asked = c.keep_alive;
    if lim.max_keepalive < u16::MAX && (asked == 0 || asked > lim.max_keepalive) {
        if c.version.is_v5() {
            // [MQTT-3.2.2-21] the client must use the Server Keep Alive we return.
            return Ok((lim.max_keepalive, Some(lim.max_keepalive)));
        } else if asked > lim.max_keepalive {
            // 3.1.1 cannot be told another value; refuse like Mosquitto does.
            return Err(Refusal::new(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "keep alive above max_keepalive",
            ));
        }
    }
    Ok((asked, None))
}

/// The Will's topic and, when it declares UTF-8, its payload.
fn check_will(c: &Connect, topics: TopicLimits) -> Result<(), Refusal> {
    let Some(w) = &c.will else {
        return Ok(());
    };
    if validate_topic_name(&w.topic, topics).is_err() {
        return Err(Refusal::new(
            ReasonCode::TOPIC_NAME_INVALID,
            "invalid will topic",
        ));
    }
    if w.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&w.payload).is_err()
    {
        return Err(Refusal::new(
            ReasonCode::PAYLOAD_FORMAT_INVALID,
            "will payload is not UTF-8",
        ));
    }
    Ok(())
}

/// The session expiry in force, and whether it is not what the client asked.
fn session_expiry(c: &Connect, lim: &Limits) -> (u32, bool) {
    let max_expiry = u32::try_from(lim.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
    if c.version.is_v5() {
        let asked = c.properties.session_expiry_interval.unwrap_or(0);
        if asked > max_expiry {
            (max_expiry, true)
        } else {
            (asked, false)
        }
    } else if c.clean_start {
        (0, false)
    } else {
        // A 3.1.1 persistent session has no expiry in the protocol; the configured
        // cap keeps an abandoned one from living forever.
        (max_expiry, false)
    }
}

impl Negotiated {
    /// How long the connection may stay silent: 1.5 x the keep alive
    /// [MQTT-3.1.2-24]; None without one.
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The properties of the accepting CONNACK (none for 3.1.1).
    pub fn connack_properties(&self, lim: &Limits) -> ConnAckProperties {
        let mut props = ConnAckProperties::default();
        if self.version.is_v5() {
            props.assigned_client_identifier = self.assigned.clone();
            props.server_keep_alive = self.server_keep_alive;
            if self.expiry_changed {
                props.session_expiry_interval = Some(self.session_expiry);
            }
            props.receive_maximum = Some(lim.receive_maximum);
            props.maximum_packet_size = Some(lim.max_packet_size);
            props.topic_alias_maximum = Some(lim.topic_alias_maximum);
            // Absent means available too (5.0 section 3.2.2.3.14); said explicitly
            // because some clients only look for the property.
            props.shared_subscription_available = Some(1);
        }
        props
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ConnectProperties, LastWill, PublishProperties, QoS};

    fn connect(version: ProtocolVersion, id: &str, clean_start: bool) -> Connect {
        Connect {
            version,
            clean_start,
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    fn v5(id: &str) -> Connect {
        connect(ProtocolVersion::V5, id, true)
    }

    fn v311(id: &str) -> Connect {
        connect(ProtocolVersion::V311, id, true)
    }

    fn run(c: &Connect, lim: &Limits) -> Result<Negotiated, Refusal> {
        negotiate(c, lim, TopicLimits::default(), || 0xab)
    }

    fn ok(c: &Connect, lim: &Limits) -> Negotiated {
        match run(c, lim) {
            Ok(n) => n,
            Err(r) => panic!("refused: {r:?}"),
        }
    }

    fn refused(c: &Connect, lim: &Limits) -> Refusal {
        match run(c, lim) {
            Ok(n) => panic!("accepted: {n:?}"),
            Err(r) => r,
        }
    }

    fn keep_alive_max(max: u16) -> Limits {
        Limits {
            max_keepalive: max,
            ..Limits::default()
        }
    }

    fn expiry_max(secs: u64) -> Limits {
        Limits {
            max_session_expiry: Duration::from_secs(secs),
            ..Limits::default()
        }
    }

    #[test]
    fn a_given_client_id_is_kept_and_no_suffix_is_asked_for() {
        let n = negotiate(
            &v5("c1"),
            &Limits::default(),
            TopicLimits::default(),
            || panic!("no id to assign"),
        );
        let n = n.unwrap_or_else(|r| panic!("refused: {r:?}"));
        assert_eq!(&*n.client_id, "c1");
        assert_eq!(n.assigned, None);
        assert_eq!(
            n.connack_properties(&Limits::default())
                .assigned_client_identifier,
            None
        );
    }

    #[test]
    fn an_empty_v5_client_id_is_assigned_and_told() {
        let lim = Limits::default();
        for clean_start in [true, false] {
            let n = ok(&connect(ProtocolVersion::V5, "", clean_start), &lim);
            assert_eq!(&*n.client_id, "tern-00000000000000ab");
            assert_eq!(n.assigned.as_deref(), Some("tern-00000000000000ab"));
            // 5.0 section 3.2.2.3.7: the client learns its id from CONNACK.
            assert_eq!(
                n.connack_properties(&lim)
                    .assigned_client_identifier
                    .as_deref(),
                Some("tern-00000000000000ab")
            );
        }
    }

    #[test]
    fn an_empty_v311_client_id_with_clean_session_is_assigned() {
        let lim = Limits::default();
        let n = ok(&v311(""), &lim);
        assert_eq!(&*n.client_id, "tern-00000000000000ab");
        // 3.1.1 has no properties to tell it.
        assert_eq!(n.connack_properties(&lim), ConnAckProperties::default());
    }

    #[test]
    fn an_empty_v311_client_id_without_clean_session_is_refused_0x02() {
        let r = refused(
            &connect(ProtocolVersion::V311, "", false),
            &Limits::default(),
        );
        assert_eq!(r.code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        assert_eq!(r.code.to_v311_connack(), 0x02);
        assert_eq!(r.why, "empty client id needs clean session");
    }

    #[test]
    fn v5_keep_alive_is_capped_by_server_keep_alive() {
        let lim = keep_alive_max(30);
        let mut c = v5("c");
        c.keep_alive = 120;
        let n = ok(&c, &lim);
        assert_eq!((n.keep_alive, n.server_keep_alive), (30, Some(30)));
        assert_eq!(n.connack_properties(&lim).server_keep_alive, Some(30));
        assert_eq!(n.keep_alive_timeout(), Some(Duration::from_secs(45)));
        // No keep alive at all is capped too.
        c.keep_alive = 0;
        let n = ok(&c, &lim);
        assert_eq!((n.keep_alive, n.server_keep_alive), (30, Some(30)));
        // Within the cap: the client's value, not repeated back.
        c.keep_alive = 20;
        let n = ok(&c, &lim);
        assert_eq!((n.keep_alive, n.server_keep_alive), (20, None));
        assert_eq!(n.connack_properties(&lim).server_keep_alive, None);
        assert_eq!(n.keep_alive_timeout(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn keep_alive_is_not_capped_by_default() {
        let lim = Limits::default();
        let mut c = v5("c");
        c.keep_alive = 0;
        let n = ok(&c, &lim);
        assert_eq!((n.keep_alive, n.server_keep_alive), (0, None));
        assert_eq!(n.keep_alive_timeout(), None);
        c.keep_alive = u16::MAX;
        assert_eq!(ok(&c, &lim).keep_alive, u16::MAX);
    }

    #[test]
    fn v311_keep_alive_above_the_cap_is_refused() {
        let lim = keep_alive_max(30);
        let mut c = v311("c");
        c.keep_alive = 31;
        let r = refused(&c, &lim);
        assert_eq!(r.code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        assert_eq!(r.code.to_v311_connack(), 0x02);
        assert_eq!(r.why, "keep alive above max_keepalive");
        // 3.1.1 without keep alive cannot be told a value: it keeps none.
        c.keep_alive = 0;
        let n = ok(&c, &lim);
        assert_eq!((n.keep_alive, n.server_keep_alive), (0, None));
        c.keep_alive = 30;
        assert_eq!(ok(&c, &lim).keep_alive, 30);
    }

    #[test]
    fn v5_session_expiry_is_capped_and_told() {
        let lim = expiry_max(100);
        let mut c = v5("c");
        c.properties.session_expiry_interval = Some(1000);
        let n = ok(&c, &lim);
        assert_eq!((n.session_expiry, n.expiry_changed), (100, true));
        assert_eq!(
            n.connack_properties(&lim).session_expiry_interval,
            Some(100)
        );
        c.properties.session_expiry_interval = Some(100);
        let n = ok(&c, &lim);
        assert_eq!((n.session_expiry, n.expiry_changed), (100, false));
        assert_eq!(n.connack_properties(&lim).session_expiry_interval, None);
        c.properties.session_expiry_interval = None;
        assert_eq!(ok(&c, &lim).session_expiry, 0);
    }

    #[test]
    fn v311_session_expiry_is_zero_or_the_cap() {
        let lim = expiry_max(100);
        let n = ok(&v311("c"), &lim);
        assert_eq!((n.session_expiry, n.expiry_changed), (0, false));
        let n = ok(&connect(ProtocolVersion::V311, "c", false), &lim);
        assert_eq!((n.session_expiry, n.expiry_changed), (100, false));
        // A cap beyond 32 bits of seconds is the largest expiry.
        let lim = expiry_max(u64::from(u32::MAX) + 1);
        let n = ok(&connect(ProtocolVersion::V311, "c", false), &lim);
        assert_eq!(n.session_expiry, u32::MAX);
    }

    #[test]
    fn receive_maximum_is_the_window_capped_by_max_inflight() {
        let lim = Limits {
            max_inflight: 20,
            receive_maximum: 7,
            ..Limits::default()
        };
        let mut c = v5("c");
        assert_eq!(ok(&c, &lim).window, 20);
        c.properties.receive_maximum = Some(5);
        assert_eq!(ok(&c, &lim).window, 5);
        c.properties.receive_maximum = Some(500);
        assert_eq!(ok(&c, &lim).window, 20);
        // Ours goes to the client in CONNACK.
        assert_eq!(
            ok(&c, &lim).connack_properties(&lim).receive_maximum,
            Some(7)
        );
        assert_eq!(ok(&v311("c"), &lim).window, 20);
    }

    #[test]
    fn packet_size_and_topic_aliases_are_v5_only() {
        let lim = Limits {
            outbound_topic_alias_maximum: 10,
            topic_alias_maximum: 5,
            max_packet_size: 4096,
            ..Limits::default()
        };
        let mut c = v5("c");
        let n = ok(&c, &lim);
        assert_eq!((n.client_max_packet, n.out_alias_max), (None, 0));
        c.properties.maximum_packet_size = Some(1000);
        c.properties.topic_alias_maximum = Some(100);
        let n = ok(&c, &lim);
        assert_eq!((n.client_max_packet, n.out_alias_max), (Some(1000), 10));
        c.properties.topic_alias_maximum = Some(3);
        assert_eq!(ok(&c, &lim).out_alias_max, 3);
        let props = n.connack_properties(&lim);
        assert_eq!(props.maximum_packet_size, Some(4096));
        assert_eq!(props.topic_alias_maximum, Some(5));
        assert_eq!(props.shared_subscription_available, Some(1));
        let mut c = v311("c");
        c.properties.maximum_packet_size = Some(1000);
        c.properties.topic_alias_maximum = Some(100);
        let n = ok(&c, &lim);
        assert_eq!((n.client_max_packet, n.out_alias_max), (None, 0));
    }

    #[test]
    fn problem_information_is_on_unless_refused() {
        let lim = Limits::default();
        let mut c = v5("c");
        assert!(ok(&c, &lim).problem_info);
        c.properties.request_problem_information = Some(1);
        assert!(ok(&c, &lim).problem_info);
        c.properties.request_problem_information = Some(0);
        assert!(!ok(&c, &lim).problem_info);
    }

    #[test]
    fn enhanced_authentication_is_refused_first() {
        // Even before the empty id that 3.1.1 would refuse.
        let mut c = connect(ProtocolVersion::V311, "", false);
        c.properties.authentication_method = Some("SCRAM-SHA-1".into());
        let r = refused(&c, &Limits::default());
        assert_eq!(r.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
        assert_eq!(r.why, "enhanced authentication is not supported");
    }

    #[test]
    fn a_bad_will_is_refused() {
        let will = |topic: &str, payload: &'static [u8], utf8: bool| LastWill {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: false,
            delay_interval: 0,
            properties: PublishProperties {
                payload_format_indicator: utf8.then_some(1),
                ..PublishProperties::default()
            },
        };
        let lim = Limits::default();
        let mut c = v5("c");
        c.will = Some(will("a/#", b"x", false));
        let r = refused(&c, &lim);
        assert_eq!(
            (r.code, r.why),
            (ReasonCode::TOPIC_NAME_INVALID, "invalid will topic")
        );
        c.will = Some(will("a/b", b"\xff", true));
        let r = refused(&c, &lim);
        assert_eq!(
            (r.code, r.why),
            (
                ReasonCode::PAYLOAD_FORMAT_INVALID,
                "will payload is not UTF-8"
            )
        );
        // Not declared UTF-8: any bytes.
        c.will = Some(will("a/b", b"\xff", false));
        assert!(run(&c, &lim).is_ok());
    }

    #[test]
    fn login_refusals_per_version() {
        use ProtocolVersion::{V311, V5};
        let code = |v, why| Refusal::login(v, why).code;
        assert_eq!(
            code(V5, Refused::BadCredentials),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD
        );
        assert_eq!(code(V5, Refused::NotAuthorized), ReasonCode::NOT_AUTHORIZED);
        // 3.1.1: 0x05 "not authorized" for both.
        assert_eq!(
            code(V311, Refused::BadCredentials),
            ReasonCode::NOT_AUTHORIZED
        );
        assert_eq!(code(V311, Refused::NotAuthorized).to_v311_connack(), 0x05);
        // Busy: 0x89, 3.1.1 0x03 "server unavailable".
        for v in [V5, V311] {
            let r = Refusal::login(v, Refused::ServerBusy);
            assert_eq!((r.code, r.why), (ReasonCode::SERVER_BUSY, "server busy"));
        }
        assert_eq!(ReasonCode::SERVER_BUSY.to_v311_connack(), 0x03);
    }

    #[test]
    fn router_refusals_say_why() {
        assert_eq!(
            Refusal::by_router(ReasonCode::NOT_AUTHORIZED).why,
            "will topic not authorized"
        );
        let r = Refusal::by_router(ReasonCode::QUOTA_EXCEEDED);
        assert_eq!(
            (r.code, r.why),
            (ReasonCode::QUOTA_EXCEEDED, "session limit reached")
        );
        assert_eq!(Refusal::SHUTTING_DOWN.code, ReasonCode::SERVER_UNAVAILABLE);
    }
}
