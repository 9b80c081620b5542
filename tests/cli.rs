//! The `tern` command line: `check-config` on a good and a bad file, `-c FILE`,
//! `TERN_<SECTION>__<KEY>` environment overrides (a lowered max packet size is
//! announced in the v5 CONNACK and a larger packet is answered with DISCONNECT 0x95
//! for v5 (MQTT 5.0 section 3.2.2.3.6 / 4.13), a plain close for 3.1.1), repeated
//! `--listen`, and refusing to start with an unknown key or a bad override.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;
use tern::protocol::{Packet, ProtocolVersion, QoS, ReasonCode};

const BIN: &str = env!("CARGO_BIN_EXE_tern");
const LIMIT: Duration = Duration::from_secs(20);

fn tern(args: &[&str]) -> RunOutput {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_bounded(cmd, LIMIT)
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn check_config_accepts_the_example_file() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tern.toml");
    let out = tern(&["check-config", file]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("OK"), "{out:?}");
    assert!(out.stderr.trim().is_empty(), "{out:?}");
}

#[test]
fn check_config_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "bad.toml",
        r#"
[[listeners]]
bind = "not-an-address"
colour = "blue"

[limits]
max_packet_size = "big"
max_conections = 5
connect_timeout = "10 parsecs"
receive_maximum = -1

[mqtt]
queue_qos0_offline = "yes"

[logging]
level = "info"
"#,
    );
    let out = tern(&["check-config", &file]);
    assert!(!out.status.success(), "bad file accepted: {out:?}");
    for key in [
        "listeners[0].bind",
        "listeners[0].colour",
        "limits.max_packet_size",
        "limits.max_conections",
        "limits.connect_timeout",
        "limits.receive_maximum",
        "mqtt.queue_qos0_offline",
        "logging",
    ] {
        assert!(
            out.stderr.contains(key),
            "{key} not named in stderr:\n{}",
            out.stderr
        );
    }
    // One line per error, each prefixed with the file name.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 8, "{}", out.stderr);
    assert!(lines.iter().all(|l| l.starts_with(&file)), "{}", out.stderr);
}

