//! Unit tests of the queue core with fake time: dispatch and credit, acks,
//! nacks with backoff, dead-lettering, consumers leaving, ack timeouts, ordering
//! keys, deduplication, overflow, TTL.

use super::*;
use std::time::Duration;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn entry(id: MsgId) -> Entry {
    Entry {
        id,
        bytes: 100,
        enqueued_ms: 1_000 + id,
        ..Entry::default()
    }
}

fn keyed(id: MsgId, key: &str) -> Entry {
    Entry {
        key: key_hash(key),
        ..entry(id)
    }
}

fn queue(policy: QueuePolicy) -> Queue<&'static str> {
    Queue::new(policy, Instant::now())
}

fn fill(q: &mut Queue<&'static str>, ids: impl IntoIterator<Item = MsgId>, now: Instant) {
    let mut out = Vec::new();
    for id in ids {
        assert_eq!(q.enqueue(entry(id), None, now, &mut out), Enqueued::Taken);
    }
    assert!(out.is_empty());
}

/// Deliveries in `out`, as (consumer, id, delivery count).
fn delivered(out: &mut Vec<Action<&'static str>>) -> Vec<(&'static str, MsgId, u16)> {
    let mut v = Vec::new();
    out.retain(|a| match a {
        Action::Deliver { to, entry } => {
            v.push((*to, entry.id, entry.deliveries));
            false
        }
        _ => true,
    });
    v
}

fn dead(out: &mut Vec<Action<&'static str>>) -> Vec<(MsgId, DeadReason, u16)> {
    let mut v = Vec::new();
    out.retain(|a| match a {
        Action::DeadLetter { entry, reason } => {
            v.push((entry.id, *reason, entry.deliveries));
            false
        }
        _ => true,
    });
    v
}

#[test]
fn each_message_goes_to_one_consumer_within_its_credit_least_busy_first() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        prefetch: 2,
        ..Default::default()
    });
    fill(&mut q, 1..=6, t);
    q.attach("a", 10); // capped by prefetch 2
    q.attach("b", 1); // its Receive Maximum is 1
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    let got = delivered(&mut out);
    assert_eq!(got.len(), 3, "a holds 2, b holds 1: {got:?}");
    assert_eq!(got.iter().filter(|d| d.0 == "a").count(), 2);
    assert_eq!(got.iter().filter(|d| d.0 == "b").count(), 1);
    // Alternating while both have room: the least busy first.
    assert_eq!(got.first().map(|d| d.0), Some("a"));
    assert_eq!(got.get(1).map(|d| d.0), Some("b"));
    assert_eq!(q.stats().in_flight, 3);
    assert_eq!(q.stats().depth, 3);

    // An ack frees credit; the next message goes out in order.
    let (to, id, _) = got[0];
    assert_eq!(q.ack(&to, id).map(|e| e.id), Some(1));
    assert_eq!(q.ack(&to, id), None, "acked once");
    assert_eq!(got.get(1).map(|d| d.1), Some(2));
    assert_eq!(q.ack(&"a", 2), None, "message 2 is b's, not a's");
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![(to, 4, 1)]);
    let st = q.stats();
    assert_eq!((st.counters.enqueued, st.counters.acked), (6, 1));
    assert_eq!(st.bytes, 500);
}

