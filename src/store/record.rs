//! The on-disk record format of the message log: the operations the router asks the
//! store to make durable (`Op`), their binary encoding, and the checked decoder used
//! by recovery. Pure: no files here.
//!
//! A record is `len u32 | crc32 u32 | kind u8 | seq u64 | body` (little endian).
//! `len` counts `kind..body`, the CRC covers the segment's salt (format 2; none in
//! format 1) followed by the same bytes, `seq` increases by one per record so stale
//! bytes after a torn write are recognised. The salt is random per segment and
//! never leaves the disk, so a record a peer hides in a payload can never pass
//! the CRC when recovery resynchronises past damage (`scan.rs`). Bodies use LEB128
//! varints, so a QoS 1 message of 64 bytes to one receiver takes about 100 bytes:
//! flash wear stays close to the payload size.

use crate::protocol::{LastWill, PublishProperties, QoS, RetainHandling, SubscriptionOptions};
use crate::session::{ClientId, Message};
use bytes::Bytes;
use std::sync::Arc;
// The record format is encoded and decoded against a `Clock` (Unix times on disk).
pub use crate::clock::Clock;

/// Bytes before the body: len, crc, kind, seq.
pub const HEADER: usize = 4 + 4 + 1 + 8;

/// The smallest possible record: header plus a one-byte body.
pub const MIN_RECORD: usize = HEADER + 1;

/// The kind of a padding record: written by recovery over a damaged region so the
/// next start skips it without reporting it again. Its body is the sequence that
/// follows it (a varint), then filler.
pub const PAD: u8 = 0;

/// The highest record kind this version writes.
pub const MAX_KIND: u8 = 17;

/// The largest record recovery accepts (a 256 MiB packet plus state); anything
/// larger is a corrupt length.
pub const MAX_RECORD: usize = 300 * 1024 * 1024;

/// One change to durable state. The router emits these; the store writes them and
/// replays them on start.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A persistent session, created or changed (replaces the earlier record).
    Session(SessionRec),
    /// The session and everything it holds are gone.
    SessionGone {
        sid: u64,
    },
    /// A subscription of a persistent session (replaces one with the same filter).
    Sub {
        sid: u64,
        /// As the client sent it, `$share/group/` included.
        filter: Arc<str>,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    },
    Unsub {
        sid: u64,
        filter: Arc<str>,
    },
    /// A retained message (replaces the topic's earlier one).
    Retain {
        message: Arc<Message>,
    },
    RetainClear {
        topic: Arc<str>,
    },
    /// A QoS 1/2 message and its deliveries to persistent sessions.
    Msg {
        mid: u64,
        message: Arc<Message>,
        receivers: Vec<Receiver>,
    },
    /// Deliveries got their packet id (entered the inflight window) or their
    /// PUBREC. A list: they come in runs as acknowledgements free the window.
    Deliv {
        states: Vec<DelivState>,
    },
    /// Deliveries finished (PUBACK, PUBCOMP, expired, skipped).
    Done {
        dids: Vec<u64>,
    },
    /// An inbound QoS 2 packet id that got PUBREC and waits for PUBREL.
    InQos2 {
        sid: u64,
        pid: u16,
    },
    InQos2Done {
        sid: u64,
        pid: u16,
    },
    /// A work queue's store id for its name (live while the queue exists).
    QueueDecl {
        qid: u64,
        name: Arc<str>,
    },
    /// A message in a work queue (replaces an earlier record of it: copied
    /// forward with its current delivery count).
    QueueMsg {
        qid: u64,
        mid: u64,
        message: Arc<Message>,
        deliveries: u16,
        /// Unix milliseconds of its first enqueue.
        enqueued_ms: u64,
        /// Its ordering key under the queue's policy when it was taken (kept
        /// with it, like an SQS message group id; None without one), so
        /// recovery needs no payload to know it.
        key: Option<Box<str>>,
    },
    /// Queue messages were handed to consumers: their delivery counts (message
    /// id, count). A list: deliveries come in runs, one record serves the run.
    QueueCount {
        qid: u64,
        counts: Vec<(u64, u16)>,
    },
    /// Queue messages gone: acknowledged, dead-lettered (the dead-letter queue
    /// writes its own `QueueMsg`), dropped or purged.
    QueueDone {
        qid: u64,
        mids: Vec<u64>,
    },
    /// A queue is gone (created by a subscription, idle and empty).
    QueueGone {
        qid: u64,
    },
    /// A topic filter bound to a queue by a subscription
    /// (`$queue/<name>/<filter>`; the config's bindings come from the config).
    /// Live while the queue exists.
    QueueBind {
        qid: u64,
        filter: Arc<str>,
    },
}

