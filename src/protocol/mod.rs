//! MQTT 3.1.1 and 5.0 wire protocol: packet types, decoder, v5 properties, encoder. Pure: no I/O.
//!
//! Owns the byte format and every check the specifications ask of a receiver that
//! can be made on one packet alone (reserved bits, QoS 3, packet id 0, UTF-8, property
//! duplicates and ranges, trailing bytes, size). It knows nothing of sessions,
//! subscriptions or sockets: sequencing rules (CONNECT first and once, topic alias
//! ranges, receive maximum) belong to `connection.rs`.

mod decode;
mod encode;
mod properties;
pub mod types;

pub use decode::{decode, decode_with, DecodeError, DecodeLimits};
pub use encode::{encode, encode_vbi, encoded_len, EncodeError, PublishView};
pub use types::*;
