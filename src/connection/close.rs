//! How a connection ends: the `Close` its loop returns, the report to the router
//! (also when the task unwinds), the last packet (a v5 DISCONNECT or a refusing
//! CONNACK), and a close that lets that packet reach the client, all bounded in
//! time.
//!
//! Owns no state of its own; it writes what `Conn` still holds and drops it.

use super::{Conn, Shared};
use crate::protocol::{
    self, ConnAck, ConnAckProperties, DecodeError, Disconnect, DisconnectProperties, Packet,
    ProtocolVersion, ReasonCode,
};
use crate::router::{DisconnectKind, RouterMsg};
use crate::session::ClientId;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info};

/// How the main loop ends.
pub(super) struct Close {
    /// Sent in a v5 DISCONNECT when set [MQTT-4.13.1-1].
    pub reason: Option<ReasonCode>,
    pub reason_string: Option<&'static str>,
    pub kind: DisconnectKind,
    pub session_expiry: Option<u32>,
}

impl Close {
    pub fn error(reason: ReasonCode, why: &'static str) -> Close {
        Close {
            reason: Some(reason),
            reason_string: Some(why),
            kind: DisconnectKind::WithWill,
            session_expiry: None,
        }
    }
    pub fn silent() -> Close {
        Close {
            reason: None,
            reason_string: None,
            kind: DisconnectKind::WithWill,
            session_expiry: None,
        }
    }
}

impl Close {
    /// The client's DISCONNECT. `expiry_was_zero`: the session expiry of its
    /// CONNECT was 0; `max_expiry` caps a new one.
    pub fn by_client(d: &Disconnect, expiry_was_zero: bool, max_expiry: Duration) -> Close {
        let mut session_expiry = d.properties.session_expiry_interval;
        if let Some(e) = session_expiry {
            if expiry_was_zero && e != 0 {
                // [MQTT-3.14.2-2] cannot go from zero to non-zero.
                return Close::error(
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry changed from zero",
                );
            }
            let max = u32::try_from(max_expiry.as_secs()).unwrap_or(u32::MAX);
            session_expiry = Some(e.min(max));
        }
        let kind = if d.reason_code == ReasonCode::NORMAL_DISCONNECTION {
            // [MQTT-3.14.4-3] normal disconnection discards the Will.
            DisconnectKind::Normal
        } else {
            DisconnectKind::WithWill
        };
        Close {
            reason: None,
            reason_string: None,
            kind,
            session_expiry,
        }
    }
}

impl From<DecodeError> for Close {
    fn from(e: DecodeError) -> Close {
        let why = match e {
            DecodeError::Malformed(w)
            | DecodeError::Protocol(w)
            | DecodeError::TopicNameInvalid(w)
            | DecodeError::PropertiesTooLarge(w)
            | DecodeError::TopicAliasInvalid(w) => w,
            DecodeError::TooLarge { .. } => "packet exceeds the maximum packet size",
            DecodeError::UnsupportedVersion(_) => "unsupported protocol version",
        };
        Close::error(e.reason_code(), why)
    }
}

/// Tells the router that a registered connection is gone even if its task unwinds
/// (a bug: nothing a peer sends may panic, but if it happens tokio ends only this
/// task), so the session does not stay "online" forever and its Will is handled.
/// Best effort: `try_send`, as `Drop` cannot wait.
pub(super) struct Registration {
    pub router: mpsc::Sender<RouterMsg>,
    pub client: ClientId,
    pub conn_id: u64,
    pub armed: bool,
}

impl Registration {
    /// The registration of connection `conn_id` of `client`, armed: dropped
    /// so, it reports the connection's end to the router.
    pub(super) fn armed(shared: &Shared, client: &ClientId, conn_id: u64) -> Registration {
        Registration {
            router: shared.router.clone(),
            client: client.clone(),
            conn_id,
            armed: true,
        }
    }

    /// The connection reports its end itself.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.router.try_send(RouterMsg::Disconnected {
                client: self.client.clone(),
                conn_id: self.conn_id,
                kind: DisconnectKind::WithWill,
                session_expiry: None,
            });
        }
    }
}

