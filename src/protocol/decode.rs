//! TEMPORARY STUB: replaced by the real decoder.
use super::types::*;
use bytes::BytesMut;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    TooLarge { size: usize, max: u32 },
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("topic name invalid: {0}")]
    TopicNameInvalid(&'static str),
}

impl DecodeError {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
        }
    }
}

pub fn decode(
    _buf: &mut BytesMut,
    _version: Option<ProtocolVersion>,
    _max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    unimplemented!("stub")
}
