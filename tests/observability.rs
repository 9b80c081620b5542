//! What an operator sees without a shell: `GET /metrics` parsed by the
//! reference Prometheus parser (the `prometheus_client` Python package,
//! `tests/prometheus_parse.py`; missing, the test fails) with counters equal
//! to the traffic the test sent, and `GET /api/v1/status`.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tern::protocol::{Packet, ProtocolVersion, PubResponse, QoS};

const V5: ProtocolVersion = ProtocolVersion::V5;
const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prometheus_parse.py");

async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    tern::admin::http::request(admin, "GET", path, None, Duration::from_secs(5))
        .await
        .expect("admin answers")
}

/// `/metrics`, through the reference parser: sample -> value.
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    require("python3");
    let out = run_bounded_with_stdin(
        {
            let mut c = Command::new("python3");
            c.arg(PARSER);
            c
        },
        text.as_bytes(),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics (is the prometheus-client Python package installed?): {}\n{text}",
        out.stderr
    );
    serde_json::from_str(&out.stdout).expect("parser output")
}

fn at(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:?}"))
}

/// Scrape until `cond` holds (the router's snapshot is taken every second).
async fn scrape_until(
    admin: SocketAddr,
    cond: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(admin).await;
        if cond(&m) {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "never: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_traffic() {
    let (broker, addr, admin) = start_with_admin_and_jobs().await;

    let (mut sub, _) = raw_connected(addr, V5, "watcher", true).await;
    sub.subscribe(1, "data/#", QoS::AtLeastOnce).await;
    let (mut p, _) = raw_connected(addr, V5, "producer", true).await;
    for i in 0..7u16 {
        p.send(&publish_packet("data/q1", QoS::AtLeastOnce, i + 1, b"x"))
            .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    for _ in 0..3 {
        p.send(&publish_packet("data/q0", QoS::AtMostOnce, 0, b"y"))
            .await;
    }
    for i in 0..4u16 {
        p.send(&publish_packet("jobs/a", QoS::AtLeastOnce, 100 + i, b"job"))
            .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    let mut got = 0;
    while got < 10 {
        match sub.recv().await {
            Some(Packet::Publish(m)) => {
                got += 1;
                if let Some(id) = m.packet_id {
                    sub.send(&Packet::PubAck(PubResponse::success(id))).await;
                }
            }
            other => panic!("subscriber: {other:?}"),
        }
    }

    let m = scrape_until(admin, |m| {
        m.get("tern_queue_depth{queue=jobs}") == Some(&4.0)
            && m.get("tern_sessions_connected{}") == Some(&2.0)
    })
    .await;
    assert_eq!(at(&m, "tern_messages_received_total{qos=1}"), 11.0);
    assert_eq!(at(&m, "tern_messages_received_total{qos=0}"), 3.0);
    assert_eq!(at(&m, "tern_messages_received_total{qos=2}"), 0.0);
    assert_eq!(at(&m, "tern_messages_sent_total{qos=1}"), 7.0);
    assert_eq!(at(&m, "tern_messages_sent_total{qos=0}"), 3.0);
    assert_eq!(at(&m, "tern_queue_enqueued_total{queue=jobs}"), 4.0);
    assert_eq!(at(&m, "tern_connections{}"), 2.0);
    assert_eq!(at(&m, "tern_connections_accepted_total{}"), 2.0);
    assert_eq!(at(&m, "tern_subscriptions{}"), 1.0);
    assert!(at(&m, "tern_received_bytes_total{}") > 15.0 * 5.0);
    assert!(at(&m, "tern_sent_bytes_total{}") > 10.0 * 5.0);
    assert!(at(&m, "process_resident_memory_bytes{}") > 1e6);
    assert!(
        m.contains_key("tern_store_fsync_seconds_bucket{le=+Inf}"),
        "{m:?}"
    );
    assert!(m.contains_key("process_cpu_seconds_total{}"), "{m:?}");

    let (status, body) = get(admin, "/api/v1/status").await;
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(s["clients_connected"], 2, "{s}");
    assert_eq!(s["messages_received"], 14, "{s}");
    assert_eq!(s["subscriptions"], 1, "{s}");
    assert_eq!(s["queues"][0]["name"], "jobs", "{s}");
    assert_eq!(s["queues"][0]["depth"], 4, "{s}");
    drop((sub, p));
    broker.shutdown().await;
}

/// `$SYS`: retained, every `sys_interval`, Mosquitto's names; the values
/// follow the traffic (and a wildcard `#` does not match `$SYS` topics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_retained_and_follow_the_traffic() {
    let mut c = test_config();
    c.mqtt.sys_interval = Duration::from_millis(300);
    let (broker, addr) = start(c).await;
    let (mut all, _) = raw_connected(addr, V5, "everything", true).await;
    all.subscribe(1, "#", QoS::AtMostOnce).await;
    let (mut p, _) = raw_connected(addr, V5, "producer", true).await;
    for _ in 0..5 {
        p.send(&publish_packet("t", QoS::AtMostOnce, 0, b"x")).await;
    }
    // What `#` gets: the 5 messages, never a $SYS one [MQTT-4.7.2-1].
    for _ in 0..5 {
        match all.recv().await {
            Some(Packet::Publish(m)) => assert_eq!(m.topic, "t"),
            other => panic!("{other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A late subscriber gets the tree at once, retained.
    let (mut sys, _) = raw_connected(addr, V5, "sys-reader", true).await;
    sys.subscribe(1, "$SYS/broker/#", QoS::AtMostOnce).await;
    // First the retained tree as it was last published (retain set), then
    // every interval anew.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut first = true;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sys.recv().await {
            Some(Packet::Publish(m)) => {
                if first {
                    assert!(m.retain, "{m:?}");
                    first = false;
                }
                let v = String::from_utf8_lossy(&m.payload).into_owned();
                seen.insert(m.topic.clone(), v);
            }
            other => panic!("{other:?}"),
        }
        let v = |t: &str| seen.get(t).cloned().unwrap_or_default();
        if v("$SYS/broker/clients/connected") == "3"
            && v("$SYS/broker/clients/total") == "3"
            && v("$SYS/broker/publish/messages/received") == "5"
            && seen.contains_key("$SYS/broker/load/messages/received/15min")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{seen:?}");
    }
    let v = |t: &str| seen.get(t).cloned().unwrap_or_default();
    assert!(
        v("$SYS/broker/version").starts_with("tern version "),
        "{seen:?}"
    );
    assert!(v("$SYS/broker/uptime").ends_with(" seconds"), "{seen:?}");
    // More traffic: the next interval says so.
    for _ in 0..4 {
        p.send(&publish_packet("t", QoS::AtMostOnce, 0, b"x")).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match sys.recv_within(Duration::from_secs(2)).await {
            Ok(Some(Packet::Publish(m))) if m.topic == "$SYS/broker/publish/messages/received" => {
                if m.payload[..] == b"9"[..] {
                    break;
                }
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "received never became 9"
        );
    }
    drop((all, p, sys));
    broker.shutdown().await;
}

/// `GET /api/v1/clients` pages through the sessions in id order with their
/// state; a kick closes a client's connection (v5: DISCONNECT 0x98) and
/// keeps its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_listed_page_by_page_and_one_is_kicked() {
    let mut c = test_config();
    c.admin.bind = Some("127.0.0.1:0".parse().expect("addr"));
    let (broker, addr) = start(c).await;
    let admin = broker.admin_addr().expect("admin on");
    let (mut a, _) = raw_connected(addr, V5, "client-a", true).await;
    a.subscribe(1, "x/#", QoS::AtLeastOnce).await;
    let (_b, _) = raw_connected(addr, ProtocolVersion::V311, "client-b", false).await;
    let (_c, _) = raw_connected(addr, V5, "client-c", true).await;

    let page = |after: Option<&str>| {
        let q = after.map_or(String::new(), |a| format!("&after={a}"));
        format!("/api/v1/clients?limit=2{q}")
    };
    let (status, body) = get(admin, &page(None)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let ids: Vec<&str> = v["clients"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["client-a", "client-b"], "{v}");
    assert_eq!(v["clients"][0]["subscriptions"], 1, "{v}");
    assert_eq!(v["clients"][0]["protocol"], "5", "{v}");
    assert_eq!(v["clients"][0]["keep_alive"], 60, "{v}");
    assert!(v["clients"][0]["address"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(v["clients"][1]["protocol"], "3.1.1", "{v}");
    assert_eq!(v["next_after"], "client-b", "{v}");
    let (_, body) = get(admin, &page(Some("client-b"))).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["clients"][0]["id"], "client-c", "{v}");
    assert_eq!(v["clients"].as_array().map(Vec::len), Some(1), "{v}");

    let (status, body) = tern::admin::http::request(
        admin,
        "POST",
        "/api/v1/clients/client-a/kick",
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("kick");
    assert_eq!(status, 200, "{body}");
    match a.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x98),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    let (status, _) = tern::admin::http::request(
        admin,
        "POST",
        "/api/v1/clients/nobody/kick",
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("kick");
    assert_eq!(status, 404);
    broker.shutdown().await;
}

/// A retained PUBLISH at QoS 1, acknowledged (so the router has it).
async fn retain(p: &mut RawClient, id: u16, topic: &str, payload: &[u8], expiry: Option<u32>) {
    let mut packet = publish_packet(topic, QoS::AtLeastOnce, id, payload);
    if let Packet::Publish(m) = &mut packet {
        m.retain = true;
        m.properties.message_expiry_interval = expiry;
    }
    p.send(&packet).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))), "{topic}");
}

/// The retained topics a fresh subscriber to `filter` is sent.
async fn retained_for_new_subscriber(addr: SocketAddr, filter: &str) -> Vec<String> {
    let (mut s, _) = raw_connected(addr, V5, "late-subscriber", true).await;
    s.subscribe(1, filter, QoS::AtLeastOnce).await;
    let mut topics = Vec::new();
    while let Ok(Some(p)) = s.recv_within(Duration::from_millis(500)).await {
        match p {
            Packet::Publish(m) => {
                assert!(m.retain, "{m:?}");
                if let Some(id) = m.packet_id {
                    s.send(&Packet::PubAck(PubResponse::success(id))).await;
                }
                topics.push(m.topic.clone());
            }
            other => panic!("{other:?}"),
        }
    }
    topics.sort();
    topics
}

/// `GET /api/v1/retained` pages through the retained messages in topic order
/// (previews as text or base64, a filter, `$SYS` only when asked for), the
/// token guards it, and `POST /api/v1/retained/clear` removes one for good:
/// a new subscriber does not get it, before or after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_listed_page_by_page_and_one_is_cleared() {
    use tern::admin::cli::{run_retained, Endpoint, RetainedOp};
    const TOKEN: &str = "a-token-of-16-chars";
    let mut c = test_config();
    with_store(&mut c);
    c.admin.bind = Some("127.0.0.1:0".parse().expect("addr"));
    c.admin.token = Some(TOKEN.into());
    c.mqtt.sys_interval = Duration::from_millis(200);
    let (broker, addr) = start(c.clone()).await;
    let admin = broker.admin_addr().expect("admin on");
    let call = |method: &'static str, path: String| async move {
        let (status, body) =
            tern::admin::http::request(admin, method, &path, Some(TOKEN), Duration::from_secs(5))
                .await
                .expect("admin answers");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (status, json)
    };
    let topics = |v: &serde_json::Value| -> Vec<String> {
        v["retained"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|e| e["topic"].as_str().expect("topic").to_string())
            .collect()
    };

    let (mut p, _) = raw_connected(addr, V5, "producer", true).await;
    let long = "0123456789".repeat(10);
    let binary = [0xffu8, 0x00, 0x10, 0x80, 0xfe];
    retain(&mut p, 1, "sensors/b/temp", b"19.0", None).await;
    retain(&mut p, 2, "sensors/a/temp", b"21.5", None).await;
    retain(&mut p, 3, "sensors/b/hum", b"40", Some(3600)).await;
    retain(&mut p, 4, "notes/long", long.as_bytes(), None).await;
    retain(&mut p, 5, "notes/binary", &binary, None).await;
    retain(&mut p, 6, "sensors", b"root", None).await;

    // Without the token (or with a wrong one): 401 on both routes.
    for (method, path) in [
        ("GET", "/api/v1/retained"),
        ("POST", "/api/v1/retained/clear?topic=sensors"),
    ] {
        for token in [None, Some("not-the-token-at-all")] {
            let (status, _) =
                tern::admin::http::request(admin, method, path, token, Duration::from_secs(5))
                    .await
                    .expect("admin answers");
            assert_eq!(status, 401, "{method} {path} with {token:?}");
        }
    }

    // Two full pages and an empty last one, in level order ("sensors"
    // before what is below it); `$SYS` left out.
    let (status, v) = call("GET", "/api/v1/retained?limit=3".into()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(topics(&v), ["notes/binary", "notes/long", "sensors"], "{v}");
    assert_eq!(v["next_after"], "sensors", "{v}");
    let binary_entry = &v["retained"][0];
    assert_eq!(binary_entry["preview_encoding"], "base64", "{v}");
    assert_eq!(binary_entry["preview"], "/wAQgP4=", "{v}");
    assert_eq!(binary_entry["payload_bytes"], 5, "{v}");
    let long_entry = &v["retained"][1];
    assert_eq!(long_entry["preview_encoding"], "utf8", "{v}");
    assert_eq!(long_entry["preview"], &long[..64], "{v}");
    assert_eq!(long_entry["payload_bytes"], 100, "{v}");
    assert_eq!(long_entry["qos"], 1, "{v}");
    assert!(long_entry["expires_in"].is_null(), "{v}");
    let (_, v) = call("GET", "/api/v1/retained?limit=3&after=sensors".into()).await;
    assert_eq!(
        topics(&v),
        ["sensors/a/temp", "sensors/b/hum", "sensors/b/temp"],
        "{v}"
    );
    let hum = v["retained"][1]["expires_in"].as_u64().expect("expiry");
    assert!((3590..=3600).contains(&hum), "{v}");
    let (_, v) = call(
        "GET",
        "/api/v1/retained?limit=3&after=sensors/b/temp".into(),
    )
    .await;
    assert!(topics(&v).is_empty(), "{v}");
    assert!(v["next_after"].is_null(), "{v}");

    // A filter (its `+` percent-encoded), and an invalid one.
    let (_, v) = call("GET", "/api/v1/retained?filter=sensors/%2B/temp".into()).await;
    assert_eq!(topics(&v), ["sensors/a/temp", "sensors/b/temp"], "{v}");
    let (status, v) = call("GET", "/api/v1/retained?filter=sensors/%23/temp".into()).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid topic filter")),
        "{v}"
    );

    // `$SYS` (published every 200 ms) only with sys=true or a filter naming it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, v) = call("GET", "/api/v1/retained?sys=true&limit=1000".into()).await;
        if topics(&v).iter().any(|t| t == "$SYS/broker/uptime") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no $SYS: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = call("GET", "/api/v1/retained?limit=1000".into()).await;
    assert_eq!(topics(&v).len(), 6, "{v}");
    let (_, v) = call("GET", "/api/v1/retained?filter=%24SYS/broker/uptime".into()).await;
    assert_eq!(topics(&v), ["$SYS/broker/uptime"], "{v}");

    // The CLI's table, then clearing through the CLI's call.
    let ep = Endpoint {
        tls: None,
        addr: admin,
        token: Some(TOKEN.into()),
    };
    let list = RetainedOp::List {
        after: None,
        limit: 2,
        filter: Some("notes/#".into()),
        sys: false,
    };
    let table = run_retained(&ep, list).await.expect("list");
    assert!(
        table.contains("base64:/wAQgP4=")
            && table.contains(&format!("{:?}", &long[..64]))
            && table.contains("(more: --after notes/long)"),
        "{table}"
    );
    run_retained(&ep, RetainedOp::Clear("sensors/b/temp".into()))
        .await
        .expect("cleared");
    let again = run_retained(&ep, RetainedOp::Clear("sensors/b/temp".into())).await;
    assert!(
        again.as_ref().is_err_and(|e| e.contains("HTTP 404")),
        "{again:?}"
    );
    let (status, _) = call("POST", "/api/v1/retained/clear?topic=sensors/%2B".into()).await;
    assert_eq!(status, 400);

    let want = ["sensors", "sensors/a/temp", "sensors/b/hum"];
    assert_eq!(retained_for_new_subscriber(addr, "sensors/#").await, want);
    drop(p);
    broker.shutdown().await;

    // The same data directory: the clear was stored.
    let (broker, addr) = start(c).await;
    assert_eq!(retained_for_new_subscriber(addr, "sensors/#").await, want);
    let admin = broker.admin_addr().expect("admin on");
    let (status, body) = tern::admin::http::request(
        admin,
        "GET",
        "/api/v1/retained?filter=sensors/%23",
        Some(TOKEN),
        Duration::from_secs(5),
    )
    .await
    .expect("admin answers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(topics(&v), want, "{v}");
    broker.shutdown().await;
}
