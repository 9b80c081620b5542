//! A work queue's policy: how many unacknowledged messages a consumer holds, how
//! often a message is tried and how long between tries, when it is dead-lettered,
//! its caps and what happens past them, its ordering key. Pure values and the
//! decisions that follow from them alone (the retry schedule, the ordering key of
//! a message).

use crate::protocol::UserProperties;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// What a queue does with a message that would take it past `max_length` or
/// `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The new message is not taken: v5 publishers get 0x97 Quota exceeded.
    #[default]
    Reject,
    /// The oldest ready message is dropped (and counted) to make room.
    DropHead,
    /// The oldest ready message moves to the dead-letter queue (`overflow`).
    DeadLetter,
}

impl Overflow {
    /// Parse `reject`, `drop-head` or `dead-letter` (the config form).
    pub fn parse(s: &str) -> Option<Overflow> {
        match s {
            "reject" => Some(Overflow::Reject),
            "drop-head" => Some(Overflow::DropHead),
            "dead-letter" => Some(Overflow::DeadLetter),
            _ => None,
        }
    }
}

/// Which messages must be delivered in publish order, one at a time: those with
/// the same key (SQS FIFO message groups, Kafka partition keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderingKey {
    /// The whole topic.
    Topic,
    /// Topic level N (0-based); a topic with fewer levels has the empty key.
    TopicLevel(usize),
    /// The value of a user property; a message without it has the empty key.
    UserProperty(String),
}

impl OrderingKey {
    /// Parse `topic`, `topic-level:N` or `user-property:NAME` (the config form).
    pub fn parse(s: &str) -> Option<OrderingKey> {
        if s == "topic" {
            return Some(OrderingKey::Topic);
        }
        if let Some(n) = s.strip_prefix("topic-level:") {
            return n.parse().ok().map(OrderingKey::TopicLevel);
        }
        match s.strip_prefix("user-property:") {
            Some(name) if !name.is_empty() => Some(OrderingKey::UserProperty(name.to_string())),
            _ => None,
        }
    }

    /// The key text of a message on `topic` with `props`.
    pub fn key_of<'a>(&self, topic: &'a str, props: &'a UserProperties) -> &'a str {
        match self {
            OrderingKey::Topic => topic,
            OrderingKey::TopicLevel(n) => topic.split('/').nth(*n).unwrap_or(""),
            OrderingKey::UserProperty(name) => {
                props.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v)
            }
        }
    }
}

/// A key as the queue keeps it: a 32-bit hash (its text is not kept in
/// memory per message). Two keys that collide are ordered together, which only
/// costs parallelism, never order. Seeded per process so a peer cannot aim at
/// it.
pub fn key_hash(key: &str) -> Key {
    static SEED: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
    let mut h = SEED.get_or_init(Default::default).build_hasher();
    h.write(key.as_bytes());
    let x = h.finish();
    // Folded to 32 bits: two keys that collide share one order (less
    // parallelism, never a reordering), and the seed is new in every process
    // (the store keeps the key itself, not its hash).
    (x ^ (x >> 32)) as Key
}

/// An ordering key's hash (`Entry::key`).
pub type Key = u32;

#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Unacknowledged messages one consumer may hold (capped again by its
    /// Receive Maximum).
    pub prefetch: u16,
    /// Deliveries after which a message that is still not acknowledged moves to
    /// the dead-letter queue.
    pub max_deliveries: u16,
    /// Wait before a nacked message is delivered again; doubles per delivery up
    /// to `retry_delay_max`.
    pub retry_delay: Duration,
    pub retry_delay_max: Duration,
    /// Visibility timeout: a delivery not acknowledged within it goes to another
    /// consumer. None: a delivery waits for its consumer as long as it is connected.
    pub ack_timeout: Option<Duration>,
    /// Nack reason codes that dead-letter at once (`basic_reject(requeue=false)`).
    pub reject_codes: Vec<u8>,
    /// Messages and bytes the queue holds at most (ready, delayed and in flight).
    pub max_length: usize,
    pub max_bytes: u64,
    pub overflow: Overflow,
    /// How long a message may wait; past it it is dead-lettered (`expired`).
    pub message_ttl: Option<Duration>,
    /// A message whose `message-id` user property was seen within this window is
    /// acknowledged and not taken again.
    pub dedup_window: Option<Duration>,
    /// Ids remembered for deduplication at most (the window is also bounded in
    /// memory).
    pub dedup_max_ids: usize,
    pub ordering: Option<OrderingKey>,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            prefetch: 16,
            max_deliveries: 5,
            retry_delay: Duration::from_secs(1),
            retry_delay_max: Duration::from_secs(60),
            ack_timeout: None,
            // 0x99 Payload format invalid, 0x83 Implementation specific error.
            reject_codes: vec![0x99, 0x83],
            max_length: 1_000_000,
            max_bytes: 1 << 30,
            overflow: Overflow::Reject,
            message_ttl: None,
            dedup_window: None,
            dedup_max_ids: 100_000,
            ordering: None,
        }
    }
}

