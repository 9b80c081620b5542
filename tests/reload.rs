//! The whole configuration reloaded by SIGHUP, black-box: the real `tern`
//! binary with a config file that the test rewrites. What must hold: a changed
//! limit applies to new connections while an open one keeps what its CONNACK
//! said; a listener added starts accepting, one removed stops (its open
//! connections stay); the admin token changes; what only a restart changes is
//! reported, by the log and by `tern check-config --against-running`, and the
//! running value stays.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tern::protocol::{Packet, ProtocolVersion, QoS};

const OLD_TOKEN: &str = "old-token-0123456789";
const NEW_TOKEN: &str = "new-token-9876543210";

/// Listeners on distinct loopback addresses with OS-picked ports: each is
/// named by its address in the file, so a reload can tell them apart.
fn config_text(listeners: &[&str], max_packet: u32, token: &str, sync: &str) -> String {
    let mut t = String::new();
    for l in listeners {
        t.push_str(&format!("[[listeners]]\nbind = \"{l}\"\n\n"));
    }
    t.push_str(&format!(
        "[limits]\nmax_packet_size = {max_packet}\n\n\
         [auth]\nallow_anonymous = true\n\n\
         [storage]\nin_memory = true\nsync_interval = \"{sync}\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{token}\"\n"
    ));
    t
}

fn admin_addr(tern: &BrokerProcess) -> SocketAddr {
    assert!(
        tern.wait_log_count("admin endpoint on http://", 1, Duration::from_secs(5)),
        "{}",
        tern.log_text()
    );
    tern.log_text()
        .lines()
        .find_map(|l| l.split("admin endpoint on http://").nth(1))
        .and_then(|a| a.trim().parse().ok())
        .expect("admin address")
}

async fn get(admin: SocketAddr, path: &str, token: &str) -> (u16, serde_json::Value) {
    let (status, body) =
        tern::admin::http::request(admin, "GET", path, Some(token), Duration::from_secs(5))
            .await
            .expect("admin request");
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The bound listener addresses from `/api/v1/status`.
async fn listeners(admin: SocketAddr, token: &str) -> Vec<SocketAddr> {
    let (status, v) = get(admin, "/api/v1/status", token).await;
    assert_eq!(status, 200, "{v}");
    v["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| l["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// A v5 client connected; returns it with the Maximum Packet Size its
/// CONNACK announced.
async fn connect_v5(addr: SocketAddr, id: &str) -> (RawClient, Option<u32>) {
    let mut c = RawClient::connect(addr, ProtocolVersion::V5).await;
    c.send(&connect_packet(ProtocolVersion::V5, id, true)).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert!(!a.reason_code.is_error(), "{a:?}");
            let max = a.properties.maximum_packet_size;
            (c, max)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// `tern check-config --against-running`: exit code and output.
fn check_against_running(file: &Path, admin: SocketAddr) -> (Option<i32>, String) {
    let out = run_bounded(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
            c.arg("check-config")
                .arg("--against-running")
                .arg("--admin")
                .arg(admin.to_string())
                .arg(file);
            c
        },
        Duration::from_secs(20),
    );
    (out.status.code(), format!("{}{}", out.stdout, out.stderr))
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_sighup_changes_a_limit_adds_a_listener_and_removes_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tern.toml");
    std::fs::write(
        &file,
        config_text(&["127.0.0.1:0", "127.0.0.2:0"], 10_000, OLD_TOKEN, "1s"),
    )
    .unwrap();
    let tern = BrokerProcess::spawn_config(&file);
    let admin = admin_addr(&tern);
    let before = listeners(admin, OLD_TOKEN).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let (a, b) = (before[0], before[1]);
    assert_eq!(a.ip().to_string(), "127.0.0.1");
    assert_eq!(b.ip().to_string(), "127.0.0.2");

    // Open before the reload: on the listener to be removed, and a
    // subscriber that sees what goes through.
    let (mut old_on_b, max) = connect_v5(b, "old-on-b").await;
    assert_eq!(max, Some(10_000));
    let (mut sub, _) = connect_v5(a, "watcher").await;
    sub.send(&subscribe_packet(1, "big/#", QoS::AtMostOnce))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));

    // The new file: a smaller packet limit, 127.0.0.2 gone, 127.0.0.3 new, a
    // new token, and a store setting that only a restart changes.
    std::fs::write(
        &file,
        config_text(&["127.0.0.1:0", "127.0.0.3:0"], 1_000, NEW_TOKEN, "2s"),
    )
    .unwrap();
    // Asked before the SIGHUP: what it would do. The file's token is the new
    // one, which the broker does not take yet; with the old one given, the
    // check answers.
    let (code, out) = check_against_running(&file, admin);
    assert_eq!(code, Some(2), "the new token is not valid yet:\n{out}");
    assert!(out.contains("401"), "{out}");
    let out = run_bounded(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
            c.args(["check-config", "--against-running", "--admin"])
                .arg(admin.to_string())
                .args(["--token", OLD_TOKEN])
                .arg(&file);
            c
        },
        Duration::from_secs(20),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let (live, restart) = text
        .split_once("only a restart applies")
        .expect("a restart section");
    for key in [
        "limits.max_packet_size changed",
        "listeners[127.0.0.2:0] removed",
        "listeners[127.0.0.3:0] added",
        "admin.token changed",
    ] {
        assert!(live.contains(key), "{key} should apply live:\n{text}");
    }
    assert!(restart.contains("storage.sync_interval changed"), "{text}");
    assert!(!text.contains(NEW_TOKEN), "a secret was printed:\n{text}");

    tern.sighup();
    wait_for("the new listener", async || {
        get(admin, "/api/v1/status", NEW_TOKEN).await.0 == 200
            && listeners(admin, NEW_TOKEN).await.len() == 2
            && listeners(admin, NEW_TOKEN).await[1].ip().to_string() == "127.0.0.3"
    })
    .await;
    let after = listeners(admin, NEW_TOKEN).await;
    assert_eq!(after[0], a, "the kept listener keeps its socket");
    let c = after[1];

    // The token: the old one is refused now.
    assert_eq!(get(admin, "/api/v1/status", OLD_TOKEN).await.0, 401);
    // The removed listener accepts no one.
    assert!(
        tokio::net::TcpStream::connect(b).await.is_err(),
        "127.0.0.2 still accepts"
    );
    // The new listener serves, with the new limit in its CONNACK.
    let (mut new_on_c, max) = connect_v5(c, "new-on-c").await;
    assert_eq!(max, Some(1_000));
    let (_, max) = connect_v5(a, "new-on-a").await;
    assert_eq!(max, Some(1_000));

    // The connection opened before keeps its listener and what its CONNACK
    // said: a 5,000-byte publish still goes through.
    let payload = vec![b'x'; 5_000];
    old_on_b
        .send(&publish_packet("big/old", QoS::AtMostOnce, 0, &payload))
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(&*p.topic, "big/old");
            assert_eq!(p.payload.len(), 5_000);
        }
        other => panic!("expected the big publish, got {other:?}"),
    }
    // A new connection is held to the new limit: the same publish ends it.
    new_on_c
        .send(&publish_packet("big/new", QoS::AtMostOnce, 0, &payload))
        .await;
    let seen = new_on_c.until_closed().await;
    assert!(
        seen.iter()
            .any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == tern::protocol::ReasonCode::PACKET_TOO_LARGE)),
        "expected DISCONNECT 0x95 (packet too large), got {seen:?}"
    );

    // The log names what waits for a restart.
    assert!(
        tern.wait_log_count("storage.sync_interval changed", 1, Duration::from_secs(5)),
        "{}",
        tern.log_text()
    );
    // And so does the check, now with only that left.
    let (code, out) = check_against_running(&file, admin);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("storage.sync_interval changed"), "{out}");
    assert!(!out.contains("a reload (SIGHUP) applies"), "{out}");
}

