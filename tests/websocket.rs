//! MQTT over WebSocket: a tokio-tungstenite client (packets split across messages
//! and several packets in one message), subprotocol negotiation, text messages
//! refused, paho-mqtt over `ws` and over `wss` (TLS + WebSocket) with a plain TCP
//! client on the same broker.

mod common;

use bytes::BytesMut;
use common::pki::Pki;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tern::config::{Config, ListenerConfig};
use tern::protocol::{self, Packet, ProtocolVersion, QoS, ReasonCode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Listeners: [plain, WebSocket (with `tls` when given)].
fn config_with_ws(tls: Option<tern::config::TlsConfig>) -> Config {
    let mut c = test_config();
    let mut l = ListenerConfig::plain("127.0.0.1:0".parse().unwrap());
    l.websocket = true;
    l.tls = tls;
    c.listeners.push(l);
    c
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    addr: SocketAddr,
    protocols: Option<&str>,
) -> Result<(Ws, Option<String>), String> {
    let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

fn encode(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut b = BytesMut::new();
    protocol::encode(p, v, &mut b).unwrap();
    b.to_vec()
}

/// The next MQTT packet from binary messages (buffered across messages).
async fn next_packet(ws: &mut Ws, buf: &mut BytesMut, v: ProtocolVersion) -> Option<Packet> {
    loop {
        if let Some(p) = protocol::decode(buf, Some(v), 1 << 20).unwrap() {
            return Some(p);
        }
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait")
        {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test]
async fn packets_split_across_and_packed_into_websocket_messages() {
    let (broker, plain) = start(config_with_ws(None)).await;
    let ws_addr = broker.local_addrs()[1];
    let v = ProtocolVersion::V5;
    let (mut ws, chosen) = ws_connect(ws_addr, Some("mqttv3.1, mqtt")).await.unwrap();
    assert_eq!(
        chosen.as_deref(),
        Some("mqtt"),
        "[MQTT-6.0.0-3] subprotocol mqtt"
    );
    let mut buf = BytesMut::new();

    // One CONNECT split over three binary messages [MQTT-6.0.0-2].
    let connect = encode(&connect_packet(v, "ws-1", true), v);
    for part in [&connect[..3], &connect[3..7], &connect[7..]] {
        ws.send(Message::Binary(part.to_vec().into()))
            .await
            .unwrap();
    }
    match next_packet(&mut ws, &mut buf, v).await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    // SUBSCRIBE and a PINGREQ in one message.
    let mut both = encode(&subscribe_packet(1, "ws/#", QoS::AtLeastOnce), v);
    both.extend(encode(&Packet::PingReq, v));
    ws.send(Message::Binary(both.into())).await.unwrap();
    assert!(matches!(
        next_packet(&mut ws, &mut buf, v).await,
        Some(Packet::SubAck(_))
    ));
    assert!(matches!(
        next_packet(&mut ws, &mut buf, v).await,
        Some(Packet::PingResp)
    ));

    // A large message from a plain TCP publisher arrives whole over the WebSocket.
    let payload = vec![7u8; 200_000];
    let (mut p, _) = raw_connected(plain, v, "tcp-pub", true).await;
    p.send(&publish_packet("ws/big", QoS::AtLeastOnce, 1, &payload))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    match next_packet(&mut ws, &mut buf, v).await {
        Some(Packet::Publish(m)) => {
            assert_eq!(m.topic, "ws/big");
            assert_eq!(m.payload.len(), payload.len());
            // Acknowledge it, split in two messages.
            let ack = encode(
                &Packet::PubAck(protocol::PubResponse {
                    packet_id: m.packet_id.unwrap(),
                    reason_code: ReasonCode::SUCCESS,
                    properties: Default::default(),
                }),
                v,
            );
            ws.send(Message::Binary(ack[..1].to_vec().into()))
                .await
                .unwrap();
            ws.send(Message::Binary(ack[1..].to_vec().into()))
                .await
                .unwrap();
        }
        other => panic!("{other:?}"),
    }
    // And the other way: WebSocket publisher, TCP subscriber.
    p.send(&subscribe_packet(2, "back/#", QoS::AtMostOnce))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::SubAck(_))));
    ws.send(Message::Binary(
        encode(&publish_packet("back/1", QoS::AtMostOnce, 0, b"from ws"), v).into(),
    ))
    .await
    .unwrap();
    match p.recv().await {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"from ws"),
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn subprotocol_must_be_mqtt_when_offered_and_text_is_refused() {
    let (broker, _) = start(config_with_ws(None)).await;
    let ws_addr = broker.local_addrs()[1];
    let err = ws_connect(ws_addr, Some("chat"))
        .await
        .expect_err("refused");
    assert!(
        err.contains("400"),
        "HTTP 400 for a foreign subprotocol: {err}"
    );
    assert_eq!(Metrics::get(&broker.metrics().ws_handshake_failed), 1);

    // No subprotocol at all is accepted (some embedded clients send none).
    let (mut ws, chosen) = ws_connect(ws_addr, None).await.unwrap();
    assert_eq!(chosen, None);
    let v = ProtocolVersion::V311;
    ws.send(Message::Binary(
        encode(&connect_packet(v, "ws-2", true), v).into(),
    ))
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    assert!(matches!(
        next_packet(&mut ws, &mut buf, v).await,
        Some(Packet::ConnAck(_))
    ));
    // [MQTT-6.0.0-1] a text message closes the connection.
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert!(
        next_packet(&mut ws, &mut buf, v).await.is_none(),
        "closed after a text message"
    );
    broker.shutdown().await;
}

use tern::metrics::Metrics;

/// paho-mqtt subscribes over `transport="websockets"` (with TLS for wss), a plain
/// TCP client publishes; paho must print the message.
fn paho_ws_round_trip(port: u16, ca: Option<&std::path::Path>, plain: SocketAddr) {
    require("python3");
    let script = r#"
import sys, ssl, time, paho.mqtt.client as mqtt
port = int(sys.argv[1]); ca = sys.argv[2] if len(sys.argv) > 2 else None
got = []
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws", transport="websockets", protocol=mqtt.MQTTv5)
if ca:
    c.tls_set(ca_certs=ca)
c.on_message = lambda c, u, m: got.append(m.payload.decode())
c.connect("localhost", port)
c.subscribe("paho/#", qos=1)
deadline = time.time() + 10
while not got and time.time() < deadline:
    c.loop(0.1)
print("GOT", got[0] if got else None, flush=True)
c.disconnect()
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(port.to_string());
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let child = std::thread::spawn(move || run_bounded(cmd, Duration::from_secs(20)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut p, _) = raw_connected(plain, ProtocolVersion::V311, "tcp-pub", true).await;
        // Publish until paho, once subscribed, has received one and ended
        // (bounded: 40 tries, 10 s).
        for i in 0..40u16 {
            if child.is_finished() {
                break;
            }
            p.send(&publish_packet(
                "paho/x",
                QoS::AtLeastOnce,
                i + 1,
                b"hello paho",
            ))
            .await;
            let _ = p.recv().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let out = child.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("GOT hello paho"), "{out:?}");
}

#[test]
fn paho_over_ws_and_wss() {
    let pki = Pki::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for tls in [false, true] {
        let config = config_with_ws(tls.then(|| pki.tls_config(false, false, false)));
        let (broker, plain) = rt.block_on(start(config));
        let ws_port = broker.local_addrs()[1].port();
        let ca = pki.path("ca.pem");
        paho_ws_round_trip(ws_port, tls.then_some(ca.as_path()), plain);
        rt.block_on(broker.shutdown());
    }
}

/// MQTT.js (installed by `.ci/run` into target/npm) over `ws` and `wss`: it
/// subscribes, publishes to itself at QoS 1 and must print the message.
#[test]
fn mqttjs_over_ws_and_wss() {
    require("node");
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm/node_modules");
    assert!(
        modules.join("mqtt").is_dir(),
        "MQTT.js is not installed in {}: run `bash .ci/run` (it installs the test peers)",
        modules.display()
    );
    let script = r#"
const fs = require('fs');
const mqtt = require('mqtt');
const [url, ca] = process.argv.slice(1);
const opts = { protocolVersion: 5, clientId: 'mqttjs', reconnectPeriod: 0 };
if (ca) opts.ca = fs.readFileSync(ca);
const c = mqtt.connect(url, opts);
c.on('connect', () => c.subscribe('js/#', { qos: 1 }, (err, granted) => {
  if (err) { console.error('SUBSCRIBE ' + err); process.exit(2); }
  c.publish('js/echo', 'hello from mqtt.js', { qos: 1 });
}));
c.on('message', (topic, payload) => {
  console.log('GOT ' + topic + ' ' + payload.toString());
  c.end(false, () => process.exit(0));
});
c.on('error', (e) => { console.error('ERROR ' + e.message); process.exit(3); });
setTimeout(() => { console.error('TIMEOUT'); process.exit(4); }, 10000);
"#;
    let pki = Pki::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for tls in [false, true] {
        let config = config_with_ws(tls.then(|| pki.tls_config(false, false, false)));
        let (broker, _) = rt.block_on(start(config));
        let port = broker.local_addrs()[1].port();
        let mut cmd = std::process::Command::new("node");
        cmd.env("NODE_PATH", &modules).arg("-e").arg(script);
        if tls {
            cmd.arg(format!("wss://localhost:{port}/mqtt"))
                .arg(pki.path("ca.pem"));
        } else {
            cmd.arg(format!("ws://127.0.0.1:{port}/mqtt"));
        }
        let out = run_bounded(cmd, Duration::from_secs(20));
        assert!(out.status.success(), "MQTT.js (tls: {tls}): {out:?}");
        assert_eq!(
            out.stdout.trim(),
            "GOT js/echo hello from mqtt.js",
            "{out:?}"
        );
        rt.block_on(broker.shutdown());
    }
}

/// Was: a WebSocket client's bytes before its CONNECT sat in tungstenite's message
/// buffer up to `max_packet_size`, outside `unauthenticated_buffer_bytes`: 200
/// half-sent 1 MB messages held 100+ MB before anyone logged in. Now they are
/// counted below tungstenite like a TCP client's CONNECT buffer (the first
/// packet's limit and the shared budget), and a normal client still gets in.
#[tokio::test]
async fn half_sent_websocket_messages_before_connect_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tern.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nwebsocket = true\n\n[storage]\nin_memory = true\n\n\
         [auth]\nallow_anonymous = true\n",
    )
    .unwrap();
    let b = BrokerProcess::spawn_config(&cfg);
    let addr = b.listener_addrs(1)[0];
    let pid = b.child.id();
    let idle = proc_status(pid, "VmRSS");
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        let mut tcp = ws.into_inner();
        // A masked binary frame declaring 1,000,000 bytes (mask key 0), then half.
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&1_000_000u64.to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend(std::iter::repeat_n(0u8, 512 * 1024));
        // The broker may close it part way: that is the point.
        let _ = tcp.write_all(&frame).await;
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = proc_status(pid, "VmRSS").saturating_sub(idle) / 1024;
    // The budget is 16 MiB; before, ~100 MB (512 KiB each).
    assert!(grown < 50, "200 half-sent messages hold {grown} MB");
    // A well-behaved client logs in meanwhile.
    let (mut ws, _) = ws_connect(addr, Some("mqtt")).await.expect("upgrade");
    let mut out = BytesMut::new();
    protocol::encode(
        &connect_packet(ProtocolVersion::V311, "ws-ok", true),
        ProtocolVersion::V311,
        &mut out,
    )
    .unwrap();
    ws.send(Message::Binary(out.freeze())).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("CONNACK in time");
    match reply {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0x20, 0x02, 0x00, 0x00]),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    drop(held);
}