#[test]
fn a_nacked_message_comes_back_after_a_growing_delay_then_dead_letters() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        max_deliveries: 3,
        retry_delay: s(1),
        retry_delay_max: s(60),
        ..Default::default()
    });
    fill(&mut q, [1, 2], t);
    q.attach("a", 1);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("a", 1, 1)]);
    assert!(q.nack(&"a", 1, 0x80, t, &mut out));
    // Its retry waits 1 s; meanwhile the next message goes.
    q.tick(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("a", 2, 1)]);
    assert!(q.ack(&"a", 2).is_some());
    q.tick(t + Duration::from_millis(999), &mut out);
    assert!(out.is_empty(), "not before its delay");
    assert_eq!(q.next_deadline(), Some(t + s(1)));
    q.tick(t + s(1), &mut out);
    assert_eq!(delivered(&mut out), vec![("a", 1, 2)]);
    // Second nack: 2 s.
    assert!(q.nack(&"a", 1, 0x80, t + s(1), &mut out));
    q.tick(t + s(2), &mut out);
    assert!(out.is_empty());
    q.tick(t + s(3), &mut out);
    assert_eq!(delivered(&mut out), vec![("a", 1, 3)]);
    // Third delivery was the last: a nack dead-letters it.
    assert!(q.nack(&"a", 1, 0x80, t + s(3), &mut out));
    assert_eq!(dead(&mut out), vec![(1, DeadReason::MaxDeliveries, 3)]);
    assert!(q.is_empty());
    let st = q.stats();
    assert_eq!(
        (
            st.counters.nacked,
            st.counters.dead_lettered,
            st.counters.redelivered
        ),
        (3, 1, 2)
    );
    assert_eq!(st.bytes, 0);
}

#[test]
fn a_reject_code_dead_letters_at_once() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy::default());
    fill(&mut q, [1], t);
    q.attach("a", 5);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert!(!q.nack(&"b", 1, 0x99, t, &mut out), "not b's message");
    assert!(q.nack(&"a", 1, 0x99, t, &mut out));
    assert_eq!(dead(&mut out), vec![(1, DeadReason::Rejected, 1)]);
}

#[test]
fn a_consumer_that_leaves_gives_its_messages_to_another_in_order_counted() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        max_deliveries: 2,
        ..Default::default()
    });
    fill(&mut q, 1..=4, t);
    q.attach("a", 3);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out).len(), 3);
    q.attach("b", 10);
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("b", 4, 1)]);
    q.detach(&"a", t, &mut out);
    q.dispatch(t, &mut out);
    assert_eq!(
        delivered(&mut out),
        vec![("b", 1, 2), ("b", 2, 2), ("b", 3, 2)],
        "first in line again, in order, delivery 2"
    );
    // b dies too: each was delivered max_deliveries times (a poison message
    // that kills its consumers ends there as well).
    q.detach(&"b", t, &mut out);
    let mut d = dead(&mut out);
    d.sort_by_key(|x| x.0);
    assert_eq!(
        d,
        vec![
            (1, DeadReason::MaxDeliveries, 2),
            (2, DeadReason::MaxDeliveries, 2),
            (3, DeadReason::MaxDeliveries, 2)
        ]
    );
    assert_eq!(q.stats().depth, 1, "message 4 (one delivery) waits");
    assert_eq!(q.consumers(), 0);
}

#[test]
fn past_its_ack_timeout_a_message_goes_to_another_consumer_and_a_late_ack_is_ignored() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        ack_timeout: Some(s(30)),
        ..Default::default()
    });
    fill(&mut q, [1], t);
    q.attach("slow", 1);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("slow", 1, 1)]);
    q.attach("fast", 1);
    assert_eq!(q.next_deadline(), Some(t + s(30)));
    q.tick(t + s(29), &mut out);
    assert!(out.is_empty());
    q.tick(t + s(30), &mut out);
    // Back first in line; "fast" has room and holds fewer.
    assert_eq!(delivered(&mut out), vec![("fast", 1, 2)]);
    assert_eq!(q.ack(&"slow", 1), None, "slow's late ack does not count");
    assert!(q.ack(&"fast", 1).is_some());
    assert!(q.is_empty());
}

