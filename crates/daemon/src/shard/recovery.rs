//! Recovery: a shard's last checkpoint restored, leftovers of interrupted
//! checkpoints deleted, and the log replayed from the checkpoint's offset.

use super::mode::recover_mode;
use super::{err, Shard, ShardError, ShardWorker};

use crate::node::NodeCtx;
use crate::segments::{delete_orphans, shard_prefix};
use crate::store::CheckpointInfo;
use lockstep_core::Engine;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl ShardWorker {
    /// Restores the last checkpoint, removes objects of interrupted
    /// checkpoints, and replays the log from the checkpoint's offset.
    pub async fn recover(ctx: Arc<NodeCtx>, shard: u32) -> Result<Shard, ShardError> {
        let pipe = ctx.pipeline();
        let engine = Engine::new(pipe.catalog.clone(), &pipe.view_name_refs()).map_err(err)?;
        // a failed predecessor's checkpoint may still be writing: load after it
        let lock = ctx.checkpoint_locks[shard as usize].clone();
        let _guard = lock.lock().await;
        let loaded = ctx.state.load(shard).map_err(err)?;
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
            swap_pending: false,
            swaps: Vec::new(),
            compacting: false,
        };
        let mode = recover_mode(&mut w, loaded).await?;
        w.ctx.processed[shard as usize].store(w.next_offset, Ordering::Relaxed);
        Ok(Shard { w, mode })
    }

    pub(super) fn prefixes(&self) -> Vec<(String, String)> {
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

    pub(super) async fn delete_orphans(&self) -> Result<(), ShardError> {
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
}
