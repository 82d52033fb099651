//! The shard log: an ordered, durable sequence of records per shard, read by
//! offset. One trait, two implementations: [`embedded::EmbeddedLog`] on sled
//! for a single node (the default), and [`kafka::KafkaLog`] for clusters.
//!
//! Offsets are dense per shard (0, 1, 2, …), so a checkpoint can record "the
//! next offset to read" and recovery replays exactly what follows it.

pub mod embedded;
pub mod kafka;

pub use embedded::{EmbeddedLog, RecordBatch, SideWrite};

/// When an append is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every append is on disk before it returns (what acknowledged ingest
    /// needs to survive SIGKILL and power loss).
    Always,
    /// Appends are not flushed when they return: the log's owner calls
    /// [`EmbeddedLog::flush`] every N milliseconds (and stops on its
    /// error). Faster, but a crash may lose the last N ms (still
    /// consistent: a prefix).
    EveryMillis(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("no shard {shard}: the log has {shards} shards")]
    NoShard { shard: u32, shards: u32 },
    #[error("offset {offset} of shard {shard} was truncated; the log starts at {start}")]
    Truncated { shard: u32, offset: u64, start: u64 },
    #[error("the log at {path} has {found} shards but {expected} were asked for; the shard count is fixed at creation")]
    ShardCount {
        path: String,
        found: u32,
        expected: u32,
    },
    #[error("log storage error (the data directory may be damaged or full): {0}")]
    Storage(#[from] sled::Error),
    /// The records were written but could not be made durable: whether they
    /// survive a crash is unknown. Callers should stop (as databases do on
    /// a failed fsync) rather than answer either way.
    #[error("the log could not fsync (the disk may be failing or full): {0}")]
    Flush(sled::Error),
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// An append-only log of S shards.
pub trait Log: Send + Sync {
    /// The number of shards, fixed at creation.
    fn shards(&self) -> u32;

    /// Appends records to one shard, atomically and in order; returns the
    /// offset of the first. Durable per the log's [`FsyncPolicy`] on return.
    fn append(&self, shard: u32, records: &[&[u8]]) -> Result<u64, LogError>;

    /// Up to `max` records of `shard` from `from` on, in offset order.
    fn read(&self, shard: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError>;

    /// The lowest offset still stored (records below were truncated).
    fn start_offset(&self, shard: u32) -> Result<u64, LogError>;

    /// The offset the next append will get.
    fn end_offset(&self, shard: u32) -> Result<u64, LogError>;

    /// Drops the records below `offset` (they are archived elsewhere).
    /// Offsets of later records do not change.
    fn truncate_below(&self, shard: u32, offset: u64) -> Result<(), LogError>;
}
