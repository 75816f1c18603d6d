//! dwcp-agent: the gateway daemon, the I/O shell around `dwcp-control`'s state owner. One
//! module per task kind; `agent::daemon` composes them (its module comment draws the
//! channels between them).
pub mod agent;
pub mod api;
pub mod health;
pub mod http;
pub mod probe;
pub mod prober;
pub mod store;
pub mod telemetry;
