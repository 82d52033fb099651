//! Checkpoints: the delta taken on the actor, written and committed by a
//! task beside it, the outcome applied back.

use super::mode::{Committer, ShardMode, SourceRows};
use super::rebuild::view_time_range;
use super::{err, CheckpointReport, Reply, ShardError, ShardMsg, ShardWorker, StopReason};

use crate::node::NodeCtx;
use crate::pipeline::Pipeline;
use crate::segments::{self, put_segment, SegmentInfo};
use crate::store::CheckpointInfo;
use lockstep_cluster::state::SnapshotPart;
use lockstep_core::value::{Row, Value};
use ractor::ActorRef;
use std::sync::Arc;
use std::time::Instant;

impl ShardWorker {
    /// Starts a checkpoint: takes the state delta and the rows to commit
    /// (cheap, on the actor), and writes them in a separate task so the shard
    /// keeps serving meanwhile. At most one runs per shard; a request during
    /// one is served by the next, which starts when it ends. The result comes
    /// back as [`ShardMsg::CheckpointDone`].
    pub fn start_checkpoint(
        &mut self,
        mode: &mut dyn ShardMode,
        me: &ActorRef<ShardMsg>,
        reply: Option<Reply<CheckpointReport>>,
    ) {
        if self.pipe.fingerprint() != self.ctx.pipeline().fingerprint() {
            // `views apply` switched the node while this actor was starting
            // (too late for the swap it sends): rebuild under the new views
            drop(reply);
            let _ = me.send_message(ShardMsg::Swap { reply: None });
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
        let unchanged = |w: &ShardWorker| w.ckpt.seq > 0 && w.late.is_empty() && !mode.pending();
        if from == to && unchanged(self) {
            // no event since the last checkpoint, so no state change
            self.report_unchanged(replies, 0.0);
            return;
        }
        let full = mode.wants_full_snapshot();
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
            source: mode.take_rows(self),
        };
        let job = CheckpointJob {
            ctx: self.ctx.clone(),
            pipe: self.pipe.clone(),
            shard: self.shard,
            from,
            to,
            seq: self.ckpt.seq,
            delta,
            committer: mode.committer(full),
            unsaved,
        };
        self.spawn_checkpoint(mode, me, job, started, replies);
    }

    /// Runs the checkpoint `job` in a task holding the shard's checkpoint
    /// lock; its outcome comes back to the actor.
    fn spawn_checkpoint(
        &mut self,
        mode: &mut dyn ShardMode,
        me: &ActorRef<ShardMsg>,
        job: CheckpointJob,
        started: Instant,
        replies: Vec<Reply<CheckpointReport>>,
    ) {
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
                self.put_back(mode, job.unsaved);
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

    pub(super) fn report_unchanged(&self, replies: Vec<Reply<CheckpointReport>>, millis: f64) {
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
    pub(super) fn put_back(&mut self, mode: &mut dyn ShardMode, u: Unsaved) {
        let Unsaved {
            mut training,
            mut late,
            times,
            source,
        } = u;
        self.times = (self.times.0.min(times.0), self.times.1.max(times.1));
        for (old, new) in training.iter_mut().zip(&mut self.training) {
            old.append(new);
            std::mem::swap(old, new);
        }
        late.append(&mut self.late);
        self.late = late;
        mode.put_back(source);
    }

    /// Keeps the manifest short: once it holds more than
    /// `auto_compact_segments` segments, runs of segments of like size are
    /// merged (up to 64 MiB each, in the background; tiered, so a large
    /// segment is not copied again at every compaction), so the replicated
    /// state grows with the data, not with the checkpoints.
    pub(super) fn compact_if_long(&mut self, mode: &dyn ShardMode, me: &ActorRef<ShardMsg>) {
        let limit = self.ctx.config.auto_compact_segments;
        if limit == 0 || self.compacting || self.segments.len() <= limit {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.start_compaction(mode, me, AUTO_COMPACT_TARGET_BYTES, true, tx);
        let (shard, me) = (self.shard, me.clone());
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(r)) if r.merged_groups > 0 => {
                    tracing::info!(
                        shard,
                        "compacted its manifest: {} segments, now {}",
                        r.segments_before,
                        r.segments_after
                    );
                    let _ = me.send_message(ShardMsg::AutoCompact);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(shard, "compacting its manifest: {e}"),
                Err(_) => {}
            }
        });
    }

