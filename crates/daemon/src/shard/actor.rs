//! The ractor actor around a shard's worker: messages in mailbox order.

use super::{ShardMsg, ShardWorker, StopReason};

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
    type State = ShardWorker;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardWorker, ActorProcessingErr> {
        Ok(ShardWorker::recover(args.ctx, args.shard).await?)
    }

    async fn post_start(
        &self,
        me: ActorRef<ShardMsg>,
        w: &mut ShardWorker,
    ) -> Result<(), ActorProcessingErr> {
        w.start_reading(&me);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ShardMsg>,
        w: &mut ShardWorker,
    ) -> Result<(), ActorProcessingErr> {
        w.stop_reading();
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        w: &mut ShardWorker,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Events { first, rows, serve } => w.on_events(first, rows, serve)?,
            ShardMsg::Serve { view, event, reply } => {
                let _ = reply.send(w.serve(&view, &event));
            }
            ShardMsg::Stop => me.stop(Some(StopReason::PipelineChange.into())),
            ShardMsg::Checkpoint { reply } => w.start_checkpoint(&me, reply),
            ShardMsg::CheckpointDone {
                done,
                started,
                replies,
            } => w.finish_checkpoint(&me, *done, started, replies),
            ShardMsg::Status { reply } => {
                let restarts = w.ctx.restarts[w.shard as usize].load(Ordering::Relaxed);
                let _ = reply.send(Ok(w.status(restarts)));
            }
            ShardMsg::Segments { reply } => {
                let _ = reply.send(Ok(w.segments()));
            }
            ShardMsg::Compact {
                target_bytes,
                reply,
            } => {
                let _ = reply.send(w.compact(target_bytes).await);
            }
            ShardMsg::CatchUp => {
                w.catch_up()?;
                w.ctx.processed[w.shard as usize].store(w.next_offset, Ordering::Relaxed);
            }
            ShardMsg::Fail => return Err(format!("shard {}: failure requested", w.shard).into()),
            ShardMsg::Records(recs) => w.on_records(recs)?,
            ShardMsg::ServeWhenSeen { key, view, reply } => w.serve_when_seen(key, view, reply),
            ShardMsg::Handoff => w.begin_handoff(&me),
        }
        Ok(())
    }
}
