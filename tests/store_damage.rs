//! Store damage and store limits, black-box on the real `tern` binary: damage is
//! made by editing segment files between runs, a full file system is a small
//! tmpfs mounted for the test (the tests run as root here; without `mount` they
//! fail loudly unless `STORE_DAMAGE_NO_MOUNT=1` says to skip that one test).
//!
//! Regression tests for issue 10, items 12-16:
//! - a zeroed record boundary or one flipped byte costs that record only, is
//!   reported exactly, copied to `damaged/`, and not reported again;
//! - things named like segments (a directory, a FIFO) and a full file system do
//!   not stop a start; durable writes are refused until space returns;
//! - at the disk budget, QoS 1 messages that need no storage are accepted, and the
//!   segment files never take more than `max_bytes`;
//! - removing a `LOCK` file does not let a second broker onto a data dir.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tern::protocol::{Packet, ProtocolVersion, QoS, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;
const SEGMENT: u64 = 65536;

/// A temp dir holding a data dir and a config file with small segments.
struct Fixture {
    root: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

impl Fixture {
    fn new(storage_lines: &str) -> Fixture {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path().join("data");
        Fixture::with_data(root, data, storage_lines)
    }

    fn with_data(root: tempfile::TempDir, data: PathBuf, storage_lines: &str) -> Fixture {
        let config = root.path().join("tern.toml");
        std::fs::write(
            &config,
            format!(
                "[storage]\ndurability = \"always\"\nsegment_size = {SEGMENT}\n{storage_lines}"
            ),
        )
        .expect("write config");
        Fixture { root, data, config }
    }

    fn spawn_on(&self, data: &Path) -> BrokerProcess {
        BrokerProcess::spawn_in(data, &["-c", self.config.to_str().expect("utf-8 path")])
    }
}

/// Segment files directly in `dir`, by id.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(|e| {
            let p = e.ok()?.path();
            let stem = p.file_name()?.to_str()?.strip_suffix(".seg")?.to_owned();
            (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) && p.is_file())
                .then_some(p)
        })
        .collect();
    segs.sort();
    segs
}

/// Bytes the segment files take (their length: they are preallocated).
fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        if e.file_type().expect("file type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy file");
        }
    }
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| rd.count())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn topic(i: usize) -> String {
    format!("r/{i:04}")
}

/// Publish at QoS 1 and return the PUBACK's reason (None: the connection closed).
/// (5.0: accepted messages nobody subscribes to get 0x10 No matching
/// subscribers, retained ones too.)
async fn publish_qos1(
    c: &mut RawClient,
    topic: &str,
    id: u16,
    payload: &[u8],
    retain: bool,
) -> Option<ReasonCode> {
    let mut p = publish_packet(topic, QoS::AtLeastOnce, id, payload);
    if let Packet::Publish(p) = &mut p {
        p.retain = retain;
    }
    c.send(&p).await;
    loop {
        match c.recv_within(WAIT).await {
            Ok(Some(Packet::PubAck(a))) => {
                assert_eq!(a.packet_id.get(), id, "PUBACK for another packet");
                return Some(a.reason_code);
            }
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(()) => panic!("no PUBACK for {topic} within {WAIT:?}"),
        }
    }
}

