//! Helpers of the bridge tests (`tests/bridges.rs`, `tests/bridge_peers.rs`),
//! included by each with `#[path = "common/bridge.rs"] mod bridge;` next to
//! `mod common;`: a Mosquitto started on a free loopback port, Tern configs
//! with one `[[bridges]]` entry, the bridge status, and MQTT clients that
//! publish and receive at any QoS, completing each flow.
#![allow(dead_code)]

use crate::common::*;
use bytes::BytesMut;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern::protocol::{self, Packet, PacketId, ProtocolVersion, PubResponse, QoS};

pub const V311: ProtocolVersion = ProtocolVersion::V311;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

/// A Mosquitto on a fixed loopback port (so it can be stopped and started
/// again where the bridge looks for it), with persistence in `dir`.
pub struct Mosquitto {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub conf: PathBuf,
}

pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    require("mosquitto");
    "mosquitto".into()
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, |_| String::new()).0
    }

    /// With extra config lines after the plain listener, made by `extra` from a
    /// second free port (for another listener); returns that port too.
    ///
    /// A free port is only free until someone binds it: tests run in parallel,
    /// each starting brokers and opening connections, so a port picked here
    /// can be taken before Mosquitto binds it (Mosquitto then exits, and the
    /// test would talk to someone else's broker). The start is checked and
    /// tried again on other ports.
    pub fn start_with(dir: &Path, extra: impl Fn(u16) -> String) -> (Mosquitto, u16) {
        for _ in 0..5 {
            let (port, port2) = (free_port(), free_port());
            if let Some(m) = Mosquitto::start_on(dir, port, &extra(port2)) {
                return (m, port2);
            }
        }
        panic!("mosquitto did not start on any of 5 free ports");
    }

    /// One try on `port` (chosen by the caller, e.g. one a bridge already
    /// looks for): None when Mosquitto did not come up holding it.
    pub fn start_on(dir: &Path, port: u16, extra: &str) -> Option<Mosquitto> {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: run as root, Mosquitto would otherwise switch
                // to its own user, which cannot write its sessions here (the
                // option does nothing when not run as root). The queue of an
                // offline session holds the 100,000 messages of the big outage
                // test with room to spare.
                "allow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nmax_queued_messages 200000\nmax_inflight_messages 64\nlistener {port} 127.0.0.1\n{extra}",
                dir.display(),
            ),
        )
        .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
        };
        m.try_resume().then_some(m)
    }

    /// Start it (again) on its port, and wait until it accepts.
    pub fn resume(&mut self) {
        assert!(
            self.try_resume(),
            "mosquitto did not start again on {}",
            self.addr
        );
    }

    /// Start it and wait until it accepts; false when it exited instead (its
    /// port was taken) or did not listen within 5 s. Mosquitto binds every
    /// listener before it accepts anything and exits at once when a bind
    /// fails, so a live child a moment after a connect succeeded holds them.
    pub fn try_resume(&mut self) -> bool {
        let mut child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut up = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        if !up || !matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        self.child = Some(child);
        true
    }

    /// Stop it gracefully (SIGTERM: it saves its sessions) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Tern config with one listener on a free port, the store in `dir/data`,
/// and one bridge to `remote` sending `sensors/#` out under `gw1/`.
pub fn tern_config(dir: &Path, remote: SocketAddr) -> PathBuf {
    tern_config_with(
        dir,
        remote,
        "3.1.1",
        r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" }"#,
    )
}

pub fn tern_config_with(dir: &Path, remote: SocketAddr, protocol: &str, topics: &str) -> PathBuf {
    tern_config_tls(dir, remote, protocol, topics, "")
}

