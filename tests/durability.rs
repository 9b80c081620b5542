//! Durable storage, tested black-box on the real `tern` binary over real sockets.
//!
//! The broker is killed with SIGKILL (`Child::kill`), so no shutdown code runs and
//! only what the broker had handed to the kernel survives. (This checks crash
//! safety of the process, not of the machine: the page cache survives a kill -9,
//! so these tests cannot tell an fsync from a plain write.)
//!
//! What must hold after a kill and a restart on the same `--data-dir`:
//! - every QoS 1/2 message the broker acknowledged (PUBACK / PUBREC) to a publisher
//!   reaches each persistent session subscribed to it, QoS 2 exactly once;
//! - sessions, subscriptions, retained messages, outbound QoS 2 progress (PUBREL
//!   re-sent, not the PUBLISH) and inbound QoS 2 packet ids awaiting PUBREL;
//! - a torn or corrupted segment tail costs at most the records from the damage on,
//!   is reported (`damaged`), never yields garbage, and never stops the broker;
//! - one data dir has one broker (LOCK); `in_memory = true` writes nothing.
//!
//! Random choices use a seeded PRNG; the seed is printed and can be replayed with
//! `DURABILITY_SEED=<n>` (not `TERN_...`: the broker reads every `TERN_*` variable
//! as a config override and refuses unknown keys).

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tern::protocol::{
    self, ConnAck, Packet, PacketId, ProtocolVersion, PubResponse, QoS, ReasonCode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

// ---------------------------------------------------------------------------------
// Fixture: one data dir and one config file that outlive every broker run on them.

/// `[limits]` spelled out so that no test message is dropped by an offline
/// session's queue cap (these are the defaults today; they were 1000 messages,
/// 4 MiB): a loss here must mean the store lost it.
const LIMITS: &str = "[limits]\nmax_queued_messages = 100000\nmax_queued_bytes = 67108864\n";

/// A data dir plus a config file, both inside one temp dir, so a test can kill the
/// broker and start another on the same data.
struct Fixture {
    _root: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

impl Fixture {
    /// The default durability, spelled out so the tests do not depend on the default.
    fn new() -> Fixture {
        Fixture::with_storage("durability = \"always\"\n")
    }

    /// A fixture whose config has these lines in `[storage]`. The data dir is given
    /// on the command line (`--data-dir`), never as `[storage] dir`, and is not
    /// created here (the broker creates it).
    fn with_storage(storage_lines: &str) -> Fixture {
        Fixture::with_lines("", storage_lines)
    }

    /// A fixture whose config has these lines in `[limits]` (after `LIMITS`)
    /// and in `[storage]`.
    fn with_lines(limits_lines: &str, storage_lines: &str) -> Fixture {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path().join("data");
        let config = root.path().join("tern.toml");
        std::fs::write(
            &config,
            format!("{LIMITS}{limits_lines}\n[storage]\n{storage_lines}"),
        )
        .expect("write config");
        Fixture {
            _root: root,
            data,
            config,
        }
    }

    fn spawn(&self) -> BrokerProcess {
        self.spawn_on(&self.data)
    }

    /// A broker with this fixture's config on another data dir (a damaged copy).
    fn spawn_on(&self, data: &Path) -> BrokerProcess {
        BrokerProcess::spawn_in(data, &["-c", self.config.to_str().expect("utf-8 path")])
    }
}

/// SIGKILL the broker and reap it. Nothing of its shutdown path runs.
fn kill9(b: &mut BrokerProcess) {
    b.child.kill().expect("SIGKILL tern");
    b.child.wait().expect("reap tern");
}

// ---------------------------------------------------------------------------------
// PRNG: seeded and printed, so a failing random schedule can be replayed.

/// splitmix64: tiny, good enough to pick delays and offsets, no dependency.
struct Rng(u64);

impl Rng {
    /// Seed from `DURABILITY_SEED` or the clock; printed so a failure can be replayed.
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("DURABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{test}: seed {seed} (replay with DURABILITY_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (hi exclusive, hi > lo).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(hi > lo, "empty range {lo}..{hi}");
        lo + self.next() % (hi - lo)
    }

    fn index(&mut self, len: usize) -> usize {
        self.range(0, len as u64) as usize
    }
}

// ---------------------------------------------------------------------------------
// Packets and client steps.

fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero packet id")
}

fn puback(id: u16) -> Packet {
    Packet::PubAck(PubResponse::success(pid(id)))
}
fn pubrec(id: u16) -> Packet {
    Packet::PubRec(PubResponse::success(pid(id)))
}
fn pubrel(id: u16) -> Packet {
    Packet::PubRel(PubResponse::success(pid(id)))
}
fn pubcomp(id: u16) -> Packet {
    Packet::PubComp(PubResponse::success(pid(id)))
}

/// `publish_packet` with the retain and DUP flags settable.
fn publish(topic: &str, qos: QoS, id: u16, payload: &[u8], retain: bool, dup: bool) -> Packet {
    let mut p = publish_packet(topic, qos, id, payload);
    if let Packet::Publish(p) = &mut p {
        p.retain = retain;
        p.dup = dup;
    }
    p
}

/// A CONNECT whose session outlives the connection: clean session 0 for 3.1.1;
/// for 5.0 clean start 0 and Session Expiry 3600 s (with expiry 0, the default, a
/// v5 session ends when the connection does, whatever clean start says).
fn persistent_connect(version: ProtocolVersion, client_id: &str) -> Packet {
    let mut p = connect_packet(version, client_id, false);
    if let (Packet::Connect(c), true) = (&mut p, version.is_v5()) {
        c.properties.session_expiry_interval = Some(3600);
    }
    p
}

/// Connect with a persistent session and assert success; returns the CONNACK so the
/// caller can check Session Present.
async fn connect_persistent(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
) -> (RawClient, ConnAck) {
    let mut c = RawClient::connect(addr, version).await;
    c.send(&persistent_connect(version, client_id)).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::SUCCESS, "{client_id}: {a:?}");
            (c, a)
        }
        other => panic!("{client_id}: expected CONNACK, got {other:?}"),
    }
}

/// Like `connect_persistent` but never panics: for clients that may race a kill.
async fn try_connect_persistent(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
) -> Option<(RawClient, ConnAck)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let mut c = RawClient::from_stream(stream, version);
    if !try_send(&mut c, &persistent_connect(version, client_id)).await {
        return None;
    }
    match c.recv_within(WAIT).await {
        Ok(Some(Packet::ConnAck(a))) if a.reason_code == ReasonCode::SUCCESS => Some((c, a)),
        _ => None,
    }
}

/// `RawClient::send` without the panic: false once the broker is gone (killed).
async fn try_send(c: &mut RawClient, p: &Packet) -> bool {
    let mut b = bytes::BytesMut::new();
    protocol::encode(p, c.version, &mut b).expect("encode");
    c.stream.write_all(&b).await.is_ok()
}

/// The next packet; panics on EOF (`recv` panics on silence).
async fn next(c: &mut RawClient, who: &str) -> Packet {
    match c.recv().await {
        Some(p) => p,
        None => panic!("{who}: connection closed while a packet was expected"),
    }
}

/// DISCONNECT normally and wait until the broker closes the socket, so the session
/// is offline before the test goes on (otherwise a message could be sent to the
/// closing connection instead of queued, which tests something else).
async fn disconnect(mut c: RawClient) {
    c.send(&Packet::Disconnect(Default::default())).await;
    let _ = c.until_closed().await;
}

