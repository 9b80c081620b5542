//! The bridge's MQTT client side of one link to a remote broker, sans I/O: the
//! CONNECT exchange, keep-alive (PINGREQ, and a link that stays silent past
//! 1.5 keep-alives counts as dead: a half-open TCP link is noticed), packet ids,
//! outgoing QoS 1/2 flows within the remote's Receive Maximum, incoming QoS 1/2
//! flows whose acknowledgement waits for the local router (`ack_incoming`), and
//! SUBSCRIBE. Pure: packets in (`handle`), packets out (`poll_transmit`), time
//! passed in (`handle_timeout` at `poll_timeout`). The link task owns the socket.
//!
//! Outgoing messages carry a `tag` (the local delivery they came from): their
//! acknowledgement comes back as an `Event::Acked` with the remote's reason code,
//! so the local side finishes (or refuses) exactly that delivery. A link that
//! drops keeps what is unacknowledged: on the next CONNECT with a resumed
//! session it is re-sent with DUP set, PUBREL for what the remote already
//! received [MQTT-4.4.0-1]; with a new session, as new PUBLISHes.

use crate::protocol::{
    Connect, ConnectProperties, Disconnect, Packet, PacketId, ProtocolVersion, PubResponse,
    Publish, QoS, ReasonCode, Subscribe, SubscribeFilter, SubscribeProperties,
};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How the client presents itself to the remote.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub version: ProtocolVersion,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub keep_alive: Duration,
    pub clean_start: bool,
    /// v5 Session Expiry Interval asked for (3.1.1: clean session 0 keeps it).
    pub session_expiry: u32,
    /// Our own cap on unacknowledged outgoing QoS 1/2 messages (the remote's
    /// Receive Maximum may lower it).
    pub max_inflight: u16,
    /// How long the CONNACK may take.
    pub connect_timeout: Duration,
}

/// What the link learns from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// CONNACK with success.
    Connected { session_present: bool },
    /// The remote refused the CONNECT (or a v5 DISCONNECT came): the link ends.
    Refused(ReasonCode),
    /// The outgoing message `tag` is done: acknowledged with this code
    /// (>= 0x80: the remote refused it, v5), or sent at QoS 0.
    Acked { tag: u64, reason: ReasonCode },
    /// A message from the remote. QoS 1/2: answer with `ack_incoming(id)` once
    /// the local router has taken it.
    Received(Publish),
    /// PUBREL for incoming QoS 2 message `id`: release it locally, then
    /// `complete_incoming(id)` (PUBCOMP), so the local id is free before the
    /// remote may reuse it.
    Released(PacketId),
    /// SUBACK codes for a `subscribe`.
    Subscribed(Vec<ReasonCode>),
    /// The link must be closed (keep-alive timeout, protocol error): why.
    Dead(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No link.
    Down,
    /// CONNECT sent at this time.
    Connecting(Instant),
    Up,
}

/// An outgoing QoS 1/2 message waiting for its acknowledgement.
#[derive(Debug)]
struct Out {
    tag: u64,
    publish: Publish,
    /// PUBREC received: only PUBREL / PUBCOMP remain (QoS 2).
    released: bool,
}

