//! TLS listeners: rumqttc and the Mosquitto clients over TLS, mutual TLS accepted
//! and refused (no certificate, another CA, expired), the certificate's CN as the
//! username feeding the ACL, a mix of plain and TLS listeners at once, clear errors
//! for bad certificate files, and SIGHUP swapping certificates without dropping
//! connections. Certificates are throw-away ones made by rcgen (`common::pki`).

mod common;

use common::pki::{client_config_trusting, Ca, Pki};
use common::*;
use std::process::Command;
use std::time::Duration;
use tern::config::{Config, ListenerConfig};
use tern::metrics::Metrics;
use tern::protocol::{Packet, ProtocolVersion, QoS, ReasonCode};

/// Listeners: [plain, TLS (tls)] on 127.0.0.1:0.
fn config_with_tls(tls: tern::config::TlsConfig) -> Config {
    let mut c = test_config();
    let mut l = ListenerConfig::plain("127.0.0.1:0".parse().unwrap());
    l.tls = Some(tls);
    c.listeners.push(l);
    c
}

#[tokio::test]
async fn rumqttc_over_tls_and_plain_listener_side_by_side() {
    let pki = Pki::new();
    let (broker, plain) = start(config_with_tls(pki.tls_config(false, false, false))).await;
    let tls_addr = broker.local_addrs()[1];

    let mut opts = rumqttc::MqttOptions::new("tls-sub", "localhost", tls_addr.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_config(None)),
    ));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe("t/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    // Wait for the SUBACK before publishing from the plain listener.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut subscribed = false;
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) if !subscribed => {
                    subscribed = true;
                    let (mut p, _) =
                        raw_connected(plain, ProtocolVersion::V311, "plain-pub", true).await;
                    p.send(&publish_packet("t/1", QoS::AtLeastOnce, 1, b"over tls"))
                        .await;
                    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(m))) => return m,
                Ok(_) => {}
                Err(e) => panic!("rumqttc over TLS failed: {e}"),
            }
        }
    })
    .await
    .expect("message over TLS within 10 s");
    assert_eq!(got.topic, "t/1");
    assert_eq!(&got.payload[..], b"over tls");
    broker.shutdown().await;
}

/// Connect over TLS with `client` and send CONNECT; Ok(CONNACK reason) or Err(why
/// there was none).
async fn try_login(
    addr: std::net::SocketAddr,
    client: std::sync::Arc<rustls::ClientConfig>,
    version: ProtocolVersion,
    username: Option<&str>,
) -> Result<ReasonCode, String> {
    let tls = tls_connect(addr, client)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut c = RawIo::new(tls, version);
    c.send(&connect_with_login(version, "mtls", username, None))
        .await;
    match c.recv_within(WAIT).await {
        Ok(Some(Packet::ConnAck(a))) => Ok(a.reason_code),
        Ok(Some(p)) => Err(format!("unexpected {p:?}")),
        Ok(None) => Err("closed".into()),
        Err(()) => Err("silence".into()),
    }
}

