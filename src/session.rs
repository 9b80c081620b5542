//! Per-client session state: the outgoing inflight window, QoS 2 progress, the queue
//! of messages waiting for a window slot or for the client to come back, and the
//! inbound QoS 2 ids waiting for PUBREL. Pure: time is passed in as `now`. (Its
//! subscriptions are kept by the router's `SubscriptionIndex`.)
//!
//! Owns the delivery state of one client (section 4.1 "Session State"). It does not
//! know about sockets or other sessions: the router decides what to deliver to whom
//! and pushes the `Outgoing` items this module returns into the client's outbox.

use crate::hash::Set;
use crate::protocol::{PacketId, PublishProperties, QoS, ReasonCode, SubscriptionOptions};
use crate::session_pending::{Filled, PendingQueue};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client identifier, cheap to clone (it is a key in several maps).
pub type ClientId = Arc<str>;

/// An application message as the router holds it: one allocation shared by every
/// receiver, so fan-out never copies the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// As published, less the per-hop Topic Alias and Subscription Identifiers.
    pub properties: PublishProperties,
    /// When the broker received it: the Message Expiry Interval counts from here.
    pub received: Instant,
}

impl Message {
    /// What every message costs beside its topic, payload and properties: the
    /// struct and its `Arc` counters.
    pub const OVERHEAD: usize = std::mem::size_of::<Message>() + 2 * std::mem::size_of::<usize>();

    /// Whole seconds of Message Expiry Interval left at `now`, or None when the
    /// message has no expiry. Some(0) means expired [MQTT-3.3.2-5].
    pub fn expiry_left(&self, now: Instant) -> Option<u32> {
        self.properties.message_expiry_interval.map(|secs| {
            let elapsed = now.saturating_duration_since(self.received).as_secs();
            u32::try_from(u64::from(secs).saturating_sub(elapsed)).unwrap_or(0)
        })
    }

    /// When it expires (v5 Message Expiry Interval), if it does.
    pub fn expires_at(&self) -> Option<Instant> {
        self.properties
            .message_expiry_interval
            .map(|s| self.received + Duration::from_secs(u64::from(s)))
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expiry_left(now) == Some(0)
    }

    /// Bytes this message charges against a queue's or the retained store's byte
    /// cap: what it really holds in memory, properties included (a cap that
    /// counted only topic and payload let 1 MB of tiny user properties per
    /// message through every limit), plus the message itself and its `Arc`.
    pub fn cost(&self) -> usize {
        Message::OVERHEAD + self.topic.len() + self.payload.len() + self.properties.heap_size()
    }
}

/// One message on its way to one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, subscription QoS).
    pub qos: QoS,
    /// The retain flag to send (Retain As Published, or set for retained-on-subscribe).
    pub retain: bool,
    /// v5 Subscription Identifiers of every matching subscription [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    /// The store's id for this delivery, or 0 when it is not durable (QoS 0, or a
    /// session that does not outlive its connection).
    pub did: u64,
    /// It came through a shared subscription: if its session ends before the
    /// client acknowledged it, another member of the group gets it (not
    /// stored: after a restart it counts as not shared).
    pub shared: bool,
    /// A work queue's message: the queue learns how its delivery ended (boxed:
    /// most deliveries come from subscriptions).
    pub queued: Option<Box<QueueTag>>,
}

/// Which work queue a delivery came from, and its message there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTag {
    pub queue: Arc<str>,
    pub id: u64,
}

/// How a work queue's delivery ended, for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOutcome {
    /// PUBACK, or PUBCOMP, with a success code.
    Acked,
    /// PUBACK or PUBREC with this reason code (>= 0x80), or not sendable
    /// (too large for the client: 0x95).
    Refused(u8),
    /// It expired while it waited in the session.
    Expired,
    /// The session may no longer read it (the ACL changed).
    Unreadable,
}

/// A change to a delivery's state the router must act on: durable ones for the
/// store, work queues' ones for their queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A queued delivery entered the inflight window with this packet id.
    Assigned { did: u64, pid: PacketId },
    /// PUBREC received for this QoS 2 delivery: only the PUBREL exchange is left.
    Released { did: u64, pid: PacketId },
    /// The delivery is finished (acknowledged, skipped, or expired in the queue).
    Done { did: u64 },
    /// A work queue's delivery ended.
    Queue {
        tag: QueueTag,
        outcome: QueueOutcome,
    },
}

