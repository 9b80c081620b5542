//! The admin endpoint: an HTTP listener (off unless `[admin] bind` is set,
//! 127.0.0.1 in the example config) for the operations `tern queue ...` uses:
//!
//! - `GET /api/v1/queues`: every queue with its numbers
//! - `GET /api/v1/queues/<name>`: one queue
//! - `GET /api/v1/queues/<name>/messages?n=N`: its next N messages (a peek)
//! - `POST /api/v1/queues/<name>/purge`: remove its waiting messages
//! - `POST /api/v1/queues/<name>/redrive?to=<queue>&max=N`: move up to N
//!   dead letters back (to the queue each came from, or `to`)
//! - `GET /api/v1/bridges`, `POST /api/v1/bridges/<name>/purge`
//! - `GET /api/v1/clients?after=<id>&limit=N`: a page of clients in id order
//!   (`next_after` is the cursor for the next); `POST /api/v1/clients/<id>/kick`
//! - `GET /api/v1/retained?after=<topic>&limit=N&filter=<filter>&sys=true`: a
//!   page of retained messages in topic order, level by level (topic, QoS,
//!   size, expiry left, a preview of the first 64 bytes as text or base64);
//!   `next_after` is the cursor, null at the end; `$SYS` only with `sys=true`
//!   or a filter naming it. `POST /api/v1/retained/clear?topic=<topic>`:
//!   clear one, as an empty retained PUBLISH does
//! - `GET /api/v1/status`: the broker's numbers (the router's last snapshot
//!   and the counters)
//! - `GET /metrics`: Prometheus text (`prometheus.rs`)
//! - `POST /api/v1/config/check`: what a SIGHUP would do with the file sent
//!   as the body (`config::changes`)
//! - `GET /`: the status page (`page.html`): live numbers, a throughput chart,
//!   queues with a redrive button, bridges, clients
//!
//! Reads of numbers (`/metrics`, `/api/v1/status`) never wait on the router:
//! they take the snapshot it publishes every second.
//! A request waits for the router like a client's SUBSCRIBE does (bounded
//! channel, then a one-shot answer); a few at a time, each bounded in bytes and
//! time, so the endpoint cannot be used to hold the broker's memory. With
//! `[admin] token` every request must carry `Authorization: Bearer <token>`;
//! with `[admin] tls` it is HTTPS (the listeners' certificate options).

pub mod cli;
pub mod http;
pub mod process;
pub mod prometheus;

use crate::bridge::registry::StatusList;
use crate::bridge::status::BridgeStatus;
use crate::metrics::Metrics;
use crate::router::{
    AdminReply, AdminRequest, RetainedQuery, RouterMsg, Snapshot, DEFAULT_RETAINED_PAGE,
    MAX_RETAINED_PAGE,
};
use http::{read_request, write_response, HttpError, Request};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// The status page (`GET /`): one self-contained file, no external assets.
const PAGE: &str = include_str!("page.html");

/// Requests served at once; more wait in the kernel's accept queue.
const CONCURRENT: usize = 8;
/// A request head must arrive within this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages one peek may return, and the default.
const MAX_PEEK: usize = 1_000;
const DEFAULT_PEEK: usize = 10;
/// Dead letters one redrive request moves by default.
const DEFAULT_REDRIVE: usize = 1_000;

/// What the endpoint reads and whom it asks.
pub struct AdminContext {
    pub router: mpsc::Sender<RouterMsg>,
    /// The running configuration (`[admin] token`: every request must carry
    /// it; a reload may change it).
    pub shared: Arc<crate::connection::Shared>,
    /// What the command line set over the file, for `/api/v1/config/check`.
    pub overrides: crate::config::Overrides,
    /// Where the MQTT listeners are bound.
    pub listeners: Arc<crate::reload::Swap<Vec<crate::broker::BoundListener>>>,
    pub bridges: Arc<StatusList>,
    pub metrics: Arc<Metrics>,
    /// The router's latest numbers.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// When the broker started (uptime).
    pub started: std::time::Instant,
}

