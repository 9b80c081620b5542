//! Hibernation: idle connections held outside any task.
//!
//! An idle connection's cost is mostly what its task keeps for its whole
//! life: the task itself (sized for its largest state), tokio's registration
//! of its socket, its read buffer. After `limits.hibernate_after` of silence,
//! with nothing half-read, unwritten or owed, a connection's task ends
//! (`Step::Hibernate`) and hands its state here (`Sleeper`: what it must
//! remember of its `Conn`, a `Dormant`; its slot; its transport's `Bed`).
//! Owns those sleepers, the epoll set (`mio::Poll`) that watches their
//! sockets, and the keep-alive deadlines.
//!
//! A sleeper wakes, in a new task, on the first of: its socket readable (a
//! packet, or the peer closing; epoll reports a socket that was readable
//! before it was added), the router pushing to its outbox or kicking it (the
//! outbox rings `Alarm`), its keep-alive deadline (the new task closes it
//! with 0x8D), the broker shutting down. It then carries on from where it
//! stopped: nothing the connection knew is lost (what its `Dormant` does not
//! keep is empty whenever it may sleep). The idea is EMQX's and Erlang's
//! `hibernate_after`.
//!
//! Every transport hibernates (`Bed`): plain TCP with its socket taken out of
//! tokio's reactor, WebSocket over it likewise, boxed with its framing, TLS
//! as rustls's state with its socket likewise out of the reactor; WebSocket
//! over TLS as the whole stream, its socket left in the reactor and watched
//! here too.

use super::dormant::Dormant;
use super::{ended, live};
use crate::connection_slots::Slot;
use crate::outbox::Alarm;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

/// Socket events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// One hibernating connection: everything its task held that outlives an
/// idle moment.
pub struct Sleeper {
    pub(super) conn: Dormant,
    pub(super) bed: Bed,
    pub(super) slot: Slot,
}

/// What a sleeper keeps of its transport.
pub enum Bed {
    /// Plain TCP: the socket, out of tokio's reactor.
    Plain(std::net::TcpStream),
    /// WebSocket over plain TCP: the socket out of the reactor, with the
    /// framing (boxed, whatever frame it is in).
    Ws(Box<crate::ws::Asleep>),
    /// TLS: rustls's state, the socket out of the reactor (its buffers were
    /// empty and are gone).
    Tls(Box<crate::tls_stream::Asleep>),
    /// WebSocket over TLS: the whole stream (not yet taken apart like a
    /// WebSocket's or a TLS stream's alone). Its socket stays registered with tokio's
    /// reactor, with no task to wake; the fd is watched here as well.
    /// Boxed twice: a thin pointer keeps every room 8 bytes smaller (Rust
    /// finds no room for the tag beside a fat one).
    #[allow(clippy::redundant_allocation)]
    Whole(Box<Box<dyn crate::listener::Io>>),
}

impl Bed {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            Bed::Plain(s) => s.as_raw_fd(),
            Bed::Ws(a) => a.fd(),
            Bed::Tls(a) => a.fd(),
            Bed::Whole(io) => io.fd(),
        }
    }
}

impl Sleeper {
    /// It ends asleep (shutdown): the router hears of it as of a connection
    /// that dropped.
    fn end(self) {
        let shared = self.conn.shared.clone();
        drop(self.conn.registration());
        drop(self);
        ended(&shared);
    }
}

/// A sleeper in its room, with the token that keeps the broker's shutdown
/// waiting for it as for a task.
pub(super) struct Room {
    sleeper: Sleeper,
    _token: TaskTrackerToken,
}

/// Below this many keys handed out, the lot's tables are kept when everyone
/// is awake again.
const FEW: usize = 64;

/// A keep-alive deadline as the heap keeps it: in the high half, tenths of
/// a second since the lot's epoch, rounded up (a sleeper is never woken
/// early, and late by under 100 ms); in the low half, the room's key. Eight
/// bytes an entry instead of 24.
type Alarm64 = Reverse<u64>;

struct Lot {
    /// Sleepers by key (the epoll token and the outbox alarm's key). Each
    /// room an allocation of its own, made as its connection falls asleep:
    /// it then takes a hole the connection's task has just let go (kept in
    /// blocks of 256 instead, 10,000 sleepers cost 1.44 KB each against
    /// 1.31).
    rooms: Vec<Option<Box<Room>>>,
    free: Vec<usize>,
    asleep: usize,
    /// Keys rung since the watcher last looked.
    rung: Vec<usize>,
    /// Keep-alive deadlines. A woken sleeper's entry stays until it is due or
    /// the heap is rebuilt; a stale one is known by the room's own deadline.
    alarms: BinaryHeap<Alarm64>,
    /// Where the deadlines in `alarms` count from.
    epoch: Instant,
    closed: bool,
}

