//! What a reload (SIGHUP) changes: the keys whose values differ between the
//! running configuration and a new one, each either applied live or kept until
//! a restart, with the reason. Pure: `Broker::reload` acts on it, and `tern
//! check-config --against-running` prints it, so an operator learns before the
//! SIGHUP what it will not change (never silently ignored).
//!
//! What a reload cannot change, and why:
//! - `storage.*`: the store is opened and replayed once, before any listener.
//! - `limits.router_queue`: the router's inbox is a channel sized at start.
//! - `limits.listen_backlog`: a bound socket keeps the backlog it listened with.
//! - `log.format`: the log writer is set up once, at start.
//! - `admin.bind`, `admin.tls`: the admin endpoint is set up at start (its
//!   certificate files are read again all the same).
//!
//! Everything else applies. Limits a client was told in its CONNACK (packet
//! size, receive maximum, topic aliases, keep alive, session expiry) apply to new
//! connections; an open one keeps what it negotiated [MQTT-3.2.2-*].

use super::Config;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The key, e.g. `limits.max_sessions`, `listeners[0.0.0.0:8883]`,
    /// `queues[jobs]`.
    pub key: String,
    /// "changed", "added" or "removed".
    pub what: &'static str,
    /// Why a reload keeps the running value; None: a reload applies it.
    pub needs_restart: Option<&'static str>,
    /// How it applies, when that is not obvious.
    pub note: Option<&'static str>,
}

/// Keys that only a restart changes, with the reason.
const RESTART_ONLY: &[(&str, &str)] = &[
    ("storage", "the store is opened once, at start"),
    (
        "limits.router_queue",
        "the router's inbox is sized at start",
    ),
    (
        "limits.listen_backlog",
        "bound listeners keep the backlog they listen with",
    ),
    ("log.format", "the log format is set at start"),
    ("admin.bind", "the admin endpoint is bound at start"),
    (
        "admin.tls",
        "the admin endpoint's TLS is set up at start (a reload reads its files again)",
    ),
];

/// Limits announced in CONNACK or fixed for a connection at CONNECT.
const PER_CONNECTION: &[&str] = &[
    "limits.max_packet_size",
    "limits.receive_maximum",
    "limits.topic_alias_maximum",
    "limits.outbound_topic_alias_maximum",
    "limits.max_keepalive",
    "limits.max_session_expiry",
    "limits.max_user_properties",
    "limits.max_property_bytes",
    "limits.max_inflight",
    "limits.outgoing_qos0_buffer",
    "limits.connect_timeout",
    "limits.max_connect_packet_size",
    "limits.hibernate_after",
];

const PER_CONNECTION_NOTE: &str =
    "for new connections; an open one keeps what it was told at CONNECT";

/// Other keys that apply in a way worth saying.
const NOTES: &[(&str, &str)] = &[
    (
        "limits.max_topic_levels",
        "subscriptions at once; a connection checks the topics it publishes to with the limit it started with",
    ),
    (
        "limits.max_topic_length",
        "subscriptions at once; a connection checks the topics it publishes to with the limit it started with",
    ),
    (
        "limits.auto_queue_max_length",
        "for queues created from now on",
    ),
    ("limits.auto_queue_max_bytes", "for queues created from now on"),
    (
        "limits.max_connections",
        "open connections over a lowered limit stay; new ones are refused until there is room",
    ),
];

/// Every difference between `running` and `new`, in key order within each
/// section.
pub fn diff(running: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(running), serde_json::to_value(new))
    else {
        return out;
    };
    for (section, old) in &a {
        let Some(fresh) = b.get(section) else {
            continue;
        };
        match section.as_str() {
            "listeners" => keyed(section, old, fresh, "bind", &mut out),
            "queues" | "bridges" => keyed(section, old, fresh, "name", &mut out),
            _ => leaves(section, old, fresh, &mut out),
        }
    }
    // Anonymous access also follows from the listeners (Mosquitto 2's local
    // only mode): report the effect even when the key itself did not change.
    if running.anonymous_allowed() != new.anonymous_allowed()
        && !out.iter().any(|c| c.key == "auth.allow_anonymous")
    {
        out.push(change(
            "auth.allow_anonymous".into(),
            "changed",
            Some("in effect: it follows from the listeners when not set"),
        ));
    }
    out
}

