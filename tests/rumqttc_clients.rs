//! Interoperability with the rumqttc client library (MQTT 3.1.1 `rumqttc` and 5.0
//! `rumqttc::v5`) against the in-process broker: QoS 0/1/2 round trips, persistent
//! sessions receiving what was published while they were offline (exactly once, in
//! order), overlapping subscriptions (one copy at the highest QoS), shared
//! subscriptions spread over several members, v5 subscription identifiers, v5 topic
//! aliases (client -> server and server -> client), and a burst of 1000 QoS 1
//! messages delivered in order.
//!
//! Each rumqttc event loop runs in its own task and forwards the incoming packets the
//! tests care about into a channel (`Conn`).

mod common;

use bytes::Bytes;
use common::*;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tern::metrics::Metrics;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ver {
    V4,
    V5,
}

const VERSIONS: [Ver; 2] = [Ver::V4, Ver::V5];

/// A delivered PUBLISH, version independent.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    qos: u8,
    dup: bool,
    retain: bool,
    payload: Bytes,
    sub_ids: Vec<usize>,
    topic_alias: Option<u16>,
}

impl Msg {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

#[derive(Debug)]
enum Ev {
    ConnAck { session_present: bool, ok: bool },
    SubAck(Vec<u8>),
    PubAck,
    PubComp,
    Publish(Msg),
    Closed(String),
}

/// The events of one connection, with a stash for events skipped while waiting for
/// another kind.
struct Conn {
    rx: mpsc::UnboundedReceiver<Ev>,
    stash: VecDeque<Ev>,
    task: JoinHandle<()>,
    name: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// The first event satisfying `pred` (earlier non-matching ones stay stashed).
    async fn expect(&mut self, what: &str, d: Duration, pred: impl Fn(&Ev) -> bool) -> Ev {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) if pred(&ev) => return ev,
                Ok(Some(ev)) => self.stash.push_back(ev),
                Ok(None) => panic!("{}: event loop ended waiting for {what}", self.name),
                Err(_) => panic!(
                    "{}: no {what} within {d:?}; other events: {:?}",
                    self.name, self.stash
                ),
            }
        }
    }

    async fn suback(&mut self) -> Vec<u8> {
        match self
            .expect("SUBACK", WAIT, |e| matches!(e, Ev::SubAck(_)))
            .await
        {
            Ev::SubAck(c) => c,
            _ => unreachable!(),
        }
    }

    /// Wait for `n` publish completions (PUBACK for QoS 1, PUBCOMP for QoS 2).
    async fn acks(&mut self, n: usize, d: Duration) {
        for _ in 0..n {
            self.expect("PUBACK/PUBCOMP", d, |e| {
                matches!(e, Ev::PubAck | Ev::PubComp)
            })
            .await;
        }
    }

    /// The next delivery within `d`, or None.
    async fn try_msg(&mut self, d: Duration) -> Option<Msg> {
        if let Some(i) = self.stash.iter().position(|e| matches!(e, Ev::Publish(_))) {
            if let Some(Ev::Publish(m)) = self.stash.remove(i) {
                return Some(m);
            }
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Publish(m))) => return Some(m),
                Ok(Some(ev)) => self.stash.push_back(ev),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Exactly `n` deliveries within `d` (in arrival order).
    async fn msgs(&mut self, n: usize, d: Duration) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + d;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_msg(left).await {
                Some(m) => v.push(m),
                None => panic!(
                    "{}: expected {n} deliveries within {d:?}, got {}: {:?}",
                    self.name,
                    v.len(),
                    v.iter().map(|m| (&m.topic, m.text())).collect::<Vec<_>>()
                ),
            }
        }
        v
    }

    async fn no_more_msgs(&mut self, d: Duration) {
        if let Some(m) = self.try_msg(d).await {
            panic!("{}: unexpected extra delivery {m:?}", self.name);
        }
    }

    async fn closed(&mut self) {
        if let Ev::Closed(reason) = self
            .expect("connection end", WAIT, |e| matches!(e, Ev::Closed(_)))
            .await
        {
            eprintln!("{}: connection ended: {reason}", self.name);
        }
    }
}

enum Cli {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn qos4(q: u8) -> rumqttc::QoS {
    rumqttc::qos(q).unwrap()
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q).unwrap()
}

impl Cli {
    async fn subscribe(&self, filter: &str, qos: u8) {
        match self {
            Cli::V4(c) => c.subscribe(filter, qos4(qos)).await.unwrap(),
            Cli::V5(c) => c.subscribe(filter, qos5(qos)).await.unwrap(),
        }
    }

