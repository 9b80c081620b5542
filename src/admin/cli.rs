//! `tern status`, `tern clients ...`, `tern retained ...`, `tern queue ...`,
//! `tern bridge ...` and `tern check-config --against-running`:
//! the operations against a running broker's admin endpoint, and the text
//! they print.

use super::http::{percent_encode, request_with_body};
use crate::router::REDRIVE_BATCH;
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One `tern queue` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOp {
    List,
    Stats(String),
    Peek(String, usize),
    Purge(String),
    /// Move dead letters back: to the queue each came from, or `to`; with
    /// `rate`, at most that many per second.
    Redrive {
        dlq: String,
        to: Option<String>,
        rate: Option<usize>,
    },
}

/// One `tern bridge` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeOp {
    List,
    /// Drop what waits in a bridge's buffer; a bridge a reload removed is
    /// forgotten with it.
    Purge(String),
}

/// One `tern clients` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientsOp {
    /// A page after `after`, at most `limit`.
    List {
        after: Option<String>,
        limit: usize,
    },
    Kick(String),
}

/// One `tern retained` operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetainedOp {
    /// A page after `after`, at most `limit`, only topics `filter` matches,
    /// `$SYS` with `sys`.
    List {
        after: Option<String>,
        limit: usize,
        filter: Option<String>,
        sys: bool,
    },
    /// Clear one topic's retained message.
    Clear(String),
}

/// Where the admin endpoint is and its token.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub token: Option<String>,
    /// HTTPS (`[admin] tls`): the client config that checks the endpoint's
    /// certificate.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    async fn call(&self, method: &str, path: &str) -> Result<serde_json::Value, String> {
        self.call_with(method, path, b"").await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<serde_json::Value, String> {
        let token = self.token.as_deref();
        let tls = self.tls.clone();
        let (status, body) = request_with_body(self.addr, tls, method, path, token, body, TIMEOUT)
            .await
            .map_err(|e| format!("admin endpoint {}: {e}", self.addr))?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|_| {
            format!(
                "admin endpoint {}: not a JSON answer (HTTP {status})",
                self.addr
            )
        })?;
        if status == 422 {
            // The file would not load in the broker's environment.
            let errors: Vec<&str> = json
                .get("errors")
                .and_then(|e| e.as_array())
                .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
                .unwrap_or_default();
            return Err(format!(
                "the broker would not load it: {}",
                errors.join("; ")
            ));
        }
        if status != 200 {
            let why = json
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error");
            return Err(format!("{why} (HTTP {status})"));
        }
        Ok(json)
    }
}