/// After the main loop: tell the router, send a v5 DISCONNECT if there is a reason,
/// flush what is left (bounded), close.
pub(super) async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut conn: Conn,
    close: Close,
    conn_id: u64,
    shared: &Shared,
) {
    // Tell the router first: a client reconnecting at once must find its old
    // connection gone, not "taken over" (which would publish its Will after a
    // normal DISCONNECT).
    let _ = shared
        .router
        .send(RouterMsg::Disconnected {
            client: conn.client_id.clone(),
            conn_id,
            kind: close.kind,
            session_expiry: close.session_expiry,
        })
        .await;
    if let (true, Some(reason)) = (conn.version.is_v5(), close.reason) {
        let d = Packet::Disconnect(Disconnect {
            reason_code: reason,
            properties: DisconnectProperties {
                reason_string: close.reason_string.map(str::to_string),
                ..Default::default()
            },
        });
        let _ = protocol::encode(&d, conn.version, &mut conn.wbuf);
    }
    if !conn.wbuf.is_empty() {
        let _ = bounded(stream.write_all(&conn.wbuf)).await;
    }
    conn.wbuf = BytesMut::new();
    conn.rbuf = BytesMut::new();
    graceful_close(&mut stream).await;
    let client = &*conn.client_id;
    match close.reason {
        Some(r) if r.is_error() => {
            info!(id = conn_id, client, reason = %r, why = close.reason_string.unwrap_or(""), "closed")
        }
        _ => info!(id = conn_id, client, "disconnected"),
    }
}

/// Write a refusing CONNACK and give up.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: ProtocolVersion,
    code: ReasonCode,
    why: &str,
) {
    debug!(reason = %code, why, "CONNECT refused");
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties: ConnAckProperties {
            reason_string: Some(why.to_string()),
            ..Default::default()
        },
    });
    let mut w = BytesMut::new();
    if protocol::encode(&ack, version, &mut w).is_ok() {
        let _ = bounded(stream.write_all(&w)).await;
    }
}

/// How long a closing connection may take to hand over its last bytes.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a closing connection reads and discards what the peer still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Close after the last packet (a DISCONNECT or refusing CONNACK) was written: shut
/// down our sending side, then read and discard until the peer closes, for at most
/// [`LINGER`]. Closing a socket with unread input makes the kernel send a reset,
/// which can destroy our last packet before the client reads it: a client still
/// sending when we close would never learn the reason.
pub(super) async fn graceful_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    if bounded(stream.shutdown()).await.is_none() {
        return;
    }
    let mut sink = vec![0u8; 2048];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Bound a final write or shutdown: TLS and WebSocket shutdowns flush first, and a
/// peer that does not read must not keep the task (and its slot) forever.
pub(super) async fn bounded<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(CLOSE_WAIT, f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection task that unwinds still reports its end to the router.
    #[test]
    fn registration_reports_an_unwound_connection() {
        let (tx, mut rx) = mpsc::channel(4);
        let r = Registration {
            router: tx.clone(),
            client: "c".into(),
            conn_id: 9,
            armed: true,
        };
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _r = r;
            panic!("a bug in a connection task");
        }));
        assert!(unwound.is_err());
        match rx.try_recv() {
            Ok(RouterMsg::Disconnected { conn_id, kind, .. }) => {
                assert_eq!(conn_id, 9);
                assert_eq!(kind, DisconnectKind::WithWill);
            }
            _ => panic!("the router was not told"),
        }
        // Disarmed on the normal path: `finish` reports instead.
        let mut quiet = Registration {
            router: tx,
            client: "c".into(),
            conn_id: 10,
            armed: true,
        };
        quiet.armed = false;
        drop(quiet);
        assert!(rx.try_recv().is_err());
    }

    /// A client's DISCONNECT: the Will goes unless it is a normal one; a new
    /// session expiry is capped, and cannot be set when the CONNECT's was 0.
    #[test]
    fn client_disconnect_sets_kind_and_expiry() {
        let d = |reason_code, expiry| Disconnect {
            reason_code,
            properties: DisconnectProperties {
                session_expiry_interval: expiry,
                ..Default::default()
            },
        };
        let max = Duration::from_secs(100);
        let c = Close::by_client(&d(ReasonCode::NORMAL_DISCONNECTION, None), true, max);
        assert_eq!(
            (c.reason, c.kind, c.session_expiry),
            (None, DisconnectKind::Normal, None)
        );
        let with_will = ReasonCode(0x04);
        let c = Close::by_client(&d(with_will, Some(500)), false, max);
        assert_eq!(
            (c.kind, c.session_expiry),
            (DisconnectKind::WithWill, Some(100))
        );
        let c = Close::by_client(&d(ReasonCode::NORMAL_DISCONNECTION, Some(0)), true, max);
        assert_eq!(c.session_expiry, Some(0));
        let c = Close::by_client(&d(ReasonCode::NORMAL_DISCONNECTION, Some(5)), true, max);
        assert_eq!(
            (c.reason, c.reason_string),
            (
                Some(ReasonCode::PROTOCOL_ERROR),
                Some("session expiry changed from zero")
            )
        );
    }
}