#[test]
fn an_ordering_key_keeps_publish_order_under_four_parallel_consumers() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        ordering: Some(OrderingKey::UserProperty("device".into())),
        prefetch: 4,
        ..Default::default()
    });
    let mut out = Vec::new();
    let devices = ["d0", "d1", "d2"];
    for id in 1..=30u64 {
        let key = devices[(id % 3) as usize];
        assert_eq!(
            q.enqueue(keyed(id, key), None, t, &mut out),
            Enqueued::Taken
        );
    }
    for c in ["c1", "c2", "c3", "c4"] {
        q.attach(c, 4);
    }
    let mut seen: Vec<Vec<MsgId>> = vec![Vec::new(); 3];
    let mut nacked_once = false;
    for round in 0..200 {
        q.tick(t + s(round), &mut out);
        let batch = delivered(&mut out);
        let keys: Vec<u64> = batch.iter().map(|d| d.1 % 3).collect();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            keys.len(),
            unique.len(),
            "one message per key at a time: {batch:?}"
        );
        for (c, id, _) in batch {
            // Nack one message once: its redelivery must still come before the
            // later messages of its key.
            if id == 4 && !nacked_once {
                nacked_once = true;
                assert!(q.nack(&c, id, 0x80, t + s(round), &mut out));
                continue;
            }
            seen[(id % 3) as usize].push(id);
            assert!(q.ack(&c, id).is_some());
        }
        if q.is_empty() {
            break;
        }
    }
    assert!(q.is_empty(), "all delivered");
    for (k, ids) in seen.iter().enumerate() {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, &sorted, "key {k} in publish order");
        assert_eq!(ids.len(), 10);
    }
}

#[test]
fn a_repeated_message_id_within_the_window_is_taken_once() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        dedup_window: Some(s(300)),
        ..Default::default()
    });
    let mut out = Vec::new();
    assert_eq!(
        q.enqueue(entry(1), Some("m-1"), t, &mut out),
        Enqueued::Taken
    );
    assert_eq!(
        q.enqueue(entry(2), Some("m-1"), t + s(299), &mut out),
        Enqueued::Duplicate
    );
    assert_eq!(
        q.enqueue(entry(3), Some("m-2"), t + s(299), &mut out),
        Enqueued::Taken
    );
    assert_eq!(
        q.enqueue(entry(4), None, t + s(299), &mut out),
        Enqueued::Taken,
        "no id: no dedup"
    );
    assert_eq!(
        q.enqueue(entry(5), Some("m-1"), t + s(300), &mut out),
        Enqueued::Taken,
        "window over"
    );
    assert_eq!(q.len(), 4);
    assert_eq!(q.stats().counters.duplicates, 1);
}

#[test]
fn each_overflow_policy_at_the_caps() {
    let t = Instant::now();
    for overflow in [Overflow::Reject, Overflow::DropHead, Overflow::DeadLetter] {
        let mut q = queue(QueuePolicy {
            max_length: 3,
            max_bytes: 1_000,
            overflow,
            ..Default::default()
        });
        fill(&mut q, 1..=3, t);
        let mut out = Vec::new();
        let r = q.enqueue(entry(4), None, t, &mut out);
        match overflow {
            Overflow::Reject => {
                assert_eq!(r, Enqueued::Refused);
                assert!(out.is_empty());
                assert_eq!(q.stats().counters.refused, 1);
            }
            Overflow::DropHead => {
                assert_eq!(r, Enqueued::Taken);
                assert_eq!(out, vec![Action::Drop { entry: entry(1) }]);
                assert_eq!(q.stats().counters.dropped, 1);
            }
            Overflow::DeadLetter => {
                assert_eq!(r, Enqueued::Taken);
                assert_eq!(dead(&mut out), vec![(1, DeadReason::Overflow, 0)]);
            }
        }
        assert_eq!(q.len(), 3, "{overflow:?}");
        // Bytes count too; one message over max_bytes alone never fits.
        let big = Entry {
            bytes: 1_001,
            ..entry(9)
        };
        assert_eq!(q.enqueue(big, None, t, &mut out), Enqueued::Refused);
    }
    // With everything in flight there is nothing to drop: refused.
    let mut q = queue(QueuePolicy {
        max_length: 1,
        overflow: Overflow::DropHead,
        ..Default::default()
    });
    fill(&mut q, [1], t);
    q.attach("a", 1);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert_eq!(q.enqueue(entry(2), None, t, &mut out), Enqueued::Refused);
}