/// Run `op`; the text to print.
pub async fn run(ep: &Endpoint, op: QueueOp) -> Result<String, String> {
    let q = |name: &str| format!("/api/v1/queues/{}", percent_encode(name));
    match op {
        QueueOp::List => {
            let v = ep.call("GET", "/api/v1/queues").await?;
            Ok(table(
                v.get("queues")
                    .and_then(|q| q.as_array())
                    .map_or(&[][..], Vec::as_slice),
            ))
        }
        QueueOp::Stats(name) => pretty(ep.call("GET", &q(&name)).await?),
        QueueOp::Peek(name, n) => pretty(
            ep.call("GET", &format!("{}/messages?n={n}", q(&name)))
                .await?,
        ),
        QueueOp::Purge(name) => {
            let v = ep.call("POST", &format!("{}/purge", q(&name))).await?;
            Ok(format!("purged {} messages from {name}", count(&v)))
        }
        QueueOp::Redrive { dlq, to, rate } => {
            let to = to
                .map(|t| format!("&to={}", percent_encode(&t)))
                .unwrap_or_default();
            // The broker moves at most REDRIVE_BATCH per call (it reads them
            // back from disk first): ask until the queue is empty, at most
            // `rate` a second.
            let per_second = rate.unwrap_or(usize::MAX).max(1);
            let mut moved = 0u64;
            'seconds: loop {
                let mut this_second = 0usize;
                while this_second < per_second {
                    let max = (per_second - this_second).min(REDRIVE_BATCH);
                    let path = format!("{}/redrive?max={max}{to}", q(&dlq));
                    let n = count(&ep.call("POST", &path).await?);
                    moved += n;
                    this_second += n as usize;
                    if n == 0 {
                        break 'seconds;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(format!("moved {moved} messages out of {dlq}"))
        }
    }
}

/// `tern status`: the broker's numbers, one per line.
pub async fn run_status(ep: &Endpoint) -> Result<String, String> {
    let v = ep.call("GET", "/api/v1/status").await?;
    let mut out = String::new();
    if let Some(o) = v.as_object() {
        for (k, val) in o {
            if k == "queues" {
                continue;
            }
            out.push_str(&format!("{k:<22} {val}\n"));
        }
    }
    let queues = v
        .get("queues")
        .and_then(|q| q.as_array())
        .map_or(&[][..], Vec::as_slice);
    if !queues.is_empty() {
        out.push('\n');
        out.push_str(&table(queues));
    }
    Ok(out)
}

/// Run a clients operation; the text to print.
pub async fn run_clients(ep: &Endpoint, op: ClientsOp) -> Result<String, String> {
    match op {
        ClientsOp::List { after, limit } => {
            let after = after
                .map(|a| format!("&after={}", percent_encode(&a)))
                .unwrap_or_default();
            let v = ep
                .call("GET", &format!("/api/v1/clients?limit={limit}{after}"))
                .await?;
            let mut out = format!(
                "{:<32} {:<9} {:<6} {:<22} {:>5} {:>5} {:>8} {:>8}  {}\n",
                "ID", "STATE", "PROTO", "ADDRESS", "KA", "SUBS", "INFLIGHT", "QUEUED", "USER"
            );
            let clients = v
                .get("clients")
                .and_then(|c| c.as_array())
                .map_or(&[][..], Vec::as_slice);
            let s = |c: &serde_json::Value, k: &str| {
                c.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string()
            };
            let n = |c: &serde_json::Value, k: &str| c.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            for c in clients {
                let connected = c.get("connected").and_then(|v| v.as_bool()) == Some(true);
                out.push_str(&format!(
                    "{:<32} {:<9} {:<6} {:<22} {:>5} {:>5} {:>8} {:>8}  {}\n",
                    s(c, "id"),
                    if connected { "connected" } else { "offline" },
                    s(c, "protocol"),
                    s(c, "address"),
                    n(c, "keep_alive"),
                    n(c, "subscriptions"),
                    n(c, "inflight"),
                    n(c, "queued"),
                    s(c, "username"),
                ));
            }
            if let Some(next) = v.get("next_after").and_then(|n| n.as_str()) {
                if clients.len() >= limit {
                    out.push_str(&format!("(more: --after {next})\n"));
                }
            }
            Ok(out)
        }
        ClientsOp::Kick(id) => {
            let path = format!("/api/v1/clients/{}/kick", percent_encode(&id));
            ep.call("POST", &path).await?;
            Ok(format!("closed the connection of {id}"))
        }
    }
}

/// Run a retained operation; the text to print.
pub async fn run_retained(ep: &Endpoint, op: RetainedOp) -> Result<String, String> {
    match op {
        RetainedOp::List {
            after,
            limit,
            filter,
            sys,
        } => {
            // Every value percent-encoded: a filter's `+` would otherwise
            // read as a space and its `#` as the start of a fragment.
            let mut path = format!("/api/v1/retained?limit={limit}");
            for (k, v) in [("after", after), ("filter", filter)] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={}", percent_encode(&v)));
                }
            }
            if sys {
                path.push_str("&sys=true");
            }
            let v = ep.call("GET", &path).await?;
            Ok(retained_table(&v))
        }
        RetainedOp::Clear(topic) => {
            let path = format!("/api/v1/retained/clear?topic={}", percent_encode(&topic));
            ep.call("POST", &path).await?;
            Ok(format!(
                "cleared the retained message of {}",
                printable(&topic)
            ))
        }
    }
}

/// A page of retained messages as a table, and where the next starts.
fn retained_table(v: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<40} {:>3} {:>8} {:>8}  {}\n",
        "TOPIC", "QOS", "BYTES", "EXPIRES", "PREVIEW"
    );
    let entries = v
        .get("retained")
        .and_then(|r| r.as_array())
        .map_or(&[][..], Vec::as_slice);
    for e in entries {
        let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let n = |k: &str| e.get(k).and_then(|v| v.as_u64());
        let preview = match s("preview_encoding") {
            "utf8" => format!("{:?}", s("preview")),
            other => format!("{other}:{}", s("preview")),
        };
        out.push_str(&format!(
            "{:<40} {:>3} {:>8} {:>8}  {}\n",
            printable(s("topic")),
            n("qos").unwrap_or(0),
            n("payload_bytes").unwrap_or(0),
            n("expires_in").map_or("-".to_string(), |s| format!("{s}s")),
            preview,
        ));
    }
    if let Some(next) = v.get("next_after").and_then(|n| n.as_str()) {
        out.push_str(&format!("(more: --after {})\n", printable(next)));
    }
    out
}

/// `s` with control characters escaped: a topic is the publisher's text, and
/// a terminal must not take it for escape sequences.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Run a bridge operation; the text to print.
pub async fn run_bridge(ep: &Endpoint, op: BridgeOp) -> Result<String, String> {
    match op {
        BridgeOp::List => {
            let v = ep.call("GET", "/api/v1/bridges").await?;
            Ok(bridge_table(
                v.get("bridges")
                    .and_then(|b| b.as_array())
                    .map_or(&[][..], Vec::as_slice),
            ))
        }
        BridgeOp::Purge(name) => {
            let path = format!("/api/v1/bridges/{}/purge", percent_encode(&name));
            let v = ep.call("POST", &path).await?;
            Ok(format!(
                "purged {} messages from the buffer of bridge {name}",
                count(&v)
            ))
        }
    }
}

