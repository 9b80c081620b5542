//! WebSocket framing, the server's side (RFC 6455 section 5), as a pure state
//! machine: no I/O, no allocation for data.
//!
//! MQTT treats the WebSocket as a byte stream: one packet may span messages and
//! one message may hold several packets [MQTT-6.0.0-2], so frame and message
//! boundaries mean nothing to it. The decoder therefore unmasks data payloads in
//! place, in the very buffer the bytes were read into, and keeps only the
//! state of the frame it is in (about 40 bytes): an idle WebSocket connection
//! costs what a TCP one does, and a half-sent message holds nothing.

/// Opcodes (RFC 6455 section 5.2).
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close status codes (RFC 6455 section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Data of a type we do not take: text [MQTT-6.0.0-1].
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Control frames carry at most this much (RFC 6455 section 5.5).
const CONTROL_MAX: usize = 125;

/// Why the client's frames were refused, and the close code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError {
    pub code: u16,
    pub why: &'static str,
}

impl FrameError {
    const fn protocol(why: &'static str) -> FrameError {
        FrameError {
            code: CLOSE_PROTOCOL_ERROR,
            why,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket: {} (close {})", self.why, self.code)
    }
}

/// The header of an unmasked server frame with FIN set (servers do not mask,
/// RFC 6455 section 5.1), and its length.
pub fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A whole binary frame for `payload`.
pub fn binary_header(len: usize) -> ([u8; 10], usize) {
    header(OP_BINARY, len)
}

/// A Close frame with `code`, appended to `out`.
pub fn put_close(out: &mut bytes::BytesMut, code: u16) {
    let (h, n) = header(OP_CLOSE, 2);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(&code.to_be_bytes());
}

/// A Pong frame echoing `payload` (at most 125 bytes), appended to `out`.
pub fn put_pong(out: &mut bytes::BytesMut, payload: &[u8]) {
    let (h, n) = header(OP_PONG, payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// What a client's control frames ask of us, taken after each `decode`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replies {
    /// The payload of the latest Ping, to answer with a Pong (only the latest
    /// needs one, RFC 6455 section 5.5.3).
    pub pong: Option<Vec<u8>>,
    /// The client sent Close, with this code to echo (1000 when it gave none):
    /// reads end, our Close goes back.
    pub close: Option<u16>,
}

/// The client's frames, decoded as they arrive.
#[derive(Debug)]
pub struct Unframer {
    /// The header being read, when it came split across reads.
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    left: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame seen so far, modulo 4: where in the
    /// mask the next one is.
    phase: u8,
    /// The current frame's opcode.
    opcode: u8,
    /// A fragmented data message is open: only continuation frames (and
    /// control frames) may come until its final fragment.
    in_message: bool,
    /// The client sent Close: whatever follows is ignored.
    closed: bool,
    /// A control frame's payload being collected (at most 125 bytes; no
    /// allocation without one).
    control: Vec<u8>,
    max_frame: u64,
    replies: Replies,
}

/// A frame header's length once its first two bytes are known: 2, the
/// extended length, and the 4-byte mask (clients always mask).
fn header_len(b1: u8) -> usize {
    2 + match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    } + 4
}

impl Unframer {
    /// `max_frame`: the largest payload one frame may announce.
    pub fn new(max_frame: u64) -> Unframer {
        Unframer {
            head: [0; 14],
            head_len: 0,
            left: 0,
            mask: [0; 4],
            phase: 0,
            opcode: 0,
            in_message: false,
            closed: false,
            control: Vec::new(),
            max_frame,
            replies: Replies::default(),
        }
    }

    /// Between frames, with nothing half-read: the state may be kept aside
    /// (a sleeping connection keeps it while the socket is idle).
    #[cfg(test)]
    pub fn between_frames(&self) -> bool {
        self.head_len == 0 && self.left == 0
    }

    /// The control frames' requests since the last call.
    pub fn take_replies(&mut self) -> Replies {
        std::mem::take(&mut self.replies)
    }

