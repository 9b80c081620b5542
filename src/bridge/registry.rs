//! The running bridges: one link task per configured bridge, started with the
//! broker and changed by a reload (SIGHUP) without a restart. A bridge new in
//! the config starts; one whose options changed is stopped and started again
//! with them (its local session, and so its buffer, stays); one gone from the
//! config stops and ends its local session, and its buffer (the work queue
//! `bridge-<name>`, no longer collecting) is kept until `tern bridge purge`
//! or the bridge comes back. Owns the link tasks and the list of statuses the
//! admin endpoint reads.

use super::link::{self, LinkContext};
use super::status::BridgeStatus;
use crate::config::BridgeConfig;
use crate::reload::Swap;
use crate::router::RouterMsg;
use crate::topic::TopicLimits;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Every bridge's status, running or removed with a buffer kept, in name
/// order; read by the admin endpoint.
pub type StatusList = Swap<Vec<Arc<BridgeStatus>>>;

/// How long a stopping link may take to say goodbye to both sides.
const STOP_WAIT: Duration = Duration::from_secs(10);

struct Running {
    config: BridgeConfig,
    status: Arc<BridgeStatus>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub struct Bridges {
    running: BTreeMap<String, Running>,
    statuses: Arc<StatusList>,
    router: mpsc::Sender<RouterMsg>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    topic_limits: TopicLimits,
    /// This broker's id, stamped on what the bridges carry (`origin`).
    node_id: Arc<str>,
    /// The next local connection id: from the top of the range down, which
    /// the listeners never reach; never reused, so a stopping link and its
    /// successor are never confused.
    next_conn_id: u64,
}

impl Bridges {
    pub fn new(
        router: mpsc::Sender<RouterMsg>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        topic_limits: TopicLimits,
        node_id: Arc<str>,
    ) -> Bridges {
        Bridges {
            running: BTreeMap::new(),
            statuses: Arc::new(Swap::new(Arc::new(Vec::new()))),
            router,
            shutdown,
            tracker,
            topic_limits,
            node_id,
            next_conn_id: u64::MAX,
        }
    }

    /// The topic limits links started from now on use (a reload).
    pub fn set_topic_limits(&mut self, limits: TopicLimits) {
        self.topic_limits = limits;
    }

    pub fn statuses(&self) -> Arc<StatusList> {
        self.statuses.clone()
    }

    /// First half of applying a config: stop the bridges it removes or
    /// changes, and wait for them to end (their buffers' queues change next).
    pub async fn stop_changed(&mut self, wanted: &[BridgeConfig]) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| !wanted.iter().any(|b| &b.name == *name && *b == r.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let Some(r) = self.running.remove(&name) else {
                continue;
            };
            let removed = !wanted.iter().any(|b| b.name == name);
            r.status.set_removed(removed);
            r.stop.cancel();
            if tokio::time::timeout(STOP_WAIT, r.task).await.is_err() {
                warn!(bridge = %name, "the bridge's link did not stop within {STOP_WAIT:?}");
            }
            if removed {
                info!(bridge = %name, buffer = %r.status.queue, "bridge removed: its buffer is kept until `tern bridge purge {name}` or the bridge comes back");
            } else {
                info!(bridge = %name, "bridge changed: restarting its link");
            }
        }
    }

    /// Second half: start the bridges of `wanted` not running (new, changed,
    /// or all of them at start). A bridge that comes back keeps its status.
    pub fn start_missing(&mut self, wanted: &[BridgeConfig]) {
        for b in wanted {
            if self.running.contains_key(&b.name) {
                continue;
            }
            let status = self
                .statuses
                .get()
                .iter()
                .find(|s| s.name == b.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(BridgeStatus::new(&b.name, &b.queue_name())));
            status.set_removed(false);
            let stop = self.shutdown.child_token();
            let ctx = LinkContext {
                router: self.router.clone(),
                shutdown: stop.clone(),
                conn_id: self.next_conn_id,
                topic_limits: self.topic_limits,
                status: status.clone(),
                node_id: self.node_id.clone(),
            };
            self.next_conn_id -= 1;
            let task = self.tracker.spawn(link::run(b.clone(), ctx));
            self.running.insert(
                b.name.clone(),
                Running {
                    config: b.clone(),
                    status,
                    stop,
                    task,
                },
            );
        }
        self.publish_statuses();
    }

    /// The status list: the running bridges, and the removed ones that still
    /// have a status listed (their buffer is kept; a purge drops them).
    fn publish_statuses(&self) {
        let running: Vec<Arc<BridgeStatus>> =
            self.running.values().map(|r| r.status.clone()).collect();
        self.statuses.update(|old| {
            let mut list: Vec<Arc<BridgeStatus>> = old
                .iter()
                .filter(|s| s.is_removed() && !self.running.contains_key(&s.name))
                .cloned()
                .collect();
            list.extend(running);
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list
        });
    }
}
