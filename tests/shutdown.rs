//! Graceful shutdown. The real binary on SIGTERM / SIGINT: v5 clients receive
//! DISCONNECT 0x8B (Server shutting down, MQTT 5.0 section 3.14.2.1) and then EOF,
//! 3.1.1 clients (which have no server DISCONNECT) just see EOF, and the process
//! exits with success within a few seconds. The in-process `Broker::shutdown` does
//! the same, delivers what is already queued for a client before the DISCONNECT, and
//! stops accepting connections.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;
use tern::protocol::{Packet, ProtocolVersion, QoS, ReasonCode};

const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Read to EOF and assert the client saw exactly DISCONNECT 0x8B first.
async fn expect_8b_then_eof(c: &mut RawClient, who: &str) {
    let seen = c.until_closed().await;
    match seen.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(
            d.reason_code,
            ReasonCode::SERVER_SHUTTING_DOWN,
            "{who}: {d:?}"
        ),
        other => panic!("{who}: expected DISCONNECT 0x8B then EOF, got {other:?}"),
    }
}

async fn expect_plain_eof(c: &mut RawClient, who: &str) {
    let seen = c.until_closed().await;
    assert!(
        seen.is_empty(),
        "{who}: 3.1.1 expected EOF only, got {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_clients_and_exits_successfully() {
    let mut broker = BrokerProcess::spawn(&[]);
    let (mut v5, _) = raw_connected(broker.addr, ProtocolVersion::V5, "v5", true).await;
    v5.subscribe(1, "a/#", QoS::AtLeastOnce).await;
    let (mut v311, _) = raw_connected(broker.addr, ProtocolVersion::V311, "v311", true).await;
    v311.subscribe(1, "a/#", QoS::AtLeastOnce).await;

    broker.signal_term();
    expect_8b_then_eof(&mut v5, "v5").await;
    expect_plain_eof(&mut v311, "v311").await;
    let status = broker
        .wait_exit(EXIT_WITHIN)
        .unwrap_or_else(|| panic!("tern still running {EXIT_WITHIN:?} after SIGTERM"));
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        broker.log_text()
    );
    // The port is closed.
    assert!(
        tokio::net::TcpStream::connect(broker.addr).await.is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_shuts_down_gracefully() {
    let mut broker = BrokerProcess::spawn(&[]);
    let (mut v5, _) = raw_connected(broker.addr, ProtocolVersion::V5, "v5-int", true).await;
    let status = Command::new("kill")
        .args(["-INT", &broker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    expect_8b_then_eof(&mut v5, "v5").await;
    let status = broker
        .wait_exit(EXIT_WITHIN)
        .unwrap_or_else(|| panic!("tern still running {EXIT_WITHIN:?} after SIGINT"));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigterm_with_no_clients_exits_quickly() {
    let mut broker = BrokerProcess::spawn(&[]);
    let started = std::time::Instant::now();
    let status = broker.terminate();
    assert!(status.success(), "exit status {status:?}");
    // Nothing to drain: no reason to sit out the shutdown timeout (5 s default).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_sends_8b_and_stops_accepting() {
    let (broker, addr) = start_default().await;
    let (mut a, _) = raw_connected(addr, ProtocolVersion::V5, "a", true).await;
    let (mut b, _) = raw_connected(addr, ProtocolVersion::V5, "b", false).await;
    let (mut c, _) = raw_connected(addr, ProtocolVersion::V311, "c", true).await;
    tokio::time::timeout(Duration::from_secs(10), broker.shutdown())
        .await
        .expect("shutdown finishes");
    expect_8b_then_eof(&mut a, "a").await;
    expect_8b_then_eof(&mut b, "b").await;
    expect_plain_eof(&mut c, "c").await;
    // No new connections: refused, or closed without a CONNACK.
    if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
        let mut late = RawClient::from_stream(stream, ProtocolVersion::V5);
        late.send_bytes(&hex(
            "10 10 00 04 4d 51 54 54 05 02 00 3c 00 00 03 6c 61 74",
        ))
        .await;
        match late.recv_within(WAIT).await {
            Ok(None) => {}
            other => panic!("connection accepted after shutdown: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_delivers_queued_messages_before_disconnect() {
    let (broker, addr) = start_default().await;
    let (mut sub, _) = raw_connected(addr, ProtocolVersion::V5, "sub", true).await;
    sub.subscribe(1, "q/#", QoS::AtMostOnce).await;
    let (mut publ, _) = raw_connected(addr, ProtocolVersion::V5, "pub", true).await;
    const N: u16 = 50;
    for i in 1..=N {
        publ.send(&publish_packet(
            "q/t",
            QoS::AtLeastOnce,
            i,
            format!("{i}").as_bytes(),
        ))
        .await;
    }
    // PUBACK comes after routing: all N are on their way to `sub` now.
    for i in 1..=N {
        match publ.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.packet_id.get(), i),
            other => panic!("expected PUBACK {i}, got {other:?}"),
        }
    }
    // `sub` has not read anything yet.
    tokio::time::timeout(Duration::from_secs(10), broker.shutdown())
        .await
        .expect("shutdown finishes");
    let seen = sub.until_closed().await;
    let (last, publishes) = seen.split_last().expect("packets before EOF");
    match last {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN),
        other => panic!("last packet must be DISCONNECT 0x8B, got {other:?}"),
    }
    let payloads: Vec<String> = publishes
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => String::from_utf8(p.payload.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    assert_eq!(payloads, want, "queued deliveries before the DISCONNECT");
}
