//! Giving memory back to the system once load has passed.
//!
//! glibc's malloc keeps what a burst freed: memory freed in a thread's arena
//! stays mapped unless it sits at the top of the heap, so 5,000 connections that
//! came and went left the broker at its high-water mark (81 MB) for good.
//! `malloc_trim` hands free pages of every arena back (`madvise`), and costs a
//! walk of the free lists: cheap every few seconds, and only done after the
//! number of connections fell. Other allocators (musl) return memory by
//! themselves; there this is a no-op.

use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Watch the connection count and trim after it fell by a quarter (or more) of
/// its peak since the last trim, and after any drop to zero.
pub async fn return_freed(metrics: Arc<Metrics>, every: Duration) {
    let mut peak = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = metrics.connections_current.load(Ordering::Relaxed);
        peak = peak.max(now);
        if peak > now && (now == 0 || (peak - now) * 4 >= peak) {
            trim();
            peak = now;
        }
    }
}

/// Return free heap memory to the system now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims malloc's own free lists; it takes
    // the arena locks itself and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
