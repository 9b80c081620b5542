//! Micro-benchmarks of the MQTT codec on its hottest packet: PUBLISH.
//!
//! Every application message crosses `decode` once (from the publisher) and
//! `encode` once per subscriber, so these two calls bound the broker's per-message
//! CPU cost on a small gateway. Measured: one PUBLISH with a 3-level topic and a
//! 64-byte payload, in MQTT 3.1.1 and 5.0 (v5 with a Message Expiry Interval and
//! one User Property), at QoS 0 and QoS 1. Throughput is packets per second.
//!
//! Decode runs on a fresh copy of a pre-encoded `BytesMut` per iteration (made in
//! `iter_batched`'s setup, so the copy is not timed), exactly as the connection task
//! hands its read buffer to the decoder; `publish_decode_stream` decodes 100
//! packets from one buffer, the steady state of a busy connection, where the
//! per-buffer costs are shared out. Encode appends into a reused, pre-sized
//! buffer that is cleared before each call, as a connection's write buffer is.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tern::protocol::{
    decode, encode, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS,
};

const TOPIC: &str = "site/7/temperature";
const PAYLOAD_LEN: usize = 64;
const MAX_PACKET_SIZE: u32 = 1 << 20;
/// Packets per read buffer in the `publish_decode_stream` group.
const STREAM_PACKETS: usize = 100;

fn publish(version: ProtocolVersion, qos: QoS) -> Packet {
    let properties = if version.is_v5() {
        PublishProperties {
            message_expiry_interval: Some(3600),
            user_properties: vec![("unit".to_string(), "celsius".to_string())],
            ..PublishProperties::default()
        }
    } else {
        PublishProperties::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TOPIC.to_string(),
        packet_id: match qos {
            QoS::AtMostOnce => None,
            _ => PacketId::new(42),
        },
        properties,
        payload: Bytes::from(vec![0xA5; PAYLOAD_LEN]),
    })
}

const CASES: [(&str, ProtocolVersion, QoS); 4] = [
    ("v311_qos0", ProtocolVersion::V311, QoS::AtMostOnce),
    ("v311_qos1", ProtocolVersion::V311, QoS::AtLeastOnce),
    ("v5_qos0", ProtocolVersion::V5, QoS::AtMostOnce),
    ("v5_qos1", ProtocolVersion::V5, QoS::AtLeastOnce),
];

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_decode");
    group.throughput(Throughput::Elements(1));
    for (name, version, qos) in CASES {
        let packet = publish(version, qos);
        let mut wire = BytesMut::new();
        encode(&packet, version, &mut wire).expect("encode");
        // Round-trip check so a codec change cannot silently benchmark an error path.
        let mut check = wire.clone();
        assert_eq!(
            decode(&mut check, Some(version), MAX_PACKET_SIZE).expect("decode"),
            Some(packet.clone())
        );
        assert!(check.is_empty());

        group.bench_function(name, |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| decode(&mut buf, black_box(Some(version)), MAX_PACKET_SIZE),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    // Steady state of a busy connection: one read buffer holding many packets, so
    // the buffer's one-time conversion to shared storage is amortised.
    let mut group = c.benchmark_group("publish_decode_stream");
    group.throughput(Throughput::Elements(STREAM_PACKETS as u64));
    for (name, version, qos) in CASES {
        let packet = publish(version, qos);
        let mut wire = BytesMut::new();
        for _ in 0..STREAM_PACKETS {
            encode(&packet, version, &mut wire).expect("encode");
        }
        group.bench_function(name, |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| {
                    let mut out = Vec::with_capacity(STREAM_PACKETS);
                    while let Some(p) =
                        decode(&mut buf, black_box(Some(version)), MAX_PACKET_SIZE).unwrap()
                    {
                        out.push(p);
                    }
                    assert_eq!(out.len(), STREAM_PACKETS);
                    out
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_encode");
    group.throughput(Throughput::Elements(1));
    for (name, version, qos) in CASES {
        let packet = publish(version, qos);
        let mut buf = BytesMut::with_capacity(4096);
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&packet), black_box(version), &mut buf).expect("encode");
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
