//! The cluster: members, shard map, drain, remove, rebalance.
#![allow(clippy::result_large_err)]

use super::reply::*;
use super::App;
use crate::node::NodeCtx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use lockstep_api::{
    ActivateReply, ClusterStatus, DrainReply, MemberInfo, MemberState, RebalanceReply, RemoveReply,
    ShardCheckpointInfo, ShardEntry,
};
use lockstep_cluster::state::Command;
use lockstep_cluster::state::NodeState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) fn cluster_of(ctx: &NodeCtx) -> Result<&Arc<crate::cluster::ClusterCtx>, Response> {
    ctx.cluster.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "this node runs alone (no [cluster] in its config)",
        )
    })
}

/// The cluster as the control plane holds it: nodes, the shard map with
/// owner epochs, each shard's last committed checkpoint.
pub(crate) async fn cluster_status(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    let cl = match cluster_of(ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let st = cl.state();
    let metrics = cl.cp.raft.metrics().borrow().clone();
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    let nodes: Vec<_> = st
        .nodes
        .iter()
        .map(|(id, n)| MemberInfo {
            id: *id,
            addr: n.addr.clone(),
            state: member_state(n.state),
            voter: voters.contains(id),
            shards: st.owned_by(*id).len(),
        })
        .collect();
    let shards: Vec<_> = (0..st.shards as usize)
        .map(|s| {
            let o = &st.owners[s];
            let local = ctx.shard(s as u32).is_some();
            ShardEntry {
                shard: s as u32,
                owner: o.node,
                owner_epoch: o.epoch,
                moving_to: o.moving_to,
                checkpoint: st.checkpoints[s].as_ref().map(|c| ShardCheckpointInfo {
                    seq: c.seq,
                    offset: c.offset,
                    epoch: c.epoch,
                    owner: c.owner,
                    owner_epoch: c.owner_epoch,
                    digest: c.digest.clone(),
                    snapshot_objects: c.snapshot.len(),
                    at: lockstep_core::time::format_rfc3339_ms(c.at_ms),
                }),
                segments: st.segments[s].len(),
                processed: local.then(|| ctx.processed[s].load(Ordering::Relaxed)),
                end: local.then(|| cl.ends[s].load(Ordering::Relaxed)),
                lag: None,
            }
        })
        .collect();
    ok(ClusterStatus {
        cluster_id: st.cluster_id.clone(),
        node: cl.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        table: st.table.clone(),
        shard_count: st.shards,
        epoch: st.epoch,
        completed_epoch: st.completed_epoch(),
        pipeline_version: st.pipeline.version,
        nodes,
        shards,
    })
}

fn member_state(s: NodeState) -> MemberState {
    match s {
        NodeState::Active => MemberState::Active,
        NodeState::Draining => MemberState::Draining,
        NodeState::Down => MemberState::Down,
    }
}

/// A member's id from `node-3` or `3`.
pub(crate) fn member_id(cl: &crate::cluster::ClusterCtx, node: &str) -> Result<u64, Response> {
    node.rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|id| cl.state().nodes.contains_key(id))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no node `{node}` in the cluster; see GET /v1/cluster"),
            )
        })
}

/// Removes a node that is down for good: from the member list (its shards
/// are reassigned) and from the Raft group (a learner takes its vote).
pub(crate) async fn cluster_remove(State(app): State<App>, Path(node): Path<String>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // (a node already gone from the member list but still in the Raft
    // group: a retry after the membership change failed)
    let raft_only = node
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|id| cl.cp.raft_member(*id));
    let id = match (member_id(cl, &node), raft_only) {
        (Ok(id), _) | (Err(_), Some(id)) => id,
        (Err(r), None) => return r,
    };
    match cl.cp.remove(id).await {
        Ok(lockstep_cluster::state::Response::Done) => ok(RemoveReply {
            node: id,
            removed: true,
        }),
        Ok(lockstep_cluster::state::Response::Rejected(w)) => {
            error(StatusCode::CONFLICT, w.to_string())
        }
        Err(e) => unavailable(e.to_string()),
    }
}

pub(crate) async fn cluster_drain(State(app): State<App>, Path(node): Path<String>) -> Response {
    set_node_state(
        &app,
        &node,
        |id| Command::Drain { node: id },
        |st, id, state| {
            ok(DrainReply {
                node: id,
                state: state.unwrap_or(MemberState::Draining),
                shards_to_move: st.owned_by(id).len(),
            })
        },
    )
    .await
}

/// Ends a drain: the node gets shards again (also after it restarted).
pub(crate) async fn cluster_activate(State(app): State<App>, Path(node): Path<String>) -> Response {
    set_node_state(
        &app,
        &node,
        |id| Command::Activate { node: id },
        |_, id, state| {
            ok(ActivateReply {
                node: id,
                state: state.unwrap_or(MemberState::Active),
            })
        },
    )
    .await
}

/// Proposes `command` for the member `node` names; answers with `reply`
/// of the state after it and the member's state there.
async fn set_node_state(
    app: &App,
    node: &str,
    command: impl FnOnce(u64) -> Command,
    reply: impl FnOnce(&lockstep_cluster::state::ClusterState, u64, Option<MemberState>) -> Response,
) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let id = match member_id(cl, node) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match cl.cp.propose(command(id)).await {
        Ok(lockstep_cluster::state::Response::Done) => {
            let st = cl.state();
            let state = st.nodes.get(&id).map(|n| member_state(n.state));
            reply(&st, id, state)
        }
        Ok(lockstep_cluster::state::Response::Rejected(w)) => {
            error(StatusCode::CONFLICT, w.to_string())
        }
        Err(e) => unavailable(e.to_string()),
    }
}

/// The moves the coordinator makes now to balance the shards (it makes
/// them anyway, every few hundred milliseconds; this shows them).
pub(crate) async fn cluster_rebalance(State(app): State<App>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let plan = lockstep_cluster::decide::plan(&cl.state(), 2);
    let moves: Vec<String> = plan.iter().map(|c| format!("{c:?}")).collect();
    ok(RebalanceReply { planned: moves })
}