impl Op {
    /// The record kind byte on disk.
    pub fn kind(&self) -> u8 {
        match self {
            Op::Session(_) => 1,
            Op::SessionGone { .. } => 2,
            Op::Sub { .. } => 3,
            Op::Unsub { .. } => 4,
            Op::Retain { .. } => 5,
            Op::RetainClear { .. } => 6,
            Op::Msg { .. } => 7,
            Op::Deliv { .. } => 8,
            Op::Done { .. } => 9,
            Op::InQos2 { .. } => 10,
            Op::InQos2Done { .. } => 11,
            Op::QueueDecl { .. } => 12,
            Op::QueueMsg { .. } => 13,
            Op::QueueCount { .. } => 14,
            Op::QueueDone { .. } => 15,
            Op::QueueGone { .. } => 16,
            Op::QueueBind { .. } => 17,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRec {
    pub sid: u64,
    pub client_id: ClientId,
    /// Session Expiry Interval in seconds (u32::MAX: never).
    pub expiry: u32,
    /// Unix seconds of the disconnect; None while connected (a crash then counts
    /// as a disconnect at restart).
    pub disconnected_at: Option<u64>,
    /// The Will of the current connection, or one waiting for its delay.
    pub will: Option<Box<LastWill>>,
    /// Unix seconds when a waiting Will is due; None while connected.
    pub will_due: Option<u64>,
    /// The username of the last login, which the ACL checks deliveries to the
    /// offline session (and its Will) against. Written last and only when set,
    /// so records written before it existed still decode (as None).
    pub username: Option<Arc<str>>,
    /// The username was verified (password or certificate), not just claimed:
    /// the session counts against its user, not as anonymous, for the session
    /// table. A byte after the username, written only when true; older records
    /// read as false.
    pub verified: bool,
}

/// One delivery of a message to one persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub did: u64,
    pub sid: u64,
    pub qos: QoS,
    pub retain: bool,
    /// 0 until the delivery enters the inflight window.
    pub pid: u16,
    /// PUBREC received (QoS 2): only PUBREL remains.
    pub released: bool,
    pub sub_ids: Vec<u32>,
}

/// The durable state of one delivery after it left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelivState {
    pub did: u64,
    pub pid: u16,
    pub released: bool,
}

// ---- encoding ----

fn put_var(b: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            b.push(byte);
            return;
        }
        b.push(byte | 0x80);
    }
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_var(b, v.len() as u64);
    b.extend_from_slice(v);
}

