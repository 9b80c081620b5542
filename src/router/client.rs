//! The router's record of one client: its session, its connection (if any), its
//! Will and when a pending one is due, its expiry, backpressure state, store
//! gating, identity and a CONNECT waiting to take it over.

use super::*;

/// A Will waiting for its delay or for the session to end (section 3.1.3.2).
pub(super) struct PendingWill {
    pub(super) will: Box<LastWill>,
    pub(super) due: Instant,
}

/// A publisher's acknowledgement held back until a full receiver drains.
pub(super) struct HeldAck {
    pub(super) publisher: ClientId,
    pub(super) conn_id: u64,
    pub(super) reply: Reply,
}

pub(super) struct Client {
    pub(super) session: Session,
    pub(super) conn: Option<ConnHandle>,
    /// Boxed: most clients have no will, and every client costs one `Client`.
    pub(super) will: Option<Box<LastWill>>,
    pub(super) pending_will: Option<Box<PendingWill>>,
    pub(super) session_expiry: u32,
    /// Set while offline: when the session ends.
    pub(super) expires_at: Option<Instant>,
    /// How long this (connected) client has held publishers back.
    pub(super) stall: crate::stall::LazyStall,
    /// Publishers' acknowledgements waiting for this client's queue to drain.
    pub(super) held_acks: Vec<HeldAck>,
    /// The store's id for this session; 0 when it is not persisted (no store, or
    /// a session that ends with its connection).
    pub(super) sid: u64,
    /// Deliveries for the current connection waiting for the store's sync: they
    /// will take outbox slots.
    pub(super) gated: u32,
    /// Everything waiting for the store for the current connection: while any
    /// waits, later packets to it wait too, so its packets keep their order.
    pub(super) held_out: u32,
    /// Unix seconds of the last disconnect (session expiry counts from there).
    pub(super) disconnected_unix: u64,
    /// The login of the session's latest connection (ACL checks; kept while
    /// offline and in the store).
    pub(super) username: Option<Arc<str>>,
    /// The current connection logged in with a password (see `Revoke`).
    pub(super) by_password: bool,
    /// The current connection is another broker's bridge (`ConnectRequest`).
    pub(super) remote_bridge: bool,
    /// The current connection is one of this broker's bridges.
    pub(super) own_bridge: bool,
    /// Retained messages still owed since a SUBSCRIBE (boxed: rare).
    pub(super) retained: Option<Box<RetainedBacklog>>,
    /// Whom this session counts against in `Router::quota`; None: it ends with
    /// its connection (not counted). Boxed: clean clients are the many.
    pub(super) holder: Option<Box<Holder>>,
    /// The work queues this client consumes (`$queue/<name>` subscriptions) and
    /// at which QoS; kept while it is offline, attached while it is connected.
    pub(super) consumes: Vec<(Arc<str>, QoS)>,
    /// A CONNECT waiting for the live connection it takes over to end.
    pub(super) parked: Option<Box<super::takeover::ParkedConnect>>,
    /// On the list of sessions whose queued messages may go to disk once
    /// synced (`session_disk`).
    pub(super) disk_listed: bool,
}

impl Client {
    /// Arm the current connection's Will as it ends without DISCONNECT (or with
    /// 0x04): it is due after its delay, unless the session is resumed first
    /// [MQTT-3.1.3-9] or ends first [MQTT-3.1.2-8].
    pub(super) fn arm_will(&mut self, now: Instant) {
        if let Some(will) = self.will.take() {
            let due = now + Duration::from_secs(u64::from(will.delay_interval));
            self.pend_will(will, due);
        }
    }

    /// `will` is due at `due` (a Will armed now, or one recovered from the store).
    pub(super) fn pend_will(&mut self, will: Box<LastWill>, due: Instant) {
        self.pending_will = Some(Box::new(PendingWill { will, due }));
    }

    pub(super) fn online(&self) -> bool {
        self.conn.is_some()
    }

    pub(super) fn live(&self, conn_id: u64) -> Option<&ConnHandle> {
        self.conn.as_ref().filter(|h| h.conn_id == conn_id)
    }

    /// Outbox slots free for deliveries, less those already promised to
    /// deliveries waiting for the store.
    pub(super) fn room(&self) -> usize {
        self.conn
            .as_ref()
            .map_or(0, |h| h.room().saturating_sub(self.gated as usize))
    }

    pub(super) fn new(id: ClientId) -> Client {
        Client {
            session: Session::new(id),
            conn: None,
            will: None,
            pending_will: None,
            session_expiry: 0,
            expires_at: None,
            stall: Default::default(),
            held_acks: Vec::new(),
            sid: 0,
            gated: 0,
            held_out: 0,
            disconnected_unix: 0,
            username: None,
            by_password: false,
            remote_bridge: false,
            own_bridge: false,
            retained: None,
            holder: None,
            consumes: Vec::new(),
            parked: None,
            disk_listed: false,
        }
    }
}
