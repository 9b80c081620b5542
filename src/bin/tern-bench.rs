//! `tern-bench`: an MQTT 3.1.1 load generator that works against any broker.
//!
//! Owns load generation and measurement only; it shares nothing with the broker but
//! the codec for the rare non-PUBLISH packets. A separate binary rather than a `tern`
//! subcommand so the broker binary carries no benchmark code, and so the load
//! generator can be pinned to its own core with `taskset`.
//!
//! Every payload is stamped with its send time, a per-publisher sequence number and
//! the publisher's index, so subscribers count lost, duplicate and out-of-order
//! messages and record latency in an HDR histogram.
//!
//! For durability measurements: `--persistent` gives the subscribers persistent
//! sessions (clean_session=0, stable client ids), and `--io-pid` reads the broker's
//! `/proc/PID/io` before publishing and after draining, reported per delivered
//! message.

use bytes::{Buf, BufMut, BytesMut};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tern::protocol::{self, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `--pubs` publishers on their own topics, `--subs` subscribers to all of them.
    FanIn,
    /// One publisher, `--subs` subscribers to its topic.
    FanOut,
    /// `--pubs` pairs: publisher i -> topic i -> subscriber i.
    Pairwise,
    /// Open `--connections` idle connections and measure accept time and memory.
    Idle,
    /// Tern's work queues: `--pubs` publishers, `--subs` competing consumers of
    /// one queue created by the first consumer's `$queue/<name>/<filter>`
    /// subscription; each message must reach exactly one consumer (QoS 1 acks).
    /// With `--fill-first` the consumers connect after publishing ends: a backlog
    /// fill, then its drain. Such a queue is capped by the broker's
    /// `limits.auto_queue_max_length` / `_bytes`: raise them for long runs.
    Queue,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tern-bench",
    about = "MQTT 3.1.1 load generator for any broker"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    #[arg(long, value_enum, default_value = "fan-in")]
    scenario: Scenario,
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 20: send time, sequence, publisher).
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 16)]
    pubs: usize,
    #[arg(long, default_value_t = 1)]
    subs: usize,
    /// Publishing time, e.g. "10s".
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    duration: Duration,
    /// Total messages per second across publishers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Broker pid: report its RSS (VmRSS) idle and peak.
    #[arg(long)]
    pid: Option<u32>,
    /// Connections for the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How long subscribers wait for stragglers after publishing stops.
    #[arg(long, default_value = "3s", value_parser = parse_dur)]
    drain: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Label for the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Subscribers use persistent sessions: clean_session=0 with the stable client
    /// id `tern-bench-sub-<i>` (any old session of that id is cleared first by a
    /// clean_session=1 connect and DISCONNECT); they send DISCONNECT after draining.
    /// Two runs with this flag against one broker at once take each other's ids.
    #[arg(long)]
    persistent: bool,
    /// Broker pid: read its /proc/PID/io (write_bytes, wchar) just before publishing
    /// and just after draining, and report both per delivered message.
    #[arg(long, value_name = "PID")]
    io_pid: Option<u32>,
    /// With --rate: spread the publishers' schedules evenly over each period, so the
    /// broker sees the total rate as evenly spaced messages instead of --pubs
    /// messages at once every --pubs/--rate seconds.
    #[arg(long)]
    stagger: bool,
    /// Queue scenario: publish first (the backlog builds with no consumer), then
    /// connect the consumers and drain it within --drain. Reports the broker's RSS
    /// at the end of the fill.
    #[arg(long)]
    fill_first: bool,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    tern::config::parse_duration(s)
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A process's write counters from `/proc/PID/io`.
#[derive(Copy, Clone)]
struct IoCounters {
    /// Bytes the process caused to be sent to the block layer (buffered writes are
    /// counted a whole page at a time, when a clean page becomes dirty).
    write_bytes: u64,
    /// Bytes passed to write()-family system calls (files, pipes; not send()).
    wchar: u64,
    /// Of write_bytes, dirty pages dropped before writeback (truncated, deleted).
    cancelled_write_bytes: u64,
}

