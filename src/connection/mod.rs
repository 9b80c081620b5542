//! One task per client connection: the codec on a socket, the CONNECT timeout,
//! keep-alive, reading and handling packets, and the loop that serves the socket,
//! the router's outbox and the router's kick.
//!
//! Owns everything that lives exactly as long as one network connection. Session
//! state that outlives it (subscriptions, inflight, queues, inbound QoS 2 ids)
//! belongs to the router, which also decides every reply of an inbound QoS flow;
//! this task writes those replies. Works over any byte stream, so TLS and
//! WebSockets reuse it.
//!
//! Beside it, one concept each: `pre_login.rs` (reading the CONNECT within the
//! pre-login budget), `negotiate.rs` (the pure CONNECT negotiation and every
//! refusal), `handshake.rs` (login, registration, CONNACK), `topic_alias.rs`,
//! `receive_window.rs` (our Receive Maximum), `outgoing.rs` (encoding what the
//! outbox hands us) and `close.rs` (how a connection ends).

mod close;
mod dormant;
mod handshake;
pub mod hibernate;
mod negotiate;
mod outgoing;
mod pre_login;
mod receive_window;
mod spawner;
mod topic_alias;

use crate::config::Config;
use crate::connection_slots::Slot;
use crate::login::Peer;
use crate::metrics::Metrics;
use crate::protocol::{
    self, AckProperties, Packet, PacketId, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::reload::Swap;
use crate::router::{DisconnectKind, RouterMsg};
use crate::session::ClientId;
use crate::topic::{validate_topic_name, FilterSpec};
use bytes::{Buf, BytesMut};
use close::{finish, graceful_close, Close, Registration};
use futures_util::FutureExt;
use handshake::handshake;
use negotiate::Negotiated;
pub use pre_login::PreLoginBudget;
use pre_login::{no_connect, read_connect, Charge, CONNECT_READ};
use receive_window::ReceiveWindow;
pub use spawner::Spawner;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use topic_alias::{InboundAliases, OutboundAliases};
use tracing::{debug, warn, Instrument};

/// What every connection task shares: configuration, the router's inbox, counters.
pub struct Shared {
    /// The configuration as of now: a reload replaces it. A connection takes
    /// its own snapshot at CONNECT.
    pub config: Swap<Config>,
    pub router: mpsc::Sender<RouterMsg>,
    pub metrics: Arc<Metrics>,
    pub next_conn_id: AtomicU64,
    /// Replaced by a reload that changes `[auth]`.
    pub logins: Swap<crate::login::Logins>,
    /// Read-buffer bytes held by connections that have not logged in yet.
    pub pre_login: PreLoginBudget,
    /// Where idle connections hibernate (None: they never do).
    pub hibernation: Option<Arc<hibernate::Hibernation>>,
    /// The thread connections' tasks are allocated on (None: the
    /// accepting worker's).
    pub spawner: Option<Arc<Spawner>>,
}

/// A byte stream a connection is served on. Every transport of a listener
/// can hibernate (`hibernate::Bed`); the test stream cannot.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    fn hibernates(&self) -> bool {
        false
    }

    /// Nothing of the transport's own waits to be written: it may sleep now.
    fn quiet(&self) -> bool {
        true
    }

    /// What a hibernating connection keeps of its transport.
    fn into_bed(self) -> std::io::Result<hibernate::Bed>
    where
        Self: Sized,
    {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl Transport for tokio::net::TcpStream {
    fn hibernates(&self) -> bool {
        true
    }

    fn into_bed(self) -> std::io::Result<hibernate::Bed> {
        Ok(hibernate::Bed::Plain(self.into_std()?))
    }
}

impl Transport for Box<dyn crate::listener::Io> {
    fn hibernates(&self) -> bool {
        true
    }

    fn quiet(&self) -> bool {
        (**self).quiet()
    }

    fn into_bed(self) -> std::io::Result<hibernate::Bed> {
        crate::listener::Io::into_bed(self)
    }
}

#[cfg(test)]
impl Transport for tokio::io::DuplexStream {}

/// Stop reading from the socket while this much is waiting to be written: a client
/// that does not read its acks must not make us buffer without bound.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Buffers above this size are released once empty, so an idle connection keeps
/// almost nothing (about a KB per idle connection is the goal).
const BUF_KEEP: usize = 1024;
/// Read size bounds: an idle connection reads into a small buffer; one whose reads
/// fill the buffer doubles it (fewer syscalls under load), up to the maximum, which
/// also caps the work one publisher gets per wake-up (larger starved subscribers).
const READ_MIN: usize = 256;
const READ_MAX: usize = 8 * 1024;
/// Publishes handed to the router in one message: fewer channel operations and
/// wake-ups per message, with a small bound on what one message holds.
const PUBLISH_BATCH: usize = 32;
/// Outbox items taken per wake-up. The outbox branch comes before the write branch
/// in the select, so everything ready is encoded first and written with one
/// syscall: on loopback each write wakes the peer, which costs more than the write.
const OUTBOX_BATCH: usize = 256;
/// How long a connection that was taken over goes on reading and handling what
/// its client had already sent. Its DISCONNECT may be in the socket, or in the
/// kernel before tokio has seen it, when the same client id connects again: the
/// router decides the Will from how this connection ends [MQTT-3.14.4-3]. It
/// ends sooner on the client's DISCONNECT, an error or EOF; a silent (or dead)
/// old connection costs the new one this much before its CONNACK.
const TAKEOVER_GRACE: Duration = Duration::from_millis(100);

/// Serve one accepted connection until it ends (or hibernates: then the
/// connection goes on in `hibernate.rs`, which holds its `slot`).
///
/// The peer comes boxed: it is read at CONNECT only, and inline it would take
/// its room (twice: as the argument and as a local) in every connection's
/// future for the connection's whole life.
pub fn serve<S: Transport>(
    mut stream: S,
    peer: Box<Peer>,
    shared: Arc<Shared>,
    slot: Slot,
) -> impl std::future::Future<Output = ()> + Send {
    // Not an `async fn`, which would hold its arguments twice (see `live`).
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    // At debug level: at info, a span per connection kept about 330 bytes
    // per connection ever open in tracing's registry (its slab never shrinks)
    // and pinned 20 MB of heap after 10,000 connections closed (issue 15).
    // The info events of a connection name it in their own fields instead.
    let span = tracing::debug_span!(
        "conn",
        peer = %peer.addr,
        id = conn_id,
        client = tracing::field::Empty,
        user = tracing::field::Empty
    );
    shared
        .metrics
        .connections_current
        .fetch_add(1, Ordering::Relaxed);
    async move {
        // Its locals end before the await below: held across it, they would
        // be reserved in the connection's future beside the moved copies.
        let live = {
            // Boxed: everything up to the CONNACK runs once, and inline its
            // state (the CONNECT's buffer, the pre-login charge, the
            // handshake) would be reserved in every connection's future for
            // the connection's whole life.
            let Some(conn) = Box::pin(open(&mut stream, peer, conn_id, &shared)).await else {
                ended(&shared);
                return;
            };
            drop(shared);
            tracing::Span::current().record("client", &*conn.client_id);
            let registration = conn.registration();
            live(stream, conn, registration, slot)
        };
        live.await;
    }
    .instrument(span)
}

/// A connection is gone.
fn ended(shared: &Shared) {
    shared
        .metrics
        .connections_current
        .fetch_sub(1, Ordering::Relaxed);
}

/// A logged-in connection from here until it ends, or until it hibernates
/// (its state, registration and slot then go to `hibernate.rs`, which calls
/// this again when it wakes).
///
/// A function returning an `async move` block, not an `async fn`: that would
/// keep its arguments (the whole `Conn`) twice in the connection's future,
/// as arguments and as locals.
#[allow(clippy::manual_async_fn)]
fn live<S: Transport>(
    mut stream: S,
    mut conn: Conn,
    registration: Registration,
    slot: Slot,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let close = match conn.run(&mut stream).await {
            Step::Close(close) => close,
            Step::Hibernate => {
                hibernate(stream, conn, registration, slot);
                return;
            }
        };
        // `finish` reports the end itself, in order with the final writes.
        registration.disarm();
        let shared = conn.shared.clone();
        let conn_id = conn.conn_id;
        Box::pin(finish(stream, conn, close, conn_id, &shared)).await;
        ended(&shared);
        drop(slot);
    }
}

