//! A member's drivers: the ownership watcher (actors in line with the
//! shard map, pipeline changes, checkpoints when epochs open) and the
//! coordinator (the leader's decisions, carried out).
use crate::clock::now_ms;
use crate::node::NodeCtx;
use crate::shard::ShardMsg;
use lockstep_cluster::decide::{self, LocalAction};
use lockstep_cluster::state::{ClusterState, Command, Response};
use ractor::ActorRef;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ClusterCtx;

/// Starts the tasks of a cluster node: the ownership watcher (starts and
/// stops shard actors as the shard map changes, hands shards off, takes
/// checkpoints when epochs open) and the coordinator (acts while this node
/// leads).
pub fn start_tasks(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    supervisor: ActorRef<crate::shard::SupMsg>,
) {
    tokio::spawn(ownership(ctx.clone(), cl.clone(), supervisor));
    raft_watch(ctx.clone(), cl.clone());
    tokio::spawn(coordinator(ctx, cl));
}

/// Stops the node when its Raft stopped for good (its storage failed):
/// see crate::fatal. A thread of its own, not a task: it must act even when
/// the runtime's workers are stuck (on a disk that failed). It ends with
/// the node, or with the runtime (an in-process node dropped in a test),
/// which takes Raft with it.
fn raft_watch(ctx: Arc<NodeCtx>, cl: Arc<ClusterCtx>) {
    // held by a task that never ends: gone when the runtime is
    let runtime_alive = Arc::new(());
    let alive = Arc::downgrade(&runtime_alive);
    tokio::spawn(async move {
        let _held = runtime_alive;
        std::future::pending::<()>().await
    });
    let spawned = std::thread::Builder::new()
        .name("raft-watch".into())
        .spawn(move || {
            // a shutdown, or the runtime's end, stops Raft too
            let going = || ctx.stopping.load(Ordering::Relaxed) || alive.upgrade().is_none();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if going() {
                    return;
                }
                if let Some(why) = cl.cp.fatal() {
                    // not while the node or its runtime goes away (asked
                    // again a moment later)
                    std::thread::sleep(Duration::from_secs(1));
                    if going() {
                        return;
                    }
                    crate::fatal::storage_failed(&format!(
                        "the control plane's Raft stopped: {why}"
                    ));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the thread that watches Raft: {e}");
    }
}

/// Keeps the local shard actors in line with the replicated shard map.
async fn ownership(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    supervisor: ActorRef<crate::shard::SupMsg>,
) {
    use crate::shard::SupMsg;
    let mut rx = cl.cp.subscribe();
    let mut epoch_seen = rx.borrow().epoch;
    // cut off from the coordinator (no epochs arrive), a node still
    // checkpoints on its own: a partitioned owner that was replaced then
    // finds out it is fenced, and stops
    let mut epoch_at = Instant::now();
    let own_account = ctx.config.checkpoint_interval * 3;
    // a pipeline version this node cannot run (logged once)
    let mut refused = 0;
    let backfills = Default::default();
    let backfill_slots = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {},
        }
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
        let st = rx.borrow_and_update().clone();
        if st.shards != ctx.table.shards {
            continue; // not initialized yet
        }
        if st.pipeline.version > ctx.pipeline().version && st.pipeline.version != refused {
            if let Err(e) = follow_pipeline(&ctx, &st) {
                tracing::error!("{e}; this node's shards wait for a pipeline it can run");
                refused = st.pipeline.version;
                // they must not commit state for the old views meanwhile:
                // restarted, they wait (their recovery sees the version)
                for s in 0..ctx.table.shards {
                    if let Some(a) = ctx.shard(s) {
                        let _ = a.send_message(ShardMsg::Stop);
                    }
                }
            }
        }
        let held: Vec<u64> = ctx.held.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        for action in decide::reconcile(&st, cl.id, &held) {
            match action {
                LocalAction::Start { shard, epoch } => {
                    ctx.held[shard as usize].store(epoch, Ordering::Relaxed);
                    let _ = supervisor.send_message(SupMsg::Start(shard));
                }
                LocalAction::Release { shard } => {
                    ctx.held[shard as usize].store(0, Ordering::Relaxed);
                    let _ = supervisor.send_message(SupMsg::Release(shard));
                }
                LocalAction::Handoff { shard } => {
                    if let Some(actor) = ctx.shard(shard) {
                        let _ = actor.send_message(ShardMsg::Handoff);
                    }
                }
            }
        }
        crate::backfill::run_cluster_jobs(&ctx, &cl, &st, &backfills, &backfill_slots);
        let stale = epoch_at.elapsed() >= own_account;
        if st.epoch != epoch_seen || stale {
            epoch_seen = st.epoch;
            epoch_at = Instant::now();
            for s in 0..st.shards {
                if let Some(a) = ctx.shard(s) {
                    let _ = a.send_message(ShardMsg::Checkpoint { reply: None });
                }
            }
        }
    }
}

