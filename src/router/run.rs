//! The router's task: the thin async shell around the synchronous `Router`.
//! Handles messages in order and in batches, fires deadlines on time, releases
//! what waited for the store's sync, and sweeps expired retained messages.

use super::snapshot::{Snapshot, SNAPSHOT_EVERY};
use super::{Router, RouterMsg};
use crate::bridge::registry::StatusList;
use crate::clock::Clock;
use crate::sys::{BridgeSys, Sys};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// The router task: handle messages in order, fire deadlines on time, sweep
/// expired retained messages. Stops after `Finish`, or when every sender is gone.
/// What the router task publishes about the broker.
pub struct Publishing {
    /// Where the snapshot goes (every `SNAPSHOT_EVERY`).
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    /// The bridges, for `$SYS/broker/bridges/...`.
    pub bridges: Arc<StatusList>,
    /// When the broker started (`$SYS/broker/uptime`).
    pub started: Instant,
}

pub async fn run(mut router: Router, mut rx: mpsc::Receiver<RouterMsg>, publishing: Publishing) {
    let Publishing {
        snapshots,
        bridges,
        started,
    } = publishing;
    let mut sys = Sys::new(started);
    // The first $SYS at once, as the first snapshot.
    let mut sys_every = router.sys_every();
    let mut next_sys = sys_every.map(|_| Instant::now());
    // The `$SYS` topics last published: cleared if a reload turns `$SYS` off,
    // so no frozen numbers stay retained.
    let mut sys_topics: Vec<String> = Vec::new();
    // Limit work per turn so deadlines are not starved by a message flood.
    const BATCH: usize = 256;
    const SWEEP_EVERY: Duration = Duration::from_secs(60);
    let mut next_sweep = Instant::now() + SWEEP_EVERY;
    // The first one at once: readers see real numbers from the start.
    let mut next_snapshot = Instant::now();
    let mut synced = router.synced_watch();
    let mut loaded = router.take_loaded();
    // What recovery wrote (sessions that were connected at the crash).
    router.end_turn();
    'turns: loop {
        // A reload may have changed the interval: it applies from now.
        if router.sys_every() != sys_every {
            sys_every = router.sys_every();
            next_sys = sys_every.map(|_| Instant::now());
            if sys_every.is_none() {
                // An empty retained payload removes the retained message
                // [MQTT-3.3.1-6].
                let clear = std::mem::take(&mut sys_topics)
                    .into_iter()
                    .map(|t| (t, String::new()))
                    .collect();
                router.publish_sys(clear, Instant::now());
                router.end_turn();
            }
        }
        let wake = router
            .next_deadline()
            .map_or(next_sweep, |d| d.min(next_sweep))
            .min(next_snapshot);
        let wake = next_sys.map_or(wake, |s| wake.min(s));
        let msg = tokio::select! {
            m = rx.recv() => m,
            Some(t) = next_synced(&mut synced) => {
                router.release(t);
                router.end_turn();
                continue;
            }
            Some(l) = next_loaded(&mut loaded) => {
                let clock = Clock::read();
                router.loaded(l, clock);
                // Whatever else was read back meanwhile, in the same turn.
                while let Some(l) = loaded.as_mut().and_then(|rx| rx.try_recv().ok()) {
                    router.loaded(l, clock);
                }
                router.end_turn();
                continue;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let clock = Clock::read();
                let now = clock.now;
                router.tick(clock);
                if now >= next_sweep {
                    router.sweep(now);
                    next_sweep = now + SWEEP_EVERY;
                }
                if now >= next_snapshot {
                    publish_snapshot(&router, &snapshots);
                    next_snapshot = now + SNAPSHOT_EVERY;
                }
                if let (Some(at), Some(every)) = (next_sys, sys_every) {
                    if now >= at {
                        publish_snapshot(&router, &snapshots);
                        let s = snapshots.borrow().clone();
                        let messages = sys.messages(now, router.sys_counters(), &s, &bridge_rows(&bridges, &s));
                        sys_topics = messages.iter().map(|(t, _)| t.clone()).collect();
                        router.publish_sys(messages, now);
                        next_sys = Some(now + every);
                    }
                }
                router.end_turn();
                continue;
            }
        };
        let Some(msg) = msg else {
            break;
        };
        let clock = Clock::read();
        let now = clock.now;
        if !router.handle(msg, clock) {
            break;
        }
        for _ in 0..BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    if !router.handle(m, clock) {
                        break 'turns;
                    }
                }
                Err(_) => break,
            }
        }
        if router.next_deadline().is_some_and(|d| d <= now) {
            router.tick(clock);
        }
        // Under a flood of messages too.
        if now >= next_snapshot {
            publish_snapshot(&router, &snapshots);
            next_snapshot = now + SNAPSHOT_EVERY;
        }
        router.end_turn();
    }
    // Stopping: the last batch (wills, final session records) must be durable
    // before `Finish` is answered and the store closes.
    router.end_turn();
    if let (Some(rx), Some(st)) = (synced.as_mut(), router.store.as_ref()) {
        let target = st.handle.submitted();
        let wait = async {
            while *rx.borrow_and_update() < target {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            warn!("storage: the last batch was not synced within 10 s");
        }
        let t = *rx.borrow();
        router.release(t);
    }
    if let Some(reply) = router.finish_reply.take() {
        let _ = reply.send(());
    }
}

/// The next answer to a queue load, or never without a store.
async fn next_loaded(
    rx: &mut Option<mpsc::UnboundedReceiver<crate::store::Loaded>>,
) -> Option<crate::store::Loaded> {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(l) => Some(l),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The next synced ticket from the store, or never without a store.
async fn next_synced(rx: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            // The store thread is gone: nothing more will be synced.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

fn publish_snapshot(router: &Router, snapshots: &watch::Sender<Arc<Snapshot>>) {
    let s = router.snapshot(&snapshots.borrow());
    snapshots.send_replace(Arc::new(s));
}

/// The bridges' lines of `$SYS`, their buffers' sizes from the snapshot.
fn bridge_rows(bridges: &StatusList, s: &Snapshot) -> Vec<BridgeSys> {
    bridges
        .get()
        .iter()
        .filter(|b| !b.is_removed())
        .map(|b| BridgeSys {
            name: b.name.clone(),
            connected: b.is_connected(),
            buffered: s
                .queues
                .iter()
                .find(|q| q.name == b.queue)
                .map_or(0, |q| (q.depth + q.in_flight) as u64),
            forwarded: crate::metrics::Metrics::get(&b.forwarded),
            received: crate::metrics::Metrics::get(&b.received),
            refused: crate::metrics::Metrics::get(&b.refused),
        })
        .collect()
}