#[tokio::test]
async fn a_file_that_does_not_load_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tern.toml");
    std::fs::write(
        &file,
        config_text(&["127.0.0.1:0"], 10_000, OLD_TOKEN, "1s"),
    )
    .unwrap();
    let tern = BrokerProcess::spawn_config(&file);
    let admin = admin_addr(&tern);
    // Valid TOML, but a key Tern does not know.
    let bad = config_text(&["127.0.0.1:0"], 10_000, OLD_TOKEN, "1s")
        .replace("[limits]\n", "[limits]\nbogus = 1\n");
    std::fs::write(&file, bad).unwrap();
    tern.sighup();
    assert!(
        tern.wait_log_count("nothing reloaded", 1, Duration::from_secs(5)),
        "{}",
        tern.log_text()
    );
    let (_, max) = connect_v5(tern.addr, "still").await;
    assert_eq!(max, Some(10_000));
    assert_eq!(get(admin, "/api/v1/status", OLD_TOKEN).await.0, 200);
    // The check says why, through the broker, too.
    let (code, out) = check_against_running(&file, admin);
    assert_eq!(code, Some(1), "{out}");

    // Review finding: the check endpoint opened the files a posted config
    // names, as the broker's user, and its errors quoted them. It compares
    // keys only now.
    let probe = config_text(&["127.0.0.1:0"], 10_000, OLD_TOKEN, "1s").replace(
        "[auth]\n",
        "[auth]\nacl_file = \"/proc/self/environ\"\npassword_file = \"/etc/shadow\"\n",
    );
    let (status, body) = tern::admin::http::request_with_body(
        admin,
        None,
        "POST",
        "/api/v1/config/check",
        Some(OLD_TOKEN),
        probe.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .expect("check");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("auth.acl_file"), "{body}");
    assert!(!body.contains("PATH=") && !body.contains("root:"), "{body}");
    // Without the token, no body is read and nothing is answered but 401.
    let (status, _) = tern::admin::http::request_with_body(
        admin,
        None,
        "POST",
        "/api/v1/config/check",
        None,
        probe.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .expect("check");
    assert_eq!(status, 401);
}

/// `$SYS` turned off by a reload: its retained topics go, not stay frozen.
#[tokio::test]
async fn sys_turned_off_by_a_reload_leaves_no_frozen_topics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tern.toml");
    let text = config_text(&["127.0.0.1:0"], 10_000, OLD_TOKEN, "1s");
    std::fs::write(&file, &text).unwrap();
    let tern = BrokerProcess::spawn_config(&file);
    let uptime = |id: &'static str| async move {
        let (mut c, _) = connect_v5(tern.addr, id).await;
        c.send(&subscribe_packet(1, "$SYS/broker/uptime", QoS::AtMostOnce))
            .await;
        assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
        c.recv_within(Duration::from_secs(1)).await
    };
    // The first $SYS goes out at start.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(Packet::Publish(p))) = uptime("before").await {
            assert!(p.retain);
            break;
        }
        assert!(Instant::now() < deadline, "no retained $SYS/broker/uptime");
    }
    std::fs::write(&file, text + "\n[mqtt]\nsys_interval = \"0s\"\n").unwrap();
    tern.sighup();
    assert!(
        tern.wait_log_count("mqtt.sys_interval changed", 1, Duration::from_secs(5)),
        "{}",
        tern.log_text()
    );
    // Cleared: a new subscriber gets nothing retained.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match uptime("after").await {
            Ok(None) | Err(()) => break,
            Ok(Some(p)) => {
                assert!(Instant::now() < deadline, "still retained: {p:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