/// `extra`: more lines of the bridge (its `tls = {...}`, retry options), or
/// empty.
pub fn tern_config_tls(
    dir: &Path,
    remote: SocketAddr,
    protocol: &str,
    topics: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        format!(
            r#"[[listeners]]
bind = "127.0.0.1:0"
[auth]
allow_anonymous = true
[storage]
dir = "{}/data"
[admin]
bind = "127.0.0.1:0"
[[bridges]]
name = "cloud"
address = "{remote}"
protocol = "{protocol}"
keepalive = "5s"
topics = [{topics}]
{extra}
"#,
            dir.display()
        ),
    )
    .expect("write tern.toml");
    path
}

/// The broker's admin endpoint, from its log.
pub fn admin_addr(tern: &BrokerProcess) -> SocketAddr {
    assert!(tern.wait_log_count("admin endpoint on", 1, Duration::from_secs(5)));
    tern.log_text()
        .split("admin endpoint on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the admin address in the log")
}

/// `GET /api/v1/bridges` on the broker's admin endpoint, parsed.
pub async fn bridges_status(tern: &BrokerProcess) -> serde_json::Value {
    let (status, body) = tern::admin::http::request(
        admin_addr(tern),
        "GET",
        "/api/v1/bridges",
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("admin answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// What the (first) bridge's buffer holds: waiting, plus sent and not yet
/// acknowledged by the remote.
pub fn bridge_waiting(status: &serde_json::Value) -> u64 {
    waiting(&status["bridges"][0])
}

/// What one bridge's entry in `/api/v1/bridges` says its buffer holds.
pub fn waiting(b: &serde_json::Value) -> u64 {
    b["buffered"].as_u64().unwrap_or(0) + b["in_flight"].as_u64().unwrap_or(0)
}

pub fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero")
}

/// Publish `n` QoS 1 messages `m-<i>` to `topic`, waiting for each PUBACK.
pub async fn publish_n(addr: SocketAddr, topic: &str, range: std::ops::Range<usize>) {
    let (mut c, _) = raw_connected(addr, V311, "local-pub", true).await;
    for (k, i) in range.enumerate() {
        let id = (k % 60_000) as u16 + 1;
        c.send(&publish_packet(
            topic,
            QoS::AtLeastOnce,
            id,
            format!("m-{i}").as_bytes(),
        ))
        .await;
        match c.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, pid(id)),
            other => panic!("publisher: {other:?}"),
        }
    }
}

/// Receive QoS 1 messages (acknowledging each) until `n` distinct ones
/// arrived or `limit` passes: their topics and indices, in arrival order.
pub async fn receive(c: &mut RawClient, n: usize, limit: Duration) -> Vec<(String, usize)> {
    let mut got = Vec::new();
    let mut distinct = HashSet::new();
    let deadline = Instant::now() + limit;
    while distinct.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_within(left).await {
            Ok(Some(Packet::Publish(p))) => {
                let s = String::from_utf8_lossy(&p.payload).into_owned();
                let i = s
                    .strip_prefix("m-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected payload {s}"));
                got.push((p.topic.clone(), i));
                distinct.insert(i);
                if let Some(id) = p.packet_id {
                    c.send(&Packet::PubAck(PubResponse::success(id))).await;
                }
            }
            Ok(Some(other)) => panic!("remote subscriber: unexpected {other:?}"),
            Ok(None) | Err(()) => break,
        }
    }
    got
}

/// Distinct indices in first-arrival order (a QoS 1 re-send after a lost link
/// may come twice).
pub fn first_seen(got: &[(String, usize)]) -> Vec<usize> {
    let mut seen = HashSet::new();
    got.iter()
        .filter(|(_, i)| seen.insert(*i))
        .map(|(_, i)| *i)
        .collect()
}

// ---------------------------------------------------------------------------
// Any QoS, both ways.