fn io_counters(pid: u32) -> Option<IoCounters> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(IoCounters {
        write_bytes: field("write_bytes:")?,
        wchar: field("wchar:")?,
        cancelled_write_bytes: field("cancelled_write_bytes:")?,
    })
}

/// What subscribers saw, merged at the end.
struct Tally {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    first_rx: Option<u64>,
    last_rx: u64,
    latency_us: Histogram<u64>,
    /// Per subscriber, per publisher: bitmap of seen sequence numbers and the highest.
    seen: Vec<Vec<(Vec<u64>, u64)>>,
}

impl Tally {
    fn new(subs: usize, pubs: usize) -> Tally {
        Tally {
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            first_rx: None,
            last_rx: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            seen: vec![vec![(Vec::new(), 0); pubs]; subs],
        }
    }

    fn record(&mut self, sub: usize, payload: &[u8]) {
        if payload.len() < 20 {
            return;
        }
        let mut p = payload;
        let sent = p.get_u64();
        let seq = p.get_u64();
        let publisher = p.get_u32() as usize;
        let now = now_ns();
        self.received += 1;
        self.first_rx.get_or_insert(now);
        self.last_rx = now;
        let _ = self
            .latency_us
            .record((now.saturating_sub(sent) / 1000).max(1));
        let Some((bits, max)) = self.seen.get_mut(sub).and_then(|s| s.get_mut(publisher)) else {
            return;
        };
        let word = (seq / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        if bits[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        bits[word] |= bit;
        if seq + 1 < *max {
            self.out_of_order += 1;
        }
        *max = (*max).max(seq + 1);
    }

    fn unique(&self) -> u64 {
        self.seen
            .iter()
            .flatten()
            .map(|(bits, _)| bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>())
            .sum()
    }
}

/// Append a 3.1.1 PUBLISH with a stamped payload.
fn put_publish(
    buf: &mut BytesMut,
    topic: &str,
    qos: u8,
    pid: u16,
    size: usize,
    seq: u64,
    publisher: u32,
) {
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + size;
    buf.put_u8(0x30 | (qos << 1));
    tern::protocol::encode_vbi(remaining, buf).expect("a benchmark packet fits");
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic.as_bytes());
    if qos > 0 {
        buf.put_u16(pid);
    }
    buf.put_u64(now_ns());
    buf.put_u64(seq);
    buf.put_u32(publisher);
    buf.put_bytes(0x61, size - 20);
}

/// A fast parse of a PUBLISH (3.1.1) from the front of `buf`:
/// Some((qos, packet id, payload range)) and the packet length.
fn peek_packet(buf: &[u8]) -> Option<(u8, usize, usize)> {
    // Returns (first byte, header len, remaining length) when complete.
    let first = *buf.first()?;
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len += usize::from(b & 0x7F) * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    if buf.len() < i + len {
        return None;
    }
    Some((first, i, len))
}

async fn connect(addr: SocketAddr, id: &str, clean: bool) -> std::io::Result<TcpStream> {
    connect_session(addr, id, clean).await.map(|(s, _)| s)
}

/// CONNECT and wait for CONNACK; returns the stream and the session-present flag.
async fn connect_session(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> std::io::Result<(TcpStream, bool)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut b = BytesMut::new();
    let c = Packet::Connect(Box::new(protocol::Connect {
        version: ProtocolVersion::V311,
        clean_start: clean,
        keep_alive: 120,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }));
    protocol::encode(&c, ProtocolVersion::V311, &mut b).map_err(std::io::Error::other)?;
    s.write_all(&b).await?;
    let mut rb = BytesMut::with_capacity(64);
    loop {
        if let Some(p) = protocol::decode(&mut rb, Some(ProtocolVersion::V311), 1 << 20)
            .map_err(std::io::Error::other)?
        {
            match p {
                Packet::ConnAck(a) if !a.reason_code.is_error() => {
                    return Ok((s, a.session_present))
                }
                other => return Err(std::io::Error::other(format!("CONNECT refused: {other:?}"))),
            }
        }
        if s.read_buf(&mut rb).await? == 0 {
            return Err(std::io::Error::other("closed before CONNACK"));
        }
    }
}

/// Send DISCONNECT and wait (bounded) for the broker to close the connection, so
/// the session is settled before the client id connects again.
async fn disconnect(mut s: TcpStream) {
    if s.write_all(&[0xE0, 0x00]).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// SUBSCRIBE to `filter` and wait for the SUBACK. Returns what else arrived in
/// the same reads (a queue or retained messages may come before the SUBACK),
/// for the subscriber to start from.
async fn subscribe(s: &mut TcpStream, filter: &str, qos: u8) -> std::io::Result<BytesMut> {
    let mut b = BytesMut::new();
    b.put_u8(0x82);
    b.put_u8((2 + 2 + filter.len() + 1) as u8);
    b.put_u16(1);
    b.put_u16(filter.len() as u16);
    b.put_slice(filter.as_bytes());
    b.put_u8(qos);
    s.write_all(&b).await?;
    let mut rb = BytesMut::with_capacity(64 * 1024);
    loop {
        // Look for the SUBACK among the whole packets read so far.
        let mut at = 0;
        while let Some((first, h, len)) = peek_packet(&rb[at..]) {
            if first >> 4 == 9 {
                let code = rb.get(at + h + len - 1).copied().unwrap_or(0x80);
                if code == 0x80 {
                    return Err(std::io::Error::other("SUBSCRIBE refused"));
                }
                let mut rest = rb.split_off(at);
                rest.advance(h + len);
                rb.unsplit(rest);
                return Ok(rb);
            }
            at += h + len;
        }
        if s.read_buf(&mut rb).await? == 0 {
            return Err(std::io::Error::other("closed before SUBACK"));
        }
    }
}

struct Shared {
    args: Args,
    tally: RefCell<Tally>,
    sent: RefCell<u64>,
    acked: RefCell<u64>,
    errors: RefCell<Vec<String>>,
}

/// Returns the stream when the run ended on time and the session is persistent,
/// for a DISCONNECT after the final measurements.
/// Read, tally and acknowledge deliveries until `end`, starting from `rb` (what
/// arrived with the SUBACK).
async fn subscriber(
    idx: usize,
    mut rb: BytesMut,
    shared: Rc<Shared>,
    mut s: TcpStream,
    end: Instant,
) -> Option<TcpStream> {
    let qos = shared.args.qos;
    let mut wb = BytesMut::with_capacity(4096);
    loop {
        while let Some((first, h, len)) = peek_packet(&rb) {
            let kind = first >> 4;
            if kind == 3 {
                let pqos = (first >> 1) & 3;
                let body = &rb[h..h + len];
                let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut off = 2 + tlen;
                let mut pid = 0u16;
                if pqos > 0 {
                    pid = u16::from_be_bytes([body[off], body[off + 1]]);
                    off += 2;
                }
                shared.tally.borrow_mut().record(idx, &body[off..]);
                match pqos {
                    1 => {
                        wb.put_u8(0x40);
                        wb.put_u8(2);
                        wb.put_u16(pid);
                    }
                    2 => {
                        wb.put_u8(0x50);
                        wb.put_u8(2);
                        wb.put_u16(pid);
                    }
                    _ => {}
                }
            } else if kind == 6 {
                // PUBREL -> PUBCOMP
                let pid = u16::from_be_bytes([rb[h], rb[h + 1]]);
                wb.put_u8(0x70);
                wb.put_u8(2);
                wb.put_u16(pid);
            }
            rb.advance(h + len);
        }
        if !wb.is_empty() {
            if s.write_all(&wb).await.is_err() {
                break;
            }
            wb.clear();
        }
        let _ = qos;
        rb.reserve(64 * 1024);
        match tokio::time::timeout_at(end.into(), s.read_buf(&mut rb)).await {
            Err(_) => return shared.args.persistent.then_some(s),
            Ok(Ok(0)) | Ok(Err(_)) => {
                shared
                    .errors
                    .borrow_mut()
                    .push(format!("subscriber {idx} closed by broker"));
                return None;
            }
            Ok(Ok(_)) => {}
        }
    }
    None
}

/// Read acks without waiting; returns false when the connection is gone.
fn drain_acks(
    s: &TcpStream,
    rb: &mut BytesMut,
    wb: &mut BytesMut,
    credits: &mut usize,
    acked: &mut u64,
) -> bool {
    loop {
        rb.reserve(16 * 1024);
        match s.try_read_buf(rb) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    while let Some((first, h, len)) = peek_packet(rb) {
        let pid = if len >= 2 {
            u16::from_be_bytes([rb[h], rb[h + 1]])
        } else {
            0
        };
        match first >> 4 {
            // PUBACK, PUBCOMP: the exchange is over.
            4 | 7 => {
                *credits += 1;
                *acked += 1;
            }
            // PUBREC -> PUBREL
            5 => {
                wb.put_u8(0x62);
                wb.put_u8(2);
                wb.put_u16(pid);
            }
            _ => {}
        }
        rb.advance(h + len);
    }
    true
}

/// One publisher: writes batches of stamped PUBLISHes, as fast as the socket takes
/// them or at a fixed rate, keeping at most `--inflight` QoS 1/2 unacknowledged.
async fn publisher(
    idx: usize,
    topic: String,
    shared: Rc<Shared>,
    mut s: TcpStream,
    per_sec: f64,
    phase: f64,
) {
    let a = &shared.args;
    let qos = a.qos;
    let mut credits = if qos == 0 { usize::MAX } else { a.inflight };
    let mut acked = 0u64;
    let mut seq = 0u64;
    let mut pid: u16 = 0;
    let mut wb = BytesMut::with_capacity(64 * 1024);
    let mut rb = BytesMut::with_capacity(16 * 1024);
    let start = Instant::now();
    let deadline = start + a.duration;
    loop {
        if qos > 0 && !drain_acks(&s, &mut rb, &mut wb, &mut credits, &mut acked) {
            shared
                .errors
                .borrow_mut()
                .push(format!("publisher {idx} closed by broker"));
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let mut n = 64usize;
        let mut next_due = deadline;
        if per_sec > 0.0 {
            // `phase` (a fraction of one period, 0 unless --stagger) moves this
            // publisher's schedule earlier.
            let due = (now.duration_since(start).as_secs_f64() * per_sec + phase) as u64;
            n = due.saturating_sub(seq).min(64) as usize;
            next_due = start + Duration::from_secs_f64(((seq + 1) as f64 - phase) / per_sec);
        }
        n = n.min(credits);
        for _ in 0..n {
            pid = pid.wrapping_add(1).max(1);
            put_publish(&mut wb, &topic, qos, pid, a.size, seq, idx as u32);
            seq += 1;
        }
        if qos > 0 {
            credits -= n;
        }
        *shared.sent.borrow_mut() += n as u64;
        if !wb.is_empty() {
            if s.write_all(&wb).await.is_err() {
                shared
                    .errors
                    .borrow_mut()
                    .push(format!("publisher {idx} write failed"));
                break;
            }
            wb.clear();
        }
        if n == 0 {
            // Nothing may be sent now: wait for an ack or the next due time.
            let wait = next_due.min(deadline);
            if qos > 0 {
                tokio::select! {
                    _ = s.readable() => {}
                    _ = tokio::time::sleep_until(wait.into()) => {}
                }
            } else {
                tokio::time::sleep_until(wait.into()).await;
            }
        }
    }
    // Let the outstanding exchanges finish (bounded), then disconnect.
    let end = Instant::now() + Duration::from_secs(2);
    while qos > 0 && credits < a.inflight && Instant::now() < end {
        if !drain_acks(&s, &mut rb, &mut wb, &mut credits, &mut acked) {
            break;
        }
        if !wb.is_empty() {
            let _ = s.write_all(&wb).await;
            wb.clear();
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), s.readable()).await;
    }
    *shared.acked.borrow_mut() += acked;
    let _ = s.write_all(&[0xE0, 0x00]).await;
}

struct Report {
    label: String,
    scenario: Scenario,
    qos: u8,
    sent: u64,
    received: u64,
    expected: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    rate: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    rss_idle_kb: Option<u64>,
    rss_peak_kb: Option<u64>,
    errors: Vec<String>,
    persistent: bool,
    /// With --io-pid: the broker's write_bytes and wchar deltas over the run and the
    /// delivered messages they are divided by (None when /proc/PID/io was
    /// unreadable at either end).
    io: Option<IoDelta>,
}

struct IoDelta {
    write_bytes: u64,
    wchar: u64,
    cancelled_write_bytes: u64,
    msgs: u64,
}

impl IoDelta {
    fn per_msg(&self, bytes: u64) -> Option<f64> {
        (self.msgs > 0).then(|| bytes as f64 / self.msgs as f64)
    }
}

/// The topic publisher `p` of run `run_id` publishes to.
fn bench_topic(run_id: u32, p: usize) -> String {
    format!("bench/{run_id}/{p}")
}

/// Connect and subscribe every subscriber, all before anyone publishes; returns
/// each one's filter and stream.
async fn connect_subscribers(
    shared: &Shared,
    nsubs: usize,
    run_id: u32,
) -> Vec<(BytesMut, TcpStream)> {
    let a = &shared.args;
    let mut sub_streams = Vec::new();
    for i in 0..nsubs {
        let mut s = if a.persistent {
            connect_persistent_subscriber(shared, i).await
        } else {
            connect(a.addr, &format!("sub-{run_id}-{i}"), true)
                .await
                .unwrap_or_else(|e| panic!("subscriber {i}: {e}"))
        };
        let filter = match a.scenario {
            Scenario::FanIn => format!("bench/{run_id}/+"),
            Scenario::FanOut => bench_topic(run_id, 0),
            Scenario::Queue => format!("$queue/bench-{run_id}/bench/{run_id}/+"),
            _ => bench_topic(run_id, i),
        };
        // A queue delivers at least once: its consumers take QoS 1.
        let qos = if a.scenario == Scenario::Queue {
            a.qos.max(1)
        } else {
            a.qos
        };
        let early = subscribe(&mut s, &filter, qos)
            .await
            .unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
        sub_streams.push((early, s));
    }
    sub_streams
}

/// Subscriber `i` with a persistent session under a stable id, starting empty.
async fn connect_persistent_subscriber(shared: &Shared, i: usize) -> TcpStream {
    let addr = shared.args.addr;
    let id = format!("tern-bench-sub-{i}");
    // Clear whatever session an earlier run left under this id.
    let (old, _) = connect_session(addr, &id, true)
        .await
        .unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
    disconnect(old).await;
    let (s, present) = connect_session(addr, &id, false)
        .await
        .unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
    if present {
        shared.errors.borrow_mut().push(format!(
            "subscriber {i}: session present after clearing it with clean_session=1"
        ));
    }
    s
}

async fn connect_publishers(a: &Args, npubs: usize, run_id: u32) -> Vec<TcpStream> {
    let mut pub_streams = Vec::new();
    for i in 0..npubs {
        let s = connect(a.addr, &format!("pub-{run_id}-{i}"), true)
            .await
            .unwrap_or_else(|e| panic!("publisher {i}: {e}"));
        pub_streams.push(s);
    }
    pub_streams
}

/// Sample the broker's RSS every 100 ms until `until`; the task returns the peak.
fn spawn_rss_sampler(pid: Option<u32>, until: Instant) -> tokio::task::JoinHandle<Option<u64>> {
    tokio::task::spawn_local(async move {
        let mut peak = None::<u64>;
        loop {
            if let Some(r) = pid.and_then(rss_kb) {
                peak = Some(peak.map_or(r, |p: u64| p.max(r)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if Instant::now() > until {
                return peak;
            }
        }
    })
}

/// What was measured of the broker process around the run.
struct BrokerUse {
    rss_idle: Option<u64>,
    rss_peak: Option<u64>,
    io_before: Option<IoCounters>,
    io_after: Option<IoCounters>,
}

async fn run_traffic(args: Args) -> Report {
    let a = &args;
    let (npubs, nsubs) = match a.scenario {
        Scenario::FanIn => (a.pubs, a.subs),
        Scenario::FanOut => (1, a.subs),
        Scenario::Pairwise => (a.pubs, a.pubs),
        Scenario::Queue => (a.pubs, a.subs),
        Scenario::Idle => unreachable!(),
    };
    // Competing consumers share one tally, so a message delivered to two of
    // them counts as a duplicate.
    let tallies = if a.scenario == Scenario::Queue {
        1
    } else {
        nsubs
    };
    let shared = Rc::new(Shared {
        args: args.clone(),
        tally: RefCell::new(Tally::new(tallies, npubs)),
        sent: RefCell::new(0),
        acked: RefCell::new(0),
        errors: RefCell::new(Vec::new()),
    });
    let rss_idle = a.pid.and_then(rss_kb);
    let run_id = std::process::id();
    if a.scenario == Scenario::Queue && a.fill_first {
        return run_fill_then_drain(shared, npubs, nsubs, run_id, rss_idle).await;
    }
    // Subscribers first, all subscribed before anyone publishes.
    let sub_streams = connect_subscribers(&shared, nsubs, run_id).await;
    let pub_streams = connect_publishers(a, npubs, run_id).await;
    let per_sec = if a.rate > 0 {
        a.rate as f64 / npubs as f64
    } else {
        0.0
    };
    let io_before = a.io_pid.and_then(io_counters);
    let started = Instant::now();
    let sub_end = started + a.duration + a.drain;
    let mut sub_handles = Vec::new();
    for (i, (early, s)) in sub_streams.into_iter().enumerate() {
        sub_handles.push(tokio::task::spawn_local(subscriber(
            if a.scenario == Scenario::Queue { 0 } else { i },
            early,
            shared.clone(),
            s,
            sub_end,
        )));
    }
    let mut handles = Vec::new();
    for (i, s) in pub_streams.into_iter().enumerate() {
        let phase = if a.stagger {
            i as f64 / npubs as f64
        } else {
            0.0
        };
        handles.push(tokio::task::spawn_local(publisher(
            i,
            bench_topic(run_id, i),
            shared.clone(),
            s,
            per_sec,
            phase,
        )));
    }
    // Sample the broker's RSS while running.
    let mut rss_peak = rss_idle;
    let sampler = spawn_rss_sampler(a.pid, sub_end);
    let mut sub_streams = Vec::new();
    for h in sub_handles {
        if let Ok(Some(s)) = h.await {
            sub_streams.push(s);
        }
    }
    for h in handles {
        let _ = h.await;
    }
    // Draining is over: the subscribers have stopped reading.
    let io_after = a.io_pid.and_then(io_counters);
    // Persistent sessions end with a DISCONNECT (after the measurement above).
    let closing: Vec<_> = sub_streams
        .into_iter()
        .map(|s| tokio::task::spawn_local(disconnect(s)))
        .collect();
    for h in closing {
        let _ = h.await;
    }
    if let Ok(Some(p)) = sampler.await {
        rss_peak = Some(rss_peak.map_or(p, |r| r.max(p)));
    }
    let broker = BrokerUse {
        rss_idle,
        rss_peak,
        io_before,
        io_after,
    };
    report(&shared, nsubs, broker)
}

/// The queue scenario with `--fill-first`: the queue is created (and bound) by
/// one consumer that leaves at once, the publishers fill it, then `nsubs`
/// consumers drain it.
async fn run_fill_then_drain(
    shared: Rc<Shared>,
    npubs: usize,
    nsubs: usize,
    run_id: u32,
    rss_idle: Option<u64>,
) -> Report {
    let a = &shared.args;
    // Create and bind the queue, then leave: the backlog builds with no consumer.
    for (_, s) in connect_subscribers(&shared, 1, run_id).await {
        disconnect(s).await;
    }
    let pub_streams = connect_publishers(a, npubs, run_id).await;
    let mut handles = Vec::new();
    for (i, s) in pub_streams.into_iter().enumerate() {
        handles.push(tokio::task::spawn_local(publisher(
            i,
            bench_topic(run_id, i),
            shared.clone(),
            s,
            0.0,
            0.0,
        )));
    }
    for h in handles {
        let _ = h.await;
    }
    let rss_filled = a.pid.and_then(rss_kb);
    eprintln!(
        "backlog of {} messages: broker RSS at the end of the fill {} KB",
        *shared.sent.borrow(),
        opt(rss_filled)
    );
    let sub_streams = connect_subscribers(&shared, nsubs, run_id).await;
    let sub_end = Instant::now() + a.drain;
    let sampler = spawn_rss_sampler(a.pid, sub_end);
    let subs: Vec<_> = sub_streams
        .into_iter()
        .map(|(early, s)| {
            tokio::task::spawn_local(subscriber(0, early, shared.clone(), s, sub_end))
        })
        .collect();
    for h in subs {
        let _ = h.await;
    }
    let rss_peak = sampler.await.ok().flatten();
    let broker = BrokerUse {
        rss_idle,
        rss_peak: [rss_peak, rss_filled].into_iter().flatten().max(),
        io_before: None,
        io_after: None,
    };
    report(&shared, nsubs, broker)
}

/// The run's figures from what the subscribers tallied.
fn report(shared: &Shared, nsubs: usize, broker: BrokerUse) -> Report {
    let a = &shared.args;
    let t = shared.tally.borrow();
    let sent = *shared.sent.borrow();
    let per_msg_receivers = match a.scenario {
        Scenario::FanIn => nsubs as u64,
        Scenario::FanOut => nsubs as u64,
        _ => 1,
    };
    let expected = sent * per_msg_receivers;
    let unique = t.unique();
    let window = match t.first_rx {
        Some(first) => (t.last_rx.saturating_sub(first)) as f64 / 1e9,
        None => 0.0,
    };
    // Delivered rate over the span in which deliveries happened (at least the
    // publishing time, so a short burst does not look faster than it was).
    let span = window.max(a.duration.as_secs_f64() * 0.5).max(1e-3);
    let h = &t.latency_us;
    let errors = shared.errors.borrow().clone();
    Report {
        label: a.label.clone(),
        scenario: a.scenario,
        qos: a.qos,
        sent,
        received: t.received,
        expected,
        lost: expected.saturating_sub(unique),
        duplicates: t.duplicates,
        out_of_order: t.out_of_order,
        rate: unique as f64 / span,
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        rss_idle_kb: broker.rss_idle,
        rss_peak_kb: broker.rss_peak,
        errors,
        persistent: a.persistent,
        io: match (broker.io_before, broker.io_after) {
            (Some(b), Some(e)) => Some(IoDelta {
                write_bytes: e.write_bytes.saturating_sub(b.write_bytes),
                wchar: e.wchar.saturating_sub(b.wchar),
                cancelled_write_bytes: e
                    .cancelled_write_bytes
                    .saturating_sub(b.cancelled_write_bytes),
                msgs: unique,
            }),
            _ => None,
        },
    }
}

async fn run_idle(args: Args) {
    let before = args.pid.and_then(rss_kb);
    let start = Instant::now();
    let mut conns = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    // Connect in waves of 256 concurrent handshakes.
    let run_id = std::process::id();
    let mut i = 0;
    while i < args.connections {
        let wave = (args.connections - i).min(256);
        let mut tasks = Vec::new();
        for j in 0..wave {
            let addr = args.addr;
            let id = format!("idle-{run_id}-{}", i + j);
            tasks.push(tokio::task::spawn_local(async move {
                connect(addr, &id, true).await
            }));
        }
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => conns.push(s),
                _ => failed += 1,
            }
        }
        i += wave;
    }
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = args.pid.and_then(rss_kb);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if !conns.is_empty() => {
            Some((a.saturating_sub(b)) as f64 / conns.len() as f64)
        }
        _ => None,
    };
    if args.json {
        println!(
            "{{\"label\":\"{}\",\"scenario\":\"idle\",\"connections\":{},\"failed\":{},\"accept_secs\":{:.3},\"rss_before_kb\":{},\"rss_after_kb\":{},\"kb_per_conn\":{}}}",
            args.label,
            conns.len(),
            failed,
            took.as_secs_f64(),
            opt(before),
            opt(after),
            per_conn.map_or("null".to_string(), |v| format!("{v:.2}"))
        );
    } else {
        println!(
            "idle: {} connections ({} failed) in {:.3} s; broker RSS {} -> {} KB ({} KB per connection)",
            conns.len(),
            failed,
            took.as_secs_f64(),
            opt(before),
            opt(after),
            per_conn.map_or("?".to_string(), |v| format!("{v:.2}"))
        );
    }
    drop(conns);
}

fn opt(v: Option<u64>) -> String {
    v.map_or("null".to_string(), |v| v.to_string())
}

fn main() {
    let args = Args::parse();
    if args.size < 20 {
        eprintln!("--size must be at least 20 (send time, sequence, publisher)");
        std::process::exit(2);
    }
    if args.qos > 2 {
        eprintln!("--qos must be 0, 1 or 2");
        std::process::exit(2);
    }
    if args.scenario == Scenario::Idle && (args.persistent || args.io_pid.is_some()) {
        eprintln!("--persistent and --io-pid apply to the traffic scenarios, not idle");
        std::process::exit(2);
    }
    if let Some(pid) = args.io_pid {
        if io_counters(pid).is_none() {
            eprintln!("--io-pid {pid}: cannot read write_bytes and wchar from /proc/{pid}/io");
            std::process::exit(2);
        }
    }
    EPOCH.get_or_init(Instant::now);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        if args.scenario == Scenario::Idle {
            run_idle(args).await;
            return;
        }
        let r = run_traffic(args.clone()).await;
        // Fields and columns of the new flags, empty without them.
        let mut json_extra = String::new();
        let mut text_extra = String::new();
        if r.persistent {
            json_extra.push_str(",\"persistent\":true");
            text_extra.push_str(" | persistent sessions");
        }
        if args.io_pid.is_some() {
            let per = |bytes: fn(&IoDelta) -> u64| {
                r.io.as_ref()
                    .and_then(|io| io.per_msg(bytes(io)))
                    .map_or("null".to_string(), |v| format!("{v:.1}"))
            };
            let (wb_msg, wc_msg) = (per(|io| io.write_bytes), per(|io| io.wchar));
            let total = |bytes: fn(&IoDelta) -> u64| r.io.as_ref().map(bytes);
            json_extra.push_str(&format!(
                ",\"io_msgs\":{},\"write_bytes\":{},\"wchar\":{},\"cancelled_write_bytes\":{},\"write_bytes_per_msg\":{},\"wchar_per_msg\":{}",
                opt(total(|io| io.msgs)),
                opt(total(|io| io.write_bytes)),
                opt(total(|io| io.wchar)),
                opt(total(|io| io.cancelled_write_bytes)),
                wb_msg,
                wc_msg
            ));
            text_extra.push_str(&format!(
                " | broker io per delivered msg: write_bytes {wb_msg} B wchar {wc_msg} B (totals {} / {} B over {} msgs)",
                opt(total(|io| io.write_bytes)),
                opt(total(|io| io.wchar)),
                opt(total(|io| io.msgs)),
            ));
        }
        if args.json {
            println!(
                "{{\"label\":\"{}\",\"scenario\":\"{:?}\",\"qos\":{},\"sent\":{},\"received\":{},\"expected\":{},\"lost\":{},\"duplicates\":{},\"out_of_order\":{},\"rate\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"rss_idle_kb\":{},\"rss_peak_kb\":{},\"errors\":{}{}}}",
                r.label, r.scenario, r.qos, r.sent, r.received, r.expected, r.lost, r.duplicates, r.out_of_order, r.rate, r.p50, r.p99, r.p999, opt(r.rss_idle_kb), opt(r.rss_peak_kb), r.errors.len(), json_extra
            );
        } else {
            println!(
                "{:?} qos{}: sent {} received {} (expected {}) lost {} dup {} ooo {} | {:.0} msg/s delivered | latency us p50 {} p99 {} p99.9 {} | broker RSS idle {} KB peak {} KB{}",
                r.scenario, r.qos, r.sent, r.received, r.expected, r.lost, r.duplicates, r.out_of_order, r.rate, r.p50, r.p99, r.p999, opt(r.rss_idle_kb), opt(r.rss_peak_kb), text_extra
            );
            for e in &r.errors {
                println!("  error: {e}");
            }
        }
    });
}
