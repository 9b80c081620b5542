//! What one bridge's link reports about itself, for the admin endpoint: whether
//! it is connected and since when, the last error, and its counters. Written by
//! the link task only (atomics, and a lock held for a string copy), read by the
//! admin endpoint; the buffer's numbers come from its work queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct BridgeStatus {
    pub name: String,
    /// The work queue that buffers what goes out (`bridge-<name>`).
    pub queue: String,
    connected: AtomicBool,
    /// Unix seconds of the last change of `connected`.
    since: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Messages the remote acknowledged.
    pub forwarded: AtomicU64,
    /// Messages brought in from the remote.
    pub received: AtomicU64,
    /// Refusals by the remote (each retried, then dead-lettered).
    pub refused: AtomicU64,
    /// Messages from the remote that no incoming mapping takes (dropped).
    pub unmapped: AtomicU64,
    /// Messages from the remote that had passed through this broker already
    /// (a loop through other brokers' bridges): dropped.
    pub looped: AtomicU64,
    /// The bridge left the config (a reload): its link is stopped, its buffer
    /// kept until purged (`tern bridge purge`) or the bridge comes back.
    removed: AtomicBool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl BridgeStatus {
    pub fn new(name: &str, queue: &str) -> BridgeStatus {
        BridgeStatus {
            name: name.into(),
            queue: queue.into(),
            since: AtomicU64::new(unix_now()),
            ..BridgeStatus::default()
        }
    }

    pub fn set_connected(&self, up: bool) {
        if self.connected.swap(up, Ordering::Relaxed) != up {
            self.since.store(unix_now(), Ordering::Relaxed);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Relaxed);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    pub fn set_error(&self, why: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// As JSON, for `GET /api/v1/bridges`.
    pub fn to_json(&self) -> serde_json::Value {
        let last_error = self.last_error.lock().ok().and_then(|e| e.clone());
        serde_json::json!({
            "name": self.name,
            "connected": self.connected.load(Ordering::Relaxed),
            "since_unix": self.since.load(Ordering::Relaxed),
            "last_error": last_error,
            "forwarded": self.forwarded.load(Ordering::Relaxed),
            "received": self.received.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
            "unmapped": self.unmapped.load(Ordering::Relaxed),
            "looped": self.looped.load(Ordering::Relaxed),
            "buffer": self.queue,
            "removed": self.is_removed(),
        })
    }
}