/// The bridge list as a table.
fn bridge_table(bridges: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<20} {:<13} {:>10} {:>10} {:>10} {:>9} {:>13}  {}\n",
        "NAME",
        "STATE",
        "BUFFERED",
        "FORWARDED",
        "RECEIVED",
        "REFUSED",
        "DEAD_LETTERED",
        "LAST_ERROR"
    );
    let num = |b: &serde_json::Value, k: &str| b.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    for b in bridges {
        let flag = |k: &str| b.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let state = if flag("removed") {
            "removed"
        } else if flag("connected") {
            "connected"
        } else {
            "disconnected"
        };
        out.push_str(&format!(
            "{:<20} {:<13} {:>10} {:>10} {:>10} {:>9} {:>13}  {}\n",
            b.get("name").and_then(|v| v.as_str()).unwrap_or("?"),
            state,
            num(b, "buffered"),
            num(b, "forwarded"),
            num(b, "received"),
            num(b, "refused"),
            num(b, "dead_lettered"),
            b.get("last_error").and_then(|v| v.as_str()).unwrap_or("-"),
        ));
    }
    out
}

fn count(v: &serde_json::Value) -> u64 {
    v.get("count").and_then(|c| c.as_u64()).unwrap_or(0)
}

fn pretty(v: serde_json::Value) -> Result<String, String> {
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
}

/// The queue list as a table.
fn table(queues: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>9} {:>9} {:>13} {:>12}  {}\n",
        "NAME",
        "DEPTH",
        "IN_FLIGHT",
        "CONSUMERS",
        "DEAD_LETTERED",
        "OLDEST_AGE",
        "DEAD_LETTER_QUEUE"
    );
    let num = |q: &serde_json::Value, k: &str| q.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    for q in queues {
        let age = q
            .get("oldest_age_ms")
            .and_then(|v| v.as_u64())
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        out.push_str(&format!(
            "{:<24} {:>9} {:>9} {:>9} {:>13} {:>12}  {}\n",
            q.get("name").and_then(|v| v.as_str()).unwrap_or("?"),
            num(q, "depth"),
            num(q, "in_flight"),
            num(q, "consumers"),
            num(q, "dead_lettered"),
            age,
            q.get("dead_letter").and_then(|v| v.as_str()).unwrap_or("-"),
        ));
    }
    out
}

/// `tern check-config --against-running`: what a SIGHUP would do with `text`.
/// The report, and whether any change takes a restart.
pub async fn check_against_running(ep: &Endpoint, text: &str) -> Result<(String, bool), String> {
    let v = ep
        .call_with("POST", "/api/v1/config/check", text.as_bytes())
        .await?;
    let changes = v
        .get("changes")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(changes_report(&changes))
}

/// The text of a list of changes (`config::changes::Change` as JSON).
fn changes_report(changes: &[serde_json::Value]) -> (String, bool) {
    if changes.is_empty() {
        return ("no change from the running configuration".into(), false);
    }
    let line = |c: &serde_json::Value| {
        let key = c.get("key").and_then(|k| k.as_str()).unwrap_or("?");
        let what = c.get("what").and_then(|k| k.as_str()).unwrap_or("changed");
        let mut l = format!("  {key} {what}");
        if let Some(n) = c.get("note").and_then(|n| n.as_str()) {
            l.push_str(&format!(" ({n})"));
        }
        if let Some(w) = c.get("needs_restart").and_then(|n| n.as_str()) {
            l.push_str(&format!(": {w}"));
        }
        l
    };
    let (restart, live): (Vec<_>, Vec<_>) = changes
        .iter()
        .partition(|c| c.get("needs_restart").is_some_and(|w| !w.is_null()));
    let mut out = String::new();
    if !live.is_empty() {
        out.push_str("a reload (SIGHUP) applies:\n");
        for c in &live {
            out.push_str(&line(c));
            out.push('\n');
        }
    }
    if !restart.is_empty() {
        out.push_str("only a restart applies (a reload keeps the running value):\n");
        for c in &restart {
            out.push_str(&line(c));
            out.push('\n');
        }
    }
    (out, !restart.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_table_escapes_what_a_terminal_would_obey() {
        let page = serde_json::json!({
            "retained": [
                {"topic": "a/\u{1b}[2J", "qos": 1, "payload_bytes": 9, "expires_in": 5,
                 "preview": "evil\u{1b}[31m", "preview_encoding": "utf8"},
                {"topic": "b", "qos": 0, "payload_bytes": 2, "expires_in": null,
                 "preview": "//4=", "preview_encoding": "base64"},
            ],
            "next_after": "b",
        });
        let text = retained_table(&page);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("a/\\u{1b}[2J"), "{text}");
        assert!(text.contains("\"evil\\u{1b}[31m\""), "{text}");
        assert!(
            text.contains("5s") && text.contains("base64://4="),
            "{text}"
        );
        assert!(text.ends_with("(more: --after b)\n"), "{text}");
    }
}
