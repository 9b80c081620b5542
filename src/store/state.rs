//! The store's picture of what is on disk: every live record, where it lies (which
//! segment, how many bytes), and which segments can go. Pure: fed `Op`s with their
//! location, it answers "is this segment dead?", "what must be copied forward to
//! free the oldest segment?" and, at start, "what did we recover?".
//!
//! Liveness: a record is live while it is the latest word on something that still
//! exists (a session, a subscription, a retained topic, a message with an
//! unfinished delivery, a delivery's latest state, an inbound QoS 2 id).
//! Tombstones (`SessionGone`, `Unsub`, `RetainClear`, `Done`, `InQos2Done`) are
//! never live: segments are deleted oldest first, so a tombstone only ever
//! shadows records in its own or older segments, which are gone before it.

use super::queue_index::{QueueCopy, QueueIndex, RecoveredQueue};
#[cfg(test)]
use super::record::DelivState;
use super::record::{Op, Receiver, SessionRec};
use crate::hash::Map;
use crate::protocol::SubscriptionOptions;
use crate::session::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// Where a record lies: its segment, its length and its offset in the segment
/// (the offset is only needed for work-queue messages, which are read back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    pub bytes: u32,
    pub offset: u32,
}

struct Sess {
    /// During replay a session's records may come before its latest `Session`
    /// record (that record is rewritten later in the log and the older copy's
    /// segment deleted): such a session is a placeholder until its record shows.
    placeholder: bool,
    rec: SessionRec,
    loc: Loc,
    subs: Map<Arc<str>, (SubscriptionOptions, Option<u32>, Loc)>,
    inbound: Map<u16, Loc>,
    deliveries: BTreeSet<u64>,
}

/// A message with unfinished deliveries. Its payload is not kept: it is read
/// back from its record when a delivery needs it (a session's backlog lives on
/// disk) or when the record is copied forward.
struct Msg {
    loc: Loc,
    /// Unfinished deliveries.
    refs: u32,
    /// What it costs a session's queue (`Message::cost`; its record also
    /// lists every receiver, so its length would overcharge a fan-out).
    cost: u32,
    /// When its Message Expiry Interval ends (recovery drops it unsent).
    expires: Option<Instant>,
}

struct Deliv {
    mid: u64,
    r: Receiver,
    /// The latest `Deliv` record, if any (the `Msg` record holds the first state).
    state: Option<Loc>,
}

/// What was recovered for one session, for the router to rebuild it.
#[derive(Debug)]
pub struct RecoveredSession {
    pub rec: SessionRec,
    pub subs: Vec<(Arc<str>, SubscriptionOptions, Option<u32>)>,
    pub inbound_qos2: Vec<u16>,
    /// In delivery order (delivery ids increase in routing order).
    pub deliveries: Vec<RecoveredDelivery>,
}

/// One unfinished delivery of a recovered session.
#[derive(Debug)]
pub struct RecoveredDelivery {
    /// Read back for deliveries in flight; a queued one waits on disk (None)
    /// until its session is about to send it.
    pub message: Option<Arc<Message>>,
    pub r: Receiver,
    /// What its message costs the session's queue (`Message::cost`).
    pub cost: u32,
}

/// A session message the store must read back to copy it forward, with the
/// deliveries it still has in their current state.
#[derive(Debug)]
pub struct MsgCopy {
    pub mid: u64,
    pub at: Loc,
    pub receivers: Vec<Receiver>,
}

/// The records of a segment to be read back and written again (their payloads
/// are not in memory).
#[derive(Debug, Default)]
pub struct Copies {
    pub queue: Vec<QueueCopy>,
    pub messages: Vec<MsgCopy>,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub sessions: Vec<RecoveredSession>,
    pub retained: Vec<Arc<Message>>,
    /// Work queues with their messages.
    pub queues: Vec<RecoveredQueue>,
    /// Ids above every id on disk.
    pub next_sid: u64,
    pub next_mid: u64,
    pub next_did: u64,
    /// Above every work queue id and queue message id on disk.
    pub next_qid: u64,
    pub next_qmid: u64,
}