#[tokio::test]
async fn mutual_tls_accepts_good_and_refuses_missing_foreign_and_expired_certs() {
    let pki = Pki::new();
    let good = pki.write_pair("good", pki.ca.client("device-1"));
    let expired = pki.write_pair("expired", pki.ca.expired_client("device-1"));
    let other_ca = Ca::new("Someone else's CA");
    let foreign = pki.write_pair("foreign", other_ca.client("device-1"));
    let (broker, _) = start(config_with_tls(pki.tls_config(true, true, false))).await;
    let addr = broker.local_addrs()[1];

    let ok = try_login(
        addr,
        pki.client_config(Some((&good.0, &good.1))),
        ProtocolVersion::V5,
        None,
    )
    .await;
    assert_eq!(ok, Ok(ReasonCode::SUCCESS));

    for (what, cfg) in [
        ("no certificate", pki.client_config(None)),
        ("expired", pki.client_config(Some((&expired.0, &expired.1)))),
        (
            "another CA",
            pki.client_config(Some((&foreign.0, &foreign.1))),
        ),
    ] {
        let r = try_login(addr, cfg, ProtocolVersion::V5, None).await;
        assert!(r.is_err(), "{what}: must not get a CONNACK, got {r:?}");
    }
    let metrics = broker.metrics();
    assert!(
        wait_until(Duration::from_secs(5), || Metrics::get(
            &metrics.tls_handshake_failed
        ) >= 3)
        .await,
        "3 handshakes refused, counted: {}",
        Metrics::get(&metrics.tls_handshake_failed)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn certificate_common_name_is_the_username_for_the_acl() {
    let pki = Pki::new();
    let dev1 = pki.write_pair("dev1", pki.ca.client("device-1"));
    let acl = pki.path("acl");
    std::fs::write(
        &acl,
        "user device-1\ntopic readwrite dev/device-1/#\npattern read cmd/%u/#\n",
    )
    .unwrap();
    let mut config = config_with_tls(pki.tls_config(true, true, true));
    config.auth.acl_file = Some(acl);
    let (broker, _) = start(config).await;
    let addr = broker.local_addrs()[1];

    let tls = tls_connect(addr, pki.client_config(Some((&dev1.0, &dev1.1))))
        .await
        .unwrap();
    let mut c = RawIo::new(tls, ProtocolVersion::V5);
    // The CONNECT's own username is not what counts: the certificate's CN is.
    c.send(&connect_with_login(
        ProtocolVersion::V5,
        "d1",
        Some("someone-else"),
        Some(b"x"),
    ))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    c.send(&subscribe_packet(1, "cmd/device-1/#", QoS::AtLeastOnce))
        .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => assert_eq!(s.reason_codes, vec![ReasonCode(1)]),
        other => panic!("{other:?}"),
    }
    c.send(&subscribe_packet(2, "cmd/device-2/#", QoS::AtLeastOnce))
        .await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => assert_eq!(s.reason_codes, vec![ReasonCode::NOT_AUTHORIZED]),
        other => panic!("{other:?}"),
    }
    c.send(&publish_packet(
        "dev/device-1/t",
        QoS::AtLeastOnce,
        3,
        b"mine",
    ))
    .await;
    // Allowed; nobody subscribes to it, which 5.0 says with 0x10.
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        other => panic!("{other:?}"),
    }
    c.send(&publish_packet(
        "dev/device-2/t",
        QoS::AtLeastOnce,
        4,
        b"not mine",
    ))
    .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_files_fail_start_with_the_file_named() {
    let pki = Pki::new();
    let mut missing = pki.tls_config(false, false, false);
    missing.key = pki.path("nope.key");
    let err = match tern::broker::Broker::start(config_with_tls(missing)).await {
        Ok(_) => panic!("a missing key must fail the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("nope.key"), "{err}");

    // A key that does not belong to the certificate.
    let mut mismatched = pki.tls_config(false, false, false);
    let (_, other_key) = pki.write_pair("other", pki.ca.client("x"));
    mismatched.key = other_key;
    let err = match tern::broker::Broker::start(config_with_tls(mismatched)).await {
        Ok(_) => panic!("a key of another certificate must fail the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("other.key"), "{err}");

    // Not PEM at all.
    std::fs::write(pki.path("junk.pem"), "hello").unwrap();
    let mut junk = pki.tls_config(false, false, false);
    junk.cert = pki.path("junk.pem");
    let err = match tern::broker::Broker::start(config_with_tls(junk)).await {
        Ok(_) => panic!("a certificate file without PEM must fail the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("junk.pem"), "{err}");
}

/// Write a config file for the real binary: a TLS listener and an mTLS listener
/// (CN as username).
fn tls_config_file(pki: &Pki) -> std::path::PathBuf {
    let path = pki.path("tern.toml");
    let text = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\ntls = {}\n\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\ntls = {}\n\n\
         [storage]\nin_memory = true\n[auth]\nallow_anonymous = true\n",
        pki.tls_toml(false, false, false),
        pki.tls_toml(true, true, true)
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn mosquitto_clients_over_tls_and_mutual_tls() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    let pki = Pki::new();
    let (cert, key) = pki.write_pair("client", pki.ca.client("device-1"));
    let broker = BrokerProcess::spawn_config(&tls_config_file(&pki));
    let addrs = broker.listener_addrs(2);
    let ca = pki.path("ca.pem");

    // mosquitto_sub over TLS (server verified with --cafile) ...
    let mut sub = Command::new("mosquitto_sub");
    sub.args(["-h", "localhost", "-p", &addrs[0].port().to_string()])
        .arg("--cafile")
        .arg(&ca)
        .args(["-t", "tls/#", "-C", "1", "-W", "10", "-v", "-q", "1"]);
    let sub = std::thread::spawn(move || run_bounded(sub, Duration::from_secs(15)));
    assert!(
        broker.wait_log_count("connected", 1, Duration::from_secs(5)),
        "{}",
        broker.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));

    // ... gets what mosquitto_pub sends over mutual TLS (--cert/--key).
    let mut publ = Command::new("mosquitto_pub");
    publ.args(["-h", "localhost", "-p", &addrs[1].port().to_string()])
        .arg("--cafile")
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-t", "tls/x", "-m", "hello over mtls", "-q", "1"]);
    let out = run_bounded(publ, Duration::from_secs(10));
    assert!(out.status.success(), "mosquitto_pub over mTLS: {out:?}");
    let got = sub.join().unwrap();
    assert!(got.status.success(), "{got:?}");
    assert_eq!(got.stdout.trim(), "tls/x hello over mtls");

    // Without a client certificate the mTLS listener refuses.
    let mut nocert = Command::new("mosquitto_pub");
    nocert
        .args(["-h", "localhost", "-p", &addrs[1].port().to_string()])
        .arg("--cafile")
        .arg(&ca)
        .args(["-t", "tls/x", "-m", "no cert", "-q", "1"]);
    let out = run_bounded(nocert, Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "refused without a certificate: {out:?}"
    );
}

#[test]
fn sighup_swaps_certificates_and_keeps_connections() {
    let pki = Pki::new();
    let broker = BrokerProcess::spawn_config(&tls_config_file(&pki));
    let addr = broker.listener_addrs(2)[0];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A client connected with the old certificate ...
        let tls = tls_connect(addr, pki.client_config(None)).await.unwrap();
        let mut old = RawIo::new(tls, ProtocolVersion::V311);
        old.send(&connect_packet(ProtocolVersion::V311, "old", true))
            .await;
        assert!(matches!(old.recv().await, Some(Packet::ConnAck(_))));

        // ... the certificate is replaced by one from a new CA and Tern reloads.
        let new_ca = Ca::new("Renewed CA");
        let (c, k) = new_ca.server();
        std::fs::write(pki.path("server.pem"), c).unwrap();
        std::fs::write(pki.path("server.key"), k).unwrap();
        let _ = Command::new("kill")
            .args(["-HUP", &broker.child.id().to_string()])
            .status();
        assert!(
            broker.wait_log_count("TLS certificates reloaded", 2, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        // New connections get the new certificate: trusted by the new CA only.
        let fresh = tls_connect(addr, client_config_trusting(&new_ca.cert_pem, None)).await;
        assert!(fresh.is_ok(), "new CA: {:?}", fresh.err());
        let stale = tls_connect(addr, pki.client_config(None)).await;
        assert!(stale.is_err(), "the old CA no longer verifies the server");
        // The old connection is still up.
        old.send(&Packet::PingReq).await;
        assert!(matches!(old.recv().await, Some(Packet::PingResp)));

        // A broken certificate file on reload keeps the current one.
        std::fs::write(pki.path("server.pem"), "garbage").unwrap();
        let _ = Command::new("kill")
            .args(["-HUP", &broker.child.id().to_string()])
            .status();
        assert!(
            broker.wait_log_count("keeping the old certificates", 1, Duration::from_secs(5)),
            "{}",
            broker.log_text()
        );
        let still = tls_connect(addr, client_config_trusting(&new_ca.cert_pem, None)).await;
        assert!(
            still.is_ok(),
            "kept the renewed certificate: {:?}",
            still.err()
        );
    });
}

#[tokio::test]
async fn tls_1_2_and_1_3_clients_both_connect() {
    let pki = Pki::new();
    let (broker, _) = start(config_with_tls(pki.tls_config(false, false, false))).await;
    let addr = broker.local_addrs()[1];
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = tls_connect(addr, std::sync::Arc::new(config))
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(version.version),
            "negotiated what the client offered"
        );
        let mut c = RawIo::new(tls, ProtocolVersion::V311);
        c.send(&connect_packet(ProtocolVersion::V311, "v", true))
            .await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    }
    broker.shutdown().await;
}

/// `certs/make-dev-certs.sh` (openssl) makes certificates Tern and mosquitto_pub
/// accept for TLS and mutual TLS, with the client CN it was given.
#[test]
fn dev_certificate_script_works_with_tern_and_mosquitto() {
    require("openssl");
    require("mosquitto_pub");
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/make-dev-certs.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script).arg(dir.path()).arg("sensor-7");
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{out:?}");
    let p = |n: &str| dir.path().join(n).display().to_string();
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n\
             tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\", require_client_cert = true, identity_as_username = true }}\n\
             [auth]\nacl_file = \"{}\"\n[storage]\nin_memory = true\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem"),
            p("acl")
        ),
    )
    .unwrap();
    // Only the certificate's CN may write here: proves the CN became the username.
    std::fs::write(dir.path().join("acl"), "user sensor-7\ntopic write s/7\n").unwrap();
    let broker = BrokerProcess::spawn_config(&config);
    let mut publ = Command::new("mosquitto_pub");
    publ.args(["-h", "localhost", "-p", &broker.addr.port().to_string()])
        .args([
            "--cafile",
            &p("ca.pem"),
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client.key"),
        ])
        .args(["-t", "s/7", "-m", "x", "-q", "1", "-V", "5"]);
    let out = run_bounded(publ, Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    assert!(
        broker.wait_log_count("user=\"sensor-7\"", 1, Duration::from_secs(5)),
        "{}",
        broker.log_text()
    );
}

