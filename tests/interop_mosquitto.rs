//! Interoperability with the Eclipse Mosquitto command-line clients (`mosquitto_pub`,
//! `mosquitto_sub`), over MQTT 3.1.1 and 5.0: QoS 0/1/2 round trips and QoS
//! downgrade, retained messages (set, replace, clear), `+` and `#` wildcards, the
//! Will of a killed client (and none after a normal DISCONNECT), v5 user properties
//! and other PUBLISH properties passed through, and `$share` load spreading.
//!
//! Some tests run the real `tern` binary (`BrokerProcess`), others an in-process
//! broker. `mosquitto_sub` runs with `-d` so the test can wait for its SUBACK before
//! publishing, and with a fixed `-F` format whose lines start with `MSG|`.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];
/// topic | qos | retain | user properties | content type | response topic | payload
const FORMAT: &str = "MSG|%t|%q|%r|%P|%C|%R|%p";

#[derive(Debug, Clone, PartialEq)]
struct Msg {
    topic: String,
    qos: u8,
    retain: bool,
    user_props: String,
    content_type: String,
    response_topic: String,
    payload: String,
}

fn parse_msg(line: &str) -> Option<Msg> {
    let rest = line.strip_prefix("MSG|")?;
    let f: Vec<&str> = rest.splitn(7, '|').collect();
    assert_eq!(f.len(), 7, "unexpected mosquitto_sub line {line:?}");
    Some(Msg {
        topic: f[0].into(),
        qos: f[1].parse().expect("qos"),
        retain: f[2] == "1",
        user_props: f[3].into(),
        content_type: f[4].into(),
        response_topic: f[5].into(),
        payload: f[6].into(),
    })
}

fn base_args(cmd: &mut Command, addr: SocketAddr, version: &str) {
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
        "-V",
        version,
    ]);
}

/// A running `mosquitto_sub -d -F FORMAT ...`; SIGKILLed on drop.
struct MosqSub {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far, for failure messages.
    transcript: Vec<String>,
}

impl MosqSub {
    fn spawn(addr: SocketAddr, version: &str, args: &[&str]) -> MosqSub {
        // stdout is a pipe, so mosquitto_sub would block-buffer it: `stdbuf -oL`
        // (which execs mosquitto_sub, same pid) makes every line arrive at once.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"]);
        base_args(&mut cmd, addr, version);
        cmd.args(["-d", "-F", FORMAT])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn mosquitto_sub");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        MosqSub {
            child,
            lines: rx,
            transcript: Vec::new(),
        }
    }

    /// The next stdout line within `d` (None on timeout or exit).
    fn line(&mut self, d: Duration) -> Option<String> {
        let l = self.lines.recv_timeout(d).ok()?;
        self.transcript.push(l.clone());
        Some(l)
    }

    /// Wait for the SUBACK (mosquitto_sub prints "received SUBACK" with -d).
    fn wait_subscribed(&mut self) {
        let deadline = Instant::now() + WAIT;
        while let Some(l) = self.line(deadline.saturating_duration_since(Instant::now())) {
            assert!(
                !l.starts_with("MSG|"),
                "message before SUBACK: {l:?} ({:?})",
                self.transcript
            );
            if l.contains("received SUBACK") {
                return;
            }
        }
        panic!(
            "mosquitto_sub did not get a SUBACK within {WAIT:?}; output {:?}",
            self.transcript
        );
    }

    /// The next message within `d`, skipping debug lines.
    fn next_msg(&mut self, d: Duration) -> Option<Msg> {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let l = self.line(left)?;
            if let Some(m) = parse_msg(&l) {
                return Some(m);
            }
        }
    }

    /// Exactly `n` messages within `WAIT` (panics with the transcript otherwise).
    fn msgs(&mut self, n: usize) -> Vec<Msg> {
        let deadline = Instant::now() + WAIT;
        let mut v = Vec::new();
        while v.len() < n {
            match self.next_msg(deadline.saturating_duration_since(Instant::now())) {
                Some(m) => v.push(m),
                None => panic!(
                    "expected {n} messages, got {v:?}; output {:?}",
                    self.transcript
                ),
            }
        }
        v
    }

    /// Messages until one has payload `end` (included), bounded by `WAIT`.
    fn msgs_until(&mut self, end: &str) -> Vec<Msg> {
        let deadline = Instant::now() + WAIT;
        let mut v = Vec::new();
        loop {
            match self.next_msg(deadline.saturating_duration_since(Instant::now())) {
                Some(m) => {
                    let done = m.payload == end;
                    v.push(m);
                    if done {
                        return v;
                    }
                }
                None => panic!(
                    "no {end:?} marker within {WAIT:?}; got {v:?}; output {:?}",
                    self.transcript
                ),
            }
        }
    }

    /// Wait up to `d` for the process to exit by itself.
    fn wait_exit(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL mosquitto_sub");
        let _ = self.child.wait();
    }
}