/// Serve the admin endpoint on `listener` until `shutdown`; over HTTPS with
/// `tls` (whose certificates a reload reads again).
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<AdminContext>,
    tls: Option<Arc<crate::tls::TlsCell>>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!("admin accept: {e}");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let ctx = ctx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => handle(stream, &ctx).await,
                Some(cell) => {
                    // Bounded like a request head: a silent peer cannot hold a slot.
                    let acceptor = tokio_rustls::TlsAcceptor::from(cell.current());
                    match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => handle(s, &ctx).await,
                        Ok(Err(e)) => debug!("admin TLS handshake failed: {e}"),
                        Err(_) => debug!("admin TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, ctx: &AdminContext) {
    let config = ctx.shared.config.get();
    let (router, token, bridges) = (&ctx.router, config.admin.token.as_deref(), &*ctx.bridges);
    let req = match read_request(&mut s, READ_TIMEOUT).await {
        Ok(r) => r,
        Err(HttpError::TooLarge) => return reply(&mut s, 413, error("request too large")).await,
        Err(HttpError::Malformed) => return reply(&mut s, 400, error("malformed request")).await,
        Err(_) => return,
    };
    // The status page itself holds no data (its scripts call the API, with
    // the token when there is one): a browser can load it without one.
    if req.path.is_empty() && req.method == "GET" {
        return http::write_typed(&mut s, 200, "text/html; charset=utf-8", PAGE.as_bytes()).await;
    }
    if let Some(t) = token {
        let given = req.bearer.as_deref().unwrap_or("");
        if !constant_time_eq(given.as_bytes(), t.as_bytes()) {
            return reply(
                &mut s,
                401,
                error("a valid Authorization: Bearer token is required"),
            )
            .await;
        }
    }
    if req.path == ["metrics"] || req.path == ["api", "v1", "status"] {
        if req.method != "GET" {
            return reply(&mut s, 405, error("use GET")).await;
        }
        let snapshot = ctx.snapshots.borrow().clone();
        if req.path == ["metrics"] {
            let text = prometheus::render(ctx.metrics.clone(), snapshot, bridges.get());
            return http::write_typed(&mut s, 200, prometheus::CONTENT_TYPE, text.as_bytes()).await;
        }
        return reply(&mut s, 200, status_json(ctx, &snapshot)).await;
    }
    if req.path == ["api", "v1", "config", "check"] {
        if req.method != "POST" {
            return reply(&mut s, 405, error("use POST with the file as the body")).await;
        }
        let mut req = req;
        match http::read_body(&mut s, &mut req, READ_TIMEOUT).await {
            Ok(()) => {}
            Err(HttpError::TooLarge) => {
                return reply(&mut s, 413, error("a config file over 256 KiB")).await
            }
            Err(_) => return reply(&mut s, 400, error("the body did not arrive")).await,
        }
        let (status, body) = check_config(ctx, &config, &req.body);
        return reply(&mut s, status, body).await;
    }
    if req.path == ["api", "v1", "bridges"] {
        if req.method != "GET" {
            return reply(&mut s, 405, error("use GET")).await;
        }
        let body = bridges_json(router, &bridges.get()).await;
        return reply(&mut s, 200, body).await;
    }
    let path: Vec<&str> = req.path.iter().map(String::as_str).collect();
    if let ["api", "v1", "bridges", name, "purge"] = path.as_slice() {
        if req.method != "POST" {
            return reply(&mut s, 405, error("use POST")).await;
        }
        let (status, body) = purge_bridge(router, bridges, name).await;
        return reply(&mut s, status, body).await;
    }
    let request = match route(&req) {
        Ok(r) => r,
        Err((status, why)) => return reply(&mut s, status, error(&why)).await,
    };
    let mutation = matches!(
        request,
        AdminRequest::Purge(_)
            | AdminRequest::Redrive { .. }
            | AdminRequest::Kick(_)
            | AdminRequest::ClearRetained(_)
    );
    let (tx, rx) = oneshot::channel();
    let answer = match router.send(RouterMsg::Admin { request, reply: tx }).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let Some(answer) = answer else {
        return reply(&mut s, 503, error("the broker is shutting down")).await;
    };
    let (status, body) = render(answer);
    if mutation {
        // With the status: a refused operation (404) is no change.
        info!(method = %req.method, path = %req.path.join("/"), status, "admin operation");
    }
    reply(&mut s, status, body).await
}

/// `POST /api/v1/config/check`: what a SIGHUP would do with this file (its
/// text is the body): 200 with every change, each applied live or needing a
/// restart; 422 with the errors when the file would not load. The files it
/// names are not opened here (`tern check-config` loads them on its side): a
/// caller must not make the broker read paths of its choosing.
fn check_config(
    ctx: &AdminContext,
    running: &crate::config::Config,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let Ok(text) = std::str::from_utf8(body) else {
        return (400, error("the file is not UTF-8"));
    };
    match crate::broker::against_running(running, &ctx.overrides, text) {
        Ok(changes) => (200, serde_json::json!({ "changes": changes })),
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            (422, serde_json::json!({ "errors": errors }))
        }
    }
}

