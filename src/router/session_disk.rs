//! A persistent session's backlog on disk: once the store has synced a
//! session's queued messages, those past its read-ahead leave memory (a stub
//! stays, see `session_pending`); before the session sends them, the store
//! reads them back (`LoadRequest::Session`, answered on the same channel as
//! work queues' reads). While its client is away a session keeps none of its
//! backlog in memory.

use super::*;
use crate::store::record::Receiver;
use crate::store::{LoadRequest, Read};

/// How long a read that failed for a passing reason waits to be asked again.
const RETRY_READ: Duration = Duration::from_secs(1);

/// Failed reads of one message before it counts as lost (a cause that lasts
/// this long, e.g. a segment gone from under the store, is not passing: the
/// session must not wait for it forever).
const MAX_READ_FAILURES: u8 = 30;

/// The router's side of session backlogs on disk.
#[derive(Default)]
pub(super) struct SessionDisk {
    /// Sessions with durable messages in memory that may go to disk once
    /// synced, each with whether its whole queue is to be looked at (its
    /// client left).
    listed: Vec<(ClientId, bool)>,
    /// Reads to ask for at the end of the turn.
    loads: Vec<(ClientId, Vec<u64>)>,
    /// The latest delivery id written by each submitted batch, oldest first.
    dids_at: VecDeque<(u64, u64)>,
    /// Every delivery up to this id is durable.
    synced_did: u64,
}

impl SessionDisk {
    pub(super) fn new(synced_did: u64) -> SessionDisk {
        SessionDisk {
            synced_did,
            ..SessionDisk::default()
        }
    }

    /// A batch with deliveries below `next_did` was submitted with `ticket`.
    pub(super) fn submitted(&mut self, ticket: u64, next_did: u64) {
        let last = next_did.saturating_sub(1);
        if self.dids_at.back().is_none_or(|&(_, d)| d < last) {
            self.dids_at.push_back((ticket, last));
        }
    }

    /// Batches up to `synced` are durable.
    fn synced(&mut self, synced: u64) {
        while let Some(&(t, did)) = self.dids_at.front() {
            if t > synced {
                break;
            }
            self.synced_did = self.synced_did.max(did);
            self.dids_at.pop_front();
        }
    }
}

/// The read-ahead a session keeps in memory: none while its client is away.
fn keep_for(read_ahead: (usize, usize), online: bool) -> (usize, usize) {
    if online {
        read_ahead
    } else {
        (0, 0)
    }
}

impl Router {
    /// `id`'s session may have durable messages to move to disk once synced
    /// (`full`: its client left, so all of them).
    pub(super) fn list_for_disk(&mut self, id: &ClientId, full: bool) {
        let Some(c) = self.clients.get(id) else {
            return;
        };
        if c.sid == 0 || self.store.is_none() {
            return;
        }
        let p = c.session.pending();
        let (keep, _) = keep_for(self.session_read_ahead, c.online());
        if !full && p.durable_here() <= keep {
            return;
        }
        if full && p.durable_here() == 0 {
            return;
        }
        // Listed once, unless the whole queue must be looked at now.
        if !c.disk_listed || full {
            self.session_disk.listed.push((id.clone(), full));
        }
        if let Some(c) = self.clients.get_mut(id) {
            c.disk_listed = true;
        }
    }

    /// The store synced batches up to `synced`: listed sessions' synced
    /// messages past their read-ahead leave memory.
    pub(super) fn sessions_to_disk(&mut self, synced: u64) {
        self.session_disk.synced(synced);
        if self.session_disk.listed.is_empty() {
            return;
        }
        let synced_did = self.session_disk.synced_did;
        let listed = std::mem::take(&mut self.session_disk.listed);
        for (id, full) in listed {
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            c.disk_listed = false;
            if c.sid == 0 {
                // Its records are gone (it ends with its connection now):
                // what it holds stays in memory.
                continue;
            }
            let (keep, keep_bytes) = keep_for(self.session_read_ahead, c.online());
            let unsynced = c
                .session
                .pending_to_disk(synced_did, keep, keep_bytes, full);
            if unsynced && !c.disk_listed {
                // Some still wait for their sync: looked at again next time
                // (from the newest: what went already stops the walk).
                c.disk_listed = true;
                self.session_disk.listed.push((id, false));
            }
        }
    }

