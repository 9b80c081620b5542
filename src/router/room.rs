//! Room in the persistent-session table: the quota check of a CONNECT and which
//! offline anonymous session to expire when the table is full.

use super::*;

impl Router {
    /// Room for one more persistent session of `h` (for client `id`): within
    /// its own cap, and when the table is full, by expiring the oldest offline
    /// anonymous session (logged, counted). Sessions of authenticated users are
    /// never expired for room, so an anonymous flood cannot push them out.
    pub(super) fn make_room(
        &mut self,
        h: &Holder,
        id: &ClientId,
        now: Instant,
    ) -> Result<(), Full> {
        loop {
            match self.quota.check(h) {
                Ok(()) => return Ok(()),
                Err(Full::Table) => {
                    let Some(victim) = self.next_evictable(id) else {
                        return Err(Full::Table);
                    };
                    info!(client = %victim, for_client = %id, "session table full: expired the oldest offline anonymous session");
                    self.metrics
                        .sessions_evicted
                        .fetch_add(1, Ordering::Relaxed);
                    self.end_session(&victim, now);
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// The oldest offline anonymous persistent session other than `except`.
    /// Candidates are found by one scan of the table, 64 at a time, so a flood
    /// of new sessions at a full table costs one scan per 64 of them.
    pub(super) fn next_evictable(&mut self, except: &ClientId) -> Option<ClientId> {
        const BATCH: usize = 64;
        let evictable = |c: &Client| !c.online() && c.holder().is_some_and(|h| h.anonymous());
        for refill in [false, true] {
            if refill {
                let mut all: Vec<(u64, &ClientId)> = self
                    .clients
                    .iter()
                    .filter(|(k, c)| *k != except && evictable(c))
                    .map(|(k, c)| (c.disconnected_unix, k))
                    .collect();
                if all.len() > BATCH {
                    all.select_nth_unstable(BATCH);
                    all.truncate(BATCH);
                }
                // Oldest last, to pop.
                all.sort_unstable_by(|a, b| b.cmp(a));
                self.evictable = all.into_iter().map(|(_, k)| k.clone()).collect();
            }
            while let Some(k) = self.evictable.pop() {
                if &k != except && self.clients.get(&k).is_some_and(|c| evictable(c)) {
                    return Some(k);
                }
            }
        }
        None
    }
}
