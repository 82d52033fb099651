//! Events in, features out: applying the log, serving, status.

use super::{err, Reply, ShardError, ShardStatus, ShardWorker};

use crate::segments::SegmentInfo;
use lockstep_core::value::{Row, Value};
use lockstep_core::Outcome;
use lockstep_log::Log;
use std::sync::atomic::Ordering;

impl ShardWorker {
    pub(super) fn apply(&mut self, offset: u64, row: &[Value]) {
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
}
