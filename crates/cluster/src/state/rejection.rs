//! Why the state machine refused a command, as a type: callers decide on
//! the kind (a fenced owner stops its shard; a stale plan is planned
//! again), never on message text.

use super::{NodeId, NodeState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("a table needs at least one shard")]
    NoShards,
    #[error("the cluster runs table `{table}` with {shards} shards, not `{asked}` with {asked_shards}: the shard count is fixed")]
    OtherTable {
        table: String,
        shards: u32,
        asked: String,
        asked_shards: u32,
    },
    #[error("the cluster is not initialized yet")]
    NotInitialized,
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    #[error("node {0} is not active")]
    NotActive(NodeId),
    #[error("node {node} is {state:?}, not down: stop it first (drain it before, if it owns shards), and remove it once the cluster has marked it down")]
    NotDown { node: NodeId, state: NodeState },
    #[error("the leader cannot remove itself: stop it, and remove it from the next leader")]
    LeaderRemovesItself,
    #[error("no shard {shard}: the table has {shards} shards")]
    NoSuchShard { shard: u32, shards: u32 },
    /// The owner epoch check every write by an owner goes through: the
    /// writer is not (or no longer) the shard's owner.
    #[error("shard {shard}: node {node} with owner epoch {epoch} is not its owner (owner {owner:?}, epoch {owner_epoch}): fenced")]
    Fenced {
        shard: u32,
        node: NodeId,
        epoch: u64,
        owner: Option<NodeId>,
        owner_epoch: u64,
    },
    #[error("shard {shard}: owner epoch is {epoch}, not {expected}: the plan is stale")]
    StalePlan {
        shard: u32,
        epoch: u64,
        expected: u64,
    },
    #[error("shard {shard} is already on node {node}")]
    AlreadyOwned { shard: u32, node: NodeId },
    #[error("shard {0} has no owner to hand it off")]
    NoOwner(u32),
    #[error("shard {0} is not moving")]
    NotMoving(u32),
    #[error("shard {shard}: checkpoint {seq} does not follow the committed {committed}")]
    SequenceGap {
        shard: u32,
        seq: u64,
        committed: u64,
    },
    #[error("shard {shard}: checkpoint offset {offset} is behind the committed {committed}")]
    OffsetBehind {
        shard: u32,
        offset: u64,
        committed: u64,
    },
    #[error("shard {shard}: segment {path} belongs to shard {belongs_to}")]
    ForeignSegment {
        shard: u32,
        path: String,
        belongs_to: u32,
    },
    #[error("shard {shard}: segment {path} is not in the manifest")]
    NotInManifest { shard: u32, path: String },
    #[error("epoch {epoch} is not after {current}")]
    StaleEpoch { epoch: u64, current: u64 },
    #[error("the cluster's pipeline is at version {version}, not {expected}: another `views apply` came first; look at the views and apply again")]
    PipelineMoved { version: u64, expected: u64 },
    #[error("backfill job {0} exists")]
    BackfillExists(String),
    #[error("no backfill job {0}")]
    NoBackfill(String),
    #[error("backfill job {0} has finished")]
    BackfillFinished(String),
    #[error("shard {shard} of backfill job {id} is done already")]
    PartDone { id: String, shard: u32 },
    #[error("topic `{topic}` is not the one this cluster read: its id is {found}, the cluster recorded {recorded}; it was deleted and created again, and the offsets the checkpoints hold mean nothing in it (see docs/operations.md, \"When the log lost records\")")]
    TopicRecreated {
        topic: String,
        recorded: String,
        found: String,
    },
}
