//! What a TLS handshake costs the broker: the real `tern` binary (release) with a
//! plain, a TLS and a mutual-TLS listener (throw-away ECDSA P-256 certificates from
//! rcgen), and client tasks in this process that each loop: TCP connect, full TLS
//! handshake (no session resumption), CONNECT, CONNACK, close. Prints connections
//! per second and, from /proc, the broker's CPU time per connection, which is
//! what matters on a small board (the clients share the machine).
//!
//! `cargo bench --bench tls_handshake` (about 40 s). Not a test: no assertions
//! (`cargo test` runs it for a moment only).

use bytes::BytesMut;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern::protocol::{self, Connect, Packet, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(dead_code)]
#[path = "../tests/common/pki.rs"]
mod pki;

const CLIENTS: usize = 8;

/// 8 s per row under `cargo bench` (which passes `--bench`); under `cargo test
/// --all-targets` a 200 ms smoke run, so CI only checks that it works.
fn run_time() -> Duration {
    if std::env::args().any(|a| a == "--bench") {
        Duration::from_secs(8)
    } else {
        Duration::from_millis(200)
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which is in parentheses): utime is the 12th,
    // stime the 13th of what follows ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

async fn one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, id: &str) {
    let mut b = BytesMut::new();
    let c = Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }));
    protocol::encode(&c, ProtocolVersion::V311, &mut b).unwrap();
    s.write_all(&b).await.unwrap();
    s.flush().await.unwrap();
    let mut r = [0u8; 4];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(r, [0x20, 2, 0, 0], "CONNACK accepted");
    b.clear();
    protocol::encode(
        &Packet::Disconnect(Default::default()),
        ProtocolVersion::V311,
        &mut b,
    )
    .unwrap();
    s.write_all(&b).await.unwrap();
    let _ = s.shutdown().await;
}

async fn run(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>, pid: u32, label: &str) {
    let done = Arc::new(AtomicU64::new(0));
    let run_for = run_time();
    let start = Instant::now();
    let t0 = cpu_ticks(pid);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let done = done.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("hs-{i}");
            while start.elapsed() < run_for {
                let tcp = TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                match &tls {
                    None => one(tcp, &id).await,
                    Some(cfg) => {
                        let name = ServerName::try_from("localhost").unwrap();
                        let s = tokio_rustls::TlsConnector::from(cfg.clone())
                            .connect(name, tcp)
                            .await
                            .unwrap();
                        one(s, &id).await
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let ticks = cpu_ticks(pid) - t0;
    let hz = 100.0; // USER_HZ on Linux
    let n = done.load(Ordering::Relaxed) as f64;
    let cpu = ticks as f64 / hz;
    println!(
        "{label:<28} {:>8.0} conn/s   broker CPU {:>6.0} us/conn  ({:.0} conn per broker CPU-second)",
        n / secs,
        cpu / n * 1e6,
        n / cpu.max(1e-9)
    );
}

fn client_config(
    ca: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client: Option<(&str, &str)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut c = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    // Full handshakes only: the worst case, a fleet reconnecting after an outage.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

fn main() {
    // The tests' throw-away PKI: a CA, a server certificate for localhost and
    // a client certificate (ECDSA P-256 keys).
    let pki = pki::Pki::new();
    let ca_pem = pki.ca.cert_pem.clone();
    let (ccert, ckey) = pki.ca.client("bench-device");
    let p = |n: &str| pki.path(n);
    let tls = pki.tls_toml(false, false, false);
    let mtls = pki.tls_toml(true, true, true);
    let config = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\ntls = {tls}\n\
         [[listeners]]\nbind = \"127.0.0.1:0\"\ntls = {mtls}\n[storage]\nin_memory = true\n\
         [limits]\nlisten_backlog = 4096\n[auth]\nallow_anonymous = true\n"
    );
    std::fs::write(p("tern.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("-c")
        .arg(p("tern.toml"))
        .args(["--log", "warn,tern::broker=info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut addrs = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            addrs.push(a.trim().parse::<SocketAddr>().unwrap());
            if addrs.len() == 3 {
                break;
            }
        }
    }
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use rustls::version::{TLS12, TLS13};
        run(addrs[0], None, pid, "plain TCP").await;
        run(
            addrs[1],
            Some(client_config(&ca_pem, &[&TLS13], None)),
            pid,
            "TLS 1.3, ECDSA P-256",
        )
        .await;
        run(
            addrs[1],
            Some(client_config(&ca_pem, &[&TLS12], None)),
            pid,
            "TLS 1.2, ECDSA P-256",
        )
        .await;
        run(
            addrs[2],
            Some(client_config(&ca_pem, &[&TLS13], Some((&ccert, &ckey)))),
            pid,
            "TLS 1.3 mutual, CN as user",
        )
        .await;
    });
    let _ = child.kill();
    let _ = child.wait();
}
