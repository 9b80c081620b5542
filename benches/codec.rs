//! Micro-benchmarks of the MQTT codec on its hottest packet: PUBLISH.
//!
//! Every application message crosses `decode` once (from the publisher) and is
//! encoded once per subscriber, so these calls bound the broker's per-message CPU
//! cost on a small gateway. Measured: one PUBLISH with a 3-level topic and a
//! 64-byte payload, in MQTT 3.1.1 and 5.0 (v5 with a Message Expiry Interval and
//! one User Property), at QoS 0 and QoS 1. Throughput is packets per second.
//!
//! - `publish_decode`: one packet from a fresh copy of a pre-encoded `BytesMut`
//!   (copied in `iter_batched`'s setup, so the copy is not timed), as when a read
//!   buffer holds a single packet.
//! - `publish_decode_stream`: 100 packets from one buffer, the steady state of a
//!   busy connection, where per-buffer costs are shared out.
//! - `publish_encode`: `encode(&Packet::Publish, ..)` into a reused, pre-sized
//!   buffer cleared before each call, as a connection's write buffer is.
//! - `publish_encode_view`: `PublishView::encode`, the borrowed form the broker
//!   uses for each outgoing delivery (no `Publish` built per receiver).
//!
//! Decoded packets are dropped outside the timed region.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tern::protocol::{
    decode, encode, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, PublishView, QoS,
};

const TOPIC: &str = "site/7/temperature";
const PAYLOAD_LEN: usize = 64;
const MAX_PACKET_SIZE: u32 = 1 << 20;
/// Packets per read buffer in the `publish_decode_stream` group.
const STREAM_PACKETS: usize = 100;
/// Inputs prepared per timed batch. Bounded on purpose: with `BatchSize::SmallInput`
/// a batch holds a tenth of a sample's iterations, and criterion stores every
/// ~200-byte decoded `Packet` in a fresh multi-megabyte output buffer inside the
/// timed region, so its page faults and cache misses would be timed too.
const DECODE_BATCH: u64 = 256;
const STREAM_BATCH: u64 = 16;

fn publish(version: ProtocolVersion, qos: QoS) -> Publish {
    let properties = if version.is_v5() {
        PublishProperties {
            message_expiry_interval: Some(3600),
            user_properties: vec![("unit".to_string(), "celsius".to_string())].into(),
            ..PublishProperties::default()
        }
    } else {
        PublishProperties::default()
    };
    Publish {
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
    }
}

fn view(p: &Publish) -> PublishView<'_> {
    PublishView {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
        topic: &p.topic,
        packet_id: p.packet_id,
        properties: &p.properties,
        topic_alias: None,
        message_expiry_interval: p.properties.message_expiry_interval,
        subscription_identifiers: &[],
        payload: &p.payload,
    }
}

const CASES: [(&str, ProtocolVersion, QoS); 4] = [
    ("v311_qos0", ProtocolVersion::V311, QoS::AtMostOnce),
    ("v311_qos1", ProtocolVersion::V311, QoS::AtLeastOnce),
    ("v5_qos0", ProtocolVersion::V5, QoS::AtMostOnce),
    ("v5_qos1", ProtocolVersion::V5, QoS::AtLeastOnce),
];

fn encoded(version: ProtocolVersion, qos: QoS, copies: usize) -> BytesMut {
    let packet = Packet::Publish(publish(version, qos));
    let mut wire = BytesMut::new();
    for _ in 0..copies {
        encode(&packet, version, &mut wire).expect("encode");
    }
    // Round-trip check so a codec change cannot silently benchmark an error path.
    let mut check = wire.clone();
    for _ in 0..copies {
        let got = decode(&mut check, Some(version), MAX_PACKET_SIZE).expect("decode");
        assert_eq!(got.as_ref(), Some(&packet));
    }
    assert!(check.is_empty());
    wire
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_decode");
    group.throughput(Throughput::Elements(1));
    for (name, version, qos) in CASES {
        let wire = encoded(version, qos, 1);
        group.bench_function(name, |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| decode(&mut buf, black_box(Some(version)), MAX_PACKET_SIZE),
                BatchSize::NumIterations(DECODE_BATCH),
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("publish_decode_stream");
    group.throughput(Throughput::Elements(STREAM_PACKETS as u64));
    for (name, version, qos) in CASES {
        let wire = encoded(version, qos, STREAM_PACKETS);
        group.bench_function(name, |b| {
            b.iter_batched(
                || (wire.clone(), Vec::with_capacity(STREAM_PACKETS)),
                |(mut buf, mut out)| {
                    while let Some(p) =
                        decode(&mut buf, black_box(Some(version)), MAX_PACKET_SIZE).unwrap()
                    {
                        out.push(p);
                    }
                    out
                },
                BatchSize::NumIterations(STREAM_BATCH),
            )
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_encode");
    group.throughput(Throughput::Elements(1));
    for (name, version, qos) in CASES {
        let packet = Packet::Publish(publish(version, qos));
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

    let mut group = c.benchmark_group("publish_encode_view");
    group.throughput(Throughput::Elements(1));
    for (name, version, qos) in CASES {
        let publish = publish(version, qos);
        let mut buf = BytesMut::with_capacity(4096);
        // Same bytes as the owned-packet encoder.
        let mut want = BytesMut::new();
        encode(&Packet::Publish(publish.clone()), version, &mut want).expect("encode");
        view(&publish).encode(version, &mut buf).expect("encode");
        assert_eq!(buf, want);
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                black_box(view(black_box(&publish)))
                    .encode(black_box(version), &mut buf)
                    .expect("encode");
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