impl QueuePolicy {
    /// The policy a configured queue asks for (`Config::validate` has checked
    /// its values; one that does not parse falls back to the default).
    pub fn from_config(q: &crate::config::QueueConfig) -> QueuePolicy {
        QueuePolicy {
            prefetch: q.prefetch.max(1),
            max_deliveries: q.max_deliveries.max(1),
            retry_delay: q.retry_delay,
            retry_delay_max: q.retry_delay_max.max(q.retry_delay),
            ack_timeout: q.ack_timeout,
            reject_codes: q.reject_codes.clone(),
            max_length: q.max_length,
            max_bytes: q.max_bytes,
            overflow: Overflow::parse(&q.overflow).unwrap_or_default(),
            message_ttl: q.message_ttl,
            dedup_window: q.dedup_window,
            ordering: q.ordering_key.as_deref().and_then(OrderingKey::parse),
            ..QueuePolicy::default()
        }
    }

    /// The wait before delivery number `deliveries + 1` of a message nacked after
    /// its delivery number `deliveries` (>= 1): `retry_delay`, doubled for each
    /// delivery after the first, at most `retry_delay_max`.
    pub fn retry_after(&self, deliveries: u16) -> Duration {
        let doublings = u32::from(deliveries.saturating_sub(1)).min(31);
        self.retry_delay
            .checked_mul(1 << doublings)
            .unwrap_or(self.retry_delay_max)
            .min(self.retry_delay_max)
    }

    /// The ordering key (hashed) of `m` under this policy; 0 without one.
    pub fn key_of_message(&self, m: &crate::session::Message) -> Key {
        self.key_text(m).map_or(0, key_hash)
    }

    /// The ordering key of `m` under this policy, as text (what the store
    /// keeps with it); None without one (or an empty one: the same group as
    /// no key).
    pub fn key_text<'a>(&self, m: &'a crate::session::Message) -> Option<&'a str> {
        self.ordering
            .as_ref()
            .map(|k| k.key_of(&m.topic, &m.properties.user_properties))
            .filter(|k| !k.is_empty())
    }

    /// The dedup id of `m` (its `message-id` user property) when this policy
    /// deduplicates.
    pub fn dedup_id<'a>(&self, m: &'a crate::session::Message) -> Option<&'a str> {
        self.dedup_window?;
        message_id(m)
    }

    /// Does a nack with `code` dead-letter at once?
    pub fn rejects(&self, code: u8) -> bool {
        self.reject_codes.contains(&code)
    }
}

/// A message's `message-id` user property (what the dedup window compares).
pub fn message_id(m: &crate::session::Message) -> Option<&str> {
    m.properties
        .user_properties
        .iter()
        .find(|(k, _)| *k == "message-id")
        .map(|(_, v)| v)
}

/// What a message costs a queue's `max_bytes`.
pub fn message_bytes(m: &crate::session::Message) -> u32 {
    u32::try_from(m.cost()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_per_delivery_up_to_its_cap() {
        let p = QueuePolicy {
            retry_delay: Duration::from_millis(500),
            retry_delay_max: Duration::from_secs(5),
            ..Default::default()
        };
        let got: Vec<u128> = (1..=7).map(|n| p.retry_after(n).as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert_eq!(
            p.retry_after(u16::MAX),
            Duration::from_secs(5),
            "no overflow"
        );
    }

    #[test]
    fn ordering_keys_parse_and_pick_their_part_of_a_message() {
        assert_eq!(OrderingKey::parse("topic"), Some(OrderingKey::Topic));
        assert_eq!(
            OrderingKey::parse("topic-level:2"),
            Some(OrderingKey::TopicLevel(2))
        );
        assert_eq!(
            OrderingKey::parse("user-property:device"),
            Some(OrderingKey::UserProperty("device".into()))
        );
        for bad in ["", "topic-level:x", "user-property:", "partition"] {
            assert_eq!(OrderingKey::parse(bad), None, "{bad}");
        }
        let props: UserProperties = [("device", "pump-7")].into_iter().collect();
        let none = UserProperties::default();
        assert_eq!(OrderingKey::Topic.key_of("a/b/c", &none), "a/b/c");
        assert_eq!(OrderingKey::TopicLevel(1).key_of("a/b/c", &none), "b");
        assert_eq!(OrderingKey::TopicLevel(5).key_of("a/b/c", &none), "");
        let up = OrderingKey::UserProperty("device".into());
        assert_eq!(up.key_of("t", &props), "pump-7");
        assert_eq!(up.key_of("t", &none), "");
        assert_eq!(key_hash("pump-7"), key_hash("pump-7"));
        assert_ne!(key_hash("pump-7"), key_hash("pump-8"));
    }
}