/// Publish every message and complete its flow (PUBACK; PUBREC, PUBREL, PUBCOMP),
/// asserting each ack succeeds. Returns when the broker acknowledged all of them,
/// which (durability `always`) means all are on disk. Packet ids are
/// `first_id, first_id + 1, ...`.
async fn publish_all(c: &mut RawClient, msgs: &[(&str, QoS, Vec<u8>, bool)], first_id: u16) {
    let mut waiting: HashMap<u16, QoS> = HashMap::new();
    for (i, (topic, qos, payload, retain)) in msgs.iter().enumerate() {
        assert_ne!(
            *qos,
            QoS::AtMostOnce,
            "publish_all waits for acks: QoS 1/2 only"
        );
        let id = first_id + i as u16;
        c.send(&publish(topic, *qos, id, payload, *retain, false))
            .await;
        waiting.insert(id, *qos);
    }
    while !waiting.is_empty() {
        match next(c, "publisher").await {
            Packet::PubAck(a) => {
                assert!(!a.reason_code.is_error(), "PUBACK {a:?}");
                assert_eq!(
                    waiting.remove(&a.packet_id.get()),
                    Some(QoS::AtLeastOnce),
                    "PUBACK for an id not awaiting one: {a:?}"
                );
            }
            Packet::PubRec(r) => {
                assert!(!r.reason_code.is_error(), "PUBREC {r:?}");
                assert_eq!(
                    waiting.get(&r.packet_id.get()),
                    Some(&QoS::ExactlyOnce),
                    "PUBREC for an id not awaiting one: {r:?}"
                );
                c.send(&pubrel(r.packet_id.get())).await;
            }
            Packet::PubComp(p) => {
                assert_eq!(p.reason_code, ReasonCode::SUCCESS, "PUBCOMP {p:?}");
                assert_eq!(
                    waiting.remove(&p.packet_id.get()),
                    Some(QoS::ExactlyOnce),
                    "PUBCOMP for an id not awaiting one: {p:?}"
                );
            }
            other => panic!("publisher: unexpected {other:?}"),
        }
    }
}

/// One copy of a message as a subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    qos: QoS,
    dup: bool,
    retain: bool,
}

/// What a subscriber received, by payload. A QoS 2 re-send of a packet id that
/// still awaits PUBREL is not a new copy (it is the same delivery, MQTT 4.3.3);
/// every other PUBLISH is.
#[derive(Debug, Default)]
struct Received {
    copies: HashMap<Vec<u8>, Vec<Seen>>,
    /// The connection ended (EOF or reset) while draining.
    closed: bool,
}

impl Received {
    fn count(&self, payload: &[u8]) -> usize {
        self.copies.get(payload).map_or(0, Vec::len)
    }
    fn has(&self, payload: &[u8]) -> bool {
        self.count(payload) > 0
    }
    fn total(&self) -> usize {
        self.copies.values().map(Vec::len).sum()
    }
}

/// Receive as a correct client would, acknowledging everything (PUBACK; PUBREC,
/// then PUBCOMP on PUBREL), until `done` holds or `limit` passes; once `done`
/// holds, keep reading for `quiet` more so late duplicates are seen. Never panics
/// on a dead broker (acks that cannot be written end the drain), so it also serves
/// clients that race a kill. Any packet other than PUBLISH / PUBREL fails the test.
async fn drain(
    c: &mut RawClient,
    limit: Duration,
    quiet: Duration,
    done: impl Fn(&Received) -> bool,
) -> Received {
    let mut r = Received::default();
    // QoS 2 packet ids we answered with PUBREC and that await PUBREL, with the
    // payload they carried.
    let mut awaiting_rel: HashMap<u16, Vec<u8>> = HashMap::new();
    let deadline = Instant::now() + limit;
    let mut quiet_until: Option<Instant> = None;
    loop {
        if quiet_until.is_none() && done(&r) {
            quiet_until = Some(Instant::now() + quiet);
        }
        let until = quiet_until.unwrap_or(deadline);
        let now = Instant::now();
        if now >= until {
            return r;
        }
        let reply = match c.recv_within(until - now).await {
            Err(()) => return r,
            Ok(None) => {
                r.closed = true;
                return r;
            }
            Ok(Some(Packet::Publish(p))) => {
                let id = p.packet_id.map(PacketId::get);
                let copy = Seen {
                    topic: p.topic.clone(),
                    qos: p.qos,
                    dup: p.dup,
                    retain: p.retain,
                };
                let mut resend_of_held = false;
                if p.qos == QoS::ExactlyOnce {
                    let id = id.expect("QoS 2 has a packet id");
                    if let Some(held) = awaiting_rel.get(&id) {
                        assert_eq!(
                            held[..],
                            p.payload[..],
                            "packet id {id} reused for another message before PUBCOMP: {p:?}"
                        );
                        resend_of_held = true;
                    } else {
                        awaiting_rel.insert(id, p.payload.to_vec());
                    }
                }
                if !resend_of_held {
                    r.copies.entry(p.payload.to_vec()).or_default().push(copy);
                }
                match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(puback(id.expect("QoS 1 has a packet id"))),
                    QoS::ExactlyOnce => Some(pubrec(id.expect("QoS 2 has a packet id"))),
                }
            }
            Ok(Some(Packet::PubRel(rel))) => {
                awaiting_rel.remove(&rel.packet_id.get());
                Some(pubcomp(rel.packet_id.get()))
            }
            Ok(Some(other)) => panic!("subscriber: unexpected {other:?}"),
        };
        if let Some(reply) = reply {
            if !try_send(c, &reply).await {
                r.closed = true;
                return r;
            }
        }
    }
}

/// Drain until every payload in `want` was received (bounded by `limit`), then
/// `quiet` more.
async fn drain_all(
    c: &mut RawClient,
    want: &[Vec<u8>],
    limit: Duration,
    quiet: Duration,
) -> Received {
    drain(c, limit, quiet, |r| has_all(r, want.iter())).await
}