    async fn publish(&self, topic: &str, qos: u8, payload: impl Into<Vec<u8>>) {
        let payload: Vec<u8> = payload.into();
        match self {
            Cli::V4(c) => c.publish(topic, qos4(qos), false, payload).await.unwrap(),
            Cli::V5(c) => c.publish(topic, qos5(qos), false, payload).await.unwrap(),
        }
    }

    async fn disconnect(&self) {
        match self {
            Cli::V4(c) => c.disconnect().await.unwrap(),
            Cli::V5(c) => c.disconnect().await.unwrap(),
        }
    }

    fn v5(&self) -> &rumqttc::v5::AsyncClient {
        match self {
            Cli::V5(c) => c,
            Cli::V4(_) => panic!("not a v5 client"),
        }
    }
}

struct Client {
    cli: Cli,
    conn: Conn,
}

struct Opts {
    clean: bool,
    session_expiry: Option<u32>,
    topic_alias_max: Option<u16>,
}

const CLEAN: Opts = Opts {
    clean: true,
    session_expiry: None,
    topic_alias_max: None,
};

/// Connect and wait for a successful CONNACK; returns the client and session present.
async fn connect(addr: SocketAddr, ver: Ver, id: &str, o: Opts) -> (Client, bool) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (cli, task) = match ver {
        Ver::V4 => {
            use rumqttc::{Event, Packet, SubscribeReasonCode};
            let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
            opts.set_clean_session(o.clean);
            opts.set_keep_alive(Duration::from_secs(30));
            let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
            let task = tokio::spawn(async move {
                loop {
                    let ev = match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(c))) => Ev::ConnAck {
                            session_present: c.session_present,
                            ok: c.code == rumqttc::ConnectReturnCode::Success,
                        },
                        Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    SubscribeReasonCode::Success(q) => *q as u8,
                                    SubscribeReasonCode::Failure => 0x80,
                                })
                                .collect(),
                        ),
                        Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck,
                        Ok(Event::Incoming(Packet::PubComp(_))) => Ev::PubComp,
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish(Msg {
                            topic: p.topic.clone(),
                            qos: p.qos as u8,
                            dup: p.dup,
                            retain: p.retain,
                            payload: p.payload.clone(),
                            sub_ids: vec![],
                            topic_alias: None,
                        }),
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = tx.send(Ev::Closed(e.to_string()));
                            return;
                        }
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            });
            (Cli::V4(client), task)
        }
        Ver::V5 => {
            use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, SubscribeReasonCode};
            use rumqttc::v5::Event;
            let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
            opts.set_clean_start(o.clean);
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_session_expiry_interval(o.session_expiry);
            opts.set_topic_alias_max(o.topic_alias_max);
            let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
            let task = tokio::spawn(async move {
                loop {
                    let ev = match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(c))) => Ev::ConnAck {
                            session_present: c.session_present,
                            ok: c.code == ConnectReturnCode::Success,
                        },
                        Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    SubscribeReasonCode::Success(q) => *q as u8,
                                    _ => 0x80,
                                })
                                .collect(),
                        ),
                        Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck,
                        Ok(Event::Incoming(Packet::PubComp(_))) => Ev::PubComp,
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish(Msg {
                            topic: String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic"),
                            qos: p.qos as u8,
                            dup: p.dup,
                            retain: p.retain,
                            payload: p.payload.clone(),
                            sub_ids: p
                                .properties
                                .as_ref()
                                .map(|p| p.subscription_identifiers.clone())
                                .unwrap_or_default(),
                            topic_alias: p.properties.as_ref().and_then(|p| p.topic_alias),
                        }),
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = tx.send(Ev::Closed(e.to_string()));
                            return;
                        }
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            });
            (Cli::V5(client), task)
        }
    };
    let mut conn = Conn {
        rx,
        stash: VecDeque::new(),
        task,
        name: format!("{id} ({ver:?})"),
    };
    let ev = conn
        .expect("CONNACK", WAIT, |e| {
            matches!(e, Ev::ConnAck { .. } | Ev::Closed(_))
        })
        .await;
    match ev {
        Ev::ConnAck {
            session_present,
            ok: true,
        } => (Client { cli, conn }, session_present),
        other => panic!("{id}: connect failed: {other:?}"),
    }
}

