//! Durable storage: an append-only segmented log of the router's state changes,
//! written by one store thread with group commit.
//!
//! Owns the data directory. The router hands it batches of `Op`s (one per router
//! turn) through `StoreHandle::submit`, which never blocks; the store thread takes
//! everything submitted so far, appends it, fsyncs once (group commit) and
//! publishes the ticket of the last batch it made durable. The router holds back
//! every acknowledgement or delivery that depends on a batch until its ticket is
//! synced (see `router/`). At start, the log is replayed (`log.rs`) into the
//! live-record index (`state.rs`), which gives the router what to rebuild.
//!
//! Keyed state (sessions, subscriptions, retained) lives in the same log as the
//! messages, kept small by deleting dead segments and copying the few live
//! records of the oldest segment forward (see ARCHITECTURE.md for why not redb).

pub mod log;
pub mod queue_index;
pub mod queue_slots;
pub mod record;
pub mod scan;
pub mod state;

use crate::clock::Clock;
use crate::config::{Durability, StorageConfig};
use crate::metrics::Metrics;
use crate::session::{ClientId, Message};
use record::{Op, Receiver};
use state::{Loc, Recovered, State};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

pub use log::OpenError;

#[derive(Default)]
struct Inbox {
    /// Bounded by what the router can produce before the store syncs: the acks
    /// that would let publishers send more wait for that sync.
    ops: Vec<Op>,
    /// The ticket of the last batch in `ops`.
    ticket: u64,
    /// Some op in `ops` must be fsynced before its ticket is published.
    needs_sync: bool,
    /// Messages to read back (bounded by the router's read-aheads).
    loads: Vec<LoadRequest>,
    closing: bool,
}

/// Messages for the store to read back from the log (their payloads are not
/// kept in memory while they wait).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadRequest {
    /// Messages `mids` of work queue `qid`.
    Queue { qid: u64, mids: Vec<u64> },
    /// The messages of a session's deliveries `dids` (`client` is only
    /// echoed back, for the router).
    Session { client: ClientId, dids: Vec<u64> },
}

/// The answer to a `LoadRequest`: each message in the order asked.
#[derive(Debug)]
pub enum Loaded {
    Queue {
        qid: u64,
        messages: Vec<(u64, Read)>,
    },
    /// Each delivery with its current state (qos, subscription ids), when it
    /// is still unfinished.
    Session {
        client: ClientId,
        deliveries: Vec<(u64, Read, Option<Receiver>)>,
    },
}

/// What reading one message back gave.
#[derive(Debug)]
pub enum Read {
    Message(Arc<Message>),
    /// No such message any more (removed meanwhile).
    Gone,
    /// Its record is damaged (frame, CRC or body): the message is lost.
    Damaged,
    /// The read failed for a passing reason (no descriptor, an I/O error):
    /// ask again later.
    Failed,
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    /// Set by the store when the disk budget is reached; read by the router.
    over_budget: AtomicBool,
    /// Set by the store while no segment can be created (file system full).
    no_space: AtomicBool,
}

/// The router's end: submit batches, learn which are durable.
pub struct StoreHandle {
    shared: Arc<Shared>,
    /// The ticket of the last batch that is durable.
    pub synced: watch::Receiver<u64>,
    /// Answers to `load` (taken by the router's task).
    pub loaded: Option<mpsc::UnboundedReceiver<Loaded>>,
    submitted: u64,
    /// `load` requests made (each is answered once on `loaded`), and answers
    /// taken (counted by the router).
    pub loads_asked: u64,
    pub loads_answered: u64,
}

impl StoreHandle {
    /// Queue a batch (possibly empty, to order held outputs) and return its ticket.
    /// Never blocks on I/O: the lock is only held to move the ops.
    pub fn submit(&mut self, ops: &mut Vec<Op>) -> u64 {
        self.submitted += 1;
        let mut inbox = match self.shared.inbox.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Finished deliveries alone need no fsync of their own: losing one in a
        // power cut means a redelivery (QoS 1 allows duplicates; for QoS 2 it is a
        // PUBREL the client answers again), never a loss. At low rates this halves
        // the fsyncs (and flash pages written) per message.
        inbox.needs_sync |= ops.iter().any(|o| !matches!(o, Op::Done { .. }));
        inbox.ops.append(ops);
        inbox.ticket = self.submitted;
        drop(inbox);
        self.shared.wake.notify_one();
        self.submitted
    }