/// Hand an idle connection to the hibernation. Its registration is not kept
/// (40 bytes a sleeper): the hibernation reports a sleeper that ends asleep
/// itself, and a woken one gets a new registration.
fn hibernate<S: Transport>(stream: S, conn: Conn, registration: Registration, slot: Slot) {
    let shared = conn.shared.clone();
    match (&shared.hibernation, stream.into_bed()) {
        (Some(h), Ok(bed)) => {
            registration.disarm();
            h.put_to_sleep(hibernate::Sleeper {
                conn: conn.doze(),
                bed,
                slot,
            });
        }
        (h, socket) => {
            // Not reached: `run` hibernates only with somewhere to go, and a
            // plain socket leaves the reactor unless its deregistration
            // fails. The socket is closed; the armed registration reports the
            // end as it drops.
            debug!(
                hibernation = h.is_some(),
                error = ?socket.err(),
                "cannot hibernate: closed"
            );
            drop((conn, registration, slot));
            ended(&shared);
        }
    }
}

/// A connection up to its CONNACK: the CONNECT within `connect_timeout` and
/// the pre-login budget, then the login and registration. None when it ended
/// there (refused, timed out, or closed).
async fn open<S>(
    stream: &mut S,
    peer: Box<Peer>,
    conn_id: u64,
    shared: &Arc<Shared>,
) -> Option<Conn>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let cfg = shared.config.get();
    let mut rbuf = BytesMut::with_capacity(CONNECT_READ);
    let mut charge = Charge {
        budget: &shared.pre_login,
        held: 0,
        read: 0,
    };
    // (3.1.1 and 5.0 section 3.1) a server closes a connection that does not send CONNECT in
    // reasonable time (rumqttd lesson: without this, idle sockets pile up).
    // Boxed, like the handshake and the close below: one-off phases whose state
    // would otherwise be reserved in the connection's future for its whole life.
    let first = Box::pin(tokio::time::timeout(
        cfg.limits.connect_timeout,
        read_connect(stream, &mut rbuf, &cfg.limits, &mut charge),
    ))
    .await;
    shared
        .metrics
        .bytes_received
        .fetch_add(charge.read, Ordering::Relaxed);
    let connect = match first {
        Err(_) => {
            debug!("no CONNECT within {:?}", cfg.limits.connect_timeout);
            return None;
        }
        Ok(Err(why)) => {
            Box::pin(no_connect(stream, why, rbuf, charge, shared)).await;
            return None;
        }
        Ok(Ok(c)) => c,
    };
    let (connect, remote_bridge) = connect;
    // A WebSocket's pre-login bytes are counted below tungstenite until now.
    if let Some(gate) = &peer.gate {
        gate.open();
    }
    // Boxed: the handshake runs once, and inline its state would be reserved in
    // every connection's future for its whole life.
    let Some(mut conn) = Box::pin(handshake(
        stream,
        *connect,
        remote_bridge,
        &peer,
        conn_id,
        shared,
    ))
    .await
    else {
        drop(charge);
        Box::pin(graceful_close(stream)).await;
        return None;
    };
    // Logged in: this connection's buffer no longer counts as unauthenticated.
    drop(charge);
    // Packets pipelined behind CONNECT move to the connection's buffer, copied:
    // what is left of the CONNECT buffer, even empty, still shares its allocation
    // (up to max_connect_packet_size), which must not live as long as the
    // connection. An idle connection then starts from the small read size.
    if !rbuf.is_empty() {
        conn.rbuf = BytesMut::from(&rbuf[..]);
    }
    drop(rbuf);
    Some(conn)
}

