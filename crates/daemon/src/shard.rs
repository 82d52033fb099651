//! Shard actors: one ractor actor per shard owns that shard's operator state
//! and is the only thing that changes it. Messages arrive in mailbox order,
//! so the shard processes its log in order, and serving reads see every event
//! acknowledged before them. A supervisor restarts a failed actor, which
//! recovers from its last checkpoint and replays the log from there.

use crate::cluster::{ClusterCtx, IdemEntry};
use crate::node::NodeCtx;
use crate::pipeline::{view_fingerprint, Pipeline};
use crate::segments::{
    self, decode_raw, delete_orphans, get_segment, plan_compaction, put_segment, shard_prefix,
    SegmentInfo,
};
use crate::store::{CheckpointInfo, Commit};
pub use lockstep_api::{CompactReport, ShardStatus};
use lockstep_cluster::state::SnapshotPart;
use lockstep_core::value::{Row, Value};
use lockstep_core::{Emitted, Engine, Outcome};
use lockstep_log::Log;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

mod cluster_mode;
mod error;
pub use cluster_mode::ClusterShard;
pub use error::{ShardError, StopReason};

pub type Reply<T> = oneshot::Sender<Result<T, ShardError>>;

pub enum ShardMsg {
    /// Events appended to the log at offsets `first..first + rows.len()`.
    /// With `serve`, the single event's features (computed just before it
    /// enters the state, so exactly its training row's) are sent back.
    Events {
        first: u64,
        rows: Vec<Row>,
        serve: Option<(String, Reply<String>)>,
    },
    /// Features of a hypothetical event, as the JSON reply body; no state
    /// changes.
    Serve {
        view: String,
        event: Row,
        reply: Reply<String>,
    },
    Checkpoint {
        reply: Option<Reply<CheckpointReport>>,
    },
    /// A checkpoint task finished (sent by the task itself).
    CheckpointDone {
        done: Box<CheckpointOutcome>,
        started: Instant,
        replies: Vec<Reply<CheckpointReport>>,
    },
    Status {
        reply: Reply<ShardStatus>,
    },
    Segments {
        reply: Reply<Vec<SegmentInfo>>,
    },
    Compact {
        target_bytes: u64,
        reply: Reply<CompactReport>,
    },
    /// Process whatever the log holds beyond the shard's offset: sent by
    /// the supervisor after a restart, for events whose messages went to the
    /// failed predecessor.
    CatchUp,
    /// Stop; the supervisor starts a successor, which recovers under the
    /// node's current pipeline (`views apply`).
    Stop,
    /// Test hook: fail the actor (the supervisor restarts it).
    Fail,
    /// Cluster: records of the shard's partition, in offset order.
    Records(Vec<lockstep_log::kafka::KafkaRecord>),
    /// Cluster: answer the features of the record carrying this
    /// Idempotency-Key (index 0) when it arrives, computed just before it
    /// enters the state (serve-and-ingest on the owner).
    ServeWhenSeen {
        key: String,
        view: String,
        reply: Reply<String>,
    },
    /// Cluster: the shard moves away: stop reading, take a last
    /// checkpoint, hand the shard off and stop.
    Handoff,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub shard: u32,
    pub seq: u64,
    pub log_offset: u64,
    /// False when nothing changed since the previous checkpoint.
    pub wrote: bool,
    pub slots_written: u64,
    pub bytes_written: u64,
    pub training_rows: u64,
    pub segments: usize,
    pub millis: f64,
}

/// The shard's state and the work on it, apart from the actor plumbing.
pub struct ShardWorker {
    ctx: Arc<NodeCtx>,
    /// The pipeline this shard's engine runs.
    pipe: Arc<Pipeline>,
    shard: u32,
    engine: Engine,
    /// Next log offset to process.
    next_offset: u64,
    ckpt: CheckpointInfo,
    /// Rows finalized since the last checkpoint, per engine view.
    training: Vec<Vec<Row>>,
    /// Late events since the last checkpoint: (offset, watermark, event).
    late: Vec<(u64, i64, Row)>,
    /// Event-time range of the log since the last checkpoint.
    times: (i64, i64),
    segments: Vec<SegmentInfo>,
    emitted: Vec<Emitted>,
    /// A checkpoint task is running; `again`: another was asked for
    /// meanwhile (its callers wait in `replies`).
    in_flight: bool,
    again: bool,
    replies: Vec<Reply<CheckpointReport>>,
    /// Cluster mode only.
    cl: Option<ClusterShard>,
}

fn err(e: impl std::fmt::Display) -> ShardError {
    ShardError::internal(e)
}

impl ShardWorker {
    /// Restores the last checkpoint, removes objects of interrupted
    /// checkpoints, and replays the log from the checkpoint's offset.
    pub async fn recover(ctx: Arc<NodeCtx>, shard: u32) -> Result<ShardWorker, ShardError> {
        let pipe = ctx.pipeline();
        let engine = Engine::new(pipe.catalog.clone(), &pipe.view_name_refs()).map_err(err)?;
        // a failed predecessor's checkpoint may still be writing: load after it
        let lock = ctx.checkpoint_locks[shard as usize].clone();
        let _guard = lock.lock().await;
        let loaded = ctx.state.load(shard).map_err(err)?;
        let cluster = ctx.cluster.clone();
        let mut w = ShardWorker {
            training: vec![Vec::new(); pipe.view_names.len()],
            pipe,
            ctx,
            shard,
            engine,
            next_offset: 0,
            ckpt: CheckpointInfo::default(),
            late: Vec::new(),
            times: (i64::MAX, i64::MIN),
            segments: Vec::new(),
            emitted: Vec::new(),
            in_flight: false,
            again: false,
            replies: Vec::new(),
            cl: None,
        };
        if let Some(cl) = cluster {
            w.recover_cluster(cl, loaded).await?;
            w.ctx.processed[shard as usize].store(w.next_offset, Ordering::Relaxed);
            return Ok(w);
        }
        if let Some(l) = loaded {
            w.segments = l.segments.clone();
            w.delete_orphans().await?;
            if l.info.pipeline == w.pipe.fingerprint() {
                w.engine
                    .restore_parts(shard, l.meta, l.slots)
                    .map_err(|e| {
                        ShardError::Internal(format!(
                            "shard {shard}: cannot restore its checkpoint: {e}"
                        ))
                    })?;
                w.ckpt = l.info;
            } else {
                w.rebuild(l).await?;
            }
            w.next_offset = w.ckpt.log_offset;
        } else {
            w.delete_orphans().await?;
        }
        w.catch_up()?;
        w.ctx.processed[shard as usize].store(w.next_offset, Ordering::Relaxed);
        Ok(w)
    }