async fn subscribed(addr: SocketAddr, ver: Ver, id: &str, filter: &str, qos: u8) -> Client {
    let (mut c, _) = connect(addr, ver, id, CLEAN).await;
    c.cli.subscribe(filter, qos).await;
    assert_eq!(c.conn.suback().await, vec![qos], "SUBACK for {filter}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_round_trips_v4_and_v5() {
    let (broker, addr) = start_default().await;
    for ver in VERSIONS {
        let mut sub = subscribed(addr, ver, &format!("rt-sub-{ver:?}"), "rt/#", 2).await;
        let (mut publ, _) = connect(addr, ver, &format!("rt-pub-{ver:?}"), CLEAN).await;
        for q in 0..=2u8 {
            publ.cli
                .publish(&format!("rt/q{q}"), q, format!("m{q}"))
                .await;
        }
        // QoS 1 ends with PUBACK, QoS 2 with PUBCOMP.
        publ.conn.acks(2, WAIT).await;
        let mut got = sub.conn.msgs(3, WAIT).await;
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        for (q, m) in got.iter().enumerate() {
            assert_eq!(m.topic, format!("rt/q{q}"), "{ver:?}");
            assert_eq!(m.text(), format!("m{q}"), "{ver:?}");
            assert_eq!(m.qos, q as u8, "{ver:?}: delivered QoS");
            assert!(!m.dup && !m.retain, "{ver:?}: {m:?}");
        }
        sub.conn.no_more_msgs(Duration::from_millis(200)).await;
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_gets_offline_messages_exactly_once_in_order() {
    let (broker, addr) = start_default().await;
    for ver in VERSIONS {
        let id = format!("offline-{ver:?}");
        let persistent = || Opts {
            clean: false,
            session_expiry: Some(300),
            topic_alias_max: None,
        };
        let first = Opts {
            // 3.1.1: clean session 0 from the start; v5: clean start 1 with expiry.
            clean: ver == Ver::V5,
            ..persistent()
        };
        let (mut sub, present) = connect(addr, ver, &id, first).await;
        assert!(!present, "{ver:?}: new session reported as present");
        sub.cli.subscribe("off/#", 2).await;
        assert_eq!(sub.conn.suback().await, vec![2]);
        sub.cli.disconnect().await;
        sub.conn.closed().await;
        drop(sub);

        let (mut publ, _) = connect(addr, ver, &format!("offline-pub-{ver:?}"), CLEAN).await;
        const N: usize = 10;
        for i in 0..N {
            let q = 1 + (i % 2) as u8;
            publ.cli.publish("off/t", q, format!("{i}")).await;
        }
        publ.conn.acks(N, WAIT).await;

        // Resume: session present [MQTT-3.2.2-2], the queued messages follow.
        let (mut sub, present) = connect(addr, ver, &id, persistent()).await;
        assert!(present, "{ver:?}: stored session not reported present");
        let got = sub.conn.msgs(N, WAIT).await;
        sub.conn.no_more_msgs(Duration::from_millis(300)).await;
        let mut payloads: Vec<usize> = got.iter().map(|m| m.text().parse().unwrap()).collect();
        for m in &got {
            let i: usize = m.text().parse().unwrap();
            assert_eq!(m.qos, 1 + (i % 2) as u8, "{ver:?}: QoS of {i}");
        }
        // In publish order for each QoS [MQTT-4.6.0-6].
        for q in [1u8, 2] {
            let seq: Vec<usize> = payloads
                .iter()
                .copied()
                .filter(|i| 1 + (i % 2) as u8 == q)
                .collect();
            let mut sorted = seq.clone();
            sorted.sort();
            assert_eq!(seq, sorted, "{ver:?}: QoS {q} order {payloads:?}");
        }
        // Each exactly once.
        payloads.sort();
        assert_eq!(payloads, (0..N).collect::<Vec<_>>(), "{ver:?}");

        // The subscription survived too: a live message arrives without resubscribing.
        publ.cli.publish("off/live", 1, "live").await;
        let m = sub.conn.msgs(1, WAIT).await.remove(0);
        assert_eq!((m.topic.as_str(), m.text().as_str()), ("off/live", "live"));
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_give_one_copy_at_highest_qos() {
    let (broker, addr) = start_default().await;
    for ver in VERSIONS {
        let (mut sub, _) = connect(addr, ver, &format!("ov-sub-{ver:?}"), CLEAN).await;
        for (f, q) in [("ov/+", 1u8), ("ov/#", 2), ("ov/x", 0)] {
            sub.cli.subscribe(f, q).await;
            assert_eq!(sub.conn.suback().await, vec![q], "{f}");
        }
        let (mut publ, _) = connect(addr, ver, &format!("ov-pub-{ver:?}"), CLEAN).await;
        publ.cli.publish("ov/x", 2, "two").await;
        publ.conn.acks(1, WAIT).await;
        // One copy, at the highest QoS granted by a matching subscription
        // ([MQTT-3.3.5-1] in 3.1.1, [MQTT-3.3.4-2] in 5.0).
        let m = sub.conn.msgs(1, WAIT).await.remove(0);
        assert_eq!((m.topic.as_str(), m.qos), ("ov/x", 2), "{ver:?}: {m:?}");
        sub.conn.no_more_msgs(Duration::from_millis(200)).await;

        publ.cli.publish("ov/x", 1, "one").await;
        publ.conn.acks(1, WAIT).await;
        let m = sub.conn.msgs(1, WAIT).await.remove(0);
        assert_eq!((m.text().as_str(), m.qos), ("one", 1), "{ver:?}: {m:?}");
        sub.conn.no_more_msgs(Duration::from_millis(200)).await;
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_spreads_over_members() {
    let (broker, addr) = start_default().await;
    let mut members = [
        subscribed(addr, Ver::V5, "member-a", "$share/grp/work/+", 1).await,
        subscribed(addr, Ver::V5, "member-b", "$share/grp/work/+", 1).await,
        subscribed(addr, Ver::V4, "member-c", "$share/grp/work/+", 1).await,
    ];
    let (mut publ, _) = connect(addr, Ver::V5, "work-pub", CLEAN).await;
    const N: usize = 30;
    for i in 0..N {
        publ.cli
            .publish(&format!("work/{}", i % 4), 1, format!("{i}"))
            .await;
    }
    publ.conn.acks(N, WAIT).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got: Vec<Vec<usize>> = vec![vec![]; members.len()];
    while got.iter().map(Vec::len).sum::<usize>() < N && tokio::time::Instant::now() < deadline {
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(msg) = m.conn.try_msg(Duration::from_millis(10)).await {
                got[i].push(msg.text().parse().unwrap());
            }
        }
    }
    // Duplicates would arrive now.
    for (i, m) in members.iter_mut().enumerate() {
        while let Some(msg) = m.conn.try_msg(Duration::from_millis(100)).await {
            got[i].push(msg.text().parse().unwrap());
        }
    }
    // Each message to exactly one member (MQTT 5.0 section 4.8.2)...
    let mut all: Vec<usize> = got.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..N).collect::<Vec<_>>(), "per member: {got:?}");
    // ...and every member gets a share.
    assert!(got.iter().all(|g| !g.is_empty()), "not spread: {got:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifiers_on_deliveries() {
    use rumqttc::v5::mqttbytes::v5::SubscribeProperties;
    let (broker, addr) = start_default().await;
    let (mut sub, _) = connect(addr, Ver::V5, "sid-sub", CLEAN).await;
    for (filter, id) in [("sid/+", Some(7)), ("sid/x", Some(300)), ("sid/n/#", None)] {
        let props = SubscribeProperties {
            id,
            user_properties: vec![],
        };
        sub.cli
            .v5()
            .subscribe_with_properties(filter, qos5(1), props)
            .await
            .unwrap();
        assert_eq!(sub.conn.suback().await, vec![1], "{filter}");
    }
    let (mut publ, _) = connect(addr, Ver::V5, "sid-pub", CLEAN).await;
    for t in ["sid/x", "sid/y", "sid/n/z"] {
        publ.cli.publish(t, 1, t).await;
        publ.conn.acks(1, WAIT).await;
        let mut m = sub.conn.msgs(1, WAIT).await.remove(0);
        m.sub_ids.sort();
        let want: Vec<usize> = match t {
            "sid/x" => vec![7, 300],
            "sid/y" => vec![7],
            _ => vec![],
        };
        // Every matching subscription's identifier, none for one without
        // [MQTT-3.3.4-3].
        assert_eq!(m.sub_ids, want, "{t}: {m:?}");
    }
    sub.conn.no_more_msgs(Duration::from_millis(200)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_aliases_from_the_client() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let (broker, addr) = start_default().await;
    let mut sub5 = subscribed(addr, Ver::V5, "ta-sub5", "ta/#", 1).await;
    let mut sub4 = subscribed(addr, Ver::V4, "ta-sub4", "ta/#", 1).await;
    let (mut publ, _) = connect(addr, Ver::V5, "ta-pub", CLEAN).await;
    // (topic sent, alias, topic meant): set alias 1, use it, set 2, use it, remap 1.
    let steps = [
        ("ta/one", 1u16, "ta/one"),
        ("", 1, "ta/one"),
        ("", 1, "ta/one"),
        ("ta/two", 2, "ta/two"),
        ("", 2, "ta/two"),
        ("ta/three", 1, "ta/three"),
        ("", 1, "ta/three"),
    ];
    for (i, (topic, alias, _)) in steps.iter().enumerate() {
        let props = PublishProperties {
            topic_alias: Some(*alias),
            ..Default::default()
        };
        publ.cli
            .v5()
            .publish_with_properties(*topic, qos5(1), false, format!("{i}"), props)
            .await
            .unwrap();
        publ.conn.acks(1, WAIT).await;
    }
    for sub in [&mut sub5, &mut sub4] {
        let got = sub.conn.msgs(steps.len(), WAIT).await;
        sub.conn.no_more_msgs(Duration::from_millis(100)).await;
        for m in got {
            let i: usize = m.text().parse().unwrap();
            // The alias is resolved to its topic [MQTT-3.3.2-12]...
            assert_eq!(m.topic, steps[i].2, "message {i}: {m:?}");
            // ...and never forwarded: these subscribers allow no aliases.
            assert_eq!(m.topic_alias, None, "message {i}: {m:?}");
        }
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_topic_aliases_to_a_rumqttc_subscriber() {
    let (broker, addr) = start_default().await;
    let o = Opts {
        topic_alias_max: Some(2),
        ..CLEAN
    };
    let (mut sub, _) = connect(addr, Ver::V5, "oa-sub", o).await;
    sub.cli.subscribe("oa/#", 1).await;
    assert_eq!(sub.conn.suback().await, vec![1]);
    let (mut publ, _) = connect(addr, Ver::V4, "oa-pub", CLEAN).await;
    let topics = [
        "oa/a", "oa/a", "oa/b", "oa/a", "oa/c", "oa/b", "oa/c", "oa/a",
    ];
    for (i, t) in topics.iter().enumerate() {
        publ.cli.publish(t, 1, format!("{i}")).await;
    }
    publ.conn.acks(topics.len(), WAIT).await;
    let got = sub.conn.msgs(topics.len(), WAIT).await;
    // rumqttc 0.25 reports the PUBLISH as received (it resolves aliases only after
    // emitting the event), so the alias map is kept here, in arrival order.
    let mut aliases = std::collections::HashMap::new();
    let mut aliased = 0;
    for m in &got {
        let i: usize = m.text().parse().unwrap();
        if let Some(a) = m.topic_alias {
            // Never above the client's Topic Alias Maximum [MQTT-3.3.2-11].
            assert!(
                (1..=2).contains(&a),
                "alias {a} beyond the maximum 2: {m:?}"
            );
            aliased += 1;
        }
        let topic = match (m.topic.as_str(), m.topic_alias) {
            ("", Some(a)) => aliases
                .get(&a)
                .cloned()
                .unwrap_or_else(|| panic!("alias {a} used before being set: {m:?}")),
            ("", None) => panic!("empty topic without an alias: {m:?}"),
            (t, Some(a)) => {
                aliases.insert(a, t.to_string());
                t.to_string()
            }
            (t, None) => t.to_string(),
        };
        assert_eq!(topic, topics[i], "{m:?} (aliases {aliases:?})");
    }
    assert!(aliased > 0, "the broker used no topic aliases: {got:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_1000_qos1_messages_in_order() {
    let (broker, addr) = start_default().await;
    let metrics = broker.metrics();
    for ver in VERSIONS {
        let mut sub = subscribed(addr, ver, &format!("burst-sub-{ver:?}"), "burst/#", 1).await;
        let (publ, _) = connect(addr, ver, &format!("burst-pub-{ver:?}"), CLEAN).await;
        const N: usize = 1000;
        let started = std::time::Instant::now();
        let sender = tokio::spawn(async move {
            for i in 0..N {
                publ.cli.publish("burst/t", 1, format!("{i}")).await;
            }
            publ
        });
        let got = sub.conn.msgs(N, Duration::from_secs(20)).await;
        let mut publ = sender.await.unwrap();
        publ.conn.acks(N, Duration::from_secs(10)).await;
        let seq: Vec<usize> = got.iter().map(|m| m.text().parse().unwrap()).collect();
        // Same topic, same QoS, one publisher: order kept [MQTT-4.6.0-6].
        assert_eq!(seq, (0..N).collect::<Vec<_>>(), "{ver:?}: order");
        assert!(got.iter().all(|m| m.qos == 1 && m.topic == "burst/t"));
        sub.conn.no_more_msgs(Duration::from_millis(200)).await;
        eprintln!("{ver:?}: {N} QoS 1 messages in {:?}", started.elapsed());
    }
    assert_eq!(Metrics::get(&metrics.dropped_queue_full), 0);
    broker.shutdown().await;
}