    /// Applies a finished checkpoint to the actor's view of its manifest.
    pub fn finish_checkpoint(
        &mut self,
        mode: &mut dyn ShardMode,
        me: &ActorRef<ShardMsg>,
        done: CheckpointOutcome,
        started: Instant,
        replies: Vec<Reply<CheckpointReport>>,
    ) {
        self.in_flight = false;
        let result = match done {
            Ok(saved) => {
                mode.committed(self, &saved);
                let info = saved.info;
                let to = info.log_offset;
                let n_added = saved.added.len();
                self.segments.extend(saved.added);
                self.ckpt = info.clone();
                let secs = started.elapsed().as_secs_f64();
                self.ctx.metrics.checkpoint_seconds.observe(secs);
                self.ctx.metrics.checkpoints.inc();
                self.compact_if_long(&*mode, me);
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
                self.put_back(mode, *unsaved);
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
        if self.swap_pending {
            // a pipeline swap waited for this checkpoint
            let _ = me.send_message(ShardMsg::Swap { reply: None });
        } else if self.again {
            self.start_checkpoint(mode, me, None);
        }
        mode.after_checkpoint(self, me);
    }
}

/// One checkpoint's data, written off the actor.
pub struct CheckpointJob {
    pub(super) ctx: Arc<NodeCtx>,
    pub(super) pipe: Arc<Pipeline>,
    pub(super) shard: u32,
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) seq: u64,
    pub(super) delta: crate::store::EncodedDelta,
    /// How it archives and commits (the node's mode).
    pub(super) committer: Box<dyn Committer>,
    /// The rows it commits; they go back to the actor if it fails.
    pub(super) unsaved: Unsaved,
}

impl CheckpointJob {
    /// Writes the archive slice `from..to` as one raw segment of `count`
    /// framed records.
    pub(super) async fn put_raw(
        &self,
        count: u64,
        framed: &[u8],
    ) -> Result<SegmentInfo, ShardError> {
        let bytes = segments::raw_segment(self.from, count, framed);
        put_segment(
            self.ctx.objects.as_ref(),
            "raw",
            &self.ctx.table.name,
            self.shard,
            self.from,
            self.to,
            &self.ext(segments::RAW_EXT),
            bytes,
            count,
            self.unsaved.times,
        )
        .await
        .map_err(err)
    }

    /// The end of this checkpoint's object names: the data directory's id,
    /// then (cluster) the owner epoch and a nonce, so no attempt ever
    /// overwrites another's objects, then the format.
    pub(super) fn ext(&self, format: &str) -> String {
        match self.committer.tag() {
            Some(tag) => self.ctx.ext(&format!("{tag}.{format}")),
            None => self.ctx.ext(format),
        }
    }
}

pub(super) type LateRow = (u64, i64, Row);

/// Rows taken for a checkpoint, not yet committed.
pub struct Unsaved {
    pub(super) training: Vec<Vec<Row>>,
    pub(super) late: Vec<LateRow>,
    /// Event-time range of the log slice.
    pub(super) times: (i64, i64),
    /// What the input keeps until a checkpoint (a cluster's archive slice
    /// and dead letters).
    pub(super) source: SourceRows,
}

/// A committed checkpoint: its info, new segments and training rows, and
/// (cluster) its snapshot objects.
pub struct Saved {
    pub(super) info: CheckpointInfo,
    pub(super) added: Vec<SegmentInfo>,
    pub(super) training_rows: u64,
    pub(super) chain: Option<Vec<SnapshotPart>>,
    /// The cluster epoch it answers (0 on one node).
    pub(super) epoch: u64,
}

/// A checkpoint's result; or the error with the rows it could not commit.
pub type CheckpointOutcome = Result<Saved, (ShardError, Box<Unsaved>)>;

/// Archives the log slice, writes the training and late rows, and commits
/// them with the state delta (as the node's mode commits: one atomic batch,
/// or through the control plane with a snapshot object).
pub(super) async fn write_checkpoint(job: &CheckpointJob) -> Result<Saved, ShardError> {
    let ctx = job.ctx.clone();
    let (from, to) = (job.from, job.to);
    let store = ctx.objects.as_ref();
    let table = &ctx.table;
    let mut added = Vec::new();
    if let Some(raw) = job.committer.archive(job).await? {
        added.push(raw);
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
    job.committer.commit(job, added, training_rows).await
}

/// What automatic compaction merges segments up to.
pub const AUTO_COMPACT_TARGET_BYTES: u64 = 64 << 20;
