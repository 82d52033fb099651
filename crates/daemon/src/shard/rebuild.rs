//! Rebuilds under a new pipeline: the shard's archive replayed through the
//! new operators, the full history of new and changed views written.

use super::{err, ShardError, ShardWorker};

use crate::pipeline::view_fingerprint;
use crate::segments::{decode_raw, get_segment, put_segment, SegmentInfo};
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
    /// start up to offset `to`) through the engine, keeping the training
    /// rows of the views in `emit`. Returns them and the events replayed.
    pub(super) async fn replay_archive(
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
    pub(super) async fn put_rebuilt(
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
