//! The supervisor: starts shard actors (each recovering on a task of its
//! own) and restarts any that fails, with backoff.

use super::{ShardActor, ShardArgs, ShardError, ShardMsg, StopReason};

use crate::node::NodeCtx;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Starts the shard actors and restarts any that fails.
pub struct Supervisor;

/// The shard's own error from a failed start (its recovery's), if it is
/// one; otherwise the start's failure as an internal error.
fn startup_error(e: ractor::SpawnErr) -> ShardError {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => match inner.downcast::<ShardError>() {
            Ok(e) => *e,
            Err(other) => ShardError::internal(other),
        },
        other => ShardError::internal(other),
    }
}

/// What the supervisor is asked to do.
pub enum SupMsg {
    /// Start the shard's actor (replacing one that runs under an older
    /// owner epoch).
    Start(u32),
    /// (Re)start after a failure; retried with backoff while recovery
    /// fails. In a cluster, only while the shard is still this node's.
    Restart(u32),
    /// The shard is no longer this node's: stop its actor.
    Release(u32),
    /// A shard actor's start (its recovery, on a task of its own, so that
    /// shards recover in parallel) ended; `gen` tells which start.
    Started {
        shard: u32,
        gen: u64,
        actor: Result<ActorRef<ShardMsg>, ShardError>,
    },
}

pub struct SupervisorState {
    ctx: Arc<NodeCtx>,
    /// Actor id → shard.
    owners: HashMap<ractor::ActorId, u32>,
    /// Current retry delay of shards whose recovery failed.
    backoff: HashMap<u32, std::time::Duration>,
    /// Shards whose actor is starting, with the start's number.
    starting: HashMap<u32, u64>,
    starts: u64,
    /// Shards asked to (re)start again while a start was running.
    again: std::collections::HashSet<u32>,
    /// Recently ended actors the supervisor did not know yet (one may end
    /// before its start is reported).
    ended_early: std::collections::VecDeque<ractor::ActorId>,
}

impl Supervisor {
    pub(super) async fn start_shard(
        me: &ActorRef<SupMsg>,
        st: &mut SupervisorState,
        shard: u32,
    ) -> Result<(), ActorProcessingErr> {
        let args = ShardArgs {
            ctx: st.ctx.clone(),
            shard,
        };
        let (actor, _) = Actor::spawn_linked(None, ShardActor, args, me.get_cell()).await?;
        st.owners.insert(actor.get_id(), shard);
        st.ctx.shards.write().expect("shard registry")[shard as usize] = Some(actor.clone());
        // events appended while the registry still named the failed actor
        let _ = actor.send_message(ShardMsg::CatchUp);
        Ok(())
    }

    /// Starts the shard's actor on a task of its own; its recovery may take
    /// a while (snapshot objects, a rebuild), and other shards' starts go
    /// on meanwhile. The outcome comes back as [`SupMsg::Started`].
    pub(super) fn begin_start(me: &ActorRef<SupMsg>, st: &mut SupervisorState, shard: u32) {
        st.starts += 1;
        let gen = st.starts;
        st.starting.insert(shard, gen);
        let args = ShardArgs {
            ctx: st.ctx.clone(),
            shard,
        };
        let (me, cell) = (me.clone(), me.get_cell());
        tokio::spawn(async move {
            let actor = Actor::spawn_linked(None, ShardActor, args, cell)
                .await
                .map(|(a, _)| a)
                .map_err(startup_error);
            if let Err(ractor::MessagingErr::SendErr(SupMsg::Started { actor: Ok(a), .. })) =
                me.send_message(SupMsg::Started { shard, gen, actor })
            {
                a.stop(Some(StopReason::Superseded.into())); // the supervisor is gone
            }
        });
    }

    /// A start ended: register the actor, or retry.
    pub(super) fn started(
        me: &ActorRef<SupMsg>,
        st: &mut SupervisorState,
        shard: u32,
        gen: u64,
        actor: Result<ActorRef<ShardMsg>, ShardError>,
    ) {
        if st.starting.get(&shard) != Some(&gen) {
            if let Ok(a) = actor {
                a.stop(Some(StopReason::Superseded.into()));
            }
            return;
        }
        st.starting.remove(&shard);
        let again = st.again.remove(&shard);
        let ours = st.ctx.holds(shard);
        match actor {
            Ok(a) => {
                let died = match st.ended_early.iter().position(|id| *id == a.get_id()) {
                    Some(i) => {
                        st.ended_early.remove(i);
                        true
                    }
                    None => false,
                };
                if again || died || !ours {
                    a.stop(Some(StopReason::Superseded.into()));
                    if ours {
                        let _ = me.send_message(SupMsg::Restart(shard));
                    }
                    return;
                }
                st.owners.insert(a.get_id(), shard);
                st.ctx.shards.write().expect("shard registry")[shard as usize] = Some(a.clone());
                // events appended while the registry still named the failed
                // actor
                let _ = a.send_message(ShardMsg::CatchUp);
                st.backoff.remove(&shard);
            }
            Err(_) if again => {
                let _ = me.send_message(SupMsg::Restart(shard));
            }
            Err(e) => Supervisor::retry(me, st, shard, &e),
        }
    }

