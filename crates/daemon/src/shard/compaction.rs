//! Compaction: runs of small segments merged in log order.

use super::{err, CompactReport, ShardError, ShardMode, ShardWorker};

use crate::segments::{self, get_segment, plan_compaction, put_segment, SegmentInfo};
use std::collections::HashMap;

impl ShardWorker {
    /// Merges runs of small raw and training segments into larger ones,
    /// in log order, and swaps them in the manifest atomically.
    pub async fn compact(
        &mut self,
        mode: &dyn ShardMode,
        target_bytes: u64,
    ) -> Result<CompactReport, ShardError> {
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
                let ext = match mode.compaction_tag() {
                    Some(tag) => ctx.ext(&format!("{tag}.{ext}")),
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
                mode.swap_segments(self, &group, &merged).await?;
                self.segments.retain(|s| !group.contains(s));
                self.segments.push(merged);
                if mode.deletes_later() {
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