/// Which packet a `Reply` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// To a QoS 1 PUBLISH.
    PubAck,
    /// To a QoS 2 PUBLISH.
    PubRec,
    /// To the client's PUBREC.
    PubRel,
    /// To the client's PUBREL.
    PubComp,
}

/// The router's answer to a packet of an inbound flow. The router decides it (it
/// owns the session's QoS 2 state and knows when a message may be acknowledged);
/// the connection writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub packet_id: PacketId,
    pub reason: ReasonCode,
}

/// What the router pushes into a connection's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Publish {
        delivery: Delivery,
        packet_id: Option<PacketId>,
        dup: bool,
    },
    /// Re-sent on session resumption for a QoS 2 message already PUBREC'd
    /// [MQTT-4.4.0-1].
    PubRel(PacketId),
    Reply(Reply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The acknowledgement an inflight delivery waits for.
enum InflightState {
    Ack,
    Rec,
    Comp,
}

#[derive(Debug)]
struct Inflight {
    packet_id: PacketId,
    delivery: Delivery,
    state: InflightState,
    /// Written on the current connection. After a resume with a smaller Receive
    /// Maximum, some wait here unsent until acks make room [MQTT-3.3.4-9].
    sent: bool,
}

/// A subscription as the session remembers it (the trie is the index for routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Queue caps, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// All waiting messages, most of them on disk for a persistent session.
    pub max_messages: usize,
    pub max_bytes: usize,
    /// Those that can only wait in memory (see `session_pending`).
    pub max_messages_in_memory: usize,
    pub max_bytes_in_memory: usize,
    pub queue_qos0_offline: bool,
}

/// What became of a message handed to `Session::deliver`.
#[derive(Debug, PartialEq, Eq)]
pub enum DeliverOutcome {
    /// Push this into the outbox now.
    Send(Outgoing),
    /// Held in the pending queue until a window slot frees or the client returns.
    Queued,
    /// Not kept: the queue is full (counted), or QoS 0 for an offline client
    /// (not queued by policy).
    Dropped(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    Qos0Offline,
    Expired,
}

#[derive(Debug)]
pub struct Session {
    client_id: ClientId,
    inflight: VecDeque<Inflight>,
    pending: PendingQueue,
    next_packet_id: u16,
    /// How many QoS 1/2 messages may be unacknowledged at once: the client's Receive
    /// Maximum capped by our `max_inflight` [MQTT-3.3.4-7].
    window: usize,
    /// Inflight entries written on the current connection (what the window counts).
    sent_inflight: usize,
    /// Inbound QoS 2 packet ids that were routed and got PUBREC but no PUBREL yet:
    /// a re-sent PUBLISH with one of these is not delivered again [MQTT-4.3.3-10].
    /// Session state, so it survives reconnects and takeovers.
    /// Boxed and made at the first: most sessions never receive QoS 2, and
    /// every session would carry 40 bytes of empty set.
    #[allow(clippy::box_collection)] // 8 bytes inline, not 40: the point
    inbound_qos2: Option<Box<Set<u16>>>,
    dropped: u64,
    /// Changes to durable deliveries since the router last took them.
    events: Vec<Event>,
}

impl Session {
    pub fn new(client_id: ClientId) -> Session {
        Session {
            client_id,
            inflight: VecDeque::new(),
            pending: PendingQueue::default(),
            next_packet_id: 1,
            window: 1,
            sent_inflight: 0,
            inbound_qos2: None,
            dropped: 0,
            events: Vec::new(),
        }
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// Has the inbound QoS 2 message `pid` been routed, waiting for its PUBREL?
    pub fn inbound_qos2_seen(&self, pid: u16) -> bool {
        self.inbound_qos2.as_ref().is_some_and(|s| s.contains(&pid))
    }

    /// Inbound QoS 2 ids waiting for their PUBREL.
    pub fn inbound_qos2_len(&self) -> usize {
        self.inbound_qos2.as_ref().map_or(0, |s| s.len())
    }

    /// The inbound QoS 2 message `pid` was routed: a re-sent PUBLISH with this id
    /// is not routed again until its PUBREL [MQTT-4.3.3-10].
    pub fn inbound_qos2_routed(&mut self, pid: u16) {
        self.inbound_qos2
            .get_or_insert_with(Default::default)
            .insert(pid);
    }

    /// PUBREL for `pid`: the id is free again. Returns whether it was held.
    pub fn inbound_qos2_release(&mut self, pid: u16) -> bool {
        // Kept when empty: a QoS 2 publisher would make it again for every
        // message.
        self.inbound_qos2
            .as_mut()
            .is_some_and(|set| set.remove(&pid))
    }

    /// Inbound QoS 2 ids recovered from the store.
    pub fn restore_inbound_qos2(&mut self, pids: impl IntoIterator<Item = u16>) {
        let mut pids = pids.into_iter().peekable();
        if pids.peek().is_some() {
            self.inbound_qos2
                .get_or_insert_with(Default::default)
                .extend(pids);
        }
    }

    /// Are there delivery changes the router has not taken yet?
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Take the delivery changes since the last call, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes()
    }

