//! Bridges to other kinds of remote, black-box: a second `tern` process,
//! RabbitMQ's MQTT plugin (read back over AMQP from a quorum queue), and a
//! Mosquitto that bridges the same topics back to Tern. A missing peer
//! (Mosquitto, RabbitMQ, pika) fails the test: `.ci/run` installs them.

#[path = "common/bridge.rs"]
mod bridge;
mod common;

use bridge::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern::protocol::{Packet, QoS};

/// A plain Tern (no bridge) listening on `127.0.0.1:port`, anonymous, its
/// store in `dir/remote-data`.
fn remote_tern_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("remote.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:{port}\"\n[auth]\nallow_anonymous = true\n[storage]\ndir = \"{}/remote-data\"\n",
            dir.display()
        ),
    )
    .expect("write remote.toml");
    path
}

/// A second Tern on a fixed free port (so it can be started again where the
/// bridge looks for it): the broker, its port and its config. A port taken
/// between the probe and the bind is tried again with another.
fn start_remote_tern(dir: &Path) -> (BrokerProcess, u16, PathBuf) {
    let mut why = String::new();
    for _ in 0..5 {
        let port = free_port();
        let conf = remote_tern_config(dir, port);
        match BrokerProcess::try_spawn_config(&conf) {
            Ok(b) => {
                assert_eq!(b.addr.port(), port, "{}", b.log_text());
                return (b, port, conf);
            }
            Err(e) => why = e,
        }
    }
    panic!("the remote Tern did not start on any of 5 free ports; the last try: {why}");
}

/// The indices on `topic` in arrival order, and whether each came at `qos`.
fn on_topic(got: &[Got], topic: &str, qos: QoS) -> Vec<usize> {
    got.iter()
        .filter(|g| g.topic == topic)
        .inspect(|g| assert_eq!(g.qos, qos, "{g:?}"))
        .map(Got::index)
        .collect()
}

