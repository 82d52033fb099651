//! The ractor actor around a shard's worker: messages in mailbox order.

use super::{Shard, ShardError, ShardMsg, ShardWorker, StopReason};

use crate::node::NodeCtx;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct ShardActor;

pub struct ShardArgs {
    pub ctx: Arc<NodeCtx>,
    pub shard: u32,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = Shard;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<Shard, ActorProcessingErr> {
        let shard = ShardWorker::recover(args.ctx.clone(), args.shard).await?;
        // a rebuild of a predecessor that died midway is over
        args.ctx.rebuilding[args.shard as usize].store(false, Ordering::Relaxed);
        Ok(shard)
    }

    async fn post_start(
        &self,
        me: ActorRef<ShardMsg>,
        s: &mut Shard,
    ) -> Result<(), ActorProcessingErr> {
        s.mode.start_reading(&s.w, &me);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ShardMsg>,
        s: &mut Shard,
    ) -> Result<(), ActorProcessingErr> {
        s.mode.stop_reading();
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        s: &mut Shard,
    ) -> Result<(), ActorProcessingErr> {
        let Shard { w, mode } = s;
        let mode = mode.as_mut();
        match msg {
            ShardMsg::Events { first, rows, serve } => {
                mode.on_events(w, first, rows, serve)?;
                w.publish_progress();
            }
            ShardMsg::Records { recs, stopped } => {
                if !stopped.load(Ordering::Relaxed) {
                    mode.on_records(w, recs)?;
                    w.publish_progress();
                }
            }
            ShardMsg::CatchUp => {
                mode.catch_up(w)?;
                w.publish_progress();
            }
            ShardMsg::Serve { view, event, reply } => {
                let answer = mode.check_serving(w).and_then(|()| w.serve(&view, &event));
                let _ = reply.send(answer);
            }
            ShardMsg::ServeWhenSeen { key, view, reply } => {
                mode.serve_when_seen(w, key, view, reply)
            }
            ShardMsg::Swap { reply } => {
                w.swaps.extend(reply);
                w.swap_pending = true;
                if !w.in_flight {
                    // (else finish_checkpoint sends the swap again)
                    swap_pipeline(s, &me).await?;
                }
            }
            ShardMsg::Stop => me.stop(Some(StopReason::PipelineChange.into())),
            ShardMsg::Checkpoint { reply } => w.start_checkpoint(mode, &me, reply),
            ShardMsg::CheckpointDone {
                done,
                started,
                replies,
            } => w.finish_checkpoint(mode, &me, *done, started, replies),
            ShardMsg::Status { reply } => {
                let restarts = w.ctx.restarts[w.shard as usize].load(Ordering::Relaxed);
                let _ = reply.send(Ok(w.status(mode.log_end(w), restarts)));
            }
            ShardMsg::Segments { reply } => {
                let _ = reply.send(Ok(w.segments()));
            }
            ShardMsg::Compact {
                target_bytes,
                reply,
            } => w.start_compaction(mode, &me, target_bytes, false, reply),
            ShardMsg::CompactSwap {
                group,
                merged,
                reply,
            } => {
                let _ = reply.send(w.swap_compacted(mode, group, merged).await);
            }
            ShardMsg::CompactDone => w.compacting = false,
            ShardMsg::AutoCompact => w.compact_if_long(mode, &me),
            ShardMsg::Stall(d) => tokio::time::sleep(d).await,
            ShardMsg::Fail => return Err(format!("shard {}: failure requested", w.shard).into()),
            ShardMsg::Handoff => mode.begin_handoff(w, &me),
        }
        Ok(())
    }
}

/// Rebuilds the shard under the node's current pipeline, in place: the
/// same recovery a restarted actor runs (the last checkpoint restored,
/// rebuilt from the archive for the new views, the log since replayed),
/// without handing the shard to the supervisor. A shard that is leaving
/// the node stops instead; a failed rebuild fails the actor, and the
/// supervisor's restart retries it under the same pipeline.
async fn swap_pipeline(s: &mut Shard, me: &ActorRef<ShardMsg>) -> Result<(), ShardError> {
    let waiting = std::mem::take(&mut s.w.swaps);
    s.w.swap_pending = false;
    if s.w.pipe.fingerprint() == s.w.ctx.pipeline().fingerprint() {
        for r in waiting {
            let _ = r.send(Ok(()));
        }
        return Ok(());
    }
    if let Err(e) = s.mode.check_serving(&s.w) {
        // handing off: the next owner recovers under the new views
        for r in waiting {
            let _ = r.send(Err(e.clone()));
        }
        me.stop(Some(StopReason::PipelineChange.into()));
        return Ok(());
    }
    s.mode.stop_reading();
    let (ctx, shard) = (s.w.ctx.clone(), s.w.shard);
    let recovered = {
        let _flag = Rebuilding::set(&ctx, shard);
        ShardWorker::recover(ctx.clone(), shard).await
    };
    match recovered {
        Ok(fresh) => {
            // checkpoint callers waiting on the old worker: the new one
            // checkpoints for them
            let asked = std::mem::take(&mut s.w.replies);
            *s = fresh;
            if !asked.is_empty() {
                s.w.replies = asked;
                let _ = me.send_message(ShardMsg::Checkpoint { reply: None });
            }
            s.mode.start_reading(&s.w, me);
            s.w.publish_progress();
            tracing::info!(shard = s.w.shard, "the shard runs the new pipeline");
            for r in waiting {
                let _ = r.send(Ok(()));
            }
            Ok(())
        }
        Err(e) => {
            for r in waiting {
                let _ = r.send(Err(e.clone()));
            }
            Err(e)
        }
    }
}

/// Marks a shard as rebuilding while it lives (cleared however the
/// rebuild ends, a panic included), so requests answer 503 meanwhile.
struct Rebuilding<'a>(&'a NodeCtx, u32);

impl<'a> Rebuilding<'a> {
    fn set(ctx: &'a NodeCtx, shard: u32) -> Rebuilding<'a> {
        ctx.rebuilding[shard as usize].store(true, Ordering::Relaxed);
        Rebuilding(ctx, shard)
    }
}

impl Drop for Rebuilding<'_> {
    fn drop(&mut self) {
        self.0.rebuilding[self.1 as usize].store(false, Ordering::Relaxed);
    }
}
