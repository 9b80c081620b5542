//! What four attacks cost a broker, and what they cost a well-behaved client
//! meanwhile (the hardening issue's "under attack" table in BENCHMARKS.md).
//!
//! Each scenario starts the broker binary fresh (`TERN_BIN`, default the `tern`
//! that Cargo built with this bench, which under `cargo bench` is
//! `target/release/tern`) with its own config and data directory, the
//! defaults otherwise, and reads its VmRSS from /proc: idle, the peak during
//! the attack and a few seconds after it. Meanwhile a probe client from
//! 127.0.0.2 (MQTT 3.1.1) connects every `duration / probes`, and each probe
//! times CONNECT -> CONNACK on a new connection, then subscribes to its own
//! topic and times QoS 1 PUBLISH -> PUBACK and its own delivery.
//!
//! - **password storm**: an argon2id password file from `tern passwd`;
//!   `connect_timeout = "2s"`; 500 attackers, each from its own 127.1.x.y
//!   address (so the failed-login throttle, left at its defaults, sees 500
//!   strangers), loop wrong-password v5 CONNECTs. The probe logs in as the
//!   valid user.
//! - **user-property flood**: an offline persistent session subscribed to
//!   `victim/t` at QoS 1; 4 v5 publishers send ~1 MB PUBLISHes holding 140,000
//!   user properties "k"="v" (7 bytes each on the wire), alternately retained
//!   on a new topic and QoS 1 to `victim/t`; a publisher that is disconnected
//!   reconnects.
//! - **half-sent CONNECTs**: 400 connections each send a fixed header declaring
//!   a 1,000,000-byte CONNECT, then 512 KiB of it, and hold the connection open
//!   (reconnecting 1 s after the broker closes it).
//! - **session flood**: 20,000 3.1.1 CONNECTs with clean session 0 and random
//!   client ids, 64 at a time, from 4 addresses; then a new clean client and a
//!   new persistent client each try to log in (their CONNACK codes). Again from
//!   20 addresses, which gets past a per-address cap to the global one.
//!
//! A sampler stops the attack when the broker's RSS passes 4 GiB (reported as
//! "> 4 GiB (stopped)") and kills the broker past 8 GiB, so a broker without the
//! limits cannot take the machine down.
//!
//! `TERN_BIN=/path/to/tern cargo bench --bench under_attack` (about a minute per
//! binary). Not a test: no assertions; `cargo test --all-targets` runs each
//! scenario for a moment at a small scale.

mod common;

use bytes::{BufMut, BytesMut};
use common::{attacker_ip, bench_mode, connect_from, connect_packet, login, try_status};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern::protocol::{
    self, Packet, PacketId, ProtocolVersion, PubResponse, Publish, QoS, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The numbers under `cargo bench`; a smoke run under `cargo test`.
struct Scale {
    duration: Duration,
    probes: usize,
    password_attackers: usize,
    flood_publishers: usize,
    half_connects: usize,
    sessions: usize,
    /// How long after the attack "after" is read.
    settle: Duration,
}

fn scale() -> Scale {
    if bench_mode() {
        Scale {
            duration: Duration::from_secs(8),
            probes: 20,
            password_attackers: 500,
            flood_publishers: 4,
            half_connects: 400,
            sessions: 20_000,
            settle: Duration::from_secs(3),
        }
    } else {
        Scale {
            duration: Duration::from_millis(600),
            probes: 3,
            password_attackers: 10,
            flood_publishers: 1,
            half_connects: 10,
            sessions: 200,
            settle: Duration::from_millis(100),
        }
    }
}

const STOP_ATTACK_MIB: f64 = 4096.0;
const KILL_MIB: f64 = 8192.0;
const USER_PROPERTIES: usize = 140_000;
const PROBE_FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn tern_bin() -> PathBuf {
    std::env::var_os("TERN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tern").into())
}

/// Outcomes of an attack, counted by description.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }
    fn summary(&self) -> String {
        let m = self.0.lock().unwrap();
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{v} {k}")).collect();
        parts.join(", ")
    }
}

