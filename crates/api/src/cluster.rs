//! `GET /v1/cluster` and the membership endpoints.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Active,
    Draining,
    Down,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberInfo {
    pub id: u64,
    pub addr: String,
    pub state: MemberState,
    /// A Raft voter (else a learner).
    pub voter: bool,
    /// Shards it owns.
    pub shards: usize,
}

/// A shard's last committed checkpoint, as the control plane holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardCheckpointInfo {
    pub seq: u64,
    pub offset: u64,
    pub epoch: u64,
    pub owner: u64,
    pub owner_epoch: u64,
    pub digest: String,
    pub snapshot_objects: usize,
    /// RFC 3339.
    pub at: String,
}

/// One shard of the shard map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardEntry {
    pub shard: u32,
    pub owner: Option<u64>,
    pub owner_epoch: u64,
    pub moving_to: Option<u64>,
    pub checkpoint: Option<ShardCheckpointInfo>,
    /// Committed segments.
    pub segments: usize,
    /// Only from the shard's owner: the next offset it processes and its
    /// partition's end.
    pub processed: Option<u64>,
    pub end: Option<u64>,
    /// `end - processed`, where both are known (filled in by clients that
    /// ask every owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// `GET /v1/cluster` (404 on a node running alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// The cluster's identity: the same on every member (two clusters
    /// started apart never share it). Empty in a cluster founded by an
    /// earlier release, and from a node of one.
    #[serde(default)]
    pub cluster_id: String,
    /// The answering member.
    pub node: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub table: String,
    pub shard_count: u32,
    /// The last checkpoint epoch opened, and the last complete on every shard.
    pub epoch: u64,
    pub completed_epoch: u64,
    pub pipeline_version: u64,
    pub nodes: Vec<MemberInfo>,
    pub shards: Vec<ShardEntry>,
}

/// `POST /v1/cluster/nodes/{node}/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrainReply {
    pub node: u64,
    pub state: MemberState,
    pub shards_to_move: usize,
}

/// `POST /v1/cluster/nodes/{node}/activate`: a drain ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivateReply {
    pub node: u64,
    /// `active`, or `down` for a node that is not running (it is active
    /// when it comes back).
    pub state: MemberState,
}

/// `POST /v1/cluster/nodes/{node}/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoveReply {
    pub node: u64,
    pub removed: bool,
}

/// `POST /v1/cluster/rebalance`: the moves the coordinator makes now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RebalanceReply {
    pub planned: Vec<String>,
}