    /// The waiting messages, for the router's disk side.
    pub fn pending(&self) -> &PendingQueue {
        &self.pending
    }

    /// Let the synced durable messages past the read-ahead wait on disk only
    /// (`PendingQueue::to_disk`).
    pub fn pending_to_disk(
        &mut self,
        synced_did: u64,
        keep: usize,
        keep_bytes: usize,
        full: bool,
    ) -> bool {
        self.pending.to_disk(synced_did, keep, keep_bytes, full)
    }

    /// The delivery ids to read back for the read-ahead (`PendingQueue::want`).
    pub fn pending_wanted(&mut self, keep: usize, keep_bytes: usize, out: &mut Vec<u64>) {
        self.pending.want(keep, keep_bytes, out)
    }

    /// A waiting delivery's message was read back.
    pub fn pending_filled(&mut self, d: Delivery) -> bool {
        self.pending.fill(d) == Filled::Ready
    }

    /// A waiting delivery's message could not be read now: asked again
    /// later. Returns how many times its read has failed.
    pub fn pending_unload(&mut self, did: u64) -> u8 {
        self.pending.unload(did)
    }

    /// A waiting delivery's message is lost (damaged record) or not to be
    /// sent (expired, no longer readable): it ends. False if it was not waiting.
    pub fn pending_drop(&mut self, did: u64) -> bool {
        let here = self.pending.remove_stub(did);
        if here {
            self.events.push(Event::Done { did });
        }
        here
    }

    /// Recovery: a delivery that waited in the queue, its message on disk.
    pub fn restore_pending_on_disk(&mut self, did: u64, cost: u32) {
        self.pending.push_stub(did, cost);
    }

    /// Is there room to send a QoS 1/2 message right now, without overtaking
    /// anything that waits?
    pub fn has_window_room(&self) -> bool {
        self.sent_inflight < self.window && self.pending.is_empty() && !self.has_unsent()
    }

    fn has_unsent(&self) -> bool {
        self.sent_inflight < self.inflight.len()
    }

    /// Is the pending queue full for a connected client, whose publishers are
    /// then held back (backpressure)? Its in-memory caps count, applied to the
    /// whole queue: a subscriber that falls behind slows its publishers as it
    /// always did, rather than spooling to disk and reading back what it could
    /// have taken from memory. (What reaches it beyond, once it has stalled,
    /// waits on disk up to `max_queued_messages`.)
    /// A backlog waiting on disk (built while the client was away) does not
    /// count: it is not the publishers' doing.
    pub fn queue_full(&self, limits: &QueueLimits) -> bool {
        let (len, bytes) = self.pending.in_memory();
        len >= limits.max_messages_in_memory.min(limits.max_messages)
            || bytes >= limits.max_bytes_in_memory.min(limits.max_bytes)
    }

    /// Is the pending queue down to half of that (where held-back publishers resume)?
    pub fn queue_drained(&self, limits: &QueueLimits) -> bool {
        let (len, bytes) = self.pending.in_memory();
        len <= limits.max_messages_in_memory.min(limits.max_messages) / 2
            && bytes <= limits.max_bytes_in_memory.min(limits.max_bytes) / 2
    }