/// Publish one message at `qos` and complete its flow (PUBACK; PUBREC, PUBREL,
/// PUBCOMP), asserting each answer is a success.
pub async fn publish_one(c: &mut RawClient, topic: &str, qos: QoS, id: u16, payload: &[u8]) {
    c.send(&publish_packet(topic, qos, id, payload)).await;
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => match c.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.packet_id, pid(id), "PUBACK of {topic}");
                assert!(!a.reason_code.is_error(), "{topic} refused: {a:?}");
            }
            other => panic!("publisher of {topic}: expected PUBACK, got {other:?}"),
        },
        QoS::ExactlyOnce => {
            match c.recv().await {
                Some(Packet::PubRec(a)) => {
                    assert_eq!(a.packet_id, pid(id), "PUBREC of {topic}");
                    assert!(!a.reason_code.is_error(), "{topic} refused: {a:?}");
                }
                other => panic!("publisher of {topic}: expected PUBREC, got {other:?}"),
            }
            c.send(&Packet::PubRel(PubResponse::success(pid(id)))).await;
            match c.recv().await {
                Some(Packet::PubComp(a)) => assert_eq!(a.packet_id, pid(id), "PUBCOMP"),
                other => panic!("publisher of {topic}: expected PUBCOMP, got {other:?}"),
            }
        }
    }
}

/// Publish messages `(topic, payload)` at `qos` (1 or 2) with up to `window`
/// of them unfinished at once (written in batches), and wait until every
/// flow is complete (PUBACK; PUBREC, PUBREL, PUBCOMP). Returns how long it
/// took.
pub async fn publish_pipelined(
    c: &mut RawClient,
    messages: impl IntoIterator<Item = (String, String)>,
    qos: QoS,
    window: usize,
) -> Duration {
    assert!(qos != QoS::AtMostOnce, "QoS 0 has no flow to wait for");
    let start = Instant::now();
    let mut messages = messages.into_iter().peekable();
    let mut in_flight: HashSet<u16> = HashSet::new();
    let mut next_id: u16 = 0;
    let mut wbuf = BytesMut::new();
    while messages.peek().is_some() || !in_flight.is_empty() {
        while in_flight.len() < window {
            let Some((topic, payload)) = messages.next() else {
                break;
            };
            loop {
                next_id = next_id.checked_add(1).unwrap_or(1);
                if !in_flight.contains(&next_id) {
                    break;
                }
            }
            in_flight.insert(next_id);
            let p = publish_packet(&topic, qos, next_id, payload.as_bytes());
            protocol::encode(&p, c.version, &mut wbuf).expect("encode");
        }
        if !wbuf.is_empty() {
            c.send_bytes(&wbuf).await;
            wbuf.clear();
        }
        // One answer (waiting for it), then whatever else already came.
        let mut wait = Duration::from_secs(30);
        loop {
            match c.recv_within(wait).await {
                Ok(Some(Packet::PubAck(a))) if qos == QoS::AtLeastOnce => {
                    assert!(!a.reason_code.is_error(), "publish refused: {a:?}");
                    assert!(
                        in_flight.remove(&a.packet_id.get()),
                        "PUBACK for {} that is not in flight",
                        a.packet_id.get()
                    );
                }
                Ok(Some(Packet::PubRec(a))) if qos == QoS::ExactlyOnce => {
                    assert!(!a.reason_code.is_error(), "publish refused: {a:?}");
                    assert!(
                        in_flight.contains(&a.packet_id.get()),
                        "PUBREC for {} that is not in flight",
                        a.packet_id.get()
                    );
                    let rel = Packet::PubRel(PubResponse::success(a.packet_id));
                    protocol::encode(&rel, c.version, &mut wbuf).expect("encode");
                }
                Ok(Some(Packet::PubComp(a))) if qos == QoS::ExactlyOnce => {
                    assert!(
                        in_flight.remove(&a.packet_id.get()),
                        "PUBCOMP for {} that is not in flight",
                        a.packet_id.get()
                    );
                }
                Ok(Some(other)) => panic!("publisher: unexpected {other:?}"),
                Ok(None) => panic!("publisher: the broker closed the connection"),
                Err(()) if wait.is_zero() => break,
                Err(()) => panic!(
                    "publisher: no answer within {wait:?} ({} in flight)",
                    in_flight.len()
                ),
            }
            wait = Duration::ZERO;
        }
    }
    start.elapsed()
}

