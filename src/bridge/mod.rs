//! Bridges to remote brokers (issue 13). So far: the sans-I/O MQTT client of
//! one link (`client.rs`) and the topic mapping (`topics.rs`). The link task
//! and the outgoing buffer (a work queue owned by the bridge) come next.

pub mod client;
pub mod topics;