impl Drop for MosqSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `mosquitto_pub` to completion and assert it succeeded.
fn mpub(addr: SocketAddr, version: &str, args: &[&str]) {
    mpub_stdin(addr, version, args, b"");
}

fn mpub_stdin(addr: SocketAddr, version: &str, args: &[&str], stdin: &[u8]) {
    let mut cmd = Command::new("mosquitto_pub");
    base_args(&mut cmd, addr, version);
    cmd.args(args);
    let out = run_bounded_with_stdin(cmd, stdin, WAIT);
    assert!(
        out.status.success(),
        "mosquitto_pub -V {version} {args:?} failed: {:?}\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Run a bounded `mosquitto_sub` (use -W / -C) to completion; returns its messages.
fn msub_once(addr: SocketAddr, version: &str, args: &[&str]) -> Vec<Msg> {
    let mut cmd = Command::new("mosquitto_sub");
    base_args(&mut cmd, addr, version);
    cmd.args(["-F", FORMAT]).args(args);
    let out = run_bounded(cmd, Duration::from_secs(10));
    out.stdout.lines().filter_map(parse_msg).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_round_trips_and_downgrade() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    require("stdbuf");
    let (broker, addr) = start_default().await;
    for v in VERSIONS {
        let filter = format!("rt/{v}/#");
        let mut sub2 = MosqSub::spawn(addr, v, &["-q", "2", "-t", &filter]);
        sub2.wait_subscribed();
        let mut sub1 = MosqSub::spawn(addr, v, &["-q", "1", "-t", &filter]);
        sub1.wait_subscribed();
        for q in ["0", "1", "2"] {
            let topic = format!("rt/{v}/q{q}");
            mpub(
                addr,
                v,
                &["-q", q, "-t", &topic, "-m", &format!("payload-{q}")],
            );
        }
        let mut got2 = sub2.msgs(3);
        let mut got1 = sub1.msgs(3);
        got2.sort_by(|a, b| a.topic.cmp(&b.topic));
        got1.sort_by(|a, b| a.topic.cmp(&b.topic));
        for (i, q) in [0u8, 1, 2].into_iter().enumerate() {
            let topic = format!("rt/{v}/q{q}");
            let payload = format!("payload-{q}");
            // Delivered at min(published QoS, granted QoS) [MQTT-3.8.4-6].
            for (got, granted) in [(&got2, 2u8), (&got1, 1u8)] {
                let m = &got[i];
                assert_eq!(m.topic, topic, "{v}: {got:?}");
                assert_eq!(m.payload, payload, "{v}: {got:?}");
                assert_eq!(m.qos, q.min(granted), "{v} sub QoS {granted}: {m:?}");
                assert!(!m.retain, "live delivery with RETAIN: {m:?}");
            }
        }
        assert_eq!(sub2.next_msg(Duration::from_millis(200)), None, "duplicate");
        assert_eq!(sub1.next_msg(Duration::from_millis(50)), None, "duplicate");
    }
    broker.shutdown().await;
}

#[test]
fn retained_message_set_replaced_and_cleared_real_binary() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    require("stdbuf");
    let broker = BrokerProcess::spawn(&[]);
    let addr = broker.addr;
    for v in VERSIONS {
        let topic = format!("ret/{v}");
        mpub(addr, v, &["-r", "-q", "1", "-t", &topic, "-m", "first"]);
        // A later subscriber gets it with RETAIN=1 [MQTT-3.3.1-6].
        let got = msub_once(addr, v, &["-q", "1", "-t", &topic, "-C", "1", "-W", "5"]);
        assert_eq!(got.len(), 1, "{v}: {got:?}");
        assert_eq!(got[0].payload, "first");
        assert!(
            got[0].retain,
            "{v}: retained delivery without RETAIN: {got:?}"
        );
        assert_eq!(got[0].qos, 1);

        // A new retained message replaces the old one [MQTT-3.3.1-5].
        mpub(addr, v, &["-r", "-t", &topic, "-m", "second"]);
        let got = msub_once(addr, v, &["-t", &topic, "-W", "1"]);
        assert_eq!(got.len(), 1, "{v}: exactly one retained message: {got:?}");
        assert_eq!(got[0].payload, "second");
        assert!(got[0].retain);

        // A retained PUBLISH with an empty payload clears it [MQTT-3.3.1-10], and is
        // not itself stored [MQTT-3.3.1-11].
        mpub(addr, v, &["-r", "-n", "-t", &topic]);
        let got = msub_once(addr, v, &["-t", &topic, "-W", "1"]);
        assert!(got.is_empty(), "{v}: retained message not cleared: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_plus_and_hash() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    require("stdbuf");
    let (broker, addr) = start_default().await;
    let mut plus = MosqSub::spawn(addr, "mqttv311", &["-q", "1", "-t", "sport/+/score"]);
    plus.wait_subscribed();
    let mut hash = MosqSub::spawn(addr, "mqttv5", &["-q", "1", "-t", "sport/#"]);
    hash.wait_subscribed();
    let mut both = MosqSub::spawn(addr, "mqttv5", &["-q", "1", "-t", "+/+/+"]);
    both.wait_subscribed();
    let topics = [
        "sport/tennis/score",
        "sport/golf/score",
        "sport/tennis/player/score",
        "sport",
        "sport/",
        "other/tennis/score",
        "sports/x/score",
    ];
    for (i, t) in topics.iter().enumerate() {
        let v = VERSIONS[i % 2];
        mpub(addr, v, &["-q", "1", "-t", t, "-m", &format!("m{i}")]);
    }
    // A marker every subscriber matches, published last.
    mpub(
        addr,
        "mqttv5",
        &["-q", "1", "-t", "sport/end/score", "-m", "END"],
    );
    let topics_of = |v: Vec<Msg>| -> Vec<String> {
        let mut t: Vec<String> = v.into_iter().map(|m| m.topic).collect();
        t.sort();
        t
    };
    // `+` matches exactly one level (section 4.7.1.3)...
    assert_eq!(
        topics_of(plus.msgs_until("END")),
        vec!["sport/end/score", "sport/golf/score", "sport/tennis/score"]
    );
    // ...`#` any number of levels, including the parent itself (4.7.1.2).
    assert_eq!(
        topics_of(hash.msgs_until("END")),
        vec![
            "sport",
            "sport/",
            "sport/end/score",
            "sport/golf/score",
            "sport/tennis/player/score",
            "sport/tennis/score",
        ]
    );
    assert_eq!(
        topics_of(both.msgs_until("END")),
        vec![
            "other/tennis/score",
            "sport/end/score",
            "sport/golf/score",
            "sport/tennis/score",
            "sports/x/score",
        ]
    );
    for s in [&mut plus, &mut hash, &mut both] {
        assert_eq!(s.next_msg(Duration::from_millis(100)), None);
    }
    broker.shutdown().await;
}

#[test]
fn will_published_when_mosquitto_sub_is_killed_real_binary() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    require("stdbuf");
    let mut broker = BrokerProcess::spawn(&[]);
    let addr = broker.addr;
    for v in VERSIONS {
        let mut watcher = MosqSub::spawn(addr, v, &["-q", "1", "-t", &format!("will/{v}/#")]);
        watcher.wait_subscribed();

        // A client that ends with a normal DISCONNECT (mosquitto_sub -C 1 sends
        // reason 0x00): its Will is discarded, not published [MQTT-3.1.2-10].
        let trigger = format!("trigger/{v}");
        let mut normal = MosqSub::spawn(
            addr,
            v,
            &[
                "-t",
                &trigger,
                "-C",
                "1",
                "--will-topic",
                &format!("will/{v}/normal"),
                "--will-payload",
                "should-not-appear",
            ],
        );
        normal.wait_subscribed();
        mpub(addr, v, &["-t", &trigger, "-m", "bye"]);
        assert!(normal.wait_exit(WAIT), "mosquitto_sub -C 1 did not exit");

        if v == "mqttv5" {
            // mosquitto_sub -W ends a v5 connection with DISCONNECT reason 0x04
            // (Disconnect with Will Message): the Will is published.
            let mut cmd = Command::new("mosquitto_sub");
            base_args(&mut cmd, addr, v);
            cmd.args(["-t", "nothing/here", "-W", "1"]).args([
                "--will-topic",
                "will/mqttv5/with-will",
                "--will-payload",
                "0x04",
            ]);
            run_bounded(cmd, Duration::from_secs(10));
            let m = watcher.next_msg(WAIT).unwrap_or_else(|| {
                panic!("no will after DISCONNECT 0x04: {:?}", watcher.transcript)
            });
            assert_eq!(
                (m.topic.as_str(), m.payload.as_str()),
                ("will/mqttv5/with-will", "0x04"),
                "the normal DISCONNECT must not publish a will"
            );
        }

        // A client killed with SIGKILL: the broker sees the socket drop and
        // publishes the Will [MQTT-3.1.2-8].
        let will_topic = format!("will/{v}/killed");
        let payload = format!("gone-{v}");
        let mut victim = MosqSub::spawn(
            addr,
            v,
            &[
                "-t",
                "nothing/here",
                "--will-topic",
                &will_topic,
                "--will-payload",
                &payload,
                "--will-qos",
                "1",
            ],
        );
        victim.wait_subscribed();
        victim.kill();
        let m = watcher
            .next_msg(WAIT)
            .unwrap_or_else(|| panic!("{v}: no will within {WAIT:?}: {:?}", watcher.transcript));
        assert_eq!(
            m.topic, will_topic,
            "{v}: the first message must be the killed client's will, not the normal one's: {m:?}"
        );
        assert_eq!(m.payload, payload);
        assert_eq!(m.qos, 1, "will QoS");
        assert!(!m.retain);
        assert_eq!(watcher.next_msg(Duration::from_millis(200)), None);
    }
    assert!(broker.child.try_wait().unwrap().is_none(), "tern exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_user_properties_and_publish_properties_pass_through() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    require("stdbuf");
    let (broker, addr) = start_default().await;
    let mut v5 = MosqSub::spawn(addr, "mqttv5", &["-q", "1", "-t", "props/#"]);
    v5.wait_subscribed();
    let mut v311 = MosqSub::spawn(addr, "mqttv311", &["-q", "1", "-t", "props/#"]);
    v311.wait_subscribed();
    mpub(
        addr,
        "mqttv5",
        &[
            "-q",
            "1",
            "-t",
            "props/a",
            "-m",
            "hello",
            "-D",
            "publish",
            "user-property",
            "zeta",
            "1",
            "-D",
            "publish",
            "user-property",
            "alpha",
            "2",
            "-D",
            "publish",
            "user-property",
            "zeta",
            "3",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "props/reply",
        ],
    );
    let m = v5.msgs(1).remove(0);
    assert_eq!(m.payload, "hello");
    // User properties unchanged, in order, repeats kept [MQTT-3.3.2-17] [MQTT-3.3.2-18].
    assert_eq!(m.user_props, "zeta:1 alpha:2 zeta:3", "{m:?}");
    // Content Type and Response Topic forwarded unaltered [MQTT-3.3.2-20] [MQTT-3.3.2-15].
    assert_eq!(m.content_type, "text/plain", "{m:?}");
    assert_eq!(m.response_topic, "props/reply", "{m:?}");
    // A 3.1.1 subscriber gets the same message, without properties.
    let m = v311.msgs(1).remove(0);
    assert_eq!((m.topic.as_str(), m.payload.as_str()), ("props/a", "hello"));
    assert_eq!(m.user_props, "");
    broker.shutdown().await;
}

#[test]
fn shared_subscription_spreads_messages_real_binary() {
    require("mosquitto_pub");
    require("mosquitto_sub");
    require("stdbuf");
    let broker = BrokerProcess::spawn(&[]);
    let addr = broker.addr;
    for v in VERSIONS {
        let filter = format!("$share/g/jobs/{v}");
        let topic = format!("jobs/{v}");
        let mut a = MosqSub::spawn(addr, v, &["-q", "1", "-t", &filter]);
        a.wait_subscribed();
        let mut b = MosqSub::spawn(addr, v, &["-q", "1", "-t", &filter]);
        b.wait_subscribed();
        let mut plain = MosqSub::spawn(addr, v, &["-q", "1", "-t", &topic]);
        plain.wait_subscribed();
        const N: usize = 20;
        let lines: String = (0..N).map(|i| format!("job-{i}\n")).collect();
        // -l: one connection, one message per stdin line.
        mpub_stdin(addr, v, &["-q", "1", "-t", &topic, "-l"], lines.as_bytes());

        // The ordinary subscriber gets every message.
        let all: Vec<String> = plain.msgs(N).into_iter().map(|m| m.payload).collect();
        let expected: Vec<String> = (0..N).map(|i| format!("job-{i}")).collect();
        assert_eq!(all, expected, "{v}: non-shared subscriber");

        // Each message goes to exactly one member of the group (MQTT 5.0 4.8.2).
        let deadline = Instant::now() + WAIT;
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        while got_a.len() + got_b.len() < N && Instant::now() < deadline {
            if let Some(m) = a.next_msg(Duration::from_millis(20)) {
                got_a.push(m.payload);
            }
            if let Some(m) = b.next_msg(Duration::from_millis(20)) {
                got_b.push(m.payload);
            }
        }
        // Anything extra (a duplicate) would show up now.
        while let Some(m) = a.next_msg(Duration::from_millis(100)) {
            got_a.push(m.payload);
        }
        while let Some(m) = b.next_msg(Duration::from_millis(100)) {
            got_b.push(m.payload);
        }
        let mut union: Vec<String> = got_a.iter().chain(got_b.iter()).cloned().collect();
        union.sort_by_key(|s| s[4..].parse::<usize>().unwrap());
        assert_eq!(union, expected, "{v}: a={got_a:?} b={got_b:?}");
        assert!(
            !got_a.is_empty() && !got_b.is_empty(),
            "{v}: load not spread: a={got_a:?} b={got_b:?}"
        );
    }
}
