//! Logins and access control, black-box: a Mosquitto password file (made by the real
//! `mosquitto_passwd`, `$7$` and `$6$`) used by `mosquitto_pub`/`mosquitto_sub` and
//! raw clients, with the CONNACK codes of a wrong password, an unknown user and no
//! credentials in 3.1.1 and 5.0 and a log that names the refusal but never the
//! password; `allow_anonymous` and its default (refused on a non-loopback listener);
//! the failed-login throttle (lower bounds only); the ACL file on publish (QoS 0/1/2,
//! both versions), subscribe, delivery, `%c`/`%u` patterns, the anonymous section,
//! `$SYS` and Wills, with the `acl_denied_*` / `logins_refused` counters; SIGHUP
//! reloading the password and ACL files without dropping connections (a revoked
//! subscription removed for good, a broken ACL file ignored); `tern passwd`; and a
//! stored session keeping its username across a restart so the ACL still applies.
//!
//! Most password files here hold `$6$` (salted SHA-512) entries made by
//! `sha512_line`, which are cheap to check in a debug build; `$7$` files come from
//! `mosquitto_passwd` and `$argon2id$` ones from `tern passwd`.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tern::config::{Config, ListenerConfig};
use tern::metrics::Metrics;
use tern::protocol::{
    self, Connect, ConnectProperties, LastWill, Packet, PacketId, ProtocolVersion, PubResponse,
    QoS, ReasonCode, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use tokio::io::AsyncReadExt;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;
const BIN: &str = env!("CARGO_BIN_EXE_tern");
/// A 3.1.1 CONNACK with return code 5 (not authorized): what Tern, like Mosquitto,
/// answers every refused 3.1.1 login with (wrong password, unknown user, anonymous).
const CONNACK_V311_REFUSED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

// ---------------------------------------------------------------------------------
// Files

/// `user:$6$<salt>$<hash>`: Mosquitto's salted SHA-512 entry (SHA-512 of the
/// password followed by a 12-byte salt, both base64). Test 1 checks the format
/// against `mosquitto_passwd -H sha512`.
fn sha512_line(user: &str, password: &str) -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .expect("random salt");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(password.as_bytes());
    ctx.update(&salt);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "{user}:$6${}${}\n",
        b64.encode(salt),
        b64.encode(ctx.finish().as_ref())
    )
}

/// Write a password file of `$6$` entries.
fn write_passwords(path: &Path, users: &[(&str, &str)]) {
    let text: String = users.iter().map(|(u, p)| sha512_line(u, p)).collect();
    std::fs::write(path, text).expect("write password file");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A path as a TOML basic string.
fn toml_str(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("utf-8 path"))
}

/// A config file for the real binary: one listener on 127.0.0.1:0, the given
/// `[auth]` lines, and a store in `data` (or in memory).
fn config_file(dir: &Path, auth: &str, data: Option<&Path>) -> PathBuf {
    let storage = match data {
        Some(d) => format!("dir = {}\nsegment_size = 65536\n", toml_str(d)),
        None => "in_memory = true\n".to_string(),
    };
    let text =
        format!("[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[storage]\n{storage}\n[auth]\n{auth}\n");
    write(dir, "tern.toml", &text)
}

fn hup(broker: &BrokerProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &broker.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP failed");
}

/// An in-process config (loopback listener, so anonymous is allowed by default)
/// with `acl` as its ACL file, written into `dir`.
fn acl_config(dir: &Path, acl: &str) -> Config {
    let mut c = test_config();
    c.auth.acl_file = Some(write(dir, "acl", acl));
    c
}

// ---------------------------------------------------------------------------------
// Clients

fn login_packet(
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Packet {
    connect_with_login(version, id, user, password.map(str::as_bytes))
}

/// Send a CONNECT; the CONNACK's code (3.1.1 return codes come back mapped to
/// their 5.0 equivalents: 5 -> 0x87, 4 -> 0x86). A refused client is also
/// checked to be disconnected; an accepted one is returned.
async fn login(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (ReasonCode, Option<RawClient>) {
    let mut c = RawClient::connect(addr, version).await;
    c.send(&login_packet(version, id, user, password)).await;
    let code = match c.recv().await {
        Some(Packet::ConnAck(a)) => a.reason_code,
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    };
    if code == ReasonCode::SUCCESS {
        (code, Some(c))
    } else {
        let after = c.until_closed().await;
        assert!(after.is_empty(), "{id}: packets after a refusal: {after:?}");
        (code, None)
    }
}

/// `login` that must succeed.
async fn logged_in(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> RawClient {
    match login(addr, version, id, user, password).await {
        (ReasonCode::SUCCESS, Some(c)) => c,
        (code, _) => panic!("{id} ({user:?}): login refused with {code:?}"),
    }
}

/// A 3.1.1 CONNECT that is to be refused: every byte the broker sends before it
/// closes the connection.
async fn v311_refusal_bytes(
    addr: SocketAddr,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Vec<u8> {
    let mut c = RawClient::connect(addr, V311).await;
    c.send(&login_packet(V311, id, user, password)).await;
    let mut got = Vec::new();
    // A reset after the CONNACK ends the read like EOF; what came before is kept.
    let _ = tokio::time::timeout(WAIT, c.stream.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{id}: connection not closed within {WAIT:?}; got {got:?}"));
    got
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero packet id")
}

fn ack(n: PacketId) -> PubResponse {
    PubResponse {
        packet_id: n,
        reason_code: ReasonCode::SUCCESS,
        properties: Default::default(),
    }
}

/// SUBSCRIBE to several filters in one packet; the SUBACK's codes.
async fn subscribe_codes(
    c: &mut RawClient,
    packet_id: u16,
    filters: &[(&str, QoS)],
) -> Vec<ReasonCode> {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(packet_id),
        properties: Default::default(),
        filters: filters
            .iter()
            .map(|(f, qos)| SubscribeFilter {
                filter: (*f).into(),
                options: SubscriptionOptions {
                    qos: *qos,
                    ..Default::default()
                },
            })
            .collect(),
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.packet_id, pid(packet_id));
            a.reason_codes
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The SUBACK code of a filter the ACL refuses: 0x87 in 5.0, 0x80 in 3.1.1.
fn sub_denied(version: ProtocolVersion) -> ReasonCode {
    if version == V5 {
        ReasonCode::NOT_AUTHORIZED
    } else {
        ReasonCode(0x80)
    }
}

/// Send a PUBLISH and return the broker's reply packet (PUBACK / PUBREC).
async fn publish_reply(
    c: &mut RawClient,
    topic: &str,
    qos: QoS,
    packet_id: u16,
    payload: &str,
) -> Packet {
    c.send(&publish_packet(topic, qos, packet_id, payload.as_bytes()))
        .await;
    c.recv().await.expect("a reply to PUBLISH")
}

/// QoS 1 PUBLISH that must get a PUBACK with `code`.
async fn publish_q1(
    c: &mut RawClient,
    topic: &str,
    packet_id: u16,
    payload: &str,
    code: ReasonCode,
) {
    match publish_reply(c, topic, QoS::AtLeastOnce, packet_id, payload).await {
        Packet::PubAck(a) => {
            assert_eq!(a.packet_id, pid(packet_id));
            assert_eq!(a.reason_code, code, "PUBACK for {topic}");
        }
        other => panic!("expected PUBACK for {topic}, got {other:?}"),
    }
}

/// QoS 2 PUBLISH ... PUBCOMP, all successful.
async fn publish_q2_ok(c: &mut RawClient, topic: &str, packet_id: u16, payload: &str) {
    match publish_reply(c, topic, QoS::ExactlyOnce, packet_id, payload).await {
        Packet::PubRec(r) => {
            assert_eq!(r.packet_id, pid(packet_id));
            assert_eq!(r.reason_code, ReasonCode::SUCCESS, "PUBREC for {topic}");
        }
        other => panic!("expected PUBREC for {topic}, got {other:?}"),
    }
    c.send(&Packet::PubRel(ack(pid(packet_id)))).await;
    match c.recv().await {
        Some(Packet::PubComp(r)) => {
            assert_eq!(r.packet_id, pid(packet_id));
            assert_eq!(r.reason_code, ReasonCode::SUCCESS, "PUBCOMP for {topic}");
        }
        other => panic!("expected PUBCOMP for {topic}, got {other:?}"),
    }
}

/// The next application message (QoS 1 ones acknowledged): (topic, payload).
async fn next_message(c: &mut RawClient) -> (String, String) {
    match c.recv().await {
        Some(Packet::Publish(p)) => {
            if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                c.send(&Packet::PubAck(ack(id))).await;
            }
            (p.topic, String::from_utf8_lossy(&p.payload).into_owned())
        }
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

/// Messages up to (not including) the first with payload `marker`. Bounded: at
/// most 100 messages, each within `WAIT`.
async fn until_marker(c: &mut RawClient, marker: &str) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        let m = next_message(c).await;
        if m.1 == marker {
            return seen;
        }
        seen.push(m);
    }
    panic!("no {marker:?} among 100 messages: {seen:?}");
}

fn msgs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

async fn ping(c: &mut RawClient, who: &str) {
    c.send(&Packet::PingReq).await;
    match c.recv().await {
        Some(Packet::PingResp) => {}
        other => panic!("{who}: expected PINGRESP, got {other:?}"),
    }
}

/// A persistent-session CONNECT (3.1.1 clean session 0; 5.0 clean start 0 and
/// an hour of session expiry) with a login.
fn persistent_login(version: ProtocolVersion, id: &str, user: &str, password: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start: false,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: Some(user.into()),
        password: Some(bytes::Bytes::copy_from_slice(password.as_bytes())),
        properties: ConnectProperties {
            session_expiry_interval: (version == V5).then_some(3600),
            ..Default::default()
        },
    }))
}

/// Connect (no password file: the username is taken as given) with a Will; the
/// CONNACK's code and the client.
async fn connect_with_will(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    user: &str,
    will_topic: &str,
    will_payload: &str,
) -> (ReasonCode, RawClient) {
    let mut c = RawClient::connect(addr, version).await;
    c.send(&Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will: Some(LastWill {
            topic: will_topic.into(),
            payload: bytes::Bytes::copy_from_slice(will_payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: false,
            delay_interval: 0,
            properties: Default::default(),
        }),
        username: Some(user.into()),
        password: None,
        properties: Default::default(),
    })))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => (a.reason_code, c),
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
}

