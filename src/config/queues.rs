//! The `[[queues]]` section: work queues declared in the configuration, their
//! options, defaults and checks. A declared queue exists (and collects the
//! messages of its `topics`) from the start, whether or not a consumer is
//! connected; its dead-letter queue is declared with it.

use super::{de_duration, ConfigError};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

/// The longest queue name: it is one topic level of `$queue/<name>`.
pub const MAX_QUEUE_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Consumed as `$queue/<name>`: one topic level, no wildcards.
    pub name: String,
    /// Topic filters whose messages the queue collects.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Unacknowledged messages one consumer may hold (capped by its Receive
    /// Maximum).
    #[serde(default = "d_prefetch")]
    pub prefetch: u16,
    /// Deliveries after which an unacknowledged message is dead-lettered.
    #[serde(default = "d_max_deliveries")]
    pub max_deliveries: u16,
    #[serde(default = "d_retry_delay", deserialize_with = "de_duration")]
    pub retry_delay: Duration,
    #[serde(default = "d_retry_delay_max", deserialize_with = "de_duration")]
    pub retry_delay_max: Duration,
    /// Visibility timeout; none by default (a delivery waits for its consumer
    /// while it is connected).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ack_timeout: Option<Duration>,
    /// Nack reason codes that dead-letter at once.
    #[serde(default = "d_reject_codes")]
    pub reject_codes: Vec<u8>,
    /// The dead-letter queue; `"<name>-dlq"` when not set, none when `""`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub dedup_window: Option<Duration>,
    /// `topic`, `topic-level:N` or `user-property:NAME`.
    #[serde(default)]
    pub ordering_key: Option<String>,
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    #[serde(default = "d_max_bytes")]
    pub max_bytes: u64,
    /// `reject`, `drop-head` or `dead-letter`.
    #[serde(default = "d_overflow")]
    pub overflow: String,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub message_ttl: Option<Duration>,
    /// Not a config option: set for a bridge's buffer without `buffer_qos0`,
    /// which takes QoS 0 messages only while its link is up.
    #[serde(skip)]
    pub qos0_while_up: bool,
}

fn d_prefetch() -> u16 {
    16
}
fn d_max_deliveries() -> u16 {
    5
}
fn d_retry_delay() -> Duration {
    Duration::from_secs(1)
}
fn d_retry_delay_max() -> Duration {
    Duration::from_secs(60)
}
fn d_reject_codes() -> Vec<u8> {
    // 0x99 Payload format invalid, 0x83 Implementation specific error.
    vec![0x99, 0x83]
}
fn d_max_length() -> usize {
    1_000_000
}
fn d_max_bytes() -> u64 {
    1 << 30
}
fn d_overflow() -> String {
    "reject".into()
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

impl QueueConfig {
    /// A queue named `name` with every default (a dead-letter queue, or one a
    /// client creates by subscribing).
    pub fn named(name: &str) -> QueueConfig {
        QueueConfig {
            name: name.into(),
            topics: Vec::new(),
            prefetch: d_prefetch(),
            max_deliveries: d_max_deliveries(),
            retry_delay: d_retry_delay(),
            retry_delay_max: d_retry_delay_max(),
            ack_timeout: None,
            reject_codes: d_reject_codes(),
            dead_letter: None,
            dedup_window: None,
            ordering_key: None,
            max_length: d_max_length(),
            max_bytes: d_max_bytes(),
            overflow: d_overflow(),
            message_ttl: None,
            qos0_while_up: false,
        }
    }

    /// The name of this queue's dead-letter queue, if it has one.
    pub fn dead_letter_name(&self) -> Option<String> {
        match &self.dead_letter {
            None => Some(format!("{}-dlq", self.name)),
            Some(n) if n.is_empty() => None,
            Some(n) => Some(n.clone()),
        }
    }
}

/// Is `name` usable as a queue name (one topic level of `$queue/<name>`)?
pub fn valid_queue_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_QUEUE_NAME {
        return Err("must be at most 128 bytes");
    }
    if name.contains(['/', '+', '#', '\0']) {
        return Err("must not contain '/', '+', '#' or NUL (it is one topic level)");
    }
    Ok(())
}