/// A PUBLISH's payload and correlation data are slices of the read buffer and
/// keep the whole allocation alive for as long as the message lives (retained,
/// queued for an offline session). From a buffer grown for a large packet, a
/// part that is small beside it is copied out: a 1-byte retained message sent
/// behind a 1 MB one pinned the 1 MB (200 of them held 300 MB against a 16 MiB
/// cap). Normal reads (up to `READ_MAX`) share their buffer as before.
fn unpin(p: &mut Publish, alloc: usize) {
    if alloc <= 2 * READ_MAX {
        return;
    }
    let small = |b: &bytes::Bytes| b.len() * 4 < alloc;
    if small(&p.payload) {
        p.payload = bytes::Bytes::copy_from_slice(&p.payload);
    }
    if let Some(cd) = p
        .properties
        .correlation_data
        .as_mut()
        .filter(|cd| small(cd))
    {
        *cd = bytes::Bytes::copy_from_slice(cd);
    }
}

/// A SUBSCRIBE or UNSUBSCRIBE with a filter against the spec's syntax is
/// malformed, not a filter to refuse in its acknowledgement: the connection
/// closes (3.1.1 [MQTT-4.8.0-1]; 5.0 section 4.13 after DISCONNECT 0x8F Topic
/// Filter invalid). A filter over Tern's own limits is well formed and gets a
/// SUBACK 0x8F from the router instead.
fn malformed_filter<'a>(mut filters: impl Iterator<Item = &'a str>) -> Option<Close> {
    filters.find_map(|f| {
        FilterSpec::check_syntax(f)
            .err()
            .map(|_| Close::error(ReasonCode::TOPIC_FILTER_INVALID, "malformed topic filter"))
    })
}

enum Written {
    Bytes(usize),
    Flushed,
}

/// One `write` of `buf`, or a flush when it is empty.
async fn write_or_flush<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> std::io::Result<Written> {
    if buf.is_empty() {
        w.flush().await.map(|()| Written::Flushed)
    } else {
        w.write(buf).await.map(Written::Bytes)
    }
}

