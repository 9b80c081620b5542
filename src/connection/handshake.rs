//! The handshake after a good CONNECT: the negotiation (`negotiate.rs`), the
//! login, registering the session with the router, and the connection with its
//! CONNACK queued; or the refusing CONNACK.
//!
//! Runs once per connection, boxed by its caller so that its state is not kept
//! in the connection's future for the connection's life.

use super::close::refuse;
use super::negotiate::{negotiate, Refusal};
use super::{Conn, Shared};
use crate::login::{Login, Peer, Refused};
use crate::protocol::{ConnAck, Connect, Packet, ReasonCode};
use crate::router::{ConnHandle, ConnectAccepted, ConnectRequest, RouterMsg};
use std::sync::Arc;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tracing::{debug, info};

/// Negotiate the CONNECT, log in, register with the router, queue the CONNACK;
/// or refuse.
pub(super) async fn handshake<S: AsyncWrite + Unpin>(
    stream: &mut S,
    c: Connect,
    remote_bridge: bool,
    peer: &Peer,
    conn_id: u64,
    shared: &Arc<Shared>,
) -> Option<Conn> {
    let version = c.version;
    match admit(c, remote_bridge, peer, conn_id, shared).await {
        Ok(conn) => Some(conn),
        Err(r) => {
            refuse(stream, version, r.code, r.why).await;
            None
        }
    }
}

/// The handshake up to a connection with its CONNACK in the write buffer.
async fn admit(
    c: Connect,
    remote_bridge: bool,
    peer: &Peer,
    conn_id: u64,
    shared: &Arc<Shared>,
) -> Result<Conn, Refusal> {
    // The configuration as of this CONNECT: the connection keeps it for its
    // life (what CONNACK announces must hold), whatever a reload changes later.
    let cfg = shared.config.get();
    let lim = &cfg.limits;
    let deal = negotiate(&c, lim, cfg.topic_limits(), || random_suffix(conn_id))?;
    let login = log_in(&c, peer, shared)
        .await
        .map_err(|why| Refusal::login(c.version, why))?;
    // Replies we may owe at once: we stop reading at `receive_maximum` owed.
    let reply_reserve = usize::from(lim.receive_maximum) + 1;
    let request = ConnectRequest {
        client_id: deal.client_id.clone(),
        clean_start: c.clean_start,
        session_expiry: deal.session_expiry,
        // The Will payload is a slice of the CONNECT's read buffer (up to
        // max_connect_packet_size) and lives as long as the session: keep a copy
        // of its own bytes, not the whole buffer.
        will: c.will.map(|mut w| {
            w.payload = bytes::Bytes::copy_from_slice(&w.payload);
            w
        }),
        username: login.username.clone().map(Arc::from),
        by_password: login.by_password,
        addr: Some(peer.addr.ip()),
        verified: login.by_password || matches!(peer.cert, crate::login::CertIdentity::Name(_)),
        remote_bridge,
        own_bridge: false,
        handle: ConnHandle {
            peer: Some(peer.addr),
            keep_alive: deal.keep_alive,
            receive_maximum: lim.receive_maximum,
            conn_id,
            version: deal.version,
            // The router makes the outbox (see `ConnHandle`).
            outbox: usize::from(lim.max_inflight) + lim.outgoing_qos0_buffer + reply_reserve,
            max_packet_size: deal.client_max_packet,
            window: deal.window,
            reply_reserve,
        },
    };
    let accepted = register(shared, request).await?;
    let props = deal.connack_properties(lim);
    // The router's copy of the id: ours goes.
    let mut deal = deal;
    deal.client_id = accepted.client_id;
    let mut conn = Conn::new(deal, conn_id, accepted.outbox, shared, cfg.clone());
    conn.write_packet(&Packet::ConnAck(ConnAck {
        // [MQTT-3.2.2-2/3] session present only when a session was resumed.
        session_present: accepted.session_present,
        reason_code: ReasonCode::SUCCESS,
        properties: props,
    }));
    // Who connected, in the event itself: the connection's span is on at
    // debug level only (see `serve`).
    let user = login.username.as_deref().unwrap_or("");
    let client = &*conn.client_id;
    if remote_bridge {
        info!(peer = %peer.addr, id = conn_id, client, user, version = ?conn.version, "connected: another broker's bridge (Mosquitto's bridge flag)");
    } else {
        info!(peer = %peer.addr, id = conn_id, client, user, version = ?conn.version, "connected");
    }
    Ok(conn)
}

/// Who is this? (password file, certificate identity, allow_anonymous).
async fn log_in(c: &Connect, peer: &Peer, shared: &Shared) -> Result<Login, Refused> {
    // Bounded like the CONNECT itself: a throttled or queued login must not hold
    // its connection slot longer than `connect_timeout`.
    let logins = shared.logins.get();
    let check = logins.check(
        peer,
        c.username.as_deref(),
        c.password.as_ref(),
        &shared.metrics,
    );
    let login = tokio::time::timeout(shared.config.get().limits.connect_timeout, check)
        .await
        .unwrap_or_else(|_| {
            debug!("login not decided within connect_timeout");
            Err(Refused::NotAuthorized)
        })?;
    if let Some(u) = &login.username {
        tracing::Span::current().record("user", u.as_str());
    }
    Ok(login)
}

/// Hand the session to the router and wait for its answer.
async fn register(shared: &Shared, request: ConnectRequest) -> Result<ConnectAccepted, Refusal> {
    let (reply_tx, reply_rx) = oneshot::channel();
    let msg = RouterMsg::Connect {
        request: Box::new(request),
        reply: reply_tx,
    };
    if shared.router.send(msg).await.is_err() {
        return Err(Refusal::SHUTTING_DOWN);
    }
    match reply_rx.await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(code)) => Err(Refusal::by_router(code)),
        Err(_) => Err(Refusal::SHUTTING_DOWN),
    }
}

/// The suffix of an id we assign: random per process, mixed with the connection
/// id, so assigned ids do not repeat and cannot be guessed.
fn random_suffix(conn_id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(conn_id);
    h.finish()
}