fn put_opt_var(b: &mut Vec<u8>, v: Option<u64>) {
    // 0 = absent, n + 1 = n.
    put_var(b, v.map_or(0, |x| x.saturating_add(1)));
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    // The SUBSCRIBE options byte layout (section 3.8.3.1).
    o.qos.as_u8()
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn put_props(b: &mut Vec<u8>, p: &PublishProperties) {
    let mut flags = 0u8;
    flags |= u8::from(p.payload_format_indicator.is_some());
    flags |= u8::from(p.message_expiry_interval.is_some()) << 1;
    flags |= u8::from(p.response_topic.is_some()) << 2;
    flags |= u8::from(p.correlation_data.is_some()) << 3;
    flags |= u8::from(!p.user_properties.is_empty()) << 4;
    flags |= u8::from(p.content_type.is_some()) << 5;
    b.push(flags);
    if let Some(v) = p.payload_format_indicator {
        b.push(v);
    }
    if let Some(v) = p.message_expiry_interval {
        put_var(b, u64::from(v));
    }
    if let Some(v) = &p.response_topic {
        put_bytes(b, v.as_bytes());
    }
    if let Some(v) = &p.correlation_data {
        put_bytes(b, v);
    }
    if !p.user_properties.is_empty() {
        put_var(b, p.user_properties.len() as u64);
        for (k, v) in p.user_properties.iter() {
            put_bytes(b, k.as_bytes());
            put_bytes(b, v.as_bytes());
        }
    }
    if let Some(v) = &p.content_type {
        put_bytes(b, v.as_bytes());
    }
}

fn put_message(b: &mut Vec<u8>, m: &Message, clock: Clock) {
    put_bytes(b, m.topic.as_bytes());
    b.push(m.qos.as_u8() | (u8::from(m.retain) << 2));
    put_var(b, clock.to_unix_ms(m.received));
    put_props(b, &m.properties);
    put_bytes(b, &m.payload);
}

fn put_will(b: &mut Vec<u8>, w: &LastWill) {
    put_bytes(b, w.topic.as_bytes());
    b.push(w.qos.as_u8() | (u8::from(w.retain) << 2));
    put_var(b, u64::from(w.delay_interval));
    put_props(b, &w.properties);
    put_bytes(b, &w.payload);
}

/// The CRC of a record body under a segment's salt (None: format 1, unsalted).
pub fn checksum(salt: Option<u64>, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(s) = salt {
        h.update(&s.to_le_bytes());
    }
    h.update(body);
    h.finalize()
}

/// Recompute the CRC of one encoded record for a segment's salt (a record encoded
/// for one head segment that moves to the next on rotation).
pub fn seal(record: &mut [u8], salt: Option<u64>) {
    if let Some(body) = record.get(8..) {
        let crc = checksum(salt, body);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A padding record of exactly `total` bytes at sequence `seq`, after which
/// reading goes on at `next_seq`; None if `total` is too small to hold one.
pub fn pad(seq: u64, next_seq: u64, total: usize, salt: Option<u64>) -> Option<Vec<u8>> {
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&[0; 8]);
    b.push(PAD);
    b.extend_from_slice(&seq.to_le_bytes());
    put_var(&mut b, next_seq);
    if b.len() > total || total > MAX_RECORD {
        return None;
    }
    b.resize(total, 0);
    let len = u32::try_from(total - 8).ok()?;
    b[..4].copy_from_slice(&len.to_le_bytes());
    seal(&mut b, salt);
    Some(b)
}

/// Append `op` as one format-1 (unsalted) record with sequence `seq` to `buf`;
/// returns its length.
pub fn encode(op: &Op, seq: u64, clock: Clock, buf: &mut Vec<u8>) -> usize {
    encode_salted(op, seq, None, clock, buf)
}

/// Append `op` as one record with sequence `seq` for a segment with `salt`.
pub fn encode_salted(
    op: &Op,
    seq: u64,
    salt: Option<u64>,
    clock: Clock,
    buf: &mut Vec<u8>,
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]); // len + crc, filled in below
    buf.push(op.kind());
    buf.extend_from_slice(&seq.to_le_bytes());
    match op {
        Op::Session(s) => {
            put_var(buf, s.sid);
            put_bytes(buf, s.client_id.as_bytes());
            put_var(buf, u64::from(s.expiry));
            put_opt_var(buf, s.disconnected_at);
            put_opt_var(buf, s.will_due);
            match &s.will {
                Some(w) => {
                    buf.push(1);
                    put_will(buf, w);
                }
                None => buf.push(0),
            }
            if let Some(u) = &s.username {
                put_bytes(buf, u.as_bytes());
                if s.verified {
                    buf.push(1);
                }
            }
        }
        Op::SessionGone { sid } => put_var(buf, *sid),
        Op::Sub {
            sid,
            filter,
            options,
            identifier,
        } => {
            put_var(buf, *sid);
            put_bytes(buf, filter.as_bytes());
            buf.push(options_byte(options));
            put_opt_var(buf, identifier.map(u64::from));
        }
        Op::Unsub { sid, filter } => {
            put_var(buf, *sid);
            put_bytes(buf, filter.as_bytes());
        }
        Op::Retain { message } => put_message(buf, message, clock),
        Op::RetainClear { topic } => put_bytes(buf, topic.as_bytes()),
        Op::Msg {
            mid,
            message,
            receivers,
        } => {
            put_var(buf, *mid);
            put_message(buf, message, clock);
            put_var(buf, receivers.len() as u64);
            for r in receivers {
                put_var(buf, r.did);
                put_var(buf, r.sid);
                buf.push(r.qos.as_u8() | (u8::from(r.retain) << 2) | (u8::from(r.released) << 3));
                put_var(buf, u64::from(r.pid));
                put_var(buf, r.sub_ids.len() as u64);
                for id in &r.sub_ids {
                    put_var(buf, u64::from(*id));
                }
            }
        }
        Op::Deliv { states } => {
            put_var(buf, states.len() as u64);
            for s in states {
                put_var(buf, s.did);
                // The packet id and the released flag in one varint.
                put_var(buf, (u64::from(s.pid) << 1) | u64::from(s.released));
            }
        }
        Op::Done { dids } => {
            put_var(buf, dids.len() as u64);
            for d in dids {
                put_var(buf, *d);
            }
        }
        Op::InQos2 { sid, pid } | Op::InQos2Done { sid, pid } => {
            put_var(buf, *sid);
            put_var(buf, u64::from(*pid));
        }
        Op::QueueDecl { .. }
        | Op::QueueMsg { .. }
        | Op::QueueCount { .. }
        | Op::QueueDone { .. }
        | Op::QueueGone { .. }
        | Op::QueueBind { .. } => put_queue_op(buf, op, clock),
    }
    let body = &buf[start + 8..];
    let len = body.len() as u32;
    let crc = checksum(salt, body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

/// Kinds 12-17: work queues.
fn put_queue_op(buf: &mut Vec<u8>, op: &Op, clock: Clock) {
    match op {
        Op::QueueDecl { qid, name } => {
            put_var(buf, *qid);
            put_bytes(buf, name.as_bytes());
        }
        Op::QueueMsg {
            qid,
            mid,
            message,
            deliveries,
            enqueued_ms,
            key,
        } => {
            put_var(buf, *qid);
            put_var(buf, *mid);
            put_var(buf, u64::from(*deliveries));
            put_var(buf, *enqueued_ms);
            // Empty: no key (an empty key is no key either).
            put_bytes(buf, key.as_deref().unwrap_or("").as_bytes());
            put_message(buf, message, clock);
        }
        Op::QueueCount { qid, counts } => {
            put_var(buf, *qid);
            put_var(buf, counts.len() as u64);
            for (mid, n) in counts {
                put_var(buf, *mid);
                put_var(buf, u64::from(*n));
            }
        }
        Op::QueueDone { qid, mids } => {
            put_var(buf, *qid);
            put_var(buf, mids.len() as u64);
            for m in mids {
                put_var(buf, *m);
            }
        }
        Op::QueueGone { qid } => put_var(buf, *qid),
        Op::QueueBind { qid, filter } => {
            put_var(buf, *qid);
            put_bytes(buf, filter.as_bytes());
        }
        _ => {}
    }
}

// ---- decoding ----

/// Why a record could not be read: where the valid log ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bad {
    #[error("end of data")]
    End,
    #[error("record length {0} is impossible")]
    Length(usize),
    #[error("record runs past the end of the file")]
    Truncated,
    #[error("checksum mismatch")]
    Crc,
    #[error("sequence {got}, expected {want}")]
    Sequence { got: u64, want: u64 },
    #[error("malformed record body: {0}")]
    Body(&'static str),
    #[error("zeroed bytes inside the written data")]
    Zeroed,
    #[error("the written data ends before the sequence the next segment starts at")]
    Missing,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, Bad> {
        let (&v, rest) = self.b.split_first().ok_or(Bad::Body("short"))?;
        self.b = rest;
        Ok(v)
    }

    fn var(&mut self) -> Result<u64, Bad> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Bad::Body("varint too long"))
    }

    fn var_u32(&mut self) -> Result<u32, Bad> {
        u32::try_from(self.var()?).map_err(|_| Bad::Body("value out of range"))
    }

    fn var_u16(&mut self) -> Result<u16, Bad> {
        u16::try_from(self.var()?).map_err(|_| Bad::Body("value out of range"))
    }

    fn opt_var(&mut self) -> Result<Option<u64>, Bad> {
        Ok(self.var()?.checked_sub(1))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Bad> {
        let n = usize::try_from(self.var()?).map_err(|_| Bad::Body("length"))?;
        if n > self.b.len() {
            return Err(Bad::Body("length past end"));
        }
        let (v, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Bad> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Bad::Body("not UTF-8"))
    }

    fn qos(v: u8) -> Result<QoS, Bad> {
        QoS::from_u8(v & 3).ok_or(Bad::Body("QoS"))
    }
}

fn get_props(r: &mut Reader) -> Result<PublishProperties, Bad> {
    let flags = r.u8()?;
    let mut p = PublishProperties::default();
    if flags & 1 != 0 {
        p.payload_format_indicator = Some(r.u8()?);
    }
    if flags & 2 != 0 {
        p.message_expiry_interval = Some(r.var_u32()?);
    }
    if flags & 4 != 0 {
        p.response_topic = Some(r.string()?);
    }
    if flags & 8 != 0 {
        p.correlation_data = Some(Bytes::copy_from_slice(r.bytes()?));
    }
    if flags & 16 != 0 {
        let n = r.var()?;
        let mut users = crate::protocol::UserPropertiesBuilder::default();
        for _ in 0..n {
            let k = r.string()?;
            let v = r.string()?;
            users.push(&k, &v);
        }
        p.user_properties = users.build();
    }
    if flags & 32 != 0 {
        p.content_type = Some(r.string()?);
    }
    Ok(p)
}

/// A message as stored: `received` is Unix milliseconds until recovery maps it.
fn get_message(r: &mut Reader, clock: Clock) -> Result<Message, Bad> {
    let topic: Arc<str> = Arc::from(r.string()?);
    let flags = r.u8()?;
    let received_ms = r.var()?;
    let mut properties = get_props(r)?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    // The Message Expiry Interval counts from reception [MQTT-3.3.2-5]: carry the
    // time spent before and during the restart into what is left.
    let elapsed = clock.unix_ms.saturating_sub(received_ms) / 1000;
    if let Some(e) = properties.message_expiry_interval {
        let left = u64::from(e).saturating_sub(elapsed);
        properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(0));
    }
    Ok(Message {
        topic,
        payload,
        qos: Reader::qos(flags)?,
        retain: flags & 4 != 0,
        properties,
        received: clock.now,
    })
}