    fn log_rebuilt(&self, emit: &[bool], events: u64, started: Instant) {
        let rebuilt: Vec<&String> = self
            .pipe
            .view_names
            .iter()
            .zip(emit)
            .filter(|(_, e)| **e)
            .map(|(n, _)| n)
            .collect();
        tracing::info!(
            shard = self.shard,
            events,
            rebuilt_views = ?rebuilt,
            millis = started.elapsed().as_millis() as u64,
            "rebuilt the shard's state for a new pipeline from its archive"
        );
    }

    /// Which views a state built for the pipeline `built_for` (a
    /// fingerprint: `name=fp,…`) lacks: new or changed ones, whose whole
    /// training history a rebuild writes.
    fn views_to_emit(&self, built_for: &str) -> Vec<bool> {
        let old: std::collections::HashSet<&str> = built_for.split(',').collect();
        self.pipe
            .view_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                !old.contains(format!("{name}={}", view_fingerprint(self.pipe.view(i))).as_str())
            })
            .collect()
    }

    /// Replays the shard's archive (its raw segments, gap-free from the
    /// start up to offset `to`) through the engine, keeping the training
    /// rows of the views in `emit`. Returns them and the events replayed.
    async fn replay_archive(
        &mut self,
        segments: &[SegmentInfo],
        to: u64,
        emit: &[bool],
    ) -> Result<(Vec<Vec<Row>>, u64), ShardError> {
        let shard = self.shard;
        let mut raw: Vec<&SegmentInfo> = segments.iter().filter(|s| s.kind == "raw").collect();
        raw.sort_by_key(|s| s.from_offset);
        let mut at = raw.first().map_or(0, |s| s.from_offset);
        if at != 0 && to > 0 {
            return Err(ShardError::Internal(format!(
                "shard {shard}: the archive starts at offset {at}, not 0; cannot rebuild"
            )));
        }
        let mut rows: Vec<Vec<Row>> = vec![Vec::new(); emit.len()];
        let mut events = 0u64;
        for s in &raw {
            if s.from_offset != at {
                return Err(ShardError::Internal(format!(
                    "shard {shard}: the archive has a gap at {at}..{}",
                    s.from_offset
                )));
            }
            at = s.to_offset;
            let bytes = get_segment(self.ctx.objects.as_ref(), s)
                .await
                .map_err(err)?;
            for (_, row) in decode_raw(&s.path, &bytes).map_err(err)? {
                self.engine.push_to_shard(shard, &row, &mut self.emitted);
                events += 1;
                for e in self.emitted.drain(..) {
                    if emit[e.view] {
                        rows[e.view].push(e.row);
                    }
                }
            }
        }
        if at != to {
            return Err(ShardError::Internal(format!(
                "shard {shard}: the archive ends at {at} but the checkpoint is at {to}"
            )));
        }
        Ok((rows, events))
    }

    /// Writes a rebuild's training rows as one segment per view, covering
    /// offsets `0..to`, named with `ext`.
    async fn put_rebuilt(
        &self,
        rows: &[Vec<Row>],
        emit: &[bool],
        to: u64,
        ext: &str,
    ) -> Result<Vec<SegmentInfo>, ShardError> {
        let ctx = &self.ctx;
        let mut added = Vec::new();
        for (v, rs) in rows.iter().enumerate() {
            if !emit[v] || rs.is_empty() {
                continue;
            }
            let view = self.pipe.view(v);
            let (lo, hi) = view_time_range(&ctx.table, view, rs);
            let bytes = lockstep_io::rows_to_parquet(&view.name, rs, &view.output).map_err(err)?;
            added.push(
                put_segment(
                    ctx.objects.as_ref(),
                    "training",
                    &view.name,
                    self.shard,
                    0,
                    to,
                    ext,
                    bytes,
                    rs.len() as u64,
                    (lo, hi),
                )
                .await
                .map_err(err)?,
            );
        }
        Ok(added)
    }

    /// The training segments a rebuild replaces: those of the views it
    /// writes again.
    fn replaced_by_rebuild(&self, segments: &[SegmentInfo], emit: &[bool]) -> Vec<SegmentInfo> {
        segments
            .iter()
            .filter(|s| s.kind == "training")
            .filter(|s| self.pipe.view_index(&s.name).is_some_and(|v| emit[v]))
            .cloned()
            .collect()
    }

    /// The checkpoint was taken for other views: rebuild the state of the
    /// current ones by replaying the shard's archive (which holds its whole
    /// log up to the checkpoint), write the full training history of views
    /// that are new or changed, and commit it all as a fresh checkpoint.
    async fn rebuild(&mut self, l: crate::store::Loaded) -> Result<(), ShardError> {
        let started = Instant::now();
        let ctx = self.ctx.clone();
        let shard = self.shard;
        let built_for = ctx
            .state
            .get_node_key("views")
            .map_err(err)?
            .unwrap_or_default();
        let emit = self.views_to_emit(&built_for);
        let at = l.info.log_offset;
        let (rows, events) = self.replay_archive(&l.segments, at, &emit).await?;
        let seq = l.info.seq + 1;
        let added = self
            .put_rebuilt(&rows, &emit, at, &ctx.ext(&format!("rebuild{seq}.parquet")))
            .await?;
        let removed = self.replaced_by_rebuild(&l.segments, &emit);
        self.engine.mark_all_changed(shard);
        let delta = crate::store::EncodedDelta::take(&mut self.engine, shard).map_err(err)?;
        let info = ctx
            .state
            .commit(
                shard,
                Commit {
                    meta: &delta.meta,
                    slots: &delta.slots,
                    seq,
                    log_offset: at,
                    pipeline: self.pipe.fingerprint(),
                    add_segments: &added,
                    remove_segments: &removed,
                    replace_slots: true,
                    extra: None,
                },
            )
            .map_err(err)?;
        for s in &removed {
            let p = object_store::path::Path::from(s.path.as_str());
            let _ = object_store::ObjectStoreExt::delete(ctx.objects.as_ref(), &p).await;
        }
        self.segments.retain(|s| !removed.contains(s));
        self.segments.extend(added);
        self.ckpt = info;
        self.log_rebuilt(&emit, events, started);
        Ok(())
    }

    fn prefixes(&self) -> Vec<(String, String)> {
        let t = &self.ctx.table.name;
        let mut p = vec![
            ("raw".to_string(), t.clone()),
            ("late".to_string(), t.clone()),
        ];
        for v in &self.pipe.view_names {
            p.push(("training".to_string(), v.clone()));
        }
        p
    }

    async fn delete_orphans(&self) -> Result<(), ShardError> {
        let keep: Vec<&str> = self.segments.iter().map(|s| s.path.as_str()).collect();
        for (kind, name) in self.prefixes() {
            let gone = delete_orphans(
                self.ctx.objects.as_ref(),
                &shard_prefix(&kind, &name, self.shard),
                &self.ctx.store_id,
                &keep,
            )
            .await
            .map_err(err)?;
            for g in gone {
                tracing::info!(shard = self.shard, object = %g, "deleted an uncommitted segment");
            }
        }
        Ok(())
    }

    /// Processes whatever the log holds beyond `next_offset` (after recovery,
    /// or when a message was lost to a restart).
    fn catch_up(&mut self) -> Result<(), ShardError> {
        let log = self.ctx.log.clone();
        let end = log.end_offset(self.shard).map_err(err)?;
        while self.next_offset < end {
            let recs = log.read(self.shard, self.next_offset, 8192).map_err(err)?;
            if recs.is_empty() {
                break;
            }
            for r in recs {
                let row = lockstep_io::raw::decode_event(&r.bytes).map_err(err)?;
                self.apply(r.offset, &row);
            }
        }
        Ok(())
    }

    fn apply(&mut self, offset: u64, row: &[Value]) {
        // Kafka offsets may skip (transaction markers), never go back
        debug_assert!(offset >= self.next_offset);
        if let Value::Timestamp(t) = row[self.ctx.table.time] {
            self.times = (self.times.0.min(t), self.times.1.max(t));
        }
        let out = self
            .engine
            .push_to_shard(self.shard, row, &mut self.emitted);
        if let Outcome::Late { watermark, .. } = out {
            self.late.push((offset, watermark, row.to_vec()));
            self.ctx.metrics.late.inc();
        }
        for e in self.emitted.drain(..) {
            self.training[e.view].push(e.row);
        }
        self.next_offset = offset + 1;
    }

    pub fn on_events(
        &mut self,
        first: u64,
        rows: Vec<Row>,
        serve: Option<(String, Reply<String>)>,
    ) -> Result<(), ShardError> {
        if first > self.next_offset {
            // a message went to a predecessor of this actor: read the gap
            let end = first;
            while self.next_offset < end {
                let recs = self
                    .ctx
                    .log
                    .read(
                        self.shard,
                        self.next_offset,
                        (end - self.next_offset) as usize,
                    )
                    .map_err(err)?;
                if recs.is_empty() {
                    return Err(ShardError::Internal(format!(
                        "shard {}: log records {}..{first} are missing",
                        self.shard, self.next_offset
                    )));
                }
                for r in recs {
                    let row = lockstep_io::raw::decode_event(&r.bytes).map_err(err)?;
                    self.apply(r.offset, &row);
                }
            }
        }
        let mut serve = serve;
        for (i, row) in rows.into_iter().enumerate() {
            let off = first + i as u64;
            if off < self.next_offset {
                continue; // already replayed from the log
            }
            if let Some((view, reply)) = serve.take() {
                let _ = reply.send(self.serve(&view, &row));
            }
            self.apply(off, &row);
        }
        if let Some((_, reply)) = serve {
            let _ = reply.send(Err(ShardError::Unavailable(
                "the event was processed during a shard restart; its features are in its training row"
                    .into(),
            )));
        }
        self.ctx.processed[self.shard as usize].store(self.next_offset, Ordering::Relaxed);
        Ok(())
    }

    /// Features for a view by name, as `{"features": {...}}` (rendered
    /// here, by the pipeline whose engine computed them: a request may have
    /// been routed under one that `views apply` has since replaced).
    pub fn serve(&mut self, view: &str, event: &[Value]) -> Result<String, ShardError> {
        if self.cl.as_ref().is_some_and(|c| c.handing_off) {
            return Err(ShardError::Unavailable(format!(
                "shard {} is moving to another node; retry",
                self.shard
            )));
        }
        let v = self
            .pipe
            .view_index(view)
            .ok_or_else(|| ShardError::UnknownView(view.to_string()))?;
        let row = self.engine.serve(v, event).map_err(err)?;
        Ok(format!(
            "{{\"features\":{}}}",
            lockstep_io::render_json(&row, &self.pipe.view(v).output)
        ))
    }

    /// Starts a checkpoint: takes the state delta and the rows to commit
    /// (cheap, on the actor), and writes them in a separate task so the shard
    /// keeps serving meanwhile. At most one runs per shard; a request during
    /// one is served by the next, which starts when it ends. The result comes
    /// back as [`ShardMsg::CheckpointDone`].
    pub fn start_checkpoint(
        &mut self,
        me: &ActorRef<ShardMsg>,
        reply: Option<Reply<CheckpointReport>>,
    ) {
        if self.cl.is_some() && self.pipe.fingerprint() != self.ctx.pipeline().fingerprint() {
            // `views apply` switched the node while this actor was starting
            // (too late for the stop it sends): restart under the new views
            me.stop(Some(StopReason::PipelineChange.into()));
            return;
        }
        if self.in_flight {
            self.again = true;
            self.replies.extend(reply);
            return;
        }
        let mut replies: Vec<_> = std::mem::take(&mut self.replies);
        replies.extend(reply);
        self.again = false;
        let started = Instant::now();
        let (from, to) = (self.ckpt.log_offset, self.next_offset);
        let unchanged = |w: &ShardWorker| {
            w.ckpt.seq > 0
                && w.late.is_empty()
                && w.cl
                    .as_ref()
                    .is_none_or(|c| c.dead.is_empty() && !c.epoch_pending())
        };
        if from == to && unchanged(self) {
            // no event since the last checkpoint, so no state change
            self.report_unchanged(replies, 0.0);
            return;
        }
        let full = self
            .cl
            .as_ref()
            .is_some_and(ClusterShard::wants_full_snapshot);
        if full {
            self.engine.mark_all_changed(self.shard);
        }
        let delta = match crate::store::EncodedDelta::take(&mut self.engine, self.shard) {
            Ok(d) => d,
            Err(e) => {
                for r in replies {
                    let _ = r.send(Err(err(&e)));
                }
                return;
            }
        };
        if from == to && delta.slots.is_empty() && unchanged(self) {
            self.report_unchanged(replies, started.elapsed().as_secs_f64() * 1e3);
            return;
        }
        let n_views = self.training.len();
        let unsaved = Unsaved {
            training: std::mem::replace(&mut self.training, vec![Vec::new(); n_views]),
            late: std::mem::take(&mut self.late),
            times: std::mem::replace(&mut self.times, (i64::MAX, i64::MIN)),
            cluster: {
                let ttl = self.ctx.config.idempotency_ttl.as_millis() as i64;
                self.cl.as_mut().map(|c| c.take_unsaved(ttl))
            },
        };
        let job = CheckpointJob {
            ctx: self.ctx.clone(),
            pipe: self.pipe.clone(),
            shard: self.shard,
            from,
            to,
            seq: self.ckpt.seq,
            delta,
            cluster: self.cl.as_ref().map(|c| c.job(full)),
            unsaved,
        };
        self.in_flight = true;
        let me = me.clone();
        // Taken here, before the task exists, and held by it to the end: a
        // successor actor's recovery waits for this task's commit, and no
        // task of a failed actor can commit after its successor loaded.
        let guard = match self.ctx.checkpoint_locks[self.shard as usize]
            .clone()
            .try_lock_owned()
        {
            Ok(g) => g,
            Err(_) => {
                // cannot happen: recovery took and released it, and this
                // actor runs one task at a time; write everything next time
                self.in_flight = false;
                self.engine.mark_all_changed(self.shard);
                self.put_back(job.unsaved);
                for r in replies {
                    let _ = r.send(Err(ShardError::Internal(
                        "a previous checkpoint is still running".into(),
                    )));
                }
                return;
            }
        };
        let task = tokio::spawn(async move {
            let _guard = guard;
            match write_checkpoint(&job).await {
                Ok(saved) => Ok(saved),
                Err(e) => Err((e, Box::new(job.unsaved))),
            }
        });
        // a panic in the task would lose its rows: fail the shard instead,
        // which restarts from the last checkpoint and replays them
        tokio::spawn(async move {
            match task.await {
                Ok(done) => {
                    let _ = me.send_message(ShardMsg::CheckpointDone {
                        done: Box::new(done),
                        started,
                        replies,
                    });
                }
                Err(e) => {
                    tracing::error!("checkpoint task died: {e}; restarting the shard");
                    for r in replies {
                        let _ = r.send(Err(ShardError::Internal(format!(
                            "checkpoint task died: {e}"
                        ))));
                    }
                    let _ = me.send_message(ShardMsg::Fail);
                }
            }
        });
    }

    fn report_unchanged(&self, replies: Vec<Reply<CheckpointReport>>, millis: f64) {
        let report = CheckpointReport {
            shard: self.shard,
            seq: self.ckpt.seq,
            log_offset: self.next_offset,
            wrote: false,
            slots_written: 0,
            bytes_written: 0,
            training_rows: 0,
            segments: 0,
            millis,
        };
        for r in replies {
            let _ = r.send(Ok(report.clone()));
        }
    }

    /// Puts the rows of a checkpoint that failed back in front of the ones
    /// that arrived since.
    fn put_back(&mut self, u: Unsaved) {
        let Unsaved {
            mut training,
            mut late,
            times,
            cluster,
        } = u;
        self.times = (self.times.0.min(times.0), self.times.1.max(times.1));
        for (old, new) in training.iter_mut().zip(&mut self.training) {
            old.append(new);
            std::mem::swap(old, new);
        }
        late.append(&mut self.late);
        self.late = late;
        if let (Some(c), Some(u)) = (self.cl.as_mut(), cluster) {
            c.put_back(u);
        }
    }

    /// Applies a finished checkpoint to the actor's view of its manifest.
    pub fn finish_checkpoint(
        &mut self,
        me: &ActorRef<ShardMsg>,
        done: CheckpointOutcome,
        started: Instant,
        replies: Vec<Reply<CheckpointReport>>,
    ) {
        self.in_flight = false;
        let result = match done {
            Ok(saved) => {
                let info = saved.info;
                let to = info.log_offset;
                if let Some(c) = self.cl.as_mut() {
                    c.committed(
                        saved.chain.unwrap_or_default(),
                        saved.epoch,
                        self.ctx.objects.clone(),
                    );
                } else if let Err(e) = self.ctx.log.truncate_below(self.shard, to) {
                    // everything below `to` is archived and in the state
                    tracing::warn!(shard = self.shard, "log truncation failed: {e}");
                }
                let n_added = saved.added.len();
                self.segments.extend(saved.added);
                self.ckpt = info.clone();
                let secs = started.elapsed().as_secs_f64();
                self.ctx.metrics.checkpoint_seconds.observe(secs);
                self.ctx.metrics.checkpoints.inc();
                Ok(CheckpointReport {
                    shard: self.shard,
                    seq: info.seq,
                    log_offset: to,
                    wrote: true,
                    slots_written: info.slots_written,
                    bytes_written: info.bytes_written,
                    training_rows: saved.training_rows,
                    segments: n_added,
                    millis: secs * 1e3,
                })
            }
            Err((e, unsaved)) => {
                tracing::error!(shard = self.shard, "checkpoint failed: {e}");
                // the delta's slots were taken: write everything next time;
                // the rows go back in front of the ones since
                self.engine.mark_all_changed(self.shard);
                self.ctx.metrics.checkpoint_failures.inc();
                self.put_back(*unsaved);
                if matches!(e, ShardError::Fenced(_)) {
                    // the shard is another node's now: stop, restart nothing
                    me.stop(Some(StopReason::Fenced.into()));
                } else if matches!(e, ShardError::Uncertain(_)) {
                    // restart from what the control plane holds
                    let _ = me.send_message(ShardMsg::Fail);
                }
                Err(e)
            }
        };
        for r in replies {
            let _ = r.send(result.clone());
        }
        if self.again {
            self.start_checkpoint(me, None);
        }
        // the last checkpoint of a move is committed (or there was nothing
        // left to write): hand off
        if !self.in_flight && self.cl.as_ref().is_some_and(|c| c.handing_off) {
            self.hand_off(me);
        }
    }

    pub fn status(&mut self, restarts: u64) -> ShardStatus {
        let log_end = match &self.cl {
            Some(c) => c.log_end(self.shard).max(self.next_offset),
            None => self
                .ctx
                .log
                .end_offset(self.shard)
                .unwrap_or(self.next_offset),
        };
        let st = self.engine.stats().swap_remove(self.shard as usize);
        let wm = st.watermark;
        ShardStatus {
            shard: self.shard,
            offset: self.next_offset,
            log_end,
            lag: log_end.saturating_sub(self.next_offset),
            events: st.events,
            late: st.late,
            watermark: (wm != i64::MIN).then(|| lockstep_core::time::format_rfc3339_ms(wm)),
            pending_rows: st.views.iter().map(|v| v.pending).sum(),
            partitions: st.views.iter().map(|v| v.partitions).sum(),
            buffered_training_rows: self.training.iter().map(|t| t.len() as u64).sum(),
            last_checkpoint: self.ckpt.clone(),
            restarts,
        }
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        let mut s = self.segments.clone();
        s.sort_by(|a, b| (&a.kind, &a.name, a.from_offset).cmp(&(&b.kind, &b.name, b.from_offset)));
        s
    }

    /// Merges runs of small raw and training segments into larger ones,
    /// in log order, and swaps them in the manifest atomically.
    pub async fn compact(&mut self, target_bytes: u64) -> Result<CompactReport, ShardError> {
        let ctx = self.ctx.clone();
        let store = ctx.objects.as_ref();
        let before = self.segments.len();
        let mut merged_groups = 0;
        let mut by_stream: HashMap<(String, String), Vec<SegmentInfo>> = HashMap::new();
        for s in &self.segments {
            if s.kind == "raw" || s.kind == "training" {
                by_stream
                    .entry((s.kind.clone(), s.name.clone()))
                    .or_default()
                    .push(s.clone());
            }
        }
        let mut streams: Vec<_> = by_stream.into_iter().collect();
        streams.sort_by(|a, b| a.0.cmp(&b.0));
        for ((kind, name), segs) in streams {
            let schema = if kind == "raw" {
                None
            } else {
                match self.pipe.view_index(&name) {
                    Some(v) => Some(self.pipe.view(v).output.clone()),
                    None => continue,
                }
            };
            for group in plan_compaction(&segs, target_bytes) {
                let (from, to) = (group[0].from_offset, group[group.len() - 1].to_offset);
                let lo = group.iter().map(|s| s.min_time).min().unwrap_or(i64::MAX);
                let hi = group.iter().map(|s| s.max_time).max().unwrap_or(i64::MIN);
                let mut parts = Vec::new();
                for s in &group {
                    parts.push((s.path.clone(), get_segment(store, s).await.map_err(err)?));
                }
                let (bytes, n, ext) = match &schema {
                    // raw log slices concatenate without decoding
                    None => {
                        let (b, n) = segments::merge_raw(&parts).map_err(err)?;
                        (b, n, segments::RAW_EXT)
                    }
                    Some(schema) => {
                        let mut rows = Vec::new();
                        for (path, b) in parts {
                            rows.extend(
                                lockstep_io::rows_from_parquet(&path, b, schema).map_err(err)?,
                            );
                        }
                        let label =
                            segments::segment_path(&kind, &name, self.shard, from, to, "parquet");
                        let b = lockstep_io::rows_to_parquet(&label, &rows, schema).map_err(err)?;
                        (b, rows.len() as u64, "parquet")
                    }
                };
                // in a cluster, a name unique to this attempt (a fenced
                // attempt must not overwrite what the manifest lists)
                let ext = match &self.cl {
                    Some(c) => ctx.ext(&format!("{}.{ext}", c.compaction_tag())),
                    None => ctx.ext(ext),
                };
                let merged = put_segment(
                    store,
                    &kind,
                    &name,
                    self.shard,
                    from,
                    to,
                    &ext,
                    bytes,
                    n,
                    (lo, hi),
                )
                .await
                .map_err(err)?;
                match &self.cl {
                    Some(c) => c.swap_segments(self.shard, &group, &merged).await?,
                    None => ctx
                        .state
                        .swap_segments(self.shard, &group, std::slice::from_ref(&merged))
                        .map_err(err)?,
                }
                self.segments.retain(|s| !group.contains(s));
                self.segments.push(merged);
                if self.cl.is_some() {
                    // other nodes may be reading them under the manifest
                    // they listed a moment ago (export, backfill): later
                    let (objects, group) = (ctx.objects.clone(), group.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                        delete_segments(objects.as_ref(), &group).await;
                    });
                } else {
                    delete_segments(store, &group).await;
                }
                merged_groups += 1;
            }
        }
        Ok(CompactReport {
            shard: self.shard,
            merged_groups,
            segments_before: before,
            segments_after: self.segments.len(),
        })
    }
}