/// Another Tern as the remote, over v5: `out` mappings with a remote prefix
/// at QoS 1 and 2, `in` mappings with a local prefix at QoS 1 and 2; 500
/// messages each way per QoS arrive once each, at the mapping's QoS, in
/// order. Then the remote is stopped (SIGTERM), 1,000 messages are published
/// locally, the remote is started again on the same port with its store, and
/// its persistent subscriber gets all 1,000, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tern_as_the_remote_both_ways_and_through_its_restart() {
    const N: usize = 500;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut remote, port, remote_conf) = start_remote_tern(dir.path());
    let raddr = remote.addr;
    // A persistent subscriber on the remote (it is away during the outage).
    let (mut rsub, _) = raw_connected(raddr, V311, "remote-sub", false).await;
    rsub.subscribe(1, "gw1/#", QoS::ExactlyOnce).await;
    let conf = tern_config_with(
        dir.path(),
        raddr,
        "5",
        r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" },
           { filter = "alarms/#", direction = "out", qos = 2, remote_prefix = "gw1/" },
           { filter = "cmd/#", direction = "in", qos = 1, local_prefix = "cloud/" },
           { filter = "cfg/#", direction = "in", qos = 2, local_prefix = "cloud/" }"#,
    );
    let tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    assert!(
        tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
        "{}",
        tern.log_text()
    );
    let (mut local, _) = raw_connected(addr, V5, "local-sub", true).await;
    local.subscribe(1, "cloud/#", QoS::ExactlyOnce).await;

    // Out: sensors/a (mapping QoS 1) and alarms/a (QoS 2), interleaved.
    let (mut lpub, _) = raw_connected(addr, V311, "local-pub", true).await;
    let out = (0..2 * N).map(|i| {
        let topic = if i % 2 == 0 { "sensors/a" } else { "alarms/a" };
        (topic.to_string(), format!("m-{i}"))
    });
    publish_pipelined(&mut lpub, out, QoS::AtLeastOnce, 64).await;
    let got = collect(&mut rsub, 2 * N, Duration::from_secs(30)).await;
    let evens: Vec<usize> = (0..2 * N).step_by(2).collect();
    let odds: Vec<usize> = (1..2 * N).step_by(2).collect();
    assert_eq!(
        got.len(),
        2 * N,
        "out: each once ({} received): {}",
        got.len(),
        tern.log_text()
    );
    assert_eq!(on_topic(&got, "gw1/sensors/a", QoS::AtLeastOnce), evens);
    assert_eq!(on_topic(&got, "gw1/alarms/a", QoS::ExactlyOnce), odds);

    // In: cmd/a at QoS 1 and cfg/a at QoS 2 on the remote, under cloud/ here.
    // The bridge subscribed at its CONNACK, long before the traffic above.
    let (mut rpub, _) = raw_connected(raddr, V5, "remote-pub", true).await;
    let cmd = (0..N).map(|i| ("cmd/a".to_string(), format!("m-{i}")));
    publish_pipelined(&mut rpub, cmd, QoS::AtLeastOnce, 32).await;
    let cfg = (N..2 * N).map(|i| ("cfg/a".to_string(), format!("m-{i}")));
    publish_pipelined(&mut rpub, cfg, QoS::ExactlyOnce, 32).await;
    let got = collect(&mut local, 2 * N, Duration::from_secs(30)).await;
    assert_eq!(
        got.len(),
        2 * N,
        "in: each once ({} received): {}",
        got.len(),
        tern.log_text()
    );
    assert_eq!(
        on_topic(&got, "cloud/cmd/a", QoS::AtLeastOnce),
        (0..N).collect::<Vec<_>>()
    );
    assert_eq!(
        on_topic(&got, "cloud/cfg/a", QoS::ExactlyOnce),
        (N..2 * N).collect::<Vec<_>>()
    );
    assert!(
        got.iter()
            .all(|g| g.property("tern-bridge") == Some("cloud")),
        "imported messages are tagged"
    );

    // The outage: the remote stops, 1,000 are published here meanwhile.
    rsub.send(&Packet::Disconnect(Default::default())).await;
    drop(rsub);
    let status = remote.terminate();
    assert!(status.success(), "{status:?}: {}", remote.log_text());
    let during = (2 * N..2 * N + 1000).map(|i| ("sensors/a".to_string(), format!("m-{i}")));
    publish_pipelined(&mut lpub, during, QoS::AtLeastOnce, 64).await;
    let st = bridges_status(&tern).await;
    assert_eq!(st["bridges"][0]["connected"], false, "{st}");
    assert_eq!(bridge_waiting(&st), 1000, "{st}");

    // Back on the same port, with its store (the subscriber's session).
    let remote = BrokerProcess::try_spawn_config(&remote_conf).unwrap_or_else(|e| {
        panic!(
            "the remote Tern could not start again on its port {port} (taken by another \
             process while it was down?): {e}"
        )
    });
    assert_eq!(remote.addr.port(), port);
    let (mut rsub, ack) = raw_connected(raddr, V311, "remote-sub", false).await;
    assert!(
        ack.session_present,
        "the remote kept the session: {}",
        remote.log_text()
    );
    let got = collect(&mut rsub, 1000, Duration::from_secs(30)).await;
    assert_eq!(
        on_topic(&got, "gw1/sensors/a", QoS::AtLeastOnce),
        (2 * N..2 * N + 1000).collect::<Vec<_>>(),
        "all 1,000, once each, in order: {}\n--- remote:\n{}",
        tern.log_text(),
        remote.log_text()
    );
    assert_eq!(got.len(), 1000, "nothing else");
}

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A private RabbitMQ node (Debian's rabbitmq-server, as
/// `benches/queue-compare.sh` runs one): its own node name, AMQP, MQTT,
/// distribution and epmd ports (free loopback ports), mnesia, logs, config,
/// cookie and enabled plugins (`rabbitmq_mqtt`) in a temp dir; nothing shared
/// with a system service. The server runs in a process group of its own,
/// killed on drop (also when the test panics), with its epmd.
struct RabbitNode {
    server: Option<Child>,
    epmd: Option<Child>,
    amqp: u16,
    mqtt: u16,
    dir: tempfile::TempDir,
}

impl RabbitNode {
    /// Start a node and wait (at most 60 s) until it has booted; tried again
    /// on other ports when it exits during the boot (a port taken meanwhile).
    fn start() -> RabbitNode {
        let server = Path::new(RABBITMQ_BIN).join("rabbitmq-server");
        assert!(
            server.exists(),
            "{} is missing: RabbitMQ is not installed (apt-get install rabbitmq-server); \
             run `bash .ci/run`, it installs the test peers",
            server.display()
        );
        require("epmd");
        let mut why = String::new();
        for _ in 0..3 {
            match RabbitNode::try_start(&server) {
                Ok(node) => return node,
                Err(e) => why = e,
            }
        }
        panic!("RabbitMQ did not start in 3 tries; the last one:\n{why}");
    }

    fn try_start(server: &Path) -> Result<RabbitNode, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let (amqp, mqtt, dist, epmd_port) = (free_port(), free_port(), free_port(), free_port());
        std::fs::write(d.join("enabled_plugins"), "[rabbitmq_mqtt].\n").expect("write");
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\nmqtt.listeners.tcp.default = 127.0.0.1:{mqtt}\nmqtt.allow_anonymous = true\nlog.file.level = warning\n"
            ),
        )
        .expect("write rabbitmq.conf");
        std::fs::write(d.join("advanced.config"), "[].\n").expect("write");
        std::fs::write(d.join("rabbitmq-env.conf"), "").expect("write");
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start epmd");
        let mut node = RabbitNode {
            server: None,
            epmd: Some(epmd),
            amqp,
            mqtt,
            dir,
        };
        let d = node.dir.path();
        let stdout = std::fs::File::create(d.join("stdout")).expect("create stdout");
        let stderr = stdout.try_clone().expect("clone");
        let name = format!("tern-test-{}-{}@localhost", std::process::id(), amqp);
        let mut cmd = Command::new(server);
        cmd.env("HOME", d)
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        node.server = Some(cmd.spawn().expect("start rabbitmq-server"));
        // "Starting broker... completed with 1 plugins." ends the boot: every
        // listener is bound by then (a failed bind stops the boot).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = node.output();
            if out.contains("completed with") {
                return Ok(node);
            }
            let exited = node
                .server
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                let what = if exited {
                    "exited"
                } else {
                    "did not boot within 60 s"
                };
                return Err(format!("rabbitmq-server {what}:\n{out}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's stdout and stderr, and its log files.
    fn output(&self) -> String {
        let d = self.dir.path();
        let mut s = std::fs::read_to_string(d.join("stdout")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(d.join("log")) {
            for e in entries.flatten() {
                s += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        s
    }

    /// Run `tests/rabbitmq_readback.py` with `args` (at most `limit`).
    fn readback(&self, args: &[&str], limit: Duration) -> RunOutput {
        require("python3");
        let pika = run_bounded(
            {
                let mut c = Command::new("python3");
                c.args(["-c", "import pika"]);
                c
            },
            Duration::from_secs(30),
        );
        assert!(
            pika.status.success(),
            "pika (the Python AMQP client) is not installed: run `bash .ci/run`, it installs \
             the test peers: {}",
            pika.stderr
        );
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/rabbitmq_readback.py"
        ))
        .args(args)
        .args(["--port", &self.amqp.to_string()]);
        let out = run_bounded(cmd, limit);
        assert!(
            out.status.success(),
            "rabbitmq_readback.py {args:?}: {out:?}\n--- RabbitMQ:\n{}",
            self.output()
        );
        out
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            // The whole group: the script, beam.smp and its helpers.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut e) = self.epmd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

/// RabbitMQ's MQTT plugin as the remote (3.1.1, QoS 1): 500 messages on two
/// topics under `sensors/` are bridged out under `gw1/` to RabbitMQ, whose
/// MQTT plugin publishes them to `amq.topic` (routing key: the topic with `/`
/// as `.`), into a durable quorum queue bound with `gw1.#` and declared over
/// AMQP before the bridge sends; read back over AMQP they are all there, in
/// publish order, payloads intact, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_mqtt_as_the_remote_500_in_order_read_back_over_amqp_from_a_quorum_queue() {
    const N: usize = 500;
    let t0 = Instant::now();
    let node = RabbitNode::start();
    let booted = t0.elapsed();
    let out = node.readback(
        &["declare", "--queue", "gw1-sensors", "--key", "gw1.#"],
        Duration::from_secs(30),
    );
    assert_eq!(out.stdout.trim(), "declared", "{out:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let remote = std::net::SocketAddr::from(([127, 0, 0, 1], node.mqtt));
    let conf = tern_config_with(
        dir.path(),
        remote,
        "3.1.1",
        r#"{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" }"#,
    );
    let tern = BrokerProcess::spawn_config(&conf);
    let addr = tern.listener_addrs(1)[0];
    assert!(
        tern.wait_log_count("bridge connected", 1, Duration::from_secs(15)),
        "{}\n--- RabbitMQ:\n{}",
        tern.log_text(),
        node.output()
    );
    // Payloads of different lengths and bytes, so a mix-up shows.
    let payload = |i: usize| format!("{i:05}:{}-{i}", "abcdefghij".repeat(i % 20));
    let topic = |i: usize| if i % 2 == 0 { "sensors/a" } else { "sensors/b" };
    let (mut lpub, _) = raw_connected(addr, V311, "local-pub", true).await;
    let messages = (0..N).map(|i| (topic(i).to_string(), payload(i)));
    publish_pipelined(&mut lpub, messages, QoS::AtLeastOnce, 64).await;

    let out = node.readback(
        &[
            "read",
            "--queue",
            "gw1-sensors",
            "--count",
            &N.to_string(),
            "--timeout",
            "30",
        ],
        Duration::from_secs(60),
    );
    let got: Vec<(&str, &str)> = out
        .stdout
        .lines()
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    let expected: Vec<(String, String)> = (0..N)
        .map(|i| (format!("gw1.{}", topic(i).replace('/', ".")), payload(i)))
        .collect();
    let expected: Vec<(&str, &str)> = expected
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        got.len(),
        N,
        "all {N} in the quorum queue ({} read): {}\n--- RabbitMQ:\n{}",
        got.len(),
        tern.log_text(),
        node.output()
    );
    assert!(
        got == expected,
        "in publish order, intact: first difference at {:?}",
        got.iter().zip(&expected).position(|(a, b)| a != b)
    );
    let st = bridges_status(&tern).await;
    assert_eq!(st["bridges"][0]["forwarded"], N as u64, "{st}");
    assert_eq!(bridge_waiting(&st), 0, "{st}");
    eprintln!(
        "rabbitmq: booted in {booted:?}, whole test {:?}",
        t0.elapsed()
    );
}

/// Tern and a Mosquitto that each bridge to the other, the same topics both
/// ways: Tern's bridge (`loop/#`, `both`, to Mosquitto) and Mosquitto's own
/// bridge (`topic loop/# both 1`, to Tern's listener), both over `protocol`.
/// Tern is started first (its listener on an OS-picked port, its bridge
/// retrying towards a free port Mosquitto then takes); when Mosquitto cannot
/// bind that port, both are started again on others.
fn start_bridged_pair(dir: &Path, protocol: &str) -> (BrokerProcess, Mosquitto) {
    for attempt in 0..5 {
        let d = dir.join(format!("try-{attempt}"));
        std::fs::create_dir_all(&d).expect("mkdir");
        let port = free_port();
        let conf = tern_config_with(
            &d,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            protocol,
            r#"{ filter = "loop/#", direction = "both", qos = 1 }"#,
        );
        let tern = BrokerProcess::spawn_config(&conf);
        let tern_port = tern.listener_addrs(1)[0].port();
        let version = if protocol == "5" {
            "mqttv50"
        } else {
            "mqttv311"
        };
        // try_private is left at Mosquitto's default (true): its CONNECT
        // carries the bridge flag (protocol level | 0x80), which tells Tern
        // that this client is another broker's bridge.
        let extra = format!(
            "connection tern-back\naddress 127.0.0.1:{tern_port}\nremote_clientid mosquitto-back\n\
             bridge_protocol_version {version}\nnotifications false\n\
             cleansession true\nrestart_timeout 1\nkeepalive_interval 5\ntopic loop/# both 1\n"
        );
        if let Some(m) = Mosquitto::start_on(&d, port, &extra) {
            return (tern, m);
        }
    }
    panic!("mosquitto did not start on any of 5 free ports");
}

/// No loop when Mosquitto bridges the same topics back (v5 and 3.1.1). The
/// two bridges are two paths between the brokers: a message may reach a
/// side along each, and come back once (3.1.1 has no No Local). Tern never
/// carries a message from one bridge into another: what its own bridge
/// imported, and what Mosquitto's bridge (known by the bridge flag in its
/// CONNECT) published into Tern, goes neither out through Tern's bridge nor
/// to Mosquitto's. So each subscriber gets
/// each message at least once and at most 4 times, and, what matters, the
/// traffic stops: in the 2 s after the copies settled nothing more arrives
/// on either side and the bridge's counters stand still (a loop grows
/// without end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loop_when_mosquitto_bridges_the_same_topics_back() {
    for protocol in ["5", "3.1.1"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tern, mosquitto) = start_bridged_pair(dir.path(), protocol);
        assert!(
            tern.wait_log_count("bridge connected", 1, Duration::from_secs(10)),
            "{protocol}: Tern's bridge: {}",
            tern.log_text()
        );
        assert!(
            // Over 3.1.1 its CONNECT carries the bridge flag; Mosquitto sets
            // none on a v5 bridge (there the `tern-origin` stamp makes a
            // returning copy known).
            wait_until(Duration::from_secs(15), || tern.log_text().lines().any(
                |l| {
                    l.contains("client=\"mosquitto-back\"")
                        && l.contains(if protocol == "3.1.1" {
                            "connected: another broker's bridge"
                        } else {
                            "connected"
                        })
                }
            ))
            .await,
            "{protocol}: Mosquitto's bridge did not connect to Tern: {}",
            tern.log_text()
        );
        // Both bridges subscribe right after their CONNACK.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (mut tsub, _) = raw_connected(tern.addr, V5, "tern-sub", true).await;
        tsub.subscribe(1, "loop/#", QoS::AtLeastOnce).await;
        let (mut msub, _) = raw_connected(mosquitto.addr, V311, "mosquitto-sub", true).await;
        msub.subscribe(1, "loop/#", QoS::AtLeastOnce).await;

        let (mut tpub, _) = raw_connected(tern.addr, V311, "tern-pub", true).await;
        let (mut mpub, _) = raw_connected(mosquitto.addr, V311, "mosquitto-pub", true).await;
        for i in 0..3u16 {
            let payload = format!("t-{i}");
            publish_one(
                &mut tpub,
                "loop/from-tern",
                QoS::AtLeastOnce,
                i + 1,
                payload.as_bytes(),
            )
            .await;
            let payload = format!("m-{i}");
            publish_one(
                &mut mpub,
                "loop/from-mosquitto",
                QoS::AtLeastOnce,
                i + 1,
                payload.as_bytes(),
            )
            .await;
        }
        // Copies settle within 3 s; then 2 s more must bring nothing.
        let (t_got, m_got) = tokio::join!(
            collect(&mut tsub, usize::MAX, Duration::from_secs(3)),
            collect(&mut msub, usize::MAX, Duration::from_secs(3))
        );
        let before = bridges_status(&tern).await;
        let (t_more, m_more) = tokio::join!(
            collect(&mut tsub, usize::MAX, Duration::from_secs(2)),
            collect(&mut msub, usize::MAX, Duration::from_secs(2))
        );
        let after = bridges_status(&tern).await;
        let counts = |got: &[Got]| {
            let mut c: Vec<(String, usize)> = payload_counts(got).into_iter().collect();
            c.sort();
            c
        };
        assert!(
            t_more.is_empty() && m_more.is_empty(),
            "{protocol}: a loop: {} more messages at Tern's subscriber and {} at Mosquitto's \
             in the 2 s after 3 s of settling (copies in the first 3 s: Tern {:?}, Mosquitto \
             {:?}); Tern's bridge then {} and 2 s later {}",
            t_more.len(),
            m_more.len(),
            counts(&t_got),
            counts(&m_got),
            before["bridges"][0],
            after["bridges"][0]
        );
        for key in ["forwarded", "received"] {
            assert_eq!(
                before["bridges"][0][key], after["bridges"][0][key],
                "{protocol}: {key} stands still: {before} / {after}"
            );
        }
        for (side, got) in [("Tern", &t_got), ("Mosquitto", &m_got)] {
            let c = payload_counts(got);
            for p in ["t-0", "t-1", "t-2", "m-0", "m-1", "m-2"] {
                let n = c.get(p).copied().unwrap_or(0);
                assert!(
                    (1..=4).contains(&n),
                    "{protocol}: {side}'s subscriber got {p} {n} times: {:?}",
                    counts(got)
                );
            }
        }
    }
}