fn get_will(r: &mut Reader) -> Result<LastWill, Bad> {
    let topic = r.string()?;
    let flags = r.u8()?;
    let delay_interval = r.var_u32()?;
    let properties = get_props(r)?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    Ok(LastWill {
        topic,
        payload,
        qos: Reader::qos(flags)?,
        retain: flags & 4 != 0,
        delay_interval,
        properties,
    })
}

fn get_options(v: u8) -> Result<SubscriptionOptions, Bad> {
    Ok(SubscriptionOptions {
        qos: Reader::qos(v)?,
        no_local: v & 4 != 0,
        retain_as_published: v & 8 != 0,
        retain_handling: match (v >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(Bad::Body("retain handling")),
        },
    })
}

/// One record's frame: checked length and CRC, not yet its body.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub kind: u8,
    pub seq: u64,
    /// The bytes after `seq`.
    pub body: &'a [u8],
    /// The whole record's length, header included.
    pub len: usize,
}

/// Check the frame of the record at the start of `data` under `salt`.
pub fn frame(data: &[u8], salt: Option<u64>) -> Result<Frame<'_>, Bad> {
    if data.len() < 8 {
        return Err(if data.iter().all(|&b| b == 0) {
            Bad::End
        } else {
            Bad::Truncated
        });
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    if len == 0 && crc == 0 {
        // Preallocated zeros: the end of the written part (or zeroed damage,
        // which the scan tells apart by looking further).
        return Err(Bad::End);
    }
    if !(9..=MAX_RECORD).contains(&len) {
        return Err(Bad::Length(len));
    }
    let body = data.get(8..8 + len).ok_or(Bad::Truncated)?;
    if checksum(salt, body) != crc {
        return Err(Bad::Crc);
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&body[1..9]);
    Ok(Frame {
        kind: body[0],
        seq: u64::from_le_bytes(seq_bytes),
        body: &body[9..],
        len: 8 + len,
    })
}