async fn delete_segments(store: &dyn object_store::ObjectStore, segs: &[SegmentInfo]) {
    for s in segs {
        let p = object_store::path::Path::from(s.path.as_str());
        if let Err(e) = object_store::ObjectStoreExt::delete(store, &p).await {
            tracing::warn!(object = %s.path, "could not delete a compacted segment: {e}");
        }
    }
}

/// Smallest and largest event time among rows of `view` (by the column named
/// like the table's event time; `(i64::MAX, i64::MIN)` if none).
fn view_time_range(
    table: &lockstep_core::Table,
    view: &lockstep_core::View,
    rows: &[Row],
) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    if let Some(c) = view.output.index_of(&table.schema.columns[table.time].name) {
        for r in rows {
            if let Value::Timestamp(t) = r[c] {
                lo = lo.min(t);
                hi = hi.max(t);
            }
        }
    }
    (lo, hi)
}

/// One checkpoint's data, written off the actor.
pub struct CheckpointJob {
    ctx: Arc<NodeCtx>,
    pipe: Arc<Pipeline>,
    shard: u32,
    from: u64,
    to: u64,
    seq: u64,
    delta: crate::store::EncodedDelta,
    cluster: Option<cluster_mode::ClusterJob>,
    /// The rows it commits; they go back to the actor if it fails.
    unsaved: Unsaved,
}

