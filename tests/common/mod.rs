//! Shared helpers for the black-box tests: start a broker (in-process or the real
//! `tern` binary) on an OS-picked loopback port, and a raw-bytes MQTT client built on
//! Tern's codec for protocol-level assertions.
#![allow(dead_code)]

pub mod pki;

use bytes::BytesMut;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tern::config::{Config, ListenerConfig};
use tern::protocol::{self, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config listening on 127.0.0.1:0 with defaults otherwise and a fresh data
/// directory under the target dir (brokers run side by side).
pub fn test_config() -> Config {
    let mut c = Config {
        listeners: vec![ListenerConfig::plain("127.0.0.1:0".parse().unwrap())],
        ..Config::default()
    };
    // Every in-process broker runs with the durable store (default durability,
    // small segments), so the protocol tests also cover the store's holding back
    // of acknowledgements. TEST_IN_MEMORY=1 runs them in memory (not TERN_*: spawned brokers
    // read those as config).
    if std::env::var("TEST_IN_MEMORY").is_ok_and(|v| v == "1") {
        c.storage.in_memory = true;
    } else {
        with_store(&mut c);
    }
    c
}

/// Give `c` the durable store in a fresh data directory, small segments.
pub fn with_store(c: &mut Config) {
    c.storage.in_memory = false;
    c.storage.dir = tempfile::Builder::new()
        .prefix("store-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
        .keep();
    c.storage.segment_size = 65_536;
}

/// An in-process broker; call `shutdown().await` or just drop the runtime.
pub async fn start(config: Config) -> (tern::broker::Broker, SocketAddr) {
    let b = tern::broker::Broker::start(config)
        .await
        .expect("broker starts");
    let addr = b.local_addrs()[0];
    (b, addr)
}

pub async fn start_default() -> (tern::broker::Broker, SocketAddr) {
    start(test_config()).await
}

/// A broker with the admin endpoint on (127.0.0.1, port picked by the OS) and
/// a declared work queue `jobs` bound to `jobs/#`: (broker, MQTT address,
/// admin address).
pub async fn start_with_admin_and_jobs() -> (tern::broker::Broker, SocketAddr, SocketAddr) {
    let mut c = test_config();
    c.admin.bind = Some("127.0.0.1:0".parse().expect("addr"));
    let mut q = tern::config::QueueConfig::named("jobs");
    q.topics = vec!["jobs/#".into()];
    c.queues = vec![q];
    let (broker, addr) = start(c).await;
    let admin = broker.admin_addr().expect("admin on");
    (broker, addr, admin)
}

/// The real `tern` binary as a child process. Killed (SIGKILL) on drop.
pub struct BrokerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line, collected by a thread (the lines before "listening on"
    /// too, e.g. recovery warnings).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The data dir `spawn` made for this broker when the caller named none. Kept
    /// here so it lives as long as the broker; fields drop after `Drop::drop`, so
    /// the process is killed and reaped before the directory is removed.
    pub data_dir: Option<tempfile::TempDir>,
}

/// Does this argument list choose where the broker keeps its data? `--data-dir`
/// does; so does a config file (`-c` / `--config`), which may set `[storage] dir`
/// or `in_memory`, so the harness must not override it.
fn names_data_location(extra: &[&str]) -> bool {
    extra.iter().any(|a| {
        matches!(*a, "--data-dir" | "-c" | "--config")
            || a.starts_with("--data-dir=")
            || a.starts_with("--config=")
    })
}

impl BrokerProcess {
    /// Run `tern --listen 127.0.0.1:0 <extra args>` and wait for its listening line.
    /// Adds `--data-dir <fresh temp dir>` unless `extra` names a data dir or a
    /// config file: the default `./tern-data` would be shared by every test.
    pub fn spawn(extra: &[&str]) -> BrokerProcess {
        Self::spawn_with_env(extra, &[])
    }

    /// `spawn` with extra environment variables (e.g. `TERN_LIMITS__...`).
    pub fn spawn_with_env(extra: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
        let own_dir = if names_data_location(extra) {
            None
        } else {
            Some(tempfile::tempdir().expect("temp data dir"))
        };
        let mut cmd = Self::command();
        if let Some(d) = &own_dir {
            cmd.arg("--data-dir").arg(d.path());
        }
        cmd.args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut broker = Self::spawn_cmd(cmd);
        broker.data_dir = own_dir;
        broker
    }

    /// Run the broker on an existing (or to-be-created) data dir the caller owns:
    /// restarts after a kill reuse the same `dir`.
    pub fn spawn_in(dir: &std::path::Path, extra: &[&str]) -> BrokerProcess {
        let mut cmd = Self::command();
        cmd.arg("--data-dir").arg(dir).args(extra);
        Self::spawn_cmd(cmd)
    }

    /// `tern -c CONFIG --log info`: the file's own listeners and data dir.
    pub fn spawn_config(config: &std::path::Path) -> BrokerProcess {
        Self::try_spawn_config(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The addresses of the first `n` listeners, from the log, in order.
    pub fn listener_addrs(&self, n: usize) -> Vec<SocketAddr> {
        assert!(
            self.wait_log_count("listening on ", n, Duration::from_secs(5)),
            "expected {n} listening lines:\n{}",
            self.log_text()
        );
        self.log_text()
            .lines()
            .filter_map(|l| l.split("listening on ").nth(1))
            .map(|a| a.trim().parse().expect("address"))
            .collect()
    }

    /// `tern --listen 127.0.0.1:0 --log info` with stderr piped, stdout discarded.
    pub fn command() -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(["--listen", "127.0.0.1:0", "--log", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Spawn a prepared command whose first listener line gives the address.
    /// Panics with the broker's stderr if it exits (or stays silent for 20 s)
    /// without printing one.
    pub fn spawn_cmd(cmd: Command) -> BrokerProcess {
        Self::try_spawn_cmd(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `spawn_config` that returns why the broker did not start (e.g. its
    /// fixed port was taken: the caller may try another) instead of panicking.
    pub fn try_spawn_config(config: &std::path::Path) -> Result<BrokerProcess, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.arg("-c")
            .arg(config)
            .args(["--log", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Self::try_spawn_cmd(cmd)
    }

    /// `spawn_cmd`, with the failure (exit status and stderr) as an error.
    pub fn try_spawn_cmd(mut cmd: Command) -> Result<BrokerProcess, String> {
        let mut child = cmd.spawn().expect("spawn tern");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Pushed before the address is sent, so a caller sees this line.
                log2.lock().unwrap().push(line.clone());
                if !sent {
                    if let Some(i) = line.find("listening on ") {
                        let addr = line[i + "listening on ".len()..].trim().to_string();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                return Err(format!(
                    "tern did not print its listening address ({e}); exit {status:?}; stderr:\n{}",
                    log.lock().unwrap().join("\n")
                ));
            }
        };
        Ok(BrokerProcess {
            child,
            addr: addr.parse().expect("address"),
            log,
            data_dir: None,
        })
    }

    /// Send SIGHUP (reload).
    pub fn sighup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -HUP");
    }

    /// Send SIGTERM and wait (bounded) for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tern did not exit within 10 s of SIGTERM");
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw MQTT client: writes packets or bytes, reads decoded packets.
pub struct RawClient {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    buf: BytesMut,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl RawClient {
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            version,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        protocol::encode(p, self.version, &mut b).expect("encode");
        self.stream.write_all(&b).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or None on EOF / reset. Panics after `WAIT` of silence.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("a packet or EOF within the wait")
    }

    /// Ok(Some) a packet, Ok(None) EOF, Err(()) nothing within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        read_packet(&mut self.stream, &mut self.buf, self.version, d).await
    }

    /// Assert nothing arrives for `d` (and the connection stays open).
    pub async fn expect_silence(&mut self, d: Duration) {
        match self.recv_within(d).await {
            Err(()) => {}
            Ok(p) => panic!("expected silence, got {p:?}"),
        }
    }

    /// Read until EOF, returning the packets seen before it (bounded by `WAIT`).
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        loop {
            match self.recv_within(WAIT).await {
                Ok(Some(p)) => seen.push(p),
                Ok(None) => return seen,
                Err(()) => panic!("connection not closed within {WAIT:?}; saw {seen:?}"),
            }
        }
    }
}

/// A CONNECT with the given client id and clean start, no will, keep alive 60.
pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Packet {
    Packet::Connect(Box::new(protocol::Connect {
        version,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }))
}

/// Connect and assert a successful CONNACK; returns the client and the CONNACK.
pub async fn raw_connected(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    clean: bool,
) -> (RawClient, protocol::ConnAck) {
    let mut c = RawClient::connect(addr, version).await;
    c.send(&connect_packet(version, client_id, clean)).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(
                a.reason_code,
                protocol::ReasonCode::SUCCESS,
                "CONNACK {a:?}"
            );
            (c, a)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Decode hex like "10 0c 00 04" (spaces ignored).
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Is a command on PATH? Tests that need a peer fail in CI when it is missing.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Require a peer program: panic with a clear message when it is missing (never a
/// silent skip).
pub fn require(cmd: &str) {
    assert!(
        have(cmd),
        "{cmd} is not installed: run `bash .ci/run` (it installs the test peers)"
    );
}

// ---------------------------------------------------------------------------------
// Additions for the interop / CLI / shutdown / load tests.

impl BrokerProcess {
    /// Send SIGTERM without waiting (pair with `wait_exit`).
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Wait up to `d` for the process to exit; None if it is still running.
    pub fn wait_exit(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + d;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait up to `d` until the collected log has `n` lines containing `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        loop {
            let count = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if count >= n {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RawClient {
    /// Wrap an already connected stream (e.g. one with a tiny receive buffer).
    pub fn from_stream(stream: TcpStream, version: ProtocolVersion) -> RawClient {
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            version,
            buf: BytesMut::new(),
        }
    }

    /// SUBSCRIBE to one filter and assert the SUBACK grants `qos`.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str, qos: protocol::QoS) {
        self.send(&subscribe_packet(packet_id, filter, qos)).await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => {
                assert_eq!(a.packet_id.get(), packet_id, "SUBACK packet id");
                assert_eq!(
                    a.reason_codes,
                    vec![protocol::ReasonCode(qos.as_u8())],
                    "SUBACK for {filter}"
                );
            }
            other => panic!("expected SUBACK for {filter}, got {other:?}"),
        }
    }
}

/// A PUBLISH; `packet_id` is ignored for QoS 0.
pub fn publish_packet(topic: &str, qos: protocol::QoS, packet_id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(protocol::Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: if qos == protocol::QoS::AtMostOnce {
            None
        } else {
            Some(protocol::PacketId::new(packet_id).expect("non-zero packet id"))
        },
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// A SUBSCRIBE of one filter with default options.
pub fn subscribe_packet(packet_id: u16, filter: &str, qos: protocol::QoS) -> Packet {
    Packet::Subscribe(protocol::Subscribe {
        packet_id: protocol::PacketId::new(packet_id).expect("non-zero packet id"),
        properties: Default::default(),
        filters: vec![protocol::SubscribeFilter {
            filter: filter.into(),
            options: protocol::SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
    })
}

/// The output of a finished child process.
#[derive(Debug)]
pub struct RunOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run a command to completion with a time limit (killed and panics past it).
pub fn run_bounded(cmd: Command, limit: Duration) -> RunOutput {
    run_bounded_with_stdin(cmd, b"", limit)
}

/// Like `run_bounded`, feeding `input` to the command's stdin (then closing it).
pub fn run_bounded_with_stdin(mut cmd: Command, input: &[u8], limit: Duration) -> RunOutput {
    use std::io::{Read, Write};
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let t_in = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = t_out.join().unwrap_or_default();
            let stderr = t_err.join().unwrap_or_default();
            panic!("{desc} did not finish within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = t_in.join();
    RunOutput {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Poll `cond` every 10 ms until it holds or `d` passes; returns the last result.
pub async fn wait_until(d: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------
// A raw MQTT client over any byte stream (TLS, WebSocket adapters).

pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

pub struct RawIo {
    pub io: Box<dyn Io>,
    pub version: ProtocolVersion,
    buf: BytesMut,
}

impl RawIo {
    pub fn new(io: impl Io + 'static, version: ProtocolVersion) -> RawIo {
        RawIo {
            io: Box::new(io),
            version,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        protocol::encode(p, self.version, &mut b).expect("encode");
        self.io.write_all(&b).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// Ok(Some) a packet, Ok(None) EOF or an error (e.g. a TLS alert), Err(())
    /// nothing within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        read_packet(&mut self.io, &mut self.buf, self.version, d).await
    }

    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("a packet or EOF within the wait")
    }
}

/// The next packet from `io` (buffered in `buf`): Ok(Some) a packet, Ok(None) EOF
/// or an error, Err(()) nothing within `d`.
async fn read_packet(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
    version: ProtocolVersion,
    d: Duration,
) -> Result<Option<Packet>, ()> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match protocol::decode(buf, Some(version), 16 * 1024 * 1024) {
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => {}
            Err(e) => panic!("broker sent an undecodable packet: {e}"),
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// A CONNECT with a username and password.
pub fn connect_with_login(
    version: ProtocolVersion,
    client_id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Packet {
    Packet::Connect(Box::new(protocol::Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: username.map(str::to_string),
        password: password.map(bytes::Bytes::copy_from_slice),
        properties: Default::default(),
    }))
}

/// TLS to `addr` with server name "localhost".
pub async fn tls_connect(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A `/proc/PID/status` field in its unit (kB for `VmRSS`, `VmHWM`; a count for
/// `Threads`). Panics when the process or the field is gone.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

/// A password file written by `tern passwd --stdin` (argon2id, m=19 MiB).
pub fn argon2_password_file(dir: &std::path::Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let file = dir.join("passwords");
    for (user, password) in users {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.arg("passwd").arg("--stdin").arg(&file).arg(user);
        let out = run_bounded_with_stdin(
            cmd,
            format!("{password}\n").as_bytes(),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "tern passwd: {}", out.stderr);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("$argon2id$v=19$m=19456,"), "{text}");
    file
}

/// A config file: one listener on 127.0.0.1:0, in-memory store, and the given
/// sections' lines.
pub fn config_file(dir: &std::path::Path, limits: &str, auth: &str) -> std::path::PathBuf {
    let text = format!(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[storage]\nin_memory = true\n\n\
         [limits]\n{limits}\n\n[auth]\n{auth}\n"
    );
    let p = dir.join("tern.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn toml_path(p: &std::path::Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

pub fn connect_bytes(
    version: ProtocolVersion,
    id: &str,
    user: &str,
    password: Option<&str>,
    clean: bool,
) -> Vec<u8> {
    let p = Packet::Connect(Box::new(protocol::Connect {
        version,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: Some(user.into()),
        password: password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        properties: protocol::ConnectProperties {
            session_expiry_interval: (version == ProtocolVersion::V5 && !clean).then_some(3600),
            ..Default::default()
        },
    }));
    let mut b = bytes::BytesMut::new();
    protocol::encode(&p, version, &mut b).unwrap();
    b.to_vec()
}

/// What one CONNECT got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// The CONNACK's code: the v5 reason code, or the 3.1.1 return code.
    Refused(u8),
    /// No CONNACK: closed, reset, or nothing within the wait.
    NoAnswer,
}

/// Connect from `from`, send `connect`, read the CONNACK's first 4 bytes (the
/// fixed header, flags and code: both versions put the code 4th), all within
/// `wait`. The socket is returned for an accepted login.
pub async fn attempt(
    addr: SocketAddr,
    from: std::net::IpAddr,
    connect: &[u8],
    wait: Duration,
) -> (Outcome, Option<tokio::net::TcpStream>) {
    let go = async {
        let s = tokio::net::TcpSocket::new_v4().ok()?;
        s.bind(SocketAddr::new(from, 0)).ok()?;
        let mut stream = s.connect(addr).await.ok()?;
        stream.write_all(connect).await.ok()?;
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await.ok()?;
        if head[0] != 0x20 {
            return None;
        }
        Some(match head[3] {
            0 => (Outcome::Accepted, Some(stream)),
            code => (Outcome::Refused(code), None),
        })
    };
    tokio::time::timeout(wait, go)
        .await
        .ok()
        .flatten()
        .unwrap_or((Outcome::NoAnswer, None))
}
