//! MQTT over WebSocket (MQTT 5.0 section 6, 3.1.1 section 6): the server handshake
//! with subprotocol `mqtt`, and a byte-stream view of the WebSocket so the
//! connection task (`connection::serve`) runs on it unchanged.
//!
//! Owns the stream; the handshake is in `ws/handshake.rs`, the framing in
//! `ws/frame.rs`. MQTT packets are carried in binary messages; one packet may
//! span messages and one message may hold several packets [MQTT-6.0.0-2], so
//! reads are the messages' payloads, unmasked in the reader's own buffer, and
//! each write is one binary message. Pings are answered with pongs.

mod frame;
mod handshake;

use crate::connection::Shared;
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a WebSocket client may send before its CONNECT has been read without
/// being charged to the pre-login budget: the HTTP upgrade request and an
/// ordinary CONNECT fit.
const PRE_LOGIN_FREE: usize = 4096;

/// What a WebSocket client sent before its CONNECT was read, charged to the
/// connections' shared pre-login budget (`unauthenticated_buffer_bytes`) like a
/// TCP client's CONNECT buffer: the upgrade request and the frames around the
/// CONNECT. (The framing itself buffers no message; with tungstenite, which
/// did, 400 half-sent 1 MB messages once held 400 MB before anyone logged in.)
/// The connection opens the gate once it has its CONNECT; from then on nothing
/// is counted.
pub struct PreLoginGate {
    shared: Arc<Shared>,
    /// Bytes read from the socket so far (before the gate opened).
    read: AtomicUsize,
    /// Bytes of `read` charged to the budget (given back when the gate opens or
    /// the connection ends).
    charged: AtomicUsize,
    open: AtomicBool,
}

