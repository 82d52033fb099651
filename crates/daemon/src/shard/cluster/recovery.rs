//! A cluster shard's recovery: the committed checkpoint restored (from the
//! local cache or the snapshot objects), a rebuild when it was built for
//! other views, and the collection of objects no checkpoint lists.
use super::seen::Seen;
use super::snapshot_slots;
use crate::clock::now_ms;
use crate::cluster::commit_checkpoint;
use crate::cluster::digest;
use crate::cluster::put_snapshot;
use crate::cluster::restore_snapshot;
use crate::cluster::snapshot_path;
use crate::cluster::ClusterCtx;
use crate::cluster::CommitError;
use crate::cluster::SnapshotData;
use crate::segments;
use crate::segments::shard_prefix;
use crate::shard::err;
use crate::shard::ShardError;
use crate::shard::ShardWorker;
use crate::store::CheckpointInfo;
use crate::store::Commit;
use crate::store::Loaded;
use lockstep_cluster::state::ShardCheckpoint;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::ClusterShard;

impl ClusterShard {
    /// Restores the shard's committed checkpoint: from the local cache when
    /// this node took exactly that checkpoint, else from its snapshot
    /// objects. A shard with no checkpoint starts at offset 0.
    pub(in crate::shard) async fn recover(
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
        w.segments = st.segments[shard as usize].to_vec();
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
            if !cs.restore_cached(w, local) {
                cs.restore_objects(w, &m).await?;
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

    /// Restores the local state cache `local` (this node took exactly the
    /// committed checkpoint); false if there is none or it does not
    /// restore.
    fn restore_cached(&mut self, w: &mut ShardWorker, local: Option<Loaded>) -> bool {
        let shard = w.shard;
        let Some(l) = local else {
            return false;
        };
        let seen = Seen::from_cache(&l.extra_entries, l.extra.as_deref());
        let restored = seen.and_then(|seen| {
            w.engine
                .restore_parts(shard, l.meta, l.slots)
                .map(|()| seen)
                .map_err(err)
        });
        match restored {
            Ok(seen) => {
                self.seen = seen;
                self.count_seen(w);
                true
            }
            Err(e) => {
                tracing::warn!(
                    shard,
                    "the local state cache does not restore ({e}); reading the snapshot objects"
                );
                false
            }
        }
    }

    /// Restores the committed checkpoint `m` from its snapshot objects,
    /// and makes them the local cache.
    async fn restore_objects(
        &mut self,
        w: &mut ShardWorker,
        m: &ShardCheckpoint,
    ) -> Result<(), ShardError> {
        let shard = w.shard;
        let r = restore_snapshot(w.ctx.objects.as_ref(), &m.snapshot)
            .await?
            .ok_or_else(|| {
                ShardError::Internal(format!(
                    "shard {shard}: checkpoint {} lists no snapshot",
                    m.seq
                ))
            })?;
        let seen = Seen::from_parts(r.dedup);
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
                    extra: Some(Seen::cache_write(&seen.delta(true))),
                },
            )
            .map_err(err)?;
        w.engine
            .restore_parts(shard, r.meta, r.slots)
            .map_err(|e| {
                ShardError::Internal(format!("shard {shard}: cannot restore its checkpoint: {e}"))
            })?;
        self.seen = seen;
        self.count_seen(w);
        Ok(())
    }

    /// Deletes, in the background, the objects under this shard's prefixes
    /// that the committed manifest does not list (left by crashed, fenced
    /// or uncommitted attempts of any node), once they are a minute old
    /// (`LOCKSTEP_GC_GRACE_MS`; the grace covers a commit whose proposal was
    /// still on its way when the shard restarted). A new owner does it as it
    /// takes the shard: the shard's prefixes are written by its owners only.
    pub(super) fn collect_garbage(&self, w: &ShardWorker) {
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
        // from now on are not in `keep`. Measured on the store's clock
        // (objects carry its time), taken back to when `keep` was read.
        let read_at = Instant::now();
        let marker = format!("gc-clock/{}", w.ctx.store_id);
        tokio::spawn(async move {
            let store_now = match segments::store_clock_ms(objects.as_ref(), &marker).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(
                        shard,
                        "reading the object store's clock: {e}; no garbage collected"
                    );
                    return;
                }
            };
            let before_ms = store_now - read_at.elapsed().as_millis() as i64 - grace_ms;
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
    pub(super) async fn rebuild(
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
            self.seen = Seen::from_parts(r.dedup);
            self.count_seen(w);
        }
        let segments = st.segments[shard as usize].to_vec();
        let seq = m.seq + 1;
        let job = self.job(true);
        let tag = job.tag();
        let (added, events) = w
            .rebuild_training(
                &segments,
                m.offset,
                &emit,
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
            idem: job.seen.idem.clone(),
            event_ids: job.seen.event_ids.clone(),
            dedup_horizon_ms: job.seen.horizon_ms,
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
            .map_err(|e| rebuild_commit_error(shard, e))?;
        let mut gone: Vec<String> = removed.iter().map(|s| s.path.clone()).collect();
        gone.extend(m.snapshot.iter().map(|p| p.path.clone()));
        delete_later(ctx.objects.clone(), gone);
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
                extra: Some(Seen::cache_write(&job.seen)),
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
        self.seen.all_saved();
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
}

/// Deletes objects the committed manifest no longer lists, a minute later:
/// other nodes may be reading them under the manifest they listed a moment
/// ago (export, backfill), as after a compaction.
pub(super) fn delete_later(objects: Arc<dyn object_store::ObjectStore>, paths: Vec<String>) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        for p in paths {
            let p = object_store::path::Path::from(p.as_str());
            let _ = object_store::ObjectStoreExt::delete(objects.as_ref(), &p).await;
        }
    });
}

/// A rebuild's commit refused: fenced means the shard moved (retry where
/// it is now); anything else is this shard's failure.
fn rebuild_commit_error(shard: u32, e: CommitError) -> ShardError {
    match e {
        CommitError::Fenced(w) => ShardError::Unavailable(format!("shard {shard}: {w}")),
        e => ShardError::Internal(format!(
            "shard {shard}: committing its rebuild for the new pipeline: {e}"
        )),
    }
}
