//! The shard worker in a cluster: it restores from the checkpoint the
//! control plane committed, reads its Kafka partition, deduplicates retried
//! ingest by Idempotency-Key in its checkpointed state, and commits each
//! checkpoint through the control plane under its owner epoch.
//!
//! A commit whose outcome is unknown (the proposal's answer was lost) is
//! settled by restarting the shard from whatever the control plane holds:
//! the committed manifest is the truth, and the rows of an uncommitted
//! checkpoint are made again by replaying the partition from its offset.
use object_store::ObjectStore;

use super::checkpoint::Saved;
use super::mode::{Commits, Committer, Input, Manifest, SourceRows, Tenure};
use super::{Reply, ShardError, ShardMsg, ShardWorker};
use crate::cluster::ClusterCtx;
use crate::segments::SegmentInfo;
use futures::future::BoxFuture;
use futures::FutureExt;
use lockstep_cluster::state::SnapshotPart;
use lockstep_core::value::Row;
use ractor::ActorRef;
use seen::{Seen, SeenDelta};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cluster::spawn_fetcher;
use lockstep_cluster::state::{Command, Response};
use lockstep_log::kafka::KafkaRecord;
use std::sync::atomic::AtomicBool;

/// A snapshot chain this long is replaced by a full snapshot.
const MAX_CHAIN: usize = 8;

/// What a shard keeps in cluster mode.
pub struct ClusterShard {
    pub(super) ctx: Arc<ClusterCtx>,
    /// The owner epoch this actor holds the shard under.
    owner_epoch: u64,
    /// Seen Idempotency-Keys and producer-supplied event ids (tables with
    /// `event_id`), with the record time each was first seen
    /// (checkpointed incrementally).
    seen: Seen,
    /// What the checkpoint in flight saves of `seen`.
    seen_in_flight: Option<SeenDelta>,
    /// How many entries of `seen` the node's gauge counts for this shard
    /// (and the gauge, to take them back when the shard goes).
    seen_counted: (i64, Option<prometheus_client::metrics::gauge::Gauge>),
    /// The partition's records since the last checkpoint, framed as the
    /// archive stores them, and malformed ones.
    rows: SourceRows,
    /// The committed checkpoint's snapshot objects.
    chain: Vec<SnapshotPart>,
    waiters: HashMap<String, (String, Reply<String>)>,
    parser: lockstep_io::JsonEventParser,
    fetch_stop: Option<Arc<AtomicBool>>,
    pub(super) handing_off: bool,
    /// Latest record timestamp seen (expires idempotency keys).
    clock_ms: i64,
    /// The cluster epoch of the last committed checkpoint.
    pub(super) last_epoch: u64,
    /// The hand-off proposal is running (at most one).
    handoff_sent: bool,
}

impl Drop for ClusterShard {
    /// The fetcher stops with the shard's state, however the actor ended
    /// (ractor skips `post_stop` when a handler fails).
    fn drop(&mut self) {
        if let Some(stop) = self.fetch_stop.take() {
            stop.store(true, Ordering::Relaxed);
        }
        if let (n, Some(g)) = &self.seen_counted {
            g.dec_by(*n);
        }
    }
}

/// A state delta's slots as a snapshot object holds them.
fn snapshot_slots(delta: &crate::store::EncodedDelta) -> Vec<((u32, u32, u32), Vec<u8>)> {
    delta
        .slots
        .iter()
        .map(|(k, v)| ((k.view, k.group, k.slot), v.clone()))
        .collect()
}

impl ClusterShard {
    fn new(ctx: Arc<ClusterCtx>, owner_epoch: u64, table: &lockstep_core::Table) -> ClusterShard {
        ClusterShard {
            ctx,
            owner_epoch,
            seen: Seen::default(),
            seen_in_flight: None,
            seen_counted: (0, None),
            rows: SourceRows::default(),
            chain: Vec::new(),
            waiters: HashMap::new(),
            parser: lockstep_io::JsonEventParser::new(&table.schema),
            fetch_stop: None,
            handing_off: false,
            clock_ms: i64::MIN,
            last_epoch: 0,
            handoff_sent: false,
        }
    }

    /// Names a compaction's merged object: the owner epoch and a nonce.
    fn new_compaction_tag(&self) -> String {
        use std::hash::BuildHasher;
        let nonce = std::collections::hash_map::RandomState::new()
            .hash_one((std::time::SystemTime::now(), self.owner_epoch)) as u32;
        format!("e{}-c{nonce:08x}", self.owner_epoch)
    }