/// `GET /api/v1/status`: what the broker is doing, from the last snapshot
/// and the counters.
fn status_json(ctx: &AdminContext, s: &Snapshot) -> serde_json::Value {
    let m = &ctx.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| Metrics::get(c);
    let dropped = m.messages_dropped();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ctx.started.elapsed().as_secs(),
        "snapshot_unix_ms": s.taken_unix_ms,
        "connections": get(&m.connections_current),
        "connections_hibernating": get(&m.connections_hibernating),
        "clients_connected": s.clients_connected,
        "clients_maximum": s.clients_maximum,
        "sessions": s.sessions,
        "subscriptions": s.subscriptions,
        "inflight": s.inflight,
        "queued": s.queued,
        "retained_messages": s.retained_messages,
        "retained_bytes": s.retained_bytes,
        "messages_received": m.messages_received(),
        "messages_sent": m.messages_sent(),
        "bytes_received": get(&m.bytes_received),
        "bytes_sent": get(&m.bytes_sent),
        "messages_dropped": dropped,
        "store_written_bytes": get(&m.store_bytes_written),
        "resident_bytes": process::ProcessStats::read().map(|p| p.resident_bytes),
        "listeners": *ctx.listeners.get(),
        "queues": s.queues,
    })
}

/// `POST /api/v1/bridges/<name>/purge`: drop what waits in a bridge's buffer
/// (not what is in flight). A bridge a reload removed is then forgotten: its
/// emptied queue goes with the next sweep.
async fn purge_bridge(
    router: &mpsc::Sender<RouterMsg>,
    bridges: &StatusList,
    name: &str,
) -> (u16, serde_json::Value) {
    let Some(b) = bridges.get().iter().find(|b| b.name == name).cloned() else {
        return (404, error(&format!("no bridge named {name:?}")));
    };
    let (tx, rx) = oneshot::channel();
    let request = AdminRequest::Purge(b.queue.clone());
    let answer = match router.send(RouterMsg::Admin { request, reply: tx }).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let Some(answer) = answer else {
        return (503, error("the broker is shutting down"));
    };
    if b.is_removed() {
        bridges.update(|list| {
            list.iter()
                .filter(|s| !Arc::ptr_eq(s, &b))
                .cloned()
                .collect()
        });
    }
    info!(bridge = %name, removed = b.is_removed(), "admin operation: bridge buffer purged");
    match answer {
        // A removed bridge whose buffer already went is purged all the same.
        AdminReply::NoSuchQueue(_) => (200, serde_json::json!({ "count": 0 })),
        other => render(other),
    }
}

/// `GET /api/v1/bridges`: each bridge's link state and counters, with its
/// buffer's numbers (its work queue's stats, from the router).
async fn bridges_json(
    router: &mpsc::Sender<RouterMsg>,
    bridges: &[Arc<BridgeStatus>],
) -> serde_json::Value {
    let mut out = Vec::with_capacity(bridges.len());
    for b in bridges {
        let mut v = b.to_json();
        let (tx, rx) = oneshot::channel();
        let request = AdminRequest::Queue(b.queue.clone());
        if router
            .send(RouterMsg::Admin { request, reply: tx })
            .await
            .is_ok()
        {
            if let Ok(AdminReply::Queue(q)) = rx.await {
                if let (Some(obj), Ok(q)) = (v.as_object_mut(), serde_json::to_value(q)) {
                    for (from, to) in [
                        ("depth", "buffered"),
                        ("bytes", "buffered_bytes"),
                        ("oldest_age_ms", "oldest_buffered_age_ms"),
                        ("in_flight", "in_flight"),
                        ("dead_lettered", "dead_lettered"),
                        ("dropped", "dropped"),
                    ] {
                        if let Some(x) = q.get(from) {
                            obj.insert(to.into(), x.clone());
                        }
                    }
                }
            }
        }
        out.push(v);
    }
    serde_json::json!({ "bridges": out })
}

async fn reply<S: AsyncWrite + Unpin>(s: &mut S, status: u16, body: serde_json::Value) {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    write_response(s, status, &bytes).await;
}

fn error(why: &str) -> serde_json::Value {
    serde_json::json!({ "error": why })
}

