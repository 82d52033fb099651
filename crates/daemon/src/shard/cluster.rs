//! The shard worker in a cluster: it restores from the checkpoint the
//! control plane committed, reads its Kafka partition, deduplicates retried
//! ingest by Idempotency-Key in its checkpointed state, and commits each
//! checkpoint through the control plane under its owner epoch.
//!
//! A commit whose outcome is unknown (the proposal's answer was lost) is
//! settled by restarting the shard from whatever the control plane holds:
//! the committed manifest is the truth, and the rows of an uncommitted
//! checkpoint are made again by replaying the partition from its offset.

use super::checkpoint::{CheckpointJob, Saved};
use super::mode::{Committer, ShardMode, SourceRows};
use super::{err, Reply, ShardError, ShardMsg, ShardWorker, StopReason};
use crate::cluster::{ClusterCtx, IdemEntry};
use crate::node::NodeCtx;
use crate::segments::{self, put_segment, shard_prefix, SegmentInfo};
use crate::store::{CheckpointInfo, Commit};
use futures::future::BoxFuture;
use futures::FutureExt;
use lockstep_cluster::state::SnapshotPart;
use lockstep_core::value::Row;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::clock::now_ms;
use crate::cluster::{
    commit_checkpoint, digest, put_snapshot, restore_snapshot, snapshot_path, spawn_fetcher,
    CommitError, SnapshotData,
};
use crate::store::Loaded;
use lockstep_cluster::state::{Command, Response, ShardCheckpoint};
use lockstep_log::kafka::KafkaRecord;
use std::sync::atomic::AtomicBool;

/// A snapshot chain this long is replaced by a full snapshot.
const MAX_CHAIN: usize = 8;

/// What a shard keeps in cluster mode.
pub struct ClusterShard {
    pub(super) ctx: Arc<ClusterCtx>,
    /// The owner epoch this actor holds the shard under.
    owner_epoch: u64,
    /// Seen Idempotency-Keys (checkpointed with the state).
    idem: HashMap<String, IdemEntry>,
    /// Seen producer-supplied event ids (tables with `event_id`), hashed,
    /// with the record time they were first seen (checkpointed).
    event_ids: HashMap<u128, i64>,
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
    }
}

/// A checkpoint's cluster part, computed on the actor.
pub struct ClusterJob {
    ctx: Arc<ClusterCtx>,
    /// Unique per attempt, in its object names.
    nonce: u32,
    owner_epoch: u64,
    epoch: u64,
    full: bool,
    chain: Vec<SnapshotPart>,
    idem: Vec<(String, IdemEntry)>,
    event_ids: Vec<(u128, i64)>,
}

/// What the local cache keeps beside the state: seen Idempotency-Keys and
/// event ids.
type Dedup = (Vec<(String, IdemEntry)>, Vec<(u128, i64)>);

/// A state delta's slots as a snapshot object holds them.
fn snapshot_slots(delta: &crate::store::EncodedDelta) -> Vec<((u32, u32, u32), Vec<u8>)> {
    delta
        .slots
        .iter()
        .map(|(k, v)| ((k.view, k.group, k.slot), v.clone()))
        .collect()
}

fn encode_dedup(idem: &[(String, IdemEntry)], ids: &[(u128, i64)]) -> Vec<u8> {
    bincode::serde::encode_to_vec((idem, ids), bincode::config::standard()).expect("keys encode")
}

/// Seen Idempotency-Keys and event ids, as a shard holds them.
type Seen = (HashMap<String, IdemEntry>, HashMap<u128, i64>);

fn decode_dedup(b: &[u8]) -> Result<Seen, ShardError> {
    let ((idem, ids), _): (Dedup, _) =
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .map_err(|e| ShardError::Internal(format!("stored idempotency keys: {e}")))?;
    Ok((idem.into_iter().collect(), ids.into_iter().collect()))
}

