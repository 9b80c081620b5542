//! The admin endpoint's view of clients: a page of sessions in client id
//! order (`GET /api/v1/clients?after=<id>&limit=N`) and kicking one
//! (`POST /api/v1/clients/<id>/kick`). A page costs one pass over the
//! sessions and a heap of `limit` entries, so a large broker answers without
//! sorting every client.

use super::*;
use serde::Serialize;
use std::collections::BinaryHeap;

/// Clients one page returns at most, and by default.
pub const MAX_CLIENTS_PAGE: usize = 1_000;
pub const DEFAULT_CLIENTS_PAGE: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    pub id: String,
    pub connected: bool,
    /// The peer's address of the live connection.
    pub address: Option<String>,
    /// "3.1.1" or "5" (of the live connection).
    pub protocol: Option<&'static str>,
    /// Seconds, as agreed at CONNECT (of the live connection).
    pub keep_alive: Option<u16>,
    pub username: Option<String>,
    pub subscriptions: usize,
    pub inflight: usize,
    pub queued: usize,
    /// Seconds the session outlives its connection.
    pub session_expiry: u32,
}

impl Router {
    /// Up to `limit` sessions whose ids come after `after`, in id order.
    pub(super) fn clients_page(&self, after: Option<&str>, limit: usize) -> Vec<ClientInfo> {
        let limit = limit.clamp(1, MAX_CLIENTS_PAGE);
        // The `limit` smallest ids past the cursor: a max-heap of them.
        let mut heap: BinaryHeap<&ClientId> = BinaryHeap::with_capacity(limit + 1);
        for id in self.clients.keys() {
            if after.is_some_and(|a| &**id <= a) {
                continue;
            }
            if heap.len() < limit {
                heap.push(id);
            } else if heap.peek().is_some_and(|top| id < *top) {
                heap.pop();
                heap.push(id);
            }
        }
        let mut ids = heap.into_vec();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let c = self.clients.get(id)?;
                let h = c.conn.as_ref();
                Some(ClientInfo {
                    id: id.to_string(),
                    connected: h.is_some(),
                    address: h.and_then(|h| h.peer).map(|a| a.to_string()),
                    protocol: h.map(|h| if h.version.is_v5() { "5" } else { "3.1.1" }),
                    keep_alive: h.map(|h| h.keep_alive),
                    username: c.username.as_deref().map(str::to_string),
                    subscriptions: self.subs.count(id),
                    inflight: c.session.inflight_len(),
                    queued: c.session.pending_len(),
                    session_expiry: c.session_expiry,
                })
            })
            .collect()
    }

    /// Close client `id`'s connection (v5: DISCONNECT 0x98 Administrative
    /// action); its session stays, as after any disconnect. False when no
    /// such client is connected.
    pub(super) fn kick(&mut self, id: &str) -> bool {
        let Some(h) = self.clients.get_mut(id).and_then(|c| c.conn.as_mut()) else {
            return false;
        };
        info!(client = id, "closed by the admin endpoint");
        h.close_with(ReasonCode::ADMINISTRATIVE_ACTION);
        true
    }
}
