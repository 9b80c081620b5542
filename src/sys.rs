//! The `$SYS` tree: what the broker publishes about itself every
//! `[mqtt] sys_interval`, retained, under Mosquitto's names where it has them
//! (`$SYS/broker/uptime`, `clients/connected`, `load/messages/received/1min`
//! ...), so tools written for Mosquitto read Tern, plus
//! `$SYS/broker/queues/<name>/...` and `$SYS/broker/bridges/<name>/...`. Pure:
//! given the time, the counters and the router's snapshot, it returns the
//! messages; the router publishes them (kept in memory only, never written to
//! the store: they are rewritten every interval and would wear a flash card).

use crate::router::Snapshot;
use std::time::{Duration, Instant};

/// The counters `$SYS` reports, read from `Metrics` by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SysCounters {
    pub publish_received: u64,
    pub publish_sent: u64,
    pub publish_dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub connections_accepted: u64,
}

/// One bridge's line in `$SYS/broker/bridges/<name>/...`.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeSys {
    pub name: String,
    pub connected: bool,
    pub buffered: u64,
    pub forwarded: u64,
    pub received: u64,
    pub refused: u64,
}

/// Moving averages of per-minute rates over 1, 5 and 15 minutes (what
/// Mosquitto calls load).
#[derive(Debug, Clone, Copy, Default)]
struct Load([f64; 3]);

const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

impl Load {
    /// `delta` more over `dt`.
    fn update(&mut self, delta: u64, dt: Duration) {
        let secs = dt.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let per_minute = delta as f64 * 60.0 / secs;
        for (avg, (window, _)) in self.0.iter_mut().zip(WINDOWS) {
            *avg += (per_minute - *avg) * (1.0 - (-secs / window).exp());
        }
    }
}

pub struct Sys {
    started: Instant,
    last: Option<(Instant, SysCounters)>,
    /// publish received / sent, bytes received / sent, connections.
    loads: [Load; 5],
}

impl Sys {
    pub fn new(started: Instant) -> Sys {
        Sys {
            started,
            last: None,
            loads: [Load::default(); 5],
        }
    }

