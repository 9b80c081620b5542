//! A TLS server stream over rustls's unbuffered connection, with buffers of
//! our own. Owns one accepted TLS connection's bytes: what came off the socket
//! and is not yet decrypted, what was decrypted and not yet read, what was
//! encrypted and not yet written.
//!
//! Why not `tokio_rustls`: rustls's buffered connection keeps a 4 KiB read
//! buffer for the connection's whole life (rustls 0.23 sizes it back to its
//! read size at rest and never lets it go), plus its send and receive queues.
//! Here each buffer is let go as soon as it is empty, so a connection at
//! rest holds only rustls's state and keys, and a hibernating one
//! (`Asleep`) holds those and its socket, out of tokio's reactor (issue 15).
//!
//! rustls runs the protocol: the handshake, records, alerts, session tickets,
//! key updates. This file only moves bytes between it and the socket.

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time. A record larger than this (up to
/// 16 KiB of data) is read in several.
const READ_CHUNK: usize = 4096;

/// Plaintext taken by one write: one full record.
const MAX_WRITE: usize = 16 * 1024;

/// Received bytes held unprocessed, at most: the largest handshake message
/// (0xFFFF) plus one record at its largest (5 + 16 KiB + 2 KiB). rustls's
/// unbuffered reassembly keeps every record of a split handshake message
/// until the whole message is in, and counts only the message's own bytes:
/// a peer sending it in tiny or padded records would otherwise make it keep
/// hundreds of KB to a GB. The buffered rustls has the same cap ("message
/// buffer full").
const MAX_INCOMING: usize = 0xFFFF + 5 + 16 * 1024 + 2048;

/// One accepted TLS connection.
pub struct TlsStream {
    socket: TcpStream,
    /// Boxed: it stays where it is while the stream around it is put to sleep
    /// and woken (about 1.1 KB).
    conn: Box<UnbufferedServerConnection>,
    bufs: Bufs,
}

/// A stream's buffers. Each is a plain `Vec` with a read position; none
/// holds an allocation while empty.
#[derive(Default)]
struct Bufs {
    /// TLS bytes from the socket; `incoming[in_start..]` not yet processed.
    incoming: Vec<u8>,
    in_start: usize,
    /// Decrypted application data; `plain[plain_start..]` not yet read.
    plain: Vec<u8>,
    plain_start: usize,
    /// TLS bytes for the socket; `outgoing[out_start..]` not yet written.
    outgoing: Vec<u8>,
    out_start: usize,
    /// The peer's close_notify came: after `plain`, the end of the stream.
    peer_closed: bool,
    /// Ours was queued: nothing more may be written.
    close_sent: bool,
    /// rustls reported an error (and queued its alert, which went into
    /// `outgoing`): it is not called again, since it would read the same
    /// bytes and fail, and alert, a second time.
    failed: bool,
}

/// A hibernating TLS stream: its socket out of tokio's reactor and rustls's
/// state. Its buffers were empty, so there are none.
pub struct Asleep {
    socket: std::net::TcpStream,
    conn: Box<UnbufferedServerConnection>,
    peer_closed: bool,
    close_sent: bool,
}

impl Asleep {
    /// Its socket's fd, which the hibernation watches.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }

    /// Back in tokio's reactor.
    #[allow(clippy::boxed_local)] // It comes boxed from the sleeper's room.
    pub fn wake(self: Box<Self>) -> io::Result<TlsStream> {
        let Asleep {
            socket,
            conn,
            peer_closed,
            close_sent,
        } = *self;
        Ok(TlsStream {
            socket: TcpStream::from_std(socket)?,
            conn,
            bufs: Bufs {
                peer_closed,
                close_sent,
                ..Bufs::default()
            },
        })
    }
}

/// Where processing the received records stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The handshake waits for more bytes from the peer.
    Handshake,
    /// Application data may be written; more may be read.
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Let go of an emptied buffer's allocation. Kept for the next read or
/// write, 10,000 connections' buffers came to 5 KB each while awake, and
/// left holes behind once they slept (an awake TLS connection 11 KB, asleep
/// 9.4, against 4.2 in use, under the idle bench's rustls client).
fn emptied(buf: &mut Vec<u8>, start: &mut usize) {
    *buf = Vec::new();
    *start = 0;
}

/// Let rustls write at the end of `outgoing`: `room` bytes are offered,
/// then what it says it `needs` if that is more.
fn put<E: std::error::Error + Send + Sync + 'static>(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    loop {
        let at = outgoing.len();
        outgoing.resize(at + room, 0);
        let written = write(&mut outgoing[at..]);
        outgoing.truncate(at + *written.as_ref().unwrap_or(&0));
        match written {
            Ok(_) => return Ok(()),
            Err(e) => match needs(&e) {
                Some(more) if more > room => room = more,
                _ => return Err(tls_error(e)),
            },
        }
    }
}

