//! Tern: an MQTT 3.1.1 and 5.0 broker for edge gateways.
//!
//! The map of the code is in `ARCHITECTURE.md`. In short: `protocol`, `topic`,
//! `subscriptions`, `retain` and `session` are pure (no I/O, time passed in);
//! `router` owns all broker state; `connection` runs one task per socket; `listener`
//! accepts; `store` makes what was acknowledged durable; `broker` wires it together
//! and shuts it down.

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod clock;
pub mod config;
pub mod connection;
pub mod connection_slots;
pub mod deadlines;
mod hash;
pub mod listener;
pub mod login;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod queue;
pub mod reload;
pub mod retain;
pub mod retained_backlog;
pub mod router;
pub mod sd_notify;
pub mod session;
pub mod session_pending;
pub mod session_quota;
pub mod stall;
pub mod store;
pub mod subscription_index;
pub mod subscriptions;
pub mod sys;
pub mod tls;
pub mod tls_stream;
pub mod topic;
pub mod ws;
