//! Bridges changed by a reload (SIGHUP), black-box: the real `tern` binary,
//! bridging to a second `tern` process as the remote broker. What must hold:
//! a bridge added by a reload starts; one removed stops collecting and keeps
//! its buffered backlog (through a kill -9 too) until `tern bridge purge` or
//! until it comes back, when the backlog drains in order; one changed
//! restarts with its new options; the others are left alone.

#[path = "common/bridge.rs"]
mod bridge;
mod common;

use bridge::*;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tern::protocol::{Packet, QoS};
/// A port nothing listens on: a bridge to it buffers (connection refused).
const NOWHERE: &str = "127.0.0.1:1";

/// A bridge entry `name` to `address`, sending `sensors/#` out under
/// `<prefix>/`.
fn bridge(name: &str, address: &str, prefix: &str) -> String {
    format!(
        r#"[[bridges]]
name = "{name}"
address = "{address}"
protocol = "5"
keepalive = "5s"
retry_delay = "100ms"
topics = [{{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "{prefix}/" }}]
"#
    )
}

/// Write the local broker's config: a listener, the store and the admin
/// endpoint in `dir`, and `bridges` (entries made by `bridge`).
fn write_config(dir: &Path, bridges: &[String]) -> PathBuf {
    let path = dir.join("tern.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n[storage]\ndir = \"{}/data\"\n[admin]\nbind = \"127.0.0.1:0\"\n{}",
            dir.display(),
            bridges.concat()
        ),
    )
    .expect("write tern.toml");
    path
}

/// `GET /api/v1/bridges`, by bridge name.
async fn bridges(tern: &BrokerProcess) -> HashMap<String, serde_json::Value> {
    bridges_status(tern).await["bridges"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| (b["name"].as_str().expect("name").to_string(), b.clone()))
        .collect()
}

