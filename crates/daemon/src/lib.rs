//! lockstepd as a library: the node daemon's parts, so tests drive exactly
//! what the binary runs.
//!
//! - [`config`]: the TOML configuration and its flag overrides.
//! - [`node`]: start-up and what the parts share.
//! - [`writer`]: the ingest writer (group commit, idempotency, dead letters).
//! - [`shard`]: the shard actors (ractor) and their supervisor.
//! - [`store`]: incremental checkpoints in sled.
//! - [`segments`]: archive and training segments in the object store.
//! - [`http`]: the HTTP API (axum).
//! - [`metrics`]: Prometheus metrics.
//! - [`cluster`]: cluster mode (Kafka log, control plane, coordinator).

pub mod client;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod node;
pub mod offline;
pub mod segments;
pub mod shard;
pub mod store;
pub mod writer;