    /// The client has sent Close.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Decode `buf`, bytes just read from the client, in place: the unmasked
    /// payload of its data frames is moved to the front, and its length
    /// returned. Headers and control frames are consumed (see
    /// `take_replies`).
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let mut read = 0;
        let mut written = 0;
        while read < buf.len() && !self.closed {
            if self.left > 0 {
                let n = (buf.len() - read).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                if self.opcode >= OP_CLOSE {
                    for &b in &buf[read..read + n] {
                        let b = b ^ self.mask[usize::from(self.phase)];
                        self.phase = (self.phase + 1) & 3;
                        // The length was checked against CONTROL_MAX.
                        self.control.push(b);
                    }
                } else {
                    buf.copy_within(read..read + n, written);
                    for b in &mut buf[written..written + n] {
                        *b ^= self.mask[usize::from(self.phase)];
                        self.phase = (self.phase + 1) & 3;
                    }
                    written += n;
                }
                read += n;
                self.left -= n as u64;
                if self.left == 0 && self.opcode >= OP_CLOSE {
                    self.end_control();
                }
                continue;
            }
            // A header: collect it, byte by byte (at most 14).
            self.head[usize::from(self.head_len)] = buf[read];
            self.head_len += 1;
            read += 1;
            let have = usize::from(self.head_len);
            if have == 2 && self.head[1] & 0x80 == 0 {
                // RFC 6455 section 5.1: a server closes on an unmasked frame
                // (known from its second byte; the header's length assumes
                // a mask).
                return Err(FrameError::protocol("unmasked client frame"));
            }
            if have < 2 || have < header_len(self.head[1]) {
                continue;
            }
            self.head_len = 0;
            self.start_frame()?;
        }
        if self.closed {
            // Nothing after a Close counts (RFC 6455 section 5.5.1).
            self.head_len = 0;
            self.left = 0;
        }
        Ok(written)
    }

