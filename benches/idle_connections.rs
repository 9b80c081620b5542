//! Footprint (issue 15): what an idle MQTT connection costs Tern and Mosquitto
//! in resident memory, per transport, side by side in one run, and whether the
//! memory goes back once the connections (or a burst of load) are gone.
//!
//! For each transport (plain TCP; TLS, a throw-away CA and server certificate
//! for 127.0.0.1 from rcgen, rustls on the client side; WebSocket, plain `ws`
//! with subprotocol "mqtt") and each broker, a fresh broker with only that
//! listener on 127.0.0.1:
//!
//! 1. Tern (`TERN_BIN`, default the release `tern` Cargo built with this
//!    bench) runs on a config with the listener, `[auth] allow_anonymous =
//!    true`, the durable store (`[storage] in_memory = false`, its own data
//!    dir, as in production), `[limits] max_connections = N + 100` (the
//!    default, 10,000, leaves no room above N = 10,000; a semaphore, no
//!    memory) and `--log warn`; Mosquitto (`MOSQUITTO`, default
//!    `/usr/sbin/mosquitto`) on `listener PORT 127.0.0.1`, `allow_anonymous
//!    true`, `certfile`/`keyfile` for TLS, `protocol websockets` for WS (with
//!    an unused plain listener besides: 2.0.x does not start with a WebSocket
//!    listener alone), its defaults otherwise. Both start with their soft fd
//!    limit at the hard one, and are readied by a TCP connect to the port.
//! 2. VmRSS (/proc/PID/status) once it has settled: "idle".
//! 3. N idle MQTT 3.1.1 connections (`N`, default 10,000), 256 handshakes at a
//!    time, each a CONNECT with a 64-byte client id, clean session, keep alive
//!    600 s, waiting for its CONNACK; 2 s later VmRSS again: "open". KB per
//!    connection = (open - idle) / N. Then VmRSS once more 10 s later
//!    ("asleep": Tern's idle connections hibernate after `limits.hibernate_after`,
//!    10 s by default, written into its config). Every connection must still
//!    be open then (a peek at each socket) and the broker must hold a
//!    descriptor for each, else the run fails.
//! 4. Each sends DISCONNECT and closes (TLS close_notify, WebSocket close);
//!    once the broker is back to its idle descriptors, VmRSS is polled until
//!    it stops moving (at least 3 s after closing: Tern hands freed memory back
//!    ~2 s after the connection count falls; at most 10 s): "after", also as a
//!    percentage of idle.
//!
//! And "after a burst of load" over plain TCP: a fresh broker's idle RSS, then
//! `tern-bench --scenario fan-in --qos 1 --pubs 16 --subs 1` at full speed for
//! 5 s, and RSS 5 s after it ended, as a percentage of idle (the peak is
//! tern-bench's `--pid` sampling).
//!
//! The fd limit: this process raises its soft limit to the hard one and caps N
//! at the hard limit less 256 (each side holds a descriptor per connection), with
//! a note when it had to.
//!
//! `cargo bench --bench idle_connections` (about 1.5 minutes once built, at
//! N = 10,000 or 2,000 alike: the fixed waits dominate);
//! `N=2000 cargo bench --bench idle_connections`; `TERN_BIN=path/to/tern` for
//! another build. Prints a Markdown table (also `target/bench/idle/idle.md`) and
//! writes the raw figures as JSON lines to `target/bench/idle/results.jsonl`. A
//! step that fails (a broker that does not start or exits, a refused or dropped
//! connection, tern-bench failing) ends the run with a non-zero exit and the
//! reason; every wait has a timeout. Not a test: `cargo test --all-targets` runs
//! it with 20 connections and short waits (Tern alone if Mosquitto is missing),
//! writing to `target/bench/idle-smoke/`.

mod common;

#[allow(dead_code)]
#[path = "../tests/common/pki.rs"]
mod pki;

