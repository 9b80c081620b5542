//! Before login: reading the first packet, which must be a CONNECT, into a buffer
//! that grows only as bytes arrive and is charged to the broker-wide pre-login
//! budget; and what a client gets when no usable CONNECT comes.
//!
//! Owns no connection state beyond the read buffer it is handed; the handshake
//! that follows a good CONNECT is `mod.rs`'s, the negotiation `negotiate.rs`'s.

use super::close::{bounded, graceful_close, refuse, Close};
use super::Shared;
use crate::protocol::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode,
};
use bytes::BytesMut;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

/// The bytes that connections not yet logged in hold in their read buffers, against
/// `limits.unauthenticated_buffer_bytes`: before login nobody is accountable, so
/// `max_connections` half-sent CONNECTs must not add up to
/// `max_connections x max_connect_packet_size`.
#[derive(Debug, Default)]
pub struct PreLoginBudget {
    used: AtomicUsize,
}

impl PreLoginBudget {
    /// Return `n` bytes taken with `try_take`.
    pub(crate) fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Take `n` bytes if the total stays within `max`.
    pub(crate) fn try_take(&self, n: usize, max: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= max)
            })
            .is_ok()
    }
}

/// What one connection holds of the [`PreLoginBudget`]; given back when dropped,
/// however the login phase ends.
pub(super) struct Charge<'a> {
    pub(super) budget: &'a PreLoginBudget,
    pub(super) held: usize,
    /// Bytes read so far (the `bytes_received` metric).
    pub(super) read: u64,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// The first KiB of a connection's CONNECT buffer is not charged to the budget:
/// ordinary CONNECTs fit in it, so a client still logs in while half-sent
/// CONNECTs hold the whole budget (the cost is bounded by `max_connections` anyway).
const PRE_LOGIN_FREE: usize = 1024;
/// The first read's buffer.
pub(super) const CONNECT_READ: usize = 512;

/// Why no CONNECT came.
pub(super) enum NoConnect {
    /// EOF or an I/O error.
    Closed,
    /// A bad first packet, with the protocol version its header declares, when
    /// it is a CONNECT of a version we speak.
    Bad(DecodeError, Option<ProtocolVersion>),
    /// Its buffer would go over `unauthenticated_buffer_bytes`.
    OverBudget(ProtocolVersion),
}