/// A minimal MQTT client over the crate's codec.
struct Conn {
    s: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        from: IpAddr,
        version: ProtocolVersion,
    ) -> std::io::Result<Conn> {
        let s = connect_from(addr, from).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: BytesMut::with_capacity(4096),
            version,
        })
    }
    async fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut b = BytesMut::new();
        protocol::encode(p, self.version, &mut b).map_err(std::io::Error::other)?;
        self.s.write_all(&b).await
    }
    /// The next packet; Ok(None) when the broker closed the connection.
    async fn recv(&mut self) -> std::io::Result<Option<Packet>> {
        loop {
            if let Some(p) = protocol::decode(&mut self.buf, Some(self.version), u32::MAX)
                .map_err(std::io::Error::other)?
            {
                return Ok(Some(p));
            }
            if self.s.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
    /// Connects with `connect` (an encoded CONNECT) and returns the CONNACK code.
    async fn login(&mut self, connect: &[u8]) -> Result<(), String> {
        self.s.write_all(connect).await.map_err(|e| e.to_string())?;
        match self.recv().await {
            Ok(Some(Packet::ConnAck(a))) if a.reason_code.0 == 0 => Ok(()),
            Ok(Some(Packet::ConnAck(a))) if self.version.is_v5() => {
                Err(format!("CONNACK 0x{:02x}", a.reason_code.0))
            }
            // As on the wire, not as the decoder maps it to 5.0.
            Ok(Some(Packet::ConnAck(a))) => Err(format!(
                "CONNACK return code {}",
                a.reason_code.to_v311_connack()
            )),
            Ok(Some(p)) => Err(format!("packet type {}", p.packet_type())),
            Ok(None) => Err("closed".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// One probe: (CONNECT -> CONNACK, QoS 1 PUBLISH -> PUBACK + own delivery).
async fn probe(
    addr: SocketAddr,
    i: usize,
    user: Option<(&str, &str)>,
) -> Result<(Duration, Duration), String> {
    let go = async {
        let v = ProtocolVersion::V311;
        let t0 = Instant::now();
        let mut c = Conn::open(addr, PROBE_FROM, v)
            .await
            .map_err(|e| e.to_string())?;
        c.login(&connect_packet(v, &format!("probe-{i}"), true, user))
            .await?;
        let connect = t0.elapsed();
        let topic = format!("probe/{i}");
        let err = |e: std::io::Error| e.to_string();
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: Default::default(),
            filters: vec![SubscribeFilter {
                filter: topic.clone(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
        }))
        .await
        .map_err(err)?;
        match c.recv().await.map_err(err)? {
            Some(Packet::SubAck(_)) => {}
            other => return Err(format!("no SUBACK: {other:?}")),
        }
        let t1 = Instant::now();
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(pid(2)),
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"0123456789abcdef"),
        }))
        .await
        .map_err(err)?;
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            match c.recv().await.map_err(err)? {
                Some(Packet::PubAck(_)) => acked = true,
                Some(Packet::Publish(p)) => {
                    delivered = true;
                    if let Some(id) = p.packet_id {
                        c.send(&Packet::PubAck(PubResponse::success(id)))
                            .await
                            .map_err(err)?;
                    }
                }
                Some(_) => {}
                None => return Err("closed".into()),
            }
        }
        let round_trip = t1.elapsed();
        let _ = c.send(&Packet::Disconnect(Default::default())).await;
        Ok((connect, round_trip))
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .unwrap_or_else(|_| Err("no answer in 5 s".into()))
}

/// The broker's memory while an attack runs, sampled every 20 ms.
struct Watch {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(f64, bool, bool)>,
}

impl Watch {
    /// Sets `stop` past 4 GiB, kills the broker past 8 GiB.
    fn start(pid: u32, stop: Arc<AtomicBool>) -> Watch {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut over, mut killed) = (0f64, false, false);
            while !d.load(Ordering::Relaxed) {
                let Some(s) = try_status(pid) else { break };
                peak = peak.max(s.rss_mib).max(s.hwm_mib);
                if s.rss_mib > STOP_ATTACK_MIB && !over {
                    over = true;
                    stop.store(true, Ordering::Relaxed);
                }
                if s.rss_mib > KILL_MIB {
                    // SAFETY: kill(2) on the broker we started; no memory involved.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    killed = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, over, killed)
        });
        Watch { done, thread }
    }
    fn finish(self) -> (f64, bool, bool) {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn median_max(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!("{:.1} / {:.1} ms", ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

/// Start the broker with `extra` config, run `attack` (which returns a summary
/// of what it got) while probing, and print one row.
fn scenario<F, Fut>(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    name: &str,
    extra: &str,
    user: Option<(&'static str, &'static str)>,
    until_done: bool,
    attack: F,
) -> String
where
    F: FnOnce(SocketAddr, Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = String> + Send + 'static,
{
    let sc = scale();
    let sdir = dir.join(name.replace(' ', "-"));
    std::fs::create_dir_all(&sdir).unwrap();
    let config = sdir.join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[storage]\ndir = {:?}\n{extra}\n",
            sdir.join("data")
        ),
    )
    .unwrap();
    let (mut child, addr) = common::start_broker(&tern_bin(), &config);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let idle = try_status(pid).unwrap().rss_mib;
    let stop = Arc::new(AtomicBool::new(false));
    let watch = Watch::start(pid, stop.clone());
    let (outcome, probes, attack_time) = rt.block_on(async {
        let start = Instant::now();
        let task = tokio::spawn(attack(addr, stop.clone()));
        // A timed attack runs for `duration`, probed evenly; one that ends by
        // itself (`until_done`) is probed every 100 ms and stopped at 30 s.
        let (interval, deadline) = if until_done {
            (Duration::from_millis(100), start + Duration::from_secs(30))
        } else {
            (
                sc.duration / u32::try_from(sc.probes).unwrap(),
                start + sc.duration,
            )
        };
        let mut probes = Vec::new();
        for i in 0..sc.probes {
            tokio::time::sleep_until((start + interval * u32::try_from(i).unwrap()).into()).await;
            if stop.load(Ordering::Relaxed) || task.is_finished() || Instant::now() >= deadline {
                break;
            }
            // Started on their slot whatever the previous probe is doing, so a
            // slow broker does not thin out the sample.
            probes.push(tokio::spawn(probe(addr, i, user)));
        }
        while !task.is_finished() && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopped_at = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut done = Vec::new();
        for p in probes {
            done.push(p.await.unwrap());
        }
        let probes = done;
        let outcome = match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(r) => r.unwrap(),
            Err(_) => "attack did not stop within 60 s".into(),
        };
        (outcome, probes, stopped_at)
    });
    std::thread::sleep(sc.settle);
    let after = try_status(pid);
    let (mut peak, over, killed) = watch.finish();
    if let Some(a) = after {
        peak = peak.max(a.hwm_mib);
    }
    let _ = child.kill();
    let _ = child.wait();

    let ok: Vec<_> = probes.iter().filter_map(|p| p.as_ref().ok()).collect();
    let failures = Tally::default();
    for e in probes.iter().filter_map(|p| p.as_ref().err()) {
        failures.add(e.clone());
    }
    let peak_text = if over {
        format!(
            "> 4 GiB (attack stopped at {:.1} s; {peak:.0} MiB)",
            attack_time.as_secs_f64()
        )
    } else {
        format!("{peak:.1} MiB")
    };
    let after_text = match after {
        Some(a) if !killed => format!("{:.1} MiB", a.rss_mib),
        _ => "killed (> 8 GiB)".into(),
    };
    let probe_text = format!(
        "connect {}; publish {}; {}/{} ok{}",
        median_max(ok.iter().map(|p| p.0).collect()),
        median_max(ok.iter().map(|p| p.1).collect()),
        ok.len(),
        probes.len(),
        if ok.len() < probes.len() {
            format!(" (failed: {})", failures.summary())
        } else {
            String::new()
        }
    );
    println!("{name} ({:.1} s)", attack_time.as_secs_f64());
    println!("  RSS idle {idle:.1} MiB, peak {peak_text}, after {after_text}");
    println!("  probe: {probe_text}");
    println!("  attack: {outcome}");
    format!("| {name} | {idle:.1} MiB / {peak_text} / {after_text} | {probe_text} | {outcome} |")
}

async fn password_storm(addr: SocketAddr, stop: Arc<AtomicBool>, attackers: usize) -> String {
    let tally = Tally::default();
    let mut tasks = Vec::new();
    for i in 0..attackers {
        let connect = connect_packet(
            ProtocolVersion::V5,
            &format!("a{i}"),
            true,
            Some(("alice", "guess")),
        );
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match login(addr, attacker_ip(i), &connect).await {
                    Some(code) => tally.add(format!("CONNACK 0x{code:02x}")),
                    None => tally.add("no answer"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    format!("wrong-password CONNECTs: {}", tally.summary())
}

/// A v5 QoS 1 PUBLISH of `props` user properties "k"="v" and an empty payload,
/// written by hand (the crate's encoder would first build 140,000 pairs).
fn property_publish(topic: &str, id: u16, retain: bool, props: usize) -> BytesMut {
    let prop_len = props * 7;
    let mut body = BytesMut::with_capacity(prop_len + topic.len() + 16);
    body.put_u16(u16::try_from(topic.len()).unwrap());
    body.put_slice(topic.as_bytes());
    body.put_u16(id);
    tern::protocol::encode_vbi(prop_len, &mut body).unwrap();
    for _ in 0..props {
        body.put_slice(&[0x26, 0, 1, b'k', 0, 1, b'v']);
    }
    let mut packet = BytesMut::with_capacity(body.len() + 5);
    packet.put_u8(0x32 | u8::from(retain));
    tern::protocol::encode_vbi(body.len(), &mut packet).unwrap();
    packet.put_slice(&body);
    packet
}

async fn property_flood(addr: SocketAddr, stop: Arc<AtomicBool>, publishers: usize) -> String {
    // The offline persistent session the QoS 1 half is queued for.
    let victim = async {
        let v = ProtocolVersion::V311;
        let mut c = Conn::open(addr, PROBE_FROM, v).await.ok()?;
        c.login(&connect_packet(v, "victim", false, None))
            .await
            .ok()?;
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: Default::default(),
            filters: vec![SubscribeFilter {
                filter: "victim/t".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
        }))
        .await
        .ok()?;
        matches!(c.recv().await, Ok(Some(Packet::SubAck(_)))).then_some(())?;
        c.send(&Packet::Disconnect(Default::default())).await.ok()
    };
    let victim_ok = victim.await.is_some();
    let tally = Tally::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (stop, tally, sent) = (stop.clone(), tally.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 2, u8::try_from(p + 1).unwrap()));
            let v = ProtocolVersion::V5;
            let wait = Duration::from_secs(10);
            let mut n: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                let conn = async {
                    let mut c = Conn::open(addr, from, v).await.map_err(|e| e.to_string())?;
                    c.login(&connect_packet(v, &format!("flood-{p}"), true, None))
                        .await?;
                    Ok::<_, String>(c)
                };
                let mut c = match tokio::time::timeout(wait, conn).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tally.add(format!("CONNECT failed ({e})"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        tally.add("CONNECT timed out");
                        continue;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let retain = n % 2 == 1;
                    let topic = if retain {
                        format!("flood/{p}/{n}")
                    } else {
                        "victim/t".to_string()
                    };
                    let id = u16::try_from(n % 60_000 + 1).unwrap();
                    let packet = property_publish(&topic, id, retain, USER_PROPERTIES);
                    sent.fetch_add(1, Ordering::Relaxed);
                    let kind = if retain {
                        "retained"
                    } else {
                        "QoS 1 to offline"
                    };
                    match tokio::time::timeout(wait, c.s.write_all(&packet)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            tally.add(format!("{kind}: closed while sending"));
                            break;
                        }
                        Err(_) => {
                            tally.add(format!("{kind}: send blocked 10 s"));
                            break;
                        }
                    }
                    match tokio::time::timeout(wait, c.recv()).await {
                        Ok(Ok(Some(Packet::PubAck(r)))) => {
                            tally.add(format!("{kind}: PUBACK 0x{:02x}", r.reason_code.0))
                        }
                        Ok(Ok(Some(Packet::Disconnect(d)))) => {
                            tally.add(format!("{kind}: DISCONNECT 0x{:02x}", d.reason_code.0));
                            break;
                        }
                        Ok(Ok(Some(other))) => {
                            tally.add(format!("{kind}: packet type {}", other.packet_type()))
                        }
                        Ok(Ok(None)) | Ok(Err(_)) => {
                            tally.add(format!("{kind}: closed"));
                            break;
                        }
                        Err(_) => {
                            tally.add(format!("{kind}: no answer in 10 s"));
                            break;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    format!(
        "{} PUBLISHes of {USER_PROPERTIES} user properties{}: {}",
        sent.load(Ordering::Relaxed),
        if victim_ok {
            ""
        } else {
            " (victim session NOT set up)"
        },
        tally.summary()
    )
}

async fn half_connects(addr: SocketAddr, stop: Arc<AtomicBool>, conns: usize) -> String {
    const DECLARED: usize = 1_000_000;
    const SENT: usize = 512 * 1024;
    let mut packet = BytesMut::with_capacity(SENT + 5);
    packet.put_u8(0x10);
    tern::protocol::encode_vbi(DECLARED, &mut packet).unwrap();
    // A 3.1.1 variable header (username, password, clean session), client id "h",
    // then zeros: the start of a username/password that never ends.
    packet.put_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 1, b'h']);
    packet.resize(packet.len() + SENT - 13, 0);
    let packet = packet.freeze();
    let tally = Tally::default();
    let held = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (stop, tally, packet, held) =
            (stop.clone(), tally.clone(), packet.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = connect_from(addr, attacker_ip(i)).await else {
                    tally.add("TCP connect failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), s.write_all(&packet)).await {
                    Ok(Ok(())) => tally.add("sent 512 KiB"),
                    Ok(Err(_)) => {
                        tally.add("closed by the broker while sending");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        tally.add("send blocked 10 s");
                        continue;
                    }
                }
                // Counted as held once it has stayed open for a second.
                let mut counted = false;
                let mut b = [0u8; 64];
                let closed = loop {
                    if !counted && t.elapsed() >= Duration::from_secs(1) {
                        counted = true;
                        held.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::select! {
                        r = s.read(&mut b) => match r {
                            Ok(0) | Err(_) => break true,
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {
                            if stop.load(Ordering::Relaxed) { break false }
                        }
                    }
                };
                if counted {
                    held.fetch_sub(1, Ordering::Relaxed);
                }
                if closed {
                    tally.add(format!(
                        "closed by the broker {:.0} s after",
                        t.elapsed().as_secs_f64()
                    ));
                    // An attacker that keeps coming back, but not a busy loop
                    // that would measure this process's CPU instead.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }));
    }
    // How many are held open just before the end.
    let mut held_at_end = 0;
    while !stop.load(Ordering::Relaxed) {
        held_at_end = held.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    format!(
        "{held_at_end} of {conns} held open (for 1 s or more) at the end; {}",
        tally.summary()
    )
}

/// xorshift64: random-looking client ids without a dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn session_flood(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    sessions: usize,
    addresses: usize,
) -> String {
    let tally = Tally::default();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let (stop, tally, next) = (stop.clone(), tally.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (w + 1) ^ (u64::from(std::process::id()) << 20);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sessions || stop.load(Ordering::Relaxed) {
                    break;
                }
                let from = IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    3,
                    u8::try_from(i % addresses + 1).unwrap(),
                ));
                let id = format!("{:016x}", next_random(&mut rng));
                let connect = connect_packet(ProtocolVersion::V311, &id, false, None);
                match login(addr, from, &connect).await {
                    Some(code) => tally.add(format!("CONNACK 0x{code:02x}")),
                    None => tally.add("no answer"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    let late = move |id: &'static str, clean: bool, host: u8| async move {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 6, host));
        let connect = connect_packet(ProtocolVersion::V311, id, clean, None);
        match login(addr, from, &connect).await {
            Some(code) => format!("CONNACK 0x{code:02x}"),
            None => "no answer".into(),
        }
    };
    let clean = late("late-clean", true, 1).await;
    let persistent = late("late-persistent", false, 2).await;
    format!(
        "{} CONNECTs from {addresses} addresses in {:.1} s: {}; then a new clean client: {clean}, a new persistent client: {persistent}",
        next.load(Ordering::Relaxed).min(sessions),
        took.as_secs_f64(),
        tally.summary()
    )
}

fn main() {
    let sc = scale();
    let bin = tern_bin();
    println!("broker: {}", bin.display());
    let dir = tempfile::tempdir().unwrap();
    common::passwd(
        &bin,
        &dir.path().join("passwords"),
        "alice",
        "right-password",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let anonymous = "[auth]\nallow_anonymous = true";
    let mut rows = Vec::new();
    let (attackers, publishers, half, sessions) = (
        sc.password_attackers,
        sc.flood_publishers,
        sc.half_connects,
        sc.sessions,
    );
    rows.push(scenario(
        &rt,
        dir.path(),
        "password storm",
        &format!(
            "[limits]\nconnect_timeout = \"2s\"\n[auth]\npassword_file = {:?}",
            dir.path().join("passwords")
        ),
        Some(("alice", "right-password")),
        false,
        move |addr, stop| password_storm(addr, stop, attackers),
    ));
    rows.push(scenario(
        &rt,
        dir.path(),
        "user-property flood",
        anonymous,
        None,
        false,
        move |addr, stop| property_flood(addr, stop, publishers),
    ));
    rows.push(scenario(
        &rt,
        dir.path(),
        "half-sent CONNECTs",
        anonymous,
        None,
        false,
        move |addr, stop| half_connects(addr, stop, half),
    ));
    rows.push(scenario(
        &rt,
        dir.path(),
        "session flood",
        anonymous,
        None,
        true,
        move |addr, stop| session_flood(addr, stop, sessions, 4),
    ));
    // The same from 20 addresses: past any per-address cap, to the global one.
    rows.push(scenario(
        &rt,
        dir.path(),
        "session flood, 20 addresses",
        anonymous,
        None,
        true,
        move |addr, stop| session_flood(addr, stop, sessions, 20),
    ));
    println!(
        "\n| scenario | RSS idle / peak / after | probe (median / max) | what the attack got |"
    );
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