impl Lot {
    fn new() -> Lot {
        Lot {
            rooms: Vec::new(),
            free: Vec::new(),
            asleep: 0,
            rung: Vec::new(),
            alarms: BinaryHeap::new(),
            epoch: Instant::now(),
            closed: false,
        }
    }

    fn room(&self, key: usize) -> Option<&Room> {
        self.rooms.get(key)?.as_deref()
    }

    /// A free key.
    fn vacant(&mut self) -> usize {
        if let Some(k) = self.free.pop() {
            return k;
        }
        self.rooms.push(None);
        self.rooms.len() - 1
    }

    /// Put `room` in `key`'s place (from `vacant`).
    fn put(&mut self, key: usize, room: Box<Room>) {
        self.rooms[key] = Some(room);
        self.asleep += 1;
    }

    /// Take the sleeper in `key`'s room, if any.
    fn take(&mut self, key: usize) -> Option<Box<Room>> {
        let room = self.rooms.get_mut(key)?.take()?;
        self.free.push(key);
        self.asleep -= 1;
        Some(room)
    }

    /// Every sleeper, out of its room.
    #[allow(clippy::vec_box)] // the rooms as the lot keeps them
    fn take_all(&mut self) -> Vec<Box<Room>> {
        let rooms = self.rooms.iter_mut().filter_map(Option::take).collect();
        self.asleep = 0;
        rooms
    }

    /// `at` in the heap's tenths of a second (see `Alarm64`), rounded up
    /// from the nanosecond: rounded from the millisecond, a deadline just
    /// past a tenth came out early, and the watcher, looking then, dropped
    /// it as not the sleeper's own (review finding). Saturates 13.6 years
    /// after the epoch, which moves to the present whenever nobody sleeps.
    fn tick(&self, at: Instant) -> u64 {
        let tenths = at
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .div_ceil(100_000_000);
        u64::from(u32::try_from(tenths).unwrap_or(u32::MAX))
    }

    fn alarm(&self, at: Instant, key: usize) -> Alarm64 {
        Reverse(self.tick(at) << 32 | key as u64)
    }

    /// The next deadline in the heap, and its key.
    fn next_alarm(&self) -> Option<(Instant, usize)> {
        let Reverse(a) = *self.alarms.peek()?;
        let at = self.epoch + Duration::from_millis((a >> 32) * 100);
        Some((at, (a & u64::from(u32::MAX)) as usize))
    }
}

/// Where idle connections hibernate (one per broker).
pub struct Hibernation {
    lot: Mutex<Lot>,
    registry: Registry,
    /// Wakes the watcher: a ring, or a new deadline.
    notify: Notify,
    /// Woken connections' tasks are tracked like accepted ones.
    tracker: TaskTracker,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Alarm for Hibernation {
    fn ring(&self, key: u32) {
        self.lock().rung.push(key as usize);
        self.notify.notify_one();
    }
}

impl Hibernation {
    /// The hibernation and the task that watches it (spawn it; it ends with
    /// `close` or with the runtime).
    pub fn start(
        tracker: TaskTracker,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<(Arc<Hibernation>, impl std::future::Future<Output = ()>)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let h = Arc::new(Hibernation {
            lot: Mutex::new(Lot::new()),
            registry,
            notify: Notify::new(),
            tracker,
            metrics,
        });
        // SAFETY: `Poll` owns its epoll descriptor until it drops, and its
        // `as_raw_fd` always returns that descriptor; the `AsyncFd` owns the
        // `Poll`, so the descriptor outlives the registration.
        let poll = unsafe { AsyncFd::register(poll) }?;
        Ok((h.clone(), h.watch(poll)))
    }