/// `connect_with_will` that must be accepted.
async fn connected_with_will(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    user: &str,
    will_topic: &str,
    will_payload: &str,
) -> RawClient {
    let (code, c) = connect_with_will(addr, version, id, user, will_topic, will_payload).await;
    assert_eq!(code, ReasonCode::SUCCESS, "{id}");
    c
}

fn count(m: &std::sync::atomic::AtomicU64) -> u64 {
    Metrics::get(m)
}

// ---------------------------------------------------------------------------------
// 1. Password file from mosquitto_passwd, the real binary and the Mosquitto clients

fn mosquitto_client(tool: &str, port: u16, user: &str, password: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-u",
        user,
        "-P",
        password,
    ]);
    cmd
}

#[test]
fn mosquitto_passwd_file_lets_users_in_and_refuses_bad_credentials() {
    require("mosquitto_passwd");
    require("mosquitto_pub");
    require("mosquitto_sub");
    const WRONG: &str = "Wr0ng-Pa55word-q7";
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let mut mk = Command::new("mosquitto_passwd");
    mk.arg("-c")
        .arg("-b")
        .arg(&pw)
        .args(["alice", "correct horse"]);
    let out = run_bounded(mk, Duration::from_secs(20));
    assert!(out.status.success(), "mosquitto_passwd -c -b: {out:?}");
    // A second user in Mosquitto's older salted SHA-512 format ($6$).
    let mut mk = Command::new("mosquitto_passwd");
    mk.args(["-H", "sha512", "-b"])
        .arg(&pw)
        .args(["legacy", "old format"]);
    let out = run_bounded(mk, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "mosquitto_passwd -H sha512 -b: {out:?}"
    );
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.contains("legacy:$6$"), "{text}");

    // Small throttle delays: this test makes several failed logins on purpose.
    let auth = format!(
        "password_file = {}\nfailed_login_delay = \"10ms\"\nfailed_login_max_delay = \"20ms\"\n",
        toml_str(&pw)
    );
    let broker = BrokerProcess::spawn_config(&config_file(dir.path(), &auth, None));
    let port = broker.addr.port();

    // mosquitto_pub with the right password; mosquitto_sub (another login) gets
    // the retained message.
    let mut publ = mosquitto_client("mosquitto_pub", port, "alice", "correct horse");
    publ.args(["-t", "auth/t", "-m", "hello", "-q", "1", "-r"]);
    let out = run_bounded(publ, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "mosquitto_pub with the right password: {out:?}"
    );
    let mut sub = mosquitto_client("mosquitto_sub", port, "legacy", "old format");
    sub.args(["-t", "auth/#", "-C", "1", "-W", "10", "-v"]);
    let out = run_bounded(sub, Duration::from_secs(20));
    assert!(out.status.success(), "mosquitto_sub ($6$ user): {out:?}");
    assert_eq!(out.stdout.trim(), "auth/t hello");

    // A wrong password makes mosquitto_pub fail.
    let mut bad = mosquitto_client("mosquitto_pub", port, "alice", WRONG);
    bad.args(["-t", "auth/t", "-m", "nope", "-q", "1"]);
    let out = run_bounded(bad, Duration::from_secs(20));
    assert!(
        !out.status.success(),
        "mosquitto_pub with a wrong password: {out:?}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = broker.addr;
        // Wrong password: 3.1.1 return code 5, 5.0 0x86.
        assert_eq!(
            v311_refusal_bytes(addr, "w311", Some("alice"), Some(WRONG)).await,
            CONNACK_V311_REFUSED
        );
        let (code, _) = login(addr, V5, "w5", Some("alice"), Some(WRONG)).await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        // Unknown user: the same as a wrong password.
        let (code, _) = login(addr, V5, "u5", Some("nobody"), Some(WRONG)).await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        assert_eq!(
            v311_refusal_bytes(addr, "u311", Some("nobody"), Some(WRONG)).await,
            CONNACK_V311_REFUSED
        );
        // A username without a password.
        let (code, _) = login(addr, V5, "np5", Some("alice"), None).await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        // No credentials at all: anonymous, refused by default with a password file.
        let (code, _) = login(addr, V5, "anon5", None, None).await;
        assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
        assert_eq!(
            v311_refusal_bytes(addr, "anon311", None, None).await,
            CONNACK_V311_REFUSED
        );
        // The right password still works for raw clients of both versions.
        for v in [V311, V5] {
            let mut c = logged_in(addr, v, "ok", Some("alice"), Some("correct horse")).await;
            ping(&mut c, "alice").await;
        }
    });

    // 1 mosquitto_pub + 7 raw refusals, each logged with the peer and username.
    assert!(
        broker.wait_log_count("login refused", 8, Duration::from_secs(5)),
        "{}",
        broker.log_text()
    );
    let log = broker.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("login refused"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("alice") && l.contains("127.0.0.1")),
        "{refused:#?}"
    );
    assert!(refused.iter().any(|l| l.contains("nobody")), "{refused:#?}");
    assert!(!log.contains(WRONG), "a password reached the log:\n{log}");
    assert!(
        !log.contains("correct horse"),
        "a password reached the log:\n{log}"
    );
}

