//! Events in, features out: applying the log, serving, status.

use super::{err, ShardError, ShardStatus, ShardWorker};

use crate::segments::SegmentInfo;
use lockstep_core::value::Value;
use lockstep_core::Outcome;
use std::sync::atomic::Ordering;

impl ShardWorker {
    /// Publishes how far the shard has processed its input (lag,
    /// backpressure).
    pub(super) fn publish_progress(&self) {
        self.ctx.processed[self.shard as usize].store(self.next_offset, Ordering::Relaxed);
    }

    pub(super) fn apply(&mut self, offset: u64, row: &[Value]) {
        // Kafka offsets may skip (transaction markers), never go back
        debug_assert!(offset >= self.next_offset);
        let strike = crate::plant::strike();
        if let Some(p) = strike {
            tracing::warn!(
                shard = self.shard,
                offset,
                "LOCKSTEP_DEBUG_PLANT: the planted bug strikes this record ({p:?})"
            );
            if p == crate::plant::Plant::Drop {
                self.next_offset = offset + 1;
                return;
            }
        }
        if let Value::Timestamp(t) = row[self.ctx.table.time] {
            self.times = (self.times.0.min(t), self.times.1.max(t));
        }
        let times = if strike == Some(crate::plant::Plant::Duplicate) {
            2
        } else {
            1
        };
        for _ in 0..times {
            let out = self
                .engine
                .push_to_shard(self.shard, row, &mut self.emitted);
            if let Outcome::Late { watermark, .. } = out {
                self.late.push((offset, watermark, row.to_vec()));
                self.ctx.metrics.late.inc();
            }
        }
        for e in self.emitted.drain(..) {
            self.training[e.view].push(e.row);
        }
        self.next_offset = offset + 1;
    }

    /// Features for a view by name, as `{"features": {...}}` (rendered
    /// here, by the pipeline whose engine computed them: a request may have
    /// been routed under one that `views apply` has since replaced).
    pub fn serve(&mut self, view: &str, event: &[Value]) -> Result<String, ShardError> {
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

    /// Serve-and-ingest: [`ShardWorker::serve`] for an event about to be
    /// applied (next, in order), with whether it will have a training row
    /// (`"training_row"`, lockstep_api::TrainingRow).
    pub fn serve_ingested(&mut self, view: &str, event: &[Value]) -> Result<String, ShardError> {
        use lockstep_core::window::RowFate;
        let v = self
            .pipe
            .view_index(view)
            .ok_or_else(|| ShardError::UnknownView(view.to_string()))?;
        let (row, fate) = self.engine.serve_with_fate(v, event).map_err(err)?;
        let (will_exist, reason, detail) = match fate {
            RowFate::Row => (Some(true), None, None),
            RowFate::Filtered => (
                Some(false),
                Some("filtered"),
                Some("the view's WHERE is not true for this event: it never enters the view".to_string()),
            ),
            RowFate::NotQualified => (
                Some(false),
                Some("not_qualified"),
                Some("the view's QUALIFY is not true for this event".to_string()),
            ),
            RowFate::QualifiedWhenFinal => (
                None,
                Some("qualify_reads_labels"),
                Some("the view's QUALIFY reads label columns: whether the row is kept is decided when its labels are final".to_string()),
            ),
            RowFate::Late { watermark } => (
                Some(false),
                Some("late"),
                Some(format!(
                    "the event's time is below its shard's watermark ({}): it changes no state and has no training row",
                    lockstep_core::time::format_rfc3339_ms(watermark)
                )),
            ),
        };
        let training_row = lockstep_api::TrainingRow {
            will_exist,
            reason: reason.map(str::to_string),
            detail,
        };
        Ok(format!(
            "{{\"features\":{},\"training_row\":{}}}",
            lockstep_io::render_json(&row, &self.pipe.view(v).output),
            serde_json::to_string(&training_row).map_err(ShardError::internal)?
        ))
    }

    /// The shard's status; `log_end` is the end of its input.
    pub fn status(&mut self, log_end: u64, restarts: u64) -> ShardStatus {
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
            failed: self.ctx.failed[self.shard as usize]
                .lock()
                .expect("failed lock")
                .clone(),
        }
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        let mut s = self.segments.clone();
        s.sort_by(|a, b| (&a.kind, &a.name, a.from_offset).cmp(&(&b.kind, &b.name, b.from_offset)));
        s
    }
}
