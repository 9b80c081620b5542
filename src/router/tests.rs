//! Unit tests of the router with fake time: wills, expiry, takeover, backpressure,
//! hand-on of shared messages, retained backlog, record sizes.

use super::*;
use crate::protocol::{
    PublishProperties, SubscribeFilter, SubscribeProperties, SubscriptionOptions,
};
use bytes::Bytes;

struct TestConn {
    outbox: crate::outbox::OutboxReceiver,
    kick: oneshot::Receiver<ReasonCode>,
}

fn router() -> Router {
    Router::new(
        &Config::default(),
        Arc::new(Metrics::default()),
        Clock::read(),
    )
}

/// The clock of a turn at `now` (the wall clock is not looked at by these
/// tests).
fn at(now: Instant) -> Clock {
    Clock::at(now, 0)
}

fn connect(
    r: &mut Router,
    id: &str,
    conn_id: u64,
    clean: bool,
    expiry: u32,
    will: Option<LastWill>,
    now: Instant,
) -> (ConnectAccepted, TestConn) {
    let (otx, orx) = crate::outbox::outbox(64);
    let (ktx, krx) = oneshot::channel();
    let req = ConnectRequest {
        client_id: id.into(),
        clean_start: clean,
        session_expiry: expiry,
        will,
        username: None,
        by_password: false,
        addr: None,
        verified: false,
        handle: ConnHandle {
            conn_id,
            version: ProtocolVersion::V5,
            outbox: otx,
            kick: ktx,
            max_packet_size: None,
            window: 10,
            reply_reserve: 8,
        },
    };
    let acc = r.connect(req, now).expect("accepted");
    (
        acc,
        TestConn {
            outbox: orx,
            kick: krx,
        },
    )
}

fn subscribe(r: &mut Router, id: &str, conn_id: u64, filter: &str, qos: QoS, now: Instant) {
    let codes = r.subscribe(
        &id.into(),
        conn_id,
        Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: SubscribeProperties::default(),
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
        },
        now,
    );
    assert_eq!(codes, vec![ReasonCode(qos.as_u8())]);
}

fn will(topic: &str, delay: u32) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: delay,
        properties: PublishProperties::default(),
    }
}

fn topics(c: &mut TestConn) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(Outgoing::Publish { delivery, .. }) = c.outbox.try_recv() {
        v.push(delivery.message.topic.to_string());
    }
    v
}

fn drop_conn(r: &mut Router, id: &str, conn_id: u64, kind: DisconnectKind, now: Instant) {
    r.disconnected(&id.into(), conn_id, kind, None, now);
}

#[test]
fn delayed_will_fires_after_delay_and_is_cancelled_by_resume() {
    let t0 = Instant::now();
    let mut r = router();
    let (_, mut watcher) = connect(&mut r, "w", 1, true, 0, None, t0);
    subscribe(&mut r, "w", 1, "will/#", QoS::AtLeastOnce, t0);
    let (_, _c) = connect(&mut r, "c", 2, false, 100, Some(will("will/c", 5)), t0);
    drop_conn(&mut r, "c", 2, DisconnectKind::WithWill, t0);
    r.tick(at(t0 + Duration::from_secs(4)));
    assert!(topics(&mut watcher).is_empty(), "not before the delay");
    r.tick(at(t0 + Duration::from_secs(5)));
    assert_eq!(topics(&mut watcher), vec!["will/c"]);

    // Again, but the client resumes within the delay: no will [MQTT-3.1.3-9].
    let (acc, _c) = connect(&mut r, "c", 3, false, 100, Some(will("will/c", 5)), t0);
    assert!(acc.session_present);
    drop_conn(&mut r, "c", 3, DisconnectKind::WithWill, t0);
    let (_, _c) = connect(
        &mut r,
        "c",
        4,
        false,
        100,
        None,
        t0 + Duration::from_secs(2),
    );
    r.tick(at(t0 + Duration::from_secs(60)));
    assert!(topics(&mut watcher).is_empty());
    assert!(r.deadlines.is_empty(), "resume removed the deadlines");
}

