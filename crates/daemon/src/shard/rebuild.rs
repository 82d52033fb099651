//! Rebuilds under a new pipeline: the shard's archive replayed through the
//! new operators, the full history of new and changed views written.

use super::{err, ShardError, ShardWorker};

use crate::pipeline::view_fingerprint;
use crate::segments::{
    read_raw_events, segment_path, ObjectWriter, RawReadError, SegmentInfo, STREAM_PART_BYTES,
};
use crate::store::Commit;
use lockstep_core::value::{Row, Value};
use std::time::Instant;

impl ShardWorker {
    pub(super) fn log_rebuilt(&self, emit: &[bool], events: u64, started: Instant) {
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
    pub(super) fn views_to_emit(&self, built_for: &str) -> Vec<bool> {
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
    /// start up to offset `to`) through the engine and writes the training
    /// rows of the views in `emit` as one segment per view (covering
    /// offsets `0..to`, named with `ext`; none for a view with no rows).
    /// Returns the segments and the events replayed.
    ///
    /// In bounded memory: each raw segment is decoded as it downloads and
    /// each view's rows are uploaded in parts as they are written. The
    /// replay blocks this actor's thread (the runtime moves its other tasks
    /// elsewhere), as it did while awaiting each segment whole.
    pub(super) async fn rebuild_training(
        &mut self,
        segments: &[SegmentInfo],
        to: u64,
        emit: &[bool],
        ext: &str,
    ) -> Result<(Vec<SegmentInfo>, u64), ShardError> {
        let shard = self.shard;
        let mut raw: Vec<SegmentInfo> = segments
            .iter()
            .filter(|s| s.kind == "raw")
            .cloned()
            .collect();
        raw.sort_by_key(|s| s.from_offset);
        let mut at = raw.first().map_or(0, |s| s.from_offset);
        if at != 0 && to > 0 {
            return Err(ShardError::Internal(format!(
                "shard {shard}: the archive starts at offset {at}, not 0; cannot rebuild"
            )));
        }
        for s in &raw {
            if s.from_offset != at {
                return Err(ShardError::Internal(format!(
                    "shard {shard}: the archive has a gap at {at}..{}",
                    s.from_offset
                )));
            }
            at = s.to_offset;
        }
        if at != to {
            return Err(ShardError::Internal(format!(
                "shard {shard}: the archive ends at {at} but the checkpoint is at {to}"
            )));
        }
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| self.replay_into_segments(&rt, &raw, to, emit, ext))
    }

    fn replay_into_segments(
        &mut self,
        rt: &tokio::runtime::Handle,
        raw: &[SegmentInfo],
        to: u64,
        emit: &[bool],
        ext: &str,
    ) -> Result<(Vec<SegmentInfo>, u64), ShardError> {
        /// One view's segment while it is written.
        struct Out {
            w: lockstep_io::ParquetStream<ObjectWriter>,
            path: String,
            lo: i64,
            hi: i64,
        }
        let shard = self.shard;
        let store = self.ctx.objects.clone();
        let table = &self.ctx.table;
        let time_name = &table.schema.columns[table.time].name;
        let views: Vec<(String, lockstep_core::Schema, Option<usize>)> = (0..emit.len())
            .map(|v| {
                let view = self.pipe.view(v);
                let time = view.output.index_of(time_name);
                (view.name.clone(), view.output.clone(), time)
            })
            .collect();
        let mut outs: Vec<Option<Out>> = (0..emit.len()).map(|_| None).collect();
        let mut events = 0u64;
        for s in raw {
            let (engine, emitted) = (&mut self.engine, &mut self.emitted);
            let mut each = |_, row: Row| -> Result<(), ShardError> {
                engine.push_to_shard(shard, &row, emitted);
                events += 1;
                for e in emitted.drain(..) {
                    if !emit[e.view] {
                        continue;
                    }
                    let out = match &mut outs[e.view] {
                        Some(o) => o,
                        slot => {
                            let (name, schema, _) = &views[e.view];
                            let path = segment_path("training", name, shard, 0, to, ext);
                            let w = ObjectWriter::new(
                                rt.clone(),
                                store.clone(),
                                &path,
                                STREAM_PART_BYTES,
                            );
                            slot.insert(Out {
                                w: lockstep_io::ParquetStream::new(&path, schema, w)
                                    .map_err(err)?,
                                path,
                                lo: i64::MAX,
                                hi: i64::MIN,
                            })
                        }
                    };
                    if let Some(Value::Timestamp(t)) = views[e.view].2.map(|c| &e.row[c]) {
                        out.lo = out.lo.min(*t);
                        out.hi = out.hi.max(*t);
                    }
                    out.w.write(&e.row).map_err(err)?;
                }
                Ok(())
            };
            read_raw_events(rt, store.as_ref(), s, &mut each).map_err(|e| match e {
                RawReadError::Stopped(e) => e,
                RawReadError::Segment(e) => err(e),
            })?;
        }
        let mut added = Vec::new();
        for (v, out) in outs.into_iter().enumerate() {
            let Some(out) = out else { continue };
            let (w, rows) = out.w.finish().map_err(err)?;
            let (bytes, crc32) = w.finish().map_err(err)?;
            added.push(SegmentInfo {
                kind: "training".into(),
                name: views[v].0.clone(),
                shard,
                path: out.path,
                from_offset: 0,
                to_offset: to,
                min_time: out.lo,
                max_time: out.hi,
                rows,
                bytes,
                crc32,
            });
        }
        Ok((added, events))
    }

    /// The training segments a rebuild replaces: those of the views it
    /// writes again.
    pub(super) fn replaced_by_rebuild(
        &self,
        segments: &[SegmentInfo],
        emit: &[bool],
    ) -> Vec<SegmentInfo> {
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
    pub(super) async fn rebuild(&mut self, l: crate::store::Loaded) -> Result<(), ShardError> {
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
        let seq = l.info.seq + 1;
        let (added, events) = self
            .rebuild_training(
                &l.segments,
                at,
                &emit,
                &ctx.ext(&format!("rebuild{seq}.parquet")),
            )
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
}

/// Smallest and largest event time among rows of `view` (by the column named
/// like the table's event time; `(i64::MAX, i64::MIN)` if none).
pub(super) fn view_time_range(
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
