//! Differential test of the MQTT 3.1.1 codec against `mqttbytes` 0.6 (`v4` module),
//! an independent implementation used as an oracle.
//!
//! Every case is built twice, once in each library's types, then checked three ways:
//! the two encoders produce identical bytes, our decoder reads mqttbytes' bytes back
//! to our packet, and mqttbytes reads our bytes back to its packet. A deterministic
//! PRNG adds a bounded set of generated PUBLISH/SUBSCRIBE/UNSUBSCRIBE/CONNECT cases.
//! Known disagreements (where mqttbytes writes something 3.1.1 forbids) are pinned
//! in their own test.

use bytes::{Bytes, BytesMut};
use mqttbytes::v4 as mb;
use mqttbytes::QoS as MbQoS;
use tern::protocol::*;

const MAX: u32 = 1 << 20;

fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("test packet ids are non-zero")
}

fn mb_qos(q: QoS) -> MbQoS {
    match q {
        QoS::AtMostOnce => MbQoS::AtMostOnce,
        QoS::AtLeastOnce => MbQoS::AtLeastOnce,
        QoS::ExactlyOnce => MbQoS::ExactlyOnce,
    }
}

/// One case in both libraries' types.
struct Case {
    name: String,
    ours: Packet,
    theirs: mb::Packet,
}

fn mb_write(p: &mb::Packet) -> BytesMut {
    let mut b = BytesMut::new();
    let r = match p {
        mb::Packet::Connect(c) => c.write(&mut b),
        mb::Packet::ConnAck(c) => c.write(&mut b),
        mb::Packet::Publish(c) => c.write(&mut b),
        mb::Packet::PubAck(c) => c.write(&mut b),
        mb::Packet::PubRec(c) => c.write(&mut b),
        mb::Packet::PubRel(c) => c.write(&mut b),
        mb::Packet::PubComp(c) => c.write(&mut b),
        mb::Packet::Subscribe(c) => c.write(&mut b),
        mb::Packet::SubAck(c) => c.write(&mut b),
        mb::Packet::Unsubscribe(c) => c.write(&mut b),
        mb::Packet::UnsubAck(c) => c.write(&mut b),
        mb::Packet::PingReq => mb::PingReq.write(&mut b),
        mb::Packet::PingResp => mb::PingResp.write(&mut b),
        mb::Packet::Disconnect => mb::Disconnect.write(&mut b),
    };
    r.expect("mqttbytes encodes the case");
    b
}