#[derive(Default)]
pub struct State {
    sessions: Map<u64, Sess>,
    messages: Map<u64, Msg>,
    deliveries: Map<u64, Deliv>,
    retained: Map<Arc<str>, (Arc<Message>, Loc)>,
    pub(super) queues: QueueIndex,
    /// Live bytes per segment (every segment that exists has an entry).
    segs: BTreeMap<u64, u64>,
    live_bytes: u64,
    max_sid: u64,
    max_mid: u64,
    max_did: u64,
    replaying: bool,
    /// A drained backlog gave its index memory back since the last look
    /// (`take_shrunk`): the caller returns it to the system.
    shrunk: bool,
}

impl State {
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub fn segment_live(&self, seg: u64) -> u64 {
        self.segs.get(&seg).copied().unwrap_or(0)
    }

    /// Register a segment (so a segment with nothing live is known to be dead).
    pub fn add_segment(&mut self, seg: u64) {
        self.segs.entry(seg).or_insert(0);
    }

    pub fn remove_segment(&mut self, seg: u64) {
        self.segs.remove(&seg);
    }

    fn live(&mut self, loc: Loc) {
        *self.segs.entry(loc.seg).or_insert(0) += u64::from(loc.bytes);
        self.live_bytes += u64::from(loc.bytes);
    }

    fn dead(&mut self, loc: Loc) {
        if let Some(v) = self.segs.get_mut(&loc.seg) {
            *v = v.saturating_sub(u64::from(loc.bytes));
        }
        self.live_bytes = self.live_bytes.saturating_sub(u64::from(loc.bytes));
    }

    fn finish_delivery(&mut self, did: u64) {
        let Some(d) = self.deliveries.remove(&did) else {
            return;
        };
        if let Some(l) = d.state {
            self.dead(l);
        }
        if let Some(s) = self.sessions.get_mut(&d.r.sid) {
            s.deliveries.remove(&did);
        }
        let gone = match self.messages.get_mut(&d.mid) {
            Some(m) => {
                m.refs = m.refs.saturating_sub(1);
                m.refs == 0
            }
            None => false,
        };
        if gone {
            if let Some(m) = self.messages.remove(&d.mid) {
                self.dead(m.loc);
            }
        }
        // A backlog that drained gives its slots back (hash maps never shrink
        // by themselves: 100,000 delivered messages would keep ~15 MB).
        if self.deliveries.capacity() > 4096
            && self.deliveries.len() < self.deliveries.capacity() / 4
        {
            self.deliveries.shrink_to(self.deliveries.len() * 2);
            self.messages.shrink_to(self.messages.len() * 2);
            self.shrunk = true;
        }
    }

    /// Did the index give memory back since the last call?
    pub fn take_shrunk(&mut self) -> bool {
        std::mem::take(&mut self.shrunk)
    }