#[test]
fn will_sent_when_session_ends_before_delay() {
    let t0 = Instant::now();
    let mut r = router();
    let (_, mut watcher) = connect(&mut r, "w", 1, true, 0, None, t0);
    subscribe(&mut r, "w", 1, "will/#", QoS::AtMostOnce, t0);
    let (_, _c) = connect(&mut r, "c", 2, true, 3, Some(will("will/c", 60)), t0);
    drop_conn(&mut r, "c", 2, DisconnectKind::WithWill, t0);
    r.tick(at(t0 + Duration::from_secs(3)));
    assert_eq!(topics(&mut watcher), vec!["will/c"]);
    assert!(!r.clients.contains_key("c"), "session expired");
}

#[test]
fn normal_disconnect_discards_will_and_zero_expiry_ends_session() {
    let t0 = Instant::now();
    let mut r = router();
    let (_, mut watcher) = connect(&mut r, "w", 1, true, 0, None, t0);
    subscribe(&mut r, "w", 1, "#", QoS::AtMostOnce, t0);
    let (_, _c) = connect(&mut r, "c", 2, true, 0, Some(will("will/c", 0)), t0);
    drop_conn(&mut r, "c", 2, DisconnectKind::Normal, t0);
    assert!(topics(&mut watcher).is_empty());
    assert_eq!(r.session_count(), 1);
}

#[test]
fn takeover_kicks_old_connection_and_ignores_its_late_report() {
    let t0 = Instant::now();
    let mut r = router();
    let (_, mut old) = connect(&mut r, "c", 1, false, 100, None, t0);
    subscribe(&mut r, "c", 1, "t", QoS::AtLeastOnce, t0);
    let (acc, mut new) = connect(&mut r, "c", 2, false, 100, None, t0);
    assert!(acc.session_present);
    assert_eq!(old.kick.try_recv(), Ok(ReasonCode::SESSION_TAKEN_OVER));
    // The old connection reports its end after the takeover: ignored.
    drop_conn(&mut r, "c", 1, DisconnectKind::WithWill, t0);
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: PacketId::new(9),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"x"),
    };
    r.publish(None, p, t0, false);
    assert_eq!(
        topics(&mut new),
        vec!["t"],
        "the new connection still gets it"
    );
}

#[test]
fn offline_queue_redelivered_on_resume_and_expiry_sweeps() {
    let t0 = Instant::now();
    let mut r = router();
    let (_, _c) = connect(&mut r, "c", 1, false, 10, None, t0);
    subscribe(&mut r, "c", 1, "t/#", QoS::ExactlyOnce, t0);
    drop_conn(&mut r, "c", 1, DisconnectKind::Normal, t0);
    for i in 0..3 {
        let p = Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: format!("t/{i}"),
            packet_id: PacketId::new(1),
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"x"),
        };
        r.publish(None, p, t0, false);
    }
    let (acc, mut c) = connect(&mut r, "c", 2, false, 10, None, t0 + Duration::from_secs(5));
    assert!(acc.session_present);
    assert_eq!(topics(&mut c), vec!["t/0", "t/1", "t/2"]);
    drop_conn(
        &mut r,
        "c",
        2,
        DisconnectKind::Normal,
        t0 + Duration::from_secs(5),
    );
    r.tick(at(t0 + Duration::from_secs(14)));
    assert_eq!(r.session_count(), 1);
    r.tick(at(t0 + Duration::from_secs(15)));
    assert_eq!(r.session_count(), 0, "expired 10 s after the disconnect");
}

fn publish_packet(topic: &str, qos: QoS, pid: u16, retain: bool) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: PacketId::new(pid).filter(|_| qos != QoS::AtMostOnce),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"x"),
    }
}

fn replies(c: &mut TestConn) -> usize {
    let mut n = 0;
    while let Some(o) = c.outbox.try_recv() {
        n += usize::from(matches!(o, Outgoing::Reply(_)));
    }
    n
}

