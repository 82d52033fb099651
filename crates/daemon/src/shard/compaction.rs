//! Compaction: runs of small segments merged in log order.
//!
//! The actor plans a compaction and hands it to a task: the segments are
//! read, merged and written outside the actor (which goes on processing
//! and serving), one merge at a time per node, in bounded memory whatever
//! the run's size (streamed: see [`merge`]). Each merged segment
//! goes back to the actor, which swaps it into the manifest
//! (`ShardMsg::CompactSwap`).

use super::{err, CompactReport, Reply, ShardError, ShardMode, ShardMsg, ShardWorker};

use crate::node::NodeCtx;
use crate::segments::{
    self, plan_compaction, plan_tiered_compaction, read_segment_chunks, ObjectWriter, SegmentError,
    SegmentInfo,
};
use lockstep_core::Schema;
use ractor::ActorRef;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Test hook (debug hooks only): each merge waits this long first, so a
/// test can act while a compaction runs.
pub static MERGE_STALL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One merge: a run of consecutive segments of one stream.
struct Merge {
    kind: String,
    name: String,
    /// The view's output (training segments); `None` for raw log slices.
    schema: Option<Schema>,
    group: Vec<SegmentInfo>,
    /// The merged object's extension (its attempt tag and format).
    ext: String,
}

