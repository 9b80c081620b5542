//! One bridge's task: its local side is a client of the router (user and
//! client id `bridge:<name>`, a persistent session consuming the bridge's
//! buffer, the work queue `bridge-<name>`), its remote side a TCP link driven
//! by the sans-I/O `Client`. A local delivery is acknowledged to the router
//! only when the remote acknowledged it (a remote refusal, v5 >= 0x80, goes
//! back as a nack: the queue retries it and, after `max_deliveries`,
//! dead-letters it). While the link is down nothing is read from the buffer:
//! what waits stays on disk, and what the link held is re-sent when it is back.
//! Reconnects back off exponentially (100 ms to 30 s) with jitter.

use super::client::{Client, ClientConfig, Event};
use super::origin;
use super::status::BridgeStatus;
use super::topics::{self, TopicMap};
use crate::config::BridgeConfig;
use crate::outbox::OutboxReceiver;
use crate::protocol::{
    self, PacketId, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions,
};
use crate::router::{ConnHandle, ConnectRequest, DisconnectKind, RouterMsg};
use crate::session::{ClientId, Outgoing, ReplyKind};
use crate::topic::TopicLimits;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The user property an imported message carries: a bridge never sends back
/// out what it brought in (no loop when both sides bridge the same topics,
/// also over 3.1.1, which has no No Local).
pub const IMPORTED_BY: &str = "tern-bridge";
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest packet accepted from the remote.
const MAX_PACKET: u32 = 16 * 1024 * 1024;

/// What a bridge task needs from the broker.
pub struct LinkContext {
    pub router: mpsc::Sender<RouterMsg>,
    /// Cancelled at shutdown, or when a reload stops this bridge.
    pub shutdown: CancellationToken,
    /// The local connection id of this bridge (outside the listeners' range).
    pub conn_id: u64,
    pub topic_limits: TopicLimits,
    /// What the link reports (the admin endpoint reads it).
    pub status: std::sync::Arc<super::status::BridgeStatus>,
    /// This broker's id (`origin`).
    pub node_id: std::sync::Arc<str>,
}

/// A delay of about `d` (75% to 125%), so a fleet of gateways does not
/// reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let frac = 0.75 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(frac)
}

/// The local side: attach to the router and consume the buffer.
async fn attach(b: &BridgeConfig, ctx: &LinkContext, id: &ClientId) -> Option<OutboxReceiver> {
    let window = usize::from(b.max_inflight.max(1));
    let (reply_tx, reply_rx) = oneshot::channel();
    let request = ConnectRequest {
        client_id: id.clone(),
        clean_start: false,
        session_expiry: u32::MAX,
        will: None,
        username: Some(b.local_user().into()),
        by_password: false,
        addr: None,
        verified: true,
        remote_bridge: false,
        own_bridge: true,
        handle: ConnHandle {
            peer: None,
            keep_alive: 0,
            receive_maximum: 0,
            conn_id: ctx.conn_id,
            version: ProtocolVersion::V5,
            outbox: window + 16,
            max_packet_size: None,
            window,
            reply_reserve: 16,
        },
    };
    ctx.router
        .send(RouterMsg::Connect {
            request: Box::new(request),
            reply: reply_tx,
        })
        .await
        .ok()?;
    let rx = match reply_rx.await.ok()? {
        Ok(accepted) => accepted.outbox,
        Err(code) => {
            warn!(bridge = %b.name, "the router refused the bridge's local session: {code:?}");
            return None;
        }
    };
    let (sub_tx, sub_rx) = oneshot::channel();
    ctx.router
        .send(RouterMsg::Subscribe {
            client: id.clone(),
            conn_id: ctx.conn_id,
            subscribe: Subscribe {
                packet_id: PacketId::new(1)?,
                properties: SubscribeProperties::default(),
                filters: vec![SubscribeFilter {
                    filter: format!("$queue/{}", b.queue_name()),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                }],
            },
            reply: sub_tx,
        })
        .await
        .ok()?;
    let codes = sub_rx.await.ok()?;
    if codes.iter().any(|c| c.is_error()) {
        warn!(bridge = %b.name, "the bridge may not consume its buffer $queue/{} ({codes:?}): grant user {} read on it in the ACL", b.queue_name(), b.local_user());
        return None;
    }
    Some(rx)
}