#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    phase: Phase,
    transmit: VecDeque<Packet>,
    events: VecDeque<Event>,
    /// Unacknowledged outgoing QoS 1/2 messages by packet id, oldest first by
    /// the order they were sent in (`order`).
    inflight: BTreeMap<u16, Out>,
    order: VecDeque<u16>,
    next_pid: u16,
    /// min(our max_inflight, the remote's Receive Maximum).
    window: usize,
    /// Incoming QoS 2 ids whose PUBREC went out, waiting for PUBREL.
    incoming_qos2: std::collections::BTreeSet<u16>,
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    ping_sent: Option<Instant>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        let window = usize::from(config.max_inflight.max(1));
        Client {
            config,
            phase: Phase::Down,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            inflight: BTreeMap::new(),
            order: VecDeque::new(),
            next_pid: 1,
            window,
            incoming_qos2: Default::default(),
            last_sent: None,
            last_received: None,
            ping_sent: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// Unacknowledged outgoing messages.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// May another QoS 1/2 message be published now?
    pub fn has_room(&self) -> bool {
        self.is_up() && self.inflight.len() < self.window
    }

    /// A new link is open: send CONNECT.
    pub fn connect(&mut self, now: Instant) {
        self.transmit.clear();
        self.phase = Phase::Connecting(now);
        self.ping_sent = None;
        self.last_received = Some(now);
        let c = &self.config;
        let mut properties = ConnectProperties::default();
        if c.version.is_v5() {
            properties.session_expiry_interval = Some(c.session_expiry);
            properties.receive_maximum = Some(c.max_inflight.max(1));
        }
        let keep_alive = u16::try_from(c.keep_alive.as_secs()).unwrap_or(u16::MAX);
        self.push(
            now,
            Packet::Connect(Box::new(Connect {
                version: c.version,
                clean_start: c.clean_start,
                keep_alive,
                client_id: c.client_id.clone(),
                will: None,
                username: c.username.clone(),
                password: c.password.clone(),
                properties,
            })),
        );
    }

    /// The link is gone (socket closed or to be closed). What is unacknowledged
    /// stays for the next link.
    pub fn link_lost(&mut self) {
        self.phase = Phase::Down;
        self.transmit.clear();
        self.ping_sent = None;
    }

    /// Close the link politely (DISCONNECT 0x00).
    pub fn disconnect(&mut self, now: Instant) {
        if self.is_up() {
            self.push(now, Packet::Disconnect(Disconnect::default()));
        }
    }

    fn push(&mut self, now: Instant, p: Packet) {
        self.last_sent = Some(now);
        self.transmit.push_back(p);
    }

    fn allocate_pid(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            let id = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return PacketId::new(id);
            }
        }
        None
    }

    /// Publish `publish` (its packet id is assigned here) for the local
    /// delivery `tag`. QoS 0 is done at once. False (nothing done) when the
    /// link is not up or the window is full: ask again after an `Acked`.
    pub fn publish(&mut self, now: Instant, tag: u64, mut publish: Publish) -> bool {
        if !self.is_up() {
            return false;
        }
        if publish.qos == QoS::AtMostOnce {
            publish.packet_id = None;
            self.push(now, Packet::Publish(publish));
            self.events.push_back(Event::Acked {
                tag,
                reason: ReasonCode::SUCCESS,
            });
            return true;
        }
        if self.inflight.len() >= self.window {
            return false;
        }
        let Some(pid) = self.allocate_pid() else {
            return false;
        };
        publish.packet_id = Some(pid);
        publish.dup = false;
        self.push(now, Packet::Publish(publish.clone()));
        self.inflight.insert(
            pid.get(),
            Out {
                tag,
                publish,
                released: false,
            },
        );
        self.order.push_back(pid.get());
        true
    }

    /// Subscribe to `filters` (each with its options) with packet id 1..: the
    /// SUBACK comes back as `Event::Subscribed`.
    pub fn subscribe(&mut self, now: Instant, filters: Vec<SubscribeFilter>) {
        if filters.is_empty() || !self.is_up() {
            return;
        }
        // SUBSCRIBE ids share the space with PUBLISH ids only while in flight;
        // one subscription request at a time is all a bridge needs.
        let Some(pid) = self.allocate_pid() else {
            return;
        };
        self.push(
            now,
            Packet::Subscribe(Subscribe {
                packet_id: pid,
                properties: SubscribeProperties::default(),
                filters,
            }),
        );
    }

    /// The local router took incoming message `pid` (QoS 1: PUBACK; QoS 2:
    /// PUBREC, then PUBCOMP when PUBREL comes).
    pub fn ack_incoming(&mut self, now: Instant, pid: PacketId, qos: QoS) {
        if !self.is_up() {
            // The remote re-sends it on the next link [MQTT-4.4.0-1].
            return;
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.push(now, Packet::PubAck(PubResponse::success(pid))),
            QoS::ExactlyOnce => {
                self.incoming_qos2.insert(pid.get());
                self.push(now, Packet::PubRec(PubResponse::success(pid)));
            }
        }
    }

    /// The local router released incoming QoS 2 message `pid`: PUBCOMP.
    pub fn complete_incoming(&mut self, now: Instant, pid: PacketId) {
        if self.is_up() {
            self.push(now, Packet::PubComp(PubResponse::success(pid)));
        }
    }

    /// A packet from the remote.
    pub fn handle(&mut self, now: Instant, packet: Packet) {
        self.last_received = Some(now);
        self.ping_sent = None;
        match packet {
            Packet::ConnAck(a) => {
                if !matches!(self.phase, Phase::Connecting(_)) {
                    self.events.push_back(Event::Dead("CONNACK out of turn"));
                    return;
                }
                if a.reason_code.is_error() {
                    self.events.push_back(Event::Refused(a.reason_code));
                    return;
                }
                self.phase = Phase::Up;
                let remote_max = a.properties.receive_maximum.unwrap_or(u16::MAX);
                self.window = usize::from(self.config.max_inflight.min(remote_max).max(1));
                if !a.session_present {
                    // A new session on the remote: what was unacknowledged is
                    // sent again as new messages (a PUBREL for an id the remote
                    // never knew would be answered 0x92 and lose it).
                    for o in self.inflight.values_mut() {
                        o.released = false;
                    }
                    self.incoming_qos2.clear();
                }
                self.resend(now, a.session_present);
                self.events.push_back(Event::Connected {
                    session_present: a.session_present,
                });
            }
            Packet::PubAck(r) => self.finish(r, QoS::AtLeastOnce),
            Packet::PubRec(r) => {
                let id = r.packet_id.get();
                match self.inflight.get_mut(&id) {
                    Some(o) if o.publish.qos == QoS::ExactlyOnce && !r.reason_code.is_error() => {
                        o.released = true;
                        self.push(now, Packet::PubRel(PubResponse::success(r.packet_id)));
                    }
                    Some(o) if o.publish.qos == QoS::ExactlyOnce => {
                        // Refused at PUBREC: the flow ends here (5.0 section 4.3.3).
                        let tag = o.tag;
                        self.remove(id);
                        self.events.push_back(Event::Acked {
                            tag,
                            reason: r.reason_code,
                        });
                    }
                    _ => {}
                }
            }
            Packet::PubComp(r) => self.finish(r, QoS::ExactlyOnce),
            Packet::Publish(p) => {
                if p.qos == QoS::ExactlyOnce {
                    if let Some(pid) = p.packet_id {
                        if self.incoming_qos2.contains(&pid.get()) {
                            // Already taken, PUBREL pending: answer again, do not
                            // hand it to the router twice [MQTT-4.3.3-10].
                            self.push(now, Packet::PubRec(PubResponse::success(pid)));
                            return;
                        }
                    }
                }
                self.events.push_back(Event::Received(p));
            }
            Packet::PubRel(r) => {
                self.incoming_qos2.remove(&r.packet_id.get());
                self.events.push_back(Event::Released(r.packet_id));
            }
            Packet::SubAck(s) => self.events.push_back(Event::Subscribed(s.reason_codes)),
            Packet::PingResp => {}
            Packet::Disconnect(d) => self.events.push_back(Event::Refused(d.reason_code)),
            _ => self
                .events
                .push_back(Event::Dead("unexpected packet from the remote")),
        }
    }

    fn remove(&mut self, id: u16) -> Option<Out> {
        let o = self.inflight.remove(&id)?;
        if let Some(i) = self.order.iter().position(|&p| p == id) {
            self.order.remove(i);
        }
        Some(o)
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) for an outgoing message.
    fn finish(&mut self, r: PubResponse, qos: QoS) {
        let id = r.packet_id.get();
        let matches = self
            .inflight
            .get(&id)
            .is_some_and(|o| o.publish.qos == qos && (qos == QoS::AtLeastOnce || o.released));
        if !matches {
            return;
        }
        if let Some(o) = self.remove(id) {
            self.events.push_back(Event::Acked {
                tag: o.tag,
                reason: r.reason_code,
            });
        }
    }

    /// After CONNACK: what is unacknowledged goes again, in its order, within
    /// the window.
    fn resend(&mut self, now: Instant, session_present: bool) {
        let ids: Vec<u16> = self.order.iter().copied().collect();
        for id in ids {
            let (Some(o), Some(pid)) = (self.inflight.get(&id), PacketId::new(id)) else {
                continue;
            };
            let p = if o.released {
                Packet::PubRel(PubResponse::success(pid))
            } else {
                let mut p = o.publish.clone();
                p.dup = session_present;
                Packet::Publish(p)
            };
            self.push(now, p);
        }
    }

    /// The next packet to write.
    pub fn poll_transmit(&mut self) -> Option<Packet> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Are there events not taken yet?
    pub fn poll_event_pending(&self) -> bool {
        !self.events.is_empty()
    }

    /// When `handle_timeout` must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Down => None,
            Phase::Connecting(at) => Some(at + self.config.connect_timeout),
            Phase::Up => {
                let ka = self.config.keep_alive;
                if ka.is_zero() {
                    return None;
                }
                let ping = self.last_sent.map(|t| t + ka);
                let dead = self.last_received.map(|t| t + ka + ka / 2);
                match (ping, dead, self.ping_sent) {
                    (_, Some(d), Some(_)) => Some(d),
                    (Some(p), Some(d), None) => Some(p.min(d)),
                    (p, d, _) => p.or(d),
                }
            }
        }
    }

    /// Time passed: ping when nothing was sent for a keep-alive; a link silent
    /// for 1.5 keep-alives (no PINGRESP either) is dead; so is a CONNECT
    /// without CONNACK in time.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Down => {}
            Phase::Connecting(at) => {
                if now >= at + self.config.connect_timeout {
                    self.events.push_back(Event::Dead("no CONNACK in time"));
                }
            }
            Phase::Up => {
                let ka = self.config.keep_alive;
                if ka.is_zero() {
                    return;
                }
                if self.last_received.is_some_and(|t| now >= t + ka + ka / 2) {
                    self.events
                        .push_back(Event::Dead("keep-alive: the remote went silent"));
                    return;
                }
                if self.ping_sent.is_none() && self.last_sent.is_none_or(|t| now >= t + ka) {
                    self.ping_sent = Some(now);
                    self.push(now, Packet::PingReq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ConnAck, ConnAckProperties, PublishProperties};

    fn config(version: ProtocolVersion) -> ClientConfig {
        ClientConfig {
            version,
            client_id: "bridge".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(10),
            clean_start: false,
            session_expiry: 3600,
            max_inflight: 3,
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn pid(v: u16) -> PacketId {
        PacketId::new(v).expect("non-zero")
    }

    fn connack(present: bool, receive_max: Option<u16>) -> Packet {
        Packet::ConnAck(ConnAck {
            session_present: present,
            reason_code: ReasonCode::SUCCESS,
            properties: ConnAckProperties {
                receive_maximum: receive_max,
                ..Default::default()
            },
        })
    }

    fn publish(qos: QoS, payload: &'static [u8]) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: "up/t".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from_static(payload),
        }
    }

    fn drain(c: &mut Client) -> Vec<Packet> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    fn up(c: &mut Client, now: Instant) {
        c.connect(now);
        assert!(matches!(drain(c).as_slice(), [Packet::Connect(_)]));
        c.handle(now, connack(false, None));
        assert_eq!(
            c.poll_event(),
            Some(Event::Connected {
                session_present: false
            })
        );
    }

    #[test]
    fn qos1_and_qos2_flows_and_the_window() {
        let now = Instant::now();
        let mut c = Client::new(config(ProtocolVersion::V5));
        assert!(
            !c.publish(now, 1, publish(QoS::AtLeastOnce, b"a")),
            "not up"
        );
        c.connect(now);
        drain(&mut c);
        c.handle(now, connack(false, Some(2)));
        c.poll_event();
        assert!(c.publish(now, 1, publish(QoS::AtLeastOnce, b"a")));
        assert!(c.publish(now, 2, publish(QoS::ExactlyOnce, b"b")));
        assert!(
            !c.has_room(),
            "the remote's Receive Maximum 2 caps the window"
        );
        assert!(!c.publish(now, 3, publish(QoS::AtLeastOnce, b"c")));
        assert_eq!(drain(&mut c).len(), 2);
        c.handle(now, Packet::PubAck(PubResponse::success(pid(1))));
        assert_eq!(
            c.poll_event(),
            Some(Event::Acked {
                tag: 1,
                reason: ReasonCode::SUCCESS
            })
        );
        // QoS 2: PUBREC -> PUBREL -> PUBCOMP.
        c.handle(now, Packet::PubComp(PubResponse::success(pid(2))));
        assert_eq!(c.poll_event(), None, "PUBCOMP before PUBREC is ignored");
        c.handle(now, Packet::PubRec(PubResponse::success(pid(2))));
        assert!(matches!(drain(&mut c).as_slice(), [Packet::PubRel(r)] if r.packet_id == pid(2)));
        c.handle(now, Packet::PubComp(PubResponse::success(pid(2))));
        assert_eq!(
            c.poll_event(),
            Some(Event::Acked {
                tag: 2,
                reason: ReasonCode::SUCCESS
            })
        );
        assert_eq!(c.inflight(), 0);
    }

    #[test]
    fn a_refusal_comes_back_with_its_code() {
        let now = Instant::now();
        let mut c = Client::new(config(ProtocolVersion::V5));
        up(&mut c, now);
        c.publish(now, 7, publish(QoS::AtLeastOnce, b"x"));
        let refused = PubResponse {
            packet_id: pid(1),
            reason_code: ReasonCode::NOT_AUTHORIZED,
            properties: Default::default(),
        };
        c.handle(now, Packet::PubAck(refused));
        assert_eq!(
            c.poll_event(),
            Some(Event::Acked {
                tag: 7,
                reason: ReasonCode::NOT_AUTHORIZED
            })
        );
    }

    #[test]
    fn unacknowledged_messages_are_resent_on_the_next_link() {
        let now = Instant::now();
        let mut c = Client::new(config(ProtocolVersion::V311));
        up(&mut c, now);
        c.publish(now, 1, publish(QoS::AtLeastOnce, b"a"));
        c.publish(now, 2, publish(QoS::ExactlyOnce, b"b"));
        drain(&mut c);
        c.handle(now, Packet::PubRec(PubResponse::success(pid(2))));
        drain(&mut c);
        c.link_lost();
        assert!(!c.is_up());
        // The session was kept: DUP PUBLISH for 1, PUBREL for 2, in order.
        c.connect(now);
        drain(&mut c);
        c.handle(now, connack(true, None));
        let out = drain(&mut c);
        assert!(matches!(&out[0], Packet::Publish(p) if p.dup && p.packet_id == Some(pid(1))));
        assert!(matches!(&out[1], Packet::PubRel(r) if r.packet_id == pid(2)));
        // A new session on the remote: both go again as new PUBLISHes.
        c.link_lost();
        c.connect(now);
        drain(&mut c);
        c.handle(now, connack(false, None));
        c.poll_event();
        c.poll_event();
        let out = drain(&mut c);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|p| matches!(p, Packet::Publish(p) if !p.dup)));
    }

    #[test]
    fn incoming_qos2_is_handed_over_once() {
        let now = Instant::now();
        let mut c = Client::new(config(ProtocolVersion::V5));
        up(&mut c, now);
        let mut p = publish(QoS::ExactlyOnce, b"in");
        p.packet_id = Some(pid(9));
        c.handle(now, Packet::Publish(p.clone()));
        assert!(matches!(c.poll_event(), Some(Event::Received(_))));
        assert!(drain(&mut c).is_empty(), "no ack before the router took it");
        c.ack_incoming(now, pid(9), QoS::ExactlyOnce);
        assert!(matches!(drain(&mut c).as_slice(), [Packet::PubRec(_)]));
        // A re-send before PUBREL: answered, not handed over again.
        c.handle(now, Packet::Publish(p));
        assert_eq!(c.poll_event(), None);
        assert!(matches!(drain(&mut c).as_slice(), [Packet::PubRec(_)]));
        c.handle(now, Packet::PubRel(PubResponse::success(pid(9))));
        assert_eq!(c.poll_event(), Some(Event::Released(pid(9))));
        assert!(drain(&mut c).is_empty(), "PUBCOMP once released locally");
        c.complete_incoming(now, pid(9));
        assert!(matches!(drain(&mut c).as_slice(), [Packet::PubComp(_)]));
    }

    #[test]
    fn keep_alive_pings_and_a_silent_remote_is_dead() {
        let now = Instant::now();
        let mut c = Client::new(config(ProtocolVersion::V311));
        up(&mut c, now);
        let t = c.poll_timeout().expect("a keep-alive timer");
        assert!(t <= now + Duration::from_secs(10));
        c.handle_timeout(now + Duration::from_secs(10));
        assert!(matches!(drain(&mut c).as_slice(), [Packet::PingReq]));
        c.handle(now + Duration::from_secs(11), Packet::PingResp);
        assert_eq!(c.poll_event(), None);
        // Nothing from the remote for 15 s after its last packet: dead.
        c.handle_timeout(now + Duration::from_secs(26));
        assert!(matches!(c.poll_event(), Some(Event::Dead(_))));
        // A CONNECT without CONNACK in time.
        let mut c = Client::new(config(ProtocolVersion::V5));
        c.connect(now);
        c.handle_timeout(now + Duration::from_secs(5));
        assert!(matches!(c.poll_event(), Some(Event::Dead(_))));
    }
}
