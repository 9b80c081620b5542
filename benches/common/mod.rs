//! Helpers shared by the benches that drive the real `tern` binary
//! (`login_storm`, `under_attack`, `idle_connections`): bench or smoke mode, the
//! broker's memory from /proc, the file-descriptor limit, starting a broker on a
//! config file, `tern passwd`, and a login from a chosen loopback address. Each bench includes this file with `mod common;`,
//! so a helper one bench does not use is dead code there.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tern::protocol::{self, Connect, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and a
/// bench then runs a short smoke version of itself.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A process's memory and threads, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    pub rss_mib: f64,
    /// VmHWM: the peak of VmRSS since the process started.
    pub hwm_mib: f64,
    pub threads: u64,
}

/// None once the process is gone.
pub fn try_status(pid: u32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some(Status {
        rss_mib: field("VmRSS:")? as f64 / 1024.0,
        hwm_mib: field("VmHWM:")? as f64 / 1024.0,
        threads: field("Threads:")?,
    })
}

/// VmRSS in KiB, exactly as /proc/PID/status gives it; None once the process
/// is gone.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit
/// it) and return that limit. Many idle connections need a descriptor each, and
/// the soft limit is often 1024.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// A process's soft "Max open files" from /proc/PID/limits (None when
/// unreadable; u64::MAX for "unlimited").
pub fn fd_limit_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let soft = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

pub fn status(pid: u32) -> Status {
    try_status(pid).expect("broker process is gone")
}

/// Start `bin -c config` and wait for its "listening on ADDR" line (the config
/// should bind 127.0.0.1:0 and let `tern::broker` log at info).
pub fn start_broker(bin: &Path, config: &Path) -> (Child, SocketAddr) {
    let mut cmd = Command::new(bin);
    // The config file is the whole config: no `TERN_*` variable of ours (such as
    // `TERN_BIN`) may reach the broker, which older builds read as config keys.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TERN_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("-c")
        .arg(config)
        .args(["--log", "error,tern::broker=info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!(
                "{} -c {} exited before listening: {seen:?}",
                bin.display(),
                config.display()
            );
        };
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().parse::<SocketAddr>().unwrap();
        }
        seen.push(line);
    };
    // Keep draining stderr so the broker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, addr)
}

/// `bin passwd --stdin file user`, fed `password`.
pub fn passwd(bin: &Path, file: &Path, user: &str, password: &str) {
    let mut child = Command::new(bin)
        .arg("passwd")
        .arg("--stdin")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success(), "tern passwd failed");
}

/// An encoded CONNECT.
pub fn connect_packet(
    version: ProtocolVersion,
    id: &str,
    clean_start: bool,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    let c = Packet::Connect(Box::new(Connect {
        version,
        clean_start,
        keep_alive: 30,
        client_id: id.into(),
        will: None,
        username: login.map(|(u, _)| u.into()),
        password: login.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        properties: Default::default(),
    }));
    let mut b = BytesMut::new();
    protocol::encode(&c, version, &mut b).unwrap();
    b.to_vec()
}

/// A TCP connection to `addr` from the loopback address `from`.
pub async fn connect_from(addr: SocketAddr, from: IpAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(addr).await
}

/// One login from `from`: the CONNACK's reason code (both versions put it 4th),
/// or None (no answer within 15 s, closed, reset).
pub async fn login(addr: SocketAddr, from: IpAddr, connect: &[u8]) -> Option<u8> {
    let go = async {
        let mut stream = connect_from(addr, from).await.ok()?;
        stream.write_all(connect).await.ok()?;
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await.ok()?;
        Some(head[3])
    };
    tokio::time::timeout(Duration::from_secs(15), go)
        .await
        .ok()
        .flatten()
}

/// The `i`th of many loopback addresses, 127.1.0.1 upwards (250 per /24), each
/// a stranger to the failed-login throttle.
pub fn attacker_ip(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap();
    IpAddr::V4(Ipv4Addr::from(0x7f01_0001 + (i / 250) * 256 + i % 250))
}
