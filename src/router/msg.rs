//! What connections and the broker say to the router, and what it answers:
//! `RouterMsg`, the CONNECT request and its reply, and the handle through which
//! the router reaches a connection (outbox, kick, windows).

use crate::auth::Acl;
use crate::protocol::{
    LastWill, PacketId, ProtocolVersion, Publish, ReasonCode, Subscribe, Unsubscribe,
};
use crate::session::ClientId;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The handle through which the router reaches a connection's socket.
///
/// A connection describes itself with a `ConnHandle<usize>` in its CONNECT
/// request, `outbox` the capacity of its outbox, and the router makes the
/// outbox (`with_outbox`), as it makes the client's other long-lived records
/// (its `Client`, its id): one place makes what a client keeps for its whole
/// life, which is where keeping those apart from what a connection allocates
/// and lets go while it logs in must happen (issue 15: such records among
/// transient blocks leave holes under a page that are never returned; the
/// router's own thread did that, at a cost in throughput, and was dropped).
#[derive(Debug)]
pub struct ConnHandle<O = crate::outbox::OutboxSender> {
    pub conn_id: u64,
    pub version: ProtocolVersion,
    /// Also closes the connection from the router side (takeover, shutdown),
    /// with the reason to put in a v5 DISCONNECT (`OutboxSender::kick`). In
    /// a CONNECT request, the capacity to make it with.
    pub outbox: O,
    /// The client's Maximum Packet Size (v5), for skipping oversized deliveries
    /// [MQTT-3.1.2-25].
    pub max_packet_size: Option<u32>,
    /// How many QoS 1/2 deliveries may be unacknowledged: the client's Receive
    /// Maximum capped by `max_inflight`.
    pub window: usize,
    /// Outbox slots kept free for replies to the client's own packets; the
    /// connection stops reading before it could owe more than this.
    pub reply_reserve: usize,
    /// The peer's address (None: not a socket, e.g. a bridge's own session).
    /// Inline: boxed, it cost a 48-byte allocation to save 24 bytes here.
    pub peer: Option<std::net::SocketAddr>,
    /// The keep-alive agreed at CONNECT, seconds.
    pub keep_alive: u16,
    /// The Receive Maximum this connection was told in its CONNACK (inbound
    /// QoS 2 ids it may hold before PUBREL), which a reload does not change
    /// for it; 0: the router's current `receive_maximum` (a bridge's own
    /// session).
    pub receive_maximum: u16,
}

impl ConnHandle<usize> {
    /// The handle with its outbox made, and the outbox's receiving end for
    /// the connection.
    pub fn with_outbox(self) -> (ConnHandle, crate::outbox::OutboxReceiver) {
        let ConnHandle {
            conn_id,
            version,
            outbox,
            max_packet_size,
            window,
            reply_reserve,
            peer,
            keep_alive,
            receive_maximum,
        } = self;
        let (tx, rx) = crate::outbox::outbox(outbox);
        let handle = ConnHandle {
            conn_id,
            version,
            outbox: tx,
            max_packet_size,
            window,
            reply_reserve,
            peer,
            keep_alive,
            receive_maximum,
        };
        (handle, rx)
    }
}

impl ConnHandle {
    /// Outbox slots free for deliveries.
    pub(super) fn room(&self) -> usize {
        self.outbox.capacity().saturating_sub(self.reply_reserve)
    }

    /// Tell the connection to close with `reason`; it reports back as usual
    /// when it has gone.
    pub(super) fn close_with(&self, reason: ReasonCode) {
        self.outbox.kick(reason);
    }
}

pub struct ConnectRequest {
    pub client_id: ClientId,
    pub clean_start: bool,
    /// Seconds; already capped by `max_session_expiry`. u32::MAX means "never".
    pub session_expiry: u32,
    pub will: Option<LastWill>,
    /// Who the client logged in as (None: anonymous); the ACL's `user` and `%u`.
    pub username: Option<Arc<str>>,
    /// The login was checked against the password file.
    pub by_password: bool,
    /// The client's address, for the per-address cap on anonymous persistent
    /// sessions (None: not known, e.g. in tests).
    pub addr: Option<std::net::IpAddr>,
    /// The username was verified (password or certificate), not just claimed:
    /// only then do its sessions count against the user instead of the address.
    pub verified: bool,
    /// Another broker's bridge (Mosquitto's bridge flag in its CONNECT): what
    /// it publishes counts as brought in by a bridge, and nothing brought in
    /// by a bridge is delivered to it.
    pub remote_bridge: bool,
    /// One of this broker's bridges (`bridge::link`): what it brings in is
    /// stamped with this broker's own id (`bridge::origin`), and is no echo.
    pub own_bridge: bool,
    /// The outbox is made by the router (see `ConnHandle`).
    pub handle: ConnHandle<usize>,
}