    /// Swaps compacted segments in the replicated manifest, under this
    /// owner's epoch.
    async fn swap_in_manifest(
        &self,
        shard: u32,
        remove: &[SegmentInfo],
        merged: &SegmentInfo,
    ) -> Result<(), ShardError> {
        let cmd = Command::SwapSegments {
            shard,
            owner: self.ctx.id,
            owner_epoch: self.owner_epoch,
            remove: remove.to_vec(),
            add: vec![merged.clone()],
        };
        match self.ctx.cp.propose(cmd).await {
            Ok(Response::Done) => Ok(()),
            Ok(Response::Rejected(why)) => Err(ShardError::Internal(format!("compaction of shard {shard} refused: {why}"))),
            Err(e) => Err(ShardError::Internal(format!(
                "compaction of shard {shard}: the control plane did not answer ({e}); the old segments stay"
            ))),
        }
    }

    fn job(&self, full: bool) -> ClusterJob {
        use std::hash::BuildHasher;
        // RandomState is seeded from the OS's randomness
        let nonce = std::collections::hash_map::RandomState::new()
            .hash_one((std::time::SystemTime::now(), self.owner_epoch)) as u32;
        ClusterJob {
            nonce,
            ctx: self.ctx.clone(),
            owner_epoch: self.owner_epoch,
            epoch: self.ctx.state().epoch,
            full,
            chain: self.chain.clone(),
            seen: self.seen.delta(full),
        }
    }

    /// Brings the node's `lockstep_dedup_entries` up to date with this
    /// shard's count.
    pub(super) fn count_seen(&mut self, w: &ShardWorker) {
        let n = self.seen.len() as i64;
        let (counted, gauge) = &mut self.seen_counted;
        gauge
            .get_or_insert_with(|| w.ctx.metrics.dedup_entries.clone())
            .inc_by(n - *counted);
        *counted = n;
    }

    /// A checkpoint committed with `chain`: snapshot objects it no longer
    /// lists (replaced by a full snapshot) are deleted a minute later.
    fn note_committed(
        &mut self,
        chain: Vec<SnapshotPart>,
        epoch: u64,
        objects: Arc<dyn ObjectStore>,
    ) {
        self.last_epoch = self.last_epoch.max(epoch);
        let dropped: Vec<SnapshotPart> = self
            .chain
            .iter()
            .filter(|p| !chain.contains(p))
            .cloned()
            .collect();
        self.chain = chain;
        if !dropped.is_empty() {
            // a minute later, as compacted-away segments: a node restoring
            // the shard from the manifest it read a moment ago reads them
            recovery::delete_later(objects, dropped.into_iter().map(|p| p.path).collect());
        }
    }
}

impl Input for ClusterShard {
    fn start_reading(&mut self, w: &ShardWorker, me: &ActorRef<ShardMsg>) {
        self.fetch_stop = Some(spawn_fetcher(
            w.ctx.clone(),
            self.ctx.clone(),
            w.shard,
            w.next_offset,
            me.clone(),
        ));
    }

    fn stop_reading(&mut self) {
        if let Some(stop) = self.fetch_stop.take() {
            stop.store(true, Ordering::Relaxed);
        }
    }

    fn on_events(
        &mut self,
        w: &mut ShardWorker,
        _first: u64,
        _rows: Vec<Row>,
        serve: Option<(String, Reply<String>)>,
    ) -> Result<(), ShardError> {
        if let Some((_, reply)) = serve {
            let _ = reply.send(Err(ShardError::Internal(
                "a cluster's shards read their partition, not the embedded log".into(),
            )));
        }
        Err(ShardError::Internal(format!(
            "shard {}: embedded-log events reached a shard that reads its partition",
            w.shard
        )))
    }

    /// Applies records of the partition: deduplicated by Idempotency-Key,
    /// decoded (lockstep's bincode rows, or JSON from other producers) and
    /// checked; malformed ones become dead letters of this checkpoint.
    fn on_records(
        &mut self,
        w: &mut ShardWorker,
        recs: Vec<KafkaRecord>,
    ) -> Result<(), ShardError> {
        self.read_records(w, recs)
    }

    fn serve_when_seen(
        &mut self,
        w: &ShardWorker,
        key: String,
        view: String,
        reply: Reply<String>,
    ) {
        if self.handing_off {
            let _ = reply.send(Err(ShardError::Unavailable(format!(
                "shard {} is moving to another node; retry",
                w.shard
            ))));
        } else {
            self.waiters.insert(key, (view, reply));
        }
    }