struct Conn {
    client_id: ClientId,
    conn_id: u64,
    version: ProtocolVersion,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// How much to reserve before a read (adapts between READ_MIN and READ_MAX).
    read_size: usize,
    /// Inbound QoS 1/2 ids not yet completed and the replies the router owes:
    /// our Receive Maximum. Reading pauses at `receive_maximum` owed.
    inbound: ReceiveWindow,
    /// Deliveries too big for the client, to report to the router.
    skipped: Vec<PacketId>,
    /// Publishes decoded from the current read, sent to the router together.
    batch: Vec<Publish>,
    /// Topic aliases the client set on its PUBLISHes (5.0 section 3.3.2.3.4).
    in_aliases: InboundAliases,
    /// Aliases we assigned on deliveries, up to the client's Topic Alias Maximum.
    out_aliases: OutboundAliases,
    client_max_packet: Option<u32>,
    keep_alive: Option<Duration>,
    expiry_was_zero: bool,
    problem_info: bool,
    /// Everything was written but not yet flushed: TLS records and WebSocket
    /// frames may still sit in the transport's own buffer.
    flush_owed: bool,
    /// The router's deliveries and replies, and its kick.
    outbox: crate::outbox::OutboxReceiver,
    shared: Arc<Shared>,
    /// The configuration this connection was accepted under.
    cfg: Arc<Config>,
    /// When the keep-alive runs out unless the client sends something
    /// [MQTT-3.1.2-24] (far away without a keep-alive); kept while hibernating.
    ka_at: tokio::time::Instant,
}

/// How `Conn::run` stopped.
enum Step {
    Close(Close),
    /// Idle for `hibernate_after` with nothing in flight: the state goes to
    /// `hibernate.rs`.
    Hibernate,
}

/// The keep-alive deadline after a packet read at `now`.
fn keep_alive_deadline(
    now: tokio::time::Instant,
    keep_alive: Option<Duration>,
) -> tokio::time::Instant {
    now + keep_alive.unwrap_or(Duration::from_secs(100 * 365 * 86_400))
}

impl Conn {
    fn new(
        deal: Negotiated,
        conn_id: u64,
        outbox: crate::outbox::OutboxReceiver,
        shared: &Arc<Shared>,
        cfg: Arc<Config>,
    ) -> Conn {
        let ka_at = keep_alive_deadline(tokio::time::Instant::now(), deal.keep_alive_timeout());
        Conn {
            ka_at,
            keep_alive: deal.keep_alive_timeout(),
            client_id: deal.client_id,
            conn_id,
            version: deal.version,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_size: READ_MIN,
            inbound: ReceiveWindow::default(),
            skipped: Vec::new(),
            batch: Vec::new(),
            in_aliases: InboundAliases::default(),
            out_aliases: OutboundAliases::new(deal.out_alias_max),
            client_max_packet: deal.client_max_packet,
            expiry_was_zero: deal.session_expiry == 0,
            problem_info: deal.problem_info,
            flush_owed: false,
            outbox,
            shared: shared.clone(),
            cfg,
        }
    }

    fn limits(&self) -> &crate::config::Limits {
        &self.cfg.limits
    }

    /// Its registration with the router, armed: dropped so, it reports the
    /// connection's end.
    fn registration(&self) -> Registration {
        Registration::armed(&self.shared, &self.client_id, self.conn_id)
    }

    fn write_packet(&mut self, p: &Packet) {
        if let Err(e) = protocol::encode(p, self.version, &mut self.wbuf) {
            warn!(packet = p.name(), error = %e, "cannot encode");
        }
    }

    fn ack_props(&self, why: &str) -> AckProperties {
        AckProperties {
            // [MQTT-3.1.2-29] no Reason String unless the client allows it.
            reason_string: self.problem_info.then(|| why.to_string()),
            user_properties: Vec::new(),
        }
    }

    async fn run<S: Transport>(&mut self, stream: &mut S) -> Step {
        let hibernates = stream.hibernates()
            && self.shared.hibernation.is_some()
            && !self.limits().hibernate_after.is_zero();
        let close = loop {
            match self.run_loop(stream, hibernates).await {
                Step::Close(close) => break close,
                Step::Hibernate if stream.quiet() => return Step::Hibernate,
                // The transport still owes its client a frame (a pong the
                // socket did not take): awake for another period.
                Step::Hibernate => self.outbox.awake(),
            }
        };
        let ours = close.reason.is_some_and(|r| {
            r.is_error()
                && r != ReasonCode::SESSION_TAKEN_OVER
                && r != ReasonCode::SERVER_SHUTTING_DOWN
        });
        if ours {
            self.settle().await;
        }
        Step::Close(close)
    }

    /// Before closing on the client's protocol error: let the replies owed for
    /// the packets accepted before it (PUBACK, PUBREC, ...) go out first, within
    /// a bound, so the client knows which of its messages were taken.
    async fn settle(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while self.inbound.owed() > 0 {
            match tokio::time::timeout_at(deadline, self.outbox.recv()).await {
                Ok(Some(o)) => self.push_outgoing(o),
                _ => break,
            }
        }
    }

