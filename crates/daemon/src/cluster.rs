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

use crate::clock::now_ms;
use crate::node::NodeCtx;
use crate::shard::ShardMsg;
use crate::store::{decode_slot, StoreError};
use lockstep_cluster::decide::{self, LocalAction};
use lockstep_cluster::state::{
    ClusterState, Command, NodeId, Rejection, Response, ShardCheckpoint, SnapshotPart,
};
use lockstep_cluster::ControlPlane;
use lockstep_core::window::Entry;
use lockstep_core::{ShardMeta, SlotKey};
use lockstep_log::kafka::{KafkaLog, OutRecord};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a cluster node shares beyond [`NodeCtx`].
pub struct ClusterCtx {
    pub cp: Arc<ControlPlane>,
    pub kafka: KafkaLog,
    pub id: NodeId,
    /// Each owned shard's partition end, as its reader last saw it.
    pub ends: Vec<AtomicU64>,
    pub failure_timeout: Duration,
    /// Forwarding client (other nodes' public API).
    pub agent: ureq::Agent,
}

impl ClusterCtx {
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
}

impl IdemEntry {
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

/// One snapshot object: a checkpoint's state delta (or the whole state,
/// `replace`), and the shard's seen idempotency keys.
#[derive(Serialize, Deserialize)]
pub struct SnapshotData {
    pub replace: bool,
    pub meta: ShardMeta,
    /// `((view, group, slot), encoded slot)`.
    pub slots: Vec<((u32, u32, u32), Vec<u8>)>,
    pub idem: Vec<(String, IdemEntry)>,
    /// Seen producer-supplied event ids (hashed) and when first seen.
    pub event_ids: Vec<(u128, i64)>,
}

/// A shard's state as restored from its snapshot objects.
pub struct Restored {
    pub meta: ShardMeta,
    pub slots: Vec<(SlotKey, Entry)>,
    /// The encoded slots, for the local cache.
    pub encoded: Vec<(SlotKey, Vec<u8>)>,
    pub idem: HashMap<String, IdemEntry>,
    pub event_ids: lockstep_core::dedup::EventIds,
}

fn bincode_cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// `ext` carries the data directory's id, the owner epoch and a nonce.
pub fn snapshot_path(table: &str, shard: u32, seq: u64, ext: &str) -> String {
    format!("snapshots/{table}/shard={shard:03}/{seq:020}.{ext}")
}

/// A snapshot object that cannot be written or read back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error("writing snapshot {path}: {message}")]
    Write { path: String, message: String },
    #[error("reading snapshot {path}: {message}")]
    Read { path: String, message: String },
    #[error("snapshot {path} is damaged: CRC-32 {found:08x}, the manifest says {expected:08x}")]
    Damaged {
        path: String,
        found: u32,
        expected: u32,
    },
}

impl From<SnapshotError> for crate::shard::ShardError {
    fn from(e: SnapshotError) -> Self {
        crate::shard::ShardError::internal(e)
    }
}

