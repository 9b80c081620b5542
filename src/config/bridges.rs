//! The `[[bridges]]` section: links to remote brokers, their identity on the
//! remote, their topic mappings and the caps of their outgoing buffer, with
//! defaults and checks. A bridge with outgoing mappings owns a work queue,
//! `bridge-<name>` (its buffer: on disk, counted, retried, dead-lettered to
//! `<name>-dlq`), declared here like a `[[queues]]` entry.

use super::{de_duration, ConfigError, QueueConfig};
use crate::bridge::topics::{Direction, TopicMap};
use crate::protocol::{ProtocolVersion, QoS};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names its buffer (`bridge-<name>`), dead-letter queue (`<name>-dlq`)
    /// and local user (`bridge:<name>`).
    pub name: String,
    /// `host:port` of the remote broker.
    #[serde(default)]
    pub address: String,
    /// `"5"` or `"3.1.1"`.
    #[serde(default = "d_protocol")]
    pub protocol: String,
    /// The client id on the remote (`tern-<name>` when not set).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Read the password from this environment variable instead (a secret
    /// kept out of the file).
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "d_keepalive", deserialize_with = "de_duration")]
    pub keepalive: Duration,
    /// Start a new session on the remote at every link (false: keep it, so
    /// the remote holds what arrives for us while the link is down).
    #[serde(default)]
    pub clean_start: bool,
    /// Seconds the remote keeps our session (v5).
    #[serde(default = "d_session_expiry")]
    pub session_expiry: u32,
    /// Outgoing QoS 1/2 messages unacknowledged by the remote at once.
    #[serde(default = "d_max_inflight")]
    pub max_inflight: u16,
    /// Tries of a message the remote refuses before it is dead-lettered.
    #[serde(default = "d_max_deliveries")]
    pub max_deliveries: u16,
    /// The wait before a refused message is sent again, doubling up to
    /// `retry_delay_max`.
    #[serde(default = "d_retry_delay", deserialize_with = "de_duration")]
    pub retry_delay: Duration,
    #[serde(default = "d_retry_delay_max", deserialize_with = "de_duration")]
    pub retry_delay_max: Duration,
    #[serde(default = "d_buffer_max_messages")]
    pub buffer_max_messages: usize,
    #[serde(default = "d_buffer_max_bytes")]
    pub buffer_max_bytes: u64,
    /// A full buffer: `drop-oldest` or `drop-new` (counted either way).
    #[serde(default = "d_overflow")]
    pub overflow: String,
    /// Buffer QoS 0 messages while the link is down too. By default a QoS 0
    /// message goes out only while the link is up and is dropped (counted)
    /// while it is down: at most once, as its publisher asked.
    #[serde(default)]
    pub buffer_qos0: bool,
    #[serde(default)]
    pub topics: Vec<BridgeTopic>,
    /// TLS to the remote; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<BridgeTls>,
    /// The local user the bridge acts as, for the ACL (default
    /// `bridge:<name>`, which is also its local client id).
    #[serde(default)]
    pub local_user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// PEM file of the CA(s) the remote's certificate must chain to.
    #[serde(default)]
    pub ca: Option<std::path::PathBuf>,
    /// Our client certificate and key (PEM), for a remote that asks.
    #[serde(default)]
    pub cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
    /// The name the remote's certificate must carry (the address's host
    /// when not set).
    #[serde(default)]
    pub server_name: Option<String>,
    /// ALPN protocols, e.g. `["x-amzn-mqtt-ca"]` for AWS IoT Core on 443.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Accept any server certificate (test benches only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    pub filter: String,
    /// `out`, `in` or `both`.
    #[serde(default = "d_direction")]
    pub direction: String,
    #[serde(default = "d_qos")]
    pub qos: u8,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