/// The sequence a padding record's body says comes next.
pub fn pad_next(body: &[u8]) -> Result<u64, Bad> {
    Reader { b: body }.var()
}

/// Read the format-1 record at the start of `data`, which must carry sequence
/// `want` (None: any). Returns the op, its sequence and its total length.
pub fn decode(data: &[u8], want: Option<u64>, clock: Clock) -> Result<(Op, u64, usize), Bad> {
    let f = frame(data, None)?;
    if let Some(w) = want {
        if f.seq != w {
            return Err(Bad::Sequence {
                got: f.seq,
                want: w,
            });
        }
    }
    Ok((decode_body(f.kind, f.body, clock)?, f.seq, f.len))
}

/// The op of a record whose frame checked out.
pub fn decode_body(kind: u8, body: &[u8], clock: Clock) -> Result<Op, Bad> {
    let mut r = Reader { b: body };
    let op = match kind {
        1 => Op::Session(get_session(&mut r)?),
        2 => Op::SessionGone { sid: r.var()? },
        3 => get_sub(&mut r)?,
        4 => {
            let sid = r.var()?;
            Op::Unsub {
                sid,
                filter: Arc::from(r.string()?),
            }
        }
        5 => Op::Retain {
            message: Arc::new(get_message(&mut r, clock)?),
        },
        6 => Op::RetainClear {
            topic: Arc::from(r.string()?),
        },
        7 => get_msg(&mut r, clock)?,
        8 => Op::Deliv {
            states: get_deliv_states(&mut r)?,
        },
        9 => {
            let n = r.var()?;
            let mut dids = Vec::new();
            for _ in 0..n {
                dids.push(r.var()?);
            }
            Op::Done { dids }
        }
        10 => Op::InQos2 {
            sid: r.var()?,
            pid: r.var_u16()?,
        },
        11 => Op::InQos2Done {
            sid: r.var()?,
            pid: r.var_u16()?,
        },
        12..=17 => get_queue_op(kind, &mut r, clock)?,
        _ => return Err(Bad::Body("unknown kind")),
    };
    if !r.b.is_empty() {
        return Err(Bad::Body("trailing bytes"));
    }
    Ok(op)
}