impl ClusterShard {
    fn new(ctx: Arc<ClusterCtx>, owner_epoch: u64, table: &lockstep_core::Table) -> ClusterShard {
        ClusterShard {
            ctx,
            owner_epoch,
            idem: HashMap::new(),
            event_ids: HashMap::new(),
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
            idem: self
                .idem
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            event_ids: self.event_ids.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }

    /// A checkpoint committed with `chain`: snapshot objects it no longer
    /// lists (replaced by a full snapshot) are deleted.
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
            tokio::spawn(async move {
                for p in dropped {
                    let path = object_store::path::Path::from(p.path.as_str());
                    let _ = object_store::ObjectStoreExt::delete(objects.as_ref(), &path).await;
                }
            });
        }
    }
}

use object_store::ObjectStore;

impl ClusterJob {
    fn tag(&self) -> String {
        format!("e{}-{:08x}", self.owner_epoch, self.nonce)
    }

    /// The archive segment of the records since the last checkpoint.
    async fn raw_segment(&self, job: &CheckpointJob) -> Result<Option<SegmentInfo>, ShardError> {
        let (from, to) = (job.from, job.to);
        let u = &job.unsaved.source;
        // a slice whose records were all duplicates or dead letters is
        // archived too, empty: the archive covers every offset, so a replay
        // can check it has no gap
        if to == from {
            return Ok(None);
        }
        let ctx = &job.ctx;
        let bytes = segments::raw_segment(from, u.count, &u.framed);
        Ok(Some(
            put_segment(
                ctx.objects.as_ref(),
                "raw",
                &ctx.table.name,
                job.shard,
                from,
                to,
                &job.ext(segments::RAW_EXT),
                bytes,
                u.count,
                job.unsaved.times,
            )
            .await
            .map_err(err)?,
        ))
    }

    /// Writes the dead letters and the snapshot object, commits the
    /// manifest through the control plane, then the local cache.
    async fn commit(
        &self,
        job: &CheckpointJob,
        mut added: Vec<SegmentInfo>,
        training_rows: u64,
    ) -> Result<Saved, ShardError> {
        let ctx = &job.ctx;
        let store = ctx.objects.as_ref();
        let table = &ctx.table;
        let u = &job.unsaved.source;
        if !u.dead.is_empty() {
            let mut text = String::new();
            for (off, reason, raw) in &u.dead {
                text.push_str(
                    &serde_json::json!({"offset": off, "reason": reason, "raw": raw}).to_string(),
                );
                text.push('\n');
            }
            added.push(
                put_segment(
                    store,
                    "dead",
                    &table.name,
                    job.shard,
                    job.from,
                    job.to,
                    &job.ext("jsonl"),
                    text.into_bytes(),
                    u.dead.len() as u64,
                    (i64::MAX, i64::MIN),
                )
                .await
                .map_err(err)?,
            );
        }
        let seq = job.seq + 1;
        let data = SnapshotData {
            replace: self.full,
            meta: job.delta.meta.clone(),
            slots: snapshot_slots(&job.delta),
            idem: self.idem.clone(),
            event_ids: self.event_ids.clone(),
        };
        let path = snapshot_path(&table.name, job.shard, seq, &job.ext("snap"));
        // an idle epoch (nothing read, nothing changed) commits the same
        // snapshot objects again
        let idle = job.from == job.to && job.delta.slots.is_empty() && u.dead.is_empty();
        let chain = if idle && !self.full {
            self.chain.clone()
        } else {
            let part = put_snapshot(store, path, &data).await?;
            if self.full {
                vec![part]
            } else {
                let mut c = self.chain.clone();
                c.push(part);
                c
            }
        };
        let pipeline = job.pipe.fingerprint();
        let checkpoint = ShardCheckpoint {
            shard: job.shard,
            owner: self.ctx.id,
            owner_epoch: self.owner_epoch,
            epoch: self.epoch,
            seq,
            offset: job.to,
            pipeline: pipeline.clone(),
            digest: digest(&chain, job.to),
            snapshot: chain.clone(),
            at_ms: now_ms(),
        };
        match commit_checkpoint(&self.ctx, checkpoint, added.clone(), Vec::new()).await {
            Ok(()) => {}
            Err(CommitError::Fenced(w)) => return Err(ShardError::Fenced(w.to_string())),
            Err(e) => return Err(ShardError::Uncertain(e.to_string())),
        }
        // the local cache takes the delta only on top of the checkpoint it
        // follows; otherwise (a failed earlier write) it is dropped, and a
        // restore reads the snapshot objects
        let cache_ok = self.full
            || ctx
                .state
                .info(job.shard)
                .ok()
                .flatten()
                .is_some_and(|i| i.seq == job.seq);
        let local = if !cache_ok {
            Err(crate::store::StoreError::Decode {
                what: "local cache",
                message: format!("not at checkpoint {}: dropped", job.seq),
            })
        } else {
            ctx.state.commit(
                job.shard,
                Commit {
                    meta: &job.delta.meta,
                    slots: &job.delta.slots,
                    seq,
                    log_offset: job.to,
                    pipeline: pipeline.clone(),
                    add_segments: &[],
                    remove_segments: &[],
                    replace_slots: self.full,
                    extra: Some(encode_dedup(&self.idem, &self.event_ids)),
                },
            )
        };
        let info = local.unwrap_or_else(|e| {
            // the manifest is committed; the cache must not be used
            tracing::warn!(shard = job.shard, "local state cache: {e}");
            let _ = ctx.state.invalidate(job.shard);
            CheckpointInfo {
                seq,
                log_offset: job.to,
                at_ms: now_ms(),
                slots_written: job.delta.slots.len() as u64,
                bytes_written: 0,
                pipeline,
            }
        });
        Ok(Saved {
            info,
            added,
            training_rows,
            chain: Some(chain),
            epoch: self.epoch,
        })
    }
}