fn d_protocol() -> String {
    "5".into()
}
fn d_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn d_session_expiry() -> u32 {
    24 * 3600
}
fn d_max_inflight() -> u16 {
    64
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
fn d_buffer_max_messages() -> usize {
    1_000_000
}
fn d_buffer_max_bytes() -> u64 {
    1 << 30
}
fn d_overflow() -> String {
    "drop-oldest".into()
}
fn d_direction() -> String {
    "out".into()
}
fn d_qos() -> u8 {
    1
}

impl BridgeConfig {
    pub fn version(&self) -> Option<ProtocolVersion> {
        match self.protocol.as_str() {
            "5" => Some(ProtocolVersion::V5),
            "3.1.1" => Some(ProtocolVersion::V311),
            _ => None,
        }
    }

    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("tern-{}", self.name))
    }

    /// The local identity of the bridge (its session, and its user for the ACL).
    /// Its local client id: `bridge:<name>`.
    pub fn local_client_id(&self) -> String {
        format!("bridge:{}", self.name)
    }

    /// The local user the ACL sees: `local_user`, else the client id.
    pub fn local_user(&self) -> String {
        self.local_user
            .clone()
            .unwrap_or_else(|| self.local_client_id())
    }

    /// The work queue that buffers what goes out.
    pub fn queue_name(&self) -> String {
        format!("bridge-{}", self.name)
    }

    /// The topic mappings, checked.
    pub fn maps(&self, limits: crate::topic::TopicLimits) -> Result<Vec<TopicMap>, String> {
        self.topics
            .iter()
            .map(|t| {
                let direction = Direction::parse(&t.direction)
                    .ok_or_else(|| format!("direction {:?}: out, in or both", t.direction))?;
                let qos = QoS::from_u8(t.qos).ok_or_else(|| format!("qos {}: 0, 1 or 2", t.qos))?;
                TopicMap::new(
                    &t.filter,
                    direction,
                    qos,
                    &t.local_prefix,
                    &t.remote_prefix,
                    limits,
                )
            })
            .collect()
    }

    /// The buffer's queue, when the bridge sends anything out.
    pub fn queue(&self, limits: crate::topic::TopicLimits) -> Option<QueueConfig> {
        let topics: Vec<String> = self
            .maps(limits)
            .ok()?
            .iter()
            .filter(|m| m.direction.outgoing())
            .map(|m| m.local_filter())
            .collect();
        if topics.is_empty() {
            return None;
        }
        let mut q = QueueConfig::named(&self.queue_name());
        q.topics = topics;
        q.prefetch = self.max_inflight.max(1);
        q.max_deliveries = self.max_deliveries.max(1);
        q.retry_delay = self.retry_delay;
        q.retry_delay_max = self.retry_delay_max.max(self.retry_delay);
        q.max_length = self.buffer_max_messages;
        q.max_bytes = self.buffer_max_bytes;
        q.overflow = match self.overflow.as_str() {
            "drop-new" => "reject".into(),
            _ => "drop-head".into(),
        };
        q.dead_letter = Some(format!("{}-dlq", self.name));
        // A refusal by the remote is retried (its code may be passing, e.g.
        // quota exceeded) up to max_deliveries: no code dead-letters at once.
        q.reject_codes = Vec::new();
        q.qos0_while_up = !self.buffer_qos0;
        Some(q)
    }
}

