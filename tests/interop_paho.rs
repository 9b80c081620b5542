//! Interoperability with Eclipse Paho (Python, paho-mqtt 2.x): runs
//! `tests/paho_check.py HOST PORT`, which does a QoS 1 and a QoS 2 round trip (with a
//! v5 user property), checks exactly-once delivery, and a retained message reaching
//! a later subscriber with the retain flag [MQTT-3.3.1-6], over MQTT 3.1.1 and 5.0.
//! Against both the in-process broker and the real `tern` binary.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho_check.py");

/// Fail (never skip) with a clear message when python3 or paho-mqtt is missing.
fn require_paho() {
    require("python3");
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import paho.mqtt.client; print(paho.mqtt.__version__)",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "paho-mqtt is not installed for python3 (pip install paho-mqtt): {}",
        out.stderr
    );
    assert!(
        out.stdout.trim().starts_with('2'),
        "paho_check.py needs paho-mqtt 2.x, found {}",
        out.stdout.trim()
    );
}

fn run_check(addr: SocketAddr) -> RunOutput {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    run_bounded(cmd, Duration::from_secs(30))
}

fn assert_ok(out: &RunOutput) {
    assert!(
        out.status.success(),
        "paho_check.py failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("v311: ok"), "{}", out.stdout);
    assert!(out.stdout.contains("v5: ok"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_round_trips_in_process_broker() {
    require_paho();
    let (broker, addr) = start_default().await;
    let out = tokio::task::spawn_blocking(move || run_check(addr))
        .await
        .unwrap();
    assert_ok(&out);
    broker.shutdown().await;
}

#[test]
fn paho_round_trips_real_binary() {
    require_paho();
    let broker = BrokerProcess::spawn(&[]);
    let out = run_check(broker.addr);
    assert_ok(&out);
}

#[test]
fn paho_check_reports_failure_without_a_broker() {
    // The script itself must fail loudly (non-zero, with a message) when it cannot
    // do its job, or the tests above would prove nothing.
    require_paho();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let out = run_check(addr);
    assert!(!out.status.success(), "succeeded without a broker: {out:?}");
    assert!(out.stderr.contains("FAIL"), "no failure message: {out:?}");
}
