//! Cluster mode: many lockstepd processes over one Kafka topic, agreeing
//! through the control plane (`lockstep-cluster`, openraft).
//!
//! - **Ingest** on any node produces to the table's topic (partition = shard)
//!   and answers once the broker acknowledged.
//! - **Shards** run on their owners only: an owner restores the shard's last
//!   committed checkpoint (from its local cache when it took that checkpoint
//!   itself, else from the snapshot objects) and reads its partition from
//!   the checkpoint's offset with a [`fetcher`](spawn_fetcher).
//! - **Checkpoints**: when the coordinator opens an epoch every owner writes
//!   its segments and a snapshot part to the object store and commits the
//!   manifest through Raft with its owner epoch; a stale epoch is refused.
//! - **The coordinator** (the Raft leader) pings the nodes, declares silent
//!   ones down, reassigns their shards, drains, balances and opens epochs.
use lockstep_cluster::state::{ClusterState, NodeId};
use lockstep_cluster::ControlPlane;
use lockstep_log::kafka::KafkaLog;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

mod kafka;
mod snapshot;
mod tasks;

pub use kafka::{produce, spawn_fetcher};
pub use snapshot::{
    commit_checkpoint, digest, put_snapshot, restore_snapshot, snapshot_path, CommitError,
    DedupPart, Restored, SnapshotData, SnapshotError,
};
pub use tasks::start_tasks;

/// What a cluster node shares beyond [`NodeCtx`].
pub struct ClusterCtx {
    pub cp: Arc<ControlPlane>,
    pub kafka: KafkaLog,
    pub id: NodeId,
    /// Each owned shard's partition end, as its reader last saw it.
    pub ends: Vec<AtomicU64>,
    pub failure_timeout: Duration,
    /// `cluster.voter_replace_after`.
    pub voter_replace_after: Duration,
    /// `cluster.move_timeout`.
    pub move_timeout: Duration,
    /// Forwarding client (other nodes' public API): async, its own pool,
    /// over TLS when the cluster has it.
    pub http: reqwest::Client,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `cluster.on_log_gap = "skip"`: offset gaps in the topic are skipped
    /// (counted) instead of failing the shard.
    pub skip_log_gaps: bool,
    /// Why the topic is not the one the cluster recorded (its id differs:
    /// it was deleted and created again), found at start: every shard this
    /// node takes stays failed instead of reading it.
    pub topic_mismatch: Option<String>,
    /// The replicated state's encoded size and when it was measured
    /// (`/metrics` measures it at most every 10 s: it walks the state).
    pub state_bytes: std::sync::Mutex<Option<(std::time::Instant, usize)>>,
}

/// An answer from another node's public API.
pub struct Forwarded {
    pub status: u16,
    pub body: bytes::Bytes,
    pub retry_after: Option<String>,
    pub replayed: bool,
}

impl ClusterCtx {
    /// Calls another node's public API with this node's admin token:
    /// `GET` without a body, `POST` with one.
    pub async fn call(
        &self,
        addr: &str,
        path: &str,
        token: &str,
        body: Option<bytes::Bytes>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Forwarded, String> {
        let url = format!("{}://{addr}{path}", self.scheme);
        let mut req = match body {
            Some(b) => self.http.post(url).body(b),
            None => self.http.get(url),
        }
        .bearer_auth(token)
        .timeout(timeout);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| lockstep_cluster::network::error_chain(&e))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let replayed = header(lockstep_api::IDEMPOTENT_REPLAYED).is_some();
        let body = resp
            .bytes()
            .await
            .map_err(|e| lockstep_cluster::network::error_chain(&e))?;
        Ok(Forwarded {
            status,
            body,
            retry_after,
            replayed,
        })
    }

    /// How long a node serves its shards without word from the majority's
    /// side: shorter than the failure timeout, so a node cut off stops
    /// serving before its shards can be given to others.
    pub fn lease(&self) -> Duration {
        self.failure_timeout.mul_f64(0.6)
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.cp.state()
    }

    /// The API address of a member.
    pub fn addr_of(&self, node: NodeId) -> Option<String> {
        self.state().nodes.get(&node).map(|n| n.addr.clone())
    }
}

/// Seen Idempotency-Keys of one shard: which indices of the request were
/// applied (a retry may carry the part that was lost).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdemEntry {
    /// Record timestamp of the first sighting (for expiry).
    pub at_ms: i64,
    /// Sorted, disjoint `[lo, hi)` ranges of request indices seen.
    pub ranges: Vec<(u32, u32)>,
    /// The hash of the request's body (records produced before the hash
    /// travelled with them have none, and match any body).
    pub body_hash: Option<u64>,
}

impl IdemEntry {
    /// Whether a record with `hash` belongs to another request that reused
    /// this key (both hashes known and different).
    pub fn reused_by(&self, hash: Option<u64>) -> bool {
        matches!((self.body_hash, hash), (Some(a), Some(b)) if a != b)
    }

    pub fn contains(&self, i: u32) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= i && i < hi)
    }

    /// Records `i`; false if it was there.
    pub fn insert(&mut self, i: u32) -> bool {
        if self.contains(i) {
            return false;
        }
        self.ranges.push((i, i + 1));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.ranges.len());
        for &(lo, hi) in &self.ranges {
            match merged.last_mut() {
                Some(last) if last.1 >= lo => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.ranges = merged;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_ranges_merge_and_find() {
        let mut e = IdemEntry::default();
        for i in [0, 1, 2, 5, 4, 3, 9] {
            assert!(e.insert(i));
        }
        assert!(!e.insert(4));
        assert_eq!(e.ranges, vec![(0, 6), (9, 10)]);
        assert!(e.contains(9) && !e.contains(7));
    }
}