/// Subscribe to `r/#` and collect retained topics until `want` arrived (or 10 s
/// passed), then half a second more to catch extras.
async fn retained_topics(addr: std::net::SocketAddr, want: usize) -> BTreeSet<String> {
    let (mut c, _) = raw_connected(addr, V5, "retained-reader", true).await;
    c.subscribe(1, "r/#", QoS::AtMostOnce).await;
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wait = if got.len() >= want {
            Duration::from_millis(500)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match c.recv_within(wait).await {
            Ok(Some(Packet::Publish(p))) => {
                got.insert(p.topic.clone());
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => return got,
        }
    }
}

/// A data dir with `n` retained messages `r/0000..` in a sealed segment (two
/// clean runs, so the second started a newer segment).
async fn retained_fixture(n: usize) -> Fixture {
    let fx = Fixture::new("");
    let mut b = fx.spawn_on(&fx.data);
    let (mut c, _) = raw_connected(b.addr, V5, "retainer", true).await;
    for i in 0..n {
        let payload = format!("retained payload {i} {}", "p".repeat(i % 17));
        let id = (i % 60000 + 1) as u16;
        let rc = publish_qos1(&mut c, &topic(i), id, payload.as_bytes(), true).await;
        assert_eq!(
            rc,
            Some(ReasonCode::NO_MATCHING_SUBSCRIBERS),
            "retained {i}"
        );
    }
    assert!(b.terminate().success(), "run 1:\n{}", b.log_text());
    drop(b);
    let mut b = fx.spawn_on(&fx.data);
    assert!(b.terminate().success(), "run 2:\n{}", b.log_text());
    fx
}

/// The offset of the record holding retained topic `i` in `seg` (a retained
/// record is `len | crc | kind 5 | seq | topic length | topic ...`).
fn record_of(seg: &[u8], i: usize) -> usize {
    let at = find(seg, topic(i).as_bytes()).expect("topic in segment");
    let start = at - 18;
    assert_eq!(seg[start + 8], 5, "not a retained record at {start}");
    start
}

fn expected(n: usize, lost: usize) -> BTreeSet<String> {
    (0..n).filter(|&i| i != lost).map(topic).collect()
}

/// Damage the oldest segment of a copy of `fx`'s data with `damage(bytes)`, start
/// on it twice and check both starts keep every record but one, the first reports
/// exactly that one, copies the segment to `damaged/`, and the second reports
/// nothing.
async fn damage_costs_one_record(fx: &Fixture, n: usize, lost: usize, damage: impl Fn(&mut [u8])) {
    let dir = fx.root.path().join(format!("damaged-copy-{lost}"));
    copy_dir(&fx.data, &dir);
    let segs = segments(&dir);
    assert!(segs.len() >= 2, "expected a sealed segment: {segs:?}");
    let mut bytes = std::fs::read(&segs[0]).expect("read segment");
    damage(&mut bytes);
    std::fs::write(&segs[0], &bytes).expect("write damaged segment");

    let b = fx.spawn_on(&dir);
    let got = retained_topics(b.addr, n - 1).await;
    let log = b.log_text();
    let missing: Vec<_> = expected(n, usize::MAX).difference(&got).cloned().collect();
    assert_eq!(
        got,
        expected(n, lost),
        "retained after damage to record {lost}: {} of {n}, missing {missing:?}\n{log}",
        got.len()
    );
    assert!(
        log.contains("damaged at bytes") && log.contains("1 records lost (sequence"),
        "the log does not say exactly what was lost:\n{log}"
    );
    assert_eq!(
        files_under(&dir.join("damaged")),
        1,
        "no copy in damaged/:\n{log}"
    );
    drop(b);

    // Padded over: the next start keeps the same and reports nothing new.
    let b = fx.spawn_on(&dir);
    let again = retained_topics(b.addr, n - 1).await;
    assert_eq!(again, expected(n, lost), "second start\n{}", b.log_text());
    assert!(
        !b.log_text().contains("damaged at bytes"),
        "damage reported twice:\n{}",
        b.log_text()
    );
    assert_eq!(files_under(&dir.join("damaged")), 1);
}

// ---------------------------------------------------------------------------------
// Items 12 and 13: damage costs the damaged record, not the rest of its segment.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroed_8_bytes_at_a_record_boundary_cost_one_record_not_143() {
    const N: usize = 300;
    let fx = retained_fixture(N).await;
    damage_costs_one_record(&fx, N, 143, |seg| {
        let at = record_of(seg, 143);
        seg[at..at + 8].fill(0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flipped_byte_costs_one_record_not_the_rest_of_its_segment() {
    const N: usize = 300;
    let fx = retained_fixture(N).await;
    // In the payload, in the length, in the sequence number.
    for (k, delta) in [(50usize, 30usize), (120, 1), (250, 12)] {
        damage_costs_one_record(&fx, N, k, |seg| {
            let at = record_of(seg, k);
            seg[at + delta] ^= 0x04;
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------
// Item 14: what used to stop a start.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn things_named_like_segments_do_not_stop_a_start() {
    const N: usize = 20;
    let fx = retained_fixture(N).await;
    // A directory older than every segment (os error 21 on read) and a FIFO
    // newer than all of them (a read that would block forever).
    std::fs::create_dir(fx.data.join("00000000000000000000.seg")).unwrap();
    let last: u64 = segments(&fx.data)
        .last()
        .and_then(|p| p.file_stem()?.to_str()?.parse().ok())
        .expect("a segment");
    let fifo = fx.data.join(format!("{:020}.seg", last + 5));
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());

    let mut b = fx.spawn_on(&fx.data);
    let got = retained_topics(b.addr, N).await;
    assert_eq!(got, expected(N, usize::MAX), "{}", b.log_text());
    assert!(
        b.log_text().contains("is not a regular file"),
        "{}",
        b.log_text()
    );
    // Durable writes work: a retained message is acknowledged and survives.
    let (mut c, _) = raw_connected(b.addr, V5, "after", true).await;
    let rc = publish_qos1(&mut c, &topic(N), 1, b"new", true).await;
    assert_eq!(rc, Some(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    assert!(b.terminate().success());
    drop(b);
    let b = fx.spawn_on(&fx.data);
    let got = retained_topics(b.addr, N + 1).await;
    assert_eq!(got.len(), N + 1, "{}", b.log_text());
}

/// A tmpfs of `size` mounted at `dir` for the test's lifetime.
struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Mount(dir.to_path_buf()));
        }
        if std::env::var("STORE_DAMAGE_NO_MOUNT").is_ok_and(|v| v == "1") {
            println!("SKIPPED: cannot mount a tmpfs ({out:?}) and STORE_DAMAGE_NO_MOUNT=1");
            return None;
        }
        panic!(
            "cannot mount a tmpfs for the full-disk test ({out:?}); run as root, or set STORE_DAMAGE_NO_MOUNT=1 to skip this one test"
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0xEEu8; 4096];
    for _ in 0..100_000 {
        if f.write_all(&chunk).is_err() {
            // Byte-sized pieces for what is left.
            while f.write_all(&[1]).is_ok() {}
            return path;
        }
    }
    panic!("the file system never filled up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_file_system_start_serves_and_refuses_durable_writes_until_space_returns() {
    let root = tempfile::tempdir().expect("temp dir");
    let Some(mount) = Mount::new(&root.path().join("mnt"), "1m") else {
        return;
    };
    let data = mount.0.join("data");
    let fx = Fixture::with_data(root, data.clone(), "");

    // Run 1: a persistent subscriber, 3 messages queued for it, 20 retained.
    let mut b = fx.spawn_on(&data);
    let mut sub = RawClient::connect(b.addr, V5).await;
    let mut p = connect_packet(V5, "sub", false);
    if let Packet::Connect(c) = &mut p {
        c.properties.session_expiry_interval = Some(3600);
    }
    sub.send(&p).await;
    assert!(matches!(sub.recv().await, Some(Packet::ConnAck(_))));
    sub.subscribe(1, "q/#", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    let _ = sub.until_closed().await;
    let (mut c, _) = raw_connected(b.addr, V5, "pub", true).await;
    for i in 0..20 {
        let rc = publish_qos1(&mut c, &topic(i), i as u16 + 1, b"kept", true).await;
        assert_eq!(rc, Some(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    }
    for i in 0..3u16 {
        let rc = publish_qos1(&mut c, "q/x", 100 + i, b"queued", false).await;
        assert_eq!(rc, Some(ReasonCode::SUCCESS));
    }
    assert!(b.terminate().success(), "{}", b.log_text());
    drop(b);

    // The file system is full: the start cannot have a new segment, so it
    // appends to the newest one while that has room.
    let filler = fill(&mount.0);
    let mut b = fx.spawn_on(&data);
    assert!(
        b.wait_log_count("cannot start a new segment", 1, Duration::from_secs(5)),
        "{}",
        b.log_text()
    );
    // It serves: retained messages recovered.
    assert_eq!(
        retained_topics(b.addr, 20).await.len(),
        20,
        "{}",
        b.log_text()
    );
    // Messages for the persistent session fill the reopened segment; the one
    // that needs a new segment waits (its PUBACK held), later ones are refused.
    let (mut a, _) = raw_connected(b.addr, V5, "pub-a", true).await;
    let big = vec![b'a'; 4000];
    let (mut accepted, mut held) = (0, None);
    for id in 1..=100u16 {
        a.send(&publish_packet("q/x", QoS::AtLeastOnce, id, &big))
            .await;
        match a.recv_within(Duration::from_secs(3)).await {
            Ok(Some(Packet::PubAck(r))) if r.reason_code == ReasonCode::SUCCESS => accepted += 1,
            Ok(Some(Packet::PubAck(r))) if r.reason_code == ReasonCode::QUOTA_EXCEEDED => break,
            Err(()) => {
                held = Some(id);
                break;
            }
            other => panic!("unexpected {other:?}\n{}", b.log_text()),
        }
    }
    println!("full disk: {accepted} accepted into the reopened segment, held: {held:?}");
    assert!(accepted < 100, "never ran out of space\n{}", b.log_text());
    assert!(
        b.wait_log_count("cannot create a new segment", 1, Duration::from_secs(5)),
        "{}",
        b.log_text()
    );
    let (mut c, _) = raw_connected(b.addr, V5, "pub-b", true).await;
    // QoS 1 that needs no storage is accepted; for the persistent session, 0x97.
    let rc = publish_qos1(&mut c, "nobody/listens", 1, b"x", false).await;
    assert_eq!(
        rc,
        Some(ReasonCode::NO_MATCHING_SUBSCRIBERS),
        "{}",
        b.log_text()
    );
    let rc = publish_qos1(&mut c, "q/x", 2, b"refused", false).await;
    assert_eq!(rc, Some(ReasonCode::QUOTA_EXCEEDED), "{}", b.log_text());

    // Space returns: the held message is acknowledged and, within a bounded
    // time, durable writes are accepted again.
    std::fs::remove_file(&filler).expect("remove filler");
    if let Some(id) = held {
        match a.recv().await {
            Some(Packet::PubAck(r)) => {
                assert_eq!(
                    (r.packet_id.get(), r.reason_code),
                    (id, ReasonCode::SUCCESS)
                );
                accepted += 1;
            }
            other => panic!("held PUBACK: {other:?}\n{}", b.log_text()),
        }
    }
    let mut ok = false;
    for i in 0..50u16 {
        match publish_qos1(&mut c, "q/x", 10 + i, b"after", false).await {
            Some(ReasonCode::SUCCESS) => {
                ok = true;
                break;
            }
            Some(ReasonCode::QUOTA_EXCEEDED) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("unexpected {other:?}\n{}", b.log_text()),
        }
    }
    assert!(
        ok,
        "still refused 10 s after space returned:\n{}",
        b.log_text()
    );
    // Every accepted message reaches the subscriber.
    let mut sub = RawClient::connect(b.addr, V5).await;
    sub.send(&p).await;
    assert!(matches!(sub.recv().await, Some(Packet::ConnAck(_))));
    let mut payloads = Vec::new();
    while payloads.len() < 3 + accepted + 1 {
        match sub.recv().await {
            Some(Packet::Publish(m)) => {
                if let Some(id) = m.packet_id {
                    sub.send(&Packet::PubAck(tern::protocol::PubResponse::success(id)))
                        .await;
                }
                payloads.push(m.payload.to_vec());
            }
            Some(_) => {}
            None => panic!("subscriber closed\n{}", b.log_text()),
        }
    }
    assert_eq!(
        payloads.iter().filter(|p| p[..] == big[..]).count(),
        accepted
    );
    assert_eq!(payloads.iter().filter(|p| p == &b"queued").count(), 3);
    assert_eq!(payloads.iter().filter(|p| p == &b"after").count(), 1);
    assert!(b.terminate().success(), "{}", b.log_text());
}

// ---------------------------------------------------------------------------------
// Item 15: the disk budget.

/// Fill the budget with QoS 1 messages for an offline persistent session until
/// they are refused; returns how many were accepted.
async fn fill_budget(c: &mut RawClient, first_id: u16) -> usize {
    let payload = vec![b'f'; 4000];
    for i in 0..2000u16 {
        let id = first_id.wrapping_add(i).max(1);
        match publish_qos1(c, "fill/x", id, &payload, false).await {
            Some(ReasonCode::SUCCESS) => {}
            Some(ReasonCode::QUOTA_EXCEEDED) => return i as usize,
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the budget was never reached");
}

async fn offline_persistent_subscriber(addr: std::net::SocketAddr, id: &str, filter: &str) {
    let mut sub = RawClient::connect(addr, V5).await;
    let mut p = connect_packet(V5, id, false);
    if let Packet::Connect(c) = &mut p {
        c.properties.session_expiry_interval = Some(3600);
    }
    sub.send(&p).await;
    assert!(matches!(sub.recv().await, Some(Packet::ConnAck(_))));
    sub.subscribe(1, filter, QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    let _ = sub.until_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_needing_no_storage_is_accepted_at_the_disk_budget() {
    let fx = Fixture::new(&format!("max_bytes = {}", 3 * SEGMENT));
    let b = fx.spawn_on(&fx.data);
    offline_persistent_subscriber(b.addr, "filler-sub", "fill/#").await;
    let (mut clean_sub, _) = raw_connected(b.addr, V5, "clean-sub", true).await;
    clean_sub.subscribe(1, "clean/#", QoS::AtLeastOnce).await;
    let (mut c, _) = raw_connected(b.addr, V5, "pub", true).await;
    let accepted = fill_budget(&mut c, 1).await;
    assert!(accepted > 10, "only {accepted} accepted before the budget");

    // No subscriber at all: accepted.
    let rc = publish_qos1(&mut c, "nobody/x", 3000, b"x", false).await;
    assert_eq!(
        rc,
        Some(ReasonCode::NO_MATCHING_SUBSCRIBERS),
        "{}",
        b.log_text()
    );
    // Only a clean subscriber: accepted and delivered.
    let rc = publish_qos1(&mut c, "clean/x", 3001, b"to-clean", false).await;
    assert_eq!(rc, Some(ReasonCode::SUCCESS), "{}", b.log_text());
    match clean_sub.recv().await {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"to-clean"),
        other => panic!("clean subscriber got {other:?}"),
    }
    // Still refused: a persistent receiver, or a retained message.
    let rc = publish_qos1(&mut c, "fill/x", 3002, b"x", false).await;
    assert_eq!(rc, Some(ReasonCode::QUOTA_EXCEEDED));
    let rc = publish_qos1(&mut c, "nobody/x", 3003, b"x", true).await;
    assert_eq!(rc, Some(ReasonCode::QUOTA_EXCEEDED));
    // 3.1.1 publishers of messages that need no storage stay connected.
    let (mut old, _) = raw_connected(b.addr, V311, "pub311", true).await;
    for i in 1..=5u16 {
        let rc = publish_qos1(&mut old, "nobody/y", i, b"x", false).await;
        assert_eq!(
            rc,
            Some(ReasonCode::SUCCESS),
            "3.1.1 publish {i}\n{}",
            b.log_text()
        );
    }
    assert!(segment_bytes(&fx.data) <= 3 * SEGMENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_use_never_exceeds_max_bytes() {
    const BUDGET: u64 = 3 * SEGMENT;
    for run in 0..4 {
        let fx = Fixture::new(&format!("max_bytes = {BUDGET}"));
        let mut b = fx.spawn_on(&fx.data);
        offline_persistent_subscriber(b.addr, "filler-sub", "fill/#").await;
        let (mut c, _) = raw_connected(b.addr, V5, "pub", true).await;
        // Watch the directory from another thread while the budget fills.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop2, data) = (stop.clone(), fx.data.clone());
        let watcher = std::thread::spawn(move || {
            let mut most = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(segment_bytes(&data));
                std::thread::sleep(Duration::from_millis(1));
            }
            most.max(segment_bytes(&data))
        });
        fill_budget(&mut c, 1).await;
        // Refused messages, acks and a restart at the budget change nothing.
        for i in 0..20u16 {
            let _ = publish_qos1(&mut c, "fill/x", 2100 + i, &[b'g'; 4000], false).await;
        }
        assert!(b.terminate().success());
        drop(b);
        let b = fx.spawn_on(&fx.data);
        let (mut c, _) = raw_connected(b.addr, V5, "pub", true).await;
        let rc = publish_qos1(&mut c, "fill/x", 1, &[b'h'; 4000], false).await;
        assert_eq!(
            rc,
            Some(ReasonCode::QUOTA_EXCEEDED),
            "run {run}\n{}",
            b.log_text()
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let most = watcher.join().unwrap();
        println!("run {run}: segment files peaked at {most} bytes (max_bytes {BUDGET})");
        assert!(
            most <= BUDGET,
            "run {run}: segments took {most} bytes, max_bytes = {BUDGET}\n{}",
            b.log_text()
        );
    }
}

// ---------------------------------------------------------------------------------
// Item 16: one data dir, one broker, whatever files are removed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_lock_file_does_not_let_a_second_broker_in() {
    let fx = Fixture::new("");
    let first = fx.spawn_on(&fx.data);
    let _ = std::fs::remove_file(fx.data.join("LOCK"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["--listen", "127.0.0.1:0", "--log", "info", "--data-dir"])
        .arg(&fx.data)
        .args(["-c", fx.config.to_str().unwrap()]);
    // A second broker that gets in runs forever: run_bounded then fails the test.
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(!out.status.success(), "second broker: {out:?}");
    assert!(out.stderr.to_lowercase().contains("locked"), "{out:?}");
    let (mut c, _) = raw_connected(first.addr, V311, "still-here", true).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}
