//! Bridges to remote brokers (issue 13). So far: the sans-I/O MQTT client of
//! one link (`client.rs`). The link task, topic remapping and the outgoing
//! buffer (a work queue owned by the bridge) come next.

pub mod client;
