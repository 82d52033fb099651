//! A shard on one node: its input is the embedded log (the ingest writer
//! appends and sends `Events`; a gap left by a restart is read back), its
//! checkpoint one atomic sled batch (state delta, offset and manifest),
//! after which the log below the offset is truncated.

use super::checkpoint::{CheckpointJob, Saved};
use super::mode::{Commits, Committer, Input, Manifest, SourceRows, Tenure};
use super::{err, Reply, ShardError, ShardMsg, ShardWorker};
use crate::segments::SegmentInfo;
use crate::store::{Commit, Loaded};
use futures::future::BoxFuture;
use futures::FutureExt;
use lockstep_core::value::Row;
use lockstep_log::kafka::KafkaRecord;
use lockstep_log::Log;
use ractor::ActorRef;

/// A shard on one node; all its state is the worker's.
pub struct LocalShard;

impl LocalShard {
    /// Restores the last checkpoint from the state store, deletes objects
    /// of interrupted checkpoints, rebuilds if the checkpoint was taken
    /// for other views, and replays the log from the checkpoint's offset.
    pub(super) async fn recover(
        w: &mut ShardWorker,
        loaded: Option<Loaded>,
    ) -> Result<LocalShard, ShardError> {
        let shard = w.shard;
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
        let mut mode = LocalShard;
        mode.catch_up(w)?;
        Ok(mode)
    }

    /// Applies the log's records `w.next_offset..end`; with `strict`, a
    /// record missing there is an error (else reading stops at it).
    fn read_log(w: &mut ShardWorker, end: u64, strict: bool) -> Result<(), ShardError> {
        let log = w.ctx.log.clone();
        while w.next_offset < end {
            let recs = log
                .read(
                    w.shard,
                    w.next_offset,
                    8192.min(end - w.next_offset) as usize,
                )
                .map_err(err)?;
            if recs.is_empty() && !strict {
                return Ok(());
            }
            if recs.is_empty() {
                return Err(ShardError::Internal(format!(
                    "shard {}: log records {}..{end} are missing",
                    w.shard, w.next_offset
                )));
            }
            for r in recs {
                let row = lockstep_io::raw::decode_event(&r.bytes).map_err(err)?;
                w.apply(r.offset, &row);
            }
        }
        Ok(())
    }
}

impl Input for LocalShard {
    fn start_reading(&mut self, _w: &ShardWorker, _me: &ActorRef<ShardMsg>) {}

    fn stop_reading(&mut self) {}

    fn on_events(
        &mut self,
        w: &mut ShardWorker,
        first: u64,
        rows: Vec<Row>,
        serve: Option<(String, Reply<String>)>,
    ) -> Result<(), ShardError> {
        if first > w.next_offset {
            // a message went to a predecessor of this actor: read the gap
            LocalShard::read_log(w, first, true)?;
        }
        let mut serve = serve;
        for (i, row) in rows.into_iter().enumerate() {
            let off = first + i as u64;
            if off < w.next_offset {
                continue; // already replayed from the log
            }
            if let Some((view, reply)) = serve.take() {
                let _ = reply.send(w.serve_ingested(&view, &row));
            }
            w.apply(off, &row);
        }
        if let Some((_, reply)) = serve {
            let _ = reply.send(Err(ShardError::Unavailable(
                "the event was processed during a shard restart; its features are in its training row"
                    .into(),
            )));
        }
        Ok(())
    }

    fn on_records(
        &mut self,
        w: &mut ShardWorker,
        _recs: Vec<KafkaRecord>,
    ) -> Result<(), ShardError> {
        Err(ShardError::Internal(format!(
            "shard {}: partition records reached a shard that reads the embedded log",
            w.shard
        )))
    }

    fn catch_up(&mut self, w: &mut ShardWorker) -> Result<(), ShardError> {
        let end = w.ctx.log.end_offset(w.shard).map_err(err)?;
        LocalShard::read_log(w, end, false)
    }

