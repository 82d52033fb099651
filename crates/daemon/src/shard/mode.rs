//! The seam between one node and a cluster, for a shard.
//!
//! A shard's worker (its engine, offsets, rows since the last checkpoint,
//! manifest) and its checkpoint, rebuild and compaction code are the same
//! in both modes. What differs sits behind [`ShardMode`], with one
//! implementation per mode in its own file:
//!
//! | | one node ([`LocalShard`](super::local::LocalShard)) | cluster ([`ClusterShard`](super::cluster::ClusterShard)) |
//! |---|---|---|
//! | where events come from | the embedded log: the writer's `Events` messages, gaps read back | the Kafka partition: a fetcher's `Records`, validated and deduplicated |
//! | the archive slice | read from the embedded log at checkpoint time | framed as records arrive |
//! | how a checkpoint commits | one atomic sled batch, then the log is truncated | a snapshot object and a `Commit` through Raft under the owner epoch (fenced) |
//! | where segments are swapped | the sled manifest | the replicated manifest |
//! | leaving | never | hand-off to the move's target |
//!
//! [`Committer`] is the part of a mode that a checkpoint task carries off
//! the actor.

use super::checkpoint::{CheckpointJob, Saved};
use super::{Reply, ShardError, ShardMsg, ShardWorker};
use crate::segments::SegmentInfo;
use futures::future::BoxFuture;
use lockstep_core::value::Row;
use lockstep_log::kafka::KafkaRecord;
use ractor::ActorRef;

/// A malformed record of the shard's input: (offset, reason, raw text).
pub type DeadRecord = (u64, String, String);

/// What a mode's input keeps until the next checkpoint: the archive slice
/// framed as it arrived (empty where the archive is read from the log at
/// checkpoint time) and malformed records.
#[derive(Debug, Default)]
pub struct SourceRows {
    pub framed: Vec<u8>,
    pub count: u64,
    pub dead: Vec<DeadRecord>,
}

impl SourceRows {
    /// Puts rows of a failed checkpoint (`self`) in front of `newer`.
    pub fn prepend_to(mut self, newer: &mut SourceRows) {
        self.framed.append(&mut newer.framed);
        self.dead.append(&mut newer.dead);
        newer.framed = self.framed;
        newer.count += self.count;
        newer.dead = self.dead;
    }
}

/// What differs between one node and a cluster for a running shard: four
/// narrow seams, each implemented once per mode. The worker is passed in;
/// a mode holds only its own state.
pub trait ShardMode: Input + Tenure + Commits + Manifest {}

impl<T: Input + Tenure + Commits + Manifest> ShardMode for T {}

/// Where a shard's events come from, how they are deduplicated and
/// validated, and what of them a checkpoint archives.
pub trait Input: Send + Sync + 'static {
    /// Starts reading input beyond the worker's offset (a cluster's
    /// fetcher; one node's input comes by message).
    fn start_reading(&mut self, w: &ShardWorker, me: &ActorRef<ShardMsg>);
    fn stop_reading(&mut self);
    /// Events appended to the embedded log at `first..` (one node).
    fn on_events(
        &mut self,
        w: &mut ShardWorker,
        first: u64,
        rows: Vec<Row>,
        serve: Option<(String, Reply<String>)>,
    ) -> Result<(), ShardError>;
    /// Records of the shard's partition, in offset order (cluster).
    fn on_records(&mut self, w: &mut ShardWorker, recs: Vec<KafkaRecord>)
        -> Result<(), ShardError>;
    /// Processes whatever the input holds beyond the worker's offset.
    fn catch_up(&mut self, w: &mut ShardWorker) -> Result<(), ShardError>;
    /// Answers the features of the record carrying Idempotency-Key `key`
    /// when it arrives (serve-and-ingest on a cluster's owner).
    fn serve_when_seen(&mut self, w: &ShardWorker, key: String, view: String, reply: Reply<String>);
    /// The end of the shard's input, for lag.
    fn log_end(&self, w: &ShardWorker) -> u64;
    /// The input's rows since the last checkpoint, taken for one.
    fn take_rows(&mut self, w: &ShardWorker) -> SourceRows;
    /// The rows of a failed checkpoint, back in front of the newer ones.
    fn put_back(&mut self, rows: SourceRows);
}

/// Whether the shard is this node's to serve, and how it leaves.
pub trait Tenure: Send + Sync + 'static {
    /// Whether the shard answers feature requests now.
    fn check_serving(&self, w: &ShardWorker) -> Result<(), ShardError>;
    /// The shard moves away: stop reading, take a last checkpoint, hand off.
    fn begin_handoff(&mut self, w: &mut ShardWorker, me: &ActorRef<ShardMsg>);
    /// A checkpoint ended and none runs: a moving shard hands off now.
    fn after_checkpoint(&mut self, w: &mut ShardWorker, me: &ActorRef<ShardMsg>);
}

/// How a checkpoint is committed (and fenced).
pub trait Commits: Send + Sync + 'static {
    /// Something to commit even without new events (dead letters, an open
    /// cluster epoch).
    fn pending(&self) -> bool;
    /// The next checkpoint writes every partition slot.
    fn wants_full_snapshot(&self) -> bool;
    /// How this checkpoint commits, carried off the actor by its task.
    fn committer(&mut self, full: bool) -> Box<dyn Committer>;
    /// A checkpoint committed.
    fn committed(&mut self, w: &ShardWorker, saved: &Saved);
}

/// Where the shard's segments are listed and swapped (compaction).
pub trait Manifest: Send + Sync + 'static {
    /// Part of a compacted object's name unique to this attempt, where
    /// attempts of several owners may race.
    fn compaction_tag(&self) -> Option<String>;
    /// Swaps compacted segments in the manifest.
    fn swap_segments<'a>(
        &'a self,
        w: &'a ShardWorker,
        remove: &'a [SegmentInfo],
        merged: &'a SegmentInfo,
    ) -> BoxFuture<'a, Result<(), ShardError>>;
    /// Whether replaced objects are deleted a minute later (others may be
    /// reading them under the manifest they listed) rather than at once.
    fn deletes_later(&self) -> bool;
}

/// How a checkpoint task archives the log slice and commits.
pub trait Committer: Send + Sync {
    /// Part of this attempt's object names (owner epoch and nonce).
    fn tag(&self) -> Option<String>;
    /// Writes the archive slice `job.from..job.to`, if there is one.
    fn archive<'a>(
        &'a self,
        job: &'a CheckpointJob,
    ) -> BoxFuture<'a, Result<Option<SegmentInfo>, ShardError>>;
    /// Commits the checkpoint with the segments it added.
    fn commit<'a>(
        &'a self,
        job: &'a CheckpointJob,
        added: Vec<SegmentInfo>,
        training_rows: u64,
    ) -> BoxFuture<'a, Result<Saved, ShardError>>;
}

/// Recovers a shard in the node's mode: the one place that chooses.
pub async fn recover_mode(
    w: &mut ShardWorker,
    loaded: Option<crate::store::Loaded>,
) -> Result<Box<dyn ShardMode>, ShardError> {
    match w.ctx.cluster.clone() {
        Some(cl) => Ok(Box::new(
            super::cluster::ClusterShard::recover(w, cl, loaded).await?,
        )),
        None => Ok(Box::new(
            super::local::LocalShard::recover(w, loaded).await?,
        )),
    }
}

/// A shard actor's state: the worker and its mode.
pub struct Shard {
    pub w: ShardWorker,
    pub mode: Box<dyn ShardMode>,
}