impl ClusterShard {
    /// Restores the shard's committed checkpoint: from the local cache when
    /// this node took exactly that checkpoint, else from its snapshot
    /// objects. A shard with no checkpoint starts at offset 0.
    pub(super) async fn recover(
        w: &mut ShardWorker,
        cl: Arc<ClusterCtx>,
        loaded: Option<Loaded>,
    ) -> Result<ClusterShard, ShardError> {
        let shard = w.shard;
        // not the state as this member last applied it (after a restart it
        // may lag): everything committed so far
        let st = cl
            .cp
            .barrier(std::time::Duration::from_secs(10))
            .await
            .map_err(|e| {
                ShardError::Unavailable(format!("shard {shard}: the control plane: {e}"))
            })?;
        let owner_epoch = w.ctx.held[shard as usize].load(Ordering::Relaxed);
        let o = st
            .owners
            .get(shard as usize)
            .ok_or_else(|| ShardError::Unavailable("the cluster is not initialized yet".into()))?;
        if o.node != Some(cl.id) || o.epoch != owner_epoch {
            return Err(ShardError::Unavailable(format!(
                "shard {shard} is not this node's under owner epoch {owner_epoch}"
            )));
        }
        w.segments = st.segments[shard as usize].clone();
        let mut cs = ClusterShard::new(cl.clone(), owner_epoch, &w.ctx.table);
        if st.pipeline.version != w.pipe.version {
            // `views apply` changed the pipeline and this node has not
            // switched yet (it does as it applies the change)
            return Err(ShardError::Unavailable(format!(
                "shard {shard}: the cluster runs pipeline version {}, this node still version {}",
                st.pipeline.version, w.pipe.version
            )));
        }
        if let Some(m) = st.checkpoints[shard as usize].clone() {
            if m.pipeline != w.pipe.fingerprint() {
                cs.rebuild(w, &st, &m).await?;
                w.next_offset = w.ckpt.log_offset;
                cs.collect_garbage(w);
                return Ok(cs);
            }
            let local = loaded.filter(|l| {
                l.info.seq == m.seq
                    && l.info.log_offset == m.offset
                    && l.info.pipeline == m.pipeline
            });
            // the local cache if it restores; the snapshot objects (the
            // truth) otherwise
            let mut cached = false;
            if let Some(l) = local {
                let seen = l
                    .extra
                    .as_deref()
                    .map_or(Ok(Default::default()), decode_dedup);
                let restored = seen.and_then(|seen| {
                    w.engine
                        .restore_parts(shard, l.meta, l.slots)
                        .map(|()| seen)
                        .map_err(err)
                });
                match restored {
                    Ok((idem, ids)) => {
                        (cs.idem, cs.event_ids) = (idem, ids);
                        cached = true;
                    }
                    Err(e) => tracing::warn!(
                        shard,
                        "the local state cache does not restore ({e}); reading the snapshot objects"
                    ),
                }
            }
            if !cached {
                let r = restore_snapshot(w.ctx.objects.as_ref(), &m.snapshot)
                    .await?
                    .ok_or_else(|| {
                        ShardError::Internal(format!(
                            "shard {shard}: checkpoint {} lists no snapshot",
                            m.seq
                        ))
                    })?;
                let idem: Vec<(String, IdemEntry)> =
                    r.idem.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let ids: Vec<(u128, i64)> = r.event_ids.iter().map(|(k, v)| (*k, *v)).collect();
                w.ctx
                    .state
                    .commit(
                        shard,
                        Commit {
                            meta: &r.meta,
                            slots: &r.encoded,
                            seq: m.seq,
                            log_offset: m.offset,
                            pipeline: m.pipeline.clone(),
                            add_segments: &[],
                            remove_segments: &[],
                            replace_slots: true,
                            extra: Some(encode_dedup(&idem, &ids)),
                        },
                    )
                    .map_err(err)?;
                w.engine
                    .restore_parts(shard, r.meta, r.slots)
                    .map_err(|e| {
                        ShardError::Internal(format!(
                            "shard {shard}: cannot restore its checkpoint: {e}"
                        ))
                    })?;
                cs.idem = r.idem;
                cs.event_ids = r.event_ids;
            }
            cs.chain = m.snapshot.clone();
            cs.last_epoch = m.epoch;
            w.ckpt = CheckpointInfo {
                seq: m.seq,
                log_offset: m.offset,
                at_ms: m.at_ms,
                slots_written: 0,
                bytes_written: 0,
                pipeline: m.pipeline,
            };
        }
        w.next_offset = w.ckpt.log_offset;
        cs.collect_garbage(w);
        Ok(cs)
    }

