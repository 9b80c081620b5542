//! Micro-benchmarks of topic routing: the subscription trie and the retained store.
//!
//! `SubscriptionTree::matches_into` runs once for every PUBLISH the broker receives
//! (`matches` is its allocating form, also measured), so its cost, and how it grows
//! with the number of subscriptions, bounds the message rate. `RetainTree::matching`
//! runs for every wildcard SUBSCRIBE and can return thousands of messages at once
//! (a gateway reconnecting with `+/+/device/+/temp`).
//!
//! Data mimics a site/device telemetry gateway and is built outside the timed code:
//! - subscriptions: 1, 10,000 and 100,000, mostly exact `site/{s}/device/{d}/temp`
//!   filters plus per site `site/{s}/+/+/temp` and `site/{s}/#`, three `#` and two
//!   `+/+/device/+/temp`; the topic `site/7/device/42/temp` matches 8 of them
//!   (1 of them in the 1-subscription case). Throughput is topics matched per
//!   second; each match clones the (client id, options) pairs it returns, as the
//!   router's does, into result buffers reused across calls (`matches_into`) or
//!   allocated per call (`matches`).
//! - retained: 100,000 topics `site/{0..250}/device/{0..100}/{temp,humidity,
//!   battery,status}`, looked up with `site/7/#` (400 hits) and `+/+/device/+/temp`
//!   (25,000 hits); the same shape at 10,000 topics (25 sites) shows how the cost
//!   per hit grows with the size of the store. Throughput is retained messages
//!   returned per second.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use tern::protocol::{PublishProperties, QoS, SubscriptionOptions};
use tern::retain::RetainTree;
use tern::session::{ClientId, Message, Subscription};
use tern::subscriptions::{Matches, SubscriptionTree};
use tern::topic::{FilterSpec, TopicLimits};

const TOPIC: &str = "site/7/device/42/temp";

/// `n` filters in the mix described at the top of the file.
fn filters(n: usize) -> Vec<String> {
    if n == 1 {
        return vec![TOPIC.to_string()];
    }
    let sites = (n / 100).max(1);
    let mut out = vec!["#".to_string(); 3];
    out.extend(std::iter::repeat_n("+/+/device/+/temp".to_string(), 2));
    for s in 0..sites {
        out.push(format!("site/{s}/+/+/temp"));
        out.push(format!("site/{s}/#"));
    }
    'fill: for d in 0.. {
        for s in 0..sites {
            if out.len() >= n {
                break 'fill;
            }
            out.push(format!("site/{s}/device/{d}/temp"));
        }
    }
    out.truncate(n);
    out
}

fn subscription_tree(n: usize) -> SubscriptionTree<ClientId, Subscription> {
    let value = Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        },
        identifier: None,
    };
    let mut tree = SubscriptionTree::new();
    for (i, f) in filters(n).iter().enumerate() {
        let spec = FilterSpec::parse(f, TopicLimits::default()).expect("valid filter");
        let key: ClientId = format!("client-{i}").into();
        tree.insert(&spec, key, value);
    }
    assert_eq!(tree.len(), n);
    tree
}

fn bench_subscription_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscription_match");
    group.throughput(Throughput::Elements(1));
    for n in [1usize, 10_000, 100_000] {
        let mut tree = subscription_tree(n);
        let expected = if n == 1 { 1 } else { 8 };
        assert_eq!(tree.matches(TOPIC, |_| true).plain.len(), expected);
        // The router's hot path: results into buffers reused across messages.
        let mut out = Matches::default();
        group.bench_function(BenchmarkId::new("matches_into", n), |b| {
            b.iter(|| {
                tree.matches_into(black_box(TOPIC), |_| true, &mut out);
                black_box(out.plain.len())
            })
        });
        // The allocating convenience form: fresh result vectors per call.
        group.bench_function(BenchmarkId::new("matches", n), |b| {
            b.iter(|| tree.matches(black_box(TOPIC), |_| true))
        });
    }
    group.finish();
}

/// `topics` retained messages: `topics / 400` sites of 100 devices of 4 metrics.
fn retain_tree(topics: usize) -> RetainTree<Arc<Message>> {
    let now = Instant::now();
    let mut tree = RetainTree::new();
    for s in 0..topics / 400 {
        for d in 0..100 {
            for metric in ["temp", "humidity", "battery", "status"] {
                let topic = format!("site/{s}/device/{d}/{metric}");
                let msg = Arc::new(Message {
                    topic: topic.as_str().into(),
                    payload: Bytes::from_static(b"21.5"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: PublishProperties::default(),
                    received: now,
                });
                tree.set(&topic, msg);
            }
        }
    }
    assert_eq!(tree.len(), topics);
    tree
}

fn bench_retained(c: &mut Criterion) {
    let mut group = c.benchmark_group("retained_matching");
    for topics in [10_000usize, 100_000] {
        let tree = retain_tree(topics);
        for (name, filter, hits) in [
            ("site_7_hash", "site/7/#", 400),
            (
                "plus_plus_device_plus_temp",
                "+/+/device/+/temp",
                topics / 4,
            ),
        ] {
            assert_eq!(tree.matching(filter).len(), hits);
            group.throughput(Throughput::Elements(hits as u64));
            group.bench_function(BenchmarkId::new(name, topics), |b| {
                b.iter(|| tree.matching(black_box(filter)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_subscription_match, bench_retained);
criterion_main!(benches);