/// Did `r` receive every payload of `want`? The count check first keeps a drain
/// of thousands of messages from being quadratic.
fn has_all<'a>(r: &Received, mut want: impl ExactSizeIterator<Item = &'a Vec<u8>>) -> bool {
    r.copies.len() >= want.len() && want.all(|p| r.has(p))
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

// ---------------------------------------------------------------------------------
// 1. Acknowledged QoS 1/2 messages, retained messages and sessions survive kill -9.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_qos1_qos2_and_retained_survive_kill9() {
    const N: usize = 50;
    let fx = Fixture::new();
    let mut broker = fx.spawn();

    // Three persistent subscribers to d/#: 3.1.1 at QoS 2, 3.1.1 at QoS 1, 5.0 at
    // QoS 2. All go offline before anything is published.
    let subs: [(ProtocolVersion, &str, QoS); 3] = [
        (V311, "dur-311-q2", QoS::ExactlyOnce),
        (V311, "dur-311-q1", QoS::AtLeastOnce),
        (V5, "dur-v5-q2", QoS::ExactlyOnce),
    ];
    for (v, id, qos) in subs {
        let (mut c, ack) = connect_persistent(broker.addr, v, id).await;
        assert!(!ack.session_present, "{id}: fresh data dir, yet {ack:?}");
        c.subscribe(1, "d/#", qos).await;
        disconnect(c).await;
    }

    let q1: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("dur-q1-{i:03}").into_bytes())
        .collect();
    let q2: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("dur-q2-{i:03}").into_bytes())
        .collect();
    let retained = b"dur-retained-payload".to_vec();
    let mut msgs: Vec<(&str, QoS, Vec<u8>, bool)> = Vec::new();
    for (i, p) in q1.iter().enumerate() {
        msgs.push((
            if i % 2 == 0 { "d/a" } else { "d/b/c" },
            QoS::AtLeastOnce,
            p.clone(),
            false,
        ));
    }
    for (i, p) in q2.iter().enumerate() {
        msgs.push((
            if i % 2 == 0 { "d/a" } else { "d/b/c" },
            QoS::ExactlyOnce,
            p.clone(),
            false,
        ));
    }
    msgs.push(("r/keep", QoS::AtLeastOnce, retained.clone(), true));
    let (mut publ, _) = raw_connected(broker.addr, V311, "dur-pub", true).await;
    publish_all(&mut publ, &msgs, 1).await;

    kill9(&mut broker);
    let broker = fx.spawn();

    let all: Vec<Vec<u8>> = q1.iter().chain(&q2).cloned().collect();
    let mut clients = Vec::new();
    for (v, id, sub_qos) in subs {
        let (mut c, ack) = connect_persistent(broker.addr, v, id).await;
        assert!(
            ack.session_present,
            "{id}: session lost over kill -9: {ack:?}"
        );
        let r = drain_all(
            &mut c,
            &all,
            Duration::from_secs(10),
            Duration::from_millis(500),
        )
        .await;
        let missing: Vec<String> = all.iter().filter(|p| !r.has(p)).map(|p| show(p)).collect();
        assert!(
            missing.is_empty(),
            "{id}: {} of {} acknowledged messages lost over kill -9, e.g. {:?}",
            missing.len(),
            all.len(),
            &missing[..missing.len().min(5)]
        );
        for p in &q1 {
            for copy in &r.copies[p] {
                assert_eq!(copy.qos, QoS::AtLeastOnce, "{id}: {} {copy:?}", show(p));
            }
        }
        for p in &all {
            // Queued while the subscriber was offline, so never sent before: the
            // first copy is a first attempt (DUP=0, MQTT 5.0 3.3.1.1), and a
            // message published without RETAIN is forwarded without it.
            let first = &r.copies[p][0];
            assert!(
                !first.dup,
                "{id}: {} first sent with DUP=1: {first:?}",
                show(p)
            );
            assert!(!first.retain, "{id}: {} {first:?}", show(p));
        }
        for p in &q2 {
            if sub_qos == QoS::ExactlyOnce {
                assert_eq!(
                    r.count(p),
                    1,
                    "{id}: QoS 2 {} not exactly once: {:?}",
                    show(p),
                    r.copies[p]
                );
            }
            for copy in &r.copies[p] {
                assert_eq!(copy.qos, sub_qos, "{id}: {} {copy:?}", show(p));
            }
        }
        let unexpected: Vec<String> = r
            .copies
            .keys()
            .filter(|p| !all.contains(p))
            .map(|p| show(p))
            .collect();
        assert!(
            unexpected.is_empty(),
            "{id}: not published to d/#: {unexpected:?}"
        );
        clients.push((id, c));
    }

    // The retained message is still retained: a new subscriber gets it.
    let (mut reader, _) = raw_connected(broker.addr, V311, "dur-retained-reader", true).await;
    reader.subscribe(1, "r/#", QoS::AtLeastOnce).await;
    match next(&mut reader, "retained reader").await {
        Packet::Publish(p) => {
            assert_eq!(&p.payload[..], &retained[..], "{p:?}");
            assert!(
                p.retain,
                "a retained message is sent with RETAIN=1 on subscribe: {p:?}"
            );
            assert_eq!(p.topic, "r/keep");
        }
        other => panic!("expected the retained PUBLISH, got {other:?}"),
    }

    // The subscriptions are still there: a message published after the restart
    // reaches every subscriber without a new SUBSCRIBE.
    let (mut publ, _) = raw_connected(broker.addr, V311, "dur-pub-2", true).await;
    let after = b"dur-after-restart".to_vec();
    publish_all(
        &mut publ,
        &[("d/new", QoS::ExactlyOnce, after.clone(), false)],
        1,
    )
    .await;
    for (id, mut c) in clients {
        let r = drain_all(
            &mut c,
            std::slice::from_ref(&after),
            WAIT,
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(
            r.count(&after),
            1,
            "{id}: subscription gone after restart? {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 2. Outbound QoS 2 progress: PUBREL re-sent (not the PUBLISH); an un-PUBRECed
//    PUBLISH re-sent with DUP and the same packet id.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_qos2_state_survives_kill9() {
    let fx = Fixture::new();
    let mut broker = fx.spawn();
    let who = [(V311, "out2-311"), (V5, "out2-v5")];
    let mut subs = Vec::new();
    for (v, id) in who {
        let (mut c, ack) = connect_persistent(broker.addr, v, id).await;
        assert!(!ack.session_present, "{id}: {ack:?}");
        c.subscribe(1, "out2/t", QoS::ExactlyOnce).await;
        subs.push(c);
    }
    let (mut publ, _) = raw_connected(broker.addr, V311, "out2-pub", true).await;

    // Message A: each subscriber sends PUBREC and gets PUBREL, but never PUBCOMP.
    let a = b"out2-A-released".to_vec();
    publish_all(
        &mut publ,
        &[("out2/t", QoS::ExactlyOnce, a.clone(), false)],
        1,
    )
    .await;
    let mut a_ids = Vec::new();
    for (c, (_, id)) in subs.iter_mut().zip(who) {
        let p = match next(c, id).await {
            Packet::Publish(p) => p,
            other => panic!("{id}: expected PUBLISH A, got {other:?}"),
        };
        assert_eq!(
            (&p.payload[..], p.qos),
            (&a[..], QoS::ExactlyOnce),
            "{id}: {p:?}"
        );
        let pid_a = p.packet_id.unwrap().get();
        c.send(&pubrec(pid_a)).await;
        match next(c, id).await {
            Packet::PubRel(r) => assert_eq!(r.packet_id.get(), pid_a, "{id}: {r:?}"),
            other => panic!("{id}: expected PUBREL {pid_a}, got {other:?}"),
        }
        a_ids.push(pid_a);
    }

    // Message B: each subscriber receives the PUBLISH and does not answer.
    let b = b"out2-B-unanswered".to_vec();
    publish_all(
        &mut publ,
        &[("out2/t", QoS::ExactlyOnce, b.clone(), false)],
        2,
    )
    .await;
    let mut b_ids = Vec::new();
    for (c, (_, id)) in subs.iter_mut().zip(who) {
        let p = match next(c, id).await {
            Packet::Publish(p) => p,
            other => panic!("{id}: expected PUBLISH B, got {other:?}"),
        };
        assert_eq!(&p.payload[..], &b[..], "{id}: {p:?}");
        b_ids.push(p.packet_id.unwrap().get());
    }

    // The store promises fsync before PUBACK/PUBREC to a publisher; for the
    // subscriber-side records (PUBREC received, packet id assigned) it promises
    // durability but not that the record is synced before the next packet is
    // sent. Give `always` a moment so this checks the recovered state, not that
    // ordering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut broker);
    drop(subs);
    let broker = fx.spawn();

    let mut resumed = Vec::new();
    for (i, (v, id)) in who.into_iter().enumerate() {
        let (mut c, ack) = connect_persistent(broker.addr, v, id).await;
        assert!(ack.session_present, "{id}: {ack:?}");
        // Expect exactly: PUBREL for A and PUBLISH B with DUP, in either order.
        let (mut rel_a, mut pub_b) = (false, false);
        for _ in 0..2 {
            match next(&mut c, id).await {
                Packet::PubRel(r) => {
                    assert_eq!(
                        r.packet_id.get(),
                        a_ids[i],
                        "{id}: PUBREL for the wrong id: {r:?}"
                    );
                    assert!(!rel_a, "{id}: PUBREL A twice");
                    rel_a = true;
                }
                Packet::Publish(p) => {
                    assert_ne!(
                        &p.payload[..],
                        &a[..],
                        "{id}: PUBLISH A re-sent although its PUBREC was received [MQTT-4.4.0-1]: {p:?}"
                    );
                    assert_eq!(&p.payload[..], &b[..], "{id}: {p:?}");
                    assert!(
                        p.dup,
                        "{id}: a re-sent PUBLISH has DUP=1 [MQTT-3.3.1-1]: {p:?}"
                    );
                    assert_eq!(
                        p.packet_id.unwrap().get(),
                        b_ids[i],
                        "{id}: B's packet id changed: {p:?}"
                    );
                    assert_eq!(p.qos, QoS::ExactlyOnce, "{id}: {p:?}");
                    assert!(!pub_b, "{id}: PUBLISH B twice");
                    pub_b = true;
                }
                other => panic!("{id}: expected PUBREL A / PUBLISH B, got {other:?}"),
            }
        }
        // Finish both flows; nothing else may follow.
        c.send(&pubcomp(a_ids[i])).await;
        c.send(&pubrec(b_ids[i])).await;
        match next(&mut c, id).await {
            Packet::PubRel(r) => assert_eq!(r.packet_id.get(), b_ids[i], "{id}: {r:?}"),
            other => panic!("{id}: expected PUBREL for B, got {other:?}"),
        }
        c.send(&pubcomp(b_ids[i])).await;
        c.expect_silence(Duration::from_millis(300)).await;
        resumed.push(c);
    }

    // The subscriptions survived too.
    let (mut publ, _) = raw_connected(broker.addr, V311, "out2-pub-2", true).await;
    let c_msg = b"out2-C-after".to_vec();
    publish_all(
        &mut publ,
        &[("out2/t", QoS::ExactlyOnce, c_msg.clone(), false)],
        1,
    )
    .await;
    for (c, (_, id)) in resumed.iter_mut().zip(who) {
        let r = drain_all(
            c,
            std::slice::from_ref(&c_msg),
            WAIT,
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(r.count(&c_msg), 1, "{id}: {r:?}");
        assert!(!r.has(&a) && !r.has(&b), "{id}: old message again: {r:?}");
    }
}

// ---------------------------------------------------------------------------------
// 3. Inbound QoS 2: a packet id awaiting PUBREL survives, so the publisher's DUP
//    re-send is not delivered twice.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_qos2_awaiting_pubrel_survives_kill9() {
    let fx = Fixture::new();
    let mut broker = fx.spawn();
    // The subscriber is offline throughout, so what it drains at the end is every
    // delivery the broker ever made to it, across both broker lives.
    let (mut sub, _) = connect_persistent(broker.addr, V311, "in2-sub").await;
    sub.subscribe(1, "in2/#", QoS::ExactlyOnce).await;
    disconnect(sub).await;

    let pubs = [
        (V311, "in2-pub-311", b"in2-from-311".to_vec()),
        (V5, "in2-pub-v5", b"in2-from-v5".to_vec()),
    ];
    let mut conns = Vec::new();
    for (v, id, payload) in &pubs {
        let (mut c, ack) = connect_persistent(broker.addr, *v, id).await;
        assert!(!ack.session_present, "{id}: {ack:?}");
        c.send(&publish(
            "in2/t",
            QoS::ExactlyOnce,
            7,
            payload,
            false,
            false,
        ))
        .await;
        match next(&mut c, id).await {
            Packet::PubRec(r) => {
                assert_eq!(r.packet_id.get(), 7, "{id}: {r:?}");
                assert_eq!(r.reason_code, ReasonCode::SUCCESS, "{id}: {r:?}");
            }
            other => panic!("{id}: expected PUBREC 7, got {other:?}"),
        }
        conns.push(c); // no PUBREL yet
    }

    kill9(&mut broker);
    drop(conns);
    let broker = fx.spawn();

    for (v, id, payload) in &pubs {
        let (mut c, ack) = connect_persistent(broker.addr, *v, id).await;
        assert!(ack.session_present, "{id}: {ack:?}");
        // A client resuming a QoS 2 flow may re-send the PUBLISH with DUP (it
        // cannot know whether its PUBREL state was kept); the broker must answer
        // PUBREC and not route the message a second time.
        c.send(&publish("in2/t", QoS::ExactlyOnce, 7, payload, false, true))
            .await;
        match next(&mut c, id).await {
            Packet::PubRec(r) => {
                assert_eq!(r.packet_id.get(), 7, "{id}: {r:?}");
                assert_eq!(r.reason_code, ReasonCode::SUCCESS, "{id}: {r:?}");
            }
            other => panic!("{id}: expected PUBREC 7 for the DUP re-send, got {other:?}"),
        }
        c.send(&pubrel(7)).await;
        match next(&mut c, id).await {
            Packet::PubComp(p) => {
                assert_eq!(p.packet_id.get(), 7, "{id}: {p:?}");
                assert_eq!(p.reason_code, ReasonCode::SUCCESS, "{id}: {p:?}");
            }
            other => panic!("{id}: expected PUBCOMP 7, got {other:?}"),
        }
        if v.is_v5() {
            // The id is released now: a second PUBREL is for an unknown id.
            c.send(&pubrel(7)).await;
            match next(&mut c, id).await {
                Packet::PubComp(p) => assert_eq!(
                    p.reason_code,
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    "{id}: {p:?}"
                ),
                other => panic!("{id}: expected PUBCOMP 0x92, got {other:?}"),
            }
        }
    }

    let (mut sub, ack) = connect_persistent(broker.addr, V311, "in2-sub").await;
    assert!(ack.session_present, "{ack:?}");
    let want: Vec<Vec<u8>> = pubs.iter().map(|(_, _, p)| p.clone()).collect();
    let r = drain_all(
        &mut sub,
        &want,
        Duration::from_secs(5),
        Duration::from_millis(500),
    )
    .await;
    for p in &want {
        assert_eq!(
            r.count(p),
            1,
            "{} must arrive exactly once overall: {r:?}",
            show(p)
        );
    }
    assert_eq!(r.total(), want.len(), "unexpected deliveries: {r:?}");
}

// ---------------------------------------------------------------------------------
// 4. Random kill -9 under load: nothing acknowledged is lost.

/// Publish QoS 1 messages `"{prefix}-{seq}"` to `topic` with up to `window` of
/// them unacknowledged, until the broker dies (EOF / reset / failed write) or
/// `limit` passes. Returns (payloads acknowledged with PUBACK, payloads sent).
/// Only the first list is a promise from the broker.
async fn flood_qos1(
    addr: std::net::SocketAddr,
    client_id: String,
    topic: &'static str,
    window: usize,
    limit: Duration,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    let Ok(stream) = TcpStream::connect(addr).await else {
        return (acked, sent);
    };
    let mut c = RawClient::from_stream(stream, V311);
    if !try_send(&mut c, &connect_packet(V311, &client_id, true)).await {
        return (acked, sent);
    }
    match c.recv_within(WAIT).await {
        Ok(Some(Packet::ConnAck(a))) if a.reason_code == ReasonCode::SUCCESS => {}
        Ok(Some(other)) => panic!("{client_id}: expected CONNACK, got {other:?}"),
        _ => return (acked, sent),
    }
    let deadline = Instant::now() + limit;
    let mut outstanding: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut seq: u64 = 0;
    loop {
        while outstanding.len() < window && Instant::now() < deadline {
            let id = (seq % 65_000) as u16 + 1;
            let payload = format!("{client_id}-{seq}").into_bytes();
            seq += 1;
            if !try_send(
                &mut c,
                &publish(topic, QoS::AtLeastOnce, id, &payload, false, false),
            )
            .await
            {
                return (acked, sent);
            }
            sent.push(payload.clone());
            outstanding.insert(id, payload);
        }
        if outstanding.is_empty() {
            return (acked, sent); // past the deadline with everything acked
        }
        match c.recv_within(Duration::from_secs(2)).await {
            Ok(Some(Packet::PubAck(a))) => {
                let p = outstanding.remove(&a.packet_id.get()).unwrap_or_else(|| {
                    panic!("{client_id}: PUBACK for an id not in flight: {a:?}")
                });
                acked.push(p);
            }
            Ok(Some(other)) => panic!("{client_id}: unexpected {other:?}"),
            // EOF/reset: the broker is dead. Silence: stalled; stop either way.
            Ok(None) | Err(()) => return (acked, sent),
        }
    }
}

/// The persistent subscriber's share of one round: connect at `from`, receive and
/// acknowledge until `until` (then DISCONNECT) or the broker dies. Returns the
/// payloads it received and the Session Present flag, if it got connected.
async fn subscriber_window(
    addr: std::net::SocketAddr,
    from: Duration,
    until: Option<Duration>,
) -> (Vec<Vec<u8>>, Option<bool>) {
    let start = Instant::now();
    tokio::time::sleep(from).await;
    let Some((mut c, ack)) = try_connect_persistent(addr, V311, "chaos-sub").await else {
        return (Vec::new(), None);
    };
    let limit = until.map_or(Duration::from_secs(10), |u| {
        u.saturating_sub(start.elapsed())
    });
    let r = drain(&mut c, limit, Duration::ZERO, |_| false).await;
    if !r.closed {
        let _ = try_send(&mut c, &Packet::Disconnect(Default::default())).await;
    }
    (r.copies.into_keys().collect(), Some(ack.session_present))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acked_message_lost_under_random_kill9() {
    const ROUNDS: usize = 4;
    const PUBLISHERS: usize = 2;
    const WINDOW: usize = 16;
    const TOPIC: &str = "chaos/t";
    let test_start = Instant::now();
    let mut rng = Rng::from_env("no_acked_message_lost_under_random_kill9");
    let fx = Fixture::new();
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut published: HashSet<Vec<u8>> = HashSet::new();
    let mut received: HashSet<Vec<u8>> = HashSet::new();

    for round in 0..ROUNDS {
        let mut broker = fx.spawn();
        if round == 0 {
            let (mut c, ack) = connect_persistent(broker.addr, V311, "chaos-sub").await;
            assert!(!ack.session_present, "{ack:?}");
            c.subscribe(1, TOPIC, QoS::AtLeastOnce).await;
            disconnect(c).await;
        }
        let kill_at = Duration::from_millis(rng.range(50, 500));
        // Subscriber: offline, online the whole round, or online for a while.
        let plan = match rng.range(0, 3) {
            0 => None,
            1 => Some((Duration::ZERO, None)),
            _ => {
                let from = rng.range(0, kill_at.as_millis() as u64);
                let until = from + rng.range(10, 300);
                Some((
                    Duration::from_millis(from),
                    Some(Duration::from_millis(until)),
                ))
            }
        };
        println!("round {round}: kill after {kill_at:?}, subscriber {plan:?}");
        let pubs: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                tokio::spawn(flood_qos1(
                    broker.addr,
                    format!("chaos-r{round}-p{p}"),
                    TOPIC,
                    WINDOW,
                    Duration::from_secs(5),
                ))
            })
            .collect();
        let sub =
            plan.map(|(from, until)| tokio::spawn(subscriber_window(broker.addr, from, until)));

        tokio::time::sleep(kill_at).await;
        kill9(&mut broker);

        let mut round_acked = 0;
        for h in pubs {
            let (a, s) = tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("publisher ends once the broker is dead")
                .expect("publisher task");
            round_acked += a.len();
            acked.extend(a);
            published.extend(s);
        }
        if let Some(h) = sub {
            let (got, present) = tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .expect("subscriber ends once the broker is dead")
                .expect("subscriber task");
            if let Some(present) = present {
                assert!(present, "round {round}: chaos-sub lost its session");
            }
            received.extend(got);
        }
        println!(
            "round {round}: {round_acked} acknowledged, {} received so far",
            received.len()
        );
    }

    // Restart once more and drain what is still queued.
    let broker = fx.spawn();
    let (mut c, ack) = connect_persistent(broker.addr, V311, "chaos-sub").await;
    assert!(ack.session_present, "chaos-sub lost its session: {ack:?}");
    let before = received.clone();
    let still_due: Vec<Vec<u8>> = acked
        .iter()
        .filter(|p| !before.contains(*p))
        .cloned()
        .collect();
    let r = drain(
        &mut c,
        Duration::from_secs(20),
        Duration::from_millis(300),
        |r| has_all(r, still_due.iter()),
    )
    .await;
    received.extend(r.copies.into_keys());

    assert!(
        !acked.is_empty(),
        "no message was acknowledged in any round: nothing was tested"
    );
    let missing: Vec<String> = acked
        .iter()
        .filter(|p| !received.contains(*p))
        .map(|p| show(p))
        .collect();
    // Which round and publisher the lost ones came from ("chaos-r1-p0": 32, ...).
    let mut lost_by_publisher: std::collections::BTreeMap<&str, usize> = Default::default();
    for m in &missing {
        *lost_by_publisher
            .entry(m.rsplit_once('-').map_or("?", |(p, _)| p))
            .or_default() += 1;
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost ({lost_by_publisher:?}), e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    let garbage: Vec<String> = received
        .iter()
        .filter(|p| !published.contains(*p))
        .map(|p| show(p))
        .collect();
    assert!(
        garbage.is_empty(),
        "received payloads never published: {garbage:?}"
    );

    // The subscription itself survived the kills: a new message still arrives.
    let (mut publ, _) = raw_connected(broker.addr, V311, "chaos-probe", true).await;
    let probe = b"chaos-probe-after-restarts".to_vec();
    publish_all(
        &mut publ,
        &[(TOPIC, QoS::AtLeastOnce, probe.clone(), false)],
        1,
    )
    .await;
    let r = drain_all(&mut c, std::slice::from_ref(&probe), WAIT, Duration::ZERO).await;
    assert!(
        r.has(&probe),
        "chaos-sub's subscription is gone after {ROUNDS} kills (session present, nothing routed to it)"
    );
    println!(
        "{} acknowledged, {} published, {} distinct received, {:?}",
        acked.len(),
        published.len(),
        received.len(),
        test_start.elapsed()
    );
}

/// The deterministic counterpart of the random test: the same subscriber through
/// several kill -9 / restart cycles, with a batch of acknowledged messages queued
/// while it is offline in each. Restarts are where the store rewrites or drops old
/// segments, so state that survives one restart must survive the next ones too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_queue_survive_repeated_kill9_restarts() {
    const CYCLES: usize = 6;
    const PER_CYCLE: usize = 100;
    let fx = Fixture::new();
    let mut broker = fx.spawn();
    let (mut c, _) = connect_persistent(broker.addr, V311, "cycle-sub").await;
    c.subscribe(1, "cycle/t", QoS::AtLeastOnce).await;
    disconnect(c).await;
    for cycle in 0..CYCLES {
        let batch: Vec<Vec<u8>> = (0..PER_CYCLE)
            .map(|i| format!("cycle-{cycle}-{i:03}").into_bytes())
            .collect();
        let msgs: Vec<(&str, QoS, Vec<u8>, bool)> = batch
            .iter()
            .map(|p| ("cycle/t", QoS::AtLeastOnce, p.clone(), false))
            .collect();
        let (mut publ, _) = raw_connected(broker.addr, V311, "cycle-pub", true).await;
        publish_all(&mut publ, &msgs, 1).await;
        let (mut c, ack) = connect_persistent(broker.addr, V311, "cycle-sub").await;
        assert!(ack.session_present, "cycle {cycle}: session lost: {ack:?}");
        let r = drain_all(&mut c, &batch, Duration::from_secs(5), Duration::ZERO).await;
        let got = batch.iter().filter(|p| r.has(p)).count();
        assert_eq!(
            got,
            PER_CYCLE,
            "cycle {cycle}: {got} of {PER_CYCLE} acknowledged messages delivered after {cycle} restarts (segments {:?})\n{}",
            segments(&fx.data),
            broker.log_text()
        );
        disconnect(c).await;
        kill9(&mut broker);
        broker = fx.spawn();
    }
}

// ---------------------------------------------------------------------------------
// 5. Torn and corrupt segments.

/// Segment files directly in `dir` (20-digit id + ".seg"), sorted by id: the last
/// is the newest.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let id = path.file_name()?.to_str()?.strip_suffix(".seg")?;
            if id.len() != 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((id.parse().ok()?, path))
        })
        .collect();
    segs.sort();
    segs.into_iter().map(|(_, p)| p).collect()
}