// ---------------------------------------------------------------------------------
// 2. allow_anonymous

#[tokio::test]
async fn allow_anonymous_lets_anonymous_in_but_still_checks_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    write_passwords(&pw, &[("alice", "pw-a")]);
    let mut config = test_config();
    config.auth.password_file = Some(pw);
    config.auth.allow_anonymous = Some(true);
    let (broker, addr) = start(config).await;

    for v in [V311, V5] {
        let mut anon = logged_in(addr, v, "anon", None, None).await;
        ping(&mut anon, "anonymous").await;
        logged_in(addr, v, "alice", Some("alice"), Some("pw-a")).await;
    }
    let (code, _) = login(addr, V5, "w5", Some("alice"), Some("pw-b")).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let (code, _) = login(addr, V5, "u5", Some("mallory"), Some("pw-a")).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    assert_eq!(
        v311_refusal_bytes(addr, "w311", Some("alice"), Some("pw-b")).await,
        CONNACK_V311_REFUSED
    );
    assert_eq!(count(&broker.metrics().logins_refused), 3);
    broker.shutdown().await;
}

#[tokio::test]
async fn non_loopback_listener_refuses_anonymous_by_default() {
    // No [auth] at all, but a listener on every interface.
    let mut config = test_config();
    config.listeners = vec![ListenerConfig::plain("0.0.0.0:0".parse().unwrap())];
    assert!(!config.anonymous_allowed());
    let (broker, bound) = start(config).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));

    let (code, _) = login(addr, V5, "anon5", None, None).await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        v311_refusal_bytes(addr, "anon311", None, None).await,
        CONNACK_V311_REFUSED
    );
    // Without a password file a username proves nothing: still anonymous.
    let (code, _) = login(addr, V5, "bob5", Some("bob"), Some("anything")).await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(count(&broker.metrics().logins_refused), 3);
    broker.shutdown().await;

    // The same listener with allow_anonymous = true lets them in.
    let mut config = test_config();
    config.listeners = vec![ListenerConfig::plain("0.0.0.0:0".parse().unwrap())];
    config.auth.allow_anonymous = Some(true);
    let (broker, bound) = start(config).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    logged_in(addr, V5, "anon5", None, None).await;
    logged_in(addr, V311, "bob311", Some("bob"), Some("anything")).await;
    broker.shutdown().await;

    // A loopback listener without [auth]: anonymous (and any username) allowed.
    let (broker, addr) = start(test_config()).await;
    logged_in(addr, V5, "anon5", None, None).await;
    logged_in(addr, V311, "bob311", Some("bob"), None).await;
    assert_eq!(count(&broker.metrics().logins_refused), 0);
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 3. The failed-login throttle

/// A broker with user alice (password "pw-a") and a login throttle of 300 ms
/// doubling up to 1 s.
async fn start_throttled(dir: &Path) -> (tern::broker::Broker, SocketAddr) {
    let pw = dir.join("passwd");
    write_passwords(&pw, &[("alice", "pw-a")]);
    let mut config = test_config();
    config.auth.password_file = Some(pw);
    config.auth.failed_login_delay = Duration::from_millis(300);
    config.auth.failed_login_max_delay = Duration::from_secs(1);
    start(config).await
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_throttled(dir.path()).await;

    let mut took = Vec::new();
    for i in 0..5 {
        let t0 = Instant::now();
        let (code, _) = login(addr, V5, &format!("bad{i}"), Some("alice"), Some("guess")).await;
        took.push(t0.elapsed());
        assert_eq!(
            code,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "attempt {}",
            i + 1
        );
    }
    // Three failures are free; the 4th waits 300 ms, the 5th 600 ms (lower
    // bounds only: a slow machine can only make them longer).
    assert!(took[3] >= Duration::from_millis(250), "{took:?}");
    assert!(took[4] >= Duration::from_millis(500), "{took:?}");

    // The right password after that waits too (1200 ms capped at 1 s), then works.
    let t0 = Instant::now();
    let mut c = logged_in(addr, V5, "good", Some("alice"), Some("pw-a")).await;
    let good = t0.elapsed();
    assert!(
        good >= Duration::from_millis(900),
        "{good:?} after {took:?}"
    );
    ping(&mut c, "alice").await;
    assert_eq!(count(&broker.metrics().logins_refused), 5);
    broker.shutdown().await;
}

