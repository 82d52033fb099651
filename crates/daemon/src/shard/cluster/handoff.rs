//! A cluster shard leaving: once its last checkpoint is committed, the
//! shard goes to the move's target.
use crate::node::NodeCtx;
use crate::shard::ShardMsg;
use crate::shard::ShardWorker;
use crate::shard::StopReason;
use lockstep_cluster::state::Command;
use lockstep_cluster::state::Response;
use ractor::ActorRef;
use std::sync::atomic::Ordering;

use super::ClusterShard;

impl ClusterShard {
    /// Gives the shard to the move's target once the last checkpoint is
    /// committed; then this actor stops.
    pub(super) fn hand_off(&mut self, w: &ShardWorker, me: &ActorRef<ShardMsg>) {
        if self.handoff_sent {
            return;
        }
        self.handoff_sent = true;
        let (cl, shard, owner_epoch, me) =
            (self.ctx.clone(), w.shard, self.owner_epoch, me.clone());
        // gives the shard back to the shard map only if this node still
        // holds it under this actor's epoch (not a newer one)
        let release = move |held: &NodeCtx| {
            let _ = held.held[shard as usize].compare_exchange(
                owner_epoch,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        };
        let held = w.ctx.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let cmd = Command::Handoff {
                    shard,
                    from: cl.id,
                    owner_epoch,
                };
                match cl.cp.propose(cmd).await {
                    Ok(Response::Done) => {
                        tracing::info!(shard, "handed off");
                        me.stop(Some(StopReason::HandedOff.into()));
                        return;
                    }
                    Ok(Response::Rejected(why)) => {
                        // the move was called off, or the shard is gone
                        // already: let the shard map decide what runs here
                        tracing::warn!(shard, "hand-off refused: {why}");
                        release(&held);
                        me.stop(Some(StopReason::Fenced.into()));
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(shard, "hand-off: {e}; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
            release(&held);
            me.stop(Some(StopReason::Fenced.into()));
        });
    }
}