/// One past the last nonzero byte: where written data ends in a preallocated
/// segment (its unused tail is zeros). May fall a little short of the true end if
/// the last record ends in zero bytes.
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Copy a data dir (files and subdirectories) so each damage case starts from the
/// same untouched state.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy file");
        }
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// How one case damages the newest segment. The damage offset is the first byte
/// changed (or the new length, for a truncation).
enum Damage {
    /// `set_len` at an offset inside a message's payload.
    Truncate,
    /// XOR a few bytes at an offset inside a message's payload.
    Flip,
    /// Zero a region starting inside a message's payload.
    Zero,
    /// A few nonzero bytes just past the written data (may hit the last record).
    GarbageAfterData,
    /// Flip bytes within the first 32 bytes (magic / format version).
    Header,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_and_corrupt_segments_lose_only_the_tail() {
    const N: usize = 200;
    const TOPIC: &str = "torn/t";
    let mut rng = Rng::from_env("torn_and_corrupt_segments_lose_only_the_tail");
    let fx = Fixture::new();

    // Run 1: the persistent session and its subscription; clean stop.
    let mut broker = fx.spawn();
    let (mut c, _) = connect_persistent(broker.addr, V311, "torn-sub").await;
    c.subscribe(1, TOPIC, QoS::AtLeastOnce).await;
    disconnect(c).await;
    let status = broker.terminate();
    assert!(
        status.success(),
        "run 1 exit {status:?}\n{}",
        broker.log_text()
    );
    drop(broker);

    // Run 2: N acknowledged messages queued for the offline subscriber; kill -9.
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("<torn-msg {i:04} {}>", "z".repeat(i % 37)).into_bytes())
        .collect();
    let mut broker = fx.spawn();
    let (mut publ, _) = raw_connected(broker.addr, V311, "torn-pub", true).await;
    let msgs: Vec<(&str, QoS, Vec<u8>, bool)> = payloads
        .iter()
        .map(|p| (TOPIC, QoS::AtLeastOnce, p.clone(), false))
        .collect();
    publish_all(&mut publ, &msgs, 1).await;
    kill9(&mut broker);
    drop(broker);