    /// A complete header is in `head`: check it and start its payload.
    fn start_frame(&mut self) -> Result<(), FrameError> {
        let h = self.head;
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            // No extension was negotiated.
            return Err(FrameError::protocol("reserved bits set"));
        }
        let (len, at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 if h[2] & 0x80 != 0 => {
                // RFC 6455 section 5.2: the most significant bit must be 0.
                return Err(FrameError::protocol("64-bit length with its top bit set"));
            }
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                10,
            ),
            n => (u64::from(n), 2),
        };
        self.mask.copy_from_slice(&h[at..at + 4]);
        self.phase = 0;
        let opcode = h[0] & 0x0F;
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > CONTROL_MAX as u64 {
                    return Err(FrameError::protocol("fragmented or long control frame"));
                }
            }
            OP_BINARY | OP_CONTINUATION => {
                if (opcode == OP_BINARY) == self.in_message {
                    return Err(FrameError::protocol(if self.in_message {
                        "new message inside a fragmented one"
                    } else {
                        "continuation without a message"
                    }));
                }
                if len > self.max_frame {
                    return Err(FrameError {
                        code: CLOSE_TOO_BIG,
                        why: "frame larger than the maximum packet size",
                    });
                }
                self.in_message = !fin;
            }
            OP_TEXT => {
                return Err(FrameError {
                    code: CLOSE_UNSUPPORTED,
                    why: "text message: MQTT travels in binary messages",
                })
            }
            _ => return Err(FrameError::protocol("unknown opcode")),
        }
        self.opcode = opcode;
        self.left = len;
        if len == 0 && opcode >= OP_CLOSE {
            self.end_control();
        }
        Ok(())
    }

    /// A control frame's payload is complete.
    fn end_control(&mut self) {
        let payload = std::mem::take(&mut self.control);
        match self.opcode {
            OP_PING => self.replies.pong = Some(payload),
            OP_CLOSE => {
                // RFC 6455 section 7.4: a code a peer may send is echoed; a
                // one-byte body or a reserved code is a protocol error. 1005,
                // 1006 and 1015 are never sent on the wire.
                let code = match payload.as_slice() {
                    [] => CLOSE_NORMAL,
                    [a, b, ..] => match u16::from_be_bytes([*a, *b]) {
                        c @ (1000..=1003 | 1007..=1014 | 3000..=4999) => c,
                        _ => CLOSE_PROTOCOL_ERROR,
                    },
                    [_] => CLOSE_PROTOCOL_ERROR,
                };
                self.replies.close = Some(code);
                self.closed = true;
            }
            _ => {} // Pong: nothing to do.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Decode `wire` fed in pieces of `step` bytes.
    fn decode_in_steps(u: &mut Unframer, wire: &[u8], step: usize) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        for chunk in wire.chunks(step) {
            let mut b = chunk.to_vec();
            let n = u.decode(&mut b)?;
            out.extend_from_slice(&b[..n]);
        }
        Ok(out)
    }

    #[test]
    fn data_frames_of_every_length_form_decode_in_any_split() {
        let long: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let mut wire = frame(true, OP_BINARY, b"hello", [1, 2, 3, 4]);
        wire.extend(frame(false, OP_BINARY, &long[..300], [9, 8, 7, 6]));
        wire.extend(frame(true, OP_PING, b"p", [5, 5, 5, 5]));
        wire.extend(frame(
            true,
            OP_CONTINUATION,
            &long[300..],
            [0xAA, 0, 0xFF, 3],
        ));
        wire.extend(frame(true, OP_BINARY, b"", [1, 1, 1, 1]));
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&long);
        for step in [1, 2, 3, 7, 13, 100, 4096, wire.len()] {
            let mut u = Unframer::new(1 << 20);
            assert_eq!(
                decode_in_steps(&mut u, &wire, step).unwrap(),
                want,
                "step {step}"
            );
            assert!(u.between_frames());
            let r = u.take_replies();
            assert_eq!(r.pong.as_deref(), Some(&b"p"[..]));
            assert_eq!(r.close, None);
        }
    }

    #[test]
    fn close_is_reported_with_its_code_and_ends_decoding() {
        let mut u = Unframer::new(1024);
        let mut wire = frame(true, OP_BINARY, b"ab", [1, 2, 3, 4]);
        wire.extend(frame(true, OP_CLOSE, &1001u16.to_be_bytes(), [7, 7, 7, 7]));
        wire.extend(frame(true, OP_BINARY, b"after", [1, 2, 3, 4]));
        assert_eq!(decode_in_steps(&mut u, &wire, 5).unwrap(), b"ab");
        assert!(u.closed());
        assert_eq!(u.take_replies().close, Some(1001));
        let mut u = Unframer::new(1024);
        let mut empty = frame(true, OP_CLOSE, b"", [7, 7, 7, 7]);
        assert_eq!(u.decode(&mut empty).unwrap(), 0);
        assert_eq!(u.take_replies().close, Some(CLOSE_NORMAL));
        // A one-byte body, or a code no peer may send: answered 1002.
        for body in [&[3u8][..], &1005u16.to_be_bytes(), &999u16.to_be_bytes()] {
            let mut u = Unframer::new(1024);
            let mut bad = frame(true, OP_CLOSE, body, [7, 7, 7, 7]);
            assert_eq!(u.decode(&mut bad).unwrap(), 0);
            assert_eq!(
                u.take_replies().close,
                Some(CLOSE_PROTOCOL_ERROR),
                "{body:?}"
            );
        }
    }

    #[test]
    fn violations_are_refused_with_their_close_code() {
        let code = |wire: Vec<u8>| {
            let mut u = Unframer::new(1024);
            decode_in_steps(&mut u, &wire, 3).unwrap_err().code
        };
        assert_eq!(
            code(frame(true, OP_TEXT, b"x", [1, 2, 3, 4])),
            CLOSE_UNSUPPORTED
        );
        assert_eq!(
            code(frame(true, OP_BINARY, &[0; 2000], [1, 2, 3, 4])),
            CLOSE_TOO_BIG
        );
        assert_eq!(
            code(frame(true, OP_CONTINUATION, b"x", [1, 2, 3, 4])),
            CLOSE_PROTOCOL_ERROR
        );
        let mut two = frame(false, OP_BINARY, b"x", [1, 2, 3, 4]);
        two.extend(frame(true, OP_BINARY, b"y", [1, 2, 3, 4]));
        assert_eq!(code(two), CLOSE_PROTOCOL_ERROR);
        assert_eq!(
            code(frame(false, OP_PING, b"x", [1, 2, 3, 4])),
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            code(frame(true, OP_PING, &[0; 126], [1, 2, 3, 4])),
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            code(frame(true, 0x3, b"x", [1, 2, 3, 4])),
            CLOSE_PROTOCOL_ERROR
        );
        let mut rsv = frame(true, OP_BINARY, b"x", [1, 2, 3, 4]);
        rsv[0] |= 0x40;
        assert_eq!(code(rsv), CLOSE_PROTOCOL_ERROR);
        assert_eq!(
            code(vec![0x82, 0x01, b'x']),
            CLOSE_PROTOCOL_ERROR,
            "unmasked"
        );
        let mut top = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1];
        top.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(code(top), CLOSE_PROTOCOL_ERROR, "64-bit length, top bit");
    }

    #[test]
    fn server_headers() {
        assert_eq!(&header(OP_BINARY, 5).0[..2], &[0x82, 5]);
        assert_eq!(&header(OP_BINARY, 300).0[..4], &[0x82, 126, 1, 44]);
        let (h, n) = header(OP_BINARY, 70_000);
        assert_eq!(n, 10);
        assert_eq!(&h[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }
}