#[test]
fn check_config_reports_range_errors_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "range.toml",
        "[limits]\nmax_packet_size = 10\nreceive_maximum = 0\n",
    );
    let out = tern(&["check-config", &file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("limits.max_packet_size"), "{out:?}");
    assert!(out.stderr.contains("limits.receive_maximum"), "{out:?}");

    let missing = dir.path().join("nope.toml");
    let out = tern(&["check-config", missing.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("nope.toml"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_listener_works() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "ok.toml",
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[limits]\nmax_keepalive = 100\n\n[storage]\nin_memory = true\n\n[auth]\nallow_anonymous = true\n",
    );
    let broker = BrokerProcess::spawn_config(std::path::Path::new(&file));
    // The file's limits apply: a v5 client asking for keep alive 200 is told 100
    // (Server Keep Alive, MQTT 5.0 3.2.2.3.14).
    let mut c = RawClient::connect(broker.addr, ProtocolVersion::V5).await;
    let mut connect = connect_packet(ProtocolVersion::V5, "cfg", true);
    if let Packet::Connect(c) = &mut connect {
        c.keep_alive = 200;
    }
    c.send(&connect).await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
            assert_eq!(ack.properties.server_keep_alive, Some(100), "{ack:?}");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn oversized_publish_closes(addr: std::net::SocketAddr, version: ProtocolVersion) {
    let mut c = RawClient::connect(addr, version).await;
    let mut connect = connect_packet(version, &format!("big-{version:?}"), true);
    if let Packet::Connect(c) = &mut connect {
        c.keep_alive = 0;
    }
    c.send(&connect).await;
    let ack = match c.recv().await {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    if version.is_v5() {
        // The lowered limit is announced; the client must respect it [MQTT-3.2.2-15].
        assert_eq!(ack.properties.maximum_packet_size, Some(100), "{ack:?}");
    }
    // A small publish is fine...
    c.send(&publish_packet("ok", QoS::AtLeastOnce, 1, b"small"))
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id.get(), 1),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // ...a 200-byte one is too large.
    c.send(&publish_packet("big", QoS::AtLeastOnce, 2, &[b'x'; 200]))
        .await;
    let seen = c.until_closed().await;
    if version.is_v5() {
        // DISCONNECT 0x95 Packet too large, then close (MQTT 5.0 4.13).
        match seen.as_slice() {
            [Packet::Disconnect(d)] => {
                assert_eq!(d.reason_code, ReasonCode::PACKET_TOO_LARGE, "{d:?}")
            }
            other => panic!("expected DISCONNECT 0x95 then EOF, got {other:?}"),
        }
    } else {
        assert!(
            seen.is_empty(),
            "3.1.1: expected a plain close, got {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_override_lowers_max_packet_size() {
    let broker = BrokerProcess::spawn_with_env(&[], &[("TERN_LIMITS__MAX_PACKET_SIZE", "100")]);
    oversized_publish_closes(broker.addr, ProtocolVersion::V5).await;
    oversized_publish_closes(broker.addr, ProtocolVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_listen_opens_every_listener() {
    // spawn() already passes one `--listen 127.0.0.1:0`.
    let broker = BrokerProcess::spawn(&["--listen", "127.0.0.1:0"]);
    let addrs = broker.listener_addrs(2);
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_ne!(addrs[0], addrs[1]);
    for (i, addr) in addrs.into_iter().enumerate() {
        raw_connected(addr, ProtocolVersion::V311, &format!("l{i}"), true).await;
    }
}

#[test]
fn unknown_key_in_config_file_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "unknown.toml",
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[limits]\nmax_frobnication = 3\n",
    );
    let out = tern(&["-c", &file]);
    assert!(!out.status.success(), "tern started anyway: {out:?}");
    assert!(
        out.stderr.contains("limits.max_frobnication"),
        "key not named: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("listening on"), "{}", out.stderr);
}

#[test]
fn bad_env_override_is_fatal() {
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("TERN_LIMITS__MAX_PACKET_SIZE", "10");
    let out = run_bounded(cmd, LIMIT);
    assert!(!out.status.success(), "tern started anyway: {out:?}");
    assert!(
        out.stderr.contains("limits.max_packet_size"),
        "{}",
        out.stderr
    );
}

#[test]
fn storage_settings_are_checked_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "storage.toml",
        "[storage]\ndurability = \"sometimes\"\nsegment_size = 1000\n",
    );
    let out = tern(&["check-config", &file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("storage.durability"), "{}", out.stderr);
    let file = write_file(&dir, "small.toml", "[storage]\nsegment_size = 1000\n");
    let out = tern(&["check-config", &file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("storage.segment_size"),
        "{}",
        out.stderr
    );
}

#[test]
fn unusable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let file = write_file(&dir, "not-a-dir", "x");
    let out = tern(&["--listen", "127.0.0.1:0", "--data-dir", &file]);
    assert!(!out.status.success(), "tern started anyway: {out:?}");
    assert!(
        out.stderr.contains("cannot use data directory"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_config_loads_the_files_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let acl = write_file(&dir, "acl", "user a\ntopic read a/#/b\n");
    let pw = write_file(&dir, "passwd", "alice:$7$101$notbase64$\n");
    let missing = dir.path().join("none.pem");
    let file = write_file(
        &dir,
        "files.toml",
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:8883\"\ntls = {{ cert = \"{m}\", key = \"{m}\" }}\n\
             [auth]\npassword_file = \"{pw}\"\nacl_file = \"{acl}\"\n\
             [storage]\nin_memory = true\n",
            m = missing.display()
        ),
    );
    let out = tern(&["check-config", &file]);
    assert!(!out.status.success(), "{out:?}");
    for needle in [
        "listeners[0].tls",
        "none.pem",
        "auth.password_file",
        "passwd: line 1",
        "auth.acl_file",
        "acl: line 2",
    ] {
        assert!(out.stderr.contains(needle), "{needle:?} in {}", out.stderr);
    }
    // And a start with the same file fails with the first of them, named.
    let out = tern(&["-c", &file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("passwd: line 1"), "{}", out.stderr);
}

#[test]
fn tls_settings_that_cannot_work_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "tls.toml",
        "[[listeners]]\nbind = \"127.0.0.1:8883\"\n\
         tls = { cert = \"c.pem\", key = \"k.pem\", require_client_cert = true }\n\
         [[listeners]]\nbind = \"127.0.0.1:8884\"\n\
         tls = { cert = \"c.pem\", key = \"k.pem\", identity_as_username = true, colour = 1 }\n",
    );
    let out = tern(&["check-config", &file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("listeners[1].tls"), "{}", out.stderr);
    assert!(out.stderr.contains("colour"), "{}", out.stderr);
    let file = write_file(
        &dir,
        "tls2.toml",
        "[[listeners]]\nbind = \"127.0.0.1:8883\"\n\
         tls = { cert = \"c.pem\", key = \"k.pem\", require_client_cert = true }\n\
         [[listeners]]\nbind = \"127.0.0.1:8884\"\n\
         tls = { cert = \"c.pem\", key = \"k.pem\", client_ca = \"ca.pem\", identity_as_username = true }\n",
    );
    let out = tern(&["check-config", &file]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("listeners[0].tls.require_client_cert"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("listeners[1].tls.identity_as_username"),
        "{}",
        out.stderr
    );
}

/// rustls is built with the ring provider only: aws-lc-rs (a large C build) must
/// never enter the build, whoever depends on rustls.
#[test]
fn aws_lc_never_enters_the_build() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    for forbidden in ["name = \"aws-lc-rs\"", "name = \"aws-lc-sys\""] {
        assert!(!lock.contains(forbidden), "Cargo.lock has {forbidden}");
    }
    assert!(lock.contains("name = \"ring\""));
}

/// Mosquitto 2's rule: a configuration that declares listeners refuses anonymous
/// clients unless `allow_anonymous = true`, and says so at start; without
/// declared listeners (here `--listen` on loopback) they are allowed.
#[tokio::test]
async fn declared_listeners_refuse_anonymous_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "strict.toml",
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[storage]\nin_memory = true\n",
    );
    let broker = BrokerProcess::spawn_config(std::path::Path::new(&file));
    assert!(
        broker.log_text().contains("no client can log in"),
        "{}",
        broker.log_text()
    );
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut c = RawClient::connect(broker.addr, v).await;
        c.send(&connect_packet(v, "anon", true)).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
            other => panic!("{other:?}"),
        }
    }
    // No declared listeners: local-only mode lets anonymous clients in.
    let open = BrokerProcess::spawn(&[]);
    let mut c = RawClient::connect(open.addr, ProtocolVersion::V5).await;
    c.send(&connect_packet(ProtocolVersion::V5, "anon", true))
        .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
}

/// `[log] format = "json"`: every line on stderr is one JSON object with the
/// time, the level and the event's fields, and a connection's events carry
/// its span (peer, client). A bad format is a config error with its key.
#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "json.toml",
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n[storage]\nin_memory = true\n[auth]\nallow_anonymous = true\n[log]\nformat = \"json\"\n",
    );
    let mut child = Command::new(BIN)
        .args(["-c", &file])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tern");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut addr = None;
    let mut seen = Vec::new();
    // Up to its listening line, then the line of one client's connection.
    while let Some(Ok(line)) = lines.next() {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{v}");
        assert!(v["level"].is_string(), "{v}");
        let msg = v["fields"]["message"].as_str().unwrap_or("").to_string();
        if let Some(a) = msg.strip_prefix("mqtt listening on ") {
            addr = Some(a.parse::<std::net::SocketAddr>().expect("address"));
            let s = std::net::TcpStream::connect(addr.expect("set")).expect("connect");
            use std::io::Write;
            let mut w = s.try_clone().expect("clone");
            // A 3.1.1 CONNECT of client "j".
            w.write_all(&hex("10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 6a"))
                .expect("write");
            seen.push((msg, v));
            std::mem::forget(s);
            continue;
        }
        if msg == "connected" {
            // The connection's identity is in the event's own fields (its
            // span is on at debug level only).
            assert_eq!(v["fields"]["client"], "j", "{v}");
            assert!(v["fields"]["peer"].is_string(), "{v}");
            assert!(v["fields"]["id"].is_number(), "{v}");
            seen.push((msg, v));
            break;
        }
        seen.push((msg, v));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(addr.is_some(), "no listening line: {seen:?}");
    assert!(seen.iter().any(|(m, _)| m == "connected"), "{seen:?}");

    let bad = write_file(&dir, "bad.toml", "[log]\nformat = \"xml\"\n");
    let out = tern(&["check-config", &bad]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("log.format"), "{}", out.stderr);
}

/// The broker's environment as the kernel holds it (after its own exec).
/// glibc 2.36 parses `GLIBC_TUNABLES` in place, writing a NUL over each `:`
/// between tunables: joined back here.
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    String::from_utf8_lossy(&raw)
        .replace("\0glibc.", ":glibc.")
        .split('\0')
        .map(str::to_string)
        .collect()
}

