//! A takeover waits for the old connection's own end. A CONNECT for a client id
//! that has a live connection is parked: the old connection is told to close
//! (0x8E) and first handles what its client had already sent, then reports
//! `Disconnected` with how it ended; that report decides the old Will (discarded
//! after the client's DISCONNECT [MQTT-3.14.4-3], armed otherwise
//! [MQTT-3.1.2-8]) and only then is the new CONNECT handled, as if it came after
//! the old connection. An old connection that does not report within
//! `TAKEOVER_WAIT` is taken over as before (`Router::take_over`).
//!
//! Owns the parked CONNECT only; the CONNECT itself is `Router::connect` and the
//! old connection's end `Router::disconnected`.

use super::*;

/// How long a CONNECT waits for the connection it takes over to report. That
/// connection reports within its grace (`connection::TAKEOVER_GRACE`, 100 ms)
/// unless its task is stuck; this bound keeps a stuck one from holding the new
/// connection back.
pub(super) const TAKEOVER_WAIT: Duration = Duration::from_secs(1);

/// A CONNECT waiting for the connection it takes over to end.
pub(super) struct ParkedConnect {
    request: ConnectRequest,
    reply: oneshot::Sender<Result<ConnectAccepted, ReasonCode>>,
    due: Instant,
}

impl ParkedConnect {
    /// Answer the waiting CONNECT with a refusal.
    pub(super) fn refuse(self: Box<Self>, code: ReasonCode) {
        let _ = self.reply.send(Err(code));
    }
}

impl Router {
    /// A CONNECT from a connection task: answered now, or, when its client id has
    /// a live connection, parked until that connection has ended [MQTT-3.1.4-3].
    pub(super) fn connect_or_park(
        &mut self,
        req: ConnectRequest,
        reply: oneshot::Sender<Result<ConnectAccepted, ReasonCode>>,
        now: Instant,
    ) {
        let id = req.client_id.clone();
        if !self.clients.get(&id).is_some_and(|c| c.online()) {
            let _ = reply.send(self.connect(req, now));
            return;
        }
        // The router's refusals first: a refused CONNECT closes nothing. They
        // are checked again when the parked CONNECT is let in.
        if let Err(code) = self.admit(&req, now) {
            let _ = reply.send(Err(code));
            return;
        }
        let Some(c) = self.clients.get_mut(&id) else {
            let _ = reply.send(self.connect(req, now));
            return;
        };
        match c.take_rare(|r| r.parked.take()) {
            // A CONNECT already waiting is itself taken over before its CONNACK:
            // refused (v5 0x89 Server busy, 3.1.1 0x03 Server unavailable).
            Some(earlier) => earlier.refuse(ReasonCode::SERVER_BUSY),
            None => {
                if let Some(h) = c.conn.as_mut() {
                    // It keeps its handle until it reports: what it still sends
                    // is handled as its own.
                    h.close_with(ReasonCode::SESSION_TAKEN_OVER);
                }
                self.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
            }
        }
        let due = now + TAKEOVER_WAIT;
        c.rare_mut().parked = Some(Box::new(ParkedConnect {
            request: req,
            reply,
            due,
        }));
        self.schedule(due, &id);
    }

    /// The connection `conn_id` of `id` ended (the report of its task): handled as
    /// usual, then the CONNECT that waited for it, if any, is let in.
    pub(super) fn connection_ended(
        &mut self,
        id: &ClientId,
        conn_id: u64,
        kind: DisconnectKind,
        session_expiry: Option<u32>,
        now: Instant,
    ) {
        let parked = self
            .clients
            .get_mut(id)
            .filter(|c| c.live(conn_id).is_some())
            .and_then(|c| c.take_rare(|r| r.parked.take()));
        self.disconnected(id, conn_id, kind, session_expiry, now);
        if let Some(p) = parked {
            self.let_in(p, now);
        }
    }

    /// A deadline of `id` fired: a CONNECT waiting past `TAKEOVER_WAIT` takes the
    /// session over without the old connection's report, whose Will is then
    /// armed as for any end without DISCONNECT (its late report is ignored).
    pub(super) fn parked_overdue(&mut self, id: &ClientId, now: Instant) {
        let Some(p) = self
            .clients
            .get_mut(id)
            .and_then(|c| c.take_rare(|r| r.parked.take_if(|p| p.due <= now)))
        else {
            return;
        };
        warn!(client = %id, wait = ?TAKEOVER_WAIT, "the connection taken over did not end in time: taken over without its report");
        self.let_in(p, now);
    }

    /// Handle a parked CONNECT now and answer it.
    fn let_in(&mut self, p: Box<ParkedConnect>, now: Instant) {
        let ParkedConnect { request, reply, .. } = *p;
        let _ = reply.send(self.connect(request, now));
    }
}