/// Review finding: a takeover of a subscriber that was holding publishers
/// back kept their acks held (its stall deadline went with `unschedule`), so
/// a new connection that never reads held them for ever.
#[test]
fn takeover_releases_the_publishers_a_full_subscriber_held() {
    let t0 = Instant::now();
    let mut cfg = Config::default();
    cfg.limits.max_queued_messages = 5;
    let mut r = Router::new(&cfg, Arc::new(Metrics::default()), Clock::read());
    let (_, _sub) = connect(&mut r, "sub", 1, false, 100, None, t0);
    subscribe(&mut r, "sub", 1, "t", QoS::AtLeastOnce, t0);
    let (_, mut publ) = connect(&mut r, "pub", 2, true, 0, None, t0);
    for pid in 1..=30 {
        r.publish_from_client(
            &"pub".into(),
            2,
            publish_packet("t", QoS::AtLeastOnce, pid, false),
            t0,
        );
    }
    let acked = replies(&mut publ);
    assert!(acked < 30, "some acks are held ({acked} of 30 sent)");
    let (_, _sub2) = connect(&mut r, "sub", 3, false, 100, None, t0);
    r.tick(at(t0 + Duration::from_secs(3600)));
    assert_eq!(
        acked + replies(&mut publ),
        30,
        "all acks released by the takeover"
    );
}

/// Only what a shared subscription gave a member is handed on when it goes:
/// not its copy from a plain subscription to the same topic (review finding:
/// the group got the message twice).
#[test]
fn only_shared_deliveries_are_handed_on() {
    let t0 = Instant::now();
    let mut r = router();
    let (_, _a) = connect(&mut r, "a", 1, true, 0, None, t0);
    subscribe(&mut r, "a", 1, "$share/g/t", QoS::AtLeastOnce, t0);
    subscribe(&mut r, "a", 1, "t", QoS::AtLeastOnce, t0);
    let (_, mut b) = connect(&mut r, "b", 2, true, 0, None, t0);
    subscribe(&mut r, "b", 2, "$share/g/t", QoS::AtLeastOnce, t0);
    for round in 0..2u16 {
        r.publish(
            None,
            publish_packet("t", QoS::AtLeastOnce, round + 1, false),
            t0,
            false,
        );
    }
    // Two messages: the group gave one to each member; A also has both
    // through its plain subscription.
    assert_eq!(topics(&mut b).len(), 1);
    drop_conn(&mut r, "a", 1, DisconnectKind::WithWill, t0);
    assert_eq!(topics(&mut b).len(), 1, "only A's shared one is handed on");
}

/// Review finding: a takeover removed the QoS 0 retained backlog's wake-up
/// but left it marked as scheduled, so the rest was never sent.
#[test]
fn qos0_retained_backlog_goes_on_after_a_takeover() {
    let t0 = Instant::now();
    let mut r = router();
    for i in 0..2000 {
        r.publish(
            None,
            publish_packet(&format!("r/{i}"), QoS::AtMostOnce, 0, true),
            t0,
            false,
        );
    }
    let (_, mut first) = connect(&mut r, "s", 1, false, 100, None, t0);
    subscribe(&mut r, "s", 1, "r/#", QoS::AtMostOnce, t0);
    let mut got = topics(&mut first).len();
    let (_, mut second) = connect(&mut r, "s", 2, false, 100, None, t0);
    let mut now = t0;
    for _ in 0..1000 {
        got += topics(&mut second).len();
        if got >= 2000 {
            break;
        }
        now += Duration::from_millis(20);
        r.tick(at(now));
    }
    assert_eq!(got, 2000, "every retained message arrived");
}

/// Every connected or offline client costs one `Client` in the router's map:
/// keep it small (wills and rarely used parts are boxed).
#[test]
fn client_record_stays_small() {
    let c = std::mem::size_of::<Client>();
    let s = std::mem::size_of::<Session>();
    eprintln!(
        "Client: {c} bytes, Session: {s}, LastWill: {}",
        std::mem::size_of::<LastWill>()
    );
    assert!(c <= 512, "Client grew to {c} bytes");
}
