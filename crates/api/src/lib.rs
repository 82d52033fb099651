//! lockstepd's HTTP API as types.
//!
//! Every endpoint's request and response bodies are defined here once, with
//! serde, and compiled against by the server (`lockstep-daemon`'s
//! handlers), the operator CLI (`lockstepctl`), the `lockstep` CLI and the
//! tests. [`Client`] is a small blocking client (ureq) with a typed method
//! per endpoint. The crate is light on purpose: a client links no engine,
//! broker, Raft or storage code. `docs/api.md` describes each endpoint.
//!
//! Errors are JSON bodies of the form [`ErrorBody`]; `503` answers carry
//! `Retry-After`.

mod backfill;
mod client;
mod cluster;
mod error;
mod ingest;
mod openapi;
mod segments;
mod status;
mod views;

pub use backfill::{
    BackfillJob, BackfillJobState, BackfillJobs, BackfillPart, BackfillRequest, BackfillStarted,
};
pub use client::{path_segment, Client, ClientError, Reply};
pub use cluster::{
    ActivateReply, ClusterStatus, DrainReply, MemberInfo, MemberState, RebalanceReply, RemoveReply,
    ShardCheckpointInfo, ShardEntry,
};
pub use error::ErrorBody;
pub use ingest::{
    DeadLetter, DeadLetters, EventError, Features, IngestReply, IngestedWithoutFeatures,
    TrainingRow, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED,
};
pub use openapi::{openapi_json, ApiDoc};
pub use segments::{CompactReply, CompactReport, SegmentInfo, SegmentList};
pub use status::{CheckpointInfo, CheckpointReply, CheckpointReport, NodeStatus, ShardStatus};
pub use views::{ApplyReply, ColumnInfo, PipelineInfo, ViewInfo, ViewList};