impl CheckpointJob {
    /// The end of this checkpoint's object names: the data directory's id,
    /// then (cluster) the owner epoch and a nonce, so no attempt ever
    /// overwrites another's objects, then the format.
    fn ext(&self, format: &str) -> String {
        match &self.cluster {
            Some(c) => self.ctx.ext(&format!("{}.{format}", c.tag())),
            None => self.ctx.ext(format),
        }
    }
}

type LateRow = (u64, i64, Row);

/// Rows taken for a checkpoint, not yet committed.
pub struct Unsaved {
    training: Vec<Vec<Row>>,
    late: Vec<LateRow>,
    /// Event-time range of the log slice.
    times: (i64, i64),
    cluster: Option<cluster_mode::ClusterUnsaved>,
}

/// A committed checkpoint: its info, new segments and training rows, and
/// (cluster) its snapshot objects.
pub struct Saved {
    info: CheckpointInfo,
    added: Vec<SegmentInfo>,
    training_rows: u64,
    chain: Option<Vec<SnapshotPart>>,
    /// The cluster epoch it answers (0 on one node).
    epoch: u64,
}

/// A checkpoint's result; or the error with the rows it could not commit.
pub type CheckpointOutcome = Result<Saved, (ShardError, Box<Unsaved>)>;

/// Archives the log slice, writes the training and late rows, and commits
/// them with the state delta in one atomic batch (cluster: through the
/// control plane, with a snapshot object).
async fn write_checkpoint(job: &CheckpointJob) -> Result<Saved, ShardError> {
    let ctx = job.ctx.clone();
    let (from, to, delta) = (job.from, job.to, &job.delta);
    let store = ctx.objects.as_ref();
    let table = &ctx.table;
    let mut added = Vec::new();
    if let Some(c) = &job.cluster {
        if let Some(raw) = c.raw_segment(job, from, to).await? {
            added.push(raw);
        }
    } else if to > from {
        // the log slice as is: no decoding, no re-encoding
        let mut framed = Vec::new();
        let n = ctx
            .log
            .read_framed(job.shard, from, to, &mut framed)
            .map_err(err)?;
        if n != to - from {
            return Err(ShardError::Internal(format!(
                "shard {}: the log holds {n} records of {from}..{to}",
                job.shard
            )));
        }
        let bytes = segments::raw_segment(from, n, &framed);
        drop(framed);
        added.push(
            put_segment(
                store,
                "raw",
                &table.name,
                job.shard,
                from,
                to,
                &job.ext(segments::RAW_EXT),
                bytes,
                n,
                job.unsaved.times,
            )
            .await
            .map_err(err)?,
        );
    }
    let mut training_rows = 0;
    for (v, rows) in job.unsaved.training.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let view = job.pipe.view(v);
        let (lo, hi) = view_time_range(table, view, rows);
        let name = format!("training/{}/{}", view.name, job.shard);
        let bytes = lockstep_io::rows_to_parquet(&name, rows, &view.output).map_err(err)?;
        training_rows += rows.len() as u64;
        added.push(
            put_segment(
                store,
                "training",
                &view.name,
                job.shard,
                from,
                to,
                &job.ext("parquet"),
                bytes,
                rows.len() as u64,
                (lo, hi),
            )
            .await
            .map_err(err)?,
        );
    }
    if !job.unsaved.late.is_empty() {
        let mut text = String::new();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for (off, wm, row) in &job.unsaved.late {
            if let Value::Timestamp(t) = row[table.time] {
                lo = lo.min(t);
                hi = hi.max(t);
            }
            text.push_str(&format!(
                "{{\"offset\":{off},\"reason\":\"event_time below the shard watermark {}\",\"event\":{}}}\n",
                lockstep_core::time::format_rfc3339_ms(*wm),
                lockstep_io::render_json(row, &table.schema)
            ));
        }
        added.push(
            put_segment(
                store,
                "late",
                &table.name,
                job.shard,
                from,
                to,
                &job.ext("jsonl"),
                text.into_bytes(),
                job.unsaved.late.len() as u64,
                (lo, hi),
            )
            .await
            .map_err(err)?,
        );
    }
    if let Some(c) = &job.cluster {
        return c.commit(job, added, training_rows).await;
    }
    // the log below `to` must be durable before a checkpoint says so
    // (with fsync every N ms it may not be yet)
    ctx.log.flush().map_err(err)?;
    let info = ctx
        .state
        .commit(
            job.shard,
            Commit {
                meta: &delta.meta,
                slots: &delta.slots,
                seq: job.seq + 1,
                log_offset: to,
                pipeline: job.pipe.fingerprint(),
                add_segments: &added,
                remove_segments: &[],
                replace_slots: false,
                extra: None,
            },
        )
        .map_err(err)?;
    Ok(Saved {
        info,
        added,
        training_rows,
        chain: None,
        epoch: 0,
    })
}

