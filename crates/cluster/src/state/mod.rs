//! The replicated state machine: what the cluster agrees on, and the only
//! way it changes ([`Command`]s applied in Raft log order).
//!
//! It is pure and deterministic (no clock, no I/O: times come inside the
//! commands), so every member computes the same state from the same log.
//! The rules that make the cluster exactly once live here:
//! - each shard has one owner and an **owner epoch** that grows with every
//!   change of owner;
//! - a checkpoint (state, offset, segments) commits only with the current
//!   owner's epoch and the next sequence number, so a zombie owner, cut off
//!   and replaced, can neither commit a checkpoint nor publish training rows
//!   (rows exist for readers only through committed segment manifests).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type NodeId = u64;

pub use lockstep_api::{BackfillPart, SegmentInfo};

/// One object of a shard's state snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// A committed checkpoint of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    pub shard: u32,
    /// The owner that took it, and its owner epoch.
    pub owner: NodeId,
    pub owner_epoch: u64,
    /// The cluster checkpoint epoch it answers (0: taken on the owner's
    /// own account, e.g. before a hand-off).
    pub epoch: u64,
    /// 1 for the shard's first checkpoint, then +1 each.
    pub seq: u64,
    /// The next source offset: the log below it is in the state.
    pub offset: u64,
    /// Fingerprint of the views the state was built for.
    pub pipeline: String,
    /// The objects to restore, in order: a full snapshot, then the deltas
    /// taken since (each overrides what came before).
    pub snapshot: Vec<SnapshotPart>,
    /// Digest of the shard's state (for operators and restore checks).
    pub digest: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Owns and receives shards.
    Active,
    /// Giving its shards away (`lockstepctl nodes drain`); receives none.
    Draining,
    /// Missed its heartbeats: its shards were reassigned.
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's API address (`host:port`), where other nodes forward to.
    pub addr: String,
    pub state: NodeState,
    /// When it last joined (or came back).
    pub joined_ms: i64,
}

/// Who owns a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOwner {
    pub node: Option<NodeId>,
    /// Grows with every change of owner: commits must carry the current one.
    pub epoch: u64,
    /// A graceful move in progress: the owner checkpoints, then hands off.
    pub moving_to: Option<NodeId>,
}

/// A change to the cluster. Proposed through the leader, applied by all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the table's shard count (once: the shard count is fixed) and
    /// the first pipeline (the initializing node's SQL).
    Init {
        table: String,
        shards: u32,
        sql: String,
        at_ms: i64,
    },
    /// A node joins, or comes back (then it is active again).
    Join {
        node: NodeId,
        addr: String,
        at_ms: i64,
    },
    Drain {
        node: NodeId,
    },
    /// The coordinator saw no heartbeat from it.
    MarkDown {
        node: NodeId,
    },
    /// The operator removes a node that is down for good (`nodes remove`):
    /// it leaves the member list, and shards it still owns are orphans the
    /// coordinator reassigns at once.
    Remove {
        node: NodeId,
    },
    /// Gives a shard to a node outright (its owner is gone), with a new
    /// owner epoch. `expect_epoch` guards against a stale plan.
    Assign {
        shard: u32,
        node: NodeId,
        expect_epoch: u64,
    },
    /// Starts a graceful move: the owner takes a last checkpoint and hands off.
    StartMove {
        shard: u32,
        to: NodeId,
        expect_epoch: u64,
    },
    /// The owner's hand-off: its last checkpoint is committed, the shard
    /// goes to the move's target with a new owner epoch.
    Handoff {
        shard: u32,
        from: NodeId,
        owner_epoch: u64,
    },
    /// A checkpoint with the segments it adds, and those it replaces (a
    /// rebuild under a new pipeline rewrites changed views' history).
    Commit {
        checkpoint: ShardCheckpoint,
        add_segments: Vec<SegmentInfo>,
        remove_segments: Vec<SegmentInfo>,
    },
    /// Replaces segments (compaction, rebuilds), by the current owner.
    SwapSegments {
        shard: u32,
        owner: NodeId,
        owner_epoch: u64,
        remove: Vec<SegmentInfo>,
        add: Vec<SegmentInfo>,
    },
    /// The coordinator opens a cluster checkpoint epoch.
    OpenEpoch {
        epoch: u64,
        at_ms: i64,
    },
    /// A new pipeline (`views apply`): every shard rebuilds under it.
    /// `expect_version` is the version it replaces (two applies at once:
    /// the second is refused).
    SetPipeline {
        sql: String,
        expect_version: u64,
        at_ms: i64,
    },
    /// Changes nothing: a member that sees it applied has applied all that
    /// was committed before (a read barrier).
    Barrier,
    /// A backfill job: every shard's owner replays it (`request` is the
    /// job's JSON; the state machine keeps it for the nodes).
    BackfillStart {
        id: String,
        request: String,
        at_ms: i64,
    },
    /// One shard of a backfill job is done (the first part per shard wins).
    BackfillPart {
        id: String,
        part: BackfillPart,
        at_ms: i64,
    },
    /// A backfill job failed (a shard could not be replayed).
    BackfillFail {
        id: String,
        error: String,
        at_ms: i64,
    },
    /// The table's topic as a node found it: its broker-given id. The
    /// first is recorded; another is refused (the topic was deleted and
    /// created again: the offsets in the checkpoints mean nothing there).
    RecordTopic {
        topic: String,
        topic_id: String,
    },
    // New commands go last: bincode writes a variant's position, and the
    // Raft logs and snapshots of earlier releases hold the old positions
    // (`commands_keep_their_wire_positions`).
    /// Ends a drain (`lockstepctl nodes activate`): the node gets shards
    /// again.
    Activate {
        node: NodeId,
    },
    /// Gives up a graceful move that did not finish in time (the owner
    /// keeps the shard; the coordinator may plan the move again).
    CancelMove {
        shard: u32,
        expect_epoch: u64,
    },
}