/// The `[[bridges]]` checks of `Config::validate`.
pub(super) fn validate(
    bridges: &[BridgeConfig],
    queues: &[QueueConfig],
    topic_limits: crate::topic::TopicLimits,
    errs: &mut Vec<ConfigError>,
) {
    let mut err = |i: usize, key: &str, msg: String| {
        errs.push(ConfigError {
            key: format!("bridges[{i}].{key}"),
            message: msg,
        })
    };
    let mut names = std::collections::HashSet::new();
    for (i, b) in bridges.iter().enumerate() {
        if let Err(e) = super::queues::valid_queue_name(&b.name) {
            err(i, "name", e.into());
        } else if !names.insert(b.name.as_str()) {
            err(i, "name", format!("{:?} is declared twice", b.name));
        }
        let taken = |n: &str| {
            queues
                .iter()
                .any(|q| q.name == n || q.dead_letter_name().as_deref() == Some(n))
        };
        if b.local_user.as_deref().is_some_and(str::is_empty) {
            err(i, "local_user", "must not be empty".into());
        }
        for n in [b.queue_name(), format!("{}-dlq", b.name)] {
            if taken(&n) {
                err(
                    i,
                    "name",
                    format!("its queue {n:?} is also declared in [[queues]]"),
                );
            }
        }
        match b.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => err(
                i,
                "address",
                format!("{:?}: must be \"host:port\"", b.address),
            ),
        }
        if b.version().is_none() {
            err(
                i,
                "protocol",
                format!("{:?}: \"5\" or \"3.1.1\"", b.protocol),
            );
        }
        if b.password.is_some() && b.password_env.is_some() {
            err(
                i,
                "password",
                "set password or password_env, not both".into(),
            );
        }
        if b.keepalive.as_secs() > u64::from(u16::MAX) {
            err(i, "keepalive", "must be at most 65535 s".into());
        }
        if let Some(t) = &b.tls {
            if t.cert.is_some() != t.key.is_some() {
                err(i, "tls", "cert and key go together".into());
            }
            if t.ca.is_none() && !t.insecure_skip_verify {
                err(
                    i,
                    "tls.ca",
                    "required: no root certificates are built in".into(),
                );
            }
            let cert_key = t.cert.as_deref().zip(t.key.as_deref());
            if let Err(e) = crate::tls::client_config(
                t.ca.as_deref(),
                cert_key,
                &t.alpn,
                t.insecure_skip_verify,
            ) {
                err(i, "tls", e.to_string());
            }
        }
        if b.max_inflight == 0 {
            err(i, "max_inflight", "must be at least 1".into());
        }
        if b.max_deliveries == 0 {
            err(i, "max_deliveries", "must be at least 1".into());
        }
        if b.retry_delay_max < b.retry_delay {
            err(i, "retry_delay_max", "must be at least retry_delay".into());
        }
        if !matches!(b.overflow.as_str(), "drop-oldest" | "drop-new") {
            err(
                i,
                "overflow",
                format!("{:?}: drop-oldest or drop-new", b.overflow),
            );
        }
        if b.topics.is_empty() {
            err(
                i,
                "topics",
                "a bridge needs at least one topic mapping".into(),
            );
        }
        if let Err(e) = b.maps(topic_limits) {
            err(i, "topics", e);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{check_str, Config};

    fn parse(text: &str) -> Result<Config, String> {
        let errs = check_str(text);
        if !errs.0.is_empty() {
            return Err(errs
                .0
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bridge_declares_its_buffer_queue() {
        let c = parse(
            r#"
[[bridges]]
name = "cloud"
address = "broker.example:8883"
topics = [{ filter = "sensors/#", remote_prefix = "gw1/" }, { filter = "cmd/#", direction = "in" }]
"#,
        )
        .expect("valid");
        let b = &c.bridges[0];
        assert_eq!(b.client_id(), "tern-cloud");
        let q = b.queue(c.topic_limits()).expect("it sends out");
        assert_eq!(q.name, "bridge-cloud");
        assert_eq!(q.topics, vec!["sensors/#".to_string()]);
        assert_eq!(q.dead_letter_name().as_deref(), Some("cloud-dlq"));
        assert!(c.all_queues().iter().any(|q| q.name == "bridge-cloud"));
    }

    #[test]
    fn bad_bridges_are_refused_with_the_key() {
        for (text, key) in [
            (
                r#"[[bridges]]
name = "a/b"
address = "h:1"
topics = [{ filter = "x" }]"#,
                "bridges[0].name",
            ),
            (
                r#"[[bridges]]
name = "a"
address = "nohost"
topics = [{ filter = "x" }]"#,
                "bridges[0].address",
            ),
            (
                r#"[[bridges]]
name = "a"
address = "h:1"
protocol = "4"
topics = [{ filter = "x" }]"#,
                "bridges[0].protocol",
            ),
            (
                r#"[[bridges]]
name = "a"
address = "h:1"
topics = [{ filter = "x", direction = "up" }]"#,
                "bridges[0].topics",
            ),
            (
                r#"[[bridges]]
name = "a"
address = "h:1"
topics = []"#,
                "bridges[0].topics",
            ),
            (
                r#"[[bridges]]
name = "a"
address = "h:1"
overflow = "drop-all"
topics = [{ filter = "x" }]"#,
                "bridges[0].overflow",
            ),
            (
                r#"[[bridges]]
name = "a"
address = "h:1"
topics = [{ filter = "x" }]
tls = { alpn = ["x-amzn-mqtt-ca"] }"#,
                "bridges[0].tls.ca",
            ),
            (
                r#"[[bridges]]
name = "a"
address = "h:1"
topics = [{ filter = "x" }]
tls = { ca = "/nonexistent/ca.pem" }"#,
                "/nonexistent/ca.pem",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