    fn catch_up(&mut self, _w: &mut ShardWorker) -> Result<(), ShardError> {
        Ok(()) // the fetcher delivers everything beyond the offset
    }

    fn log_end(&self, w: &ShardWorker) -> u64 {
        self.ctx.ends[w.shard as usize]
            .load(Ordering::Relaxed)
            .max(w.next_offset)
    }

    fn take_rows(&mut self, w: &ShardWorker) -> SourceRows {
        let ttl_ms = w.ctx.config.idempotency_ttl.as_millis() as i64;
        let horizon = self.clock_ms.saturating_sub(ttl_ms);
        let max = w.ctx.config.limits.max_dedup_entries as usize;
        let evicted = self.seen.expire(horizon, max);
        if evicted > 0 {
            tracing::warn!(
                shard = w.shard,
                "forgot {evicted} Idempotency-Keys and event ids before their idempotency_ttl: the shard keeps at most max_dedup_entries = {max}"
            );
            w.ctx.metrics.dedup_evicted.inc_by(evicted);
        }
        self.count_seen(w);
        self.waiters.retain(|_, (_, r)| !r.is_closed());
        std::mem::take(&mut self.rows)
    }

    fn put_back(&mut self, rows: SourceRows) {
        rows.prepend_to(&mut self.rows);
    }
}

impl Tenure for ClusterShard {
    /// The shard moves away: stop reading, take a last checkpoint; the
    /// hand-off follows when it is committed.
    fn begin_handoff(&mut self, w: &mut ShardWorker, me: &ActorRef<ShardMsg>) {
        if self.handing_off {
            return;
        }
        self.handing_off = true;
        for (_, (_, reply)) in self.waiters.drain() {
            let _ = reply.send(Err(ShardError::Unavailable(
                "the shard is moving to another node; the event was ingested, its features will be in its training row"
                    .into(),
            )));
        }
        self.stop_reading();
        tracing::info!(shard = w.shard, "handing off: last checkpoint");
        w.start_checkpoint(self, me, None);
        if !w.in_flight {
            self.hand_off(w, me); // nothing to write
        }
    }

    fn check_serving(&self, w: &ShardWorker) -> Result<(), ShardError> {
        if self.handing_off {
            return Err(ShardError::Unavailable(format!(
                "shard {} is moving to another node; retry",
                w.shard
            )));
        }
        Ok(())
    }

    fn after_checkpoint(&mut self, w: &mut ShardWorker, me: &ActorRef<ShardMsg>) {
        // the last checkpoint of a move is committed (or there was nothing
        // left to write): hand off
        if self.handing_off && !w.in_flight {
            self.hand_off(w, me);
        }
    }
}

impl Commits for ClusterShard {
    fn pending(&self) -> bool {
        // an epoch opened since the last commit: even an unchanged shard
        // commits, so the epoch completes
        !self.rows.dead.is_empty() || self.ctx.state().epoch > self.last_epoch
    }

    fn wants_full_snapshot(&self) -> bool {
        self.chain.is_empty() || self.chain.len() >= MAX_CHAIN
    }

    fn committer(&mut self, full: bool) -> Box<dyn Committer> {
        let job = self.job(full);
        self.seen_in_flight = Some(job.seen.clone());
        Box::new(job)
    }

    fn committed(&mut self, w: &ShardWorker, saved: &Saved) {
        if let Some(d) = self.seen_in_flight.take() {
            self.seen.saved(&d);
        }
        self.note_committed(
            saved.chain.clone().unwrap_or_default(),
            saved.epoch,
            w.ctx.objects.clone(),
        );
    }
}

impl Manifest for ClusterShard {
    fn compaction_tag(&self) -> Option<String> {
        Some(self.new_compaction_tag())
    }

    fn swap_segments<'a>(
        &'a self,
        w: &'a ShardWorker,
        remove: &'a [SegmentInfo],
        merged: &'a SegmentInfo,
    ) -> BoxFuture<'a, Result<(), ShardError>> {
        self.swap_in_manifest(w.shard, remove, merged).boxed()
    }

    fn deletes_later(&self) -> bool {
        true
    }
}

mod commit;
mod handoff;
mod input;
mod recovery;
mod seen;

pub use commit::ClusterJob;
