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

/// What most clients do not have at a given time, boxed together in
/// `Client::rare`: a clean client that is only connected, or hibernating,
/// carries none of it. Each part was 8 to 24 bytes in every client record
/// (112 in all); a persistent session, or a client with a Will, a retained
/// backlog, a queue to consume or publishers held back, has the box.
#[derive(Default)]
pub(super) struct Rare {
    /// Boxed: a `LastWill` is large, and most boxes are here for another part.
    pub(super) will: Option<Box<LastWill>>,
    pub(super) pending_will: Option<Box<PendingWill>>,
    /// Set while offline: when the session ends.
    pub(super) expires_at: Option<Instant>,
    /// How long this (connected) client has held publishers back (kept once
    /// made: the meter's bucket leaks with time).
    pub(super) stall: crate::stall::LazyStall,
    /// Publishers' acknowledgements waiting for this client's queue to drain.
    pub(super) held_acks: Vec<HeldAck>,
    /// Retained messages still owed since a SUBSCRIBE.
    pub(super) retained: Option<Box<RetainedBacklog>>,
    /// Whom this session counts against in `Router::quota`; None: it ends with
    /// its connection (not counted).
    pub(super) holder: Option<Box<Holder>>,
    /// The work queues this client consumes (`$queue/<name>` subscriptions) and
    /// at which QoS; kept while it is offline, attached while it is connected.
    pub(super) consumes: Vec<(Arc<str>, QoS)>,
    /// A CONNECT waiting for the live connection it takes over to end.
    pub(super) parked: Option<Box<super::takeover::ParkedConnect>>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.will.is_none()
            && self.pending_will.is_none()
            && self.expires_at.is_none()
            && self.stall.is_unmade()
            && self.held_acks.is_empty()
            && self.retained.is_none()
            && self.holder.is_none()
            && self.consumes.is_empty()
            && self.parked.is_none()
    }
}

pub(super) struct Client {
    pub(super) session: Session,
    pub(super) conn: Option<ConnHandle>,
    /// What most clients lack (see `Rare`); None: all of it empty.
    pub(super) rare: Option<Box<Rare>>,
    pub(super) session_expiry: u32,
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
    /// On the list of sessions whose queued messages may go to disk once
    /// synced (`session_disk`).
    pub(super) disk_listed: bool,
}

impl Client {
    /// The rare parts, if any.
    pub(super) fn rare(&self) -> Option<&Rare> {
        self.rare.as_deref()
    }

    /// The rare parts, made if need be.
    pub(super) fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Default::default)
    }

    /// Take what `f` takes from the rare parts (if there are any), and let
    /// them go if nothing is left.
    pub(super) fn take_rare<T>(&mut self, f: impl FnOnce(&mut Rare) -> Option<T>) -> Option<T> {
        let rare = self.rare.as_mut()?;
        let taken = f(rare);
        if rare.is_empty() {
            self.rare = None;
        }
        taken
    }

    /// Change the rare parts with `f` (made if need be), and let them go if
    /// nothing is left.
    pub(super) fn update_rare<T>(&mut self, f: impl FnOnce(&mut Rare) -> T) -> T {
        let out = f(self.rare_mut());
        if self.rare.as_ref().is_some_and(|r| r.is_empty()) {
            self.rare = None;
        }
        out
    }

    pub(super) fn pending_will(&self) -> Option<&PendingWill> {
        self.rare()?.pending_will.as_deref()
    }

    pub(super) fn expires_at(&self) -> Option<Instant> {
        self.rare()?.expires_at
    }

    pub(super) fn holder(&self) -> Option<&Holder> {
        self.rare()?.holder.as_deref()
    }

    /// Its retained backlog, if it has one.
    pub(super) fn retained_mut(&mut self) -> Option<&mut RetainedBacklog> {
        self.rare.as_mut()?.retained.as_deref_mut()
    }

    /// It no longer holds publishers back (a no-op if it never did).
    pub(super) fn stop_stall(&mut self, now: Instant) {
        if let Some(r) = self.rare.as_mut() {
            r.stall.stop(now);
        }
    }

    /// The work queues it consumes (see `Rare::consumes`).
    pub(super) fn consumes(&self) -> &[(Arc<str>, QoS)] {
        self.rare().map_or(&[], |r| &r.consumes)
    }

    /// Arm the current connection's Will as it ends without DISCONNECT (or with
    /// 0x04): it is due after its delay, unless the session is resumed first
    /// [MQTT-3.1.3-9] or ends first [MQTT-3.1.2-8].
    pub(super) fn arm_will(&mut self, now: Instant) {
        if let Some(will) = self.take_rare(|r| r.will.take()) {
            let due = now + Duration::from_secs(u64::from(will.delay_interval));
            self.pend_will(will, due);
        }
    }

    /// `will` is due at `due` (a Will armed now, or one recovered from the store).
    pub(super) fn pend_will(&mut self, will: Box<LastWill>, due: Instant) {
        self.rare_mut().pending_will = Some(Box::new(PendingWill { will, due }));
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
            rare: None,
            session_expiry: 0,
            sid: 0,
            gated: 0,
            held_out: 0,
            disconnected_unix: 0,
            username: None,
            by_password: false,
            remote_bridge: false,
            own_bridge: false,
            disk_listed: false,
        }
    }
}