use bytes::{Bytes, BytesMut};
use common::{bench_mode, fd_limit_of, raise_fd_limit, rss_kb};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern::protocol::{self, Connect, Packet, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Handshakes in flight at once.
const CONCURRENCY: usize = 256;
/// Descriptors each side keeps besides the connections (listener, store files,
/// epoll, logs, runtime).
const FD_SLACK: u64 = 256;
const DEFAULT_N: usize = 10_000;
const CLIENT_ID_LEN: usize = 64;
const KEEP_ALIVE: u16 = 600;
/// One connection's TCP connect + TLS/WebSocket handshake + CONNECT/CONNACK.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DISCONNECT: [u8; 2] = [0xE0, 0x00];
/// RSS samples while waiting for it to settle.
const POLL: Duration = Duration::from_millis(250);

/// The figures under `cargo bench`; a smoke run under `cargo test`.
struct Scale {
    default_n: usize,
    idle_min: Duration,
    idle_max: Duration,
    /// After the last CONNACK, before "open" is read.
    open_wait: Duration,
    /// Tern's `limits.hibernate_after` (the default under `cargo bench`);
    /// "asleep" is read this long plus `open_wait` after the last CONNACK.
    hibernate_after: Duration,
    after_min: Duration,
    after_max: Duration,
    /// RSS has settled once it moved less than 1% (and 256 KiB) over this long.
    window: Duration,
    burst: &'static str,
    burst_drain: &'static str,
    burst_after: Duration,
}

fn scale() -> Scale {
    if bench_mode() {
        Scale {
            default_n: DEFAULT_N,
            idle_min: Duration::from_secs(1),
            idle_max: Duration::from_secs(5),
            open_wait: Duration::from_secs(2),
            hibernate_after: Duration::from_secs(10),
            after_min: Duration::from_secs(3),
            after_max: Duration::from_secs(10),
            window: Duration::from_secs(2),
            burst: "5s",
            burst_drain: "3s",
            burst_after: Duration::from_secs(5),
        }
    } else {
        Scale {
            default_n: 20,
            idle_min: Duration::from_millis(200),
            idle_max: Duration::from_secs(1),
            open_wait: Duration::from_millis(200),
            hibernate_after: Duration::from_millis(300),
            after_min: Duration::from_millis(200),
            after_max: Duration::from_secs(1),
            window: Duration::from_millis(250),
            burst: "1s",
            burst_drain: "1s",
            burst_after: Duration::from_millis(200),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Broker {
    Tern,
    Mosquitto,
}

impl Broker {
    fn key(self) -> &'static str {
        match self {
            Broker::Tern => "tern",
            Broker::Mosquitto => "mosquitto",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Tls,
    Ws,
}

impl Transport {
    fn key(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Transport::Tcp => "plain TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WebSocket",
        }
    }
}

/// What the whole run shares.
struct Ctx {
    sc: Scale,
    n: usize,
    fd_hard: u64,
    tern: PathBuf,
    tern_bench: PathBuf,
    mosquitto: Option<PathBuf>,
    pki: pki::Pki,
    tls: Arc<rustls::ClientConfig>,
    /// Configs, data dirs and broker logs, one subdirectory per broker run.
    work: PathBuf,
    rt: tokio::runtime::Runtime,
}

type Res<T> = Result<T, String>;

fn main() {
    let start = Instant::now();
    if let Err(e) = run() {
        eprintln!("\nidle_connections FAILED: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "idle_connections: done in {:.0} s",
        start.elapsed().as_secs_f64()
    );
}

fn run() -> Res<()> {
    let sc = scale();
    let mut notes = Vec::new();
    let fd_hard = raise_fd_limit().map_err(|e| format!("raising RLIMIT_NOFILE: {e}"))?;
    let wanted = match std::env::var("N") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("N={v:?} is not a positive number"))?,
        Err(_) => sc.default_n,
    };
    let max_n = usize::try_from(fd_hard.saturating_sub(FD_SLACK)).unwrap_or(usize::MAX);
    if max_n == 0 {
        return Err(format!(
            "the hard fd limit ({fd_hard}) leaves no room for connections"
        ));
    }
    let n = wanted.min(max_n);
    if n < wanted {
        let note = format!(
            "N capped at {n} (asked for {wanted}): the hard fd limit is {fd_hard} and cannot be \
             raised here; each side needs a descriptor per connection plus {FD_SLACK}"
        );
        eprintln!("NOTE: {note}");
        notes.push(note);
    }

    let tern = std::env::var_os("TERN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tern").into());
    let tern_bench = PathBuf::from(env!("CARGO_BIN_EXE_tern-bench"));
    let mosquitto = std::env::var_os("MOSQUITTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/sbin/mosquitto".into());
    let mosquitto = if mosquitto.is_file() {
        Some(mosquitto)
    } else if bench_mode() {
        return Err(format!(
            "Mosquitto not found at {} (apt-get install mosquitto, or MOSQUITTO=path)",
            mosquitto.display()
        ));
    } else {
        eprintln!(
            "smoke run: no Mosquitto at {}, Tern only",
            mosquitto.display()
        );
        None
    };
    for (what, p) in [("tern", &tern), ("tern-bench", &tern_bench)] {
        if !p.is_file() {
            return Err(format!("{what} binary not found at {}", p.display()));
        }
    }

    // target/<profile>/tern -> target/bench/idle
    let target = Path::new(env!("CARGO_BIN_EXE_tern"))
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let out = target
        .join("bench")
        .join(if bench_mode() { "idle" } else { "idle-smoke" });
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // Data dirs on the target's filesystem, not a tmpfs /tmp, as in production.
    let work = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&out)
        .map_err(|e| format!("temp dir in {}: {e}", out.display()))?;

    let pki = pki::Pki::new();
    let mut tls = (*pki.client_config(None)).clone();
    // Every device's first connection: a full handshake, no resumption.
    tls.resumption = rustls::client::Resumption::disabled();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let ctx = Ctx {
        sc,
        n,
        fd_hard,
        tern,
        tern_bench,
        mosquitto,
        pki,
        tls: Arc::new(tls),
        work: work.path().to_path_buf(),
        rt,
    };
    eprintln!(
        "idle_connections: N = {n}, fd limit {fd_hard}; tern {}, mosquitto {}",
        ctx.tern.display(),
        ctx.mosquitto
            .as_ref()
            .map_or("(none)".into(), |p| p.display().to_string())
    );
    let mut work = work;
    measure_all(&ctx, &out, notes).map_err(|e| {
        // The brokers' configs and logs, for a look at what went wrong.
        work.disable_cleanup(true);
        format!(
            "{e}\n(configs, data dirs and logs kept in {})",
            ctx.work.display()
        )
    })
}

/// Every broker and transport, the burst, and the report.
fn measure_all(ctx: &Ctx, out: &Path, notes: Vec<String>) -> Res<()> {
    let n = ctx.n;
    let brokers: Vec<Broker> = if ctx.mosquitto.is_some() {
        vec![Broker::Tern, Broker::Mosquitto]
    } else {
        vec![Broker::Tern]
    };
    let results_path = out.join("results.jsonl");
    let mut results =
        File::create(&results_path).map_err(|e| format!("{}: {e}", results_path.display()))?;
    let mut record = |v: serde_json::Value| -> Res<()> {
        writeln!(results, "{v}").map_err(|e| format!("{}: {e}", results_path.display()))
    };

    let mut rows: Vec<(Transport, BTreeMap<&'static str, Idle>)> = Vec::new();
    for transport in [Transport::Tcp, Transport::Tls, Transport::Ws] {
        let mut by = BTreeMap::new();
        for &b in &brokers {
            let r = idle(ctx, b, transport)?;
            record(r.json(b, transport, n))?;
            by.insert(b.key(), r);
        }
        rows.push((transport, by));
    }
    let mut bursts = BTreeMap::new();
    for &b in &brokers {
        let r = burst(ctx, b)?;
        record(json!({
            "broker": b.key(),
            "scenario": "burst",
            "transport": "tcp",
            "rss_idle_kb": r.idle,
            "rss_peak_kb": r.peak,
            "rss_after_kb": r.after,
            "after_pct_of_idle": pct(r.after, r.idle),
            "after_secs": r.after_wait.as_secs_f64(),
            "tern_bench": r.bench,
        }))?;
        bursts.insert(b.key(), r);
    }

    // The table.
    let mib = |kb: u64| kb as f64 / 1024.0;
    let mut md = String::new();
    let titles: Vec<&str> = brokers
        .iter()
        .map(|b| match b {
            Broker::Tern => "Tern",
            Broker::Mosquitto => "Mosquitto",
        })
        .collect();
    md += &format!(
        "{n} idle MQTT 3.1.1 connections per broker and transport (keep alive 600 s, 64-byte \
         client ids); RSS in MiB, KB = KiB of VmRSS.\n\n"
    );
    md += "| transport |";
    for t in &titles {
        md += &format!(
            " {t} KB/conn after {:.0} s |",
            ctx.sc.open_wait.as_secs_f64()
        );
    }
    for t in &titles {
        md += &format!(
            " {t} KB/conn after {:.0} s |",
            (ctx.sc.open_wait + ctx.sc.hibernate_after).as_secs_f64()
        );
    }
    for t in &titles {
        md += &format!(" {t} RSS idle / open / after (after % of idle) |");
    }
    md += "\n|---|";
    md += &"---:|".repeat(2 * titles.len());
    md += &"---|".repeat(titles.len());
    md += "\n";
    for (t, by) in &rows {
        md += &format!("| {} |", t.title());
        for b in &brokers {
            md += &format!(" {:.2} |", by[b.key()].kb_per_conn(n));
        }
        for b in &brokers {
            md += &format!(" {:.2} |", by[b.key()].kb_per_conn_asleep(n));
        }
        for b in &brokers {
            let r = &by[b.key()];
            md += &format!(
                " {:.1} / {:.1} / {:.1}{} ({:.0}%) |",
                mib(r.idle),
                mib(r.open),
                mib(r.after),
                if r.settled { "" } else { "*" },
                pct(r.after, r.idle)
            );
        }
        md += "\n";
    }
    md += &format!(
        "| plain TCP, a {} burst (16 publishers -> 1 subscriber, QoS 1, full speed): idle / \
         peak / {:.0} s after |",
        ctx.sc.burst,
        ctx.sc.burst_after.as_secs_f64()
    );
    md += &" - |".repeat(2 * brokers.len());
    for b in &brokers {
        let r = &bursts[b.key()];
        md += &format!(
            " {:.1} / {} / {:.1} ({:.0}%) |",
            mib(r.idle),
            r.peak.map_or("?".into(), |p| format!("{:.1}", mib(p))),
            mib(r.after),
            pct(r.after, r.idle)
        );
    }
    md += "\n\n";
    for (t, by) in &rows {
        let parts: Vec<String> = brokers
            .iter()
            .map(|b| {
                let r = &by[b.key()];
                format!(
                    "{} opened in {:.1} s, after read {:.1} s after closing",
                    b.key(),
                    r.open_time.as_secs_f64(),
                    r.after_wait.as_secs_f64()
                )
            })
            .collect();
        md += &format!("- {}: {}\n", t.title(), parts.join("; "));
    }
    for b in &brokers {
        let r = &bursts[b.key()];
        md += &format!("- burst, {}: {}\n", b.key(), r.summary);
    }
    if rows.iter().any(|(_, by)| by.values().any(|r| !r.settled)) {
        md += "- *: RSS was still moving (or the broker had not closed every socket) when \
               \"after\" was read, 10 s after closing.\n";
    }
    for (t, by) in &rows {
        for (b, r) in by {
            if !r.fds_back {
                md += &format!(
                    "- {} {b}: the broker still held {} descriptors when \"after\" was read \
                     ({} idle, {} open).\n",
                    t.title(),
                    r.fds[2],
                    r.fds[0],
                    r.fds[1]
                );
            }
        }
    }
    for (t, by) in &rows {
        for (b, r) in by {
            if r.close_failures > 0 {
                md += &format!(
                    "- {} {b}: {} of {n} connections did not close cleanly (DISCONNECT and \
                     close within {} s); dropped all the same.\n",
                    t.title(),
                    r.close_failures,
                    CLOSE_TIMEOUT.as_secs()
                );
            }
        }
    }
    for note in &notes {
        md += &format!("- {note}\n");
    }
    if ctx.mosquitto.is_some() {
        md += &format!(
            "- Mosquitto listens with a backlog of 100: with {CONCURRENCY} handshakes in flight \
             some SYNs are dropped and sent again a second later, which its open times include \
             (they are not what this bench measures).\n"
        );
        md += "- Mosquitto's WebSocket run has an unused plain listener besides (2.0.x does not \
               start with a WebSocket listener alone, mosquitto#2284), and 2.0.11 binds the \
               WebSocket one to every address whatever the `listener` line says \
               (libwebsockets, mosquitto#3045); the clients use 127.0.0.1 all the same.\n";
    }
    println!("\n{md}");
    let md_path = out.join("idle.md");
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    eprintln!(
        "table in {}, raw figures in {}",
        md_path.display(),
        results_path.display()
    );
    Ok(())
}

fn pct(after: u64, idle: u64) -> f64 {
    after as f64 * 100.0 / idle.max(1) as f64
}

/// One broker's figures for one transport.
struct Idle {
    idle: u64,
    /// `open_wait` after the last CONNACK: Tern's connections still awake.
    open: u64,
    /// `hibernate_after` later: Tern's hibernating.
    asleep: u64,
    after: u64,
    settled: bool,
    open_time: Duration,
    after_wait: Duration,
    close_failures: usize,
    fd_limit: Option<u64>,
    /// The broker's descriptors idle, open, after.
    fds: [usize; 3],
    /// Had it closed its side of every connection by the end?
    fds_back: bool,
}

impl Idle {
    fn kb_per_conn(&self, n: usize) -> f64 {
        (self.open as f64 - self.idle as f64) / n as f64
    }
    fn kb_per_conn_asleep(&self, n: usize) -> f64 {
        (self.asleep as f64 - self.idle as f64) / n as f64
    }
    fn json(&self, b: Broker, t: Transport, n: usize) -> serde_json::Value {
        json!({
            "broker": b.key(),
            "scenario": "idle",
            "transport": t.key(),
            "connections": n,
            "rss_idle_kb": self.idle,
            "rss_open_kb": self.open,
            "rss_asleep_kb": self.asleep,
            "rss_after_kb": self.after,
            "kb_per_conn": self.kb_per_conn(n),
            "kb_per_conn_asleep": self.kb_per_conn_asleep(n),
            "after_pct_of_idle": pct(self.after, self.idle),
            "after_settled": self.settled,
            "after_secs": self.after_wait.as_secs_f64(),
            "open_secs": self.open_time.as_secs_f64(),
            "close_failures": self.close_failures,
            "broker_fd_limit": self.fd_limit,
            "broker_fds": {"idle": self.fds[0], "open": self.fds[1], "after": self.fds[2]},
        })
    }
}

fn idle(ctx: &Ctx, broker: Broker, transport: Transport) -> Res<Idle> {
    let sc = &ctx.sc;
    let n = ctx.n;
    let label = format!("{} {}", broker.key(), transport.key());
    let mut b = start(
        ctx,
        broker,
        transport,
        &format!("{}-{}", broker.key(), transport.key()),
    )?;
    let idle = settle(&mut b, sc.idle_min, sc.window, sc.idle_max, None)?;
    let (fds_idle, idle) = (idle.fds.unwrap_or(0), idle.kb);
    eprintln!(
        "== {label}: idle {:.1} MiB; opening {n} connections",
        idle as f64 / 1024.0
    );
    let t0 = Instant::now();
    let tag = format!("{}-{}", broker.key(), transport.key());
    let conns = ctx
        .rt
        .block_on(open_all(b.addr, transport, n, ctx.tls.clone(), &tag))
        .map_err(|e| format!("{label}: {e}{}", b.log_tail()))?;
    let open_time = t0.elapsed();
    let opened = Instant::now();
    std::thread::sleep(sc.open_wait);
    let open = b.rss()?;
    // Tern's idle connections hibernate `hibernate_after` after their CONNACK.
    std::thread::sleep(
        (opened + sc.open_wait + sc.hibernate_after).saturating_duration_since(Instant::now()),
    );
    let asleep = b.rss()?;
    let dropped = conns.iter().filter(|c| c.closed_by_peer()).count();
    if dropped > 0 {
        return Err(format!(
            "{label}: the broker closed {dropped} of {n} idle connections within {:.1} s{}",
            (sc.open_wait + sc.hibernate_after).as_secs_f64(),
            b.log_tail()
        ));
    }
    // The broker holds a socket for each of them.
    let fds_open = fd_count(b.pid).unwrap_or(0);
    if fds_open < fds_idle + n {
        return Err(format!(
            "{label}: the broker holds {fds_open} descriptors with {n} connections open \
             ({fds_idle} idle)"
        ));
    }
    eprintln!(
        "   opened in {:.1} s; open {:.1} MiB ({:.2} KB/conn), {:.1} s later {:.1} MiB ({:.2} \
         KB/conn); closing",
        open_time.as_secs_f64(),
        open as f64 / 1024.0,
        (open as f64 - idle as f64) / n as f64,
        sc.hibernate_after.as_secs_f64(),
        asleep as f64 / 1024.0,
        (asleep as f64 - idle as f64) / n as f64
    );
    let close_failures = ctx.rt.block_on(close_all(conns));
    // Back to about its idle descriptors (a few may come and go: log files,
    // store segments).
    let fd_target = fds_idle + 16;
    let Settled {
        kb: after,
        took: after_wait,
        settled,
        fds: fds_after,
    } = settle(
        &mut b,
        sc.after_min,
        sc.window,
        sc.after_max,
        Some(fd_target),
    )?;
    let fds_after = fds_after.unwrap_or(0);
    eprintln!(
        "   after {:.1} MiB ({:.0}% of idle) {:.1} s after closing{}; descriptors {fds_idle} \
         idle, {fds_open} open, {fds_after} after",
        after as f64 / 1024.0,
        pct(after, idle),
        after_wait.as_secs_f64(),
        if settled { "" } else { " (still moving)" }
    );
    let fd_limit = fd_limit_of(b.pid);
    b.stop()?;
    Ok(Idle {
        idle,
        open,
        asleep,
        after,
        settled,
        open_time,
        after_wait,
        close_failures,
        fd_limit,
        fds: [fds_idle, fds_open, fds_after],
        fds_back: fds_after <= fd_target,
    })
}

struct Burst {
    idle: u64,
    peak: Option<u64>,
    after: u64,
    after_wait: Duration,
    bench: serde_json::Value,
    summary: String,
}

fn burst(ctx: &Ctx, broker: Broker) -> Res<Burst> {
    let sc = &ctx.sc;
    let mut b = start(
        ctx,
        broker,
        Transport::Tcp,
        &format!("{}-burst", broker.key()),
    )?;
    let idle = settle(&mut b, sc.idle_min, sc.window, sc.idle_max, None)?.kb;
    eprintln!(
        "== {} burst: idle {:.1} MiB; tern-bench fan-in QoS 1, 16 -> 1, {}",
        broker.key(),
        idle as f64 / 1024.0,
        sc.burst
    );
    let err_path = b.dir.join("tern-bench.err");
    let err_file = File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
    let mut cmd = Command::new(&ctx.tern_bench);
    cmd.args(["--addr", &b.addr.to_string()])
        .args([
            "--scenario",
            "fan-in",
            "--qos",
            "1",
            "--pubs",
            "16",
            "--subs",
            "1",
        ])
        .args(["--duration", sc.burst, "--drain", sc.burst_drain])
        .args(["--pid", &b.pid.to_string(), "--json", "--label", "burst"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err_file);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", ctx.tern_bench.display()))?;
    // Publishing, draining, and a generous margin for connecting.
    let limit = parse_secs(sc.burst) + parse_secs(sc.burst_drain) + Duration::from_secs(60);
    let output = wait_output(child, limit)
        .map_err(|e| format!("tern-bench against {}: {e}", broker.key()))?;
    b.alive()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !output.status.success() {
        return Err(format!(
            "tern-bench against {} failed ({}): {}{}",
            broker.key(),
            output.status,
            stderr.trim(),
            b.log_tail()
        ));
    }
    let bench: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("tern-bench printed no JSON: {stdout:?} {stderr:?}"))?;
    let received = bench["received"].as_u64().unwrap_or(0);
    if received == 0 {
        return Err(format!(
            "tern-bench against {} delivered nothing: {bench}{}",
            broker.key(),
            b.log_tail()
        ));
    }
    let peak = bench["rss_peak_kb"].as_u64();
    let t0 = Instant::now();
    std::thread::sleep(sc.burst_after);
    let after = b.rss()?;
    let after_wait = t0.elapsed();
    let summary = format!(
        "{:.0} msg/s delivered, {} sent, {} lost, {} errors",
        bench["rate"].as_f64().unwrap_or(0.0),
        bench["sent"],
        bench["lost"],
        bench["errors"]
    );
    eprintln!(
        "   {summary}; peak {}, {:.1} MiB {:.0} s after ({:.0}% of idle)",
        peak.map_or("?".into(), |p| format!("{:.1} MiB", p as f64 / 1024.0)),
        after as f64 / 1024.0,
        after_wait.as_secs_f64(),
        pct(after, idle)
    );
    b.stop()?;
    Ok(Burst {
        idle,
        peak,
        after,
        after_wait,
        bench,
        summary,
    })
}

/// "5s" -> 5 s (the scale's own strings only).
fn parse_secs(s: &str) -> Duration {
    Duration::from_secs(s.trim_end_matches('s').parse().unwrap_or(10))
}

/// A child's output, or an error (and the child killed) past `limit`.
fn wait_output(mut child: Child, limit: Duration) -> Res<std::process::Output> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| e.to_string()),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {} s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A broker we started; killed if dropped (so a failed run leaves none behind).
struct Running {
    name: String,
    child: Child,
    pid: u32,
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Running {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        if tail.is_empty() {
            format!(" ({}: empty)", self.log.display())
        } else {
            format!(
                "\n  last lines of {}:\n    {}",
                self.log.display(),
                tail.join("\n    ")
            )
        }
    }

    fn alive(&mut self) -> Res<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited ({st}){}", self.name, self.log_tail())),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    fn rss(&mut self) -> Res<u64> {
        self.alive()?;
        rss_kb(self.pid)
            .ok_or_else(|| format!("{}: no VmRSS in /proc/{}/status", self.name, self.pid))
    }

    /// SIGTERM, and an error if it has not exited within STOP_TIMEOUT.
    fn stop(mut self) -> Res<()> {
        self.alive()?;
        // SAFETY: kill(2) on the child we started; no memory involved.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // Segments and logs of this run are not needed any more.
                let _ = std::fs::remove_dir_all(self.dir.join("data"));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{} did not stop within {} s of SIGTERM{}",
            self.name,
            STOP_TIMEOUT.as_secs(),
            self.log_tail()
        ))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Start `broker` with only a `transport` listener on 127.0.0.1, in a directory