#[test]
fn expired_messages_dead_letter_on_time_even_without_consumers() {
    let t = Instant::now();
    let mut q = Queue::new(
        QueuePolicy {
            message_ttl: Some(s(60)),
            ..Default::default()
        },
        t,
    );
    let mut out = Vec::new();
    q.enqueue(entry(1), None, t, &mut out);
    // A v5 Message Expiry shorter than the TTL wins.
    let short = Entry {
        expires: q.expiry(Some(t + s(10))),
        ..entry(2)
    };
    q.enqueue(short, None, t + s(5), &mut out);
    q.enqueue(entry(3), None, t + s(30), &mut out);
    assert_eq!(q.next_deadline(), Some(t + s(60)), "the head's expiry");
    // Message 2 expires first but behind the head: the sweep finds it.
    q.sweep_expired(t + s(10), &mut out);
    assert_eq!(dead(&mut out), vec![(2, DeadReason::Expired, 0)]);
    q.tick(t + s(60), &mut out);
    assert_eq!(dead(&mut out), vec![(1, DeadReason::Expired, 0)]);
    assert_eq!(q.next_deadline(), Some(t + s(90)));
    // A consumer never gets an expired message.
    q.attach("a", 5);
    q.dispatch(t + s(95), &mut out);
    assert_eq!(dead(&mut out), vec![(3, DeadReason::Expired, 0)]);
    assert!(delivered(&mut out).is_empty());
    assert_eq!(q.stats().counters.expired, 3);
    assert_eq!(q.stats().bytes, 0);
}

#[test]
fn an_entry_is_32_bytes_and_keeps_expiry_to_a_tenth_of_a_second() {
    assert_eq!(std::mem::size_of::<Entry>(), 32);
    let t = Instant::now();
    let ticks = expiry_ticks(t, Some(t + Duration::from_millis(250)));
    let e = Entry {
        expires: ticks,
        ..entry(1)
    };
    // Rounded up: never early, at most a tick late.
    assert_eq!(e.expires_at(t), Some(t + Duration::from_millis(300)));
    assert_eq!(expiry_ticks(t, None), 0, "never");
    assert_eq!(expiry_ticks(t, Some(t)), 1, "due now: at the next tick");
}

#[test]
fn purge_peek_and_stats() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        retry_delay: s(5),
        ..Default::default()
    });
    fill(&mut q, 1..=5, t);
    assert_eq!(
        q.peek(2).iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    q.attach("a", 2);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out).len(), 2);
    assert!(q.nack(&"a", 1, 0x80, t, &mut out));
    let st = q.stats();
    assert_eq!((st.depth, st.in_flight, st.consumers), (4, 1, 1));
    assert_eq!(
        st.oldest_enqueued_ms,
        Some(1_001),
        "the delayed message is the oldest"
    );
    let gone: Vec<MsgId> = {
        let mut v: Vec<_> = q.purge().iter().map(|e| e.id).collect();
        v.sort();
        v
    };
    assert_eq!(gone, vec![1, 3, 4, 5], "waiting ones; 2 stays in flight");
    assert_eq!(q.stats().bytes, 100);
    q.tick(t + s(10), &mut out);
    assert!(out.is_empty(), "the purged retry does not come back");
    assert!(q.ack(&"a", 2).is_some());
    assert!(q.is_empty());
}

#[test]
fn a_message_given_back_goes_first_uncounted_and_pauses_its_consumer() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy::default());
    fill(&mut q, [1, 2, 3], t);
    q.attach("a", 5);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out).len(), 3);
    assert!(q.give_back(&"a", 3));
    q.dispatch(t, &mut out);
    assert!(out.is_empty(), "paused until it acks");
    assert!(q.ack(&"a", 1).is_some());
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("a", 3, 1)], "not counted twice");
}

#[test]
fn take_ready_moves_the_oldest_out() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy::default());
    fill(&mut q, 1..=4, t);
    let taken: Vec<MsgId> = q.take_ready(3).iter().map(|e| e.id).collect();
    assert_eq!(taken, vec![1, 2, 3]);
    assert_eq!(q.len(), 1);
    assert_eq!(q.stats().bytes, 100);
    assert_eq!(q.take_ready(10).len(), 1);
    assert!(q.take_ready(10).is_empty());
}

