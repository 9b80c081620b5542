//! Typed configuration: every limit the broker enforces, its default, and loading from
//! TOML with `TERN_<SECTION>__<KEY>` environment overrides.
//!
//! Owns parsing and validating configuration, nothing else. Defaults fit a small
//! gateway. `check_file` reports every error of a file with its key, not just the
//! first, so an operator fixes a file in one pass.

pub mod bridges;
pub mod changes;
mod overrides;
pub mod queues;

pub use bridges::BridgeConfig;
pub use overrides::Overrides;
pub use queues::QueueConfig;

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A configuration problem, named by its key (`limits.max_packet_size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every error found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            message: message.into(),
        }])
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub limits: Limits,
    pub mqtt: MqttConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    /// Work queues declared here (`[[queues]]`).
    pub queues: Vec<QueueConfig>,
    /// Links to remote brokers (`[[bridges]]`).
    pub bridges: Vec<BridgeConfig>,
    pub admin: AdminConfig,
    /// Did the configuration file declare `[[listeners]]`? (Not a key: set by
    /// `load`.) Anonymous clients are allowed by default only when it did not,
    /// Mosquitto 2's "local only" mode.
    #[serde(skip)]
    pub listeners_configured: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig::default()],
            limits: Limits::default(),
            mqtt: MqttConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            queues: Vec::new(),
            bridges: Vec::new(),
            admin: AdminConfig::default(),
            listeners_configured: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(deserialize_with = "de_socket_addr")]
    pub bind: SocketAddr,
    /// TLS on this listener (`wss` when `websocket` is set too).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// MQTT over WebSocket (subprotocol `mqtt`, any path).
    #[serde(default)]
    pub websocket: bool,
}

impl ListenerConfig {
    /// A plain TCP listener.
    pub fn plain(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            tls: None,
            websocket: false,
        }
    }

    /// What the listener speaks, for logs: mqtt, mqtts, ws, wss.
    pub fn scheme(&self) -> &'static str {
        match (self.tls.is_some(), self.websocket) {
            (false, false) => "mqtt",
            (true, false) => "mqtts",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig::plain(SocketAddr::from(([127, 0, 0, 1], 1883)))
    }
}

/// A listener's TLS settings (`tls = { cert = "...", key = "..." }`). Files are PEM;
/// they are read at start and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// CA certificates that client certificates are checked against.
    #[serde(default)]
    pub client_ca: Option<std::path::PathBuf>,
    /// Refuse a client without a certificate from `client_ca` (mutual TLS).
    #[serde(default)]
    pub require_client_cert: bool,
    /// The client certificate's Common Name is the username (for the ACL); the
    /// CONNECT username and password are then not checked (Mosquitto's
    /// `use_identity_as_username`).
    #[serde(default)]
    pub identity_as_username: bool,
}

/// Who may connect and what they may do: Mosquitto's password and ACL files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Let clients in without a verified identity. Unset: allowed only in
    /// Mosquitto 2's "local only" mode: the configuration declares no listeners
    /// (the built-in 127.0.0.1:1883, or `--listen` on loopback), every listener is
    /// on a loopback address and there is no `password_file`. Any declared
    /// listener needs `allow_anonymous = true` for anonymous clients.
    pub allow_anonymous: Option<bool>,
    /// Mosquitto password file (`user:hash`; `$6$`, `$7$` and `$argon2id$` hashes).
    /// Manage it with `tern passwd` or `mosquitto_passwd`.
    pub password_file: Option<std::path::PathBuf>,
    /// Mosquitto ACL file. Unset: every client may publish and subscribe anywhere.
    pub acl_file: Option<std::path::PathBuf>,
    /// After 3 failed logins from one address, each further attempt from it
    /// waits this long, doubling per failure up to `failed_login_max_delay`.
    #[serde(deserialize_with = "de_duration")]
    pub failed_login_delay: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub failed_login_max_delay: Duration,
    /// Password checks running at once, each on a thread of its own that keeps
    /// one argon2 buffer (~19 MiB for what `tern passwd` writes): the login
    /// memory is at most this many buffers. More checks wait in the queue.
    pub max_concurrent_logins: usize,
    /// Password checks that may wait for a thread; beyond this a login is
    /// refused at once (v5 0x89 Server busy, 3.1.1 0x03). Clients from addresses
    /// with fewer recent failures go first.
    pub login_queue: usize,
    /// A client id whose persistent session belongs to another user is refused
    /// (v5 0x87, 3.1.1 0x05), so one user cannot wipe or read another's queued
    /// messages. `true` lets the other user take it over (starting clean).
    pub allow_cross_user_takeover: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            failed_login_delay: Duration::from_secs(1),
            failed_login_max_delay: Duration::from_secs(30),
            max_concurrent_logins: 2,
            login_queue: 64,
            allow_cross_user_takeover: false,
        }
    }
}

impl Config {
    /// `auth.allow_anonymous`, with its default applied.
    pub fn anonymous_allowed(&self) -> bool {
        self.auth.allow_anonymous.unwrap_or_else(|| {
            !self.listeners_configured
                && self.auth.password_file.is_none()
                && self.listeners.iter().all(|l| l.bind.ip().is_loopback())
        })
    }
}

/// Every cap on what a peer controls. See `configs/tern.toml` for the meaning of each.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub listen_backlog: u32,
    pub max_sessions: usize,
    /// Persistent sessions one anonymous client address (IPv6: /64) may hold.
    pub max_sessions_per_address: u32,
    /// Persistent sessions one user may hold.
    pub max_sessions_per_user: u32,
    pub max_packet_size: u32,
    /// User Properties in one packet's property section (v5); more: 0x95.
    pub max_user_properties: u32,
    /// Bytes of one packet's property section (v5); more: 0x95.
    pub max_property_bytes: u32,
    pub max_keepalive: u16,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    /// Messages (and bytes) one session's queue holds at most: those waiting
    /// for a window slot or for the client to come back. A persistent
    /// session's messages wait on disk (see `session_read_ahead`), so these
    /// are disk caps there; the disk budget (`storage.max_bytes`) applies too.
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// What one session's queue holds at most of messages that can only wait
    /// in memory: QoS 0, sessions that end with their connection, shared
    /// subscriptions' and work queues' deliveries, all without a store. Also
    /// caps a connection's buffered QoS 0 bytes.
    pub max_queued_messages_in_memory: usize,
    pub max_queued_bytes_in_memory: usize,
    /// Messages and bytes of a connected session's queue held in memory ahead
    /// of its window (read back from the store before they are sent); the rest
    /// of a persistent session's backlog waits on disk only, all of it while
    /// the client is away. With a store only.
    pub session_read_ahead: usize,
    pub session_read_ahead_bytes: usize,
    pub max_topic_levels: usize,
    pub max_topic_length: usize,
    pub max_subscriptions_per_client: usize,
    /// Bytes one session's subscriptions may hold (filters, index, trie nodes).
    pub max_subscription_bytes: usize,
    pub topic_alias_maximum: u16,
    /// Topic aliases Tern assigns on deliveries to one v5 client: the client's own
    /// Topic Alias Maximum, capped by this. Each alias keeps its topic in memory for
    /// the connection's life, so a client announcing 65535 must not decide alone.
    pub outbound_topic_alias_maximum: u16,
    #[serde(alias = "connect_timeout_secs", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// A connection silent this long, with nothing in flight,
    /// hibernates: its task ends and its state waits outside it, its socket
    /// watched, until its client sends, the router has something for it, or
    /// its keep-alive runs out (`connection/hibernate.rs`). Zero: never.
    #[serde(alias = "hibernate_after_secs", deserialize_with = "de_duration")]
    pub hibernate_after: Duration,
    /// Largest first packet (the CONNECT) accepted, in bytes; `max_packet_size`
    /// applies after login. A CONNECT is small, and before login nobody is
    /// accountable for what its buffer holds.
    pub max_connect_packet_size: u32,
    /// Bytes that all connections not yet logged in may hold in their read buffers
    /// together, beyond a free first KiB each. A CONNECT that would need more is
    /// refused (v5 0x89, 3.1.1 0x03) and its connection closed.
    pub unauthenticated_buffer_bytes: usize,
    #[serde(alias = "max_session_expiry_secs", deserialize_with = "de_duration")]
    pub max_session_expiry: Duration,
    pub outgoing_qos0_buffer: usize,
    pub router_queue: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// Work queues in all: declared ones, their dead-letter queues, and those
    /// clients create by subscribing to `$queue/<name>/<filter>`.
    pub max_queues: usize,
    /// Messages and bytes a queue created by a subscription (not declared in
    /// `[[queues]]`) holds at most, its dead-letter queue too: any client may
    /// create one, so its caps are small (beyond: refused, 0x97).
    pub auto_queue_max_length: usize,
    pub auto_queue_max_bytes: u64,
    /// Messages and bytes of one work queue held in memory ahead of dispatch
    /// (read back from the store before consumers ask, and just published
    /// ones); the rest of a backlog waits on disk only. With a store only.
    pub queue_read_ahead: usize,
    pub queue_read_ahead_bytes: u64,
}

impl Limits {
    /// What the packet decoder accepts after CONNECT.
    pub fn decode_limits(&self) -> crate::protocol::DecodeLimits {
        crate::protocol::DecodeLimits {
            max_packet_size: self.max_packet_size,
            max_user_properties: self.max_user_properties,
            max_property_bytes: self.max_property_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            listen_backlog: 4096,
            max_sessions: 10_000,
            max_sessions_per_address: 1_000,
            max_sessions_per_user: 1_000,
            max_packet_size: 1024 * 1024,
            max_user_properties: 128,
            max_property_bytes: 64 * 1024,
            max_keepalive: 65_535,
            receive_maximum: 64,
            max_inflight: 256,
            // A day of a reading a second (86,400) while the client is away,
            // on disk: about 90 bytes of RAM each (BENCHMARKS.md).
            max_queued_messages: 100_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_queued_messages_in_memory: 1_000,
            max_queued_bytes_in_memory: 4 * 1024 * 1024,
            // What a connected subscriber holds before its publishers are held
            // back (max_queued_*_in_memory): a subscriber that keeps up never
            // reads back from disk; one catching up reads a full window ahead.
            session_read_ahead: 1_000,
            session_read_ahead_bytes: 4 * 1024 * 1024,
            max_topic_levels: 32,
            max_topic_length: 1024,
            max_subscriptions_per_client: 256,
            max_subscription_bytes: 16 * 1024,
            topic_alias_maximum: 32,
            // Mosquitto's max_topic_alias_broker is 10 too: enough for the few hot
            // topics that gain most, ~10 KiB per connection at max_topic_length.
            outbound_topic_alias_maximum: 10,
            connect_timeout: Duration::from_secs(10),
            // Waking costs a task and a socket registration (~10 us): a client
            // busy at least every 10 s never sleeps; an idle one costs a third.
            hibernate_after: Duration::from_secs(10),
            // A Will payload of up to ~63 KiB still fits.
            max_connect_packet_size: 64 * 1024,
            // 256 CONNECTs of 64 KiB in flight at once.
            unauthenticated_buffer_bytes: 16 * 1024 * 1024,
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            outgoing_qos0_buffer: 4096,
            router_queue: 256,
            max_retained_messages: 10_000,
            max_retained_bytes: 16 * 1024 * 1024,
            max_queues: 64,
            auto_queue_max_length: 10_000,
            auto_queue_max_bytes: 4 * 1024 * 1024,
            queue_read_ahead: 1_000,
            queue_read_ahead_bytes: 1024 * 1024,
        }
    }
}

/// Protocol behaviour switches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Queue QoS 0 messages for offline persistent sessions (Mosquitto's
    /// `queue_qos0_messages`). QoS 0 promises nothing, so off by default.
    pub queue_qos0_offline: bool,
    /// When a connected subscriber's queue is full, hold back the publishers'
    /// PUBACK / PUBREC (so their own inflight windows stop them) instead of dropping
    /// QoS 1/2 messages. Nothing acknowledged is then lost to a slow subscriber.
    pub backpressure: bool,
    /// How long a subscriber may hold publishers back. After that it counts as
    /// stalled: the held acknowledgements are released and further QoS 1/2 messages
    /// beyond its queue cap are dropped (counted) until it catches up, so one stuck
    /// client cannot stop the others for long.
    #[serde(alias = "backpressure_timeout_secs", deserialize_with = "de_duration")]
    pub backpressure_timeout: Duration,
    /// How long a graceful shutdown waits for outgoing buffers to drain.
    #[serde(alias = "shutdown_timeout_secs", deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// How often the `$SYS` tree is published (retained, Mosquitto's
    /// `sys_interval`); "0s" turns it off.
    #[serde(deserialize_with = "de_duration")]
    pub sys_interval: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            queue_qos0_offline: false,
            backpressure: true,
            backpressure_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            sys_interval: Duration::from_secs(10),
        }
    }
}

/// When the store's writes reach the disk, relative to acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync before every acknowledgement that depends on the write, batched: one
    /// fsync per group of writes (group commit). Survives power loss.
    Always,
    /// Acknowledge after the write reaches the OS; fsync every `sync_interval`.
    /// Survives a crash of Tern; a power cut loses up to `sync_interval`.
    Periodic,
    /// Acknowledge after the write reaches the OS; never fsync (the OS writes back
    /// on its own). Survives a crash of Tern only.
    Never,
}

/// The durable store (`src/store/`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the message log. `tern --data-dir DIR` overrides it.
    pub dir: std::path::PathBuf,
    pub durability: Durability,
    /// fsync period with `durability = "periodic"`.
    #[serde(deserialize_with = "de_duration")]
    pub sync_interval: Duration,
    /// Disk budget for the log, in bytes. When live data would exceed it, QoS 1/2
    /// messages that must be stored are refused (v5 reason 0x97), logged and
    /// counted; 0 means no budget.
    pub max_bytes: u64,
    /// No store at all: a volatile broker (nothing survives a restart).
    pub in_memory: bool,
    /// Size of one log segment file (preallocated). Reclaimed segments are deleted
    /// whole, so smaller segments return space sooner; larger ones mean fewer files.
    pub segment_size: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: "./tern-data".into(),
            durability: Durability::Always,
            sync_interval: Duration::from_millis(100),
            max_bytes: 0,
            in_memory: false,
            segment_size: 8 * 1024 * 1024,
        }
    }
}

/// The admin endpoint (HTTP: the queue operations, `tern queue ...`). Off unless
/// `bind` is set.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    #[serde(deserialize_with = "de_opt_socket_addr")]
    pub bind: Option<SocketAddr>,
    /// A request must carry `Authorization: Bearer <token>`; required when
    /// `bind` is not a loopback address.
    pub token: Option<String>,
    /// HTTPS, with the listeners' TLS options (`cert`, `key`; `client_ca` and
    /// `require_client_cert` to ask clients for a certificate too).
    pub tls: Option<TlsConfig>,
}

fn de_opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    de_socket_addr(d).map(Some)
}

impl AdminConfig {
    /// The `[admin]` checks of `Config::validate`.
    fn validate(&self, errs: &mut Vec<ConfigError>) {
        {
            let mut err = collector(errs);
            if let Some(b) = self.bind {
                if !b.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
                    err(
                        "admin.token",
                        "required when admin.bind is not a loopback address",
                    );
                }
            }
            if self.token.as_deref().is_some_and(|t| t.len() < 16) {
                err("admin.token", "must be at least 16 characters");
            }
            if self.tls.as_ref().is_some_and(|t| t.identity_as_username) {
                err(
                    "admin.tls.identity_as_username",
                    "not used by the admin endpoint (its clients are not MQTT users)",
                );
            }
        }
        if let Some(t) = &self.tls {
            t.validate("admin.tls", errs);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: "info", "tern=debug,warn", ...
    pub level: String,
    /// "human" (one readable line per event) or "json" (one JSON object per
    /// line, for log collectors).
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "human".into(),
        }
    }
}

impl LogConfig {
    /// The `[log]` checks of `Config::validate`.
    fn validate(&self, errs: &mut Vec<ConfigError>) {
        if !matches!(self.format.as_str(), "human" | "json") {
            collector(errs)(
                "log.format",
                &format!("{:?}: \"human\" or \"json\"", self.format),
            );
        }
    }
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid address {s:?}: expected IP:PORT such as \"0.0.0.0:1883\""
        ))
    })
}

/// Parse "30s", "500ms", "5m", "2h", "7d" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"30s\", \"5m\", \"500ms\""))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    };
    match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => Err(format!(
            "invalid duration unit {other:?} in {s:?}: use ms, s, m, h or d"
        )),
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

/// The environment variables that are configuration: `TERN_<SECTION>__<KEY>` only.
/// Anything else under `TERN_` (`TERN_ENV=production`, `TERN_HOME`, a deployment's
/// own variables) is not ours and must not stop a start with "unknown field";
/// a variable of the configuration form with an unknown key still does, as a typo
/// in a real override should.
fn config_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> config::Map<String, String> {
    vars.filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| {
            k.strip_prefix("TERN_")
                .and_then(|rest| rest.split_once("__"))
                .is_some_and(|(section, key)| !section.is_empty() && !key.is_empty())
        })
        .collect()
}

impl Config {
    /// Load `path` (if any) and apply `TERN_<SECTION>__<KEY>` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigErrors::one("", format!("cannot read {}: {e}", p.display()))
                })?;
                Config::load_str(Some(&text))
            }
            None => Config::load_str(None),
        }
    }

    /// [`Config::load`] of a file's text (the admin endpoint checks a file a
    /// client sends against the running configuration, in the broker's own
    /// environment, as a SIGHUP would read it).
    pub fn load_str(text: Option<&str>) -> Result<Config, ConfigErrors> {
        if let Some(t) = text {
            // Report every problem of the file itself with its key first: the
            // layered loader below stops at the first.
            let errors = check_str(t);
            if !errors.0.is_empty() {
                return Err(errors);
            }
        }
        let mut builder = config::Config::builder();
        if let Some(t) = text {
            builder = builder.add_source(config::File::from_str(t, config::FileFormat::Toml));
        }
        // The config crate's pitfall: with the default prefix separator equal to the
        // key separator, TERN__LIMITS... would be needed; and a single '_' separator
        // would split `max_connections` into two levels. So: prefix "TERN_", nesting
        // "__", and keys keep their single underscores.
        builder = builder.add_source(
            config::Environment::with_prefix("TERN")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(config_env(std::env::vars_os()))),
        );
        let mut cfg: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigErrors::one("", e.to_string()))?;
        // check_str above has parsed this text already: it is valid TOML.
        cfg.listeners_configured = text
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|t| t.contains_key("listeners"));
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Value checks that types alone cannot express, section by section (in the
    /// order of the messages).
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.listeners.is_empty() {
            collector(&mut errs)("listeners", "at least one listener is needed");
        }
        self.limits.validate(&mut errs);
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            collector(&mut errs)(
                "log.level",
                "not a valid log filter (e.g. \"info\", \"tern=debug\")",
            );
        }
        for (i, ls) in self.listeners.iter().enumerate() {
            if let Some(t) = &ls.tls {
                t.validate(&format!("listeners[{i}].tls"), &mut errs);
            }
        }
        self.auth.validate(&mut errs);
        self.storage.validate(&mut errs);
        queues::validate(&self.queues, self.topic_limits(), &mut errs);
        bridges::validate(&self.bridges, &self.queues, self.topic_limits(), &mut errs);
        self.admin.validate(&mut errs);
        self.log.validate(&mut errs);
        let all = self.all_queues();
        let declared = all.len()
            + all
                .iter()
                .filter(|q| q.dead_letter_name().is_some())
                .count();
        if declared > self.limits.max_queues {
            collector(&mut errs)(
                "limits.max_queues",
                "is less than the queues declared with their dead-letter queues",
            );
        }
        errs
    }

    /// The declared work queues: `[[queues]]` and the bridges' buffers.
    pub fn all_queues(&self) -> Vec<QueueConfig> {
        let limits = self.topic_limits();
        self.queues
            .iter()
            .cloned()
            .chain(self.bridges.iter().filter_map(|b| b.queue(limits)))
            .collect()
    }

    pub fn topic_limits(&self) -> crate::topic::TopicLimits {
        crate::topic::TopicLimits {
            max_levels: self.limits.max_topic_levels,
            max_len: self.limits.max_topic_length,
        }
    }
}

/// Pushes a key's error onto `errs` (the checks of `Config::validate`).
fn collector(errs: &mut Vec<ConfigError>) -> impl FnMut(&str, &str) + '_ {
    |key, msg| {
        errs.push(ConfigError {
            key: key.into(),
            message: msg.into(),
        })
    }
}

impl Limits {
    /// The `[limits]` checks of `Config::validate`.
    fn validate(&self, errs: &mut Vec<ConfigError>) {
        let mut err = collector(errs);
        let l = self;
        if l.max_packet_size < 64 {
            err("limits.max_packet_size", "must be at least 64 bytes");
        }
        if l.max_packet_size > 268_435_460 {
            err(
                "limits.max_packet_size",
                "must be at most 268435460 bytes (the protocol's maximum)",
            );
        }
        if l.max_property_bytes == 0 {
            err("limits.max_property_bytes", "must be at least 1");
        }
        if l.max_connect_packet_size < 64 || l.max_connect_packet_size > 268_435_460 {
            err(
                "limits.max_connect_packet_size",
                "must be between 64 and 268435460 bytes",
            );
        }
        if l.unauthenticated_buffer_bytes < l.max_connect_packet_size as usize {
            err(
                "limits.unauthenticated_buffer_bytes",
                "must hold at least one CONNECT of limits.max_connect_packet_size",
            );
        }
        if l.receive_maximum == 0 {
            err("limits.receive_maximum", "must be at least 1");
        }
        if l.max_inflight == 0 {
            err("limits.max_inflight", "must be at least 1");
        }
        if l.listen_backlog == 0 {
            err("limits.listen_backlog", "must be at least 1");
        }
        if l.max_connections == 0 {
            err("limits.max_connections", "must be at least 1");
        }
        if l.max_sessions == 0 {
            err("limits.max_sessions", "must be at least 1");
        }
        if l.max_sessions_per_address == 0 {
            err("limits.max_sessions_per_address", "must be at least 1");
        }
        if l.max_sessions_per_user == 0 {
            err("limits.max_sessions_per_user", "must be at least 1");
        }
        if l.max_topic_levels == 0 {
            err("limits.max_topic_levels", "must be at least 1");
        }
        if l.max_topic_length == 0 || l.max_topic_length > 65_535 {
            err("limits.max_topic_length", "must be between 1 and 65535");
        }
        if l.max_subscriptions_per_client == 0 {
            err("limits.max_subscriptions_per_client", "must be at least 1");
        }
        if l.max_subscription_bytes < 1024 {
            err("limits.max_subscription_bytes", "must be at least 1024");
        }
        if l.connect_timeout.is_zero() {
            err("limits.connect_timeout", "must be more than zero");
        }
        if l.router_queue == 0 {
            err("limits.router_queue", "must be at least 1");
        }
        if l.max_queues == 0 {
            err("limits.max_queues", "must be at least 1");
        }
        if l.auto_queue_max_length == 0 || l.auto_queue_max_bytes == 0 {
            err(
                "limits.auto_queue_max_length",
                "auto_queue_max_length and auto_queue_max_bytes must be at least 1",
            );
        }
        if l.session_read_ahead == 0 || l.session_read_ahead_bytes == 0 {
            err(
                "limits.session_read_ahead",
                "session_read_ahead and session_read_ahead_bytes must be at least 1",
            );
        }
        if l.queue_read_ahead == 0 || l.queue_read_ahead_bytes == 0 {
            err(
                "limits.queue_read_ahead",
                "queue_read_ahead and queue_read_ahead_bytes must be at least 1",
            );
        }
        if l.max_session_expiry.as_secs() > u64::from(u32::MAX) {
            err(
                "limits.max_session_expiry",
                "must fit in 32 bits of seconds",
            );
        }
    }
}

impl TlsConfig {
    /// The checks of `Config::validate` for TLS settings at `key`
    /// (`listeners[i].tls`, `admin.tls`).
    fn validate(&self, key: &str, errs: &mut Vec<ConfigError>) {
        if self.require_client_cert && self.client_ca.is_none() {
            errs.push(ConfigError {
                key: format!("{key}.require_client_cert"),
                message: "needs tls.client_ca (the CA that client certificates must come from)"
                    .into(),
            });
        }
        if self.identity_as_username && !self.require_client_cert {
            errs.push(ConfigError {
                key: format!("{key}.identity_as_username"),
                message: "needs tls.require_client_cert = true".into(),
            });
        }
    }
}

impl AuthConfig {
    /// The `[auth]` checks of `Config::validate`.
    fn validate(&self, errs: &mut Vec<ConfigError>) {
        let mut err = collector(errs);
        // Each login thread may hold a buffer of up to 256 MiB (the largest
        // argon2id m accepted): more than 64 fits no gateway.
        if !(1..=64).contains(&self.max_concurrent_logins) {
            err("auth.max_concurrent_logins", "must be between 1 and 64");
        }
        if !(1..=65_536).contains(&self.login_queue) {
            err("auth.login_queue", "must be between 1 and 65536");
        }
        if self.failed_login_max_delay < self.failed_login_delay {
            err(
                "auth.failed_login_max_delay",
                "must be at least auth.failed_login_delay",
            );
        }
    }
}

impl StorageConfig {
    /// The `[storage]` checks of `Config::validate`.
    fn validate(&self, errs: &mut Vec<ConfigError>) {
        let mut err = collector(errs);
        let st = self;
        if st.segment_size < 65_536 || st.segment_size > 1 << 30 {
            err(
                "storage.segment_size",
                "must be between 65536 and 1073741824 bytes",
            );
        }
        if st.max_bytes != 0 && st.max_bytes < 2 * st.segment_size {
            err(
                "storage.max_bytes",
                "must be 0 (no budget) or at least two segments (2 x storage.segment_size)",
            );
        }
        if st.durability == Durability::Periodic && st.sync_interval.is_zero() {
            err(
                "storage.sync_interval",
                "must be more than 0 with durability = \"periodic\"",
            );
        }
        if !st.in_memory && st.dir.as_os_str().is_empty() {
            err(
                "storage.dir",
                "must not be empty (or set storage.in_memory = true)",
            );
        }
    }
}

/// Check a TOML file and return every error with its key: syntax errors, unknown
/// keys, values of the wrong type or range.
///
/// Each key is deserialized on its own into its section's type (every field has a
/// default), which gives one precise error per bad key instead of serde's first-only.
pub fn check_file(path: &Path) -> ConfigErrors {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return ConfigErrors::one("", format!("cannot read {}: {e}", path.display())),
    };
    check_str(&text)
}

pub fn check_str(text: &str) -> ConfigErrors {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return ConfigErrors::one("", format!("TOML syntax error: {e}")),
    };
    let mut errs = Vec::new();
    for (section, value) in &table {
        match section.as_str() {
            "listeners" => check_array::<ListenerConfig>(
                section,
                value,
                (
                    "bind",
                    "127.0.0.1:1".into(),
                    "every listener needs a bind address",
                ),
                &mut errs,
            ),
            "queues" => check_array::<QueueConfig>(
                section,
                value,
                ("name", "q".into(), "every queue needs a name"),
                &mut errs,
            ),
            "bridges" => check_array::<BridgeConfig>(
                section,
                value,
                ("name", "b".into(), "every bridge needs a name"),
                &mut errs,
            ),
            "limits" => check_section::<Limits>(section, value, &mut errs),
            "mqtt" => check_section::<MqttConfig>(section, value, &mut errs),
            "storage" => check_section::<StorageConfig>(section, value, &mut errs),
            "auth" => check_section::<AuthConfig>(section, value, &mut errs),
            "log" => check_section::<LogConfig>(section, value, &mut errs),
            "admin" => check_section::<AdminConfig>(section, value, &mut errs),
            other => errs.push(ConfigError {
                key: other.into(),
                message:
                    "unknown section (known: listeners, limits, mqtt, storage, auth, log, queues, bridges, admin)"
                        .into(),
            }),
        }
    }
    if errs.is_empty() {
        match toml::from_str::<Config>(text) {
            Ok(cfg) => errs.extend(cfg.validate()),
            Err(e) => errs.push(ConfigError {
                key: String::new(),
                message: e.message().to_string(),
            }),
        }
    }
    ConfigErrors(errs)
}

/// An array of tables (`[[listeners]]`, `[[queues]]`): each entry's keys
/// checked alone, with its `required` key (name, filler value, why) reported
/// when missing.
fn check_array<T: for<'de> Deserialize<'de>>(
    section: &str,
    value: &toml::Value,
    required: (&str, toml::Value, &str),
    errs: &mut Vec<ConfigError>,
) {
    let Some(arr) = value.as_array() else {
        errs.push(ConfigError {
            key: section.into(),
            message: format!("expected an array of tables ([[{section}]])"),
        });
        return;
    };
    let (key, filler, why) = required;
    for (i, entry) in arr.iter().enumerate() {
        let prefix = format!("{section}[{i}]");
        let Some(t) = entry.as_table() else {
            errs.push(ConfigError {
                key: prefix,
                message: format!("expected a table ([[{section}]])"),
            });
            continue;
        };
        if !t.contains_key(key) {
            errs.push(ConfigError {
                key: format!("{prefix}.{key}"),
                message: format!("missing: {why}"),
            });
        }
        check_keys::<T>(&prefix, t, Some((key, filler.clone())), errs);
    }
}

fn check_section<T: for<'de> Deserialize<'de>>(
    section: &str,
    value: &toml::Value,
    errs: &mut Vec<ConfigError>,
) {
    match value.as_table() {
        Some(t) => check_keys::<T>(section, t, None, errs),
        None => errs.push(ConfigError {
            key: section.into(),
            message: format!("expected a table ([{section}])"),
        }),
    }
}

/// Deserialize each key of `table` alone into `T`. `filler` supplies a required key
/// so that the lone key under test is what fails, not the missing one.
fn check_keys<T: for<'de> Deserialize<'de>>(
    prefix: &str,
    table: &toml::Table,
    filler: Option<(&str, toml::Value)>,
    errs: &mut Vec<ConfigError>,
) {
    for (key, value) in table {
        let mut one = toml::Table::new();
        if let Some((k, v)) = &filler {
            one.insert((*k).to_string(), v.clone());
        }
        one.insert(key.clone(), value.clone());
        if let Err(e) = T::deserialize(toml::Value::Table(one)) {
            let msg = e.message().to_string();
            let msg = if msg.starts_with("unknown field") {
                format!("unknown key ({msg})")
            } else {
                msg
            };
            errs.push(ConfigError {
                key: format!("{prefix}.{key}"),
                message: msg,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_login_limits_are_checked() {
        let errs =
            check_str("[limits]\nmax_connect_packet_size = 10\nunauthenticated_buffer_bytes = 5\n")
                .0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "limits.max_connect_packet_size",
                "limits.unauthenticated_buffer_bytes"
            ]
        );
        let ok = check_str(
            "[limits]\nmax_connect_packet_size = 4096\nunauthenticated_buffer_bytes = 4096\n",
        );
        assert!(ok.0.is_empty(), "{ok}");
    }

    #[test]
    fn only_section_key_variables_are_configuration() {
        let vars = [
            ("TERN_ENV", "production"),
            ("TERN_HOME", "/opt/tern"),
            ("TERN_LOG", "debug"),
            ("TERN__X", "1"),
            ("TERN_LIMITS__", "1"),
            ("HOME", "/root"),
            ("TERN_LIMITS__MAX_CONNECTIONS", "5"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let kept = config_env(vars.into_iter());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept["TERN_LIMITS__MAX_CONNECTIONS"], "5");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert!(c.validate().is_empty());
        assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:1883");
        assert_eq!(c.limits.max_packet_size, 1024 * 1024);
        assert_eq!(c.limits.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn parses_both_duration_forms() {
        let c: Config =
            toml::from_str("[limits]\nconnect_timeout = \"3s\"\nmax_session_expiry_secs = 60\n")
                .unwrap();
        assert_eq!(c.limits.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.max_session_expiry, Duration::from_secs(60));
    }

    #[test]
    fn check_reports_every_error_with_its_key() {
        let text = r#"
[[listeners]]
bind = "not-an-address"
colour = "blue"

[limits]
max_packet_size = "big"
max_conections = 5
connect_timeout = "10 parsecs"

[logging]
level = "info"
"#;
        let errs = check_str(text).0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"listeners[0].bind"), "{errs:?}");
        assert!(keys.contains(&"listeners[0].colour"), "{errs:?}");
        assert!(keys.contains(&"limits.max_packet_size"), "{errs:?}");
        assert!(keys.contains(&"limits.max_conections"), "{errs:?}");
        assert!(keys.contains(&"limits.connect_timeout"), "{errs:?}");
        assert!(keys.contains(&"logging"), "{errs:?}");
        assert_eq!(errs.len(), 6, "{errs:?}");
    }

    #[test]
    fn check_reports_range_errors() {
        let errs = check_str("[limits]\nreceive_maximum = 0\nmax_packet_size = 10\n").0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["limits.max_packet_size", "limits.receive_maximum"]
        );
    }

    #[test]
    fn admin_checks_name_their_keys() {
        let keys = |text: &str| -> Vec<String> {
            let c: Config = toml::from_str(text).expect("parses");
            c.validate().into_iter().map(|e| e.key).collect()
        };
        assert_eq!(
            keys("[admin]\nbind = \"0.0.0.0:8080\"\n"),
            vec!["admin.token"]
        );
        assert_eq!(
            keys("[admin]\nbind = \"127.0.0.1:8080\"\ntoken = \"short\"\n"),
            vec!["admin.token"]
        );
        assert_eq!(
            keys(
                "[admin]\nbind = \"127.0.0.1:8080\"\n\
                 tls = { cert = \"a.pem\", key = \"a.key\", require_client_cert = true, \
                 identity_as_username = true }\n"
            ),
            vec![
                "admin.tls.identity_as_username",
                "admin.tls.require_client_cert"
            ]
        );
        assert!(keys(
            "[admin]\nbind = \"127.0.0.1:8080\"\n\
             tls = { cert = \"a.pem\", key = \"a.key\" }\n"
        )
        .is_empty());
    }

    #[test]
    fn example_config_is_valid_and_default() {
        let text = include_str!("../../configs/tern.toml");
        assert!(check_str(text).0.is_empty(), "{}", check_str(text));
        let mut c: Config = toml::from_str(text).unwrap();
        // The one departure: the example turns the admin endpoint on, on
        // loopback (off by default).
        assert_eq!(c.admin.bind, Some("127.0.0.1:8080".parse().unwrap()));
        c.admin.bind = None;
        assert_eq!(
            c,
            Config::default(),
            "configs/tern.toml must show the defaults"
        );
    }
}