/// Writes one snapshot object.
pub async fn put_snapshot(
    store: &dyn ObjectStore,
    path: String,
    data: &SnapshotData,
) -> Result<SnapshotPart, SnapshotError> {
    let bytes =
        bincode::serde::encode_to_vec(data, bincode_cfg()).map_err(|e| SnapshotError::Write {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let part = SnapshotPart {
        crc32: crc32fast::hash(&bytes),
        bytes: bytes.len() as u64,
        path,
    };
    store
        .put(
            &ObjPath::from(part.path.as_str()),
            PutPayload::from(bytes::Bytes::from(bytes)),
        )
        .await
        .map_err(|e| SnapshotError::Write {
            path: part.path.clone(),
            message: e.to_string(),
        })?;
    Ok(part)
}

/// Reads a checkpoint's snapshot objects in order and folds them into the
/// state they describe.
pub async fn restore_snapshot(
    store: &dyn ObjectStore,
    parts: &[SnapshotPart],
) -> Result<Option<Restored>, SnapshotError> {
    let mut slots: BTreeMap<(u32, u32, u32), Vec<u8>> = BTreeMap::new();
    let mut meta = None;
    let mut idem = HashMap::new();
    let mut event_ids = lockstep_core::dedup::EventIds::new();
    for p in parts {
        let read = |e: &dyn std::fmt::Display| SnapshotError::Read {
            path: p.path.clone(),
            message: e.to_string(),
        };
        let bytes = store
            .get(&ObjPath::from(p.path.as_str()))
            .await
            .map_err(|e| read(&e))?
            .bytes()
            .await
            .map_err(|e| read(&e))?;
        let found = crc32fast::hash(&bytes);
        if found != p.crc32 {
            return Err(SnapshotError::Damaged {
                path: p.path.clone(),
                found,
                expected: p.crc32,
            });
        }
        let (d, _): (SnapshotData, _) =
            bincode::serde::decode_from_slice(&bytes, bincode_cfg()).map_err(|e| read(&e))?;
        if d.replace {
            slots.clear();
        }
        slots.extend(d.slots);
        meta = Some(d.meta);
        idem = d.idem.into_iter().collect();
        event_ids = d.event_ids.into_iter().collect();
    }
    let Some(meta) = meta else {
        return Ok(None);
    };
    let mut decoded = Vec::with_capacity(slots.len());
    let mut encoded = Vec::with_capacity(slots.len());
    for ((view, group, slot), b) in slots {
        let key = SlotKey { view, group, slot };
        let slot = decode_slot(&b).map_err(|e: StoreError| SnapshotError::Read {
            path: format!("slot {view}/{group}/{slot}"),
            message: e.to_string(),
        })?;
        decoded.push((key, slot));
        encoded.push((key, b));
    }
    Ok(Some(Restored {
        meta,
        slots: decoded,
        encoded,
        idem,
        event_ids,
    }))
}

/// A digest of a checkpoint's state: CRC-32 over its snapshot parts' CRCs
/// and the offset.
pub fn digest(parts: &[SnapshotPart], offset: u64) -> String {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(&p.crc32.to_le_bytes());
    }
    h.update(&offset.to_le_bytes());
    format!("{:08x}", h.finalize())
}

/// Commits a checkpoint through the control plane. `Err(Fenced)` means the
/// shard is no longer this node's.
pub async fn commit_checkpoint(
    cl: &ClusterCtx,
    checkpoint: ShardCheckpoint,
    add_segments: Vec<crate::segments::SegmentInfo>,
    remove_segments: Vec<crate::segments::SegmentInfo>,
) -> Result<(), CommitError> {
    match cl
        .cp
        .propose(Command::Commit {
            checkpoint,
            add_segments,
            remove_segments,
        })
        .await
    {
        Ok(Response::Done) => Ok(()),
        Ok(Response::Rejected(r @ Rejection::Fenced { .. })) => Err(CommitError::Fenced(r)),
        Ok(Response::Rejected(r)) => Err(CommitError::Refused(r)),
        Err(e) => Err(CommitError::Unanswered(e.to_string())),
    }
}

/// Why a checkpoint did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another node owns the shard now (or under a newer owner epoch).
    #[error("{0}")]
    Fenced(Rejection),
    /// The state machine refused it for another reason (a sequence gap, a
    /// segment not in the manifest).
    #[error("{0}")]
    Refused(Rejection),
    /// The proposal's answer was lost: it may or may not have committed.
    #[error("the control plane did not answer: {0}")]
    Unanswered(String),
}