/// Field-by-field comparison, independent of either library's PartialEq.
fn assert_same(name: &str, ours: &Packet, theirs: &mb::Packet) {
    match (ours, theirs) {
        (Packet::Connect(o), mb::Packet::Connect(t)) => {
            assert_eq!(o.version, ProtocolVersion::V311, "{name}");
            assert_eq!(t.protocol, mqttbytes::Protocol::V4, "{name}");
            assert_eq!(o.keep_alive, t.keep_alive, "{name}: keep alive");
            assert_eq!(o.client_id, t.client_id, "{name}: client id");
            assert_eq!(o.clean_start, t.clean_session, "{name}: clean session");
            match (&o.will, &t.last_will) {
                (None, None) => {}
                (Some(ow), Some(tw)) => {
                    assert_eq!(ow.topic, tw.topic, "{name}: will topic");
                    assert_eq!(ow.payload, tw.message, "{name}: will payload");
                    assert_eq!(mb_qos(ow.qos), tw.qos, "{name}: will qos");
                    assert_eq!(ow.retain, tw.retain, "{name}: will retain");
                }
                (o, t) => panic!("{name}: will {o:?} vs {t:?}"),
            }
            // mqttbytes models an absent user name/password as "" (see the
            // disagreement test), so cases never use empty credentials.
            let (user, pass) = match &t.login {
                Some(l) => (l.username.clone(), l.password.clone()),
                None => (String::new(), String::new()),
            };
            assert_eq!(o.username.clone().unwrap_or_default(), user, "{name}: user");
            let our_pass = o.password.clone().unwrap_or_default();
            assert_eq!(&our_pass[..], pass.as_bytes(), "{name}: password");
        }
        (Packet::ConnAck(o), mb::Packet::ConnAck(t)) => {
            assert_eq!(o.session_present, t.session_present, "{name}");
            assert_eq!(
                o.reason_code.to_v311_connack(),
                t.code as u8,
                "{name}: code"
            );
        }
        (Packet::Publish(o), mb::Packet::Publish(t)) => {
            assert_eq!(o.dup, t.dup, "{name}: dup");
            assert_eq!(mb_qos(o.qos), t.qos, "{name}: qos");
            assert_eq!(o.retain, t.retain, "{name}: retain");
            assert_eq!(o.topic, t.topic, "{name}: topic");
            assert_eq!(o.packet_id.map_or(0, PacketId::get), t.pkid, "{name}: pkid");
            assert_eq!(o.payload, t.payload, "{name}: payload");
        }
        (Packet::PubAck(o), mb::Packet::PubAck(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubRec(o), mb::Packet::PubRec(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubRel(o), mb::Packet::PubRel(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PubComp(o), mb::Packet::PubComp(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::Subscribe(o), mb::Packet::Subscribe(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid, "{name}: pkid");
            assert_eq!(o.filters.len(), t.filters.len(), "{name}: filter count");
            for (of, tf) in o.filters.iter().zip(&t.filters) {
                assert_eq!(of.filter, tf.path, "{name}: filter");
                assert_eq!(mb_qos(of.options.qos), tf.qos, "{name}: filter qos");
            }
        }
        (Packet::SubAck(o), mb::Packet::SubAck(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid, "{name}: pkid");
            let theirs: Vec<u8> = t
                .return_codes
                .iter()
                .map(|c| match c {
                    mb::SubscribeReasonCode::Success(q) => *q as u8,
                    mb::SubscribeReasonCode::Failure => 0x80,
                })
                .collect();
            let ours: Vec<u8> = o.reason_codes.iter().map(|c| c.to_v311_suback()).collect();
            assert_eq!(ours, theirs, "{name}: return codes");
        }
        (Packet::Unsubscribe(o), mb::Packet::Unsubscribe(t)) => {
            assert_eq!(o.packet_id.get(), t.pkid, "{name}: pkid");
            assert_eq!(o.filters, t.topics, "{name}: filters");
        }
        (Packet::UnsubAck(o), mb::Packet::UnsubAck(t)) => assert_eq!(o.packet_id.get(), t.pkid),
        (Packet::PingReq, mb::Packet::PingReq)
        | (Packet::PingResp, mb::Packet::PingResp)
        | (Packet::Disconnect(_), mb::Packet::Disconnect) => {}
        (o, t) => panic!("{name}: packet kinds differ: {o:?} vs {t:?}"),
    }
}

fn check(case: &Case) {
    let name = &case.name;
    let version = if matches!(case.ours, Packet::Connect(_)) {
        None
    } else {
        Some(ProtocolVersion::V311)
    };

    // 1. Same bytes from both encoders (3.1.1 has one encoding per packet).
    let theirs = mb_write(&case.theirs);
    let mut ours = BytesMut::new();
    encode(&case.ours, ProtocolVersion::V311, &mut ours).expect("we encode the case");
    assert_eq!(ours, theirs, "{name}: encodings differ");
    assert_eq!(
        encoded_len(&case.ours, ProtocolVersion::V311),
        ours.len(),
        "{name}"
    );

    // 2. mqttbytes -> ours.
    let mut buf = theirs.clone();
    let decoded = decode(&mut buf, version, MAX)
        .unwrap_or_else(|e| panic!("{name}: we reject mqttbytes' bytes: {e}"))
        .unwrap_or_else(|| panic!("{name}: incomplete"));
    assert!(buf.is_empty(), "{name}: bytes left");
    assert_same(name, &decoded, &case.theirs);
    assert_eq!(decoded, case.ours, "{name}: decoded packet");

    // 3. ours -> mqttbytes.
    let mut buf = ours.clone();
    let back = mb::read(&mut buf, usize::try_from(MAX).unwrap_or(usize::MAX))
        .unwrap_or_else(|e| panic!("{name}: mqttbytes rejects our bytes: {e:?}"));
    assert_same(name, &case.ours, &back);
    assert_eq!(back, case.theirs, "{name}: mqttbytes' packet");
}

struct ConnectSpec<'a> {
    client_id: &'a str,
    keep_alive: u16,
    clean: bool,
    will: Option<(&'a str, &'a [u8], QoS, bool)>,
    user: Option<&'a str>,
    pass: Option<&'a str>,
}

fn connect_case(name: &str, s: &ConnectSpec) -> Case {
    let ours = Connect {
        version: ProtocolVersion::V311,
        clean_start: s.clean,
        keep_alive: s.keep_alive,
        client_id: s.client_id.into(),
        will: s.will.map(|(t, p, q, r)| LastWill {
            topic: t.into(),
            payload: Bytes::copy_from_slice(p),
            qos: q,
            retain: r,
            delay_interval: 0,
            properties: PublishProperties::default(),
        }),
        username: s.user.map(Into::into),
        password: s.pass.map(|p| Bytes::copy_from_slice(p.as_bytes())),
        properties: ConnectProperties::default(),
    };
    let mut theirs = mb::Connect::new(s.client_id);
    theirs.keep_alive = s.keep_alive;
    theirs.clean_session = s.clean;
    theirs.last_will = s
        .will
        .map(|(t, p, q, r)| mb::LastWill::new(t, p.to_vec(), mb_qos(q), r));
    if s.user.is_some() || s.pass.is_some() {
        theirs.set_login(s.user.unwrap_or(""), s.pass.unwrap_or(""));
    }
    Case {
        name: name.into(),
        ours: Packet::Connect(Box::new(ours)),
        theirs: mb::Packet::Connect(theirs),
    }
}

fn publish_case(
    name: &str,
    topic: &str,
    qos: QoS,
    retain: bool,
    dup: bool,
    id: u16,
    payload: &[u8],
) -> Case {
    let ours = Publish {
        dup,
        qos,
        retain,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce {
            None
        } else {
            Some(pid(id))
        },
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    };
    let mut theirs = mb::Publish::new(topic, mb_qos(qos), payload.to_vec());
    theirs.retain = retain;
    theirs.dup = dup;
    theirs.pkid = if qos == QoS::AtMostOnce { 0 } else { id };
    Case {
        name: name.into(),
        ours: Packet::Publish(ours),
        theirs: mb::Packet::Publish(theirs),
    }
}

fn subscribe_case(name: &str, id: u16, filters: &[(&str, QoS)]) -> Case {
    let ours = Subscribe {
        packet_id: pid(id),
        properties: SubscribeProperties::default(),
        filters: filters
            .iter()
            .map(|&(f, q)| SubscribeFilter {
                filter: f.into(),
                options: SubscriptionOptions {
                    qos: q,
                    ..SubscriptionOptions::default()
                },
            })
            .collect(),
    };
    let mut theirs = mb::Subscribe::new_many(
        filters
            .iter()
            .map(|&(f, q)| mb::SubscribeFilter::new(f.into(), mb_qos(q))),
    );
    theirs.pkid = id;
    Case {
        name: name.into(),
        ours: Packet::Subscribe(ours),
        theirs: mb::Packet::Subscribe(theirs),
    }
}

fn unsubscribe_case(name: &str, id: u16, filters: &[&str]) -> Case {
    let ours = Unsubscribe {
        packet_id: pid(id),
        user_properties: Vec::new(),
        filters: filters.iter().map(|f| (*f).to_string()).collect(),
    };
    let theirs = mb::Unsubscribe {
        pkid: id,
        topics: filters.iter().map(|f| (*f).to_string()).collect(),
    };
    Case {
        name: name.into(),
        ours: Packet::Unsubscribe(ours),
        theirs: mb::Packet::Unsubscribe(theirs),
    }
}

fn fixed_cases() -> Vec<Case> {
    let mut v = vec![
        connect_case(
            "CONNECT minimal",
            &ConnectSpec {
                client_id: "c1",
                keep_alive: 60,
                clean: true,
                will: None,
                user: None,
                pass: None,
            },
        ),
        connect_case(
            "CONNECT empty client id, no clean session",
            &ConnectSpec {
                client_id: "",
                keep_alive: 0,
                clean: false,
                will: None,
                user: None,
                pass: None,
            },
        ),
        connect_case(
            "CONNECT with will",
            &ConnectSpec {
                client_id: "c2",
                keep_alive: 10,
                clean: true,
                will: Some(("dev/c2/status", b"offline", QoS::AtLeastOnce, true)),
                user: None,
                pass: None,
            },
        ),
        connect_case(
            "CONNECT with username only",
            &ConnectSpec {
                client_id: "c3",
                keep_alive: 65535,
                clean: true,
                will: None,
                user: Some("alice"),
                pass: None,
            },
        ),
        connect_case(
            "CONNECT with username and password",
            &ConnectSpec {
                client_id: "c4",
                keep_alive: 5,
                clean: true,
                will: None,
                user: Some("bob"),
                pass: Some("s3cr3t"),
            },
        ),
        connect_case(
            "CONNECT with everything",
            &ConnectSpec {
                client_id: "ünïcode-client",
                keep_alive: 300,
                clean: false,
                will: Some(("a/b", b"\x00\x01\xff", QoS::ExactlyOnce, false)),
                user: Some("user"),
                pass: Some("pass"),
            },
        ),
        publish_case(
            "PUBLISH QoS 0",
            "a/b",
            QoS::AtMostOnce,
            false,
            false,
            0,
            b"hello",
        ),
        publish_case(
            "PUBLISH QoS 0 retain",
            "a/b",
            QoS::AtMostOnce,
            true,
            false,
            0,
            b"",
        ),
        publish_case(
            "PUBLISH QoS 1",
            "sensors/temp",
            QoS::AtLeastOnce,
            false,
            false,
            1,
            b"21.5",
        ),
        publish_case(
            "PUBLISH QoS 1 dup retain",
            "x",
            QoS::AtLeastOnce,
            true,
            true,
            65535,
            b"again",
        ),
        publish_case(
            "PUBLISH QoS 2",
            "/leading/slash",
            QoS::ExactlyOnce,
            false,
            false,
            1234,
            &[0xAB; 200],
        ),
        publish_case(
            "PUBLISH QoS 2 dup",
            "$SYS/like",
            QoS::ExactlyOnce,
            true,
            true,
            7,
            &[0u8; 20_000],
        ),
    ];
    v.push(Case {
        name: "CONNACK accepted, session present".into(),
        ours: Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: ConnAckProperties::default(),
        }),
        theirs: mb::Packet::ConnAck(mb::ConnAck::new(mb::ConnectReturnCode::Success, true)),
    });
    for (rc, mbrc) in [
        (
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            mb::ConnectReturnCode::RefusedProtocolVersion,
        ),
        (
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            mb::ConnectReturnCode::BadClientId,
        ),
        (
            ReasonCode::SERVER_UNAVAILABLE,
            mb::ConnectReturnCode::ServiceUnavailable,
        ),
        (
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            mb::ConnectReturnCode::BadUserNamePassword,
        ),
        (
            ReasonCode::NOT_AUTHORIZED,
            mb::ConnectReturnCode::NotAuthorized,
        ),
    ] {
        v.push(Case {
            name: format!("CONNACK refused {rc}"),
            ours: Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: rc,
                properties: ConnAckProperties::default(),
            }),
            theirs: mb::Packet::ConnAck(mb::ConnAck::new(mbrc, false)),
        });
    }
    v.extend([
        Case {
            name: "PUBACK".into(),
            ours: Packet::PubAck(PubResponse::success(pid(1))),
            theirs: mb::Packet::PubAck(mb::PubAck::new(1)),
        },
        Case {
            name: "PUBREC".into(),
            ours: Packet::PubRec(PubResponse::success(pid(0x1234))),
            theirs: mb::Packet::PubRec(mb::PubRec::new(0x1234)),
        },
        Case {
            name: "PUBREL".into(),
            ours: Packet::PubRel(PubResponse::success(pid(0xFFFF))),
            theirs: mb::Packet::PubRel(mb::PubRel::new(0xFFFF)),
        },
        Case {
            name: "PUBCOMP".into(),
            ours: Packet::PubComp(PubResponse::success(pid(300))),
            theirs: mb::Packet::PubComp(mb::PubComp::new(300)),
        },
    ]);
    v.push(subscribe_case(
        "SUBSCRIBE one filter",
        10,
        &[("a/b", QoS::AtMostOnce)],
    ));
    v.push(subscribe_case(
        "SUBSCRIBE multi-filter",
        11,
        &[
            ("a/+", QoS::AtLeastOnce),
            ("#", QoS::ExactlyOnce),
            ("x/y/z", QoS::AtMostOnce),
            ("$SYS/#", QoS::AtLeastOnce),
        ],
    ));
    v.push(Case {
        name: "SUBACK".into(),
        ours: Packet::SubAck(SubAck {
            packet_id: pid(11),
            properties: AckProperties::default(),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
        }),
        theirs: mb::Packet::SubAck(mb::SubAck::new(
            11,
            vec![
                mb::SubscribeReasonCode::Success(MbQoS::AtLeastOnce),
                mb::SubscribeReasonCode::Success(MbQoS::ExactlyOnce),
                mb::SubscribeReasonCode::Success(MbQoS::AtMostOnce),
                mb::SubscribeReasonCode::Failure,
            ],
        )),
    });
    v.push(unsubscribe_case("UNSUBSCRIBE one", 12, &["a/b"]));
    v.push(unsubscribe_case(
        "UNSUBSCRIBE many",
        13,
        &["a/+", "#", "ü/x"],
    ));
    v.push(Case {
        name: "UNSUBACK".into(),
        ours: Packet::UnsubAck(UnsubAck {
            packet_id: pid(13),
            properties: AckProperties::default(),
            reason_codes: Vec::new(),
        }),
        theirs: mb::Packet::UnsubAck(mb::UnsubAck::new(13)),
    });
    v.push(Case {
        name: "PINGREQ".into(),
        ours: Packet::PingReq,
        theirs: mb::Packet::PingReq,
    });
    v.push(Case {
        name: "PINGRESP".into(),
        ours: Packet::PingResp,
        theirs: mb::Packet::PingResp,
    });
    v.push(Case {
        name: "DISCONNECT".into(),
        ours: Packet::Disconnect(Disconnect::default()),
        theirs: mb::Packet::Disconnect,
    });
    v
}