/// A backfill job as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillJob {
    pub id: String,
    pub request: String,
    pub started_ms: i64,
    /// Done shards.
    pub parts: BTreeMap<u32, BackfillPart>,
    pub error: Option<String>,
    /// Set when every shard is done, or the job failed.
    pub finished_ms: Option<i64>,
}

/// Finished backfill jobs kept in the state (the oldest go first).
pub const KEEP_FINISHED_BACKFILLS: usize = 16;

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    /// Not applied, and why (a stale epoch, a sequence gap, …).
    Rejected(Rejection),
}

impl Response {
    pub fn into_result(self) -> Result<(), Rejection> {
        match self {
            Response::Done => Ok(()),
            Response::Rejected(why) => Err(why),
        }
    }
}

/// The pipeline the cluster runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineVersion {
    /// 0 until `Init`; each `SetPipeline` adds one.
    pub version: u64,
    pub sql: String,
    pub at_ms: i64,
}

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub table: String,
    /// 0 until `Init`.
    pub shards: u32,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub owners: Vec<ShardOwner>,
    /// The last committed checkpoint of each shard.
    pub checkpoints: Vec<Option<ShardCheckpoint>>,
    /// Each shard's segment manifest, shared between the states a member
    /// publishes (a command copies only the manifest it changes; encoded
    /// as a plain list).
    pub segments: Vec<std::sync::Arc<Vec<SegmentInfo>>>,
    /// The last cluster checkpoint epoch opened, and when.
    pub epoch: u64,
    pub epoch_ms: i64,
    /// Shared between published states like the manifests (the SQL may be
    /// a megabyte).
    pub pipeline: std::sync::Arc<PipelineVersion>,
    /// Backfill jobs, oldest first: running ones and the last finished.
    pub backfills: Vec<BackfillJob>,
    /// `(topic, its broker-given id)` as first recorded (`RecordTopic`).
    pub topic: Option<(String, String)>,
    /// Nodes an operator drained and has not activated again: a drained
    /// node that restarts, or comes back after it was marked down, is
    /// draining still.
    pub draining: std::collections::BTreeSet<NodeId>,
    /// The cluster's identity, the same on every member: derived from the
    /// new cluster's first `Init` or `Join`. Empty in a cluster founded by
    /// a release that did not keep it.
    pub cluster_id: String,
}

/// [`ClusterState`] as stored before the topic's identity was kept (the
/// Raft snapshots of earlier versions).
#[derive(Deserialize)]
pub struct ClusterStateV1 {
    table: String,
    shards: u32,
    nodes: BTreeMap<NodeId, NodeInfo>,
    owners: Vec<ShardOwner>,
    checkpoints: Vec<Option<ShardCheckpoint>>,
    segments: Vec<Vec<SegmentInfo>>,
    epoch: u64,
    epoch_ms: i64,
    pipeline: PipelineVersion,
    backfills: Vec<BackfillJob>,
}

/// [`ClusterState`] as stored before the cluster's id and the drain marks
/// were kept: bincode
/// writes a struct's fields one after another, so the nested V1 reads the
/// same bytes as its fields written inline.
#[derive(Deserialize)]
pub struct ClusterStateV2 {
    base: ClusterStateV1,
    topic: Option<(String, String)>,
}

impl From<ClusterStateV2> for ClusterState {
    fn from(s: ClusterStateV2) -> ClusterState {
        ClusterState {
            topic: s.topic,
            ..ClusterState::from(s.base)
        }
    }
}

impl From<ClusterStateV1> for ClusterState {
    fn from(s: ClusterStateV1) -> ClusterState {
        ClusterState {
            table: s.table,
            shards: s.shards,
            nodes: s.nodes,
            owners: s.owners,
            checkpoints: s.checkpoints,
            segments: s.segments.into_iter().map(std::sync::Arc::new).collect(),
            epoch: s.epoch,
            epoch_ms: s.epoch_ms,
            pipeline: std::sync::Arc::new(s.pipeline),
            backfills: s.backfills,
            topic: None,
            draining: Default::default(),
            cluster_id: String::new(),
        }
    }
}

impl ClusterState {
    pub fn backfill(&self, id: &str) -> Option<&BackfillJob> {
        self.backfills.iter().find(|j| j.id == id)
    }

    pub fn apply(&mut self, cmd: Command) -> Response {
        match self.try_apply(cmd) {
            Ok(()) => Response::Done,
            Err(why) => Response::Rejected(why),
        }
    }

    /// The shards a node owns.
    pub fn owned_by(&self, node: NodeId) -> Vec<u32> {
        (0..self.shards)
            .filter(|&s| self.owners[s as usize].node == Some(node))
            .collect()
    }

    /// The lowest epoch every shard's last checkpoint has reached: the
    /// cluster checkpoint that is complete.
    pub fn completed_epoch(&self) -> u64 {
        self.checkpoints
            .iter()
            .map(|c| c.as_ref().map_or(0, |c| c.epoch))
            .min()
            .unwrap_or(0)
    }
}

mod apply;
mod rejection;
pub use rejection::Rejection;

#[cfg(test)]
mod tests;