    fn lock(&self) -> MutexGuard<'_, Lot> {
        // Every change under this lock is a push or a take: a panic cannot
        // leave it half done.
        self.lot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a connection whose task has just ended to hibernate.
    pub(super) fn put_to_sleep(self: &Arc<Self>, sleeper: Sleeper) {
        let fd = sleeper.bed.fd();
        let ka_at = sleeper.conn.ka_at;
        let mut lot = self.lock();
        if lot.closed || lot.rooms.len() >= u32::MAX as usize {
            // Shutting down (or four billion sleepers): the connection ends here.
            drop(lot);
            sleeper.end();
            return;
        }
        if lot.asleep == 0 {
            // Every deadline left is a woken sleeper's: the heap starts
            // afresh, its epoch now (see `Lot::tick`).
            lot.alarms.clear();
            lot.epoch = Instant::now();
        }
        let key = lot.vacant();
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
        {
            // Cannot watch it: it stays awake.
            lot.free.push(key);
            drop(lot);
            warn!(error = %e, "cannot watch a hibernating connection's socket");
            self.wake(Box::new(Room {
                sleeper,
                _token: self.tracker.token(),
            }));
            return;
        }
        let alarm: Arc<dyn Alarm> = self.clone();
        // Keys stay below u32::MAX (checked above).
        let quiet = sleeper.conn.outbox.asleep(alarm, key as u32);
        lot.put(
            key,
            Box::new(Room {
                sleeper,
                _token: self.tracker.token(),
            }),
        );
        if !quiet {
            // Rung while falling asleep: wake at once.
            lot.rung.push(key);
        }
        let alarm = lot.alarm(ka_at, key);
        lot.alarms.push(alarm);
        // Stale deadlines (of sleepers since woken) are dropped when they
        // outnumber the live ones.
        if lot.alarms.len() > 2 * lot.asleep + 64 {
            let live: Vec<_> = (0..lot.rooms.len())
                .filter_map(|k| lot.room(k).map(|r| lot.alarm(r.sleeper.conn.ka_at, k)))
                .collect();
            lot.alarms = BinaryHeap::from(live);
        }
        drop(lot);
        self.metrics
            .connections_hibernating
            .fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// A sleeper wakes: out of the epoll set, into a new task that serves it
    /// as before (allocated on the spawner's thread, see `spawner.rs`).
    fn wake(&self, room: Box<Room>) {
        let _ = self
            .registry
            .deregister(&mut SourceFd(&room.sleeper.bed.fd()));
        room.sleeper.conn.outbox.awake();
        match room.sleeper.conn.shared.spawner.clone() {
            Some(spawner) => spawner.woken(room),
            None => {
                self.tracker.spawn(woken(room));
            }
        }
    }

    /// The watcher: wakes sleepers whose socket is readable, who were rung,
    /// or whose keep-alive deadline came.
    async fn watch(self: Arc<Self>, mut poll: AsyncFd<Poll>) {
        // Sleepers hold the broker's shared state, which holds this: if the
        // runtime drops this task, the sleepers go with it.
        struct Clear(Arc<Hibernation>);
        impl Drop for Clear {
            fn drop(&mut self) {
                self.0.close();
            }
        }
        let me = Clear(self);
        let h = &me.0;
        let mut events = Events::with_capacity(EVENTS);
        let mut ready = Vec::new();
        loop {
            let next = h.lock().next_alarm().map(|(at, _)| at);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                guard = poll.readable_mut() => {
                    let Ok(mut guard) = guard else {
                        warn!("hibernation: the epoll set failed; sleepers wake by their alarms only");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    };
                    events.clear();
                    if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        if e.kind() != std::io::ErrorKind::Interrupted {
                            warn!(error = %e, "hibernation: epoll_wait failed");
                        }
                    }
                    let n = events.iter().count();
                    ready.extend(events.iter().map(|e| e.token().0));
                    if n < EVENTS {
                        guard.clear_ready();
                    }
                }
                _ = h.notify.notified() => {}
                _ = tokio::time::sleep_until(next.unwrap_or(far)) => {}
            }
            let woken: Vec<Box<Room>> = {
                let mut lot = h.lock();
                if lot.closed {
                    return;
                }
                let mut keys = std::mem::take(&mut ready);
                keys.append(&mut lot.rung);
                let now = Instant::now();
                while let Some((at, key)) = lot.next_alarm() {
                    if at > now {
                        break;
                    }
                    lot.alarms.pop();
                    // Only if this deadline is still the sleeper's own.
                    if lot.room(key).is_some_and(|r| r.sleeper.conn.ka_at <= now) {
                        keys.push(key);
                    }
                }
                let woken = keys.iter().filter_map(|&k| lot.take(k)).collect();
                ready = keys;
                ready.clear();
                if lot.asleep == 0 && lot.rooms.len() > FEW {
                    // Everyone is awake: the tables of a crowd that slept
                    // (8 bytes a key, 8 a deadline) go back.
                    lot.rooms = Vec::new();
                    lot.free = Vec::new();
                    lot.alarms = BinaryHeap::new();
                }
                if lot.rung.capacity() > 1024 && lot.rung.is_empty() {
                    lot.rung = Vec::new();
                }
                if ready.capacity() > 1024 {
                    ready = Vec::new();
                }
                woken
            };
            if !woken.is_empty() {
                h.metrics
                    .connections_hibernating
                    .fetch_sub(woken.len() as u64, Ordering::Relaxed);
            }
            for room in woken {
                h.wake(room);
            }
        }
    }

