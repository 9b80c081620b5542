//! The little HTTP/1.1 the admin endpoint speaks, both ends: one request per
//! connection (`Connection: close`), a body only by `Content-Length` (a
//! configuration file to check), bounded in bytes and time, and the
//! client `tern queue ...` uses. Hand-written on purpose: a handful of routes on
//! a local port do not justify an HTTP stack on a Raspberry Pi.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// The largest request body accepted: a configuration file, which is a few KB.
pub const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path segments, percent-decoded (`/api/v1/queues/a%2Fb` -> ["api", "v1",
    /// "queues", "a/b"]).
    pub path: Vec<String>,
    pub query: Vec<(String, String)>,
    /// The token of `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// `Content-Length`: the body's size.
    pub content_length: usize,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request head over {MAX_REQUEST} bytes or body over {MAX_BODY}")]
    TooLarge,
    #[error("malformed request")]
    Malformed,
    #[error("connection closed before the request ended")]
    Closed,
    #[error("no complete request within the timeout")]
    Timeout,
}

/// Read one request head from `s`. Body bytes that came with it are kept in
/// `body` (at most `content_length`); the rest is read by [`read_body`], only
/// for a route that takes one and only after the token was checked, so a peer
/// without it cannot make the endpoint buffer a body.
pub async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    timeout: Duration,
) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            if let Some(end) = find_head_end(&buf) {
                let mut req = parse_head(buf.get(..end).ok_or(HttpError::Malformed)?)?;
                let mut body = buf.split_off(end + 4);
                body.truncate(req.content_length);
                req.body = body;
                return Ok(req);
            }
            if buf.len() >= MAX_REQUEST {
                return Err(HttpError::TooLarge);
            }
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.map_err(|_| HttpError::Closed)?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HttpError::Timeout)?
}

/// Read the rest of `req`'s body (`Content-Length`, at most `MAX_BODY`),
/// bounded by `timeout`.
pub async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    req: &mut Request,
    timeout: Duration,
) -> Result<(), HttpError> {
    if req.content_length > MAX_BODY {
        return Err(HttpError::TooLarge);
    }
    let read = async {
        while req.body.len() < req.content_length {
            let mut chunk = [0u8; 4096];
            let want = (req.content_length - req.body.len()).min(chunk.len());
            let part = chunk.get_mut(..want).ok_or(HttpError::Malformed)?;
            let n = s.read(part).await.map_err(|_| HttpError::Closed)?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            req.body
                .extend_from_slice(part.get(..n).unwrap_or_default());
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HttpError::Timeout)?
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parse a request head (without the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed)?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next().ok_or(HttpError::Malformed)?.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (first.next(), first.next(), first.next(), first.next())
    else {
        return Err(HttpError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(HttpError::Malformed);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(percent_decode)
        .collect::<Result<Vec<_>, _>>()?;
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect::<Result<Vec<_>, HttpError>>()?;
    let mut bearer = None;
    let mut content_length = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.trim().parse().map_err(|_| HttpError::Malformed)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only Content-Length bodies: a chunked one is refused, not misread.
            return Err(HttpError::Malformed);
        } else if name.eq_ignore_ascii_case("authorization") {
            bearer = value
                .trim()
                .strip_prefix("Bearer ")
                .map(|t| t.trim().to_string());
        }
    }
    Ok(Request {
        method: method.to_string(),
        path,
        query,
        bearer,
        content_length,
        body: Vec::new(),
    })
}

fn percent_decode(s: &str) -> Result<String, HttpError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(HttpError::Malformed)?;
                let hex = std::str::from_utf8(hex).map_err(|_| HttpError::Malformed)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| HttpError::Malformed)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::Malformed)
}

/// Percent-encode one path segment or query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Content",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// How long a response may take to write: a client that does not read cannot
/// hold an admin slot and its response for long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Write a JSON response and close.
pub async fn write_response<S: AsyncWrite + Unpin>(s: &mut S, status: u16, body: &[u8]) {
    write_typed(s, status, "application/json", body).await;
}

/// Write a response of `content_type` and close.
pub async fn write_typed<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write_all(s, status, content_type, body)).await;
}

async fn write_all<S: AsyncWrite + Unpin>(s: &mut S, status: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let _ = s.shutdown().await;
}

/// The client side: send `method path` (with the token, if any) to `addr`,
/// return the status and the body. Bounded by `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    request_with_body(addr, None, method, path, token, b"", timeout).await
}

/// [`request`] with a body, over TLS when `tls` is given (the server's
/// certificate must be valid for `addr`'s IP address).
pub async fn request_with_body(
    addr: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let run = async {
        let tcp = TcpStream::connect(addr).await?;
        let resp = match tls {
            None => exchange(tcp, head.as_bytes(), body).await?,
            Some(config) => {
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                exchange(stream, head.as_bytes(), body).await?
            }
        };
        let text = String::from_utf8_lossy(&resp).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| std::io::Error::other("no answer within the timeout"))?
}

/// Write a request, read the whole response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(head).await?;
    s.write_all(body).await?;
    s.flush().await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_with_path_query_and_token() {
        let r = parse_head(
            b"POST /api/v1/queues/a%2Fb/redrive?to=jobs&max=10 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n",
        )
        .expect("parses");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, vec!["api", "v1", "queues", "a/b", "redrive"]);
        assert_eq!(
            r.query,
            vec![("to".into(), "jobs".into()), ("max".into(), "10".into())]
        );
        assert_eq!(r.bearer.as_deref(), Some("s3cret"));
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            &b"GET"[..],
            b"GET /x",
            b"GET x HTTP/1.1",
            b"GET /x SPDY/3",
            b"GET /%zz HTTP/1.1",
            b"GET /x HTTP/1.1\r\nno colon here",
            b"GET /%ff HTTP/1.1",
        ] {
            assert_eq!(
                parse_head(bad),
                Err(HttpError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(percent_encode("jobs-dlq/x y"), "jobs-dlq%2Fx%20y");
        assert_eq!(percent_decode(&percent_encode("ä/b c")).unwrap(), "ä/b c");
    }
}
