//! MQTT over WebSocket (MQTT 5.0 section 6, 3.1.1 section 6): the server handshake
//! with subprotocol `mqtt`, and a byte-stream view of the WebSocket so the
//! connection task (`connection::serve`) runs on it unchanged.
//!
//! Owns framing only. MQTT packets are carried in binary messages; one packet may
//! span messages and one message may hold several packets [MQTT-6.0.0-2], so
//! reads simply concatenate message payloads. Pings are answered by tungstenite.

use crate::connection::Shared;
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Bytes a WebSocket client may send before its CONNECT has been read without
/// being charged to the pre-login budget: the HTTP upgrade request and an
/// ordinary CONNECT fit.
const PRE_LOGIN_FREE: usize = 4096;

/// What a WebSocket client sent before its CONNECT was read, charged to the
/// connections' shared pre-login budget (`unauthenticated_buffer_bytes`) like a
/// TCP client's CONNECT buffer. tungstenite collects a message before handing it
/// on, up to the message size limit (`max_packet_size`): without this, 400
/// half-sent 1 MB messages held 400 MB before anyone logged in. The connection
/// opens the gate once it has its CONNECT; from then on nothing is counted.
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

/// The socket under tungstenite, counting what it reads until the gate opens.
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The subprotocols we answer to, in order of preference: `mqtt` (MQTT 3.1.1 and
/// 5.0, [MQTT-6.0.0-3]) and `mqttv3.1` (older clients).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Which subprotocol to answer for a client's `Sec-WebSocket-Protocol` offer.
/// `Ok(None)`: the client offered none (accepted; some embedded clients omit it).
/// `Err`: it offered only others.
fn choose_subprotocol(offer: Option<&str>) -> Result<Option<&'static str>, ()> {
    let Some(offer) = offer else {
        return Ok(None);
    };
    let offered: Vec<&str> = offer.split(',').map(str::trim).collect();
    SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        .map(|p| Some(*p))
        .ok_or(())
}

/// Accept the WebSocket upgrade on `stream` (any path). `max_packet_size` bounds
/// the messages and frames we take.
pub async fn accept<S>(stream: S, max_packet_size: u32) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offer = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        match choose_subprotocol(offer) {
            Ok(Some(p)) => {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(p));
                Ok(resp)
            }
            Ok(None) => Ok(resp),
            Err(()) => {
                let mut e = ErrorResponse::new(Some(
                    "MQTT over WebSocket needs the subprotocol \"mqtt\"".into(),
                ));
                *e.status_mut() = StatusCode::BAD_REQUEST;
                Err(e)
            }
        }
    };
    // A message may hold a whole packet plus a little more (some clients pack
    // a PUBACK behind a PUBLISH); 64 KiB of slack keeps small limits usable.
    let max_message = (max_packet_size as usize).saturating_add(64 * 1024);
    let config = WebSocketConfig::default()
        // The read buffer is allocated up front and kept for the connection's
        // life (the default is 128 KiB). 1 KiB: an idle WebSocket connection
        // cost 8.2 KB with 4 KiB here (issue 15); a larger message still gets
        // room for its whole length, read at most 1 KiB per call.
        .read_buffer_size(1024)
        // The connection already batches its writes: send each at once.
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsStream {
        inner: ws,
        pending: Bytes::new(),
    })
}

/// A WebSocket seen as a byte stream. Writes become one binary message each;
/// `flush` (which the connection calls whenever its buffer empties) drives them
/// out.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The rest of the last binary message not yet read.
    pending: Bytes,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                // End of stream (or after a Close): EOF.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(Message::Binary(b))) => self.pending = b,
                // [MQTT-6.0.0-1] MQTT travels in binary messages only: close.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message: MQTT needs binary",
                    )))
                }
                // Ping (answered by tungstenite), Pong: nothing for MQTT.
                Some(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // poll_ready first sends whatever an earlier message left unsent, so at
        // most one message waits in tungstenite's buffer.
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sends a Close frame and flushes.
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_choice() {
        assert_eq!(choose_subprotocol(None), Ok(None));
        assert_eq!(choose_subprotocol(Some("mqtt")), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(Some("mqttv3.1")), Ok(Some("mqttv3.1")));
        assert_eq!(
            choose_subprotocol(Some("mqttv3.1, mqtt")),
            Ok(Some("mqtt")),
            "mqtt is preferred"
        );
        assert_eq!(choose_subprotocol(Some(" MQTT ")), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(Some("chat, wamp")), Err(()));
    }
}