    /// Ask for the messages `id`'s read-ahead needs (connected clients only).
    pub(super) fn read_ahead_session(&mut self, id: &ClientId) {
        if self.store.is_none() {
            return;
        }
        let (keep, keep_bytes) = self.session_read_ahead;
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if !c.online() || c.session.pending().on_disk() == 0 {
            return;
        }
        let mut dids = Vec::new();
        c.session.pending_wanted(keep, keep_bytes, &mut dids);
        if !dids.is_empty() {
            self.session_disk.loads.push((id.clone(), dids));
        }
    }

    /// End of a turn: ask the store for the reads sessions want (after this
    /// turn's batch).
    pub(super) fn submit_session_loads(&mut self) {
        let Some(st) = self.store.as_mut() else {
            return;
        };
        for (client, dids) in self.session_disk.loads.drain(..) {
            st.handle.load(LoadRequest::Session { client, dids });
        }
    }

    /// Messages of `id`'s waiting deliveries read back: they take their places
    /// (or end: expired, no longer readable, lost), then the session sends
    /// what it can.
    pub(super) fn session_loaded(
        &mut self,
        id: &ClientId,
        deliveries: Vec<(u64, Read, Option<Receiver>)>,
        now: Instant,
    ) {
        let mut failed = false;
        let mut lost = 0u64;
        let mut denied = 0u64;
        let user = self.clients.get(id).and_then(|c| c.username.clone());
        for (did, read, r) in deliveries {
            let readable = match (&read, &r) {
                (Read::Message(m), Some(_)) => self
                    .acl
                    .as_deref()
                    .is_none_or(|a| a.can_read(user.as_deref(), id, &m.topic)),
                _ => true,
            };
            let Some(c) = self.clients.get_mut(id) else {
                return;
            };
            match (read, r) {
                (Read::Message(m), Some(r)) => {
                    if m.is_expired(now) {
                        // [MQTT-3.3.2-5] not sent once expired.
                        if c.session.pending_drop(did) {
                            self.metrics
                                .messages_expired
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if !readable {
                        // The ACL changed while it waited on disk.
                        if c.session.pending_drop(did) {
                            denied += 1;
                        }
                        continue;
                    }
                    c.session.pending_filled(Delivery {
                        message: m,
                        qos: r.qos,
                        retain: r.retain,
                        subscription_ids: r.sub_ids,
                        did,
                        shared: false,
                        queued: None,
                    });
                }
                (Read::Failed, _) => {
                    if c.session.pending_unload(did) >= MAX_READ_FAILURES {
                        if c.session.pending_drop(did) {
                            lost += 1;
                            self.metrics
                                .messages_unreadable
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        failed = true;
                    }
                }
                (Read::Damaged, _) => {
                    if c.session.pending_drop(did) {
                        lost += 1;
                    }
                }
                // Finished meanwhile (or its session ended and began anew):
                // nothing to send.
                (Read::Gone, _) | (Read::Message(_), None) => {
                    c.session.pending_drop(did);
                }
            }
        }
        if lost > 0 {
            error!(client = %id, lost, "messages queued for this session could not be read back from the store: lost (counted in messages_unreadable)");
        }
        if denied > 0 {
            self.metrics
                .acl_denied_deliver
                .fetch_add(denied, Ordering::Relaxed);
        }
        if failed {
            self.schedule(now + RETRY_READ, id);
        }
        if self.clients.get(id).is_some_and(|c| c.online()) {
            self.flush_session(id, now);
        } else {
            // Read for a connection that is gone: back to disk.
            self.store_events(id);
            self.list_for_disk(id, true);
        }
    }
}
