//! The status page (`GET /` on the admin endpoint) in a real headless
//! browser (Debian's `chromium`; `.ci/run` installs it, and a missing one
//! fails the test): after its scripts ran, the DOM shows the live client
//! count and a queue's depth, and a screenshot is kept at
//! `target/status-page.png` (a CI artifact).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;
use tern::protocol::{Packet, ProtocolVersion, QoS};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn chromium() -> &'static str {
    for p in ["chromium", "chromium-browser"] {
        if have(p) {
            return p;
        }
    }
    require("chromium");
    "chromium"
}

/// Run headless Chromium on `url` with `args`; its stdout.
fn browse(url: &str, args: &[&str], profile: &std::path::Path) -> String {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        // Tests run as root in CI containers, where the sandbox cannot start.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        // Timers run ahead in virtual time; the page's first refresh and
        // its fetches finish within it.
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "chromium failed: {}", out.stderr);
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_clients_and_queue_depth_in_a_browser() {
    let (broker, addr, admin) = start_with_admin_and_jobs().await;
    let (mut p, _) = raw_connected(addr, V5, "page-producer", true).await;
    for i in 0..3u16 {
        p.send(&publish_packet("jobs/x", QoS::AtLeastOnce, i + 1, b"job"))
            .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    let (_watcher, _) = raw_connected(addr, V5, "page-watcher", true).await;
    // The page reads the router's snapshot, taken every second.
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let url = format!("http://{admin}/");
    let profile = tempfile::tempdir().expect("profile dir");
    let dom = tokio::task::spawn_blocking({
        let (url, dir) = (url.clone(), profile.path().to_owned());
        move || browse(&url, &["--dump-dom"], &dir)
    })
    .await
    .expect("browser");
    assert!(
        dom.contains(r#"id="clients">2<"#),
        "live clients in:\n{dom}"
    );
    assert!(
        dom.contains(r#"id="queue-jobs"><td>jobs</td><td>3<"#),
        "queue depth in:\n{dom}"
    );
    assert!(dom.contains("page-producer"), "client list in:\n{dom}");
    assert!(!dom.contains("HTTP 4"), "an API call failed:\n{dom}");

    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/status-page.png");
    let _ = std::fs::remove_file(shot);
    tokio::task::spawn_blocking({
        let dir = profile.path().to_owned();
        move || {
            browse(
                &url,
                &[&format!("--screenshot={shot}"), "--window-size=1000,1100"],
                &dir,
            )
        }
    })
    .await
    .expect("browser");
    let png = std::fs::read(shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    broker.shutdown().await;
}