    // Where is each message in the newest segment? (Run 2 started a new segment, so
    // all of them are in it.) fx.data is never started on again: the pristine copy.
    let segs = segments(&fx.data);
    assert!(
        segs.len() >= 2,
        "expected a segment per run in {:?}: {segs:?}",
        fx.data
    );
    let newest_path = segs.last().unwrap().clone();
    let newest_name = newest_path.file_name().unwrap().to_owned();
    let pristine = std::fs::read(&newest_path).expect("read newest segment");
    let end = data_end(&pristine);
    let spans: Vec<(usize, usize)> = payloads
        .iter()
        .map(|p| {
            let at = find(&pristine[..end], p).unwrap_or_else(|| {
                panic!("payload {} not found verbatim in {newest_path:?}", show(p))
            });
            (at, at + p.len())
        })
        .collect();
    println!(
        "newest segment {newest_path:?}: {} bytes, data ends at {end}",
        pristine.len()
    );

    let cases = [
        ("truncate", Damage::Truncate),
        ("flip", Damage::Flip),
        ("zero", Damage::Zero),
        ("garbage-after-data", Damage::GarbageAfterData),
        ("header", Damage::Header),
    ];
    let scratch = tempfile::tempdir().expect("scratch dir");
    for (n, (name, damage)) in cases.iter().enumerate() {
        let dir = scratch.path().join(format!("case-{n}-{name}"));
        copy_dir(&fx.data, &dir);
        let seg = dir.join(&newest_name);
        let mut bytes = pristine.clone();
        // Inside a random message's payload, so the damage is inside a record.
        let k = rng.index(N);
        let (ks, ke) = spans[k];
        let in_payload = ks + rng.index(ke - ks);
        let (off, hits_data) = match damage {
            Damage::Truncate => {
                let off = ks + 1 + rng.index(ke - ks - 1);
                bytes.truncate(off);
                (off, true)
            }
            Damage::Flip => {
                bytes[in_payload] ^= rng.range(1, 256) as u8;
                for _ in 0..rng.range(0, 4) {
                    let i = in_payload + 1 + rng.index(8);
                    bytes[i] ^= rng.range(1, 256) as u8;
                }
                (in_payload, true)
            }
            Damage::Zero => {
                let to = (in_payload + rng.range(64, 4096) as usize).min(bytes.len());
                bytes[in_payload..to].fill(0);
                (in_payload, true)
            }
            Damage::GarbageAfterData => {
                let off = end + rng.index(64);
                if bytes.len() < off + 8 {
                    bytes.resize(off + 8, 0); // in case the file is not preallocated
                }
                for b in &mut bytes[off..off + 8] {
                    *b = rng.range(1, 256) as u8;
                }
                (off, false)
            }
            Damage::Header => {
                let off = rng.index(28);
                for b in &mut bytes[off..off + 4] {
                    *b ^= rng.range(1, 256) as u8;
                }
                (off, false)
            }
        };
        std::fs::write(&seg, &bytes).expect("write damaged segment");
        let required: Vec<Vec<u8>> = payloads
            .iter()
            .zip(&spans)
            .filter(|(_, &(_, e))| e + 256 <= off)
            .map(|(p, _)| p.clone())
            .collect();
        println!(
            "case {name}: damage at {off} (message {k}), {} messages required",
            required.len()
        );

        let broker = fx.spawn_on(&dir); // panics with the log if it does not start
        if hits_data {
            assert!(
                broker.wait_log_count("damaged", 1, Duration::from_secs(5)),
                "case {name}: no `damaged` warning for damage at {off}:\n{}",
                broker.log_text()
            );
            assert!(
                !files_under(&dir.join("damaged")).is_empty(),
                "case {name}: the damaged segment was not copied to damaged/:\n{}",
                broker.log_text()
            );
        }

        let (mut c, ack) = connect_persistent(broker.addr, V311, "torn-sub").await;
        if !matches!(damage, Damage::Header) {
            assert!(
                ack.session_present,
                "case {name}: session lost: {ack:?}\n{}",
                broker.log_text()
            );
        }
        let r = drain_all(
            &mut c,
            &required,
            Duration::from_secs(10),
            Duration::from_millis(500),
        )
        .await;
        let missing: Vec<String> = required
            .iter()
            .filter(|p| !r.has(p))
            .map(|p| show(p))
            .collect();
        assert!(
            missing.is_empty(),
            "case {name} (damage at {off}): lost {} messages written well before it, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            broker.log_text()
        );
        for (p, copies) in &r.copies {
            assert!(
                payloads.contains(p),
                "case {name}: garbage delivered: {:?} {copies:?}",
                show(p)
            );
            assert!(
                copies.iter().all(|c| c.topic == TOPIC),
                "case {name}: {:?} {copies:?}",
                show(p)
            );
        }
        println!("case {name}: {} of {N} messages recovered", r.copies.len());

        // The broker keeps working: a new message reaches a fresh subscriber and,
        // when its session survived (always, unless the header was hit), the
        // persistent one without a new SUBSCRIBE.
        let (mut check, _) = raw_connected(broker.addr, V311, "torn-check", true).await;
        check.subscribe(1, TOPIC, QoS::AtLeastOnce).await;
        let after = format!("torn-after-{name}").into_bytes();
        let (mut publ, _) = raw_connected(broker.addr, V311, "torn-pub-2", true).await;
        publish_all(
            &mut publ,
            &[(TOPIC, QoS::AtLeastOnce, after.clone(), false)],
            1,
        )
        .await;
        let want = std::slice::from_ref(&after);
        let r = drain_all(&mut check, want, WAIT, Duration::ZERO).await;
        assert!(
            r.has(&after),
            "case {name}: broker not working after recovery: {r:?}"
        );
        if ack.session_present {
            let r = drain_all(&mut c, want, WAIT, Duration::ZERO).await;
            assert!(r.has(&after), "case {name}: subscription lost: {r:?}");
            for p in r.copies.keys() {
                assert!(
                    p == &after || payloads.contains(p),
                    "case {name}: garbage {:?}",
                    show(p)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// 6. One data dir, one broker.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_broker_on_same_data_dir_is_refused() {
    let fx = Fixture::new();
    let mut first = fx.spawn();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "info", "--data-dir"])
        .arg(&fx.data)
        .args(["-c", fx.config.to_str().unwrap()]);
    // A second broker that does not check the lock runs forever: run_bounded then
    // fails the test.
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "second broker on one data dir: {out:?}"
    );
    assert!(
        out.stderr.to_lowercase().contains("lock"),
        "stderr should mention the lock: {out:?}"
    );

    // The first one is unaffected.
    let (mut c, _) = raw_connected(first.addr, V311, "lock-check", true).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(next(&mut c, "lock-check").await, Packet::PingResp);

    // A lock left behind by a killed broker does not block the next one.
    kill9(&mut first);
    let again = fx.spawn();
    let _ = raw_connected(again.addr, V311, "lock-check", true).await;
}

// ---------------------------------------------------------------------------------
// 7. in_memory = true.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_writes_nothing_and_forgets_on_restart() {
    let fx = Fixture::with_storage("in_memory = true\n");
    let mut broker = fx.spawn();
    let (mut sub, ack) = connect_persistent(broker.addr, V311, "mem-sub").await;
    assert!(!ack.session_present, "{ack:?}");
    sub.subscribe(1, "mem/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let (mut publ, _) = raw_connected(broker.addr, V311, "mem-pub", true).await;
    publish_all(
        &mut publ,
        &[
            ("mem/q", QoS::AtLeastOnce, b"mem-queued".to_vec(), false),
            ("mem/r", QoS::AtLeastOnce, b"mem-retained".to_vec(), true),
        ],
        1,
    )
    .await;
    // The session works while the broker runs: the queued message is there.
    let (mut sub, ack) = connect_persistent(broker.addr, V311, "mem-sub").await;
    assert!(
        ack.session_present,
        "in memory, the session lives while the broker does: {ack:?}"
    );
    let want = [b"mem-queued".to_vec(), b"mem-retained".to_vec()];
    let r = drain_all(&mut sub, &want, WAIT, Duration::ZERO).await;
    assert!(want.iter().all(|p| r.has(p)), "{r:?}");
    disconnect(sub).await;

    let files = files_under(&fx.data);
    assert!(files.is_empty(), "in_memory = true wrote {files:?}");

    kill9(&mut broker);
    let broker = fx.spawn();
    let (mut sub, ack) = connect_persistent(broker.addr, V311, "mem-sub").await;
    assert!(
        !ack.session_present,
        "in_memory: the session must not survive a restart: {ack:?}"
    );
    // Nor the retained message.
    sub.subscribe(1, "mem/#", QoS::AtLeastOnce).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    let files = files_under(&fx.data);
    assert!(files.is_empty(), "in_memory = true wrote {files:?}");
}

// ---------------------------------------------------------------------------------
// An offline session's backlog waits on disk (issue 12): only a read-ahead of it
// is held in memory, read back from the log as the session drains.

/// The config for the backlog tests: a read-ahead of 16 messages, so nearly all
/// of a backlog is read back from disk.
const SMALL_READ_AHEAD: &str = "session_read_ahead = 16\nsession_read_ahead_bytes = 65536\n";

/// The index in a backlog test payload (`bk-<index>-<padding>`).
fn index_of(payload: &[u8]) -> usize {
    let s = String::from_utf8_lossy(payload);
    s.split('-')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a backlog payload: {s}"))
}

/// Receive in order, acknowledging each flow, until `until` holds for the
/// messages seen as new (or `limit` passes, or the broker goes away). A QoS 2
/// re-send of a packet id awaiting PUBREL is not new: `awaiting_rel` is the
/// client's session state for that, kept across connections [MQTT-4.3.3]. Returns
/// the indices in arrival order and whether the connection ended.
async fn drain_in_order(
    c: &mut RawClient,
    awaiting_rel: &mut HashMap<u16, usize>,
    until: impl Fn(&[usize]) -> bool,
    limit: Duration,
) -> (Vec<usize>, bool) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    while !until(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = match c.recv_within(left).await {
            Err(()) => return (seen, false),
            Ok(None) => return (seen, true),
            Ok(Some(Packet::Publish(p))) => {
                let i = index_of(&p.payload);
                let id = p.packet_id.map(PacketId::get).expect("QoS 1/2");
                match p.qos {
                    QoS::ExactlyOnce => {
                        match awaiting_rel.insert(id, i) {
                            None => seen.push(i),
                            Some(held) => assert_eq!(held, i, "packet id {id} reused"),
                        }
                        pubrec(id)
                    }
                    _ => {
                        seen.push(i);
                        puback(id)
                    }
                }
            }
            Ok(Some(Packet::PubRel(rel))) => {
                awaiting_rel.remove(&rel.packet_id.get());
                pubcomp(rel.packet_id.get())
            }
            Ok(Some(other)) => panic!("subscriber: unexpected {other:?}"),
        };
        if !try_send(c, &reply).await {
            return (seen, true);
        }
    }
    (seen, false)
}