/// Run bridge `b` until shutdown.
pub async fn run(b: BridgeConfig, ctx: LinkContext) {
    let id: ClientId = b.local_client_id().into();
    let maps = match b.maps(ctx.topic_limits) {
        Ok(m) => m,
        Err(e) => {
            warn!(bridge = %b.name, "not started: {e}");
            return;
        }
    };
    let version = b.version().unwrap_or(ProtocolVersion::V5);
    let password = match &b.password_env {
        Some(var) => match std::env::var(var) {
            Ok(p) => Some(Bytes::from(p.into_bytes())),
            Err(_) => {
                warn!(bridge = %b.name, "password_env {var} is not set: connecting without a password");
                None
            }
        },
        None => b.password.clone().map(|p| Bytes::from(p.into_bytes())),
    };
    let mut client = Client::new(ClientConfig {
        version,
        client_id: b.client_id(),
        username: b.username.clone(),
        password,
        keep_alive: b.keepalive,
        clean_start: b.clean_start,
        session_expiry: b.session_expiry,
        max_inflight: b.max_inflight,
        connect_timeout: Duration::from_secs(10),
    });
    let tls = match &b.tls {
        None => None,
        Some(t) => {
            let cert_key = t.cert.as_deref().zip(t.key.as_deref());
            let config = match crate::tls::client_config(
                t.ca.as_deref(),
                cert_key,
                &t.alpn,
                t.insecure_skip_verify,
            ) {
                Ok(c) => c,
                Err(e) => {
                    warn!(bridge = %b.name, "not started: TLS: {e}");
                    return;
                }
            };
            if t.insecure_skip_verify {
                warn!(bridge = %b.name, "tls.insecure_skip_verify: the remote's certificate is NOT checked");
            }
            let host = b
                .address
                .rsplit_once(':')
                .map_or(b.address.as_str(), |(h, _)| h);
            let name = t
                .server_name
                .clone()
                .unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
            let Ok(name) = rustls_pki_types::ServerName::try_from(name.clone()) else {
                warn!(bridge = %b.name, "not started: TLS server name {name:?} is not valid");
                return;
            };
            Some((tokio_rustls::TlsConnector::from(config), name))
        }
    };
    let Some(mut outbox) = attach(&b, &ctx, &id).await else {
        return;
    };
    let mut link = Link {
        b: &b,
        ctx: &ctx,
        id: &id,
        maps: &maps,
        version,
        waiting: VecDeque::new(),
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let stream = tokio::select! {
            s = TcpStream::connect(&b.address) => s,
            _ = ctx.shutdown.cancelled() => break,
            _ = outbox.kicked() => break,
        };
        let served = match stream {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                match &tls {
                    None => Some(link.serve(s, &mut client, &mut outbox).await),
                    Some((connector, name)) => match connector.connect(name.clone(), s).await {
                        Ok(s) => Some(link.serve(s, &mut client, &mut outbox).await),
                        Err(e) => {
                            warn!(bridge = %b.name, address = %b.address, "TLS handshake failed: {e}; retrying in about {backoff:?}");
                            ctx.status.set_error(format!("TLS handshake failed: {e}"));
                            None
                        }
                    },
                }
            }
            Err(e) => {
                warn!(bridge = %b.name, address = %b.address, "cannot connect: {e}; retrying in about {backoff:?}");
                ctx.status.set_error(format!("cannot connect: {e}"));
                None
            }
        };
        ctx.status.set_connected(false);
        link_up(&b, &ctx, false).await;
        match served {
            Some(Served::Stop) => break,
            Some(Served::Lost { was_up: true }) => backoff = BACKOFF_MIN,
            _ => {}
        }
        client.link_lost();
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff)) => {}
            _ = ctx.shutdown.cancelled() => break,
            _ = outbox.kicked() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    // A bridge a reload removed ends its local session: nobody consumes its
    // buffer then, which stays until purged or the bridge comes back.
    let _ = ctx
        .router
        .send(RouterMsg::Disconnected {
            client: id.clone(),
            conn_id: ctx.conn_id,
            kind: DisconnectKind::Normal,
            session_expiry: ctx.status.is_removed().then_some(0),
        })
        .await;
}