pub struct ShardActor;

pub struct ShardArgs {
    pub ctx: Arc<NodeCtx>,
    pub shard: u32,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardWorker;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardWorker, ActorProcessingErr> {
        Ok(ShardWorker::recover(args.ctx, args.shard).await?)
    }

    async fn post_start(
        &self,
        me: ActorRef<ShardMsg>,
        w: &mut ShardWorker,
    ) -> Result<(), ActorProcessingErr> {
        w.start_reading(&me);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ShardMsg>,
        w: &mut ShardWorker,
    ) -> Result<(), ActorProcessingErr> {
        w.stop_reading();
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        w: &mut ShardWorker,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Events { first, rows, serve } => w.on_events(first, rows, serve)?,
            ShardMsg::Serve { view, event, reply } => {
                let _ = reply.send(w.serve(&view, &event));
            }
            ShardMsg::Stop => me.stop(Some(StopReason::PipelineChange.into())),
            ShardMsg::Checkpoint { reply } => w.start_checkpoint(&me, reply),
            ShardMsg::CheckpointDone {
                done,
                started,
                replies,
            } => w.finish_checkpoint(&me, *done, started, replies),
            ShardMsg::Status { reply } => {
                let restarts = w.ctx.restarts[w.shard as usize].load(Ordering::Relaxed);
                let _ = reply.send(Ok(w.status(restarts)));
            }
            ShardMsg::Segments { reply } => {
                let _ = reply.send(Ok(w.segments()));
            }
            ShardMsg::Compact {
                target_bytes,
                reply,
            } => {
                let _ = reply.send(w.compact(target_bytes).await);
            }
            ShardMsg::CatchUp => {
                w.catch_up()?;
                w.ctx.processed[w.shard as usize].store(w.next_offset, Ordering::Relaxed);
            }
            ShardMsg::Fail => return Err(format!("shard {}: failure requested", w.shard).into()),
            ShardMsg::Records(recs) => w.on_records(recs)?,
            ShardMsg::ServeWhenSeen { key, view, reply } => w.serve_when_seen(key, view, reply),
            ShardMsg::Handoff => w.begin_handoff(&me),
        }
        Ok(())
    }
}