/// of its own under the run's work dir, and wait until it accepts.
fn start(ctx: &Ctx, broker: Broker, transport: Transport, name: &str) -> Res<Running> {
    let dir = ctx.work.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = free_port()?;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let cert = ctx.pki.path("server.pem");
    let key = ctx.pki.path("server.key");
    let (bin, config) = match broker {
        Broker::Tern => {
            let mut c = format!("[[listeners]]\nbind = \"{addr}\"\n");
            match transport {
                Transport::Tcp => {}
                Transport::Tls => {
                    c += &format!("tls = {}\n", ctx.pki.tls_toml(false, false, false))
                }
                Transport::Ws => c += "websocket = true\n",
            }
            c += &format!(
                "[auth]\nallow_anonymous = true\n[storage]\nin_memory = false\ndir = {:?}\n\
                 [limits]\nmax_connections = {}\nhibernate_after = \"{}ms\"\n",
                dir.join("data"),
                ctx.n + 100,
                ctx.sc.hibernate_after.as_millis()
            );
            (ctx.tern.clone(), ("tern.toml", c))
        }
        Broker::Mosquitto => {
            let mut c = format!("listener {port} 127.0.0.1\nallow_anonymous true\n");
            match transport {
                Transport::Tcp => {}
                Transport::Tls => {
                    c += &format!("certfile {}\nkeyfile {}\n", cert.display(), key.display())
                }
                Transport::Ws => {
                    // Mosquitto 2.0.x does not start with a WebSocket listener
                    // alone ("Unable to start any listening sockets",
                    // eclipse-mosquitto/mosquitto#2284, #2578): the
                    // libwebsockets listener is not one of its own, so it also
                    // gets a plain one on another port, which no client uses.
                    c = format!(
                        "listener {} 127.0.0.1\n{c}protocol websockets\n",
                        free_port()?
                    );
                }
            }
            let bin = ctx.mosquitto.clone().ok_or("no Mosquitto")?;
            (bin, ("mosquitto.conf", c))
        }
    };
    let config_path = dir.join(config.0);
    std::fs::write(&config_path, &config.1)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let log = dir.join("broker.log");
    let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&bin);
    cmd.arg("-c").arg(&config_path);
    if broker == Broker::Tern {
        cmd.args(["--log", "warn"]);
    }
    // The config file is the whole config: no `TERN_*` variable of ours (such
    // as `TERN_BIN`) may reach the broker, which reads them as config keys.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TERN_") {
            cmd.env_remove(k);
        }
    }
    let hard = ctx.fd_hard;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setrlimit(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: hard,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut running = Running {
        name: format!("{} ({} listener on {addr})", broker.key(), transport.key()),
        pid: child.id(),
        child,
        addr,
        dir,
        log,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        running.alive()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} not accepting connections within {} s{}",
                running.name,
                START_TIMEOUT.as_secs(),
                running.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match fd_limit_of(running.pid) {
        Some(l) if l >= ctx.n as u64 + FD_SLACK => {}
        other => {
            return Err(format!(
                "{}: its fd limit is {other:?}, short of the {} connections",
                running.name, ctx.n
            ))
        }
    }
    Ok(running)
}