    /// Deletes, in the background, the objects under this shard's prefixes
    /// that the committed manifest does not list (left by crashed, fenced
    /// or uncommitted attempts of any node), once they are a minute old
    /// (`LOCKSTEP_GC_GRACE_MS`; the grace covers a commit whose proposal was
    /// still on its way when the shard restarted). A new owner does it as it
    /// takes the shard: the shard's prefixes are written by its owners only.
    fn collect_garbage(&self, w: &ShardWorker) {
        let shard = w.shard;
        let table = w.ctx.table.name.clone();
        let mut prefixes: Vec<String> = w
            .prefixes()
            .iter()
            .map(|(kind, name)| shard_prefix(kind, name, shard))
            .collect();
        prefixes.push(shard_prefix("dead", &table, shard));
        prefixes.push(format!("snapshots/{table}/shard={shard:03}/"));
        let mut keep: Vec<String> = w.segments.iter().map(|s| s.path.clone()).collect();
        keep.extend(self.chain.iter().map(|p| p.path.clone()));
        let objects = w.ctx.objects.clone();
        let grace_ms: i64 = std::env::var("LOCKSTEP_GC_GRACE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60_000);
        // only what was written before the manifest was read (this
        // recovery's barrier), minus the grace: the actor's own checkpoints
        // from now on are not in `keep`
        let before_ms = now_ms() - grace_ms;
        tokio::spawn(async move {
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            for prefix in prefixes {
                match segments::delete_unlisted(objects.as_ref(), &prefix, &keep, before_ms).await {
                    Ok(gone) => {
                        for g in gone {
                            tracing::info!(shard, object = %g, "deleted an object no checkpoint lists");
                        }
                    }
                    Err(e) => tracing::warn!(shard, "collecting unlisted objects: {e}"),
                }
            }
        });
    }

    /// The committed checkpoint was built for another pipeline (`views
    /// apply`): rebuilds the state of the current views by replaying the
    /// shard's archive up to the checkpoint's offset, writes the whole
    /// training history of new and changed views, and commits it all, with
    /// a full snapshot, as the shard's next checkpoint under this owner's
    /// epoch. The deduplication state carries over from the checkpoint.
    async fn rebuild(
        &mut self,
        w: &mut ShardWorker,
        st: &lockstep_cluster::state::ClusterState,
        m: &ShardCheckpoint,
    ) -> Result<(), ShardError> {
        let started = Instant::now();
        let shard = w.shard;
        let ctx = w.ctx.clone();
        let cl = self.ctx.clone();
        let emit = w.views_to_emit(&m.pipeline);
        if let Some(r) = restore_snapshot(ctx.objects.as_ref(), &m.snapshot).await? {
            self.idem = r.idem;
            self.event_ids = r.event_ids;
        }
        let segments = st.segments[shard as usize].clone();
        let (rows, events) = w.replay_archive(&segments, m.offset, &emit).await?;
        let seq = m.seq + 1;
        let job = self.job(true);
        let tag = job.tag();
        let added = w
            .put_rebuilt(
                &rows,
                &emit,
                m.offset,
                &ctx.ext(&format!("{tag}.rebuild{seq}.parquet")),
            )
            .await?;
        let removed = w.replaced_by_rebuild(&segments, &emit);
        w.engine.mark_all_changed(shard);
        let delta = crate::store::EncodedDelta::take(&mut w.engine, shard).map_err(err)?;
        let data = SnapshotData {
            replace: true,
            meta: delta.meta.clone(),
            slots: snapshot_slots(&delta),
            idem: job.idem,
            event_ids: job.event_ids,
        };
        let path = snapshot_path(
            &ctx.table.name,
            shard,
            seq,
            &ctx.ext(&format!("{tag}.snap")),
        );
        let chain = vec![put_snapshot(ctx.objects.as_ref(), path, &data).await?];
        let pipeline = w.pipe.fingerprint();
        let checkpoint = ShardCheckpoint {
            shard,
            owner: cl.id,
            owner_epoch: self.owner_epoch,
            epoch: st.epoch,
            seq,
            offset: m.offset,
            pipeline: pipeline.clone(),
            digest: digest(&chain, m.offset),
            snapshot: chain.clone(),
            at_ms: now_ms(),
        };
        commit_checkpoint(&cl, checkpoint, added.clone(), removed.clone())
            .await
            .map_err(|e| match e {
                CommitError::Fenced(w) => ShardError::Unavailable(format!("shard {shard}: {w}")),
                e => ShardError::Internal(format!(
                    "shard {shard}: committing its rebuild for the new pipeline: {e}"
                )),
            })?;
        // what the committed manifest no longer lists, a minute later:
        // other nodes may be reading them under the manifest they listed a
        // moment ago (export, backfill), as after a compaction
        let mut gone: Vec<String> = removed.iter().map(|s| s.path.clone()).collect();
        gone.extend(m.snapshot.iter().map(|p| p.path.clone()));
        let objects = ctx.objects.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            for p in gone {
                let p = object_store::path::Path::from(p.as_str());
                let _ = object_store::ObjectStoreExt::delete(objects.as_ref(), &p).await;
            }
        });
        let local = ctx.state.commit(
            shard,
            Commit {
                meta: &delta.meta,
                slots: &delta.slots,
                seq,
                log_offset: m.offset,
                pipeline: pipeline.clone(),
                add_segments: &[],
                remove_segments: &[],
                replace_slots: true,
                extra: Some(encode_dedup(&data.idem, &data.event_ids)),
            },
        );
        if let Err(e) = local {
            tracing::warn!(shard, "local state cache: {e}");
            let _ = ctx.state.invalidate(shard);
        }
        w.segments = segments;
        w.segments.retain(|s| !removed.contains(s));
        w.segments.extend(added);
        self.chain = chain;
        self.last_epoch = st.epoch;
        w.ckpt = CheckpointInfo {
            seq,
            log_offset: m.offset,
            at_ms: now_ms(),
            slots_written: delta.slots.len() as u64,
            bytes_written: 0,
            pipeline,
        };
        w.log_rebuilt(&emit, events, started);
        Ok(())
    }

    /// Gives the shard to the move's target once the last checkpoint is
    /// committed; then this actor stops.
    fn hand_off(&mut self, w: &ShardWorker, me: &ActorRef<ShardMsg>) {
        if self.handoff_sent {
            return;
        }
        self.handoff_sent = true;
        let (cl, shard, owner_epoch, me) =
            (self.ctx.clone(), w.shard, self.owner_epoch, me.clone());
        // gives the shard back to the shard map only if this node still
        // holds it under this actor's epoch (not a newer one)
        let release = move |held: &NodeCtx| {
            let _ = held.held[shard as usize].compare_exchange(
                owner_epoch,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        };
        let held = w.ctx.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let cmd = Command::Handoff {
                    shard,
                    from: cl.id,
                    owner_epoch,
                };
                match cl.cp.propose(cmd).await {
                    Ok(Response::Done) => {
                        tracing::info!(shard, "handed off");
                        me.stop(Some(StopReason::HandedOff.into()));
                        return;
                    }
                    Ok(Response::Rejected(why)) => {
                        // the move was called off, or the shard is gone
                        // already: let the shard map decide what runs here
                        tracing::warn!(shard, "hand-off refused: {why}");
                        release(&held);
                        me.stop(Some(StopReason::Fenced.into()));
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(shard, "hand-off: {e}; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
            release(&held);
            me.stop(Some(StopReason::Fenced.into()));
        });
    }
}

impl ShardMode for ClusterShard {
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
        if self.handing_off {
            return Ok(()); // the next owner reads them from the last checkpoint
        }
        let table = w.ctx.table.clone();
        for r in recs {
            if r.offset < w.next_offset {
                continue;
            }
            if let Some(t) = r.timestamp_ms {
                self.clock_ms = self.clock_ms.max(t);
            }
            if let Some((key, i)) = &r.idempotency {
                let at = r.timestamp_ms.unwrap_or(self.clock_ms);
                let e = self.idem.entry(key.clone()).or_insert_with(|| IdemEntry {
                    at_ms: at,
                    ranges: Vec::new(),
                });
                if !e.insert(*i) {
                    // a retry of a request already applied: skip it
                    if let Some((_, reply)) = self.waiters.remove(key) {
                        let _ = reply.send(Err(ShardError::AlreadyIngested));
                    }
                    w.next_offset = r.offset + 1;
                    continue;
                }
            }
            let row = if r.bincode {
                lockstep_io::raw::decode_event(&r.value).map_err(|e| e.to_string())
            } else {
                std::str::from_utf8(&r.value)
                    .map_err(|e| format!("not UTF-8: {e}"))
                    .and_then(|t| self.parser.parse(t.trim()))
                    .and_then(|row| table.validate(&row).map(|()| row).map_err(|e| e.to_string()))
            }
            .and_then(|row| match table.shard_of(&row) {
                s if s == w.shard => Ok(row),
                s => Err(format!(
                    "its key belongs to shard {s}, but it is in partition {}: produce with murmur2 of the key, or through lockstep",
                    w.shard
                )),
            });
            // a producer-supplied event id seen before: a duplicate delivery
            let row = row.map(|row| {
                let dup = table.event_id.is_some_and(|col| {
                    let at = r.timestamp_ms.unwrap_or(self.clock_ms);
                    match self
                        .event_ids
                        .entry(crate::cluster::event_id_hash(&row[col]))
                    {
                        std::collections::hash_map::Entry::Occupied(_) => true,
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(at);
                            false
                        }
                    }
                });
                (row, dup)
            });
            match row {
                Ok((_, true)) => {
                    w.ctx.metrics.duplicates.inc();
                    w.next_offset = r.offset + 1;
                }
                Ok((row, false)) => {
                    if r.bincode {
                        self.rows
                            .framed
                            .extend_from_slice(&(r.value.len() as u32).to_le_bytes());
                        self.rows.framed.extend_from_slice(&r.value);
                    } else {
                        let b = lockstep_io::raw::encode_event(&row);
                        self.rows
                            .framed
                            .extend_from_slice(&(b.len() as u32).to_le_bytes());
                        self.rows.framed.extend_from_slice(&b);
                    }
                    self.rows.count += 1;
                    if let Some((key, 0)) = &r.idempotency {
                        if let Some((view, reply)) = self.waiters.remove(key) {
                            let _ = reply.send(w.serve(&view, &row));
                        }
                    }
                    w.apply(r.offset, &row);
                }
                Err(reason) => {
                    w.ctx.metrics.dead_letters.inc();
                    self.rows.dead.push((
                        r.offset,
                        reason,
                        String::from_utf8_lossy(&r.value).into_owned(),
                    ));
                    w.next_offset = r.offset + 1;
                }
            }
        }
        w.ctx.processed[w.shard as usize].store(w.next_offset, Ordering::Relaxed);
        Ok(())
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

    fn catch_up(&mut self, _w: &mut ShardWorker) -> Result<(), ShardError> {
        Ok(()) // the fetcher delivers everything beyond the offset
    }

    fn log_end(&self, w: &ShardWorker) -> u64 {
        self.ctx.ends[w.shard as usize]
            .load(Ordering::Relaxed)
            .max(w.next_offset)
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

    fn pending(&self) -> bool {
        // an epoch opened since the last commit: even an unchanged shard
        // commits, so the epoch completes
        !self.rows.dead.is_empty() || self.ctx.state().epoch > self.last_epoch
    }

    fn wants_full_snapshot(&self) -> bool {
        self.chain.is_empty() || self.chain.len() >= MAX_CHAIN
    }

    fn take_rows(&mut self, w: &ShardWorker) -> SourceRows {
        let ttl_ms = w.ctx.config.idempotency_ttl.as_millis() as i64;
        let horizon = self.clock_ms.saturating_sub(ttl_ms);
        self.idem.retain(|_, e| e.at_ms >= horizon);
        self.event_ids.retain(|_, at| *at >= horizon);
        self.waiters.retain(|_, (_, r)| !r.is_closed());
        std::mem::take(&mut self.rows)
    }

    fn put_back(&mut self, rows: SourceRows) {
        rows.prepend_to(&mut self.rows);
    }

    fn committer(&self, full: bool) -> Box<dyn Committer> {
        Box::new(self.job(full))
    }

    fn committed(&mut self, w: &ShardWorker, saved: &Saved) {
        self.note_committed(
            saved.chain.clone().unwrap_or_default(),
            saved.epoch,
            w.ctx.objects.clone(),
        );
    }

    fn after_checkpoint(&mut self, w: &mut ShardWorker, me: &ActorRef<ShardMsg>) {
        // the last checkpoint of a move is committed (or there was nothing
        // left to write): hand off
        if self.handing_off && !w.in_flight {
            self.hand_off(w, me);
        }
    }

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

impl Committer for ClusterJob {
    fn tag(&self) -> Option<String> {
        Some(ClusterJob::tag(self))
    }

    fn archive<'a>(
        &'a self,
        job: &'a CheckpointJob,
    ) -> BoxFuture<'a, Result<Option<SegmentInfo>, ShardError>> {
        self.raw_segment(job).boxed()
    }

    fn commit<'a>(
        &'a self,
        job: &'a CheckpointJob,
        added: Vec<SegmentInfo>,
        training_rows: u64,
    ) -> BoxFuture<'a, Result<Saved, ShardError>> {
        ClusterJob::commit(self, job, added, training_rows).boxed()
    }
}
