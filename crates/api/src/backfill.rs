//! `POST /v1/backfill`, `GET /v1/backfill`, `GET /v1/backfill/{job}`.

use serde::{Deserialize, Serialize};

/// What a backfill asks for: a view's rows replayed from the archive, with
/// event time in `[from, to)` (ms since the epoch) when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillRequest {
    pub view: String,
    #[serde(default)]
    pub from: Option<i64>,
    #[serde(default)]
    pub to: Option<i64>,
    /// A pipeline with a new or changed view of the cluster's table.
    #[serde(default)]
    pub sql: Option<String>,
}

/// One shard's part of a cluster backfill (the control plane replicates
/// the same type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillPart {
    pub shard: u32,
    /// The node that replayed it.
    pub node: u64,
    /// The Parquet object holding its rows.
    pub path: String,
    pub crc32: u32,
    pub rows: u64,
    pub events: u64,
    pub millis: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackfillJobState {
    Running,
    Done,
    Failed,
}

/// A backfill job and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillJob {
    pub job: String,
    pub view: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub state: BackfillJobState,
    pub error: Option<String>,
    /// Shards done, of `total`.
    pub done: usize,
    pub total: u32,
    /// The done shards' parts (left out of job lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<BackfillPart>>,
}

/// `GET /v1/backfill`: running and recently finished jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillJobs {
    pub jobs: Vec<BackfillJob>,
}

/// `202` from `POST /v1/backfill?wait=false` (or a job still running after
/// the wait): follow it with `GET /v1/backfill/{job}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillStarted {
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BackfillJobState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
