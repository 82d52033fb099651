//! lockstep-core: SQL feature views computed incrementally, with exact frame
//! semantics, the same online and offline.
//!
//! This crate is pure: no I/O, no threads, no clock, no randomness. Time and
//! events are passed in; rows come out. The daemon and the batch runner are
//! thin shells around [`engine::Engine`].

pub mod dedup;
pub mod engine;
pub mod enrich;
pub mod expr;
pub mod plan;
pub mod shard;
pub mod sql;
pub mod time;
pub mod value;
pub mod window;

pub use engine::{
    Emitted, Engine, EngineError, EventError, Outcome, ShardDelta, ShardMeta, ShardSnapshot,
    SlotKey,
};
pub use plan::{Catalog, Table, View};
pub use sql::{parse_pipeline, SqlError};
pub use value::{DataType, Row, Schema, Value};