impl std::fmt::Debug for PreLoginGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreLoginGate")
            .field("read", &self.read.load(Ordering::Relaxed))
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl PreLoginGate {
    pub fn new(shared: Arc<Shared>) -> Arc<PreLoginGate> {
        Arc::new(PreLoginGate {
            shared,
            read: AtomicUsize::new(0),
            charged: AtomicUsize::new(0),
            open: AtomicBool::new(false),
        })
    }

    /// The CONNECT has been read: stop counting, give the charge back.
    pub fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
        self.give_back();
    }

    fn give_back(&self) {
        let n = self.charged.swap(0, Ordering::Relaxed);
        self.shared.pre_login.give_back(n);
    }

    /// Count `n` more bytes read before the CONNECT; Err when they pass the
    /// first-packet limit or the shared budget.
    fn count(&self, n: usize) -> io::Result<()> {
        if self.open.load(Ordering::Relaxed) {
            return Ok(());
        }
        let cfg = self.shared.config.get();
        let limits = &cfg.limits;
        let read = self.read.fetch_add(n, Ordering::Relaxed) + n;
        // Framing and the upgrade request on top of the largest CONNECT.
        let most = (limits.max_connect_packet_size as usize).saturating_add(64 * 1024);
        if read > most {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than max_connect_packet_size before CONNECT",
            ));
        }
        let owed = read
            .saturating_sub(PRE_LOGIN_FREE)
            .saturating_sub(self.charged.load(Ordering::Relaxed));
        if owed > 0 {
            if !self
                .shared
                .pre_login
                .try_take(owed, limits.unauthenticated_buffer_bytes)
            {
                self.shared
                    .metrics
                    .connects_over_budget
                    .fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unauthenticated_buffer_bytes reached",
                ));
            }
            self.charged.fetch_add(owed, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Drop for PreLoginGate {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The socket under the WebSocket, counting what it reads until the gate opens.
pub struct Gated<S> {
    inner: S,
    gate: Arc<PreLoginGate>,
}

impl<S> Gated<S> {
    pub fn new(inner: S, gate: Arc<PreLoginGate>) -> Gated<S> {
        Gated { inner, gate }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        Poll::Ready(self.gate.count(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    // A message's header and payload go in one write.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept the WebSocket upgrade on `stream` (any path). `max_packet_size` bounds
/// the frames we take.
pub async fn accept<S>(mut stream: S, max_packet_size: u32) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let early = handshake::accept(&mut stream).await?;
    // A frame may hold a whole packet plus a little more (some clients pack a
    // PUBACK behind a PUBLISH); 64 KiB of slack keeps small limits usable.
    // Frames are not collected, so this bounds nothing in memory: it refuses
    // lengths no client of ours sends.
    let max_frame = u64::from(max_packet_size).saturating_add(64 * 1024);
    Ok(WsStream {
        inner: stream,
        state: Framing {
            unframer: frame::Unframer::new(max_frame),
            out: BytesMut::new(),
            early,
            close_sent: false,
        },
    })
}

/// A WebSocket seen as a byte stream. Each write is sent as one binary message
/// straight from the caller's buffer; only what the socket did not take is
/// copied, and it goes before anything else.
pub struct WsStream<S> {
    inner: S,
    state: Framing,
}

/// Everything of a WebSocket but its socket: what a hibernating connection
/// keeps of it (`Asleep`), whatever frame it is in.
pub struct Framing {
    unframer: frame::Unframer,
    /// Frames owed to the client and not yet written (the rest of a message,
    /// pongs, our Close). No allocation while empty.
    out: BytesMut,
    /// What the client sent behind its upgrade request, decoded first.
    early: Bytes,
    close_sent: bool,
}

/// A hibernating WebSocket over plain TCP: its socket, out of tokio's
/// reactor, and its framing. Boxed in the sleeper's room
/// (`connection/hibernate.rs`), which carries only the pointer.
pub struct Asleep {
    socket: std::net::TcpStream,
    framing: Framing,
}

impl Asleep {
    /// Its socket's fd, which the hibernation watches.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }
}

/// A WebSocket's socket when it is plain TCP: only such a socket leaves
/// tokio's reactor while its connection hibernates (under TLS the whole
/// stream is kept, `hibernate::Bed::Whole`).
pub trait PlainSocket {
    fn into_std(self) -> io::Result<std::net::TcpStream>;
    fn fd(&self) -> std::os::fd::RawFd;
}

impl PlainSocket for tokio::net::TcpStream {
    fn into_std(self) -> io::Result<std::net::TcpStream> {
        tokio::net::TcpStream::into_std(self)
    }

    fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

impl PlainSocket for Gated<tokio::net::TcpStream> {
    fn into_std(self) -> io::Result<std::net::TcpStream> {
        // The gate opened with the CONNECT: nothing is counted any more.
        self.inner.into_std()
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.inner.fd()
    }
}

impl<S> Gated<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S> WsStream<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Nothing owed to the client is left unwritten (a pong the socket did not
    /// take): the connection may hibernate. Asleep, nothing would send it.
    pub fn quiet(&self) -> bool {
        self.state.out.is_empty()
    }
}

/// Frames owed (pongs, the rest of a message) past which reading waits for
/// the socket to take them.
const OUT_HIGH_WATER: usize = 4 * 1024;

impl<S: PlainSocket> WsStream<S> {
    /// The socket out of tokio's reactor, with the framing to put back on it.
    pub fn into_asleep(self) -> io::Result<Box<Asleep>> {
        Ok(Box::new(Asleep {
            socket: self.inner.into_std()?,
            framing: self.state,
        }))
    }
}

/// A hibernated WebSocket back on its socket, in tokio's reactor again.
#[allow(clippy::boxed_local)] // It comes boxed from the sleeper's room.
pub fn wake(asleep: Box<Asleep>) -> io::Result<WsStream<tokio::net::TcpStream>> {
    let Asleep { socket, framing } = *asleep;
    Ok(WsStream {
        inner: tokio::net::TcpStream::from_std(socket)?,
        state: framing,
    })
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Write out what `out` holds; Ready(Ok) once it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.state.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.state.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.state.out.advance(n);
        }
        if self.state.out.capacity() > 0 {
            // Let the buffer go: an idle connection holds none.
            self.state.out = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Queue our Close (once).
    fn close(&mut self, code: u16) {
        if !self.state.close_sent {
            self.state.close_sent = true;
            frame::put_close(&mut self.state.out, code);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Pongs and a Close reply owed go out as soon as the socket takes them;
        // if it does not now, the next write, flush or read sends them. A
        // client that sends Pings but reads nothing must not make them pile
        // up: past OUT_HIGH_WATER, reading waits for the socket to take them.
        match this.poll_drain(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if this.state.out.len() >= OUT_HIGH_WATER => return Poll::Pending,
            _ => {}
        }
        loop {
            if this.state.unframer.closed() || buf.remaining() == 0 {
                // After the client's Close: end of stream.
                return Poll::Ready(Ok(()));
            }
            let start = buf.filled().len();
            if this.state.early.is_empty() {
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == start {
                    return Poll::Ready(Ok(())); // The socket's end.
                }
            } else {
                let n = this.state.early.len().min(buf.remaining());
                buf.put_slice(&this.state.early[..n]);
                this.state.early.advance(n);
            }
            let data = match this.state.unframer.decode(&mut buf.filled_mut()[start..]) {
                Ok(n) => n,
                Err(e) => {
                    buf.set_filled(start);
                    // The Close with the reason goes now, as far as the socket
                    // takes it: the caller may drop the stream on the error.
                    this.close(e.code);
                    let _ = this.poll_drain(cx);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e.to_string(),
                    )));
                }
            };
            buf.set_filled(start + data);
            let replies = this.state.unframer.take_replies();
            if let Some(payload) = replies.pong {
                frame::put_pong(&mut this.state.out, &payload);
            }
            if let Some(code) = replies.close {
                // RFC 6455 section 5.5.1: answer with a Close, echoing its code.
                this.close(code);
            }
            let mut stalled = false;
            if !this.state.out.is_empty() {
                match this.poll_drain(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => stalled = this.state.out.len() >= OUT_HIGH_WATER,
                    Poll::Ready(Ok(())) => {}
                }
                // Below may be TLS, which holds records until flushed.
                if let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if data > 0 {
                return Poll::Ready(Ok(()));
            }
            if stalled {
                // The drain's write registered the waker.
                return Poll::Pending;
            }
            // Only headers or control frames so far: read on.
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Frames stay whole and in order: what an earlier write left goes first.
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.state.close_sent {
            // Nothing may follow our Close (RFC 6455 section 5.5.1): the
            // connection is ending, what it still writes is dropped.
            return Poll::Ready(Ok(buf.len()));
        }
        let (h, hl) = frame::binary_header(buf.len());
        let parts = [io::IoSlice::new(&h[..hl]), io::IoSlice::new(buf)];
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &parts))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        // The message is ours now: keep what the socket did not take.
        if n < hl {
            this.state.out.extend_from_slice(&h[n..hl]);
            this.state.out.extend_from_slice(buf);
        } else if n - hl < buf.len() {
            this.state.out.extend_from_slice(&buf[n - hl..]);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A refused frame queued its own Close already (`close` sends one).
        self.close(frame::CLOSE_NORMAL);
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that sends Pings and reads nothing: once 4 KiB of Pongs wait
    /// for the socket, reading stops (its Pings stay in the socket, which
    /// fills, and its writes stall), so the Pongs held stay bounded.
    #[tokio::test]
    async fn pongs_the_client_does_not_read_pause_reading() {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let mut ws = WsStream {
            inner: server,
            state: Framing {
                unframer: frame::Unframer::new(1 << 20),
                out: BytesMut::new(),
                early: Bytes::new(),
                close_sent: false,
            },
        };
        let mut ping = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
        ping.extend(std::iter::repeat_n(b'p', 125));
        let writer = tokio::spawn(async move {
            let mut sent = 0;
            while sent < 5_000 && client.write_all(&ping).await.is_ok() {
                sent += 1;
            }
            (client, sent)
        });
        // One Ping per read (131 bytes each), so each one is answered.
        let mut buf = [0u8; 131];
        let read = tokio::time::timeout(std::time::Duration::from_millis(500), ws.read(&mut buf));
        assert!(read.await.is_err(), "a read returned while only Pings came");
        assert!(
            ws.state.out.len() < OUT_HIGH_WATER + 256,
            "{} bytes of Pongs held",
            ws.state.out.len()
        );
        assert!(!writer.is_finished(), "all 5,000 Pings were read");
        writer.abort();
    }
}