    /// Stops the shard's actor, if any, for good.
    pub(super) fn stop_shard(st: &SupervisorState, shard: u32, why: StopReason) {
        let old = st.ctx.shards.write().expect("shard registry")[shard as usize].take();
        if let Some(a) = old {
            a.stop(Some(why.into()));
        }
    }

    pub(super) fn retry(
        me: &ActorRef<SupMsg>,
        st: &mut SupervisorState,
        shard: u32,
        e: &ShardError,
    ) {
        let delay = st
            .backoff
            .entry(shard)
            .or_insert(std::time::Duration::from_millis(50));
        // a shard waiting for the control plane (an election) retries
        // often: its downtime is the cluster's recovery time
        let waiting = matches!(e, ShardError::Unavailable(_));
        let cap = if waiting { 500 } else { 5_000 };
        *delay = (*delay * 2).min(std::time::Duration::from_millis(cap));
        if waiting {
            tracing::info!(shard, "not started: {e}; retrying in {:?}", delay);
        } else {
            tracing::error!(shard, "restart failed: {e}; retrying in {:?}", delay);
        }
        let (me, delay) = (me.clone(), *delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = me.send_message(SupMsg::Restart(shard));
        });
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupervisorState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        me: ActorRef<SupMsg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut st = SupervisorState {
            ctx: ctx.clone(),
            owners: HashMap::new(),
            backoff: HashMap::new(),
            starting: HashMap::new(),
            starts: 0,
            again: Default::default(),
            ended_early: Default::default(),
        };
        // the shards this node holds from the start (on one node, all; in
        // a cluster, none: they start as the shard map gives them to it)
        for s in 0..ctx.table.shards {
            if ctx.holds(s) {
                Supervisor::start_shard(&me, &mut st, s).await?;
            }
        }
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if st.ctx.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        match msg {
            SupMsg::Release(shard) => {
                tracing::info!(shard, "the shard is another node's now: stopping it here");
                Supervisor::stop_shard(st, shard, StopReason::Released);
            }
            SupMsg::Start(shard) | SupMsg::Restart(shard) => {
                if matches!(msg, SupMsg::Restart(_)) && !st.ctx.holds(shard) {
                    return Ok(()); // no longer ours
                }
                // never two actors for one shard: whatever is registered
                // (a failed actor, or one started by an earlier message)
                // stops first, and a start still running is redone when it
                // ends
                if st.starting.contains_key(&shard) {
                    st.again.insert(shard);
                    return Ok(());
                }
                Supervisor::stop_shard(st, shard, StopReason::Superseded);
                Supervisor::begin_start(&me, st, shard);
            }
            SupMsg::Started { shard, gen, actor } => {
                Supervisor::started(&me, st, shard, gen, actor);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(shard) = st.owners.remove(&cell.get_id()) else {
            // perhaps an actor whose start is not reported yet
            st.ended_early.push_back(cell.get_id());
            if st.ended_early.len() > 64 {
                st.ended_early.pop_front();
            }
            return Ok(());
        };
        if st.ctx.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let reason = StopReason::parse(&why);
        if reason.is_some_and(StopReason::is_final) {
            let mut reg = st.ctx.shards.write().expect("shard registry");
            if reg[shard as usize]
                .as_ref()
                .is_some_and(|a| a.get_id() == cell.get_id())
            {
                reg[shard as usize] = None;
            }
            if matches!(reason, Some(StopReason::Fenced | StopReason::HandedOff)) {
                tracing::info!(shard, "the shard left this node ({why})");
            }
            return Ok(());
        }
        if reason == Some(StopReason::PipelineChange) {
            tracing::info!(shard, "restarting the shard under the new pipeline");
        } else {
            tracing::error!(
                shard,
                "shard actor died ({why}); restarting from its checkpoint"
            );
            st.ctx.restarts[shard as usize].fetch_add(1, Ordering::Relaxed);
            st.ctx.metrics.restarts.inc();
        }
        // recovery can fail transiently (object store down): retried with
        // backoff through messages, so other shards are handled meanwhile
        let _ = me.send_message(SupMsg::Restart(shard));
        Ok(())
    }
}