/// One handshake or alert record rustls has ready, into `outgoing`.
fn encode(
    outgoing: &mut Vec<u8>,
    encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    put(outgoing, 512, encode, |e| match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    })
}

/// `len` bytes of data (or a close_notify, 0) encrypted into `outgoing`.
fn encrypt(
    outgoing: &mut Vec<u8>,
    encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
    len: usize,
) -> io::Result<()> {
    // A record's header, tag and content type take under 64 bytes.
    put(outgoing, len + 64, encrypt, |e| match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    })
}

impl Bufs {
    fn quiet(&self) -> bool {
        self.incoming.len() == self.in_start
            && self.plain.len() == self.plain_start
            && self.outgoing.len() == self.out_start
    }
}

/// What to do on reaching the point where application data may be written.
enum Write<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Run rustls over the received bytes until it waits for more: decrypted
/// data goes to `plain`, records it wants sent to `outgoing`, and on reaching
/// traffic, `write` is encrypted. On an error, the alert rustls queued for
/// the peer is put in `outgoing` too, so a caller that flushes sends it.
fn process(
    conn: &mut UnbufferedServerConnection,
    bufs: &mut Bufs,
    mut write: Write<'_>,
) -> io::Result<Stop> {
    if bufs.failed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the TLS connection failed",
        ));
    }
    let result = loop {
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(&mut bufs.incoming[bufs.in_start..]);
        let step = match state {
            Ok(ConnectionState::ReadTraffic(mut records)) => loop {
                match records.next_record() {
                    Some(Ok(record)) => bufs.plain.extend_from_slice(record.payload),
                    Some(Err(e)) => break Err(tls_error(e)),
                    None => break Ok(None),
                }
            },
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                encode(&mut bufs.outgoing, |out| e.encode(out)).map(|()| None)
            }
            // Our `outgoing` is the transmission: what is in it goes out in
            // order before anything later.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Ok(None)
            }
            Ok(ConnectionState::PeerClosed) => {
                bufs.peer_closed = true;
                Ok(None)
            }
            Ok(ConnectionState::Closed) => Ok(Some(Stop::Closed)),
            Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::Handshake)),
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                let done = match std::mem::replace(&mut write, Write::Nothing) {
                    Write::Nothing => Ok(()),
                    Write::Data(data) => {
                        encrypt(&mut bufs.outgoing, |out| w.encrypt(data, out), data.len())
                    }
                    Write::CloseNotify => {
                        encrypt(&mut bufs.outgoing, |out| w.queue_close_notify(out), 0)
                    }
                };
                done.map(|()| Some(Stop::Traffic))
            }
            // Early data is off (`max_early_data_size` 0): never offered.
            Ok(ConnectionState::ReadEarlyData(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected TLS early data",
            )),
            Ok(_) => Err(io::Error::other("unknown TLS connection state")),
            Err(e) => Err(tls_error(e)),
        };
        bufs.in_start += discard;
        match step {
            Ok(None) => continue,
            Ok(Some(stop)) => break Ok(stop),
            Err(e) => break Err(e),
        }
    };
    if result.is_err() {
        bufs.failed = true;
        // The alert describing the failure (one record), if rustls queued
        // one: it comes before anything else on the next call. The buffer
        // passed must be the one rustls saw last (its handshake reassembly
        // keeps offsets into it).
        if let UnbufferedStatus {
            state: Ok(ConnectionState::EncodeTlsData(mut e)),
            ..
        } = conn.process_tls_records(&mut bufs.incoming[bufs.in_start..])
        {
            let _ = encode(&mut bufs.outgoing, |out| e.encode(out));
        }
    }
    if bufs.in_start == bufs.incoming.len() {
        emptied(&mut bufs.incoming, &mut bufs.in_start);
    } else if bufs.in_start > 0 {
        // Part of a record is left: keep it at the front, whole.
        bufs.incoming.drain(..bufs.in_start);
        bufs.in_start = 0;
    }
    result
}