#[test]
fn fixed_cases_agree_with_mqttbytes() {
    let cases = fixed_cases();
    assert!(cases.len() >= 30);
    for case in &cases {
        check(case);
    }
}

/// xorshift64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(u64::try_from(n).unwrap_or(1))).unwrap_or(0)
    }
    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn qos(&mut self) -> QoS {
        QoS::from_u8(u8::try_from(self.below(3)).unwrap_or(0)).unwrap_or_default()
    }
    fn id(&mut self) -> u16 {
        u16::try_from(self.below(65_535) + 1).unwrap_or(1)
    }
    /// A string from `alphabet`, `min..=max` characters long.
    fn text(&mut self, alphabet: &[&str], min: u64, max: u64) -> String {
        let n = min + self.below(max - min + 1);
        (0..n)
            .map(|_| alphabet[self.index(alphabet.len())])
            .collect()
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

const TOPIC_CHARS: &[&str] = &[
    "a", "b", "Z", "0", "/", "-", "_", " ", "$", "é", "ü", "日", "😀",
];
const FILTER_CHARS: &[&str] = &["a", "b", "/", "+", "#", "é", "$", "x"];

#[test]
fn generated_cases_agree_with_mqttbytes() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for i in 0..400 {
        let case = match i % 4 {
            0 => {
                let topic = rng.text(TOPIC_CHARS, 1, 40);
                let qos = rng.qos();
                let dup = qos != QoS::AtMostOnce && rng.bool();
                let retain = rng.bool();
                let id = rng.id();
                let max_len = if rng.below(10) == 0 { 5_000 } else { 64 };
                let payload = rng.bytes(max_len);
                publish_case(
                    &format!("gen {i} PUBLISH"),
                    &topic,
                    qos,
                    retain,
                    dup,
                    id,
                    &payload,
                )
            }
            1 => {
                let n = 1 + rng.below(6);
                let filters: Vec<(String, QoS)> = (0..n)
                    .map(|_| (rng.text(FILTER_CHARS, 0, 20), rng.qos()))
                    .collect();
                let refs: Vec<(&str, QoS)> =
                    filters.iter().map(|(f, q)| (f.as_str(), *q)).collect();
                subscribe_case(&format!("gen {i} SUBSCRIBE"), rng.id(), &refs)
            }
            2 => {
                let n = 1 + rng.below(6);
                let filters: Vec<String> = (0..n).map(|_| rng.text(FILTER_CHARS, 0, 20)).collect();
                let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
                unsubscribe_case(&format!("gen {i} UNSUBSCRIBE"), rng.id(), &refs)
            }
            _ => {
                let client_id = rng.text(TOPIC_CHARS, 0, 23);
                let will_topic = rng.text(TOPIC_CHARS, 1, 30);
                let will_payload = rng.bytes(50);
                let user = rng.text(TOPIC_CHARS, 1, 12);
                let pass = rng.text(TOPIC_CHARS, 1, 12);
                let has_will = rng.bool();
                let (will_qos, will_retain) = (rng.qos(), rng.bool());
                let has_user = rng.bool();
                let has_pass = has_user && rng.bool();
                let spec = ConnectSpec {
                    client_id: &client_id,
                    keep_alive: rng.id(),
                    clean: rng.bool(),
                    will: has_will.then_some((
                        will_topic.as_str(),
                        &will_payload[..],
                        will_qos,
                        will_retain,
                    )),
                    user: has_user.then_some(user.as_str()),
                    pass: has_pass.then_some(pass.as_str()),
                };
                connect_case(&format!("gen {i} CONNECT"), &spec)
            }
        };
        check(&case);
    }
}