/// A TLS client that stops reading while it is sent a flood must not pin its
/// connection task: the keep-alive still ends it (the flush of TLS records waits
/// for the peer, and must not block the rest of the connection's work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_that_stops_reading_is_still_closed_by_keep_alive() {
    let pki = Pki::new();
    let (broker, plain) = start(config_with_tls(pki.tls_config(false, false, false))).await;
    let addr = broker.local_addrs()[1];
    let metrics = broker.metrics();

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(None))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut stuck = RawIo::new(tls, ProtocolVersion::V311);
    let mut connect = connect_packet(ProtocolVersion::V311, "stuck", true);
    if let Packet::Connect(c) = &mut connect {
        c.keep_alive = 1;
    }
    stuck.send(&connect).await;
    assert!(matches!(stuck.recv().await, Some(Packet::ConnAck(_))));
    stuck
        .send(&subscribe_packet(1, "flood", QoS::AtMostOnce))
        .await;
    assert!(matches!(stuck.recv().await, Some(Packet::SubAck(_))));

    // 16 MB at QoS 0 towards a client that reads nothing from now on.
    let (mut publ, _) = raw_connected(plain, ProtocolVersion::V311, "flooder", true).await;
    let payload = vec![b'x'; 16 * 1024];
    for _ in 0..1024 {
        publ.send(&publish_packet("flood", QoS::AtMostOnce, 0, &payload))
            .await;
    }
    assert_eq!(Metrics::get(&metrics.connections_current), 2);
    // Keep alive 1 s -> closed after 1.5 s of silence; allow plenty.
    let closed = wait_until(Duration::from_secs(15), || {
        Metrics::get(&metrics.connections_current) == 1
    })
    .await;
    assert!(closed, "the stuck TLS connection is still open");
    drop(stuck);
    broker.shutdown().await;
}

