//! What a hostile or unlucky peer could make Tern hold or do, one regression test
//! per defect found by attacking the broker (issue "Hardening"): memory a peer
//! controls is counted at its real size and capped, and protocol answers a client
//! should get.

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;
use tern::protocol::{self, Packet, ProtocolVersion, PublishProperties, QoS, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A v5 PUBLISH carrying `n` tiny user properties (7 wire bytes each).
fn publish_with_user_properties(topic: &str, n: usize, retain: bool) -> Packet {
    let users: protocol::UserProperties = (0..n).map(|i| ((i % 10).to_string(), "v")).collect();
    Packet::Publish(protocol::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain,
        topic: topic.into(),
        packet_id: None,
        properties: PublishProperties {
            user_properties: users,
            ..Default::default()
        },
        payload: Bytes::from_static(b"x"),
    })
}

/// A packet with more user properties than `max_user_properties` is refused with
/// DISCONNECT 0x95 before they are collected; one within the cap is forwarded
/// whole, in order.
#[tokio::test]
async fn user_properties_over_the_cap_are_refused_with_0x95() {
    let b = BrokerProcess::spawn(&[]);
    let (mut sub, _) = raw_connected(b.addr, V5, "props-sub", true).await;
    sub.subscribe(1, "p/#", QoS::AtMostOnce).await;
    let (mut publ, _) = raw_connected(b.addr, V5, "props-pub", true).await;
    // The default cap is 128: 128 pass.
    publ.send(&publish_with_user_properties("p/ok", 128, false))
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            let got: Vec<_> = p.properties.user_properties.iter().collect();
            assert_eq!(got.len(), 128);
            assert_eq!(got[11], ("1", "v"));
        }
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
    // 129 do not.
    publ.send(&publish_with_user_properties("p/no", 129, false))
        .await;
    match publ.until_closed().await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::PACKET_TOO_LARGE),
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }
    sub.expect_silence(Duration::from_millis(300)).await;
}

/// Was: 60 retained messages of ~150k tiny user properties (1 MB each) held
/// 1.05 GB although `max_retained_bytes` is 16 MiB, because a message's cost
/// counted only topic and payload and a property cost ~100x its wire size. With
/// the cap raised so the packets are accepted, the retained store now stops at
/// its byte cap counted in real bytes, and the broker's memory stays near it,
/// also after a restart from the store.
#[tokio::test]
async fn retained_user_property_flood_stays_within_max_retained_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("TERN_LIMITS__MAX_USER_PROPERTIES", "1000000"),
        ("TERN_LIMITS__MAX_PROPERTY_BYTES", "2000000"),
    ];
    let data = dir.path().to_str().unwrap().to_string();
    let spawn = || BrokerProcess::spawn_with_env(&["--data-dir", &data], &env);
    let mut b = spawn();
    let (mut publ, _) = raw_connected(b.addr, V5, "flood", true).await;
    for i in 0..60 {
        publ.send(&publish_with_user_properties(
            &format!("r/{i}"),
            140_000,
            true,
        ))
        .await;
    }
    // A ping answered means every publish before it was handled.
    publ.send(&Packet::PingReq).await;
    assert!(matches!(publ.recv().await, Some(Packet::PingResp)));
    let rss = proc_status(b.child.id(), "VmRSS") / 1024;
    // Before: ~1,000 MB. The cap is 16 MiB of retained messages; allow the
    // runtime, buffers and allocator slack on top.
    assert!(rss < 160, "broker RSS {rss} MB after the retained flood");
    // Only what fits the byte cap was kept (each message ~1 MB). One topic per
    // SUBSCRIBE, so the reader's queue cap does not decide the count.
    let (mut sub, _) = raw_connected(b.addr, V5, "reader", true).await;
    let mut kept = 0;
    for i in 0..60u16 {
        sub.send(&subscribe_packet(i + 1, &format!("r/{i}"), QoS::AtMostOnce))
            .await;
        assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
        if let Ok(Some(Packet::Publish(_))) = sub.recv_within(Duration::from_millis(200)).await {
            kept += 1;
        }
    }
    assert!(
        (5..=17).contains(&kept),
        "{kept} retained messages kept under a 16 MiB cap"
    );
    drop(sub);
    drop(publ);
    b.terminate();
    let b = spawn();
    let rss = proc_status(b.child.id(), "VmRSS") / 1024;
    assert!(rss < 160, "broker RSS {rss} MB after restarting with them");
}