#[derive(Debug)]
pub struct ConnectAccepted {
    pub session_present: bool,
    /// The client id as the router keeps it: the connection shares this
    /// allocation rather than keep its own.
    pub client_id: ClientId,
    /// The connection's end of the outbox the router made for it.
    pub outbox: crate::outbox::OutboxReceiver,
}

/// Why a connection ended, as the router needs to know it for the Will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// DISCONNECT with reason 0x00: the Will is discarded [MQTT-3.1.2-10].
    Normal,
    /// Anything else: DISCONNECT 0x04 or another code, a protocol error, keep-alive
    /// timeout, socket error, takeover, server shutdown: the Will is published.
    WithWill,
}

pub enum RouterMsg {
    Connect {
        request: Box<ConnectRequest>,
        reply: oneshot::Sender<Result<ConnectAccepted, ReasonCode>>,
    },
    /// Application messages from one connection, in order (a connection batches
    /// what one read brought); for QoS 1/2 the router answers with a `Reply`.
    Publishes {
        client: ClientId,
        conn_id: u64,
        publishes: Vec<Publish>,
    },
    /// A question or operation from the admin endpoint.
    Admin {
        request: super::AdminRequest,
        reply: oneshot::Sender<super::AdminReply>,
    },
    /// A receiver's PUBACK; a reason code of 0x80 or more (v5) refuses a work
    /// queue's message.
    PubAck {
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
        reason: ReasonCode,
    },
    /// Answered with PUBREL when `success`; `reason` is the PUBREC's code.
    PubRec {
        reason: ReasonCode,
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
        success: bool,
    },
    /// Answered with PUBCOMP.
    PubRel {
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
    },
    PubComp {
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
    },
    /// The connection could not send this delivery (over the client's Maximum
    /// Packet Size): count it as delivered.
    Skipped {
        client: ClientId,
        conn_id: u64,
        packet_id: PacketId,
    },
    Subscribe {
        client: ClientId,
        conn_id: u64,
        subscribe: Subscribe,
        reply: oneshot::Sender<Vec<ReasonCode>>,
    },
    Unsubscribe {
        client: ClientId,
        conn_id: u64,
        unsubscribe: Unsubscribe,
        reply: oneshot::Sender<Vec<ReasonCode>>,
    },
    Disconnected {
        client: ClientId,
        conn_id: u64,
        kind: DisconnectKind,
        /// A new Session Expiry Interval from a v5 DISCONNECT.
        session_expiry: Option<u32>,
    },
    /// A new ACL (SIGHUP reload); None allows everything. Existing subscriptions
    /// the new ACL denies are removed.
    SetAcl {
        acl: Option<Arc<Acl>>,
        reply: oneshot::Sender<()>,
    },
    /// A reload: the limits and options are now those of `config` (its
    /// queues and bridges come with `ReloadQueues`).
    Reconfigure {
        config: Arc<crate::config::Config>,
        reply: oneshot::Sender<()>,
    },
    /// A reload: the declared work queues are now these (`Config::all_queues`).
    /// Replies with what could not be done.
    ReloadQueues {
        declared: Vec<crate::config::QueueConfig>,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Whether queue `queue` takes QoS 0 messages: None always, Some(open)
    /// only while open (a bridge's link tells its buffer whether it is up).
    Qos0Gate { queue: String, gate: Option<bool> },
    /// The password file was reloaded: close connections that logged in with a
    /// password as a user it no longer has (DISCONNECT 0x87 on v5).
    Revoke {
        passwords: Arc<crate::auth::PasswordFile>,
        reply: oneshot::Sender<()>,
    },
    /// Graceful shutdown: close every connection (DISCONNECT 0x8B), refuse new
    /// ones. Replies when connections have been told.
    Shutdown { reply: oneshot::Sender<()> },
    /// Publish every pending will now and stop. Sent after connections have ended.
    Finish { reply: oneshot::Sender<()> },
}