impl ShardWorker {
    /// Plans a compaction of this shard's raw and training segments and
    /// starts it in a task; `reply` is answered when every run is merged
    /// and swapped in (or the first failure). One compaction per shard at
    /// a time.
    /// `tiered`: automatic compaction's plan ([`plan_tiered_compaction`]);
    /// otherwise every small run is merged (`segments compact`).
    pub fn start_compaction(
        &mut self,
        mode: &dyn ShardMode,
        me: &ActorRef<ShardMsg>,
        target_bytes: u64,
        tiered: bool,
        reply: Reply<CompactReport>,
    ) {
        let shard = self.shard;
        if self.compacting {
            let _ = reply.send(Err(ShardError::Unavailable(format!(
                "a compaction of shard {shard} is running; retry when it is done"
            ))));
            return;
        }
        let merges = self.plan_merges(mode, target_bytes, tiered);
        let before = self.segments.len();
        if merges.is_empty() {
            let _ = reply.send(Ok(CompactReport {
                shard,
                merged_groups: 0,
                segments_before: before,
                segments_after: before,
            }));
            return;
        }
        self.compacting = true;
        let (ctx, me) = (self.ctx.clone(), me.clone());
        tokio::spawn(async move {
            let mut merged_groups = 0;
            let mut after = before;
            let mut result = Ok(());
            for m in merges {
                match merge_and_swap(&ctx, &me, shard, m).await {
                    Ok(n) => {
                        after = n;
                        merged_groups += 1;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let _ = me.send_message(ShardMsg::CompactDone);
            let _ = reply.send(result.map(|()| CompactReport {
                shard,
                merged_groups,
                segments_before: before,
                segments_after: after,
            }));
        });
    }

    fn plan_merges(&self, mode: &dyn ShardMode, target_bytes: u64, tiered: bool) -> Vec<Merge> {
        let mut by_stream: HashMap<(String, String), Vec<SegmentInfo>> = HashMap::new();
        for s in &self.segments {
            if matches!(s.kind.as_str(), "raw" | "training" | "late" | "dead") {
                by_stream
                    .entry((s.kind.clone(), s.name.clone()))
                    .or_default()
                    .push(s.clone());
            }
        }
        let mut streams: Vec<_> = by_stream.into_iter().collect();
        streams.sort_by(|a, b| a.0.cmp(&b.0));
        let tag = mode.compaction_tag();
        let mut merges = Vec::new();
        for ((kind, name), segs) in streams {
            // late events and dead letters: JSON lines, one segment per
            // checkpoint that had any (never merged before: the manifest
            // grew with them)
            let lines = kind == "late" || kind == "dead";
            let (schema, format) = if kind == "raw" {
                (None, segments::RAW_EXT)
            } else if lines {
                (None, "jsonl")
            } else {
                match self.pipe.view_index(&name) {
                    Some(v) => (Some(self.pipe.view(v).output.clone()), "parquet"),
                    None => continue,
                }
            };
            // in a cluster, a name unique to this attempt (a fenced
            // attempt must not overwrite what the manifest lists)
            let ext = match &tag {
                Some(tag) => self.ctx.ext(&format!("{tag}.{format}")),
                None => self.ctx.ext(format),
            };
            // training ranges have gaps where a checkpoint's first events
            // made no row (late ones): merging across them keeps a gap
            // from holding its run apart for good (the soak's manifests
            // grew by it); raw slices must stay contiguous
            let gaps_ok = lines || kind == "training";
            let groups = if tiered || lines {
                plan_tiered_compaction(&segs, target_bytes, gaps_ok)
            } else {
                plan_compaction(&segs, target_bytes)
            };
            for group in groups {
                merges.push(Merge {
                    kind: kind.clone(),
                    name: name.clone(),
                    schema: schema.clone(),
                    group,
                    ext: ext.clone(),
                });
            }
        }
        merges
    }

    /// In the actor: swaps a merged segment in for its run; the number of
    /// segments after. The run must still be listed (the manifest only
    /// grows meanwhile: checkpoints append, and one compaction runs at a
    /// time).
    pub async fn swap_compacted(
        &mut self,
        mode: &dyn ShardMode,
        group: Vec<SegmentInfo>,
        merged: SegmentInfo,
    ) -> Result<usize, ShardError> {
        if !group.iter().all(|s| self.segments.contains(s)) {
            let p = object_store::path::Path::from(merged.path.as_str());
            let _ = object_store::ObjectStoreExt::delete(self.ctx.objects.as_ref(), &p).await;
            return Err(ShardError::Internal(format!(
                "shard {}: the compacted run is no longer in the manifest",
                self.shard
            )));
        }
        mode.swap_segments(self, &group, &merged).await?;
        self.segments.retain(|s| !group.contains(s));
        self.segments.push(merged);
        let ctx = self.ctx.clone();
        let reading = || {
            ctx.archive_readers
                .load(std::sync::atomic::Ordering::SeqCst)
                > 0
        };
        let later = mode.deletes_later();
        if later || reading() {
            // other nodes may be reading them under the manifest they
            // listed a moment ago (export, backfill), and a backfill here
            // reads each segment only when its replay reaches it: later
            tokio::spawn(async move {
                if later {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                }
                while ctx
                    .archive_readers
                    .load(std::sync::atomic::Ordering::SeqCst)
                    > 0
                {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                delete_segments(ctx.objects.as_ref(), &group).await;
            });
        } else {
            delete_segments(ctx.objects.as_ref(), &group).await;
        }
        Ok(self.segments.len())
    }
}

/// Outside the actor: merges a run into one segment (on a blocking thread,
/// one merge at a time per node) and has the actor swap it in; the number
/// of segments after.
async fn merge_and_swap(
    ctx: &Arc<NodeCtx>,
    me: &ActorRef<ShardMsg>,
    shard: u32,
    m: Merge,
) -> Result<usize, ShardError> {
    let group = m.group.clone();
    let merged = {
        let _one = ctx.compactions.acquire().await.map_err(err)?;
        let stall = MERGE_STALL_MS.load(std::sync::atomic::Ordering::Relaxed);
        if stall > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(stall)).await;
        }
        let (store, spool) = (ctx.objects.clone(), ctx.config.data_dir.join("spool"));
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || merge(&rt, store, &spool, shard, &m))
            .await
            .map_err(err)?
            .map_err(err)?
    };
    let (tx, rx) = oneshot::channel();
    let gone = || {
        ShardError::Unavailable(format!(
            "shard {shard} restarted during its compaction; retry"
        ))
    };
    let path = merged.path.clone();
    let sent = me.send_message(ShardMsg::CompactSwap {
        group,
        merged,
        reply: tx,
    });
    if sent.is_err() {
        // the actor was gone before it saw the segment: it is in no
        // manifest, nobody's (once sent, a swap whose outcome is unknown
        // may have committed it: then it stays, for garbage collection)
        let p = object_store::path::Path::from(path.as_str());
        let _ = object_store::ObjectStoreExt::delete(ctx.objects.as_ref(), &p).await;
        return Err(gone());
    }
    rx.await.map_err(|_| gone())?
}

/// Merges a run into one segment, in bounded memory: the merged object is
/// uploaded in parts as it is written ([`ObjectWriter`]); raw slices are
/// copied chunk by chunk as they download, undecoded; Parquet parts are
/// downloaded to a file under `spool` (deleted when closed) and read a
/// record batch at a time. A damaged part fails the merge (its upload is
/// aborted). Runs on a blocking thread (`rt.block_on`).
fn merge(
    rt: &tokio::runtime::Handle,
    store: Arc<dyn object_store::ObjectStore>,
    spool: &std::path::Path,
    shard: u32,
    m: &Merge,
) -> Result<SegmentInfo, SegmentError> {
    let (from, to) = (m.group[0].from_offset, m.group[m.group.len() - 1].to_offset);
    let lo = m.group.iter().map(|s| s.min_time).min().unwrap_or(i64::MAX);
    let hi = m.group.iter().map(|s| s.max_time).max().unwrap_or(i64::MIN);
    let path = segments::segment_path(&m.kind, &m.name, shard, from, to, &m.ext);
    let out = ObjectWriter::new(
        rt.clone(),
        store.clone(),
        &path,
        segments::STREAM_PART_BYTES,
    );
    let (out, rows) = match &m.schema {
        None if m.kind == "raw" => merge_raw(rt, store.as_ref(), &m.group, out)?,
        None => merge_lines(rt, store.as_ref(), &m.group, out)?,
        Some(schema) => {
            std::fs::create_dir_all(spool).map_err(|e| spool_error(spool, e))?;
            let mut w = lockstep_io::ParquetStream::new(&path, schema, out)?;
            for s in &m.group {
                let mut file = tempfile::tempfile_in(spool).map_err(|e| spool_error(spool, e))?;
                read_segment_chunks(rt, store.as_ref(), s, &mut |c| {
                    file.write_all(c).map_err(|e| spool_error(spool, e))
                })?;
                for row in lockstep_io::parquet_rows(&s.path, file, schema)? {
                    w.write(&row?)?;
                }
            }
            w.finish()?
        }
    };
    let (bytes, crc32) = out.finish()?;
    Ok(SegmentInfo {
        kind: m.kind.clone(),
        name: m.name.clone(),
        shard,
        path,
        from_offset: from,
        to_offset: to,
        min_time: lo,
        max_time: hi,
        rows,
        bytes,
        crc32,
    })
}

/// Raw slices concatenate without decoding: one header (the first offset,
/// the records of all), then each slice's framed records as they arrive.
/// Each slice's header must say what the manifest says of it.
fn merge_raw(
    rt: &tokio::runtime::Handle,
    store: &dyn object_store::ObjectStore,
    group: &[SegmentInfo],
    mut out: ObjectWriter,
) -> Result<(ObjectWriter, u64), SegmentError> {
    use lockstep_io::raw::{parse_raw_header, raw_header, RAW_HEADER};
    let total: u64 = group.iter().map(|s| s.rows).sum();
    out.write_all(&raw_header(group[0].from_offset, total))
        .map_err(SegmentError::Upload)?;
    for s in group {
        let mut head = Vec::with_capacity(RAW_HEADER);
        read_segment_chunks(rt, store, s, &mut |mut c| {
            if head.len() < RAW_HEADER {
                let take = (RAW_HEADER - head.len()).min(c.len());
                head.extend_from_slice(&c[..take]);
                c = &c[take..];
                if head.len() == RAW_HEADER {
                    let said = parse_raw_header(&s.path, &head)?;
                    if said != (s.from_offset, s.rows) {
                        return Err(damaged(
                            s,
                            format!(
                                "its header says {} records from offset {}, the manifest {} from {}",
                                said.1, said.0, s.rows, s.from_offset
                            ),
                        ));
                    }
                }
            }
            out.write_all(c).map_err(SegmentError::Upload)
        })?;
        if head.len() < RAW_HEADER {
            return Err(damaged(s, "shorter than its header".into()));
        }
    }
    Ok((out, total))
}

/// JSON-lines segments (late events, dead letters) concatenate: each
/// part's lines in turn, a part that does not end its last line given its
/// newline.
fn merge_lines(
    rt: &tokio::runtime::Handle,
    store: &dyn object_store::ObjectStore,
    group: &[SegmentInfo],
    mut out: ObjectWriter,
) -> Result<(ObjectWriter, u64), SegmentError> {
    for s in group {
        let mut last = b'\n';
        read_segment_chunks(rt, store, s, &mut |c| {
            if let Some(&b) = c.last() {
                last = b;
            }
            out.write_all(c).map_err(SegmentError::Upload)
        })?;
        if last != b'\n' {
            out.write_all(b"\n").map_err(SegmentError::Upload)?;
        }
    }
    Ok((out, group.iter().map(|s| s.rows).sum()))
}

fn damaged(s: &SegmentInfo, message: String) -> SegmentError {
    SegmentError::Raw(lockstep_io::raw::RawError::Segment {
        path: s.path.clone(),
        message,
    })
}

fn spool_error(dir: &std::path::Path, source: std::io::Error) -> SegmentError {
    SegmentError::Spool {
        dir: dir.to_path_buf(),
        source,
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
