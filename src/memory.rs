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

/// Trim after enough connections have closed or fallen asleep since the last
/// trim (a quarter of those still open, and at least 64) and once more when
/// the closing or falling asleep has stopped (a tick without one), after a
/// work-queue backlog drained,
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
    let mut closed_last = closed_at_trim;
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
    let mut asleep_last = asleep_at_trim;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (closed_now, open) = closed();
        let since = closed_now.saturating_sub(closed_at_trim);
        // The closing has stopped: what the last ones held (a quarter of
        // those open may be few, and their blocks are what pinned the pages
        // the earlier trims could not give back) goes back too.
        let closing_over = closed_now == closed_last && since > 0 && (since >= 64 || open == 0);
        closed_last = closed_now;
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
        // As with closing: once a wave of connections falling asleep is over.
        let sleeping_over = asleep_now == asleep_last && fell_asleep >= 64;
        asleep_last = asleep_now;
        if (since >= 64 && since >= open / 4)
            || closing_over
            || (drained >= 10_000 && drained >= queued_now)
            || burst_over
            || (fell_asleep >= 64 && fell_asleep >= open / 4)
            || sleeping_over
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

/// The glibc tunable `reexec_without_tcache` sets.
const TCACHE_TUNABLE: &str = "glibc.malloc.tcache_count";

/// Set in the environment of the re-executed broker.
const REEXECUTED: &str = "TERN_REEXECUTED";

/// Run the broker with glibc's per-thread cache off: execute this binary again,
/// once, with `glibc.malloc.tcache_count=0` added to `GLIBC_TUNABLES`, unless
/// the environment already names that tunable (an operator's own value wins:
/// `GLIBC_TUNABLES=glibc.malloc.tcache_count=7` is glibc's default).
///
/// Why: each thread keeps up to 7 freed blocks of each size up to 1 KiB in
/// its cache, out of its arena's reach. After a crowd of connections left,
/// those blocks lie scattered through the heap and each holds its page:
/// `malloc_trim` cannot give back what the caches hold. Measured (10,000 idle
/// connections, closed; `benches/idle_connections.rs`): RSS after closing
/// 129% of idle with the cache, 115% without; after a 5 s burst of QoS 1
/// load 132% against 110%; `benches/compare.sh` showed no throughput cost
/// (BENCHMARKS.md). The variable can only be read by glibc as the process
/// starts, hence the exec. Call it first thing in `main`, before any thread.
///
/// Returns only when nothing was to be done, or with the reason the exec
/// failed (the broker then runs with glibc's defaults).
pub fn reexec_without_tcache() -> Result<(), String> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::{CString, OsString};
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let current = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        // The marker: never a second time, whatever a glibc makes of the
        // variable it parsed (2.36 writes NULs into its original text).
        let named = current
            .as_bytes()
            .windows(TCACHE_TUNABLE.len())
            .any(|w| w == TCACHE_TUNABLE.as_bytes());
        if named || std::env::var_os(REEXECUTED).is_some() {
            return Ok(());
        }
        // SAFETY: getauxval only reads the auxiliary vector.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            // Set-id or with file capabilities (to bind port 443, say): glibc
            // ignores this tunable there, so an exec would change nothing.
            return Err(format!(
                "{TCACHE_TUNABLE}=0 is ignored by glibc for a privileged binary"
            ));
        }
        let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        if exe
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"ld-"))
        {
            // Started through the dynamic loader (`ld.so tern ...`): this
            // binary is not /proc/self/exe.
            return Err(format!(
                "not run again with {TCACHE_TUNABLE}=0 under the dynamic loader"
            ));
        }
        let mut tunables = current;
        if !tunables.is_empty() {
            tunables.push(":");
        }
        tunables.push(format!("{TCACHE_TUNABLE}=0"));
        let cstr = |v: OsString| CString::new(v.into_vec()).ok();
        let args: Option<Vec<CString>> = std::env::args_os().map(cstr).collect();
        let mut env: Vec<OsString> = std::env::vars_os()
            .filter(|(k, _)| k != "GLIBC_TUNABLES")
            .map(|(mut k, v)| {
                k.push("=");
                k.push(v);
                k
            })
            .collect();
        let mut tunables_var = OsString::from("GLIBC_TUNABLES=");
        tunables_var.push(tunables);
        env.push(tunables_var);
        env.push(format!("{REEXECUTED}=1").into());
        let env: Option<Vec<CString>> = env.into_iter().map(cstr).collect();
        let (Some(args), Some(env)) = (args, env) else {
            return Err("an argument or variable holds a NUL".into());
        };
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // execve itself, not execvp (what `Command::exec` calls): on a binary
        // the kernel cannot run (an aarch64 build under qemu-user without
        // binfmt, CI's smoke test) execve fails and the broker carries on,
        // where execvp handed the file to /bin/sh. /proc/self/exe: this very
        // binary, even if the file was replaced since (an upgrade in place).
        // SAFETY: the path, argv and envp are NUL-terminated strings and
        // NULL-terminated arrays that outlive the call; no thread exists yet.
        unsafe {
            libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "could not run again with {TCACHE_TUNABLE}=0: {err}"
        ));
    }
    #[allow(unreachable_code)]
    Ok(())
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