/// `new` with what a reload cannot change kept as `running` has it: the
/// configuration the broker runs after the reload, against which the next one
/// is compared (so a change waiting for a restart is reported again).
pub fn applicable(running: &Config, new: &Config) -> Config {
    let mut c = new.clone();
    c.storage = running.storage.clone();
    c.limits.router_queue = running.limits.router_queue;
    c.limits.listen_backlog = running.limits.listen_backlog;
    c.log.format = running.log.format.clone();
    c.admin.bind = running.admin.bind;
    c.admin.tls = running.admin.tls.clone();
    c
}

fn change(key: String, what: &'static str, note: Option<&'static str>) -> Change {
    let needs_restart = RESTART_ONLY
        .iter()
        .find(|(prefix, _)| {
            key.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
        .map(|(_, why)| *why);
    let note = note
        .or_else(|| {
            PER_CONNECTION
                .contains(&key.as_str())
                .then_some(PER_CONNECTION_NOTE)
        })
        .or_else(|| NOTES.iter().find(|(k, _)| *k == key).map(|(_, n)| *n));
    Change {
        key,
        what,
        needs_restart,
        note,
    }
}

/// A `Duration` serializes as `{secs, nanos}`: one value, not two keys.
fn is_duration(v: &serde_json::Map<String, Value>) -> bool {
    v.len() == 2 && v.contains_key("secs") && v.contains_key("nanos")
}

/// Object members compared one by one; anything else as a whole.
fn leaves(key: &str, old: &Value, new: &Value, out: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) if !is_duration(a) && !is_duration(b) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => leaves(&format!("{key}.{k}"), v, w, out),
                    None => out.push(change(format!("{key}.{k}"), "removed", None)),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(change(format!("{key}.{k}"), "added", None));
            }
        }
        _ if old != new => out.push(change(key.to_string(), "changed", None)),
        _ => {}
    }
}