/// Starts the shard actors and restarts any that fails.
pub struct Supervisor;

/// The shard's own error from a failed start (its recovery's), if it is
/// one; otherwise the start's failure as an internal error.
fn startup_error(e: ractor::SpawnErr) -> ShardError {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => match inner.downcast::<ShardError>() {
            Ok(e) => *e,
            Err(other) => ShardError::internal(other),
        },
        other => ShardError::internal(other),
    }
}

/// What the supervisor is asked to do.
pub enum SupMsg {
    /// Start the shard's actor (replacing one that runs under an older
    /// owner epoch).
    Start(u32),
    /// (Re)start after a failure; retried with backoff while recovery
    /// fails. In a cluster, only while the shard is still this node's.
    Restart(u32),
    /// The shard is no longer this node's: stop its actor.
    Release(u32),
    /// A shard actor's start (its recovery, on a task of its own, so that
    /// shards recover in parallel) ended; `gen` tells which start.
    Started {
        shard: u32,
        gen: u64,
        actor: Result<ActorRef<ShardMsg>, ShardError>,
    },
}

pub struct SupervisorState {
    ctx: Arc<NodeCtx>,
    /// Actor id → shard.
    owners: HashMap<ractor::ActorId, u32>,
    /// Current retry delay of shards whose recovery failed.
    backoff: HashMap<u32, std::time::Duration>,
    /// Shards whose actor is starting, with the start's number.
    starting: HashMap<u32, u64>,
    starts: u64,
    /// Shards asked to (re)start again while a start was running.
    again: std::collections::HashSet<u32>,
    /// Recently ended actors the supervisor did not know yet (one may end
    /// before its start is reported).
    ended_early: std::collections::VecDeque<ractor::ActorId>,
}