/// Where mqttbytes writes what 3.1.1 forbids, our decoder refuses it. Pinned here
/// so a change in either library is noticed.
#[test]
fn known_disagreements() {
    let v311 = Some(ProtocolVersion::V311);

    // mqttbytes writes DUP on a QoS 0 PUBLISH; [MQTT-3.3.1-2] forbids it.
    let mut p = mb::Publish::new("t", MbQoS::AtMostOnce, b"x".to_vec());
    p.dup = true;
    let mut b = mb_write(&mb::Packet::Publish(p));
    assert!(matches!(
        decode(&mut b, v311, MAX),
        Err(DecodeError::Protocol(_))
    ));

    // A password-only login yields Password Flag without User Name Flag, which
    // 3.1.1 forbids [MQTT-3.1.2-22].
    let mut c = mb::Connect::new("c");
    c.set_login("", "secret");
    let mut b = mb_write(&mb::Packet::Connect(c));
    assert!(matches!(
        decode(&mut b, None, MAX),
        Err(DecodeError::Malformed(_))
    ));

    // An empty SUBSCRIBE / UNSUBSCRIBE is written; [MQTT-3.8.3-3] / [MQTT-3.10.3-2].
    let mut s = mb::Subscribe::empty_subscribe();
    s.pkid = 1;
    let mut b = mb_write(&mb::Packet::Subscribe(s));
    assert!(matches!(
        decode(&mut b, v311, MAX),
        Err(DecodeError::Protocol(_))
    ));
    let u = mb::Unsubscribe {
        pkid: 1,
        topics: Vec::new(),
    };
    let mut b = mb_write(&mb::Packet::Unsubscribe(u));
    assert!(matches!(
        decode(&mut b, v311, MAX),
        Err(DecodeError::Protocol(_))
    ));

    // A present-but-empty password reads back in mqttbytes as no login at all:
    // it cannot tell "" from absent. We keep Some(b"").
    let ours = Connect {
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: Some(String::new()),
        password: Some(Bytes::new()),
        properties: ConnectProperties::default(),
    };
    let mut b = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(ours)),
        ProtocolVersion::V311,
        &mut b,
    )
    .expect("encodes");
    match mb::read(&mut b, 1 << 20) {
        Ok(mb::Packet::Connect(c)) => assert_eq!(c.login, None),
        other => panic!("unexpected {other:?}"),
    }

    // mqttbytes does not check reserved fixed-header flags; we do.
    let mut b = BytesMut::from(&[0x41u8, 0x02, 0x00, 0x01][..]);
    assert!(mb::read(&mut b.clone(), 1 << 20).is_ok());
    assert!(matches!(
        decode(&mut b, v311, MAX),
        Err(DecodeError::Malformed(_))
    ));

    // Its size limit applies to the remaining length only; ours to the whole packet.
    let mut b = BytesMut::from(&[0x30u8, 0x03, 0x00, 0x01, b'a'][..]);
    assert!(mb::read(&mut b.clone(), 3).is_ok());
    assert!(matches!(
        decode(&mut b, v311, 4),
        Err(DecodeError::TooLarge { size: 5, max: 4 })
    ));
}