    /// Replay mode: records of a session not seen yet create a placeholder.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
        self.queues.begin_replay();
    }

    /// End of replay: a placeholder whose `Session` record never came belongs to
    /// no live session; its records are dead. Returns how many there were.
    pub fn finish_replay(&mut self) -> usize {
        self.replaying = false;
        let orphans: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.placeholder)
            .map(|(k, _)| *k)
            .collect();
        for sid in &orphans {
            self.apply(Op::SessionGone { sid: *sid }, Loc::default());
        }
        orphans.len()
    }

    /// Session `sid`, if it exists (a placeholder is created while replaying).
    fn session_for(&mut self, sid: u64) -> Option<&mut Sess> {
        // Ids are never reused while any record of them is on disk.
        self.max_sid = self.max_sid.max(sid);
        if !self.replaying {
            return self.sessions.get_mut(&sid);
        }
        Some(self.sessions.entry(sid).or_insert_with(|| Sess {
            placeholder: true,
            rec: SessionRec {
                sid,
                client_id: "".into(),
                expiry: 0,
                disconnected_at: None,
                will: None,
                will_due: None,
                username: None,
                verified: false,
            },
            loc: Loc::default(),
            subs: Map::default(),
            inbound: Map::default(),
            deliveries: BTreeSet::new(),
        }))
    }

    /// Apply one op written at `loc` (at start: read back from there).
    pub fn apply(&mut self, op: Op, loc: Loc) {
        match op {
            Op::QueueDecl { .. }
            | Op::QueueMsg { .. }
            | Op::QueueCount { .. }
            | Op::QueueDone { .. }
            | Op::QueueGone { .. }
            | Op::QueueBind { .. } => {
                let ch = self.queues.apply(op, loc);
                for l in ch.live {
                    self.live(l);
                }
                for l in ch.dead {
                    self.dead(l);
                }
            }
            Op::Session(rec) => {
                self.max_sid = self.max_sid.max(rec.sid);
                let sid = rec.sid;
                self.live(loc);
                match self.sessions.get_mut(&sid) {
                    Some(s) => {
                        let old = std::mem::replace(&mut s.loc, loc);
                        s.rec = rec;
                        s.placeholder = false;
                        self.dead(old);
                    }
                    None => {
                        self.sessions.insert(
                            sid,
                            Sess {
                                placeholder: false,
                                rec,
                                loc,
                                subs: Map::default(),
                                inbound: Map::default(),
                                deliveries: BTreeSet::new(),
                            },
                        );
                    }
                }
            }
            Op::SessionGone { sid } => {
                self.max_sid = self.max_sid.max(sid);
                let Some(s) = self.sessions.remove(&sid) else {
                    return;
                };
                self.dead(s.loc);
                for (_, (_, _, l)) in s.subs {
                    self.dead(l);
                }
                for (_, l) in s.inbound {
                    self.dead(l);
                }
                for did in s.deliveries {
                    self.finish_delivery(did);
                }
            }
            Op::Sub {
                sid,
                filter,
                options,
                identifier,
            } => {
                let Some(s) = self.session_for(sid) else {
                    return;
                };
                let old = s.subs.insert(filter, (options, identifier, loc));
                self.live(loc);
                if let Some((_, _, l)) = old {
                    self.dead(l);
                }
            }
            Op::Unsub { sid, filter } => {
                let old = self
                    .sessions
                    .get_mut(&sid)
                    .and_then(|s| s.subs.remove(&filter));
                if let Some((_, _, l)) = old {
                    self.dead(l);
                }
            }
            Op::Retain { message } => {
                let old = self.retained.insert(message.topic.clone(), (message, loc));
                self.live(loc);
                if let Some((_, l)) = old {
                    self.dead(l);
                }
            }
            Op::RetainClear { topic } => {
                if let Some((_, l)) = self.retained.remove(&topic) {
                    self.dead(l);
                }
            }
            Op::Msg {
                mid,
                message,
                receivers,
            } => {
                self.max_mid = self.max_mid.max(mid);
                // A message copied forward replaces its earlier record and the
                // state records of the deliveries it lists.
                let mut refs = 0;
                for r in receivers {
                    self.max_did = self.max_did.max(r.did);
                    if self.session_for(r.sid).is_none() {
                        continue;
                    }
                    let did = r.did;
                    let sid = r.sid;
                    let prev = self.deliveries.insert(
                        did,
                        Deliv {
                            mid,
                            r,
                            state: None,
                        },
                    );
                    if let Some(l) = prev.and_then(|p| p.state) {
                        self.dead(l);
                    }
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.deliveries.insert(did);
                    }
                    refs += 1;
                }
                let old = self.messages.remove(&mid);
                if let Some(m) = &old {
                    self.dead(m.loc);
                }
                if refs > 0 {
                    self.live(loc);
                    let expires = message.expires_at();
                    let cost = u32::try_from(message.cost()).unwrap_or(u32::MAX);
                    self.messages.insert(
                        mid,
                        Msg {
                            loc,
                            refs,
                            cost,
                            expires,
                        },
                    );
                }
            }
            Op::Deliv { states } => {
                // One record, several deliveries: each delivery owns a share of
                // its bytes, live while that delivery still points at it.
                let n = states.len().max(1) as u32;
                let share = |i: u32| Loc {
                    seg: loc.seg,
                    bytes: loc.bytes / n + u32::from(i == 0) * (loc.bytes % n),
                    offset: 0,
                };
                for (i, st) in states.into_iter().enumerate() {
                    self.max_did = self.max_did.max(st.did);
                    let l = share(i as u32);
                    let old = match self.deliveries.get_mut(&st.did) {
                        Some(d) => {
                            d.r.pid = st.pid;
                            d.r.released = st.released;
                            d.state.replace(l)
                        }
                        None => continue,
                    };
                    self.live(l);
                    if let Some(o) = old {
                        self.dead(o);
                    }
                }
            }
            Op::Done { dids } => {
                for did in dids {
                    self.max_did = self.max_did.max(did);
                    self.finish_delivery(did);
                }
            }
            Op::InQos2 { sid, pid } => {
                let Some(s) = self.session_for(sid) else {
                    return;
                };
                let old = s.inbound.insert(pid, loc);
                self.live(loc);
                if let Some(l) = old {
                    self.dead(l);
                }
            }
            Op::InQos2Done { sid, pid } => {
                let old = self
                    .sessions
                    .get_mut(&sid)
                    .and_then(|s| s.inbound.remove(&pid));
                if let Some(l) = old {
                    self.dead(l);
                }
            }
        }
    }

    /// Ops that re-create every live record of segment `seg` (their current
    /// state), so that once they are written `seg` holds nothing live; and the
    /// messages whose records the caller must read back and write again for
    /// that (their payloads are not in memory).
    pub fn copy_forward(&self, seg: u64) -> (Vec<Op>, Copies) {
        let mut ops = Vec::new();
        for s in self.sessions.values() {
            if s.loc.seg == seg {
                ops.push(Op::Session(s.rec.clone()));
            }
            for (filter, (options, identifier, l)) in &s.subs {
                if l.seg == seg {
                    ops.push(Op::Sub {
                        sid: s.rec.sid,
                        filter: filter.clone(),
                        options: *options,
                        identifier: *identifier,
                    });
                }
            }
            for (pid, l) in &s.inbound {
                if l.seg == seg {
                    ops.push(Op::InQos2 {
                        sid: s.rec.sid,
                        pid: *pid,
                    });
                }
            }
        }
        for (message, l) in self.retained.values() {
            if l.seg == seg {
                ops.push(Op::Retain {
                    message: message.clone(),
                });
            }
        }
        // Messages: one record with every unfinished delivery in its current state.
        let mut by_mid: BTreeMap<u64, Vec<Receiver>> = BTreeMap::new();
        for d in self.deliveries.values() {
            let msg_here = self.messages.get(&d.mid).is_some_and(|m| m.loc.seg == seg);
            let state_here = d.state.is_some_and(|l| l.seg == seg);
            if msg_here || state_here {
                by_mid.entry(d.mid).or_default();
            }
        }
        if !by_mid.is_empty() {
            for d in self.deliveries.values() {
                if let Some(v) = by_mid.get_mut(&d.mid) {
                    v.push(d.r.clone());
                }
            }
        }
        let mut copies = Copies::default();
        for (mid, mut receivers) in by_mid {
            if let Some(m) = self.messages.get(&mid) {
                receivers.sort_by_key(|r| r.did);
                copies.messages.push(MsgCopy {
                    mid,
                    at: m.loc,
                    receivers,
                });
            }
        }
        self.queues.copy_forward(seg, &mut ops, &mut copies.queue);
        (ops, copies)
    }

    /// Where the message of delivery `did` lies, its id, and the delivery's
    /// current state, if the delivery is unfinished.
    pub fn locate_delivery(&self, did: u64) -> Option<(u64, Loc, &Receiver)> {
        let d = self.deliveries.get(&did)?;
        let m = self.messages.get(&d.mid)?;
        Some((d.mid, m.loc, &d.r))
    }

    /// Where message `mid` of work queue `qid` lies, if it is live.
    pub fn locate_queue_msg(&self, qid: u64, mid: u64) -> Option<Loc> {
        self.queues.locate(qid, mid)
    }

    /// Work-queue messages held, in all queues.
    pub fn queue_msgs(&self) -> usize {
        self.queues.messages()
    }

    /// Everything live, for the router, plus the cleanup ops for what expired
    /// while the broker was down (sessions past their expiry, expired messages).
    pub fn recovered(&mut self, now_unix: u64, now: Instant) -> (Recovered, Vec<Op>) {
        let (next_qid, next_qmid) = self.queues.next_ids();
        let mut out = Recovered {
            next_sid: self.max_sid + 1,
            next_mid: self.max_mid + 1,
            next_did: self.max_did + 1,
            next_qid,
            next_qmid,
            queues: self.queues.recovered(),
            ..Default::default()
        };
        let mut cleanup = Vec::new();
        let mut expired_dids = Vec::new();

        for s in self.sessions.values() {
            // A session connected at the crash counts as disconnected now.
            let since = s.rec.disconnected_at.unwrap_or(now_unix);
            if s.rec.expiry != u32::MAX
                && since.saturating_add(u64::from(s.rec.expiry)) <= now_unix
                && s.rec.will.is_none()
            {
                cleanup.push(Op::SessionGone { sid: s.rec.sid });
                continue;
            }
            let mut deliveries = Vec::with_capacity(s.deliveries.len());
            for did in &s.deliveries {
                let Some(d) = self.deliveries.get(did) else {
                    continue;
                };
                let Some(m) = self.messages.get(&d.mid) else {
                    continue;
                };
                if m.expires.is_some_and(|e| e <= now) && d.r.pid == 0 {
                    // Expired while queued [MQTT-3.3.2-5]; one already sent stays
                    // until acknowledged.
                    expired_dids.push(*did);
                    continue;
                }
                deliveries.push(RecoveredDelivery {
                    message: None,
                    r: d.r.clone(),
                    cost: m.cost,
                });
            }
            let mut subs: Vec<_> = s
                .subs
                .iter()
                .map(|(f, (o, i, _))| (f.clone(), *o, *i))
                .collect();
            // Subscription order does not matter to MQTT; keep it stable anyway.
            subs.sort_by(|a, b| a.0.cmp(&b.0));
            let mut inbound: Vec<u16> = s.inbound.keys().copied().collect();
            inbound.sort_unstable();
            out.sessions.push(RecoveredSession {
                rec: s.rec.clone(),
                subs,
                inbound_qos2: inbound,
                deliveries,
            });
        }
        if !expired_dids.is_empty() {
            cleanup.push(Op::Done { dids: expired_dids });
        }
        out.sessions.sort_by_key(|s| s.rec.sid);
        for (message, _) in self.retained.values() {
            if message.properties.message_expiry_interval == Some(0) {
                cleanup.push(Op::RetainClear {
                    topic: message.topic.clone(),
                });
            } else {
                out.retained.push(message.clone());
            }
        }
        (out, cleanup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PublishProperties, QoS};
    use bytes::Bytes;
    use std::time::Instant;

    fn loc(seg: u64) -> Loc {
        Loc {
            seg,
            bytes: 10,
            offset: 0,
        }
    }

    fn session(sid: u64) -> Op {
        Op::Session(SessionRec {
            sid,
            client_id: format!("c{sid}").into(),
            expiry: 100,
            disconnected_at: None,
            will: None,
            will_due: None,
            username: None,
            verified: false,
        })
    }

    fn message() -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties::default(),
            received: Instant::now(),
        })
    }

    fn msg(mid: u64, dids: &[(u64, u64)]) -> Op {
        Op::Msg {
            mid,
            message: message(),
            receivers: dids
                .iter()
                .map(|&(did, sid)| Receiver {
                    did,
                    sid,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    pid: 0,
                    released: false,
                    sub_ids: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn message_lives_until_every_delivery_is_done() {
        let mut s = State::default();
        s.apply(session(1), loc(1));
        s.apply(session(2), loc(1));
        s.apply(msg(1, &[(10, 1), (11, 2)]), loc(2));
        assert_eq!(s.segment_live(2), 10);
        s.apply(Op::Done { dids: vec![10] }, loc(3));
        assert_eq!(s.segment_live(2), 10, "one delivery left");
        s.apply(
            Op::Deliv {
                states: vec![DelivState {
                    did: 11,
                    pid: 5,
                    released: false,
                }],
            },
            loc(3),
        );
        assert_eq!(s.segment_live(3), 10);
        s.apply(Op::Done { dids: vec![11] }, loc(4));
        assert_eq!(s.segment_live(2), 0);
        assert_eq!(s.segment_live(3), 0);
        assert_eq!(s.live_bytes(), 20, "the two sessions");
    }

    #[test]
    fn copy_forward_moves_everything_live_out_of_a_segment() {
        let mut s = State::default();
        s.apply(session(1), loc(1));
        s.apply(
            Op::Sub {
                sid: 1,
                filter: "a/#".into(),
                options: SubscriptionOptions::default(),
                identifier: None,
            },
            loc(1),
        );
        s.apply(msg(1, &[(10, 1)]), loc(1));
        s.apply(
            Op::Deliv {
                states: vec![DelivState {
                    did: 10,
                    pid: 3,
                    released: true,
                }],
            },
            loc(2),
        );
        s.apply(msg(2, &[(11, 1)]), loc(1));
        s.apply(Op::Done { dids: vec![11] }, loc(2));
        let (mut ops, copies) = s.copy_forward(1);
        assert_eq!(ops.len(), 2, "session, subscription: {ops:?}");
        assert_eq!(copies.messages.len(), 1, "message 1 is read back");
        for c in copies.messages {
            ops.push(Op::Msg {
                mid: c.mid,
                message: message(),
                receivers: c.receivers,
            });
        }
        for op in ops {
            s.apply(op, loc(5));
        }
        assert_eq!(s.segment_live(1), 0);
        assert_eq!(s.segment_live(2), 0, "the Deliv record is superseded too");
        let (rec, cleanup) = s.recovered(0, Instant::now());
        assert!(cleanup.is_empty());
        let d = &rec.sessions[0].deliveries;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].r.pid, d[0].r.released), (3, true));
    }

    #[test]
    fn session_gone_frees_everything_it_held() {
        let mut s = State::default();
        s.apply(session(1), loc(1));
        s.apply(Op::InQos2 { sid: 1, pid: 4 }, loc(1));
        s.apply(msg(1, &[(10, 1)]), loc(2));
        s.apply(Op::SessionGone { sid: 1 }, loc(3));
        assert_eq!(s.live_bytes(), 0);
        // Records about a session that is gone are not live either.
        s.apply(msg(2, &[(12, 1)]), loc(3));
        assert_eq!(s.live_bytes(), 0);
    }

    #[test]
    fn expired_sessions_are_cleaned_up_at_recovery() {
        let mut s = State::default();
        s.apply(
            Op::Session(SessionRec {
                sid: 1,
                client_id: "c".into(),
                expiry: 10,
                disconnected_at: Some(1000),
                will: None,
                will_due: None,
                username: None,
                verified: false,
            }),
            loc(1),
        );
        s.apply(session(2), loc(1));
        let (rec, cleanup) = s.recovered(1011, Instant::now());
        assert_eq!(rec.sessions.len(), 1);
        assert_eq!(cleanup, vec![Op::SessionGone { sid: 1 }]);
        assert_eq!(rec.next_sid, 3);
    }

    #[test]
    fn replay_accepts_a_session_record_after_its_children() {
        // The session's first record was in a deleted segment; its latest comes
        // after a subscription and a message copied forward earlier.
        let mut s = State::default();
        s.begin_replay();
        s.apply(
            Op::Sub {
                sid: 7,
                filter: "a/#".into(),
                options: SubscriptionOptions::default(),
                identifier: None,
            },
            loc(3),
        );
        s.apply(msg(1, &[(10, 7)]), loc(3));
        s.apply(session(7), loc(4));
        // An orphan: records of a session that never shows up.
        s.apply(msg(2, &[(11, 8)]), loc(4));
        assert_eq!(s.finish_replay(), 1);
        let (rec, _) = s.recovered(0, Instant::now());
        assert_eq!(rec.sessions.len(), 1);
        assert_eq!(rec.sessions[0].subs.len(), 1);
        assert_eq!(rec.sessions[0].deliveries.len(), 1);
        assert_eq!(
            s.live_bytes(),
            30,
            "sub, message 1, session; not the orphan"
        );
        assert_eq!(rec.next_sid, 9, "ids seen in any record are not reused");
        assert_eq!(rec.next_did, 12);
    }
}