/// 3,000 messages (QoS 1 and 2, 300 B) for an offline session with a read-ahead
/// of 16: it drains them in publish order; a kill -9 in the middle of the drain
/// loses none, and after the restart the rest follows in order, QoS 2 exactly
/// once (a QoS 1 message in flight at the kill may come twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_backlog_on_disk_drains_in_order_across_kill9() {
    const N: usize = 3000;
    let fx = Fixture::with_lines(SMALL_READ_AHEAD, "durability = \"always\"\n");
    let mut broker = fx.spawn();
    let (mut sub, _) = connect_persistent(broker.addr, V5, "bk-sub").await;
    sub.subscribe(1, "bk/#", QoS::ExactlyOnce).await;
    disconnect(sub).await;

    let qos_of = |i: usize| {
        if i % 3 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        }
    };
    let (mut publ, _) = raw_connected(broker.addr, V311, "bk-pub", true).await;
    let msgs: Vec<(String, QoS, Vec<u8>)> = (0..N)
        .map(|i| {
            let payload = format!("bk-{i}-{}", "x".repeat(300)).into_bytes();
            (format!("bk/{}", i % 7), qos_of(i), payload)
        })
        .collect();
    for chunk in msgs.chunks(50) {
        let batch: Vec<(&str, QoS, Vec<u8>, bool)> = chunk
            .iter()
            .map(|(t, q, p)| (t.as_str(), *q, p.clone(), false))
            .collect();
        publish_all(&mut publ, &batch, 1).await;
    }
    drop(publ);

    // Part of the backlog, in order, then the broker dies mid-drain.
    let (mut sub, ack) = connect_persistent(broker.addr, V5, "bk-sub").await;
    assert!(ack.session_present);
    let mut held = HashMap::new();
    let (first, _) = drain_in_order(&mut sub, &mut held, |s| s.len() >= N / 3, WAIT * 4).await;
    assert!(
        first.len() >= N / 3,
        "only {} of {N} before the kill",
        first.len()
    );
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "out of order before the kill: {:?}",
        first.windows(2).find(|w| w[0] >= w[1])
    );
    assert_eq!(first[0], 0);
    kill9(&mut broker);

    let broker = fx.spawn();
    let (mut sub, ack) = connect_persistent(broker.addr, V5, "bk-sub").await;
    assert!(ack.session_present, "the session survived the kill");
    let done = |s: &[usize]| s.last() == Some(&(N - 1));
    let (rest, _) = drain_in_order(&mut sub, &mut held, done, WAIT * 6).await;
    // What was in flight at the kill comes again first (DUP), then the rest.
    let last_before = *first.last().expect("some");
    let mut all: Vec<usize> = first.clone();
    let mut next_new = last_before + 1;
    for &i in &rest {
        if i <= last_before {
            assert_ne!(
                qos_of(i),
                QoS::ExactlyOnce,
                "QoS 2 message {i} delivered again after its PUBREC"
            );
            assert!(
                last_before - i < 64,
                "{i}: only messages in flight at the kill may come again"
            );
            continue;
        }
        assert_eq!(i, next_new, "out of order or missing after the restart");
        next_new += 1;
        all.push(i);
    }
    assert_eq!(all.len(), N, "every message arrived once, in order");
    // The last flows complete; nothing new comes.
    let (extra, _) =
        drain_in_order(&mut sub, &mut held, |_| false, Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "more after the last: {extra:?}");
}

