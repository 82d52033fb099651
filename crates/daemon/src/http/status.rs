//! Node status and checkpoints on request.
#![allow(clippy::result_large_err)]

use super::reply::*;
use super::routing::*;
use super::App;
use crate::clock::now_ms;
use crate::shard::{ShardMsg, ShardStatus};
use axum::extract::State;
use axum::response::Response;
use lockstep_api::NodeStatus;

pub(crate) async fn status(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    // the shards this node holds (on one node, all)
    let shards: Vec<ShardStatus> = match all_shards(ctx, |reply| ShardMsg::Status { reply }).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let last_ckpt = shards
        .iter()
        .map(|s| s.last_checkpoint.at_ms)
        .min()
        .filter(|&t| t > 0);
    ok(NodeStatus {
        node_id: ctx.config.node_id.clone(),
        table: ctx.table.name.clone(),
        views: ctx.pipeline().view_names.clone(),
        shard_count: ctx.table.shards,
        object_store: ctx.config.object_store.to_string(),
        data_dir: ctx.config.data_dir.display().to_string(),
        uptime_seconds: (now_ms() - ctx.started_ms) / 1000,
        events: shards.iter().map(|s| s.events).sum::<u64>(),
        late: shards.iter().map(|s| s.late).sum::<u64>(),
        lag: shards.iter().map(|s| s.lag).sum::<u64>(),
        dead_letters: ctx.metrics.dead_letters.get(),
        last_checkpoint: last_ckpt.map(lockstep_core::time::format_rfc3339_ms),
        shards,
    })
}

pub(crate) async fn checkpoint(State(app): State<App>) -> Response {
    match app.mode.checkpoint(&app.ctx).await {
        Ok(reply) => ok(reply),
        Err(r) => r,
    }
}
