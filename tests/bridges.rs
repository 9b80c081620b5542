//! Bridges to a remote broker, black-box: the real `tern` binary bridging to a
//! real Mosquitto started here on a free loopback port (a missing Mosquitto
//! fails the test: `.ci/run` installs it). What must hold: messages matching an
//! `out` mapping reach the remote with the remote prefix, in order; while the
//! remote is down they wait in the bridge's buffer on disk, through a kill -9
//! of Tern, and all arrive, in order, once it is back.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern::protocol::{Packet, PacketId, ProtocolVersion, PubResponse, QoS};

const V311: ProtocolVersion = ProtocolVersion::V311;

/// A Mosquitto on a fixed loopback port (so it can be stopped and started
/// again where the bridge looks for it), with persistence in `dir`.
struct Mosquitto {
    child: Option<Child>,
    addr: SocketAddr,
    conf: PathBuf,
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    require("mosquitto");
    "mosquitto".into()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
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
    fn start_with(dir: &Path, extra: impl Fn(u16) -> String) -> (Mosquitto, u16) {
        for _ in 0..5 {
            let (port, port2) = (free_port(), free_port());
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    // `user root`: run as root, Mosquitto would otherwise switch
                    // to its own user, which cannot write its sessions here (the
                    // option does nothing when not run as root).
                    "allow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\nmax_inflight_messages 64\nlistener {port} 127.0.0.1\n{}",
                    dir.display(),
                    extra(port2)
                ),
            )
            .expect("write mosquitto.conf");
            let mut m = Mosquitto {
                child: None,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                conf,
            };
            if m.try_resume() {
                return (m, port2);
            }
        }
        panic!("mosquitto did not start on any of 5 free ports");
    }

    /// Start it (again) on its port, and wait until it accepts.
    fn resume(&mut self) {
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
    fn try_resume(&mut self) -> bool {
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
    fn stop(&mut self) {
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
fn tern_config(dir: &Path, remote: SocketAddr) -> PathBuf {
    tern_config_with(
        dir,
        remote,
        "3.1.1",
        r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" }"#,
    )
}

fn tern_config_with(dir: &Path, remote: SocketAddr, protocol: &str, topics: &str) -> PathBuf {
    tern_config_tls(dir, remote, protocol, topics, "")
}

/// `extra`: more lines of the bridge (its `tls = {...}`, retry options), or
/// empty.
fn tern_config_tls(
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

/// `GET /api/v1/bridges` on the broker's admin endpoint (its address from
/// the log), parsed.
async fn bridges_status(tern: &BrokerProcess) -> serde_json::Value {
    assert!(tern.wait_log_count("admin endpoint on", 1, Duration::from_secs(5)));
    let log = tern.log_text();
    let addr: SocketAddr = log
        .split("admin endpoint on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the admin address in the log");
    let (status, body) =
        tern::admin::http::request(addr, "GET", "/api/v1/bridges", None, Duration::from_secs(5))
            .await
            .expect("admin answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero")
}

/// Publish `n` QoS 1 messages `m-<i>` to `topic`, waiting for each PUBACK.
async fn publish_n(addr: SocketAddr, topic: &str, range: std::ops::Range<usize>) {
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
async fn receive(c: &mut RawClient, n: usize, limit: Duration) -> Vec<(String, usize)> {
    let mut got = Vec::new();
    let mut distinct = std::collections::HashSet::new();
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
fn first_seen(got: &[(String, usize)]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    got.iter()
        .filter(|(_, i)| seen.insert(*i))
        .map(|(_, i)| *i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_mapping_reaches_mosquitto_with_the_remote_prefix_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let remote = Mosquitto::start(dir.path());
    let (mut sub, _) = raw_connected(remote.addr, V311, "cloud-sub", true).await;
    sub.subscribe(1, "gw1/#", QoS::AtLeastOnce).await;
    let tern = BrokerProcess::spawn_config(&tern_config(dir.path(), remote.addr));
    let addr = tern.listener_addrs(1)[0];
    assert!(
        tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
        "the bridge did not connect: {}",
        tern.log_text()
    );
    publish_n(addr, "sensors/a", 0..300).await;
    // Not mapped: stays local.
    publish_n(addr, "other/x", 300..301).await;
    let got = receive(&mut sub, 300, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 300, "once each: {}", tern.log_text());
    assert!(got.iter().all(|(t, _)| t == "gw1/sensors/a"), "{got:?}");
    assert_eq!(first_seen(&got), (0..300).collect::<Vec<_>>());
    sub.expect_silence(Duration::from_millis(300)).await;
    // What the admin endpoint says of it.
    let st = bridges_status(&tern).await;
    let b = &st["bridges"][0];
    assert_eq!(b["name"], "cloud", "{st}");
    assert_eq!(b["connected"], true, "{st}");
    assert_eq!(b["forwarded"], 300, "{st}");
    assert_eq!(b["buffered"], 0, "{st}");
    assert_eq!(b["buffer"], "bridge-cloud", "{st}");
}

/// The remote is down while 2,000 messages are published; Tern is killed with
/// SIGKILL in the middle of the outage and started again; when the remote is
/// back every message arrives, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_a_kill9_lose_nothing_and_keep_the_order() {
    const N: usize = 2000;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut remote = Mosquitto::start(dir.path());
    // A persistent subscriber on the remote, away during the outage.
    let (mut sub, _) = raw_connected(remote.addr, V311, "outage-sub", false).await;
    sub.subscribe(1, "gw1/#", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    drop(sub);
    let conf = tern_config(dir.path(), remote.addr);
    let mut tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    assert!(tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)));
    remote.stop();

    publish_n(addr, "sensors/b", 0..N / 2).await;
    // The admin endpoint tells the outage: not connected, why, what waits.
    let st = bridges_status(&tern).await;
    let b = &st["bridges"][0];
    assert_eq!(b["connected"], false, "{st}");
    assert!(b["last_error"].is_string(), "{st}");
    let waiting = b["buffered"].as_u64().unwrap_or(0) + b["in_flight"].as_u64().unwrap_or(0);
    assert_eq!(waiting, (N / 2) as u64, "{st}");
    tern.child.kill().expect("SIGKILL tern");
    tern.child.wait().expect("reap");
    let tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    publish_n(addr, "sensors/b", N / 2..N).await;

    remote.resume();
    let (mut sub, ack) = raw_connected(remote.addr, V311, "outage-sub", false).await;
    assert!(
        ack.session_present,
        "mosquitto kept the subscriber's session"
    );
    let got = receive(&mut sub, N, Duration::from_secs(30)).await;
    let order = first_seen(&got);
    assert_eq!(order.len(), N, "all arrive: {}", tern.log_text());
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "in publish order");
}

/// `in` and `both` mappings: what is published on the remote under `cloud/`
/// reaches local subscribers without the prefix, QoS 1 and 2, exactly once;
/// a `both` topic published locally goes out once and (v5, No Local) does not
/// come back in; one published remotely comes in and does not go back out: a
/// bridge never re-exports what it imported, so no loop forms, with 3.1.1
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_and_both_mappings_bring_messages_in_without_loops() {
    for protocol in ["5", "3.1.1"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let remote = Mosquitto::start(dir.path());
        let conf = tern_config_with(
            dir.path(),
            remote.addr,
            protocol,
            r#"{ filter = "cmd/#", direction = "in", qos = 2, remote_prefix = "cloud/" }, { filter = "shared/#", direction = "both", qos = 1 }"#,
        );
        let tern = BrokerProcess::spawn_config(&conf);
        let addr = tern.listener_addrs(1)[0];
        assert!(
            tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
            "{}",
            tern.log_text()
        );
        // Let the bridge's SUBSCRIBE reach the remote.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mut local, _) = raw_connected(addr, V311, "local-sub", true).await;
        local.subscribe(1, "#", QoS::ExactlyOnce).await;
        let (mut rsub, _) = raw_connected(remote.addr, V311, "remote-sub", true).await;
        rsub.subscribe(1, "shared/#", QoS::AtLeastOnce).await;

        // In: remote -> local, without the remote prefix, QoS 1 and 2.
        let (mut rpub, _) = raw_connected(remote.addr, V311, "remote-pub", true).await;
        rpub.send(&publish_packet("cloud/cmd/a", QoS::AtLeastOnce, 1, b"m-1"))
            .await;
        assert!(matches!(rpub.recv().await, Some(Packet::PubAck(_))));
        rpub.send(&publish_packet("cloud/cmd/b", QoS::ExactlyOnce, 2, b"m-2"))
            .await;
        assert!(matches!(rpub.recv().await, Some(Packet::PubRec(_))));
        rpub.send(&Packet::PubRel(PubResponse::success(pid(2))))
            .await;
        assert!(matches!(rpub.recv().await, Some(Packet::PubComp(_))));
        let mut got = Vec::new();
        while got.len() < 2 {
            match local.recv_within(Duration::from_secs(5)).await {
                Ok(Some(Packet::Publish(p))) => {
                    got.push(p.topic.clone());
                    match p.qos {
                        QoS::AtLeastOnce => {
                            local
                                .send(&Packet::PubAck(PubResponse::success(
                                    p.packet_id.expect("id"),
                                )))
                                .await
                        }
                        QoS::ExactlyOnce => {
                            local
                                .send(&Packet::PubRec(PubResponse::success(
                                    p.packet_id.expect("id"),
                                )))
                                .await
                        }
                        QoS::AtMostOnce => {}
                    }
                }
                Ok(Some(Packet::PubRel(r))) => {
                    local
                        .send(&Packet::PubComp(PubResponse::success(r.packet_id)))
                        .await
                }
                other => panic!(
                    "{protocol}: local subscriber got {other:?}: {}",
                    tern.log_text()
                ),
            }
        }
        got.sort();
        assert_eq!(got, vec!["cmd/a", "cmd/b"], "{protocol}");

        // Both: local -> remote once, and not back in.
        publish_n(addr, "shared/x", 10..11).await;
        let r = receive(&mut rsub, 1, Duration::from_secs(5)).await;
        assert_eq!(r, vec![("shared/x".to_string(), 10)], "{protocol}");
        // Remote -> local once, and not back out.
        rpub.send(&publish_packet("shared/y", QoS::AtLeastOnce, 3, b"m-11"))
            .await;
        assert!(matches!(rpub.recv().await, Some(Packet::PubAck(_))));
        let r = receive(&mut rsub, 1, Duration::from_secs(5)).await;
        assert_eq!(
            r,
            vec![("shared/y".to_string(), 11)],
            "{protocol}: the remote's own"
        );
        let mut local_got = Vec::new();
        loop {
            match local.recv_within(Duration::from_millis(800)).await {
                Ok(Some(Packet::Publish(p))) => {
                    local_got.push(p.topic.clone());
                    if let Some(id) = p.packet_id {
                        match p.qos {
                            QoS::ExactlyOnce => {
                                local.send(&Packet::PubRec(PubResponse::success(id))).await
                            }
                            _ => local.send(&Packet::PubAck(PubResponse::success(id))).await,
                        }
                    }
                }
                Ok(Some(Packet::PubRel(r))) => {
                    local
                        .send(&Packet::PubComp(PubResponse::success(r.packet_id)))
                        .await
                }
                Ok(Some(other)) => panic!("{other:?}"),
                Ok(None) | Err(()) => break,
            }
        }
        local_got.sort();
        if protocol == "5" {
            assert_eq!(
                local_got,
                vec!["shared/x", "shared/y"],
                "{protocol}: each once locally, nothing looped"
            );
        } else {
            // 3.1.1 has no No Local: the remote echoes shared/x back once;
            // the bridge brings it in but never sends it out again, so the
            // loop ends there (the remote sees each message once, below).
            assert_eq!(
                local_got,
                vec!["shared/x", "shared/x", "shared/y"],
                "{protocol}: the echo comes in once, nothing loops"
            );
        }
        rsub.expect_silence(Duration::from_millis(500)).await;
    }
}

/// Certificates from `certs/make-dev-certs.sh` in `dir`.
fn dev_certs(dir: &Path) {
    require("openssl");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/make-dev-certs.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script).arg(dir).arg("gw-1");
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{out:?}");
}

/// A TLS bridge to Mosquitto with a CA and a client certificate (Mosquitto
/// requires one) carries messages; a bridge with the wrong CA says why in the
/// log and keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_bridge_with_a_client_certificate_and_a_wrong_ca_that_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    dev_certs(&certs);
    let other = dir.path().join("other");
    dev_certs(&other);
    let c = |n: &str| certs.join(n).display().to_string();
    let (remote, tls_port) = Mosquitto::start_with(dir.path(), |tls_port| {
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            c("ca.pem"),
            c("server.pem"),
            c("server.key")
        )
    });
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let (mut rsub, _) = raw_connected(remote.addr, V311, "remote-sub", true).await;
    rsub.subscribe(1, "gw1/#", QoS::AtLeastOnce).await;

    let good = tempfile::tempdir().expect("temp dir");
    let conf = tern_config_tls(
        good.path(),
        tls_addr,
        "5",
        r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" }"#,
        &format!(
            r#"tls = {{ ca = "{}", cert = "{}", key = "{}" }}"#,
            c("ca.pem"),
            c("client.pem"),
            c("client.key")
        ),
    );
    let tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    assert!(
        tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
        "{}",
        tern.log_text()
    );
    publish_n(addr, "sensors/tls", 0..20).await;
    let got = receive(&mut rsub, 20, Duration::from_secs(10)).await;
    assert_eq!(first_seen(&got), (0..20).collect::<Vec<_>>());

    // The wrong CA: refused, said, retried.
    let bad = tempfile::tempdir().expect("temp dir");
    let conf = tern_config_tls(
        bad.path(),
        tls_addr,
        "5",
        r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" }"#,
        &format!(
            r#"tls = {{ ca = "{}", cert = "{}", key = "{}" }}"#,
            other.join("ca.pem").display(),
            c("client.pem"),
            c("client.key")
        ),
    );
    let tern_bad = BrokerProcess::spawn_config(&conf);
    assert!(
        tern_bad.wait_log_count("TLS handshake failed", 2, Duration::from_secs(10)),
        "{}",
        tern_bad.log_text()
    );
    let log = tern_bad.log_text();
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer"),
        "the reason is given: {log}"
    );
    assert!(!log.contains("bridge connected"), "{log}");
}