/// A message whose Message Expiry Interval ends while it waits on disk is not
/// sent [MQTT-3.3.2-5]; the ones around it are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_expiring_on_disk_is_not_sent() {
    let fx = Fixture::with_lines(SMALL_READ_AHEAD, "durability = \"always\"\n");
    let broker = fx.spawn();
    let (mut sub, _) = connect_persistent(broker.addr, V5, "bx-sub").await;
    sub.subscribe(1, "bx/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let (mut publ, _) = raw_connected(broker.addr, V5, "bx-pub", true).await;
    for i in 0..100u16 {
        let mut p = publish(
            "bx/t",
            QoS::AtLeastOnce,
            i + 1,
            format!("bk-{i}-").as_bytes(),
            false,
            false,
        );
        if let (Packet::Publish(p), true) = (&mut p, i % 10 == 5) {
            p.properties.message_expiry_interval = Some(1);
        }
        publ.send(&p).await;
        match next(&mut publ, "publisher").await {
            Packet::PubAck(a) => assert!(!a.reason_code.is_error(), "{a:?}"),
            other => panic!("publisher: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut sub, _) = connect_persistent(broker.addr, V5, "bx-sub").await;
    let (got, _) = drain_in_order(&mut sub, &mut HashMap::new(), |s| s.len() >= 90, WAIT).await;
    let want: Vec<usize> = (0..100).filter(|i| i % 10 != 5).collect();
    assert_eq!(got, want);
    sub.expect_silence(Duration::from_millis(300)).await;
}

/// A v5 client that resumes its session with Session Expiry 0 (it ends with
/// this connection) still gets the backlog that waited on disk for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_disk_is_delivered_to_a_resume_with_expiry_zero() {
    let fx = Fixture::with_lines(SMALL_READ_AHEAD, "durability = \"always\"\n");
    let broker = fx.spawn();
    let (mut sub, _) = connect_persistent(broker.addr, V5, "bz-sub").await;
    sub.subscribe(1, "bz/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let (mut publ, _) = raw_connected(broker.addr, V311, "bz-pub", true).await;
    let msgs: Vec<(&str, QoS, Vec<u8>, bool)> = (0..200)
        .map(|i| {
            (
                "bz/t",
                QoS::AtLeastOnce,
                format!("bk-{i}-").into_bytes(),
                false,
            )
        })
        .collect();
    for chunk in msgs.chunks(50) {
        publish_all(&mut publ, chunk, 1).await;
    }
    // Let the backlog reach the disk (its batch is synced: the acks above).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sub = RawClient::connect(broker.addr, V5).await;
    sub.send(&connect_packet(V5, "bz-sub", false)).await;
    match sub.recv().await {
        Some(Packet::ConnAck(a)) => assert!(a.session_present, "{a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let (got, _) = drain_in_order(&mut sub, &mut HashMap::new(), |s| s.len() >= 200, WAIT).await;
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------
// The harness itself.

/// `BrokerProcess::spawn` gives each broker its own data dir: two at once both
/// start (with a shared dir the second would hit the LOCK), each writes its own
/// dir, and the dir goes away with its broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_brokers_get_their_own_data_dirs() {
    let a = BrokerProcess::spawn(&[]);
    let b = BrokerProcess::spawn(&[]);
    let (da, db) = (
        a.data_dir
            .as_ref()
            .expect("spawn made a data dir")
            .path()
            .to_owned(),
        b.data_dir
            .as_ref()
            .expect("spawn made a data dir")
            .path()
            .to_owned(),
    );
    assert_ne!(da, db);
    for broker in [&a, &b] {
        let (mut c, _) = connect_persistent(broker.addr, V311, "own-dir").await;
        c.subscribe(1, "x", QoS::AtLeastOnce).await;
        disconnect(c).await;
    }
    assert!(!segments(&da).is_empty(), "nothing written to {da:?}");
    assert!(!segments(&db).is_empty(), "nothing written to {db:?}");
    drop(a);
    assert!(!da.exists(), "the temp data dir outlived its broker");
}