/// The `[[queues]]` checks of `Config::validate`.
pub(super) fn validate(
    queues: &[QueueConfig],
    topic_limits: crate::topic::TopicLimits,
    errs: &mut Vec<ConfigError>,
) {
    let mut err = |i: usize, key: &str, msg: String| {
        errs.push(ConfigError {
            key: format!("queues[{i}].{key}"),
            message: msg,
        })
    };
    let mut names = std::collections::HashSet::new();
    for (i, q) in queues.iter().enumerate() {
        if let Err(e) = valid_queue_name(&q.name) {
            err(i, "name", e.into());
        } else if !names.insert(q.name.as_str()) {
            err(i, "name", format!("{:?} is declared twice", q.name));
        }
        for f in &q.topics {
            if let Err(e) = crate::topic::FilterSpec::parse(f, topic_limits) {
                err(
                    i,
                    "topics",
                    format!("{f:?} is not a valid topic filter: {e}"),
                );
            } else if f.starts_with("$share/") || f.starts_with("$queue/") {
                err(
                    i,
                    "topics",
                    format!("{f:?}: a queue binds plain topic filters"),
                );
            }
        }
        if q.prefetch == 0 {
            err(i, "prefetch", "must be at least 1".into());
        }
        if q.max_deliveries == 0 {
            err(i, "max_deliveries", "must be at least 1".into());
        }
        if q.retry_delay_max < q.retry_delay {
            err(i, "retry_delay_max", "must be at least retry_delay".into());
        }
        if q.ack_timeout.is_some_and(|t| t.is_zero()) {
            err(
                i,
                "ack_timeout",
                "must be more than zero (or not set)".into(),
            );
        }
        if let Some(dl) = q.dead_letter.as_deref().filter(|d| !d.is_empty()) {
            if let Err(e) = valid_queue_name(dl) {
                err(i, "dead_letter", e.into());
            } else if dl == q.name {
                err(i, "dead_letter", "must not be the queue itself".into());
            }
        }
        if q.ordering_key
            .as_deref()
            .is_some_and(|k| crate::queue::OrderingKey::parse(k).is_none())
        {
            err(
                i,
                "ordering_key",
                "must be \"topic\", \"topic-level:N\" or \"user-property:NAME\"".into(),
            );
        }
        if q.max_length == 0 {
            err(i, "max_length", "must be at least 1".into());
        }
        if q.max_bytes == 0 {
            err(i, "max_bytes", "must be at least 1".into());
        }
        if crate::queue::Overflow::parse(&q.overflow).is_none() {
            err(
                i,
                "overflow",
                "must be \"reject\", \"drop-head\" or \"dead-letter\"".into(),
            );
        }
        if q.dedup_window.is_some_and(|t| t.is_zero()) {
            err(
                i,
                "dedup_window",
                "must be more than zero (or not set)".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{check_str, Config};

    fn errors(text: &str) -> Vec<String> {
        check_str(text).0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_declared_queue_gets_the_defaults() {
        let cfg: Config = toml::from_str(
            r#"
            [[queues]]
            name = "jobs"
            topics = ["jobs/#"]
            ack_timeout = "30s"
            "#,
        )
        .expect("valid");
        let q = &cfg.queues[0];
        assert_eq!(q.name, "jobs");
        assert_eq!((q.prefetch, q.max_deliveries), (16, 5));
        assert_eq!(q.ack_timeout, Some(std::time::Duration::from_secs(30)));
        assert_eq!(q.dead_letter_name().as_deref(), Some("jobs-dlq"));
        assert_eq!(q.overflow, "reject");
        assert!(errors("[[queues]]\nname = \"jobs\"\ndead_letter = \"\"").is_empty());
    }

    #[test]
    fn bad_queue_options_are_reported_with_their_keys() {
        let got = errors(
            r#"
            [[queues]]
            name = "a/b"
            topics = ["x/#/y"]
            prefetch = 0
            overflow = "lose"
            ordering_key = "partition"
            colour = "blue"
            "#,
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("queues[0].colour: unknown key")),
            "{got:?}"
        );
        let got = errors(
            r#"
            [[queues]]
            name = "a/b"
            topics = ["x/#/y"]
            prefetch = 0
            overflow = "lose"
            ordering_key = "partition"
            retry_delay = "10s"
            retry_delay_max = "1s"
            [[queues]]
            name = "ok"
            [[queues]]
            name = "ok"
            dead_letter = "ok"
            "#,
        );
        for key in [
            "queues[0].name",
            "queues[0].topics",
            "queues[0].prefetch",
            "queues[0].overflow",
            "queues[0].ordering_key",
            "queues[0].retry_delay_max",
            "queues[2].name",
            "queues[2].dead_letter",
        ] {
            assert!(got.iter().any(|e| e.starts_with(key)), "{key} in {got:?}");
        }
        assert!(errors("[[queues]]\ntopics = [\"a\"]")
            .iter()
            .any(|e| e.starts_with("queues[0].name: missing")));
    }
}