    fn serve_when_seen(
        &mut self,
        w: &ShardWorker,
        _key: String,
        _view: String,
        reply: Reply<String>,
    ) {
        let _ = reply.send(Err(ShardError::Internal(format!(
            "shard {}: serve-when-seen is answered by the writer on one node",
            w.shard
        ))));
    }

    fn log_end(&self, w: &ShardWorker) -> u64 {
        w.ctx.log.end_offset(w.shard).unwrap_or(w.next_offset)
    }

    fn take_rows(&mut self, _w: &ShardWorker) -> SourceRows {
        SourceRows::default()
    }

    fn put_back(&mut self, _rows: SourceRows) {}
}

impl Tenure for LocalShard {
    fn check_serving(&self, _w: &ShardWorker) -> Result<(), ShardError> {
        Ok(())
    }

    fn begin_handoff(&mut self, _w: &mut ShardWorker, _me: &ActorRef<ShardMsg>) {}

    fn after_checkpoint(&mut self, _w: &mut ShardWorker, _me: &ActorRef<ShardMsg>) {}
}

impl Commits for LocalShard {
    fn pending(&self) -> bool {
        false
    }

    fn wants_full_snapshot(&self) -> bool {
        false
    }

    fn committer(&mut self, _full: bool) -> Box<dyn Committer> {
        Box::new(LocalCommitter)
    }

    fn committed(&mut self, w: &ShardWorker, saved: &Saved) {
        // everything below the offset is archived and in the state
        if let Err(e) = w.ctx.log.truncate_below(w.shard, saved.info.log_offset) {
            tracing::warn!(shard = w.shard, "log truncation failed: {e}");
        }
    }
}

impl Manifest for LocalShard {
    fn compaction_tag(&self) -> Option<String> {
        None
    }

    fn swap_segments<'a>(
        &'a self,
        w: &'a ShardWorker,
        remove: &'a [SegmentInfo],
        merged: &'a SegmentInfo,
    ) -> BoxFuture<'a, Result<(), ShardError>> {
        let r = w
            .ctx
            .state
            .swap_segments(w.shard, remove, std::slice::from_ref(merged))
            .map_err(err);
        async move { r }.boxed()
    }

    /// Later too: a client exporting or backfilling lists the manifest,
    /// then fetches each object over the API, and compaction now runs on
    /// its own after checkpoints. (A node killed within that minute
    /// leaves the replaced objects on disk, never read again.)
    fn deletes_later(&self) -> bool {
        true
    }
}

/// One node's checkpoint commit: the archive slice read from the embedded
/// log, then one atomic batch in the state store.
struct LocalCommitter;

impl Committer for LocalCommitter {
    fn tag(&self) -> Option<String> {
        None
    }

    fn archive<'a>(
        &'a self,
        job: &'a CheckpointJob,
    ) -> BoxFuture<'a, Result<Option<SegmentInfo>, ShardError>> {
        async move {
            let (from, to) = (job.from, job.to);
            if to == from {
                return Ok(None);
            }
            let ctx = &job.ctx;
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
            let seg = job.put_raw(n, &framed).await?;
            Ok(Some(seg))
        }
        .boxed()
    }

    fn commit<'a>(
        &'a self,
        job: &'a CheckpointJob,
        added: Vec<SegmentInfo>,
        training_rows: u64,
    ) -> BoxFuture<'a, Result<Saved, ShardError>> {
        async move {
            let ctx = &job.ctx;
            // the log below `to` must be durable before a checkpoint says so
            // (with fsync every N ms it may not be yet)
            ctx.log.flush().map_err(err)?;
            let info = ctx
                .state
                .commit(
                    job.shard,
                    Commit {
                        meta: &job.delta.meta,
                        slots: &job.delta.slots,
                        seq: job.seq + 1,
                        log_offset: job.to,
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
        .boxed()
    }
}