    /// Next free packet id, skipping ids still in flight [MQTT-2.2.1-3].
    fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if let Some(pid) = PacketId::new(id) {
                if !self.inflight.iter().any(|i| i.packet_id == pid) {
                    return pid;
                }
            }
        }
    }

    /// Give `delivery` a packet id and a window slot. `from_queue`: it waited in the
    /// queue, so the store learns its packet id now (a delivery that enters the
    /// window at once is written with its id by the router).
    fn start_inflight(&mut self, delivery: Delivery, from_queue: bool) -> Outgoing {
        let packet_id = self.allocate_packet_id();
        if from_queue && delivery.did != 0 {
            self.events.push(Event::Assigned {
                did: delivery.did,
                pid: packet_id,
            });
        }
        let state = if delivery.qos == QoS::ExactlyOnce {
            InflightState::Rec
        } else {
            InflightState::Ack
        };
        self.inflight.push_back(Inflight {
            packet_id,
            delivery: delivery.clone(),
            state,
            sent: true,
        });
        self.sent_inflight += 1;
        Outgoing::Publish {
            delivery,
            packet_id: Some(packet_id),
            dup: false,
        }
    }

    fn enqueue(
        &mut self,
        delivery: Delivery,
        limits: &QueueLimits,
        overflow: bool,
    ) -> DeliverOutcome {
        if !overflow
            && !self.pending.fits(
                &delivery,
                limits.max_messages,
                limits.max_bytes,
                limits.max_messages_in_memory,
                limits.max_bytes_in_memory,
            )
        {
            self.dropped += 1;
            return DeliverOutcome::Dropped(DropReason::QueueFull);
        }
        self.pending.push_back(delivery);
        DeliverOutcome::Queued
    }

    /// Hand a message to this session. `online` says whether a connection is
    /// attached (QoS 0 goes straight out; QoS 1/2 only within the window, in order).
    /// `overflow` lets a QoS 1/2 message into a full queue: the router does that while
    /// it holds the publisher's acknowledgement back (backpressure), which bounds it.
    pub fn deliver(
        &mut self,
        delivery: Delivery,
        online: bool,
        limits: &QueueLimits,
        now: Instant,
        overflow: bool,
    ) -> DeliverOutcome {
        if delivery.message.is_expired(now) {
            return DeliverOutcome::Dropped(DropReason::Expired);
        }
        if delivery.qos == QoS::AtMostOnce {
            if online {
                return DeliverOutcome::Send(Outgoing::Publish {
                    delivery,
                    packet_id: None,
                    dup: false,
                });
            }
            if !limits.queue_qos0_offline {
                return DeliverOutcome::Dropped(DropReason::Qos0Offline);
            }
            return self.enqueue(delivery, limits, false);
        }
        if online && self.has_window_room() {
            return DeliverOutcome::Send(self.start_inflight(delivery, false));
        }
        self.enqueue(delivery, limits, overflow)
    }

    /// Move waiting messages out while the window and the outbox have room: first
    /// inflight messages not yet re-sent on this connection (DUP), then the queue.
    /// `room` is how many items the outbox can take now. Expired queued messages are
    /// discarded on the way [MQTT-3.3.2-5].
    pub fn fill_window(&mut self, now: Instant, mut room: usize, out: &mut Vec<Outgoing>) {
        while room > 0 {
            if self.sent_inflight < self.window && self.has_unsent() {
                if let Some(i) = self.inflight.iter_mut().find(|i| !i.sent) {
                    i.sent = true;
                    self.sent_inflight += 1;
                    room -= 1;
                    out.push(Outgoing::Publish {
                        delivery: i.delivery.clone(),
                        packet_id: Some(i.packet_id),
                        dup: true,
                    });
                    continue;
                }
            }
            let Some(front) = self.pending.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && self.sent_inflight >= self.window {
                break;
            }
            let Some(d) = self.pending.pop_front() else {
                break;
            };
            if d.message.is_expired(now) {
                self.ended(d, QueueOutcome::Expired);
                continue;
            }
            room -= 1;
            if d.qos == QoS::AtMostOnce {
                out.push(Outgoing::Publish {
                    delivery: d,
                    packet_id: None,
                    dup: false,
                });
            } else {
                let o = self.start_inflight(d, true);
                out.push(o);
            }
        }
    }

    /// Remove a finished inflight entry, keeping the window count right;
    /// `outcome` is what its queue learns if it came from one.
    fn finish_as(&mut self, index: usize, outcome: QueueOutcome) {
        if let Some(i) = self.inflight.remove(index) {
            if i.sent {
                self.sent_inflight = self.sent_inflight.saturating_sub(1);
            }
            self.ended(i.delivery, outcome);
        }
    }

    fn finish(&mut self, index: usize) {
        self.finish_as(index, QueueOutcome::Acked)
    }

    /// A delivery left the session (done, refused, dropped): the events the
    /// router acts on.
    fn ended(&mut self, d: Delivery, outcome: QueueOutcome) {
        if d.did != 0 {
            self.events.push(Event::Done { did: d.did });
        }
        if let Some(tag) = d.queued {
            self.events.push(Event::Queue { tag: *tag, outcome });
        }
    }

    /// The connection could not send this delivery (too big for the client's
    /// Maximum Packet Size): it counts as delivered [MQTT-3.1.2-25].
    pub fn skip(&mut self, pid: PacketId) -> bool {
        match self.inflight.iter().position(|i| i.packet_id == pid) {
            Some(i) => {
                // A queue's consumer cannot take it: a refusal, retried and in
                // the end dead-lettered rather than counted as processed.
                self.finish_as(i, QueueOutcome::Refused(0x95));
                true
            }
            None => false,
        }
    }

    fn position(&self, pid: PacketId, state: InflightState) -> Option<usize> {
        self.inflight
            .iter()
            .position(|i| i.packet_id == pid && i.state == state)
    }

    /// A delivery is in flight with `pid` at a QoS other than `qos`: an
    /// acknowledgement meant for `qos` (PUBACK: 1; PUBREC, PUBCOMP: 2) is of the
    /// wrong kind for it.
    pub fn inflight_at_other_qos(&self, pid: PacketId, qos: QoS) -> bool {
        self.inflight
            .iter()
            .any(|i| i.packet_id == pid && i.delivery.qos != qos)
    }

    /// PUBACK from the client: the QoS 1 delivery is done. False if unknown.
    pub fn on_puback(&mut self, pid: PacketId) -> bool {
        self.on_puback_with(pid, ReasonCode::SUCCESS)
    }

    /// PUBACK with its reason code: 0x80 or more is a refusal (v5), which a work
    /// queue retries or dead-letters; for other deliveries it ends the flow too.
    pub fn on_puback_with(&mut self, pid: PacketId, reason: ReasonCode) -> bool {
        match self.position(pid, InflightState::Ack) {
            Some(i) => {
                self.finish_as(i, outcome_of(reason));
                true
            }
            None => false,
        }
    }

    /// PUBREC from the client. With a success code the message is now owned by the
    /// receiver and we wait for PUBCOMP; an error code ends the flow (5.0 section 4.3.3).
    pub fn on_pubrec(&mut self, pid: PacketId, success: bool) -> bool {
        let reason = if success {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::UNSPECIFIED_ERROR
        };
        self.on_pubrec_with(pid, reason)
    }

    /// PUBREC with its reason code (see `on_pubrec`).
    pub fn on_pubrec_with(&mut self, pid: PacketId, reason: ReasonCode) -> bool {
        match self.position(pid, InflightState::Rec) {
            Some(i) if reason.0 < 0x80 => {
                if let Some(entry) = self.inflight.get_mut(i) {
                    entry.state = InflightState::Comp;
                    if entry.delivery.did != 0 {
                        self.events.push(Event::Released {
                            did: entry.delivery.did,
                            pid,
                        });
                    }
                }
                true
            }
            Some(i) => {
                self.finish_as(i, outcome_of(reason));
                true
            }
            None => false,
        }
    }

    /// PUBCOMP from the client: the QoS 2 delivery is done.
    pub fn on_pubcomp(&mut self, pid: PacketId) -> bool {
        match self.position(pid, InflightState::Comp) {
            Some(i) => {
                self.finish(i);
                true
            }
            None => false,
        }
    }

    /// Recovery: put back a delivery that was in flight with `pid` (`released`: its
    /// PUBREC had arrived), unsent on the (future) connection.
    pub fn restore_inflight(&mut self, delivery: Delivery, pid: PacketId, released: bool) {
        let state = match (delivery.qos, released) {
            (QoS::ExactlyOnce, true) => InflightState::Comp,
            (QoS::ExactlyOnce, false) => InflightState::Rec,
            _ => InflightState::Ack,
        };
        self.next_packet_id = pid.get().checked_add(1).unwrap_or(1);
        self.inflight.push_back(Inflight {
            packet_id: pid,
            delivery,
            state,
            sent: false,
        });
    }

    /// Recovery: put back a delivery that waited in the queue (beyond the caps if
    /// need be: it was accepted before the restart).
    pub fn restore_pending(&mut self, delivery: Delivery) {
        self.pending.push_back(delivery);
    }

    /// The client reconnected to this session: re-send every PUBREL and, within
    /// the new window, every unacknowledged PUBLISH with DUP set, in the original
    /// order [MQTT-4.4.0-1]; the rest follow as acks make room [MQTT-3.3.4-9].
    /// Drop the messages this session may no longer receive (an ACL changed, or
    /// another user took the session over): queued ones, and in-flight ones the
    /// client has not acknowledged yet. A QoS 2 message whose PUBREC came is kept:
    /// the client has it, only the release is left. Returns how many went.
    pub fn forget_unreadable(&mut self, readable: impl Fn(&str) -> bool) -> usize {
        // A work queue's delivery is read by right of `$queue/<name>`, not
        // its topic: the router checks that one. Messages waiting on disk are
        // checked when they are read back.
        let dropped = self
            .pending
            .remove_here(|d| d.queued.is_some() || readable(&d.message.topic));
        let mut gone = dropped.len();
        for d in dropped {
            self.ended(d, QueueOutcome::Unreadable);
        }
        let mut i = 0;
        while i < self.inflight.len() {
            let drop = self.inflight.get(i).is_some_and(|f| {
                f.state != InflightState::Comp
                    && f.delivery.queued.is_none()
                    && !readable(&f.delivery.message.topic)
            });
            if drop {
                self.finish_as(i, QueueOutcome::Unreadable);
                gone += 1;
            } else {
                i += 1;
            }
        }
        gone
    }

    /// The QoS 1 messages a shared subscription gave this session that its
    /// client has not acknowledged, in flight or queued: when the session ends,
    /// they go to another member of the group (5.0 section 4.8.2).
    /// QoS 2 stays: it must not go to another client [MQTT-4.8.2-5].
    pub fn unacknowledged_qos1(&self) -> impl Iterator<Item = &Arc<Message>> {
        self.inflight
            .iter()
            .map(|i| &i.delivery)
            .chain(self.pending.iter_here())
            .filter(|d| d.qos == QoS::AtLeastOnce && d.shared)
            .map(|d| &d.message)
    }

    /// Take the deliveries of the work queues `which` names out of this session,
    /// in flight or queued (its consumer stopped consuming them, or went
    /// offline): their queues hand them on. Their packet ids are free again.
    ///
    /// `unsent_only` (the client is still connected and unsubscribed): only what
    /// it was not sent yet; what it holds stays until it acknowledges it, so its
    /// window is not exceeded. A QoS 2 delivery whose PUBREC came is the
    /// client's: it stays for its PUBREL. Returns those, which their queues
    /// count as acknowledged.
    pub fn take_queue_deliveries(
        &mut self,
        which: impl Fn(&str) -> bool,
        unsent_only: bool,
    ) -> Vec<QueueTag> {
        let of = |d: &Delivery| d.queued.as_ref().is_some_and(|t| which(&t.queue));
        let mut acked = Vec::new();
        let mut i = 0;
        while i < self.inflight.len() {
            let Some(f) = self.inflight.get_mut(i) else {
                break;
            };
            if of(&f.delivery) && f.state == InflightState::Comp {
                acked.extend(f.delivery.queued.take().map(|t| *t));
                i += 1;
                continue;
            }
            if !unsent_only && of(&f.delivery) {
                if let Some(f) = self.inflight.remove(i) {
                    if f.sent {
                        self.sent_inflight = self.sent_inflight.saturating_sub(1);
                    }
                }
            } else {
                i += 1;
            }
        }
        self.pending.remove_here(|d| !of(d));
        acked
    }

    pub fn resume(&mut self, now: Instant, room: usize) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(self.inflight.len().min(room));
        self.sent_inflight = 0;
        for i in self.inflight.iter_mut() {
            i.sent = false;
            if i.state == InflightState::Comp {
                // Already received by the client: only the release is re-sent.
                i.sent = true;
                self.sent_inflight += 1;
                out.push(Outgoing::PubRel(i.packet_id));
            }
        }
        let room = room.saturating_sub(out.len());
        self.fill_window(now, room, &mut out);
        out
    }
}