/// Our own framing (`ws/frame.rs`), over real sockets: a Ping is answered with
/// a Pong echoing it, between the fragments of a message that carries a
/// CONNECT; the client's Close is answered with a Close echoing its code and
/// ends the connection (the Will of a session closed without DISCONNECT is
/// published: the socket closing is what counts). Raw bytes, since a client
/// library would not send what is refused next: an unmasked frame gets Close
/// 1002, a wrong version HTTP 426.
#[tokio::test]
async fn pings_closes_and_violations_over_real_sockets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (broker, _) = start(config_with_ws(None)).await;
    let ws_addr = broker.local_addrs()[1];
    let v = ProtocolVersion::V311;

    let (mut ws, _) = ws_connect(ws_addr, Some("mqtt")).await.unwrap();
    let connect = encode(&connect_packet(v, "ws-ping", true), v);
    let (a, b) = connect.split_at(5);
    // A fragmented message with a Ping between its fragments.
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::*, Frame, FrameHeader};
    let fragment = |fin: bool, opcode: OpCode, payload: &[u8]| {
        Frame::from_payload(
            FrameHeader {
                is_final: fin,
                opcode,
                ..FrameHeader::default()
            },
            payload.to_vec().into(),
        )
    };
    ws.send(Message::Frame(fragment(
        false,
        OpCode::Data(Data::Binary),
        a,
    )))
    .await
    .unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Frame(fragment(
        true,
        OpCode::Data(Data::Continue),
        b,
    )))
    .await
    .unwrap();
    let mut pong = None;
    let mut buf = BytesMut::new();
    let connack = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("answer") {
            Some(Ok(Message::Pong(p))) => pong = Some(p.to_vec()),
            Some(Ok(Message::Binary(m))) => {
                buf.extend_from_slice(&m);
                if let Some(p) = protocol::decode(&mut buf, Some(v), 1 << 20).unwrap() {
                    break p;
                }
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(matches!(connack, Packet::ConnAck(_)), "{connack:?}");
    // The Pong may follow the CONNACK: wait for it if it has not come.
    if pong.is_none() {
        ws.send(Message::Binary(encode(&Packet::PingReq, v).into()))
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await.expect("pong") {
                Some(Ok(Message::Pong(p))) => {
                    pong = Some(p.to_vec());
                    break;
                }
                Some(Ok(Message::Binary(_))) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    // Close with 4000: echoed, then the end.
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    ws.send(Message::Close(Some(CloseFrame {
        code: 4000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let mut echoed = None;
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, ws.next()).await {
        match m {
            Ok(Message::Close(Some(f))) => echoed = Some(u16::from(f.code)),
            Ok(Message::Binary(_)) | Ok(Message::Close(None)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(echoed, Some(4000));

    // Raw: an upgrade, then an unmasked binary frame.
    let mut raw = tokio::net::TcpStream::connect(ws_addr).await.unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, raw.read(&mut chunk))
            .await
            .expect("101")
            .unwrap();
        assert!(n > 0, "closed during the handshake");
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let mut unmasked = vec![0x82, connect.len() as u8];
    unmasked.extend_from_slice(&connect);
    raw.write_all(&unmasked).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
    assert_eq!(
        rest.get(..4),
        Some(&[0x88, 0x02, 0x03, 0xEA][..]),
        "Close 1002 (protocol error), then the end: {rest:?}"
    );

    // Raw: version 8 is answered 426 with the version we speak.
    let mut raw = tokio::net::TcpStream::connect(ws_addr).await.unwrap();
    raw.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp).to_string();
    assert!(resp.starts_with("HTTP/1.1 426 "), "{resp}");
    assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"), "{resp}");
    broker.shutdown().await;
}
