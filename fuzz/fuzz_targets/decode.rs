//! Fuzz target for `tern::protocol::decode`: arbitrary bytes in every protocol state
//! (before CONNECT, 3.1.1, 5.0) must never panic, never consume more than the
//! input, and every packet the decoder accepts must re-encode (with `encoded_len`
//! exact) to bytes that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern::protocol::{decode, encode, encoded_len, ProtocolVersion};

/// Fixed limit, small enough that the TooLarge path is exercised too.
const MAX_PACKET_SIZE: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    for version in [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)] {
        let mut buf = BytesMut::from(data);
        // A few packets back to back, as a connection would read them.
        for _ in 0..8 {
            let before = buf.len();
            match decode(&mut buf, version, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a decoded packet consumed no bytes");
                    // For a CONNECT the encoder uses the packet's own version.
                    let v = version.unwrap_or(ProtocolVersion::V5);
                    let mut out = BytesMut::new();
                    encode(&packet, v, &mut out).expect("accepted packet re-encodes");
                    assert_eq!(out.len(), encoded_len(&packet, v));
                    let again =
                        decode(&mut out, version, u32::MAX).expect("re-encoded packet decodes");
                    assert_eq!(again.as_ref(), Some(&packet));
                    assert!(out.is_empty());
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(e) => {
                    let _ = e.reason_code();
                    break;
                }
            }
        }
    }
});