/// Attempts arriving together after three failures must not all get the same
/// short delay: the delay doubles per attempt, so the 5th and later wait longer
/// than the 4th whether they come one by one or at once.
#[tokio::test]
async fn concurrent_failures_are_slowed_down_too() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, addr) = start_throttled(dir.path()).await;
    for i in 0..3 {
        let (code, _) = login(addr, V5, &format!("bad{i}"), Some("alice"), Some("guess")).await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
    // Attempts 4..=9 at once: one by one they would wait 300 ms, 600 ms, then 1 s each.
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..6 {
        attempts.spawn(async move {
            let t0 = Instant::now();
            let (code, _) = login(addr, V5, &format!("par{i}"), Some("alice"), Some("guess")).await;
            (code, t0.elapsed())
        });
    }
    let mut took = Vec::new();
    while let Some(r) = attempts.join_next().await {
        let (code, d) = r.expect("attempt task");
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        took.push(d);
    }
    took.sort();
    // Lower bound only: the slowest waited at least the doubled delay.
    assert!(took[5] >= Duration::from_millis(500), "{took:?}");
    assert_eq!(count(&broker.metrics().logins_refused), 9);
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 4. The ACL file

#[tokio::test]
async fn acl_denied_publish_per_qos_and_protocol_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = acl_config(
        dir.path(),
        "user pubber\ntopic write pub/ok/#\n\nuser watcher\ntopic read pub/#\n",
    );
    let (broker, addr) = start(config).await;
    let mut watcher = logged_in(addr, V5, "watcher", Some("watcher"), None).await;
    watcher.subscribe(1, "pub/#", QoS::AtMostOnce).await;

    // 5.0: QoS 0 dropped, QoS 1 PUBACK 0x87, QoS 2 PUBREC 0x87 ending the flow
    // (the packet id is free again at once).
    let mut p = logged_in(addr, V5, "p5", Some("pubber"), None).await;
    p.send(&publish_packet("pub/no/q0", QoS::AtMostOnce, 0, b"v5"))
        .await;
    p.send(&publish_packet("pub/ok/q0", QoS::AtMostOnce, 0, b"v5"))
        .await;
    publish_q1(&mut p, "pub/no/q1", 1, "v5", ReasonCode::NOT_AUTHORIZED).await;
    publish_q1(&mut p, "pub/ok/q1", 2, "v5", ReasonCode::SUCCESS).await;
    match publish_reply(&mut p, "pub/no/q2", QoS::ExactlyOnce, 3, "v5").await {
        Packet::PubRec(r) => {
            assert_eq!(r.packet_id, pid(3));
            assert_eq!(r.reason_code, ReasonCode::NOT_AUTHORIZED);
        }
        other => panic!("expected PUBREC 0x87, got {other:?}"),
    }
    publish_q2_ok(&mut p, "pub/ok/q2", 3, "v5").await;
    publish_q1(&mut p, "pub/ok/end", 4, "end v5", ReasonCode::SUCCESS).await;
    assert_eq!(
        until_marker(&mut watcher, "end v5").await,
        msgs(&[
            ("pub/ok/q0", "v5"),
            ("pub/ok/q1", "v5"),
            ("pub/ok/q2", "v5")
        ])
    );

    // 3.1.1: the flows complete as usual, and the denied messages go nowhere.
    let mut p = logged_in(addr, V311, "p311", Some("pubber"), None).await;
    p.send(&publish_packet("pub/no/q0", QoS::AtMostOnce, 0, b"v311"))
        .await;
    p.send(&publish_packet("pub/ok/q0", QoS::AtMostOnce, 0, b"v311"))
        .await;
    publish_q1(&mut p, "pub/no/q1", 1, "v311", ReasonCode::SUCCESS).await;
    publish_q1(&mut p, "pub/ok/q1", 2, "v311", ReasonCode::SUCCESS).await;
    publish_q2_ok(&mut p, "pub/no/q2", 3, "v311").await;
    publish_q2_ok(&mut p, "pub/ok/q2", 4, "v311").await;
    publish_q1(&mut p, "pub/ok/end", 5, "end v311", ReasonCode::SUCCESS).await;
    assert_eq!(
        until_marker(&mut watcher, "end v311").await,
        msgs(&[
            ("pub/ok/q0", "v311"),
            ("pub/ok/q1", "v311"),
            ("pub/ok/q2", "v311")
        ])
    );

    let m = broker.metrics();
    assert_eq!(count(&m.acl_denied_publish), 6);
    assert_eq!(count(&m.acl_denied_deliver), 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_denied_subscribe_in_both_protocol_versions() {
    let dir = tempfile::tempdir().unwrap();
    let config = acl_config(
        dir.path(),
        "user s\ntopic read sub/ok/#\ntopic readwrite sub/rw\ntopic write sub/wo\n\
         user p\ntopic write sub/#\n",
    );
    let (broker, addr) = start(config).await;
    let filters = [
        ("sub/ok/#", QoS::AtLeastOnce),
        ("sub/no", QoS::AtMostOnce),
        ("#", QoS::AtMostOnce),
        // Write access does not allow subscribing.
        ("sub/wo", QoS::AtMostOnce),
        ("sub/rw", QoS::ExactlyOnce),
        ("sub/ok/+/x", QoS::AtMostOnce),
    ];
    let mut subs = Vec::new();
    for (v, id) in [(V5, "s5"), (V311, "s311")] {
        let mut s = logged_in(addr, v, id, Some("s"), None).await;
        let d = sub_denied(v);
        assert_eq!(
            subscribe_codes(&mut s, 7, &filters).await,
            vec![ReasonCode(1), d, d, d, ReasonCode(2), ReasonCode(0)],
            "{id}"
        );
        subs.push(s);
    }
    assert_eq!(count(&broker.metrics().acl_denied_subscribe), 6);

    // The refused filters were not added.
    let mut p = logged_in(addr, V5, "p", Some("p"), None).await;
    for topic in ["sub/no", "sub/wo", "sub/ok/a"] {
        p.send(&publish_packet(topic, QoS::AtMostOnce, 0, b"x"))
            .await;
    }
    publish_q1(&mut p, "sub/rw", 1, "end", ReasonCode::SUCCESS).await;
    for s in &mut subs {
        assert_eq!(until_marker(s, "end").await, msgs(&[("sub/ok/a", "x")]));
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_delivery_needs_read_access_whatever_the_filter_matched() {
    let dir = tempfile::tempdir().unwrap();
    let config = acl_config(
        dir.path(),
        "# anonymous clients\ntopic read #\ntopic deny secret/#\n\nuser p\ntopic write #\n",
    );
    let (broker, addr) = start(config).await;
    let mut watchers = Vec::new();
    for (v, id) in [(V5, "w5"), (V311, "w311")] {
        let mut w = logged_in(addr, v, id, None, None).await;
        // `#` is granted (only partly denied) ...
        assert_eq!(
            subscribe_codes(&mut w, 1, &[("#", QoS::AtLeastOnce)]).await,
            vec![ReasonCode(1)]
        );
        // ... a filter wholly inside the denied part is not.
        assert_eq!(
            subscribe_codes(&mut w, 2, &[("secret/+", QoS::AtLeastOnce)]).await,
            vec![sub_denied(v)]
        );
        watchers.push(w);
    }
    let mut p = logged_in(addr, V5, "p", Some("p"), None).await;
    publish_q1(&mut p, "secret/x", 1, "hidden", ReasonCode::SUCCESS).await;
    publish_q1(&mut p, "public/x", 2, "shown", ReasonCode::SUCCESS).await;
    p.send(&publish_packet("secret", QoS::AtMostOnce, 0, b"hidden"))
        .await;
    publish_q1(&mut p, "public/end", 3, "end", ReasonCode::SUCCESS).await;
    for w in &mut watchers {
        assert_eq!(until_marker(w, "end").await, msgs(&[("public/x", "shown")]));
    }
    let m = broker.metrics();
    // Two watchers, two secret messages each.
    assert_eq!(count(&m.acl_denied_deliver), 4);
    assert_eq!(count(&m.acl_denied_publish), 0);
    assert_eq!(count(&m.acl_denied_subscribe), 2);
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_patterns_give_each_client_only_its_own_subtree() {
    let dir = tempfile::tempdir().unwrap();
    let config = acl_config(
        dir.path(),
        "pattern readwrite dev/%c/#\npattern readwrite users/%u/#\n\nuser admin\ntopic readwrite #\n",
    );
    let (broker, addr) = start(config).await;
    // Clients never publish where they subscribe here, so a PUBACK is always the
    // next packet after a PUBLISH.
    let mut watch = logged_in(addr, V5, "admin-watch", Some("admin"), None).await;
    watch.subscribe(1, "#", QoS::AtMostOnce).await;
    let mut admin = logged_in(addr, V5, "admin-pub", Some("admin"), None).await;
    let mut d1 = logged_in(addr, V5, "d1", Some("alice"), None).await;
    let mut d2 = logged_in(addr, V311, "d2", Some("bob"), None).await;

    // Publishing: into one's own subtree only (d2 is 3.1.1: a denied message is
    // acknowledged as usual and dropped).
    publish_q1(&mut d1, "dev/d2/cmd", 1, "d1", ReasonCode::NOT_AUTHORIZED).await;
    publish_q1(&mut d1, "users/bob/x", 2, "d1", ReasonCode::NOT_AUTHORIZED).await;
    publish_q1(&mut d1, "dev/d1/state", 3, "d1", ReasonCode::SUCCESS).await;
    publish_q1(&mut d1, "users/alice/state", 4, "d1", ReasonCode::SUCCESS).await;
    publish_q1(&mut d2, "dev/d1/cmd", 1, "d2", ReasonCode::SUCCESS).await;
    publish_q1(&mut d2, "dev/d2/state", 2, "d2", ReasonCode::SUCCESS).await;
    publish_q1(&mut admin, "admin/end", 1, "end", ReasonCode::SUCCESS).await;
    assert_eq!(
        until_marker(&mut watch, "end").await,
        msgs(&[
            ("dev/d1/state", "d1"),
            ("users/alice/state", "d1"),
            ("dev/d2/state", "d2")
        ])
    );
    assert_eq!(count(&broker.metrics().acl_denied_publish), 3);

    let no5 = ReasonCode::NOT_AUTHORIZED;
    let no3 = ReasonCode(0x80);
    assert_eq!(
        subscribe_codes(
            &mut d1,
            1,
            &[
                ("dev/d1/#", QoS::AtMostOnce),
                ("users/alice/#", QoS::AtMostOnce),
                ("dev/d2/#", QoS::AtMostOnce),
                ("users/bob/#", QoS::AtMostOnce),
                ("dev/#", QoS::AtMostOnce),
                ("dev/+/cmd", QoS::AtMostOnce),
            ]
        )
        .await,
        vec![ReasonCode(0), ReasonCode(0), no5, no5, no5, no5]
    );
    assert_eq!(
        subscribe_codes(
            &mut d2,
            1,
            &[
                ("dev/d2/#", QoS::AtMostOnce),
                ("users/bob/#", QoS::AtMostOnce),
                ("dev/d1/#", QoS::AtMostOnce),
                ("users/alice/#", QoS::AtMostOnce),
            ]
        )
        .await,
        vec![ReasonCode(0), ReasonCode(0), no3, no3]
    );
    assert_eq!(count(&broker.metrics().acl_denied_subscribe), 6);

    for topic in [
        "dev/d1/cmd",
        "dev/d2/cmd",
        "users/alice/cmd",
        "users/bob/cmd",
    ] {
        publish_q1(&mut admin, topic, 2, "admin", ReasonCode::SUCCESS).await;
    }
    publish_q1(&mut admin, "dev/d1/end", 3, "end", ReasonCode::SUCCESS).await;
    publish_q1(&mut admin, "dev/d2/end", 4, "end", ReasonCode::SUCCESS).await;
    assert_eq!(
        until_marker(&mut d1, "end").await,
        msgs(&[("dev/d1/cmd", "admin"), ("users/alice/cmd", "admin")])
    );
    assert_eq!(
        until_marker(&mut d2, "end").await,
        msgs(&[("dev/d2/cmd", "admin"), ("users/bob/cmd", "admin")])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_rules_before_the_first_user_apply_to_anonymous_clients_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = acl_config(
        dir.path(),
        "topic readwrite anon/#\n\nuser alice\ntopic readwrite alice/#\n",
    );
    let (broker, addr) = start(config).await;
    let mut anon5 = logged_in(addr, V5, "anon5", None, None).await;
    let mut anon3 = logged_in(addr, V311, "anon3", None, None).await;
    let mut alice = logged_in(addr, V5, "alice", Some("alice"), None).await;
    let mut carol = logged_in(addr, V5, "carol", Some("carol"), None).await;
    let filters = [("anon/#", QoS::AtMostOnce), ("alice/#", QoS::AtMostOnce)];
    let (ok, no5) = (ReasonCode(0), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        subscribe_codes(&mut anon5, 1, &filters).await,
        vec![ok, no5]
    );
    assert_eq!(
        subscribe_codes(&mut anon3, 1, &filters).await,
        vec![ok, ReasonCode(0x80)]
    );
    assert_eq!(
        subscribe_codes(&mut alice, 1, &filters).await,
        vec![no5, ok]
    );
    // A user the file does not name gets neither the anonymous rules nor any.
    assert_eq!(
        subscribe_codes(&mut carol, 1, &filters).await,
        vec![no5, no5]
    );

    // Denied publishes (to topics the publisher is not subscribed to).
    publish_q1(&mut alice, "anon/x", 2, "alice", ReasonCode::NOT_AUTHORIZED).await;
    publish_q1(&mut carol, "anon/x", 2, "carol", ReasonCode::NOT_AUTHORIZED).await;
    publish_q1(
        &mut carol,
        "alice/x",
        3,
        "carol",
        ReasonCode::NOT_AUTHORIZED,
    )
    .await;
    publish_q1(&mut anon5, "alice/x", 2, "anon", ReasonCode::NOT_AUTHORIZED).await;
    // Allowed ones, from second connections that subscribe to nothing.
    let mut anon_pub = logged_in(addr, V311, "anon-pub", None, None).await;
    let mut alice_pub = logged_in(addr, V5, "alice-pub", Some("alice"), None).await;
    publish_q1(&mut anon_pub, "anon/x", 1, "anon", ReasonCode::SUCCESS).await;
    publish_q1(&mut alice_pub, "alice/x", 1, "alice", ReasonCode::SUCCESS).await;
    publish_q1(&mut anon_pub, "anon/end", 2, "end", ReasonCode::SUCCESS).await;
    publish_q1(&mut alice_pub, "alice/end", 2, "end", ReasonCode::SUCCESS).await;
    for c in [&mut anon5, &mut anon3] {
        assert_eq!(until_marker(c, "end").await, msgs(&[("anon/x", "anon")]));
    }
    assert_eq!(
        until_marker(&mut alice, "end").await,
        msgs(&[("alice/x", "alice")])
    );
    let m = broker.metrics();
    assert_eq!(count(&m.acl_denied_publish), 4);
    assert_eq!(count(&m.acl_denied_subscribe), 5);
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_dollar_sys_needs_an_explicit_grant() {
    let dir = tempfile::tempdir().unwrap();
    let config = acl_config(
        dir.path(),
        "user plain\ntopic readwrite #\n\nuser sysop\ntopic readwrite #\ntopic readwrite $SYS/#\n",
    );
    let (broker, addr) = start(config).await;
    let mut plain = logged_in(addr, V5, "plain", Some("plain"), None).await;
    let mut sysop = logged_in(addr, V5, "sysop", Some("sysop"), None).await;
    let mut sysop_pub = logged_in(addr, V311, "sysop-pub", Some("sysop"), None).await;
    let no = ReasonCode::NOT_AUTHORIZED;
    // `#` in the ACL does not reach `$SYS/...`.
    assert_eq!(
        subscribe_codes(
            &mut plain,
            1,
            &[
                ("$SYS/#", QoS::AtMostOnce),
                ("$SYS/broker/x", QoS::AtMostOnce),
                ("#", QoS::AtMostOnce),
                ("+/broker/#", QoS::AtMostOnce),
            ]
        )
        .await,
        vec![no, no, ReasonCode(0), ReasonCode(0)]
    );
    // plain is on `#`, which does not match `$SYS/broker/x`: no delivery to wait for.
    publish_q1(&mut plain, "$SYS/broker/x", 2, "plain", no).await;
    assert_eq!(
        subscribe_codes(
            &mut sysop,
            1,
            &[("$SYS/#", QoS::AtMostOnce), ("plain/end", QoS::AtMostOnce)]
        )
        .await,
        vec![ReasonCode(0), ReasonCode(0)]
    );
    // Reading `$SYS` takes a grant; writing into it is the broker's alone
    // (issue 16: a client could forge it), whatever the ACL grants: a 3.1.1
    // publisher's message is acknowledged and dropped.
    publish_q1(
        &mut sysop_pub,
        "$SYS/broker/x",
        1,
        "sysop",
        ReasonCode::SUCCESS,
    )
    .await;
    publish_q1(&mut sysop_pub, "plain/end", 2, "end", ReasonCode::SUCCESS).await;
    // Neither saw a forged $SYS message before the marker; the reader with
    // the grant saw the broker's own tree (retained at its SUBSCRIBE).
    assert_eq!(
        until_marker(&mut plain, "end").await,
        Vec::<(String, String)>::new()
    );
    let seen = until_marker(&mut sysop, "end").await;
    assert!(
        seen.iter().any(|(t, _)| t == "$SYS/broker/uptime"),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|(t, _)| t == "$SYS/broker/x"), "{seen:?}");
    let m = broker.metrics();
    assert_eq!(count(&m.sys_publish_denied), 2);
    assert_eq!(count(&m.acl_denied_publish), 0);
    assert_eq!(count(&m.acl_denied_subscribe), 2);
    broker.shutdown().await;
}

#[tokio::test]
async fn acl_will_on_a_denied_topic_is_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let acl_text = "user w\ntopic write wills/ok/#\n\nuser watcher\ntopic read wills/#\n";
    let config = acl_config(dir.path(), acl_text);
    let (broker, addr) = start(config).await;
    let metrics = broker.metrics();
    let mut watcher = logged_in(addr, V5, "watcher", Some("watcher"), None).await;
    watcher.subscribe(1, "wills/#", QoS::AtMostOnce).await;

    // A CONNECT whose Will `w` may not publish is refused (as Mosquitto does):
    // 0x87 on v5, 0x05 on 3.1.1 (read back as 0x87).
    for (v, id) in [(V5, "wd5"), (V311, "wd311")] {
        let (code, _) =
            connect_with_will(addr, v, id, "w", &format!("wills/no/{id}"), "denied").await;
        assert_eq!(code, ReasonCode::NOT_AUTHORIZED, "{id}");
    }
    assert_eq!(count(&metrics.acl_denied_publish), 2);

    // A Will allowed at CONNECT but denied by the time it is sent (ACL reloaded)
    // is not sent either.
    let c = connected_with_will(addr, V5, "wl5", "w", "wills/ok/late", "revoked").await;
    std::fs::write(
        dir.path().join("acl"),
        "user w\ntopic write wills/ok/#\ntopic deny wills/ok/late\n\nuser watcher\ntopic read wills/#\n",
    )
    .unwrap();
    assert!(broker.reload(None).await.is_empty());
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || count(
            &metrics.acl_denied_publish
        ) >= 3)
        .await,
        "the late Will was checked when sent: {}",
        count(&metrics.acl_denied_publish)
    );
    // Wills on an allowed topic arrive; being first proves the denied ones never came.
    for (v, id) in [(V5, "wa5"), (V311, "wa311")] {
        let topic = format!("wills/ok/{id}");
        let c = connected_with_will(addr, v, id, "w", &topic, "allowed").await;
        drop(c);
        assert_eq!(next_message(&mut watcher).await, (topic, "allowed".into()));
    }
    watcher.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(count(&metrics.acl_denied_publish), 3);
    assert_eq!(count(&metrics.wills_published), 2);
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------
// 5. SIGHUP

#[test]
fn sighup_reloads_passwords_and_acl_keeping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    write_passwords(
        &pw,
        &[("alice", "old-pw"), ("pub", "pub-pw"), ("sub", "sub-pw")],
    );
    let acl_v1 = "user pub\ntopic write #\nuser sub\ntopic read news/#\n";
    let acl_v2 = "user pub\ntopic write #\nuser sub\ntopic read secret/#\n";
    // Would allow news/# again if it were taken.
    let acl_v3 = "user pub\ntopic write #\nuser sub\ntopic read news/#\ntopic read secret/#\n";
    let acl_bad = "user pub\ntopic write #\nuser sub\ntopic read news/#\nthis is not a rule\n";
    let acl = write(dir.path(), "acl", acl_v1);
    let auth = format!(
        "password_file = {}\nacl_file = {}\n",
        toml_str(&pw),
        toml_str(&acl)
    );
    let broker = BrokerProcess::spawn_config(&config_file(dir.path(), &auth, None));
    let addr = broker.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut sub = logged_in(addr, V5, "sub", Some("sub"), Some("sub-pw")).await;
        let filters = [("news/#", QoS::AtLeastOnce), ("secret/#", QoS::AtLeastOnce)];
        assert_eq!(
            subscribe_codes(&mut sub, 1, &filters).await,
            vec![ReasonCode(1), ReasonCode::NOT_AUTHORIZED]
        );
        let mut publ = logged_in(addr, V311, "pub", Some("pub"), Some("pub-pw")).await;
        publish_q1(&mut publ, "news/1", 1, "n1", ReasonCode::SUCCESS).await;
        assert_eq!(next_message(&mut sub).await, ("news/1".into(), "n1".into()));
        logged_in(addr, V5, "alice", Some("alice"), Some("old-pw")).await;

        // New password for alice.
        write_passwords(
            &pw,
            &[("alice", "new-pw"), ("pub", "pub-pw"), ("sub", "sub-pw")],
        );
        hup(&broker);
        assert!(
            broker.wait_log_count("ACL file reloaded", 1, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        assert!(broker.log_text().contains("password file reloaded"));
        let (code, _) = login(addr, V5, "alice", Some("alice"), Some("old-pw")).await;
        assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        logged_in(addr, V5, "alice", Some("alice"), Some("new-pw")).await;
        // The connections made before the reload are still up.
        ping(&mut sub, "sub").await;
        ping(&mut publ, "pub").await;

        // The new ACL takes news/ from sub and gives it secret/.
        std::fs::write(&acl, acl_v2).unwrap();
        hup(&broker);
        assert!(
            broker.wait_log_count("ACL file reloaded", 2, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        assert!(
            broker.wait_log_count("subscription removed", 1, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        publish_q1(&mut publ, "news/2", 2, "n2", ReasonCode::SUCCESS).await;
        assert_eq!(
            subscribe_codes(&mut sub, 2, &filters).await,
            vec![ReasonCode::NOT_AUTHORIZED, ReasonCode(1)]
        );
        publish_q1(&mut publ, "secret/1", 3, "s1", ReasonCode::SUCCESS).await;
        // news/2 was published first: it would be ahead of secret/1.
        assert_eq!(
            next_message(&mut sub).await,
            ("secret/1".into(), "s1".into())
        );

        // A broken ACL file on reload: the previous ACL stays.
        std::fs::write(&acl, acl_bad).unwrap();
        hup(&broker);
        assert!(
            broker.wait_log_count("keeping the old one", 1, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        let log = broker.log_text();
        let kept: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("keeping the old one"))
            .collect();
        assert!(
            kept.len() == 1 && kept[0].contains("ACL file") && kept[0].contains("line 5"),
            "{kept:#?}"
        );
        assert_eq!(
            subscribe_codes(&mut sub, 3, &filters).await,
            vec![ReasonCode::NOT_AUTHORIZED, ReasonCode(1)]
        );
        publish_q1(&mut publ, "news/3", 4, "n3", ReasonCode::SUCCESS).await;
        publish_q1(&mut publ, "secret/2", 5, "s2", ReasonCode::SUCCESS).await;
        assert_eq!(
            next_message(&mut sub).await,
            ("secret/2".into(), "s2".into())
        );
        ping(&mut sub, "sub").await;
        logged_in(addr, V311, "alice", Some("alice"), Some("new-pw")).await;

        // Granting news/ again does not bring back the subscription the second
        // reload removed (a subscription only denied at delivery would come back).
        std::fs::write(&acl, acl_v3).unwrap();
        hup(&broker);
        assert!(
            broker.wait_log_count("ACL file reloaded", 3, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        publish_q1(&mut publ, "news/4", 6, "n4", ReasonCode::SUCCESS).await;
        publish_q1(&mut publ, "secret/3", 7, "s3", ReasonCode::SUCCESS).await;
        assert_eq!(
            next_message(&mut sub).await,
            ("secret/3".into(), "s3".into())
        );
        // Subscribing anew works under the new grant.
        sub.subscribe(4, "news/#", QoS::AtLeastOnce).await;
        publish_q1(&mut publ, "news/5", 8, "n5", ReasonCode::SUCCESS).await;
        assert_eq!(next_message(&mut sub).await, ("news/5".into(), "n5".into()));
    });
}

// ---------------------------------------------------------------------------------
// 6. tern passwd

fn tern_passwd(args: &[&str], file: &Path, stdin: &str) -> RunOutput {
    let mut cmd = Command::new(BIN);
    cmd.arg("passwd");
    let (flags, user) = args.split_at(args.len() - 1);
    cmd.args(flags).arg(file).args(user);
    run_bounded_with_stdin(cmd, stdin.as_bytes(), Duration::from_secs(30))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Start an in-process broker on `pw` and try each (user, password): the codes.
async fn codes_with_password_file(pw: &Path, logins: &[(&str, &str)]) -> Vec<ReasonCode> {
    let mut config = test_config();
    config.auth.password_file = Some(pw.to_path_buf());
    let (broker, addr) = start(config).await;
    let mut codes = Vec::new();
    for (user, password) in logins {
        codes.push(login(addr, V5, user, Some(user), Some(password)).await.0);
    }
    broker.shutdown().await;
    codes
}

#[tokio::test]
async fn tern_passwd_stdin_creates_a_private_argon2id_file() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("new-passwd");
    let out = tern_passwd(&["--stdin", "alice"], &pw, "s3cret pass\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&pw), 0o600);
    let text = std::fs::read_to_string(&pw).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("alice:$argon2id$v=19$"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let ok = ReasonCode::SUCCESS;
    let bad = ReasonCode::BAD_USER_NAME_OR_PASSWORD;
    assert_eq!(
        codes_with_password_file(&pw, &[("alice", "s3cret pass"), ("alice", "s3cret")]).await,
        vec![ok, bad]
    );

    // Changing the password replaces the entry.
    let out = tern_passwd(&["--stdin", "alice"], &pw, "another one\n");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&pw).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(mode(&pw), 0o600);
    assert_eq!(
        codes_with_password_file(&pw, &[("alice", "s3cret pass"), ("alice", "another one")]).await,
        vec![bad, ok]
    );
}

#[tokio::test]
async fn tern_passwd_adds_to_a_mosquitto_file_and_deletes_users() {
    require("mosquitto_passwd");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let mut mk = Command::new("mosquitto_passwd");
    mk.arg("-c").arg("-b").arg(&pw).args(["first", "pw-one"]);
    let out = run_bounded(mk, Duration::from_secs(20));
    assert!(out.status.success(), "mosquitto_passwd: {out:?}");
    let before = std::fs::read_to_string(&pw).unwrap();
    // An operator's own mode (e.g. 0640 for a broker in the file's group) is kept.
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let first_line = before.lines().next().unwrap().to_string();
    assert!(first_line.starts_with("first:$"), "{before}");

    let out = tern_passwd(&["--stdin", "second"], &pw, "pw-two\n");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&pw).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0], first_line,
        "the first user's entry is kept as it was"
    );
    assert!(lines[1].starts_with("second:$argon2id$"), "{text}");
    assert_eq!(mode(&pw), 0o640, "an existing file keeps its mode");
    // Through a symlink, the file it points to is changed; the link stays a link.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&pw, &link).unwrap();
    let out = tern_passwd(&["--stdin", "third"], &link, "pw-three\n");
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&pw)
        .unwrap()
        .contains("third:$argon2id$"));
    let ok = ReasonCode::SUCCESS;
    let bad = ReasonCode::BAD_USER_NAME_OR_PASSWORD;
    assert_eq!(
        codes_with_password_file(&pw, &[("first", "pw-one"), ("second", "pw-two")]).await,
        vec![ok, ok]
    );

    let out = tern_passwd(&["-D", "first"], &pw, "");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(!text.contains("first:"), "{text}");
    assert_eq!(
        codes_with_password_file(&pw, &[("first", "pw-one"), ("second", "pw-two")]).await,
        vec![bad, ok]
    );
}

#[test]
fn tern_passwd_errors_exit_non_zero_and_leave_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let original = sha512_line("alice", "pw-a");
    std::fs::write(&pw, &original).unwrap();

    // Deleting a user that is not there.
    let out = tern_passwd(&["-D", "nobody"], &pw, "");
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("nobody"), "{out:?}");
    // A username the file format cannot hold.
    let out = tern_passwd(&["--stdin", "a:b"], &pw, "pw\n");
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("':'"), "{out:?}");
    // An empty password.
    let out = tern_passwd(&["--stdin", "bob"], &pw, "\n");
    assert!(!out.status.success(), "{out:?}");
    assert!(!out.stderr.trim().is_empty(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&pw).unwrap(), original);

    // -D on a file that does not exist does not create it.
    let missing = dir.path().join("missing");
    let out = tern_passwd(&["-D", "alice"], &missing, "");
    assert!(!out.status.success(), "{out:?}");
    assert!(!out.stderr.trim().is_empty(), "{out:?}");
    assert!(!missing.exists());
    // Nor does a refused username.
    let out = tern_passwd(&["--stdin", "x:y"], &missing, "pw\n");
    assert!(!out.status.success(), "{out:?}");
    assert!(!missing.exists());
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["passwd".to_string()]);
}

// ---------------------------------------------------------------------------------
// 7. A stored session keeps its username across a restart

#[test]
fn restored_session_keeps_its_username_for_the_acl() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    write_passwords(&pw, &[("a", "a-pw"), ("p", "p-pw")]);
    let acl = write(
        dir.path(),
        "acl",
        "user a\ntopic read a/#\ntopic deny a/secret\n\nuser p\ntopic write a/#\n",
    );
    let auth = format!(
        "password_file = {}\nacl_file = {}\n",
        toml_str(&pw),
        toml_str(&acl)
    );
    let data = dir.path().join("data");
    let config = config_file(dir.path(), &auth, Some(&data));
    let sessions = [(V5, "a-v5"), (V311, "a-v311")];

    let mut first = BrokerProcess::spawn_config(&config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (v, id) in sessions {
            let mut c = RawClient::connect(first.addr, v).await;
            c.send(&persistent_login(v, id, "a", "a-pw")).await;
            match c.recv().await {
                Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
                other => panic!("{id}: expected CONNACK, got {other:?}"),
            }
            assert_eq!(
                subscribe_codes(&mut c, 1, &[("a/#", QoS::AtLeastOnce)]).await,
                vec![ReasonCode(1)],
                "{id}"
            );
            c.send(&Packet::Disconnect(protocol::Disconnect::default()))
                .await;
            assert!(c.until_closed().await.is_empty());
        }
    });
    let status = first.terminate();
    assert!(status.success(), "{status:?}\n{}", first.log_text());

    let second = BrokerProcess::spawn_config(&config);
    rt.block_on(async {
        let mut p = logged_in(second.addr, V5, "p", Some("p"), Some("p-pw")).await;
        // p may write both; a may read only a/open, though its a/# matches both.
        publish_q1(&mut p, "a/secret", 1, "hidden", ReasonCode::SUCCESS).await;
        publish_q1(&mut p, "a/open", 2, "visible", ReasonCode::SUCCESS).await;
        for (v, id) in sessions {
            let mut c = RawClient::connect(second.addr, v).await;
            c.send(&persistent_login(v, id, "a", "a-pw")).await;
            match c.recv().await {
                Some(Packet::ConnAck(a)) => {
                    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
                    assert!(a.session_present, "{id}: the stored session is back");
                }
                other => panic!("{id}: expected CONNACK, got {other:?}"),
            }
            // a/secret was queued first: had it been kept it would come first.
            assert_eq!(
                next_message(&mut c).await,
                ("a/open".into(), "visible".into()),
                "{id}\n{}",
                second.log_text()
            );
            c.expect_silence(Duration::from_millis(300)).await;
        }
    });
    let log = second.log_text();
    assert!(
        !log.contains("subscription removed"),
        "the restored subscriptions were re-checked without their username:\n{log}"
    );
}