/// Poll the bridge list until `cond` holds for it (at most 10 s).
async fn bridges_until(
    tern: &BrokerProcess,
    what: &str,
    cond: impl Fn(&HashMap<String, serde_json::Value>) -> bool,
) -> HashMap<String, serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = bridges(tern).await;
        if cond(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {b:?}\n{}",
            tern.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tern bridge ARGS --admin ADDR`: its exit status and stdout.
fn tern_bridge(tern: &BrokerProcess, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("bridge")
        .args(["--admin", &admin_addr(tern).to_string()])
        .args(args)
        .output()
        .expect("run tern bridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Publish QoS 1 messages `m-<i>` to `sensors/x`, waiting for each PUBACK.
async fn publish(addr: std::net::SocketAddr, range: std::ops::Range<usize>) {
    publish_n(addr, "sensors/x", range).await;
}

fn on(topic: &str, range: std::ops::Range<usize>) -> Vec<(String, usize)> {
    range.map(|i| (topic.to_string(), i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_changes_and_removes_bridges_and_keeps_a_removed_buffer() {
    // The remote: a second Tern, with a subscriber to everything.
    let remote = BrokerProcess::spawn(&[]);
    let (mut sub, _) = raw_connected(remote.addr, V311, "remote-sub", true).await;
    sub.subscribe(1, "#", QoS::AtLeastOnce).await;
    let there = remote.addr.to_string();

    // Bridge `a` cannot reach its remote: 100 messages wait in its buffer.
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = write_config(dir.path(), &[bridge("a", NOWHERE, "a")]);
    let mut tern = BrokerProcess::spawn_config(&conf);
    publish(tern.listener_addrs(1)[0], 0..100).await;
    // (Up to its window of them are handed to its local session already:
    // in flight there, not sent.)
    bridges_until(&tern, "a holds 100", |b| waiting(&b["a"]) == 100).await;

    // Reload: `a` removed, `b` added. `a` keeps its 100 and stops
    // collecting; `b` connects and forwards what comes next.
    write_config(dir.path(), &[bridge("b", &there, "b")]);
    tern.sighup();
    assert!(
        tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
        "{}",
        tern.log_text()
    );
    let st = bridges_until(&tern, "a removed", |b| b["a"]["removed"] == true).await;
    assert_eq!(st["a"]["buffered"], 100, "{st:?}");
    assert_eq!(st["b"]["connected"], true, "{st:?}");
    publish(tern.listener_addrs(1)[0], 100..150).await;
    assert_eq!(
        receive(&mut sub, 50, Duration::from_secs(10)).await,
        on("b/sensors/x", 100..150)
    );
    let (ok, list) = tern_bridge(&tern, &["list"]);
    assert!(ok, "{list}");
    let row_a = list.lines().find(|l| l.starts_with("a ")).unwrap_or("");
    assert!(
        row_a.contains("removed") && row_a.contains(" 100 "),
        "{list}"
    );

    // A kill -9: the removed bridge's buffer survives it (and `b` starts
    // again from the file).
    tern.child.kill().expect("SIGKILL tern");
    tern.child.wait().expect("reap");
    let tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    assert!(tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)));

    // Reload: `a` back, now towards the remote: its 100 drain, in order;
    // `b` is unchanged and not restarted.
    write_config(
        dir.path(),
        &[bridge("a", &there, "a"), bridge("b", &there, "b")],
    );
    tern.sighup();
    assert_eq!(
        receive(&mut sub, 100, Duration::from_secs(10)).await,
        on("a/sensors/x", 0..100)
    );
    let st = bridges_until(&tern, "a drained", |b| {
        b["a"]["buffered"] == 0 && b["a"]["forwarded"] == 100
    })
    .await;
    assert_eq!(st["a"]["removed"], false, "{st:?}");
    assert!(
        !tern.log_text().contains("bridge changed"),
        "{}",
        tern.log_text()
    );

    // Reload: `b` changed (a new prefix): it restarts with it; `a` goes on.
    write_config(
        dir.path(),
        &[bridge("a", &there, "a"), bridge("b", &there, "b2")],
    );
    tern.sighup();
    assert!(tern.wait_log_count("bridge changed", 1, Duration::from_secs(10)));
    assert!(tern.wait_log_count("bridge connected", 3, Duration::from_secs(10)));
    publish(addr, 150..160).await;
    let mut got: Vec<(String, usize)> = collect(&mut sub, 20, Duration::from_secs(10))
        .await
        .iter()
        .map(|g| (g.topic.clone(), g.index()))
        .collect();
    got.sort();
    let mut want = [on("a/sensors/x", 150..160), on("b2/sensors/x", 150..160)].concat();
    want.sort();
    assert_eq!(got, want, "{}", tern.log_text());

    // `a` cut off again (a change: its buffer stays), 20 wait; then removed
    // by a reload, and purged: the buffer is gone and so is `a`.
    write_config(
        dir.path(),
        &[bridge("a", NOWHERE, "a"), bridge("b", &there, "b2")],
    );
    tern.sighup();
    assert!(tern.wait_log_count("bridge changed", 2, Duration::from_secs(10)));
    publish(addr, 160..180).await;
    assert_eq!(
        receive(&mut sub, 20, Duration::from_secs(10)).await,
        on("b2/sensors/x", 160..180)
    );
    bridges_until(&tern, "a holds 20", |b| waiting(&b["a"]) == 20).await;
    write_config(dir.path(), &[bridge("b", &there, "b2")]);
    tern.sighup();
    bridges_until(&tern, "a removed", |b| b["a"]["removed"] == true).await;
    let (ok, out) = tern_bridge(&tern, &["purge", "a"]);
    assert!(ok, "{out}");
    assert!(out.contains("purged 20 messages"), "{out}");
    let st = bridges(&tern).await;
    assert!(!st.contains_key("a"), "{st:?}");
    let (ok, out) = tern_bridge(&tern, &["purge", "nope"]);
    assert!(!ok && out.contains("no bridge named"), "{out}");
    // Nothing else reached the remote.
    sub.expect_silence(Duration::from_millis(300)).await;
}

/// QoS 0 and a link that is down: by default a QoS 0 message is not kept
/// (at most once; counted as dropped), with `buffer_qos0 = true` it waits
/// with the rest. Either way it goes out at QoS 0 (never raised to the
/// mapping's QoS), and while the link is up it goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_waits_for_a_link_only_with_buffer_qos0() {
    let remote = BrokerProcess::spawn(&[]);
    let (mut sub, _) = raw_connected(remote.addr, V311, "remote-sub", true).await;
    sub.subscribe(1, "#", QoS::ExactlyOnce).await;
    let there = remote.addr.to_string();
    let keep = |address: &str| bridge("keep", address, "k") + "buffer_qos0 = true\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = write_config(dir.path(), &[bridge("drop", NOWHERE, "d"), keep(NOWHERE)]);
    let tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    let (mut p, _) = raw_connected(addr, V311, "local-pub", true).await;
    for i in 0..10 {
        p.send(&publish_packet(
            "sensors/q0",
            QoS::AtMostOnce,
            0,
            format!("m-{i}").as_bytes(),
        ))
        .await;
    }
    drop(p);
    publish(addr, 10..20).await;
    let st = bridges_until(&tern, "both hold theirs", |b| {
        waiting(&b["keep"]) == 20 && waiting(&b["drop"]) == 10
    })
    .await;
    assert_eq!(st["drop"]["dropped"], 10, "{st:?}");
    assert_eq!(st["keep"]["dropped"], 0, "{st:?}");
    // The same in the Prometheus series (from the router's snapshot, taken
    // every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = tern::admin::http::request(
            admin_addr(&tern),
            "GET",
            "/metrics",
            None,
            Duration::from_secs(5),
        )
        .await
        .expect("metrics");
        let want = [
            "tern_queue_dropped_total{queue=\"bridge-drop\"} 10",
            "tern_bridge_buffered{bridge=\"keep\"} 20",
            "tern_bridge_buffered{bridge=\"drop\"} 10",
            "tern_bridge_connected{bridge=\"keep\"} 0",
        ];
        if want.iter().all(|w| text.lines().any(|l| l.starts_with(w))) {
            break;
        }
        assert!(Instant::now() < deadline, "{want:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The link comes up (a reload points both at the remote).
    write_config(dir.path(), &[bridge("drop", &there, "d"), keep(&there)]);
    tern.sighup();
    let got = collect(&mut sub, 30, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 30, "{got:?}\n{}", tern.log_text());
    let of = |topic: &str| -> Vec<(usize, QoS)> {
        got.iter()
            .filter(|g| g.topic == topic)
            .map(|g| (g.index(), g.qos))
            .collect()
    };
    let q1: Vec<(usize, QoS)> = (10..20).map(|i| (i, QoS::AtLeastOnce)).collect();
    let q0: Vec<(usize, QoS)> = (0..10).map(|i| (i, QoS::AtMostOnce)).collect();
    assert_eq!(of("k/sensors/q0"), q0, "{got:?}");
    assert_eq!(of("k/sensors/x"), q1, "{got:?}");
    assert_eq!(of("d/sensors/x"), q1, "{got:?}");
    assert_eq!(of("d/sensors/q0"), vec![], "{got:?}");

    // While the link is up, QoS 0 goes out on both, at QoS 0.
    assert!(tern.wait_log_count("bridge connected", 2, Duration::from_secs(10)));
    let (mut p, _) = raw_connected(addr, V311, "local-pub", true).await;
    p.send(&publish_packet("sensors/q0", QoS::AtMostOnce, 0, b"m-99"))
        .await;
    let mut live = Vec::new();
    while live.len() < 2 {
        match sub.recv_within(Duration::from_secs(10)).await {
            Ok(Some(Packet::Publish(p))) => live.push((p.topic.clone(), p.qos)),
            other => panic!("remote subscriber: {other:?}\n{}", tern.log_text()),
        }
    }
    live.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        live,
        vec![
            ("d/sensors/q0".to_string(), QoS::AtMostOnce),
            ("k/sensors/q0".to_string(), QoS::AtMostOnce)
        ]
    );
}

/// Local ACLs apply to a bridge, as user `bridge:<name>` or the configured
/// `local_user`: without a grant to read its buffer the bridge says so and
/// sends nothing; with `local_user = "gateway"` and the grant to `gateway`
/// it forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_is_checked_by_the_acl_as_its_local_user() {
    let remote = BrokerProcess::spawn(&[]);
    let (mut sub, _) = raw_connected(remote.addr, V311, "remote-sub", true).await;
    sub.subscribe(1, "#", QoS::AtLeastOnce).await;
    let there = remote.addr.to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic readwrite sensors/#\nuser gateway\ntopic read $queue/bridge-b\ntopic read sensors/#\n",
    )
    .expect("acl");
    let with_acl = |bridge: String| {
        let conf = write_config(dir.path(), &[bridge]);
        let text = std::fs::read_to_string(&conf).expect("read");
        let text = text.replace(
            "[auth]\nallow_anonymous = true\n",
            &format!(
                "[auth]\nallow_anonymous = true\nacl_file = \"{}\"\n",
                acl.display()
            ),
        );
        std::fs::write(&conf, text).expect("write");
        conf
    };
    // As bridge:b, which the ACL does not name: refused, said in the log.
    let conf = with_acl(bridge("b", &there, "b"));
    let tern = BrokerProcess::spawn_config(&conf);
    assert!(
        tern.wait_log_count("grant user bridge:b read", 1, Duration::from_secs(10)),
        "{}",
        tern.log_text()
    );
    drop(tern);
    // As gateway, granted: it forwards.
    let conf = with_acl(bridge("b", &there, "b") + "local_user = \"gateway\"\n");
    let tern = BrokerProcess::spawn_config(&conf);
    assert!(
        tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
        "{}",
        tern.log_text()
    );
    publish(tern.listener_addrs(1)[0], 0..5).await;
    assert_eq!(
        receive(&mut sub, 5, Duration::from_secs(10)).await,
        on("b/sensors/x", 0..5),
        "{}",
        tern.log_text()
    );
}
