//! TEMPORARY STUB: replaced by the real encoder.
use super::types::*;
use bytes::BytesMut;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet too large to encode: {0}")]
    TooLarge(&'static str),
}

pub fn encode(
    _packet: &Packet,
    _version: ProtocolVersion,
    _buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    unimplemented!("stub")
}

pub fn encoded_len(_packet: &Packet, _version: ProtocolVersion) -> usize {
    unimplemented!("stub")
}
