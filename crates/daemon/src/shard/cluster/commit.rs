//! A cluster checkpoint's commit, carried off the actor: the archive
//! slice, dead letters and a snapshot object written, then `Commit`
//! proposed through Raft under the owner epoch, then the local cache.
use super::seen::{Seen, SeenDelta};
use super::snapshot_slots;
use crate::clock::now_ms;
use crate::cluster::commit_checkpoint;
use crate::cluster::digest;
use crate::cluster::put_snapshot;
use crate::cluster::snapshot_path;
use crate::cluster::ClusterCtx;
use crate::cluster::CommitError;
use crate::cluster::SnapshotData;
use crate::segments::put_segment;
use crate::segments::SegmentInfo;
use crate::shard::err;
use crate::shard::CheckpointJob;
use crate::shard::Committer;
use crate::shard::Saved;
use crate::shard::ShardError;
use crate::store::CheckpointInfo;
use crate::store::Commit;
use futures::future::BoxFuture;
use futures::FutureExt;
use lockstep_cluster::state::ShardCheckpoint;
use lockstep_cluster::state::SnapshotPart;
use std::sync::Arc;

/// A checkpoint's cluster part, computed on the actor.
pub struct ClusterJob {
    pub(super) ctx: Arc<ClusterCtx>,
    /// Unique per attempt, in its object names.
    pub(super) nonce: u32,
    pub(super) owner_epoch: u64,
    pub(super) epoch: u64,
    pub(super) full: bool,
    pub(super) chain: Vec<SnapshotPart>,
    /// The dedup entries this checkpoint saves (all, or the changed).
    pub(super) seen: SeenDelta,
}

impl ClusterJob {
    pub(super) fn tag(&self) -> String {
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
        Ok(Some(job.put_raw(u.count, &u.framed).await?))
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
            idem: self.seen.idem.clone(),
            event_ids: self.seen.event_ids.clone(),
            dedup_horizon_ms: self.seen.horizon_ms,
        };
        let path = snapshot_path(&table.name, job.shard, seq, &job.ext("snap"));
        // an idle epoch (nothing read, nothing changed) commits the same
        // snapshot objects again
        let idle = job.from == job.to
            && job.delta.slots.is_empty()
            && u.dead.is_empty()
            && self.seen.idem.is_empty()
            && self.seen.event_ids.is_empty();
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
        let info = self.cache_locally(job, seq, pipeline);
        Ok(Saved {
            info,
            added,
            training_rows,
            chain: Some(chain),
            epoch: self.epoch,
        })
    }

    /// After the commit through Raft: the delta into the local state cache
    /// (so a restart on this node restores without reading the snapshot
    /// objects), if the cache is at the checkpoint this one follows;
    /// otherwise the cache is invalidated.
    fn cache_locally(&self, job: &CheckpointJob, seq: u64, pipeline: String) -> CheckpointInfo {
        let ctx = &job.ctx;
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
                    extra: Some(Seen::cache_write(&self.seen)),
                },
            )
        };
        local.unwrap_or_else(|e| {
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
        })
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