/// Switches the node to the cluster's pipeline (`views apply` on any
/// node): the shards it holds restart, and each rebuilds its state for the
/// new views from its archive as it recovers.
fn follow_pipeline(
    ctx: &NodeCtx,
    st: &ClusterState,
) -> Result<(), crate::pipeline::ClusterPipelineError> {
    let Some(new) = crate::pipeline::cluster_pipeline(&st.pipeline, &ctx.table)? else {
        return Ok(());
    };
    let old = ctx.pipeline();
    let changed = new.fingerprint() != old.fingerprint();
    tracing::info!(
        version = new.version,
        views = ?new.view_names,
        changed,
        "the cluster's pipeline changed"
    );
    ctx.set_pipeline(Arc::new(new));
    if changed {
        // each shard rebuilds in place; the apply's caller waits on the
        // replicated checkpoints, which record the pipeline each is for
        for s in 0..ctx.table.shards {
            if let Some(a) = ctx.shard(s) {
                let _ = a.send_message(ShardMsg::Swap { reply: None });
            }
        }
    }
    Ok(())
}

/// The coordinator's loop; it acts only while this node is the leader.
/// What it does each tick is decided by the pure functions of
/// [`lockstep_cluster::decide`]; this carries the decisions out.
async fn coordinator(ctx: Arc<NodeCtx>, cl: Arc<ClusterCtx>) {
    let live = Arc::new(std::sync::Mutex::new(decide::Liveness::new(
        cl.failure_timeout,
    )));
    // the heartbeat, on its own timer: the loop below waits on proposals,
    // and a slow commit must not delay the pings (the members' serving
    // leases hang on them)
    tokio::spawn(heartbeat(ctx.clone(), cl.clone(), live.clone()));
    tokio::spawn(renew_lease(ctx.clone(), cl.clone()));
    let mut moves = decide::Moves::default();
    // how long this coordinator has seen the current epoch (monotonic)
    let mut epoch_clock = decide::EpochClock::default();
    // four rounds a second, or as often as checkpoint epochs are due (a
    // 100 ms checkpoint interval got only four epochs a second)
    let mut tick = tokio::time::interval(
        Duration::from_millis(250).min(
            ctx.config
                .checkpoint_interval
                .max(Duration::from_millis(10)),
        ),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
        if !cl.cp.is_leader() {
            // a new coordinator gives moves under way a whole timeout
            moves = decide::Moves::default();
            epoch_clock = decide::EpochClock::default();
            let leader = cl.cp.leader().map(|(l, _)| l).filter(|l| *l != cl.id);
            live.lock().expect("liveness").follow(leader);
            continue;
        }
        let st = cl.state();
        if st.shards == 0 {
            let _ = cl
                .cp
                .propose(Command::Init {
                    table: ctx.table.name.clone(),
                    shards: ctx.table.shards,
                    sql: ctx.pipeline().sql.clone(),
                    at_ms: now_ms(),
                })
                .await;
            continue;
        }
        let now = Instant::now();
        let round = live
            .lock()
            .expect("liveness")
            .lead(&st, cl.id, now, now_ms());
        if let Some(t) = round.lease {
            cl.cp.touch_at(t);
        }
        for cmd in round.commands {
            match &cmd {
                Command::MarkDown { node } => tracing::warn!(
                    node,
                    "no heartbeat within {:?}: marking it down",
                    cl.failure_timeout
                ),
                Command::Join { node, .. } => {
                    tracing::info!(node, "answers again: marking it active")
                }
                _ => {}
            }
            let done = matches!(cl.cp.propose(cmd.clone()).await, Ok(Response::Done));
            if let (true, Command::MarkDown { node }) = (done, &cmd) {
                live.lock().expect("liveness").marked_down(*node, now);
            }
        }
        let st = cl.state();
        // a voter down too long gives its vote to a live learner
        let (voters, members) = cl.cp.raft_voters();
        let next = {
            let mut live = live.lock().expect("liveness");
            decide::next_voters(
                &st,
                &voters,
                &members,
                cl.cp.voter_target(),
                cl.voter_replace_after,
                |n| {
                    st.nodes
                        .get(&n)
                        .filter(|i| i.state == lockstep_cluster::state::NodeState::Down)
                        .map(|_| live.down_for(n, now))
                },
            )
        };
        if let Some(next) = next {
            match cl.cp.set_voters(next.clone()).await {
                Ok(()) => tracing::warn!(?voters, ?next, "the voters change"),
                Err(e) => tracing::debug!(?next, "changing the voters: {e}"),
            }
        }
        for cmd in moves.stuck(&st, now, cl.move_timeout) {
            if matches!(cmd, Command::Assign { .. }) {
                tracing::warn!(
                    ?cmd,
                    "a shard move took longer than {:?} a second time: its owner never handed off, so its target takes the shard without a hand-off (from the last committed checkpoint)",
                    cl.move_timeout
                );
            } else {
                tracing::warn!(
                    ?cmd,
                    "a shard move took longer than {:?}: given up",
                    cl.move_timeout
                );
            }
            let _ = cl.cp.propose(cmd).await;
        }
        let st = cl.state();
        for cmd in decide::plan(&st, 2) {
            match cl.cp.propose(cmd.clone()).await {
                Ok(Response::Done) => tracing::info!(?cmd, "rebalance"),
                Ok(Response::Rejected(w)) => tracing::debug!(?cmd, "rebalance step refused: {w}"),
                Err(e) => tracing::debug!(?cmd, "rebalance step failed: {e}"),
            }
        }
        let interval = ctx.config.checkpoint_interval.as_millis() as i64;
        let seen = epoch_clock.seen_ms(st.epoch, now);
        if let Some(cmd) = decide::epoch_due(&st, now_ms(), interval, seen) {
            let _ = cl.cp.propose(cmd).await;
        }
    }
}

/// Pings the members every 500 ms while this node leads, and reports the
/// answers (with when each ping was sent) to the liveness tracker.
/// A member's serving lease, renewed from the leader four times a second
/// (the leader's own comes from its heartbeat round). One renewal at a
/// time; one that takes longer than the lease is given up.
async fn renew_lease(ctx: Arc<NodeCtx>, cl: Arc<ClusterCtx>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
        if cl.cp.is_leader() {
            continue;
        }
        let _ = tokio::time::timeout(cl.lease(), cl.cp.renew_lease()).await;
    }
}

async fn heartbeat(
    ctx: Arc<NodeCtx>,
    cl: Arc<ClusterCtx>,
    live: Arc<std::sync::Mutex<decide::Liveness>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
        if !cl.cp.is_leader() {
            continue;
        }
        for (&n, info) in &cl.state().nodes {
            if n == cl.id {
                continue;
            }
            let (cp, live, addr) = (cl.cp.clone(), live.clone(), info.addr.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                if cp.ping(&addr).await {
                    live.lock()
                        .expect("liveness")
                        .ping_answered(n, sent, Instant::now());
                }
            });
        }
    }
}