/// The router request a path and method ask for, or the HTTP error.
fn route(req: &Request) -> Result<AdminRequest, (u16, String)> {
    let get = req.method == "GET";
    let post = req.method == "POST";
    let query = |k: &str| {
        req.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let number = |k: &str, default: usize| -> Result<usize, (u16, String)> {
        query(k).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| (400, format!("{k} must be a whole number")))
        })
    };
    let path: Vec<&str> = req.path.iter().map(String::as_str).collect();
    let (want_get, request) = match path.as_slice() {
        ["api", "v1", "queues"] => (true, AdminRequest::Queues),
        ["api", "v1", "queues", name] => (true, AdminRequest::Queue(name.to_string())),
        ["api", "v1", "queues", name, "messages"] => (
            true,
            AdminRequest::Peek {
                queue: name.to_string(),
                n: number("n", DEFAULT_PEEK)?.min(MAX_PEEK),
            },
        ),
        ["api", "v1", "queues", name, "purge"] => (false, AdminRequest::Purge(name.to_string())),
        ["api", "v1", "clients"] => (
            true,
            AdminRequest::Clients {
                after: query("after").filter(|a| !a.is_empty()).map(str::to_string),
                limit: number("limit", crate::router::DEFAULT_CLIENTS_PAGE)?
                    .min(crate::router::MAX_CLIENTS_PAGE),
            },
        ),
        ["api", "v1", "clients", id, "kick"] => (false, AdminRequest::Kick(id.to_string())),
        ["api", "v1", "retained"] => (
            true,
            AdminRequest::Retained(RetainedQuery {
                after: query("after").filter(|a| !a.is_empty()).map(str::to_string),
                filter: match query("filter").filter(|f| !f.is_empty()) {
                    Some(f) => Some(listing_filter(f)?),
                    None => None,
                },
                sys: match query("sys") {
                    None | Some("false") | Some("0") => false,
                    Some("true") | Some("1") | Some("") => true,
                    Some(_) => return Err((400, "sys must be true or false".into())),
                },
                limit: number("limit", DEFAULT_RETAINED_PAGE)?.min(MAX_RETAINED_PAGE),
            }),
        ),
        ["api", "v1", "retained", "clear"] => (
            false,
            AdminRequest::ClearRetained(topic_name(query("topic"))?),
        ),
        ["api", "v1", "queues", name, "redrive"] => (
            false,
            AdminRequest::Redrive {
                from: name.to_string(),
                to: query("to").filter(|t| !t.is_empty()).map(str::to_string),
                max: number("max", DEFAULT_REDRIVE)?,
            },
        ),
        _ => return Err((404, "no such endpoint".into())),
    };
    match (want_get, get, post) {
        (true, true, _) | (false, _, true) => Ok(request),
        (true, ..) => Err((405, "use GET".into())),
        (false, ..) => Err((405, "use POST".into())),
    }
}

/// The `filter` of a retained listing: a topic filter as a SUBSCRIBE would
/// carry it (wildcards whole levels, `#` last), not a shared one.
fn listing_filter(f: &str) -> Result<String, (u16, String)> {
    crate::topic::FilterSpec::check_syntax(f)
        .map_err(|e| (400, format!("invalid topic filter {f:?}: {e}")))?;
    if f.starts_with("$share/") {
        return Err((
            400,
            format!("{f:?} is a shared subscription; give its topic filter alone"),
        ));
    }
    Ok(f.to_string())
}

/// The `topic` of a retained clear: a topic name (no wildcards: one topic).
fn topic_name(t: Option<&str>) -> Result<String, (u16, String)> {
    let t = t
        .filter(|t| !t.is_empty())
        .ok_or((400, "give the topic: ?topic=<topic>".to_string()))?;
    crate::topic::validate_topic_name(t, crate::topic::TopicLimits::UNLIMITED)
        .map_err(|e| (400, format!("invalid topic name {t:?}: {e}")))?;
    Ok(t.to_string())
}