    async fn run_loop<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        hibernates: bool,
    ) -> Step {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // One timer for the connection's life: the keep-alive deadline
        // (`ka_at`, moved only by reads [MQTT-3.1.2-24]), or before it the
        // moment to hibernate, `hibernate_after` past the last activity.
        let mut active_at = tokio::time::Instant::now();
        let ka = tokio::time::sleep_until(self.wake_at(hibernates, active_at));
        tokio::pin!(ka);
        // Taken over: the timer now ends the grace (`TAKEOVER_GRACE`).
        let mut taken_over = false;
        // Packets pipelined behind CONNECT arrived with it.
        if !self.rbuf.is_empty() {
            if let Some(close) = Box::pin(self.process_input()).await {
                return Step::Close(close);
            }
        }
        loop {
            let can_read = self.wbuf.len() < WRITE_HIGH_WATER
                && self.inbound.owed() < usize::from(self.limits().receive_maximum);
            if can_read && self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
                self.rbuf.reserve(self.read_size);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            tokio::select! {
                biased;
                reason = self.outbox.kicked(), if !taken_over => {
                    let close = self.kicked(reason);
                    if close.reason != Some(ReasonCode::SESSION_TAKEN_OVER) {
                        return Step::Close(close);
                    }
                    // [MQTT-3.1.4-3] this connection closes, but first it handles
                    // what its client already sent: the router waits for our report
                    // (with its kind) before it decides the Will and lets the new
                    // connection in.
                    taken_over = true;
                    ka.as_mut().reset(tokio::time::Instant::now() + TAKEOVER_GRACE);
                }
                res = rd.read_buf(&mut self.rbuf), if can_read => {
                    match res {
                        Ok(0) => {
                            debug!("peer closed the connection");
                            return Step::Close(Close::silent());
                        }
                        Err(e) => {
                            debug!(error = %e, "read error");
                            return Step::Close(Close::silent());
                        }
                        Ok(n) => {
                            self.shared.metrics.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            self.adapt_read_size(n, spare)
                        }
                    }
                    if !taken_over {
                        active_at = tokio::time::Instant::now();
                        self.ka_at = keep_alive_deadline(active_at, self.keep_alive);
                        ka.as_mut().reset(self.wake_at(hibernates, active_at));
                    }
                    if let Some(close) = Box::pin(self.process_input()).await {
                        return Step::Close(close);
                    }
                }
                o = self.outbox.recv(), if self.wbuf.len() < WRITE_HIGH_WATER => {
                    let Some(o) = o else { return Step::Close(Close::silent()) };
                    // Not moving the timer: hibernating waits for it anyway.
                    if hibernates {
                        active_at = tokio::time::Instant::now();
                    }
                    self.push_outgoing(o);
                    self.push_outbox_batch();
                    // Replies written: packets held back by flow control can go on.
                    if !self.rbuf.is_empty() {
                        if let Some(close) = Box::pin(self.process_input()).await {
                            return Step::Close(close);
                        }
                    }
                    for packet_id in std::mem::take(&mut self.skipped) {
                        let msg = RouterMsg::Skipped {
                            client: self.client_id.clone(),
                            conn_id: self.conn_id,
                            packet_id,
                        };
                        // Boxed: a send to the router holds the message and
                        // its place in the queue (456 bytes), rarely.
                        if let Some(close) = Box::pin(self.to_router(msg)).await {
                            return Step::Close(close);
                        }
                    }
                }
                // Write what is buffered, then flush once it is all written. The
                // flush is part of the select, not an await in a branch body: a TLS
                // or WebSocket flush waits for a peer that may never read, and
                // meanwhile the keep-alive, a kick and the outbox must still be
                // served. Both transports keep their flush state in the stream, so
                // this is cancel-safe. (Plain TCP's flush is immediate.)
                res = write_or_flush(&mut wr, &self.wbuf), if !self.wbuf.is_empty() || self.flush_owed => {
                    if let Some(close) = self.wrote(res, &mut wr) {
                        return Step::Close(close);
                    }
                }
                _ = &mut ka => {
                    if taken_over {
                        return Step::Close(self.kicked(Some(ReasonCode::SESSION_TAKEN_OVER)));
                    }
                    let now = tokio::time::Instant::now();
                    if now >= self.ka_at {
                        // [MQTT-3.1.2-24] nothing for 1.5 x keep alive: close.
                        debug!("keep alive timeout");
                        return Step::Close(Close::error(
                            ReasonCode::KEEP_ALIVE_TIMEOUT,
                            "keep alive timeout",
                        ));
                    }
                    if hibernates && now >= active_at + self.limits().hibernate_after {
                        if self.may_hibernate() {
                            self.release_buffers();
                            return Step::Hibernate;
                        }
                        // Something is in flight: look again a period later.
                        active_at = now;
                    }
                    ka.as_mut().reset(self.wake_at(hibernates, active_at));
                }
            }
        }
    }

    /// When the connection's timer is due: its keep-alive deadline, or before
    /// it, if it `hibernates`, `hibernate_after` past its last activity.
    fn wake_at(&self, hibernates: bool, active_at: tokio::time::Instant) -> tokio::time::Instant {
        if hibernates {
            self.ka_at.min(active_at + self.limits().hibernate_after)
        } else {
            self.ka_at
        }
    }

    /// Idle: may this connection hibernate? Only with nothing half-read,
    /// unwritten, owed by the router or waiting in the outbox, and not
    /// kicked. True: from now on, what the router sends rings the alarm the
    /// hibernation sets (`OutboxReceiver::asleep`).
    fn may_hibernate(&self) -> bool {
        let quiet = self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && !self.flush_owed
            && self.inbound.owed() == 0
            && self.skipped.is_empty()
            && self.batch.is_empty();
        // `begin_sleep` refuses with anything in the outbox, a kick included.
        quiet && self.outbox.begin_sleep()
    }

    /// Going to sleep: the buffers are empty, but still hold their
    /// allocations.
    fn release_buffers(&mut self) {
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
        self.skipped = Vec::new();
        self.batch = Vec::new();
        self.inbound.compact();
        self.read_size = READ_MIN;
    }

    /// Kicked by the router: taken over, or the broker is shutting down.
    fn kicked(&mut self, reason: Option<ReasonCode>) -> Close {
        let reason = reason.unwrap_or(ReasonCode::SERVER_SHUTTING_DOWN);
        if reason == ReasonCode::SERVER_SHUTTING_DOWN {
            // Graceful shutdown: hand over what is already queued.
            while let Some(o) = self.outbox.try_recv() {
                self.push_outgoing(o);
            }
        }
        Close {
            reason: Some(reason),
            reason_string: None,
            kind: DisconnectKind::WithWill,
            session_expiry: None,
        }
    }

    /// Adapt the read size to the traffic: `n` bytes came into `spare` room.
    fn adapt_read_size(&mut self, n: usize, spare: usize) {
        if n >= spare {
            self.read_size = (self.read_size * 2).min(READ_MAX);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_MIN);
        }
    }

    /// After the first item: encode what else the outbox holds (a batch, up to
    /// the high water mark).
    fn push_outbox_batch(&mut self) {
        for _ in 0..OUTBOX_BATCH {
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                break;
            }
            match self.outbox.try_recv() {
                Some(o) => self.push_outgoing(o),
                None => break,
            }
        }
    }

    /// After one write (or flush) of the write buffer.
    fn wrote<W: AsyncWrite + Unpin>(
        &mut self,
        res: std::io::Result<Written>,
        wr: &mut W,
    ) -> Option<Close> {
        match res {
            Ok(Written::Bytes(0)) | Err(_) => return Some(Close::silent()),
            Ok(Written::Bytes(n)) => {
                self.shared
                    .metrics
                    .bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.wbuf.advance(n);
                if self.wbuf.is_empty() {
                    // Plain TCP (and most TLS writes) flush at once:
                    // try here, without another turn of the loop;
                    // only a flush that must wait for the peer is
                    // left to the select.
                    match wr.flush().now_or_never() {
                        Some(Ok(())) => {}
                        Some(Err(_)) => return Some(Close::silent()),
                        None => self.flush_owed = true,
                    }
                    if self.wbuf.capacity() > BUF_KEEP {
                        self.wbuf = BytesMut::new();
                    }
                }
            }
            Ok(Written::Flushed) => self.flush_owed = false,
        }
        None
    }

    /// Decode and handle every complete packet in the read buffer.
    async fn process_input(&mut self) -> Option<Close> {
        let limits = self.limits().decode_limits();
        let owed_max = usize::from(self.limits().receive_maximum);
        // The allocation this batch is decoded from (payloads are slices of it).
        let alloc = self.rbuf.capacity();
        // Stop at `receive_maximum` owed replies: the rest waits in the buffer
        // until replies are written (flow control for pipelining clients; it also
        // bounds the outbox slots replies take).
        while self.inbound.owed() < owed_max {
            let packet = match protocol::decode_with(&mut self.rbuf, Some(self.version), limits) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.shared
                        .metrics
                        .protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, "bad packet");
                    // What came before the bad packet is still delivered.
                    let _ = self.flush_batch().await;
                    return Some(e.into());
                }
            };
            if !matches!(packet, Packet::Publish(_)) {
                // Keep order: publishes decoded before this packet go first.
                if let Some(close) = self.flush_batch().await {
                    return Some(close);
                }
            }
            // PUBLISH, the hot path, inline; the rest boxed (SUBSCRIBE's state is
            // large and would otherwise sit in every connection's future).
            let result = match packet {
                Packet::Publish(mut p) => {
                    unpin(&mut p, alloc);
                    self.handle_publish(p).await
                }
                other => Box::pin(self.handle(other)).await,
            };
            if let Some(close) = result {
                let _ = self.flush_batch().await;
                return Some(close);
            }
        }
        if let Some(close) = self.flush_batch().await {
            return Some(close);
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > BUF_KEEP {
            self.rbuf = BytesMut::new();
        }
        None
    }

    async fn to_router(&self, msg: RouterMsg) -> Option<Close> {
        // Awaiting here is the backpressure: while the router is busy we stop
        // reading and TCP slows the publisher down.
        match self.shared.router.send(msg).await {
            Ok(()) => None,
            Err(_) => Some(Close::error(
                ReasonCode::SERVER_SHUTTING_DOWN,
                "server shutting down",
            )),
        }
    }

    async fn handle(&mut self, packet: Packet) -> Option<Close> {
        let client = self.client_id.clone();
        let conn_id = self.conn_id;
        // The QoS flows' packets go to the router, which answers them.
        let msg = match packet {
            // `process_input` sends PUBLISH to `handle_publish` directly.
            Packet::Publish(p) => return self.handle_publish(p).await,
            Packet::PubAck(a) => RouterMsg::PubAck {
                client,
                conn_id,
                packet_id: a.packet_id,
                reason: a.reason_code,
            },
            Packet::PubRec(a) => {
                // The router answers a successful PUBREC with PUBREL.
                let success = !a.reason_code.is_error();
                if success {
                    self.inbound.expect_reply();
                }
                RouterMsg::PubRec {
                    client,
                    conn_id,
                    packet_id: a.packet_id,
                    success,
                    reason: a.reason_code,
                }
            }
            Packet::PubComp(a) => RouterMsg::PubComp {
                client,
                conn_id,
                packet_id: a.packet_id,
            },
            Packet::PubRel(r) => {
                // The router releases the id and answers with PUBCOMP.
                self.inbound.expect_reply();
                RouterMsg::PubRel {
                    client,
                    conn_id,
                    packet_id: r.packet_id,
                }
            }
            Packet::Subscribe(s) => return self.subscribe(s).await,
            Packet::Unsubscribe(u) => return self.unsubscribe(u).await,
            Packet::PingReq => {
                self.write_packet(&Packet::PingResp);
                return None;
            }
            Packet::Disconnect(d) => {
                let max_expiry = self.limits().max_session_expiry;
                return Some(Close::by_client(&d, self.expiry_was_zero, max_expiry));
            }
            Packet::Connect(_) => {
                // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
                return Some(Close::error(ReasonCode::PROTOCOL_ERROR, "second CONNECT"));
            }
            Packet::Auth(_) => {
                // No enhanced authentication was agreed in CONNECT (5.0 section 4.12).
                return Some(Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "AUTH without an authentication method",
                ));
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Some(Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "server-only packet from a client",
                ));
            }
        };
        self.to_router(msg).await
    }

    async fn subscribe(&mut self, s: Subscribe) -> Option<Close> {
        if let Some(close) = malformed_filter(s.filters.iter().map(|f| f.filter.as_str())) {
            return Some(close);
        }
        if self.version.is_v5()
            && s.filters
                .iter()
                .any(|f| f.options.no_local && f.filter.starts_with("$share/"))
        {
            // [MQTT-3.8.3-4] No Local on a shared subscription.
            return Some(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "No Local on a shared subscription",
            ));
        }
        let (client, conn_id, packet_id) = (self.client_id.clone(), self.conn_id, s.packet_id);
        self.ask_router_for_codes(
            |reply| RouterMsg::Subscribe {
                client,
                conn_id,
                subscribe: s,
                reply,
            },
            // [MQTT-3.8.4-1] SUBACK with one code per filter, same packet id.
            |reason_codes| {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties: AckProperties::default(),
                    reason_codes,
                })
            },
        )
        .await
    }

    async fn unsubscribe(&mut self, u: Unsubscribe) -> Option<Close> {
        if let Some(close) = malformed_filter(u.filters.iter().map(String::as_str)) {
            return Some(close);
        }
        let (client, conn_id, packet_id) = (self.client_id.clone(), self.conn_id, u.packet_id);
        self.ask_router_for_codes(
            |reply| RouterMsg::Unsubscribe {
                client,
                conn_id,
                unsubscribe: u,
                reply,
            },
            |reason_codes| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties: AckProperties::default(),
                    reason_codes,
                })
            },
        )
        .await
    }

    /// Hand a SUBSCRIBE or UNSUBSCRIBE to the router, wait for its reason codes
    /// (one per filter) and write the acknowledgement `ack` makes of them.
    async fn ask_router_for_codes(
        &mut self,
        msg: impl FnOnce(oneshot::Sender<Vec<ReasonCode>>) -> RouterMsg,
        ack: impl FnOnce(Vec<ReasonCode>) -> Packet,
    ) -> Option<Close> {
        let (tx, rx) = oneshot::channel();
        if let Some(c) = self.to_router(msg(tx)).await {
            return Some(c);
        }
        let codes = rx.await.unwrap_or_default();
        if codes.is_empty() {
            // The router is gone (shutting down): an empty SUBACK or
            // UNSUBACK would be malformed.
            return Some(Close::error(
                ReasonCode::SERVER_SHUTTING_DOWN,
                "server shutting down",
            ));
        }
        self.write_packet(&ack(codes));
        None
    }

    async fn handle_publish(&mut self, mut p: Publish) -> Option<Close> {
        let v5 = self.version.is_v5();
        if !p.properties.subscription_identifiers.is_empty() {
            // [MQTT-3.3.4-6] a client never sends Subscription Identifiers.
            return Some(Close::error(
                ReasonCode::PROTOCOL_ERROR,
                "subscription identifier in PUBLISH",
            ));
        }
        let max = self.limits().topic_alias_maximum;
        if let Err(close) = self.in_aliases.resolve(&mut p, max) {
            return Some(close);
        }
        if validate_topic_name(&p.topic, self.cfg.topic_limits()).is_err() {
            return Some(Close::error(
                ReasonCode::TOPIC_NAME_INVALID,
                "topic name invalid or over the limits",
            ));
        }
        let packet_id = p.packet_id;
        let qos = p.qos;
        if v5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // Payload declared UTF-8 but is not: refuse it with 0x99 (5.0 section 3.3.2.3.2).
            if let Some(pid) = packet_id {
                let resp = PubResponse {
                    packet_id: pid,
                    reason_code: ReasonCode::PAYLOAD_FORMAT_INVALID,
                    properties: self.ack_props("payload is not valid UTF-8"),
                };
                let pkt = if qos == QoS::AtLeastOnce {
                    Packet::PubAck(resp)
                } else {
                    Packet::PubRec(resp)
                };
                self.write_packet(&pkt);
            }
            return None;
        }
        if let Some(pid) = packet_id {
            let max = v5.then(|| usize::from(self.limits().receive_maximum));
            if let Err(close) = self.inbound.admit(pid.get(), max) {
                return Some(close);
            }
        } else if qos != QoS::AtMostOnce {
            // The decoder guarantees a packet id for QoS > 0 [MQTT-2.2.1-2].
            return Some(Close::error(
                ReasonCode::MALFORMED_PACKET,
                "missing packet id",
            ));
        }
        self.batch.push(p);
        if self.batch.len() >= PUBLISH_BATCH {
            return self.flush_batch().await;
        }
        None
    }

    /// Send the publishes decoded so far to the router in one message.
    async fn flush_batch(&mut self) -> Option<Close> {
        if self.batch.is_empty() {
            return None;
        }
        let publishes = std::mem::take(&mut self.batch);
        self.to_router(RouterMsg::Publishes {
            client: self.client_id.clone(),
            conn_id: self.conn_id,
            publishes,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection task's future is allocated once per connection for its whole
    /// life: it is most of what an idle connection costs. Guard its size.
    #[test]
    fn connection_future_stays_small() {
        let (tx, _rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            config: Swap::new(Arc::new(Config::default())),
            router: tx,
            metrics: Arc::new(Metrics::default()),
            next_conn_id: AtomicU64::new(1),
            logins: Swap::new(Arc::new(
                crate::login::Logins::new(&Config::default()).unwrap(),
            )),
            pre_login: PreLoginBudget::default(),
            hibernation: None,
            spawner: None,
        });
        let (a, _b) = tokio::io::duplex(64);
        let slots = crate::connection_slots::ConnectionSlots::new(1);
        let fut = serve(
            a,
            Box::new(Peer::plain("127.0.0.1:1".parse().unwrap())),
            shared,
            slots.try_take().unwrap(),
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!(
            "connection future: {size} bytes; Conn: {} bytes",
            std::mem::size_of::<Conn>()
        );
        // 2,880 bytes before the one-off phases and SUBSCRIBE handling were
        // boxed; 1,704 before the phase up to the CONNACK was one boxed step;
        // 1,168 before the topic alias maps and the receive window's ids were
        // boxed at first use.
        assert!(size < 1040, "connection future grew to {size} bytes");
    }
}
