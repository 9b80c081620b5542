//! Accepting connections: TCP, TLS and WebSocket listeners and the connection cap.
//! No MQTT semantics.
//!
//! Owns the accept loop and the transport handshakes. A connection over
//! `max_connections` is closed at once; its slot (`connection_slots.rs`) moves
//! into the connection task, so a finished task frees it however it ends. TLS and WebSocket handshakes
//! run in the connection's own task, bounded by `connect_timeout`, so a slow or
//! silent peer never holds up the accept loop.

use crate::connection::hibernate::Bed;
use crate::connection::{serve, Shared};
use crate::connection_slots::{ConnectionSlots, Slot};
use crate::login::{CertIdentity, Peer};
use crate::tls::TlsCell;
use crate::tls_stream::TlsStream;
use crate::ws::{Gated, WsStream};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// What a listener speaks above TCP.
pub struct Transport {
    pub tls: Option<Arc<TlsCell>>,
    pub websocket: bool,
}

/// TLS and WebSocket streams are served through one boxed type, so the connection
/// code is compiled twice (plain TCP, boxed) rather than once per combination;
/// plain TCP, the common case, keeps static dispatch.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// What a hibernating connection keeps of this stream.
    fn into_bed(self: Box<Self>) -> std::io::Result<Bed>;

    /// Its socket's fd (a hibernating TLS stream's, watched while it sleeps).
    fn fd(&self) -> std::os::fd::RawFd;

    /// Nothing of the stream's own is waiting to be written (see
    /// `WsStream::quiet`).
    fn quiet(&self) -> bool {
        true
    }
}

impl Io for TlsStream {
    fn into_bed(self: Box<Self>) -> std::io::Result<Bed> {
        Ok(Bed::Tls((*self).into_asleep()?))
    }

    fn fd(&self) -> std::os::fd::RawFd {
        TlsStream::fd(self)
    }

    fn quiet(&self) -> bool {
        TlsStream::quiet(self)
    }
}

impl Io for WsStream<Gated<TlsStream>> {
    fn into_bed(mut self: Box<Self>) -> std::io::Result<Bed> {
        let tls = self.get_mut().get_mut();
        tls.let_go_of_buffers();
        let_go_of_the_task(tls.socket());
        Ok(Bed::Whole(Box::new(self)))
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.get_ref().get_ref().fd()
    }

    fn quiet(&self) -> bool {
        WsStream::quiet(self) && self.get_ref().get_ref().quiet()
    }
}

/// A socket that stays in tokio's reactor while its connection hibernates:
/// the reactor still holds the wakers of the task's last reads and writes,
/// and a waker keeps its task's allocation (about 1.3 KB) alive. Polled once
/// with a no-op waker, it holds that instead. Readiness that comes while the
/// connection sleeps is seen by the hibernation's own epoll.
fn let_go_of_the_task(socket: &TcpStream) {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Unconstrained: with the task's budget spent, tokio would answer Pending
    // without storing the no-op waker. Ready: nothing was stored; the
    // hibernation sees the socket as readable too.
    let polls = std::future::poll_fn(|cx| {
        let _ = socket.poll_read_ready(cx);
        let _ = socket.poll_write_ready(cx);
        std::task::Poll::Ready(())
    });
    let _ = std::pin::pin!(tokio::task::unconstrained(polls)).poll(&mut cx);
}

impl<S> Io for WsStream<S>
where
    S: crate::ws::PlainSocket + AsyncRead + AsyncWrite + Unpin + Send,
{
    fn into_bed(self: Box<Self>) -> std::io::Result<Bed> {
        Ok(Bed::Ws((*self).into_asleep()?))
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.get_ref().fd()
    }

    fn quiet(&self) -> bool {
        WsStream::quiet(self)
    }
}

type BoxedIo = Box<dyn Io>;

/// Accept until `shutdown`, then hand the socket back (a reload that changes
/// a listener's TLS or WebSocket setting restarts it on the same socket).
pub async fn accept_loop(
    listener: TcpListener,
    transport: Arc<Transport>,
    shared: Arc<Shared>,
    slots: ConnectionSlots,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> TcpListener {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = slots.try_take() else {
            shared
                .metrics
                .connections_refused_limit
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "max_connections reached: refused");
            drop(socket);
            continue;
        };
        shared
            .metrics
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        // Small packets are the norm: do not wait for Nagle.
        let _ = socket.set_nodelay(true);
        // Plain TCP, the common case, in a task of its own type: a task is
        // allocated at the size of its largest state, and the upgrade path's
        // would be reserved in every plain connection too.
        if transport.tls.is_none() && !transport.websocket {
            let peer = Box::new(Peer::plain(peer));
            match &shared.spawner {
                Some(spawner) => spawner.accepted(socket, peer, shared.clone(), slot),
                None => {
                    tracker.spawn(serve(socket, peer, shared.clone(), slot));
                }
            }
        } else {
            match &shared.spawner {
                // Every connection may hibernate: its task is allocated
                // where the plain ones are (`connection/spawner.rs`).
                Some(spawner) => {
                    spawner.upgraded(socket, peer, transport.clone(), shared.clone(), slot)
                }
                None => {
                    tracker.spawn(serve_upgraded(
                        socket,
                        peer,
                        transport.clone(),
                        shared.clone(),
                        slot,
                    ));
                }
            }
        }
    }
    listener
}