/// A remote that refuses one topic (Mosquitto's ACL, MQTT 5: PUBACK 0x87): those
/// messages are retried, then end in the bridge's dead-letter queue
/// `cloud-dlq` with the reason and the remote's code; the others flow
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_remote_refuses_end_in_the_dead_letter_queue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite gw1/sensors/ok/#\n").expect("write acl");
    let (remote, _) =
        Mosquitto::start_with(dir.path(), |_| format!("acl_file {}\n", acl.display()));
    let (mut rsub, _) = raw_connected(remote.addr, V311, "remote-sub", true).await;
    rsub.subscribe(1, "gw1/#", QoS::AtLeastOnce).await;
    let path = tern_config_tls(
        dir.path(),
        remote.addr,
        "5",
        r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" }"#,
        "max_deliveries = 2\nretry_delay = \"100ms\"\nretry_delay_max = \"200ms\"",
    );
    let tern = BrokerProcess::spawn_config(&path);
    let addr = tern.listener_addrs(1)[0];
    assert!(tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)));
    // A consumer of the dead-letter queue (v5, to read its properties).
    let mut dlq = RawClient::connect(addr, ProtocolVersion::V5).await;
    dlq.send(&connect_packet(ProtocolVersion::V5, "dlq-reader", true))
        .await;
    assert!(matches!(dlq.recv().await, Some(Packet::ConnAck(_))));
    dlq.subscribe(1, "$queue/cloud-dlq", QoS::AtLeastOnce).await;

    publish_n(addr, "sensors/bad/1", 0..3).await;
    publish_n(addr, "sensors/ok/1", 3..6).await;
    let got = receive(&mut rsub, 3, Duration::from_secs(10)).await;
    assert_eq!(first_seen(&got), vec![3, 4, 5], "the others flow");

    let mut dead = Vec::new();
    while dead.len() < 3 {
        match dlq.recv_within(Duration::from_secs(10)).await {
            Ok(Some(Packet::Publish(p))) => {
                let props: Vec<(String, String)> = p
                    .properties
                    .user_properties
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let reason = props
                    .iter()
                    .find(|(k, _)| k == "tern-dead-letter-reason")
                    .map(|(_, v)| v.clone());
                assert_eq!(reason.as_deref(), Some("max-deliveries"), "{props:?}");
                assert!(
                    props
                        .iter()
                        .any(|(k, v)| k == "tern-queue" && v == "bridge-cloud"),
                    "{props:?}"
                );
                // The remote's own reason: 0x87 Not authorized.
                assert!(
                    props
                        .iter()
                        .any(|(k, v)| k == "tern-refused-code" && v == "0x87"),
                    "{props:?}"
                );
                dead.push(p.topic.clone());
                if let Some(id) = p.packet_id {
                    dlq.send(&Packet::PubAck(PubResponse::success(id))).await;
                }
            }
            other => panic!("dead-letter reader: {other:?}: {}", tern.log_text()),
        }
    }
    assert!(dead.iter().all(|t| t == "sensors/bad/1"), "{dead:?}");
    assert!(tern.log_text().contains("the remote refused a message"));
    rsub.expect_silence(Duration::from_millis(300)).await;
}