impl Supervisor {
    async fn start_shard(
        me: &ActorRef<SupMsg>,
        st: &mut SupervisorState,
        shard: u32,
    ) -> Result<(), ActorProcessingErr> {
        let args = ShardArgs {
            ctx: st.ctx.clone(),
            shard,
        };
        let (actor, _) = Actor::spawn_linked(None, ShardActor, args, me.get_cell()).await?;
        st.owners.insert(actor.get_id(), shard);
        st.ctx.shards.write().expect("shard registry")[shard as usize] = Some(actor.clone());
        // events appended while the registry still named the failed actor
        let _ = actor.send_message(ShardMsg::CatchUp);
        Ok(())
    }

    /// Starts the shard's actor on a task of its own; its recovery may take
    /// a while (snapshot objects, a rebuild), and other shards' starts go
    /// on meanwhile. The outcome comes back as [`SupMsg::Started`].
    fn begin_start(me: &ActorRef<SupMsg>, st: &mut SupervisorState, shard: u32) {
        st.starts += 1;
        let gen = st.starts;
        st.starting.insert(shard, gen);
        let args = ShardArgs {
            ctx: st.ctx.clone(),
            shard,
        };
        let (me, cell) = (me.clone(), me.get_cell());
        tokio::spawn(async move {
            let actor = Actor::spawn_linked(None, ShardActor, args, cell)
                .await
                .map(|(a, _)| a)
                .map_err(startup_error);
            if let Err(ractor::MessagingErr::SendErr(SupMsg::Started { actor: Ok(a), .. })) =
                me.send_message(SupMsg::Started { shard, gen, actor })
            {
                a.stop(Some(StopReason::Superseded.into())); // the supervisor is gone
            }
        });
    }