impl TlsStream {
    /// The TLS handshake on an accepted socket. On failure the peer has been
    /// sent rustls's alert, when there was one to send.
    pub async fn accept(socket: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut stream = TlsStream {
            socket,
            conn: Box::new(conn),
            bufs: Bufs::default(),
        };
        loop {
            let stop = process(&mut stream.conn, &mut stream.bufs, Write::Nothing);
            poll_fn(|cx| stream.poll_write_out(cx)).await?;
            let stop = stop?;
            // Done once the client's Finished (and certificate) is in: a
            // TLS 1.3 server may write before then, but the client is not
            // known yet.
            if !stream.conn.is_handshaking() {
                return Ok(stream);
            }
            if stop == Stop::Closed || stream.bufs.peer_closed {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if poll_fn(|cx| stream.poll_read_socket(cx)).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The client's certificate chain, leaf first, when it sent one.
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Its socket's fd.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }

    /// Nothing read and unprocessed, decrypted and unread, or encrypted and
    /// unwritten: the connection may hibernate.
    pub fn quiet(&self) -> bool {
        self.bufs.quiet()
    }

    /// Hibernate: the socket out of tokio's reactor, the buffers gone. Only
    /// when `quiet`: anything left in them would be lost.
    pub fn into_asleep(self) -> io::Result<Box<Asleep>> {
        debug_assert!(self.quiet());
        Ok(Box::new(Asleep {
            socket: self.socket.into_std()?,
            // Moved to a new allocation: made now, it takes a hole the
            // awake connection has just let go, where the old one lay among
            // the handshake's leftovers.
            conn: Box::new(*self.conn),
            peer_closed: self.bufs.peer_closed,
            close_sent: self.bufs.close_sent,
        }))
    }

    /// Let go of the buffers' allocations if they are empty (a WebSocket over
    /// TLS hibernates with its stream whole).
    pub fn let_go_of_buffers(&mut self) {
        if self.quiet() {
            let b = &mut self.bufs;
            emptied(&mut b.incoming, &mut b.in_start);
            emptied(&mut b.plain, &mut b.plain_start);
            emptied(&mut b.outgoing, &mut b.out_start);
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Append what the socket has to `incoming`: Ready(0) at its end.
    fn poll_read_socket(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let incoming = &mut self.bufs.incoming;
        if incoming.len() - self.bufs.in_start >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS handshake message in too many records",
            )));
        }
        if incoming.capacity() - incoming.len() < READ_CHUNK / 4 {
            incoming.reserve(READ_CHUNK);
        }
        loop {
            ready!(self.socket.poll_read_ready(cx))?;
            match self.socket.try_read_buf(incoming) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// Write out `outgoing`; Ready(Ok) once it is empty.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let bufs = &mut self.bufs;
        while bufs.out_start < bufs.outgoing.len() {
            let n = ready!(
                Pin::new(&mut self.socket).poll_write(cx, &bufs.outgoing[bufs.out_start..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            bufs.out_start += n;
        }
        if !bufs.outgoing.is_empty() {
            emptied(&mut bufs.outgoing, &mut bufs.out_start);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let bufs = &mut this.bufs;
            if bufs.plain_start < bufs.plain.len() {
                let n = buf.remaining().min(bufs.plain.len() - bufs.plain_start);
                buf.put_slice(&bufs.plain[bufs.plain_start..bufs.plain_start + n]);
                bufs.plain_start += n;
                if bufs.plain_start == bufs.plain.len() {
                    emptied(&mut bufs.plain, &mut bufs.plain_start);
                }
                return Poll::Ready(Ok(()));
            }
            if bufs.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let stop = process(&mut this.conn, &mut this.bufs, Write::Nothing);
            // Records rustls answers on its own (a key update, an alert) go
            // out now if the socket takes them; the rest with the next write
            // or flush, which also reports a failed socket: here it would
            // lose what was just decrypted (a DISCONNECT from a client that
            // then reset the connection).
            let _ = this.poll_write_out(cx);
            let unread = this.bufs.plain_start < this.bufs.plain.len();
            match stop {
                // What came before the error or the close is read first; the
                // next call ends the stream (rustls is not called again
                // after an error, and says Closed again).
                _ if unread || this.bufs.peer_closed => continue,
                Err(e) => return Poll::Ready(Err(e)),
                Ok(Stop::Closed) => return Poll::Ready(Ok(())),
                Ok(_) => {}
            }
            // A client that closes without close_notify ends the stream like
            // one that sends it: MQTT frames its own packets, so nothing can
            // be cut short unseen, and many devices just close.
            if ready!(this.poll_read_socket(cx))? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // What was encrypted before goes first; until it is out, nothing
        // more is taken (at most one record waits here).
        ready!(this.poll_write_out(cx))?;
        if this.bufs.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        match process(&mut this.conn, &mut this.bufs, Write::Data(data))? {
            Stop::Traffic => {}
            _ => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
        // Start it on its way; the flush finishes the job.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_out(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.bufs.close_sent {
            this.bufs.close_sent = true;
            // A connection that cannot send its close_notify still closes.
            let _ = process(&mut this.conn, &mut this.bufs, Write::CloseNotify);
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server config for localhost and a client config that trusts it,
    /// offering only `version`.
    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A TLS client (tokio-rustls) connected to `addr`.
    async fn client(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap()
    }

    /// A listener on a port the OS picks, and its address.
    async fn listen() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// 100,000 bytes each way (several records, partly read), both TLS
    /// versions; then the stream sleeps and wakes and carries on with the
    /// same keys and record numbers, holding no buffer while asleep.
    #[tokio::test]
    async fn a_stream_carries_bytes_both_ways_and_through_a_sleep() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (server_config, client_config) = configs(version);
            let (listener, addr) = listen().await;
            let up = pattern(100_000, 1);
            let down = pattern(100_000, 2);
            let (up2, down2) = (up.clone(), down.clone());
            let peer = tokio::spawn(async move {
                let mut c = client(addr, client_config).await;
                for round in 0..2u8 {
                    c.write_all(&up2).await.unwrap();
                    c.flush().await.unwrap();
                    let mut got = vec![0; down2.len()];
                    c.read_exact(&mut got).await.unwrap();
                    assert!(got == down2, "round {round}: bytes from the server differ");
                }
                c
            });
            let (socket, _) = listener.accept().await.unwrap();
            let mut s = TlsStream::accept(socket, server_config).await.unwrap();
            for round in 0..2 {
                let mut got = vec![0; up.len()];
                s.read_exact(&mut got).await.unwrap();
                assert!(got == up, "round {round}: bytes from the client differ");
                s.write_all(&down).await.unwrap();
                s.flush().await.unwrap();
                assert!(s.quiet());
                assert_eq!(s.bufs.incoming.capacity(), 0);
                assert_eq!(s.bufs.outgoing.capacity(), 0);
                assert_eq!(s.bufs.plain.capacity(), 0);
                let asleep = s.into_asleep().unwrap();
                s = asleep.wake().unwrap();
            }
            drop(peer.await.unwrap());
        }
    }

    /// A handshake and a record that come a byte at a time (a relay writes
    /// each byte alone) are put together whole.
    #[tokio::test]
    async fn records_arriving_a_byte_at_a_time_are_read_whole() {
        let (server_config, client_config) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, relay_addr) = (listener.local_addr().unwrap(), relay.local_addr().unwrap());
        tokio::spawn(async move {
            let (from, _) = relay.accept().await.unwrap();
            let to = TcpStream::connect(addr).await.unwrap();
            to.set_nodelay(true).unwrap();
            let (mut from_r, mut from_w) = from.into_split();
            let (mut to_r, mut to_w) = to.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut to_r, &mut from_w).await });
            let mut byte = [0u8; 1];
            while from_r.read_exact(&mut byte).await.is_ok() {
                if to_w.write_all(&byte).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let peer = tokio::spawn(async move {
            let mut c = client(relay_addr, client_config).await;
            c.write_all(b"hello, one byte at a time").await.unwrap();
            c.flush().await.unwrap();
            let mut got = [0u8; 2];
            c.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ok");
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut s = TlsStream::accept(socket, server_config).await.unwrap();
        let mut got = [0u8; 25];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello, one byte at a time");
        s.write_all(b"ok").await.unwrap();
        s.flush().await.unwrap();
        peer.await.unwrap();
    }

    /// The client's close_notify ends the server's reading; the server's
    /// shutdown sends its own, which the client takes as a clean end.
    #[tokio::test]
    async fn close_notify_ends_the_stream_both_ways() {
        let (server_config, client_config) = configs(&rustls::version::TLS13);
        let (listener, addr) = listen().await;
        let peer = tokio::spawn(async move {
            let mut c = client(addr, client_config).await;
            c.write_all(b"bye").await.unwrap();
            c.shutdown().await.unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut s = TlsStream::accept(socket, server_config).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        assert!(s.bufs.peer_closed);
        s.write_all(b"last").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(peer.await.unwrap(), b"last");
        assert!(s.write_all(b"more").await.is_err());
    }

    /// A handshake message split into one-byte records: rustls keeps every
    /// record until the message is whole, so the stream caps what it holds
    /// (without the cap, the 20,000 records here, 120 KB, would be kept and
    /// the handshake would wait for the remaining 45,000).
    #[tokio::test]
    async fn a_handshake_message_in_tiny_records_is_capped() {
        let (server_config, _) = configs(&rustls::version::TLS13);
        let (listener, addr) = listen().await;
        let peer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            // A ClientHello declaring 0xFFFF bytes, one byte per record.
            let mut bytes = Vec::new();
            for b in [1u8, 0x00, 0xFF, 0xFF]
                .into_iter()
                .chain(std::iter::repeat(0u8))
                .take(20_000)
            {
                bytes.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, b]);
            }
            let _ = c.write_all(&bytes).await;
            // Held open: only the cap can end the handshake.
            let mut answer = Vec::new();
            let _ = c.read_to_end(&mut answer).await;
        });
        let (socket, _) = listener.accept().await.unwrap();
        let accepted = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            TlsStream::accept(socket, server_config),
        )
        .await
        .expect("the cap must end the handshake");
        let err = accepted.err().expect("the handshake must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        peer.await.unwrap();
    }

    /// Bytes that are not TLS fail the handshake at once, with an error
    /// rather than a wait or a panic.
    #[tokio::test]
    async fn not_tls_fails_the_handshake() {
        let (server_config, _) = configs(&rustls::version::TLS13);
        let (listener, addr) = listen().await;
        let peer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = c.read_to_end(&mut answer).await;
            answer
        });
        let (socket, _) = listener.accept().await.unwrap();
        let accepted = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            TlsStream::accept(socket, server_config),
        )
        .await
        .expect("the handshake must fail at once");
        assert!(accepted.is_err());
        let answer = peer.await.unwrap();
        // Nothing, or a TLS alert record.
        assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");
    }
}