/// A session belongs to its user: where the operator allows another user to
/// take a client id over (`allow_cross_user_takeover`; by default that is
/// refused, see tests/login_hardening.rs), the other user starts clean and gets
/// none of the first user's queued messages; the first user's session is gone.
#[tokio::test]
async fn another_user_taking_a_client_id_over_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = acl_config(
        dir.path(),
        "user alice\ntopic read alice/#\nuser mallory\ntopic read mallory/#\ntopic read alice/#\n\
         user admin\ntopic write #\n",
    );
    config.auth.allow_cross_user_takeover = true;
    let (broker, addr) = start(config).await;
    for version in [V311, V5] {
        let id = format!("device-{version:?}");
        let mut alice = RawClient::connect(addr, version).await;
        alice
            .send(&persistent_login(version, &id, "alice", ""))
            .await;
        assert!(matches!(alice.recv().await, Some(Packet::ConnAck(_))));
        alice.subscribe(1, "alice/inbox", QoS::AtLeastOnce).await;
        alice.send(&Packet::Disconnect(Default::default())).await;
        drop(alice);

        let mut admin = logged_in(addr, version, "admin", Some("admin"), None).await;
        publish_q1(
            &mut admin,
            "alice/inbox",
            1,
            "for alice only",
            ReasonCode::SUCCESS,
        )
        .await;

        // Mallory may read alice/# herself, but not alice's session.
        let mut mallory = RawClient::connect(addr, version).await;
        mallory
            .send(&persistent_login(version, &id, "mallory", ""))
            .await;
        match mallory.recv().await {
            Some(Packet::ConnAck(a)) => assert!(!a.session_present, "{version:?}"),
            other => panic!("{other:?}"),
        }
        mallory.expect_silence(Duration::from_millis(300)).await;
        mallory.send(&Packet::Disconnect(Default::default())).await;
    }
    broker.shutdown().await;
}