/// `[admin] tls`: the admin endpoint speaks HTTPS only, and the CLI reaches
/// it with `--ca` (or, from the config file, trusting its certificate file).
#[tokio::test]
async fn the_admin_endpoint_over_https() {
    let pki = Pki::new();
    let token = "admin-token-0123456789";
    let file = pki.path("tern.toml");
    std::fs::write(
        &file,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[storage]\nin_memory = true\n\n\
             [auth]\nallow_anonymous = true\n\n\
             [admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{token}\"\ntls = {}\n",
            pki.tls_toml(false, false, false)
        ),
    )
    .unwrap();
    let tern = BrokerProcess::spawn_config(&file);
    assert!(
        tern.wait_log_count("admin endpoint on https://", 1, Duration::from_secs(5)),
        "{}",
        tern.log_text()
    );
    let admin = tern
        .log_text()
        .lines()
        .find_map(|l| l.split("admin endpoint on https://").nth(1))
        .map(|a| a.trim().to_string())
        .expect("admin address");
    let status = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
        c.args(["status", "--admin", &admin, "--token", token])
            .args(extra);
        run_bounded(c, Duration::from_secs(20))
    };
    // With the CA: the numbers.
    let ca = pki.path("ca.pem");
    let out = status(&["--ca", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("connections"), "{}", out.stdout);
    // Another CA's certificate does not verify it.
    let other = Ca::new("Someone else");
    let other_ca = pki.path("other-ca.pem");
    std::fs::write(&other_ca, &other.cert_pem).unwrap();
    let out = status(&["--ca", other_ca.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", out.stdout);
    // Plain HTTP gets no answer.
    let out = status(&[]);
    assert!(!out.status.success(), "{}", out.stdout);
    let raw = tern::admin::http::request(
        admin.parse().unwrap(),
        "GET",
        "/api/v1/status",
        Some(token),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        raw.as_ref().map_or(true, |(s, _)| *s != 200),
        "plain HTTP was answered: {raw:?}"
    );
    // The token is still required over HTTPS.
    let tls = pki.client_config(None);
    let (code, _) = tern::admin::http::request_with_body(
        admin.parse().unwrap(),
        Some(tls.clone()),
        "GET",
        "/api/v1/status",
        None,
        b"",
        Duration::from_secs(5),
    )
    .await
    .expect("HTTPS request");
    assert_eq!(code, 401);
    let (code, body) = tern::admin::http::request_with_body(
        admin.parse().unwrap(),
        Some(tls),
        "GET",
        "/metrics",
        Some(token),
        b"",
        Duration::from_secs(5),
    )
    .await
    .expect("HTTPS request");
    assert_eq!(code, 200);
    assert!(body.contains("tern_connections"), "{body}");
}