/// What a queue learns from an acknowledgement's reason code.
fn outcome_of(reason: ReasonCode) -> QueueOutcome {
    if reason.0 < 0x80 {
        QueueOutcome::Acked
    } else {
        QueueOutcome::Refused(reason.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(qos: QoS, expiry: Option<u32>, now: Instant) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: PublishProperties {
                message_expiry_interval: expiry,
                ..Default::default()
            },
            received: now,
        })
    }

    fn d(qos: QoS, now: Instant) -> Delivery {
        Delivery {
            message: msg(qos, None, now),
            qos,
            retain: false,
            subscription_ids: vec![],
            did: 0,
            shared: false,
            queued: None,
        }
    }

    const LIM: QueueLimits = QueueLimits {
        max_messages: 3,
        max_bytes: 10_000,
        max_messages_in_memory: 3,
        max_bytes_in_memory: 10_000,
        queue_qos0_offline: false,
    };

    fn pid_of(o: &DeliverOutcome) -> PacketId {
        match o {
            DeliverOutcome::Send(Outgoing::Publish {
                packet_id: Some(p), ..
            }) => *p,
            other => panic!("not a send: {other:?}"),
        }
    }

    #[test]
    fn window_then_queue_then_drop() {
        let now = Instant::now();
        let mut s = Session::new("c".into());
        s.set_window(2);
        let a = s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false);
        let b = s.deliver(d(QoS::ExactlyOnce, now), true, &LIM, now, false);
        assert_eq!(pid_of(&a).get(), 1);
        assert_eq!(pid_of(&b).get(), 2);
        for _ in 0..3 {
            assert_eq!(
                s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false),
                DeliverOutcome::Queued
            );
        }
        assert_eq!(
            s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false),
            DeliverOutcome::Dropped(DropReason::QueueFull)
        );
        assert_eq!(s.dropped, 1);
        // QoS 0 goes straight out even when the window is full.
        assert!(matches!(
            s.deliver(d(QoS::AtMostOnce, now), true, &LIM, now, false),
            DeliverOutcome::Send(Outgoing::Publish {
                packet_id: None,
                ..
            })
        ));
        assert!(s.on_puback(pid_of(&a)));
        assert!(!s.on_puback(pid_of(&a)), "second ack is unknown");
        let mut out = Vec::new();
        s.fill_window(now, 100, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.pending_len(), 2);
    }

    #[test]
    fn qos2_flow_and_resume() {
        let now = Instant::now();
        let mut s = Session::new("c".into());
        s.set_window(10);
        let a = pid_of(&s.deliver(d(QoS::ExactlyOnce, now), true, &LIM, now, false));
        let b = pid_of(&s.deliver(d(QoS::ExactlyOnce, now), true, &LIM, now, false));
        let c = pid_of(&s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false));
        assert!(!s.on_pubcomp(a), "PUBCOMP before PUBREC is unknown");
        assert!(s.on_pubrec(a, true));
        // Disconnect, reconnect: a -> PUBREL, b and c -> PUBLISH with DUP.
        let out = s.resume(now, 100);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], Outgoing::PubRel(a));
        for (o, want) in out[1..].iter().zip([b, c]) {
            match o {
                Outgoing::Publish { packet_id, dup, .. } => {
                    assert_eq!(*packet_id, Some(want));
                    assert!(*dup);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(s.on_pubcomp(a));
        assert!(s.on_pubrec(b, false), "error PUBREC ends the flow");
        assert!(s.on_puback(c));
        assert_eq!(s.inflight_len(), 0);
    }

    /// An ack is of the wrong kind for an id in flight at the other QoS; an
    /// unknown id is not (it is answered or ignored as before).
    #[test]
    fn acks_of_the_wrong_kind_are_told_apart() {
        let now = Instant::now();
        let mut s = Session::new("c".into());
        s.set_window(10);
        let one = pid_of(&s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false));
        let two = pid_of(&s.deliver(d(QoS::ExactlyOnce, now), true, &LIM, now, false));
        assert!(s.inflight_at_other_qos(one, QoS::ExactlyOnce));
        assert!(!s.inflight_at_other_qos(one, QoS::AtLeastOnce));
        assert!(s.inflight_at_other_qos(two, QoS::AtLeastOnce));
        assert!(s.on_pubrec(two, true));
        assert!(
            s.inflight_at_other_qos(two, QoS::AtLeastOnce),
            "after PUBREC too"
        );
        let unknown = PacketId::new(99).expect("non-zero");
        assert!(!s.inflight_at_other_qos(unknown, QoS::AtLeastOnce));
    }

    #[test]
    fn resume_with_smaller_window_sends_the_rest_as_acks_arrive() {
        let now = Instant::now();
        let mut s = Session::new("c".into());
        s.set_window(4);
        let pids: Vec<PacketId> = (0..4)
            .map(|_| pid_of(&s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false)))
            .collect();
        // Reconnect with Receive Maximum 2: only two DUP re-sends now.
        s.set_window(2);
        let out = s.resume(now, 100);
        assert_eq!(out.len(), 2);
        assert!(!s.has_window_room());
        assert!(s.on_puback(pids[0]));
        let mut more = Vec::new();
        s.fill_window(now, 100, &mut more);
        assert_eq!(more.len(), 1, "one slot freed, one re-send");
        match &more[0] {
            Outgoing::Publish { packet_id, dup, .. } => {
                assert_eq!(*packet_id, Some(pids[2]));
                assert!(*dup);
            }
            other => panic!("{other:?}"),
        }
        // Outbox room limits what moves, even with window room.
        assert!(s.on_puback(pids[1]));
        let mut none = Vec::new();
        s.fill_window(now, 0, &mut none);
        assert!(none.is_empty());
        assert!(s.skip(pids[3]), "a skipped delivery frees its slot");
    }

    #[test]
    fn overflow_admits_into_a_full_queue() {
        let now = Instant::now();
        let mut s = Session::new("c".into());
        s.set_window(1);
        s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false);
        for _ in 0..3 {
            s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false);
        }
        assert!(s.queue_full(&LIM));
        assert_eq!(
            s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, true),
            DeliverOutcome::Queued
        );
        assert_eq!(s.pending_len(), 4);
        assert!(!s.queue_drained(&LIM));
    }

    #[test]
    fn offline_qos0_and_expiry() {
        let now = Instant::now();
        let mut s = Session::new("c".into());
        s.set_window(5);
        assert_eq!(
            s.deliver(d(QoS::AtMostOnce, now), false, &LIM, now, false),
            DeliverOutcome::Dropped(DropReason::Qos0Offline)
        );
        let lim = QueueLimits {
            queue_qos0_offline: true,
            ..LIM
        };
        assert_eq!(
            s.deliver(d(QoS::AtMostOnce, now), false, &lim, now, false),
            DeliverOutcome::Queued
        );
        let exp = Delivery {
            message: msg(QoS::AtLeastOnce, Some(5), now),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            did: 0,
            shared: false,
            queued: None,
        };
        assert_eq!(
            s.deliver(exp, false, &lim, now, false),
            DeliverOutcome::Queued
        );
        let later = now + std::time::Duration::from_secs(6);
        let out = s.resume(later, 100);
        assert_eq!(out.len(), 1, "the expired message is discarded");
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn packet_ids_skip_inflight_and_wrap() {
        let now = Instant::now();
        let mut s = Session::new("c".into());
        s.set_window(3);
        s.next_packet_id = 65535;
        let a = pid_of(&s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false));
        let b = pid_of(&s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false));
        assert_eq!((a.get(), b.get()), (65535, 1));
        s.next_packet_id = 65535;
        let c = pid_of(&s.deliver(d(QoS::AtLeastOnce, now), true, &LIM, now, false));
        assert_eq!(c.get(), 2, "65535 and 1 are in flight");
    }
}