    /// The messages to publish at `now`: (topic, payload), every one retained.
    pub fn messages(
        &mut self,
        now: Instant,
        c: SysCounters,
        s: &Snapshot,
        bridges: &[BridgeSys],
    ) -> Vec<(String, String)> {
        if let Some((at, prev)) = self.last {
            let dt = now.saturating_duration_since(at);
            let deltas = [
                c.publish_received.saturating_sub(prev.publish_received),
                c.publish_sent.saturating_sub(prev.publish_sent),
                c.bytes_received.saturating_sub(prev.bytes_received),
                c.bytes_sent.saturating_sub(prev.bytes_sent),
                c.connections_accepted
                    .saturating_sub(prev.connections_accepted),
            ];
            for (load, d) in self.loads.iter_mut().zip(deltas) {
                load.update(d, dt);
            }
        }
        self.last = Some((now, c));
        let mut out: Vec<(String, String)> = Vec::with_capacity(64);
        let mut put = |topic: &str, v: String| out.push((format!("$SYS/broker/{topic}"), v));
        put(
            "version",
            format!("tern version {}", env!("CARGO_PKG_VERSION")),
        );
        put(
            "uptime",
            format!(
                "{} seconds",
                now.saturating_duration_since(self.started).as_secs()
            ),
        );
        put("clients/connected", s.clients_connected.to_string());
        put("clients/total", s.sessions.to_string());
        put(
            "clients/disconnected",
            s.sessions.saturating_sub(s.clients_connected).to_string(),
        );
        put("clients/maximum", s.clients_maximum.to_string());
        // Mosquitto counts every packet in messages/*; Tern counts PUBLISH
        // packets there too, as publish/messages/* does.
        put("messages/received", c.publish_received.to_string());
        put("messages/sent", c.publish_sent.to_string());
        put("publish/messages/received", c.publish_received.to_string());
        put("publish/messages/sent", c.publish_sent.to_string());
        put("publish/messages/dropped", c.publish_dropped.to_string());
        put("bytes/received", c.bytes_received.to_string());
        put("bytes/sent", c.bytes_sent.to_string());
        put("subscriptions/count", s.subscriptions.to_string());
        put("retained messages/count", s.retained_messages.to_string());
        let queue_messages: usize = s.queues.iter().map(|q| q.depth + q.in_flight).sum();
        put(
            "store/messages/count",
            (s.queued + s.inflight + queue_messages).to_string(),
        );
        put("messages/inflight", s.inflight.to_string());
        // Mosquitto has both load/messages/* (every packet) and
        // load/publish/*; Tern counts PUBLISH packets for both.
        let loads = [
            ("load/messages/received", 0),
            ("load/messages/sent", 1),
            ("load/bytes/received", 2),
            ("load/bytes/sent", 3),
            ("load/connections", 4),
            ("load/publish/received", 0),
            ("load/publish/sent", 1),
        ];
        for (name, i) in loads {
            for (avg, (_, w)) in self.loads[i].0.iter().zip(WINDOWS) {
                put(&format!("{name}/{w}"), format!("{avg:.2}"));
            }
        }
        for q in &s.queues {
            let p = format!("queues/{}", q.name);
            put(&format!("{p}/depth"), q.depth.to_string());
            put(&format!("{p}/in_flight"), q.in_flight.to_string());
            put(&format!("{p}/consumers"), q.consumers.to_string());
            put(&format!("{p}/bytes"), q.bytes.to_string());
            put(
                &format!("{p}/dead_lettered"),
                q.counters.dead_lettered.to_string(),
            );
            put(
                &format!("{p}/oldest_age_seconds"),
                q.oldest_age_ms.map_or(0, |ms| ms / 1000).to_string(),
            );
        }
        for b in bridges {
            let p = format!("bridges/{}", b.name);
            put(&format!("{p}/connected"), u8::from(b.connected).to_string());
            put(&format!("{p}/buffered"), b.buffered.to_string());
            put(&format!("{p}/forwarded"), b.forwarded.to_string());
            put(&format!("{p}/received"), b.received.to_string());
            put(&format!("{p}/refused"), b.refused.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(m: &'a [(String, String)], t: &str) -> &'a str {
        &m.iter()
            .find(|(topic, _)| topic == t)
            .unwrap_or_else(|| panic!("no {t}"))
            .1
    }

    #[test]
    fn mosquitto_names_and_loads_that_follow_the_rate() {
        let t0 = Instant::now();
        let mut sys = Sys::new(t0);
        let s = Snapshot {
            clients_connected: 3,
            sessions: 5,
            clients_maximum: 4,
            ..Snapshot::default()
        };
        let mut c = SysCounters::default();
        let first = sys.messages(t0 + Duration::from_secs(10), c, &s, &[]);
        assert_eq!(find(&first, "$SYS/broker/uptime"), "10 seconds");
        assert_eq!(find(&first, "$SYS/broker/clients/connected"), "3");
        assert_eq!(find(&first, "$SYS/broker/clients/disconnected"), "2");
        assert_eq!(
            find(&first, "$SYS/broker/load/messages/received/1min"),
            "0.00"
        );
        // 100 a second for 15 minutes: each average near 6,000 a minute.
        let mut now = t0 + Duration::from_secs(10);
        let mut last = Vec::new();
        for _ in 0..90 {
            now += Duration::from_secs(10);
            c.publish_received += 1_000;
            last = sys.messages(now, c, &s, &[]);
        }
        let one: f64 = find(&last, "$SYS/broker/load/messages/received/1min")
            .parse()
            .expect("number");
        let fifteen: f64 = find(&last, "$SYS/broker/load/messages/received/15min")
            .parse()
            .expect("number");
        assert!((one - 6000.0).abs() < 1.0, "{one}");
        assert!(fifteen > 3000.0 && fifteen < 6000.0, "{fifteen}");
        assert_eq!(find(&last, "$SYS/broker/messages/received"), "90000");
        let b = [BridgeSys {
            name: "cloud".into(),
            connected: true,
            buffered: 7,
            forwarded: 1,
            received: 2,
            refused: 0,
        }];
        let with = sys.messages(now, c, &s, &b);
        assert_eq!(find(&with, "$SYS/broker/bridges/cloud/connected"), "1");
        assert_eq!(find(&with, "$SYS/broker/bridges/cloud/buffered"), "7");
    }
}