/// Kinds 12-17: work queues.
fn get_queue_op(kind: u8, r: &mut Reader, clock: Clock) -> Result<Op, Bad> {
    let qid = r.var()?;
    Ok(match kind {
        12 => Op::QueueDecl {
            qid,
            name: Arc::from(r.string()?),
        },
        13 => Op::QueueMsg {
            qid,
            mid: r.var()?,
            deliveries: r.var_u16()?,
            enqueued_ms: r.var()?,
            key: Some(r.string()?).filter(|k| !k.is_empty()).map(Box::from),
            message: Arc::new(get_message(r, clock)?),
        },
        14 => {
            let n = r.var()?;
            let mut counts = Vec::new();
            for _ in 0..n {
                counts.push((r.var()?, r.var_u16()?));
            }
            Op::QueueCount { qid, counts }
        }
        15 => {
            let n = r.var()?;
            let mut mids = Vec::new();
            for _ in 0..n {
                mids.push(r.var()?);
            }
            Op::QueueDone { qid, mids }
        }
        16 => Op::QueueGone { qid },
        _ => Op::QueueBind {
            qid,
            filter: Arc::from(r.string()?),
        },
    })
}

/// Kind 1: a persistent session. The username and its verified byte are
/// written last and only when set: a record without them reads as None / false.
fn get_session(r: &mut Reader) -> Result<SessionRec, Bad> {
    let sid = r.var()?;
    let client_id: ClientId = Arc::from(r.string()?);
    let expiry = r.var_u32()?;
    let disconnected_at = r.opt_var()?;
    let will_due = r.opt_var()?;
    let will = match r.u8()? {
        0 => None,
        _ => Some(Box::new(get_will(r)?)),
    };
    let username = if r.b.is_empty() {
        None
    } else {
        Some(Arc::from(r.string()?))
    };
    let verified = !r.b.is_empty() && r.u8()? == 1;
    Ok(SessionRec {
        sid,
        client_id,
        expiry,
        disconnected_at,
        will,
        will_due,
        username,
        verified,
    })
}