/// Tell the buffer whether the link is up: without `buffer_qos0` it takes
/// QoS 0 messages only then (it is declared closed).
async fn link_up(b: &BridgeConfig, ctx: &LinkContext, up: bool) {
    if b.buffer_qos0 {
        return;
    }
    let gate = Some(up);
    let _ = ctx
        .router
        .send(RouterMsg::Qos0Gate {
            queue: b.queue_name(),
            gate,
        })
        .await;
}

enum Served {
    /// Shutdown, or the router closed the local side.
    Stop,
    /// The link ended; `was_up`: it got as far as CONNACK.
    Lost { was_up: bool },
}

struct Link<'a> {
    b: &'a BridgeConfig,
    ctx: &'a LinkContext,
    id: &'a ClientId,
    maps: &'a [TopicMap],
    version: ProtocolVersion,
    /// Local deliveries taken from the buffer that the client had no window
    /// for yet, in order, with their local packet ids.
    waiting: VecDeque<(PacketId, Publish)>,
}

impl Link<'_> {
    /// Serve one TCP link until it ends.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        client: &mut Client,
        outbox: &mut OutboxReceiver,
    ) -> Served {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut rbuf = BytesMut::with_capacity(8 * 1024);
        let mut wbuf = BytesMut::new();
        let mut was_up = false;
        client.connect(Instant::now());
        loop {
            // Act on what the client decided, then write what it wants sent.
            while let Some(e) = client.poll_event() {
                match e {
                    Event::Connected { session_present } => {
                        was_up = true;
                        // The buffer first: once the link says it is up, QoS
                        // 0 published after that goes out.
                        link_up(self.b, self.ctx, true).await;
                        self.ctx.status.set_connected(true);
                        info!(bridge = %self.b.name, address = %self.b.address, session_present, "bridge connected");
                        // Incoming mappings: subscribed at every link (a kept
                        // session has them already; subscribing again is
                        // harmless). v5: No Local and Retain As Published, so
                        // what we send is not sent back and retain flags hold.
                        let v5 = self.version.is_v5();
                        let filters: Vec<SubscribeFilter> = self
                            .maps
                            .iter()
                            .filter(|m| m.direction.incoming())
                            .map(|m| SubscribeFilter {
                                filter: m.remote_filter(),
                                options: SubscriptionOptions {
                                    qos: m.qos,
                                    no_local: v5,
                                    retain_as_published: v5,
                                    ..Default::default()
                                },
                            })
                            .collect();
                        client.subscribe(Instant::now(), filters);
                    }
                    Event::Acked { tag, reason } => {
                        let Some(pid) = u16::try_from(tag).ok().and_then(PacketId::new) else {
                            continue;
                        };
                        if reason.is_error() {
                            BridgeStatus::count(&self.ctx.status.refused);
                            warn!(bridge = %self.b.name, code = reason.0, "the remote refused a message: it is retried, then dead-lettered");
                        } else {
                            BridgeStatus::count(&self.ctx.status.forwarded);
                        }
                        if !self.ack_local(pid, reason).await {
                            return Served::Stop;
                        }
                    }
                    Event::Received(p) => {
                        BridgeStatus::count(&self.ctx.status.received);
                        if !self.import(p, client).await {
                            return Served::Stop;
                        }
                    }
                    Event::Released(pid) => {
                        let rel = RouterMsg::PubRel {
                            client: self.id.clone(),
                            conn_id: self.ctx.conn_id,
                            packet_id: pid,
                        };
                        if self.ctx.router.send(rel).await.is_err() {
                            return Served::Stop;
                        }
                    }
                    Event::Subscribed(codes) => {
                        if codes.iter().any(|c| c.is_error()) {
                            warn!(bridge = %self.b.name, ?codes, "the remote refused some of the bridge's subscriptions");
                        }
                    }
                    Event::Refused(code) => {
                        warn!(bridge = %self.b.name, code = code.0, "the remote refused the link");
                        self.ctx
                            .status
                            .set_error(format!("the remote refused the link: 0x{:02x}", code.0));
                        return Served::Lost { was_up };
                    }
                    Event::Dead(why) => {
                        warn!(bridge = %self.b.name, "link lost: {why}");
                        self.ctx.status.set_error(format!("link lost: {why}"));
                        return Served::Lost { was_up };
                    }
                }
            }
            let now = Instant::now();
            while client.has_room() {
                let Some((pid, p)) = self.waiting.pop_front() else {
                    break;
                };
                if !client.publish(now, u64::from(pid.get()), p.clone()) {
                    self.waiting.push_front((pid, p));
                    break;
                }
            }
            while let Some(p) = client.poll_transmit() {
                if let Err(e) = protocol::encode(&p, self.version, &mut wbuf) {
                    warn!(bridge = %self.b.name, "cannot encode a packet for the remote: {e}");
                }
            }
            if !wbuf.is_empty() {
                if let Err(e) = wr.write_all(&wbuf).await {
                    warn!(bridge = %self.b.name, "link lost: {e}");
                    return Served::Lost { was_up };
                }
                wbuf.clear();
            }
            if client.poll_event_pending() {
                continue;
            }
            let deadline = client.poll_timeout();
            let take = client.is_up() && self.waiting.is_empty();
            tokio::select! {
                n = rd.read_buf(&mut rbuf) => {
                    match n {
                        Ok(0) | Err(_) => {
                            warn!(bridge = %self.b.name, "link closed by the remote");
                            return Served::Lost { was_up };
                        }
                        Ok(_) => loop {
                            match protocol::decode(&mut rbuf, Some(self.version), MAX_PACKET) {
                                Ok(Some(p)) => client.handle(Instant::now(), p),
                                Ok(None) => break,
                                Err(e) => {
                                    warn!(bridge = %self.b.name, "malformed packet from the remote: {e}");
                                    return Served::Lost { was_up };
                                }
                            }
                        },
                    }
                }
                item = outbox.recv(), if take => {
                    match item {
                        Some(item) => {
                            self.take(item, client).await;
                            // Take what else is there at once: one write for
                            // the batch, not one per message.
                            while self.waiting.is_empty() && client.has_room() {
                                let Some(item) = outbox.try_recv() else {
                                    break;
                                };
                                self.take(item, client).await;
                            }
                        }
                        None => return Served::Stop,
                    }
                }
                _ = sleep_until(deadline) => client.handle_timeout(Instant::now()),
                _ = outbox.kicked() => return self.goodbye(client, &mut wr).await,
                _ = self.ctx.shutdown.cancelled() => return self.goodbye(client, &mut wr).await,
            }
        }
    }

    /// The broker stops (or the router closed the local side): DISCONNECT
    /// the remote politely.
    async fn goodbye<W: AsyncWrite + Unpin>(&self, client: &mut Client, wr: &mut W) -> Served {
        client.disconnect(Instant::now());
        if let Some(p) = client.poll_transmit() {
            let mut b = BytesMut::new();
            if protocol::encode(&p, self.version, &mut b).is_ok() {
                let _ = wr.write_all(&b).await;
            }
        }
        Served::Stop
    }

    /// A message from the remote for an incoming mapping: into the local
    /// router under its local topic, with the remote's packet id (a QoS 2
    /// re-send after a lost link is then recognised locally as the same
    /// message [MQTT-4.3.3-10]). The remote's acknowledgement waits for the
    /// router's (`answered`). False when the router is gone.
    async fn import(&mut self, p: Publish, client: &mut Client) -> bool {
        let Some((topic, _)) = topics::incoming(self.maps, &p.topic, self.ctx.topic_limits) else {
            // Not ours (a subscription of an older configuration): taken and
            // dropped, or the remote would send it for ever.
            warn!(bridge = %self.b.name, topic = %p.topic, "a message for no incoming mapping: dropped (counted in unmapped)");
            BridgeStatus::count(&self.ctx.status.unmapped);
            if let Some(pid) = p.packet_id {
                client.ack_incoming(Instant::now(), pid, p.qos);
            }
            return true;
        };
        if origin::is_echo(&p.properties.user_properties, &self.ctx.node_id) {
            // A copy of a message that already passed through this broker
            // (a loop through other brokers' bridges): taken and dropped.
            BridgeStatus::count(&self.ctx.status.looped);
            if let Some(pid) = p.packet_id {
                client.ack_incoming(Instant::now(), pid, p.qos);
            }
            return true;
        }
        let mut props: Vec<(String, String)> = p
            .properties
            .user_properties
            .iter()
            .filter(|(k, _)| *k != IMPORTED_BY)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        props.push((IMPORTED_BY.to_owned(), self.b.name.clone()));
        if !origin::has_origin(&p.properties.user_properties) {
            props.push((origin::ORIGIN.to_owned(), self.ctx.node_id.to_string()));
        }
        let mut properties = p.properties.clone();
        properties.user_properties = props.into_iter().collect();
        // Per hop, and only server -> client [MQTT-3.3.4-6].
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let local = Publish {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic,
            packet_id: p.packet_id,
            properties,
            payload: p.payload,
        };
        self.ctx
            .router
            .send(RouterMsg::Publishes {
                client: self.id.clone(),
                conn_id: self.ctx.conn_id,
                publishes: vec![local],
            })
            .await
            .is_ok()
    }

    /// Finish local delivery `pid` with `reason` (>= 0x80: a nack). False
    /// when the router is gone.
    async fn ack_local(&self, pid: PacketId, reason: ReasonCode) -> bool {
        let ack = RouterMsg::PubAck {
            client: self.id.clone(),
            conn_id: self.ctx.conn_id,
            packet_id: pid,
            reason,
        };
        self.ctx.router.send(ack).await.is_ok()
    }

    /// The router answered an imported message: the remote gets its
    /// acknowledgement now (PUBACK; PUBREC; PUBCOMP once released locally).
    fn answered(
        &mut self,
        kind: ReplyKind,
        pid: PacketId,
        reason: ReasonCode,
        client: &mut Client,
    ) {
        if reason.is_error() {
            warn!(bridge = %self.b.name, code = reason.0, "an incoming message was refused locally (ACL, quota): acknowledged to the remote and dropped");
        }
        let now = Instant::now();
        match kind {
            ReplyKind::PubAck => client.ack_incoming(now, pid, QoS::AtLeastOnce),
            ReplyKind::PubRec => client.ack_incoming(now, pid, QoS::ExactlyOnce),
            ReplyKind::PubComp => client.complete_incoming(now, pid),
            ReplyKind::PubRel => {}
        }
    }

    /// An item from the router: an answer to an imported message, or a
    /// delivery from the buffer, mapped to its remote topic and published (or
    /// kept in order until the window has room).
    async fn take(&mut self, item: Outgoing, client: &mut Client) {
        let (delivery, pid) = match item {
            Outgoing::Publish {
                delivery,
                packet_id: Some(pid),
                ..
            } => (delivery, pid),
            Outgoing::Reply(r) => {
                self.answered(r.kind, r.packet_id, r.reason, client);
                return;
            }
            _ => return,
        };
        let m = &delivery.message;
        if crate::router::came_through_a_bridge(m) {
            // Brought in by a bridge (this one, another of ours, or another
            // broker's): never sent out through one (no loop).
            self.ack_local(pid, ReasonCode::SUCCESS).await;
            return;
        }
        let Some((topic, map)) = topics::outgoing(self.maps, &m.topic, self.ctx.topic_limits)
        else {
            // Bound by a mapping's filter, so it maps; if it ever does not,
            // the queue retries it and dead-letters it, never drops it.
            self.ack_local(pid, ReasonCode::TOPIC_NAME_INVALID).await;
            return;
        };
        let mut properties = m.properties.clone();
        if !self.version.is_v5() {
            properties = Default::default();
        } else if !origin::has_origin(&properties.user_properties) {
            // Stamped with where it passed first: if it comes back, it is
            // known (`origin`).
            // Straight into the encoded form: one allocation per message.
            let mut b = crate::protocol::UserPropertiesBuilder::default();
            for (k, v) in properties.user_properties.iter() {
                b.push(k, v);
            }
            b.push(origin::ORIGIN, &self.ctx.node_id);
            properties.user_properties = b.build();
        }
        // QoS 1 and 2 go out at the mapping's QoS: the buffer is on disk, so
        // even a QoS 1 publish reaches the remote exactly once on a QoS 2
        // mapping. QoS 0 stays at most once.
        let qos = if m.qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            map.qos
        };
        let p = Publish {
            dup: false,
            qos,
            retain: delivery.retain,
            topic,
            packet_id: None,
            properties,
            payload: m.payload.clone(),
        };
        if self.waiting.is_empty()
            && client.publish(Instant::now(), u64::from(pid.get()), p.clone())
        {
            return;
        }
        self.waiting.push_back((pid, p));
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