    /// A start ended: register the actor, or retry.
    fn started(
        me: &ActorRef<SupMsg>,
        st: &mut SupervisorState,
        shard: u32,
        gen: u64,
        actor: Result<ActorRef<ShardMsg>, ShardError>,
    ) {
        if st.starting.get(&shard) != Some(&gen) {
            if let Ok(a) = actor {
                a.stop(Some(StopReason::Superseded.into()));
            }
            return;
        }
        st.starting.remove(&shard);
        let again = st.again.remove(&shard);
        let ours =
            st.ctx.cluster.is_none() || st.ctx.held[shard as usize].load(Ordering::Relaxed) != 0;
        match actor {
            Ok(a) => {
                let died = match st.ended_early.iter().position(|id| *id == a.get_id()) {
                    Some(i) => {
                        st.ended_early.remove(i);
                        true
                    }
                    None => false,
                };
                if again || died || !ours {
                    a.stop(Some(StopReason::Superseded.into()));
                    if ours {
                        let _ = me.send_message(SupMsg::Restart(shard));
                    }
                    return;
                }
                st.owners.insert(a.get_id(), shard);
                st.ctx.shards.write().expect("shard registry")[shard as usize] = Some(a.clone());
                // events appended while the registry still named the failed
                // actor
                let _ = a.send_message(ShardMsg::CatchUp);
                st.backoff.remove(&shard);
            }
            Err(_) if again => {
                let _ = me.send_message(SupMsg::Restart(shard));
            }
            Err(e) => Supervisor::retry(me, st, shard, &e),
        }
    }

    /// Stops the shard's actor, if any, for good.
    fn stop_shard(st: &SupervisorState, shard: u32, why: StopReason) {
        let old = st.ctx.shards.write().expect("shard registry")[shard as usize].take();
        if let Some(a) = old {
            a.stop(Some(why.into()));
        }
    }

    fn retry(me: &ActorRef<SupMsg>, st: &mut SupervisorState, shard: u32, e: &ShardError) {
        let delay = st
            .backoff
            .entry(shard)
            .or_insert(std::time::Duration::from_millis(50));
        // a shard waiting for the control plane (an election) retries
        // often: its downtime is the cluster's recovery time
        let waiting = matches!(e, ShardError::Unavailable(_));
        let cap = if waiting { 500 } else { 5_000 };
        *delay = (*delay * 2).min(std::time::Duration::from_millis(cap));
        if waiting {
            tracing::info!(shard, "not started: {e}; retrying in {:?}", delay);
        } else {
            tracing::error!(shard, "restart failed: {e}; retrying in {:?}", delay);
        }
        let (me, delay) = (me.clone(), *delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = me.send_message(SupMsg::Restart(shard));
        });
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupervisorState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        me: ActorRef<SupMsg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut st = SupervisorState {
            ctx: ctx.clone(),
            owners: HashMap::new(),
            backoff: HashMap::new(),
            starting: HashMap::new(),
            starts: 0,
            again: Default::default(),
            ended_early: Default::default(),
        };
        // in a cluster, shards start as the shard map gives them to this node
        if ctx.cluster.is_none() {
            for s in 0..ctx.table.shards {
                Supervisor::start_shard(&me, &mut st, s).await?;
            }
        }
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if st.ctx.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        match msg {
            SupMsg::Release(shard) => {
                tracing::info!(shard, "the shard is another node's now: stopping it here");
                Supervisor::stop_shard(st, shard, StopReason::Released);
            }
            SupMsg::Start(shard) | SupMsg::Restart(shard) => {
                if matches!(msg, SupMsg::Restart(_))
                    && st.ctx.cluster.is_some()
                    && st.ctx.held[shard as usize].load(Ordering::Relaxed) == 0
                {
                    return Ok(()); // no longer ours
                }
                // never two actors for one shard: whatever is registered
                // (a failed actor, or one started by an earlier message)
                // stops first, and a start still running is redone when it
                // ends
                if st.starting.contains_key(&shard) {
                    st.again.insert(shard);
                    return Ok(());
                }
                Supervisor::stop_shard(st, shard, StopReason::Superseded);
                Supervisor::begin_start(&me, st, shard);
            }
            SupMsg::Started { shard, gen, actor } => {
                Supervisor::started(&me, st, shard, gen, actor);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(shard) = st.owners.remove(&cell.get_id()) else {
            // perhaps an actor whose start is not reported yet
            st.ended_early.push_back(cell.get_id());
            if st.ended_early.len() > 64 {
                st.ended_early.pop_front();
            }
            return Ok(());
        };
        if st.ctx.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let reason = StopReason::parse(&why);
        if reason.is_some_and(StopReason::is_final) {
            let mut reg = st.ctx.shards.write().expect("shard registry");
            if reg[shard as usize]
                .as_ref()
                .is_some_and(|a| a.get_id() == cell.get_id())
            {
                reg[shard as usize] = None;
            }
            if matches!(reason, Some(StopReason::Fenced | StopReason::HandedOff)) {
                tracing::info!(shard, "the shard left this node ({why})");
            }
            return Ok(());
        }
        if reason == Some(StopReason::PipelineChange) {
            tracing::info!(shard, "restarting the shard under the new pipeline");
        } else {
            tracing::error!(
                shard,
                "shard actor died ({why}); restarting from its checkpoint"
            );
            st.ctx.restarts[shard as usize].fetch_add(1, Ordering::Relaxed);
            st.ctx.metrics.restarts.inc();
        }
        // recovery can fail transiently (object store down): retried with
        // backoff through messages, so other shards are handled meanwhile
        let _ = me.send_message(SupMsg::Restart(shard));
        Ok(())
    }
}