/// A TLS or WebSocket connection's task: its transport handshake, then MQTT.
/// The task's allocation is sized for the largest state of this future for
/// the connection's whole life, so the one-off handshake (rustls and
/// the WebSocket upgrade's buffers are kilobytes) is boxed: inline, it made
/// every connection cost about 12 KB (issue 15).
pub(crate) async fn serve_upgraded(
    socket: TcpStream,
    peer: SocketAddr,
    transport: Arc<Transport>,
    shared: Arc<Shared>,
    slot: Slot,
) {
    let limit = shared.config.get().limits.connect_timeout;
    let upgraded =
        tokio::time::timeout(limit, Box::pin(upgrade(socket, peer, &transport, &shared))).await;
    match upgraded {
        Ok(Some((io, peer))) => serve(io, Box::new(peer), shared, slot).await,
        Ok(None) => {}
        Err(_) => {
            let counter = if transport.tls.is_some() {
                &shared.metrics.tls_handshake_failed
            } else {
                &shared.metrics.ws_handshake_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "handshake timed out");
        }
    }
}

/// The TLS and/or WebSocket handshake. None when it failed (counted, logged at
/// debug: scanners and wrong clients are routine on an exposed port).
async fn upgrade(
    socket: TcpStream,
    addr: SocketAddr,
    transport: &Transport,
    shared: &Arc<Shared>,
) -> Option<(BoxedIo, Peer)> {
    let Some(cell) = &transport.tls else {
        return websocket(socket, Peer::plain(addr), shared).await;
    };
    let tls = match TlsStream::accept(socket, cell.current()).await {
        Ok(t) => t,
        Err(e) => {
            shared
                .metrics
                .tls_handshake_failed
                .fetch_add(1, Ordering::Relaxed);
            debug!(peer = %addr, error = %e, "TLS handshake failed");
            return None;
        }
    };
    let cert = if cell.settings().identity_as_username {
        match tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::common_name(c))
        {
            Some(cn) => CertIdentity::Name(cn),
            None => CertIdentity::Missing,
        }
    } else {
        CertIdentity::NotUsed
    };
    let peer = Peer {
        addr,
        cert,
        gate: None,
    };
    if !transport.websocket {
        return Some((Box::new(tls) as BoxedIo, peer));
    }
    websocket(tls, peer, shared).await
}

/// The WebSocket upgrade over `stream` (TCP or TLS).
async fn websocket<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    mut peer: Peer,
    shared: &Arc<Shared>,
) -> Option<(BoxedIo, Peer)>
where
    crate::ws::WsStream<crate::ws::Gated<S>>: Io,
{
    let gate = crate::ws::PreLoginGate::new(shared.clone());
    let stream = crate::ws::Gated::new(stream, gate.clone());
    match crate::ws::accept(stream, shared.config.get().limits.max_packet_size).await {
        Ok(ws) => {
            peer.gate = Some(gate);
            Some((Box::new(ws) as BoxedIo, peer))
        }
        Err(e) => {
            shared
                .metrics
                .ws_handshake_failed
                .fetch_add(1, Ordering::Relaxed);
            debug!(peer = %peer.addr, error = %e, "WebSocket handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::reload::Swap;

    /// The task of an accepted connection is allocated once, at the size of
    /// its largest state, and lives as long as the connection: it is most of
    /// what an idle connection costs. Guard its size (12,840 bytes before the
    /// TLS / WebSocket handshake was boxed, 2,032 before the login phase was).
    #[tokio::test]
    async fn an_accepted_connections_task_stays_small() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (socket, peer) = l.accept().await.unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let shared = Arc::new(Shared {
            config: Swap::new(Arc::new(Config::default())),
            router: tx,
            metrics: Arc::new(crate::metrics::Metrics::default()),
            next_conn_id: std::sync::atomic::AtomicU64::new(1),
            logins: Swap::new(Arc::new(
                crate::login::Logins::new(&Config::default()).unwrap(),
            )),
            pre_login: Default::default(),
            hibernation: None,
            spawner: None,
        });
        let slots = ConnectionSlots::new(2);
        let plain = serve(
            socket,
            Box::new(Peer::plain(peer)),
            shared.clone(),
            slots.try_take().unwrap(),
        );
        let plain = std::mem::size_of_val(&plain);
        let (socket, peer) = (TcpStream::connect(addr).await.unwrap(), addr);
        let transport = Arc::new(Transport {
            tls: None,
            websocket: true,
        });
        let upgraded = serve_upgraded(socket, peer, transport, shared, slots.try_take().unwrap());
        let upgraded = std::mem::size_of_val(&upgraded);
        eprintln!("a plain connection's task: {plain} bytes; TLS / WebSocket: {upgraded}");
        assert!(
            plain < 1100,
            "a plain connection's future grew to {plain} bytes"
        );
        assert!(
            upgraded < 1500,
            "an upgraded connection's future grew to {upgraded} bytes"
        );
    }
}