/// A reload that takes read access away drops what was queued for an offline
/// session on those topics: it is not delivered when the session returns.
#[test]
fn acl_reload_drops_queued_messages_the_user_may_no_longer_read() {
    let dir = tempfile::tempdir().unwrap();
    let acl = write(
        dir.path(),
        "acl",
        "user alice\ntopic read news/#\nuser admin\ntopic write #\n",
    );
    let config = config_file(
        dir.path(),
        &format!("acl_file = {}\nallow_anonymous = true\n", toml_str(&acl)),
        None,
    );
    let broker = BrokerProcess::spawn_config(&config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut alice = RawClient::connect(broker.addr, V5).await;
        alice
            .send(&persistent_login(V5, "alice-1", "alice", ""))
            .await;
        assert!(matches!(alice.recv().await, Some(Packet::ConnAck(_))));
        alice.subscribe(1, "news/#", QoS::AtLeastOnce).await;
        alice.send(&Packet::Disconnect(Default::default())).await;
        drop(alice);
        let mut admin = logged_in(broker.addr, V5, "admin", Some("admin"), None).await;
        publish_q1(
            &mut admin,
            "news/secret",
            1,
            "queued before the change",
            ReasonCode::SUCCESS,
        )
        .await;
        publish_q1(
            &mut admin,
            "news/open",
            2,
            "still readable",
            ReasonCode::SUCCESS,
        )
        .await;

        std::fs::write(
            &acl,
            "user alice\ntopic read news/#\ntopic deny news/secret\nuser admin\ntopic write #\n",
        )
        .unwrap();
        hup(&broker);
        assert!(
            broker.wait_log_count("ACL file reloaded", 1, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        let mut alice = RawClient::connect(broker.addr, V5).await;
        alice
            .send(&persistent_login(V5, "alice-1", "alice", ""))
            .await;
        match alice.recv().await {
            Some(Packet::ConnAck(a)) => assert!(a.session_present),
            other => panic!("{other:?}"),
        }
        assert_eq!(next_message(&mut alice).await.0, "news/open");
        alice.expect_silence(Duration::from_millis(300)).await;
    });
}

/// A reload that removes a user from the password file disconnects that user's
/// open connections (DISCONNECT 0x87 on v5), as Mosquitto does; the others stay.
#[tokio::test]
async fn reload_disconnects_users_removed_from_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    write_passwords(&pw, &[("alice", "pw-a"), ("bob", "pw-b")]);
    let mut config = test_config();
    config.auth.password_file = Some(pw.clone());
    let (broker, addr) = start(config).await;
    let mut alice = logged_in(addr, V5, "alice-1", Some("alice"), Some("pw-a")).await;
    let mut bob5 = logged_in(addr, V5, "bob-5", Some("bob"), Some("pw-b")).await;
    let mut bob311 = logged_in(addr, V311, "bob-311", Some("bob"), Some("pw-b")).await;

    write_passwords(&pw, &[("alice", "pw-a")]);
    assert!(broker.reload(None).await.is_empty());
    match bob5.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("bob (v5): expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(bob5.until_closed().await.is_empty());
    assert!(
        bob311.until_closed().await.is_empty(),
        "bob (3.1.1) is closed"
    );
    ping(&mut alice, "alice").await;
    let (code, _) = login(addr, V5, "bob-again", Some("bob"), Some("pw-b")).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    broker.shutdown().await;
}

/// A `$share` group's message goes to a member that may read it: a member whose
/// ACL denies the topic never takes (and so never loses) the group's message.
#[tokio::test]
async fn shared_subscription_skips_members_who_may_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = acl_config(
        dir.path(),
        "user a\ntopic read jobs/#\nuser b\ntopic read jobs/#\ntopic deny jobs/secret\n\
         user pub\ntopic write #\n",
    );
    let (broker, addr) = start(config).await;
    let mut a = logged_in(addr, V5, "member-a", Some("a"), None).await;
    a.subscribe(1, "$share/g/jobs/#", QoS::AtMostOnce).await;
    let mut b = logged_in(addr, V5, "member-b", Some("b"), None).await;
    b.subscribe(1, "$share/g/jobs/#", QoS::AtMostOnce).await;
    let mut p = logged_in(addr, V5, "pub", Some("pub"), None).await;
    for i in 0..6 {
        publish_q1(&mut p, "jobs/secret", i + 1, "s", ReasonCode::SUCCESS).await;
    }
    // Round robin would give b half of them; every one goes to a.
    for _ in 0..6 {
        assert_eq!(next_message(&mut a).await.0, "jobs/secret");
    }
    b.expect_silence(Duration::from_millis(200)).await;
    broker.shutdown().await;
}