    /// Ask for queue messages to be read back; the answer comes on `loaded`
    /// once every batch submitted before is written. Unbounded: the router
    /// bounds what it asks for (its read-ahead).
    pub fn load(&mut self, request: LoadRequest) {
        let mut inbox = match self.shared.inbox.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        inbox.loads.push(request);
        drop(inbox);
        self.loads_asked += 1;
        self.shared.wake.notify_one();
    }

    /// The ticket the next `submit` returns.
    pub fn next_ticket(&self) -> u64 {
        self.submitted + 1
    }

    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Must QoS 1/2 messages that need storing be refused (disk budget reached,
    /// or no space for a segment)?
    pub fn over_budget(&self) -> bool {
        self.shared.over_budget.load(Ordering::Relaxed)
            || self.shared.no_space.load(Ordering::Relaxed)
    }
}

/// The store thread, joined at shutdown after the router's last batch.
pub struct StoreThread {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreThread {
    /// Write what is queued, fsync, and stop.
    pub fn close(mut self) {
        if let Ok(mut inbox) = self.shared.inbox.lock() {
            inbox.closing = true;
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Open the data directory, replay it, and start the store thread.
pub fn open(
    config: &StorageConfig,
    metrics: Arc<Metrics>,
) -> Result<(StoreHandle, StoreThread, Recovered), OpenError> {
    open_at(config, metrics, Clock::read())
}

/// `open` at `clock`: stored Unix times (session expiry, message receipt) are
/// read against it.
pub fn open_at(
    config: &StorageConfig,
    metrics: Arc<Metrics>,
    clock: Clock,
) -> Result<(StoreHandle, StoreThread, Recovered), OpenError> {
    let started = Instant::now();
    let mut state = State::default();
    let mut n = 0usize;
    state.begin_replay();
    // Each record goes into the index as it is read: a queue's payloads are
    // dropped at once, so a large backlog is never all in memory.
    let log = log::Log::open_within(
        &config.dir,
        config.segment_size,
        config.max_bytes,
        clock,
        &mut |r| {
            n += 1;
            state.add_segment(r.segment);
            state.apply(
                r.op,
                Loc {
                    seg: r.segment,
                    bytes: r.len,
                    offset: r.offset,
                },
            );
        },
    )?;
    if log.has_head() {
        state.add_segment(log.head_id());
    }
    let orphans = state.finish_replay();
    if orphans > 0 {
        warn!("storage: records of {orphans} sessions without a session record were dropped");
    }
    let (mut recovered, mut cleanup) = state.recovered(clock.unix_secs(), clock.now);
    info!(
        "storage: recovered {} sessions, {} queued messages, {} retained, {} work-queue messages from {n} records in {:?}",
        recovered.sessions.len(),
        recovered
            .sessions
            .iter()
            .map(|s| s.deliveries.len())
            .sum::<usize>(),
        recovered.retained.len(),
        state.queue_msgs(),
        started.elapsed()
    );
    let shared = Arc::new(Shared {
        inbox: Mutex::new(Inbox::default()),
        wake: Condvar::new(),
        over_budget: AtomicBool::new(false),
        no_space: AtomicBool::new(false),
    });
    let (tx, rx) = watch::channel(0u64);
    let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
    let mut writer = Writer {
        loaded: loaded_tx,
        recent: RecentReads::default(),
        log,
        state,
        config: config.clone(),
        shared: shared.clone(),
        synced: tx,
        metrics,
        buf: Vec::with_capacity(64 * 1024),
        last_sync: Instant::now(),
        unsynced: false,
        pending: Parked::default(),
        crossed: false,
    };
    // Deliveries in flight are re-sent on resume: their messages are read
    // back now. Queued ones wait on disk until their session asks.
    writer.read_in_flight(&mut recovered, &mut cleanup, clock);
    // What expired while Tern was down goes first.
    writer.write_ops(cleanup, Clock::read());
    writer.sync();
    writer.reclaim();
    let thread = std::thread::Builder::new()
        .name("tern-store".into())
        .spawn(move || writer.run())
        .map_err(|e| OpenError::Io {
            dir: config.dir.clone(),
            source: e,
        })?;
    Ok((
        StoreHandle {
            shared: shared.clone(),
            synced: rx,
            loaded: Some(loaded_rx),
            submitted: 0,
            loads_asked: 0,
            loads_answered: 0,
        },
        StoreThread {
            shared,
            thread: Some(thread),
        },
        recovered,
    ))
}

/// Ops waiting for a segment to be created (no space), in order. A session's
/// record replaces the one of the same session already waiting: a client
/// reconnecting in a loop while the disk is full must not grow this without
/// bound, the latest record is the one that counts, and a session's id is never
/// reused.
#[derive(Default)]
struct Parked {
    ops: Vec<Op>,
    /// Where each session's record waits in `ops`.
    sessions: crate::hash::Map<u64, usize>,
}

impl Parked {
    fn park(&mut self, ops: impl IntoIterator<Item = Op>) {
        for op in ops {
            if let Op::Session(rec) = &op {
                if let Some(slot) = self
                    .sessions
                    .get(&rec.sid)
                    .and_then(|&i| self.ops.get_mut(i))
                {
                    *slot = op;
                    continue;
                }
                self.sessions.insert(rec.sid, self.ops.len());
            }
            self.ops.push(op);
        }
    }

    fn take(&mut self) -> Vec<Op> {
        self.sessions.clear();
        std::mem::take(&mut self.ops)
    }

    fn len(&self) -> usize {
        self.ops.len()
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Session messages read back lately, by message id: a message fanned out to
/// many sessions is read (and held) once while their reads come in, not once
/// per session. Bounded by count and bytes.
#[derive(Default)]
struct RecentReads {
    by_mid: crate::hash::Map<u64, Arc<Message>>,
    order: std::collections::VecDeque<u64>,
    bytes: usize,
}

impl RecentReads {
    const MAX_MESSAGES: usize = 1024;
    const MAX_BYTES: usize = 8 * 1024 * 1024;

    fn get(&self, mid: u64) -> Option<Arc<Message>> {
        self.by_mid.get(&mid).cloned()
    }

    fn put(&mut self, mid: u64, m: &Arc<Message>) {
        if m.cost() > Self::MAX_BYTES / 8 || self.by_mid.contains_key(&mid) {
            return;
        }
        self.bytes += m.cost();
        self.by_mid.insert(mid, m.clone());
        self.order.push_back(mid);
        while self.order.len() > Self::MAX_MESSAGES || self.bytes > Self::MAX_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(o) = self.by_mid.remove(&old) {
                self.bytes = self.bytes.saturating_sub(o.cost());
            }
        }
    }
}

struct Writer {
    /// Where queue messages read back go (the router).
    loaded: mpsc::UnboundedSender<Loaded>,
    /// Session messages read back lately (fan-out shares one copy).
    recent: RecentReads,
    log: log::Log,
    state: State,
    config: StorageConfig,
    shared: Arc<Shared>,
    synced: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    buf: Vec<u8>,
    last_sync: Instant,
    unsynced: bool,
    /// Ops that could not be written because no segment could be created (no
    /// space): written first, in order, once one can. Their batches' tickets are
    /// not published meanwhile, so nothing that depends on them goes out; the
    /// router refuses new QoS 1/2 messages (`over_budget`) until then. Bounded by
    /// what waiting clients can produce without acknowledgements.
    pending: Parked,
    /// The disk budget was crossed by a rotation (logged once per crossing).
    crossed: bool,
}

/// Why a record to copy forward could not be used: its read's error, or
/// another record where it should be.
fn unreadable_why(read: std::io::Result<Op>) -> String {
    match read {
        Err(e) => e.to_string(),
        Ok(_) => "another record lies there".into(),
    }
}

/// Run an I/O step until it succeeds: an acknowledgement must never go out for a
/// write that failed, so the store waits (and says so) rather than skip it.
fn retry<T>(what: &str, mut f: impl FnMut() -> std::io::Result<T>) -> T {
    let mut delay = Duration::from_millis(100);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => {
                error!(
                    "storage: {what} failed: {e}; retrying in {delay:?} (acknowledgements wait)"
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Writer {
    fn run(mut self) {
        loop {
            let (ops, ticket, closing, needs_sync, loads) = {
                let mut inbox = match self.shared.inbox.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                while inbox.ticket <= *self.synced.borrow()
                    && !inbox.closing
                    && inbox.loads.is_empty()
                {
                    let stuck = self.stuck();
                    let wait = if stuck {
                        // Try again for space every second.
                        Duration::from_secs(1)
                    } else if self.unsynced && self.config.durability == Durability::Periodic {
                        self.config
                            .sync_interval
                            .saturating_sub(self.last_sync.elapsed())
                    } else {
                        Duration::from_secs(3600)
                    };
                    let (g, timeout) = match self.shared.wake.wait_timeout(inbox, wait) {
                        Ok(r) => r,
                        Err(p) => p.into_inner(),
                    };
                    inbox = g;
                    if timeout.timed_out() && (self.unsynced || stuck) {
                        break;
                    }
                }
                (
                    std::mem::take(&mut inbox.ops),
                    inbox.ticket,
                    inbox.closing,
                    std::mem::take(&mut inbox.needs_sync),
                    std::mem::take(&mut inbox.loads),
                )
            };
            if !ops.is_empty() || self.stuck() {
                self.write_ops(ops, Clock::read());
            }
            match self.config.durability {
                Durability::Always if needs_sync => self.sync(),
                Durability::Always => {}
                Durability::Periodic => {
                    if self.last_sync.elapsed() >= self.config.sync_interval {
                        self.sync();
                    }
                }
                Durability::Never => {}
            }
            // A batch is durable only once nothing of it waits for space.
            if ticket > *self.synced.borrow() && self.pending.is_empty() {
                self.synced.send_replace(ticket);
            }
            // After the sync: reads must not delay acknowledgements.
            self.serve_loads(loads);
            self.reclaim();
            if self.state.take_shrunk() {
                // A drained session backlog's index: back to the system.
                crate::memory::trim();
            }
            if closing {
                self.sync();
                if !self.pending.is_empty() {
                    error!(
                        "storage: closed with {} operations unwritten for lack of space (their acknowledgements never went out)",
                        self.pending.len()
                    );
                }
                info!("storage: closed");
                return;
            }
        }
    }

    /// No segment to write to, or ops waiting for one.
    fn stuck(&self) -> bool {
        !self.pending.is_empty() || !self.log.has_head()
    }

    /// Append `ops` (rotating segments as they fill) and update the index. With
    /// no space for a new segment, the ops wait in `pending` (after what already
    /// waits there) and are written once a segment can be created.
    fn write_ops(&mut self, ops: Vec<Op>, clock: Clock) {
        if self.stuck() {
            self.pending.park(ops);
            if let Err(e) = self.log.ensure_head() {
                self.no_space(&e);
                return;
            }
            info!(
                "storage: a new segment could be created again: writing the {} operations that waited",
                self.pending.len()
            );
            self.state.add_segment(self.log.head_id());
            let ops = self.pending.take();
            self.append_ops(ops, clock);
            self.update_budget();
            return;
        }
        self.append_ops(ops, clock);
    }

    fn append_ops(&mut self, ops: Vec<Op>, clock: Clock) {
        if ops.is_empty() {
            return;
        }
        self.buf.clear();
        let mut rec = Vec::new();
        let mut ops = ops.into_iter();
        while let Some(op) = ops.next() {
            let seq = self.log.next_seq();
            rec.clear();
            let len = record::encode_salted(&op, seq, self.log.salt(), clock, &mut rec);
            let pending = self.buf.len() as u64;
            if pending + len as u64 > self.log.head_room()
                && !(self.log.head_empty() && pending == 0)
            {
                // Records never straddle segments: finish this one, start the next
                // (a record larger than a segment gets a segment of its own).
                self.flush_buf();
                if !self.rotate(seq) {
                    self.pending.park(std::iter::once(op).chain(ops));
                    break;
                }
                record::seal(&mut rec, self.log.salt());
            }
            self.log.take_seq();
            let offset = self.log.head_len() + self.buf.len() as u64;
            self.buf.extend_from_slice(&rec);
            self.state.apply(
                op,
                Loc {
                    seg: self.log.head_id(),
                    bytes: len as u32,
                    // Segments are at most 1 GiB (`storage.segment_size`).
                    offset: offset as u32,
                },
            );
        }
        self.flush_buf();
        self.unsynced = true;
    }

    /// Seal the head and start the next segment; false if there is no space for
    /// it (the log is then without a head until `ensure_head` succeeds).
    fn rotate(&mut self, first_seq: u64) -> bool {
        let budget = self.config.max_bytes;
        if budget > 0 && self.log.disk_bytes() + self.log.segment_size() > budget {
            // Dead segments first: what is deleted need not be exceeded.
            self.delete_dead();
            if self.log.disk_bytes() + self.log.segment_size() > budget && !self.crossed {
                self.crossed = true;
                error!(
                    "storage: a new segment crosses storage.max_bytes = {budget} ({} bytes on disk): operations already accepted are written anyway",
                    self.log.disk_bytes()
                );
            }
        }
        let r = self.log.rotate(first_seq);
        self.state.add_segment(self.log.head_id());
        match r {
            Ok(()) => {
                self.update_budget();
                true
            }
            Err(e) => {
                self.no_space(&e);
                false
            }
        }
    }

    /// No new segment could be created: refuse QoS 1/2 publishes until one can.
    fn no_space(&mut self, e: &std::io::Error) {
        if !self.shared.no_space.swap(true, Ordering::Relaxed) {
            error!(
                "storage: cannot create a new segment: {e}; QoS 1/2 messages that need storing are refused and {} operations wait until space returns (retried every second)",
                self.pending.len()
            );
        }
    }

    /// Append the encoded records gathered in `buf` to the head segment.
    fn flush_buf(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        retry("append", || self.log.append(&buf));
        self.metrics
            .store_bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.buf = buf;
        self.buf.clear();
    }

    fn sync(&mut self) {
        if self.unsynced {
            let started = Instant::now();
            retry("fsync", || self.log.sync());
            self.metrics.fsync_seconds.observe(started.elapsed());
            self.metrics.store_syncs.fetch_add(1, Ordering::Relaxed);
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
    }

    /// Delete the dead oldest segments.
    fn delete_dead(&mut self) {
        while let Some(oldest) = self.log.oldest_sealed() {
            if self.state.segment_live(oldest) != 0 {
                break;
            }
            retry("segment deletion", || self.log.delete(oldest));
            self.state.remove_segment(oldest);
        }
    }

    /// Delete dead segments; copy the oldest forward when the log holds much more
    /// than its live data (at most one segment per round, to bound the work).
    fn reclaim(&mut self) {
        let seg = self.config.segment_size;
        let mut compacted = false;
        loop {
            self.delete_dead();
            let Some(oldest) = self.log.oldest_sealed() else {
                break;
            };
            if compacted || self.stuck() {
                break;
            }
            let disk = self.log.disk_bytes();
            let live = self.state.live_bytes();
            let budget = self.config.max_bytes;
            let at_budget = budget > 0 && disk + seg > budget;
            let crowded = disk > 2 * live + 2 * seg || at_budget;
            // At the budget a copy must fit in the head: a rotation for it would
            // cross the budget by a segment (and a full segment gains nothing).
            let fits = !at_budget || self.state.segment_live(oldest) < self.log.head_room();
            if !crowded || !fits {
                break;
            }
            let Some(ops) = self.copies_of(oldest) else {
                break;
            };
            // The copies must be durable before the originals go.
            self.write_ops(ops, Clock::read());
            self.sync();
            compacted = true;
            if self.state.segment_live(oldest) != 0 {
                warn!("storage: segment {oldest} still has live records after compaction");
                break;
            }
        }
        self.update_budget();
    }

    /// The ops that re-create the live records of segment `seg`, messages
    /// read back from it. A message whose record cannot be read any more
    /// (damaged: its frame, CRC or body is bad) is lost: it is said, counted,
    /// and marked gone (so the segment can still go). None when a read failed
    /// for another reason (no descriptor left, an I/O error): nothing is
    /// copied this time, and nothing is lost.
    fn copies_of(&mut self, seg: u64) -> Option<Vec<Op>> {
        let (mut ops, copies) = self.state.copy_forward(seg);
        let clock = Clock::read();
        for c in copies.messages {
            match self.read_op(c.at, clock) {
                Ok(Op::Msg { mid, message, .. }) if mid == c.mid => ops.push(Op::Msg {
                    mid,
                    message,
                    receivers: c.receivers,
                }),
                Err(e) if e.kind() != std::io::ErrorKind::InvalidData => {
                    warn!(
                        "storage: segment {seg} not compacted now: message {} cannot be read back ({e})",
                        c.mid
                    );
                    return None;
                }
                other => {
                    let why = unreadable_why(other);
                    error!(
                        "storage: message {} for {} sessions cannot be read back to copy it forward ({why}): it is lost",
                        c.mid,
                        c.receivers.len()
                    );
                    self.metrics
                        .messages_unreadable
                        .fetch_add(c.receivers.len() as u64, Ordering::Relaxed);
                    ops.push(Op::Done {
                        dids: c.receivers.iter().map(|r| r.did).collect(),
                    });
                }
            }
        }
        for c in copies.queue {
            match self.read_op(c.at, clock) {
                Ok(Op::QueueMsg {
                    qid,
                    mid,
                    message,
                    enqueued_ms,
                    key,
                    ..
                }) if (qid, mid) == (c.qid, c.mid) => ops.push(Op::QueueMsg {
                    qid,
                    mid,
                    message,
                    deliveries: c.deliveries,
                    enqueued_ms,
                    key,
                }),
                Err(e) if e.kind() != std::io::ErrorKind::InvalidData => {
                    warn!(
                        "storage: segment {seg} not compacted now: message {} of work queue {} cannot be read back ({e})",
                        c.mid, c.qid
                    );
                    return None;
                }
                other => {
                    let why = unreadable_why(other);
                    error!(
                        "storage: message {} of work queue {} cannot be read back to copy it forward ({why}): it is lost",
                        c.mid, c.qid
                    );
                    self.metrics
                        .queue_unreadable
                        .fetch_add(1, Ordering::Relaxed);
                    ops.push(Op::QueueDone {
                        qid: c.qid,
                        mids: vec![c.mid],
                    });
                }
            }
        }
        Some(ops)
    }

    /// The op of the record at `at`, read back from its segment.
    fn read_op(&mut self, at: Loc, clock: Clock) -> std::io::Result<Op> {
        let (kind, body) = self.log.read_record(at.seg, at.offset, at.bytes)?;
        record::decode_body(kind, &body, clock)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Read back the messages the router asked for, and answer.
    fn serve_loads(&mut self, loads: Vec<LoadRequest>) {
        if loads.is_empty() {
            return;
        }
        let clock = Clock::read();
        for req in loads {
            let answer = match req {
                LoadRequest::Queue { qid, mids } => {
                    let mut messages = Vec::with_capacity(mids.len());
                    for mid in mids {
                        let m = match self.state.locate_queue_msg(qid, mid) {
                            None => Read::Gone,
                            Some(at) => self.read_message(at, None, clock, || {
                                format!("message {mid} of work queue {qid}")
                            }),
                        };
                        messages.push((mid, m));
                    }
                    Loaded::Queue { qid, messages }
                }
                LoadRequest::Session { client, dids } => {
                    let mut deliveries = Vec::with_capacity(dids.len());
                    for did in dids {
                        let (read, r) = self.read_delivery(did, clock);
                        deliveries.push((did, read, r));
                    }
                    Loaded::Session { client, deliveries }
                }
            };
            // The router is gone at shutdown: nothing to answer.
            let _ = self.loaded.send(answer);
        }
    }

    /// The message of delivery `did` and the delivery's current state.
    fn read_delivery(&mut self, did: u64, clock: Clock) -> (Read, Option<Receiver>) {
        let Some((mid, at, r)) = self.state.locate_delivery(did) else {
            return (Read::Gone, None);
        };
        let r = r.clone();
        if let Some(m) = self.recent.get(mid) {
            return (Read::Message(m), Some(r));
        }
        let read = self.read_message(at, Some(mid), clock, || {
            format!("message {mid} of delivery {did}")
        });
        if let Read::Message(m) = &read {
            self.recent.put(mid, m);
        }
        if matches!(read, Read::Damaged) {
            self.metrics
                .messages_unreadable
                .fetch_add(1, Ordering::Relaxed);
        }
        (read, Some(r))
    }

    /// Read the message record at `at` (a session message `mid`, or a work
    /// queue's message when None); `what` names it in the log.
    fn read_message(
        &mut self,
        at: Loc,
        mid: Option<u64>,
        clock: Clock,
        what: impl Fn() -> String,
    ) -> Read {
        match self.read_op(at, clock) {
            Ok(Op::QueueMsg { message, .. }) if mid.is_none() => Read::Message(message),
            Ok(Op::Msg {
                mid: m, message, ..
            }) if Some(m) == mid => Read::Message(message),
            Ok(_) => {
                error!(
                    "storage: {}: another record lies where it should be",
                    what()
                );
                Read::Damaged
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                error!("storage: {} cannot be read back: {e}", what());
                Read::Damaged
            }
            Err(e) => {
                warn!("storage: {} not read back now: {e}", what());
                Read::Failed
            }
        }
    }

    /// Recovery: read back the messages of the deliveries that were in flight
    /// (the router re-sends them on resume). A damaged one is lost (said,
    /// counted, finished in `cleanup`); a read failing for a passing reason is
    /// retried (the broker is starting: nothing waits on it yet).
    fn read_in_flight(&mut self, rec: &mut Recovered, cleanup: &mut Vec<Op>, clock: Clock) {
        let mut lost = Vec::new();
        for s in rec.sessions.iter_mut() {
            s.deliveries.retain_mut(|d| {
                if d.r.pid == 0 {
                    return true;
                }
                let mut delay = Duration::from_millis(100);
                loop {
                    match self.read_delivery(d.r.did, clock).0 {
                        Read::Message(m) => {
                            d.message = Some(m);
                            return true;
                        }
                        Read::Failed if delay < Duration::from_secs(1) => {
                            std::thread::sleep(delay);
                            delay *= 2;
                        }
                        Read::Failed => {
                            self.metrics
                                .messages_unreadable
                                .fetch_add(1, Ordering::Relaxed);
                            lost.push(d.r.did);
                            return false;
                        }
                        Read::Gone | Read::Damaged => {
                            lost.push(d.r.did);
                            return false;
                        }
                    }
                }
            });
        }
        if !lost.is_empty() {
            error!(
                "storage: {} messages in flight to sessions could not be read back: lost",
                lost.len()
            );
            cleanup.push(Op::Done { dids: lost });
        }
    }

    /// Raise or lower the router's refusal flag: at the budget (no room for
    /// another segment), or without space for a segment at all.
    fn update_budget(&mut self) {
        let seg = self.config.segment_size;
        if self.log.has_head() && self.shared.no_space.swap(false, Ordering::Relaxed) {
            info!("storage: space for segments again: QoS 1/2 messages are accepted");
        }
        if self.config.max_bytes > 0 {
            let over = self.log.disk_bytes() + seg > self.config.max_bytes;
            let was = self.shared.over_budget.swap(over, Ordering::Relaxed);
            if over && !was {
                warn!(
                    "storage: disk budget storage.max_bytes = {} reached ({} bytes on disk, {} live): QoS 1/2 messages that need storing are refused until space is freed",
                    self.config.max_bytes,
                    self.log.disk_bytes(),
                    self.state.live_bytes()
                );
            } else if was && !over {
                self.crossed = false;
                info!("storage: back under the disk budget");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::SessionRec;

    fn session(sid: u64, expiry: u32) -> Op {
        Op::Session(SessionRec {
            sid,
            client_id: format!("c{sid}").into(),
            expiry,
            disconnected_at: None,
            will: None,
            will_due: None,
            username: None,
            verified: false,
        })
    }

    /// A session's records while the disk is full: one waits, the latest.
    #[test]
    fn parked_session_records_do_not_pile_up() {
        let mut p = Parked::default();
        for round in 0..1000 {
            p.park([
                session(1, round),
                session(2, round),
                Op::SessionGone { sid: 3 },
            ]);
        }
        assert_eq!(p.len(), 2 + 1000, "two session records, every other op");
        let ops = p.take();
        assert!(matches!(&ops[0], Op::Session(r) if r.sid == 1 && r.expiry == 999));
        assert!(matches!(&ops[1], Op::Session(r) if r.sid == 2 && r.expiry == 999));
        assert!(p.is_empty());
        p.park([session(1, 5)]);
        assert_eq!(p.len(), 1, "a fresh start after take");
    }
}
