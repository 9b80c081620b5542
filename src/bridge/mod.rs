//! Bridges to remote brokers (issue 13). The sans-I/O MQTT client of one link
//! (`client.rs`), the topic mappings (`topics.rs`), and the task of one bridge
//! (`link.rs`): a local client of the router consuming its buffer (the work
//! queue `bridge-<name>`) and a TCP or TLS link to the remote; what it reports
//! (`status.rs`); the set of running bridges, changed by a reload
//! (`registry.rs`).

pub mod client;
pub mod link;
pub mod origin;
pub mod registry;
pub mod status;
pub mod topics;
