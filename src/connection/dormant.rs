//! What a hibernating connection keeps of its `Conn`.
//!
//! A connection may hibernate only with its buffers empty, nothing decoded
//! and unsent, and no reply owed (`Conn::may_hibernate`). What is empty then
//! is not kept: the read and write buffers, the batch of decoded PUBLISHes,
//! the skipped deliveries, the adaptive read size. They are made again, empty,
//! when the connection wakes. What is kept is what the connection knows that
//! nothing else does: who it is, its outbox, its keep-alive, the topic aliases
//! of both directions [MQTT-3.3.2-7], the inbound QoS 1/2 ids not yet completed
//! (a QoS 2 id waits for its PUBREL while the client sleeps), and what was
//! agreed at CONNECT.
//!
//! Every hibernating connection costs one of these in its room
//! (`hibernate.rs`): 112 bytes, against the awake `Conn`'s 256 (issue 15).

use super::receive_window::DozingWindow;
use super::{Config, Conn, ProtocolVersion, Registration, Shared, READ_MIN};
use super::{InboundAliases, OutboundAliases};
use crate::outbox::OutboxReceiver;
use crate::session::ClientId;
use bytes::BytesMut;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Dormant {
    pub(super) client_id: ClientId,
    pub(super) conn_id: u64,
    pub(super) outbox: OutboxReceiver,
    pub(super) shared: Arc<Shared>,
    cfg: Arc<Config>,
    /// The keep-alive deadline: the hibernation wakes the connection at it.
    pub(super) ka_at: tokio::time::Instant,
    /// The keep-alive timeout in milliseconds (1.5 times the keep-alive,
    /// whole seconds, so exact): 4 bytes, not an `Option<Duration>`'s 16.
    keep_alive_ms: Option<NonZeroU32>,
    inbound: DozingWindow,
    in_aliases: InboundAliases,
    out_aliases: OutboundAliases,
    /// Never 0: a Maximum Packet Size of 0 is refused as it is decoded.
    client_max_packet: Option<NonZeroU32>,
    version: ProtocolVersion,
    expiry_was_zero: bool,
    problem_info: bool,
}

impl Conn {
    /// The connection falls asleep: what it must remember. Only after
    /// `may_hibernate` (whose conditions make everything dropped here empty).
    pub(super) fn doze(self) -> Dormant {
        let Conn {
            client_id,
            conn_id,
            version,
            rbuf,
            wbuf,
            read_size: _,
            inbound,
            skipped,
            batch,
            in_aliases,
            out_aliases,
            client_max_packet,
            keep_alive,
            expiry_was_zero,
            problem_info,
            flush_owed,
            outbox,
            shared,
            cfg,
            ka_at,
        } = self;
        debug_assert!(
            rbuf.is_empty() && wbuf.is_empty() && skipped.is_empty() && batch.is_empty(),
            "a connection hibernated with something in flight"
        );
        debug_assert!(!flush_owed);
        let keep_alive_ms = keep_alive
            .and_then(|k| NonZeroU32::new(u32::try_from(k.as_millis()).unwrap_or(u32::MAX).max(1)));
        Dormant {
            client_id,
            conn_id,
            outbox,
            shared,
            cfg,
            ka_at,
            keep_alive_ms,
            inbound: inbound.doze(),
            in_aliases,
            out_aliases,
            client_max_packet: client_max_packet.and_then(NonZeroU32::new),
            version,
            expiry_was_zero,
            problem_info,
        }
    }
}

impl Dormant {
    /// The connection wakes: its `Conn` again, with empty buffers.
    pub(super) fn rouse(self) -> Conn {
        let Dormant {
            client_id,
            conn_id,
            outbox,
            shared,
            cfg,
            ka_at,
            keep_alive_ms,
            inbound,
            in_aliases,
            out_aliases,
            client_max_packet,
            version,
            expiry_was_zero,
            problem_info,
        } = self;
        Conn {
            client_id,
            conn_id,
            version,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_size: READ_MIN,
            inbound: inbound.rouse(),
            skipped: Vec::new(),
            batch: Vec::new(),
            in_aliases,
            out_aliases,
            client_max_packet: client_max_packet.map(NonZeroU32::get),
            keep_alive: keep_alive_ms.map(|ms| Duration::from_millis(u64::from(ms.get()))),
            expiry_was_zero,
            problem_info,
            flush_owed: false,
            outbox,
            shared,
            cfg,
            ka_at,
        }
    }

    /// Its registration with the router, armed (see `Conn::registration`).
    pub(super) fn registration(&self) -> Registration {
        Registration::armed(&self.shared, &self.client_id, self.conn_id)
    }
}