/// One message a test client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub topic: String,
    pub payload: String,
    pub qos: QoS,
    pub dup: bool,
    pub user_properties: Vec<(String, String)>,
}

impl Got {
    /// The `<i>` of a payload `<anything>-<i>`.
    pub fn index(&self) -> usize {
        self.payload
            .rsplit_once('-')
            .and_then(|(_, i)| i.parse().ok())
            .unwrap_or_else(|| panic!("unexpected payload {:?}", self.payload))
    }

    pub fn property(&self, key: &str) -> Option<&str> {
        self.user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Receive PUBLISHes at any QoS until `n` arrived (counting repeats) or
/// `limit` passed, completing each flow as a subscriber does (PUBACK; PUBREC,
/// and PUBCOMP for the PUBREL); once `n` are in, go on until 200 ms pass
/// without a packet (still within `limit`), so the last PUBRELs are answered
/// and a repeat that follows at once is counted too. Answers go out in one
/// write per batch of what arrived together, so 100,000 QoS 2 flows take
/// seconds, not minutes.
pub async fn collect(c: &mut RawClient, n: usize, limit: Duration) -> Vec<Got> {
    const QUIET: Duration = Duration::from_millis(200);
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut wbuf = BytesMut::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut wait = if got.len() >= n {
            left.min(QUIET)
        } else {
            left
        };
        let mut idle = false;
        let mut closed = false;
        loop {
            match c.recv_within(wait).await {
                Ok(Some(Packet::Publish(p))) => {
                    let reply = match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            Some(Packet::PubAck(PubResponse::success(id)))
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            Some(Packet::PubRec(PubResponse::success(id)))
                        }
                        _ => None,
                    };
                    if let Some(r) = reply {
                        protocol::encode(&r, c.version, &mut wbuf).expect("encode");
                    }
                    got.push(Got {
                        topic: p.topic.to_string(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        qos: p.qos,
                        dup: p.dup,
                        user_properties: p
                            .properties
                            .user_properties
                            .iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                    });
                }
                Ok(Some(Packet::PubRel(r))) => {
                    let comp = Packet::PubComp(PubResponse::success(r.packet_id));
                    protocol::encode(&comp, c.version, &mut wbuf).expect("encode");
                }
                Ok(Some(other)) => panic!("subscriber: unexpected {other:?}"),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(()) => {
                    // Nothing within a real wait (not the zero-length look
                    // for more of a batch): idle.
                    idle = !wait.is_zero();
                    break;
                }
            }
            // Take what else is already here before answering.
            wait = Duration::ZERO;
        }
        if !wbuf.is_empty() {
            c.send_bytes(&wbuf).await;
            wbuf.clear();
        }
        if closed || (idle && got.len() >= n) {
            break;
        }
    }
    got
}

/// `(topic, qos)` of each message, sorted: what arrived, whatever the order.
pub fn topics_and_qos(got: &[Got]) -> Vec<(String, u8)> {
    let mut v: Vec<(String, u8)> = got
        .iter()
        .map(|g| (g.topic.clone(), g.qos.as_u8()))
        .collect();
    v.sort();
    v
}

/// The indices that arrived on each topic, in arrival order.
pub fn per_topic(got: &[Got]) -> HashMap<String, Vec<usize>> {
    let mut m: HashMap<String, Vec<usize>> = HashMap::new();
    for g in got {
        m.entry(g.topic.clone()).or_default().push(g.index());
    }
    m
}

/// How often each payload arrived.
pub fn payload_counts(got: &[Got]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for g in got {
        *m.entry(g.payload.clone()).or_default() += 1;
    }
    m
}
