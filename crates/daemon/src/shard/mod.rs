//! Shard actors: one ractor actor per shard owns that shard's operator state
//! and is the only thing that changes it. Messages arrive in mailbox order,
//! so the shard processes its log in order, and serving reads see every event
//! acknowledged before them. A supervisor restarts a failed actor, which
//! recovers from its last checkpoint and replays the log from there.

use crate::node::NodeCtx;
use crate::pipeline::Pipeline;
use crate::segments::SegmentInfo;
use crate::store::CheckpointInfo;
pub use lockstep_api::{CompactReport, ShardStatus};
use lockstep_core::value::Row;
use lockstep_core::{Emitted, Engine};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

mod actor;
mod checkpoint;
mod cluster;
mod compaction;
pub use compaction::MERGE_STALL_MS;
mod error;
mod local;
mod mode;
mod rebuild;
mod recovery;
mod supervisor;
mod worker;

pub use actor::{ShardActor, ShardArgs};
pub use checkpoint::{CheckpointJob, CheckpointOutcome, Saved, Unsaved};
pub use cluster::ClusterShard;
pub use error::{ShardError, StopReason};
pub use local::LocalShard;
pub use mode::{Commits, Committer, Input, Manifest, Shard, ShardMode, SourceRows, Tenure};
pub use supervisor::{SupMsg, Supervisor, SupervisorState};

pub type Reply<T> = oneshot::Sender<Result<T, ShardError>>;

pub enum ShardMsg {
    /// Events appended to the log at offsets `first..first + rows.len()`.
    /// With `serve`, the single event's features (computed just before it
    /// enters the state, so exactly its training row's) are sent back.
    Events {
        first: u64,
        rows: Vec<Row>,
        serve: Option<(String, Reply<String>)>,
    },
    /// Features of a hypothetical event, as the JSON reply body; no state
    /// changes.
    Serve {
        view: String,
        event: Row,
        reply: Reply<String>,
    },
    Checkpoint {
        reply: Option<Reply<CheckpointReport>>,
    },
    /// A checkpoint task finished (sent by the task itself).
    CheckpointDone {
        done: Box<CheckpointOutcome>,
        started: Instant,
        replies: Vec<Reply<CheckpointReport>>,
    },
    Status {
        reply: Reply<ShardStatus>,
    },
    Segments {
        reply: Reply<Vec<SegmentInfo>>,
    },
    Compact {
        target_bytes: u64,
        reply: Reply<CompactReport>,
    },
    /// From a compaction's task: swap `merged` in for `group`; answers the
    /// number of segments after.
    CompactSwap {
        group: Vec<SegmentInfo>,
        merged: SegmentInfo,
        reply: Reply<usize>,
    },
    /// The compaction's task ended.
    CompactDone,
    /// A compaction the shard started on its own merged something: see
    /// whether the manifest is still too long (more checkpoints came in
    /// while it ran).
    AutoCompact,
    /// Process whatever the log holds beyond the shard's offset: sent by
    /// the supervisor after a restart, for events whose messages went to the
    /// failed predecessor.
    CatchUp,
    /// The node's pipeline changed (`views apply`): the actor rebuilds its
    /// state under it in place (after a checkpoint in flight, if any) and
    /// answers when it serves the new views. A shard already running the
    /// node's pipeline answers at once.
    Swap {
        reply: Option<Reply<()>>,
    },
    /// Stop; the supervisor starts a successor, which recovers under the
    /// node's current pipeline (a cluster pipeline this node cannot run:
    /// the successor waits).
    Stop,
    /// Test hook: fail the actor (the supervisor restarts it).
    Fail,
    /// Test hook: the actor sleeps this long (its mailbox fills).
    Stall(std::time::Duration),
    /// Cluster: records of the shard's partition, in offset order.
    /// `stopped` is the sending fetcher's stop flag: a batch from a fetcher
    /// stopped since (the shard swapped pipelines and reads again from its
    /// checkpoint, or it is leaving) is dropped, not applied out of order.
    Records {
        recs: Vec<lockstep_log::kafka::KafkaRecord>,
        stopped: Arc<std::sync::atomic::AtomicBool>,
    },
    /// Cluster: answer the features of the record carrying this
    /// Idempotency-Key (index 0) when it arrives, computed just before it
    /// enters the state (serve-and-ingest on the owner).
    ServeWhenSeen {
        key: String,
        view: String,
        reply: Reply<String>,
    },
    /// Cluster: the shard moves away: stop reading, take a last
    /// checkpoint, hand the shard off and stop.
    Handoff,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub shard: u32,
    pub seq: u64,
    pub log_offset: u64,
    /// False when nothing changed since the previous checkpoint.
    pub wrote: bool,
    pub slots_written: u64,
    pub bytes_written: u64,
    pub training_rows: u64,
    pub segments: usize,
    pub millis: f64,
}

/// The shard's state and the work on it, apart from the actor plumbing.
pub struct ShardWorker {
    ctx: Arc<NodeCtx>,
    /// The pipeline this shard's engine runs.
    pipe: Arc<Pipeline>,
    shard: u32,
    engine: Engine,
    /// Next log offset to process.
    next_offset: u64,
    ckpt: CheckpointInfo,
    /// Rows finalized since the last checkpoint, per engine view.
    training: Vec<Vec<Row>>,
    /// Late events since the last checkpoint: (offset, watermark, event).
    late: Vec<(u64, i64, Row)>,
    /// Event-time range of the log since the last checkpoint.
    times: (i64, i64),
    segments: Vec<SegmentInfo>,
    emitted: Vec<Emitted>,
    /// A checkpoint task is running; `again`: another was asked for
    /// meanwhile (its callers wait in `replies`).
    in_flight: bool,
    again: bool,
    replies: Vec<Reply<CheckpointReport>>,
    /// A pipeline swap waits for the checkpoint in flight; its callers.
    swap_pending: bool,
    swaps: Vec<Reply<()>>,
    /// A compaction's task is running.
    compacting: bool,
}

fn err(e: impl std::fmt::Display) -> ShardError {
    ShardError::internal(e)
}

/// The committed segments of one shard, asked of its actor.
pub async fn segments_of(ctx: &NodeCtx, shard: u32) -> Result<Vec<SegmentInfo>, ShardError> {
    let restarting = || ShardError::Unavailable(format!("shard {shard} is restarting; retry"));
    let (tx, rx) = oneshot::channel();
    let actor = ctx.shard(shard).ok_or_else(restarting)?;
    actor
        .send_message(ShardMsg::Segments { reply: tx })
        .map_err(|_| restarting())?;
    rx.await.map_err(|_| restarting())?
}