/// A list whose entries are named by `id` (listeners by address, queues and
/// bridges by name): added, removed or changed, by name, whatever the order.
/// A name met again (two listeners on port 0) is told apart by its rank:
/// `127.0.0.1:0#2`.
fn keyed(section: &str, old: &Value, new: &Value, id: &str, out: &mut Vec<Change>) {
    let entries = |v: &Value| -> Vec<(String, Value)> {
        let mut named: Vec<(String, Value)> = Vec::new();
        for e in v.as_array().map(Vec::as_slice).unwrap_or_default() {
            let mut name = match e.get(id) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let seen = named
                .iter()
                .filter(|(n, _)| n == &name || n.starts_with(&format!("{name}#")))
                .count();
            if seen > 0 {
                name = format!("{name}#{}", seen + 1);
            }
            named.push((name, e.clone()));
        }
        named
    };
    let (a, b) = (entries(old), entries(new));
    for (name, v) in &a {
        let key = format!("{section}[{name}]");
        match b.iter().find(|(n, _)| n == name) {
            None => out.push(change(key, "removed", None)),
            Some((_, w)) if w != v => out.push(change(key, "changed", None)),
            Some(_) => {}
        }
    }
    for (name, _) in b.iter().filter(|(n, _)| !a.iter().any(|(m, _)| m == n)) {
        out.push(change(format!("{section}[{name}]"), "added", None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenerConfig, QueueConfig};

    fn keys(changes: &[Change]) -> Vec<(&str, &str, bool)> {
        changes
            .iter()
            .map(|c| (c.key.as_str(), c.what, c.needs_restart.is_some()))
            .collect()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let c = Config::default();
        assert!(diff(&c, &c.clone()).is_empty());
    }

    #[test]
    fn limits_apply_live_and_storage_needs_a_restart() {
        let a = Config::default();
        let mut b = a.clone();
        b.limits.max_sessions += 1;
        b.limits.max_packet_size = 1000;
        b.limits.router_queue += 1;
        b.storage.dir = "/elsewhere".into();
        b.log.level = "debug".into();
        b.log.format = "json".into();
        b.storage.sync_interval += std::time::Duration::from_secs(1);
        let d = diff(&a, &b);
        assert_eq!(
            keys(&d),
            vec![
                ("limits.max_packet_size", "changed", false),
                ("limits.max_sessions", "changed", false),
                ("limits.router_queue", "changed", true),
                ("log.format", "changed", true),
                ("log.level", "changed", false),
                ("storage.dir", "changed", true),
                ("storage.sync_interval", "changed", true),
            ]
        );
        let packet = d.iter().find(|c| c.key == "limits.max_packet_size");
        assert_eq!(packet.and_then(|c| c.note), Some(PER_CONNECTION_NOTE));
        // What a reload applies keeps the rest as it runs, so the next
        // comparison still reports it.
        let applied = applicable(&a, &b);
        assert_eq!(applied.limits.max_sessions, b.limits.max_sessions);
        assert_eq!(applied.log.level, "debug");
        assert_eq!(applied.storage, a.storage);
        assert_eq!(applied.limits.router_queue, a.limits.router_queue);
        assert_eq!(applied.log.format, a.log.format);
        assert_eq!(
            keys(&diff(&applied, &b)),
            vec![
                ("limits.router_queue", "changed", true),
                ("log.format", "changed", true),
                ("storage.dir", "changed", true),
                ("storage.sync_interval", "changed", true),
            ]
        );
    }

    #[test]
    fn listeners_and_queues_are_compared_by_name_not_position() {
        let l = |s: &str| ListenerConfig::plain(s.parse().expect("address"));
        let a = Config {
            listeners: vec![l("127.0.0.1:1883"), l("127.0.0.1:1884")],
            queues: vec![QueueConfig::named("jobs"), QueueConfig::named("mail")],
            ..Config::default()
        };
        let mut b = a.clone();
        b.listeners = vec![l("127.0.0.1:1884"), l("127.0.0.1:1885")];
        b.queues = vec![QueueConfig::named("mail"), QueueConfig::named("jobs")];
        b.queues[1].prefetch += 1;
        let mut ws = l("127.0.0.1:1884");
        ws.websocket = true;
        let mut c = b.clone();
        c.listeners[0] = ws;
        assert_eq!(
            keys(&diff(&a, &b)),
            vec![
                ("listeners[127.0.0.1:1883]", "removed", false),
                ("listeners[127.0.0.1:1885]", "added", false),
                ("queues[jobs]", "changed", false),
            ]
        );
        assert_eq!(
            keys(&diff(&b, &c)),
            vec![("listeners[127.0.0.1:1884]", "changed", false)]
        );
    }

    #[test]
    fn listeners_on_one_address_are_told_apart_by_rank() {
        let l = |s: &str| ListenerConfig::plain(s.parse().expect("address"));
        let mut ws = l("127.0.0.1:0");
        ws.websocket = true;
        let a = Config {
            listeners: vec![l("127.0.0.1:0"), ws.clone()],
            ..Config::default()
        };
        let mut b = a.clone();
        b.listeners.push(l("127.0.0.1:0"));
        assert_eq!(
            keys(&diff(&a, &b)),
            vec![("listeners[127.0.0.1:0#3]", "added", false)]
        );
        let c = Config {
            listeners: vec![l("127.0.0.1:0")],
            ..Config::default()
        };
        assert_eq!(
            keys(&diff(&a, &c)),
            vec![("listeners[127.0.0.1:0#2]", "removed", false)]
        );
    }

    #[test]
    fn anonymous_access_that_follows_from_the_listeners_is_reported() {
        let a = Config::default();
        let mut b = a.clone();
        b.listeners_configured = true;
        assert_ne!(a.anonymous_allowed(), b.anonymous_allowed());
        assert_eq!(
            keys(&diff(&a, &b)),
            vec![("auth.allow_anonymous", "changed", false)]
        );
    }
}
