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
use std::time::Duration;
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