/// Kind 3: a subscription.
fn get_sub(r: &mut Reader) -> Result<Op, Bad> {
    let sid = r.var()?;
    let filter = Arc::from(r.string()?);
    let options = get_options(r.u8()?)?;
    let identifier = match r.opt_var()? {
        None => None,
        Some(v) => Some(u32::try_from(v).map_err(|_| Bad::Body("identifier"))?),
    };
    Ok(Op::Sub {
        sid,
        filter,
        options,
        identifier,
    })
}

/// Kind 7: a QoS 1/2 message and its deliveries to persistent sessions.
fn get_msg(r: &mut Reader, clock: Clock) -> Result<Op, Bad> {
    let mid = r.var()?;
    let message = Arc::new(get_message(r, clock)?);
    let n = r.var()?;
    let mut receivers = Vec::new();
    for _ in 0..n {
        receivers.push(get_receiver(r)?);
    }
    Ok(Op::Msg {
        mid,
        message,
        receivers,
    })
}

fn get_receiver(r: &mut Reader) -> Result<Receiver, Bad> {
    let did = r.var()?;
    let sid = r.var()?;
    let flags = r.u8()?;
    let pid = r.var_u16()?;
    let k = r.var()?;
    let mut sub_ids = Vec::new();
    for _ in 0..k {
        sub_ids.push(r.var_u32()?);
    }
    Ok(Receiver {
        did,
        sid,
        qos: Reader::qos(flags)?,
        retain: flags & 4 != 0,
        released: flags & 8 != 0,
        pid,
        sub_ids,
    })
}