/// Reads a shard's partition from `from` and hands the records to its
/// actor in order, at most `MAX_IN_FLIGHT` ahead of what it processed.
/// Stops when `stop` is set or the actor is gone.
pub fn spawn_fetcher(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    shard: u32,
    from: u64,
    actor: ActorRef<ShardMsg>,
) -> Arc<AtomicBool> {
    const MAX_IN_FLIGHT: u64 = 50_000;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let me = actor.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("fetch-{shard}"))
        .spawn(move || {
            let mut reader = None;
            let mut position = from;
            while !flag.load(Ordering::Relaxed) {
                let processed = ctx.processed[shard as usize].load(Ordering::Relaxed);
                if position.saturating_sub(processed) > MAX_IN_FLIGHT {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let r = match reader.as_mut() {
                    Some(r) => r,
                    None => match cl.kafka.reader(shard, position) {
                        Ok(r) => reader.insert(r),
                        Err(e) => {
                            tracing::warn!(shard, "opening the partition reader: {e}; retrying");
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    },
                };
                match r.poll(10_000, Duration::from_millis(100)) {
                    Ok(recs) => {
                        if let Some(end) = r.cached_end() {
                            cl.ends[shard as usize].store(end, Ordering::Relaxed);
                        }
                        if let Some(last) = recs.last() {
                            position = last.offset + 1;
                            if actor.send_message(ShardMsg::Records(recs)).is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(shard, "reading the partition: {e}; reopening");
                        reader = None;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(shard, "cannot start the partition reader: {e}");
        let _ = me.send_message(ShardMsg::Fail);
    }
    stop
}

/// Produces validated events to the topic (bincode rows, keyed by the
/// table key); returns once all are acknowledged.
pub async fn produce(
    ctx: &NodeCtx,
    cl: &ClusterCtx,
    idempotency_key: Option<&str>,
    events: &[(u32, lockstep_core::value::Row)],
) -> Result<Vec<u64>, lockstep_log::kafka::KafkaLogError> {
    let mut keys = Vec::with_capacity(events.len());
    let mut values = Vec::with_capacity(events.len());
    for (_, row) in events {
        keys.push(row[ctx.table.key].to_string());
        values.push(lockstep_io::raw::encode_event(row));
    }
    let recs: Vec<OutRecord> = events
        .iter()
        .enumerate()
        .map(|(i, (shard, _))| OutRecord {
            shard: *shard,
            key: keys[i].as_bytes(),
            value: &values[i],
            bincode: true,
            idempotency: idempotency_key.map(|k| (k, i as u32)),
        })
        .collect();
    cl.kafka.produce(&recs).await
}

/// Starts the tasks of a cluster node: the ownership watcher (starts and
/// stops shard actors as the shard map changes, hands shards off, takes
/// checkpoints when epochs open) and the coordinator (acts while this node
/// leads).
pub fn start_tasks(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    supervisor: ActorRef<crate::shard::SupMsg>,
) {
    tokio::spawn(ownership(ctx.clone(), cl.clone(), supervisor));
    tokio::spawn(coordinator(ctx, cl));
}

/// Keeps the local shard actors in line with the replicated shard map.
async fn ownership(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    supervisor: ActorRef<crate::shard::SupMsg>,
) {
    use crate::shard::SupMsg;
    let mut rx = cl.cp.subscribe();
    let mut epoch_seen = rx.borrow().epoch;
    // cut off from the coordinator (no epochs arrive), a node still
    // checkpoints on its own: a partitioned owner that was replaced then
    // finds out it is fenced, and stops
    let mut epoch_at = Instant::now();
    let own_account = ctx.config.checkpoint_interval * 3;
    // a pipeline version this node cannot run (logged once)
    let mut refused = 0;
    let backfills = Default::default();
    let backfill_slots = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {},
        }
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
        let st = rx.borrow_and_update().clone();
        if st.shards != ctx.table.shards {
            continue; // not initialized yet
        }
        if st.pipeline.version > ctx.pipeline().version && st.pipeline.version != refused {
            if let Err(e) = follow_pipeline(&ctx, &st) {
                tracing::error!("{e}; this node's shards wait for a pipeline it can run");
                refused = st.pipeline.version;
                // they must not commit state for the old views meanwhile:
                // restarted, they wait (their recovery sees the version)
                for s in 0..ctx.table.shards {
                    if let Some(a) = ctx.shard(s) {
                        let _ = a.send_message(ShardMsg::Stop);
                    }
                }
            }
        }
        let held: Vec<u64> = ctx.held.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        for action in decide::reconcile(&st, cl.id, &held) {
            match action {
                LocalAction::Start { shard, epoch } => {
                    ctx.held[shard as usize].store(epoch, Ordering::Relaxed);
                    let _ = supervisor.send_message(SupMsg::Start(shard));
                }
                LocalAction::Release { shard } => {
                    ctx.held[shard as usize].store(0, Ordering::Relaxed);
                    let _ = supervisor.send_message(SupMsg::Release(shard));
                }
                LocalAction::Handoff { shard } => {
                    if let Some(actor) = ctx.shard(shard) {
                        let _ = actor.send_message(ShardMsg::Handoff);
                    }
                }
            }
        }
        crate::backfill::run_cluster_jobs(&ctx, &cl, &st, &backfills, &backfill_slots);
        let stale = epoch_at.elapsed() >= own_account;
        if st.epoch != epoch_seen || stale {
            epoch_seen = st.epoch;
            epoch_at = Instant::now();
            for s in 0..st.shards {
                if let Some(a) = ctx.shard(s) {
                    let _ = a.send_message(ShardMsg::Checkpoint { reply: None });
                }
            }
        }
    }
}

/// Switches the node to the cluster's pipeline (`views apply` on any
/// node): the shards it holds restart, and each rebuilds its state for the
/// new views from its archive as it recovers.
fn follow_pipeline(
    ctx: &NodeCtx,
    st: &ClusterState,
) -> Result<(), crate::pipeline::ClusterPipelineError> {
    let Some(new) = crate::pipeline::cluster_pipeline(&st.pipeline, &ctx.table)? else {
        return Ok(());
    };
    let old = ctx.pipeline();
    let changed = new.fingerprint() != old.fingerprint();
    tracing::info!(
        version = new.version,
        views = ?new.view_names,
        changed,
        "the cluster's pipeline changed"
    );
    ctx.set_pipeline(Arc::new(new));
    if changed {
        // each shard rebuilds in place; the apply's caller waits on the
        // replicated checkpoints, which record the pipeline each is for
        for s in 0..ctx.table.shards {
            if let Some(a) = ctx.shard(s) {
                let _ = a.send_message(ShardMsg::Swap { reply: None });
            }
        }
    }
    Ok(())
}

/// The coordinator's loop; it acts only while this node is the leader.
/// What it does each tick is decided by the pure functions of
/// [`lockstep_cluster::decide`]; this carries the decisions out.
async fn coordinator(ctx: Arc<NodeCtx>, cl: Arc<ClusterCtx>) {
    let live = Arc::new(std::sync::Mutex::new(decide::Liveness::new(
        cl.failure_timeout,
    )));
    // the heartbeat, on its own timer: the loop below waits on proposals,
    // and a slow commit must not delay the pings (the members' serving
    // leases hang on them)
    tokio::spawn(heartbeat(ctx.clone(), cl.clone(), live.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
        if !cl.cp.is_leader() {
            let leader = cl.cp.leader().map(|(l, _)| l).filter(|l| *l != cl.id);
            live.lock().expect("liveness").follow(leader);
            continue;
        }
        let st = cl.state();
        if st.shards == 0 {
            let _ = cl
                .cp
                .propose(Command::Init {
                    table: ctx.table.name.clone(),
                    shards: ctx.table.shards,
                    sql: ctx.pipeline().sql.clone(),
                    at_ms: now_ms(),
                })
                .await;
            continue;
        }
        let now = Instant::now();
        let round = live
            .lock()
            .expect("liveness")
            .lead(&st, cl.id, now, now_ms());
        if let Some(t) = round.lease {
            cl.cp.touch_at(t);
        }
        for cmd in round.commands {
            match &cmd {
                Command::MarkDown { node } => tracing::warn!(
                    node,
                    "no heartbeat within {:?}: marking it down",
                    cl.failure_timeout
                ),
                Command::Join { node, .. } => {
                    tracing::info!(node, "answers again: marking it active")
                }
                _ => {}
            }
            let done = matches!(cl.cp.propose(cmd.clone()).await, Ok(Response::Done));
            if let (true, Command::MarkDown { node }) = (done, &cmd) {
                live.lock().expect("liveness").marked_down(*node, now);
            }
        }
        let st = cl.state();
        for cmd in decide::plan(&st, 2) {
            match cl.cp.propose(cmd.clone()).await {
                Ok(Response::Done) => tracing::info!(?cmd, "rebalance"),
                Ok(Response::Rejected(w)) => tracing::debug!(?cmd, "rebalance step refused: {w}"),
                Err(e) => tracing::debug!(?cmd, "rebalance step failed: {e}"),
            }
        }
        let interval = ctx.config.checkpoint_interval.as_millis() as i64;
        if let Some(cmd) = decide::epoch_due(&st, now_ms(), interval) {
            let _ = cl.cp.propose(cmd).await;
        }
    }
}

/// Pings the members every 500 ms while this node leads, and reports the
/// answers (with when each ping was sent) to the liveness tracker.
async fn heartbeat(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    live: Arc<std::sync::Mutex<decide::Liveness>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
        if !cl.cp.is_leader() {
            continue;
        }
        for (&n, info) in &cl.state().nodes {
            if n == cl.id {
                continue;
            }
            let (cp, live, addr) = (cl.cp.clone(), live.clone(), info.addr.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                if cp.ping(&addr).await {
                    live.lock()
                        .expect("liveness")
                        .ping_answered(n, sent, Instant::now());
                }
            });
        }
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