    /// The broker is done with connections (after shutdown's wait, or the
    /// runtime ending): the sleepers left end here, and sleepers to come end
    /// at once.
    pub fn close(&self) {
        let rooms: Vec<Box<Room>> = {
            let mut lot = self.lock();
            lot.closed = true;
            lot.alarms.clear();
            let n = lot.asleep;
            self.metrics
                .connections_hibernating
                .fetch_sub(n as u64, Ordering::Relaxed);
            lot.take_all()
        };
        self.notify.notify_one();
        for room in rooms {
            room.sleeper.end();
        }
    }
}

/// A woken connection's task: its socket back in tokio's reactor, then
/// served from where it stopped.
#[allow(clippy::boxed_local)] // it comes boxed from the lot
pub(super) fn woken(room: Box<Room>) -> impl std::future::Future<Output = ()> + Send {
    let Room { sleeper, _token } = *room;
    let Sleeper { conn, bed, slot } = sleeper;
    let registration = conn.registration();
    let span = tracing::debug_span!("conn", id = conn.conn_id, client = %&*conn.client_id);
    async move {
        let _token = _token;
        enum Awake {
            Plain(tokio::net::TcpStream),
            Io(Box<dyn crate::listener::Io>),
        }
        // Its socket back in tokio's reactor.
        let awake = match bed {
            Bed::Whole(stream) => Ok(Awake::Io(*stream)),
            Bed::Plain(socket) => tokio::net::TcpStream::from_std(socket).map(Awake::Plain),
            Bed::Ws(asleep) => crate::ws::wake(asleep).map(|ws| Awake::Io(Box::new(ws))),
            Bed::Tls(asleep) => asleep.wake().map(|tls| Awake::Io(Box::new(tls))),
        };
        let awake = match awake {
            Ok(awake) => awake,
            Err(e) => {
                // Its registration reports the end as it drops.
                debug!(error = %e, "cannot wake a hibernating connection");
                let shared = conn.shared.clone();
                drop((conn, registration, slot));
                ended(&shared);
                return;
            }
        };
        debug!("woken");
        let conn = conn.rouse();
        match awake {
            Awake::Plain(stream) => live(stream, conn, registration, slot).await,
            Awake::Io(stream) => live(stream, conn, registration, slot).await,
        }
    }
    .instrument(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline in the heap is never before the sleeper's own: the watcher
    /// drops an entry that comes due before its sleeper's deadline (review
    /// finding: rounded from the millisecond, one just past a tenth of a
    /// second came out early, and the sleeper never timed out).
    #[test]
    fn a_deadline_in_the_heap_is_never_early() {
        let mut lot = Lot::new();
        let epoch = lot.epoch;
        for micros in [0, 1, 500, 99_999, 100_000, 100_500, 100_999, 7_000_001] {
            let at = epoch + Duration::from_micros(micros);
            lot.alarms.clear();
            let alarm = lot.alarm(at, 42);
            lot.alarms.push(alarm);
            let (due, key) = lot.next_alarm().expect("an alarm");
            assert_eq!(key, 42);
            assert!(due >= at, "{micros} us: due {:?} early", at - due);
            assert!(
                due < at + Duration::from_millis(100),
                "{micros} us: too late"
            );
        }
    }

    /// What a hibernating connection costs is mostly its room: guard its size.
    #[test]
    fn a_sleeper_stays_small() {
        let room = std::mem::size_of::<Room>();
        eprintln!(
            "room: {room} bytes, Dormant: {}, Bed: {}",
            std::mem::size_of::<Dormant>(),
            std::mem::size_of::<Bed>()
        );
        // 296 with the whole `Conn`.
        assert!(
            room <= 144,
            "a hibernating connection's room grew to {room} bytes"
        );
    }
}