/// The number of descriptors a process holds (None once it is gone).
fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A settled reading.
struct Settled {
    kb: u64,
    /// How long it took.
    took: Duration,
    /// false: `max` ran out first.
    settled: bool,
    fds: Option<usize>,
}

/// Samples VmRSS every POLL until it has moved by less than 1% (and 256 KiB)
/// over the last `window`, reading for at least `min` and at most `max`; with
/// `fd_target`, the window starts only once the broker holds at most that many
/// descriptors (its connections are really closed).
fn settle(
    b: &mut Running,
    min: Duration,
    window: Duration,
    max: Duration,
    fd_target: Option<usize>,
) -> Res<Settled> {
    let t0 = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut fds_back: Option<Duration> = fd_target.is_none().then_some(Duration::ZERO);
    loop {
        let now = t0.elapsed();
        let kb = b.rss()?;
        let fds = fd_count(b.pid);
        if fds_back.is_none() && fds.zip(fd_target).is_some_and(|(f, t)| f <= t) {
            fds_back = Some(now);
        }
        samples.push((now, kb));
        if let Some(since) = fds_back {
            if now >= min && now - since >= window {
                let recent = samples.iter().filter(|(t, _)| now - *t <= window);
                let (lo, hi) =
                    recent.fold((u64::MAX, 0), |(lo, hi), &(_, v)| (lo.min(v), hi.max(v)));
                if hi - lo <= (kb / 100).max(256) {
                    return Ok(Settled {
                        kb,
                        took: now,
                        settled: true,
                        fds,
                    });
                }
            }
        }
        if now >= max {
            return Ok(Settled {
                kb,
                took: now,
                settled: false,
                fds,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// A 3.1.1 CONNECT: clean session, keep alive 600 s, the given client id.
fn connect_packet(id: &str) -> Bytes {
    let c = Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: KEEP_ALIVE,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }));
    let mut b = BytesMut::new();
    // INVARIANT: a CONNECT of our own making always encodes.
    protocol::encode(&c, ProtocolVersion::V311, &mut b).expect("CONNECT encodes");
    b.freeze()
}

/// `tag-0000001` padded with 'x' to 64 bytes.
fn client_id(tag: &str, i: usize) -> String {
    let mut id = format!("{tag}-{i:08}-");
    while id.len() < CLIENT_ID_LEN {
        id.push('x');
    }
    id.truncate(CLIENT_ID_LEN);
    id
}

fn check_connack(a: &[u8]) -> Res<()> {
    // CONNACK, remaining length 2, no session present, accepted.
    if a == [0x20, 0x02, 0x00, 0x00] {
        Ok(())
    } else {
        Err(format!("unexpected CONNACK {a:02x?}"))
    }
}

/// An open, logged-in idle connection.
enum Held {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Held {
    fn tcp(&self) -> &TcpStream {
        match self {
            Held::Tcp(s) => s,
            Held::Tls(s) => s.get_ref().0,
            Held::Ws(s) => s.get_ref(),
        }
    }

    /// Has the broker closed it? A non-blocking peek: 0 bytes is EOF, EAGAIN
    /// is an open idle socket; nothing is consumed.
    fn closed_by_peer(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv(2) into a 1-byte buffer we own, on a socket we own.
        let r = unsafe {
            libc::recv(
                self.tcp().as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        r == 0 || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN))
    }

    /// DISCONNECT, then a clean close of the transport.
    async fn close(self) -> Res<()> {
        let e = |e: std::io::Error| e.to_string();
        match self {
            Held::Tcp(mut s) => {
                s.write_all(&DISCONNECT).await.map_err(e)?;
                s.shutdown().await.map_err(e)
            }
            Held::Tls(mut s) => {
                s.write_all(&DISCONNECT).await.map_err(e)?;
                // close_notify, then FIN.
                s.shutdown().await.map_err(e)
            }
            Held::Ws(mut s) => {
                s.send(Message::Binary(Bytes::from_static(&DISCONNECT)))
                    .await
                    .map_err(|e| e.to_string())?;
                SinkExt::close(&mut s).await.map_err(|e| e.to_string())
            }
        }
    }
}

async fn mqtt_login<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, connect: &[u8]) -> Res<()> {
    s.write_all(connect)
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    s.flush()
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut a = [0u8; 4];
    s.read_exact(&mut a)
        .await
        .map_err(|e| format!("reading CONNACK: {e}"))?;
    check_connack(&a)
}

async fn open_one(
    addr: SocketAddr,
    transport: Transport,
    id: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Res<Held> {
    let connect = connect_packet(id);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    match transport {
        Transport::Tcp => {
            let mut s = tcp;
            mqtt_login(&mut s, &connect).await?;
            Ok(Held::Tcp(s))
        }
        Transport::Tls => {
            let name = ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let mut s = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            mqtt_login(&mut s, &connect).await?;
            Ok(Held::Tls(Box::new(s)))
        }
        Transport::Ws => {
            let mut req = format!("ws://{addr}/mqtt")
                .into_client_request()
                .map_err(|e| e.to_string())?;
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            // tungstenite checks that the server chose the subprotocol asked for.
            let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
                .await
                .map_err(|e| format!("WebSocket handshake: {e}"))?;
            ws.send(Message::Binary(connect))
                .await
                .map_err(|e| format!("sending CONNECT: {e}"))?;
            // One MQTT packet may span WebSocket messages [MQTT-6.0.0-2].
            let mut got = Vec::new();
            while got.len() < 4 {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) => {
                        return Err(format!("unexpected WebSocket message {other:?}"))
                    }
                    Some(Err(e)) => return Err(format!("reading CONNACK: {e}")),
                    None => return Err("closed before CONNACK".into()),
                }
            }
            check_connack(&got)?;
            Ok(Held::Ws(Box::new(ws)))
        }
    }
}

/// Open `n` connections, CONCURRENCY handshakes at a time. Any failure fails
/// the whole (the rest give up early), with a count of the reasons.
async fn open_all(
    addr: SocketAddr,
    transport: Transport,
    n: usize,
    tls: Arc<rustls::ClientConfig>,
    tag: &str,
) -> Res<Vec<Held>> {
    let sem = Arc::new(Semaphore::new(CONCURRENCY));
    let failed = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (sem, failed, tls) = (sem.clone(), failed.clone(), tls.clone());
        let id = client_id(tag, i);
        set.spawn(async move {
            // INVARIANT: the semaphore is never closed.
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            if failed.load(Ordering::Relaxed) {
                return Err("not tried after an earlier failure".to_string());
            }
            let r = match tokio::time::timeout(OPEN_TIMEOUT, open_one(addr, transport, &id, tls))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no CONNACK within {} s", OPEN_TIMEOUT.as_secs())),
            };
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            r
        });
    }
    let mut conns = Vec::with_capacity(n);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => *errors.entry(e).or_default() += 1,
            Err(e) => *errors.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    if errors.is_empty() {
        return Ok(conns);
    }
    let failures: usize = errors.values().sum();
    let mut reasons: Vec<(usize, String)> = errors.into_iter().map(|(k, v)| (v, k)).collect();
    reasons.sort_by(|a, b| b.cmp(a));
    let shown: Vec<String> = reasons
        .iter()
        .take(6)
        .map(|(v, k)| format!("{v} x {k}"))
        .collect();
    Err(format!(
        "{failures} of {n} connections failed ({} opened): {}",
        conns.len(),
        shown.join("; ")
    ))
}

/// Close every connection, CONCURRENCY at a time; the number that failed to
/// close cleanly (reported, not fatal: the socket is dropped either way).
async fn close_all(conns: Vec<Held>) -> usize {
    let sem = Arc::new(Semaphore::new(CONCURRENCY));
    let mut set = JoinSet::new();
    for c in conns {
        let sem = sem.clone();
        set.spawn(async move {
            // INVARIANT: the semaphore is never closed.
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            matches!(
                tokio::time::timeout(CLOSE_TIMEOUT, c.close()).await,
                Ok(Ok(()))
            )
        });
    }
    let mut failures = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(true)) {
            failures += 1;
        }
    }
    failures
}