fn render(answer: AdminReply) -> (u16, serde_json::Value) {
    let json = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
    match answer {
        AdminReply::Queues(v) => (
            200,
            serde_json::json!({ "queues": json(serde_json::to_value(v)) }),
        ),
        AdminReply::Queue(q) => (200, json(serde_json::to_value(q))),
        AdminReply::Peek(v) => (
            200,
            serde_json::json!({ "messages": json(serde_json::to_value(v)) }),
        ),
        AdminReply::Count(n) => (200, serde_json::json!({ "count": n })),
        AdminReply::NoSuchQueue(n) => (404, error(&format!("no queue named {n:?}"))),
        AdminReply::Clients(v) => {
            // The cursor for the next page: the last id of this one.
            let next = v.last().map(|c| c.id.clone());
            (
                200,
                serde_json::json!({ "clients": json(serde_json::to_value(&v)), "next_after": next }),
            )
        }
        AdminReply::NoSuchClient(n) => (404, error(&format!("no connected client {n:?}"))),
        AdminReply::Retained(page) => (
            200,
            serde_json::json!({
                "retained": json(serde_json::to_value(&page.entries)),
                "next_after": page.next_after,
            }),
        ),
        AdminReply::NoSuchRetained(t) => (404, error(&format!("no retained message on {t:?}"))),
        AdminReply::NoTarget => (
            409,
            error("the messages name no queue that exists (tern-queue); give one with to="),
        ),
    }
}

/// Compare without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> Request {
        http::parse_head(format!("{method} {target} HTTP/1.1").as_bytes()).expect("valid")
    }

    #[test]
    fn routes_and_their_methods() {
        assert_eq!(
            route(&req("GET", "/api/v1/queues")),
            Ok(AdminRequest::Queues)
        );
        assert_eq!(
            route(&req("GET", "/api/v1/queues/jobs/messages?n=5000")),
            Ok(AdminRequest::Peek {
                queue: "jobs".into(),
                n: MAX_PEEK
            })
        );
        assert_eq!(
            route(&req(
                "POST",
                "/api/v1/queues/jobs-dlq/redrive?to=jobs&max=7"
            )),
            Ok(AdminRequest::Redrive {
                from: "jobs-dlq".into(),
                to: Some("jobs".into()),
                max: 7
            })
        );
        assert_eq!(
            route(&req("GET", "/api/v1/queues/jobs/purge")).map_err(|e| e.0),
            Err(405)
        );
        assert_eq!(
            route(&req("POST", "/api/v1/queues")).map_err(|e| e.0),
            Err(405)
        );
        assert_eq!(route(&req("GET", "/metrics")).map_err(|e| e.0), Err(404));
        assert_eq!(
            route(&req("GET", "/api/v1/queues/jobs/messages?n=x")).map_err(|e| e.0),
            Err(400)
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn retained_routes_check_their_parameters() {
        let listing = |after: Option<&str>, filter: Option<&str>, sys, limit| {
            Ok(AdminRequest::Retained(RetainedQuery {
                after: after.map(str::to_string),
                filter: filter.map(str::to_string),
                sys,
                limit,
            }))
        };
        assert_eq!(
            route(&req("GET", "/api/v1/retained")),
            listing(None, None, false, DEFAULT_RETAINED_PAGE)
        );
        // `+` decodes to a space in a query, so a filter's wildcards come
        // percent-encoded (as the CLI sends them).
        assert_eq!(
            route(&req(
                "GET",
                "/api/v1/retained?after=a%2Fb&filter=a/%2B/%23&sys=true&limit=5000"
            )),
            listing(Some("a/b"), Some("a/+/#"), true, MAX_RETAINED_PAGE)
        );
        assert_eq!(
            route(&req("GET", "/api/v1/retained?filter=&after=&sys=0&limit=3")),
            listing(None, None, false, 3)
        );
        for bad in [
            "filter=a/%23/b",
            "filter=a%2B",
            "filter=%24share/g/x",
            "filter=%24share",
            "sys=maybe",
            "limit=-1",
        ] {
            let got = route(&req("GET", &format!("/api/v1/retained?{bad}")));
            assert_eq!(got.as_ref().map_err(|e| e.0), Err(400), "{bad}: {got:?}");
        }
        assert_eq!(
            route(&req("POST", "/api/v1/retained/clear?topic=a%2Fb%20c")),
            Ok(AdminRequest::ClearRetained("a/b c".into()))
        );
        for bad in ["", "?topic=", "?topic=a/%2B", "?topic=%23"] {
            let got = route(&req("POST", &format!("/api/v1/retained/clear{bad}")));
            assert_eq!(got.as_ref().map_err(|e| e.0), Err(400), "{bad}: {got:?}");
        }
        assert_eq!(
            route(&req("GET", "/api/v1/retained/clear?topic=a")).map_err(|e| e.0),
            Err(405)
        );
        assert_eq!(
            route(&req("POST", "/api/v1/retained")).map_err(|e| e.0),
            Err(405)
        );
    }
}