/// Serving, the broker runs itself again with glibc's per-thread cache off
/// (`memory::reexec_without_tcache`: cached blocks pin pages that
/// `malloc_trim` cannot give back after connections leave), keeping the
/// tunables already set and an operator's own `tcache_count`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn serving_runs_without_glibcs_thread_cache_unless_told_otherwise() {
    let tunables = |b: &BrokerProcess| {
        environ(b.child.id())
            .into_iter()
            .filter(|v| v.starts_with("GLIBC_TUNABLES="))
            .collect::<Vec<_>>()
    };
    let broker = BrokerProcess::spawn(&[]);
    assert_eq!(
        tunables(&broker),
        ["GLIBC_TUNABLES=glibc.malloc.tcache_count=0"]
    );
    // Still the one process the caller started (exec keeps the pid), serving.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = RawClient::connect(broker.addr, ProtocolVersion::V311).await;
        c.send(&connect_packet(ProtocolVersion::V311, "tc", true))
            .await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    });
    drop(broker);

    let broker = BrokerProcess::spawn_with_env(&[], &[("GLIBC_TUNABLES", "glibc.malloc.check=0")]);
    assert_eq!(
        tunables(&broker),
        ["GLIBC_TUNABLES=glibc.malloc.check=0:glibc.malloc.tcache_count=0"]
    );
    drop(broker);

    let own = "glibc.malloc.tcache_count=7";
    let broker = BrokerProcess::spawn_with_env(&[], &[("GLIBC_TUNABLES", own)]);
    assert_eq!(tunables(&broker), [format!("GLIBC_TUNABLES={own}")]);
}