/// The protocol version a (possibly partial) CONNECT in `buf` declares: the
/// protocol name "MQTT" and level follow the fixed header (section 3.1.2.1).
fn connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let len_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let start = 1 + len_bytes;
    match buf.get(start..start + 7)? {
        [0, 4, b'M', b'Q', b'T', b'T', 4] => Some(ProtocolVersion::V311),
        [0, 4, b'M', b'Q', b'T', b'T', 5] => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// Mosquitto's bridge flag: a bridge (Mosquitto's `try_private`, its default)
/// sends its protocol level with the top bit set (0x84, 0x85). Clear it in
/// `buf` and say whether it was set, once the level byte has arrived. Tern
/// then knows the client is another broker's bridge: nothing that came in
/// through a bridge goes back out through one (no loop when both sides bridge
/// the same topics).
fn strip_bridge_flag(buf: &mut [u8]) -> bool {
    if buf.first().is_none_or(|b| b >> 4 != 1) {
        return false;
    }
    let Some(len_bytes) = buf
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map(|p| p + 1)
    else {
        return false;
    };
    let start = 1 + len_bytes;
    match buf.get_mut(start..start + 7) {
        Some([0, 4, b'M', b'Q', b'T', b'T', level @ (0x84 | 0x85)]) => {
            *level &= 0x7F;
            true
        }
        _ => false,
    }
}

/// Read until one whole CONNECT is decoded, at most `max_connect_packet_size`
/// (and `max_packet_size`) long. The buffer grows by doubling only as bytes
/// arrive (never to a size the peer merely declares), and every byte of it
/// beyond [`PRE_LOGIN_FREE`] is charged to the shared pre-login budget first.
pub(super) async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: &crate::config::Limits,
    charge: &mut Charge<'_>,
) -> Result<(Box<Connect>, bool), NoConnect> {
    let decode_limits = crate::protocol::DecodeLimits {
        max_packet_size: limits.max_connect_packet_size.min(limits.max_packet_size),
        ..limits.decode_limits()
    };
    let mut bridge = false;
    loop {
        bridge |= strip_bridge_flag(buf);
        // Read before decoding: a decode error may have consumed the header.
        let version = connect_version(buf);
        match protocol::decode_with(buf, None, decode_limits) {
            Ok(Some(Packet::Connect(c))) => return Ok((c, bridge)),
            Ok(Some(_)) => {
                return Err(NoConnect::Bad(
                    DecodeError::Protocol("first packet must be CONNECT"),
                    None,
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(NoConnect::Bad(e, version)),
        }
        if buf.len() == buf.capacity() {
            // Incomplete and full: the packet is longer than the buffer, and at
            // most `max` long (the decoder checked its declared length).
            // (`max` may be below the first buffer's size: never shrink.)
            let cap = (buf.capacity() * 2)
                .min(decode_limits.max_packet_size as usize)
                .max(buf.capacity() + 1);
            let more = cap
                .saturating_sub(PRE_LOGIN_FREE)
                .saturating_sub(charge.held);
            if more > 0 {
                if !charge
                    .budget
                    .try_take(more, limits.unauthenticated_buffer_bytes)
                {
                    return Err(NoConnect::OverBudget(
                        version.unwrap_or(ProtocolVersion::V311),
                    ));
                }
                charge.held += more;
            }
            // Exactly `cap`: `reserve` may round up to twice the need.
            let mut grown = BytesMut::with_capacity(cap);
            grown.extend_from_slice(buf);
            *buf = grown;
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(NoConnect::Closed),
            Ok(n) => charge.read += n as u64,
        }
    }
}

/// Answer a first packet that is no usable CONNECT, as far as the protocol lets
/// us, and close. `rbuf` and `charge` are the read phase's, released here.
pub(super) async fn no_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    why: NoConnect,
    rbuf: BytesMut,
    charge: Charge<'_>,
    shared: &Shared,
) {
    match why {
        NoConnect::Closed => {}
        NoConnect::OverBudget(version) => {
            shared
                .metrics
                .connects_over_budget
                .fetch_add(1, Ordering::Relaxed);
            debug!(
                held = shared.pre_login.used(),
                "unauthenticated_buffer_bytes reached: CONNECT refused"
            );
            // Release the buffer before the close, which may take a while.
            drop(rbuf);
            drop(charge);
            refuse(
                stream,
                version,
                ReasonCode::SERVER_BUSY,
                "too many CONNECTs in progress",
            )
            .await;
            graceful_close(stream).await;
        }
        NoConnect::Bad(DecodeError::UnsupportedVersion(level), _) => {
            // [MQTT-3.1.2-2] answer 0x01 "unacceptable protocol version" (in the
            // 3.1.1 format, which every version can read) and close.
            debug!(level, "unsupported protocol level");
            let ack = Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                properties: ConnAckProperties::default(),
            });
            let mut w = BytesMut::new();
            if protocol::encode(&ack, ProtocolVersion::V311, &mut w).is_ok() {
                let _ = bounded(stream.write_all(&w)).await;
            }
            graceful_close(stream).await;
        }
        NoConnect::Bad(e, version) => {
            shared
                .metrics
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "bad CONNECT");
            if version == Some(ProtocolVersion::V5) {
                // 5.0 section 4.13.1: a server that finds a Malformed Packet or
                // Protocol Error in CONNECT may send CONNACK with the reason
                // (0x81, 0x82, 0x90 for a Will Topic, 0x95 for a CONNECT too large)
                // before closing [MQTT-3.1.4-2]. 3.1.1 closes without a CONNACK
                // [MQTT-3.1.4-1].
                let why = Close::from(e.clone())
                    .reason_string
                    .unwrap_or("bad CONNECT");
                refuse(stream, ProtocolVersion::V5, e.reason_code(), why).await;
            }
            graceful_close(stream).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_version_reads_the_protocol_level() {
        let head = |len: &[u8], level: u8| {
            let mut b = vec![0x10];
            b.extend_from_slice(len);
            b.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', level]);
            b
        };
        assert_eq!(
            connect_version(&head(&[0x0f], 5)),
            Some(ProtocolVersion::V5)
        );
        assert_eq!(
            connect_version(&head(&[0x0e], 4)),
            Some(ProtocolVersion::V311)
        );
        assert_eq!(
            connect_version(&head(&[0xf0, 0xa2, 0x04], 5)),
            Some(ProtocolVersion::V5)
        );
        assert_eq!(connect_version(&head(&[0x0e], 3)), None);
        assert_eq!(connect_version(&head(&[0x0e], 5)[..8]), None);
        let mut publish = head(&[0x0e], 5);
        publish[0] = 0x30;
        assert_eq!(connect_version(&publish), None);
        assert_eq!(connect_version(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]), None);
    }

    /// A CONNECT whose buffer would go over the pre-login budget is refused; the
    /// charge is given back when the connection's phase ends.
    #[tokio::test]
    async fn read_connect_stops_at_the_budget() {
        let limits = crate::config::Limits {
            unauthenticated_buffer_bytes: 8 * 1024,
            ..Default::default()
        };
        let budget = PreLoginBudget::default();
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut bytes = vec![0x10, 0xe0, 0xd4, 0x03]; // 60,000 bytes declared
        bytes.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0]);
        bytes.resize(20_000, b'x');
        client.write_all(&bytes).await.unwrap();
        let mut buf = BytesMut::with_capacity(CONNECT_READ);
        let mut charge = Charge {
            read: 0,
            budget: &budget,
            held: 0,
        };
        let r = read_connect(&mut server, &mut buf, &limits, &mut charge).await;
        assert!(matches!(r, Err(NoConnect::OverBudget(ProtocolVersion::V5))));
        // An 8 KiB buffer, its first KiB free: doubling to 16 KiB did not fit.
        assert_eq!(buf.capacity(), 8 * 1024);
        assert_eq!(budget.used(), 7 * 1024);
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_bridge_flag_is_cleared_and_reported() {
        // CONNECT, remaining length 12, "MQTT", level 0x84 (3.1.1, bridge).
        let mut b = vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 0x84, 2, 0, 60, 0, 0];
        assert!(strip_bridge_flag(&mut b));
        assert_eq!(b[8], 4);
        assert!(!strip_bridge_flag(&mut b), "once");
        let mut v5 = vec![0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 0x85];
        assert!(strip_bridge_flag(&mut v5));
        assert_eq!(v5[8], 5);
        // Other levels, or too few bytes yet: left alone.
        for mut other in [
            vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 0x83],
            vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'T'],
            vec![0x30, 12, 0, 4, b'M', b'Q', b'T', b'T', 0x84],
        ] {
            let before = other.clone();
            assert!(!strip_bridge_flag(&mut other));
            assert_eq!(other, before);
        }
    }
}