/// Kind 8: delivery state changes; each packet id shares a varint with the
/// released bit.
fn get_deliv_states(r: &mut Reader) -> Result<Vec<DelivState>, Bad> {
    let n = r.var()?;
    let mut states = Vec::new();
    for _ in 0..n {
        let did = r.var()?;
        let v = r.var()?;
        states.push(DelivState {
            did,
            pid: u16::try_from(v >> 1).map_err(|_| Bad::Body("packet id"))?,
            released: v & 1 != 0,
        });
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock::read()
    }

    fn message(c: Clock) -> Arc<Message> {
        Arc::new(Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(300),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())].into(),
                content_type: Some("t".into()),
                ..Default::default()
            },
            received: c.now,
        })
    }

    fn all_ops(c: Clock) -> Vec<Op> {
        vec![
            Op::Session(SessionRec {
                sid: 3,
                client_id: "dev-1".into(),
                expiry: u32::MAX,
                disconnected_at: Some(1_700_000_000),
                will: Some(Box::new(LastWill {
                    topic: "w".into(),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    delay_interval: 5,
                    properties: PublishProperties::default(),
                })),
                will_due: Some(1_700_000_005),
                username: Some("alice".into()),
                verified: true,
            }),
            Op::SessionGone { sid: 3 },
            Op::Sub {
                sid: 3,
                filter: "$share/g/a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                identifier: Some(77),
            },
            Op::Unsub {
                sid: 3,
                filter: "a/#".into(),
            },
            Op::Retain {
                message: message(c),
            },
            Op::RetainClear {
                topic: "a/b".into(),
            },
            Op::Msg {
                mid: 1 << 40,
                message: message(c),
                receivers: vec![Receiver {
                    did: 9,
                    sid: 3,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    pid: 65535,
                    released: true,
                    sub_ids: vec![1, 268_435_455],
                }],
            },
            Op::Deliv {
                states: vec![
                    DelivState {
                        did: 9,
                        pid: 7,
                        released: false,
                    },
                    DelivState {
                        did: 10,
                        pid: 65535,
                        released: true,
                    },
                ],
            },
            Op::Done {
                dids: vec![1, 2, 3],
            },
            Op::InQos2 { sid: 3, pid: 9 },
            Op::InQos2Done { sid: 3, pid: 9 },
            Op::QueueDecl {
                qid: 4,
                name: "jobs".into(),
            },
            Op::QueueMsg {
                qid: 4,
                mid: 77,
                message: message(c),
                deliveries: 3,
                enqueued_ms: 1_700_000_000_123,
                key: Some("pump-7".into()),
            },
            Op::QueueCount {
                qid: 4,
                counts: vec![(77, 4), (78, 1)],
            },
            Op::QueueDone {
                qid: 4,
                mids: vec![77, 78],
            },
            Op::QueueGone { qid: 4 },
            Op::QueueBind {
                qid: 4,
                filter: "sensors/+/temp".into(),
            },
        ]
    }

    #[test]
    fn every_op_round_trips() {
        let c = clock();
        for (i, op) in all_ops(c).into_iter().enumerate() {
            let mut buf = Vec::new();
            let n = encode(&op, 100 + i as u64, c, &mut buf);
            assert_eq!(n, buf.len());
            let (back, seq, len) = decode(&buf, Some(100 + i as u64), c).expect("decodes");
            assert_eq!((seq, len), (100 + i as u64, n));
            assert_eq!(back, op);
        }
    }

    #[test]
    fn small_message_record_is_small() {
        let c = clock();
        let op = Op::Msg {
            mid: 123_456,
            message: Arc::new(Message {
                topic: "sensors/42/temp".into(),
                payload: Bytes::from(vec![7u8; 64]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                received: c.now,
            }),
            receivers: vec![Receiver {
                did: 1_000_000,
                sid: 12,
                qos: QoS::AtLeastOnce,
                retain: false,
                pid: 0,
                released: false,
                sub_ids: vec![],
            }],
        };
        let mut buf = Vec::new();
        let n = encode(&op, 1 << 30, c, &mut buf);
        assert!(n <= 120, "a 64-byte message record takes {n} bytes");
    }

    #[test]
    fn damage_is_detected() {
        let c = clock();
        let mut buf = Vec::new();
        encode(&all_ops(c)[6], 5, c, &mut buf);
        assert_eq!(decode(&[0u8; 64], None, c).unwrap_err(), Bad::End);
        assert_eq!(
            decode(&buf[..buf.len() - 1], None, c).unwrap_err(),
            Bad::Truncated
        );
        assert!(matches!(
            decode(&buf, Some(6), c).unwrap_err(),
            Bad::Sequence { .. }
        ));
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(
                decode(&b, Some(5), c).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }
}
