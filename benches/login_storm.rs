//! What a storm of wrong passwords costs the broker (issue 10, item 1): the real
//! `tern` binary with an argon2id password file written by `tern passwd`, and
//! attacker tasks in this process, each from its own loopback address
//! (127.1.x.y), that loop: connect, CONNECT with a wrong password, CONNACK,
//! close. Meanwhile a valid user logs in every 500 ms from 127.0.0.2. Then a
//! reconnect storm of valid logins (the 200 at once), to see that the
//! memory comes back. Prints, per setting, the broker's RSS before, at the peak
//! (VmHWM) and after, its threads, the attackers' outcomes, and the valid
//! user's login times.
//!
//! `cargo bench --bench login_storm` (about 35 s). Not a test: no assertions
//! (`cargo test` runs it for a moment only, with 20 attackers).

mod common;

use common::{attacker_ip, bench_mode, connect_packet, login, status};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern::protocol::ProtocolVersion;

/// Attackers, storm length and valid reconnects: the numbers under
/// `cargo bench` (which passes `--bench`); a smoke run under `cargo test
/// --all-targets`.
struct Scale {
    attackers: usize,
    storm: Duration,
    reconnects: usize,
}

fn scale() -> Scale {
    if bench_mode() {
        Scale {
            attackers: 500,
            storm: Duration::from_secs(10),
            reconnects: 200,
        }
    } else {
        Scale {
            attackers: 20,
            storm: Duration::from_millis(1200),
            reconnects: 10,
        }
    }
}

fn connect_bytes(id: &str, password: &str) -> Vec<u8> {
    connect_packet(ProtocolVersion::V5, id, true, Some(("alice", password)))
}

fn start_broker(
    dir: &Path,
    label: &str,
    auth: &str,
    limits: &str,
) -> (std::process::Child, std::net::SocketAddr) {
    let pw = dir.join("passwords");
    let config = dir.join(format!("{label}.toml"));
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[storage]\nin_memory = true\n\
             [limits]\n{limits}\n[auth]\npassword_file = {:?}\n{auth}\n",
            pw.to_str().unwrap()
        ),
    )
    .unwrap();
    common::start_broker(Path::new(env!("CARGO_BIN_EXE_tern")), &config)
}

fn run(dir: &Path, label: &str, auth: &str, limits: &str) {
    let sc = scale();
    let (mut child, addr) = start_broker(dir, label, auth, limits);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    let before = status(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (attempts, refused_bad, busy, none) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (peak_threads, mut good, during, reconnect_ok) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..sc.attackers {
            let bytes = connect_bytes(&format!("a{i}"), "guess");
            let (stop, attempts, bad, busy, none) = (
                stop.clone(),
                attempts.clone(),
                refused_bad.clone(),
                busy.clone(),
                none.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let counter = match login(addr, attacker_ip(i), &bytes).await {
                        Some(0x86) => &bad,
                        Some(0x89) => &busy,
                        _ => &none,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    attempts.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let sampler = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut threads = 0;
                while !stop.load(Ordering::Relaxed) {
                    threads = threads.max(status(pid).threads);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                threads
            })
        };
        let valid = connect_bytes("valid", "right-password");
        let mut good = Vec::new();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        while start.elapsed() < sc.storm {
            let t = Instant::now();
            let code = login(addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), &valid).await;
            good.push((code, t.elapsed()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let during = status(pid);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let peak_threads = sampler.await.unwrap();
        // A reconnect storm of valid users, each from its own address.
        let mut tasks = Vec::new();
        for i in 0..sc.reconnects {
            let bytes = connect_bytes(&format!("r{i}"), "right-password");
            tasks.push(tokio::spawn(async move {
                login(addr, attacker_ip(1000 + i), &bytes).await == Some(0)
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        (peak_threads, good, during, ok)
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = status(pid);
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    good.sort_by_key(|(_, d)| *d);
    let valid_ok = good.iter().filter(|(c, _)| *c == Some(0)).count();
    let ms = |i: usize| good.get(i).map_or(0.0, |(_, d)| d.as_secs_f64() * 1e3);
    println!("{label}");
    println!(
        "  RSS MiB: before {:.1}, during {:.1}, peak (VmHWM) {:.1}, after {:.1}; threads {} -> max {} -> {}",
        before.rss_mib, during.rss_mib, after.hwm_mib, after.rss_mib, before.threads, peak_threads, after.threads
    );
    println!(
        "  {} attackers: {} attempts, {} checked (0x86), {} busy (0x89), {} other/no answer",
        sc.attackers,
        n(&attempts),
        n(&refused_bad),
        n(&busy),
        n(&none)
    );
    println!(
        "  valid user: {valid_ok}/{} logged in; ms min {:.0} median {:.0} max {:.0}",
        good.len(),
        ms(0),
        ms(good.len() / 2),
        ms(good.len().saturating_sub(1))
    );
    println!(
        "  then {} valid logins at once: {reconnect_ok} accepted (RSS after above)",
        sc.reconnects
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    common::passwd(
        Path::new(env!("CARGO_BIN_EXE_tern")),
        &dir.path().join("passwords"),
        "alice",
        "right-password",
    );
    // The worst case: no throttle delay, so every guess reaches the queue, and
    // connect_timeout 2 s, so checks are abandoned while they wait or run.
    run(
        dir.path(),
        "no throttle delay, connect_timeout 2s",
        "failed_login_delay = 0\nfailed_login_max_delay = 0",
        "connect_timeout = \"2s\"",
    );
    if bench_mode() {
        run(dir.path(), "default settings", "", "");
    }
}
