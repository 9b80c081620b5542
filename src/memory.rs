//! Giving memory back to the system once load has passed.
//!
//! glibc's malloc keeps what a burst freed: memory freed in a thread's arena
//! stays mapped unless it sits at the top of the heap, so 5,000 connections that
//! came and went left the broker at its high-water mark (81 MB) for good.
//! `malloc_trim` hands free pages of every arena back (`madvise`), and costs a
//! walk of the free lists: cheap every few seconds, and only done after many
//! connections closed or a work-queue backlog drained. Other allocators (musl) return memory by
//! themselves; there this is a no-op.

use crate::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Trim after enough connections have closed since the last trim (a quarter
/// of those still open, and at least 64), after a work-queue backlog drained,
/// or after a burst of traffic ended (10,000 messages or more since the last
/// trim, and under 1% of that in the last tick). Counted from the totals (accepted less
/// open), not sampled, so a burst that comes and goes between two looks still
/// counts.
pub async fn return_freed(metrics: Arc<Metrics>, every: Duration) {
    let closed = || {
        let accepted = metrics.connections_accepted.load(Ordering::Relaxed);
        let open = metrics.connections_current.load(Ordering::Relaxed);
        (accepted.saturating_sub(open), open)
    };
    let mut closed_at_trim = closed().0;
    // The most messages work queues held since the last trim.
    let queued = || metrics.queue_messages.load(Ordering::Relaxed);
    let mut queued_peak = queued();
    // Messages moved in and out: a burst of traffic that has passed freed
    // its buffers (measured: 16 publishers for 5 s left RSS at 140% of idle
    // with no connection closed, so no trim).
    let moved = || metrics.messages_received() + metrics.messages_sent();
    let mut moved_at_trim = moved();
    let mut moved_last = moved_at_trim;
    let asleep = || metrics.connections_hibernating.load(Ordering::Relaxed);
    let mut asleep_at_trim = asleep();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (closed_now, open) = closed();
        let since = closed_now.saturating_sub(closed_at_trim);
        let queued_now = queued();
        queued_peak = queued_peak.max(queued_now);
        // A drained backlog (its index entries and read-back messages) is
        // memory freed like closed connections.
        let drained = queued_peak.saturating_sub(queued_now);
        let moved_now = moved();
        let this_tick = moved_now.saturating_sub(moved_last);
        moved_last = moved_now;
        let burst = moved_now.saturating_sub(moved_at_trim);
        let burst_over = burst >= 10_000 && this_tick < burst / 100;
        let asleep_now = asleep();
        let fell_asleep = asleep_now.saturating_sub(asleep_at_trim);
        asleep_at_trim = asleep_at_trim.min(asleep_now);
        if (since >= 64 && since >= open / 4)
            || (drained >= 10_000 && drained >= queued_now)
            || burst_over
            || (fell_asleep >= 64 && fell_asleep >= open / 4)
        {
            asleep_at_trim = asleep_now;
            trim();
            closed_at_trim = closed_now;
            queued_peak = queued_now;
            moved_at_trim = moved_now;
        }
    }
}

/// Set glibc malloc's thresholds once, at start, before any thread.
///
/// By default glibc raises its trim threshold to twice the largest block it
/// ever handed out through mmap (up to 64 MB): after one large buffer was
/// freed, a thread arena's free top is never given back, and `malloc_trim`
/// does not trim a thread arena's top either. Measured: 10,000 connections
/// that came and went left 20 MB free but resident in two worker arenas
/// (RSS 14.1 MB against 6.4 MB idle). Fixed thresholds turn that adjustment
/// off: a free top over 256 KiB goes back at once, and blocks of 1 MiB and
/// more are mapped on their own (and unmapped when freed).
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc's parameters; called at start, before
    // other threads allocate.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
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
