//! systemd's readiness notification (the `sd_notify(3)` protocol), by hand: one
//! datagram such as `READY=1` sent to the socket named by `$NOTIFY_SOCKET`. It lets
//! `configs/tern.service` use `Type=notify`, so `systemctl start tern` returns (and
//! units ordered after Tern start) only once the listeners are bound, and systemd
//! knows a stop is under way when the shutdown drains slowly.
//!
//! No crate for a protocol this small: the socket is a path, or an abstract name
//! when it starts with '@'. Without the variable (not started by systemd, or a unit
//! that is not `Type=notify`) nothing is sent. A failed send is logged and never
//! stops the broker: under `Type=notify` systemd then times the start out itself,
//! which is visible in `systemctl status`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Tell systemd the broker is serving (call once the listeners are bound).
pub fn ready() {
    log_failure("READY=1", notify("READY=1"));
}

/// Tell systemd a reload (SIGHUP) has begun; `ready` again when it is done.
/// The monotonic time lets `Type=notify-reload` tell this reload from an
/// earlier one (sd_notify(3)).
pub fn reloading() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC
    // is always available on Linux.
    let usec = if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
        u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
    } else {
        0
    };
    let state = format!("RELOADING=1\nMONOTONIC_USEC={usec}");
    log_failure("RELOADING=1", notify(&state));
}

/// Tell systemd a graceful shutdown has begun (sessions drain, wills go out).
pub fn stopping() {
    log_failure("STOPPING=1", notify("STOPPING=1"));
}

/// Send `state` (newline-separated `KEY=VALUE` lines) to `$NOTIFY_SOCKET`.
/// `Ok(false)`: the variable is unset or empty, nothing was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let socket = std::env::var_os("NOTIFY_SOCKET");
    notify_to(socket.as_deref(), state)
}

/// [`notify`] with the socket given, so tests need not change the process's
/// environment (which other test threads read concurrently).
pub fn notify_to(socket: Option<&OsStr>, state: &str) -> io::Result<bool> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let sender = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    let sent = match bytes.first() {
        Some(b'/') => sender.send_to(state.as_bytes(), socket)?,
        Some(b'@') => send_abstract(&sender, &bytes[1..], state.as_bytes())?,
        // systemd also knows "vsock:" addresses (for virtual machines); a
        // gateway's broker never runs under one, and anything else is malformed.
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {socket:?} is neither a path nor an abstract name"),
            ))
        }
    };
    // A datagram goes whole or not at all; a short count would mean a truncated
    // state that systemd would misread.
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short datagram to NOTIFY_SOCKET",
        ));
    }
    Ok(true)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sender: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sender.send_to_addr(msg, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    // Abstract socket names exist only on Linux, and so does systemd.
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract NOTIFY_SOCKET on a system without abstract sockets",
    ))
}

fn log_failure(what: &str, result: io::Result<bool>) {
    match result {
        Ok(true) => tracing::debug!("sd_notify: sent {what}"),
        Ok(false) => {}
        Err(e) => tracing::warn!("sd_notify: cannot send {what} to NOTIFY_SOCKET: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        assert!(notify_to(Some(path.as_os_str()), "READY=1").unwrap());
        assert_eq!(receive(&systemd), "READY=1");
        assert!(notify_to(Some(path.as_os_str()), "STOPPING=1").unwrap());
        assert_eq!(receive(&systemd), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        // Abstract names are machine-wide (per network namespace): the pid and a
        // time keep parallel test runs apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("tern-sd-notify-test-{}-{nanos}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let var = format!("@{name}");
        assert!(notify_to(Some(OsStr::new(&var)), "READY=1").unwrap());
        assert_eq!(receive(&systemd), "READY=1");
    }

    #[test]
    fn does_nothing_without_the_variable() {
        assert!(!notify_to(None, "READY=1").unwrap());
        assert!(!notify_to(Some(OsStr::new("")), "READY=1").unwrap());
    }

    #[test]
    fn refuses_a_malformed_address_and_a_missing_socket() {
        let err = notify_to(Some(OsStr::new("relative/notify")), "READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens");
        assert!(notify_to(Some(missing.as_os_str()), "READY=1").is_err());
    }
}
