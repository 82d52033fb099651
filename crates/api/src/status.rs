//! `GET /v1/status` and `POST /v1/checkpoint`.

use serde::{Deserialize, Serialize};

/// What a committed checkpoint says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointInfo {
    /// Checkpoints of this shard so far (1 for the first).
    pub seq: u64,
    /// The next log offset to process after restoring: the log below it is
    /// reflected in the state and archived.
    pub log_offset: u64,
    /// Wall-clock time of the commit, ms since the epoch.
    pub at_ms: i64,
    /// Partition slots written by this checkpoint (the incremental part).
    pub slots_written: u64,
    /// Bytes of state written by this checkpoint.
    pub bytes_written: u64,
    /// Fingerprint of the views the state was built for.
    pub pipeline: String,
}

/// One shard as its actor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardStatus {
    pub shard: u32,
    /// Next log offset this shard will process.
    pub offset: u64,
    /// The log's end: appended so far.
    pub log_end: u64,
    pub lag: u64,
    pub events: u64,
    pub late: u64,
    pub watermark: Option<String>,
    pub pending_rows: u64,
    pub partitions: u64,
    pub buffered_training_rows: u64,
    pub last_checkpoint: CheckpointInfo,
    pub restarts: u64,
    /// Set when the shard cannot go on reading its log (records it needs
    /// are gone from the topic): why, and what to do (docs/operations.md,
    /// "When the log lost records"). The node is not ready meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// `GET /v1/status`: the node and the shards it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStatus {
    pub node_id: String,
    pub table: String,
    pub views: Vec<String>,
    pub shard_count: u32,
    pub object_store: String,
    pub data_dir: String,
    pub uptime_seconds: i64,
    pub events: u64,
    pub late: u64,
    pub lag: u64,
    pub dead_letters: u64,
    /// The oldest of the shards' last checkpoints (RFC 3339).
    pub last_checkpoint: Option<String>,
    pub shards: Vec<ShardStatus>,
}

/// One shard's checkpoint taken on request. On one node every field is
/// set; a cluster reports the committed checkpoint (`epoch`, `owner`) and
/// leaves the write statistics out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointReport {
    pub shard: u32,
    pub seq: u64,
    pub log_offset: u64,
    /// Cluster: the checkpoint epoch and the owner that committed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u64>,
    /// False when nothing changed since the previous checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrote: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_written: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millis: Option<f64>,
}

/// `POST /v1/checkpoint`: every shard checkpointed (in a cluster: the
/// checkpoint epoch opened, complete on every shard).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub checkpoints: Vec<CheckpointReport>,
}