#[test]
fn review_findings_in_the_core() {
    let t = Instant::now();
    // A refused message's id is not remembered: its retry is taken.
    let mut q = queue(QueuePolicy {
        dedup_window: Some(s(60)),
        max_length: 1,
        ..Default::default()
    });
    let mut out = Vec::new();
    assert_eq!(q.enqueue(entry(1), Some("a"), t, &mut out), Enqueued::Taken);
    assert_eq!(
        q.enqueue(entry(2), Some("b"), t, &mut out),
        Enqueued::Refused
    );
    q.attach("c", 1);
    q.dispatch(t, &mut out);
    assert!(q.ack(&"c", 1).is_some());
    assert_eq!(
        q.enqueue(entry(2), Some("b"), t, &mut out),
        Enqueued::Taken,
        "b is new"
    );

    // Drop-head never drops when the new message cannot fit anyway.
    let mut q = queue(QueuePolicy {
        max_bytes: 250,
        overflow: Overflow::DropHead,
        ..Default::default()
    });
    fill(&mut q, [1, 2], t);
    q.attach("c", 1);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    out.clear();
    let big = Entry {
        bytes: 200,
        ..entry(3)
    };
    assert_eq!(q.enqueue(big, None, t, &mut out), Enqueued::Refused);
    assert!(
        out.is_empty(),
        "nothing dropped for a message that cannot fit"
    );
    assert_eq!(q.len(), 2);

    // A message restored at max_deliveries is dead-lettered, not delivered.
    let mut q = queue(QueuePolicy {
        max_deliveries: 2,
        ..Default::default()
    });
    q.restore(
        Entry {
            deliveries: 2,
            ..entry(7)
        },
        None,
        t,
    );
    q.attach("c", 1);
    let mut out = Vec::new();
    q.dispatch(t, &mut out);
    assert_eq!(dead(&mut out), vec![(7, DeadReason::MaxDeliveries, 2)]);

    // A message put back by a redrive leaves its key busy while another of
    // the key is out.
    let mut q = queue(QueuePolicy {
        ordering: Some(OrderingKey::Topic),
        ..Default::default()
    });
    let mut out = Vec::new();
    q.enqueue(keyed(1, "k"), None, t, &mut out);
    q.enqueue(keyed(2, "k"), None, t, &mut out);
    q.attach("c", 5);
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("c", 1, 1)]);
    let taken = q.take_ready(1);
    q.put_back(taken[0]);
    q.dispatch(t, &mut out);
    assert!(delivered(&mut out).is_empty(), "2 waits for 1");
    assert!(q.ack(&"c", 1).is_some());
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("c", 2, 1)]);
}

#[test]
fn a_new_policy_applies_to_what_comes_next_and_drops_nothing() {
    let t = Instant::now();
    let mut q = queue(QueuePolicy {
        max_length: 5,
        ..Default::default()
    });
    fill(&mut q, 1..=5, t);
    // Smaller caps: the five stay, the next one is refused.
    let smaller = QueuePolicy {
        max_length: 2,
        overflow: Overflow::Reject,
        max_deliveries: 1,
        ..Default::default()
    };
    assert_eq!(q.set_policy(smaller), Ok(()));
    assert_eq!(q.len(), 5);
    let mut out = Vec::new();
    assert_eq!(q.enqueue(entry(6), None, t, &mut out), Enqueued::Refused);
    // The new max_deliveries holds: one refused delivery dead-letters.
    q.attach("a", 1);
    q.dispatch(t, &mut out);
    assert_eq!(delivered(&mut out), vec![("a", 1, 1)]);
    q.nack(&"a", 1, 0x80, t, &mut out);
    assert_eq!(dead(&mut out), vec![(1, DeadReason::MaxDeliveries, 1)]);
    // The ordering key stays while the queue holds messages...
    let ordered = QueuePolicy {
        ordering: Some(OrderingKey::Topic),
        ..Default::default()
    };
    assert!(q.set_policy(ordered.clone()).is_err());
    assert_eq!(q.policy().ordering, None);
    // ...and changes once it is empty.
    q.detach(&"a", t, &mut out);
    out.clear();
    q.purge();
    assert!(q.is_empty());
    assert_eq!(q.set_policy(ordered), Ok(()));
    assert_eq!(q.policy().ordering, Some(OrderingKey::Topic));
}
