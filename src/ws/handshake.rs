//! The WebSocket opening handshake, the server's side (RFC 6455 section 4.2):
//! read the client's HTTP/1.1 upgrade request, check it, answer 101 with the
//! subprotocol, or an HTTP error and close.

use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest upgrade request we read (the request line and headers): what
/// common servers allow by default (nginx, 8 KiB), far above what MQTT
/// clients send (under 1 KiB).
const MAX_REQUEST: usize = 8 * 1024;
/// At most this many header lines.
const MAX_HEADERS: usize = 48;
/// RFC 6455 section 1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The subprotocols we answer to, in order of preference: `mqtt` (MQTT 3.1.1 and
/// 5.0, [MQTT-6.0.0-3]) and `mqttv3.1` (older clients).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Which subprotocol to answer for a client's `Sec-WebSocket-Protocol` offer.
/// `Ok(None)`: the client offered none (accepted; some embedded clients omit it).
/// `Err`: it offered only others.
fn choose_subprotocol(offer: Option<&str>) -> Result<Option<&'static str>, ()> {
    let Some(offer) = offer else {
        return Ok(None);
    };
    let offered: Vec<&str> = offer.split(',').map(str::trim).collect();
    SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        .map(|p| Some(*p))
        .ok_or(())
}

/// A refused request: the HTTP status we answer with and why.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: &'static str,
    why: &'static str,
}

fn refuse(status: &'static str, why: &'static str) -> Refusal {
    Refusal { status, why }
}

/// Does the comma-separated header value hold `token` (case-insensitive)?
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Check a complete request (`head`, up to and with its blank line): the
/// response to send on success.
fn answer(head: &[u8]) -> Result<String, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                "431 Request Header Fields Too Large",
                "too many headers",
            ))
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(refuse("400 Bad Request", "not an HTTP request"))
        }
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return Err(refuse("400 Bad Request", "not an HTTP/1.1 GET"));
    }
    // Several lines of one header are one comma-separated list (RFC 9110
    // section 5.3).
    let header = |name: &str| -> Option<String> {
        let values: Vec<&str> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    if !header("upgrade").is_some_and(|v| has_token(&v, "websocket"))
        || !header("connection").is_some_and(|v| has_token(&v, "upgrade"))
    {
        return Err(refuse("400 Bad Request", "not a WebSocket upgrade"));
    }
    if header("sec-websocket-version").as_deref().map(str::trim) != Some("13") {
        return Err(refuse(
            "426 Upgrade Required\r\nSec-WebSocket-Version: 13",
            "WebSocket version other than 13",
        ));
    }
    let key = header("sec-websocket-key").unwrap_or_default();
    let key = key.trim();
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if decoded.map_or(true, |k| k.len() != 16) {
        return Err(refuse("400 Bad Request", "bad Sec-WebSocket-Key"));
    }
    let protocol =
        choose_subprotocol(header("sec-websocket-protocol").as_deref()).map_err(|()| {
            refuse(
                "400 Bad Request",
                "MQTT over WebSocket needs the subprotocol \"mqtt\"",
            )
        })?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    let accept = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        resp.push_str("Sec-WebSocket-Protocol: ");
        resp.push_str(p);
        resp.push_str("\r\n");
    }
    resp.push_str("\r\n");
    Ok(resp)
}

/// Where the request's blank line ends, if it has arrived.
fn request_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Run the handshake on `stream`. Ok: the bytes the client sent behind its
/// request (the start of its first frame, if it did not wait for our answer).
/// Err: the request was refused (answered with an HTTP error) or the socket
/// failed; the caller drops the connection.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(1024);
    // Where the search for the blank line goes on (a request sent a byte at
    // a time is not searched from the start each time).
    let mut scanned = 0;
    let end = loop {
        if let Some(end) = request_end(&buf[scanned..]) {
            break scanned + end;
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() >= MAX_REQUEST {
            let why = "upgrade request larger than 8 KiB";
            return Err(
                reply_error(stream, refuse("431 Request Header Fields Too Large", why)).await,
            );
        }
        // Read at most to the cap: the part of the first read past the
        // request stays in `buf`.
        let room = MAX_REQUEST - buf.len();
        let n = (&mut *stream).take(room as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    };
    match answer(&buf[..end]) {
        Ok(resp) => {
            stream.write_all(resp.as_bytes()).await?;
            stream.flush().await?;
            // A copy (usually of nothing): a slice would keep the whole
            // request buffer for the connection's life.
            Ok(Bytes::copy_from_slice(&buf[end..]))
        }
        Err(refusal) => Err(reply_error(stream, refusal).await),
    }
}

/// Answer a refused request with its HTTP status and the reason as the body;
/// the error to report.
async fn reply_error<S: AsyncWrite + Unpin>(stream: &mut S, r: Refusal) -> io::Error {
    let resp = format!(
        "HTTP/1.1 {}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
        r.status,
        r.why.len(),
        r.why
    );
    // The client may be gone already: the refusal is what to report.
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    io::Error::new(io::ErrorKind::InvalidData, r.why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_choice() {
        assert_eq!(choose_subprotocol(None), Ok(None));
        assert_eq!(choose_subprotocol(Some("mqtt")), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(Some("mqttv3.1")), Ok(Some("mqttv3.1")));
        assert_eq!(
            choose_subprotocol(Some("mqttv3.1, mqtt")),
            Ok(Some("mqtt")),
            "mqtt is preferred"
        );
        assert_eq!(choose_subprotocol(Some(" MQTT ")), Ok(Some("mqtt")));
        assert_eq!(choose_subprotocol(Some("chat, wamp")), Err(()));
    }

    fn request(extra: &str) -> String {
        format!(
            "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn the_rfc_example_is_answered_with_its_accept_key() {
        // RFC 6455 section 1.3: this key gives this accept value.
        let resp = answer(request("Sec-WebSocket-Protocol: mqtt\r\n").as_bytes()).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
        let none = answer(request("").as_bytes()).unwrap();
        assert!(!none.contains("Sec-WebSocket-Protocol"), "{none}");
    }

    #[test]
    fn bad_requests_are_refused_with_a_status() {
        let status = |req: &str| answer(req.as_bytes()).unwrap_err().status;
        assert!(status(&request("Sec-WebSocket-Protocol: chat\r\n")).starts_with("400"));
        assert!(status(&request("").replace("GET", "POST")).starts_with("400"));
        assert!(
            status(&request("").replace("Upgrade: websocket", "Upgrade: h2c")).starts_with("400")
        );
        assert!(status(&request("").replace("Version: 13", "Version: 8")).starts_with("426"));
        assert!(
            status(&request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short")).starts_with("400")
        );
        assert!(status("SSH-2.0-OpenSSH\r\n\r\n").starts_with("400"));
        let many: String = (0..60).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(status(&request(&many)).starts_with("431"));
    }
}
