//! Bridges to a remote broker, black-box: the real `tern` binary bridging to a
//! real Mosquitto started here on a free loopback port (a missing Mosquitto
//! fails the test: `.ci/run` installs it). What must hold: messages matching an
//! `out` mapping reach the remote with the remote prefix, in order, at the
//! mapping's QoS; `in` mappings bring the remote's in at the QoS it delivered;
//! while the remote is down they wait in the bridge's buffer on disk, through
//! a kill -9 of Tern, and all arrive, in order, once it is back (100,000 of
//! them exactly once at QoS 2). Other remotes: `tests/bridge_peers.rs`; the
//! shared helpers: `tests/common/bridge.rs`.

#[path = "common/bridge.rs"]
mod bridge;
mod common;

use bridge::*;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tern::protocol::{Packet, ProtocolVersion, PubResponse, QoS};

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

/// The issue's outage at its size: the remote is stopped, 100,000 QoS 1
/// messages over 4 topics are published locally (pipelined), Tern is killed
/// with SIGKILL after the first 50,000 and started again, the rest are
/// published, then the remote comes back. The bridge sends at QoS 2 (the
/// mapping's) to a persistent subscriber of the remote subscribed at QoS 2:
/// every message arrives exactly once, at QoS 2, in publish order per topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_100k_messages_and_a_kill9_deliver_each_exactly_once_in_order() {
    const N: usize = 100_000;
    const TOPICS: usize = 4;
    const WINDOW: usize = 256;
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut remote = Mosquitto::start(dir.path());
    // A persistent subscriber on the remote, away during the outage.
    let (mut sub, _) = raw_connected(remote.addr, V311, "outage-100k-sub", false).await;
    sub.subscribe(1, "gw1/#", QoS::ExactlyOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    drop(sub);
    let conf = tern_config_with(
        dir.path(),
        remote.addr,
        "5",
        r#"{ filter = "sensors/#", direction = "out", qos = 2, remote_prefix = "gw1/" }"#,
    );
    let mut tern = BrokerProcess::spawn_config(&conf);
    assert!(
        tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
        "{}",
        tern.log_text()
    );
    remote.stop();

    let messages = |range: std::ops::Range<usize>| {
        range.map(|i| (format!("sensors/t{}", i % TOPICS), format!("m-{i}")))
    };
    let addr = tern.listener_addrs(1)[0];
    let (mut publisher, _) = raw_connected(addr, V311, "local-pub", true).await;
    let first_half =
        publish_pipelined(&mut publisher, messages(0..N / 2), QoS::AtLeastOnce, WINDOW).await;
    drop(publisher);
    let st = bridges_status(&tern).await;
    assert_eq!(st["bridges"][0]["connected"], false, "{st}");
    assert_eq!(bridge_waiting(&st), (N / 2) as u64, "{st}");
    let t_kill = Instant::now();
    tern.child.kill().expect("SIGKILL tern");
    tern.child.wait().expect("reap");
    let tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    let restart = t_kill.elapsed();
    let (mut publisher, _) = raw_connected(addr, V311, "local-pub", true).await;
    let second_half =
        publish_pipelined(&mut publisher, messages(N / 2..N), QoS::AtLeastOnce, WINDOW).await;
    drop(publisher);
    let st = bridges_status(&tern).await;
    assert_eq!(
        bridge_waiting(&st),
        N as u64,
        "all {N} wait in the buffer after the kill -9: {st}"
    );

    let t_back = Instant::now();
    remote.resume();
    let (mut sub, ack) = raw_connected(remote.addr, V311, "outage-100k-sub", false).await;
    assert!(
        ack.session_present,
        "mosquitto kept the subscriber's session"
    );
    let got = collect(&mut sub, N, Duration::from_secs(120)).await;
    let drain = t_back.elapsed();
    sub.expect_silence(Duration::from_millis(500)).await;
    eprintln!(
        "100k outage: publish {first_half:?} + {second_half:?}, kill -9 and restart {restart:?}, \
         drain after the remote is back {drain:?}, whole test {:?}",
        t0.elapsed()
    );

    assert_eq!(
        got.len(),
        N,
        "each of the {N} arrives exactly once (received {}): {}",
        got.len(),
        bridges_status(&tern).await
    );
    assert!(
        got.iter().all(|g| g.qos == QoS::ExactlyOnce),
        "at the mapping's QoS 2"
    );
    let counts = payload_counts(&got);
    assert_eq!(counts.len(), N, "none twice, none missing");
    for (topic, indices) in per_topic(&got) {
        let t: usize = topic
            .strip_prefix("gw1/sensors/t")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("unexpected topic {topic}"));
        let expected: Vec<usize> = (t..N).step_by(TOPICS).collect();
        assert!(
            indices == expected,
            "{topic}: in publish order ({} received, first out of order at {:?})",
            indices.len(),
            indices.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
}

/// QoS 0, 1 and 2 across the bridge, out and in, with a prefix on each side,
/// over v5 and 3.1.1. What the bridge does (`src/bridge/link.rs`, `take`;
/// `topics::outgoing`): it publishes a QoS 1 or 2 message at the mapping's
/// QoS, whatever QoS 1/2 the local publisher used (the buffer is on disk, so
/// a QoS 1 message may go out at QoS 2), and a QoS 0 message at QoS 0; the
/// remote subscriber gets the smaller of that and its subscription's QoS: a
/// QoS 1 local message leaves a `qos = 2` mapping at QoS 2, a QoS 2 one leaves
/// a `qos = 1` mapping at QoS 1, QoS 0 stays 0. What comes in is subscribed on the remote at
/// the mapping's QoS and enters the local router at the QoS the remote
/// delivered: min(remote publish QoS, mapping QoS), and then the local
/// subscription's maximum. Each message arrives exactly once (no link is
/// lost here), QoS 0 too, and an imported one carries `tern-bridge=cloud`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_cross_out_and_in_with_prefixes_over_both_protocols() {
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for protocol in ["5", "3.1.1"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let remote = Mosquitto::start(dir.path());
        let (mut rsub, _) = raw_connected(remote.addr, V5, "remote-sub", true).await;
        rsub.subscribe(1, "gw1/#", QoS::ExactlyOnce).await;
        let conf = tern_config_with(
            dir.path(),
            remote.addr,
            protocol,
            r#"{ filter = "sensors/#", direction = "out", qos = 2, local_prefix = "site/", remote_prefix = "gw1/" },
               { filter = "meters/#", direction = "out", qos = 1, local_prefix = "site/", remote_prefix = "gw1/" },
               { filter = "cmd/#", direction = "in", qos = 2, local_prefix = "from-cloud/", remote_prefix = "cloud/gw1/" },
               { filter = "cfg/#", direction = "in", qos = 1, local_prefix = "from-cloud/", remote_prefix = "cloud/gw1/" }"#,
        );
        let tern = BrokerProcess::spawn_config(&conf);
        let addr = tern.listener_addrs(1)[0];
        assert!(
            tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
            "{protocol}: {}",
            tern.log_text()
        );
        let (mut local, _) = raw_connected(addr, V5, "local-sub", true).await;
        local.subscribe(1, "from-cloud/#", QoS::ExactlyOnce).await;

        // Out: site/<x> -> gw1/<x>, QoS 1/2 at the mapping's QoS.
        let (mut lpub, _) = raw_connected(addr, V311, "local-pub", true).await;
        for (i, q) in qos.into_iter().enumerate() {
            let n = q.as_u8();
            publish_one(
                &mut lpub,
                &format!("site/sensors/q{n}"),
                q,
                1,
                format!("m-{i}").as_bytes(),
            )
            .await;
            publish_one(
                &mut lpub,
                &format!("site/meters/q{n}"),
                q,
                2,
                format!("m-{}", 10 + i).as_bytes(),
            )
            .await;
        }
        let got = collect(&mut rsub, 6, Duration::from_secs(10)).await;
        let expected: Vec<(String, u8)> = [
            ("gw1/meters/q0", 0),
            ("gw1/meters/q1", 1),
            ("gw1/meters/q2", 1),
            ("gw1/sensors/q0", 0),
            ("gw1/sensors/q1", 2),
            ("gw1/sensors/q2", 2),
        ]
        .into_iter()
        .map(|(t, q)| (t.to_string(), q))
        .collect();
        assert_eq!(
            topics_and_qos(&got),
            expected,
            "{protocol}: out, each once, QoS 1/2 at the mapping's QoS: {}",
            tern.log_text()
        );
        rsub.expect_silence(Duration::from_millis(300)).await;

        // In: cloud/gw1/<x> -> from-cloud/<x>, at min(publish QoS, mapping QoS).
        // The bridge's SUBSCRIBE went out at its CONNACK, before the
        // PUBLISHes that just arrived on the same link, so it is in force.
        let (mut rpub, _) = raw_connected(remote.addr, V311, "remote-pub", true).await;
        for (i, q) in qos.into_iter().enumerate() {
            let n = q.as_u8();
            publish_one(
                &mut rpub,
                &format!("cloud/gw1/cmd/q{n}"),
                q,
                1,
                format!("m-{}", 20 + i).as_bytes(),
            )
            .await;
            publish_one(
                &mut rpub,
                &format!("cloud/gw1/cfg/q{n}"),
                q,
                2,
                format!("m-{}", 30 + i).as_bytes(),
            )
            .await;
        }
        let got = collect(&mut local, 6, Duration::from_secs(10)).await;
        let expected: Vec<(String, u8)> = [
            ("from-cloud/cfg/q0", 0),
            ("from-cloud/cfg/q1", 1),
            ("from-cloud/cfg/q2", 1),
            ("from-cloud/cmd/q0", 0),
            ("from-cloud/cmd/q1", 1),
            ("from-cloud/cmd/q2", 2),
        ]
        .into_iter()
        .map(|(t, q)| (t.to_string(), q))
        .collect();
        assert_eq!(
            topics_and_qos(&got),
            expected,
            "{protocol}: in, each once at min(publish QoS, mapping QoS): {}",
            tern.log_text()
        );
        for g in &got {
            assert_eq!(
                g.property("tern-bridge"),
                Some("cloud"),
                "{protocol}: {g:?}"
            );
        }
        local.expect_silence(Duration::from_millis(300)).await;

        let st = bridges_status(&tern).await;
        let b = &st["bridges"][0];
        assert_eq!(b["forwarded"], 6, "{protocol}: {st}");
        assert_eq!(b["received"], 6, "{protocol}: {st}");
        assert_eq!(bridge_waiting(&st), 0, "{protocol}: {st}");
    }
}
